//! Retraining on new data: refit with the recorded hyper-parameters, replace a
//! production model only if the refit is not worse, record it in the lineage.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use etl::synth::SynthConfig;
use integration_tests::{fast_params, write_synthetic};
use lineage::{ArtifactStore, LocalStore, LockFile};
use models::{Manifest, load_from_store};
use pipeline::PipelineConfig;

#[test]
fn retrain_refits_compares_and_records() {
    let dir = tempfile::tempdir().unwrap();
    let (old, _) = write_synthetic(
        dir.path(),
        "old.csv",
        &SynthConfig {
            n_invoices: 500,
            seed: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let (new, _) = write_synthetic(
        dir.path(),
        "new.csv",
        &SynthConfig {
            n_invoices: 700,
            seed: 2,
            ..Default::default()
        },
    )
    .unwrap();
    let store = LocalStore::new(dir.path().join("out")).unwrap();

    // Nothing to retrain yet: a clear error.
    let err =
        pipeline::retrain(&PipelineConfig::new(new.clone(), &store, fast_params())).unwrap_err();
    assert!(
        err.to_string().contains("run `cargo xtask pipeline` first"),
        "{err}"
    );

    pipeline::run(&PipelineConfig::new(old, &store, fast_params())).unwrap();
    let before = Manifest::from_json(&store.get("models/manifest.json").unwrap()).unwrap();
    let report = pipeline::retrain(&PipelineConfig::new(new, &store, fast_params())).unwrap();
    assert_eq!(report.decisions.len(), before.models.len());
    for d in &report.decisions {
        assert!(d.candidate_val_mse_log.is_finite());
        if let Some(p) = d.production_val_mse_log {
            assert_eq!(d.replaced, d.candidate_val_mse_log <= p, "{d:?}");
        }
    }
    let after = Manifest::from_json(&store.get("models/manifest.json").unwrap()).unwrap();
    assert_eq!(report.model_version.1, after.model_version);
    for (d, e) in report.decisions.iter().zip(&after.models) {
        if !d.replaced {
            let old_entry = before.models.iter().find(|b| b.kind == e.kind).unwrap();
            assert_eq!(old_entry.hashes, e.hashes, "a kept model changed");
        }
    }
    // The new production set loads, and the lineage records the retrain.
    load_from_store(&store, &["models/manifest.json"]).unwrap();
    let lock = LockFile::load(&store).unwrap();
    assert!(lock.stages.contains_key("retrain"));
    assert!(store.exists("metrics/retrain.json").unwrap());
}
