//! Reading and validating raw exports: errors name file, line and column.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use etl::synth::{SynthConfig, generate};
use etl::{EtlError, EtlParams, clean, read_raw_bytes};

const HEADER: &str =
    "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n";
const GOOD: &str = "536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,2010-12-01 08:26:00,2.55,17850,United Kingdom\n";

fn parse(csv: &str) -> Result<(etl::Transactions, etl::EtlReport), EtlError> {
    let raw = read_raw_bytes(csv.as_bytes(), "export.csv")?;
    clean(&raw, &EtlParams::default())
}

#[test]
fn missing_required_column_is_named() {
    let csv = "InvoiceNo,StockCode,Description,InvoiceDate,UnitPrice,CustomerID,Country\n\
               536365,85123A,X,2010-12-01 08:26:00,2.55,17850,United Kingdom\n";
    let err = parse(csv).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            EtlError::MissingColumn {
                column: "quantity",
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains("export.csv") && msg.contains("line 1") && msg.contains("quantity"),
        "{msg}"
    );
}

#[test]
fn bad_date_names_file_line_and_column() {
    let csv = format!(
        "{HEADER}{GOOD}{GOOD}536366,22633,HAND WARMER,6,2010-13-45 08:28:00,1.85,17850,United Kingdom\n{GOOD}"
    );
    let err = parse(&csv).unwrap_err();
    match &err {
        EtlError::InvalidField {
            file,
            line,
            column,
            value,
            ..
        } => {
            assert_eq!(
                (file.as_str(), *line, column.as_str()),
                ("export.csv", 4, "InvoiceDate")
            );
            assert_eq!(value, "2010-13-45 08:28:00");
        }
        other => panic!("unexpected error {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.starts_with("export.csv: line 4, column `InvoiceDate`"),
        "{msg}"
    );
}

#[test]
fn non_numeric_quantity_names_file_line_and_column() {
    let csv = format!(
        "{HEADER}{GOOD}536366,22633,HAND WARMER,six,2010-12-01 08:28:00,1.85,17850,United Kingdom\n"
    );
    match parse(&csv).unwrap_err() {
        EtlError::InvalidField {
            line,
            column,
            value,
            ..
        } => {
            assert_eq!(
                (line, column.as_str(), value.as_str()),
                (3, "Quantity", "six")
            );
        }
        other => panic!("unexpected error {other}"),
    }
}

#[test]
fn bad_price_is_an_error_too() {
    let csv = format!(
        "{HEADER}{GOOD}536366,22633,HAND WARMER,6,2010-12-01 08:28:00,NaN,17850,United Kingdom\n"
    );
    match parse(&csv).unwrap_err() {
        EtlError::InvalidField { line, column, .. } => {
            assert_eq!((line, column.as_str()), (3, "UnitPrice"))
        }
        other => panic!("unexpected error {other}"),
    }
}

#[test]
fn line_numbers_count_line_breaks_inside_quoted_fields() {
    let csv = format!(
        "{HEADER}536365,85123A,\"TWO\nLINES\",6,2010-12-01 08:26:00,2.55,17850,United Kingdom\n536366,22633,X,x,2010-12-01 08:28:00,1.85,17850,United Kingdom\n"
    );
    match parse(&csv).unwrap_err() {
        EtlError::InvalidField { line, .. } => assert_eq!(line, 4),
        other => panic!("unexpected error {other}"),
    }
}

#[test]
fn online_retail_ii_headers_and_float_customer_ids_are_accepted() {
    let csv = "Invoice,StockCode,Description,Quantity,InvoiceDate,Price,Customer ID,Country\n\
               489434,85048,15CM CHRISTMAS GLASS BALL 20 LIGHTS,12,2009-12-01 07:45:00,6.95,13085.0,United Kingdom\n\
               489435,22350,CAT BOWL ,12,2009-12-01 07:46:00,2.55,,United Kingdom\n";
    let (tx, report) = parse(csv).unwrap();
    assert_eq!(tx.len(), 2);
    let v = tx.view().unwrap();
    assert_eq!(v.customer_id, vec![Some(13085), None]);
    assert_eq!(v.description[1], Some("CAT BOWL"));
    assert_eq!(
        report.optional_field_issues.get("customer_id:missing"),
        Some(&1)
    );
}

#[test]
fn header_case_and_spacing_do_not_matter() {
    let csv = " invoice_no , STOCK CODE ,description,QUANTITY,Invoice Date,unit price,customer id,COUNTRY\n\
               536365,85123A,X,6,12/1/2010 8:26,2.55,17850,United Kingdom\n";
    let (tx, report) = parse(csv).unwrap();
    assert_eq!(tx.len(), 1);
    assert_eq!(report.date_format, "%m/%d/%Y %H:%M");
    assert_eq!(
        etl::format_micros(tx.view().unwrap().ts[0]),
        "2010-12-01 08:26:00"
    );
}

#[test]
fn duplicate_columns_are_refused() {
    let csv = "Invoice,InvoiceNo,StockCode,Quantity,InvoiceDate,Price\n1,1,85123A,1,2010-12-01 08:26:00,1.0\n";
    assert!(matches!(
        parse(csv).unwrap_err(),
        EtlError::DuplicateColumn { .. }
    ));
}

#[test]
fn empty_file_is_an_error_not_an_empty_result() {
    assert!(matches!(parse("").unwrap_err(), EtlError::Empty { .. }));
    assert!(matches!(
        parse(HEADER).unwrap_err(),
        EtlError::Empty { .. } | EtlError::Csv { .. }
    ));
}

#[test]
fn cleaning_counts_every_dropped_row_by_reason() {
    let data = generate(&SynthConfig {
        n_invoices: 800,
        ..Default::default()
    });
    let (tx, report) = parse(&data.csv).unwrap();
    let cancellations = data.csv.lines().filter(|l| l.starts_with('C')).count() as u64;
    let postage = data.csv.lines().filter(|l| l.contains(",POST,")).count() as u64;
    let free = data.csv.lines().filter(|l| l.contains(",0.0,")).count() as u64;
    assert!(cancellations > 0 && postage > 0 && free > 0);
    assert_eq!(report.dropped["cancellation"], cancellations);
    assert_eq!(report.dropped["non_product_code"], postage);
    assert_eq!(report.dropped["non_positive_price"], free);
    assert_eq!(report.dropped["non_positive_quantity"], 0);
    assert_eq!(report.rows_in as usize, data.rows);
    assert_eq!(report.rows_out as usize, data.rows - data.dirty_rows);
    assert_eq!(tx.len() as u64, report.rows_out);
    assert_eq!(report.top_non_product_codes[0].0, "POST");
}

#[test]
fn gzip_input_reads_like_plain_text() {
    use std::io::Write;
    let data = generate(&SynthConfig {
        n_invoices: 100,
        ..Default::default()
    });
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data.csv.as_bytes()).unwrap();
    let gz = enc.finish().unwrap();
    let a = clean(
        &read_raw_bytes(gz.as_slice(), "x.csv.gz").unwrap(),
        &EtlParams::default(),
    )
    .unwrap();
    let b = clean(
        &read_raw_bytes(data.csv.as_bytes(), "x.csv").unwrap(),
        &EtlParams::default(),
    )
    .unwrap();
    assert_eq!(a.0.to_parquet().unwrap(), b.0.to_parquet().unwrap());
    assert_eq!(a.1, b.1);
}

