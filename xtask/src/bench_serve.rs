//! `cargo xtask bench serve`: the release `serve` binary on real artifacts,
//! driven by a closed-loop load generator (hyper client, latencies in an
//! HdrHistogram) on the same machine.
//!
//! Modes:
//! - `latency` (default): start-up time, uncached and cached latency, cached
//!   throughput.
//! - `overload`: `concurrency` clients (200) send uncached 1000-bin requests
//!   in a closed loop while a probe times `/ping`; reports answered vs shed
//!   (503 + `Retry-After`), the slowest request against the deadline, `/ping`
//!   percentiles during the flood and the server's peak RSS.
//! - `reload`: a load runs while production is promoted to another release
//!   half-way; reports failed requests and how long until answers carry the
//!   new release id.
//! - `scale`: 1, 2, 4 (`--processes`) server processes on consecutive ports,
//!   sharing one Redis and one store, behind a client that spreads its
//!   connections over them round-robin (what a load balancer does); cached
//!   and uncached throughput for each count.

use std::path::PathBuf;

use lineage::ArtifactStore;
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
    /// `latency`, `overload` or `reload`.
    pub mode: String,
    /// `reload`: the server's pointer check interval in seconds.
    pub reload_interval_secs: f64,
    /// `overload`: candidate prices per request.
    pub bins: usize,
    /// The `serve` binary to run (default: the one beside this `xtask`).
    pub serve_binary: Option<PathBuf>,
    /// `sweep`: extra query parameters of every request.
    pub query: String,
    /// `console`: the product to open (default: the best seller).
    pub product: Option<String>,
    /// `console`: where to save screenshots.
    pub shots: Option<PathBuf>,
    /// `scale`: the numbers of server processes to measure.
    pub processes: Vec<usize>,
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// What the load generator keeps of an answer.
struct Answer {
    status: u16,
    cache: String,
    release: String,
    retry_after: bool,
}

async fn fetch_answer(client: &HttpClient, uri: &str, no_cache: bool) -> Result<Answer> {
    let mut req = hyper::Request::get(uri);
    if no_cache {
        req = req.header("cache-control", "no-cache");
    }
    let response = client.request(req.body(Empty::new())?).await?;
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let answer = Answer {
        status: response.status().as_u16(),
        cache: header("x-cache"),
        release: header("x-release"),
        retry_after: response.headers().contains_key("retry-after"),
    };
    response.into_body().collect().await?;
    Ok(answer)
}

