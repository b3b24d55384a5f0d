//! Test set-up shared by every test crate, in one place:
//!
//! - [`Scenario`]: synthetic data with a known price response → a store →
//!   pipeline runs (the one way tests build artifacts), and
//!   [`serving_fixture`], one smoke run shared by a test binary.
//! - [`S3TestServer`]: a real S3-compatible server (s3s-fs, signatures
//!   checked) on 127.0.0.1, which can be stopped and restarted on the same
//!   port and directory (for fault injection).
//! - [`RedisServer`]: a private `redis-server` on a free loopback port.
//! - HTTP helpers: [`call`] a router in-process, [`http_get`] a server over
//!   TCP, [`Kill`] a child process on drop.
//!
//! Everything listens on 127.0.0.1 only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use lineage::{ArtifactStore, LocalStore, S3Config, S3Store};

/// Access key of the test S3 server.
pub const ACCESS_KEY: &str = "test";
/// Secret key of the test S3 server.
pub const SECRET_KEY: &str = "testtest";

/// Synthetic data on disk with its ground truth, in a temporary directory
/// that also holds the scenario's stores.
pub struct Scenario {
    /// The raw export.
    pub raw: PathBuf,
    /// The data and its known price response.
    pub data: etl::synth::SynthData,
    tmp: tempfile::TempDir,
}

impl Scenario {
    /// `invoices` invoices of the default generator (seed 42).
    pub fn new(invoices: usize) -> Self {
        Self::with_config(&etl::synth::SynthConfig {
            n_invoices: invoices,
            ..Default::default()
        })
    }

    /// Data from `config`.
    pub fn with_config(config: &etl::synth::SynthConfig) -> Self {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let (raw, data) = write_synthetic(tmp.path(), "raw.csv", config)
            .unwrap_or_else(|e| panic!("synthetic data: {e}"));
        Self { raw, data, tmp }
    }

    /// The scenario's directory.
    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// A local store in the scenario's directory.
    pub fn store(&self, name: &str) -> LocalStore {
        LocalStore::new(self.dir().join(name)).unwrap_or_else(|e| panic!("store {name}: {e}"))
    }

    /// A pipeline config for this data.
    pub fn config<'a>(
        &self,
        store: &'a dyn ArtifactStore,
        params: lineage::Params,
    ) -> pipeline::PipelineConfig<'a> {
        pipeline::PipelineConfig::new(self.raw.clone(), store, params)
    }

    /// Runs the pipeline on this data into `store`.
    pub fn run(
        &self,
        store: &dyn ArtifactStore,
        params: lineage::Params,
    ) -> pipeline::Result<pipeline::PipelineSummary> {
        pipeline::run(&self.config(store, params))
    }

    /// A store named `name` with a smoke pipeline run in it (panics if the run fails).
    pub fn promoted(&self, name: &str) -> LocalStore {
        let store = self.store(name);
        self.run(&store, fast_params())
            .unwrap_or_else(|e| panic!("pipeline: {e}"));
        store
    }

    /// The best-selling product (always in the artifacts).
    pub fn top_product(&self) -> String {
        self.data
            .products
            .iter()
            .max_by(|a, b| a.base_quantity.total_cmp(&b.base_quantity))
            .map(|p| p.stock_code.clone())
            .unwrap_or_default()
    }
}

/// Writes a synthetic dataset to `dir/name` and returns its path and ground truth.
pub fn write_synthetic(
    dir: &Path,
    name: &str,
    config: &etl::synth::SynthConfig,
) -> std::io::Result<(PathBuf, etl::synth::SynthData)> {
    let data = etl::synth::generate(config);
    let path = dir.join(name);
    std::fs::write(&path, &data.csv)?;
    Ok((path, data))
}

/// The pipeline's smoke params: a whole run on synthetic data takes seconds.
pub fn fast_params() -> lineage::Params {
    pipeline::smoke_params()
}

/// The smoke params as `--set key=value` arguments of `cargo xtask`.
pub fn fast_cli_args() -> Vec<String> {
    pipeline::SMOKE_SETTINGS
        .iter()
        .flat_map(|(k, v)| ["--set".to_string(), format!("{k}={v}")])
        .collect()
}

/// Whether an artifact key holds timings (metrics, trial records), which
/// differ between otherwise identical runs.
pub fn is_timing_record(key: &str) -> bool {
    key.starts_with("metrics/") || key.ends_with("/trials.json")
}

