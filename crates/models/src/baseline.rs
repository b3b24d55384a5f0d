//! The baseline: each product's median training target.

use std::collections::BTreeMap;

use ndarray::{Array1, ArrayView2};
use serde::{Deserialize, Serialize};

use crate::{DesignMatrix, ModelFiles, ModelKind, Regressor, Result, from_json_file, to_json_file};

/// Parameters of the baseline (none to tune).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BaselineParams {}

/// Per-product median of the training target; the global median for unseen products.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineModel {
    feature_names: Vec<String>,
    global_median: f64,
    medians: BTreeMap<String, f64>,
}

/// The median, or 0 for no values (an empty training matrix).
fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        features::median(v)
    }
}

impl BaselineParams {
    /// Fits on a training matrix.
    pub fn fit(&self, train: &DesignMatrix) -> Result<BaselineModel> {
        let mut groups: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for (code, &y) in train.stock_code.iter().zip(train.y.iter()) {
            groups.entry(code.as_str()).or_default().push(y);
        }
        let mut all = train.y.to_vec();
        Ok(BaselineModel {
            feature_names: train.feature_names.clone(),
            global_median: median(&mut all),
            medians: groups
                .into_iter()
                .map(|(k, mut v)| (k.to_string(), median(&mut v)))
                .collect(),
        })
    }
}

impl BaselineModel {
    /// The prediction for a product.
    pub fn predict_code(&self, stock_code: &str) -> f64 {
        self.medians
            .get(stock_code)
            .copied()
            .unwrap_or(self.global_median)
    }

    /// Reads the model back.
    pub fn from_files(files: &ModelFiles) -> Result<Self> {
        Ok(from_json_file::<Self>(ModelKind::Baseline, files)?.model)
    }
}

impl Regressor for BaselineModel {
    fn kind(&self) -> ModelKind {
        ModelKind::Baseline
    }
    fn feature_names(&self) -> &[String] {
        &self.feature_names
    }
    fn hyper_params(&self) -> serde_json::Value {
        serde_json::json!({})
    }
    /// Without stock codes every row gets the global median.
    fn predict(&self, x: ArrayView2<'_, f64>) -> Result<Array1<f64>> {
        Ok(Array1::from_elem(x.nrows(), self.global_median))
    }
    fn predict_matrix(&self, m: &DesignMatrix) -> Result<Array1<f64>> {
        Ok(m.stock_code.iter().map(|c| self.predict_code(c)).collect())
    }
    fn to_files(&self) -> Result<ModelFiles> {
        to_json_file(ModelKind::Baseline, &self.feature_names, self)
    }
}
