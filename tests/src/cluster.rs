//! A real Kubernetes 1.20 cluster on loopback for end-to-end tests and
//! benchmarks: etcd, kube-apiserver and kube-controller-manager as child
//! processes, the kruntimes CRDs, an s3s-fs store, a node that runs pool pods
//! as host processes (`node.rs`), and optionally the `krt controller`.
//!
//! ```text
//!  test process
//!  ├─ thread "krt-cluster" (own tokio runtime, lives as long as the process)
//!  │    ├─ etcd ─ kube-apiserver ─ kube-controller-manager   (children)
//!  │    ├─ node krt-node-0: watch pods ─► bind, run, probe, report status
//!  │    │    └─ container processes, one process group each (children)
//!  │    └─ krt controller (child, if `krt controller` exists; fault tests
//!  │       start their own instead, one namespace each)
//!  ├─ thread "s3s-fs" (S3 on loopback)
//!  └─ #[tokio::test]s, each with its own runtime, own namespace
//! ```
//!
//! One cluster per test process ([`Cluster::shared`]), started on first use;
//! [`Cluster::shared_bare`] is the same cluster without the shared
//! controller, for tests that start, kill and restart their own
//! ([`Cluster::spawn_controller`]).
//! Every child is spawned from the cluster thread with `PR_SET_PDEATHSIG`
//! (SIGKILL), so nothing outlives the test process. State lives in
//! `$TMPDIR/krt-cluster-<pid>`; directories of dead test processes are
//! removed when the next cluster starts.

mod container;
mod node;
mod probe;
mod proc;

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::PostParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client};
use tokio::runtime::Handle;

use crate::s3::S3Server;
use node::Node;

pub use node::{NODE_NAME, POOL_LABEL};

/// The image whose root holds exactly one file, `/krt`: the built `krt`
/// binary. Every other image's root is the host's `/`.
pub const KRT_IMAGE: &str = "ghcr.io/kruntimes/krt:latest";

/// How long any one wait of the harness may take.
const WAIT: Duration = Duration::from_secs(60);

/// A running cluster. See the module documentation.
pub struct Cluster {
    dir: PathBuf,
    kubeconfig: PathBuf,
    config: kube::Config,
    server: String,
    rt: Handle,
    node: Arc<Node>,
    components: Vec<Component>,
    s3: S3Server,
    store_url: String,
    controller: Mutex<Option<Controller>>,
    /// Set by [`Cluster::shared_bare`]: no shared controller, ever.
    bare: AtomicBool,
    started_in: Duration,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("dir", &self.dir)
            .field("server", &self.server)
            .field("store_url", &self.store_url)
            .finish_non_exhaustive()
    }
}

/// A control-plane process.
#[derive(Debug, Clone)]
struct Component {
    name: &'static str,
    log: PathBuf,
    /// Process id (it leads its own process group).
    pid: Option<u32>,
    /// How it exited, once it has.
    exit: Arc<Mutex<Option<String>>>,
}

impl Component {
    fn exited(&self) -> Option<String> {
        self.exit.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn tail(&self) -> String {
        format!(
            "last lines of {} ({}):\n{}",
            self.name,
            self.log.display(),
            proc::tail(&self.log, 40)
        )
    }
}

#[derive(Debug, Clone)]
struct Controller {
    addr: SocketAddr,
    component: Component,
}

/// A `krt controller` started by [`Cluster::spawn_controller`]. It dies with
/// the test process; dropping this handle does not stop it.
#[derive(Debug, Clone)]
pub struct ControllerProcess {
    identity: String,
    addr: SocketAddr,
    component: Component,
}

impl ControllerProcess {
    /// Its `POD_NAME`: the holder identity it writes into the Lease.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Where it serves `/metrics` and `/health`.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.component.pid.expect("a spawned controller has a pid")
    }

    /// SIGKILL, as if the node died under it: no lease release, no cleanup.
    pub fn kill(&self) {
        proc::signal_group(self.pid(), nix::sys::signal::Signal::SIGKILL);
    }

    /// SIGTERM, as Kubernetes does when it stops a pod.
    pub fn terminate(&self) {
        proc::signal_group(self.pid(), nix::sys::signal::Signal::SIGTERM);
    }

    /// How it exited (`exit status: 0`, `signal: 9 (SIGKILL)`), once it has.
    pub fn exited(&self) -> Option<String> {
        self.component.exited()
    }

