//! Scenarios: which path each connection subscribes to, where publications go, and how
//! many deliveries a publication should cause. One file per scenario; the run loop
//! (`crate::run`) is shared.

use crate::cli::{Config, ScenarioName};

mod churn;
pub mod entities;
mod fanout;
mod idle;
mod overflow;
mod scale;
pub mod services;
pub mod soak;
mod spread;
pub mod stalls;

pub use churn::Churn;
pub use entities::Entities;
pub use fanout::Fanout;
pub use idle::Idle;
pub use overflow::{is_slow, Overflow};
pub use scale::Scale;
pub use services::Services;
pub use soak::SoakPart;
pub use spread::Spread;

pub trait Scenario: Send + Sync {
    fn name(&self) -> &'static str;

    /// Number of distinct publication paths (the length of per-path counters). Default:
    /// one.
    fn path_count(&self) -> usize {
        1
    }

    /// For connection `conn` (global index): the index of the publication path it
    /// receives, and the subscription path it sends in `subscribeEvents`. Default: every
    /// connection on path 0, subscribed to `load`.
    fn subscription(&self, _conn: u64) -> (usize, String) {
        (0, "load".to_string())
    }

    /// Whether the scenario publishes during its window (else it only holds connections).
    fn publishes(&self) -> bool;

    /// The publication path with index `i` (`0..path_count()`).
    fn publish_path(&self, i: usize) -> String;

    /// Path index of publication number `n` (0-based, over the whole run).
    fn path_of_publication(&self, n: u64) -> usize {
        (n % self.path_count() as u64) as usize
    }

    /// Whether connection `conn` (global index) reads slowly (scenario overflow).
    fn slow_reader(&self, _conn: u64) -> bool {
        false
    }

    /// `--target nats`: the subject connection `conn` subscribes to (`SUB <subject> 1`).
    fn nats_sub_subject(&self, conn: u64) -> String {
        crate::nats::subject_of(&self.subscription(conn).1)
    }

    /// `--target nats`: the subject publications with path index `i` go to. NATS has no
    /// prefix subscriptions like shardcast's, so by default the subscription's subject:
    /// `load` for fanout (shardcast: `load/fanout` under the subscription `load`).
    fn nats_pub_subject(&self, i: usize) -> String {
        let _ = i;
        crate::nats::subject_of(&self.subscription(0).1)
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
        ScenarioName::Churn => Box::new(Churn),
        ScenarioName::Overflow => Box::new(Overflow {
            slow: c.slow_readers,
        }),
        ScenarioName::Entities => Box::new(Entities {
            entities: c.entities,
        }),
        ScenarioName::Services => Box::new(Services),
        ScenarioName::Scale => Box::new(Scale),
        // soak builds its parts itself (`crate::soak`); this is the fan-out part
        ScenarioName::Soak => Box::new(SoakPart::Fan(c.soak.paths)),
        // stalls runs itself (`stalls::run`); its fan-out is this one
        ScenarioName::Stalls => Box::new(Fanout),
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
    fn nats_subjects() {
        assert_eq!(Fanout.nats_sub_subject(3), "load");
        assert_eq!(Fanout.nats_pub_subject(0), "load");
        let s = Spread { paths: 4 };
        assert_eq!(s.nats_sub_subject(6), "load.p2");
        assert_eq!(s.nats_pub_subject(3), "load.p3");
    }

    #[test]
    fn slow_readers_are_spread_evenly() {
        for (n, f) in [(10u64, 0.5), (7, 0.3), (1000, 0.25), (5, 1.0), (5, 0.0)] {
            let k = (0..n).filter(|&i| is_slow(i, f)).count() as u64;
            assert_eq!(k, (n as f64 * f).floor() as u64, "n={n} f={f}");
        }
        let o = Overflow { slow: 0.5 };
        assert!(!o.slow_reader(0) && o.slow_reader(1) && !o.slow_reader(2));
        assert!(!Fanout.slow_reader(1));
        assert!(!Churn.publishes());
        assert!(o.publishes());
    }

    #[test]
    fn idle_does_not_publish() {
        assert!(!Idle.publishes());
        assert_eq!(Idle.subscription(3).1, "load");
    }
}
