//! One test per validation rule; the rendered text is pinned so a change in
//! wording or position shows up in review.

use insta::assert_snapshot;

use super::{check, plan};
use crate::plan::plan_str;

#[test]
fn a_valid_bare_file_plans() {
    assert_eq!(check("jobs:\n  build:\n    run: make\n"), "ok");
}

#[test]
fn a_valid_manifest_plans_and_takes_its_name_from_metadata() {
    let p = plan(
        "apiVersion: kruntimes.io/v1alpha1\nkind: Workflow\nmetadata: {name: rust-ci}\nspec:\n  jobs:\n    build: {run: make}\n",
    );
    assert_eq!(p.name, "rust-ci");
}

#[test]
fn a_bare_file_is_named_after_its_file() {
    let p = crate::plan::plan_str("ci/My Flow.yaml", "jobs: {a: {run: x}}").unwrap();
    assert_eq!(p.name, "my-flow");
}

#[test]
fn unknown_key_suggests_the_right_one() {
    assert_snapshot!(check(
        "jobs:\n  test:\n    nedes: [build]\n    run: make test\n  build:\n    run: make\n"
    ));
}

#[test]
fn keys_from_github_actions_get_a_hint() {
    assert_snapshot!(check(
        "on: push\njobs:\n  test:\n    runs-on: ubuntu-latest\n    run: make test\n"
    ));
}

#[test]
fn wrong_value_type_names_the_field() {
    assert_snapshot!(check(
        "jobs:\n  test:\n    needs: {build: 1}\n    retries: many\n    cache: maybe\n    run: [make]\n"
    ));
}

#[test]
fn job_with_both_run_and_steps_is_rejected() {
    assert_snapshot!(check(
        "jobs:\n  test:\n    run: a\n    steps:\n      - run: b\n"
    ));
}

#[test]
fn job_without_steps_is_rejected() {
    assert_snapshot!(check(
        "jobs:\n  test:\n    pool: rust\n  lint:\n    steps: []\n"
    ));
}

#[test]
fn step_without_run_is_rejected() {
    assert_snapshot!(check("jobs:\n  test:\n    steps:\n      - name: compile\n"));
}

#[test]
fn job_name_must_be_usable_in_kubernetes_names() {
    assert_snapshot!(check(
        "jobs:\n  Build_App:\n    run: make\n  x-very-long-job-name-that-does-not-fit-in-a-run-name:\n    run: make\n"
    ));
}

#[test]
fn unknown_need_suggests_a_close_name() {
    assert_snapshot!(check(
        "jobs:\n  build:\n    run: make\n  test:\n    needs: [biuld]\n    run: make test\n"
    ));
}

#[test]
fn a_job_cannot_need_itself() {
    assert_snapshot!(check("jobs:\n  build:\n    needs: build\n    run: make\n"));
}

#[test]
fn cycle_is_reported_with_its_path() {
    assert_snapshot!(check(
        "jobs:\n  a:\n    needs: [c]\n    run: x\n  b:\n    needs: [a]\n    run: x\n  c:\n    needs: [b]\n    run: x\n  d:\n    needs: [a]\n    run: x\n"
    ));
}

#[test]
fn every_cycle_is_reported() {
    let out = check(
        "jobs:\n  a: {needs: [b], run: x}\n  b: {needs: [a], run: x}\n  c: {needs: [d], run: x}\n  d: {needs: [c], run: x}\n",
    );
    assert!(out.contains("dependency cycle: a -> b -> a"), "{out}");
    assert!(out.contains("dependency cycle: c -> d -> c"), "{out}");
}

#[test]
fn empty_matrix_axis_is_rejected() {
    assert_snapshot!(check(
        "jobs:\n  test:\n    matrix: {shard: [], os: [linux]}\n    run: x\n"
    ));
}

#[test]
fn matrix_over_the_cell_limit_is_rejected() {
    let values: Vec<String> = (0..17).map(|i| i.to_string()).collect();
    let v = values.join(", ");
    assert_snapshot!(check(&format!(
        "jobs:\n  test:\n    matrix: {{a: [{v}], b: [{v}]}}\n    run: x\n"
    )));
}

#[test]
fn matrix_exclude_must_match_axes_and_values() {
    assert_snapshot!(check(
        "jobs:\n  test:\n    matrix:\n      os: [linux, macos]\n      exclude:\n        - {oss: linux}\n        - {os: windows}\n    run: x\n"
    ));
}

#[test]
fn matrix_exclude_that_removes_every_cell_is_rejected() {
    assert_snapshot!(check(
        "jobs:\n  test:\n    matrix:\n      os: [linux]\n      exclude: [{os: linux}]\n    run: x\n"
    ));
}

