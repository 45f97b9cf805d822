//! One attempt of one Run on one runtime pod: POST it (or, adopting it after
//! a controller restart, check that the runtime still has it), follow the
//! event stream, report back to the dispatcher. Reconnects when the stream
//! breaks; declares the attempt lost when the runtime stops answering.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::Secret;
use kruntimes_crds::SecretEnvRef;
use kruntimes_runtime::exec::{RunEvent, RunRequest, RunResult};
use kube::Api;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use super::{Msg, RunKey};

/// HTTP client for runtimes: keep-alive connections, one pool per pod.
pub(crate) type Http = HyperClient<HttpConnector, Full<Bytes>>;

pub(crate) fn http_client() -> Http {
    let mut conn = HttpConnector::new();
    conn.set_connect_timeout(Some(Duration::from_secs(5)));
    conn.set_nodelay(true);
    HyperClient::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(conn)
}

/// What an attempt reports.
#[derive(Debug)]
pub(crate) enum AttemptEvent {
    /// The first step's process started (microseconds since the epoch).
    Started { at_us: u64 },
    /// The runtime finished the run.
    Finished(Box<RunResult>),
    /// The runtime disappeared or stopped answering.
    Lost(String),
    /// The runtime or the controller refused the Run itself; retrying cannot
    /// help.
    Rejected(String),
    /// The runtime was full (429): put the Run back in the queue.
    Busy,
}

/// Everything an attempt needs.
#[derive(Debug)]
pub(crate) struct AttemptSpec {
    pub key: RunKey,
    pub attempt: u32,
    pub addr: SocketAddr,
    pub token: String,
    pub request: RunRequest,
    pub secret_env: Vec<SecretEnvRef>,
    pub lost_after: Duration,
    /// True when adopting an attempt a previous controller started.
    pub adopt: bool,
}

pub(crate) async fn run(
    spec: AttemptSpec,
    http: Http,
    kube: kube::Client,
    tx: UnboundedSender<Msg>,
    cancel: CancellationToken,
) {
    let key = spec.key.clone();
    let attempt = spec.attempt;
    let report = |ev: AttemptEvent| {
        let _ = tx.send(Msg::Attempt {
            key: key.clone(),
            attempt,
            ev,
        });
    };
    match follow(spec, &http, &kube, &cancel, &report).await {
        Ok(()) => {}
        Err(ev) => report(ev),
    }
}

