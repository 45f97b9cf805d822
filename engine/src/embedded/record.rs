//! Run records: what `krt runs`, `krt logs` and `krt replay` read. One ref
//! per run (`refs/runs/<id>`) holding the workflow, parameters, source, and
//! for every job its action (the exact rendered job and input digests, as a
//! blob), result, outputs, artifacts and log digest.

use std::collections::BTreeMap;

use bytes::Bytes;
use kruntimes_crds::JobResult;
use kruntimes_runtime::Digest;
use kruntimes_runtime::cas::Store;
use serde::{Deserialize, Serialize};

/// Ref namespace of run records.
pub const NAMESPACE: &str = "runs";

/// One `krt run`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunRecord {
    /// Run id, e.g. `hello-20261126-221503-3fa2`.
    pub id: String,
    /// Workflow name.
    pub workflow: String,
    /// The workflow file as given.
    pub file: String,
    /// Parameter values.
    pub params: BTreeMap<String, serde_json::Value>,
    /// Source tree digest.
    pub source: Option<Digest>,
    /// Start and end, ms since the epoch.
    pub started_ms: u64,
    /// End (0 while running).
    pub finished_ms: u64,
    /// `succeeded`, `failed` or `cancelled`.
    pub result: String,
    /// Per job node, in plan order.
    pub jobs: Vec<JobRecord>,
}

/// One job node of a run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JobRecord {
    /// Node name (`test-2`).
    pub node: String,
    /// Job key.
    pub job: String,
    /// Display name.
    pub display: String,
    /// Final result.
    pub result: Option<JobResult>,
    /// Served from the step cache.
    pub cached: bool,
    /// Attempts made.
    pub attempts: u32,
    /// Digest of the action (rendered job, inputs, source) of the last
    /// attempt.
    pub action: Option<Digest>,
    /// The action itself, when it was not stored as a blob of its own: only
    /// a step-cache record needs the blob, so a run with the cache off keeps
    /// every action in its one record instead of a file per job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_inline: Option<Box<super::cache::Action>>,
    /// Outputs.
    pub outputs: BTreeMap<String, String>,
    /// Artifact tree digests.
    pub artifacts: BTreeMap<String, Digest>,
    /// Full log.
    pub log: Option<Digest>,
    /// Wall time of the last attempt.
    pub duration_ms: u64,
    /// Why it failed or was skipped.
    pub message: Option<String>,
}

/// Stores (or replaces) a run record.
pub async fn save(store: &Store, record: &RunRecord) -> Result<(), String> {
    let bytes = serde_json::to_vec_pretty(record).map_err(|e| e.to_string())?;
    store
        .put_ref(NAMESPACE, &record.id, Bytes::from(bytes))
        .await
        .map_err(|e| format!("failed to store the run record: {e}"))
}

/// Reads a run record by id; `latest` picks the newest run, and a workflow
/// name the newest run of that workflow.
///
/// An exact id wins. A workflow name is matched against the whole run id
/// (`<workflow>-YYYYMMDD-HHMMSS-xxxx`), so `ci` does not pick a run of
/// `ci-nightly`, and names with digits (`k8s`) work too.
pub async fn load(store: &Store, id: &str) -> Result<RunRecord, String> {
    // Only a name a ref can have is looked up as is; anything else (`a/b`)
    // gets the "no recorded run matches" answer below, not a ref-name error.
    let plain = id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    let exact = if id == "latest" || !plain || id.starts_with('.') {
        None
    } else {
        store
            .get_ref(NAMESPACE, id)
            .await
            .map_err(|e| e.to_string())?
    };
    let (name, bytes) = match exact {
        Some(b) => (id.to_string(), b),
        None => {
            let runs = store
                .list_refs(NAMESPACE)
                .await
                .map_err(|e| e.to_string())?;
            let found = runs
                .iter()
                .find(|r| id == "latest" || is_run_of(&r.name, id))
                .ok_or_else(|| {
                    format!(
                        "no recorded run matches `{id}` in {} (hint: `krt runs` lists them)",
                        store.url()
                    )
                })?;
            let bytes = store
                .get_ref(NAMESPACE, &found.name)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("run `{}` vanished from {}", found.name, store.url()))?;
            (found.name.clone(), bytes)
        }
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| format!("the record of run `{name}` is not valid: {e}"))
}

impl JobRecord {
    /// The recorded action: inline, or fetched (and verified) from the store.
    pub async fn load_action(&self, store: &Store) -> Result<Option<super::cache::Action>, String> {
        if let Some(a) = &self.action_inline {
            return Ok(Some((**a).clone()));
        }
        let Some(d) = self.action else {
            return Ok(None);
        };
        let bytes = store
            .get_bytes(&d)
            .await
            .map_err(|e| format!("failed to fetch the recorded action {d}: {e}"))?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("the recorded action {d} is not valid: {e}"))
    }
}

/// The action of `node` in the newest run of `workflow` that ran it
/// (runs that skipped it, or left it out with `--only`, are passed over).
pub async fn latest_action(
    store: &Store,
    workflow: &str,
    node: &str,
) -> Result<Option<super::cache::Action>, String> {
    let runs = store
        .list_refs(NAMESPACE)
        .await
        .map_err(|e| e.to_string())?;
    for r in runs.iter().filter(|r| is_run_of(&r.name, workflow)) {
        let Ok(rec) = load(store, &r.name).await else {
            continue;
        };
        if let Some(j) = rec
            .jobs
            .iter()
            .find(|j| j.node == node && j.action.is_some())
        {
            return j.load_action(store).await;
        }
    }
    Ok(None)
}

/// True when `run_id` is `<workflow>-YYYYMMDD-HHMMSS-xxxx`, the shape the
/// driver gives run ids.
fn is_run_of(run_id: &str, workflow: &str) -> bool {
    let Some(rest) = run_id
        .strip_prefix(workflow)
        .and_then(|r| r.strip_prefix('-'))
    else {
        return false;
    };
    let b = rest.as_bytes();
    b.len() == 20
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 15 => *c == b'-',
            16.. => c.is_ascii_hexdigit(),
            _ => c.is_ascii_digit(),
        })
}

/// `YYYYMMDD-HHMMSS` (UTC) for a time in ms since the epoch.
pub fn timestamp(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil-from-days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_workflow_name_matches_only_its_own_run_ids() {
        assert!(super::is_run_of("ci-20261126-221503-3fa2", "ci"));
        assert!(super::is_run_of("k8s-20261126-221503-3fa2", "k8s"));
        assert!(!super::is_run_of("ci-nightly-20261126-221503-3fa2", "ci"));
        assert!(!super::is_run_of("ci-20261126-221503", "ci"));
        assert!(!super::is_run_of("cix-20261126-221503-3fa2", "ci"));
    }

    #[test]
    fn timestamps_are_utc_calendar_times() {
        assert_eq!(super::timestamp(0), "19700101-000000");
        assert_eq!(super::timestamp(1_795_731_303_000), "20261126-221503");
    }
}
