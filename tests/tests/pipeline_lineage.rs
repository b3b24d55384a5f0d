//! Pipeline lineage behaviour: skipping, param-driven re-runs, `--until`,
//! per-product runs, failures that leave nothing half-written, and the same
//! artifacts on the local and S3 backends.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use etl::synth::SynthConfig;
use lineage::{ArtifactStore, LOCK_KEY, LocalStore, LockFile, Params};
use pipeline::{PipelineConfig, Stage};
use testkit::{S3TestServer, fast_params, is_timing_record, write_synthetic};

fn dataset(dir: &Path) -> PathBuf {
    write_synthetic(
        dir,
        "raw.csv",
        &SynthConfig {
            n_invoices: 600,
            ..Default::default()
        },
    )
    .unwrap()
    .0
}

fn run(store: &dyn ArtifactStore, raw: &Path, params: &Params) -> Vec<(String, bool)> {
    run_until(store, raw, params, None)
}

/// The stages of a run up to `until` (all without), each with whether it ran.
fn run_until(
    store: &dyn ArtifactStore,
    raw: &Path,
    params: &Params,
    until: Option<Stage>,
) -> Vec<(String, bool)> {
    let mut config = PipelineConfig::new(raw.to_path_buf(), store, params.clone());
    config.until = until;
    pipeline::run(&config)
        .unwrap()
        .stages
        .into_iter()
        .map(|s| (s.name, s.ran))
        .collect()
}

fn ran(v: &[(String, bool)]) -> Vec<&str> {
    v.iter()
        .filter(|(_, r)| *r)
        .map(|(n, _)| n.as_str())
        .collect()
}

fn outs(store: &dyn ArtifactStore) -> BTreeMap<String, String> {
    let lock = LockFile::load(store).unwrap();
    lock.stages
        .values()
        .flat_map(|s| s.outs.clone())
        .filter(|(k, _)| !is_timing_record(k))
        .collect()
}

#[test]
fn second_run_skips_every_stage() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dataset(dir.path());
    let store = LocalStore::new(dir.path().join("out")).unwrap();
    let p = fast_params();
    assert_eq!(
        ran(&run(&store, &raw, &p)),
        vec!["etl", "features", "split", "models", "response", "gate"]
    );
    assert!(ran(&run(&store, &raw, &p)).is_empty());
    let lock = LockFile::load(&store).unwrap();
    assert_eq!(
        lock.stages.keys().collect::<Vec<_>>(),
        vec!["etl", "features", "gate", "models", "response", "split"]
    );
    assert_eq!(
        lock.stages["split"].params["preprocess.scaling"],
        "standard"
    );
    // The MLP was trained, in the trainer process: this process links every
    // crate of the workspace but the trainer, and never mapped libtorch.
    let manifest = models::Manifest::from_json(
        &store
            .get(&lineage::ArtifactKeys::new(None).candidate)
            .unwrap(),
    )
    .unwrap();
    assert!(
        manifest
            .models
            .iter()
            .any(|e| e.kind == models::ModelKind::Mlp)
    );
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    assert!(
        !maps.contains("libtorch"),
        "libtorch is mapped into a process that only ran the pipeline"
    );
}

