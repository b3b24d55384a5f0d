//! Training the MLP with tch (libtorch).

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use crate::mlp::{MlpModel, MlpParams, MlpTraining, Optimizer};
use crate::{DesignMatrix, ModelError, Result};

fn err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Training {
        model: "mlp",
        reason: e.to_string(),
    }
}

struct Net {
    hidden: Vec<(nn::Linear, Option<nn::BatchNorm>)>,
    out: nn::Linear,
    dropout: f64,
}

impl Net {
    fn new(root: &nn::Path<'_>, inputs: i64, p: &MlpParams) -> Self {
        let mut hidden = Vec::new();
        let mut width = inputs;
        let units = p.units as i64;
        for i in 0..p.hidden_layers {
            let lin = nn::linear(root / format!("l{i}"), width, units, Default::default());
            let bn = p
                .batch_norm
                .then(|| nn::batch_norm1d(root / format!("bn{i}"), units, Default::default()));
            hidden.push((lin, bn));
            width = units;
        }
        let out = nn::linear(root / "out", width, 1, Default::default());
        Self {
            hidden,
            out,
            dropout: p.dropout,
        }
    }

    fn forward(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut h = xs.shallow_clone();
        for (lin, bn) in &self.hidden {
            h = h.apply(lin);
            if let Some(bn) = bn {
                h = h.apply_t(bn, train);
            }
            h = h.relu();
            if self.dropout > 0.0 {
                h = h.dropout(self.dropout, train);
            }
        }
        self.out.forward(&h)
    }
}

fn to_tensor(m: &DesignMatrix, device: Device) -> (Tensor, Tensor) {
    let x: Vec<f32> = m.x.iter().map(|&v| v as f32).collect();
    let y: Vec<f32> = m.y.iter().map(|&v| v as f32).collect();
    let n = m.len() as i64;
    let d = m.x.ncols() as i64;
    (
        Tensor::from_slice(&x).view([n, d]).to_device(device),
        Tensor::from_slice(&y).view([n, 1]).to_device(device),
    )
}

fn val_loss(net: &Net, x: &Tensor, y: &Tensor) -> Result<f64> {
    let loss = tch::no_grad(|| net.forward(x, false).mse_loss(y, tch::Reduction::Mean));
    f64::try_from(loss).map_err(err)
}

/// libtorch's random generator (weight init, dropout) is global to the
/// process: trainings in parallel threads would interleave its draws and lose
/// determinism, so MLP training holds this lock from seeding to the end.
static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub(crate) fn train(
    p: &MlpParams,
    train: &DesignMatrix,
    val: &DesignMatrix,
    warm_start: Option<&MlpModel>,
) -> Result<MlpModel> {
    // A poisoned lock only means another training panicked; the RNG is reseeded below.
    let _rng_guard = TORCH_RNG
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if train.is_empty() {
        return Err(err("empty training matrix"));
    }
    let device = if p.use_cuda && tch::Cuda::is_available() {
        Device::Cuda(0)
    } else {
        Device::Cpu
    };
    tch::manual_seed(p.seed as i64);
    let mut vs = nn::VarStore::new(device);
    let root = vs.root();
    let net = Net::new(&root, train.x.ncols() as i64, p);
    if let Some(init) = warm_start {
        if init.params().hidden_layers != p.hidden_layers
            || init.params().units != p.units
            || init.params().batch_norm != p.batch_norm
        {
            return Err(err("warm start needs the same architecture"));
        }
        let dir = tempfile::tempdir().map_err(err)?;
        let path = dir.path().join("init.safetensors");
        std::fs::write(&path, init.weights_file()).map_err(err)?;
        vs.load(&path).map_err(err)?;
    }
    let mut opt = match p.optimizer {
        Optimizer::Adam => nn::Adam::default().build(&vs, p.learning_rate),
        Optimizer::Adamw => nn::adamw(0.9, 0.999, p.weight_decay).build(&vs, p.learning_rate),
        Optimizer::Rmsprop => {
            nn::rms_prop(0.99, 1e-8, p.weight_decay, 0.0, false).build(&vs, p.learning_rate)
        }
        Optimizer::Sgd => nn::sgd(0.9, 0.0, p.weight_decay, false).build(&vs, p.learning_rate),
    }
    .map_err(err)?;
    let (xt, yt) = to_tensor(train, device);
    let monitor = if val.is_empty() { train } else { val };
    let (xv, yv) = to_tensor(monitor, device);

    let n = train.len();
    let mut order: Vec<i64> = (0..n as i64).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
    let mut best = (f64::INFINITY, 0usize);
    let mut best_weights: Vec<(String, Tensor)> = Vec::new();
    let mut epochs = 0;
    for epoch in 1..=p.max_epochs {
        epochs = epoch;
        order.shuffle(&mut rng);
        for chunk in order.chunks(p.batch_size) {
            if chunk.len() < 2 && p.batch_norm {
                continue; // batch norm needs two rows
            }
            let idx = Tensor::from_slice(chunk).to_device(device);
            let xb = xt.index_select(0, &idx);
            let yb = yt.index_select(0, &idx);
            let loss = net.forward(&xb, true).mse_loss(&yb, tch::Reduction::Mean);
            opt.backward_step(&loss);
        }
        let loss = val_loss(&net, &xv, &yv)?;
        if !loss.is_finite() {
            return Err(err(format!(
                "validation loss became {loss} at epoch {epoch}"
            )));
        }
        if loss < best.0 {
            best = (loss, epoch);
            best_weights = vs
                .variables()
                .into_iter()
                .map(|(k, t)| (k, t.detach().copy()))
                .collect();
        } else if epoch - best.1 >= p.patience.max(1) {
            break;
        }
    }
    // Restore the best epoch's weights.
    let vars = vs.variables();
    tch::no_grad(|| {
        for (name, saved) in &best_weights {
            if let Some(var) = vars.get(name) {
                let mut var = var.shallow_clone();
                var.copy_(saved);
            }
        }
    });
    vs.set_kind(Kind::Float);
    let dir = tempfile::tempdir().map_err(err)?;
    let path = dir.path().join("weights.safetensors");
    vs.save(&path).map_err(err)?;
    let bytes = std::fs::read(&path).map_err(err)?;
    MlpModel::from_parts(
        p.clone(),
        train.feature_names.clone(),
        MlpTraining {
            epochs,
            best_epoch: best.1,
            best_val_loss: best.0,
            device: format!("{device:?}"),
            rows: n,
        },
        bytes,
    )
}
