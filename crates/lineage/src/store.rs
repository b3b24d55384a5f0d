//! The artifact store: one trait, a local-directory backend and an S3 backend.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use std::sync::Arc;
use std::time::Duration;

use crate::runlock::{LocalLock, LockHolder, Release, RunLock, now_unix_ms};
use crate::{LineageError, Result, content_hash};

/// Where pipeline artifacts live. Keys are relative, `/`-separated paths
/// (`features/features.parquet`); see [`validate_key`].
///
/// Every `put` is atomic: a reader sees the old object or the new one, never a
/// partial write. Implementations are blocking; call them from
/// `tokio::task::spawn_blocking` inside async code.
pub trait ArtifactStore: Send + Sync {
    /// A human-readable location, e.g. `/tmp/run` or `s3://bucket/prefix`.
    fn location(&self) -> String;
    /// Writes `bytes` under `key` atomically and returns the content hash.
    fn put(&self, key: &str, bytes: &[u8]) -> Result<String>;
    /// Reads the object under `key`; [`LineageError::NotFound`] when absent.
    fn get(&self, key: &str) -> Result<Vec<u8>>;
    /// The content hash (BLAKE3, hex) of the object, or `None` when absent.
    fn hash(&self, key: &str) -> Result<Option<String>>;
    /// All keys that start with `prefix`, sorted.
    fn list(&self, prefix: &str) -> Result<Vec<String>>;
    /// Removes the object; removing an absent key is not an error.
    fn delete(&self, key: &str) -> Result<()>;
    /// Whether an object exists under `key`.
    fn exists(&self, key: &str) -> Result<bool> {
        Ok(self.hash(key)?.is_some())
    }
    /// Takes the store's run lock for `command` (see [`crate::runlock`]):
    /// fails at once with [`LineageError::Locked`] when another run holds
    /// it. `lease` is the lifetime of an S3 lease between renewals' deadlines;
    /// a local lock lives as long as its holder. Stores that cannot be
    /// written (a release view) refuse.
    fn lock(&self, command: &str, lease: Duration) -> Result<RunLock> {
        let _ = (command, lease);
        Err(LineageError::Config(format!(
            "{} cannot be locked (read-only)",
            self.location()
        )))
    }
}

/// Checks that a key is a safe relative path: non-empty segments of
/// `[A-Za-z0-9._=@-]`, no `.`/`..` segments, no leading or trailing `/`.
///
/// ```
/// assert!(lineage::validate_key("features/features.parquet").is_ok());
/// assert!(lineage::validate_key("../etc/passwd").is_err());
/// ```
pub fn validate_key(key: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(LineageError::InvalidKey {
            key: key.to_string(),
            reason: why.to_string(),
        })
    };
    if key.is_empty() || key.len() > 512 {
        return bad("must be 1 to 512 characters");
    }
    for segment in key.split('/') {
        if segment.is_empty() {
            return bad("empty path segment");
        }
        if segment == "." || segment == ".." {
            return bad("relative segments are not allowed");
        }
        if !segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'=' | b'@'))
        {
            return bad("only letters, digits and . _ - = @ are allowed");
        }
    }
    Ok(())
}

/// Opens a store from a URI: `s3://bucket/prefix` gives an [`S3Store`]
/// configured from the standard AWS chain (see [`S3Config::from_env`]);
/// anything else is a local directory.
pub fn open_store(uri: &str) -> Result<Box<dyn ArtifactStore>> {
    if let Some(rest) = uri.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let config = S3Config::from_env(bucket, prefix)?;
        Ok(Box::new(S3Store::connect(config)?))
    } else {
        Ok(Box::new(LocalStore::new(uri)?))
    }
}

/// A store rooted at a local directory. Objects are plain files.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

/// Temporary files older than this are leftovers of a killed writer.
const STALE_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(600);

impl LocalStore {
    /// Creates the directory if needed, and removes temporary files that a
    /// killed writer left behind (older than ten minutes, so a live writer's
    /// file is never touched).
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(|e| LineageError::io(&root, e))?;
        let store = Self { root };
        store.sweep_stale_temp_files();
        Ok(store)
    }

    fn sweep_stale_temp_files(&self) {
        let Ok(files) = walk_files(&self.root) else {
            return;
        };
        for path in files {
            let temp = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".tmp-"));
            let old = temp
                && fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > STALE_TEMP_AGE);
            if old && fs::remove_file(&path).is_ok() {
                tracing::info!(file = %path.display(), "removed a stale temporary file");
            }
        }
    }

    /// The directory this store writes to.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &str) -> Result<PathBuf> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }
}

