//! The price-recommendation HTTP API: an axum [`Router`] over the
//! [`recommend`] library, with a Redis (or in-process) cache. The local server
//! binary (`cargo run -p serve`) and the Lambda entry point run this same
//! router. The only crate that knows about HTTP.
//!
//! Routes:
//! - `GET /v1/predict-price/{stockcode}?unitprice_min=&unitprice_max=&num_price_bins=&country=&customerid=`:
//!   the original API's rows `{stockcode, unit_price, quantity, quantity_min,
//!   quantity_max, predicted_sales, optimal_unit_price, max_predicted_sales}`.
//! - `GET /v2/recommendation/{stockcode}?...`: the optimal price, the curve,
//!   the grid rule, the model that served, its version, failovers and the
//!   cache status.
//! - `POST /invocations`: the original's SageMaker-style entry (JSON body with
//!   `stockcode` and the query parameters), answering as `/v1`.
//! - `GET /ping`, `GET /health`, `GET /metrics` (Prometheus).
//! - `GET /v2/products?q=&sort=&order=&edge=&page=&per_page=` and
//!   `GET /v2/products.csv`: every product ranked by expected uplift, and
//!   search by code or description words ([`catalogue`]).
//! - `GET /v2/products/{stockcode}/history`: weekly price and quantity.
//! - `GET /v2/release`, `GET /v2/release/gate-report[.json]`: the release
//!   serving and its gate report.
//! - `GET /`: the pricing console, a page over these routes
//!   ([`console`]); `GET /openapi.json` and `GET /docs`: the API's OpenAPI
//!   description, generated from the handlers ([`openapi`]).
//! - `POST /admin/reload`, `POST /admin/cache/clear`: need an admin key.
//!
//! Access control is optional ([`auth`]): with API keys configured every
//! route but `/ping` needs one. Every request is logged on one line and
//! counted in `/metrics` ([`observe`]), and carries an `x-request-id`.
//!
//! Every answer carries `x-model`, `x-model-version`, `x-release` and
//! `x-cache` (`hit|miss|bypass|error|off`); a request that failed over says
//! which models failed in `x-failover`. Errors are JSON `{"error",
//! "parameter"?, "status"}` with a 4xx/5xx status, never an empty 200.
//!
//! The service serves the release the production pointer names and follows
//! the pointer ([`App::spawn_reloader`]): a new release is loaded beside the
//! old one and swapped in without dropping a request; one that fails to load
//! is refused and `/health` says so. Uncached work is bounded
//! ([`WorkLimits`]): past the limit a request gets 503 with `Retry-After`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let config = serve::ServeConfig::new("run");
//! let app = serve::App::load(&config)?;
//! app.spawn_reloader(Default::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:5002").await?;
//! serve::serve(listener, app.router(), serve::ServerLimits::default(), std::future::pending()).await?;
//! # Ok(()) }
//! ```

pub mod auth;
mod cache;
pub mod catalogue;
pub mod cli;
pub mod console;
mod limits;
pub mod observe;
mod reload;
mod server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use recommend::{LegacyRow, PriceRequest, RecommendError, Recommendation, Recommender};
use serde::{Deserialize, Serialize};
use tower_http::cors::{AllowOrigin, CorsLayer};
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

pub use auth::AuthConfig;
pub use cache::{Cache, CacheConfig, CacheStatus, DEFAULT_MEMORY_CACHE_BYTES, Lookup};
pub use limits::{Admission, Overloaded, SingleFlight, WorkLimits};
pub use reload::{
    DEFAULT_RELOAD_INTERVAL, RefusedRelease, ReleaseSource, ReloadOutcome, StoreSource,
};
pub use server::{ServerLimits, serve};

