//! Small helpers shared by the other modules: a fast RNG, clocks, number formatting.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// xorshift64* generator: good enough for WebSocket masks and keys, cheap per call.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded from the kernel (getrandom), falling back to the clock.
    pub fn from_os() -> Rng {
        let mut seed = [0u8; 8];
        // SAFETY: the buffer is valid for 8 bytes of writes.
        let n = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
        let mut s = u64::from_le_bytes(seed);
        if n != 8 {
            s = unix_nanos() ^ (std::process::id() as u64).rotate_left(32);
        }
        Rng::with_seed(s)
    }

    pub fn with_seed(seed: u64) -> Rng {
        Rng(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Wall-clock time as nanoseconds since the Unix epoch (the publisher's `t`).
pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

pub fn unix_secs() -> u64 {
    unix_nanos() / 1_000_000_000
}

/// 1234567 -> "1.23M", for the progress line.
pub fn human_count(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.2}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

pub fn human_bytes(v: f64) -> String {
    let a = v.abs();
    if a >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB", v / (1024.0 * 1024.0 * 1024.0))
    } else if a >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", v / (1024.0 * 1024.0))
    } else if a >= 1024.0 {
        format!("{:.1} KiB", v / 1024.0)
    } else {
        format!("{v:.0} B")
    }
}

pub fn secs_f(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_not_constant() {
        let mut r = Rng::with_seed(1);
        let a = r.next_u64();
        let b = r.next_u64();
        assert_ne!(a, b);
        let mut buf = [0u8; 13];
        r.fill(&mut buf);
        assert!(buf.iter().any(|&b| b != 0));
    }

    #[test]
    fn human_formats() {
        assert_eq!(human_count(12.0), "12");
        assert_eq!(human_count(12_345.0), "12.3k");
        assert_eq!(human_count(1_234_567.0), "1.23M");
        assert_eq!(human_bytes(2048.0), "2.0 KiB");
    }
}
