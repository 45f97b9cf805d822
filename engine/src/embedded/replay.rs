//! `krt replay RUN JOB`: run a recorded job again, locally, with exactly the
//! recorded action: the same rendered steps, environment, input digests and
//! source tree. Works from any store URL, so a failure recorded by the
//! cluster in S3 replays on a laptop.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kruntimes_runtime::cas::Store;
use kruntimes_runtime::exec::{Executor, ExecutorConfig, RunEvent, RunRequest, RunResult};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::cache::Action;
use super::record::{self, JobRecord, RunRecord};

/// A recorded job found for replay.
#[derive(Debug, Clone)]
pub struct Found {
    /// The run.
    pub run: RunRecord,
    /// The job node.
    pub job: JobRecord,
    /// Its action.
    pub action: Action,
}

/// Finds the job (by node name, or by job key when it has one node) in a
/// run record and loads its action.
pub async fn find(store: &Store, run_id: &str, job: &str) -> Result<Found, String> {
    let run = record::load(store, run_id).await?;
    let matches: Vec<&JobRecord> = run
        .jobs
        .iter()
        .filter(|j| j.node == job || j.job == job)
        .collect();
    let rec = match matches.as_slice() {
        [one] => (*one).clone(),
        [] => {
            let names: Vec<&str> = run.jobs.iter().map(|j| j.node.as_str()).collect();
            return Err(format!(
                "run `{}` has no job `{job}` (jobs: {})",
                run.id,
                names.join(", ")
            ));
        }
        many => {
            let names: Vec<&str> = many.iter().map(|j| j.node.as_str()).collect();
            return Err(format!(
                "job `{job}` has several matrix cells in run `{}`; name one: {}",
                run.id,
                names.join(", ")
            ));
        }
    };
    let action = rec.load_action(store).await?.ok_or_else(|| {
        format!(
            "job `{}` of run `{}` never ran (it was {}), so there is nothing to replay",
            rec.node,
            run.id,
            rec.result
                .map_or("not started".to_string(), |r| format!("{r:?}")
                    .to_lowercase())
        )
    })?;
    Ok(Found {
        run,
        job: rec,
        action,
    })
}

/// The run request that re-executes an action. Secrets are recorded by
/// name only; their values come from the local environment.
pub fn request(found: &Found, secrets: BTreeMap<String, String>) -> RunRequest {
    let a = &found.action;
    RunRequest {
        id: format!("replay.{}", found.job.node),
        attempt: 1,
        job: a.job.clone(),
        steps: a.steps.clone(),
        env: a.env.clone(),
        secrets,
        source: a.source.clone(),
        inputs: a.inputs.clone(),
        artifacts: a.artifacts.clone(),
        timeout: a.timeout.clone(),
        live_log: false,
    }
}

/// Runs the request in a kept workspace under `work_dir`, sending log lines
/// to `on_log`. Returns the result and the workspace path.
pub async fn execute(
    store: &Store,
    req: RunRequest,
    work_dir: PathBuf,
    mut on_log: impl FnMut(&kruntimes_runtime::exec::LogLine) + Send,
    cancel: CancellationToken,
) -> (RunResult, Option<PathBuf>) {
    let mut config = ExecutorConfig::new(work_dir.clone());
    config.keep_workspaces = true;
    let exec = Executor::new(store.clone(), config);
    let (tx, mut rx) = mpsc::channel::<RunEvent>(256);
    let run = tokio::spawn(async move { exec.execute(req, tx, cancel).await });
    while let Some(ev) = rx.recv().await {
        if let RunEvent::Log(line) = ev {
            on_log(&line);
        }
    }
    let result = run.await.unwrap_or_else(|e| RunResult {
        phase: kruntimes_crds::RunPhase::Failed,
        message: Some(format!("the executor crashed: {e}")),
        ..RunResult::default()
    });
    let ws = std::fs::read_dir(work_dir.join("runs"))
        .ok()
        .and_then(|mut d| d.next())
        .and_then(Result::ok)
        .map(|e| e.path().join("ws"));
    (result, ws)
}
