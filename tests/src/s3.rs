//! A real S3 server on loopback for tests and benchmarks: s3s-fs served
//! in-process on `127.0.0.1:<free port>`, with signature-v4 authentication,
//! a fresh root directory and one bucket.
//!
//! The server runs on its own thread with its own tokio runtime
//! (`loopback.rs`). Dropping the [`S3Server`] stops it and deletes the root.
//!
//! s3s-fs keeps an object as a plain file at `<root>/<bucket>/<key>`
//! ([`S3Server::object_file`]), so a test can read or tamper with what the
//! client stored.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;

use crate::TempDir;
use crate::loopback::LoopbackServer;

/// A running s3s-fs server.
#[derive(Debug)]
pub struct S3Server {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// The bucket that exists from the start.
    pub bucket: String,
    /// Access key id the server accepts.
    pub key_id: String,
    /// Secret access key the server accepts.
    pub secret: String,
    /// Region to sign requests for (s3s accepts any).
    pub region: String,
    // Declared before `root`: the server stops before its root is deleted.
    _server: LoopbackServer,
    root: TempDir,
}

impl S3Server {
    /// Starts a server with a fresh root and the bucket `kruntimes`.
    pub fn start() -> anyhow::Result<Self> {
        let root = TempDir::new("s3");
        let bucket = "kruntimes".to_owned();
        std::fs::create_dir(root.path().join(&bucket)).context("create the bucket directory")?;
        let (key_id, secret) = (
            "krt-test-key".to_owned(),
            "krt-test-secret-0123456789".to_owned(),
        );

        let fs =
            s3s_fs::FileSystem::new(root.path()).map_err(|e| anyhow!("start s3s-fs: {e:?}"))?;
        let mut builder = S3ServiceBuilder::new(fs);
        builder.set_auth(SimpleAuth::from_single(key_id.clone(), secret.clone()));
        let service = builder.build();

        let server = LoopbackServer::start("s3s-fs", service)?;
        let addr = server.addr;
        Ok(Self {
            endpoint: format!("http://{addr}"),
            bucket,
            key_id,
            secret,
            region: "us-east-1".into(),
            _server: server,
            root,
        })
    }

    /// The server's root directory (buckets are directories in it).
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The file in which s3s-fs keeps the object `key` of the bucket.
    pub fn object_file(&self, key: &str) -> PathBuf {
        self.root().join(&self.bucket).join(key)
    }

    /// Every object file of the bucket, as keys, sorted.
    pub fn keys(&self) -> Vec<String> {
        fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, base, out);
                } else if let Ok(rel) = p.strip_prefix(base) {
                    out.push(rel.display().to_string());
                }
            }
        }
        let base = self.root().join(&self.bucket);
        let mut out = Vec::new();
        walk(&base, &base, &mut out);
        out.sort();
        out
    }

    /// Environment variables that point `Store::open("s3://<bucket>")` at
    /// this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", self.region.clone()),
            ("AWS_ACCESS_KEY_ID", self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }
}
