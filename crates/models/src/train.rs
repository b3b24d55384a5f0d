//! Tuning, refitting and evaluating every model: the body of the models stage.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use tuning::{Assignment, Param, SearchSpace, Study, TunerConfig, tune};

use crate::{
    BaselineParams, DesignMatrix, ElasticNetParams, GbmParams, Metrics, MlpParams, ModelError,
    ModelKind, Optimizer, Regressor, Result, SvrParams, evaluate, subset,
};

/// How the models stage tunes and trains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Models to train, in serving priority order.
    pub priority: Vec<ModelKind>,
    /// The search each model gets.
    pub tuner: TunerConfig,
    /// Training rows used by each trial's quick fit (evenly strided in time);
    /// the best parameters are refit on all training rows.
    pub tuning_rows: usize,
    /// Validation rows scored by each trial.
    pub tuning_val_rows: usize,
    /// Epoch cap of an MLP trial's quick fit.
    pub tuning_mlp_epochs: usize,
    /// Epoch cap of the final MLP fit.
    pub mlp_max_epochs: usize,
    /// SVR training rows (stratified subsample).
    pub svr_rows: usize,
    /// Seed for every model.
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            priority: vec![
                ModelKind::Mlp,
                ModelKind::Lightgbm,
                ModelKind::Svr,
                ModelKind::ElasticNet,
            ],
            tuner: TunerConfig::ego(4, 6, 42),
            tuning_rows: 20_000,
            tuning_val_rows: 10_000,
            tuning_mlp_epochs: 6,
            mlp_max_epochs: 30,
            svr_rows: 2_000,
            seed: 42,
        }
    }
}

/// A tuned, refit and evaluated model.
pub struct TrainedModel {
    /// The model.
    pub model: Box<dyn Regressor>,
    /// Validation metrics.
    pub val: Metrics,
    /// Test metrics.
    pub test: Metrics,
    /// The tuning study (none for the baseline).
    pub study: Option<Study>,
    /// Seconds spent tuning.
    pub tuning_seconds: f64,
    /// Seconds of the final fit.
    pub fit_seconds: f64,
}

/// The outcome of [`train_all`].
pub struct TrainOutcome {
    /// Trained models in priority order.
    pub models: Vec<TrainedModel>,
    /// Models that could not be trained, with the reason.
    pub failures: Vec<(ModelKind, String)>,
    /// The per-product median baseline.
    pub baseline: TrainedModel,
}

fn strided(m: &DesignMatrix, n: usize) -> DesignMatrix {
    if m.len() <= n || n == 0 {
        return m.clone();
    }
    let step = m.len() as f64 / n as f64;
    let idx: Vec<usize> = (0..n).map(|i| (i as f64 * step) as usize).collect();
    subset(m, &idx)
}

fn space(kind: ModelKind) -> Result<SearchSpace> {
    let params = match kind {
        ModelKind::Mlp => vec![
            Param::int("hidden_layers", 1, 3),
            Param::int("units", 16, 128),
            Param::float("dropout", 0.0, 0.3, false),
            Param::float("learning_rate", 1e-4, 1e-2, true),
            Param::categorical("batch_size", &["256", "512", "1024"]),
            Param::categorical("optimizer", &["adam", "adamw", "rmsprop", "sgd"]),
            Param::categorical("batch_norm", &["false", "true"]),
        ],
        ModelKind::Lightgbm => vec![
            Param::int("num_leaves", 15, 255),
            Param::float("learning_rate", 0.02, 0.3, true),
            Param::int("min_data_in_leaf", 10, 200),
            Param::float("feature_fraction", 0.5, 1.0, false),
            Param::float("lambda_l2", 1e-3, 10.0, true),
        ],
        ModelKind::Svr => vec![
            Param::float("c", 0.1, 100.0, true),
            Param::float("epsilon", 0.01, 0.5, true),
            Param::float("gamma_width", 1.0, 300.0, true),
        ],
        ModelKind::ElasticNet => vec![
            Param::float("alpha", 1e-5, 1.0, true),
            Param::float("l1_ratio", 0.0, 1.0, false),
        ],
        ModelKind::Baseline => {
            return Err(ModelError::Unavailable(
                "the baseline has nothing to tune".into(),
            ));
        }
    };
    SearchSpace::new(params).map_err(|e| ModelError::Unavailable(e.to_string()))
}

fn mlp_params(a: &Assignment, cfg: &TrainConfig, epochs: usize) -> Result<MlpParams, String> {
    let optimizer = match a.cat("optimizer")? {
        "adam" => Optimizer::Adam,
        "adamw" => Optimizer::Adamw,
        "rmsprop" => Optimizer::Rmsprop,
        _ => Optimizer::Sgd,
    };
    Ok(MlpParams {
        hidden_layers: a.int("hidden_layers")? as usize,
        units: a.int("units")? as usize,
        dropout: a.float("dropout")?,
        learning_rate: a.float("learning_rate")?,
        batch_size: a
            .cat("batch_size")?
            .parse()
            .map_err(|e| format!("batch_size: {e}"))?,
        optimizer,
        batch_norm: a.cat("batch_norm")? == "true",
        weight_decay: if optimizer == Optimizer::Adamw {
            1e-4
        } else {
            0.0
        },
        max_epochs: epochs,
        patience: if epochs <= 8 { 2 } else { 4 },
        seed: cfg.seed,
        ..MlpParams::default()
    })
}

