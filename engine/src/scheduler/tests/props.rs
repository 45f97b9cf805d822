//! Property tests: a simulated driver runs random DAGs through the scheduler
//! and checks its invariants after every batch of actions.
//!
//! The driver answers in a random order (any outstanding `Decided`,
//! `Started`, `Finished` or `RetryDue` may come next), draws a random outcome
//! for every attempt and a random answer for every decision, and may inject a
//! user cancel and a controller restart (snapshot, JSON, restore) at random
//! points.

use std::collections::BTreeSet;

use kruntimes_crds::JobResult;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use crate::scheduler::{
    Action, Input, NodeSpec, NodeState, Outcome, Policy, Scheduler, WorkflowResult,
};

#[derive(Clone, Debug)]
struct Case {
    nodes: Vec<NodeSpec>,
    keep_going: bool,
    max_parallel: Option<usize>,
    /// Seed of the driver's choices.
    seed: u64,
    /// Step at which the user cancels.
    cancel_at: Option<usize>,
    /// Step at which the controller restarts.
    restore_at: Option<usize>,
}

/// Random DAGs: node `i` may need any `j < i`.
fn case() -> impl Strategy<Value = Case> {
    (0usize..24)
        .prop_flat_map(|n| {
            let nodes: Vec<_> = (0..n)
                .map(|i| {
                    (
                        proptest::collection::btree_set(0..i.max(1), 0..=i.min(3)),
                        0u32..3,
                        proptest::bool::weighted(0.3),
                    )
                        .prop_map(move |(needs, retries, has_condition)| {
                            NodeSpec {
                                needs: needs.into_iter().filter(|&j| j < i).collect(),
                                retries,
                                has_condition,
                            }
                        })
                })
                .collect();
            (
                nodes,
                any::<bool>(),
                proptest::option::of(1usize..4),
                any::<u64>(),
                proptest::option::weighted(0.4, 0usize..80),
                proptest::option::weighted(0.4, 0usize..80),
            )
        })
        .prop_map(
            |(nodes, keep_going, max_parallel, seed, cancel_at, restore_at)| Case {
                nodes,
                keep_going,
                max_parallel,
                seed,
                cancel_at,
                restore_at,
            },
        )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    Decided(usize),
    Started(usize, u32),
    Finished(usize, u32),
    RetryDue(usize, u32),
}

struct Driver<'a> {
    case: &'a Case,
    policy: Policy,
    sched: Scheduler,
    rng: u64,
    pending: Vec<Pending>,
    /// Last attempt started, per node.
    last_attempt: Vec<u32>,
    launched: BTreeSet<(usize, u32)>,
    /// Nodes with a started attempt that has not finished.
    in_flight: BTreeSet<usize>,
    /// In-flight nodes the scheduler asked to cancel.
    cancel_asked: BTreeSet<usize>,
    cancel_sent: bool,
    /// Per node, the `cancelled` context of its last Decide, and of the
    /// last one answered.
    asked_cancelled: Vec<bool>,
    answered_cancelled: Vec<bool>,
    done: Option<WorkflowResult>,
    /// Applying the actions of `start` on a restored scheduler, which repeats
    /// what was outstanding.
    resuming: bool,
}

fn fail(msg: String) -> TestCaseError {
    TestCaseError::fail(msg)
}

impl<'a> Driver<'a> {
    fn new(case: &'a Case) -> Self {
        let policy = Policy {
            keep_going: case.keep_going,
            max_parallel: case.max_parallel,
            seed: case.seed,
            ..Policy::default()
        };
        Self {
            case,
            sched: Scheduler::new(case.nodes.clone(), policy.clone()),
            policy,
            rng: case.seed,
            pending: Vec::new(),
            last_attempt: vec![0; case.nodes.len()],
            launched: BTreeSet::new(),
            in_flight: BTreeSet::new(),
            cancel_asked: BTreeSet::new(),
            cancel_sent: false,
            asked_cancelled: vec![false; case.nodes.len()],
            answered_cancelled: vec![false; case.nodes.len()],
            done: None,
            resuming: false,
        }
    }

