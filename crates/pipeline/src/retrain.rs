//! Retraining production models on new data.

use std::collections::BTreeMap;

use lineage::{ArtifactStore, Dep, Runner, StageDef, StageReport, StageWriter};
use models::{
    DesignMatrix, ElasticNetParams, FailoverLoader, GbmParams, Manifest, ManifestEntry, MlpModel,
    MlpParams, ModelKind, Regressor, SvrParams, evaluate,
};
use serde::{Deserialize, Serialize};

use crate::params::RowCaps;
use crate::stages::{ArtifactKeys, BoxError, read_matrix};
use crate::{PipelineConfig, PipelineError, Result, Stage};

/// What retraining decided for one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrainDecision {
    /// The model.
    pub kind: ModelKind,
    /// Validation MSE (log) of the production model on the new window, when it
    /// could be scored (same features).
    pub production_val_mse_log: Option<f64>,
    /// Validation MSE (log) of the refit model.
    pub candidate_val_mse_log: f64,
    /// Whether the refit model replaced production.
    pub replaced: bool,
    /// Why.
    pub reason: String,
}

/// The outcome of [`retrain`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrainReport {
    /// One decision per production model.
    pub decisions: Vec<RetrainDecision>,
    /// The model version of production and of the candidate.
    pub model_version: (String, String),
    /// The production release that was refit.
    pub production_release: String,
    /// The release the gate wrote for the candidate.
    pub release: Option<String>,
    /// Whether the gate promoted it.
    pub promoted: bool,
}

fn params_of<T: serde::de::DeserializeOwned>(
    entry: &ManifestEntry,
) -> std::result::Result<T, String> {
    serde_json::from_value(entry.hyper_params.clone()).map_err(|e| {
        format!(
            "{} hyper-parameters in the manifest: {e}",
            entry.kind.name()
        )
    })
}

/// Refits `entry`'s model with its recorded hyper-parameters on new data; the
/// MLP starts from the production weights when the features are unchanged.
fn refit(
    entry: &ManifestEntry,
    current_mlp: Option<&MlpModel>,
    train: &DesignMatrix,
    val: &DesignMatrix,
) -> std::result::Result<Box<dyn Regressor>, String> {
    let s = |e: models::ModelError| e.to_string();
    Ok(match entry.kind {
        ModelKind::Mlp => Box::new(
            params_of::<MlpParams>(entry)?
                .fit(train, val, current_mlp)
                .map_err(s)?,
        ),
        ModelKind::Lightgbm => Box::new(
            params_of::<GbmParams>(entry)?
                .fit(train, Some(val))
                .map_err(s)?,
        ),
        ModelKind::Svr => Box::new(params_of::<SvrParams>(entry)?.fit(train).map_err(s)?),
        ModelKind::ElasticNet => Box::new(
            params_of::<ElasticNetParams>(entry)?
                .fit(train)
                .map_err(s)?,
        ),
        ModelKind::Baseline => return Err("the baseline is not served".into()),
    })
}

/// Retrains production on the raw file in `config`: the data stages run on it
/// (lineage as usual); each model of the production release is refit with its
/// recorded hyper-parameters (the MLP warm-started from its production
/// weights), and a refit model replaces the production one in the candidate
/// only if it is not worse on the new validation window. The candidate then
/// goes through the same promotion gate as a pipeline run: it becomes a
/// release, and production moves to it only if the gate passes. The refit
/// decisions are recorded as the `retrain` stage in the lock and in
/// `metrics/retrain.json`. Holds the run lock throughout.
pub fn retrain(config: &PipelineConfig<'_>) -> Result<RetrainReport> {
    let _lock = config.store.lock(&config.command, config.lease)?;
    let keys = ArtifactKeys::new(config.effective_stockcode()?.as_deref());
    let releases = lineage::Releases::new(config.store, keys.stockcode.as_deref());
    let pointer_key = releases.pointer_key();
    let Some(pointer) = releases.production()? else {
        return Err(PipelineError::Config(format!(
            "no production release to retrain at {} ({pointer_key} is absent): run `cargo xtask pipeline` first",
            config.store.location()
        )));
    };
    let production =
        Manifest::from_json(&releases.open(&pointer).get(&keys.manifest)?).map_err(|e| {
            PipelineError::Config(format!("production release {}: {e}", pointer.release))
        })?;
    // The candidate: its manifest and the files of each production model.
    let mut outs = vec![keys.candidate.clone()];
    for entry in &production.models {
        outs.extend(entry.files.values().cloned());
    }
    let mut data_config =
        PipelineConfig::new(config.raw.clone(), config.store, config.params.clone());
    data_config.stockcode = config.stockcode.clone();
    data_config.progress = config.progress;
    data_config.until = Some(Stage::Split);
    crate::run_locked(&data_config)?;

    let name = match &keys.stockcode {
        Some(c) => format!("retrain@{c}"),
        None => "retrain".to_string(),
    };
    let def = StageDef {
        name,
        deps: vec![
            Dep::Artifact(keys.train.clone()),
            Dep::Artifact(keys.val.clone()),
            Dep::Artifact(keys.test.clone()),
            // The pointer names the production release and every file's hash.
            Dep::Artifact(pointer_key.clone()),
        ],
        params: vec![
            "models.max_train_rows".into(),
            "models.max_eval_rows".into(),
        ],
        outs,
        code_version: format!(
            "{}+{}",
            env!("CARGO_PKG_VERSION"),
            &env!("MODELS_SRC_HASH")[..12]
        ),
    };
    let mut report: Option<RetrainReport> = None;
    let caps = config.typed()?.row_caps();
    let mut runner = Runner::new(config.store, &config.params, true)?;
    runner.run(&def, |w: &mut StageWriter<'_>| {
        let r = refit_stage(w, &keys, &pointer_key, caps)?;
        let metrics = serde_json::to_value(&r)?;
        let rows_out = r.decisions.len() as u64;
        report = Some(r);
        Ok::<_, BoxError>(StageReport {
            rows_in: 0,
            rows_out,
            metrics,
        })
    })?;
    // The refits are done: the MLP trainer's memory is not held through the gate.
    models::stop_trainer();
    let mut report =
        report.ok_or_else(|| PipelineError::Config("retrain produced no report".into()))?;

    // The same gate stage as a pipeline run, on the retrained candidate (the
    // models stage is not run: it would tune a candidate of its own).
    let gate = config
        .stage_defs()?
        .into_iter()
        .find(|(stage, _)| *stage == Stage::Gate)
        .map(|(_, def)| def)
        .ok_or_else(|| PipelineError::Config("the pipeline has no gate stage".into()))?;
    let mut runner = Runner::new(config.store, &config.params, false)?;
    let bar = crate::stages::spinner(config.progress, &gate.name);
    let typed = config.typed()?;
    let outcome =
        crate::stages::run_stage(Stage::Gate, &gate, &keys, config, &typed, &mut runner, &bar);
    bar.finish_and_clear();
    outcome?;
    let decision: crate::GateDecision =
        serde_json::from_slice(&config.store.get(&keys.gate_decision)?)
            .map_err(|e| PipelineError::Config(format!("{}: {e}", keys.gate_decision)))?;
    report.release = Some(decision.release);
    report.promoted = decision.promoted;
    Ok(report)
}

