//! Following the production pointer: where releases come from, and the
//! state a reload swaps without dropping a request.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lineage::{ArtifactStore, Pointer, Releases};
use recommend::{RecommendError, Recommender};
use serde::Serialize;

/// Where the service reads the production pointer and its releases.
pub trait ReleaseSource: Send + Sync + 'static {
    /// Where, in words (`/srv/run`, `s3://bucket/prefix`).
    fn location(&self) -> String;
    /// The production pointer now, if anything was promoted.
    fn pointer(&self) -> Result<Option<Pointer>, lineage::LineageError>;
    /// Loads the release `pointer` names.
    fn load(&self, pointer: &Pointer) -> Result<Recommender, RecommendError>;
}

/// A store read in place (a local directory, or S3 read directly).
pub struct StoreSource {
    store: Box<dyn ArtifactStore>,
}

impl StoreSource {
    /// Reads releases from `store`.
    pub fn new(store: Box<dyn ArtifactStore>) -> Self {
        Self { store }
    }
}

impl ReleaseSource for StoreSource {
    fn location(&self) -> String {
        self.store.location()
    }
    fn pointer(&self) -> Result<Option<Pointer>, lineage::LineageError> {
        Releases::new(self.store.as_ref(), None).production()
    }
    fn load(&self, pointer: &Pointer) -> Result<Recommender, RecommendError> {
        Recommender::load_release(self.store.as_ref(), pointer)
    }
}

/// A release that was refused at reload, and why.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RefusedRelease {
    /// Its id.
    pub release: String,
    /// Why it did not load.
    pub reason: String,
    /// When (seconds since the Unix epoch).
    pub at_unix: u64,
}

/// What one reload check did.
#[derive(Debug, Clone, PartialEq)]
pub enum ReloadOutcome {
    /// The pointer still names the release being served.
    Unchanged,
    /// Swapped to this release.
    Swapped(String),
    /// The pointer names a release that failed to load; the old one serves.
    Refused(RefusedRelease),
    /// The pointer could not be read; the old release serves.
    PointerUnreadable(String),
}

/// The release being served and the reload bookkeeping.
pub(crate) struct Live {
    current: RwLock<Arc<Recommender>>,
    refused: RwLock<Option<RefusedRelease>>,
    last_check_unix: std::sync::atomic::AtomicU64,
    reload: tokio::sync::Mutex<()>,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Live {
    pub(crate) fn new(recommender: Recommender) -> Self {
        Self {
            current: RwLock::new(Arc::new(recommender)),
            refused: RwLock::new(None),
            last_check_unix: std::sync::atomic::AtomicU64::new(now_unix()),
            reload: tokio::sync::Mutex::new(()),
        }
    }

    /// The recommender serving now (requests keep the one they started with).
    pub(crate) fn current(&self) -> Arc<Recommender> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn refused(&self) -> Option<RefusedRelease> {
        self.refused
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn last_check_unix(&self) -> u64 {
        self.last_check_unix
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Reads the pointer and, if it moved, loads the new release off the
    /// async threads and swaps it in. One reload at a time.
    pub(crate) async fn reload(&self, source: &Arc<dyn ReleaseSource>) -> ReloadOutcome {
        let _one = self.reload.lock().await;
        self.last_check_unix
            .store(now_unix(), std::sync::atomic::Ordering::Relaxed);
        let src = source.clone();
        let pointer = match tokio::task::spawn_blocking(move || src.pointer()).await {
            Ok(Ok(Some(p))) => p,
            Ok(Ok(None)) => {
                return ReloadOutcome::PointerUnreadable("the production pointer is gone".into());
            }
            Ok(Err(e)) => return ReloadOutcome::PointerUnreadable(e.to_string()),
            Err(e) => return ReloadOutcome::PointerUnreadable(e.to_string()),
        };
        if pointer.release == self.current().release() {
            // Back on the release being served (a rollback): nothing is refused.
            *self.refused.write().unwrap_or_else(|e| e.into_inner()) = None;
            return ReloadOutcome::Unchanged;
        }
        if let Some(r) = self.refused()
            && r.release == pointer.release
        {
            // Already refused: do not reload it every interval.
            return ReloadOutcome::Refused(r);
        }
        let src = source.clone();
        let p = pointer.clone();
        let loaded = tokio::task::spawn_blocking(move || src.load(&p))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        match loaded {
            Ok(recommender) => {
                let id = recommender.release().to_string();
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(recommender);
                *self.refused.write().unwrap_or_else(|e| e.into_inner()) = None;
                tracing::info!(release = %id, "now serving a new release");
                ReloadOutcome::Swapped(id)
            }
            Err(reason) => {
                let refused = RefusedRelease {
                    release: pointer.release.clone(),
                    reason,
                    at_unix: now_unix(),
                };
                tracing::error!(release = %refused.release, reason = %refused.reason, "new release refused; the old one keeps serving");
                *self.refused.write().unwrap_or_else(|e| e.into_inner()) = Some(refused.clone());
                ReloadOutcome::Refused(refused)
            }
        }
    }
}

/// How often the pointer is checked by default.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(30);
