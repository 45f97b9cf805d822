//! Reads a workflow out of the located YAML tree: shapes, types and key names.
//! Semantic rules (references, cycles, templates) live in `validate`.
//!
//! Every problem is pushed to a list and reading goes on, so one run reports
//! all of them.

use std::sync::Arc;

use indexmap::IndexMap;

use super::ast::{
    ArtifactAst, AxisAst, DefaultsAst, EnvVarAst, JobAst, MatrixAst, ParamAst, Spanned, StepAst,
    Text, WorkflowAst,
};
use super::catalog::Resolver;
use super::diag::{Diagnostic, Source, Span, did_you_mean};
use super::yaml::{Kind, Node, Style};

const MANIFEST_KEYS: &[&str] = &["apiVersion", "kind", "metadata", "spec"];
const METADATA_KEYS: &[&str] = &["name", "namespace", "labels", "annotations"];
const SPEC_KEYS: &[&str] = &["params", "defaults", "env", "jobs"];
const BARE_KEYS: &[&str] = &["name", "params", "defaults", "env", "jobs"];
const PARAM_KEYS: &[&str] = &["default", "description"];
const DEFAULTS_KEYS: &[&str] = &["pool", "timeout", "retries", "shell"];
/// Keys of a job, in the order the README documents them.
pub const JOB_KEYS: &[&str] = &[
    "name",
    "needs",
    "if",
    "pool",
    "timeout",
    "retries",
    "matrix",
    "env",
    "shell",
    "steps",
    "run",
    "uses",
    "with",
    "artifacts",
    "inputs",
    "cache",
    "source",
];
/// Keys of a `run:` step. `from` and `with` appear in the normalised form of
/// an expanded `uses:` step; `uses` itself starts a step that is read apart
/// and is listed only so a misspelling of it gets a suggestion.
const STEP_KEYS: &[&str] = &[
    "name", "run", "shell", "env", "timeout", "uses", "from", "with",
];

/// Hints for keys people bring from other CI systems.
fn foreign_key_hint(key: &str) -> Option<&'static str> {
    Some(match key {
        "on" => {
            "kruntimes runs a workflow when you ask (`krt run`, `krt submit`); triggers belong to the CI system that calls it"
        }
        "runs-on" => "in kruntimes a job runs on a warm runtime pool: use `pool:`",
        "timeout-minutes" => "use `timeout:` with a unit, such as `timeout: 10m`",
        "strategy" => "put the axes directly under `matrix:`",
        "outputs" => {
            "outputs need no declaration: a step appends `key=value` lines to \"$KRT_OUTPUT\""
        }
        "working-directory" => "steps run in the workspace root; use `cd dir && ...` in `run:`",
        _ => return None,
    })
}

pub(crate) struct Reader<'d> {
    pub diags: &'d mut Vec<Diagnostic>,
    /// Resolves `uses:` references; `None` while reading a catalog entry,
    /// which cannot use another entry.
    pub catalog: Option<&'d Resolver>,
    /// The file being read when it is not the workflow (a catalog entry):
    /// stamped on every text, so later diagnostics point into it.
    pub file: Option<Arc<Source>>,
}

pub(crate) type Entries<'a> = &'a [(Node, Node)];

pub(crate) fn key_str(k: &Node) -> &str {
    k.as_str().unwrap_or_default()
}

pub(crate) fn get<'a>(entries: Entries<'a>, key: &str) -> Option<&'a (Node, Node)> {
    entries.iter().find(|(k, _)| key_str(k) == key)
}

