//! Store tests with real directories and a filesystem or in-memory store.
//! (The S3 round trips are in tests/tests/e2e/store.rs.)

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

use super::testutil::{TestDir, write_file};
use super::*;
use crate::digest::Digest;

fn local_store(dir: &TestDir) -> Store {
    Store::open(dir.join("store").to_str().unwrap(), StoreOptions::default()).unwrap()
}

fn memory_store(dir: &TestDir, max: u64) -> Store {
    Store::open(
        "memory://",
        StoreOptions {
            cache_dir: Some(dir.join("cache")),
            cache_max_bytes: max,
        },
    )
    .unwrap()
}

fn paths(m: &Manifest) -> Vec<&str> {
    m.entries.iter().map(|e| e.path.as_str()).collect()
}

fn pats(p: &[&str]) -> Vec<String> {
    p.iter().map(|s| s.to_string()).collect()
}

/// Every path below `dir`, sorted, for "nothing was written" checks.
fn listing(dir: &Path) -> Vec<String> {
    let mut all: Vec<String> = walkdir::WalkDir::new(dir)
        .min_depth(1)
        .into_iter()
        .map(|e| {
            e.unwrap()
                .path()
                .strip_prefix(dir)
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    all.sort();
    all
}

fn sample_tree(root: &Path) {
    write_file(root, "bin/tool", b"#!/bin/sh\necho hi\n", 0o755);
    write_file(root, "src/lib.rs", b"pub fn f() {}\n", 0o644);
    write_file(root, "src/nested/deep.txt", b"deep", 0o600);
    write_file(root, "empty.txt", b"", 0o644);
    fs::create_dir_all(root.join("empty-dir")).unwrap();
    symlink("src/lib.rs", root.join("lib-link")).unwrap();
    symlink("../lib.rs", root.join("src/nested/up-link")).unwrap();
    symlink("nested", root.join("src/dir-link")).unwrap();
}

#[tokio::test]
async fn materialize_then_capture_round_trips_exec_bits_symlinks_and_empty_dirs() {
    let dir = TestDir::new("roundtrip");
    let store = local_store(&dir);
    let src = dir.join("src");
    sample_tree(&src);
    let tree = store.capture_dir(&src).await.unwrap();

    let out = dir.join("out");
    store.materialize(&tree, &out).await.unwrap();
    assert_eq!(
        store.capture_dir(&out).await.unwrap(),
        tree,
        "the same tree digest after a round trip"
    );

    let mode = |p: &str| fs::metadata(out.join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("bin/tool"), 0o755);
    assert_eq!(mode("src/lib.rs"), 0o644);
    assert_eq!(
        fs::read(out.join("bin/tool")).unwrap(),
        b"#!/bin/sh\necho hi\n"
    );
    assert_eq!(
        fs::read_link(out.join("lib-link")).unwrap(),
        Path::new("src/lib.rs")
    );
    assert_eq!(
        fs::read_link(out.join("src/nested/up-link")).unwrap(),
        Path::new("../lib.rs")
    );
    assert!(
        fs::symlink_metadata(out.join("src/dir-link"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(out.join("empty-dir").is_dir());

    let m = store.get_manifest(&tree).await.unwrap();
    let tool = m.entries.iter().find(|e| e.path == "bin/tool").unwrap();
    assert!(tool.executable && tool.kind == EntryKind::File && tool.size == 18);
    assert!(
        !listing(&out).iter().any(|p| p.contains(".krt-")),
        "no temp files are left behind"
    );
}

#[tokio::test]
async fn uploading_an_unchanged_tree_again_sends_no_blob() {
    let dir = TestDir::new("reupload");
    let store = local_store(&dir);
    let src = dir.join("src");
    sample_tree(&src);
    let first = store.capture_dir(&src).await.unwrap();
    let before = store.stats();
    assert_eq!(store.capture_dir(&src).await.unwrap(), first);
    let second = store.stats().since(&before);
    assert_eq!(
        (second.blobs_uploaded, second.bytes_uploaded),
        (0, 0),
        "{second:?}"
    );
    // Four files (two with the same content would be one blob) and the manifest.
    assert_eq!(second.blobs_skipped, 5, "{second:?}");
}

#[tokio::test]
async fn globs_match_within_and_across_directories() {
    let dir = TestDir::new("glob");
    let store = local_store(&dir);
    let root = dir.join("ws");
    for p in [
        "dist/a.tar.gz",
        "dist/sub/b.tar.gz",
        "dist/c.txt",
        "other/d.tar.gz",
    ] {
        write_file(&root, p, p.as_bytes(), 0o644);
    }
    let m = |pattern: &str| {
        let (store, root) = (store.clone(), root.clone());
        let pattern = pattern.to_owned();
        async move {
            store
                .get_manifest(&store.capture(&root, &[pattern]).await.unwrap())
                .await
                .unwrap()
        }
    };
    assert_eq!(
        paths(&m("dist/**/*.tar.gz").await),
        ["dist", "dist/a.tar.gz", "dist/sub", "dist/sub/b.tar.gz"]
    );
    assert_eq!(
        paths(&m("dist/*.tar.gz").await),
        ["dist", "dist/a.tar.gz"],
        "`*` stays in one directory"
    );
    assert_eq!(
        paths(&m("**/*.tar.gz").await),
        [
            "dist",
            "dist/a.tar.gz",
            "dist/sub",
            "dist/sub/b.tar.gz",
            "other",
            "other/d.tar.gz"
        ]
    );
    assert_eq!(
        paths(&m("./dist/c.txt").await),
        ["dist", "dist/c.txt"],
        "a plain file path"
    );
    assert_eq!(
        paths(&m("dist/sub/").await),
        ["dist", "dist/sub", "dist/sub/b.tar.gz"],
        "a directory means all below it"
    );
    let both = store
        .capture(&root, &pats(&["dist/c.txt", "other"]))
        .await
        .unwrap();
    assert_eq!(
        paths(&store.get_manifest(&both).await.unwrap()),
        ["dist", "dist/c.txt", "other", "other/d.tar.gz"]
    );
}

#[tokio::test]
async fn a_pattern_that_matches_nothing_is_an_error_naming_it() {
    let dir = TestDir::new("nomatch");
    let store = local_store(&dir);
    let root = dir.join("ws");
    write_file(&root, "dist/a.txt", b"a", 0o644);
    for pattern in ["dist/*.zip", "missing.txt", "dist/a.txt/x", "nope/**"] {
        let err = store
            .capture(&root, &pats(&["dist/a.txt", pattern]))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, CasError::NoMatch { pattern: p } if p == pattern),
            "{pattern}: {err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("capture `{pattern}`: it matches no file")
        );
    }
}

#[tokio::test]
async fn capture_refuses_absolute_and_dot_dot_patterns() {
    let dir = TestDir::new("badpattern");
    let store = local_store(&dir);
    let root = dir.join("ws");
    write_file(&root, "a.txt", b"a", 0o644);
    write_file(dir.path(), "secret.txt", b"s", 0o644);
    for (pattern, why) in [
        ("/etc/passwd", "absolute"),
        ("../secret.txt", "`..`"),
        ("a/../../secret.txt", "`..`"),
    ] {
        let err = store.capture(&root, &pats(&[pattern])).await.unwrap_err();
        match &err {
            CasError::UnsafePath { path, reason } => {
                assert_eq!(path, pattern);
                assert!(reason.contains(why), "{reason}");
            }
            other => panic!("{pattern}: expected UnsafePath, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn capture_refuses_symlinks_that_leave_the_root() {
    let dir = TestDir::new("escape");
    let store = local_store(&dir);
    let root = dir.join("ws");
    write_file(&root, "ok.txt", b"ok", 0o644);
    write_file(dir.path(), "outside/secret", b"s", 0o644);
    fs::create_dir_all(root.join("a/b")).unwrap();

    symlink("../../../outside", root.join("a/b/escape")).unwrap();
    let err = store.capture_dir(&root).await.unwrap_err();
    assert!(
        matches!(&err, CasError::UnsafePath { path, reason } if path == "a/b/escape" && reason.contains("leaves the root")),
        "{err:?}"
    );
    fs::remove_file(root.join("a/b/escape")).unwrap();

    symlink(dir.join("outside/secret"), root.join("abs")).unwrap();
    let err = store.capture(&root, &pats(&["abs"])).await.unwrap_err();
    assert!(
        matches!(&err, CasError::UnsafePath { reason, .. } if reason.contains("absolute")),
        "{err:?}"
    );
    fs::remove_file(root.join("abs")).unwrap();

    // A path through a symlinked directory is refused even when named directly.
    symlink("../outside", root.join("out")).unwrap();
    let err = store
        .capture(&root, &pats(&["out/secret"]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CasError::UnsafePath { reason, .. } if reason.contains("is a symlink")),
        "{err:?}"
    );
}

#[tokio::test]
async fn capture_sees_escapes_through_links_it_did_not_capture() {
    let dir = TestDir::new("escape-hidden");
    let store = local_store(&dir);
    let root = dir.join("ws");
    write_file(dir.path(), "outside/secret", b"s", 0o644);
    fs::create_dir_all(&root).unwrap();
    // `hop` is in the root but not captured; `l` looks harmless as text.
    symlink("../outside", root.join("hop")).unwrap();
    symlink("hop/secret", root.join("l")).unwrap();
    let err = store.capture(&root, &pats(&["l"])).await.unwrap_err();
    assert!(
        matches!(&err, CasError::UnsafePath { path, reason } if path == "l" && reason.contains("outside the root")),
        "{err:?}"
    );
}

/// Stores a hand-made (possibly hostile) manifest as a tree.
async fn put_manifest(store: &Store, entries: Vec<Entry>) -> Digest {
    store
        .put_bytes(Manifest::new(entries).to_bytes().into())
        .await
        .unwrap()
}

#[tokio::test]
async fn materialize_refuses_a_manifest_with_a_dot_dot_path_and_writes_nothing() {
    let dir = TestDir::new("mat-dotdot");
    let store = local_store(&dir);
    let blob = store.put_bytes("pwned".into()).await.unwrap();
    let tree = put_manifest(
        &store,
        vec![
            Entry::file("ok", blob, 5, false),
            Entry::file("../x", blob, 5, false),
        ],
    )
    .await;
    let dest = dir.join("ws/dest");
    let err = store.materialize(&tree, &dest).await.unwrap_err();
    assert!(
        matches!(&err, CasError::UnsafePath { path, reason } if path == "../x" && reason.contains("`..`")),
        "{err:?}"
    );
    assert!(!dir.join("ws/x").exists());
    assert!(!dest.exists(), "validation happens before any write");

    let tree = put_manifest(&store, vec![Entry::file("/tmp/krt-pwned", blob, 5, false)]).await;
    let err = store.materialize(&tree, &dest).await.unwrap_err();
    assert!(
        matches!(&err, CasError::UnsafePath { reason, .. } if reason.contains("absolute")),
        "{err:?}"
    );
}

#[tokio::test]
async fn materialize_refuses_a_symlink_out_of_the_tree_and_a_file_below_it() {
    let dir = TestDir::new("mat-link");
    let store = local_store(&dir);
    let blob = store.put_bytes("root:x:0:0".into()).await.unwrap();
    let dest = dir.join("dest");
    // The classic: `a -> ../../etc`, then `a/passwd`.
    let tree = put_manifest(
        &store,
        vec![
            Entry::symlink("a", "../../etc"),
            Entry::file("a/passwd", blob, 10, false),
        ],
    )
    .await;
    let err = store.materialize(&tree, &dest).await.unwrap_err();
    assert!(matches!(err, CasError::UnsafePath { .. }), "{err:?}");
    // The link alone is refused too.
    let tree = put_manifest(&store, vec![Entry::symlink("a", "../../etc")]).await;
    let err = store.materialize(&tree, &dest).await.unwrap_err();
    assert!(
        matches!(&err, CasError::UnsafePath { path, reason } if path == "a" && reason.contains("leaves the root")),
        "{err:?}"
    );
    // And a harmless link still cannot be written through.
    let tree = put_manifest(
        &store,
        vec![
            Entry::dir("d"),
            Entry::symlink("a", "d"),
            Entry::file("a/f", blob, 10, false),
        ],
    )
    .await;
    let err = store.materialize(&tree, &dest).await.unwrap_err();
    assert!(
        matches!(&err, CasError::UnsafePath { path, .. } if path == "a/f"),
        "{err:?}"
    );
    assert!(!dest.exists());
}

#[tokio::test]
async fn materialize_does_not_write_through_a_symlink_already_in_the_destination() {
    let dir = TestDir::new("mat-existing-link");
    let store = local_store(&dir);
    let blob = store.put_bytes("payload".into()).await.unwrap();
    let outside = dir.join("outside");
    write_file(&outside, "victim", b"original", 0o644);
    let dest = dir.join("dest");
    fs::create_dir_all(&dest).unwrap();
    symlink(&outside, dest.join("a")).unwrap();
    symlink(outside.join("victim"), dest.join("f")).unwrap();

    // A directory where dest has a symlink: refused.
    let tree = put_manifest(
        &store,
        vec![Entry::dir("a"), Entry::file("a/victim", blob, 7, false)],
    )
    .await;
    let err = store.materialize(&tree, &dest).await.unwrap_err();
    assert!(
        matches!(&err, CasError::UnsafePath { path, .. } if path == "a"),
        "{err:?}"
    );
    // A file where dest has a symlink: the link is replaced, not followed.
    let tree = put_manifest(&store, vec![Entry::file("f", blob, 7, false)]).await;
    store.materialize(&tree, &dest).await.unwrap();
    assert!(fs::symlink_metadata(dest.join("f")).unwrap().is_file());
    assert_eq!(fs::read(dest.join("f")).unwrap(), b"payload");
    assert_eq!(fs::read(outside.join("victim")).unwrap(), b"original");
}

/// The file of a blob in a filesystem store.
fn blob_file(dir: &TestDir, d: &Digest) -> std::path::PathBuf {
    dir.join("store/cas/sha256").join(d.hex())
}

#[tokio::test]
async fn a_tampered_blob_in_a_local_store_is_detected_and_never_materialised() {
    let dir = TestDir::new("tamper");
    let store = local_store(&dir);
    let root = dir.join("ws");
    write_file(&root, "app/bin", b"genuine binary", 0o755);
    let tree = store.capture_dir(&root).await.unwrap();
    let blob = Digest::of(b"genuine binary");
    fs::write(blob_file(&dir, &blob), b"evil binary!!!").unwrap();

    let err = store.get_bytes(&blob).await.unwrap_err();
    let CasError::DigestMismatch {
        object,
        expected,
        actual,
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(*expected, blob);
    assert_eq!(*actual, Digest::of(b"evil binary!!!"));
    assert!(
        object.ends_with(&format!("cas/sha256/{}", blob.hex())),
        "{object}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&blob.to_string()) && msg.contains(&actual.to_string()),
        "{msg}"
    );

    let dest = dir.join("dest");
    let err = store.materialize(&tree, &dest).await.unwrap_err();
    assert!(matches!(err, CasError::DigestMismatch { .. }), "{err:?}");
    assert_eq!(
        listing(&dest),
        ["app"],
        "no file, and no temp file, is left"
    );

    let err = store
        .get_to_file(&blob, &dir.join("single"))
        .await
        .unwrap_err();
    assert!(matches!(err, CasError::DigestMismatch { .. }), "{err:?}");
    assert!(!dir.join("single").exists());
}

#[tokio::test]
async fn a_tampered_manifest_is_detected() {
    let dir = TestDir::new("tamper-manifest");
    let store = local_store(&dir);
    let root = dir.join("ws");
    write_file(&root, "f", b"f", 0o644);
    let tree = store.capture_dir(&root).await.unwrap();
    let evil = Manifest::new(vec![Entry::symlink("f", "../../etc/passwd")]).to_bytes();
    fs::write(blob_file(&dir, &tree), evil).unwrap();
    let err = store
        .materialize(&tree, &dir.join("dest"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CasError::DigestMismatch { expected, .. } if *expected == tree),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_corrupt_cached_blob_is_fetched_again_from_the_store() {
    let dir = TestDir::new("tamper-cache");
    let store = memory_store(&dir, 1 << 20);
    let root = dir.join("ws");
    write_file(&root, "f.txt", b"the real content", 0o644);
    let tree = store.capture_dir(&root).await.unwrap();
    store.materialize(&tree, &dir.join("one")).await.unwrap();
    let blob = Digest::of(b"the real content");
    let cached = store.cache_dir().unwrap().join(blob.hex());
    assert!(cached.exists(), "the first download fills the cache");

    fs::set_permissions(&cached, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&cached, b"the fake content").unwrap();
    let before = store.stats();
    store.materialize(&tree, &dir.join("two")).await.unwrap();
    assert_eq!(
        fs::read(dir.join("two/f.txt")).unwrap(),
        b"the real content"
    );
    assert_eq!(
        store.stats().since(&before).blobs_downloaded,
        1,
        "the file came from the store again"
    );
    assert_eq!(
        fs::read(&cached).unwrap(),
        b"the real content",
        "and the cache was repaired"
    );
}

#[tokio::test]
async fn a_materialised_file_is_a_copy_that_cannot_change_the_cache_or_the_store() {
    let dir = TestDir::new("copy");
    for store in [memory_store(&dir, 1 << 20), local_store(&dir)] {
        let root = dir.join("ws");
        write_file(&root, "tool", b"original tool", 0o755);
        let tree = store.capture_dir(&root).await.unwrap();
        let blob = Digest::of(b"original tool");
        let (one, two) = (dir.join("one"), dir.join("two"));
        store.materialize(&tree, &one).await.unwrap();
        store.materialize(&tree, &two).await.unwrap(); // from the cache, for the memory store
        let source = match store.cache_dir() {
            Some(cache) => cache.join(blob.hex()),
            None => blob_file(&dir, &blob),
        };
        for dest in [&one, &two] {
            let copy = dest.join("tool");
            assert_ne!(
                fs::metadata(&copy).unwrap().ino(),
                fs::metadata(&source).unwrap().ino(),
                "{}",
                store.url()
            );
            // Even root (who ignores the read-only bit) only changes its copy.
            fs::write(&copy, b"modified by a job").unwrap();
        }
        assert_eq!(
            fs::read(&source).unwrap(),
            b"original tool",
            "{}",
            store.url()
        );
        assert_eq!(store.get_bytes(&blob).await.unwrap(), &b"original tool"[..]);
        for d in [root, one, two] {
            fs::remove_dir_all(d).unwrap();
        }
    }
}

#[tokio::test]
async fn a_file_above_the_multipart_threshold_round_trips_in_parts() {
    let dir = TestDir::new("multipart");
    let store = local_store(&dir);
    let big = dir.join("big.bin");
    let len = MULTIPART_THRESHOLD as usize + PART_SIZE / 2 + 7;
    let data: Vec<u8> = (0..len)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    fs::write(&big, &data).unwrap();
    let d = store.put_file(&big).await.unwrap();
    assert_eq!(d, Digest::of(&data));
    let s = store.stats();
    assert_eq!((s.multipart_uploads, s.bytes_uploaded), (1, len as u64));
    let back = dir.join("back.bin");
    store.get_to_file(&d, &back).await.unwrap();
    assert_eq!(fs::read(&back).unwrap(), data);
    // A second put only hashes.
    store.put_file(&big).await.unwrap();
    assert_eq!(store.stats().since(&s).bytes_uploaded, 0);
}

#[tokio::test]
async fn a_big_blob_streams_through_the_cache_and_verifies() {
    let dir = TestDir::new("big-cache");
    let store = memory_store(&dir, 64 << 20);
    let big = dir.join("big.bin");
    let data: Vec<u8> = (0..(3 << 20) + 5).map(|i: usize| (i % 253) as u8).collect();
    fs::write(&big, &data).unwrap();
    let d = store.put_file(&big).await.unwrap();
    let out = dir.join("out/big.bin");
    store.get_to_file(&d, &out).await.unwrap();
    assert_eq!(fs::read(&out).unwrap(), data);
    assert!(store.cache_dir().unwrap().join(d.hex()).exists());
    let before = store.stats();
    store
        .get_to_file(&d, &dir.join("out/again.bin"))
        .await
        .unwrap();
    assert_eq!(store.stats().since(&before).cache_hits, 1);
    // Not cached when larger than the cache.
    let small_cache = memory_store(&TestDir::new("tiny-cache"), 1024);
    let d = small_cache.put_file(&big).await.unwrap();
    small_cache
        .get_to_file(&d, &dir.join("out/uncached.bin"))
        .await
        .unwrap();
    assert_eq!(fs::read(dir.join("out/uncached.bin")).unwrap(), data);
    assert!(!small_cache.cache_dir().unwrap().join(d.hex()).exists());
}

#[tokio::test]
async fn a_missing_blob_is_not_found() {
    let dir = TestDir::new("missing");
    for store in [local_store(&dir), memory_store(&dir, 1024)] {
        let d = Digest::of(b"never stored");
        assert!(!store.contains(&d).await.unwrap());
        assert!(
            matches!(store.get_bytes(&d).await, Err(CasError::NotFound { digest }) if digest == d)
        );
        let dest = dir.join("nothing");
        assert!(matches!(
            store.get_to_file(&d, &dest).await,
            Err(CasError::NotFound { .. })
        ));
        assert!(!dest.exists());
    }
}

#[tokio::test]
async fn put_bytes_skips_what_the_store_has() {
    let dir = TestDir::new("put-bytes");
    let store = memory_store(&dir, 1024);
    let d = store.put_bytes("hello".into()).await.unwrap();
    assert_eq!(d, Digest::of(b"hello"));
    assert!(store.contains(&d).await.unwrap());
    store.put_bytes("hello".into()).await.unwrap();
    let s = store.stats();
    assert_eq!(
        (s.blobs_uploaded, s.bytes_uploaded, s.blobs_skipped),
        (1, 5, 1)
    );
    assert_eq!(store.get_bytes(&d).await.unwrap(), "hello");
    assert_eq!(store.stats().cache_hits, 1, "put_bytes keeps a cached copy");
}

#[test]
fn store_urls_are_parsed_or_refused_with_a_reason() {
    let dir = TestDir::new("urls");
    assert_eq!(
        Store::open(
            "memory://",
            StoreOptions {
                cache_max_bytes: 0,
                ..Default::default()
            }
        )
        .unwrap()
        .url(),
        "memory://"
    );
    let path = dir.join("s");
    let s = Store::open(
        &format!("file://{}", path.display()),
        StoreOptions::default(),
    )
    .unwrap();
    assert_eq!(s.url(), format!("file://{}", path.display()));
    assert!(path.is_dir(), "a filesystem store is created");
    for (url, why) in [
        ("", "empty"),
        ("memory://x", "no path"),
        ("file://relative", "absolute"),
        ("s3://", "bucket"),
        ("ftp://host/x", "unsupported scheme `ftp`"),
    ] {
        match Store::open(url, StoreOptions::default()) {
            Err(CasError::InvalidUrl { reason, .. }) => {
                assert!(reason.contains(why), "{url}: {reason}")
            }
            other => panic!("{url}: expected InvalidUrl, got {other:?}"),
        }
    }
    #[cfg(not(feature = "gcp"))]
    {
        let err = Store::open("gs://bucket/p", StoreOptions::default()).unwrap_err();
        assert!(err.to_string().contains("--features gcp"), "{err}");
    }
    #[cfg(not(feature = "azure"))]
    assert!(matches!(
        Store::open("az://c", StoreOptions::default()),
        Err(CasError::FeatureDisabled {
            feature: "azure",
            ..
        })
    ));
    let s3 = Store::open_s3(
        "b",
        "/team/x/",
        "http://127.0.0.1:1",
        "us-east-1",
        "k",
        "s",
        true,
        StoreOptions {
            cache_max_bytes: 0,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(s3.url(), "s3://b/team/x");
    assert_eq!(
        s3.object_url(&Digest::of(b"")),
        format!("s3://b/team/x/cas/sha256/{}", Digest::of(b"").hex())
    );
}

#[test]
fn default_url_prefers_krt_store() {
    // Only reads the environment; the variable is not set by the test
    // harness, so the fallback is the cache directory.
    if std::env::var_os("KRT_STORE").is_none() {
        assert!(
            Store::default_url().ends_with("kruntimes/store"),
            "{}",
            Store::default_url()
        );
    }
}