/// Errors of the serving library.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// The production artifacts could not be loaded.
    #[error("loading artifacts")]
    Load(#[from] RecommendError),
    /// The artifact store failed.
    #[error("artifact store")]
    Store(#[from] lineage::LineageError),
    /// A cache maintenance command failed.
    #[error("cache: {0}")]
    Cache(String),
    /// The listening address could not be bound.
    #[error("binding {address}")]
    Bind {
        /// The address.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// Reading standard input, or serving connections, failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The service's configuration.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Where the production artifacts are: a directory or `s3://bucket/prefix`.
    pub artifacts: String,
    /// The cache.
    pub cache: CacheConfig,
    /// Lifetime of a cache entry (default 1 h, as in the original).
    pub cache_ttl: Duration,
    /// Prefix of this service's cache keys.
    pub cache_prefix: String,
    /// Origins allowed by CORS (none: no CORS headers). Each must be an
    /// origin (`https://shop.example`); `*` is refused.
    pub cors_origins: Vec<String>,
    /// Deadline of a request; past it the client gets 503 and its work stops.
    pub request_timeout: Duration,
    /// Largest accepted request body.
    pub body_limit: usize,
    /// Limits on uncached work (load shedding).
    pub work: WorkLimits,
    /// API keys (none: access control is off).
    pub auth: AuthConfig,
    /// How often the production pointer is checked for a new release.
    pub reload_interval: Duration,
}

impl ServeConfig {
    /// Defaults: in-process cache of 256 MiB, 1 h TTL, 2 s deadline, 16 KiB
    /// bodies, as many concurrent computations as CPUs, pointer checked
    /// every 30 s.
    pub fn new(artifacts: impl Into<String>) -> Self {
        Self {
            artifacts: artifacts.into(),
            cache: CacheConfig::Memory {
                max_bytes: DEFAULT_MEMORY_CACHE_BYTES,
            },
            cache_ttl: Duration::from_secs(3600),
            cache_prefix: "price-api:".into(),
            cors_origins: Vec::new(),
            request_timeout: Duration::from_secs(2),
            body_limit: 16 * 1024,
            work: WorkLimits::default(),
            auth: AuthConfig::default(),
            reload_interval: DEFAULT_RELOAD_INTERVAL,
        }
    }

    /// The CORS layer for `cors_origins`, or a configuration error naming
    /// the bad origin.
    fn cors_layer(&self) -> Result<Option<CorsLayer>, ServeError> {
        if self.cors_origins.is_empty() {
            return Ok(None);
        }
        let mut origins = Vec::new();
        for origin in &self.cors_origins {
            origins.push(cors_origin(origin)?);
        }
        Ok(Some(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(origins))
                .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
                .allow_headers([header::CONTENT_TYPE, header::CACHE_CONTROL])
                .expose_headers([
                    HeaderName::from_static("x-model"),
                    HeaderName::from_static("x-model-version"),
                    HeaderName::from_static("x-release"),
                    HeaderName::from_static("x-cache"),
                    HeaderName::from_static("x-failover"),
                ]),
        ))
    }

    /// Checks every setting; errors say which and why.
    pub fn validate(&self) -> Result<(), ServeError> {
        self.cors_layer()?;
        if self.request_timeout.is_zero() {
            return Err(ServeError::Config(
                "REQUEST_TIMEOUT_MS must be positive".into(),
            ));
        }
        if self.work.max_concurrent == 0 {
            return Err(ServeError::Config(
                "MAX_CONCURRENT_COMPUTATIONS must be positive".into(),
            ));
        }
        if self.reload_interval.is_zero() {
            return Err(ServeError::Config(
                "RELOAD_INTERVAL_SECS must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// One CORS origin, checked: `scheme://host[:port]`, nothing else.
fn cors_origin(origin: &str) -> Result<HeaderValue, ServeError> {
    let bad = |why: &str| {
        ServeError::Config(format!(
            "CORS_ORIGINS: `{origin}` {why} (give comma-separated origins such as https://pricing.example.com)"
        ))
    };
    if origin.trim() == "*" {
        return Err(bad(
            "would let any web page read prices and margins; list the origins that may",
        ));
    }
    let url = url::Url::parse(origin.trim()).map_err(|e| bad(&format!("is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(bad("is not an http(s) origin"));
    }
    let canonical = url.origin().ascii_serialization();
    if canonical != origin.trim().trim_end_matches('/') {
        return Err(bad(&format!(
            "is not an origin (no path, query or credentials); did you mean {canonical}?"
        )));
    }
    HeaderValue::from_str(&canonical).map_err(|e| bad(&e.to_string()))
}

type Flight = Result<Arc<Recommendation>, ApiError>;

struct Inner {
    live: reload::Live,
    source: Arc<dyn ReleaseSource>,
    cache: Arc<Cache>,
    config: ServeConfig,
    cors: Option<CorsLayer>,
    admission: Admission,
    flights: SingleFlight<Flight>,
    metrics: observe::Metrics,
    auth: AuthConfig,
    ranking: catalogue::RankingSlot,
}

/// A loaded service: the release being served, the cache, and the limits.
/// Cheap to clone.
#[derive(Clone)]
pub struct App {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("release", &self.inner.live.current().release())
            .field("source", &self.inner.source.location())
            .finish()
    }
}

impl App {
    /// Loads the release production points at in `config.artifacts` and
    /// opens the cache. Blocking; call it off the async threads.
    pub fn load(config: &ServeConfig) -> Result<Self, ServeError> {
        config.validate()?;
        let store = lineage::open_store(&config.artifacts)?;
        Self::from_source(config, Arc::new(StoreSource::new(store)))
    }

    /// Loads the release production points at from `source`. Blocking.
    pub fn from_source(
        config: &ServeConfig,
        source: Arc<dyn ReleaseSource>,
    ) -> Result<Self, ServeError> {
        config.validate()?;
        let pointer = source
            .pointer()?
            .ok_or_else(|| RecommendError::NoProduction(source.location()))?;
        let recommender = source.load(&pointer)?;
        Self::with_recommender(config, recommender, source)
    }

    /// A service over an already loaded recommender, reloading from `source`.
    pub fn with_recommender(
        config: &ServeConfig,
        recommender: Recommender,
        source: Arc<dyn ReleaseSource>,
    ) -> Result<Self, ServeError> {
        let cors = config.cors_layer()?;
        let cache = Cache::open(&config.cache, &config.cache_prefix, config.cache_ttl)?;
        let metrics = observe::Metrics::new()
            .map_err(|e| ServeError::Config(format!("registering metrics: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                live: reload::Live::new(recommender),
                source,
                cache: Arc::new(cache),
                config: config.clone(),
                cors,
                admission: Admission::new(config.work),
                flights: SingleFlight::default(),
                metrics,
                auth: config.auth.clone(),
                ranking: catalogue::RankingSlot::default(),
            }),
        })
    }

    /// The recommender serving now.
    pub fn recommender(&self) -> Arc<Recommender> {
        self.inner.live.current()
    }

    /// The cache.
    pub fn cache(&self) -> &Cache {
        &self.inner.cache
    }

    /// The admission gate (for metrics and tests).
    pub fn admission(&self) -> &Admission {
        &self.inner.admission
    }

    /// Checks the production pointer now and swaps to a new release if it
    /// moved; a release that fails to load is refused (reported by
    /// `/health`) and the current one keeps serving.
    pub async fn reload(&self) -> ReloadOutcome {
        self.inner.live.reload(&self.inner.source).await
    }

    /// Checks the pointer every `reload_interval`, and whenever `wake` is
    /// notified (the binary notifies it on SIGHUP).
    pub fn spawn_reloader(&self, wake: Arc<tokio::sync::Notify>) -> tokio::task::JoinHandle<()> {
        let app = self.clone();
        self.warm_ranking();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(app.inner.config.reload_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await; // the first tick is immediate: the release just loaded
            loop {
                tokio::select! {
                    _ = tick.tick() => {},
                    () = wake.notified() => {},
                }
                match app.reload().await {
                    ReloadOutcome::Swapped(_) => app.warm_ranking(),
                    ReloadOutcome::PointerUnreadable(e) => {
                        tracing::warn!(error = %e, "could not read the production pointer; still serving the current release");
                    }
                    outcome => tracing::debug!(?outcome, "reload check"),
                }
            }
        })
    }

    /// The HTTP API: the documented routes ([`openapi`]), then request
    /// logs and metrics outermost, access control, body limit and 404/405
    /// as JSON.
    pub fn router(&self) -> Router {
        let (routes, _) = api_routes().split_for_parts();
        let mut router = routes
            .route_layer(middleware::from_fn(observe::tag_route))
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(DefaultBodyLimit::max(self.inner.config.body_limit))
            .layer(middleware::from_fn_with_state(
                self.clone(),
                console::authorize,
            ))
            .layer(middleware::from_fn_with_state(
                self.clone(),
                observe::observe,
            ))
            .with_state(self.clone());
        if let Some(cors) = &self.inner.cors {
            router = router.layer(cors.clone());
        }
        router
    }

    /// A recommendation through the cache. `bypass` skips the cache read (the
    /// answer is still stored). Uncached work is admitted under the
    /// [`WorkLimits`] (else 503 with `Retry-After`), computed once for
    /// identical concurrent requests, and stopped at the request deadline.
    pub async fn recommend(
        &self,
        request: PriceRequest,
        bypass: bool,
    ) -> Result<(Arc<Recommendation>, CacheStatus), ApiError> {
        let deadline = Instant::now() + self.inner.config.request_timeout;
        let recommender = self.inner.live.current();
        let request = recommender.canonical(request)?;
        if !recommender.knows(&request.stockcode) {
            return Err(RecommendError::UnknownProduct(request.stockcode).into());
        }
        let cache = &self.inner.cache;
        let key = cache.key(recommender.cache_version(), &request.cache_key());
        let status = if !cache.enabled() {
            CacheStatus::Off
        } else if bypass {
            CacheStatus::Bypass
        } else {
            match cache.get(&key).await {
                Lookup::Hit(rec) => return Ok((rec, CacheStatus::Hit)),
                Lookup::Miss => CacheStatus::Miss,
                Lookup::Failed => CacheStatus::Error,
            }
        };
        let inner = &self.inner;
        let rec = inner
            .flights
            .run(&key, || async {
                let permit = inner.admission.admit().await.map_err(|Overloaded| {
                    ApiError::overloaded(inner.config.work.retry_after_secs)
                })?;
                let computing = recommender.clone();
                let rec = tokio::task::spawn_blocking(move || {
                    // The slot is held by the computation, not the request:
                    // abandoned work counts until it stops at its deadline.
                    let _permit = permit;
                    computing.recommend_until(&request, Some(deadline))
                })
                .await
                .map_err(|e| ApiError::internal(format!("recommendation task failed: {e}")))?
                .map_err(|e| match e {
                    RecommendError::DeadlineExceeded => {
                        ApiError::deadline(inner.config.request_timeout)
                    }
                    e => e.into(),
                })?;
                let rec = Arc::new(rec);
                if cache.enabled() {
                    let cache = inner.cache.clone();
                    let value = rec.clone();
                    let key = key.clone();
                    // Stored in the background: the answer does not wait on Redis.
                    tokio::spawn(async move { cache.put(key, value).await });
                }
                Ok(rec)
            })
            .await?;
        Ok((rec, status))
    }
}

/// A JSON error answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Message.
    pub message: String,
    /// The offending parameter, if one.
    pub parameter: Option<String>,
    /// Seconds after which a retry may succeed (`Retry-After`), for 503s.
    pub retry_after: Option<u64>,
}

/// The body of every error answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiErrorBody {
    /// What went wrong, for a person.
    pub error: String,
    /// The request parameter at fault, if one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameter: Option<String>,
    /// The HTTP status, repeated.
    pub status: u16,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            parameter: None,
            retry_after: None,
        }
    }

    fn with_parameter(status: StatusCode, message: impl Into<String>, parameter: &str) -> Self {
        Self {
            parameter: Some(parameter.to_string()),
            ..Self::new(status, message)
        }
    }

    fn deadline(limit: Duration) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the request took longer than {} ms", limit.as_millis()),
        )
    }

    fn overloaded(retry_after_secs: u64) -> Self {
        Self {
            retry_after: Some(retry_after_secs),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the service is at its limit of uncached computations; retry shortly",
            )
        }
    }

    fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl From<RecommendError> for ApiError {
    fn from(e: RecommendError) -> Self {
        match &e {
            RecommendError::InvalidParameter { parameter, .. } => {
                Self::with_parameter(StatusCode::BAD_REQUEST, e.to_string(), parameter)
            }
            RecommendError::UnknownProduct(_) => {
                Self::with_parameter(StatusCode::NOT_FOUND, e.to_string(), "stockcode")
            }
            RecommendError::NoModel(_) | RecommendError::DeadlineExceeded => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            _ => Self::internal(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // Shed requests are expected under load and counted in /health;
        // a missed deadline is a load symptom; other 5xx are faults.
        match (self.status, self.retry_after) {
            (StatusCode::SERVICE_UNAVAILABLE, Some(_)) => {
                tracing::debug!(status = %self.status, "{}", self.message);
            }
            (StatusCode::SERVICE_UNAVAILABLE, None) => {
                tracing::warn!(status = %self.status, "{}", self.message);
            }
            (status, _) if status.is_server_error() => {
                tracing::error!(status = %self.status, "{}", self.message);
            }
            _ => {}
        }
        let body = ApiErrorBody {
            error: self.message,
            parameter: self.parameter,
            status: self.status.as_u16(),
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// `/ping`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Ping {
    /// `ok`.
    pub status: String,
}

/// Liveness: answers without touching the models (never needs a key).
#[utoipa::path(get, path = "/ping", tag = "service",
    responses((status = 200, description = "The process is up", body = Ping)))]
async fn ping() -> impl IntoResponse {
    axum::Json(Ping {
        status: "ok".into(),
    })
}

/// Release reloading, as `/health` reports it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReloadState {
    /// Where the production pointer is read.
    pub source: String,
    /// Seconds between checks.
    pub interval_secs: f64,
    /// Last check, seconds since the Unix epoch.
    pub last_check_unix: u64,
    /// A release production names that failed to load, if any.
    pub refused: Option<RefusedRelease>,
}

/// Uncached work, as `/health` reports it.
#[derive(Debug, Serialize, ToSchema)]
pub struct LoadState {
    /// Computing now.
    pub computing: usize,
    /// Most computations at once.
    pub max_concurrent: usize,
    /// Most requests waiting for a slot.
    pub max_waiting: usize,
    /// Computed since start.
    pub computed_total: u64,
    /// Refused with 503 since start.
    pub shed_total: u64,
    /// Joined an identical computation in flight since start.
    pub joined_total: u64,
}

/// `/health`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthAnswer {
    /// `ok`, or `degraded` when production names a release that was refused.
    pub status: String,
    /// The release serving.
    pub release: String,
    /// The model answering first.
    pub model: String,
    /// Its backups, in failover order.
    pub backups: Vec<String>,
    /// The model set's version.
    pub model_version: String,
    /// Models of the release that failed their checks at load.
    #[schema(value_type = Vec<Object>)]
    pub skipped_at_load: Vec<recommend::SkippedModel>,
    /// Products it can price.
    pub products: usize,
    /// The cache backend.
    pub cache: String,
    /// Release reloading.
    pub reload: ReloadState,
    /// Uncached work.
    pub load: LoadState,
}

