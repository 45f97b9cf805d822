//! One test per scheduling rule.

use std::time::Duration;

use kruntimes_crds::JobResult;
use serde_json::json;

use super::{decide, decide_of, feed, guarded, job, keep_going, parallel, retrying, run, start_of};
use crate::scheduler::{
    Action, Input, NodeResult, NodeSpec, NodeState, Outcome, Policy, Scheduler, SchedulerError,
    WorkflowResult,
};

fn done(result: WorkflowResult) -> Action {
    Action::Done { result }
}

fn finished(result: JobResult, attempts: u32) -> Option<NodeResult> {
    Some(NodeResult {
        result,
        cached: false,
        attempts,
    })
}

#[test]
fn start_asks_to_decide_only_nodes_without_needs() {
    let mut s = Scheduler::new(vec![job(&[]), job(&[0]), guarded(&[])], Policy::default());
    assert_eq!(
        s.start(),
        [
            decide_of(0),
            Action::Decide {
                node: 2,
                cancelled: false
            }
        ]
    );
    assert_eq!(s.start(), [], "a second start asks for nothing");
}

#[test]
fn empty_workflow_is_done_at_start() {
    let mut s = Scheduler::new(Vec::new(), Policy::default());
    assert_eq!(s.start(), [done(WorkflowResult::Succeeded)]);
    assert!(s.is_done());
    assert_eq!(s.workflow_result(), Some(WorkflowResult::Succeeded));
}

#[test]
fn decided_node_starts_and_its_success_makes_dependents_decidable() {
    let mut s = Scheduler::new(vec![job(&[]), job(&[0])], Policy::default());
    s.start();
    assert_eq!(decide(&mut s, 0, true), [start_of(0)]);
    assert_eq!(
        s.state(0),
        Some(&NodeState::Starting {
            attempt: 1,
            cancelling: false
        })
    );
    assert_eq!(run(&mut s, 0, 1, Outcome::Succeeded), [decide_of(1)]);
    assert_eq!(decide(&mut s, 1, true), [start_of(1)]);
    assert_eq!(
        run(&mut s, 1, 1, Outcome::Succeeded),
        [done(WorkflowResult::Succeeded)]
    );
    assert_eq!(s.result(1), finished(JobResult::Success, 1));
}

#[test]
fn default_success_skips_dependents_of_a_failure_without_asking() {
    let mut s = Scheduler::new(vec![job(&[]), job(&[0]), job(&[1]), job(&[])], keep_going());
    s.start();
    assert_eq!(decide(&mut s, 0, true), [start_of(0)]);
    assert_eq!(decide(&mut s, 3, true), [start_of(3)]);
    assert_eq!(
        run(&mut s, 0, 1, Outcome::Failed),
        [],
        "no Decide for 1 or 2"
    );
    assert_eq!(s.result(0), finished(JobResult::Failure, 1));
    assert_eq!(s.result(1), finished(JobResult::Skipped, 0));
    assert_eq!(
        s.result(2),
        finished(JobResult::Skipped, 0),
        "skipping propagates"
    );
    assert_eq!(
        run(&mut s, 3, 1, Outcome::Succeeded),
        [done(WorkflowResult::Failed)]
    );
}

#[test]
fn if_true_runs_a_cleanup_after_a_failure() {
    // Fail-fast (the default) still decides nodes with an explicit `if:`.
    let mut s = Scheduler::new(vec![job(&[]), guarded(&[0])], Policy::default());
    s.start();
    decide(&mut s, 0, true);
    assert_eq!(run(&mut s, 0, 1, Outcome::Failed), [decide_of(1)]);
    assert_eq!(s.needs_results(1), [(0, JobResult::Failure)]);
    assert_eq!(decide(&mut s, 1, true), [start_of(1)]);
    assert_eq!(
        run(&mut s, 1, 1, Outcome::Succeeded),
        [done(WorkflowResult::Failed)]
    );
    assert_eq!(s.result(1), finished(JobResult::Success, 1));
}