    /// splitmix64: the driver's own deterministic choices.
    fn next(&mut self, below: u64) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % below
    }

    fn handle(&mut self, input: Input) -> Result<(), TestCaseError> {
        let fail_fast_before = self.fail_fast();
        let running_before = self.in_flight.clone();
        let actions = self
            .sched
            .handle(input)
            .map_err(|e| fail(format!("{input:?} was refused: failed to {e}")))?;
        self.apply(&actions)?;
        // A cancel, or fail-fast without one, cancels everything that ran.
        if input == Input::Cancel || (!fail_fast_before && self.fail_fast() && !self.cancel_sent) {
            for node in running_before.intersection(&self.in_flight) {
                prop_assert!(
                    self.cancel_asked.contains(node),
                    "{node} kept running after the stop"
                );
            }
        }
        Ok(())
    }

    fn fail_fast(&self) -> bool {
        !self.case.keep_going
            && (0..self.case.nodes.len()).any(|n| self.result(n) == Some(JobResult::Failure))
    }

    fn result(&self, node: usize) -> Option<JobResult> {
        self.sched.result(node).map(|r| r.result)
    }

    /// The run may only start nodes with an `if:` (and no retries).
    fn stopping(&self) -> bool {
        self.cancel_sent || self.fail_fast()
    }

    fn check_needs(&self, node: usize, what: &str) -> Result<(), TestCaseError> {
        let spec = &self.case.nodes[node];
        for &need in &spec.needs {
            let Some(result) = self.result(need) else {
                return Err(fail(format!(
                    "{what} {node} before its need {need} finished"
                )));
            };
            if !spec.has_condition && result != JobResult::Success {
                return Err(fail(format!(
                    "{what} {node} without `if:` after need {need} ended {result:?}"
                )));
            }
        }
        Ok(())
    }

    fn apply(&mut self, actions: &[Action]) -> Result<(), TestCaseError> {
        for (i, &action) in actions.iter().enumerate() {
            prop_assert!(self.done.is_none(), "{action:?} after Done");
            match action {
                Action::Decide { node, cancelled } => {
                    prop_assert_eq!(cancelled, self.cancel_sent, "Decide {} context", node);
                    self.check_needs(node, "decided")?;
                    // A restored scheduler repeats a question asked before the stop.
                    if !self.case.nodes[node].has_condition && !self.resuming {
                        prop_assert!(
                            !self.stopping(),
                            "asked about {node} without `if:` while stopping"
                        );
                    }
                    self.asked_cancelled[node] = cancelled;
                    if self.pending.contains(&Pending::Decided(node)) {
                        prop_assert!(self.resuming, "Decide {node} twice");
                    } else {
                        self.pending.push(Pending::Decided(node));
                    }
                }
                Action::Start { node, attempt } => {
                    if self.resuming && self.launched.contains(&(node, attempt)) {
                        prop_assert!(self.in_flight.contains(&node));
                        continue;
                    }
                    prop_assert!(
                        self.launched.insert((node, attempt)),
                        "{node} attempt {attempt} started twice"
                    );
                    prop_assert_eq!(
                        attempt,
                        self.last_attempt[node] + 1,
                        "attempts of {} in order",
                        node
                    );
                    prop_assert!(
                        attempt <= self.case.nodes[node].retries + 1,
                        "too many attempts of {node}"
                    );
                    self.check_needs(node, "started")?;
                    if self.cancel_sent {
                        prop_assert!(
                            self.answered_cancelled[node],
                            "{node} started after the cancel on a decision made before it"
                        );
                    }
                    if self.stopping() {
                        prop_assert!(
                            self.case.nodes[node].has_condition && attempt == 1,
                            "started {node} attempt {attempt} while stopping"
                        );
                    }
                    self.last_attempt[node] = attempt;
                    prop_assert!(
                        self.in_flight.insert(node),
                        "{node} started while in flight"
                    );
                    if let Some(max) = self.case.max_parallel {
                        prop_assert!(self.in_flight.len() <= max, "more than {max} in flight");
                    }
                    // Sometimes the attempt ends before its start is confirmed.
                    let next = if self.next(5) == 0 {
                        Pending::Finished(node, attempt)
                    } else {
                        Pending::Started(node, attempt)
                    };
                    self.pending.push(next);
                }
                Action::ScheduleRetry { node, attempt, .. } => {
                    prop_assert!(!self.stopping(), "retry of {node} while stopping");
                    prop_assert_eq!(attempt, self.last_attempt[node] + 1);
                    prop_assert!(
                        attempt <= self.case.nodes[node].retries + 1,
                        "too many retries of {node}"
                    );
                    prop_assert!(!self.in_flight.contains(&node));
                    self.pending
                        .retain(|p| !matches!(p, Pending::RetryDue(n, _) if *n == node));
                    self.pending.push(Pending::RetryDue(node, attempt));
                }
                Action::Cancel { node } => {
                    prop_assert!(
                        self.in_flight.contains(&node),
                        "cancel of {node}, which is not in flight"
                    );
                    self.cancel_asked.insert(node);
                }
                Action::Done { result } => {
                    prop_assert_eq!(i + 1, actions.len(), "Done is the last action");
                    self.done = Some(result);
                }
            }
        }
        Ok(())
    }

    fn outcome(&mut self, node: usize) -> Outcome {
        if self.cancel_asked.contains(&node) && self.next(4) != 0 {
            return Outcome::Cancelled;
        }
        match self.next(100) {
            0..45 => Outcome::Succeeded,
            45..55 => Outcome::Cached,
            55..85 => Outcome::Failed,
            85..95 => Outcome::TimedOut,
            _ => Outcome::Cancelled,
        }
    }

    fn deliver(&mut self) -> Result<(), TestCaseError> {
        let i = self.next(self.pending.len() as u64) as usize;
        match self.pending.swap_remove(i) {
            Pending::Decided(node) => {
                let run = self.next(4) != 0;
                self.answered_cancelled[node] = self.asked_cancelled[node];
                self.handle(Input::Decided { node, run })
            }
            Pending::Started(node, attempt) => {
                self.pending.push(Pending::Finished(node, attempt));
                self.handle(Input::Started { node, attempt })
            }
            Pending::Finished(node, attempt) => {
                let outcome = self.outcome(node);
                self.in_flight.remove(&node);
                self.cancel_asked.remove(&node);
                self.handle(Input::Finished {
                    node,
                    attempt,
                    outcome,
                })
            }
            Pending::RetryDue(node, attempt) => self.handle(Input::RetryDue { node, attempt }),
        }
    }

    /// A controller restart: record, rebuild, resume.
    fn restart(&mut self) -> Result<(), TestCaseError> {
        let snapshot = self.sched.snapshot();
        let json = serde_json::to_string(&snapshot).map_err(|e| fail(e.to_string()))?;
        let states: Vec<NodeState> =
            serde_json::from_str(&json).map_err(|e| fail(e.to_string()))?;
        let restored = Scheduler::restore(
            self.case.nodes.clone(),
            self.policy.clone(),
            states,
            self.cancel_sent,
        )
        .map_err(|e| fail(format!("failed to {e}")))?;
        prop_assert_eq!(restored.snapshot(), snapshot);
        self.sched = restored;
        // Requests die with the old controller; running attempts do not.
        self.pending
            .retain(|p| matches!(p, Pending::Started(..) | Pending::Finished(..)));
        self.resuming = true;
        let actions = self.sched.start();
        let applied = self.apply(&actions);
        self.resuming = false;
        applied
    }

    fn check_end(&self) -> Result<(), TestCaseError> {
        let Some(result) = self.done else {
            return Err(fail("the run ended without Done".into()));
        };
        let mut failed = false;
        for (node, spec) in self.case.nodes.iter().enumerate() {
            let Some(r) = self.sched.result(node) else {
                return Err(fail(format!("{node} never finished")));
            };
            prop_assert_eq!(r.attempts, self.last_attempt[node], "attempts of {}", node);
            prop_assert!(r.attempts <= spec.retries + 1);
            let need_blocked = spec.needs.iter().any(|&n| {
                matches!(
                    self.result(n),
                    Some(JobResult::Failure | JobResult::Skipped)
                )
            });
            if need_blocked && !spec.has_condition {
                prop_assert_eq!(r.result, JobResult::Skipped, "{} after a failed need", node);
            }
            failed |= matches!(r.result, JobResult::Failure | JobResult::Cancelled);
        }
        let expected = if self.cancel_sent {
            WorkflowResult::Cancelled
        } else if failed {
            WorkflowResult::Failed
        } else {
            WorkflowResult::Succeeded
        };
        prop_assert_eq!(result, expected);
        prop_assert!(self.in_flight.is_empty());
        Ok(())
    }
}

fn drive(case: &Case) -> Result<(), TestCaseError> {
    let mut d = Driver::new(case);
    let actions = d.sched.start();
    d.apply(&actions)?;
    let mut step = 0;
    loop {
        if case.cancel_at == Some(step) && d.done.is_none() {
            d.cancel_sent = true;
            d.handle(Input::Cancel)?;
        }
        if case.restore_at == Some(step) && d.done.is_none() {
            d.restart()?;
        }
        if d.pending.is_empty() {
            break;
        }
        d.deliver()?;
        step += 1;
        prop_assert!(step < 10_000, "the run does not terminate");
    }
    d.check_end()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_runs_keep_every_scheduling_invariant(case in case()) {
        drive(&case)?;
    }
}
