//! Shared helpers for the cross-crate integration tests: a real S3-compatible
//! server on loopback (s3s-fs, in-process) and synthetic datasets on disk.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use lineage::{S3Config, S3Store};

/// Access key of the test server.
pub const ACCESS_KEY: &str = "test";
/// Secret key of the test server.
pub const SECRET_KEY: &str = "testtest";

/// An s3s-fs server on 127.0.0.1 with signature checking, serving a temp dir.
/// Stops when dropped.
pub struct S3TestServer {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The directory behind it (`root/<bucket>/<key>` are plain files).
    pub root: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl S3TestServer {
    /// Starts the server with one bucket.
    pub fn start(bucket: &str) -> std::io::Result<Self> {
        let root = tempfile::tempdir()?;
        std::fs::create_dir_all(root.path().join(bucket))?;
        let fs = s3s_fs::FileSystem::new(root.path())
            .map_err(|e| std::io::Error::other(format!("s3s-fs: {e:?}")))?;
        let mut builder = s3s::service::S3ServiceBuilder::new(fs);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
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
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            let Ok((socket, _)) = accepted else { continue };
                            let conn = http.serve_connection(TokioIo::new(socket), service.clone()).into_owned();
                            tokio::spawn(async move { let _ = conn.await; });
                        }
                        _ = &mut rx => break,
                    }
                }
            });
        });
        Ok(Self {
            endpoint: format!("http://{addr}"),
            root,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// A store client for `bucket/prefix` on this server.
    pub fn store(&self, bucket: &str, prefix: &str) -> lineage::Result<S3Store> {
        S3Store::connect(S3Config {
            bucket: bucket.into(),
            prefix: prefix.into(),
            endpoint_url: Some(self.endpoint.clone()),
            region: Some("us-east-1".into()),
            force_path_style: true,
            credentials: Some((ACCESS_KEY.into(), SECRET_KEY.into())),
        })
    }

    /// A client with wrong credentials (to check that the server verifies signatures).
    pub fn store_with_secret(&self, bucket: &str, secret: &str) -> lineage::Result<S3Store> {
        S3Store::connect(S3Config {
            bucket: bucket.into(),
            prefix: String::new(),
            endpoint_url: Some(self.endpoint.clone()),
            region: Some("us-east-1".into()),
            force_path_style: true,
            credentials: Some((ACCESS_KEY.into(), secret.into())),
        })
    }
}

impl Drop for S3TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
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

/// Whether an artifact key holds timings (metrics, trial records), which
/// differ between otherwise identical runs.
pub fn is_timing_record(key: &str) -> bool {
    key.starts_with("metrics/") || key.ends_with("/trials.json")
}

/// Production artifacts of a smoke pipeline run on synthetic data, built once
/// per test binary, with the data's ground truth.
pub struct ServingFixture {
    /// The pipeline's output directory.
    pub dir: PathBuf,
    /// The synthetic data and its known price response.
    pub data: etl::synth::SynthData,
    _tmp: tempfile::TempDir,
}

/// The shared [`ServingFixture`] (the first caller builds it: a few seconds).
pub fn serving_fixture() -> &'static ServingFixture {
    static FIXTURE: std::sync::OnceLock<ServingFixture> = std::sync::OnceLock::new();
    FIXTURE.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let (raw, data) = write_synthetic(
            tmp.path(),
            "raw.csv",
            &etl::synth::SynthConfig {
                n_invoices: 800,
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("synthetic data: {e}"));
        let dir = tmp.path().join("run");
        let store = lineage::LocalStore::new(&dir).unwrap_or_else(|e| panic!("store: {e}"));
        pipeline::run(&pipeline::PipelineConfig::new(raw, &store, fast_params()))
            .unwrap_or_else(|e| panic!("pipeline: {e}"));
        ServingFixture {
            dir,
            data,
            _tmp: tmp,
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
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
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
        use std::io::{BufRead, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
        stream.write_all(format!("{command}\r\n").as_bytes())?;
        let mut line = String::new();
        std::io::BufReader::new(stream).read_line(&mut line)?;
        Ok(line)
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

/// Sends a request through a router; returns status, headers and the body as JSON.
pub async fn call(
    router: &axum::Router,
    request: axum::http::Request<axum::body::Body>,
) -> (
    axum::http::StatusCode,
    axum::http::HeaderMap,
    serde_json::Value,
) {
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
    let json = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "{} body is not JSON ({e}): {}",
            parts.status,
            String::from_utf8_lossy(&bytes)
        )
    });
    (parts.status, parts.headers, json)
}

/// A GET request.
pub fn get(uri: &str) -> axum::http::Request<axum::body::Body> {
    axum::http::Request::get(uri)
        .body(axum::body::Body::empty())
        .unwrap_or_else(|e| panic!("request {uri}: {e}"))
}
