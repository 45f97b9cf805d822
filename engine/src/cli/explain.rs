//! `krt explain FILE JOB`: why a job will (not) be served from the cache.

use std::path::PathBuf;

use super::store::{StoreArg, error, parse_param, runtime};
use super::{Color, Exit};
use crate::embedded;

/// Say whether a job would be served from the step cache and, if not, what
/// changed since its last recorded run: step text, env keys, input
/// artifacts (old and new digests), source files.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  krt explain ci.yaml build\n  krt explain ci.yaml test -p profile=debug"
)]
pub struct Args {
    /// Workflow file.
    pub file: PathBuf,
    /// Job key.
    pub job: String,
    /// Parameter value (repeatable), as given to `krt run`.
    #[arg(short = 'p', long = "param", value_name = "KEY=VALUE", value_parser = parse_param)]
    pub params: Vec<(String, String)>,
    /// Source tree [default: the enclosing git repository, else the current directory].
    #[arg(long, env = "KRT_SOURCE", value_name = "DIR")]
    pub source: Option<PathBuf>,
    #[command(flatten)]
    pub store: StoreArg,
}

pub fn run(args: Args, color: Color) -> Exit {
    let plan = match super::load_plan(&args.file, color) {
        Ok(p) => p,
        Err(exit) => return exit,
    };
    let result = (|| -> Result<(), String> {
        let store = args.store.open()?;
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        let root = args
            .source
            .clone()
            .unwrap_or_else(|| embedded::source::default_root(&cwd));
        let rt = runtime()?;
        let out = rt.block_on(embedded::explain::explain(
            &plan,
            &store,
            &args.params,
            &root,
            &args.job,
        ))?;
        for e in out {
            if e.hit {
                println!(
                    "{}: served from the cache (nothing changed since its last successful run)",
                    e.display
                );
            } else {
                println!("{}: will run:", e.display);
                for c in e.changes {
                    println!("  - {c}");
                }
            }
        }
        Ok(())
    })();
    match result {
        Ok(()) => Exit::Success,
        Err(e) => {
            error(e);
            Exit::Internal
        }
    }
}
