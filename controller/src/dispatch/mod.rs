//! The Run dispatcher: one task owns the queues and the slot accounting.
//!
//! Inputs are watch events (Runs, runtime Pods, RuntimePools, pool Secrets)
//! and reports from attempt tasks; every input ends with an attempt to
//! dispatch, so a Run starts as soon as a slot frees, with no polling.
//! Busy slots are counted from the assignments the dispatcher made (and the
//! ones it adopted from Run status after a restart), never from pods.

mod attempt;
mod status;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::channel::mpsc::UnboundedSender as PoolTrigger;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime};
use k8s_openapi::jiff::Timestamp;
use kruntimes_crds::{AttemptRecord, Run, RunPhase, RunStatus, RuntimePool};
use kruntimes_runtime::exec::{RunRequest, RunResult};
use kube::runtime::events::{Event as KEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::Options;
use crate::metrics::Metrics;
use crate::names::*;
use attempt::{AttemptEvent, AttemptSpec, Http};
use status::StatusWriter;

/// `(namespace, name)` of a Run.
pub type RunKey = (String, String);
type PodKey = (String, String);
type PoolKey = (String, String);

/// Largest log tail kept in a Run's status.
pub const STATUS_LOG_TAIL: usize = 16 * 1024;

/// Busy slots per pool, published for RuntimePool status.
#[derive(Clone, Debug, Default)]
pub struct SlotBook(Arc<Mutex<HashMap<PoolKey, u32>>>);

impl SlotBook {
    /// Busy slots of a pool.
    pub fn busy(&self, ns: &str, pool: &str) -> u32 {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(ns.to_string(), pool.to_string()))
            .copied()
            .unwrap_or(0)
    }

    fn set(&self, key: &PoolKey, busy: u32) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone(), busy);
    }
}

#[derive(Debug)]
pub(crate) enum Msg {
    Run(Box<watcher::Event<Run>>),
    Pod(Box<watcher::Event<Pod>>),
    Pool(Box<watcher::Event<RuntimePool>>),
    Secret(Box<watcher::Event<Secret>>),
    Attempt {
        key: RunKey,
        attempt: u32,
        ev: AttemptEvent,
    },
    RetryDue {
        key: RunKey,
        uid: String,
    },
    PoolNotify(PoolKey),
}

#[derive(Debug)]
struct PodInfo {
    pool: String,
    ip: Option<IpAddr>,
    port: Option<i32>,
    ready: bool,
    deleting: bool,
    busy: u32,
    /// Set when the runtime answered 429 while we counted a free slot.
    full: bool,
}

#[derive(Debug)]
struct PoolInfo {
    slots: u32,
}

#[derive(Debug)]
enum State {
    Queued,
    Backoff,
    Adopt {
        pod: String,
        attempt: u32,
    },
    Active {
        pod: PodKey,
        attempt: u32,
        started: bool,
        started_at: Option<MicroTime>,
        cancel: CancellationToken,
        task: tokio::task::AbortHandle,
    },
    Done,
}

#[derive(Debug)]
struct Entry {
    run: Arc<Run>,
    uid: String,
    seen: Instant,
    status: RunStatus,
    writer: StatusWriter,
    state: State,
    failed_pods: Vec<String>,
    pending_reason: Option<String>,
    deleted: bool,
}

/// Tracks the objects of one watch across re-lists.
#[derive(Debug, Default)]
struct InitTracker<K: Eq + Hash> {
    seen: Option<HashSet<K>>,
    synced: bool,
}

/// The dispatcher task.
#[derive(Debug)]
pub struct Dispatcher;

struct Inner {
    client: Client,
    opts: Options,
    slot_book: SlotBook,
    metrics: Arc<Metrics>,
    pool_trigger: PoolTrigger<ObjectRef<RuntimePool>>,
    tx: mpsc::UnboundedSender<Msg>,
    http: Http,
    events: mpsc::Sender<(k8s_openapi::api::core::v1::ObjectReference, KEvent)>,

    runs: HashMap<RunKey, Entry>,
    pods: HashMap<PodKey, PodInfo>,
    pools: HashMap<PoolKey, PoolInfo>,
    tokens: HashMap<PoolKey, String>,
    queues: HashMap<PoolKey, VecDeque<RunKey>>,
    /// Busy slots last reported to the pool reconciler, and pools whose
    /// rate-limit timer runs.
    pool_reported: HashMap<PoolKey, u32>,
    pool_timer: HashSet<PoolKey>,

    runs_init: InitTracker<RunKey>,
    pods_init: InitTracker<PodKey>,
    pools_init: InitTracker<PoolKey>,
    secrets_init: InitTracker<PoolKey>,
}

