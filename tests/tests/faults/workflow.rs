//! A controller killed in the middle of a Workflow, and its replacement:
//! the Workflow completes, every job has exactly one Run (deterministic
//! names), and no step executes twice.

use std::time::Duration;

use kruntimes_crds::{Workflow, WorkflowPhase};
use kruntimes_tests::TempDir;
use kruntimes_tests::cluster::Cluster;
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::json;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_survives_its_controller_being_killed_twice_and_runs_each_step_once() {
    let cluster = Cluster::shared_bare();
    let client = cluster.client();
    let ns = cluster.namespace("wf-restart").await;
    let a = spawn(cluster, &ns, FAST_LEASE);
    create_pool(&client, &ns, "default", 1, 4).await;
    wait_pool_ready(&client, &ns, "default", 1, &[&a]).await;

    let dir = TempDir::new("wf-restart");
    let counter = dir.path().join("executions");
    let gate = dir.path().join("gate");
    let step = |name: &str, wait: bool| {
        let mut s = format!("echo {name} >> '{}'\n", counter.display());
        if wait {
            s.push_str(&format!(
                "while [ ! -e '{}' ]; do sleep 0.05; done\n",
                gate.display()
            ));
        }
        s.push_str(&format!("echo \"who={name}\" >> \"$KRT_OUTPUT\""));
        json!({"steps": [{"run": s}]})
    };
    let mut jobs = serde_json::Map::new();
    jobs.insert("first".into(), step("first", true));
    for (name, needs) in [
        ("left", vec!["first"]),
        ("right", vec!["first"]),
        ("middle", vec!["first"]),
        ("join", vec!["left", "right", "middle"]),
    ] {
        let mut j = step(name, false);
        j["needs"] = json!(needs);
        jobs.insert(name.into(), j);
    }
    let wf: Workflow = serde_json::from_value(json!({
        "apiVersion": "kruntimes.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": "restart", "namespace": ns},
        "spec": {"jobs": jobs},
    }))
    .unwrap();
    let wfs: Api<Workflow> = Api::namespaced(client.clone(), &ns);
    wfs.create(&PostParams::default(), &wf).await.unwrap();

    // Kill the controller while `first` runs (its Run says so: a
    // controller that dies between starting a step and recording that it
    // did can start it again; that window is documented) ...
    let runs: Api<Run> = Api::namespaced(client.clone(), &ns);
    wait_for("the first job to run", WAIT, &[&a], || async {
        let r = runs.get("restart-first").await.ok()?;
        (phase(&r) == Some(RunPhase::Running) && !lines(&counter).is_empty()).then_some(())
    })
    .await;
    a.kill();
    assert!(a.wait(Duration::from_secs(20)).await.is_some());
    // ... and its successor right after the dependents became ready.
    let b = spawn(cluster, &ns, FAST_LEASE);
    wait_for(
        "the new controller to adopt `first`",
        WAIT,
        &[&b],
        || async { b.log().contains("adopting a Run in flight").then_some(()) },
    )
    .await;
    std::fs::write(&gate, "").unwrap();
    wait_for("a dependent to start", WAIT, &[&b], || async {
        (lines(&counter).len() > 1).then_some(())
    })
    .await;
    b.kill();
    assert!(b.wait(Duration::from_secs(20)).await.is_some());
    let c = spawn(cluster, &ns, FAST_LEASE);

    let done = wait_for("the Workflow to finish", WAIT, &[&b, &c], || async {
        let w = wfs.get("restart").await.ok()?;
        let phase = w.status.as_ref()?.phase?;
        matches!(
            phase,
            WorkflowPhase::Succeeded | WorkflowPhase::Failed | WorkflowPhase::Cancelled
        )
        .then_some(w)
    })
    .await;
    let st = done.status.unwrap();
    assert_eq!(st.phase, Some(WorkflowPhase::Succeeded), "{st:#?}");
    assert_eq!(st.progress.as_deref(), Some("5/5"));
    let mut ran = lines(&counter);
    ran.sort();
    assert_eq!(
        ran,
        ["first", "join", "left", "middle", "right"],
        "every step executed exactly once"
    );
    let mut names: Vec<String> = runs
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|r| kube::ResourceExt::name_any(&r))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "restart-first",
            "restart-join",
            "restart-left",
            "restart-middle",
            "restart-right"
        ],
        "one Run per job"
    );
    for (job, js) in &st.jobs {
        assert_eq!(js.attempts, 1, "{job}: {js:#?}");
        assert_eq!(js.outputs.get("who"), Some(job), "{job}: {js:#?}");
    }
    c.terminate();
    c.wait(Duration::from_secs(20)).await;
}
