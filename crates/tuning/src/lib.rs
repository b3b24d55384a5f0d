//! Hyper-parameter search — what Optuna did for the Python original.
//!
//! A [`SearchSpace`] holds float (optionally log-scaled), integer and
//! categorical parameters. [`tune`] minimises an objective over it with
//! egobox's EGO (Bayesian optimisation with a Gaussian-process surrogate,
//! driven through its ask-and-tell service) after a seeded random initial
//! design, and falls back to a grid search when EGO fails (an error, a
//! panic inside the optimiser, or a non-finite objective) or when the grid is
//! asked for. Every evaluation is kept in a [`Study`] (params, value, time),
//! like an Optuna study.
//!
//! ```
//! use tuning::{Param, SearchSpace, TunerConfig, tune};
//! let space = SearchSpace::new(vec![Param::float("x", -2.0, 2.0, false)]).unwrap();
//! let study = tune(&space, &TunerConfig::grid(9, 9), |a| {
//!     let x = a.float("x")?;
//!     Ok((x - 0.5) * (x - 0.5))
//! }).unwrap();
//! assert_eq!(study.best().unwrap().params.float("x").unwrap(), 0.5);
//! ```

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::time::Instant;

use egobox_ego::{EgorServiceBuilder, XType};
use ndarray::{Array2, Axis, concatenate};
use serde::{Deserialize, Serialize};

/// Errors of the tuning crate.
#[derive(Debug, thiserror::Error)]
pub enum TuningError {
    /// The search space is invalid.
    #[error("search space: {0}")]
    Space(String),
    /// A parameter is missing or of another type.
    #[error("parameter `{0}`: {1}")]
    Param(String, String),
    /// No trial produced a finite value.
    #[error("no trial succeeded: {0}")]
    NoSuccess(String),
}

/// Result alias of this crate.
pub type Result<T, E = TuningError> = std::result::Result<T, E>;

/// One dimension of the search space.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Param {
    /// A real number in `[low, high]`, searched on a log scale when `log`.
    Float {
        /// Name.
        name: String,
        /// Lower bound.
        low: f64,
        /// Upper bound.
        high: f64,
        /// Log scale (both bounds > 0).
        log: bool,
    },
    /// An integer in `[low, high]`.
    Int {
        /// Name.
        name: String,
        /// Lower bound.
        low: i64,
        /// Upper bound.
        high: i64,
    },
    /// One of a list of choices.
    Categorical {
        /// Name.
        name: String,
        /// The choices.
        choices: Vec<String>,
    },
}

impl Param {
    /// A float parameter.
    pub fn float(name: &str, low: f64, high: f64, log: bool) -> Self {
        Param::Float {
            name: name.into(),
            low,
            high,
            log,
        }
    }
    /// An integer parameter.
    pub fn int(name: &str, low: i64, high: i64) -> Self {
        Param::Int {
            name: name.into(),
            low,
            high,
        }
    }
    /// A categorical parameter.
    pub fn categorical(name: &str, choices: &[&str]) -> Self {
        Param::Categorical {
            name: name.into(),
            choices: choices.iter().map(|s| s.to_string()).collect(),
        }
    }
    /// The name.
    pub fn name(&self) -> &str {
        match self {
            Param::Float { name, .. }
            | Param::Int { name, .. }
            | Param::Categorical { name, .. } => name,
        }
    }

    fn xtype(&self) -> XType {
        match self {
            Param::Float {
                low,
                high,
                log: true,
                ..
            } => XType::Float(low.ln(), high.ln()),
            Param::Float { low, high, .. } => XType::Float(*low, *high),
            Param::Int { low, high, .. } => XType::Int(*low as i32, *high as i32),
            Param::Categorical { choices, .. } => XType::Enum(choices.len()),
        }
    }

    /// Decodes one coordinate of an optimiser point (EGO space).
    fn decode(&self, v: f64) -> Value {
        match self {
            Param::Float { low, high, log, .. } => {
                let x = if *log { v.exp() } else { v };
                Value::Float(x.clamp(*low, *high))
            }
            Param::Int { low, high, .. } => Value::Int((v.round() as i64).clamp(*low, *high)),
            Param::Categorical { choices, .. } => {
                let i = (v.round().max(0.0) as usize).min(choices.len() - 1);
                Value::Cat(choices[i].clone())
            }
        }
    }

