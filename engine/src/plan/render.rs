//! Rendering a job when it becomes ready: templates get the parameter values,
//! the matrix cell and the finished needs' results and outputs; `run:` text
//! goes through [`super::shell::make_safe`] so values never become code.

use std::collections::BTreeMap;

use kruntimes_crds::{JobResult, RunStep};
use minijinja::value::Value;
use serde::Serialize;

use super::ast::{StepOrigin, Text};
use super::diag::{Diagnostic, did_you_mean};
use super::model::{DEFAULT_SHELL, NodeId, Plan};
use super::shell::{make_safe, strip_markers};
use super::template::{self, STATUS_KEY};

/// What a finished need looks like to templates and `if:`.
#[derive(Clone, Debug, Serialize)]
pub struct NeedState {
    /// success, failure, cancelled or skipped (all cells combined for a matrix).
    pub result: JobResult,
    /// Its outputs (for a matrix: later cells override earlier ones).
    pub outputs: BTreeMap<String, String>,
}

/// Everything known when a job becomes ready.
#[derive(Clone, Debug)]
pub struct RenderContext<'a> {
    /// Resolved parameter values (see [`resolve_params`]).
    pub params: &'a BTreeMap<String, serde_json::Value>,
    /// Finished jobs, by key.
    pub needs: &'a BTreeMap<String, NeedState>,
    /// Identifier of this execution.
    pub workflow_id: &'a str,
    /// True once the workflow was cancelled.
    pub cancelled: bool,
}

/// A job ready to execute.
#[derive(Clone, Debug, PartialEq)]
pub struct RenderedJob {
    /// Steps as a runtime executes them.
    pub steps: Vec<RunStep>,
    /// Each step's script with values spliced in, for people.
    pub display: Vec<String>,
    /// Workflow and job environment, rendered.
    pub env: BTreeMap<String, String>,
}

/// True for shells that get interpolated values through variables; other
/// shells (`python3`, ...) get them as plain text.
pub fn is_posix_shell(shell: &str) -> bool {
    let prog = shell.split_whitespace().next().unwrap_or("");
    let base = prog.rsplit('/').next().unwrap_or(prog);
    matches!(base, "bash" | "sh" | "dash" | "zsh" | "ksh" | "ash")
}

