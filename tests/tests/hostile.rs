//! Hostile components are refused at upload or contained at run time, with a clear error,
//! while the server keeps serving other tenants.

use gatehouse_tests::{fixtures, jit_login, TestServer};
use serde_json::{json, Value};

async fn server_with_good_tenant() -> TestServer {
    let server = TestServer::start_with(|config| config.policy.timeout_ms = 200).await;
    server.create_tenant("good").await;
    server
}

async fn assert_good_tenant_serves(server: &TestServer) {
    let (status, body) = server.evaluate("good", &jit_login("ann@good.io")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["decision"]["outcome"]["create"]["email"], "ann@good.io",
        "{body}"
    );
}

#[tokio::test]
async fn a_component_of_another_contract_version_is_refused() {
    let server = server_with_good_tenant().await;
    server.create_tenant("evil").await;
    let (status, body) = server
        .upload("evil", &fixtures::wat("wrong-version.wat"), json!({}), true)
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["reason"], "policy_contract", "{body}");
    assert!(body["detail"].as_str().unwrap().contains("1.0.0"), "{body}");
    assert_good_tenant_serves(&server).await;
}

#[tokio::test]
async fn a_component_that_imports_anything_is_refused() {
    let server = server_with_good_tenant().await;
    server.create_tenant("evil").await;
    let (status, body) = server
        .upload("evil", &fixtures::wat("extra-import.wat"), json!({}), true)
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["reason"], "policy_imports", "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("wasi:sockets"),
        "{body}"
    );
}

#[tokio::test]
async fn bytes_that_are_not_a_component_are_refused() {
    let server = server_with_good_tenant().await;
    let (status, body) = server.upload("good", b"\0asmnope", json!({}), true).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["reason"], "policy_invalid", "{body}");
    let too_big = vec![0u8; 9 << 20];
    let (status, body) = server.upload("good", &too_big, json!({}), true).await;
    assert_eq!(status, 413, "{body}");
    assert_good_tenant_serves(&server).await;
}

#[tokio::test]
async fn a_policy_that_loops_in_validate_settings_is_refused_at_upload() {
    let server = server_with_good_tenant().await;
    let (status, body) = server
        .upload(
            "good",
            fixtures::HOSTILE,
            json!({ "mode": "loop_validate" }),
            true,
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("deadline"),
        "{body}"
    );
    assert_good_tenant_serves(&server).await;
}

/// Each misbehaviour becomes a `policy_error` deny of that tenant's requests only.
#[tokio::test]
async fn runtime_misbehaviour_is_contained() {
    let server = server_with_good_tenant().await;
    for (mode, kind) in [
        ("loop", "timeout"),
        ("trap", "trap"),
        ("memory", "out_of_memory"),
        ("garbage", "malformed"),
    ] {
        let tenant = format!("evil-{mode}");
        server.create_tenant(&tenant).await;
        let (status, body) = server
            .upload(&tenant, fixtures::HOSTILE, json!({ "mode": mode }), true)
            .await;
        assert_eq!(status, 201, "{mode}: {body}");
        let roles = json!({ "decision": "effective_role", "input": [{ "manual": null, "team_roles": ["admin"] }] });
        for request in [jit_login("eve@evil.io"), resolve_request(), roles] {
            let (status, body) = server.evaluate(&tenant, &request).await;
            assert_eq!(status, 200, "{mode}: {body}");
            assert!(body["decision"].is_null(), "{mode}: {body}");
            assert_eq!(
                body["policy_error"]["reason"], "policy_error",
                "{mode}: {body}"
            );
            assert_eq!(body["policy_error"]["kind"], kind, "{mode}: {body}");
        }
        assert_good_tenant_serves(&server).await;
    }
}

fn resolve_request() -> Value {
    json!({
        "decision": "resolve",
        "input": {
            "idp": "okta",
            "user_claim": "eve@evil.io",
            "users": [{ "id": "u1", "email": "eve@evil.io", "status": "active", "matched_by": "email", "teams": [] }]
        }
    })
}

/// A decision that ran past its deadline is a passing failure: a SCIM write and an admin
/// write it was part of answer 503 with `Retry-After` (an IdP retries), nothing changed;
/// a policy that traps is the policy's fault: SCIM 500, the admin API 422.
#[tokio::test]
async fn a_deadline_is_503_with_retry_after_and_a_trap_is_the_policys_fault() {
    let server = server_with_good_tenant().await;
    for (mode, scim_status, admin_status) in [("loop", 503, 503), ("trap", 500, 422)] {
        let tenant = format!("roles-{mode}");
        server.create_tenant(&tenant).await;
        let (status, body) = server
            .send_json(
                reqwest::Method::POST,
                &format!("/api/v1/tenants/{tenant}/sso"),
                &json!({ "id": "okta", "issuer": "https://okta.example.com",
                         "client_id": "gatehouse", "jwks_uri": "https://203.0.113.10/jwks" }),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let (_, body) = server
            .send_json(
                reqwest::Method::POST,
                &format!("/api/v1/tenants/{tenant}/sso/okta/scim-token"),
                &json!({}),
            )
            .await;
        let scim_token = body["token"].as_str().unwrap().to_owned();
        let (status, body) = server
            .send_json(
                reqwest::Method::PUT,
                &format!("/api/v1/tenants/{tenant}/provisioning"),
                &json!({ "mode": "scim" }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = server
            .upload(&tenant, fixtures::HOSTILE, json!({ "mode": mode }), true)
            .await;
        assert_eq!(status, 201, "{mode}: {body}");

        let response = server
            .client
            .post(format!("{}/scim/v2/{tenant}/okta/Users", server.base))
            .bearer_auth(&scim_token)
            .json(&json!({
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "userName": "sam@acme.io", "externalId": "00u-sam", "active": true
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), scim_status, "{mode}");
        let retry_after = response.headers().get("retry-after").cloned();
        assert_eq!(
            retry_after.is_some(),
            scim_status == 503,
            "{mode}: {retry_after:?}"
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], scim_status.to_string(), "{mode}: {body}");

        let response = server
            .op(
                reqwest::Method::POST,
                &format!("/api/v1/tenants/{tenant}/users"),
            )
            .json(&json!({ "email": "ann@acme.io" }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), admin_status, "{mode}");
        assert_eq!(
            response.headers().contains_key("retry-after"),
            admin_status == 503,
            "{mode}"
        );

        // Nothing was written: the tenant has no users.
        let (status, body) = server
            .call(
                reqwest::Method::GET,
                &format!("/scim/v2/{tenant}/okta/Users"),
                Some(&scim_token),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["totalResults"], 0, "{mode}: {body}");
        let (status, body) = server
            .call(
                reqwest::Method::GET,
                &format!("/api/v1/tenants/{tenant}/users"),
                Some(gatehouse_tests::OPERATOR_TOKEN),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert!(
            body["items"].as_array().is_some_and(Vec::is_empty),
            "{mode}: {body}"
        );
    }
    assert_good_tenant_serves(&server).await;
}
