//! The content-addressed store against a real S3 server (s3s-fs on
//! loopback, signature v4): upload once, download verified, tampering
//! detected, multipart above the threshold, wrong credentials refused.
//!
//! Each download uses a fresh `Store` with an empty cache, so the bytes
//! really come over HTTP from the server.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use kruntimes_runtime::Digest;
use kruntimes_runtime::cas::{CasError, MULTIPART_THRESHOLD, PART_SIZE, Store, StoreOptions};
use kruntimes_tests::TempDir;
use kruntimes_tests::s3::S3Server;
use object_store::ObjectStoreExt;

/// A client of `server` with its own empty cache under `dir`.
fn client(server: &S3Server, dir: &TempDir, name: &str) -> Store {
    client_with_secret(server, dir, name, &server.secret)
}

fn client_with_secret(server: &S3Server, dir: &TempDir, name: &str, secret: &str) -> Store {
    Store::open_s3(
        &server.bucket,
        "ci",
        &server.endpoint,
        &server.region,
        &server.key_id,
        secret,
        true,
        StoreOptions {
            cache_dir: Some(dir.path().join(name)),
            cache_max_bytes: 256 << 20,
        },
    )
    .expect("open the S3 store")
}

/// Deterministic bytes that do not compress or repeat.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn write(root: &Path, rel: &str, content: &[u8], mode: u32) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, content).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
}

