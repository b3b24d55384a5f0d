//! `serve`: the local price-recommendation server (port 5002, as the original).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use serve::{App, CacheConfig, ServeConfig};

#[derive(Parser, Debug)]
#[command(name = "serve", about = "Price-recommendation HTTP API")]
struct Args {
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
    /// Request deadline in milliseconds.
    #[arg(long, env = "REQUEST_TIMEOUT_MS", default_value_t = 2000)]
    request_timeout_ms: u64,
    /// Log filter (RUST_LOG syntax).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log: String,
}

impl Args {
    fn config(&self) -> ServeConfig {
        let mut c = ServeConfig::new(self.artifacts.clone());
        c.cache = match (&self.redis_url, self.no_cache) {
            (_, true) => CacheConfig::Off,
            (Some(url), false) => CacheConfig::Redis {
                url: url.clone(),
                timeout: Duration::from_millis(self.redis_timeout_ms),
            },
            (None, false) => c.cache,
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
        c
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let started = Instant::now();
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&args.log))
        .with_writer(std::io::stderr)
        .init();
    let config = args.config();
    if args.cache_clear {
        let cache = serve::Cache::open(&config.cache, &config.cache_prefix, config.cache_ttl)?;
        let removed = cache.clear().await.context("clearing the cache")?;
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
            .await?
            .with_context(|| format!("loading artifacts from `{}`", args.artifacts))?
    };
    let addr = format!("{}:{}", args.host, args.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let health = app.recommender().health();
    tracing::info!(
        model = %health.model,
        backups = ?health.backups,
        model_version = %health.model_version,
        cache = app.cache().backend_name(),
        "listening on http://{} (ready in {} ms)",
        listener.local_addr()?,
        started.elapsed().as_millis()
    );
    axum::serve(listener, app.router())
        .with_graceful_shutdown(shutdown())
        .await?;
    Ok(())
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
