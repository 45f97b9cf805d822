//! `RuntimePool`: a Deployment of warm runtime pods built from any image.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Desired state of a RuntimePool.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kruntimes.io",
    version = "v1alpha1",
    kind = "RuntimePool",
    namespaced,
    status = "RuntimePoolStatus",
    shortname = "rp",
    category = "kruntimes",
    printcolumn = r#"{"name":"Image","type":"string","jsonPath":".spec.image"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"Slots","type":"integer","jsonPath":".status.totalSlots"}"#,
    printcolumn = r#"{"name":"Busy","type":"integer","jsonPath":".status.busySlots"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RuntimePoolSpec {
    /// Image the steps run in; any image works, `krt` is copied in.
    pub image: String,
    /// Number of warm pods.
    #[serde(default = "default_replicas")]
    pub replicas: i32,
    /// Concurrent Runs per pod.
    #[serde(default = "default_slots")]
    pub slots: u32,
    /// Resources of the runtime container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Extra environment of the runtime container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Node labels the pods must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// ServiceAccount of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Image that provides the static `krt` binary (copied by an init container).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub krt_image: Option<String>,
    /// Port the runtime listens on inside the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
}

fn default_replicas() -> i32 {
    1
}

fn default_slots() -> u32 {
    4
}

/// Observed state of a RuntimePool.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuntimePoolStatus {
    /// Pods that passed their readiness probe.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Slots over all ready pods.
    #[serde(default)]
    pub total_slots: u32,
    /// Slots running a Run right now.
    #[serde(default)]
    pub busy_slots: u32,
    /// Standard conditions (`Ready` with a reason).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