#[test]
fn a_param_change_reruns_only_its_readers_and_what_changed_downstream() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dataset(dir.path());
    let store = LocalStore::new(dir.path().join("out")).unwrap();
    let mut p = fast_params();
    run(&store, &raw, &p);

    p.set("preprocess.scaling", "minmax").unwrap();
    assert_eq!(ran(&run(&store, &raw, &p)), vec!["split", "models", "gate"]);

    p.set("models.svr_rows", 150).unwrap();
    assert_eq!(ran(&run(&store, &raw, &p)), vec!["models", "gate"]);

    // A cap on training rows re-runs the models, which then train on a
    // time-stratified sample of that many rows, and the gate.
    p.set("models.max_train_rows", 300).unwrap();
    assert_eq!(ran(&run(&store, &raw, &p)), vec!["models", "gate"]);
    let models: serde_json::Value =
        serde_json::from_slice(&store.get("metrics/models.json").unwrap()).unwrap();
    let train = &models["metrics"]["rows"]["train"];
    assert_eq!(train[0], 300, "{train}");
    assert!(train[1].as_u64().unwrap() > 300, "{train}");

    // A gate param re-runs the gate alone.
    p.set("gate.attribution_permutations", 4).unwrap();
    assert_eq!(ran(&run(&store, &raw, &p)), vec!["gate"]);

    // A response param re-runs the response and the gate.
    p.set("response.level_weeks", 6).unwrap();
    assert_eq!(ran(&run(&store, &raw, &p)), vec!["response", "gate"]);

    p.set("split.train_fraction", 0.6).unwrap();
    assert_eq!(
        ran(&run(&store, &raw, &p)),
        vec!["features", "split", "models", "response", "gate"]
    );

    // etl re-runs, but its output is byte-identical (no such code in the data),
    // so nothing downstream re-runs.
    p.set(
        "etl.excluded_stock_codes",
        toml::Value::Array(vec!["B".into(), "NOSUCHCODE".into()]),
    )
    .unwrap();
    assert_eq!(ran(&run(&store, &raw, &p)), vec!["etl"]);

    // An etl change that changes its output re-runs everything.
    p.set("etl.product_code_pattern", "^20[0-9]{3}[AB]$")
        .unwrap();
    let r = run(&store, &raw, &p);
    assert_eq!(
        ran(&r),
        vec!["etl", "features", "split", "models", "response", "gate"]
    );
}

#[test]
fn status_names_the_changed_param_and_the_stale_downstream_stage() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dataset(dir.path());
    let store = LocalStore::new(dir.path().join("out")).unwrap();
    let mut p = fast_params();
    run(&store, &raw, &p);
    let config = PipelineConfig::new(raw.clone(), &store, p.clone());
    assert!(
        pipeline::status(&config)
            .unwrap()
            .iter()
            .all(|s| s.reasons.is_empty())
    );
    p.set("features.recent_contexts", 10).unwrap();
    let config = PipelineConfig::new(raw, &store, p);
    let st = pipeline::status(&config).unwrap();
    assert!(st[0].reasons.is_empty());
    assert!(
        st[1]
            .reasons
            .iter()
            .any(|r| r.contains("features.recent_contexts")),
        "{:?}",
        st[1]
    );
    assert!(
        st[2]
            .reasons
            .iter()
            .any(|r| r.contains("upstream stage `features`")),
        "{:?}",
        st[2]
    );
}

#[test]
fn until_stops_after_the_named_stage() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dataset(dir.path());
    let store = LocalStore::new(dir.path().join("out")).unwrap();
    let stages = run_until(&store, &raw, &fast_params(), Some(Stage::Features));
    assert_eq!(stages.len(), 2);
    assert!(store.list("split/").unwrap().is_empty());
    assert!(store.exists("features/features.parquet").unwrap());
}

#[test]
fn a_stockcode_run_writes_its_own_artifacts() {
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
    run(&store, &raw, &fast_params());
    let before = outs(&store);
    let code = data.products[0].stock_code.clone();
    let mut config = PipelineConfig::new(raw.clone(), &store, fast_params());
    config.stockcode = Some(code.clone());
    let s = pipeline::run(&config).unwrap();
    let names: Vec<_> = s.stages.iter().map(|o| (o.name.clone(), o.ran)).collect();
    assert_eq!(
        names,
        vec![
            ("etl".to_string(), false),
            (format!("features@{code}"), true),
            (format!("split@{code}"), true),
            (format!("models@{code}"), true),
            (format!("response@{code}"), true),
            (format!("gate@{code}"), true)
        ]
    );
    let table = features::FeatureTable::from_parquet(
        &store
            .get(&format!("features/stockcode={code}/features.parquet"))
            .unwrap(),
    )
    .unwrap();
    assert!(table.stock_codes().unwrap().iter().all(|c| *c == code));
    assert!(!table.is_empty());
    // The all-products artifacts are untouched.
    let after = outs(&store);
    for (k, h) in before {
        assert_eq!(after.get(&k), Some(&h), "{k} changed");
    }
    // Unknown product: a clear error, not an empty result.
    config.stockcode = Some("99999Z".into());
    let err = pipeline::run(&config).unwrap_err().to_string();
    assert!(err.contains("99999Z") && err.contains("no sales"), "{err}");
}

