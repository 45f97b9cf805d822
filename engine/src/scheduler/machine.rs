//! The state machine itself.
//!
//! ```text
//!            needs finished                 Decided{run:true}
//!  Waiting ────────────────> Deciding ────────────────────────> Queued ──fill──> Starting
//!     │  default success()       │ Decided{run:false}            ▲                │ Started
//!     │  false: Skipped          ▼                               │ RetryDue       ▼
//!     └──────────────────────> Finished <──── Finished ────── Running ──failed──> RetryWait
//! ```
//!
//! Every transition into `Finished` goes through [`Scheduler::set_state`],
//! which also keeps the counters (in flight, finished) and the queue; after
//! each input [`Scheduler::settle`] propagates finished nodes to their
//! dependents, starts queued nodes while capacity allows and emits `Done`.
//! Inputs are validated before anything changes, so an error leaves the
//! scheduler exactly as it was.

use std::collections::BTreeSet;

use kruntimes_crds::JobResult;

use super::types::{
    Action, Input, NodeResult, NodeSpec, NodeState, Outcome, Policy, SchedulerError, WorkflowResult,
};

/// The scheduler core: feed it [`Input`]s, carry out the [`Action`]s it
/// returns. Pure and synchronous; time only exists as the delays it asks the
/// driver to wait.
#[derive(Clone, Debug)]
pub struct Scheduler {
    nodes: Vec<NodeSpec>,
    policy: Policy,
    /// Reverse edges: for each node, the nodes that need it (ascending).
    dependents: Vec<Vec<usize>>,
    states: Vec<NodeState>,
    /// Needs of each node that have not finished yet.
    unfinished_needs: Vec<usize>,
    /// Nodes in `Queued`, started lowest index first.
    queued: BTreeSet<usize>,
    /// Nodes in `Starting` or `Running`.
    in_flight: usize,
    finished: usize,
    /// The user cancelled the run.
    cancelled: bool,
    /// A node failed for good under fail-fast.
    fail_fast: bool,
    /// `start` was called; nothing settles before that.
    started: bool,
    done: Option<WorkflowResult>,
    // Scratch space of one `start`/`handle` call.
    actions: Vec<Action>,
    newly_finished: Vec<usize>,
    ready: BTreeSet<usize>,
}

impl Scheduler {
    /// A scheduler over `nodes` with every node waiting.
    ///
    /// # Panics
    ///
    /// If the graph is invalid (a need out of range, a cycle) or
    /// `max_parallel` is `Some(0)`: the planner never produces those. Use
    /// [`Scheduler::try_new`] for graphs from elsewhere.
    pub fn new(nodes: Vec<NodeSpec>, policy: Policy) -> Self {
        match Self::try_new(nodes, policy) {
            Ok(s) => s,
            Err(e) => panic!("failed to {e}"),
        }
    }

    /// Like [`Scheduler::new`], returning an error for an invalid graph.
    pub fn try_new(nodes: Vec<NodeSpec>, policy: Policy) -> Result<Self, SchedulerError> {
        let len = nodes.len();
        Self::build(nodes, policy, vec![NodeState::Waiting; len], false)
    }

    /// Rebuilds a scheduler from recorded [`Scheduler::snapshot`] states, for
    /// a restarted controller. `cancelled` says whether [`Input::Cancel`] had
    /// been received (it is not a node state); fail-fast is derived from the
    /// states. Call [`Scheduler::start`] next: it asks again for everything
    /// that was outstanding (`Decide` for deciding nodes, `Start` for starting
    /// ones, `ScheduleRetry` for retry waits, `Cancel` for cancelling ones),
    /// so the driver must treat a repeated `Start`/`Cancel` as idempotent.
    pub fn restore(
        nodes: Vec<NodeSpec>,
        policy: Policy,
        states: Vec<NodeState>,
        cancelled: bool,
    ) -> Result<Self, SchedulerError> {
        if states.len() != nodes.len() {
            return Err(SchedulerError::StateCount {
                got: states.len(),
                expected: nodes.len(),
            });
        }
        Self::build(nodes, policy, states, cancelled)
    }

