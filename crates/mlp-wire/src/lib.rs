//! The wire between the `models` crate and the MLP trainer process
//! (`price-mlp-train`, crate `mlp-train`).
//!
//! Training the MLP needs libtorch, whose shared libraries take a fifth of a
//! second to load and initialise and weigh 1.2 GB. Only the trainer links
//! them; every other process (the task runner, the server, the Lambda) sends
//! the trainer a [`TrainRequest`] and reads back a [`Reply`]. One trainer
//! process serves requests one after the other on its standard input and
//! output until its input closes.
//!
//! A frame is a magic number, the length of a JSON header, the header, then
//! the raw payload the header describes (little-endian `f32` matrices, or the
//! weights file). Sizes are checked against the header before anything is
//! allocated.
//!
//! ```
//! use mlp_wire::{Matrix, Reply, TrainRequest, Trained};
//! let m = Matrix { rows: 2, cols: 1, x: vec![1.0, 2.0], y: vec![0.5, 0.25] };
//! let req = TrainRequest { params: serde_json::json!({"units": 4}), train: m.clone(), val: m, warm_start: None };
//! let mut buf = Vec::new();
//! mlp_wire::write_request(&mut buf, &req).unwrap();
//! assert_eq!(mlp_wire::read_request(&mut buf.as_slice()).unwrap(), Some(req));
//! ```

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

/// Opens every frame: "MLP" and the protocol version.
const MAGIC: [u8; 4] = *b"MLP\x01";
/// Largest JSON header accepted.
const MAX_HEADER: u64 = 1 << 20;
/// Largest payload accepted (64 GiB): a bound on allocation, not a limit
/// any real matrix reaches.
const MAX_PAYLOAD: u64 = 64 << 30;

/// Errors reading or writing a frame.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The pipe failed (the other process exited, or a read was short).
    #[error("MLP trainer pipe")]
    Io(#[from] std::io::Error),
    /// A header is not the JSON this version writes.
    #[error("MLP trainer frame header")]
    Json(#[from] serde_json::Error),
    /// A frame is malformed.
    #[error("MLP trainer frame: {0}")]
    Frame(String),
}

/// Result alias of this crate.
pub type Result<T, E = WireError> = std::result::Result<T, E>;

/// A design matrix in the trainer's precision: `x` row-major `rows × cols`,
/// `y` one target per row.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    /// Rows.
    pub rows: usize,
    /// Columns of `x`.
    pub cols: usize,
    /// Features, row-major.
    pub x: Vec<f32>,
    /// Targets.
    pub y: Vec<f32>,
}

/// One training run.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainRequest {
    /// The hyper-parameters: `models::MlpParams` as JSON.
    pub params: serde_json::Value,
    /// Training rows.
    pub train: Matrix,
    /// Early-stopping rows (empty: the training rows are monitored).
    pub val: Matrix,
    /// Weights (a safetensors file) to start from.
    pub warm_start: Option<Vec<u8>>,
}

/// How a training run went (kept with the model: `models::MlpTraining`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Training {
    /// Epochs run.
    pub epochs: usize,
    /// Epoch of the best validation loss (1-based).
    pub best_epoch: usize,
    /// Best validation MSE (log scale).
    pub best_val_loss: f64,
    /// Device used.
    pub device: String,
    /// Training rows.
    pub rows: usize,
}

/// A finished training run.
#[derive(Debug, Clone, PartialEq)]
pub struct Trained {
    /// The network's weights: a safetensors file (tch VarStore names).
    pub weights: Vec<u8>,
    /// How it went.
    pub training: Training,
}

/// The trainer's answer to one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Trained.
    Trained(Trained),
    /// Training failed; the trainer is still serving.
    Failed(String),
}

#[derive(Serialize, Deserialize)]
struct Shape {
    rows: usize,
    cols: usize,
}

