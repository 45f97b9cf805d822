//! The client half of cluster mode: finding the cluster (kubeconfig, as
//! kubectl does), its artifact store, and following a Workflow's progress.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kruntimes_crds::{JobResult, JobStatus, Run, Workflow, WorkflowPhase};
use kruntimes_runtime::Digest;
use kruntimes_runtime::cas::{Store, StoreOptions};
use kruntimes_runtime::exec::LogLine;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Api, Client};

use crate::embedded::{NodeReport, RunReport, Ui};
use crate::scheduler::WorkflowResult;

/// Namespace of the kruntimes installation (its store ConfigMap).
pub const SYSTEM_NAMESPACE: &str = "kruntimes-system";
/// ConfigMap holding `KRT_STORE` and the store's non-secret settings.
pub const STORE_CONFIGMAP: &str = "kruntimes-store";

/// How to reach the cluster: kubeconfig resolved as kubectl does
/// (`KUBECONFIG`, else `~/.kube/config`, else in-cluster).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClusterArgs {
    /// Kubeconfig context [default: the current context].
    #[arg(long, value_name = "NAME", env = "KRT_CONTEXT")]
    pub context: Option<String>,
    /// Namespace [default: the context's namespace, else `default`].
    #[arg(long, short = 'n', value_name = "NS", env = "KRT_NAMESPACE")]
    pub namespace: Option<String>,
}

impl ClusterArgs {
    /// True when the user named a context or namespace: the verb is about
    /// the cluster, not the local store.
    pub fn explicit(&self) -> bool {
        self.context.is_some() || self.namespace.is_some()
    }
}

/// A connected cluster and the namespace to work in.
#[derive(Clone)]
pub struct Target {
    /// The API client.
    pub client: Client,
    /// The namespace.
    pub namespace: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl Target {
    /// The Workflows API of the namespace.
    pub fn workflows(&self) -> Api<Workflow> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }
}

/// Connects to the cluster the kubeconfig names.
pub async fn connect(args: &ClusterArgs) -> Result<Target, String> {
    let config = if args.context.is_some() {
        let kubeconfig = Kubeconfig::read().map_err(|e| {
            format!(
                "cannot read the kubeconfig: {e} (hint: set KUBECONFIG or create ~/.kube/config)"
            )
        })?;
        kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &KubeConfigOptions {
                context: args.context.clone(),
                ..KubeConfigOptions::default()
            },
        )
        .await
        .map_err(|e| format!("cannot use the kubeconfig context: {e}"))?
    } else {
        kube::Config::infer().await.map_err(|e| {
            format!(
                "cannot find a cluster: {e} (hint: set KUBECONFIG, or pass --context; `kubectl config get-contexts` lists them)"
            )
        })?
    };
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).map_err(|e| format!("cannot build a client: {e}"))?;
    Ok(Target { client, namespace })
}

/// The cluster's artifact store: `--store` if given, else the URL and
/// settings in the `kruntimes-store` ConfigMap of `kruntimes-system`
/// (`KRT_SYSTEM_NAMESPACE` overrides). Credentials come from this
/// environment (`AWS_ACCESS_KEY_ID`, ...), which also wins over the
/// ConfigMap for any setting it has, such as an endpoint that is only
/// reachable inside the cluster.
pub async fn cluster_store(target: &Target, store: Option<&str>) -> Result<Store, String> {
    if let Some(url) = store {
        return Store::open(url, StoreOptions::default())
            .map_err(|e| format!("failed to open the store {url}: {e}"));
    }
    let ns = std::env::var("KRT_SYSTEM_NAMESPACE").unwrap_or_else(|_| SYSTEM_NAMESPACE.into());
    let api: Api<ConfigMap> = Api::namespaced(target.client.clone(), &ns);
    let cm = api.get_opt(STORE_CONFIGMAP).await.map_err(|e| {
        format!("cannot read ConfigMap {ns}/{STORE_CONFIGMAP} for the store URL: {e} (hint: pass --store URL)")
    })?;
    let data: BTreeMap<String, String> = cm.and_then(|c| c.data).unwrap_or_default();
    let url = data.get("KRT_STORE").cloned().ok_or_else(|| {
        format!(
            "the cluster has no store configured: ConfigMap {ns}/{STORE_CONFIGMAP} with key KRT_STORE is missing (hint: apply examples/deploy/03-store.yaml, or pass --store URL)"
        )
    })?;
    let settings: Vec<(String, String)> =
        data.into_iter().filter(|(k, _)| k != "KRT_STORE").collect();
    Store::open_with(&url, &settings, StoreOptions::default())
        .map_err(|e| format!("failed to open the cluster's store {url}: {e}"))
}

