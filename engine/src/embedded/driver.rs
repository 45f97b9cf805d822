//! The embedded driver: feeds the scheduler core, renders jobs when they
//! become ready, serves them from the step cache or runs them on the
//! in-process executor, and records everything for `krt runs`, `krt logs`,
//! `krt explain` and `krt replay`.
//!
//! ```text
//!   Scheduler ──actions──> driver loop ──spawn──> executor tasks
//!       ^                     │  ^                    │
//!       └──────inputs─────────┘  └────── messages ────┘ (finished, logs, retry due)
//! ```
//!
//! One loop owns the scheduler and what the user sees; tasks report over a
//! channel.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kruntimes_crds::{JobResult, RunInput};
use kruntimes_runtime::Digest;
use kruntimes_runtime::cas::Store;
use kruntimes_runtime::exec::{Executor, ExecutorConfig, LogLine, RunEvent, RunRequest, RunResult};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::cache::{self, Action, CACHE_VERSION, CacheRecord, Miss};
use super::record::{self, JobRecord, RunRecord};
use super::source;
use crate::plan::render::{NeedState, RenderContext, render_job, resolve_params, should_run};
use crate::plan::{NodeId, Plan};
use crate::scheduler::{self, NodeSpec, Outcome, Policy, Scheduler, WorkflowResult};

/// Pool identity of embedded runs (part of the cache key).
pub const HOST_POOL: &str = "host";

/// How `krt run` runs a workflow.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// `-p key=value` pairs.
    pub params: Vec<(String, String)>,
    /// Concurrent jobs.
    pub jobs: usize,
    /// Serve nothing from the cache and record nothing in it.
    pub no_cache: bool,
    /// Let independent jobs go on after a failure.
    pub keep_going: bool,
    /// Run only these jobs and what they need.
    pub only: Vec<String>,
    /// Directory to snapshot as the source tree.
    pub source_root: PathBuf,
    /// Keep workspaces after jobs end.
    pub keep_workspaces: bool,
    /// Where workspaces go.
    pub work_dir: PathBuf,
    /// Between SIGTERM and SIGKILL.
    pub grace_period: Duration,
    /// The file as the user named it (for records).
    pub file: String,
}

/// What the user interface hears about.
pub trait Ui: Send {
    /// The run id and source digest are known.
    fn begin(&mut self, run_id: &str, workflow: &str, nodes: usize);
    /// A job node started an attempt.
    fn started(&mut self, display: &str, attempt: u32);
    /// A log line of a running job.
    fn log(&mut self, display: &str, line: &LogLine);
    /// A job node finished (or was skipped, or served from the cache).
    fn finished(&mut self, report: &NodeReport);
    /// A note from the engine (cache misses explained, retries).
    fn note(&mut self, text: &str);
}

/// The outcome of one job node.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeReport {
    /// Node name.
    pub node: String,
    /// Display name.
    pub display: String,
    /// Result.
    pub result: JobResult,
    /// Served from the step cache.
    pub cached: bool,
    /// Attempts made.
    pub attempts: u32,
    /// Wall time of the last attempt (0 when cached or skipped).
    pub duration_ms: u64,
    /// Outputs.
    pub outputs: BTreeMap<String, String>,
    /// Artifact digests.
    pub artifacts: BTreeMap<String, Digest>,
    /// Log digest.
    pub log: Option<Digest>,
    /// Why it failed, timed out or was skipped.
    pub message: Option<String>,
}

/// The outcome of a whole run.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunReport {
    /// Run id.
    pub id: String,
    /// Workflow name.
    pub workflow: String,
    /// Overall result.
    pub result: WorkflowResult,
    /// Source tree digest.
    pub source: Option<Digest>,
    /// Wall time.
    pub duration_ms: u64,
    /// Per node, in plan order (only the selected nodes).
    pub jobs: Vec<NodeReport>,
    /// Problems recording the run (the run itself is not affected).
    pub warnings: Vec<String>,
}

