//! Cluster mode against real Kubernetes 1.20 components (etcd,
//! kube-apiserver, kube-controller-manager) with the test node playing the
//! kubelet, the real `krt controller`, real runtimes and a real S3 server.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kruntimes_crds::{Run, RunPhase, RuntimePool};
use kruntimes_tests::cluster::{Cluster, create_pool, run_obj};
use kruntimes_tests::{http, poll_until, stderr, stdout, tail};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(90);

/// Polls `check` until it returns `Some`, or panics after `WAIT` naming what
/// it waited for, with the controller's log.
async fn wait_for<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    poll_until(what, WAIT, check, || {
        format!(
            "\n--- controller log (tail) ---\n{}",
            tail(&Cluster::shared().controller_log(), 60)
        )
    })
    .await
}

async fn wait_pool_ready(
    client: &Client,
    ns: &str,
    name: &str,
    replicas: i32,
    slots: u32,
) -> RuntimePool {
    let pools: Api<RuntimePool> = Api::namespaced(client.clone(), ns);
    wait_for(
        &format!("pool {ns}/{name} to have {replicas} ready replicas"),
        || async {
            let p = pools.get(name).await.ok()?;
            let st = p.status.as_ref()?;
            let ready = st
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            (ready && st.ready_replicas == replicas && st.total_slots == replicas as u32 * slots)
                .then_some(p)
        },
    )
    .await
}

fn phase(r: &Run) -> Option<RunPhase> {
    r.status.as_ref().and_then(|s| s.phase)
}

fn terminal(r: &Run) -> bool {
    matches!(
        phase(r),
        Some(RunPhase::Succeeded | RunPhase::Failed | RunPhase::TimedOut | RunPhase::Cancelled)
    )
}

async fn wait_terminal(runs: &Api<Run>, name: &str) -> Run {
    wait_for(&format!("Run {name} to finish"), || async {
        let r = runs.get(name).await.ok()?;
        terminal(&r).then_some(r)
    })
    .await
}

