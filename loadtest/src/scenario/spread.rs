//! spread: connection i subscribes to `load/p{i mod K}`; publications go round robin over
//! the K paths, so each reaches about N/K subscribers.

use super::Scenario;

pub struct Spread {
    pub paths: u64,
}

impl Scenario for Spread {
    fn name(&self) -> &'static str {
        "spread"
    }
    fn path_count(&self) -> usize {
        self.paths as usize
    }
    fn subscription(&self, conn: u64) -> (usize, String) {
        let p = conn % self.paths;
        (p as usize, format!("load/p{p}"))
    }
    fn publishes(&self) -> bool {
        true
    }
    fn publish_path(&self, i: usize) -> String {
        format!("load/p{i}")
    }
    fn nats_pub_subject(&self, i: usize) -> String {
        format!("load.p{i}")
    }
}