    fn build(
        mut nodes: Vec<NodeSpec>,
        policy: Policy,
        states: Vec<NodeState>,
        cancelled: bool,
    ) -> Result<Self, SchedulerError> {
        if policy.max_parallel == Some(0) {
            return Err(SchedulerError::ZeroParallelism);
        }
        let len = nodes.len();
        for (node, spec) in nodes.iter_mut().enumerate() {
            let mut seen = BTreeSet::new();
            spec.needs.retain(|&need| seen.insert(need));
            if let Some(&need) = spec.needs.iter().find(|&&need| need >= len) {
                return Err(SchedulerError::UnknownNeed { node, need });
            }
        }
        if let Some(node) = find_cycle(&nodes) {
            return Err(SchedulerError::Cycle { node });
        }
        let mut dependents = vec![Vec::new(); len];
        for (node, spec) in nodes.iter().enumerate() {
            for &need in &spec.needs {
                dependents[need].push(node);
            }
        }
        let mut s = Self {
            nodes,
            policy,
            dependents,
            states: vec![NodeState::Waiting; len],
            unfinished_needs: vec![0; len],
            queued: BTreeSet::new(),
            in_flight: 0,
            finished: 0,
            cancelled,
            fail_fast: false,
            started: false,
            done: None,
            actions: Vec::new(),
            newly_finished: Vec::new(),
            ready: BTreeSet::new(),
        };
        for (node, state) in states.into_iter().enumerate() {
            s.check_restored(node, &state)?;
            s.set_state(node, state);
        }
        s.newly_finished.clear();
        for node in 0..len {
            s.unfinished_needs[node] = s.nodes[node]
                .needs
                .iter()
                .filter(|&&need| !matches!(s.states[need], NodeState::Finished(_)))
                .count();
            let waiting = matches!(s.states[node], NodeState::Waiting);
            if !waiting && s.unfinished_needs[node] > 0 {
                return Err(SchedulerError::InvalidState {
                    node,
                    reason: "it left waiting before all its needs finished",
                });
            }
        }
        s.fail_fast = !s.policy.keep_going
            && s.states
                .iter()
                .any(|st| matches!(st, NodeState::Finished(r) if r.result == JobResult::Failure));
        Ok(s)
    }

    fn check_restored(&self, node: usize, state: &NodeState) -> Result<(), SchedulerError> {
        let max = self.nodes[node].retries.saturating_add(1);
        let invalid = |reason| Err(SchedulerError::InvalidState { node, reason });
        match *state {
            NodeState::Waiting | NodeState::Deciding { .. } => Ok(()),
            NodeState::Queued { attempt }
            | NodeState::Starting { attempt, .. }
            | NodeState::Running { attempt, .. } => {
                if attempt == 0 || attempt > max {
                    invalid("its attempt is outside 1..=retries+1")
                } else {
                    Ok(())
                }
            }
            NodeState::RetryWait { attempt } => {
                if attempt < 2 || attempt > max {
                    invalid("its retry attempt is outside 2..=retries+1")
                } else {
                    Ok(())
                }
            }
            NodeState::Finished(r) => {
                if r.attempts > max {
                    invalid("it made more attempts than its retries allow")
                } else if r.cached && r.result != JobResult::Success {
                    invalid("only a success can be cached")
                } else if r.attempts == 0
                    && matches!(r.result, JobResult::Success | JobResult::Failure)
                {
                    invalid("it has a result of an attempt but no attempts")
                } else if r.attempts > 0 && r.result == JobResult::Skipped {
                    invalid("it was skipped after it ran")
                } else {
                    Ok(())
                }
            }
        }
    }

    /// The initial actions. On a restored scheduler, also everything that was
    /// outstanding. Call it once, before feeding inputs; later calls return
    /// nothing.
    pub fn start(&mut self) -> Vec<Action> {
        if self.started {
            return Vec::new();
        }
        self.started = true;
        for node in 0..self.states.len() {
            match self.states[node] {
                // The old answer died with the old driver: ask again, with
                // today's context.
                NodeState::Deciding { .. } => self.ask(node),
                NodeState::Starting {
                    attempt,
                    cancelling,
                } => {
                    self.actions.push(Action::Start { node, attempt });
                    if cancelling {
                        self.actions.push(Action::Cancel { node });
                    }
                }
                NodeState::Running {
                    cancelling: true, ..
                } => self.actions.push(Action::Cancel { node }),
                NodeState::RetryWait { attempt } => self.actions.push(Action::ScheduleRetry {
                    node,
                    attempt,
                    delay: self.policy.retry_delay(node, attempt),
                }),
                _ => {}
            }
        }
        for node in 0..self.states.len() {
            if matches!(self.states[node], NodeState::Waiting) && self.unfinished_needs[node] == 0 {
                self.ready.insert(node);
            }
        }
        self.settle();
        std::mem::take(&mut self.actions)
    }

