//! Prometheus metrics of a runtime, in the text exposition format: runs by
//! result, a run-duration histogram, slots and busy slots.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use kruntimes_crds::RunPhase;

/// Upper bounds (seconds) of the duration histogram.
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
];

/// Counters of one runtime.
#[derive(Debug, Default)]
pub struct Metrics {
    by_result: Mutex<std::collections::BTreeMap<&'static str, u64>>,
    buckets: Mutex<Vec<u64>>,
    sum_ms: AtomicU64,
    count: AtomicU64,
    accepted: AtomicU64,
    rejected_full: AtomicU64,
}

fn label(p: RunPhase) -> &'static str {
    match p {
        RunPhase::Succeeded => "succeeded",
        RunPhase::Failed => "failed",
        RunPhase::TimedOut => "timed_out",
        RunPhase::Cancelled => "cancelled",
        RunPhase::Pending | RunPhase::Scheduled | RunPhase::Running => "unfinished",
    }
}

impl Metrics {
    /// Records a finished run.
    pub fn finished(&self, phase: RunPhase, duration_ms: u64) {
        *self
            .by_result
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(label(phase))
            .or_default() += 1;
        let secs = duration_ms as f64 / 1000.0;
        let mut b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if b.is_empty() {
            b.resize(BUCKETS.len(), 0);
        }
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                b[i] += 1;
            }
        }
        self.sum_ms.fetch_add(duration_ms, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Records an accepted run.
    pub fn accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a run refused because every slot was busy.
    pub fn rejected_full(&self) {
        self.rejected_full.fetch_add(1, Ordering::Relaxed);
    }

    /// The exposition text.
    pub fn render(&self, slots: usize, busy: usize) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP krt_runtime_runs_total Runs finished by this runtime, by result."
        );
        let _ = writeln!(out, "# TYPE krt_runtime_runs_total counter");
        let by = self.by_result.lock().unwrap_or_else(|e| e.into_inner());
        for r in ["succeeded", "failed", "timed_out", "cancelled"] {
            let _ = writeln!(
                out,
                "krt_runtime_runs_total{{result=\"{r}\"}} {}",
                by.get(r).copied().unwrap_or(0)
            );
        }
        drop(by);
        let _ = writeln!(
            out,
            "# HELP krt_runtime_runs_accepted_total Runs accepted by POST /v1/runs."
        );
        let _ = writeln!(out, "# TYPE krt_runtime_runs_accepted_total counter");
        let _ = writeln!(
            out,
            "krt_runtime_runs_accepted_total {}",
            self.accepted.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP krt_runtime_runs_rejected_full_total Runs refused with 429 because every slot was busy."
        );
        let _ = writeln!(out, "# TYPE krt_runtime_runs_rejected_full_total counter");
        let _ = writeln!(
            out,
            "krt_runtime_runs_rejected_full_total {}",
            self.rejected_full.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP krt_runtime_run_duration_seconds Wall time of finished runs."
        );
        let _ = writeln!(out, "# TYPE krt_runtime_run_duration_seconds histogram");
        let b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        for (i, le) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "krt_runtime_run_duration_seconds_bucket{{le=\"{le}\"}} {}",
                b.get(i).copied().unwrap_or(0)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "krt_runtime_run_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "krt_runtime_run_duration_seconds_sum {}",
            self.sum_ms.load(Ordering::Relaxed) as f64 / 1000.0
        );
        let _ = writeln!(out, "krt_runtime_run_duration_seconds_count {count}");
        let _ = writeln!(out, "# HELP krt_runtime_slots Run slots of this runtime.");
        let _ = writeln!(out, "# TYPE krt_runtime_slots gauge");
        let _ = writeln!(out, "krt_runtime_slots {slots}");
        let _ = writeln!(
            out,
            "# HELP krt_runtime_busy_slots Slots running a run now."
        );
        let _ = writeln!(out, "# TYPE krt_runtime_busy_slots gauge");
        let _ = writeln!(out, "krt_runtime_busy_slots {busy}");
        out
    }
}
