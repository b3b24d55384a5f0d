//! The price recommendation as a library.
//!
//! [`Recommender::load`] reads the production artifacts from an
//! [`ArtifactStore`](lineage::ArtifactStore) (a local directory or S3): the
//! per-product summary and recent contexts, the fitted preprocessor and every
//! usable model of the production manifest, in priority order.
//! [`Recommender::recommend`] then answers "what should I charge for this
//! product?":
//!
//! 1. **Contexts.** The product's own most recent sales rows (up to
//!    `features.recent_contexts`, 50 by default): their calendar, customer and
//!    demand features are kept, only the price changes. A `country` overrides
//!    the rows' country; a `customerid` makes them registered-customer rows.
//! 2. **Grid.** `num_price_bins` prices (default 100) evenly spaced between
//!    `unitprice_min` and `unitprice_max`, each rounded to a whole penny
//!    inside that range (a price the shop can charge). Defaults: the 5th and 95th
//!    percentiles of the product's observed prices (robust to the data's
//!    one-off mispricings); a product sold at a single price gets ±20 % around
//!    it; with `max_change` and no bound given, the allowed range around the
//!    current price. The interior price nearest the current price is moved
//!    onto it, so "keep the current price" is always a candidate. With
//!    `price_ending`, the candidates are the prices in that range that end so.
//! 3. **Level and response.** The models predict ln(1 + quantity) for every
//!    context at the product's current price: the level (units per order
//!    line). The product's price response (`models::response`) carries it
//!    across the grid: weekly orders, units per order and weekly units at
//!    every price, never rising with price, with their bands.
//! 4. **Decision.** The objective (revenue or profit, per week or per line)
//!    at every feasible candidate; the recommendation is the candidate whose
//!    uplift over the current price is best at `response.decision_quantile`
//!    over the response's posterior draws, with the bound or grid edge that
//!    stops it, the uplift and the elasticities with their bands.
//!
//! If the model in use returns an error or a non-finite value, the next model
//! of the manifest answers the request and the failover is reported in the
//! [`Recommendation`].
//!
//! ```no_run
//! use recommend::{PriceRequest, Recommender};
//!
//! let store = lineage::open_store("run")?; // a `cargo xtask pipeline` output
//! let recommender = Recommender::load(store.as_ref())?;
//! let rec = recommender.recommend(&PriceRequest::new("85123A"))?;
//! println!("charge £{:.2} (model {})", rec.optimal_unit_price, rec.model);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod request;

use std::collections::HashMap;

use features::{FeatureRow, Preprocessor, PriceRef, ProductContexts, ProductSummary};
use std::time::Instant;

use lineage::{ArtifactKeys, ArtifactStore, Pointer, Releases};
pub use models::SkippedModel;
pub use models::response::ProductHistory;
use models::response::{ProductResponse, ResponseModel, SalesHistory};
use models::{Manifest, ModelKind, Regressor};
use serde::{Deserialize, Serialize};

pub use request::{
    Basis, DEFAULT_PRICE_BINS, MAX_PRICE_BINS, MIN_PRICE_BINS, Objective, PriceEnding,
    PriceRequest, QUERY_PARAMETERS,
};

/// Errors of the recommendation library.
#[derive(Debug, thiserror::Error)]
pub enum RecommendError {
    /// A request parameter is invalid (HTTP 400).
    #[error("invalid parameter `{parameter}`: {reason}")]
    InvalidParameter {
        /// The parameter's name as the client sent it.
        parameter: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The product is not in the production artifacts (HTTP 404).
    #[error("unknown stockcode `{0}`")]
    UnknownProduct(String),
    /// No model could answer (all failed at load or for this request).
    #[error("no model could answer: {0}")]
    NoModel(String),
    /// The store has no production release yet.
    #[error(
        "no production release in {0}: run `cargo xtask pipeline` (its gate promotes a release) or `cargo xtask promote`"
    )]
    NoProduction(String),
    /// The request's deadline passed before its answer was computed.
    #[error("the recommendation was not computed within its deadline")]
    DeadlineExceeded,
    /// An artifact is missing or unreadable.
    #[error("artifact store: {0}")]
    Store(#[from] lineage::LineageError),
    /// An artifact of the features stage is invalid.
    #[error("features artifact: {0}")]
    Features(#[from] features::FeatureError),
    /// A model or the manifest is invalid.
    #[error("models: {0}")]
    Model(#[from] models::ModelError),
}

/// Result alias of this crate.
pub type Result<T, E = RecommendError> = std::result::Result<T, E>;

/// One point of the price curve.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PricePoint {
    /// Candidate unit price (GBP).
    pub unit_price: f64,
    /// Predicted quantity on the request's basis: units per order line
    /// (`line`) or units per week (`week`).
    pub quantity: f64,
    /// Low end of its band: `line`, the 10th percentile over the recent
    /// buyers; `week`, the calibrated band's lower bound.
    pub quantity_min: f64,
    /// High end of its band (90th percentile, or the band's upper bound).
    pub quantity_max: f64,
    /// `unit_price × quantity`.
    pub predicted_sales: f64,
    /// Units per order line (mean over the recent buyers).
    pub line_quantity: f64,
    /// Expected orders per week.
    pub weekly_orders: f64,
    /// Expected units per week.
    pub weekly_units: f64,
    /// Weekly units band, lower bound (nominal coverage in `band`).
    pub weekly_units_lo: f64,
    /// Weekly units band, upper bound.
    pub weekly_units_hi: f64,
    /// Expected revenue per week.
    pub weekly_revenue: f64,
    /// Expected profit per week, when a unit cost is known.
    pub weekly_profit: Option<f64>,
    /// The objective on the basis at this price.
    pub objective_value: f64,
    /// Whether the price satisfies the request's bounds (change, margin, ending).
    pub feasible: bool,
    /// Whether the price lies outside the prices the product was sold at
    /// (the curve is extrapolated there at constant elasticity).
    pub extrapolated: bool,
}

/// A model that failed for one request, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Failover {
    /// The model that failed.
    pub model: String,
    /// What went wrong.
    pub reason: String,
}

