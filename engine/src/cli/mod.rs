//! The `krt` command line: one file per verb, each returning an exit code.

mod cancel;
mod catalog;
mod controller;
mod crds;
mod exit;
mod explain;
mod get;
mod graph;
mod logs;
mod replay;
mod run;
mod runs;
mod runtime;
mod self_install;
mod store;
mod submit;
mod validate;
mod wait;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

pub use exit::Exit;

const ABOUT: &str = "kruntimes: a workflow-oriented CI micro-step engine";

const LONG_ABOUT: &str = "\
kruntimes runs CI workflows written as YAML (jobs, `needs`, steps) as a DAG of
runs in warm runtimes: a step costs a process spawn, not a Pod start.

The same workflow file runs on one machine (`krt run`) or on Kubernetes
(`krt submit`).";

const EXAMPLES: &str = "\
Examples:
  krt run ci.yaml                      run a workflow here; unchanged jobs come from the cache
  krt runs                             recent runs;  krt logs latest build  a job's log
  krt replay latest build --shell      run a recorded job again, then open a shell in it
  krt explain ci.yaml build            why a job will not be served from the cache
  krt validate ci.yaml                 check a workflow file and report every problem
  krt graph ci.yaml                    show the jobs by level, with their needs
  krt graph ci.yaml --format dot | dot -Tsvg > ci.svg
  krt catalog list                     reusable steps for `uses:`;  krt catalog show cargo-test
  krt submit ci.yaml --wait            run a workflow on Kubernetes and follow it
  krt get workflows                    Workflows on the cluster;  krt get runs -w NAME  their Runs
  krt logs NAME build -f               a cluster job's log;  krt replay NAME build  rerun it here
  krt cancel NAME;  krt wait NAME      stop a cluster Workflow;  wait for one to end
  krt crds | kubectl apply -f -        install the CustomResourceDefinitions
  krt runtime serve --token-file token serve runs over HTTP (a warm runtime)
  krt controller                       cluster mode: RuntimePools and Run dispatch

Exit codes:
  0  success                 3  the workflow file is invalid
  1  the workflow failed     4  internal, I/O or store error
  2  wrong command-line usage 130 cancelled (Ctrl-C)";

/// The `krt` command line.
#[derive(Debug, Parser)]
#[command(
    name = "krt",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = EXAMPLES,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// When to color output.
    #[arg(long, global = true, value_enum, default_value_t = Color::Auto, env = "KRT_COLOR")]
    pub color: Color,
    #[command(subcommand)]
    command: Command,
}

/// When to use color.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Color {
    /// Color when writing to a terminal and `NO_COLOR` is unset.
    Auto,
    /// Always color.
    Always,
    /// Never color.
    Never,
}

impl Color {
    /// Whether to color a stream that is (or is not) a terminal.
    pub fn enabled(self, terminal: bool) -> bool {
        match self {
            Color::Always => true,
            Color::Never => false,
            Color::Auto => terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        }
    }

    /// Whether to color standard error.
    pub fn stderr(self) -> bool {
        self.enabled(std::io::stderr().is_terminal())
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    Run(run::Args),
    Runs(runs::Args),
    Logs(logs::Args),
    Replay(replay::Args),
    Explain(explain::Args),
    Validate(validate::Args),
    Graph(graph::Args),
    Catalog(catalog::Args),
    Submit(submit::Args),
    Get(get::Args),
    Wait(wait::Args),
    Cancel(cancel::Args),
    Crds(crds::Args),
    Runtime(runtime::Args),
    Controller(controller::Args),
    #[command(hide = true)]
    SelfInstall(self_install::Args),
}

/// Plans a workflow file for a verb that needs a valid one: on errors, prints
/// the diagnostics and a summary line to stderr and returns `Exit::Invalid`;
/// warnings are printed and planning goes on.
pub(crate) fn load_plan(file: &std::path::Path, color: Color) -> Result<crate::plan::Plan, Exit> {
    match crate::plan::plan_file(file) {
        Ok(p) => {
            if !p.warnings.is_empty() {
                let d = crate::plan::Diagnostics::new(p.source.clone(), p.warnings.clone());
                eprint!("{}", d.render(color.stderr()));
            }
            Ok(p)
        }
        Err(d) => {
            eprint!("{}", d.render(color.stderr()));
            eprintln!("invalid: {}: {} error(s)", file.display(), d.error_count());
            Err(Exit::Invalid)
        }
    }
}

/// Parses the command line, runs the verb and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.color);
    if !matches!(
        cli.command,
        Command::Run(_)
            | Command::Replay(_)
            | Command::Runtime(_)
            | Command::Controller(_)
            | Command::Submit(_)
            | Command::Wait(_)
    ) {
        default_sigpipe();
    }
    let exit = match cli.command {
        Command::Run(args) => run::run(args, cli.color),
        Command::Runs(args) => runs::run(args),
        Command::Logs(args) => logs::run(args),
        Command::Replay(args) => replay::run(args),
        Command::Explain(args) => explain::run(args, cli.color),
        Command::Validate(args) => validate::run(args, cli.color),
        Command::Graph(args) => graph::run(args, cli.color),
        Command::Catalog(args) => catalog::run(args, cli.color),
        Command::Submit(args) => submit::run(args, cli.color),
        Command::Get(args) => get::run(args),
        Command::Wait(args) => wait::run(args, cli.color),
        Command::Cancel(args) => cancel::run(args),
        Command::Crds(args) => crds::run(args),
        Command::Runtime(args) => runtime::run(args),
        Command::Controller(args) => controller::run(args),
        Command::SelfInstall(args) => self_install::run(args),
    };
    exit.into()
}

/// Short printing verbs die quietly on a closed pipe (`krt logs x | head`),
/// like other Unix tools. Verbs that own child processes or sockets keep
/// Rust's default (SIGPIPE ignored, write errors handled) so a closed pipe
/// can never kill them while jobs are running.
fn default_sigpipe() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: called once at start-up, before any thread is spawned; SIG_DFL
    // installs no handler code.
    #[allow(unsafe_code)]
    unsafe {
        let _ = signal(Signal::SIGPIPE, SigHandler::SigDfl);
    }
}

/// Diagnostics of long-running verbs (`runtime serve`) go to stderr through
/// tracing; `KRT_LOG` sets the filter (default `warn`, e.g. `KRT_LOG=debug`).
fn init_logging(color: Color) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KRT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(color.stderr())
        .try_init();
}
