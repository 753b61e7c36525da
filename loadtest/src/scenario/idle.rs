//! idle: connections authenticate and subscribe (to `load`), then do nothing but answer
//! heartbeats for the window; the report's interest is the server's RSS per connection.

use super::Scenario;

pub struct Idle;

impl Scenario for Idle {
    fn name(&self) -> &'static str {
        "idle"
    }
    fn publishes(&self) -> bool {
        false
    }
    fn publish_path(&self, _i: usize) -> String {
        "load/idle".to_string()
    }
}
