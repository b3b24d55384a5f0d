//! How each product's demand responds to its own price.
//!
//! The regressors in the rest of this crate learn *which sales lines sell
//! more* (a wholesale buyer pays less and buys more); that is the level of
//! demand given context, not the answer to "what happens if I change this
//! product's price". This module estimates that answer from the variation of
//! each product's own price over time:
//!
//! 1. **Weekly panel.** Per product and week with sales: orders (lines),
//!    units per order, and the week's median line price `P`.
//! 2. **Confounders partialled out** (the double-ML step). The shop's prices
//!    follow its demand (season, last week's sales), so a naive regression of
//!    demand on price is biased. A pooled regression with product fixed
//!    effects of log demand on month-of-year dummies, last week's log demand
//!    and price, and the price terms gives the season and the persistence
//!    `φ` of demand shocks. Each product's demand less its season is then
//!    quasi-differenced, `y_t − φ·y_{t−1}`, and so are its price terms
//!    (Cochrane–Orcutt): what is left is this week's innovation, which last
//!    week's demand (what the price was set from) does not predict, and the
//!    product's own slope keeps its meaning. (Subtracting a pooled
//!    coefficient of last week's price instead, as before, pulled every
//!    product's slope about a third of the way toward the pool: that
//!    coefficient is −φ times the product's *own* elasticity.)
//! 3. **Per-product response, partially pooled.** `ln D = b·v + c·v²` (the
//!    elasticity `b + 2c·v` may change with price, so a revenue optimum can
//!    be interior) is fitted per product by least squares on its residuals,
//!    and shrunk toward the pooled fit with an empirical-Bayes prior whose
//!    spread is the between-product variance: a product with little price
//!    variation gets the pooled response.
//! 4. **Monotone by construction.** `(b, c)` is projected (in the posterior's
//!    metric) onto the set where the elasticity lies in
//!    `[-max_abs_elasticity, 0]` over the product's observed price range
//!    and `c ≤ 0`; a hinge's elasticity above its knot is held at or below
//!    the one under it. Outside that range the curve extrapolates at the
//!    edge elasticity (constant elasticity). Demand never rises with price,
//!    and never gets less elastic as the price rises (Marshall's second
//!    law: a convex fit is mostly noise, and it makes cutting the price of
//!    an inelastic product look profitable).
//!
//! Orders per week and units per order are modelled separately (both respond
//! to price); weekly units are their product. Levels come from the product's
//! most recent weeks, and 80 % bands are split-conformal: quantiles of
//! validation-window residuals, with the coverage measured on the test
//! window.

use std::collections::BTreeMap;

use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::{ModelError, Result};

const WEEK_US: i64 = 7 * 86_400_000_000;

/// Parameters of the response fit (`[response]` in params.toml).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseParams {
    /// Weeks with sales a product needs for an estimate of its own.
    pub min_weeks: usize,
    /// Recent weeks with sales that set a product's current level.
    pub level_weeks: usize,
    /// Nominal coverage of the bands (0.8: the 10th to the 90th percentile).
    pub coverage: f64,
    /// Steepest elasticity allowed (in absolute value).
    pub max_abs_elasticity: f64,
    /// Line prices of the product's latest sales that set its current price
    /// (their list price: the 90th percentile).
    pub current_price_lines: usize,
    /// The recommendation maximises this quantile of the uplift over the
    /// response's posterior draws: 0.5 is the median uplift; lower values
    /// move away from the current price only when most plausible curves
    /// agree the move pays.
    #[serde(default = "default_decision_quantile")]
    pub decision_quantile: f64,
}

fn default_decision_quantile() -> f64 {
    0.3
}

impl Default for ResponseParams {
    fn default() -> Self {
        Self {
            min_weeks: 6,
            level_weeks: 8,
            coverage: 0.8,
            max_abs_elasticity: 8.0,
            current_price_lines: 10,
            decision_quantile: 0.3,
        }
    }
}

impl ResponseParams {
    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| {
            Err(ModelError::Params {
                model: "response",
                reason,
            })
        };
        if self.min_weeks < 3 {
            return bad(format!("min_weeks must be >= 3, found {}", self.min_weeks));
        }
        if self.level_weeks == 0 || self.current_price_lines == 0 {
            return bad("level_weeks and current_price_lines must be positive".into());
        }
        if !(self.coverage > 0.0 && self.coverage < 1.0) {
            return bad(format!(
                "coverage must be in (0, 1), found {}",
                self.coverage
            ));
        }
        if !(self.decision_quantile > 0.0 && self.decision_quantile < 1.0) {
            return bad(format!(
                "decision_quantile must be in (0, 1), found {}",
                self.decision_quantile
            ));
        }
        if !(self.max_abs_elasticity.is_finite() && self.max_abs_elasticity > 0.0) {
            return bad("max_abs_elasticity must be positive".into());
        }
        Ok(())
    }
}

/// Segments used to draw a quadratic response.
const QUADRATIC_SEGMENTS: usize = 16;

/// Which family a product's response comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// `ln D = b·v + c·v²`: elasticity changing smoothly with price.
    Quadratic,
    /// Elasticity `e1` below a knot, `e2` above it.
    Hinge,
}

/// A monotone response: `ln D(v)` piecewise linear in `v = ln(p / ref_price)`
/// with one elasticity (slope) per segment, each in
/// `[-max_abs_elasticity, 0]`; the outer segments extend beyond the
/// observed prices (constant elasticity). `ln D(0) = 0`. The slopes are
/// driven by two latent parameters: their posterior is
/// `slopes + load · z`, `z ~ N(0, I₂)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Curve {
    /// The family it was fitted as.
    pub family: Family,
    /// Interior knots in `v`, ascending.
    pub knots: Vec<f64>,
    /// The elasticity on each segment (`knots.len() + 1` of them).
    pub slopes: Vec<f64>,
    /// Each slope's loading on the two latent standard normals.
    pub load: Vec<[f64; 2]>,
}

impl Curve {
    fn segment(&self, v: f64) -> usize {
        self.knots
            .iter()
            .take_while(|&&k| v > k)
            .count()
            .min(self.slopes.len().saturating_sub(1))
    }

    /// The elasticity at `v`.
    pub fn elasticity(&self, v: f64) -> f64 {
        self.slopes[self.segment(v)]
    }

    /// `ln D(v)`, with `ln D(0) = 0` (`Σ_k slope_k · h_k(v)`, without
    /// allocating: serving evaluates it for every price of every draw).
    pub fn log_demand(&self, v: f64) -> f64 {
        let k = self.slopes.len();
        let mut total = 0.0;
        for (j, slope) in self.slopes.iter().enumerate() {
            let lo = if j == 0 {
                f64::NEG_INFINITY
            } else {
                self.knots[j - 1]
            };
            let hi = if j + 1 == k {
                f64::INFINITY
            } else {
                self.knots[j]
            };
            total += slope * (v.clamp(lo, hi) - 0f64.clamp(lo, hi));
        }
        total
    }

    /// The standard deviation of the elasticity at `v`.
    pub fn elasticity_sd(&self, v: f64) -> f64 {
        let l = self.load[self.segment(v)];
        l[0].hypot(l[1])
    }

    /// A draw from the posterior (slopes kept ≤ 0: demand never rises).
    fn draw(&self, z: [f64; 2]) -> Curve {
        Curve {
            family: self.family,
            knots: self.knots.clone(),
            slopes: self
                .slopes
                .iter()
                .zip(&self.load)
                .map(|(s, l)| (s + l[0] * z[0] + l[1] * z[1]).min(0.0))
                .collect(),
            load: Vec::new(),
        }
    }
}

/// One product's fitted response and current level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProductResponse {
    /// The product.
    pub stock_code: String,
    /// The centre of its log prices in training (`v = 0`).
    pub ref_price: f64,
    /// Its current price: the list price (90th percentile) of its latest
    /// line prices.
    pub current_price: f64,
    /// The lowest and highest weekly price observed (any window).
    pub price_range: (f64, f64),
    /// Units per week (orders × units per order): the week basis.
    pub weekly: Curve,
    /// Units per order: the line basis. (Orders per week respond as
    /// `weekly − units`.)
    pub units: Curve,
    /// Expected orders per week at the current price, now.
    pub weekly_orders: f64,
    /// Expected units per order at the current price, now.
    pub units_per_order: f64,
    /// Weeks with sales in training.
    pub weeks: usize,
    /// How much of its response comes from its own data (0: all pooled).
    pub own_weight: f64,
    /// Unit cost, if given (`data.unit_costs`).
    pub unit_cost: Option<f64>,
}

