//! Errors of the content-addressed store.
//!
//! Every message is a lowercase fragment that reads well after "failed to",
//! and carries the digest, path or URL it is about. Wrapped errors are both
//! the `source` and part of the message, because the executor prints errors
//! with `{}` into a job's result, where a bare "failed to read x" without the
//! reason would not help anyone.

use std::path::PathBuf;

use crate::digest::Digest;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CasError {
    /// Downloaded (or cached) bytes do not hash to the digest they are stored under.
    #[error(
        "verify {object}: expected {expected}, got {actual} (the object is corrupt or was tampered with)"
    )]
    DigestMismatch {
        object: String,
        expected: Digest,
        actual: Digest,
    },

    /// A capture pattern matched no file under the root.
    #[error("capture `{pattern}`: it matches no file")]
    NoMatch { pattern: String },

    /// A path or symlink that could read or write outside the root.
    #[error("accept path `{path}`: {reason}")]
    UnsafePath { path: String, reason: String },

    /// The blob is not in the store.
    #[error("find {digest} in the store")]
    NotFound { digest: Digest },

    /// The object store refused or failed a request.
    #[error("access {url}: {source}")]
    Store {
        url: String,
        #[source]
        source: object_store::Error,
    },

    /// The store refused our credentials (403/401): a wrong key id or
    /// secret, a clock too far off for the signature, or a bucket policy.
    #[error(
        "access {url}: access denied; check the store credentials and the bucket policy ({source})"
    )]
    AccessDenied {
        url: String,
        #[source]
        source: object_store::Error,
    },

    /// A local file operation failed.
    #[error("access {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A store URL that cannot be opened.
    #[error("open store `{url}`: {reason}")]
    InvalidUrl { url: String, reason: String },

    /// A store URL whose backend is not compiled in.
    #[error(
        "open store `{url}`: kruntimes was built without the `{feature}` feature (rebuild with `--features {feature}`)"
    )]
    FeatureDisabled { url: String, feature: &'static str },

    /// A tree blob that is not a valid canonical manifest.
    #[error("read manifest {digest}: {reason}")]
    InvalidManifest { digest: Digest, reason: String },

    /// A capture pattern that is not a valid glob.
    #[error("parse glob `{pattern}`: {source}")]
    InvalidPattern {
        pattern: String,
        #[source]
        source: globset::Error,
    },

    /// A file changed between hashing it and uploading it.
    #[error("upload {}: the file changed while it was being uploaded (expected {expected}, read {actual})", path.display())]
    FileChanged {
        path: PathBuf,
        expected: Digest,
        actual: Digest,
    },
}

impl CasError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn unsafe_path(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::UnsafePath {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// A `spawn_blocking` task that panicked or was cancelled: the runtime is
/// shutting down or we have a bug; either way there is no path to blame.
pub(crate) fn join_error(e: tokio::task::JoinError) -> CasError {
    CasError::Io {
        path: PathBuf::from("<blocking file task>"),
        source: std::io::Error::other(e),
    }
}
