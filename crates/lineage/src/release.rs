//! Releases: immutable sets of serving artifacts, and the production pointer.
//!
//! Everything serving reads (product summary, contexts, preprocessor, feature
//! names, the model manifest, every model file) and the gate's verdict and
//! report are copied into a **release** under `releases/<id>/`, keeping the
//! pipeline's own key layout (`releases/<id>/models/manifest.json`, ...).
//! The id is content-derived (BLAKE3 of the scope and every file's key and
//! hash), so the same content is the same release, and a release is never
//! modified once its `release.json` is written (that file is written last:
//! a release without it is incomplete and is never listed or promoted).
//!
//! **Production** is one small pointer object (`production.json`, or
//! `production@CODE.json` for one product's models) naming a release and the
//! hash of every file in it. It is written atomically, only by
//! [`Releases::promote`]: by the promotion gate when a candidate passes (or is
//! explicitly overridden), or by a person (`cargo xtask promote`/`rollback`).
//! Every move is recorded as an immutable event under `promotions/`.
//! A failed, killed or blocked run therefore never changes what production
//! serves: it can only add a release.
//!
//! ```
//! use lineage::{ArtifactStore, LocalStore, Releases, Verdict};
//! let dir = tempfile::tempdir().unwrap();
//! let store = LocalStore::new(dir.path()).unwrap();
//! let releases = Releases::new(&store, None);
//! let files = vec![("models/manifest.json".to_string(), b"{}".to_vec())];
//! let release = releases.create(&files, "pipeline", Verdict::passed(), serde_json::json!({})).unwrap();
//! assert!(releases.production().unwrap().is_none());
//! let pointer = releases.promote(&release.id, "gate", "gate passed").unwrap();
//! assert_eq!(releases.open(&pointer).get("models/manifest.json").unwrap(), b"{}");
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::runlock::{now_unix, now_unix_ms};
use crate::{ArtifactStore, LineageError, Result, content_hash};

/// Where releases live in the store.
pub const RELEASES_PREFIX: &str = "releases/";
/// Where promotion events live in the store.
pub const PROMOTIONS_PREFIX: &str = "promotions/";
/// A release's metadata file, written last.
const RELEASE_INFO: &str = "release.json";

/// The gate's verdict on a release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// Drift and fairness passed.
    pub passed: bool,
    /// It failed, and was promoted anyway by an explicit override.
    pub overridden: bool,
    /// Why it failed (empty when it passed).
    pub failures: Vec<String>,
}

impl Verdict {
    /// A verdict that passed.
    pub fn passed() -> Self {
        Self {
            passed: true,
            overridden: false,
            failures: Vec::new(),
        }
    }

    /// Whether the gate let it through (passed, or overridden).
    pub fn promotable(&self) -> bool {
        self.passed || self.overridden
    }

    /// `passed`, `overridden` or `blocked`.
    pub fn label(&self) -> &'static str {
        match (self.passed, self.overridden) {
            (true, _) => "passed",
            (false, true) => "overridden",
            (false, false) => "blocked",
        }
    }
}

/// A release's metadata (`releases/<id>/release.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseInfo {
    /// Format version.
    pub version: u32,
    /// Content-derived id (16 hex digits).
    pub id: String,
    /// `None` for the all-products models, else the stock code.
    pub scope: Option<String>,
    /// When it was written (seconds since the Unix epoch).
    pub created_at_unix: u64,
    /// The same in milliseconds: orders releases written within one second
    /// (absent, 0, in releases written before it existed).
    #[serde(default)]
    pub created_at_unix_ms: u64,
    /// What made it (`pipeline`, `retrain`).
    pub source: String,
    /// The gate's verdict.
    pub verdict: Verdict,
    /// Figures worth listing (models, their test metrics, the model version).
    pub summary: serde_json::Value,
    /// Key inside the release → BLAKE3 of its content.
    pub files: BTreeMap<String, String>,
}

impl ReleaseInfo {
    /// Creation time in milliseconds (second resolution for releases
    /// written before milliseconds were recorded).
    pub fn created_ms(&self) -> u64 {
        if self.created_at_unix_ms > 0 {
            self.created_at_unix_ms
        } else {
            self.created_at_unix.saturating_mul(1000)
        }
    }
}

