//! Two controller replicas: one leads, the other stands by and takes over.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kruntimes_crds::{Run, RunPhase};
use kruntimes_tests::TempDir;
use kruntimes_tests::cluster::Cluster;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_dispatches_and_a_standby_takes_over_when_it_is_killed() {
    let cluster = Cluster::shared_bare();
    let client = cluster.client();
    let ns = cluster.namespace("ha-kill").await;
    let a = spawn(cluster, &ns, FAST_LEASE);
    wait_leading(&client, &ns, &a, WAIT).await;
    let b = spawn(cluster, &ns, FAST_LEASE);
    wait_for(
        "the second replica to stand by",
        WAIT,
        &[&a, &b],
        || async { b.log().contains("standing by").then_some(()) },
    )
    .await;

    create_pool(&client, &ns, "p", 1, 4).await;
    wait_pool_ready(&client, &ns, "p", 1, &[&a, &b]).await;
    let runs: Api<Run> = Api::namespaced(client.clone(), &ns);
    let dir = TempDir::new("ha-kill");
    let counter = dir.path().join("executions");
    let script = format!("echo \"$KRT_JOB\" >> '{}'", counter.display());
    let batch = |names: Vec<String>| {
        let (runs, ns, script) = (runs.clone(), ns.clone(), script.clone());
        async move {
            for name in &names {
                runs.create(
                    &PostParams::default(),
                    &run_obj(&ns, name, "p", &script, json!({})),
                )
                .await
                .unwrap();
            }
            names
        }
    };
    let first = batch((0..6).map(|i| format!("before-{i}")).collect()).await;
    for name in &first {
        let r = wait_terminal(&runs, name, &[&a, &b]).await;
        let st = r.status.unwrap();
        assert_eq!(st.phase, Some(RunPhase::Succeeded), "{name}: {st:#?}");
        assert_eq!(st.attempt, Some(1), "{name}: {st:#?}");
    }

    // Only the leader dispatched: the standby has run nothing, and each Run
    // executed once.
    let mut executed = lines(&counter);
    executed.sort();
    assert_eq!(executed, first, "every Run executed exactly once");
    assert_eq!(
        a.metric("krt_controller_runs_total{result=\"Succeeded\"}")
            .await,
        Some(6.0),
        "{}",
        a.metrics().await.unwrap_or_default()
    );
    let standby = b.metrics().await.expect("the standby serves /metrics");
    assert!(
        standby.contains("krt_controller_leader 0"),
        "the standby says it does not lead:\n{standby}"
    );
    assert!(
        !standby.contains("krt_controller_runs_total{"),
        "the standby dispatched nothing:\n{standby}"
    );
    assert_eq!(
        lease_holder(&client, &ns).await.as_deref(),
        Some(a.identity())
    );

    // The leader crashes: the standby takes over.
    a.kill();
    let t0 = std::time::Instant::now();
    assert!(
        a.wait(Duration::from_secs(20)).await.is_some(),
        "the killed leader exited"
    );
    wait_leading(&client, &ns, &b, 2 * FAST_BOUND + Duration::from_secs(20)).await;
    eprintln!(
        "failover after SIGKILL: {:.1}s (bound {:.1}s)",
        t0.elapsed().as_secs_f64(),
        FAST_BOUND.as_secs_f64()
    );
    let lease: Lease = Api::namespaced(client.clone(), &ns)
        .get(LEASE)
        .await
        .unwrap();
    assert_eq!(
        lease.spec.as_ref().and_then(|s| s.lease_transitions),
        Some(1),
        "one change of holder: {lease:#?}"
    );
    assert!(
        b.log().contains("became the leader"),
        "{}",
        tail(&b.log(), 20)
    );

    // The new leader dispatches new Runs, once each.
    let second = batch((0..3).map(|i| format!("after-{i}")).collect()).await;
    for name in &second {
        let r = wait_terminal(&runs, name, &[&b]).await;
        let st = r.status.unwrap();
        assert_eq!(st.phase, Some(RunPhase::Succeeded), "{name}: {st:#?}");
        assert_eq!(st.attempt, Some(1), "{name}: {st:#?}");
    }
    let mut executed = lines(&counter);
    executed.sort();
    let mut expected = [first, second].concat();
    expected.sort();
    assert_eq!(executed, expected, "every Run executed exactly once");
    assert_eq!(
        b.metric("krt_controller_runs_total{result=\"Succeeded\"}")
            .await,
        Some(3.0)
    );
    b.terminate();
    b.wait(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_leader_releases_the_lease_and_the_standby_takes_over_before_it_expires() {
    let cluster = Cluster::shared_bare();
    let client = cluster.client();
    let ns = cluster.namespace("ha-term").await;
    // A lease that would take a minute to expire: a takeover within the
    // deadline below is only possible because the leader released it.
    let slow = &[
        "--lease-duration=60s",
        "--renew-deadline=40s",
        "--retry-period=500ms",
    ];
    let a = spawn(cluster, &ns, slow);
    wait_leading(&client, &ns, &a, WAIT).await;
    let b = spawn(cluster, &ns, slow);
    wait_for(
        "the second replica to stand by",
        WAIT,
        &[&a, &b],
        || async { b.log().contains("standing by").then_some(()) },
    )
    .await;

    a.terminate();
    let exit = a.wait(Duration::from_secs(30)).await;
    assert_eq!(
        exit.as_deref(),
        Some("exit status: 0"),
        "a graceful exit\n{}",
        a.log()
    );
    assert!(
        a.log().contains("released the lease"),
        "{}",
        tail(&a.log(), 20)
    );
    wait_leading(&client, &ns, &b, Duration::from_secs(30)).await;

    // The new leader works: it brings up a pool and runs a Run.
    create_pool(&client, &ns, "p", 1, 1).await;
    wait_pool_ready(&client, &ns, "p", 1, &[&b]).await;
    let runs: Api<Run> = Api::namespaced(client.clone(), &ns);
    runs.create(
        &PostParams::default(),
        &run_obj(&ns, "after", "p", "true", json!({})),
    )
    .await
    .unwrap();
    let r = wait_terminal(&runs, "after", &[&b]).await;
    assert_eq!(phase(&r), Some(RunPhase::Succeeded), "{:#?}", r.status);
    b.terminate();
    b.wait(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_lease_is_taken_stops_and_exits_non_zero() {
    let cluster = Cluster::shared_bare();
    let client = cluster.client();
    let ns = cluster.namespace("ha-lost").await;
    let a = spawn(cluster, &ns, FAST_LEASE);
    wait_leading(&client, &ns, &a, WAIT).await;

    // Another holder appears (as after a network partition in which the
    // lease expired and a standby took it).
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let mut lease = leases.get(LEASE).await.unwrap();
    let spec = lease.spec.as_mut().unwrap();
    spec.holder_identity = Some("intruder".into());
    spec.lease_duration_seconds = Some(300);
    leases
        .replace(LEASE, &PostParams::default(), &lease)
        .await
        .unwrap();

    let exit = wait_for("the old leader to exit", WAIT, &[&a], || async {
        a.exited()
    })
    .await;
    assert_eq!(exit, "exit status: 4", "{}", a.log());
    assert!(a.log().contains("lost the lease"), "{}", a.log());
    assert_eq!(
        lease_holder(&client, &ns).await.as_deref(),
        Some("intruder"),
        "the old leader did not take the lease back"
    );
}
