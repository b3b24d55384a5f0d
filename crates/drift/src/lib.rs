//! Quality gates: Evidently-style data drift, fairness between registered and
//! guest customers, and Shapley-value attributions, with a JSON and a
//! self-contained HTML report.
//!
//! **Drift.** Each column gets the test Evidently's default `DataDriftPreset`
//! picks (its `_get_default_stattest`), with n = rows in the reference data and
//! u = distinct values in reference and current together:
//!
//! | reference rows | column | test | drift when |
//! |---|---|---|---|
//! | n ≤ 1000 | numerical, u > 5 | two-sample KS | p ≤ 0.05 |
//! | n ≤ 1000 | numerical 3 ≤ u ≤ 5, categorical u > 2 | chi-square | p < 0.05 |
//! | n ≤ 1000 | u ≤ 2 | two-proportion z-test | p < 0.05 |
//! | n > 1000 | numerical, u > 5 | Wasserstein / reference std | ≥ 0.1 |
//! | n > 1000 | otherwise | Jensen-Shannon distance of binned shares | ≥ 0.1 |
//!
//! Non-finite values are dropped per column. The dataset drifts when the share
//! of drifted columns is at least [`DriftParams::drift_share`] (0.5).
//!
//! ```
//! use drift::{Column, DriftParams, detect};
//! let reference = vec![Column::numerical("price", (0..200).map(|i| (i % 50) as f64).collect())];
//! let current = vec![Column::numerical("price", (0..200).map(|i| (i % 50) as f64 * 1.5).collect())];
//! let report = detect(&reference, &current, &DriftParams::default()).unwrap();
//! assert!(report.columns[0].drifted);
//! assert_eq!(report.columns[0].stattest, drift::StatTest::Ks);
//! ```

pub mod attribution;
pub mod fairness;
pub mod report;
pub mod stattest;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use attribution::{Attributions, PredictFn, sampling_shapley};
pub use fairness::{FairnessCriterion, FairnessParams, FairnessReport, GroupMetrics, fairness};
pub use report::{GateReport, ModelFairness, render_html};

/// Errors of the drift crate.
#[derive(Debug, thiserror::Error)]
pub enum DriftError {
    /// Reference and current data do not have the same columns.
    #[error("column `{0}` is missing from the current data")]
    MissingColumn(String),
    /// A column holds no finite value.
    #[error("column `{column}` has no usable values in the {side} data")]
    EmptyColumn {
        /// The column.
        column: String,
        /// `reference` or `current`.
        side: &'static str,
    },
    /// Invalid parameters or inputs.
    #[error("{0}")]
    Invalid(String),
    /// Reading or writing a report failed.
    #[error("{0}")]
    Io(String),
}

/// Result alias of this crate.
pub type Result<T, E = DriftError> = std::result::Result<T, E>;

/// A column's values.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    /// Numbers.
    Numerical(Vec<f64>),
    /// Labels.
    Categorical(Vec<String>),
}

/// A named column of a dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    /// Name.
    pub name: String,
    /// Values.
    pub values: Values,
}

impl Column {
    /// A numerical column.
    pub fn numerical(name: &str, values: Vec<f64>) -> Self {
        Self {
            name: name.into(),
            values: Values::Numerical(values),
        }
    }

    /// A categorical column.
    pub fn categorical(name: &str, values: Vec<String>) -> Self {
        Self {
            name: name.into(),
            values: Values::Categorical(values),
        }
    }
}

/// The drift tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatTest {
    /// Two-sample Kolmogorov–Smirnov (score = p-value).
    Ks,
    /// Chi-square goodness of fit against the reference shares (p-value).
    ChiSquare,
    /// Two-proportion z-test (p-value).
    ZTest,
    /// Wasserstein distance normed by the reference std (distance).
    Wasserstein,
    /// Jensen-Shannon distance of binned shares (distance).
    JensenShannon,
}

impl StatTest {
    /// Evidently's name for the test.
    pub fn name(self) -> &'static str {
        match self {
            StatTest::Ks => "K-S p_value",
            StatTest::ChiSquare => "chi-square p_value",
            StatTest::ZTest => "Z-test p_value",
            StatTest::Wasserstein => "Wasserstein distance (normed)",
            StatTest::JensenShannon => "Jensen-Shannon distance",
        }
    }

    /// Whether the score is a p-value (drift when small) or a distance.
    pub fn is_p_value(self) -> bool {
        matches!(self, StatTest::Ks | StatTest::ChiSquare | StatTest::ZTest)
    }
}

