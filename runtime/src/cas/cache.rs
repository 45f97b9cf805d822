//! The local blob cache: a directory of verified blobs bounded by size.
//!
//! One file per blob, named by its hex digest, read-only. Sizes and last use
//! live in memory; on open they are rebuilt from the directory ordered by
//! mtime, and a hit bumps the file's mtime so the order survives a restart.
//! New blobs are written to a temp file in the same directory and renamed
//! in, so a reader (in this process or another sharing the directory) sees a
//! whole verified blob or none. When the total goes over the bound, the
//! least recently used blobs are deleted. Another process may delete a blob
//! we still list; a lookup then misses and forgets it.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::digest::Digest;

/// Temp files older than this are leftovers of a crashed process.
const STALE_TEMP: Duration = Duration::from_secs(3600);
const TEMP_PREFIX: &str = ".tmp-";

#[derive(Debug)]
pub(crate) struct BlobCache {
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<Lru>,
    temp_seq: AtomicU64,
}

#[derive(Debug, Default)]
struct Lru {
    /// digest -> (size, tick of last use)
    entries: HashMap<Digest, (u64, u64)>,
    /// tick -> digest, oldest first
    order: BTreeMap<u64, Digest>,
    total: u64,
    tick: u64,
}

impl Lru {
    fn touch(&mut self, d: Digest, size: u64) {
        self.tick += 1;
        if let Some((old_size, old_tick)) = self.entries.insert(d, (size, self.tick)) {
            self.order.remove(&old_tick);
            self.total -= old_size;
        }
        self.order.insert(self.tick, d);
        self.total += size;
    }

    fn remove(&mut self, d: &Digest) -> bool {
        match self.entries.remove(d) {
            Some((size, tick)) => {
                self.order.remove(&tick);
                self.total -= size;
                true
            }
            None => false,
        }
    }

    /// Drops the oldest entries until the total fits, keeping `keep`.
    fn evict(&mut self, max: u64, keep: Option<Digest>) -> Vec<Digest> {
        let mut victims = Vec::new();
        let mut kept = Vec::new();
        while self.total > max {
            let Some((tick, d)) = self.order.pop_first() else {
                break;
            };
            if Some(d) == keep {
                kept.push((tick, d));
                continue;
            }
            let (size, _) = self.entries.remove(&d).expect("order and entries agree");
            self.total -= size;
            victims.push(d);
        }
        self.order.extend(kept);
        victims
    }
}

