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
//! Every answer carries `x-model`, `x-model-version` and `x-cache`
//! (`hit|miss|bypass|error|off`); a request that failed over says which
//! models failed in `x-failover`. Errors are JSON `{"error", "parameter"?}`
//! with a 4xx/5xx status, never an empty 200.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let config = serve::ServeConfig::new("run");
//! let app = serve::App::load(&config)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:5002").await?;
//! axum::serve(listener, app.router()).await?;
//! # Ok(()) }
//! ```

mod cache;

use std::sync::Arc;
use std::time::Duration;

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

pub use cache::{Cache, CacheConfig, CacheStatus, Lookup};

/// Errors of the serving library.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// The production artifacts could not be loaded.
    #[error("loading artifacts: {0}")]
    Load(#[from] RecommendError),
    /// The artifact store failed.
    #[error("artifact store: {0}")]
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
    /// Origins allowed by CORS (none: no CORS headers).
    pub cors_origins: Vec<String>,
    /// Deadline of a request; past it the client gets 503.
    pub request_timeout: Duration,
    /// Largest accepted request body.
    pub body_limit: usize,
}

impl ServeConfig {
    /// Defaults: in-process cache, 1 h TTL, 2 s deadline, 16 KiB bodies.
    pub fn new(artifacts: impl Into<String>) -> Self {
        Self {
            artifacts: artifacts.into(),
            cache: CacheConfig::Memory { capacity: 100_000 },
            cache_ttl: Duration::from_secs(3600),
            cache_prefix: "price-api:".into(),
            cors_origins: Vec::new(),
            request_timeout: Duration::from_secs(2),
            body_limit: 16 * 1024,
        }
    }
}

/// A loaded service: the recommender and its cache.
#[derive(Clone, Debug)]
pub struct App {
    recommender: Arc<Recommender>,
    cache: Arc<Cache>,
    config: Arc<ServeConfig>,
}

impl App {
    /// Loads the artifacts named by the configuration and opens the cache.
    pub fn load(config: &ServeConfig) -> Result<Self, ServeError> {
        let store = lineage::open_store(&config.artifacts)?;
        let recommender = Recommender::load(store.as_ref())?;
        Self::with_recommender(config, recommender)
    }

    /// A service over an already loaded recommender.
    pub fn with_recommender(
        config: &ServeConfig,
        recommender: Recommender,
    ) -> Result<Self, ServeError> {
        let cache = Cache::open(&config.cache, &config.cache_prefix, config.cache_ttl)?;
        Ok(Self {
            recommender: Arc::new(recommender),
            cache: Arc::new(cache),
            config: Arc::new(config.clone()),
        })
    }

    /// The recommender.
    pub fn recommender(&self) -> &Recommender {
        &self.recommender
    }

    /// The cache.
    pub fn cache(&self) -> &Cache {
        &self.cache
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
            .layer(DefaultBodyLimit::max(self.config.body_limit))
            .layer(middleware::from_fn_with_state(
                self.config.request_timeout,
                deadline,
            ))
            .with_state(self.clone());
        if !self.config.cors_origins.is_empty() {
            let origins: Vec<HeaderValue> = self
                .config
                .cors_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect();
            router = router.layer(
                CorsLayer::new()
                    .allow_origin(AllowOrigin::list(origins))
                    .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
                    .allow_headers([header::CONTENT_TYPE, header::CACHE_CONTROL])
                    .expose_headers([
                        HeaderName::from_static("x-model"),
                        HeaderName::from_static("x-model-version"),
                        HeaderName::from_static("x-cache"),
                        HeaderName::from_static("x-failover"),
                    ]),
            );
        }
        router
    }

    /// A recommendation through the cache. `bypass` skips the cache read (the
    /// answer is still stored).
    pub async fn recommend(
        &self,
        request: PriceRequest,
        bypass: bool,
    ) -> Result<(Arc<Recommendation>, CacheStatus), ApiError> {
        if !self.recommender.knows(&request.stockcode) {
            return Err(RecommendError::UnknownProduct(request.stockcode).into());
        }
        let key = self
            .cache
            .key(self.recommender.cache_version(), &request.cache_key());
        let status = if !self.cache.enabled() {
            CacheStatus::Off
        } else if bypass {
            CacheStatus::Bypass
        } else {
            match self.cache.get(&key).await {
                Lookup::Hit(rec) => return Ok((rec, CacheStatus::Hit)),
                Lookup::Miss => CacheStatus::Miss,
                Lookup::Failed => CacheStatus::Error,
            }
        };
        let recommender = self.recommender.clone();
        let rec = tokio::task::spawn_blocking(move || recommender.recommend(&request))
            .await
            .map_err(|e| ApiError::internal(format!("recommendation task failed: {e}")))??;
        let rec = Arc::new(rec);
        if self.cache.enabled() {
            let cache = self.cache.clone();
            let value = rec.clone();
            // Stored in the background: the answer does not wait on Redis.
            tokio::spawn(async move { cache.put(key, value).await });
        }
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
        }
    }

    fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl From<RecommendError> for ApiError {
    fn from(e: RecommendError) -> Self {
        match &e {
            RecommendError::InvalidParameter { parameter, .. } => Self {
                status: StatusCode::BAD_REQUEST,
                message: e.to_string(),
                parameter: Some(parameter.to_string()),
            },
            RecommendError::UnknownProduct(_) => Self {
                status: StatusCode::NOT_FOUND,
                message: e.to_string(),
                parameter: Some("stockcode".into()),
            },
            RecommendError::NoModel(_) => Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            _ => Self::internal(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, "{}", self.message);
        }
        let body = ErrorBody {
            error: &self.message,
            parameter: self.parameter.as_deref(),
            status: self.status.as_u16(),
        };
        (self.status, axum::Json(body)).into_response()
    }
}

async fn ping() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

async fn health(State(app): State<App>) -> Response {
    let h = app.recommender.health();
    let mut headers = HeaderMap::new();
    insert(&mut headers, "x-model", &h.model);
    insert(&mut headers, "x-model-version", &h.model_version);
    (
        headers,
        axum::Json(serde_json::json!({
            "status": "ok",
            "model": h.model,
            "backups": h.backups,
            "model_version": h.model_version,
            "skipped_at_load": h.skipped,
            "products": h.products,
            "cache": app.cache.backend_name(),
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
    let Path(stockcode) = stockcode.map_err(|e| ApiError {
        status: StatusCode::BAD_REQUEST,
        message: format!("invalid path: {}", e.body_text()),
        parameter: Some("stockcode".into()),
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
    let body = body.map_err(|e| ApiError {
        status: e.status(),
        message: e.body_text(),
        parameter: Some("body".into()),
    })?;
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| ApiError {
        status: StatusCode::BAD_REQUEST,
        message: format!("the body is not valid JSON: {e}"),
        parameter: Some("body".into()),
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
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the request took longer than {} ms", limit.as_millis()),
        )
        .into_response(),
    }
}
