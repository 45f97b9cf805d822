//! `krt wait WORKFLOW`: follow a Workflow on a cluster until it ends.

use std::time::Duration;

use super::run::Output;
use super::store::{error, runtime};
use super::{Color, Exit};
use crate::cluster::client::{self, ClusterArgs};

/// Follow a Workflow on a cluster until it ends, like `krt submit --wait`:
/// each job's start, its log when it ends, its result, then the summary.
/// Exits like `krt run`: 0 succeeded, 1 a job failed, 130 cancelled.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  krt wait ci-x7k2p
  krt wait ci-x7k2p --quiet --timeout 30m
  krt wait ci-x7k2p --output json | jq .result

Exit codes: 0 succeeded, 1 a job failed, 3 invalid workflow, 4 cluster or
store error (or the timeout passed), 130 cancelled.")]
pub struct Args {
    /// Workflow name (see `krt get workflows`).
    pub workflow: String,
    /// Give up after this long (e.g. 10m).
    #[arg(long, value_name = "DURATION", value_parser = super::submit::parse_duration)]
    pub timeout: Option<Duration>,
    /// Print no job logs, only results and the summary.
    #[arg(long, short)]
    pub quiet: bool,
    /// Output format of the summary.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// The cluster's store URL, for logs [default: from the cluster's
    /// configuration; without one, no logs are printed].
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

pub fn run(args: Args, color: Color) -> Exit {
    let rt = match runtime() {
        Ok(r) => r,
        Err(e) => {
            error(e);
            return Exit::Internal;
        }
    };
    rt.block_on(async {
        let target = match client::connect(&args.cluster).await {
            Ok(t) => t,
            Err(e) => {
                error(e);
                return Exit::Internal;
            }
        };
        let store = if args.quiet {
            None
        } else {
            match client::cluster_store(&target, args.store.as_deref()).await {
                Ok(s) => Some(s),
                Err(e) => {
                    eprintln!("krt: warning: no job logs: {e}");
                    None
                }
            }
        };
        match target.workflows().get_opt(&args.workflow).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                error(format!(
                    "workflow {}/{} not found (hint: `krt get workflows`, or pass -n)",
                    target.namespace, args.workflow
                ));
                return Exit::Usage;
            }
            Err(e) => {
                error(e);
                return Exit::Internal;
            }
        }
        super::submit::follow_and_report(
            &target,
            &args.workflow,
            store.as_ref(),
            &[],
            args.output,
            args.quiet,
            color,
            0,
            args.timeout,
        )
        .await
    })
}
