//! The promotion gate: drift of the latest (test) window against the training
//! window, fairness and attributions of the candidate model; the production
//! manifest is written only when the gate passes (or is overridden).

use drift::{Column, DriftParams, FairnessParams, GateReport};
use features::{FeatureTable, TrainWindow};
use lineage::{LineageError, Params};
use models::{DesignMatrix, Manifest};
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

fn strings(p: &Params, key: &str) -> Result<Vec<String>, LineageError> {
    p.get(key)
        .and_then(|v| v.as_array())
        .ok_or_else(|| LineageError::Params(format!("`{key}` must be a list of column names")))?
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| LineageError::Params(format!("`{key}` must hold strings")))
        })
        .collect()
}

/// Parses `[gate]`.
pub fn gate_params(p: &Params) -> Result<GateParams, LineageError> {
    let mut overrides = std::collections::BTreeMap::new();
    if let Some(table) = p.get("gate.stattest").and_then(|v| v.as_table()) {
        for (column, test) in table {
            let test: drift::StatTest = test
                .as_str()
                .and_then(|s| serde_json::from_value(serde_json::Value::String(s.into())).ok())
                .ok_or_else(|| {
                    LineageError::Params(format!(
                        "`gate.stattest.{column}` must be one of ks, chi_square, z_test, wasserstein, jensen_shannon"
                    ))
                })?;
            overrides.insert(column.clone(), test);
        }
    }
    Ok(GateParams {
        drift: DriftParams {
            p_value_threshold: p.f64("gate.p_value_threshold")?,
            distance_threshold: p.f64("gate.distance_threshold")?,
            drift_share: p.f64("gate.drift_share")?,
            stattest_overrides: overrides,
        },
        fairness: FairnessParams {
            max_abs_mean_outcome_difference: p.f64("gate.max_abs_mean_outcome_difference")?,
            criterion: match p.str("gate.fairness_criterion")? {
                "mean_outcome_difference" => drift::FairnessCriterion::MeanOutcomeDifference,
                "excess_mean_outcome_difference" => {
                    drift::FairnessCriterion::ExcessMeanOutcomeDifference
                }
                other => {
                    return Err(LineageError::Params(format!(
                        "`gate.fairness_criterion` must be \"mean_outcome_difference\" or \"excess_mean_outcome_difference\", found {other:?}"
                    )));
                }
            },
        },
        numerical_columns: strings(p, "gate.numerical_columns")?,
        categorical_columns: strings(p, "gate.categorical_columns")?,
        attribution_rows: p.usize("gate.attribution_rows")?,
        attribution_permutations: p.usize("gate.attribution_permutations")?,
        override_gate: p
            .get("gate.override")
            .and_then(|v| v.as_bool())
            .ok_or_else(|| LineageError::Params("`gate.override` must be true or false".into()))?,
    })
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
                let col = table.numeric(other)?;
                rows.iter().map(|&i| format!("{}", col[i])).collect()
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
