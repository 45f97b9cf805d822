//! `krt logs RUN [JOB]`: print job logs from the store.

use kruntimes_runtime::exec::{LogLine, Stream};

use super::Exit;
use super::store::{StoreArg, error, runtime};
use crate::cluster::client::{self, ClusterArgs};
use crate::embedded::record;

/// Print the full log of a job of a recorded run (or of every job).
///
/// RUN is a run id from `krt runs`, `latest`, or a workflow name (its
/// latest run). When no local run matches, or `--context`/`--namespace` is
/// given, RUN is a Workflow on the cluster of the kubeconfig, and the logs
/// come from the cluster's store; `-f` follows jobs still running, printing
/// their lines as they come, until they end.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  krt logs latest\n  krt logs ci-20261126-221503-3fa2 build\n  krt logs ci test-2 --timestamps\n  krt logs ci-x7k2p build -f -n ci      a Workflow on the cluster"
)]
pub struct Args {
    /// Run id, `latest`, or a workflow name.
    pub run: String,
    /// Job (node name such as `test-2`, or a job key with one node).
    pub job: Option<String>,
    /// Prefix each line with its time since the job started.
    #[arg(long)]
    pub timestamps: bool,
    /// Cluster Workflows: follow running jobs, printing their lines as they
    /// come (about every 0.3 s), until they end.
    #[arg(long, short)]
    pub follow: bool,
    #[command(flatten)]
    pub store: StoreArg,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

pub fn run(args: Args) -> Exit {
    let result = (|| -> Result<bool, String> {
        let rt = runtime()?;
        rt.block_on(async {
            let local = if args.cluster.explicit() {
                Err(String::new())
            } else {
                let store = args.store.open()?;
                record::load(&store, &args.run).await.map(|r| (store, r))
            };
            let (store, rec) = match local {
                Ok(x) => x,
                Err(local_error) => return cluster_logs(&args, &local_error).await,
            };
            let jobs: Vec<_> = rec
                .jobs
                .iter()
                .filter(|j| {
                    args.job
                        .as_deref()
                        .is_none_or(|n| j.node == n || j.job == n)
                })
                .collect();
            if jobs.is_empty() {
                let names: Vec<&str> = rec.jobs.iter().map(|j| j.node.as_str()).collect();
                return Err(format!(
                    "run `{}` has no job `{}` (jobs: {})",
                    rec.id,
                    args.job.unwrap_or_default(),
                    names.join(", ")
                ));
            }
            let many = jobs.len() > 1;
            for j in jobs {
                if many {
                    println!(
                        "==> {} ({}) <==",
                        j.display,
                        j.result
                            .map_or("unfinished".into(), |r| format!("{r:?}").to_lowercase())
                    );
                }
                let Some(log) = j.log else {
                    println!(
                        "(no log: {})",
                        j.message
                            .clone()
                            .unwrap_or_else(|| "the job did not run".into())
                    );
                    continue;
                };
                for l in client::read_log(&store, &log).await? {
                    print_line(&l, args.timestamps, "");
                }
            }
            Ok(true)
        })
    })();
    match result {
        Ok(_) => Exit::Success,
        Err(e) => {
            error(e);
            Exit::Internal
        }
    }
}

fn print_line(l: &LogLine, timestamps: bool, prefix: &str) {
    let text = if l.stream == Stream::Krt {
        format!("krt: {}", l.line)
    } else {
        l.line.clone()
    };
    if timestamps {
        println!("{prefix}{:>9.3} {text}", l.t as f64 / 1000.0);
    } else {
        println!("{prefix}{text}");
    }
}

/// Logs of a Workflow on the cluster.
async fn cluster_logs(args: &Args, local_error: &str) -> Result<bool, String> {
    let with_local = |e: String| {
        if local_error.is_empty() {
            e
        } else {
            format!("{local_error}; {e}")
        }
    };
    let target = client::connect(&args.cluster)
        .await
        .map_err(|e| with_local(format!("and no cluster to look in ({e})")))?;
    let mut wf = client::get_workflow(&target, &args.run)
        .await?
        .ok_or_else(|| {
            with_local(format!(
                "no Workflow `{}` in namespace {} either",
                args.run, target.namespace
            ))
        })?;
    // Just submitted: with -f, wait for the controller to list its jobs.
    while args.follow
        && !client::is_final(wf.status.as_ref().and_then(|s| s.phase))
        && wf.status.as_ref().is_none_or(|s| s.jobs.is_empty())
    {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        wf = client::get_workflow(&target, &args.run)
            .await?
            .ok_or_else(|| format!("Workflow {}/{} was deleted", target.namespace, args.run))?;
    }
    let store = client::cluster_store(&target, args.store.store.as_deref()).await?;
    let selected: Vec<String> = client::select_jobs(&wf, args.job.as_deref())?
        .into_iter()
        .map(|(n, _)| n.clone())
        .collect();
    let many = selected.len() > 1;
    let status = wf.status.clone().unwrap_or_default();
    let mut pending = Vec::new();
    for node in &selected {
        let j = &status.jobs[node];
        let display = j.display_name.clone().unwrap_or_else(|| node.clone());
        if j.result.is_none() {
            pending.push(display);
            continue;
        }
        if many {
            println!(
                "==> {display} ({}) <==",
                j.result
                    .map_or("unfinished".into(), |r| format!("{r:?}").to_lowercase())
            );
        }
        match j.log_digest.as_deref().and_then(|d| d.parse().ok()) {
            Some(log) => {
                for l in client::read_log(&store, &log).await? {
                    print_line(&l, args.timestamps, "");
                }
            }
            None => println!(
                "(no log: {})",
                j.message
                    .clone()
                    .unwrap_or_else(|| "the job did not run".into())
            ),
        }
    }
    if pending.is_empty() {
        return Ok(true);
    }
    if !args.follow {
        eprintln!(
            "krt: still running or waiting: {} (`krt logs {} -f` waits for their logs)",
            pending.join(", "),
            args.run
        );
        return Ok(true);
    }
    let mut ui = FollowUi {
        wanted: pending.into_iter().collect(),
        many,
        timestamps: args.timestamps,
    };
    client::follow(&target, &args.run, Some(&store), &mut ui, None).await?;
    Ok(true)
}

/// Prints the logs of the wanted jobs as they come.
struct FollowUi {
    wanted: std::collections::HashSet<String>,
    many: bool,
    timestamps: bool,
}

impl crate::embedded::Ui for FollowUi {
    fn begin(&mut self, _: &str, _: &str, _: usize) {}
    fn started(&mut self, _: &str, _: u32) {}
    fn log(&mut self, display: &str, line: &LogLine) {
        if self.wanted.contains(display) {
            let prefix = if self.many {
                format!("{display} | ")
            } else {
                String::new()
            };
            print_line(line, self.timestamps, &prefix);
        }
    }
    fn finished(&mut self, r: &crate::embedded::NodeReport) {
        if self.wanted.contains(&r.display) && r.log.is_none() {
            println!(
                "(no log for {}: {})",
                r.display,
                r.message
                    .clone()
                    .unwrap_or_else(|| "the job did not run".into())
            );
        }
    }
    fn note(&mut self, text: &str) {
        eprintln!("krt: {text}");
    }
}
