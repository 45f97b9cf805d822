//! Container probes as the kubelet runs them: `httpGet`, `tcpSocket` and
//! `exec`, with `initialDelaySeconds`, `periodSeconds`, `timeoutSeconds`,
//! `successThreshold` and `failureThreshold`. A gRPC probe (or HTTPS) is not
//! supported: it always fails, and says so in the pod's node log.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerPort, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::container::Fs;
use super::proc;

/// Where and how a container's probes run.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub ip: Ipv4Addr,
    pub ports: Vec<ContainerPort>,
    /// For `exec` probes: the container's view of the filesystem,
    pub fs: Fs,
    /// its environment (PATH and HOME included),
    pub env: Vec<(String, String)>,
    /// and working directory.
    pub cwd: PathBuf,
    /// Where failures are noted.
    pub log: PathBuf,
    /// `Readiness`, `Liveness` or `Startup`, for the log.
    pub what: &'static str,
}

/// Runs one probe repeatedly and tells when its result changes.
#[derive(Debug)]
pub(crate) struct Prober {
    probe: Probe,
    target: Target,
    started: bool,
    successes: i32,
    failures: i32,
    result: bool,
}

impl Prober {
    /// `initial` is the result before the first probe: false for readiness
    /// and startup, true for liveness.
    pub(crate) fn new(probe: Probe, target: Target, initial: bool) -> Self {
        Self {
            probe,
            target,
            started: false,
            successes: 0,
            failures: 0,
            result: initial,
        }
    }

    /// Probes every period until the result flips; returns the new result.
    pub(crate) async fn next_change(&mut self) -> bool {
        let secs = |v: Option<i32>, default: i32| {
            Duration::from_secs(u64::try_from(v.unwrap_or(default).max(0)).unwrap_or(0))
        };
        let period = secs(self.probe.period_seconds, 10).max(Duration::from_secs(1));
        let success_threshold = self.probe.success_threshold.unwrap_or(1).max(1);
        let failure_threshold = self.probe.failure_threshold.unwrap_or(3).max(1);
        loop {
            if self.started {
                tokio::time::sleep(period).await;
            } else {
                self.started = true;
                tokio::time::sleep(secs(self.probe.initial_delay_seconds, 0)).await;
            }
            match self.check().await {
                Ok(()) => {
                    self.failures = 0;
                    self.successes += 1;
                    if !self.result && self.successes >= success_threshold {
                        self.result = true;
                        return true;
                    }
                }
                Err(e) => {
                    proc::note(
                        &self.target.log,
                        &format!(
                            "{} {} probe failed: {e}",
                            super::node::now(),
                            self.target.what
                        ),
                    );
                    self.successes = 0;
                    self.failures += 1;
                    if self.result && self.failures >= failure_threshold {
                        self.result = false;
                        return false;
                    }
                }
            }
        }
    }

    async fn check(&self) -> Result<(), String> {
        let timeout = Duration::from_secs(
            u64::try_from(self.probe.timeout_seconds.unwrap_or(1).max(1)).unwrap_or(1),
        );
        let work = async {
            if let Some(h) = &self.probe.http_get {
                if h.scheme.as_deref().is_some_and(|s| s != "HTTP") {
                    return Err(format!(
                        "unsupported probe: httpGet scheme {:?} (the krt test node speaks HTTP only)",
                        h.scheme
                    ));
                }
                let addr = self.addr(h.host.as_deref(), &h.port)?;
                let headers: String = h
                    .http_headers
                    .iter()
                    .flatten()
                    .map(|hd| format!("{}: {}\r\n", hd.name, hd.value))
                    .collect();
                http_get(addr, h.path.as_deref().unwrap_or("/"), &headers).await
            } else if let Some(t) = &self.probe.tcp_socket {
                let addr = self.addr(t.host.as_deref(), &t.port)?;
                TcpStream::connect(addr)
                    .await
                    .map(drop)
                    .map_err(|e| format!("dial tcp {addr}: {e}"))
            } else if let Some(e) = &self.probe.exec {
                self.exec(e.command.as_deref().unwrap_or_default()).await
            } else {
                Err("unsupported probe: only httpGet, tcpSocket and exec are supported by the krt test node".into())
            }
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(format!("timed out after {timeout:?}")),
        }
    }

    fn addr(&self, host: Option<&str>, port: &IntOrString) -> Result<SocketAddr, String> {
        let ip: IpAddr = match host {
            Some(h) if !h.is_empty() => {
                h.parse().map_err(|_| format!("host {h:?} is not an IP"))?
            }
            _ => self.target.ip.into(),
        };
        let port = match port {
            IntOrString::Int(p) => u16::try_from(*p).map_err(|_| format!("bad port {p}"))?,
            IntOrString::String(name) => self
                .target
                .ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .ok_or_else(|| format!("no container port named {name:?}"))?,
        };
        Ok(SocketAddr::new(ip, port))
    }

    async fn exec(&self, command: &[String]) -> Result<(), String> {
        let Some((program, args)) = command.split_first() else {
            return Err("exec probe has no command".into());
        };
        let fs = &self.target.fs;
        let mut cmd = proc::command(fs.rewrite(program.clone()));
        cmd.args(args.iter().map(|a| fs.rewrite(a.clone())))
            .env_clear()
            .envs(self.target.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.target.cwd)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().map_err(|e| format!("exec {program:?}: {e}"))?;
        let pid = child.id();
        let guard = KillOnDrop(pid);
        let status = child
            .wait()
            .await
            .map_err(|e| format!("wait {program:?}: {e}"))?;
        std::mem::forget(guard);
        if status.success() {
            Ok(())
        } else {
            Err(format!("command {command:?} exited with {status}"))
        }
    }
}

/// Kills an exec probe's process group when the probe times out (its future
/// is dropped).
struct KillOnDrop(Option<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            proc::kill_session(pid);
        }
    }
}

/// One HTTP/1.1 GET; 200-399 is a success, like the kubelet's prober.
pub(crate) async fn http_get(addr: SocketAddr, path: &str, headers: &str) -> Result<(), String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("Get http://{addr}{path}: {e}"))?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.20\r\nAccept: */*\r\n{headers}Connection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("Get http://{addr}{path}: {e}"))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") {
        let n = s
            .read(&mut buf)
            .await
            .map_err(|e| format!("Get http://{addr}{path}: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("Get http://{addr}{path}: no status line in {line:?}"))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}
