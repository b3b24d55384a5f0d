//! A synthetic market with a known expected demand at every price: the
//! ground truth of the recommendation backtest (`cargo xtask backtest`).
//!
//! Each product has a demand shape (constant elasticity, semi-log, a kink,
//! or saturation), a usual price that may sit far from its optimum on either
//! side, and a unit cost. Every week, its price is the usual price times a
//! level that changes every few weeks, a promotion discount some weeks, and a
//! reaction to last week's demand (the shop raises prices after strong
//! weeks: confounding); in the last two weeks it charges its usual price,
//! which is therefore the "current" price a recommendation starts from. Orders that week are Poisson with a mean of base
//! orders × season × demand shock × (price response)^ω, and each order's units
//! are Poisson around units-per-order × (price response)^(1−ω): a price
//! changes both how many orders come and how much each takes. Demand shocks
//! are AR(1) and multiplicative.
//!
//! ```
//! use etl::synth::market::{DemandShape, MarketConfig, generate_market};
//! let m = generate_market(&MarketConfig { n_products: 4, weeks: 20, ..MarketConfig::new(DemandShape::SemiLog, 1) });
//! let p = &m.products[0];
//! assert!(p.expected_weekly_units(p.usual_price * 1.2) < p.expected_weekly_units(p.usual_price));
//! assert!(m.data.csv.starts_with("InvoiceNo,StockCode"));
//! ```

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Poisson};

use super::{COUNTRIES, SynthData, SynthProduct, WORDS, csv_field, format_ts};
use crate::clean::days_from_civil;

/// How demand responds to price.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemandShape {
    /// `D(p) = (p / p_ref)^-e`: the same elasticity at every price.
    ConstantElasticity,
    /// `D(p) = exp(-b (p - p_ref))`: elasticity grows with price.
    SemiLog,
    /// Constant elasticity `e1` below a kink price, `e2` above it.
    Kinked,
    /// `D(p) = 1 / (1 + (p / p_s)^h)`: saturated below `p_s`, falling above.
    Saturating,
}

impl DemandShape {
    /// Every shape.
    pub const ALL: [DemandShape; 4] = [
        DemandShape::ConstantElasticity,
        DemandShape::SemiLog,
        DemandShape::Kinked,
        DemandShape::Saturating,
    ];

    /// The shape's name.
    pub fn name(self) -> &'static str {
        match self {
            DemandShape::ConstantElasticity => "constant_elasticity",
            DemandShape::SemiLog => "semi_log",
            DemandShape::Kinked => "kinked",
            DemandShape::Saturating => "saturating",
        }
    }
}

impl std::str::FromStr for DemandShape {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        DemandShape::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown demand shape `{s}` (one of {})",
                    DemandShape::ALL.map(DemandShape::name).join(", ")
                )
            })
    }
}

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct MarketConfig {
    /// RNG seed.
    pub seed: u64,
    /// The demand shape of every product.
    pub shape: DemandShape,
    /// Products.
    pub n_products: usize,
    /// Weeks of sales.
    pub weeks: u32,
    /// First day, `(year, month, day)`.
    pub start: (i32, u32, u32),
    /// Registered customers.
    pub n_customers: usize,
    /// Share of orders without a customer id.
    pub guest_share: f64,
    /// Standard deviation of the weekly log demand shock.
    pub shock_sd: f64,
    /// Persistence of the demand shock (AR(1) coefficient).
    pub shock_persistence: f64,
    /// Amplitude of the yearly seasonality (0.2: ±20 %).
    pub seasonality: f64,
    /// Share of weeks on promotion.
    pub promo_share: f64,
    /// Promotion discount (0.25: 25 % off).
    pub promo_discount: f64,
    /// How strongly the price reacts to last week's demand shock (log price
    /// per unit of log shock): 0 means no confounding.
    pub confounding: f64,
    /// Lowest and highest price level around the usual price.
    pub price_levels: (f64, f64),
    /// Mean orders per week per product at the usual price (the busiest
    /// product; others fall off Zipf-like).
    pub base_orders: f64,
}

