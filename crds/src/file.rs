//! The workflow-file model: what users write under `spec:` (or as a bare file),
//! in its normalised form.
//!
//! Normalised means: job-level `run:` shorthand becomes one step, a param given
//! as a bare scalar becomes `{default: value}`, and `needs: build` becomes
//! `needs: [build]`. The planner accepts both forms; this model only holds the
//! long one. Keys use the file's spelling (`if`, `needs`, `artifacts`).

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The body of a workflow file: parameters, defaults, environment and jobs.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkflowFileSpec {
    /// Declared inputs with defaults; set with `krt run -p key=value`.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub params: IndexMap<String, ParamSpec>,
    /// Settings every job inherits unless it sets its own.
    #[serde(default, skip_serializing_if = "JobDefaults::is_empty")]
    pub defaults: JobDefaults,
    /// Environment variables for every step of every job.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub env: IndexMap<String, String>,
    /// The jobs, keyed by name; the nodes of the DAG.
    pub jobs: IndexMap<String, JobSpec>,
}

/// A declared workflow parameter.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParamSpec {
    /// Value used when none is given; a parameter without one is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::any_value")]
    pub default: Option<serde_json::Value>,
    /// One line shown by `krt graph` and in errors about a missing value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Settings inherited by every job.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobDefaults {
    /// RuntimePool that runs jobs in cluster mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Time limit of one attempt of a job, such as `90s`, `10m` or `1h30m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// How many times a failed job is tried again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Shell for `run:` steps (default `bash`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
}

impl JobDefaults {
    /// True when no default is set, so the key can be left out.
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// One job: a node of the DAG, run once per matrix cell.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobSpec {
    /// Human name shown in logs; defaults to the job key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Jobs that must finish first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<String>,
    /// Expression deciding whether the job runs once its needs finished.
    #[serde(default, rename = "if", skip_serializing_if = "Option::is_none")]
    pub if_: Option<String>,
    /// RuntimePool that runs the job in cluster mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Time limit of one attempt, such as `2m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// How many times a failed attempt is tried again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Axes whose cartesian product gives one Run per cell, plus `exclude`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::any_map")]
    pub matrix: Option<serde_json::Map<String, serde_json::Value>>,
    /// Environment variables for every step of the job.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub env: IndexMap<String, String>,
    /// Shell for the job's `run:` steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// The steps, run in order in one workspace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepSpec>,
    /// Files the job publishes: artifact name -> path or glob.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub artifacts: IndexMap<String, String>,
    /// Artifacts of earlier jobs, as `job.artifact`, materialised at their path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<String>,
    /// `false` for jobs with side effects: never served from the step cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<bool>,
    /// Globs narrowing the part of the source tree the job depends on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source: Vec<String>,
}

/// One step of a job.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StepSpec {
    /// Human name shown in logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The script (a minijinja template).
    pub run: String,
    /// Shell overriding the job's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// Environment variables for this step only.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub env: IndexMap<String, String>,
    /// Time limit of this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// The catalog entry this step was expanded from (`cargo-test@1.0.0`);
    /// set by the planner for `uses:` steps, kept as provenance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Values of the entry's parameters (`with.<name>` in `run`), defaults
    /// filled in; a value may be a template over the workflow's context.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    #[schemars(schema_with = "crate::schema::any_map")]
    pub with: IndexMap<String, serde_json::Value>,
}
