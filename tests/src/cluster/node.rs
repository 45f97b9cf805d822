//! The node `krt-node-0`: a kubelet (and, for pool pods, scheduler)
//! stand-in that runs pods as host processes on loopback.
//!
//! It learns about pods only through the API server, like a kubelet: a watch
//! on Pods labelled `kruntimes.io/pool`. Each pod gets a worker task:
//!
//! ```text
//!  watch ──► worker(pod uid) ──bind──► pods/{name}/binding
//!              │ volumes: emptyDir, secret, configMap, hostPath on the host
//!              │ init containers, one after the other ─┐
//!              │ containers, concurrently ─────────────┤ supervisor per container:
//!              │                                       │ resolve env, spawn,
//!              │ ◄──── container events ───────────────┘ probe, restart/back-off
//!              └──► pods/{name}/status (merge patch, whole status)
//! ```
//!
//! Deletion: on `deletionTimestamp` the worker stops every container (SIGTERM
//! to its process group, the grace period, SIGKILL), removes the pod's host
//! directories and deletes the pod with grace period 0 and a UID
//! precondition. Logs are kept under `<cluster>/logs/<ns>_<pod>/`.
//!
//! Images do not exist: the krt image's root holds only `/krt` (the built
//! binary), every other image's root is the host `/` (see `container.rs`).
//!
//! Not emulated: network and PID namespaces (a container sees the host;
//! pods are told apart by their own loopback address, 127.B.x.y), resource
//! limits, `readinessGates`, updates of Secret/ConfigMap volumes after start,
//! back-off reset after a long run, HTTPS and gRPC probes, and container
//! paths inside scripts (only values and arguments that start with a mount
//! path are translated). Unsupported volume types, `subPathExpr` and
//! `resourceFieldRef` are reported in the pod log and keep the pod waiting.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, KeyToPath, Node as NodeObject, Pod, Secret, Volume,
};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use super::container::{self, Fs, Mount, PodFacts, Resolved, Sources};
use super::probe::{Prober, Target};
use super::proc;

/// The name of the only node.
pub const NODE_NAME: &str = "krt-node-0";
/// The label that marks the pods the node runs (pods of RuntimePools).
pub const POOL_LABEL: &str = "kruntimes.io/pool";
const HOST_IP: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// Container restart back-off: 1 s, doubling, at most this.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What the tests may ask about running pods, by (namespace, name).
#[derive(Debug, Default)]
pub(crate) struct Pods(Mutex<HashMap<(String, String), PodInfo>>);

#[derive(Debug, Clone)]
pub(crate) struct PodInfo {
    pub uid: String,
    pub ip: Ipv4Addr,
    /// The first container's process, while it runs.
    pub pid: Option<u32>,
}

impl Pods {
    pub(crate) fn get(&self, ns: &str, name: &str) -> Option<PodInfo> {
        self.lock().get(&(ns.to_owned(), name.to_owned())).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), PodInfo>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, ns: &str, name: &str, uid: &str, f: impl FnOnce(&mut PodInfo)) {
        if let Some(info) = self.lock().get_mut(&(ns.to_owned(), name.to_owned()))
            && info.uid == uid
        {
            f(info);
        }
    }

    fn remove(&self, ns: &str, name: &str, uid: &str) {
        let mut pods = self.lock();
        let key = (ns.to_owned(), name.to_owned());
        if pods.get(&key).is_some_and(|i| i.uid == uid) {
            pods.remove(&key);
        }
    }
}

/// The node's configuration and shared state.
pub(crate) struct Node {
    pub client: Client,
    pub pods: Arc<Pods>,
    /// Volumes and working directories, per pod; removed with the pod.
    pub pods_dir: PathBuf,
    /// Container logs and node notes, per pod; kept.
    pub logs_dir: PathBuf,
    pub krt_bin: PathBuf,
    pub krt_image: String,
    /// PATH and HOME of the host, given to every container.
    pub host_env: Vec<(String, String)>,
    /// Every container's session id, one a line: what the next cluster
    /// kills if this test process dies with containers running (their
    /// descendants do not get the parent-death signal).
    pub sessions_file: PathBuf,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("pods_dir", &self.pods_dir)
            .field("logs_dir", &self.logs_dir)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// The directory of a pod's logs.
    pub(crate) fn log_dir(&self, ns: &str, name: &str) -> PathBuf {
        self.logs_dir.join(format!("{ns}_{name}"))
    }

    /// Notes about the node itself (watch errors).
    fn node_log(&self) -> PathBuf {
        self.logs_dir.join("_node.log")
    }
}

