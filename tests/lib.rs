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

/// The default params with a small model budget, so a whole pipeline run on
/// synthetic data takes seconds in a debug build.
pub fn fast_params() -> lineage::Params {
    let mut p = pipeline::default_params();
    let set = |p: &mut lineage::Params, k: &str, v: toml::Value| {
        if let Err(e) = p.set(k, v) {
            panic!("{k}: {e}");
        }
    };
    set(&mut p, "tuning.tuner", "grid".into());
    set(&mut p, "tuning.grid_points_per_dim", 2.into());
    set(&mut p, "tuning.grid_max_points", 2.into());
    set(&mut p, "models.tuning_rows", 2000.into());
    set(&mut p, "models.tuning_val_rows", 1000.into());
    set(&mut p, "models.tuning_mlp_epochs", 2.into());
    set(&mut p, "models.mlp_max_epochs", 3.into());
    set(&mut p, "models.svr_rows", 200.into());
    p
}

/// Whether an artifact key holds timings (metrics, trial records), which
/// differ between otherwise identical runs.
pub fn is_timing_record(key: &str) -> bool {
    key.starts_with("metrics/") || key.ends_with("/trials.json")
}