#[test]
fn matrix_include_is_not_supported() {
    assert_snapshot!(check(
        "jobs:\n  test:\n    matrix:\n      os: [linux]\n      include: [{os: bsd}]\n    run: x\n"
    ));
}

#[test]
fn duplicate_artifact_names_are_rejected() {
    assert_snapshot!(check(
        "jobs:\n  build:\n    run: make\n    artifacts:\n      bin: target/app\n      bin: target/other\n"
    ));
}

#[test]
fn artifact_paths_stay_in_the_workspace() {
    assert_snapshot!(check(
        "jobs:\n  build:\n    run: make\n    artifacts:\n      a: ../up\n      b: /etc/passwd\n      c: dist/**/*.tar.gz\n"
    ));
}

#[test]
fn inputs_must_come_from_a_needed_job_and_exist() {
    assert_snapshot!(check(
        "jobs:\n  build:\n    run: make\n    artifacts: {bin: target/app}\n  lint:\n    run: lint\n    artifacts: {report: r.txt}\n  test:\n    needs: [build]\n    inputs: [build.bni, lint.report, bin, ghost.x]\n    run: make test\n"
    ));
}

#[test]
fn inputs_from_transitive_needs_are_accepted() {
    let p = plan(
        "jobs:\n  build:\n    run: make\n    artifacts: {bin: target/app}\n  test:\n    needs: [build]\n    run: t\n  publish:\n    needs: [test]\n    inputs: [build.bin]\n    run: p\n",
    );
    assert_eq!(p.jobs.len(), 3);
}

#[test]
fn durations_must_parse() {
    assert_snapshot!(check(
        "defaults:\n  timeout: 10x\njobs:\n  test:\n    timeout: 5\n    steps:\n      - run: x\n        timeout: 1h30m\n"
    ));
}

#[test]
fn retries_have_a_limit() {
    assert_snapshot!(check("jobs:\n  test:\n    retries: 50\n    run: x\n"));
}

#[test]
fn template_syntax_errors_point_into_block_scalars() {
    assert_snapshot!(check(
        "jobs:\n  test:\n    steps:\n      - run: |\n          echo start\n          echo {{ matrix.shard }\n"
    ));
}

#[test]
fn unknown_template_variables_are_rejected() {
    assert_snapshot!(check(
        "params:\n  profile: release\nenv:\n  LEVEL: debug\njobs:\n  build:\n    run: make\n  test:\n    matrix: {shard: [1, 2]}\n    env:\n      MODE: \"{{ env.LEVL }}\"\n    run: echo {{ parms.x }} {{ params.profil }} {{ matrix.shrd }} {{ needs.build.outputs.v }} {{ workflow.nam }}\n"
    ));
}

#[test]
fn needs_in_templates_must_be_declared_needs() {
    assert_snapshot!(check(
        "jobs:\n  build:\n    run: make\n  test:\n    needs: [build]\n    run: echo {{ needs.build.output.v }}\n  other:\n    run: echo {{ needs.build.result }}\n"
    ));
}

#[test]
fn if_must_be_a_bare_valid_expression() {
    assert_snapshot!(check(
        "jobs:\n  a:\n    run: x\n  b:\n    needs: [a]\n    if: ${{ success() }}\n    run: x\n  c:\n    needs: [a]\n    if: needs.a.result ==\n    run: x\n"
    ));
}

#[test]
fn github_expression_syntax_in_run_is_rejected() {
    assert_snapshot!(check("jobs:\n  a:\n    run: echo ${{ params.x }}\n"));
}

#[test]
fn reserved_and_malformed_env_names_are_rejected() {
    assert_snapshot!(check(
        "jobs:\n  a:\n    env:\n      KRT_OUTPUT: x\n      1BAD: y\n    run: x\n"
    ));
}

#[test]
fn manifest_header_is_checked() {
    assert_snapshot!(check(
        "apiVersion: kruntimes.io/v1\nkind: Pipeline\nmetadata: {name: Bad_Name}\nspec:\n  jobs: {a: {run: x}}\n"
    ));
}

#[test]
fn manifest_without_spec_is_rejected() {
    assert_snapshot!(check(
        "apiVersion: kruntimes.io/v1alpha1\nkind: Workflow\nmetadata: {name: x}\n"
    ));
}

#[test]
fn yaml_syntax_errors_have_a_position() {
    assert_snapshot!(check("jobs:\n  a:\n    run: echo \"x\n  b: [\n"));
}

