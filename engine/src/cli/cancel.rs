//! `krt cancel WORKFLOW`: cancel a Workflow on a cluster.

use kube::api::{Patch, PatchParams};

use super::Exit;
use super::store::{error, runtime};
use crate::cluster::client::{self, ClusterArgs};

/// Cancel a Workflow on a cluster: its running Runs are stopped (SIGTERM,
/// then SIGKILL after the grace period) and the jobs that have not started
/// are skipped; the Workflow ends `Cancelled`. Sets `spec.cancel: true`,
/// which `kubectl patch` can do as well.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  krt cancel ci-x7k2p
  krt cancel ci-x7k2p --wait        return once it has ended")]
pub struct Args {
    /// Workflow name (see `krt get workflows`).
    pub workflow: String,
    /// Wait until the Workflow has ended.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

pub fn run(args: Args) -> Exit {
    let rt = match runtime() {
        Ok(r) => r,
        Err(e) => {
            error(e);
            return Exit::Internal;
        }
    };
    let result = rt.block_on(async {
        let target = client::connect(&args.cluster).await?;
        let patch = serde_json::json!({"spec": {"cancel": true}});
        target
            .workflows()
            .patch(
                &args.workflow,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(|e| match &e {
                kube::Error::Api(s) if s.code == 404 => format!(
                    "workflow {}/{} not found (hint: `krt get workflows`, or pass -n)",
                    target.namespace, args.workflow
                ),
                _ => format!("failed to cancel {}: {e}", args.workflow),
            })?;
        eprintln!(
            "krt: cancelling workflow {}/{}",
            target.namespace, args.workflow
        );
        if args.wait {
            let mut ui = super::run::quiet_ui();
            let wf = client::follow(&target, &args.workflow, None, ui.as_mut(), None).await?;
            if let Some(wf) = wf {
                let phase = wf.status.and_then(|s| s.phase);
                eprintln!("krt: workflow {} ended {phase:?}", args.workflow);
            }
        }
        Ok::<(), String>(())
    });
    match result {
        Ok(()) => Exit::Success,
        Err(e) => {
            error(e);
            Exit::Internal
        }
    }
}
