//! `krt replay RUN JOB`: run a recorded job again, locally, with the same
//! inputs.

use std::collections::BTreeMap;

use kruntimes_crds::RunPhase;
use kruntimes_runtime::exec::Stream;
use tokio_util::sync::CancellationToken;

use super::Exit;
use super::store::{StoreArg, error, runtime};
use crate::embedded::replay;

/// Run a recorded job again on this machine, in a fresh workspace, with
/// exactly the recorded action: the same rendered steps, environment, input
/// artifacts and source tree.
///
/// The store may be any URL, so a failure recorded by the cluster in S3
/// replays on a laptop (`--store s3://...`). Secrets are recorded by name
/// only; their values are taken from this environment.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  krt replay latest deploy
  krt replay ci-20261126-221503-3fa2 test-2 --shell     open a shell in the workspace afterwards
  krt replay latest build --keep                       keep the workspace and print its path")]
pub struct Args {
    /// Run id, `latest`, or a workflow name.
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
}

pub fn run(args: Args) -> Exit {
    let store = match args.store.open() {
        Ok(s) => s,
        Err(e) => {
            error(e);
            return Exit::Internal;
        }
    };
    let rt = match runtime() {
        Ok(r) => r,
        Err(e) => {
            error(e);
            return Exit::Internal;
        }
    };
    rt.block_on(async move {
        let found = match replay::find(&store, &args.run, &args.job).await {
            Ok(f) => f,
            Err(e) => {
                error(e);
                return Exit::Usage;
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