/// Reads a whole job log from the store.
pub async fn read_log(store: &Store, digest: &Digest) -> Result<Vec<LogLine>, String> {
    let bytes = store
        .get_bytes(digest)
        .await
        .map_err(|e| format!("failed to fetch the log {digest}: {e}"))?;
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            serde_json::from_slice::<LogLine>(l)
                .map_err(|e| format!("the log {digest} is not valid: {e}"))
        })
        .collect()
}

/// The report of one job node, from Workflow status.
pub fn job_report(node: &str, j: &JobStatus) -> NodeReport {
    let ms = |t: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
        t.as_ref().map(|t| t.0.as_millisecond())
    };
    let duration_ms = match (ms(&j.start_time), ms(&j.finish_time)) {
        (Some(s), Some(e)) if !j.cached => (e - s).max(0) as u64,
        _ => 0,
    };
    NodeReport {
        node: node.to_string(),
        display: j.display_name.clone().unwrap_or_else(|| node.to_string()),
        result: j.result.unwrap_or(JobResult::Cancelled),
        cached: j.cached,
        attempts: j.attempts,
        duration_ms,
        outputs: j.outputs.clone(),
        artifacts: j
            .artifacts
            .iter()
            .filter_map(|(k, v)| v.parse().ok().map(|d| (k.clone(), d)))
            .collect(),
        log: j.log_digest.as_deref().and_then(|d| d.parse().ok()),
        message: j.message.clone(),
    }
}

/// True when the phase is final.
pub fn is_final(phase: Option<WorkflowPhase>) -> bool {
    matches!(
        phase,
        Some(WorkflowPhase::Succeeded | WorkflowPhase::Failed | WorkflowPhase::Cancelled)
    )
}

/// The whole-run report of a finished (or current) Workflow; jobs in
/// `order` first (the plan's order, when known), then the rest by name.
pub fn workflow_report(wf: &Workflow, order: &[String]) -> RunReport {
    let status = wf.status.clone().unwrap_or_default();
    let mut names: Vec<String> = order
        .iter()
        .filter(|n| status.jobs.contains_key(*n))
        .cloned()
        .collect();
    let known: HashSet<String> = names.iter().cloned().collect();
    names.extend(status.jobs.keys().filter(|k| !known.contains(*k)).cloned());
    let result = match status.phase {
        Some(WorkflowPhase::Succeeded) => WorkflowResult::Succeeded,
        Some(WorkflowPhase::Cancelled) => WorkflowResult::Cancelled,
        _ => WorkflowResult::Failed,
    };
    let ms = |t: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
        t.as_ref().map(|t| t.0.as_millisecond())
    };
    let start = ms(&status.start_time).or_else(|| {
        wf.metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_millisecond())
    });
    let duration_ms = match (start, ms(&status.finish_time)) {
        (Some(s), Some(e)) => (e - s).max(0) as u64,
        _ => 0,
    };
    RunReport {
        id: kube::ResourceExt::name_any(wf),
        workflow: kube::ResourceExt::name_any(wf),
        result,
        source: wf.spec.source.as_deref().and_then(|s| s.parse().ok()),
        duration_ms,
        jobs: names
            .iter()
            .map(|n| job_report(n, &status.jobs[n]))
            .collect(),
        warnings: Vec::new(),
    }
}

