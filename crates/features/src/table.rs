//! The typed artifacts of the features stage and their parquet form.

use polars::prelude::*;

use crate::{FeatureError, Result};

/// Engineered numeric features, in the order they are stored.
pub const NUMERIC_FEATURES: [&str; 16] = [
    "unit_price",
    "year",
    "month",
    "day_of_week",
    "prev_month_quantity",
    "price_rel_max",
    "price_rel_mean",
    "price_rel_median",
    "price_squared",
    "log1p_price",
    "product_popularity",
    "is_registered",
    "cust_recency_days",
    "cust_frequency",
    "cust_monetary",
    "target",
];

/// The entries of [`NUMERIC_FEATURES`] that are each a function of one
/// stored column: the calendar fields of `invoice_date`, the price
/// transforms of `unit_price`, `is_registered` (a known `customer_id`) and
/// `target` (ln(1 + `quantity`)). Parquet files leave them out (they are
/// almost half of the float columns); a [`FeatureTable`] computes them, by
/// [`derived_features`], when it is built and when it is read.
pub const DERIVED_FEATURES: [&str; 7] = [
    "year",
    "month",
    "day_of_week",
    "price_squared",
    "log1p_price",
    "is_registered",
    "target",
];

/// The columns a [`FeatureTable`] holds besides [`NUMERIC_FEATURES`], in
/// order: the row's identity and what the derived features come from.
pub const ID_COLUMNS: [&str; 6] = [
    "invoice_no",
    "stock_code",
    "invoice_date",
    "customer_id",
    "country",
    "quantity",
];

/// The derived features of one row, in [`DERIVED_FEATURES`] order. The only
/// definition of them: the features stage and every reader of its files
/// compute them here.
///
/// ```
/// // 2010-12-01 08:26:00 (a Wednesday), 2.55 a unit, a registered customer, 6 units.
/// let d = features::derived_features(1_291_191_960_000_000, 2.55, true, 6);
/// assert_eq!(d[..3], [2010.0, 12.0, 2.0]);
/// assert_eq!(d[6], 7f64.ln());
/// ```
pub fn derived_features(
    invoice_date_us: i64,
    unit_price: f64,
    registered: bool,
    quantity: i64,
) -> [f64; 7] {
    let (year, month, _, day_of_week) = etl::civil_from_micros(invoice_date_us);
    let (squared, log1p) = crate::engineer::price_transforms(unit_price);
    [
        f64::from(year),
        f64::from(month),
        f64::from(day_of_week),
        squared,
        log1p,
        if registered { 1.0 } else { 0.0 },
        (quantity as f64).ln_1p(),
    ]
}

/// Adds the [`DERIVED_FEATURES`] a frame lacks (all of them for a file the
/// features stage wrote; none for one written before they were left out),
/// and puts the columns in their canonical order: the others as they were,
/// then [`NUMERIC_FEATURES`].
fn with_derived(mut df: DataFrame) -> Result<DataFrame> {
    let has = |df: &DataFrame, name: &str| df.get_column_index(name).is_some();
    let missing: Vec<usize> = (0..DERIVED_FEATURES.len())
        .filter(|&k| !has(&df, DERIVED_FEATURES[k]))
        .collect();
    if !missing.is_empty() {
        df.rechunk_mut();
        let ts = df
            .column("invoice_date")?
            .datetime()?
            .physical()
            .cont_slice()?;
        let price = f64_col(&df, "unit_price")?;
        let registered: Vec<bool> = df
            .column("customer_id")?
            .i64()?
            .iter()
            .map(|c| c.is_some())
            .collect();
        let quantity = df.column("quantity")?.i64()?.cont_slice()?;
        let (mut cols, _) = crate::par::fill_columns(df.height(), |i, _: &mut ()| {
            derived_features(ts[i], price[i], registered[i], quantity[i])
        });
        for &k in &missing {
            let values = std::mem::take(&mut cols[k]);
            df.with_column(
                Float64Chunked::from_vec(DERIVED_FEATURES[k].into(), values).into_column(),
            )?;
        }
    }
    let order: Vec<PlSmallStr> = df
        .get_column_names()
        .into_iter()
        .filter(|n| !NUMERIC_FEATURES.contains(&n.as_str()))
        .cloned()
        .chain(NUMERIC_FEATURES.iter().map(|&n| n.into()))
        .collect();
    Ok(df.select(order)?)
}

