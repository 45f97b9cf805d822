//! sha256 throughput of the store's hashing path against `sha256sum`.
//!
//! Run it:   cargo bench -p kruntimes-tests --bench hash
//!
//! Writes a 1 GiB file of pseudo-random bytes to a temp directory (deleted
//! afterwards), reads it once to put it in the page cache, then hashes it
//! with `kruntimes_runtime::cas::hash_file` (what `Store::put_file` uses)
//! and with `sha256sum`, alternating, three times each, and keeps each
//! one's best time. Both must agree on the digest. MB is 10^6 bytes.
//!
//! Without `--bench` (as under `cargo test --benches`) it hashes 16 MiB once,
//! to check that the bench still runs.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kruntimes_runtime::cas::hash_file;
use kruntimes_tests::TempDir;

const ROUNDS: usize = 3;

/// Writes `len` bytes of xorshift output in 8 MiB blocks.
fn generate(path: &Path, len: u64) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create the data file"));
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; 8 << 20];
    let mut left = len;
    while left > 0 {
        for chunk in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n]).expect("write the data file");
        left -= n as u64;
    }
    f.flush().expect("flush the data file");
}

fn sha256sum(path: &Path) -> Option<(String, Duration)> {
    let t = Instant::now();
    let out = Command::new("sha256sum").arg(path).output().ok()?;
    let elapsed = t.elapsed();
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Some((text.split_whitespace().next()?.to_owned(), elapsed))
}

fn mb_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let (len, rounds) = if bench {
        (1u64 << 30, ROUNDS)
    } else {
        (16 << 20, 1)
    };
    let dir = TempDir::new("bench-hash");
    let path = dir.path().join("data.bin");
    let t = Instant::now();
    generate(&path, len);
    eprintln!(
        "generated {} MiB in {:.1} s",
        len >> 20,
        t.elapsed().as_secs_f64()
    );
    // Warm the page cache so both sides read from memory.
    hash_file(&path).expect("hash the data file");

    let mut ours = Duration::MAX;
    let mut theirs: Option<Duration> = None;
    for round in 0..rounds {
        let t = Instant::now();
        let (d, n) = hash_file(&path).expect("hash the data file");
        let mine = t.elapsed();
        assert_eq!(n, len);
        ours = ours.min(mine);
        let digest = d.hex();
        match sha256sum(&path) {
            Some((hex, other)) => {
                assert_eq!(hex, digest, "sha256sum and hash_file disagree");
                theirs = Some(theirs.map_or(other, |t| t.min(other)));
                eprintln!(
                    "round {}: hash_file {:.0} MB/s, sha256sum {:.0} MB/s",
                    round + 1,
                    mb_s(len, mine),
                    mb_s(len, other)
                );
            }
            None => eprintln!(
                "round {}: hash_file {:.0} MB/s; sha256sum is not available",
                round + 1,
                mb_s(len, mine)
            ),
        }
    }
    let size = if len >= 1 << 30 {
        format!("{} GiB", len >> 30)
    } else {
        format!("{} MiB", len >> 20)
    };
    match theirs {
        Some(t) => {
            let ratio = t.as_secs_f64() / ours.as_secs_f64();
            println!(
                "hash {size} (best of {rounds}): kruntimes hash_file {:.0} MB/s, sha256sum {:.0} MB/s, ratio {ratio:.2}x (target >= 0.9x)",
                mb_s(len, ours),
                mb_s(len, t)
            );
        }
        None => println!(
            "hash {size} (best of {rounds}): kruntimes hash_file {:.0} MB/s (sha256sum not found)",
            mb_s(len, ours)
        ),
    }
}
