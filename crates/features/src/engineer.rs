//! Leak-free feature engineering.

use std::collections::BTreeMap;

use etl::hash::HashMap;

use etl::{Transactions, civil_from_micros, format_micros, join, micros_from_civil};
use polars::prelude::{DataFrame, IdxCa, IdxSize};
use serde::{Deserialize, Serialize};

use crate::table::{
    DERIVED_FEATURES, FeatureTable, ID_COLUMNS, NUMERIC_FEATURES, ProductContexts, ProductSummary,
    SummaryRow,
};
use crate::{FeatureError, Result};

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// How to cut time into train / validation / test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum SplitRule {
    /// By share of rows in time order; rows with equal timestamps stay together.
    Fraction {
        /// Share of rows for training.
        train: f64,
        /// Share of rows for validation (the rest is test).
        val: f64,
    },
    /// By date: train before `train_end`, validation before `val_end`, test after.
    Date {
        /// `YYYY-MM-DD`, exclusive end of training.
        train_end: String,
        /// `YYYY-MM-DD`, exclusive end of validation.
        val_end: String,
    },
}

/// Parameters of the features stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureParams {
    /// Look-back window of the customer features, in days.
    pub customer_window_days: i64,
    /// Recent sales rows kept per product for serving contexts.
    pub recent_contexts: usize,
    /// Where training ends (reference prices and popularity use training rows only).
    pub split: SplitRule,
}

impl Default for FeatureParams {
    fn default() -> Self {
        Self {
            customer_window_days: 365,
            recent_contexts: 50,
            split: SplitRule::Fraction {
                train: 0.7,
                val: 0.15,
            },
        }
    }
}

/// Time boundaries of the split, fixed by the features stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainWindow {
    /// First timestamp (μs).
    pub start: i64,
    /// Exclusive end of training (μs).
    pub train_end: i64,
    /// Exclusive end of validation (μs).
    pub val_end: i64,
    /// Last timestamp (μs).
    pub end: i64,
    /// The same, readable.
    pub readable: BTreeMap<String, String>,
}

impl TrainWindow {
    fn new(start: i64, train_end: i64, val_end: i64, end: i64) -> Self {
        let readable = [
            ("start", start),
            ("train_end", train_end),
            ("val_end", val_end),
            ("end", end),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), format_micros(v)))
        .collect();
        Self {
            start,
            train_end,
            val_end,
            end,
            readable,
        }
    }

    /// 0 = train, 1 = validation, 2 = test.
    pub fn part_of(&self, ts: i64) -> usize {
        if ts < self.train_end {
            0
        } else if ts < self.val_end {
            1
        } else {
            2
        }
    }

    /// Indices of `timestamps` in each part: `[train, validation, test]`.
    pub fn partition(&self, timestamps: &[i64]) -> [Vec<usize>; 3] {
        let mut parts: [Vec<usize>; 3] = [Vec::new(), Vec::new(), Vec::new()];
        for (i, &t) in timestamps.iter().enumerate() {
            parts[self.part_of(t)].push(i);
        }
        parts
    }
}

/// A product's reference prices, from the training window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PriceRef {
    /// Max training price (NaN when the product has none).
    pub max: f64,
    /// Mean training price.
    pub mean: f64,
    /// Median training price.
    pub median: f64,
}

/// The price-derived features `(rel_max, rel_mean, rel_median, squared, log1p)`.
/// A product without training-window prices gets neutral ratios of 1.
///
/// ```
/// let r = features::PriceRef { max: 4.0, mean: 2.0, median: 2.0 };
/// let (rel_max, rel_mean, _, sq, _) = features::price_features(2.0, &r);
/// assert_eq!((rel_max, rel_mean, sq), (0.5, 1.0, 4.0));
/// ```
pub fn price_features(price: f64, reference: &PriceRef) -> (f64, f64, f64, f64, f64) {
    let rel = |r: f64| {
        if r.is_finite() && r > 0.0 {
            price / r
        } else {
            1.0
        }
    };
    let (squared, log1p) = price_transforms(price);
    (
        rel(reference.max),
        rel(reference.mean),
        rel(reference.median),
        squared,
        log1p,
    )
}

/// `(price², ln(1 + price))`.
pub(crate) fn price_transforms(price: f64) -> (f64, f64) {
    (price * price, price.ln_1p())
}

