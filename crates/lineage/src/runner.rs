//! Stage definitions, staleness checks and the runner that skips or runs stages.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::{ArtifactStore, LineageError, LockFile, Params, Result, StageLock, file_hash};

/// Something a stage reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dep {
    /// A file outside the store (the raw transactions export), hashed by content.
    File {
        /// The name recorded in the lock (`raw`).
        name: String,
        /// Where it is.
        path: PathBuf,
    },
    /// An artifact in the store written by an upstream stage.
    Artifact(String),
}

impl Dep {
    /// The name this dependency has in the lock file.
    pub fn name(&self) -> &str {
        match self {
            Dep::File { name, .. } => name,
            Dep::Artifact(key) => key,
        }
    }
}

/// A stage of the pipeline: what it reads and writes.
#[derive(Debug, Clone)]
pub struct StageDef {
    /// Unique name in the lock (`features` or `features@85123A`).
    pub name: String,
    /// Files and upstream artifacts it reads.
    pub deps: Vec<Dep>,
    /// Dotted `params.toml` keys it reads.
    pub params: Vec<String>,
    /// Keys it writes (its metrics file is added by the runner).
    pub outs: Vec<String>,
    /// Version of the code that implements it (crate version + source hash).
    pub code_version: String,
}

impl StageDef {
    /// Key of this stage's metrics JSON.
    pub fn metrics_key(&self) -> String {
        format!("metrics/{}.json", self.name.replace('@', "="))
    }

    fn all_outs(&self) -> Vec<String> {
        let mut outs = self.outs.clone();
        outs.push(self.metrics_key());
        outs
    }
}

/// Why a stage has to run.
#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    /// No successful run is recorded.
    NeverRun,
    /// `--force`.
    Forced,
    /// The stage's code changed.
    CodeChanged {
        /// Recorded version.
        old: String,
        /// Current version.
        new: String,
    },
    /// A dependency's content changed.
    DepChanged(String),
    /// A dependency does not exist (yet).
    DepMissing(String),
    /// A param value changed.
    ParamChanged {
        /// The dotted key.
        key: String,
        /// Recorded value.
        old: serde_json::Value,
        /// Current value.
        new: serde_json::Value,
    },
    /// An output is gone.
    OutMissing(String),
    /// An output's content differs from what the stage wrote.
    OutModified(String),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NeverRun => write!(f, "never run"),
            Reason::Forced => write!(f, "forced"),
            Reason::CodeChanged { old, new } => write!(f, "code changed ({old} -> {new})"),
            Reason::DepChanged(d) => write!(f, "dependency changed: {d}"),
            Reason::DepMissing(d) => write!(f, "dependency missing: {d}"),
            Reason::ParamChanged { key, old, new } => {
                write!(f, "param changed: {key} ({old} -> {new})")
            }
            Reason::OutMissing(o) => write!(f, "output missing: {o}"),
            Reason::OutModified(o) => write!(f, "output modified: {o}"),
        }
    }
}

/// What a stage reports when it succeeds; saved as its metrics JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageReport {
    /// Rows read.
    pub rows_in: u64,
    /// Rows written (main output).
    pub rows_out: u64,
    /// Stage-specific metrics (counts, shares, scores).
    pub metrics: serde_json::Value,
}

/// The result of asking the runner for a stage.
#[derive(Debug, Clone)]
pub struct StageOutcome {
    /// The stage's name.
    pub name: String,
    /// Whether it ran (`false`: skipped, up to date).
    pub ran: bool,
    /// Why it ran (empty when skipped).
    pub reasons: Vec<Reason>,
    /// Its report (read back from its metrics file when skipped).
    pub report: StageReport,
    /// Time spent here (check + run).
    pub elapsed: Duration,
}

/// Artifacts' decoded values, by key, with the content hash of the bytes
/// each was written as.
type Handoff = BTreeMap<String, (String, Box<dyn Any + Send>)>;

/// Handed to a running stage: reads artifacts, writes declared outputs.
pub struct StageWriter<'a> {
    store: &'a dyn ArtifactStore,
    def: &'a StageDef,
    written: BTreeMap<String, String>,
    /// What the stage run before this one handed on, limited to this
    /// stage's deps whose content is still what was handed on.
    received: Handoff,
    /// What this stage hands on to the next one.
    handed: Handoff,
}

impl<'a> StageWriter<'a> {
    /// Reads one of the stage's declared artifact deps; any other key is a
    /// contract error (so a stage cannot depend on what the lock does not
    /// record).
    pub fn get(&self, key: &str) -> Result<Vec<u8>> {
        self.inputs().get(key)
    }