/// Production artifacts of a smoke pipeline run on synthetic data, built once
/// per test binary.
pub struct ServingFixture {
    /// The store directory.
    pub dir: PathBuf,
    /// The scenario (data and ground truth).
    pub scenario: Scenario,
}

impl ServingFixture {
    /// The synthetic data's ground truth.
    pub fn data(&self) -> &etl::synth::SynthData {
        &self.scenario.data
    }
}

/// The shared [`ServingFixture`] (the first caller builds it: a few seconds).
pub fn serving_fixture() -> &'static ServingFixture {
    static FIXTURE: std::sync::OnceLock<ServingFixture> = std::sync::OnceLock::new();
    FIXTURE.get_or_init(|| {
        let scenario = Scenario::new(800);
        let store = scenario.promoted("run");
        ServingFixture {
            dir: store.root().to_path_buf(),
            scenario,
        }
    })
}

/// Copies a directory tree (artifacts to corrupt, say).
pub fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// The production release's directory in a local store, and the pointer.
pub fn production_release(store: &LocalStore) -> (PathBuf, lineage::Pointer) {
    let pointer = lineage::Releases::new(store, None)
        .production()
        .unwrap()
        .expect("a production release");
    (
        store.root().join("releases").join(&pointer.release),
        pointer,
    )
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("free port: {e}"))
}

/// An s3s-fs server on 127.0.0.1 with signature checking, serving a
/// directory. Stops when dropped (or [`S3TestServer::stop`]ped); can be
/// restarted on the same port and directory.
pub struct S3TestServer {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The port.
    pub port: u16,
    root: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl S3TestServer {
    /// Starts a server with one bucket, in a new temporary directory.
    pub fn start(bucket: &str) -> std::io::Result<Self> {
        let tmp = tempfile::tempdir()?;
        std::fs::create_dir_all(tmp.path().join(bucket))?;
        let mut server = Self::start_at(tmp.path(), 0)?;
        server._tmp = Some(tmp);
        Ok(server)
    }

    /// Starts a server over `root` (buckets are its directories) on `port`
    /// (0: any free port).
    pub fn start_at(root: &Path, port: u16) -> std::io::Result<Self> {
        let (shutdown, thread, addr) = Self::spawn(root, port)?;
        Ok(Self {
            endpoint: format!("http://{addr}"),
            port: addr.port(),
            root: root.to_path_buf(),
            _tmp: None,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// Serves `root` on `port` from a thread of its own.
    #[allow(clippy::type_complexity)]
    fn spawn(
        root: &Path,
        port: u16,
    ) -> std::io::Result<(
        tokio::sync::oneshot::Sender<()>,
        std::thread::JoinHandle<()>,
        SocketAddr,
    )> {
        let fs = s3s_fs::FileSystem::new(root)
            .map_err(|e| std::io::Error::other(format!("s3s-fs: {e:?}")))?;
        let mut builder = s3s::service::S3ServiceBuilder::new(fs);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let std_listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
        std_listener.set_nonblocking(true)?;
        let addr: SocketAddr = std_listener.local_addr()?;
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else {
                    return;
                };
                let http = ConnBuilder::new(TokioExecutor::new());
                let mut connections = tokio::task::JoinSet::new();
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            let Ok((socket, _)) = accepted else { continue };
                            let conn = http.serve_connection(TokioIo::new(socket), service.clone()).into_owned();
                            connections.spawn(async move { let _ = conn.await; });
                        }
                        _ = &mut rx => break,
                    }
                }
                // A stopped server drops its open connections too.
                connections.abort_all();
            });
        });
        Ok((tx, thread, addr))
    }

    /// The directory behind the server (`root/<bucket>/<key>` are plain files).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Stops the server (its data stays).
    pub fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Starts it again on the same port and directory.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.stop();
        let (shutdown, thread, _) = Self::spawn(&self.root, self.port)?;
        self.shutdown = Some(shutdown);
        self.thread = Some(thread);
        Ok(())
    }

    /// A store client for `bucket/prefix` on this server.
    pub fn store(&self, bucket: &str, prefix: &str) -> lineage::Result<S3Store> {
        S3Store::connect(self.config(bucket, prefix))
    }

    /// The client configuration for `bucket/prefix`.
    pub fn config(&self, bucket: &str, prefix: &str) -> S3Config {
        S3Config {
            bucket: bucket.into(),
            prefix: prefix.into(),
            endpoint_url: Some(self.endpoint.clone()),
            region: Some("us-east-1".into()),
            force_path_style: true,
            credentials: Some((ACCESS_KEY.into(), SECRET_KEY.into())),
        }
    }

    /// A client with wrong credentials (to check that the server verifies signatures).
    pub fn store_with_secret(&self, bucket: &str, secret: &str) -> lineage::Result<S3Store> {
        S3Store::connect(S3Config {
            credentials: Some((ACCESS_KEY.into(), secret.into())),
            ..self.config(bucket, "")
        })
    }
}