#[test]
fn if_false_skips_without_failing_the_workflow() {
    let mut s = Scheduler::new(vec![job(&[]), guarded(&[0]), job(&[1])], Policy::default());
    s.start();
    decide(&mut s, 0, true);
    assert_eq!(run(&mut s, 0, 1, Outcome::Succeeded), [decide_of(1)]);
    assert_eq!(decide(&mut s, 1, false), [done(WorkflowResult::Succeeded)]);
    assert_eq!(s.result(1), finished(JobResult::Skipped, 0));
    assert_eq!(s.result(2), finished(JobResult::Skipped, 0));
}

#[test]
fn cached_counts_as_success() {
    let mut s = Scheduler::new(vec![job(&[]), job(&[0])], Policy::default());
    s.start();
    decide(&mut s, 0, true);
    assert_eq!(run(&mut s, 0, 1, Outcome::Cached), [decide_of(1)]);
    assert_eq!(
        s.result(0),
        Some(NodeResult {
            result: JobResult::Success,
            cached: true,
            attempts: 1
        })
    );
    assert_eq!(s.needs_results(1), [(0, JobResult::Success)]);
}

#[test]
fn finished_without_started_is_accepted() {
    let mut s = Scheduler::new(vec![job(&[])], Policy::default());
    s.start();
    decide(&mut s, 0, true);
    let input = Input::Finished {
        node: 0,
        attempt: 1,
        outcome: Outcome::Cached,
    };
    assert_eq!(feed(&mut s, input), [done(WorkflowResult::Succeeded)]);
}

#[test]
fn failed_attempts_retry_with_doubling_backoff_until_the_limit() {
    let policy = Policy {
        seed: 7,
        ..Policy::default()
    };
    let mut s = Scheduler::new(vec![retrying(&[], 3)], policy.clone());
    s.start();
    assert_eq!(decide(&mut s, 0, true), [start_of(0)]);
    let mut floor = Duration::from_secs(1);
    for attempt in 1..=3 {
        let actions = run(&mut s, 0, attempt, Outcome::Failed);
        let [
            Action::ScheduleRetry {
                node: 0,
                attempt: next,
                delay,
            },
        ] = actions[..]
        else {
            panic!("expected one retry, got {actions:?}");
        };
        assert_eq!(next, attempt + 1);
        assert_eq!(policy.retry_delay_without_jitter(next), floor);
        assert!(
            delay >= floor && delay < floor * 5 / 4,
            "{delay:?} not within 25% of {floor:?}"
        );
        assert_eq!(s.state(0), Some(&NodeState::RetryWait { attempt: next }));
        let due = Input::RetryDue {
            node: 0,
            attempt: next,
        };
        assert_eq!(
            feed(&mut s, due),
            [Action::Start {
                node: 0,
                attempt: next
            }]
        );
        floor *= 2;
    }
    assert_eq!(
        run(&mut s, 0, 4, Outcome::Failed),
        [done(WorkflowResult::Failed)]
    );
    assert_eq!(
        s.result(0),
        finished(JobResult::Failure, 4),
        "retries + 1 attempts, no more"
    );
}

#[test]
fn timed_out_attempts_retry_like_failures_and_a_later_success_counts() {
    let mut s = Scheduler::new(vec![retrying(&[], 1), job(&[0])], Policy::default());
    s.start();
    decide(&mut s, 0, true);
    let actions = run(&mut s, 0, 1, Outcome::TimedOut);
    assert!(matches!(
        actions[..],
        [Action::ScheduleRetry {
            node: 0,
            attempt: 2,
            ..
        }]
    ));
    feed(
        &mut s,
        Input::RetryDue {
            node: 0,
            attempt: 2,
        },
    );
    assert_eq!(run(&mut s, 0, 2, Outcome::Succeeded), [decide_of(1)]);
    assert_eq!(s.result(0), finished(JobResult::Success, 2));
}