impl Reader<'_> {
    pub(crate) fn err(&mut self, d: Diagnostic) {
        self.diags.push(d.in_file(self.file.clone()));
    }

    pub(crate) fn map<'a>(&mut self, node: &'a Node, what: &str) -> Option<Entries<'a>> {
        match &node.kind {
            Kind::Map(entries) => Some(entries),
            _ if node.is_null() => Some(&[]),
            _ => {
                self.err(
                    Diagnostic::error(
                        format!("expected a mapping for {what}, found {}", node.describe()),
                        Some(node.span),
                    )
                    .with_label("expected `key: value` entries"),
                );
                None
            }
        }
    }

    pub(crate) fn check_keys(&mut self, entries: Entries<'_>, allowed: &[&str], what: &str) {
        for (k, _) in entries {
            let key = key_str(k);
            if allowed.contains(&key) {
                continue;
            }
            let hint = foreign_key_hint(key)
                .map(str::to_string)
                .or_else(|| did_you_mean(key, allowed.iter().copied()))
                .unwrap_or_else(|| format!("expected one of: {}", allowed.join(", ")));
            self.err(
                Diagnostic::error(format!("unknown key `{key}` in {what}"), Some(k.span))
                    .with_label("unknown key")
                    .with_hint(hint),
            );
        }
    }

    pub(crate) fn string(&mut self, node: &Node, what: &str) -> Option<Spanned<String>> {
        match &node.kind {
            Kind::Scalar(s, _) if !node.is_null() => Some(Spanned {
                value: s.clone(),
                span: node.span,
            }),
            _ => {
                self.err(
                    Diagnostic::error(
                        format!("expected text for {what}, found {}", node.describe()),
                        Some(node.span),
                    )
                    .with_label("expected text"),
                );
                None
            }
        }
    }

    pub(crate) fn text(&mut self, node: &Node, what: &str) -> Option<Text> {
        match &node.kind {
            Kind::Scalar(s, style) if !node.is_null() => Some(Text {
                value: s.clone(),
                span: node.span,
                style: *style,
                file: self.file.clone(),
            }),
            _ => {
                self.err(
                    Diagnostic::error(
                        format!("expected text for {what}, found {}", node.describe()),
                        Some(node.span),
                    )
                    .with_label("expected text"),
                );
                None
            }
        }
    }

    fn u32(&mut self, node: &Node, what: &str) -> Option<Spanned<u32>> {
        let parsed = match &node.kind {
            Kind::Scalar(s, Style::Plain) => s.parse::<u32>().ok(),
            _ => None,
        };
        if parsed.is_none() {
            self.err(
                Diagnostic::error(
                    format!(
                        "expected a whole number for {what}, found `{}`",
                        node.as_str().unwrap_or(node.describe())
                    ),
                    Some(node.span),
                )
                .with_label("expected a number such as `2`"),
            );
        }
        parsed.map(|value| Spanned {
            value,
            span: node.span,
        })
    }

    pub(crate) fn bool(&mut self, node: &Node, what: &str) -> Option<Spanned<bool>> {
        let parsed = match &node.kind {
            Kind::Scalar(s, Style::Plain) => match s.as_str() {
                "true" | "True" | "TRUE" => Some(true),
                "false" | "False" | "FALSE" => Some(false),
                _ => None,
            },
            _ => None,
        };
        if parsed.is_none() {
            self.err(
                Diagnostic::error(
                    format!(
                        "expected `true` or `false` for {what}, found `{}`",
                        node.as_str().unwrap_or(node.describe())
                    ),
                    Some(node.span),
                )
                .with_label("expected `true` or `false`"),
            );
        }
        parsed.map(|value| Spanned {
            value,
            span: node.span,
        })
    }

    /// A list of strings; a single scalar counts as a one-item list when
    /// `allow_scalar` is set (`needs: build`).
    fn string_list(&mut self, node: &Node, what: &str, allow_scalar: bool) -> Vec<Spanned<String>> {
        match &node.kind {
            Kind::Seq(items) => items.iter().filter_map(|i| self.string(i, what)).collect(),
            Kind::Scalar(..) if node.is_null() => Vec::new(),
            Kind::Scalar(..) if allow_scalar => self.string(node, what).into_iter().collect(),
            _ => {
                self.err(
                    Diagnostic::error(
                        format!("expected a list for {what}, found {}", node.describe()),
                        Some(node.span),
                    )
                    .with_label("expected a list such as `[a, b]`"),
                );
                Vec::new()
            }
        }
    }

    pub(crate) fn scalar_value(
        &mut self,
        node: &Node,
        what: &str,
    ) -> Option<Spanned<serde_json::Value>> {
        match &node.kind {
            Kind::Scalar(..) => Some(Spanned {
                value: node.to_json(),
                span: node.span,
            }),
            _ => {
                self.err(
                    Diagnostic::error(
                        format!(
                            "expected a single value for {what}, found {}",
                            node.describe()
                        ),
                        Some(node.span),
                    )
                    .with_label("expected text, a number or a boolean"),
                );
                None
            }
        }
    }

    pub(crate) fn env(&mut self, node: &Node, what: &str) -> IndexMap<String, EnvVarAst> {
        let mut out = IndexMap::new();
        let Some(entries) = self.map(node, &format!("`env` of {what}")) else {
            return out;
        };
        for (k, v) in entries {
            let name = key_str(k);
            let value = match &v.kind {
                // Numbers and booleans are fine as values: `DEBUG: 1`.
                Kind::Scalar(s, style) => Text {
                    value: if v.is_null() {
                        String::new()
                    } else {
                        s.clone()
                    },
                    span: v.span,
                    style: *style,
                    file: self.file.clone(),
                },
                _ => {
                    self.err(
                        Diagnostic::error(
                            format!(
                                "expected text for env variable `{name}` of {what}, found {}",
                                v.describe()
                            ),
                            Some(v.span),
                        )
                        .with_label("expected text"),
                    );
                    continue;
                }
            };
            out.insert(name.to_string(), EnvVarAst { key: k.span, value });
        }
        out
    }

    /// Reads the whole file.
    pub fn workflow(&mut self, root: &Node, file_stem: &str) -> WorkflowAst {
        let mut wf = WorkflowAst {
            name: file_stem.to_string(),
            ..WorkflowAst::default()
        };
        let Some(entries) = self.map(root, "the workflow file") else {
            return wf;
        };
        let is_manifest = entries
            .iter()
            .any(|(k, _)| matches!(key_str(k), "apiVersion" | "kind" | "metadata" | "spec"));
        let body: Option<(&Node, Entries<'_>)> = if is_manifest {
            self.check_keys(entries, MANIFEST_KEYS, "the workflow manifest");
            self.manifest_header(entries, &mut wf);
            match get(entries, "spec") {
                Some((_, spec)) => self.map(spec, "`spec`").map(|e| (spec, e)),
                None => {
                    self.err(
                        Diagnostic::error("the workflow manifest has no `spec`", Some(root.span))
                            .with_hint("put `params`, `defaults`, `env` and `jobs` under `spec:`"),
                    );
                    None
                }
            }
        } else {
            self.check_keys(entries, BARE_KEYS, "the workflow file");
            if let Some((_, n)) = get(entries, "name")
                && let Some(name) = self.string(n, "`name`")
            {
                wf.name = name.value;
                wf.name_span = Some(name.span);
            }
            Some((root, entries))
        };
        let Some((body_node, body)) = body else {
            return wf;
        };
        if is_manifest {
            self.check_keys(body, SPEC_KEYS, "`spec`");
        }
        if let Some((_, n)) = get(body, "params") {
            wf.params = self.params(n);
        }
        if let Some((_, n)) = get(body, "defaults") {
            wf.defaults = self.defaults(n);
        }
        if let Some((_, n)) = get(body, "env") {
            wf.env = self.env(n, "the workflow");
        }
        match get(body, "jobs") {
            Some((k, n)) => {
                wf.jobs_span = Some(k.span);
                if let Some(jobs) = self.map(n, "`jobs`") {
                    if jobs.is_empty() {
                        self.err(
                            Diagnostic::error("the workflow has no jobs", Some(n.span))
                                .with_hint("add a job, for example `build: {run: make}`"),
                        );
                    }
                    for (k, v) in jobs {
                        if let Some(job) = self.job(k, v) {
                            wf.jobs.insert(key_str(k).to_string(), job);
                        }
                    }
                }
            }
            None => self.err(
                Diagnostic::error("the workflow has no `jobs`", Some(body_node.span))
                    .with_hint("add a `jobs:` mapping, for example `jobs: {build: {run: make}}`"),
            ),
        }
        wf
    }

    fn manifest_header(&mut self, entries: Entries<'_>, wf: &mut WorkflowAst) {
        if let Some((_, v)) = get(entries, "apiVersion")
            && let Some(s) = self.string(v, "`apiVersion`")
            && s.value != kruntimes_crds::API_VERSION
        {
            self.err(
                Diagnostic::error(
                    format!("unsupported apiVersion `{}`", s.value),
                    Some(s.span),
                )
                .with_label("unknown API version")
                .with_hint(format!("use `apiVersion: {}`", kruntimes_crds::API_VERSION)),
            );
        }
        if let Some((_, v)) = get(entries, "kind")
            && let Some(s) = self.string(v, "`kind`")
            && s.value != "Workflow"
        {
            self.err(
                Diagnostic::error(format!("unsupported kind `{}`", s.value), Some(s.span))
                    .with_label("expected `Workflow`")
                    .with_hint("`krt` reads `kind: Workflow` files; apply Runs and RuntimePools with kubectl"),
            );
        }
        if let Some((_, m)) = get(entries, "metadata")
            && let Some(meta) = self.map(m, "`metadata`")
        {
            self.check_keys(meta, METADATA_KEYS, "`metadata`");
            if let Some((_, n)) = get(meta, "name")
                && let Some(name) = self.string(n, "`metadata.name`")
            {
                wf.name = name.value;
                wf.name_span = Some(name.span);
            }
        }
    }

    fn params(&mut self, node: &Node) -> IndexMap<String, ParamAst> {
        let mut out = IndexMap::new();
        let Some(entries) = self.map(node, "`params`") else {
            return out;
        };
        for (k, v) in entries {
            let name = key_str(k);
            let param = match &v.kind {
                // Shorthand: `profile: release` is `profile: {default: release}`;
                // `profile: ~` (null) declares a required parameter.
                Kind::Scalar(..) => ParamAst {
                    key: k.span,
                    default: (!v.is_null()).then(|| Spanned {
                        value: v.to_json(),
                        span: v.span,
                    }),
                    description: None,
                },
                Kind::Map(fields) => {
                    self.check_keys(fields, PARAM_KEYS, &format!("parameter `{name}`"));
                    ParamAst {
                        key: k.span,
                        default: get(fields, "default")
                            .filter(|(_, d)| !d.is_null())
                            .and_then(|(_, d)| {
                                self.scalar_value(d, &format!("the default of parameter `{name}`"))
                            }),
                        description: get(fields, "description")
                            .and_then(|(_, d)| self.string(d, "`description`"))
                            .map(|s| s.value),
                    }
                }
                Kind::Seq(_) => {
                    self.err(
                        Diagnostic::error(
                            format!("expected a default value or a mapping for parameter `{name}`, found a list"),
                            Some(v.span),
                        )
                        .with_hint("write `name: value` or `name: {default: value, description: ...}`"),
                    );
                    continue;
                }
            };
            out.insert(name.to_string(), param);
        }
        out
    }

    fn defaults(&mut self, node: &Node) -> DefaultsAst {
        let mut d = DefaultsAst::default();
        let Some(entries) = self.map(node, "`defaults`") else {
            return d;
        };
        self.check_keys(entries, DEFAULTS_KEYS, "`defaults`");
        for (k, v) in entries {
            match key_str(k) {
                "pool" => d.pool = self.string(v, "`defaults.pool`"),
                "timeout" => d.timeout = self.string(v, "`defaults.timeout`"),
                "retries" => d.retries = self.u32(v, "`defaults.retries`"),
                "shell" => d.shell = self.string(v, "`defaults.shell`"),
                _ => {}
            }
        }
        d
    }

    fn job(&mut self, key: &Node, node: &Node) -> Option<JobAst> {
        let name = key_str(key);
        let what = format!("job `{name}`");
        let entries = self.map(node, &what)?;
        self.check_keys(entries, JOB_KEYS, &what);
        let mut job = JobAst {
            key: key.span,
            name: None,
            needs: Vec::new(),
            if_: None,
            pool: None,
            timeout: None,
            retries: None,
            matrix: None,
            env: IndexMap::new(),
            shell: None,
            steps: Vec::new(),
            artifacts: IndexMap::new(),
            inputs: Vec::new(),
            cache: None,
            source: Vec::new(),
        };
        let mut run_key: Option<Span> = None;
        let mut steps_key: Option<Span> = None;
        let mut uses_key: Option<Span> = None;
        for (k, v) in entries {
            let field = |f: &str| format!("`{f}` of {what}");
            match key_str(k) {
                "name" => job.name = self.text(v, &field("name")),
                "needs" => job.needs = self.string_list(v, &field("needs"), true),
                "if" => job.if_ = self.text(v, &field("if")),
                "pool" => job.pool = self.string(v, &field("pool")),
                "timeout" => job.timeout = self.string(v, &field("timeout")),
                "retries" => job.retries = self.u32(v, &field("retries")),
                "matrix" => job.matrix = self.matrix(v, &what),
                "env" => job.env = self.env(v, &what),
                "shell" => job.shell = self.string(v, &field("shell")),
                "cache" => job.cache = self.bool(v, &field("cache")),
                "inputs" => job.inputs = self.string_list(v, &field("inputs"), false),
                "source" => job.source = self.string_list(v, &field("source"), true),
                "artifacts" => job.artifacts = self.artifacts(v, &what),
                "run" => {
                    run_key = Some(k.span);
                    if let Some(run) = self.text(v, &field("run")) {
                        job.steps.push(StepAst {
                            span: k.span,
                            name: None,
                            run,
                            shell: None,
                            env: IndexMap::new(),
                            timeout: None,
                            origin: None,
                        });
                    }
                }
                "uses" => {
                    // The one-step shorthand: the entry's steps are the job's.
                    uses_key = Some(k.span);
                    let with = get(entries, "with").map(|(_, w)| w);
                    let steps = self.uses_step(v, with, None, IndexMap::new(), k.span, &what);
                    job.steps.extend(steps);
                }
                "with" if get(entries, "uses").is_none() => self.err(
                    Diagnostic::error(format!("{what} has `with` but no `uses`"), Some(k.span))
                        .with_label("values for nothing")
                        .with_hint(
                            "`with:` passes values to the catalog entry named by `uses:`, such as `uses: cargo-test@v1`",
                        ),
                ),
                "steps" => {
                    steps_key = Some(k.span);
                    if matches!(&v.kind, Kind::Seq(items) if items.is_empty()) || v.is_null() {
                        self.err(
                            Diagnostic::error(
                                format!("{what} has an empty `steps` list"),
                                Some(k.span),
                            )
                            .with_hint("add at least one `- run: <command>`"),
                        );
                    }
                    job.steps.extend(self.steps(v, &what));
                }
                _ => {}
            }
        }
        match (run_key, steps_key) {
            (Some(_), Some(s)) => self.err(
                Diagnostic::error(format!("{what} has both `run` and `steps`"), Some(s))
                    .with_label("second way to give the job's commands")
                    .with_hint("use `run:` for a single command, or move it into `steps:`"),
            ),
            _ if uses_key.is_some() && (run_key.is_some() || steps_key.is_some()) => {
                let other = if run_key.is_some() { "run" } else { "steps" };
                self.err(
                    Diagnostic::error(format!("{what} has both `uses` and `{other}`"), uses_key)
                        .with_label("second way to give the job's commands")
                        .with_hint("a job has one of `run`, `steps` or `uses`; list several commands and entries under `steps:`"),
                );
            }
            (None, None) if uses_key.is_some() => {}
            (None, None) => self.err(
                Diagnostic::error(format!("{what} has no steps"), Some(key.span))
                    .with_label("nothing to run")
                    .with_hint("add `run: <command>` or a `steps:` list"),
            ),
            _ => {}
        }
        Some(job)
    }

    pub(crate) fn steps(&mut self, node: &Node, what: &str) -> Vec<StepAst> {
        let Kind::Seq(items) = &node.kind else {
            if !node.is_null() {
                self.err(
                    Diagnostic::error(
                        format!(
                            "expected a list for `steps` of {what}, found {}",
                            node.describe()
                        ),
                        Some(node.span),
                    )
                    .with_hint("write each step as `- run: <command>`"),
                );
            }
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let step_what = format!("step {} of {what}", i + 1);
            // `- make test` is accepted as `- run: make test`.
            if let Kind::Scalar(..) = item.kind
                && let Some(run) = self.text(item, &step_what)
            {
                out.push(StepAst {
                    span: item.span,
                    name: None,
                    run,
                    shell: None,
                    env: IndexMap::new(),
                    timeout: None,
                    origin: None,
                });
                continue;
            }
            let Some(entries) = self.map(item, &step_what) else {
                continue;
            };
            if let Some(uses) = get(entries, "uses") {
                out.extend(self.uses_step_item(entries, uses, item.span, &step_what));
                continue;
            }
            self.check_keys(entries, STEP_KEYS, &step_what);
            let Some((_, run)) = get(entries, "run") else {
                self.err(
                    Diagnostic::error(format!("{step_what} has no `run`"), Some(item.span))
                        .with_hint("give the step a command: `run: make test`"),
                );
                continue;
            };
            let Some(run) = self.text(run, &format!("`run` of {step_what}")) else {
                continue;
            };
            let mut step = StepAst {
                span: item.span,
                name: None,
                run,
                shell: None,
                env: IndexMap::new(),
                timeout: None,
                origin: None,
            };
            for (k, v) in entries {
                match key_str(k) {
                    "name" => step.name = self.text(v, &format!("`name` of {step_what}")),
                    "shell" => step.shell = self.string(v, &format!("`shell` of {step_what}")),
                    "timeout" => {
                        step.timeout = self.string(v, &format!("`timeout` of {step_what}"))
                    }
                    "env" => step.env = self.env(v, &step_what),
                    _ => {}
                }
            }
            step.origin = self.normalised_origin(entries, &step_what);
            out.push(step);
        }
        out
    }

    fn artifacts(&mut self, node: &Node, what: &str) -> IndexMap<String, ArtifactAst> {
        let mut out = IndexMap::new();
        let Some(entries) = self.map(node, &format!("`artifacts` of {what}")) else {
            return out;
        };
        for (k, v) in entries {
            let name = key_str(k);
            if let Some(path) = self.string(v, &format!("artifact `{name}` of {what}")) {
                out.insert(name.to_string(), ArtifactAst { key: k.span, path });
            }
        }
        out
    }

    fn matrix(&mut self, node: &Node, what: &str) -> Option<MatrixAst> {
        let entries = self.map(node, &format!("`matrix` of {what}"))?;
        let mut m = MatrixAst {
            span: node.span,
            axes: IndexMap::new(),
            exclude: Vec::new(),
        };
        for (k, v) in entries {
            let axis = key_str(k);
            if axis == "exclude" {
                let Kind::Seq(items) = &v.kind else {
                    self.err(
                        Diagnostic::error(
                            format!(
                                "expected a list for `matrix.exclude` of {what}, found {}",
                                v.describe()
                            ),
                            Some(v.span),
                        )
                        .with_hint("write `exclude: [{os: windows, shard: 2}]`"),
                    );
                    continue;
                };
                for item in items {
                    let Some(fields) =
                        self.map(item, &format!("an entry of `matrix.exclude` of {what}"))
                    else {
                        continue;
                    };
                    let mut cell = IndexMap::new();
                    for (fk, fv) in fields {
                        if let Some(value) =
                            self.scalar_value(fv, &format!("`{}` in `matrix.exclude`", key_str(fk)))
                        {
                            cell.insert(
                                key_str(fk).to_string(),
                                Spanned {
                                    value: value.value,
                                    span: fk.span,
                                },
                            );
                        }
                    }
                    m.exclude.push(Spanned {
                        value: cell,
                        span: item.span,
                    });
                }
                continue;
            }
            if axis == "include" {
                self.err(
                    Diagnostic::error(
                        format!("`matrix.include` is not supported (in {what})"),
                        Some(k.span),
                    )
                    .with_hint(
                        "add the values to the axes, and remove unwanted cells with `exclude`",
                    ),
                );
                continue;
            }
            let values = match &v.kind {
                Kind::Seq(items) => items
                    .iter()
                    .filter_map(|i| {
                        self.scalar_value(i, &format!("a value of matrix axis `{axis}`"))
                    })
                    .collect(),
                _ => {
                    self.err(
                        Diagnostic::error(
                            format!("expected a list of values for matrix axis `{axis}` of {what}, found {}", v.describe()),
                            Some(v.span),
                        )
                        .with_hint(format!("write `{axis}: [a, b, c]`")),
                    );
                    continue;
                }
            };
            m.axes.insert(
                axis.to_string(),
                AxisAst {
                    key: k.span,
                    span: v.span,
                    values,
                },
            );
        }
        Some(m)
    }
}
