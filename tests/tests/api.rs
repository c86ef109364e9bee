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
