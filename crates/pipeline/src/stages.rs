//! Stage wiring: artifact names, params parsing, and the body of each stage.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use features::{FeatureParams, FeatureTable, PreprocessParams, TrainWindow};
use indicatif::{ProgressBar, ProgressStyle};
pub use lineage::ArtifactKeys;
use lineage::{Dep, LineageError, Runner, StageDef, StageOutcome, StageReport, StageWriter};

use crate::params::{PipelineParams, RowCaps};
use crate::{PipelineConfig, Stage};
use models::response::{Line, ResponseParams, SalesHistory, Windows, fit_response};
use models::{
    DesignMatrix, GroupCalibration, Manifest, ManifestEntry, ModelKind, Regressor, TrainConfig,
    calibrated_metrics,
};

/// Boxed error of stage bodies.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// What a stage body returns.
pub(crate) type StageResult = Result<StageReport, BoxError>;

/// The lineage name of `stage` for these keys (`features@CODE` for one product).
fn stage_name(k: &ArtifactKeys, stage: Stage) -> String {
    match (&k.stockcode, stage) {
        (
            Some(code),
            Stage::Features | Stage::Split | Stage::Models | Stage::Response | Stage::Gate,
        ) => {
            format!("{}@{code}", stage.name())
        }
        _ => stage.name().to_string(),
    }
}

fn code_version(src_hash: &str) -> String {
    format!(
        "{}+{}",
        env!("CARGO_PKG_VERSION"),
        &src_hash[..12.min(src_hash.len())]
    )
}