/// What the features stage reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FeatureReport {
    /// Rows in.
    pub rows_in: u64,
    /// Rows out.
    pub rows_out: u64,
    /// Products in the output.
    pub products: u64,
    /// Products with no training-window sale (neutral price ratios).
    pub products_without_train_prices: u64,
    /// Share of rows from registered customers.
    pub registered_share: f64,
    /// Share of rows whose product sold in the previous calendar month.
    pub prev_month_known_share: f64,
    /// Time boundaries.
    pub window: BTreeMap<String, String>,
    /// Rows per part under the window (train, val, test).
    pub rows_per_part: [u64; 3],
}

/// Everything the features stage produces.
#[derive(Debug, Clone)]
pub struct FeatureOutputs {
    /// Row-level features.
    pub table: FeatureTable,
    /// One row per product.
    pub summary: ProductSummary,
    /// Recent contexts per product.
    pub contexts: ProductContexts,
    /// The split boundaries.
    pub window: TrainWindow,
    /// Metrics.
    pub report: FeatureReport,
}

/// What the features stage writes, as built: the row table and the recent
/// contexts hold the columns their parquet files hold (the
/// [`DERIVED_FEATURES`] left out). [`FeatureFiles::into_outputs`] computes
/// the derived features, as reading the files does.
#[derive(Debug, Clone)]
pub struct FeatureFiles {
    table: DataFrame,
    contexts: DataFrame,
    /// One row per product.
    pub summary: ProductSummary,
    /// The split boundaries.
    pub window: TrainWindow,
    /// Metrics.
    pub report: FeatureReport,
}

impl FeatureFiles {
    /// The feature table's parquet bytes (those of [`FeatureTable::to_parquet`]).
    pub fn table_parquet(&self) -> Result<Vec<u8>> {
        Ok(etl::write_parquet(&self.table)?)
    }

    /// [`FeatureFiles::table_parquet`], copying the encoded pages of the
    /// columns it shares with `transactions` (the file the table was built
    /// from, read with [`etl::Transactions::from_parquet_keeping_pages`])
    /// instead of encoding them again: the same bytes, less work.
    pub fn table_parquet_reusing(&self, transactions: &etl::EncodedColumns) -> Result<Vec<u8>> {
        Ok(etl::write_parquet_reusing(&self.table, transactions)?)
    }

    /// The recent contexts' parquet bytes (those of [`ProductContexts::to_parquet`]).
    pub fn contexts_parquet(&self) -> Result<Vec<u8>> {
        Ok(etl::write_parquet(&self.contexts)?)
    }

    /// The typed outputs, derived features computed.
    pub fn into_outputs(self) -> Result<FeatureOutputs> {
        Ok(FeatureOutputs {
            table: FeatureTable::from_dataframe(self.table)?,
            summary: self.summary,
            contexts: ProductContexts {
                table: FeatureTable::from_dataframe(self.contexts)?,
            },
            window: self.window,
            report: self.report,
        })
    }
}

fn parse_day(s: &str, key: &str) -> Result<i64> {
    let bad = || FeatureError::Params(format!("split.{key} must be YYYY-MM-DD, found {s:?}"));
    let parts: Vec<&str> = s.trim().split('-').collect();
    if parts.len() != 3 {
        return Err(bad());
    }
    let y: i32 = parts[0].parse().map_err(|_| bad())?;
    let m: u32 = parts[1].parse().map_err(|_| bad())?;
    let d: u32 = parts[2].parse().map_err(|_| bad())?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    Ok(micros_from_civil(y, m, d))
}

fn window_for(sorted_ts: &[i64], rule: &SplitRule) -> Result<TrainWindow> {
    let (Some(&start), Some(&end)) = (sorted_ts.first(), sorted_ts.last()) else {
        return Err(FeatureError::NoData("no transactions to split".into()));
    };
    let (train_end, val_end) = match rule {
        SplitRule::Fraction { train, val } => {
            if !(*train > 0.0 && *val >= 0.0 && train + val < 1.0) {
                return Err(FeatureError::Params(format!(
                    "split fractions must satisfy 0 < train, 0 <= val, train + val < 1 (train = {train}, val = {val})"
                )));
            }
            let n = sorted_ts.len();
            let at = |f: f64| sorted_ts[((n as f64 * f) as usize).min(n - 1)];
            (at(*train), at(train + val))
        }
        SplitRule::Date { train_end, val_end } => {
            let (t, v) = (
                parse_day(train_end, "train_end")?,
                parse_day(val_end, "val_end")?,
            );
            if t >= v {
                return Err(FeatureError::Params(format!(
                    "split.train_end ({train_end}) must be before split.val_end ({val_end})"
                )));
            }
            (t, v)
        }
    };
    if train_end <= start {
        return Err(FeatureError::Params(format!(
            "the training window is empty: it ends at {} and the data starts at {}",
            format_micros(train_end),
            format_micros(start)
        )));
    }
    Ok(TrainWindow::new(start, train_end, val_end, end))
}