/// How the price grid was chosen.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PriceGrid {
    /// Lowest candidate price.
    pub unitprice_min: f64,
    /// Highest candidate price.
    pub unitprice_max: f64,
    /// Number of candidate prices.
    pub num_price_bins: usize,
    /// Where the bounds came from, in words.
    pub rule: String,
}

/// An estimate with an 80 % band.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Estimate {
    /// The estimate.
    pub value: f64,
    /// Lower end of the band.
    pub lo: f64,
    /// Upper end of the band.
    pub hi: f64,
}

fn latest_sales() -> String {
    "latest sales".into()
}

/// Expected gain of the recommended price over the current one.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Uplift {
    /// Objective at the recommended price minus at the current price, on
    /// the basis (per week or per line), with its 80 % band from the
    /// response's uncertainty.
    pub absolute: Estimate,
    /// The same relative to the objective at the current price.
    pub relative: Estimate,
}

/// Elasticity of demand (on the basis) with its 80 % band.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Elasticities {
    /// At the current price.
    pub current: Estimate,
    /// At the recommended price.
    pub recommended: Estimate,
}

/// Where the product's response came from.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ResponseSummary {
    /// Weeks with sales in training.
    pub weeks: usize,
    /// Share of the response from the product's own data (0: all pooled).
    pub own_weight: f64,
    /// Lowest weekly price it was sold at.
    pub observed_price_min: f64,
    /// Highest weekly price it was sold at.
    pub observed_price_max: f64,
}

/// The weekly band's calibration.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BandCoverage {
    /// Nominal coverage.
    pub nominal: f64,
    /// Measured on the validation window (where it was calibrated).
    pub validation: f64,
    /// Measured on the test window.
    pub test: f64,
}

/// The answer to one [`PriceRequest`].
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Recommendation {
    /// Product.
    pub stockcode: String,
    /// Its most frequent description.
    pub description: String,
    /// The recommended price: the feasible grid price with the largest
    /// objective.
    pub optimal_unit_price: f64,
    /// `predicted_sales` at that price.
    pub max_predicted_sales: f64,
    /// `quantity` at that price.
    pub optimal_quantity: f64,
    /// What was maximised.
    pub objective: Objective,
    /// On which basis.
    pub basis: Basis,
    /// The price the uplift is measured from: the request's
    /// `current_price`, or else the list price (90th percentile) of the
    /// product's latest sales lines.
    pub current_price: f64,
    /// Where it came from: `request` or `latest sales`.
    #[serde(default = "latest_sales")]
    pub current_price_source: String,
    /// The unit cost used, if any.
    pub unit_cost: Option<f64>,
    /// Where it came from: `request` or `costs file`.
    pub unit_cost_source: Option<String>,
    /// Expected gain over keeping the current price.
    pub uplift: Uplift,
    /// The bound that stops the recommendation from going further, if one
    /// does: `max_change`, `min_margin`.
    pub active_bound: Option<String>,
    /// `lower` or `upper` when the recommendation sits at that edge of the
    /// grid: the data cannot say what happens beyond it.
    pub at_grid_edge: Option<String>,
    /// What a pricing manager should know about this answer, in words.
    pub notes: Vec<String>,
    /// Elasticities at the current and the recommended price.
    pub elasticity: Elasticities,
    /// Where the product's price response came from.
    pub response: ResponseSummary,
    /// Calibration of the weekly band.
    pub band: BandCoverage,
    /// The price curve, by increasing price.
    pub curve: Vec<PricePoint>,
    /// The grid and its rule.
    pub grid: PriceGrid,
    /// How many of the product's recent sales rows set the line level.
    pub contexts: usize,
    /// The model that set the line level.
    pub model: String,
    /// The production model set's version (from the manifest).
    pub model_version: String,
    /// The release that answered.
    pub release: String,
    /// Models that failed for this request before `model` answered.
    pub failovers: Vec<Failover>,
}

/// One row of the original API's `/predict-price` answer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LegacyRow<'a> {
    /// Product.
    pub stockcode: &'a str,
    /// Candidate price.
    pub unit_price: f64,
    /// Predicted quantity on the basis.
    pub quantity: f64,
    /// Low end of its band.
    pub quantity_min: f64,
    /// High end of its band.
    pub quantity_max: f64,
    /// `unit_price × quantity`.
    pub predicted_sales: f64,
    /// The recommended price (same on every row).
    pub optimal_unit_price: f64,
    /// `predicted_sales` at the recommended price (same on every row).
    pub max_predicted_sales: f64,
}

impl Recommendation {
    /// The first number of the answer that is not finite, if any (a 200
    /// answer carries only finite numbers).
    pub fn first_non_finite(&self) -> Option<&'static str> {
        let e = |x: &Estimate| [x.value, x.lo, x.hi];
        let mut top: Vec<(&'static str, f64)> = vec![
            ("optimal_unit_price", self.optimal_unit_price),
            ("max_predicted_sales", self.max_predicted_sales),
            ("optimal_quantity", self.optimal_quantity),
            ("current_price", self.current_price),
            ("grid.unitprice_min", self.grid.unitprice_min),
            ("grid.unitprice_max", self.grid.unitprice_max),
            ("band", self.band.nominal),
        ];
        for (name, est) in [
            ("uplift.absolute", &self.uplift.absolute),
            ("uplift.relative", &self.uplift.relative),
            ("elasticity.current", &self.elasticity.current),
            ("elasticity.recommended", &self.elasticity.recommended),
        ] {
            top.extend(e(est).map(|v| (name, v)));
        }
        if let Some(c) = self.unit_cost {
            top.push(("unit_cost", c));
        }
        if let Some((name, _)) = top.iter().find(|(_, v)| !v.is_finite()) {
            return Some(name);
        }
        self.curve.iter().find_map(|p| {
            [
                ("curve.unit_price", p.unit_price),
                ("curve.quantity", p.quantity),
                ("curve.quantity_min", p.quantity_min),
                ("curve.quantity_max", p.quantity_max),
                ("curve.predicted_sales", p.predicted_sales),
                ("curve.line_quantity", p.line_quantity),
                ("curve.weekly_orders", p.weekly_orders),
                ("curve.weekly_units", p.weekly_units),
                ("curve.weekly_units_lo", p.weekly_units_lo),
                ("curve.weekly_units_hi", p.weekly_units_hi),
                ("curve.weekly_revenue", p.weekly_revenue),
                ("curve.weekly_profit", p.weekly_profit.unwrap_or(0.0)),
                ("curve.objective_value", p.objective_value),
            ]
            .into_iter()
            .find(|(_, v)| !v.is_finite())
            .map(|(name, _)| name)
        })
    }

    /// The curve in the original API's row format.
    pub fn legacy_rows(&self) -> Vec<LegacyRow<'_>> {
        self.curve
            .iter()
            .map(|p| LegacyRow {
                stockcode: &self.stockcode,
                unit_price: p.unit_price,
                quantity: p.quantity,
                quantity_min: p.quantity_min,
                quantity_max: p.quantity_max,
                predicted_sales: p.predicted_sales,
                optimal_unit_price: self.optimal_unit_price,
                max_predicted_sales: self.max_predicted_sales,
            })
            .collect()
    }
}

