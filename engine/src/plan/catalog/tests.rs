//! Catalog tests: every built-in entry reads, plans its example and renders
//! to valid bash; `uses:` errors are pinned as snapshots; the expanded form
//! round-trips without the catalog; the README table matches the entries.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use indexmap::IndexMap;
use insta::assert_snapshot;

use super::resolve::{Location, Resolver};
use super::show;
use crate::plan::render::{NeedState, RenderContext, RenderedJob, render_job, resolve_params};
use crate::plan::{Plan, plan_str, plan_str_with};

/// Plans `yaml` with `resolver` and returns the rendered diagnostics, or `ok`.
fn check_with(yaml: &str, resolver: &Resolver) -> String {
    match plan_str_with("ci.yaml", yaml, resolver) {
        Ok(p) if p.warnings.is_empty() => "ok".to_string(),
        Ok(p) => crate::plan::Diagnostics::new(p.source.clone(), p.warnings.clone()).render(false),
        Err(d) => d.render(false),
    }
}

fn check(yaml: &str) -> String {
    check_with(yaml, &Resolver::builtin())
}

fn plan_with(yaml: &str, resolver: &Resolver) -> Plan {
    plan_str_with("ci.yaml", yaml, resolver)
        .unwrap_or_else(|d| panic!("expected a valid workflow:\n{}\n{yaml}", d.render(false)))
}

/// Renders every node, with `-p` values `given` (required parameters
/// without one get `x`).
fn render_all(p: &Plan, given: &[(&str, &str)]) -> Vec<RenderedJob> {
    let mut pairs: Vec<(String, String)> = given
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (k, param) in &p.ast.params {
        if param.default.is_none() && !given.iter().any(|(g, _)| g == k) {
            pairs.push((k.clone(), "x".into()));
        }
    }
    let params = resolve_params(p, &pairs).unwrap();
    let needs: BTreeMap<String, NeedState> = BTreeMap::new();
    let ctx = RenderContext {
        params: &params,
        needs: &needs,
        workflow_id: "w1",
        cancelled: false,
    };
    (0..p.nodes.len())
        .map(|n| render_job(p, n, &ctx).unwrap_or_else(|d| panic!("{d:?}")))
        .collect()
}

/// `bash -n`: the script parses.
fn assert_bash_parses(script: &str, what: &str) {
    let out = Command::new("bash")
        .args(["-n", "-c", script])
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "{what}: bash cannot parse the rendered script:\n{script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("krt-catalog-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.0.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The on-disk `catalog/` folder, which the binary embeds.
fn catalog_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../catalog")
}

#[test]
fn every_file_under_catalog_is_built_in() {
    let mut on_disk = Vec::new();
    for dir in std::fs::read_dir(catalog_dir()).unwrap() {
        let dir = dir.unwrap();
        for f in std::fs::read_dir(dir.path()).unwrap() {
            on_disk.push(format!(
                "{}/{}",
                dir.file_name().to_string_lossy(),
                f.unwrap().file_name().to_string_lossy()
            ));
        }
    }
    on_disk.sort();
    let embedded: Vec<String> = super::builtin::FILES
        .iter()
        .map(|(p, _)| p.to_string())
        .collect();
    assert_eq!(embedded, on_disk);
    for (rel, text) in super::builtin::FILES {
        assert_eq!(
            *text,
            std::fs::read_to_string(catalog_dir().join(rel)).unwrap()
        );
    }
}

#[test]
fn the_catalog_has_entries_for_rust_python_node_go_and_generic_tasks() {
    let r = Resolver::builtin();
    let names: Vec<String> = r.list().into_iter().map(|l| l.name).collect();
    for want in [
        "cargo-fmt",
        "cargo-clippy",
        "cargo-build",
        "cargo-test",
        "python-venv",
        "pytest",
        "ruff",
        "npm-ci",
        "npm-test",
        "go-test",
        "go-vet",
        "shellcheck",
        "sha256sum",
        "tar-zstd",
        "git-checkout",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
    }
}

