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

/// A Prometheus histogram over fixed upper bounds, in seconds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Cumulative count per bound, the sum and the count.
    state: Mutex<(Vec<u64>, f64, u64)>,
}

impl Histogram {
    /// An empty histogram with these upper bounds (ascending).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            state: Mutex::new((vec![0; bounds.len()], 0.0, 0)),
        }
    }

    /// Records one value.
    pub fn observe(&self, secs: f64) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for (i, le) in self.bounds.iter().enumerate() {
            if secs <= *le {
                st.0[i] += 1;
            }
        }
        st.1 += secs;
        st.2 += 1;
    }

    /// Appends the `# TYPE` line, the buckets, the sum and the count.
    pub fn render(&self, out: &mut String, name: &str) {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (le, n) in self.bounds.iter().zip(&st.0) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {n}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", st.2);
        let _ = writeln!(out, "{name}_sum {}", st.1);
        let _ = writeln!(out, "{name}_count {}", st.2);
    }
}

/// Counters of one runtime.
#[derive(Debug)]
pub struct Metrics {
    by_result: Mutex<std::collections::BTreeMap<&'static str, u64>>,
    duration: Histogram,
    accepted: AtomicU64,
    rejected_full: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            by_result: Mutex::default(),
            duration: Histogram::new(BUCKETS),
            accepted: AtomicU64::default(),
            rejected_full: AtomicU64::default(),
        }
    }
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
        self.duration.observe(duration_ms as f64 / 1000.0);
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
        self.duration
            .render(&mut out, "krt_runtime_run_duration_seconds");
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