    /// Waits up to `timeout` for it to exit; how it exited, or `None` if it
    /// still runs.
    pub async fn wait(&self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.component.log).unwrap_or_default()
    }

    /// The body of its `/metrics`, or `None` if it does not answer.
    pub async fn metrics(&self) -> Option<String> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let fetch = async {
            let mut s = tokio::net::TcpStream::connect(self.addr).await.ok()?;
            let req = format!("GET /metrics HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr);
            s.write_all(req.as_bytes()).await.ok()?;
            let mut out = Vec::new();
            s.read_to_end(&mut out).await.ok()?;
            let text = String::from_utf8_lossy(&out).into_owned();
            let (head, body) = text.split_once("\r\n\r\n")?;
            (head.split_whitespace().nth(1) == Some("200")).then(|| body.to_owned())
        };
        tokio::time::timeout(Duration::from_secs(5), fetch)
            .await
            .ok()
            .flatten()
    }

    /// The value of the gauge or counter `name` (exact series, labels
    /// included) in its `/metrics`, if it answers and has it.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let body = self.metrics().await?;
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }
}

impl Cluster {
    /// The cluster of this test process, started on first use, with the
    /// `krt controller` running (watching all namespaces, leader election
    /// on) if the `krt` binary has that subcommand and
    /// `KRT_CLUSTER_NO_CONTROLLER` is unset.
    ///
    /// Panics if the cluster cannot start, with the failing component's log,
    /// and if this process asked for [`Cluster::shared_bare`] before.
    pub fn shared() -> &'static Cluster {
        let cluster = Self::process_cluster();
        assert!(
            !cluster.bare.load(Ordering::SeqCst),
            "Cluster::shared() after Cluster::shared_bare() in one test process: \
             an all-namespace controller would dispatch the bare cluster's Runs"
        );
        static CONTROLLER: OnceLock<Result<(), String>> = OnceLock::new();
        let started = CONTROLLER.get_or_init(|| {
            if std::env::var_os("KRT_CLUSTER_NO_CONTROLLER").is_none() && controller_available() {
                cluster.start_controller().map_err(|e| format!("{e:#}"))?;
            }
            Ok(())
        });
        if let Err(e) = started {
            panic!("the krt controller of the test cluster did not start: {e}");
        }
        cluster
    }

    /// The cluster of this test process without the shared controller, for
    /// tests that start their own ([`Cluster::spawn_controller`], one
    /// namespace each) and kill them.
    ///
    /// Panics if the cluster cannot start, and if this process started the
    /// shared controller.
    pub fn shared_bare() -> &'static Cluster {
        let cluster = Self::process_cluster();
        cluster.bare.store(true, Ordering::SeqCst);
        assert!(
            cluster
                .controller
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_none(),
            "Cluster::shared_bare() after Cluster::shared() in one test process: \
             the shared controller watches every namespace"
        );
        cluster
    }

    fn process_cluster() -> &'static Cluster {
        static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
        match CLUSTER.get_or_init(|| Cluster::start().map_err(|e| format!("{e:#}"))) {
            Ok(c) => c,
            Err(e) => panic!("the test cluster did not start: {e}"),
        }
    }

    fn start() -> anyhow::Result<Cluster> {
        let t0 = Instant::now();
        let bin = bin_dir()?;
        let krt_bin = crate::krt_bin();
        remove_stale_dirs();
        let dir = std::env::temp_dir().join(format!("krt-cluster-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("logs"))
            .with_context(|| format!("create {}", dir.display()))?;

        let s3 = S3Server::start().context("start the S3 server")?;
        let store_url = format!("s3://{}/cluster", s3.bucket);
        let rt = cluster_thread()?;
        let booted = on(&rt, boot(dir.clone(), bin, krt_bin))?;
        let started_in = t0.elapsed();
        eprintln!(
            "krt-cluster: started in {:.1}s: {} ({})",
            started_in.as_secs_f64(),
            booted.server,
            dir.display()
        );
        Ok(Cluster {
            dir,
            kubeconfig: booted.kubeconfig,
            config: booted.config,
            server: booted.server,
            rt,
            node: booted.node,
            components: booted.components,
            s3,
            store_url,
            controller: Mutex::new(None),
            bare: AtomicBool::new(false),
            started_in,
        })
    }

    /// Starts `krt controller` (once; later calls return the same address):
    /// KUBECONFIG, the store and the krt image are set in its environment, its
    /// log is [`Cluster::controller_log`]. It watches every namespace and
    /// elects itself leader with the default Lease in `kruntimes-system`,
    /// which this creates if needed. Waits until its metrics address accepts
    /// connections.
    pub fn start_controller(&self) -> anyhow::Result<SocketAddr> {
        let mut slot = self.controller.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = &*slot {
            return Ok(c.addr);
        }
        anyhow::ensure!(
            !self.bare.load(Ordering::SeqCst),
            "this test process uses the bare cluster (Cluster::shared_bare)"
        );
        let config = self.config.clone();
        on(&self.rt, async move {
            let client = Client::try_from(config).context("build a kube client")?;
            ensure_namespace(&client, "kruntimes-system").await
        })?;
        let log = self.dir.join("logs").join("krt-controller.log");
        let (addr, component) = self.launch_controller("krt controller", log, &[], Vec::new())?;
        *slot = Some(Controller { addr, component });
        Ok(addr)
    }

    /// Starts one more `krt controller`, watching only `namespace` (its
    /// Lease `kruntimes-controller` lives there too, so tests in one process
    /// stay independent), with `extra_args` after the harness's own
    /// (`--namespace`, `--metrics-addr`). Each gets a distinct `POD_NAME`,
    /// which is its Lease identity ([`ControllerProcess::identity`]). Waits
    /// until its metrics address accepts connections (before it leads).
    ///
    /// Meant for the bare cluster ([`Cluster::shared_bare`]): with the
    /// shared controller running, Runs would be dispatched twice.
    pub fn spawn_controller(
        &self,
        namespace: &str,
        extra_args: &[&str],
    ) -> anyhow::Result<ControllerProcess> {
        self.spawn_controller_with_env(namespace, extra_args, &[])
    }

    /// [`Cluster::spawn_controller`] with `extra_env` set last in its
    /// environment (overriding the harness's, such as `AWS_ENDPOINT_URL` to
    /// put a [`crate::fault_proxy::FaultProxy`] before the store). The
    /// RuntimePool pods it creates get the same store settings.
    pub fn spawn_controller_with_env(
        &self,
        namespace: &str,
        extra_args: &[&str],
        extra_env: &[(&str, String)],
    ) -> anyhow::Result<ControllerProcess> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let identity = format!("krt-controller-{n}");
        let log = self
            .dir
            .join("logs")
            .join(format!("{identity}-{namespace}.log"));
        let mut args = vec!["--namespace".to_owned(), namespace.to_owned()];
        args.extend(extra_args.iter().map(|a| (*a).to_owned()));
        let mut env = vec![("POD_NAME".to_owned(), identity.clone())];
        env.extend(extra_env.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        let (addr, component) = self.launch_controller("krt controller", log, &args, env)?;
        Ok(ControllerProcess {
            identity,
            addr,
            component,
        })
    }

    /// Spawns `krt controller --metrics-addr <free port> <args>` on the
    /// cluster thread and waits until the address accepts connections.
    fn launch_controller(
        &self,
        name: &'static str,
        log: PathBuf,
        args: &[String],
        extra_env: Vec<(String, String)>,
    ) -> anyhow::Result<(SocketAddr, Component)> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        let mut env = host_env();
        env.extend([
            (
                "KUBECONFIG".to_owned(),
                self.kubeconfig.display().to_string(),
            ),
            ("KRT_STORE".to_owned(), self.store_url.clone()),
            ("KRT_KRT_IMAGE".to_owned(), KRT_IMAGE.to_owned()),
            ("KRT_LOG".to_owned(), "info".to_owned()),
            ("NO_COLOR".to_owned(), "1".to_owned()),
        ]);
        env.extend(self.store_env().into_iter().map(|(k, v)| (k.to_owned(), v)));
        env.extend(extra_env);
        let mut all = vec![
            "controller".to_owned(),
            "--metrics-addr".to_owned(),
            addr.to_string(),
        ];
        all.extend(args.iter().cloned());
        let krt = crate::krt_bin();
        let t0 = Instant::now();
        let component = on(&self.rt, async move {
            let c = spawn_component(name, &krt, &all, env, log)?;
            wait_for(
                &c,
                &format!("its metrics address {addr} to accept connections"),
                || async { tokio::net::TcpStream::connect(addr).await.is_ok() },
            )
            .await?;
            anyhow::Ok(c)
        })?;
        proc::note(
            &self.dir.join("logs").join("cluster.log"),
            &format!(
                "{name} (pid {:?}) serves {addr} after {:.2}s",
                component.pid,
                t0.elapsed().as_secs_f64()
            ),
        );
        Ok((addr, component))
    }

    /// A new client for the cluster, as the admin (group `system:masters`).
    /// Must be called within a tokio runtime; build one per test, since
    /// each test has its own runtime.
    pub fn client(&self) -> Client {
        Client::try_from(self.config.clone()).expect("a kube client from the cluster config")
    }

    /// The kubeconfig file (admin token), for kubectl,
    /// kube-rs (`KUBECONFIG`) and the krt controller.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// `https://127.0.0.1:<port>` of the API server.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Runs `kubectl --kubeconfig <kubeconfig> <args>`.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .env_remove("KUBECONFIG")
            .output()
            .expect("kubectl runs")
    }

    /// Creates a namespace named `<prefix>-<n>`, unique in this cluster, and
    /// waits until its `default` ServiceAccount has its token (before that
    /// the ServiceAccount admission plugin rejects pods).
    pub async fn namespace(&self, prefix: &str) -> String {
        static N: AtomicUsize = AtomicUsize::new(0);
        let mut base: String = prefix
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        base.truncate(50);
        let name = format!(
            "{}-{}",
            base.trim_matches('-'),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let client = self.client();
        let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))
            .expect("a Namespace");
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
        let sa = await_condition(
            Api::<ServiceAccount>::namespaced(client, &name),
            "default",
            |sa: Option<&ServiceAccount>| {
                sa.is_some_and(|sa| sa.secrets.as_ref().is_some_and(|s| !s.is_empty()))
            },
        );
        match tokio::time::timeout(WAIT, sa).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("watch the default ServiceAccount of {name}: {e}"),
            Err(_) => panic!(
                "namespace {name}: its default ServiceAccount got no token within {WAIT:?}; {}",
                self.component("kube-controller-manager").tail()
            ),
        }
        name
    }

    /// The IP the node gave the pod (on loopback: `127.B.x.y`), while the
    /// node runs it.
    pub fn pod_ip(&self, ns: &str, pod: &str) -> Option<Ipv4Addr> {
        self.node.pods.get(ns, pod).map(|p| p.ip)
    }

    /// The pid of the pod's (first) container process, while it runs.
    pub fn runtime_pid(&self, ns: &str, pod: &str) -> Option<u32> {
        self.node.pods.get(ns, pod).and_then(|p| p.pid)
    }

    /// SIGKILLs every process of the pod's (first) container (its session:
    /// the runtime and the steps it runs, whatever their process group), as
    /// if it crashed; the node restarts it per the pod's restart policy.
    /// Returns false if no container process was running.
    pub fn kill_container(&self, ns: &str, pod: &str) -> bool {
        match self.runtime_pid(ns, pod) {
            Some(pid) => {
                proc::kill_session(pid);
                true
            }
            None => false,
        }
    }

    /// Everything the node logged about the pod: its notes (binding, probe
    /// failures, exits, config errors) and every container's output. Kept
    /// after the pod is deleted.
    pub fn pod_log(&self, ns: &str, pod: &str) -> String {
        let dir = self.node.log_dir(ns, pod);
        let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
            Ok(entries) => entries.flatten().map(|e| e.path()).collect(),
            Err(e) => return format!("<no log for pod {ns}/{pod}: {}: {e}>", dir.display()),
        };
        files.sort();
        let mut out = String::new();
        for f in files {
            let text = std::fs::read(&f).unwrap_or_default();
            out.push_str(&format!(
                "----- {} -----\n{}\n",
                f.file_name().unwrap_or_default().to_string_lossy(),
                String::from_utf8_lossy(&text)
            ));
        }
        out
    }

    /// [`Cluster::pod_log`] of every pod the node ran in namespace `ns`.
    pub fn namespace_logs(&self, ns: &str) -> String {
        let prefix = format!("{ns}_");
        let mut pods: Vec<String> = std::fs::read_dir(&self.node.logs_dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()?
                            .strip_prefix(&prefix)
                            .map(str::to_owned)
                    })
                    .collect()
            })
            .unwrap_or_default();
        pods.sort();
        pods.iter()
            .map(|pod| format!("===== pod {ns}/{pod} =====\n{}", self.pod_log(ns, pod)))
            .collect()
    }

    /// The log of the `krt controller`, or a note that it is not running.
    pub fn controller_log(&self) -> String {
        match &*self.controller.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(c) => std::fs::read_to_string(&c.component.log).unwrap_or_default(),
            None => "<the krt controller is not running>".to_owned(),
        }
    }

    /// Where the `krt controller` serves metrics, if it runs.
    pub fn controller_metrics_addr(&self) -> Option<SocketAddr> {
        self.controller
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|c| c.addr)
    }

    /// The log of `etcd`, `kube-apiserver` or `kube-controller-manager`.
    pub fn component_log(&self, name: &str) -> String {
        std::fs::read_to_string(&self.component(name).log).unwrap_or_default()
    }

    fn component(&self, name: &str) -> &Component {
        self.components
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no cluster component {name:?}"))
    }

    /// The S3 server behind the store.
    pub fn s3(&self) -> &S3Server {
        &self.s3
    }

    /// The store URL runtimes and the controller use: `s3://<bucket>/cluster`.
    pub fn store_url(&self) -> &str {
        &self.store_url
    }

    /// The `AWS_*` variables that point the store at [`Cluster::s3`].
    pub fn store_env(&self) -> Vec<(&'static str, String)> {
        self.s3.env()
    }

    /// The cluster's state directory (logs under `logs/`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How long starting the cluster took (without the controller).
    pub fn started_in(&self) -> Duration {
        self.started_in
    }
}