fn pid_alive(pid: i32) -> bool {
    // Signal 0 checks existence; a zombie is as good as gone.
    let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
    alive
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_becomes_ready_and_twenty_runs_pass_outputs_and_artifacts() {
    let cluster = Cluster::shared();
    let client = cluster.client();
    let ns = cluster.namespace("runs").await;
    create_pool(&client, &ns, "p", 2, 4).await;
    let pool = wait_pool_ready(&client, &ns, "p", 2, 4).await;

    // The pool owns its Deployment and token Secret.
    let uid = pool.metadata.uid.clone().unwrap();
    let dep: Deployment = Api::namespaced(client.clone(), &ns)
        .get("krt-p")
        .await
        .unwrap();
    assert!(
        dep.owner_references()
            .iter()
            .any(|o| o.uid == uid && o.controller == Some(true))
    );
    let secret: Secret = Api::namespaced(client.clone(), &ns)
        .get("krt-p")
        .await
        .unwrap();
    assert!(secret.owner_references().iter().any(|o| o.uid == uid));
    let token = &secret.data.as_ref().unwrap()["token"].0;
    assert!(token.len() >= 32, "a generated token of 256 bits");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pods = pods
        .list(&ListParams::default().labels("kruntimes.io/pool=p"))
        .await
        .unwrap();
    assert_eq!(pods.items.len(), 2);

    let runs: Api<Run> = Api::namespaced(client.clone(), &ns);
    for i in 0..20 {
        let script = format!(
            "mkdir -p out && echo \"payload {i}\" > out/result.txt\necho \"n={i}\" >> \"$KRT_OUTPUT\"\necho \"attempt=$KRT_ATTEMPT\" >> \"$KRT_OUTPUT\""
        );
        let r = run_obj(
            &ns,
            &format!("r{i}"),
            "p",
            &script,
            json!({"artifacts": {"out": "out"}, "outputs": ["n"]}),
        );
        runs.create(&PostParams::default(), &r).await.unwrap();
    }
    let mut digests = BTreeMap::new();
    let mut used_pods = std::collections::BTreeSet::new();
    for i in 0..20 {
        let r = wait_terminal(&runs, &format!("r{i}")).await;
        let st = r.status.clone().unwrap();
        assert_eq!(st.phase, Some(RunPhase::Succeeded), "r{i}: {st:#?}");
        assert_eq!(
            st.outputs.get("n").map(String::as_str),
            Some(i.to_string().as_str())
        );
        assert_eq!(st.attempt, Some(1));
        assert_eq!(st.exit_code, Some(0));
        assert!(st.start_time.is_some() && st.completion_time.is_some());
        assert!(
            st.log_digest
                .as_deref()
                .is_some_and(|d| d.starts_with("sha256:"))
        );
        assert!(
            st.conditions
                .iter()
                .any(|c| c.type_ == "Complete" && c.status == "True")
        );
        let d = st
            .artifacts
            .get("out")
            .cloned()
            .unwrap_or_else(|| panic!("r{i} has no artifact: {st:#?}"));
        assert!(d.starts_with("sha256:"));
        digests.insert(i, d);
        used_pods.insert(st.pod.unwrap());
    }
    assert_eq!(used_pods.len(), 2, "Runs are spread over both pods");
    // Distinct contents, distinct trees.
    let distinct: std::collections::BTreeSet<_> = digests.values().collect();
    assert_eq!(distinct.len(), 20);

    // An artifact travels through the store to another Run.
    let consumer = run_obj(
        &ns,
        "consumer",
        "p",
        "echo \"got=$(cat in/out/result.txt)\" >> \"$KRT_OUTPUT\"",
        json!({"inputs": [{"name": "r7.out", "digest": digests[&7], "path": "in"}]}),
    );
    runs.create(&PostParams::default(), &consumer)
        .await
        .unwrap();
    let r = wait_terminal(&runs, "consumer").await;
    assert_eq!(
        r.status
            .as_ref()
            .unwrap()
            .outputs
            .get("got")
            .map(String::as_str),
        Some("payload 7"),
        "{:#?}",
        r.status
    );

    // Every transition is reported in Events (short Runs' transitions are
    // folded into one Event).
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
    let notes = wait_for("the Events of r0", || async {
        let all = events.list(&ListParams::default()).await.ok()?;
        let notes: Vec<String> = all
            .items
            .iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("r0"))
            .map(|e| {
                format!(
                    "{}: {}",
                    e.reason.clone().unwrap_or_default(),
                    e.note.clone().unwrap_or_default()
                )
            })
            .collect();
        let text = notes.join("\n");
        (text.contains("assigned to pod")
            && text.contains("started on pod")
            && text.contains("Succeeded"))
        .then_some(text)
    })
    .await;
    assert!(notes.contains("attempt 1"), "{notes}");

    // kubectl shows the printer columns.
    let out = cluster.kubectl(&["get", "runs", "-n", &ns]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let header = text.lines().next().unwrap();
    for col in ["NAME", "JOB", "PHASE", "POOL", "POD", "ATTEMPT", "AGE"] {
        assert!(header.contains(col), "missing column {col}: {text}");
    }
    assert!(
        text.lines().filter(|l| l.contains("Succeeded")).count() >= 21,
        "{text}"
    );
    let out = cluster.kubectl(&["get", "runtimepools", "-n", &ns]);
    assert!(stdout(&out).contains("debian:bookworm"), "{}", stdout(&out));

    // The controller serves metrics and health.
    let addr = cluster.controller_metrics_addr().unwrap();
    let m = tokio::task::spawn_blocking(move || http::request(addr, "GET", "/metrics", None, None))
        .await
        .unwrap();
    assert_eq!(m.status, 200);
    assert!(
        m.body
            .contains("krt_controller_dispatch_latency_seconds_bucket"),
        "{}",
        m.body
    );
    assert!(
        m.body
            .contains("krt_controller_runs_total{result=\"Succeeded\"}"),
        "{}",
        m.body
    );
    // It elected itself leader (the Lease in kruntimes-system).
    assert!(m.body.contains("krt_controller_leader 1"), "{}", m.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_beyond_the_free_slots_wait_pending_then_complete() {
    let cluster = Cluster::shared();
    let client = cluster.client();
    let ns = cluster.namespace("queue").await;
    create_pool(&client, &ns, "one", 1, 1).await;
    wait_pool_ready(&client, &ns, "one", 1, 1).await;
    let runs: Api<Run> = Api::namespaced(client.clone(), &ns);
    let gate = cluster.dir().join(format!("gate-{ns}"));
    let _ = std::fs::remove_file(&gate);
    // The first Run holds the only slot until the gate file exists.
    let hold = format!("while [ ! -e '{}' ]; do sleep 0.05; done", gate.display());
    runs.create(
        &PostParams::default(),
        &run_obj(&ns, "first", "one", &hold, json!({})),
    )
    .await
    .unwrap();
    wait_for("the first Run to run", || async {
        let r = runs.get("first").await.ok()?;
        (phase(&r) == Some(RunPhase::Running)).then_some(())
    })
    .await;
    // The pool reports the busy slot, counted from the controller's own
    // assignments.
    let pools: Api<RuntimePool> = Api::namespaced(client.clone(), &ns);
    wait_for("the pool to report 1 busy slot", || async {
        let p = pools.get("one").await.ok()?;
        (p.status?.busy_slots == 1).then_some(())
    })
    .await;
    for name in ["second", "third"] {
        runs.create(
            &PostParams::default(),
            &run_obj(&ns, name, "one", "true", json!({})),
        )
        .await
        .unwrap();
    }
    for name in ["second", "third"] {
        let r = wait_for(&format!("{name} to wait Pending with a reason"), || async {
            let r = runs.get(name).await.ok()?;
            let c = r
                .status
                .as_ref()?
                .conditions
                .iter()
                .find(|c| c.type_ == "Scheduled")?
                .clone();
            (phase(&r) == Some(RunPhase::Pending) && c.status == "False").then_some(c)
        })
        .await;
        assert_eq!(r.reason, "NoFreeSlot");
        assert!(r.message.contains("busy"), "{}", r.message);
    }
    std::fs::write(&gate, "").unwrap();
    for name in ["first", "second", "third"] {
        let r = wait_terminal(&runs, name).await;
        assert_eq!(
            phase(&r),
            Some(RunPhase::Succeeded),
            "{name}: {:#?}",
            r.status
        );
    }
    let _ = std::fs::remove_file(&gate);
    wait_for("the pool to report 0 busy slots", || async {
        let p = pools.get("one").await.ok()?;
        (p.status?.busy_slots == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_runtime_dies_is_retried_on_the_other_pod() {
    let cluster = Cluster::shared();
    let client = cluster.client();
    let ns = cluster.namespace("kill").await;
    create_pool(&client, &ns, "p", 2, 2).await;
    wait_pool_ready(&client, &ns, "p", 2, 2).await;
    let runs: Api<Run> = Api::namespaced(client.clone(), &ns);
    let script = "if [ \"$KRT_ATTEMPT\" = 1 ]; then sleep 300; fi\necho \"done=$KRT_ATTEMPT\" >> \"$KRT_OUTPUT\"";
    runs.create(
        &PostParams::default(),
        &run_obj(
            &ns,
            "victim",
            "p",
            script,
            json!({"retry": {"limit": 2, "backoff": "100ms"}}),
        ),
    )
    .await
    .unwrap();
    let pod = wait_for("the Run to run", || async {
        let r = runs.get("victim").await.ok()?;
        (phase(&r) == Some(RunPhase::Running)).then(|| r.status.unwrap().pod.unwrap())
    })
    .await;
    assert!(
        cluster.kill_container(&ns, &pod),
        "the runtime of {pod} was running"
    );
    let r = wait_terminal(&runs, "victim").await;
    let st = r.status.unwrap();
    assert_eq!(st.phase, Some(RunPhase::Succeeded), "{st:#?}");
    assert_eq!(st.attempt, Some(2));
    assert_eq!(st.outputs.get("done").map(String::as_str), Some("2"));
    assert_ne!(
        st.pod.as_deref(),
        Some(pod.as_str()),
        "retried on the other pod"
    );
    assert_eq!(st.attempts.len(), 1, "{st:#?}");
    let first = &st.attempts[0];
    assert_eq!(first.attempt, 1);
    assert_eq!(first.pod.as_deref(), Some(pod.as_str()));
    assert_eq!(first.phase, Some(RunPhase::Failed));
    assert!(
        first
            .message
            .as_deref()
            .is_some_and(|m| m.contains("runtime")),
        "{first:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_long_run_ends_it_cancelled_with_no_process_left() {
    let cluster = Cluster::shared();
    let client = cluster.client();
    let ns = cluster.namespace("cancel").await;
    create_pool(&client, &ns, "p", 1, 2).await;
    wait_pool_ready(&client, &ns, "p", 1, 2).await;
    let runs: Api<Run> = Api::namespaced(client.clone(), &ns);
    let pids = cluster.dir().join(format!("pids-{ns}"));
    let script = format!(
        "sleep 300 & echo $! > '{p}.bg'\necho $$ > '{p}.sh'\nwait",
        p = pids.display()
    );
    runs.create(
        &PostParams::default(),
        &run_obj(&ns, "long", "p", &script, json!({})),
    )
    .await
    .unwrap();
    let (sh, bg) = wait_for("the step to write its pids", || async {
        let sh = std::fs::read_to_string(pids.with_extension("sh")).ok()?;
        let bg = std::fs::read_to_string(pids.with_extension("bg")).ok()?;
        Some((
            sh.trim().parse::<i32>().ok()?,
            bg.trim().parse::<i32>().ok()?,
        ))
    })
    .await;
    assert!(pid_alive(sh) && pid_alive(bg));
    runs.patch(
        "long",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"cancel": true}})),
    )
    .await
    .unwrap();
    let r = wait_terminal(&runs, "long").await;
    assert_eq!(phase(&r), Some(RunPhase::Cancelled), "{:#?}", r.status);
    wait_for("the step's processes to be gone", || async {
        (!pid_alive(sh) && !pid_alive(bg)).then_some(())
    })
    .await;

    // A pending Run cancelled before it starts never runs.
    let mut queued = run_obj(&ns, "never", "missing-pool", "true", json!({}));
    queued.spec.cancel = false;
    runs.create(&PostParams::default(), &queued).await.unwrap();
    wait_for("the Run to wait for its missing pool", || async {
        let r = runs.get("never").await.ok()?;
        let c = r
            .status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == "Scheduled")?
            .clone();
        (c.reason == "PoolNotFound").then_some(())
    })
    .await;
    runs.patch(
        "never",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"cancel": true}})),
    )
    .await
    .unwrap();
    let r = wait_terminal(&runs, "never").await;
    assert_eq!(phase(&r), Some(RunPhase::Cancelled));
    assert!(r.status.unwrap().start_time.is_none());
    for ext in ["sh", "bg"] {
        let _ = std::fs::remove_file(pids.with_extension(ext));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_refuses_requests_without_the_pool_token() {
    let cluster = Cluster::shared();
    let client = cluster.client();
    let ns = cluster.namespace("auth").await;
    create_pool(&client, &ns, "p", 1, 1).await;
    wait_pool_ready(&client, &ns, "p", 1, 1).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod = pods
        .list(&ListParams::default().labels("kruntimes.io/pool=p"))
        .await
        .unwrap()
        .items
        .remove(0);
    let ip = pod.status.unwrap().pod_ip.unwrap();
    let addr: std::net::SocketAddr = format!("{ip}:7070").parse().unwrap();
    let body = r#"{"id":"x","job":"x","steps":[{"run":"touch /tmp/krt-should-not-exist"}]}"#;
    let (health, cap, post, wrong) = tokio::task::spawn_blocking(move || {
        (
            http::request(addr, "GET", "/v1/health", None, None),
            http::request(addr, "GET", "/v1/capacity", None, None),
            http::request(addr, "POST", "/v1/runs", None, Some(body)),
            http::request(
                addr,
                "GET",
                "/v1/capacity",
                Some("not-the-token-at-all"),
                None,
            ),
        )
    })
    .await
    .unwrap();
    assert_eq!(health.status, 200);
    assert_eq!(cap.status, 401, "{}", cap.body);
    assert_eq!(post.status, 401, "{}", post.body);
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    // With the pool's token it answers.
    let secret: Secret = Api::namespaced(client.clone(), &ns)
        .get("krt-p")
        .await
        .unwrap();
    let token = String::from_utf8(secret.data.unwrap()["token"].0.clone()).unwrap();
    let ok = tokio::task::spawn_blocking(move || {
        http::request(addr, "GET", "/v1/capacity", Some(&token), None)
    })
    .await
    .unwrap();
    assert_eq!(ok.status, 200, "{}", ok.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_pool_scales_down_and_deleting_it_cascades() {
    let cluster = Cluster::shared();
    let client = cluster.client();
    let ns = cluster.namespace("scale").await;
    create_pool(&client, &ns, "p", 2, 2).await;
    wait_pool_ready(&client, &ns, "p", 2, 2).await;
    let pools: Api<RuntimePool> = Api::namespaced(client.clone(), &ns);
    pools
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await
        .unwrap();
    let p = wait_pool_ready(&client, &ns, "p", 1, 2).await;
    assert_eq!(p.status.unwrap().observed_generation, p.metadata.generation);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    wait_for("one runtime pod left", || async {
        let l = pods
            .list(&ListParams::default().labels("kruntimes.io/pool=p"))
            .await
            .ok()?;
        (l.items.len() == 1).then_some(())
    })
    .await;

    pools
        .delete("p", &DeleteParams::background())
        .await
        .unwrap();
    let deps: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    wait_for(
        "the Deployment, Secret and pods to be garbage-collected",
        || async {
            let d = deps.get_opt("krt-p").await.ok()?;
            let s = secrets.get_opt("krt-p").await.ok()?;
            let l = pods
                .list(&ListParams::default().labels("kruntimes.io/pool=p"))
                .await
                .ok()?;
            (d.is_none() && s.is_none() && l.items.is_empty()).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deploy_example_applies_to_a_cluster() {
    // The CRDs in the example are the generated ones.
    let example =
        std::fs::read_to_string(kruntimes_tests::repo_root().join("examples/deploy/00-crds.yaml"))
            .unwrap();
    assert_eq!(
        example,
        kruntimes_crds::crds_yaml(),
        "run `krt crds > examples/deploy/00-crds.yaml`"
    );
    let cluster = Cluster::shared();
    let dir = kruntimes_tests::repo_root().join("examples/deploy");
    let out = cluster.kubectl(&["apply", "-f", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "kubectl apply failed:\n{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let out = cluster.kubectl(&["apply", "-f", dir.join("runs/hello.yaml").to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The example's ServiceAccount may do what the controller needs, no more.
    let sa = "system:serviceaccount:kruntimes-system:kruntimes-controller";
    for (verb, resource, allowed) in [
        ("patch", "runs.kruntimes.io/status", true),
        ("watch", "pods", true),
        ("create", "deployments.apps", true),
        ("create", "pods", false),
        ("delete", "runs.kruntimes.io", false),
        ("get", "nodes", false),
    ] {
        let out = cluster.kubectl(&["auth", "can-i", verb, resource, "--as", sa, "-A"]);
        let answer = stdout(&out).trim().to_string();
        assert_eq!(
            answer == "yes",
            allowed,
            "{verb} {resource}: {answer} {}",
            stderr(&out)
        );
    }
    // Leader election: its Lease in its own namespace, nowhere else.
    for (verb, ns, allowed) in [
        ("get", "kruntimes-system", true),
        ("create", "kruntimes-system", true),
        ("update", "kruntimes-system", true),
        ("delete", "kruntimes-system", false),
        ("update", "ci", false),
    ] {
        let out = cluster.kubectl(&[
            "auth",
            "can-i",
            verb,
            "leases.coordination.k8s.io",
            "--as",
            sa,
            "-n",
            ns,
        ]);
        let answer = stdout(&out).trim().to_string();
        assert_eq!(
            answer == "yes",
            allowed,
            "{verb} leases in {ns}: {answer} {}",
            stderr(&out)
        );
    }
}
