//! Faults of the controller itself and of the store under it, against the
//! real test cluster without its shared controller
//! ([`Cluster::shared_bare`]): every test starts, kills and restarts its own
//! `krt controller` processes, each watching only the test's namespace
//! (where their Lease lives too). Store faults come from a fault-injecting
//! proxy in front of the real S3 server (`kruntimes_tests::fault_proxy`).
//!
//! Timing flags are short so failovers take seconds; nothing asserts a
//! duration, waits only have generous deadlines so a broken feature fails
//! instead of hanging.

mod adoption;
mod leader;
mod store;
mod workflow;

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kruntimes_crds::{Run, RunPhase, RuntimePool};
use kruntimes_tests::cluster::{Cluster, ControllerProcess, create_pool, run_obj};
use kruntimes_tests::{poll_until, tail};
use kube::{Api, Client};

/// Deadline of any one wait.
const WAIT: Duration = Duration::from_secs(60);

/// Leader election flags of the controllers under test: a crashed leader is
/// replaced within `LEASE + RETRY` (4.5 s).
const FAST_LEASE: &[&str] = &[
    "--lease-duration=4s",
    "--renew-deadline=3s",
    "--retry-period=500ms",
];

/// The crash failover bound of [`FAST_LEASE`].
const FAST_BOUND: Duration = Duration::from_millis(4500);

/// The Lease name the controller uses by default.
const LEASE: &str = "kruntimes-controller";

/// [`poll_until`] with the logs of `ctls` on a timeout.
async fn wait_for<T, F, Fut>(
    what: &str,
    deadline: Duration,
    ctls: &[&ControllerProcess],
    check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    poll_until(what, deadline, check, || {
        ctls.iter()
            .map(|c| {
                format!(
                    "\n--- log of {} (exit: {:?}) ---\n{}",
                    c.identity(),
                    c.exited(),
                    tail(&c.log(), 40)
                )
            })
            .collect()
    })
    .await
}

/// Starts a controller for `ns` with `args`, panicking with the reason.
fn spawn(cluster: &Cluster, ns: &str, args: &[&str]) -> ControllerProcess {
    cluster
        .spawn_controller(ns, args)
        .unwrap_or_else(|e| panic!("start a controller for {ns}: {e:#}"))
}

/// The holder of the controller Lease of `ns`, if any.
async fn lease_holder(client: &Client, ns: &str) -> Option<String> {
    lease(client, ns).await?.spec?.holder_identity
}

async fn lease(client: &Client, ns: &str) -> Option<Lease> {
    Api::<Lease>::namespaced(client.clone(), ns)
        .get_opt(LEASE)
        .await
        .ok()
        .flatten()
}

/// Waits until `ctl` holds the Lease and says so in its metrics.
async fn wait_leading(client: &Client, ns: &str, ctl: &ControllerProcess, deadline: Duration) {
    wait_for(
        &format!("{} to lead", ctl.identity()),
        deadline,
        &[ctl],
        || async {
            let holder = lease_holder(client, ns).await?;
            let gauge = ctl.metric("krt_controller_leader").await?;
            (holder == ctl.identity() && gauge == 1.0).then_some(())
        },
    )
    .await;
}

async fn wait_pool_ready(
    client: &Client,
    ns: &str,
    name: &str,
    replicas: i32,
    ctls: &[&ControllerProcess],
) {
    let pools: Api<RuntimePool> = Api::namespaced(client.clone(), ns);
    wait_for(
        &format!("pool {ns}/{name} to have {replicas} ready replicas"),
        WAIT,
        ctls,
        || async {
            let p = pools.get(name).await.ok()?;
            let st = p.status.as_ref()?;
            let ready = st
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            (ready && st.ready_replicas == replicas).then_some(())
        },
    )
    .await;
}

fn phase(r: &Run) -> Option<RunPhase> {
    r.status.as_ref().and_then(|s| s.phase)
}

async fn wait_terminal(runs: &Api<Run>, name: &str, ctls: &[&ControllerProcess]) -> Run {
    wait_for(&format!("Run {name} to finish"), WAIT, ctls, || async {
        let r = runs.get(name).await.ok()?;
        matches!(
            phase(&r),
            Some(RunPhase::Succeeded | RunPhase::Failed | RunPhase::TimedOut | RunPhase::Cancelled)
        )
        .then_some(r)
    })
    .await
}

/// Lines of a file the steps append to (none if it does not exist).
fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}
