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
//!    `unitprice_min` and `unitprice_max`. Defaults: the 5th and 95th
//!    percentiles of the product's observed prices (robust to the data's
//!    one-off mispricings); a product sold at a single price gets ±20 % around
//!    it.
//! 3. **Prediction.** The model predicts ln(1 + quantity) for every
//!    (price, context) pair; quantities are `exp(ŷ) − 1` in units, clipped at 0.
//!    At each price, `quantity` is the mean over contexts and
//!    `quantity_min`/`quantity_max` are its 10th/90th percentiles.
//! 4. **Decision.** `predicted_sales = price × quantity`; the optimal price is
//!    the grid price with the largest predicted sales (the lowest such price
//!    on ties).
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
use models::{Manifest, ModelKind, Regressor, SkippedModel};
use serde::{Deserialize, Serialize};

pub use request::{DEFAULT_PRICE_BINS, MAX_PRICE_BINS, MIN_PRICE_BINS, PriceRequest};

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
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PricePoint {
    /// Candidate unit price (GBP).
    pub unit_price: f64,
    /// Predicted quantity per sales line: mean over the contexts.
    pub quantity: f64,
    /// 10th percentile of the predicted quantity over the contexts.
    pub quantity_min: f64,
    /// 90th percentile of the predicted quantity over the contexts.
    pub quantity_max: f64,
    /// `unit_price × quantity`.
    pub predicted_sales: f64,
}

/// A model that failed for one request, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failover {
    /// The model that failed.
    pub model: String,
    /// What went wrong.
    pub reason: String,
}

/// How the price grid was chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// The answer to one [`PriceRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    /// Product.
    pub stockcode: String,
    /// Its most frequent description.
    pub description: String,
    /// The sales-maximising grid price.
    pub optimal_unit_price: f64,
    /// Predicted sales at that price.
    pub max_predicted_sales: f64,
    /// Predicted quantity at that price.
    pub optimal_quantity: f64,
    /// The price curve, by increasing price.
    pub curve: Vec<PricePoint>,
    /// The grid and its rule.
    pub grid: PriceGrid,
    /// How many of the product's recent sales rows were used as contexts.
    pub contexts: usize,
    /// The model that answered.
    pub model: String,
    /// The production model set's version (from the manifest).
    pub model_version: String,
    /// The release that answered.
    pub release: String,
    /// Models that failed for this request before `model` answered.
    pub failovers: Vec<Failover>,
}

/// One row of the original API's `/predict-price` answer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LegacyRow<'a> {
    /// Product.
    pub stockcode: &'a str,
    /// Candidate price.
    pub unit_price: f64,
    /// Predicted quantity (mean over contexts).
    pub quantity: f64,
    /// 10th percentile over contexts.
    pub quantity_min: f64,
    /// 90th percentile over contexts.
    pub quantity_max: f64,
    /// `unit_price × quantity`.
    pub predicted_sales: f64,
    /// The sales-maximising price (same on every row).
    pub optimal_unit_price: f64,
    /// Predicted sales at the optimum (same on every row).
    pub max_predicted_sales: f64,
}

impl Recommendation {
    /// The first number of the answer that is not finite, if any (a 200
    /// answer carries only finite numbers).
    pub fn first_non_finite(&self) -> Option<&'static str> {
        let top = [
            ("optimal_unit_price", self.optimal_unit_price),
            ("max_predicted_sales", self.max_predicted_sales),
            ("optimal_quantity", self.optimal_quantity),
            ("grid.unitprice_min", self.grid.unitprice_min),
            ("grid.unitprice_max", self.grid.unitprice_max),
        ];
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

/// Model rows per prediction chunk: a request's working set is one chunk's
/// matrix, and its deadline is checked between chunks.
pub const ROWS_PER_CHUNK: usize = 2048;

/// Why one model could not answer a request.
enum Failure {
    /// The deadline passed: no other model is tried.
    Deadline,
    /// The model failed: the next one is tried.
    Model(String),
}

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
    /// [`RecommendError::DeadlineExceeded`] once `deadline` passes. The work
    /// is done in chunks of about [`ROWS_PER_CHUNK`] model rows and the
    /// deadline is checked between chunks, so abandoned work stops promptly
    /// and a request never holds more than one chunk's matrix.
    pub fn recommend_until(
        &self,
        request: &PriceRequest,
        deadline: Option<Instant>,
    ) -> Result<Recommendation> {
        request.validate()?;
        let product = self
            .summary
            .get(&request.stockcode)
            .ok_or_else(|| RecommendError::UnknownProduct(request.stockcode.clone()))?;
        let grid = request.grid(product)?;
        let contexts = self.contexts_for(request)?;
        let prices = grid_prices(&grid);
        let reference = PriceRef {
            max: product.ref_price_max,
            mean: product.ref_price_mean,
            median: product.ref_price_median,
        };

        let mut failovers = Vec::new();
        for serving in &self.models {
            let answer = self
                .predict_grid(serving, request, &prices, &contexts, &reference, deadline)
                .and_then(|log_quantity| {
                    let rec = self.decide(
                        request,
                        product,
                        grid.clone(),
                        &prices,
                        contexts.len(),
                        &log_quantity,
                        serving.kind,
                        failovers.clone(),
                    );
                    match rec.first_non_finite() {
                        None => Ok(rec),
                        Some(field) => Err(Failure::Model(format!(
                            "its answer has a non-finite {field}"
                        ))),
                    }
                });
            let reason = match answer {
                Ok(rec) => return Ok(rec),
                Err(Failure::Deadline) => return Err(RecommendError::DeadlineExceeded),
                Err(Failure::Model(reason)) => reason,
            };
            tracing::warn!(model = serving.kind.name(), %reason, stockcode = %request.stockcode, "model failed for a request; failing over");
            failovers.push(Failover {
                model: serving.kind.name().into(),
                reason,
            });
        }
        Err(RecommendError::NoModel(
            failovers
                .iter()
                .map(|f| format!("{}: {}", f.model, f.reason))
                .collect::<Vec<_>>()
                .join("; "),
        ))
    }