/// Drift thresholds and per-column test overrides (`[drift]` in params.toml).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftParams {
    /// p-value threshold of KS, chi-square and z-test (0.05).
    pub p_value_threshold: f64,
    /// Distance threshold of Wasserstein and Jensen-Shannon (0.1).
    pub distance_threshold: f64,
    /// The dataset drifts when at least this share of columns drift (0.5).
    pub drift_share: f64,
    /// Column → test, replacing the default choice.
    pub stattest_overrides: BTreeMap<String, StatTest>,
}

impl Default for DriftParams {
    fn default() -> Self {
        Self {
            p_value_threshold: 0.05,
            distance_threshold: 0.1,
            drift_share: 0.5,
            stattest_overrides: BTreeMap::new(),
        }
    }
}

/// One column's drift result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnDrift {
    /// Column name.
    pub column: String,
    /// `num` or `cat`.
    pub column_type: String,
    /// The test used.
    pub stattest: StatTest,
    /// Evidently's name of the test.
    pub stattest_name: String,
    /// Threshold of the test.
    pub threshold: f64,
    /// p-value or distance.
    pub score: f64,
    /// Whether the column drifted.
    pub drifted: bool,
    /// Finite values in the reference data.
    pub reference_rows: usize,
    /// Finite values in the current data.
    pub current_rows: usize,
    /// Histogram for the report: bin labels.
    pub bins: Vec<String>,
    /// Reference shares per bin.
    pub reference_shares: Vec<f64>,
    /// Current shares per bin.
    pub current_shares: Vec<f64>,
}

/// The dataset-level result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftReport {
    /// Per column, in input order.
    pub columns: Vec<ColumnDrift>,
    /// Number of columns tested.
    pub number_of_columns: usize,
    /// Number of drifted columns.
    pub number_of_drifted_columns: usize,
    /// Their share.
    pub share_of_drifted_columns: f64,
    /// Whether the dataset drifted (share ≥ drift_share).
    pub dataset_drift: bool,
    /// The threshold share.
    pub drift_share: f64,
}

impl DriftReport {
    /// Names of the drifted columns.
    pub fn drifted_columns(&self) -> Vec<&str> {
        self.columns
            .iter()
            .filter(|c| c.drifted)
            .map(|c| c.column.as_str())
            .collect()
    }
}

/// Runs the drift test of every reference column against the current column
/// of the same name.
pub fn detect(
    reference: &[Column],
    current: &[Column],
    params: &DriftParams,
) -> Result<DriftReport> {
    if !(0.0..=1.0).contains(&params.drift_share) {
        return Err(DriftError::Invalid(format!(
            "drift_share {} is outside [0, 1]",
            params.drift_share
        )));
    }
    let mut columns = Vec::with_capacity(reference.len());
    for r in reference {
        let c = current
            .iter()
            .find(|c| c.name == r.name)
            .ok_or_else(|| DriftError::MissingColumn(r.name.clone()))?;
        columns.push(column_drift(r, c, params)?);
    }
    let n = columns.len();
    let drifted = columns.iter().filter(|c| c.drifted).count();
    let share = if n == 0 {
        0.0
    } else {
        drifted as f64 / n as f64
    };
    Ok(DriftReport {
        columns,
        number_of_columns: n,
        number_of_drifted_columns: drifted,
        share_of_drifted_columns: share,
        dataset_drift: n > 0 && share >= params.drift_share,
        drift_share: params.drift_share,
    })
}

/// Keys for counting categories of either kind (categories borrowed from
/// their column: no per-row copies).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
enum Key<'a> {
    Num(f64),
    Cat(&'a str),
}

fn key_cmp(a: &Key<'_>, b: &Key<'_>) -> std::cmp::Ordering {
    match (a, b) {
        (Key::Num(x), Key::Num(y)) => x.total_cmp(y),
        (Key::Cat(x), Key::Cat(y)) => x.cmp(y),
        (Key::Num(_), Key::Cat(_)) => std::cmp::Ordering::Less,
        (Key::Cat(_), Key::Num(_)) => std::cmp::Ordering::Greater,
    }
}