/// Figures of a product's response at one price.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AtPrice {
    /// Expected orders per week.
    pub orders: f64,
    /// Expected units per order.
    pub units_per_order: f64,
    /// Expected units per week.
    pub weekly_units: f64,
    /// Weekly units relative to the current price.
    pub relative_weekly: f64,
    /// Units per order relative to the current price.
    pub relative_units_per_order: f64,
}

impl ProductResponse {
    fn v(&self, price: f64) -> f64 {
        (price.max(1e-9) / self.ref_price).ln()
    }

    /// Expected demand at `price`.
    pub fn at(&self, price: f64) -> AtPrice {
        self.at_with(price, &self.weekly, &self.units)
    }

    fn at_with(&self, price: f64, weekly: &Curve, units: &Curve) -> AtPrice {
        let (v, v0) = (self.v(price), self.v(self.current_price));
        let d_week = (weekly.log_demand(v) - weekly.log_demand(v0)).exp();
        let d_units = (units.log_demand(v) - units.log_demand(v0)).exp();
        let d_orders = d_week / d_units;
        AtPrice {
            orders: self.weekly_orders * d_orders,
            units_per_order: self.units_per_order * d_units,
            weekly_units: self.weekly_orders * self.units_per_order * d_orders * d_units,
            relative_weekly: d_orders * d_units,
            relative_units_per_order: d_units,
        }
    }

    /// Elasticity of weekly units at `price`, and its standard deviation.
    pub fn weekly_elasticity(&self, price: f64) -> (f64, f64) {
        let v = self.v(price);
        (self.weekly.elasticity(v), self.weekly.elasticity_sd(v))
    }

    /// Elasticity of units per order at `price`, and its standard deviation.
    pub fn line_elasticity(&self, price: f64) -> (f64, f64) {
        let v = self.v(price);
        (self.units.elasticity(v), self.units.elasticity_sd(v))
    }

    /// `draws` samples of the response (orders, units curves) from the
    /// posterior, seeded by the product (the same answer every time).
    pub fn posterior_draws(&self, draws: usize) -> Vec<(Curve, Curve)> {
        let seed = self
            .stock_code
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            });
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut z = || -> [f64; 2] {
            [
                StandardNormal.sample(&mut rng),
                StandardNormal.sample(&mut rng),
            ]
        };
        (0..draws)
            .map(|_| (self.weekly.draw(z()), self.units.draw(z())))
            .collect()
    }

    /// Demand at `price` under a posterior draw.
    pub fn at_draw(&self, price: f64, draw: &(Curve, Curve)) -> AtPrice {
        self.at_with(price, &draw.0, &draw.1)
    }
}

/// Coverage of the bands: the quantiles of log residuals that make them, and
/// how often they held.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Band {
    /// Lower quantile of `ln(actual) − ln(predicted)` on validation.
    pub lo: f64,
    /// Upper quantile.
    pub hi: f64,
    /// Share of validation observations inside (≈ nominal by construction).
    pub validation_coverage: f64,
    /// Share of test observations inside: the honest figure.
    pub test_coverage: f64,
    /// Validation observations.
    pub validation_n: usize,
    /// Test observations.
    pub test_n: usize,
    /// `mean(exp(residual))` on validation, residuals winsorised at their
    /// 2.5th/97.5th percentiles: turns a median-type prediction into an
    /// expected value.
    pub smearing: f64,
}

/// The fitted responses of every product (`response/response.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseModel {
    /// Format version.
    pub version: u32,
    /// The parameters it was fitted with.
    pub params: ResponseParams,
    /// The pooled elasticity of weekly units (the prior mean of every product).
    pub pooled_weekly: f64,
    /// The pooled elasticity of units per order.
    pub pooled_units: f64,
    /// Weekly units band (week basis).
    pub weekly_band: Band,
    /// Units-per-order band (line basis).
    pub line_band: Band,
    /// Products, sorted by stock code.
    pub products: Vec<ProductResponse>,
    /// Fit diagnostics (counts, nuisance coefficients).
    pub diagnostics: BTreeMap<String, f64>,
    /// Predicted against realised weekly units on the test window (the
    /// training-window fit, out of sample), by price band and by decile of
    /// price change.
    #[serde(default)]
    pub test_calibration: TestCalibration,
}

/// One bucket of [`TestCalibration`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationBucket {
    /// Lower edge of the bucket (log price relative, or log price change).
    pub lo: f64,
    /// Upper edge.
    pub hi: f64,
    /// Product-weeks in it.
    pub weeks: usize,
    /// Mean predicted weekly units.
    pub predicted: f64,
    /// Mean realised weekly units.
    pub realised: f64,
}

/// Time-split calibration on the test window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TestCalibration {
    /// By quintile of `ln(price / the product's reference price)`.
    pub by_price_band: Vec<CalibrationBucket>,
    /// By decile of `ln(price / the product's last training-window price)`.
    pub by_price_change: Vec<CalibrationBucket>,
}

/// Buckets `(key, predicted, realised)` by `n` quantiles of the key.
fn buckets(mut rows: Vec<(f64, f64, f64)>, n: usize) -> Vec<CalibrationBucket> {
    rows.retain(|r| r.0.is_finite() && r.1.is_finite() && r.2.is_finite());
    if rows.is_empty() {
        return Vec::new();
    }
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    let len = rows.len();
    (0..n)
        .filter_map(|i| {
            let part = &rows[i * len / n..(i + 1) * len / n];
            if part.is_empty() {
                return None;
            }
            let k = part.len() as f64;
            Some(CalibrationBucket {
                lo: part[0].0,
                hi: part[part.len() - 1].0,
                weeks: part.len(),
                predicted: part.iter().map(|r| r.1).sum::<f64>() / k,
                realised: part.iter().map(|r| r.2).sum::<f64>() / k,
            })
        })
        .collect()
}

impl ResponseModel {
    /// A product's response.
    pub fn get(&self, stock_code: &str) -> Option<&ProductResponse> {
        self.products
            .binary_search_by(|p| p.stock_code.as_str().cmp(stock_code))
            .ok()
            .map(|i| &self.products[i])
    }

    /// JSON bytes.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        let mut v = serde_json::to_vec(self)?;
        v.push(b'\n');
        Ok(v)
    }

    /// Reads JSON bytes, checking the version.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let m: Self = serde_json::from_slice(bytes).map_err(|e| ModelError::Format {
            model: "response".into(),
            reason: e.to_string(),
        })?;
        if m.version != 1 {
            return Err(ModelError::Format {
                model: "response".into(),
                reason: format!("unsupported version {}", m.version),
            });
        }
        Ok(m)
    }
}

/// One sales line, as the fit needs it.
#[derive(Debug, Clone, Copy)]
pub struct Line<'a> {
    /// Product.
    pub stock_code: &'a str,
    /// Timestamp (μs).
    pub ts: i64,
    /// Unit price.
    pub price: f64,
    /// Units.
    pub quantity: f64,
}

/// Time windows of the fit: training `[start, train_end)`, validation
/// `[train_end, val_end)`, test `[val_end, ..]`.
#[derive(Debug, Clone, Copy)]
pub struct Windows {
    /// First timestamp.
    pub start: i64,
    /// End of training (exclusive).
    pub train_end: i64,
    /// End of validation (exclusive).
    pub val_end: i64,
}

/// One product-week with sales.
#[derive(Debug, Clone)]
struct Week {
    week: i64,
    month: usize,
    orders: f64,
    units: f64,
    price: f64,
}

/// Monday-aligned week index of a timestamp (1970-01-01 was a Thursday).
fn iso_week(ts: i64) -> i64 {
    (ts + 3 * 86_400_000_000).div_euclid(WEEK_US)
}

/// The Monday starting week `week`, in μs.
fn week_start(week: i64) -> i64 {
    week * WEEK_US - 3 * 86_400_000_000
}

/// Weekly panel of one product (Monday-aligned weeks), in week order.
fn weekly(lines: &[&Line<'_>]) -> Vec<Week> {
    let mut by_week: BTreeMap<i64, (f64, f64, Vec<f64>, i64)> = BTreeMap::new();
    for l in lines {
        let w = iso_week(l.ts);
        let e = by_week.entry(w).or_insert((0.0, 0.0, Vec::new(), l.ts));
        e.0 += 1.0;
        e.1 += l.quantity;
        e.2.push(l.price);
    }
    by_week
        .into_iter()
        .map(|(week, (orders, units, mut prices, ts))| {
            prices.sort_by(f64::total_cmp);
            Week {
                week,
                month: etl::civil_from_micros(ts).1 as usize - 1,
                orders,
                units,
                price: list_price(&prices),
            }
        })
        .collect()
}

/// The list price among sorted line prices: their 90th percentile. Bulk
/// buyers get lower tier prices, so the median moves with the week's mix of
/// buyers (and with their volumes: confounding); the list price moves only
/// when the shop changes it.
fn list_price(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        n => sorted[((n - 1) as f64 * 0.9).round() as usize],
    }
}

