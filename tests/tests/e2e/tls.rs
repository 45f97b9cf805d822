//! One rustls crypto provider for the whole workspace.
//!
//! kube (features `rustls-tls` + `aws-lc-rs`) and object_store (feature `aws`,
//! through reqwest's `rustls`) both speak TLS with rustls. If the build ever
//! enabled rustls' `ring` feature next to `aws_lc_rs`, rustls could no longer
//! pick a process-level provider from its features and the first
//! `ClientConfig::builder()` without an installed default would panic with
//! "Could not automatically determine the process-level CryptoProvider".
//!
//! The clients below talk HTTPS to a loopback port where nothing listens and
//! must get the refused connection back as an error. kube 5 and reqwest 0.13
//! name aws-lc-rs themselves when no default is installed, so those two keep
//! working even in a two-provider build; any other `ClientConfig::builder()`
//! caller would not. The provider probe at the bottom is what catches that
//! build (checked by enabling rustls' `ring` feature: the probe fails, the
//! client tests still pass).

use std::error::Error as StdError;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, TcpListener};
use std::process::Command;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{BackoffConfig, ObjectStoreExt, RetryConfig};
use rustls::crypto::CryptoProvider;

/// A loopback port that was free a moment ago and has no listener now.
fn dead_loopback_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a loopback port");
    listener.local_addr().expect("local address").port()
    // The listener is dropped here, so connecting to the port is refused.
}

/// True when some error in the `source()` chain is an I/O "connection refused".
fn is_connection_refused(err: &(dyn StdError + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == ErrorKind::ConnectionRefused
        {
            return true;
        }
        cur = e.source();
    }
    false
}

/// The whole `source()` chain, for failure messages.
fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}

#[tokio::test]
async fn kube_client_over_https_to_a_dead_port_returns_connection_refused_instead_of_panicking() {
    let url = format!("https://127.0.0.1:{}", dead_loopback_port());
    let config = kube::Config::new(url.parse().expect("valid URL"));
    // Building the client builds the rustls connector: the place where an
    // ambiguous provider set would panic.
    let client = kube::Client::try_from(config).expect("kube client builds");

    let err = client
        .apiserver_version()
        .await
        .expect_err("nothing listens on the port");

    assert!(
        is_connection_refused(&err),
        "expected a refused connection, got: {}",
        chain(&err)
    );
}

#[tokio::test]
async fn s3_client_over_https_to_a_dead_port_returns_connection_refused_instead_of_panicking() {
    let endpoint = format!("https://127.0.0.1:{}", dead_loopback_port());
    // Everything set explicitly: `new()` reads no environment, and with
    // static keys the client never looks for instance metadata.
    let store = AmazonS3Builder::new()
        .with_endpoint(&endpoint)
        .with_bucket_name("kruntimes")
        .with_region("us-east-1")
        .with_access_key_id("kruntimes-test")
        .with_secret_access_key("kruntimes-test-secret")
        // A refused connection is retryable; without this the request would
        // back off for up to three minutes before giving up.
        .with_retry(RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: 0,
            retry_timeout: Duration::from_secs(10),
        })
        .build()
        .expect("S3 client builds");
    let path = Path::from("artifacts/sha256/0000");

    let head = store
        .head(&path)
        .await
        .expect_err("nothing listens on the port");
    assert!(
        is_connection_refused(&head),
        "head: expected a refused connection, got: {}",
        chain(&head)
    );

    let get = store
        .get(&path)
        .await
        .expect_err("nothing listens on the port");
    assert!(
        is_connection_refused(&get),
        "get: expected a refused connection, got: {}",
        chain(&get)
    );
}

/// Set in the child process that runs the provider probe.
const PROBE_ENV: &str = "KRUNTIMES_TLS_PROVIDER_PROBE";

#[test]
fn rustls_picks_aws_lc_rs_as_the_only_compiled_in_provider() {
    if std::env::var_os(PROBE_ENV).is_some() {
        provider_probe();
        return;
    }
    // The other tests in this process build kube clients, and kube installs
    // aws-lc-rs as the process default when none is set; that would hide an
    // ambiguous build from a check made here. So run the probe in a fresh
    // copy of this test binary, where no provider has been installed yet.
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    let name = format!("{module}::rustls_picks_aws_lc_rs_as_the_only_compiled_in_provider");
    let exe = std::env::current_exe().expect("path of the test binary");
    let out = Command::new(exe)
        .args([name.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(PROBE_ENV, "1")
        .output()
        .expect("run the probe");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the provider probe failed ({})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
}

fn provider_probe() {
    assert!(
        CryptoProvider::get_default().is_none(),
        "the probe must run before anything installs a provider"
    );
    // Picks the provider from rustls' crate features; panics when both
    // `aws_lc_rs` and `ring` (or neither) are enabled.
    let _ = rustls::ClientConfig::builder();
    let installed =
        CryptoProvider::get_default().expect("ClientConfig::builder installs the default provider");

    // aws-lc-rs offers the hybrid post-quantum group X25519MLKEM768 and ring
    // does not, so equal group lists name aws-lc-rs.
    let groups = |p: &CryptoProvider| -> Vec<String> {
        p.kx_groups
            .iter()
            .map(|g| format!("{:?}", g.name()))
            .collect()
    };
    let suites = |p: &CryptoProvider| -> Vec<String> {
        p.cipher_suites
            .iter()
            .map(|s| format!("{:?}", s.suite()))
            .collect()
    };
    let aws_lc_rs = rustls::crypto::aws_lc_rs::default_provider();
    assert_eq!(groups(installed), groups(&aws_lc_rs), "key exchange groups");
    assert_eq!(suites(installed), suites(&aws_lc_rs), "cipher suites");
}
