//! The production manifest and the failover loader.

use std::collections::BTreeMap;

use lineage::ArtifactStore;
use ndarray::Array2;
use serde::{Deserialize, Serialize};

use crate::{Metrics, ModelError, ModelFiles, ModelKind, Regressor, Result, load_model};

/// One model in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Model kind.
    pub kind: ModelKind,
    /// File name → store key.
    pub files: BTreeMap<String, String>,
    /// Store key → BLAKE3 of the content written.
    pub hashes: BTreeMap<String, String>,
    /// Hyper-parameters.
    pub hyper_params: serde_json::Value,
    /// Validation metrics.
    pub val: Metrics,
    /// Test metrics.
    pub test: Metrics,
    /// Group offsets fitted on validation and applied by the loader (the
    /// metrics above are of the calibrated model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<crate::GroupCalibration>,
}

/// The production manifest: models in the order serving should try them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version.
    pub version: u32,
    /// A content-derived version of this set of models (BLAKE3 of the entries).
    pub model_version: String,
    /// `None` for the all-products models, or the stock code they were trained on.
    pub stockcode: Option<String>,
    /// Feature names every model expects.
    pub feature_names: Vec<String>,
    /// Models in priority order.
    pub models: Vec<ManifestEntry>,
    /// The baseline (not served; for comparison).
    pub baseline: Option<ManifestEntry>,
    /// A few preprocessed validation rows: the loader's probe input.
    pub probe: Vec<Vec<f64>>,
    /// What produced these models: `models` (tuned from scratch) or
    /// `retrain` (refit with production's hyper-parameters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl Manifest {
    /// JSON bytes.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        let mut v = serde_json::to_vec_pretty(self)?;
        v.push(b'\n');
        Ok(v)
    }

    /// Reads JSON bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let m: Self = serde_json::from_slice(bytes).map_err(|e| ModelError::Format {
            model: "manifest".into(),
            reason: e.to_string(),
        })?;
        if m.version != 1 {
            return Err(ModelError::Format {
                model: "manifest".into(),
                reason: format!("unsupported version {}", m.version),
            });
        }
        Ok(m)
    }

    /// The model version of a set of entries: the first 16 hex digits of the
    /// BLAKE3 hash of their JSON, so any change to a model, its files or its
    /// place in the order gives a new version.
    pub fn version_of(models: &[ManifestEntry]) -> Result<String> {
        let json = serde_json::to_vec(models)?;
        Ok(lineage::content_hash(&json)[..16].to_string())
    }

    /// The probe rows as a matrix.
    pub fn probe_matrix(&self) -> Result<Array2<f64>> {
        let cols = self.feature_names.len();
        let flat: Vec<f64> = self.probe.iter().flatten().copied().collect();
        Array2::from_shape_vec((self.probe.len(), cols), flat).map_err(|e| ModelError::Format {
            model: "manifest".into(),
            reason: format!("probe rows: {e}"),
        })
    }
}

/// A model that was passed over, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkippedModel {
    /// Where it came from (manifest key).
    pub manifest: String,
    /// Its kind.
    pub kind: ModelKind,
    /// Why it was not used.
    pub reason: String,
}

/// The model the loader settled on.
pub struct LoadedModel {
    /// The manifest it came from.
    pub manifest_key: String,
    /// The manifest.
    pub manifest: Manifest,
    /// Its entry.
    pub entry: ManifestEntry,
    /// The model.
    pub model: Box<dyn Regressor>,
    /// Models tried first and skipped, with reasons.
    pub skipped: Vec<SkippedModel>,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("manifest_key", &self.manifest_key)
            .field("kind", &self.entry.kind)
            .field("skipped", &self.skipped)
            .finish()
    }
}

/// Loaded models with their kinds, in priority order.
pub type KindedModels = Vec<(ModelKind, Box<dyn Regressor>)>;

/// Walks manifests and their models in priority order.
pub struct FailoverLoader<'a> {
    store: &'a dyn ArtifactStore,
}

impl<'a> FailoverLoader<'a> {
    /// A loader over a store.
    pub fn new(store: &'a dyn ArtifactStore) -> Self {
        Self { store }
    }

