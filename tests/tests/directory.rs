//! Virtual accounts, identity providers, SSO configurations and resources through the
//! admin API, each refusal with its reason.

use gatehouse_tests::{TestServer, OPERATOR_TOKEN};
use reqwest::Method;
use serde_json::{json, Value};

const OP: Option<&str> = Some(OPERATOR_TOKEN);

fn idp(name: &str, issuer: &str, audiences: &[&str]) -> Value {
    json!({ "name": name, "issuer": issuer, "jwks_uri": "https://203.0.113.10/jwks", "audiences": audiences })
}

async fn post(server: &TestServer, path: &str, body: Value) -> (u16, Value) {
    server.call(Method::POST, path, OP, Some(&body)).await
}

#[tokio::test]
async fn identity_providers_refuse_what_would_be_unsafe() {
    let server = TestServer::start().await;
    server.create_tenant_with_admin("acme", "a@acme.io").await;
    server
        .create_tenant_with_admin("globex", "g@globex.io")
        .await;
    let path = "/api/v1/tenants/acme/identity-providers";
    let (status, body) = post(&server, path, idp("okta", "https://acme.okta.com", &[])).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["algorithms"], json!(["RS256", "ES256"]));

    let mut cases = vec![
        (json!({ "algorithms": ["HS256"] }), 400, "HS256"),
        (json!({ "algorithms": ["none"] }), 400, "none"),
        (
            json!({ "jwks_uri": "http://203.0.113.10/jwks" }),
            400,
            "https",
        ),
        (
            json!({ "jwks_uri": "https://127.0.0.1/jwks" }),
            400,
            "private",
        ),
        (
            json!({ "jwks_uri": "https://169.254.169.254/jwks" }),
            400,
            "private",
        ),
        (json!({ "leeway_seconds": 9999 }), 400, "0-300"),
        (json!({ "team_claim": "a..b" }), 400, "team_claim"),
        (json!({ "name": "Bad Name" }), 400, "a-z 0-9"),
        (
            json!({ "discovery_url": "https://203.0.113.10/.well-known/openid-configuration" }),
            400,
            "exactly one",
        ),
        (
            json!({ "issuer": "https://acme.okta.com" }),
            409,
            "already used",
        ),
    ];
    for (change, status, needle) in cases.drain(..) {
        let mut body = idp("other", "https://other.example", &[]);
        for (k, v) in change.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (got, answer) = post(&server, path, body).await;
        assert_eq!(got, status, "{change}: {answer}");
        assert!(
            answer["detail"].as_str().unwrap().contains(needle),
            "{change}: {answer}"
        );
    }
    // The same issuer in another tenant needs audiences on both sides.
    let globex = "/api/v1/tenants/globex/identity-providers";
    let (status, body) = post(
        &server,
        globex,
        idp("okta", "https://acme.okta.com", &["globex"]),
    )
    .await;
    assert_eq!(status, 409, "acme's IdP has no audiences: {body}");
    let mut with_aud = idp("okta", "https://acme.okta.com", &["acme"]);
    let (status, body) = server
        .call(Method::PUT, &format!("{path}/okta"), OP, Some(&with_aud))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(
        &server,
        globex,
        idp("okta", "https://acme.okta.com", &["globex"]),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    with_aud["audiences"] = json!([]);
    let (status, _) = server
        .call(Method::PUT, &format!("{path}/okta"), OP, Some(&with_aud))
        .await;
    assert_eq!(
        status, 409,
        "dropping audiences while the issuer is shared is refused"
    );
}

#[tokio::test]
async fn private_jwks_urls_need_the_operators_permission() {
    let server = TestServer::start_with(|config| config.allow_private_urls = true).await;
    server.create_tenant_with_admin("acme", "a@acme.io").await;
    let mut body = idp("keycloak", "http://127.0.0.1:8081/realms/acme", &[]);
    body["jwks_uri"] = json!("http://127.0.0.1:8081/realms/acme/protocol/openid-connect/certs");
    let (status, answer) = post(&server, "/api/v1/tenants/acme/identity-providers", body).await;
    assert_eq!(status, 201, "{answer}");
}

