//! The `krt` binary as a user runs it: exit codes, output streams, formats.

use std::io::Write as _;
use std::process::{Command, Stdio};

use kruntimes_tests::{TempDir, krt, repo_root, stderr, stdout};

fn examples() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(repo_root().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| format!("examples/{}", p.file_name().unwrap().to_string_lossy()))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_validates() {
    let files = examples();
    assert!(files.len() >= 5, "examples: {files:?}");
    let mut args = vec!["validate"];
    args.extend(files.iter().map(String::as_str));
    let out = krt(&args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let ok = stdout(&out)
        .lines()
        .filter(|l| l.starts_with("ok: "))
        .count();
    assert_eq!(ok, files.len(), "{}", stdout(&out));
    assert_eq!(stderr(&out), "", "examples have no warnings");
}

#[test]
fn every_example_opens_with_how_to_run_it() {
    for f in examples() {
        let text = std::fs::read_to_string(repo_root().join(&f)).unwrap();
        assert!(text.starts_with('#'), "{f} must open with a comment");
        assert!(text.contains("krt "), "{f} must say how to run it");
    }
}

#[test]
fn invalid_file_exits_3_with_file_line_and_column() {
    let dir = TempDir::new("cli");
    let file = dir.path().join("ci.yaml");
    std::fs::write(
        &file,
        "jobs:\n  build:\n    run: make\n  test:\n    needs: [biuld]\n    run: make test\n",
    )
    .unwrap();
    let out = krt(&["validate", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    let err = stderr(&out);
    assert!(
        err.contains("error: job `test` needs unknown job `biuld`"),
        "{err}"
    );
    assert!(err.contains(&format!("{}:5:13", file.display())), "{err}");
    assert!(err.contains("help: did you mean `build`?"), "{err}");
    assert_eq!(
        stdout(&out),
        format!("invalid: {}: 1 error\n", file.display())
    );
}

#[test]
fn one_invalid_file_among_valid_ones_fails_the_whole_command() {
    let dir = TempDir::new("cli");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "jobs: {a: {run: x, needs: [a]}}\n").unwrap();
    let out = krt(&["validate", "examples/hello.yaml", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stdout(&out).starts_with("ok: examples/hello.yaml"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn missing_file_is_reported_not_panicked() {
    let out = krt(&["validate", "does/not/exist.yaml"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("cannot read the file"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn warnings_pass_unless_denied() {
    let dir = TempDir::new("cli");
    let file = dir.path().join("w.yaml");
    std::fs::write(
        &file,
        "jobs:\n  a: {run: x}\n  b: {needs: [a, a], run: x}\n",
    )
    .unwrap();
    let out = krt(&["validate", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("warning: job `b` lists `a` twice"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).contains("1 warning"), "{}", stdout(&out));
    let denied = krt(&["validate", "--deny-warnings", file.to_str().unwrap()]);
    assert_eq!(denied.status.code(), Some(3));
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(krt(&["validate"]).status.code(), Some(2));
    assert_eq!(
        krt(&["graph", "examples/hello.yaml", "--format", "png"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(krt(&["no-such-verb"]).status.code(), Some(2));
}

#[test]
fn graph_text_lists_levels_and_needs() {
    let out = krt(&["graph", "examples/diamond.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    insta::assert_snapshot!(stdout(&out));
}

#[test]
fn graph_dot_is_accepted_by_graphviz() {
    let out = krt(&["graph", "--format", "dot", "examples/matrix.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut dot = Command::new("dot")
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("Graphviz `dot` is installed (tests/run.sh installs it)");
    dot.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    let svg = dot.wait_with_output().unwrap();
    assert!(
        svg.status.success(),
        "dot rejected the graph: {}",
        String::from_utf8_lossy(&svg.stderr)
    );
    let svg = String::from_utf8_lossy(&svg.stdout);
    assert!(
        svg.contains("test (os=macos, shard=2)"),
        "node label missing"
    );
    assert!(
        svg.contains("test&#45;linux&#45;1&#45;&gt;report"),
        "edge missing"
    );
}

#[test]
fn graph_mermaid_is_a_flowchart() {
    let out = krt(&["graph", "-f", "mermaid", "examples/diamond.yaml"]);
    assert_eq!(out.status.code(), Some(0));
    insta::assert_snapshot!(stdout(&out));
}

#[test]
fn graph_of_an_invalid_file_exits_3() {
    let dir = TempDir::new("cli");
    let file = dir.path().join("c.yaml");
    std::fs::write(
        &file,
        "jobs: {a: {needs: [b], run: x}, b: {needs: [a], run: x}}\n",
    )
    .unwrap();
    let out = krt(&["graph", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("dependency cycle: a -> b -> a"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stdout(&out), "");
}

#[test]
fn crds_prints_the_committed_yaml() {
    let out = krt(&["crds"]);
    assert_eq!(out.status.code(), Some(0));
    let committed = std::fs::read_to_string(repo_root().join("crds/generated/crds.yaml")).unwrap();
    assert_eq!(stdout(&out), committed);
}

#[test]
fn version_and_help_teach() {
    let v = krt(&["--version"]);
    assert_eq!(stdout(&v), format!("krt {}\n", env!("CARGO_PKG_VERSION")));
    let help = stdout(&krt(&["--help"]));
    assert!(help.contains("Exit codes:"), "{help}");
    for verb in ["validate", "graph", "crds"] {
        let h = stdout(&krt(&[verb, "--help"]));
        assert!(
            h.contains("Example"),
            "`krt {verb} --help` has no example:\n{h}"
        );
    }
}
