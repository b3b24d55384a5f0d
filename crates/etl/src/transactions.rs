//! The typed output of the etl stage.

use polars::prelude::*;

use crate::StringCodes;
use crate::parquet::{
    EncodedColumns, read_parquet, read_parquet_keeping_pages, write_parquet_coded,
};
use crate::{EtlError, Result};

/// Cleaned sales lines: one row per invoice line of a product sold at a
/// positive price and quantity. Serialised as parquet with this schema:
///
/// | column | type |
/// |---|---|
/// | invoice_no | string |
/// | stock_code | string |
/// | description | string, nullable |
/// | quantity | int64 |
/// | invoice_date | datetime(μs) |
/// | unit_price | float64 |
/// | customer_id | int64, nullable (guest) |
/// | country | string |
#[derive(Debug, Clone)]
pub struct Transactions {
    df: DataFrame,
    /// Codes of string columns, by name, where cleaning made them (a table
    /// read from parquet or built otherwise has none).
    codes: Vec<(&'static str, StringCodes)>,
}

/// Borrowed, row-indexable columns of [`Transactions`].
#[derive(Debug, Clone)]
pub struct TxView<'a> {
    /// Invoice numbers.
    pub invoice_no: Vec<&'a str>,
    /// Stock codes.
    pub stock_code: Vec<&'a str>,
    /// Descriptions.
    pub description: Vec<Option<&'a str>>,
    /// Quantities (> 0).
    pub quantity: &'a [i64],
    /// Invoice timestamps, microseconds since the Unix epoch (naive local time).
    pub ts: &'a [i64],
    /// Unit prices (> 0).
    pub unit_price: &'a [f64],
    /// Customer ids (`None`: guest).
    pub customer_id: Vec<Option<i64>>,
    /// Countries.
    pub country: Vec<&'a str>,
}

/// The expected schema, in column order.
pub const SCHEMA: [(&str, &str); 8] = [
    ("invoice_no", "str"),
    ("stock_code", "str"),
    ("description", "str"),
    ("quantity", "i64"),
    ("invoice_date", "datetime[μs]"),
    ("unit_price", "f64"),
    ("customer_id", "i64"),
    ("country", "str"),
];

impl Transactions {
    /// Builds the table from column vectors of equal length.
    #[allow(clippy::too_many_arguments)]
    pub fn from_columns(
        invoice_no: Vec<&str>,
        stock_code: Vec<&str>,
        description: Vec<Option<&str>>,
        quantity: Vec<i64>,
        ts_micros: Vec<i64>,
        unit_price: Vec<f64>,
        customer_id: Vec<Option<i64>>,
        country: Vec<&str>,
    ) -> Result<Self> {
        Self::from_string_series(
            [
                Series::new("invoice_no".into(), invoice_no),
                Series::new("stock_code".into(), stock_code),
                Series::new("description".into(), description),
            ],
            quantity,
            ts_micros,
            unit_price,
            Int64Chunked::from_iter_options("customer_id".into(), customer_id.into_iter()),
            Series::new("country".into(), country),
        )
    }

    /// [`Transactions::from_columns`] with the string columns built already
    /// (`[invoice_no, stock_code, description]`, and `country`), and the
    /// customer ids (named `customer_id`).
    pub(crate) fn from_string_series(
        [invoice_no, stock_code, description]: [Series; 3],
        quantity: Vec<i64>,
        ts_micros: Vec<i64>,
        unit_price: Vec<f64>,
        customer_id: Int64Chunked,
        country: Series,
    ) -> Result<Self> {
        let height = quantity.len();
        let dates = Int64Chunked::from_vec("invoice_date".into(), ts_micros)
            .into_datetime(TimeUnit::Microseconds, None)
            .into_series();
        let df = DataFrame::new(
            height,
            vec![
                invoice_no.into(),
                stock_code.into(),
                description.into(),
                // `from_vec` takes the buffers; `Series::new` would copy them.
                Int64Chunked::from_vec("quantity".into(), quantity).into_column(),
                dates.into(),
                Float64Chunked::from_vec("unit_price".into(), unit_price).into_column(),
                customer_id.into_column(),
                country.into(),
            ],
        )?;
        Self::from_dataframe(df)
    }