impl Drop for S3TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private `redis-server` on a free loopback port (no persistence), killed
/// when dropped. Needs `redis-server` on PATH (scripts/setup.sh installs it).
pub struct RedisServer {
    /// `redis://127.0.0.1:PORT/`.
    pub url: String,
    /// The port.
    pub port: u16,
    child: Option<std::process::Child>,
}

impl RedisServer {
    /// Starts the server and waits until it answers PING.
    pub fn start() -> std::io::Result<Self> {
        let port = free_port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
                // DEBUG SLEEP simulates a stalled server.
                "--enable-debug-command",
                "local",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("starting redis-server (run scripts/setup.sh): {e}"),
                )
            })?;
        let mut server = Self {
            url: format!("redis://127.0.0.1:{port}/"),
            port,
            child: Some(child),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if server.command("PING").is_ok_and(|r| r.starts_with("+PONG")) {
                return Ok(server);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        server.stop();
        Err(std::io::Error::other("redis-server did not answer PING"))
    }

    /// Sends one inline command and returns the first reply line.
    pub fn command(&self, command: &str) -> std::io::Result<String> {
        redis_command(self.port, &[command])
    }

    /// Kills the server (a crash, as far as clients can tell).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One Redis command (RESP, so arguments may hold spaces); returns the first
/// reply line. A single argument is sent inline.
pub fn redis_command(port: u16, args: &[&str]) -> std::io::Result<String> {
    use std::io::{BufRead, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let command = if let [inline] = args {
        format!("{inline}\r\n")
    } else {
        let mut cmd = format!("*{}\r\n", args.len());
        for a in args {
            cmd.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        cmd
    };
    stream.write_all(command.as_bytes())?;
    let mut line = String::new();
    std::io::BufReader::new(stream).read_line(&mut line)?;
    Ok(line)
}

/// Kills (and reaps) a child process when dropped.
pub struct Kill(pub std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An HTTP answer read over TCP.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

impl HttpAnswer {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` over HTTP/1.1 on 127.0.0.1 (`Connection: close`).
pub fn http_get(port: u16, path: &str) -> std::io::Result<HttpAnswer> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {text:?}")))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line: {head:?}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(HttpAnswer {
        status,
        headers,
        body: body.to_string(),
    })
}

/// Waits until `GET /ping` answers 200 on `port`, or panics after `secs`.
pub fn wait_for_ping(port: u16, secs: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if http_get(port, "/ping").is_ok_and(|a| a.status == 200) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("nothing answered /ping on port {port} within {secs} s");
}

/// Sends a request through a router; returns status, headers and the body bytes.
pub async fn call_raw(
    router: &axum::Router,
    request: axum::http::Request<axum::body::Body>,
) -> (axum::http::StatusCode, axum::http::HeaderMap, Vec<u8>) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let response = router
        .clone()
        .oneshot(request)
        .await
        .unwrap_or_else(|e| match e {});
    let (parts, body) = response.into_parts();
    let bytes = body
        .collect()
        .await
        .unwrap_or_else(|e| panic!("body: {e}"))
        .to_bytes();
    (parts.status, parts.headers, bytes.to_vec())
}

/// Sends a request through a router; returns status, headers and the body as JSON.
pub async fn call(
    router: &axum::Router,
    request: axum::http::Request<axum::body::Body>,
) -> (
    axum::http::StatusCode,
    axum::http::HeaderMap,
    serde_json::Value,
) {
    let (status, headers, bytes) = call_raw(router, request).await;
    let parts = (status, headers);
    let json = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "{} body is not JSON ({e}): {}",
            parts.0,
            String::from_utf8_lossy(&bytes)
        )
    });
    (parts.0, parts.1, json)
}

/// A GET request.
pub fn get(uri: &str) -> axum::http::Request<axum::body::Body> {
    axum::http::Request::get(uri)
        .body(axum::body::Body::empty())
        .unwrap_or_else(|e| panic!("request {uri}: {e}"))
}

/// Headless Chromium for browser tests (the `browser` crate).
pub use browser::Browser;
