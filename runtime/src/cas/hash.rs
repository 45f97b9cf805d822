//! Hashing files: the path `put_file` and the `hash` benchmark share.
//!
//! Reads go through one reused 1 MiB buffer: large enough that syscalls cost
//! nothing next to sha256 (sha2 uses the SHA-NI instructions when the CPU has
//! them), small enough to stay in cache.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use crate::digest::{Digest, Hasher};

/// Read size for hashing.
pub const HASH_CHUNK: usize = 1 << 20;

/// The digest and length of a file, read in [`HASH_CHUNK`] pieces.
///
/// Blocking: call it from `spawn_blocking` in async code.
pub fn hash_file(path: &Path) -> io::Result<(Digest, u64)> {
    hash_reader(File::open(path)?)
}

/// The digest and length of everything `r` yields.
pub fn hash_reader(mut r: impl Read) -> io::Result<(Digest, u64)> {
    let mut hasher = Hasher::new();
    let mut buf = vec![0u8; HASH_CHUNK];
    let mut len = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok((hasher.finish(), len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashing_a_reader_in_chunks_equals_hashing_the_bytes_at_once() {
        // Longer than one chunk, not a multiple of it.
        let data: Vec<u8> = (0..(HASH_CHUNK * 2 + 12345))
            .map(|i| (i % 251) as u8)
            .collect();
        let (d, n) = hash_reader(&data[..]).unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(d, Digest::of(&data));
        assert_eq!(hash_reader(&[][..]).unwrap(), (Digest::of(b""), 0));
    }
}