async fn fetch(client: &HttpClient, uri: &str, no_cache: bool) -> Result<(u16, String)> {
    let a = fetch_answer(client, uri, no_cache).await?;
    Ok((a.status, a.cache))
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

/// The release `serve` binary: the one built beside this `xtask` (one cargo
/// invocation for both keeps their features unified), else built now.
fn serve_binary() -> Result<PathBuf> {
    if let Ok(me) = std::env::current_exe() {
        let beside = me.with_file_name("serve");
        if beside.exists() {
            return Ok(beside);
        }
    }
    crate::cargo_build("serve", "serve", true, true)?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    Ok(target.join("release/serve"))
}

/// Stock codes of the best-selling products of the production release.
fn top_products(artifacts: &str, n: usize) -> Result<Vec<String>> {
    let store = lineage::open_store(artifacts)?;
    let releases = lineage::Releases::new(store.as_ref(), None);
    let pointer = releases
        .production()?
        .with_context(|| format!("no production release in {artifacts}"))?;
    let key = lineage::ArtifactKeys::new(None).summary;
    let summary = features::ProductSummary::from_parquet(&releases.open(&pointer).get(&key)?)?;
    let mut rows: Vec<_> = summary.rows.iter().collect();
    rows.sort_by(|a, b| b.n_lines.total_cmp(&a.n_lines));
    Ok(rows
        .into_iter()
        .take(n)
        .map(|r| r.stock_code.clone())
        .collect())
}

/// A started server and a client for it.
struct Bench {
    server: Server,
    rt: tokio::runtime::Runtime,
    client: HttpClient,
    base: String,
    ready: Duration,
}

/// Spawns the server on `port` (the bench's artifacts, Redis and binary).
fn spawn(opts: &ServeBench, port: u16, extra: &[&str]) -> Result<Server> {
    let binary = match &opts.serve_binary {
        Some(b) => b.clone(),
        None => serve_binary()?,
    };
    let mut cmd = Command::new(&binary);
    cmd.args(["--artifacts", &opts.artifacts, "--port", &port.to_string()])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    match &opts.redis_url {
        Some(url) => cmd.args(["--redis-url", url]),
        None => cmd.env_remove("REDIS_URL"),
    };
    Ok(Server(cmd.spawn().context("starting serve")?))
}

/// How long a server may take to answer its first `/ping`: a cold start
/// reads the binary and libtorch from disk.
const READY_WITHIN: Duration = Duration::from_secs(120);

/// Waits until `base` answers `/ping`; the time since `started`. Fails at
/// once if `server` exits first (its own error is on stderr, above).
async fn ready(
    client: &HttpClient,
    base: &str,
    started: Instant,
    server: &mut Server,
) -> Result<Duration> {
    loop {
        if let Ok((200, _)) = fetch(client, &format!("{base}/ping"), false).await {
            return Ok(started.elapsed());
        }
        if let Some(status) = server.0.try_wait()? {
            bail!("the server for {base} exited ({status}) before answering /ping");
        }
        if started.elapsed() > READY_WITHIN {
            bail!(
                "the server at {base} did not answer /ping within {} s",
                READY_WITHIN.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn start(opts: &ServeBench, extra: &[&str]) -> Result<Bench> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let base = format!("http://127.0.0.1:{}", opts.port);
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let started = Instant::now();
    let mut server = spawn(opts, opts.port, extra)?;
    let ready = rt.block_on(ready(&client, &base, started, &mut server))?;
    Ok(Bench {
        server,
        rt,
        client,
        base,
        ready,
    })
}

/// A memory field of `/proc/<pid>/status` (`VmHWM`, `VmRSS`), in MiB.
fn proc_status_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// Peak resident memory of a process (`VmHWM`), in MiB.
pub(crate) fn peak_rss_mib(pid: u32) -> Option<f64> {
    proc_status_mib(pid, "VmHWM")
}

/// Resident memory of a process now (`VmRSS`), in MiB.
pub(crate) fn rss_mib(pid: u32) -> Option<f64> {
    proc_status_mib(pid, "VmRSS")
}

/// The child processes of `pid` (Linux: `/proc/PID/task/*/children`).
pub(crate) fn child_pids(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Runs the benchmark and prints its figures.
pub fn run(opts: &ServeBench) -> Result<()> {
    match opts.mode.as_str() {
        "latency" => latency(opts),
        "overload" => overload(opts),
        "reload" => reload(opts),
        "sweep" => sweep(opts),
        "console" => console(opts),
        "scale" => scale(opts),
        other => bail!(
            "unknown serve bench mode `{other}` (latency, overload, reload, sweep, console or scale)"
        ),
    }
}

fn latency(opts: &ServeBench) -> Result<()> {
    let products = top_products(&opts.artifacts, 50)?;
    if products.is_empty() {
        bail!("no products in {}", opts.artifacts);
    }
    let Bench {
        server: _server,
        rt,
        client,
        base,
        ready,
    } = start(opts, &[])?;
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
        let products = Arc::new(products);
        let (total, failed, wall) = spread_load(
            &client,
            std::slice::from_ref(&base),
            &products,
            opts.concurrency,
            opts.seconds,
            false,
        )
        .await?;
        report(&format!("cached, {} conns", opts.concurrency), &total, wall)?;
        if failed > 0 {
            bail!("{failed} requests failed");
        }
        outln!("failed requests: 0");
        anyhow::Ok(())
    })
}

/// `overload`: a closed loop of `concurrency` clients sending uncached
/// requests of `bins` prices for `seconds`, and a `/ping` probe.
fn overload(opts: &ServeBench) -> Result<()> {
    let products = Arc::new(top_products(&opts.artifacts, 200)?);
    if products.is_empty() {
        bail!("no products in {}", opts.artifacts);
    }
    let deadline_ms = 2000u64;
    let bench = start(opts, &["--no-cache"])?;
    let pid = bench.server.0.id();
    outln!(
        "overload bench: {} clients, uncached, {} prices per request, {} s; server deadline {deadline_ms} ms",
        opts.concurrency,
        opts.bins,
        opts.seconds
    );
    let (client, base) = (bench.client.clone(), bench.base.clone());
    let bins = opts.bins;
    let concurrency = opts.concurrency;
    let seconds = opts.seconds;
    bench.rt.block_on(async move {
        let end = Instant::now() + Duration::from_secs(seconds);
        // A separate connection pool for the probe, so it does not queue
        // behind the flood's connections on the client side.
        let probe_client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
        let probe_base = base.clone();
        let probe = tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3)?;
            let mut failed = 0u64;
            while Instant::now() < end {
                let t = Instant::now();
                match fetch(&probe_client, &format!("{probe_base}/ping"), false).await {
                    Ok((200, _)) => h.record(micros(t.elapsed()))?,
                    _ => failed += 1,
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            anyhow::Ok((h, failed))
        });
        let mut tasks = Vec::new();
        for w in 0..concurrency {
            let client = client.clone();
            let base = base.clone();
            let products = products.clone();
            tasks.push(tokio::spawn(async move {
                let mut ok = Histogram::<u64>::new(3)?;
                let mut shed = Histogram::<u64>::new(3)?;
                let (mut shed_without_retry_after, mut other) = (0u64, 0u64);
                let mut i = w;
                while Instant::now() < end {
                    // A range of thousands of pence, so `bins` distinct
                    // prices (candidates are whole pence).
                    let uri = format!(
                        "{base}/v1/predict-price/{}?num_price_bins={bins}&unitprice_min=0.5&unitprice_max=60",
                        products[i % products.len()]
                    );
                    i += concurrency;
                    let t = Instant::now();
                    match fetch_answer(&client, &uri, false).await {
                        Ok(a) if a.status == 200 => ok.record(micros(t.elapsed()))?,
                        Ok(a) if a.status == 503 => {
                            shed.record(micros(t.elapsed()))?;
                            shed_without_retry_after += u64::from(!a.retry_after);
                            if a.retry_after {
                                // A polite client honours Retry-After (1 s);
                                // here it backs off briefly and tries again.
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                        _ => other += 1,
                    }
                }
                anyhow::Ok((ok, shed, shed_without_retry_after, other))
            }));
        }
        let mut ok = Histogram::<u64>::new(3)?;
        let mut shed = Histogram::<u64>::new(3)?;
        let (mut no_retry, mut other) = (0, 0);
        for t in tasks {
            let (o, s, n, x) = t.await??;
            ok.add(&o)?;
            shed.add(&s)?;
            no_retry += n;
            other += x;
        }
        let (ping, ping_failed) = probe.await??;
        let wall = Duration::from_secs(seconds);
        report("answered (200)", &ok, wall)?;
        report("shed (503)", &shed, wall)?;
        report("/ping during the flood", &ping, wall)?;
        let slowest = ok.max().max(shed.max()) as f64 / 1000.0;
        outln!(
            "slowest request {slowest:.1} ms (deadline {deadline_ms} ms + 100 ms = {} ms): {}",
            deadline_ms + 100,
            if slowest <= (deadline_ms + 100) as f64 { "within" } else { "OVER" }
        );
        outln!(
            "503 without Retry-After: {no_retry}; other failures: {other}; /ping failures: {ping_failed}"
        );
        anyhow::Ok(())
    })?;
    match peak_rss_mib(pid) {
        Some(mib) => outln!("server peak RSS (VmHWM): {mib:.0} MiB"),
        None => outln!("server peak RSS: unavailable (no /proc)"),
    }
    Ok(())
}

/// `reload`: load for `seconds` while production moves to another release
/// half-way through.
fn reload(opts: &ServeBench) -> Result<()> {
    let store = lineage::open_store(&opts.artifacts)?;
    let releases = lineage::Releases::new(store.as_ref(), None);
    let current = releases
        .production()?
        .with_context(|| format!("no production release in {}", opts.artifacts))?;
    let target = releases
        .list()?
        .into_iter()
        .rev()
        .find(|r| r.id != current.release)
        .context("the reload bench needs a second release to promote (run the pipeline again with another seed)")?;
    let products = Arc::new(top_products(&opts.artifacts, 50)?);
    let interval = format!("{}", opts.reload_interval_secs);
    let bench = start(opts, &["--reload-interval-secs", &interval])?;
    outln!(
        "reload bench: {} clients for {} s, pointer checked every {interval} s; release {} -> {} half-way",
        opts.concurrency,
        opts.seconds,
        current.release,
        target.id
    );
    let (client, base) = (bench.client.clone(), bench.base.clone());
    let (concurrency, seconds) = (opts.concurrency, opts.seconds);
    let new_release = target.id.clone();
    let artifacts = opts.artifacts.clone();
    bench.rt.block_on(async move {
        let started = Instant::now();
        let end = started + Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        for w in 0..concurrency {
            let client = client.clone();
            let base = base.clone();
            let products = products.clone();
            let new_release = new_release.clone();
            tasks.push(tokio::spawn(async move {
                let mut h = Histogram::<u64>::new(3)?;
                let (mut failed, mut n) = (0u64, 0u64);
                let mut first_new: Option<Duration> = None;
                let mut last_old: Option<Duration> = None;
                let mut i = w;
                while Instant::now() < end {
                    // Mostly cached requests, with an uncached one in ten.
                    let bins = if i % 10 == 0 { 100 + i % 500 } else { 100 };
                    let uri = format!(
                        "{base}/v1/predict-price/{}?num_price_bins={bins}",
                        products[i % products.len()]
                    );
                    i += concurrency;
                    let t = Instant::now();
                    match fetch_answer(&client, &uri, false).await {
                        Ok(a) if a.status == 200 => {
                            h.record(micros(t.elapsed()))?;
                            let at = t.duration_since(started);
                            if a.release == new_release {
                                first_new = Some(first_new.map_or(at, |f| f.min(at)));
                            } else {
                                last_old = Some(last_old.map_or(at, |l| l.max(at)));
                            }
                        }
                        _ => failed += 1,
                    }
                    n += 1;
                }
                anyhow::Ok((h, failed, n, first_new, last_old))
            }));
        }
        tokio::time::sleep(Duration::from_secs(seconds) / 2).await;
        let promoted_at = started.elapsed();
        let store_uri = artifacts.clone();
        let promoted = tokio::task::spawn_blocking(move || -> Result<()> {
            let store = lineage::open_store(&store_uri)?;
            pipeline::promote(store.as_ref(), None, &target.id, "reload bench")?;
            Ok(())
        });
        promoted.await??;
        let promote_took = started.elapsed() - promoted_at;
        let mut total = Histogram::<u64>::new(3)?;
        let (mut failed, mut n) = (0, 0);
        let mut first_new: Option<Duration> = None;
        let mut last_old: Option<Duration> = None;
        for t in tasks {
            let (h, f, c, fnew, lold) = t.await??;
            total.add(&h)?;
            failed += f;
            n += c;
            first_new = match (first_new, fnew) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            last_old = match (last_old, lold) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
        }
        report(&format!("{concurrency} conns, across the swap"), &total, Duration::from_secs(seconds))?;
        outln!("requests {n}, failed {failed}");
        outln!(
            "promoted at {:.2} s (the promote took {:.0} ms); first answer from the new release at {}; last from the old at {}",
            promoted_at.as_secs_f64(),
            promote_took.as_secs_f64() * 1000.0,
            first_new.map_or("never".into(), |d| format!("{:.2} s (+{:.2} s)", d.as_secs_f64(), d.as_secs_f64() - promoted_at.as_secs_f64())),
            last_old.map_or("never".into(), |d| format!("{:.2} s (+{:.2} s)", d.as_secs_f64(), d.as_secs_f64() - promoted_at.as_secs_f64())),
        );
        if failed > 0 {
            bail!("{failed} requests failed across the swap");
        }
        anyhow::Ok(())
    })?;
    // Leave production where it was.
    pipeline::promote(
        store.as_ref(),
        None,
        &current.release,
        "reload bench: restore",
    )?;
    Ok(())
}

/// `sweep`: `/v2` for every product of the production release: the share
/// of curves that never rise with price, where the recommended price sits
/// on the grid, and the latency. Uses only fields every server version
/// answers (the curve's prices and quantities, the optimal price), so two
/// versions can be compared with `--serve-binary`.
fn sweep(opts: &ServeBench) -> Result<()> {
    let products = top_products(&opts.artifacts, usize::MAX)?;
    let bench = start(opts, &["--no-cache"])?;
    let (client, base) = (bench.client.clone(), bench.base.clone());
    let query = opts.query.trim_start_matches('?').to_string();
    let binary = opts.serve_binary.as_ref().map_or_else(
        || "serve beside xtask".to_string(),
        |b| b.display().to_string(),
    );
    bench.rt.block_on(async move {
        let mut h = Histogram::<u64>::new(3)?;
        let (mut monotone, mut lower, mut upper, mut interior, mut failed) = (0usize, 0, 0, 0, 0);
        // Answers that keep the current price (servers that report it).
        let (mut kept, mut raised, mut with_current) = (0usize, 0usize, 0usize);
        let mut rising: Vec<String> = Vec::new();
        for code in &products {
            let uri = if query.is_empty() {
                format!("{base}/v2/recommendation/{code}")
            } else {
                format!("{base}/v2/recommendation/{code}?{query}")
            };
            let t = Instant::now();
            let req = hyper::Request::get(&uri).body(Empty::<Bytes>::new())?;
            let response = client.request(req).await?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await?.to_bytes();
            h.record(micros(t.elapsed()))?;
            if status != 200 {
                failed += 1;
                continue;
            }
            let v: serde_json::Value = serde_json::from_slice(&body)?;
            let curve = v["curve"].as_array().cloned().unwrap_or_default();
            let q: Vec<f64> = curve.iter().filter_map(|p| p["quantity"].as_f64()).collect();
            let prices: Vec<f64> = curve.iter().filter_map(|p| p["unit_price"].as_f64()).collect();
            if q.windows(2).all(|w| w[1] <= w[0] + 1e-9 * w[0].abs().max(1.0)) {
                monotone += 1;
            } else {
                rising.push(code.clone());
            }
            let best = v["optimal_unit_price"].as_f64().unwrap_or(f64::NAN);
            if let Some(current) = v["current_price"].as_f64() {
                with_current += 1;
                kept += usize::from(current == best);
                raised += usize::from(best > current);
            }
            if prices.first() == Some(&best) {
                lower += 1;
            } else if prices.last() == Some(&best) {
                upper += 1;
            } else {
                interior += 1;
            }
        }
        let n = (monotone + rising.len()).max(1) as f64;
        outln!(
            "sweep of {} products with {binary}{}",
            products.len(),
            if query.is_empty() {
                String::new()
            } else {
                format!(", ?{query}")
            }
        );
        report("/v2, 100 prices, uncached, 1 conn", &h, Duration::from_secs(1))?;
        outln!(
            "curves never rising with price: {monotone} of {} ({:.1} %); failed requests: {failed}",
            monotone + rising.len(),
            100.0 * monotone as f64 / n
        );
        outln!(
            "recommended price at the grid's lower edge {:.1} %, upper edge {:.1} %, interior {:.1} %",
            100.0 * lower as f64 / n,
            100.0 * upper as f64 / n,
            100.0 * interior as f64 / n
        );
        if with_current > 0 {
            let share = |k: usize| 100.0 * k as f64 / with_current as f64;
            outln!(
                "against the current price: kept {:.1} %, raised {:.1} %, lowered {:.1} % (of {with_current})",
                share(kept),
                share(raised),
                share(with_current - kept - raised)
            );
        }
        if !rising.is_empty() {
            outln!(
                "rising curves (first 10): {}",
                rising.iter().take(10).cloned().collect::<Vec<_>>().join(", ")
            );
        }
        anyhow::Ok(())
    })
}

/// What the browser measured on one page load.
#[derive(Debug, Clone, Copy)]
struct PageLoad {
    /// From navigation start to the view's render mark, ms.
    rendered_ms: f64,
    /// Bytes transferred: the page, its assets and its API calls.
    bytes: f64,
    /// Requests made.
    requests: f64,
}

const LOAD_JS: &str = "const n = performance.getEntriesByType('navigation')[0]; \
    const r = performance.getEntriesByType('resource'); \
    const m = performance.getEntriesByName(arguments[0])[0]; \
    return [m ? m.startTime : -1, n.transferSize + r.reduce((a, e) => a + e.transferSize, 0), 1 + r.length];";

/// Loads `url` in a fresh browser (cold cache) and waits for `ready`.
async fn page_load(
    url: &str,
    ready: &str,
    mark: &str,
    shot: Option<(&std::path::Path, u32)>,
) -> Result<PageLoad> {
    let browser = browser::Browser::start(1280, 1000)
        .await
        .map_err(anyhow::Error::msg)?;
    browser.client.goto(url).await?;
    browser
        .wait_for(ready, 30)
        .await
        .map_err(anyhow::Error::msg)?;
    let v = browser
        .client
        .execute(LOAD_JS, vec![serde_json::Value::String(mark.into())])
        .await?;
    let f = |i: usize| v[i].as_f64().unwrap_or(f64::NAN);
    if let Some((path, height)) = shot {
        // Let late parts (the sales history) arrive, then the whole page.
        tokio::time::sleep(Duration::from_millis(500)).await;
        browser.client.set_window_size(1280, height).await?;
        browser.screenshot(path).await.map_err(anyhow::Error::msg)?;
        outln!("screenshot {}", path.display());
    }
    browser.close().await;
    Ok(PageLoad {
        rendered_ms: f(0),
        bytes: f(1),
        requests: f(2),
    })
}

/// The console's first render with a cold browser cache: the product view
/// and the ranking, each loaded in a fresh Chromium profile, on loopback.
fn console(opts: &ServeBench) -> Result<()> {
    let product = match &opts.product {
        Some(p) => p.clone(),
        None => top_products(&opts.artifacts, 1)?
            .into_iter()
            .next()
            .context("no products")?,
    };
    let bench = start(opts, &[])?;
    let base = bench.base.clone();
    let runs = opts.uncached_requests.clamp(3, 50);
    outln!(
        "console bench: artifacts {}, product {product}, {runs} loads per view, each in a fresh headless Chromium (cold browser cache)",
        opts.artifacts
    );
    let shots = opts.shots.clone();
    bench.rt.block_on(async move {
        // The ranking is computed once per release, in the background at
        // start: wait for it so the first load does not time its computation.
        let t = Instant::now();
        let (status, _) = fetch(&bench.client, &format!("{base}/v2/products?per_page=1"), false).await?;
        if status != 200 {
            bail!("/v2/products answered {status}");
        }
        outln!("ranking ready {:.0} ms after the server answered /ping", t.elapsed().as_secs_f64() * 1e3);
        for (view, url, ready, mark, shot, height) in [
            (
                "product view",
                format!("{base}/#/product/{product}"),
                "#product-view[data-state=ready]",
                "product-rendered",
                "product.png",
                2300,
            ),
            (
                "ranking view",
                format!("{base}/#/ranking"),
                "#ranking-view[data-state=ready]",
                "ranking-rendered",
                "ranking.png",
                1700,
            ),
        ] {
            let mut loads = Vec::new();
            for i in 0..runs {
                let shot_path = shots.as_ref().filter(|_| i == 0).map(|d| d.join(shot));
                loads.push(
                    page_load(&url, ready, mark, shot_path.as_deref().map(|p| (p, height))).await?,
                );
            }
            let first = loads[0];
            let mut rest: Vec<f64> = loads[1..].iter().map(|l| l.rendered_ms).collect();
            rest.sort_by(f64::total_cmp);
            let median = rest[rest.len() / 2];
            outln!(
                "{view:<13} first render: first load {:>6.1} ms (server cache cold), median of next {} {:>6.1} ms (max {:>6.1}); {:.0} KiB in {} requests",
                first.rendered_ms,
                rest.len(),
                median,
                rest.last().copied().unwrap_or(f64::NAN),
                first.bytes / 1024.0,
                first.requests
            );
        }
        Ok(())
    })
}

/// `cargo xtask soak`: the server driven flat out for `seconds` by
/// `concurrency` closed-loop clients (each sends its next request when the
/// last is answered: the server's maximum), one request in ten uncached
/// (`Cache-Control: no-cache`, so it is computed), over the 200 best-selling
/// products with varying grids, after a warm-up that asks for each of them
/// once; RSS sampled every second. At most
/// `concurrency` computations are ever asked for at once, below the admission
/// limit, so any non-200 is an error.
pub fn soak(opts: &ServeBench) -> Result<()> {
    let products = Arc::new(top_products(&opts.artifacts, 200)?);
    if products.is_empty() {
        bail!("no products in {}", opts.artifacts);
    }
    let bench = start(opts, &[])?;
    let pid = bench.server.0.id();
    let (client, base) = (bench.client.clone(), bench.base.clone());
    let (concurrency, seconds) = (opts.concurrency.max(1), opts.seconds.max(1));
    outln!(
        "soak: {concurrency} closed-loop clients for {seconds} s, 1 in 10 uncached, artifacts {}",
        opts.artifacts
    );
    bench.rt.block_on(async move {
        // Warm-up: every (product, grid) the soak asks for, once, so the
        // cache holds its working set and the ranking computed at start-up
        // is done; RSS is measured from here.
        for (i, code) in products.iter().enumerate() {
            for k in 0..5 {
                let uri = format!("{base}/v2/recommendation/{code}?num_price_bins={}", 20 + k * 20);
                if fetch_answer(&client, &uri, false).await?.status != 200 {
                    bail!("warm-up request {i} for {code} failed");
                }
            }
        }
        let (status, _) = fetch(&client, &format!("{base}/v2/products?per_page=1"), false).await?;
        if status != 200 {
            bail!("/v2/products answered {status}");
        }
        let end = Instant::now() + Duration::from_secs(seconds);
        let sampler = tokio::spawn(async move {
            let mut samples = Vec::new();
            while Instant::now() < end {
                samples.push(rss_mib(pid).unwrap_or(f64::NAN));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            samples.push(rss_mib(pid).unwrap_or(f64::NAN));
            samples
        });
        let mut tasks = Vec::new();
        for w in 0..concurrency {
            let (client, base, products) = (client.clone(), base.clone(), products.clone());
            tasks.push(tokio::spawn(async move {
                let mut h = Histogram::<u64>::new(3)?;
                let (mut errors, mut uncached) = (0u64, 0u64);
                let mut i = w;
                while Instant::now() < end {
                    let code = &products[i % products.len()];
                    let bins = 20 + (i / products.len()) % 5 * 20;
                    let no_cache = i % 10 == 0;
                    let uri = format!("{base}/v2/recommendation/{code}?num_price_bins={bins}");
                    i += concurrency;
                    let t = Instant::now();
                    match fetch_answer(&client, &uri, no_cache).await {
                        Ok(a) if a.status == 200 => h.record(micros(t.elapsed()))?,
                        _ => errors += 1,
                    }
                    uncached += u64::from(no_cache);
                }
                anyhow::Ok((h, errors, uncached))
            }));
        }
        let mut h = Histogram::<u64>::new(3)?;
        let (mut errors, mut uncached) = (0u64, 0u64);
        for t in tasks {
            let (th, e, u) = t.await??;
            h.add(&th)?;
            errors += e;
            uncached += u;
        }
        let samples = sampler.await?;
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        outln!(
            "requests {} ({:.0} req/s), of which uncached {uncached}; errors {errors}",
            h.len() + errors,
            (h.len() + errors) as f64 / seconds as f64
        );
        outln!(
            "latency p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
            ms(0.5),
            ms(0.99),
            h.max() as f64 / 1000.0
        );
        let (first, last) = (samples[0], samples[samples.len() - 1]);
        let peak = samples.iter().copied().fold(f64::NAN, f64::max);
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
        outln!(
            "RSS start {first:.1} MiB, 25 % {:.1}, 50 % {:.1}, 75 % {:.1}, end {last:.1} MiB ({:+.1} %), peak {peak:.1} MiB, {} samples",
            at(0.25),
            at(0.5),
            at(0.75),
            (last / first - 1.0) * 100.0,
            samples.len()
        );
        if errors > 0 {
            bail!("{errors} requests failed");
        }
        Ok(())
    })
}

/// CPU seconds (user + system) a process has used, from `/proc/<pid>/stat`
/// (clock ticks of 10 ms).
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // The fields after the command name (which may hold spaces) follow ')'.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    // utime and stime are fields 14 and 15 of stat: 12 and 13 after ')'.
    (tick(11) + tick(12)) / 100.0
}

/// Closed-loop throughput over `bases` (connection `w` talks to
/// `bases[w % n]`) for `seconds`: requests answered and failed.
async fn spread_load(
    client: &HttpClient,
    bases: &[String],
    products: &Arc<Vec<String>>,
    concurrency: usize,
    seconds: u64,
    no_cache: bool,
) -> Result<(Histogram<u64>, u64, Duration)> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let wall = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (client, products) = (client.clone(), products.clone());
        let base = bases[w % bases.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3)?;
            let mut failed = 0u64;
            let mut i = w;
            while Instant::now() < deadline {
                let uri = format!("{base}/v1/predict-price/{}", products[i % products.len()]);
                i += concurrency;
                let t = Instant::now();
                match fetch(&client, &uri, no_cache).await {
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
    Ok((total, failed, wall.elapsed()))
}

/// `scale`: throughput of 1, 2, 4 server processes sharing one Redis and
/// one store, cached and uncached, `concurrency` connections spread over
/// them. The load generator runs on two threads of the same machine.
fn scale(opts: &ServeBench) -> Result<()> {
    if opts.redis_url.is_none() {
        bail!("--mode scale measures processes that share a Redis: pass --redis-url");
    }
    let products = Arc::new(top_products(&opts.artifacts, 50)?);
    if products.is_empty() {
        bail!("no products in {}", opts.artifacts);
    }
    let counts = if opts.processes.is_empty() {
        vec![1, 2, 4]
    } else {
        opts.processes.clone()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    outln!(
        "serve scale: artifacts {}, cache {}, {} conns spread over the processes, {} s per phase, {} CPUs",
        opts.artifacts,
        opts.redis_url.as_deref().unwrap_or(""),
        opts.concurrency,
        opts.seconds,
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    let mut rows = Vec::new();
    for &n in &counts {
        if n == 0 {
            bail!("--processes: 0 processes");
        }
        let started = Instant::now();
        let mut servers = Vec::new();
        let mut bases = Vec::new();
        for i in 0..n {
            let port = opts.port + u16::try_from(i)?;
            servers.push(spawn(opts, port, &[])?);
            bases.push(format!("http://127.0.0.1:{port}"));
        }
        let (cached, uncached) = rt.block_on(async {
            for (base, server) in bases.iter().zip(servers.iter_mut()) {
                ready(&client, base, started, server).await?;
                // The ranking each process computes in the background after
                // start-up: wait for it, so it is not measured as load.
                let (status, _) =
                    fetch(&client, &format!("{base}/v2/products?per_page=1"), false).await?;
                if status != 200 {
                    bail!("{base}/v2/products answered {status}");
                }
            }
            // One process warms the shared cache for every product; the
            // others must then hit it.
            for code in products.iter() {
                fetch(
                    &client,
                    &format!("{}/v1/predict-price/{code}", bases[0]),
                    false,
                )
                .await?;
            }
            for base in &bases {
                let (status, cache) = fetch(
                    &client,
                    &format!("{base}/v1/predict-price/{}", products[0]),
                    false,
                )
                .await?;
                if status != 200 || cache != "hit" {
                    bail!("{base}: status {status}, x-cache {cache:?}: the cache is not shared");
                }
            }
            let pids: Vec<u32> = servers.iter().map(|s| s.0.id()).collect();
            let cpu = |pids: &[u32]| -> (f64, f64) {
                (
                    pids.iter().map(|&p| cpu_seconds(p)).sum(),
                    cpu_seconds(std::process::id()),
                )
            };
            let mut phases = Vec::new();
            for no_cache in [false, true] {
                let before = cpu(&pids);
                let load = spread_load(
                    &client,
                    &bases,
                    &products,
                    opts.concurrency,
                    opts.seconds,
                    no_cache,
                )
                .await?;
                let after = cpu(&pids);
                let wall = load.2.as_secs_f64();
                phases.push((
                    load,
                    (after.0 - before.0) / wall,
                    (after.1 - before.1) / wall,
                ));
            }
            let uncached = phases.pop().context("no uncached phase")?;
            let cached = phases.pop().context("no cached phase")?;
            anyhow::Ok((cached, uncached))
        })?;
        drop(servers);
        for (label, ((h, failed, wall), servers_cpu, bench_cpu)) in
            [("cached", &cached), ("uncached", &uncached)]
        {
            report(&format!("{n} process(es), {label}"), h, *wall)?;
            outln!(
                "  cores busy: servers {servers_cpu:.2}, load generator {bench_cpu:.2} (the rest: Redis, kernel)"
            );
            if *failed > 0 {
                bail!("{failed} {label} requests failed with {n} processes");
            }
        }
        let rate =
            |(h, _, wall): &(Histogram<u64>, u64, Duration)| h.len() as f64 / wall.as_secs_f64();
        rows.push((n, rate(&cached.0), rate(&uncached.0)));
    }
    outln!("processes  cached req/s  (x one)  uncached req/s  (x one)");
    let (c1, u1) = (rows[0].1, rows[0].2);
    for (n, c, u) in rows {
        outln!(
            "{n:>9}  {c:>12.0}  {:>7.2}  {u:>14.0}  {:>7.2}",
            c / c1,
            u / u1
        );
    }
    Ok(())
}
