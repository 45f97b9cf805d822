//! `krt runtime serve`: a warm runtime behind an authenticated HTTP API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use kruntimes_runtime::cas::{Store, StoreOptions};
use kruntimes_runtime::exec::{Executor, ExecutorConfig};
use kruntimes_runtime::server::{self, AppState, ServerConfig};

use super::Exit;

/// Run a warm runtime: the executor behind an HTTP API.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    Serve(ServeArgs),
}

/// Serve runs over HTTP until SIGTERM or Ctrl-C.
///
/// Every endpoint except `GET /v1/health` requires `Authorization: Bearer
/// <token>`, where the token is the content of `--token-file`. On SIGTERM the
/// runtime stops accepting runs, lets running ones finish for up to
/// `--drain-timeout`, cancels the rest (SIGTERM, `--grace-period`, SIGKILL)
/// and exits.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  head -c 32 /dev/urandom | base64 > token && chmod 600 token
  krt runtime serve --token-file token --slots 8
  curl -H \"Authorization: Bearer $(cat token)\" localhost:7070/v1/capacity

API: POST /v1/runs, GET /v1/runs/{id}, GET /v1/runs/{id}/events?from=N (NDJSON),
DELETE /v1/runs/{id}, GET /v1/capacity, GET /metrics, GET /v1/health (no token).")]
pub struct ServeArgs {
    /// Address to listen on; use 0.0.0.0:7070 in a Pod.
    #[arg(long, env = "KRT_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// File holding the bearer token (at least 16 characters).
    #[arg(long, env = "KRT_TOKEN_FILE", value_name = "FILE")]
    pub token_file: PathBuf,
    /// Concurrent runs [default: the number of CPUs].
    #[arg(long, env = "KRT_SLOTS")]
    pub slots: Option<usize>,
    /// Content-addressed store URL (a path, file://, memory://, s3://bucket/prefix)
    /// [default: ~/.cache/kruntimes/store].
    #[arg(long, env = "KRT_STORE", value_name = "URL")]
    pub store: Option<String>,
    /// Where workspaces are created [default: $TMPDIR/krt-runtime].
    #[arg(long, env = "KRT_WORK_DIR", value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Time between SIGTERM and SIGKILL when a run is cancelled or times out.
    #[arg(long, env = "KRT_GRACE_PERIOD", default_value = "10s", value_parser = parse_duration)]
    pub grace_period: Duration,
    /// On shutdown, how long running runs may go on before they are cancelled.
    #[arg(long, env = "KRT_DRAIN_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    kruntimes_crds::duration::parse_duration(s)
}

fn fail(msg: impl std::fmt::Display, hint: Option<&str>) -> Exit {
    eprintln!("error: {msg}");
    if let Some(h) = hint {
        eprintln!("  (hint: {h})");
    }
    Exit::Internal
}

pub fn run(args: Args) -> Exit {
    match args.command {
        Command::Serve(a) => serve(a),
    }
}

fn serve(args: ServeArgs) -> Exit {
    let token = match std::fs::read_to_string(&args.token_file) {
        Ok(t) => t.trim().to_string(),
        Err(e) => {
            return fail(
                format!(
                    "failed to read the token file {}: {e}",
                    args.token_file.display()
                ),
                Some("create one with `head -c 32 /dev/urandom | base64 > token`"),
            );
        }
    };
    if token.len() < 16 {
        return fail(
            format!(
                "the token in {} is {} characters; at least 16 are required",
                args.token_file.display(),
                token.len()
            ),
            Some("a short token can be guessed, and the runtime executes commands"),
        );
    }
    let slots = args
        .slots
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if slots == 0 {
        return fail("`--slots` must be at least 1", None);
    }
    let store_url = args.store.unwrap_or_else(Store::default_url);
    let store = match Store::open(&store_url, StoreOptions::default()) {
        Ok(s) => s,
        Err(e) => return fail(format!("failed to open the store {store_url}: {e}"), None),
    };
    let work_dir = args
        .work_dir
        .unwrap_or_else(|| std::env::temp_dir().join("krt-runtime"));
    let mut config = ExecutorConfig::new(work_dir);
    config.grace_period = args.grace_period;
    let state = AppState::new(Executor::new(store, config), ServerConfig { token, slots });

    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("failed to start the async runtime: {e}"), None),
    };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(args.listen).await {
            Ok(l) => l,
            Err(e) => return fail(format!("failed to listen on {}: {e}", args.listen), Some("pick another `--listen` address")),
        };
        let addr = listener.local_addr().map_or(args.listen, |a| a);
        eprintln!("krt runtime: listening on http://{addr} with {slots} slots, store {store_url}");
        let drain_state = state.clone();
        let drain_timeout = args.drain_timeout;
        let shutdown = async move {
            wait_for_signal().await;
            eprintln!("krt runtime: shutting down: no new runs; waiting up to {drain_timeout:?} for running ones");
            drain_state.drain(drain_timeout).await;
        };
        match server::serve(state, listener, shutdown).await {
            Ok(()) => {
                eprintln!("krt runtime: stopped");
                Exit::Success
            }
            Err(e) => fail(format!("failed to serve: {e}"), None),
        }
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
