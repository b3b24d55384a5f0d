//! The failover loader on a real pipeline run: a corrupted primary model in
//! the production release is skipped with a reason, and a product's own
//! release is separate from the all-products one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use lineage::{ArtifactKeys, ArtifactStore, Releases};
use models::{Manifest, ModelKind, load_from_store};
use testkit::{Scenario, fast_params, production_release};

#[test]
fn a_corrupted_primary_model_fails_over_to_lightgbm_with_the_reason() {
    let scenario = Scenario::new(600);
    let store = scenario.promoted("out");
    let (dir, pointer) = production_release(&store);
    let releases = Releases::new(&store, None);
    let release = releases.open(&pointer);

    let manifest = Manifest::from_json(&release.get("models/manifest.json").unwrap()).unwrap();
    assert_eq!(
        manifest.models.iter().map(|e| e.kind).collect::<Vec<_>>(),
        vec![
            ModelKind::Mlp,
            ModelKind::Lightgbm,
            ModelKind::Svr,
            ModelKind::ElasticNet
        ]
    );
    let healthy = load_from_store(&release, &["models/manifest.json"]).unwrap();
    assert_eq!(healthy.entry.kind, ModelKind::Mlp);
    assert!(healthy.skipped.is_empty());

    // Flip bytes in the MLP's weights inside the release.
    let weights_path = dir.join("models/mlp/weights.safetensors");
    let mut weights = std::fs::read(&weights_path).unwrap();
    let mid = weights.len() / 2;
    weights[mid] ^= 0xFF;
    std::fs::write(&weights_path, &weights).unwrap();

    let loaded = load_from_store(&release, &["models/manifest.json"]).unwrap();
    assert_eq!(loaded.entry.kind, ModelKind::Lightgbm);
    assert_eq!(loaded.skipped.len(), 1);
    assert_eq!(loaded.skipped[0].kind, ModelKind::Mlp);
    assert!(
        loaded.skipped[0].reason.contains("weights.safetensors"),
        "{}",
        loaded.skipped[0].reason
    );
    let pred = loaded
        .model
        .predict(manifest.probe_matrix().unwrap().view())
        .unwrap();
    assert!(pred.iter().all(|v| v.is_finite()));
    // The corruption is visible to the release check too: it cannot be re-promoted.
    let info = releases.info(&pointer.release).unwrap();
    let err = releases.verify(&info).unwrap_err().to_string();
    assert!(err.contains("weights.safetensors"), "{err}");

    // A product's own run writes a release of its own scope and its own
    // pointer; the all-products pointer does not move.
    let code = scenario.data.products[0].stock_code.clone();
    let mut config = scenario.config(&store, fast_params());
    config.stockcode = Some(code.clone());
    pipeline::run(&config).unwrap();
    let product = Releases::new(&store, Some(&code));
    let product_pointer = product.production().unwrap().unwrap();
    assert_ne!(product_pointer.release, pointer.release);
    assert_eq!(
        releases.production().unwrap().unwrap().release,
        pointer.release
    );
    let keys = ArtifactKeys::new(Some(&code));
    let product_release = product.open(&product_pointer);
    let loaded = load_from_store(&product_release, &[keys.manifest.as_str()]).unwrap();
    assert_eq!(loaded.manifest.stockcode.as_deref(), Some(code.as_str()));
    assert_eq!(
        product.list().unwrap().len(),
        1,
        "the product scope lists its own releases only"
    );
}

#[test]
fn every_model_corrupted_is_a_clear_error() {
    let scenario = Scenario::new(300);
    let store = scenario.store("out");
    let mut p = fast_params();
    p.set(
        "models.priority",
        toml::Value::Array(vec!["elastic_net".into()]),
    )
    .unwrap();
    scenario.run(&store, p).unwrap();
    let (dir, pointer) = production_release(&store);
    std::fs::write(dir.join("models/elastic_net/model.json"), b"{}").unwrap();
    let release = Releases::new(&store, None).open(&pointer);
    let err = load_from_store(&release, &["models/manifest.json"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no usable model") && err.contains("elastic_net"),
        "{err}"
    );
}