/// The median of an ascending slice (NaN when empty).
fn median_sorted(v: &[f64]) -> f64 {
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The median of `values` (sorted in place; NaN when empty).
///
/// ```
/// assert_eq!(features::median(&mut [3.0, 1.0, 2.0, 10.0]), 2.5);
/// ```
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    median_sorted(values)
}

fn quantile_sorted(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let pos = q * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// Months since year 0 of each timestamp (`year * 12 + month - 1`). Rows
/// come in time order, so a day's value is computed once per run of it.
fn year_months(ts: &[i64]) -> Vec<i32> {
    let mut last: Option<(i64, i32)> = None;
    ts.iter()
        .map(|&t| {
            let day = t.div_euclid(MICROS_PER_DAY);
            match last {
                Some((d, ym)) if d == day => ym,
                _ => {
                    let (y, m, _, _) = civil_from_micros(t);
                    let ym = y * 12 + m as i32 - 1;
                    last = Some((day, ym));
                    ym
                }
            }
        })
        .collect()
}

/// Dense ids for the distinct values of string column `name` (a missing
/// value is ""), in first-seen order: from the column's codes where
/// cleaning made them ([`etl::StringCodes`]: one array lookup per row),
/// otherwise from its views ([`etl::StringDictionary`]: rows numbered by
/// their views, strings compared only once per distinct view).
fn intern<'a>(tx: &'a Transactions, name: &str) -> Result<(Vec<u32>, Vec<&'a str>)> {
    let chunks: Vec<_> = tx
        .dataframe()
        .column(name)?
        .str()?
        .downcast_iter()
        .collect();
    let etl::StringDictionary { ids, values } = match (tx.codes(name), chunks.as_slice()) {
        (Some(codes), [column]) => codes.dictionary(column, 0, Some(""))?,
        _ => etl::StringDictionary::of(&chunks, Some("")),
    };
    Ok((ids, values))
}

/// The columns [`ProductStats::of`] reads, by row.
struct Columns<'a> {
    ts: &'a [i64],
    unit_price: &'a [f64],
    inv: &'a [u32],
    did: &'a [u32],
    cid: &'a [u32],
    desc_names: &'a [&'a str],
    country_names: &'a [&'a str],
    train_end: i64,
}

/// What the row features and the summary need of one product's rows.
#[derive(Debug, Clone)]
struct ProductStats {
    /// Reference prices of the training rows.
    reference: PriceRef,
    /// ln(1 + distinct invoices among the training rows).
    popularity: f64,
    /// Price min, 5 %, median, 95 %, max (NaN without rows).
    prices: [f64; 5],
    /// Distinct invoices.
    invoices: u64,
    /// The most frequent non-empty description (ties: the smallest).
    description: Option<u32>,
    /// The most frequent country (ties: the smallest name).
    country: Option<u32>,
}

