//! The warm executor: runs one attempt of one job.
//!
//! ```text
//! execute(request)
//!   workspace  <- materialise source tree and input artifacts (verified)
//!   for each step: own process group, env, timeout, cancel
//!       stdout/stderr -> logger (file + live events + tail)
//!   outputs    <- $KRT_OUTPUT (bounded)
//!   artifacts  -> CAS (tree digests)      log file -> CAS (log digest)
//!   workspace removed (unless kept)
//! ```
//!
//! Called in-process by the embedded engine and behind HTTP by
//! `krt runtime serve`; both get the same [`RunEvent`] stream and
//! [`RunResult`].

mod logs;
pub mod outputs;
pub mod process;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kruntimes_crds::duration::parse_duration;
use kruntimes_crds::{RunInput, RunPhase, RunStep, StepResult};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use logs::{LogLine, MAX_LINE, Masker, Stream, TAIL_BYTES};

use crate::cas::Store;
use crate::digest::Digest;

/// Variables a step inherits from the runtime's own environment; everything
/// else (store credentials, the runtime token path) stays out of steps.
pub const INHERITED_ENV: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ",
    "TMPDIR",
];

/// Default grace period between SIGTERM and SIGKILL.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// One attempt of one job, as the runtime receives it (`POST /v1/runs`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunRequest {
    /// Run identifier: letters, digits, `.`, `_` and `-`.
    pub id: String,
    /// Attempt number, from 1.
    #[serde(default = "first_attempt")]
    pub attempt: u32,
    /// Job name (for `KRT_JOB` and logs).
    pub job: String,
    /// Rendered steps, run in order.
    pub steps: Vec<RunStep>,
    /// Environment for every step.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Secret environment: set for every step, masked (`***`) in logs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
    /// Tree digest of the source snapshot to materialise first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Input artifacts, materialised after the source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<RunInput>,
    /// Artifacts to capture: name -> path or glob.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub artifacts: BTreeMap<String, String>,
    /// Time limit of the whole attempt (`10m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Also write the log to the store in segments while the attempt runs
    /// (`live/<id>/`, deleted when it ends), for clients that reach the store
    /// but not this runtime. Cluster mode sets it; the server honours it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub live_log: bool,
}

fn first_attempt() -> u32 {
    1
}

fn safe_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !s.starts_with('.')
}

fn relative_path_ok(p: &str) -> bool {
    !p.starts_with('/') && !p.split('/').any(|c| c == "..")
}

impl RunRequest {
    /// Checks what can be checked before running; the message names the
    /// field.
    pub fn validate(&self) -> Result<(), String> {
        if !safe_name(&self.id) {
            return Err(format!(
                "`id` must be 1-253 letters, digits, `.`, `_` or `-`, got `{}`",
                self.id
            ));
        }
        if self.attempt == 0 {
            return Err("`attempt` counts from 1".into());
        }
        if self.steps.is_empty() {
            return Err("`steps` is empty: a run needs at least one step".into());
        }
        if let Some(t) = &self.timeout {
            parse_duration(t).map_err(|e| format!("`timeout` `{t}`: {e}"))?;
        }
        for (i, s) in self.steps.iter().enumerate() {
            if let Some(t) = &s.timeout {
                parse_duration(t).map_err(|e| format!("`steps[{i}].timeout` `{t}`: {e}"))?;
            }
        }
        if let Some(s) = &self.source {
            s.parse::<Digest>().map_err(|e| format!("`source`: {e}"))?;
        }
        for (i, input) in self.inputs.iter().enumerate() {
            input
                .digest
                .parse::<Digest>()
                .map_err(|e| format!("`inputs[{i}].digest`: {e}"))?;
            if let Some(p) = &input.path
                && !relative_path_ok(p)
            {
                return Err(format!("`inputs[{i}].path` `{p}` leaves the workspace"));
            }
        }
        for (name, pattern) in &self.artifacts {
            if !relative_path_ok(pattern) {
                return Err(format!(
                    "artifact `{name}` path `{pattern}` leaves the workspace"
                ));
            }
        }
        for k in self.env.keys().chain(self.secrets.keys()) {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(format!("invalid environment variable name `{k}`"));
            }
        }
        Ok(())
    }
}

/// Time spent in each phase of a run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Timings {
    /// Materialising source and inputs.
    pub materialize_ms: u64,
    /// Running the steps.
    pub execute_ms: u64,
    /// Reading outputs, storing artifacts and the log.
    pub capture_ms: u64,
    /// Everything.
    pub total_ms: u64,
}

