//! The store client: blobs in and out of an object store, verified.
//!
//! ```text
//!  put_file ──hash (1 MiB reads)──► HEAD cas/sha256/<hex> ──absent──► PUT (multipart above 16 MiB)
//!                                                          └─present─► skip
//!  get_to_file ─► local store?  copy the blob file in place, verify the copy
//!              └► blob cache?   copy from the cache, verify the copy
//!              └► GET, hash while writing a temp file ─► verify ─► cache ─► copy ─► rename to dest
//! ```
//!
//! Big files are hashed in a first pass and uploaded in a second, so a blob
//! the store already has is never sent (content addressing needs the digest
//! before the key). The second pass hashes again and aborts the upload if
//! the file changed in between.
//!
//! A filesystem store is read in place (its blob files are the cache), so
//! only remote and in-memory stores use the local blob cache.

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};

use super::cache::BlobCache;
use super::error::{CasError, join_error};
use super::hash::hash_file;
use crate::digest::{Digest, Hasher};

/// Files above this size are uploaded in parts.
pub const MULTIPART_THRESHOLD: u64 = 16 << 20;
/// Files up to this size are read and hashed on the calling task.
const INLINE_READ: u64 = 64 << 10;
/// Size of one multipart part (S3 wants at least 5 MiB).
pub const PART_SIZE: usize = 8 << 20;
/// Parts of one upload in flight at once.
const PARTS_IN_FLIGHT: usize = 4;
/// Multipart uploads in flight at once per store; with the parts above this
/// bounds the memory of big uploads to about 4 x 5 x 8 MiB.
const MULTIPART_UPLOADS: usize = 4;
/// Blobs up to this size are fetched into memory in one piece; larger ones
/// are streamed to disk.
const SMALL_BLOB: u64 = 1 << 20;
/// Default bound of the local blob cache.
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 2 << 30;

/// How to open a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The local blob cache directory; `None` means
    /// [`StoreOptions::default_cache_dir`].
    pub cache_dir: Option<PathBuf>,
    /// Bound of the local blob cache in bytes; 0 disables the cache.
    pub cache_max_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            cache_dir: None,
            cache_max_bytes: DEFAULT_CACHE_MAX_BYTES,
        }
    }
}

impl StoreOptions {
    /// `$XDG_CACHE_HOME/kruntimes/blobs`, else `~/.cache/kruntimes/blobs`.
    pub fn default_cache_dir() -> PathBuf {
        cache_home().join("blobs")
    }
}

/// What a store has transferred since it was opened (counters shared by all
/// clones of a [`Store`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UploadStats {
    /// Blobs sent to the store.
    pub blobs_uploaded: u64,
    /// Bytes sent to the store.
    pub bytes_uploaded: u64,
    /// Blobs not sent because the store had them.
    pub blobs_skipped: u64,
    /// Bytes fetched from the store (not from the local cache).
    pub bytes_downloaded: u64,
    /// Blobs served from the local cache.
    pub cache_hits: u64,
    /// Blobs fetched from the store.
    pub blobs_downloaded: u64,
    /// Blobs sent with a multipart upload.
    pub multipart_uploads: u64,
}

impl UploadStats {
    /// What happened between `before` and `self`.
    pub fn since(&self, before: &UploadStats) -> UploadStats {
        UploadStats {
            blobs_uploaded: self.blobs_uploaded.saturating_sub(before.blobs_uploaded),
            bytes_uploaded: self.bytes_uploaded.saturating_sub(before.bytes_uploaded),
            blobs_skipped: self.blobs_skipped.saturating_sub(before.blobs_skipped),
            bytes_downloaded: self
                .bytes_downloaded
                .saturating_sub(before.bytes_downloaded),
            cache_hits: self.cache_hits.saturating_sub(before.cache_hits),
            blobs_downloaded: self
                .blobs_downloaded
                .saturating_sub(before.blobs_downloaded),
            multipart_uploads: self
                .multipart_uploads
                .saturating_sub(before.multipart_uploads),
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    blobs_uploaded: AtomicU64,
    bytes_uploaded: AtomicU64,
    blobs_skipped: AtomicU64,
    bytes_downloaded: AtomicU64,
    cache_hits: AtomicU64,
    blobs_downloaded: AtomicU64,
    multipart_uploads: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// A content-addressed store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    /// What the user sees, prefix included.
    url: String,
    backend: Arc<dyn ObjectStore>,
    /// Key prefix inside the bucket (empty for most stores).
    prefix: ObjectPath,
    /// Root directory of a filesystem store, whose blobs are read in place.
    local_root: Option<PathBuf>,
    cache: Option<BlobCache>,
    multipart: Semaphore,
    stats: Counters,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("url", &self.inner.url)
            .field("cache", &self.inner.cache.as_ref().map(BlobCache::dir))
            .finish_non_exhaustive()
    }
}

/// `$XDG_CACHE_HOME/kruntimes`, else `~/.cache/kruntimes`, else a directory
/// under the system temp dir.
fn cache_home() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })
        .unwrap_or_else(std::env::temp_dir);
    base.join("kruntimes")
}