#[test]
fn backoff_jitter_is_deterministic_for_a_seed_and_bounded() {
    let a = Policy {
        seed: 1,
        ..Policy::default()
    };
    let b = Policy {
        seed: 2,
        ..Policy::default()
    };
    let mut differs = false;
    for node in 0..20 {
        for attempt in 2..8 {
            let delay = a.retry_delay(node, attempt);
            assert_eq!(
                delay,
                a.clone().retry_delay(node, attempt),
                "same seed, same delay"
            );
            let floor = a.retry_delay_without_jitter(attempt);
            assert!(
                delay >= floor && delay < floor * 5 / 4,
                "{delay:?} vs {floor:?}"
            );
            differs |= delay != b.retry_delay(node, attempt);
        }
    }
    assert!(differs, "another seed gives other jitter");
}

#[test]
fn backoff_is_capped_at_backoff_max() {
    let policy = Policy {
        backoff_base: Duration::from_secs(1),
        backoff_max: Duration::from_secs(10),
        ..Policy::default()
    };
    assert_eq!(policy.retry_delay_without_jitter(5), Duration::from_secs(8));
    for attempt in [6, 7, 40, u32::MAX] {
        assert_eq!(
            policy.retry_delay_without_jitter(attempt),
            Duration::from_secs(10)
        );
        let delay = policy.retry_delay(3, attempt);
        assert!(delay >= Duration::from_secs(10) && delay < Duration::from_millis(12_500));
    }
    let huge = Policy {
        backoff_base: Duration::MAX,
        backoff_max: Duration::MAX,
        ..Policy::default()
    };
    assert!(huge.retry_delay(0, u32::MAX) >= Duration::from_secs(u64::MAX / 1_000_000_000));
}

#[test]
fn fail_fast_cancels_running_nodes_and_stops_new_starts() {
    let nodes = vec![job(&[]), job(&[]), job(&[]), job(&[1]), job(&[0])];
    let mut s = Scheduler::new(nodes, parallel(2));
    s.start();
    assert_eq!(decide(&mut s, 0, true), [start_of(0)]);
    assert_eq!(decide(&mut s, 1, true), [start_of(1)]);
    assert_eq!(decide(&mut s, 2, true), [], "2 waits for capacity");
    feed(
        &mut s,
        Input::Started {
            node: 1,
            attempt: 1,
        },
    );

    let failed = run(&mut s, 0, 1, Outcome::Failed);
    assert_eq!(
        failed,
        [Action::Cancel { node: 1 }],
        "no Start for the queued node 2"
    );
    assert_eq!(
        s.state(1),
        Some(&NodeState::Running {
            attempt: 1,
            cancelling: true
        })
    );
    assert_eq!(s.result(2), finished(JobResult::Cancelled, 0));
    assert_eq!(
        s.result(4),
        finished(JobResult::Skipped, 0),
        "its need failed"
    );

    let cancelled = Input::Finished {
        node: 1,
        attempt: 1,
        outcome: Outcome::Cancelled,
    };
    assert_eq!(feed(&mut s, cancelled), [done(WorkflowResult::Failed)]);
    assert_eq!(
        s.result(3),
        finished(JobResult::Cancelled, 0),
        "its need was cancelled"
    );
}

#[test]
fn fail_fast_drops_pending_retries_and_ignores_their_late_timers() {
    let mut s = Scheduler::new(vec![retrying(&[], 2), job(&[])], Policy::default());
    s.start();
    decide(&mut s, 0, true);
    decide(&mut s, 1, true);
    let retry = run(&mut s, 0, 1, Outcome::Failed);
    assert!(matches!(
        retry[..],
        [Action::ScheduleRetry {
            node: 0,
            attempt: 2,
            ..
        }]
    ));
    assert_eq!(
        run(&mut s, 1, 1, Outcome::Failed),
        [done(WorkflowResult::Failed)]
    );
    assert_eq!(
        s.result(0),
        finished(JobResult::Failure, 1),
        "the dropped retry ends as a failure"
    );
    assert_eq!(
        s.handle(Input::RetryDue {
            node: 0,
            attempt: 2
        }),
        Ok(vec![])
    );
    assert!(
        s.handle(Input::RetryDue {
            node: 0,
            attempt: 3
        })
        .is_err()
    );
}

