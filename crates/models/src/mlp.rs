//! The primary model: a feed-forward network. Trained with tch in the
//! trainer process (`mlp-train`); evaluated here in pure Rust from its
//! safetensors weights.

use ndarray::{Array1, Array2, ArrayView2};
use serde::{Deserialize, Serialize};

use crate::{DesignMatrix, ModelError, ModelFiles, ModelKind, Regressor, Result, check_width};

/// Optimisers for the MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Optimizer {
    /// Adam.
    Adam,
    /// Adam with decoupled weight decay.
    Adamw,
    /// RMSprop.
    Rmsprop,
    /// SGD with momentum 0.9.
    Sgd,
}

impl Optimizer {
    /// All choices (for the search space).
    pub const ALL: [Optimizer; 4] = [
        Optimizer::Adam,
        Optimizer::Adamw,
        Optimizer::Rmsprop,
        Optimizer::Sgd,
    ];

    /// The snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            Optimizer::Adam => "adam",
            Optimizer::Adamw => "adamw",
            Optimizer::Rmsprop => "rmsprop",
            Optimizer::Sgd => "sgd",
        }
    }
}

/// Hidden-layer activation (ReLU; kept as a type so files say what they hold).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// max(0, x).
    #[default]
    Relu,
}

/// Hyper-parameters of the MLP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MlpParams {
    /// Hidden layers (1–4).
    pub hidden_layers: usize,
    /// Units per hidden layer (4–512).
    pub units: usize,
    /// Dropout after each hidden layer, in [0, 0.8).
    pub dropout: f64,
    /// Batch normalisation after each hidden linear layer.
    pub batch_norm: bool,
    /// Optimiser.
    pub optimizer: Optimizer,
    /// Learning rate.
    pub learning_rate: f64,
    /// Weight decay (AdamW, RMSprop, SGD).
    pub weight_decay: f64,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Epoch cap.
    pub max_epochs: usize,
    /// Stop after this many epochs without a better validation loss.
    pub patience: usize,
    /// Seed of initialisation and batch order.
    pub seed: u64,
    /// Train on CUDA when available (CPU otherwise; CPU runs are deterministic).
    pub use_cuda: bool,
    /// Activation.
    #[serde(default)]
    pub activation: Activation,
}

impl Default for MlpParams {
    fn default() -> Self {
        Self {
            hidden_layers: 2,
            units: 64,
            dropout: 0.1,
            batch_norm: false,
            optimizer: Optimizer::Adam,
            learning_rate: 1e-3,
            weight_decay: 0.0,
            batch_size: 512,
            max_epochs: 30,
            patience: 4,
            seed: 42,
            use_cuda: true,
            activation: Activation::Relu,
        }
    }
}

impl MlpParams {
    /// Checks the ranges.
    pub fn validate(&self) -> Result<()> {
        let ok = (1..=4).contains(&self.hidden_layers)
            && (4..=512).contains(&self.units)
            && (0.0..0.8).contains(&self.dropout)
            && self.learning_rate.is_finite()
            && self.learning_rate > 0.0
            && self.learning_rate < 1.0
            && self.weight_decay.is_finite()
            && self.weight_decay >= 0.0
            && (8..=65_536).contains(&self.batch_size)
            && self.max_epochs >= 1;
        if ok {
            Ok(())
        } else {
            Err(ModelError::Params {
                model: "mlp",
                reason: format!("out-of-range hyper-parameters: {self:?}"),
            })
        }
    }

    /// Trains on `train`, early-stopping on `val`; with `warm_start`, training
    /// starts from that model's weights (same architecture required). The
    /// training runs in the trainer process (`price-mlp-train`, see
    /// [`crate::trainer_path`]): this crate never links libtorch.
    pub fn fit(
        &self,
        train: &DesignMatrix,
        val: &DesignMatrix,
        warm_start: Option<&MlpModel>,
    ) -> Result<MlpModel> {
        self.validate()?;
        crate::trainer::train(self, train, val, warm_start)
    }
}

/// How training went (the trainer reports it; kept in `model.json`).
pub use mlp_wire::Training as MlpTraining;

#[derive(Debug, Clone, PartialEq)]
struct BatchNorm {
    scale: Array1<f32>,
    shift: Array1<f32>,
}

#[derive(Debug, Clone, PartialEq)]
struct Dense {
    /// (out, in), as torch stores it.
    weight: Array2<f32>,
    bias: Array1<f32>,
    norm: Option<BatchNorm>,
}

/// A trained MLP. Its files: `model.json` (hyper-parameters, feature names,
/// training summary) and `weights.safetensors` (tch VarStore).
#[derive(Debug, Clone)]
pub struct MlpModel {
    params: MlpParams,
    feature_names: Vec<String>,
    training: MlpTraining,
    weights_file: Vec<u8>,
    hidden: Vec<Dense>,
    output: Dense,
}

#[derive(Serialize, Deserialize)]
struct MlpMeta {
    params: MlpParams,
    training: MlpTraining,
}

/// Batch-norm epsilon used by tch's `batch_norm1d` default config.
pub(crate) const BN_EPS: f32 = 1e-5;

