//! The default policy's cases, run through the SDK's WIT conversions: a policy that
//! overrides nothing decides exactly as the native rules do.

use gatehouse_policy_sdk::{info, Policy, PolicyEvaluator, PolicyInfo};
use gatehouse_rules::cases::{self, Native};
use std::path::Path;

struct Defaults;

impl Policy for Defaults {
    fn info() -> PolicyInfo {
        info("defaults", "0.0.0")
    }
}

#[test]
fn every_default_case_survives_the_round_trip_through_wit_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies/default/cases");
    let cases = cases::load_dir(&dir).unwrap_or_else(|e| panic!("loading cases: {e}"));
    assert!(
        cases.len() > 30,
        "expected the full case set in {}, found {}",
        dir.display(),
        cases.len()
    );
    let mut policy = PolicyEvaluator::<Defaults>::new();
    for (file, case) in &cases {
        let through_wit = case.run(&mut policy);
        let native = case.run(&mut Native);
        assert!(
            through_wit.passed,
            "{file}: {}: expected {} got {}",
            case.name, through_wit.expected, through_wit.actual
        );
        assert_eq!(through_wit.actual, native.actual, "{file}: {}", case.name);
    }
}
