//! Price-response regressors: predict ln(1 + quantity) from price and context.
//!
//! Every model implements [`Regressor`] (predict a matrix, save to a stable
//! file format) and is built from a validated params struct with a `fit`
//! method, in the spirit of linfa's `Fit`/`Predict`:
//!
//! | model | params | trained with | file |
//! |---|---|---|---|
//! | MLP (primary) | [`MlpParams`] | tch (feature `torch`) | VarStore safetensors + JSON |
//! | LightGBM | [`GbmParams`] | lightgbm3 | LightGBM model text in JSON |
//! | SVR | [`SvrParams`] | linfa-svm, on a stratified subsample | JSON |
//! | Elastic Net | [`ElasticNetParams`] | linfa-elasticnet, centred X | JSON |
//! | baseline | [`BaselineParams`] | per-product median target | JSON |
//!
//! Inference never needs libtorch: a saved MLP is evaluated in pure Rust from
//! its safetensors weights, so serving binaries do not link it.
//!
//! ```
//! use models::{BaselineParams, Regressor, evaluate};
//! # let data = etl::synth::generate(&etl::synth::SynthConfig { n_invoices: 300, ..Default::default() });
//! # let raw = etl::read_raw_bytes(data.csv.as_bytes(), "s.csv").unwrap();
//! # let (tx, _) = etl::clean(&raw, &etl::EtlParams::default()).unwrap();
//! # let out = features::build_features(&tx, &features::FeatureParams::default(), None).unwrap();
//! # let parts = features::split(&out.table, &out.window, &features::PreprocessParams::default()).unwrap();
//! let model = BaselineParams::default().fit(&parts.train).unwrap();
//! let metrics = evaluate(&model, &parts.val).unwrap();
//! assert!(metrics.rmsle.is_finite());
//! ```

mod baseline;
mod calibration;
mod gbm;
mod linear;
mod metrics;
mod mlp;
mod registry;
pub mod response;
mod svr;
mod train;
mod trainer;

use std::collections::BTreeMap;

use ndarray::{Array1, ArrayView2};
use serde::{Deserialize, Serialize};

pub use baseline::{BaselineModel, BaselineParams};
pub use calibration::{Calibrated, GroupCalibration, calibrated_metrics};
pub use features::DesignMatrix;
pub use gbm::{GbmModel, GbmParams};
pub use linear::{ElasticNetModel, ElasticNetParams};
pub use metrics::{Metrics, evaluate, metrics_from_predictions};
pub use mlp::{Activation, MlpModel, MlpParams, Optimizer};
pub use registry::{
    FailoverLoader, KindedModels, LoadedModel, Manifest, ManifestEntry, SkippedModel,
    load_from_store,
};
pub use svr::{SvrModel, SvrParams};
pub use train::{TrainConfig, TrainOutcome, TrainedModel, train_all, tune_and_fit};
pub use trainer::{TRAINER_BIN, TRAINER_ENV, stop_trainer, trainer_path};
pub use tuning;

/// Errors of the models crate.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Invalid hyper-parameters.
    #[error("{model} params: {reason}")]
    Params {
        /// The model kind.
        model: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Training failed.
    #[error("{model} training failed: {reason}")]
    Training {
        /// The model kind.
        model: &'static str,
        /// Why.
        reason: String,
    },
    /// The input matrix does not match the model.
    #[error("{model}: input has {got} columns, the model was trained on {expected}")]
    Shape {
        /// The model kind.
        model: &'static str,
        /// Columns expected.
        expected: usize,
        /// Columns given.
        got: usize,
    },
    /// A model file is malformed.
    #[error("{model} model file: {reason}")]
    Format {
        /// The model kind.
        model: String,
        /// Why it cannot be read.
        reason: String,
    },
    /// The model cannot be used for this task (for example the MLP trainer
    /// binary is missing).
    #[error("{0}")]
    Unavailable(String),
    /// The MLP trainer process stopped answering.
    #[error("MLP trainer {path} (exit status: {status})")]
    Trainer {
        /// The trainer binary.
        path: String,
        /// How the process ended.
        status: String,
        /// What the pipe saw.
        source: mlp_wire::WireError,
    },
    /// No model in the manifest could be loaded.
    #[error("no usable model: {0}")]
    NoUsableModel(String),
    /// From the artifact store.
    #[error(transparent)]
    Store(#[from] lineage::LineageError),
    /// JSON (de)serialisation.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

/// Result alias of this crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// The kinds of model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// The tch feed-forward network.
    Mlp,
    /// Gradient-boosted trees.
    Lightgbm,
    /// Kernel support-vector regression.
    Svr,
    /// Linear model with L1 + L2 penalties.
    ElasticNet,
    /// Per-product median of the training target.
    Baseline,
}

impl ModelKind {
    /// The snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Mlp => "mlp",
            ModelKind::Lightgbm => "lightgbm",
            ModelKind::Svr => "svr",
            ModelKind::ElasticNet => "elastic_net",
            ModelKind::Baseline => "baseline",
        }
    }

    /// All kinds.
    pub const ALL: [ModelKind; 5] = [
        ModelKind::Mlp,
        ModelKind::Lightgbm,
        ModelKind::Svr,
        ModelKind::ElasticNet,
        ModelKind::Baseline,
    ];
}

