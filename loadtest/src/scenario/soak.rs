//! soak's client-loop parts: which path the fan-out subscribers, the slow readers (and
//! the fast readers beside them) and the churn cycles subscribe to, and where their
//! publications go. Each part is its own client group with its own publisher, so each
//! keeps the plain accounting of fanout and overflow (expected = published x
//! subscribers). The rest of the mix (filters, live queries, entities, services) is in
//! `crate::soak`.

use super::{is_slow, Scenario};

/// One client-loop part of the soak mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SoakPart {
    /// Subscribers of `soak/fan`, publications to `soak/fan/tick`.
    Fan,
    /// Every other connection of `soak/slow` reads slowly; publications to
    /// `soak/slow/tick`.
    Slow,
    /// Cycles subscribing to `soak/churn`, where nothing is published.
    Churn,
}

impl Scenario for SoakPart {
    fn name(&self) -> &'static str {
        "soak"
    }
    fn subscription(&self, _conn: u64) -> (usize, String) {
        let path = match self {
            SoakPart::Fan => "soak/fan",
            SoakPart::Slow => "soak/slow",
            SoakPart::Churn => "soak/churn",
        };
        (0, path.to_string())
    }
    fn publishes(&self) -> bool {
        *self != SoakPart::Churn
    }
    fn publish_path(&self, _i: usize) -> String {
        match self {
            SoakPart::Fan => "soak/fan/tick",
            SoakPart::Slow => "soak/slow/tick",
            SoakPart::Churn => "soak/churn/none",
        }
        .to_string()
    }
    fn slow_reader(&self, conn: u64) -> bool {
        *self == SoakPart::Slow && is_slow(conn, 0.5)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_do_not_see_each_other() {
        // a publication of one part must not match another part's subscription
        let parts = [SoakPart::Fan, SoakPart::Slow, SoakPart::Churn];
        for a in parts {
            for b in parts {
                let sub = b.subscription(0).1;
                let p = a.publish_path(0);
                let matches = p == sub || p.starts_with(&format!("{sub}/"));
                assert_eq!(
                    matches,
                    a == b,
                    "{a:?} publishes to {p}, {b:?} subscribes {sub}"
                );
            }
        }
        assert!(!SoakPart::Fan.slow_reader(1));
        assert!(!SoakPart::Slow.slow_reader(0) && SoakPart::Slow.slow_reader(1));
        assert!(!SoakPart::Churn.publishes());
    }
}
