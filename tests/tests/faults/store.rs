//! Object-store faults under the Workflow controller: its store traffic
//! (and its pool's) goes through a [`FaultProxy`] in front of the real S3
//! server, which fails the writes of step-cache records on demand.
//!
//! A failed write must never turn a succeeded job into a failure nor lose
//! its result: a transient error is retried by the store client, a lasting
//! one shows in the Workflow's `Synced` condition until the controller's
//! own retries get the record written.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kruntimes_crds::{JobResult, Workflow, WorkflowPhase, WorkflowStatus};
use kruntimes_tests::fault_proxy::{Fault, FaultProxy};
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

use super::*;

/// Where step-cache records live in the store (`<prefix>/refs/ac/<key>`).
const RECORDS: &str = "/refs/ac/";

/// A namespace whose controller (and pool `default`, ready) reach the store
/// through a new fault proxy.
async fn setup(prefix: &str) -> (Client, String, FaultProxy, ControllerProcess) {
    let cluster = Cluster::shared_bare();
    let client = cluster.client();
    let ns = cluster.namespace(prefix).await;
    let proxy = FaultProxy::start(&cluster.s3().endpoint).expect("the fault proxy starts");
    let ctl = cluster
        .spawn_controller_with_env(
            &ns,
            FAST_LEASE,
            &[("AWS_ENDPOINT_URL", proxy.endpoint.clone())],
        )
        .unwrap_or_else(|e| panic!("start a controller for {ns}: {e:#}"));
    create_pool(&client, &ns, "default", 1, 2).await;
    wait_pool_ready(&client, &ns, "default", 1, &[&ctl]).await;
    (client, ns, proxy, ctl)
}

/// A one-job Workflow whose cache key is unique to the namespace.
fn workflow(ns: &str, name: &str) -> Workflow {
    serde_json::from_value(json!({
        "apiVersion": "kruntimes.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"jobs": {"build": {"steps": [{
            "run": format!("echo building for {ns}\necho \"built={ns}\" >> \"$KRT_OUTPUT\""),
        }]}}},
    }))
    .unwrap()
}

fn condition<'a>(st: &'a WorkflowStatus, type_: &str) -> Option<&'a Condition> {
    st.conditions.iter().find(|c| c.type_ == type_)
}

/// Waits until the Workflow's status satisfies `check`.
async fn wait_status(
    wfs: &Api<Workflow>,
    name: &str,
    what: &str,
    ctl: &ControllerProcess,
    check: impl Fn(&WorkflowStatus) -> bool,
) -> WorkflowStatus {
    wait_for(
        &format!("Workflow {name}: {what}"),
        WAIT,
        &[ctl],
        || async {
            let st = wfs.get(name).await.ok()?.status?;
            check(&st).then_some(st)
        },
    )
    .await
}

/// Submits `workflow(ns, name)` again and checks that the step cache serves
/// it: the job is cached with the first run's outputs, and no Run exists.
async fn assert_served_from_cache(client: &Client, ns: &str, name: &str, ctl: &ControllerProcess) {
    let wfs: Api<Workflow> = Api::namespaced(client.clone(), ns);
    wfs.create(&PostParams::default(), &workflow(ns, name))
        .await
        .unwrap();
    let st = wait_status(&wfs, name, "to succeed", ctl, |s| {
        s.phase == Some(WorkflowPhase::Succeeded)
    })
    .await;
    let job = &st.jobs["build"];
    assert!(
        job.cached,
        "the record written after the fault is used: {st:#?}"
    );
    assert_eq!(job.outputs.get("built").map(String::as_str), Some(ns));
    let runs: Api<Run> = Api::namespaced(client.clone(), ns);
    assert!(
        runs.get_opt(&format!("{name}-build"))
            .await
            .unwrap()
            .is_none(),
        "a cached job creates no Run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_store_error_is_retried_and_the_result_is_kept() {
    let (client, ns, proxy, ctl) = setup("store-blip").await;

    // The first two writes of a record get S3's "slow down", which clients
    // retry with backoff.
    proxy.set(Fault {
        method: hyper::Method::PUT,
        path_contains: RECORDS.into(),
        status: hyper::StatusCode::SERVICE_UNAVAILABLE,
        code: "SlowDown".into(),
        times: Some(2),
    });
    let wfs: Api<Workflow> = Api::namespaced(client.clone(), &ns);
    wfs.create(&PostParams::default(), &workflow(&ns, "first"))
        .await
        .unwrap();
    let st = wait_status(&wfs, "first", "to finish", &ctl, |s| {
        matches!(
            s.phase,
            Some(WorkflowPhase::Succeeded | WorkflowPhase::Failed)
        )
    })
    .await;
    assert_eq!(st.phase, Some(WorkflowPhase::Succeeded), "{st:#?}");
    assert_eq!(st.jobs["build"].result, Some(JobResult::Success), "{st:#?}");
    let injected = proxy.injected();
    assert_eq!(injected.len(), 2, "both faults were hit: {injected:?}");
    assert!(
        proxy
            .passed()
            .iter()
            .any(|r| r.starts_with("PUT ") && r.contains(RECORDS)),
        "the record was written on a retry: {:?}",
        proxy.passed()
    );

    assert_served_from_cache(&client, &ns, "second", &ctl).await;
    ctl.terminate();
    ctl.wait(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lasting_store_error_shows_in_synced_and_the_record_is_written_once_it_clears() {
    let (client, ns, proxy, ctl) = setup("store-down").await;

    // Every write of a record is refused (an error clients do not retry)
    // until the fault is cleared.
    proxy.set(Fault {
        method: hyper::Method::PUT,
        path_contains: RECORDS.into(),
        status: hyper::StatusCode::FORBIDDEN,
        code: "AccessDenied".into(),
        times: None,
    });
    let wfs: Api<Workflow> = Api::namespaced(client.clone(), &ns);
    wfs.create(&PostParams::default(), &workflow(&ns, "first"))
        .await
        .unwrap();
    let st = wait_status(&wfs, "first", "to finish, not Synced", &ctl, |s| {
        s.phase
            .is_some_and(|p| p != WorkflowPhase::Running && p != WorkflowPhase::Pending)
            && condition(s, "Synced").is_some_and(|c| c.status == "False")
    })
    .await;
    assert_eq!(
        st.phase,
        Some(WorkflowPhase::Succeeded),
        "a record that cannot be written does not fail the job: {st:#?}"
    );
    assert_eq!(st.jobs["build"].result, Some(JobResult::Success), "{st:#?}");
    let synced = condition(&st, "Synced").unwrap();
    assert_eq!(synced.reason, "StoreError", "{synced:#?}");
    assert!(
        synced.message.contains("AccessDenied") && synced.message.contains("`build`"),
        "the condition names the job and the store's error: {synced:#?}"
    );

    // The controller keeps retrying (the faults pile up) ...
    wait_for("a retry of the record", WAIT, &[&ctl], || async {
        (proxy.injected().len() >= 2).then_some(())
    })
    .await;
    // ... and once the store accepts writes again, the record is written and
    // the condition clears.
    proxy.clear();
    wait_status(&wfs, "first", "Synced again", &ctl, |s| {
        condition(s, "Synced").is_some_and(|c| c.status == "True")
    })
    .await;

    assert_served_from_cache(&client, &ns, "second", &ctl).await;
    ctl.terminate();
    ctl.wait(Duration::from_secs(20)).await;
}
