//! The step cache (action cache): a job whose rendered steps, environment,
//! pool, inputs and source are unchanged is served from its last successful
//! result instead of running.
//!
//! ```text
//! key  = sha256(canonical JSON of Action)          refs/ac/<key hex>
//! value = CacheRecord { outputs, artifacts, log digest, exit code, action digest }
//! ```
//!
//! The key hashes secrets by name only. A record is trusted only after the
//! objects it names are found (and manifests verified); otherwise it is a
//! miss, reported with the reason.

use std::collections::BTreeMap;

use bytes::Bytes;
use kruntimes_crds::{RunInput, RunStep};
use kruntimes_runtime::Digest;
use kruntimes_runtime::cas::{EntryKind, Store};
use serde::{Deserialize, Serialize};

/// Bumped whenever the key's meaning changes, invalidating old entries.
pub const CACHE_VERSION: u32 = 1;
/// Ref namespace of cache records.
pub const NAMESPACE: &str = "ac";

/// Everything that decides what a job does: the cache key is its hash.
/// It is also what `krt replay` re-runs and what `krt explain` compares.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Action {
    /// Cache format.
    pub version: u32,
    /// Job key and node name.
    pub job: String,
    /// Node (matrix cell) name.
    pub node: String,
    /// Where it runs: `host` in embedded mode, the pool's image in cluster mode.
    pub pool: String,
    /// Rendered steps (scripts, shells, step env with interpolated values).
    pub steps: Vec<RunStep>,
    /// Job environment.
    pub env: BTreeMap<String, String>,
    /// Secret environment variables, by name only.
    pub secret_names: Vec<String>,
    /// Input artifacts with their tree digests.
    pub inputs: Vec<RunInput>,
    /// Declared artifacts (name -> path or glob).
    pub artifacts: BTreeMap<String, String>,
    /// Source tree digest (narrowed to the job's `source:` globs).
    pub source: Option<String>,
    /// Time limit of an attempt.
    pub timeout: Option<String>,
}

impl Action {
    /// The canonical bytes: serde_json of a struct with sorted maps.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an action serialises")
    }

    /// The cache key.
    pub fn key(&self) -> Digest {
        Digest::of(&self.to_bytes())
    }
}

/// A successful result worth reusing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CacheRecord {
    /// The key this answers.
    pub key: Digest,
    /// The action blob (for `krt explain`).
    pub action: Digest,
    /// `$KRT_OUTPUT` values.
    pub outputs: BTreeMap<String, String>,
    /// Artifact tree digests.
    pub artifacts: BTreeMap<String, Digest>,
    /// The log of the run that produced it.
    pub log: Option<Digest>,
    /// Run that produced it.
    pub run_id: String,
    /// Its duration.
    pub duration_ms: u64,
    /// When it was recorded (ms since the epoch).
    pub created_ms: u64,
}

/// Why a lookup did not hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Miss {
    /// No record for this key.
    Absent,
    /// A record exists but its objects are missing or corrupt.
    Broken(String),
}

/// Looks a key up and verifies the objects the record names.
pub async fn lookup(store: &Store, key: &Digest) -> Result<CacheRecord, Miss> {
    let bytes = match store.get_ref(NAMESPACE, &key.hex()).await {
        Ok(Some(b)) => b,
        Ok(None) => return Err(Miss::Absent),
        Err(e) => return Err(Miss::Broken(format!("cannot read the cache record: {e}"))),
    };
    let record: CacheRecord = serde_json::from_slice(&bytes)
        .map_err(|e| Miss::Broken(format!("the cache record is not valid: {e}")))?;
    if record.key != *key {
        return Err(Miss::Broken("the cache record answers another key".into()));
    }
    for (name, tree) in &record.artifacts {
        let manifest = store
            .get_manifest(tree)
            .await
            .map_err(|e| Miss::Broken(format!("artifact `{name}` of the cached result: {e}")))?;
        for entry in &manifest.entries {
            if entry.kind != EntryKind::File {
                continue;
            }
            let Some(d) = entry.digest else { continue };
            match store.contains(&d).await {
                Ok(true) => {}
                Ok(false) => {
                    return Err(Miss::Broken(format!(
                        "artifact `{name}` of the cached result: blob {d} of `{}` is missing from the store",
                        entry.path
                    )));
                }
                Err(e) => return Err(Miss::Broken(format!("artifact `{name}`: {e}"))),
            }
        }
    }
    if let Some(log) = &record.log
        && !store.contains(log).await.unwrap_or(false)
    {
        return Err(Miss::Broken(format!(
            "the log {log} of the cached result is missing"
        )));
    }
    Ok(record)
}

/// Stores a record (only for successful runs).
pub async fn save(store: &Store, record: &CacheRecord) -> Result<(), String> {
    let bytes = serde_json::to_vec(record).map_err(|e| e.to_string())?;
    store
        .put_ref(NAMESPACE, &record.key.hex(), Bytes::from(bytes))
        .await
        .map_err(|e| format!("failed to store the cache record: {e}"))
}