/// Posterior draws behind the decision and the uplift band.
const UPLIFT_DRAWS: usize = 100;
/// The two-sided normal quantile of an 80 % band.
const Z80: f64 = 1.281_551_565_545;

/// A model that loaded and passed its probe.
struct ServingModel {
    kind: ModelKind,
    model: Box<dyn Regressor>,
}

/// One recent sales row of a product; strings are filled in per request.
#[derive(Debug, Clone, Copy)]
struct Context {
    country: usize,
    row: FeatureRow<'static>,
}

/// What [`Recommender::health`] reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// The model that answers first.
    pub model: String,
    /// Backups, in failover order.
    pub backups: Vec<String>,
    /// The production model set's version.
    pub model_version: String,
    /// Models of the manifest that failed to load, with reasons.
    pub skipped: Vec<SkippedModel>,
    /// Products that can be priced.
    pub products: usize,
    /// The release being served.
    pub release: String,
}

/// Loaded production artifacts; answers [`PriceRequest`]s. Cheap to share
/// behind an `Arc` (all methods take `&self`).
pub struct Recommender {
    summary: ProductSummary,
    contexts: HashMap<String, Vec<Context>>,
    countries: Vec<String>,
    preprocessor: Preprocessor,
    manifest: Manifest,
    models: Vec<ServingModel>,
    skipped: Vec<SkippedModel>,
    cache_version: String,
    release: String,
    response: ResponseModel,
    history: Option<SalesHistory>,
    gate_report: Option<GateReport>,
}

/// The gate's report of the release being served, as the gate wrote it.
#[derive(Debug, Clone)]
pub struct GateReport {
    /// `gate/report.json`.
    pub json: Vec<u8>,
    /// `gate/report.html` (self-contained: inline SVG, no external assets).
    pub html: Vec<u8>,
}

/// A product as the catalogue lists it.
#[derive(Debug, Clone, Copy)]
pub struct Product<'a> {
    /// Stock code.
    pub stockcode: &'a str,
    /// Most frequent description.
    pub description: &'a str,
    /// Sales lines, all time.
    pub lines: f64,
}

impl std::fmt::Debug for Recommender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recommender")
            .field("model_version", &self.manifest.model_version)
            .field(
                "models",
                &self
                    .models
                    .iter()
                    .map(|m| m.kind.name())
                    .collect::<Vec<_>>(),
            )
            .field("products", &self.summary.rows.len())
            .finish()
    }
}

impl Recommender {
    /// Loads the release production points at (`production.json`) from a
    /// `cargo xtask pipeline` store: see [`Recommender::load_release`].
    pub fn load(store: &dyn ArtifactStore) -> Result<Self> {
        let pointer = Releases::new(store, None)
            .production()?
            .ok_or_else(|| RecommendError::NoProduction(store.location()))?;
        Self::load_release(store, &pointer)
    }

    /// Loads the release `pointer` names. Every file is checked against the
    /// pointer's hash as it is read, and every model of the release's
    /// manifest is verified (hashes, features, a finite probe prediction);
    /// models that fail are skipped and reported by [`Recommender::health`].
    /// Fails when a serving file is missing or corrupt, or no model is usable.
    pub fn load_release(store: &dyn ArtifactStore, pointer: &Pointer) -> Result<Self> {
        let release = Releases::new(store, None).open(pointer);
        let store: &dyn ArtifactStore = &release;
        let k = ArtifactKeys::new(None);
        let summary = ProductSummary::from_parquet(&store.get(&k.summary)?)?;
        let table = ProductContexts::from_parquet(&store.get(&k.contexts)?)?.table;
        let preprocessor = Preprocessor::from_json(&store.get(&k.preprocessor)?)?;
        let manifest = Manifest::from_json(&store.get(&k.manifest)?)?;
        let response = ResponseModel::from_json(&store.get(&k.response)?)?;
        // Releases made before the history and report existed lack them:
        // they still serve prices, and say so when asked for these.
        let optional = |key: &str| -> Result<Option<Vec<u8>>> {
            Ok(match store.hash(key)? {
                Some(_) => Some(store.get(key)?),
                None => None,
            })
        };
        let history = optional(&k.history)?
            .map(|bytes| SalesHistory::from_json(&bytes))
            .transpose()?;
        let gate_report = match (optional(&k.gate_report)?, optional(&k.gate_html)?) {
            (Some(json), Some(html)) => Some(GateReport { json, html }),
            _ => None,
        };
        if manifest.feature_names != preprocessor.feature_names {
            return Err(RecommendError::Model(models::ModelError::Format {
                model: "manifest".into(),
                reason: "its feature names differ from the preprocessor's".into(),
            }));
        }

        let (loaded, skipped) = models::FailoverLoader::new(store).load_all(&k.manifest, &manifest);
        let models: Vec<ServingModel> = loaded
            .into_iter()
            .map(|(kind, model)| ServingModel { kind, model })
            .collect();
        if models.is_empty() {
            let why = skipped
                .iter()
                .map(|s| format!("{}: {}", s.kind.name(), s.reason))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(RecommendError::NoModel(if why.is_empty() {
                "the manifest lists no models".into()
            } else {
                why
            }));
        }

        let mut countries: Vec<String> = Vec::new();
        let mut country_index: HashMap<String, usize> = HashMap::new();
        let mut contexts: HashMap<String, Vec<Context>> = HashMap::new();
        for row in table.rows()? {
            let next = countries.len();
            let country = *country_index.entry(row.country.to_string()).or_insert(next);
            if country == next {
                countries.push(row.country.to_string());
            }
            contexts
                .entry(row.stock_code.to_string())
                .or_default()
                .push(Context {
                    country,
                    row: FeatureRow {
                        stock_code: "",
                        country: "",
                        ..row
                    },
                });
        }

        let kinds: Vec<&str> = models.iter().map(|m| m.kind.name()).collect();
        let cache_version = format!(
            "{}+{}+{}",
            pointer.release,
            manifest.model_version,
            kinds.join(",")
        );
        Ok(Self {
            summary,
            contexts,
            countries,
            preprocessor,
            manifest,
            models,
            skipped,
            cache_version,
            release: pointer.release.clone(),
            response,
            history,
            gate_report,
        })
    }

