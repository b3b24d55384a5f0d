//! Retraining production models on new data.

use std::collections::BTreeMap;

use lineage::{Dep, Runner, StageDef, StageReport, StageWriter};
use models::{
    DesignMatrix, ElasticNetParams, FailoverLoader, GbmParams, Manifest, ManifestEntry, MlpModel,
    MlpParams, ModelKind, Regressor, SvrParams, evaluate,
};
use serde::{Deserialize, Serialize};

use crate::stages::ArtifactKeys;
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
    /// The manifest's model version before and after.
    pub model_version: (String, String),
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
/// (lineage as usual), each production model is refit with its recorded
/// hyper-parameters (the MLP warm-started from its production weights), and a
/// refit model replaces production only if it is not worse on the new
/// validation window. The decision is recorded as the `retrain` stage in the
/// lock and in `metrics/retrain.json`.
pub fn retrain(config: &PipelineConfig<'_>) -> Result<RetrainReport> {
    let keys = ArtifactKeys::new(config.effective_stockcode()?.as_deref());
    let manifest_bytes = config.store.get(&keys.manifest).map_err(|e| {
        PipelineError::Config(format!(
            "no production models to retrain at {} ({e}): run `cargo xtask pipeline` first",
            keys.manifest
        ))
    })?;
    let manifest =
        Manifest::from_json(&manifest_bytes).map_err(|e| PipelineError::Config(e.to_string()))?;
    let mut data_config =
        PipelineConfig::new(config.raw.clone(), config.store, config.params.clone());
    data_config.stockcode = config.stockcode.clone();
    data_config.progress = config.progress;
    data_config.until = Some(Stage::Split);
    crate::run(&data_config)?;

    let name = match &keys.stockcode {
        Some(c) => format!("retrain@{c}"),
        None => "retrain".to_string(),
    };
    let mut outs = vec![keys.manifest.clone()];
    for entry in &manifest.models {
        outs.extend(entry.files.values().cloned());
    }
    let def = StageDef {
        name,
        deps: vec![
            Dep::Artifact(keys.train.clone()),
            Dep::Artifact(keys.val.clone()),
            Dep::Artifact(keys.test.clone()),
        ],
        params: vec![],
        outs,
        code_version: format!(
            "{}+{}",
            env!("CARGO_PKG_VERSION"),
            &env!("MODELS_SRC_HASH")[..12]
        ),
    };
    let mut report: Option<RetrainReport> = None;
    let mut runner = Runner::new(config.store, &config.params, true)?;
    runner.run(&def, |w: &mut StageWriter<'_>| -> std::result::Result<StageReport, Box<dyn std::error::Error + Send + Sync>> {
        let train = DesignMatrix::from_parquet(&w.get(&keys.train)?)?;
        let val = DesignMatrix::from_parquet(&w.get(&keys.val)?)?;
        let test = DesignMatrix::from_parquet(&w.get(&keys.test)?)?;
        let same_features = train.feature_names == manifest.feature_names;
        let loader = FailoverLoader::new(config.store);
        let mut decisions = Vec::new();
        let mut entries = Vec::new();
        for entry in &manifest.models {
            let current = loader.load_entry(&manifest, entry).ok();
            let current_mlp = if entry.kind == ModelKind::Mlp && same_features {
                let mut files = BTreeMap::new();
                for (n, key) in &entry.files {
                    files.insert(n.clone(), w.get(key)?);
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
                Some(p) if cand_val.mse_log <= p => (true, "refit model is not worse on the new validation window".to_string()),
                Some(_) => (false, "refit model is worse on the new validation window".to_string()),
                None if current.is_none() => (true, "production model could not be loaded".to_string()),
                None => (true, "features changed: production model cannot score the new data".to_string()),
            };
            decisions.push(RetrainDecision {
                kind: entry.kind,
                production_val_mse_log: prod_val,
                candidate_val_mse_log: cand_val.mse_log,
                replaced: replace,
                reason,
            });
            if replace {
                let mut hashes = BTreeMap::new();
                for (file, bytes) in candidate.to_files()? {
                    let key = entry.files.get(&file).cloned().ok_or("model file layout changed")?;
                    w.put(&key, &bytes)?;
                    hashes.insert(key, lineage::content_hash(&bytes));
                }
                entries.push(ManifestEntry {
                    kind: entry.kind,
                    files: entry.files.clone(),
                    hashes,
                    hyper_params: candidate.hyper_params(),
                    val: cand_val,
                    test: evaluate(candidate.as_ref(), &test)?,
                });
            } else {
                // Production stays as it is.
                for key in entry.files.values() {
                    w.keep(key)?;
                }
                entries.push(entry.clone());
            }
        }
        let probe = if same_features {
            manifest.probe.clone()
        } else {
            (0..val.len().min(8)).map(|i| val.x.row(i).to_vec()).collect()
        };
        let new_manifest = Manifest {
            model_version: Manifest::version_of(&entries)?,
            feature_names: train.feature_names.clone(),
            models: entries,
            probe,
            ..manifest.clone()
        };
        w.put(&keys.manifest, &new_manifest.to_json()?)?;
        let r = RetrainReport {
            decisions,
            model_version: (manifest.model_version.clone(), new_manifest.model_version.clone()),
        };
        let metrics = serde_json::to_value(&r)?;
        report = Some(r);
        Ok(StageReport {
            rows_in: (train.len() + val.len()) as u64,
            rows_out: new_manifest.models.len() as u64,
            metrics,
        })
    })?;
    report.ok_or_else(|| PipelineError::Config("retrain produced no report".into()))
}
