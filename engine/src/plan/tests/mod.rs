//! Planner tests: one per validation rule (rendered diagnostics pinned with
//! insta snapshots), expansion, rendering and the wire-model round trip.

mod props;
mod render;
mod rules;

use super::{Plan, plan_str};

/// Plans `yaml` and returns the rendered diagnostics, or `ok` plus warnings.
pub(super) fn check(yaml: &str) -> String {
    match plan_str("ci.yaml", yaml) {
        Ok(p) if p.warnings.is_empty() => "ok".to_string(),
        Ok(p) => super::Diagnostics::new(p.source.clone(), p.warnings.clone()).render(false),
        Err(d) => d.render(false),
    }
}

/// Plans `yaml`, panicking with the diagnostics if it is invalid.
pub(super) fn plan(yaml: &str) -> Plan {
    match plan_str("ci.yaml", yaml) {
        Ok(p) => p,
        Err(d) => panic!("expected a valid workflow:\n{}", d.render(false)),
    }
}
