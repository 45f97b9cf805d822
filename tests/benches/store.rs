//! Uploading and downloading a tree through the store to a real S3 server.
//!
//! Run it:   cargo bench -p kruntimes-tests --bench store
//!
//! The tree: 10,000 small files (1-4 KiB, 100 directories) and 10 files of
//! 50 MiB, pseudo-random so nothing deduplicates. The server: s3s-fs on
//! loopback (`kruntimes_tests::s3`), with signature-v4 checks, writing to
//! the same disk. Steps, each timed:
//!
//! 1. upload: `capture_dir` with an empty bucket (hash, HEAD, PUT; multipart
//!    for the big files);
//! 2. upload again, unchanged: must send no blob (HEADs only), and prints
//!    the stats that prove it;
//! 3. download: `materialize` with a fresh store and an empty cache (GET,
//!    verify, cache, copy into place).
//!
//! MB is 10^6 bytes. `KRT_BENCH_SMALL=<n>` and `KRT_BENCH_BIG=<n>` change
//! the number of files (e.g. 0 to time one kind alone). Without `--bench` (as under `cargo test --benches`) the
//! tree is 200 small files and one 20 MiB file.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use kruntimes_runtime::cas::{Store, StoreOptions, UploadStats};
use kruntimes_tests::TempDir;
use kruntimes_tests::s3::S3Server;

struct Shape {
    small: usize,
    big: usize,
    big_len: usize,
}

/// xorshift64, for content that neither repeats nor compresses.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Writes the tree; returns (files, bytes).
fn generate(root: &Path, shape: &Shape) -> (u64, u64) {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 4096];
    for i in 0..shape.small {
        let dir = root.join(format!("small/d{:03}", i % 100));
        if i < 100 {
            std::fs::create_dir_all(&dir).expect("create a directory");
        }
        let len = 1024 + (rng.next() % 3073) as usize;
        rng.fill(&mut buf[..len]);
        std::fs::write(dir.join(format!("f{i:05}.bin")), &buf[..len]).expect("write a small file");
        bytes += len as u64;
    }
    std::fs::create_dir_all(root.join("big")).expect("create a directory");
    let mut block = vec![0u8; 1 << 20];
    for i in 0..shape.big {
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(root.join(format!("big/b{i}.bin"))).expect("create"),
        );
        let mut left = shape.big_len;
        while left > 0 {
            let n = left.min(block.len());
            rng.fill(&mut block[..n]);
            f.write_all(&block[..n]).expect("write a big file");
            left -= n;
        }
        f.flush().expect("flush a big file");
        bytes += shape.big_len as u64;
    }
    ((shape.small + shape.big) as u64, bytes)
}

fn client(server: &S3Server, cache: &Path) -> Store {
    Store::open_s3(
        &server.bucket,
        "bench",
        &server.endpoint,
        &server.region,
        &server.key_id,
        &server.secret,
        true,
        StoreOptions {
            cache_dir: Some(cache.to_path_buf()),
            ..StoreOptions::default()
        },
    )
    .expect("open the S3 store")
}

fn rate(files: u64, bytes: u64, d: Duration) -> String {
    let s = d.as_secs_f64();
    format!(
        "{:.1} s, {:.0} MB/s, {:.0} files/s",
        s,
        bytes as f64 / 1e6 / s,
        files as f64 / s
    )
}

fn stats_line(s: &UploadStats) -> String {
    format!(
        "blobs_uploaded {}, bytes_uploaded {}, blobs_skipped {}, multipart_uploads {}",
        s.blobs_uploaded, s.bytes_uploaded, s.blobs_skipped, s.multipart_uploads
    )
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let mut shape = if bench {
        Shape {
            small: 10_000,
            big: 10,
            big_len: 50 << 20,
        }
    } else {
        Shape {
            small: 200,
            big: 1,
            big_len: 20 << 20,
        }
    };
    // To look at one half alone: KRT_BENCH_SMALL=0 or KRT_BENCH_BIG=0.
    let var = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
    };
    shape.small = var("KRT_BENCH_SMALL").unwrap_or(shape.small);
    shape.big = var("KRT_BENCH_BIG").unwrap_or(shape.big);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let server = S3Server::start().expect("start s3s-fs");
    let dir = TempDir::new("bench-store");
    let src = dir.path().join("src");
    let t = Instant::now();
    let (files, bytes) = generate(&src, &shape);
    eprintln!(
        "generated {files} files, {:.1} MB, in {:.1} s",
        bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );

    rt.block_on(async {
        let up = client(&server, &dir.path().join("cache-up"));
        let t = Instant::now();
        let tree = up.capture_dir(&src).await.expect("upload");
        let upload = t.elapsed();
        let first = up.stats();
        eprintln!("upload:    {} ({})", rate(files, bytes, upload), stats_line(&first));

        let t = Instant::now();
        let again = up.capture_dir(&src).await.expect("upload again");
        let reupload = t.elapsed();
        let second = up.stats().since(&first);
        assert_eq!(again, tree);
        assert_eq!((second.blobs_uploaded, second.bytes_uploaded), (0, 0), "the unchanged tree sent blobs: {second:?}");
        eprintln!("re-upload: {:.1} s ({})", reupload.as_secs_f64(), stats_line(&second));

        let down = client(&server, &dir.path().join("cache-down"));
        let out = dir.path().join("out");
        let t = Instant::now();
        down.materialize(&tree, &out).await.expect("download");
        let download = t.elapsed();
        let got = down.stats();
        assert_eq!(got.cache_hits, 0, "the download came from the server");
        eprintln!(
            "download:  {} ({} blobs, {:.1} MB from the server)",
            rate(files, bytes, download),
            got.blobs_downloaded,
            got.bytes_downloaded as f64 / 1e6
        );

        // Untimed: the materialised tree is the uploaded one, byte for byte.
        let check = Store::open("memory://", StoreOptions { cache_max_bytes: 0, ..StoreOptions::default() }).unwrap();
        assert_eq!(check.capture_dir(&out).await.expect("capture the copy"), tree, "the download differs");

        println!(
            "store {files} files / {:.0} MB to s3s-fs on loopback: upload {}; download {}; unchanged re-upload {:.1} s with {} blobs / {} bytes sent ({} skipped)",
            bytes as f64 / 1e6,
            rate(files, bytes, upload),
            rate(files, bytes, download),
            reupload.as_secs_f64(),
            second.blobs_uploaded,
            second.bytes_uploaded,
            second.blobs_skipped,
        );
    });
}
