//! Stage 1 of the pipeline: read a transactions export, validate it and clean it
//! into a typed [`Transactions`] table (parquet).
//!
//! Accepts the UCI Online Retail columns (`InvoiceNo, StockCode, Description,
//! Quantity, InvoiceDate, UnitPrice, CustomerID, Country`), the Online Retail II
//! names (`Invoice`, `Price`, `Customer ID`) and any header case or spacing.
//! A missing required column or an unparsable required field is an error that
//! names the file, line and column; trouble in an optional field is counted.
//!
//! ```
//! let data = etl::synth::generate(&etl::synth::SynthConfig { n_invoices: 50, ..Default::default() });
//! let raw = etl::read_raw_bytes(data.csv.as_bytes(), "synthetic.csv").unwrap();
//! let (transactions, report) = etl::clean(&raw, &etl::EtlParams::default()).unwrap();
//! assert_eq!(report.rows_in as usize, data.rows);
//! assert_eq!(transactions.len() as u64, report.rows_out);
//! ```

mod clean;
mod costs;
mod dictionary;
pub mod hash;
mod par;
mod parquet;
mod read;
pub mod synth;
mod transactions;
mod workbook;

pub use clean::{
    DropReason, EtlParams, EtlReport, civil_from_micros, clean, format_micros, micros_from_civil,
};
pub use costs::read_unit_costs;
pub use dictionary::{StringCodes, StringDictionary};
pub use par::{join, map_on_every_core};
pub use parquet::{
    EncodedColumns, ParquetChunkWriter, ROW_GROUP_ROWS, read_parquet, read_parquet_keeping_pages,
    write_parquet, write_parquet_reusing,
};
pub use read::{
    Column, DEFAULT_MAX_DECOMPRESSED_BYTES, RawTable, TextColumn, read_raw_bytes, read_raw_file,
    read_raw_file_limited,
};
pub use transactions::{SCHEMA, Transactions, TxView};
pub use workbook::{WorkbookSummary, csv_to_workbook, is_workbook, workbook_to_csv};

/// Errors of the etl stage. Field errors carry the file, 1-based line and column.
#[derive(Debug, thiserror::Error)]
pub enum EtlError {
    /// The input could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The CSV itself is malformed (quoting, ragged rows, encoding).
    #[error("{file}: malformed CSV: {message}")]
    Csv {
        /// The file.
        file: String,
        /// The parser's message.
        message: String,
    },
    /// The input is larger than the configured bound.
    #[error(
        "{file}: larger than {max_bytes} bytes once decompressed (etl.max_decompressed_bytes); refusing to load it"
    )]
    TooLarge {
        /// The file.
        file: String,
        /// The bound.
        max_bytes: u64,
    },
    /// The file has no data rows.
    #[error("{file}: no data rows")]
    Empty {
        /// The file.
        file: String,
    },
    /// A required column is absent.
    #[error(
        "{file}: line 1: missing required column `{column}` (accepted names: {accepted}); found columns: {found}"
    )]
    MissingColumn {
        /// The file.
        file: String,
        /// Canonical column name.
        column: &'static str,
        /// Accepted header spellings.
        accepted: String,
        /// The header as read.
        found: String,
    },
    /// Two header columns map to the same field.
    #[error("{file}: line 1: columns `{first}` and `{second}` both map to `{column}`")]
    DuplicateColumn {
        /// The file.
        file: String,
        /// Canonical column name.
        column: &'static str,
        /// First header.
        first: String,
        /// Second header.
        second: String,
    },
    /// A required field could not be parsed.
    #[error("{file}: line {line}, column `{column}`: {problem} (value: {value:?})")]
    InvalidField {
        /// The file.
        file: String,
        /// 1-based line number in the (decompressed) file.
        line: u64,
        /// The column as named in the file's header.
        column: String,
        /// The offending text.
        value: String,
        /// What was expected.
        problem: String,
    },
    /// A workbook (`.xlsx`, or a `.zip` holding one) cannot be converted.
    #[error("{file}: {message}")]
    Workbook {
        /// The file.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// A parameter is invalid.
    #[error("etl params: {0}")]
    Params(String),
    /// A transactions artifact does not have the expected schema.
    #[error("transactions artifact: {0}")]
    Schema(String),
    /// An error inside polars.
    #[error("polars: {0}")]
    Polars(#[from] polars::error::PolarsError),
}

/// Result alias of this crate.
pub type Result<T, E = EtlError> = std::result::Result<T, E>;