/// Whether the `krt` binary has the `controller` subcommand.
fn controller_available() -> bool {
    Command::new(crate::krt_bin())
        .args(["controller", "--help"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `$KRT_CLUSTER_BIN`, or what `tests/cluster/build.sh` (cached) prints.
fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("KRT_CLUSTER_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let script = crate::repo_root().join("tests/cluster/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .with_context(|| format!("run {}", script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.lines().last() {
        Some(dir) if out.status.success() => Ok(PathBuf::from(dir.trim())),
        _ => bail!(
            "{} failed ({}):\n{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Removes the state directories of test processes that are gone, and kills
/// what their containers left running.
fn remove_stale_dirs() {
    if let Ok(entries) = std::fs::read_dir("/dev/shm") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix("krt-etcd-")
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name.strip_prefix("krt-cluster-").or_else(|| {
            name.strip_prefix("krt-s3-")
                .and_then(|r| r.split('-').next())
        });
        let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            // What the containers of the dead test process left running.
            let sessions = std::fs::read_to_string(e.path().join("sessions")).unwrap_or_default();
            for sid in sessions.lines().filter_map(|l| l.parse().ok()) {
                proc::kill_session(sid);
            }
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// A loopback port nobody listens on, not handed out before by this process.
fn free_port() -> anyhow::Result<u16> {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .context("bind a loopback port")?
            .port();
        if !given.contains(&port) {
            given.push(port);
            return Ok(port);
        }
    }
}

/// PATH and HOME of the test process: the whole environment of every child.
fn host_env() -> Vec<(String, String)> {
    ["PATH", "HOME"]
        .into_iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_owned(), v)))
        .collect()
}

/// Starts the thread that owns the cluster's runtime and spawns every child.
/// It never exits: `PR_SET_PDEATHSIG` would kill the children with it.
fn cluster_thread() -> anyhow::Result<Handle> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("krt-cluster".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let _ = tx.send(Ok(rt.handle().clone()));
            rt.block_on(std::future::pending::<()>());
        })
        .context("spawn the cluster thread")?;
    rx.recv()
        .context("the cluster thread exited")?
        .context("build the cluster runtime")
}

/// Runs `fut` on the cluster thread and waits for its output (from any
/// thread but the cluster thread).
fn on<T: Send + 'static>(rt: &Handle, fut: impl Future<Output = T> + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    rt.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv().expect("the cluster thread is gone")
}

/// Spawns a component with only `env`, logging to `log`, and records its
/// exit. Must run on the cluster thread.
fn spawn_component(
    name: &'static str,
    program: &Path,
    args: &[String],
    env: Vec<(String, String)>,
    log: PathBuf,
) -> anyhow::Result<Component> {
    let mut cmd = proc::command(program);
    cmd.args(args).env_clear().envs(env);
    proc::log_to(&mut cmd, &log)?;
    let mut child = cmd
        .spawn()
        .with_context(|| format!("start {name} ({})", program.display()))?;
    let pid = child.id();
    let exit = Arc::new(Mutex::new(None));
    let record = exit.clone();
    tokio::spawn(async move {
        let status = match child.wait().await {
            Ok(s) => s.to_string(),
            Err(e) => format!("wait failed: {e}"),
        };
        *record.lock().unwrap_or_else(|e| e.into_inner()) = Some(status);
    });
    Ok(Component {
        name,
        log,
        pid,
        exit,
    })
}

/// Polls `ready` until it holds; fails early, with the component's log, if
/// the component exits, and after [`WAIT`].
async fn wait_for<F, Fut>(c: &Component, what: &str, mut ready: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if ready().await {
            return Ok(());
        }
        if let Some(status) = c.exited() {
            bail!("{} exited ({status}) before {what}; {}", c.name, c.tail());
        }
        if Instant::now() > deadline {
            bail!(
                "{}: timed out after {WAIT:?} waiting for {what}; {}",
                c.name,
                c.tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Booted {
    kubeconfig: PathBuf,
    config: kube::Config,
    server: String,
    node: Arc<Node>,
    components: Vec<Component>,
}

/// Starts the control plane, installs the CRDs and starts the node. Runs on
/// the cluster thread.
async fn boot(dir: PathBuf, bin: PathBuf, krt_bin: PathBuf) -> anyhow::Result<Booted> {
    let logs = dir.join("logs");
    let t0 = Instant::now();
    let phase = |what: &str| {
        proc::note(
            &logs.join("cluster.log"),
            &format!("{:>6.2}s {what}", t0.elapsed().as_secs_f64()),
        );
    };
    let url = |port: u16| format!("http://127.0.0.1:{port}");

    // etcd
    let (client_port, peer_port) = (free_port()?, free_port()?);
    // etcd fsyncs every write; on tmpfs that costs nothing, as test clusters
    // (kind's docs too) recommend. The data is thrown away anyway.
    let shm = Path::new("/dev/shm");
    let etcd_data = if shm.is_dir() {
        shm.join(format!("krt-etcd-{}", std::process::id()))
    } else {
        dir.join("etcd")
    };
    let _ = std::fs::remove_dir_all(&etcd_data);
    let etcd_args: Vec<String> = [
        "--name=krt",
        &format!("--data-dir={}", etcd_data.display()),
        &format!("--listen-client-urls={}", url(client_port)),
        &format!("--advertise-client-urls={}", url(client_port)),
        &format!("--listen-peer-urls={}", url(peer_port)),
        &format!("--initial-advertise-peer-urls={}", url(peer_port)),
        &format!("--initial-cluster=krt={}", url(peer_port)),
        "--logger=zap",
        "--log-level=warn",
    ]
    .map(str::to_owned)
    .to_vec();
    let etcd_bin = which("etcd")?;
    let etcd = spawn_component(
        "etcd",
        &etcd_bin,
        &etcd_args,
        host_env(),
        logs.join("etcd.log"),
    )?;
    let etcd_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, client_port));
    wait_for(&etcd, "/health to answer", || async {
        probe::http_get(etcd_addr, "/health", "").await.is_ok()
    })
    .await?;
    phase("etcd is healthy");

    // kube-apiserver
    let pki = dir.join("pki");
    std::fs::create_dir_all(&pki).with_context(|| format!("create {}", pki.display()))?;
    let (sa_key, sa_pub) = (pki.join("sa.key"), pki.join("sa.pub"));
    openssl(&["genrsa", "-out", &sa_key.display().to_string(), "2048"])?;
    openssl(&[
        "rsa",
        "-in",
        &sa_key.display().to_string(),
        "-pubout",
        "-out",
        &sa_pub.display().to_string(),
    ])?;
    let token = format!(
        "krt-admin-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let tokens = pki.join("tokens.csv");
    std::fs::write(
        &tokens,
        format!("{token},krt-admin,krt-admin,\"system:masters\"\n"),
    )
    .with_context(|| format!("write {}", tokens.display()))?;
    phase("service-account key pair generated");
    let api_port = free_port()?;
    let server = format!("https://127.0.0.1:{api_port}");
    let api_args: Vec<String> = vec![
        format!("--etcd-servers={}", url(client_port)),
        "--bind-address=127.0.0.1".into(),
        "--advertise-address=127.0.0.1".into(),
        format!("--secure-port={api_port}"),
        // 127.0.0.1 may not be an endpoint of the `kubernetes` Service.
        "--endpoint-reconciler-type=none".into(),
        format!("--cert-dir={}", pki.display()),
        format!("--token-auth-file={}", tokens.display()),
        format!("--service-account-key-file={}", sa_pub.display()),
        format!("--service-account-signing-key-file={}", sa_key.display()),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
        "--service-cluster-ip-range=10.0.0.0/24".into(),
        "--authorization-mode=RBAC".into(),
        "--profiling=false".into(),
        "--logtostderr=true".into(),
        "--v=1".into(),
    ];
    let apiserver = spawn_component(
        "kube-apiserver",
        &bin.join("kube-apiserver"),
        &api_args,
        host_env(),
        logs.join("kube-apiserver.log"),
    )?;

    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: krt
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: krt-admin
  user:
    token: {token}
contexts:
- name: krt
  context:
    cluster: krt
    user: krt-admin
    namespace: default
current-context: krt
",
            // Written by the API server at start: its serving certificate and
            // the self-signed CA that issued it.
            ca = pki.join("apiserver.crt").display(),
        ),
    )
    .with_context(|| format!("write {}", kubeconfig.display()))?;
    let api_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, api_port));
    wait_for(&apiserver, "its port to accept connections", || async {
        tokio::net::TcpStream::connect(api_addr).await.is_ok()
    })
    .await?;
    // kubectl costs CPU the API server needs to start: ask every 200 ms.
    let mut first = true;
    wait_for(&apiserver, "/readyz to answer ok", || {
        let wait = if first {
            Duration::ZERO
        } else {
            Duration::from_millis(150)
        };
        first = false;
        let kubeconfig = &kubeconfig;
        async move {
            tokio::time::sleep(wait).await;
            let out = proc::command("kubectl")
                .arg("--kubeconfig")
                .arg(kubeconfig)
                .args(["get", "--raw", "/readyz", "--request-timeout=2s"])
                .env_remove("KUBECONFIG")
                .output()
                .await;
            out.is_ok_and(|o| o.status.success() && o.stdout.starts_with(b"ok"))
        }
    })
    .await?;
    phase("kube-apiserver is ready");
    let config = kube::Config::from_custom_kubeconfig(
        Kubeconfig::read_from(&kubeconfig)
            .with_context(|| format!("read {}", kubeconfig.display()))?,
        &KubeConfigOptions::default(),
    )
    .await
    .with_context(|| format!("load {}", kubeconfig.display()))?;
    let client = Client::try_from(config.clone()).context("build a kube client")?;

    // kube-controller-manager
    let kcm_args: Vec<String> = vec![
        format!("--kubeconfig={}", kubeconfig.display()),
        "--controllers=deployment,replicaset,serviceaccount,serviceaccount-token,garbagecollector"
            .into(),
        format!("--service-account-private-key-file={}", sa_key.display()),
        format!("--root-ca-file={}", pki.join("apiserver.crt").display()),
        "--use-service-account-credentials=false".into(),
        "--leader-elect=false".into(),
        "--secure-port=0".into(),
        "--port=0".into(),
        "--kube-api-qps=200".into(),
        "--kube-api-burst=400".into(),
        "--logtostderr=true".into(),
        "--v=1".into(),
    ];
    let kcm = spawn_component(
        "kube-controller-manager",
        &bin.join("kube-controller-manager"),
        &kcm_args,
        host_env(),
        logs.join("kube-controller-manager.log"),
    )?;

    install_crds(&client).await?;
    phase("CRDs are established");

    node::register(&client).await?;
    let node = Arc::new(Node {
        client: client.clone(),
        pods: Arc::default(),
        pods_dir: dir.join("pods"),
        logs_dir: dir.join("logs").join("pods"),
        krt_bin,
        krt_image: KRT_IMAGE.to_owned(),
        host_env: host_env(),
        sessions_file: dir.join("sessions"),
    });
    tokio::spawn(node::run(node.clone()));
    phase("node registered");

    // The controller manager is working once the token of the default
    // ServiceAccount exists.
    let sa = await_condition(
        Api::<ServiceAccount>::namespaced(client, "default"),
        "default",
        |sa: Option<&ServiceAccount>| {
            sa.is_some_and(|sa| sa.secrets.as_ref().is_some_and(|s| !s.is_empty()))
        },
    );
    let components = vec![etcd, apiserver, kcm.clone()];
    match tokio::time::timeout(WAIT, sa).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => bail!("watch the default ServiceAccount: {e}"),
        Err(_) => bail!(
            "the default ServiceAccount got no token within {WAIT:?}{}; {}",
            kcm.exited()
                .map(|s| format!(" (kube-controller-manager exited: {s})"))
                .unwrap_or_default(),
            kcm.tail()
        ),
    }
    phase("kube-controller-manager works (default ServiceAccount token)");
    Ok(Booted {
        kubeconfig,
        config,
        server,
        node,
        components,
    })
}

