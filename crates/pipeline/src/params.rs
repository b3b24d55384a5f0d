//! The typed `params.toml`: one serde struct per section, each with
//! `deny_unknown_fields` and a `validate`, and the conversion of each into the
//! params struct of the stage that reads it.
//!
//! The dotted-key [`Params`] stays the form the lock file records (each stage
//! snapshots the keys it declares); [`PipelineParams::from_params`] is the one
//! place that turns it into typed values, so a misspelt key, a wrong type or a
//! value out of range fails before any stage runs, naming the key.

use std::collections::BTreeMap;

use drift::{DriftParams, FairnessCriterion, FairnessParams, StatTest};
use features::{FeatureParams, PreprocessParams, SplitRule};
use lineage::{LineageError, ParamSource, Params};
use models::response::ResponseParams;
use models::tuning::TunerConfig;
use models::{ModelKind, TrainConfig};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::gate::GateParams;

/// Every section of `params.toml`, typed and validated.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineParams {
    /// `[data]`.
    pub data: DataSection,
    /// `[train]`.
    pub train: TrainSection,
    /// `[etl]`: the etl stage's own params.
    pub etl: etl::EtlParams,
    /// `[features]`.
    pub features: FeaturesSection,
    /// `[split]`.
    pub split: SplitSection,
    /// `[preprocess]`: the preprocessor's own params.
    pub preprocess: PreprocessParams,
    /// `[models]`.
    pub models: ModelsSection,
    /// `[tuning]`.
    pub tuning: TuningSection,
    /// `[response]`: the response fit's own params.
    pub response: ResponseParams,
    /// `[gate]`.
    pub gate: GateSection,
}

/// The sections, in file order.
pub const SECTIONS: [&str; 10] = [
    "data",
    "train",
    "etl",
    "features",
    "split",
    "preprocess",
    "models",
    "tuning",
    "response",
    "gate",
];

/// `[data]`: where the inputs are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// The raw export read when `--raw` is not given.
    pub raw: String,
    /// Unit costs per product (CSV or parquet); empty: none.
    pub unit_costs: String,
}

/// `[train]`: which products.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// One product on its own; empty: all products.
    pub stockcode: String,
}

/// `[features]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeaturesSection {
    /// Look-back of the customer features, in days.
    pub customer_window_days: i64,
    /// Most recent sales rows kept per product as serving contexts.
    pub recent_contexts: usize,
}

/// How `[split]` cuts time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitMethod {
    /// By share of rows in time order.
    Fraction,
    /// At `train_end` and `val_end`.
    Date,
}

/// `[split]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitSection {
    /// Which of the two rules applies.
    pub method: SplitMethod,
    /// Share of rows for training (`fraction`).
    pub train_fraction: f64,
    /// Share of rows for validation (`fraction`).
    pub val_fraction: f64,
    /// Exclusive end of training, `YYYY-MM-DD` (`date`).
    pub train_end: String,
    /// Exclusive end of validation, `YYYY-MM-DD` (`date`).
    pub val_end: String,
}

/// `[models]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsSection {
    /// Served in this order; the loader falls over to the next.
    pub priority: Vec<ModelKind>,
    /// Seed of every model.
    pub seed: u64,
    /// Training rows of each tuning trial.
    pub tuning_rows: usize,
    /// Validation rows each tuning trial is scored on.
    pub tuning_val_rows: usize,
    /// Epoch cap of an MLP trial.
    pub tuning_mlp_epochs: usize,
    /// Epoch cap of the final MLP fit.
    pub mlp_max_epochs: usize,
    /// SVR training rows.
    pub svr_rows: usize,
    /// Training rows the models see at most: a larger training window is
    /// read as a time-stratified sample (evenly spaced rows in time order).
    pub max_train_rows: usize,
    /// Validation and test rows the models and the gate see at most (the
    /// same kind of sample).
    pub max_eval_rows: usize,
    /// Column whose groups get their own calibration offset; empty: off.
    pub calibrate_groups: String,
    /// Recency half-life of the calibration weights (days); 0: equal weights.
    pub calibration_half_life_days: f64,
}

