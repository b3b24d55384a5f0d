//! Data lineage and the artifact store — what DVC did for the Python original.
//!
//! A pipeline is a DAG of [`StageDef`]s. Each declares its dependencies (input
//! files and upstream artifacts), the `params.toml` keys it reads, its outputs
//! and a code version. The [`Runner`] runs a stage only when something it
//! depends on changed, records what it saw in a [`LockFile`] *after* the stage
//! succeeded, and skips it otherwise. Artifacts go to an [`ArtifactStore`]:
//! a local directory ([`LocalStore`]) or S3 ([`S3Store`]).
//!
//! ```
//! use lineage::{ArtifactStore, LocalStore};
//! let dir = tempfile::tempdir().unwrap();
//! let store = LocalStore::new(dir.path()).unwrap();
//! let hash = store.put("etl/metrics.json", b"{}").unwrap();
//! assert_eq!(store.hash("etl/metrics.json").unwrap(), Some(hash));
//! ```

mod keys;
mod lock;
pub mod params;
pub mod release;
pub mod runlock;
mod runner;
mod store;

use std::path::Path;

pub use keys::ArtifactKeys;
pub use lock::{LOCK_KEY, LockFile, StageLock};
pub use params::{ParamSource, Params, closest};
pub use release::{Pointer, PromotionEvent, ReleaseInfo, ReleaseStore, Releases, Verdict};
pub use runlock::{DEFAULT_LEASE, LockHolder, RunLock};
pub use runner::{
    DeclaredInputs, Dep, Reason, Runner, StageDef, StageOutcome, StageReport, StageWriter,
};
pub use store::{
    ArtifactStore, LEASE_KEY, LocalStore, S3Config, S3Store, open_store, validate_key, write_atomic,
};

/// Errors of the lineage crate.
#[derive(Debug, thiserror::Error)]
pub enum LineageError {
    /// A file-system operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory involved.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The key names no object in the store.
    #[error("artifact `{0}` not found")]
    NotFound(String),
    /// The key is not a safe relative path.
    #[error("invalid artifact key `{key}`: {reason}")]
    InvalidKey {
        /// The rejected key.
        key: String,
        /// Why it was rejected.
        reason: String,
    },
    /// An S3 request failed.
    #[error("S3: {0}")]
    S3(String),
    /// The params file or a value in it is invalid.
    #[error("params: {0}")]
    Params(String),
    /// The store or pipeline configuration is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// A lock file could not be parsed.
    #[error("lock file `{key}` is corrupt: {reason}")]
    CorruptLock {
        /// Its key in the store.
        key: String,
        /// The parse error.
        reason: String,
    },
    /// A stage wrote an output it did not declare, or missed one it declared.
    #[error("stage `{stage}`: {reason}")]
    Contract {
        /// The stage.
        stage: String,
        /// What went wrong.
        reason: String,
    },
    /// Another run holds the store's run lock.
    #[error(
        "{location} is in use: {holder} has held its run lock since {since} (one pipeline, retrain, promote, rollback or gc at a time; wait for it to finish)"
    )]
    Locked {
        /// The store.
        location: String,
        /// Who holds the lock.
        holder: String,
        /// Since when.
        since: String,
    },
    /// A release is missing, incomplete, or cannot be used as asked.
    #[error("release {release}: {reason}")]
    Release {
        /// The release id (or pointer key).
        release: String,
        /// What is wrong.
        reason: String,
    },
    /// An artifact does not match the hash recorded for it.
    #[error("`{key}`: {reason}")]
    Integrity {
        /// The store key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The stage's own code failed.
    #[error("stage `{stage}` failed: {source}")]
    Stage {
        /// The stage.
        stage: String,
        /// The stage's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl LineageError {
    /// Wraps an I/O error with the path involved.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = LineageError> = std::result::Result<T, E>;

/// The BLAKE3 hash of `bytes`, as lowercase hex: the content hash used in lock files.
pub fn content_hash(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// The BLAKE3 hash of a file's content, streamed.
pub fn file_hash(path: &Path) -> Result<String> {
    let file = std::fs::File::open(path).map_err(|e| LineageError::io(path, e))?;
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_reader(file)
        .map_err(|e| LineageError::io(path, e))?;
    Ok(hasher.finalize().to_hex().to_string())
}
