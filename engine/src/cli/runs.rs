//! `krt runs`: recent runs recorded in the store.

use super::Exit;
use super::store::{StoreArg, error, runtime};
use crate::embedded::record;

/// List recent runs recorded in the store, newest first.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  krt runs\n  krt runs --limit 50\n  krt logs latest build")]
pub struct Args {
    /// How many runs to show.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    #[command(flatten)]
    pub store: StoreArg,
}

pub fn run(args: Args) -> Exit {
    let result = (|| -> Result<(), String> {
        let store = args.store.open()?;
        let rt = runtime()?;
        rt.block_on(async {
            let refs = store
                .list_refs(record::NAMESPACE)
                .await
                .map_err(|e| e.to_string())?;
            if refs.is_empty() {
                println!("no runs recorded in {}", store.url());
                return Ok(());
            }
            println!(
                "{:<44}  {:<10}  {:>6}  {:>9}",
                "run", "result", "jobs", "duration"
            );
            for r in refs.iter().take(args.limit) {
                match record::load(&store, &r.name).await {
                    Ok(rec) => {
                        let dur = rec.finished_ms.saturating_sub(rec.started_ms) as f64 / 1000.0;
                        println!(
                            "{:<44}  {:<10}  {:>6}  {:>8.1}s",
                            rec.id,
                            rec.result,
                            rec.jobs.len(),
                            dur
                        );
                    }
                    Err(e) => println!("{:<44}  unreadable: {e}", r.name),
                }
            }
            Ok(())
        })
    })();
    match result {
        Ok(()) => Exit::Success,
        Err(e) => {
            error(e);
            Exit::Internal
        }
    }
}