/// One row of features, as training and serving see it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FeatureRow<'a> {
    /// Product.
    pub stock_code: &'a str,
    /// Customer's country.
    pub country: &'a str,
    /// Unit price (GBP).
    pub unit_price: f64,
    /// Calendar year of the invoice.
    pub year: f64,
    /// Month 1-12.
    pub month: f64,
    /// Day of week, 0 = Monday.
    pub day_of_week: f64,
    /// The product's total quantity in the previous calendar month.
    pub prev_month_quantity: f64,
    /// Price / the product's max training-window price.
    pub price_rel_max: f64,
    /// Price / the product's mean training-window price.
    pub price_rel_mean: f64,
    /// Price / the product's median training-window price.
    pub price_rel_median: f64,
    /// Price squared.
    pub price_squared: f64,
    /// ln(1 + price).
    pub log1p_price: f64,
    /// ln(1 + distinct training-window invoices with the product).
    pub product_popularity: f64,
    /// 1 when the customer id is known, else 0.
    pub is_registered: f64,
    /// Days since the customer's previous invoice (window length if none).
    pub cust_recency_days: f64,
    /// The customer's invoices in the window before this one.
    pub cust_frequency: f64,
    /// The customer's spend in the window before this one.
    pub cust_monetary: f64,
}

impl FeatureRow<'_> {
    /// A numeric feature by its column name.
    pub fn value(&self, name: &str) -> Option<f64> {
        Some(match name {
            "unit_price" => self.unit_price,
            "year" => self.year,
            "month" => self.month,
            "day_of_week" => self.day_of_week,
            "prev_month_quantity" => self.prev_month_quantity,
            "price_rel_max" => self.price_rel_max,
            "price_rel_mean" => self.price_rel_mean,
            "price_rel_median" => self.price_rel_median,
            "price_squared" => self.price_squared,
            "log1p_price" => self.log1p_price,
            "product_popularity" => self.product_popularity,
            "is_registered" => self.is_registered,
            "cust_recency_days" => self.cust_recency_days,
            "cust_frequency" => self.cust_frequency,
            "cust_monetary" => self.cust_monetary,
            _ => return None,
        })
    }
}

/// The rows of a [`FeatureTable`], one [`FeatureRow`] at a time.
#[derive(Debug, Clone)]
pub struct RowSource<'a> {
    codes: Vec<&'a str>,
    countries: Vec<&'a str>,
    /// One slice per [`NUMERIC_FEATURES`] entry.
    cols: Vec<&'a [f64]>,
}

impl<'a> RowSource<'a> {
    /// Rows.
    pub fn len(&self) -> usize {
        self.codes.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
    }

    /// Row `i` (panics when out of range, like slice indexing).
    pub fn row(&self, i: usize) -> FeatureRow<'a> {
        let c = &self.cols;
        FeatureRow {
            stock_code: self.codes[i],
            country: self.countries[i],
            unit_price: c[0][i],
            year: c[1][i],
            month: c[2][i],
            day_of_week: c[3][i],
            prev_month_quantity: c[4][i],
            price_rel_max: c[5][i],
            price_rel_mean: c[6][i],
            price_rel_median: c[7][i],
            price_squared: c[8][i],
            log1p_price: c[9][i],
            product_popularity: c[10][i],
            is_registered: c[11][i],
            cust_recency_days: c[12][i],
            cust_frequency: c[13][i],
            cust_monetary: c[14][i],
        }
    }
}

/// Row-level features, sorted by invoice time. Parquet columns:
/// `invoice_no, stock_code, invoice_date, customer_id, country, quantity`
/// followed by the float columns of [`NUMERIC_FEATURES`] (`target` =
/// ln(1 + quantity) last).
#[derive(Debug, Clone)]
pub struct FeatureTable {
    df: DataFrame,
}

fn f64_col<'a>(df: &'a DataFrame, name: &str) -> Result<&'a [f64]> {
    Ok(df.column(name)?.f64()?.cont_slice()?)
}

fn strs<'a>(df: &'a DataFrame, name: &str) -> Result<Vec<&'a str>> {
    Ok(df
        .column(name)?
        .str()?
        .iter()
        .map(|s| s.unwrap_or(""))
        .collect())
}

impl FeatureTable {
    /// The frame a table's parquet file holds, from the [`ID_COLUMNS`] (a
    /// frame of them) and one vector per [`NUMERIC_FEATURES`] entry that is
    /// not derived, in order. [`FeatureTable::from_dataframe`] on it
    /// computes the [`DERIVED_FEATURES`].
    pub(crate) fn stored_frame(ids: DataFrame, stored: Vec<Vec<f64>>) -> Result<DataFrame> {
        let mut df = ids.select(ID_COLUMNS)?;
        let names = NUMERIC_FEATURES
            .iter()
            .filter(|n| !DERIVED_FEATURES.contains(n));
        for (name, values) in names.zip(stored) {
            // `from_vec` takes the buffer; `Column::new` would copy it.
            df.with_column(Float64Chunked::from_vec((*name).into(), values).into_column())?;
        }
        Ok(df)
    }

