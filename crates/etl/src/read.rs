//! Reading a raw export: decompression, CSV parsing, header normalisation.

use std::io::{Cursor, Read, Seek};
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

/// The default bound on a (decompressed) export: 4 GiB.
pub const DEFAULT_MAX_DECOMPRESSED_BYTES: u64 = 4 << 30;

/// Reads a CSV or gzip-compressed CSV file (detected by content, not name),
/// of at most [`DEFAULT_MAX_DECOMPRESSED_BYTES`] once decompressed.
pub fn read_raw_file(path: &Path) -> Result<RawTable> {
    read_raw_file_limited(path, DEFAULT_MAX_DECOMPRESSED_BYTES)
}

/// [`read_raw_file`] with a bound on the decompressed size: a larger input
/// (a gzip bomb, or the wrong file) is an error before it is held in memory.
pub fn read_raw_file_limited(path: &Path, max_bytes: u64) -> Result<RawTable> {
    let file = path.display().to_string();
    let io = |e| EtlError::Io {
        path: file.clone(),
        source: e,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic).map_err(io)?;
    let size = f.metadata().map_err(io)?.len();
    let bytes = if magic[..n] == [0x1f, 0x8b] {
        // gzip's trailer records the input size mod 2^32: a capacity hint
        // that avoids growing (and copying) the buffer.
        let mut trailer = [0u8; 4];
        let hint = match f
            .seek(std::io::SeekFrom::End(-4))
            .and_then(|_| f.read_exact(&mut trailer))
        {
            Ok(()) => u64::from(u32::from_le_bytes(trailer)).max(size),
            Err(_) => size.saturating_mul(4),
        };
        f.rewind().map_err(io)?;
        decompress(std::io::BufReader::new(f), hint, max_bytes, &file)?
    } else {
        if size > max_bytes {
            return Err(too_large(&file, max_bytes));
        }
        std::fs::read(path).map_err(io)?
    };
    parse_csv(bytes, &file)
}

fn too_large(file: &str, max_bytes: u64) -> EtlError {
    EtlError::TooLarge {
        file: file.to_string(),
        max_bytes,
    }
}

/// Decompresses at most `max_bytes` of gzip input; `hint` is the expected
/// decompressed size.
fn decompress(input: impl Read, hint: u64, max_bytes: u64, file: &str) -> Result<Vec<u8>> {
    let hint = usize::try_from(hint.min(max_bytes).saturating_add(1)).unwrap_or(0);
    let mut out = Vec::with_capacity(hint);
    flate2::read::MultiGzDecoder::new(input)
        .take(max_bytes.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| EtlError::Csv {
            file: file.to_string(),
            message: format!("gzip: {e}"),
        })?;
    if out.len() as u64 > max_bytes {
        return Err(too_large(file, max_bytes));
    }
    Ok(out)
}

/// Parses CSV bytes (gzip is detected by its magic number). `file` names the
/// source in error messages.
pub fn read_raw_bytes(bytes: &[u8], file: &str) -> Result<RawTable> {
    let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
        decompress(
            bytes,
            (bytes.len() as u64).saturating_mul(4),
            DEFAULT_MAX_DECOMPRESSED_BYTES,
            file,
        )?
    } else {
        bytes.to_vec()
    };
    parse_csv(bytes, file)
}

fn parse_csv(bytes: Vec<u8>, file: &str) -> Result<RawTable> {
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
