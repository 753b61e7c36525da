//! When to reconnect: jittered exponential backoff, the drain close's suggested delay
//! (1001, reason `reconnect in <ms>`), and which close codes end the client for good.
//!
//! Pure functions and one small state machine, owned by the connection driver; no I/O,
//! so every rule is unit-tested here.

use std::time::Duration;

/// How reconnects are spaced.
#[derive(Clone, Debug, PartialEq)]
pub struct ReconnectPolicy {
    /// `false`: a dropped connection ends the client ([`crate::ConnectionState::Closed`]).
    pub enabled: bool,
    /// The first retry waits up to this long.
    pub initial: Duration,
    /// No wait is longer than this.
    pub max: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            enabled: true,
            initial: Duration::from_millis(250),
            max: Duration::from_secs(30),
        }
    }
}

/// Attempts since the last successful connection, and the waits they earn.
#[derive(Debug)]
pub struct Backoff {
    policy: ReconnectPolicy,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    pub fn new(policy: ReconnectPolicy) -> Backoff {
        Backoff {
            policy,
            attempt: 0,
            rng: seed(),
        }
    }

    /// A connection succeeded: the next failure starts over from `initial`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The wait before the next attempt: "equal jitter" over `initial * 2^attempt`
    /// (capped at `max`): at least half of it, so clients that lost the same server do
    /// not all come back at once, and never zero.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = exp_ceiling(&self.policy, self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        let spread = ceiling.saturating_sub(half).as_millis() as u64;
        let r = if spread == 0 {
            0
        } else {
            self.next_u64() % (spread + 1)
        };
        (half + Duration::from_millis(r)).max(Duration::from_millis(1))
    }

    fn next_u64(&mut self) -> u64 {
        // xorshift64*: jitter needs spread, not cryptographic quality.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// `initial * 2^attempt`, capped at `max`.
pub fn exp_ceiling(policy: &ReconnectPolicy, attempt: u32) -> Duration {
    let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
    policy
        .initial
        .checked_mul(factor)
        .unwrap_or(policy.max)
        .min(policy.max)
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS per process; mixing in the time keeps two
    // clients of one process apart. No RNG crate for this.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() | 1
}

/// The delay a drain close suggests: `reconnect in <ms>` (PROTOCOL.md section 12).
pub fn parse_drain_reason(reason: &str) -> Option<Duration> {
    let ms = reason.trim().strip_prefix("reconnect in ")?.trim();
    let ms = ms.strip_suffix("ms").unwrap_or(ms).trim();
    ms.parse::<u64>().ok().map(Duration::from_millis)
}

/// What a close code means for reconnecting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseAction {
    /// 4001 unauthorized, 4002 auth timeout: the same credential would fail again.
    /// 1000: the server ended it on purpose (a channel deleted or taken over).
    Stop,
    /// Reconnect after the given wait, or after the backoff's.
    Retry(Option<Duration>),
}

/// Decides on a close frame's code and reason.
pub fn on_close(code: u16, reason: &str) -> CloseAction {
    match code {
        4001 | 4002 | 1000 => CloseAction::Stop,
        1001 => CloseAction::Retry(parse_drain_reason(reason)),
        _ => CloseAction::Retry(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_reason_parses() {
        assert_eq!(
            parse_drain_reason("reconnect in 1234"),
            Some(Duration::from_millis(1234))
        );
        assert_eq!(
            parse_drain_reason("reconnect in 50ms"),
            Some(Duration::from_millis(50))
        );
        assert_eq!(parse_drain_reason("going away"), None);
        assert_eq!(parse_drain_reason("reconnect in soon"), None);
        assert_eq!(parse_drain_reason(""), None);
    }

    #[test]
    fn close_codes() {
        assert_eq!(on_close(4001, "x"), CloseAction::Stop);
        assert_eq!(on_close(4002, ""), CloseAction::Stop);
        assert_eq!(
            on_close(1001, "reconnect in 1500"),
            CloseAction::Retry(Some(Duration::from_millis(1500)))
        );
        assert_eq!(on_close(1001, "bye"), CloseAction::Retry(None));
        assert_eq!(on_close(4003, ""), CloseAction::Retry(None));
        assert_eq!(on_close(1013, "server full"), CloseAction::Retry(None));
    }

    #[test]
    fn backoff_grows_within_bounds_and_resets() {
        let policy = ReconnectPolicy {
            enabled: true,
            initial: Duration::from_millis(100),
            max: Duration::from_millis(1000),
        };
        let mut b = Backoff::new(policy.clone());
        for attempt in 0..12 {
            let ceiling = exp_ceiling(&policy, attempt);
            let d = b.next_delay();
            assert!(
                d >= ceiling / 2 && d <= ceiling,
                "{attempt}: {d:?} vs {ceiling:?}"
            );
        }
        assert_eq!(exp_ceiling(&policy, 3), Duration::from_millis(800));
        assert_eq!(exp_ceiling(&policy, 4), Duration::from_millis(1000));
        assert_eq!(exp_ceiling(&policy, 40), Duration::from_millis(1000));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn jitter_spreads() {
        let policy = ReconnectPolicy {
            enabled: true,
            initial: Duration::from_secs(10),
            max: Duration::from_secs(10),
        };
        let mut b = Backoff::new(policy);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20 {
            seen.insert(b.next_delay());
        }
        assert!(seen.len() > 10, "{seen:?}");
    }
}
