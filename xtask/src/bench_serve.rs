//! `cargo xtask bench serve`: the release `serve` binary on real artifacts,
//! driven by a closed-loop load generator (hyper client, latencies in an
//! HdrHistogram) on the same machine.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Options of the serving benchmark.
pub struct ServeBench {
    /// Artifacts of a `cargo xtask pipeline` run.
    pub artifacts: String,
    /// Port for the server.
    pub port: u16,
    /// Uncached requests (sequential).
    pub uncached_requests: usize,
    /// Duration of the cached phase.
    pub seconds: u64,
    /// Concurrent connections in the cached throughput phase.
    pub concurrency: usize,
    /// Redis for the cache (in-process cache when `None`).
    pub redis_url: Option<String>,
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

async fn fetch(client: &HttpClient, uri: &str, no_cache: bool) -> Result<(u16, String)> {
    let mut req = hyper::Request::get(uri);
    if no_cache {
        req = req.header("cache-control", "no-cache");
    }
    let response = client.request(req.body(Empty::new())?).await?;
    let status = response.status().as_u16();
    let cache = response
        .headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    response.into_body().collect().await?;
    Ok((status, cache))
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

fn report(label: &str, h: &Histogram<u64>, wall: Duration) -> Result<()> {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    outln!(
        "{label:<34} n={:<7} p50 {:>7.3} ms  p99 {:>7.3} ms  max {:>7.3} ms  {:>8.0} req/s",
        h.len(),
        ms(0.5),
        ms(0.99),
        h.max() as f64 / 1000.0,
        h.len() as f64 / wall.as_secs_f64()
    );
    Ok(())
}

/// The release `serve` binary, built if needed.
fn serve_binary() -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--quiet", "-p", "serve"])
        .status()
        .context("building the serve binary")?;
    if !status.success() {
        bail!("cargo build -p serve failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    Ok(target.join("release/serve"))
}

/// Stock codes of the best-selling products in the artifacts.
fn top_products(artifacts: &str, n: usize) -> Result<Vec<String>> {
    let store = lineage::open_store(artifacts)?;
    let key = lineage::ArtifactKeys::new(None).summary;
    let summary = features::ProductSummary::from_parquet(&store.get(&key)?)?;
    let mut rows: Vec<_> = summary.rows.iter().collect();
    rows.sort_by(|a, b| b.n_lines.total_cmp(&a.n_lines));
    Ok(rows
        .into_iter()
        .take(n)
        .map(|r| r.stock_code.clone())
        .collect())
}

/// Runs the benchmark and prints its figures.
pub fn run(opts: &ServeBench) -> Result<()> {
    let binary = serve_binary()?;
    let products = top_products(&opts.artifacts, 50)?;
    if products.is_empty() {
        bail!("no products in {}", opts.artifacts);
    }
    let mut cmd = Command::new(&binary);
    cmd.args([
        "--artifacts",
        &opts.artifacts,
        "--port",
        &opts.port.to_string(),
    ])
    .env("RUST_LOG", "warn")
    .stdout(Stdio::null());
    match &opts.redis_url {
        Some(url) => cmd.args(["--redis-url", url]),
        None => cmd.env_remove("REDIS_URL"),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let base = format!("http://127.0.0.1:{}", opts.port);
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();

    let started = Instant::now();
    let _server = Server(cmd.spawn().context("starting serve")?);
    let ready = rt.block_on(async {
        loop {
            if let Ok((200, _)) = fetch(&client, &format!("{base}/ping"), false).await {
                return Ok(started.elapsed());
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("the server did not answer /ping within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })?;
    outln!(
        "serve bench: artifacts {}, {} products, cache {}",
        opts.artifacts,
        products.len(),
        opts.redis_url.as_deref().unwrap_or("in-process")
    );
    outln!(
        "server ready (first /ping answered) {:.0} ms after spawn",
        ready.as_secs_f64() * 1000.0
    );

    rt.block_on(async {
        // Uncached: one request at a time, 100 prices, cache read skipped.
        let mut h = Histogram::<u64>::new(3)?;
        let wall = Instant::now();
        for i in 0..opts.uncached_requests {
            let uri = format!("{base}/v1/predict-price/{}", products[i % products.len()]);
            let t = Instant::now();
            let (status, cache) = fetch(&client, &uri, true).await?;
            h.record(micros(t.elapsed()))?;
            if status != 200 || cache != "bypass" {
                bail!("uncached request {uri}: status {status}, x-cache {cache}");
            }
        }
        report("uncached, 100 prices, 1 conn", &h, wall.elapsed())?;

        // Warm the cache for every product.
        for code in &products {
            fetch(&client, &format!("{base}/v1/predict-price/{code}"), false).await?;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;

        // Cached latency: one request at a time.
        let mut h = Histogram::<u64>::new(3)?;
        let wall = Instant::now();
        let mut misses = 0usize;
        for i in 0..opts.uncached_requests.max(1000) {
            let uri = format!("{base}/v1/predict-price/{}", products[i % products.len()]);
            let t = Instant::now();
            let (status, cache) = fetch(&client, &uri, false).await?;
            h.record(micros(t.elapsed()))?;
            if status != 200 {
                bail!("cached request {uri}: status {status}");
            }
            misses += usize::from(cache != "hit");
        }
        report("cached, 1 conn", &h, wall.elapsed())?;
        if misses > 0 {
            outln!("  ({misses} of those were not cache hits)");
        }

        // Cached throughput: closed loop over `concurrency` connections.
        let deadline = Instant::now() + Duration::from_secs(opts.seconds);
        let products = Arc::new(products);
        let wall = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..opts.concurrency {
            let client = client.clone();
            let base = base.clone();
            let products = products.clone();
            tasks.push(tokio::spawn(async move {
                let mut h = Histogram::<u64>::new(3)?;
                let mut failed = 0u64;
                let mut i = w;
                while Instant::now() < deadline {
                    let uri = format!("{base}/v1/predict-price/{}", products[i % products.len()]);
                    i += 1;
                    let t = Instant::now();
                    match fetch(&client, &uri, false).await {
                        Ok((200, _)) => h.record(micros(t.elapsed()))?,
                        _ => failed += 1,
                    }
                }
                anyhow::Ok((h, failed))
            }));
        }
        let mut total = Histogram::<u64>::new(3)?;
        let mut failed = 0;
        for t in tasks {
            let (h, f) = t.await??;
            total.add(&h)?;
            failed += f;
        }
        report(
            &format!("cached, {} conns", opts.concurrency),
            &total,
            wall.elapsed(),
        )?;
        if failed > 0 {
            bail!("{failed} requests failed");
        }
        outln!("failed requests: 0");
        anyhow::Ok(())
    })
}
