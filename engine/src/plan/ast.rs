//! The workflow file as read, with the span of every value. Validation and
//! expansion work on this; [`WorkflowAst::to_spec`] gives the normalised wire
//! model stored in a `Workflow` resource.

use std::sync::Arc;

use indexmap::IndexMap;
use kruntimes_crds::{JobDefaults, JobSpec, ParamSpec, StepSpec, WorkflowFileSpec};

use super::diag::{Source, Span};
use super::yaml::Style;

/// A value and where it was written.
#[derive(Clone, Debug, PartialEq)]
pub struct Spanned<T> {
    /// The value.
    pub value: T,
    /// Its span in the file.
    pub span: Span,
}

/// Text that may hold templates: its span and how the scalar was written.
#[derive(Clone, Debug, PartialEq)]
pub struct Text {
    /// The text (a minijinja template).
    pub value: String,
    /// Span of the scalar.
    pub span: Span,
    /// Scalar style, to map template offsets back to the file.
    pub style: Style,
    /// The file the text was written in when that is not the workflow file:
    /// the catalog entry a `uses:` step expanded.
    pub file: Option<Arc<Source>>,
}

impl Text {
    /// The file the text's span is in: its own, else `workflow`.
    pub fn source<'a>(&'a self, workflow: &'a Source) -> &'a Source {
        self.file.as_deref().unwrap_or(workflow)
    }
}

/// A whole workflow file.
#[derive(Clone, Debug, Default)]
pub struct WorkflowAst {
    /// `metadata.name`, the bare form's `name:`, or the file stem.
    pub name: String,
    /// Span of the explicit name, if one was written.
    pub name_span: Option<Span>,
    /// Declared parameters.
    pub params: IndexMap<String, ParamAst>,
    /// `defaults:`.
    pub defaults: DefaultsAst,
    /// Workflow-level `env:`.
    pub env: IndexMap<String, EnvVarAst>,
    /// Jobs in file order.
    pub jobs: IndexMap<String, JobAst>,
    /// Span of the `jobs` key, or of the file.
    pub jobs_span: Option<Span>,
}

/// A declared parameter.
#[derive(Clone, Debug)]
pub struct ParamAst {
    /// Span of the parameter's key.
    pub key: Span,
    /// Default value; a parameter without one is required.
    pub default: Option<Spanned<serde_json::Value>>,
    /// Description.
    pub description: Option<String>,
}

/// `defaults:`.
#[derive(Clone, Debug, Default)]
pub struct DefaultsAst {
    /// Default pool.
    pub pool: Option<Spanned<String>>,
    /// Default timeout.
    pub timeout: Option<Spanned<String>>,
    /// Default retries.
    pub retries: Option<Spanned<u32>>,
    /// Default shell.
    pub shell: Option<Spanned<String>>,
}

/// One `NAME: value` environment entry.
#[derive(Clone, Debug)]
pub struct EnvVarAst {
    /// Span of the variable name.
    pub key: Span,
    /// The value (a template).
    pub value: Text,
}

/// One job as written.
#[derive(Clone, Debug)]
pub struct JobAst {
    /// Span of the job's key.
    pub key: Span,
    /// Display name.
    pub name: Option<Text>,
    /// `needs:` entries.
    pub needs: Vec<Spanned<String>>,
    /// `if:` expression.
    pub if_: Option<Text>,
    /// Pool.
    pub pool: Option<Spanned<String>>,
    /// Timeout.
    pub timeout: Option<Spanned<String>>,
    /// Retries.
    pub retries: Option<Spanned<u32>>,
    /// Matrix.
    pub matrix: Option<MatrixAst>,
    /// Job env.
    pub env: IndexMap<String, EnvVarAst>,
    /// Job shell.
    pub shell: Option<Spanned<String>>,
    /// Steps (the `run:` shorthand becomes one step).
    pub steps: Vec<StepAst>,
    /// Artifacts: name -> path or glob.
    pub artifacts: IndexMap<String, ArtifactAst>,
    /// Inputs as `job.artifact`.
    pub inputs: Vec<Spanned<String>>,
    /// `cache:`.
    pub cache: Option<Spanned<bool>>,
    /// Source globs.
    pub source: Vec<Spanned<String>>,
}

/// A declared artifact.
#[derive(Clone, Debug)]
pub struct ArtifactAst {
    /// Span of the artifact's name.
    pub key: Span,
    /// Path or glob, relative to the workspace.
    pub path: Spanned<String>,
}

/// A matrix.
#[derive(Clone, Debug)]
pub struct MatrixAst {
    /// Span of the whole `matrix:` value.
    pub span: Span,
    /// Axes in file order.
    pub axes: IndexMap<String, AxisAst>,
    /// `exclude:` entries: partial cells.
    pub exclude: Vec<Spanned<IndexMap<String, Spanned<serde_json::Value>>>>,
}

/// One matrix axis.
#[derive(Clone, Debug)]
pub struct AxisAst {
    /// Span of the axis name.
    pub key: Span,
    /// Span of the value list.
    pub span: Span,
    /// The values (scalars).
    pub values: Vec<Spanned<serde_json::Value>>,
}

