//! The edge token evaluator (SPEC §4) against identity providers whose key sets are
//! served over real HTTP on loopback by the test: VA and user tokens, team claims,
//! precedence, refusals with their reasons, key rotation and removal, an outage, an
//! unknown-`kid` flood, and the attacks of SPEC §4 step 1.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use gatehouse_tests::jwt::{jwk, keys_dir, sign, Jwks};
use gatehouse_tests::{TestServer, OPERATOR_TOKEN};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::time::Duration;

const OP: Option<&str> = Some(OPERATOR_TOKEN);
const ISSUER: &str = "https://idp.test/corp";

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Claims of a token from the corp IdP, valid for 10 minutes, with `extra` merged in.
fn claims(extra: Value) -> Value {
    let mut claims = json!({ "iss": ISSUER, "aud": "api", "iat": now(), "exp": now() + 600 });
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    claims
}

/// A tenant `acme` with the corp IdP, an active user ann (in team `eng`), an invited user
/// ivy, a deactivated user dan, a VA `deployer` mapped to client id `ci-bot`, and team
/// `ops` mapped to the group claim value `ops-group`.
struct World {
    server: TestServer,
    jwks: Jwks,
    ann: String,
    va: String,
    eng: String,
    ops: String,
}

async fn world(tweak: impl FnOnce(&mut gatehouse::config::Config)) -> World {
    world_with(tweak, 300).await
}

