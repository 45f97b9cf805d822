//! `Workflow`: one execution of a workflow file on a cluster (like Argo's
//! Workflow). The controller expands it into `Run`s as jobs become ready.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::file::WorkflowFileSpec;

/// Desired state of a Workflow: the workflow-file model plus this
/// execution's parameter values and source snapshot.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kruntimes.io",
    version = "v1alpha1",
    kind = "Workflow",
    namespaced,
    status = "WorkflowStatus",
    shortname = "wf",
    category = "kruntimes",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Progress","type":"string","jsonPath":".status.progress"}"#,
    printcolumn = r#"{"name":"Started","type":"date","jsonPath":".status.startTime"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowSpec {
    /// The workflow file (params, defaults, env, jobs).
    #[serde(flatten)]
    pub workflow: WorkflowFileSpec,
    /// Parameter values for this execution; unset ones take their default.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "crate::schema::any_map")]
    pub arguments: BTreeMap<String, serde_json::Value>,
    /// Tree digest (`sha256:<hex>`) of the source snapshot in the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Set to true to cancel: running Runs are cancelled, the rest skipped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel: bool,
    /// Delete the finished Workflow (and its Runs) after this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds_after_finished: Option<i64>,
}

/// Phase of a whole Workflow.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum WorkflowPhase {
    /// Accepted, nothing started yet.
    #[default]
    Pending,
    /// At least one job started and the workflow is not finished.
    Running,
    /// Every job succeeded, was cached, or was skipped by its `if:`.
    Succeeded,
    /// A job failed (or the workflow is invalid).
    Failed,
    /// Cancelled by `spec.cancel` or `krt cancel`.
    Cancelled,
}

/// Result of a job, as `needs.<job>.result` sees it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobResult {
    /// Ran and succeeded, or was served from the step cache.
    Success,
    /// Failed, or timed out, after its last attempt.
    Failure,
    /// Cancelled while running or before it started.
    Cancelled,
    /// Never ran: a need failed or its `if:` was false.
    Skipped,
}

/// Observed state of a Workflow.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowStatus {
    /// Overall phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<WorkflowPhase>,
    /// Finished over total job nodes (matrix cells count one each), e.g. `3/7`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// Per job node (keyed by node name, e.g. `test-shard-2`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub jobs: BTreeMap<String, JobStatus>,
    /// Standard conditions (`Ready`, `Valid`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// When the first job started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the workflow finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_time: Option<Time>,
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Human summary of the outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// State of one job node of a Workflow.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobStatus {
    /// Job key in the workflow file (several nodes share it with a matrix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Display name, e.g. `test (shard=2)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Where the job is: `Waiting`, the phase of its Run (`Pending`,
    /// `Scheduled`, `Running`, `Succeeded`, ...), `Cached` or `Skipped`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Final result; absent while pending or running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<JobResult>,
    /// True when the result came from the step cache.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cached: bool,
    /// Attempts made so far.
    #[serde(default)]
    pub attempts: u32,
    /// Names of the Run objects created for this job.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub run_names: Vec<String>,
    /// Small values the job wrote to `$KRT_OUTPUT`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, String>,
    /// Artifact name -> tree digest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub artifacts: BTreeMap<String, String>,
    /// Digest of the whole log in the store (`krt logs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_digest: Option<String>,
    /// Digest of the recorded action (the exact rendered job and its input
    /// digests) in the store; `krt replay` runs it again locally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Step-cache key of the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_key: Option<String>,
    /// When the first attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the job finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_time: Option<Time>,
    /// Why the job ended as it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