/// How often the logs of running jobs are looked for in the store.
const LIVE_POLL: Duration = Duration::from_millis(300);
/// Jobs are looked for only once they have run this long: a shorter job's
/// log comes whole at its end anyway, and a workflow of many short jobs then
/// costs the API server and the store no polling at all.
const LIVE_AFTER: Duration = Duration::from_secs(1);

/// Follows a Workflow until it finishes (or `timeout` passes): each job's
/// start, its log while it runs (the live segments its runtime writes to
/// the store, see `kruntimes_runtime::cas::LiveSegment`), the rest of its
/// log from the store when it ends, and its result. `store` `None` prints no
/// logs. Returns the final Workflow, or `None` on timeout.
pub async fn follow(
    target: &Target,
    name: &str,
    store: Option<&Store>,
    ui: &mut dyn Ui,
    timeout: Option<Duration>,
) -> Result<Option<Workflow>, String> {
    let api = target.workflows();
    let stream = watcher::watch_object(api, name);
    futures::pin_mut!(stream);
    let mut started: HashSet<String> = HashSet::new();
    let mut finished: HashSet<String> = HashSet::new();
    let mut live = LiveTail::new(target);
    let mut begun = false;
    let deadline = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    futures::pin_mut!(deadline);
    let mut poll = tokio::time::interval(LIVE_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let next = tokio::select! {
            _ = &mut deadline => return Ok(None),
            n = stream.next() => n,
            _ = poll.tick(), if store.is_some() && live.following() => {
                if let Some(store) = store {
                    live.poll(store, ui).await;
                }
                continue;
            }
        };
        let wf = match next {
            None => return Err("the watch of the Workflow ended".into()),
            Some(Err(e)) => {
                // The watcher retries by itself after an error.
                tracing::debug!(error = %e, "watching the Workflow");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Some(Ok(None)) => {
                return Err(format!("Workflow {}/{name} was deleted", target.namespace));
            }
            Some(Ok(Some(wf))) => wf,
        };
        let status = wf.status.clone().unwrap_or_default();
        if !begun {
            begun = true;
            let total = status
                .progress
                .as_deref()
                .and_then(|p| p.split('/').nth(1))
                .and_then(|t| t.parse().ok())
                .unwrap_or(status.jobs.len());
            ui.begin(name, name, total);
        }
        for (node, j) in &status.jobs {
            let display = j.display_name.clone().unwrap_or_else(|| node.clone());
            let running = matches!(j.phase.as_deref(), Some("Scheduled" | "Running"));
            if (running || (j.result.is_some() && !j.run_names.is_empty()))
                && started.insert(node.clone())
            {
                ui.started(&display, j.attempts.max(1));
            }
            if running
                && j.result.is_none()
                && let Some(run) = j.run_names.last()
            {
                live.watch(node, &display, run);
            }
            if j.result.is_some() && finished.insert(node.clone()) {
                // What the live segments did not show, from the whole log.
                let shown = live.done(node, j.attempts.max(1));
                if let (Some(store), Some(log)) =
                    (store, j.log_digest.as_deref().and_then(|d| d.parse().ok()))
                    && !j.cached
                {
                    match read_log(store, &log).await {
                        Ok(lines) => {
                            for l in lines.iter().skip(shown as usize) {
                                ui.log(&display, l);
                            }
                        }
                        Err(e) => ui.note(&format!("{display}: {e}")),
                    }
                }
                ui.finished(&job_report(node, j));
            }
        }
        if is_final(status.phase) {
            return Ok(Some(wf));
        }
    }
}

/// The live logs of the running jobs being followed.
struct LiveTail {
    runs: Api<Run>,
    jobs: BTreeMap<String, LiveJob>,
}

/// One running job's live log: which Run, and what was printed of it.
struct LiveJob {
    display: String,
    run: String,
    /// When this follower first saw it running.
    since: tokio::time::Instant,
    /// The runtime's id of the Run, once the Run was read.
    id: Option<String>,
    /// Per attempt, the index of the next line to print.
    next: BTreeMap<u32, u64>,
    /// Attempts whose live log has a gap: the rest comes from the whole log.
    gap: HashSet<u32>,
}

impl LiveTail {
    fn new(target: &Target) -> Self {
        Self {
            runs: Api::namespaced(target.client.clone(), &target.namespace),
            jobs: BTreeMap::new(),
        }
    }

    /// True while some job is running.
    fn following(&self) -> bool {
        !self.jobs.is_empty()
    }

    /// Follows `node`, which runs as Run `run`.
    fn watch(&mut self, node: &str, display: &str, run: &str) {
        let fresh = || LiveJob {
            display: display.to_string(),
            run: run.to_string(),
            since: tokio::time::Instant::now(),
            id: None,
            next: BTreeMap::new(),
            gap: HashSet::new(),
        };
        match self.jobs.get_mut(node) {
            Some(j) if j.run == run => {}
            Some(j) => *j = fresh(),
            None => {
                self.jobs.insert(node.to_string(), fresh());
            }
        }
    }

    /// `node` ended after `attempt` attempts: stops following it and says how
    /// many lines of that attempt's log were printed.
    fn done(&mut self, node: &str, attempt: u32) -> u64 {
        self.jobs
            .remove(node)
            .and_then(|j| j.next.get(&attempt).copied())
            .unwrap_or(0)
    }

    /// Prints the lines the runtimes wrote since the last poll. Errors only
    /// delay lines: whatever is not printed live comes from the whole log.
    async fn poll(&mut self, store: &Store, ui: &mut dyn Ui) {
        for j in self.jobs.values_mut() {
            if j.since.elapsed() < LIVE_AFTER {
                continue;
            }
            if j.id.is_none() {
                match self.runs.get_opt(&j.run).await {
                    Ok(Some(run)) if run.metadata.uid.is_some() => {
                        j.id = Some(kruntimes_controller::names::runtime_run_id(&run));
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::debug!(run = %j.run, error = %e, "reading the Run for its live log");
                        continue;
                    }
                }
            }
            let Some(id) = j.id.clone() else { continue };
            let segments = match store.list_live_segments(&id).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(run = %j.run, error = %e, "listing the live log");
                    continue;
                }
            };
            for seg in segments {
                if j.gap.contains(&seg.attempt) {
                    continue;
                }
                let next = j.next.get(&seg.attempt).copied().unwrap_or(0);
                if seg.first_line < next {
                    continue;
                }
                if seg.first_line > next {
                    j.gap.insert(seg.attempt);
                    continue;
                }
                let body = match store.get_live_segment(&id, &seg).await {
                    Ok(Some(b)) => b,
                    // Gone: the attempt ended; its whole log follows.
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(run = %j.run, error = %e, "reading the live log");
                        break;
                    }
                };
                let lines: Vec<LogLine> = body
                    .split(|b| *b == b'\n')
                    .filter(|l| !l.is_empty())
                    .map_while(|l| serde_json::from_slice(l).ok())
                    .collect();
                if seg.attempt > 1 && next == 0 {
                    ui.started(&j.display, seg.attempt);
                }
                for l in &lines {
                    ui.log(&j.display, l);
                }
                j.next.insert(seg.attempt, next + lines.len() as u64);
            }
        }
    }
}

