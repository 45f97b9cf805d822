//! `krt runtime serve` as a real process on a real socket.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kruntimes_tests::http::request;
use kruntimes_tests::{TempDir, krt_bin, repo_root};

const TOKEN: &str = "e2e-runtime-token-0123456789";

struct Runtime {
    child: Child,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(slots: usize) -> Runtime {
    let dir = TempDir::new("runtime");
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let mut child = Command::new(krt_bin())
        .args([
            "runtime",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--grace-period",
            "1s",
        ])
        .arg("--token-file")
        .arg(&token)
        .args(["--slots", &slots.to_string()])
        .arg("--store")
        .arg(dir.path().join("store"))
        .arg("--work-dir")
        .arg(dir.path().join("work"))
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("runtime exited before listening")
            .unwrap();
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    // Keep draining stderr so the runtime never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Runtime {
        child,
        addr,
        _dir: dir,
    }
}

fn run_body(id: &str, script: &str) -> String {
    serde_json::json!({"id": id, "job": "e2e", "steps": [{"run": script}]}).to_string()
}

#[test]
fn the_runtime_binary_runs_jobs_for_token_holders_only() {
    let rt = start(2);
    let health = request(rt.addr, "GET", "/v1/health", None, None);
    assert_eq!(health.status, 200);
    let refused = request(
        rt.addr,
        "POST",
        "/v1/runs",
        None,
        Some(&run_body("r1", "true")),
    );
    assert_eq!(refused.status, 401);
    assert!(
        refused.headers.contains("www-authenticate: Bearer"),
        "{}",
        refused.headers
    );
    assert_eq!(refused.json()["error"]["code"], "unauthorized");

    let created = request(
        rt.addr,
        "POST",
        "/v1/runs",
        Some(TOKEN),
        Some(&run_body(
            "r1",
            "echo hello; echo \"greeting=hi\" >> \"$KRT_OUTPUT\"",
        )),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let events = request(rt.addr, "GET", "/v1/runs/r1/events", Some(TOKEN), None).ndjson();
    let last = &events.last().unwrap()["event"];
    assert_eq!(last["type"], "finished");
    assert_eq!(last["result"]["phase"], "Succeeded");
    assert_eq!(last["result"]["outputs"]["greeting"], "hi");
    assert_eq!(last["result"]["logTail"], "hello\n");
    let status = request(rt.addr, "GET", "/v1/runs/r1", Some(TOKEN), None).json();
    assert_eq!(status["phase"], "Succeeded");
}

#[test]
fn sigterm_lets_running_runs_finish_then_exits() {
    let mut rt = start(1);
    let created = request(
        rt.addr,
        "POST",
        "/v1/runs",
        Some(TOKEN),
        Some(&run_body("slow", "sleep 1; echo finished")),
    );
    assert_eq!(created.status, 201);
    let addr = rt.addr;
    let follower =
        std::thread::spawn(move || request(addr, "GET", "/v1/runs/slow/events", Some(TOKEN), None));
    std::thread::sleep(Duration::from_millis(200));
    let pid = rt.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    std::thread::sleep(Duration::from_millis(200));
    // Draining: new runs are refused while the running one finishes.
    let late = request(
        rt.addr,
        "POST",
        "/v1/runs",
        Some(TOKEN),
        Some(&run_body("late", "true")),
    );
    assert_eq!(late.status, 503, "{}", late.body);
    let events = follower.join().unwrap().ndjson();
    let last = &events.last().unwrap()["event"];
    assert_eq!(
        last["result"]["phase"], "Succeeded",
        "the running run was not allowed to finish"
    );
    let status = rt.child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
}

#[test]
fn a_missing_or_short_token_file_is_a_clear_error() {
    let dir = TempDir::new("runtime-token");
    let out = Command::new(krt_bin())
        .args(["runtime", "serve", "--token-file"])
        .arg(dir.path().join("nope"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("failed to read the token file"));
    let short = dir.path().join("short");
    std::fs::write(&short, "abc").unwrap();
    let out = Command::new(krt_bin())
        .args(["runtime", "serve", "--token-file"])
        .arg(&short)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 16 are required"));
}