    /// Wraps a frame after checking the columns; the [`DERIVED_FEATURES`] it
    /// lacks are computed.
    pub fn from_dataframe(df: DataFrame) -> Result<Self> {
        let mut df = with_derived(df)?;
        for name in ["invoice_no", "stock_code", "country"] {
            if !matches!(df.column(name)?.dtype(), DataType::String) {
                return Err(FeatureError::Artifact(format!(
                    "`{name}` must be a string column"
                )));
            }
        }
        if !matches!(
            df.column("invoice_date")?.dtype(),
            DataType::Datetime(TimeUnit::Microseconds, None)
        ) {
            return Err(FeatureError::Artifact(
                "`invoice_date` must be datetime[μs]".into(),
            ));
        }
        for name in NUMERIC_FEATURES {
            let col = df.column(name)?;
            if !matches!(col.dtype(), DataType::Float64) || col.null_count() > 0 {
                return Err(FeatureError::Artifact(format!(
                    "`{name}` must be a non-null float column"
                )));
            }
        }
        df.rechunk_mut();
        Ok(Self { df })
    }

    /// Rows.
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

    /// A numeric column by name.
    pub fn numeric(&self, name: &str) -> Result<&[f64]> {
        f64_col(&self.df, name)
    }

    /// Invoice timestamps (μs since epoch), ascending.
    pub fn timestamps(&self) -> Result<&[i64]> {
        Ok(self
            .df
            .column("invoice_date")?
            .datetime()?
            .physical()
            .cont_slice()?)
    }

    /// Stock codes.
    pub fn stock_codes(&self) -> Result<Vec<&str>> {
        strs(&self.df, "stock_code")
    }

    /// Countries.
    pub fn countries(&self) -> Result<Vec<&str>> {
        strs(&self.df, "country")
    }

    /// Random access to the rows as [`FeatureRow`]s, built on demand (the
    /// split stage reads tens of millions of rows without holding them all
    /// as structs).
    pub fn row_source(&self) -> Result<RowSource<'_>> {
        Ok(RowSource {
            codes: self.stock_codes()?,
            countries: self.countries()?,
            cols: NUMERIC_FEATURES
                .iter()
                .map(|n| self.numeric(n))
                .collect::<Result<_>>()?,
        })
    }

    /// All rows as [`FeatureRow`]s.
    pub fn rows(&self) -> Result<Vec<FeatureRow<'_>>> {
        let src = self.row_source()?;
        Ok((0..src.len()).map(|i| src.row(i)).collect())
    }

    /// Parquet bytes, without the [`DERIVED_FEATURES`] (reading computes them).
    pub fn to_parquet(&self) -> Result<Vec<u8>> {
        let stored: Vec<PlSmallStr> = self
            .df
            .get_column_names()
            .into_iter()
            .filter(|n| !DERIVED_FEATURES.contains(&n.as_str()))
            .cloned()
            .collect();
        Ok(etl::write_parquet(&self.df.select(stored)?)?)
    }

    /// Reads and checks parquet bytes.
    pub fn from_parquet(bytes: &[u8]) -> Result<Self> {
        Self::from_dataframe(etl::read_parquet(bytes)?)
    }
}

/// One product in the [`ProductSummary`].
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryRow {
    /// Product.
    pub stock_code: String,
    /// Most frequent description.
    pub description: String,
    /// Sales lines, all time.
    pub n_lines: f64,
    /// Distinct invoices, all time.
    pub n_invoices: f64,
    /// Lowest observed price.
    pub price_min: f64,
    /// 5th percentile of observed prices.
    pub price_p05: f64,
    /// Median observed price.
    pub price_median: f64,
    /// 95th percentile of observed prices.
    pub price_p95: f64,
    /// Highest observed price.
    pub price_max: f64,
    /// Training-window reference max price (NaN: not sold in the window).
    pub ref_price_max: f64,
    /// Training-window reference mean price.
    pub ref_price_mean: f64,
    /// Training-window reference median price.
    pub ref_price_median: f64,
    /// The popularity feature value (training window).
    pub popularity: f64,
    /// Most frequent customer country.
    pub usual_country: String,
    /// Quantity in the data's last calendar month: the `prev_month_quantity`
    /// context for pricing the month after.
    pub last_month_quantity: f64,
    /// First sale (μs since epoch).
    pub first_seen: i64,
    /// Last sale (μs since epoch).
    pub last_seen: i64,
}

/// One row per product: what serving needs to build a prediction context.
#[derive(Debug, Clone, PartialEq)]
pub struct ProductSummary {
    /// Products sorted by stock code.
    pub rows: Vec<SummaryRow>,
}

impl ProductSummary {
    /// Finds a product by stock code.
    pub fn get(&self, stock_code: &str) -> Option<&SummaryRow> {
        self.rows
            .binary_search_by(|r| r.stock_code.as_str().cmp(stock_code))
            .ok()
            .map(|i| &self.rows[i])
    }