/// The production pointer: which release serves, with the hash of each file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pointer {
    /// Format version.
    pub version: u32,
    /// The release that serves.
    pub release: String,
    /// Key inside the release → BLAKE3 of its content.
    pub files: BTreeMap<String, String>,
    /// When it was moved here.
    pub promoted_at_unix: u64,
    /// Who moved it (`gate`, `promote`, `rollback`).
    pub actor: String,
    /// Why.
    pub reason: String,
    /// The release that served before (what `rollback` returns to).
    pub previous: Option<String>,
}

impl Pointer {
    /// Parses a pointer object.
    pub fn from_json(bytes: &[u8], key: &str) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| LineageError::Release {
            release: key.to_string(),
            reason: format!("the production pointer is not valid: {e}"),
        })
    }
}

/// One move of the production pointer (`promotions/<millis>-<id>.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromotionEvent {
    /// When (milliseconds since the Unix epoch).
    pub at_unix_ms: u64,
    /// `None` for the all-products pointer, else the stock code.
    pub scope: Option<String>,
    /// The release that served before.
    pub from: Option<String>,
    /// The release that serves now.
    pub to: String,
    /// Who (`gate`, `promote`, `rollback`).
    pub actor: String,
    /// Why.
    pub reason: String,
}

/// The releases and production pointer of one scope (all products, or one
/// stock code) in a store.
pub struct Releases<'a> {
    store: &'a dyn ArtifactStore,
    scope: Option<String>,
}

impl<'a> Releases<'a> {
    /// The releases of `scope` (`None`: the all-products models).
    pub fn new(store: &'a dyn ArtifactStore, scope: Option<&str>) -> Self {
        Self {
            store,
            scope: scope.map(str::to_string),
        }
    }

    /// The key of this scope's production pointer.
    pub fn pointer_key(&self) -> String {
        match &self.scope {
            None => "production.json".into(),
            Some(code) => format!("production@{code}.json"),
        }
    }

    /// The store key of `key` inside release `id`.
    pub fn key_in(id: &str, key: &str) -> String {
        format!("{RELEASES_PREFIX}{id}/{key}")
    }

    /// The id `files` would get in this scope.
    pub fn id_of(&self, files: &BTreeMap<String, String>) -> String {
        let canonical = serde_json::json!({ "scope": self.scope, "files": files });
        content_hash(canonical.to_string().as_bytes())[..16].to_string()
    }

    /// Writes a release (idempotent: the same files give the same id, and an
    /// existing complete release is returned untouched, never rewritten).
    /// The files go first, `release.json` last.
    pub fn create(
        &self,
        files: &[(String, Vec<u8>)],
        source: &str,
        verdict: Verdict,
        summary: serde_json::Value,
    ) -> Result<ReleaseInfo> {
        let mut hashes = BTreeMap::new();
        for (key, bytes) in files {
            crate::validate_key(key)?;
            if key == RELEASE_INFO {
                return Err(LineageError::InvalidKey {
                    key: key.clone(),
                    reason: "reserved for the release's metadata".into(),
                });
            }
            hashes.insert(key.clone(), content_hash(bytes));
        }
        let id = self.id_of(&hashes);
        if let Ok(existing) = self.info(&id) {
            return Ok(existing);
        }
        for (key, bytes) in files {
            self.store.put(&Self::key_in(&id, key), bytes)?;
        }
        let created_ms = now_unix_ms();
        let info = ReleaseInfo {
            version: 1,
            id: id.clone(),
            scope: self.scope.clone(),
            created_at_unix: created_ms / 1000,
            created_at_unix_ms: created_ms,
            source: source.to_string(),
            verdict,
            summary,
            files: hashes,
        };
        self.store
            .put(&Self::key_in(&id, RELEASE_INFO), &pretty(&info)?)?;
        tracing::info!(release = %id, files = files.len(), "release written");
        Ok(info)
    }

    /// A complete release's metadata.
    pub fn info(&self, id: &str) -> Result<ReleaseInfo> {
        check_id(id)?;
        let key = Self::key_in(id, RELEASE_INFO);
        let bytes = match self.store.get(&key) {
            Ok(b) => b,
            Err(LineageError::NotFound(_)) => {
                return Err(LineageError::Release {
                    release: id.to_string(),
                    reason: "no such release (or it was never completed)".into(),
                });
            }
            Err(e) => return Err(e),
        };
        serde_json::from_slice(&bytes).map_err(|e| LineageError::Release {
            release: id.to_string(),
            reason: format!("`{key}` is not valid: {e}"),
        })
    }

