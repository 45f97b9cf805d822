//! Exit codes of `krt`, documented in the README and in `krt --help`.

use std::process::ExitCode;

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Everything succeeded.
    Success = 0,
    /// The workflow ran and a job failed.
    WorkflowFailed = 1,
    /// Wrong command-line usage (clap uses this code too).
    Usage = 2,
    /// A workflow file is invalid.
    Invalid = 3,
    /// An internal, I/O or store error.
    Internal = 4,
    /// Cancelled by Ctrl-C (the shell convention for SIGINT).
    Cancelled = 130,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}