/// Errors that stop a run before or outside its jobs.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Bad `-p` values or `--only` names.
    #[error("{0}")]
    Usage(String),
    /// The store or the source tree.
    #[error("{0}")]
    Store(String),
    /// The scheduler was fed something inconsistent: a bug.
    #[error("internal error: {0}")]
    Internal(String),
}

enum Msg {
    Log(usize, LogLine),
    Finished(usize, u32, Box<RunResult>, Duration),
    RetryDue(usize, u32),
}

struct NodeRun {
    cancel: Option<CancellationToken>,
    attempts: u32,
    action: Option<Digest>,
    key: Option<Digest>,
    action_value: Option<Action>,
    /// The action, when it is kept in the run record instead of a blob.
    action_inline: Option<Box<Action>>,
    render_error: Option<String>,
    shown: bool,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn short_hex() -> String {
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id();
    format!("{:04x}", n & 0xffff)
}

/// The nodes `--only` selects: those of the named jobs and everything they
/// (transitively) need, in plan order.
pub fn select(plan: &Plan, only: &[String]) -> Result<Vec<NodeId>, String> {
    if only.is_empty() {
        return Ok((0..plan.nodes.len()).collect());
    }
    let mut jobs = std::collections::BTreeSet::new();
    let mut stack = Vec::new();
    for name in only {
        let (id, _) = plan.job(name).ok_or_else(|| {
            let hint =
                crate::plan::diag::did_you_mean(name, plan.jobs.iter().map(|j| j.key.as_str()))
                    .unwrap_or_else(|| {
                        format!(
                            "jobs: {}",
                            plan.jobs
                                .iter()
                                .map(|j| j.key.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    });
            format!("`--only {name}`: the workflow has no job `{name}` (hint: {hint})")
        })?;
        stack.push(id);
    }
    while let Some(j) = stack.pop() {
        if jobs.insert(j) {
            stack.extend(plan.jobs[j].needs.iter().copied());
        }
    }
    Ok((0..plan.nodes.len())
        .filter(|n| jobs.contains(&plan.nodes[*n].job))
        .collect())
}

/// Runs a planned workflow to the end.
pub async fn run(
    plan: &Plan,
    store: &Store,
    opts: &RunOptions,
    ui: &mut dyn Ui,
    cancel: CancellationToken,
) -> Result<RunReport, EngineError> {
    let started = Instant::now();
    let started_ms = now_ms();
    let params =
        resolve_params(plan, &opts.params).map_err(|e| EngineError::Usage(e.join("\n")))?;
    let selected = select(plan, &opts.only).map_err(EngineError::Usage)?;
    let run_id = format!(
        "{}-{}-{}",
        plan.name,
        record::timestamp(started_ms),
        short_hex()
    );
    let source = source::snapshot(store, &opts.source_root)
        .await
        .map_err(EngineError::Store)?;
    ui.begin(&run_id, &plan.name, selected.len());

    // Scheduler over the selected nodes (local index i <-> plan node selected[i]).
    let local: HashMap<NodeId, usize> = selected.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let specs: Vec<NodeSpec> = selected
        .iter()
        .map(|&n| {
            let node = &plan.nodes[n];
            let job = &plan.jobs[node.job];
            NodeSpec {
                needs: node
                    .needs
                    .iter()
                    .filter_map(|d| local.get(d).copied())
                    .collect(),
                retries: job.retries,
                has_condition: plan.ast.jobs[node.job].if_.is_some(),
            }
        })
        .collect();
    let policy = Policy {
        keep_going: opts.keep_going,
        max_parallel: Some(opts.jobs.max(1)),
        seed: started_ms,
        ..Policy::default()
    };
    let mut sched = Scheduler::new(specs, policy);
    let mut config = ExecutorConfig::new(opts.work_dir.clone());
    config.grace_period = opts.grace_period;
    config.keep_workspaces = opts.keep_workspaces;
    let executor = Executor::new(store.clone(), config);

    let mut runs: Vec<NodeRun> = selected
        .iter()
        .map(|_| NodeRun {
            cancel: None,
            attempts: 0,
            action: None,
            key: None,
            action_value: None,
            action_inline: None,
            render_error: None,
            shown: false,
        })
        .collect();
    let mut reports: Vec<Option<NodeReport>> = vec![None; selected.len()];
    let mut narrowed: HashMap<usize, Digest> = HashMap::new();
    let mut warnings = Vec::new();
    let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
    let mut actions: std::collections::VecDeque<scheduler::Action> = sched.start().into();
    let mut cancel_sent = false;
    let result = loop {
        let mut done = None;
        while let Some(action) = actions.pop_front() {
            let inputs: Vec<scheduler::Input> = match action {
                scheduler::Action::Done { result } => {
                    done = Some(result);
                    break;
                }
                scheduler::Action::Decide { node, cancelled } => {
                    let n = selected[node];
                    let run = match decide(plan, &local, &reports, &params, &run_id, n, cancelled) {
                        Ok(b) => b,
                        Err(message) => {
                            // Fails the job when it starts, with the diagnostic.
                            runs[node].render_error = Some(message);
                            true
                        }
                    };
                    vec![scheduler::Input::Decided { node, run }]
                }
                scheduler::Action::Start { node, attempt } => {
                    let mut inputs = vec![scheduler::Input::Started { node, attempt }];
                    runs[node].attempts = attempt;
                    let n = selected[node];
                    let display = plan.nodes[n].display.clone();
                    let prepared = match &runs[node].render_error {
                        Some(e) => Err(e.clone()),
                        None => prepare(
                            plan,
                            store,
                            &local,
                            &reports,
                            n,
                            &params,
                            &run_id,
                            source,
                            &mut narrowed,
                            attempt,
                            HOST_POOL,
                        )
                        .await
                        .map_err(|e| e.to_string()),
                    };
                    match prepared {
                        Err(message) => {
                            runs[node].render_error = Some(message.clone());
                            inputs.push(scheduler::Input::Finished {
                                node,
                                attempt,
                                outcome: Outcome::Failed,
                            });
                        }
                        Ok((action, request)) => {
                            let key = action.key();
                            runs[node].key = Some(key);
                            let use_cache = !opts.no_cache && plan.jobs[plan.nodes[n].job].cache;
                            let mut served = false;
                            if use_cache {
                                match cache::lookup(store, &key).await {
                                    Ok(rec) => {
                                        runs[node].action = Some(rec.action);
                                        reports[node] = Some(NodeReport {
                                            node: plan.nodes[n].name.clone(),
                                            display: display.clone(),
                                            result: JobResult::Success,
                                            cached: true,
                                            attempts: attempt,
                                            duration_ms: 0,
                                            outputs: rec.outputs.clone(),
                                            artifacts: rec.artifacts.clone(),
                                            log: rec.log,
                                            message: None,
                                        });
                                        inputs.push(scheduler::Input::Finished {
                                            node,
                                            attempt,
                                            outcome: Outcome::Cached,
                                        });
                                        served = true;
                                    }
                                    Err(Miss::Absent) => {}
                                    Err(Miss::Broken(why)) => {
                                        ui.note(&format!("{display}: cache record ignored, running instead: {why}"));
                                    }
                                }
                            }
                            if !served {
                                ui.started(&display, attempt);
                                runs[node].action_value = Some(action);
                                let token = cancel.child_token();
                                runs[node].cancel = Some(token.clone());
                                spawn_attempt(&executor, request, node, attempt, token, tx.clone());
                            }
                        }
                    }
                    inputs
                }
                scheduler::Action::ScheduleRetry {
                    node,
                    attempt,
                    delay,
                } => {
                    let display = &plan.nodes[selected[node]].display;
                    ui.note(&format!(
                        "{display}: retrying in {:.1}s (attempt {attempt})",
                        delay.as_secs_f64()
                    ));
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = tx.send(Msg::RetryDue(node, attempt));
                    });
                    Vec::new()
                }
                scheduler::Action::Cancel { node } => {
                    if let Some(t) = &runs[node].cancel {
                        t.cancel();
                    }
                    Vec::new()
                }
            };
            for input in inputs {
                let more = sched
                    .handle(input)
                    .map_err(|e| EngineError::Internal(e.to_string()))?;
                actions.extend(more);
            }
            // Report nodes that just reached a final state.
            report_finished(plan, &selected, &sched, &mut runs, &mut reports, ui);
        }
        if let Some(r) = done {
            break r;
        }
        let msg = tokio::select! {
            m = rx.recv() => m,
            () = cancel.cancelled(), if !cancel_sent => {
                cancel_sent = true;
                ui.note("cancelling: stopping running jobs (press Ctrl-C again to exit at once)");
                let more = sched.handle(scheduler::Input::Cancel).map_err(|e| EngineError::Internal(e.to_string()))?;
                actions.extend(more);
                report_finished(plan, &selected, &sched, &mut runs, &mut reports, ui);
                continue;
            }
        };
        let Some(msg) = msg else {
            return Err(EngineError::Internal("the task channel closed".into()));
        };
        match msg {
            Msg::Log(node, line) => ui.log(&plan.nodes[selected[node]].display, &line),
            Msg::RetryDue(node, attempt) => {
                let more = sched
                    .handle(scheduler::Input::RetryDue { node, attempt })
                    .map_err(|e| EngineError::Internal(e.to_string()))?;
                actions.extend(more);
            }
            Msg::Finished(node, attempt, result, elapsed) => {
                let n = selected[node];
                let outcome = match result.phase {
                    kruntimes_crds::RunPhase::Succeeded => Outcome::Succeeded,
                    kruntimes_crds::RunPhase::TimedOut => Outcome::TimedOut,
                    kruntimes_crds::RunPhase::Cancelled => Outcome::Cancelled,
                    _ => Outcome::Failed,
                };
                let job_result = match outcome {
                    Outcome::Succeeded | Outcome::Cached => JobResult::Success,
                    Outcome::Cancelled => JobResult::Cancelled,
                    Outcome::Failed | Outcome::TimedOut => JobResult::Failure,
                };
                runs[node].cancel = None;
                // Remember the action (for explain and replay) and, on
                // success, the cache record.
                if let Some(action) = runs[node].action_value.clone() {
                    // Only a cache record needs the action as a blob of its
                    // own; otherwise the run record carries it inline (one
                    // file per run, not one per job).
                    let bytes = bytes::Bytes::from(action.to_bytes());
                    runs[node].action = Some(Digest::of(&bytes));
                    let caching = outcome == Outcome::Succeeded
                        && !opts.no_cache
                        && plan.jobs[plan.nodes[n].job].cache;
                    if caching {
                        // A cache record must never point at a missing action.
                        if let Err(e) = store.put_bytes(bytes).await {
                            warnings.push(format!("failed to store the action: {e}"));
                            runs[node].action_inline = Some(Box::new(action.clone()));
                            runs[node].action = None;
                        }
                    } else {
                        runs[node].action_inline = Some(Box::new(action.clone()));
                    }
                    if caching
                        && let (Some(key), Some(action_digest)) =
                            (runs[node].key, runs[node].action)
                    {
                        let rec = CacheRecord {
                            key,
                            action: action_digest,
                            outputs: result.outputs.clone(),
                            artifacts: result.artifacts.clone(),
                            log: result.log_digest,
                            run_id: run_id.clone(),
                            duration_ms: result.timings.total_ms,
                            created_ms: now_ms(),
                        };
                        if let Err(e) = cache::save(store, &rec).await {
                            warnings.push(e);
                        }
                    }
                }
                reports[node] = Some(NodeReport {
                    node: plan.nodes[n].name.clone(),
                    display: plan.nodes[n].display.clone(),
                    result: job_result,
                    cached: false,
                    attempts: attempt,
                    duration_ms: elapsed.as_millis() as u64,
                    outputs: result.outputs.clone(),
                    artifacts: result.artifacts.clone(),
                    log: result.log_digest,
                    message: result.message.clone(),
                });
                let more = sched
                    .handle(scheduler::Input::Finished {
                        node,
                        attempt,
                        outcome,
                    })
                    .map_err(|e| EngineError::Internal(e.to_string()))?;
                actions.extend(more);
            }
        }
        report_finished(plan, &selected, &sched, &mut runs, &mut reports, ui);
    };

    let jobs: Vec<NodeReport> = reports.iter().flatten().cloned().collect();
    let record = RunRecord {
        id: run_id.clone(),
        workflow: plan.name.clone(),
        file: opts.file.clone(),
        params: params.clone(),
        source: Some(source),
        started_ms,
        finished_ms: now_ms(),
        result: format!("{result:?}").to_lowercase(),
        jobs: runs
            .iter()
            .zip(&selected)
            .enumerate()
            .map(|(i, (r, &n))| {
                let rep = reports[i].as_ref();
                JobRecord {
                    node: plan.nodes[n].name.clone(),
                    job: plan.jobs[plan.nodes[n].job].key.clone(),
                    display: plan.nodes[n].display.clone(),
                    result: rep.map(|x| x.result),
                    cached: rep.is_some_and(|x| x.cached),
                    attempts: r.attempts,
                    action: r.action,
                    action_inline: r.action_inline.clone(),
                    outputs: rep.map(|x| x.outputs.clone()).unwrap_or_default(),
                    artifacts: rep.map(|x| x.artifacts.clone()).unwrap_or_default(),
                    log: rep.and_then(|x| x.log),
                    duration_ms: rep.map_or(0, |x| x.duration_ms),
                    message: rep.and_then(|x| x.message.clone()),
                }
            })
            .collect(),
    };
    if let Err(e) = record::save(store, &record).await {
        warnings.push(e);
    }
    Ok(RunReport {
        id: run_id,
        workflow: plan.name.clone(),
        result,
        source: Some(source),
        duration_ms: started.elapsed().as_millis() as u64,
        jobs,
        warnings,
    })
}

/// Evaluates the `if:` of plan node `n` (or the default `success()`) once
/// its needs finished. An expression that cannot be evaluated gives the
/// diagnostic's text: the driver then fails the job when it starts.
#[allow(clippy::too_many_arguments)]
pub(crate) fn decide(
    plan: &Plan,
    local: &HashMap<NodeId, usize>,
    reports: &[Option<NodeReport>],
    params: &BTreeMap<String, serde_json::Value>,
    workflow_id: &str,
    n: NodeId,
    cancelled: bool,
) -> Result<bool, String> {
    let needs = need_states(plan, local, reports, n);
    let ctx = RenderContext {
        params,
        needs: &needs,
        workflow_id,
        cancelled,
    };
    should_run(plan, n, &ctx).map_err(|d| render_message(plan, &d))
}

/// A diagnostic as plain text, for a job's message.
fn render_message(plan: &Plan, d: &crate::plan::Diagnostic) -> String {
    crate::plan::Diagnostics::new(plan.source.clone(), vec![d.clone()])
        .render(false)
        .trim_end()
        .to_string()
}

/// `needs.<job>` of the finished jobs `node` needs (directly or not): the
/// worst result over each job's cells, outputs merged in cell order.
/// `reports` is indexed like `selected`; `local` maps a plan node to it.
pub(crate) fn need_states(
    plan: &Plan,
    local: &HashMap<NodeId, usize>,
    reports: &[Option<NodeReport>],
    node: NodeId,
) -> BTreeMap<String, NeedState> {
    let mut out: BTreeMap<String, NeedState> = BTreeMap::new();
    for j in plan.ancestors(plan.nodes[node].job) {
        let key = &plan.jobs[j].key;
        for cell in &plan.jobs[j].nodes {
            let Some(rep) = local.get(cell).and_then(|&i| reports[i].as_ref()) else {
                continue;
            };
            let entry = out.entry(key.clone()).or_insert(NeedState {
                result: rep.result,
                outputs: BTreeMap::new(),
            });
            entry.result = worse(entry.result, rep.result);
            entry.outputs.extend(rep.outputs.clone());
        }
    }
    out
}

fn worse(a: JobResult, b: JobResult) -> JobResult {
    let rank = |r: JobResult| match r {
        JobResult::Success => 0,
        JobResult::Skipped => 1,
        JobResult::Cancelled => 2,
        JobResult::Failure => 3,
    };
    if rank(b) > rank(a) { b } else { a }
}

/// Why a job could not be prepared.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum PrepareError {
    /// The job itself (a template, a missing input): it fails.
    #[error("{0}")]
    Job(String),
    /// The store could not be read: worth trying again.
    #[error("{0}")]
    Store(String),
}