impl MarketConfig {
    /// Defaults for a shape and seed: 36 products, 52 weeks from 2010-12-01,
    /// ±20 % seasonality, 10 % promotion weeks at 25 % off, shocks with sd 0.15
    /// and persistence 0.5, confounding 0.3, price levels 0.5–1.8 of the usual
    /// price (the shop's price tests reach the optimum).
    pub fn new(shape: DemandShape, seed: u64) -> Self {
        Self {
            seed,
            shape,
            n_products: 36,
            weeks: 52,
            start: (2010, 12, 1),
            n_customers: 300,
            guest_share: 0.25,
            shock_sd: 0.15,
            shock_persistence: 0.5,
            seasonality: 0.2,
            promo_share: 0.1,
            promo_discount: 0.25,
            confounding: 0.3,
            price_levels: (0.5, 1.8),
            base_orders: 30.0,
        }
    }
}

/// One product of the market and its true demand.
#[derive(Debug, Clone, PartialEq)]
pub struct MarketProduct {
    /// Stock code and description.
    pub stock_code: String,
    /// Description.
    pub description: String,
    /// The price the shop usually charges (the "keep the price" baseline).
    pub usual_price: f64,
    /// What a unit costs the shop.
    pub unit_cost: f64,
    /// The demand shape.
    pub shape: DemandShape,
    /// Shape parameters: CE `[e]`; semi-log `[b]`; kinked `[kink, e1, e2]`;
    /// saturating `[p_s, h]`.
    pub params: Vec<f64>,
    /// Expected orders per week at the usual price (season and shock at 1).
    pub base_orders: f64,
    /// Expected units per order at the usual price.
    pub units_per_order: f64,
    /// Share of the log price response carried by the number of orders.
    pub orders_share: f64,
}

impl MarketProduct {
    /// The demand shape at `p`, relative to an arbitrary scale.
    fn shape_value(&self, p: f64) -> f64 {
        let p = p.max(1e-6);
        match self.shape {
            DemandShape::ConstantElasticity => (p / self.usual_price).powf(-self.params[0]),
            DemandShape::SemiLog => (-self.params[0] * (p - self.usual_price)).exp(),
            DemandShape::Kinked => {
                let (k, e1, e2) = (self.params[0], self.params[1], self.params[2]);
                if p <= k {
                    (p / k).powf(-e1)
                } else {
                    (p / k).powf(-e2)
                }
            }
            DemandShape::Saturating => 1.0 / (1.0 + (p / self.params[0]).powf(self.params[1])),
        }
    }

    /// Demand at `p` relative to demand at the usual price.
    pub fn relative_demand(&self, p: f64) -> f64 {
        self.shape_value(p) / self.shape_value(self.usual_price)
    }

    /// Expected orders per week at `p` (season and shock at 1).
    pub fn expected_orders(&self, p: f64) -> f64 {
        self.base_orders * self.relative_demand(p).powf(self.orders_share)
    }

    /// Expected units per order at `p`.
    pub fn expected_units_per_order(&self, p: f64) -> f64 {
        self.units_per_order * self.relative_demand(p).powf(1.0 - self.orders_share)
    }

    /// Expected units per week at `p` (season and shock at 1).
    pub fn expected_weekly_units(&self, p: f64) -> f64 {
        self.base_orders * self.units_per_order * self.relative_demand(p)
    }

    /// The true price elasticity of weekly demand at `p` (negative), by a
    /// central difference in log price.
    pub fn elasticity_at(&self, p: f64) -> f64 {
        let h: f64 = 1e-4;
        let (lo, hi) = (p * (-h).exp(), p * h.exp());
        (self.relative_demand(hi).ln() - self.relative_demand(lo).ln()) / (2.0 * h)
    }

    /// Expected weekly revenue (`cost = 0`) or profit at `p`.
    pub fn expected_weekly_value(&self, p: f64, cost: f64) -> f64 {
        (p - cost) * self.expected_weekly_units(p)
    }

    /// The price among `grid` with the largest expected weekly revenue
    /// (`cost = 0`) or profit.
    pub fn best_price(&self, grid: &[f64], cost: f64) -> Option<f64> {
        grid.iter().copied().max_by(|a, b| {
            self.expected_weekly_value(*a, cost)
                .total_cmp(&self.expected_weekly_value(*b, cost))
        })
    }
}

/// A generated market: the export and its ground truth.
#[derive(Debug, Clone, PartialEq)]
pub struct Market {
    /// The export (Online Retail columns).
    pub data: SynthData,
    /// The products and their true demand.
    pub products: Vec<MarketProduct>,
    /// The config it was generated from.
    pub config: MarketConfig,
}