async fn world_with(tweak: impl FnOnce(&mut gatehouse::config::Config), max_age: u64) -> World {
    let jwks = Jwks::serve(vec![jwk("rsa-a"), jwk("ec-a")], max_age).await;
    let server = TestServer::start_with(|config| {
        config.allow_private_urls = true;
        config.edge.jwks_refetch_cooldown_ms = 300;
        tweak(config);
    })
    .await;
    server
        .create_tenant_with_admin("acme", "root@acme.io")
        .await;
    let post = |path: String, body: Value| {
        let server = &server;
        async move {
            let (status, body) = server.call(Method::POST, &path, OP, Some(&body)).await;
            assert!(status == 200 || status == 201, "{path}: {status} {body}");
            body
        }
    };
    post(
        "/api/v1/tenants/acme/identity-providers".into(),
        json!({
            "name": "corp", "issuer": ISSUER, "jwks_uri": jwks.url, "audiences": ["api"],
            "algorithms": ["RS256", "ES256"], "leeway_seconds": 5,
            "user_claim": "email", "va_name_claim": "client_id", "team_claim": "groups"
        }),
    )
    .await;
    let mut ids = Vec::new();
    for email in ["ann@acme.io", "ivy@acme.io", "dan@acme.io"] {
        let user = post(
            "/api/v1/tenants/acme/users".into(),
            json!({ "email": email }),
        )
        .await;
        ids.push(user["id"].as_str().unwrap().to_owned());
    }
    let (ann, dan) = (ids[0].clone(), ids[2].clone());
    post(
        format!("/api/v1/tenants/acme/users/{ann}/reactivate"),
        json!({}),
    )
    .await;
    post(
        format!("/api/v1/tenants/acme/users/{dan}/reactivate"),
        json!({}),
    )
    .await;
    post(
        format!("/api/v1/tenants/acme/users/{dan}/deactivate"),
        json!({}),
    )
    .await;
    let eng = post(
        "/api/v1/tenants/acme/teams".into(),
        json!({ "name": "eng", "members": [ann] }),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let ops = post(
        "/api/v1/tenants/acme/teams".into(),
        json!({ "name": "ops", "mappings": [{ "idp": "corp", "value": "ops-group" }] }),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let va = post(
        "/api/v1/tenants/acme/virtual-accounts".into(),
        json!({ "name": "deployer", "mappings": [{ "idp": "corp", "value": "ci-bot" }] }),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    World {
        server,
        jwks,
        ann,
        va,
        eng,
        ops,
    }
}

impl World {
    async fn resolve(&self, token: &str) -> (u16, Value) {
        self.resolve_at("acme", token).await
    }

    async fn resolve_at(&self, tenant: &str, token: &str) -> (u16, Value) {
        self.server
            .call(
                Method::POST,
                &format!("/v1/{tenant}/resolve"),
                Some(token),
                None,
            )
            .await
    }

    /// Uploads and activates the hostile fixture in its `trap` mode: every decision fails.
    async fn activate_trapping_policy(&self) {
        let (status, body) = self
            .server
            .upload(
                "acme",
                gatehouse_tests::fixtures::HOSTILE,
                json!({ "mode": "trap" }),
                true,
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }

    async fn deny_reason(&self, token: &str) -> (u16, String) {
        let (status, body) = self.resolve(token).await;
        assert_eq!(body["decision"], "deny", "{body}");
        (status, body["reason"].as_str().unwrap().to_owned())
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.server.call(Method::POST, path, OP, Some(&body)).await
    }
}

#[tokio::test]
async fn user_and_virtual_account_tokens_resolve_through_the_policy() {
    let w = world(|_| {}).await;

    // A user by email, with the teams they belong to.
    let token = sign(
        "rsa-a",
        Algorithm::RS256,
        &claims(json!({ "email": "Ann@Acme.io" })),
    );
    let (status, body) = w.resolve(&token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (
            body["decision"].as_str(),
            body["kind"].as_str(),
            body["id"].as_str()
        ),
        (Some("allow"), Some("user"), Some(w.ann.as_str()))
    );
    assert_eq!(body["email"], "ann@acme.io");
    // Every user is in the built-in `everyone` team.
    assert_eq!(body["teams"], json!(["eng", "everyone"]));
    assert_eq!(
        body["team_ids"][0],
        json!(w.eng),
        "ids in the order of the names"
    );
    assert_eq!(body["tenant_role"], "member");
    assert_eq!(body["idp"], "corp");
    assert_eq!(body["token"], "jwt");
    assert!(body["expires_at"].as_i64().unwrap() > now());

    // The team claim adds the mapped team to the context (ES256 key this time).
    let token = sign(
        "ec-a",
        Algorithm::ES256,
        &claims(json!({ "email": "ann@acme.io", "groups": ["ops-group", "unmapped"] })),
    );
    let (status, body) = w.resolve(&token).await;
    assert_eq!(status, 200, "{body}");
    let mut teams: Vec<&str> = body["teams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    teams.sort();
    assert_eq!(teams, ["eng", "everyone", "ops"], "{body}");
    assert!(body["team_ids"].as_array().unwrap().contains(&json!(w.ops)));

    // A VA by its name claim; it wins over a user matching the same token.
    let token = sign(
        "rsa-a",
        Algorithm::RS256,
        &claims(json!({ "client_id": "ci-bot", "email": "ann@acme.io" })),
    );
    let (status, body) = w.resolve(&token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (
            body["kind"].as_str(),
            body["id"].as_str(),
            body["name"].as_str()
        ),
        (
            Some("virtual_account"),
            Some(w.va.as_str()),
            Some("deployer")
        )
    );
    assert_eq!(body["tenant_role"], "member");

    // Invited, deactivated and unknown users are refused with their reasons.
    for (email, reason) in [
        ("ivy@acme.io", "not_provisioned"),
        ("dan@acme.io", "deactivated"),
        ("nobody@acme.io", "not_provisioned"),
    ] {
        let token = sign(
            "rsa-a",
            Algorithm::RS256,
            &claims(json!({ "email": email })),
        );
        assert_eq!(
            w.deny_reason(&token).await,
            (403, reason.to_owned()),
            "{email}"
        );
    }
    // A token with no identity claim at all.
    let token = sign("rsa-a", Algorithm::RS256, &claims(json!({})));
    assert_eq!(w.deny_reason(&token).await.0, 403);

    // Disabling the VA takes effect on the next request, cached result or not.
    let (status, _) = w
        .server
        .call(
            Method::PATCH,
            &format!("/api/v1/tenants/acme/virtual-accounts/{}", w.va),
            OP,
            Some(&json!({ "enabled": false })),
        )
        .await;
    assert_eq!(status, 200);
    let token = sign(
        "rsa-a",
        Algorithm::RS256,
        &claims(json!({ "client_id": "ci-bot" })),
    );
    assert_eq!(w.deny_reason(&token).await.0, 403);
}

#[tokio::test]
async fn deactivation_denies_the_next_request_even_when_cached() {
    let w = world(|_| {}).await;
    let jwt = sign(
        "rsa-a",
        Algorithm::RS256,
        &claims(json!({ "email": "ann@acme.io" })),
    );
    let (_, created) = w
        .post(
            &format!("/api/v1/tenants/acme/users/{}/tokens", w.ann),
            json!({ "name": "laptop" }),
        )
        .await;
    let pat = created["secret"].as_str().unwrap().to_owned();
    for token in [&jwt, &pat, &jwt, &pat] {
        let (status, body) = w.resolve(token).await;
        assert_eq!(
            (status, body["id"].as_str()),
            (200, Some(w.ann.as_str())),
            "{body}"
        );
    }
    let (_, body) = w.resolve(&pat).await;
    assert_eq!(body["token"], "pat");

    let (status, _) = w
        .post(
            &format!("/api/v1/tenants/acme/users/{}/deactivate", w.ann),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(w.deny_reason(&jwt).await, (403, "deactivated".into()));
    assert_eq!(w.deny_reason(&pat).await, (403, "deactivated".into()));
    // The admin API refuses the PAT too.
    let (status, _) = w
        .server
        .call(
            Method::GET,
            "/api/v1/tenants/acme/users/me",
            Some(&pat),
            None,
        )
        .await;
    assert_eq!(status, 401);

    // Reactivated: allowed again; a team change shows at once.
    w.post(
        &format!("/api/v1/tenants/acme/users/{}/reactivate", w.ann),
        json!({}),
    )
    .await;
    let (status, body) = w.resolve(&jwt).await;
    assert_eq!(
        (status, body["teams"].clone()),
        (200, json!(["eng", "everyone"]))
    );
    let (status, _) = w
        .server
        .call(
            Method::PATCH,
            &format!("/api/v1/tenants/acme/teams/{}/members", w.eng),
            OP,
            Some(&json!({ "remove": [w.ann] })),
        )
        .await;
    assert!(status == 200 || status == 204, "{status}");
    let (_, body) = w.resolve(&jwt).await;
    assert_eq!(body["teams"], json!(["everyone"]), "{body}");

    // A revoked PAT is refused as revoked.
    let (status, _) = w
        .server
        .call(
            Method::DELETE,
            &format!("/api/v1/tenants/acme/users/{}/tokens", w.ann),
            OP,
            None,
        )
        .await;
    assert!(status == 200 || status == 204, "{status}");
    assert_eq!(w.deny_reason(&pat).await, (401, "revoked".into()));
}

#[tokio::test]
async fn virtual_account_tokens_and_other_tenants_tokens() {
    let w = world(|_| {}).await;
    let (status, created) = w
        .post(
            &format!("/api/v1/tenants/acme/virtual-accounts/{}/tokens", w.va),
            json!({ "name": "ci" }),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let secret = created["secret"].as_str().unwrap();
    let (status, body) = w.resolve(secret).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (
            body["kind"].as_str(),
            body["id"].as_str(),
            body["token"].as_str()
        ),
        (
            Some("virtual_account"),
            Some(w.va.as_str()),
            Some("va_token")
        )
    );

    // Another tenant's valid token is unknown here, and names no tenant.
    let globex_admin = w
        .server
        .create_tenant_with_admin("globex", "root@globex.io")
        .await;
    let (status, body) = w.resolve(&globex_admin).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (401, Some("unknown_token"))
    );
    assert!(!body.to_string().contains("globex"), "{body}");
    let (status, body) = w.resolve_at("globex", &globex_admin).await;
    assert_eq!(status, 200, "{body}");
    // An unknown tenant.
    let (status, body) = w.resolve_at("nope", secret).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (401, Some("unknown_tenant"))
    );
}

/// Opaque tokens' answers are cached like a JWT's: the cached answer of a VA token
/// replaced with a grace period stops at the end of the grace, though nothing else changed.
#[tokio::test]
async fn a_cached_va_token_answer_ends_with_its_grace_period() {
    let w = world(|_| {}).await;
    let tokens = format!("/api/v1/tenants/acme/virtual-accounts/{}/tokens", w.va);
    let (status, old) = w.post(&tokens, json!({ "name": "old" })).await;
    assert_eq!(status, 201, "{old}");
    let old_secret = old["secret"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        let (status, body) = w.resolve(&old_secret).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, new) = w
        .post(
            &tokens,
            json!({ "name": "new", "replaces": old["id"], "grace_seconds": 2 }),
        )
        .await;
    assert_eq!(status, 201, "{new}");
    let (status, body) = w.resolve(&old_secret).await;
    assert_eq!(status, 200, "within the grace period: {body}");
    // The answer says when the token stops passing: the grace's end, not the token's own
    // expiry months away (a gateway may cache the answer that long).
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let until = body["expires_at"].as_i64().expect("expires_at set");
    assert!(
        until <= now + 3,
        "expires_at {until} is the grace's end: {body}"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let (status, body) = w.resolve(&old_secret).await;
        if status == 401 {
            assert_eq!(body["reason"], "revoked", "{body}");
            break;
        }
        assert_eq!(status, 200, "{body}");
        assert!(
            std::time::Instant::now() < deadline,
            "the old token still passes long after its grace"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (status, body) = w.resolve(new["secret"].as_str().unwrap()).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn forward_auth_answers_in_headers_for_any_method() {
    let w = world(|config| config.edge.strip_authorization = true).await;
    let token = sign(
        "rsa-a",
        Algorithm::RS256,
        &claims(json!({ "email": "ann@acme.io", "groups": "ops-group" })),
    );
    for method in [Method::GET, Method::POST, Method::PUT, Method::DELETE] {
        let response = w
            .server
            .client
            .request(
                method.clone(),
                format!("{}/v1/acme/forward-auth", w.server.base),
            )
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{method}");
        let h = response.headers();
        let get = |name: &str| h.get(name).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(get("x-gatehouse-id"), Some(w.ann.clone()));
        assert_eq!(get("x-gatehouse-kind").as_deref(), Some("user"));
        assert_eq!(get("x-gatehouse-email").as_deref(), Some("ann@acme.io"));
        assert_eq!(get("x-gatehouse-tenant").as_deref(), Some("acme"));
        assert_eq!(get("x-gatehouse-role").as_deref(), Some("member"));
        assert_eq!(get("x-gatehouse-idp").as_deref(), Some("corp"));
        let mut teams: Vec<String> = get("x-gatehouse-teams")
            .unwrap()
            .split(',')
            .map(str::to_owned)
            .collect();
        teams.sort();
        assert_eq!(teams, ["eng", "everyone", "ops"]);
        assert_eq!(
            get("x-envoy-auth-headers-to-remove").as_deref(),
            Some("authorization")
        );
    }
    // No token: 401 with a bare challenge; a bad one: invalid_token; a refused subject: 403.
    let response = w
        .server
        .client
        .get(format!("{}/v1/acme/forward-auth", w.server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let response = w
        .server
        .client
        .get(format!("{}/v1/acme/forward-auth", w.server.base))
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers()["www-authenticate"],
        "Bearer error=\"invalid_token\", error_description=\"malformed\""
    );
    let dan = sign(
        "rsa-a",
        Algorithm::RS256,
        &claims(json!({ "email": "dan@acme.io" })),
    );
    let response = w
        .server
        .client
        .get(format!("{}/v1/acme/forward-auth", w.server.base))
        .bearer_auth(&dan)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(response.headers()["x-gatehouse-deny-reason"], "deactivated");
    assert!(
        response.headers().get("x-gatehouse-id").is_none(),
        "a refusal names no identity"
    );
}

#[tokio::test]
async fn attacks_are_refused_with_their_reasons() {
    let w = world(|_| {}).await;
    let good = claims(json!({ "email": "ann@acme.io" }));
    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let valid = sign("rsa-a", Algorithm::RS256, &good);
    let parts: Vec<&str> = valid.split('.').collect();
    let with_header = |header: Value| format!("{}.{}.{}", b64(&header), parts[1], parts[2]);

    // HS256 signed with the RSA public key's bytes as the secret (key confusion).
    let public_n = jwk("rsa-a")["n"].as_str().unwrap().to_owned();
    let hmac = jsonwebtoken::encode(
        &Header {
            kid: Some("rsa-a".into()),
            ..Header::new(Algorithm::HS256)
        },
        &good,
        &EncodingKey::from_secret(public_n.as_bytes()),
    )
    .unwrap();
    // ES256 with an all-zero signature.
    let es = sign("ec-a", Algorithm::ES256, &good);
    let es_parts: Vec<&str> = es.split('.').collect();
    let zero_sig = format!(
        "{}.{}.{}",
        es_parts[0],
        es_parts[1],
        URL_SAFE_NO_PAD.encode([0u8; 64])
    );
    // A different signature on the same claims (payload swapped under a valid signature).
    let other = sign(
        "rsa-a",
        Algorithm::RS256,
        &claims(json!({ "email": "root@acme.io" })),
    );
    let swapped = format!(
        "{}.{}.{}",
        parts[0],
        other.split('.').nth(1).unwrap(),
        parts[2]
    );

    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "kid": "rsa-a"})),
                parts[1]
            ),
            401,
            "algorithm",
        ),
        (
            "alg none with a signature",
            with_header(json!({"alg": "none", "kid": "rsa-a"})),
            401,
            "algorithm",
        ),
        ("HMAC with the public key", hmac, 401, "algorithm"),
        (
            "embedded jwk",
            with_header(json!({"alg": "RS256", "kid": "rsa-a", "jwk": jwk("rsa-a")})),
            401,
            "malformed",
        ),
        (
            "jku",
            with_header(json!({"alg": "RS256", "kid": "rsa-a", "jku": "https://evil.test/jwks"})),
            401,
            "malformed",
        ),
        (
            "x5u",
            with_header(json!({"alg": "RS256", "kid": "rsa-a", "x5u": "https://evil.test/c"})),
            401,
            "malformed",
        ),
        (
            "x5c",
            with_header(json!({"alg": "RS256", "kid": "rsa-a", "x5c": ["MIIB"]})),
            401,
            "malformed",
        ),
        (
            "crit",
            with_header(json!({"alg": "RS256", "kid": "rsa-a", "crit": ["exp"]})),
            401,
            "malformed",
        ),
        (
            "RS256 header on the EC key",
            with_header(json!({"alg": "RS256", "kid": "ec-a"})),
            401,
            "algorithm",
        ),
        ("all-zero ES256 signature", zero_sig, 401, "bad_signature"),
        ("payload swapped", swapped, 401, "bad_signature"),
        (
            "expired",
            sign(
                "rsa-a",
                Algorithm::RS256,
                &claims(json!({"email": "ann@acme.io", "exp": now() - 60})),
            ),
            401,
            "expired",
        ),
        (
            "future nbf",
            sign(
                "rsa-a",
                Algorithm::RS256,
                &claims(json!({"email": "ann@acme.io", "nbf": now() + 600})),
            ),
            401,
            "not_yet_valid",
        ),
        (
            "future iat",
            sign(
                "rsa-a",
                Algorithm::RS256,
                &claims(json!({"email": "ann@acme.io", "iat": now() + 600})),
            ),
            401,
            "not_yet_valid",
        ),
        (
            "wrong aud",
            sign(
                "rsa-a",
                Algorithm::RS256,
                &claims(json!({"email": "ann@acme.io", "aud": "web"})),
            ),
            401,
            "audience",
        ),
        (
            "wrong aud list",
            sign(
                "rsa-a",
                Algorithm::RS256,
                &claims(json!({"email": "ann@acme.io", "aud": ["web", "x"]})),
            ),
            401,
            "audience",
        ),
        (
            "wrong iss",
            sign(
                "rsa-a",
                Algorithm::RS256,
                &claims(json!({"email": "ann@acme.io", "iss": "https://idp.test/other"})),
            ),
            401,
            "unknown_issuer",
        ),
        (
            "iss differing in case",
            sign(
                "rsa-a",
                Algorithm::RS256,
                &claims(json!({"email": "ann@acme.io", "iss": "https://IDP.test/corp"})),
            ),
            401,
            "unknown_issuer",
        ),
        (
            "string exp",
            sign(
                "rsa-a",
                Algorithm::RS256,
                &claims(json!({"email": "ann@acme.io", "exp": (now() + 600).to_string()})),
            ),
            401,
            "malformed",
        ),
        (
            "oversize header",
            with_header(json!({"alg": "RS256", "kid": "rsa-a", "pad": "x".repeat(4000)})),
            401,
            "malformed",
        ),
        (
            "two segments",
            format!("{}.{}", parts[0], parts[1]),
            401,
            "malformed",
        ),
        ("four segments", format!("{valid}.x"), 401, "malformed"),
        ("five segments", format!("{valid}.x.y"), 401, "malformed"),
        ("not a token", "garbage".into(), 401, "malformed"),
    ];
    for (name, token, status, reason) in cases {
        let (got_status, body) = w.resolve(&token).await;
        assert_eq!(
            (got_status, body["reason"].as_str()),
            (status, Some(reason)),
            "{name}: {body}"
        );
        assert!(
            !body.to_string().contains(&token[..token.len().min(40)]),
            "{name}: the token is echoed"
        );
    }
    // A missing aud is refused when the IdP lists audiences.
    let mut no_aud = good.clone();
    no_aud.as_object_mut().unwrap().remove("aud");
    let (status, body) = w.resolve(&sign("rsa-a", Algorithm::RS256, &no_aud)).await;
    assert_eq!((status, body["reason"].as_str()), (401, Some("audience")));

    // Two Authorization headers.
    let response = w
        .server
        .client
        .post(format!("{}/v1/acme/resolve", w.server.base))
        .header("authorization", format!("Bearer {valid}"))
        .header("authorization", format!("Bearer {valid}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["reason"], "malformed");

    // The valid token still passes after all that.
    assert_eq!(w.resolve(&valid).await.0, 200);
}

#[tokio::test]
async fn the_same_issuer_in_two_tenants_is_told_apart_by_audience() {
    let w = world(|_| {}).await;
    w.server
        .create_tenant_with_admin("globex", "root@globex.io")
        .await;
    let (status, body) = w
        .post(
            "/api/v1/tenants/globex/identity-providers",
            json!({
                "name": "corp", "issuer": ISSUER, "jwks_uri": w.jwks.url,
                "audiences": ["globex-api"], "algorithms": ["RS256"], "user_claim": "email"
            }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = w
        .post(
            "/api/v1/tenants/globex/users",
            json!({ "email": "ann@acme.io" }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let globex_ann = body["id"].as_str().unwrap().to_owned();
    w.post(
        &format!("/api/v1/tenants/globex/users/{globex_ann}/reactivate"),
        json!({}),
    )
    .await;

    let for_acme = sign(
        "rsa-a",
        Algorithm::RS256,
        &claims(json!({ "email": "ann@acme.io" })),
    );
    let for_globex = sign(
        "rsa-a",
        Algorithm::RS256,
        &claims(json!({ "email": "ann@acme.io", "aud": "globex-api" })),
    );
    assert_eq!(
        w.resolve_at("acme", &for_acme).await.1["id"],
        w.ann.as_str()
    );
    assert_eq!(
        w.resolve_at("globex", &for_globex).await.1["id"],
        globex_ann.as_str()
    );
    let (status, body) = w.resolve_at("globex", &for_acme).await;
    assert_eq!((status, body["reason"].as_str()), (401, Some("audience")));
    let (status, body) = w.resolve_at("acme", &for_globex).await;
    assert_eq!((status, body["reason"].as_str()), (401, Some("audience")));
}

#[tokio::test]
async fn key_rotation_removal_and_unknown_kid_flood() {
    let w = world(|_| {}).await;
    let ann = claims(json!({ "email": "ann@acme.io" }));
    let old = sign("rsa-a", Algorithm::RS256, &ann);
    assert_eq!(w.resolve(&old).await.0, 200);
    let baseline = w.jwks.fetches();
    assert_eq!(baseline, 1, "one fetch for the first token");

    // A flood of random kids costs at most one fetch per cool-down.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let mut flood = Vec::new();
    for i in 0..50 {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(format!("random-{i}"));
        let pem = std::fs::read(keys_dir().join("rsa-a.pem")).unwrap();
        let token =
            jsonwebtoken::encode(&header, &ann, &EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap();
        let server = &w;
        flood.push(async move { server.deny_reason(&token).await });
    }
    for (status, reason) in futures::future::join_all(flood).await {
        assert_eq!((status, reason.as_str()), (401, "unknown_kid"));
    }
    assert_eq!(w.jwks.fetches() - baseline, 1, "the flood cost one fetch");

    // Rotation: the provider adds rsa-b; its first token triggers the refetch.
    w.jwks.keys.lock().unwrap().push(jwk("rsa-b"));
    tokio::time::sleep(Duration::from_millis(350)).await;
    let new = sign("rsa-b", Algorithm::RS256, &ann);
    assert_eq!(w.resolve(&new).await.0, 200);

    // Removal: rsa-a leaves the set. Once the set is refetched, rsa-a tokens stop
    // verifying, cached results included.
    assert_eq!(w.resolve(&old).await.0, 200, "cached before the removal");
    w.jwks.keys.lock().unwrap().retain(|k| k["kid"] != "rsa-a");
    tokio::time::sleep(Duration::from_millis(350)).await;
    let probe = {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("probe".into());
        let pem = std::fs::read(keys_dir().join("rsa-a.pem")).unwrap();
        jsonwebtoken::encode(&header, &ann, &EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap()
    };
    assert_eq!(w.deny_reason(&probe).await.1, "unknown_kid");
    assert_eq!(w.deny_reason(&old).await, (401, "unknown_kid".into()));
    assert_eq!(w.resolve(&new).await.0, 200);
}

#[tokio::test]
async fn an_outage_serves_stale_keys_for_a_bounded_time_then_fails_closed() {
    // Keys live 1 s; stale keys serve 2 s more while the provider is down.
    let w = world_with(
        |config| {
            config.edge.jwks_min_ttl_secs = 1;
            config.edge.jwks_max_stale_secs = 2;
            config.edge.cache_ttl_secs = 0;
        },
        1,
    )
    .await;
    let token = sign(
        "rsa-a",
        Algorithm::RS256,
        &claims(json!({ "email": "ann@acme.io" })),
    );
    assert_eq!(w.resolve(&token).await.0, 200);
    w.jwks.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Expired but within the stale bound: still served (a refresh was tried and failed).
    let (status, body) = w.resolve(&token).await;
    assert_eq!(status, 200, "stale keys serve: {body}");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(
        w.deny_reason(&token).await,
        (401, "keys_unavailable".into())
    );
    // The provider is back: keys are fetched again (after the cool-down).
    w.jwks.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(w.resolve(&token).await.0, 200);
    assert!(w.jwks.fetches() >= 3);
}

#[tokio::test]
async fn a_new_policy_applies_to_the_next_request_and_a_failing_one_fails_closed() {
    let w = world(|_| {}).await;
    let token = sign(
        "rsa-a",
        Algorithm::RS256,
        &claims(json!({ "email": "ann@acme.io" })),
    );
    assert_eq!(w.resolve(&token).await.0, 200);
    assert_eq!(w.resolve(&token).await.0, 200, "now cached");
    // A policy that traps on every decision: the cached allow is not used again.
    w.activate_trapping_policy().await;
    assert_eq!(w.deny_reason(&token).await, (403, "policy_error".into()));
    // Back to the built-in policy: allowed again.
    let (status, body) = w
        .server
        .call(
            Method::POST,
            "/api/v1/tenants/acme/policy/rollback",
            OP,
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(w.resolve(&token).await.0, 200);
}

#[tokio::test]
async fn a_scim_deactivation_denies_the_next_request_even_when_cached() {
    let w = world(|_| {}).await;
    let server = &w.server;
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/tenants/acme/sso",
            OP,
            Some(&json!({
                "id": "okta", "issuer": "https://okta.example.com", "client_id": "gatehouse",
                "jwks_uri": "https://203.0.113.10/jwks"
            })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (_, body) = server
        .call(
            Method::POST,
            "/api/v1/tenants/acme/sso/okta/scim-token",
            OP,
            Some(&json!({})),
        )
        .await;
    let scim_token = body["token"].as_str().unwrap().to_owned();
    let (status, body) = server
        .call(
            Method::PUT,
            "/api/v1/tenants/acme/provisioning",
            OP,
            Some(&json!({ "mode": "scim" })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // Okta provisions a user; it starts active.
    let (status, user) = server
        .call(
            Method::POST,
            "/scim/v2/acme/okta/Users",
            Some(&scim_token),
            Some(&json!({
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "userName": "sam@acme.io", "externalId": "00u-sam", "active": true,
                "name": { "givenName": "Sam", "familyName": "Lee" },
                "emails": [{ "value": "sam@acme.io", "primary": true, "type": "work" }]
            })),
        )
        .await;
    assert_eq!(status, 201, "{user}");
    let id = user["id"].as_str().unwrap().to_owned();
    let token = sign(
        "rsa-a",
        Algorithm::RS256,
        &claims(json!({ "email": "sam@acme.io" })),
    );
    for _ in 0..2 {
        let (status, body) = w.resolve(&token).await;
        assert_eq!(
            (status, body["id"].as_str()),
            (200, Some(id.as_str())),
            "{body}"
        );
    }
    // Unassigned in Okta: PATCH active=false.
    let (status, body) = server
        .call(
            Method::PATCH,
            &format!("/scim/v2/acme/okta/Users/{id}"),
            Some(&scim_token),
            Some(&json!({
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [{ "op": "replace", "value": { "active": false } }]
            })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(w.deny_reason(&token).await, (403, "deactivated".into()));
}

/// A provider whose key set was never fetched, and is down, costs one fetch per
/// cool-down however many tokens name it: the others are refused at once with
/// `keys_unavailable`, not each with a fetch (or a fetch's timeout) of their own.
#[tokio::test]
async fn a_provider_down_from_the_start_is_fetched_once_per_cool_down() {
    let w = world(|config| config.edge.jwks_refetch_cooldown_ms = 60_000).await;
    const DOWN: &str = "https://idp.test/down";
    let down = Jwks::serve(vec![jwk("rsa-a")], 300).await;
    down.down.store(true, Ordering::SeqCst);
    let (status, body) = w
        .server
        .call(
            Method::POST,
            "/api/v1/tenants/acme/identity-providers",
            OP,
            Some(&json!({
                "name": "down", "issuer": DOWN, "jwks_uri": down.url, "audiences": ["api"],
                "algorithms": ["RS256"], "user_claim": "email"
            })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let mut claims = claims(json!({ "email": "ann@acme.io" }));
    claims["iss"] = json!(DOWN);
    let token = sign("rsa-a", Algorithm::RS256, &claims);
    for _ in 0..10 {
        assert_eq!(
            w.deny_reason(&token).await,
            (401, "keys_unavailable".into())
        );
    }
    assert_eq!(down.fetches(), 1, "one fetch for ten tokens");
    // The corp provider's keys are another location: untouched by this one's cool-down.
    let ann = sign(
        "rsa-a",
        Algorithm::RS256,
        &self::claims(json!({ "email": "ann@acme.io" })),
    );
    assert_eq!(w.resolve(&ann).await.0, 200);
}

/// A version whose claim mapping fails counts toward automatic rollback like any other
/// decision (docs/policy-authoring.md §7): enough failing JWTs put the last good version
/// back, and tokens pass again.
#[tokio::test]
async fn a_version_failing_in_claim_mapping_is_rolled_back_automatically() {
    let w = world(|config| {
        config.policy.auto_rollback_failures = 3;
        config.policy.auto_rollback_window_secs = 60;
    })
    .await;
    w.activate_trapping_policy().await;
    let active = || async {
        let (_, state) = w
            .server
            .call(Method::GET, "/api/v1/tenants/acme/policy", OP, None)
            .await;
        state["active"].clone()
    };
    let failing = active().await;
    // Each token is new (its own `jti`), so no answer comes from the cache.
    let token = |n: u32| {
        sign(
            "rsa-a",
            Algorithm::RS256,
            &claims(json!({ "email": "ann@acme.io", "jti": format!("t{n}") })),
        )
    };
    for n in 0..3 {
        assert_eq!(w.deny_reason(&token(n)).await, (403, "policy_error".into()));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut n = 3;
    loop {
        let (status, body) = w.resolve(&token(n)).await;
        if status == 200 {
            break;
        }
        assert_eq!(body["reason"], "policy_error", "{body}");
        assert!(
            std::time::Instant::now() < deadline,
            "still failing: the version was not rolled back"
        );
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_ne!(active().await, failing, "another version is active");
}
