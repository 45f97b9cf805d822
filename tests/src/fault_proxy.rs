//! An HTTP proxy on loopback that injects faults into the traffic to a real
//! server, like toxiproxy: every request goes through to the upstream
//! unchanged (the `Host` header too, so S3 signatures stay valid), except
//! those a [`Fault`] picks, which are answered with an error instead and
//! never reach the upstream.
//!
//! Used to give a component a flaky object store: point its
//! `AWS_ENDPOINT_URL` at [`FaultProxy::endpoint`] instead of the S3 server.
//! Like [`crate::s3::S3Server`], it runs on its own thread and tokio runtime.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use tokio::sync::oneshot;

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
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
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
        let (addr_tx, addr_rx) = std::sync::mpsc::channel::<std::io::Result<SocketAddr>>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let st = state.clone();
        let thread = std::thread::Builder::new()
            .name("fault-proxy".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = addr_tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(serve(upstream, st, addr_tx, stop_rx));
            })?;
        let addr = addr_rx
            .recv()
            .context("the proxy thread exited before listening")??;
        Ok(Self {
            endpoint: format!("http://{addr}"),
            state,
            shutdown: Some(stop_tx),
            thread: Some(thread),
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

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.shutdown.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    upstream: SocketAddr,
    state: Arc<Mutex<State>>,
    addr_tx: std::sync::mpsc::Sender<std::io::Result<SocketAddr>>,
    stop: oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", 0)).await {
        Ok(l) => l,
        Err(e) => {
            let _ = addr_tx.send(Err(e));
            return;
        }
    };
    let _ = addr_tx.send(listener.local_addr());
    let http = ConnBuilder::new(TokioExecutor::new());
    let mut stop = std::pin::pin!(stop);
    loop {
        let socket = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => socket,
                Err(_) => continue,
            },
            _ = stop.as_mut() => break,
        };
        let _ = socket.set_nodelay(true);
        let st = state.clone();
        let service = hyper::service::service_fn(move |req| handle(req, upstream, st.clone()));
        let conn = http
            .serve_connection(TokioIo::new(socket), service)
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
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