#[test]
fn several_documents_in_one_file_are_rejected() {
    assert_snapshot!(check("jobs: {a: {run: x}}\n---\njobs: {b: {run: y}}\n"));
}

#[test]
fn an_empty_file_is_rejected() {
    assert_snapshot!(check("# nothing here\n"));
}

#[test]
fn a_file_without_jobs_is_rejected() {
    assert_snapshot!(check("params: {a: 1}\n"));
}

#[test]
fn yaml_tags_are_rejected() {
    assert_snapshot!(check("jobs:\n  a:\n    run: !!str x\n"));
}

#[test]
fn an_alias_bomb_is_refused_not_expanded() {
    let mut y = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..9 {
        let prev = format!("*a{}", i - 1);
        y.push_str(&format!("a{i}: &a{i} [{}]\n", vec![prev; 10].join(", ")));
    }
    y.push_str("jobs: {a: {run: x}}\n");
    let out = check(&y);
    assert!(out.contains("aliases expand to more than"), "{out}");
}

#[test]
fn all_errors_are_reported_in_source_order() {
    let out = check(
        "jobs:\n  b:\n    needs: [zzz]\n    run: x\n  a:\n    timeout: 3y\n    nedes: [b]\n    run: x\n",
    );
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(
        lines,
        [
            "error: job `b` needs unknown job `zzz`",
            "error: invalid duration `3y` for `timeout` of job `a`: unknown unit `y`",
            "error: unknown key `nedes` in job `a`",
        ]
    );
}

#[test]
fn a_repeated_need_is_a_warning() {
    assert_snapshot!(check(
        "jobs:\n  a: {run: x}\n  b:\n    needs: [a, a]\n    run: x\n"
    ));
}

#[test]
fn matrix_cells_get_stable_kubernetes_safe_names() {
    let p = plan(
        "jobs:\n  test:\n    matrix:\n      os: [linux, Mac OS]\n      shard: [1, 2]\n      exclude: [{os: linux, shard: 2}]\n    run: x\n  report:\n    needs: test\n    run: y\n",
    );
    let names: Vec<(&str, &str)> = p
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.display.as_str()))
        .collect();
    assert_snapshot!(format!("{names:#?}"));
    let again = plan(
        "jobs:\n  test:\n    matrix:\n      os: [linux, Mac OS]\n      shard: [1, 2]\n      exclude: [{os: linux, shard: 2}]\n    run: x\n  report:\n    needs: test\n    run: y\n",
    );
    assert_eq!(
        p.nodes.iter().map(|n| &n.name).collect::<Vec<_>>(),
        again.nodes.iter().map(|n| &n.name).collect::<Vec<_>>()
    );
    for n in &p.nodes {
        assert!(
            crate::plan::validate::is_dns_label(&n.name) && n.name.len() <= 63,
            "{}",
            n.name
        );
    }
    // `needs: test` waits for every cell.
    let report = p.nodes.iter().find(|n| n.name == "report").unwrap();
    assert_eq!(report.needs.len(), 3);
}

#[test]
fn a_cell_name_that_collides_with_a_job_is_rejected() {
    assert_snapshot!(check(
        "jobs:\n  test:\n    matrix: {n: [1]}\n    run: x\n  test-1:\n    run: y\n"
    ));
}

#[test]
fn levels_and_critical_path_follow_needs() {
    let p = plan(
        "jobs:\n  a: {run: x}\n  b: {needs: [a], run: x}\n  c: {needs: [a], run: x}\n  d: {needs: [b, c], run: x}\n  e: {run: x}\n",
    );
    let levels: Vec<(&str, usize)> = p.nodes.iter().map(|n| (n.name.as_str(), n.level)).collect();
    assert_eq!(levels, [("a", 0), ("e", 0), ("b", 1), ("c", 1), ("d", 2)]);
    assert_eq!(p.critical_path, 3);
}

#[test]
fn the_wire_model_round_trips_through_yaml() {
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let first = plan_str(&path.display().to_string(), &text).unwrap();
        let spec = first.ast.to_spec();
        // The normalised model is itself a valid workflow file...
        let yaml = serde_yaml::to_string(&spec).unwrap();
        let second = plan_str("roundtrip.yaml", &yaml).unwrap_or_else(|d| {
            panic!(
                "{}: normalised form is invalid:\n{}\n{yaml}",
                path.display(),
                d.render(false)
            )
        });
        assert_eq!(second.ast.to_spec(), spec, "{}", path.display());
        assert_eq!(second.nodes.len(), first.nodes.len());
        // ...and what serde reads back is the same model.
        let back: kruntimes_crds::WorkflowFileSpec = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(back, spec, "{}", path.display());
    }
}