fn median_sorted(v: &[f64]) -> f64 {
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}

/// Solves `a x = b` (n × n, row-major) by Gaussian elimination with partial
/// pivoting; `None` when singular.
fn solve(mut a: Vec<f64>, mut b: Vec<f64>, n: usize) -> Option<Vec<f64>> {
    for col in 0..n {
        let pivot =
            (col..n).max_by(|&i, &j| a[i * n + col].abs().total_cmp(&a[j * n + col].abs()))?;
        if a[pivot * n + col].abs() < 1e-12 {
            return None;
        }
        if pivot != col {
            for k in 0..n {
                a.swap(col * n + k, pivot * n + k);
            }
            b.swap(col, pivot);
        }
        for row in col + 1..n {
            let f = a[row * n + col] / a[col * n + col];
            for k in col..n {
                a[row * n + k] -= f * a[col * n + k];
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let s: f64 = (row + 1..n).map(|k| a[row * n + k] * x[k]).sum();
        x[row] = (b[row] - s) / a[row * n + row];
    }
    Some(x)
}

fn inv2(m: &[f64; 4]) -> Option<[f64; 4]> {
    let det = m[0] * m[3] - m[1] * m[2];
    if det.abs() < 1e-18 || !det.is_finite() {
        return None;
    }
    Some([m[3] / det, -m[1] / det, -m[2] / det, m[0] / det])
}

fn quad(m: &[f64; 4], g: [f64; 2]) -> f64 {
    g[0] * (m[0] * g[0] + m[1] * g[1]) + g[1] * (m[2] * g[0] + m[3] * g[1])
}

/// Lower-triangular Cholesky factor of a 2×2 covariance (zeros where it is
/// not positive definite).
fn chol2(c: &[f64; 4]) -> [f64; 4] {
    let l00 = c[0].max(0.0).sqrt();
    let l10 = if l00 > 0.0 { c[2] / l00 } else { 0.0 };
    let l11 = (c[3] - l10 * l10).max(0.0).sqrt();
    [l00, 0.0, l10, l11]
}

/// Projects a quadratic's `(b, c)` (in the metric `precision`) onto the set
/// where its elasticity `b + 2c·v` lies within `[-max, 0]` at both ends of
/// `range` (so everywhere in it) and `c ≤ 0` (it never flattens as the
/// price rises).
fn project(beta: [f64; 2], precision: &[f64; 4], range: (f64, f64), max: f64) -> [f64; 2] {
    let mut cons: Vec<([f64; 2], f64)> = Vec::new();
    for v in [range.0, range.1] {
        cons.push(([1.0, 2.0 * v], 0.0));
        cons.push(([-1.0, -2.0 * v], max));
    }
    // Demand no less elastic at higher prices: `c ≤ 0`.
    cons.push(([0.0, 1.0], 0.0));
    let feasible = |x: [f64; 2]| {
        cons.iter()
            .all(|(g, h)| g[0] * x[0] + g[1] * x[1] <= h + 1e-12)
    };
    if feasible(beta) {
        return beta;
    }
    let Some(pinv) = inv2(precision) else {
        return [beta[0].clamp(-max, 0.0), 0.0];
    };
    let mut best: Option<([f64; 2], f64)> = None;
    let mut consider = |x: [f64; 2]| {
        if x.iter().all(|v| v.is_finite()) && feasible(x) {
            let d = quad(precision, [x[0] - beta[0], x[1] - beta[1]]);
            if best.is_none_or(|(_, bd)| d < bd) {
                best = Some((x, d));
            }
        }
    };
    for (g, h) in &cons {
        let pg = [
            pinv[0] * g[0] + pinv[1] * g[1],
            pinv[2] * g[0] + pinv[3] * g[1],
        ];
        let gpg = g[0] * pg[0] + g[1] * pg[1];
        if gpg > 0.0 {
            let t = (g[0] * beta[0] + g[1] * beta[1] - h) / gpg;
            consider([beta[0] - t * pg[0], beta[1] - t * pg[1]]);
        }
    }
    for i in 0..cons.len() {
        for j in i + 1..cons.len() {
            let (g1, h1) = cons[i];
            let (g2, h2) = cons[j];
            if let Some(inv) = inv2(&[g1[0], g1[1], g2[0], g2[1]]) {
                consider([inv[0] * h1 + inv[1] * h2, inv[2] * h1 + inv[3] * h2]);
            }
        }
    }
    best.map_or([beta[0].clamp(-max, 0.0), 0.0], |(x, _)| x)
}

/// Month dummies (11), last week's log demand (of the part being fitted)
/// and log price, and a missing-lag indicator.
const NUIS: usize = 14;
/// Index of last week's log demand among the nuisance columns.
const LAG_Y: usize = 11;
/// Index of last week's log price.
const LAG_V: usize = 12;
/// Index of the missing-lag indicator.
const NO_LAG: usize = 13;
/// Largest demand-shock persistence the quasi-differencing uses.
const MAX_PERSISTENCE: f64 = 0.9;

/// One product's week as the fit sees it.
struct Obs {
    /// ln(units per week), ln(units per order).
    y: [f64; 2],
    /// ln(price / reference).
    v: f64,
    /// Month of year (0-11).
    month: usize,
    /// The previous week's `y` and `v`, when the product sold that week
    /// too (the shop's prices follow last week's demand: confounding).
    lag: Option<([f64; 2], f64)>,
}

impl Obs {
    /// The nuisance columns for demand part `t`; `mean_y` stands in for a
    /// missing lag.
    fn nuisance(&self, t: usize, mean_y: f64) -> [f64; NUIS] {
        let mut n = [0.0; NUIS];
        if self.month > 0 {
            n[self.month - 1] = 1.0;
        }
        match self.lag {
            Some((y, v)) => {
                n[LAG_Y] = y[t];
                n[LAG_V] = v;
            }
            None => {
                n[LAG_Y] = mean_y;
                n[NO_LAG] = 1.0;
            }
        }
        n
    }
}

fn observations(weeks: &[Week], ref_price: f64) -> Vec<Obs> {
    let y = |w: &Week| [w.units.ln(), (w.units / w.orders).ln()];
    let v = |w: &Week| (w.price / ref_price).ln();
    weeks
        .iter()
        .enumerate()
        .map(|(i, w)| Obs {
            y: y(w),
            v: v(w),
            month: w.month,
            lag: i
                .checked_sub(1)
                .map(|j| &weeks[j])
                .filter(|prev| prev.week == w.week - 1)
                .map(|prev| (y(prev), v(prev))),
        })
        .collect()
}

/// Mean of demand part `t` over a product's weeks.
fn mean_y(obs: &[Obs], t: usize) -> f64 {
    obs.iter().map(|o| o.y[t]).sum::<f64>() / obs.len().max(1) as f64
}

#[allow(clippy::needless_range_loop)] // matrix arithmetic reads best by index
/// The pooled regression, with product fixed effects, of each demand part
/// on the nuisance and a quadratic in log price: the nuisance coefficients
/// (the season and the shocks' persistence, taken out in [`fit_curves`]:
/// the double-ML step) and the pooled `(b, c)`.
fn nuisance(panels: &[Vec<Obs>]) -> ([[f64; NUIS]; 2], [[f64; 2]; 2]) {
    const P: usize = NUIS + 2;
    let mut gamma = [[0.0; NUIS]; 2];
    let mut pooled = [[0.0; 2]; 2];
    for t in 0..2 {
        let mut xtx = vec![0.0; P * P];
        let mut xty = vec![0.0; P];
        for obs in panels {
            if obs.len() < 2 {
                continue;
            }
            let k = obs.len() as f64;
            let my_t = mean_y(obs, t);
            let row = |o: &Obs| -> [f64; P] {
                let mut x = [0.0; P];
                x[..NUIS].copy_from_slice(&o.nuisance(t, my_t));
                x[NUIS] = o.v;
                x[NUIS + 1] = o.v * o.v;
                x
            };
            let mut mx = [0.0; P];
            for o in obs {
                let x = row(o);
                for j in 0..P {
                    mx[j] += x[j] / k;
                }
            }
            for o in obs {
                let mut x = row(o);
                for j in 0..P {
                    x[j] -= mx[j];
                }
                for a in 0..P {
                    for b in 0..P {
                        xtx[a * P + b] += x[a] * x[b];
                    }
                    xty[a] += x[a] * (o.y[t] - my_t);
                }
            }
        }
        for a in 0..P {
            xtx[a * P + a] += 1e-6;
        }
        if let Some(c) = solve(xtx, xty, P) {
            gamma[t].copy_from_slice(&c[..NUIS]);
            pooled[t] = [c[NUIS], c[NUIS + 1]];
        }
    }
    (gamma, pooled)
}

/// The prior of a product's response: the pooled response and how far a
/// product may differ from it.
#[derive(Debug, Clone, Copy)]
struct Prior {
    /// Pooled elasticity at the reference price, and pooled curvature.
    mean: [f64; 2],
    /// Standard deviations of a product's elasticity and curvature around them.
    sd: [f64; 2],
    /// Pooled noise variance of weekly log demand.
    noise_var: f64,
}

/// Floor of the prior spread of a product's elasticity around the pool.
const PRIOR_SD_FLOOR: f64 = 0.3;
/// Cap of that spread.
const PRIOR_SD_CAP: f64 = 1.5;
/// Prior spread of a product's curvature.
const CURVATURE_SD: f64 = 1.0;
/// How far the two elasticities of a hinge may differ, a priori (1 sd).
const HINGE_STEP_SD: f64 = 2.0;
/// Prior spread of each elasticity of a hinge around the pool (at least).
const HINGE_SLOPE_SD: f64 = 1.0;

/// Bayesian least squares with two regressors: posterior mean and
/// covariance, and the residual sum of squares at the mean.
fn bayes2(
    x: &[[f64; 2]],
    y: &[f64],
    mu: [f64; 2],
    prec: [f64; 4],
    s2: f64,
) -> Option<([f64; 2], [f64; 4], f64)> {
    let mut a = prec;
    let mut rhs = [
        prec[0] * mu[0] + prec[1] * mu[1],
        prec[2] * mu[0] + prec[3] * mu[1],
    ];
    for (r, yi) in x.iter().zip(y) {
        a[0] += r[0] * r[0] / s2;
        a[1] += r[0] * r[1] / s2;
        a[2] += r[1] * r[0] / s2;
        a[3] += r[1] * r[1] / s2;
        rhs[0] += r[0] * yi / s2;
        rhs[1] += r[1] * yi / s2;
    }
    let cov = inv2(&a)?;
    let mean = [
        cov[0] * rhs[0] + cov[1] * rhs[1],
        cov[2] * rhs[0] + cov[3] * rhs[1],
    ];
    let rss = x
        .iter()
        .zip(y)
        .map(|(r, yi)| (yi - mean[0] * r[0] - mean[1] * r[1]).powi(2))
        .sum();
    Some((mean, cov, rss))
}

/// The two-regressor design `f(v)` of a product's weeks, quasi-differenced
/// for AR(1) demand shocks of persistence `phi` (Cochrane–Orcutt): each
/// week's row is `f(v_t) − φ·f(v_{t−1})`, with the product's mean of `f`
/// standing in for a week without a previous one; then demeaned (the
/// intercept). The demand side is differenced the same way in
/// [`fit_curves`], so the slopes keep their meaning.
fn design(
    vs: &[f64],
    lags: &[Option<f64>],
    phi: f64,
    f: impl Fn(f64) -> [f64; 2],
) -> Vec<[f64; 2]> {
    let n = vs.len().max(1) as f64;
    let rows: Vec<[f64; 2]> = vs.iter().map(|&v| f(v)).collect();
    let mean = [
        rows.iter().map(|r| r[0]).sum::<f64>() / n,
        rows.iter().map(|r| r[1]).sum::<f64>() / n,
    ];
    demeaned(
        rows.iter()
            .zip(lags)
            .map(|(r, lag)| {
                let prev = lag.map_or(mean, &f);
                [r[0] - phi * prev[0], r[1] - phi * prev[1]]
            })
            .collect(),
    )
}

/// Demeans the columns of a two-regressor design.
fn demeaned(x: Vec<[f64; 2]>) -> Vec<[f64; 2]> {
    let n = x.len().max(1) as f64;
    let m = [
        x.iter().map(|r| r[0]).sum::<f64>() / n,
        x.iter().map(|r| r[1]).sum::<f64>() / n,
    ];
    x.into_iter().map(|r| [r[0] - m[0], r[1] - m[1]]).collect()
}

/// A fit with the noise variance estimated from the product's own
/// residuals (shrunk toward the pooled variance) and inflated for their
/// autocorrelation (weekly demand shocks and price levels persist, so
/// consecutive weeks are not independent: the variance of a mean of AR(1)
/// noise is `(1 + ρ)/(1 − ρ)` times the naive one), and its AIC.
fn fit_with_noise(
    x: &[[f64; 2]],
    y: &[f64],
    mu: [f64; 2],
    prec: [f64; 4],
    noise_var: f64,
    params: f64,
) -> Option<([f64; 2], [f64; 4], f64)> {
    let (m0, _, rss0) = bayes2(x, y, mu, prec, noise_var)?;
    let n = y.len() as f64;
    let resid: Vec<f64> = x
        .iter()
        .zip(y)
        .map(|(r, yi)| yi - m0[0] * r[0] - m0[1] * r[1])
        .collect();
    let lag: f64 = resid.windows(2).map(|w| w[0] * w[1]).sum();
    let rho = if rss0 > 0.0 {
        (lag / rss0).clamp(0.0, 0.8)
    } else {
        0.0
    };
    let s2 = (rss0 + 5.0 * noise_var) / (n + 5.0) * (1.0 + rho) / (1.0 - rho);
    let (mean, cov, rss) = bayes2(x, y, mu, prec, s2)?;
    let aic = n * (rss.max(1e-12) / n).ln() + 2.0 * params;
    Some((mean, cov, aic))
}

/// The quadratic's curve: slopes of `b + 2c·v` on `QUADRATIC_SEGMENTS`
/// segments across `range`, constant elasticity beyond.
fn quadratic_curve(beta: [f64; 2], cov: &[f64; 4], range: (f64, f64)) -> Curve {
    let l = chol2(cov);
    let at = |m: f64| -> (f64, [f64; 2]) {
        (
            beta[0] + 2.0 * beta[1] * m,
            [l[0] + 2.0 * m * l[2], 2.0 * m * l[3]],
        )
    };
    let (lo, hi) = range;
    if (hi - lo).is_nan() || hi - lo <= 1e-9 {
        let (s, ld) = at(lo);
        return Curve {
            family: Family::Quadratic,
            knots: Vec::new(),
            slopes: vec![s],
            load: vec![ld],
        };
    }
    let q = QUADRATIC_SEGMENTS;
    let knots: Vec<f64> = (0..=q)
        .map(|j| lo + (hi - lo) * j as f64 / q as f64)
        .collect();
    let mut points = vec![lo];
    points.extend((0..q).map(|j| 0.5 * (knots[j] + knots[j + 1])));
    points.push(hi);
    let (slopes, load) = points.into_iter().map(at).unzip();
    Curve {
        family: Family::Quadratic,
        knots,
        slopes,
        load,
    }
}

/// Fits one product's response for one demand part: the quadratic, and a
/// hinge at each candidate knot (quantiles 10 %..90 % of its log prices,
/// with 3 weeks on each side at least); the lowest AIC wins (the hinge
/// pays for its knot). Without
/// enough weeks (`has_own` false) the prior's quadratic. Elasticities are
/// kept within `[-max, 0]` over the observed range, and never rise with
/// the price (a hinge by [`steepening`], a quadratic by [`project`]).
fn fit_product(
    (vs, lags, phi): (&[f64], &[Option<f64>], f64),
    ys: &[f64],
    prior: &Prior,
    max: f64,
    has_own: bool,
) -> Curve {
    let n = vs.len();
    let lo = vs.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = vs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let range = if n == 0 { (0.0, 0.0) } else { (lo, hi) };
    let quad_prec = [
        1.0 / prior.sd[0].powi(2),
        0.0,
        0.0,
        1.0 / prior.sd[1].powi(2),
    ];
    let prior_quadratic = || {
        let cov = [prior.sd[0].powi(2), 0.0, 0.0, prior.sd[1].powi(2)];
        let b = project(prior.mean, &quad_prec, range, max);
        quadratic_curve(b, &cov, range)
    };
    if !has_own || n < 4 {
        return prior_quadratic();
    }
    let ym = ys.iter().sum::<f64>() / n as f64;
    let y: Vec<f64> = ys.iter().map(|v| v - ym).collect();
    let xq = design(vs, lags, phi, |v| [v, v * v]);
    let Some((bq, cq, bic_q)) =
        fit_with_noise(&xq, &y, prior.mean, quad_prec, prior.noise_var, 2.0)
    else {
        return prior_quadratic();
    };
    let mut best: Option<(f64, [f64; 2], [f64; 4], f64)> = None; // (knot, β, cov, bic)
    let mut sorted = vs.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rw = 1.0 / HINGE_STEP_SD.powi(2);
    // Each slope of a hinge is allowed far from the pool: a kink is what
    // the pool cannot know.
    let p0 = 1.0 / prior.sd[0].max(HINGE_SLOPE_SD).powi(2);
    let hinge_prec = [p0 + rw, -rw, -rw, p0 + rw];
    for q in (2..=18).map(|i| f64::from(i) * 0.05) {
        let k = sorted[((n - 1) as f64 * q).round() as usize];
        let below = vs.iter().filter(|&&v| v < k - 1e-9).count();
        let above = vs.iter().filter(|&&v| v > k + 1e-9).count();
        if below < 3 || above < 3 {
            continue;
        }
        let xh = design(vs, lags, phi, |v| [(v - k).min(0.0), (v - k).max(0.0)]);
        let mu = [prior.mean[0], prior.mean[0]];
        if let Some((b, c, bic)) = fit_with_noise(&xh, &y, mu, hinge_prec, prior.noise_var, 3.0)
            && best.is_none_or(|(_, _, _, bb)| bic < bb)
        {
            best = Some((k, steepening(b, &c), c, bic));
        }
    }
    match best {
        Some((k, b, c, bic)) if bic < bic_q => {
            let l = chol2(&c);
            Curve {
                family: Family::Hinge,
                knots: vec![k],
                slopes: vec![b[0].clamp(-max, 0.0), b[1].clamp(-max, 0.0)],
                load: vec![[l[0], 0.0], [l[2], l[3]]],
            }
        }
        _ => {
            let prec = inv2(&cq).unwrap_or(quad_prec);
            quadratic_curve(project(bq, &prec, range, max), &cq, range)
        }
    }
}

/// A hinge's elasticities `[below, above]` projected, in the posterior's
/// metric (covariance `cov`), onto `above ≤ below`: demand no less elastic
/// above the knot than below it. Where the fit says otherwise, the
/// projection is one constant elasticity.
fn steepening(b: [f64; 2], cov: &[f64; 4]) -> [f64; 2] {
    let excess = b[1] - b[0];
    if excess <= 0.0 {
        return b;
    }
    // argmin (x − b)ᵀΣ⁻¹(x − b) subject to g·x = 0, g = (−1, 1):
    // x = b − Σg·(g·b)/(gᵀΣg).
    let sg = [cov[1] - cov[0], cov[3] - cov[2]];
    let gsg = sg[1] - sg[0];
    let x = if gsg > 1e-12 {
        let t = excess / gsg;
        [b[0] - t * sg[0], b[1] - t * sg[1]]
    } else {
        b
    };
    // On the constraint x₀ = x₁ (up to rounding).
    let m = 0.5 * (x[0] + x[1]);
    [m, m]
}

/// Per-product curves of one fit.
struct FittedCurves {
    /// `[orders, units per order]` per product.
    curves: Vec<[Curve; 2]>,
    /// Share of each product's response from its own data.
    own_weight: Vec<f64>,
    /// Whether the product had enough weeks for an estimate of its own.
    own: Vec<bool>,
    /// The pooled elasticities of orders and of units per order.
    pooled: [f64; 2],
    /// Nuisance and pooled coefficients, family counts.
    diagnostics: BTreeMap<String, f64>,
}

/// Subtracts the nuisance (pooled, with product fixed effects), then fits
/// each product and demand part with [`fit_product`] under a prior centred
/// on the pooled response, whose spread is the between-product spread of
/// simple per-product elasticities (method of moments).
fn fit_curves(panels: &[Vec<Obs>], params: &ResponseParams) -> FittedCurves {
    let (gamma, pooled) = nuisance(panels);
    let mut diagnostics = BTreeMap::new();
    // The persistence of each part's demand shocks: last week's demand's
    // coefficient in the pooled regression.
    let phi: [f64; 2] = std::array::from_fn(|t| gamma[t][LAG_Y].clamp(0.0, MAX_PERSISTENCE));
    diagnostics.insert("nuisance.lag_units_on_log_units".into(), gamma[0][LAG_Y]);
    diagnostics.insert("nuisance.lag_price_on_log_units".into(), gamma[0][LAG_V]);
    diagnostics.insert(
        "nuisance.lag_units_per_order_on_log_units_per_order".into(),
        gamma[1][LAG_Y],
    );
    diagnostics.insert("pooled.weekly.elasticity".into(), pooled[0][0]);
    diagnostics.insert("pooled.weekly.curvature".into(), pooled[0][1]);
    diagnostics.insert("pooled.units_per_order.elasticity".into(), pooled[1][0]);
    diagnostics.insert("pooled.units_per_order.curvature".into(), pooled[1][1]);
    // Log demand per product and part, less the season, quasi-differenced
    // for the persistence of its shocks: `y_t − φ·y_{t−1}` (the product's
    // mean for a week without a previous one). The price terms are
    // differenced alike in `design`, so each product's own slope is
    // estimated on the shocks' innovations, which last week's demand (what
    // the shop set this week's price from) no longer predicts. Subtracting
    // a pooled coefficient of last week's price instead would pull every
    // product's slope toward the pool (that coefficient is −φ times the
    // product's own elasticity).
    let ys: Vec<[Vec<f64>; 2]> = panels
        .iter()
        .map(|obs| {
            std::array::from_fn(|t| {
                let my = mean_y(obs, t);
                obs.iter()
                    .map(|o| {
                        let n = o.nuisance(t, my);
                        let season: f64 = (0..LAG_Y).map(|j| gamma[t][j] * n[j]).sum();
                        o.y[t] - season - gamma[t][NO_LAG] * n[NO_LAG] - phi[t] * n[LAG_Y]
                    })
                    .collect()
            })
        })
        .collect();
    // Each product's log prices and last week's.
    let prices: Vec<(Vec<f64>, Vec<Option<f64>>)> = panels
        .iter()
        .map(|obs| {
            (
                obs.iter().map(|o| o.v).collect(),
                obs.iter().map(|o| o.lag.map(|(_, v)| v)).collect(),
            )
        })
        .collect();
    let mut priors = [Prior {
        mean: [0.0, 0.0],
        sd: [PRIOR_SD_FLOOR, CURVATURE_SD],
        noise_var: 0.1,
    }; 2];
    for t in 0..2 {
        let (mut slopes, mut variances) = (Vec::new(), Vec::new());
        let (mut rss_all, mut dof_all) = (0.0, 0.0);
        for ((obs, y), (vs, lag)) in panels.iter().zip(&ys).zip(&prices) {
            if obs.len() < params.min_weeks {
                continue;
            }
            let n = obs.len() as f64;
            let x: Vec<f64> = design(vs, lag, phi[t], |v| [v, 0.0])
                .iter()
                .map(|r| r[0])
                .collect();
            let my = y[t].iter().sum::<f64>() / n;
            let sxx: f64 = x.iter().map(|xi| xi * xi).sum();
            if sxx < 1e-6 {
                continue;
            }
            let sxy: f64 = x.iter().zip(&y[t]).map(|(xi, yi)| xi * (yi - my)).sum();
            let b = sxy / sxx;
            let rss: f64 = x
                .iter()
                .zip(&y[t])
                .map(|(xi, yi)| (yi - my - b * xi).powi(2))
                .sum();
            slopes.push(b);
            variances.push(rss / (n - 2.0).max(1.0) / sxx);
            rss_all += rss;
            dof_all += n - 2.0;
        }
        // The spread of products' elasticities around the pool: a robust
        // (MAD) spread of the well-measured products' slopes (slope sd under
        // 0.5), clamped: products with hardly any price variation give
        // wild slopes that a variance would let dominate.
        let mut precise: Vec<f64> = slopes
            .iter()
            .zip(&variances)
            .filter(|(_, v)| **v < 0.25)
            .map(|(b, _)| *b)
            .collect();
        let sd0 = if precise.len() >= 5 {
            precise.sort_by(f64::total_cmp);
            let med = median_sorted(&precise);
            let mut dev: Vec<f64> = precise.iter().map(|b| (b - med).abs()).collect();
            dev.sort_by(f64::total_cmp);
            (1.4826 * median_sorted(&dev)).clamp(PRIOR_SD_FLOOR, PRIOR_SD_CAP)
        } else {
            PRIOR_SD_FLOOR
        };
        priors[t] = Prior {
            mean: pooled[t],
            sd: [sd0, CURVATURE_SD],
            noise_var: if dof_all > 0.0 {
                (rss_all / dof_all).max(1e-4)
            } else {
                0.1
            },
        };
        diagnostics.insert(format!("prior.sd.{t}"), sd0);
        diagnostics.insert(format!("prior.noise_var.{t}"), priors[t].noise_var);
    }
    let mut curves = Vec::with_capacity(panels.len());
    let mut own_weight = Vec::with_capacity(panels.len());
    let mut own = Vec::with_capacity(panels.len());
    let mut hinges = 0usize;
    for ((obs, y), (vs, lag)) in panels.iter().zip(&ys).zip(&prices) {
        let has_own = obs.len() >= params.min_weeks;
        let pair: [Curve; 2] = std::array::from_fn(|t| {
            fit_product(
                (vs, lag, phi[t]),
                &y[t],
                &priors[t],
                params.max_abs_elasticity,
                has_own,
            )
        });
        hinges += pair.iter().filter(|c| c.family == Family::Hinge).count();
        // Own weight: how much the elasticity's uncertainty at the reference
        // price shrank from the prior's.
        let weight = (0..2)
            .map(|t| {
                let sd = pair[t].elasticity_sd(0.0);
                0.5 * (1.0 - (sd / priors[t].sd[0]).powi(2)).clamp(0.0, 1.0)
            })
            .sum::<f64>();
        curves.push(pair);
        own_weight.push(if has_own { weight } else { 0.0 });
        own.push(has_own);
    }
    diagnostics.insert("curves.hinge".into(), hinges as f64);
    diagnostics.insert(
        "curves.quadratic".into(),
        (2 * panels.len() - hinges) as f64,
    );
    FittedCurves {
        curves,
        own_weight,
        own,
        pooled: [pooled[0][0], pooled[1][0]],
        diagnostics,
    }
}

/// Fits the responses from sales lines. `costs` maps stock codes to unit
/// costs (optional input of the pipeline).
pub fn fit_response(
    lines: &[Line<'_>],
    windows: &Windows,
    params: &ResponseParams,
    costs: &BTreeMap<String, f64>,
) -> Result<ResponseModel> {
    params.validate()?;
    // Lines per product, in time order.
    let mut by_product: BTreeMap<&str, Vec<&Line<'_>>> = BTreeMap::new();
    for l in lines {
        if l.price > 0.0 && l.quantity > 0.0 && l.price.is_finite() && l.quantity.is_finite() {
            by_product.entry(l.stock_code).or_default().push(l);
        }
    }
    for v in by_product.values_mut() {
        v.sort_by_key(|l| l.ts);
    }
    // Training panels.
    struct Prod<'a> {
        code: &'a str,
        all: Vec<Week>,
        train: Vec<Week>,
        ref_price: f64,
        current: f64,
    }
    let mut prods: Vec<Prod<'_>> = Vec::new();
    for (code, lines) in &by_product {
        let all = weekly(lines);
        let train_lines: Vec<&Line<'_>> = lines
            .iter()
            .copied()
            .filter(|l| l.ts < windows.train_end)
            .collect();
        let train = weekly(&train_lines);
        let basis = if train.is_empty() { &all } else { &train };
        let ref_price =
            (basis.iter().map(|w| w.price.ln()).sum::<f64>() / basis.len().max(1) as f64).exp();
        let mut recent: Vec<f64> = lines
            .iter()
            .rev()
            .take(params.current_price_lines)
            .map(|l| l.price)
            .collect();
        recent.sort_by(f64::total_cmp);
        prods.push(Prod {
            code,
            all,
            train,
            ref_price,
            current: list_price(&recent),
        });
    }
    if prods.is_empty() {
        return Err(ModelError::Training {
            model: "response",
            reason: "no sales lines to fit".into(),
        });
    }
    let ranges: Vec<(f64, f64)> = prods
        .iter()
        .map(|p| {
            let lo = p.all.iter().map(|w| w.price).fold(f64::INFINITY, f64::min);
            let hi = p.all.iter().map(|w| w.price).fold(0.0, f64::max);
            ((lo / p.ref_price).ln(), (hi / p.ref_price).ln())
        })
        .collect();
    // Two fits: on the training weeks, to calibrate the bands on validation
    // and measure them on test honestly; and on every week, for the curves
    // that serve (a refit on all data, as for any model once validated).
    let train_fit = fit_curves(
        &prods
            .iter()
            .map(|p| observations(&p.train, p.ref_price))
            .collect::<Vec<_>>(),
        params,
    );
    let full_fit = fit_curves(
        &prods
            .iter()
            .map(|p| observations(&p.all, p.ref_price))
            .collect::<Vec<_>>(),
        params,
    );
    let mut diagnostics = full_fit.diagnostics.clone();
    let pooled = full_fit.pooled;
    let make = |fit: &FittedCurves, i: usize, p: &Prod<'_>| ProductResponse {
        stock_code: p.code.to_string(),
        ref_price: p.ref_price,
        current_price: p.current,
        price_range: (
            p.ref_price * ranges[i].0.exp(),
            p.ref_price * ranges[i].1.exp(),
        ),
        weekly: fit.curves[i][0].clone(),
        units: fit.curves[i][1].clone(),
        weekly_orders: 1.0,
        units_per_order: 1.0,
        weeks: p.all.len(),
        own_weight: fit.own_weight[i],
        unit_cost: costs.get(p.code).copied(),
    };
    let train_products: Vec<ProductResponse> = prods
        .iter()
        .enumerate()
        .map(|(i, p)| make(&train_fit, i, p))
        .collect();
    let mut products: Vec<ProductResponse> = prods
        .iter()
        .enumerate()
        .map(|(i, p)| make(&full_fit, i, p))
        .collect();
    let own_count = full_fit.own.iter().filter(|o| **o).count();
    diagnostics.insert("products".into(), products.len() as f64);
    diagnostics.insert("products_with_own_estimate".into(), own_count as f64);

    // Levels and conformal bands. The prediction for week w uses the level
    // of the product's `level_weeks` latest weeks with sales before w.
    let level = |weeks: &[Week], upto: usize, pr: &ProductResponse, units: bool| -> Option<f64> {
        let from = upto.saturating_sub(params.level_weeks);
        let slice = &weeks[from..upto];
        if slice.is_empty() {
            return None;
        }
        let mean = slice
            .iter()
            .map(|w| {
                let a = pr.at(w.price);
                if units {
                    (w.units / w.orders).ln() - a.relative_units_per_order.ln()
                } else {
                    w.orders.ln() - (a.relative_weekly / a.relative_units_per_order).ln()
                }
            })
            .sum::<f64>()
            / slice.len() as f64;
        Some(mean)
    };
    let week_start = |w: &Week| week_start(w.week);
    let mut week_res: [Vec<f64>; 2] = [Vec::new(), Vec::new()]; // validation, test
    // Test weeks: (log price vs reference, log price change, predicted, realised).
    let mut test_rows: Vec<(f64, f64, f64, f64)> = Vec::new();
    let mut line_res: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for ((p, pr), tr) in prods.iter().zip(products.iter_mut()).zip(&train_products) {
        for (i, w) in p.all.iter().enumerate() {
            let t = week_start(w);
            let part = if t < windows.train_end {
                continue;
            } else if t < windows.val_end {
                0
            } else {
                1
            };
            // The training-window fit: the band is calibrated and measured
            // out of sample.
            let (Some(lo), Some(lu)) = (level(&p.all, i, tr, false), level(&p.all, i, tr, true))
            else {
                continue;
            };
            let a = tr.at(w.price);
            let pred_orders = lo + (a.relative_weekly / a.relative_units_per_order).ln();
            let pred_upo = lu + a.relative_units_per_order.ln();
            week_res[part].push(w.units.ln() - (pred_orders + pred_upo));
            line_res[part].push((w.units / w.orders).ln() - pred_upo);
            if part == 1 {
                let last_train = p.train.last().map_or(p.ref_price, |t| t.price);
                test_rows.push((
                    (w.price / p.ref_price).ln(),
                    (w.price / last_train).ln(),
                    (pred_orders + pred_upo).exp(),
                    w.units,
                ));
            }
        }
        // Now: the level of the latest weeks, at the current price.
        let n = p.all.len();
        let lo = level(&p.all, n, pr, false).unwrap_or(0.0);
        let lu = level(&p.all, n, pr, true).unwrap_or(0.0);
        pr.weekly_orders = lo.exp();
        pr.units_per_order = lu.exp();
    }
    let band = |res: &[Vec<f64>; 2]| -> Band {
        let mut val = res[0].clone();
        val.sort_by(f64::total_cmp);
        let tail = (1.0 - params.coverage) / 2.0;
        let q = |s: &[f64], p: f64| -> f64 {
            if s.is_empty() {
                return 0.0;
            }
            // The conformal rank: ceil((n + 1) p), clamped.
            let n = s.len();
            let rank = ((n as f64 + 1.0) * p).ceil() as usize;
            s[rank.clamp(1, n) - 1]
        };
        let (lo, hi) = (q(&val, tail), q(&val, 1.0 - tail));
        let share = |s: &[f64]| {
            if s.is_empty() {
                f64::NAN
            } else {
                s.iter().filter(|r| (lo..=hi).contains(*r)).count() as f64 / s.len() as f64
            }
        };
        // Duan's smearing, on residuals winsorised at their 2.5th and
        // 97.5th percentiles: a few weeks of bulk orders would otherwise set
        // the expected level of every product.
        let smearing = if val.is_empty() {
            1.0
        } else {
            let (w_lo, w_hi) = (q(&val, 0.025), q(&val, 0.975));
            val.iter().map(|r| r.clamp(w_lo, w_hi).exp()).sum::<f64>() / val.len() as f64
        };
        Band {
            lo,
            hi,
            validation_coverage: share(&res[0]),
            test_coverage: share(&res[1]),
            validation_n: res[0].len(),
            test_n: res[1].len(),
            smearing,
        }
    };
    let weekly_band = band(&week_res);
    let smear = weekly_band.smearing;
    let test_calibration = TestCalibration {
        by_price_band: buckets(
            test_rows.iter().map(|r| (r.0, r.2 * smear, r.3)).collect(),
            5,
        ),
        by_price_change: buckets(
            test_rows.iter().map(|r| (r.1, r.2 * smear, r.3)).collect(),
            10,
        ),
    };
    let line_band = band(&line_res);
    // Expected values: the level is a mean of logs; scale by the smearing
    // factor of the weekly residuals, split between the two parts.
    for pr in &mut products {
        pr.weekly_orders *= weekly_band.smearing / line_band.smearing.max(1e-9);
        pr.units_per_order *= line_band.smearing;
    }
    products.sort_by(|a, b| a.stock_code.cmp(&b.stock_code));
    Ok(ResponseModel {
        version: 1,
        params: params.clone(),
        pooled_weekly: pooled[0],
        pooled_units: pooled[1],
        weekly_band,
        line_band,
        products,
        diagnostics,
        test_calibration,
    })
}

/// One product's weekly sales, as the response fit saw them: what a pricing
/// manager wants beside the curve (did the price ever move, and what did
/// sales do when it did).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProductHistory {
    /// Monday starting each week with sales, ms since the Unix epoch.
    pub week_start_ms: Vec<i64>,
    /// The week's list price (90th percentile of its line prices: what the
    /// fit calls the price).
    pub list_price: Vec<f64>,
    /// The week's average price paid (units-weighted).
    pub avg_price: Vec<f64>,
    /// Units sold that week.
    pub units: Vec<f64>,
    /// Order lines that week.
    pub orders: Vec<f64>,
}

