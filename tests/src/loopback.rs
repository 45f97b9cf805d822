//! An HTTP server on `127.0.0.1:<free port>` with its own thread and tokio
//! runtime, so it works the same from `#[tokio::test]` (any flavour), from a
//! plain `#[test]` and from a benchmark's `main`, and a client blocking its
//! runtime cannot stall it. Dropping it stops it (open connections are
//! cancelled with its runtime). The S3 server and the fault proxy run on it.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::thread::JoinHandle;

use anyhow::Context;
use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use tokio::sync::oneshot;

type BoxError = Box<dyn StdError + Send + Sync>;

/// A running server.
#[derive(Debug)]
pub(crate) struct LoopbackServer {
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl LoopbackServer {
    /// Serves `service` on a thread named `name`.
    pub(crate) fn start<S, B>(name: &str, service: S) -> anyhow::Result<Self>
    where
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel::<std::io::Result<SocketAddr>>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
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
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", 0)).await {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = addr_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = addr_tx.send(listener.local_addr());
                    let http = ConnBuilder::new(TokioExecutor::new());
                    let mut stop = std::pin::pin!(stop_rx);
                    loop {
                        let socket = tokio::select! {
                            accepted = listener.accept() => match accepted {
                                Ok((socket, _)) => socket,
                                Err(_) => continue,
                            },
                            _ = stop.as_mut() => break,
                        };
                        // Without this, a response's headers and body go out
                        // as two small writes and Nagle holds the second
                        // until the client's delayed ACK: 40 ms per small GET.
                        let _ = socket.set_nodelay(true);
                        let conn = http
                            .serve_connection(TokioIo::new(socket), service.clone())
                            .into_owned();
                        tokio::spawn(async move {
                            let _ = conn.await;
                        });
                    }
                });
                // Dropping the runtime cancels the open connections.
            })?;
        let addr = addr_rx
            .recv()
            .with_context(|| format!("the {name} thread exited before listening"))??;
        Ok(Self {
            addr,
            shutdown: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

impl Drop for LoopbackServer {
    fn drop(&mut self) {
        if let Some(stop) = self.shutdown.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
