//! Helpers for the end-to-end tests in `tests/tests/e2e/`.

pub mod cluster;
pub mod fault_proxy;
pub mod http;
mod loopback;
pub mod s3;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Path of the `krt` binary built alongside the tests.
///
/// `tests/run.sh` builds it (`cargo build --bin krt`) into the same target
/// directory as the test binary before running the tests.
pub fn krt_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/e2e-<hash> -> target/<profile>/krt
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join(format!("krt{}", std::env::consts::EXE_SUFFIX)))
        .expect("target directory");
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `bash tests/run.sh`, which builds krt first (or run `cargo build --bin krt`)",
        bin.display()
    );
    bin
}

/// Runs `krt` with `args` in the repository root, without color.
pub fn krt(args: &[&str]) -> Output {
    Command::new(krt_bin())
        .args(args)
        .current_dir(repo_root())
        .env("NO_COLOR", "1")
        .env_remove("KRT_COLOR")
        .output()
        .expect("krt runs")
}

/// Standard output as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Standard error as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A fresh temporary directory removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `$TMPDIR/krt-<name>-<pid>-<n>`.
    pub fn new(name: &str) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "krt-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The last `n` lines of `s`, each cut to 400 characters (for failure
/// messages that quote a log).
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<String> = s
        .lines()
        .map(|l| l.chars().take(400).collect::<String>())
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Polls `check` every 100 ms until it returns `Some`. After `deadline`
/// panics naming `what`, followed by `context()` (the logs worth showing),
/// so a broken feature fails the test instead of hanging it.
pub async fn poll_until<T, F, Fut>(
    what: &str,
    deadline: std::time::Duration,
    mut check: F,
    context: impl FnOnce() -> String,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > until {
            panic!(
                "timed out after {deadline:?} waiting for {what}{}",
                context()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
