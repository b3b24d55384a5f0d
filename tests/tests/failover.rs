//! The failover loader on a real pipeline run: a corrupted primary model is
//! skipped with a reason, and a product's own manifest is preferred.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use etl::synth::SynthConfig;
use integration_tests::{fast_params, write_synthetic};
use lineage::{ArtifactStore, LocalStore};
use models::{Manifest, ModelKind, load_from_store};
use pipeline::PipelineConfig;

#[test]
fn a_corrupted_primary_model_fails_over_to_lightgbm_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (raw, data) = write_synthetic(
        dir.path(),
        "raw.csv",
        &SynthConfig {
            n_invoices: 600,
            ..Default::default()
        },
    )
    .unwrap();
    let store = LocalStore::new(dir.path().join("out")).unwrap();
    pipeline::run(&PipelineConfig::new(raw.clone(), &store, fast_params())).unwrap();

    let manifest = Manifest::from_json(&store.get("models/manifest.json").unwrap()).unwrap();
    assert_eq!(
        manifest.models.iter().map(|e| e.kind).collect::<Vec<_>>(),
        vec![
            ModelKind::Mlp,
            ModelKind::Lightgbm,
            ModelKind::Svr,
            ModelKind::ElasticNet
        ]
    );
    let healthy = load_from_store(&store, &["models/manifest.json"]).unwrap();
    assert_eq!(healthy.entry.kind, ModelKind::Mlp);
    assert!(healthy.skipped.is_empty());

    // Flip bytes in the MLP's weights.
    let mut weights = store.get("models/mlp/weights.safetensors").unwrap();
    let mid = weights.len() / 2;
    weights[mid] ^= 0xFF;
    store
        .put("models/mlp/weights.safetensors", &weights)
        .unwrap();

    let loaded = load_from_store(&store, &["models/manifest.json"]).unwrap();
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

    // A product's own manifest comes first when it exists.
    let code = data.products[0].stock_code.clone();
    let mut config = PipelineConfig::new(raw, &store, fast_params());
    config.stockcode = Some(code.clone());
    pipeline::run(&config).unwrap();
    let product_key = format!("models/stockcode={code}/manifest.json");
    let loaded = load_from_store(&store, &[product_key.as_str(), "models/manifest.json"]).unwrap();
    assert_eq!(loaded.manifest_key, product_key);
    assert_eq!(loaded.manifest.stockcode.as_deref(), Some(code.as_str()));
    // No product manifest: the global one.
    let loaded = load_from_store(
        &store,
        &[
            "models/stockcode=99999Z/manifest.json",
            "models/manifest.json",
        ],
    )
    .unwrap();
    assert_eq!(loaded.manifest_key, "models/manifest.json");
}

#[test]
fn every_model_corrupted_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (raw, _) = write_synthetic(
        dir.path(),
        "raw.csv",
        &SynthConfig {
            n_invoices: 300,
            ..Default::default()
        },
    )
    .unwrap();
    let store = LocalStore::new(dir.path().join("out")).unwrap();
    let mut p = fast_params();
    p.set(
        "models.priority",
        toml::Value::Array(vec!["elastic_net".into()]),
    )
    .unwrap();
    pipeline::run(&PipelineConfig::new(raw, &store, p)).unwrap();
    store.put("models/elastic_net/model.json", b"{}").unwrap();
    let err = load_from_store(&store, &["models/manifest.json"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no usable model") && err.contains("elastic_net"),
        "{err}"
    );
}
