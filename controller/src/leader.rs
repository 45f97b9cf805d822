//! Leader election with a `coordination.k8s.io/v1` Lease, so that only one of
//! several controller replicas dispatches Runs.
//!
//! ```text
//!  candidate ──get──► no Lease ──create──────────────────────► leader
//!      │              held by me / released ──replace(rv)────► leader
//!      │              held by another: unchanged for its leaseDuration
//!      │                 (on our clock) ──replace(rv)────────► leader
//!      └─ otherwise: poll every retry period
//!  leader ──every retry period: replace(rv) renewTime──┐
//!      ├─ no successful renew for the renew deadline ──► lost (process exits)
//!      ├─ someone else holds the Lease ─────────────────► lost
//!      └─ graceful shutdown: work stops, then release ──► holder cleared
//! ```
//!
//! Every write is a `replace` guarded by the `resourceVersion` we read (or a
//! `create`, which only one caller can win), so two candidates racing for
//! the same Lease never both succeed: the API server answers 409 to the
//! second.
//!
//! Expiry is judged like client-go does, on the candidate's own monotonic
//! clock: a Lease is expired when its record (holder, renewTime,
//! resourceVersion) has not changed for `leaseDurationSeconds` since we
//! first saw it that way. Wall clocks of different machines are never
//! compared. The leader gives up after `renew_deadline` without a
//! successful renew, counted from when that renew was sent, and
//! `renew_deadline < lease_duration`, so it has stopped before a candidate
//! can take over.
//!
//! Failover: after a crash, a standby that polls every `retry_period` sees
//! the last renew at most one retry period late and takes over when the
//! lease duration has passed since: at most `lease_duration + retry_period`
//! (17 s with the defaults) after the last renew. After a graceful shutdown
//! the leader releases the Lease and a standby takes it on its next poll,
//! within about one `retry_period`.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Timing of leader election, with controller-runtime's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTiming {
    /// How long a candidate waits, after the Lease last changed, before it
    /// takes the Lease over from a holder that stopped renewing. Written to
    /// the Lease in whole seconds (rounded up).
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it gives up.
    pub renew_deadline: Duration,
    /// How often the leader renews and a candidate tries to acquire.
    pub retry_period: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

impl LeaseTiming {
    /// Checks the invariants that make a single leader possible.
    pub fn validate(&self) -> Result<(), String> {
        if self.lease_duration < Duration::from_secs(1) {
            return Err("the lease duration must be at least 1s".into());
        }
        if self.renew_deadline >= self.lease_duration {
            return Err(format!(
                "the renew deadline ({:?}) must be shorter than the lease duration ({:?}), or two leaders could overlap",
                self.renew_deadline, self.lease_duration
            ));
        }
        if self.retry_period.is_zero() || self.retry_period >= self.renew_deadline {
            return Err(format!(
                "the retry period ({:?}) must be above zero and shorter than the renew deadline ({:?})",
                self.retry_period, self.renew_deadline
            ));
        }
        Ok(())
    }

    /// `lease_duration` in whole seconds, as the Lease stores it.
    fn lease_seconds(&self) -> i32 {
        let s = self.lease_duration.as_secs() + u64::from(self.lease_duration.subsec_nanos() > 0);
        i32::try_from(s).unwrap_or(i32::MAX)
    }

    /// Longest time from a crash of the leader to a standby leading.
    pub fn crash_failover_bound(&self) -> Duration {
        Duration::from_secs(self.lease_seconds() as u64) + self.retry_period
    }
}

/// The identity of this process in the Lease: `POD_NAME`, else
/// `<hostname>_<pid>`.
pub fn default_identity() -> String {
    identity_from(
        std::env::var("POD_NAME").ok(),
        std::fs::read_to_string("/proc/sys/kernel/hostname").ok(),
        std::process::id(),
    )
}

fn identity_from(pod: Option<String>, hostname: Option<String>, pid: u32) -> String {
    if let Some(p) = pod.map(|p| p.trim().to_string()).filter(|p| !p.is_empty()) {
        return p;
    }
    let host = hostname
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}_{pid}")
}

/// Errors of leader election.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The timing cannot guarantee one leader.
    #[error("invalid leader election timing: {0}")]
    Timing(String),
}

/// A candidate for the leadership of one Lease.
#[derive(Clone)]
pub struct LeaderElector {
    api: Api<Lease>,
    namespace: String,
    name: String,
    identity: String,
    timing: LeaseTiming,
}

