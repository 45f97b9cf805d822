//! The workflow file as read, with the span of every value. Validation and
//! expansion work on this; [`WorkflowAst::to_spec`] gives the normalised wire
//! model stored in a `Workflow` resource.

use indexmap::IndexMap;
use kruntimes_crds::{JobDefaults, JobSpec, ParamSpec, StepSpec, WorkflowFileSpec};

use super::diag::Span;
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
