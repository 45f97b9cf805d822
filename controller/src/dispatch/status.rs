//! Writes Run status with server-side apply under one field manager.
//! Latest wins: a writer always applies the newest status it was given, so a
//! fast Run may go from Scheduled straight to Succeeded in fewer writes.

use std::sync::Arc;
use std::time::Duration;

use kruntimes_crds::{Run, RunStatus};
use kube::Api;
use kube::api::{Patch, PatchParams};
use tokio::sync::watch;

use crate::names::MANAGER;

/// How long a non-final status waits for a newer one.
const COALESCE: std::time::Duration = std::time::Duration::from_millis(50);

fn final_phase(s: &RunStatus) -> bool {
    use kruntimes_crds::RunPhase::*;
    matches!(s.phase, Some(Succeeded | Failed | TimedOut | Cancelled))
}

/// Handle to a Run's status writer.
#[derive(Debug)]
pub(crate) struct StatusWriter {
    tx: watch::Sender<Option<Arc<RunStatus>>>,
    task: tokio::task::JoinHandle<()>,
}

impl StatusWriter {
    pub(crate) fn start(client: kube::Client, ns: String, name: String) -> Self {
        let (tx, mut rx) = watch::channel::<Option<Arc<RunStatus>>>(None);
        let task = tokio::spawn(async move {
            let api: Api<Run> = Api::namespaced(client, &ns);
            let pp = PatchParams::apply(MANAGER).force();
            loop {
                if rx.changed().await.is_err() {
                    // The sender is gone; everything it sent was written.
                    return;
                }
                let Some(mut status) = rx.borrow_and_update().clone() else {
                    continue;
                };
                // A Run that is not over yet may be about to move on: wait
                // briefly so Scheduled -> Running -> done of a short Run
                // costs one write, not three. Final states go out at once.
                // The wait ends as soon as a final state arrives.
                let deadline = tokio::time::Instant::now() + 2 * COALESCE;
                while !final_phase(&status) {
                    match tokio::time::timeout_at(deadline, rx.changed()).await {
                        Ok(Ok(())) => {
                            if let Some(newer) = rx.borrow_and_update().clone() {
                                status = newer;
                            }
                        }
                        // Time is up, or the sender is gone: write what we have.
                        Ok(Err(_)) | Err(_) => break,
                    }
                }
                let patch = serde_json::json!({
                    "apiVersion": "kruntimes.io/v1alpha1",
                    "kind": "Run",
                    "status": &*status,
                });
                let mut delay = Duration::from_millis(100);
                loop {
                    match api.patch_status(&name, &pp, &Patch::Apply(&patch)).await {
                        Ok(_) => break,
                        Err(kube::Error::Api(e)) if e.code == 404 => return,
                        Err(kube::Error::Api(e)) if e.code == 422 || e.code == 400 => {
                            // Retrying the same status cannot help. Keep the
                            // Run's lifecycle visible with what is safe.
                            tracing::error!(run = %name, namespace = %ns, error = %e.message, "the API server rejected a Run status; writing a reduced one");
                            let reduced = RunStatus {
                                phase: status.phase,
                                attempt: status.attempt,
                                pod: status.pod.clone(),
                                scheduled_time: status.scheduled_time.clone(),
                                start_time: status.start_time.clone(),
                                completion_time: status.completion_time.clone(),
                                exit_code: status.exit_code,
                                log_digest: status.log_digest.clone(),
                                attempts: status.attempts.clone(),
                                observed_generation: status.observed_generation,
                                message: Some(format!(
                                    "{} (the full status was rejected by the API server: {})",
                                    status.message.as_deref().unwrap_or(""),
                                    e.message
                                )),
                                ..RunStatus::default()
                            };
                            let patch = serde_json::json!({
                                "apiVersion": "kruntimes.io/v1alpha1",
                                "kind": "Run",
                                "status": reduced,
                            });
                            if let Err(e) =
                                api.patch_status(&name, &pp, &Patch::Apply(&patch)).await
                            {
                                tracing::error!(run = %name, namespace = %ns, error = %e, "the reduced Run status failed too");
                            }
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(run = %name, namespace = %ns, error = %e, "writing Run status failed; retrying");
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(5));
                            // A newer status replaces the one that failed.
                            if rx.has_changed().unwrap_or(false) {
                                break;
                            }
                        }
                    }
                }
            }
        });
        StatusWriter { tx, task }
    }

    /// No more statuses: the returned task ends once the last one is
    /// written (or given up on).
    pub(crate) fn close(self) -> tokio::task::JoinHandle<()> {
        drop(self.tx);
        self.task
    }

    pub(crate) fn set(&self, status: &RunStatus) {
        self.tx.send_replace(Some(Arc::new(status.clone())));
    }
}