#[derive(Serialize, Deserialize)]
struct RequestHeader {
    params: serde_json::Value,
    train: Shape,
    val: Shape,
    warm_start_bytes: Option<u64>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ReplyHeader {
    Trained {
        training: Training,
        weights_bytes: u64,
    },
    Failed {
        reason: String,
    },
}

fn write_frame(w: &mut impl Write, header: &impl Serialize) -> Result<()> {
    let header = serde_json::to_vec(header)?;
    w.write_all(&MAGIC)?;
    w.write_all(&(header.len() as u64).to_le_bytes())?;
    w.write_all(&header)?;
    Ok(())
}

/// Reads a frame's header; `None` when the input ends before a frame starts.
fn read_frame<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> Result<Option<T>> {
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < magic.len() {
        match r.read(&mut magic[got..])? {
            0 if got == 0 => return Ok(None),
            0 => return Err(WireError::Frame("input ended inside a frame".into())),
            n => got += n,
        }
    }
    if magic != MAGIC {
        return Err(WireError::Frame(format!(
            "expected magic {MAGIC:?}, found {magic:?} (a trainer of another version?)"
        )));
    }
    let mut len = [0u8; 8];
    r.read_exact(&mut len)?;
    let len = u64::from_le_bytes(len);
    if len > MAX_HEADER {
        return Err(WireError::Frame(format!("header of {len} bytes")));
    }
    let mut header = vec![0u8; len as usize];
    r.read_exact(&mut header)?;
    Ok(Some(serde_json::from_slice(&header)?))
}

fn checked_len(what: &str, elements: Option<usize>, width: usize) -> Result<usize> {
    elements
        .and_then(|n| n.checked_mul(width))
        .filter(|&b| b as u64 <= MAX_PAYLOAD)
        .ok_or_else(|| WireError::Frame(format!("{what} is too large")))
}

fn write_f32s(w: &mut impl Write, values: &[f32]) -> Result<()> {
    // In chunks, so a large matrix is not copied whole into bytes.
    let mut buf = Vec::with_capacity(4 * values.len().min(1 << 16));
    for chunk in values.chunks(1 << 16) {
        buf.clear();
        buf.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
        w.write_all(&buf)?;
    }
    Ok(())
}

fn read_f32s(r: &mut impl Read, n: usize) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(n);
    let mut buf = vec![0u8; 4 * n.min(1 << 16)];
    let mut left = n;
    while left > 0 {
        let take = left.min(1 << 16);
        let bytes = &mut buf[..4 * take];
        r.read_exact(bytes)?;
        out.extend(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
        left -= take;
    }
    Ok(out)
}

fn read_bytes(r: &mut impl Read, n: u64) -> Result<Vec<u8>> {
    let n = checked_len("a weights file", usize::try_from(n).ok(), 1)?;
    let mut out = vec![0u8; n];
    r.read_exact(&mut out)?;
    Ok(out)
}

impl Matrix {
    fn shape(&self) -> Result<Shape> {
        if self.x.len() != self.rows * self.cols || self.y.len() != self.rows {
            return Err(WireError::Frame(format!(
                "a {}x{} matrix holds {} features and {} targets",
                self.rows,
                self.cols,
                self.x.len(),
                self.y.len()
            )));
        }
        Ok(Shape {
            rows: self.rows,
            cols: self.cols,
        })
    }

    fn write(&self, w: &mut impl Write) -> Result<()> {
        write_f32s(w, &self.x)?;
        write_f32s(w, &self.y)
    }

