//! `krt logs RUN [JOB]`: print job logs from the store.

use kruntimes_runtime::exec::{LogLine, Stream};

use super::Exit;
use super::store::{StoreArg, error, runtime};
use crate::embedded::record;

/// Print the full log of a job of a recorded run (or of every job).
///
/// RUN is a run id from `krt runs`, `latest`, or a workflow name (its
/// latest run).
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  krt logs latest\n  krt logs ci-20261126-221503-3fa2 build\n  krt logs ci test-2 --timestamps"
)]
pub struct Args {
    /// Run id, `latest`, or a workflow name.
    pub run: String,
    /// Job (node name such as `test-2`, or a job key with one node).
    pub job: Option<String>,
    /// Prefix each line with its time since the job started.
    #[arg(long)]
    pub timestamps: bool,
    #[command(flatten)]
    pub store: StoreArg,
}

pub fn run(args: Args) -> Exit {
    let result = (|| -> Result<bool, String> {
        let store = args.store.open()?;
        let rt = runtime()?;
        rt.block_on(async {
            let rec = record::load(&store, &args.run).await?;
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
                let bytes = store
                    .get_bytes(&log)
                    .await
                    .map_err(|e| format!("failed to fetch the log {log}: {e}"))?;
                for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    let l: LogLine = serde_json::from_slice(line)
                        .map_err(|e| format!("the log {log} is not valid: {e}"))?;
                    let text = if l.stream == Stream::Krt {
                        format!("krt: {}", l.line)
                    } else {
                        l.line
                    };
                    if args.timestamps {
                        println!("{:>9.3} {text}", l.t as f64 / 1000.0);
                    } else {
                        println!("{text}");
                    }
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