/// Looks a Workflow up; `Ok(None)` when it does not exist.
pub async fn get_workflow(target: &Target, name: &str) -> Result<Option<Workflow>, String> {
    target
        .workflows()
        .get_opt(name)
        .await
        .map_err(|e| format!("failed to read Workflow {}/{name}: {e}", target.namespace))
}

/// The job nodes of a Workflow's status that `job` names (a node name, or
/// a job key with all its matrix cells); all nodes for `None`.
pub fn select_jobs<'a>(
    wf: &'a Workflow,
    job: Option<&str>,
) -> Result<Vec<(&'a String, &'a JobStatus)>, String> {
    let name = kube::ResourceExt::name_any(wf);
    let Some(status) = wf.status.as_ref().filter(|s| !s.jobs.is_empty()) else {
        return Err(format!(
            "workflow {name} has no jobs yet (it has not been reconciled)"
        ));
    };
    let found: Vec<_> = status
        .jobs
        .iter()
        .filter(|(n, j)| {
            job.is_none_or(|want| n.as_str() == want || j.job.as_deref() == Some(want))
        })
        .collect();
    if found.is_empty() {
        let names: Vec<&str> = status.jobs.keys().map(String::as_str).collect();
        return Err(format!(
            "workflow {name} has no job `{}` (jobs: {})",
            job.unwrap_or_default(),
            names.join(", ")
        ));
    }
    Ok(found)
}

