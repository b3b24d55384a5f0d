//! Reading a raw export: decompression, CSV parsing, header normalisation.

use std::io::{Cursor, Read};
use std::path::Path;

use polars::prelude::*;

use crate::{EtlError, Result};

/// The fields of a transactions export, in canonical snake_case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Column {
    /// `InvoiceNo` / `Invoice`.
    InvoiceNo,
    /// `StockCode`.
    StockCode,
    /// `Description` (optional).
    Description,
    /// `Quantity`.
    Quantity,
    /// `InvoiceDate`.
    InvoiceDate,
    /// `UnitPrice` / `Price`.
    UnitPrice,
    /// `CustomerID` / `Customer ID` (optional).
    CustomerId,
    /// `Country` (optional).
    Country,
}

impl Column {
    /// All fields.
    pub const ALL: [Column; 8] = [
        Column::InvoiceNo,
        Column::StockCode,
        Column::Description,
        Column::Quantity,
        Column::InvoiceDate,
        Column::UnitPrice,
        Column::CustomerId,
        Column::Country,
    ];

    /// The canonical snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            Column::InvoiceNo => "invoice_no",
            Column::StockCode => "stock_code",
            Column::Description => "description",
            Column::Quantity => "quantity",
            Column::InvoiceDate => "invoice_date",
            Column::UnitPrice => "unit_price",
            Column::CustomerId => "customer_id",
            Column::Country => "country",
        }
    }

    /// Header spellings accepted, after lower-casing and removing everything
    /// but letters and digits.
    pub fn aliases(self) -> &'static [&'static str] {
        match self {
            Column::InvoiceNo => &["invoiceno", "invoice", "invoicenumber", "invoiceid"],
            Column::StockCode => &["stockcode", "sku", "productcode"],
            Column::Description => &["description", "productdescription"],
            Column::Quantity => &["quantity", "qty"],
            Column::InvoiceDate => &["invoicedate", "date", "invoicedatetime"],
            Column::UnitPrice => &["unitprice", "price"],
            Column::CustomerId => &["customerid", "customer", "customerno"],
            Column::Country => &["country"],
        }
    }

    /// Whether the pipeline cannot work without this column.
    pub fn required(self) -> bool {
        !matches!(
            self,
            Column::Description | Column::CustomerId | Column::Country
        )
    }

    fn from_header(header: &str) -> Option<Column> {
        let norm: String = header
            .trim_start_matches('\u{feff}')
            .chars()
            .filter(|c| c.is_alphanumeric())
            .flat_map(char::to_lowercase)
            .collect();
        Column::ALL
            .into_iter()
            .find(|c| c.aliases().contains(&norm.as_str()))
    }
}

/// A parsed export: every field still text, columns mapped to [`Column`]s.
#[derive(Debug, Clone)]
pub struct RawTable {
    /// The file name used in error messages.
    pub file: String,
    bytes: Arc<Vec<u8>>,
    df: DataFrame,
    /// (field, header as written, column index in `df`)
    mapping: Vec<(Column, String)>,
}

impl RawTable {
    /// Number of data rows.
    pub fn height(&self) -> usize {
        self.df.height()
    }

    /// The header as written in the file for a field, if present.
    pub fn header(&self, column: Column) -> Option<&str> {
        self.mapping
            .iter()
            .find(|(c, _)| *c == column)
            .map(|(_, h)| h.as_str())
    }

    /// The text values of a field, if the column is present.
    pub fn strings(&self, column: Column) -> Result<Option<&StringChunked>> {
        match self.header(column) {
            None => Ok(None),
            Some(h) => Ok(Some(self.df.column(h)?.str()?)),
        }
    }

    /// The 1-based line on which data row `row` (0-based) starts, honouring
    /// quoted fields that contain line breaks.
    pub fn line_of_row(&self, row: usize) -> u64 {
        // Record 0 is the header; data row `row` is record `row + 1`.
        let target = row + 1;
        let mut records = 0usize;
        let mut line = 1u64;
        let mut in_quotes = false;
        for &b in self.bytes.iter() {
            if records == target {
                return line;
            }
            match b {
                b'"' => in_quotes = !in_quotes,
                b'\n' => {
                    line += 1;
                    if !in_quotes {
                        records += 1;
                    }
                }
                _ => {}
            }
        }
        line
    }

    /// An [`EtlError::InvalidField`] for data row `row` of `column`.
    pub fn field_error(&self, row: usize, column: Column, value: &str, problem: &str) -> EtlError {
        EtlError::InvalidField {
            file: self.file.clone(),
            line: self.line_of_row(row),
            column: self.header(column).unwrap_or(column.name()).to_string(),
            value: value.chars().take(80).collect(),
            problem: problem.to_string(),
        }
    }
}

/// Reads a CSV or gzip-compressed CSV file (detected by content, not name).
pub fn read_raw_file(path: &Path) -> Result<RawTable> {
    let bytes = std::fs::read(path).map_err(|e| EtlError::Io {
        path: path.display().to_string(),
        source: e,
    })?;
    read_raw_bytes(&bytes, &path.display().to_string())
}

/// Parses CSV bytes (gzip is detected by its magic number). `file` names the
/// source in error messages.
pub fn read_raw_bytes(bytes: &[u8], file: &str) -> Result<RawTable> {
    let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(bytes.len() * 7);
        flate2::read::MultiGzDecoder::new(bytes)
            .read_to_end(&mut out)
            .map_err(|e| EtlError::Csv {
                file: file.to_string(),
                message: format!("gzip: {e}"),
            })?;
        out
    } else {
        bytes.to_vec()
    };
    let bytes = Arc::new(bytes);
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(EtlError::Empty {
            file: file.to_string(),
        });
    }
    let df = CsvReadOptions::default()
        .with_has_header(true)
        .with_infer_schema_length(Some(0))
        .with_raise_if_empty(true)
        .into_reader_with_file_handle(Cursor::new(bytes.as_slice()))
        .finish()
        .map_err(|e| EtlError::Csv {
            file: file.to_string(),
            message: e.to_string(),
        })?;
    let mut mapping: Vec<(Column, String)> = Vec::new();
    for name in df.get_column_names() {
        if let Some(col) = Column::from_header(name) {
            if let Some((_, first)) = mapping.iter().find(|(c, _)| *c == col) {
                return Err(EtlError::DuplicateColumn {
                    file: file.to_string(),
                    column: col.name(),
                    first: first.clone(),
                    second: name.to_string(),
                });
            }
            mapping.push((col, name.to_string()));
        }
    }
    for col in Column::ALL.into_iter().filter(|c| c.required()) {
        if !mapping.iter().any(|(c, _)| *c == col) {
            return Err(EtlError::MissingColumn {
                file: file.to_string(),
                column: col.name(),
                accepted: col.aliases().join(", "),
                found: df
                    .get_column_names()
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    if df.height() == 0 {
        return Err(EtlError::Empty {
            file: file.to_string(),
        });
    }
    Ok(RawTable {
        file: file.to_string(),
        bytes,
        df,
        mapping,
    })
}