    /// Encodes a value into the optimiser space.
    fn encode(&self, v: &Value) -> f64 {
        match (self, v) {
            (Param::Float { log: true, .. }, Value::Float(x)) => x.ln(),
            (Param::Float { .. }, Value::Float(x)) => *x,
            (Param::Int { .. }, Value::Int(i)) => *i as f64,
            (Param::Categorical { choices, .. }, Value::Cat(c)) => {
                choices.iter().position(|x| x == c).unwrap_or(0) as f64
            }
            _ => f64::NAN,
        }
    }

    /// `k` evenly spread values (log-spaced for log floats; every choice for categoricals).
    fn grid_values(&self, k: usize) -> Vec<Value> {
        let k = k.max(1);
        let spread = |lo: f64, hi: f64| -> Vec<f64> {
            if k == 1 {
                vec![(lo + hi) / 2.0]
            } else {
                (0..k)
                    .map(|i| lo + (hi - lo) * i as f64 / (k - 1) as f64)
                    .collect()
            }
        };
        match self {
            Param::Float {
                low,
                high,
                log: true,
                ..
            } => spread(low.ln(), high.ln())
                .into_iter()
                .map(|v| Value::Float(v.exp()))
                .collect(),
            Param::Float { low, high, .. } => {
                spread(*low, *high).into_iter().map(Value::Float).collect()
            }
            Param::Int { low, high, .. } => {
                let mut v: Vec<i64> = spread(*low as f64, *high as f64)
                    .into_iter()
                    .map(|x| x.round() as i64)
                    .collect();
                v.dedup();
                v.into_iter().map(Value::Int).collect()
            }
            Param::Categorical { choices, .. } => choices.iter().cloned().map(Value::Cat).collect(),
        }
    }
}

/// A parameter value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// Float.
    Float(f64),
    /// Integer.
    Int(i64),
    /// Categorical choice.
    Cat(String),
}

/// One point of the search space: parameter name → value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Assignment(pub BTreeMap<String, Value>);

impl Assignment {
    /// A float (integers are widened).
    pub fn float(&self, name: &str) -> Result<f64, String> {
        match self.0.get(name) {
            Some(Value::Float(v)) => Ok(*v),
            Some(Value::Int(i)) => Ok(*i as f64),
            other => Err(format!("`{name}` is not a number: {other:?}")),
        }
    }
    /// An integer.
    pub fn int(&self, name: &str) -> Result<i64, String> {
        match self.0.get(name) {
            Some(Value::Int(i)) => Ok(*i),
            other => Err(format!("`{name}` is not an integer: {other:?}")),
        }
    }
    /// A categorical choice.
    pub fn cat(&self, name: &str) -> Result<&str, String> {
        match self.0.get(name) {
            Some(Value::Cat(c)) => Ok(c),
            other => Err(format!("`{name}` is not a choice: {other:?}")),
        }
    }
}

/// A validated search space.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchSpace {
    params: Vec<Param>,
}

impl SearchSpace {
    /// Checks bounds, names and choices.
    pub fn new(params: Vec<Param>) -> Result<Self> {
        if params.is_empty() {
            return Err(TuningError::Space("no parameters".into()));
        }
        let mut names = std::collections::BTreeSet::new();
        for p in &params {
            if !names.insert(p.name().to_string()) {
                return Err(TuningError::Space(format!(
                    "duplicate parameter `{}`",
                    p.name()
                )));
            }
            let ok = match p {
                Param::Float { low, high, log, .. } => {
                    low.is_finite() && high.is_finite() && low < high && (!log || *low > 0.0)
                }
                Param::Int { low, high, .. } => low < high,
                Param::Categorical { choices, .. } => !choices.is_empty(),
            };
            if !ok {
                return Err(TuningError::Space(format!(
                    "invalid bounds or choices for `{}`",
                    p.name()
                )));
            }
        }
        Ok(Self { params })
    }

