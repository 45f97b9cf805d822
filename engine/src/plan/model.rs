//! The planned workflow: jobs, their expanded nodes (one per matrix cell) in
//! topological order, and what `krt graph` and the scheduler need.

use std::time::Duration;

use indexmap::IndexMap;

use super::ast::WorkflowAst;
use super::diag::{Diagnostic, Source};

/// Index of a job in [`Plan::jobs`] (file order).
pub type JobId = usize;
/// Index of a node in [`Plan::nodes`] (topological order).
pub type NodeId = usize;

/// Pool a job runs in when neither it nor `defaults` names one.
pub const DEFAULT_POOL: &str = "default";
/// Shell for `run:` when none is set.
pub const DEFAULT_SHELL: &str = "bash";
/// Time limit of one attempt when none is set.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);
/// Most retries a job may ask for.
pub const MAX_RETRIES: u32 = 10;
/// Most cells one job's matrix may have.
pub const MAX_MATRIX_CELLS: usize = 256;
/// Longest job name (node names add matrix values and must fit in 63).
pub const MAX_JOB_NAME: usize = 40;

/// A validated, expanded workflow.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The file it came from.
    pub source: Source,
    /// Workflow name (Kubernetes-safe).
    pub name: String,
    /// The file as read, with spans; templates are rendered from it.
    pub ast: WorkflowAst,
    /// Jobs in file order.
    pub jobs: Vec<Job>,
    /// Nodes in topological order: by level, then file order, then cell.
    pub nodes: Vec<Node>,
    /// Number of levels (the longest chain of needs, counted in jobs).
    pub critical_path: usize,
    /// Warnings found while planning.
    pub warnings: Vec<Diagnostic>,
}

/// One job of the plan.
#[derive(Debug, Clone)]
pub struct Job {
    /// Key in the file.
    pub key: String,
    /// `name:` or the key.
    pub display: String,
    /// Direct needs.
    pub needs: Vec<JobId>,
    /// Its nodes, in cell order.
    pub nodes: Vec<NodeId>,
    /// Effective pool.
    pub pool: String,
    /// Effective time limit of one attempt.
    pub timeout: Duration,
    /// Effective retries.
    pub retries: u32,
    /// False when `cache: false`.
    pub cache: bool,
}

/// One Run-to-be: a job, or one cell of a job's matrix.
#[derive(Debug, Clone)]
pub struct Node {
    /// The job.
    pub job: JobId,
    /// Kubernetes-safe, deterministic name (`test-2`, `build-linux-amd64`).
    pub name: String,
    /// Human name (`test (shard=2)`).
    pub display: String,
    /// Matrix values of this cell, in axis order; empty without a matrix.
    pub cell: IndexMap<String, serde_json::Value>,
    /// Nodes that must finish first (every cell of every needed job).
    pub needs: Vec<NodeId>,
    /// 0 for nodes without needs, else 1 + the highest level among needs.
    pub level: usize,
}

impl Plan {
    /// Looks a job up by key.
    pub fn job(&self, key: &str) -> Option<(JobId, &Job)> {
        self.jobs.iter().enumerate().find(|(_, j)| j.key == key)
    }

    /// Every job `job` needs, directly or through other needs.
    pub fn ancestors(&self, job: JobId) -> std::collections::BTreeSet<JobId> {
        let mut seen = std::collections::BTreeSet::new();
        let mut stack = self.jobs[job].needs.clone();
        while let Some(j) = stack.pop() {
            if seen.insert(j) {
                stack.extend(self.jobs[j].needs.iter().copied());
            }
        }
        seen
    }
}
