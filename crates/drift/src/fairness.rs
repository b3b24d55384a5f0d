//! Fairness between customer groups: per-group errors and the mean outcome
//! difference, as the original's check (privileged group = registered
//! customers).

use serde::{Deserialize, Serialize};

use crate::{DriftError, Result};

/// Which difference the threshold applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FairnessCriterion {
    /// The original's rule: |MOD| ≤ threshold, MOD = mean(ŷ | guest) −
    /// mean(ŷ | registered). Fails any model whose predictions reflect a real
    /// difference in demand between the groups.
    MeanOutcomeDifference,
    /// |MOD − actual difference| ≤ threshold: the model may not widen or
    /// narrow the groups' gap beyond what the observed outcomes show.
    ExcessMeanOutcomeDifference,
}

/// Fairness thresholds (`gate.*` in params.toml).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FairnessParams {
    /// The acceptance threshold (0.1, log scale).
    pub max_abs_mean_outcome_difference: f64,
    /// What it applies to.
    pub criterion: FairnessCriterion,
}

impl Default for FairnessParams {
    fn default() -> Self {
        Self {
            max_abs_mean_outcome_difference: 0.1,
            criterion: FairnessCriterion::MeanOutcomeDifference,
        }
    }
}

/// Errors and mean prediction of one group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupMetrics {
    /// Group name.
    pub group: String,
    /// Rows.
    pub rows: usize,
    /// MSE on the log1p scale.
    pub mse: f64,
    /// MAE in units (expm1 of both).
    pub mae: f64,
    /// RMSLE.
    pub rmsle: f64,
    /// Mean prediction on the log1p scale.
    pub mean_prediction: f64,
}

/// The fairness check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FairnessReport {
    /// The sensitive column.
    pub sensitive_column: String,
    /// Registered customers.
    pub privileged: GroupMetrics,
    /// Guests.
    pub unprivileged: GroupMetrics,
    /// mean(ŷ | unprivileged) − mean(ŷ | privileged), log scale.
    pub mean_outcome_difference: f64,
    /// The same difference of the observed outcomes: mean(y | unprivileged) −
    /// mean(y | privileged).
    pub actual_outcome_difference: f64,
    /// `mean_outcome_difference − actual_outcome_difference`.
    pub excess_outcome_difference: f64,
    /// The criterion applied.
    pub criterion: FairnessCriterion,
    /// MAE(unprivileged) − MAE(privileged), units.
    pub mae_gap: f64,
    /// The acceptance threshold on |MOD|.
    pub threshold: f64,
    /// Whether the criterion's difference is within ±threshold.
    pub acceptable: bool,
}

fn group(name: &str, y: &[f64], pred: &[f64]) -> GroupMetrics {
    let n = y.len() as f64;
    let mse = y
        .iter()
        .zip(pred)
        .map(|(a, b)| (a - b).powi(2))
        .sum::<f64>()
        / n;
    let mae = y
        .iter()
        .zip(pred)
        .map(|(a, b)| (a.exp_m1() - b.exp_m1().max(0.0)).abs())
        .sum::<f64>()
        / n;
    GroupMetrics {
        group: name.into(),
        rows: y.len(),
        mse,
        mae,
        rmsle: mse.sqrt(),
        mean_prediction: pred.iter().sum::<f64>() / n,
    }
}

/// Fairness of predictions `pred` against targets `y` (both ln(1 + quantity))
/// between rows with `sensitive` = 1 (privileged) and 0.
///
/// ```
/// let y = [1.0, 1.0, 2.0, 2.0];
/// let pred = [1.0, 1.0, 1.5, 1.5];
/// let registered = [1.0, 1.0, 0.0, 0.0];
/// let r = drift::fairness("is_registered", &y, &pred, &registered, &Default::default()).unwrap();
/// assert!((r.mean_outcome_difference - 0.5).abs() < 1e-12);
/// assert!((r.actual_outcome_difference - 1.0).abs() < 1e-12);
/// assert!(!r.acceptable); // |MOD| = 0.5 > 0.1
/// let excess = drift::FairnessParams {
///     criterion: drift::FairnessCriterion::ExcessMeanOutcomeDifference,
///     ..Default::default()
/// };
/// let r = drift::fairness("is_registered", &y, &pred, &registered, &excess).unwrap();
/// assert!(!r.acceptable); // the model halves the observed gap: excess −0.5
/// ```
pub fn fairness(
    sensitive_column: &str,
    y: &[f64],
    pred: &[f64],
    sensitive: &[f64],
    params: &FairnessParams,
) -> Result<FairnessReport> {
    if y.len() != pred.len() || y.len() != sensitive.len() {
        return Err(DriftError::Invalid(format!(
            "fairness: {} targets, {} predictions, {} group labels",
            y.len(),
            pred.len(),
            sensitive.len()
        )));
    }
    let split = |want: bool| -> (Vec<f64>, Vec<f64>) {
        y.iter()
            .zip(pred)
            .zip(sensitive)
            .filter(|(_, s)| (**s > 0.5) == want)
            .map(|((a, b), _)| (*a, *b))
            .unzip()
    };
    let (py, pp) = split(true);
    let (uy, up) = split(false);
    if py.is_empty() || uy.is_empty() {
        return Err(DriftError::Invalid(format!(
            "fairness needs both groups of `{sensitive_column}`: {} privileged, {} unprivileged rows",
            py.len(),
            uy.len()
        )));
    }
    let privileged = group("registered", &py, &pp);
    let unprivileged = group("guest", &uy, &up);
    let mod_ = unprivileged.mean_prediction - privileged.mean_prediction;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let actual = mean(&uy) - mean(&py);
    let judged = match params.criterion {
        FairnessCriterion::MeanOutcomeDifference => mod_,
        FairnessCriterion::ExcessMeanOutcomeDifference => mod_ - actual,
    };
    Ok(FairnessReport {
        sensitive_column: sensitive_column.into(),
        mae_gap: unprivileged.mae - privileged.mae,
        privileged,
        unprivileged,
        mean_outcome_difference: mod_,
        actual_outcome_difference: actual,
        excess_outcome_difference: mod_ - actual,
        criterion: params.criterion,
        threshold: params.max_abs_mean_outcome_difference,
        acceptable: judged.abs() <= params.max_abs_mean_outcome_difference,
    })
}
