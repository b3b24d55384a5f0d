//! The recommendation cache: Redis when configured, in-process otherwise.
//!
//! The cache never fails a request: a Redis error or a slow Redis (every call
//! has a short deadline) counts as a miss, is logged (at most every few
//! seconds), and the request is served uncached.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use recommend::Recommendation;
use redis::AsyncCommands;

use crate::ServeError;

/// Which cache a service uses.
#[derive(Debug, Clone, PartialEq)]
pub enum CacheConfig {
    /// No caching.
    Off,
    /// An in-process cache of up to `max_bytes` (estimated size of the
    /// entries, keys included).
    Memory {
        /// Most bytes kept.
        max_bytes: u64,
    },
    /// Redis at `url` (`redis://host:port/db`).
    Redis {
        /// The server.
        url: String,
        /// Deadline of each cache call; past it the request is served uncached.
        timeout: Duration,
    },
}

/// What the cache did for one request (the `x-cache` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CacheStatus {
    /// Served from the cache.
    Hit,
    /// Computed, then stored.
    Miss,
    /// The client asked not to read the cache (`Cache-Control: no-cache`).
    Bypass,
    /// The cache failed or timed out; served uncached.
    Error,
    /// No cache configured.
    Off,
}

impl CacheStatus {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Bypass => "bypass",
            CacheStatus::Error => "error",
            CacheStatus::Off => "off",
        }
    }
}

/// A cache lookup's result.
pub enum Lookup {
    /// Found.
    Hit(Arc<Recommendation>),
    /// Not found.
    Miss,
    /// The cache failed; treat as a miss.
    Failed,
}

enum Backend {
    Off,
    Memory(moka::sync::Cache<String, Arc<Recommendation>>),
    Redis {
        conn: redis::aio::ConnectionManager,
        timeout: Duration,
    },
}

/// The cache of one service: keys are `prefix` + the model set's version +
/// the normalised request, so a new model never reads stale entries.
pub struct Cache {
    backend: Backend,
    prefix: String,
    ttl: Duration,
    last_warning: AtomicU64,
    started: Instant,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("backend", &self.backend_name())
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl Cache {
    /// Opens the cache. Redis connects lazily: a Redis that is down at start
    /// only means misses until it is back.
    pub fn open(config: &CacheConfig, prefix: &str, ttl: Duration) -> Result<Self, ServeError> {
        let backend = match config {
            CacheConfig::Off => Backend::Off,
            CacheConfig::Memory { max_bytes } => Backend::Memory(
                moka::sync::Cache::builder()
                    .weigher(|key: &String, value: &Arc<Recommendation>| {
                        u32::try_from(key.len() + entry_bytes(value)).unwrap_or(u32::MAX)
                    })
                    .max_capacity(*max_bytes)
                    .time_to_live(ttl)
                    .build(),
            ),
            CacheConfig::Redis { url, timeout } => {
                if tokio::runtime::Handle::try_current().is_err() {
                    return Err(ServeError::Config(
                        "the Redis cache runs on tokio: open it from within a tokio runtime (in `spawn_blocking`, say)".into(),
                    ));
                }
                let client = redis::Client::open(url.as_str())
                    .map_err(|e| ServeError::Config(format!("REDIS_URL `{url}`: {e}")))?;
                let cfg = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(*timeout))
                    .set_response_timeout(Some(*timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                let conn = redis::aio::ConnectionManager::new_lazy_with_config(client, cfg)
                    .map_err(|e| ServeError::Config(format!("REDIS_URL `{url}`: {e}")))?;
                Backend::Redis {
                    conn,
                    timeout: *timeout,
                }
            }
        };
        Ok(Self {
            backend,
            prefix: prefix.to_string(),
            ttl,
            last_warning: AtomicU64::new(0),
            started: Instant::now(),
        })
    }

    /// `redis`, `memory` or `off`.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Off => "off",
            Backend::Memory(_) => "memory",
            Backend::Redis { .. } => "redis",
        }
    }

    /// Whether a cache is configured.
    pub fn enabled(&self) -> bool {
        !matches!(self.backend, Backend::Off)
    }

    /// The full key of a request key under a model version.
    pub fn key(&self, version: &str, request_key: &str) -> String {
        format!("{}{version}:{request_key}", self.prefix)
    }

    /// Looks a key up.
    pub async fn get(&self, key: &str) -> Lookup {
        match &self.backend {
            Backend::Off => Lookup::Miss,
            Backend::Memory(c) => c.get(key).map_or(Lookup::Miss, Lookup::Hit),
            Backend::Redis { conn, timeout } => {
                let mut conn = conn.clone();
                let got = tokio::time::timeout(*timeout, conn.get::<_, Option<Vec<u8>>>(key)).await;
                match got {
                    Ok(Ok(Some(bytes))) => match serde_json::from_slice(&bytes) {
                        Ok(rec) => Lookup::Hit(Arc::new(rec)),
                        Err(e) => {
                            self.warn(&format!("unreadable cache entry {key}: {e}"));
                            Lookup::Miss
                        }
                    },
                    Ok(Ok(None)) => Lookup::Miss,
                    Ok(Err(e)) => {
                        self.warn(&format!("redis GET failed: {e}"));
                        Lookup::Failed
                    }
                    Err(_) => {
                        self.warn("redis GET timed out");
                        Lookup::Failed
                    }
                }
            }
        }
    }