#[test]
fn every_builtin_entry_is_valid_and_documented() {
    let r = Resolver::builtin();
    for l in r.list() {
        let e = r.load(&l.location).unwrap_or_else(|d| {
            panic!(
                "{}: {}",
                l.location,
                crate::plan::Diagnostics::new(e_source(&d), d.clone()).render(false)
            )
        });
        assert_eq!(e.name, l.name);
        assert_eq!(e.major, l.major);
        assert!(!e.description.is_empty() && !e.description.ends_with('.'));
        assert!(e.source.text.starts_with("# Catalog entry"), "{}", l.name);
        assert!(
            ["rust", "python", "node", "go", "generic"].contains(&e.category.as_str()),
            "{}: {}",
            l.name,
            e.category
        );
        for (k, p) in &e.params {
            assert!(!p.description.is_empty(), "{}: {k}", l.name);
        }
        let example = e
            .example
            .as_deref()
            .unwrap_or_else(|| panic!("{}: no example", l.name));
        assert!(
            example.contains(&format!("uses: {}@v{}", e.name, e.major)),
            "{}: the example must use the entry",
            l.name
        );
        assert!(
            example.starts_with("# krt "),
            "{}: say how to run it",
            l.name
        );
    }
}

fn e_source(d: &[crate::plan::Diagnostic]) -> crate::plan::Source {
    d.iter()
        .find_map(|d| d.file.as_deref().cloned())
        .unwrap_or_else(|| crate::plan::Source::new("?", ""))
}

#[test]
fn every_builtin_example_plans_and_renders_to_bash_that_parses() {
    let r = Resolver::builtin();
    for l in r.list() {
        let e = r.load(&l.location).unwrap();
        let example = e.example.as_deref().unwrap();
        let p = plan_str_with(&format!("{}-example.yaml", e.name), example, &r)
            .unwrap_or_else(|d| panic!("{}: example is invalid:\n{}", e.name, d.render(false)));
        assert!(p.warnings.is_empty(), "{}: {:?}", e.name, p.warnings);
        let mut from_entry = 0;
        for job in render_all(&p, &[]) {
            for step in &job.steps {
                if step.from.as_deref() == Some(e.from_label().as_str()) {
                    from_entry += 1;
                }
                if step.shell.is_none() {
                    assert_bash_parses(&step.run, &e.name);
                }
            }
        }
        assert!(from_entry >= e.steps.len(), "{}: provenance", e.name);
        // `krt catalog show` renders the steps with the default values
        // (and `<name>` for a required parameter, which is not bash).
        for step in show::render_steps(&e, &IndexMap::new()).unwrap() {
            if !e.params.values().any(|p| p.required) {
                assert_bash_parses(&step.script, &e.name);
            }
        }
        show::show_text(&e, &l.location.to_string()).unwrap();
    }
}

#[test]
fn a_uses_step_expands_into_the_entry_steps_with_their_provenance() {
    let p = plan_with(
        "jobs:\n  test:\n    steps:\n      - run: echo before\n      - uses: cargo-test@v1\n        with: {features: \"cli json\", args: --workspace}\n      - run: echo after\n",
        &Resolver::builtin(),
    );
    let job = &render_all(&p, &[])[0];
    assert_eq!(job.steps.len(), 3);
    let test = &job.steps[1];
    assert_eq!(test.from.as_deref(), Some("cargo-test@1.0.0"));
    assert_eq!(test.name.as_deref(), Some("cargo test"));
    assert_eq!(test.env["CARGO_TERM_COLOR"], "never");
    assert_eq!(
        job.display[1].trim(),
        "cargo test --locked --features cli json --workspace"
    );
    // Each value is its own word, passed in a variable.
    assert!(
        test.run
            .contains("cargo test --locked --features \"${KRT_V1}\" \"${KRT_V2}\""),
        "{}",
        test.run
    );
    assert_eq!(test.env["KRT_V1"], "cli json");
    assert_eq!(job.steps[0].from, None);
}

#[test]
fn a_job_can_be_a_single_uses() {
    let p = plan_with(
        "jobs:\n  fmt:\n    uses: cargo-fmt@v1\n    env: {RUSTFLAGS: -Dwarnings}\n",
        &Resolver::builtin(),
    );
    let job = &render_all(&p, &[])[0];
    assert_eq!(job.steps.len(), 1);
    assert_eq!(job.steps[0].from.as_deref(), Some("cargo-fmt@1.0.0"));
    assert_eq!(job.env["RUSTFLAGS"], "-Dwarnings");
    assert_eq!(job.display[0].trim(), "cargo fmt --all --check");
}

