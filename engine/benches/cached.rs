//! A fully cached rerun of a 100-job workflow, end to end: `krt` process
//! start, parsing, source snapshot (hashing 200 files), 100 cache lookups
//! with their records verified, and the run record. Compared in the same run
//! with Turborepo's fully cached run of an equivalent 100-task npm
//! workspace, when `npm` can install `turbo` here.
//!
//! Run it:   cargo bench -p kruntimes-engine --bench cached
//!
//! Both graphs are 10 chains of 10 tasks; each task writes `out.txt`, which
//! kruntimes stores as an artifact and turbo as a cached output.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TASKS: usize = 100;
const RUNS: usize = 10;

fn krt_workflow() -> String {
    let mut y = String::from("jobs:\n");
    for i in 0..TASKS {
        let _ = writeln!(y, "  p{i}:");
        if i % 10 != 0 {
            let _ = writeln!(y, "    needs: [p{}]", i - 1);
        }
        let _ = writeln!(
            y,
            "    run: echo x > out.txt\n    artifacts: {{out: out.txt}}"
        );
    }
    y
}

fn run(cmd: &mut Command) -> Duration {
    let start = Instant::now();
    let out = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("command runs");
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    start.elapsed()
}

fn stats(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    (
        v[v.len() / 2].as_secs_f64() * 1000.0,
        v[0].as_secs_f64() * 1000.0,
    )
}

fn setup_turbo(dir: &Path) -> Result<std::path::PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let npm = Command::new("npm")
        .arg("--version")
        .output()
        .map_err(|e| format!("npm: {e}"))?;
    let npm_version = String::from_utf8_lossy(&npm.stdout).trim().to_string();
    std::fs::write(
        dir.join("package.json"),
        format!(
            r#"{{"name":"bench","private":true,"packageManager":"npm@{npm_version}","workspaces":["packages/*"],"devDependencies":{{"turbo":"2.5.8"}}}}"#
        ),
    )
    .map_err(|e| e.to_string())?;
    std::fs::write(
        dir.join("turbo.json"),
        r#"{"tasks":{"build":{"dependsOn":["^build"],"outputs":["out.txt"]}}}"#,
    )
    .map_err(|e| e.to_string())?;
    for i in 0..TASKS {
        let p = dir.join("packages").join(format!("p{i}"));
        std::fs::create_dir_all(&p).map_err(|e| e.to_string())?;
        let deps = if i % 10 != 0 {
            format!(r#","dependencies":{{"p{}":"1.0.0"}}"#, i - 1)
        } else {
            String::new()
        };
        std::fs::write(
            p.join("package.json"),
            format!(r#"{{"name":"p{i}","version":"1.0.0","scripts":{{"build":"echo x > out.txt"}}{deps}}}"#),
        )
        .map_err(|e| e.to_string())?;
        for f in 0..2 {
            std::fs::write(
                p.join(format!("src{f}.txt")),
                format!("package {i} file {f}\n"),
            )
            .map_err(|e| e.to_string())?;
        }
    }
    let st = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("npm: {e}"))?;
    if !st.success() {
        return Err("npm install turbo failed".into());
    }
    Ok(dir.join("node_modules/.bin/turbo"))
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let krt = env!("CARGO_BIN_EXE_krt");
    let dir = std::env::temp_dir().join(format!("krt-bench-cached-{}", std::process::id()));
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..200 {
        std::fs::write(src.join(format!("f{i}.txt")), format!("source file {i}\n")).unwrap();
    }
    std::fs::write(dir.join("wf.yaml"), krt_workflow()).unwrap();
    let krt_cmd = || {
        let mut c = Command::new(krt);
        c.arg("run")
            .arg(dir.join("wf.yaml"))
            .arg("--quiet")
            .arg("--source")
            .arg(&src)
            .arg("--store")
            .arg(dir.join("store"))
            .arg("--work-dir")
            .arg(dir.join("work"));
        c
    };
    let cold = run(&mut krt_cmd());
    // Check the rerun is fully cached.
    let json = krt_cmd().args(["--output", "json"]).output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let cached = report["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["cached"] == true)
        .count();
    assert_eq!(cached, TASKS, "the rerun was not fully cached");
    let warm: Vec<Duration> = (0..RUNS).map(|_| run(&mut krt_cmd())).collect();
    let (krt_med, krt_min) = stats(warm);

    println!("{TASKS}-job workflow (10 chains of 10), 200 source files:");
    println!(
        "  krt run, cold (cache empty)       {:>8.1} ms",
        cold.as_secs_f64() * 1000.0
    );
    println!(
        "  krt run, fully cached (x{RUNS})      median {krt_med:.1} ms, min {krt_min:.1} ms (target < 100 ms)"
    );
    match setup_turbo(&dir.join("turbo")) {
        Ok(turbo) => {
            let tdir = dir.join("turbo");
            let turbo_cmd = || {
                let mut c = Command::new(&turbo);
                c.args(["run", "build", "--output-logs=errors-only"])
                    .current_dir(&tdir);
                c
            };
            // Two runs to populate and settle the cache, then measure.
            run(&mut turbo_cmd());
            run(&mut turbo_cmd());
            let t: Vec<Duration> = (0..RUNS).map(|_| run(&mut turbo_cmd())).collect();
            let (t_med, t_min) = stats(t);
            println!(
                "  turbo 2.5.8, fully cached (x{RUNS})  median {t_med:.1} ms, min {t_min:.1} ms"
            );
            println!(
                "cached rerun: krt median {krt_med:.1} ms vs turbo {t_med:.1} ms = {:.2}x turbo's time",
                krt_med / t_med
            );
        }
        Err(e) => println!("cached rerun: krt median {krt_med:.1} ms; turbo not measured: {e}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}
