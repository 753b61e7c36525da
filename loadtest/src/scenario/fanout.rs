//! fanout: every connection subscribes to `load`, one publisher posts to `load/fanout`.

use super::Scenario;

pub struct Fanout;

impl Scenario for Fanout {
    fn name(&self) -> &'static str {
        "fanout"
    }
    fn path_count(&self) -> usize {
        1
    }
    fn subscription(&self, _conn: u64) -> (usize, String) {
        (0, "load".to_string())
    }
    fn publishes(&self) -> bool {
        true
    }
    fn publish_path(&self, _i: usize) -> String {
        "load/fanout".to_string()
    }
}
