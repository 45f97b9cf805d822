//! Step processes: each step runs in its own process group, so a cancel, a
//! timeout or the end of the step reaches every process it started
//! (background jobs included): SIGTERM to the group, a grace period, then
//! SIGKILL.
//!
//! Known limit: a process that leaves the group on purpose (`setsid`,
//! `setpgid`) escapes; containing those needs cgroups, which the Pod (cluster
//! mode) provides.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

/// Whether `bash` is on `PATH` (checked once).
pub fn have_bash() -> bool {
    static HAVE: OnceLock<bool> = OnceLock::new();
    *HAVE.get_or_init(|| find_in_path("bash").is_some())
}

fn find_in_path(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// The command line that runs `script` with `shell`:
///
/// - `bash` (the default): `bash -eo pipefail -c SCRIPT`, or `sh -ec SCRIPT`
///   where bash is missing;
/// - `sh`: `sh -ec SCRIPT`;
/// - anything else (`python3`, `node`, `bash -x`): the script is written to
///   `script_file` and run as `SHELL... script_file`.
pub fn shell_argv(
    shell: Option<&str>,
    script: &str,
    script_file: &Path,
) -> std::io::Result<Vec<String>> {
    let shell = shell.unwrap_or("bash").trim();
    let argv = match shell {
        "bash" if have_bash() => vec![
            "bash".into(),
            "-eo".into(),
            "pipefail".into(),
            "-c".into(),
            script.into(),
        ],
        "bash" | "sh" => vec!["sh".into(), "-ec".into(), script.into()],
        other => {
            std::fs::write(script_file, script)?;
            let mut v: Vec<String> = other.split_whitespace().map(str::to_string).collect();
            v.push(script_file.display().to_string());
            v
        }
    };
    Ok(argv)
}

/// Spawns `argv` in a new process group with piped stdout/stderr.
///
/// The program is looked up on the step's own `PATH` here. Given a bare name
/// and a changed `PATH`, std cannot use `posix_spawn` (a vfork-style clone)
/// and forks instead, copying the runtime's page tables; with an absolute
/// path it spawns (checked with strace; see the spawn benchmark).
pub fn spawn(argv: &[String], cwd: &Path, env: &[(String, String)]) -> std::io::Result<Child> {
    let (prog, args) = argv
        .split_first()
        .ok_or_else(|| std::io::Error::other("empty command"))?;
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or("", |(_, v)| v.as_str());
    let program = resolve(prog, path, cwd).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("`{prog}` is not on the step's PATH"),
        )
    })?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(cwd)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    cmd.spawn()
}

/// The executable `prog` names: itself when it holds a `/` (relative to the
/// workspace), else the first executable match on `path`.
fn resolve(prog: &str, path: &str, cwd: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    if prog.contains('/') {
        return Some(cwd.join(prog));
    }
    std::env::split_paths(path).map(|d| d.join(prog)).find(|p| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// True while any live (not zombie) process of the group exists.
///
/// `killpg(pgid, 0)` is the fast answer when the group is gone. When it says
/// the group exists, its members may all be zombies waiting for a parent
/// (init, or a PID 1 that does not reap) to collect them; signalling those
/// does nothing, so `/proc` decides.
pub fn group_alive(pgid: i32) -> bool {
    if matches!(killpg(Pid::from_raw(pgid), None), Err(Errno::ESRCH)) {
        return false;
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return true;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid pgrp ...": comm may hold spaces and parens.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("");
        let pgrp = fields.nth(1).and_then(|f| f.parse::<i32>().ok());
        if pgrp == Some(pgid) && state != "Z" && state != "X" {
            return true;
        }
    }
    false
}

/// Ends every process of the group: SIGTERM, up to `grace` for them to go,
/// then SIGKILL. Returns true when SIGKILL was needed.
pub async fn terminate_group(pgid: i32, grace: Duration) -> bool {
    if !group_alive(pgid) {
        return false;
    }
    let _ = killpg(Pid::from_raw(pgid), Signal::SIGTERM);
    // Stopped processes do not act on SIGTERM until continued.
    let _ = killpg(Pid::from_raw(pgid), Signal::SIGCONT);
    let deadline = tokio::time::Instant::now() + grace;
    let mut wait = Duration::from_millis(1);
    while tokio::time::Instant::now() < deadline {
        if !group_alive(pgid) {
            return false;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_millis(50));
    }
    let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    // SIGKILL cannot be ignored; wait (bounded) until the kernel is done.
    for _ in 0..200 {
        if !group_alive(pgid) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}
