//! A 1,000-job DAG of trivial steps, cache off, against GNU make -j and
//! ninja running the same graph with the same parallelism, in one run.
//!
//! Run it:   cargo bench -p kruntimes-engine --bench dag
//! (needs `make`; `ninja` is used when installed: apt-get install ninja-build)
//!
//! Shape: 10 wide layers of 50 jobs (each needs 2 jobs of the layer above)
//! plus 10 chains of 50 jobs. Every job runs `sh -c true`: make and ninja
//! spawn it through `sh -c`, kruntimes with `shell: sh` (`sh -ec true`) in a
//! fresh workspace with logs captured and stored, like any job.
//! Reported: wall times, the ratio to make, and the engine's per-job
//! overhead over make ((krt - make) / jobs).

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kruntimes_engine::embedded::{self, NodeReport, RunOptions, Ui};
use kruntimes_engine::plan::plan_str;
use kruntimes_runtime::cas::{Store, StoreOptions};
use kruntimes_runtime::exec::LogLine;
use tokio_util::sync::CancellationToken;

const WIDE_LAYERS: usize = 10;
const WIDTH: usize = 50;
const CHAINS: usize = 10;
const CHAIN_LEN: usize = 50;

struct Null;

impl Ui for Null {
    fn begin(&mut self, _: &str, _: &str, _: usize) {}
    fn started(&mut self, _: &str, _: u32) {}
    fn log(&mut self, _: &str, _: &LogLine) {}
    fn finished(&mut self, _: &NodeReport) {}
    fn note(&mut self, _: &str) {}
}

/// (name, needs) of every job, in a topological order.
fn graph() -> Vec<(String, Vec<String>)> {
    let mut jobs = Vec::new();
    for l in 0..WIDE_LAYERS {
        for i in 0..WIDTH {
            let needs = if l == 0 {
                vec![]
            } else {
                vec![
                    format!("w{}-{}", l - 1, i),
                    format!("w{}-{}", l - 1, (i + 1) % WIDTH),
                ]
            };
            jobs.push((format!("w{l}-{i}"), needs));
        }
    }
    for c in 0..CHAINS {
        for i in 0..CHAIN_LEN {
            let needs = if i == 0 {
                vec![]
            } else {
                vec![format!("c{c}-{}", i - 1)]
            };
            jobs.push((format!("c{c}-{i}"), needs));
        }
    }
    jobs
}

fn workflow(jobs: &[(String, Vec<String>)]) -> String {
    let mut y = String::from("defaults: {shell: sh}\njobs:\n");
    for (name, needs) in jobs {
        let _ = writeln!(y, "  {name}:");
        if !needs.is_empty() {
            let _ = writeln!(y, "    needs: [{}]", needs.join(", "));
        }
        let _ = writeln!(y, "    run: \"true\"");
    }
    y
}

fn makefile(jobs: &[(String, Vec<String>)]) -> String {
    let mut m = String::from(".PHONY: all\nall:");
    for (name, _) in jobs {
        let _ = write!(m, " {name}");
    }
    m.push('\n');
    for (name, needs) in jobs {
        let _ = writeln!(
            m,
            ".PHONY: {name}\n{name}: {}\n\t@sh -c true",
            needs.join(" ")
        );
    }
    m
}

fn ninja_file(jobs: &[(String, Vec<String>)]) -> String {
    // Phony outputs never exist, so every edge runs, in dependency order.
    let mut n = String::from("rule t\n  command = sh -c true\n");
    for (name, needs) in jobs {
        let deps: Vec<String> = needs.iter().map(|d| format!("{d}.stamp")).collect();
        let _ = writeln!(n, "build {name}.stamp: t || {}", deps.join(" "));
    }
    n
}

fn time(cmd: &mut Command) -> Option<Duration> {
    let start = Instant::now();
    let st = cmd.status().ok()?;
    st.success().then(|| start.elapsed())
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let jobs = graph();
    let n = jobs.len();
    let parallel = std::thread::available_parallelism().map_or(2, |p| p.get());
    let dir = std::env::temp_dir().join(format!("krt-bench-dag-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(dir.join("Makefile"), makefile(&jobs)).unwrap();
    std::fs::write(dir.join("build.ninja"), ninja_file(&jobs)).unwrap();
    let text = workflow(&jobs);
    let plan = plan_str("dag.yaml", &text).unwrap_or_else(|d| panic!("{}", d.render(false)));

    let make = time(
        Command::new("make")
            .arg(format!("-j{parallel}"))
            .arg("-s")
            .current_dir(&dir),
    )
    .expect("make ran");
    let ninja = time(
        Command::new("ninja")
            .arg(format!("-j{parallel}"))
            .arg("-C")
            .arg(&dir)
            .arg("--quiet")
            .stdout(std::process::Stdio::null()),
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = Store::open(dir.join("store").to_str().unwrap(), StoreOptions::default()).unwrap();
    let opts = RunOptions {
        params: vec![],
        jobs: parallel,
        no_cache: true,
        keep_going: false,
        only: vec![],
        source_root: dir.join("src"),
        keep_workspaces: false,
        work_dir: dir.join("work"),
        grace_period: Duration::from_secs(10),
        file: "dag.yaml".into(),
    };
    // First run: a fresh store, so every job's action record is a new blob.
    // Rerun: the same store with the cache still off, so every job runs
    // again but its (unchanged) action record is already stored, as when a
    // CI re-runs a workflow.
    let mut times = Vec::new();
    for _ in 0..2 {
        let start = Instant::now();
        let report = rt
            .block_on(embedded::run(
                &plan,
                &store,
                &opts,
                &mut Null,
                CancellationToken::new(),
            ))
            .unwrap();
        times.push(start.elapsed());
        assert_eq!(format!("{:?}", report.result), "Succeeded");
        assert_eq!(report.jobs.len(), n);
    }

    let s = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    println!(
        "{n} jobs ({WIDE_LAYERS}x{WIDTH} wide layers + {CHAINS} chains of {CHAIN_LEN}), -j{parallel}, cache off:"
    );
    println!("  make -j{parallel}      {}", s(make));
    match ninja {
        Some(d) => println!("  ninja -j{parallel}     {}", s(d)),
        None => println!("  ninja           not installed"),
    }
    println!("  krt run         {} (fresh store)", s(times[0]));
    println!("  krt run again   {} (same store, cache off)", s(times[1]));
    for (label, krt) in [("first run", times[0]), ("rerun", times[1])] {
        println!(
            "dag {label}: krt {} = {:.2}x make (target <= 2x){}; per-job overhead over make {:.2} ms",
            s(krt),
            krt.as_secs_f64() / make.as_secs_f64(),
            ninja.map_or(String::new(), |d| format!(
                ", {:.2}x ninja",
                krt.as_secs_f64() / d.as_secs_f64()
            )),
            (krt.as_secs_f64() - make.as_secs_f64()) * 1000.0 / n as f64
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = Path::new("");
}