fn fmt_err(reason: impl std::fmt::Display) -> ModelError {
    ModelError::Format {
        model: "mlp".into(),
        reason: reason.to_string(),
    }
}

fn read_tensor(st: &safetensors::SafeTensors<'_>, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    let view = st
        .tensor(name)
        .map_err(|e| fmt_err(format!("tensor `{name}`: {e:?}")))?;
    if view.dtype() != safetensors::Dtype::F32 || view.shape() != shape {
        return Err(fmt_err(format!(
            "tensor `{name}`: expected f32 {shape:?}, found {:?} {:?}",
            view.dtype(),
            view.shape()
        )));
    }
    Ok(view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

impl MlpModel {
    /// Builds the evaluator from a safetensors file of a network with `params`'
    /// architecture (tensor names `l{i}.weight`, `bn{i}.*`, `out.*`).
    pub(crate) fn from_parts(
        params: MlpParams,
        feature_names: Vec<String>,
        training: MlpTraining,
        weights_file: Vec<u8>,
    ) -> Result<Self> {
        let st = safetensors::SafeTensors::deserialize(&weights_file)
            .map_err(|e| fmt_err(format!("weights.safetensors: {e:?}")))?;
        let mut hidden = Vec::new();
        let mut width = feature_names.len();
        for i in 0..params.hidden_layers {
            let u = params.units;
            let weight = Array2::from_shape_vec(
                (u, width),
                read_tensor(&st, &format!("l{i}.weight"), &[u, width])?,
            )
            .map_err(fmt_err)?;
            let bias = Array1::from_vec(read_tensor(&st, &format!("l{i}.bias"), &[u])?);
            let norm = if params.batch_norm {
                let g = read_tensor(&st, &format!("bn{i}.weight"), &[u])?;
                let b = read_tensor(&st, &format!("bn{i}.bias"), &[u])?;
                let mean = read_tensor(&st, &format!("bn{i}.running_mean"), &[u])?;
                let var = read_tensor(&st, &format!("bn{i}.running_var"), &[u])?;
                // y = (x - mean) / sqrt(var + eps) * g + b  ==  x * scale + shift
                let scale: Vec<f32> = g
                    .iter()
                    .zip(&var)
                    .map(|(g, v)| g / (v + BN_EPS).sqrt())
                    .collect();
                let shift: Vec<f32> = b
                    .iter()
                    .zip(&mean)
                    .zip(&scale)
                    .map(|((b, m), s)| b - m * s)
                    .collect();
                Some(BatchNorm {
                    scale: Array1::from_vec(scale),
                    shift: Array1::from_vec(shift),
                })
            } else {
                None
            };
            hidden.push(Dense { weight, bias, norm });
            width = u;
        }
        let output = Dense {
            weight: Array2::from_shape_vec(
                (1, width),
                read_tensor(&st, "out.weight", &[1, width])?,
            )
            .map_err(fmt_err)?,
            bias: Array1::from_vec(read_tensor(&st, "out.bias", &[1])?),
            norm: None,
        };
        Ok(Self {
            params,
            feature_names,
            training,
            weights_file,
            hidden,
            output,
        })
    }

    /// Reads the model back from its files.
    pub fn from_files(files: &ModelFiles) -> Result<Self> {
        let env = crate::from_json_file::<MlpMeta>(ModelKind::Mlp, files)?;
        let weights = files
            .get("weights.safetensors")
            .ok_or_else(|| fmt_err("weights.safetensors is missing"))?;
        Self::from_parts(
            env.model.params,
            env.feature_names,
            env.model.training,
            weights.clone(),
        )
    }

    /// The saved VarStore (safetensors bytes).
    pub fn weights_file(&self) -> &[u8] {
        &self.weights_file
    }

    /// Hyper-parameters.
    pub fn params(&self) -> &MlpParams {
        &self.params
    }

    /// How training went.
    pub fn training(&self) -> &MlpTraining {
        &self.training
    }
}

impl Regressor for MlpModel {
    fn kind(&self) -> ModelKind {
        ModelKind::Mlp
    }
    fn feature_names(&self) -> &[String] {
        &self.feature_names
    }
    fn hyper_params(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.params).unwrap_or_default();
        v["training"] = serde_json::to_value(&self.training).unwrap_or_default();
        v
    }
    fn predict(&self, x: ArrayView2<'_, f64>) -> Result<Array1<f64>> {
        check_width("mlp", self.feature_names.len(), &x)?;
        let mut h: Array2<f32> = x.mapv(|v| v as f32);
        for layer in &self.hidden {
            let mut z = h.dot(&layer.weight.t()) + &layer.bias;
            if let Some(bn) = &layer.norm {
                z = z * &bn.scale + &bn.shift;
            }
            z.mapv_inplace(|v| v.max(0.0));
            h = z;
        }
        let out = h.dot(&self.output.weight.t()) + &self.output.bias;
        Ok(out.column(0).mapv(f64::from))
    }
    fn to_files(&self) -> Result<ModelFiles> {
        let mut files = crate::to_json_file(
            ModelKind::Mlp,
            &self.feature_names,
            &MlpMeta {
                params: self.params.clone(),
                training: self.training.clone(),
            },
        )?;
        files.insert("weights.safetensors".into(), self.weights_file.clone());
        Ok(files)
    }
}
