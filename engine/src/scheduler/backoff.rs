//! Retry delays: exponential, capped, with deterministic jitter.
//!
//! The jitter spreads retries of many nodes that failed together (a runtime
//! pod died) without a random source: it is a hash of (seed, node, attempt),
//! so a restarted controller computes the same delay again.

use std::time::Duration;

use super::types::Policy;

impl Policy {
    /// Delay before starting `attempt` (2 for the first retry):
    /// `backoff_base * 2^(attempt - 2)`, capped at `backoff_max`, plus a
    /// jitter in `[0, 25%)` of that.
    pub fn retry_delay(&self, node: usize, attempt: u32) -> Duration {
        let delay = self.retry_delay_without_jitter(attempt);
        // Clamped so the multiplication below fits in u128; 584 years is
        // longer than any timer will wait.
        let nanos = delay.as_nanos().min(u128::from(u64::MAX));
        let fraction = u128::from(jitter_hash(self.seed, node, attempt) >> 11); // 53 bits
        let jitter = nanos * fraction / (1u128 << 53) / 4;
        from_nanos_u128(nanos + jitter)
    }

    /// The doubled, capped delay before `attempt`, without jitter.
    pub(crate) fn retry_delay_without_jitter(&self, attempt: u32) -> Duration {
        let mut delay = self.backoff_base.min(self.backoff_max);
        for _ in 2..attempt {
            // Stops early: a zero base never grows and a capped one is final.
            if delay.is_zero() || delay >= self.backoff_max {
                break;
            }
            delay = delay.saturating_mul(2).min(self.backoff_max);
        }
        delay
    }
}

fn from_nanos_u128(nanos: u128) -> Duration {
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    let secs = u64::try_from(nanos / NANOS_PER_SEC).unwrap_or(u64::MAX);
    // The remainder is below 10^9, so it fits.
    let sub = u32::try_from(nanos % NANOS_PER_SEC).unwrap_or(0);
    Duration::new(secs, sub)
}

fn jitter_hash(seed: u64, node: usize, attempt: u32) -> u64 {
    splitmix64(splitmix64(splitmix64(seed) ^ node as u64) ^ u64::from(attempt))
}

/// The splitmix64 finaliser: a cheap, well-mixed 64-bit hash.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
