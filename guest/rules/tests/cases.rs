//! Runs every decision case of the default policy (`policies/default/cases/*.json`)
//! against the native rules. The host runs the same files through the compiled component.

use gatehouse_rules::cases::{self, Native};
use std::path::Path;

#[test]
fn every_default_case_passes_natively() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies/default/cases");
    let cases = cases::load_dir(&dir).unwrap_or_else(|e| panic!("loading cases: {e}"));
    // An empty or half-deleted directory must not pass quietly.
    assert!(
        cases.len() > 30,
        "expected more than 30 cases in {}, found {}",
        dir.display(),
        cases.len()
    );

    let failures: Vec<String> = cases
        .iter()
        .map(|(file, case)| (file, case.run(&mut Native)))
        .filter(|(_, report)| !report.passed)
        .map(|(file, report)| {
            format!(
                "{file}: {}\n  expected: {}\n  actual:   {}",
                report.name,
                pretty(&report.expected),
                pretty(&report.actual)
            )
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

#[test]
fn case_names_are_unique() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies/default/cases");
    let cases = cases::load_dir(&dir).unwrap_or_else(|e| panic!("loading cases: {e}"));
    let mut names: Vec<&str> = cases.iter().map(|(_, case)| case.name.as_str()).collect();
    names.sort_unstable();
    let duplicates: Vec<_> = names
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0])
        .collect();
    assert!(
        duplicates.is_empty(),
        "duplicate case names: {duplicates:?}"
    );
}

fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value)
        .unwrap_or_else(|_| value.to_string())
        .replace('\n', "\n    ")
}