fn keys(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// What a candidate consists of (written by the models stage, or by
/// retrain): the candidate manifest and each model's files.
pub(crate) fn candidate_outs(k: &ArtifactKeys, priority: &[ModelKind]) -> Vec<String> {
    model_outs(k, priority)
        .into_iter()
        .filter(|key| !key.ends_with("/trials.json") && !key.contains("/baseline/"))
        .collect()
}

/// Output keys of the models stage for a priority list.
fn model_outs(k: &ArtifactKeys, priority: &[ModelKind]) -> Vec<String> {
    let mut outs = vec![k.candidate.clone()];
    for kind in priority {
        let dir = format!("{}/{}", k.models_dir, kind.name());
        outs.push(format!("{dir}/model.json"));
        outs.push(format!("{dir}/trials.json"));
        if *kind == ModelKind::Mlp {
            outs.push(format!("{dir}/weights.safetensors"));
        }
    }
    outs.push(format!("{}/baseline/model.json", k.models_dir));
    outs
}

/// What the gate reads: the windows it compares, the model matrices, the
/// candidate and every model file it may name, and what a release carries.
fn gate_deps(k: &ArtifactKeys, priority: &[ModelKind]) -> Vec<Dep> {
    let mut deps: Vec<Dep> = [
        &k.features,
        &k.window,
        &k.summary,
        &k.contexts,
        &k.train,
        &k.test,
        &k.preprocessor,
        &k.feature_names,
        &k.candidate,
        &k.response,
        &k.history,
    ]
    .into_iter()
    .map(|key| Dep::Artifact(key.clone()))
    .collect();
    deps.extend(
        candidate_outs(k, priority)
            .into_iter()
            .filter(|key| *key != k.candidate)
            .map(Dep::Artifact),
    );
    deps
}

/// The definition of `stage` for these artifact keys.
pub(crate) fn definition(
    stage: Stage,
    k: &ArtifactKeys,
    raw: &Path,
    unit_costs: Option<&Path>,
    priority: &[ModelKind],
) -> StageDef {
    let name = stage_name(k, stage);
    match stage {
        Stage::Etl => StageDef {
            name,
            deps: vec![Dep::File {
                name: "raw".into(),
                path: raw.to_path_buf(),
            }],
            params: keys(&[
                "etl.product_code_pattern",
                "etl.excluded_stock_codes",
                "etl.min_date",
                "etl.max_date",
                "etl.max_unit_price",
                "etl.max_quantity",
                "etl.max_decompressed_bytes",
            ]),
            outs: vec![k.transactions.clone()],
            code_version: code_version(env!("ETL_SRC_HASH")),
        },
        Stage::Features => StageDef {
            name,
            deps: vec![Dep::Artifact(k.transactions.clone())],
            params: keys(&[
                "features.customer_window_days",
                "features.recent_contexts",
                "split.method",
                "split.train_fraction",
                "split.val_fraction",
                "split.train_end",
                "split.val_end",
            ]),
            outs: vec![
                k.features.clone(),
                k.summary.clone(),
                k.contexts.clone(),
                k.window.clone(),
            ],
            code_version: code_version(env!("FEATURES_SRC_HASH")),
        },
        Stage::Split => StageDef {
            name,
            deps: vec![
                Dep::Artifact(k.features.clone()),
                Dep::Artifact(k.window.clone()),
            ],
            params: keys(&[
                "preprocess.scaling",
                "preprocess.target_encoding_smoothing",
                "preprocess.target_encoding_folds",
                "preprocess.min_country_rows",
            ]),
            outs: vec![
                k.train.clone(),
                k.val.clone(),
                k.test.clone(),
                k.preprocessor.clone(),
                k.feature_names.clone(),
            ],
            code_version: code_version(env!("FEATURES_SRC_HASH")),
        },
        Stage::Models => StageDef {
            name,
            deps: vec![
                Dep::Artifact(k.train.clone()),
                Dep::Artifact(k.val.clone()),
                Dep::Artifact(k.test.clone()),
            ],
            params: keys(&[
                "models.priority",
                "models.seed",
                "models.tuning_rows",
                "models.tuning_val_rows",
                "models.tuning_mlp_epochs",
                "models.mlp_max_epochs",
                "models.svr_rows",
                "models.max_train_rows",
                "models.max_eval_rows",
                "models.calibrate_groups",
                "models.calibration_half_life_days",
                "tuning.tuner",
                "tuning.initial",
                "tuning.iterations",
                "tuning.grid_points_per_dim",
                "tuning.grid_max_points",
            ]),
            outs: model_outs(k, priority),
            code_version: code_version(env!("MODELS_SRC_HASH")),
        },
        Stage::Response => StageDef {
            name,
            deps: {
                let mut deps = vec![
                    Dep::Artifact(k.features.clone()),
                    Dep::Artifact(k.window.clone()),
                ];
                if let Some(path) = unit_costs {
                    deps.push(Dep::File {
                        name: "unit_costs".into(),
                        path: path.to_path_buf(),
                    });
                }
                deps
            },
            params: keys(&[
                "data.unit_costs",
                "response.min_weeks",
                "response.level_weeks",
                "response.coverage",
                "response.max_abs_elasticity",
                "response.current_price_lines",
                "response.decision_quantile",
            ]),
            outs: vec![k.response.clone(), k.history.clone()],
            code_version: code_version(env!("MODELS_SRC_HASH")),
        },
        Stage::Gate => StageDef {
            name,
            deps: gate_deps(k, priority),
            params: keys(&[
                "models.seed",
                "gate.p_value_threshold",
                "gate.distance_threshold",
                "gate.drift_share",
                "gate.stattest",
                "gate.max_abs_mean_outcome_difference",
                "gate.fairness_criterion",
                "gate.numerical_columns",
                "gate.categorical_columns",
                "gate.attribution_rows",
                "gate.attribution_permutations",
                "gate.override",
                "models.max_train_rows",
                "models.max_eval_rows",
            ]),
            outs: vec![
                k.gate_report.clone(),
                k.gate_html.clone(),
                k.gate_decision.clone(),
            ],
            code_version: code_version(env!("GATE_SRC_HASH")),
        },
    }
}

/// The bytes a serialisation thread produced (a panic there is an error here).
fn joined_bytes(
    r: std::thread::Result<features::Result<Vec<u8>>>,
) -> Result<features::Result<Vec<u8>>, LineageError> {
    r.map_err(|_| LineageError::Config("a serialisation thread panicked".into()))
}

pub(crate) fn spinner(enabled: bool, name: &str) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {prefix:>10} {msg} [{elapsed}]") {
        bar.set_style(style);
    }
    bar.set_prefix(name.to_string());
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