    /// Every complete release of this scope, oldest first.
    pub fn list(&self) -> Result<Vec<ReleaseInfo>> {
        let mut out = Vec::new();
        for id in self.ids()? {
            match self.info(&id) {
                Ok(info) if info.scope == self.scope => out.push(info),
                Ok(_) => {}
                Err(LineageError::Release { .. }) => {} // incomplete
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| (a.created_ms(), &a.id).cmp(&(b.created_ms(), &b.id)));
        Ok(out)
    }

    /// Ids of every release directory, complete or not, of any scope.
    fn ids(&self) -> Result<Vec<String>> {
        let mut ids: Vec<String> = self
            .store
            .list(RELEASES_PREFIX)?
            .iter()
            .filter_map(|k| k.strip_prefix(RELEASES_PREFIX)?.split('/').next())
            .map(str::to_string)
            .collect();
        ids.dedup();
        Ok(ids)
    }

    /// The production pointer, if anything was ever promoted.
    pub fn production(&self) -> Result<Option<Pointer>> {
        let key = self.pointer_key();
        match self.store.get(&key) {
            Ok(bytes) => Pointer::from_json(&bytes, &key).map(Some),
            Err(LineageError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Checks that every file of a release is present with its recorded hash.
    pub fn verify(&self, info: &ReleaseInfo) -> Result<()> {
        for (key, hash) in &info.files {
            let full = Self::key_in(&info.id, key);
            match self.store.hash(&full)? {
                Some(h) if &h == hash => {}
                Some(_) => {
                    return Err(LineageError::Integrity {
                        key: full,
                        reason: "content does not match the release's recorded hash".into(),
                    });
                }
                None => {
                    return Err(LineageError::Integrity {
                        key: full,
                        reason: "missing".into(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Moves production to release `id` (complete and verified first), and
    /// records the move. Promoting the release already in production changes
    /// nothing.
    pub fn promote(&self, id: &str, actor: &str, reason: &str) -> Result<Pointer> {
        let info = self.info(id)?;
        if info.scope != self.scope {
            return Err(LineageError::Release {
                release: id.to_string(),
                reason: format!(
                    "belongs to scope {:?}, not {:?}",
                    info.scope.as_deref().unwrap_or("all products"),
                    self.scope.as_deref().unwrap_or("all products")
                ),
            });
        }
        self.verify(&info)?;
        let current = self.production()?;
        if let Some(p) = &current
            && p.release == id
        {
            return Ok(p.clone());
        }
        let pointer = Pointer {
            version: 1,
            release: id.to_string(),
            files: info.files.clone(),
            promoted_at_unix: now_unix(),
            actor: actor.to_string(),
            reason: reason.to_string(),
            previous: current.map(|p| p.release),
        };
        let at_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let event = PromotionEvent {
            at_unix_ms,
            scope: self.scope.clone(),
            from: pointer.previous.clone(),
            to: id.to_string(),
            actor: actor.to_string(),
            reason: reason.to_string(),
        };
        // The pointer is the switch; the event is its record.
        self.store.put(&self.pointer_key(), &pretty(&pointer)?)?;
        self.store.put(
            &format!("{PROMOTIONS_PREFIX}{at_unix_ms:013}-{id}.json"),
            &pretty(&event)?,
        )?;
        tracing::info!(release = %id, %actor, %reason, "production moved");
        Ok(pointer)
    }

    /// Moves production back to the release that served before the current
    /// one.
    pub fn rollback(&self, reason: &str) -> Result<Pointer> {
        let current = self.production()?.ok_or_else(|| LineageError::Release {
            release: self.pointer_key(),
            reason: "nothing is in production, so there is nothing to roll back".into(),
        })?;
        let previous = current.previous.ok_or_else(|| LineageError::Release {
            release: current.release.clone(),
            reason: "it is the first release ever promoted: there is no earlier one".into(),
        })?;
        self.promote(&previous, "rollback", reason)
    }

    /// Every move of this scope's pointer, oldest first.
    pub fn history(&self) -> Result<Vec<PromotionEvent>> {
        let mut out = Vec::new();
        for key in self.store.list(PROMOTIONS_PREFIX)? {
            let event: PromotionEvent =
                serde_json::from_slice(&self.store.get(&key)?).map_err(|e| {
                    LineageError::Release {
                        release: key.clone(),
                        reason: format!("unreadable promotion record: {e}"),
                    }
                })?;
            if event.scope == self.scope {
                out.push(event);
            }
        }
        Ok(out)
    }

    /// Removes releases of this scope beyond the `keep` newest, never the
    /// production release or its predecessor, and removes incomplete release
    /// directories (left by killed runs). Returns the ids removed. The caller
    /// holds the run lock, so no run is writing a release meanwhile.
    pub fn gc(&self, keep: usize) -> Result<Vec<String>> {
        let complete = self.list()?;
        let mut protected: Vec<String> = Vec::new();
        if let Some(p) = self.production()? {
            protected.push(p.release.clone());
            protected.extend(p.previous);
        }
        let newest: Vec<&str> = complete
            .iter()
            .rev()
            .take(keep)
            .map(|r| r.id.as_str())
            .collect();
        let mut removed = Vec::new();
        for id in self.ids()? {
            let doomed = match self.info(&id) {
                Ok(info) => {
                    info.scope == self.scope
                        && !protected.contains(&id)
                        && !newest.contains(&id.as_str())
                }
                Err(LineageError::Release { .. }) => true, // incomplete
                Err(e) => return Err(e),
            };
            if doomed {
                let prefix = format!("{RELEASES_PREFIX}{id}/");
                let keys = self.store.list(&prefix)?;
                // Metadata first: a half-removed release is incomplete, not corrupt.
                if let Some(meta) = keys.iter().find(|k| k.ends_with(RELEASE_INFO)) {
                    self.store.delete(meta)?;
                }
                for key in keys {
                    self.store.delete(&key)?;
                }
                removed.push(id);
            }
        }
        Ok(removed)
    }

    /// A read-only view of the release `pointer` names: the pipeline's key
    /// layout, every read checked against the pointer's hashes.
    pub fn open(&self, pointer: &Pointer) -> ReleaseStore<'a> {
        ReleaseStore {
            store: self.store,
            id: pointer.release.clone(),
            files: pointer.files.clone(),
        }
    }
}

fn check_id(id: &str) -> Result<()> {
    if id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(LineageError::Release {
            release: id.chars().take(40).collect(),
            reason: "a release id is 16 hex digits (see `cargo xtask releases`)".into(),
        })
    }
}

fn pretty<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| LineageError::Release {
        release: String::new(),
        reason: format!("cannot serialise: {e}"),
    })?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// One release, read-only, in the pipeline's key layout. Only the files the
/// pointer lists can be read, and each read is checked against its hash, so a
/// corrupted, truncated or replaced file is an error, never a silent mix.
pub struct ReleaseStore<'a> {
    store: &'a dyn ArtifactStore,
    id: String,
    files: BTreeMap<String, String>,
}

impl ReleaseStore<'_> {
    /// The release's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn recorded(&self, key: &str) -> Result<&String> {
        self.files
            .get(key)
            .ok_or_else(|| LineageError::NotFound(format!("{key} (not in release {})", self.id)))
    }
}

impl ArtifactStore for ReleaseStore<'_> {
    fn location(&self) -> String {
        format!("{}/{RELEASES_PREFIX}{}", self.store.location(), self.id)
    }

    fn put(&self, key: &str, _bytes: &[u8]) -> Result<String> {
        Err(LineageError::Release {
            release: self.id.clone(),
            reason: format!("releases are immutable: cannot write `{key}`"),
        })
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        let expected = self.recorded(key)?;
        let full = Releases::key_in(&self.id, key);
        let bytes = self.store.get(&full)?;
        if &content_hash(&bytes) != expected {
            return Err(LineageError::Integrity {
                key: full,
                reason: format!(
                    "content ({} bytes) does not match the production pointer's hash",
                    bytes.len()
                ),
            });
        }
        Ok(bytes)
    }

    fn hash(&self, key: &str) -> Result<Option<String>> {
        Ok(self.files.get(key).cloned())
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .files
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect())
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.put(key, &[]).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LocalStore;

    #[test]
    fn releases_written_within_one_second_list_in_creation_order() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| LineageError::io("tempdir", e))?;
        let store = LocalStore::new(dir.path())?;
        let releases = Releases::new(&store, None);
        let mut created = Vec::new();
        for i in 0..6 {
            let files = vec![("a.json".to_string(), format!("{i}").into_bytes())];
            let info = releases.create(&files, "test", Verdict::passed(), serde_json::json!({}))?;
            created.push(info.id);
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let listed: Vec<String> = releases.list()?.into_iter().map(|r| r.id).collect();
        assert_eq!(listed, created);
        Ok(())
    }
}
