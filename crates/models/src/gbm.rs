//! Gradient-boosted trees (lightgbm3).

use lightgbm3::{Booster, Dataset};
use ndarray::{Array1, ArrayView2};
use serde::{Deserialize, Serialize};

use crate::{
    DesignMatrix, ModelError, ModelFiles, ModelKind, Regressor, Result, check_width,
    from_json_file, to_json_file,
};

/// Hyper-parameters of LightGBM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GbmParams {
    /// Boosting rounds (an upper bound with early stopping).
    pub num_iterations: u32,
    /// Shrinkage.
    pub learning_rate: f64,
    /// Leaves per tree.
    pub num_leaves: u32,
    /// Minimum rows in a leaf.
    pub min_data_in_leaf: u32,
    /// Row subsampling per tree, in (0, 1].
    pub bagging_fraction: f64,
    /// Column subsampling per tree, in (0, 1].
    pub feature_fraction: f64,
    /// L2 regularisation.
    pub lambda_l2: f64,
    /// Stop when the validation loss has not improved for this many rounds (0: off).
    pub early_stopping_rounds: u32,
    /// Seed (training is deterministic for a given seed).
    pub seed: u64,
}

impl Default for GbmParams {
    fn default() -> Self {
        Self {
            num_iterations: 300,
            learning_rate: 0.1,
            num_leaves: 63,
            min_data_in_leaf: 50,
            bagging_fraction: 0.8,
            feature_fraction: 0.9,
            lambda_l2: 1.0,
            early_stopping_rounds: 20,
            seed: 42,
        }
    }
}

/// A fitted LightGBM model; its file holds LightGBM's own model text.
pub struct GbmModel {
    params: GbmParams,
    feature_names: Vec<String>,
    model_text: String,
    booster: SharedBooster,
}

/// LightGBM's booster behind a type that may cross threads.
struct SharedBooster(Booster);

// SAFETY: a LightGBM booster is a handle to C++ state. Its prediction entry
// points (LGBM_BoosterPredictForMat, used by `Booster::predict`) take a shared
// lock inside LightGBM and are documented as thread-safe; this wrapper exposes
// nothing but prediction, and the handle is freed once, on drop.
#[allow(unsafe_code)]
unsafe impl Send for SharedBooster {}
// SAFETY: see above.
#[allow(unsafe_code)]
unsafe impl Sync for SharedBooster {}

#[derive(Serialize, Deserialize)]
struct GbmFile {
    params: GbmParams,
    model_text: String,
}

fn gbm_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Training {
        model: "lightgbm",
        reason: e.to_string(),
    }
}

fn flat(x: ArrayView2<'_, f64>) -> Vec<f64> {
    x.iter().copied().collect()
}

impl GbmParams {
    /// Checks the ranges.
    pub fn validate(&self) -> Result<()> {
        let ok = self.num_iterations >= 1
            && self.learning_rate.is_finite()
            && self.learning_rate > 0.0
            && self.num_leaves >= 2
            && self.min_data_in_leaf >= 1
            && self.bagging_fraction > 0.0
            && self.bagging_fraction <= 1.0
            && self.feature_fraction > 0.0
            && self.feature_fraction <= 1.0
            && self.lambda_l2.is_finite()
            && self.lambda_l2 >= 0.0;
        if ok {
            Ok(())
        } else {
            Err(ModelError::Params {
                model: "lightgbm",
                reason: format!("out-of-range hyper-parameters: {self:?}"),
            })
        }
    }

    fn lgbm_params(&self, with_valid: bool) -> serde_json::Value {
        let mut p = serde_json::json!({
            "objective": "regression",
            "metric": "l2",
            "num_iterations": self.num_iterations,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_data_in_leaf,
            "bagging_fraction": self.bagging_fraction,
            "bagging_freq": if self.bagging_fraction < 1.0 { 1 } else { 0 },
            "feature_fraction": self.feature_fraction,
            "lambda_l2": self.lambda_l2,
            "seed": self.seed,
            "deterministic": true,
            "force_row_wise": true,
            "num_threads": 2,
            "verbosity": -1,
        });
        if with_valid && self.early_stopping_rounds > 0 {
            p["early_stopping_rounds"] = self.early_stopping_rounds.into();
        }
        p
    }

    /// Fits on `train`, early-stopping on `val` when given.
    pub fn fit(&self, train: &DesignMatrix, val: Option<&DesignMatrix>) -> Result<GbmModel> {
        self.validate()?;
        let n_features = i32::try_from(train.x.ncols()).map_err(gbm_err)?;
        let labels: Vec<f32> = train.y.iter().map(|&v| v as f32).collect();
        let train_ds = Dataset::from_slice(&flat(train.x.view()), &labels, n_features, true)
            .map_err(gbm_err)?;
        let valid_ds = match val.filter(|v| !v.is_empty()) {
            Some(v) => {
                let vl: Vec<f32> = v.y.iter().map(|&t| t as f32).collect();
                Some(
                    Dataset::from_slice_with_reference(
                        &flat(v.x.view()),
                        &vl,
                        n_features,
                        true,
                        Some(&train_ds),
                    )
                    .map_err(gbm_err)?,
                )
            }
            None => None,
        };
        let with_valid = valid_ds.is_some();
        let booster = Booster::train_with_valid(train_ds, valid_ds, &self.lgbm_params(with_valid))
            .map_err(gbm_err)?;
        let model_text = booster.save_string().map_err(gbm_err)?;
        Ok(GbmModel {
            params: self.clone(),
            feature_names: train.feature_names.clone(),
            model_text,
            booster: SharedBooster(booster),
        })
    }
}

impl GbmModel {
    /// Reads the model back.
    pub fn from_files(files: &ModelFiles) -> Result<Self> {
        let env = from_json_file::<GbmFile>(ModelKind::Lightgbm, files)?;
        let booster =
            Booster::from_string(&env.model.model_text).map_err(|e| ModelError::Format {
                model: "lightgbm".into(),
                reason: e.to_string(),
            })?;
        if booster.num_features() as usize != env.feature_names.len() {
            return Err(ModelError::Format {
                model: "lightgbm".into(),
                reason: "the booster's feature count does not match the feature names".into(),
            });
        }
        Ok(Self {
            params: env.model.params,
            feature_names: env.feature_names,
            model_text: env.model.model_text,
            booster: SharedBooster(booster),
        })
    }

    /// Boosting rounds kept (after early stopping).
    pub fn num_trees(&self) -> i32 {
        self.booster.0.num_iterations()
    }
}

impl Regressor for GbmModel {
    fn kind(&self) -> ModelKind {
        ModelKind::Lightgbm
    }
    fn feature_names(&self) -> &[String] {
        &self.feature_names
    }
    fn hyper_params(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.params).unwrap_or_default();
        v["trees"] = self.num_trees().into();
        v
    }
    fn predict(&self, x: ArrayView2<'_, f64>) -> Result<Array1<f64>> {
        check_width("lightgbm", self.feature_names.len(), &x)?;
        if x.nrows() == 0 {
            return Ok(Array1::zeros(0));
        }
        let n = i32::try_from(x.ncols()).map_err(gbm_err)?;
        let out = self.booster.0.predict(&flat(x), n, true).map_err(gbm_err)?;
        Ok(Array1::from_vec(out))
    }
    fn to_files(&self) -> Result<ModelFiles> {
        to_json_file(
            ModelKind::Lightgbm,
            &self.feature_names,
            &GbmFile {
                params: self.params.clone(),
                model_text: self.model_text.clone(),
            },
        )
    }
}