    /// Applies one input and returns the actions it leads to. An input that
    /// makes no sense in the current state is an error and changes nothing.
    pub fn handle(&mut self, input: Input) -> Result<Vec<Action>, SchedulerError> {
        match input {
            Input::Decided { node, run } => {
                let NodeState::Deciding { cancelled: asked } = *self.state_for(node)? else {
                    return Err(self.unexpected(node, "decided"));
                };
                self.on_decided(node, run, asked);
            }
            Input::Started { node, attempt } => match *self.state_for(node)? {
                NodeState::Starting {
                    attempt: current,
                    cancelling,
                } => {
                    self.check_attempt(node, "started", attempt, current)?;
                    self.set_state(
                        node,
                        NodeState::Running {
                            attempt,
                            cancelling,
                        },
                    );
                }
                NodeState::Running {
                    attempt: current, ..
                } if current != attempt => {
                    return Err(SchedulerError::StaleAttempt {
                        node,
                        input: "started",
                        got: attempt,
                        current,
                    });
                }
                _ => return Err(self.unexpected(node, "started")),
            },
            Input::Finished {
                node,
                attempt,
                outcome,
            } => match *self.state_for(node)? {
                NodeState::Starting {
                    attempt: current, ..
                }
                | NodeState::Running {
                    attempt: current, ..
                } => {
                    self.check_attempt(node, "finished", attempt, current)?;
                    self.on_finished(node, attempt, outcome);
                }
                _ => return Err(self.unexpected(node, "finished")),
            },
            Input::RetryDue { node, attempt } => match *self.state_for(node)? {
                NodeState::RetryWait { attempt: current } => {
                    self.check_attempt(node, "retry due", attempt, current)?;
                    self.set_state(node, NodeState::Queued { attempt });
                }
                // A timer that outlived its retry: fail-fast or a cancel
                // dropped it, but the driver was still told to feed it back.
                NodeState::Finished(r)
                    if matches!(r.result, JobResult::Failure | JobResult::Cancelled)
                        && r.attempts >= 1
                        && r.attempts.checked_add(1) == Some(attempt)
                        && attempt <= self.nodes[node].retries.saturating_add(1) =>
                {
                    return Ok(Vec::new());
                }
                _ => return Err(self.unexpected(node, "retry due")),
            },
            Input::Cancel => {
                if self.cancelled || self.done.is_some() {
                    return Ok(Vec::new());
                }
                self.cancelled = true;
                self.stop();
            }
        }
        self.settle();
        Ok(std::mem::take(&mut self.actions))
    }

    /// Final result of `node`, once it finished.
    pub fn result(&self, node: usize) -> Option<NodeResult> {
        match self.states.get(node) {
            Some(NodeState::Finished(r)) => Some(*r),
            _ => None,
        }
    }

    /// Results of the finished needs of `node`, in its `needs` order: the
    /// `needs.<job>.result` part of the driver's `if:` context.
    pub fn needs_results(&self, node: usize) -> Vec<(usize, JobResult)> {
        let Some(spec) = self.nodes.get(node) else {
            return Vec::new();
        };
        spec.needs
            .iter()
            .filter_map(|&need| self.result(need).map(|r| (need, r.result)))
            .collect()
    }

    /// `Done` has been emitted.
    pub fn is_done(&self) -> bool {
        self.done.is_some()
    }

    /// The result `Done` carried, once emitted.
    pub fn workflow_result(&self) -> Option<WorkflowResult> {
        self.done
    }

