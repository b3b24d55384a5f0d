//! Shapley-value attributions by permutation sampling (Štrumbelj & Kononenko):
//! exact Shapley values need 2^d model evaluations per row; sampling M
//! permutations needs M·(d + 1), and each sampled permutation already
//! satisfies efficiency (the values sum to f(x) − f(background row)).

use ndarray::{Array1, Array2, ArrayView2};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::{DriftError, Result};

/// Mean |Shapley value| per feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attributions {
    /// Feature names, by decreasing mean |value|.
    pub features: Vec<String>,
    /// Mean |value| (same order).
    pub mean_abs: Vec<f64>,
    /// Rows explained.
    pub rows: usize,
    /// Permutations per row.
    pub permutations: usize,
    /// Per-row values (rows × features, input feature order).
    #[serde(skip)]
    pub values: Array2<f64>,
}

impl Attributions {
    /// The `k` most important features.
    pub fn top(&self, k: usize) -> Vec<(&str, f64)> {
        self.features
            .iter()
            .zip(&self.mean_abs)
            .take(k)
            .map(|(f, v)| (f.as_str(), *v))
            .collect()
    }
}

/// A batch predictor: model-matrix rows in, one prediction per row out.
pub type PredictFn<'a> =
    dyn Fn(ArrayView2<'_, f64>) -> std::result::Result<Array1<f64>, String> + 'a;

/// Estimates Shapley values of `predict` for each row of `x`: per row,
/// `permutations` random feature orders, each starting from a random row of
/// `background` and switching features to the row's values in that order;
/// a feature's value is the mean change in prediction when it switches.
pub fn sampling_shapley(
    predict: &PredictFn<'_>,
    feature_names: &[String],
    x: ArrayView2<'_, f64>,
    background: ArrayView2<'_, f64>,
    permutations: usize,
    seed: u64,
) -> Result<Attributions> {
    let d = x.ncols();
    if feature_names.len() != d || background.ncols() != d {
        return Err(DriftError::Invalid(format!(
            "attributions: {d} columns, {} names, {} background columns",
            feature_names.len(),
            background.ncols()
        )));
    }
    if background.nrows() == 0 || permutations == 0 {
        return Err(DriftError::Invalid(
            "attributions need background rows and permutations".into(),
        ));
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut values = Array2::<f64>::zeros((x.nrows(), d));
    let mut order: Vec<usize> = (0..d).collect();
    for (i, row) in x.rows().into_iter().enumerate() {
        // All chains of this row in one matrix: permutations × (d + 1) rows.
        let mut batch = Array2::<f64>::zeros((permutations * (d + 1), d));
        let mut orders = Vec::with_capacity(permutations);
        for p in 0..permutations {
            order.shuffle(&mut rng);
            let b = background.row(rng.random_range(0..background.nrows()));
            let base = p * (d + 1);
            let mut z = b.to_owned();
            batch.row_mut(base).assign(&z);
            for (step, &j) in order.iter().enumerate() {
                z[j] = row[j];
                batch.row_mut(base + step + 1).assign(&z);
            }
            orders.push(order.clone());
        }
        let pred = predict(batch.view()).map_err(DriftError::Invalid)?;
        for (p, ord) in orders.iter().enumerate() {
            let base = p * (d + 1);
            for (step, &j) in ord.iter().enumerate() {
                values[[i, j]] += (pred[base + step + 1] - pred[base + step]) / permutations as f64;
            }
        }
    }
    let mut ranked: Vec<(String, f64)> = feature_names
        .iter()
        .enumerate()
        .map(|(j, n)| {
            (
                n.clone(),
                values.column(j).iter().map(|v| v.abs()).sum::<f64>() / x.nrows().max(1) as f64,
            )
        })
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(Attributions {
        features: ranked.iter().map(|r| r.0.clone()).collect(),
        mean_abs: ranked.iter().map(|r| r.1).collect(),
        rows: x.nrows(),
        permutations,
        values,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ndarray::{Array2, array};

    #[test]
    fn a_linear_model_gets_its_exact_shapley_values() {
        // For f(x) = w·x + b, the interventional Shapley value of feature j is
        // w_j (x_j − E[background_j]); permutation sampling is exact per chain.
        let w = array![2.0, -1.0, 0.5];
        let predict = |x: ArrayView2<'_, f64>| -> std::result::Result<Array1<f64>, String> {
            Ok(x.dot(&w) + 3.0)
        };
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let x = array![[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]];
        let background = Array2::from_shape_vec((1, 3), vec![0.5, 0.5, 0.5]).unwrap();
        let a = sampling_shapley(&predict, &names, x.view(), background.view(), 5, 1).unwrap();
        for i in 0..2 {
            for j in 0..3 {
                let want = w[j] * (x[[i, j]] - 0.5);
                assert!((a.values[[i, j]] - want).abs() < 1e-12, "{i},{j}");
            }
        }
        // mean |value|: a = (1 + 1)/2 = 1, b = (1.5 + 1.5)/2 = 1.5, c = (1.25 + 1.75)/2 = 1.5
        assert_eq!(a.features[2], "a");
        assert!((a.mean_abs[2] - 1.0).abs() < 1e-12);
    }

    #[test]
    fn efficiency_holds_for_a_nonlinear_model() {
        let predict = |x: ArrayView2<'_, f64>| -> std::result::Result<Array1<f64>, String> {
            Ok(x.rows()
                .into_iter()
                .map(|r| r[0] * r[1] + r[2].powi(2))
                .collect())
        };
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let x = array![[1.0, 2.0, 3.0]];
        let background = array![[0.0, 0.0, 0.0]];
        let a = sampling_shapley(&predict, &names, x.view(), background.view(), 20, 7).unwrap();
        let total: f64 = a.values.row(0).sum();
        assert!((total - (2.0 + 9.0)).abs() < 1e-12, "sum {total}");
        // c's share is exact (additive); a and b split the interaction.
        assert!((a.values[[0, 2]] - 9.0).abs() < 1e-12);
    }
}