impl std::fmt::Debug for LeaderElector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderElector")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("identity", &self.identity)
            .field("timing", &self.timing)
            .finish_non_exhaustive()
    }
}

/// What a candidate does with the Lease it just read.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// There is no Lease: create it.
    Create,
    /// Take it (replace, guarded by its resourceVersion). `transition` when
    /// the holder changes.
    Take { transition: bool },
    /// Someone else holds it: look again after this long.
    Wait(Duration),
}

/// How one acquisition attempt ended.
#[derive(Debug)]
enum Attempt {
    /// We hold the Lease; the winning write was sent at `sent`.
    Won { lease: Box<Lease>, sent: Instant },
    /// Someone else holds it: look again after `wait`.
    Held { holder: String, wait: Duration },
    /// Another candidate wrote first: look again at once.
    Raced,
}

/// The last record of the Lease a candidate saw, and when it first saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Observed {
    record: (Option<String>, Option<String>, Option<String>),
    since: Instant,
}

fn record_of(lease: &Lease) -> (Option<String>, Option<String>, Option<String>) {
    let spec = lease.spec.as_ref();
    (
        spec.and_then(|s| s.holder_identity.clone()),
        spec.and_then(|s| s.renew_time.as_ref())
            .map(|t| t.0.to_string()),
        lease.metadata.resource_version.clone(),
    )
}

/// Decides what to do with the Lease as read at `now`; updates `seen`.
/// Pure: the whole expiry rule is here.
fn assess(
    lease: Option<&Lease>,
    me: &str,
    seen: &mut Option<Observed>,
    now: Instant,
    retry: Duration,
) -> Step {
    let Some(lease) = lease else {
        *seen = None;
        return Step::Create;
    };
    let spec = lease.spec.as_ref();
    let holder = spec
        .and_then(|s| s.holder_identity.as_deref())
        .filter(|h| !h.is_empty());
    match holder {
        None => return Step::Take { transition: true },
        Some(h) if h == me => return Step::Take { transition: false },
        Some(_) => {}
    }
    let record = record_of(lease);
    let since = match seen {
        Some(o) if o.record == record => o.since,
        _ => {
            *seen = Some(Observed { record, since: now });
            now
        }
    };
    let duration = Duration::from_secs(
        spec.and_then(|s| s.lease_duration_seconds)
            .unwrap_or(15)
            .max(1) as u64,
    );
    let expires = since + duration;
    if now >= expires {
        Step::Take { transition: true }
    } else {
        // Look again at the expiry exactly, so a crash costs at most one
        // retry period on top of the lease duration.
        Step::Wait(retry.min(expires - now))
    }
}

