//! `krt validate FILE...`: check workflow files and report every problem.

use std::path::PathBuf;

use super::{Color, Exit};
use crate::plan;

/// Check workflow files: syntax, keys, references, cycles, durations,
/// matrices, artifacts, inputs, templates and `if:` expressions.
///
/// Prints one summary line per file on standard output and the diagnostics
/// (file, line, column, a hint) on standard error. All problems of a file are
/// reported, not just the first.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  krt validate ci.yaml
  krt validate .krt/*.yaml      check several files; exit 3 if any is invalid

Exit codes: 0 all files valid (warnings allowed), 3 a file is invalid.")]
pub struct Args {
    /// Workflow files to check.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Treat warnings as errors.
    #[arg(long)]
    pub deny_warnings: bool,
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

pub fn run(args: Args, color: Color) -> Exit {
    let color_err = color.stderr();
    let mut exit = Exit::Success;
    for file in &args.files {
        match plan::plan_file(file) {
            Ok(p) => {
                if !p.warnings.is_empty() {
                    let d = plan::Diagnostics::new(p.source.clone(), p.warnings.clone());
                    eprint!("{}", d.render(color_err));
                    if args.deny_warnings {
                        exit = Exit::Invalid;
                    }
                }
                let warnings = if p.warnings.is_empty() {
                    String::new()
                } else {
                    format!(", {}", plural(p.warnings.len(), "warning"))
                };
                println!(
                    "ok: {}: workflow `{}`, {}, {}, {}{warnings}",
                    file.display(),
                    p.name,
                    plural(p.jobs.len(), "job"),
                    plural(p.nodes.len(), "run"),
                    plural(p.critical_path, "level"),
                );
            }
            Err(d) => {
                eprint!("{}", d.render(color_err));
                let warnings = d.warning_count();
                let warnings = if warnings == 0 {
                    String::new()
                } else {
                    format!(", {}", plural(warnings, "warning"))
                };
                println!(
                    "invalid: {}: {}{warnings}",
                    file.display(),
                    plural(d.error_count(), "error")
                );
                exit = Exit::Invalid;
            }
        }
    }
    exit
}
