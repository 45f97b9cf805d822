//! The Workflow controller: expands a `Workflow` into `Run`s as its jobs
//! become ready, with the planner and the scheduler core `krt run` uses.
//!
//! A reconcile is a replay. The scheduler starts from scratch and is fed
//! what the cluster already knows: a job whose Run exists is started (and
//! finished when the Run is), a job the status records as cached is
//! finished as cached. Whatever the scheduler asks to start beyond that is
//! new: it is rendered now (its needs' outputs are known), looked up in the
//! step cache (a hit is recorded in status, no Run is created), and
//! otherwise created as a Run with a deterministic name and a controller
//! owner reference. Replaying the same facts gives the same decisions, so a
//! restarted controller (or a stale cache) never creates a second Run for a
//! job: at worst its create answers 409 and is taken as done.
//!
//! The Run dispatcher (`kruntimes-controller`) executes the Runs, including
//! their retries (`spec.retry`), so the scheduler here sees one attempt per
//! job. When a Run succeeds, this controller writes its step-cache record.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kruntimes_crds::{
    JobResult, JobStatus, RetryPolicy, Run, RunPhase, RunSpec, RuntimePool, Workflow,
    WorkflowPhase, WorkflowStatus,
};
use kruntimes_runtime::Digest;
use kruntimes_runtime::cas::Store;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use super::{ACTION_ANNOTATION, NODE_LABEL, WORKFLOW_LABEL, WORKFLOW_MANAGER, run_name};
use crate::embedded::NodeReport;
use crate::embedded::cache::{self, CacheRecord, Miss};
use crate::embedded::driver::{PrepareError, decide, prepare, skip_reason};
use crate::plan::render::resolve_params;
use crate::plan::{Diagnostics, Plan};
use crate::scheduler::{self, Input, NodeSpec, Outcome, Policy, Scheduler, WorkflowResult};

/// Settings of the Workflow controller.
#[derive(Debug, Clone)]
pub struct Options {
    /// Watch only this namespace (all when `None`).
    pub namespace: Option<String>,
    /// The artifact store the runtimes use: step cache, actions, logs.
    pub store: Store,
}

/// Errors of one reconcile; the Workflow is retried with backoff and the
/// error is shown in its `Synced` condition.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a request.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The artifact store failed.
    #[error("store: {0}")]
    Store(String),
    /// The scheduler was fed something inconsistent: a bug.
    #[error("internal error: {0}")]
    Internal(String),
    /// A Run of the same name belongs to someone else.
    #[error("{0}")]
    Conflict(String),
    /// A failure already shown in the status (retried with backoff).
    #[error("{0}")]
    Reported(String),
}

/// A Workflow's plan, or the diagnostics that make it invalid.
type Planned = Arc<Result<Plan, String>>;

struct Ctx {
    client: Client,
    store: Store,
    runs: reflector::Store<Run>,
    recorder: Recorder,
    /// Plans by Workflow uid, with the generation they were made from.
    plans: Mutex<HashMap<String, (i64, Planned)>>,
    /// Runs this process created, by (Workflow uid, node): the Run watch may
    /// not have delivered them yet.
    created: Mutex<HashSet<(String, String)>>,
    /// Cache keys whose record this process already wrote.
    saved: Mutex<HashSet<String>>,
    /// Pool identities by (namespace, pool), with when they were read.
    pool_ids: Mutex<HashMap<(String, String), (std::time::Instant, String)>>,
    /// Workflows (by uid) with a step-cache record still to write.
    unsaved: Mutex<HashSet<String>>,
    /// Consecutive failed reconciles by Workflow uid (for the backoff).
    failures: Mutex<HashMap<String, u32>>,
}

/// Runs the Workflow controller until `shutdown`.
pub async fn run(client: Client, opts: Options, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (workflows, runs): (Api<Workflow>, Api<Run>) = match &opts.namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let (reader, writer) = reflector::store::<Run>();
    let run_events = watcher(runs, watcher::Config::default().labels(WORKFLOW_LABEL))
        .default_backoff()
        .reflect(writer)
        .touched_objects();
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        store: opts.store,
        runs: reader,
        recorder: Recorder::new(
            client,
            Reporter {
                controller: WORKFLOW_MANAGER.into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        ),
        plans: Mutex::default(),
        created: Mutex::default(),
        saved: Mutex::default(),
        unsaved: Mutex::default(),
        pool_ids: Mutex::default(),
        failures: Mutex::default(),
    });
    let stop = shutdown.clone();
    Controller::new(workflows, watcher::Config::default())
        .owns_stream(run_events)
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|r| {
            if let Err(e) = r {
                tracing::debug!(error = %e, "workflow reconcile");
            }
            futures::future::ready(())
        })
        .await;
    Ok(())
}

