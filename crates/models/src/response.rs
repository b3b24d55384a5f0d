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
//!    demand on price is biased. With product fixed effects, both the demand
//!    `y` and the price terms `v = ln(P / P_ref)` and `v²` are regressed on
//!    month-of-year dummies and last week's log demand, pooled over products;
//!    the price response is then estimated from the residuals.
//! 3. **Per-product response, partially pooled.** `ln D = b·v + c·v²` (the
//!    elasticity `b + 2c·v` may change with price, so a revenue optimum can
//!    be interior) is fitted per product by least squares on its residuals,
//!    and shrunk toward the pooled fit with an empirical-Bayes prior whose
//!    spread is the between-product variance: a product with little price
//!    variation gets the pooled response.
//! 4. **Monotone by construction.** `(b, c)` is projected (in the posterior's
//!    metric) onto the set where the elasticity lies in
//!    `[-max_abs_elasticity, 0]` over the product's observed price range;
//!    outside that range the curve extrapolates at the edge elasticity
//!    (constant elasticity). Demand never rises with price.
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
    /// (their median).
    pub current_price_lines: usize,
}

impl Default for ResponseParams {
    fn default() -> Self {
        Self {
            min_weeks: 6,
            level_weeks: 8,
            coverage: 0.8,
            max_abs_elasticity: 8.0,
            current_price_lines: 10,
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
        if !(self.max_abs_elasticity.is_finite() && self.max_abs_elasticity > 0.0) {
            return bad("max_abs_elasticity must be positive".into());
        }
        Ok(())
    }
}

/// `ln D(v) = b·v + c·v²` for `v = ln(p / ref_price)` inside the observed
/// range `[v_lo, v_hi]`, constant elasticity beyond it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Curve {
    /// Elasticity at the reference price.
    pub b: f64,
    /// Half the change of elasticity per unit of log price.
    pub c: f64,
    /// Posterior covariance of `(b, c)`, row-major.
    pub cov: [f64; 4],
}

impl Curve {
    /// The elasticity at `v` (clamped to the observed range: constant beyond).
    pub fn elasticity(&self, v: f64, range: (f64, f64)) -> f64 {
        let v = v.clamp(range.0, range.1);
        self.b + 2.0 * self.c * v
    }

    /// `ln D(v)`, with `ln D(0) = 0`.
    pub fn log_demand(&self, v: f64, range: (f64, f64)) -> f64 {
        let inside = |v: f64| self.b * v + self.c * v * v;
        if v < range.0 {
            inside(range.0) + self.elasticity(range.0, range) * (v - range.0)
        } else if v > range.1 {
            inside(range.1) + self.elasticity(range.1, range) * (v - range.1)
        } else {
            inside(v)
        }
    }

    /// The standard deviation of the elasticity at `v`.
    pub fn elasticity_sd(&self, v: f64, range: (f64, f64)) -> f64 {
        let g = [1.0, 2.0 * v.clamp(range.0, range.1)];
        quad(&self.cov, g).max(0.0).sqrt()
    }

    /// A draw of `(b, c)` from the posterior (for bands of derived figures).
    fn draw(&self, z: [f64; 2]) -> Curve {
        // Cholesky of the 2×2 covariance.
        let l11 = self.cov[0].max(0.0).sqrt();
        let l21 = if l11 > 0.0 { self.cov[2] / l11 } else { 0.0 };
        let l22 = (self.cov[3] - l21 * l21).max(0.0).sqrt();
        Curve {
            b: self.b + l11 * z[0],
            c: self.c + l21 * z[0] + l22 * z[1],
            cov: self.cov,
        }
    }
}

fn quad(m: &[f64; 4], g: [f64; 2]) -> f64 {
    g[0] * (m[0] * g[0] + m[1] * g[1]) + g[1] * (m[2] * g[0] + m[3] * g[1])
}