impl Dispatcher {
    /// Starts the watches and the dispatcher task.
    pub(crate) fn start(
        client: Client,
        opts: Options,
        slot_book: SlotBook,
        metrics: Arc<Metrics>,
        pool_trigger: PoolTrigger<ObjectRef<RuntimePool>>,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<anyhow::Result<()>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let ns = opts.namespace.clone();
        spawn_watch::<Run>(
            &client,
            ns.as_deref(),
            watcher::Config::default(),
            tx.clone(),
            Msg::Run,
            &metrics,
        );
        spawn_watch::<Pod>(
            &client,
            ns.as_deref(),
            watcher::Config::default().labels(POOL_LABEL),
            tx.clone(),
            Msg::Pod,
            &metrics,
        );
        spawn_watch::<RuntimePool>(
            &client,
            ns.as_deref(),
            watcher::Config::default(),
            tx.clone(),
            Msg::Pool,
            &metrics,
        );
        spawn_watch::<Secret>(
            &client,
            ns.as_deref(),
            watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGER}")),
            tx.clone(),
            Msg::Secret,
            &metrics,
        );
        let events = spawn_event_publisher(client.clone());
        let inner = Inner {
            client,
            opts,
            slot_book,
            metrics,
            pool_trigger,
            tx,
            http: attempt::http_client(),
            events,
            runs: HashMap::new(),
            pods: HashMap::new(),
            pools: HashMap::new(),
            tokens: HashMap::new(),
            queues: HashMap::new(),
            pool_reported: HashMap::new(),
            pool_timer: HashSet::new(),
            runs_init: InitTracker::default(),
            pods_init: InitTracker::default(),
            pools_init: InitTracker::default(),
            secrets_init: InitTracker::default(),
        };
        tokio::spawn(inner.run(rx, shutdown))
    }
}

fn spawn_watch<K>(
    client: &Client,
    ns: Option<&str>,
    cfg: watcher::Config,
    tx: mpsc::UnboundedSender<Msg>,
    wrap: fn(Box<watcher::Event<K>>) -> Msg,
    metrics: &Arc<Metrics>,
) where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    let api: Api<K> = match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let metrics = metrics.clone();
    tokio::spawn(async move {
        let mut stream = watcher(api, cfg).default_backoff().boxed();
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(ev) => {
                    if tx.send(wrap(Box::new(ev))).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    metrics.reconcile_error(K::kind(&()).as_ref());
                    tracing::warn!(kind = %K::kind(&()), error = %e, "watch failed; retrying");
                }
            }
        }
    });
}

/// Events are best effort: published by a few workers from a bounded queue,
/// dropped (with a debug log) when the API server cannot keep up.
///
/// Transitions of one Run that come within [`EVENT_FOLD`] of each other are
/// folded into one Event whose note lists them all (like kubectl's event
/// aggregation): a short Run costs one Event write, not three, and every
/// transition is still reported. Warnings are never delayed by a Normal.
fn spawn_event_publisher(
    client: Client,
) -> mpsc::Sender<(k8s_openapi::api::core::v1::ObjectReference, KEvent)> {
    type Pending = (
        k8s_openapi::api::core::v1::ObjectReference,
        KEvent,
        tokio::time::Instant,
    );
    let (tx, mut rx) = mpsc::channel::<(k8s_openapi::api::core::v1::ObjectReference, KEvent)>(4096);
    let (out_tx, out_rx) =
        mpsc::channel::<(k8s_openapi::api::core::v1::ObjectReference, KEvent)>(2048);
    tokio::spawn(async move {
        let mut pending: HashMap<String, Pending> = HashMap::new();
        loop {
            let next_due = pending.values().map(|p| p.2).min();
            let msg = match next_due {
                Some(due) => tokio::select! {
                    m = rx.recv() => m.map(Some),
                    _ = tokio::time::sleep_until(due) => Some(None),
                },
                None => rx.recv().await.map(Some),
            };
            let Some(msg) = msg else { break };
            if let Some((reference, ev)) = msg {
                let uid = reference.uid.clone().unwrap_or_default();
                let fin = matches!(ev.action.as_str(), "Finish");
                let merged = match pending.remove(&uid) {
                    Some((_, old, due)) => {
                        let note = format!(
                            "{}; {}",
                            old.note.unwrap_or_default(),
                            ev.note.clone().unwrap_or_default()
                        );
                        let warning =
                            old.type_ == EventType::Warning || ev.type_ == EventType::Warning;
                        (
                            KEvent {
                                type_: if warning {
                                    EventType::Warning
                                } else {
                                    EventType::Normal
                                },
                                note: Some(note.chars().take(1000).collect()),
                                ..ev
                            },
                            due,
                        )
                    }
                    None => (ev, tokio::time::Instant::now() + EVENT_FOLD),
                };
                if fin || merged.0.type_ == EventType::Warning {
                    let _ = out_tx.try_send((reference, merged.0));
                } else {
                    pending.insert(uid, (reference, merged.0, merged.1));
                }
            }
            let now = tokio::time::Instant::now();
            let due: Vec<String> = pending
                .iter()
                .filter(|(_, p)| p.2 <= now)
                .map(|(k, _)| k.clone())
                .collect();
            for k in due {
                if let Some((reference, ev, _)) = pending.remove(&k)
                    && out_tx.try_send((reference, ev)).is_err()
                {
                    tracing::debug!("event queue full; dropping an Event");
                }
            }
        }
    });
    let recorder = Arc::new(Recorder::new(
        client,
        Reporter {
            controller: MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        },
    ));
    let rx = Arc::new(tokio::sync::Mutex::new(out_rx));
    for _ in 0..4 {
        let rx = rx.clone();
        let recorder = recorder.clone();
        tokio::spawn(async move {
            loop {
                let next = rx.lock().await.recv().await;
                let Some((reference, ev)) = next else { return };
                if let Err(e) = recorder.publish(&ev, &reference).await {
                    tracing::debug!(error = %e, "publishing an Event failed");
                }
            }
        });
    }
    tx
}