    /// ln(1 + quantity) for every (price, context) pair, price-major, chunk
    /// by chunk.
    fn predict_grid(
        &self,
        serving: &ServingModel,
        request: &PriceRequest,
        prices: &[f64],
        contexts: &[(&str, FeatureRow<'static>)],
        reference: &PriceRef,
        deadline: Option<Instant>,
    ) -> Result<Vec<f64>, Failure> {
        let per_chunk = (ROWS_PER_CHUNK / contexts.len().max(1)).max(1);
        let mut out = Vec::with_capacity(prices.len() * contexts.len());
        let mut rows: Vec<FeatureRow<'_>> = Vec::with_capacity(per_chunk * contexts.len());
        for chunk in prices.chunks(per_chunk) {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Failure::Deadline);
            }
            rows.clear();
            for &price in chunk {
                let (rel_max, rel_mean, rel_median, squared, log1p) =
                    features::price_features(price, reference);
                rows.extend(contexts.iter().map(|(country, ctx)| FeatureRow {
                    stock_code: &request.stockcode,
                    country,
                    unit_price: price,
                    price_rel_max: rel_max,
                    price_rel_mean: rel_mean,
                    price_rel_median: rel_median,
                    price_squared: squared,
                    log1p_price: log1p,
                    ..*ctx
                }));
            }
            let x = self.preprocessor.transform(&rows);
            let pred = serving
                .model
                .predict(x.view())
                .map_err(|e| Failure::Model(e.to_string()))?;
            if let Some(bad) = pred.iter().find(|v| !v.is_finite()) {
                return Err(Failure::Model(format!("predicted {bad}")));
            }
            out.extend(pred.iter());
        }
        Ok(out)
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

    #[allow(clippy::too_many_arguments)]
    fn decide(
        &self,
        request: &PriceRequest,
        product: &features::SummaryRow,
        grid: PriceGrid,
        prices: &[f64],
        n_contexts: usize,
        log_quantity: &[f64],
        kind: ModelKind,
        failovers: Vec<Failover>,
    ) -> Recommendation {
        let mut curve = Vec::with_capacity(prices.len());
        let mut quantities = vec![0.0; n_contexts];
        for (i, &price) in prices.iter().enumerate() {
            let chunk = &log_quantity[i * n_contexts..(i + 1) * n_contexts];
            for (q, y) in quantities.iter_mut().zip(chunk) {
                *q = y.exp_m1().max(0.0);
            }
            let mean = quantities.iter().sum::<f64>() / n_contexts as f64;
            quantities.sort_by(f64::total_cmp);
            curve.push(PricePoint {
                unit_price: price,
                quantity: mean,
                quantity_min: quantile_sorted(&quantities, 0.10),
                quantity_max: quantile_sorted(&quantities, 0.90),
                predicted_sales: price * mean,
            });
        }
        let best = curve
            .iter()
            .copied()
            .reduce(|best, p| {
                if p.predicted_sales > best.predicted_sales {
                    p
                } else {
                    best
                }
            })
            .unwrap_or(PricePoint {
                unit_price: f64::NAN,
                quantity: f64::NAN,
                quantity_min: f64::NAN,
                quantity_max: f64::NAN,
                predicted_sales: f64::NAN,
            });
        Recommendation {
            stockcode: request.stockcode.clone(),
            description: product.description.clone(),
            optimal_unit_price: best.unit_price,
            max_predicted_sales: best.predicted_sales,
            optimal_quantity: best.quantity,
            curve,
            grid,
            contexts: n_contexts,
            model: kind.name().into(),
            model_version: self.manifest.model_version.clone(),
            release: self.release.clone(),
            failovers,
        }
    }
}

/// `n` evenly spaced prices from min to max, both included.
fn grid_prices(grid: &PriceGrid) -> Vec<f64> {
    let n = grid.num_price_bins;
    let step = (grid.unitprice_max - grid.unitprice_min) / (n - 1) as f64;
    (0..n)
        .map(|i| {
            if i + 1 == n {
                grid.unitprice_max
            } else {
                grid.unitprice_min + step * i as f64
            }
        })
        .collect()
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
    fn grid_includes_both_ends() {
        let g = PriceGrid {
            unitprice_min: 1.0,
            unitprice_max: 2.0,
            num_price_bins: 5,
            rule: String::new(),
        };
        assert_eq!(grid_prices(&g), vec![1.0, 1.25, 1.5, 1.75, 2.0]);
    }
}
