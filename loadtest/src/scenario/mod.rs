//! Scenarios: which path each connection subscribes to, where publications go, and how
//! many deliveries a publication should cause. One file per scenario; the run loop
//! (`crate::run`) is shared.

use crate::cli::{Config, ScenarioName};

mod fanout;
mod idle;
mod spread;

pub use fanout::Fanout;
pub use idle::Idle;
pub use spread::Spread;

pub trait Scenario: Send + Sync {
    fn name(&self) -> &'static str;

    /// Number of distinct publication paths (the length of per-path counters).
    fn path_count(&self) -> usize;

    /// For connection `conn` (global index): the index of the publication path it
    /// receives, and the subscription path it sends in `subscribeEvents`.
    fn subscription(&self, conn: u64) -> (usize, String);

    /// Whether the scenario publishes during its window (else it only holds connections).
    fn publishes(&self) -> bool;

    /// The publication path with index `i` (`0..path_count()`).
    fn publish_path(&self, i: usize) -> String;

    /// Path index of publication number `n` (0-based, over the whole run).
    fn path_of_publication(&self, n: u64) -> usize {
        (n % self.path_count() as u64) as usize
    }

    /// Deliveries expected: each publication on path i reaches the subscribers of path i.
    fn expected(&self, published_per_path: &[u64], subscribers_per_path: &[u64]) -> u64 {
        published_per_path
            .iter()
            .zip(subscribers_per_path)
            .map(|(p, s)| p.saturating_mul(*s))
            .sum()
    }
}

/// The scenario object for a (validated, implemented) configuration.
pub fn build(c: &Config) -> Box<dyn Scenario> {
    match c.scenario {
        ScenarioName::Fanout => Box::new(Fanout),
        ScenarioName::Spread => Box::new(Spread { paths: c.paths }),
        ScenarioName::Idle => Box::new(Idle),
        ScenarioName::Churn | ScenarioName::Overflow => {
            unreachable!("refused by cli::check_implemented")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fanout_expected() {
        let s = Fanout;
        assert_eq!(s.subscription(12), (0, "load".to_string()));
        assert_eq!(s.publish_path(0), "load/fanout");
        assert_eq!(s.path_of_publication(99), 0);
        assert_eq!(s.expected(&[10], &[1000]), 10_000);
    }

    #[test]
    fn spread_round_robin() {
        let s = Spread { paths: 3 };
        assert_eq!(s.subscription(4), (1, "load/p1".to_string()));
        assert_eq!(s.publish_path(2), "load/p2");
        assert_eq!(s.path_of_publication(5), 2);
        // 7 publications over 3 paths: 3,2,2; 10 subscribers: 4,3,3
        assert_eq!(s.expected(&[3, 2, 2], &[4, 3, 3]), 12 + 6 + 6);
    }

    #[test]
    fn idle_does_not_publish() {
        assert!(!Idle.publishes());
        assert_eq!(Idle.subscription(3).1, "load");
    }
}