/// The distinct keys of both samples, sorted, with each one's count in the
/// reference and in the current sample: each sample sorted once, then merged.
fn sorted_counts<'a>(
    reference: &[Key<'a>],
    current: &[Key<'a>],
) -> (Vec<Key<'a>>, Vec<(f64, f64)>) {
    let sorted = |data: &[Key<'a>]| {
        let mut v = data.to_vec();
        v.sort_unstable_by(key_cmp);
        v
    };
    let (r, c) = (sorted(reference), sorted(current));
    let (mut i, mut j) = (0, 0);
    let (mut keys, mut counts) = (Vec::new(), Vec::new());
    loop {
        let next = match (r.get(i), c.get(j)) {
            (Some(a), Some(b)) => {
                if key_cmp(a, b).is_le() {
                    *a
                } else {
                    *b
                }
            }
            (Some(a), None) => *a,
            (None, Some(b)) => *b,
            (None, None) => break,
        };
        let run = |v: &[Key<'a>], at: &mut usize| {
            let start = *at;
            while *at < v.len() && key_cmp(&v[*at], &next).is_eq() {
                *at += 1;
            }
            (*at - start) as f64
        };
        let (rc, cc) = (run(&r, &mut i), run(&c, &mut j));
        keys.push(next);
        counts.push((rc, cc));
    }
    (keys, counts)
}

fn label(k: &Key<'_>) -> String {
    match k {
        Key::Num(v) => format!("{v}"),
        Key::Cat(s) => (*s).to_string(),
    }
}

fn column_drift(r: &Column, c: &Column, params: &DriftParams) -> Result<ColumnDrift> {
    let numeric = matches!(r.values, Values::Numerical(_));
    fn keys(v: &Values) -> Vec<Key<'_>> {
        match v {
            Values::Numerical(x) => x
                .iter()
                .filter(|v| v.is_finite())
                .map(|&v| Key::Num(v))
                .collect(),
            Values::Categorical(x) => x.iter().map(|s| Key::Cat(s.as_str())).collect(),
        }
    }
    let (rk, ck) = (keys(&r.values), keys(&c.values));
    if rk.is_empty() {
        return Err(DriftError::EmptyColumn {
            column: r.name.clone(),
            side: "reference",
        });
    }
    if ck.is_empty() {
        return Err(DriftError::EmptyColumn {
            column: r.name.clone(),
            side: "current",
        });
    }
    let (categories, counts) = sorted_counts(&rk, &ck);
    let n_unique = categories.len();
    let n_ref = rk.len();
    let test = params.stattest_overrides.get(&r.name).copied().unwrap_or({
        if n_ref <= 1000 {
            if numeric && n_unique > 5 {
                StatTest::Ks
            } else if n_unique > 2 {
                StatTest::ChiSquare
            } else {
                StatTest::ZTest
            }
        } else if numeric && n_unique > 5 {
            StatTest::Wasserstein
        } else {
            StatTest::JensenShannon
        }
    });
    let nums = |k: &[Key<'_>]| -> Vec<f64> {
        k.iter()
            .filter_map(|k| match k {
                Key::Num(v) => Some(*v),
                Key::Cat(_) => None,
            })
            .collect()
    };
    if !numeric && matches!(test, StatTest::Ks | StatTest::Wasserstein) {
        return Err(DriftError::Invalid(format!(
            "column `{}` is categorical; {} needs numbers",
            r.name,
            test.name()
        )));
    }
    let (rn, cn) = (nums(&rk), nums(&ck));
    let score = match test {
        StatTest::Ks => stattest::ks_2samp(&rn, &cn).1,
        StatTest::Wasserstein => stattest::wasserstein_normed(&rn, &cn),
        StatTest::ChiSquare => stattest::chi_square_p(&counts),
        StatTest::ZTest => {
            let (rh, ch) = counts[0];
            stattest::z_test_p(rh, n_ref as f64, ch, ck.len() as f64)
        }
        StatTest::JensenShannon => {
            let (mut rs, mut cs) = binned_shares(numeric, &rn, &cn, &counts, n_ref);
            stattest::fill_zeroes(&mut rs);
            stattest::fill_zeroes(&mut cs);
            stattest::jensen_shannon(&rs, &cs)
        }
    };
    let (threshold, drifted) = match test {
        StatTest::Ks => (params.p_value_threshold, score <= params.p_value_threshold),
        StatTest::ChiSquare | StatTest::ZTest => {
            (params.p_value_threshold, score < params.p_value_threshold)
        }
        StatTest::Wasserstein | StatTest::JensenShannon => (
            params.distance_threshold,
            score >= params.distance_threshold,
        ),
    };
    // Shares for the report's histogram.
    // Shares for the report's histogram: 20 even bins over the 1st-99th
    // percentile of both samples (values outside go to the end bins), so a
    // heavy tail does not squash the chart into one bar.
    let (bins, reference_shares, current_shares) = if numeric && n_unique > 20 {
        display_histogram(&rn, &cn)
    } else {
        (
            categories.iter().map(label).collect(),
            counts.iter().map(|c| c.0 / n_ref as f64).collect(),
            counts.iter().map(|c| c.1 / ck.len() as f64).collect(),
        )
    };
    Ok(ColumnDrift {
        column: r.name.clone(),
        column_type: if numeric { "num".into() } else { "cat".into() },
        stattest: test,
        stattest_name: test.name().into(),
        threshold,
        score,
        drifted,
        reference_rows: n_ref,
        current_rows: ck.len(),
        bins,
        reference_shares,
        current_shares,
    })
}