/// Creates namespace `name` unless it exists.
async fn ensure_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))
        .context("a Namespace")?;
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("create namespace {name}")),
    }
}

/// Creates the CRDs of `crds/generated/crds.yaml` and waits until they are
/// Established.
async fn install_crds(client: &Client) -> anyhow::Result<()> {
    let file = crate::repo_root().join("crds/generated/crds.yaml");
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("read {}", file.display()))?;
    let mut crds = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = <serde_json::Value as k8s_openapi::serde::Deserialize>::deserialize(doc)
            .with_context(|| format!("parse {}", file.display()))?;
        if !value.is_null() {
            let crd: CustomResourceDefinition = serde_json::from_value(value)
                .with_context(|| format!("a CustomResourceDefinition in {}", file.display()))?;
            crds.push(crd);
        }
    }
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = Vec::new();
    for crd in crds {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.create(&PostParams::default(), &crd)
            .await
            .with_context(|| format!("create CRD {name}"))?;
        names.push(name);
    }
    for name in names {
        tokio::time::timeout(
            WAIT,
            await_condition(api.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .with_context(|| format!("CRD {name} not Established within {WAIT:?}"))?
        .with_context(|| format!("watch CRD {name}"))?;
    }
    Ok(())
}

fn openssl(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .context("run openssl (needed for the service-account key pair)")?;
    if !out.status.success() {
        bail!(
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// `name` on PATH.
fn which(name: &str) -> anyhow::Result<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("{name} is not on PATH (tests/cluster/build.sh installs it)"))
}

/// Creates the RuntimePool `ns/name` of `debian:bookworm` (the host's root
/// on the test node) with `replicas` pods of `slots` slots.
pub async fn create_pool(client: &Client, ns: &str, name: &str, replicas: i32, slots: u32) {
    let pools: Api<kruntimes_crds::RuntimePool> = Api::namespaced(client.clone(), ns);
    let pool: kruntimes_crds::RuntimePool = serde_json::from_value(serde_json::json!({
        "apiVersion": "kruntimes.io/v1alpha1",
        "kind": "RuntimePool",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"image": "debian:bookworm", "replicas": replicas, "slots": slots, "krtImage": KRT_IMAGE},
    }))
    .expect("a RuntimePool");
    pools
        .create(&PostParams::default(), &pool)
        .await
        .unwrap_or_else(|e| panic!("create RuntimePool {ns}/{name}: {e}"));
}

/// A standalone Run `ns/name` on `pool` with one step running `script`;
/// `extra` adds or replaces fields of its spec (such as `retry`).
pub fn run_obj(
    ns: &str,
    name: &str,
    pool: &str,
    script: &str,
    extra: serde_json::Value,
) -> kruntimes_crds::Run {
    let mut spec = serde_json::json!({
        "job": name,
        "pool": pool,
        "steps": [{"name": "main", "run": script}],
    });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "kruntimes.io/v1alpha1",
        "kind": "Run",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }))
    .expect("a Run")
}