/// At most how many rows of the model matrices the models and the gate read
/// (`models.max_train_rows`, `models.max_eval_rows`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowCaps {
    /// Training rows.
    pub train: usize,
    /// Validation and test rows.
    pub eval: usize,
}

/// Which tuner `[tuning]` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tuner {
    /// egobox Bayesian optimisation, with the grid as fallback.
    Ego,
    /// Grid search.
    Grid,
}

/// `[tuning]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TuningSection {
    /// The search.
    pub tuner: Tuner,
    /// EGO's random initial design.
    pub initial: usize,
    /// EGO iterations after it.
    pub iterations: usize,
    /// Grid values per dimension.
    pub grid_points_per_dim: usize,
    /// Cap on grid points.
    pub grid_max_points: usize,
}

/// `[gate]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateSection {
    /// KS, chi-square, z-test: drift when p is below it.
    pub p_value_threshold: f64,
    /// Wasserstein, Jensen-Shannon: drift at or above it.
    pub distance_threshold: f64,
    /// The gate fails when this share of columns drifted.
    pub drift_share: f64,
    /// Per-column test overrides.
    pub stattest: BTreeMap<String, StatTest>,
    /// Numerical columns tested for drift.
    pub numerical_columns: Vec<String>,
    /// Categorical columns tested for drift.
    pub categorical_columns: Vec<String>,
    /// Which difference the fairness threshold bounds.
    pub fairness_criterion: FairnessCriterion,
    /// The fairness threshold.
    pub max_abs_mean_outcome_difference: f64,
    /// Test rows explained by Shapley values.
    pub attribution_rows: usize,
    /// Permutations per explained row.
    pub attribution_permutations: usize,
    /// Promote even when the gate fails.
    #[serde(rename = "override")]
    pub override_gate: bool,
}

fn invalid(key: &str, why: impl std::fmt::Display) -> LineageError {
    LineageError::Params(format!("`{key}` {why}"))
}

fn share(key: &str, v: f64) -> Result<(), LineageError> {
    if v > 0.0 && v < 1.0 {
        Ok(())
    } else {
        Err(invalid(key, format_args!("must be in (0, 1), found {v}")))
    }
}

fn positive(key: &str, v: usize) -> Result<(), LineageError> {
    if v > 0 {
        Ok(())
    } else {
        Err(invalid(key, "must be at least 1, found 0"))
    }
}

fn date(key: &str, v: &str) -> Result<i64, LineageError> {
    let bad = || invalid(key, format_args!("must be a date YYYY-MM-DD, found {v:?}"));
    let mut parts = v.splitn(3, '-');
    let mut next = || {
        parts
            .next()
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse::<i64>().ok())
            .ok_or_else(bad)
    };
    let (y, m, d) = (next()?, next()?, next()?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    Ok(y * 10_000 + m * 100 + d)
}

