//! `krt replay RUN JOB`: run a recorded job again, locally, with the same
//! inputs.

use std::collections::BTreeMap;

use kruntimes_crds::RunPhase;
use kruntimes_runtime::exec::Stream;
use tokio_util::sync::CancellationToken;

use super::Exit;
use super::store::{StoreArg, error, runtime};
use crate::cluster::client::{self, ClusterArgs};
use crate::embedded::replay;

/// Run a recorded job again on this machine, in a fresh workspace, with
/// exactly the recorded action: the same rendered steps, environment, input
/// artifacts and source tree.
///
/// RUN is a local run (`krt runs`) or, when no local run has that name or
/// `--context`/`--namespace` is given, a Workflow on the cluster of the
/// kubeconfig: its job's recorded action and inputs are fetched from the
/// cluster's store (from the cluster's configuration, or `--store`).
/// Secrets are recorded by name only; their values are taken from this
/// environment.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  krt replay latest deploy
  krt replay ci-20261126-221503-3fa2 test-2 --shell     open a shell in the workspace afterwards
  krt replay latest build --keep                       keep the workspace and print its path
  krt replay ci-x7k2p test -n ci                       a job of a Workflow on the cluster")]
pub struct Args {
    /// Run id, `latest`, a workflow name, or a cluster Workflow's name.
    pub run: String,
    /// Job (node name such as `test-2`, or a job key with one node).
    pub job: String,
    /// Open an interactive shell in the workspace after the job ran.
    #[arg(long)]
    pub shell: bool,
    /// Keep the workspace (its path is printed).
    #[arg(long)]
    pub keep: bool,
    #[command(flatten)]
    pub store: StoreArg,
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
    rt.block_on(async move {
        let (store, found) = match locate(&args).await {
            Ok(x) => x,
            Err((e, exit)) => {
                error(e);
                return exit;
            }
        };
        let mut secrets = BTreeMap::new();
        for name in &found.action.secret_names {
            match std::env::var(name) {
                Ok(v) => {
                    secrets.insert(name.clone(), v);
                }
                Err(_) => eprintln!("krt: warning: secret `{name}` is not set in this environment"),
            }
        }
        let recorded = found
            .job
            .result
            .map_or("unfinished".into(), |r| format!("{r:?}").to_lowercase());
        eprintln!(
            "krt: replaying {} of run {} (recorded: {recorded}{})",
            found.job.display,
            found.run.id,
            found
                .job
                .message
                .as_ref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        );
        let work = std::env::temp_dir().join(format!(
            "krt-replay-{}-{}",
            found.job.node,
            std::process::id()
        ));
        let req = replay::request(&found, secrets);
        let (result, ws) = replay::execute(
            &store,
            req,
            work.clone(),
            |l| {
                if l.stream == Stream::Krt {
                    println!("krt: {}", l.line);
                } else {
                    println!("{}", l.line);
                }
            },
            CancellationToken::new(),
        )
        .await;
        let phase = format!("{:?}", result.phase).to_lowercase();
        eprintln!(
            "krt: replay {phase}{}",
            result
                .message
                .as_ref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        );
        if args.shell
            && let Some(ws) = &ws
        {
            let shell = std::env::var("SHELL").unwrap_or_else(|_| "bash".into());
            eprintln!("krt: opening {shell} in {} (exit to finish)", ws.display());
            let mut cmd = std::process::Command::new(&shell);
            cmd.current_dir(ws).envs(&found.action.env);
            if let Err(e) = cmd.status() {
                error(format!("failed to start {shell}: {e}"));
            }
        }
        if args.keep || args.shell {
            if let Some(ws) = &ws {
                eprintln!("krt: workspace kept at {}", ws.display());
            }
        } else {
            let _ = std::fs::remove_dir_all(&work);
        }
        match result.phase {
            RunPhase::Succeeded => Exit::Success,
            _ => Exit::WorkflowFailed,
        }
    })
}

/// Finds the recorded job: in the local store, else (or with cluster
/// flags) in a Workflow on the cluster.
async fn locate(
    args: &Args,
) -> Result<(kruntimes_runtime::cas::Store, replay::Found), (String, Exit)> {
    let mut local_error = None;
    if !args.cluster.explicit() {
        let store = args.store.open().map_err(|e| (e, Exit::Internal))?;
        match replay::find(&store, &args.run, &args.job).await {
            Ok(f) => return Ok((store, f)),
            Err(e) => local_error = Some(e),
        }
    }
    let not_found = |cluster: String| match &local_error {
        Some(local) => (format!("{local}; {cluster}"), Exit::Usage),
        None => (cluster, Exit::Usage),
    };
    let target = match client::connect(&args.cluster).await {
        Ok(t) => t,
        Err(e) if local_error.is_some() => {
            return Err(not_found(format!("and no cluster to look in ({e})")));
        }
        Err(e) => return Err((e, Exit::Internal)),
    };
    let wf = match client::get_workflow(&target, &args.run).await {
        Ok(Some(wf)) => wf,
        Ok(None) => {
            return Err(not_found(format!(
                "no Workflow `{}` in namespace {} either",
                args.run, target.namespace
            )));
        }
        Err(e) => return Err((e, Exit::Internal)),
    };
    let store = client::cluster_store(&target, args.store.store.as_deref())
        .await
        .map_err(|e| (e, Exit::Internal))?;
    let found = client::find_for_replay(&store, &wf, &args.job)
        .await
        .map_err(|e| (e, Exit::Usage))?;
    Ok((store, found))
}
