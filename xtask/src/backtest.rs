//! `cargo xtask backtest`: recommendations scored against known demand.
//!
//! For each seed and demand shape, a synthetic market (see
//! `etl::synth::market`: known expected demand at every price, seasonality,
//! promotions, AR(1) demand shocks, prices that react to last week's demand)
//! goes through the normal pipeline into a store, and the recommender prices
//! every product. Each recommendation is scored by the share of the
//! available uplift it captures, on the true expected weekly revenue (or
//! profit, with the products' true unit costs):
//!
//! `captured = (V(recommended) − V(usual)) / (V(best) − V(usual))`
//!
//! where `V` is the true expected value, `usual` the price the shop usually
//! charges, and `best` the true best price among the same candidate prices
//! the recommender chose from. 1 is the true optimum, 0 keeping the usual
//! price, below 0 worse than doing nothing. Products whose available uplift
//! is under 1 % of their usual value have no meaningful share; they are
//! counted, and checked for losses instead.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use etl::synth::market::{DemandShape, Market, MarketConfig, generate_market};
use lineage::ArtifactStore;
use recommend::{Basis, PriceRequest, Recommender};
use serde::Serialize;

/// Options of the backtest.
#[derive(Debug, Clone)]
pub struct Backtest {
    /// Generator seeds.
    pub seeds: Vec<u64>,
    /// Demand shapes.
    pub shapes: Vec<DemandShape>,
    /// Products per market.
    pub products: usize,
    /// Weeks per market.
    pub weeks: u32,
    /// Keep the stores here (default: a temporary directory).
    pub out: Option<PathBuf>,
    /// Print JSON.
    pub json: bool,
    /// Param overrides (`KEY=VALUE`, as `pipeline --set` takes them) on
    /// top of the backtest's params ([`pipeline::smoke_params`]): how a
    /// setting is judged by the prices it recommends.
    pub set: Vec<String>,
    /// Leave the current price to the recommender (the list price of the
    /// product's latest sales lines) instead of telling it the shop's usual
    /// price, as a catalogue would.
    pub infer_current_price: bool,
}

/// One product's scores.
#[derive(Debug, Clone, Serialize)]
pub struct ProductScore {
    /// Product.
    pub stock_code: String,
    /// The price the shop usually charges.
    pub usual_price: f64,
    /// Revenue: true best candidate price.
    pub best_price: f64,
    /// Revenue, week basis: the recommendation.
    pub recommended: f64,
    /// Revenue, week basis: share of the available uplift captured.
    pub captured: Option<f64>,
    /// Revenue, line basis: share captured.
    pub captured_line: Option<f64>,
    /// Profit: true best candidate price.
    pub best_profit_price: f64,
    /// Profit, week basis: the recommendation.
    pub recommended_profit: f64,
    /// Profit, week basis: share captured.
    pub captured_profit: Option<f64>,
    /// Whether the revenue recommendation sits at a grid edge.
    pub at_grid_edge: bool,
    /// The price the recommender takes as current.
    pub current_price: f64,
    /// True elasticity of weekly demand there.
    pub true_elasticity: f64,
    /// The recommender's estimate, with its 80 % band.
    pub estimated_elasticity: (f64, f64, f64),
}

/// One market's summary.
#[derive(Debug, Clone, Serialize)]
pub struct MarketScore {
    /// Seed.
    pub seed: u64,
    /// Shape.
    pub shape: String,
    /// Products scored.
    pub products: usize,
    /// Products with a meaningful available uplift (revenue).
    pub with_uplift: usize,
    /// Median share captured (revenue, week basis).
    pub median: f64,
    /// Smallest share captured (revenue, week basis).
    pub min: f64,
    /// Median share captured on the line basis.
    pub median_line: f64,
    /// Smallest share on the line basis.
    pub min_line: f64,
    /// Products with a meaningful available profit uplift.
    pub with_profit_uplift: usize,
    /// Median share captured (profit, week basis).
    pub median_profit: f64,
    /// Smallest share captured (profit).
    pub min_profit: f64,
    /// Share of recommendations at a grid edge (revenue).
    pub edge_share: f64,
    /// Share of products whose true elasticity at the current price lies
    /// inside the recommender's 80 % band.
    pub elasticity_coverage: f64,
    /// Mean predicted over mean realised weekly units on the test window
    /// (the response stage's out-of-sample fit).
    pub test_level_ratio: f64,
    /// Per product.
    pub per_product: Vec<ProductScore>,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    features::median(&mut v)
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::min)
}

