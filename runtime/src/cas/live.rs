//! Live log segments: while a run asked for them (`RunRequest::live_log`),
//! the runtime writes the log lines of the running attempt in small pieces
//! beside the blobs, so a client outside the cluster (`krt submit --wait`,
//! `krt logs -f`) can print them as they come, with nothing but store
//! access:
//!
//! ```text
//! <store root>/live/<run id>/<attempt:04>-<first line:010>.ndjson
//! ```
//!
//! A segment is NDJSON of [`crate::exec::LogLine`], the same lines in the
//! same order as the whole log the run stores in the CAS; `first line`
//! counts from 0 within the attempt, so a reader sees a gap when a segment
//! was dropped. The whole log stays the record: segments are deleted when
//! the attempt ends, and a reader prints what it did not see live from the
//! whole log.

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload};

use super::error::CasError;
use super::refs::check_part;
use super::store::Store;

/// One segment of a live log.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LiveSegment {
    /// The attempt it belongs to, from 1.
    pub attempt: u32,
    /// Index of its first line within the attempt, from 0.
    pub first_line: u64,
    location: String,
}

impl Store {
    fn live_dir(&self, run: &str) -> Result<ObjectPath, CasError> {
        check_part("run id", run)?;
        Ok(self.prefix().clone().join("live").join(run))
    }

    fn live_err(&self, run: &str, source: object_store::Error) -> CasError {
        CasError::Store {
            url: format!("{}/live/{run}", self.url().trim_end_matches('/')),
            source,
        }
    }

    /// Writes one segment of `run`'s live log.
    pub async fn put_live_segment(
        &self,
        run: &str,
        attempt: u32,
        first_line: u64,
        ndjson: Bytes,
    ) -> Result<(), CasError> {
        let loc = self
            .live_dir(run)?
            .join(format!("{attempt:04}-{first_line:010}.ndjson"));
        self.backend()
            .put(&loc, PutPayload::from_bytes(ndjson))
            .await
            .map(|_| ())
            .map_err(|e| self.live_err(run, e))
    }

    /// The segments of `run`'s live log, in order (attempt, then line).
    pub async fn list_live_segments(&self, run: &str) -> Result<Vec<LiveSegment>, CasError> {
        let dir = self.live_dir(run)?;
        let metas: Vec<object_store::ObjectMeta> = self
            .backend()
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(|e| self.live_err(run, e))?;
        let mut out: Vec<LiveSegment> = metas
            .into_iter()
            .filter_map(|m| {
                let name = m.location.filename()?.strip_suffix(".ndjson")?;
                let (attempt, first) = name.split_once('-')?;
                Some(LiveSegment {
                    attempt: attempt.parse().ok()?,
                    first_line: first.parse().ok()?,
                    location: m.location.to_string(),
                })
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Reads a segment; `None` when it is gone (its attempt ended).
    pub async fn get_live_segment(
        &self,
        run: &str,
        segment: &LiveSegment,
    ) -> Result<Option<Bytes>, CasError> {
        let loc = ObjectPath::from(segment.location.as_str());
        match self.backend().get(&loc).await {
            Ok(r) => match r.bytes().await {
                Ok(b) => Ok(Some(b)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(self.live_err(run, e)),
            },
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.live_err(run, e)),
        }
    }

    /// Deletes the segments of one attempt of `run`.
    pub async fn delete_live(&self, run: &str, attempt: u32) -> Result<(), CasError> {
        self.delete_live_where(run, |s| s.attempt == attempt).await
    }

    /// Deletes every segment of `run` (attempts whose runtime died leave
    /// theirs behind).
    pub async fn delete_live_run(&self, run: &str) -> Result<(), CasError> {
        self.delete_live_where(run, |_| true).await
    }

    async fn delete_live_where(
        &self,
        run: &str,
        pick: impl Fn(&LiveSegment) -> bool,
    ) -> Result<(), CasError> {
        for s in self.list_live_segments(run).await? {
            if !pick(&s) {
                continue;
            }
            match self
                .backend()
                .delete(&ObjectPath::from(s.location.as_str()))
                .await
            {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.live_err(run, e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cas::StoreOptions;

    #[tokio::test]
    async fn segments_are_listed_in_order_read_and_deleted_per_attempt() {
        let dir = crate::cas::testutil::TestDir::new("live");
        let store =
            Store::open(&dir.path().display().to_string(), StoreOptions::default()).unwrap();
        let run = "ns.build-x.0123abcd";
        assert!(store.list_live_segments(run).await.unwrap().is_empty());
        for (attempt, first, body) in [(1, 12, "c\n"), (1, 0, "a\n"), (2, 0, "d\n"), (1, 3, "b\n")]
        {
            store
                .put_live_segment(run, attempt, first, Bytes::from_static(body.as_bytes()))
                .await
                .unwrap();
        }
        let segs = store.list_live_segments(run).await.unwrap();
        let order: Vec<(u32, u64)> = segs.iter().map(|s| (s.attempt, s.first_line)).collect();
        assert_eq!(order, [(1, 0), (1, 3), (1, 12), (2, 0)]);
        let body = store.get_live_segment(run, &segs[1]).await.unwrap();
        assert_eq!(body.as_deref(), Some(&b"b\n"[..]));

        store.delete_live(run, 1).await.unwrap();
        let left: Vec<(u32, u64)> = store
            .list_live_segments(run)
            .await
            .unwrap()
            .iter()
            .map(|s| (s.attempt, s.first_line))
            .collect();
        assert_eq!(left, [(2, 0)]);
        assert_eq!(store.get_live_segment(run, &segs[1]).await.unwrap(), None);
        store.delete_live_run(run).await.unwrap();
        assert!(store.list_live_segments(run).await.unwrap().is_empty());
        // Another run's segments are apart.
        assert!(
            store
                .list_live_segments("ns.other.0123abcd")
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn a_run_id_cannot_leave_the_live_directory() {
        let store = Store::open("memory://", StoreOptions::default()).unwrap();
        for bad in ["../refs", "a/b", "", ".hidden"] {
            let e = store
                .put_live_segment(bad, 1, 0, Bytes::new())
                .await
                .unwrap_err();
            assert!(e.to_string().contains("run id"), "{bad}: {e}");
        }
    }
}
