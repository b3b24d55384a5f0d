//! Retraining on new data: refit with the recorded hyper-parameters, keep the
//! better of refit and production per model, and send the candidate through
//! the same promotion gate as a pipeline run (a blocked retrain leaves
//! production as it was).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use etl::synth::SynthConfig;
use lineage::{ArtifactStore, LockFile, Releases};
use models::{Manifest, load_from_store};
use pipeline::PipelineConfig;
use testkit::{Scenario, fast_params, write_synthetic};

#[test]
fn retrain_refits_compares_and_passes_through_the_gate() {
    let scenario = Scenario::with_config(&SynthConfig {
        n_invoices: 500,
        seed: 1,
        ..Default::default()
    });
    let (new, _) = write_synthetic(
        scenario.dir(),
        "new.csv",
        &SynthConfig {
            n_invoices: 700,
            seed: 2,
            ..Default::default()
        },
    )
    .unwrap();
    let store = scenario.store("out");
    let releases = Releases::new(&store, None);

    // Nothing to retrain yet: a clear error.
    let err =
        pipeline::retrain(&PipelineConfig::new(new.clone(), &store, fast_params())).unwrap_err();
    assert!(
        err.to_string().contains("run `cargo xtask pipeline` first"),
        "{err}"
    );

    scenario.run(&store, fast_params()).unwrap();
    let first = releases.production().unwrap().unwrap();
    let before =
        Manifest::from_json(&releases.open(&first).get("models/manifest.json").unwrap()).unwrap();
    let report =
        pipeline::retrain(&PipelineConfig::new(new.clone(), &store, fast_params())).unwrap();
    assert_eq!(report.decisions.len(), before.models.len());
    assert_eq!(report.production_release, first.release);
    for d in &report.decisions {
        assert!(d.candidate_val_mse_log.is_finite());
        if let Some(p) = d.production_val_mse_log {
            assert_eq!(d.replaced, d.candidate_val_mse_log <= p, "{d:?}");
        }
    }
    // The smoke params override the gate: the candidate's release is promoted.
    assert!(report.promoted);
    let pointer = releases.production().unwrap().unwrap();
    assert_eq!(Some(&pointer.release), report.release.as_ref());
    assert_eq!(pointer.previous.as_deref(), Some(first.release.as_str()));
    let info = releases.info(&pointer.release).unwrap();
    assert_eq!(info.source, "retrain");
    let after =
        Manifest::from_json(&releases.open(&pointer).get("models/manifest.json").unwrap()).unwrap();
    assert_eq!(report.model_version.1, after.model_version);
    for (d, e) in report.decisions.iter().zip(&after.models) {
        if !d.replaced {
            let old_entry = before.models.iter().find(|b| b.kind == e.kind).unwrap();
            assert_eq!(old_entry.hashes, e.hashes, "a kept model changed");
        }
    }
    // The new production set loads, and the lineage records the retrain.
    load_from_store(&releases.open(&pointer), &["models/manifest.json"]).unwrap();
    let lock = LockFile::load(&store).unwrap();
    assert!(lock.stages.contains_key("retrain"));
    assert!(store.exists("metrics/retrain.json").unwrap());

    // With the gate enforced and a fairness threshold no model meets, the
    // retrained candidate is blocked and production does not move.
    let mut gated = fast_params();
    gated.set("gate.override", false).unwrap();
    gated
        .set("gate.max_abs_mean_outcome_difference", 0.0)
        .unwrap();
    let serving = store.get("production.json").unwrap();
    let err = pipeline::retrain(&PipelineConfig::new(new, &store, gated))
        .unwrap_err()
        .to_string();
    assert!(err.contains("promotion gate failed"), "{err}");
    assert_eq!(store.get("production.json").unwrap(), serving);
    let last = releases.list().unwrap().pop().unwrap();
    assert_eq!(last.verdict.label(), "blocked");
    assert_eq!(last.source, "retrain");
}
