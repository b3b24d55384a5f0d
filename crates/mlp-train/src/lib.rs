//! Training the MLP with tch (libtorch), in a process of its own.
//!
//! `price-mlp-train` reads [`mlp_wire::TrainRequest`]s on its standard input
//! and answers each with a [`mlp_wire::Reply`] on its standard output until
//! its input closes ([`serve`]). The `models` crate starts it on the first MLP
//! fit of a process and keeps it for the next ones, so libtorch is loaded
//! once per run and by this process only: the task runner, the server and
//! the Lambda never link it. The weights come back as a safetensors file
//! that `models::MlpModel` evaluates in pure Rust.
//!
//! Requests are served one at a time, each reseeding libtorch's global
//! generator, so a fit depends only on its request.

use std::io::{Read, Write};

use mlp_wire::{Matrix, Reply, TrainRequest, Trained, Training, WireError};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

/// Optimisers, as `models::Optimizer` names them.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Optimizer {
    Adam,
    Adamw,
    Rmsprop,
    Sgd,
}

/// The fields of `models::MlpParams` that training reads (the others, such
/// as the activation, are the evaluator's).
#[derive(Debug, Clone, Deserialize)]
struct Spec {
    hidden_layers: usize,
    units: usize,
    dropout: f64,
    batch_norm: bool,
    optimizer: Optimizer,
    learning_rate: f64,
    weight_decay: f64,
    batch_size: usize,
    max_epochs: usize,
    patience: usize,
    seed: u64,
    use_cuda: bool,
}

struct Net {
    hidden: Vec<(nn::Linear, Option<nn::BatchNorm>)>,
    out: nn::Linear,
    dropout: f64,
}

impl Net {
    fn new(root: &nn::Path<'_>, inputs: i64, p: &Spec) -> Self {
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

fn to_tensor(m: &Matrix, device: Device) -> (Tensor, Tensor) {
    let (n, d) = (m.rows as i64, m.cols as i64);
    (
        Tensor::from_slice(&m.x).view([n, d]).to_device(device),
        Tensor::from_slice(&m.y).view([n, 1]).to_device(device),
    )
}

fn val_loss(net: &Net, x: &Tensor, y: &Tensor) -> Result<f64, String> {
    let loss = tch::no_grad(|| net.forward(x, false).mse_loss(y, tch::Reduction::Mean));
    f64::try_from(loss).map_err(|e| e.to_string())
}

/// Trains the network a request describes, early-stopping on its
/// validation rows, and returns the best epoch's weights.
pub fn train(req: &TrainRequest) -> Result<Trained, String> {
    let p: Spec = serde_json::from_value(req.params.clone())
        .map_err(|e| format!("MLP hyper-parameters: {e}"))?;
    let train = &req.train;
    if train.rows == 0 {
        return Err("empty training matrix".into());
    }
    if p.hidden_layers == 0 || p.units == 0 || p.batch_size == 0 {
        return Err(format!("out-of-range hyper-parameters: {p:?}"));
    }
    let device = if p.use_cuda && tch::Cuda::is_available() {
        Device::Cuda(0)
    } else {
        Device::Cpu
    };
    tch::manual_seed(p.seed as i64);
    let mut vs = nn::VarStore::new(device);
    let root = vs.root();
    let net = Net::new(&root, train.cols as i64, &p);
    if let Some(init) = &req.warm_start {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("init.safetensors");
        std::fs::write(&path, init).map_err(|e| e.to_string())?;
        vs.load(&path)
            .map_err(|e| format!("warm start needs the same architecture: {e}"))?;
    }
    let mut opt = match p.optimizer {
        Optimizer::Adam => nn::Adam::default().build(&vs, p.learning_rate),
        Optimizer::Adamw => nn::adamw(0.9, 0.999, p.weight_decay).build(&vs, p.learning_rate),
        Optimizer::Rmsprop => {
            nn::rms_prop(0.99, 1e-8, p.weight_decay, 0.0, false).build(&vs, p.learning_rate)
        }
        Optimizer::Sgd => nn::sgd(0.9, 0.0, p.weight_decay, false).build(&vs, p.learning_rate),
    }
    .map_err(|e| e.to_string())?;
    let (xt, yt) = to_tensor(train, device);
    let monitor = if req.val.rows == 0 { train } else { &req.val };
    let (xv, yv) = to_tensor(monitor, device);

    let n = train.rows;
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
            return Err(format!("validation loss became {loss} at epoch {epoch}"));
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
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = dir.path().join("weights.safetensors");
    vs.save(&path).map_err(|e| e.to_string())?;
    let weights = std::fs::read(&path).map_err(|e| e.to_string())?;
    Ok(Trained {
        weights,
        training: Training {
            epochs,
            best_epoch: best.1,
            best_val_loss: best.0,
            device: format!("{device:?}"),
            rows: n,
        },
    })
}

/// Answers requests from `input` on `output` until `input` ends. A request
/// that fails to train is answered with [`Reply::Failed`] and the loop goes
/// on; a broken pipe or malformed frame ends it with the error.
pub fn serve(input: &mut impl Read, output: &mut impl Write) -> Result<(), WireError> {
    while let Some(req) = mlp_wire::read_request(input)? {
        let reply = match train(&req) {
            Ok(trained) => Reply::Trained(trained),
            Err(reason) => Reply::Failed(reason),
        };
        mlp_wire::write_reply(output, &reply)?;
    }
    Ok(())
}