    /// Wraps a frame after checking its schema.
    pub fn from_dataframe(mut df: DataFrame) -> Result<Self> {
        let names: Vec<String> = df
            .get_column_names()
            .iter()
            .map(|s| s.to_string())
            .collect();
        let expected: Vec<&str> = SCHEMA.iter().map(|(n, _)| *n).collect();
        if names != expected {
            return Err(EtlError::Schema(format!(
                "expected columns {expected:?}, found {names:?}"
            )));
        }
        let dtypes_ok = matches!(df.column("invoice_no")?.dtype(), DataType::String)
            && matches!(df.column("stock_code")?.dtype(), DataType::String)
            && matches!(df.column("description")?.dtype(), DataType::String)
            && matches!(df.column("quantity")?.dtype(), DataType::Int64)
            && matches!(
                df.column("invoice_date")?.dtype(),
                DataType::Datetime(TimeUnit::Microseconds, None)
            )
            && matches!(df.column("unit_price")?.dtype(), DataType::Float64)
            && matches!(df.column("customer_id")?.dtype(), DataType::Int64)
            && matches!(df.column("country")?.dtype(), DataType::String);
        if !dtypes_ok {
            return Err(EtlError::Schema(format!(
                "unexpected column types: {:?}",
                df.dtypes()
            )));
        }
        for name in [
            "invoice_no",
            "stock_code",
            "quantity",
            "invoice_date",
            "unit_price",
            "country",
        ] {
            if df.column(name)?.null_count() > 0 {
                return Err(EtlError::Schema(format!("column `{name}` has nulls")));
            }
        }
        df.rechunk_mut();
        Ok(Self { df, codes: vec![] })
    }

    /// Keeps `codes` of string columns (by name), each of the column it was
    /// made with, so writing and interning need not hash their views.
    pub(crate) fn with_codes(mut self, codes: Vec<(&'static str, StringCodes)>) -> Result<Self> {
        for (name, c) in &codes {
            let column = self.df.column(name)?;
            if c.len() != column.len() || !matches!(column.dtype(), DataType::String) {
                return Err(EtlError::Schema(format!(
                    "codes of {} rows for column `{name}` of {} rows",
                    c.len(),
                    column.len()
                )));
            }
        }
        self.codes = codes;
        Ok(self)
    }

    /// The codes of string column `name` ([`StringCodes`]: equal keys for
    /// equal strings), where cleaning made them.
    pub fn codes(&self, name: &str) -> Option<&StringCodes> {
        self.codes.iter().find(|(n, _)| *n == name).map(|(_, c)| c)
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.df.height()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.df.height() == 0
    }

    /// The underlying frame.
    pub fn dataframe(&self) -> &DataFrame {
        &self.df
    }

    /// Row-indexable borrowed columns.
    pub fn view(&self) -> Result<TxView<'_>> {
        let strs = |name: &str| -> Result<Vec<&str>> {
            Ok(self
                .df
                .column(name)?
                .str()?
                .iter()
                .map(|s| s.unwrap_or(""))
                .collect())
        };
        Ok(TxView {
            invoice_no: strs("invoice_no")?,
            stock_code: strs("stock_code")?,
            description: self.df.column("description")?.str()?.iter().collect(),
            quantity: self.df.column("quantity")?.i64()?.cont_slice()?,
            ts: self
                .df
                .column("invoice_date")?
                .datetime()?
                .physical()
                .cont_slice()?,
            unit_price: self.df.column("unit_price")?.f64()?.cont_slice()?,
            customer_id: self.df.column("customer_id")?.i64()?.iter().collect(),
            country: strs("country")?,
        })
    }

    /// Rows whose stock code is `code`.
    pub fn filter_stock_code(&self, code: &str) -> Result<Self> {
        let mask = self.df.column("stock_code")?.str()?.equal(code);
        Self::from_dataframe(self.df.filter(&mask)?)
    }

    /// Serialises to parquet bytes (deterministic for equal content).
    pub fn to_parquet(&self) -> Result<Vec<u8>> {
        write_parquet_coded(&self.df, |name| self.codes(name))
    }

    /// Reads parquet bytes written by [`Transactions::to_parquet`], checking the schema.
    pub fn from_parquet(bytes: &[u8]) -> Result<Self> {
        Self::from_dataframe(read_parquet(bytes)?)
    }

    /// [`Transactions::from_parquet`], keeping the file's encoded columns
    /// for a writer of a table that repeats some of them
    /// ([`crate::write_parquet_reusing`]).
    pub fn from_parquet_keeping_pages(bytes: Vec<u8>) -> Result<(Self, EncodedColumns)> {
        let (df, pages) = read_parquet_keeping_pages(bytes)?;
        Ok((Self::from_dataframe(df)?, pages))
    }

    /// The encoded columns of `bytes`, the parquet file this table was
    /// written as by [`Transactions::to_parquet`] (or read from): what
    /// [`Transactions::from_parquet_keeping_pages`] returns besides the
    /// table, without decoding the file.
    pub fn encoded_columns(&self, bytes: Vec<u8>) -> Result<EncodedColumns> {
        crate::parquet::encoded_columns(bytes, &self.df)
    }
}