fn json<T: serde::Serialize>(value: &T) -> Result<serde_json::Value, serde_json::Error> {
    serde_json::to_value(value)
}

fn pretty<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut v = serde_json::to_vec_pretty(value)?;
    v.push(b'\n');
    Ok(v)
}

pub(crate) fn run_stage(
    stage: Stage,
    def: &StageDef,
    k: &ArtifactKeys,
    config: &PipelineConfig<'_>,
    params: &PipelineParams,
    runner: &mut Runner<'_>,
    bar: &ProgressBar,
) -> Result<StageOutcome, LineageError> {
    match stage {
        Stage::Etl => runner.run(def, |w| etl_stage(w, k, &config.raw, &params.etl, bar)),
        Stage::Features => {
            let p = params.feature_params();
            runner.run(def, |w| features_stage(w, k, &p, bar))
        }
        Stage::Split => runner.run(def, |w| split_stage(w, k, &params.preprocess, bar)),
        Stage::Models => {
            let cfg = params.train_config();
            let caps = params.row_caps();
            runner.run(def, |w| {
                models_stage(w, k, &cfg, caps, params.calibration(), bar)
            })
        }
        Stage::Response => {
            let costs = params.unit_costs().map(Path::new);
            runner.run(def, |w| response_stage(w, k, &params.response, costs, bar))
        }
        Stage::Gate => {
            let gp = params.gate_params();
            runner.run(def, |w| {
                crate::gate::gate_stage(w, k, &gp, params.models.seed, params.row_caps(), bar)
            })
        }
    }
}

/// Stage 1: raw export → cleaned transactions.
fn etl_stage(
    w: &mut StageWriter<'_>,
    k: &ArtifactKeys,
    raw_path: &Path,
    params: &etl::EtlParams,
    bar: &ProgressBar,
) -> StageResult {
    bar.set_message(format!("reading {}", raw_path.display()));
    let t0 = std::time::Instant::now();
    let raw = etl::read_raw_file_limited(raw_path, params.max_decompressed_bytes)?;
    tracing::debug!(ms = t0.elapsed().as_millis() as u64, "etl: read csv");
    bar.set_message(format!("validating and cleaning {} rows", raw.height()));
    let t0 = std::time::Instant::now();
    let (tx, report) = etl::clean(&raw, params)?;
    drop(raw);
    tracing::debug!(ms = t0.elapsed().as_millis() as u64, "etl: clean");
    bar.set_message("writing transactions.parquet");
    let t0 = std::time::Instant::now();
    // Handed on: a features stage run next takes the table as it is.
    w.put_decoded(&k.transactions, &tx.to_parquet()?, tx)?;
    tracing::debug!(ms = t0.elapsed().as_millis() as u64, "etl: write");
    Ok(StageReport {
        rows_in: report.rows_in,
        rows_out: report.rows_out,
        metrics: json(&report)?,
    })
}

