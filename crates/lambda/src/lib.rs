//! The AWS Lambda entry point: the [`serve`] router under `lambda_http`, no
//! logic of its own.
//!
//! At cold start, [`app_from_env`] reads the configuration from the
//! function's environment (`PRICE_ARTIFACTS`, `REDIS_URL`, `CACHE_TTL_SECS`,
//! `CACHE_PREFIX`, `CORS_ORIGINS`); artifacts on S3 are copied once to
//! `/tmp` ([`stage_artifacts`]) and served from there. [`lambda_router`] adds
//! one adaptation: API Gateway REST events carry the stage in the request
//! path (`/prod/v1/...`); the router routes on the event's own path instead,
//! so it answers the same with or without
//! `AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH`.
//!
//! Deploy with `cargo lambda build --release -p lambda` (see the README).

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use lambda_http::RequestExt;
use lineage::{ArtifactStore, LocalStore};
use recommend::Recommender;
use serve::{App, CacheConfig, ServeConfig};

/// Errors of the Lambda entry point.
#[derive(Debug, thiserror::Error)]
pub enum LambdaError {
    /// The function's configuration is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// Copying or reading artifacts failed.
    #[error("artifacts: {0}")]
    Store(#[from] lineage::LineageError),
    /// The recommendation library failed to load.
    #[error("{0}")]
    Recommend(#[from] recommend::RecommendError),
    /// The service failed to start.
    #[error("{0}")]
    Serve(#[from] serve::ServeError),
}

/// The serving configuration from the function's environment.
pub fn config_from_env() -> Result<ServeConfig, LambdaError> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let artifacts = var("PRICE_ARTIFACTS").ok_or_else(|| {
        LambdaError::Config("PRICE_ARTIFACTS is not set (a directory or s3://bucket/prefix)".into())
    })?;
    let mut config = ServeConfig::new(artifacts);
    if let Some(url) = var("REDIS_URL") {
        config.cache = CacheConfig::Redis {
            url,
            timeout: Duration::from_millis(50),
        };
    }
    if let Some(ttl) = var("CACHE_TTL_SECS") {
        let secs = ttl.parse::<u64>().map_err(|_| {
            LambdaError::Config(format!("CACHE_TTL_SECS `{ttl}` is not a whole number"))
        })?;
        config.cache_ttl = Duration::from_secs(secs);
    }
    if let Some(prefix) = var("CACHE_PREFIX") {
        config.cache_prefix = prefix;
    }
    if let Some(origins) = var("CORS_ORIGINS") {
        config.cors_origins = origins
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
    }
    Ok(config)
}

/// Copies the production artifacts of `remote` (S3, say) into a directory
/// under `local_root` named by the manifest's content hash, once: a later cold
/// start in the same sandbox, or a second call, finds the copy complete and
/// reads nothing but the manifest. Returns the local directory.
pub fn stage_artifacts(
    remote: &dyn ArtifactStore,
    local_root: &Path,
) -> Result<PathBuf, LambdaError> {
    let manifest = remote.get(&lineage::ArtifactKeys::new(None).manifest)?;
    let hash = lineage::content_hash(&manifest);
    let dir = local_root.join(format!("artifacts-{}", &hash[..16.min(hash.len())]));
    let marker = dir.join(".complete");
    if marker.exists() {
        return Ok(dir);
    }
    let local = LocalStore::new(&dir)?;
    for key in Recommender::artifact_keys(remote)? {
        local.put(&key, &remote.get(&key)?)?;
    }
    lineage::write_atomic(&marker, b"")?;
    Ok(dir)
}

/// Loads the service for this function: S3 artifacts are first staged to
/// `/tmp` (or `$TMPDIR`).
pub fn app_from_env() -> Result<App, LambdaError> {
    let mut config = config_from_env()?;
    if config.artifacts.starts_with("s3://") {
        let remote = lineage::open_store(&config.artifacts)?;
        let dir = stage_artifacts(remote.as_ref(), &std::env::temp_dir())?;
        config.artifacts = dir.to_string_lossy().into_owned();
    }
    Ok(App::load(&config)?)
}

/// The service's router, routing on each event's own path (see the crate docs).
pub fn lambda_router(app: &App) -> Router {
    // A layer on a Router runs after routing; the path must be fixed before,
    // so the rewrite wraps the whole router.
    let rewritten = tower::Layer::layer(
        &axum::middleware::map_request(route_on_event_path),
        app.router(),
    );
    Router::new().fallback_service(rewritten)
}

/// Replaces a stage-prefixed path by the event's raw path, keeping the query.
async fn route_on_event_path(mut request: Request) -> Request {
    let raw = request.raw_http_path();
    if !raw.is_empty() && raw.starts_with('/') && raw != request.uri().path() {
        let path_and_query = match request.uri().query() {
            Some(q) => format!("{raw}?{q}"),
            None => raw.to_string(),
        };
        if let Ok(uri) = path_and_query.parse() {
            *request.uri_mut() = uri;
        }
    }
    request
}
