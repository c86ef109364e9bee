//! Swapping a tenant's policy under load: no request fails, every request after the swap
//! sees the new version, and other tenants are untouched.

use gatehouse_tests::{fixtures, jit_login, TestServer};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    failed: AtomicUsize,
}

/// Evaluates for `tenant` until `stop`, counting answers that are not a clean decision.
async fn hammer(
    server: Arc<TestServer>,
    tenant: &'static str,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> Vec<Value> {
    let mut versions = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let (status, body) = server.evaluate(tenant, &jit_login("load@acme.io")).await;
        if status == 200 && body["decision"].is_object() {
            tally.ok.fetch_add(1, Ordering::Relaxed);
            versions.push(body["policy_version"].clone());
        } else {
            eprintln!("FAILED {status} {body}");
            tally.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
    versions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_swap_under_load_fails_no_request_and_leaves_other_tenants_alone() {
    let server = Arc::new(TestServer::start().await);
    server.create_tenant("acme").await;
    server.create_tenant("other").await;
    let stop = Arc::new(AtomicBool::new(false));
    let (acme, other) = (Arc::new(Tally::default()), Arc::new(Tally::default()));
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(tokio::spawn(hammer(
            server.clone(),
            "acme",
            stop.clone(),
            acme.clone(),
        )));
    }
    let other_worker = tokio::spawn(hammer(server.clone(), "other", stop.clone(), other.clone()));

    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (status, body) = server
        .upload("acme", fixtures::NESTED_CLAIMS, json!({}), true)
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["version"], 1);
    let swapped_at = acme.ok.load(Ordering::Relaxed);

    // After the upload was acknowledged, every new request sees version 1.
    for _ in 0..50 {
        let (status, body) = server.evaluate("acme", &jit_login("after@acme.io")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["policy_version"], 1, "{body}");
        assert_eq!(body["policy"], "nested-claims", "{body}");
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let versions = worker.await.unwrap();
        // Versions only move forward: once a worker saw the new version it never sees the old.
        let first_new = versions
            .iter()
            .position(|v| v == &json!(1))
            .unwrap_or(versions.len());
        assert!(
            versions[first_new..].iter().all(|v| v == &json!(1)),
            "a request went back to the old policy"
        );
    }
    let other_versions = other_worker.await.unwrap();

    assert_eq!(
        acme.failed.load(Ordering::Relaxed),
        0,
        "requests failed during the swap"
    );
    assert_eq!(other.failed.load(Ordering::Relaxed), 0);
    assert!(
        swapped_at > 10 && acme.ok.load(Ordering::Relaxed) > swapped_at,
        "the load really ran across the swap"
    );
    assert!(
        other_versions.iter().all(Value::is_null),
        "the other tenant kept the built-in default policy"
    );
}

#[tokio::test]
async fn versions_are_kept_and_rollback_is_one_call() {
    let server = TestServer::start().await;
    server.create_tenant("acme").await;
    let (status, _) = server
        .upload("acme", fixtures::NESTED_CLAIMS, json!({}), true)
        .await;
    assert_eq!(status, 201);
    let (status, body) = server
        .upload(
            "acme",
            fixtures::NESTED_CLAIMS,
            json!({ "team_claim": "groups" }),
            false,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["version"], 2);
    let policy = |server: &TestServer| {
        let request = server.op(reqwest::Method::GET, "/api/v1/tenants/acme/policy");
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    assert_eq!(
        policy(&server).await["active"],
        1,
        "an upload with activate=false stays inactive"
    );

    let (status, body) = server
        .send_json(
            reqwest::Method::POST,
            "/api/v1/tenants/acme/policy/activate",
            &json!({ "version": 2 }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["active"], 2);
    let (_, mapped) = server
        .evaluate("acme", &json!({ "decision": "claim_mapping", "input": {} }))
        .await;
    assert_eq!(
        mapped["decision"]["team_claim"], "groups",
        "version 2 runs with its own settings: {mapped}"
    );

    let (status, body) = server
        .send_json(
            reqwest::Method::POST,
            "/api/v1/tenants/acme/policy/rollback",
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["active"], 1);
    let (status, body) = server
        .send_json(
            reqwest::Method::POST,
            "/api/v1/tenants/acme/policy/rollback",
            &json!({}),
        )
        .await;
    assert_eq!(
        (status, body["active"].clone()),
        (200, Value::Null),
        "back to the built-in default"
    );
    let (status, body) = server
        .send_json(
            reqwest::Method::POST,
            "/api/v1/tenants/acme/policy/rollback",
            &json!({}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        policy(&server).await["versions"].as_array().unwrap().len(),
        2
    );
}