/// Readiness: the release, its models, the cache, reloads and load.
#[utoipa::path(get, path = "/health", tag = "service",
    responses(
        (status = 200, description = "Serving", body = HealthAnswer),
        (status = 401, description = "An API key is required", body = ApiErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []), ()))]
async fn health(State(app): State<App>) -> Response {
    let recommender = app.recommender();
    let h = recommender.health();
    let refused = app.inner.live.refused();
    let mut headers = HeaderMap::new();
    insert(&mut headers, "x-model", &h.model);
    insert(&mut headers, "x-model-version", &h.model_version);
    insert(&mut headers, "x-release", &h.release);
    let admission = app.admission();
    let limits = admission.limits();
    let answer = HealthAnswer {
        // Degraded: serving, but production names a release that was refused.
        status: if refused.is_some() { "degraded" } else { "ok" }.into(),
        release: h.release,
        model: h.model,
        backups: h.backups,
        model_version: h.model_version,
        skipped_at_load: h.skipped,
        products: h.products,
        cache: app.cache().backend_name().into(),
        reload: ReloadState {
            source: app.inner.source.location(),
            interval_secs: app.inner.config.reload_interval.as_secs_f64(),
            last_check_unix: app.inner.live.last_check_unix(),
            refused,
        },
        load: LoadState {
            computing: admission.running(),
            max_concurrent: limits.max_concurrent,
            max_waiting: limits.max_waiting,
            computed_total: admission.admitted_count(),
            shed_total: admission.shed_count(),
            joined_total: app.inner.flights.joined_count(),
        },
    };
    (headers, axum::Json(answer)).into_response()
}

