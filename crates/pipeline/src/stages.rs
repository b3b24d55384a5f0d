//! Stage wiring: artifact names, params parsing, and the body of each stage.

use std::path::Path;
use std::time::Duration;

use features::{FeatureParams, FeatureTable, PreprocessParams, Scaling, SplitRule, TrainWindow};
use indicatif::{ProgressBar, ProgressStyle};
use lineage::{
    Dep, LineageError, Params, Runner, StageDef, StageOutcome, StageReport, StageWriter,
};

use crate::{PipelineConfig, Stage};

/// Boxed error returned by stage bodies.
type StageResult = Result<StageReport, Box<dyn std::error::Error + Send + Sync>>;

/// The artifact keys of one pipeline instance (all products, or one stock code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactKeys {
    /// The stock code, if the run is for one product.
    pub stockcode: Option<String>,
    /// Cleaned transactions (shared by every instance).
    pub transactions: String,
    /// Row-level features.
    pub features: String,
    /// Per-product summary.
    pub summary: String,
    /// Recent contexts per product.
    pub contexts: String,
    /// Train window.
    pub window: String,
    /// Training matrix.
    pub train: String,
    /// Validation matrix.
    pub val: String,
    /// Test matrix.
    pub test: String,
    /// Fitted preprocessor.
    pub preprocessor: String,
    /// Model-matrix column names.
    pub feature_names: String,
}

impl ArtifactKeys {
    /// Keys for all products (`None`) or one stock code.
    pub fn new(stockcode: Option<&str>) -> Self {
        let scope = stockcode
            .map(|c| format!("/stockcode={c}"))
            .unwrap_or_default();
        let f = |stage: &str, name: &str| format!("{stage}{scope}/{name}");
        Self {
            stockcode: stockcode.map(str::to_string),
            transactions: "etl/transactions.parquet".into(),
            features: f("features", "features.parquet"),
            summary: f("features", "product_summary.parquet"),
            contexts: f("features", "product_contexts.parquet"),
            window: f("features", "window.json"),
            train: f("split", "train.parquet"),
            val: f("split", "val.parquet"),
            test: f("split", "test.parquet"),
            preprocessor: f("split", "preprocessor.json"),
            feature_names: f("split", "feature_names.json"),
        }
    }

