//! The runs a runtime knows: one handle per run id, holding the request's
//! cancel token, its event log (for resumable streams) and its status.
//!
//! Events are kept as serialised NDJSON lines, up to a byte budget per run;
//! past it the oldest are dropped and a reader that asks for them is told
//! how many it missed (the whole log is in the CAS, see `logDigest`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kruntimes_crds::{RunPhase, StepResult};
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::error::AppError;
use super::live::LivePublisher;
use super::metrics::Metrics;
use crate::exec::{Executor, RunEvent, RunRequest, RunResult};

/// Event bytes kept per run for streaming.
pub const MAX_EVENT_BYTES: usize = 16 << 20;
/// Finished runs remembered (for idempotent POSTs and late readers).
pub const FINISHED_KEPT: usize = 1000;

/// What `GET /v1/runs/{id}` returns.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunStatus {
    /// Run id.
    pub id: String,
    /// Attempt.
    pub attempt: u32,
    /// Job.
    pub job: String,
    /// Pending (accepted), Running, or the final phase.
    pub phase: RunPhase,
    /// Index of the step running now.
    pub current_step: Option<usize>,
    /// Results of the steps finished so far.
    pub steps: Vec<StepResult>,
    /// Events produced so far; `?from=` this to follow from here.
    pub events: u64,
    /// When the process of the first step started (ms since the epoch).
    pub started_at_ms: Option<u64>,
    /// The result, once finished.
    pub result: Option<RunResult>,
}

#[derive(Debug)]
struct EventLog {
    lines: VecDeque<(u64, String)>,
    first_seq: u64,
    next_seq: u64,
    bytes: usize,
    status: RunStatus,
}

/// One run (the latest attempt of an id).
#[derive(Debug)]
pub struct RunHandle {
    /// Run id.
    pub id: String,
    /// Attempt.
    pub attempt: u32,
    cancel: CancellationToken,
    log: Mutex<EventLog>,
    seq: watch::Sender<u64>,
}

/// A chunk of the event stream.
#[derive(Debug, Default)]
pub struct EventChunk {
    /// NDJSON text.
    pub text: String,
    /// Sequence number after the chunk.
    pub next: u64,
    /// True when the run has finished and the chunk reaches its end.
    pub done: bool,
}

impl RunHandle {
    fn lock(&self) -> std::sync::MutexGuard<'_, EventLog> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Current status.
    pub fn status(&self) -> RunStatus {
        self.lock().status.clone()
    }

    /// True once the run has finished.
    pub fn finished(&self) -> bool {
        self.lock().status.result.is_some()
    }

    /// Asks the run to stop.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    fn push(&self, event: &RunEvent) {
        let mut log = self.lock();
        let seq = log.next_seq;
        match event {
            RunEvent::Phase { phase, .. } => log.status.phase = *phase,
            RunEvent::StepStarted { step, at_ms, .. } => {
                log.status.current_step = Some(*step);
                log.status.started_at_ms.get_or_insert(*at_ms);
            }
            RunEvent::StepFinished { result, .. } => {
                log.status.steps.push(result.clone());
                log.status.current_step = None;
            }
            RunEvent::Finished { result } => {
                log.status.phase = result.phase;
                log.status.current_step = None;
                log.status.steps = result.steps.clone();
                log.status.result = Some((**result).clone());
            }
            RunEvent::Log(_) => {}
        }
        let mut line = serde_json::json!({"seq": seq, "event": event}).to_string();
        line.push('\n');
        log.bytes += line.len();
        log.lines.push_back((seq, line));
        log.next_seq += 1;
        log.status.events = log.next_seq;
        while log.bytes > MAX_EVENT_BYTES && log.lines.len() > 1 {
            if let Some((_, l)) = log.lines.pop_front() {
                log.bytes -= l.len();
                log.first_seq += 1;
            }
        }
        let next = log.next_seq;
        drop(log);
        self.seq.send_replace(next);
    }

    /// Events from `from` on, as NDJSON; a reader behind the kept window
    /// first gets a `{"seq":N,"dropped":K}` line.
    pub fn read_from(&self, from: u64, max_bytes: usize) -> EventChunk {
        let log = self.lock();
        let mut chunk = EventChunk {
            next: from,
            ..EventChunk::default()
        };
        if from < log.first_seq {
            chunk.text.push_str(&format!(
                "{{\"seq\":{from},\"dropped\":{}}}\n",
                log.first_seq - from
            ));
            chunk.next = log.first_seq;
        }
        let start = (chunk.next - log.first_seq) as usize;
        for (seq, line) in log.lines.iter().skip(start) {
            if chunk.text.len() + line.len() > max_bytes && !chunk.text.is_empty() {
                break;
            }
            chunk.text.push_str(line);
            chunk.next = seq + 1;
        }
        chunk.done = log.status.result.is_some() && chunk.next >= log.next_seq;
        chunk
    }

    /// A receiver that changes whenever an event is added.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.seq.subscribe()
    }
}

/// Settings of a runtime server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The bearer token every request but health must carry.
    pub token: String,
    /// Concurrent runs.
    pub slots: usize,
}

struct Inner {
    token: Vec<u8>,
    executor: Executor,
    slots: usize,
    semaphore: Arc<Semaphore>,
    runs: Mutex<HashMap<String, Arc<RunHandle>>>,
    finished_order: Mutex<VecDeque<(String, u32)>>,
    accepting: AtomicBool,
    metrics: Metrics,
}

