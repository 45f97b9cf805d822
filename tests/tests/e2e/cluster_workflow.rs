//! Workflows on the test cluster: `krt submit` from a source tree, the
//! Workflow controller expanding jobs into Runs, the step cache, invalid
//! Workflows, cancel, faults of runtime pods, live logs of a running job in
//! `krt submit --wait` and `krt logs -f`, and `krt replay` of a cluster job
//! on this machine.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use kruntimes_crds::{Run, RunPhase, RuntimePool, Workflow, WorkflowPhase};
use kruntimes_tests::cluster::{Cluster, create_pool, is_credential};
use kruntimes_tests::{TempDir, krt_bin, poll_until, repo_root, stderr, stdout, tail};
use kube::api::ListParams;
use kube::{Api, Client};

const WAIT: Duration = Duration::from_secs(120);

async fn wait_for<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    poll_until(what, WAIT, check, || {
        format!(
            "\n--- controller log (tail) ---\n{}",
            tail(&Cluster::shared().controller_log(), 80)
        )
    })
    .await
}

/// A namespace with a ready pool `default` (`replicas` pods of `slots`
/// slots) and the cluster's store ConfigMap in place.
async fn setup(prefix: &str, replicas: i32, slots: u32) -> (Client, String) {
    let cluster = Cluster::shared();
    let client = cluster.client();
    cluster.apply_store_config(&client).await;
    let ns = cluster.namespace(prefix).await;
    create_pool(&client, &ns, "default", replicas, slots).await;
    wait_pool_ready(&client, &ns, "default", replicas).await;
    (client, ns)
}

async fn wait_pool_ready(client: &Client, ns: &str, name: &str, replicas: i32) {
    let pools: Api<RuntimePool> = Api::namespaced(client.clone(), ns);
    wait_for(&format!("pool {ns}/{name} to be ready"), || async {
        let p = pools.get(name).await.ok()?;
        let st = p.status.as_ref()?;
        (st.ready_replicas == replicas).then_some(())
    })
    .await;
}

/// Runs `krt` against the test cluster from `dir`: KUBECONFIG set, store
/// credentials in the environment (the URL comes from the ConfigMap), no
/// local store settings.
fn krt_cluster(dir: &Path, args: &[&str]) -> Output {
    krt_cluster_cmd(dir, args).output().expect("krt runs")
}

/// The command [`krt_cluster`] runs, to spawn it instead.
fn krt_cluster_cmd(dir: &Path, args: &[&str]) -> Command {
    let cluster = Cluster::shared();
    let mut cmd = Command::new(krt_bin());
    cmd.args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env("KUBECONFIG", cluster.kubeconfig_path())
        .env_remove("KRT_COLOR")
        .env_remove("KRT_STORE")
        .env_remove("KRT_NAMESPACE")
        .env_remove("KRT_CONTEXT");
    for (k, v) in cluster.store_env() {
        if is_credential(k) {
            cmd.env(k, v);
        } else {
            cmd.env_remove(k);
        }
    }
    cmd
}

fn show(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- controller log (tail) ---\n{}",
        o.status.code(),
        stdout(o),
        stderr(o),
        tail(&Cluster::shared().controller_log(), 60)
    )
}

/// (node, result, outputs) of every job of a `--output json` report.
fn results(report: &serde_json::Value) -> BTreeMap<String, (String, serde_json::Value)> {
    report["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| {
            (
                j["node"].as_str().unwrap().to_string(),
                (
                    j["result"].as_str().unwrap().to_string(),
                    j["outputs"].clone(),
                ),
            )
        })
        .collect()
}

fn json_of(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("JSON report: {e}\n{}", show(o)))
}