pub(crate) fn insert(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), v);
    }
}

fn answer_headers(rec: &Recommendation, status: CacheStatus) -> HeaderMap {
    let mut headers = HeaderMap::new();
    insert(&mut headers, "x-model", &rec.model);
    insert(&mut headers, "x-model-version", &rec.model_version);
    insert(&mut headers, "x-release", &rec.release);
    insert(&mut headers, "x-cache", status.as_str());
    if !rec.failovers.is_empty() {
        let failed: Vec<&str> = rec.failovers.iter().map(|f| f.model.as_str()).collect();
        insert(&mut headers, "x-failover", &failed.join(","));
    }
    headers
}

fn wants_bypass(headers: &HeaderMap) -> bool {
    headers
        .get(header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|d| d.trim().eq_ignore_ascii_case("no-cache"))
        })
}

fn parse_request(
    stockcode: Result<Path<String>, PathRejection>,
    query: Option<&str>,
) -> Result<PriceRequest, ApiError> {
    let Path(stockcode) = stockcode.map_err(|e| {
        ApiError::with_parameter(
            StatusCode::BAD_REQUEST,
            format!("invalid path: {}", e.body_text()),
            "stockcode",
        )
    })?;
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    Ok(PriceRequest::from_pairs(
        &stockcode,
        pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    )?)
}

