//! `krt run` and the verbs around it (`runs`, `logs`, `replay`, `explain`)
//! as a user runs them: the real binary, real child processes, a real store
//! on disk. Each test has its own store, source tree and work dir, so tests
//! share nothing and run in parallel.
//!
//! Outcomes are read from `--output json`, the `RunReport` on stdout.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use kruntimes_runtime::Digest;
use kruntimes_runtime::cas::{Store, StoreOptions};
use kruntimes_tests::{TempDir, krt, krt_bin, repo_root, stderr, stdout};
use serde_json::Value;

/// One isolated engine: a store, a source tree and a work dir of its own,
/// plus room for workflow files and files steps write outside their
/// workspace (counters, pid files).
struct Sandbox {
    dir: TempDir,
}

impl Sandbox {
    fn new(name: &str) -> Self {
        let dir = TempDir::new(&format!("run-{name}"));
        for sub in ["store", "src", "work"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        Self { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn store(&self) -> String {
        self.path("store").display().to_string()
    }

    fn source(&self) -> PathBuf {
        self.path("src")
    }

    /// Writes `text` to `rel` (under the sandbox) and returns its path.
    fn write(&self, rel: &str, text: &str) -> String {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }

    /// Writes a file of the source tree.
    fn write_source(&self, rel: &str, text: &str) {
        self.write(&format!("src/{rel}"), text);
    }

    /// `krt run FILE --store --source --work-dir ARGS...`.
    fn run_args(&self, file: &str, source: &str, args: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = vec![
            "run".into(),
            file.into(),
            "--store".into(),
            self.store(),
            "--source".into(),
            source.into(),
            "--work-dir".into(),
            self.path("work").display().to_string(),
        ];
        v.extend(args.iter().map(|s| s.to_string()));
        v
    }

    /// Runs a workflow with the sandbox's source tree.
    fn run(&self, file: &str, args: &[&str]) -> Output {
        let source = self.source().display().to_string();
        let args = self.run_args(file, &source, args);
        krt(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// Runs a workflow with `--output json` and parses the report.
    fn run_json(&self, file: &str, args: &[&str]) -> (Option<i32>, Report) {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        let out = self.run(file, &all);
        (out.status.code(), Report::parse(&out))
    }

    /// Runs another verb against the sandbox's store.
    fn krt(&self, args: &[&str]) -> Output {
        let store = self.store();
        let mut all = args.to_vec();
        all.extend(["--store", store.as_str()]);
        krt(&all)
    }

    /// `krt logs RUN JOB`, which must succeed.
    fn logs(&self, run: &str, job: &str) -> String {
        let out = self.krt(&["logs", run, job]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        stdout(&out)
    }

    /// The store, opened in this process (no local blob cache).
    fn open_store(&self) -> Store {
        Store::open(
            &self.store(),
            StoreOptions {
                cache_dir: None,
                cache_max_bytes: 0,
            },
        )
        .unwrap()
    }
}

/// The JSON report of `krt run --output json`.
#[derive(Debug)]
struct Report(Value);

impl Report {
    fn parse(out: &Output) -> Self {
        let text = stdout(out);
        let v = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "stdout is not a JSON report ({e}):\n{text}\nstderr:\n{}",
                stderr(out)
            )
        });
        Self(v)
    }

    fn id(&self) -> &str {
        self.0["id"].as_str().unwrap()
    }

    fn result(&self) -> &str {
        self.0["result"].as_str().unwrap()
    }

    fn jobs(&self) -> &[Value] {
        self.0["jobs"].as_array().unwrap()
    }

    fn job(&self, node: &str) -> &Value {
        self.jobs()
            .iter()
            .find(|j| j["node"] == node)
            .unwrap_or_else(|| panic!("no job `{node}` in {:#}", self.0))
    }

    /// `node -> result` of every job.
    fn results(&self) -> BTreeMap<String, String> {
        self.jobs()
            .iter()
            .map(|j| {
                (
                    j["node"].as_str().unwrap().to_string(),
                    j["result"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    fn cached(&self, node: &str) -> bool {
        self.job(node)["cached"].as_bool().unwrap()
    }

    fn output(&self, node: &str, key: &str) -> &str {
        self.job(node)["outputs"][key]
            .as_str()
            .unwrap_or_else(|| panic!("job `{node}` has no output `{key}`: {:#}", self.0))
    }

    fn artifact(&self, node: &str, name: &str) -> Digest {
        self.job(node)["artifacts"][name]
            .as_str()
            .unwrap_or_else(|| panic!("job `{node}` has no artifact `{name}`: {:#}", self.0))
            .parse()
            .unwrap()
    }
}

fn expect(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn top_level_examples() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(repo_root().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    files.sort();
    files
}

/// Counts the lines of a file steps append to (0 when it does not exist).
fn lines(path: &str) -> usize {
    std::fs::read_to_string(path).map_or(0, |s| s.lines().count())
}

#[test]
fn every_example_runs_with_its_expected_outcome() {
    for file in top_level_examples() {
        let sb = Sandbox::new("example");
        let path = format!("examples/{file}");
        let (code, r) = sb.run_json(&path, &[]);
        let ok = |code: Option<i32>| assert_eq!(code, Some(0), "{file}: {:#}", r.0);
        match file.as_str() {
            "hello.yaml" => {
                ok(code);
                assert_eq!(r.results(), expect(&[("hello", "success")]));
                assert!(sb.logs(r.id(), "hello").contains("hello from kruntimes"));
            }
            "diamond.yaml" => {
                ok(code);
                assert_eq!(
                    r.results(),
                    expect(&[
                        ("version", "success"),
                        ("build", "success"),
                        ("docs", "success"),
                        ("release", "success"),
                    ])
                );
                assert_eq!(r.output("version", "version"), "1.4.2");
                assert_eq!(r.output("build", "binary"), "app-1.4.2");
                assert_eq!(r.output("docs", "pages"), "12");
                // `release` read both needs' outputs.
                let log = sb.logs(r.id(), "release");
                assert!(log.contains("releasing app-1.4.2"), "{log}");
                assert!(log.contains("with 12 pages of docs"), "{log}");
                let log = sb.logs(r.id(), "build");
                assert!(log.contains("building 1.4.2 for stable"), "{log}");
            }
            "matrix.yaml" => {
                ok(code);
                assert_eq!(
                    r.results(),
                    expect(&[
                        ("test-linux-1", "success"),
                        ("test-linux-2", "success"),
                        ("test-linux-3", "success"),
                        ("test-macos-1", "success"),
                        ("test-macos-2", "success"),
                        ("report", "success"),
                    ])
                );
                let log = sb.logs(r.id(), "test-macos-2");
                assert!(log.contains("testing shard 2 of 3 on macos"), "{log}");
            }
            "cleanup.yaml" => {
                assert_eq!(code, Some(1), "{file}: {:#}", r.0);
                assert_eq!(r.result(), "failed");
                assert_eq!(
                    r.results(),
                    expect(&[
                        ("provision", "success"),
                        ("deploy", "failure"),
                        ("smoke-test", "skipped"),
                        ("cleanup", "success"),
                        ("notify", "success"),
                    ])
                );
                assert_eq!(r.output("provision", "env"), "staging-42");
                let log = sb.logs(r.id(), "deploy");
                assert!(log.contains("error: health check failed"), "{log}");
                let log = sb.logs(r.id(), "cleanup");
                assert!(log.contains("tearing down staging-42"), "{log}");
                let log = sb.logs(r.id(), "notify");
                assert!(log.contains("paging the on-call"), "{log}");
            }
            "artifacts.yaml" => {
                ok(code);
                assert_eq!(
                    r.results(),
                    expect(&[
                        ("build", "success"),
                        ("test-alice", "success"),
                        ("test-bob", "success"),
                        ("package", "success"),
                    ])
                );
                let size: u64 = r.output("package", "size").parse().unwrap();
                assert!(size > 0);
                // Contents are checked in the test below.
            }
            other => panic!(
                "examples/{other} has no expected outcome: add it to {}",
                file!()
            ),
        }
        assert_eq!(r.0["workflow"], file.trim_end_matches(".yaml"));
    }
}

#[test]
fn artifacts_example_passes_files_between_jobs_through_the_store() {
    let sb = Sandbox::new("artifacts");
    let (code, r) = sb.run_json("examples/artifacts.yaml", &[]);
    assert_eq!(code, Some(0), "{:#}", r.0);
    for cell in ["test-alice", "test-bob"] {
        assert_eq!(r.job(cell)["result"], "success");
    }
    let size: u64 = r.output("package", "size").parse().unwrap();
    let app = r.artifact("build", "app");
    let tarball = r.artifact("package", "tarball");

    let out = TempDir::new("run-artifacts-out");
    let store = sb.open_store();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        store.materialize(&app, &out.path().join("app")).await?;
        store.materialize(&tarball, &out.path().join("pkg")).await
    })
    .unwrap();

    // build.app: the script, still executable.
    let bin = out.path().join("app/dist/app");
    let run = Command::new(&bin).arg("carol").output().unwrap();
    assert_eq!(stdout(&run), "app 1.0: carol\n");

    // package.tarball: the size it reported, with both inputs inside.
    let tar = out.path().join("pkg/app.tar.gz");
    assert_eq!(std::fs::metadata(&tar).unwrap().len(), size);
    let list = Command::new("tar").arg("-tzf").arg(&tar).output().unwrap();
    let names = stdout(&list);
    assert!(names.lines().any(|l| l == "dist/app"), "{names}");
    assert!(names.lines().any(|l| l == "dist/README.txt"), "{names}");
}

const COUNTED: &str = "\
params:
  tally: ~
jobs:
  produce:
    steps:
      - run: echo produce >> {{ params.tally }}
      - run: echo \"answer=42\" >> \"$KRT_OUTPUT\"
  consume:
    needs: [produce]
    steps:
      - run: echo consume >> {{ params.tally }}
      - run: echo \"got={{ needs.produce.outputs.answer }}\" >> \"$KRT_OUTPUT\"
  publish:
    needs: [consume]
    cache: false
    run: echo publish >> {{ params.tally }}
";

#[test]
fn a_rerun_is_served_from_the_cache_and_no_cache_runs_everything() {
    let sb = Sandbox::new("cache");
    let wf = sb.write("ci.yaml", COUNTED);
    let tally = sb.path("tally").display().to_string();
    let p = format!("tally={tally}");

    let (code, first) = sb.run_json(&wf, &["-p", &p]);
    assert_eq!(code, Some(0), "{:#}", first.0);
    assert!(first.jobs().iter().all(|j| j["cached"] == false));
    assert_eq!(lines(&tally), 3);

    let (code, second) = sb.run_json(&wf, &["-p", &p]);
    assert_eq!(code, Some(0), "{:#}", second.0);
    assert!(second.cached("produce"));
    assert!(second.cached("consume"));
    assert!(!second.cached("publish"), "`cache: false` always runs");
    assert_eq!(second.job("publish")["result"], "success");
    // Cached jobs keep their outputs and did not run again.
    assert_eq!(second.output("consume", "got"), "42");
    let tally_text = std::fs::read_to_string(&tally).unwrap();
    assert_eq!(tally_text, "produce\nconsume\npublish\npublish\n");

    let (code, third) = sb.run_json(&wf, &["-p", &p, "--no-cache"]);
    assert_eq!(code, Some(0), "{:#}", third.0);
    assert!(third.jobs().iter().all(|j| j["cached"] == false));
    assert_eq!(lines(&tally), 7);
}

#[test]
fn a_source_edit_invalidates_only_jobs_whose_source_globs_match() {
    let sb = Sandbox::new("source");
    sb.write_source("src/lib.rs", "pub fn f() {}\n");
    sb.write_source("docs/guide.md", "# guide\n");
    sb.write_source("README.md", "readme\n");
    let wf = sb.write(
        "ci.yaml",
        "jobs:\n  \
           a:\n    source: [\"src/**\"]\n    run: cat src/lib.rs\n  \
           b:\n    source: [\"docs/**\"]\n    run: cat docs/guide.md\n  \
           whole:\n    run: cat README.md\n",
    );
    let (code, r) = sb.run_json(&wf, &[]);
    assert_eq!(code, Some(0), "{:#}", r.0);

    // An edit under docs/: only `b` (and `whole`, which depends on the whole tree) runs.
    sb.write_source("docs/guide.md", "# guide, revised\n");
    let (code, r) = sb.run_json(&wf, &[]);
    assert_eq!(code, Some(0), "{:#}", r.0);
    assert!(r.cached("a"), "{:#}", r.0);
    assert!(!r.cached("b"), "{:#}", r.0);
    assert!(!r.cached("whole"), "{:#}", r.0);
    assert!(sb.logs(r.id(), "b").contains("# guide, revised"));

    // An edit outside both globs: `a` and `b` stay cached.
    sb.write_source("README.md", "readme, revised\n");
    let (code, r) = sb.run_json(&wf, &[]);
    assert_eq!(code, Some(0), "{:#}", r.0);
    assert!(r.cached("a") && r.cached("b"), "{:#}", r.0);
    assert!(!r.cached("whole"), "{:#}", r.0);
}

#[test]
fn explain_names_the_step_param_or_source_file_that_changed() {
    let sb = Sandbox::new("explain");
    sb.write_source("src/lib.rs", "pub fn f() {}\n");
    let text = "params:\n  greeting: hi\njobs:\n  \
                  a:\n    source: [\"src/**\"]\n    run: echo \"{{ params.greeting }}\"\n  \
                  b:\n    run: echo old text\n";
    let wf = sb.write("ci.yaml", text);
    let (code, r) = sb.run_json(&wf, &[]);
    assert_eq!(code, Some(0), "{:#}", r.0);

    let source = sb.source().display().to_string();
    let explain = |job: &str, extra: &[&str]| {
        let mut args = vec!["explain", wf.as_str(), job, "--source", source.as_str()];
        args.extend_from_slice(extra);
        let out = sb.krt(&args);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        stdout(&out)
    };

    let out = explain("a", &[]);
    assert!(out.contains("a: served from the cache"), "{out}");

    // A parameter value: the old and new values are named.
    let out = explain("a", &["-p", "greeting=hello"]);
    assert!(out.contains("a: will run"), "{out}");
    assert!(out.contains("`hi` -> `hello`"), "{out}");

    // A source file under the job's globs.
    sb.write_source("src/lib.rs", "pub fn g() {}\n");
    let out = explain("a", &[]);
    assert!(out.contains("source files changed"), "{out}");
    assert!(out.contains("~ src/lib.rs"), "{out}");

    // A step's text.
    std::fs::write(&wf, text.replace("echo old text", "echo new text")).unwrap();
    let out = explain("b", &[]);
    assert!(out.contains("step 1: script changed"), "{out}");
    assert!(out.contains("- echo old text"), "{out}");
    assert!(out.contains("+ echo new text"), "{out}");
}

#[test]
fn replay_reproduces_a_failure_with_the_same_inputs_and_logs_print_the_recorded_log() {
    let sb = Sandbox::new("replay");
    sb.write_source("fixture.txt", "fixture v1\n");
    let wf = sb.write(
        "ci.yaml",
        "params:\n  who: world\njobs:\n  \
           make:\n    run: echo \"payload for {{ params.who }}\" > data.txt\n    \
             artifacts: {data: data.txt}\n  \
           check:\n    needs: [make]\n    inputs: [make.data]\n    steps:\n      \
             - run: cat data.txt fixture.txt\n      \
             - name: verify\n        run: |\n          \
                 echo \"expected 42, got 41\" >&2\n          exit 3\n",
    );
    let (code, r) = sb.run_json(&wf, &["-p", "who=bob"]);
    assert_eq!(code, Some(1), "{:#}", r.0);
    assert_eq!(r.job("check")["result"], "failure");
    assert_eq!(r.job("check")["message"], "verify failed with exit code 3");

    let recorded = sb.logs(r.id(), "check");
    for line in [
        "payload for bob",
        "fixture v1",
        "expected 42, got 41",
        "krt: verify failed with exit code 3",
    ] {
        assert!(recorded.lines().any(|l| l == line), "{line}: {recorded}");
    }

    // The tree changes after the run; replay still uses what was recorded:
    // the parameter, the input artifact and the source snapshot.
    sb.write_source("fixture.txt", "fixture v2\n");
    let out = sb.krt(&["replay", r.id(), "check"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let replayed = stdout(&out);
    assert!(replayed.contains("payload for bob"), "{replayed}");
    assert!(replayed.contains("fixture v1"), "{replayed}");
    assert!(!replayed.contains("fixture v2"), "{replayed}");
    assert!(replayed.contains("expected 42, got 41"), "{replayed}");
    assert!(stderr(&out).contains("replay failed"), "{}", stderr(&out));

    // A workflow name stands for its latest run.
    assert_eq!(sb.logs("ci", "check"), recorded);
}

/// True while `pid` is a live `sleep` process (a zombie counts as gone, and
/// so does a pid reused by another program).
fn sleeper_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `PID (comm) STATE ...`; comm may hold spaces, so split at the last `)`.
    let Some((head, tail)) = stat.rsplit_once(')') else {
        return false;
    };
    head.ends_with("(sleep") && !tail.trim_start().starts_with('Z')
}

fn signal(sig: &str, pid: u32) {
    let _ = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Polls `f` every 20 ms for up to `secs`; true once it holds.
fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `krt run` started in the background. If the test fails half-way, drop
/// stops it the way a user would (SIGINT, then SIGKILL) and kills the
/// sleeper, so a failing test leaves nothing running either.
struct Background {
    child: std::process::Child,
    sleeper: Option<u32>,
}

impl Drop for Background {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            signal("-INT", self.child.id());
            if !eventually(15, || !matches!(self.child.try_wait(), Ok(None))) {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        if let Some(pid) = self.sleeper
            && sleeper_alive(pid)
        {
            signal("-KILL", pid);
        }
    }
}

#[test]
fn ctrl_c_cancels_the_run_and_leaves_no_process_behind() {
    let sb = Sandbox::new("ctrl-c");
    let wf = sb.write(
        "ci.yaml",
        "params:\n  pidfile: ~\njobs:\n  hang:\n    run: |\n      \
           sleep 1000 &\n      echo $! > {{ params.pidfile }}\n      wait\n",
    );
    let pidfile = sb.path("sleeper.pid");
    let source = sb.source().display().to_string();
    let p = format!("pidfile={}", pidfile.display());
    let args = sb.run_args(&wf, &source, &["-p", &p, "--output", "json"]);
    let mut bg = Background {
        child: Command::new(krt_bin())
            .args(&args)
            .current_dir(repo_root())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        sleeper: None,
    };

    let read_pid = || {
        std::fs::read_to_string(&pidfile)
            .ok()
            // `echo` writes the newline with the number: a whole line is a whole pid.
            .filter(|s| s.ends_with('\n'))
            .and_then(|s| s.trim().parse::<u32>().ok())
    };
    assert!(
        eventually(20, || read_pid().is_some()),
        "the step never wrote its pid file"
    );
    let sleeper = read_pid().unwrap();
    bg.sleeper = Some(sleeper);
    // `$!` is known as soon as bash forks; wait until the child is `sleep`.
    assert!(
        eventually(20, || sleeper_alive(sleeper)),
        "the step's `sleep` never started"
    );

    signal("-INT", bg.child.id());
    assert!(
        eventually(20, || !matches!(bg.child.try_wait(), Ok(None))),
        "krt did not exit within 20 s of SIGINT"
    );
    let status = bg.child.wait().unwrap();
    // Checked first: nothing of the job may outlive krt.
    assert!(
        !sleeper_alive(sleeper),
        "the step's background `sleep` outlived krt"
    );
    let mut out = String::new();
    let mut err = String::new();
    bg.child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    bg.child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(130), "{err}");

    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(report["result"], "cancelled");
    assert_eq!(report["jobs"][0]["result"], "cancelled");
    let id = report["id"].as_str().unwrap();

    // Recorded as cancelled.
    let runs = sb.krt(&["runs"]);
    let row = stdout(&runs)
        .lines()
        .find(|l| l.starts_with(id))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("run {id} is not listed: {}", stdout(&runs)));
    assert!(row.split_whitespace().any(|w| w == "cancelled"), "{row}");
    let log = sb.logs(id, "hang");
    assert!(log.contains("cancel"), "{log}");
}

#[test]
fn a_failed_attempt_is_retried_after_a_backoff() {
    let sb = Sandbox::new("retry");
    let counter = sb.path("attempts").display().to_string();
    let wf = sb.write(
        "ci.yaml",
        "params:\n  counter: ~\njobs:\n  flaky:\n    retries: 2\n    run: |\n      \
           echo attempt >> {{ params.counter }}\n      \
           n=$(wc -l < {{ params.counter }})\n      \
           echo \"attempt $n\"\n      \
           [ \"$n\" -ge 2 ]\n",
    );
    let (code, r) = sb.run_json(&wf, &["-p", &format!("counter={counter}")]);
    assert_eq!(code, Some(0), "{:#}", r.0);
    assert_eq!(r.job("flaky")["result"], "success");
    assert_eq!(r.job("flaky")["attempts"], 2);
    assert_eq!(lines(&counter), 2, "a third attempt ran");
    // The recorded log is the successful attempt's.
    assert!(sb.logs(r.id(), "flaky").contains("attempt 2"));
}

const BRANCHES: &str = "\
params:
  nap: ~
jobs:
  fails:
    run: exit 1
  slow:
    run: sleep {{ params.nap }}; echo slow done
  after-slow:
    needs: [slow]
    run: echo after
";

#[test]
fn a_failure_cancels_independent_jobs_unless_keep_going() {
    let sb = Sandbox::new("fail-fast");
    let wf = sb.write("ci.yaml", BRANCHES);

    // Fail fast: `slow` would sleep for a minute; the failure stops it.
    let (code, r) = sb.run_json(&wf, &["-p", "nap=60", "--jobs", "4"]);
    assert_eq!(code, Some(1), "{:#}", r.0);
    assert_eq!(r.result(), "failed");
    assert_eq!(
        r.results(),
        expect(&[
            ("fails", "failure"),
            ("slow", "cancelled"),
            ("after-slow", "cancelled"),
        ])
    );
    assert_eq!(r.job("after-slow")["attempts"], 0, "never started");

    let (code, r) = sb.run_json(&wf, &["-p", "nap=0.2", "--jobs", "4", "--keep-going"]);
    assert_eq!(code, Some(1), "{:#}", r.0);
    assert_eq!(r.result(), "failed");
    assert_eq!(
        r.results(),
        expect(&[
            ("fails", "failure"),
            ("slow", "success"),
            ("after-slow", "success"),
        ])
    );
    assert!(sb.logs(r.id(), "slow").contains("slow done"));
}

#[test]
fn only_runs_the_named_job_and_what_it_needs() {
    let sb = Sandbox::new("only");
    let (code, r) = sb.run_json("examples/diamond.yaml", &["--only", "build"]);
    assert_eq!(code, Some(0), "{:#}", r.0);
    assert_eq!(
        r.results(),
        expect(&[("version", "success"), ("build", "success")])
    );
    assert_eq!(r.output("build", "binary"), "app-1.4.2");
}

#[test]
fn an_unknown_only_job_exits_2_with_a_hint() {
    let sb = Sandbox::new("only-unknown");
    let out = sb.run("examples/diamond.yaml", &["--only", "relase"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("no job `relase`"), "{err}");
    assert!(err.contains("did you mean `release`?"), "{err}");
    assert_eq!(stdout(&out), "");
    assert!(
        !Path::new(&sb.store()).join("refs/runs").exists(),
        "nothing ran"
    );
}

#[test]
fn an_invalid_workflow_exits_3_with_file_line_and_column() {
    let sb = Sandbox::new("invalid");
    let wf = sb.write(
        "ci.yaml",
        "jobs:\n  build:\n    run: make\n  test:\n    needs: [biuld]\n    run: make test\n",
    );
    let out = sb.run(&wf, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(&format!("{wf}:5:13")), "{err}");
    assert!(err.contains("did you mean `build`?"), "{err}");
}

#[test]
fn an_unknown_param_exits_2_naming_it() {
    let sb = Sandbox::new("param");
    let out = sb.run("examples/diamond.yaml", &["-p", "chanel=beta"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("unknown parameter `chanel`"), "{err}");
    assert!(err.contains("did you mean `channel`?"), "{err}");
}

#[test]
fn the_rust_crate_example_builds_tests_and_runs_its_binary() {
    let sb = Sandbox::new("rust-crate");
    let args = sb.run_args(
        "examples/rust-crate/ci.yaml",
        "examples/rust-crate",
        &["--output", "json"],
    );
    let out = krt(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let r = Report::parse(&out);
    assert_eq!(out.status.code(), Some(0), "{:#}\n{}", r.0, stderr(&out));
    assert_eq!(
        r.results(),
        expect(&[
            ("fmt", "success"),
            ("build", "success"),
            ("test", "success"),
            ("smoke", "success"),
        ])
    );
    assert_eq!(r.output("build", "version"), "0.1.0");
    assert!(r.job("build")["artifacts"]["bin"].is_string(), "{:#}", r.0);
    let log = sb.logs(r.id(), "smoke");
    assert!(log.contains("running greet 0.1.0"), "{log}");
    assert!(log.lines().any(|l| l == "hello, kruntimes!"), "{log}");
    let log = sb.logs(r.id(), "test");
    assert!(log.contains("greeting_names_the_person ... ok"), "{log}");
}

#[test]
fn a_workflow_name_stands_for_its_own_latest_run() {
    let sb = Sandbox::new("names");
    // Names with digits, one a prefix of the other.
    let k8s = sb.write("k8s.yaml", "jobs:\n  deploy:\n    run: echo from k8s\n");
    let nightly = sb.write(
        "k8s-nightly.yaml",
        "jobs:\n  deploy:\n    run: echo from k8s-nightly\n",
    );
    let (_, first) = sb.run_json(&k8s, &[]);
    let (_, second) = sb.run_json(&nightly, &[]);
    assert_eq!(first.0["workflow"], "k8s");
    assert_eq!(second.0["workflow"], "k8s-nightly");

    assert_eq!(sb.logs("k8s", "deploy"), "from k8s\n");
    assert_eq!(sb.logs("k8s-nightly", "deploy"), "from k8s-nightly\n");
    assert_eq!(sb.logs("latest", "deploy"), "from k8s-nightly\n");
    assert_eq!(sb.logs(first.id(), "deploy"), "from k8s\n");
}