/// Weekly sales of every product (`response/history.json`): written by the
/// response stage beside the fit, carried by releases, served by `/v2`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SalesHistory {
    /// Format version (1).
    pub version: u32,
    /// By stock code.
    pub products: BTreeMap<String, ProductHistory>,
}

impl SalesHistory {
    /// Weekly panels of the valid sales lines (positive, finite price and
    /// quantity), Monday-aligned.
    pub fn from_lines(lines: &[Line<'_>]) -> Self {
        let mut by_product: BTreeMap<&str, Vec<&Line<'_>>> = BTreeMap::new();
        for l in lines {
            if l.price > 0.0 && l.quantity > 0.0 && l.price.is_finite() && l.quantity.is_finite() {
                by_product.entry(l.stock_code).or_default().push(l);
            }
        }
        let products = by_product
            .into_iter()
            .map(|(code, lines)| {
                let mut paid: BTreeMap<i64, (f64, f64)> = BTreeMap::new();
                for l in &lines {
                    let e = paid.entry(iso_week(l.ts)).or_insert((0.0, 0.0));
                    e.0 += l.price * l.quantity;
                    e.1 += l.quantity;
                }
                let weeks = weekly(&lines);
                let history = ProductHistory {
                    week_start_ms: weeks.iter().map(|w| week_start(w.week) / 1000).collect(),
                    list_price: weeks.iter().map(|w| w.price).collect(),
                    avg_price: weeks
                        .iter()
                        .map(|w| paid.get(&w.week).map_or(f64::NAN, |(v, q)| v / q))
                        .collect(),
                    units: weeks.iter().map(|w| w.units).collect(),
                    orders: weeks.iter().map(|w| w.orders).collect(),
                };
                (code.to_string(), history)
            })
            .collect();
        Self {
            version: 1,
            products,
        }
    }

    /// JSON bytes.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        let mut v = serde_json::to_vec(self)?;
        v.push(b'\n');
        Ok(v)
    }