/// Stage 2: transactions → row features, product summary, recent contexts, window.
fn features_stage(
    w: &mut StageWriter<'_>,
    k: &ArtifactKeys,
    params: &FeatureParams,
    bar: &ProgressBar,
) -> StageResult {
    bar.set_message("reading transactions");
    let t0 = std::time::Instant::now();
    // The table repeats seven of the transactions' columns: their encoded
    // pages are kept and copied into the table's file. The table itself is
    // the etl stage's when it ran just before (handed on, not decoded).
    let bytes = w.get(&k.transactions)?;
    let (tx, mut tx_pages) = match w.take_decoded::<etl::Transactions>(&k.transactions)? {
        Some(tx) => {
            let pages = tx.encoded_columns(bytes)?;
            (tx, pages)
        }
        None => etl::Transactions::from_parquet_keeping_pages(bytes)?,
    };
    tx_pages.retain(|name| {
        features::ID_COLUMNS.contains(&name) || features::NUMERIC_FEATURES.contains(&name)
    });
    tracing::debug!(
        ms = t0.elapsed().as_millis() as u64,
        "features: read transactions"
    );
    bar.set_message(format!("engineering features for {} rows", tx.len()));
    let t0 = std::time::Instant::now();
    let out = features::build_feature_files(&tx, params, k.stockcode.as_deref())?;
    drop(tx);
    tracing::debug!(ms = t0.elapsed().as_millis() as u64, "features: build");
    let t0 = std::time::Instant::now();
    bar.set_message("writing features");
    // Serialise the three tables on separate threads, then store them.
    let (table, summary, contexts) = std::thread::scope(|s| {
        let summary = s.spawn(|| out.summary.to_parquet());
        let contexts = s.spawn(|| out.contexts_parquet());
        let table = out.table_parquet_reusing(&tx_pages);
        (table, summary.join(), contexts.join())
    });
    w.put(&k.features, &table?)?;
    w.put(&k.summary, &joined_bytes(summary)??)?;
    w.put(&k.contexts, &joined_bytes(contexts)??)?;
    w.put(&k.window, &pretty(&out.window)?)?;
    tracing::debug!(ms = t0.elapsed().as_millis() as u64, "features: write");
    Ok(StageReport {
        rows_in: out.report.rows_in,
        rows_out: out.report.rows_out,
        metrics: json(&out.report)?,
    })
}

/// Stage 3: features → train/val/test model matrices and the preprocessor.
fn split_stage(
    w: &mut StageWriter<'_>,
    k: &ArtifactKeys,
    params: &PreprocessParams,
    bar: &ProgressBar,
) -> StageResult {
    bar.set_message("reading features");
    let table = FeatureTable::from_parquet(&w.get(&k.features)?)?;
    let window: TrainWindow = serde_json::from_slice(&w.get(&k.window)?)?;
    bar.set_message(format!(
        "splitting {} rows, fitting the preprocessor, writing model matrices",
        table.len()
    ));
    let parts = features::split_parquet(&table, &window, params)?;
    w.put(&k.train, &parts.train)?;
    w.put(&k.val, &parts.val)?;
    w.put(&k.test, &parts.test)?;
    w.put(&k.preprocessor, &parts.preprocessor.to_json()?)?;
    w.put(
        &k.feature_names,
        &pretty(&parts.preprocessor.feature_names)?,
    )?;
    Ok(StageReport {
        rows_in: table.len() as u64,
        rows_out: parts.report.rows.iter().sum(),
        metrics: json(&parts.report)?,
    })
}

/// A model's files as a manifest entry records them: file name → store key,
/// and store key → content hash.
pub(crate) type ModelFileKeys = (BTreeMap<String, String>, BTreeMap<String, String>);

/// Writes a model's files under its directory.
pub(crate) fn write_model(
    w: &mut StageWriter<'_>,
    k: &ArtifactKeys,
    model: &dyn Regressor,
) -> Result<ModelFileKeys, BoxError> {
    let dir = format!("{}/{}", k.models_dir, model.kind().name());
    let mut files = BTreeMap::new();
    let mut hashes = BTreeMap::new();
    for (name, bytes) in model.to_files()? {
        let key = format!("{dir}/{name}");
        w.put(&key, &bytes)?;
        hashes.insert(key.clone(), lineage::content_hash(&bytes));
        files.insert(name, key);
    }
    Ok((files, hashes))
}

/// Up to 8 rows of `val` (or `train` when `val` is empty): the loader's probe.
pub(crate) fn probe_rows(val: &DesignMatrix, train: &DesignMatrix) -> Vec<Vec<f64>> {
    let src = if val.is_empty() { train } else { val };
    (0..src.len().min(8))
        .map(|i| src.x.row(i).to_vec())
        .collect()
}

/// Reads a model matrix: all of it, or a time-stratified sample of `cap`
/// rows when it has more. Returns it with the rows in the file.
pub(crate) fn read_matrix(
    w: &StageWriter<'_>,
    key: &str,
    cap: usize,
) -> Result<(DesignMatrix, usize), BoxError> {
    let (m, rows) = DesignMatrix::from_parquet_sample(&w.get(key)?, cap)?;
    if rows > m.len() {
        tracing::info!(
            key,
            rows,
            sampled = m.len(),
            "reading a time-stratified sample"
        );
    }
    Ok((m, rows))
}