    /// Parquet bytes.
    pub fn to_parquet(&self) -> Result<Vec<u8>> {
        let r = &self.rows;
        let f = |name: &str, get: fn(&SummaryRow) -> f64| -> polars::prelude::Column {
            Series::new(name.into(), r.iter().map(get).collect::<Vec<f64>>()).into()
        };
        let df = DataFrame::new(
            r.len(),
            vec![
                Series::new(
                    "stock_code".into(),
                    r.iter().map(|x| x.stock_code.as_str()).collect::<Vec<_>>(),
                )
                .into(),
                Series::new(
                    "description".into(),
                    r.iter().map(|x| x.description.as_str()).collect::<Vec<_>>(),
                )
                .into(),
                f("n_lines", |x| x.n_lines),
                f("n_invoices", |x| x.n_invoices),
                f("price_min", |x| x.price_min),
                f("price_p05", |x| x.price_p05),
                f("price_median", |x| x.price_median),
                f("price_p95", |x| x.price_p95),
                f("price_max", |x| x.price_max),
                f("ref_price_max", |x| x.ref_price_max),
                f("ref_price_mean", |x| x.ref_price_mean),
                f("ref_price_median", |x| x.ref_price_median),
                f("popularity", |x| x.popularity),
                Series::new(
                    "usual_country".into(),
                    r.iter()
                        .map(|x| x.usual_country.as_str())
                        .collect::<Vec<_>>(),
                )
                .into(),
                f("last_month_quantity", |x| x.last_month_quantity),
                Series::new(
                    "first_seen".into(),
                    r.iter().map(|x| x.first_seen).collect::<Vec<i64>>(),
                )
                .into(),
                Series::new(
                    "last_seen".into(),
                    r.iter().map(|x| x.last_seen).collect::<Vec<i64>>(),
                )
                .into(),
            ],
        )?;
        Ok(etl::write_parquet(&df)?)
    }

    /// Reads parquet bytes written by [`ProductSummary::to_parquet`].
    pub fn from_parquet(bytes: &[u8]) -> Result<Self> {
        let df = etl::read_parquet(bytes)?;
        let codes = strs(&df, "stock_code")?;
        let desc = strs(&df, "description")?;
        let country = strs(&df, "usual_country")?;
        let g = |name: &str| -> Result<Vec<f64>> {
            Ok(df
                .column(name)?
                .f64()?
                .iter()
                .map(|v| v.unwrap_or(f64::NAN))
                .collect())
        };
        let i = |name: &str| -> Result<Vec<i64>> {
            Ok(df
                .column(name)?
                .i64()?
                .iter()
                .map(|v| v.unwrap_or(0))
                .collect())
        };
        let (n_lines, n_inv, pmin, p05, pmed, p95, pmax) = (
            g("n_lines")?,
            g("n_invoices")?,
            g("price_min")?,
            g("price_p05")?,
            g("price_median")?,
            g("price_p95")?,
            g("price_max")?,
        );
        let (rmax, rmean, rmed, pop, lmq) = (
            g("ref_price_max")?,
            g("ref_price_mean")?,
            g("ref_price_median")?,
            g("popularity")?,
            g("last_month_quantity")?,
        );
        let (first, last) = (i("first_seen")?, i("last_seen")?);
        let rows = (0..df.height())
            .map(|k| SummaryRow {
                stock_code: codes[k].to_string(),
                description: desc[k].to_string(),
                n_lines: n_lines[k],
                n_invoices: n_inv[k],
                price_min: pmin[k],
                price_p05: p05[k],
                price_median: pmed[k],
                price_p95: p95[k],
                price_max: pmax[k],
                ref_price_max: rmax[k],
                ref_price_mean: rmean[k],
                ref_price_median: rmed[k],
                popularity: pop[k],
                usual_country: country[k].to_string(),
                last_month_quantity: lmq[k],
                first_seen: first[k],
                last_seen: last[k],
            })
            .collect::<Vec<_>>();
        if rows.windows(2).any(|w| w[0].stock_code >= w[1].stock_code) {
            return Err(FeatureError::Artifact(
                "product summary is not sorted by unique stock code".into(),
            ));
        }
        Ok(Self { rows })
    }
}

/// Each product's most recent sales rows (up to `features.recent_contexts`),
/// with the customer and calendar context serving predicts over. Same columns as
/// [`FeatureTable`].
#[derive(Debug, Clone)]
pub struct ProductContexts {
    /// The rows, sorted by stock code then time.
    pub table: FeatureTable,
}

impl ProductContexts {
    /// Parquet bytes.
    pub fn to_parquet(&self) -> Result<Vec<u8>> {
        self.table.to_parquet()
    }

    /// Reads parquet bytes.
    pub fn from_parquet(bytes: &[u8]) -> Result<Self> {
        Ok(Self {
            table: FeatureTable::from_parquet(bytes)?,
        })
    }
}