async fn follow(
    mut spec: AttemptSpec,
    http: &Http,
    kube: &kube::Client,
    cancel: &CancellationToken,
    report: &impl Fn(AttemptEvent),
) -> Result<(), AttemptEvent> {
    let base = format!("http://{}", spec.addr);
    let id = spec.request.id.clone();

    if spec.adopt {
        check_adoptable(&spec, http, &base, &id).await?;
    } else {
        if !spec.secret_env.is_empty() {
            spec.request.secrets = resolve_secrets(kube, &spec.key.0, &spec.secret_env).await?;
        }
        post_run(&spec, http, &base).await?;
    }

    let mut next: u64 = 0;
    let mut started = false;
    let mut cancel_sent = false;
    let mut unreachable_since: Option<tokio::time::Instant> = None;
    loop {
        if cancel.is_cancelled() && !cancel_sent {
            cancel_sent = true;
            let _ = send(
                http,
                Method::DELETE,
                &format!("{base}/v1/runs/{id}"),
                &spec.token,
                None,
            )
            .await;
        }
        let url = format!("{base}/v1/runs/{id}/events?from={next}");
        let req = Request::builder()
            .method(Method::GET)
            .uri(&url)
            .header("authorization", format!("Bearer {}", spec.token))
            .body(Full::new(Bytes::new()))
            .expect("valid request");
        let resp = tokio::select! {
            r = tokio::time::timeout(Duration::from_secs(10), http.request(req)) => r,
            _ = cancel.cancelled(), if !cancel_sent => continue,
        };
        let resp = match resp {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                wait_unreachable(
                    &mut unreachable_since,
                    spec.lost_after,
                    &spec.addr,
                    &e.to_string(),
                )
                .await?;
                continue;
            }
            Err(_) => {
                wait_unreachable(
                    &mut unreachable_since,
                    spec.lost_after,
                    &spec.addr,
                    "no answer in 10s",
                )
                .await?;
                continue;
            }
        };
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(AttemptEvent::Lost(format!(
                "the runtime at {} no longer knows the run (it restarted)",
                spec.addr
            )));
        }
        if !resp.status().is_success() {
            wait_unreachable(
                &mut unreachable_since,
                spec.lost_after,
                &spec.addr,
                &format!("events answered {}", resp.status()),
            )
            .await?;
            continue;
        }
        unreachable_since = None;
        let mut body = resp.into_body();
        let mut buf: Vec<u8> = Vec::new();
        // Liveness: a quiet stream is fine (a long step prints nothing), but
        // the runtime must keep answering its health endpoint.
        let mut probe = tokio::time::interval(Duration::from_secs(10));
        probe.tick().await;
        let mut failed_probes = 0u32;
        loop {
            tokio::select! {
                frame = body.frame() => {
                    match frame {
                        Some(Ok(f)) => {
                            let Ok(data) = f.into_data() else { continue };
                            buf.extend_from_slice(&data);
                            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                                let line: Vec<u8> = buf.drain(..=pos).collect();
                                if let Some(done) = handle_line(&line, &mut next, &mut started, report) {
                                    report(AttemptEvent::Finished(done));
                                    return Ok(());
                                }
                            }
                        }
                        Some(Err(_)) | None => break,
                    }
                }
                _ = probe.tick() => {
                    let health = tokio::time::timeout(
                        Duration::from_secs(5),
                        send(http, Method::GET, &format!("{base}/v1/health"), "", None),
                    ).await;
                    if matches!(health, Ok(Ok((StatusCode::OK, _)))) {
                        failed_probes = 0;
                    } else {
                        failed_probes += 1;
                        if Duration::from_secs(10) * failed_probes >= spec.lost_after {
                            return Err(AttemptEvent::Lost(format!(
                                "the runtime at {} stopped answering for {}s",
                                spec.addr, spec.lost_after.as_secs()
                            )));
                        }
                    }
                }
                _ = cancel.cancelled(), if !cancel_sent => {
                    cancel_sent = true;
                    let _ = send(http, Method::DELETE, &format!("{base}/v1/runs/{id}"), &spec.token, None).await;
                }
            }
        }
        // The stream broke before the end: reconnect from `next`.
    }
}

/// Starts the attempt on the runtime (idempotent by id + attempt).
async fn post_run(spec: &AttemptSpec, http: &Http, base: &str) -> Result<(), AttemptEvent> {
    let body =
        serde_json::to_vec(&spec.request).map_err(|e| AttemptEvent::Rejected(e.to_string()))?;
    let resp = send(
        http,
        Method::POST,
        &format!("{base}/v1/runs"),
        &spec.token,
        Some(body),
    )
    .await
    .map_err(|e| AttemptEvent::Lost(format!("POST to the runtime at {} failed: {e}", spec.addr)))?;
    match resp.0 {
        StatusCode::OK | StatusCode::CREATED => {}
        StatusCode::TOO_MANY_REQUESTS => return Err(AttemptEvent::Busy),
        StatusCode::SERVICE_UNAVAILABLE => {
            return Err(AttemptEvent::Lost(format!(
                "the runtime at {} is shutting down",
                spec.addr
            )));
        }
        StatusCode::UNAUTHORIZED => {
            return Err(AttemptEvent::Lost(format!(
                "the runtime at {} refused the pool token (401); the token Secret may have changed",
                spec.addr
            )));
        }
        s if s.is_client_error() => {
            return Err(AttemptEvent::Rejected(format!(
                "the runtime refused the Run ({s}): {}",
                error_message(&resp.1)
            )));
        }
        s => {
            return Err(AttemptEvent::Lost(format!(
                "the runtime at {} answered {s}: {}",
                spec.addr,
                error_message(&resp.1)
            )));
        }
    }
    Ok(())
}