/// One product's fitted response and current level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProductResponse {
    /// The product.
    pub stock_code: String,
    /// The centre of its log prices in training (`v = 0`).
    pub ref_price: f64,
    /// Its current price: the median of its latest line prices.
    pub current_price: f64,
    /// The lowest and highest weekly price observed (any window).
    pub price_range: (f64, f64),
    /// Orders per week.
    pub orders: Curve,
    /// Units per order.
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
    fn range(&self) -> (f64, f64) {
        (
            (self.price_range.0 / self.ref_price).ln(),
            (self.price_range.1 / self.ref_price).ln(),
        )
    }

    fn v(&self, price: f64) -> f64 {
        (price.max(1e-9) / self.ref_price).ln()
    }

    /// Expected demand at `price`.
    pub fn at(&self, price: f64) -> AtPrice {
        self.at_with(price, &self.orders, &self.units)
    }

    fn at_with(&self, price: f64, orders: &Curve, units: &Curve) -> AtPrice {
        let r = self.range();
        let (v, v0) = (self.v(price), self.v(self.current_price));
        let d_orders = (orders.log_demand(v, r) - orders.log_demand(v0, r)).exp();
        let d_units = (units.log_demand(v, r) - units.log_demand(v0, r)).exp();
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
        let (v, r) = (self.v(price), self.range());
        let e = self.orders.elasticity(v, r) + self.units.elasticity(v, r);
        let sd = self
            .orders
            .elasticity_sd(v, r)
            .hypot(self.units.elasticity_sd(v, r));
        (e, sd)
    }

    /// Elasticity of units per order at `price`, and its standard deviation.
    pub fn line_elasticity(&self, price: f64) -> (f64, f64) {
        let (v, r) = (self.v(price), self.range());
        (self.units.elasticity(v, r), self.units.elasticity_sd(v, r))
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
            .map(|_| (self.orders.draw(z()), self.units.draw(z())))
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
    /// `mean(exp(residual))` on validation: turns a median-type prediction
    /// into an expected value.
    pub smearing: f64,
}

/// The fitted responses of every product (`response/response.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseModel {
    /// Format version.
    pub version: u32,
    /// The parameters it was fitted with.
    pub params: ResponseParams,
    /// The pooled response (the prior of every product).
    pub pooled_orders: Curve,
    /// The pooled response of units per order.
    pub pooled_units: Curve,
    /// Weekly units band (week basis).
    pub weekly_band: Band,
    /// Units-per-order band (line basis).
    pub line_band: Band,
    /// Products, sorted by stock code.
    pub products: Vec<ProductResponse>,
    /// Fit diagnostics (counts, nuisance coefficients).
    pub diagnostics: BTreeMap<String, f64>,
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

/// Weekly panel of one product, in week order.
fn weekly(lines: &[&Line<'_>], start: i64) -> Vec<Week> {
    let mut by_week: BTreeMap<i64, (f64, f64, Vec<f64>, i64)> = BTreeMap::new();
    for l in lines {
        let w = (l.ts - start).div_euclid(WEEK_US);
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
                price: median_sorted(&prices),
            }
        })
        .collect()
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

/// The observations of the per-product response fit after the nuisance is
/// partialled out: for each product, rows of `(y, v, v²)` residuals.
struct Residualised {
    /// Per product: (y_orders, y_units, v, w) residual rows.
    rows: Vec<Vec<[f64; 4]>>,
}