#[test]
fn failure_under_fail_fast_is_not_retried_once_stopping() {
    let mut s = Scheduler::new(vec![job(&[]), retrying(&[], 3)], Policy::default());
    s.start();
    decide(&mut s, 0, true);
    decide(&mut s, 1, true);
    assert_eq!(
        run(&mut s, 0, 1, Outcome::Failed),
        [Action::Cancel { node: 1 }]
    );
    let last = run(&mut s, 1, 1, Outcome::Failed);
    assert_eq!(
        last,
        [done(WorkflowResult::Failed)],
        "no ScheduleRetry after fail-fast"
    );
    assert_eq!(s.result(1), finished(JobResult::Failure, 1));
}

#[test]
fn keep_going_lets_independent_branches_finish() {
    let mut s = Scheduler::new(vec![job(&[]), job(&[]), job(&[1])], keep_going());
    s.start();
    decide(&mut s, 0, true);
    decide(&mut s, 1, true);
    assert_eq!(
        run(&mut s, 0, 1, Outcome::Failed),
        [],
        "nothing is cancelled"
    );
    assert_eq!(run(&mut s, 1, 1, Outcome::Succeeded), [decide_of(2)]);
    assert_eq!(decide(&mut s, 2, true), [start_of(2)]);
    assert_eq!(
        run(&mut s, 2, 1, Outcome::Succeeded),
        [done(WorkflowResult::Failed)]
    );
    assert_eq!(s.result(2), finished(JobResult::Success, 1));
}

#[test]
fn cancel_runs_always_cleanups_when_decided_true_and_cancels_the_rest() {
    // 0 runs; 1 needs 0 without `if:`; 2 is an `always()` cleanup; 3 is an
    // `if: success()` job; 4 is being decided when the cancel comes.
    let nodes = vec![job(&[]), job(&[0]), guarded(&[0]), guarded(&[0]), job(&[])];
    let mut s = Scheduler::new(nodes, keep_going());
    s.start();
    decide(&mut s, 0, true);
    feed(
        &mut s,
        Input::Started {
            node: 0,
            attempt: 1,
        },
    );

    assert_eq!(feed(&mut s, Input::Cancel), [Action::Cancel { node: 0 }]);
    assert!(s.is_cancelled());
    assert_eq!(
        feed(&mut s, Input::Cancel),
        [],
        "a second cancel changes nothing"
    );
    assert_eq!(
        decide(&mut s, 4, true),
        [],
        "without `if:` it may not start any more"
    );
    assert_eq!(s.result(4), finished(JobResult::Cancelled, 0));

    let cancelled = Input::Finished {
        node: 0,
        attempt: 1,
        outcome: Outcome::Cancelled,
    };
    let asked = [
        Action::Decide {
            node: 2,
            cancelled: true,
        },
        Action::Decide {
            node: 3,
            cancelled: true,
        },
    ];
    assert_eq!(feed(&mut s, cancelled), asked);
    assert_eq!(s.result(1), finished(JobResult::Cancelled, 0));
    assert_eq!(decide(&mut s, 3, false), []);
    assert_eq!(decide(&mut s, 2, true), [start_of(2)]);
    assert_eq!(
        run(&mut s, 2, 1, Outcome::Succeeded),
        [done(WorkflowResult::Cancelled)]
    );
    assert_eq!(s.result(2), finished(JobResult::Success, 1));
    assert_eq!(s.result(3), finished(JobResult::Skipped, 0));
}

