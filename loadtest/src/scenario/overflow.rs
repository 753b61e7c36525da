//! overflow: fanout (every connection subscribes to `load`, publications go to
//! `load/overflow`) where a fraction of the connections read slowly: they stop reading for
//! `--pause-ms`, read what is there, and stop again, with a small `SO_RCVBUF` so that the
//! server's per-connection queue (not the kernel's buffers) fills up. Against a server
//! with a small `queue_capacity`, the server drops and says so (`QUEUE_OVERFLOW` warnings
//! with `dropped`); `lost = expected - delivered - dropped_reported` must be 0.
//!
//! When the window ends, slow readers read normally, so that what is queued arrives
//! during the grace period.

use super::Scenario;

pub struct Overflow {
    /// Fraction of connections that are slow readers.
    pub slow: f64,
}

impl Scenario for Overflow {
    fn name(&self) -> &'static str {
        "overflow"
    }
    fn publishes(&self) -> bool {
        true
    }
    fn publish_path(&self, _i: usize) -> String {
        "load/overflow".to_string()
    }
    fn slow_reader(&self, conn: u64) -> bool {
        is_slow(conn, self.slow)
    }
}

/// Connection `i` is slow when `floor((i+1)·f) > floor(i·f)`: evenly spread, and
/// `floor(N·f)` of the first N connections are slow, whatever N is.
pub fn is_slow(i: u64, f: f64) -> bool {
    ((i + 1) as f64 * f).floor() > (i as f64 * f).floor()
}