    /// The parameters.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    fn decode_row(&self, row: ndarray::ArrayView1<'_, f64>) -> Assignment {
        Assignment(
            self.params
                .iter()
                .zip(row.iter())
                .map(|(p, v)| (p.name().to_string(), p.decode(*v)))
                .collect(),
        )
    }

    fn encode(&self, a: &Assignment) -> Vec<f64> {
        self.params
            .iter()
            .map(|p| a.0.get(p.name()).map_or(f64::NAN, |v| p.encode(v)))
            .collect()
    }

    /// The grid: `points_per_dim` values per numeric dimension, every choice of
    /// each categorical; at most `max_points`, taken at even strides.
    pub fn grid(&self, points_per_dim: usize, max_points: usize) -> Vec<Assignment> {
        let mut grid = vec![Assignment::default()];
        for p in &self.params {
            let values = p.grid_values(points_per_dim);
            let mut next = Vec::with_capacity(grid.len() * values.len());
            for a in &grid {
                for v in &values {
                    let mut b = a.clone();
                    b.0.insert(p.name().to_string(), v.clone());
                    next.push(b);
                }
            }
            grid = next;
        }
        if grid.len() > max_points && max_points > 0 {
            let step = grid.len() as f64 / max_points as f64;
            grid = (0..max_points)
                .map(|i| grid[(i as f64 * step) as usize].clone())
                .collect();
        }
        grid
    }

    /// A seeded random point (used for EGO's initial design).
    fn random(&self, state: &mut u64) -> Assignment {
        let mut next = || {
            // SplitMix64: deterministic, platform-independent.
            *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = *state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z ^ (z >> 31)) as f64 / u64::MAX as f64
        };
        Assignment(
            self.params
                .iter()
                .map(|p| {
                    let u = next();
                    let v = match p.xtype() {
                        XType::Float(lo, hi) => lo + (hi - lo) * u,
                        XType::Int(lo, hi) => f64::from(lo) + (f64::from(hi - lo) * u).round(),
                        XType::Enum(n) => ((n as f64 * u).floor()).min(n as f64 - 1.0),
                        XType::Ord(v) => v.first().copied().unwrap_or(0.0),
                    };
                    (p.name().to_string(), p.decode(v))
                })
                .collect(),
        )
    }
}

/// Which search to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "tuner", rename_all = "snake_case")]
pub enum TunerConfig {
    /// EGO: `initial` random points, then `iterations` suggested ones.
    Ego {
        /// Initial design size.
        initial: usize,
        /// EGO iterations.
        iterations: usize,
        /// Seed.
        seed: u64,
        /// Grid used if EGO fails: values per dimension and a cap.
        fallback_points_per_dim: usize,
        /// Cap on fallback grid points.
        fallback_max_points: usize,
    },
    /// Grid search.
    Grid {
        /// Values per numeric dimension.
        points_per_dim: usize,
        /// Cap on points.
        max_points: usize,
    },
}

impl TunerConfig {
    /// A grid search.
    pub fn grid(points_per_dim: usize, max_points: usize) -> Self {
        TunerConfig::Grid {
            points_per_dim,
            max_points,
        }
    }
    /// An EGO search with a small fallback grid.
    pub fn ego(initial: usize, iterations: usize, seed: u64) -> Self {
        TunerConfig::Ego {
            initial,
            iterations,
            seed,
            fallback_points_per_dim: 3,
            fallback_max_points: initial + iterations,
        }
    }
}

/// How a trial ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrialState {
    /// A finite value.
    Complete,
    /// An error or a non-finite value.
    Failed,
}

/// One evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    /// 0-based number.
    pub number: usize,
    /// Who proposed it: `initial`, `ego` or `grid`.
    pub source: String,
    /// The point.
    pub params: Assignment,
    /// The objective (None when failed).
    pub value: Option<f64>,
    /// State.
    pub state: TrialState,
    /// Error message of a failed trial.
    pub error: Option<String>,
    /// Wall time of the evaluation, seconds.
    pub duration_s: f64,
}

/// All trials of a search, like an Optuna study.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Study {
    /// Always `minimize`.
    pub direction: String,
    /// The tuner asked for.
    pub tuner: String,
    /// Why the grid fallback ran, if it did.
    pub fallback_reason: Option<String>,
    /// Every evaluation, in order.
    pub trials: Vec<Trial>,
}

impl Study {
    /// The best complete trial.
    pub fn best(&self) -> Option<&Trial> {
        self.trials
            .iter()
            .filter(|t| t.state == TrialState::Complete)
            .min_by(|a, b| {
                a.value
                    .unwrap_or(f64::INFINITY)
                    .total_cmp(&b.value.unwrap_or(f64::INFINITY))
            })
    }