#[test]
fn with_values_may_be_templates_and_true_false_text_is_a_boolean() {
    let yaml = "params:\n  nextest: {default: false}\njobs:\n  test:\n    matrix: {crate: [core, cli]}\n    uses: cargo-test@v1\n    with: {nextest: \"{{ params.nextest }}\", dir: \"crates/{{ matrix.crate }}\"}\n";
    let p = plan_with(yaml, &Resolver::builtin());
    let jobs = render_all(&p, &[("nextest", "true")]);
    assert_eq!(
        jobs[0].display[0].trim(),
        "cd crates/core && cargo nextest run --locked"
    );
    assert_eq!(
        jobs[1].display[0].trim(),
        "cd crates/cli && cargo nextest run --locked"
    );
    let jobs = render_all(&p, &[("nextest", "false")]);
    assert_eq!(
        jobs[0].display[0].trim(),
        "cd crates/core && cargo test --locked"
    );
}

#[test]
fn the_name_and_env_of_a_uses_step_apply_to_its_steps() {
    let p = plan_with(
        "jobs:\n  py:\n    steps:\n      - uses: python-venv@v1\n        name: deps\n        env: {PIP_INDEX_URL: https://pypi.example/simple, PYTHONDONTWRITEBYTECODE: \"0\"}\n",
        &Resolver::builtin(),
    );
    let job = &render_all(&p, &[])[0];
    let names: Vec<_> = job.steps.iter().map(|s| s.name.clone().unwrap()).collect();
    assert_eq!(
        names,
        [
            "deps: create the virtual environment",
            "deps: install requirements"
        ]
    );
    for s in &job.steps {
        assert_eq!(s.env["PIP_INDEX_URL"], "https://pypi.example/simple");
        // The step's env overrides the entry's.
        assert_eq!(s.env["PYTHONDONTWRITEBYTECODE"], "0");
        assert_eq!(s.env["PIP_PROGRESS_BAR"], "off");
    }
}

#[test]
fn the_expanded_form_plans_again_without_the_catalog_to_the_same_steps() {
    let yaml = "params:\n  rev: {default: 0123abc}\njobs:\n  co:\n    steps:\n      - uses: git-checkout@v1\n        with: {url: \"file:///srv/{{ matrix.repo }}.git\", rev: \"{{ params.rev }}\", depth: 0}\n      - uses: tar-zstd@v1\n        with: {dir: ., output: \"../{{ matrix.repo }}.tar.zst\", level: 3}\n    matrix: {repo: [a, b]}\n  test:\n    needs: [co]\n    uses: cargo-test@v1\n    with: {nextest: true}\n";
    let first = plan_with(yaml, &Resolver::builtin());
    let spec = first.ast.to_spec();
    let text = serde_yaml::to_string(&spec).unwrap();
    assert!(!text.contains("uses:"), "{text}");
    assert!(text.contains("from: git-checkout@1.0.0"), "{text}");
    // What the controller does: plan the serialised spec, with no catalog
    // directory and no workflow directory.
    let second =
        plan_str("workflow/ci/co", &text).unwrap_or_else(|d| panic!("{}\n{text}", d.render(false)));
    assert_eq!(second.ast.to_spec(), spec);
    let a = render_all(&first, &[("rev", "feedbeef")]);
    let b = render_all(&second, &[("rev", "feedbeef")]);
    assert_eq!(a, b, "the same rendered steps, so the same cache keys");
    assert_eq!(a[0].steps[0].from.as_deref(), Some("git-checkout@1.0.0"));
    assert!(a[0].display[0].contains("git fetch -q origin \"$rev\""));
    assert!(a[0].display[0].contains("rev=feedbeef"));
}

#[test]
fn hostile_with_values_stay_data() {
    let dir = Scratch::new("hostile");
    dir.write(
        "steps/echo.yaml",
        "name: echo\nversion: 1.0.0\ndescription: print values\nparams:\n  msg: {description: a message, default: hi}\n  words: {description: more, default: \"\"}\nsteps:\n  - run: |\n      cd \"$OUT\"\n      printf '%s\\n' {{ with.msg }} \"q={{ with.msg }}\"\n      printf '<%s>' {% for w in with.words | split %} {{ w }}{% endfor %}\n",
    );
    let r = Resolver::new(vec![], Some(dir.path().to_path_buf()));
    let p = plan_with(
        "params:\n  msg: {default: x}\njobs:\n  a:\n    uses: ./steps/echo.yaml\n    with: {msg: \"{{ params.msg }}\", words: \"$(touch pwned2) ;touch pwned3\"}\n",
        &r,
    );
    let hostile = "a; touch pwned # $(touch pwned) `touch pwned` ' \" *";
    let job = &render_all(&p, &[("msg", hostile)])[0];
    let step = &job.steps[0];
    assert_eq!(step.from.as_deref(), Some("echo@1.0.0"));
    let out = Command::new("bash")
        .args(["-eo", "pipefail", "-c", &step.run])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("OUT", dir.path())
        .envs(&step.env)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{hostile}\nq={hostile}\n<$(touch><pwned2)><;touch><pwned3>")
    );
    for f in ["pwned", "pwned2", "pwned3"] {
        assert!(!dir.path().join(f).exists(), "{f}: a value ran as code");
    }
}

