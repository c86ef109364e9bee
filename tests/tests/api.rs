//! Refusals of the admin API, each with its status and reason.

use gatehouse_tests::{fixtures, jit_login, TestServer};
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn the_admin_api_needs_the_operator_token() {
    let server = TestServer::start().await;
    let response = server
        .client
        .get(format!("{}/api/v1/tenants", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let response = server
        .client
        .get(format!("{}/api/v1/tenants", server.base))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["reason"], "unauthorized");
}

#[tokio::test]
async fn tenant_slugs_are_checked_and_unique() {
    let server = TestServer::start().await;
    let (status, body) = server
        .send_json(
            Method::POST,
            "/api/v1/tenants",
            &json!({ "slug": "Not Valid" }),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("a-z 0-9 -"),
        "{body}"
    );
    server.create_tenant("acme").await;
    let (status, body) = server
        .send_json(Method::POST, "/api/v1/tenants", &json!({ "slug": "acme" }))
        .await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = server
        .send_json(Method::POST, "/api/v1/tenants", &json!({ "slug": 7 }))
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = server
        .send_json(
            Method::POST,
            "/api/v1/tenants",
            &json!({ "slug": "x", "extra": 1 }),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("extra"), "{body}");
}

#[tokio::test]
async fn unknown_tenants_routes_and_versions_are_404() {
    let server = TestServer::start().await;
    let (status, _) = server.evaluate("ghost", &jit_login("a@b.io")).await;
    assert_eq!(status, 404);
    let response = server
        .op(Method::GET, "/api/v1/nowhere")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    server.create_tenant("acme").await;
    let (status, body) = server
        .send_json(
            Method::POST,
            "/api/v1/tenants/acme/policy/activate",
            &json!({ "version": 4 }),
        )
        .await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test]
async fn malformed_evaluations_are_400_with_a_reason() {
    let server = TestServer::start().await;
    server.create_tenant("acme").await;
    for bad in [
        json!({ "decision": "teleport" }),
        json!({ "decision": "login", "input": { "mode": "sometimes" } }),
        json!([1, 2]),
    ] {
        let (status, body) = server.evaluate("acme", &bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["reason"], "bad_request");
    }
    let response = server
        .op(Method::POST, "/api/v1/tenants/acme/policy/evaluate")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn settings_are_validated_by_the_policy_itself() {
    let server = TestServer::start().await;
    server.create_tenant("acme").await;
    let (status, body) = server
        .upload(
            "acme",
            fixtures::NESTED_CLAIMS,
            json!({ "no_such_setting": true }),
            true,
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["reason"], "policy_settings");
    assert!(
        body["detail"].as_str().unwrap().contains("no_such_setting"),
        "{body}"
    );
}

#[tokio::test]
async fn an_upload_whose_own_cases_fail_is_refused_with_the_diff() {
    use base64::Engine;
    let server = TestServer::start().await;
    server.create_tenant("acme").await;
    let wrong = json!({
        "name": "claims the default user claim is sub",
        "decision": "claim_mapping",
        "input": { "idp": {}, "settings": "" },
        "expect": { "user_claim": "sub", "va_name_claim": null, "team_claim": null, "extra_claims": [] }
    });
    let body = json!({
        "component_base64": base64::engine::general_purpose::STANDARD.encode(gatehouse::policy::DEFAULT_POLICY),
        "cases": [wrong],
    });
    let (status, body) = server
        .send_json(Method::POST, "/api/v1/tenants/acme/policy/versions", &body)
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["reason"], "policy_cases_failed");
    assert_eq!(
        body["failed_cases"][0]["actual"]["user_claim"], "email",
        "{body}"
    );
    let policy: serde_json::Value = server
        .op(Method::GET, "/api/v1/tenants/acme/policy")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        policy["versions"].as_array().unwrap().is_empty(),
        "nothing stored: {policy}"
    );
}

#[tokio::test]
async fn bare_refusals_of_the_admin_api_are_problems_too() {
    let server = TestServer::start().await;
    // A method the route does not answer: 405 with a problem body and `Allow`.
    let response = server
        .op(reqwest::Method::DELETE, "/api/v1/tenants")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    assert!(response.headers().contains_key("allow"));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["reason"], "method_not_allowed");
    // A body over the limit: 413 with a problem body.
    let response = server
        .op(reqwest::Method::POST, "/api/v1/tenants")
        .header("content-type", "application/json")
        .body(vec![b' '; 2 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        (body["status"].as_u64(), body["reason"].as_str()),
        (Some(413), Some("too_large"))
    );
}

/// An admin write that waits (here for its tenant's lock, which the test holds; in
/// production for a flush or a database round trip) holds a blocking thread, not one of
/// the runtime's workers: with a single worker, `/healthz` still answers meanwhile, and the
/// write completes once the lock is let go (decision 87).
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn an_admin_write_that_waits_does_not_stall_the_workers() {
    let data = tempfile::tempdir().unwrap();
    let config = gatehouse::config::Config {
        data: data.path().to_owned(),
        operator_token: Some(gatehouse_tests::OPERATOR_TOKEN.into()),
        ..Default::default()
    };
    let app = std::sync::Arc::new(gatehouse::app::App::open(&config).unwrap().0);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(gatehouse::http::serve(
        app.clone(),
        listener,
        std::future::pending(),
    ));
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .unwrap();
    let admin = |method, path: &str| {
        client
            .request(method, format!("{base}{path}"))
            .bearer_auth(gatehouse_tests::OPERATOR_TOKEN)
    };
    let created = admin(Method::POST, "/api/v1/tenants")
        .json(&json!({ "slug": "acme" }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);

    let held = app.store.lock_tenant("acme").unwrap();
    let write = tokio::spawn(
        admin(Method::POST, "/api/v1/tenants/acme/teams")
            .json(&json!({ "name": "platform" }))
            .send(),
    );
    // The write reaches the lock within milliseconds; had it taken the only worker with
    // it, every later request would wait for the lock. The probe is a plain blocking
    // socket with its own timeout on this (non-worker) thread, so a stalled worker fails
    // the test instead of hanging it.
    let address = base.trim_start_matches("http://").to_owned();
    let until = std::time::Instant::now() + std::time::Duration::from_millis(300);
    while std::time::Instant::now() < until {
        assert_eq!(
            healthz_status(&address),
            "200",
            "/healthz answers meanwhile"
        );
    }
    assert!(
        !write.is_finished(),
        "the write waits for the lock the test holds"
    );
    held.release().unwrap();
    let written = write.await.unwrap().expect("the write completes");
    assert_eq!(written.status(), 201);
    server.abort();
}

/// `GET /healthz`'s status code over a fresh blocking connection, failing after 5 s.
fn healthz_status(address: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: gatehouse\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .expect("an answer within 5 s");
    answer.split(' ').nth(1).unwrap_or_default().to_owned()
}