#[test]
fn cancel_asks_again_decisions_made_before_it() {
    let nodes = vec![job(&[]), guarded(&[]), guarded(&[])];
    let mut s = Scheduler::new(nodes, parallel(1));
    s.start();
    decide(&mut s, 0, true);
    assert_eq!(decide(&mut s, 1, true), [], "queued behind 0");
    let asked_again = Action::Decide {
        node: 1,
        cancelled: true,
    };
    assert_eq!(
        feed(&mut s, Input::Cancel),
        [Action::Cancel { node: 0 }, asked_again]
    );
    // 2 was asked before the cancel; its answer is stale, so it is asked again.
    let stale = decide(&mut s, 2, true);
    assert_eq!(
        stale,
        [Action::Decide {
            node: 2,
            cancelled: true
        }]
    );
    assert_eq!(decide(&mut s, 2, false), []);
    assert_eq!(decide(&mut s, 1, true), [], "0 still holds the only slot");
    let cancelled = Input::Finished {
        node: 0,
        attempt: 1,
        outcome: Outcome::Cancelled,
    };
    assert_eq!(feed(&mut s, cancelled), [start_of(1)]);
}

#[test]
fn cancel_drops_pending_retries_as_cancelled() {
    let mut s = Scheduler::new(vec![retrying(&[], 1)], Policy::default());
    s.start();
    decide(&mut s, 0, true);
    run(&mut s, 0, 1, Outcome::Failed);
    assert_eq!(
        feed(&mut s, Input::Cancel),
        [done(WorkflowResult::Cancelled)]
    );
    assert_eq!(s.result(0), finished(JobResult::Cancelled, 1));
    assert_eq!(
        s.handle(Input::RetryDue {
            node: 0,
            attempt: 2
        }),
        Ok(vec![])
    );
}

#[test]
fn cancel_before_start_decides_only_nodes_with_a_condition() {
    let mut s = Scheduler::new(vec![job(&[]), guarded(&[])], Policy::default());
    assert_eq!(feed(&mut s, Input::Cancel), []);
    let asked = Action::Decide {
        node: 1,
        cancelled: true,
    };
    assert_eq!(s.start(), [asked]);
    assert_eq!(s.result(0), finished(JobResult::Cancelled, 0));
    assert_eq!(decide(&mut s, 1, false), [done(WorkflowResult::Cancelled)]);
}

#[test]
fn an_unrequested_cancelled_attempt_fails_the_workflow() {
    let mut s = Scheduler::new(vec![job(&[]), job(&[0])], keep_going());
    s.start();
    decide(&mut s, 0, true);
    assert_eq!(
        run(&mut s, 0, 1, Outcome::Cancelled),
        [done(WorkflowResult::Failed)]
    );
    assert_eq!(s.result(1), finished(JobResult::Cancelled, 0));
}

#[test]
fn max_parallel_counts_unconfirmed_starts_and_is_respected() {
    let mut s = Scheduler::new(vec![job(&[]); 4], parallel(2));
    s.start();
    assert_eq!(
        decide(&mut s, 3, true),
        [Action::Start {
            node: 3,
            attempt: 1
        }]
    );
    assert_eq!(decide(&mut s, 2, true), [start_of(2)]);
    assert_eq!(
        decide(&mut s, 1, true),
        [],
        "two starts are out, unconfirmed"
    );
    assert_eq!(decide(&mut s, 0, true), []);
    assert_eq!(
        run(&mut s, 3, 1, Outcome::Succeeded),
        [start_of(0)],
        "lowest index first"
    );
    assert_eq!(run(&mut s, 2, 1, Outcome::Succeeded), [start_of(1)]);
}

#[test]
fn starts_come_in_node_order() {
    let mut s = Scheduler::new(vec![job(&[]); 4], parallel(1));
    s.start();
    decide(&mut s, 0, true);
    for node in [3, 1, 2] {
        assert_eq!(decide(&mut s, node, true), []);
    }
    assert_eq!(run(&mut s, 0, 1, Outcome::Succeeded), [start_of(1)]);
    assert_eq!(run(&mut s, 1, 1, Outcome::Succeeded), [start_of(2)]);
    assert_eq!(run(&mut s, 2, 1, Outcome::Succeeded), [start_of(3)]);
}