/// Partials month-of-year and last week's log demand out of every column,
/// with product fixed effects (within-product demeaning), pooled over
/// products (Frisch–Waugh: the same response as a regression with them).
fn residualise(panels: &[(Vec<Week>, f64)]) -> (Residualised, BTreeMap<String, f64>) {
    // Columns: y_orders, y_units, v, w | nuisance: 11 month dummies, lag, lag missing.
    const NUIS: usize = 13;
    let mut data: Vec<Vec<([f64; 4], [f64; NUIS])>> = Vec::new();
    for (weeks, ref_price) in panels {
        let mut rows = Vec::new();
        let mean_log_units =
            weeks.iter().map(|w| w.units.ln()).sum::<f64>() / weeks.len().max(1) as f64;
        for (i, w) in weeks.iter().enumerate() {
            let v = (w.price / ref_price).ln();
            let y = [w.orders.ln(), (w.units / w.orders).ln(), v, v * v];
            let mut n = [0.0; NUIS];
            if w.month > 0 {
                n[w.month - 1] = 1.0;
            }
            match i.checked_sub(1).map(|j| &weeks[j]) {
                Some(prev) if prev.week == w.week - 1 => n[11] = prev.units.ln(),
                _ => {
                    n[11] = mean_log_units;
                    n[12] = 1.0;
                }
            }
            rows.push((y, n));
        }
        // Within-product demeaning.
        let k = rows.len() as f64;
        let mut my = [0.0; 4];
        let mut mn = [0.0; NUIS];
        for (y, n) in &rows {
            for j in 0..4 {
                my[j] += y[j] / k;
            }
            for j in 0..NUIS {
                mn[j] += n[j] / k;
            }
        }
        for (y, n) in &mut rows {
            for j in 0..4 {
                y[j] -= my[j];
            }
            for j in 0..NUIS {
                n[j] -= mn[j];
            }
        }
        data.push(rows);
    }
    // Pooled OLS of each of the 4 columns on the nuisance (ridge-stabilised).
    let mut xtx = vec![0.0; NUIS * NUIS];
    let mut xty = vec![vec![0.0; NUIS]; 4];
    for rows in &data {
        for (y, n) in rows {
            for a in 0..NUIS {
                for b in 0..NUIS {
                    xtx[a * NUIS + b] += n[a] * n[b];
                }
                for j in 0..4 {
                    xty[j][a] += n[a] * y[j];
                }
            }
        }
    }
    for a in 0..NUIS {
        xtx[a * NUIS + a] += 1e-6;
    }
    let coef: Vec<Vec<f64>> = xty
        .into_iter()
        .map(|rhs| solve(xtx.clone(), rhs, NUIS).unwrap_or_else(|| vec![0.0; NUIS]))
        .collect();
    let mut diag = BTreeMap::new();
    diag.insert("nuisance.lag_on_log_orders".into(), coef[0][11]);
    diag.insert("nuisance.lag_on_log_units_per_order".into(), coef[1][11]);
    diag.insert("nuisance.lag_on_log_price".into(), coef[2][11]);
    let rows = data
        .into_iter()
        .map(|rows| {
            rows.into_iter()
                .map(|(y, n)| {
                    let mut r = [0.0; 4];
                    for j in 0..4 {
                        r[j] = y[j] - (0..NUIS).map(|a| coef[j][a] * n[a]).sum::<f64>();
                    }
                    r
                })
                .collect()
        })
        .collect();
    (Residualised { rows }, diag)
}

/// A least-squares fit of `(b, c)`: estimate, covariance, observations.
type Fit2 = ([f64; 2], [f64; 4], usize);

/// Least squares of `y` on `(v, w)` without intercept: estimate and covariance.
fn ols2(rows: &[[f64; 4]], y: usize) -> Option<Fit2> {
    let n = rows.len();
    if n < 4 {
        return None;
    }
    let (mut s11, mut s12, mut s22, mut s1y, mut s2y) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for r in rows {
        s11 += r[2] * r[2];
        s12 += r[2] * r[3];
        s22 += r[3] * r[3];
        s1y += r[2] * r[y];
        s2y += r[3] * r[y];
    }
    let inv = inv2(&[s11, s12, s12, s22])?;
    let beta = [inv[0] * s1y + inv[1] * s2y, inv[2] * s1y + inv[3] * s2y];
    let rss: f64 = rows
        .iter()
        .map(|r| (r[y] - beta[0] * r[2] - beta[1] * r[3]).powi(2))
        .sum();
    // One degree of freedom went to the product's mean, two to (b, c), and
    // the nuisance to the pool.
    let dof = (n as f64 - 3.0).max(1.0);
    let s2 = (rss / dof).max(1e-6);
    Some((beta, inv.map(|v| v * s2), n))
}