/// The body of the `retrain` stage: refit each production model, keep the
/// better of refit and production per model, write the candidate.
fn refit_stage(
    w: &mut StageWriter<'_>,
    keys: &ArtifactKeys,
    pointer_key: &str,
    caps: RowCaps,
) -> std::result::Result<RetrainReport, BoxError> {
    let pointer = lineage::Pointer::from_json(&w.get(pointer_key)?, pointer_key)?;
    let releases = w.releases(keys.stockcode.as_deref());
    let production = releases.open(&pointer);
    let manifest = Manifest::from_json(&production.get(&keys.manifest)?)?;
    let (train, _) = read_matrix(w, &keys.train, caps.train)?;
    let (val, _) = read_matrix(w, &keys.val, caps.eval)?;
    let (test, _) = read_matrix(w, &keys.test, caps.eval)?;
    let same_features = train.feature_names == manifest.feature_names;
    let loader = FailoverLoader::new(&production);
    let mut decisions = Vec::new();
    let mut entries = Vec::new();
    for entry in &manifest.models {
        let current = loader.load_entry(&manifest, entry).ok();
        let current_mlp = if entry.kind == ModelKind::Mlp && same_features {
            let mut files = BTreeMap::new();
            for (n, key) in &entry.files {
                files.insert(n.clone(), production.get(key)?);
            }
            MlpModel::from_files(&files).ok()
        } else {
            None
        };
        let candidate = refit(entry, current_mlp.as_ref(), &train, &val)?;
        let cand_val = evaluate(candidate.as_ref(), &val)?;
        let prod_val = match (&current, same_features) {
            (Some(m), true) => Some(evaluate(m.as_ref(), &val)?.mse_log),
            _ => None,
        };
        let (replace, reason) = match prod_val {
            Some(p) if cand_val.mse_log <= p => (
                true,
                "refit model is not worse on the new validation window".to_string(),
            ),
            Some(_) => (
                false,
                "refit model is worse on the new validation window".to_string(),
            ),
            None if current.is_none() => (true, "production model could not be loaded".to_string()),
            None => (
                true,
                "features changed: production model cannot score the new data".to_string(),
            ),
        };
        decisions.push(RetrainDecision {
            kind: entry.kind,
            production_val_mse_log: prod_val,
            candidate_val_mse_log: cand_val.mse_log,
            replaced: replace,
            reason,
        });
        if replace {
            let (files, hashes) = crate::stages::write_model(w, keys, candidate.as_ref())?;
            // Recalibrated on the new validation window, like production was.
            let calibration = match &entry.calibration {
                Some(c) => models::GroupCalibration::fit(
                    candidate.as_ref(),
                    &val,
                    &c.column,
                    c.half_life_days,
                )?,
                None => None,
            };
            let (val_m, test_m) = match &calibration {
                Some(c) => (
                    models::calibrated_metrics(candidate.as_ref(), &val, c)?,
                    models::calibrated_metrics(candidate.as_ref(), &test, c)?,
                ),
                None => (cand_val, evaluate(candidate.as_ref(), &test)?),
            };
            entries.push(ManifestEntry {
                kind: entry.kind,
                files,
                hashes,
                hyper_params: candidate.hyper_params(),
                val: val_m,
                test: test_m,
                calibration,
            });
        } else {
            // The production model, copied from its release into the candidate.
            for key in entry.files.values() {
                w.put(key, &production.get(key)?)?;
            }
            entries.push(entry.clone());
        }
    }
    let probe = if same_features {
        manifest.probe.clone()
    } else {
        crate::stages::probe_rows(&val, &train)
    };
    let candidate = Manifest {
        model_version: Manifest::version_of(&entries)?,
        feature_names: train.feature_names.clone(),
        models: entries,
        probe,
        baseline: None,
        source: Some("retrain".into()),
        ..manifest.clone()
    };
    w.put(&keys.candidate, &candidate.to_json()?)?;
    Ok(RetrainReport {
        decisions,
        model_version: (
            manifest.model_version.clone(),
            candidate.model_version.clone(),
        ),
        production_release: pointer.release.clone(),
        release: None,
        promoted: false,
    })
}
