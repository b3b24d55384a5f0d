//! Group calibration: predictions made unbiased for each group of a
//! sensitive column (guests and registered customers), so a model neither
//! widens nor narrows the real difference between them.
//!
//! For each group `g`, the offset `δ_g = mean(y − ŷ | g)` is fitted on the
//! validation window (the rows the model never trained on) and added to the
//! model's log-scale predictions for that group. The mean can weight rows by
//! recency (weight `0.5^(age / half-life)`, age from the window's last
//! invoice): the groups' gap drifts (on the UCI data it narrows from −0.83
//! to −0.64 within the five validation weeks), and the offsets should carry
//! the latest gap into production, not the window's average. It is recorded in the
//! manifest entry and applied by the loader, so the gate judges — and
//! serving uses — the calibrated model.

use ndarray::{Array1, ArrayView2};
use serde::{Deserialize, Serialize};

use crate::{DesignMatrix, ModelError, ModelFiles, ModelKind, Regressor, Result};

/// Per-group offsets on the log1p scale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupCalibration {
    /// The 0/1 column that defines the groups.
    pub column: String,
    /// Offset for rows with the column 0 (guests), then 1 (registered).
    pub offsets: [f64; 2],
    /// Validation rows per group it was fitted on.
    pub rows: [usize; 2],
    /// Recency half-life of the row weights (days); `None`: equal weights.
    #[serde(default)]
    pub half_life_days: Option<f64>,
}

impl GroupCalibration {
    /// Fits the offsets of `model` on `val`, rows weighted by recency with
    /// `half_life_days` (`None`: equally); `None` when a group has no rows.
    pub fn fit(
        model: &dyn Regressor,
        val: &DesignMatrix,
        column: &str,
        half_life_days: Option<f64>,
    ) -> Result<Option<Self>> {
        let Some(index) = val.feature_names.iter().position(|n| n == column) else {
            return Err(ModelError::Format {
                model: "calibration".into(),
                reason: format!("the model matrix has no `{column}` column"),
            });
        };
        if let Some(h) = half_life_days
            && !(h.is_finite() && h > 0.0)
        {
            return Err(ModelError::Params {
                model: "calibration",
                reason: format!("the half-life must be a positive number of days, got {h}"),
            });
        }
        const MICROS_PER_DAY: f64 = 86_400e6;
        let latest = val.ts.iter().copied().max().unwrap_or(0);
        let weight = |ts: i64| match half_life_days {
            Some(h) => 0.5f64.powf((latest - ts) as f64 / MICROS_PER_DAY / h),
            None => 1.0,
        };
        let pred = model.predict_matrix(val)?;
        let mut sums = [0.0; 2];
        let mut weights = [0.0; 2];
        let mut rows = [0usize; 2];
        for (((p, y), g), ts) in pred
            .iter()
            .zip(val.y.iter())
            .zip(val.x.column(index))
            .zip(&val.ts)
        {
            let g = usize::from(*g > 0.5);
            let w = weight(*ts);
            sums[g] += w * (y - p);
            weights[g] += w;
            rows[g] += 1;
        }
        if rows.contains(&0) || weights.iter().any(|w| *w <= 0.0) {
            return Ok(None);
        }
        Ok(Some(Self {
            column: column.to_string(),
            offsets: [sums[0] / weights[0], sums[1] / weights[1]],
            rows,
            half_life_days,
        }))
    }
}

/// Metrics of `model` on `m` with `calibration` applied.
pub fn calibrated_metrics(
    model: &dyn Regressor,
    m: &DesignMatrix,
    calibration: &GroupCalibration,
) -> Result<crate::Metrics> {
    let index = m
        .feature_names
        .iter()
        .position(|n| *n == calibration.column)
        .ok_or_else(|| ModelError::Format {
            model: "calibration".into(),
            reason: format!("the model matrix has no `{}` column", calibration.column),
        })?;
    let mut pred = model.predict_matrix(m)?;
    for (p, g) in pred.iter_mut().zip(m.x.column(index)) {
        *p += calibration.offsets[usize::from(*g > 0.5)];
    }
    crate::metrics_from_predictions(pred.view(), m.y.view())
}

/// A model with group offsets added to its predictions.
pub struct Calibrated {
    inner: Box<dyn Regressor>,
    index: usize,
    offsets: [f64; 2],
}