/// Transitions of one Run this close together share one Event.
const EVENT_FOLD: Duration = Duration::from_millis(250);

fn key_of<K: Resource>(o: &K) -> (String, String) {
    (
        o.meta().namespace.clone().unwrap_or_default(),
        o.meta().name.clone().unwrap_or_default(),
    )
}

fn now_micro() -> MicroTime {
    MicroTime(Timestamp::now())
}

fn micro_from_us(us: u64) -> MicroTime {
    MicroTime(Timestamp::from_microsecond(us as i64).unwrap_or_else(|_| Timestamp::now()))
}

fn is_terminal(p: Option<RunPhase>) -> bool {
    matches!(
        p,
        Some(RunPhase::Succeeded | RunPhase::Failed | RunPhase::TimedOut | RunPhase::Cancelled)
    )
}

fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now()),
    }
}

/// Sets a condition, keeping its transition time when the status is unchanged.
fn set_condition(conds: &mut Vec<Condition>, c: Condition) {
    if let Some(old) = conds.iter_mut().find(|o| o.type_ == c.type_) {
        let keep = old.status == c.status;
        let t = old.last_transition_time.clone();
        *old = c;
        if keep {
            old.last_transition_time = t;
        }
    } else {
        conds.push(c);
    }
}

fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].to_string()
}

fn backoff_for(run: &Run, retry_number: u32) -> Duration {
    let base = run
        .spec
        .retry
        .backoff
        .as_deref()
        .and_then(|b| kruntimes_crds::duration::parse_duration(b).ok())
        .unwrap_or(Duration::from_secs(1));
    let factor = 1u32 << retry_number.saturating_sub(1).min(10);
    (base * factor).min(Duration::from_secs(300))
}