/// Creates the Node object and reports it Ready.
pub(crate) async fn register(client: &Client) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let nodes: Api<NodeObject> = Api::all(client.clone());
    let node: NodeObject = serde_json::from_value(json!({
        "metadata": {
            "name": NODE_NAME,
            "labels": {
                "kubernetes.io/hostname": NODE_NAME,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": std::env::consts::ARCH,
            }
        }
    }))?;
    nodes
        .create(&PostParams::default(), &node)
        .await
        .with_context(|| format!("create Node {NODE_NAME}"))?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let now = now();
    let resources = json!({"cpu": cpus.to_string(), "memory": "8Gi", "pods": "1000"});
    let status = json!({"status": {
        "conditions": [{
            "type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "krt test node is posting ready status",
            "lastHeartbeatTime": now, "lastTransitionTime": now,
        }],
        "addresses": [
            {"type": "InternalIP", "address": HOST_IP.to_string()},
            {"type": "Hostname", "address": NODE_NAME},
        ],
        "capacity": resources,
        "allocatable": resources,
        "nodeInfo": {
            "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "",
            "osImage": "host", "containerRuntimeVersion": "krt-test-node://1",
            "kubeletVersion": "v1.20.2", "kubeProxyVersion": "",
            "operatingSystem": "linux", "architecture": std::env::consts::ARCH,
        },
    }});
    nodes
        .patch_status(NODE_NAME, &PatchParams::default(), &Patch::Merge(status))
        .await
        .with_context(|| format!("report Node {NODE_NAME} Ready"))?;
    Ok(())
}

/// Watches pool pods forever and runs a worker per pod.
pub(crate) async fn run(node: Arc<Node>) {
    let api: Api<Pod> = Api::all(node.client.clone());
    let events =
        watcher::watcher(api, watcher::Config::default().labels(POOL_LABEL)).default_backoff();
    let mut events = std::pin::pin!(events);
    let mut workers: HashMap<String, watch::Sender<Option<Pod>>> = HashMap::new();
    let mut relisted: Option<HashSet<String>> = None;
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Apply(pod) | Event::InitApply(pod)) => {
                let Some(uid) = pod.metadata.uid.clone() else {
                    continue;
                };
                if let Some(seen) = &mut relisted {
                    seen.insert(uid.clone());
                }
                match workers.get(&uid) {
                    Some(tx) => {
                        tx.send_replace(Some(pod));
                    }
                    None => {
                        let (tx, rx) = watch::channel(Some(pod));
                        workers.insert(uid, tx);
                        tokio::spawn(run_pod(node.clone(), rx));
                    }
                }
            }
            Ok(Event::Delete(pod)) => {
                if let Some(tx) = pod.metadata.uid.and_then(|uid| workers.remove(&uid)) {
                    tx.send_replace(None);
                }
            }
            Ok(Event::Init) => relisted = Some(HashSet::new()),
            Ok(Event::InitDone) => {
                // Pods deleted while the watch was down.
                if let Some(seen) = relisted.take() {
                    workers.retain(|uid, tx| {
                        let keep = seen.contains(uid);
                        if !keep {
                            tx.send_replace(None);
                        }
                        keep
                    });
                }
            }
            Err(e) => proc::note(&node.node_log(), &format!("{} pod watch: {e}", now())),
        }
    }
}

/// Pod IPs 127.B.0.10 upwards, never reused within the process. B (1 to
/// 254) comes from the process id: test processes that run at the same
/// time (a developer's e2e and faults runs) would otherwise hand out the
/// same addresses, and a runtime could not bind its port.
fn next_ip() -> Ipv4Addr {
    static NEXT: AtomicU32 = AtomicU32::new(10);
    let block = 1 + std::process::id() % 254;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed) & 0xffff;
        let ip = Ipv4Addr::from(0x7f00_0000 | (block << 16) | n);
        if !matches!(ip.octets()[3], 0 | 255) {
            return ip;
        }
    }
}

/// RFC 3339, seconds, UTC: how Kubernetes writes times.
pub(crate) fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Why a pod's containers must stop.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// `deletionTimestamp` is set: stop within the grace period, then
    /// finalize the deletion.
    Deleted(Duration),
    /// The object is gone: stop now.
    Vanished,
}

fn stop_of(pod: &Option<Pod>) -> Option<Stop> {
    match pod {
        None => Some(Stop::Vanished),
        Some(p) => p.metadata.deletion_timestamp.as_ref().map(|_| {
            let grace = p.metadata.deletion_grace_period_seconds.unwrap_or(30);
            Stop::Deleted(Duration::from_secs(u64::try_from(grace).unwrap_or(0)))
        }),
    }
}

/// Resolves when the pod is being deleted or is gone.
async fn stopped(rx: &mut watch::Receiver<Option<Pod>>) -> Stop {
    loop {
        if let Some(stop) = stop_of(&rx.borrow_and_update()) {
            return stop;
        }
        if rx.changed().await.is_err() {
            return Stop::Vanished;
        }
    }
}