/// A job of a cluster Workflow, found for `krt replay`: its recorded
/// action comes from the cluster's store.
pub async fn find_for_replay(
    store: &Store,
    wf: &Workflow,
    job: &str,
) -> Result<crate::embedded::replay::Found, String> {
    use crate::embedded::record::{JobRecord, RunRecord};
    let name = kube::ResourceExt::name_any(wf);
    let found = select_jobs(wf, Some(job))?;
    let (node, j) = match found.as_slice() {
        [one] => *one,
        many => {
            let names: Vec<&str> = many.iter().map(|(n, _)| n.as_str()).collect();
            return Err(format!(
                "job `{job}` has several matrix cells in workflow {name}; name one: {}",
                names.join(", ")
            ));
        }
    };
    let Some(digest) = j.action.as_deref() else {
        return Err(format!(
            "job `{node}` of workflow {name} never ran (it is {}), so there is nothing to replay",
            j.phase.as_deref().unwrap_or("waiting").to_lowercase()
        ));
    };
    let digest: Digest = digest
        .parse()
        .map_err(|e| format!("job `{node}`: bad action digest `{digest}`: {e}"))?;
    let bytes = store.get_bytes(&digest).await.map_err(|e| {
        format!(
            "failed to fetch the action {digest} of `{node}` from {}: {e}",
            store.url()
        )
    })?;
    let action: crate::embedded::cache::Action = serde_json::from_slice(&bytes)
        .map_err(|e| format!("the action {digest} of `{node}` is not valid: {e}"))?;
    let report = job_report(node, j);
    let status = wf.status.clone().unwrap_or_default();
    let job_rec = JobRecord {
        node: node.clone(),
        job: j.job.clone().unwrap_or_else(|| node.clone()),
        display: report.display.clone(),
        result: j.result,
        cached: j.cached,
        attempts: j.attempts,
        action: Some(digest),
        action_inline: None,
        outputs: j.outputs.clone(),
        artifacts: report.artifacts.clone(),
        log: report.log,
        duration_ms: report.duration_ms,
        message: j.message.clone(),
    };
    let ms = |t: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
        t.as_ref().map_or(0, |t| t.0.as_millisecond().max(0) as u64)
    };
    Ok(crate::embedded::replay::Found {
        run: RunRecord {
            id: name.clone(),
            workflow: name,
            file: String::new(),
            params: wf.spec.arguments.clone(),
            source: wf.spec.source.as_deref().and_then(|s| s.parse().ok()),
            started_ms: ms(&status.start_time),
            finished_ms: ms(&status.finish_time),
            result: status
                .phase
                .map_or("running".into(), |p| format!("{p:?}").to_lowercase()),
            jobs: vec![job_rec.clone()],
        },
        job: job_rec,
        action,
    })
}