/// Renders a node and builds its action and run request. `pool` is the
/// pool identity in the action (and so in the cache key): [`HOST_POOL`]
/// embedded, the pool's image in cluster mode.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn prepare(
    plan: &Plan,
    store: &Store,
    local: &HashMap<NodeId, usize>,
    reports: &[Option<NodeReport>],
    n: NodeId,
    params: &BTreeMap<String, serde_json::Value>,
    run_id: &str,
    source: Digest,
    narrowed: &mut HashMap<usize, Digest>,
    attempt: u32,
    pool: &str,
) -> Result<(Action, RunRequest), PrepareError> {
    let needs = need_states(plan, local, reports, n);
    let ctx = RenderContext {
        params,
        needs: &needs,
        workflow_id: run_id,
        cancelled: false,
    };
    let rendered =
        render_job(plan, n, &ctx).map_err(|d| PrepareError::Job(render_message(plan, &d)))?;
    let node = &plan.nodes[n];
    let job_ast = &plan.ast.jobs[node.job];
    // Inputs: the named artifact of every cell of the producing job.
    let mut inputs = Vec::new();
    for input in &job_ast.inputs {
        let (src, art) = input.value.split_once('.').unwrap_or_default();
        let Some((src_id, _)) = plan.job(src) else {
            continue;
        };
        for &cell in &plan.jobs[src_id].nodes {
            let Some(&i) = local.get(&cell) else {
                return Err(PrepareError::Job(format!(
                    "input `{}` comes from job `{src}`, which is not part of this run (`--only`)",
                    input.value
                )));
            };
            let digest = reports[i]
                .as_ref()
                .and_then(|r| r.artifacts.get(art))
                .ok_or_else(|| {
                    PrepareError::Job(format!(
                        "input `{}`: job `{src}` finished without artifact `{art}`",
                        input.value
                    ))
                })?;
            inputs.push(RunInput {
                name: input.value.clone(),
                digest: digest.to_string(),
                path: None,
            });
        }
    }
    let source_digest = if job_ast.source.is_empty() {
        source
    } else {
        match narrowed.get(&node.job) {
            Some(d) => *d,
            None => {
                let globs: Vec<String> = job_ast.source.iter().map(|s| s.value.clone()).collect();
                let d = source::narrow(store, &source, &globs).await.map_err(|e| {
                    PrepareError::Store(format!("failed to narrow the source to {globs:?}: {e}"))
                })?;
                narrowed.insert(node.job, d);
                d
            }
        }
    };
    let job = &plan.jobs[node.job];
    let artifacts: BTreeMap<String, String> = job_ast
        .artifacts
        .iter()
        .map(|(k, a)| (k.clone(), a.path.value.clone()))
        .collect();
    let timeout = Some(format!("{}ms", job.timeout.as_millis()));
    let action = Action {
        version: CACHE_VERSION,
        job: job.key.clone(),
        node: node.name.clone(),
        pool: pool.into(),
        steps: rendered.steps.clone(),
        env: rendered.env.clone(),
        secret_names: Vec::new(),
        inputs: inputs.clone(),
        artifacts: artifacts.clone(),
        source: Some(source_digest.to_string()),
        timeout: timeout.clone(),
    };
    let request = RunRequest {
        id: format!("{run_id}.{}", node.name),
        attempt,
        job: job.key.clone(),
        steps: rendered.steps,
        env: rendered.env,
        secrets: BTreeMap::new(),
        source: Some(source_digest.to_string()),
        inputs,
        artifacts,
        timeout,
        // The embedded driver reads the executor's events directly.
        live_log: false,
    };
    Ok((action, request))
}