async fn run_pod(node: Arc<Node>, mut rx: watch::Receiver<Option<Pod>>) {
    let Some(pod) = rx.borrow_and_update().clone() else {
        return;
    };
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    if node_name.as_deref().is_some_and(|n| n != NODE_NAME) {
        return; // Not ours.
    }
    let worker = PodWorker {
        api: Api::namespaced(node.client.clone(), &ns),
        log: node.log_dir(&ns, &name).join("_node.log"),
        dir: node.pods_dir.join(format!("{ns}_{name}_{uid}")),
        ip: Ipv4Addr::UNSPECIFIED,
        status: StatusModel::new(&pod),
        last_written: None,
        node,
        ns,
        name,
        uid,
    };
    worker.run(pod, node_name.is_none(), rx).await;
}

struct PodWorker {
    node: Arc<Node>,
    api: Api<Pod>,
    ns: String,
    name: String,
    uid: String,
    /// Notes of the node about this pod.
    log: PathBuf,
    /// Volumes and working directory.
    dir: PathBuf,
    ip: Ipv4Addr,
    status: StatusModel,
    last_written: Option<Value>,
}

/// Which container of the pod.
#[derive(Debug, Clone, Copy)]
struct Slot {
    init: bool,
    index: usize,
}

impl PodWorker {
    fn note(&self, msg: &str) {
        proc::note(&self.log, &format!("{} {msg}", now()));
    }

    async fn run(mut self, pod: Pod, unbound: bool, mut rx: watch::Receiver<Option<Pod>>) {
        if stop_of(&Some(pod.clone())).is_some() {
            // Deleted before it ever ran here.
            self.finish(Stop::Deleted(Duration::ZERO)).await;
            return;
        }
        if unbound && let Err(e) = self.bind().await {
            self.note(&format!("binding to {NODE_NAME} failed: {e}"));
            return;
        }
        self.ip = next_ip();
        self.status.pod_ip = self.ip;
        self.node.pods.lock().insert(
            (self.ns.clone(), self.name.clone()),
            PodInfo {
                uid: self.uid.clone(),
                ip: self.ip,
                pid: None,
            },
        );
        self.note(&format!(
            "pod {}/{} (uid {}) runs with IP {}",
            self.ns, self.name, self.uid, self.ip
        ));
        self.write_status().await;

        let stop = self.run_containers(&pod, &mut rx).await;
        self.finish(stop).await;
    }

