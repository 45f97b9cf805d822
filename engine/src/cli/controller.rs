//! `krt controller`: cluster mode on Kubernetes.
//!
//! Every replica serves `/metrics` and `/health` at once, then campaigns
//! for the Lease; only the leader runs the controllers ([`lead`]). A leader
//! that loses its Lease exits with code 4 at once (Kubernetes restarts it as
//! a candidate), like controller-runtime; on SIGTERM the leader stops its
//! work, then releases the Lease so a standby takes over without waiting
//! for it to expire.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kruntimes_controller::Metrics;
use kruntimes_controller::leader::{LeaderElector, LeaseTiming};
use tokio_util::sync::CancellationToken;

use super::Exit;

/// Run the kruntimes controller: RuntimePools become Deployments of warm
/// runtimes, and Runs are dispatched to their pods.
///
/// Connects to Kubernetes like kubectl does: in-cluster service account, or
/// `KUBECONFIG`/`~/.kube/config`. The artifact store is configured by
/// `KRT_STORE` and the standard cloud variables (`AWS_*`); the controller
/// copies them into each pool's Secret so runtimes use the same store.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  krt crds | kubectl apply -f -          install the CustomResourceDefinitions first
  KRT_STORE=s3://ci-artifacts/krt krt controller
  krt controller --namespace ci --metrics-addr 0.0.0.0:9090
  krt controller --leader-elect=false    a single replica (development)

A Run whose runtime pod is deleted fails that attempt at once; one whose
runtime stops answering fails it after --lost-after. The Run's retry policy
then applies, preferring another pod.

High availability: replicas elect a leader with a Lease; only the leader
dispatches. A standby takes over at most --lease-duration + --retry-period
after the leader crashed (17s by default), and within about --retry-period
after it shut down gracefully (it releases the Lease). A leader that cannot
renew the Lease within --renew-deadline exits with code 4.")]
pub struct Args {
    /// Where `/metrics` (Prometheus) and `/health` are served.
    #[arg(long, env = "KRT_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    metrics_addr: SocketAddr,
    /// Image providing the static `krt` binary at `/krt`; pools copy it into
    /// their own image with an init container.
    #[arg(long, env = "KRT_KRT_IMAGE", default_value = kruntimes_controller::names::DEFAULT_KRT_IMAGE)]
    krt_image: String,
    /// Watch one namespace only [default: all namespaces].
    #[arg(long, env = "KRT_NAMESPACE")]
    namespace: Option<String>,
    /// How long a runtime may stop answering before its Runs' attempts fail.
    #[arg(long, env = "KRT_LOST_AFTER", default_value = "30s", value_parser = parse_duration)]
    lost_after: Duration,
    /// Elect a leader among replicas with a Lease; `--leader-elect=false`
    /// for a single replica.
    #[arg(
        long,
        env = "KRT_LEADER_ELECT",
        default_value_t = true,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    leader_elect: bool,
    /// Name of the Lease.
    #[arg(long, env = "KRT_LEASE_NAME", default_value = "kruntimes-controller")]
    lease_name: String,
    /// Namespace of the Lease [default: --namespace, else $POD_NAMESPACE,
    /// else kruntimes-system].
    #[arg(long, env = "KRT_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    /// How long a standby waits for a silent leader before taking over.
    #[arg(long, env = "KRT_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    lease_duration: Duration,
    /// How long the leader tries to renew the Lease before giving up.
    #[arg(long, env = "KRT_RENEW_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    renew_deadline: Duration,
    /// How often the leader renews and a standby tries to take over.
    #[arg(long, env = "KRT_RETRY_PERIOD", default_value = "2s", value_parser = parse_duration)]
    retry_period: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    kruntimes_crds::duration::parse_duration(s)
}

/// Where the Lease lives: `--lease-namespace`, else the watched namespace,
/// else the controller's own namespace, else `kruntimes-system`.
fn lease_namespace(args: &Args) -> String {
    args.lease_namespace
        .clone()
        .or_else(|| args.namespace.clone())
        .or_else(|| {
            std::env::var("POD_NAMESPACE")
                .ok()
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| "kruntimes-system".into())
}

pub fn run(args: Args) -> Exit {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: failed to start the async runtime: {e}");
            return Exit::Internal;
        }
    };
    let exit = rt.block_on(controller(args));
    // Tasks still winding down are not waited for: a leader that lost its
    // Lease must stop now.
    rt.shutdown_background();
    exit
}

