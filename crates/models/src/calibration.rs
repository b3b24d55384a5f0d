//! Group calibration: predictions made unbiased for each group of a
//! sensitive column (guests and registered customers), so a model neither
//! widens nor narrows the real difference between them.
//!
//! For each group `g`, the offset `δ_g = mean(y − ŷ | g)` is fitted on the
//! validation window (the rows the model never trained on) and added to the
//! model's log-scale predictions for that group. It is recorded in the
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
}

impl GroupCalibration {
    /// Fits the offsets of `model` on `val`; `None` when a group has no rows.
    pub fn fit(model: &dyn Regressor, val: &DesignMatrix, column: &str) -> Result<Option<Self>> {
        let Some(index) = val.feature_names.iter().position(|n| n == column) else {
            return Err(ModelError::Format {
                model: "calibration".into(),
                reason: format!("the model matrix has no `{column}` column"),
            });
        };
        let pred = model.predict_matrix(val)?;
        let mut sums = [0.0; 2];
        let mut rows = [0usize; 2];
        for ((p, y), g) in pred.iter().zip(val.y.iter()).zip(val.x.column(index)) {
            let g = usize::from(*g > 0.5);
            sums[g] += y - p;
            rows[g] += 1;
        }
        if rows.contains(&0) {
            return Ok(None);
        }
        Ok(Some(Self {
            column: column.to_string(),
            offsets: [sums[0] / rows[0] as f64, sums[1] / rows[1] as f64],
            rows,
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
