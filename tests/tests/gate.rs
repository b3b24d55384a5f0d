//! The promotion gate in the pipeline: a clean run promotes the candidate;
//! a drifted current window fails the run, writes the report and leaves the
//! production manifest as it was; an explicit override promotes and is
//! recorded in the lock.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use etl::synth::SynthConfig;
use integration_tests::{fast_params, write_synthetic};
use lineage::{ArtifactStore, LocalStore, LockFile};
use models::{Manifest, load_from_store};
use pipeline::PipelineConfig;

/// The synthetic export with the last `share` of its lines (in time) drifted:
/// prices × 2.5 and quantities × 4, as after a repricing and a bulk-buying
/// season.
fn drifted(csv: &str, share: f64) -> String {
    let mut lines: Vec<&str> = csv.lines().collect();
    let header = lines.remove(0);
    let cols: Vec<&str> = header.split(',').collect();
    let price = cols.iter().position(|c| *c == "UnitPrice").unwrap();
    let qty = cols.iter().position(|c| *c == "Quantity").unwrap();
    let cut = ((lines.len() as f64) * (1.0 - share)) as usize;
    let mut out = vec![header.to_string()];
    for (i, line) in lines.iter().enumerate() {
        if i < cut || line.contains('"') {
            out.push(line.to_string());
            continue;
        }
        let mut f: Vec<String> = line.split(',').map(str::to_string).collect();
        if let (Ok(p), Ok(q)) = (f[price].parse::<f64>(), f[qty].parse::<i64>()) {
            f[price] = format!("{:.2}", p * 2.5);
            f[qty] = (q * 4).to_string();
        }
        out.push(f.join(","));
    }
    out.join("\n") + "\n"
}

