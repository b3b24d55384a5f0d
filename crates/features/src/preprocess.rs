//! The preprocessor: fitted on training rows, applied everywhere (val, test, serving).

use std::collections::{BTreeMap, HashMap};
use std::f64::consts::TAU;

use ndarray::Array2;
use serde::{Deserialize, Serialize};

use crate::table::FeatureRow;
use crate::{FeatureError, Result};

/// How numeric columns are scaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scaling {
    /// (x - mean) / std.
    Standard,
    /// (x - min) / (max - min).
    Minmax,
    /// Unscaled.
    None,
}

/// Parameters of the preprocessor (`[preprocess]` in params.toml).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessParams {
    /// Numeric scaling.
    pub scaling: Scaling,
    /// Pseudo-count pulling a stock code's encoded target towards the global mean.
    pub target_encoding_smoothing: f64,
    /// Folds of the cross-fitted target encoding on training rows.
    pub target_encoding_folds: usize,
    /// Countries with fewer training rows than this share the `country=other` column.
    pub min_country_rows: usize,
}

impl Default for PreprocessParams {
    fn default() -> Self {
        Self {
            scaling: Scaling::Standard,
            target_encoding_smoothing: 20.0,
            target_encoding_folds: 5,
            min_country_rows: 100,
        }
    }
}

/// A transform applied before scaling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transform {
    /// x.
    Identity,
    /// ln(1 + max(x, 0)), for counts and money.
    Log1p,
}

/// A fitted numeric column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NumericColumn {
    /// Source feature (see [`FeatureRow::value`]).
    pub source: String,
    /// Output column name.
    pub name: String,
    /// Transform before scaling.
    pub transform: Transform,
    /// Subtracted after the transform.
    pub center: f64,
    /// Divides after centring.
    pub scale: f64,
}

/// Smoothed mean-target encoding of stock codes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetEncoding {
    /// Mean training target, used for unseen codes.
    pub global_mean: f64,
    /// Pseudo-count.
    pub smoothing: f64,
    /// Code → (training rows, sum of target).
    pub stats: BTreeMap<String, (f64, f64)>,
}

impl TargetEncoding {
    fn fit<'a>(codes: impl Iterator<Item = (&'a str, f64)>, smoothing: f64) -> Self {
        let mut stats: BTreeMap<String, (f64, f64)> = BTreeMap::new();
        let (mut n, mut sum) = (0.0, 0.0);
        for (c, y) in codes {
            let e = stats.entry(c.to_string()).or_insert((0.0, 0.0));
            e.0 += 1.0;
            e.1 += y;
            n += 1.0;
            sum += y;
        }
        Self {
            global_mean: if n > 0.0 { sum / n } else { 0.0 },
            smoothing,
            stats,
        }
    }

    /// The encoded value of a code.
    pub fn encode(&self, code: &str) -> f64 {
        match self.stats.get(code) {
            Some((n, s)) => (s + self.smoothing * self.global_mean) / (n + self.smoothing),
            None => self.global_mean,
        }
    }
}

/// Turns [`FeatureRow`]s into a model matrix. Fitted on training rows only;
/// saved as JSON and reused by serving.
///
/// Columns: scaled numeric features, `is_registered` (0/1), cyclical month and
/// day of week (sin/cos), the smoothed target encoding of the stock code
/// (scaled), and one-hot countries (rare ones share `country=other`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocessor {
    /// Format version.
    pub version: u32,
    /// The parameters it was fitted with.
    pub params: PreprocessParams,
    /// Fitted numeric columns.
    pub numeric: Vec<NumericColumn>,
    /// Stock-code target encoding.
    pub stock_code: TargetEncoding,
    /// Centre and scale of the encoded stock code.
    pub stock_code_scale: (f64, f64),
    /// Countries with their own column.
    pub countries: Vec<String>,
    /// All output column names, in order.
    pub feature_names: Vec<String>,
}