    fn stage_name(&self, stage: Stage) -> String {
        match (&self.stockcode, stage) {
            (Some(code), Stage::Features | Stage::Split) => format!("{}@{code}", stage.name()),
            _ => stage.name().to_string(),
        }
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

/// The definition of `stage` for these artifact keys.
pub(crate) fn definition(stage: Stage, k: &ArtifactKeys, raw: &Path) -> StageDef {
    let name = k.stage_name(stage);
    match stage {
        Stage::Etl => StageDef {
            name,
            deps: vec![Dep::File {
                name: "raw".into(),
                path: raw.to_path_buf(),
            }],
            params: keys(&["etl.product_code_pattern", "etl.excluded_stock_codes"]),
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
    }
}

/// `[etl]` params.
pub fn etl_params(p: &Params) -> Result<etl::EtlParams, LineageError> {
    let codes = p
        .get("etl.excluded_stock_codes")
        .and_then(|v| v.as_array())
        .ok_or_else(|| LineageError::Params("`etl.excluded_stock_codes` must be a list".into()))?
        .iter()
        .map(|v| {
            v.as_str().map(str::to_string).ok_or_else(|| {
                LineageError::Params("`etl.excluded_stock_codes` must hold strings".into())
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(etl::EtlParams {
        product_code_pattern: p.str("etl.product_code_pattern")?.to_string(),
        excluded_stock_codes: codes,
    })
}

/// `[features]` and `[split]` params.
pub fn feature_params(p: &Params) -> Result<FeatureParams, LineageError> {
    let split = match p.str("split.method")? {
        "fraction" => SplitRule::Fraction {
            train: p.f64("split.train_fraction")?,
            val: p.f64("split.val_fraction")?,
        },
        "date" => SplitRule::Date {
            train_end: p.str("split.train_end")?.to_string(),
            val_end: p.str("split.val_end")?.to_string(),
        },
        other => {
            return Err(LineageError::Params(format!(
                "`split.method` must be \"fraction\" or \"date\", found {other:?}"
            )));
        }
    };
    Ok(FeatureParams {
        customer_window_days: p.i64("features.customer_window_days")?,
        recent_contexts: p.usize("features.recent_contexts")?,
        split,
    })
}

/// `[preprocess]` params.
pub fn preprocess_params(p: &Params) -> Result<PreprocessParams, LineageError> {
    let scaling = match p.str("preprocess.scaling")? {
        "standard" => Scaling::Standard,
        "minmax" => Scaling::Minmax,
        "none" => Scaling::None,
        other => {
            return Err(LineageError::Params(format!(
                "`preprocess.scaling` must be standard, minmax or none, found {other:?}"
            )));
        }
    };
    Ok(PreprocessParams {
        scaling,
        target_encoding_smoothing: p.f64("preprocess.target_encoding_smoothing")?,
        target_encoding_folds: p.usize("preprocess.target_encoding_folds")?,
        min_country_rows: p.usize("preprocess.min_country_rows")?,
    })
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
    runner: &mut Runner<'_>,
    bar: &ProgressBar,
) -> Result<StageOutcome, LineageError> {
    let params = &config.params;
    match stage {
        Stage::Etl => {
            let etl_params = etl_params(params)?;
            let raw_path = config.raw.clone();
            runner.run(def, |w: &mut StageWriter<'_>| -> StageResult {
                bar.set_message(format!("reading {}", raw_path.display()));
                let t0 = std::time::Instant::now();
                let raw = etl::read_raw_file(&raw_path)?;
                tracing::debug!(ms = t0.elapsed().as_millis() as u64, "etl: read csv");
                bar.set_message(format!("validating and cleaning {} rows", raw.height()));
                let t0 = std::time::Instant::now();
                let (tx, report) = etl::clean(&raw, &etl_params)?;
                tracing::debug!(ms = t0.elapsed().as_millis() as u64, "etl: clean");
                bar.set_message("writing transactions.parquet");
                let t0 = std::time::Instant::now();
                w.put(&k.transactions, &tx.to_parquet()?)?;
                tracing::debug!(ms = t0.elapsed().as_millis() as u64, "etl: write");
                Ok(StageReport {
                    rows_in: report.rows_in,
                    rows_out: report.rows_out,
                    metrics: json(&report)?,
                })
            })
        }
        Stage::Features => {
            let fp = feature_params(params)?;
            runner.run(def, |w: &mut StageWriter<'_>| -> StageResult {
                bar.set_message("reading transactions");
                let t0 = std::time::Instant::now();
                let tx = etl::Transactions::from_parquet(&w.get(&k.transactions)?)?;
                tracing::debug!(
                    ms = t0.elapsed().as_millis() as u64,
                    "features: read transactions"
                );
                bar.set_message(format!("engineering features for {} rows", tx.len()));
                let t0 = std::time::Instant::now();
                let out = features::build_features(&tx, &fp, k.stockcode.as_deref())?;
                tracing::debug!(ms = t0.elapsed().as_millis() as u64, "features: build");
                let t0 = std::time::Instant::now();
                bar.set_message("writing features");
                // Serialise the three tables on separate threads, then store them.
                let (table, summary, contexts) = std::thread::scope(|s| {
                    let summary = s.spawn(|| out.summary.to_parquet());
                    let contexts = s.spawn(|| out.contexts.to_parquet());
                    let table = out.table.to_parquet();
                    (table, summary.join(), contexts.join())
                });
                let joined = |r: std::thread::Result<features::Result<Vec<u8>>>| {
                    r.map_err(|_| LineageError::Config("a serialisation thread panicked".into()))
                };
                w.put(&k.features, &table?)?;
                w.put(&k.summary, &joined(summary)??)?;
                w.put(&k.contexts, &joined(contexts)??)?;
                w.put(&k.window, &pretty(&out.window)?)?;
                tracing::debug!(ms = t0.elapsed().as_millis() as u64, "features: write");
                Ok(StageReport {
                    rows_in: out.report.rows_in,
                    rows_out: out.report.rows_out,
                    metrics: json(&out.report)?,
                })
            })
        }
        Stage::Split => {
            let pp = preprocess_params(params)?;
            runner.run(def, |w: &mut StageWriter<'_>| -> StageResult {
                bar.set_message("reading features");
                let table = FeatureTable::from_parquet(&w.get(&k.features)?)?;
                let window: TrainWindow = serde_json::from_slice(&w.get(&k.window)?)?;
                bar.set_message(format!(
                    "splitting {} rows, fitting the preprocessor",
                    table.len()
                ));
                let parts = features::split(&table, &window, &pp)?;
                bar.set_message("writing model matrices");
                let (train, val, test) = std::thread::scope(|s| {
                    let val = s.spawn(|| parts.val.to_parquet());
                    let test = s.spawn(|| parts.test.to_parquet());
                    (parts.train.to_parquet(), val.join(), test.join())
                });
                let joined = |r: std::thread::Result<features::Result<Vec<u8>>>| {
                    r.map_err(|_| LineageError::Config("a serialisation thread panicked".into()))
                };
                w.put(&k.train, &train?)?;
                w.put(&k.val, &joined(val)??)?;
                w.put(&k.test, &joined(test)??)?;
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
            })
        }
    }
}
