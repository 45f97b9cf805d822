//! Child processes of the cluster: every one leads its own session (and so
//! its own process group) and gets SIGKILL when the thread that spawned it
//! dies.
//!
//! A session stands in for a container's cgroup: descendants keep it when
//! they make their own process groups (as `krt runtime` does for steps) and
//! when they are reparented, so [`kill_session`] kills everything a container
//! started, as the kernel does when a container's init dies. Only a process
//! that calls `setsid` itself escapes.
//!
//! `PR_SET_PDEATHSIG` fires when the spawning *thread* exits, not the
//! process, so every spawn must happen on the cluster thread, which lives as
//! long as the test process (see `cluster.rs`).

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;
use std::process::Stdio;

use anyhow::Context as _;
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// A command that leads a new session and dies with the test process. Stdin
/// is closed.
pub(crate) fn command(program: impl AsRef<OsStr>) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    cmd.stdin(Stdio::null()).kill_on_drop(false);
    new_session_dying_with_parent(&mut cmd);
    cmd
}

#[allow(unsafe_code)]
fn new_session_dying_with_parent(cmd: &mut tokio::process::Command) {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child before exec. It only makes
    // the async-signal-safe syscalls setsid(2), prctl(2) and getppid(2) and
    // builds errors from errno values: no allocation, no lock.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid().map_err(io::Error::from)?;
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
            // The test process may have died between fork and prctl.
            if nix::unistd::getppid() != parent {
                return Err(io::Error::from(Errno::ESRCH));
            }
            Ok(())
        });
    }
}

/// Sends both stdout and stderr of `cmd` to `log`, appending.
pub(crate) fn log_to(cmd: &mut tokio::process::Command, log: &Path) -> anyhow::Result<()> {
    let file = append(log)?;
    let err = file
        .try_clone()
        .with_context(|| format!("duplicate the handle of {}", log.display()))?;
    cmd.stdout(Stdio::from(file)).stderr(Stdio::from(err));
    Ok(())
}

/// Opens `path` for appending, creating it and its directory.
pub(crate) fn append(path: &Path) -> anyhow::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))
}

/// Appends one line to `path`, ignoring errors (it is a debugging aid).
pub(crate) fn note(path: &Path, line: &str) {
    use std::io::Write as _;
    if let Ok(mut f) = append(path) {
        let _ = writeln!(f, "{line}");
    }
}

/// Sends `sig` to the process group led by `pid`; a group already gone is
/// not an error.
pub(crate) fn signal_group(pid: u32, sig: Signal) {
    let Ok(pid) = i32::try_from(pid) else {
        return;
    };
    match killpg(Pid::from_raw(pid), sig) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => eprintln!("krt-cluster: killpg({pid}, {sig}): {e}"),
    }
}

/// SIGKILLs every process of the session `sid` (a container's processes),
/// repeating while new ones appear (a process may fork while we scan).
/// Zombies are skipped: they are dead already.
pub(crate) fn kill_session(sid: u32) {
    for _ in 0..20 {
        let mut found = false;
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid pgrp session ...; comm may hold spaces.
            let Some((_, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            if fields.get(3).and_then(|s| s.parse::<u32>().ok()) == Some(sid)
                && fields.first() != Some(&"Z")
            {
                found = true;
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        if !found {
            return;
        }
    }
}

/// The last `lines` lines of a text file, or a note that it cannot be read.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}