/// Adoption after a controller restart: the runtime must still have this
/// very attempt. Never POSTs: if the runtime restarted, a POST would run
/// the steps again under the same attempt number, hiding that the first
/// execution was lost; instead the attempt is lost and the retry policy
/// applies, like any other runtime loss.
async fn check_adoptable(
    spec: &AttemptSpec,
    http: &Http,
    base: &str,
    id: &str,
) -> Result<(), AttemptEvent> {
    #[derive(serde::Deserialize)]
    struct Known {
        attempt: u32,
    }
    let mut unreachable_since = None;
    loop {
        let resp = send(
            http,
            Method::GET,
            &format!("{base}/v1/runs/{id}"),
            &spec.token,
            None,
        )
        .await;
        let (status, body) = match resp {
            Ok(r) => r,
            Err(e) => {
                wait_unreachable(&mut unreachable_since, spec.lost_after, &spec.addr, &e).await?;
                continue;
            }
        };
        return match status {
            StatusCode::OK => match serde_json::from_slice::<Known>(&body) {
                Ok(k) if k.attempt == spec.attempt => Ok(()),
                Ok(k) => Err(AttemptEvent::Lost(format!(
                    "the runtime at {} has attempt {} of the run, not attempt {}",
                    spec.addr, k.attempt, spec.attempt
                ))),
                Err(e) => Err(AttemptEvent::Lost(format!(
                    "unreadable run status from the runtime at {}: {e}",
                    spec.addr
                ))),
            },
            StatusCode::NOT_FOUND => Err(AttemptEvent::Lost(format!(
                "the runtime at {} no longer knows the run (it restarted while no controller was following it)",
                spec.addr
            ))),
            StatusCode::UNAUTHORIZED => Err(AttemptEvent::Lost(format!(
                "the runtime at {} refused the pool token (401); the token Secret may have changed",
                spec.addr
            ))),
            s => {
                wait_unreachable(
                    &mut unreachable_since,
                    spec.lost_after,
                    &spec.addr,
                    &format!("run status answered {s}"),
                )
                .await?;
                continue;
            }
        };
    }
}

async fn wait_unreachable(
    since: &mut Option<tokio::time::Instant>,
    lost_after: Duration,
    addr: &SocketAddr,
    why: &str,
) -> Result<(), AttemptEvent> {
    let start = *since.get_or_insert_with(tokio::time::Instant::now);
    if start.elapsed() >= lost_after {
        return Err(AttemptEvent::Lost(format!(
            "the runtime at {addr} has not answered for {}s: {why}",
            lost_after.as_secs()
        )));
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    Ok(())
}

/// Handles one NDJSON line; returns the result when the run finished.
fn handle_line(
    line: &[u8],
    next: &mut u64,
    started: &mut bool,
    report: &impl Fn(AttemptEvent),
) -> Option<Box<RunResult>> {
    #[derive(serde::Deserialize)]
    struct Line {
        seq: u64,
        #[serde(default)]
        event: Option<RunEvent>,
    }
    let line: Line = match serde_json::from_slice(line) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "unreadable event line from a runtime");
            return None;
        }
    };
    *next = line.seq + 1;
    match line.event? {
        RunEvent::StepStarted { at_us, .. } if !*started => {
            *started = true;
            report(AttemptEvent::Started { at_us });
            None
        }
        RunEvent::Finished { result } => Some(result),
        _ => None,
    }
}

/// One request with a buffered response body.
pub(crate) async fn send(
    http: &Http,
    method: Method,
    url: &str,
    token: &str,
    body: Option<Vec<u8>>,
) -> Result<(StatusCode, Bytes), String> {
    let mut req = Request::builder().method(method).uri(url);
    if !token.is_empty() {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(10), http.request(req))
        .await
        .map_err(|_| "no answer in 10s".to_string())?
        .map_err(|e| error_chain(&e))?;
    let status = resp.status();
    let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .map_err(|_| "the response body stalled".to_string())?
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(500).collect())
}

async fn resolve_secrets(
    kube: &kube::Client,
    ns: &str,
    refs: &[SecretEnvRef],
) -> Result<BTreeMap<String, String>, AttemptEvent> {
    let api: Api<Secret> = Api::namespaced(kube.clone(), ns);
    let mut out = BTreeMap::new();
    for r in refs {
        let secret = api
            .get_opt(&r.secret_name)
            .await
            .map_err(|e| AttemptEvent::Lost(format!("reading Secret `{}`: {e}", r.secret_name)))?;
        let Some(secret) = secret else {
            return Err(AttemptEvent::Rejected(format!(
                "secretEnv `{}`: Secret `{}` does not exist in namespace `{ns}`",
                r.name, r.secret_name
            )));
        };
        let value = secret
            .data
            .as_ref()
            .and_then(|d| d.get(&r.key))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .or_else(|| {
                secret
                    .string_data
                    .as_ref()
                    .and_then(|d| d.get(&r.key).cloned())
            });
        let Some(value) = value else {
            return Err(AttemptEvent::Rejected(format!(
                "secretEnv `{}`: Secret `{}` has no key `{}`",
                r.name, r.secret_name, r.key
            )));
        };
        out.insert(r.name.clone(), value);
    }
    Ok(out)
}
