//! The artifact store: one trait, a local-directory backend and an S3 backend.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

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
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".tmp-"))
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
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(LineageError::io(&path, e)),
        }
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
pub struct S3Store {
    client: aws_sdk_s3::Client,
    config: S3Config,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("config", &self.config)
            .finish()
    }
}

impl S3Store {
    /// Builds the client (no network traffic until the first call).
    pub fn connect(config: S3Config) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| LineageError::S3(format!("cannot start the S3 runtime: {e}")))?;
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
}