fn key(d: &Digest) -> String {
    format!("ci/cas/sha256/{}", d.hex())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_is_uploaded_once_and_materialises_identically_from_s3() {
    let server = S3Server::start().unwrap();
    let dir = TempDir::new("s3-tree");
    let src = dir.path().join("src");
    write(&src, "bin/app", b"#!/bin/sh\necho app\n", 0o755);
    write(&src, "data/big.bin", &noise(300_000, 1), 0o644);
    for i in 0..40 {
        write(
            &src,
            &format!("data/small/{i:02}.txt"),
            format!("file {i}\n").as_bytes(),
            0o644,
        );
    }
    fs::create_dir_all(src.join("empty")).unwrap();
    symlink("bin/app", src.join("app-link")).unwrap();

    let up = client(&server, &dir, "cache-up");
    let tree = up.capture_dir(&src).await.unwrap();
    let first = up.stats();
    assert_eq!(
        first.blobs_uploaded, 43,
        "42 files and the manifest: {first:?}"
    );
    assert!(
        server.keys().contains(&key(&tree)),
        "the manifest is a blob under cas/sha256/"
    );

    let again = up.capture_dir(&src).await.unwrap();
    let second = up.stats().since(&first);
    assert_eq!(again, tree);
    assert_eq!(
        (second.blobs_uploaded, second.bytes_uploaded),
        (0, 0),
        "no blob bytes the second time: {second:?}"
    );
    assert_eq!(second.blobs_skipped, 43, "{second:?}");

    // Another machine: empty cache, everything over HTTP, verified.
    let down = client(&server, &dir, "cache-down");
    let out = dir.path().join("out");
    down.materialize(&tree, &out).await.unwrap();
    let got = down.stats();
    assert_eq!((got.blobs_downloaded, got.cache_hits), (43, 0), "{got:?}");
    assert_eq!(
        fs::read(out.join("data/big.bin")).unwrap(),
        noise(300_000, 1)
    );
    assert_eq!(
        fs::metadata(out.join("bin/app"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );
    assert_eq!(
        fs::read_link(out.join("app-link")).unwrap(),
        Path::new("bin/app")
    );
    assert!(out.join("empty").is_dir());
    // The same tree, by digest: every path, mode, link and byte.
    let local = Store::open(
        dir.path().join("local").to_str().unwrap(),
        StoreOptions::default(),
    )
    .unwrap();
    assert_eq!(local.capture_dir(&out).await.unwrap(), tree);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_tampered_with_on_the_server_is_refused_naming_both_digests() {
    let server = S3Server::start().unwrap();
    let dir = TempDir::new("s3-tamper");
    let src = dir.path().join("src");
    write(&src, "release.tar", b"the genuine release", 0o644);
    let tree = client(&server, &dir, "c1").capture_dir(&src).await.unwrap();
    let blob = Digest::of(b"the genuine release");
    let file = server.object_file(&key(&blob));
    // Same length, so only the content check can tell.
    fs::write(&file, b"the GENUINE release").unwrap();
    let tampered = Digest::of(&fs::read(&file).unwrap());

    let store = client(&server, &dir, "c2");
    let err = store.get_bytes(&blob).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, CasError::DigestMismatch { .. }), "{err:?}");
    assert!(
        msg.contains(&blob.to_string()) && msg.contains(&tampered.to_string()),
        "{msg}"
    );
    assert!(
        msg.contains(&format!(
            "s3://{}/ci/cas/sha256/{}",
            server.bucket,
            blob.hex()
        )),
        "{msg}"
    );

    let out = dir.path().join("out");
    let err = store.materialize(&tree, &out).await.unwrap_err();
    assert!(matches!(err, CasError::DigestMismatch { .. }), "{err:?}");
    assert!(
        !out.join("release.tar").exists(),
        "nothing unverified is materialised"
    );
    assert_eq!(
        fs::read_dir(&out).unwrap().count(),
        0,
        "no temp file is left either"
    );
    assert!(
        !dir.path().join("c2").join(blob.hex()).exists(),
        "and nothing corrupt is cached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_above_the_multipart_threshold_round_trips_through_s3_in_parts() {
    let server = S3Server::start().unwrap();
    let dir = TempDir::new("s3-multipart");
    let len = MULTIPART_THRESHOLD as usize + PART_SIZE / 2 + 12_345;
    let parts = len.div_ceil(PART_SIZE); // 3
    let data = noise(len, 7);
    let big = dir.path().join("big.bin");
    fs::write(&big, &data).unwrap();

    let store = client(&server, &dir, "c1");
    let d = store.put_file(&big).await.unwrap();
    assert_eq!(d, Digest::of(&data));
    let s = store.stats();
    assert_eq!(
        (s.multipart_uploads, s.blobs_uploaded, s.bytes_uploaded),
        (1, 1, len as u64),
        "{s:?}"
    );

    // The server's own word: a multipart object's ETag ends in `-<parts>`.
    let s3 = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(&server.bucket)
        .with_endpoint(&server.endpoint)
        .with_region(&server.region)
        .with_access_key_id(&server.key_id)
        .with_secret_access_key(&server.secret)
        .with_allow_http(true)
        .build()
        .unwrap();
    let meta = s3
        .head(&object_store::path::Path::from(key(&d)))
        .await
        .unwrap();
    assert_eq!(meta.size, len as u64);
    let etag = meta.e_tag.unwrap_or_default();
    assert!(
        etag.trim_matches('"').ends_with(&format!("-{parts}")),
        "ETag {etag} is not that of a {parts}-part upload"
    );

    let out = dir.path().join("out/big.bin");
    client(&server, &dir, "c2")
        .get_to_file(&d, &out)
        .await
        .unwrap();
    assert!(
        fs::read(&out).unwrap() == data,
        "the download equals the original"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_key_is_refused_and_nothing_is_written() {
    let server = S3Server::start().unwrap();
    let dir = TempDir::new("s3-auth");
    let store = client_with_secret(&server, &dir, "c1", "not-the-secret");
    let err = store.put_bytes("payload".into()).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, CasError::AccessDenied { .. }), "{err:?}");
    assert!(
        msg.starts_with(&format!("access s3://{}/ci/cas/sha256/", server.bucket)),
        "{msg}"
    );
    assert!(msg.contains("access denied"), "{msg}");
    // A request with a body says why.
    let err = store.get_bytes(&Digest::of(b"payload")).await.unwrap_err();
    assert!(err.to_string().contains("SignatureDoesNotMatch"), "{err}");
    assert_eq!(
        server.keys(),
        Vec::<String>::new(),
        "the bucket is still empty"
    );

    // The right secret works against the same server.
    client(&server, &dir, "c2")
        .put_bytes("payload".into())
        .await
        .unwrap();
    assert_eq!(server.keys(), [key(&Digest::of(b"payload"))]);
}

/// The child half of the next test: run in its own process so the `AWS_*`
/// variables it reads are set for it alone.
#[tokio::test]
#[ignore = "run by an_s3_url_is_configured_from_the_aws_environment, in a child process"]
async fn child_puts_and_gets_through_an_s3_url_from_the_environment() {
    let Ok(url) = std::env::var("KRT_TEST_S3_URL") else {
        eprintln!("nothing to do: only meaningful when started by the parent test");
        return;
    };
    let store = Store::open(
        &url,
        StoreOptions {
            cache_max_bytes: 0,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    assert_eq!(store.url(), url);
    let d = store
        .put_bytes("configured from the environment".into())
        .await
        .unwrap();
    assert_eq!(
        store.get_bytes(&d).await.unwrap(),
        "configured from the environment"
    );
}

#[test]
fn an_s3_url_is_configured_from_the_aws_environment() {
    let server = S3Server::start().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap());
    child
        .args([
            "--exact",
            "store::child_puts_and_gets_through_an_s3_url_from_the_environment",
        ])
        .args(["--include-ignored", "--nocapture", "--test-threads=1"])
        .env(
            "KRT_TEST_S3_URL",
            format!("s3://{}/from-env", server.bucket),
        );
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("AWS_")) {
        child.env_remove(k);
    }
    let out = child.envs(server.env()).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.contains("1 passed"), "{text}");
    let d = Digest::of(b"configured from the environment");
    assert_eq!(server.keys(), [format!("from-env/cas/sha256/{}", d.hex())]);
}