#[test]
fn the_gate_promotes_clean_data_blocks_drift_and_records_an_override() {
    let dir = tempfile::tempdir().unwrap();
    let (raw, data) = write_synthetic(
        dir.path(),
        "raw.csv",
        &SynthConfig {
            n_invoices: 700,
            ..Default::default()
        },
    )
    .unwrap();
    let store = LocalStore::new(dir.path().join("out")).unwrap();

    // The gate's own params: not overridden. LightGBM serves: the smoke
    // budget's 3-epoch MLP fails the fairness check (see the last step).
    let gated = || {
        let mut p = fast_params();
        p.set("gate.override", false).unwrap();
        p.set(
            "models.priority",
            toml::Value::Array(vec!["lightgbm".into(), "elastic_net".into()]),
        )
        .unwrap();
        p
    };

    // Clean data: promoted, the production manifest is the candidate.
    pipeline::run(&PipelineConfig::new(raw.clone(), &store, gated())).unwrap();
    let production = store.get("models/manifest.json").unwrap();
    assert_eq!(production, store.get("models/candidate.json").unwrap());
    let report: serde_json::Value =
        serde_json::from_slice(&store.get("gate/report.json").unwrap()).unwrap();
    assert_eq!(report["passed"], true, "{}", report["failures"]);
    assert_eq!(report["drift"]["dataset_drift"], false);
    assert_eq!(
        report["promoted_models"],
        serde_json::json!(["lightgbm", "elastic_net"])
    );
    for f in report["fairness"].as_array().unwrap() {
        let f = &f["report"];
        assert!(f["mean_outcome_difference"].as_f64().unwrap().is_finite());
        assert!(f["privileged"]["rows"].as_u64().unwrap() > 0);
        assert!(f["unprivileged"]["rows"].as_u64().unwrap() > 0);
    }
    assert_eq!(report["attributed_model"], "lightgbm");
    let top = &report["attributions"]["features"];
    assert_eq!(
        top.as_array().unwrap().len(),
        report["attributions"]["mean_abs"].as_array().unwrap().len()
    );
    let html = String::from_utf8(store.get("gate/report.html").unwrap()).unwrap();
    assert!(html.contains("<svg") && html.contains("Feature attributions"));
    for needle in ["<script", "<link", "src=\"http", "href=\"http"] {
        assert!(!html.contains(needle), "the report fetches {needle}");
    }

    // The most recent 35% of the data drifts: the run fails, the report says
    // why, and the production manifest is untouched.
    let drifted_raw = dir.path().join("drifted.csv");
    std::fs::write(&drifted_raw, drifted(&data.csv, 0.35)).unwrap();
    let err = pipeline::run(&PipelineConfig::new(drifted_raw.clone(), &store, gated()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("promotion gate failed"), "{err}");
    assert!(err.contains("data drift"), "{err}");
    assert_eq!(store.get("models/manifest.json").unwrap(), production);
    assert_ne!(store.get("models/candidate.json").unwrap(), production);
    let report: serde_json::Value =
        serde_json::from_slice(&store.get("gate/report.json").unwrap()).unwrap();
    assert_eq!(report["drift"]["dataset_drift"], true);
    let drifted_cols: Vec<&str> = report["drift"]["columns"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["drifted"] == true)
        .map(|c| c["column"].as_str().unwrap())
        .collect();
    assert!(drifted_cols.contains(&"unit_price"), "{drifted_cols:?}");
    assert!(drifted_cols.contains(&"quantity"), "{drifted_cols:?}");
    let lock = LockFile::load(&store).unwrap();
    let gate_lock = &lock.stages["gate"];
    assert_eq!(gate_lock.params["gate.override"], serde_json::json!(false));

    // An explicit override promotes, and the lineage records it.
    let mut params = gated();
    params.set("gate.override", true).unwrap();
    pipeline::run(&PipelineConfig::new(drifted_raw, &store, params)).unwrap();
    assert_eq!(
        store.get("models/manifest.json").unwrap(),
        store.get("models/candidate.json").unwrap()
    );
    let lock = LockFile::load(&store).unwrap();
    assert_eq!(
        lock.stages["gate"].params["gate.override"],
        serde_json::json!(true)
    );
    let metrics: serde_json::Value =
        serde_json::from_slice(&store.get("metrics/gate.json").unwrap()).unwrap();
    assert_eq!(metrics["metrics"]["override"], true, "{metrics}");
    assert_eq!(metrics["metrics"]["passed"], false, "{metrics}");
}

#[test]
fn the_gate_holds_back_an_unfair_model_and_fails_when_none_is_fair() {
    // The smoke budget's MLP (3 epochs) predicts guests' quantities far below
    // what the clean synthetic data shows; LightGBM does not.
    let dir = tempfile::tempdir().unwrap();
    let (raw, _) = write_synthetic(
        dir.path(),
        "raw.csv",
        &SynthConfig {
            n_invoices: 700,
            ..Default::default()
        },
    )
    .unwrap();
    let store = LocalStore::new(dir.path().join("out")).unwrap();
    let params = |priority: Vec<&str>| {
        let mut p = fast_params();
        p.set("gate.override", false).unwrap();
        p.set(
            "models.priority",
            toml::Value::Array(priority.into_iter().map(Into::into).collect()),
        )
        .unwrap();
        p
    };
    pipeline::run(&PipelineConfig::new(
        raw.clone(),
        &store,
        params(vec!["mlp", "lightgbm"]),
    ))
    .unwrap();
    let production = Manifest::from_json(&store.get("models/manifest.json").unwrap()).unwrap();
    let kinds: Vec<&str> = production.models.iter().map(|e| e.kind.name()).collect();
    assert_eq!(kinds, vec!["lightgbm"]);
    let candidate = Manifest::from_json(&store.get("models/candidate.json").unwrap()).unwrap();
    assert_ne!(production.model_version, candidate.model_version);
    let report: serde_json::Value =
        serde_json::from_slice(&store.get("gate/report.json").unwrap()).unwrap();
    let held = report["held_back"].as_array().unwrap();
    assert_eq!(held.len(), 1);
    assert!(
        held[0].as_str().unwrap().starts_with("mlp: fairness"),
        "{held:?}"
    );
    assert_eq!(
        load_from_store(&store, &["models/manifest.json"])
            .unwrap()
            .entry
            .kind
            .name(),
        "lightgbm"
    );

    // Only the unfair model: nothing to promote, the run fails, production unchanged.
    let before = store.get("models/manifest.json").unwrap();
    let err = pipeline::run(&PipelineConfig::new(raw, &store, params(vec!["mlp"])))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no candidate model passes"), "{err}");
    assert!(!err.contains("data drift"), "{err}");
    assert_eq!(store.get("models/manifest.json").unwrap(), before);
}
