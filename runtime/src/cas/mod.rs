//! The content-addressed store (CAS): blobs named by their sha256, trees
//! (canonical manifests stored as blobs) and the client that moves them
//! between a workspace and an object store.
//!
//! ```text
//! <store root>/cas/sha256/<hex>     every blob: file contents and manifests
//! <store root>/refs/<ns>/<name>     small mutable records (step cache, runs)
//! <store root>/live/<run id>/...    log segments of running attempts (live.rs)
//! <cache dir>/<hex>                 verified local copies, LRU-bounded
//! ```
//!
//! An artifact is one tree digest. Uploads skip blobs the store has;
//! downloads verify every digest and fail loudly on a mismatch; every path
//! is checked so a tree can neither escape its root on capture nor write
//! outside its destination on materialise. See `store.rs` for the data
//! flow, `manifest.rs` for the path rules and `cache.rs` for the cache.

mod cache;
mod error;
mod hash;
mod live;
mod manifest;
mod refs;
mod store;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;
mod tree;

pub use error::CasError;
pub use hash::{HASH_CHUNK, hash_file, hash_reader};
pub use live::LiveSegment;
pub use manifest::{Entry, EntryKind, Manifest};
pub use refs::RefInfo;
pub use store::{
    DEFAULT_CACHE_MAX_BYTES, MULTIPART_THRESHOLD, PART_SIZE, Store, StoreOptions, UploadStats,
};
