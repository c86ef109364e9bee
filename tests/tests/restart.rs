//! Restarts: policies come back from their precompiled artifacts without a recompile, and
//! a tenant whose policy cannot load fails closed without taking the others down.

use gatehouse::app::{App, Evaluate, Upload};
use gatehouse::config::Config;
use gatehouse::store::{NewPolicyVersion, PolicyVersionRecord, Store};
use gatehouse_tests::fixtures;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

fn config(dir: &std::path::Path) -> Config {
    Config {
        data: dir.join("db"),
        operator_token: Some(gatehouse_tests::OPERATOR_TOKEN.into()),
        ..Default::default()
    }
}

fn artifacts(dir: &std::path::Path) -> Vec<(String, u64, i64)> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("db/artifacts"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                meta.ino(),
                meta.mtime_nsec(),
            )
        })
        .collect();
    files.sort();
    files
}

fn login() -> Evaluate {
    serde_json::from_value(gatehouse_tests::jit_login("a@acme.io")).unwrap()
}

#[tokio::test]
async fn a_restart_maps_the_stored_artifacts_instead_of_recompiling() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (app, _) = App::open(&config(dir.path())).unwrap();
        let app = Arc::new(app);
        app.create_tenant("acme", "test").unwrap();
        let upload = Upload {
            component: fixtures::NESTED_CLAIMS.to_vec(),
            settings: "{}".into(),
            cases: vec![],
            activate: true,
        };
        app.upload_policy("acme", upload, "test").await.unwrap();
    }
    let before = artifacts(dir.path());
    assert_eq!(
        before.len(),
        2,
        "the default policy's artifact and the upload's: {before:?}"
    );
    let (app, _) = App::open(&config(dir.path())).unwrap();
    assert_eq!(
        artifacts(dir.path()),
        before,
        "no artifact was rewritten, so nothing was recompiled"
    );
    let evaluated = app.evaluate("acme", &login()).unwrap();
    assert_eq!(
        (evaluated.policy_version, evaluated.policy.as_str()),
        (Some(1), "nested-claims")
    );
}

#[tokio::test]
async fn a_missing_artifact_is_rebuilt_from_the_stored_component() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (app, _) = App::open(&config(dir.path())).unwrap();
        let app = Arc::new(app);
        app.create_tenant("acme", "test").unwrap();
        let upload = Upload {
            component: fixtures::NESTED_CLAIMS.to_vec(),
            settings: "{}".into(),
            cases: vec![],
            activate: true,
        };
        app.upload_policy("acme", upload, "test").await.unwrap();
    }
    for (name, _, _) in artifacts(dir.path()) {
        std::fs::write(
            dir.path().join("db/artifacts").join(name),
            b"not machine code",
        )
        .unwrap();
    }
    let (app, _) = App::open(&config(dir.path())).unwrap();
    let evaluated = app.evaluate("acme", &login()).unwrap();
    assert!(evaluated.decision.is_some(), "{evaluated:?}");
    assert_eq!(evaluated.policy, "nested-claims");
}

#[tokio::test]
async fn a_tenant_whose_policy_cannot_load_fails_closed_alone() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (app, _) = App::open(&config(dir.path())).unwrap();
        app.create_tenant("broken", "test").unwrap();
        app.create_tenant("fine", "test").unwrap();
    }
    {
        // A stored version whose bytes no longer compile (e.g. damaged on disk).
        let store = Store::open(&dir.path().join("db")).unwrap();
        let record = PolicyVersionRecord {
            version: 0,
            sha256: "ab".repeat(32),
            size: 4,
            name: "x".into(),
            policy_version: "1".into(),
            contract: "0.1.0".into(),
            settings: "{}".into(),
            uploaded_by: "test".into(),
            uploaded_at: String::new(),
        };
        store
            .add_policy_version(
                "broken",
                NewPolicyVersion {
                    record,
                    component: b"\0asm",
                    activate: true,
                },
            )
            .unwrap();
    }
    // One tenant's broken policy does not stop the server: it opens.
    let (app, _) = App::open(&config(dir.path())).unwrap();
    let broken = app.evaluate("broken", &login()).unwrap();
    assert!(broken.decision.is_none());
    let failure = broken.policy_error.expect("a policy_error deny");
    assert_eq!(
        (failure.reason, failure.kind),
        ("policy_error", "unavailable")
    );
    let fine = app.evaluate("fine", &login()).unwrap();
    assert!(fine.decision.is_some(), "{fine:?}");
}