/// Draws a product's shape parameters so that its revenue optimum, where
/// the shape has an interior one, sits far from the usual price on either
/// side: at `usual × U(0.6, 0.8)` or `usual × U(1.25, 1.65)`.
fn shape_params(shape: DemandShape, usual: f64, rng: &mut ChaCha8Rng) -> Vec<f64> {
    let optimum = usual
        * if rng.random_bool(0.5) {
            rng.random_range(0.6..0.8)
        } else {
            rng.random_range(1.25..1.65)
        };
    match shape {
        // No interior revenue optimum: elastic (>1) or inelastic (<1).
        DemandShape::ConstantElasticity => vec![if rng.random_bool(0.5) {
            rng.random_range(1.3..3.0)
        } else {
            rng.random_range(0.3..0.8)
        }],
        // Revenue p·exp(-b p) peaks at p = 1/b.
        DemandShape::SemiLog => vec![1.0 / optimum],
        // Revenue peaks at the kink when e1 < 1 < e2.
        DemandShape::Kinked => vec![
            optimum,
            rng.random_range(0.2..0.7),
            rng.random_range(1.8..3.5),
        ],
        // Elasticity −h·s/(1+s), s = (p/p_s)^h, equals −1 at s = 1/(h−1).
        DemandShape::Saturating => {
            let h: f64 = rng.random_range(2.0..4.0);
            vec![optimum * (h - 1.0).powf(1.0 / h), h]
        }
    }
}