/// Every file below `root` (a missing directory has none).
fn walk_files(root: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(LineageError::io(&dir, e)),
        };
        for entry in entries {
            let path = entry.map_err(|e| LineageError::io(&dir, e))?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    Ok(out)
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory,
/// fsync, rename over the target, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| LineageError::io(dir, e))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(|e| LineageError::io(dir, e))?;
    tmp.write_all(bytes)
        .map_err(|e| LineageError::io(path, e))?;
    #[cfg(unix)]
    {
        // Temp files are created 0600; artifacts are ordinary files (0644, less umask).
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(0o644))
            .map_err(|e| LineageError::io(path, e))?;
    }
    tmp.as_file()
        .sync_all()
        .map_err(|e| LineageError::io(path, e))?;
    tmp.persist(path)
        .map_err(|e| LineageError::io(path, e.error))?;
    if let Ok(d) = fs::File::open(dir) {
        // Directory fsync makes the rename durable; not supported everywhere.
        let _ = d.sync_all();
    }
    Ok(())
}

impl ArtifactStore for LocalStore {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<String> {
        let path = self.path_of(key)?;
        write_atomic(&path, bytes)?;
        Ok(content_hash(bytes))
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        let path = self.path_of(key)?;
        match fs::read(&path) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(LineageError::NotFound(key.to_string()))
            }
            Err(e) => Err(LineageError::io(&path, e)),
        }
    }

    fn hash(&self, key: &str) -> Result<Option<String>> {
        let path = self.path_of(key)?;
        match fs::File::open(&path) {
            Ok(file) => {
                let mut hasher = blake3::Hasher::new();
                hasher
                    .update_reader(file)
                    .map_err(|e| LineageError::io(&path, e))?;
                Ok(Some(hasher.finalize().to_hex().to_string()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(LineageError::io(&path, e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for path in walk_files(&self.root)? {
            // Temporary files of writers and the run lock are not artifacts.
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                continue;
            }
            if let Ok(rel) = path.strip_prefix(&self.root) {
                let key = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                if key.starts_with(prefix) {
                    out.push(key);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.path_of(key)?;
        match fs::remove_file(&path) {
            Ok(()) => {
                // Empty directories left behind (a removed release) go too.
                let mut dir = path.parent();
                while let Some(d) = dir.filter(|d| *d != self.root.as_path()) {
                    if fs::remove_dir(d).is_err() {
                        break;
                    }
                    dir = d.parent();
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(LineageError::io(&path, e)),
        }
    }

    fn lock(&self, command: &str, _lease: Duration) -> Result<RunLock> {
        use std::io::{Read, Seek};
        let path = self.root.join(LOCAL_LOCK_FILE);
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| LineageError::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {
                let holder = LockHolder::current(command);
                let body = serde_json::to_vec(&holder).unwrap_or_default();
                file.set_len(0)
                    .and_then(|()| file.rewind())
                    .and_then(|()| file.write_all(&body))
                    .and_then(|()| file.sync_data())
                    .map_err(|e| LineageError::io(&path, e))?;
                Ok(RunLock::new(holder, Box::new(LocalLock(file))))
            }
            Err(fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                Err(locked_error(
                    self.location(),
                    serde_json::from_str(&text).ok(),
                ))
            }
            Err(fs::TryLockError::Error(e)) => Err(LineageError::io(&path, e)),
        }
    }
}

/// The file a local store's run lock lives in (hidden from [`ArtifactStore::list`]).
const LOCAL_LOCK_FILE: &str = ".run.lock";

fn lease_ms(lease: Duration) -> u64 {
    u64::try_from(lease.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Key of the S3 run lease.
pub const LEASE_KEY: &str = "locks/run.json";

fn locked_error(location: String, holder: Option<LockHolder>) -> LineageError {
    match holder {
        Some(h) => LineageError::Locked {
            location,
            holder: h.describe(),
            since: crate::runlock::format_unix(h.since_unix),
        },
        None => LineageError::Locked {
            location,
            holder: "another process (it has not said who yet)".into(),
            since: "just now".into(),
        },
    }
}

/// Connection settings for [`S3Store`].
#[derive(Debug, Clone, Default)]
pub struct S3Config {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix inside the bucket (no leading or trailing `/`).
    pub prefix: String,
    /// Endpoint override for S3-compatible servers (MinIO, s3s-fs, ...).
    pub endpoint_url: Option<String>,
    /// Region; the AWS chain's region (or `us-east-1`) when `None`.
    pub region: Option<String>,
    /// Path-style addressing (`http://host/bucket/key`), needed by most
    /// S3-compatible servers.
    pub force_path_style: bool,
    /// Static credentials `(access key, secret key)`; the AWS default chain
    /// (environment, profile, IMDS, ...) when `None`.
    pub credentials: Option<(String, String)>,
}

impl S3Config {
    /// Reads the endpoint from `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`
    /// (path-style is then on unless `S3_FORCE_PATH_STYLE=false`); credentials and
    /// region come from the standard AWS chain.
    pub fn from_env(bucket: &str, prefix: &str) -> Result<Self> {
        if bucket.is_empty() {
            return Err(LineageError::Config("s3:// URI has no bucket".into()));
        }
        let endpoint_url = std::env::var("AWS_ENDPOINT_URL_S3")
            .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
            .ok()
            .filter(|s| !s.is_empty());
        let force_path_style = match std::env::var("S3_FORCE_PATH_STYLE") {
            Ok(v) => v != "false" && v != "0",
            Err(_) => endpoint_url.is_some(),
        };
        Ok(Self {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            endpoint_url,
            region: None,
            force_path_style,
            credentials: None,
        })
    }
}

const HASH_METADATA: &str = "blake3";

/// A store in an S3 bucket under a prefix. Each object carries its BLAKE3
/// content hash as user metadata, so staleness checks need a HEAD, not a GET.
///
/// The store is blocking. It runs the SDK on a small runtime of its own, and
/// is safe to call (and to drop) from inside another tokio runtime: calls made
/// there run on a helper thread instead of blocking the caller's runtime.
#[derive(Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    config: S3Config,
    runtime: Arc<OwnedRuntime>,
}

/// A runtime that shuts down in the background when dropped, so dropping it
/// inside an async context does not panic.
struct OwnedRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl OwnedRuntime {
    fn block_on<F>(&self, future: F) -> F::Output
    where
        F: std::future::Future + Send,
        F::Output: Send,
    {
        let Some(rt) = self.0.as_ref() else {
            unreachable!("the runtime is only taken when dropped")
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            // Blocking inside a runtime panics: run on a helper thread.
            std::thread::scope(|s| match s.spawn(|| rt.block_on(future)).join() {
                Ok(v) => v,
                Err(panic) => std::panic::resume_unwind(panic),
            })
        } else {
            rt.block_on(future)
        }
    }
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("config", &self.config)
            .finish()
    }
}

/// The outcome of a conditional put.
enum Conditional {
    /// Written; the new ETag.
    Written(String),
    /// The condition did not hold (HTTP 412 or 409).
    Failed,
}

impl S3Store {
    /// Builds the client (no network traffic until the first call). Safe to
    /// call from inside an async context.
    pub fn connect(config: S3Config) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| LineageError::S3(format!("cannot start the S3 runtime: {e}")))?;
        let runtime = Arc::new(OwnedRuntime(Some(runtime)));
        let client = runtime.block_on(async {
            let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
            let region = config.region.clone();
            loader = loader.region(
                aws_config::meta::region::RegionProviderChain::first_try(
                    region.map(aws_sdk_s3::config::Region::new),
                )
                .or_default_provider()
                .or_else("us-east-1"),
            );
            if let Some(url) = &config.endpoint_url {
                loader = loader.endpoint_url(url);
            }
            if let Some((ak, sk)) = &config.credentials {
                loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
                    ak, sk, None, None, "static",
                ));
            }
            let sdk = loader.load().await;
            let s3 = aws_sdk_s3::config::Builder::from(&sdk)
                .force_path_style(config.force_path_style)
                .build();
            aws_sdk_s3::Client::from_conf(s3)
        });
        Ok(Self {
            client,
            config,
            runtime,
        })
    }

    fn object_key(&self, key: &str) -> Result<String> {
        validate_key(key)?;
        Ok(if self.config.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{}", self.config.prefix, key)
        })
    }

    fn s3_err<E: std::fmt::Display>(&self, op: &str, key: &str, e: E) -> LineageError {
        LineageError::S3(format!(
            "{op} s3://{}/{}: {e}",
            self.config.bucket,
            self.object_key(key).unwrap_or_default()
        ))
    }

    /// Puts `bytes` only if no object exists (`None`) or only if the object's
    /// ETag is `etag` (`Some`).
    fn put_conditional(&self, key: &str, bytes: &[u8], etag: Option<&str>) -> Result<Conditional> {
        let object_key = self.object_key(key)?;
        let mut req = self
            .client
            .put_object()
            .bucket(&self.config.bucket)
            .key(&object_key)
            .metadata(HASH_METADATA, content_hash(bytes))
            .body(aws_sdk_s3::primitives::ByteStream::from(bytes.to_vec()));
        req = match etag {
            None => req.if_none_match("*"),
            Some(tag) => req.if_match(tag),
        };
        match self.runtime.block_on(req.send()) {
            Ok(out) => Ok(Conditional::Written(
                out.e_tag().unwrap_or_default().to_string(),
            )),
            Err(e) => {
                let status = e.raw_response().map(|r| r.status().as_u16());
                if matches!(status, Some(412 | 409)) {
                    Ok(Conditional::Failed)
                } else {
                    Err(self.s3_err("conditional put", key, display_sdk_error(&e)))
                }
            }
        }
    }

    /// The object and its ETag, or `None` when absent.
    fn get_with_etag(&self, key: &str) -> Result<Option<(Vec<u8>, String)>> {
        let object_key = self.object_key(key)?;
        self.runtime.block_on(async {
            let out = self
                .client
                .get_object()
                .bucket(&self.config.bucket)
                .key(&object_key)
                .send()
                .await;
            match out {
                Ok(o) => {
                    let etag = o.e_tag().unwrap_or_default().to_string();
                    let data = o
                        .body
                        .collect()
                        .await
                        .map_err(|e| self.s3_err("get", key, e))?;
                    Ok(Some((data.into_bytes().to_vec(), etag)))
                }
                Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
                Err(e) => Err(self.s3_err("get", key, display_sdk_error(&e))),
            }
        })
    }

    /// Takes the lease, or takes over an expired one.
    fn acquire_lease(&self, holder: &LockHolder, lease: Duration) -> Result<String> {
        for _ in 0..5 {
            let mut mine = holder.clone();
            mine.expires_at_unix_ms = Some(now_unix_ms() + lease_ms(lease));
            let body = serde_json::to_vec(&mine).unwrap_or_default();
            if let Conditional::Written(etag) = self.put_conditional(LEASE_KEY, &body, None)? {
                return Ok(etag);
            }
            let Some((bytes, etag)) = self.get_with_etag(LEASE_KEY)? else {
                continue; // released in between: try again
            };
            let existing: Option<LockHolder> = serde_json::from_slice(&bytes).ok();
            let expired = existing
                .as_ref()
                .is_none_or(|h| h.expires_at_unix_ms.is_none_or(|t| t <= now_unix_ms()));
            if !expired {
                return Err(locked_error(self.location(), existing));
            }
            if let Conditional::Written(new_etag) =
                self.put_conditional(LEASE_KEY, &body, Some(&etag))?
            {
                tracing::warn!(
                    previous = %existing.map_or_else(|| "an unreadable lease".into(), |h| h.describe()),
                    "took over an expired run lease"
                );
                return Ok(new_etag);
            }
        }
        Err(LineageError::S3(format!(
            "could not take the run lease at {}/{LEASE_KEY}: it changed hands repeatedly",
            self.location()
        )))
    }
}

/// A held S3 lease: a thread renews it; dropping it stops the thread and
/// deletes the lease if it is still this holder's.
struct S3Lease {
    stop: Option<std::sync::mpsc::Sender<()>>,
    renewer: Option<std::thread::JoinHandle<()>>,
    store: S3Store,
    token: String,
}

impl Release for S3Lease {}

impl Drop for S3Lease {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.renewer.take() {
            let _ = t.join();
        }
        match self.store.get_with_etag(LEASE_KEY) {
            Ok(Some((bytes, _))) => {
                let ours = serde_json::from_slice::<LockHolder>(&bytes)
                    .is_ok_and(|h| h.token == self.token);
                if ours && let Err(e) = self.store.delete(LEASE_KEY) {
                    tracing::warn!(error = %e, "could not release the run lease; it expires on its own");
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not release the run lease; it expires on its own")
            }
        }
    }
}

fn display_sdk_error<E: std::error::Error>(e: &E) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

impl ArtifactStore for S3Store {
    fn location(&self) -> String {
        format!("s3://{}/{}", self.config.bucket, self.config.prefix)
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<String> {
        let object_key = self.object_key(key)?;
        let hash = content_hash(bytes);
        let body = aws_sdk_s3::primitives::ByteStream::from(bytes.to_vec());
        self.runtime
            .block_on(
                self.client
                    .put_object()
                    .bucket(&self.config.bucket)
                    .key(&object_key)
                    .metadata(HASH_METADATA, &hash)
                    .body(body)
                    .send(),
            )
            .map_err(|e| self.s3_err("put", key, display_sdk_error(&e)))?;
        Ok(hash)
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        let object_key = self.object_key(key)?;
        self.runtime.block_on(async {
            let out = self
                .client
                .get_object()
                .bucket(&self.config.bucket)
                .key(&object_key)
                .send()
                .await;
            match out {
                Ok(o) => {
                    let data = o
                        .body
                        .collect()
                        .await
                        .map_err(|e| self.s3_err("get", key, e))?;
                    Ok(data.into_bytes().to_vec())
                }
                Err(e) => {
                    if e.as_service_error().is_some_and(|s| s.is_no_such_key()) {
                        Err(LineageError::NotFound(key.to_string()))
                    } else {
                        Err(self.s3_err("get", key, display_sdk_error(&e)))
                    }
                }
            }
        })
    }

    fn hash(&self, key: &str) -> Result<Option<String>> {
        let object_key = self.object_key(key)?;
        let head = self.runtime.block_on(
            self.client
                .head_object()
                .bucket(&self.config.bucket)
                .key(&object_key)
                .send(),
        );
        match head {
            Ok(h) => {
                if let Some(hash) = h.metadata().and_then(|m| m.get(HASH_METADATA)) {
                    Ok(Some(hash.clone()))
                } else {
                    // Written by someone else: hash the content.
                    Ok(Some(content_hash(&self.get(key)?)))
                }
            }
            Err(e) => {
                if e.as_service_error().is_some_and(|s| s.is_not_found()) {
                    Ok(None)
                } else {
                    Err(self.s3_err("head", key, display_sdk_error(&e)))
                }
            }
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let base = if self.config.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.config.prefix)
        };
        let full_prefix = format!("{base}{prefix}");
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut req = self
                .client
                .list_objects_v2()
                .bucket(&self.config.bucket)
                .prefix(&full_prefix);
            if let Some(t) = &token {
                req = req.continuation_token(t);
            }
            let page = self
                .runtime
                .block_on(req.send())
                .map_err(|e| self.s3_err("list", prefix, display_sdk_error(&e)))?;
            for obj in page.contents() {
                if let Some(k) = obj.key().and_then(|k| k.strip_prefix(&base)) {
                    keys.push(k.to_string());
                }
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        keys.sort();
        Ok(keys)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let object_key = self.object_key(key)?;
        self.runtime
            .block_on(
                self.client
                    .delete_object()
                    .bucket(&self.config.bucket)
                    .key(&object_key)
                    .send(),
            )
            .map_err(|e| self.s3_err("delete", key, display_sdk_error(&e)))?;
        Ok(())
    }

    fn lock(&self, command: &str, lease: Duration) -> Result<RunLock> {
        let holder = LockHolder::current(command);
        let mut etag = self.acquire_lease(&holder, lease)?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let store = self.clone();
        let renewing = holder.clone();
        let every = (lease / 3).max(Duration::from_millis(100));
        let renewer = std::thread::spawn(move || {
            // Renew until told to stop (the sender is dropped).
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every)
            {
                let mut body = renewing.clone();
                body.expires_at_unix_ms = Some(now_unix_ms() + lease_ms(lease));
                let bytes = serde_json::to_vec(&body).unwrap_or_default();
                match store.put_conditional(LEASE_KEY, &bytes, Some(&etag)) {
                    Ok(Conditional::Written(new)) => etag = new,
                    Ok(Conditional::Failed) => {
                        tracing::error!("lost the run lease: another run took it over");
                        return;
                    }
                    Err(e) => tracing::warn!(error = %e, "could not renew the run lease; retrying"),
                }
            }
        });
        let guard = S3Lease {
            stop: Some(stop),
            renewer: Some(renewer),
            store: self.clone(),
            token: holder.token.clone(),
        };
        Ok(RunLock::new(holder, Box::new(guard)))
    }
}
