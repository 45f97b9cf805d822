//! The plain data the scheduler takes from and gives back to its driver.
//!
//! Nothing here knows about the planner, processes, runtimes or Kubernetes:
//! a driver translates its own world into these values and back.

use std::time::Duration;

use kruntimes_crds::JobResult;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// One node of the planned DAG, as far as scheduling goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeSpec {
    /// Indices of the nodes that must finish first.
    pub needs: Vec<usize>,
    /// Extra attempts after a failed one.
    pub retries: u32,
    /// The job has an explicit `if:`; without one the scheduler applies the
    /// default `success()` itself and only asks the driver when it could run.
    pub has_condition: bool,
}

/// How the whole run behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// `false` is fail-fast: the first final failure stops new starts
    /// (except nodes with an explicit `if:`) and cancels running nodes.
    pub keep_going: bool,
    /// At most this many nodes started or running at once (`None`: no limit).
    pub max_parallel: Option<usize>,
    /// Delay before the first retry; doubled for each further retry.
    pub backoff_base: Duration,
    /// Cap of the doubled delay (jitter comes on top of it).
    pub backoff_max: Duration,
    /// Seed of the deterministic retry jitter.
    pub seed: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            keep_going: false,
            max_parallel: None,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            seed: 0,
        }
    }
}

/// How one attempt of a node ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    /// Ran and succeeded.
    Succeeded,
    /// Served from the step cache without running.
    Cached,
    /// Ran and failed.
    Failed,
    /// Exceeded its time limit.
    TimedOut,
    /// Stopped by a cancel.
    Cancelled,
}

/// What the driver tells the scheduler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// Answer to [`Action::Decide`]: the node's `if:` (or the default
    /// `success()`) evaluated to `run`.
    Decided { node: usize, run: bool },
    /// The driver really started the attempt asked for by [`Action::Start`].
    Started { node: usize, attempt: u32 },
    /// The attempt ended. May come without a `Started` first (for example
    /// when the runtime refused the run, or a cache hit answered at once).
    Finished {
        node: usize,
        attempt: u32,
        outcome: Outcome,
    },
    /// The timer of an [`Action::ScheduleRetry`] fired.
    RetryDue { node: usize, attempt: u32 },
    /// The user cancelled the run (Ctrl-C, `spec.cancel`). Idempotent.
    Cancel,
}

/// What the scheduler asks the driver to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Every need finished: evaluate the node's condition in a context where
    /// `cancelled()` is `cancelled`, and answer with [`Input::Decided`].
    Decide { node: usize, cancelled: bool },
    /// Start this attempt (attempts count from 1); answer with
    /// [`Input::Started`] (optional) and then [`Input::Finished`].
    Start { node: usize, attempt: u32 },
    /// Feed [`Input::RetryDue`] with the same node and attempt after `delay`.
    ScheduleRetry {
        node: usize,
        attempt: u32,
        delay: Duration,
    },
    /// Stop this started node; its [`Input::Finished`] still comes later.
    Cancel { node: usize },
    /// Every node finished. Emitted exactly once, as the last action.
    Done { result: WorkflowResult },
}

/// How the whole run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkflowResult {
    /// No node failed or was cancelled (nodes skipped by an `if:` are fine).
    Succeeded,
    /// A node ended as a failure, or was cancelled without a user cancel.
    Failed,
    /// The user cancelled the run.
    Cancelled,
}

/// Final result of one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeResult {
    /// As `needs.<job>.result` sees it.
    pub result: JobResult,
    /// The success came from the step cache.
    #[serde(default)]
    pub cached: bool,
    /// Attempts started (0 when it never ran).
    pub attempts: u32,
}

/// Where one node is. Together with the workflow-level cancel flag this is
/// everything the scheduler knows, so a controller can record it in status
/// and [`Scheduler::restore`](super::Scheduler::restore) from it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "camelCase")]
pub enum NodeState {
    /// Some need has not finished.
    Waiting,
    /// A [`Action::Decide`] is out; `cancelled` is what it was asked with.
    Deciding { cancelled: bool },
    /// Will start `attempt` when capacity allows.
    Queued { attempt: u32 },
    /// [`Action::Start`] is out, [`Input::Started`] has not come yet.
    /// Counts against `max_parallel` like `Running`.
    Starting {
        attempt: u32,
        #[serde(default)]
        cancelling: bool,
    },
    /// Running `attempt`; `cancelling` once an [`Action::Cancel`] went out.
    Running {
        attempt: u32,
        #[serde(default)]
        cancelling: bool,
    },
    /// Waiting for the backoff timer before starting `attempt`.
    RetryWait { attempt: u32 },
    /// Done for good.
    Finished(NodeResult),
}

impl NodeState {
    /// Lowercase name, for error messages.
    pub fn name(&self) -> &'static str {
        match self {
            NodeState::Waiting => "waiting",
            NodeState::Deciding { .. } => "deciding",
            NodeState::Queued { .. } => "queued",
            NodeState::Starting { .. } => "starting",
            NodeState::Running { .. } => "running",
            NodeState::RetryWait { .. } => "waiting for a retry",
            NodeState::Finished(_) => "finished",
        }
    }
}

/// Inputs or graphs that make no sense. Fits "failed to {error}".
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SchedulerError {
    /// An input named a node index out of range.
    #[error("find node {node}: the workflow has {len} nodes")]
    UnknownNode { node: usize, len: usize },
    /// An input does not fit the node's state (e.g. `Started` twice).
    #[error("apply {input} to node {node}: it is {state}")]
    UnexpectedInput {
        node: usize,
        input: &'static str,
        state: &'static str,
    },
    /// An input named another attempt than the one in flight.
    #[error("apply {input} to node {node}: attempt {got} is not its current attempt {current}")]
    StaleAttempt {
        node: usize,
        input: &'static str,
        got: u32,
        current: u32,
    },
    /// A need index is out of range.
    #[error("plan node {node}: its need {need} is not a node")]
    UnknownNeed { node: usize, need: usize },
    /// The needs form a cycle, so the run could never finish.
    #[error("plan node {node}: it is on a dependency cycle")]
    Cycle { node: usize },
    /// `max_parallel: Some(0)` would never start anything.
    #[error("apply the policy: max_parallel must be at least 1")]
    ZeroParallelism,
    /// `restore` got a different number of states than nodes.
    #[error("restore the scheduler: got {got} states for {expected} nodes")]
    StateCount { got: usize, expected: usize },
    /// A recorded state contradicts the graph or the retry limit.
    #[error("restore node {node}: {reason}")]
    InvalidState { node: usize, reason: &'static str },
}
