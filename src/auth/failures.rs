//! Refused credentials: counted in `shardcast_auth_failures_total{reason}` and logged,
//! at most [`LINES_PER_SEC`] lines per second per shard.
//!
//! Every place that refuses a credential (REST `Authorization`, a socket's token or
//! ticket, a disallowed `Origin`, a `group` option against the token's claim, an auth
//! timeout) calls [`refused`]. The line names the reason, the peer's address and the
//! request path, never the query string (it may hold `?token=`), a token, a key or any
//! other secret. The budget is a thread-local, so each shard (one thread) has its own and
//! no lock is taken; a flood of bad credentials costs one counter increment per failure
//! once the second's lines are spent, and the next line logged says how many were left
//! out (`suppressed`), so the lines plus their `suppressed` counts add up to the metric.

use std::cell::RefCell;
use std::net::SocketAddr;

/// Most lines logged per second per shard.
pub const LINES_PER_SEC: u32 = 10;

/// A per-second line budget: [`LineBudget::take`] says whether a line may be written now
/// and how many failures were left out since the last line written.
#[derive(Debug, Default)]
pub struct LineBudget {
    /// The second (since the epoch) `used` counts lines of.
    second: u64,
    /// Lines written in `second`.
    used: u32,
    /// Failures not logged since the last line written.
    suppressed: u64,
}

impl LineBudget {
    /// `Some(suppressed)`: write a line now, naming the failures left out before it;
    /// `None`: this one is left out (and counted for the next line).
    pub fn take(&mut self, now_ms: u64, per_sec: u32) -> Option<u64> {
        let second = now_ms / 1000;
        if second != self.second {
            self.second = second;
            self.used = 0;
        }
        if self.used >= per_sec {
            self.suppressed += 1;
            return None;
        }
        self.used += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

thread_local! {
    static BUDGET: RefCell<LineBudget> = RefCell::new(LineBudget::default());
}

/// Counts a refused credential and logs it if this shard's budget allows. `whence` gives
/// the request path (without its query) and the peer's address; it is only asked when
/// the line is written (the address may cost a system call).
pub fn refused<P: AsRef<str>>(
    reason: &'static str,
    whence: impl FnOnce() -> (P, Option<SocketAddr>),
) {
    crate::metrics::auth_failure(reason);
    let now = crate::time::unix_ms();
    let Some(suppressed) = BUDGET.with(|b| b.borrow_mut().take(now, LINES_PER_SEC)) else {
        return;
    };
    let (path, peer) = whence();
    let path = path.as_ref();
    let peer = peer.map_or_else(|| "unknown".to_string(), |a| a.to_string());
    // The path is the client's: bounded, and with its control characters escaped by
    // the formatter (`?`), so it cannot forge a log line.
    let path = crate::protocol::truncate(path, 200);
    tracing::warn!(
        reason,
        peer = %peer,
        path = ?path,
        suppressed,
        "authentication failed"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_per_second_and_suppressed_count() {
        let mut b = LineBudget::default();
        // Three lines in second 5, then two left out.
        assert_eq!(b.take(5_000, 3), Some(0));
        assert_eq!(b.take(5_100, 3), Some(0));
        assert_eq!(b.take(5_999, 3), Some(0));
        assert_eq!(b.take(5_999, 3), None);
        assert_eq!(b.take(5_999, 3), None);
        // The next second's first line names them, and the count starts again.
        assert_eq!(b.take(6_000, 3), Some(2));
        assert_eq!(b.take(6_001, 3), Some(0));
        // A quiet gap loses nothing.
        assert_eq!(b.take(6_002, 3), Some(0));
        assert_eq!(b.take(6_003, 3), None);
        assert_eq!(b.take(60_000, 3), Some(1));
    }
}
