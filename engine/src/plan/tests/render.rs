//! Rendering at ready time, and proof with a real bash that interpolated
//! values never become shell code.

use std::collections::BTreeMap;
use std::process::Command;

use kruntimes_crds::JobResult;

use super::plan;
use crate::plan::render::{NeedState, RenderContext, render_job, resolve_params, should_run};
use crate::plan::{NodeId, Plan};

fn node(p: &Plan, name: &str) -> NodeId {
    p.nodes.iter().position(|n| n.name == name).unwrap()
}

fn need(result: JobResult, outputs: &[(&str, &str)]) -> NeedState {
    NeedState {
        result,
        outputs: outputs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

/// Runs a rendered step with bash the way a runtime will: script via
/// `bash -eo pipefail -c`, values in the environment.
fn run_bash(script: &str, env: &BTreeMap<String, String>) -> String {
    let out = Command::new("bash")
        .args(["-eo", "pipefail", "-c", script])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "script failed: {script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

const HOSTILE: &str = "a; touch pwned # $(touch pwned2) `touch pwned3` ' \" \\ *";

#[test]
fn hostile_values_stay_data_in_every_quoting_context() {
    let dir = std::env::temp_dir().join(format!("krt-quote-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = plan(
        "params:\n  x: {default: v}\njobs:\n  a:\n    steps:\n      - run: |\n          cd \"$WORKDIR\"\n          printf '%s\\n' {{ params.x }}\n          printf '%s\\n' \"quoted: {{ params.x }}\"\n          printf '%s\\n' 'single: {{ params.x }}'\n          cat <<EOF\n          heredoc: {{ params.x }}\n          EOF\n          # comment {{ params.x }}\n          printf '%s\\n' \"$(printf '%s' {{ params.x }})\"\n",
    );
    let params = BTreeMap::from([("x".to_string(), serde_json::Value::String(HOSTILE.into()))]);
    let needs = BTreeMap::new();
    let ctx = RenderContext {
        params: &params,
        needs: &needs,
        workflow_id: "w1",
        cancelled: false,
    };
    let job = render_job(&p, 0, &ctx).unwrap();
    let step = &job.steps[0];
    let mut env = step.env.clone();
    env.insert("WORKDIR".into(), dir.display().to_string());
    let out = run_bash(&step.run, &env);
    assert_eq!(
        out,
        format!("{HOSTILE}\nquoted: {HOSTILE}\nsingle: {HOSTILE}\nheredoc: {HOSTILE}\n{HOSTILE}\n")
    );
    for f in ["pwned", "pwned2", "pwned3"] {
        assert!(
            !dir.join(f).exists(),
            "{f} was created: the value ran as code"
        );
    }
    // People see the value spliced in.
    assert!(job.display[0].contains(&format!("printf '%s\\n' {HOSTILE}")));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn arithmetic_works_with_numbers_and_refuses_anything_else() {
    let p =
        plan("params:\n  n: {default: 41}\njobs:\n  a:\n    run: echo $(( {{ params.n }} + 1 ))\n");
    let needs = BTreeMap::new();
    let params = resolve_params(&p, &[]).unwrap();
    let ctx = RenderContext {
        params: &params,
        needs: &needs,
        workflow_id: "w",
        cancelled: false,
    };
    let job = render_job(&p, 0, &ctx).unwrap();
    assert_eq!(run_bash(&job.steps[0].run, &job.steps[0].env), "42\n");

    let params = resolve_params(&p, &[("n".into(), "a[$(id)]".into())]).unwrap();
    let ctx = RenderContext {
        params: &params,
        ..ctx
    };
    let err = render_job(&p, 0, &ctx).unwrap_err();
    assert!(err.message.contains("not an integer"), "{}", err.message);
}

#[test]
fn raw_filter_splices_on_purpose() {
    let p = plan(
        "params:\n  cmd: {default: 'echo one; echo two'}\njobs:\n  a:\n    run: \"{{ params.cmd | raw }}\"\n",
    );
    let params = resolve_params(&p, &[]).unwrap();
    let needs = BTreeMap::new();
    let ctx = RenderContext {
        params: &params,
        needs: &needs,
        workflow_id: "w",
        cancelled: false,
    };
    let job = render_job(&p, 0, &ctx).unwrap();
    assert_eq!(run_bash(&job.steps[0].run, &job.steps[0].env), "one\ntwo\n");
}

#[test]
fn non_shell_steps_get_plain_text() {
    let p = plan(
        "params:\n  who: {default: world}\njobs:\n  a:\n    shell: python3\n    run: print('hello {{ params.who }}')\n",
    );
    let params = resolve_params(&p, &[]).unwrap();
    let needs = BTreeMap::new();
    let ctx = RenderContext {
        params: &params,
        needs: &needs,
        workflow_id: "w",
        cancelled: false,
    };
    let job = render_job(&p, 0, &ctx).unwrap();
    assert_eq!(job.steps[0].run, "print('hello world')");
    assert_eq!(job.steps[0].shell.as_deref(), Some("python3"));
}

#[test]
fn needs_outputs_matrix_and_env_render_when_ready() {
    let p = plan(
        "env:\n  BASE: /opt\njobs:\n  build:\n    run: make\n  test:\n    needs: [build]\n    matrix: {shard: [1, 2]}\n    env:\n      DIR: \"{{ env.BASE }}/{{ matrix.shard }}\"\n    run: echo {{ needs.build.outputs.version }} {{ matrix.shard }} {{ workflow.name }} {{ workflow.id }} $DIR\n",
    );
    let params = BTreeMap::new();
    let needs = BTreeMap::from([(
        "build".to_string(),
        need(JobResult::Success, &[("version", "1.2")]),
    )]);
    let ctx = RenderContext {
        params: &params,
        needs: &needs,
        workflow_id: "run-7",
        cancelled: false,
    };
    let job = render_job(&p, node(&p, "test-2"), &ctx).unwrap();
    assert_eq!(job.env["DIR"], "/opt/2");
    let mut env = job.env.clone();
    env.extend(job.steps[0].env.clone());
    assert_eq!(run_bash(&job.steps[0].run, &env), "1.2 2 ci run-7 /opt/2\n");
}

#[test]
fn a_missing_output_fails_the_render_with_the_job_and_span() {
    let p = plan(
        "jobs:\n  build:\n    run: make\n  test:\n    needs: [build]\n    run: echo {{ needs.build.outputs.version }}\n",
    );
    let params = BTreeMap::new();
    let needs = BTreeMap::from([("build".to_string(), need(JobResult::Success, &[]))]);
    let ctx = RenderContext {
        params: &params,
        needs: &needs,
        workflow_id: "w",
        cancelled: false,
    };
    let err = render_job(&p, node(&p, "test"), &ctx).unwrap_err();
    assert!(err.message.contains("job `test`"), "{}", err.message);
    let span = err.span.unwrap();
    assert_eq!((span.line, span.col), (6, 18));
}

#[test]
fn if_defaults_to_success_and_status_functions_see_needs() {
    let p = plan(
        "jobs:\n  a: {run: x}\n  plain: {needs: [a], run: x}\n  always: {needs: [a], if: always(), run: x}\n  onfail: {needs: [a], if: failure(), run: x}\n  byresult: {needs: [a], if: \"needs.a.result == 'failure'\", run: x}\n",
    );
    let params = BTreeMap::new();
    let decide = |result: JobResult, name: &str| {
        let needs = BTreeMap::from([("a".to_string(), need(result, &[]))]);
        let ctx = RenderContext {
            params: &params,
            needs: &needs,
            workflow_id: "w",
            cancelled: false,
        };
        should_run(&p, node(&p, name), &ctx).unwrap()
    };
    assert!(decide(JobResult::Success, "plain"));
    assert!(!decide(JobResult::Failure, "plain"));
    assert!(decide(JobResult::Failure, "always"));
    assert!(decide(JobResult::Failure, "onfail"));
    assert!(!decide(JobResult::Success, "onfail"));
    assert!(decide(JobResult::Failure, "byresult"));
    assert!(!decide(JobResult::Skipped, "byresult"));
}

#[test]
fn params_are_checked_and_defaulted() {
    let p = plan(
        "params:\n  profile: release\n  target: {description: where to deploy}\njobs:\n  a: {run: x}\n",
    );
    let errs = resolve_params(&p, &[("profil".into(), "debug".into())]).unwrap_err();
    assert_eq!(
        errs,
        [
            "unknown parameter `profil` (did you mean `profile`?)",
            "parameter `target` has no default and was not given: where to deploy (hint: pass `-p target=VALUE`)",
        ]
    );
    let ok = resolve_params(&p, &[("target".into(), "prod".into())]).unwrap();
    assert_eq!(ok["profile"], "release");
    assert_eq!(ok["target"], "prod");
}
