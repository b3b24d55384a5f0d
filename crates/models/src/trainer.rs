//! Fitting the MLP in the trainer process (`price-mlp-train`, crate
//! `mlp-train`): this crate never links libtorch.
//!
//! The first MLP fit of a process starts the trainer and keeps it; later fits
//! reuse it (libtorch loads once per run), one at a time. A trainer that dies
//! is reported with its exit status and restarted by the next fit.

use std::io::{BufReader, BufWriter};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;

use mlp_wire::{Matrix, Reply, TrainRequest};

use crate::mlp::{MlpModel, MlpParams};
use crate::{DesignMatrix, ModelError, Regressor, Result};

/// Environment variable naming the trainer binary; without it the trainer is
/// looked for beside the running executable (and one directory up, where
/// cargo puts binaries for the test executables in `deps/`).
pub const TRAINER_ENV: &str = "PRICE_MLP_TRAINER";
/// File name of the trainer binary.
pub const TRAINER_BIN: &str = "price-mlp-train";

/// Where the trainer binary is: `$PRICE_MLP_TRAINER`, or beside the running
/// executable, or one directory up.
pub fn trainer_path() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(TRAINER_ENV) {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()
        .map_err(|e| ModelError::Unavailable(format!("locating the running executable: {e}")))?;
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(TRAINER_BIN))
        .collect();
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            ModelError::Unavailable(format!(
                "the MLP trainer `{TRAINER_BIN}` is not at {} (set {TRAINER_ENV}, or build it: \
                 cargo build --release -p mlp-train; `cargo xtask` builds it itself)",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" or ")
            ))
        })
}

struct Worker {
    path: PathBuf,
    child: Child,
    input: BufWriter<ChildStdin>,
    output: BufReader<ChildStdout>,
}

impl Worker {
    fn start() -> Result<Self> {
        Self::start_at(trainer_path()?)
    }

    fn start_at(path: PathBuf) -> Result<Self> {
        let mut child = Command::new(&path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                ModelError::Unavailable(format!("starting the MLP trainer {}: {e}", path.display()))
            })?;
        let (Some(input), Some(output)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            return Err(ModelError::Unavailable(
                "the MLP trainer started without pipes".into(),
            ));
        };
        Ok(Self {
            path,
            child,
            input: BufWriter::with_capacity(1 << 20, input),
            output: BufReader::with_capacity(1 << 16, output),
        })
    }

    fn round_trip(&mut self, req: &TrainRequest) -> mlp_wire::Result<Reply> {
        mlp_wire::write_request(&mut self.input, req)?;
        mlp_wire::read_reply(&mut self.output)
    }

    /// Ends a worker whose pipe failed, saying how it ended.
    fn finish(mut self, error: mlp_wire::WireError) -> ModelError {
        drop(self.input);
        let _ = self.child.kill();
        let status = self
            .child
            .wait()
            .map_or_else(|e| format!("unknown ({e})"), |s| s.to_string());
        ModelError::Trainer {
            path: self.path.display().to_string(),
            status,
            source: error,
        }
    }
}

/// The process's trainer, started on first use.
static WORKER: Mutex<Option<Worker>> = Mutex::new(None);

fn matrix(m: &DesignMatrix) -> Matrix {
    Matrix {
        rows: m.len(),
        cols: m.x.ncols(),
        x: m.x.iter().map(|&v| v as f32).collect(),
        y: m.y.iter().map(|&v| v as f32).collect(),
    }
}

fn failed(reason: impl Into<String>) -> ModelError {
    ModelError::Training {
        model: "mlp",
        reason: reason.into(),
    }
}

/// Trains `p` on `train`, early-stopping on `val`, in the trainer process.
pub(crate) fn train(
    p: &MlpParams,
    train: &DesignMatrix,
    val: &DesignMatrix,
    warm_start: Option<&MlpModel>,
) -> Result<MlpModel> {
    if train.is_empty() {
        return Err(failed("empty training matrix"));
    }
    if let Some(init) = warm_start
        && (init.params().hidden_layers != p.hidden_layers
            || init.params().units != p.units
            || init.params().batch_norm != p.batch_norm
            || init.feature_names() != train.feature_names.as_slice())
    {
        return Err(failed(
            "warm start needs the same architecture and features",
        ));
    }
    let req = TrainRequest {
        params: serde_json::to_value(p)?,
        train: matrix(train),
        val: matrix(val),
        warm_start: warm_start.map(|m| m.weights_file().to_vec()),
    };
    // A poisoned lock only means another fit panicked; the worker it had
    // taken out of the slot went with it, and a new one starts here.
    let mut slot = WORKER
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut worker = match slot.take() {
        Some(w) => w,
        None => Worker::start()?,
    };
    let reply = match worker.round_trip(&req) {
        Ok(reply) => reply,
        Err(e) => return Err(worker.finish(e)),
    };
    *slot = Some(worker);
    drop(slot);
    match reply {
        Reply::Failed(reason) => Err(failed(reason)),
        Reply::Trained(t) => MlpModel::from_parts(
            p.clone(),
            train.feature_names.clone(),
            t.training,
            t.weights,
        ),
    }
}

/// Stops the process's trainer, if one is running, and waits for it: its
/// memory (libtorch, about 0.3 GB) is not held through later stages. The
/// next MLP fit starts a new one.
pub fn stop_trainer() {
    let worker = WORKER
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take();
    if let Some(mut w) = worker {
        // Closing its input ends the trainer's loop.
        drop(w.input);
        let _ = w.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> TrainRequest {
        let m = Matrix {
            rows: 2,
            cols: 1,
            x: vec![1.0, 2.0],
            y: vec![0.0, 1.0],
        };
        TrainRequest {
            params: serde_json::json!({}),
            train: m.clone(),
            val: m,
            warm_start: None,
        }
    }

    #[test]
    fn a_trainer_that_exits_is_reported_with_its_status() {
        let mut w = Worker::start_at(PathBuf::from("/bin/false")).unwrap();
        let e = w.round_trip(&request()).unwrap_err();
        let e = w.finish(e).to_string();
        assert!(
            e.contains("/bin/false") && e.contains("exit status: 1"),
            "{e}"
        );
    }

    #[test]
    fn a_process_that_answers_garbage_is_an_error_not_a_model() {
        // `cat` echoes the request: a frame, but not a reply.
        let mut w = Worker::start_at(PathBuf::from("/bin/cat")).unwrap();
        let e = w.round_trip(&request()).unwrap_err();
        assert!(matches!(e, mlp_wire::WireError::Json(_)), "{e:?}");
        let e = w.finish(e).to_string();
        assert!(e.contains("MLP trainer /bin/cat"), "{e}");
    }

    #[test]
    fn a_trainer_that_cannot_start_is_named() {
        let e = Worker::start_at(PathBuf::from("/nonexistent/price-mlp-train"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("starting the MLP trainer /nonexistent"), "{e}");
    }
}