/// One step.
#[derive(Clone, Debug)]
pub struct StepAst {
    /// Span of the step (or of the shorthand `run:`).
    pub span: Span,
    /// Display name.
    pub name: Option<Text>,
    /// Script template.
    pub run: Text,
    /// Step shell.
    pub shell: Option<Spanned<String>>,
    /// Step env.
    pub env: IndexMap<String, EnvVarAst>,
    /// Step timeout.
    pub timeout: Option<Spanned<String>>,
    /// Set when the step was expanded from a catalog entry (`uses:`).
    pub origin: Option<Arc<StepOrigin>>,
}

/// Where an expanded step came from, and the values its templates read as
/// `with.<name>`. Every step of one `uses:` shares one origin.
#[derive(Clone, Debug)]
pub struct StepOrigin {
    /// Provenance: `cargo-test@1.0.0`, recorded on every rendered step.
    pub from: String,
    /// Span of the `uses:` value (or of `from:` in the normalised form).
    pub span: Span,
    /// Every parameter of the entry, given or defaulted, in the entry's order.
    pub with: IndexMap<String, WithArg>,
}

/// The value of one entry parameter.
#[derive(Clone, Debug)]
pub struct WithArg {
    /// The literal value (a string template's text as written).
    pub value: serde_json::Value,
    /// Set for a string holding `{{`/`{%`: rendered in the workflow's
    /// context when the job becomes ready.
    pub template: Option<Text>,
}
fn env_map(env: &IndexMap<String, EnvVarAst>) -> IndexMap<String, String> {
    env.iter()
        .map(|(k, v)| (k.clone(), v.value.value.clone()))
        .collect()
}

fn val<T: Clone>(s: &Option<Spanned<T>>) -> Option<T> {
    s.as_ref().map(|s| s.value.clone())
}

impl WorkflowAst {
    /// The normalised wire model (shorthands expanded), as stored in a
    /// `Workflow` resource. Serialising it gives a valid workflow file.
    ///
    /// `uses:` steps appear expanded: the entry's steps with `from:` (the
    /// entry and version) and `with:` (every parameter's value), so the
    /// controller re-plans them without the catalog and renders the same
    /// steps, with the same cache keys, as the CLI.
    pub fn to_spec(&self) -> WorkflowFileSpec {
        WorkflowFileSpec {
            params: self
                .params
                .iter()
                .map(|(k, p)| {
                    (
                        k.clone(),
                        ParamSpec {
                            default: p.default.as_ref().map(|d| d.value.clone()),
                            description: p.description.clone(),
                        },
                    )
                })
                .collect(),
            defaults: JobDefaults {
                pool: val(&self.defaults.pool),
                timeout: val(&self.defaults.timeout),
                retries: val(&self.defaults.retries),
                shell: val(&self.defaults.shell),
            },
            env: env_map(&self.env),
            jobs: self
                .jobs
                .iter()
                .map(|(k, j)| (k.clone(), j.to_spec()))
                .collect(),
        }
    }
}

impl JobAst {
    fn to_spec(&self) -> JobSpec {
        JobSpec {
            name: self.name.as_ref().map(|t| t.value.clone()),
            needs: self.needs.iter().map(|n| n.value.clone()).collect(),
            if_: self.if_.as_ref().map(|t| t.value.clone()),
            pool: val(&self.pool),
            timeout: val(&self.timeout),
            retries: val(&self.retries),
            matrix: self.matrix.as_ref().map(|m| {
                let mut map: serde_json::Map<String, serde_json::Value> = m
                    .axes
                    .iter()
                    .map(|(k, a)| {
                        (
                            k.clone(),
                            a.values.iter().map(|v| v.value.clone()).collect(),
                        )
                    })
                    .collect();
                if !m.exclude.is_empty() {
                    map.insert(
                        "exclude".into(),
                        m.exclude
                            .iter()
                            .map(|e| -> serde_json::Value {
                                e.value
                                    .iter()
                                    .map(|(k, v)| (k.clone(), v.value.clone()))
                                    .collect::<serde_json::Map<_, _>>()
                                    .into()
                            })
                            .collect::<Vec<_>>()
                            .into(),
                    );
                }
                map
            }),
            env: env_map(&self.env),
            shell: val(&self.shell),
            steps: self
                .steps
                .iter()
                .map(|s| StepSpec {
                    name: s.name.as_ref().map(|t| t.value.clone()),
                    run: s.run.value.clone(),
                    shell: val(&s.shell),
                    env: env_map(&s.env),
                    timeout: val(&s.timeout),
                    from: s.origin.as_ref().map(|o| o.from.clone()),
                    with: s
                        .origin
                        .as_ref()
                        .map(|o| {
                            o.with
                                .iter()
                                .map(|(k, a)| (k.clone(), a.value.clone()))
                                .collect()
                        })
                        .unwrap_or_default(),
                })
                .collect(),
            artifacts: self
                .artifacts
                .iter()
                .map(|(k, a)| (k.clone(), a.path.value.clone()))
                .collect(),
            inputs: self.inputs.iter().map(|i| i.value.clone()).collect(),
            cache: val(&self.cache),
            source: self.source.iter().map(|s| s.value.clone()).collect(),
        }
    }
}
