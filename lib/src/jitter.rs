//! Jitter for retry backoff: each delay scaled by a factor in [0.75, 1.25), so that
//! replicas that start together (and fail together) do not retry in step. One helper
//! for every retry loop (the wait for services, the migration retried behind live
//! traffic); a leaf module, as it needs nothing.

use std::time::Duration;

/// A small xorshift generator for jitter (no need for a crate), seeded from the clock
/// and the process id.
pub struct Jitter(u64);

impl Default for Jitter {
    fn default() -> Jitter {
        Jitter::new()
    }
}

impl Jitter {
    pub fn new() -> Jitter {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            ^ (u64::from(std::process::id()) << 32);
        Jitter(seed | 1)
    }

    /// `d` scaled by a factor in [0.75, 1.25).
    pub fn apply(&mut self, d: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let f = 0.75 + (self.0 % 1000) as f64 / 2000.0;
        d.mul_f64(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_bounds() {
        let mut j = Jitter::new();
        for _ in 0..1000 {
            let d = j.apply(Duration::from_millis(1000));
            assert!(
                d >= Duration::from_millis(750) && d < Duration::from_millis(1250),
                "{d:?}"
            );
        }
    }
}
