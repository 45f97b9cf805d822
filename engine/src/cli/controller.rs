//! `krt controller`: cluster mode on Kubernetes.

use std::net::SocketAddr;
use std::time::Duration;

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

A Run whose runtime pod is deleted fails that attempt at once; one whose
runtime stops answering fails it after --lost-after. The Run's retry policy
then applies, preferring another pod.")]
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
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    kruntimes_crds::duration::parse_duration(s)
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
    rt.block_on(async move {
        let client = match kube::Client::try_default().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: no Kubernetes connection: {e}");
                eprintln!(
                    "  (hint: set KUBECONFIG, or run inside a cluster with a service account)"
                );
                return Exit::Internal;
            }
        };
        let store_env = kruntimes_controller::Options::store_env_from_process();
        if !store_env.iter().any(|(k, _)| k == "KRT_STORE") {
            eprintln!("error: KRT_STORE is not set; runtimes in the cluster need a shared store");
            eprintln!("  (hint: KRT_STORE=s3://bucket/prefix with AWS_* credentials)");
            return Exit::Usage;
        }
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
        match kruntimes_controller::run(client, opts, shutdown).await {
            Ok(()) => Exit::Success,
            Err(e) => {
                eprintln!("error: {e:#}");
                Exit::Internal
            }
        }
    })
}