impl ProductStats {
    fn of(rows: &[usize], c: &Columns<'_>) -> Self {
        let mut prices: Vec<f64> = rows.iter().map(|&i| c.unit_price[i]).collect();
        prices.sort_by(f64::total_cmp);
        let mut train: Vec<f64> = Vec::new();
        let mut train_invoices: Vec<u32> = Vec::new();
        for &i in rows {
            if c.ts[i] < c.train_end {
                train.push(c.unit_price[i]);
                train_invoices.push(c.inv[i]);
            }
        }
        train.sort_by(f64::total_cmp);
        let reference = match train.last() {
            None => PriceRef {
                max: f64::NAN,
                mean: f64::NAN,
                median: f64::NAN,
            },
            Some(&max) => PriceRef {
                max,
                mean: train.iter().sum::<f64>() / train.len() as f64,
                median: median_sorted(&train),
            },
        };
        let mut invoices: Vec<u32> = rows.iter().map(|&i| c.inv[i]).collect();
        let mut descriptions: Vec<u32> = rows
            .iter()
            .map(|&i| c.did[i])
            .filter(|&d| !c.desc_names[d as usize].is_empty())
            .collect();
        let mut countries: Vec<u32> = rows.iter().map(|&i| c.cid[i]).collect();
        Self {
            reference,
            popularity: (distinct(&mut train_invoices) as f64).ln_1p(),
            prices: [
                prices.first().copied().unwrap_or(f64::NAN),
                quantile_sorted(&prices, 0.05),
                median_sorted(&prices),
                quantile_sorted(&prices, 0.95),
                prices.last().copied().unwrap_or(f64::NAN),
            ],
            invoices: distinct(&mut invoices) as u64,
            description: mode(&mut descriptions, c.desc_names),
            country: mode(&mut countries, c.country_names),
        }
    }
}

/// How many distinct values (sorts them).
fn distinct(values: &mut [u32]) -> usize {
    values.sort_unstable();
    values.chunk_by(|a, b| a == b).count()
}

/// The most frequent value id (ties: the smallest name); sorts them.
fn mode(values: &mut [u32], names: &[&str]) -> Option<u32> {
    values.sort_unstable();
    let mut best: Option<(u32, usize)> = None;
    for run in values.chunk_by(|a, b| a == b) {
        let (value, count) = (run[0], run.len());
        let better = match best {
            None => true,
            Some((v, c)) => count > c || (count == c && names[value as usize] < names[v as usize]),
        };
        if better {
            best = Some((value, count));
        }
    }
    best.map(|(v, _)| v)
}

/// How many of [`NUMERIC_FEATURES`] the row loop computes (the rest are
/// [`DERIVED_FEATURES`]).
const STORED: usize = NUMERIC_FEATURES.len() - DERIVED_FEATURES.len();

/// What the row loop counts, per chunk of rows.
#[derive(Debug, Default)]
struct RowTally {
    prev_known: usize,
    registered: usize,
    rows_per_part: [u64; 3],
    /// The customer, time and customer features of the chunk's previous
    /// registered row: an invoice's lines, adjacent in time order, share
    /// the customer and the time, so they share the features too.
    last_customer: Option<(i64, i64, (f64, f64, f64))>,
}

impl RowTally {
    fn add(self, other: Self) -> Self {
        let mut rows_per_part = self.rows_per_part;
        for (a, b) in rows_per_part.iter_mut().zip(other.rows_per_part) {
            *a += b;
        }
        Self {
            prev_known: self.prev_known + other.prev_known,
            registered: self.registered + other.registered,
            rows_per_part,
            last_customer: None,
        }
    }
}

/// Per-customer invoice history: sorted timestamps and prefix sums of spend.
struct CustomerHistory {
    ts: Vec<i64>,
    spend_prefix: Vec<f64>,
}

/// Quantity per product and calendar month, in a dense (product, month) grid.
struct MonthGrid {
    /// Each row's month ([`year_months`]).
    month: Vec<i32>,
    first: i32,
    last: i32,
    /// Row-major by product: `quantity[p * months + (m - first)]`.
    quantity: Vec<f64>,
}

impl MonthGrid {
    fn new(ts: &[i64], pid: &[u32], quantity: &[i64], n_products: usize) -> Self {
        let month = year_months(ts);
        let first = month.iter().copied().min().unwrap_or(0);
        let last = month.iter().copied().max().unwrap_or(0);
        let months = (last - first + 1) as usize;
        let mut grid = vec![0.0f64; n_products * months];
        for ((&p, &m), &q) in pid.iter().zip(&month).zip(quantity) {
            grid[p as usize * months + (m - first) as usize] += q as f64;
        }
        Self {
            month,
            first,
            last,
            quantity: grid,
        }
    }

    /// Product `p`'s quantity in month `m` (0 outside the data's months).
    fn quantity(&self, p: u32, m: i32) -> f64 {
        if m < self.first || m > self.last {
            return 0.0;
        }
        let months = (self.last - self.first + 1) as usize;
        self.quantity[p as usize * months + (m - self.first) as usize]
    }
}

