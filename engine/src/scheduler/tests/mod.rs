//! Scheduler tests: one unit test per rule, then property tests that drive
//! random DAGs with a simulated driver.

mod props;
mod rules;

use super::{Action, Input, NodeSpec, Outcome, Policy, Scheduler};

/// A node without `if:`.
pub(super) fn job(needs: &[usize]) -> NodeSpec {
    NodeSpec {
        needs: needs.to_vec(),
        retries: 0,
        has_condition: false,
    }
}

/// A node with an explicit `if:`.
pub(super) fn guarded(needs: &[usize]) -> NodeSpec {
    NodeSpec {
        has_condition: true,
        ..job(needs)
    }
}

/// A node without `if:` that may retry.
pub(super) fn retrying(needs: &[usize], retries: u32) -> NodeSpec {
    NodeSpec {
        retries,
        ..job(needs)
    }
}

pub(super) fn keep_going() -> Policy {
    Policy {
        keep_going: true,
        ..Policy::default()
    }
}

pub(super) fn parallel(max: usize) -> Policy {
    Policy {
        max_parallel: Some(max),
        ..Policy::default()
    }
}

/// Feeds a valid input, failing the test with the error otherwise.
pub(super) fn feed(s: &mut Scheduler, input: Input) -> Vec<Action> {
    match s.handle(input) {
        Ok(actions) => actions,
        Err(e) => panic!("{input:?} was refused: failed to {e}"),
    }
}

pub(super) fn decide(s: &mut Scheduler, node: usize, run: bool) -> Vec<Action> {
    feed(s, Input::Decided { node, run })
}

/// Confirms the start of `attempt` and finishes it with `outcome`.
pub(super) fn run(s: &mut Scheduler, node: usize, attempt: u32, outcome: Outcome) -> Vec<Action> {
    let started = feed(s, Input::Started { node, attempt });
    assert_eq!(started, [], "a start confirmation leads to nothing");
    feed(
        s,
        Input::Finished {
            node,
            attempt,
            outcome,
        },
    )
}

pub(super) fn decide_of(node: usize) -> Action {
    Action::Decide {
        node,
        cancelled: false,
    }
}

pub(super) fn start_of(node: usize) -> Action {
    Action::Start { node, attempt: 1 }
}
