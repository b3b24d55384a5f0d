//! The lock file: what each stage saw the last time it succeeded.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{ArtifactStore, LineageError, Result};

/// Key of the lock file in the store (like `dvc.lock`).
pub const LOCK_KEY: &str = "pipeline.lock.json";

/// What one stage saw when it last succeeded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageLock {
    /// The code version of the stage implementation.
    pub code_version: String,
    /// Dependency name → content hash.
    pub deps: BTreeMap<String, String>,
    /// Param key → value read.
    pub params: BTreeMap<String, serde_json::Value>,
    /// Output key → content hash.
    pub outs: BTreeMap<String, String>,
    /// Wall time of the successful run, in milliseconds.
    pub duration_ms: u64,
    /// When the run finished, in seconds since the Unix epoch.
    pub completed_at_unix: u64,
}

/// The whole lock file: one entry per stage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LockFile {
    /// Format version.
    pub version: u32,
    /// Stage name → what it saw.
    pub stages: BTreeMap<String, StageLock>,
}

impl LockFile {
    /// Reads the lock from the store; an absent lock is empty.
    pub fn load(store: &dyn ArtifactStore) -> Result<Self> {
        match store.get(LOCK_KEY) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| LineageError::CorruptLock {
                key: LOCK_KEY.into(),
                reason: e.to_string(),
            }),
            Err(LineageError::NotFound(_)) => Ok(Self {
                version: 1,
                stages: BTreeMap::new(),
            }),
            Err(e) => Err(e),
        }
    }

    /// Writes the lock atomically.
    pub fn save(&self, store: &dyn ArtifactStore) -> Result<()> {
        let mut bytes = serde_json::to_vec_pretty(self).map_err(|e| LineageError::CorruptLock {
            key: LOCK_KEY.into(),
            reason: e.to_string(),
        })?;
        bytes.push(b'\n');
        store.put(LOCK_KEY, &bytes)?;
        Ok(())
    }
}