/// How a run ended.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunResult {
    /// Run identifier.
    pub id: String,
    /// Attempt.
    pub attempt: u32,
    /// Succeeded, Failed, TimedOut or Cancelled.
    pub phase: RunPhase,
    /// Exit code of the last step that ran (absent if killed by a signal).
    pub exit_code: Option<i32>,
    /// One entry per step, including skipped ones.
    pub steps: Vec<StepResult>,
    /// `$KRT_OUTPUT` values.
    pub outputs: BTreeMap<String, String>,
    /// Artifact name -> tree digest.
    pub artifacts: BTreeMap<String, Digest>,
    /// The whole log (NDJSON of [`LogLine`]) in the store.
    pub log_digest: Option<Digest>,
    /// The last [`TAIL_BYTES`] of log text.
    pub log_tail: String,
    /// Why it failed, timed out or was cancelled.
    pub message: Option<String>,
    /// Phase timings.
    pub timings: Timings,
    /// Start, in milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// End, in milliseconds since the Unix epoch.
    pub finished_at_ms: u64,
}

/// Something that happened during a run, in order.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum RunEvent {
    /// The run entered a phase (Running once materialised).
    Phase {
        /// The phase.
        phase: RunPhase,
        /// Milliseconds since the Unix epoch.
        at_ms: u64,
    },
    /// A step's process started (sent once the process exists).
    StepStarted {
        /// Index from 0.
        step: usize,
        /// Display name.
        name: String,
        /// Milliseconds since the Unix epoch.
        at_ms: u64,
        /// Microseconds since the Unix epoch, for latency measurements.
        at_us: u64,
    },
    /// A log line.
    Log(LogLine),
    /// A step ended.
    StepFinished {
        /// Index from 0.
        step: usize,
        /// Its result.
        result: StepResult,
    },
    /// The run ended; always the last event.
    Finished {
        /// The result.
        result: Box<RunResult>,
    },
}

/// Executor settings.
#[derive(Clone, Debug)]
pub struct ExecutorConfig {
    /// Where workspaces are created.
    pub work_dir: PathBuf,
    /// Between SIGTERM and SIGKILL.
    pub grace_period: Duration,
    /// Keep workspaces after the run (for debugging and replay).
    pub keep_workspaces: bool,
    /// Variables inherited from the runtime's environment.
    pub inherit_env: Vec<String>,
}

