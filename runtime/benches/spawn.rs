//! Spawn overhead: 1,000 runs of `true` through the executor against a bare
//! `sh -c true` loop at the same parallelism, in the same run.
//!
//! Run it:   cargo bench -p kruntimes-runtime --bench spawn
//!
//! Each executor run does everything a real run does: a fresh workspace, a
//! process group, log capture, the log stored in the CAS (in memory here),
//! outputs read, workspace removed. The baselines spawn the same shell with
//! nothing around it.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kruntimes_crds::{RunPhase, RunStep};
use kruntimes_runtime::cas::{Store, StoreOptions};
use kruntimes_runtime::exec::{Executor, ExecutorConfig, RunRequest};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

const RUNS: usize = 1000;

async fn bare(shell: &'static str, parallel: usize) -> Duration {
    bare_with(shell, parallel, false).await
}

/// The same spawn with the executor's process options: own process group,
/// piped (and drained) stdout/stderr, a cleared environment.
async fn bare_with(shell: &'static str, parallel: usize, like_executor: bool) -> Duration {
    let sem = Arc::new(Semaphore::new(parallel));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let permit = sem.clone().acquire_owned().await.unwrap();
        tasks.push(tokio::spawn(async move {
            let mut cmd = tokio::process::Command::new(shell);
            cmd.args(["-c", "true"]).stdin(Stdio::null());
            let status = if like_executor {
                cmd.process_group(0)
                    .env_clear()
                    .env("PATH", std::env::var("PATH").unwrap_or_default())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .output()
                    .await
                    .unwrap()
                    .status
            } else {
                cmd.stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .await
                    .unwrap()
            };
            assert!(status.success());
            drop(permit);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

async fn executor(exec: &Executor, shell: Option<&str>, parallel: usize, tag: &str) -> Duration {
    let sem = Arc::new(Semaphore::new(parallel));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(RUNS);
    for i in 0..RUNS {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let exec = exec.clone();
        let req = RunRequest {
            id: format!("{tag}-{i}"),
            attempt: 1,
            job: "bench".into(),
            steps: vec![RunStep {
                run: "true".into(),
                shell: shell.map(str::to_string),
                ..RunStep::default()
            }],
            ..RunRequest::default()
        };
        tasks.push(tokio::spawn(async move {
            let (tx, _rx) = mpsc::channel(16);
            let r = exec.execute(req, tx, CancellationToken::new()).await;
            assert_eq!(r.phase, RunPhase::Succeeded, "{:?}", r.message);
            drop(permit);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

fn per_run(d: Duration) -> String {
    format!("{:.3} ms/run", d.as_secs_f64() * 1000.0 / RUNS as f64)
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("krt-bench-spawn-{}", std::process::id()));
    let store = Store::open(
        "memory://",
        StoreOptions {
            cache_dir: Some(dir.join("cache")),
            cache_max_bytes: 64 << 20,
        },
    )
    .unwrap();
    let exec = Executor::new(store, ExecutorConfig::new(dir.join("work")));
    let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
    // Warm up the page cache and the allocator.
    executor(&exec, Some("sh"), parallel, "warm").await;
    bare("sh", parallel).await;

    let sh_bare = bare("sh", parallel).await;
    let sh_opts = bare_with("sh", parallel, true).await;
    let sh_exec = executor(&exec, Some("sh"), parallel, "sh").await;
    let bash_bare = bare("bash", parallel).await;
    let bash_exec = executor(&exec, None, parallel, "bash").await;
    println!("{RUNS} runs of `true`, {parallel} in parallel:");
    println!(
        "  bare `sh -c true`            {:>8.1} ms  {}",
        sh_bare.as_secs_f64() * 1e3,
        per_run(sh_bare)
    );
    println!(
        "  bare, pgroup + pipes + env   {:>8.1} ms  {}",
        sh_opts.as_secs_f64() * 1e3,
        per_run(sh_opts)
    );
    println!(
        "  executor, shell: sh          {:>8.1} ms  {}",
        sh_exec.as_secs_f64() * 1e3,
        per_run(sh_exec)
    );
    println!(
        "  bare `bash -c true`          {:>8.1} ms  {}",
        bash_bare.as_secs_f64() * 1e3,
        per_run(bash_bare)
    );
    println!(
        "  executor, default bash       {:>8.1} ms  {}",
        bash_exec.as_secs_f64() * 1e3,
        per_run(bash_exec)
    );
    println!(
        "spawn overhead: executor/bare = {:.2}x with sh, {:.2}x with bash (target <= 1.5x)",
        sh_exec.as_secs_f64() / sh_bare.as_secs_f64(),
        bash_exec.as_secs_f64() / bash_bare.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