/// Each registered customer's invoices (time, spend), sorted by time, from
/// each invoice's first registered line's customer and time.
fn customer_histories(
    ts: &[i64],
    quantity: &[i64],
    unit_price: &[f64],
    inv: &[u32],
    customer_id: &(impl Fn(usize) -> Option<i64> + Sync),
) -> HashMap<i64, CustomerHistory> {
    let n_invoices = inv.iter().copied().max().map_or(0, |m| m as usize + 1);
    let mut invoice_agg: Vec<Option<(i64, i64, f64)>> = vec![None; n_invoices];
    for i in 0..ts.len() {
        if let Some(c) = customer_id(i) {
            let e = invoice_agg[inv[i] as usize].get_or_insert((c, ts[i], 0.0));
            e.2 += quantity[i] as f64 * unit_price[i];
        }
    }
    let mut per_customer: HashMap<i64, Vec<(i64, f64)>> = HashMap::default();
    for (c, t, s) in invoice_agg.into_iter().flatten() {
        per_customer.entry(c).or_default().push((t, s));
    }
    per_customer
        .into_iter()
        .map(|(c, mut inv)| {
            inv.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
            let mut prefix = Vec::with_capacity(inv.len() + 1);
            prefix.push(0.0);
            let mut acc = 0.0;
            for (_, s) in &inv {
                acc += s;
                prefix.push(acc);
            }
            (
                c,
                CustomerHistory {
                    ts: inv.iter().map(|x| x.0).collect(),
                    spend_prefix: prefix,
                },
            )
        })
        .collect()
}

/// Builds features, the product summary, recent contexts and the train
/// window: [`build_feature_files`], then the derived features.
pub fn build_features(
    tx: &Transactions,
    params: &FeatureParams,
    stockcode: Option<&str>,
) -> Result<FeatureOutputs> {
    build_feature_files(tx, params, stockcode)?.into_outputs()
}