impl SplitSection {
    /// Shares in (0, 1) leaving a test window; dates that parse, in order.
    pub fn validate(&self) -> Result<(), LineageError> {
        match self.method {
            SplitMethod::Fraction => {
                share("split.train_fraction", self.train_fraction)?;
                share("split.val_fraction", self.val_fraction)?;
                if self.train_fraction + self.val_fraction >= 1.0 {
                    return Err(invalid(
                        "split.val_fraction",
                        format_args!(
                            "plus split.train_fraction must leave a test window (sum below 1), found {} + {}",
                            self.val_fraction, self.train_fraction
                        ),
                    ));
                }
            }
            SplitMethod::Date => {
                if date("split.train_end", &self.train_end)?
                    >= date("split.val_end", &self.val_end)?
                {
                    return Err(invalid(
                        "split.val_end",
                        format_args!(
                            "must be after split.train_end ({} is not after {})",
                            self.val_end, self.train_end
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The features stage's rule.
    pub fn rule(&self) -> SplitRule {
        match self.method {
            SplitMethod::Fraction => SplitRule::Fraction {
                train: self.train_fraction,
                val: self.val_fraction,
            },
            SplitMethod::Date => SplitRule::Date {
                train_end: self.train_end.clone(),
                val_end: self.val_end.clone(),
            },
        }
    }
}

impl ModelsSection {
    /// At least one model and not the baseline; positive row and epoch
    /// budgets; a finite, non-negative half-life.
    pub fn validate(&self) -> Result<(), LineageError> {
        if self.priority.is_empty() || self.priority.contains(&ModelKind::Baseline) {
            return Err(invalid(
                "models.priority",
                "must name at least one model, and not the baseline",
            ));
        }
        positive("models.tuning_rows", self.tuning_rows)?;
        positive("models.tuning_val_rows", self.tuning_val_rows)?;
        positive("models.tuning_mlp_epochs", self.tuning_mlp_epochs)?;
        positive("models.mlp_max_epochs", self.mlp_max_epochs)?;
        positive("models.svr_rows", self.svr_rows)?;
        positive("models.max_train_rows", self.max_train_rows)?;
        positive("models.max_eval_rows", self.max_eval_rows)?;
        let h = self.calibration_half_life_days;
        if !(h.is_finite() && h >= 0.0) {
            return Err(invalid(
                "models.calibration_half_life_days",
                format_args!("must be >= 0 (0: equal weights), found {h}"),
            ));
        }
        Ok(())
    }
}

impl TuningSection {
    /// At least one trial of each kind the tuner runs.
    pub fn validate(&self) -> Result<(), LineageError> {
        if self.tuner == Tuner::Ego {
            positive("tuning.initial", self.initial)?;
        }
        positive("tuning.grid_points_per_dim", self.grid_points_per_dim)?;
        positive("tuning.grid_max_points", self.grid_max_points)
    }
}

impl GateSection {
    /// Thresholds in range; at least one column tested.
    pub fn validate(&self) -> Result<(), LineageError> {
        share("gate.p_value_threshold", self.p_value_threshold)?;
        share("gate.distance_threshold", self.distance_threshold)?;
        let s = self.drift_share;
        if !(s > 0.0 && s <= 1.0) {
            return Err(invalid(
                "gate.drift_share",
                format_args!("must be in (0, 1], found {s}"),
            ));
        }
        let m = self.max_abs_mean_outcome_difference;
        if !(m.is_finite() && m >= 0.0) {
            return Err(invalid(
                "gate.max_abs_mean_outcome_difference",
                format_args!("must be >= 0, found {m}"),
            ));
        }
        if self.numerical_columns.is_empty() && self.categorical_columns.is_empty() {
            return Err(invalid(
                "gate.numerical_columns",
                "and gate.categorical_columns are both empty: the drift test needs a column",
            ));
        }
        Ok(())
    }
}

impl FeaturesSection {
    /// A positive look-back and at least one serving context.
    pub fn validate(&self) -> Result<(), LineageError> {
        if self.customer_window_days <= 0 {
            return Err(invalid(
                "features.customer_window_days",
                format_args!("must be positive, found {}", self.customer_window_days),
            ));
        }
        positive("features.recent_contexts", self.recent_contexts)
    }
}

fn preprocess_validate(p: &PreprocessParams) -> Result<(), LineageError> {
    let s = p.target_encoding_smoothing;
    if !(s.is_finite() && s >= 0.0) {
        return Err(invalid(
            "preprocess.target_encoding_smoothing",
            format_args!("must be >= 0, found {s}"),
        ));
    }
    if p.target_encoding_folds < 2 {
        return Err(invalid(
            "preprocess.target_encoding_folds",
            format_args!("must be at least 2, found {}", p.target_encoding_folds),
        ));
    }
    Ok(())
}

/// One section of `table`, deserialised; errors name the section.
fn section<T: DeserializeOwned>(table: &toml::Table, name: &str) -> Result<T, LineageError> {
    let value = table
        .get(name)
        .ok_or_else(|| LineageError::Params(format!("missing section [{name}]")))?;
    value
        .clone()
        .try_into()
        .map_err(|e: toml::de::Error| LineageError::Params(format!("[{name}]: {}", e.message())))
}

impl PipelineParams {
    /// Types and validates every section of `p`. A key of no section, a
    /// misspelt key, a missing key, a value of the wrong type or out of range
    /// is an error naming it.
    pub fn from_params(p: &Params) -> Result<Self, LineageError> {
        let table = p.table();
        if let Some(extra) = table.keys().find(|k| !SECTIONS.contains(&k.as_str())) {
            let hint = lineage::closest(extra, SECTIONS)
                .map(|s| format!("; did you mean [{s}]?"))
                .unwrap_or_default();
            return Err(LineageError::Params(format!(
                "unknown section [{extra}]{hint}"
            )));
        }
        let typed = Self {
            data: section(table, "data")?,
            train: section(table, "train")?,
            etl: section(table, "etl")?,
            features: section(table, "features")?,
            split: section(table, "split")?,
            preprocess: section(table, "preprocess")?,
            models: section(table, "models")?,
            tuning: section(table, "tuning")?,
            response: section(table, "response")?,
            gate: section(table, "gate")?,
        };
        typed.validate()?;
        Ok(typed)
    }

    /// Every section's checks.
    pub fn validate(&self) -> Result<(), LineageError> {
        self.etl
            .validate()
            .map_err(|e| LineageError::Params(format!("[etl]: {e}")))?;
        self.features.validate()?;
        self.split.validate()?;
        preprocess_validate(&self.preprocess)?;
        self.models.validate()?;
        self.tuning.validate()?;
        self.response
            .validate()
            .map_err(|e| LineageError::Params(format!("[response]: {e}")))?;
        self.gate.validate()
    }

    /// `--stockcode`'s default: `train.stockcode`, empty meaning all.
    pub fn stockcode(&self) -> Option<&str> {
        Some(self.train.stockcode.as_str()).filter(|s| !s.is_empty())
    }

    /// `data.unit_costs`, empty meaning none.
    pub fn unit_costs(&self) -> Option<&str> {
        Some(self.data.unit_costs.as_str()).filter(|s| !s.is_empty())
    }

    /// The features stage's params (`[features]` and `[split]`).
    pub fn feature_params(&self) -> FeatureParams {
        FeatureParams {
            customer_window_days: self.features.customer_window_days,
            recent_contexts: self.features.recent_contexts,
            split: self.split.rule(),
        }
    }

    /// The models stage's params (`[models]` and `[tuning]`).
    pub fn train_config(&self) -> TrainConfig {
        let m = &self.models;
        let t = &self.tuning;
        let tuner = match t.tuner {
            Tuner::Ego => TunerConfig::Ego {
                initial: t.initial,
                iterations: t.iterations,
                seed: m.seed,
                fallback_points_per_dim: t.grid_points_per_dim,
                fallback_max_points: t.grid_max_points,
            },
            Tuner::Grid => TunerConfig::Grid {
                points_per_dim: t.grid_points_per_dim,
                max_points: t.grid_max_points,
            },
        };
        TrainConfig {
            priority: m.priority.clone(),
            tuner,
            tuning_rows: m.tuning_rows,
            tuning_val_rows: m.tuning_val_rows,
            tuning_mlp_epochs: m.tuning_mlp_epochs,
            mlp_max_epochs: m.mlp_max_epochs,
            svr_rows: m.svr_rows,
            seed: m.seed,
        }
    }

    /// At most how many rows of each model matrix the models and the gate read.
    pub fn row_caps(&self) -> RowCaps {
        RowCaps {
            train: self.models.max_train_rows,
            eval: self.models.max_eval_rows,
        }
    }

    /// The group calibration: the column, and the half-life (None: equal weights).
    pub fn calibration(&self) -> Option<(&str, Option<f64>)> {
        let m = &self.models;
        let h = m.calibration_half_life_days;
        Some(m.calibrate_groups.as_str())
            .filter(|c| !c.is_empty())
            .map(|c| (c, (h > 0.0).then_some(h)))
    }

    /// The gate stage's params.
    pub fn gate_params(&self) -> GateParams {
        let g = &self.gate;
        GateParams {
            drift: DriftParams {
                p_value_threshold: g.p_value_threshold,
                distance_threshold: g.distance_threshold,
                drift_share: g.drift_share,
                stattest_overrides: g.stattest.clone(),
            },
            fairness: FairnessParams {
                max_abs_mean_outcome_difference: g.max_abs_mean_outcome_difference,
                criterion: g.fairness_criterion,
            },
            numerical_columns: g.numerical_columns.clone(),
            categorical_columns: g.categorical_columns.clone(),
            attribution_rows: g.attribution_rows,
            attribution_permutations: g.attribution_permutations,
            override_gate: g.override_gate,
        }
    }
}

/// Overlays each `KEY=VALUE` of `overrides` (as `--set` takes them) on
/// `params`, in order, each key checked against the compiled-in defaults
/// (an unknown key names the closest valid one; a value of another type
/// names the type wanted); returns the keys set. The result is not
/// validated as a whole: [`PipelineParams::from_params`] does that.
pub fn set_all(params: &mut Params, overrides: &[String]) -> Result<Vec<String>, LineageError> {
    let defaults = crate::default_params();
    let mut keys = Vec::with_capacity(overrides.len());
    for o in overrides {
        let (key, parsed) = lineage::params::assignment(o)?;
        let mut one = Params::default();
        one.set(key, parsed.clone())?;
        one.check_against(&defaults, &format!("--set {o}"))?;
        params.set(key, parsed)?;
        keys.push(key.to_string());
    }
    Ok(keys)
}

/// The effective params: the compiled-in defaults, overlaid by a params
/// file's keys (`file`: where it came from, and its parsed table), overlaid
/// by each `--set KEY=VALUE` in order. Every key is checked against the
/// defaults (an unknown key names the closest valid one; a value of another
/// type names the type wanted), then the result is typed and validated
/// ([`PipelineParams::from_params`]). Also says where each key's value came
/// from.
pub fn effective(
    file: Option<(&str, &Params)>,
    overrides: &[String],
) -> Result<(Params, BTreeMap<String, ParamSource>), LineageError> {
    let defaults = crate::default_params();
    let mut params = defaults.clone();
    let mut sources: BTreeMap<String, ParamSource> = defaults
        .leaves()
        .into_keys()
        .map(|k| (k, ParamSource::Default))
        .collect();
    if let Some((origin, from_file)) = file {
        from_file.check_against(&defaults, origin)?;
        for (key, value) in from_file.leaves() {
            params.set(&key, value.clone())?;
            sources.insert(key, ParamSource::File);
        }
    }
    for key in set_all(&mut params, overrides)? {
        sources.insert(key, ParamSource::Set);
    }
    let origin = match (file, overrides.is_empty()) {
        (Some((origin, _)), true) => origin.to_string(),
        (Some((origin, _)), false) => format!("{origin} with --set"),
        (None, false) => "--set".to_string(),
        (None, true) => "the compiled-in params".to_string(),
    };
    PipelineParams::from_params(&params).map_err(|e| match e {
        LineageError::Params(m) => LineageError::Params(format!("from {origin}: {m}")),
        other => other,
    })?;
    Ok((params, sources))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::default_params;

    fn with(key: &str, value: &str) -> Result<PipelineParams, LineageError> {
        let mut p = default_params();
        let line = format!("{key}={value}");
        let (key, v) = lineage::params::assignment(&line)?;
        p.set(key, v)?;
        PipelineParams::from_params(&p)
    }

    fn error(key: &str, value: &str) -> String {
        refused(with(key, value), &format!("{key} = {value}"))
    }

    /// The error of a typing that must fail.
    fn refused(typed: Result<PipelineParams, LineageError>, what: &str) -> String {
        match typed {
            Ok(_) => panic!("{what} was accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_compiled_in_params_are_typed_and_valid() {
        let p = PipelineParams::from_params(&default_params()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.models.priority[0], ModelKind::Mlp);
        assert_eq!(
            p.gate.fairness_criterion,
            FairnessCriterion::ExcessMeanOutcomeDifference
        );
        assert!(!p.gate.override_gate);
        assert_eq!(p.stockcode(), None);
        assert!(p.calibration().is_some());
    }

    #[test]
    fn unknown_keys_and_sections_are_errors_that_name_them() {
        let e = error("gate.overide", "true");
        assert!(e.contains("[gate]") && e.contains("overide"), "{e}");
        let e = error("respones.min_weeks", "3");
        assert!(
            e.contains("unknown section [respones]") && e.contains("[response]"),
            "{e}"
        );
    }

    #[test]
    fn wrong_types_and_enum_values_name_the_section() {
        let e = error("split.method", "\"random\"");
        assert!(e.contains("[split]") && e.contains("random"), "{e}");
        let e = error("models.priority", "[\"mlp\", \"xgboost\"]");
        assert!(e.contains("[models]") && e.contains("xgboost"), "{e}");
        let e = error("models.seed", "-1");
        assert!(e.contains("[models]"), "{e}");
        let e = error("gate.stattest", "{ unit_price = \"kss\" }");
        assert!(e.contains("[gate]") && e.contains("kss"), "{e}");
        let e = error("tuning.tuner", "\"optuna\"");
        assert!(e.contains("[tuning]") && e.contains("optuna"), "{e}");
    }

    #[test]
    fn values_out_of_range_name_the_key() {
        for (key, value, says) in [
            ("split.train_fraction", "0.9", "split.val_fraction"),
            ("split.train_fraction", "1.5", "split.train_fraction"),
            ("gate.drift_share", "0.0", "gate.drift_share"),
            ("gate.p_value_threshold", "1.0", "gate.p_value_threshold"),
            ("models.priority", "[\"baseline\"]", "models.priority"),
            ("models.priority", "[]", "models.priority"),
            (
                "models.calibration_half_life_days",
                "-1.0",
                "calibration_half_life_days",
            ),
            (
                "preprocess.target_encoding_folds",
                "1",
                "target_encoding_folds",
            ),
            ("features.recent_contexts", "0", "features.recent_contexts"),
            ("response.coverage", "1.0", "coverage"),
            ("etl.max_quantity", "0", "max_quantity"),
            ("tuning.grid_max_points", "0", "tuning.grid_max_points"),
        ] {
            let e = error(key, value);
            assert!(e.contains(says), "{key} = {value}: {e}");
        }
        let mut p = default_params();
        p.set("split.method", "date")
            .unwrap_or_else(|e| panic!("{e}"));
        p.set("split.val_end", "2011-07-01")
            .unwrap_or_else(|e| panic!("{e}"));
        let e = refused(PipelineParams::from_params(&p), "val_end before train_end");
        assert!(e.contains("split.val_end") && e.contains("after"), "{e}");
        p.set("split.val_end", "2011-13-01")
            .unwrap_or_else(|e| panic!("{e}"));
        let e = refused(PipelineParams::from_params(&p), "month 13");
        assert!(e.contains("YYYY-MM-DD"), "{e}");
    }

    #[test]
    fn effective_params_layer_file_and_set_and_say_where_each_came_from() {
        let file = Params::from_toml_str("[split]\ntrain_fraction = 0.6\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let sets = ["tuning.tuner=grid".to_string()];
        let (p, sources) =
            effective(Some(("my.toml", &file)), &sets).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.f64("split.train_fraction").ok(), Some(0.6));
        assert_eq!(p.str("tuning.tuner").ok(), Some("grid"));
        assert_eq!(
            sources.get("split.train_fraction"),
            Some(&ParamSource::File)
        );
        assert_eq!(sources.get("tuning.tuner"), Some(&ParamSource::Set));
        assert_eq!(sources.get("gate.override"), Some(&ParamSource::Default));
        let e = effective(None, &["gate.overide=true".to_string()])
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(e.contains("did you mean `gate.override`"), "{e}");
        // Known keys, valid types, but together out of range: the typed check.
        let e = effective(
            Some(("my.toml", &file)),
            &["split.val_fraction=0.5".to_string()],
        )
        .map(|_| ())
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("my.toml with --set") && e.contains("split.val_fraction"),
            "{e}"
        );
    }

    #[test]
    fn sections_convert_into_the_stage_params() {
        let p = with("tuning.tuner", "\"grid\"").unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(p.train_config().tuner, TunerConfig::Grid { .. }));
        let p = with("models.calibrate_groups", "\"\"").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.calibration(), None);
        let p = with("models.calibration_half_life_days", "0").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.calibration(), Some(("is_registered", None)));
        let p = with("gate.stattest", "{ unit_price = \"ks\" }").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            p.gate_params().drift.stattest_overrides.get("unit_price"),
            Some(&StatTest::Ks)
        );
    }
}