/// The query of the pricing routes (`PriceRequest::from_pairs` parses it;
/// this type documents it).
#[derive(Debug, Deserialize, IntoParams, ToSchema)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // read by the OpenAPI derives, not by the handlers
pub struct PricingQuery {
    /// Lowest price of the grid (default: the product's observed range, or
    /// the current price minus `max_change`).
    unitprice_min: Option<f64>,
    /// Highest price of the grid.
    unitprice_max: Option<f64>,
    /// Grid points (2..=1000, default 100), each a whole penny inside the
    /// range (fewer when the range is narrower than that many pence).
    num_price_bins: Option<usize>,
    /// Price for buyers in this country (as spelled in the data, any case).
    country: Option<String>,
    /// Price for this customer's context.
    customerid: Option<String>,
    /// What to maximise (default revenue).
    objective: Option<recommend::Objective>,
    /// `line` (units per order line, the original's) or `week` (units per week).
    basis: Option<recommend::Basis>,
    /// Unit cost (profit objective; default: the product's cost from the costs input).
    unit_cost: Option<f64>,
    /// Largest change from the current price, as a share (0.1 = ±10 %).
    max_change: Option<f64>,
    /// Allowed price endings.
    price_ending: Option<recommend::PriceEnding>,
    /// Lowest margin (price − cost) / price allowed.
    min_margin: Option<f64>,
    /// The price charged now, from the shop's catalogue (default: the list
    /// price of the product's latest sales lines); the uplift, the "keep the
    /// price" candidate and `max_change` are relative to it.
    current_price: Option<f64>,
}