#[test]
fn a_failing_stage_leaves_lock_and_artifacts_as_they_were() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dataset(dir.path());
    let store = LocalStore::new(dir.path().join("out")).unwrap();
    run(&store, &raw, &fast_params());
    let lock_before = store.get(LOCK_KEY).unwrap();
    let outs_before = outs(&store);
    let mut text = std::fs::read_to_string(&raw).unwrap();
    text.push_str("999999,85123A,BROKEN,7,not-a-date,1.0,12345,United Kingdom\n");
    std::fs::write(&raw, text).unwrap();
    let config = PipelineConfig::new(raw.clone(), &store, fast_params());
    let err = pipeline::run(&config).unwrap_err().to_string();
    assert!(
        err.contains("raw.csv") && err.contains("column `InvoiceDate`") && err.contains("line "),
        "{err}"
    );
    assert_eq!(store.get(LOCK_KEY).unwrap(), lock_before);
    for (k, h) in outs_before {
        assert_eq!(store.hash(&k).unwrap(), Some(h), "{k} was touched");
    }
}

#[test]
fn runs_are_deterministic_and_identical_on_local_and_s3_stores() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dataset(dir.path());
    let a = LocalStore::new(dir.path().join("a")).unwrap();
    let b = LocalStore::new(dir.path().join("b")).unwrap();
    run(&a, &raw, &fast_params());
    run(&b, &raw, &fast_params());
    assert_eq!(outs(&a), outs(&b));

    let server = S3TestServer::start("pipeline").unwrap();
    let s3 = server.store("pipeline", "runs/1").unwrap();
    assert_eq!(ran(&run(&s3, &raw, &fast_params())).len(), 6);
    assert_eq!(outs(&s3), outs(&a));
    assert!(
        ran(&run(&s3, &raw, &fast_params())).is_empty(),
        "S3 re-run skipped nothing"
    );
    let metrics = pipeline::metrics(&s3).unwrap();
    assert_eq!(
        metrics.iter().map(|m| m.0.as_str()).collect::<Vec<_>>(),
        vec!["etl", "features", "gate", "models", "response", "split"]
    );
}

#[test]
fn features_from_the_table_etl_handed_on_equal_those_from_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dataset(dir.path());
    let store = LocalStore::new(dir.path().join("out")).unwrap();
    let until = Some(Stage::Features);
    // etl then features in one run: features takes etl's table in memory.
    run_until(&store, &raw, &fast_params(), until);
    let handed_on = outs(&store);
    // features alone: it decodes transactions.parquet.
    store.delete("features/features.parquet").unwrap();
    let again = run_until(&store, &raw, &fast_params(), until);
    assert_eq!(ran(&again), ["features"]);
    assert_eq!(outs(&store), handed_on);
}

#[test]
fn deleting_an_output_reruns_its_stage_only() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dataset(dir.path());
    let store = LocalStore::new(dir.path().join("out")).unwrap();
    run(&store, &raw, &fast_params());
    store.delete("split/val.parquet").unwrap();
    assert_eq!(ran(&run(&store, &raw, &fast_params())), vec!["split"]);
}

#[test]
fn absurd_rows_are_dropped_by_etl_and_break_no_later_stage() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dataset(dir.path());
    let mut text = std::fs::read_to_string(&raw).unwrap();
    // A typo'd year far in the future, a price of 1e300, an absurd quantity.
    text.push_str("999991,85123A,BAD YEAR,6,+200000-01-01 08:26:00,2.55,12345,France\n");
    text.push_str("999992,85123A,BAD PRICE,6,2011-06-01 08:26:00,1e300,12345,France\n");
    text.push_str("999993,85123A,BAD QTY,999999999,2011-06-01 08:26:00,2.55,12345,France\n");
    std::fs::write(&raw, text).unwrap();
    let store = LocalStore::new(dir.path().join("out")).unwrap();
    run(&store, &raw, &fast_params());
    let etl: serde_json::Value =
        serde_json::from_slice(&store.get("metrics/etl.json").unwrap()).unwrap();
    let dropped = &etl["metrics"]["dropped"];
    assert_eq!(dropped["date_out_of_range"], 1, "{dropped}");
    assert_eq!(dropped["price_out_of_range"], 1, "{dropped}");
    assert_eq!(dropped["quantity_out_of_range"], 1, "{dropped}");
    let table =
        features::FeatureTable::from_parquet(&store.get("features/features.parquet").unwrap())
            .unwrap();
    let prices = table.numeric("unit_price").unwrap();
    assert!(prices.iter().all(|p| p.is_finite() && *p < 1e5));
}
