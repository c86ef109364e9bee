//! The default policy's cases give the same decisions natively and through the compiled
//! component, case for case; the example policy passes its own cases in Wasm.

use gatehouse::policy::{CaseRunner, Limits, PolicyEngine, DEFAULT_POLICY};
use gatehouse_rules::cases::{self, Native};
use gatehouse_tests::fixtures;

#[test]
fn native_and_wasm_agree_on_every_default_case() {
    let cases =
        cases::load_dir(&fixtures::root().join("policies/default/cases")).expect("cases load");
    assert!(
        cases.len() >= 30,
        "expected the default policy's full case set, found {}",
        cases.len()
    );
    let engine = PolicyEngine::new(Limits::default()).unwrap();
    let compiled = engine.compile(DEFAULT_POLICY).unwrap();
    assert_eq!(compiled.info.name, "default");
    let mut wasm = CaseRunner::new(&engine, &compiled);
    let mut disagreements = Vec::new();
    for (file, case) in &cases {
        let native = case.run(&mut Native);
        let in_wasm = case.run(&mut wasm);
        assert!(
            native.passed,
            "{file}: {} fails natively: expected {} got {}",
            case.name, native.expected, native.actual
        );
        if native.actual != in_wasm.actual || !in_wasm.passed {
            disagreements.push(format!(
                "{file}: {}: native {} wasm {}",
                case.name, native.actual, in_wasm.actual
            ));
        }
    }
    assert!(
        disagreements.is_empty(),
        "native and wasm disagree:\n{}",
        disagreements.join("\n")
    );
}

#[test]
fn the_nested_claims_example_passes_its_cases_in_wasm() {
    let cases = cases::load_dir(&fixtures::root().join("policies/nested-claims/cases"))
        .expect("cases load");
    assert!(!cases.is_empty());
    let engine = PolicyEngine::new(Limits::default()).unwrap();
    let compiled = engine.compile(fixtures::NESTED_CLAIMS).unwrap();
    let mut wasm = CaseRunner::new(&engine, &compiled);
    for (file, case) in &cases {
        let report = case.run(&mut wasm);
        assert!(
            report.passed,
            "{file}: {}: expected {} got {}",
            case.name, report.expected, report.actual
        );
    }
}

#[test]
fn a_precompiled_artifact_loads_without_compiling_and_decides_the_same() {
    let engine = PolicyEngine::new(Limits::default()).unwrap();
    let compiled = engine.compile(DEFAULT_POLICY).unwrap();
    let artifact = engine.serialize(&compiled).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("default.cwasm");
    std::fs::write(&path, artifact).unwrap();
    let loaded = engine
        .load_precompiled_file(&path, compiled.sha256)
        .unwrap();
    assert_eq!(loaded.info, compiled.info);
    let input = gatehouse_rules::RoleInput {
        manual: None,
        team_roles: vec![gatehouse_rules::Role::Admin],
    };
    assert_eq!(
        engine
            .effective_role(&loaded, std::slice::from_ref(&input), "{}")
            .unwrap(),
        engine.effective_role(&compiled, &[input], "{}").unwrap()
    );
}
