//! An HTTP proxy on loopback that injects faults into the traffic to a real
//! server, like toxiproxy: every request goes through to the upstream
//! unchanged (the `Host` header too, so S3 signatures stay valid), except
//! those a [`Fault`] picks, which are answered with an error instead and
//! never reach the upstream.
//!
//! Used to give a component a flaky object store: point its
//! `AWS_ENDPOINT_URL` at [`FaultProxy::endpoint`] instead of the S3 server.
//! Like [`crate::s3::S3Server`], it runs on its own thread and tokio runtime
//! (`loopback.rs`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::loopback::LoopbackServer;

/// Which requests fail, how and how often.
#[derive(Clone, Debug)]
pub struct Fault {
    /// The request method that fails.
    pub method: Method,
    /// A substring of the request path (such as `/refs/ac/`).
    pub path_contains: String,
    /// The status answered instead (503 is retried by S3 clients, 403 is
    /// not).
    pub status: StatusCode,
    /// The S3 error code in the body (`SlowDown`, `AccessDenied`, ...).
    pub code: String,
    /// How many matching requests fail; `None` fails every one until
    /// [`FaultProxy::clear`].
    pub times: Option<u32>,
}

#[derive(Debug, Default)]
struct State {
    fault: Option<Fault>,
    /// Requests answered with the fault, as `METHOD path`.
    injected: Vec<String>,
    /// Requests passed through, as `METHOD path`.
    passed: Vec<String>,
}

type Body = BoxBody<Bytes, hyper::Error>;

/// A running proxy.
#[derive(Debug)]
pub struct FaultProxy {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    state: Arc<Mutex<State>>,
    _server: LoopbackServer,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (`http://host:port`), with no fault set.
    pub fn start(upstream: &str) -> anyhow::Result<Self> {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .with_context(|| format!("the upstream `{upstream}` is not http://ip:port"))?;
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let service = hyper::service::service_fn(move |req| handle(req, upstream, st.clone()));
        let server = LoopbackServer::start("fault-proxy", service)?;
        Ok(Self {
            endpoint: format!("http://{}", server.addr),
            state,
            _server: server,
        })
    }

    /// Sets the fault (replacing any earlier one).
    pub fn set(&self, fault: Fault) {
        self.lock().fault = Some(fault);
    }

    /// Removes the fault: every request passes again.
    pub fn clear(&self) {
        self.lock().fault = None;
    }

    /// The requests answered with a fault so far, as `METHOD path`.
    pub fn injected(&self) -> Vec<String> {
        self.lock().injected.clone()
    }

    /// The requests passed to the upstream so far, as `METHOD path`.
    pub fn passed(&self) -> Vec<String> {
        self.lock().passed.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

async fn handle(
    req: Request<Incoming>,
    upstream: SocketAddr,
    state: Arc<Mutex<State>>,
) -> Result<Response<Body>, Infallible> {
    let what = format!("{} {}", req.method(), req.uri().path());
    let fault = {
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        let hit = st.fault.as_mut().and_then(|f| {
            let matches = f.method == req.method() && req.uri().path().contains(&f.path_contains);
            if !matches || f.times == Some(0) {
                return None;
            }
            if let Some(n) = &mut f.times {
                *n -= 1;
            }
            Some((f.status, f.code.clone()))
        });
        if hit.is_some() {
            st.injected.push(what.clone());
        } else {
            st.passed.push(what.clone());
        }
        hit
    };
    if let Some((status, code)) = fault {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>injected by the test's fault proxy</Message></Error>"
        );
        return Ok(Response::builder()
            .status(status)
            .header("content-type", "application/xml")
            .body(full(body))
            .expect("a valid response"));
    }
    Ok(forward(req, upstream).await.unwrap_or_else(|e| {
        Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .body(full(format!("fault proxy: {what}: {e:#}")))
            .expect("a valid response")
    }))
}

/// Sends the request to the upstream on a new connection, as it came.
async fn forward(req: Request<Incoming>, upstream: SocketAddr) -> anyhow::Result<Response<Body>> {
    let stream = tokio::net::TcpStream::connect(upstream)
        .await
        .context("connect to the upstream")?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake with the upstream")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender
        .send_request(req)
        .await
        .context("send the request upstream")?;
    Ok(resp.map(BodyExt::boxed))
}

fn full(text: String) -> Body {
    http_body_util::Full::new(Bytes::from(text))
        .map_err(|never| match never {})
        .boxed()
}