    /// Reads JSON bytes, checking the version and that every product's
    /// columns have one value per week.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let bad = |reason: String| ModelError::Format {
            model: "sales history".into(),
            reason,
        };
        let h: Self = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if h.version != 1 {
            return Err(bad(format!("unsupported version {}", h.version)));
        }
        for (code, p) in &h.products {
            let n = p.week_start_ms.len();
            if [
                p.list_price.len(),
                p.avg_price.len(),
                p.units.len(),
                p.orders.len(),
            ]
            .iter()
            .any(|&m| m != n)
            {
                return Err(bad(format!("product {code}: columns of unequal length")));
            }
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sales_history_is_weekly_and_round_trips() {
        let day = 86_400_000_000_i64;
        // 1970-01-05 was a Monday; two lines in its week, one a week later,
        // and an invalid line that must not count.
        let mon = 4 * day;
        let lines = [
            Line {
                stock_code: "A",
                ts: mon + day,
                price: 2.0,
                quantity: 3.0,
            },
            Line {
                stock_code: "A",
                ts: mon + 2 * day,
                price: 4.0,
                quantity: 1.0,
            },
            Line {
                stock_code: "A",
                ts: mon + 8 * day,
                price: 3.0,
                quantity: 2.0,
            },
            Line {
                stock_code: "A",
                ts: mon + 9 * day,
                price: -1.0,
                quantity: 2.0,
            },
        ];
        let h = SalesHistory::from_lines(&lines);
        let a = &h.products["A"];
        assert_eq!(a.week_start_ms, vec![mon / 1000, (mon + 7 * day) / 1000]);
        assert_eq!(a.units, vec![4.0, 2.0]);
        assert_eq!(a.orders, vec![2.0, 1.0]);
        assert_eq!(a.list_price, vec![4.0, 3.0]);
        assert!((a.avg_price[0] - 2.5).abs() < 1e-12);
        let back = SalesHistory::from_json(&h.to_json().unwrap()).unwrap();
        assert_eq!(back, h);
        let mut broken = h.clone();
        broken.products.get_mut("A").unwrap().units.pop();
        let err = SalesHistory::from_json(&broken.to_json().unwrap()).unwrap_err();
        assert!(err.to_string().contains("sales history"), "{err}");
    }

    #[test]
    fn curves_never_rise_with_price_even_outside_the_knots() {
        let c = Curve {
            family: Family::Hinge,
            knots: vec![-0.3, -0.1, 0.1, 0.3],
            slopes: vec![-0.2, -0.5, -1.0, -2.0, -3.5],
            load: vec![[0.1, 0.0]; 5],
        };
        assert_eq!(c.log_demand(0.0), 0.0);
        let mut last = f64::INFINITY;
        for i in 0..400 {
            let v = -2.0 + f64::from(i) * 0.01;
            let d = c.log_demand(v);
            assert!(d <= last + 1e-12, "rises at {v}");
            last = d;
        }
        // The slope of ln D is the segment's elasticity.
        let h = 1e-6;
        for v in [-0.5, -0.2, 0.0, 0.2, 0.5] {
            let num = (c.log_demand(v + h) - c.log_demand(v - h)) / (2.0 * h);
            assert!(
                (num - c.elasticity(v)).abs() < 1e-6,
                "{v}: {num} vs {}",
                c.elasticity(v)
            );
        }
    }

    #[test]
    fn projection_keeps_elasticity_in_bounds_over_the_range() {
        let prec = [4.0, 0.5, 0.5, 1.0];
        for beta in [
            [0.8, 0.0],
            [-1.0, 3.0],
            [-20.0, 0.0],
            [-1.0, -9.0],
            [-1.2, -0.4],
        ] {
            let x = project(beta, &prec, (-0.3, 0.4), 8.0);
            for v in [-0.3, 0.0, 0.4] {
                let e = x[0] + 2.0 * x[1] * v;
                assert!(
                    (-8.0 - 1e-9..=1e-9).contains(&e),
                    "{beta:?} -> {x:?}: e({v}) = {e}"
                );
            }
        }
        assert_eq!(project([-1.2, -0.4], &prec, (-0.3, 0.4), 8.0), [-1.2, -0.4]);
    }

    /// 40 weekly log prices from -0.4 to 0.38, and log demand with a kink
    /// at v = 0.1: elasticity `below` under it, `above` over it.
    fn kinked_weeks(below: f64, above: f64) -> (Vec<f64>, Vec<f64>) {
        let vs: Vec<f64> = (0..40).map(|i| -0.4 + f64::from(i) * 0.02).collect();
        let y = vs
            .iter()
            .map(|&v| if v < 0.1 { below } else { above } * (v - 0.1))
            .collect();
        (vs, y)
    }

    /// A prior centred on elasticity -1, sd 1, with little noise.
    fn tight_prior() -> Prior {
        Prior {
            mean: [-1.0, 0.0],
            sd: [1.0, 1.0],
            noise_var: 0.01,
        }
    }

    #[test]
    fn a_hinge_is_chosen_for_kinked_data_and_a_quadratic_for_smooth_data() {
        // Log demand with a kink at v = 0.1 (elasticity -0.3 below, -2.5
        // above) versus a smooth one (elasticity -1 - 2v), 40 weeks with a
        // little jitter.
        let (vs, kinked) = kinked_weeks(-0.3, -2.5);
        let smooth: Vec<f64> = vs.iter().map(|&v| -v - v * v).collect();
        let jitter: Vec<f64> = (0..40)
            .map(|i| 0.01 * f64::from((i * 7) % 5) - 0.02)
            .collect();
        let prior = tight_prior();
        let fit = |y: &[f64]| {
            let y: Vec<f64> = y.iter().zip(&jitter).map(|(a, b)| a + b).collect();
            fit_product((&vs, &[None; 40], 0.0), &y, &prior, 8.0, true)
        };
        let k = fit(&kinked);
        assert_eq!(k.family, Family::Hinge, "{k:?}");
        assert!((k.knots[0] - 0.1).abs() < 0.06, "knot at {}", k.knots[0]);
        assert!(
            (k.slopes[0] + 0.3).abs() < 0.2 && (k.slopes[1] + 2.5).abs() < 0.3,
            "{:?}",
            k.slopes
        );
        let q = fit(&smooth);
        assert_eq!(q.family, Family::Quadratic, "{q:?}");
        assert!(
            (q.elasticity(0.0) + 1.0).abs() < 0.15,
            "{}",
            q.elasticity(0.0)
        );
    }

    #[test]
    fn demand_never_gets_less_elastic_as_the_price_rises() {
        // Data that say the opposite: a reversed kink (elasticity -2.5
        // below v = 0.1, -0.3 above) and a convex curve (elasticity
        // -1 + 2v). Fitted freely, both would make cutting the price of an
        // inelastic product pay; each fitted slope must be at most the one
        // before it (with the constraints dropped this fails: the hinge
        // comes out [-2.46, -0.39]).
        let (vs, reversed) = kinked_weeks(-2.5, -0.3);
        let convex: Vec<f64> = vs.iter().map(|&v| -v + v * v).collect();
        let prior = tight_prior();
        for y in [reversed, convex] {
            let c = fit_product((&vs, &[None; 40], 0.0), &y, &prior, 8.0, true);
            assert!(
                c.slopes.windows(2).all(|w| w[1] <= w[0] + 1e-9),
                "slopes rise with price: {:?} ({:?})",
                c.slopes,
                c.family
            );
            // Still a fit of the data: the mean elasticity over the range.
            let mean = (c.log_demand(0.38) - c.log_demand(-0.4)) / 0.78;
            let truth = (y[39] - y[0]) / 0.78;
            assert!(
                (mean - truth).abs() < 0.35,
                "mean elasticity {mean} vs {truth}"
            );
        }
    }

    #[test]
    fn each_product_keeps_its_own_elasticity_when_last_weeks_demand_confounds() {
        // 24 products, half with elasticity -0.5 and half -2.0 (weekly units;
        // units per order carry 40 % of it), 104 weeks. Prices hold a level
        // for a few weeks and react to last week's demand shock, which is
        // AR(1): last week's demand confounds. Subtracting a pooled
        // coefficient of last week's price pulled each product's slope
        // about a third of the way toward the pool (-0.5 came out near -0.8).
        use rand::Rng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let truth: Vec<f64> = (0..24)
            .map(|i| if i % 2 == 0 { -0.5 } else { -2.0 })
            .collect();
        let panels: Vec<Vec<Obs>> = truth
            .iter()
            .map(|&e| {
                let (mut level, mut eps) = (0.0f64, 0.0f64);
                let mut prev: Option<([f64; 2], f64)> = None;
                (0..104)
                    .map(|week| {
                        if week == 0 || rng.random_bool(0.3) {
                            level = rng.random_range(-0.5..0.5);
                        }
                        let v = level + 0.4 * eps;
                        let z: f64 = StandardNormal.sample(&mut rng);
                        eps = 0.6 * eps + 0.15 * z;
                        let noise: f64 = StandardNormal.sample(&mut rng);
                        let y = [
                            e * v + eps + 0.1 * noise,
                            0.4 * e * v + 0.4 * eps + 0.05 * noise,
                        ];
                        let o = Obs {
                            y,
                            v,
                            month: (week / 4) % 12,
                            lag: prev,
                        };
                        prev = Some((y, v));
                        o
                    })
                    .collect()
            })
            .collect();
        let fit = fit_curves(&panels, &ResponseParams::default());
        for (want, name) in [(-0.5, "inelastic"), (-2.0, "elastic")] {
            let got: Vec<f64> = truth
                .iter()
                .zip(&fit.curves)
                .filter(|(t, _)| **t == want)
                .map(|(_, c)| c[0].elasticity(0.0))
                .collect();
            let mean = got.iter().sum::<f64>() / got.len() as f64;
            assert!(
                (mean - want).abs() < 0.12,
                "{name}: mean elasticity {mean:.3}, truth {want} ({got:?})"
            );
        }
    }

    #[test]
    fn buckets_split_by_quantiles_of_the_key_and_average_within() {
        // Keys 0..10 (shuffled), predicted = key, realised = 2 * key; one
        // non-finite row is dropped.
        let mut rows: Vec<(f64, f64, f64)> = (0..10)
            .map(|i| {
                let k = f64::from((i * 7) % 10);
                (k, k, 2.0 * k)
            })
            .collect();
        rows.push((f64::NAN, 1.0, 1.0));
        let b = buckets(rows, 5);
        assert_eq!(b.len(), 5);
        for (i, b) in b.iter().enumerate() {
            let lo = 2.0 * i as f64;
            assert_eq!((b.lo, b.hi, b.weeks), (lo, lo + 1.0, 2), "{b:?}");
            assert_eq!((b.predicted, b.realised), (lo + 0.5, 2.0 * lo + 1.0));
        }
        assert!(buckets(Vec::new(), 5).is_empty());
    }

    #[test]
    fn solve_agrees_with_a_known_system() {
        let x = solve(vec![2.0, 1.0, 1.0, 3.0], vec![3.0, 5.0], 2).unwrap_or_default();
        assert!(
            (x[0] - 0.8).abs() < 1e-12 && (x[1] - 1.4).abs() < 1e-12,
            "{x:?}"
        );
    }
}
