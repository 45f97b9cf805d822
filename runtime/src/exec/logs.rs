//! Step output capture: lines from stdout and stderr, timestamped, masked,
//! written whole to a log file (later stored in the CAS), streamed live as
//! events, and kept as a bounded tail for status.
//!
//! ```text
//!  stdout reader ─┐
//!                 ├─ mpsc ─> logger task ─┬─> log file (NDJSON, whole)
//!  stderr reader ─┘   (arrival order)     ├─> events (live subscribers)
//!                                         └─> tail (last 64 KiB)
//! ```
//!
//! Memory stays bounded whatever a step prints: lines longer than
//! [`MAX_LINE`] are split, the tail is capped, the file takes the rest.

use std::collections::VecDeque;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::sync::mpsc;

use super::RunEvent;

/// Longest piece of a line kept as one log line.
pub const MAX_LINE: usize = 64 * 1024;
/// Size of the tail kept for status.
pub const TAIL_BYTES: usize = 64 * 1024;

/// Which stream a line came from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// The step's standard output.
    Stdout,
    /// The step's standard error.
    Stderr,
    /// A message from kruntimes itself (timeouts, cancels, errors).
    Krt,
}

/// One line of a job's log.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    /// Milliseconds since the run started.
    pub t: u64,
    /// Step index, from 0.
    pub step: usize,
    /// Stream.
    pub stream: Stream,
    /// Text, secrets masked, without the newline.
    pub line: String,
}

/// Replaces secret values with `***`.
#[derive(Clone, Debug, Default)]
pub struct Masker {
    needles: Vec<String>,
}

impl Masker {
    /// Masks every value (and every line of multi-line values) of two or
    /// more characters; single characters would blank out whole logs.
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a String>) -> Self {
        let mut needles: Vec<String> = Vec::new();
        for s in secrets {
            needles.push(s.clone());
            needles.extend(s.lines().map(str::to_string));
        }
        needles.retain(|n| n.chars().count() >= 2);
        // Longest first, so a secret that contains another is masked whole.
        needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
        needles.dedup();
        Self { needles }
    }

    /// The text with every secret replaced.
    pub fn mask(&self, text: &str) -> String {
        let mut out = text.to_string();
        for n in &self.needles {
            if out.contains(n.as_str()) {
                out = out.replace(n.as_str(), "***");
            }
        }
        out
    }
}

/// A line on its way to the logger.
#[derive(Debug)]
pub(crate) struct Piece {
    pub step: usize,
    pub stream: Stream,
    pub text: String,
}

/// Log bytes kept in memory before the log spills to its file: most jobs
/// log little, and a file per run costs an inode created and deleted.
pub const IN_MEMORY_LOG: usize = 1 << 20;

/// Where the whole log ended up.
#[derive(Debug)]
pub(crate) enum LogBody {
    /// Small enough to stay in memory.
    Memory(Vec<u8>),
    /// Spilled to this file.
    File(PathBuf),
}

/// What the logger leaves behind.
#[derive(Debug)]
pub(crate) struct LogSummary {
    pub body: LogBody,
    pub tail: String,
    pub error: Option<String>,
}

/// The log's NDJSON: in memory until [`IN_MEMORY_LOG`], then in a file.
struct Sink {
    path: PathBuf,
    memory: Vec<u8>,
    file: Option<std::io::BufWriter<std::fs::File>>,
}

impl Sink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if let Some(f) = self.file.as_mut() {
            return f.write_all(bytes);
        }
        self.memory.extend_from_slice(bytes);
        if self.memory.len() > IN_MEMORY_LOG {
            let mut f =
                std::io::BufWriter::with_capacity(256 * 1024, std::fs::File::create(&self.path)?);
            f.write_all(&self.memory)?;
            self.memory = Vec::new();
            self.file = Some(f);
        }
        Ok(())
    }

    fn finish(self) -> std::io::Result<LogBody> {
        match self.file {
            Some(mut f) => {
                f.flush()?;
                Ok(LogBody::File(self.path))
            }
            None => Ok(LogBody::Memory(self.memory)),
        }
    }
}