#[test]
fn transactions_round_trip_through_parquet() {
    let data = generate(&SynthConfig {
        n_invoices: 100,
        ..Default::default()
    });
    let (tx, _) = parse(&data.csv).unwrap();
    let bytes = tx.to_parquet().unwrap();
    let back = etl::Transactions::from_parquet(&bytes).unwrap();
    assert!(back.dataframe().equals_missing(tx.dataframe()));
    assert_eq!(
        back.to_parquet().unwrap(),
        bytes,
        "serialisation is deterministic"
    );
}

#[test]
fn a_parquet_file_with_another_schema_is_refused() {
    let mut df = polars::prelude::df!("a" => [1i64, 2]).unwrap();
    let mut bytes = Vec::new();
    polars::prelude::ParquetWriter::new(&mut bytes)
        .finish(&mut df)
        .unwrap();
    assert!(matches!(
        etl::Transactions::from_parquet(&bytes),
        Err(EtlError::Schema(_))
    ));
}

#[test]
fn implausible_dates_prices_and_quantities_are_dropped_and_counted() {
    let row = |date: &str, qty: &str, price: &str| {
        format!("536370,22728,ALARM CLOCK,{qty},{date},{price},12583,France\n")
    };
    let csv = format!(
        "{HEADER}{GOOD}{}{}{}{}{}{GOOD}",
        row("+200000-01-01 08:26:00", "6", "2.55"),
        row("1899-12-31 23:59:00", "6", "2.55"),
        row("2011-01-01 08:00:00", "6", "1e300"),
        row("2011-01-01 08:00:00", "6", "100000.01"),
        row("2011-01-01 08:00:00", "1000001", "2.55"),
    );
    let (tx, report) = parse(&csv).unwrap();
    assert_eq!(tx.len(), 2, "only the two good rows are kept");
    assert_eq!(report.dropped["date_out_of_range"], 2, "{report:?}");
    assert_eq!(report.dropped["price_out_of_range"], 2, "{report:?}");
    assert_eq!(report.dropped["quantity_out_of_range"], 1, "{report:?}");
    assert_eq!(report.date_max, "2010-12-01 08:26:00");
    // The bounds are parameters.
    let raw = read_raw_bytes(csv.as_bytes(), "export.csv").unwrap();
    let wide = EtlParams {
        min_date: "1800-01-01".into(),
        max_unit_price: 1e301,
        ..EtlParams::default()
    };
    let (_, report) = clean(&raw, &wide).unwrap();
    assert_eq!(report.dropped["date_out_of_range"], 1);
    assert_eq!(report.dropped["price_out_of_range"], 0);
    // Non-finite prices are not numbers at all: a clear error naming the field.
    let err = parse(&format!(
        "{HEADER}{GOOD}{}",
        row("2011-01-01 08:00:00", "6", "inf")
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("line 3") && err.contains("UnitPrice"), "{err}");
    // Bad bounds are a clear error before any row is read.
    let bad = EtlParams {
        max_date: "1980-01-01".into(),
        ..EtlParams::default()
    };
    let err = clean(&raw, &bad).unwrap_err().to_string();
    assert!(
        err.contains("min_date") && err.contains("max_date"),
        "{err}"
    );
}

#[test]
fn decompressed_input_is_bounded() {
    use std::io::Write;
    let data = generate(&SynthConfig {
        n_invoices: 200,
        ..Default::default()
    });
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(data.csv.as_bytes()).unwrap();
    // A gzip bomb in miniature: a megabyte of zeros after the data.
    gz.write_all(&vec![b'0'; 1 << 20]).unwrap();
    let bytes = gz.finish().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bomb.csv.gz");
    std::fs::write(&path, &bytes).unwrap();
    let limit = data.csv.len() as u64 + 1000;
    match etl::read_raw_file_limited(&path, limit).unwrap_err() {
        EtlError::TooLarge { file, max_bytes } => {
            assert!(file.ends_with("bomb.csv.gz"));
            assert_eq!(max_bytes, limit);
        }
        other => panic!("expected TooLarge, got {other}"),
    }
    // A plain file over the bound is refused before it is read.
    let plain = dir.path().join("big.csv");
    std::fs::write(&plain, &data.csv).unwrap();
    assert!(matches!(
        etl::read_raw_file_limited(&plain, 100),
        Err(EtlError::TooLarge { .. })
    ));
    // Within the bound both read.
    let gz_ok = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data.csv.as_bytes()).unwrap();
        e.finish().unwrap()
    };
    std::fs::write(&path, gz_ok).unwrap();
    assert_eq!(
        etl::read_raw_file_limited(&path, limit).unwrap().height(),
        data.rows
    );
}