/// Stage 4: model matrices → tuned, refit and evaluated models, and the
/// candidate manifest (which the gate may promote).
fn models_stage(
    w: &mut StageWriter<'_>,
    k: &ArtifactKeys,
    cfg: &TrainConfig,
    caps: RowCaps,
    calibrate_on: Option<(&str, Option<f64>)>,
    bar: &ProgressBar,
) -> StageResult {
    bar.set_message("reading model matrices");
    let (train, train_of) = read_matrix(w, &k.train, caps.train)?;
    let (val, val_of) = read_matrix(w, &k.val, caps.eval)?;
    let (test, test_of) = read_matrix(w, &k.test, caps.eval)?;
    let outcome = models::train_all(cfg, &train, &val, &test, |m| bar.set_message(m.to_string()))?;
    if outcome.models.is_empty() {
        let why: Vec<String> = outcome
            .failures
            .iter()
            .map(|(k, e)| format!("{}: {e}", k.name()))
            .collect();
        return Err(format!("no model could be trained: {}", why.join("; ")).into());
    }
    bar.set_message("writing models and the manifest");
    let mut entries = Vec::new();
    let mut metrics = serde_json::Map::new();
    for m in &outcome.models {
        let kind = m.model.kind();
        // Group calibration on the validation window; the reported metrics
        // are those of the calibrated model (what serves).
        let calibration = match calibrate_on {
            Some((column, half_life)) => {
                GroupCalibration::fit(m.model.as_ref(), &val, column, half_life)?
            }
            None => None,
        };
        let (val_metrics, test_metrics) = match &calibration {
            Some(c) => (
                calibrated_metrics(m.model.as_ref(), &val, c)?,
                calibrated_metrics(m.model.as_ref(), &test, c)?,
            ),
            None => (m.val, m.test),
        };
        let (files, hashes) = write_model(w, k, m.model.as_ref())?;
        if let Some(study) = &m.study {
            w.put(
                &format!("{}/{}/trials.json", k.models_dir, kind.name()),
                &pretty(study)?,
            )?;
        }
        metrics.insert(
            kind.name().into(),
            serde_json::json!({
                "val": val_metrics,
                "test": test_metrics,
                "uncalibrated": { "val": m.val, "test": m.test },
                "calibration": calibration,
                "hyper_params": m.model.hyper_params(),
                "tuning": m.study.as_ref().map(|s| serde_json::json!({
                    "tuner": s.tuner,
                    "trials": s.trials.len(),
                    "failed_trials": s.trials.iter().filter(|t| t.value.is_none()).count(),
                    "best_val_mse_log": s.best().and_then(|t| t.value),
                    "seconds_per_trial": s.mean_trial_seconds(),
                    "fallback_reason": s.fallback_reason,
                })),
                "tuning_seconds": m.tuning_seconds,
                "fit_seconds": m.fit_seconds,
            }),
        );
        entries.push(ManifestEntry {
            kind,
            files,
            hashes,
            hyper_params: m.model.hyper_params(),
            val: val_metrics,
            test: test_metrics,
            calibration,
        });
    }
    for (kind, reason) in &outcome.failures {
        metrics.insert(kind.name().into(), serde_json::json!({ "error": reason }));
        // Keep the declared outputs honest: a failed model leaves a record.
        let dir = format!("{}/{}", k.models_dir, kind.name());
        let record = pretty(&serde_json::json!({ "trained": false, "error": reason }))?;
        w.put(&format!("{dir}/model.json"), &record)?;
        w.put(&format!("{dir}/trials.json"), &record)?;
        if *kind == ModelKind::Mlp {
            w.put(&format!("{dir}/weights.safetensors"), &[])?;
        }
    }
    let (bfiles, bhashes) = write_model(w, k, outcome.baseline.model.as_ref())?;
    let baseline = ManifestEntry {
        kind: ModelKind::Baseline,
        files: bfiles,
        hashes: bhashes,
        hyper_params: serde_json::json!({}),
        val: outcome.baseline.val,
        test: outcome.baseline.test,
        calibration: None,
    };
    metrics.insert(
        "baseline".into(),
        serde_json::json!({ "val": baseline.val, "test": baseline.test }),
    );
    let manifest = Manifest {
        version: 1,
        model_version: Manifest::version_of(&entries)?,
        stockcode: k.stockcode.clone(),
        feature_names: train.feature_names.clone(),
        models: entries,
        baseline: Some(baseline),
        probe: probe_rows(&val, &train),
        source: Some("models".into()),
    };
    w.put(&k.candidate, &manifest.to_json()?)?;
    metrics.insert(
        "model_version".into(),
        manifest.model_version.clone().into(),
    );
    metrics.insert(
        "candidate_order".into(),
        manifest
            .models
            .iter()
            .map(|e| e.kind.name())
            .collect::<Vec<_>>()
            .into(),
    );
    // Rows read of each matrix, and rows in it (more when sampled).
    metrics.insert(
        "rows".into(),
        serde_json::json!({
            "train": [train.len(), train_of],
            "val": [val.len(), val_of],
            "test": [test.len(), test_of],
        }),
    );
    Ok(StageReport {
        rows_in: (train_of + val_of + test_of) as u64,
        rows_out: manifest.models.len() as u64,
        metrics: serde_json::Value::Object(metrics),
    })
}