fn gbm_params(a: &Assignment, cfg: &TrainConfig) -> Result<GbmParams, String> {
    Ok(GbmParams {
        num_leaves: a.int("num_leaves")? as u32,
        learning_rate: a.float("learning_rate")?,
        min_data_in_leaf: a.int("min_data_in_leaf")? as u32,
        feature_fraction: a.float("feature_fraction")?,
        lambda_l2: a.float("lambda_l2")?,
        seed: cfg.seed,
        ..GbmParams::default()
    })
}

fn svr_params(a: &Assignment, rows: usize) -> Result<SvrParams, String> {
    Ok(SvrParams {
        c: a.float("c")?,
        epsilon: a.float("epsilon")?,
        gamma_width: a.float("gamma_width")?,
        max_train_rows: rows,
    })
}

fn en_params(a: &Assignment) -> Result<ElasticNetParams, String> {
    Ok(ElasticNetParams {
        alpha: a.float("alpha")?,
        l1_ratio: a.float("l1_ratio")?,
        ..ElasticNetParams::default()
    })
}

/// Fits one model of `kind` with the hyper-parameters in `a`.
fn fit_kind(
    kind: ModelKind,
    a: &Assignment,
    cfg: &TrainConfig,
    train: &DesignMatrix,
    val: &DesignMatrix,
    final_fit: bool,
) -> Result<Box<dyn Regressor>, String> {
    let s = |e: ModelError| e.to_string();
    Ok(match kind {
        ModelKind::Mlp => {
            let epochs = if final_fit {
                cfg.mlp_max_epochs
            } else {
                cfg.tuning_mlp_epochs
            };
            Box::new(
                mlp_params(a, cfg, epochs)?
                    .fit(train, val, None)
                    .map_err(s)?,
            )
        }
        ModelKind::Lightgbm => Box::new(gbm_params(a, cfg)?.fit(train, Some(val)).map_err(s)?),
        ModelKind::Svr => {
            let rows = if final_fit {
                cfg.svr_rows
            } else {
                cfg.svr_rows.min(train.len())
            };
            Box::new(svr_params(a, rows)?.fit(train).map_err(s)?)
        }
        ModelKind::ElasticNet => Box::new(en_params(a)?.fit(train).map_err(s)?),
        ModelKind::Baseline => Box::new(BaselineParams::default().fit(train).map_err(s)?),
    })
}

/// Tunes one model on quick fits, refits the best on all training rows and
/// evaluates it on validation and test.
pub fn tune_and_fit(
    kind: ModelKind,
    cfg: &TrainConfig,
    train: &DesignMatrix,
    val: &DesignMatrix,
    test: &DesignMatrix,
) -> Result<TrainedModel> {
    let quick_train = strided(train, cfg.tuning_rows);
    let quick_val = strided(val, cfg.tuning_val_rows);
    let space = space(kind)?;
    let started = Instant::now();
    let study = tune(&space, &cfg.tuner, |a| {
        let model = fit_kind(kind, a, cfg, &quick_train, &quick_val, false)?;
        evaluate(model.as_ref(), &quick_val)
            .map(|m| m.mse_log)
            .map_err(|e| e.to_string())
    })
    .map_err(|e| ModelError::Training {
        model: kind.name(),
        reason: e.to_string(),
    })?;
    let tuning_seconds = started.elapsed().as_secs_f64();
    let best = study
        .best()
        .map(|t| t.params.clone())
        .ok_or_else(|| ModelError::Training {
            model: kind.name(),
            reason: "no successful trial".into(),
        })?;
    let started = Instant::now();
    let model =
        fit_kind(kind, &best, cfg, train, val, true).map_err(|reason| ModelError::Training {
            model: kind.name(),
            reason,
        })?;
    let fit_seconds = started.elapsed().as_secs_f64();
    Ok(TrainedModel {
        val: evaluate(model.as_ref(), val)?,
        test: evaluate(model.as_ref(), test)?,
        model,
        study: Some(study),
        tuning_seconds,
        fit_seconds,
    })
}

/// Trains the baseline and every model in `cfg.priority`. A model that fails
/// is reported in `failures`; the others still train.
pub fn train_all(
    cfg: &TrainConfig,
    train: &DesignMatrix,
    val: &DesignMatrix,
    test: &DesignMatrix,
    mut progress: impl FnMut(&str),
) -> Result<TrainOutcome> {
    if train.is_empty() {
        return Err(ModelError::Training {
            model: "all",
            reason: "the training matrix is empty".into(),
        });
    }
    let started = Instant::now();
    let baseline_model = BaselineParams::default().fit(train)?;
    let baseline = TrainedModel {
        val: evaluate(&baseline_model, val)?,
        test: evaluate(&baseline_model, test)?,
        model: Box::new(baseline_model),
        study: None,
        tuning_seconds: 0.0,
        fit_seconds: started.elapsed().as_secs_f64(),
    };
    let mut models = Vec::new();
    let mut failures = Vec::new();
    for &kind in &cfg.priority {
        progress(&format!("tuning and fitting {}", kind.name()));
        match tune_and_fit(kind, cfg, train, val, test) {
            Ok(m) => {
                tracing::info!(
                    model = kind.name(),
                    val_rmsle = m.val.rmsle,
                    test_rmsle = m.test.rmsle,
                    tuning_s = m.tuning_seconds,
                    fit_s = m.fit_seconds,
                    "model trained"
                );
                models.push(m);
            }
            Err(e) => {
                tracing::warn!(model = kind.name(), error = %e, "model not trained");
                failures.push((kind, e.to_string()));
            }
        }
    }
    crate::stop_trainer();
    Ok(TrainOutcome {
        models,
        failures,
        baseline,
    })
}