/// The constraint set: elasticity `b + 2c·v` within `[-max, 0]` at both
/// ends of `range`. Projects `(b, c)` onto it in the metric `precision`.
fn project(beta: [f64; 2], precision: &[f64; 4], range: (f64, f64), max: f64) -> [f64; 2] {
    // Constraints g·x ≤ h: e(v) ≤ 0 and −e(v) ≤ max at both ends.
    let mut cons: Vec<([f64; 2], f64)> = Vec::new();
    for v in [range.0, range.1] {
        cons.push(([1.0, 2.0 * v], 0.0));
        cons.push(([-1.0, -2.0 * v], max));
    }
    let feasible = |x: [f64; 2]| {
        cons.iter()
            .all(|(g, h)| g[0] * x[0] + g[1] * x[1] <= h + 1e-12)
    };
    if feasible(beta) {
        return beta;
    }
    let dist = |x: [f64; 2]| {
        let d = [x[0] - beta[0], x[1] - beta[1]];
        quad(precision, d)
    };
    let Some(pinv) = inv2(precision) else {
        return [beta[0].clamp(-max, 0.0), 0.0];
    };
    let mut best: Option<([f64; 2], f64)> = None;
    let mut consider = |x: [f64; 2]| {
        if x.iter().all(|v| v.is_finite()) && feasible(x) {
            let d = dist(x);
            if best.is_none_or(|(_, bd)| d < bd) {
                best = Some((x, d));
            }
        }
    };
    // One active constraint: x = β − P⁻¹g (g·β − h) / (g P⁻¹ g).
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
    // Two active constraints: their intersection.
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
        let all = weekly(lines, windows.start);
        let train_lines: Vec<&Line<'_>> = lines
            .iter()
            .copied()
            .filter(|l| l.ts < windows.train_end)
            .collect();
        let train = weekly(&train_lines, windows.start);
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
            current: median_sorted(&recent),
        });
    }
    if prods.is_empty() {
        return Err(ModelError::Training {
            model: "response",
            reason: "no sales lines to fit".into(),
        });
    }
    let panels: Vec<(Vec<Week>, f64)> = prods
        .iter()
        .map(|p| (p.train.clone(), p.ref_price))
        .collect();
    let (resid, mut diagnostics) = residualise(&panels);

    // Own estimates, then the pooled response and the between-product spread.
    let mut fits: [Vec<Option<Fit2>>; 2] = [Vec::new(), Vec::new()];
    for (k, y) in [(0usize, 0usize), (1, 1)] {
        fits[k] = resid
            .rows
            .iter()
            .map(|rows| {
                if rows.len() < params.min_weeks {
                    None
                } else {
                    ols2(rows, y)
                }
            })
            .collect();
    }
    let all_rows: Vec<[f64; 4]> = resid.rows.iter().flatten().copied().collect();
    let mut pooled = [[0.0; 2]; 2];
    let mut pooled_cov = [[0.0; 4]; 2];
    let mut between = [[0.0; 4]; 2];
    for k in 0..2 {
        if let Some((b, cov, _)) = ols2(&all_rows, k) {
            pooled[k] = b;
            pooled_cov[k] = cov;
        }
        // Method of moments: spread of own estimates minus their noise.
        let own: Vec<&Fit2> = fits[k].iter().flatten().collect();
        for j in 0..2 {
            let spread = if own.len() >= 3 {
                let mean = own.iter().map(|f| f.0[j]).sum::<f64>() / own.len() as f64;
                let var = own.iter().map(|f| (f.0[j] - mean).powi(2)).sum::<f64>()
                    / (own.len() - 1) as f64;
                // The median own noise: robust to products with tiny price variation.
                let mut noise: Vec<f64> = own.iter().map(|f| f.1[j * 3]).collect();
                noise.sort_by(f64::total_cmp);
                (var - median_sorted(&noise)).max(0.0)
            } else {
                0.0
            };
            // Floors: a product may differ from the pool by ±0.3 in
            // elasticity and ±0.5 in curvature (1 sd) even when the sample
            // cannot tell.
            let floor = if j == 0 { 0.3f64 } else { 0.5f64 };
            between[k][j * 3] = spread.max(floor * floor);
        }
    }
    diagnostics.insert("pooled.orders.b".into(), pooled[0][0]);
    diagnostics.insert("pooled.orders.c".into(), pooled[0][1]);
    diagnostics.insert("pooled.units.b".into(), pooled[1][0]);
    diagnostics.insert("pooled.units.c".into(), pooled[1][1]);

    let mut products = Vec::new();
    let mut own_count = 0usize;
    for (i, p) in prods.iter().enumerate() {
        let range = {
            let lo = p.all.iter().map(|w| w.price).fold(f64::INFINITY, f64::min);
            let hi = p.all.iter().map(|w| w.price).fold(0.0, f64::max);
            ((lo / p.ref_price).ln(), (hi / p.ref_price).ln())
        };
        let mut curves = [Curve {
            b: 0.0,
            c: 0.0,
            cov: [0.0; 4],
        }; 2];
        let mut own_weight = 0.0;
        for k in 0..2 {
            let prior_prec = inv2(&between[k]).unwrap_or([0.0; 4]);
            let (post, cov) = match fits[k][i] {
                Some((beta, cov, _)) => match inv2(&cov) {
                    Some(own_prec) => {
                        let prec: [f64; 4] = std::array::from_fn(|j| own_prec[j] + prior_prec[j]);
                        let post_cov = inv2(&prec).unwrap_or(between[k]);
                        let rhs = [
                            own_prec[0] * beta[0]
                                + own_prec[1] * beta[1]
                                + prior_prec[0] * pooled[k][0]
                                + prior_prec[1] * pooled[k][1],
                            own_prec[2] * beta[0]
                                + own_prec[3] * beta[1]
                                + prior_prec[2] * pooled[k][0]
                                + prior_prec[3] * pooled[k][1],
                        ];
                        let post = [
                            post_cov[0] * rhs[0] + post_cov[1] * rhs[1],
                            post_cov[2] * rhs[0] + post_cov[3] * rhs[1],
                        ];
                        own_weight += 0.5 * (1.0 - post_cov[0] / between[k][0]).clamp(0.0, 1.0);
                        (post, post_cov)
                    }
                    None => (pooled[k], between[k]),
                },
                None => (
                    pooled[k],
                    std::array::from_fn(|j| between[k][j] + pooled_cov[k][j]),
                ),
            };
            let prec = inv2(&cov).unwrap_or([1.0, 0.0, 0.0, 1.0]);
            let x = project(post, &prec, range, params.max_abs_elasticity);
            curves[k] = Curve {
                b: x[0],
                c: x[1],
                cov,
            };
        }
        if fits[0][i].is_some() {
            own_count += 1;
        }
        products.push(ProductResponse {
            stock_code: p.code.to_string(),
            ref_price: p.ref_price,
            current_price: p.current,
            price_range: (p.ref_price * range.0.exp(), p.ref_price * range.1.exp()),
            orders: curves[0],
            units: curves[1],
            weekly_orders: 1.0,
            units_per_order: 1.0,
            weeks: p.train.len(),
            own_weight,
            unit_cost: costs.get(p.code).copied(),
        });
    }
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
    let week_start = |w: &Week| windows.start + w.week * WEEK_US;
    let mut week_res: [Vec<f64>; 2] = [Vec::new(), Vec::new()]; // validation, test
    let mut line_res: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for (p, pr) in prods.iter().zip(products.iter_mut()) {
        for (i, w) in p.all.iter().enumerate() {
            let t = week_start(w);
            let part = if t < windows.train_end {
                continue;
            } else if t < windows.val_end {
                0
            } else {
                1
            };
            let (Some(lo), Some(lu)) = (level(&p.all, i, pr, false), level(&p.all, i, pr, true))
            else {
                continue;
            };
            let a = pr.at(w.price);
            let pred_orders = lo + (a.relative_weekly / a.relative_units_per_order).ln();
            let pred_upo = lu + a.relative_units_per_order.ln();
            week_res[part].push(w.units.ln() - (pred_orders + pred_upo));
            line_res[part].push((w.units / w.orders).ln() - pred_upo);
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
        let smearing = if val.is_empty() {
            1.0
        } else {
            val.iter().map(|r| r.exp()).sum::<f64>() / val.len() as f64
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
        pooled_orders: Curve {
            b: pooled[0][0],
            c: pooled[0][1],
            cov: pooled_cov[0],
        },
        pooled_units: Curve {
            b: pooled[1][0],
            c: pooled[1][1],
            cov: pooled_cov[1],
        },
        weekly_band,
        line_band,
        products,
        diagnostics,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // Already feasible: unchanged.
        assert_eq!(project([-1.2, -0.4], &prec, (-0.3, 0.4), 8.0), [-1.2, -0.4]);
    }

    #[test]
    fn curves_never_rise_with_price_even_outside_the_range() {
        let c = Curve {
            b: -1.5,
            c: -0.8,
            cov: [0.01, 0.0, 0.0, 0.01],
        };
        let range = (-0.4, 0.3);
        let mut last = f64::INFINITY;
        for i in 0..400 {
            let v = -2.0 + f64::from(i) * 0.01;
            let d = c.log_demand(v, range);
            assert!(d <= last + 1e-12, "rises at {v}");
            last = d;
        }
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
