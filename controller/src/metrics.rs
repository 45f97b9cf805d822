//! Prometheus metrics of the controller, rendered as text.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

use kruntimes_runtime::server::Histogram;

/// Upper bounds (seconds) of the latency histograms.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Counters, gauges and histograms of the controller.
#[derive(Debug)]
pub struct Metrics {
    dispatch: Histogram,
    completion: Histogram,
    results: Mutex<BTreeMap<String, u64>>,
    reconcile_errors: Mutex<BTreeMap<String, u64>>,
    queue_depth: AtomicI64,
    active: AtomicI64,
    leader: AtomicI64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            dispatch: Histogram::new(BUCKETS),
            completion: Histogram::new(BUCKETS),
            results: Mutex::default(),
            reconcile_errors: Mutex::default(),
            queue_depth: AtomicI64::default(),
            active: AtomicI64::default(),
            leader: AtomicI64::default(),
        }
    }
}

impl Metrics {
    /// A Run's process started `secs` after the controller first saw it.
    pub fn dispatched(&self, secs: f64) {
        self.dispatch.observe(secs);
    }

    /// A Run ended `secs` after the controller first saw it.
    pub fn completed(&self, phase: &str, secs: f64) {
        self.completion.observe(secs);
        *self
            .results
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(phase.to_string())
            .or_default() += 1;
    }

    /// A reconcile of `kind` failed.
    pub fn reconcile_error(&self, kind: &str) {
        *self
            .reconcile_errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(kind.to_string())
            .or_default() += 1;
    }

    /// Runs waiting for a slot, and Runs assigned to a pod.
    pub fn set_queue(&self, queued: usize, active: usize) {
        self.queue_depth.store(queued as i64, Ordering::Relaxed);
        self.active.store(active as i64, Ordering::Relaxed);
    }

    /// Whether this process leads (dispatches) or stands by.
    pub fn set_leader(&self, leading: bool) {
        self.leader.store(i64::from(leading), Ordering::Relaxed);
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.dispatch
            .render(&mut out, "krt_controller_dispatch_latency_seconds");
        self.completion
            .render(&mut out, "krt_controller_completion_latency_seconds");
        let _ = writeln!(out, "# TYPE krt_controller_runs_total counter");
        for (phase, n) in self
            .results
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(out, "krt_controller_runs_total{{result=\"{phase}\"}} {n}");
        }
        let _ = writeln!(out, "# TYPE krt_controller_reconcile_errors_total counter");
        for (kind, n) in self
            .reconcile_errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "krt_controller_reconcile_errors_total{{kind=\"{kind}\"}} {n}"
            );
        }
        let _ = writeln!(out, "# TYPE krt_controller_queue_depth gauge");
        let _ = writeln!(
            out,
            "krt_controller_queue_depth {}",
            self.queue_depth.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# TYPE krt_controller_active_runs gauge");
        let _ = writeln!(
            out,
            "krt_controller_active_runs {}",
            self.active.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# TYPE krt_controller_leader gauge");
        let _ = writeln!(
            out,
            "krt_controller_leader {}",
            self.leader.load(Ordering::Relaxed)
        );
        out
    }
}