    /// The release being served.
    pub fn release(&self) -> &str {
        &self.release
    }

    /// The request in canonical form, so that requests with the same answer
    /// share a cache key: the country spelled as in the data (matched
    /// ignoring case; a country the data never saw is an error naming the
    /// parameter), and validated.
    pub fn canonical(&self, mut request: PriceRequest) -> Result<PriceRequest> {
        request.validate()?;
        if let Some(asked) = &request.country {
            let known = self
                .countries
                .iter()
                .chain(self.preprocessor.countries.iter())
                .find(|c| c.eq_ignore_ascii_case(asked.trim()));
            match known {
                Some(c) => request.country = Some(c.clone()),
                None => {
                    let mut names: Vec<&str> = self
                        .countries
                        .iter()
                        .chain(self.preprocessor.countries.iter())
                        .map(String::as_str)
                        .filter(|c| *c != "other")
                        .collect();
                    names.sort_unstable();
                    names.dedup();
                    return Err(RecommendError::InvalidParameter {
                        parameter: "country",
                        reason: format!(
                            "no sales to `{}` in the data (known: {})",
                            asked.chars().take(40).collect::<String>(),
                            names.join(", ")
                        ),
                    });
                }
            }
        }
        Ok(request)
    }

    /// The production model set's version (from the manifest).
    pub fn model_version(&self) -> &str {
        &self.manifest.model_version
    }

    /// A version string for cache keys: the model version plus the models that
    /// loaded, so a new model set, or a failover at load, never reads entries
    /// cached under another.
    pub fn cache_version(&self) -> &str {
        &self.cache_version
    }

