//! The local server's command line: `serve` (the binary) and
//! `cargo xtask serve` both run [`run`] with these [`Args`], so the
//! README's main command builds one binary with one feature set.

use std::time::{Duration, Instant};

use crate::{App, CacheConfig, ServeConfig, ServeError, ServerLimits, WorkLimits};

/// The server's options; each also reads an environment variable.
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "serve",
    about = "Price-recommendation HTTP API and pricing console"
)]
pub struct Args {
    /// Production artifacts: a `cargo xtask pipeline --out` directory or s3://bucket/prefix.
    #[arg(long, env = "PRICE_ARTIFACTS", default_value = "run")]
    artifacts: String,
    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on.
    #[arg(long, env = "PORT", default_value_t = 5002)]
    port: u16,
    /// Redis cache (`redis://127.0.0.1:6379/`); an in-process cache when unset.
    #[arg(long, env = "REDIS_URL")]
    redis_url: Option<String>,
    /// Deadline of each Redis call in milliseconds; past it the request is served uncached.
    #[arg(long, env = "REDIS_TIMEOUT_MS", default_value_t = 50)]
    redis_timeout_ms: u64,
    /// Disable caching.
    #[arg(long)]
    no_cache: bool,
    /// Lifetime of cache entries in seconds.
    #[arg(long, env = "CACHE_TTL_SECS", default_value_t = 3600)]
    cache_ttl_secs: u64,
    /// Prefix of this service's cache keys.
    #[arg(long, env = "CACHE_PREFIX", default_value = "price-api:")]
    cache_prefix: String,
    /// Remove this service's cache keys (by prefix) and exit.
    #[arg(long)]
    cache_clear: bool,
    /// Comma-separated origins allowed by CORS.
    #[arg(long, env = "CORS_ORIGINS", value_delimiter = ',')]
    cors_origins: Vec<String>,
    /// Size of the in-process cache in MiB (when Redis is not used).
    #[arg(long, env = "CACHE_MAX_MB", default_value_t = 256)]
    cache_max_mb: u64,
    /// Request deadline in milliseconds; uncached work stops when it passes.
    #[arg(long, env = "REQUEST_TIMEOUT_MS", default_value_t = 2000)]
    request_timeout_ms: u64,
    /// Uncached recommendations computed at once (default: the CPU count).
    #[arg(long, env = "MAX_CONCURRENT_COMPUTATIONS")]
    max_concurrent: Option<usize>,
    /// Requests that may wait for a computation slot; beyond them, 503 with Retry-After
    /// (default: 4 x the slots).
    #[arg(long, env = "MAX_WAITING_REQUESTS")]
    max_waiting: Option<usize>,
    /// Seconds between checks of the production pointer (also checked on SIGHUP).
    #[arg(long, env = "RELOAD_INTERVAL_SECS", default_value_t = 30.0)]
    reload_interval_secs: f64,
    /// Close a connection that has not sent its request headers within this many milliseconds.
    #[arg(long, env = "HEADER_READ_TIMEOUT_MS", default_value_t = 5000)]
    header_read_timeout_ms: u64,
    /// Most connections open at once (more wait in the kernel backlog).
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 1024)]
    max_connections: usize,
    /// API keys file (TOML, `[[keys]] name, sha256, role, revoked`): with keys,
    /// every route but /ping needs one.
    #[arg(long, env = "PRICE_API_KEYS_FILE")]
    api_keys: Option<std::path::PathBuf>,
    /// API keys as `name:role:sha256,...` (added to the file's).
    #[arg(long, env = "PRICE_API_KEYS", hide_env_values = true)]
    api_keys_list: Option<String>,
    /// Print the API's OpenAPI description (what /openapi.json serves) and exit.
    #[arg(long)]
    openapi: bool,
    /// Print the SHA-256 of the key read from standard input (for the keys file) and exit.
    #[arg(long)]
    hash_api_key: bool,
    /// Log format: `text` or `json` (one JSON object per line).
    #[arg(long, env = "LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Log filter (RUST_LOG syntax).
    #[arg(long = "log-filter", env = "RUST_LOG", default_value = "info")]
    log_filter: String,
}