/// Starts the logger task. Send [`Piece`]s to the returned sender; drop
/// every clone of it and await the handle to get the summary.
pub(crate) fn spawn_logger(
    path: PathBuf,
    masker: Masker,
    events: mpsc::Sender<RunEvent>,
    start: Instant,
) -> (mpsc::Sender<Piece>, tokio::task::JoinHandle<LogSummary>) {
    let (tx, mut rx) = mpsc::channel::<Piece>(1024);
    let handle = tokio::spawn(async move {
        let mut error = None;
        let mut sink = Some(Sink {
            path: path.clone(),
            memory: Vec::new(),
            file: None,
        });
        let mut tail: VecDeque<String> = VecDeque::new();
        let mut tail_bytes = 0usize;
        let mut events_open = true;
        while let Some(p) = rx.recv().await {
            let line = LogLine {
                t: start.elapsed().as_millis() as u64,
                step: p.step,
                stream: p.stream,
                line: masker.mask(&p.text),
            };
            if let Some(s) = sink.as_mut() {
                let mut json = serde_json::to_vec(&line).unwrap_or_default();
                json.push(b'\n');
                if let Err(e) = s.write(&json) {
                    error.get_or_insert(format!("cannot write log file {}: {e}", path.display()));
                    sink = None;
                }
            }
            tail_bytes += line.line.len() + 1;
            tail.push_back(line.line.clone());
            while tail_bytes > TAIL_BYTES && tail.len() > 1 {
                match tail.pop_front() {
                    Some(l) => tail_bytes -= l.len() + 1,
                    None => break,
                }
            }
            if events_open && events.send(RunEvent::Log(line)).await.is_err() {
                // Nobody listens; keep logging to the file.
                events_open = false;
            }
        }
        let body = match sink.map(Sink::finish) {
            Some(Ok(b)) => b,
            Some(Err(e)) => {
                error.get_or_insert(format!("cannot write log file {}: {e}", path.display()));
                LogBody::Memory(Vec::new())
            }
            None => LogBody::Memory(Vec::new()),
        };
        let mut tail_text = String::with_capacity(tail_bytes);
        for l in tail {
            tail_text.push_str(&l);
            tail_text.push('\n');
        }
        LogSummary {
            body,
            tail: tail_text,
            error,
        }
    });
    (tx, handle)
}

/// Reads a pipe to its end, sending one [`Piece`] per line (or per
/// [`MAX_LINE`] bytes of a longer line).
pub(crate) async fn read_lines<R: AsyncRead + Unpin>(
    mut pipe: R,
    step: usize,
    stream: Stream,
    tx: mpsc::Sender<Piece>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    // True right after a long line was cut at MAX_LINE: its newline then
    // ends the line without adding an empty piece.
    let mut cut = false;
    let send = |bytes: &[u8]| Piece {
        step,
        stream,
        text: String::from_utf8_lossy(bytes).into_owned(),
    };
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut chunk = &buf[..n];
        while let Some(pos) = chunk.iter().position(|b| *b == b'\n') {
            pending.extend_from_slice(&chunk[..pos]);
            if pending.last() == Some(&b'\r') {
                pending.pop();
            }
            if !(cut && pending.is_empty()) && tx.send(send(&pending)).await.is_err() {
                return;
            }
            cut = false;
            pending.clear();
            chunk = &chunk[pos + 1..];
        }
        pending.extend_from_slice(chunk);
        while pending.len() >= MAX_LINE {
            let rest = pending.split_off(MAX_LINE);
            if tx.send(send(&pending)).await.is_err() {
                return;
            }
            cut = true;
            pending = rest;
        }
    }
    if !pending.is_empty() {
        let _ = tx.send(send(&pending)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masker_hides_secrets_and_their_lines() {
        let secrets = [
            "hunter2".to_string(),
            "multi\nline-secret".to_string(),
            "x".to_string(),
        ];
        let m = Masker::new(&secrets);
        assert_eq!(m.mask("pw=hunter2 and line-secret, x"), "pw=*** and ***, x");
    }

    #[tokio::test]
    async fn long_lines_are_split_not_buffered_whole() {
        let data = format!("{}\nshort\r\nlast", "a".repeat(MAX_LINE + 10));
        let (tx, mut rx) = mpsc::channel(16);
        read_lines(data.as_bytes(), 0, Stream::Stdout, tx).await;
        let mut got = Vec::new();
        while let Some(p) = rx.recv().await {
            got.push(p.text.len());
        }
        assert_eq!(got, [MAX_LINE, 10, 5, 4]);
    }
}
