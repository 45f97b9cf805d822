//! Names, labels and the pod contract shared by the controller, the test
//! node and the examples.

use kruntimes_crds::{Run, RuntimePool};
use kube::ResourceExt;

/// Field manager of every server-side apply the controller makes.
pub const MANAGER: &str = "kruntimes-controller";
/// Label on every pod of a pool: the pool name.
pub const POOL_LABEL: &str = "kruntimes.io/pool";
/// `app.kubernetes.io/name` of runtime pods.
pub const RUNTIME_APP: &str = "kruntimes-runtime";
/// Key of the runtime token in the pool Secret.
pub const TOKEN_KEY: &str = "token";
/// Port the runtime listens on unless the pool says otherwise.
pub const DEFAULT_PORT: i32 = 7070;
/// Name of the runtime container (the one the dispatcher talks to).
pub const RUNTIME_CONTAINER: &str = "runtime";
/// Where the init container puts `krt` inside the pool's image.
pub const KRT_BIN_DIR: &str = "/opt/kruntimes/bin";
/// Where the token Secret is mounted.
pub const TOKEN_DIR: &str = "/var/run/kruntimes/token";
/// Where workspaces are created inside the pod.
pub const WORK_DIR: &str = "/var/lib/kruntimes/work";
/// Image that provides the static `krt` binary at `/krt`.
pub const DEFAULT_KRT_IMAGE: &str = concat!("ghcr.io/kruntimes/krt:", env!("CARGO_PKG_VERSION"));

/// Deployment and Secret of a pool: `krt-<pool>`.
pub fn pool_object_name(pool: &RuntimePool) -> String {
    pool_object_name_for(&pool.name_any())
}

/// Deployment and Secret name for a pool name.
pub fn pool_object_name_for(pool: &str) -> String {
    format!("krt-{pool}")
}

/// The id a Run has on a runtime: stable across controller restarts (so an
/// adopted Run is found again) and distinct for a Run deleted and created
/// again under the same name.
pub fn runtime_run_id(run: &Run) -> String {
    let uid = run.metadata.uid.as_deref().unwrap_or("nouid");
    let short: String = uid.chars().filter(|c| *c != '-').take(12).collect();
    format!(
        "{}.{}.{}",
        run.namespace().unwrap_or_default(),
        run.name_any(),
        short
    )
}