/// The share of the available uplift captured, or `None` when there is
/// hardly any to capture.
fn captured(value: impl Fn(f64) -> f64, usual: f64, best: f64, recommended: f64) -> Option<f64> {
    let base = value(usual);
    let available = value(best) - base;
    if available <= 0.01 * base.abs().max(1e-9) {
        return None;
    }
    Some((value(recommended) - base) / available)
}

/// Runs the pipeline on one market and scores every product.
fn score(
    market: &Market,
    dir: &std::path::Path,
    params: &lineage::Params,
    infer_current_price: bool,
) -> Result<MarketScore> {
    let raw = dir.join("market.csv");
    std::fs::write(&raw, &market.data.csv)?;
    let store = lineage::LocalStore::new(dir.join("store"))?;
    let config = pipeline::PipelineConfig::new(raw, &store, params.clone());
    pipeline::run(&config).context("pipeline")?;
    let recommender = Recommender::load(&store)?;
    let mut per_product = Vec::new();
    for p in &market.products {
        // The shop knows what it charges now (its usual price), as a
        // catalogue would tell the recommender.
        let ask = |request: PriceRequest| -> Result<recommend::Recommendation> {
            let request = if infer_current_price {
                request
            } else {
                request.current_price(p.usual_price)
            };
            Ok(recommender.recommend(&request)?)
        };
        let week = ask(PriceRequest::new(&p.stock_code).basis(Basis::Week))?;
        let line = ask(PriceRequest::new(&p.stock_code).basis(Basis::Line))?;
        let profit = ask(PriceRequest::new(&p.stock_code)
            .basis(Basis::Week)
            .profit(p.unit_cost))?;
        let grid: Vec<f64> = week.curve.iter().map(|c| c.unit_price).collect();
        let best = p.best_price(&grid, 0.0).unwrap_or(f64::NAN);
        let best_profit = p.best_price(&grid, p.unit_cost).unwrap_or(f64::NAN);
        let revenue = |x: f64| p.expected_weekly_value(x, 0.0);
        let margin = |x: f64| p.expected_weekly_value(x, p.unit_cost);
        per_product.push(ProductScore {
            stock_code: p.stock_code.clone(),
            usual_price: p.usual_price,
            best_price: best,
            recommended: week.optimal_unit_price,
            captured: captured(revenue, p.usual_price, best, week.optimal_unit_price),
            captured_line: captured(revenue, p.usual_price, best, line.optimal_unit_price),
            best_profit_price: best_profit,
            recommended_profit: profit.optimal_unit_price,
            captured_profit: captured(
                margin,
                p.usual_price,
                best_profit,
                profit.optimal_unit_price,
            ),
            at_grid_edge: week.at_grid_edge.is_some(),
            current_price: week.current_price,
            true_elasticity: p.elasticity_at(week.current_price),
            estimated_elasticity: (
                week.elasticity.current.value,
                week.elasticity.current.lo,
                week.elasticity.current.hi,
            ),
        });
    }
    let shares = |f: &dyn Fn(&ProductScore) -> Option<f64>| -> Vec<f64> {
        per_product.iter().filter_map(f).collect()
    };
    let rev = shares(&|s| s.captured);
    let lin = shares(&|s| s.captured_line);
    let covered = per_product
        .iter()
        .filter(|s| {
            let (_, lo, hi) = s.estimated_elasticity;
            (lo..=hi).contains(&s.true_elasticity)
        })
        .count();
    let response = models::response::ResponseModel::from_json(
        &store.get(&lineage::ArtifactKeys::new(None).response)?,
    )?;
    let (mut predicted, mut realised) = (0.0, 0.0);
    for b in &response.test_calibration.by_price_band {
        predicted += b.predicted * b.weeks as f64;
        realised += b.realised * b.weeks as f64;
    }
    let pro = shares(&|s| s.captured_profit);
    Ok(MarketScore {
        seed: market.config.seed,
        shape: market.config.shape.name().into(),
        products: per_product.len(),
        with_uplift: rev.len(),
        median: median(rev.clone()),
        min: min(&rev),
        median_line: median(lin.clone()),
        min_line: min(&lin),
        with_profit_uplift: pro.len(),
        median_profit: median(pro.clone()),
        min_profit: min(&pro),
        edge_share: per_product.iter().filter(|s| s.at_grid_edge).count() as f64
            / per_product.len().max(1) as f64,
        elasticity_coverage: covered as f64 / per_product.len().max(1) as f64,
        test_level_ratio: predicted / realised,
        per_product,
    })
}

