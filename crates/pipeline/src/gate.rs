//! The promotion gate: drift of the latest (test) window against the training
//! window, fairness and attributions of the candidate models. Every gate run
//! writes a release (the serving artifacts, the verdict and the report,
//! immutable); production moves to it only when the gate passes, or when an
//! explicit override (`gate.override = true`, recorded in the lock) says so.

use drift::{Column, DriftParams, FairnessParams, GateReport};
use features::{FeatureTable, TrainWindow};
use indicatif::ProgressBar;
use lineage::{ArtifactKeys, StageReport, StageWriter, Verdict};
use models::{DesignMatrix, Manifest};
use serde::{Deserialize, Serialize};

use crate::params::RowCaps;
use crate::stages::StageResult;
use rand::SeedableRng;
use rand::seq::index::sample;

/// `[gate]` params.
#[derive(Debug, Clone, PartialEq)]
pub struct GateParams {
    /// Drift thresholds.
    pub drift: DriftParams,
    /// Fairness threshold.
    pub fairness: FairnessParams,
    /// Numerical columns of the features table tested for drift.
    pub numerical_columns: Vec<String>,
    /// Categorical columns tested for drift.
    pub categorical_columns: Vec<String>,
    /// Test rows explained by Shapley values.
    pub attribution_rows: usize,
    /// Permutations per explained row.
    pub attribution_permutations: usize,
    /// Promote even if the gate fails (recorded in the lock and the report).
    pub override_gate: bool,
}

/// The drift columns of `rows` of a features table. `quantity` (units sold)
/// and the string columns `country`/`stock_code` are accepted besides the
/// numeric features.
pub fn feature_columns(
    table: &FeatureTable,
    rows: &[usize],
    numerical: &[String],
    categorical: &[String],
) -> Result<Vec<Column>, features::FeatureError> {
    let mut out = Vec::new();
    for name in numerical {
        let values: Vec<f64> = if name == "quantity" {
            let q = table.dataframe().column("quantity")?.i64()?;
            rows.iter()
                .map(|&i| q.get(i).map_or(f64::NAN, |v| v as f64))
                .collect()
        } else {
            let col = table.numeric(name)?;
            rows.iter().map(|&i| col[i]).collect()
        };
        out.push(Column::numerical(name, values));
    }
    for name in categorical {
        let values: Vec<String> = match name.as_str() {
            "country" => {
                let c = table.countries()?;
                rows.iter().map(|&i| c[i].to_string()).collect()
            }
            "stock_code" => {
                let c = table.stock_codes()?;
                rows.iter().map(|&i| c[i].to_string()).collect()
            }
            other => {
                // A numeric column read as categories (`is_registered`):
                // each distinct value formatted once.
                let col = table.numeric(other)?;
                let mut labels: std::collections::HashMap<u64, String> = Default::default();
                rows.iter()
                    .map(|&i| {
                        labels
                            .entry(col[i].to_bits())
                            .or_insert_with(|| format!("{}", col[i]))
                            .clone()
                    })
                    .collect()
            }
        };
        out.push(Column::categorical(name, values));
    }
    Ok(out)
}

/// Everything the gate needs, already loaded.
pub struct GateInputs<'a> {
    /// Row features.
    pub table: &'a FeatureTable,
    /// The split window.
    pub window: &'a TrainWindow,
    /// The candidate manifest.
    pub candidate: &'a Manifest,
    /// The candidate models that load, in priority order.
    pub models: &'a [(models::ModelKind, Box<dyn models::Regressor>)],
    /// Training matrix (attribution background).
    pub train: &'a DesignMatrix,
    /// Test matrix (fairness and attributions).
    pub test: &'a DesignMatrix,
}