async fn runs_of(client: &Client, ns: &str, wf: &str) -> Vec<Run> {
    let api: Api<Run> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default().labels(&format!("kruntimes.io/workflow={wf}")))
        .await
        .unwrap()
        .items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_succeeds_in_the_cluster_like_it_does_embedded() {
    let (_client, ns) = setup("examples", 2, 4).await;
    let src = TempDir::new("wf-examples-src");
    std::fs::write(src.path().join("README"), "examples\n").unwrap();
    let store = TempDir::new("wf-examples-store");
    // Every example that needs no host-only tool (rust-crate needs cargo).
    for example in ["hello", "diamond", "matrix", "artifacts", "cleanup"] {
        let file = repo_root().join(format!("examples/{example}.yaml"));
        let file = file.to_str().unwrap();
        let embedded = Command::new(krt_bin())
            .args(["run", file, "--output", "json", "--no-cache", "--store"])
            .arg(store.path())
            .args(["--source"])
            .arg(src.path())
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        let submitted = krt_cluster(
            src.path(),
            &[
                "submit",
                file,
                "-n",
                &ns,
                "--wait",
                "--timeout",
                "2m",
                "--output",
                "json",
            ],
        );
        assert_eq!(
            embedded.status.code(),
            submitted.status.code(),
            "{example}: same exit code\n{}",
            show(&submitted)
        );
        let want = results(&json_of(&embedded));
        let got = results(&json_of(&submitted));
        assert_eq!(
            got,
            want,
            "{example}: same job results and outputs\n{}",
            show(&submitted)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_pass_between_jobs_on_different_pods_and_a_resubmit_is_served_from_the_cache() {
    let cluster = Cluster::shared();
    let (client, ns) = setup("wf-art", 1, 2).await;
    create_pool(&client, &ns, "other", 1, 2).await;
    wait_pool_ready(&client, &ns, "other", 1).await;
    let src = TempDir::new("wf-art-src");
    std::fs::write(src.path().join("message.txt"), "hello through the store\n").unwrap();
    std::fs::write(
        src.path().join("ci.yaml"),
        r#"
jobs:
  make:
    run: |
      mkdir -p out
      sha256sum message.txt > out/sum
      cp message.txt out/
    artifacts: {out: out/*}
  check:
    needs: [make]
    pool: other
    inputs: [make.out]
    steps:
      - run: cat out/message.txt
      - run: sha256sum -c out/sum --strict && echo "lines=$(wc -l < out/message.txt)" >> "$KRT_OUTPUT"
"#,
    )
    .unwrap();
    let first = krt_cluster(
        src.path(),
        &["submit", "ci.yaml", "-n", &ns, "--wait", "--timeout", "2m"],
    );
    assert_eq!(first.status.code(), Some(0), "{}", show(&first));
    let name = stdout(&first).lines().next().unwrap().trim().to_string();
    assert!(
        stdout(&first).contains("hello through the store"),
        "the log of `check` is printed: {}",
        show(&first)
    );
    let runs = runs_of(&client, &ns, &name).await;
    assert_eq!(runs.len(), 2, "one Run per job");
    let pod = |job: &str| {
        runs.iter()
            .find(|r| r.spec.job == job)
            .and_then(|r| r.status.as_ref()?.pod.clone())
            .unwrap()
    };
    assert_ne!(pod("make"), pod("check"), "the jobs ran on different pods");
    let wfs: Api<Workflow> = Api::namespaced(client.clone(), &ns);
    let wf = wfs.get(&name).await.unwrap();
    let st = wf.status.unwrap();
    assert_eq!(st.phase, Some(WorkflowPhase::Succeeded));
    assert_eq!(st.progress.as_deref(), Some("2/2"));
    assert_eq!(
        st.jobs["check"].outputs.get("lines").map(String::as_str),
        Some("1")
    );
    assert!(st.jobs["make"].artifacts.contains_key("out"));

    // Unchanged: every job from the step cache, no Run created.
    let again = krt_cluster(
        src.path(),
        &["submit", "ci.yaml", "-n", &ns, "--wait", "--timeout", "2m"],
    );
    assert_eq!(again.status.code(), Some(0), "{}", show(&again));
    let name2 = stdout(&again).lines().next().unwrap().trim().to_string();
    assert_ne!(name, name2);
    let wf2 = wfs.get(&name2).await.unwrap();
    let st2 = wf2.status.unwrap();
    assert!(
        st2.jobs
            .values()
            .all(|j| j.cached && j.run_names.is_empty()),
        "{st2:#?}"
    );
    assert_eq!(
        st2.jobs["check"].outputs.get("lines").map(String::as_str),
        Some("1")
    );
    assert!(
        runs_of(&client, &ns, &name2).await.is_empty(),
        "no Run for a cached job"
    );

    // A changed source file changes the key of both jobs.
    std::fs::write(src.path().join("message.txt"), "changed\n").unwrap();
    let third = krt_cluster(
        src.path(),
        &["submit", "ci.yaml", "-n", &ns, "--wait", "--timeout", "2m"],
    );
    assert_eq!(third.status.code(), Some(0), "{}", show(&third));
    let name3 = stdout(&third).lines().next().unwrap().trim().to_string();
    assert_eq!(runs_of(&client, &ns, &name3).await.len(), 2);

    // `krt get` lists them; `kubectl get wf` shows phase and progress.
    let got = krt_cluster(src.path(), &["get", "workflows", "-n", &ns]);
    assert_eq!(got.status.code(), Some(0), "{}", show(&got));
    for n in [&name, &name2, &name3] {
        assert!(stdout(&got).contains(n.as_str()), "{}", show(&got));
    }
    let got = krt_cluster(src.path(), &["get", "runs", "-w", &name, "-n", &ns]);
    assert_eq!(got.status.code(), Some(0), "{}", show(&got));
    for run in [format!("{name}-make"), format!("{name}-check")] {
        assert!(stdout(&got).contains(&run), "{}", show(&got));
    }
    assert!(!stdout(&got).contains(&name3), "only the Runs of {name}");
    let got = krt_cluster(src.path(), &["get", "pools", "-n", &ns]);
    assert!(
        stdout(&got).contains("default") && stdout(&got).contains("other"),
        "{}",
        show(&got)
    );
    let k = cluster.kubectl(&["get", "wf", "-n", &ns, &name]);
    let text = String::from_utf8_lossy(&k.stdout);
    assert!(
        text.contains("PHASE") && text.contains("Succeeded") && text.contains("2/2"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_workflow_gets_the_diagnostic_condition_and_no_runs() {
    let cluster = Cluster::shared();
    let (client, ns) = setup("wf-invalid", 1, 1).await;
    let manifest = format!(
        r#"
apiVersion: kruntimes.io/v1alpha1
kind: Workflow
metadata: {{name: broken, namespace: {ns}}}
spec:
  jobs:
    a: {{needs: [b], steps: [{{run: echo a}}]}}
    b: {{needs: [a], steps: [{{run: echo b}}]}}
    c: {{needs: [bild], steps: [{{run: echo c}}]}}
"#
    );
    let dir = TempDir::new("wf-invalid");
    let path = dir.path().join("wf.yaml");
    std::fs::write(&path, manifest).unwrap();
    let applied = cluster.kubectl(&["apply", "-f", path.to_str().unwrap()]);
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let wfs: Api<Workflow> = Api::namespaced(client.clone(), &ns);
    let wf = wait_for("the invalid Workflow to fail", || async {
        let w = wfs.get("broken").await.ok()?;
        (w.status.as_ref()?.phase == Some(WorkflowPhase::Failed)).then_some(w)
    })
    .await;
    let st = wf.status.unwrap();
    let valid = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Valid")
        .expect("a Valid condition");
    assert_eq!(valid.status, "False");
    assert_eq!(valid.reason, "InvalidWorkflow");
    assert!(valid.message.contains("cycle"), "{}", valid.message);
    assert!(
        valid.message.contains("`bild`") && valid.message.contains("build")
            || valid.message.contains("bild"),
        "{}",
        valid.message
    );
    assert!(runs_of(&client, &ns, "broken").await.is_empty());
    let events = cluster.kubectl(&["get", "events", "-n", &ns, "-o", "json"]);
    let text = String::from_utf8_lossy(&events.stdout);
    assert!(text.contains("InvalidWorkflow"), "an Event: {text}");
    // The CLI prints the same diagnostic for the same spec.
    let spec = serde_yaml::to_string(&wf.spec.workflow).unwrap();
    std::fs::write(dir.path().join("spec.yaml"), spec).unwrap();
    let cli = kruntimes_tests::krt(&["validate", dir.path().join("spec.yaml").to_str().unwrap()]);
    let cli_err = stderr(&cli);
    for line in valid.message.lines().filter(|l| l.starts_with("error")) {
        assert!(cli_err.contains(line), "CLI says `{line}` too:\n{cli_err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_workflow_stops_its_runs_and_skips_the_rest() {
    let (client, ns) = setup("wf-cancel", 1, 2).await;
    let src = TempDir::new("wf-cancel-src");
    std::fs::write(
        src.path().join("ci.yaml"),
        "jobs:\n  long:\n    run: sleep 300\n  after:\n    needs: [long]\n    run: echo never\n",
    )
    .unwrap();
    let sub = krt_cluster(src.path(), &["submit", "ci.yaml", "-n", &ns]);
    assert_eq!(sub.status.code(), Some(0), "{}", show(&sub));
    let name = stdout(&sub).trim().to_string();
    let runs: Api<Run> = Api::namespaced(client.clone(), &ns);
    let run = format!("{name}-long");
    wait_for("the long job to run", || async {
        let r = runs.get(&run).await.ok()?;
        (r.status.as_ref()?.phase == Some(RunPhase::Running)).then_some(())
    })
    .await;
    let cancel = krt_cluster(src.path(), &["cancel", &name, "-n", &ns]);
    assert_eq!(cancel.status.code(), Some(0), "{}", show(&cancel));
    let waited = krt_cluster(src.path(), &["wait", &name, "-n", &ns, "--timeout", "90s"]);
    assert_eq!(waited.status.code(), Some(130), "{}", show(&waited));
    let wfs: Api<Workflow> = Api::namespaced(client.clone(), &ns);
    let st = wfs.get(&name).await.unwrap().status.unwrap();
    assert_eq!(st.phase, Some(WorkflowPhase::Cancelled), "{st:#?}");
    let rs = runs.get(&run).await.unwrap().status.unwrap();
    assert_eq!(rs.phase, Some(RunPhase::Cancelled), "{rs:#?}\n{st:#?}");
    assert!(st.jobs["after"].run_names.is_empty(), "{st:#?}");
    assert_eq!(runs_of(&client, &ns, &name).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_runtime_dies_is_retried_and_the_workflow_completes() {
    let cluster = Cluster::shared();
    let (client, ns) = setup("wf-kill", 2, 2).await;
    let src = TempDir::new("wf-kill-src");
    std::fs::write(
        src.path().join("ci.yaml"),
        r#"
jobs:
  first:
    run: echo "n=1" >> "$KRT_OUTPUT"
  victim:
    needs: [first]
    retries: 2
    run: |
      if [ "$KRT_ATTEMPT" = 1 ]; then echo "attempt 1 works"; sleep 300; fi
      echo "attempt=$KRT_ATTEMPT" >> "$KRT_OUTPUT"
  last:
    needs: [victim]
    run: echo "saw attempt {{ needs.victim.outputs.attempt }}"
"#,
    )
    .unwrap();
    let sub = krt_cluster(src.path(), &["submit", "ci.yaml", "-n", &ns]);
    assert_eq!(sub.status.code(), Some(0), "{}", show(&sub));
    let name = stdout(&sub).trim().to_string();
    let runs: Api<Run> = Api::namespaced(client.clone(), &ns);
    let run = format!("{name}-victim");
    let pod = wait_for("the victim to run", || async {
        let r = runs.get(&run).await.ok()?;
        let st = r.status?;
        (st.phase == Some(RunPhase::Running)).then_some(st.pod?)
    })
    .await;
    // Its runtime wrote the attempt's live log (and dies before it can
    // delete it).
    let live = |cluster: &Cluster| -> Vec<String> {
        let prefix = format!("cluster/live/{ns}.{run}.");
        cluster
            .s3()
            .keys()
            .into_iter()
            .filter(|k| k.starts_with(&prefix))
            .collect()
    };
    wait_for("the victim's live log", || async {
        (!live(cluster).is_empty()).then_some(())
    })
    .await;
    assert!(
        cluster.kill_container(&ns, &pod),
        "the runtime of {pod} ran"
    );
    let waited = krt_cluster(src.path(), &["wait", &name, "-n", &ns, "--timeout", "2m"]);
    assert_eq!(waited.status.code(), Some(0), "{}", show(&waited));
    assert!(
        stdout(&waited).contains("saw attempt 2"),
        "{}",
        show(&waited)
    );
    let wfs: Api<Workflow> = Api::namespaced(client.clone(), &ns);
    let st = wfs.get(&name).await.unwrap().status.unwrap();
    assert_eq!(st.jobs["victim"].attempts, 2, "{st:#?}");
    assert_eq!(
        runs_of(&client, &ns, &name).await.len(),
        3,
        "one Run per job"
    );
    // The controller removed what the dead runtime left behind.
    wait_for("the lost attempt's live log to be deleted", || async {
        live(cluster).is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_cluster_job_replays_locally_with_the_same_failure() {
    let (_client, ns) = setup("wf-replay", 1, 2).await;
    let src = TempDir::new("wf-replay-src");
    std::fs::write(
        src.path().join("check.sh"),
        "#!/bin/sh\necho \"checking $1\"\nif [ \"$(cat input.txt)\" != expected ]; then\n  echo \"mismatch: $(cat input.txt)\" >&2\n  exit 3\nfi\n",
    )
    .unwrap();
    std::fs::write(src.path().join("input.txt"), "actual\n").unwrap();
    std::fs::write(
        src.path().join("ci.yaml"),
        r#"
params:
  what: {default: inputs}
jobs:
  prepare:
    run: echo "token=abc" >> "$KRT_OUTPUT"
  check:
    needs: [prepare]
    run: sh check.sh "{{ params.what }}-{{ needs.prepare.outputs.token }}"
"#,
    )
    .unwrap();
    let sub = krt_cluster(
        src.path(),
        &[
            "submit",
            "ci.yaml",
            "-n",
            &ns,
            "-p",
            "what=cluster",
            "--wait",
            "--timeout",
            "2m",
        ],
    );
    assert_eq!(
        sub.status.code(),
        Some(1),
        "the workflow fails\n{}",
        show(&sub)
    );
    let name = stdout(&sub).lines().next().unwrap().trim().to_string();
    assert!(stdout(&sub).contains("mismatch: actual"), "{}", show(&sub));

    let logs = krt_cluster(src.path(), &["logs", &name, "check", "-n", &ns]);
    assert_eq!(logs.status.code(), Some(0), "{}", show(&logs));
    assert!(
        stdout(&logs).contains("checking cluster-abc"),
        "{}",
        show(&logs)
    );

    // Replay from another directory: everything comes from the store.
    let elsewhere = TempDir::new("wf-replay-elsewhere");
    let replay = krt_cluster(elsewhere.path(), &["replay", &name, "check", "-n", &ns]);
    assert_eq!(replay.status.code(), Some(1), "{}", show(&replay));
    let out = stdout(&replay);
    assert!(
        out.contains("checking cluster-abc"),
        "same rendered step: {}",
        show(&replay)
    );
    assert!(
        out.contains("mismatch: actual"),
        "same inputs, same failure: {}",
        show(&replay)
    );
    assert!(
        stderr(&replay).contains("exit code 3") || stderr(&replay).contains("failed"),
        "{}",
        show(&replay)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_workflow_with_a_ttl_is_deleted_with_its_runs() {
    let (client, ns) = setup("wf-ttl", 1, 2).await;
    let src = TempDir::new("wf-ttl-src");
    std::fs::write(
        src.path().join("ci.yaml"),
        "jobs:\n  one:\n    run: echo one\n  two:\n    needs: [one]\n    run: echo two\n",
    )
    .unwrap();
    let sub = krt_cluster(
        src.path(),
        &[
            "submit",
            "ci.yaml",
            "-n",
            &ns,
            "--ttl",
            "1",
            "--wait",
            "--timeout",
            "2m",
        ],
    );
    assert_eq!(sub.status.code(), Some(0), "{}", show(&sub));
    let name = stdout(&sub).lines().next().unwrap().trim().to_string();
    let wfs: Api<Workflow> = Api::namespaced(client.clone(), &ns);
    wait_for("the Workflow to be deleted after its TTL", || async {
        wfs.get_opt(&name).await.ok()?.is_none().then_some(())
    })
    .await;
    // The garbage collector follows the owner references.
    wait_for("its Runs to be deleted", || async {
        runs_of(&client, &ns, &name).await.is_empty().then_some(())
    })
    .await;
}

/// A spawned `krt` whose stdout lines arrive on a channel as they come.
struct Streaming {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Streaming {
    fn spawn(dir: &Path, args: &[&str]) -> Self {
        let mut child = krt_cluster_cmd(dir, args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("krt starts");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads lines until one contains `text` (panics after [`WAIT`]).
    fn until(&mut self, text: &str) -> String {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(text) {
                        return l;
                    }
                }
                Err(e) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    let mut err = String::new();
                    if let Some(mut s) = self.child.stderr.take() {
                        use std::io::Read;
                        let _ = s.read_to_string(&mut err);
                    }
                    panic!(
                        "no line with {text:?} ({e}); stdout so far:\n{}\n--- stderr ---\n{err}",
                        self.seen.join("\n")
                    );
                }
            }
        }
    }

    /// Waits for the exit; the exit code and every stdout line.
    fn finish(mut self) -> (Option<i32>, Vec<String>, String) {
        let status = self.child.wait().expect("krt exits");
        self.seen.extend(self.lines.iter());
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        (status.code(), self.seen, err)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_wait_and_logs_follow_print_a_jobs_lines_while_it_runs() {
    let (client, ns) = setup("wf-live", 1, 2).await;
    let src = TempDir::new("wf-live-src");
    let gate = TempDir::new("wf-live-gate");
    let gate_file = gate.path().join("open");
    // The job prints a line, then waits (at most 30 s) for the test to
    // open the gate, which it does only after both followers printed the
    // line: with logs shown only at a job's end, this test fails.
    std::fs::write(
        src.path().join("ci.yaml"),
        format!(
            r#"
jobs:
  slow:
    run: |
      echo "before the gate"
      for i in $(seq 600); do [ -e '{}' ] && break; sleep 0.05; done
      echo "after the gate"
"#,
            gate_file.display()
        ),
    )
    .unwrap();
    let mut submit = Streaming::spawn(
        src.path(),
        &["submit", "ci.yaml", "-n", &ns, "--wait", "--timeout", "3m"],
    );
    let name = submit.until("ci-").trim().to_string();
    let mut logs = Streaming::spawn(src.path(), &["logs", &name, "slow", "-f", "-n", &ns]);
    submit.until("before the gate");
    logs.until("before the gate");
    // Shown live: the job has not ended (it cannot, before the gate opens or
    // its 30 s run out).
    let wf = Api::<Workflow>::namespaced(client.clone(), &ns)
        .get(&name)
        .await
        .unwrap();
    let job = &wf.status.as_ref().expect("a status").jobs["slow"];
    assert_eq!(job.result, None, "the job still runs: {job:#?}");
    std::fs::write(&gate_file, "").unwrap();

    let (code, out, err) = submit.finish();
    let text = out.join("\n");
    assert_eq!(code, Some(0), "{text}\n--- stderr ---\n{err}");
    for line in ["before the gate", "after the gate"] {
        assert_eq!(
            out.iter().filter(|l| l.contains(line)).count(),
            1,
            "{line:?} printed once by `krt submit --wait`:\n{text}"
        );
    }
    let (code, out, err) = logs.finish();
    let text = out.join("\n");
    assert_eq!(code, Some(0), "{text}\n--- stderr ---\n{err}");
    assert_eq!(
        out,
        ["before the gate", "after the gate"],
        "`krt logs -f` prints the job's lines once each\n--- stderr ---\n{err}"
    );
}