/// Runs the backtest and prints its table (or JSON).
pub fn run(opts: &Backtest) -> Result<Vec<MarketScore>> {
    if opts.seeds.is_empty() || opts.shapes.is_empty() {
        bail!("give at least one seed and one shape");
    }
    let mut params = pipeline::smoke_params();
    pipeline::params::set_all(&mut params, &opts.set)?;
    pipeline::PipelineParams::from_params(&params)?;
    let tmp = tempfile::tempdir()?;
    let root = opts.out.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let mut scores = Vec::new();
    for &seed in &opts.seeds {
        for &shape in &opts.shapes {
            let market = generate_market(&MarketConfig {
                n_products: opts.products,
                weeks: opts.weeks,
                ..MarketConfig::new(shape, seed)
            });
            let dir = root.join(format!("{}-{seed}", shape.name()));
            std::fs::create_dir_all(&dir)?;
            let s = score(&market, &dir, &params, opts.infer_current_price)
                .with_context(|| format!("{} seed {seed}", shape.name()))?;
            if !opts.json {
                outln!(
                    "{:<20} seed {:<3} products {:>3} ({:>3} with uplift) | revenue: median {:>6.3} min {:>7.3} | line basis: median {:>6.3} min {:>7.3} | profit ({:>3}): median {:>6.3} min {:>7.3} | at edge {:>4.0}% | elasticity band covers {:>4.0}% | test level ratio {:.2}",
                    s.shape,
                    s.seed,
                    s.products,
                    s.with_uplift,
                    s.median,
                    s.min,
                    s.median_line,
                    s.min_line,
                    s.with_profit_uplift,
                    s.median_profit,
                    s.min_profit,
                    100.0 * s.edge_share,
                    100.0 * s.elasticity_coverage,
                    s.test_level_ratio
                );
            }
            scores.push(s);
        }
    }
    if opts.json {
        outln!("{}", serde_json::to_string_pretty(&scores)?);
    } else {
        let all = |f: &dyn Fn(&ProductScore) -> Option<f64>| -> Vec<f64> {
            scores
                .iter()
                .flat_map(|s| s.per_product.iter().filter_map(f))
                .collect()
        };
        let (rev, lin, pro) = (
            all(&|p| p.captured),
            all(&|p| p.captured_line),
            all(&|p| p.captured_profit),
        );
        outln!(
            "all markets: revenue median {:.3} (min {:.3}, {} below 0 of {}); line basis median {:.3} (min {:.3}); profit median {:.3} (min {:.3}, {} below 0 of {})",
            median(rev.clone()),
            min(&rev),
            rev.iter().filter(|v| **v < 0.0).count(),
            rev.len(),
            median(lin.clone()),
            min(&lin),
            median(pro.clone()),
            min(&pro),
            pro.iter().filter(|v| **v < 0.0).count(),
            pro.len()
        );
    }
    Ok(scores)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small constant-elasticity market through the normal pipeline: every
    /// product scored, the recommendations worth keeping, and a `--set`
    /// that changes the decision rule changes the decisions.
    #[test]
    fn a_small_market_is_scored_and_settings_reach_the_pipeline() {
        let opts = Backtest {
            seeds: vec![1],
            shapes: vec![DemandShape::ConstantElasticity],
            products: 8,
            weeks: 40,
            out: None,
            json: true,
            set: Vec::new(),
            infer_current_price: false,
        };
        let scores = run(&opts).unwrap_or_else(|e| panic!("{e:#}"));
        let [market] = scores.as_slice() else {
            panic!("{} markets scored", scores.len())
        };
        assert_eq!((market.products, market.per_product.len()), (8, 8));
        assert!(
            market.median >= 0.8 && market.min >= 0.0,
            "revenue captured: median {}, min {}",
            market.median,
            market.min
        );
        let cautious: Vec<f64> = market.per_product.iter().map(|p| p.recommended).collect();
        let bold = run(&Backtest {
            set: vec!["response.decision_quantile=0.5".into()],
            ..opts.clone()
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
        let bold: Vec<f64> = bold[0].per_product.iter().map(|p| p.recommended).collect();
        assert_ne!(cautious, bold, "the decision quantile changed nothing");

        let e = run(&Backtest {
            set: vec!["response.decision_quantil=0.2".into()],
            ..opts
        })
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
        assert!(
            e.contains("did you mean `response.decision_quantile`"),
            "{e}"
        );
    }
}