/// The body of `POST /invocations`: the stock code and the pricing query's
/// parameters.
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)] // read by the OpenAPI derive, not by the handler
pub struct InvocationBody {
    /// Stock code.
    stockcode: String,
    /// The parameters of the pricing routes' query.
    #[serde(flatten)]
    query: PricingQuery,
}

/// The original API: one row per grid price, each with the optimum.
#[utoipa::path(get, path = "/v1/predict-price/{stockcode}", tag = "pricing",
    params(("stockcode" = String, Path, description = "Stock code"), PricingQuery),
    responses(
        (status = 200, description = "The curve, one row per grid price", body = Vec<LegacyRow>,
            headers(("x-model" = String), ("x-release" = String), ("x-cache" = String))),
        (status = 400, description = "A parameter is invalid (`parameter` names it)", body = ApiErrorBody),
        (status = 401, description = "An API key is required", body = ApiErrorBody),
        (status = 404, description = "Unknown product", body = ApiErrorBody),
        (status = 503, description = "Overloaded (with Retry-After), past the deadline, or no model", body = ApiErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []), ("cookie" = []), ()))]
async fn predict_price_v1(
    State(app): State<App>,
    stockcode: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let request = parse_request(stockcode, query.as_deref())?;
    let (rec, status) = app.recommend(request, wants_bypass(&headers)).await?;
    Ok((answer_headers(&rec, status), axum::Json(rec.legacy_rows())).into_response())
}

