//! soak's client-loop parts: which path the fan-out subscribers, the fast readers of the
//! slow readers' stream and the churn cycles subscribe to, and where their publications
//! go (the slow readers themselves read at a fixed byte rate in `crate::soak::clients`). Each part is its own client group with its own publisher, so each
//! keeps the plain accounting of fanout and overflow (expected = published x
//! subscribers). The rest of the mix (filters, live queries, entities, services) is in
//! `crate::soak`.

use super::Scenario;

/// One client-loop part of the soak mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SoakPart {
    /// Connection i subscribes to `soak/fan/p{i mod K}`; publication n goes to
    /// `soak/fan/p{n mod K}/tick` (K paths, as in spread).
    Fan(u64),
    /// Fast readers of `soak/slow` (beside the slow readers); publications to
    /// `soak/slow/tick`.
    Slow,
    /// Cycles subscribing to `soak/churn`, where nothing is published.
    Churn,
}

impl Scenario for SoakPart {
    fn name(&self) -> &'static str {
        "soak"
    }
    fn path_count(&self) -> usize {
        match self {
            SoakPart::Fan(k) => *k as usize,
            _ => 1,
        }
    }
    fn subscription(&self, conn: u64) -> (usize, String) {
        match self {
            SoakPart::Fan(k) => ((conn % k) as usize, format!("soak/fan/p{}", conn % k)),
            SoakPart::Slow => (0, "soak/slow".to_string()),
            SoakPart::Churn => (0, "soak/churn".to_string()),
        }
    }
    fn publishes(&self) -> bool {
        *self != SoakPart::Churn
    }
    fn publish_path(&self, i: usize) -> String {
        match self {
            SoakPart::Fan(_) => format!("soak/fan/p{i}/tick"),
            SoakPart::Slow => "soak/slow/tick".to_string(),
            SoakPart::Churn => "soak/churn/none".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_do_not_see_each_other() {
        // a publication of one part (or path) must match only its own subscribers
        let parts = [SoakPart::Fan(3), SoakPart::Slow, SoakPart::Churn];
        for a in parts {
            for i in 0..a.path_count() {
                let p = a.publish_path(i);
                for b in parts {
                    for conn in 0..6 {
                        let (j, sub) = b.subscription(conn);
                        let matches = p == sub || p.starts_with(&format!("{sub}/"));
                        assert_eq!(matches, a == b && i == j, "{p} vs {sub}");
                    }
                }
            }
        }
        let f = SoakPart::Fan(3);
        assert_eq!(f.subscription(4), (1, "soak/fan/p1".to_string()));
        assert_eq!(f.path_of_publication(5), 2);
        assert_eq!(f.expected(&[2, 1, 1], &[2, 2, 1]), 4 + 2 + 1);
        assert!(!SoakPart::Churn.publishes());
    }
}
