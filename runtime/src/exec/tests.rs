//! Executor tests with real child processes and a real (in-memory) store.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use kruntimes_crds::{RunInput, RunPhase, RunStep};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::cas::{Store, StoreOptions};

struct Fixture {
    dir: PathBuf,
    exec: Executor,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fixture(name: &str) -> Fixture {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "krt-exec-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let store = Store::open(
        "memory://",
        StoreOptions {
            cache_dir: Some(dir.join("cache")),
            cache_max_bytes: 64 << 20,
        },
    )
    .unwrap();
    let mut config = ExecutorConfig::new(dir.join("work"));
    config.grace_period = Duration::from_millis(500);
    Fixture {
        exec: Executor::new(store, config),
        dir,
    }
}

fn step(run: &str) -> RunStep {
    RunStep {
        run: run.into(),
        ..RunStep::default()
    }
}

fn request(id: &str, steps: Vec<RunStep>) -> RunRequest {
    RunRequest {
        id: id.into(),
        attempt: 1,
        job: "job".into(),
        steps,
        ..RunRequest::default()
    }
}

async fn run(f: &Fixture, req: RunRequest) -> (RunResult, Vec<RunEvent>) {
    let (tx, mut rx) = mpsc::channel(64);
    let collector = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Some(e) = rx.recv().await {
            all.push(e);
        }
        all
    });
    let result = f.exec.execute(req, tx, CancellationToken::new()).await;
    (result, collector.await.unwrap())
}

