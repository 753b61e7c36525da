//! churn: connection cycles at a fixed rate: TCP connect, upgrade, `authenticated`,
//! `subscribeEvents`, `subscribedEvents`, close 1000, the server's close echo. Nothing is
//! published; the report's interest is the cycles per second achieved, the failures, the
//! setup latency (connect to `subscribedEvents`) and the server's CPU per cycle.
//! (`--target nats`: upgrade, `INFO`, `CONNECT`+`SUB`+`PING`, `PONG`, close.)

use super::Scenario;

pub struct Churn;

impl Scenario for Churn {
    fn name(&self) -> &'static str {
        "churn"
    }
    fn publishes(&self) -> bool {
        false
    }
    fn publish_path(&self, _i: usize) -> String {
        "load/churn".to_string()
    }
}
