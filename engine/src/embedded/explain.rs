//! `krt explain FILE JOB`: for each node of a job, say whether it would be
//! served from the step cache and, if not, what changed since the node's
//! last recorded run: step text, env keys, input artifacts (old and new
//! digests), source files.
//!
//! Needs' outputs and artifacts come from the workflow's latest recorded
//! run, so the job renders exactly as a rerun would render it.

use std::collections::HashMap;

use kruntimes_runtime::Digest;
use kruntimes_runtime::cas::{EntryKind, Store};

use super::cache::{self, Miss};
use super::driver::{NodeReport, prepare};
use super::record;
use super::source;
use crate::plan::Plan;
use crate::plan::render::resolve_params;

/// The verdict for one node.
#[derive(Debug, Clone)]
pub struct Explanation {
    /// Display name.
    pub display: String,
    /// True when the current action has a valid cache record.
    pub hit: bool,
    /// What changed, one item per difference (empty for a hit).
    pub changes: Vec<String>,
}

async fn files(store: &Store, tree: Option<&str>) -> Option<Vec<(String, Digest)>> {
    let d: Digest = tree?.parse().ok()?;
    let m = store.get_manifest(&d).await.ok()?;
    Some(
        m.entries
            .into_iter()
            .filter(|e| e.kind == EntryKind::File)
            .filter_map(|e| Some((e.path, e.digest?)))
            .collect(),
    )
}

/// Explains every node of `job`.
pub async fn explain(
    plan: &Plan,
    store: &Store,
    params: &[(String, String)],
    source_root: &std::path::Path,
    job: &str,
) -> Result<Vec<Explanation>, String> {
    let (job_id, _) = plan.job(job).ok_or_else(|| {
        format!(
            "the workflow has no job `{job}` (jobs: {})",
            plan.jobs
                .iter()
                .map(|j| j.key.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let params = resolve_params(plan, params).map_err(|e| e.join("\n"))?;
    let src = source::snapshot(store, source_root).await?;
    let last = record::load(store, &plan.name).await.ok();
    let local: HashMap<usize, usize> = (0..plan.nodes.len()).map(|n| (n, n)).collect();
    let reports: Vec<Option<NodeReport>> = plan
        .nodes
        .iter()
        .map(|n| {
            let j = last.as_ref()?.jobs.iter().find(|j| j.node == n.name)?;
            Some(NodeReport {
                node: j.node.clone(),
                display: j.display.clone(),
                result: j.result?,
                cached: j.cached,
                attempts: j.attempts,
                duration_ms: j.duration_ms,
                outputs: j.outputs.clone(),
                artifacts: j.artifacts.clone(),
                log: j.log,
                message: j.message.clone(),
            })
        })
        .collect();
    let run_id = last
        .as_ref()
        .map_or_else(|| "explain".to_string(), |r| r.id.clone());
    let mut narrowed = HashMap::new();
    let mut out = Vec::new();
    for &n in &plan.jobs[job_id].nodes {
        let display = plan.nodes[n].display.clone();
        let (action, _) = match prepare(
            plan,
            store,
            &local,
            &reports,
            n,
            &params,
            &run_id,
            src,
            &mut narrowed,
            1,
            super::driver::HOST_POOL,
        )
        .await
        {
            Ok(x) => x,
            Err(e) => {
                out.push(Explanation {
                    display,
                    hit: false,
                    changes: vec![format!(
                        "cannot render the job without its needs' latest results: {e}"
                    )],
                });
                continue;
            }
        };
        if !plan.jobs[job_id].cache {
            out.push(Explanation {
                display,
                hit: false,
                changes: vec!["`cache: false`: this job always runs".into()],
            });
            continue;
        }
        match cache::lookup(store, &action.key()).await {
            Ok(_) => {
                out.push(Explanation {
                    display,
                    hit: true,
                    changes: Vec::new(),
                });
                continue;
            }
            Err(Miss::Broken(why)) => {
                out.push(Explanation {
                    display,
                    hit: false,
                    changes: vec![format!("a cache record exists but is unusable: {why}")],
                });
                continue;
            }
            Err(Miss::Absent) => {}
        }
        let changes = match cache::last_action(store, &plan.name, &plan.nodes[n].name).await? {
            None => vec!["no earlier run of this job is recorded in this store".into()],
            Some(old) => {
                let old_files = files(store, old.source.as_deref()).await;
                let new_files = files(store, action.source.as_deref()).await;
                let c = cache::explain(&old, &action, old_files.as_deref(), new_files.as_deref());
                if c.is_empty() {
                    vec!["the action is unchanged, but its last run did not succeed (only successes are cached)".into()]
                } else {
                    c
                }
            }
        };
        out.push(Explanation {
            display,
            hit: false,
            changes,
        });
    }
    Ok(out)
}
