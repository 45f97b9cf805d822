//! `krt run FILE`: run a workflow on this machine.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::time::Duration;

use clap::ValueEnum;
use kruntimes_crds::JobResult;
use kruntimes_runtime::exec::{LogLine, Stream};
use tokio_util::sync::CancellationToken;

use super::store::{StoreArg, error, parse_param, runtime};
use super::{Color, Exit};
use crate::embedded::{self, NodeReport, RunOptions, Ui};
use crate::scheduler::WorkflowResult;

/// Run a workflow on this machine: plan it, snapshot the source tree, run
/// jobs in warm in-process runtime slots, pass artifacts through the store,
/// and serve unchanged jobs from the step cache.
///
/// Every run is recorded in the store: `krt runs` lists them, `krt logs`
/// prints a job's log, `krt replay` runs a recorded job again.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  krt run ci.yaml
  krt run ci.yaml -p profile=debug --jobs 4
  krt run ci.yaml --only test          run `test` and what it needs
  krt run ci.yaml --no-cache --keep-going
  krt run ci.yaml --output json | jq .result

Exit codes: 0 succeeded, 1 a job failed, 3 invalid workflow, 4 internal or
store error, 130 cancelled (Ctrl-C; a second Ctrl-C exits at once).")]
pub struct Args {
    /// Workflow file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Parameter value (repeatable).
    #[arg(short = 'p', long = "param", value_name = "KEY=VALUE", value_parser = parse_param)]
    pub params: Vec<(String, String)>,
    /// Jobs run at once [default: the number of CPUs].
    #[arg(long, env = "KRT_JOBS")]
    pub jobs: Option<usize>,
    #[command(flatten)]
    pub store: StoreArg,
    /// Run every job, serve nothing from the step cache, record nothing in it.
    #[arg(long, env = "KRT_NO_CACHE")]
    pub no_cache: bool,
    /// After a failure, let jobs that do not depend on it go on.
    #[arg(long, env = "KRT_KEEP_GOING")]
    pub keep_going: bool,
    /// Run only this job and what it needs (repeatable).
    #[arg(long, value_name = "JOB")]
    pub only: Vec<String>,
    /// Source tree to snapshot [default: the enclosing git repository, else
    /// the current directory].
    #[arg(long, env = "KRT_SOURCE", value_name = "DIR")]
    pub source: Option<PathBuf>,
    /// Keep job workspaces (under the work dir) after the run.
    #[arg(long)]
    pub keep_workspace: bool,
    /// Where workspaces are created [default: $TMPDIR/krt-work].
    #[arg(long, env = "KRT_WORK_DIR", value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Print no job logs, only job results and the summary.
    #[arg(long, short)]
    pub quiet: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Logs with job prefixes, then a summary table.
    Text,
    /// Only a JSON summary on stdout.
    Json,
}

const COLORS: [&str; 6] = ["36", "33", "35", "32", "34", "31"];

struct TextUi {
    color: bool,
    quiet: bool,
    width: usize,
    colors: std::collections::HashMap<String, &'static str>,
    /// On a terminal: one live line per running job (state and elapsed
    /// time) below the streamed logs.
    live: Option<Live>,
}

struct Live {
    bars: indicatif::MultiProgress,
    running: std::collections::HashMap<String, indicatif::ProgressBar>,
}

impl Live {
    fn new() -> Self {
        Self {
            bars: indicatif::MultiProgress::new(),
            running: Default::default(),
        }
    }

    fn start(&mut self, display: &str, attempt: u32) {
        let style = indicatif::ProgressStyle::with_template("{spinner} {msg} {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
        let bar = self
            .bars
            .add(indicatif::ProgressBar::new_spinner().with_style(style));
        let again = if attempt > 1 {
            format!(" (attempt {attempt})")
        } else {
            String::new()
        };
        bar.set_message(format!("{display}: running{again}"));
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        self.running.insert(display.to_string(), bar);
    }

    fn finish(&mut self, display: &str) {
        if let Some(bar) = self.running.remove(display) {
            bar.finish_and_clear();
            self.bars.remove(&bar);
        }
    }

    fn println(&self, line: &str) {
        if self.bars.println(line).is_err() {
            out(line);
        }
    }
}

impl TextUi {
    fn paint(&mut self, display: &str, text: &str) -> String {
        if !self.color {
            return text.to_string();
        }
        let n = self.colors.len();
        let c = *self
            .colors
            .entry(display.to_string())
            .or_insert(COLORS[n % COLORS.len()]);
        format!("\x1b[{c}m{text}\x1b[0m")
    }