/// Shared state of the server. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("slots", &self.0.slots)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// A server running jobs with `executor`.
    pub fn new(executor: Executor, config: ServerConfig) -> Self {
        let slots = config.slots.max(1);
        Self(Arc::new(Inner {
            token: config.token.into_bytes(),
            executor,
            slots,
            semaphore: Arc::new(Semaphore::new(slots)),
            runs: Mutex::new(HashMap::new()),
            finished_order: Mutex::new(VecDeque::new()),
            accepting: AtomicBool::new(true),
            metrics: Metrics::default(),
        }))
    }

    /// Compares a presented token in constant time.
    pub fn token_matches(&self, presented: &[u8]) -> bool {
        use subtle::ConstantTimeEq as _;
        !self.0.token.is_empty() && bool::from(presented.ct_eq(&self.0.token))
    }

    /// Slots of this runtime.
    pub fn slots(&self) -> usize {
        self.0.slots
    }

    /// Slots running a run now.
    pub fn busy(&self) -> usize {
        self.0.slots - self.0.semaphore.available_permits()
    }

    /// False once draining started.
    pub fn accepting(&self) -> bool {
        self.0.accepting.load(Ordering::SeqCst)
    }

    /// Metrics text.
    pub fn metrics_text(&self) -> String {
        self.0.metrics.render(self.slots(), self.busy())
    }

    fn runs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<RunHandle>>> {
        self.0.runs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The run with this id.
    pub fn get(&self, id: &str) -> Result<Arc<RunHandle>, AppError> {
        self.runs()
            .get(id)
            .cloned()
            .ok_or_else(|| AppError::NotFound(id.to_string()))
    }

    /// Starts a run, or returns the existing one for the same id and
    /// attempt (idempotent POST). The bool is true for a new run.
    pub fn start(&self, req: RunRequest) -> Result<(Arc<RunHandle>, bool), AppError> {
        req.validate().map_err(AppError::BadRequest)?;
        if !self.accepting() {
            return Err(AppError::ShuttingDown);
        }
        let mut runs = self.runs();
        if let Some(h) = runs.get(&req.id) {
            if h.attempt == req.attempt {
                return Ok((h.clone(), false));
            }
            if h.attempt > req.attempt {
                return Err(AppError::Conflict(format!(
                    "run `{}` is already at attempt {}; attempt {} is stale",
                    req.id, h.attempt, req.attempt
                )));
            }
            if !h.finished() {
                return Err(AppError::Conflict(format!(
                    "attempt {} of run `{}` is still running; cancel it before starting attempt {}",
                    h.attempt, req.id, req.attempt
                )));
            }
        }
        let permit = self.0.semaphore.clone().try_acquire_owned().map_err(|_| {
            self.0.metrics.rejected_full();
            AppError::Full {
                slots: self.0.slots,
            }
        })?;
        let (seq, _) = watch::channel(0);
        let handle = Arc::new(RunHandle {
            id: req.id.clone(),
            attempt: req.attempt,
            cancel: CancellationToken::new(),
            log: Mutex::new(EventLog {
                lines: VecDeque::new(),
                first_seq: 0,
                next_seq: 0,
                bytes: 0,
                status: RunStatus {
                    id: req.id.clone(),
                    attempt: req.attempt,
                    job: req.job.clone(),
                    phase: RunPhase::Pending,
                    current_step: None,
                    steps: Vec::new(),
                    events: 0,
                    started_at_ms: None,
                    result: None,
                },
            }),
            seq,
        });
        runs.insert(req.id.clone(), handle.clone());
        drop(runs);
        self.0.metrics.accepted();

        let (tx, mut rx) = mpsc::channel::<RunEvent>(1024);
        let h = handle.clone();
        let live = req.live_log.then(|| {
            LivePublisher::start(self.0.executor.store().clone(), req.id.clone(), req.attempt)
        });
        let forwarder = tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                if let (Some(live), RunEvent::Log(line)) = (&live, &ev) {
                    live.push(line);
                }
                h.push(&ev);
            }
            if let Some(live) = live {
                live.finish();
            }
        });
        let state = self.clone();
        let h = handle.clone();
        tokio::spawn(async move {
            let result = state.0.executor.execute(req, tx, h.cancel.clone()).await;
            let _ = forwarder.await;
            if !h.finished() {
                // The executor always sends Finished; this covers a closed channel.
                h.push(&RunEvent::Finished {
                    result: Box::new(result.clone()),
                });
            }
            drop(permit);
            state
                .0
                .metrics
                .finished(result.phase, result.timings.total_ms);
            state.remember_finished(&h);
        });
        Ok((handle, true))
    }

    fn remember_finished(&self, h: &RunHandle) {
        let mut order = self
            .0
            .finished_order
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        order.push_back((h.id.clone(), h.attempt));
        while order.len() > FINISHED_KEPT {
            if let Some((id, attempt)) = order.pop_front() {
                let mut runs = self.runs();
                if runs
                    .get(&id)
                    .is_some_and(|r| r.attempt == attempt && r.finished())
                {
                    runs.remove(&id);
                }
            }
        }
    }

    /// Stops accepting runs, lets running ones finish until `deadline`, then
    /// cancels the rest and waits for them to end.
    pub async fn drain(&self, deadline: Duration) {
        self.0.accepting.store(false, Ordering::SeqCst);
        let until = tokio::time::Instant::now() + deadline;
        while self.busy() > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if self.busy() > 0 {
            tracing::warn!(
                running = self.busy(),
                "drain deadline reached; cancelling running runs"
            );
            for h in self.runs().values() {
                h.cancel();
            }
            let grace = self.0.executor.config().grace_period + Duration::from_secs(5);
            let until = tokio::time::Instant::now() + grace;
            while self.busy() > 0 && tokio::time::Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}