/// Runs drift, the fairness check of every candidate model, and the
/// attributions of the first model that passes (the one that will serve).
pub fn evaluate(
    title: &str,
    inputs: &GateInputs<'_>,
    params: &GateParams,
    seed: u64,
) -> Result<GateReport, Box<dyn std::error::Error + Send + Sync>> {
    // Reference = the training window, current = the test window.
    let [reference_rows, _, current_rows] = inputs.window.partition(inputs.table.timestamps()?);
    let reference = feature_columns(
        inputs.table,
        &reference_rows,
        &params.numerical_columns,
        &params.categorical_columns,
    )?;
    let current = feature_columns(
        inputs.table,
        &current_rows,
        &params.numerical_columns,
        &params.categorical_columns,
    )?;
    let drift_report = drift::detect(&reference, &current, &params.drift)?;

    let names = &inputs.candidate.feature_names;
    let registered = names
        .iter()
        .position(|n| n == "is_registered")
        .ok_or("the model matrix has no is_registered column")?;
    let sensitive: Vec<f64> = inputs.test.x.column(registered).to_vec();
    let y = inputs.test.y.to_vec();
    let mut fairness = Vec::new();
    for (kind, model) in inputs.models {
        let pred = model.predict_matrix(inputs.test)?;
        let report = drift::fairness(
            "is_registered",
            &y,
            &pred.to_vec(),
            &sensitive,
            &params.fairness,
        )?;
        fairness.push(drift::ModelFairness {
            model: kind.name().into(),
            report,
        });
    }

    // The model that will serve: the first that passes, else (when an
    // override promotes the candidate as it is) the first candidate.
    let serving = fairness
        .iter()
        .position(|f| f.report.acceptable)
        .and_then(|i| inputs.models.get(i))
        .or(inputs.models.first());
    let attributions = match serving {
        None => None,
        Some((kind, model)) => {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let pick = |m: &DesignMatrix, n: usize, rng: &mut rand_chacha::ChaCha8Rng| {
                let idx = sample(rng, m.len(), n.min(m.len())).into_vec();
                m.x.select(ndarray::Axis(0), &idx)
            };
            let explain = pick(inputs.test, params.attribution_rows, &mut rng);
            let background = pick(inputs.train, 100, &mut rng);
            let a = drift::sampling_shapley(
                &|x| model.predict(x).map_err(|e| e.to_string()),
                names,
                explain.view(),
                background.view(),
                params.attribution_permutations,
                seed,
            )?;
            Some((kind.name().to_string(), a))
        }
    };
    Ok(GateReport::new(title, drift_report, fairness, attributions))
}

/// The production manifest for the models that passed: the candidate with
/// only those models, in priority order, and a version of its own.
pub fn promoted_manifest(
    candidate: &Manifest,
    promoted: &[String],
) -> Result<Manifest, models::ModelError> {
    let models: Vec<models::ManifestEntry> = candidate
        .models
        .iter()
        .filter(|e| promoted.iter().any(|p| p == e.kind.name()))
        .cloned()
        .collect();
    if models.len() == candidate.models.len() {
        return Ok(candidate.clone());
    }
    Ok(Manifest {
        model_version: Manifest::version_of(&models)?,
        models,
        ..candidate.clone()
    })
}

/// What the gate decided (`gate/decision.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateDecision {
    /// The release it wrote.
    pub release: String,
    /// Its verdict.
    pub verdict: Verdict,
    /// Whether production now points at it.
    pub promoted: bool,
    /// The models the release serves, in failover order.
    pub models: Vec<String>,
}