/// The `/v2` answer: the recommendation plus the cache status.
#[derive(Serialize, ToSchema)]
pub struct V2Answer<'a> {
    /// The recommendation.
    #[serde(flatten)]
    #[schema(inline = false)]
    recommendation: &'a Recommendation,
    /// What the cache did.
    cache: CacheStatus,
}

/// The recommended price with its curve, band, uplift, elasticity, bounds,
/// and the model and release that answered.
#[utoipa::path(get, path = "/v2/recommendation/{stockcode}", tag = "pricing",
    params(("stockcode" = String, Path, description = "Stock code"), PricingQuery),
    responses(
        (status = 200, description = "The recommendation", body = V2Answer,
            headers(("x-model" = String), ("x-release" = String), ("x-cache" = String))),
        (status = 400, description = "A parameter is invalid (`parameter` names it)", body = ApiErrorBody),
        (status = 401, description = "An API key is required", body = ApiErrorBody),
        (status = 404, description = "Unknown product", body = ApiErrorBody),
        (status = 503, description = "Overloaded (with Retry-After), past the deadline, or no model", body = ApiErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []), ("cookie" = []), ()))]
async fn recommendation_v2(
    State(app): State<App>,
    stockcode: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let request = parse_request(stockcode, query.as_deref())?;
    let (rec, status) = app.recommend(request, wants_bypass(&headers)).await?;
    Ok((
        answer_headers(&rec, status),
        axum::Json(V2Answer {
            recommendation: &rec,
            cache: status,
        }),
    )
        .into_response())
}

/// The original's SageMaker-style entry: answers as `/v1`.
#[utoipa::path(post, path = "/invocations", tag = "pricing",
    request_body = InvocationBody,
    responses(
        (status = 200, description = "As /v1", body = Vec<LegacyRow>),
        (status = 400, description = "The body or a parameter is invalid", body = ApiErrorBody),
        (status = 401, description = "An API key is required", body = ApiErrorBody),
        (status = 404, description = "Unknown product", body = ApiErrorBody),
        (status = 413, description = "The body is too large", body = ApiErrorBody),
        (status = 503, description = "Overloaded, past the deadline, or no model", body = ApiErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []), ()))]