fn alive(pid: i32) -> bool {
    // A zombie is not alive: it holds no resources and runs nothing.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .is_some_and(|i| !stat[i + 1..].trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

async fn wait_for_file(path: &std::path::Path) -> String {
    for _ in 0..500 {
        if let Ok(s) = std::fs::read_to_string(path)
            && s.ends_with('\n')
        {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{} never appeared", path.display());
}

#[tokio::test]
async fn steps_run_in_order_with_the_documented_environment() {
    let f = fixture("env");
    let mut req = request(
        "env-1",
        vec![
            step("echo first; echo \"k1=$KRT_JOB/$KRT_RUN_ID/$KRT_ATTEMPT\" >> \"$KRT_OUTPUT\""),
            RunStep {
                env: BTreeMap::from([("MODE".into(), "step".into())]),
                ..step(
                    "test \"$PWD\" = \"$KRT_WORKSPACE\"; echo \"mode=$MODE\" >> \"$KRT_OUTPUT\"; echo \"pkg=${CARGO_PKG_NAME:-unset}\" >> \"$KRT_OUTPUT\"",
                )
            },
        ],
    );
    req.env.insert("MODE".into(), "job".into());
    let (r, events) = run(&f, req).await;
    assert_eq!(r.phase, RunPhase::Succeeded, "{:?}", r.message);
    assert_eq!(r.outputs["k1"], "job/env-1/1");
    assert_eq!(r.outputs["mode"], "step");
    // The runtime's own environment (here: cargo's) does not leak into steps.
    assert_eq!(r.outputs["pkg"], "unset");
    assert!(r.log_tail.contains("first"));
    assert!(r.log_digest.is_some());
    assert!(matches!(events.last(), Some(RunEvent::Finished { .. })));
    let started: Vec<usize> = events
        .iter()
        .filter_map(|e| match e {
            RunEvent::StepStarted { step, .. } => Some(*step),
            _ => None,
        })
        .collect();
    assert_eq!(started, [0, 1]);
}

#[tokio::test]
async fn a_failing_step_fails_the_job_and_skips_the_rest() {
    let f = fixture("fail");
    let (r, _) = run(
        &f,
        request("fail-1", vec![step("echo out; exit 3"), step("echo never")]),
    )
    .await;
    assert_eq!(r.phase, RunPhase::Failed);
    assert_eq!(r.exit_code, Some(3));
    assert_eq!(r.message.as_deref(), Some("step 1 failed with exit code 3"));
    assert_eq!(r.steps[1].phase.as_deref(), Some("Skipped"));
    assert!(!r.log_tail.contains("never"));
}

#[tokio::test]
async fn pipefail_and_errexit_are_on_by_default() {
    let f = fixture("pipefail");
    let (r, _) = run(&f, request("pf-1", vec![step("false | cat\necho after")])).await;
    assert_eq!(r.phase, RunPhase::Failed);
    assert!(!r.log_tail.contains("after"));
}

#[tokio::test]
async fn a_step_timeout_names_the_step_and_kills_its_processes() {
    let f = fixture("timeout");
    let pidfile = f.dir.join("pid");
    let req = request(
        "to-1",
        vec![RunStep {
            name: Some("slow".into()),
            timeout: Some("300ms".into()),
            ..step(&format!(
                "sleep 1000 & echo $! > {}; wait",
                pidfile.display()
            ))
        }],
    );
    let (r, _) = run(&f, req).await;
    assert_eq!(r.phase, RunPhase::TimedOut);
    assert_eq!(r.message.as_deref(), Some("slow timed out after 300ms"));
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(!alive(pid), "background sleeper {pid} survived the timeout");
}

#[tokio::test]
async fn the_job_timeout_applies_across_steps() {
    let f = fixture("jobtimeout");
    let mut req = request("jt-1", vec![step("sleep 0.1"), step("sleep 1000")]);
    req.timeout = Some("400ms".into());
    let (r, _) = run(&f, req).await;
    assert_eq!(r.phase, RunPhase::TimedOut);
    assert_eq!(
        r.message.as_deref(),
        Some("step 2 timed out: the job's limit of 400ms was reached")
    );
}

#[tokio::test]
async fn cancel_leaves_no_process_behind_even_one_ignoring_sigterm() {
    let f = fixture("cancel");
    let pids = f.dir.join("pids");
    let script = format!(
        "sleep 1000 & echo $! >> {p}\n(trap '' TERM; sleep 1000) & echo $! >> {p}\necho ready >> {p}.ok\nwait",
        p = pids.display()
    );
    let (tx, mut rx) = mpsc::channel(64);
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let cancel = CancellationToken::new();
    let exec = f.exec.clone();
    let c2 = cancel.clone();
    let handle = tokio::spawn(async move {
        exec.execute(
            request("cancel-1", vec![step(&script), step("echo never")]),
            tx,
            c2,
        )
        .await
    });
    wait_for_file(&f.dir.join("pids.ok")).await;
    cancel.cancel();
    let r = handle.await.unwrap();
    assert_eq!(r.phase, RunPhase::Cancelled);
    assert_eq!(r.steps[1].phase.as_deref(), Some("Skipped"));
    for pid in std::fs::read_to_string(&pids).unwrap().lines() {
        let pid: i32 = pid.parse().unwrap();
        assert!(!alive(pid), "process {pid} survived the cancel");
    }
}

#[tokio::test]
async fn background_processes_end_with_their_step() {
    let f = fixture("leftover");
    let pidfile = f.dir.join("pid");
    let (r, _) = run(
        &f,
        request(
            "bg-1",
            vec![step(&format!(
                "sleep 1000 > /dev/null 2>&1 & echo $! > {}",
                pidfile.display()
            ))],
        ),
    )
    .await;
    assert_eq!(r.phase, RunPhase::Succeeded, "{:?}", r.message);
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(!alive(pid), "background process {pid} outlived its job");
}

#[tokio::test]
async fn output_limits_fail_the_job_naming_the_key() {
    let f = fixture("outputs");
    let (r, _) = run(
        &f,
        request(
            "out-1",
            vec![step(
                "for i in $(seq 0 64); do echo \"k$i=v\" >> \"$KRT_OUTPUT\"; done",
            )],
        ),
    )
    .await;
    assert_eq!(r.phase, RunPhase::Failed);
    let msg = r.message.unwrap();
    assert!(
        msg.contains("`k64`") && msg.contains("64 keys") && msg.contains("artifact"),
        "{msg}"
    );
    assert!(r.outputs.is_empty());
}

#[tokio::test]
async fn secrets_are_masked_in_the_tail_the_stored_log_and_the_stream() {
    let f = fixture("secrets");
    let mut req = request(
        "sec-1",
        vec![step(
            "echo \"token is $API_TOKEN\"; echo \"$API_TOKEN\" >&2",
        )],
    );
    req.secrets
        .insert("API_TOKEN".into(), "s3cr3t-value".into());
    let (r, events) = run(&f, req).await;
    assert_eq!(r.phase, RunPhase::Succeeded);
    assert!(r.log_tail.contains("token is ***"), "{}", r.log_tail);
    assert!(!r.log_tail.contains("s3cr3t"));
    let stored = f
        .exec
        .store()
        .get_bytes(&r.log_digest.unwrap())
        .await
        .unwrap();
    let stored = String::from_utf8(stored.to_vec()).unwrap();
    assert!(
        stored.contains("token is ***") && !stored.contains("s3cr3t"),
        "{stored}"
    );
    for e in &events {
        if let RunEvent::Log(l) = e {
            assert!(!l.line.contains("s3cr3t"));
        }
    }
}

#[tokio::test]
async fn a_huge_output_is_stored_whole_and_the_tail_stays_bounded() {
    let f = fixture("huge");
    // A million lines, plus one 1 MiB line.
    let (r, _) = run(
        &f,
        request(
            "huge-1",
            vec![step(
                "seq 1000000; head -c 1048576 /dev/zero | tr '\\0' x; echo",
            )],
        ),
    )
    .await;
    assert_eq!(r.phase, RunPhase::Succeeded, "{:?}", r.message);
    assert!(
        r.log_tail.len() <= TAIL_BYTES + MAX_LINE,
        "tail is {} bytes",
        r.log_tail.len()
    );
    let log = f
        .exec
        .store()
        .get_bytes(&r.log_digest.unwrap())
        .await
        .unwrap();
    let lines = log.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count();
    assert_eq!(
        lines,
        1_000_000 + 16,
        "every line is in the stored log (the long one in 64 KiB pieces)"
    );
    assert!(r.log_tail.ends_with(&format!("{}\n", "x".repeat(MAX_LINE))));
}

#[tokio::test]
async fn artifacts_are_captured_and_inputs_materialised() {
    let f = fixture("artifacts");
    let mut req = request(
        "art-1",
        vec![step(
            "mkdir -p dist/sub && echo hi > dist/a.txt && echo yo > dist/sub/b.txt && printf '#!/bin/sh\\necho run\\n' > tool && chmod +x tool",
        )],
    );
    req.artifacts.insert("txt".into(), "dist/**/*.txt".into());
    req.artifacts.insert("tool".into(), "tool".into());
    let (r, _) = run(&f, req).await;
    assert_eq!(r.phase, RunPhase::Succeeded, "{:?}", r.message);
    let mut consumer = request(
        "art-3",
        vec![step("cat dist/a.txt dist/sub/b.txt; ./bin/tool")],
    );
    consumer.inputs = vec![
        RunInput {
            name: "p.txt".into(),
            digest: r.artifacts["txt"].to_string(),
            path: None,
        },
        RunInput {
            name: "p.tool".into(),
            digest: r.artifacts["tool"].to_string(),
            path: Some("bin".into()),
        },
    ];
    let (c, _) = run(&f, consumer).await;
    assert_eq!(
        c.phase,
        RunPhase::Succeeded,
        "{:?}\n{}",
        c.message,
        c.log_tail
    );
    assert_eq!(c.log_tail, "hi\nyo\nrun\n");
}

#[tokio::test]
async fn an_artifact_that_matches_nothing_fails_the_job() {
    let f = fixture("nomatch");
    let mut req = request("nm-1", vec![step("true")]);
    req.artifacts
        .insert("bin".into(), "target/release/app".into());
    let (r, _) = run(&f, req).await;
    assert_eq!(r.phase, RunPhase::Failed);
    let msg = r.message.unwrap();
    assert!(
        msg.contains("artifact `bin`") && msg.contains("target/release/app"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_symlink_escaping_the_workspace_is_not_captured() {
    let f = fixture("escape");
    let mut req = request("esc-1", vec![step("ln -s /etc/passwd out")]);
    req.artifacts.insert("out".into(), "out".into());
    let (r, _) = run(&f, req).await;
    assert_eq!(
        r.phase,
        RunPhase::Failed,
        "a symlink to /etc/passwd was captured"
    );
    assert!(r.artifacts.is_empty());
}

#[tokio::test]
async fn requests_that_leave_the_workspace_are_refused() {
    let f = fixture("traversal");
    let mut req = request("tr-1", vec![step("true")]);
    req.artifacts.insert("up".into(), "../../etc/passwd".into());
    let (r, _) = run(&f, req).await;
    assert_eq!(r.phase, RunPhase::Failed);
    assert!(r.message.unwrap().contains("leaves the workspace"));
    let mut req = request("tr-2", vec![step("true")]);
    req.inputs.push(RunInput {
        name: "x.y".into(),
        digest: crate::digest::Digest::of(b"").to_string(),
        path: Some("../../tmp".into()),
    });
    let (r, _) = run(&f, req).await;
    assert!(r.message.unwrap().contains("leaves the workspace"));
}

#[tokio::test]
async fn other_shells_get_their_script_as_a_file() {
    let f = fixture("shells");
    let (r, _) = run(
        &f,
        request(
            "sh-1",
            vec![
                RunStep {
                    shell: Some("python3".into()),
                    ..step("import os\nprint('py', os.environ['KRT_JOB'])")
                },
                RunStep {
                    shell: Some("sh".into()),
                    ..step("echo sh")
                },
            ],
        ),
    )
    .await;
    assert_eq!(r.phase, RunPhase::Succeeded, "{:?}", r.message);
    assert_eq!(r.log_tail, "py job\nsh\n");
}

#[tokio::test]
async fn a_missing_shell_fails_the_step_with_a_clear_message() {
    let f = fixture("noshell");
    let (r, _) = run(
        &f,
        request(
            "ns-1",
            vec![RunStep {
                shell: Some("no-such-shell-xyz".into()),
                ..step("x")
            }],
        ),
    )
    .await;
    assert_eq!(r.phase, RunPhase::Failed);
    assert!(
        r.message
            .unwrap()
            .contains("failed to start `no-such-shell-xyz`")
    );
}

#[tokio::test]
async fn the_workspace_is_emptied_after_the_run_and_reused_clean() {
    let f = fixture("cleanup");
    let (r, _) = run(
        &f,
        request(
            "cl-1",
            vec![step(
                "mkdir -p d/e && touch file d/e/f && echo k=v >> $KRT_OUTPUT",
            )],
        ),
    )
    .await;
    assert_eq!(r.phase, RunPhase::Succeeded);
    // Only empty run directories are left, each with an empty `ws`.
    let runs = f.dir.join("work/runs");
    let dirs: Vec<_> = std::fs::read_dir(&runs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(dirs.len() <= 1);
    for d in &dirs {
        let names: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("ws")]);
        assert_eq!(std::fs::read_dir(d.join("ws")).unwrap().count(), 0);
    }
    // The next run starts in an empty workspace with no outputs of the last.
    let (r, _) = run(
        &f,
        request(
            "cl-2",
            vec![step(
                "test -z \"$(ls -A)\" && test ! -s \"$KRT_OUTPUT\" && chmod 000 . ",
            )],
        ),
    )
    .await;
    assert_eq!(r.phase, RunPhase::Succeeded, "{:?}", r.message);
    assert!(r.outputs.is_empty());
    let (r, _) = run(&f, request("cl-3", vec![step("touch ok")])).await;
    assert_eq!(
        r.phase,
        RunPhase::Succeeded,
        "a workspace made unwritable is repaired: {:?}",
        r.message
    );
}