    async fn bind(&self) -> kube::Result<()> {
        let binding = json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": self.name, "namespace": self.ns, "uid": self.uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": NODE_NAME},
        });
        self.api
            .create_subresource::<_, Value>("binding", &self.name, &PostParams::default(), &binding)
            .await
            .map(drop)
    }

    /// Prepares volumes, runs init containers then containers; returns when
    /// the pod is being deleted (after its containers stopped) or gone.
    async fn run_containers(&mut self, pod: &Pod, rx: &mut watch::Receiver<Option<Pod>>) -> Stop {
        let volumes = loop {
            match self.prepare_volumes(pod).await {
                Ok(v) => break v,
                Err(e) => {
                    self.note(&format!("MountVolume failed: {e}"));
                    self.status.set_waiting_all("ContainerCreating", &e);
                    self.write_status().await;
                    tokio::select! {
                        s = stopped(rx) => return s,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        let spec = pod.spec.clone().unwrap_or_default();
        let (events_tx, mut events) = mpsc::unbounded_channel::<(Slot, CEvent)>();
        let (stop_tx, stop_rx) = watch::channel::<Option<Duration>>(None);
        let policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into());
        let mut running = 0usize;
        let mut failed = false;

        let restart = |init: bool| match (init, policy.as_str()) {
            // Init containers are retried on failure unless the policy is Never.
            (_, "Never") => Restart::Never,
            (true, _) | (false, "OnFailure") => Restart::OnFailure,
            (false, _) => Restart::Always,
        };
        let supervisor = |slot: Slot, c: &Container| Supervisor {
            node: self.node.clone(),
            pod: pod.clone(),
            ns: self.ns.clone(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            ip: self.ip,
            container: c.clone(),
            slot,
            volumes: volumes.clone(),
            cwd: self.dir.join("cwd"),
            log: self
                .node
                .log_dir(&self.ns, &self.name)
                .join(format!("{}.log", c.name)),
            node_log: self.log.clone(),
            events: events_tx.clone(),
            restart: restart(slot.init),
        };
        // Built up front: the closure borrows `self`, which the loops below
        // mutate.
        let mut init_supervisors: Vec<Supervisor> = spec
            .init_containers
            .iter()
            .flatten()
            .enumerate()
            .map(|(index, c)| supervisor(Slot { init: true, index }, c))
            .collect();
        init_supervisors.reverse();
        let main_supervisors: Vec<Supervisor> = spec
            .containers
            .iter()
            .enumerate()
            .map(|(index, c)| supervisor(Slot { init: false, index }, c))
            .collect();

        let stop = 'pod: {
            while let Some(sup) = init_supervisors.pop() {
                tokio::spawn(sup.run(stop_rx.clone()));
                running += 1;
                loop {
                    tokio::select! {
                        s = stopped(rx) => break 'pod s,
                        Some((slot, ev)) = events.recv() => {
                            let done = match ev { CEvent::Done { success } => Some(success), _ => None };
                            self.status.apply(slot, ev);
                            self.write_status().await;
                            if let Some(success) = done {
                                running -= 1;
                                if !success {
                                    failed = true;
                                }
                                break;
                            }
                        }
                    }
                }
                if failed {
                    self.status.phase = "Failed";
                    self.write_status().await;
                    break 'pod stopped(rx).await;
                }
            }
            self.status.initialized = true;
            for sup in main_supervisors {
                tokio::spawn(sup.run(stop_rx.clone()));
                running += 1;
            }
            self.write_status().await;
            while running > 0 {
                tokio::select! {
                    s = stopped(rx) => break 'pod s,
                    Some((slot, ev)) = events.recv() => {
                        if let CEvent::Done { success } = ev {
                            running -= 1;
                            failed |= !success;
                        }
                        self.status.apply(slot, ev);
                        self.write_status().await;
                    }
                }
            }
            self.status.phase = if failed { "Failed" } else { "Succeeded" };
            self.write_status().await;
            stopped(rx).await
        };

        // Stop what still runs and wait for it: the supervisors apply the
        // grace period and SIGKILL.
        let grace = match stop {
            Stop::Deleted(g) => g,
            Stop::Vanished => Duration::ZERO,
        };
        self.note(&format!("stopping containers (grace period {grace:?})"));
        stop_tx.send_replace(Some(grace));
        drop(events_tx);
        while running > 0 {
            let Some((slot, ev)) = events.recv().await else {
                break;
            };
            if matches!(ev, CEvent::Done { .. }) {
                running -= 1;
            }
            self.status.apply(slot, ev);
        }
        stop
    }

    /// Removes the pod's host directories and, for a deleted pod, finalizes
    /// the deletion as the kubelet does.
    async fn finish(mut self, stop: Stop) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            self.note(&format!("remove {}: {e}", self.dir.display()));
        }
        self.node.pods.remove(&self.ns, &self.name, &self.uid);
        if let Stop::Deleted(_) = stop {
            if self.ip != Ipv4Addr::UNSPECIFIED {
                self.write_status().await;
            }
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(self.uid.clone()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match self.api.delete(&self.name, &dp).await {
                Ok(_) => self.note("deleted"),
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(e) => self.note(&format!("delete with grace period 0 failed: {e}")),
            }
        } else {
            self.note("pod object is gone; containers stopped");
        }
    }

    async fn write_status(&mut self) {
        let status = self.status.render();
        if self.last_written.as_ref() == Some(&status) {
            return;
        }
        let patch = json!({"metadata": {"uid": self.uid}, "status": status});
        match self
            .api
            .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => self.last_written = Some(status),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => self.note(&format!("status update failed: {e}")),
        }
    }

    /// Creates the host directory of every volume; the error is a FailedMount
    /// message.
    async fn prepare_volumes(&self, pod: &Pod) -> Result<HashMap<String, PathBuf>, String> {
        let mut out = HashMap::new();
        let volumes_dir = self.dir.join("volumes");
        let _ = std::fs::remove_dir_all(&volumes_dir);
        let cwd = self.dir.join("cwd");
        std::fs::create_dir_all(&cwd).map_err(|e| format!("create {}: {e}", cwd.display()))?;
        for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            let dir = volumes_dir.join(&v.name);
            let host = self.prepare_volume(v, &dir).await?;
            out.insert(v.name.clone(), host);
        }
        Ok(out)
    }

    async fn prepare_volume(&self, v: &Volume, dir: &Path) -> Result<PathBuf, String> {
        let mkdir = |d: &Path| {
            std::fs::create_dir_all(d).map_err(|e| format!("create {}: {e}", d.display()))
        };
        if v.empty_dir.is_some() {
            mkdir(dir)?;
        } else if let Some(s) = &v.secret {
            mkdir(dir)?;
            let name = s.secret_name.clone().unwrap_or_default();
            match get_secret(&self.node.client, &self.ns, &name).await? {
                Some(data) => {
                    write_keys(dir, &data, s.items.as_deref(), s.default_mode, s.optional)?
                }
                None if s.optional == Some(true) => {}
                None => return Err(format!("secret {name:?} not found")),
            }
        } else if let Some(m) = &v.config_map {
            mkdir(dir)?;
            let name = m.name.clone();
            match get_config_map(&self.node.client, &self.ns, &name).await? {
                Some(data) => {
                    write_keys(dir, &data, m.items.as_deref(), m.default_mode, m.optional)?
                }
                None if m.optional == Some(true) => {}
                None => return Err(format!("configmap {name:?} not found")),
            }
        } else if let Some(h) = &v.host_path {
            // Images are the host root, so a hostPath is the path itself.
            let p = PathBuf::from(&h.path);
            if h.type_.as_deref() == Some("DirectoryOrCreate") {
                mkdir(&p)?;
            }
            return Ok(p);
        } else {
            return Err(format!(
                "volume {:?}: only emptyDir, secret, configMap and hostPath volumes are supported by the krt test node",
                v.name
            ));
        }
        Ok(dir.to_path_buf())
    }
}