    /// A read-only store of the stage's declared artifact deps, for code that
    /// reads through an [`ArtifactStore`] (a model loader, say).
    pub fn inputs(&self) -> DeclaredInputs<'a> {
        DeclaredInputs {
            store: self.store,
            def: self.def,
        }
    }

    /// The releases of `scope` in this store. Writing a release (content-
    /// addressed, immutable) and moving the production pointer are the only
    /// writes a stage makes outside its declared outputs; they go through
    /// [`crate::Releases`] and nowhere else.
    pub fn releases(&self, scope: Option<&str>) -> crate::Releases<'a> {
        crate::Releases::new(self.store, scope)
    }

    /// Writes one of the stage's declared outputs, atomically.
    pub fn put(&mut self, key: &str, bytes: &[u8]) -> Result<()> {
        self.check_declared(key)?;
        let hash = self.store.put(key, bytes)?;
        self.written.insert(key.to_string(), hash);
        Ok(())
    }

    /// [`StageWriter::put`], also handing `value`, what `bytes` decode to,
    /// to the next stage this runner runs, so that stage need not decode
    /// the artifact again ([`StageWriter::take_decoded`]). The value lives
    /// until that stage ends, or until a stage is skipped; the caller
    /// answers for `value` being exactly what decoding `bytes` gives.
    pub fn put_decoded<T: Any + Send>(&mut self, key: &str, bytes: &[u8], value: T) -> Result<()> {
        self.put(key, bytes)?;
        if let Some(hash) = self.written.get(key) {
            self.handed
                .insert(key.to_string(), (hash.clone(), Box::new(value)));
        }
        Ok(())
    }

    /// The decoded value of the declared dep `key` if the stage run just
    /// before this one handed it on ([`StageWriter::put_decoded`]) as a
    /// `T` and the artifact's content is still what it wrote (the hash
    /// this run recorded for the dep); `None` otherwise, when the stage
    /// decodes what [`StageWriter::get`] reads. Reading an undeclared key is
    /// a contract error either way.
    pub fn take_decoded<T: Any>(&mut self, key: &str) -> Result<Option<T>> {
        self.inputs().check(key)?;
        Ok(self
            .received
            .remove(key)
            .and_then(|(_, value)| value.downcast::<T>().ok())
            .map(|value| *value))
    }

    /// Declares that one of the stage's outputs stays as it is in the store
    /// (counts as written, with its current hash, without rewriting it).
    pub fn keep(&mut self, key: &str) -> Result<()> {
        self.check_declared(key)?;
        let hash = self
            .store
            .hash(key)?
            .ok_or_else(|| LineageError::NotFound(key.to_string()))?;
        self.written.insert(key.to_string(), hash);
        Ok(())
    }

    fn check_declared(&self, key: &str) -> Result<()> {
        if self.def.outs.iter().any(|o| o == key) {
            Ok(())
        } else {
            Err(LineageError::Contract {
                stage: self.def.name.clone(),
                reason: format!("wrote `{key}`, which is not a declared output"),
            })
        }
    }
}

/// The declared artifact deps of a running stage, as a read-only store.
pub struct DeclaredInputs<'a> {
    store: &'a dyn ArtifactStore,
    def: &'a StageDef,
}

impl DeclaredInputs<'_> {
    fn check(&self, key: &str) -> Result<()> {
        if self
            .def
            .deps
            .iter()
            .any(|d| matches!(d, Dep::Artifact(k) if k == key))
        {
            Ok(())
        } else {
            Err(LineageError::Contract {
                stage: self.def.name.clone(),
                reason: format!("read `{key}`, which is not a declared dependency"),
            })
        }
    }

    fn read_only(&self, key: &str) -> LineageError {
        LineageError::Contract {
            stage: self.def.name.clone(),
            reason: format!("tried to change its input `{key}`"),
        }
    }
}

impl ArtifactStore for DeclaredInputs<'_> {
    fn location(&self) -> String {
        self.store.location()
    }
    fn put(&self, key: &str, _bytes: &[u8]) -> Result<String> {
        Err(self.read_only(key))
    }
    fn get(&self, key: &str) -> Result<Vec<u8>> {
        self.check(key)?;
        self.store.get(key)
    }
    fn hash(&self, key: &str) -> Result<Option<String>> {
        self.check(key)?;
        self.store.hash(key)
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .def
            .deps
            .iter()
            .filter_map(|d| match d {
                Dep::Artifact(k) if k.starts_with(prefix) => Some(k.clone()),
                _ => None,
            })
            .collect())
    }
    fn delete(&self, key: &str) -> Result<()> {
        Err(self.read_only(key))
    }
}