impl Store {
    /// Opens a store by URL:
    ///
    /// - `memory://`: in this process only (tests);
    /// - a filesystem path or `file:///abs/path`: a directory, created if missing;
    /// - `s3://bucket[/prefix]`: S3 or a compatible server, configured from the
    ///   environment (`AWS_ENDPOINT_URL` or `AWS_ENDPOINT`, `AWS_REGION`,
    ///   `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, and
    ///   `AWS_ALLOW_HTTP=true` for a plain-http endpoint);
    /// - `gs://bucket[/prefix]` and `az://container[/prefix]`, when built with
    ///   the `gcp` or `azure` feature.
    pub fn open(url: &str, options: StoreOptions) -> Result<Store, CasError> {
        let url = url.trim();
        let invalid = |reason: &str| CasError::InvalidUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        if url.is_empty() {
            return Err(invalid("the URL is empty"));
        }
        if let Some(rest) = url.strip_prefix("memory://") {
            if !rest.is_empty() {
                return Err(invalid("`memory://` takes no path"));
            }
            let backend = Arc::new(object_store::memory::InMemory::new());
            return Ok(Self::build("memory://".into(), backend, "", None, &options));
        }
        if let Some(rest) = url.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(invalid("expected `file:///absolute/path`"));
            }
            return Self::open_dir(Path::new(rest), &options);
        }
        if url.starts_with("s3://") {
            return Self::open_with(url, &[], options);
        }
        if let Some(rest) = url.strip_prefix("gs://") {
            let (bucket, prefix) =
                split_bucket(rest).ok_or_else(|| invalid("expected `gs://bucket[/prefix]`"))?;
            return Self::open_gcs(url, bucket, prefix, &options);
        }
        if let Some(rest) = url.strip_prefix("az://") {
            let (container, prefix) =
                split_bucket(rest).ok_or_else(|| invalid("expected `az://container[/prefix]`"))?;
            return Self::open_azure(url, container, prefix, &options);
        }
        if let Some((scheme, _)) = url.split_once("://") {
            return Err(invalid(&format!(
                "unsupported scheme `{scheme}`; use a path, `file://`, `memory://`, `s3://`, `gs://` or `az://`"
            )));
        }
        Self::open_dir(Path::new(url), &options)
    }

    /// Like [`Store::open`], with extra settings for the backend (such as
    /// `AWS_ENDPOINT` or `AWS_REGION` from a cluster's configuration) used
    /// where this process's environment does not set them. Settings that do
    /// not apply to the URL's scheme are ignored.
    pub fn open_with(
        url: &str,
        settings: &[(String, String)],
        options: StoreOptions,
    ) -> Result<Store, CasError> {
        let url = url.trim();
        let Some(rest) = url.strip_prefix("s3://") else {
            return Self::open(url, options);
        };
        let (bucket, prefix) = split_bucket(rest).ok_or_else(|| CasError::InvalidUrl {
            url: url.to_owned(),
            reason: "expected `s3://bucket[/prefix]`".into(),
        })?;
        let mut builder = object_store::aws::AmazonS3Builder::from_env();
        for (k, v) in settings {
            if std::env::var_os(k).is_some() {
                continue;
            }
            let lower = k.to_ascii_lowercase();
            let key = lower
                .parse::<object_store::aws::AmazonS3ConfigKey>()
                .or_else(|_| {
                    lower
                        .trim_start_matches("aws_")
                        .parse::<object_store::aws::AmazonS3ConfigKey>()
                });
            if let Ok(key) = key {
                builder = builder.with_config(key, v);
            }
        }
        let s3 = builder
            .with_bucket_name(bucket)
            .build()
            .map_err(|source| CasError::Store {
                url: url.to_owned(),
                source,
            })?;
        Ok(Self::build(
            bucket_url("s3", bucket, prefix),
            Arc::new(s3),
            prefix,
            None,
            &options,
        ))
    }

    /// Opens an S3 store with explicit settings instead of the environment.
    #[allow(clippy::too_many_arguments)]
    pub fn open_s3(
        bucket: &str,
        prefix: &str,
        endpoint: &str,
        region: &str,
        key_id: &str,
        secret: &str,
        allow_http: bool,
        options: StoreOptions,
    ) -> Result<Store, CasError> {
        let prefix = prefix.trim_matches('/');
        let url = bucket_url("s3", bucket, prefix);
        if bucket.is_empty() || bucket.contains('/') {
            return Err(CasError::InvalidUrl {
                url,
                reason: "the bucket name is empty or has a `/`".into(),
            });
        }
        let s3 = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_endpoint(endpoint)
            .with_region(region)
            .with_access_key_id(key_id)
            .with_secret_access_key(secret)
            .with_allow_http(allow_http)
            .build()
            .map_err(|source| CasError::Store {
                url: url.clone(),
                source,
            })?;
        Ok(Self::build(url, Arc::new(s3), prefix, None, &options))
    }

    /// `$KRT_STORE` if set, else `$XDG_CACHE_HOME/kruntimes/store` or
    /// `~/.cache/kruntimes/store`.
    pub fn default_url() -> String {
        match std::env::var("KRT_STORE") {
            Ok(v) if !v.trim().is_empty() => v,
            _ => cache_home().join("store").display().to_string(),
        }
    }

    #[cfg(feature = "gcp")]
    fn open_gcs(
        url: &str,
        bucket: &str,
        prefix: &str,
        options: &StoreOptions,
    ) -> Result<Store, CasError> {
        let gcs = object_store::gcp::GoogleCloudStorageBuilder::from_env()
            .with_bucket_name(bucket)
            .build()
            .map_err(|source| CasError::Store {
                url: url.to_owned(),
                source,
            })?;
        Ok(Self::build(
            bucket_url("gs", bucket, prefix),
            Arc::new(gcs),
            prefix,
            None,
            options,
        ))
    }

    #[cfg(not(feature = "gcp"))]
    fn open_gcs(url: &str, _: &str, _: &str, _: &StoreOptions) -> Result<Store, CasError> {
        Err(CasError::FeatureDisabled {
            url: url.to_owned(),
            feature: "gcp",
        })
    }

    #[cfg(feature = "azure")]
    fn open_azure(
        url: &str,
        container: &str,
        prefix: &str,
        options: &StoreOptions,
    ) -> Result<Store, CasError> {
        let az = object_store::azure::MicrosoftAzureBuilder::from_env()
            .with_container_name(container)
            .build()
            .map_err(|source| CasError::Store {
                url: url.to_owned(),
                source,
            })?;
        Ok(Self::build(
            bucket_url("az", container, prefix),
            Arc::new(az),
            prefix,
            None,
            options,
        ))
    }

    #[cfg(not(feature = "azure"))]
    fn open_azure(url: &str, _: &str, _: &str, _: &StoreOptions) -> Result<Store, CasError> {
        Err(CasError::FeatureDisabled {
            url: url.to_owned(),
            feature: "azure",
        })
    }

    fn open_dir(dir: &Path, options: &StoreOptions) -> Result<Store, CasError> {
        let dir = std::path::absolute(dir).map_err(|e| CasError::io(dir, e))?;
        fs::create_dir_all(&dir).map_err(|e| CasError::io(&dir, e))?;
        let url = format!("file://{}", dir.display());
        let local =
            object_store::local::LocalFileSystem::new_with_prefix(&dir).map_err(|source| {
                CasError::Store {
                    url: url.clone(),
                    source,
                }
            })?;
        // Canonical, like LocalFileSystem's own root, so in-place reads and
        // object_store writes agree on the files.
        let root = fs::canonicalize(&dir).map_err(|e| CasError::io(&dir, e))?;
        Ok(Self::build(url, Arc::new(local), "", Some(root), options))
    }

    fn build(
        url: String,
        backend: Arc<dyn ObjectStore>,
        prefix: &str,
        local_root: Option<PathBuf>,
        options: &StoreOptions,
    ) -> Store {
        let cache = if local_root.is_some() || options.cache_max_bytes == 0 {
            None
        } else {
            let dir = options
                .cache_dir
                .clone()
                .unwrap_or_else(StoreOptions::default_cache_dir);
            match BlobCache::open(&dir, options.cache_max_bytes) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot open the local blob cache; continuing without it");
                    None
                }
            }
        };
        let prefix = ObjectPath::from(prefix.trim_matches('/'));
        Store {
            inner: Arc::new(Inner {
                url,
                backend,
                prefix,
                local_root,
                cache,
                multipart: Semaphore::new(MULTIPART_UPLOADS),
                stats: Counters::default(),
            }),
        }
    }

    /// The store's URL.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// The local blob cache directory, if the store uses one.
    pub fn cache_dir(&self) -> Option<&Path> {
        self.inner.cache.as_ref().map(BlobCache::dir)
    }

    /// Transfer counters since the store was opened.
    pub fn stats(&self) -> UploadStats {
        let s = &self.inner.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        UploadStats {
            blobs_uploaded: get(&s.blobs_uploaded),
            bytes_uploaded: get(&s.bytes_uploaded),
            blobs_skipped: get(&s.blobs_skipped),
            bytes_downloaded: get(&s.bytes_downloaded),
            cache_hits: get(&s.cache_hits),
            blobs_downloaded: get(&s.blobs_downloaded),
            multipart_uploads: get(&s.multipart_uploads),
        }
    }

    /// The object store underneath.
    pub(crate) fn backend(&self) -> &Arc<dyn ObjectStore> {
        &self.inner.backend
    }

    /// Root directory of a filesystem store.
    pub(crate) fn local_root(&self) -> Option<&Path> {
        self.inner.local_root.as_deref()
    }

    /// Key prefix inside the bucket.
    pub(crate) fn prefix(&self) -> &ObjectPath {
        &self.inner.prefix
    }

    /// The key of a blob relative to the store's prefix.
    fn blob_key(d: &Digest) -> String {
        format!("cas/sha256/{}", d.hex())
    }

    fn location(&self, d: &Digest) -> ObjectPath {
        self.inner
            .prefix
            .clone()
            .join("cas")
            .join("sha256")
            .join(d.hex().as_str())
    }

    /// The blob's full URL, for messages.
    pub fn object_url(&self, d: &Digest) -> String {
        let url = &self.inner.url;
        let sep = if url.ends_with('/') { "" } else { "/" };
        format!("{url}{sep}{}", Self::blob_key(d))
    }

    fn store_err(&self, d: &Digest, source: object_store::Error) -> CasError {
        match source {
            object_store::Error::NotFound { .. } => CasError::NotFound { digest: *d },
            source @ (object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }) => CasError::AccessDenied {
                url: self.object_url(d),
                source,
            },
            source => CasError::Store {
                url: self.object_url(d),
                source,
            },
        }
    }

    fn mismatch(&self, expected: &Digest, actual: Digest) -> CasError {
        CasError::DigestMismatch {
            object: self.object_url(expected),
            expected: *expected,
            actual,
        }
    }

    /// Where a filesystem store keeps the blob.
    fn local_path(&self, d: &Digest) -> Option<PathBuf> {
        self.inner
            .local_root
            .as_ref()
            .map(|r| r.join("cas").join("sha256").join(d.hex()))
    }

    /// Whether the store has the blob.
    pub async fn contains(&self, d: &Digest) -> Result<bool, CasError> {
        // A filesystem store answers with one stat, without a round trip
        // through object_store's blocking pool: cache lookups and source
        // snapshots ask this for every file.
        if let Some(p) = self.local_path(d) {
            return match fs::metadata(&p) {
                Ok(m) => Ok(m.is_file()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(CasError::io(p, e)),
            };
        }
        match self.inner.backend.head(&self.location(d)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.store_err(d, e)),
        }
    }

    /// Stores bytes; does nothing (but count a skip) if the store has them.
    pub async fn put_bytes(&self, bytes: Bytes) -> Result<Digest, CasError> {
        let d = if bytes.len() as u64 > SMALL_BLOB {
            let b = bytes.clone();
            tokio::task::spawn_blocking(move || Digest::of(&b))
                .await
                .map_err(join_error)?
        } else {
            Digest::of(&bytes)
        };
        let uploaded = self.put_if_absent(d, bytes.clone()).await?;
        // Small objects (manifests, logs) are often read back soon: keep a copy.
        if uploaded && let Some(cache) = &self.inner.cache {
            let cache_ok = cache.accepts(bytes.len() as u64);
            let store = self.clone();
            if cache_ok {
                let _ = tokio::task::spawn_blocking(move || store.cache_bytes(&d, &bytes)).await;
            }
        }
        Ok(d)
    }

    /// Uploads `bytes` under `d` unless the store has it. Returns whether it
    /// uploaded.
    async fn put_if_absent(&self, d: Digest, bytes: Bytes) -> Result<bool, CasError> {
        if self.contains(&d).await? {
            add(&self.inner.stats.blobs_skipped, 1);
            return Ok(false);
        }
        let len = bytes.len() as u64;
        self.inner
            .backend
            .put(&self.location(&d), PutPayload::from(bytes))
            .await
            .map_err(|e| self.store_err(&d, e))?;
        add(&self.inner.stats.blobs_uploaded, 1);
        add(&self.inner.stats.bytes_uploaded, len);
        Ok(true)
    }

    /// Stores a file's content, streaming it (never whole in memory above
    /// [`MULTIPART_THRESHOLD`]); skips the upload if the store has it.
    pub async fn put_file(&self, path: &Path) -> Result<Digest, CasError> {
        self.put_file_sized(path).await.map(|(d, _)| d)
    }

    /// [`Store::put_file`], also returning the number of bytes hashed.
    pub(crate) async fn put_file_sized(&self, path: &Path) -> Result<(Digest, u64), CasError> {
        // A stat is one fast syscall; not worth a blocking-pool round trip.
        let meta = fs::metadata(path).map_err(|e| CasError::io(path, e))?;
        if meta.len() <= INLINE_READ {
            // Small files (most logs, manifests, many sources) are read and
            // hashed in place: two thread hand-offs would cost more.
            let v = fs::read(path).map_err(|e| CasError::io(path, e))?;
            let d = Digest::of(&v);
            let len = v.len() as u64;
            self.put_if_absent(d, Bytes::from(v)).await?;
            return Ok((d, len));
        }
        if meta.len() <= MULTIPART_THRESHOLD {
            let p = path.to_path_buf();
            let (bytes, d) = tokio::task::spawn_blocking(move || {
                fs::read(&p).map(|v| {
                    let d = Digest::of(&v);
                    (Bytes::from(v), d)
                })
            })
            .await
            .map_err(join_error)?
            .map_err(|e| CasError::io(path, e))?;
            let len = bytes.len() as u64;
            self.put_if_absent(d, bytes).await?;
            return Ok((d, len));
        }
        let p = path.to_path_buf();
        let (d, len) = tokio::task::spawn_blocking(move || hash_file(&p))
            .await
            .map_err(join_error)?
            .map_err(|e| CasError::io(path, e))?;
        if self.contains(&d).await? {
            add(&self.inner.stats.blobs_skipped, 1);
            return Ok((d, len));
        }
        self.upload_multipart(path, d).await?;
        Ok((d, len))
    }

    /// Second pass over a big file: upload it in parts, hashing again so a
    /// file that changed since the first pass is not stored under the wrong
    /// digest.
    async fn upload_multipart(&self, path: &Path, d: Digest) -> Result<(), CasError> {
        let _permit = self
            .inner
            .multipart
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let upload = self
            .inner
            .backend
            .put_multipart(&self.location(&d))
            .await
            .map_err(|e| self.store_err(&d, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let (tx, mut rx) = mpsc::channel::<Bytes>(1);
        let p = path.to_path_buf();
        let reader = tokio::task::spawn_blocking(move || -> io::Result<(Digest, u64)> {
            let mut f = fs::File::open(&p)?;
            let mut hasher = Hasher::new();
            let mut len = 0u64;
            loop {
                let mut buf = vec![0u8; PART_SIZE];
                let n = read_full(&mut f, &mut buf)?;
                if n == 0 {
                    break;
                }
                buf.truncate(n);
                hasher.update(&buf);
                len += n as u64;
                if tx.blocking_send(Bytes::from(buf)).is_err() {
                    break; // the uploader gave up; its error wins
                }
            }
            Ok((hasher.finish(), len))
        });
        let mut sent = 0u64;
        while let Some(part) = rx.recv().await {
            if let Err(e) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
                drop(rx);
                let _ = writer.abort().await;
                let _ = reader.await;
                return Err(self.store_err(&d, e));
            }
            sent += part.len() as u64;
            writer.put(part);
        }
        let (actual, _) = match reader.await.map_err(join_error)? {
            Ok(r) => r,
            Err(e) => {
                let _ = writer.abort().await;
                return Err(CasError::io(path, e));
            }
        };
        if actual != d {
            let _ = writer.abort().await;
            return Err(CasError::FileChanged {
                path: path.to_path_buf(),
                expected: d,
                actual,
            });
        }
        writer.finish().await.map_err(|e| self.store_err(&d, e))?;
        add(&self.inner.stats.blobs_uploaded, 1);
        add(&self.inner.stats.bytes_uploaded, sent);
        add(&self.inner.stats.multipart_uploads, 1);
        Ok(())
    }

    /// A blob's bytes, verified. Served from the local cache (or in place
    /// from a filesystem store) when possible.
    pub async fn get_bytes(&self, d: &Digest) -> Result<Bytes, CasError> {
        let store = self.clone();
        let d = *d;
        let local = tokio::task::spawn_blocking(move || store.read_local(&d))
            .await
            .map_err(join_error)??;
        if let Some(bytes) = local {
            return Ok(bytes);
        }
        let result = self
            .inner
            .backend
            .get(&self.location(&d))
            .await
            .map_err(|e| self.store_err(&d, e))?;
        let bytes = result.bytes().await.map_err(|e| self.store_err(&d, e))?;
        add(&self.inner.stats.blobs_downloaded, 1);
        add(&self.inner.stats.bytes_downloaded, bytes.len() as u64);
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            let actual = Digest::of(&bytes);
            if actual != d {
                return Err(store.mismatch(&d, actual));
            }
            if store
                .inner
                .cache
                .as_ref()
                .is_some_and(|c| c.accepts(bytes.len() as u64))
            {
                store.cache_bytes(&d, &bytes);
            }
            Ok(bytes)
        })
        .await
        .map_err(join_error)?
    }

    /// The blob from a filesystem store or the cache, verified; `None` when
    /// it has to come from the backend. Blocking.
    fn read_local(&self, d: &Digest) -> Result<Option<Bytes>, CasError> {
        if let Some(path) = self.local_path(d) {
            let bytes = match fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(CasError::NotFound { digest: *d });
                }
                Err(e) => return Err(CasError::io(path, e)),
            };
            let actual = Digest::of(&bytes);
            if actual != *d {
                return Err(self.mismatch(d, actual));
            }
            return Ok(Some(bytes.into()));
        }
        let Some(cache) = &self.inner.cache else {
            return Ok(None);
        };
        let Some(path) = cache.lookup(d) else {
            return Ok(None);
        };
        match fs::read(&path) {
            Ok(bytes) if Digest::of(&bytes) == *d => {
                add(&self.inner.stats.cache_hits, 1);
                Ok(Some(bytes.into()))
            }
            Ok(_) => {
                tracing::warn!(digest = %d, path = %path.display(), "corrupt blob in the local cache; fetching it again");
                cache.forget(d);
                Ok(None)
            }
            Err(_) => {
                cache.forget(d);
                Ok(None)
            }
        }
    }

    /// Puts verified bytes into the cache; a failure only costs a refetch
    /// later. Blocking.
    fn cache_bytes(&self, d: &Digest, bytes: &[u8]) {
        let Some(cache) = &self.inner.cache else {
            return;
        };
        let temp = cache.temp_path();
        let result =
            fs::write(&temp, bytes).and_then(|()| cache.insert(d, &temp, bytes.len() as u64));
        if let Err(e) = result {
            let _ = fs::remove_file(&temp);
            tracing::warn!(digest = %d, error = %e, "cannot add a blob to the local cache");
        }
    }

    /// Writes a blob to `dest`, verified, with mode 0644. The bytes go to a
    /// temp file next to `dest` that is renamed over it only once verified,
    /// so nothing corrupt or partial is ever at `dest`.
    pub async fn get_to_file(&self, d: &Digest, dest: &Path) -> Result<(), CasError> {
        if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| CasError::io(parent, e))?;
        }
        self.fetch_to_file(d, dest, 0o644).await
    }

    /// [`Store::get_to_file`] with a file mode; the parent must exist.
    pub(crate) async fn fetch_to_file(
        &self,
        d: &Digest,
        dest: &Path,
        mode: u32,
    ) -> Result<(), CasError> {
        let d = *d;
        let temp = TempFile::next_to(dest);
        // Filesystem store or cache hit: copy (reflink where the filesystem
        // can) and verify the copy, which is what the job will read.
        let store = self.clone();
        let (t, dst) = (temp.path.clone(), dest.to_path_buf());
        let done = tokio::task::spawn_blocking(move || store.copy_local(&d, &t, &dst, mode))
            .await
            .map_err(join_error)??;
        if done {
            temp.disarm();
            return Ok(());
        }
        let result = self
            .inner
            .backend
            .get(&self.location(&d))
            .await
            .map_err(|e| self.store_err(&d, e))?;
        let size = result.meta.size;
        let store = self.clone();
        let dst = dest.to_path_buf();
        if size <= SMALL_BLOB {
            let bytes = result.bytes().await.map_err(|e| self.store_err(&d, e))?;
            add(&self.inner.stats.blobs_downloaded, 1);
            add(&self.inner.stats.bytes_downloaded, bytes.len() as u64);
            tokio::task::spawn_blocking(move || {
                let actual = Digest::of(&bytes);
                if actual != d {
                    return Err(store.mismatch(&d, actual));
                }
                fs::write(&temp.path, &bytes).map_err(|e| CasError::io(&temp.path, e))?;
                if store
                    .inner
                    .cache
                    .as_ref()
                    .is_some_and(|c| c.accepts(bytes.len() as u64))
                {
                    store.cache_bytes(&d, &bytes);
                }
                temp.finish(&dst, mode)
            })
            .await
            .map_err(join_error)?
        } else {
            // Large: stream into the cache's temp file when it will be cached
            // (then copy), else straight into ours.
            let cache = self.inner.cache.as_ref().filter(|c| c.accepts(size));
            let landing = match cache {
                Some(c) => TempFile {
                    path: c.temp_path(),
                    armed: true,
                },
                None => TempFile {
                    path: temp.path.clone(),
                    armed: false,
                },
            };
            let (actual, n) = write_stream(result.into_stream(), &landing.path)
                .await
                .map_err(|e| match e {
                    StreamError::Store(e) => self.store_err(&d, e),
                    StreamError::Io(e) => CasError::io(&landing.path, e),
                })?;
            add(&self.inner.stats.blobs_downloaded, 1);
            add(&self.inner.stats.bytes_downloaded, n);
            if actual != d {
                return Err(self.mismatch(&d, actual));
            }
            tokio::task::spawn_blocking(move || {
                if let Some(cache) = &store.inner.cache
                    && landing.armed
                {
                    // Our copy first: once in the cache, the blob may be
                    // evicted by a concurrent insert.
                    fs::copy(&landing.path, &temp.path).map_err(|e| CasError::io(&temp.path, e))?;
                    if let Err(e) = cache.insert(&d, &landing.path, n) {
                        tracing::warn!(digest = %d, error = %e, "cannot add a blob to the local cache");
                    } else {
                        landing.disarm();
                    }
                }
                temp.finish(&dst, mode)
            })
            .await
            .map_err(join_error)?
        }
    }

    /// Copies the blob from a filesystem store or the cache to `temp`,
    /// verifies the copy and renames it to `dest`. Returns false when the
    /// blob must come from the backend. Blocking.
    fn copy_local(
        &self,
        d: &Digest,
        temp: &Path,
        dest: &Path,
        mode: u32,
    ) -> Result<bool, CasError> {
        let copy_verified = |src: &Path| -> io::Result<Option<Digest>> {
            fs::copy(src, temp)?;
            let (actual, _) = hash_file(temp)?;
            Ok((actual != *d).then_some(actual))
        };
        let finish = || -> Result<bool, CasError> {
            set_mode(temp, mode)?;
            fs::rename(temp, dest).map_err(|e| CasError::io(dest, e))?;
            Ok(true)
        };
        if let Some(src) = self.local_path(d) {
            return match copy_verified(&src) {
                Ok(None) => finish(),
                Ok(Some(actual)) => Err(self.mismatch(d, actual)),
                Err(e) if e.kind() == io::ErrorKind::NotFound && !src.exists() => {
                    Err(CasError::NotFound { digest: *d })
                }
                Err(e) => Err(CasError::io(dest, e)),
            };
        }
        let Some(cache) = &self.inner.cache else {
            return Ok(false);
        };
        let Some(src) = cache.lookup(d) else {
            return Ok(false);
        };
        match copy_verified(&src) {
            Ok(None) => {
                add(&self.inner.stats.cache_hits, 1);
                finish()
            }
            Ok(Some(_)) => {
                tracing::warn!(digest = %d, path = %src.display(), "corrupt blob in the local cache; fetching it again");
                cache.forget(d);
                Ok(false)
            }
            Err(e) if !src.exists() => {
                tracing::debug!(digest = %d, error = %e, "cached blob vanished; fetching it again");
                cache.forget(d);
                Ok(false)
            }
            Err(e) => Err(CasError::io(dest, e)),
        }
    }
}

