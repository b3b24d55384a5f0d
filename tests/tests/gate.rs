//! The promotion gate in the pipeline: a clean run promotes the candidate's
//! release; a drifted current window fails the run, writes the report and a
//! blocked release, and leaves production where it was; an explicit override
//! promotes and is recorded in the lock.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use lineage::{ArtifactStore, LocalStore, LockFile, Releases};
use models::{Manifest, load_from_store};
use testkit::{Scenario, fast_params};

/// The production release's manifest.
fn production_manifest(store: &LocalStore) -> Manifest {
    let releases = Releases::new(store, None);
    let pointer = releases.production().unwrap().unwrap();
    Manifest::from_json(&releases.open(&pointer).get("models/manifest.json").unwrap()).unwrap()
}

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
    let scenario = Scenario::new(700);
    let store = scenario.store("out");
    let releases = Releases::new(&store, None);

    // The gate's own params: not overridden; LightGBM first, Elastic Net
    // as its backup.
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

    // Clean data: promoted, the production release serves the candidate.
    scenario.run(&store, gated()).unwrap();
    let pointer_bytes = store.get("production.json").unwrap();
    let pointer = releases.production().unwrap().unwrap();
    let candidate = Manifest::from_json(&store.get("models/candidate.json").unwrap()).unwrap();
    assert_eq!(production_manifest(&store), candidate);
    assert_eq!(pointer.actor, "gate");
    assert!(pointer.previous.is_none());
    // The working area has no production manifest: only releases serve.
    assert!(!store.exists("models/manifest.json").unwrap());
    let release = releases.open(&pointer);
    assert_eq!(
        release.get("gate/report.json").unwrap(),
        store.get("gate/report.json").unwrap(),
        "the release carries its gate report"
    );
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
    // why, the candidate is kept as a blocked release, and production is
    // untouched, byte for byte.
    let drifted_raw = scenario.dir().join("drifted.csv");
    std::fs::write(&drifted_raw, drifted(&scenario.data.csv, 0.35)).unwrap();
    let drifted_config = || pipeline::PipelineConfig::new(drifted_raw.clone(), &store, gated());
    let err = pipeline::run(&drifted_config()).unwrap_err().to_string();
    assert!(err.contains("promotion gate failed"), "{err}");
    assert!(err.contains("data drift"), "{err}");
    assert!(
        err.contains(&pointer.release),
        "names what still serves: {err}"
    );
    assert_eq!(store.get("production.json").unwrap(), pointer_bytes);
    assert_ne!(
        Manifest::from_json(&store.get("models/candidate.json").unwrap()).unwrap(),
        candidate
    );
    let listed = releases.list().unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(listed[0].id, pointer.release);
    assert_eq!(listed[0].verdict.label(), "passed");
    assert_eq!(listed[1].verdict.label(), "blocked");
    assert!(
        listed[1]
            .verdict
            .failures
            .iter()
            .any(|f| f.contains("data drift")),
        "{:?}",
        listed[1].verdict
    );
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
    pipeline::run(&pipeline::PipelineConfig::new(drifted_raw, &store, params)).unwrap();
    assert_eq!(
        production_manifest(&store),
        Manifest::from_json(&store.get("models/candidate.json").unwrap()).unwrap()
    );
    let overridden = releases.production().unwrap().unwrap();
    assert_eq!(
        overridden.previous.as_deref(),
        Some(pointer.release.as_str())
    );
    assert!(
        overridden.reason.contains("gate.override"),
        "{}",
        overridden.reason
    );
    assert_eq!(
        releases.info(&overridden.release).unwrap().verdict.label(),
        "overridden"
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
    // Uncalibrated, the smoke budget's MLP (3 epochs) predicts guests'
    // quantities far below what the clean synthetic data shows; LightGBM
    // does not. (Group calibration would make both fair.)
    let scenario = Scenario::new(700);
    let store = scenario.store("out");
    let params = |priority: Vec<&str>| {
        let mut p = fast_params();
        p.set("gate.override", false).unwrap();
        p.set("models.calibrate_groups", "").unwrap();
        p.set(
            "models.priority",
            toml::Value::Array(priority.into_iter().map(Into::into).collect()),
        )
        .unwrap();
        p
    };
    scenario
        .run(&store, params(vec!["mlp", "lightgbm"]))
        .unwrap();
    let production = production_manifest(&store);
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
    let releases = Releases::new(&store, None);
    let pointer = releases.production().unwrap().unwrap();
    assert_eq!(
        load_from_store(&releases.open(&pointer), &["models/manifest.json"])
            .unwrap()
            .entry
            .kind
            .name(),
        "lightgbm"
    );
    // The release carries only what serves: no MLP files.
    assert!(
        pointer.files.keys().all(|k| !k.contains("/mlp/")),
        "{:?}",
        pointer.files
    );

    // Only the unfair model: nothing to promote, the run fails, production unchanged.
    let before = store.get("production.json").unwrap();
    let err = scenario
        .run(&store, params(vec!["mlp"]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no candidate model passes"), "{err}");
    assert!(!err.contains("data drift"), "{err}");
    assert_eq!(store.get("production.json").unwrap(), before);

    // Group-calibrated (the default), the same MLP passes the same check.
    let mut calibrated = params(vec!["mlp"]);
    calibrated
        .set("models.calibrate_groups", "is_registered")
        .unwrap();
    scenario.run(&store, calibrated).unwrap();
    let kinds: Vec<String> = production_manifest(&store)
        .models
        .iter()
        .map(|e| e.kind.name().to_string())
        .collect();
    assert_eq!(kinds, vec!["mlp"]);
    let report: serde_json::Value =
        serde_json::from_slice(&store.get("gate/report.json").unwrap()).unwrap();
    let mlp = &report["fairness"][0];
    assert_eq!(mlp["model"], "mlp");
    let excess = mlp["report"]["excess_outcome_difference"].as_f64().unwrap();
    assert!(excess.abs() <= 0.1, "{mlp}");
}