/// Runs stages, skipping those whose deps, params, code and outputs are unchanged.
pub struct Runner<'a> {
    store: &'a dyn ArtifactStore,
    params: &'a Params,
    lock: LockFile,
    force: bool,
    /// What the last stage run handed on ([`StageWriter::put_decoded`]).
    handoff: Handoff,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl<'a> Runner<'a> {
    /// Loads the lock from the store.
    pub fn new(store: &'a dyn ArtifactStore, params: &'a Params, force: bool) -> Result<Self> {
        Ok(Self {
            store,
            params,
            lock: LockFile::load(store)?,
            force,
            handoff: Handoff::new(),
        })
    }

    /// The lock as it stands (updated after each successful stage).
    pub fn lock(&self) -> &LockFile {
        &self.lock
    }

    fn dep_hashes(&self, def: &StageDef) -> Result<(BTreeMap<String, String>, Vec<Reason>)> {
        let mut hashes = BTreeMap::new();
        let mut missing = Vec::new();
        for dep in &def.deps {
            let hash = match dep {
                Dep::File { path, .. } => {
                    if path.exists() {
                        Some(file_hash(path)?)
                    } else {
                        None
                    }
                }
                Dep::Artifact(key) => self.store.hash(key)?,
            };
            match hash {
                Some(h) => {
                    hashes.insert(dep.name().to_string(), h);
                }
                None => missing.push(Reason::DepMissing(dep.name().to_string())),
            }
        }
        Ok((hashes, missing))
    }

    /// Why `def` must run; empty when it is up to date.
    pub fn check(&self, def: &StageDef) -> Result<Vec<Reason>> {
        Ok(self.check_with_deps(def)?.0)
    }

    /// [`Runner::check`], also returning the dependency hashes it computed
    /// (so a run records them without hashing the inputs again).
    fn check_with_deps(&self, def: &StageDef) -> Result<(Vec<Reason>, BTreeMap<String, String>)> {
        let (deps, mut reasons) = self.dep_hashes(def)?;
        let Some(locked) = self.lock.stages.get(&def.name) else {
            reasons.insert(0, Reason::NeverRun);
            return Ok((reasons, deps));
        };
        if locked.code_version != def.code_version {
            reasons.push(Reason::CodeChanged {
                old: locked.code_version.clone(),
                new: def.code_version.clone(),
            });
        }
        for (name, hash) in &deps {
            if locked.deps.get(name) != Some(hash) {
                reasons.push(Reason::DepChanged(name.clone()));
            }
        }
        for (key, value) in self.params.snapshot(&def.params) {
            let old = locked
                .params
                .get(&key)
                .cloned()
                .unwrap_or(serde_json::Value::Null);
            if old != value {
                reasons.push(Reason::ParamChanged {
                    key,
                    old,
                    new: value,
                });
            }
        }
        for out in def.all_outs() {
            match (self.store.hash(&out)?, locked.outs.get(&out)) {
                (None, _) => reasons.push(Reason::OutMissing(out)),
                (Some(h), Some(l)) if &h == l => {}
                (Some(_), _) => reasons.push(Reason::OutModified(out)),
            }
        }
        Ok((reasons, deps))
    }

    /// Runs `stage` if it is stale (or forced) and records it in the lock.
    ///
    /// The lock is written only after the stage returned `Ok` and every declared
    /// output was written; a failing stage leaves the lock as it was.
    pub fn run<E>(
        &mut self,
        def: &StageDef,
        stage: impl FnOnce(&mut StageWriter<'_>) -> std::result::Result<StageReport, E>,
    ) -> Result<StageOutcome>
    where
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = Instant::now();
        // A handed-on value reaches the next stage run or none: a skipped
        // stage, a failing one or one that does not read it drops it.
        let mut received = std::mem::take(&mut self.handoff);
        let (mut reasons, deps) = self.check_with_deps(def)?;
        if self.force && reasons.is_empty() {
            reasons.push(Reason::Forced);
        }
        if reasons.is_empty() {
            let report = match self.store.get(&def.metrics_key()) {
                Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
                Err(_) => StageReport::default(),
            };
            tracing::info!(stage = %def.name, "up to date, skipped");
            return Ok(StageOutcome {
                name: def.name.clone(),
                ran: false,
                reasons,
                report,
                elapsed: started.elapsed(),
            });
        }
        if let Some(missing) = reasons.iter().find_map(|r| match r {
            Reason::DepMissing(d) => Some(d.clone()),
            _ => None,
        }) {
            return Err(LineageError::Contract {
                stage: def.name.clone(),
                reason: format!("dependency `{missing}` does not exist"),
            });
        }
        for r in &reasons {
            tracing::info!(stage = %def.name, reason = %r, "will run");
        }
        received.retain(|key, (hash, _)| deps.get(key) == Some(hash));
        let mut writer = StageWriter {
            store: self.store,
            def,
            written: BTreeMap::new(),
            received,
            handed: Handoff::new(),
        };
        let report = stage(&mut writer).map_err(|e| LineageError::Stage {
            stage: def.name.clone(),
            source: e.into(),
        })?;
        let mut metrics =
            serde_json::to_vec_pretty(&report).map_err(|e| LineageError::Contract {
                stage: def.name.clone(),
                reason: format!("metrics are not serialisable: {e}"),
            })?;
        metrics.push(b'\n');
        let metrics_hash = self.store.put(&def.metrics_key(), &metrics)?;
        drop(std::mem::take(&mut writer.received));
        let mut outs = std::mem::take(&mut writer.written);
        outs.insert(def.metrics_key(), metrics_hash);
        if let Some(missing) = def.outs.iter().find(|o| !outs.contains_key(*o)) {
            return Err(LineageError::Contract {
                stage: def.name.clone(),
                reason: format!("declared output `{missing}` was not written"),
            });
        }
        let elapsed = started.elapsed();
        self.lock.stages.insert(
            def.name.clone(),
            StageLock {
                code_version: def.code_version.clone(),
                deps,
                params: self.params.snapshot(&def.params),
                outs,
                duration_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
                completed_at_unix: now_unix(),
            },
        );
        self.lock.version = 1;
        self.lock.save(self.store)?;
        self.handoff = writer.handed;
        Ok(StageOutcome {
            name: def.name.clone(),
            ran: true,
            reasons,
            report,
            elapsed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LocalStore;

    fn def(name: &str, deps: &[&str], outs: &[&str]) -> StageDef {
        StageDef {
            name: name.into(),
            deps: deps.iter().map(|d| Dep::Artifact(d.to_string())).collect(),
            params: vec![],
            outs: outs.iter().map(|o| o.to_string()).collect(),
            code_version: "1".into(),
        }
    }

    /// A stage that writes `out` and hands nothing on.
    fn plain(runner: &mut Runner<'_>, name: &str, out: &str) -> StageOutcome {
        runner
            .run(&def(name, &[], &[out]), |w| {
                w.put(out, b"plain")?;
                Ok::<_, LineageError>(StageReport::default())
            })
            .unwrap()
    }

    /// Runs stage `other` (writing `c.txt`), a stage that writes `a.txt`
    /// handing on its decoded value, `between` (given the store and the
    /// runner), then a stage that reads `a.txt`: what that stage took,
    /// trying to take it as `u32` first when `mistyped`.
    fn handed_on(
        mistyped: bool,
        between: impl FnOnce(&LocalStore, &mut Runner<'_>),
    ) -> Option<String> {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path()).unwrap();
        let params = Params::from_toml_str("").unwrap();
        let mut runner = Runner::new(&store, &params, false).unwrap();
        plain(&mut runner, "other", "c.txt");
        runner
            .run(&def("write", &[], &["a.txt"]), |w| {
                w.put_decoded("a.txt", b"abc", String::from("decoded abc"))?;
                Ok::<_, LineageError>(StageReport::default())
            })
            .unwrap();
        between(&store, &mut runner);
        let mut taken = None;
        runner
            .run(&def("read", &["a.txt"], &["b.txt"]), |w| {
                // A value is only taken for a declared dep.
                assert!(matches!(
                    w.take_decoded::<String>("c.txt"),
                    Err(LineageError::Contract { .. })
                ));
                if mistyped {
                    assert_eq!(w.take_decoded::<u32>("a.txt")?, None);
                }
                taken = w.take_decoded::<String>("a.txt")?;
                // Once.
                assert_eq!(w.take_decoded::<String>("a.txt")?, None);
                w.put("b.txt", &w.get("a.txt")?)?;
                Ok::<_, LineageError>(StageReport::default())
            })
            .unwrap();
        taken
    }

    #[test]
    fn the_next_stage_takes_the_value_a_stage_handed_on_once() {
        assert_eq!(handed_on(false, |_, _| ()).as_deref(), Some("decoded abc"));
        // Asked for as another type: dropped (the stage decodes the bytes).
        assert_eq!(handed_on(true, |_, _| ()), None);
    }

    #[test]
    fn a_value_is_not_handed_on_past_a_changed_artifact_or_another_stage() {
        // The artifact changed after it was written: decode what is there.
        let changed = handed_on(false, |store, _| {
            store.put("a.txt", b"changed").unwrap();
        });
        assert_eq!(changed, None);
        // Another stage ran in between.
        let ran = handed_on(false, |_, runner| {
            plain(runner, "another", "d.txt");
        });
        assert_eq!(ran, None);
        // Another stage was skipped in between (up to date).
        let skipped = handed_on(false, |_, runner| {
            assert!(!plain(runner, "other", "c.txt").ran);
        });
        assert_eq!(skipped, None);
    }
}