/// Writes a Secret's or ConfigMap's keys as files, as the kubelet's volume
/// plugins do (without the atomic `..data` symlink dance).
fn write_keys(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    optional: Option<bool>,
) -> Result<(), String> {
    let mode = |m: Option<i32>| u32::try_from(m.or(default_mode).unwrap_or(0o644)).unwrap_or(0o644);
    let files: Vec<(&str, &Vec<u8>, u32)> = match items {
        None | Some([]) => data
            .iter()
            .map(|(k, v)| (k.as_str(), v, mode(None)))
            .collect(),
        Some(items) => {
            let mut files = Vec::new();
            for it in items {
                match data.get(&it.key) {
                    Some(v) => files.push((it.path.as_str(), v, mode(it.mode))),
                    None if optional == Some(true) => {}
                    None => return Err(format!("configured key {:?} not found", it.key)),
                }
            }
            files
        }
    };
    for (rel, bytes, mode) in files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("create {}: {e}", parent.display()))?;
        }
        std::fs::write(&path, bytes).map_err(|e| format!("write {}: {e}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("chmod {}: {e}", path.display()))?;
    }
    Ok(())
}

async fn get_secret(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let s = api
        .get_opt(name)
        .await
        .map_err(|e| format!("get secret {ns}/{name}: {e}"))?;
    Ok(s.map(|s| {
        s.data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect()
    }))
}

async fn get_config_map(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let m = api
        .get_opt(name)
        .await
        .map_err(|e| format!("get configmap {ns}/{name}: {e}"))?;
    Ok(m.map(|m| {
        let mut out: BTreeMap<String, Vec<u8>> = m
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        out.extend(
            m.binary_data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0)),
        );
        out
    }))
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Restart {
    Always,
    OnFailure,
    Never,
}

/// What a supervisor tells the pod worker.
#[derive(Debug)]
enum CEvent {
    Waiting {
        reason: String,
        message: String,
    },
    Running {
        pid: u32,
        ready: bool,
        started: bool,
    },
    Ready(bool),
    Started(bool),
    Terminated {
        exit_code: i32,
        signal: Option<i32>,
        reason: &'static str,
        started_at: String,
    },
    /// No more restarts; `success` is the last exit.
    Done {
        success: bool,
    },
}

/// Runs one container: resolves its config, spawns it, probes it, restarts
/// it per the restart policy, and stops it when told.
struct Supervisor {
    node: Arc<Node>,
    pod: Pod,
    ns: String,
    name: String,
    uid: String,
    ip: Ipv4Addr,
    container: Container,
    slot: Slot,
    volumes: HashMap<String, PathBuf>,
    cwd: PathBuf,
    log: PathBuf,
    node_log: PathBuf,
    events: mpsc::UnboundedSender<(Slot, CEvent)>,
    restart: Restart,
}

/// How one run of a container ended.
enum Exit {
    Exited(std::process::ExitStatus),
    Stopped(std::process::ExitStatus),
    WaitFailed(std::io::Error),
}

impl Supervisor {
    fn send(&self, ev: CEvent) {
        let _ = self.events.send((self.slot, ev));
    }

    fn note(&self, msg: &str) {
        proc::note(
            &self.node_log,
            &format!("{} container {:?}: {msg}", now(), self.container.name),
        );
    }

    /// Whether this container's pid is the one `Cluster::runtime_pid` reports.
    fn is_main(&self) -> bool {
        !self.slot.init && self.slot.index == 0
    }