#[tokio::test]
async fn virtual_accounts_map_to_identity_providers_and_rotate_tokens_with_grace() {
    let server = TestServer::start().await;
    server.create_tenant_with_admin("acme", "a@acme.io").await;
    let vas = "/api/v1/tenants/acme/virtual-accounts";
    let mapping = json!([{ "idp": "okta", "value": "ci-bot" }]);
    let (status, body) = post(&server, vas, json!({ "name": "ci", "mappings": mapping })).await;
    assert_eq!(status, 400, "the IdP must exist: {body}");
    assert!(body["detail"].as_str().unwrap().contains("okta"));
    post(
        &server,
        "/api/v1/tenants/acme/identity-providers",
        idp("okta", "https://acme.okta.com", &[]),
    )
    .await;
    let (status, ci) = post(
        &server,
        vas,
        json!({ "name": "ci", "role": "admin", "mappings": mapping }),
    )
    .await;
    assert_eq!(status, 201, "{ci}");
    assert_eq!(
        (ci["enabled"].as_bool(), ci["role"].as_str()),
        (Some(true), Some("admin"))
    );
    let (status, _) = post(&server, vas, json!({ "name": "ci" })).await;
    assert_eq!(status, 409, "names are unique");
    let (status, body) = post(
        &server,
        vas,
        json!({ "name": "deploy", "mappings": mapping }),
    )
    .await;
    assert_eq!(status, 409, "one VA per mapping: {body}");
    let (status, _) = post(&server, vas, json!({ "name": "Not_Valid" })).await;
    assert_eq!(status, 400);

    let id = ci["id"].as_str().unwrap();
    let (status, body) = server
        .call(
            Method::PATCH,
            &format!("{vas}/{id}"),
            OP,
            Some(&json!({ "enabled": false })),
        )
        .await;
    assert_eq!((status, body["enabled"].as_bool()), (200, Some(false)));

    let tokens = format!("{vas}/{id}/tokens");
    let (status, first) = post(&server, &tokens, json!({ "name": "primary" })).await;
    assert_eq!(status, 201, "{first}");
    assert!(first["secret"].as_str().unwrap().starts_with("gva_acme_"));
    let (status, second) = post(
        &server,
        &tokens,
        json!({ "name": "rotated", "replaces": first["id"], "grace_seconds": 600 }),
    )
    .await;
    assert_eq!(status, 201, "{second}");
    let (_, list) = server.call(Method::GET, &tokens, OP, None).await;
    let old = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == first["id"])
        .unwrap()
        .clone();
    let revoked_at = time::OffsetDateTime::parse(
        old["revoked_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let left = revoked_at - time::OffsetDateTime::now_utc();
    assert!(
        left > time::Duration::seconds(500) && left <= time::Duration::seconds(600),
        "grace kept: {left}"
    );
    assert!(!list.to_string().contains(first["secret"].as_str().unwrap()));
    let (status, _) = server
        .call(
            Method::DELETE,
            &format!("{tokens}/{}", second["id"].as_str().unwrap()),
            OP,
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = post(
        &server,
        &tokens,
        json!({ "name": "x", "grace_seconds": 999999, "replaces": first["id"] }),
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn sso_configurations_hide_secrets_and_own_the_scim_token() {
    let server = TestServer::start().await;
    let admin = server.create_tenant_with_admin("acme", "a@acme.io").await;
    let (status, _) = server
        .call(
            Method::PUT,
            "/api/v1/tenants/acme/provisioning",
            Some(&admin),
            Some(&json!({ "mode": "jit" })),
        )
        .await;
    assert_eq!(status, 409, "jit needs an SSO configuration");
    let sso = json!({
        "id": "okta", "issuer": "https://acme.okta.com", "client_id": "gatehouse",
        "client_secret": "s3cr3t-value", "discovery_url": "https://203.0.113.10/.well-known/openid-configuration"
    });
    let (status, body) = post(&server, "/api/v1/tenants/acme/sso", sso.clone()).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        (
            body["email_claim"].as_str(),
            body["unique_id_claim"].as_str()
        ),
        (Some("email"), Some("sub"))
    );
    assert_eq!(body["scim_base_url"], "/scim/v2/acme/okta");
    assert!(
        !body.to_string().contains("s3cr3t-value") && body["client_secret_set"] == true,
        "{body}"
    );
    let (status, _) = post(&server, "/api/v1/tenants/acme/sso", sso).await;
    assert_eq!(status, 409);

    let (status, first) = post(
        &server,
        "/api/v1/tenants/acme/sso/okta/scim-token",
        json!({}),
    )
    .await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["scim_base_url"], "/scim/v2/acme/okta");
    let (_, second) = post(
        &server,
        "/api/v1/tenants/acme/sso/okta/scim-token",
        json!({}),
    )
    .await;
    assert_ne!(first["token"], second["token"]);
    let (_, list) = server
        .call(Method::GET, "/api/v1/tenants/acme/sso", OP, None)
        .await;
    let listed = list.to_string();
    assert!(
        !listed.contains(first["token"].as_str().unwrap())
            && !listed.contains(second["token"].as_str().unwrap())
    );
    let (_, audit) = server
        .call(
            Method::GET,
            "/api/v1/tenants/acme/audit?limit=1000",
            OP,
            None,
        )
        .await;
    assert!(
        !audit.to_string().contains("s3cr3t-value"),
        "secrets never reach the audit log"
    );

    let (status, _) = server
        .call(
            Method::PUT,
            "/api/v1/tenants/acme/provisioning",
            Some(&admin),
            Some(&json!({ "mode": "jit" })),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = server
        .call(Method::DELETE, "/api/v1/tenants/acme/sso/okta", OP, None)
        .await;
    assert_eq!(
        status, 409,
        "the last SSO configuration of a jit tenant stays: {body}"
    );
}

#[tokio::test]
async fn collaborators_guard_deletion_and_must_exist() {
    let server = TestServer::start().await;
    server.create_tenant_with_admin("acme", "a@acme.io").await;
    let (_, bob) = post(
        &server,
        "/api/v1/tenants/acme/users",
        json!({ "email": "bob@acme.io" }),
    )
    .await;
    let bob = bob["id"].as_str().unwrap().to_owned();
    let (_, va) = post(
        &server,
        "/api/v1/tenants/acme/virtual-accounts",
        json!({ "name": "ci" }),
    )
    .await;
    let va = va["id"].as_str().unwrap().to_owned();
    let resources = "/api/v1/tenants/acme/resources";
    let (status, body) = post(&server, resources, json!({ "kind": "model", "name": "llama", "collaborators": [{ "subject": { "user": "usr_ghost" }, "role": "viewer" }] })).await;
    assert_eq!(status, 400, "{body}");
    let collaborators = json!([{ "subject": { "user": bob }, "role": "editor" }, { "subject": { "virtual_account": va }, "role": "viewer" }]);
    let (status, resource) = post(
        &server,
        resources,
        json!({ "kind": "model", "name": "llama", "collaborators": collaborators }),
    )
    .await;
    assert_eq!(status, 201, "{resource}");

    let (status, body) = server
        .call(
            Method::DELETE,
            &format!("/api/v1/tenants/acme/users/{bob}"),
            OP,
            None,
        )
        .await;
    assert_eq!(status, 409);
    assert!(
        body["detail"].as_str().unwrap().contains("model llama"),
        "{body}"
    );
    let (status, body) = server
        .call(
            Method::DELETE,
            &format!("/api/v1/tenants/acme/virtual-accounts/{va}"),
            OP,
            None,
        )
        .await;
    assert_eq!(status, 409);
    assert!(
        body["detail"].as_str().unwrap().contains("model llama"),
        "{body}"
    );

    let id = resource["id"].as_str().unwrap();
    let (status, _) = server
        .call(
            Method::PUT,
            &format!("{resources}/{id}/collaborators"),
            OP,
            Some(&json!({ "collaborators": [] })),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        server
            .call(
                Method::DELETE,
                &format!("/api/v1/tenants/acme/users/{bob}"),
                OP,
                None
            )
            .await
            .0,
        204
    );
    assert_eq!(
        server
            .call(
                Method::DELETE,
                &format!("/api/v1/tenants/acme/virtual-accounts/{va}"),
                OP,
                None
            )
            .await
            .0,
        204
    );
}

#[tokio::test]
async fn user_mappings_name_an_idp_and_map_one_user() {
    let server = TestServer::start().await;
    server.create_tenant_with_admin("acme", "a@acme.io").await;
    let users = "/api/v1/tenants/acme/users";
    let (_, bob) = post(&server, users, json!({ "email": "bob@acme.io" })).await;
    let (_, eve) = post(&server, users, json!({ "email": "eve@acme.io" })).await;
    let (bob, eve) = (
        bob["id"].as_str().unwrap().to_owned(),
        eve["id"].as_str().unwrap().to_owned(),
    );
    let mappings = json!({ "mappings": [{ "idp": "okta", "value": "00u-bob" }] });
    let (status, body) = server
        .call(
            Method::PUT,
            &format!("{users}/{bob}/mappings"),
            OP,
            Some(&mappings),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    post(
        &server,
        "/api/v1/tenants/acme/identity-providers",
        idp("okta", "https://acme.okta.com", &[]),
    )
    .await;
    let (status, body) = server
        .call(
            Method::PUT,
            &format!("{users}/{bob}/mappings"),
            OP,
            Some(&mappings),
        )
        .await;
    assert_eq!(
        (status, body["mappings"][0]["value"].as_str()),
        (200, Some("00u-bob")),
        "{body}"
    );
    let (status, body) = server
        .call(
            Method::PUT,
            &format!("{users}/{eve}/mappings"),
            OP,
            Some(&mappings),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = server
        .call(
            Method::DELETE,
            "/api/v1/tenants/acme/identity-providers/okta",
            OP,
            None,
        )
        .await;
    assert_eq!(status, 409);
    assert!(
        body["detail"].as_str().unwrap().contains("bob@acme.io"),
        "{body}"
    );
    server
        .call(
            Method::PUT,
            &format!("{users}/{bob}/mappings"),
            OP,
            Some(&json!({ "mappings": [] })),
        )
        .await;
    let (status, _) = server
        .call(
            Method::PUT,
            &format!("{users}/{eve}/mappings"),
            OP,
            Some(&mappings),
        )
        .await;
    assert_eq!(status, 200, "the mapping is free again");
}
