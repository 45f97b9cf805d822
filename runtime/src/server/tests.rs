//! Server tests: most routes in-process through `oneshot`, streaming and
//! cancel over a real socket.

use std::path::PathBuf;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt as _;

use super::*;
use crate::cas::{Store, StoreOptions};
use crate::exec::{Executor, ExecutorConfig};

const TOKEN: &str = "test-token-0123456789abcdef";

struct Fixture {
    dir: PathBuf,
    state: AppState,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fixture(name: &str, slots: usize) -> Fixture {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "krt-srv-{name}-{}-{}",
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
    config.grace_period = Duration::from_millis(300);
    let state = AppState::new(
        Executor::new(store, config),
        ServerConfig {
            token: TOKEN.into(),
            slots,
        },
    );
    Fixture { dir, state }
}

fn run_body(id: &str, script: &str) -> Value {
    json!({"id": id, "job": "test", "steps": [{"run": script}]})
}

async fn call(
    state: &AppState,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let body = match body {
        Some(b) => {
            req = req.header(header::CONTENT_TYPE, "application/json");
            Body::from(b.to_string())
        }
        None => Body::empty(),
    };
    let resp = router(state.clone())
        .oneshot(req.body(body).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, v)
}

async fn wait_finished(state: &AppState, id: &str) -> Value {
    for _ in 0..1000 {
        let (_, v) = call(state, "GET", &format!("/v1/runs/{id}"), Some(TOKEN), None).await;
        if !v["result"].is_null() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("run {id} did not finish");
}

#[tokio::test]
async fn health_needs_no_token() {
    let f = fixture("health", 1);
    let (s, v) = call(&f.state, "GET", "/v1/health", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["status"], "ok");
}

#[tokio::test]
async fn every_other_route_refuses_requests_without_the_token_and_runs_nothing() {
    let f = fixture("auth", 1);
    let marker = f.dir.join("ran");
    let body = run_body("r1", &format!("touch {}", marker.display()));
    for (method, uri, body) in [
        ("POST", "/v1/runs", Some(body.clone())),
        ("GET", "/v1/runs/r1", None),
        ("GET", "/v1/runs/r1/events", None),
        ("DELETE", "/v1/runs/r1", None),
        ("GET", "/v1/capacity", None),
        ("GET", "/metrics", None),
    ] {
        for token in [None, Some("wrong-token"), Some("")] {
            let (s, v) = call(&f.state, method, uri, token, body.clone()).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{method} {uri} with {token:?}");
            assert_eq!(v["error"]["code"], "unauthorized");
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!marker.exists(), "a run started without the token");
    let (s, _) = call(&f.state, "GET", "/v1/runs/r1", Some(TOKEN), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_repeated_post_returns_the_existing_run_and_runs_it_once() {
    let f = fixture("idem", 2);
    let counter = f.dir.join("count");
    let body = run_body("idem-1", &format!("echo x >> {}", counter.display()));
    let (s1, v1) = call(
        &f.state,
        "POST",
        "/v1/runs",
        Some(TOKEN),
        Some(body.clone()),
    )
    .await;
    assert_eq!(s1, StatusCode::CREATED, "{v1}");
    let (s2, v2) = call(
        &f.state,
        "POST",
        "/v1/runs",
        Some(TOKEN),
        Some(body.clone()),
    )
    .await;
    assert_eq!(s2, StatusCode::OK);
    assert_eq!(v2["id"], "idem-1");
    let done = wait_finished(&f.state, "idem-1").await;
    assert_eq!(done["result"]["phase"], "Succeeded");
    let (s3, _) = call(&f.state, "POST", "/v1/runs", Some(TOKEN), Some(body)).await;
    assert_eq!(s3, StatusCode::OK);
    assert_eq!(
        std::fs::read_to_string(&counter).unwrap(),
        "x\n",
        "the step ran more than once"
    );
    let _ = v1;
    // A new attempt of a finished run is a new run.
    let mut again = run_body("idem-1", &format!("echo y >> {}", counter.display()));
    again["attempt"] = json!(2);
    let (s4, v4) = call(&f.state, "POST", "/v1/runs", Some(TOKEN), Some(again)).await;
    assert_eq!(s4, StatusCode::CREATED);
    assert_eq!(v4["attempt"], 2);
}

#[tokio::test]
async fn a_full_runtime_answers_429_at_once() {
    let f = fixture("full", 1);
    let (s, _) = call(
        &f.state,
        "POST",
        "/v1/runs",
        Some(TOKEN),
        Some(run_body("busy", "sleep 30")),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, v) = call(
        &f.state,
        "POST",
        "/v1/runs",
        Some(TOKEN),
        Some(run_body("more", "true")),
    )
    .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(v["error"]["code"], "full");
    let (_, cap) = call(&f.state, "GET", "/v1/capacity", Some(TOKEN), None).await;
    assert_eq!(
        cap,
        json!({"slots": 1, "busy": 1, "free": 0, "accepting": true})
    );
    let (s, _) = call(&f.state, "DELETE", "/v1/runs/busy", Some(TOKEN), None).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let done = wait_finished(&f.state, "busy").await;
    assert_eq!(done["result"]["phase"], "Cancelled");
    let (s, _) = call(
        &f.state,
        "POST",
        "/v1/runs",
        Some(TOKEN),
        Some(run_body("more", "true")),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "the slot was not freed");
}

#[tokio::test]
async fn malformed_requests_get_our_error_shape() {
    let f = fixture("bad", 1);
    let cases = [
        json!("not an object"),
        json!({"id": "x", "job": "j", "steps": [], }),
        json!({"id": "../x", "job": "j", "steps": [{"run": "true"}]}),
        json!({"id": "x", "job": "j", "steps": [{"run": "true"}], "unknown": 1}),
        json!({"id": "x", "job": "j", "steps": [{"run": "true", "timeout": "soon"}]}),
    ];
    for body in cases {
        let (s, v) = call(
            &f.state,
            "POST",
            "/v1/runs",
            Some(TOKEN),
            Some(body.clone()),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert_eq!(v["error"]["code"], "bad_request", "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("invalid request: "),
            "{v}"
        );
    }
    let (s, v) = call(&f.state, "GET", "/v2/nothing", Some(TOKEN), None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("no_route"))
    );
    let (s, v) = call(&f.state, "PUT", "/v1/runs", Some(TOKEN), None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed"))
    );
    let (s, v) = call(&f.state, "GET", "/v1/runs/nope", Some(TOKEN), None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
}

#[tokio::test]
async fn an_oversized_body_is_refused() {
    let f = fixture("big", 1);
    let big = "x".repeat(MAX_BODY + 1);
    let (s, v) = call(
        &f.state,
        "POST",
        "/v1/runs",
        Some(TOKEN),
        Some(run_body("big", &big)),
    )
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(v["error"]["code"], "too_large");
}

#[tokio::test]
async fn metrics_count_runs_by_result() {
    let f = fixture("metrics", 2);
    call(
        &f.state,
        "POST",
        "/v1/runs",
        Some(TOKEN),
        Some(run_body("ok", "true")),
    )
    .await;
    call(
        &f.state,
        "POST",
        "/v1/runs",
        Some(TOKEN),
        Some(run_body("ko", "false")),
    )
    .await;
    wait_finished(&f.state, "ok").await;
    wait_finished(&f.state, "ko").await;
    // The counters are updated right after the final event.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (s, v) = call(&f.state, "GET", "/metrics", Some(TOKEN), None).await;
    assert_eq!(s, StatusCode::OK);
    let text = v.as_str().unwrap();
    assert!(
        text.contains("krt_runtime_runs_total{result=\"succeeded\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("krt_runtime_runs_total{result=\"failed\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("krt_runtime_run_duration_seconds_count 2"),
        "{text}"
    );
}

#[tokio::test]
async fn a_draining_runtime_refuses_new_runs() {
    let f = fixture("drain", 1);
    f.state.drain(Duration::from_secs(1)).await;
    let (s, v) = call(
        &f.state,
        "POST",
        "/v1/runs",
        Some(TOKEN),
        Some(run_body("late", "true")),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("shutting_down"))
    );
}

/// Minimal HTTP/1.0 client: the server then ends a streamed body by closing.
async fn raw_http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status: u16 = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn over_a_real_socket_the_event_stream_runs_from_start_to_end_and_resumes() {
    let f = fixture("socket", 2);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(f.state.clone(), listener, async move {
        let _ = stop_rx.await;
    }));

    let (s, _) = raw_http(
        addr,
        "POST",
        "/v1/runs",
        None,
        &run_body("s1", "true").to_string(),
    )
    .await;
    assert_eq!(s, 401);
    let script = "echo one; sleep 0.2; echo two >&2; echo \"k=v\" >> \"$KRT_OUTPUT\"";
    let (s, body) = raw_http(
        addr,
        "POST",
        "/v1/runs",
        Some(TOKEN),
        &run_body("s1", script).to_string(),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    // Follow live, from the start to the Finished event.
    let (s, stream) = raw_http(addr, "GET", "/v1/runs/s1/events", Some(TOKEN), "").await;
    assert_eq!(s, 200);
    let lines: Vec<Value> = stream
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (0..lines.len() as u64).collect::<Vec<_>>(),
        "gapless, in order"
    );
    let types: Vec<&str> = lines
        .iter()
        .map(|l| l["event"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(types.first(), Some(&"phase"));
    assert_eq!(types.last(), Some(&"finished"));
    let logs: Vec<&str> = lines
        .iter()
        .filter(|l| l["event"]["type"] == "log")
        .map(|l| l["event"]["line"].as_str().unwrap())
        .collect();
    assert_eq!(logs, ["one", "two"]);
    assert_eq!(
        lines.last().unwrap()["event"]["result"]["outputs"]["k"],
        "v"
    );
    // Resume from an offset.
    let (_, tail) = raw_http(addr, "GET", "/v1/runs/s1/events?from=3", Some(TOKEN), "").await;
    let first: Value = serde_json::from_str(tail.lines().next().unwrap()).unwrap();
    assert_eq!(first["seq"], 3);
    assert_eq!(tail.lines().count(), lines.len() - 3);

    // Cancel a long run over the socket; its stream ends with Cancelled.
    let (s, _) = raw_http(
        addr,
        "POST",
        "/v1/runs",
        Some(TOKEN),
        &run_body("long", "echo started; sleep 60").to_string(),
    )
    .await;
    assert_eq!(s, 201);
    let follower = tokio::spawn(async move {
        raw_http(addr, "GET", "/v1/runs/long/events", Some(TOKEN), "").await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (s, _) = raw_http(addr, "DELETE", "/v1/runs/long", Some(TOKEN), "").await;
    assert_eq!(s, 202);
    let (_, stream) = follower.await.unwrap();
    let last: Value = serde_json::from_str(stream.lines().last().unwrap()).unwrap();
    assert_eq!(last["event"]["result"]["phase"], "Cancelled");

    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
}
