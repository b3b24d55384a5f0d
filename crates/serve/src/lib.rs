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
//! - `GET /ping`, `GET /health`.
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

mod cache;
mod limits;
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
use axum::routing::{get, post};
use recommend::{PriceRequest, RecommendError, Recommendation, Recommender};
use serde::Serialize;
use tower_http::cors::{AllowOrigin, CorsLayer};

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
        Ok(Self {
            inner: Arc::new(Inner {
                live: reload::Live::new(recommender),
                source,
                cache: Arc::new(cache),
                config: config.clone(),
                cors,
                admission: Admission::new(config.work),
                flights: SingleFlight::default(),
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
                    ReloadOutcome::PointerUnreadable(e) => {
                        tracing::warn!(error = %e, "could not read the production pointer; still serving the current release");
                    }
                    outcome => tracing::debug!(?outcome, "reload check"),
                }
            }
        })
    }

    /// The HTTP API.
    pub fn router(&self) -> Router {
        let mut router = Router::new()
            .route("/ping", get(ping))
            .route("/health", get(health))
            .route("/v1/predict-price/{stockcode}", get(predict_price_v1))
            .route("/v2/recommendation/{stockcode}", get(recommendation_v2))
            .route("/invocations", post(invocations))
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(DefaultBodyLimit::max(self.inner.config.body_limit))
            .layer(middleware::from_fn_with_state(
                self.inner.config.request_timeout,
                deadline,
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

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameter: Option<&'a str>,
    status: u16,
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
        let body = ErrorBody {
            error: &self.message,
            parameter: self.parameter.as_deref(),
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

async fn ping() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

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
    (
        headers,
        axum::Json(serde_json::json!({
            // Degraded: serving, but production names a release that was refused.
            "status": if refused.is_some() { "degraded" } else { "ok" },
            "release": h.release,
            "model": h.model,
            "backups": h.backups,
            "model_version": h.model_version,
            "skipped_at_load": h.skipped,
            "products": h.products,
            "cache": app.cache().backend_name(),
            "reload": {
                "source": app.inner.source.location(),
                "interval_secs": app.inner.config.reload_interval.as_secs_f64(),
                "last_check_unix": app.inner.live.last_check_unix(),
                "refused": refused,
            },
            "load": {
                "computing": admission.running(),
                "max_concurrent": limits.max_concurrent,
                "max_waiting": limits.max_waiting,
                "computed_total": admission.admitted_count(),
                "shed_total": admission.shed_count(),
                "joined_total": app.inner.flights.joined_count(),
            },
        })),
    )
        .into_response()
}

fn insert(headers: &mut HeaderMap, name: &'static str, value: &str) {
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
#[derive(Serialize)]
struct V2Answer<'a> {
    #[serde(flatten)]
    recommendation: &'a Recommendation,
    cache: CacheStatus,
}

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

/// Fails a request that runs past the deadline with 503 and a JSON error.
async fn deadline(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::deadline(limit).into_response(),
    }
}