#[test]
fn done_is_emitted_once_and_later_cancels_are_ignored() {
    let mut s = Scheduler::new(vec![job(&[])], Policy::default());
    s.start();
    decide(&mut s, 0, true);
    assert_eq!(
        run(&mut s, 0, 1, Outcome::Succeeded),
        [done(WorkflowResult::Succeeded)]
    );
    assert_eq!(feed(&mut s, Input::Cancel), []);
    assert_eq!(s.workflow_result(), Some(WorkflowResult::Succeeded));
}

#[test]
fn bad_inputs_return_errors_and_change_nothing() {
    let mut s = Scheduler::new(vec![job(&[]), job(&[0])], Policy::default());
    s.start();
    let cases: &[(Input, SchedulerError)] = &[
        (
            Input::Decided { node: 9, run: true },
            SchedulerError::UnknownNode { node: 9, len: 2 },
        ),
        (
            Input::Started {
                node: 0,
                attempt: 1,
            },
            SchedulerError::UnexpectedInput {
                node: 0,
                input: "started",
                state: "deciding",
            },
        ),
        (
            Input::Decided { node: 1, run: true },
            SchedulerError::UnexpectedInput {
                node: 1,
                input: "decided",
                state: "waiting",
            },
        ),
        (
            Input::RetryDue {
                node: 0,
                attempt: 2,
            },
            SchedulerError::UnexpectedInput {
                node: 0,
                input: "retry due",
                state: "deciding",
            },
        ),
    ];
    check_refused(&mut s, cases);

    decide(&mut s, 0, true);
    let cases: &[(Input, SchedulerError)] = &[
        (
            Input::Started {
                node: 0,
                attempt: 2,
            },
            SchedulerError::StaleAttempt {
                node: 0,
                input: "started",
                got: 2,
                current: 1,
            },
        ),
        (
            Input::Finished {
                node: 0,
                attempt: 0,
                outcome: Outcome::Succeeded,
            },
            SchedulerError::StaleAttempt {
                node: 0,
                input: "finished",
                got: 0,
                current: 1,
            },
        ),
        (
            Input::Decided { node: 0, run: true },
            SchedulerError::UnexpectedInput {
                node: 0,
                input: "decided",
                state: "starting",
            },
        ),
    ];
    check_refused(&mut s, cases);

    feed(
        &mut s,
        Input::Started {
            node: 0,
            attempt: 1,
        },
    );
    let twice = Input::Started {
        node: 0,
        attempt: 1,
    };
    let twice_err = SchedulerError::UnexpectedInput {
        node: 0,
        input: "started",
        state: "running",
    };
    check_refused(&mut s, &[(twice, twice_err)]);

    let fin = Input::Finished {
        node: 0,
        attempt: 1,
        outcome: Outcome::Succeeded,
    };
    feed(&mut s, fin);
    let again = SchedulerError::UnexpectedInput {
        node: 0,
        input: "finished",
        state: "finished",
    };
    let never_scheduled = SchedulerError::UnexpectedInput {
        node: 0,
        input: "retry due",
        state: "finished",
    };
    let due = Input::RetryDue {
        node: 0,
        attempt: 2,
    };
    check_refused(&mut s, &[(fin, again), (due, never_scheduled)]);
}

fn check_refused(s: &mut Scheduler, cases: &[(Input, SchedulerError)]) {
    for (input, expected) in cases {
        let before = s.snapshot();
        assert_eq!(s.handle(*input).as_ref(), Err(expected), "{input:?}");
        assert_eq!(s.snapshot(), before, "{input:?} changed the state");
    }
}

#[test]
fn errors_read_as_failed_to_sentences() {
    let stale = SchedulerError::StaleAttempt {
        node: 3,
        input: "finished",
        got: 1,
        current: 2,
    };
    assert_eq!(
        format!("failed to {stale}"),
        "failed to apply finished to node 3: attempt 1 is not its current attempt 2"
    );
    let unexpected = SchedulerError::UnexpectedInput {
        node: 0,
        input: "started",
        state: "waiting",
    };
    assert_eq!(
        format!("failed to {unexpected}"),
        "failed to apply started to node 0: it is waiting"
    );
}