#[test]
fn catalog_path_directories_add_entries_and_versions_but_builtins_win() {
    let dir = Scratch::new("path");
    let entry = |name: &str, version: &str, cmd: &str| {
        format!(
            "name: {name}\nversion: {version}\ndescription: test entry\nsteps:\n  - run: {cmd}\n"
        )
    };
    dir.write("lint/v1.yaml", &entry("lint", "1.4.2", "echo lint one"));
    dir.write("lint/v2.yaml", &entry("lint", "2.0.0", "echo lint two"));
    dir.write(
        "cargo-test/v1.yaml",
        &entry("cargo-test", "1.9.9", "echo shadow"),
    );
    dir.write(
        "cargo-test/v7.yaml",
        &entry("cargo-test", "7.0.0", "echo seven"),
    );
    let r = Resolver::new(vec![dir.path().to_path_buf()], None);
    let p = plan_with(
        "jobs:\n  a:\n    steps:\n      - uses: lint@v1\n      - uses: lint@v2\n      - uses: cargo-test@v1\n      - uses: cargo-test@v7\n",
        &r,
    );
    let job = &render_all(&p, &[])[0];
    let from: Vec<_> = job.steps.iter().map(|s| s.from.clone().unwrap()).collect();
    assert_eq!(
        from,
        [
            "lint@1.4.2",
            "lint@2.0.0",
            "cargo-test@1.0.0",
            "cargo-test@7.0.0"
        ]
    );
    assert_eq!(r.versions("cargo-test"), [1, 7]);
    assert!(matches!(
        r.list()
            .iter()
            .find(|l| l.name == "cargo-test" && l.major == 1)
            .unwrap()
            .location,
        Location::Builtin(_)
    ));
    let (listing, problems) = show::list_text(&r);
    assert!(problems.is_empty(), "{problems:?}");
    assert!(listing.contains("lint"), "{listing}");
}

#[test]
fn relative_paths_resolve_next_to_the_workflow_file() {
    let dir = Scratch::new("relative");
    dir.write(
        "ci/steps/hello.yaml",
        "name: hello\nversion: 0.1.0\ndescription: greet\nparams:\n  who: {description: whom, required: true}\nsteps:\n  - name: greet\n    run: echo hello {{ with.who }}\n",
    );
    let wf = dir.write(
        "ci/ci.yaml",
        "jobs:\n  a:\n    uses: ./steps/hello.yaml\n    with: {who: world}\n",
    );
    let p = crate::plan::plan_file(&wf).unwrap_or_else(|d| panic!("{}", d.render(false)));
    let job = &render_all(&p, &[])[0];
    assert_eq!(job.display[0], "echo hello world");
    assert_eq!(job.steps[0].from.as_deref(), Some("hello@0.1.0"));
    // Planned from text alone, a relative path has nothing to be relative to.
    assert_snapshot!(check(
        "jobs:\n  a:\n    uses: ./steps/hello.yaml\n    with: {who: world}\n"
    ));
}

#[test]
fn unknown_entry_suggests_a_close_name() {
    assert_snapshot!(check(
        "jobs:\n  test:\n    steps:\n      - uses: cargo-tset@v1\n"
    ));
}

#[test]
fn unknown_version_lists_the_available_ones() {
    assert_snapshot!(check("jobs:\n  test:\n    uses: cargo-test@v3\n"));
}

#[test]
fn a_uses_without_a_major_version_is_rejected() {
    assert_snapshot!(check(
        "jobs:\n  a:\n    uses: cargo-test\n  b:\n    uses: cargo-test@1.0.0\n  c:\n    uses: /abs/lint.yaml\n  d:\n    uses: ci/lint.yaml\n"
    ));
}

#[test]
fn missing_required_parameter_is_reported_at_the_uses() {
    assert_snapshot!(check(
        "jobs:\n  sums:\n    steps:\n      - uses: sha256sum@v1\n        with: {output: SUMS}\n"
    ));
}