impl std::str::FromStr for ModelKind {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        ModelKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                ModelError::Unavailable(format!(
                    "unknown model `{s}` (models: mlp, lightgbm, svr, elastic_net, baseline)"
                ))
            })
    }
}

/// A model's files: file name → bytes (e.g. `model.json`, `weights.safetensors`).
pub type ModelFiles = BTreeMap<String, Vec<u8>>;

/// A trained regressor of ln(1 + quantity).
pub trait Regressor: Send + Sync {
    /// Its kind.
    fn kind(&self) -> ModelKind;
    /// The feature names it was trained on, in column order.
    fn feature_names(&self) -> &[String];
    /// Its hyper-parameters, as JSON.
    fn hyper_params(&self) -> serde_json::Value;
    /// Predictions for each row of `x` (columns as [`Regressor::feature_names`]).
    /// Rows of a design matrix also carry their stock code: models that need it
    /// (the baseline) use [`Regressor::predict_matrix`].
    fn predict(&self, x: ArrayView2<'_, f64>) -> Result<Array1<f64>>;
    /// Predictions for a design matrix.
    fn predict_matrix(&self, m: &DesignMatrix) -> Result<Array1<f64>> {
        self.predict(m.x.view())
    }
    /// The files that [`load_model`] reads back.
    fn to_files(&self) -> Result<ModelFiles>;
}

pub(crate) fn check_width(
    model: &'static str,
    expected: usize,
    x: &ArrayView2<'_, f64>,
) -> Result<()> {
    if x.ncols() != expected {
        return Err(ModelError::Shape {
            model,
            expected,
            got: x.ncols(),
        });
    }
    Ok(())
}

/// The JSON envelope every model file shares.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Envelope<T> {
    pub format: String,
    pub version: u32,
    pub kind: ModelKind,
    pub feature_names: Vec<String>,
    pub model: T,
}

pub(crate) const FORMAT: &str = "price-prediction-model";

pub(crate) fn to_json_file<T: Serialize>(
    kind: ModelKind,
    feature_names: &[String],
    model: &T,
) -> Result<ModelFiles> {
    let env = Envelope {
        format: FORMAT.into(),
        version: 1,
        kind,
        feature_names: feature_names.to_vec(),
        model,
    };
    let mut files = ModelFiles::new();
    files.insert("model.json".into(), serde_json::to_vec(&env)?);
    Ok(files)
}

pub(crate) fn from_json_file<T: serde::de::DeserializeOwned>(
    kind: ModelKind,
    files: &ModelFiles,
) -> Result<Envelope<T>> {
    let bytes = files.get("model.json").ok_or_else(|| ModelError::Format {
        model: kind.name().into(),
        reason: "model.json is missing".into(),
    })?;
    let env: Envelope<T> = serde_json::from_slice(bytes).map_err(|e| ModelError::Format {
        model: kind.name().into(),
        reason: e.to_string(),
    })?;
    if env.format != FORMAT || env.version != 1 || env.kind != kind {
        return Err(ModelError::Format {
            model: kind.name().into(),
            reason: format!(
                "expected {FORMAT} v1 of kind {}, found {} v{} of kind {}",
                kind.name(),
                env.format,
                env.version,
                env.kind.name()
            ),
        });
    }
    Ok(env)
}

/// Reads a model of `kind` from its files.
pub fn load_model(kind: ModelKind, files: &ModelFiles) -> Result<Box<dyn Regressor>> {
    Ok(match kind {
        ModelKind::Mlp => Box::new(MlpModel::from_files(files)?),
        ModelKind::Lightgbm => Box::new(GbmModel::from_files(files)?),
        ModelKind::Svr => Box::new(SvrModel::from_files(files)?),
        ModelKind::ElasticNet => Box::new(ElasticNetModel::from_files(files)?),
        ModelKind::Baseline => Box::new(BaselineModel::from_files(files)?),
    })
}

/// Rows `idx` of a design matrix, as a new matrix.
pub fn subset(m: &DesignMatrix, idx: &[usize]) -> DesignMatrix {
    DesignMatrix {
        feature_names: m.feature_names.clone(),
        x: m.x.select(ndarray::Axis(0), idx),
        y: m.y.select(ndarray::Axis(0), idx),
        stock_code: idx.iter().map(|&i| m.stock_code[i].clone()).collect(),
        ts: idx.iter().map(|&i| m.ts[i]).collect(),
    }
}

/// A subsample of at most `n` rows stratified on the target: rows are sorted by
/// target and taken at even strides, so the subsample keeps the target's
/// distribution (and is deterministic).
pub fn stratified_subsample(m: &DesignMatrix, n: usize) -> DesignMatrix {
    if m.len() <= n || n == 0 {
        return m.clone();
    }
    let mut order: Vec<usize> = (0..m.len()).collect();
    order.sort_by(|&a, &b| m.y[a].total_cmp(&m.y[b]).then(a.cmp(&b)));
    let step = m.len() as f64 / n as f64;
    let mut idx: Vec<usize> = (0..n)
        .map(|k| order[((k as f64 + 0.5) * step) as usize])
        .collect();
    idx.sort_unstable();
    subset(m, &idx)
}