/// Stage 5: features → each product's price response (`response/response.json`)
/// and its weekly sales (`response/history.json`).
fn response_stage(
    w: &mut StageWriter<'_>,
    k: &ArtifactKeys,
    params: &ResponseParams,
    unit_costs: Option<&Path>,
    bar: &ProgressBar,
) -> StageResult {
    bar.set_message("reading features");
    let table = FeatureTable::from_parquet(&w.get(&k.features)?)?;
    let window: TrainWindow = serde_json::from_slice(&w.get(&k.window)?)?;
    let costs = match unit_costs {
        Some(path) => etl::read_unit_costs(path)?,
        None => BTreeMap::new(),
    };
    let codes = table.stock_codes()?;
    let ts = table.timestamps()?;
    let price = table.numeric("unit_price")?;
    let quantity = table.dataframe().column("quantity")?.i64()?;
    let lines: Vec<Line<'_>> = (0..table.len())
        .map(|i| Line {
            stock_code: codes[i],
            ts: ts[i],
            price: price[i],
            quantity: quantity.get(i).map_or(f64::NAN, |q| q as f64),
        })
        .collect();
    bar.set_message(format!(
        "fitting price responses from {} lines",
        lines.len()
    ));
    let model = fit_response(
        &lines,
        &Windows {
            start: window.start,
            train_end: window.train_end,
            val_end: window.val_end,
        },
        params,
        &costs,
    )?;
    w.put(&k.response, &model.to_json()?)?;
    w.put(&k.history, &SalesHistory::from_lines(&lines).to_json()?)?;
    let mut elasticities: Vec<f64> = model
        .products
        .iter()
        .map(|p| p.weekly_elasticity(p.current_price).0)
        .collect();
    elasticities.sort_by(f64::total_cmp);
    let q = |p: f64| {
        elasticities
            .get(((elasticities.len() as f64 - 1.0) * p).round() as usize)
            .copied()
    };
    Ok(StageReport {
        rows_in: lines.len() as u64,
        rows_out: model.products.len() as u64,
        metrics: serde_json::json!({
            "products": model.products.len(),
            "products_with_unit_cost": model.products.iter().filter(|p| p.unit_cost.is_some()).count(),
            "weekly_band": model.weekly_band,
            "line_band": model.line_band,
            "weekly_elasticity_at_current_price": {
                "p10": q(0.1), "median": q(0.5), "p90": q(0.9),
            },
            "mean_own_weight": model.products.iter().map(|p| p.own_weight).sum::<f64>() / model.products.len().max(1) as f64,
            "test_calibration": model.test_calibration,
            "diagnostics": model.diagnostics,
        }),
    })
}
