//! Cluster mode on the engine side: the Workflow controller (which expands
//! `Workflow` resources into `Run`s with the same planner and scheduler core
//! as `krt run`) and the client half used by `krt submit`, `krt get`,
//! `krt logs`, `krt cancel`, `krt wait` and `krt replay` against a cluster.
//!
//! ```text
//!  krt submit ──snapshot──> store (only missing blobs)
//!      └──create──> Workflow ──reconcile──> scheduler core (replayed from
//!                                   │        the Workflow's Runs and status)
//!                                   ├─ cache hit: recorded in status, no Run
//!                                   └─ ready job: Run <wf>-<node> ──> dispatcher
//! ```

pub mod client;
pub mod workflow;

/// Label on every Run a Workflow created: the Workflow's name.
pub const WORKFLOW_LABEL: &str = "kruntimes.io/workflow";
/// Label on every Run a Workflow created: the job node's name.
pub const NODE_LABEL: &str = "kruntimes.io/node";
/// Annotation on a Run: digest of its recorded action in the store.
pub const ACTION_ANNOTATION: &str = "kruntimes.io/action";
/// Field manager (and Event reporter) of the Workflow controller.
pub const WORKFLOW_MANAGER: &str = "kruntimes-workflows";

/// Name of the Run of a job node: deterministic, so a restarted controller
/// finds the Run it already created instead of making another.
pub fn run_name(workflow: &str, node: &str) -> String {
    format!("{workflow}-{node}")
}