#[test]
fn invalid_graphs_are_rejected() {
    let unknown = Scheduler::try_new(vec![job(&[]), job(&[5])], Policy::default());
    assert_eq!(
        unknown.err(),
        Some(SchedulerError::UnknownNeed { node: 1, need: 5 })
    );
    let cycle = Scheduler::try_new(
        vec![job(&[]), job(&[2]), job(&[1]), job(&[2])],
        Policy::default(),
    );
    assert!(
        matches!(cycle.err(), Some(SchedulerError::Cycle { node: 1 | 2 })),
        "names a node on the cycle, not one after it"
    );
    let own = Scheduler::try_new(vec![job(&[0])], Policy::default());
    assert_eq!(own.err(), Some(SchedulerError::Cycle { node: 0 }));
    let zero = Scheduler::try_new(vec![job(&[])], parallel(0));
    assert_eq!(zero.err(), Some(SchedulerError::ZeroParallelism));
}

#[test]
fn duplicate_needs_count_once() {
    let mut s = Scheduler::new(vec![job(&[]), job(&[0, 0])], Policy::default());
    s.start();
    decide(&mut s, 0, true);
    assert_eq!(run(&mut s, 0, 1, Outcome::Succeeded), [decide_of(1)]);
    assert_eq!(s.needs_results(1), [(0, JobResult::Success)]);
}

#[test]
fn needs_results_lists_finished_needs_in_needs_order() {
    let mut s = Scheduler::new(vec![job(&[]), job(&[]), guarded(&[1, 0])], keep_going());
    s.start();
    decide(&mut s, 0, true);
    decide(&mut s, 1, true);
    run(&mut s, 1, 1, Outcome::Failed);
    assert_eq!(
        s.needs_results(2),
        [(1, JobResult::Failure)],
        "only finished needs"
    );
    run(&mut s, 0, 1, Outcome::Succeeded);
    assert_eq!(
        s.needs_results(2),
        [(1, JobResult::Failure), (0, JobResult::Success)]
    );
    assert_eq!(s.needs_results(99), []);
}

#[test]
fn snapshot_serialises_as_tagged_json() {
    let mut s = Scheduler::new(
        vec![job(&[]), retrying(&[], 1), job(&[0]), job(&[])],
        keep_going(),
    );
    s.start();
    decide(&mut s, 0, true);
    decide(&mut s, 1, true);
    run(&mut s, 0, 1, Outcome::Cached);
    run(&mut s, 1, 1, Outcome::Failed);
    let snapshot = s.snapshot();
    assert_eq!(
        serde_json::to_value(&snapshot).unwrap(),
        json!([
            {"state": "finished", "result": "success", "cached": true, "attempts": 1},
            {"state": "retryWait", "attempt": 2},
            {"state": "deciding", "cancelled": false},
            {"state": "deciding", "cancelled": false},
        ])
    );
    let back: Vec<NodeState> =
        serde_json::from_value(serde_json::to_value(&snapshot).unwrap()).unwrap();
    assert_eq!(back, snapshot);
}

#[test]
fn restore_asks_again_for_everything_outstanding() {
    let nodes = vec![
        job(&[]),
        guarded(&[0]),
        job(&[0]),
        job(&[]),
        retrying(&[], 1),
        job(&[]),
        job(&[5]),
    ];
    let done_ok = NodeState::Finished(NodeResult {
        result: JobResult::Success,
        cached: false,
        attempts: 1,
    });
    let states = vec![
        done_ok,
        NodeState::Deciding { cancelled: false },
        NodeState::Starting {
            attempt: 1,
            cancelling: false,
        },
        NodeState::Running {
            attempt: 1,
            cancelling: true,
        },
        NodeState::RetryWait { attempt: 2 },
        NodeState::Queued { attempt: 1 },
        NodeState::Waiting,
    ];
    let policy = keep_going();
    let delay = policy.retry_delay(4, 2);
    let mut s = Scheduler::restore(nodes, policy, states.clone(), false).unwrap();
    assert_eq!(s.snapshot(), states);
    assert_eq!(
        s.start(),
        [
            Action::Decide {
                node: 1,
                cancelled: false
            },
            Action::Start {
                node: 2,
                attempt: 1
            },
            Action::Cancel { node: 3 },
            Action::ScheduleRetry {
                node: 4,
                attempt: 2,
                delay
            },
            start_of(5),
        ]
    );
}

