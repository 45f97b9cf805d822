//! Dispatch latency over HTTP on loopback: from sending `POST /v1/runs` to
//! the step's process start (the `stepStarted` event's microsecond clock,
//! taken when the process exists), p50 and p99; and to the step's first
//! command, against the same shell started directly (fork/exec to first
//! command) measured in the same run.
//!
//! Run it:   cargo bench -p kruntimes-runtime --bench dispatch
//!
//! The step is `echo "t=$EPOCHREALTIME" >> "$KRT_OUTPUT"`: bash's
//! microsecond clock read by the step's first command, so the number
//! includes bash start-up, like any real step.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kruntimes_runtime::cas::{Store, StoreOptions};
use kruntimes_runtime::exec::{Executor, ExecutorConfig};
use kruntimes_runtime::server::{self, AppState, ServerConfig};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const SAMPLES: usize = 300;
const TOKEN: &str = "bench-token-0123456789abcdef";

fn now_us() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1e6
}

async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("krt-bench-dispatch-{}", std::process::id()));
    let store = Store::open(
        "memory://",
        StoreOptions {
            cache_dir: Some(dir.join("cache")),
            cache_max_bytes: 64 << 20,
        },
    )
    .unwrap();
    let state = AppState::new(
        Executor::new(store, ExecutorConfig::new(dir.join("work"))),
        ServerConfig {
            token: TOKEN.into(),
            slots: 4,
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server::serve(state, listener, std::future::pending()));

    let mut dispatch = Vec::with_capacity(SAMPLES);
    let mut to_process = Vec::with_capacity(SAMPLES);
    for i in 0..SAMPLES + 20 {
        let body = serde_json::json!({
            "id": format!("d{i}"), "job": "bench",
            "steps": [{"run": "echo \"t=$EPOCHREALTIME\" >> \"$KRT_OUTPUT\""}]
        })
        .to_string();
        let t0 = now_us();
        let resp = http(addr, "POST", "/v1/runs", &body).await;
        assert!(resp.starts_with("HTTP/1.0 201"), "{resp}");
        // Wait for the result (the stream ends with the Finished event).
        let events = http(addr, "GET", &format!("/v1/runs/d{i}/events"), "").await;
        let last = events.lines().last().unwrap();
        let v: serde_json::Value = serde_json::from_str(last).unwrap();
        let t: f64 = v["event"]["result"]["outputs"]["t"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let started = events
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|l| l["event"]["type"] == "stepStarted")
            .and_then(|l| l["event"]["at_us"].as_u64())
            .unwrap_or_else(|| panic!("no stepStarted event in {events}"));
        if i >= 20 {
            dispatch.push(t * 1e6 - t0);
            to_process.push(started as f64 - t0);
        }
    }
    // Baseline: the same shell started directly, to its first command.
    let mut direct = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let t0 = now_us();
        let out = tokio::process::Command::new("bash")
            .args(["-eo", "pipefail", "-c", "echo $EPOCHREALTIME"])
            .output()
            .await
            .unwrap();
        let t: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        direct.push(t * 1e6 - t0);
    }
    dispatch.sort_by(f64::total_cmp);
    to_process.sort_by(f64::total_cmp);
    direct.sort_by(f64::total_cmp);
    let ms = |us: f64| us / 1000.0;
    println!("{SAMPLES} sequential runs over HTTP/1.0 on loopback (a new connection each):");
    println!(
        "  POST -> step's process start   p50 {:.2} ms  p99 {:.2} ms",
        ms(percentile(&to_process, 0.5)),
        ms(percentile(&to_process, 0.99))
    );
    println!(
        "  POST -> step's first command   p50 {:.2} ms  p99 {:.2} ms",
        ms(percentile(&dispatch, 0.5)),
        ms(percentile(&dispatch, 0.99))
    );
    println!(
        "  bash started directly          p50 {:.2} ms  p99 {:.2} ms",
        ms(percentile(&direct, 0.5)),
        ms(percentile(&direct, 0.99))
    );
    println!(
        "dispatch latency to process start p50 {:.2} ms (target < 2 ms), p99 {:.2} ms; to first command p50 {:.2} ms = {:.2}x a direct bash start",
        ms(percentile(&to_process, 0.5)),
        ms(percentile(&to_process, 0.99)),
        ms(percentile(&dispatch, 0.5)),
        percentile(&dispatch, 0.5) / percentile(&direct, 0.5)
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = Duration::ZERO;
}
