//! The runtime's HTTP server (`krt runtime serve`): the executor behind an
//! authenticated API, with slots, resumable event streams and graceful
//! shutdown. See [`routes`] for the API.

mod error;
mod live;
mod metrics;
pub mod routes;
mod runs;

#[cfg(test)]
mod tests;

use std::future::Future;

pub use error::AppError;
pub use metrics::Histogram;
pub use routes::{MAX_BODY, router};
pub use runs::{AppState, EventChunk, RunHandle, RunStatus, ServerConfig};

/// Serves `state` on `listener` until `shutdown` completes.
pub async fn serve(
    state: AppState,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // Event streams carry small, latency-bound writes (a step's end, a log
    // line): without TCP_NODELAY, Nagle's algorithm holds them back until
    // the peer's delayed ACK, about 40 ms per short step.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "failed to set TCP_NODELAY");
        }
    });
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