impl Args {
    /// The service configuration these options describe.
    pub fn config(&self) -> Result<ServeConfig, ServeError> {
        let mut c = ServeConfig::new(self.artifacts.clone());
        c.cache = match (&self.redis_url, self.no_cache) {
            (_, true) => CacheConfig::Off,
            (Some(url), false) => CacheConfig::Redis {
                url: url.clone(),
                timeout: Duration::from_millis(self.redis_timeout_ms),
            },
            (None, false) => CacheConfig::Memory {
                max_bytes: self.cache_max_mb.saturating_mul(1 << 20),
            },
        };
        c.cache_ttl = Duration::from_secs(self.cache_ttl_secs);
        c.cache_prefix = self.cache_prefix.clone();
        c.cors_origins = self
            .cors_origins
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        c.request_timeout = Duration::from_millis(self.request_timeout_ms);
        let defaults = WorkLimits::default();
        let max_concurrent = self.max_concurrent.unwrap_or(defaults.max_concurrent);
        c.work = WorkLimits {
            max_concurrent,
            max_waiting: self.max_waiting.unwrap_or(4 * max_concurrent),
            ..defaults
        };
        if !(self.reload_interval_secs.is_finite() && self.reload_interval_secs > 0.0) {
            return Err(ServeError::Config(format!(
                "RELOAD_INTERVAL_SECS must be a positive number of seconds, found {}",
                self.reload_interval_secs
            )));
        }
        c.reload_interval = Duration::from_secs_f64(self.reload_interval_secs);
        c.auth = crate::AuthConfig::load(self.api_keys.as_deref(), self.api_keys_list.as_deref())?;
        c.validate()?;
        Ok(c)
    }

    /// The connection limits these options describe.
    pub fn server_limits(&self) -> ServerLimits {
        ServerLimits {
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms.max(1)),
            max_connections: self.max_connections.max(1),
            ..ServerLimits::default()
        }
    }
}

/// Runs the server (or `--openapi`, `--hash-api-key`, `--cache-clear`) until
/// SIGINT/SIGTERM. Installs the log subscriber unless one is installed.
pub async fn run(args: Args) -> Result<(), ServeError> {
    let started = Instant::now();
    if args.openapi {
        println!("{}", crate::openapi());
        return Ok(());
    }
    if args.hash_api_key {
        let mut key = String::new();
        std::io::stdin().read_line(&mut key)?;
        println!(
            "{}",
            crate::auth::hash_key(key.trim_end_matches(['\r', '\n']))
        );
        return Ok(());
    }
    let logs = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&args.log_filter))
        .with_writer(std::io::stderr);
    // A caller (a test, another binary) may have installed its own.
    let _ = if args.log_format == "json" {
        logs.json().flatten_event(true).try_init()
    } else {
        logs.try_init()
    };
    let config = args.config()?;
    if args.cache_clear {
        let cache = crate::Cache::open(&config.cache, &config.cache_prefix, config.cache_ttl)?;
        let removed = cache.clear().await?;
        println!(
            "removed {removed} {} cache entries under `{}`",
            cache.backend_name(),
            config.cache_prefix
        );
        return Ok(());
    }
    let app = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || App::load(&config))
            .await
            .map_err(|e| ServeError::Config(format!("loading artifacts: {e}")))??
    };
    let addr = format!("{}:{}", args.host, args.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| ServeError::Bind {
            address: addr.clone(),
            source,
        })?;
    let health = app.recommender().health();
    let wake = std::sync::Arc::new(tokio::sync::Notify::new());
    app.spawn_reloader(wake.clone());
    spawn_sighup(wake);
    tracing::info!(
        release = %health.release,
        model = %health.model,
        backups = ?health.backups,
        model_version = %health.model_version,
        cache = app.cache().backend_name(),
        access_control = config.auth.enabled(),
        "listening on http://{0} (pricing console: http://{0}/, API docs: http://{0}/docs; ready in {1} ms)",
        listener.local_addr()?,
        started.elapsed().as_millis()
    );
    println!(
        "serving release {} on http://{}/ (the pricing console; API docs at /docs)",
        health.release,
        listener.local_addr()?
    );
    crate::serve(listener, app.router(), args.server_limits(), shutdown()).await?;
    Ok(())
}

/// SIGHUP: check the production pointer now.
fn spawn_sighup(wake: std::sync::Arc<tokio::sync::Notify>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => {
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        tracing::info!("SIGHUP: checking the production pointer");
                        wake.notify_one();
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "cannot listen for SIGHUP"),
        }
    }
    #[cfg(not(unix))]
    drop(wake);
}

async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