impl ExecutorConfig {
    /// Defaults with workspaces under `work_dir`.
    pub fn new(work_dir: impl Into<PathBuf>) -> Self {
        Self {
            work_dir: work_dir.into(),
            grace_period: DEFAULT_GRACE,
            keep_workspaces: false,
            inherit_env: INHERITED_ENV.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// Runs jobs. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Executor {
    store: Store,
    config: ExecutorConfig,
    /// Clean run directories, ready for the next run (see
    /// [`Executor::recycle`]).
    free: std::sync::Arc<std::sync::Mutex<Vec<PathBuf>>>,
}

/// Clean run directories kept for reuse, at most.
const FREE_WORKSPACES: usize = 64;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// How one step ended.
enum StepEnd {
    Exited(std::process::ExitStatus),
    TimedOut,
    Cancelled,
}

struct Workspace {
    root: PathBuf,
    ws: PathBuf,
    meta: PathBuf,
}

impl Executor {
    /// An executor storing into `store`.
    pub fn new(store: Store, config: ExecutorConfig) -> Self {
        Self {
            store,
            config,
            free: Default::default(),
        }
    }

    /// The store it uses.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Settings.
    pub fn config(&self) -> &ExecutorConfig {
        &self.config
    }

    fn workspace(&self, req: &RunRequest) -> std::io::Result<Workspace> {
        static N: AtomicU64 = AtomicU64::new(0);
        if !self.config.keep_workspaces {
            let reused = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
            if let Some(root) = reused {
                let ws = root.join("ws");
                return Ok(Workspace {
                    meta: root.clone(),
                    root,
                    ws,
                });
            }
        }
        let n = N.fetch_add(1, Ordering::Relaxed);
        // A kept workspace is named after its run; a recycled one is not.
        let name = if self.config.keep_workspaces {
            format!("{}-a{}-{}-{n}", req.id, req.attempt, std::process::id())
        } else {
            format!("slot-{}-{n}", std::process::id())
        };
        let root = self.config.work_dir.join("runs").join(name);
        // The run's own files (outputs, scripts, a spilled log) sit beside
        // the workspace, in the run directory: one directory fewer per run.
        let ws = root.join("ws");
        std::fs::create_dir_all(&ws)?;
        let meta = root.clone();
        Ok(Workspace { root, ws, meta })
    }

    /// Empties a finished run's directory and keeps it for the next run, so
    /// a run costs no directory creation or deletion (ext4 slows down with
    /// every recently deleted inode). Anything unexpected, or a full free
    /// list, removes the directory instead.
    async fn recycle(&self, ws: Workspace) {
        fn clean(ws: &Workspace) -> std::io::Result<()> {
            use std::os::unix::fs::PermissionsExt as _;
            for entry in std::fs::read_dir(&ws.root)? {
                let entry = entry?;
                if entry.file_name() == "ws" {
                    continue;
                }
                if entry.file_type()?.is_dir() {
                    std::fs::remove_dir_all(entry.path())?;
                } else {
                    std::fs::remove_file(entry.path())?;
                }
            }
            let meta = std::fs::symlink_metadata(&ws.ws)?;
            if !meta.is_dir() {
                return Err(std::io::Error::other("ws is not a directory"));
            }
            if std::fs::read_dir(&ws.ws)?.next().is_some() {
                std::fs::remove_dir_all(&ws.ws)?;
                std::fs::create_dir(&ws.ws)?;
            } else if meta.permissions().mode() & 0o7777 != 0o755 {
                std::fs::set_permissions(&ws.ws, std::fs::Permissions::from_mode(0o755))?;
            }
            Ok(())
        }
        /// True when nothing is left to clean: the common case of a run
        /// that wrote nothing, checked without leaving the async thread.
        fn already_clean(ws: &Workspace) -> std::io::Result<bool> {
            use std::os::unix::fs::PermissionsExt as _;
            let mut entries = std::fs::read_dir(&ws.root)?;
            let only_ws = match (entries.next(), entries.next()) {
                (Some(e), None) => e?.file_name() == "ws",
                _ => false,
            };
            let meta = std::fs::symlink_metadata(&ws.ws)?;
            Ok(only_ws
                && meta.is_dir()
                && meta.permissions().mode() & 0o7777 == 0o755
                && std::fs::read_dir(&ws.ws)?.next().is_none())
        }
        let root = ws.root.clone();
        let full = self.free.lock().unwrap_or_else(|e| e.into_inner()).len() >= FREE_WORKSPACES;
        if !full {
            // A workspace full of files (a build tree) is cleaned on the
            // blocking pool, never on an async worker thread.
            let cleaned = match already_clean(&ws) {
                Ok(true) => Ok(ws),
                _ => tokio::task::spawn_blocking(move || clean(&ws).map(|()| ws))
                    .await
                    .map_err(std::io::Error::other)
                    .and_then(|r| r),
            };
            match cleaned {
                Ok(ws) => {
                    let kept = {
                        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
                        let room = free.len() < FREE_WORKSPACES;
                        if room {
                            free.push(ws.root);
                        }
                        room
                    };
                    if kept {
                        return;
                    }
                }
                Err(_) => {
                    // What could not be cleaned is removed below, if it can be.
                }
            }
        }
        let _ = tokio::fs::remove_dir_all(&root).await;
    }

    /// Runs `req` to the end and returns its result. Events go to `events`
    /// (a closed receiver is fine); `cancel` stops it (SIGTERM, grace,
    /// SIGKILL). Never panics on bad input: a request that fails
    /// [`RunRequest::validate`] ends Failed with the reason.
    pub async fn execute(
        &self,
        req: RunRequest,
        events: mpsc::Sender<RunEvent>,
        cancel: CancellationToken,
    ) -> RunResult {
        let start = Instant::now();
        let result = RunResult {
            id: req.id.clone(),
            attempt: req.attempt,
            phase: RunPhase::Running,
            started_at_ms: now_ms(),
            steps: req
                .steps
                .iter()
                .enumerate()
                .map(|(i, s)| StepResult {
                    name: step_name(s, i),
                    exit_code: None,
                    duration_ms: 0,
                    phase: Some("Skipped".into()),
                })
                .collect(),
            ..RunResult::default()
        };
        if let Err(why) = req.validate() {
            return finish(
                result,
                RunPhase::Failed,
                Some(format!("invalid run request: {why}")),
                start,
                &events,
            )
            .await;
        }
        let ws = match self.workspace(&req) {
            Ok(ws) => ws,
            Err(e) => {
                let msg = format!(
                    "cannot create a workspace under {}: {e}",
                    self.config.work_dir.display()
                );
                return finish(result, RunPhase::Failed, Some(msg), start, &events).await;
            }
        };
        let result = self
            .run_in(&req, &ws, result, &events, &cancel, start)
            .await;
        if !self.config.keep_workspaces {
            self.recycle(ws).await;
        }
        let _ = events
            .send(RunEvent::Finished {
                result: Box::new(result.clone()),
            })
            .await;
        result
    }

    async fn run_in(
        &self,
        req: &RunRequest,
        ws: &Workspace,
        mut result: RunResult,
        events: &mpsc::Sender<RunEvent>,
        cancel: &CancellationToken,
        start: Instant,
    ) -> RunResult {
        // Materialise source, then inputs (inputs win on overlap).
        if let Some(src) = &req.source {
            let d: Digest = src.parse().expect("validated");
            if let Err(e) = self.store.materialize(&d, &ws.ws).await {
                result.timings.materialize_ms = ms(start.elapsed());
                return done(
                    result,
                    RunPhase::Failed,
                    Some(format!("failed to materialize the source tree {d}: {e}")),
                    start,
                );
            }
        }
        for input in &req.inputs {
            let d: Digest = input.digest.parse().expect("validated");
            let dest = match &input.path {
                Some(p) if !p.is_empty() => ws.ws.join(p),
                _ => ws.ws.clone(),
            };
            if let Err(e) = self.store.materialize(&d, &dest).await {
                result.timings.materialize_ms = ms(start.elapsed());
                return done(
                    result,
                    RunPhase::Failed,
                    Some(format!(
                        "failed to materialize input `{}` ({d}): {e}",
                        input.name
                    )),
                    start,
                );
            }
        }
        result.timings.materialize_ms = ms(start.elapsed());
        let _ = events
            .send(RunEvent::Phase {
                phase: RunPhase::Running,
                at_ms: now_ms(),
            })
            .await;

        let exec_start = Instant::now();
        let masker = Masker::new(req.secrets.values());
        let (log_tx, logger) =
            logs::spawn_logger(ws.meta.join("log.ndjson"), masker, events.clone(), start);
        let output_file = ws.meta.join("output");
        let job_deadline = req
            .timeout
            .as_deref()
            .and_then(|t| parse_duration(t).ok())
            .map(|d| (tokio::time::Instant::now() + d, d));
        let base_env = self.base_env(req, ws, &output_file);

        let mut phase = RunPhase::Succeeded;
        let mut message = None;
        for (i, step) in req.steps.iter().enumerate() {
            if cancel.is_cancelled() {
                phase = RunPhase::Cancelled;
                message = Some("cancelled before the step started".into());
                break;
            }
            let step_timeout = step.timeout.as_deref().and_then(|t| parse_duration(t).ok());
            let (end, outcome) = self
                .run_step(
                    i,
                    step,
                    &base_env,
                    ws,
                    step_timeout,
                    job_deadline,
                    cancel,
                    &log_tx,
                    events,
                )
                .await;
            result.exit_code = outcome.exit_code;
            result.steps[i] = outcome;
            match end {
                Ok(()) => {}
                Err((p, m)) => {
                    phase = p;
                    message = Some(m);
                    break;
                }
            }
        }
        drop(log_tx);
        let log = match logger.await {
            Ok(s) => Some(s),
            Err(e) => {
                phase = RunPhase::Failed;
                message.get_or_insert(format!("the log writer crashed: {e}"));
                None
            }
        };
        result.timings.execute_ms = ms(exec_start.elapsed());

        // Capture: outputs and artifacts only for a successful run; the log
        // always. A run never reports success without its artifacts and log.
        let capture_start = Instant::now();
        if phase == RunPhase::Succeeded {
            match outputs::read(&output_file) {
                Ok(o) => result.outputs = o,
                Err(e) => {
                    phase = RunPhase::Failed;
                    message = Some(e.to_string());
                }
            }
        }
        if phase == RunPhase::Succeeded {
            for (name, pattern) in &req.artifacts {
                match self
                    .store
                    .capture(&ws.ws, std::slice::from_ref(pattern))
                    .await
                {
                    Ok(d) => {
                        result.artifacts.insert(name.clone(), d);
                    }
                    Err(e) => {
                        phase = RunPhase::Failed;
                        message = Some(format!(
                            "failed to capture artifact `{name}` (`{pattern}`): {e}"
                        ));
                        result.artifacts.clear();
                        break;
                    }
                }
            }
        }
        if let Some(log) = log {
            result.log_tail = log.tail;
            if let Some(err) = log.error {
                if phase == RunPhase::Succeeded {
                    phase = RunPhase::Failed;
                }
                message.get_or_insert(err);
            } else {
                let stored = match log.body {
                    logs::LogBody::Memory(bytes) => self.store.put_bytes(bytes.into()).await,
                    logs::LogBody::File(path) => self.store.put_file(&path).await,
                };
                match stored {
                    Ok(d) => result.log_digest = Some(d),
                    Err(e) => {
                        if phase == RunPhase::Succeeded {
                            phase = RunPhase::Failed;
                            result.artifacts.clear();
                        }
                        message.get_or_insert(format!("failed to store the log: {e}"));
                    }
                }
            }
        }
        result.timings.capture_ms = ms(capture_start.elapsed());
        done(result, phase, message, start)
    }

    fn base_env(
        &self,
        req: &RunRequest,
        ws: &Workspace,
        output_file: &Path,
    ) -> Vec<(String, String)> {
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        for k in &self.config.inherit_env {
            if let Ok(v) = std::env::var(k) {
                env.insert(k.clone(), v);
            }
        }
        env.extend(req.env.clone());
        env.insert("KRT_OUTPUT".into(), output_file.display().to_string());
        env.insert("KRT_WORKSPACE".into(), ws.ws.display().to_string());
        env.insert("KRT_RUN_ID".into(), req.id.clone());
        env.insert("KRT_JOB".into(), req.job.clone());
        env.insert("KRT_ATTEMPT".into(), req.attempt.to_string());
        env.extend(req.secrets.clone());
        env.into_iter().collect()
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_step(
        &self,
        i: usize,
        step: &RunStep,
        base_env: &[(String, String)],
        ws: &Workspace,
        step_timeout: Option<Duration>,
        job_deadline: Option<(tokio::time::Instant, Duration)>,
        cancel: &CancellationToken,
        log_tx: &mpsc::Sender<logs::Piece>,
        events: &mpsc::Sender<RunEvent>,
    ) -> (Result<(), (RunPhase, String)>, StepResult) {
        let name = step_name(step, i);
        let started = Instant::now();
        let mut outcome = StepResult {
            name: name.clone(),
            exit_code: None,
            duration_ms: 0,
            phase: Some("Failed".into()),
        };
        let krt_line = |text: String| logs::Piece {
            step: i,
            stream: Stream::Krt,
            text,
        };
        let mut env: Vec<(String, String)> = base_env.to_vec();
        // Step env overrides job env; secrets (in base_env) still win.
        for (k, v) in &step.env {
            if let Some(slot) = env.iter_mut().find(|(ek, _)| ek == k) {
                slot.1 = v.clone();
            } else {
                env.push((k.clone(), v.clone()));
            }
        }
        let argv = match process::shell_argv(
            step.shell.as_deref(),
            &step.run,
            &ws.meta.join(format!("step-{i}.script")),
        ) {
            Ok(a) => a,
            Err(e) => {
                let msg = format!("{name}: cannot write the script file: {e}");
                let _ = log_tx.send(krt_line(msg.clone())).await;
                return (Err((RunPhase::Failed, msg)), outcome);
            }
        };
        let mut child = match process::spawn(&argv, &ws.ws, &env) {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("{name}: failed to start `{}`: {e}", argv[0]);
                let _ = log_tx.send(krt_line(msg.clone())).await;
                outcome.duration_ms = ms(started.elapsed());
                let _ = events
                    .send(RunEvent::StepFinished {
                        step: i,
                        result: outcome.clone(),
                    })
                    .await;
                return (Err((RunPhase::Failed, msg)), outcome);
            }
        };
        let at_us = now_us();
        let _ = events
            .send(RunEvent::StepStarted {
                step: i,
                name: name.clone(),
                at_ms: at_us / 1000,
                at_us,
            })
            .await;
        let pgid = child.id().map_or(0, |p| p as i32);
        let readers = [
            child
                .stdout
                .take()
                .map(|p| tokio::spawn(logs::read_lines(p, i, Stream::Stdout, log_tx.clone()))),
            child
                .stderr
                .take()
                .map(|p| tokio::spawn(logs::read_lines(p, i, Stream::Stderr, log_tx.clone()))),
        ];

        // The earliest of the step's own limit and the job's.
        let now = tokio::time::Instant::now();
        let mut limit: Option<(tokio::time::Instant, String)> =
            step_timeout.map(|d| (now + d, format!("{name} timed out after {}", human(d))));
        if let Some((at, d)) = job_deadline
            && limit.as_ref().is_none_or(|(l, _)| at < *l)
        {
            limit = Some((
                at,
                format!(
                    "{name} timed out: the job's limit of {} was reached",
                    human(d)
                ),
            ));
        }
        let sleep = async {
            match &limit {
                Some((at, _)) => tokio::time::sleep_until(*at).await,
                None => std::future::pending().await,
            }
        };
        let end = tokio::select! {
            status = child.wait() => match status {
                Ok(s) => StepEnd::Exited(s),
                Err(_) => StepEnd::Cancelled,
            },
            () = sleep => StepEnd::TimedOut,
            () = cancel.cancelled() => StepEnd::Cancelled,
        };
        let grace = self.config.grace_period;
        let status = match end {
            StepEnd::Exited(s) => Some(s),
            StepEnd::TimedOut | StepEnd::Cancelled => {
                let what = if matches!(end, StepEnd::TimedOut) {
                    "timeout"
                } else {
                    "cancel"
                };
                let _ = log_tx
                    .send(krt_line(format!(
                        "{what}: sending SIGTERM to the step's processes, SIGKILL after {}",
                        human(grace)
                    )))
                    .await;
                if process::terminate_group(pgid, grace).await {
                    let _ = log_tx
                        .send(krt_line("grace period over: sent SIGKILL".into()))
                        .await;
                }
                child.wait().await.ok()
            }
        };
        // Background processes the step left behind end with it.
        if pgid > 0 && process::group_alive(pgid) {
            let _ = log_tx
                .send(krt_line(
                    "the step left processes running; stopping them".into(),
                ))
                .await;
            process::terminate_group(pgid, grace).await;
        }
        // The pipes close once every holder is gone; a process that escaped
        // the group could hold them open, so wait a bounded time.
        for r in readers.into_iter().flatten() {
            let abort = r.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), r)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        outcome.duration_ms = ms(started.elapsed());
        outcome.exit_code = status.and_then(|s| s.code());
        let verdict = match end {
            StepEnd::TimedOut => {
                let msg = limit.map(|(_, m)| m).unwrap_or_default();
                outcome.phase = Some("TimedOut".into());
                Err((RunPhase::TimedOut, msg))
            }
            StepEnd::Cancelled => {
                outcome.phase = Some("Cancelled".into());
                Err((RunPhase::Cancelled, format!("{name} was cancelled")))
            }
            StepEnd::Exited(s) if s.success() => {
                outcome.phase = Some("Succeeded".into());
                Ok(())
            }
            StepEnd::Exited(s) => {
                use std::os::unix::process::ExitStatusExt as _;
                let msg = match (s.code(), s.signal()) {
                    (Some(c), _) => format!("{name} failed with exit code {c}"),
                    (None, Some(sig)) => format!("{name} was killed by signal {sig}"),
                    _ => format!("{name} failed"),
                };
                Err((RunPhase::Failed, msg))
            }
        };
        if let Err((_, msg)) = &verdict {
            let _ = log_tx.send(krt_line(msg.clone())).await;
        }
        let _ = events
            .send(RunEvent::StepFinished {
                step: i,
                result: outcome.clone(),
            })
            .await;
        (verdict, outcome)
    }
}

fn step_name(s: &RunStep, i: usize) -> String {
    s.name.clone().unwrap_or_else(|| format!("step {}", i + 1))
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, 0) => format!("{}ms", d.as_millis()),
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}

fn done(
    mut result: RunResult,
    phase: RunPhase,
    message: Option<String>,
    start: Instant,
) -> RunResult {
    result.phase = phase;
    result.message = message;
    result.timings.total_ms = ms(start.elapsed());
    result.finished_at_ms = now_ms();
    result
}

async fn finish(
    result: RunResult,
    phase: RunPhase,
    message: Option<String>,
    start: Instant,
    events: &mpsc::Sender<RunEvent>,
) -> RunResult {
    let result = done(result, phase, message, start);
    let _ = events
        .send(RunEvent::Finished {
            result: Box::new(result.clone()),
        })
        .await;
    result
}

#[cfg(test)]
mod tests;
