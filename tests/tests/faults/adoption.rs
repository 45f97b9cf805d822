//! A controller that dies mid-Run and the one that replaces it: Runs in
//! flight are adopted from their status, never started twice, unless their
//! runtime lost them meanwhile.

use std::time::Duration;

use kruntimes_crds::{Run, RunPhase};
use kruntimes_tests::TempDir;
use kruntimes_tests::cluster::Cluster;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_controller_adopts_a_running_run_which_executes_once() {
    let cluster = Cluster::shared_bare();
    let client = cluster.client();
    let ns = cluster.namespace("adopt").await;
    let a = spawn(cluster, &ns, FAST_LEASE);
    create_pool(&client, &ns, "p", 1, 2).await;
    wait_pool_ready(&client, &ns, "p", 1, &[&a]).await;

    let dir = TempDir::new("adopt");
    let counter = dir.path().join("executions");
    let gate = dir.path().join("gate");
    // Runs until the test opens the gate, so the controller is replaced
    // while the step runs.
    let script = format!(
        "echo \"$KRT_ATTEMPT\" >> '{c}'\nwhile [ ! -e '{g}' ]; do sleep 0.05; done\necho \"attempt=$KRT_ATTEMPT\" >> \"$KRT_OUTPUT\"",
        c = counter.display(),
        g = gate.display()
    );
    let runs: Api<Run> = Api::namespaced(client.clone(), &ns);
    runs.create(
        &PostParams::default(),
        &run_obj(
            &ns,
            "long",
            "p",
            &script,
            json!({"retry": {"limit": 2, "backoff": "100ms"}}),
        ),
    )
    .await
    .unwrap();
    let pod = wait_for("the Run to run", WAIT, &[&a], || async {
        let r = runs.get("long").await.ok()?;
        (phase(&r) == Some(RunPhase::Running) && !lines(&counter).is_empty())
            .then(|| r.status.unwrap().pod.unwrap())
    })
    .await;

    a.kill();
    assert!(a.wait(Duration::from_secs(20)).await.is_some());
    let b = spawn(cluster, &ns, FAST_LEASE);
    wait_for(
        "the new controller to adopt the Run",
        WAIT,
        &[&b],
        || async { b.log().contains("adopting a Run in flight").then_some(()) },
    )
    .await;
    std::fs::write(&gate, "").unwrap();

    let r = wait_terminal(&runs, "long", &[&b]).await;
    let st = r.status.unwrap();
    assert_eq!(st.phase, Some(RunPhase::Succeeded), "{st:#?}");
    assert_eq!(st.attempt, Some(1), "{st:#?}");
    assert!(st.attempts.is_empty(), "no failed attempt: {st:#?}");
    assert_eq!(st.pod.as_deref(), Some(pod.as_str()));
    assert_eq!(st.outputs.get("attempt").map(String::as_str), Some("1"));
    assert_eq!(lines(&counter), ["1"], "the step executed exactly once");
    assert_eq!(
        b.metric("krt_controller_runs_total{result=\"Succeeded\"}")
            .await,
        Some(1.0)
    );
    // The slot it adopted is free again.
    let pools: Api<kruntimes_crds::RuntimePool> = Api::namespaced(client.clone(), &ns);
    wait_for("the pool to report 0 busy slots", WAIT, &[&b], || async {
        let p = pools.get("p").await.ok()?;
        (p.status?.busy_slots == 0).then_some(())
    })
    .await;
    b.terminate();
    b.wait(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_runtime_restarted_while_no_controller_ran_is_retried_as_a_new_attempt() {
    let cluster = Cluster::shared_bare();
    let client = cluster.client();
    let ns = cluster.namespace("adopt-lost").await;
    let a = spawn(cluster, &ns, FAST_LEASE);
    create_pool(&client, &ns, "p", 1, 2).await;
    wait_pool_ready(&client, &ns, "p", 1, &[&a]).await;

    let dir = TempDir::new("adopt-lost");
    let counter = dir.path().join("executions");
    // The first attempt never ends by itself.
    let script = format!(
        "echo \"$KRT_ATTEMPT\" >> '{c}'\nif [ \"$KRT_ATTEMPT\" = 1 ]; then sleep 300; fi\necho \"attempt=$KRT_ATTEMPT\" >> \"$KRT_OUTPUT\"",
        c = counter.display()
    );
    let runs: Api<Run> = Api::namespaced(client.clone(), &ns);
    runs.create(
        &PostParams::default(),
        &run_obj(
            &ns,
            "victim",
            "p",
            &script,
            json!({"retry": {"limit": 2, "backoff": "100ms"}}),
        ),
    )
    .await
    .unwrap();
    let pod = wait_for("the Run to run", WAIT, &[&a], || async {
        let r = runs.get("victim").await.ok()?;
        (phase(&r) == Some(RunPhase::Running) && !lines(&counter).is_empty())
            .then(|| r.status.unwrap().pod.unwrap())
    })
    .await;

    // No controller is watching when the runtime crashes; the node restarts
    // it in the same pod (same name, same address), empty.
    a.kill();
    assert!(a.wait(Duration::from_secs(20)).await.is_some());
    let old_pid = cluster.runtime_pid(&ns, &pod).expect("the runtime runs");
    assert!(cluster.kill_container(&ns, &pod));
    wait_for("the runtime to restart", WAIT, &[&a], || async {
        cluster
            .runtime_pid(&ns, &pod)
            .filter(|p| *p != old_pid)
            .map(|_| ())
    })
    .await;

    let b = spawn(cluster, &ns, FAST_LEASE);
    let r = wait_terminal(&runs, "victim", &[&b]).await;
    let st = r.status.unwrap();
    assert_eq!(st.phase, Some(RunPhase::Succeeded), "{st:#?}");
    assert_eq!(
        st.attempt,
        Some(2),
        "a new attempt, not attempt 1 again: {st:#?}"
    );
    assert_eq!(st.outputs.get("attempt").map(String::as_str), Some("2"));
    assert_eq!(st.attempts.len(), 1, "{st:#?}");
    let lost = &st.attempts[0];
    assert_eq!(lost.attempt, 1);
    assert_eq!(lost.phase, Some(RunPhase::Failed));
    assert!(
        lost.message
            .as_deref()
            .is_some_and(|m| m.contains("no longer knows the run")),
        "{lost:#?}"
    );
    assert_eq!(
        lines(&counter),
        ["1", "2"],
        "attempt 1 ran once, then attempt 2"
    );
    b.terminate();
    b.wait(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_pod_was_deleted_while_no_controller_ran_is_retried_on_another_pod() {
    let cluster = Cluster::shared_bare();
    let client = cluster.client();
    let ns = cluster.namespace("adopt-gone").await;
    let a = spawn(cluster, &ns, FAST_LEASE);
    create_pool(&client, &ns, "p", 1, 2).await;
    wait_pool_ready(&client, &ns, "p", 1, &[&a]).await;

    let dir = TempDir::new("adopt-gone");
    let counter = dir.path().join("executions");
    let script = format!(
        "echo \"$KRT_ATTEMPT\" >> '{c}'\nif [ \"$KRT_ATTEMPT\" = 1 ]; then sleep 300; fi",
        c = counter.display()
    );
    let runs: Api<Run> = Api::namespaced(client.clone(), &ns);
    runs.create(
        &PostParams::default(),
        &run_obj(
            &ns,
            "orphan",
            "p",
            &script,
            json!({"retry": {"limit": 1, "backoff": "100ms"}}),
        ),
    )
    .await
    .unwrap();
    let pod = wait_for("the Run to run", WAIT, &[&a], || async {
        let r = runs.get("orphan").await.ok()?;
        (phase(&r) == Some(RunPhase::Running) && !lines(&counter).is_empty())
            .then(|| r.status.unwrap().pod.unwrap())
    })
    .await;

    a.kill();
    assert!(a.wait(Duration::from_secs(20)).await.is_some());
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &ns);
    pods.delete(&pod, &kube::api::DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    wait_for("the pod to be gone", WAIT, &[&a], || async {
        pods.get_opt(&pod)
            .await
            .ok()
            .and_then(|p| p.is_none().then_some(()))
    })
    .await;

    let b = spawn(cluster, &ns, FAST_LEASE);
    let r = wait_terminal(&runs, "orphan", &[&b]).await;
    let st = r.status.unwrap();
    assert_eq!(st.phase, Some(RunPhase::Succeeded), "{st:#?}");
    assert_eq!(st.attempt, Some(2), "{st:#?}");
    assert_ne!(st.pod.as_deref(), Some(pod.as_str()), "{st:#?}");
    assert_eq!(st.attempts.len(), 1, "{st:#?}");
    assert!(
        st.attempts[0]
            .message
            .as_deref()
            .is_some_and(|m| m.contains("is gone")),
        "{st:#?}"
    );
    assert_eq!(lines(&counter), ["1", "2"]);
    b.terminate();
    b.wait(Duration::from_secs(20)).await;
}