const NUMERIC_SPEC: [(&str, Transform); 12] = [
    ("unit_price", Transform::Identity),
    ("log1p_price", Transform::Identity),
    ("price_squared", Transform::Identity),
    ("price_rel_max", Transform::Identity),
    ("price_rel_mean", Transform::Identity),
    ("price_rel_median", Transform::Identity),
    ("prev_month_quantity", Transform::Log1p),
    ("product_popularity", Transform::Identity),
    ("cust_recency_days", Transform::Identity),
    ("cust_frequency", Transform::Log1p),
    ("cust_monetary", Transform::Log1p),
    ("year", Transform::Identity),
];

fn apply(t: Transform, x: f64) -> f64 {
    match t {
        Transform::Identity => x,
        Transform::Log1p => x.max(0.0).ln_1p(),
    }
}

fn center_scale(values: &[f64], scaling: Scaling) -> (f64, f64) {
    if values.is_empty() {
        return (0.0, 1.0);
    }
    let (c, s) = match scaling {
        Scaling::None => (0.0, 1.0),
        Scaling::Standard => {
            let n = values.len() as f64;
            let mean = values.iter().sum::<f64>() / n;
            let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
            (mean, var.sqrt())
        }
        Scaling::Minmax => {
            let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            (lo, hi - lo)
        }
    };
    // A constant column scales by 1 instead of dividing by zero.
    (c, if s.is_finite() && s > 1e-12 { s } else { 1.0 })
}

impl Preprocessor {
    /// Fits on training rows and their targets.
    pub fn fit(
        rows: &[FeatureRow<'_>],
        targets: &[f64],
        params: &PreprocessParams,
    ) -> Result<Self> {
        Self::fit_with(rows.len(), |i| rows[i], targets, params)
    }

    /// Fits on `n` training rows, row `i` given by `row(i)`, and their
    /// targets.
    pub fn fit_with<'a>(
        n: usize,
        row: impl Fn(usize) -> FeatureRow<'a>,
        targets: &[f64],
        params: &PreprocessParams,
    ) -> Result<Self> {
        if n == 0 || n != targets.len() {
            return Err(FeatureError::NoData(format!(
                "cannot fit a preprocessor on {n} rows and {} targets",
                targets.len()
            )));
        }
        if params.target_encoding_folds < 2 {
            return Err(FeatureError::Params(
                "preprocess.target_encoding_folds must be >= 2".into(),
            ));
        }
        if params.target_encoding_smoothing.is_nan() || params.target_encoding_smoothing < 0.0 {
            return Err(FeatureError::Params(
                "preprocess.target_encoding_smoothing must be >= 0".into(),
            ));
        }
        let mut numeric = Vec::new();
        let mut column = Vec::with_capacity(n);
        for (source, transform) in NUMERIC_SPEC {
            column.clear();
            for i in 0..n {
                column.push(apply(transform, row(i).value(source).unwrap_or(f64::NAN)));
            }
            let (center, scale) = center_scale(&column, params.scaling);
            numeric.push(NumericColumn {
                source: source.to_string(),
                name: match transform {
                    Transform::Identity => source.to_string(),
                    Transform::Log1p => format!("log1p_{source}"),
                },
                transform,
                center,
                scale,
            });
        }
        let stock_code = TargetEncoding::fit(
            (0..n).map(|i| (row(i).stock_code, targets[i])),
            params.target_encoding_smoothing,
        );
        let encoded: Vec<f64> = (0..n)
            .map(|i| stock_code.encode(row(i).stock_code))
            .collect();
        let stock_code_scale = center_scale(&encoded, params.scaling);
        let mut country_counts: HashMap<&str, usize> = HashMap::new();
        for i in 0..n {
            *country_counts.entry(row(i).country).or_default() += 1;
        }
        let mut countries: Vec<String> = country_counts
            .into_iter()
            .filter(|(_, n)| *n >= params.min_country_rows)
            .map(|(c, _)| c.to_string())
            .collect();
        countries.sort();
        let mut feature_names: Vec<String> = numeric.iter().map(|c| c.name.clone()).collect();
        feature_names.extend(
            [
                "is_registered",
                "month_sin",
                "month_cos",
                "dow_sin",
                "dow_cos",
                "stock_code_te",
            ]
            .map(String::from),
        );
        feature_names.extend(countries.iter().map(|c| format!("country={c}")));
        feature_names.push("country=other".into());
        Ok(Self {
            version: 1,
            params: params.clone(),
            numeric,
            stock_code,
            stock_code_scale,
            countries,
            feature_names,
        })
    }

