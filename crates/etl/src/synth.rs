//! A seeded generator of Online-Retail-shaped transactions with a known price
//! response, for tests and demos.
//!
//! Each product has a base price and a constant price elasticity: the expected
//! quantity on a line is `base_quantity * (price / base_price)^(-elasticity)`,
//! and the product's price moves between a few levels from month to month, so a
//! model has price variation to learn from. The same seed gives the same bytes
//! on every platform (ChaCha8).
//!
//! ```
//! use etl::synth::{SynthConfig, generate};
//! let a = generate(&SynthConfig { seed: 7, n_invoices: 20, ..Default::default() });
//! let b = generate(&SynthConfig { seed: 7, n_invoices: 20, ..Default::default() });
//! assert_eq!(a.csv, b.csv);
//! assert!(a.csv.starts_with("InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"));
//! ```

pub mod market;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Poisson};

use crate::clean::days_from_civil;

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthConfig {
    /// RNG seed.
    pub seed: u64,
    /// Number of products.
    pub n_products: usize,
    /// Number of registered customers.
    pub n_customers: usize,
    /// Number of sales invoices.
    pub n_invoices: usize,
    /// First day, `(year, month, day)`.
    pub start: (i32, u32, u32),
    /// Number of days covered.
    pub days: u32,
    /// Share of invoices without a customer id.
    pub guest_share: f64,
    /// Add the dirt real exports have: cancellations, postage and fee lines,
    /// zero-price lines and missing descriptions.
    pub noise: bool,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            n_products: 40,
            n_customers: 200,
            n_invoices: 2_000,
            start: (2010, 12, 1),
            days: 365,
            guest_share: 0.25,
            noise: true,
        }
    }
}

/// The ground truth of one generated product.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthProduct {
    /// Stock code (`1000A` style: five digits and a letter).
    pub stock_code: String,
    /// Description.
    pub description: String,
    /// Reference price.
    pub base_price: f64,
    /// Price elasticity (> 0: demand falls as price rises).
    pub elasticity: f64,
    /// Expected quantity per line at the base price.
    pub base_quantity: f64,
}

impl SynthProduct {
    /// Expected quantity on a line at `price` (the known price response).
    pub fn expected_quantity(&self, price: f64) -> f64 {
        self.base_quantity * (price / self.base_price).powf(-self.elasticity)
    }

    /// The price in `[lo, hi]` that maximises expected sales `price * quantity`
    /// (an endpoint, since sales are monotone in price for constant elasticity).
    pub fn sales_maximising_price(&self, lo: f64, hi: f64) -> f64 {
        if self.elasticity < 1.0 { hi } else { lo }
    }
}

/// Generated data and its ground truth.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthData {
    /// The CSV text, Online Retail header and quoting.
    pub csv: String,
    /// Data rows in `csv`.
    pub rows: usize,
    /// Products with their price response.
    pub products: Vec<SynthProduct>,
    /// Rows that cleaning must drop (cancellations, postage, zero price).
    pub dirty_rows: usize,
}

const COUNTRIES: [&str; 6] = [
    "United Kingdom",
    "Germany",
    "France",
    "EIRE",
    "Spain",
    "Netherlands",
];
const WORDS: [&str; 12] = [
    "HEART", "LANTERN", "MUG", "CANDLE", "BAG", "FRAME", "CLOCK", "BOX", "TIN", "BOWL", "SIGN",
    "CUSHION",
];
const PRICE_LEVELS: [f64; 5] = [0.8, 0.9, 1.0, 1.15, 1.3];

