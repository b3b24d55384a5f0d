//! The AWS Lambda entry point: the [`serve`] router under `lambda_http`, no
//! logic of its own.
//!
//! At cold start, [`app_from_env`] reads the configuration from the
//! function's environment (`PRICE_ARTIFACTS`, `REDIS_URL`, `CACHE_TTL_SECS`,
//! `CACHE_PREFIX`, `CORS_ORIGINS`, `RELOAD_INTERVAL_SECS`, `PRICE_API_KEYS`,
//! `PRICE_API_KEYS_FILE`); the release the
//! production pointer names on S3 is copied once to `/tmp/release-<id>`
//! ([`stage_release`]) and served from there. [`lambda_router`] adds
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
use std::sync::Arc;

use lineage::{ArtifactStore, LocalStore, Pointer, Releases};
use recommend::Recommender;
use serve::{App, CacheConfig, ReleaseSource, ServeConfig};

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
    if let Some(secs) = var("RELOAD_INTERVAL_SECS") {
        let secs = secs
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0)
            .ok_or_else(|| {
                LambdaError::Config(format!(
                    "RELOAD_INTERVAL_SECS `{secs}` is not a positive number"
                ))
            })?;
        config.reload_interval = Duration::from_secs_f64(secs);
    }
    config.auth = serve::AuthConfig::load(
        var("PRICE_API_KEYS_FILE").as_deref().map(Path::new),
        var("PRICE_API_KEYS").as_deref(),
    )?;
    config.validate()?;
    Ok(config)
}

/// Copies the release `pointer` names from `remote` (S3, say) into
/// `local_root/release-<id>/`, once: a local store holding that release and
/// the pointer, checked file by file against the pointer's hashes. A later
/// cold start in the same sandbox, or a reload to the same release, finds the
/// copy complete. Staging directories of other releases are removed (`/tmp`
/// is small). Returns the local directory.
pub fn stage_release(
    remote: &dyn ArtifactStore,
    pointer: &Pointer,
    local_root: &Path,
) -> lineage::Result<PathBuf> {
    let dir = local_root.join(format!("release-{}", pointer.release));
    let marker = dir.join(".complete");
    if !marker.exists() {
        let local = LocalStore::new(&dir)?;
        let release = Releases::new(remote, None).open(pointer);
        for key in pointer.files.keys() {
            local.put(&Releases::key_in(&pointer.release, key), &release.get(key)?)?;
        }
        let bytes = serde_json::to_vec_pretty(pointer).map_err(|e| {
            lineage::LineageError::Config(format!("cannot serialise the pointer: {e}"))
        })?;
        local.put(&Releases::new(&local, None).pointer_key(), &bytes)?;
        lineage::write_atomic(&marker, b"")?;
    }
    if let Ok(entries) = std::fs::read_dir(local_root) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("release-") && entry.path() != dir {
                match std::fs::remove_dir_all(entry.path()) {
                    Ok(()) => {
                        tracing::info!(dir = %name, "removed an older release's staging directory")
                    }
                    Err(e) => {
                        tracing::warn!(dir = %name, error = %e, "could not remove an older staging directory")
                    }
                }
            }
        }
    }
    Ok(dir)
}

/// Releases read from a remote store and staged to local disk before loading.
pub struct StagedSource {
    remote: Box<dyn ArtifactStore>,
    local_root: PathBuf,
}

impl StagedSource {
    /// Stages releases of `remote` under `local_root`.
    pub fn new(remote: Box<dyn ArtifactStore>, local_root: PathBuf) -> Self {
        Self { remote, local_root }
    }
}

impl ReleaseSource for StagedSource {
    fn location(&self) -> String {
        self.remote.location()
    }
    fn pointer(&self) -> lineage::Result<Option<Pointer>> {
        Releases::new(self.remote.as_ref(), None).production()
    }
    fn load(&self, pointer: &Pointer) -> Result<Recommender, recommend::RecommendError> {
        let dir = stage_release(self.remote.as_ref(), pointer, &self.local_root)?;
        Recommender::load_release(&LocalStore::new(dir)?, pointer)
    }
}

/// Loads the service for this function: releases on S3 are staged to `/tmp`
/// (or `$TMPDIR`) first. The service follows the production pointer like the
/// local server (checked every `RELOAD_INTERVAL_SECS`, 30 by default, while
/// the function runs).
pub fn app_from_env() -> Result<App, LambdaError> {
    let config = config_from_env()?;
    if config.artifacts.starts_with("s3://") {
        let remote = lineage::open_store(&config.artifacts)?;
        let source = StagedSource::new(remote, std::env::temp_dir());
        Ok(App::from_source(&config, Arc::new(source))?)
    } else {
        Ok(App::load(&config)?)
    }
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