#[test]
fn gzip_files_over_many_chunks_read_like_plain_files_and_a_corrupt_one_is_an_error() {
    use std::io::Write;
    let data = generate(&SynthConfig {
        n_invoices: 15_000,
        ..Default::default()
    });
    // Several of the reader's 1 MiB decompression chunks.
    assert!(data.csv.len() > 3 << 20, "{} bytes", data.csv.len());
    let dir = tempfile::tempdir().unwrap();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data.csv.as_bytes()).unwrap();
    let gz = enc.finish().unwrap();
    let (gz_path, plain_path) = (dir.path().join("x.csv.gz"), dir.path().join("x.csv"));
    std::fs::write(&gz_path, &gz).unwrap();
    std::fs::write(&plain_path, &data.csv).unwrap();
    let a = etl::read_raw_file(&gz_path).unwrap();
    let b = etl::read_raw_file(&plain_path).unwrap();
    assert_eq!(a.height(), data.rows);
    for col in etl::Column::ALL {
        assert_eq!(
            a.strings(col).map(|c| c.iter().collect::<Vec<_>>()),
            b.strings(col).map(|c| c.iter().collect::<Vec<_>>()),
        );
    }
    assert_eq!(a.line_of_row(a.height() - 1), b.line_of_row(b.height() - 1));

    // Cut short in the middle of the deflate stream: an error naming the file.
    std::fs::write(&gz_path, &gz[..gz.len() / 2]).unwrap();
    let e = etl::read_raw_file(&gz_path).unwrap_err().to_string();
    assert!(e.contains("x.csv.gz"), "{e}");
}