fn error_policy(wf: Arc<Workflow>, err: &Error, ctx: Arc<Ctx>) -> Action {
    let uid = wf.uid().unwrap_or_default();
    let n = {
        let mut f = lock(&ctx.failures);
        let n = f.entry(uid).or_insert(0);
        *n += 1;
        *n
    };
    let delay =
        Duration::from_millis(200u64.saturating_mul(1 << n.min(8))).min(Duration::from_secs(30));
    tracing::warn!(workflow = %wf.name_any(), namespace = %wf.namespace().unwrap_or_default(), error = %err, retry_in = ?delay, "workflow reconcile failed");
    Action::requeue(delay)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn reconcile(wf: Arc<Workflow>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if wf.meta().deletion_timestamp.is_some() {
        // Owner references let the garbage collector remove the Runs.
        return Ok(Action::await_change());
    }
    match reconcile_inner(&wf, &ctx).await {
        Ok(a) => {
            lock(&ctx.failures).remove(&wf.uid().unwrap_or_default());
            Ok(a)
        }
        Err(e @ Error::Reported(_)) => Err(e),
        Err(e) => {
            // Say so in the status (best effort), keeping everything else.
            let mut status = wf.status.clone().unwrap_or_default();
            set_condition(
                &mut status.conditions,
                "Synced",
                false,
                "ReconcileError",
                &format!("{e}; retrying with backoff"),
                wf.metadata.generation,
            );
            let _ = write_status(&ctx.client, &wf, &status).await;
            Err(e)
        }
    }
}

fn final_phase(p: Option<WorkflowPhase>) -> bool {
    matches!(
        p,
        Some(WorkflowPhase::Succeeded | WorkflowPhase::Failed | WorkflowPhase::Cancelled)
    )
}

async fn reconcile_inner(wf: &Workflow, ctx: &Ctx) -> Result<Action, Error> {
    let ns = wf.namespace().unwrap_or_default();
    let name = wf.name_any();
    let old = wf.status.clone().unwrap_or_default();
    let uid = wf.uid().unwrap_or_default();
    // A finished Workflow is replayed again only while a step-cache record
    // of one of its Runs could not be written.
    if final_phase(old.phase) && !lock(&ctx.unsaved).contains(&uid) {
        return finished(wf, ctx, &old).await;
    }
    let plan = match plan_of(wf, ctx) {
        Ok(p) => p,
        Err(text) => return invalid(wf, ctx, &old, &text).await,
    };
    let plan = match &*plan {
        Ok(p) => p,
        Err(text) => return invalid(wf, ctx, &old, text).await,
    };
    let given: Vec<(String, String)> = wf
        .spec
        .arguments
        .iter()
        .map(|(k, v)| {
            let v = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), v)
        })
        .collect();
    let params = match resolve_params(plan, &given) {
        Ok(p) => p,
        Err(errors) => {
            let text = errors
                .iter()
                .map(|e| format!("error: {e}"))
                .collect::<Vec<_>>()
                .join("\n");
            return invalid(wf, ctx, &old, &text).await;
        }
    };
    // Without a snapshot, jobs start in an empty tree (stored on first use).
    let mut source: Option<Digest> = match &wf.spec.source {
        Some(s) => match s.parse() {
            Ok(d) => Some(d),
            Err(e) => {
                let text = format!("error: spec.source `{s}` is not a tree digest: {e}");
                return invalid(wf, ctx, &old, &text).await;
            }
        },
        None => None,
    };

    // What the cluster knows: this Workflow's Runs, by node name.
    let mut runs: HashMap<String, Arc<Run>> = HashMap::new();
    for run in ctx.runs.state() {
        if run.namespace().as_deref() != Some(ns.as_str()) {
            continue;
        }
        let owned = run
            .owner_references()
            .iter()
            .any(|o| o.uid == uid && o.controller == Some(true));
        if !owned {
            continue;
        }
        if let Some(node) = run.labels().get(NODE_LABEL) {
            runs.insert(node.clone(), run);
        }
    }

    let n = plan.nodes.len();
    let local: HashMap<usize, usize> = (0..n).map(|i| (i, i)).collect();
    let all_nodes: Vec<usize> = (0..n).collect();
    let specs: Vec<NodeSpec> = plan
        .nodes
        .iter()
        .map(|node| NodeSpec {
            needs: node.needs.clone(),
            // The Run retries its own attempts (spec.retry).
            retries: 0,
            has_condition: plan.ast.jobs[node.job].if_.is_some(),
        })
        .collect();
    let policy = Policy {
        keep_going: false,
        max_parallel: None,
        ..Policy::default()
    };
    let mut sched = Scheduler::new(specs, policy);
    let mut reports: Vec<Option<NodeReport>> = vec![None; n];
    let mut jobs: Vec<JobStatus> = plan
        .nodes
        .iter()
        .map(|node| {
            let prev = old.jobs.get(&node.name);
            JobStatus {
                job: Some(plan.jobs[node.job].key.clone()),
                display_name: Some(node.display.clone()),
                phase: Some("Waiting".into()),
                start_time: prev.and_then(|p| p.start_time.clone()),
                finish_time: prev.and_then(|p| p.finish_time.clone()),
                ..JobStatus::default()
            }
        })
        .collect();
    let mut pools: HashMap<String, String> = HashMap::new();
    let mut narrowed = HashMap::new();
    let mut render_errors: HashMap<usize, String> = HashMap::new();
    let mut to_cancel: Vec<String> = Vec::new();
    let mut events: Vec<(EventType, &'static str, String)> = Vec::new();
    let cancel = wf.spec.cancel;
    // With spec.cancel, the facts go in first (what ran, what is running),
    // then the cancel, then the Runs that ended cancelled: so they count as
    // cancelled by the user, not as failures, and a running Run is never
    // mistaken for a job that did not start.
    let mut deferred: HashSet<usize> = HashSet::new();
    let mut held: Vec<(usize, u32)> = Vec::new();
    let mut to_create: Vec<(usize, Run, bytes::Bytes)> = Vec::new();
    let mut stage = 0;
    let mut actions: VecDeque<scheduler::Action> = sched.start().into();
    let result = loop {
        let mut done = None;
        while let Some(action) = actions.pop_front() {
            let inputs: Vec<Input> = match action {
                scheduler::Action::Done { result } => {
                    done = Some(result);
                    Vec::new()
                }
                scheduler::Action::Decide { node, cancelled } => {
                    let run = match decide(plan, &local, &reports, &params, &name, node, cancelled)
                    {
                        Ok(b) => b,
                        Err(message) => {
                            render_errors.insert(node, message);
                            true
                        }
                    };
                    vec![Input::Decided { node, run }]
                }
                scheduler::Action::Start { node, attempt } => {
                    let node_name = plan.nodes[node].name.clone();
                    let rname = run_name(&name, &node_name);
                    let mut inputs = vec![Input::Started { node, attempt }];
                    if let Some(run) = runs.get(&node_name) {
                        observe_run(plan, node, run, &mut jobs[node], &mut reports);
                        match run_outcome(run) {
                            Some(Outcome::Cancelled) if cancel => held.push((node, attempt)),
                            Some(outcome) => inputs.push(Input::Finished {
                                node,
                                attempt,
                                outcome,
                            }),
                            None => {}
                        }
                    } else if lock(&ctx.created).contains(&(uid.clone(), node_name.clone())) {
                        // Created by this process; the watch is behind.
                        jobs[node].phase = Some("Pending".into());
                        jobs[node].run_names = vec![rname];
                    } else if let Some(prev) = old
                        .jobs
                        .get(&node_name)
                        .filter(|p| p.cached && p.result == Some(JobResult::Success))
                    {
                        reports[node] = Some(report_from_status(plan, node, prev));
                        jobs[node] = JobStatus {
                            job: jobs[node].job.clone(),
                            display_name: jobs[node].display_name.clone(),
                            ..prev.clone()
                        };
                        inputs.push(Input::Finished {
                            node,
                            attempt,
                            outcome: Outcome::Cached,
                        });
                    } else if cancel {
                        // Never start anything new once cancelled.
                        deferred.insert(node);
                    } else if let Some(e) = render_errors.get(&node) {
                        jobs[node].message = Some(e.clone());
                        inputs.push(Input::Finished {
                            node,
                            attempt,
                            outcome: Outcome::Failed,
                        });
                    } else {
                        let job = &plan.jobs[plan.nodes[node].job];
                        let identity = match pools.get(&job.pool) {
                            Some(i) => i.clone(),
                            None => {
                                let i = pool_identity(ctx, &ns, &job.pool).await?;
                                pools.insert(job.pool.clone(), i.clone());
                                i
                            }
                        };
                        let src = match source {
                            Some(d) => d,
                            None => {
                                let empty = bytes::Bytes::from(
                                    kruntimes_runtime::cas::Manifest::default().to_bytes(),
                                );
                                let d = ctx.store.put_bytes(empty).await.map_err(|e| {
                                    Error::Store(format!(
                                        "failed to store the empty source tree: {e}"
                                    ))
                                })?;
                                source = Some(d);
                                d
                            }
                        };
                        let prepared = prepare(
                            plan,
                            &ctx.store,
                            &local,
                            &reports,
                            node,
                            &params,
                            &name,
                            src,
                            &mut narrowed,
                            1,
                            &identity,
                        )
                        .await;
                        match prepared {
                            // The store, not the workflow: retry.
                            Err(PrepareError::Store(message)) => {
                                return Err(Error::Store(message));
                            }
                            Err(PrepareError::Job(message)) => {
                                jobs[node].message = Some(message.clone());
                                render_errors.insert(node, message);
                                inputs.push(Input::Finished {
                                    node,
                                    attempt,
                                    outcome: Outcome::Failed,
                                });
                            }
                            Ok((action, request)) => {
                                let key = action.key();
                                let mut hit = None;
                                if job.cache {
                                    match cache::lookup(&ctx.store, &key).await {
                                        Ok(rec) => hit = Some(rec),
                                        Err(Miss::Absent) => {}
                                        Err(Miss::Broken(why)) => events.push((
                                            EventType::Warning,
                                            "CacheRecordIgnored",
                                            format!(
                                                "{}: {why}; running it",
                                                plan.nodes[node].display
                                            ),
                                        )),
                                    }
                                }
                                if let Some(rec) = hit {
                                    let now = Time(Timestamp::now());
                                    jobs[node] = JobStatus {
                                        job: jobs[node].job.clone(),
                                        display_name: jobs[node].display_name.clone(),
                                        phase: Some("Cached".into()),
                                        result: Some(JobResult::Success),
                                        cached: true,
                                        attempts: 0,
                                        outputs: rec.outputs.clone(),
                                        artifacts: rec
                                            .artifacts
                                            .iter()
                                            .map(|(k, v)| (k.clone(), v.to_string()))
                                            .collect(),
                                        log_digest: rec.log.map(|d| d.to_string()),
                                        action: Some(rec.action.to_string()),
                                        cache_key: Some(key.to_string()),
                                        start_time: Some(now.clone()),
                                        finish_time: Some(now),
                                        ..JobStatus::default()
                                    };
                                    reports[node] =
                                        Some(report_from_status(plan, node, &jobs[node]));
                                    inputs.push(Input::Finished {
                                        node,
                                        attempt,
                                        outcome: Outcome::Cached,
                                    });
                                } else {
                                    // Created after the replay, all at once.
                                    let bytes = bytes::Bytes::from(action.to_bytes());
                                    let action_digest = Digest::of(&bytes);
                                    let run = build_run(
                                        wf,
                                        plan,
                                        node,
                                        &rname,
                                        request,
                                        key,
                                        action_digest,
                                    );
                                    to_create.push((node, run, bytes));
                                    jobs[node].phase = Some("Pending".into());
                                    jobs[node].run_names = vec![rname];
                                    jobs[node].action = Some(action_digest.to_string());
                                    jobs[node].cache_key = Some(key.to_string());
                                }
                            }
                        }
                    }
                    inputs
                }
                scheduler::Action::ScheduleRetry { node, attempt, .. } => {
                    // Retries belong to the Run; the scheduler has none.
                    vec![Input::RetryDue { node, attempt }]
                }
                scheduler::Action::Cancel { node } if deferred.remove(&node) => {
                    vec![Input::Finished {
                        node,
                        attempt: 1,
                        outcome: Outcome::Cancelled,
                    }]
                }
                scheduler::Action::Cancel { node } if held.iter().any(|(n, _)| *n == node) => {
                    Vec::new()
                }
                scheduler::Action::Cancel { node } => {
                    let node_name = &plan.nodes[node].name;
                    let running = runs
                        .get(node_name)
                        .is_none_or(|r| !r.spec.cancel && run_outcome(r).is_none());
                    if running {
                        to_cancel.push(run_name(&name, node_name));
                    }
                    Vec::new()
                }
            };
            for input in inputs {
                let more = sched
                    .handle(input)
                    .map_err(|e| Error::Internal(e.to_string()))?;
                actions.extend(more);
            }
        }
        if done.is_some() {
            break done;
        }
        match stage {
            0 if cancel => {
                stage = 1;
                actions.extend(
                    sched
                        .handle(Input::Cancel)
                        .map_err(|e| Error::Internal(e.to_string()))?,
                );
            }
            1 => {
                stage = 2;
                for (node, attempt) in std::mem::take(&mut held) {
                    actions.extend(
                        sched
                            .handle(Input::Finished {
                                node,
                                attempt,
                                outcome: Outcome::Cancelled,
                            })
                            .map_err(|e| Error::Internal(e.to_string()))?,
                    );
                }
            }
            _ => break None,
        }
    };

    // The new Runs, concurrently: each after its action is in the store,
    // so a Run never names a missing action.
    let created = futures::future::join_all(to_create.into_iter().map(|(node, run, bytes)| {
        let (ns, uid) = (ns.clone(), uid.clone());
        async move {
            ctx.store.put_bytes(bytes).await.map_err(|e| {
                Error::Store(format!(
                    "failed to store the action of {}: {e}",
                    plan.nodes[node].display
                ))
            })?;
            create_run(ctx, &ns, &run).await?;
            lock(&ctx.created).insert((uid, plan.nodes[node].name.clone()));
            Ok::<(), Error>(())
        }
    }))
    .await;
    if let Some(e) = created.into_iter().find_map(Result::err) {
        return Err(e);
    }

    // Cancel what the scheduler stopped (spec.cancel, or fail-fast).
    let runs_api: Api<Run> = Api::namespaced(ctx.client.clone(), &ns);
    for rname in &to_cancel {
        let patch = serde_json::json!({"spec": {"cancel": true}});
        match runs_api
            .patch(rname, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }

    // Step-cache records of Runs that succeeded; the first error, if any.
    let mut unsaved: Option<String> = None;
    for node in &plan.nodes {
        if !plan.jobs[node.job].cache {
            continue;
        }
        let Some(run) = runs.get(&node.name) else {
            continue;
        };
        if let Err(e) = save_cache_record(ctx, &name, run).await {
            unsaved.get_or_insert(format!("job `{}`: {e}", node.name));
        }
    }

    // Final results and the status.
    for (i, job) in jobs.iter_mut().enumerate() {
        if let Some(fin) = sched.result(i) {
            job.result = Some(fin.result);
            if job.result == Some(JobResult::Skipped) {
                job.phase = Some("Skipped".into());
                if job.message.is_none() {
                    job.message = Some(skip_reason(plan, &sched, &all_nodes, i));
                }
            }
            if fin.result == JobResult::Cancelled && job.run_names.is_empty() {
                job.phase = Some("Cancelled".into());
                job.message
                    .get_or_insert_with(|| "cancelled before it started".into());
            }
            if fin.result == JobResult::Failure && job.phase.as_deref() == Some("Waiting") {
                job.phase = Some("Failed".into());
            }
            if job.finish_time.is_none() {
                job.finish_time = Some(Time(Timestamp::now()));
            }
        } else if job.phase.as_deref() == Some("Waiting") {
            job.finish_time = None;
        }
    }
    let mut status = build_status(wf, plan, &old, jobs, result);
    if let Some(e) = &unsaved {
        set_condition(
            &mut status.conditions,
            "Synced",
            false,
            "StoreError",
            &format!(
                "a step-cache record could not be written (the job's result stands; retrying with backoff): {e}"
            ),
            wf.metadata.generation,
        );
    }
    for (t, reason, note) in events {
        publish(ctx, wf, t, reason, note).await;
    }
    if result.is_some() && old.phase != status.phase {
        let phase = status.phase.unwrap_or_default();
        let t = if phase == WorkflowPhase::Succeeded {
            EventType::Normal
        } else {
            EventType::Warning
        };
        publish(
            ctx,
            wf,
            t,
            phase_name(phase),
            status.message.clone().unwrap_or_default(),
        )
        .await;
    }
    let finishing = result.is_some() && old.phase != status.phase;
    if Some(&status) != wf.status.as_ref() {
        write_status(&ctx.client, wf, &status).await?;
    }
    if finishing {
        remove_stale_live_logs(ctx, &runs);
    }
    if let Some(e) = unsaved {
        // The status is written; retry the record with backoff.
        lock(&ctx.unsaved).insert(uid);
        return Err(Error::Reported(format!(
            "a step-cache record could not be written: {e}"
        )));
    }
    lock(&ctx.unsaved).remove(&uid);
    if result.is_some() {
        lock(&ctx.created).retain(|(u, _)| u != &uid);
        lock(&ctx.plans).remove(&uid);
        return Ok(match ttl_left(wf, &status) {
            Some(left) => Action::requeue(left),
            None => Action::await_change(),
        });
    }
    Ok(Action::await_change())
}

fn phase_name(p: WorkflowPhase) -> &'static str {
    match p {
        WorkflowPhase::Pending => "Pending",
        WorkflowPhase::Running => "Running",
        WorkflowPhase::Succeeded => "Succeeded",
        WorkflowPhase::Failed => "Failed",
        WorkflowPhase::Cancelled => "Cancelled",
    }
}

