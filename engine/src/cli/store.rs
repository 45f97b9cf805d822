//! The `--store` option shared by every verb that reads or writes the CAS.

use kruntimes_runtime::cas::{Store, StoreOptions};

/// Where runs, artifacts, logs and the step cache live.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArg {
    /// Content-addressed store: a directory, file:///path, memory:// or
    /// s3://bucket/prefix [default: ~/.cache/kruntimes/store].
    #[arg(long, env = "KRT_STORE", value_name = "URL", global = true)]
    pub store: Option<String>,
}

impl StoreArg {
    /// Opens the store, or says why it cannot be opened.
    pub fn open(&self) -> Result<Store, String> {
        let url = self.store.clone().unwrap_or_else(Store::default_url);
        Store::open(&url, StoreOptions::default())
            .map_err(|e| format!("failed to open the store {url}: {e}"))
    }
}

/// `key=value` for `-p`.
pub fn parse_param(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected KEY=VALUE, got `{s}`"))
}

/// A tokio runtime for the verbs that need one.
pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("failed to start the async runtime: {e}"))
}

/// Prints `error: ...` (and an optional hint) to stderr.
pub fn error(msg: impl std::fmt::Display) {
    eprintln!("error: {msg}");
}