#[test]
fn unknown_parameter_suggests_the_right_one() {
    assert_snapshot!(check(
        "jobs:\n  test:\n    uses: cargo-test@v1\n    with: {nexttest: true, colour: always}\n"
    ));
}

#[test]
fn parameter_values_are_checked_against_the_defaults_type() {
    assert_snapshot!(check(
        "jobs:\n  test:\n    uses: cargo-test@v1\n    with: {nextest: maybe, features: [a, b]}\n  pack:\n    uses: tar-zstd@v1\n    with: {dir: out, level: high}\n"
    ));
}

#[test]
fn uses_beside_run_or_steps_is_rejected() {
    assert_snapshot!(check(
        "jobs:\n  a:\n    uses: cargo-fmt@v1\n    run: make\n  b:\n    steps:\n      - uses: cargo-fmt@v1\n        run: make\n        timeout: 1m\n  c:\n    with: {dir: x}\n    run: make\n"
    ));
}

#[test]
fn templates_in_with_values_are_checked_in_the_workflow() {
    assert_snapshot!(check(
        "params:\n  feats: {default: \"\"}\njobs:\n  test:\n    uses: cargo-test@v1\n    with: {features: \"{{ params.feat }}\", dir: \"{{ matrix.crate }}\"}\n"
    ));
}

#[test]
fn an_invalid_entry_is_reported_in_its_own_file() {
    let dir = Scratch::new("invalid");
    dir.write(
        "steps/bad.yaml",
        "name: Bad_Name\nversion: 1.0\ndescription: broken on purpose\nparams:\n  msg: {description: a message}\n  level: {description: how loud, default: 1, required: true}\nsteps:\n  - name: say\n    run: echo {{ with.mgs }} {{ params.x }} {{ env.HOME }}\n    timeout: soon\n  - uses: cargo-fmt@v1\nenv:\n  KRT_MODE: x\n",
    );
    let r = Resolver::new(vec![], Some(dir.path().to_path_buf()));
    let out = check_with("jobs:\n  a:\n    uses: ./steps/bad.yaml\n", &r);
    let out = out.replace(&dir.path().display().to_string(), "DIR");
    assert_snapshot!(out);
}

#[test]
fn a_missing_relative_entry_names_where_it_looked() {
    let dir = Scratch::new("missing");
    let r = Resolver::new(vec![], Some(dir.path().to_path_buf()));
    let out = check_with("jobs:\n  a:\n    uses: ./steps/nope.yaml\n", &r);
    let out = out.replace(&dir.path().display().to_string(), "DIR");
    assert_snapshot!(out);
}

#[test]
fn bad_yaml_in_an_entry_never_panics() {
    let dir = Scratch::new("fuzz");
    let r = Resolver::new(vec![], Some(dir.path().to_path_buf()));
    for (i, text) in [
        "",
        "[]",
        "name: [x]\nversion: {a: 1}\ndescription: 3\nsteps: {}\n",
        "name: x\nversion: 1.0.0\ndescription: d\nsteps: [[a]]\n",
        "name: x\nversion: 1.0.0\ndescription: d\nparams: [a]\nsteps:\n  - run: '{{ with. }}'\n",
        "name: x\nversion: 99999999999999999999.0.0\ndescription: d\nsteps: [{run: x}]\n",
        "a: &a [*a]\n",
        "name: x\nversion: 1.0.0\ndescription: \"two\\nlines\"\nsteps: [{run: x, from: y, with: {a: 1}}]\n",
    ]
    .iter()
    .enumerate()
    {
        dir.write(&format!("e{i}.yaml"), text);
        let out = check_with(&format!("jobs:\n  a:\n    uses: ./e{i}.yaml\n"), &r);
        assert!(out.contains("error"), "{text}: {out}");
    }
}

#[test]
fn the_readme_catalog_table_matches_the_entries() {
    let readme_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&readme_path).unwrap();
    let table = show::markdown_table(&Resolver::builtin()).unwrap();
    let begin = readme
        .find(show::README_BEGIN)
        .expect("README.md has the catalog begin marker");
    let body_start = begin + show::README_BEGIN.len() + 1;
    let end = readme[body_start..]
        .find(show::README_END)
        .map(|e| body_start + e)
        .expect("README.md has the catalog end marker");
    assert_eq!(
        &readme[body_start..end],
        table,
        "the README's catalog table is out of date: replace the lines between the markers with the output of `cargo run --bin krt -- catalog list --format markdown`"
    );
}