/// The action a node last ran with: from the newest run record of the
/// workflow that ran it. Run records already hold this, so no separate
/// "last action" state is kept.
pub async fn last_action(
    store: &Store,
    workflow: &str,
    node: &str,
) -> Result<Option<Action>, String> {
    super::record::latest_action(store, workflow, node).await
}

/// What changed between two actions, as lines a person reads.
pub fn explain(
    old: &Action,
    new: &Action,
    old_source: Option<&[(String, Digest)]>,
    new_source: Option<&[(String, Digest)]>,
) -> Vec<String> {
    let mut out = Vec::new();
    if old.version != new.version {
        out.push(format!(
            "the cache format changed (version {} -> {})",
            old.version, new.version
        ));
    }
    if old.pool != new.pool {
        out.push(format!("pool: `{}` -> `{}`", old.pool, new.pool));
    }
    let n = old.steps.len().max(new.steps.len());
    for i in 0..n {
        match (old.steps.get(i), new.steps.get(i)) {
            (Some(a), Some(b)) if a == b => {}
            (Some(a), Some(b)) => {
                if a.run != b.run {
                    out.push(format!(
                        "step {}: script changed:\n    - {}\n    + {}",
                        i + 1,
                        a.run.replace('\n', "\n      "),
                        b.run.replace('\n', "\n      ")
                    ));
                }
                if a.shell != b.shell {
                    out.push(format!(
                        "step {}: shell {:?} -> {:?}",
                        i + 1,
                        a.shell,
                        b.shell
                    ));
                }
                diff_env(&format!("step {} env", i + 1), &a.env, &b.env, &mut out);
                if a.timeout != b.timeout {
                    out.push(format!(
                        "step {}: timeout {:?} -> {:?}",
                        i + 1,
                        a.timeout,
                        b.timeout
                    ));
                }
            }
            (Some(_), None) => out.push(format!("step {} was removed", i + 1)),
            (None, Some(_)) => out.push(format!("step {} was added", i + 1)),
            (None, None) => {}
        }
    }
    diff_env("env", &old.env, &new.env, &mut out);
    if old.secret_names != new.secret_names {
        out.push(format!(
            "secrets: {:?} -> {:?}",
            old.secret_names, new.secret_names
        ));
    }
    let old_in: BTreeMap<&str, &RunInput> =
        old.inputs.iter().map(|i| (i.name.as_str(), i)).collect();
    let new_in: BTreeMap<&str, &RunInput> =
        new.inputs.iter().map(|i| (i.name.as_str(), i)).collect();
    for (k, b) in &new_in {
        match old_in.get(k) {
            None => out.push(format!("input `{k}` was added")),
            Some(a) if a.digest != b.digest => {
                out.push(format!("input `{k}` changed: {} -> {}", a.digest, b.digest))
            }
            _ => {}
        }
    }
    for k in old_in.keys() {
        if !new_in.contains_key(k) {
            out.push(format!("input `{k}` was removed"));
        }
    }
    if old.artifacts != new.artifacts {
        out.push(format!(
            "declared artifacts: {:?} -> {:?}",
            old.artifacts, new.artifacts
        ));
    }
    if old.timeout != new.timeout {
        out.push(format!("timeout: {:?} -> {:?}", old.timeout, new.timeout));
    }
    if old.source != new.source {
        let mut line = "source files changed".to_string();
        if let (Some(a), Some(b)) = (old_source, new_source) {
            let a: BTreeMap<&str, &Digest> = a.iter().map(|(p, d)| (p.as_str(), d)).collect();
            let b: BTreeMap<&str, &Digest> = b.iter().map(|(p, d)| (p.as_str(), d)).collect();
            let mut files = Vec::new();
            for (p, d) in &b {
                match a.get(p) {
                    None => files.push(format!("+ {p}")),
                    Some(x) if x != d => files.push(format!("~ {p}")),
                    _ => {}
                }
            }
            for p in a.keys() {
                if !b.contains_key(p) {
                    files.push(format!("- {p}"));
                }
            }
            if !files.is_empty() {
                line.push_str(":\n    ");
                line.push_str(&files.join("\n    "));
            }
        }
        out.push(line);
    }
    out
}

fn diff_env(
    what: &str,
    a: &BTreeMap<String, String>,
    b: &BTreeMap<String, String>,
    out: &mut Vec<String>,
) {
    for (k, v) in b {
        match a.get(k) {
            None => out.push(format!("{what}: `{k}` was added")),
            Some(x) if x != v => out.push(format!("{what}: `{k}` changed: `{x}` -> `{v}`")),
            _ => {}
        }
    }
    for k in a.keys() {
        if !b.contains_key(k) {
            out.push(format!("{what}: `{k}` was removed"));
        }
    }
}
