//! The run lock: one pipeline, retrain, promote, rollback or gc per store at
//! a time.
//!
//! - On a local store it is an exclusive `flock` on `<root>/.run.lock`,
//!   unlocked when the run ends; the kernel releases it when the holder
//!   exits, however it exits.
//! - On S3 it is a lease object (`locks/run.json`) created with a conditional
//!   put (`If-None-Match: *`) and an expiry; the holder renews it every third
//!   of its lifetime with `If-Match` on the lease's ETag. A crashed holder
//!   stops renewing, and the next run takes the expired lease over (again
//!   with `If-Match`, so two runs cannot both take it).
//!
//! The second run fails at once with [`LineageError::Locked`], naming the
//! holder and since when.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Who holds (or wants) the run lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    /// What is running (`cargo xtask pipeline`, `promote`, ...).
    pub command: String,
    /// Its process id.
    pub pid: u32,
    /// The machine it runs on.
    pub host: String,
    /// When it took the lock (seconds since the Unix epoch).
    pub since_unix: u64,
    /// A random token telling this holder apart from a later one.
    pub token: String,
    /// S3 leases: when the lease lapses unless renewed (milliseconds since
    /// the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_unix_ms: Option<u64>,
}

impl LockHolder {
    /// This process, running `command`, from now.
    pub fn current(command: &str) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unknown host".into());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let token = crate::content_hash(
            format!("{host}:{}:{}:{command}", std::process::id(), now.as_nanos()).as_bytes(),
        )[..16]
            .to_string();
        Self {
            command: command.to_string(),
            pid: std::process::id(),
            host,
            since_unix: now.as_secs(),
            token,
            expires_at_unix_ms: None,
        }
    }

    /// `` `cargo xtask pipeline` (pid 4242 on host) ``.
    pub fn describe(&self) -> String {
        format!("`{}` (pid {} on {})", self.command, self.pid, self.host)
    }
}

/// A UTC timestamp as `2026-11-27 15:04:05 UTC`.
pub fn format_unix(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .map_or_else(
            || format!("{secs} s after the epoch"),
            |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        )
}

pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Default lifetime of an S3 lease; it is renewed every third of it.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(15 * 60);

/// What releases the lock when dropped.
pub(crate) trait Release: Send {}

/// A held run lock; dropping it releases the lock.
pub struct RunLock {
    holder: LockHolder,
    _guard: Box<dyn Release>,
}

impl std::fmt::Debug for RunLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunLock")
            .field("holder", &self.holder)
            .finish()
    }
}

impl RunLock {
    pub(crate) fn new(holder: LockHolder, guard: Box<dyn Release>) -> Self {
        Self {
            holder,
            _guard: guard,
        }
    }

    /// Who holds it (this process).
    pub fn holder(&self) -> &LockHolder {
        &self.holder
    }
}

/// The local lock: the open, `flock`ed file.
///
/// Dropping it unlocks the file before closing it. Closing alone is not
/// enough: a `flock` belongs to the open file, and a process spawned while the
/// lock was held (the MLP trainer, in the instant between its fork and its
/// `exec` closing inherited descriptors) shares that open file. The lock
/// would then outlive the run that took it. If the holder dies instead, the
/// kernel releases the lock when the last copy closes.
pub(crate) struct LocalLock(pub(crate) std::fs::File);

impl Release for LocalLock {}

impl Drop for LocalLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}
