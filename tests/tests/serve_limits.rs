//! Bounded work per request: load shedding with `Retry-After`, work that
//! stops at its deadline, identical concurrent misses computed once, a cache
//! key space that varied spellings cannot blow up, release ids everywhere,
//! and finite numbers in every answer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serve::{App, CacheConfig, ServeConfig, WorkLimits};
use testkit::{call, get, serving_fixture};

fn config() -> ServeConfig {
    ServeConfig::new(serving_fixture().dir.to_string_lossy())
}

fn product() -> String {
    serving_fixture().scenario.top_product()
}

/// A request of 1000 distinct prices (candidates are whole pence, so the
/// range must span at least 1000 of them).
const HEAVY: &str = "num_price_bins=1000&unitprice_min=0.5&unitprice_max=60";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excess_uncached_work_is_shed_with_retry_after_and_ping_stays_fast() {
    let mut c = config();
    c.cache = CacheConfig::Off;
    c.work = WorkLimits {
        max_concurrent: 1,
        max_waiting: 1,
        retry_after_secs: 2,
    };
    c.request_timeout = Duration::from_secs(20);
    let app = App::load(&c).unwrap();
    let router = app.router();
    let code = product();
    let mut flood = Vec::new();
    for i in 0..24 {
        let router = router.clone();
        let uri = format!("/v1/predict-price/{code}?num_price_bins={}", 900 + i);
        flood.push(tokio::spawn(async move {
            let (status, headers, body) = call(&router, get(&uri)).await;
            (status, headers.get("retry-after").cloned(), body)
        }));
    }
    // The flood does not starve cheap routes.
    let started = Instant::now();
    let (status, _, _) = call(&router, get("/ping")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    let (mut ok, mut shed) = (0, 0);
    for f in flood {
        let (status, retry_after, body) = f.await.unwrap();
        match status {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                shed += 1;
                assert_eq!(retry_after.unwrap(), "2");
                assert_eq!(body["status"], 503);
                assert!(body["error"].as_str().unwrap().contains("retry"), "{body}");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(ok >= 2, "{ok} answered");
    assert!(shed >= 10, "{shed} shed");
    let (_, _, health) = call(&router, get("/health")).await;
    assert_eq!(health["load"]["shed_total"], shed);
    assert_eq!(health["load"]["computed_total"], ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_stops_when_its_deadline_passes() {
    let mut c = config();
    c.cache = CacheConfig::Off;
    c.request_timeout = Duration::from_millis(25);
    let app = App::load(&c).unwrap();
    let router = app.router();
    let started = Instant::now();
    let (status, _, body) = call(
        &router,
        get(&format!("/v1/predict-price/{}?{HEAVY}", product())),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["error"].as_str().unwrap().contains("25 ms"), "{body}");
    assert!(started.elapsed() < Duration::from_millis(500));
    // The computation itself gives up: its slot is free soon after.
    let freed = Instant::now();
    while app.admission().running() > 0 {
        assert!(
            freed.elapsed() < Duration::from_secs(2),
            "the work kept running"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The library says the same without HTTP.
    let err = app
        .recommender()
        .recommend_until(
            &recommend::PriceRequest::new(product()).bins(1000),
            Some(Instant::now()),
        )
        .unwrap_err();
    assert!(
        matches!(err, recommend::RecommendError::DeadlineExceeded),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_concurrent_misses_are_computed_once() {
    let mut c = config();
    c.cache = CacheConfig::Off;
    c.request_timeout = Duration::from_secs(20);
    let app = App::load(&c).unwrap();
    let router = app.router();
    let uri = format!("/v1/predict-price/{}?{HEAVY}", product());
    let mut calls = Vec::new();
    for _ in 0..10 {
        let (router, uri) = (router.clone(), uri.clone());
        calls.push(tokio::spawn(async move { call(&router, get(&uri)).await }));
    }
    let mut bodies = Vec::new();
    for c in calls {
        let (status, _, body) = c.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        bodies.push(body);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));
    let (_, _, health) = call(&router, get("/health")).await;
    let computed = health["load"]["computed_total"].as_u64().unwrap();
    let joined = health["load"]["joined_total"].as_u64().unwrap();
    assert_eq!(computed + joined, 10, "{health}");
    assert!(computed < 10, "nothing was shared: {health}");
}

#[tokio::test]
async fn country_spellings_share_a_cache_entry_and_unknown_countries_are_rejected() {
    let app = App::load(&config()).unwrap();
    let router = app.router();
    let code = product();
    let (status, headers, first) = call(
        &router,
        get(&format!(
            "/v2/recommendation/{code}?num_price_bins=11&country=FRANCE"
        )),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(headers["x-cache"], "miss");
    let mut hit = None;
    for _ in 0..100 {
        let (_, headers, body) = call(
            &router,
            get(&format!(
                "/v2/recommendation/{code}?num_price_bins=11&country=france"
            )),
        )
        .await;
        if headers["x-cache"] == "hit" {
            hit = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let hit = hit.expect("`france` never hit the entry of `FRANCE`");
    assert_eq!(hit["curve"], first["curve"]);
    let (status, _, body) = call(
        &router,
        get(&format!("/v1/predict-price/{code}?country=Atlantis")),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["parameter"], "country");
    assert!(body["error"].as_str().unwrap().contains("France"), "{body}");
}

#[tokio::test]
async fn answers_name_their_release_and_carry_only_finite_numbers() {
    let app = App::load(&config()).unwrap();
    let router = app.router();
    let release = app.recommender().release().to_string();
    assert_eq!(release.len(), 16);
    let (status, headers, body) = call(
        &router,
        get(&format!(
            "/v2/recommendation/{}?num_price_bins=50",
            product()
        )),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-release"], release.as_str());
    assert_eq!(body["release"], release.as_str());
    // A NaN serialises as null, so null is allowed only where a value may
    // be absent: no unit cost known, no bound active, no grid edge.
    const OPTIONAL: [&str; 5] = [
        "weekly_profit",
        "unit_cost",
        "unit_cost_source",
        "active_bound",
        "at_grid_edge",
    ];
    fn all_finite(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::Null => false,
            serde_json::Value::Number(n) => n.as_f64().is_some_and(f64::is_finite),
            serde_json::Value::Array(a) => a.iter().all(all_finite),
            serde_json::Value::Object(o) => o.iter().all(|(k, v)| {
                k == "failovers" || (v.is_null() && OPTIONAL.contains(&k.as_str())) || all_finite(v)
            }),
            _ => true,
        }
    }
    assert!(all_finite(&body), "{body}");
    let (_, headers, health) = call(&router, get("/health")).await;
    assert_eq!(headers["x-release"], release.as_str());
    assert_eq!(health["release"], release.as_str());
    assert_eq!(health["status"], "ok");
}

/// Serves the fixture's app with these limits until the sender is dropped.
async fn spawn_server(
    limits: serve::ServerLimits,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let app = App::load(&config()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve::serve(listener, app.router(), limits, async {
        let _ = stopped.await;
    }));
    (addr, stop, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off_and_connections_are_bounded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A client that starts its headers and never finishes them is closed.
    let (addr, stop, server) = spawn_server(serve::ServerLimits {
        header_read_timeout: Duration::from_millis(300),
        max_connections: 16,
        shutdown_grace: Duration::from_secs(1),
    })
    .await;
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the slow connection was never closed");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    drop(stop);
    server.await.unwrap().unwrap();

    // Two open keep-alive connections take both slots: a third waits in the
    // backlog until one closes.
    let (addr, stop, server) = spawn_server(serve::ServerLimits {
        header_read_timeout: Duration::from_secs(30),
        max_connections: 2,
        shutdown_grace: Duration::from_secs(1),
    })
    .await;
    let request = b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut b = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut b)).await;
        assert!(n.is_ok_and(|r| r.is_ok_and(|n| n > 0)));
        open.push(s);
    }
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    third.write_all(request).await.unwrap();
    let mut b3 = [0u8; 256];
    let early = tokio::time::timeout(Duration::from_millis(400), third.read(&mut b3)).await;
    assert!(
        early.is_err(),
        "a third connection was served while two held the slots"
    );
    drop(open.pop());
    let late = tokio::time::timeout(Duration::from_secs(3), third.read(&mut b3)).await;
    assert!(
        late.is_ok_and(|r| r.is_ok_and(|n| n > 0)),
        "the third connection was not served once a slot freed"
    );
    drop(open);
    drop(third);
    drop(stop);
    server.await.unwrap().unwrap();
}