async fn invocations(
    State(app): State<App>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| ApiError::with_parameter(e.status(), e.body_text(), "body"))?;
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::with_parameter(
            StatusCode::BAD_REQUEST,
            format!("the body is not valid JSON: {e}"),
            "body",
        )
    })?;
    let request = PriceRequest::from_json(&value)?;
    let (rec, status) = app.recommend(request, wants_bypass(&headers)).await?;
    Ok((answer_headers(&rec, status), axum::Json(rec.legacy_rows())).into_response())
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route for `{}`", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on `{}`", uri.path()),
    )
}

/// The request deadline, put on each request by [`observe::observe`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline(pub Duration);

/// Fails a pricing request that runs past the deadline with 503 and a JSON
/// error.
async fn deadline(request: Request, next: Next) -> Response {
    let Some(Deadline(limit)) = request.extensions().get::<Deadline>().copied() else {
        return next.run(request).await;
    };
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::deadline(limit).into_response(),
    }
}

/// The API's OpenAPI description: the routes below, each documented on its
/// handler, so a route cannot be served without being described.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Price recommendation API",
        description = "Recommends the price that maximises expected revenue or profit for each product, with the demand curve, its uncertainty band and the model and release that answered. Errors are JSON `{error, parameter?, status}`."
    ),
    components(schemas(ApiErrorBody, Recommendation)),
    modifiers(&SecurityAddon),
    tags(
        (name = "pricing", description = "Recommendations"),
        (name = "catalogue", description = "Products, history, the release"),
        (name = "console", description = "The pricing console"),
        (name = "service", description = "Health, metrics, this description"),
        (name = "admin", description = "State changes (admin key)"),
    )
)]
struct ApiDoc;

struct SecurityAddon;

impl utoipa::Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-api-key"))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(auth::COOKIE))),
        );
    }
}

/// Every route, with its documentation.
fn api_routes() -> OpenApiRouter<App> {
    let priced = OpenApiRouter::new()
        .routes(routes!(predict_price_v1))
        .routes(routes!(recommendation_v2))
        .routes(routes!(invocations))
        .route_layer(middleware::from_fn(deadline));
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(priced)
        .routes(routes!(ping))
        .routes(routes!(health))
        .routes(routes!(console::metrics))
        .routes(routes!(catalogue::products))
        .routes(routes!(catalogue::products_csv))
        .routes(routes!(catalogue::history))
        .routes(routes!(catalogue::release))
        .routes(routes!(catalogue::gate_report_html))
        .routes(routes!(catalogue::gate_report_json))
        .routes(routes!(console::index))
        .routes(routes!(console::asset))
        .routes(routes!(console::login_form, console::login))
        .routes(routes!(console::logout))
        .routes(routes!(console::openapi_json))
        .routes(routes!(console::docs))
        .routes(routes!(console::admin_reload))
        .routes(routes!(console::admin_cache_clear))
}

/// The OpenAPI description of [`App::router`] (what `/openapi.json` serves).
pub fn openapi() -> &'static str {
    static SPEC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SPEC.get_or_init(|| {
        let (_, mut doc) = api_routes().split_for_parts();
        doc.info.version = env!("CARGO_PKG_VERSION").into();
        doc.to_pretty_json().unwrap_or_else(|e| {
            tracing::error!(error = %e, "serialising the OpenAPI description");
            String::from("{}")
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented query (`PricingQuery`, and through it the
    /// `/invocations` body) names exactly the parameters the parser takes.
    #[test]
    fn the_documented_query_is_the_parsed_one() {
        use utoipa::IntoParams;
        let mut documented: Vec<String> = PricingQuery::into_params(|| None)
            .into_iter()
            .map(|p| p.name)
            .collect();
        documented.sort();
        let mut parsed: Vec<String> = recommend::QUERY_PARAMETERS
            .iter()
            .map(|p| p.to_string())
            .collect();
        parsed.sort();
        assert_eq!(documented, parsed);
    }
}