    /// Loads one manifest entry: files present, hashes as recorded, the model
    /// parses, its features match, and it predicts finite values on the probe.
    pub fn load_entry(
        &self,
        manifest: &Manifest,
        entry: &ManifestEntry,
    ) -> Result<Box<dyn Regressor>> {
        let mut files = ModelFiles::new();
        for (name, key) in &entry.files {
            let bytes = self.store.get(key)?;
            let hash = lineage::content_hash(&bytes);
            if entry.hashes.get(key) != Some(&hash) {
                return Err(ModelError::Format {
                    model: entry.kind.name().into(),
                    reason: format!(
                        "`{key}` does not match the hash in the manifest (corrupted or replaced)"
                    ),
                });
            }
            files.insert(name.clone(), bytes);
        }
        let mut model = load_model(entry.kind, &files)?;
        if let Some(cal) = &entry.calibration {
            model = Box::new(crate::Calibrated::new(model, cal)?);
        }
        if model.feature_names() != manifest.feature_names.as_slice() {
            return Err(ModelError::Format {
                model: entry.kind.name().into(),
                reason: "feature names differ from the manifest's".into(),
            });
        }
        let probe = manifest.probe_matrix()?;
        let pred = model.predict(probe.view())?;
        if let Some(bad) = pred.iter().find(|v| !v.is_finite()) {
            return Err(ModelError::Format {
                model: entry.kind.name().into(),
                reason: format!("predicts {bad} on the probe input"),
            });
        }
        Ok(model)
    }

    /// Loads every model of `manifest` (read from `manifest_key`) that
    /// passes [`FailoverLoader::load_entry`], in priority order, and the ones
    /// that do not, with reasons.
    pub fn load_all(
        &self,
        manifest_key: &str,
        manifest: &Manifest,
    ) -> (KindedModels, Vec<SkippedModel>) {
        let mut loaded = Vec::new();
        let mut skipped = Vec::new();
        for entry in &manifest.models {
            match self.load_entry(manifest, entry) {
                Ok(model) => loaded.push((entry.kind, model)),
                Err(e) => {
                    tracing::warn!(manifest = %manifest_key, model = entry.kind.name(), error = %e, "model skipped");
                    skipped.push(SkippedModel {
                        manifest: manifest_key.to_string(),
                        kind: entry.kind,
                        reason: e.to_string(),
                    });
                }
            }
        }
        (loaded, skipped)
    }

    /// Tries each manifest key in turn (a product's own manifest first, say)
    /// and each model in priority order; returns the first usable model.
    pub fn load(&self, manifest_keys: &[&str]) -> Result<LoadedModel> {
        let mut skipped = Vec::new();
        for key in manifest_keys {
            let manifest = match self.store.get(key).map(|b| Manifest::from_json(&b)) {
                Ok(Ok(m)) => m,
                Ok(Err(e)) => {
                    tracing::warn!(manifest = %key, error = %e, "manifest unreadable");
                    continue;
                }
                Err(lineage::LineageError::NotFound(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            for entry in &manifest.models {
                match self.load_entry(&manifest, entry) {
                    Ok(model) => {
                        return Ok(LoadedModel {
                            manifest_key: key.to_string(),
                            entry: entry.clone(),
                            manifest: manifest.clone(),
                            model,
                            skipped,
                        });
                    }
                    Err(e) => {
                        tracing::warn!(manifest = %key, model = entry.kind.name(), error = %e, "model skipped");
                        skipped.push(SkippedModel {
                            manifest: key.to_string(),
                            kind: entry.kind,
                            reason: e.to_string(),
                        });
                    }
                }
            }
        }
        let why = if skipped.is_empty() {
            format!("no manifest found at {manifest_keys:?}")
        } else {
            skipped
                .iter()
                .map(|s| format!("{} ({}): {}", s.kind.name(), s.manifest, s.reason))
                .collect::<Vec<_>>()
                .join("; ")
        };
        Err(ModelError::NoUsableModel(why))
    }
}

/// Shorthand for [`FailoverLoader::load`].
pub fn load_from_store(store: &dyn ArtifactStore, manifest_keys: &[&str]) -> Result<LoadedModel> {
    FailoverLoader::new(store).load(manifest_keys)
}