async fn controller(args: Args) -> Exit {
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: no Kubernetes connection: {e}");
            eprintln!("  (hint: set KUBECONFIG, or run inside a cluster with a service account)");
            return Exit::Internal;
        }
    };
    let store_env = kruntimes_controller::Options::store_env_from_process();
    if !store_env.iter().any(|(k, _)| k == "KRT_STORE") {
        eprintln!("error: KRT_STORE is not set; runtimes in the cluster need a shared store");
        eprintln!("  (hint: KRT_STORE=s3://bucket/prefix with AWS_* credentials)");
        return Exit::Usage;
    }
    let elector = if args.leader_elect {
        let timing = LeaseTiming {
            lease_duration: args.lease_duration,
            renew_deadline: args.renew_deadline,
            retry_period: args.retry_period,
        };
        match LeaderElector::new(
            client.clone(),
            &lease_namespace(&args),
            &args.lease_name,
            kruntimes_controller::leader::default_identity(),
            timing,
        ) {
            Ok(e) => Some(e),
            Err(e) => {
                eprintln!("error: {e}");
                eprintln!(
                    "  (hint: --renew-deadline < --lease-duration and --retry-period < --renew-deadline)"
                );
                return Exit::Usage;
            }
        }
    } else {
        None
    };
    let opts = kruntimes_controller::Options {
        metrics_addr: args.metrics_addr,
        krt_image: args.krt_image,
        store_env,
        namespace: args.namespace,
        lost_after: args.lost_after,
    };

    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        stop.cancel();
    });

    let metrics = Arc::new(Metrics::default());
    let http = match kruntimes_controller::serve_metrics(
        opts.metrics_addr,
        metrics.clone(),
        shutdown.clone(),
    )
    .await
    {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Exit::Internal;
        }
    };

    let leadership = match &elector {
        Some(elector) => match elector.acquire(&shutdown).await {
            Some(l) => Some(l),
            // Shut down while standing by.
            None => return Exit::Success,
        },
        None => None,
    };
    metrics.set_leader(true);

    let leading = shutdown.child_token();
    let lost = async {
        match &leadership {
            Some(l) => l.lost().await,
            None => std::future::pending().await,
        }
    };
    let exit = tokio::select! {
        r = lead(client, opts, metrics.clone(), leading.clone()) => match r {
            Ok(()) => Exit::Success,
            Err(e) => {
                eprintln!("error: {e:#}");
                Exit::Internal
            }
        },
        _ = lost => {
            // Another replica may be leading already: stop everything now,
            // without waiting for the work to wind down.
            leading.cancel();
            metrics.set_leader(false);
            eprintln!("error: lost the leader Lease; exiting so that this replica restarts as a standby");
            return Exit::Internal;
        }
    };
    // The work has stopped: hand over at once.
    metrics.set_leader(false);
    if let Some(l) = leadership {
        l.release().await;
    }
    shutdown.cancel();
    let _ = http.await;
    exit
}

/// Everything that runs only on the leader, until `leading` is cancelled.
/// Another controller that must run on the leader only is joined here.
async fn lead(
    client: kube::Client,
    opts: kruntimes_controller::Options,
    metrics: Arc<Metrics>,
    leading: CancellationToken,
) -> anyhow::Result<()> {
    let store_url = opts
        .store_env
        .iter()
        .find(|(k, _)| k == "KRT_STORE")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let store = kruntimes_runtime::cas::Store::open(
        &store_url,
        kruntimes_runtime::cas::StoreOptions::default(),
    )
    .map_err(|e| anyhow::anyhow!("failed to open the store {store_url}: {e}"))?;
    let workflows = crate::cluster::workflow::Options {
        namespace: opts.namespace.clone(),
        store,
    };
    let runs = kruntimes_controller::run(client.clone(), opts, metrics, leading.clone());
    let wfs = crate::cluster::workflow::run(client, workflows, leading.clone());
    tokio::pin!(runs, wfs);
    // Either one stopping stops the other.
    tokio::select! {
        r = &mut runs => {
            leading.cancel();
            let _ = wfs.await;
            r
        }
        r = &mut wfs => {
            leading.cancel();
            let _ = runs.await;
            r
        }
    }
}