    /// Stores a value with the configured TTL; failures are logged only.
    pub async fn put(&self, key: String, value: Arc<Recommendation>) {
        match &self.backend {
            Backend::Off => {}
            Backend::Memory(c) => c.insert(key, value),
            Backend::Redis { conn, timeout } => {
                let bytes = match serde_json::to_vec(value.as_ref()) {
                    Ok(b) => b,
                    Err(e) => {
                        self.warn(&format!("cannot serialise a cache entry: {e}"));
                        return;
                    }
                };
                let mut conn = conn.clone();
                let ttl = self.ttl.as_secs().max(1);
                match tokio::time::timeout(*timeout, conn.set_ex::<_, _, ()>(&key, bytes, ttl))
                    .await
                {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => self.warn(&format!("redis SET failed: {e}")),
                    Err(_) => self.warn("redis SET timed out"),
                }
            }
        }
    }

    /// Removes every key under this service's prefix (Redis: `SCAN MATCH
    /// prefix*` and `UNLINK`, never `FLUSHALL`); returns how many.
    pub async fn clear(&self) -> Result<u64, ServeError> {
        match &self.backend {
            Backend::Off => Ok(0),
            Backend::Memory(c) => {
                c.run_pending_tasks();
                let n = c.entry_count();
                c.invalidate_all();
                Ok(n)
            }
            Backend::Redis { conn, .. } => {
                let mut conn = conn.clone();
                let pattern = format!("{}*", glob_escape(&self.prefix));
                let mut cursor: u64 = 0;
                let mut removed = 0u64;
                loop {
                    let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut conn)
                        .await
                        .map_err(|e| ServeError::Cache(format!("SCAN: {e}")))?;
                    if !keys.is_empty() {
                        let n: u64 = redis::cmd("UNLINK")
                            .arg(&keys)
                            .query_async(&mut conn)
                            .await
                            .map_err(|e| ServeError::Cache(format!("UNLINK: {e}")))?;
                        removed += n;
                    }
                    if next == 0 {
                        return Ok(removed);
                    }
                    cursor = next;
                }
            }
        }
    }

    /// Logs a cache problem, at most once every 5 seconds.
    fn warn(&self, message: &str) {
        let now = self.started.elapsed().as_secs();
        let last = self.last_warning.load(Ordering::Relaxed);
        if (last == 0 || now >= last + 5)
            && self
                .last_warning
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!("cache: {message}; serving uncached");
        }
    }
}

/// Default size of the in-process cache: 256 MiB.
pub const DEFAULT_MEMORY_CACHE_BYTES: u64 = 256 << 20;

/// The heap size of a cached recommendation, estimated from its parts.
fn entry_bytes(rec: &Recommendation) -> usize {
    std::mem::size_of::<Recommendation>()
        + rec.curve.len() * std::mem::size_of::<recommend::PricePoint>()
        + rec.stockcode.len()
        + rec.description.len()
        + rec.grid.rule.len()
        + rec.model.len()
        + rec.model_version.len()
        + rec.release.len()
        + rec
            .failovers
            .iter()
            .map(|f| f.model.len() + f.reason.len() + 48)
            .sum::<usize>()
        + 64 // Arc and map overhead
}

/// Escapes Redis glob metacharacters so a prefix matches only itself.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_cache_is_bounded_in_bytes() {
        let cache = Cache::open(
            &CacheConfig::Memory {
                max_bytes: 64 << 10,
            },
            "t:",
            Duration::from_secs(60),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let rec = Arc::new(Recommendation {
            stockcode: "85123A".into(),
            curve: vec![recommend::PricePoint::default(); 1000],
            model: "mlp".into(),
            release: "r".into(),
            ..Recommendation::default()
        });
        let one = entry_bytes(&rec);
        assert!(one > 40_000, "a 1000-point curve weighs {one} bytes");
        let Backend::Memory(inner) = &cache.backend else {
            panic!("memory backend expected")
        };
        for i in 0..100 {
            inner.insert(format!("k{i}"), rec.clone());
        }
        inner.run_pending_tasks();
        assert!(
            inner.weighted_size() <= 64 << 10,
            "{} bytes held",
            inner.weighted_size()
        );
        assert!(inner.entry_count() <= 2);
    }

    #[test]
    fn glob_metacharacters_are_escaped() {
        assert_eq!(glob_escape("price:v1:"), "price:v1:");
        assert_eq!(glob_escape("a*b?[c]"), "a\\*b\\?\\[c\\]");
    }
}
