//! The scheduler core: a pure, synchronous state machine over the planned DAG.
//!
//! ```text
//!            Input (Decided, Started, Finished, RetryDue, Cancel)
//!  driver ───────────────────────────────────────────────────────> Scheduler
//!  (embedded or controller)                                        (no I/O)
//!         <───────────────────────────────────────────────────────
//!            Action (Decide, Start, ScheduleRetry, Cancel, Done)
//! ```
//!
//! The embedded driver and the Kubernetes controller drive the same code, so
//! it knows nothing of processes, runtimes, clocks or the planner's types:
//! nodes are indices with needs, a retry count and whether they have an
//! explicit `if:`. The driver evaluates `if:` expressions (the scheduler
//! short-circuits the default `success()`), waits the retry delays and
//! carries out starts and cancels; it feeds back one `Decided` per `Decide`,
//! one `Finished` per `Start` and one `RetryDue` per `ScheduleRetry`, and the
//! run always ends with exactly one `Done`.

mod backoff;
mod machine;
mod types;

#[cfg(test)]
mod tests;

pub use machine::Scheduler;
pub use types::{
    Action, Input, NodeResult, NodeSpec, NodeState, Outcome, Policy, SchedulerError, WorkflowResult,
};
