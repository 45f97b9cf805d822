//! The runtime's HTTP server (`krt runtime serve`): the executor behind an
//! authenticated API, with slots, resumable event streams and graceful
//! shutdown. See [`routes`] for the API.

mod error;
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
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
