//! The price-model pipeline as a DAG of lineage stages:
//! `etl → features → split → models → gate`. The gate writes every candidate
//! into an immutable release and moves the production pointer to it only when
//! drift and fairness pass (see [`lineage::release`]). A run holds the store's
//! run lock from start to end, so two runs never write one store at once.
//!
//! Each stage is a function of typed artifacts read from and written to an
//! [`ArtifactStore`]; the [`lineage::Runner`] decides whether it runs. This crate
//! only wires stages together: parsing `params.toml` into each stage's params
//! struct, naming artifacts, and reporting.
//!
//! ```no_run
//! use pipeline::{PipelineConfig, run};
//! let store = lineage::open_store("/tmp/run").unwrap();
//! let config = PipelineConfig::new("data/online_retail.csv.gz".into(), store.as_ref(), pipeline::default_params());
//! let summary = run(&config).unwrap();
//! for stage in &summary.stages {
//!     println!("{} ran={} rows_out={}", stage.name, stage.ran, stage.report.rows_out);
//! }
//! ```

pub mod gate;
pub mod params;
mod retrain;
mod stages;

use std::path::{Path, PathBuf};
use std::time::Duration;

use lineage::{ArtifactStore, Params, Runner, StageDef, StageOutcome};

pub use gate::GateDecision;
pub use params::PipelineParams;
pub use retrain::{RetrainDecision, RetrainReport, retrain};
pub use stages::ArtifactKeys;

/// The default `params.toml`, compiled in (used when no params file exists).
pub const DEFAULT_PARAMS: &str = include_str!("../../../params.toml");

/// Parses [`DEFAULT_PARAMS`].
pub fn default_params() -> Params {
    // The compiled-in file is checked by a test; an empty table is the fallback.
    Params::from_toml_str(DEFAULT_PARAMS).unwrap_or_default()
}

/// The settings [`smoke_params`] applies, as `(key, TOML value)`: the same
/// list a command line passes as `--set key=value`.
pub const SMOKE_SETTINGS: [(&str, &str); 9] = [
    ("gate.override", "true"),
    ("tuning.tuner", "\"grid\""),
    ("tuning.grid_points_per_dim", "2"),
    ("tuning.grid_max_points", "2"),
    ("models.tuning_rows", "2000"),
    ("models.tuning_val_rows", "1000"),
    ("models.tuning_mlp_epochs", "2"),
    ("models.mlp_max_epochs", "3"),
    ("models.svr_rows", "200"),
];

/// The default params with a tiny model budget ([`SMOKE_SETTINGS`]: grid
/// tuner, 2 trials per model, a few MLP epochs, small tuning subsets): a
/// whole run on a few thousand synthetic rows takes seconds even in a debug
/// build. For tests and smoke runs; the models are real but weak — a 3-epoch
/// MLP does not pass the fairness check — so the promotion gate is overridden
/// (`gate.override`, recorded in the lock and in `metrics/gate.json`); the
/// gate still runs and writes its report and release.
pub fn smoke_params() -> Params {
    let mut p = default_params();
    for (key, value) in SMOKE_SETTINGS {
        // Every key exists in the compiled-in params and every value parses
        // (checked by a test).
        if let Ok((key, v)) = lineage::params::assignment(&format!("{key}={value}")) {
            let _ = p.set(key, v);
        }
    }
    p
}

/// Errors of the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// From lineage: store, lock, params, or a failing stage.
    #[error(transparent)]
    Lineage(#[from] lineage::LineageError),
    /// An invalid option.
    #[error("{0}")]
    Config(String),
}

/// Result alias of this crate.
pub type Result<T, E = PipelineError> = std::result::Result<T, E>;

/// The stages, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Raw export → cleaned transactions.
    Etl,
    /// Transactions → features, product summary, contexts, window.
    Features,
    /// Features → train/val/test model matrices and the preprocessor.
    Split,
    /// Model matrices → tuned models, their metrics and the candidate manifest.
    Models,
    /// Features → each product's price response (how its demand moves with
    /// its own price), current price, level and bands.
    Response,
    /// Drift, fairness and attributions → the report; promotes the candidate
    /// to the production manifest when they pass.
    Gate,
}

impl Stage {
    /// All stages in DAG order.
    pub const ALL: [Stage; 6] = [
        Stage::Etl,
        Stage::Features,
        Stage::Split,
        Stage::Models,
        Stage::Response,
        Stage::Gate,
    ];

    /// The stage's name.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Etl => "etl",
            Stage::Features => "features",
            Stage::Split => "split",
            Stage::Models => "models",
            Stage::Response => "response",
            Stage::Gate => "gate",
        }
    }
}