    fn read(r: &mut impl Read, shape: &Shape) -> Result<Self> {
        let cells = checked_len("a matrix", shape.rows.checked_mul(shape.cols), 4)? / 4;
        checked_len("a matrix", Some(shape.rows), 4)?;
        Ok(Self {
            rows: shape.rows,
            cols: shape.cols,
            x: read_f32s(r, cells)?,
            y: read_f32s(r, shape.rows)?,
        })
    }
}

/// Writes a request (and flushes).
pub fn write_request(w: &mut impl Write, req: &TrainRequest) -> Result<()> {
    let header = RequestHeader {
        params: req.params.clone(),
        train: req.train.shape()?,
        val: req.val.shape()?,
        warm_start_bytes: req.warm_start.as_ref().map(|b| b.len() as u64),
    };
    write_frame(w, &header)?;
    req.train.write(w)?;
    req.val.write(w)?;
    if let Some(bytes) = &req.warm_start {
        w.write_all(bytes)?;
    }
    w.flush()?;
    Ok(())
}

/// Reads a request; `None` when the input has ended (the client is done).
pub fn read_request(r: &mut impl Read) -> Result<Option<TrainRequest>> {
    let Some(header) = read_frame::<RequestHeader>(r)? else {
        return Ok(None);
    };
    let train = Matrix::read(r, &header.train)?;
    let val = Matrix::read(r, &header.val)?;
    if val.rows > 0 && val.cols != train.cols {
        return Err(WireError::Frame(format!(
            "training rows have {} columns, validation rows {}",
            train.cols, val.cols
        )));
    }
    let warm_start = header
        .warm_start_bytes
        .map(|n| read_bytes(r, n))
        .transpose()?;
    Ok(Some(TrainRequest {
        params: header.params,
        train,
        val,
        warm_start,
    }))
}

/// Writes a reply (and flushes).
pub fn write_reply(w: &mut impl Write, reply: &Reply) -> Result<()> {
    match reply {
        Reply::Trained(t) => {
            write_frame(
                w,
                &ReplyHeader::Trained {
                    training: t.training.clone(),
                    weights_bytes: t.weights.len() as u64,
                },
            )?;
            w.write_all(&t.weights)?;
        }
        Reply::Failed(reason) => write_frame(
            w,
            &ReplyHeader::Failed {
                reason: reason.clone(),
            },
        )?,
    }
    w.flush()?;
    Ok(())
}

/// Reads a reply.
pub fn read_reply(r: &mut impl Read) -> Result<Reply> {
    match read_frame::<ReplyHeader>(r)? {
        None => Err(WireError::Frame(
            "the trainer closed its output without replying".into(),
        )),
        Some(ReplyHeader::Failed { reason }) => Ok(Reply::Failed(reason)),
        Some(ReplyHeader::Trained {
            training,
            weights_bytes,
        }) => Ok(Reply::Trained(Trained {
            weights: read_bytes(r, weights_bytes)?,
            training,
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(rows: usize, cols: usize) -> Matrix {
        Matrix {
            rows,
            cols,
            x: (0..rows * cols).map(|i| i as f32 * 0.5).collect(),
            y: (0..rows).map(|i| -(i as f32)).collect(),
        }
    }

    #[test]
    fn requests_and_replies_round_trip_back_to_back() {
        let a = TrainRequest {
            params: serde_json::json!({"units": 8, "seed": 3}),
            train: matrix(70_000, 3),
            val: matrix(5, 3),
            warm_start: Some(vec![1, 2, 3]),
        };
        let b = TrainRequest {
            val: matrix(0, 0),
            warm_start: None,
            ..a.clone()
        };
        let mut buf = Vec::new();
        write_request(&mut buf, &a).unwrap();
        write_request(&mut buf, &b).unwrap();
        let mut r = buf.as_slice();
        assert_eq!(read_request(&mut r).unwrap(), Some(a));
        assert_eq!(read_request(&mut r).unwrap(), Some(b));
        assert_eq!(read_request(&mut r).unwrap(), None);

        let ok = Reply::Trained(Trained {
            weights: vec![9; 1000],
            training: Training {
                epochs: 4,
                best_epoch: 3,
                best_val_loss: 0.25,
                device: "Cpu".into(),
                rows: 70_000,
            },
        });
        let failed = Reply::Failed("validation loss became NaN".into());
        let mut buf = Vec::new();
        write_reply(&mut buf, &ok).unwrap();
        write_reply(&mut buf, &failed).unwrap();
        let mut r = buf.as_slice();
        assert_eq!(read_reply(&mut r).unwrap(), ok);
        assert_eq!(read_reply(&mut r).unwrap(), failed);
        assert!(read_reply(&mut r).is_err());
    }

    #[test]
    fn malformed_frames_are_errors_not_allocations() {
        let req = TrainRequest {
            params: serde_json::json!({}),
            train: matrix(4, 2),
            val: matrix(0, 0),
            warm_start: None,
        };
        let mut buf = Vec::new();
        write_request(&mut buf, &req).unwrap();
        // Truncated payload.
        assert!(matches!(
            read_request(&mut &buf[..buf.len() - 1]),
            Err(WireError::Io(_))
        ));
        // Another version.
        let mut other = buf.clone();
        other[3] = 2;
        assert!(matches!(
            read_request(&mut other.as_slice()),
            Err(WireError::Frame(_))
        ));
        // A header claiming an absurd matrix fails before allocating it.
        let mut huge = Vec::new();
        write_frame(
            &mut huge,
            &RequestHeader {
                params: serde_json::json!({}),
                train: Shape {
                    rows: usize::MAX / 2,
                    cols: 3,
                },
                val: Shape { rows: 0, cols: 0 },
                warm_start_bytes: None,
            },
        )
        .unwrap();
        assert!(matches!(
            read_request(&mut huge.as_slice()),
            Err(WireError::Frame(_))
        ));
        // Inconsistent matrix on the writing side.
        let bad = TrainRequest {
            train: Matrix {
                rows: 3,
                ..matrix(4, 2)
            },
            ..req
        };
        assert!(write_request(&mut Vec::new(), &bad).is_err());
    }
}