/// A finished Workflow: only its TTL is left to handle.
async fn finished(wf: &Workflow, ctx: &Ctx, status: &WorkflowStatus) -> Result<Action, Error> {
    match ttl_left(wf, status) {
        None => Ok(Action::await_change()),
        Some(left) if !left.is_zero() => Ok(Action::requeue(left)),
        Some(_) => {
            let ns = wf.namespace().unwrap_or_default();
            let api: Api<Workflow> = Api::namespaced(ctx.client.clone(), &ns);
            tracing::info!(workflow = %wf.name_any(), namespace = %ns, "deleting a finished Workflow after its ttlSecondsAfterFinished");
            // Background: the garbage collector removes the Runs it owns.
            match api
                .delete(&wf.name_any(), &DeleteParams::background())
                .await
            {
                Ok(_) => Ok(Action::await_change()),
                Err(kube::Error::Api(e)) if e.code == 404 => Ok(Action::await_change()),
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// Time until a finished Workflow's TTL runs out (zero when it has), or
/// `None` without a TTL.
fn ttl_left(wf: &Workflow, status: &WorkflowStatus) -> Option<Duration> {
    let ttl = wf.spec.ttl_seconds_after_finished?;
    let finish = status.finish_time.as_ref()?.0;
    let due = finish.as_second().saturating_add(ttl.max(0));
    let now = Timestamp::now().as_second();
    Some(Duration::from_secs(due.saturating_sub(now).max(0) as u64))
}

fn plan_of(wf: &Workflow, ctx: &Ctx) -> Result<Planned, String> {
    let uid = wf.uid().unwrap_or_default();
    let generation = wf.metadata.generation.unwrap_or(0);
    if let Some((g, p)) = lock(&ctx.plans).get(&uid)
        && *g == generation
    {
        return Ok(p.clone());
    }
    let yaml = serde_yaml::to_string(&wf.spec.workflow)
        .map_err(|e| format!("error: spec cannot be read as a workflow file: {e}"))?;
    let file = format!(
        "workflow {}/{}",
        wf.namespace().unwrap_or_default(),
        wf.name_any()
    );
    let planned = crate::plan::plan_str(&file, &yaml).map_err(|d: Diagnostics| d.render(false));
    let planned = Arc::new(planned);
    lock(&ctx.plans).insert(uid, (generation, planned.clone()));
    Ok(planned)
}

/// An invalid Workflow: the planner's diagnostics in a condition, one
/// Event, phase Failed, and no Runs.
async fn invalid(
    wf: &Workflow,
    ctx: &Ctx,
    old: &WorkflowStatus,
    text: &str,
) -> Result<Action, Error> {
    let mut status = old.clone();
    let first = text
        .lines()
        .find(|l| l.starts_with("error"))
        .unwrap_or("the workflow is invalid")
        .to_string();
    set_condition(
        &mut status.conditions,
        "Valid",
        false,
        "InvalidWorkflow",
        text.trim_end(),
        wf.metadata.generation,
    );
    set_condition(
        &mut status.conditions,
        "Complete",
        true,
        "Failed",
        &first,
        wf.metadata.generation,
    );
    set_condition(
        &mut status.conditions,
        "Synced",
        true,
        "Reconciled",
        "the status is up to date",
        wf.metadata.generation,
    );
    status.phase = Some(WorkflowPhase::Failed);
    status.message = Some(format!("invalid workflow: {first}"));
    status.observed_generation = wf.metadata.generation;
    status
        .finish_time
        .get_or_insert_with(|| Time(Timestamp::now()));
    if old.phase != status.phase {
        publish(
            ctx,
            wf,
            EventType::Warning,
            "InvalidWorkflow",
            text.trim_end().to_string(),
        )
        .await;
    }
    if Some(&status) != wf.status.as_ref() {
        write_status(&ctx.client, wf, &status).await?;
    }
    Ok(Action::await_change())
}

async fn publish(ctx: &Ctx, wf: &Workflow, t: EventType, reason: &str, note: String) {
    // Event notes are limited to 1 kB by the API server.
    let mut note = note;
    if note.len() > 1000 {
        let mut cut = 990;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push_str(" [...]");
    }
    let ev = Event {
        type_: t,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &wf.object_ref(&())).await {
        tracing::debug!(error = %e, "publishing an Event failed");
    }
}

/// Sets a condition, keeping its transition time when its status is
/// unchanged.
fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) {
    let status = if ok { "True" } else { "False" };
    let prev = conditions.iter().find(|c| c.type_ == type_);
    let since = match prev {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Time(Timestamp::now()),
    };
    let c = Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: since,
    };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(slot) => *slot = c,
        None => conditions.push(c),
    }
}

fn build_status(
    wf: &Workflow,
    plan: &Plan,
    old: &WorkflowStatus,
    jobs: Vec<JobStatus>,
    result: Option<WorkflowResult>,
) -> WorkflowStatus {
    let total = jobs.len();
    let finished = jobs.iter().filter(|j| j.result.is_some()).count();
    let started = jobs
        .iter()
        .any(|j| j.phase.as_deref().is_some_and(|p| p != "Waiting"));
    let phase = match result {
        Some(WorkflowResult::Succeeded) => WorkflowPhase::Succeeded,
        Some(WorkflowResult::Failed) => WorkflowPhase::Failed,
        Some(WorkflowResult::Cancelled) => WorkflowPhase::Cancelled,
        None if started => WorkflowPhase::Running,
        None => WorkflowPhase::Pending,
    };
    let count = |r: JobResult, cached: bool| {
        jobs.iter()
            .filter(|j| j.result == Some(r) && j.cached == cached)
            .count()
    };
    let mut parts = Vec::new();
    for (n, what) in [
        (count(JobResult::Success, false), "succeeded"),
        (count(JobResult::Success, true), "cached"),
        (count(JobResult::Failure, false), "failed"),
        (count(JobResult::Cancelled, false), "cancelled"),
        (count(JobResult::Skipped, false), "skipped"),
        (total - finished, "not finished"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    let failed: Vec<String> = plan
        .nodes
        .iter()
        .zip(&jobs)
        .filter(|(_, j)| j.result == Some(JobResult::Failure))
        .map(|(n, j)| match &j.message {
            Some(m) => format!("{}: {}", n.display, m.lines().next().unwrap_or("")),
            None => n.display.clone(),
        })
        .collect();
    let mut message = parts.join(", ");
    if !failed.is_empty() {
        message.push_str(&format!("; failed: {}", failed.join("; ")));
    }
    let mut conditions = old.conditions.clone();
    let generation = wf.metadata.generation;
    set_condition(
        &mut conditions,
        "Valid",
        true,
        "Planned",
        &format!("{} jobs planned", plan.nodes.len()),
        generation,
    );
    set_condition(
        &mut conditions,
        "Synced",
        true,
        "Reconciled",
        "the status is up to date",
        generation,
    );
    match result {
        Some(_) => set_condition(
            &mut conditions,
            "Complete",
            true,
            phase_name(phase),
            &message,
            generation,
        ),
        None => set_condition(
            &mut conditions,
            "Complete",
            false,
            phase_name(phase),
            &message,
            generation,
        ),
    }
    WorkflowStatus {
        phase: Some(phase),
        progress: Some(format!("{finished}/{total}")),
        jobs: plan
            .nodes
            .iter()
            .map(|n| n.name.clone())
            .zip(jobs)
            .collect(),
        conditions,
        start_time: old
            .start_time
            .clone()
            .or_else(|| started.then(|| Time(Timestamp::now()))),
        finish_time: match result {
            Some(_) => old
                .finish_time
                .clone()
                .or_else(|| Some(Time(Timestamp::now()))),
            None => None,
        },
        observed_generation: generation,
        message: Some(message),
    }
}

async fn write_status(
    client: &Client,
    wf: &Workflow,
    status: &WorkflowStatus,
) -> Result<(), Error> {
    let api: Api<Workflow> = Api::namespaced(client.clone(), &wf.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": "kruntimes.io/v1alpha1",
        "kind": "Workflow",
        "status": status,
    });
    let pp = PatchParams::apply(WORKFLOW_MANAGER).force();
    match api
        .patch_status(&wf.name_any(), &pp, &Patch::Apply(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn run_outcome(run: &Run) -> Option<Outcome> {
    let status = run.status.as_ref()?;
    Some(match status.phase? {
        RunPhase::Succeeded if status.cached => Outcome::Cached,
        RunPhase::Succeeded => Outcome::Succeeded,
        RunPhase::Failed => Outcome::Failed,
        RunPhase::TimedOut => Outcome::TimedOut,
        RunPhase::Cancelled => Outcome::Cancelled,
        RunPhase::Pending | RunPhase::Scheduled | RunPhase::Running => return None,
    })
}

/// Copies what a Run says into the job's status and, once it is final,
/// into the report its dependents render from.
fn observe_run(
    plan: &Plan,
    node: usize,
    run: &Run,
    job: &mut JobStatus,
    reports: &mut [Option<NodeReport>],
) {
    let status = run.status.clone().unwrap_or_default();
    job.phase = Some(format!("{:?}", status.phase.unwrap_or_default()));
    job.run_names = vec![run.name_any()];
    job.attempts = status.attempt.unwrap_or(0);
    job.outputs = status.outputs.clone();
    job.artifacts = status.artifacts.clone();
    job.log_digest = status.log_digest.clone();
    job.action = run.annotations().get(ACTION_ANNOTATION).cloned();
    job.cache_key = run.spec.cache_key.clone();
    job.cached = status.cached;
    job.message = status.message.clone();
    let first_start = status
        .attempts
        .first()
        .and_then(|a| a.start_time.clone())
        .or(status.start_time.clone());
    if let Some(t) = first_start {
        job.start_time = Some(Time(t.0));
    }
    job.finish_time = status.completion_time.map(|t| Time(t.0));
    if let Some(outcome) = run_outcome(run) {
        let result = match outcome {
            Outcome::Succeeded | Outcome::Cached => JobResult::Success,
            Outcome::Cancelled => JobResult::Cancelled,
            Outcome::Failed | Outcome::TimedOut => JobResult::Failure,
        };
        job.result = Some(result);
        reports[node] = Some(NodeReport {
            node: plan.nodes[node].name.clone(),
            display: plan.nodes[node].display.clone(),
            result,
            cached: status.cached,
            attempts: job.attempts,
            duration_ms: 0,
            outputs: status.outputs.clone(),
            artifacts: parse_digests(&status.artifacts),
            log: status.log_digest.as_deref().and_then(|d| d.parse().ok()),
            message: status.message.clone(),
        });
    }
}

fn parse_digests(m: &BTreeMap<String, String>) -> BTreeMap<String, Digest> {
    m.iter()
        .filter_map(|(k, v)| v.parse().ok().map(|d| (k.clone(), d)))
        .collect()
}

fn report_from_status(plan: &Plan, node: usize, job: &JobStatus) -> NodeReport {
    NodeReport {
        node: plan.nodes[node].name.clone(),
        display: plan.nodes[node].display.clone(),
        result: job.result.unwrap_or(JobResult::Success),
        cached: job.cached,
        attempts: job.attempts,
        duration_ms: 0,
        outputs: job.outputs.clone(),
        artifacts: parse_digests(&job.artifacts),
        log: job.log_digest.as_deref().and_then(|d| d.parse().ok()),
        message: job.message.clone(),
    }
}

/// The pool identity in the cache key: the pool's image (a different
/// toolchain must not serve a cached result), or its name when the pool
/// does not exist (its Runs wait for it).
/// Remembered for [`POOL_IDENTITY_TTL`], so a reconcile that creates Runs
/// does not read the pool every time.
async fn pool_identity(ctx: &Ctx, ns: &str, pool: &str) -> Result<String, Error> {
    let key = (ns.to_string(), pool.to_string());
    if let Some((at, id)) = lock(&ctx.pool_ids).get(&key)
        && at.elapsed() < POOL_IDENTITY_TTL
    {
        return Ok(id.clone());
    }
    let api: Api<RuntimePool> = Api::namespaced(ctx.client.clone(), ns);
    let id = match api.get_opt(pool).await? {
        Some(p) => p.spec.image.clone(),
        None => format!("pool:{pool}"),
    };
    let mut ids = lock(&ctx.pool_ids);
    if ids.len() > 10_000 {
        ids.clear();
    }
    ids.insert(key, (std::time::Instant::now(), id.clone()));
    Ok(id)
}

/// How long a pool's identity (its image) is reused without reading it.
const POOL_IDENTITY_TTL: Duration = Duration::from_secs(10);

fn build_run(
    wf: &Workflow,
    plan: &Plan,
    node: usize,
    rname: &str,
    request: kruntimes_runtime::exec::RunRequest,
    key: Digest,
    action: Digest,
) -> Run {
    let n = &plan.nodes[node];
    let job = &plan.jobs[n.job];
    let labels = BTreeMap::from([
        (WORKFLOW_LABEL.to_string(), wf.name_any()),
        (NODE_LABEL.to_string(), n.name.clone()),
        (
            "app.kubernetes.io/managed-by".to_string(),
            WORKFLOW_MANAGER.to_string(),
        ),
    ]);
    let mut run = Run::new(
        rname,
        RunSpec {
            workflow: Some(wf.name_any()),
            job: job.key.clone(),
            display_name: Some(n.display.clone()),
            pool: job.pool.clone(),
            steps: request.steps,
            env: request.env,
            secret_env: Vec::new(),
            inputs: request.inputs,
            outputs: Vec::new(),
            artifacts: request.artifacts,
            timeout: request.timeout,
            retry: RetryPolicy {
                limit: job.retries,
                backoff: None,
            },
            cache_key: Some(key.to_string()),
            source: request.source,
            cancel: false,
        },
    );
    run.metadata = ObjectMeta {
        name: Some(rname.to_string()),
        namespace: wf.namespace(),
        labels: Some(labels),
        annotations: Some(BTreeMap::from([(
            ACTION_ANNOTATION.to_string(),
            action.to_string(),
        )])),
        owner_references: wf.controller_owner_ref(&()).map(|o| vec![o]),
        ..ObjectMeta::default()
    };
    run
}

async fn create_run(ctx: &Ctx, ns: &str, run: &Run) -> Result<(), Error> {
    let api: Api<Run> = Api::namespaced(ctx.client.clone(), ns);
    match api.create(&PostParams::default(), run).await {
        Ok(_) => Ok(()),
        // Created before (by this or an earlier controller): deterministic
        // names make the create idempotent. A Run of that name owned by
        // another Workflow (one deleted and created again under the same
        // name, whose Runs the garbage collector has not removed yet) is
        // waited out.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let existing = api.get_opt(&run.name_any()).await?;
            let want = run.owner_references().first().map(|o| o.uid.clone());
            let owner = existing
                .as_ref()
                .and_then(|r| r.owner_references().first().map(|o| o.uid.clone()));
            match existing {
                Some(_) if owner == want => Ok(()),
                _ => Err(Error::Conflict(format!(
                    "Run {ns}/{} exists but belongs to another Workflow (deleted and created again?); waiting for it to be removed",
                    run.name_any()
                ))),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// A runtime deletes its live log segments when an attempt ends; one that
/// died in the middle of an attempt cannot. When a Workflow finishes, this
/// deletes the segments of its Runs that may have lost an attempt (retried,
/// or not succeeded), in the background: nothing waits on it, and a failure
/// only leaves a few small objects behind.
fn remove_stale_live_logs(ctx: &Ctx, runs: &HashMap<String, Arc<Run>>) {
    let ids: Vec<String> = runs
        .values()
        .filter(|r| {
            r.status.as_ref().is_some_and(|st| {
                st.pod.is_some()
                    && (!st.attempts.is_empty() || st.phase != Some(RunPhase::Succeeded))
            })
        })
        .map(|r| kruntimes_controller::names::runtime_run_id(r))
        .collect();
    if ids.is_empty() {
        return;
    }
    let store = ctx.store.clone();
    tokio::spawn(async move {
        for id in ids {
            if let Err(e) = store.delete_live_run(&id).await {
                tracing::debug!(run = %id, error = %e, "deleting stale live log segments");
            }
        }
    });
}

/// Writes the step-cache record of a Run that succeeded (once per key).
async fn save_cache_record(ctx: &Ctx, workflow: &str, run: &Run) -> Result<(), String> {
    let Some(status) = &run.status else {
        return Ok(());
    };
    if status.phase != Some(RunPhase::Succeeded) || status.cached {
        return Ok(());
    }
    let (Some(key), Some(action)) = (
        run.spec
            .cache_key
            .as_deref()
            .and_then(|k| k.parse::<Digest>().ok()),
        run.annotations()
            .get(ACTION_ANNOTATION)
            .and_then(|a| a.parse::<Digest>().ok()),
    ) else {
        return Ok(());
    };
    if lock(&ctx.saved).contains(&key.to_string()) {
        return Ok(());
    }
    let duration_ms = match (&status.start_time, &status.completion_time) {
        (Some(s), Some(e)) => (e.0.as_millisecond() - s.0.as_millisecond()).max(0) as u64,
        _ => 0,
    };
    let rec = CacheRecord {
        key,
        action,
        outputs: status.outputs.clone(),
        artifacts: parse_digests(&status.artifacts),
        log: status.log_digest.as_deref().and_then(|d| d.parse().ok()),
        run_id: format!("{workflow}/{}", run.name_any()),
        duration_ms,
        created_ms: Timestamp::now().as_millisecond().max(0) as u64,
    };
    match cache::save(&ctx.store, &rec).await {
        Ok(()) => {
            let mut saved = lock(&ctx.saved);
            if saved.len() > 100_000 {
                saved.clear();
            }
            saved.insert(key.to_string());
            Ok(())
        }
        Err(e) => {
            tracing::warn!(run = %run.name_any(), error = %e, "writing the step-cache record failed; retrying with backoff");
            Err(e)
        }
    }
}