/// Checks `-p key=value` pairs against the declared parameters and fills in
/// defaults. Errors name the parameter and suggest the right one.
pub fn resolve_params(
    plan: &Plan,
    given: &[(String, String)],
) -> Result<BTreeMap<String, serde_json::Value>, Vec<String>> {
    let declared = &plan.ast.params;
    let mut errors = Vec::new();
    let mut out = BTreeMap::new();
    for (k, v) in given {
        if declared.contains_key(k) {
            out.insert(k.clone(), serde_json::Value::String(v.clone()));
        } else {
            let hint = did_you_mean(k, declared.keys().map(String::as_str))
                .map(|h| format!(" ({h})"))
                .unwrap_or_else(|| {
                    if declared.is_empty() {
                        " (the workflow declares no params)".into()
                    } else {
                        format!(
                            " (declared: {})",
                            declared.keys().cloned().collect::<Vec<_>>().join(", ")
                        )
                    }
                });
            errors.push(format!("unknown parameter `{k}`{hint}"));
        }
    }
    for (k, p) in declared {
        if out.contains_key(k) {
            continue;
        }
        match &p.default {
            Some(d) => {
                out.insert(k.clone(), d.value.clone());
            }
            None => errors.push(format!(
                "parameter `{k}` has no default and was not given{} (hint: pass `-p {k}=VALUE`)",
                p.description
                    .as_ref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default()
            )),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

struct Renderer<'p> {
    plan: &'p Plan,
    node: NodeId,
}

impl Renderer<'_> {
    fn context(&self, ctx: &RenderContext<'_>, env: &BTreeMap<String, String>) -> Value {
        self.context_with(ctx, env, None)
    }

    /// The template context; `with` is set for the steps of a catalog entry.
    fn context_with(
        &self,
        ctx: &RenderContext<'_>,
        env: &BTreeMap<String, String>,
        with: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> Value {
        let job = &self.plan.jobs[self.plan.nodes[self.node].job];
        let mut status = BTreeMap::new();
        let direct: Vec<&NeedState> = job
            .needs
            .iter()
            .filter_map(|&n| ctx.needs.get(&self.plan.jobs[n].key))
            .collect();
        status.insert(
            "success",
            !ctx.cancelled && direct.iter().all(|n| n.result == JobResult::Success),
        );
        status.insert(
            "failure",
            direct.iter().any(|n| n.result == JobResult::Failure),
        );
        status.insert("cancelled", ctx.cancelled);
        // Only the needs this job may read (checked at validation).
        let needs: BTreeMap<&str, &NeedState> = self
            .plan
            .ancestors(self.plan.nodes[self.node].job)
            .into_iter()
            .filter_map(|id| {
                let key = self.plan.jobs[id].key.as_str();
                ctx.needs.get(key).map(|v| (key, v))
            })
            .collect();
        let cell: BTreeMap<&str, &serde_json::Value> = self.plan.nodes[self.node]
            .cell
            .iter()
            .map(|(k, v)| (k.as_str(), v))
            .collect();
        let mut value = serde_json::json!({
            "params": ctx.params,
            "matrix": cell,
            "needs": needs,
            "workflow": {"name": self.plan.name, "id": ctx.workflow_id},
            "env": env,
            STATUS_KEY: status,
        });
        if let Some(with) = with {
            value["with"] = serde_json::Value::Object(with.clone());
        }
        Value::from(minijinja::value::Serde(value))
    }

    fn error(&self, text: &Text, what: &str, e: &minijinja::Error) -> Diagnostic {
        let span = e.range().map_or(text.span, |r| {
            template::span_in_text(text.source(&self.plan.source), text, r)
        });
        let detail = e
            .detail()
            .map_or_else(|| e.kind().to_string(), str::to_string);
        Diagnostic::error(format!("cannot render {what}: {detail}"), Some(span))
            .in_file(text.file.clone())
    }

    /// The values of a catalog step's `with:`: templates rendered in the
    /// job's context, `true`/`false` text made booleans (a `-p` value or a
    /// rendered template is always text, and `{% if with.flag %}` must see
    /// `false` as false).
    fn with_values(
        &self,
        origin: &StepOrigin,
        ctx: &RenderContext<'_>,
        env: &BTreeMap<String, String>,
        what: &str,
    ) -> Result<serde_json::Map<String, serde_json::Value>, Diagnostic> {
        let value_ctx = self.context(ctx, env);
        let mut out = serde_json::Map::new();
        for (k, arg) in &origin.with {
            let value = match &arg.template {
                Some(t) => serde_json::Value::String(strip_markers(&self.render(
                    t,
                    &format!("`with.{k}` of {what}"),
                    &value_ctx,
                )?)),
                None => arg.value.clone(),
            };
            out.insert(k.clone(), with_value(value));
        }
        Ok(out)
    }

    fn render(&self, text: &Text, what: &str, ctx: &Value) -> Result<String, Diagnostic> {
        if !text.value.contains("{{") && !text.value.contains("{%") && !text.value.contains("{#") {
            return Ok(text.value.clone());
        }
        template::environment()
            .render_str(&text.value, ctx)
            .map_err(|e| self.error(text, what, &e))
    }

    fn render_env(
        &self,
        vars: &indexmap::IndexMap<String, super::ast::EnvVarAst>,
        what: &str,
        ctx: &RenderContext<'_>,
        with: Option<&serde_json::Map<String, serde_json::Value>>,
        env: &mut BTreeMap<String, String>,
    ) -> Result<(), Diagnostic> {
        let value_ctx = self.context_with(ctx, env, with);
        for (k, v) in vars {
            let rendered = self.render(&v.value, &format!("env `{k}` of {what}"), &value_ctx)?;
            env.insert(k.clone(), strip_markers(&rendered));
        }
        Ok(())
    }
}

/// A `with:` value as entry templates see it: `"true"`/`"false"` are
/// booleans, anything else is unchanged.
pub fn with_value(v: serde_json::Value) -> serde_json::Value {
    match v.as_str() {
        Some("true") => true.into(),
        Some("false") => false.into(),
        _ => v,
    }
}

/// Renders one node's steps and environment.
pub fn render_job(
    plan: &Plan,
    node: NodeId,
    ctx: &RenderContext<'_>,
) -> Result<RenderedJob, Diagnostic> {
    let r = Renderer { plan, node };
    let job_id = plan.nodes[node].job;
    let (key, job) = plan
        .ast
        .jobs
        .get_index(job_id)
        .expect("node of a known job");
    let what = format!("job `{key}`");
    let mut env = BTreeMap::new();
    r.render_env(&plan.ast.env, "the workflow", ctx, None, &mut env)?;
    r.render_env(&job.env, &what, ctx, None, &mut env)?;
    let mut steps = Vec::with_capacity(job.steps.len());
    let mut display = Vec::with_capacity(job.steps.len());
    for (i, step) in job.steps.iter().enumerate() {
        let step_what = format!("step {} of {what}", i + 1);
        let with = match &step.origin {
            Some(o) => Some(r.with_values(o, ctx, &env, &what)?),
            None => None,
        };
        let mut step_env = env.clone();
        r.render_env(&step.env, &step_what, ctx, with.as_ref(), &mut step_env)?;
        let value_ctx = r.context_with(ctx, &step_env, with.as_ref());
        let rendered = r.render(&step.run, &step_what, &value_ctx)?;
        let shell = step
            .shell
            .as_ref()
            .or(job.shell.as_ref())
            .or(plan.ast.defaults.shell.as_ref())
            .map_or(DEFAULT_SHELL, |s| s.value.as_str());
        let mut own_env: BTreeMap<String, String> = step_env
            .into_iter()
            .filter(|(k, _)| step.env.contains_key(k))
            .collect();
        let (script, shown) = if is_posix_shell(shell) {
            let safe = make_safe(&rendered).map_err(|why| {
                Diagnostic::error(
                    format!("cannot render {step_what}: {why}"),
                    Some(step.run.span),
                )
                .with_hint("use `| raw` to splice a value as shell code on purpose")
                .in_file(step.run.file.clone())
            })?;
            own_env.extend(safe.vars);
            (safe.script, safe.display)
        } else {
            let plain = strip_markers(&rendered);
            (plain.clone(), plain)
        };
        let name = match &step.name {
            Some(n) => Some(strip_markers(&r.render(
                n,
                &format!("the name of {step_what}"),
                &value_ctx,
            )?)),
            None => None,
        };
        steps.push(RunStep {
            name,
            run: script,
            shell: (shell != DEFAULT_SHELL).then(|| shell.to_string()),
            env: own_env,
            timeout: step.timeout.as_ref().map(|t| t.value.clone()),
            from: step.origin.as_ref().map(|o| o.from.clone()),
        });
        display.push(shown);
    }
    Ok(RenderedJob {
        steps,
        display,
        env,
    })
}

/// Evaluates a node's `if:` (default `success()`): should it run now that
/// its needs have finished?
pub fn should_run(plan: &Plan, node: NodeId, ctx: &RenderContext<'_>) -> Result<bool, Diagnostic> {
    let r = Renderer { plan, node };
    let (key, job) = plan
        .ast
        .jobs
        .get_index(plan.nodes[node].job)
        .expect("node of a known job");
    let value_ctx = r.context(ctx, &BTreeMap::new());
    let Some(cond) = &job.if_ else {
        return Ok(value_ctx
            .get_attr(STATUS_KEY)
            .and_then(|s| s.get_attr("success"))
            .is_ok_and(|v| v.is_true()));
    };
    let expr = template::environment()
        .compile_expression(&cond.value)
        .map_err(|e| r.error(cond, &format!("`if` of job `{key}`"), &e))?;
    expr.eval(&value_ctx)
        .map(|v| v.is_true())
        .map_err(|e| r.error(cond, &format!("`if` of job `{key}`"), &e))
}