impl Calibrated {
    /// Wraps `inner` with `calibration` (its column must be one of the
    /// model's features).
    pub fn new(inner: Box<dyn Regressor>, calibration: &GroupCalibration) -> Result<Self> {
        let index = inner
            .feature_names()
            .iter()
            .position(|n| *n == calibration.column)
            .ok_or_else(|| ModelError::Format {
                model: inner.kind().name().into(),
                reason: format!(
                    "calibration column `{}` is not a feature",
                    calibration.column
                ),
            })?;
        if !calibration.offsets.iter().all(|o| o.is_finite()) {
            return Err(ModelError::Format {
                model: inner.kind().name().into(),
                reason: "calibration offsets are not finite".into(),
            });
        }
        Ok(Self {
            inner,
            index,
            offsets: calibration.offsets,
        })
    }
}

impl Regressor for Calibrated {
    fn kind(&self) -> ModelKind {
        self.inner.kind()
    }
    fn feature_names(&self) -> &[String] {
        self.inner.feature_names()
    }
    fn hyper_params(&self) -> serde_json::Value {
        self.inner.hyper_params()
    }
    fn predict(&self, x: ArrayView2<'_, f64>) -> Result<Array1<f64>> {
        let mut pred = self.inner.predict(x)?;
        for (p, g) in pred.iter_mut().zip(x.column(self.index)) {
            *p += self.offsets[usize::from(*g > 0.5)];
        }
        Ok(pred)
    }
    fn to_files(&self) -> Result<ModelFiles> {
        self.inner.to_files()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array1, Array2};

    /// Predicts 0 for every row.
    struct Zero(Vec<String>);

    impl Regressor for Zero {
        fn kind(&self) -> ModelKind {
            ModelKind::ElasticNet
        }
        fn feature_names(&self) -> &[String] {
            &self.0
        }
        fn hyper_params(&self) -> serde_json::Value {
            serde_json::Value::Null
        }
        fn predict(&self, x: ArrayView2<'_, f64>) -> Result<Array1<f64>> {
            Ok(Array1::zeros(x.nrows()))
        }
        fn to_files(&self) -> Result<ModelFiles> {
            Err(ModelError::Unavailable("test model".into()))
        }
    }

    /// 60 days of rows, alternating groups; the guests' residual is 1 in
    /// the first 30 days and 0 after, the registered customers' always 0.5.
    fn drifting() -> DesignMatrix {
        let n = 120;
        let day = 86_400_000_000_i64;
        let group: Vec<f64> = (0..n).map(|i| (i % 2) as f64).collect();
        let y: Vec<f64> = (0..n)
            .map(|i| match (i % 2, i / 2 < 30) {
                (0, true) => 1.0,
                (0, false) => 0.0,
                _ => 0.5,
            })
            .collect();
        DesignMatrix {
            feature_names: vec!["is_registered".into()],
            x: Array2::from_shape_vec((n, 1), group).unwrap_or_default(),
            y: Array1::from_vec(y),
            stock_code: vec!["A".into(); n],
            ts: (0..n).map(|i| (i as i64 / 2) * day).collect(),
        }
    }

    #[test]
    fn recency_weights_carry_the_latest_gap() -> Result<()> {
        let m = drifting();
        let model = Zero(m.feature_names.clone());
        let equal = GroupCalibration::fit(&model, &m, "is_registered", None)?
            .ok_or_else(|| ModelError::Unavailable("no calibration".into()))?;
        assert!((equal.offsets[0] - 0.5).abs() < 1e-12, "{equal:?}");
        assert!((equal.offsets[1] - 0.5).abs() < 1e-12, "{equal:?}");
        let recent = GroupCalibration::fit(&model, &m, "is_registered", Some(5.0))?
            .ok_or_else(|| ModelError::Unavailable("no calibration".into()))?;
        // Rows older than 30 days weigh < 2^-6 each.
        assert!(recent.offsets[0] < 0.05, "{recent:?}");
        assert!((recent.offsets[1] - 0.5).abs() < 1e-12, "{recent:?}");
        assert_eq!(recent.rows, [60, 60]);
        assert!(GroupCalibration::fit(&model, &m, "is_registered", Some(0.0)).is_err());
        assert!(GroupCalibration::fit(&model, &m, "nope", None).is_err());
        Ok(())
    }
}