/// Builds what the features stage writes: the stored features, the product
/// summary, recent contexts and the train window.
///
/// No feature of a row uses information from after that row, except the
/// training-window reference prices and popularity, which use only rows before
/// `window.train_end`, as a fitted preprocessor would.
/// With `stockcode`, only that product's rows are output (customer histories
/// still use every product).
pub fn build_feature_files(
    tx: &Transactions,
    params: &FeatureParams,
    stockcode: Option<&str>,
) -> Result<FeatureFiles> {
    if params.customer_window_days <= 0 {
        return Err(FeatureError::Params(
            "features.customer_window_days must be > 0".into(),
        ));
    }
    let df = tx.dataframe();
    let n = tx.len();
    if n == 0 {
        return Err(FeatureError::NoData(
            "the transactions table is empty".into(),
        ));
    }
    let ts = df
        .column("invoice_date")?
        .datetime()?
        .physical()
        .cont_slice()?;
    let quantity = df.column("quantity")?.i64()?.cont_slice()?;
    let unit_price = df.column("unit_price")?.f64()?.cont_slice()?;
    // Customer ids (null for guests), read in place: values and validity.
    let customers = df.column("customer_id")?.i64()?.rechunk();
    let customers = customers
        .downcast_iter()
        .next()
        .ok_or_else(|| FeatureError::NoData("the transactions table is empty".into()))?;
    let (customer_values, customer_validity) =
        (customers.values().as_slice(), customers.validity());
    let customer_id = |i: usize| {
        customer_validity
            .is_none_or(|v| v.get_bit(i))
            .then(|| customer_values[i])
    };

    // Time order (stable on ties).
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| ts[i]);

    // Dense ids for products, invoices, countries and descriptions.
    let ((products, countries), (invoices, descriptions)) = join(
        || (intern(tx, "stock_code"), intern(tx, "country")),
        || (intern(tx, "invoice_no"), intern(tx, "description")),
    );
    let ((pid, product_names), (cid, country_names)) = (products?, countries?);
    let ((inv, _), (did, desc_names)) = (invoices?, descriptions?);
    let n_products = product_names.len();
    let selected: Option<u32> = match stockcode {
        None => None,
        Some(code) => Some(
            product_names
                .iter()
                .position(|c| *c == code)
                .map(|p| p as u32)
                .ok_or_else(|| {
                    FeatureError::NoData(format!("stock code {code:?} has no sales after cleaning"))
                })?,
        ),
    };
    // The output rows in time order: every row, or the selected product's.
    let out_order: std::borrow::Cow<'_, [usize]> = match selected {
        None => (&order[..]).into(),
        Some(p) => order.iter().copied().filter(|&i| pid[i] == p).collect(),
    };
    let out_ts: Vec<i64> = out_order.iter().map(|&i| ts[i]).collect();
    let window = window_for(&out_ts, &params.split)?;

    // The monthly quantities on one core, the customer histories on the other.
    let (months, histories) = join(
        || MonthGrid::new(ts, &pid, quantity, n_products),
        || customer_histories(ts, quantity, unit_price, &inv, &customer_id),
    );

    // Each product's output rows (positions in time order), grouped by
    // product, and what the row features and the summary need of them.
    let mut starts = vec![0usize; n_products + 1];
    for &i in out_order.iter() {
        starts[pid[i] as usize + 1] += 1;
    }
    for p in 0..n_products {
        starts[p + 1] += starts[p];
    }
    let mut grouped = vec![0usize; out_order.len()];
    let mut next = starts.clone();
    for (row, &i) in out_order.iter().enumerate() {
        let slot = &mut next[pid[i] as usize];
        grouped[*slot] = row;
        *slot += 1;
    }
    let rows_of = |p: usize| &grouped[starts[p]..starts[p + 1]];
    let columns = Columns {
        ts,
        unit_price,
        inv: &inv,
        did: &did,
        cid: &cid,
        desc_names: &desc_names,
        country_names: &country_names,
        train_end: window.train_end,
    };
    let stats: Vec<ProductStats> = etl::map_on_every_core(n_products, 64, |p| {
        let rows: Vec<usize> = rows_of(p).iter().map(|&row| out_order[row]).collect();
        ProductStats::of(&rows, &columns)
    });

    let window_us = params.customer_window_days * MICROS_PER_DAY;
    let window_days = params.customer_window_days as f64;
    // A guest's, or a customer's without invoices in the window.
    let no_history = (window_days, 0.0, 0.0);
    // Recency (days), frequency (invoices) and spend of a customer's
    // invoices in the window before `t`.
    let customer_features = |history: Option<&CustomerHistory>, t: i64| match history {
        None => no_history,
        Some(h) => {
            let hi = h.ts.partition_point(|&x| x < t);
            let lo = h.ts.partition_point(|&x| x < t - window_us);
            if hi > lo {
                let recency = (t - h.ts[hi - 1]) as f64 / MICROS_PER_DAY as f64;
                (
                    recency,
                    (hi - lo) as f64,
                    h.spend_prefix[hi] - h.spend_prefix[lo],
                )
            } else {
                no_history
            }
        }
    };

    // Row features, in time order, computed in chunks on every core.
    let m = out_order.len();
    let row = |i: usize, tally: &mut RowTally| -> [f64; STORED] {
        let t = ts[i];
        let p = pid[i];
        let price = unit_price[i];
        let prev = months.quantity(p, months.month[i] - 1);
        if prev > 0.0 {
            tally.prev_known += 1;
        }
        let (rel_max, rel_mean, rel_median, _, _) =
            price_features(price, &stats[p as usize].reference);
        let (recency, freq, monetary) = match customer_id(i) {
            None => no_history,
            Some(c) => {
                tally.registered += 1;
                match tally.last_customer {
                    Some((lc, lt, features)) if lc == c && lt == t => features,
                    _ => {
                        let features = customer_features(histories.get(&c), t);
                        tally.last_customer = Some((c, t, features));
                        features
                    }
                }
            }
        };
        tally.rows_per_part[window.part_of(t)] += 1;
        // The features that are not derived, in `NUMERIC_FEATURES` order.
        [
            price,
            prev,
            rel_max,
            rel_mean,
            rel_median,
            stats[p as usize].popularity,
            recency,
            freq,
            monetary,
        ]
    };
    let (stored, tallies) =
        crate::par::fill_columns::<STORED, RowTally>(m, |j, tally| row(out_order[j], tally));
    let tally = tallies.into_iter().fold(RowTally::default(), RowTally::add);
    let (prev_known, registered, rows_per_part) =
        (tally.prev_known, tally.registered, tally.rows_per_part);

    let ids = df.select(ID_COLUMNS)?;
    let ids = if out_order.iter().enumerate().all(|(k, &i)| k == i) {
        ids
    } else {
        let idx = IdxCa::from_vec(
            "idx".into(),
            out_order.iter().map(|&i| i as IdxSize).collect(),
        );
        ids.take(&idx)?
    };
    let table = FeatureTable::stored_frame(ids, stored)?;

    // Per-product summary and recent contexts (output products only).
    let mut summary_rows = Vec::new();
    let mut context_rows: Vec<usize> = Vec::new();
    let mut without_train = 0u64;
    // Products in stock-code order: summary rows come out sorted and context
    // rows grouped by product (in time order within a product).
    let mut by_code: Vec<usize> = (0..n_products).collect();
    by_code.sort_unstable_by_key(|&p| product_names[p]);
    for p in by_code {
        let code = product_names[p];
        let rows = rows_of(p);
        if rows.is_empty() {
            continue;
        }
        let st = &stats[p];
        let reference = st.reference;
        if reference.max.is_nan() {
            without_train += 1;
        }
        summary_rows.push(SummaryRow {
            stock_code: code.to_string(),
            description: st
                .description
                .map(|d| desc_names[d as usize].to_string())
                .unwrap_or_default(),
            n_lines: rows.len() as f64,
            n_invoices: st.invoices as f64,
            price_min: st.prices[0],
            price_p05: st.prices[1],
            price_median: st.prices[2],
            price_p95: st.prices[3],
            price_max: st.prices[4],
            ref_price_max: reference.max,
            ref_price_mean: reference.mean,
            ref_price_median: reference.median,
            popularity: st.popularity,
            usual_country: st
                .country
                .map(|c| country_names[c as usize].to_string())
                .unwrap_or_default(),
            last_month_quantity: months.quantity(p as u32, months.last),
            first_seen: out_ts[rows[0]],
            last_seen: out_ts[rows[rows.len() - 1]],
        });
        let k = params.recent_contexts.min(rows.len());
        context_rows.extend_from_slice(&rows[rows.len() - k..]);
    }
    let idx = polars::prelude::IdxCa::from_vec(
        "idx".into(),
        context_rows
            .iter()
            .map(|&r| r as polars::prelude::IdxSize)
            .collect(),
    );
    let contexts = table.take(&idx)?;

    let report = FeatureReport {
        rows_in: n as u64,
        rows_out: m as u64,
        products: summary_rows.len() as u64,
        products_without_train_prices: without_train,
        registered_share: registered as f64 / m.max(1) as f64,
        prev_month_known_share: prev_known as f64 / m.max(1) as f64,
        window: window.readable.clone(),
        rows_per_part,
    };
    Ok(FeatureFiles {
        table,
        contexts,
        summary: ProductSummary { rows: summary_rows },
        window,
        report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (invoice, stock code, quantity, date, price, customer)
    type Line<'a> = (&'a str, &'a str, i64, &'a str, f64, Option<i64>);

    fn tx(rows: &[Line<'_>]) -> Transactions {
        let ts: Vec<i64> = rows
            .iter()
            .map(|r| {
                let p: Vec<u32> = r.3.split('-').map(|x| x.parse().unwrap_or(1)).collect();
                micros_from_civil(p[0] as i32, p[1], p[2]) + 10 * 3_600_000_000
            })
            .collect();
        Transactions::from_columns(
            rows.iter().map(|r| r.0).collect(),
            rows.iter().map(|r| r.1).collect(),
            rows.iter().map(|_| Some("X")).collect(),
            rows.iter().map(|r| r.2).collect(),
            ts,
            rows.iter().map(|r| r.4).collect(),
            rows.iter().map(|r| r.5).collect(),
            rows.iter().map(|_| "United Kingdom").collect(),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_row_loop_writes_the_stored_features_in_table_order() {
        let stored: Vec<&str> = NUMERIC_FEATURES
            .iter()
            .copied()
            .filter(|n| !DERIVED_FEATURES.contains(n))
            .collect();
        assert_eq!(
            stored,
            [
                "unit_price",
                "prev_month_quantity",
                "price_rel_max",
                "price_rel_mean",
                "price_rel_median",
                "product_popularity",
                "cust_recency_days",
                "cust_frequency",
                "cust_monetary",
            ]
        );
        assert_eq!(stored.len(), STORED);
    }

    #[test]
    fn the_stage_files_are_the_bytes_of_the_typed_outputs() {
        let t = tx(&[
            ("1", "A", 5, "2011-01-10", 1.0, None),
            ("2", "B", 7, "2011-01-12", 2.5, Some(12345)),
            ("2", "A", 3, "2011-01-12", 1.1, Some(12345)),
            ("3", "A", 2, "2011-02-03", 0.9, Some(777)),
            ("4", "B", 1, "2011-03-01", 2.4, None),
            ("5", "A", 4, "2011-03-20", 1.2, Some(12345)),
        ]);
        let p = FeatureParams {
            recent_contexts: 2,
            ..FeatureParams::default()
        };
        let files = build_feature_files(&t, &p, None).unwrap_or_else(|e| panic!("{e}"));
        let (table, contexts) = (
            files.table_parquet().unwrap_or_else(|e| panic!("{e}")),
            files.contexts_parquet().unwrap_or_else(|e| panic!("{e}")),
        );
        let out = files.into_outputs().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out.table.len(), 6);
        assert_eq!(out.contexts.table.len(), 4);
        assert_eq!(
            table,
            out.table.to_parquet().unwrap_or_else(|e| panic!("{e}"))
        );
        assert_eq!(
            contexts,
            out.contexts.to_parquet().unwrap_or_else(|e| panic!("{e}"))
        );
        let read = FeatureTable::from_parquet(&table).unwrap_or_else(|e| panic!("{e}"));
        assert!(read.dataframe().equals_missing(out.table.dataframe()));
    }

    #[test]
    fn previous_month_quantity_never_uses_the_current_month() {
        let t = tx(&[
            ("1", "A", 5, "2011-01-10", 1.0, None),
            ("2", "A", 7, "2011-02-03", 1.0, None),
            ("3", "A", 100, "2011-02-20", 1.0, None),
            ("4", "A", 1, "2011-03-01", 1.0, None),
        ]);
        let p = FeatureParams {
            split: SplitRule::Fraction {
                train: 0.5,
                val: 0.25,
            },
            ..Default::default()
        };
        let out = build_features(&t, &p, None).unwrap_or_else(|e| panic!("{e}"));
        let prev = out
            .table
            .numeric("prev_month_quantity")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(prev, &[0.0, 5.0, 5.0, 107.0]);
    }

    #[test]
    fn customer_features_look_only_backwards() {
        let t = tx(&[
            ("1", "A", 2, "2011-01-01", 3.0, Some(7)),
            ("2", "A", 1, "2011-01-11", 4.0, Some(7)),
            ("2", "B", 1, "2011-01-11", 6.0, Some(7)),
            ("3", "A", 1, "2012-01-05", 4.0, Some(7)),
        ]);
        let out =
            build_features(&t, &FeatureParams::default(), None).unwrap_or_else(|e| panic!("{e}"));
        let f = out
            .table
            .numeric("cust_frequency")
            .unwrap_or_else(|e| panic!("{e}"));
        let m = out
            .table
            .numeric("cust_monetary")
            .unwrap_or_else(|e| panic!("{e}"));
        let r = out
            .table
            .numeric("cust_recency_days")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            f,
            &[0.0, 1.0, 1.0, 1.0],
            "2011-01-01 is outside the year before 2012-01-05"
        );
        assert_eq!(m, &[0.0, 6.0, 6.0, 10.0]);
        assert_eq!(r[1], 10.0);
        assert_eq!(r[0], 365.0);
    }

    #[test]
    fn reference_prices_come_from_the_training_window_only() {
        let t = tx(&[
            ("1", "A", 1, "2011-01-01", 2.0, None),
            ("2", "A", 1, "2011-01-02", 4.0, None),
            ("3", "A", 1, "2011-06-01", 100.0, None),
            ("4", "A", 1, "2011-07-01", 100.0, None),
        ]);
        let p = FeatureParams {
            split: SplitRule::Date {
                train_end: "2011-02-01".into(),
                val_end: "2011-06-15".into(),
            },
            ..Default::default()
        };
        let out = build_features(&t, &p, None).unwrap_or_else(|e| panic!("{e}"));
        let rel = out
            .table
            .numeric("price_rel_max")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rel, &[0.5, 1.0, 25.0, 25.0]);
        assert_eq!(out.summary.rows[0].price_max, 100.0);
        assert_eq!(out.summary.rows[0].ref_price_max, 4.0);
    }
}
