//! Matrix expansion: one node per cell, with deterministic Kubernetes-safe
//! names and human display names, wired by needs and sorted by level.

use indexmap::IndexMap;
use sha2::{Digest, Sha256};

use super::ast::{MatrixAst, WorkflowAst};
use super::dag;
use super::diag::Diagnostic;
use super::model::{DEFAULT_POOL, DEFAULT_TIMEOUT, Job, Node};
use super::validate::to_dns_label;
use kruntimes_crds::duration::parse_duration;

/// Longest node name: a Kubernetes label value.
const MAX_NODE_NAME: usize = 63;

/// The cells of a matrix, in odometer order (last axis fastest), minus
/// excluded ones.
pub fn cells(m: &MatrixAst) -> Vec<IndexMap<String, serde_json::Value>> {
    let axes: Vec<(&String, Vec<&serde_json::Value>)> = m
        .axes
        .iter()
        .map(|(k, a)| (k, a.values.iter().map(|v| &v.value).collect()))
        .collect();
    if axes.iter().any(|(_, v)| v.is_empty()) {
        return Vec::new();
    }
    let total: usize = axes.iter().map(|(_, v)| v.len()).product();
    let mut out = Vec::with_capacity(total);
    let mut idx = vec![0usize; axes.len()];
    for _ in 0..total {
        let cell: IndexMap<String, serde_json::Value> = axes
            .iter()
            .zip(&idx)
            .map(|((k, vals), &i)| ((*k).clone(), vals[i].clone()))
            .collect();
        let excluded = m.exclude.iter().any(|ex| {
            !ex.value.is_empty()
                && ex
                    .value
                    .iter()
                    .all(|(k, v)| cell.get(k).is_some_and(|c| *c == v.value))
        });
        if !excluded {
            out.push(cell);
        }
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            if idx[d] < axes[d].1.len() {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}

/// A matrix value as people write it: strings bare, others as JSON.
pub fn value_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Deterministic node name for a cell: `job-v1-v2`, with a short hash when
/// the values lose information on the way to a DNS label or are too long.
pub fn node_name(job: &str, cell: &IndexMap<String, serde_json::Value>) -> String {
    if cell.is_empty() {
        return job.to_string();
    }
    let mut lossy = false;
    let mut parts = vec![job.to_string()];
    for v in cell.values() {
        let text = value_text(v);
        let label = to_dns_label(&text);
        lossy |= label != text || label.is_empty();
        if !label.is_empty() {
            parts.push(label);
        }
    }
    let readable = parts.join("-");
    if !lossy && readable.len() <= MAX_NODE_NAME {
        return readable;
    }
    let mut h = Sha256::new();
    h.update(job.as_bytes());
    h.update(serde_json::to_string(cell).unwrap_or_default().as_bytes());
    let hash = hex::encode(h.finalize());
    let keep = MAX_NODE_NAME - 7;
    let head = readable
        .get(..keep.min(readable.len()))
        .unwrap_or(&readable)
        .trim_end_matches('-');
    format!("{head}-{}", &hash[..6])
}

/// Display name: `test (os=linux, shard=2)`.
pub fn display_name(job: &str, cell: &IndexMap<String, serde_json::Value>) -> String {
    if cell.is_empty() {
        return job.to_string();
    }
    let vals: Vec<String> = cell
        .iter()
        .map(|(k, v)| format!("{k}={}", value_text(v)))
        .collect();
    format!("{job} ({})", vals.join(", "))
}

/// Builds jobs and nodes of a validated, acyclic workflow.
pub fn expand(
    wf: &WorkflowAst,
    needs: &[Vec<usize>],
    diags: &mut Vec<Diagnostic>,
) -> (Vec<Job>, Vec<Node>, usize) {
    let levels = dag::levels(needs);
    let mut jobs = Vec::with_capacity(wf.jobs.len());
    let mut pending: Vec<(usize, usize, usize, Node)> = Vec::new();
    for (i, (key, j)) in wf.jobs.iter().enumerate() {
        let timeout = j
            .timeout
            .as_ref()
            .or(wf.defaults.timeout.as_ref())
            .and_then(|t| parse_duration(&t.value).ok())
            .unwrap_or(DEFAULT_TIMEOUT);
        let display = j
            .name
            .as_ref()
            .filter(|n| !n.value.contains("{{"))
            .map_or_else(|| key.clone(), |n| n.value.clone());
        jobs.push(Job {
            key: key.clone(),
            display,
            needs: needs[i].clone(),
            nodes: Vec::new(),
            pool: j
                .pool
                .as_ref()
                .or(wf.defaults.pool.as_ref())
                .map_or_else(|| DEFAULT_POOL.to_string(), |p| p.value.clone()),
            timeout,
            retries: j
                .retries
                .as_ref()
                .or(wf.defaults.retries.as_ref())
                .map_or(0, |r| r.value),
            cache: j.cache.as_ref().is_none_or(|c| c.value),
        });
        let cells = match &j.matrix {
            Some(m) => cells(m),
            None => vec![IndexMap::new()],
        };
        if cells.is_empty()
            && let Some(m) = &j.matrix
        {
            diags.push(
                Diagnostic::error(
                    format!("`exclude` removes every cell of the matrix of job `{key}`"),
                    Some(m.span),
                )
                .with_hint("the job would never run; remove it or loosen `exclude`"),
            );
        }
        for (c, cell) in cells.into_iter().enumerate() {
            pending.push((
                levels[i],
                i,
                c,
                Node {
                    job: i,
                    name: node_name(key, &cell),
                    display: display_name(key, &cell),
                    cell,
                    needs: Vec::new(),
                    level: levels[i],
                },
            ));
        }
    }
    pending.sort_by_key(|(level, job, cell, _)| (*level, *job, *cell));
    let mut nodes: Vec<Node> = pending.into_iter().map(|(.., n)| n).collect();
    for (id, n) in nodes.iter().enumerate() {
        jobs[n.job].nodes.push(id);
    }
    for n in &mut nodes {
        n.needs = jobs[n.job]
            .needs
            .iter()
            .flat_map(|&d| jobs[d].nodes.iter().copied())
            .collect();
    }
    // Names must be unique: a cell name can collide with another job's name.
    let mut by_name: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (id, n) in nodes.iter().enumerate() {
        if let Some(&other) = by_name.get(n.name.as_str()) {
            let (a, b) = (&jobs[nodes[other].job].key, &jobs[n.job].key);
            diags.push(
                Diagnostic::error(
                    format!(
                        "run name `{}` is used by both job `{a}` and job `{b}`",
                        n.name
                    ),
                    Some(wf.jobs[n.job].key),
                )
                .with_hint("matrix cells are named `job-value...`; rename one of the jobs"),
            );
        } else {
            by_name.insert(&n.name, id);
        }
    }
    let critical_path = levels.iter().map(|l| l + 1).max().unwrap_or(0);
    (jobs, nodes, critical_path)
}