    /// Every product that can be priced, by stock code.
    pub fn products(&self) -> impl ExactSizeIterator<Item = Product<'_>> {
        self.summary.rows.iter().map(|r| Product {
            stockcode: &r.stock_code,
            description: &r.description,
            lines: r.n_lines,
        })
    }

    /// A product's weekly sales; `None` when the product is unknown or the
    /// release carries no history.
    pub fn history(&self, stockcode: &str) -> Option<&ProductHistory> {
        self.history.as_ref()?.products.get(stockcode)
    }

    /// Whether the release carries weekly sales histories.
    pub fn has_history(&self) -> bool {
        self.history.is_some()
    }

    /// The gate's report of the release being served, if it has one.
    pub fn gate_report(&self) -> Option<&GateReport> {
        self.gate_report.as_ref()
    }

    /// Whether the product can be priced.
    pub fn knows(&self, stockcode: &str) -> bool {
        self.summary.get(stockcode).is_some()
    }

    /// Loaded models and version.
    pub fn health(&self) -> Health {
        Health {
            model: self.models[0].kind.name().into(),
            backups: self.models[1..]
                .iter()
                .map(|m| m.kind.name().into())
                .collect(),
            model_version: self.manifest.model_version.clone(),
            skipped: self.skipped.clone(),
            products: self.summary.rows.len(),
            release: self.release.clone(),
        }
    }

    /// Recommends a price: see the crate documentation for the rule.
    pub fn recommend(&self, request: &PriceRequest) -> Result<Recommendation> {
        self.recommend_until(request, None)
    }

    /// [`Recommender::recommend`], giving up with
    /// [`RecommendError::DeadlineExceeded`] once `deadline` passes (checked
    /// between the steps of the computation).
    pub fn recommend_until(
        &self,
        request: &PriceRequest,
        deadline: Option<Instant>,
    ) -> Result<Recommendation> {
        let past = || deadline.is_some_and(|d| Instant::now() >= d);
        request.validate()?;
        let product = self
            .summary
            .get(&request.stockcode)
            .ok_or_else(|| RecommendError::UnknownProduct(request.stockcode.clone()))?;
        let response = self.response.get(&request.stockcode).ok_or_else(|| {
            RecommendError::Model(models::ModelError::Format {
                model: "response".into(),
                reason: format!("no price response for {}", request.stockcode),
            })
        })?;
        // The current price: the catalogue's, when the request gives it;
        // otherwise the list price of the product's latest sales lines.
        let (current, current_price_source) = match request.current_price {
            Some(p) => (p, "request"),
            None => (response.current_price, "latest sales"),
        };
        let mut grid = request.grid(product, current)?;
        let mut candidates = candidate_prices(&grid, request.price_ending)?;
        // The answer reports the grid as searched: its ends on whole pence
        // (6.36, not the bound 6.369000000000001) and as many prices as
        // there are distinct candidates.
        if let (Some(&lo), Some(&hi)) = (candidates.first(), candidates.last()) {
            grid.unitprice_min = lo;
            grid.unitprice_max = hi;
            grid.num_price_bins = candidates.len();
        }
        if request.price_ending.is_none() {
            snap_to_current(&mut candidates, current);
        }
        let (unit_cost, unit_cost_source) = match (request.unit_cost, response.unit_cost) {
            (Some(c), _) => (Some(c), Some("request".to_string())),
            (None, Some(c)) => (Some(c), Some("costs file".to_string())),
            (None, None) => (None, None),
        };
        for (needed, parameter) in [
            (request.objective == Objective::Profit, "objective"),
            (request.min_margin.is_some(), "min_margin"),
        ] {
            if needed && unit_cost.is_none() {
                return Err(RecommendError::InvalidParameter {
                    parameter,
                    reason: format!(
                        "needs a unit cost: pass unit_cost (none on file for {})",
                        request.stockcode
                    ),
                });
            }
        }
        if past() {
            return Err(RecommendError::DeadlineExceeded);
        }
        // The level: the models' units per line for the product's recent
        // buyers, at its current price (failing over between models).
        let contexts = self.contexts_for(request)?;
        let mut failovers = Vec::new();
        let mut level = None;
        for serving in &self.models {
            match self.line_levels(serving, request, current, product, &contexts) {
                Ok(levels) => {
                    level = Some((serving.kind, levels));
                    break;
                }
                Err(reason) => {
                    tracing::warn!(model = serving.kind.name(), %reason, stockcode = %request.stockcode, "model failed for a request; failing over");
                    failovers.push(Failover {
                        model: serving.kind.name().into(),
                        reason,
                    });
                }
            }
        }
        let Some((kind, mut levels)) = level else {
            return Err(RecommendError::NoModel(
                failovers
                    .iter()
                    .map(|f| format!("{}: {}", f.model, f.reason))
                    .collect::<Vec<_>>()
                    .join("; "),
            ));
        };
        if past() {
            return Err(RecommendError::DeadlineExceeded);
        }
        levels.sort_by(f64::total_cmp);
        let line_level = Level {
            mean: levels.iter().sum::<f64>() / levels.len().max(1) as f64,
            p10: quantile_sorted(&levels, 0.10),
            p90: quantile_sorted(&levels, 0.90),
        };
        let rec = self.decide(Decision {
            request,
            product,
            response,
            grid,
            candidates: &candidates,
            line_level,
            unit_cost,
            unit_cost_source,
            current,
            current_price_source,
            contexts: contexts.len(),
            kind,
            failovers,
        })?;
        match rec.first_non_finite() {
            None => Ok(rec),
            Some(field) => Err(RecommendError::NoModel(format!(
                "the answer for {} has a non-finite {field}",
                request.stockcode
            ))),
        }
    }

    /// Units per order line at `price` for each context (the model's level);
    /// why not, when the model fails.
    fn line_levels(
        &self,
        serving: &ServingModel,
        request: &PriceRequest,
        price: f64,
        product: &features::SummaryRow,
        contexts: &[(&str, FeatureRow<'static>)],
    ) -> Result<Vec<f64>, String> {
        let reference = PriceRef {
            max: product.ref_price_max,
            mean: product.ref_price_mean,
            median: product.ref_price_median,
        };
        let (rel_max, rel_mean, rel_median, squared, log1p) =
            features::price_features(price, &reference);
        let rows: Vec<FeatureRow<'_>> = contexts
            .iter()
            .map(|(country, ctx)| FeatureRow {
                stock_code: &request.stockcode,
                country,
                unit_price: price,
                price_rel_max: rel_max,
                price_rel_mean: rel_mean,
                price_rel_median: rel_median,
                price_squared: squared,
                log1p_price: log1p,
                ..*ctx
            })
            .collect();
        let x = self.preprocessor.transform(&rows);
        let pred = serving.model.predict(x.view()).map_err(|e| e.to_string())?;
        if let Some(bad) = pred.iter().find(|v| !v.is_finite()) {
            return Err(format!("predicted {bad}"));
        }
        let units: Vec<f64> = pred.iter().map(|y| y.exp_m1().max(0.0)).collect();
        if let Some(bad) = units.iter().find(|v| !v.is_finite()) {
            return Err(format!("predicts {bad} units"));
        }
        Ok(units)
    }

    /// The product's contexts with their country resolved.
    fn contexts_for<'a>(
        &'a self,
        request: &'a PriceRequest,
    ) -> Result<Vec<(&'a str, FeatureRow<'static>)>> {
        let all = self
            .contexts
            .get(&request.stockcode)
            .filter(|c| !c.is_empty())
            .ok_or_else(|| RecommendError::UnknownProduct(request.stockcode.clone()))?;
        let registered_only =
            request.customer_id.is_some() && all.iter().any(|c| c.row.is_registered > 0.5);
        Ok(all
            .iter()
            .filter(|c| !registered_only || c.row.is_registered > 0.5)
            .map(|c| {
                let country = request
                    .country
                    .as_deref()
                    .unwrap_or(self.countries[c.country].as_str());
                let mut row = c.row;
                if request.customer_id.is_some() {
                    row.is_registered = 1.0;
                }
                (country, row)
            })
            .collect())
    }

    /// The curve, the constrained optimum and what to say about it.
    fn decide(&self, d: Decision<'_>) -> Result<Recommendation> {
        let Decision {
            request,
            product,
            response,
            grid,
            candidates,
            line_level,
            unit_cost,
            unit_cost_source,
            current,
            current_price_source,
            contexts,
            kind,
            failovers,
        } = d;
        let basis = request.basis.unwrap_or(Basis::DEFAULT);
        let cost = match request.objective {
            Objective::Revenue => 0.0,
            Objective::Profit => unit_cost.unwrap_or(0.0),
        };
        let band = self.response.weekly_band;
        let (observed_lo, observed_hi) = response.price_range;
        // The feasible interval from the request's bounds.
        let mut lo_bound: (f64, Option<&'static str>) = (f64::NEG_INFINITY, None);
        let mut hi_bound: (f64, Option<&'static str>) = (f64::INFINITY, None);
        if let Some(m) = request.max_change {
            lo_bound = (current * (1.0 - m), Some("max_change"));
            hi_bound = (current * (1.0 + m), Some("max_change"));
        }
        if let (Some(m), Some(c)) = (request.min_margin, unit_cost) {
            let floor = c / (1.0 - m);
            if floor > lo_bound.0 {
                lo_bound = (floor, Some("min_margin"));
            }
        }
        let eps = 1e-9;
        let value_of = |units: f64, price: f64| (price - cost) * units;
        let curve: Vec<PricePoint> = candidates
            .iter()
            .map(|&price| {
                let at = response.at(price);
                let line_quantity = line_level.mean * at.relative_units_per_order;
                let week_lo = at.weekly_units / band.smearing.max(1e-9) * band.lo.exp();
                let week_hi = at.weekly_units / band.smearing.max(1e-9) * band.hi.exp();
                let (quantity, quantity_min, quantity_max) = match basis {
                    Basis::Line => (
                        line_quantity,
                        line_level.p10 * at.relative_units_per_order,
                        line_level.p90 * at.relative_units_per_order,
                    ),
                    Basis::Week => (at.weekly_units, week_lo, week_hi),
                };
                PricePoint {
                    unit_price: price,
                    quantity,
                    quantity_min,
                    quantity_max,
                    predicted_sales: price * quantity,
                    line_quantity,
                    weekly_orders: at.orders,
                    weekly_units: at.weekly_units,
                    weekly_units_lo: week_lo,
                    weekly_units_hi: week_hi,
                    weekly_revenue: price * at.weekly_units,
                    weekly_profit: unit_cost.map(|c| (price - c) * at.weekly_units),
                    objective_value: value_of(quantity, price),
                    feasible: price >= lo_bound.0 - eps && price <= hi_bound.0 + eps,
                    extrapolated: price < observed_lo - eps || price > observed_hi + eps,
                }
            })
            .collect();
        let best_of = |points: &mut dyn Iterator<Item = &PricePoint>| -> Option<PricePoint> {
            points.copied().reduce(|best, p| {
                if p.objective_value > best.objective_value {
                    p
                } else {
                    best
                }
            })
        };
        // The decision: the feasible price whose uplift over the current
        // price has the largest `decision_quantile` over the response's
        // posterior draws. Each draw's curve is relative to the current
        // price, so the uplift of price p under draw d is
        // `(p − c)·level·exp(ln D_d(p) − ln D_d(current)) − (current − c)·level`.
        let draws = response.posterior_draws(UPLIFT_DRAWS);
        let q = self.response.params.decision_quantile;
        let level_now = match basis {
            Basis::Line => line_level.mean,
            Basis::Week => response.at(current).weekly_units,
        };
        let value_now = value_of(level_now, current);
        let v_of = |price: f64| (price.max(1e-9) / response.ref_price).ln();
        let draw_curves: Vec<(&models::response::Curve, f64)> = draws
            .iter()
            .map(|(weekly, units)| {
                let c = match basis {
                    Basis::Line => units,
                    Basis::Week => weekly,
                };
                (c, c.log_demand(v_of(current)))
            })
            .collect();
        let gains_at = |price: f64| -> Vec<f64> {
            let v = v_of(price);
            let mut gains: Vec<f64> = draw_curves
                .iter()
                .map(|(c, base)| {
                    value_of(level_now * (c.log_demand(v) - base).exp(), price) - value_now
                })
                .collect();
            gains.sort_by(f64::total_cmp);
            gains
        };
        // At 0.5 the plug-in curve decides: the same answer up to draw noise,
        // without scoring every price over every draw.
        let median_rule = (q - 0.5).abs() < 1e-12;
        let scored: Vec<(f64, &PricePoint)> = curve
            .iter()
            .filter(|p| p.feasible)
            .map(|p| {
                let s = if median_rule {
                    p.objective_value
                } else {
                    quantile_sorted(&gains_at(p.unit_price), q)
                };
                (s, p)
            })
            .collect();
        let best = scored
            .iter()
            .copied()
            .reduce(|best, x| if x.0 > best.0 { x } else { best })
            .map(|(_, p)| *p)
            .ok_or_else(|| {
            RecommendError::InvalidParameter {
                parameter: lo_bound.1.or(hi_bound.1).unwrap_or("num_price_bins"),
                reason: format!(
                    "no candidate price in {:.2}..{:.2} satisfies the bounds (allowed {:.2}..{:.2})",
                    grid.unitprice_min,
                    grid.unitprice_max,
                    lo_bound.0.max(0.0),
                    hi_bound.0
                ),
            }
        })?;
        // Which bound stops it, or which grid edge it sits on.
        let unconstrained = best_of(&mut curve.iter());
        let feasible_prices: Vec<f64> = curve
            .iter()
            .filter(|p| p.feasible)
            .map(|p| p.unit_price)
            .collect();
        let mut active_bound = None;
        if unconstrained.is_some_and(|u| u.unit_price != best.unit_price) {
            if feasible_prices.first() == Some(&best.unit_price) {
                active_bound = lo_bound.1.map(str::to_string);
            } else if feasible_prices.last() == Some(&best.unit_price) {
                active_bound = hi_bound.1.map(str::to_string);
            }
        }
        // A grid made from `max_change` ends where the bound does.
        let grid_is_max_change = request.max_change.is_some()
            && request.unitprice_min.is_none()
            && request.unitprice_max.is_none();
        if active_bound.is_none()
            && grid_is_max_change
            && (candidates.first() == Some(&best.unit_price)
                || candidates.last() == Some(&best.unit_price))
        {
            active_bound = Some("max_change".to_string());
        }
        let at_grid_edge = if active_bound.is_some() {
            None
        } else if candidates.first() == Some(&best.unit_price) {
            Some("lower".to_string())
        } else if candidates.last() == Some(&best.unit_price) {
            Some("upper".to_string())
        } else {
            None
        };
        let mut notes = Vec::new();
        if let Some(edge) = &at_grid_edge {
            notes.push(format!(
                "the recommendation is the {edge} end of the price grid: the objective still improves towards it, and the data cannot say what happens beyond it"
            ));
        }
        if best.extrapolated {
            notes.push(format!(
                "the recommended price is outside the prices the product sold at ({observed_lo:.2}..{observed_hi:.2}): its curve there is extrapolated at constant elasticity"
            ));
        }
        if response.own_weight < 0.2 {
            notes.push(
                "little own price variation: the response is mostly the pooled response of all products".into(),
            );
        }
        if let Some(bound) = &active_bound {
            notes.push(format!("the {bound} bound stops the recommendation"));
        }
        if basis == Basis::Line {
            notes.push("line basis: the price's effect on the number of orders is ignored".into());
        }

        // Uplift over the current price, and its band from the response's
        // posterior.
        let uplift_abs = best.objective_value - value_now;
        let abs_sorted = gains_at(best.unit_price);
        let mut rel_sorted: Vec<f64> = abs_sorted
            .iter()
            .map(|g| {
                if value_now.abs() > 1e-12 {
                    g / value_now
                } else {
                    0.0
                }
            })
            .collect();
        // (A negative value now — profit below cost — reverses the order.)
        rel_sorted.sort_by(f64::total_cmp);
        let uplift = Uplift {
            absolute: Estimate {
                value: uplift_abs,
                lo: quantile_sorted(&abs_sorted, 0.1),
                hi: quantile_sorted(&abs_sorted, 0.9),
            },
            relative: Estimate {
                value: if value_now.abs() > 1e-12 {
                    uplift_abs / value_now
                } else {
                    0.0
                },
                lo: quantile_sorted(&rel_sorted, 0.1),
                hi: quantile_sorted(&rel_sorted, 0.9),
            },
        };
        let elasticity_at = |price: f64| {
            let (e, sd) = match basis {
                Basis::Line => response.line_elasticity(price),
                Basis::Week => response.weekly_elasticity(price),
            };
            Estimate {
                value: e,
                lo: e - Z80 * sd,
                hi: (e + Z80 * sd).min(0.0),
            }
        };
        Ok(Recommendation {
            stockcode: request.stockcode.clone(),
            description: product.description.clone(),
            optimal_unit_price: best.unit_price,
            max_predicted_sales: best.predicted_sales,
            optimal_quantity: best.quantity,
            objective: request.objective,
            basis,
            current_price: current,
            current_price_source: current_price_source.to_string(),
            unit_cost,
            unit_cost_source,
            uplift,
            active_bound,
            at_grid_edge,
            notes,
            elasticity: Elasticities {
                current: elasticity_at(current),
                recommended: elasticity_at(best.unit_price),
            },
            response: ResponseSummary {
                weeks: response.weeks,
                own_weight: response.own_weight,
                observed_price_min: observed_lo,
                observed_price_max: observed_hi,
            },
            band: BandCoverage {
                nominal: self.response.params.coverage,
                validation: band.validation_coverage,
                test: band.test_coverage,
            },
            curve,
            grid,
            contexts,
            model: kind.name().into(),
            model_version: self.manifest.model_version.clone(),
            release: self.release.clone(),
            failovers,
        })
    }
}

/// Mean and 10th/90th percentiles of the line level over the contexts.
#[derive(Debug, Clone, Copy)]
struct Level {
    mean: f64,
    p10: f64,
    p90: f64,
}

/// Everything [`Recommender::decide`] needs.
struct Decision<'a> {
    request: &'a PriceRequest,
    product: &'a features::SummaryRow,
    response: &'a ProductResponse,
    grid: PriceGrid,
    candidates: &'a [f64],
    line_level: Level,
    unit_cost: Option<f64>,
    unit_cost_source: Option<String>,
    current: f64,
    current_price_source: &'static str,
    contexts: usize,
    kind: ModelKind,
    failovers: Vec<Failover>,
}

/// `n` evenly spaced prices from min to max, both included, each on a whole
/// penny (a price the shop can charge): the ends rounded inward, so the grid
/// never leaves its range, the others to the nearest penny, and a penny
/// that two prices share once (so a range narrower than `n` pence has fewer
/// prices). A range inside one penny is left as it is.
fn grid_prices(grid: &PriceGrid) -> Vec<f64> {
    let n = grid.num_price_bins;
    let (lo, hi) = (grid.unitprice_min, grid.unitprice_max);
    let (lo_p, hi_p) = ((lo * 100.0 - 1e-9).ceil(), (hi * 100.0 + 1e-9).floor());
    let whole_pence = lo_p <= hi_p;
    let step = (hi - lo) / (n - 1) as f64;
    let mut prices: Vec<f64> = (0..n)
        .map(|i| {
            let p = if i + 1 == n { hi } else { lo + step * i as f64 };
            if whole_pence {
                (p * 100.0).round().clamp(lo_p, hi_p) / 100.0
            } else {
                p
            }
        })
        .collect();
    prices.dedup();
    prices
}

/// Moves the interior grid price nearest to `current` onto it, when
/// `current` lies strictly inside the grid: "keep the current price" is
/// then a candidate, scored exactly (zero uplift under every draw), and
/// the recommendation is the current price itself, not a neighbour a
/// fraction of a step away, whenever no move pays. The number of prices
/// and both ends are unchanged; the order is kept.
fn snap_to_current(prices: &mut [f64], current: f64) {
    let n = prices.len();
    if n < 3 || !(current > prices[0] && current < prices[n - 1]) {
        return;
    }
    let nearest = (1..n - 1).min_by(|&a, &b| {
        (prices[a] - current)
            .abs()
            .total_cmp(&(prices[b] - current).abs())
    });
    if let Some(i) = nearest {
        prices[i] = current;
    }
}

/// The candidate prices: the grid, or with a price ending, every price in
/// the grid's range that ends so (in pence; at most [`MAX_PRICE_BINS`]).
fn candidate_prices(grid: &PriceGrid, ending: Option<PriceEnding>) -> Result<Vec<f64>> {
    let Some(ending) = ending else {
        return Ok(grid_prices(grid));
    };
    let lo = (grid.unitprice_min * 100.0).ceil() as i64;
    let hi = (grid.unitprice_max * 100.0).floor() as i64;
    let mut prices: Vec<f64> = (lo..=hi)
        .filter(|&p| ending.accepts_pence(p))
        .map(|p| p as f64 / 100.0)
        .collect();
    if prices.len() > MAX_PRICE_BINS {
        let step = prices.len().div_ceil(MAX_PRICE_BINS);
        prices = prices.into_iter().step_by(step).collect();
    }
    if prices.is_empty() {
        return Err(RecommendError::InvalidParameter {
            parameter: "price_ending",
            reason: format!(
                "no price between {:.2} and {:.2} ends in {}",
                grid.unitprice_min,
                grid.unitprice_max,
                ending.name()
            ),
        });
    }
    Ok(prices)
}

/// Linear-interpolation quantile of sorted values (numpy's default).
fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        n => {
            let pos = q * (n - 1) as f64;
            let lo = pos.floor() as usize;
            let hi = (lo + 1).min(n - 1);
            sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_match_numpy_linear() {
        // numpy.quantile([1, 2, 3, 4, 10], [0.1, 0.9]) == [1.4, 7.6]
        let v = [1.0, 2.0, 3.0, 4.0, 10.0];
        assert!((quantile_sorted(&v, 0.1) - 1.4).abs() < 1e-12);
        assert!((quantile_sorted(&v, 0.9) - 7.6).abs() < 1e-12);
        assert_eq!(quantile_sorted(&[5.0], 0.9), 5.0);
    }

    /// A model that has gone bad at run time: it predicts NaN.
    struct NanModel(Vec<String>);

    impl Regressor for NanModel {
        fn kind(&self) -> ModelKind {
            ModelKind::Mlp
        }
        fn feature_names(&self) -> &[String] {
            &self.0
        }
        fn hyper_params(&self) -> serde_json::Value {
            serde_json::Value::Null
        }
        fn predict(&self, x: ndarray::ArrayView2<'_, f64>) -> models::Result<ndarray::Array1<f64>> {
            Ok(ndarray::Array1::from_elem(x.nrows(), f64::NAN))
        }
        fn to_files(&self) -> models::Result<models::ModelFiles> {
            Ok(models::ModelFiles::new())
        }
    }

    #[test]
    fn a_model_predicting_nan_fails_over_to_the_next_for_that_request() {
        let dir = tempfile::tempdir().unwrap();
        let data = etl::synth::generate(&etl::synth::SynthConfig {
            n_invoices: 500,
            ..Default::default()
        });
        let raw = dir.path().join("raw.csv");
        std::fs::write(&raw, &data.csv).unwrap();
        let store = lineage::LocalStore::new(dir.path().join("run")).unwrap();
        pipeline::run(&pipeline::PipelineConfig::new(
            raw,
            &store,
            pipeline::smoke_params(),
        ))
        .unwrap();
        let mut rec = Recommender::load(&store).unwrap();
        let request = PriceRequest::new(data.products[0].stock_code.clone()).bins(10);
        let healthy = rec.recommend(&request).unwrap();
        assert_eq!(healthy.model, "mlp");
        assert!(healthy.failovers.is_empty());

        let names = rec.preprocessor.feature_names.clone();
        rec.models.insert(
            0,
            ServingModel {
                kind: ModelKind::Mlp,
                model: Box::new(NanModel(names)),
            },
        );
        let answer = rec.recommend(&request).unwrap();
        assert_eq!(answer.failovers.len(), 1);
        assert_eq!(answer.failovers[0].model, "mlp");
        assert!(
            answer.failovers[0].reason.contains("NaN"),
            "{:?}",
            answer.failovers
        );
        // The next model in the manifest, the real MLP, answered.
        assert_eq!(answer.curve, healthy.curve);

        // Every model bad: an error, never an empty answer.
        let bad: Vec<ServingModel> = (0..2)
            .map(|_| ServingModel {
                kind: ModelKind::Lightgbm,
                model: Box::new(NanModel(rec.preprocessor.feature_names.clone())),
            })
            .collect();
        rec.models = bad;
        assert!(matches!(
            rec.recommend(&request),
            Err(RecommendError::NoModel(_))
        ));
    }

    #[test]
    fn the_current_price_replaces_its_nearest_interior_grid_price() {
        let grid = |n: usize| -> Vec<f64> { (0..n).map(|i| 1.0 + i as f64).collect() };
        for (current, expected) in [
            (3.3, vec![1.0, 2.0, 3.3, 4.0, 5.0]),
            (1.1, vec![1.0, 1.1, 3.0, 4.0, 5.0]),
            (4.9, vec![1.0, 2.0, 3.0, 4.9, 5.0]),
            (3.0, vec![1.0, 2.0, 3.0, 4.0, 5.0]),
            // Outside or on an end: unchanged.
            (0.5, grid(5)),
            (5.0, grid(5)),
            (7.0, grid(5)),
        ] {
            let mut g = grid(5);
            snap_to_current(&mut g, current);
            assert_eq!(g, expected, "current {current}");
        }
        let mut two = grid(2);
        snap_to_current(&mut two, 1.5);
        assert_eq!(two, grid(2));
    }

    #[test]
    fn grid_includes_both_ends() {
        let g = PriceGrid {
            unitprice_min: 1.0,
            unitprice_max: 2.0,
            num_price_bins: 5,
            rule: String::new(),
        };
        assert_eq!(grid_prices(&g), vec![1.0, 1.25, 1.5, 1.75, 2.0]);
    }

    #[test]
    fn grid_prices_are_whole_pence_inside_the_range() {
        // An allowed range of ±10 % around 5.79: 5.211 to 6.369.
        let g = PriceGrid {
            unitprice_min: 5.211,
            unitprice_max: 6.369,
            num_price_bins: 7,
            rule: String::new(),
        };
        let p = grid_prices(&g);
        assert_eq!(p, vec![5.22, 5.4, 5.6, 5.79, 5.98, 6.18, 6.36]);
        // Narrower than the bins in pence: one price per penny.
        let narrow = PriceGrid {
            unitprice_min: 1.0,
            unitprice_max: 1.03,
            num_price_bins: 10,
            rule: String::new(),
        };
        assert_eq!(grid_prices(&narrow), vec![1.0, 1.01, 1.02, 1.03]);
        // Inside one penny: left as it is.
        let tiny = PriceGrid {
            unitprice_min: 1.001,
            unitprice_max: 1.009,
            num_price_bins: 2,
            rule: String::new(),
        };
        assert_eq!(grid_prices(&tiny), vec![1.001, 1.009]);
    }
}