    async fn run(self, mut stop: watch::Receiver<Option<Duration>>) {
        let mut backoff = Duration::from_secs(1);
        let mut success = false;
        loop {
            if stop.borrow_and_update().is_some() {
                break;
            }
            let (resolved, fs) = match self.resolve().await {
                Ok(r) => r,
                Err(message) => {
                    self.note(&format!("CreateContainerConfigError: {message}"));
                    self.send(CEvent::Waiting {
                        reason: "CreateContainerConfigError".into(),
                        message,
                    });
                    if wait_or_stop(&mut stop, Duration::from_secs(1)).await {
                        break;
                    }
                    continue;
                }
            };
            let exit = match self.spawn(&resolved) {
                Ok(child) => self.watch(child, &resolved, fs, &mut stop).await,
                Err(message) => {
                    self.note(&format!("RunContainerError: {message}"));
                    self.send(CEvent::Waiting {
                        reason: "RunContainerError".into(),
                        message,
                    });
                    if wait_or_stop(&mut stop, backoff).await {
                        break;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            let status = match exit {
                Exit::Stopped(_) => break,
                Exit::Exited(s) => s,
                Exit::WaitFailed(e) => {
                    self.note(&format!("wait failed: {e}"));
                    break;
                }
            };
            success = status.success();
            let again = match self.restart {
                Restart::Always => true,
                Restart::OnFailure => !success,
                Restart::Never => false,
            };
            if !again {
                break;
            }
            let message = format!(
                "back-off {}s restarting failed container={} pod={}_{}({})",
                backoff.as_secs(),
                self.container.name,
                self.name,
                self.ns,
                self.uid
            );
            self.send(CEvent::Waiting {
                reason: "CrashLoopBackOff".into(),
                message,
            });
            if wait_or_stop(&mut stop, backoff).await {
                break;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        self.send(CEvent::Done { success });
    }

    /// The container's command, args and env, and its filesystem view.
    async fn resolve(&self) -> Result<(Resolved, Fs), String> {
        let c = &self.container;
        let mut mounts = Vec::new();
        for m in c.volume_mounts.iter().flatten() {
            let Some(host) = self.volumes.get(&m.name) else {
                return Err(format!("volume mount {:?}: no volume of that name", m.name));
            };
            if m.sub_path_expr.as_deref().is_some_and(|s| !s.is_empty()) {
                return Err(format!(
                    "volume mount {:?}: subPathExpr is not supported by the krt test node",
                    m.name
                ));
            }
            let host_path = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                Some(sub) => {
                    let p = host.join(sub);
                    if !p.exists() {
                        std::fs::create_dir_all(&p)
                            .map_err(|e| format!("create {}: {e}", p.display()))?;
                    }
                    p
                }
                None => host.clone(),
            };
            mounts.push(Mount {
                container_path: m.mount_path.clone(),
                host_path,
            });
        }
        let krt_image = c.image.as_deref() == Some(self.node.krt_image.as_str());
        let fs = Fs::new(mounts, krt_image.then(|| self.node.krt_bin.clone()));

        let (secrets, config_maps) = container::referenced_sources(c);
        let mut sources = Sources::default();
        for s in secrets {
            let data = get_secret(&self.node.client, &self.ns, &s).await?;
            sources.secrets.insert(s, data);
        }
        for m in config_maps {
            let data = get_config_map(&self.node.client, &self.ns, &m).await?;
            sources.config_maps.insert(m, data);
        }
        let facts = PodFacts {
            pod: &self.pod,
            pod_ip: self.ip,
            host_ip: HOST_IP,
            node_name: NODE_NAME,
        };
        let resolved = container::resolve(facts, c, &fs, &sources)?;
        Ok((resolved, fs))
    }

    fn env(&self, resolved: &Resolved) -> Vec<(String, String)> {
        let mut env = self.node.host_env.clone();
        for (k, v) in &resolved.env {
            match env.iter_mut().find(|(name, _)| name == k) {
                Some(slot) => slot.1 = v.clone(),
                None => env.push((k.clone(), v.clone())),
            }
        }
        env
    }

    fn spawn(&self, r: &Resolved) -> Result<tokio::process::Child, String> {
        if !r.program_in_image {
            return Err(format!(
                "exec: {:?}: no such file in image {} (it holds only /krt)",
                r.program,
                self.container.image.as_deref().unwrap_or("")
            ));
        }
        let mut cmd = proc::command(&r.program);
        cmd.args(&r.args)
            .env_clear()
            .envs(self.env(r))
            .current_dir(r.working_dir.as_deref().unwrap_or(&self.cwd));
        proc::log_to(&mut cmd, &self.log).map_err(|e| format!("{e:#}"))?;
        proc::note(
            &self.log,
            &format!(
                "==> {} container {:?} starts: {} {:?}",
                now(),
                self.container.name,
                r.program,
                r.args
            ),
        );
        cmd.spawn()
            .map_err(|e| format!("exec {:?}: {e}", r.program))
    }

    /// Follows one run of the container: probes, exit, stop.
    async fn watch(
        &self,
        mut child: tokio::process::Child,
        r: &Resolved,
        fs: Fs,
        stop: &mut watch::Receiver<Option<Duration>>,
    ) -> Exit {
        let pid = child.id().unwrap_or(0);
        proc::note(&self.node.sessions_file, &pid.to_string());
        let started_at = now();
        let c = &self.container;
        let ready = c.readiness_probe.is_none() && c.startup_probe.is_none();
        let started = c.startup_probe.is_none();
        if self.is_main() {
            self.node
                .pods
                .update(&self.ns, &self.name, &self.uid, |i| i.pid = Some(pid));
        }
        self.send(CEvent::Running {
            pid,
            ready,
            started,
        });

        let target = |what| Target {
            ip: self.ip,
            ports: c.ports.clone().unwrap_or_default(),
            fs: fs.clone(),
            env: self.env(r),
            cwd: r.working_dir.clone().unwrap_or_else(|| self.cwd.clone()),
            log: self.node_log.clone(),
            what,
        };
        let probes = async {
            if let Some(p) = &c.startup_probe {
                let mut prober = Prober::new(p.clone(), target("Startup"), false);
                prober.next_change().await;
                self.send(CEvent::Started(true));
                if c.readiness_probe.is_none() {
                    self.send(CEvent::Ready(true));
                }
            }
            let readiness = async {
                if let Some(p) = &c.readiness_probe {
                    let mut prober = Prober::new(p.clone(), target("Readiness"), false);
                    loop {
                        let ready = prober.next_change().await;
                        self.send(CEvent::Ready(ready));
                    }
                }
            };
            let liveness = async {
                if let Some(p) = &c.liveness_probe {
                    let mut prober = Prober::new(p.clone(), target("Liveness"), true);
                    prober.next_change().await;
                    self.note("Liveness probe failed; killing the container, it will be restarted");
                    proc::kill_session(pid);
                }
            };
            futures::join!(readiness, liveness);
            std::future::pending::<()>().await;
        };
        let kill_after = async {
            loop {
                if let Some(grace) = *stop.borrow_and_update() {
                    return grace;
                }
                if stop.changed().await.is_err() {
                    return Duration::ZERO;
                }
            }
        };
        enum Outcome {
            Exited(std::io::Result<std::process::ExitStatus>),
            Stop(Duration),
        }
        let outcome = tokio::select! {
            s = child.wait() => Outcome::Exited(s),
            g = kill_after => Outcome::Stop(g),
            () = probes => unreachable!("probes never finish"),
        };
        let exit = match outcome {
            Outcome::Exited(Ok(s)) => Exit::Exited(s),
            Outcome::Exited(Err(e)) => Exit::WaitFailed(e),
            Outcome::Stop(grace) => {
                proc::signal_group(pid, Signal::SIGTERM);
                let status = match tokio::time::timeout(grace, child.wait()).await {
                    Ok(s) => s,
                    Err(_) => {
                        self.note(&format!(
                            "did not exit within the grace period {grace:?}; SIGKILL"
                        ));
                        proc::kill_session(pid);
                        child.wait().await
                    }
                };
                match status {
                    Ok(s) => Exit::Stopped(s),
                    Err(e) => Exit::WaitFailed(e),
                }
            }
        };
        // Whatever the container left behind: its init is gone.
        proc::kill_session(pid);
        if self.is_main() {
            self.node
                .pods
                .update(&self.ns, &self.name, &self.uid, |i| i.pid = None);
        }
        if let Exit::Exited(s) | Exit::Stopped(s) = &exit {
            use std::os::unix::process::ExitStatusExt as _;
            let signal = s.signal();
            let exit_code = s.code().unwrap_or_else(|| 128 + signal.unwrap_or(0));
            self.note(&format!("exited: {s}"));
            proc::note(
                &self.log,
                &format!("==> {} container {:?} exited: {s}", now(), c.name),
            );
            self.send(CEvent::Terminated {
                exit_code,
                signal,
                reason: if exit_code == 0 { "Completed" } else { "Error" },
                started_at,
            });
        }
        exit
    }
}

/// Waits `d`; true if told to stop meanwhile.
async fn wait_or_stop(stop: &mut watch::Receiver<Option<Duration>>, d: Duration) -> bool {
    let sleep = tokio::time::sleep(d);
    tokio::pin!(sleep);
    loop {
        if stop.borrow_and_update().is_some() {
            return true;
        }
        tokio::select! {
            () = &mut sleep => return false,
            r = stop.changed() => if r.is_err() { return true },
        }
    }
}

/// One container's status as the kubelet reports it.
#[derive(Debug, Clone)]
struct ContainerStatus {
    name: String,
    image: String,
    ready: bool,
    started: bool,
    restart_count: i32,
    state: Value,
    last_state: Value,
    container_id: Option<String>,
    /// The last `terminated` state, once the container has run.
    terminated: Option<Value>,
}

impl ContainerStatus {
    fn new(c: &Container, reason: &str) -> Self {
        Self {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            ready: false,
            started: false,
            restart_count: 0,
            state: json!({"waiting": {"reason": reason}}),
            last_state: json!({}),
            container_id: None,
            terminated: None,
        }
    }

    fn render(&self) -> Value {
        let mut v = json!({
            "name": self.name,
            "image": self.image,
            "imageID": format!("krt-test-node://{}", self.image),
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count,
            "state": self.state,
            "lastState": self.last_state,
        });
        if let Some(id) = &self.container_id {
            v["containerID"] = json!(id);
        }
        v
    }
}

/// The pod status the worker writes, whole, on every change.
#[derive(Debug)]
struct StatusModel {
    phase: &'static str,
    pod_ip: Ipv4Addr,
    start_time: String,
    initialized: bool,
    init: Vec<ContainerStatus>,
    main: Vec<ContainerStatus>,
    /// Condition type -> (status, lastTransitionTime).
    conditions: BTreeMap<&'static str, (bool, String)>,
}

impl StatusModel {
    fn new(pod: &Pod) -> Self {
        let spec = pod.spec.clone().unwrap_or_default();
        let init_containers = spec.init_containers.unwrap_or_default();
        let first = if init_containers.is_empty() {
            "ContainerCreating"
        } else {
            "PodInitializing"
        };
        Self {
            phase: "Pending",
            pod_ip: Ipv4Addr::UNSPECIFIED,
            start_time: now(),
            initialized: init_containers.is_empty(),
            init: init_containers
                .iter()
                .map(|c| ContainerStatus::new(c, "PodInitializing"))
                .collect(),
            main: spec
                .containers
                .iter()
                .map(|c| ContainerStatus::new(c, first))
                .collect(),
            conditions: BTreeMap::new(),
        }
    }

    fn set_waiting_all(&mut self, reason: &str, message: &str) {
        for c in self.init.iter_mut().chain(self.main.iter_mut()) {
            c.state = json!({"waiting": {"reason": reason, "message": message}});
        }
    }

    fn apply(&mut self, slot: Slot, ev: CEvent) {
        let list = if slot.init {
            &mut self.init
        } else {
            &mut self.main
        };
        let Some(c) = list.get_mut(slot.index) else {
            return;
        };
        match ev {
            CEvent::Waiting { reason, message } => {
                c.state = json!({"waiting": {"reason": reason, "message": message}});
                c.ready = false;
                if let Some(t) = &c.terminated {
                    c.last_state = t.clone();
                }
            }
            CEvent::Running {
                pid,
                ready,
                started,
            } => {
                if let Some(t) = &c.terminated {
                    c.restart_count += 1;
                    c.last_state = t.clone();
                }
                c.container_id = Some(format!("krt-test-node://{pid}"));
                c.state = json!({"running": {"startedAt": now()}});
                c.ready = ready;
                c.started = started;
                if !slot.init {
                    self.phase = "Running";
                }
            }
            CEvent::Ready(r) => c.ready = r,
            CEvent::Started(s) => c.started = s,
            CEvent::Terminated {
                exit_code,
                signal,
                reason,
                started_at,
            } => {
                let mut t = json!({
                    "exitCode": exit_code, "reason": reason,
                    "startedAt": started_at, "finishedAt": now(),
                });
                if let Some(s) = signal {
                    t["signal"] = json!(s);
                }
                if let Some(id) = &c.container_id {
                    t["containerID"] = json!(id);
                }
                let t = json!({"terminated": t});
                c.state = t.clone();
                c.terminated = Some(t);
                c.ready = false;
                c.started = false;
            }
            CEvent::Done { .. } => {}
        }
    }

    fn render(&mut self) -> Value {
        let containers_ready = self.initialized && self.main.iter().all(|c| c.ready);
        let now = now();
        for (ty, status) in [
            ("PodScheduled", true),
            ("Initialized", self.initialized),
            ("ContainersReady", containers_ready),
            ("Ready", containers_ready),
        ] {
            let entry = self
                .conditions
                .entry(ty)
                .or_insert_with(|| (status, now.clone()));
            if entry.0 != status {
                *entry = (status, now.clone());
            }
        }
        let cond = |ty: &str| {
            let (status, time) = &self.conditions[ty];
            let mut v = json!({
                "type": ty,
                "status": if *status { "True" } else { "False" },
                "lastProbeTime": null,
                "lastTransitionTime": time,
            });
            if !*status && ty != "PodScheduled" {
                let (reason, message) = match ty {
                    "Initialized" => (
                        "ContainersNotInitialized",
                        "containers with incomplete status: init containers",
                    ),
                    _ => ("ContainersNotReady", "containers with unready status"),
                };
                v["reason"] = json!(reason);
                v["message"] = json!(message);
            }
            v
        };
        let conditions: Vec<Value> = ["PodScheduled", "Initialized", "ContainersReady", "Ready"]
            .into_iter()
            .map(cond)
            .collect();
        let mut status = json!({
            "phase": self.phase,
            "hostIP": HOST_IP.to_string(),
            "startTime": self.start_time,
            "qosClass": "BestEffort",
            "conditions": conditions,
            "containerStatuses": self.main.iter().map(ContainerStatus::render).collect::<Vec<_>>(),
        });
        if !self.init.is_empty() {
            status["initContainerStatuses"] =
                self.init.iter().map(ContainerStatus::render).collect();
        }
        if self.pod_ip != Ipv4Addr::UNSPECIFIED {
            status["podIP"] = json!(self.pod_ip.to_string());
            status["podIPs"] = json!([{"ip": self.pod_ip.to_string()}]);
        }
        status
    }
}