impl LeaderElector {
    /// A candidate for the Lease `namespace/name` as `identity`.
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: String,
        timing: LeaseTiming,
    ) -> Result<Self, Error> {
        timing.validate().map_err(Error::Timing)?;
        Ok(Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            name: name.to_string(),
            identity,
            timing,
        })
    }

    /// This candidate's identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Waits until this candidate holds the Lease, then keeps renewing it in
    /// the background. `None` when `shutdown` fires first.
    pub async fn acquire(&self, shutdown: &CancellationToken) -> Option<Leadership> {
        let lease_ref = format!("{}/{}", self.namespace, self.name);
        let mut seen: Option<Observed> = None;
        let mut last_holder: Option<String> = None;
        let mut last_error: Option<String> = None;
        loop {
            let wait = match self.try_acquire(&mut seen).await {
                Ok(Attempt::Won { lease, sent }) => {
                    tracing::info!(lease = %lease_ref, identity = %self.identity, "became the leader");
                    return Some(self.lead(*lease, sent));
                }
                Ok(Attempt::Held { holder, wait }) => {
                    if last_holder.as_deref() != Some(holder.as_str()) {
                        tracing::info!(
                            lease = %lease_ref,
                            holder = %holder,
                            identity = %self.identity,
                            "standing by: another controller holds the lease"
                        );
                        last_holder = Some(holder);
                    }
                    last_error = None;
                    wait
                }
                Ok(Attempt::Raced) => Duration::ZERO,
                Err(e) => {
                    let msg = e.to_string();
                    if last_error.as_deref() != Some(msg.as_str()) {
                        tracing::warn!(lease = %lease_ref, error = %msg, "cannot acquire the lease; retrying");
                        last_error = Some(msg);
                    }
                    self.timing.retry_period
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return None,
            }
        }
    }

    /// One acquisition attempt.
    async fn try_acquire(&self, seen: &mut Option<Observed>) -> Result<Attempt, kube::Error> {
        let current = self.api.get_opt(&self.name).await?;
        let now = Instant::now();
        match assess(
            current.as_ref(),
            &self.identity,
            seen,
            now,
            self.timing.retry_period,
        ) {
            Step::Create => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        namespace: Some(self.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec(None, true)),
                };
                let sent = Instant::now();
                match self.api.create(&PostParams::default(), &lease).await {
                    Ok(lease) => Ok(Attempt::Won {
                        lease: Box::new(lease),
                        sent,
                    }),
                    // Another candidate created it first.
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Raced),
                    Err(e) => Err(e),
                }
            }
            Step::Take { transition } => {
                let mut lease = current.expect("assess takes only an existing Lease");
                let old = lease.spec.take();
                let mut spec = self.spec(old.as_ref(), transition);
                if !transition {
                    // Still ours (a restart with the same identity): keep
                    // the term's acquire time.
                    spec.acquire_time = old.as_ref().and_then(|o| o.acquire_time.clone());
                }
                lease.spec = Some(spec);
                let sent = Instant::now();
                match self
                    .api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
                {
                    Ok(lease) => Ok(Attempt::Won {
                        lease: Box::new(lease),
                        sent,
                    }),
                    // Changed since we read it (another candidate won).
                    Err(kube::Error::Api(e)) if e.code == 409 => {
                        *seen = None;
                        Ok(Attempt::Raced)
                    }
                    Err(e) => Err(e),
                }
            }
            Step::Wait(wait) => Ok(Attempt::Held {
                holder: current
                    .and_then(|l| l.spec)
                    .and_then(|s| s.holder_identity)
                    .unwrap_or_default(),
                wait,
            }),
        }
    }

    /// The spec that makes us the holder, now. `acquired`: a new term
    /// (acquire time now, transitions + 1 unless the Lease is new).
    fn spec(&self, old: Option<&LeaseSpec>, acquired: bool) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        let transitions = old.and_then(|o| o.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.timing.lease_seconds()),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: Some(if acquired && old.is_some() {
                transitions + 1
            } else {
                transitions
            }),
            ..LeaseSpec::default()
        }
    }

    /// Starts renewing `lease`, which we hold.
    fn lead(&self, lease: Lease, sent: Instant) -> Leadership {
        let lost = CancellationToken::new();
        let stop = CancellationToken::new();
        let task = tokio::spawn(
            self.clone()
                .renew_loop(lease, sent, lost.clone(), stop.clone()),
        );
        Leadership {
            lost,
            stop,
            task: Some(task),
        }
    }

    async fn renew_loop(
        self,
        mut lease: Lease,
        acquired: Instant,
        lost: CancellationToken,
        stop: CancellationToken,
    ) {
        // Counted from when the last successful write was sent: the Lease
        // changed no earlier than that, so no candidate can take over
        // before this + lease duration.
        let mut renewed_at = acquired;
        let lease_ref = format!("{}/{}", self.namespace, self.name);
        loop {
            let deadline = renewed_at + self.timing.renew_deadline;
            tokio::select! {
                _ = stop.cancelled() => {
                    self.release(lease).await;
                    return;
                }
                _ = tokio::time::sleep(self.timing.retry_period) => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
            let sent = Instant::now();
            let outcome = tokio::select! {
                r = self.renew(&mut lease) => Some(r),
                _ = tokio::time::sleep_until(deadline) => None,
                _ = stop.cancelled() => {
                    self.release(lease).await;
                    return;
                }
            };
            match outcome {
                Some(Ok(true)) => renewed_at = sent,
                Some(Ok(false)) => {
                    let holder = lease
                        .spec
                        .as_ref()
                        .and_then(|s| s.holder_identity.clone())
                        .unwrap_or_default();
                    tracing::error!(lease = %lease_ref, holder = %holder, identity = %self.identity, "lost the lease: another controller holds it");
                    lost.cancel();
                    return;
                }
                Some(Err(e)) => {
                    tracing::warn!(lease = %lease_ref, error = %e, "renewing the lease failed; retrying");
                }
                None => {}
            }
            if Instant::now() >= renewed_at + self.timing.renew_deadline {
                tracing::error!(
                    lease = %lease_ref,
                    identity = %self.identity,
                    "lost the lease: no successful renew within the renew deadline ({:?})",
                    self.timing.renew_deadline
                );
                lost.cancel();
                return;
            }
        }
    }

    /// Renews `lease` (our last written copy). `Ok(false)`: someone else
    /// holds it now (then `lease` is what they wrote). An error is worth
    /// retrying until the renew deadline.
    async fn renew(&self, lease: &mut Lease) -> Result<bool, RenewError> {
        for _ in 0..2 {
            let mut next = lease.clone();
            if let Some(s) = next.spec.as_mut() {
                s.renew_time = Some(MicroTime(Timestamp::now()));
                s.lease_duration_seconds = Some(self.timing.lease_seconds());
            }
            match self
                .api
                .replace(&self.name, &PostParams::default(), &next)
                .await
            {
                Ok(l) => {
                    *lease = l;
                    return Ok(true);
                }
                Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {
                    // Changed (or deleted) behind our back: whose is it?
                    match self
                        .api
                        .get_opt(&self.name)
                        .await
                        .map_err(RenewError::from)?
                    {
                        Some(l)
                            if l.spec.as_ref().and_then(|s| s.holder_identity.as_deref())
                                == Some(self.identity.as_str()) =>
                        {
                            // Still ours (someone edited a label): renew
                            // that version.
                            *lease = l;
                        }
                        Some(l) => {
                            *lease = l;
                            return Ok(false);
                        }
                        None => {
                            lease.spec = None;
                            return Ok(false);
                        }
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(RenewError::Contended)
    }

    /// Gives the Lease up so a standby takes over at once: clears the
    /// holder, guarded by the version we last wrote (or a newer one that is
    /// still ours: a renew may have been cut short after it was sent).
    async fn release(&self, lease: Lease) {
        let lease_ref = format!("{}/{}", self.namespace, self.name);
        let attempt = async {
            let mut lease = lease;
            for _ in 0..2 {
                let mut next = lease.clone();
                if let Some(s) = next.spec.as_mut() {
                    s.holder_identity = None;
                    s.lease_duration_seconds = Some(1);
                    s.renew_time = Some(MicroTime(Timestamp::now()));
                }
                match self
                    .api
                    .replace(&self.name, &PostParams::default(), &next)
                    .await
                {
                    Ok(_) => return Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => {
                        match self.api.get_opt(&self.name).await? {
                            Some(l)
                                if l.spec.as_ref().and_then(|s| s.holder_identity.as_deref())
                                    == Some(self.identity.as_str()) =>
                            {
                                lease = l;
                            }
                            _ => return Ok(false),
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(false)
        };
        match tokio::time::timeout(self.timing.renew_deadline, attempt).await {
            Ok(Ok(true)) => {
                tracing::info!(lease = %lease_ref, identity = %self.identity, "released the lease");
            }
            Ok(Ok(false)) => {
                tracing::info!(lease = %lease_ref, identity = %self.identity, "the lease is no longer ours; nothing to release");
            }
            Ok(Err(e)) => {
                tracing::warn!(lease = %lease_ref, error = %e, "releasing the lease failed; a standby takes over when it expires");
            }
            Err(_) => {
                tracing::warn!(lease = %lease_ref, "releasing the lease timed out; a standby takes over when it expires");
            }
        }
    }
}

/// Why a renew did not go through (it is retried until the deadline).
#[derive(Debug, thiserror::Error)]
enum RenewError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("the lease kept changing while still ours")]
    Contended,
}

/// Holding the Lease. Renewed in the background until [`Leadership::release`]
/// or until it is lost.
#[derive(Debug)]
pub struct Leadership {
    lost: CancellationToken,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Leadership {
    /// Resolves when the leadership is lost: the renew deadline passed
    /// without a successful renew, or another candidate holds the Lease.
    /// From then on this process must not act as the leader.
    pub async fn lost(&self) {
        self.lost.cancelled().await;
    }

    /// Whether the leadership is lost.
    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// Stops renewing and releases the Lease (call only once the work that
    /// needed it has stopped), so a standby takes over without waiting for
    /// the lease to expire.
    pub async fn release(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        // Dropped without release: stop renewing; the Lease expires.
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, renew: &str, rv: &str, secs: i32) -> Lease {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "l", "namespace": "n", "resourceVersion": rv},
            "spec": {
                "holderIdentity": holder,
                "leaseDurationSeconds": secs,
                "renewTime": renew,
            },
        }))
        .unwrap()
    }

    const T0: &str = "2024-01-01T00:00:00.000000Z";
    const T1: &str = "2024-01-01T00:00:02.000000Z";
    const RETRY: Duration = Duration::from_secs(2);

    #[test]
    fn a_missing_lease_is_created() {
        let mut seen = None;
        assert_eq!(
            assess(None, "me", &mut seen, Instant::now(), RETRY),
            Step::Create
        );
    }

    #[test]
    fn a_released_or_own_lease_is_taken_at_once() {
        let mut seen = None;
        let now = Instant::now();
        let released = lease(None, T0, "1", 1);
        assert_eq!(
            assess(Some(&released), "me", &mut seen, now, RETRY),
            Step::Take { transition: true }
        );
        let mine = lease(Some("me"), T0, "1", 15);
        assert_eq!(
            assess(Some(&mine), "me", &mut seen, now, RETRY),
            Step::Take { transition: false }
        );
        let empty = lease(Some(""), T0, "1", 15);
        assert_eq!(
            assess(Some(&empty), "me", &mut seen, now, RETRY),
            Step::Take { transition: true }
        );
    }

    #[test]
    fn a_held_lease_is_taken_only_after_it_stayed_unchanged_for_its_duration() {
        let mut seen = None;
        let t = Instant::now();
        let held = lease(Some("other"), T0, "1", 15);
        // First sight: wait, however old its renewTime looks (clocks of
        // other machines are not trusted).
        assert_eq!(
            assess(Some(&held), "me", &mut seen, t, RETRY),
            Step::Wait(RETRY)
        );
        assert_eq!(
            assess(
                Some(&held),
                "me",
                &mut seen,
                t + Duration::from_secs(14),
                RETRY
            ),
            Step::Wait(Duration::from_secs(1)),
            "the next look is at the expiry, not a whole retry period later"
        );
        // Renewed: the clock starts again.
        let renewed = lease(Some("other"), T1, "2", 15);
        assert_eq!(
            assess(
                Some(&renewed),
                "me",
                &mut seen,
                t + Duration::from_secs(14),
                RETRY
            ),
            Step::Wait(RETRY)
        );
        assert_eq!(
            assess(
                Some(&renewed),
                "me",
                &mut seen,
                t + Duration::from_secs(28),
                RETRY
            ),
            Step::Wait(Duration::from_secs(1))
        );
        assert_eq!(
            assess(
                Some(&renewed),
                "me",
                &mut seen,
                t + Duration::from_secs(29),
                RETRY
            ),
            Step::Take { transition: true }
        );
    }

    #[test]
    fn the_lease_duration_of_the_record_counts_not_ours() {
        let mut seen = None;
        let t = Instant::now();
        let held = lease(Some("other"), T0, "1", 60);
        assess(Some(&held), "me", &mut seen, t, RETRY);
        assert!(matches!(
            assess(
                Some(&held),
                "me",
                &mut seen,
                t + Duration::from_secs(30),
                RETRY
            ),
            Step::Wait(_)
        ));
    }

    #[test]
    fn timing_must_leave_room_for_one_leader() {
        assert!(LeaseTiming::default().validate().is_ok());
        let bad = LeaseTiming {
            renew_deadline: Duration::from_secs(15),
            ..LeaseTiming::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .contains("shorter than the lease")
        );
        let bad = LeaseTiming {
            retry_period: Duration::from_secs(10),
            ..LeaseTiming::default()
        };
        assert!(bad.validate().is_err());
        assert_eq!(
            LeaseTiming::default().crash_failover_bound(),
            Duration::from_secs(17)
        );
        let short = LeaseTiming {
            lease_duration: Duration::from_millis(2500),
            renew_deadline: Duration::from_secs(2),
            retry_period: Duration::from_millis(500),
        };
        assert_eq!(short.lease_seconds(), 3);
    }

    #[test]
    fn identity_is_the_pod_name_else_host_and_pid() {
        assert_eq!(
            identity_from(Some("ctl-7f9".into()), Some("h\n".into()), 4),
            "ctl-7f9"
        );
        assert_eq!(
            identity_from(Some(" ".into()), Some("h\n".into()), 4),
            "h_4"
        );
        assert_eq!(identity_from(None, None, 4), "localhost_4");
    }
}