#[test]
fn restore_continues_where_the_original_left_off() {
    let nodes = || vec![job(&[]), guarded(&[0]), job(&[0])];
    let mut s = Scheduler::new(nodes(), Policy::default());
    s.start();
    decide(&mut s, 0, true);
    feed(
        &mut s,
        Input::Started {
            node: 0,
            attempt: 1,
        },
    );
    let recorded = serde_json::to_string(&s.snapshot()).unwrap();

    let states = serde_json::from_str(&recorded).unwrap();
    let mut r = Scheduler::restore(nodes(), Policy::default(), states, false).unwrap();
    assert_eq!(r.start(), [], "a running node needs nothing again");
    assert_eq!(
        run_finish(&mut r),
        [decide_of(1)],
        "2 is skipped, 1 has an `if:`"
    );
    assert_eq!(run_finish(&mut s), [decide_of(1)]);
    assert_eq!(r.snapshot(), s.snapshot());
}

fn run_finish(s: &mut Scheduler) -> Vec<Action> {
    feed(
        s,
        Input::Finished {
            node: 0,
            attempt: 1,
            outcome: Outcome::Failed,
        },
    )
}

#[test]
fn restore_rejects_states_that_contradict_the_graph() {
    let nodes = || vec![job(&[]), job(&[0])];
    let p = Policy::default;
    let count = Scheduler::restore(nodes(), p(), vec![NodeState::Waiting], false);
    assert_eq!(
        count.err(),
        Some(SchedulerError::StateCount {
            got: 1,
            expected: 2
        })
    );
    let early = vec![NodeState::Waiting, NodeState::Queued { attempt: 1 }];
    assert!(matches!(
        Scheduler::restore(nodes(), p(), early, false).err(),
        Some(SchedulerError::InvalidState { node: 1, .. })
    ));
    let too_many = vec![
        NodeState::Running {
            attempt: 2,
            cancelling: false,
        },
        NodeState::Waiting,
    ];
    assert!(matches!(
        Scheduler::restore(nodes(), p(), too_many, false).err(),
        Some(SchedulerError::InvalidState { node: 0, .. })
    ));
    let skipped_ran = NodeState::Finished(NodeResult {
        result: JobResult::Skipped,
        cached: false,
        attempts: 1,
    });
    assert!(matches!(
        Scheduler::restore(nodes(), p(), vec![skipped_ran, NodeState::Waiting], false).err(),
        Some(SchedulerError::InvalidState { node: 0, .. })
    ));
}

#[test]
fn restore_derives_fail_fast_from_a_recorded_failure() {
    let nodes = vec![job(&[]), job(&[])];
    let failed = NodeState::Finished(NodeResult {
        result: JobResult::Failure,
        cached: false,
        attempts: 1,
    });
    let states = vec![failed, NodeState::Deciding { cancelled: false }];
    let mut s = Scheduler::restore(nodes, Policy::default(), states, false).unwrap();
    assert_eq!(s.start(), [decide_of(1)]);
    assert_eq!(decide(&mut s, 1, true), [done(WorkflowResult::Failed)]);
    assert_eq!(
        s.result(1),
        finished(JobResult::Cancelled, 0),
        "fail-fast still holds"
    );
}

#[test]
fn node_spec_default_is_a_root_without_condition() {
    assert_eq!(NodeSpec::default(), job(&[]));
}