/// Generates a market.
pub fn generate_market(config: &MarketConfig) -> Market {
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let n = config.n_products.max(1);
    let products: Vec<MarketProduct> = (0..n)
        .map(|i| {
            let usual = (rng.random_range(1.0f64..12.0) * 100.0).round() / 100.0;
            let w1 = WORDS[i % WORDS.len()];
            let w2 = WORDS[(i / WORDS.len() + 5) % WORDS.len()];
            MarketProduct {
                stock_code: format!("{}{}", 30000 + i * 11, (b'A' + (i % 4) as u8) as char),
                description: format!("{w2} {w1} M{}", i + 1),
                usual_price: usual,
                unit_cost: (usual * rng.random_range(0.3..0.6) * 100.0).round() / 100.0,
                shape: config.shape,
                params: shape_params(config.shape, usual, &mut rng),
                base_orders: config.base_orders / (1.0 + i as f64).powf(0.5),
                units_per_order: rng.random_range(4.0..16.0),
                orders_share: rng.random_range(0.3..0.7),
            }
        })
        .collect();
    let customer_country: Vec<&str> = (0..config.n_customers.max(1))
        .map(|i| {
            if i % 5 == 0 {
                COUNTRIES[1 + rng.random_range(0..COUNTRIES.len() - 1)]
            } else {
                COUNTRIES[0]
            }
        })
        .collect();
    let (y, m, d) = config.start;
    // Prices change on Mondays: weeks start on the Monday on or before the
    // first day (1970-01-01 was a Thursday).
    let first = days_from_civil(i64::from(y), i64::from(m), i64::from(d));
    let start_days = first - (first + 3).rem_euclid(7);
    let shock = Normal::new(0.0, config.shock_sd.max(1e-9)).ok();

    // Orders of every product, week by week: (day, minute, product, units, price).
    let mut lines: Vec<(i64, i64, usize, i64, f64)> = Vec::new();
    for (i, product) in products.iter().enumerate() {
        let mut eps = 0.0f64;
        let mut level = 1.0f64;
        for week in 0..config.weeks {
            // The price: a level held for 1-4 weeks, promotions, and a
            // reaction to last week's demand shock.
            if week == 0 || rng.random_bool(0.4) {
                let (lo, hi) = config.price_levels;
                level = (rng.random_range(lo.ln()..hi.ln())).exp();
            }
            let promo = if rng.random_bool(config.promo_share.clamp(0.0, 1.0)) {
                1.0 - config.promo_discount
            } else {
                1.0
            };
            let reaction = (config.confounding * eps).exp();
            let price = if week + 2 >= config.weeks {
                // The last two weeks: the shop charges its usual price now.
                product.usual_price
            } else {
                ((product.usual_price * level * promo * reaction) * 100.0).round() / 100.0
            };
            let price = price.max(0.01);
            // This week's demand shock (AR(1)), seen by next week's price.
            eps = config.shock_persistence * eps + shock.map_or(0.0, |s| s.sample(&mut rng));
            let season = 1.0
                + config.seasonality * (2.0 * std::f64::consts::PI * f64::from(week) / 52.0).sin();
            let demand = product.relative_demand(price);
            let orders_mean = product.base_orders
                * season
                * (eps * product.orders_share).exp()
                * demand.powf(product.orders_share);
            let units_mean = product.units_per_order
                * (eps * (1.0 - product.orders_share)).exp()
                * demand.powf(1.0 - product.orders_share);
            let orders = Poisson::new(orders_mean.max(1e-6))
                .map(|p| p.sample(&mut rng) as u64)
                .unwrap_or(0);
            for _ in 0..orders {
                // At least one unit per order: the draw is of the units beyond
                // the first, so the mean stays `units_mean`.
                let extra = Poisson::new((units_mean - 1.0).max(1e-6))
                    .map(|p| p.sample(&mut rng) as i64)
                    .unwrap_or(0);
                let day = i64::from(week) * 7 + rng.random_range(0..7);
                lines.push((day, rng.random_range(8 * 60..18 * 60), i, 1 + extra, price));
            }
        }
    }
    lines.sort_by_key(|l| (l.0, l.1, l.2));

    let mut csv = String::from(
        "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n",
    );
    for (k, (day, minute, i, units, price)) in lines.iter().enumerate() {
        let product = &products[*i];
        let (customer, country) = if rng.random_bool(config.guest_share.clamp(0.0, 1.0)) {
            (String::new(), COUNTRIES[0])
        } else {
            let c = rng.random_range(0..customer_country.len());
            (format!("{}", 12_346 + c), customer_country[c])
        };
        csv.push_str(&format!(
            "{},{},{},{units},{},{price},{customer},{}\n",
            600_000 + k,
            product.stock_code,
            csv_field(&product.description),
            format_ts(start_days, *day, *minute),
            csv_field(country)
        ));
    }
    let data = SynthData {
        csv,
        rows: lines.len(),
        products: products
            .iter()
            .map(|p| SynthProduct {
                stock_code: p.stock_code.clone(),
                description: p.description.clone(),
                base_price: p.usual_price,
                // The elasticity at the usual price (the shape's own is in `products`).
                elasticity: p.elasticity_at(p.usual_price),
                base_quantity: p.expected_units_per_order(p.usual_price),
            })
            .collect(),
        dirty_rows: 0,
    };
    Market {
        data,
        products,
        config: config.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_have_their_optimum_where_it_was_placed() {
        for shape in [
            DemandShape::SemiLog,
            DemandShape::Kinked,
            DemandShape::Saturating,
        ] {
            let m = generate_market(&MarketConfig {
                n_products: 8,
                weeks: 4,
                ..MarketConfig::new(shape, 3)
            });
            for p in &m.products {
                let lo = p.usual_price * 0.5;
                let grid: Vec<f64> = (0..2000)
                    .map(|i| lo + f64::from(i) * p.usual_price * 0.001)
                    .collect();
                let best = p.best_price(&grid, 0.0).unwrap_or(f64::NAN);
                let ratio = best / p.usual_price;
                assert!(
                    (0.59..0.81).contains(&ratio) || (1.24..1.66).contains(&ratio),
                    "{shape:?}: revenue optimum at {ratio:.3} x the usual price"
                );
                // Demand never rises with price.
                assert!(grid.windows(2).all(
                    |w| p.expected_weekly_units(w[1]) <= p.expected_weekly_units(w[0]) + 1e-12
                ));
            }
        }
    }

    #[test]
    fn the_export_is_deterministic_and_clean() {
        let c = MarketConfig {
            n_products: 5,
            weeks: 10,
            ..MarketConfig::new(DemandShape::Kinked, 9)
        };
        let (a, b) = (generate_market(&c), generate_market(&c));
        assert!(
            a.data.csv == b.data.csv && a.products == b.products,
            "not deterministic"
        );
        let raw = crate::read_raw_bytes(a.data.csv.as_bytes(), "market.csv")
            .unwrap_or_else(|e| panic!("{e}"));
        let (tx, report) =
            crate::clean(&raw, &crate::EtlParams::default()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(tx.len(), a.data.rows);
        assert_eq!(report.products, 5);
    }
}