fn spawn_attempt(
    executor: &Executor,
    request: RunRequest,
    node: usize,
    attempt: u32,
    cancel: CancellationToken,
    tx: mpsc::UnboundedSender<Msg>,
) {
    let executor = executor.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let (etx, mut erx) = mpsc::channel::<RunEvent>(256);
        let logs = tx.clone();
        let forward = tokio::spawn(async move {
            while let Some(ev) = erx.recv().await {
                if let RunEvent::Log(line) = ev {
                    let _ = logs.send(Msg::Log(node, line));
                }
            }
        });
        // A panic inside the executor fails this attempt, not the engine.
        let result =
            tokio::spawn(async move { executor.execute(request, etx, cancel).await }).await;
        let _ = forward.await;
        let result = result.unwrap_or_else(|e| RunResult {
            phase: kruntimes_crds::RunPhase::Failed,
            message: Some(format!("the executor crashed: {e}")),
            ..RunResult::default()
        });
        let _ = tx.send(Msg::Finished(
            node,
            attempt,
            Box::new(result),
            started.elapsed(),
        ));
    });
}

/// Shows every node that reached its final state since the last call, once:
/// nodes that ran (their report is in place), and nodes the scheduler ended
/// without running them (skipped, cancelled before they started).
fn report_finished(
    plan: &Plan,
    selected: &[NodeId],
    sched: &Scheduler,
    runs: &mut [NodeRun],
    reports: &mut [Option<NodeReport>],
    ui: &mut dyn Ui,
) {
    for (i, &n) in selected.iter().enumerate() {
        if runs[i].shown {
            continue;
        }
        let Some(fin) = sched.result(i) else { continue };
        let report = match reports[i].take() {
            Some(mut r) => {
                r.result = fin.result;
                r.attempts = fin.attempts;
                if r.message.is_none() && fin.result == JobResult::Failure {
                    r.message = runs[i].render_error.clone();
                }
                r
            }
            None => NodeReport {
                node: plan.nodes[n].name.clone(),
                display: plan.nodes[n].display.clone(),
                result: fin.result,
                cached: fin.cached,
                attempts: fin.attempts,
                duration_ms: 0,
                outputs: BTreeMap::new(),
                artifacts: BTreeMap::new(),
                log: None,
                message: match fin.result {
                    JobResult::Skipped => Some(skip_reason(plan, sched, selected, i)),
                    JobResult::Cancelled => Some("cancelled before it started".into()),
                    JobResult::Failure => runs[i].render_error.clone(),
                    JobResult::Success => None,
                },
            },
        };
        ui.finished(&report);
        reports[i] = Some(report);
        runs[i].shown = true;
    }
}

/// Why the scheduler skipped node `i` (`selected` maps scheduler nodes to
/// plan nodes).
pub(crate) fn skip_reason(plan: &Plan, sched: &Scheduler, selected: &[NodeId], i: usize) -> String {
    let failed: Vec<String> = sched
        .needs_results(i)
        .into_iter()
        .filter(|(_, r)| *r != JobResult::Success)
        .map(|(d, r)| {
            format!(
                "{} {}",
                plan.nodes[selected[d]].display,
                format!("{r:?}").to_lowercase()
            )
        })
        .collect();
    if failed.is_empty() {
        "its `if:` was false".into()
    } else {
        format!("needs did not succeed: {}", failed.join(", "))
    }
}
