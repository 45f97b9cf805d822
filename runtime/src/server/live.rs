//! Publishes a running attempt's log to the store in segments
//! (`RunRequest::live_log`; layout in `cas/live.rs`), for clients that reach
//! the store but not this runtime (`krt submit --wait` on a laptop).
//!
//! ```text
//!  forwarder ─push(line)─> buffer (≤ MAX_BUFFER) ─every FLUSH─> put segment
//!  attempt ends ─finish()─> stop flushing, delete the attempt's segments
//! ```
//!
//! Best effort by design: the whole log in the CAS is the record. Lines that
//! arrive while the buffer is full, and segments the store refuses, are left
//! out; readers see the gap in the line numbers and take the rest from the
//! whole log when the attempt ends.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;

use crate::cas::Store;
use crate::exec::LogLine;

/// How often buffered lines are written.
pub const FLUSH: Duration = Duration::from_millis(250);
/// Bytes buffered between two writes at most; more is left out.
pub const MAX_BUFFER: usize = 1 << 20;

#[derive(Debug, Default)]
struct Buffer {
    /// Index of the first buffered line within the attempt.
    first: u64,
    /// Index the next line gets.
    next: u64,
    ndjson: Vec<u8>,
    /// Set when a line was left out; cleared by the next write, so the
    /// buffer always holds consecutive lines.
    full: bool,
}

/// The publisher of one attempt.
#[derive(Debug)]
pub(crate) struct LivePublisher {
    buffer: Arc<Mutex<Buffer>>,
    done: Arc<Notify>,
}

impl LivePublisher {
    /// Starts flushing `run`'s attempt `attempt` to `store`.
    pub(crate) fn start(store: Store, run: String, attempt: u32) -> Self {
        let buffer: Arc<Mutex<Buffer>> = Arc::default();
        let done = Arc::new(Notify::new());
        let (buf, stop) = (buffer.clone(), done.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FLUSH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // A short attempt ends before its first write: nothing to delete.
            let mut wrote = false;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.notified() => break,
                }
                let taken = {
                    let mut b = lock(&buf);
                    b.full = false;
                    (!b.ndjson.is_empty()).then(|| (b.first, std::mem::take(&mut b.ndjson)))
                };
                if let Some((first, ndjson)) = taken {
                    wrote = true;
                    if let Err(e) = store
                        .put_live_segment(&run, attempt, first, Bytes::from(ndjson))
                        .await
                    {
                        tracing::debug!(run = %run, error = %e, "writing a live log segment failed");
                    }
                }
            }
            if wrote && let Err(e) = store.delete_live(&run, attempt).await {
                tracing::warn!(run = %run, error = %e, "deleting the live log segments failed");
            }
        });
        Self { buffer, done }
    }

    /// Adds a line (in log order).
    pub(crate) fn push(&self, line: &LogLine) {
        let mut b = lock(&self.buffer);
        let index = b.next;
        b.next += 1;
        if b.full {
            return;
        }
        let Ok(mut text) = serde_json::to_vec(line) else {
            return;
        };
        text.push(b'\n');
        if b.ndjson.len() + text.len() > MAX_BUFFER {
            b.full = true;
            return;
        }
        if b.ndjson.is_empty() {
            b.first = index;
        }
        b.ndjson.extend_from_slice(&text);
    }

    /// The attempt ended: stop writing and delete its segments (in the
    /// background).
    pub(crate) fn finish(&self) {
        self.done.notify_one();
    }
}

fn lock(m: &Mutex<Buffer>) -> std::sync::MutexGuard<'_, Buffer> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cas::StoreOptions;
    use crate::exec::Stream;

    fn line(n: usize, len: usize) -> LogLine {
        LogLine {
            t: n as u64,
            step: 0,
            stream: Stream::Stdout,
            line: format!("{n}{}", "x".repeat(len)),
        }
    }

    async fn segments(store: &Store) -> Vec<(u64, Vec<LogLine>)> {
        let mut out = Vec::new();
        for s in store.list_live_segments("r").await.unwrap() {
            let body = store.get_live_segment("r", &s).await.unwrap().unwrap();
            let lines = body
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| serde_json::from_slice(l).unwrap())
                .collect();
            out.push((s.first_line, lines));
        }
        out
    }

    /// Waits (up to 20 s) until `n` segments exist.
    async fn wait_segments(store: &Store, n: usize) -> Vec<(u64, Vec<LogLine>)> {
        for _ in 0..2000 {
            let segs = segments(store).await;
            if segs.len() >= n {
                return segs;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{n} segments were not written");
    }

    #[tokio::test]
    async fn lines_are_written_in_numbered_segments_and_deleted_at_the_end() {
        let store = Store::open("memory://", StoreOptions::default()).unwrap();
        let p = LivePublisher::start(store.clone(), "r".into(), 1);
        p.push(&line(0, 1));
        p.push(&line(1, 1));
        wait_segments(&store, 1).await;
        p.push(&line(2, 1));
        assert_eq!(
            wait_segments(&store, 2).await,
            [(0, vec![line(0, 1), line(1, 1)]), (2, vec![line(2, 1)])]
        );
        p.finish();
        for _ in 0..100 {
            if store.list_live_segments("r").await.unwrap().is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the segments were not deleted");
    }

    #[tokio::test]
    async fn a_full_buffer_leaves_a_gap_in_the_line_numbers() {
        let store = Store::open("memory://", StoreOptions::default()).unwrap();
        let p = LivePublisher::start(store.clone(), "r".into(), 1);
        // Each line is a bit over a quarter of the buffer: three fit, the
        // fourth and fifth are left out, the sixth (after a write) is kept.
        let big = MAX_BUFFER / 4;
        for n in 0..5 {
            p.push(&line(n, big));
        }
        wait_segments(&store, 1).await;
        p.push(&line(5, 1));
        let segs = wait_segments(&store, 2).await;
        let firsts: Vec<(u64, usize)> = segs.iter().map(|(f, l)| (*f, l.len())).collect();
        assert_eq!(firsts, [(0, 3), (5, 1)]);
        assert_eq!(segs[1].1, [line(5, 1)]);
        p.finish();
    }
}
