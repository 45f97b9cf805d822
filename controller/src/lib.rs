//! Cluster mode: `krt controller` reconciles RuntimePools into warm runtime
//! Deployments and dispatches Runs to their pods.
//!
//! ```text
//! RuntimePool --reconcile--> Secret (token, store settings) + Deployment
//!                                                  | (kube-controller-manager)
//!                                             ReplicaSet -> Pods (krt runtime serve)
//! Run --watch--> dispatcher --POST /v1/runs--> a Ready pod with a free slot
//!                    ^   <--events stream--      |
//!                    +-- status (server-side apply, one field manager)
//! ```
//!
//! The dispatcher is one task that owns all slot accounting; it is driven by
//! watch events (Runs, Pods, pools, Secrets) and by the attempt tasks that
//! follow each runtime's event stream, so nothing on the hot path polls.
//! A Workflow controller (cluster mode, part 2) creates Runs and reuses the
//! dispatcher unchanged.
//!
//! With more than one replica, only the holder of a Lease runs [`run`]
//! (`leader.rs`); every replica serves `/metrics` and `/health`
//! ([`serve_metrics`]), standbys with `krt_controller_leader 0`.

pub mod dispatch;
mod http;
pub mod leader;
pub mod metrics;
pub mod names;
pub mod pool;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kruntimes_crds::RuntimePool;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

pub use dispatch::SlotBook;
pub use metrics::Metrics;

/// Environment variables of the controller that configure the artifact
/// store; they are handed to the runtimes through each pool's Secret.
pub const STORE_ENV: &[&str] = &[
    "KRT_STORE",
    "AWS_ENDPOINT",
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ALLOW_HTTP",
    "GOOGLE_SERVICE_ACCOUNT",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCOUNT_NAME",
    "AZURE_STORAGE_ACCOUNT_KEY",
];

/// Controller settings.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where `/metrics` and `/health` are served.
    pub metrics_addr: SocketAddr,
    /// Image that provides `/krt` for the pools' init containers.
    pub krt_image: String,
    /// Store settings copied into every pool's Secret (name, value).
    pub store_env: Vec<(String, String)>,
    /// Watch only this namespace (all namespaces when `None`).
    pub namespace: Option<String>,
    /// A runtime that does not answer for this long loses its Runs' attempts.
    pub lost_after: Duration,
}

impl Options {
    /// Store settings from the controller's own environment.
    pub fn store_env_from_process() -> Vec<(String, String)> {
        STORE_ENV
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
            .collect()
    }
}

/// Errors of a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a request.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// Shared by the reconcilers.
pub(crate) struct Context {
    pub client: Client,
    pub opts: Options,
    pub slots: SlotBook,
    pub metrics: Arc<Metrics>,
}

/// Binds `addr` and serves `/metrics` and `/health` until `shutdown`. Runs
/// from the start, leader or not: a standby is healthy too.
pub async fn serve_metrics(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("failed to listen on {addr}: {e}"))?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics and /health");
    Ok(tokio::spawn(http::serve(listener, metrics, shutdown)))
}

/// Reconciles pools and dispatches Runs until `shutdown` (or an error).
/// Call it only while leading: two of these at once would dispatch every
/// Run twice.
pub async fn run(
    client: Client,
    opts: Options,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let slots = SlotBook::default();
    let ctx = Arc::new(Context {
        client: client.clone(),
        opts: opts.clone(),
        slots: slots.clone(),
        metrics: metrics.clone(),
    });

    let (pools, deployments, secrets): (Api<RuntimePool>, Api<Deployment>, Api<Secret>) =
        match &opts.namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (
                Api::all(client.clone()),
                Api::all(client.clone()),
                Api::all(client.clone()),
            ),
        };
    let owned = watcher::Config::default()
        .labels(&format!("app.kubernetes.io/managed-by={}", names::MANAGER));

    // Stops both halves when either ends, so nothing dispatches after
    // `run` returns (the caller may release the lease then).
    let shutdown = shutdown.child_token();
    let (pool_tx, pool_rx) = futures::channel::mpsc::unbounded();
    let mut dispatcher = dispatch::Dispatcher::start(
        client.clone(),
        opts.clone(),
        slots.clone(),
        metrics.clone(),
        pool_tx,
        shutdown.clone(),
    );

    let stop = shutdown.clone();
    let pool_controller = Controller::new(pools, watcher::Config::default())
        .owns(deployments, owned.clone())
        .owns(secrets, owned)
        .reconcile_on(pool_rx)
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(pool::reconcile, error_policy, ctx)
        .for_each(|r| {
            if let Err(e) = r {
                tracing::debug!(error = %e, "pool reconcile");
            }
            futures::future::ready(())
        });

    tokio::select! {
        _ = pool_controller => {}
        r = &mut dispatcher => return r?,
    }
    shutdown.cancel();
    dispatcher.await?
}

fn error_policy(pool: Arc<RuntimePool>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_error("RuntimePool");
    tracing::warn!(pool = %kube::ResourceExt::name_any(pool.as_ref()), error = %err, "reconcile failed; retrying in 5s");
    Action::requeue(Duration::from_secs(5))
}
