//! Kernel SVR (linfa-svm) on a stratified subsample.

use linfa::traits::{Fit, Predict};
use ndarray::{Array1, ArrayView2};
use serde::{Deserialize, Serialize};

use crate::{
    DesignMatrix, ModelError, ModelFiles, ModelKind, Regressor, Result, check_width,
    from_json_file, stratified_subsample, to_json_file,
};

/// Hyper-parameters of the SVR.
///
/// Kernel SVR costs O(n²) memory and O(n²)–O(n³) time in the training rows,
/// and its prediction cost grows with the number of support vectors, so it is
/// trained on `max_train_rows` rows stratified on the target (the full
/// training set has ~370,000 rows).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SvrParams {
    /// Regularisation C (> 0).
    pub c: f64,
    /// Width of the ε-insensitive tube (≥ 0).
    pub epsilon: f64,
    /// Gaussian kernel width: k(a, b) = exp(-|a - b|² / gamma_width).
    pub gamma_width: f64,
    /// Training rows used (stratified subsample).
    pub max_train_rows: usize,
}

impl Default for SvrParams {
    fn default() -> Self {
        Self {
            c: 1.0,
            epsilon: 0.1,
            gamma_width: 30.0,
            max_train_rows: 2_000,
        }
    }
}

/// A fitted SVR.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SvrModel {
    params: SvrParams,
    feature_names: Vec<String>,
    trained_rows: usize,
    svm: linfa_svm::Svm<f64, f64>,
}

impl SvrParams {
    /// Checks the ranges.
    pub fn validate(&self) -> Result<()> {
        let ok = self.c.is_finite()
            && self.c > 0.0
            && self.epsilon.is_finite()
            && self.epsilon >= 0.0
            && self.gamma_width.is_finite()
            && self.gamma_width > 0.0
            && self.max_train_rows >= 10;
        if ok {
            Ok(())
        } else {
            Err(ModelError::Params {
                model: "svr",
                reason: format!(
                    "need c > 0, epsilon >= 0, gamma_width > 0, max_train_rows >= 10; got {self:?}"
                ),
            })
        }
    }

    /// Fits on (a stratified subsample of) a training matrix.
    pub fn fit(&self, train: &DesignMatrix) -> Result<SvrModel> {
        self.validate()?;
        let sample = stratified_subsample(train, self.max_train_rows);
        let ds = linfa::Dataset::new(sample.x.clone(), sample.y.clone());
        let svm = linfa_svm::Svm::<f64, f64>::params()
            .c_svr(self.c, Some(self.epsilon))
            .gaussian_kernel(self.gamma_width)
            .fit(&ds)
            .map_err(|e| ModelError::Training {
                model: "svr",
                reason: e.to_string(),
            })?;
        Ok(SvrModel {
            params: self.clone(),
            feature_names: train.feature_names.clone(),
            trained_rows: sample.len(),
            svm,
        })
    }
}

impl SvrModel {
    /// Reads the model back.
    pub fn from_files(files: &ModelFiles) -> Result<Self> {
        Ok(from_json_file::<Self>(ModelKind::Svr, files)?.model)
    }

    /// Rows it was trained on.
    pub fn trained_rows(&self) -> usize {
        self.trained_rows
    }
}

impl Regressor for SvrModel {
    fn kind(&self) -> ModelKind {
        ModelKind::Svr
    }
    fn feature_names(&self) -> &[String] {
        &self.feature_names
    }
    fn hyper_params(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.params).unwrap_or_default();
        v["trained_rows"] = self.trained_rows.into();
        v["support_vectors"] = self.svm.nsupport().into();
        v
    }
    fn predict(&self, x: ArrayView2<'_, f64>) -> Result<Array1<f64>> {
        check_width("svr", self.feature_names.len(), &x)?;
        Ok(self.svm.predict(&x))
    }
    fn to_files(&self) -> Result<ModelFiles> {
        to_json_file(ModelKind::Svr, &self.feature_names, self)
    }
}