impl Cluster {
    /// Applies the `kruntimes-store` ConfigMap in `kruntimes-system`, which
    /// `krt submit` reads the store from: the URL and the non-secret
    /// settings. The credentials stay out of it, as in a real install;
    /// callers pass them in the environment of `krt`.
    pub async fn apply_store_config(&self, client: &Client) {
        use k8s_openapi::api::core::v1::ConfigMap;
        use kube::api::{Patch, PatchParams};
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), "kruntimes-system");
        let mut data = std::collections::BTreeMap::from([(
            "KRT_STORE".to_string(),
            self.store_url().to_string(),
        )]);
        for (k, v) in self.store_env() {
            if !is_credential(k) {
                data.insert(k.to_string(), v);
            }
        }
        let cm = ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some("kruntimes-store".into()),
                ..Default::default()
            },
            data: Some(data),
            ..Default::default()
        };
        let pp = PatchParams::apply("kruntimes-tests").force();
        api.patch("kruntimes-store", &pp, &Patch::Apply(&cm))
            .await
            .expect("the store ConfigMap applies");
    }
}

/// True for the store settings that are credentials (kept out of the
/// ConfigMap, passed in `krt`'s environment).
pub fn is_credential(name: &str) -> bool {
    name.contains("SECRET") || name.contains("ACCESS_KEY")
}