fn display_histogram(rn: &[f64], cn: &[f64]) -> (Vec<String>, Vec<f64>, Vec<f64>) {
    let mut all: Vec<f64> = rn.iter().chain(cn).copied().collect();
    all.sort_by(f64::total_cmp);
    let at = |q: f64| all[((all.len() - 1) as f64 * q).round() as usize];
    let (lo, mut hi) = (at(0.01), at(0.99));
    if hi <= lo {
        hi = lo + 1.0;
    }
    const BINS: usize = 20;
    let width = (hi - lo) / BINS as f64;
    let shares = |data: &[f64]| {
        let mut out = [0.0; BINS];
        for &v in data {
            let k = (((v - lo) / width).floor().max(0.0) as usize).min(BINS - 1);
            out[k] += 1.0;
        }
        out.iter()
            .map(|c| c / data.len() as f64)
            .collect::<Vec<f64>>()
    };
    let labels = (0..BINS)
        .map(|k| format!("{:.3}", lo + width * k as f64))
        .collect();
    (labels, shares(rn), shares(cn))
}

/// Evidently's `get_binned_data`: Sturges histogram shares for numerical
/// columns with more than 20 reference values, category shares otherwise
/// (both divided by the reference size n for the reference).
fn binned_shares(
    numeric: bool,
    rn: &[f64],
    cn: &[f64],
    counts: &[(f64, f64)],
    n_ref: usize,
) -> (Vec<f64>, Vec<f64>) {
    let ref_unique = {
        let mut v = rn.to_vec();
        v.sort_by(f64::total_cmp);
        v.dedup();
        v.len()
    };
    if numeric && ref_unique > 20 {
        let all: Vec<f64> = rn.iter().chain(cn).copied().collect();
        let edges = stattest::sturges_edges(&all);
        let r = stattest::histogram(rn, &edges);
        let c = stattest::histogram(cn, &edges);
        (
            r.iter().map(|v| v / n_ref as f64).collect(),
            c.iter().map(|v| v / cn.len() as f64).collect(),
        )
    } else {
        let n_cur: f64 = counts.iter().map(|c| c.1).sum();
        (
            counts.iter().map(|c| c.0 / n_ref as f64).collect(),
            counts.iter().map(|c| c.1 / n_cur).collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_counts_merges_both_samples_distinct_values() {
        let num = |v: &[f64]| v.iter().map(|&x| Key::Num(x)).collect::<Vec<_>>();
        let (keys, counts) = sorted_counts(&num(&[3.0, 1.0, 3.0, 2.0]), &num(&[4.0, 3.0, 0.5]));
        assert_eq!(keys, num(&[0.5, 1.0, 2.0, 3.0, 4.0]));
        assert_eq!(
            counts,
            [(0.0, 1.0), (1.0, 0.0), (1.0, 0.0), (2.0, 1.0), (0.0, 1.0)]
        );
        let cat = |v: &[&'static str]| v.iter().map(|&x| Key::Cat(x)).collect::<Vec<_>>();
        let (keys, counts) = sorted_counts(&cat(&["b", "a", "b"]), &cat(&[]));
        assert_eq!(keys, cat(&["a", "b"]));
        assert_eq!(counts, [(1.0, 0.0), (2.0, 0.0)]);
        let (keys, counts) = sorted_counts(&[], &[]);
        assert!(keys.is_empty() && counts.is_empty());
    }
}
