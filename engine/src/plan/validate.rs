//! Semantic rules of a workflow file: names, references, cycles, durations,
//! matrices, artifacts and inputs, and every template and `if:` expression.
//! All problems are collected; nothing stops at the first.

use std::collections::{BTreeSet, HashMap};

use indexmap::IndexMap;

use super::ast::{EnvVarAst, JobAst, Text, WithArg, WorkflowAst};
use super::dag;
use super::diag::{Diagnostic, Source, Span, did_you_mean};
use super::model::{MAX_JOB_NAME, MAX_MATRIX_CELLS, MAX_RETRIES};
use super::template::{self, FUNCTIONS, ROOTS};
use kruntimes_crds::duration::parse_duration;

/// True for names usable as (part of) a Kubernetes object name: lowercase
/// letters, digits and `-`, starting and ending with a letter or digit.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Turns any text into a DNS label: lowercase, other characters to `-`.
pub fn to_dns_label(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

/// True for identifiers usable in templates and as env variable names.
pub fn is_identifier(s: &str) -> bool {
    let mut b = s.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

pub(crate) struct Validator<'a> {
    pub source: &'a Source,
    pub wf: &'a WorkflowAst,
    pub diags: Vec<Diagnostic>,
    /// Job key -> index.
    pub index: HashMap<&'a str, usize>,
    /// Direct needs by job index (unknown ones dropped).
    pub needs: Vec<Vec<usize>>,
}

impl<'a> Validator<'a> {
    pub fn new(source: &'a Source, wf: &'a WorkflowAst) -> Self {
        let index = wf
            .jobs
            .keys()
            .enumerate()
            .map(|(i, k)| (k.as_str(), i))
            .collect();
        Self {
            source,
            wf,
            diags: Vec::new(),
            index,
            needs: Vec::new(),
        }
    }

    fn err(&mut self, d: Diagnostic) {
        self.diags.push(d);
    }

    pub fn run(&mut self) {
        self.workflow_level();
        self.resolve_needs();
        if let Some(cycles) = dag::find_cycles(&self.needs) {
            for cycle in cycles {
                self.report_cycle(&cycle);
            }
        }
        let wf = self.wf;
        for (i, (key, job)) in wf.jobs.iter().enumerate() {
            self.job(i, key, job);
        }
    }

    fn workflow_level(&mut self) {
        let wf = self.wf;
        if let Some(span) = wf.name_span
            && (!is_dns_label(&wf.name) || wf.name.len() > 63)
        {
            self.err(
                Diagnostic::error(format!("invalid workflow name `{}`", wf.name), Some(span))
                    .with_label("not usable in Kubernetes object names")
                    .with_hint(format!(
                        "use lowercase letters, digits and `-`, at most 63 characters, such as `{}`",
                        to_dns_label(&wf.name)
                    )),
            );
        }
        for (name, p) in &wf.params {
            if !is_identifier(name) {
                self.err(
                    Diagnostic::error(format!("invalid parameter name `{name}`"), Some(p.key))
                        .with_label("not usable in templates")
                        .with_hint("use letters, digits and `_`, starting with a letter, so `{{ params.name }}` works"),
                );
            }
            if let Some(d) = &p.default
                && !(d.value.is_string() || d.value.is_number() || d.value.is_boolean())
            {
                self.err(Diagnostic::error(
                    format!("the default of parameter `{name}` must be a single value"),
                    Some(d.span),
                ));
            }
        }
        self.env_names(&wf.env, "the workflow");
        if let Some(t) = &wf.defaults.timeout {
            self.duration(&t.value, t.span, "`defaults.timeout`");
        }
        if let Some(r) = &wf.defaults.retries {
            self.retries(r.value, r.span, "`defaults.retries`");
        }
        if let Some(s) = &wf.defaults.shell {
            self.shell(&s.value, s.span);
        }
        for var in wf.env.values() {
            self.template(&var.value, "env value of the workflow", None, &[]);
        }
    }

    fn resolve_needs(&mut self) {
        let wf = self.wf;
        let keys: Vec<&str> = wf.jobs.keys().map(String::as_str).collect();
        self.needs = vec![Vec::new(); wf.jobs.len()];
        for (i, (key, job)) in wf.jobs.iter().enumerate() {
            let mut seen = BTreeSet::new();
            for need in &job.needs {
                let n = need.value.as_str();
                match self.index.get(n) {
                    Some(&j) if j == i => self.err(
                        Diagnostic::error(format!("job `{key}` needs itself"), Some(need.span))
                            .with_label("a job cannot wait for itself")
                            .with_hint(format!("remove `{n}` from `needs`")),
                    ),
                    Some(&j) => {
                        if seen.insert(j) {
                            self.needs[i].push(j);
                        } else {
                            self.diags.push(
                                Diagnostic::warning(
                                    format!("job `{key}` lists `{n}` twice in `needs`"),
                                    Some(need.span),
                                )
                                .with_label("repeated"),
                            );
                        }
                    }
                    None => self.err(
                        Diagnostic::error(
                            format!("job `{key}` needs unknown job `{n}`"),
                            Some(need.span),
                        )
                        .with_label("no job has this name")
                        .with_opt_hint(
                            did_you_mean(n, keys.iter().copied().filter(|k| *k != key)).or_else(
                                || Some(format!("jobs in this file: {}", keys.join(", "))),
                            ),
                        ),
                    ),
                }
            }
        }
    }

    fn report_cycle(&mut self, cycle: &[usize]) {
        let wf = self.wf;
        let names: Vec<&str> = cycle
            .iter()
            .map(|&j| wf.jobs.get_index(j).map_or("?", |(k, _)| k.as_str()))
            .collect();
        let mut path = names.join(" -> ");
        path.push_str(" -> ");
        path.push_str(names[0]);
        // Point at the `needs` entry that closes the cycle: the last job
        // naming the first one.
        let last = cycle[cycle.len() - 1];
        let first = names[0];
        let span = wf.jobs[last]
            .needs
            .iter()
            .find(|n| n.value == first)
            .map(|n| n.span)
            .or(Some(wf.jobs[last].key));
        self.err(
            Diagnostic::error(format!("dependency cycle: {path}"), span)
                .with_label("this need closes the cycle")
                .with_hint("a job cannot (even indirectly) need itself; remove one of these needs"),
        );
    }

    fn duration(&mut self, text: &str, span: Span, what: &str) {
        if let Err(why) = parse_duration(text) {
            self.err(
                Diagnostic::error(format!("invalid duration `{text}` for {what}: {why}"), Some(span))
                    .with_label("not a duration")
                    .with_hint("write a number with a unit (`h`, `m`, `s`, `ms`), such as `90s`, `10m` or `1h30m`"),
            );
        }
    }

    fn retries(&mut self, n: u32, span: Span, what: &str) {
        if n > MAX_RETRIES {
            self.err(
                Diagnostic::error(
                    format!("{what} is {n}, more than the limit of {MAX_RETRIES}"),
                    Some(span),
                )
                .with_hint(
                    "a step that needs this many tries is flaky; fix it or raise its timeout",
                ),
            );
        }
    }

    fn shell(&mut self, shell: &str, span: Span) {
        if shell.trim().is_empty() {
            self.err(
                Diagnostic::error("`shell` is empty", Some(span))
                    .with_hint("use `bash`, `sh`, `python3`, ..."),
            );
        }
    }

    fn env_names(&mut self, env: &IndexMap<String, EnvVarAst>, what: &str) {
        for (name, var) in env {
            if !is_identifier(name) {
                self.err(
                    Diagnostic::error(
                        format!("invalid environment variable name `{name}` in {what}"),
                        Some(var.key),
                    )
                    .with_hint("use letters, digits and `_`, starting with a letter or `_`"),
                );
            } else if name.starts_with("KRT_") {
                self.err(
                    Diagnostic::error(format!("environment variable `{name}` in {what} uses the reserved prefix `KRT_`"), Some(var.key))
                        .with_hint("kruntimes sets `KRT_*` variables itself (`KRT_OUTPUT`, `KRT_WORKSPACE`, ...); pick another name"),
                );
            }
        }
    }

    fn job(&mut self, i: usize, key: &str, job: &'a JobAst) {
        let what = format!("job `{key}`");
        if !is_dns_label(key) || key.len() > MAX_JOB_NAME {
            let fixed = to_dns_label(key);
            let fixed = fixed
                .get(..MAX_JOB_NAME)
                .unwrap_or(&fixed)
                .trim_end_matches('-');
            self.err(
                Diagnostic::error(format!("invalid job name `{key}`"), Some(job.key))
                    .with_label("not usable in Kubernetes object names")
                    .with_hint(format!(
                        "job names become Run names: use lowercase letters, digits and `-`, at most {MAX_JOB_NAME} characters, such as `{fixed}`"
                    )),
            );
        }
        if let Some(t) = &job.timeout {
            self.duration(&t.value, t.span, &format!("`timeout` of {what}"));
        }
        if let Some(r) = &job.retries {
            self.retries(r.value, r.span, &format!("`retries` of {what}"));
        }
        if let Some(s) = &job.shell {
            self.shell(&s.value, s.span);
        }
        self.env_names(&job.env, &what);
        self.matrix(key, job);
        self.artifacts(key, job);
        self.inputs(i, key, job);

        // Templates: what each may refer to.
        let mut env_keys: Vec<&str> = self.wf.env.keys().map(String::as_str).collect();
        env_keys.extend(job.env.keys().map(String::as_str));
        if let Some(name) = &job.name {
            self.template(name, &format!("`name` of {what}"), Some(i), &env_keys);
        }
        for var in job.env.values() {
            self.template(
                &var.value,
                &format!("env value of {what}"),
                Some(i),
                &env_keys,
            );
        }
        for (s, step) in job.steps.iter().enumerate() {
            let step_what = format!("step {} of {what}", s + 1);
            let with = step.origin.as_ref().map(|o| &o.with);
            // A catalog entry's own timeouts, shells and env names were
            // checked when the entry was read, with spans in its file.
            let from_entry = step.run.file.is_some();
            if let Some(t) = step.timeout.as_ref().filter(|_| !from_entry) {
                self.duration(&t.value, t.span, &format!("`timeout` of {step_what}"));
            }
            if let Some(sh) = step.shell.as_ref().filter(|_| !from_entry) {
                self.shell(&sh.value, sh.span);
            }
            if let Some(o) = &step.origin {
                // Values given to a `uses:` step are rendered in the job's
                // context. The message leaves the step number out: every step
                // of the entry shares them, and one report is enough.
                for (k, arg) in &o.with {
                    if let Some(t) = &arg.template {
                        self.template(t, &format!("`with.{k}` of {what}"), Some(i), &env_keys);
                    }
                }
            }
            self.env_names(
                &step
                    .env
                    .iter()
                    .filter(|(_, v)| v.value.file.is_none())
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                &step_what,
            );
            let mut step_env = env_keys.clone();
            step_env.extend(step.env.keys().map(String::as_str));
            for var in step.env.values() {
                self.template_with(
                    &var.value,
                    &format!("env value of {step_what}"),
                    Some(i),
                    &step_env,
                    with,
                );
            }
            if let Some(name) = &step.name {
                self.template_with(
                    name,
                    &format!("`name` of {step_what}"),
                    Some(i),
                    &step_env,
                    with,
                );
            }
            if let Some(at) = step.run.value.find("${{") {
                let span =
                    template::span_in_text(step.run.source(self.source), &step.run, at..at + 3);
                self.err(
                    Diagnostic::error(
                        format!("GitHub Actions syntax `${{{{ ... }}}}` in {step_what}"),
                        Some(span),
                    )
                    .with_label("the `$` would stay in the script")
                    .with_hint("kruntimes templates are `{{ ... }}` without `$`")
                    .in_file(step.run.file.clone()),
                );
            }
            self.template_with(&step.run, &step_what, Some(i), &step_env, with);
        }
        if let Some(cond) = &job.if_ {
            self.condition(i, key, cond, &env_keys);
        }
    }

    fn condition(&mut self, i: usize, key: &str, cond: &Text, env_keys: &[&str]) {
        let what = format!("`if` of job `{key}`");
        let trimmed = cond.value.trim();
        if trimmed.starts_with("${{") || trimmed.starts_with("{{") {
            self.err(
                Diagnostic::error(
                    format!("{what} is an expression, not a template"),
                    Some(cond.span),
                )
                .with_label("remove the braces")
                .with_hint(format!(
                    "write the bare expression, such as `if: {}`",
                    trimmed
                        .trim_start_matches('$')
                        .trim_start_matches("{{")
                        .trim_end_matches("}}")
                        .trim()
                )),
            );
            return;
        }
        match template::check_expression(&cond.value) {
            Ok(vars) => self.check_vars(&vars, cond, &what, Some(i), env_keys, None),
            Err(e) => {
                let span = e
                    .range
                    .map_or(cond.span, |r| template::span_in_text(self.source, cond, r));
                self.err(
                    Diagnostic::error(
                        format!("invalid expression in {what}: {}", e.message),
                        Some(span),
                    )
                    .with_hint(
                        "expressions look like `needs.test.result == 'success'` or `always()`",
                    ),
                );
            }
        }
    }

    fn template(&mut self, text: &Text, what: &str, job: Option<usize>, env_keys: &[&str]) {
        self.template_with(text, what, job, env_keys, None);
    }

    /// Checks a template; `with` holds the parameters of the catalog entry
    /// the text belongs to, readable as `with.<name>`.
    fn template_with(
        &mut self,
        text: &Text,
        what: &str,
        job: Option<usize>,
        env_keys: &[&str],
        with: Option<&IndexMap<String, WithArg>>,
    ) {
        match template::check_template(&text.value) {
            Ok(vars) => self.check_vars(&vars, text, what, job, env_keys, with),
            Err(e) => {
                let span = e.range.map_or(text.span, |r| {
                    template::span_in_text(text.source(self.source), text, r)
                });
                self.err(
                    Diagnostic::error(
                        format!("invalid template in {what}: {}", e.message),
                        Some(span),
                    )
                    .with_label("here")
                    .in_file(text.file.clone()),
                );
            }
        }
    }

    /// Checks that every variable path a template reads can exist when the
    /// job is rendered.
    fn check_vars(
        &mut self,
        vars: &[String],
        text: &Text,
        what: &str,
        job: Option<usize>,
        env_keys: &[&str],
        with: Option<&IndexMap<String, WithArg>>,
    ) {
        let wf = self.wf;
        for var in vars {
            let parts: Vec<&str> = var.split('.').collect();
            let root = parts[0];
            if FUNCTIONS.contains(&root) || matches!(root, "range" | "dict" | "namespace" | "loop")
            {
                continue;
            }
            let span = template::span_of_mention(text.source(self.source), text, var);
            let d = match (root, parts.get(1).copied()) {
                ("with", field) if with.is_some() => {
                    let with = with.expect("checked");
                    field.filter(|f| !with.contains_key(*f)).map(|f| {
                        Diagnostic::error(format!("unknown parameter `with.{f}` in {what}"), Some(span))
                            .with_label("not a parameter of this entry")
                            .with_opt_hint(did_you_mean(f, with.keys().map(String::as_str)))
                    })
                }
                (r, _) if !ROOTS.contains(&r) => Some(
                    Diagnostic::error(format!("unknown variable `{r}` in {what}"), Some(span))
                        .with_label("not defined")
                        .with_opt_hint(did_you_mean(r, ROOTS.iter().copied()).or_else(|| {
                            Some(format!("templates can use {}", ROOTS.join(", ")))
                        })),
                ),
                (_, None) => None,
                ("params", Some(p)) if !wf.params.contains_key(p) => Some(
                    Diagnostic::error(format!("unknown parameter `{p}` in {what}"), Some(span))
                        .with_label("not declared under `params`")
                        .with_opt_hint(
                            did_you_mean(p, wf.params.keys().map(String::as_str))
                                .or_else(|| Some(format!("declare it: `params: {{{p}: {{default: ...}}}}`"))),
                        ),
                ),
                ("matrix", Some(a)) => {
                    let axes: Vec<&str> = job
                        .and_then(|j| wf.jobs[j].matrix.as_ref())
                        .map(|m| m.axes.keys().map(String::as_str).collect())
                        .unwrap_or_default();
                    (!axes.contains(&a)).then(|| {
                        Diagnostic::error(format!("unknown matrix axis `{a}` in {what}"), Some(span))
                            .with_label("no such axis")
                            .with_opt_hint(did_you_mean(a, axes.iter().copied()).or_else(|| {
                                Some(if axes.is_empty() {
                                    "this job has no `matrix`".to_string()
                                } else {
                                    format!("axes of this job: {}", axes.join(", "))
                                })
                            }))
                    })
                }
                ("needs", Some(n)) => self.check_need_ref(n, parts.get(2).copied(), span, what, job),
                ("workflow", Some(w)) if !matches!(w, "name" | "id") => Some(
                    Diagnostic::error(format!("unknown field `workflow.{w}` in {what}"), Some(span))
                        .with_hint("`workflow` has `name` and `id`"),
                ),
                ("env", Some(e)) if !env_keys.contains(&e) => Some(
                    Diagnostic::error(format!("unknown environment variable `{e}` in {what}"), Some(span))
                        .with_label("not set in `env` of the workflow, job or step")
                        .with_opt_hint(did_you_mean(e, env_keys.iter().copied()).or_else(|| {
                            Some("`env.X` reads the workflow's `env:`; the host environment is not visible to templates".to_string())
                        })),
                ),
                _ => None,
            };
            if let Some(d) = d {
                self.err(d.in_file(text.file.clone()));
            }
        }
    }

    fn check_need_ref(
        &self,
        n: &str,
        field: Option<&str>,
        span: Span,
        what: &str,
        job: Option<usize>,
    ) -> Option<Diagnostic> {
        let Some(j) = job else {
            return Some(
                Diagnostic::error(format!("`needs` is not available in {what}"), Some(span))
                    .with_hint("workflow-level values are rendered before any job runs"),
            );
        };
        let key = self.wf.jobs.get_index(j).map_or("", |(k, _)| k.as_str());
        match self.index.get(n) {
            None => Some(
                Diagnostic::error(format!("unknown job `{n}` in {what}"), Some(span))
                    .with_label("no job has this name")
                    .with_opt_hint(did_you_mean(n, self.wf.jobs.keys().map(String::as_str))),
            ),
            Some(&t) if !dag::reaches(&self.needs, j, t) => Some(
                Diagnostic::error(
                    format!("{what} reads `needs.{n}`, but job `{key}` does not need `{n}`"),
                    Some(span),
                )
                .with_label("not finished when this job starts")
                .with_hint(format!("add `{n}` to the `needs` of `{key}`")),
            ),
            Some(_) => match field {
                None | Some("outputs" | "result") => None,
                Some(f) => Some(
                    Diagnostic::error(
                        format!("unknown field `needs.{n}.{f}` in {what}"),
                        Some(span),
                    )
                    .with_opt_hint(
                        did_you_mean(f, ["outputs", "result"])
                            .or_else(|| Some("a need has `outputs` and `result`".to_string())),
                    ),
                ),
            },
        }
    }

    fn matrix(&mut self, key: &str, job: &JobAst) {
        let Some(m) = &job.matrix else { return };
        if m.axes.is_empty() {
            self.err(
                Diagnostic::error(
                    format!("the matrix of job `{key}` has no axes"),
                    Some(m.span),
                )
                .with_hint("add an axis such as `shard: [1, 2, 3]`, or remove `matrix`"),
            );
            return;
        }
        let mut product: usize = 1;
        for (axis, a) in &m.axes {
            if !is_identifier(axis) {
                self.err(
                    Diagnostic::error(
                        format!("invalid matrix axis name `{axis}` in job `{key}`"),
                        Some(a.key),
                    )
                    .with_hint("use letters, digits and `_` so `{{ matrix.axis }}` works"),
                );
            }
            if a.values.is_empty() {
                self.err(
                    Diagnostic::error(
                        format!("matrix axis `{axis}` of job `{key}` is empty"),
                        Some(a.span),
                    )
                    .with_label("no values")
                    .with_hint("give the axis at least one value, or remove it"),
                );
            }
            let mut seen = BTreeSet::new();
            for v in &a.values {
                if !seen.insert(v.value.to_string()) {
                    self.err(
                        Diagnostic::error(
                            format!(
                                "matrix axis `{axis}` of job `{key}` repeats the value {}",
                                v.value
                            ),
                            Some(v.span),
                        )
                        .with_label("repeated"),
                    );
                }
            }
            product = product.saturating_mul(a.values.len().max(1));
        }
        if product > MAX_MATRIX_CELLS {
            self.err(
                Diagnostic::error(
                    format!("the matrix of job `{key}` has {product} cells, more than the limit of {MAX_MATRIX_CELLS}"),
                    Some(m.span),
                )
                .with_hint("split the job, or drop values; `exclude` is applied after this limit"),
            );
        }
        for ex in &m.exclude {
            if ex.value.is_empty() {
                self.err(Diagnostic::error(format!("an empty `exclude` entry in the matrix of job `{key}` would exclude every cell"), Some(ex.span)));
            }
            for (axis, v) in &ex.value {
                match m.axes.get(axis) {
                    None => self.err(
                        Diagnostic::error(
                            format!("`exclude` names unknown matrix axis `{axis}` in job `{key}`"),
                            Some(v.span),
                        )
                        .with_opt_hint(did_you_mean(axis, m.axes.keys().map(String::as_str))),
                    ),
                    Some(a) if !a.values.iter().any(|x| x.value == v.value) => self.err(
                        Diagnostic::error(
                            format!(
                                "`exclude` value {} is not on matrix axis `{axis}` of job `{key}`",
                                v.value
                            ),
                            Some(v.span),
                        )
                        .with_label("matches no cell")
                        .with_hint(format!(
                            "values of `{axis}`: {}",
                            a.values
                                .iter()
                                .map(|x| x.value.to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )),
                    ),
                    Some(_) => {}
                }
            }
        }
    }

    fn artifacts(&mut self, key: &str, job: &JobAst) {
        for (name, a) in &job.artifacts {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
            {
                self.err(
                    Diagnostic::error(
                        format!("invalid artifact name `{name}` in job `{key}`"),
                        Some(a.key),
                    )
                    .with_hint(
                        "use letters, digits, `_` and `-`; other jobs refer to it as `job.name`",
                    ),
                );
            }
            let p = a.path.value.as_str();
            let escapes = p.split(['/', '\\']).any(|c| c == "..");
            if p.is_empty() {
                self.err(Diagnostic::error(
                    format!("artifact `{name}` of job `{key}` has an empty path"),
                    Some(a.path.span),
                ));
            } else if p.starts_with('/') || p.starts_with('~') || escapes {
                self.err(
                    Diagnostic::error(format!("artifact `{name}` of job `{key}` points outside the workspace: `{p}`"), Some(a.path.span))
                        .with_label("absolute, `~` or `..` path")
                        .with_hint("artifact paths are relative to the workspace, such as `target/release/app` or `dist/**/*.tar.gz`"),
                );
            }
        }
    }

    fn inputs(&mut self, i: usize, key: &str, job: &JobAst) {
        let wf = self.wf;
        let mut seen = BTreeSet::new();
        for input in &job.inputs {
            let text = input.value.as_str();
            let Some((src, artifact)) = text.split_once('.') else {
                self.err(
                    Diagnostic::error(
                        format!("input `{text}` of job `{key}` must name a job and an artifact"),
                        Some(input.span),
                    )
                    .with_hint(format!("write `job.artifact`, such as `build.{text}`")),
                );
                continue;
            };
            if !seen.insert(text) {
                self.err(Diagnostic::error(
                    format!("job `{key}` lists input `{text}` twice"),
                    Some(input.span),
                ));
                continue;
            }
            let Some(&j) = self.index.get(src) else {
                self.err(
                    Diagnostic::error(
                        format!("input `{text}` of job `{key}` names unknown job `{src}`"),
                        Some(input.span),
                    )
                    .with_opt_hint(did_you_mean(src, wf.jobs.keys().map(String::as_str))),
                );
                continue;
            };
            if !dag::reaches(&self.needs, i, j) {
                self.err(
                    Diagnostic::error(format!("input `{text}` of job `{key}` comes from `{src}`, which `{key}` does not need"), Some(input.span))
                        .with_label("not finished when this job starts")
                        .with_hint(format!("add `{src}` to the `needs` of `{key}`")),
                );
            }
            let produced = &wf.jobs[j].artifacts;
            if !produced.contains_key(artifact) {
                let hint = did_you_mean(artifact, produced.keys().map(String::as_str))
                    .unwrap_or_else(|| {
                        if produced.is_empty() {
                            format!("job `{src}` declares no `artifacts`")
                        } else {
                            format!(
                                "artifacts of `{src}`: {}",
                                produced.keys().cloned().collect::<Vec<_>>().join(", ")
                            )
                        }
                    });
                self.err(
                    Diagnostic::error(format!("input `{text}` of job `{key}`: job `{src}` has no artifact `{artifact}`"), Some(input.span))
                        .with_label("unknown artifact")
                        .with_hint(hint),
                );
            }
        }
    }
}