/// The gate stage: evaluate the candidate, write the report and a release,
/// and promote the release only when the gate passes (or is overridden).
/// A blocked release is kept (and listed), so a person can still promote it
/// with a reason; production stays where it was.
pub(crate) fn gate_stage(
    w: &mut StageWriter<'_>,
    k: &ArtifactKeys,
    gp: &GateParams,
    seed: u64,
    caps: RowCaps,
    bar: &ProgressBar,
) -> StageResult {
    bar.set_message("gate: reading features and the candidate");
    let table = FeatureTable::from_parquet(&w.get(&k.features)?)?;
    let window: TrainWindow = serde_json::from_slice(&w.get(&k.window)?)?;
    let (train, _) = crate::stages::read_matrix(w, &k.train, caps.train)?;
    let (test, _) = crate::stages::read_matrix(w, &k.test, caps.eval)?;
    let candidate = Manifest::from_json(&w.get(&k.candidate)?)?;
    let inputs_store = w.inputs();
    let (loaded, skipped) =
        models::FailoverLoader::new(&inputs_store).load_all(&k.candidate, &candidate);
    let unloadable: Vec<String> = skipped
        .iter()
        .map(|s| format!("{}: {}", s.kind.name(), s.reason))
        .collect();
    if loaded.is_empty() {
        return Err(format!("no candidate model loads: {}", unloadable.join("; ")).into());
    }
    bar.set_message("gate: drift, fairness and attributions");
    let inputs = GateInputs {
        table: &table,
        window: &window,
        candidate: &candidate,
        models: &loaded,
        train: &train,
        test: &test,
    };
    let title = format!(
        "Promotion gate: candidate models version {} — training window vs test window",
        candidate.model_version
    );
    let mut report = evaluate(&title, &inputs, gp, seed)?;
    report.overridden = !report.passed && gp.override_gate;
    let report_json = report.to_json()?;
    let report_html = drift::render_html(&report)?;
    w.put(&k.gate_report, &report_json)?;
    w.put(&k.gate_html, report_html.as_bytes())?;

    // What the release serves: the models that passed, in priority order; the
    // whole candidate when an override promotes it, or when none passed (the
    // release is then blocked, and serves only if a person promotes it).
    let served: Vec<String> = if gp.override_gate || report.promoted_models.is_empty() {
        candidate
            .models
            .iter()
            .map(|e| e.kind.name().to_string())
            .collect()
    } else {
        report.promoted_models.clone()
    };
    let manifest = promoted_manifest(&candidate, &served)?;
    let verdict = Verdict {
        passed: report.passed,
        overridden: report.overridden,
        failures: report.failures.clone(),
    };

    bar.set_message("gate: writing the release");
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for key in [
        &k.summary,
        &k.contexts,
        &k.preprocessor,
        &k.feature_names,
        &k.response,
        &k.history,
    ] {
        files.push((key.clone(), w.get(key)?));
    }
    for entry in &manifest.models {
        for key in entry.files.values() {
            files.push((key.clone(), w.get(key)?));
        }
    }
    files.push((k.manifest.clone(), manifest.to_json()?));
    files.push((k.gate_report.clone(), report_json));
    files.push((k.gate_html.clone(), report_html.into_bytes()));
    let summary = serde_json::json!({
        "model_version": manifest.model_version,
        "models": manifest.models.iter().map(|e| serde_json::json!({
            "model": e.kind.name(),
            "test_rmsle": e.test.rmsle,
            "test_mae": e.test.mae,
        })).collect::<Vec<_>>(),
        "held_back": report.held_back,
        "drifted_columns": report.drift.drifted_columns(),
    });
    let source = candidate.source.as_deref().unwrap_or("models");
    let releases = w.releases(k.stockcode.as_deref());
    let release = releases.create(&files, source, verdict.clone(), summary)?;

    let promote = verdict.promotable();
    let decision = GateDecision {
        release: release.id.clone(),
        verdict: verdict.clone(),
        promoted: promote,
        models: served.clone(),
    };
    w.put(&k.gate_decision, &serde_json::to_vec_pretty(&decision)?)?;
    if !promote {
        let current = releases.production()?.map_or_else(
            || "nothing".to_string(),
            |p| format!("release {}", p.release),
        );
        return Err(format!(
            "promotion gate failed: {}. Release {} is recorded as blocked; production still serves {current} (report: {}, {}; to promote anyway: --set gate.override=true, or `cargo xtask promote {} --reason ...`)",
            report.failures.join("; "),
            release.id,
            k.gate_report,
            k.gate_html,
            release.id,
        )
        .into());
    }
    let reason = if report.passed {
        "the promotion gate passed".to_string()
    } else {
        tracing::warn!(failures = ?report.failures, "promotion gate failed; promoted because gate.override = true");
        format!(
            "gate.override = true (the gate failed: {})",
            report.failures.join("; ")
        )
    };
    let pointer = releases.promote(&release.id, "gate", &reason)?;
    let metrics = serde_json::json!({
        "release": release.id,
        "production_release": pointer.release,
        "passed": report.passed,
        "override": gp.override_gate,
        "promoted_models": served,
        "held_back": report.held_back,
        "unloadable": unloadable,
        "failures": report.failures,
        "model_version": manifest.model_version,
        "drifted_columns": report.drift.drifted_columns(),
        "share_of_drifted_columns": report.drift.share_of_drifted_columns,
        "dataset_drift": report.drift.dataset_drift,
        "fairness": report.fairness.iter().map(|f| serde_json::json!({
            "model": f.model,
            "mean_outcome_difference": f.report.mean_outcome_difference,
            "actual_outcome_difference": f.report.actual_outcome_difference,
            "acceptable": f.report.acceptable,
        })).collect::<Vec<_>>(),
        "top_features": report.attributions.as_ref().map(|a| a.top(5)),
    });
    Ok(StageReport {
        rows_in: (train.len() + test.len()) as u64,
        rows_out: 1,
        metrics,
    })
}