    /// Number of output columns.
    pub fn n_features(&self) -> usize {
        self.feature_names.len()
    }

    fn write_row(&self, r: &FeatureRow<'_>, encoded_code: f64, out: &mut [f64]) {
        let mut k = 0;
        for c in &self.numeric {
            out[k] =
                (apply(c.transform, r.value(&c.source).unwrap_or(f64::NAN)) - c.center) / c.scale;
            k += 1;
        }
        let month = (r.month - 1.0) / 12.0 * TAU;
        let dow = r.day_of_week / 7.0 * TAU;
        let (c, s) = self.stock_code_scale;
        for v in [
            r.is_registered,
            month.sin(),
            month.cos(),
            dow.sin(),
            dow.cos(),
            (encoded_code - c) / s,
        ] {
            out[k] = v;
            k += 1;
        }
        for slot in out[k..].iter_mut() {
            *slot = 0.0;
        }
        let idx = self
            .countries
            .binary_search_by(|c| c.as_str().cmp(r.country))
            .unwrap_or(self.countries.len());
        out[k + idx] = 1.0;
    }

    /// The model matrix of `rows` (one row each).
    pub fn transform(&self, rows: &[FeatureRow<'_>]) -> Array2<f64> {
        self.transform_with(
            rows.iter()
                .map(|r| (*r, self.stock_code.encode(r.stock_code))),
            rows.len(),
        )
    }

    /// The model matrix of `n` rows given with their encoded stock codes.
    pub(crate) fn transform_with<'a>(
        &self,
        rows: impl Iterator<Item = (FeatureRow<'a>, f64)>,
        n: usize,
    ) -> Array2<f64> {
        let mut x = Array2::zeros((n, self.n_features()));
        for ((r, code), mut out) in rows.zip(x.rows_mut()) {
            if let Some(slice) = out.as_slice_mut() {
                self.write_row(&r, code, slice);
            }
        }
        x
    }

    /// The cross-fitted stock-code encoders of `n` training rows: encoder
    /// `f` is fitted on the rows whose position is not `f` modulo the fold
    /// count, and encodes the rows that are.
    pub(crate) fn fold_encoders<'a>(
        &self,
        n: usize,
        row: impl Fn(usize) -> FeatureRow<'a>,
        targets: &[f64],
    ) -> Vec<TargetEncoding> {
        let k = self.params.target_encoding_folds.max(2);
        (0..k)
            .map(|f| {
                TargetEncoding::fit(
                    (0..n)
                        .filter(|i| i % k != f)
                        .map(|i| (row(i).stock_code, targets[i])),
                    self.stock_code.smoothing,
                )
            })
            .collect()
    }

    /// The model matrix of the training rows, with the stock-code encoding
    /// cross-fitted: each row's code is encoded from the other folds only, so
    /// a row's own target never leaks into its features. Folds interleave in time.
    pub fn transform_train(&self, rows: &[FeatureRow<'_>], targets: &[f64]) -> Array2<f64> {
        let folds = self.fold_encoders(rows.len(), |i| rows[i], targets);
        self.transform_with(
            rows.iter()
                .enumerate()
                .map(|(i, r)| (*r, folds[i % folds.len()].encode(r.stock_code))),
            rows.len(),
        )
    }

    /// JSON bytes.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        let mut v = serde_json::to_vec_pretty(self)?;
        v.push(b'\n');
        Ok(v)
    }

    /// Reads JSON written by [`Preprocessor::to_json`].
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let p: Self = serde_json::from_slice(bytes)?;
        if p.version != 1 {
            return Err(FeatureError::Artifact(format!(
                "unsupported preprocessor version {}",
                p.version
            )));
        }
        Ok(p)
    }
}
