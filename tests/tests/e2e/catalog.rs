//! The step catalog as a user meets it: `krt catalog list|show`, `uses:`
//! errors from `krt validate`, and the built-in entries run for real by
//! `krt run` on small projects written by each test, with the outcome
//! asserted (a passing project passes, a broken one fails).
//!
//! The tools come from the machine: cargo and cargo-nextest, Python with
//! pip (pytest and ruff are installed from PyPI into the job's venv), Node.js
//! and npm, Go, ShellCheck (`tests/run.sh` installs it), coreutils, GNU tar,
//! zstd and git. A missing tool fails the test with its name; nothing is
//! skipped silently.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kruntimes_runtime::cas::{Store, StoreOptions};
use kruntimes_tests::{TempDir, krt, krt_bin, repo_root, stderr, stdout};
use serde_json::Value;

/// A store, a source tree and a work dir of one test.
struct Sandbox {
    dir: TempDir,
}

impl Sandbox {
    fn new(name: &str) -> Self {
        let dir = TempDir::new(&format!("catalog-{name}"));
        for sub in ["store", "src", "work"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        Self { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes `text` to `rel` under the sandbox and returns its path.
    fn write(&self, rel: &str, text: &str) -> String {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }

    /// Writes a file of the source tree.
    fn source(&self, rel: &str, text: &str) {
        self.write(&format!("src/{rel}"), text);
    }

    /// `krt run FILE --output json` on the sandbox; `env` adds variables.
    fn run(&self, file: &str, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, Report) {
        let out = Command::new(krt_bin())
            .args(["run", file, "--output", "json", "--store"])
            .arg(self.path("store"))
            .arg("--source")
            .arg(self.path("src"))
            .arg("--work-dir")
            .arg(self.path("work"))
            .args(args)
            .env_remove("KRT_CATALOG_PATH")
            .envs(env.iter().copied())
            .env("NO_COLOR", "1")
            .current_dir(repo_root())
            .output()
            .expect("krt runs");
        (out.status.code(), Report::parse(&out))
    }

    /// `krt logs RUN JOB`.
    fn logs(&self, run: &str, job: &str) -> String {
        let store = self.path("store").display().to_string();
        let out = krt(&["logs", run, job, "--store", &store]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        stdout(&out)
    }
}

/// The JSON report of `krt run --output json`.
#[derive(Debug)]
struct Report(Value);

impl Report {
    fn parse(out: &Output) -> Self {
        let text = stdout(out);
        Self(serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "stdout is not a JSON report ({e}):\n{text}\nstderr:\n{}",
                stderr(out)
            )
        }))
    }

    fn id(&self) -> &str {
        self.0["id"].as_str().unwrap()
    }

    fn job(&self, node: &str) -> &Value {
        self.0["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["node"] == node)
            .unwrap_or_else(|| panic!("no job `{node}` in {:#}", self.0))
    }

    fn results(&self) -> BTreeMap<String, String> {
        self.0["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| {
                (
                    j["node"].as_str().unwrap().to_string(),
                    j["result"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    fn output(&self, node: &str, key: &str) -> &str {
        self.job(node)["outputs"][key]
            .as_str()
            .unwrap_or_else(|| panic!("job `{node}` has no output `{key}`: {:#}", self.0))
    }
}

fn expect(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Fails the test, naming the tool, when it is not on the PATH.
fn require(tool: &str, how: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "`{tool}` is not installed, and a catalog entry test runs it for real ({how})"
    );
}

fn builtin_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo_root().join("catalog"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn catalog_list_shows_every_entry_with_its_versions_and_description() {
    let out = krt(&["catalog", "list"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("ENTRY"), "{text}");
    for name in builtin_names() {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name.as_str()))
            .unwrap_or_else(|| panic!("{name} is not listed:\n{text}"));
        assert!(line.contains("v1 (1."), "{line}");
    }
    assert!(
        text.contains("Run the tests of a Rust crate or workspace"),
        "{text}"
    );
}

#[test]
fn catalog_list_markdown_is_the_table_in_the_readme() {
    let out = krt(&["catalog", "list", "--format", "markdown"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    assert!(
        readme.contains(&stdout(&out)),
        "README.md's catalog table is out of date; regenerate it with `krt catalog list --format markdown`"
    );
}

#[test]
fn catalog_show_prints_parameters_the_rendered_steps_and_an_example() {
    let out = krt(&["catalog", "show", "cargo-test@v1"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    for want in [
        "cargo-test@v1 (1.0.0): Run the tests",
        "from catalog/cargo-test/v1.yaml (built in)",
        "  nextest       default false",
        "steps, with the default parameters:\n  1. cargo test\n       cargo test --locked\n",
        "example:\n",
        "uses: cargo-test@v1",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
    // A bare name shows the newest version; a required parameter shows as
    // a placeholder.
    let out = krt(&["catalog", "show", "git-checkout"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("git remote add origin <url>"));
}

#[test]
fn catalog_show_of_an_unknown_entry_or_version_exits_2_with_a_hint() {
    let out = krt(&["catalog", "show", "cargo-tset"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "error: unknown catalog entry `cargo-tset`\n  (hint: did you mean `cargo-test`?)\n"
    );
    let out = krt(&["catalog", "show", "cargo-test@v9"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("(hint: available versions of `cargo-test`: v1)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn uses_errors_have_file_line_column_and_a_suggestion() {
    let sb = Sandbox::new("errors");
    let file = sb.write(
        "ci.yaml",
        "jobs:\n  test:\n    steps:\n      - uses: cargo-tset@v1\n      - uses: cargo-test@v1\n        with: {nexttest: true}\n",
    );
    let out = krt(&["validate", &file]);
    assert_eq!(out.status.code(), Some(3));
    let err = stderr(&out);
    assert!(
        err.contains("error: unknown catalog entry `cargo-tset`"),
        "{err}"
    );
    assert!(err.contains(&format!("{file}:4:15")), "{err}");
    assert!(err.contains("help: did you mean `cargo-test`?"), "{err}");
    assert!(
        err.contains("error: `cargo-test@v1` has no parameter `nexttest`"),
        "{err}"
    );
    assert!(err.contains(&format!("{file}:6:16")), "{err}");
    assert!(err.contains("help: did you mean `nextest`?"), "{err}");
}

/// A crate with a library, a test and a binary; no dependencies.
fn write_crate(sb: &Sandbox, lib: &str) {
    sb.source(
        "Cargo.toml",
        "[package]\nname = \"fixture\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n",
    );
    sb.source(
        "Cargo.lock",
        "# This file is automatically @generated by Cargo.\n# It is not intended for manual editing.\nversion = 4\n\n[[package]]\nname = \"fixture\"\nversion = \"0.1.0\"\n",
    );
    sb.source("src/lib.rs", lib);
    sb.source(
        "src/main.rs",
        "fn main() {\n    println!(\"{}\", fixture::double(21));\n}\n",
    );
}

const LIB: &str = "/// Twice `x`.\npub fn double(x: i32) -> i32 {\n    x * 2\n}\n\n#[cfg(test)]\nmod tests {\n    #[test]\n    fn double_doubles() {\n        assert_eq!(super::double(21), 42);\n    }\n}\n";

#[test]
fn rust_entries_check_format_lint_build_and_test_a_crate() {
    require("cargo", "the Rust toolchain");
    require("cargo-nextest", "cargo install cargo-nextest");
    let sb = Sandbox::new("rust");
    write_crate(&sb, LIB);
    let file = sb.write(
        "ci.yaml",
        "jobs:\n  fmt:\n    uses: cargo-fmt@v1\n  clippy:\n    uses: cargo-clippy@v1\n  build:\n    uses: cargo-build@v1\n    with: {profile: dev}\n    artifacts: {bin: target/debug/fixture}\n  test:\n    uses: cargo-test@v1\n  nextest:\n    uses: cargo-test@v1\n    with: {nextest: true, args: double}\n  run:\n    needs: [build]\n    inputs: [build.bin]\n    run: test \"$(./target/debug/fixture)\" = 42\n",
    );
    let (code, r) = sb.run(&file, &[], &[]);
    assert_eq!(code, Some(0), "{:#}", r.0);
    assert_eq!(
        r.results(),
        expect(&[
            ("fmt", "success"),
            ("clippy", "success"),
            ("build", "success"),
            ("test", "success"),
            ("nextest", "success"),
            ("run", "success"),
        ])
    );
    assert_eq!(r.output("build", "bin_dir"), "target/debug");
    let log = sb.logs(r.id(), "test");
    assert!(log.contains("tests::double_doubles ... ok"), "{log}");
    let log = sb.logs(r.id(), "nextest");
    assert!(log.contains("PASS"), "{log}");
    assert!(log.contains("tests::double_doubles"), "{log}");

    // Badly formatted code fails `cargo-fmt`; a lint fails `cargo-clippy`.
    write_crate(
        &sb,
        &format!("{LIB}\npub fn   ugly( ) -> bool {{ let x = 1; x == x }}\n"),
    );
    let (code, r) = sb.run(
        &file,
        &["--keep-going", "--only", "fmt", "--only", "clippy"],
        &[],
    );
    assert_eq!(code, Some(1), "{:#}", r.0);
    assert_eq!(
        r.results(),
        expect(&[("fmt", "failure"), ("clippy", "failure")])
    );
    let log = sb.logs(r.id(), "clippy");
    assert!(log.contains("eq_op"), "{log}");
}

#[test]
fn python_entries_create_a_venv_then_test_and_lint() {
    require("python3", "Python 3 with venv and pip");
    let sb = Sandbox::new("python");
    sb.source("requirements.txt", "pytest\nruff\n");
    sb.source(
        "calc.py",
        "def add(a: int, b: int) -> int:\n    return a + b\n",
    );
    sb.source(
        "tests/test_calc.py",
        "from calc import add\n\n\ndef test_add() -> None:\n    assert add(2, 3) == 5\n",
    );
    sb.source(
        "pyproject.toml",
        "[tool.pytest.ini_options]\npythonpath = [\".\"]\n",
    );
    sb.source("bad/unused.py", "import os\n\nx  = 1\n");
    let file = sb.write(
        "ci.yaml",
        "jobs:\n  test:\n    steps:\n      - uses: python-venv@v1\n      - uses: pytest@v1\n        with: {junit: reports/junit.xml, args: -v tests}\n      - uses: ruff@v1\n        with: {paths: calc.py tests}\n    artifacts: {junit: reports/junit.xml}\n  bad-lint:\n    steps:\n      - uses: python-venv@v1\n        with: {requirements: \"\", install: ruff}\n      - uses: ruff@v1\n        with: {paths: bad}\n",
    );
    let (code, r) = sb.run(&file, &["--keep-going"], &[]);
    assert_eq!(code, Some(1), "{:#}", r.0);
    assert_eq!(
        r.results(),
        expect(&[("test", "success"), ("bad-lint", "failure")])
    );
    assert!(r.output("test", "python").ends_with("/.venv/bin/python"));
    let log = sb.logs(r.id(), "test");
    assert!(log.contains("tests/test_calc.py::test_add PASSED"), "{log}");
    assert!(log.contains("All checks passed!"), "{log}");
    let log = sb.logs(r.id(), "bad-lint");
    assert!(log.contains("F401"), "`os` imported but unused: {log}");
}

#[test]
fn node_entries_install_with_npm_ci_and_run_scripts() {
    require("npm", "Node.js and npm");
    let sb = Sandbox::new("node");
    sb.source(
        "web/package.json",
        "{\n  \"name\": \"calc\",\n  \"version\": \"1.0.0\",\n  \"private\": true,\n  \"scripts\": {\"test\": \"node --test\", \"check\": \"node --check index.js\"}\n}\n",
    );
    sb.source(
        "web/package-lock.json",
        "{\n  \"name\": \"calc\",\n  \"version\": \"1.0.0\",\n  \"lockfileVersion\": 3,\n  \"requires\": true,\n  \"packages\": {\"\": {\"name\": \"calc\", \"version\": \"1.0.0\"}}\n}\n",
    );
    sb.source("web/index.js", "exports.add = (a, b) => a + b;\n");
    sb.source(
        "web/test/add.test.js",
        "const test = require('node:test');\nconst assert = require('node:assert');\nconst { add } = require('../index.js');\ntest('add adds', () => assert.strictEqual(add(2, 3), 5));\n",
    );
    let file = sb.write(
        "ci.yaml",
        "jobs:\n  test:\n    steps:\n      - uses: npm-ci@v1\n        with: {dir: web}\n      - uses: npm-test@v1\n        with: {dir: web, args: --test-reporter=tap}\n      - uses: npm-test@v1\n        with: {dir: web, script: check}\n  missing-script:\n    steps:\n      - uses: npm-test@v1\n        with: {dir: web, script: nope}\n",
    );
    let (code, r) = sb.run(&file, &["--keep-going"], &[]);
    assert_eq!(code, Some(1), "{:#}", r.0);
    assert_eq!(
        r.results(),
        expect(&[("test", "success"), ("missing-script", "failure")])
    );
    let log = sb.logs(r.id(), "test");
    assert!(log.contains("# pass 1"), "{log}");
    assert!(log.contains("# fail 0"), "{log}");
}

#[test]
fn go_entries_vet_and_test_a_module() {
    require("go", "the Go toolchain");
    let sb = Sandbox::new("go");
    sb.source("calc/go.mod", "module example.com/calc\n\ngo 1.19\n");
    sb.source(
        "calc/calc.go",
        "package calc\n\n// Add adds.\nfunc Add(a, b int) int { return a + b }\n",
    );
    sb.source(
        "calc/calc_test.go",
        "package calc\n\nimport \"testing\"\n\nfunc TestAdd(t *testing.T) {\n\tif Add(2, 3) != 5 {\n\t\tt.Fatal(\"2+3\")\n\t}\n}\n",
    );
    sb.source("ugly/go.mod", "module example.com/ugly\n\ngo 1.19\n");
    sb.source(
        "ugly/ugly.go",
        "package ugly\n\nfunc  F( ) int {return 1}\n",
    );
    let file = sb.write(
        "ci.yaml",
        "jobs:\n  vet:\n    uses: go-vet@v1\n    with: {dir: calc}\n  test:\n    uses: go-test@v1\n    with: {dir: calc, args: -count=1 -v}\n  fmt-ugly:\n    uses: go-vet@v1\n    with: {dir: ugly}\n",
    );
    let (code, r) = sb.run(&file, &["--keep-going"], &[]);
    assert_eq!(code, Some(1), "{:#}", r.0);
    assert_eq!(
        r.results(),
        expect(&[
            ("vet", "success"),
            ("test", "success"),
            ("fmt-ugly", "failure")
        ])
    );
    let log = sb.logs(r.id(), "test");
    assert!(log.contains("--- PASS: TestAdd"), "{log}");
    assert!(log.contains("ok  \texample.com/calc"), "{log}");
    let log = sb.logs(r.id(), "fmt-ugly");
    assert!(log.contains("ugly.go"), "{log}");
}

/// A git repository with two commits; returns the first one's id.
fn git_repo(dir: &Path) -> String {
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", stderr(&out));
        stdout(&out).trim().to_string()
    };
    std::fs::create_dir_all(dir).unwrap();
    git(&["init", "-q"]);
    std::fs::write(dir.join("VERSION"), "1\n").unwrap();
    git(&["add", "VERSION"]);
    git(&["commit", "-q", "-m", "one"]);
    let first = git(&["rev-parse", "HEAD"]);
    std::fs::write(dir.join("VERSION"), "2\n").unwrap();
    git(&["commit", "-q", "-am", "two"]);
    first
}

#[test]
fn generic_entries_lint_checksum_package_and_check_out() {
    require(
        "shellcheck",
        "`apt-get install shellcheck`; tests/run.sh installs it",
    );
    for tool in ["sha256sum", "tar", "zstd", "git"] {
        require(tool, "a Debian package");
    }
    let sb = Sandbox::new("generic");
    sb.source("scripts/ok.sh", "#!/bin/sh\necho \"hello $1\"\n");
    sb.source("bad/bad.sh", "#!/bin/sh\necho $1\n");
    sb.source("site/index.html", "<h1>hi</h1>\n");
    sb.source("site/css/a.css", "h1 {}\n");
    let first = git_repo(&sb.path("repo"));
    let url = format!("file://{}", sb.path("repo").display());
    let file = sb.write(
        "ci.yaml",
        "params:\n  url: {}\n  rev: {}\njobs:\n  shellcheck:\n    uses: shellcheck@v1\n    with: {files: \"scripts/*.sh\"}\n  shellcheck-bad:\n    uses: shellcheck@v1\n    with: {files: \"bad/**/*.sh\"}\n  package:\n    steps:\n      - uses: tar-zstd@v1\n        with: {dir: site, output: dist/site.tar.zst, level: 3}\n      - uses: sha256sum@v1\n        with: {files: \"dist/*.tar.zst\", output: dist/SHA256SUMS}\n      - run: |\n          sha256sum --check dist/SHA256SUMS\n          zstd -dc dist/site.tar.zst | tar -tf - | sort > dist/listing\n    artifacts: {archive: dist/site.tar.zst, listing: dist/listing}\n  again:\n    uses: tar-zstd@v1\n    with: {dir: site, output: again.tar.zst, level: 3}\n  checkout:\n    steps:\n      - uses: git-checkout@v1\n        with: {url: \"{{ params.url }}\", rev: \"{{ params.rev }}\", path: co}\n      - run: test \"$(cat co/VERSION)\" = 1\n",
    );
    let url_arg = format!("url={url}");
    let rev_arg = format!("rev={first}");
    let (code, r) = sb.run(
        &file,
        &["--keep-going", "-p", &url_arg, "-p", &rev_arg],
        &[],
    );
    assert_eq!(code, Some(1), "{:#}", r.0);
    assert_eq!(
        r.results(),
        expect(&[
            ("shellcheck", "success"),
            ("shellcheck-bad", "failure"),
            ("package", "success"),
            ("again", "success"),
            ("checkout", "success"),
        ])
    );
    let log = sb.logs(r.id(), "shellcheck-bad");
    assert!(log.contains("SC2086"), "unquoted $1: {log}");
    // The same tree packaged twice gives the same bytes.
    assert_eq!(r.output("package", "sha256"), r.output("again", "sha256"));
    assert_eq!(r.output("package", "files"), "1");
    let log = sb.logs(r.id(), "package");
    assert!(log.contains("dist/site.tar.zst: OK"), "{log}");
    assert_eq!(r.output("checkout", "commit"), first);
}

/// The action each job of a recorded run ran, from the store.
fn recorded_steps(sb: &Sandbox, run: &str) -> BTreeMap<String, Vec<Option<String>>> {
    let store = Store::open(
        &sb.path("store").display().to_string(),
        StoreOptions {
            cache_dir: None,
            cache_max_bytes: 0,
        },
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let rec = kruntimes_engine::embedded::record::load(&store, run)
            .await
            .unwrap();
        let mut out = BTreeMap::new();
        for j in &rec.jobs {
            let action = j.load_action(&store).await.unwrap().unwrap();
            out.insert(
                j.node.clone(),
                action.steps.iter().map(|s| s.from.clone()).collect(),
            );
        }
        out
    })
}

#[test]
fn own_entries_resolve_from_the_catalog_path_and_next_to_the_workflow() {
    let sb = Sandbox::new("own");
    sb.write(
        "mycatalog/greet/v2.yaml",
        "# Catalog entry `greet@v2`.\nname: greet\nversion: 2.1.0\ndescription: greet someone\nparams:\n  who: {description: whom, required: true}\n  loud: {description: shout, default: false}\nsteps:\n  - name: greet\n    run: |\n      msg=\"hello, {{ with.who }}\"\n      {%- if with.loud %}\n      msg=\"${msg^^}\"\n      {%- endif %}\n      echo \"$msg\"\n      echo \"msg=$msg\" >> \"$KRT_OUTPUT\"\n",
    );
    sb.write(
        "ci/steps/count.yaml",
        "name: count\nversion: 0.3.0\ndescription: count words\nparams:\n  text: {description: words, default: \"\"}\nsteps:\n  - run: |\n      set -- {% for w in with.text | split %} {{ w }}{% endfor %}\n      echo \"words=$#\" >> \"$KRT_OUTPUT\"\n",
    );
    let file = sb.write(
        "ci/ci.yaml",
        "params:\n  who: {default: world}\njobs:\n  greet:\n    uses: greet@v2\n    with: {who: \"{{ params.who }}\", loud: true}\n  count:\n    needs: [greet]\n    uses: ./steps/count.yaml\n    with: {text: \"{{ needs.greet.outputs.msg }}; rm -rf /tmp/x\"}\n",
    );
    let catalog = sb.path("mycatalog").display().to_string();
    let env = [("KRT_CATALOG_PATH", catalog.as_str())];
    let (code, r) = sb.run(&file, &["-p", "who=a b"], &env);
    assert_eq!(code, Some(0), "{:#}", r.0);
    assert_eq!(r.output("greet", "msg"), "HELLO, A B");
    assert_eq!(r.output("count", "words"), "6");
    // The record keeps where every step came from.
    let steps = recorded_steps(&sb, r.id());
    assert_eq!(steps["greet"], [Some("greet@2.1.0".to_string())]);
    assert_eq!(steps["count"], [Some("count@0.3.0".to_string())]);

    // Unchanged, the jobs come from the step cache.
    let (code, again) = sb.run(&file, &["-p", "who=a b"], &env);
    assert_eq!(code, Some(0), "{:#}", again.0);
    assert_eq!(again.job("greet")["cached"], true);
    assert_eq!(again.job("count")["cached"], true);

    // Without the catalog directory, the entry is unknown.
    let out = krt(&["validate", &file]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("error: unknown catalog entry `greet`"),
        "{}",
        stderr(&out)
    );
}