impl std::str::FromStr for Stage {
    type Err = PipelineError;
    fn from_str(s: &str) -> Result<Self> {
        Stage::ALL
            .into_iter()
            .find(|st| st.name() == s)
            .ok_or_else(|| {
                PipelineError::Config(format!(
                    "unknown stage `{s}` (stages: {})",
                    Stage::ALL.map(Stage::name).join(", ")
                ))
            })
    }
}

/// What to run and where.
pub struct PipelineConfig<'a> {
    /// The raw transactions export (CSV or CSV.gz).
    pub raw: PathBuf,
    /// Where artifacts and the lock go.
    pub store: &'a dyn ArtifactStore,
    /// Parameters.
    pub params: Params,
    /// Re-run every stage.
    pub force: bool,
    /// Stop after this stage.
    pub until: Option<Stage>,
    /// Run the product stages for this stock code only (overrides `train.stockcode`).
    pub stockcode: Option<String>,
    /// Show progress spinners on stderr.
    pub progress: bool,
    /// What the run lock names as its holder (`cargo xtask pipeline`).
    pub command: String,
    /// Lifetime of an S3 run lease (renewed every third of it while the run
    /// lives; a crashed run's lease lapses after it).
    pub lease: std::time::Duration,
}

impl<'a> PipelineConfig<'a> {
    /// A config with no force, no limit, no stock code and no progress display.
    pub fn new(raw: PathBuf, store: &'a dyn ArtifactStore, params: Params) -> Self {
        Self {
            raw,
            store,
            params,
            force: false,
            until: None,
            stockcode: None,
            progress: false,
            command: "pipeline".into(),
            lease: lineage::DEFAULT_LEASE,
        }
    }

    /// The stock code in effect (`--stockcode`, else `train.stockcode`), validated.
    pub fn effective_stockcode(&self) -> Result<Option<String>> {
        let code = match &self.stockcode {
            Some(c) => Some(c.clone()),
            None => self.typed()?.stockcode().map(str::to_string),
        };
        if let Some(c) = &code
            && (c.is_empty()
                || c.len() > 32
                || !c
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')))
        {
            return Err(PipelineError::Config(format!(
                "stock code {c:?} must be 1-32 letters, digits, '.', '_' or '-'"
            )));
        }
        Ok(code)
    }

    /// [`Self::params`], typed and validated: every key known, every value
    /// of its type and in range.
    pub fn typed(&self) -> Result<PipelineParams> {
        Ok(PipelineParams::from_params(&self.params)?)
    }

    /// The stage definitions in DAG order.
    pub fn stage_defs(&self) -> Result<Vec<(Stage, StageDef)>> {
        let keys = ArtifactKeys::new(self.effective_stockcode()?.as_deref());
        let typed = self.typed()?;
        let priority = typed.models.priority;
        let costs = typed.data.unit_costs;
        let costs = Some(costs.as_str())
            .filter(|c| !c.is_empty())
            .map(Path::new);
        Ok(Stage::ALL
            .into_iter()
            .map(|s| (s, stages::definition(s, &keys, &self.raw, costs, &priority)))
            .collect())
    }
}

/// The result of a pipeline run.
#[derive(Debug, Clone)]
pub struct PipelineSummary {
    /// One entry per stage considered, in order.
    pub stages: Vec<StageOutcome>,
    /// Wall time of the whole run.
    pub elapsed: Duration,
}

/// Runs the pipeline: each stage runs only if stale (or `force`), up to
/// `until`. Holds the store's run lock throughout: a second run on the same
/// store fails at once with [`lineage::LineageError::Locked`].
pub fn run(config: &PipelineConfig<'_>) -> Result<PipelineSummary> {
    let _lock = config.store.lock(&config.command, config.lease)?;
    run_locked(config)
}

/// [`run`] for a caller that already holds the run lock.
pub(crate) fn run_locked(config: &PipelineConfig<'_>) -> Result<PipelineSummary> {
    let started = std::time::Instant::now();
    let keys = ArtifactKeys::new(config.effective_stockcode()?.as_deref());
    let typed = config.typed()?;
    let mut runner = Runner::new(config.store, &config.params, config.force)?;
    let mut outcomes = Vec::new();
    for (stage, def) in config.stage_defs()? {
        let bar = stages::spinner(config.progress, &def.name);
        let outcome = stages::run_stage(stage, &def, &keys, config, &typed, &mut runner, &bar);
        bar.finish_and_clear();
        let outcome = outcome?;
        tracing::info!(
            stage = %outcome.name,
            ran = outcome.ran,
            rows_in = outcome.report.rows_in,
            rows_out = outcome.report.rows_out,
            ms = outcome.elapsed.as_millis() as u64,
            "stage finished"
        );
        outcomes.push(outcome);
        if config.until == Some(stage) {
            break;
        }
    }
    Ok(PipelineSummary {
        stages: outcomes,
        elapsed: started.elapsed(),
    })
}

/// Moves production (of all products, or of one stock code's models) to
/// release `id`, under the run lock, recorded with `reason`.
pub fn promote(
    store: &dyn ArtifactStore,
    scope: Option<&str>,
    id: &str,
    reason: &str,
) -> Result<lineage::Pointer> {
    let reason = checked_reason(reason)?;
    let _lock = store.lock("promote", lineage::DEFAULT_LEASE)?;
    Ok(lineage::Releases::new(store, scope).promote(id, "promote", reason)?)
}

/// Moves production back to the release that served before, under the run
/// lock, recorded with `reason`.
pub fn rollback(
    store: &dyn ArtifactStore,
    scope: Option<&str>,
    reason: &str,
) -> Result<lineage::Pointer> {
    let reason = checked_reason(reason)?;
    let _lock = store.lock("rollback", lineage::DEFAULT_LEASE)?;
    Ok(lineage::Releases::new(store, scope).rollback(reason)?)
}

/// Removes old releases (see [`lineage::Releases::gc`]) under the run lock.
pub fn gc(store: &dyn ArtifactStore, scope: Option<&str>, keep: usize) -> Result<Vec<String>> {
    let _lock = store.lock("gc", lineage::DEFAULT_LEASE)?;
    Ok(lineage::Releases::new(store, scope).gc(keep)?)
}

fn checked_reason(reason: &str) -> Result<&str> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(PipelineError::Config(
            "a reason is required: it is recorded with the move".into(),
        ));
    }
    Ok(reason)
}