    fn prefix(&mut self, display: &str) -> String {
        let padded = format!("{display:<w$} |", w = self.width);
        self.paint(display, &padded)
    }
}

/// Writes a line to stdout; a closed pipe must not stop (or crash) a run
/// that owns child processes, so errors are ignored.
pub(crate) fn out(line: &str) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{line}");
}

fn jobs(n: usize) -> String {
    if n == 1 {
        "1 job".into()
    } else {
        format!("{n} jobs")
    }
}

fn secs(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

impl Ui for TextUi {
    fn begin(&mut self, run_id: &str, workflow: &str, nodes: usize) {
        eprintln!(
            "krt: running workflow `{workflow}` ({}) as {run_id}",
            jobs(nodes)
        );
    }

    fn started(&mut self, display: &str, attempt: u32) {
        if let Some(live) = self.live.as_mut() {
            live.start(display, attempt);
        }
        if self.quiet {
            return;
        }
        let p = self.prefix(display);
        let again = if attempt > 1 {
            format!(" (attempt {attempt})")
        } else {
            String::new()
        };
        self.emit(&format!("{p} started{again}"));
    }

    fn log(&mut self, display: &str, line: &LogLine) {
        if self.quiet {
            return;
        }
        let p = self.prefix(display);
        let text = if line.stream == Stream::Krt {
            format!("krt: {}", line.line)
        } else {
            line.line.clone()
        };
        self.emit(&format!("{p} {text}"));
    }

    fn finished(&mut self, r: &NodeReport) {
        let p = self.prefix(&r.display);
        let what = match (r.result, r.cached) {
            (JobResult::Success, true) => "cached".to_string(),
            (JobResult::Success, false) => format!("succeeded in {}", secs(r.duration_ms)),
            (JobResult::Failure, _) => format!("FAILED: {}", r.message.clone().unwrap_or_default()),
            (JobResult::Cancelled, _) => format!(
                "cancelled{}",
                r.message
                    .as_ref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ),
            (JobResult::Skipped, _) => {
                format!("skipped: {}", r.message.clone().unwrap_or_default())
            }
        };
        if let Some(live) = self.live.as_mut() {
            live.finish(&r.display);
        }
        self.emit(&format!("{p} {what}"));
    }

    fn note(&mut self, text: &str) {
        match &self.live {
            Some(live) => live.println(&format!("krt: {text}")),
            None => eprintln!("krt: {text}"),
        }
    }
}

impl TextUi {
    /// A line above the live status lines (or plain stdout without them).
    fn emit(&self, line: &str) {
        match &self.live {
            Some(live) => live.println(line),
            None => out(line),
        }
    }
}

struct QuietUi;

impl Ui for QuietUi {
    fn begin(&mut self, _: &str, _: &str, _: usize) {}
    fn started(&mut self, _: &str, _: u32) {}
    fn log(&mut self, _: &str, _: &LogLine) {}
    fn finished(&mut self, _: &NodeReport) {}
    fn note(&mut self, text: &str) {
        eprintln!("krt: {text}");
    }
}

/// The text progress display of `krt run`, also used by `krt submit
/// --wait` and `krt wait`: job-prefixed logs, one line per result, and
/// live status lines when stdout is a terminal.
pub(crate) fn text_ui(color: Color, quiet: bool, width: usize) -> Box<dyn Ui> {
    let stdout_tty = std::io::stdout().is_terminal();
    Box::new(TextUi {
        color: color.enabled(stdout_tty),
        quiet,
        width,
        colors: Default::default(),
        live: stdout_tty.then(Live::new),
    })
}

/// A display that only prints engine notes (for `--output json`).
pub(crate) fn quiet_ui() -> Box<dyn Ui> {
    Box::new(QuietUi)
}

/// The summary table printed at the end of a run.
pub(crate) fn summary(report: &embedded::RunReport) -> String {
    let w = report
        .jobs
        .iter()
        .map(|j| j.display.len())
        .max()
        .unwrap_or(3)
        .max(3);
    let mut out = format!(
        "\n{:<w$}  {:<9}  {:>8}  {:>8}  {}\n",
        "job", "result", "attempts", "duration", "cached"
    );
    for j in &report.jobs {
        let result = format!("{:?}", j.result).to_lowercase();
        let duration = if j.duration_ms > 0 {
            secs(j.duration_ms)
        } else {
            "-".into()
        };
        let cached = if j.cached { "yes" } else { "" };
        out.push_str(&format!(
            "{:<w$}  {result:<9}  {:>8}  {duration:>8}  {cached}\n",
            j.display, j.attempts
        ));
    }
    let cached = report.jobs.iter().filter(|j| j.cached).count();
    out.push_str(&format!(
        "\nworkflow {} {} in {} ({}, {cached} cached) - run {}\n",
        report.workflow,
        format!("{:?}", report.result).to_lowercase(),
        secs(report.duration_ms),
        jobs(report.jobs.len()),
        report.id
    ));
    out
}

pub fn run(args: Args, color: Color) -> Exit {
    let plan = match super::load_plan(&args.file, color) {
        Ok(p) => p,
        Err(exit) => return exit,
    };
    let store = match args.store.open() {
        Ok(s) => s,
        Err(e) => {
            error(e);
            return Exit::Internal;
        }
    };
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let opts = RunOptions {
        params: args.params.clone(),
        jobs: args
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        no_cache: args.no_cache,
        keep_going: args.keep_going,
        only: args.only.clone(),
        source_root: args
            .source
            .clone()
            .unwrap_or_else(|| embedded::source::default_root(&cwd)),
        keep_workspaces: args.keep_workspace,
        work_dir: args
            .work_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("krt-work")),
        grace_period: Duration::from_secs(10),
        file: args.file.display().to_string(),
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            error(e);
            return Exit::Internal;
        }
    };
    let stdout_tty = std::io::stdout().is_terminal();
    let plan_width = plan
        .nodes
        .iter()
        .map(|n| n.display.len())
        .max()
        .unwrap_or(0);
    rt.block_on(async move {
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                c.cancel();
                if tokio::signal::ctrl_c().await.is_ok() {
                    eprintln!("krt: second Ctrl-C: exiting at once");
                    std::process::exit(130);
                }
            }
        });
        let mut text_ui;
        let mut quiet_ui = QuietUi;
        let ui: &mut dyn Ui = if args.output == Output::Json {
            &mut quiet_ui
        } else {
            text_ui = TextUi {
                color: color.enabled(stdout_tty),
                quiet: args.quiet,
                width: plan_width,
                colors: Default::default(),
                live: stdout_tty.then(Live::new),
            };
            &mut text_ui
        };
        let report = match embedded::run(&plan, &store, &opts, ui, cancel.clone()).await {
            Ok(r) => r,
            Err(embedded::EngineError::Usage(e)) => {
                error(e);
                return Exit::Usage;
            }
            Err(e) => {
                error(e);
                return Exit::Internal;
            }
        };
        for w in &report.warnings {
            eprintln!("warning: {w}");
        }
        match args.output {
            Output::Json => out(&serde_json::to_string_pretty(&report).unwrap_or_default()),
            Output::Text => out(summary(&report).trim_end()),
        }
        match report.result {
            WorkflowResult::Succeeded => Exit::Success,
            WorkflowResult::Failed => Exit::WorkflowFailed,
            WorkflowResult::Cancelled => Exit::Cancelled,
        }
    })
}
