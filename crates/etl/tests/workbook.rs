//! The dataset as the UCI site ships it: an `.xlsx` (two sheets, as Online
//! Retail II), alone or inside a `.zip`, gives the same transactions as the
//! CSV it was written from. The workbook is written with real Excel types
//! (numbers, dates with a date format, text) by `csv_to_workbook`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;

use etl::synth::{SynthConfig, generate};
use etl::{EtlParams, clean, csv_to_workbook, read_raw_bytes, workbook_to_csv};

const MAX: u64 = 1 << 30;

fn transactions(csv: &[u8]) -> etl::Transactions {
    clean(
        &read_raw_bytes(csv, "export").unwrap(),
        &EtlParams::default(),
    )
    .unwrap()
    .0
}

#[test]
fn an_xlsx_and_a_zip_of_it_give_the_csvs_transactions() {
    let data = generate(&SynthConfig {
        n_invoices: 300,
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let xlsx = dir.path().join("online_retail_II.xlsx");
    csv_to_workbook(data.csv.as_bytes(), &xlsx, 2).unwrap();
    let expected = transactions(data.csv.as_bytes());
    assert!(expected.len() > 1000);

    let (csv, summary) = workbook_to_csv(&xlsx, MAX).unwrap();
    assert_eq!(summary.sheets.len(), 2);
    assert_eq!(summary.sheets[0].0, "Year 2009");
    assert_eq!(summary.rows(), data.csv.lines().count() - 1);
    let got = transactions(&csv);
    assert_eq!(got.len(), expected.len());
    assert!(
        got.dataframe().equals_missing(expected.dataframe()),
        "the workbook's transactions differ from the CSV's:\n{}\n{}",
        got.dataframe().head(Some(3)),
        expected.dataframe().head(Some(3))
    );

    // The same workbook inside a zip, as the UCI site serves it.
    let zipped = dir.path().join("online+retail+ii.zip");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&zipped).unwrap());
    zip.start_file(
        "online_retail_II.xlsx",
        zip::write::SimpleFileOptions::default(),
    )
    .unwrap();
    zip.write_all(&std::fs::read(&xlsx).unwrap()).unwrap();
    zip.finish().unwrap();
    let (from_zip, _) = workbook_to_csv(&zipped, MAX).unwrap();
    assert_eq!(from_zip, csv);
}

#[test]
fn a_zip_without_a_workbook_or_a_bad_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let zipped = dir.path().join("other.zip");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&zipped).unwrap());
    zip.start_file("readme.txt", zip::write::SimpleFileOptions::default())
        .unwrap();
    zip.write_all(b"hello").unwrap();
    zip.finish().unwrap();
    let e = workbook_to_csv(&zipped, MAX).unwrap_err().to_string();
    assert!(
        e.contains("other.zip") && e.contains("no .xlsx inside") && e.contains("readme.txt"),
        "{e}"
    );

    let fake = dir.path().join("fake.xlsx");
    std::fs::write(&fake, b"not a workbook").unwrap();
    let e = workbook_to_csv(&fake, MAX).unwrap_err().to_string();
    assert!(
        e.contains("fake.xlsx") && e.contains("not an .xlsx workbook"),
        "{e}"
    );
}
