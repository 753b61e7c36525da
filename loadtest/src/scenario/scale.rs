//! scale: every connection subscribes to `load`; one publication to `load/scale` at the
//! window's start (the run's rate is set so that exactly one is due). What is measured
//! around it (per worker process, the kernel, the nodes) is `crate::run`'s and
//! `crate::report::Scale`'s.

use super::Scenario;

pub struct Scale;

impl Scenario for Scale {
    fn name(&self) -> &'static str {
        "scale"
    }
    fn publishes(&self) -> bool {
        true
    }
    fn publish_path(&self, _i: usize) -> String {
        "load/scale".to_string()
    }
}