    /// The user cancelled the run.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled
    }

    /// State of one node.
    pub fn state(&self, node: usize) -> Option<&NodeState> {
        self.states.get(node)
    }

    /// State of every node, for status and [`Scheduler::restore`].
    pub fn snapshot(&self) -> Vec<NodeState> {
        self.states.clone()
    }

    fn stopping(&self) -> bool {
        self.cancelled || self.fail_fast
    }

    fn state_for(&self, node: usize) -> Result<&NodeState, SchedulerError> {
        self.states.get(node).ok_or(SchedulerError::UnknownNode {
            node,
            len: self.states.len(),
        })
    }

    fn unexpected(&self, node: usize, input: &'static str) -> SchedulerError {
        SchedulerError::UnexpectedInput {
            node,
            input,
            state: self.states[node].name(),
        }
    }

    fn check_attempt(
        &self,
        node: usize,
        input: &'static str,
        got: u32,
        current: u32,
    ) -> Result<(), SchedulerError> {
        if got == current {
            Ok(())
        } else {
            Err(SchedulerError::StaleAttempt {
                node,
                input,
                got,
                current,
            })
        }
    }

    /// Every change of a node's kind of state goes through here, so the
    /// counters and the queue stay true. (`stop` flips `cancelling` in place.)
    fn set_state(&mut self, node: usize, state: NodeState) {
        match self.states[node] {
            NodeState::Queued { .. } => {
                self.queued.remove(&node);
            }
            NodeState::Starting { .. } | NodeState::Running { .. } => self.in_flight -= 1,
            NodeState::Finished(_) => self.finished -= 1,
            _ => {}
        }
        match state {
            NodeState::Queued { .. } => {
                self.queued.insert(node);
            }
            NodeState::Starting { .. } | NodeState::Running { .. } => self.in_flight += 1,
            NodeState::Finished(_) => {
                self.finished += 1;
                self.newly_finished.push(node);
            }
            _ => {}
        }
        self.states[node] = state;
    }

    fn finish(&mut self, node: usize, result: JobResult, cached: bool, attempts: u32) {
        self.set_state(
            node,
            NodeState::Finished(NodeResult {
                result,
                cached,
                attempts,
            }),
        );
        if result == JobResult::Failure && !self.policy.keep_going && !self.fail_fast {
            self.fail_fast = true;
            // After a user cancel everything that may not run is already
            // stopped; what runs now are cleanups, which a failing cleanup
            // must not cancel.
            if !self.cancelled {
                self.stop();
            }
        }
    }

    fn ask(&mut self, node: usize) {
        let cancelled = self.cancelled;
        self.set_state(node, NodeState::Deciding { cancelled });
        self.actions.push(Action::Decide { node, cancelled });
    }

    /// A node whose needs all finished.
    fn on_ready(&mut self, node: usize) {
        if self.nodes[node].has_condition {
            self.ask(node);
            return;
        }
        // The default `success()`, short-circuited: only ask when it can run.
        let mut blocked = false;
        let mut cancelled_need = false;
        for &need in &self.nodes[node].needs {
            match self.result(need).map(|r| r.result) {
                Some(JobResult::Success) => {}
                Some(JobResult::Cancelled) => cancelled_need = true,
                _ => blocked = true,
            }
        }
        if blocked {
            self.finish(node, JobResult::Skipped, false, 0);
        } else if cancelled_need || self.stopping() {
            // Nothing but a cancellation (or fail-fast) keeps it from running.
            self.finish(node, JobResult::Cancelled, false, 0);
        } else {
            self.ask(node);
        }
    }

    fn on_decided(&mut self, node: usize, run: bool, asked_cancelled: bool) {
        let has_condition = self.nodes[node].has_condition;
        if has_condition && self.cancelled && !asked_cancelled {
            // Asked before the cancel: `cancelled()` may now answer otherwise.
            self.ask(node);
            return;
        }
        if !run {
            self.finish(node, JobResult::Skipped, false, 0);
        } else if !has_condition && self.stopping() {
            self.finish(node, JobResult::Cancelled, false, 0);
        } else {
            self.set_state(node, NodeState::Queued { attempt: 1 });
        }
    }

    fn on_finished(&mut self, node: usize, attempt: u32, outcome: Outcome) {
        match outcome {
            Outcome::Succeeded => self.finish(node, JobResult::Success, false, attempt),
            Outcome::Cached => self.finish(node, JobResult::Success, true, attempt),
            Outcome::Cancelled => self.finish(node, JobResult::Cancelled, false, attempt),
            Outcome::Failed | Outcome::TimedOut => {
                let next = attempt.checked_add(1);
                match next {
                    Some(next) if !self.stopping() && attempt <= self.nodes[node].retries => {
                        self.set_state(node, NodeState::RetryWait { attempt: next });
                        self.actions.push(Action::ScheduleRetry {
                            node,
                            attempt: next,
                            delay: self.policy.retry_delay(node, next),
                        });
                    }
                    _ => self.finish(node, JobResult::Failure, false, attempt),
                }
            }
        }
    }

    /// Entered once per reason (user cancel, fail-fast): cancel what runs,
    /// drop pending retries, and settle queued nodes that may no longer run.
    fn stop(&mut self) {
        let by_cancel = self.cancelled;
        // A dropped retry ends as what its last attempt was under fail-fast,
        // and as cancelled when the user cancelled.
        let dropped = if by_cancel {
            JobResult::Cancelled
        } else {
            JobResult::Failure
        };
        for node in 0..self.states.len() {
            match self.states[node] {
                NodeState::Queued { attempt } if attempt > 1 => {
                    self.finish(node, dropped, false, attempt - 1);
                }
                NodeState::Queued { .. } if !self.nodes[node].has_condition => {
                    self.finish(node, JobResult::Cancelled, false, 0);
                }
                // Decided without knowing about the cancel: ask again.
                NodeState::Queued { .. } if by_cancel => self.ask(node),
                NodeState::RetryWait { attempt } => {
                    self.finish(node, dropped, false, attempt - 1);
                }
                NodeState::Starting {
                    attempt,
                    cancelling: false,
                } => {
                    self.states[node] = NodeState::Starting {
                        attempt,
                        cancelling: true,
                    };
                    self.actions.push(Action::Cancel { node });
                }
                NodeState::Running {
                    attempt,
                    cancelling: false,
                } => {
                    self.states[node] = NodeState::Running {
                        attempt,
                        cancelling: true,
                    };
                    self.actions.push(Action::Cancel { node });
                }
                _ => {}
            }
        }
    }

    /// Propagates finished nodes, fills free capacity, emits `Done`.
    fn settle(&mut self) {
        if !self.started {
            return;
        }
        loop {
            while let Some(f) = self.newly_finished.pop() {
                for &d in &self.dependents[f] {
                    self.unfinished_needs[d] -= 1;
                    if self.unfinished_needs[d] == 0 {
                        self.ready.insert(d);
                    }
                }
            }
            match self.ready.pop_first() {
                Some(node) => self.on_ready(node),
                None => break,
            }
        }
        while self
            .policy
            .max_parallel
            .is_none_or(|max| self.in_flight < max)
        {
            let Some(&node) = self.queued.first() else {
                break;
            };
            let NodeState::Queued { attempt } = self.states[node] else {
                // The queue only holds queued nodes (see `set_state`).
                self.queued.remove(&node);
                continue;
            };
            self.set_state(
                node,
                NodeState::Starting {
                    attempt,
                    cancelling: false,
                },
            );
            self.actions.push(Action::Start { node, attempt });
        }
        if self.done.is_none() && self.finished == self.states.len() {
            let result = if self.cancelled {
                WorkflowResult::Cancelled
            } else if self.states.iter().any(|s| {
                matches!(s, NodeState::Finished(r)
                    if matches!(r.result, JobResult::Failure | JobResult::Cancelled))
            }) {
                WorkflowResult::Failed
            } else {
                WorkflowResult::Succeeded
            };
            self.done = Some(result);
            self.actions.push(Action::Done { result });
        }
    }
}

/// A node on a cycle, if the needs have one (Kahn's algorithm, then a walk
/// along remaining needs until a node repeats).
fn find_cycle(nodes: &[NodeSpec]) -> Option<usize> {
    let len = nodes.len();
    let mut remaining: Vec<usize> = nodes.iter().map(|n| n.needs.len()).collect();
    let mut dependents = vec![Vec::new(); len];
    for (node, spec) in nodes.iter().enumerate() {
        for &need in &spec.needs {
            dependents[need].push(node);
        }
    }
    let mut stack: Vec<usize> = (0..len).filter(|&n| remaining[n] == 0).collect();
    let mut done = vec![false; len];
    while let Some(n) = stack.pop() {
        done[n] = true;
        for &d in &dependents[n] {
            remaining[d] -= 1;
            if remaining[d] == 0 {
                stack.push(d);
            }
        }
    }
    let mut node = (0..len).find(|&n| !done[n])?;
    // Every node left has a need that is left too, so this walk cycles.
    let mut seen = vec![false; len];
    while !seen[node] {
        seen[node] = true;
        match nodes[node].needs.iter().find(|&&need| !done[need]) {
            Some(&need) => node = need,
            None => return Some(node),
        }
    }
    Some(node)
}