fn csv_field(s: &str) -> String {
    if s.contains([',', '"']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn format_ts(start_days: i64, day: i64, minute: i64) -> String {
    let us = ((start_days + day) * 1440 + minute) * 60_000_000;
    crate::format_micros(us)
}

/// Generates a dataset.
pub fn generate(config: &SynthConfig) -> SynthData {
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let n_products = config.n_products.max(1);
    let products: Vec<SynthProduct> = (0..n_products)
        .map(|i| {
            let w1 = WORDS[i % WORDS.len()];
            let w2 = WORDS[(i / WORDS.len() + 3) % WORDS.len()];
            // The first product borrows the real data's best seller's
            // name, so examples and the console's test read as they would
            // on the UCI data.
            let (stock_code, description) = if i == 0 {
                (
                    "85123A".to_string(),
                    "WHITE HANGING HEART T-LIGHT HOLDER".to_string(),
                )
            } else {
                (
                    format!("{}{}", 20000 + i * 7, (b'A' + (i % 3) as u8) as char),
                    format!("{w2} {w1} {}", i + 1),
                )
            };
            SynthProduct {
                stock_code,
                description,
                base_price: (rng.random_range(0.5f64..15.0) * 100.0).round() / 100.0,
                elasticity: rng.random_range(0.4..2.5),
                base_quantity: rng.random_range(2.0..24.0),
            }
        })
        .collect();
    // Popularity: Zipf-like weights.
    let weights: Vec<f64> = (0..n_products)
        .map(|i| 1.0 / (1.0 + i as f64).powf(0.8))
        .collect();
    let total_w: f64 = weights.iter().sum();
    // Each product's price level changes weekly, at random: enough variation to
    // identify the price response, with no trend over time (a time split sees
    // the same price distribution in every window).
    let periods = (config.days / 7 + 2) as usize;
    let levels: Vec<Vec<f64>> = (0..n_products)
        .map(|_| {
            (0..periods)
                .map(|_| PRICE_LEVELS[rng.random_range(0..PRICE_LEVELS.len())])
                .collect()
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
    let start_days = days_from_civil(i64::from(y), i64::from(m), i64::from(d));

    let mut csv = String::from(
        "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n",
    );
    let mut rows = 0usize;
    let mut dirty_rows = 0usize;
    // Invoices in time order: spread uniformly over the period.
    let mut stamps: Vec<(i64, i64)> = (0..config.n_invoices)
        .map(|_| {
            (
                rng.random_range(0..i64::from(config.days.max(1))),
                rng.random_range(8 * 60..18 * 60),
            )
        })
        .collect();
    stamps.sort_unstable();
    for (k, (day, minute)) in stamps.into_iter().enumerate() {
        let invoice = format!("{}", 536_365 + k);
        let ts = format_ts(start_days, day, minute);
        let guest = rng.random_bool(config.guest_share.clamp(0.0, 1.0));
        let customer_idx = rng.random_range(0..customer_country.len());
        let (customer, country) = if guest {
            (String::new(), COUNTRIES[0])
        } else {
            (
                format!("{}", 12_346 + customer_idx),
                customer_country[customer_idx],
            )
        };
        let period = (day / 7) as usize;
        let n_lines = rng.random_range(1..=6);
        for _ in 0..n_lines {
            let mut pick = rng.random_range(0.0..total_w);
            let mut p = 0;
            while p + 1 < n_products && pick >= weights[p] {
                pick -= weights[p];
                p += 1;
            }
            let product = &products[p];
            let price =
                (product.base_price * levels[p][period.min(periods - 1)] * 100.0).round() / 100.0;
            let lambda = product.expected_quantity(price).max(0.05);
            let qty = Poisson::new(lambda)
                .map(|dist| dist.sample(&mut rng) as i64)
                .unwrap_or(1)
                .max(1);
            let desc = if config.noise && rng.random_bool(0.003) {
                String::new()
            } else {
                csv_field(&product.description)
            };
            csv.push_str(&format!(
                "{invoice},{},{desc},{qty},{ts},{price},{customer},{}\n",
                product.stock_code,
                csv_field(country)
            ));
            rows += 1;
            if config.noise && rng.random_bool(0.02) {
                // A later cancellation of this line.
                csv.push_str(&format!(
                    "C{invoice},{},{desc},-{qty},{ts},{price},{customer},{}\n",
                    product.stock_code,
                    csv_field(country)
                ));
                rows += 1;
                dirty_rows += 1;
            }
            if config.noise && rng.random_bool(0.005) {
                csv.push_str(&format!(
                    "{invoice},{},{desc},1,{ts},0.0,{customer},{}\n",
                    product.stock_code,
                    csv_field(country)
                ));
                rows += 1;
                dirty_rows += 1;
            }
        }
        if config.noise && rng.random_bool(0.05) {
            csv.push_str(&format!(
                "{invoice},POST,POSTAGE,1,{ts},18.0,{customer},{}\n",
                csv_field(country)
            ));
            rows += 1;
            dirty_rows += 1;
        }
    }
    SynthData {
        csv,
        rows,
        products,
        dirty_rows,
    }
}