impl BlobCache {
    /// Opens (creating) the cache directory and indexes what is there.
    pub(crate) fn open(dir: &Path, max_bytes: u64) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let mut found = Vec::new();
        let now = SystemTime::now();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Ok(meta) = entry.metadata() else { continue };
            let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            if name.starts_with(TEMP_PREFIX) {
                if now.duration_since(mtime).is_ok_and(|age| age > STALE_TEMP) {
                    let _ = fs::remove_file(entry.path());
                }
                continue;
            }
            if let Ok(d) = format!("{}{name}", crate::digest::PREFIX).parse::<Digest>()
                && meta.is_file()
            {
                found.push((mtime, d, meta.len()));
            }
        }
        found.sort();
        let mut lru = Lru::default();
        for (_, d, size) in found {
            lru.touch(d, size);
        }
        let cache = Self {
            dir: dir.to_path_buf(),
            max_bytes,
            state: Mutex::new(lru),
            temp_seq: AtomicU64::new(0),
        };
        let victims = cache.lock().evict(max_bytes, None);
        cache.delete(&victims);
        Ok(cache)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        // A panic while holding the lock leaves consistent maps (every
        // mutation is a few infallible steps), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether a blob of `size` bytes may be cached at all.
    pub(crate) fn accepts(&self, size: u64) -> bool {
        size <= self.max_bytes
    }

    /// Where the blob lives when cached.
    pub(crate) fn path(&self, d: &Digest) -> PathBuf {
        self.dir.join(d.hex())
    }

    /// A fresh temp file name in the cache directory (same filesystem, so
    /// the final rename is atomic).
    pub(crate) fn temp_path(&self) -> PathBuf {
        let n = self.temp_seq.fetch_add(1, Ordering::Relaxed);
        self.dir
            .join(format!("{TEMP_PREFIX}{}-{n}", std::process::id()))
    }

    /// The cached blob's path, marking it used; `None` when not cached.
    /// Blocking (a `stat` and a `utimensat` at most).
    pub(crate) fn lookup(&self, d: &Digest) -> Option<PathBuf> {
        let path = self.path(d);
        let known = self.lock().entries.get(d).map(|&(size, _)| size);
        // Another process may have added it; check the directory when unknown.
        let size = match known {
            Some(size) => size,
            None => fs::metadata(&path).ok().filter(|m| m.is_file())?.len(),
        };
        // Bump the mtime so the LRU order survives a restart; this also
        // tells us the file still exists.
        let touched = fs::File::open(&path).and_then(|f| f.set_modified(SystemTime::now()));
        if touched.is_err() {
            self.lock().remove(d);
            return None;
        }
        self.lock().touch(*d, size);
        Some(path)
    }

    /// Moves a verified temp file into the cache under `d` and evicts what
    /// no longer fits. Returns the blob's path. Blocking.
    pub(crate) fn insert(&self, d: &Digest, temp: &Path, size: u64) -> io::Result<PathBuf> {
        let path = self.path(d);
        fs::set_permissions(temp, fs::Permissions::from_mode(0o444))?;
        fs::rename(temp, &path)?;
        let victims = {
            let mut lru = self.lock();
            lru.touch(*d, size);
            lru.evict(self.max_bytes, Some(*d))
        };
        self.delete(&victims);
        Ok(path)
    }

    /// Forgets a blob and deletes its file (it was found corrupt).
    pub(crate) fn forget(&self, d: &Digest) {
        self.lock().remove(d);
        let _ = fs::remove_file(self.path(d));
    }

    fn delete(&self, victims: &[Digest]) {
        for d in victims {
            tracing::debug!(digest = %d, dir = %self.dir.display(), "evicting blob from the local cache");
            let _ = fs::remove_file(self.path(d));
        }
    }

    /// Bytes currently cached, as tracked (tests).
    #[cfg(test)]
    pub(crate) fn total_bytes(&self) -> u64 {
        self.lock().total
    }

    /// Whether the blob is tracked (tests).
    #[cfg(test)]
    pub(crate) fn tracks(&self, d: &Digest) -> bool {
        self.lock().entries.contains_key(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cas::testutil::TestDir;

    fn add(cache: &BlobCache, content: &[u8]) -> Digest {
        let d = Digest::of(content);
        let temp = cache.temp_path();
        fs::write(&temp, content).unwrap();
        cache.insert(&d, &temp, content.len() as u64).unwrap();
        d
    }

    #[test]
    fn the_least_recently_used_blob_is_evicted_when_the_cache_is_over_its_bound() {
        let dir = TestDir::new("lru");
        let cache = BlobCache::open(dir.path(), 250).unwrap();
        let a = add(&cache, &[b'a'; 100]);
        let b = add(&cache, &[b'b'; 100]);
        // Using `a` makes `b` the oldest.
        assert!(cache.lookup(&a).is_some());
        let c = add(&cache, &[b'c'; 100]);
        assert!(cache.tracks(&a) && cache.tracks(&c));
        assert!(!cache.tracks(&b));
        assert!(
            !cache.path(&b).exists(),
            "the evicted blob's file is deleted"
        );
        assert!(cache.lookup(&b).is_none());
        assert_eq!(cache.total_bytes(), 200);
    }

    #[test]
    fn a_blob_larger_than_the_bound_is_not_accepted() {
        let dir = TestDir::new("lru-big");
        let cache = BlobCache::open(dir.path(), 100).unwrap();
        assert!(cache.accepts(100));
        assert!(!cache.accepts(101));
    }

    #[test]
    fn reopening_rebuilds_the_index_in_mtime_order_and_evicts_to_the_new_bound() {
        let dir = TestDir::new("lru-reopen");
        let (old, new) = {
            let cache = BlobCache::open(dir.path(), 1000).unwrap();
            let old = add(&cache, &[b'o'; 100]);
            let new = add(&cache, &[b'n'; 100]);
            let f = fs::File::open(cache.path(&old)).unwrap();
            f.set_modified(SystemTime::now() - Duration::from_secs(60))
                .unwrap();
            (old, new)
        };
        // A stale temp file from a crashed writer is swept.
        let stale = dir.path().join(format!("{TEMP_PREFIX}1-1"));
        fs::write(&stale, b"partial").unwrap();
        fs::File::options()
            .write(true)
            .open(&stale)
            .unwrap()
            .set_modified(SystemTime::now() - STALE_TEMP * 2)
            .unwrap();
        let cache = BlobCache::open(dir.path(), 150).unwrap();
        assert!(!cache.tracks(&old), "the oldest blob goes first");
        assert!(cache.tracks(&new));
        assert!(!stale.exists());
    }

    #[test]
    fn a_blob_deleted_behind_the_caches_back_is_a_miss() {
        let dir = TestDir::new("lru-gone");
        let cache = BlobCache::open(dir.path(), 1000).unwrap();
        let a = add(&cache, b"gone soon");
        fs::remove_file(cache.path(&a)).unwrap();
        assert!(cache.lookup(&a).is_none());
        assert!(!cache.tracks(&a));
        assert_eq!(cache.total_bytes(), 0);
    }

    #[test]
    fn cached_blobs_are_read_only() {
        let dir = TestDir::new("lru-ro");
        let cache = BlobCache::open(dir.path(), 1000).unwrap();
        let a = add(&cache, b"read only");
        let mode = fs::metadata(cache.path(&a)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o444);
    }
}