fn split_bucket(rest: &str) -> Option<(&str, &str)> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    (!bucket.is_empty()).then_some((bucket, prefix.trim_matches('/')))
}

fn bucket_url(scheme: &str, bucket: &str, prefix: &str) -> String {
    if prefix.is_empty() {
        format!("{scheme}://{bucket}")
    } else {
        format!("{scheme}://{bucket}/{prefix}")
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), CasError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| CasError::io(path, e))
}

/// Reads until `buf` is full or the file ends.
fn read_full(f: &mut fs::File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match f.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// A temp file that is deleted on drop unless finished or disarmed.
#[derive(Debug)]
pub(crate) struct TempFile {
    pub(crate) path: PathBuf,
    armed: bool,
}

impl TempFile {
    /// A fresh name in `dest`'s directory, hidden and unique in this process.
    pub(crate) fn next_to(dest: &Path) -> Self {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = format!(
            ".{}.krt-{}-{}",
            name.chars().take(100).collect::<String>(),
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        Self {
            path: dest.with_file_name(name),
            armed: true,
        }
    }

    pub(crate) fn disarm(mut self) {
        self.armed = false;
    }

    /// Sets the mode and renames the file over `dest`. Blocking.
    fn finish(mut self, dest: &Path, mode: u32) -> Result<(), CasError> {
        set_mode(&self.path, mode)?;
        fs::rename(&self.path, dest).map_err(|e| CasError::io(dest, e))?;
        self.armed = false;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

enum StreamError {
    Store(object_store::Error),
    Io(io::Error),
}

/// Writes a download stream to `path` on a blocking thread, hashing as it
/// goes, so network, hashing and disk overlap.
async fn write_stream(
    mut stream: BoxStream<'static, object_store::Result<Bytes>>,
    path: &Path,
) -> Result<(Digest, u64), StreamError> {
    let (tx, mut rx) = mpsc::channel::<Bytes>(4);
    let p = path.to_path_buf();
    let writer = tokio::task::spawn_blocking(move || -> io::Result<(Digest, u64)> {
        let mut f = io::BufWriter::with_capacity(1 << 20, fs::File::create(&p)?);
        let mut hasher = Hasher::new();
        let mut n = 0u64;
        while let Some(chunk) = rx.blocking_recv() {
            hasher.update(&chunk);
            f.write_all(&chunk)?;
            n += chunk.len() as u64;
        }
        f.flush()?;
        Ok((hasher.finish(), n))
    });
    let mut failed = None;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => {
                if tx.send(chunk).await.is_err() {
                    break; // the writer failed; its error is below
                }
            }
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let written = writer
        .await
        .map_err(|e| StreamError::Io(io::Error::other(e)))?;
    if let Some(e) = failed {
        return Err(StreamError::Store(e));
    }
    written.map_err(StreamError::Io)
}