    /// Mean seconds per trial.
    pub fn mean_trial_seconds(&self) -> f64 {
        if self.trials.is_empty() {
            0.0
        } else {
            self.trials.iter().map(|t| t.duration_s).sum::<f64>() / self.trials.len() as f64
        }
    }
}

fn run_trial<F>(
    study: &mut Study,
    source: &str,
    params: Assignment,
    objective: &mut F,
) -> Option<f64>
where
    F: FnMut(&Assignment) -> Result<f64, String>,
{
    let started = Instant::now();
    let outcome = objective(&params);
    let duration_s = started.elapsed().as_secs_f64();
    let (value, state, error) = match outcome {
        Ok(v) if v.is_finite() => (Some(v), TrialState::Complete, None),
        Ok(v) => (
            None,
            TrialState::Failed,
            Some(format!("objective returned {v}")),
        ),
        Err(e) => (None, TrialState::Failed, Some(e)),
    };
    tracing::debug!(trial = study.trials.len(), source, ?value, "trial");
    study.trials.push(Trial {
        number: study.trials.len(),
        source: source.into(),
        params,
        value,
        state,
        error,
        duration_s,
    });
    value
}

fn run_grid<F>(space: &SearchSpace, study: &mut Study, k: usize, max: usize, objective: &mut F)
where
    F: FnMut(&Assignment) -> Result<f64, String>,
{
    for a in space.grid(k, max) {
        run_trial(study, "grid", a, objective);
    }
}

/// EGO until done, or the reason it had to stop.
fn run_ego<F>(
    space: &SearchSpace,
    study: &mut Study,
    initial: usize,
    iterations: usize,
    seed: u64,
    objective: &mut F,
) -> Result<(), String>
where
    F: FnMut(&Assignment) -> Result<f64, String>,
{
    let xtypes: Vec<XType> = space.params.iter().map(Param::xtype).collect();
    let egor = EgorServiceBuilder::optimize()
        .configure(|c| c.seed(seed))
        .min_within_mixint_space(&xtypes)
        .map_err(|e| format!("EGO configuration: {e}"))?;
    let dim = space.params.len();
    let mut x = Array2::<f64>::zeros((0, dim));
    let mut y = Array2::<f64>::zeros((0, 1));
    let mut rng_state = seed;
    let push =
        |x: &mut Array2<f64>, y: &mut Array2<f64>, a: &Assignment, v: f64| -> Result<(), String> {
            let row =
                Array2::from_shape_vec((1, dim), space.encode(a)).map_err(|e| e.to_string())?;
            *x = concatenate![Axis(0), x.view(), row.view()];
            *y = concatenate![Axis(0), y.view(), Array2::from_elem((1, 1), v).view()];
            Ok(())
        };
    for _ in 0..initial.max(2) {
        let a = space.random(&mut rng_state);
        match run_trial(study, "initial", a.clone(), objective) {
            Some(v) => push(&mut x, &mut y, &a, v)?,
            None => {
                return Err("the objective failed or was not finite in the initial design".into());
            }
        }
    }
    for _ in 0..iterations {
        let suggestion = std::panic::catch_unwind(AssertUnwindSafe(|| egor.suggest(&x, &y)))
            .map_err(|_| "the EGO optimiser panicked while suggesting a point".to_string())?;
        if suggestion.nrows() == 0 || suggestion.iter().any(|v| !v.is_finite()) {
            return Err("EGO suggested no finite point".into());
        }
        let a = space.decode_row(suggestion.row(0));
        match run_trial(study, "ego", a.clone(), objective) {
            Some(v) => push(&mut x, &mut y, &a, v)?,
            None => return Err("the objective failed or was not finite at an EGO point".into()),
        }
    }
    Ok(())
}

