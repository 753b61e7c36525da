//! fanout: every connection subscribes to `load`, one publisher posts to `load/fanout`.

use super::Scenario;

pub struct Fanout;

impl Scenario for Fanout {
    fn name(&self) -> &'static str {
        "fanout"
    }
    fn publishes(&self) -> bool {
        true
    }
    fn publish_path(&self, _i: usize) -> String {
        "load/fanout".to_string()
    }
}
