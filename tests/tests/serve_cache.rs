//! The Redis cache against a real redis-server on loopback: hits, keys scoped
//! by prefix and release, `clear` removing only this service's keys, and no
//! slow request when Redis stalls. (Redis killed under load is a case of the
//! fault-injection suite, `xtask/tests/faults.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use axum::http::StatusCode;
use serve::{App, CacheConfig, ServeConfig};
use testkit::{RedisServer, call, get, serving_fixture};

fn redis_app(redis: &RedisServer, prefix: &str) -> App {
    let mut config = ServeConfig::new(serving_fixture().dir.to_string_lossy());
    config.cache = CacheConfig::Redis {
        url: redis.url.clone(),
        timeout: Duration::from_millis(50),
    };
    config.cache_prefix = prefix.into();
    App::load(&config).unwrap()
}

fn product() -> String {
    serving_fixture().data().products[0].stock_code.clone()
}

async fn cache_status(router: &axum::Router, uri: &str) -> (StatusCode, String) {
    let (status, headers, body) = call(router, get(uri)).await;
    let cache = headers
        .get("x-cache")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_else(|| format!("no x-cache header: {body}"));
    (status, cache)
}

/// Waits for the background cache write of `uri`.
async fn until_hit(router: &axum::Router, uri: &str) {
    for _ in 0..100 {
        if cache_status(router, uri).await.1 == "hit" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{uri} never became a cache hit");
}

#[tokio::test]
async fn redis_serves_hits_under_the_model_version_and_clear_removes_only_our_keys() {
    let redis = RedisServer::start().unwrap();
    let app = redis_app(&redis, "price-test:");
    let router = app.router();
    let uri = format!("/v1/predict-price/{}?num_price_bins=7", product());
    assert_eq!(
        cache_status(&router, &uri).await,
        (StatusCode::OK, "miss".into())
    );
    until_hit(&router, &uri).await;

    // The key names the model set's version and the normalised request.
    let keys = redis.command("KEYS price-test:*").unwrap();
    assert!(keys.starts_with("*1"), "one key expected, got {keys}");
    let version = app.recommender().cache_version().to_string();
    let key = format!(
        "price-test:{version}:{}",
        recommend::PriceRequest::new(product()).bins(7).cache_key()
    );
    assert_eq!(redis.command(&format!("EXISTS {key}")).unwrap(), ":1\r\n");
    let ttl: i64 = redis
        .command(&format!("TTL {key}"))
        .unwrap()
        .trim()
        .trim_start_matches(':')
        .parse()
        .unwrap();
    assert!((3500..=3600).contains(&ttl), "TTL {ttl}");

    // Another service's keys survive a clear.
    redis.command("SET other-service:key 1").unwrap();
    assert_eq!(app.cache().clear().await.unwrap(), 1);
    assert_eq!(redis.command("EXISTS other-service:key").unwrap(), ":1\r\n");
    assert_eq!(redis.command(&format!("EXISTS {key}")).unwrap(), ":0\r\n");
    assert_eq!(cache_status(&router, &uri).await.1, "miss");
}

#[tokio::test]
async fn a_stalled_redis_costs_at_most_its_timeout() {
    let redis = RedisServer::start().unwrap();
    let app = redis_app(&redis, "price-stall:");
    let router = app.router();
    let uri = format!("/v1/predict-price/{}?num_price_bins=5", product());
    assert_eq!(cache_status(&router, &uri).await.1, "miss");
    until_hit(&router, &uri).await;
    // Redis blocks for 1.5 s; the request must not wait for it.
    let port = redis.port;
    let sleeper = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"DEBUG SLEEP 1.5\r\n").unwrap();
        let mut buf = [0u8; 16];
        let _ = s.read(&mut buf);
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let (status, cache) = cache_status(&router, &uri).await;
    let elapsed = started.elapsed();
    assert_eq!((status, cache.as_str()), (StatusCode::OK, "error"));
    assert!(elapsed < Duration::from_millis(1000), "took {elapsed:?}");
    sleeper.join().unwrap();
}
