//! Held-out metrics on the log and the original quantity scale.

use ndarray::ArrayView1;
use serde::{Deserialize, Serialize};

use crate::{DesignMatrix, ModelError, Regressor, Result};

/// Metrics of predictions of ln(1 + quantity).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Mean squared error on the log1p target.
    pub mse_log: f64,
    /// Root mean squared logarithmic error of the predicted quantity
    /// (`expm1` of the prediction, floored at 0).
    pub rmsle: f64,
    /// Mean absolute error in units.
    pub mae: f64,
    /// Rows evaluated.
    pub rows: usize,
}

/// Metrics of log1p-scale predictions against log1p-scale targets.
pub fn metrics_from_predictions(
    pred: ArrayView1<'_, f64>,
    y: ArrayView1<'_, f64>,
) -> Result<Metrics> {
    if pred.len() != y.len() {
        return Err(ModelError::Training {
            model: "metrics",
            reason: format!("{} predictions for {} targets", pred.len(), y.len()),
        });
    }
    let n = y.len().max(1) as f64;
    let (mut se, mut sle, mut ae) = (0.0, 0.0, 0.0);
    for (&p, &t) in pred.iter().zip(y.iter()) {
        se += (p - t).powi(2);
        // log1p(max(expm1(p), 0)) == max(p, 0)
        sle += (p.max(0.0) - t).powi(2);
        ae += (p.exp_m1().max(0.0) - t.exp_m1()).abs();
    }
    Ok(Metrics {
        mse_log: se / n,
        rmsle: (sle / n).sqrt(),
        mae: ae / n,
        rows: y.len(),
    })
}

/// Evaluates a model on a design matrix.
pub fn evaluate(model: &dyn Regressor, m: &DesignMatrix) -> Result<Metrics> {
    let pred = model.predict_matrix(m)?;
    metrics_from_predictions(pred.view(), m.y.view())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn perfect_predictions_score_zero() {
        let y = array![0.5f64.ln_1p(), 3.0f64.ln_1p()];
        let m = metrics_from_predictions(y.view(), y.view()).unwrap_or_else(|e| panic!("{e}"));
        assert!(m.mse_log < 1e-24 && m.rmsle < 1e-12 && m.mae < 1e-12);
    }

    #[test]
    fn mae_is_in_units() {
        let y = array![9.0f64.ln_1p()];
        let p = array![19.0f64.ln_1p()];
        let m = metrics_from_predictions(p.view(), y.view()).unwrap_or_else(|e| panic!("{e}"));
        assert!((m.mae - 10.0).abs() < 1e-9);
        assert!((m.rmsle - (20.0f64.ln() - 10.0f64.ln())).abs() < 1e-12);
    }
}