/// Minimises `objective` over `space`. The objective returns the value to
/// minimise or an error message; failed and non-finite evaluations are kept
/// as failed trials.
pub fn tune<F>(space: &SearchSpace, config: &TunerConfig, mut objective: F) -> Result<Study>
where
    F: FnMut(&Assignment) -> Result<f64, String>,
{
    let mut study = Study {
        direction: "minimize".into(),
        tuner: match config {
            TunerConfig::Ego { .. } => "ego".into(),
            TunerConfig::Grid { .. } => "grid".into(),
        },
        fallback_reason: None,
        trials: Vec::new(),
    };
    match config {
        TunerConfig::Grid {
            points_per_dim,
            max_points,
        } => {
            run_grid(
                space,
                &mut study,
                *points_per_dim,
                *max_points,
                &mut objective,
            );
        }
        TunerConfig::Ego {
            initial,
            iterations,
            seed,
            fallback_points_per_dim,
            fallback_max_points,
        } => {
            if let Err(reason) = run_ego(
                space,
                &mut study,
                *initial,
                *iterations,
                *seed,
                &mut objective,
            ) {
                tracing::warn!(%reason, "EGO failed, falling back to grid search");
                study.fallback_reason = Some(reason);
                run_grid(
                    space,
                    &mut study,
                    *fallback_points_per_dim,
                    *fallback_max_points,
                    &mut objective,
                );
            }
        }
    }
    if study.best().is_none() {
        let errors: Vec<String> = study
            .trials
            .iter()
            .filter_map(|t| t.error.clone())
            .take(3)
            .collect();
        return Err(TuningError::NoSuccess(errors.join("; ")));
    }
    Ok(study)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space() -> SearchSpace {
        SearchSpace::new(vec![
            Param::float("lr", 1e-4, 1e-1, true),
            Param::int("layers", 1, 4),
            Param::categorical("opt", &["adam", "sgd"]),
        ])
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn grid_covers_every_choice_and_respects_the_cap() {
        let g = space().grid(3, 1000);
        assert_eq!(g.len(), 3 * 3 * 2);
        assert!(g.iter().any(|a| a.cat("opt") == Ok("sgd")));
        let lrs: Vec<f64> = g.iter().filter_map(|a| a.float("lr").ok()).collect();
        assert!(
            lrs.iter().any(|v| (v - 1e-4).abs() < 1e-12)
                && lrs.iter().any(|v| (v - 0.1).abs() < 1e-12)
        );
        assert!((lrs.iter().copied().fold(0.0, f64::max) - 0.1).abs() < 1e-12);
        assert_eq!(space().grid(3, 5).len(), 5);
    }

    #[test]
    fn invalid_spaces_are_rejected() {
        assert!(SearchSpace::new(vec![Param::float("a", 0.0, 1.0, true)]).is_err());
        assert!(SearchSpace::new(vec![Param::int("a", 3, 3)]).is_err());
        assert!(SearchSpace::new(vec![Param::int("a", 0, 3), Param::int("a", 0, 3)]).is_err());
    }

    #[test]
    fn grid_fallback_runs_when_the_objective_returns_nan() {
        let s = space();
        let mut calls = 0;
        let study = tune(&s, &TunerConfig::ego(4, 5, 1), |a| {
            calls += 1;
            // NaN on the second call, inside EGO's initial design.
            if calls == 2 {
                return Ok(f64::NAN);
            }
            Ok(a.float("lr")?.ln().powi(2) + a.int("layers")? as f64)
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            study
                .fallback_reason
                .as_deref()
                .unwrap_or("")
                .contains("not finite")
        );
        assert!(study.trials.iter().any(|t| t.source == "grid"));
        assert!(study.trials.iter().any(|t| t.state == TrialState::Failed));
        assert_eq!(study.best().map(|t| t.source.as_str()), Some("grid"));
    }

    #[test]
    fn ego_finds_the_minimum_of_a_smooth_function() {
        let s = SearchSpace::new(vec![
            Param::float("x", -3.0, 3.0, false),
            Param::float("y", -3.0, 3.0, false),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let f = |a: &Assignment| -> Result<f64, String> {
            let (x, y) = (a.float("x")?, a.float("y")?);
            Ok((x - 1.0).powi(2) + (y + 0.5).powi(2))
        };
        let study = tune(&s, &TunerConfig::ego(6, 12, 7), f).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            study.fallback_reason.is_none(),
            "{:?}",
            study.fallback_reason
        );
        let best = study.best().and_then(|t| t.value).unwrap_or(f64::INFINITY);
        let best_initial = study
            .trials
            .iter()
            .filter(|t| t.source == "initial")
            .filter_map(|t| t.value)
            .fold(f64::INFINITY, f64::min);
        assert!(best < 0.05, "best {best}");
        assert!(best < best_initial);
    }
}