/// Whether a stage is up to date, and why not.
#[derive(Debug, Clone)]
pub struct StageStatus {
    /// Stage name as in the lock.
    pub name: String,
    /// Why it would run; empty when up to date.
    pub reasons: Vec<String>,
}

/// Like `dvc status`: which stages are stale and why. A stage downstream of a
/// stale one is reported stale too.
pub fn status(config: &PipelineConfig<'_>) -> Result<Vec<StageStatus>> {
    let runner = Runner::new(config.store, &config.params, false)?;
    let mut out: Vec<StageStatus> = Vec::new();
    for (_, def) in config.stage_defs()? {
        let mut reasons: Vec<String> = runner
            .check(&def)?
            .iter()
            .map(ToString::to_string)
            .collect();
        if let Some(up) = out.iter().find(|s| !s.reasons.is_empty()) {
            reasons.push(format!("upstream stage `{}` is stale", up.name));
        }
        out.push(StageStatus {
            name: def.name.clone(),
            reasons,
        });
    }
    Ok(out)
}

/// All metrics files in the store: stage name → metrics JSON, like `dvc metrics show`.
pub fn metrics(store: &dyn ArtifactStore) -> Result<Vec<(String, serde_json::Value)>> {
    let mut out = Vec::new();
    for key in store.list("metrics/")? {
        let Some(name) = key
            .strip_prefix("metrics/")
            .and_then(|k| k.strip_suffix(".json"))
        else {
            continue;
        };
        let value: serde_json::Value = serde_json::from_slice(&store.get(&key)?)
            .map_err(|e| PipelineError::Config(format!("metrics file `{key}` is not JSON: {e}")))?;
        out.push((name.replace('=', "@"), value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiled_in_params_parse_into_every_stage() {
        let p = Params::from_toml_str(DEFAULT_PARAMS).unwrap_or_else(|e| panic!("{e}"));
        PipelineParams::from_params(&p).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn smoke_params_set_existing_keys() {
        let p = smoke_params();
        let t = PipelineParams::from_params(&p)
            .unwrap_or_else(|e| panic!("{e}"))
            .train_config();
        assert_eq!(t.svr_rows, 200);
        assert_eq!(p.str("tuning.tuner").ok(), Some("grid"));
        let defaults = default_params();
        for (key, _) in SMOKE_SETTINGS {
            assert!(defaults.get(key).is_some(), "{key} is not a param");
            assert_ne!(p.get(key), defaults.get(key), "{key} was not set");
        }
    }

    #[test]
    fn stockcode_is_validated() {
        let dir = std::env::temp_dir();
        let store = lineage::LocalStore::new(&dir).unwrap_or_else(|e| panic!("{e}"));
        let mut c = PipelineConfig::new("x".into(), &store, default_params());
        c.stockcode = Some("../../etc".into());
        assert!(c.effective_stockcode().is_err());
        c.stockcode = Some("85123A".into());
        assert_eq!(
            c.effective_stockcode().ok().flatten().as_deref(),
            Some("85123A")
        );
    }
}