impl Inner {
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Msg>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        loop {
            let msg = tokio::select! {
                m = rx.recv() => m,
                _ = shutdown.cancelled() => None,
            };
            let Some(msg) = msg else { break };
            let mut touched: HashSet<PoolKey> = HashSet::new();
            self.handle(msg, &mut touched);
            // Drain what is already queued before dispatching: one pass
            // over many events.
            while let Ok(m) = rx.try_recv() {
                self.handle(m, &mut touched);
            }
            if self.synced() {
                self.adopt_waiting(&mut touched);
                for pool in touched {
                    self.dispatch_pool(&pool);
                    self.notify_pool(&pool);
                }
            }
            let queued: usize = self.queues.values().map(|q| q.len()).sum();
            let active = self
                .runs
                .values()
                .filter(|e| matches!(e.state, State::Active { .. }))
                .count();
            self.metrics.set_queue(queued, active);
        }
        self.stop().await;
        Ok(())
    }

    /// Leaves Runs in flight to the next leader, which adopts them from
    /// their status: stops following them (their runtimes keep running
    /// them) and lets the status already set go out first, so that nothing
    /// of ours lands after the lease may have changed hands.
    async fn stop(&mut self) {
        let mut writers = Vec::new();
        for (_, e) in self.runs.drain() {
            if let State::Active { task, .. } = &e.state {
                task.abort();
            }
            writers.push(e.writer.close());
        }
        let flushed = futures::future::join_all(writers);
        if tokio::time::timeout(Duration::from_secs(5), flushed)
            .await
            .is_err()
        {
            tracing::warn!("some Run status writes did not finish within 5s of shutdown");
        }
    }

    fn synced(&self) -> bool {
        self.runs_init.synced
            && self.pods_init.synced
            && self.pools_init.synced
            && self.secrets_init.synced
    }

    fn handle(&mut self, msg: Msg, touched: &mut HashSet<PoolKey>) {
        match msg {
            Msg::Run(ev) => self.on_watch(
                *ev,
                touched,
                |s| &mut s.runs_init,
                Self::on_run,
                Self::on_run_gone,
            ),
            Msg::Pod(ev) => self.on_watch(
                *ev,
                touched,
                |s| &mut s.pods_init,
                Self::on_pod,
                Self::on_pod_gone,
            ),
            Msg::Pool(ev) => self.on_watch(
                *ev,
                touched,
                |s| &mut s.pools_init,
                Self::on_pool,
                Self::on_pool_gone,
            ),
            Msg::Secret(ev) => self.on_watch(
                *ev,
                touched,
                |s| &mut s.secrets_init,
                Self::on_secret,
                Self::on_secret_gone,
            ),
            Msg::Attempt { key, attempt, ev } => self.on_attempt(key, attempt, ev, touched),
            Msg::RetryDue { key, uid } => {
                if let Some(e) = self.runs.get_mut(&key)
                    && e.uid == uid
                    && matches!(e.state, State::Backoff)
                {
                    e.state = State::Queued;
                    let pool = (key.0.clone(), e.run.spec.pool.clone());
                    self.queues.entry(pool.clone()).or_default().push_back(key);
                    touched.insert(pool);
                }
            }
            Msg::PoolNotify(pool) => {
                self.pool_timer.remove(&pool);
                self.notify_pool(&pool);
            }
        }
    }

    fn on_watch<K: Resource<DynamicType = ()> + Clone>(
        &mut self,
        ev: watcher::Event<K>,
        touched: &mut HashSet<PoolKey>,
        tracker: fn(&mut Self) -> &mut InitTracker<(String, String)>,
        apply: fn(&mut Self, K, &mut HashSet<PoolKey>),
        gone: fn(&mut Self, (String, String), &mut HashSet<PoolKey>),
    ) {
        match ev {
            watcher::Event::Init => tracker(self).seen = Some(HashSet::new()),
            watcher::Event::InitApply(o) => {
                if let Some(seen) = tracker(self).seen.as_mut() {
                    seen.insert(key_of(&o));
                }
                apply(self, o, touched);
            }
            watcher::Event::InitDone => {
                let seen = tracker(self).seen.take().unwrap_or_default();
                tracker(self).synced = true;
                // Objects that vanished while the watch was down.
                let stale: Vec<(String, String)> = self
                    .known_keys::<K>()
                    .into_iter()
                    .filter(|k| !seen.contains(k))
                    .collect();
                for k in stale {
                    gone(self, k, touched);
                }
            }
            watcher::Event::Apply(o) => apply(self, o, touched),
            watcher::Event::Delete(o) => gone(self, key_of(&o), touched),
        }
    }

    fn known_keys<K: Resource<DynamicType = ()>>(&self) -> Vec<(String, String)> {
        match K::kind(&()).as_ref() {
            "Run" => self.runs.keys().cloned().collect(),
            "Pod" => self.pods.keys().cloned().collect(),
            "RuntimePool" => self.pools.keys().cloned().collect(),
            "Secret" => self
                .tokens
                .keys()
                .map(|(ns, p)| (ns.clone(), pool_object_name_for(p)))
                .collect(),
            _ => Vec::new(),
        }
    }

    // ---- pools, secrets, pods -------------------------------------------------

    fn on_pool(&mut self, pool: RuntimePool, touched: &mut HashSet<PoolKey>) {
        let key = key_of(&pool);
        self.pools.insert(
            key.clone(),
            PoolInfo {
                slots: pool.spec.slots.max(1),
            },
        );
        touched.insert(key);
    }

    fn on_pool_gone(&mut self, key: PoolKey, touched: &mut HashSet<PoolKey>) {
        self.pools.remove(&key);
        touched.insert(key);
    }

    fn on_secret(&mut self, secret: Secret, touched: &mut HashSet<PoolKey>) {
        let Some(pool) = secret.labels().get(POOL_LABEL).cloned() else {
            return;
        };
        let token = secret
            .data
            .as_ref()
            .and_then(|d| d.get(TOKEN_KEY))
            .map(|b| String::from_utf8_lossy(&b.0).trim().to_string());
        let key = (secret.namespace().unwrap_or_default(), pool);
        if let Some(t) = token {
            self.tokens.insert(key.clone(), t);
            touched.insert(key);
        }
    }

    fn on_secret_gone(&mut self, key: (String, String), _touched: &mut HashSet<PoolKey>) {
        if let Some(pool) = key.1.strip_prefix("krt-") {
            self.tokens.remove(&(key.0, pool.to_string()));
        }
    }

    fn on_pod(&mut self, pod: Pod, touched: &mut HashSet<PoolKey>) {
        let key = key_of(&pod);
        let Some(pool) = pod.labels().get(POOL_LABEL).cloned() else {
            return;
        };
        let status = pod.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let ip = status
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok());
        let port = pod.spec.as_ref().and_then(|s| {
            s.containers
                .iter()
                .find(|c| c.name == RUNTIME_CONTAINER)
                .or(s.containers.first())
                .and_then(|c| c.ports.as_ref())
                .and_then(|ps| {
                    ps.iter()
                        .find(|p| p.name.as_deref() == Some("http"))
                        .or(ps.first())
                })
                .map(|p| p.container_port)
        });
        let deleting = pod.metadata.deletion_timestamp.is_some();
        let info = self.pods.entry(key.clone()).or_insert(PodInfo {
            pool: pool.clone(),
            ip: None,
            port: None,
            ready: false,
            deleting: false,
            busy: 0,
            full: false,
        });
        info.pool = pool.clone();
        info.ip = ip;
        info.port = port;
        info.ready = ready;
        info.deleting = deleting;
        touched.insert((key.0, pool));
    }

    fn on_pod_gone(&mut self, key: PodKey, touched: &mut HashSet<PoolKey>) {
        let Some(info) = self.pods.remove(&key) else {
            return;
        };
        touched.insert((key.0.clone(), info.pool.clone()));
        // Every attempt on that pod is lost now.
        let lost: Vec<(RunKey, u32)> = self
            .runs
            .iter()
            .filter_map(|(k, e)| match &e.state {
                State::Active { pod, attempt, .. } if *pod == key => Some((k.clone(), *attempt)),
                _ => None,
            })
            .collect();
        for (run, attempt) in lost {
            if let Some(State::Active { task, .. }) = self.runs.get(&run).map(|e| &e.state) {
                task.abort();
            }
            self.on_attempt(
                run,
                attempt,
                AttemptEvent::Lost(format!("pod `{}` was deleted", key.1)),
                touched,
            );
        }
    }

    // ---- runs -----------------------------------------------------------------

    fn on_run(&mut self, run: Run, touched: &mut HashSet<PoolKey>) {
        let key = key_of(&run);
        let uid = run.metadata.uid.clone().unwrap_or_default();
        let pool = (key.0.clone(), run.spec.pool.clone());
        let run = Arc::new(run);
        if let Some(e) = self.runs.get_mut(&key) {
            if e.uid == uid {
                let cancel = run.spec.cancel && !e.run.spec.cancel;
                e.run = run.clone();
                if matches!(e.state, State::Done)
                    && is_terminal(run.status.as_ref().and_then(|s| s.phase))
                {
                    // Our final status is visible; forget the Run.
                    self.runs.remove(&key);
                    return;
                }
                if cancel {
                    self.cancel(&key, touched);
                }
                return;
            }
            // Same name, new object: the old one was deleted.
            self.on_run_gone(key.clone(), touched);
        }
        let status = run.status.clone().unwrap_or_default();
        if is_terminal(status.phase) {
            return;
        }
        let writer = StatusWriter::start(self.client.clone(), key.0.clone(), key.1.clone());
        let state = match (&status.phase, &status.pod, status.attempt) {
            (Some(RunPhase::Scheduled | RunPhase::Running), Some(pod), Some(attempt)) => {
                State::Adopt {
                    pod: pod.clone(),
                    attempt,
                }
            }
            _ => State::Queued,
        };
        let queued = matches!(state, State::Queued);
        self.runs.insert(
            key.clone(),
            Entry {
                run: run.clone(),
                uid,
                seen: Instant::now(),
                status,
                writer,
                state,
                failed_pods: Vec::new(),
                pending_reason: None,
                deleted: false,
            },
        );
        if run.spec.cancel {
            self.cancel(&key, touched);
            return;
        }
        if queued {
            self.queues.entry(pool.clone()).or_default().push_back(key);
        }
        touched.insert(pool);
    }

    fn on_run_gone(&mut self, key: RunKey, touched: &mut HashSet<PoolKey>) {
        let Some(e) = self.runs.get_mut(&key) else {
            return;
        };
        match &e.state {
            State::Active { cancel, .. } => {
                // Stop it on the runtime; the slot frees when it ends.
                e.deleted = true;
                cancel.cancel();
            }
            _ => {
                let pool = (key.0.clone(), e.run.spec.pool.clone());
                self.runs.remove(&key);
                touched.insert(pool);
            }
        }
    }

    fn cancel(&mut self, key: &RunKey, touched: &mut HashSet<PoolKey>) {
        let Some(e) = self.runs.get_mut(key) else {
            return;
        };
        match &e.state {
            State::Active { cancel, .. } => cancel.cancel(),
            State::Queued | State::Backoff | State::Adopt { .. } => {
                e.status.message = Some("cancelled before it started".into());
                self.finish(key, RunPhase::Cancelled, None, touched);
            }
            State::Done => {}
        }
    }

    fn adopt_waiting(&mut self, touched: &mut HashSet<PoolKey>) {
        let waiting: Vec<(RunKey, String, u32)> = self
            .runs
            .iter()
            .filter_map(|(k, e)| match &e.state {
                State::Adopt { pod, attempt } => Some((k.clone(), pod.clone(), *attempt)),
                _ => None,
            })
            .collect();
        for (key, pod, attempt) in waiting {
            let pod_key = (key.0.clone(), pod.clone());
            let usable = self
                .pods
                .get(&pod_key)
                .is_some_and(|p| p.ip.is_some() && !p.deleting);
            if usable {
                tracing::info!(run = %key.1, namespace = %key.0, pod = %pod, attempt, "adopting a Run in flight");
                self.start_attempt(&key, &pod_key, attempt, true);
            } else {
                // Pretend it ran there so the loss is recorded like any other.
                let Some(e) = self.runs.get_mut(&key) else {
                    continue;
                };
                let (cancel, task) = (
                    CancellationToken::new(),
                    tokio::spawn(async {}).abort_handle(),
                );
                e.state = State::Active {
                    pod: pod_key.clone(),
                    attempt,
                    started: e.status.start_time.is_some(),
                    started_at: e.status.start_time.clone(),
                    cancel,
                    task,
                };
                if let Some(p) = self.pods.get_mut(&pod_key) {
                    p.busy += 1;
                }
                self.on_attempt(
                    key,
                    attempt,
                    AttemptEvent::Lost(format!(
                        "pod `{pod}` is gone (found after a controller restart)"
                    )),
                    touched,
                );
            }
        }
    }

    /// Starts as many queued Runs of a pool as there are free slots.
    fn dispatch_pool(&mut self, pool: &PoolKey) {
        let Some(info) = self.pools.get(pool) else {
            self.mark_pending(
                pool,
                "PoolNotFound",
                format!("RuntimePool `{}` does not exist", pool.1),
            );
            return;
        };
        let slots = info.slots;
        if !self.tokens.contains_key(pool) {
            self.mark_pending(
                pool,
                "PoolNotReady",
                format!("the runtime token of pool `{}` is not created yet", pool.1),
            );
            return;
        }
        loop {
            let Some(key) = self.queues.get(pool).and_then(|q| q.front().cloned()) else {
                return;
            };
            let avoid = match self.runs.get(&key) {
                Some(e) if matches!(e.state, State::Queued) => e.failed_pods.clone(),
                _ => {
                    self.queues.get_mut(pool).map(|q| q.pop_front());
                    continue;
                }
            };
            let Some(pod) = self.pick_pod(pool, slots, &avoid) else {
                let ready = self
                    .pods
                    .iter()
                    .filter(|(k, p)| k.0 == pool.0 && p.pool == pool.1 && p.ready && !p.deleting)
                    .count();
                if ready == 0 {
                    self.mark_pending(
                        pool,
                        "NoReadyPods",
                        format!("pool `{}` has no Ready pod", pool.1),
                    );
                } else {
                    self.mark_pending(
                        pool,
                        "NoFreeSlot",
                        format!(
                            "all {} slots of pool `{}` are busy",
                            ready as u32 * slots,
                            pool.1
                        ),
                    );
                }
                return;
            };
            self.queues.get_mut(pool).map(|q| q.pop_front());
            let attempt = self
                .runs
                .get(&key)
                .and_then(|e| e.status.attempt)
                .unwrap_or(0)
                + 1;
            self.start_attempt(&key, &pod, attempt, false);
        }
    }

    fn pick_pod(&self, pool: &PoolKey, slots: u32, avoid: &[String]) -> Option<PodKey> {
        let candidates = self.pods.iter().filter(|(k, p)| {
            k.0 == pool.0
                && p.pool == pool.1
                && p.ready
                && !p.deleting
                && !p.full
                && p.ip.is_some()
                && p.busy < slots
        });
        // Fewest busy slots first; a pod where this Run already failed only
        // when there is no other.
        candidates
            .min_by_key(|(k, p)| (avoid.contains(&k.1), p.busy, k.1.clone()))
            .map(|(k, _)| k.clone())
    }

    fn mark_pending(&mut self, pool: &PoolKey, reason: &str, message: String) {
        let Some(queue) = self.queues.get(pool) else {
            return;
        };
        let keys: Vec<RunKey> = queue.iter().cloned().collect();
        let queued = keys.len();
        for key in keys {
            let Some(e) = self.runs.get_mut(&key) else {
                continue;
            };
            if !matches!(e.state, State::Queued) || e.pending_reason.as_deref() == Some(reason) {
                continue;
            }
            e.pending_reason = Some(reason.to_string());
            e.status.phase = Some(RunPhase::Pending);
            e.status.observed_generation = e.run.metadata.generation;
            let msg = format!("{message}; {queued} Run(s) waiting");
            e.status.message = Some(msg.clone());
            set_condition(
                &mut e.status.conditions,
                condition("Scheduled", false, reason, msg, e.run.metadata.generation),
            );
            e.writer.set(&e.status);
        }
    }

    fn start_attempt(&mut self, key: &RunKey, pod_key: &PodKey, attempt: u32, adopt: bool) {
        let Some(pod) = self.pods.get_mut(pod_key) else {
            return;
        };
        let (Some(ip), port) = (pod.ip, pod.port.unwrap_or(DEFAULT_PORT)) else {
            return;
        };
        pod.busy += 1;
        let pool = (key.0.clone(), pod.pool.clone());
        let token = self.tokens.get(&pool).cloned().unwrap_or_default();
        let Some(e) = self.runs.get_mut(key) else {
            return;
        };
        let spec = &e.run.spec;
        let request = RunRequest {
            id: runtime_run_id(&e.run),
            attempt,
            job: spec
                .display_name
                .clone()
                .unwrap_or_else(|| spec.job.clone()),
            steps: spec.steps.clone(),
            env: spec.env.clone(),
            secrets: BTreeMap::new(),
            source: spec.source.clone(),
            inputs: spec.inputs.clone(),
            artifacts: spec.artifacts.clone(),
            timeout: spec.timeout.clone(),
            // For `krt submit --wait` and `krt logs -f` outside the cluster.
            live_log: true,
        };
        let cancel = CancellationToken::new();
        let aspec = AttemptSpec {
            key: key.clone(),
            attempt,
            addr: SocketAddr::new(ip, port as u16),
            token,
            request,
            secret_env: spec.secret_env.clone(),
            lost_after: self.opts.lost_after,
            adopt,
        };
        let task = tokio::spawn(attempt::run(
            aspec,
            self.http.clone(),
            self.client.clone(),
            self.tx.clone(),
            cancel.clone(),
        ))
        .abort_handle();
        let started = adopt && e.status.start_time.is_some();
        e.state = State::Active {
            pod: pod_key.clone(),
            attempt,
            started,
            started_at: if started {
                e.status.start_time.clone()
            } else {
                None
            },
            cancel,
            task,
        };
        e.pending_reason = None;
        if !adopt {
            let st = &mut e.status;
            st.phase = Some(RunPhase::Scheduled);
            st.attempt = Some(attempt);
            st.pod = Some(pod_key.1.clone());
            st.scheduled_time = Some(now_micro());
            st.start_time = None;
            st.completion_time = None;
            st.exit_code = None;
            st.steps.clear();
            st.outputs.clear();
            st.artifacts.clear();
            st.log_digest = None;
            st.log_tail = None;
            st.observed_generation = e.run.metadata.generation;
            st.message = Some(format!("attempt {attempt} assigned to pod `{}`", pod_key.1));
            set_condition(
                &mut st.conditions,
                condition(
                    "Scheduled",
                    true,
                    "Assigned",
                    format!("attempt {attempt} assigned to pod `{}`", pod_key.1),
                    e.run.metadata.generation,
                ),
            );
            e.writer.set(&e.status);
            let note = format!("attempt {attempt} assigned to pod {}", pod_key.1);
            self.event(key, EventType::Normal, "Scheduled", "Dispatch", note);
        }
        self.update_busy(&pool);
    }

    fn on_attempt(
        &mut self,
        key: RunKey,
        attempt: u32,
        ev: AttemptEvent,
        touched: &mut HashSet<PoolKey>,
    ) {
        let Some(e) = self.runs.get_mut(&key) else {
            return;
        };
        let State::Active {
            pod,
            attempt: current,
            started,
            started_at,
            cancel,
            ..
        } = &mut e.state
        else {
            return;
        };
        if *current != attempt {
            return;
        }
        if let AttemptEvent::Started { at_us } = ev {
            if !*started {
                *started = true;
                let at = micro_from_us(at_us);
                *started_at = Some(at.clone());
                let seen_wall =
                    Timestamp::now().as_microsecond() - e.seen.elapsed().as_micros() as i64;
                self.metrics
                    .dispatched(((at_us as i64 - seen_wall).max(0)) as f64 / 1e6);
                e.status.phase = Some(RunPhase::Running);
                e.status.start_time = Some(at);
                e.status.message = Some(format!("running on pod `{}`", pod.1));
                e.writer.set(&e.status);
                let note = format!("attempt {attempt} started on pod {}", pod.1);
                self.event(&key, EventType::Normal, "Started", "Run", note);
            }
            return;
        }
        // The attempt is over: free the slot.
        let pod = pod.clone();
        let was_cancelled = cancel.is_cancelled();
        let started_at = started_at.clone();
        let pool = (key.0.clone(), e.run.spec.pool.clone());
        if let Some(p) = self.pods.get_mut(&pod) {
            p.busy = p.busy.saturating_sub(1);
            p.full = false;
        }
        self.update_busy(&pool);
        touched.insert(pool.clone());
        let Some(e) = self.runs.get_mut(&key) else {
            return;
        };
        if e.deleted {
            self.runs.remove(&key);
            return;
        }
        match ev {
            AttemptEvent::Started { .. } => unreachable!("handled above"),
            AttemptEvent::Busy => {
                if let Some(p) = self.pods.get_mut(&pod) {
                    p.full = true;
                }
                // Not an attempt: the next dispatch uses the same number.
                e.status.attempt = (attempt > 1).then_some(attempt - 1);
                e.state = State::Queued;
                self.queues.entry(pool).or_default().push_front(key);
            }
            AttemptEvent::Finished(result) => {
                let phase = if was_cancelled {
                    RunPhase::Cancelled
                } else {
                    result.phase
                };
                apply_result(&mut e.status, &result);
                if started_at.is_none() && result.started_at_ms > 0 {
                    e.status.start_time = Some(micro_from_us(result.started_at_ms * 1000));
                }
                match phase {
                    RunPhase::Succeeded | RunPhase::Cancelled => {
                        e.status.message = result.message.clone();
                        self.finish(&key, phase, Some(&pod.1), touched);
                    }
                    _ => {
                        let msg = result
                            .message
                            .clone()
                            .unwrap_or_else(|| format!("exit code {:?}", result.exit_code));
                        self.attempt_failed(&key, &pod.1, phase, msg, touched);
                    }
                }
            }
            AttemptEvent::Lost(msg) => {
                if was_cancelled {
                    e.status.message = Some(format!("cancelled; the runtime was lost: {msg}"));
                    self.finish(&key, RunPhase::Cancelled, Some(&pod.1), touched);
                } else {
                    e.failed_pods.push(pod.1.clone());
                    self.event(&key, EventType::Warning, "RuntimeLost", "Run", msg.clone());
                    self.attempt_failed(&key, &pod.1, RunPhase::Failed, msg, touched);
                }
            }
            AttemptEvent::Rejected(msg) => {
                e.status.message = Some(msg);
                self.finish(&key, RunPhase::Failed, Some(&pod.1), touched);
            }
        }
    }

    /// An attempt failed: retry after backoff, or end the Run.
    fn attempt_failed(
        &mut self,
        key: &RunKey,
        pod: &str,
        phase: RunPhase,
        msg: String,
        touched: &mut HashSet<PoolKey>,
    ) {
        let Some(e) = self.runs.get_mut(key) else {
            return;
        };
        let attempt = e.status.attempt.unwrap_or(1);
        let limit = e.run.spec.retry.limit;
        if attempt > limit || e.run.spec.cancel {
            e.status.message = Some(msg);
            self.finish(key, phase, Some(pod), touched);
            return;
        }
        let delay = backoff_for(&e.run, attempt);
        e.status.attempts.push(AttemptRecord {
            attempt,
            pod: Some(pod.to_string()),
            phase: Some(phase),
            start_time: e.status.start_time.clone(),
            completion_time: Some(now_micro()),
            exit_code: e.status.exit_code,
            message: Some(msg.clone()),
        });
        e.status.phase = Some(RunPhase::Pending);
        e.status.pod = None;
        e.status.start_time = None;
        let note = format!(
            "attempt {attempt} {}: {msg}; retry {attempt} of {limit} in {}ms",
            phase_word(phase),
            delay.as_millis()
        );
        e.status.message = Some(note.clone());
        set_condition(
            &mut e.status.conditions,
            condition(
                "Scheduled",
                false,
                "BackingOff",
                note.clone(),
                e.run.metadata.generation,
            ),
        );
        e.writer.set(&e.status);
        e.state = State::Backoff;
        let (tx, uid, key2) = (self.tx.clone(), e.uid.clone(), key.clone());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(Msg::RetryDue { key: key2, uid });
        });
        self.event(key, EventType::Warning, "Retrying", "Retry", note);
        let _ = touched;
    }

    /// Writes the final status.
    fn finish(
        &mut self,
        key: &RunKey,
        phase: RunPhase,
        pod: Option<&str>,
        touched: &mut HashSet<PoolKey>,
    ) {
        let Some(e) = self.runs.get_mut(key) else {
            return;
        };
        let st = &mut e.status;
        st.phase = Some(phase);
        st.completion_time = Some(now_micro());
        st.observed_generation = e.run.metadata.generation;
        if let Some(p) = pod {
            st.pod = Some(p.to_string());
        }
        let ok = phase == RunPhase::Succeeded;
        let reason = format!("{phase:?}");
        let message = st
            .message
            .clone()
            .unwrap_or_else(|| phase_word(phase).to_string());
        set_condition(
            &mut st.conditions,
            condition(
                "Complete",
                ok,
                &reason,
                message.clone(),
                e.run.metadata.generation,
            ),
        );
        e.writer.set(&e.status);
        e.state = State::Done;
        let secs = e.seen.elapsed().as_secs_f64();
        self.metrics.completed(&reason, secs);
        let kind = if ok || phase == RunPhase::Cancelled {
            EventType::Normal
        } else {
            EventType::Warning
        };
        self.event(key, kind, &reason, "Finish", message);
        touched.insert((key.0.clone(), self.runs[key].run.spec.pool.clone()));
    }

    fn update_busy(&mut self, pool: &PoolKey) {
        let busy: u32 = self
            .pods
            .iter()
            .filter(|(k, p)| k.0 == pool.0 && p.pool == pool.1)
            .map(|(_, p)| p.busy)
            .sum();
        self.slot_book.set(pool, busy);
    }

    /// Asks the pool reconciler to refresh status when the pool's busy
    /// slots changed, at most every 500 ms (the last change always goes out).
    fn notify_pool(&mut self, pool: &PoolKey) {
        if self.pool_timer.contains(pool) {
            return;
        }
        let busy = self.slot_book.busy(&pool.0, &pool.1);
        if self.pool_reported.get(pool) == Some(&busy) {
            return;
        }
        self.pool_reported.insert(pool.clone(), busy);
        self.pool_timer.insert(pool.clone());
        let _ = self
            .pool_trigger
            .unbounded_send(ObjectRef::new(&pool.1).within(&pool.0));
        let (tx, pool) = (self.tx.clone(), pool.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let _ = tx.send(Msg::PoolNotify(pool));
        });
    }

    fn event(&self, key: &RunKey, type_: EventType, reason: &str, action: &str, note: String) {
        let Some(e) = self.runs.get(key) else { return };
        let reference = e.run.object_ref(&());
        let ev = KEvent {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: action.into(),
            secondary: None,
        };
        if self.events.try_send((reference, ev)).is_err() {
            tracing::debug!("event queue full; dropping an Event");
        }
    }
}

fn phase_word(p: RunPhase) -> &'static str {
    match p {
        RunPhase::Pending => "pending",
        RunPhase::Scheduled => "scheduled",
        RunPhase::Running => "running",
        RunPhase::Succeeded => "succeeded",
        RunPhase::Failed => "failed",
        RunPhase::TimedOut => "timed out",
        RunPhase::Cancelled => "cancelled",
    }
}

fn apply_result(st: &mut RunStatus, r: &RunResult) {
    st.exit_code = r.exit_code;
    st.steps = r.steps.clone();
    st.outputs = r.outputs.clone();
    st.artifacts = r
        .artifacts
        .iter()
        .map(|(k, v)| (k.clone(), v.to_string()))
        .collect();
    st.log_digest = r.log_digest.as_ref().map(|d| d.to_string());
    st.log_tail = (!r.log_tail.is_empty()).then(|| tail(&r.log_tail, STATUS_LOG_TAIL));
}
