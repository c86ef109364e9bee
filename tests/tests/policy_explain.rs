//! Issue 7, decision explain and contract versioning: `POST /policy/explain` and
//! `gatehouse policy explain` show, for a set of token claims, what the active policy
//! decides and why (claim map, extracted values, candidates, resolution, trace, role);
//! explaining records nothing; a component built against contract 0.1.0 (a fixture) still
//! loads and serves, without a role trace; a component of another major is refused.

use gatehouse_tests::jwt::{jwk, Jwks};
use gatehouse_tests::{gatehouse_bin, TestServer, OPERATOR_TOKEN};
use reqwest::Method;
use serde_json::{json, Value};
use std::process::{Command, Output};

const OP: Option<&str> = Some(OPERATOR_TOKEN);
const ISSUER: &str = "https://idp.test/corp";

/// A tenant `acme` with the corp IdP (user `email`, VA name `client_id`, teams `groups`),
/// an active user ann in team `admins` (role admin), a deactivated user dan, a VA
/// `deployer` mapped to `ci-bot`, and team `ops` mapped to the group value `ops-group`.
struct World {
    server: TestServer,
    _jwks: Jwks,
    ann: String,
    va: String,
    ops: String,
}

async fn world() -> World {
    let jwks = Jwks::serve(vec![jwk("rsa-a")], 300).await;
    let server = TestServer::start_with(|config| config.allow_private_urls = true).await;
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
            "algorithms": ["RS256"], "user_claim": "email", "va_name_claim": "client_id",
            "team_claim": "groups"
        }),
    )
    .await;
    let mut ids = Vec::new();
    for email in ["ann@acme.io", "dan@acme.io"] {
        let user = post(
            "/api/v1/tenants/acme/users".into(),
            json!({ "email": email }),
        )
        .await;
        let id = user["id"].as_str().unwrap().to_owned();
        post(
            format!("/api/v1/tenants/acme/users/{id}/reactivate"),
            json!({}),
        )
        .await;
        ids.push(id);
    }
    post(
        format!("/api/v1/tenants/acme/users/{}/deactivate", ids[1]),
        json!({}),
    )
    .await;
    post(
        "/api/v1/tenants/acme/teams".into(),
        json!({ "name": "admins", "role": "admin", "members": [ids[0]] }),
    )
    .await;
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
        _jwks: jwks,
        ann: ids[0].clone(),
        va,
        ops,
    }
}

impl World {
    async fn explain(&self, body: Value) -> (u16, Value) {
        self.server
            .call(
                Method::POST,
                "/api/v1/tenants/acme/policy/explain",
                OP,
                Some(&body),
            )
            .await
    }

    /// How many decisions the tenant's ring holds (a dry run of the default policy
    /// evaluates each of them).
    async fn recorded(&self) -> u64 {
        use base64::Engine;
        let (status, body) = self
            .server
            .call(
                Method::POST,
                "/api/v1/tenants/acme/policy/dry-run",
                OP,
                Some(&json!({
                    "component_base64": base64::engine::general_purpose::STANDARD
                        .encode(gatehouse::policy::DEFAULT_POLICY),
                    "settings": {},
                })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["evaluated"].as_u64().unwrap()
    }
}

fn user_claims() -> Value {
    json!({ "iss": ISSUER, "aud": "api", "email": "ann@acme.io", "groups": ["ops-group", "other"] })
}

fn va_claims() -> Value {
    json!({ "iss": ISSUER, "aud": "api", "client_id": "ci-bot" })
}

fn refused_claims() -> Value {
    json!({ "iss": ISSUER, "aud": "api", "email": "dan@acme.io" })
}

fn trace_of(body: &Value) -> Vec<String> {
    body["trace"]
        .as_array()
        .unwrap_or_else(|| panic!("no trace: {body}"))
        .iter()
        .map(|l| l.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_shows_claims_candidates_resolution_and_trace() {
    let w = world().await;

    // A user token: the user by email, the ops team from the group claim, role admin from
    // the admins team.
    let (status, body) = w.explain(json!({ "claims": user_claims() })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["idp"], "corp", "{body}");
    assert_eq!(body["idp_chosen_by"], "issuer", "{body}");
    assert_eq!(body["policy"]["name"], "default", "{body}");
    assert_eq!(body["claim_map"]["user_claim"], "email", "{body}");
    assert_eq!(body["claim_map"]["team_claim"], "groups", "{body}");
    assert_eq!(body["extracted"]["user_claim"], "ann@acme.io", "{body}");
    assert_eq!(
        body["extracted"]["team_values"],
        json!(["ops-group", "other"]),
        "{body}"
    );
    assert_eq!(
        body["candidates"]["users"][0]["id"],
        w.ann.as_str(),
        "{body}"
    );
    assert_eq!(
        body["candidates"]["users"][0]["matched_by"], "email",
        "{body}"
    );
    assert_eq!(
        body["candidates"]["teams"][0]["id"],
        w.ops.as_str(),
        "{body}"
    );
    assert_eq!(body["candidates"]["virtual_accounts"], json!([]), "{body}");
    assert_eq!(body["resolution"]["user"]["id"], w.ann.as_str(), "{body}");
    assert_eq!(body["identity"]["kind"], "user", "{body}");
    assert_eq!(body["identity"]["email"], "ann@acme.io", "{body}");
    assert!(
        body["identity"]["teams"]
            .as_array()
            .unwrap()
            .contains(&json!("ops")),
        "{body}"
    );
    let trace = trace_of(&body);
    assert!(
        trace
            .iter()
            .any(|l| l.contains(&w.ann) && l.contains("matches the user claim by email")),
        "{trace:?}"
    );
    assert!(
        trace
            .iter()
            .any(|l| l.contains("team context") && l.contains("ops")),
        "{trace:?}"
    );
    assert_eq!(body["role"]["decision"]["role"], "admin", "{body}");
    assert_eq!(body["role"]["decision"]["source"], "group", "{body}");
    assert_eq!(
        body["role"]["input"]["team_roles"],
        json!(["admin"]),
        "{body}"
    );

    // A VA token: the VA takes precedence.
    let (status, body) = w
        .explain(json!({ "claims": va_claims(), "idp": "corp" }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["idp_chosen_by"], "name", "{body}");
    assert_eq!(body["extracted"]["va_name"], "ci-bot", "{body}");
    assert_eq!(
        body["candidates"]["virtual_accounts"][0]["id"],
        w.va.as_str(),
        "{body}"
    );
    assert_eq!(
        body["resolution"]["virtual_account"],
        w.va.as_str(),
        "{body}"
    );
    assert_eq!(body["identity"]["kind"], "virtual_account", "{body}");
    assert_eq!(body["identity"]["name"], "deployer", "{body}");
    let trace = trace_of(&body);
    assert!(
        trace
            .iter()
            .any(|l| l.contains("virtual account deployer") && l.contains("precedence")),
        "{trace:?}"
    );
    assert!(body["role"].is_null(), "{body}");

    // A refusal: the deactivated user.
    let (status, body) = w.explain(json!({ "claims": refused_claims() })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["resolution"]["refuse"]["code"], "deactivated",
        "{body}"
    );
    assert_eq!(body["refusal"]["reason"], "deactivated", "{body}");
    assert_eq!(body["refusal"]["by"], "policy", "{body}");
    assert!(body["identity"].is_null(), "{body}");
    let trace = trace_of(&body);
    assert!(
        trace.iter().any(|l| l.ends_with("is deactivated")),
        "{trace:?}"
    );

    // Bad input is a 400 that says what to do; nothing is a 500.
    for (request, says) in [
        (
            json!({ "claims": { "email": "ann@acme.io" } }),
            "pass the identity provider",
        ),
        (
            json!({ "claims": user_claims(), "idp": "nope" }),
            "\"nope\" is not configured",
        ),
        (
            json!({ "claims": { "iss": "https://other.test", "email": "a@b.c" } }),
            "no identity provider",
        ),
        (json!({ "claims": [] }), ""),
        (json!({ "claims": {}, "extra": 1 }), "unknown field"),
    ] {
        let (status, body) = w.explain(request.clone()).await;
        assert_eq!(status, 400, "{request}: {body}");
        assert!(
            body["detail"].as_str().unwrap_or_default().contains(says),
            "{request}: {body}"
        );
    }

    // Explaining is not deciding: nothing went into the decision ring.
    assert_eq!(w.recorded().await, 0);
}

fn gatehouse(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(gatehouse_bin());
    command.args(args);
    for (key, _) in std::env::vars() {
        if key.starts_with("GATEHOUSE_") {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied());
    command.output().expect("gatehouse runs")
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_explains_user_va_and_refusal_as_text_and_json() {
    let w = world().await;
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("GATEHOUSE_URL", w.server.base.as_str()),
        ("GATEHOUSE_TOKEN", OPERATOR_TOKEN),
    ];
    let explain = |name: &str, claims: Value, extra: &[&str]| {
        let file = dir.path().join(format!("{name}.json"));
        std::fs::write(&file, claims.to_string()).unwrap();
        let mut args = vec![
            "policy",
            "explain",
            "--tenant",
            "acme",
            "--token-claims",
            file.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let output = tokio::task::block_in_place(|| gatehouse(&args, &env));
        assert!(output.status.success(), "{}", text(&output));
        String::from_utf8(output.stdout).unwrap()
    };

    let report = explain("user", user_claims(), &[]);
    for line in [
        "policy:      default",
        "idp:         corp (chosen by issuer)",
        "claim map:   user <- email, va name <- client_id, teams <- groups",
        "extracted:   user ann@acme.io",
        &format!("  user {} (ann@acme.io, active, matched by email", w.ann),
        &format!("  team {} (ops, matched ops-group)", w.ops),
        "result:      ALLOW user",
        "role:        admin (group)",
    ] {
        assert!(report.contains(line), "{line:?} missing from:\n{report}");
    }
    assert!(
        report.contains(&format!(
            "  - user {} matches the user claim by email",
            w.ann
        )),
        "{report}"
    );

    let report = explain("va", va_claims(), &["--idp", "corp"]);
    assert!(
        report.contains("idp:         corp (chosen by name)"),
        "{report}"
    );
    assert!(
        report.contains(&format!("  virtual account {} (deployer, enabled)", w.va)),
        "{report}"
    );
    assert!(
        report.contains("result:      ALLOW virtual_account"),
        "{report}"
    );
    assert!(
        report.contains("  - virtual account deployer matches"),
        "{report}"
    );

    let report = explain("refused", refused_claims(), &[]);
    assert!(
        report.contains("result:      REFUSE deactivated (by the policy)"),
        "{report}"
    );
    assert!(report.contains("is deactivated"), "{report}");

    let json_report = explain("refused-json", refused_claims(), &["--json"]);
    let body: Value = serde_json::from_str(&json_report).unwrap();
    assert_eq!(body["refusal"]["reason"], "deactivated", "{body}");
    assert!(!trace_of(&body).is_empty(), "{body}");

    // A claims file that is not an object is refused before anything is sent.
    let file = dir.path().join("bad.json");
    std::fs::write(&file, "[1]").unwrap();
    let output = tokio::task::block_in_place(|| {
        gatehouse(
            &[
                "policy",
                "explain",
                "--tenant",
                "acme",
                "--token-claims",
                file.to_str().unwrap(),
            ],
            &env,
        )
    });
    assert!(!output.status.success());
    assert!(
        text(&output).contains("must be a JSON object"),
        "{}",
        text(&output)
    );
}

// ------------------------------------------------------------------ contract versions

/// The default policy built against contract 0.1.0 (before `explain` existed), kept byte
/// for byte (tests/fixtures/contract-0.1.0/README.md).
fn contract_0_1_0() -> Vec<u8> {
    std::fs::read(
        gatehouse_tests::fixtures::root().join("tests/fixtures/contract-0.1.0/default.wasm"),
    )
    .unwrap()
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The engine loads the 0.1.0 component (wasmtime finds its `decide@0.1.0` for the host's
/// `decide@0.1.2`), it says it is 0.1.0, it decides, and it has no role trace and no
/// `naming`; the current default policy (0.1.2) has both.
#[test]
fn a_component_of_the_previous_minor_loads_and_decides_without_explain() {
    use gatehouse::policy::{Limits, PolicyEngine, CONTRACT, DEFAULT_POLICY};
    use gatehouse_rules::{Role, RoleInput, RoleSource};
    let engine = PolicyEngine::new(Limits::default()).unwrap();
    let input = RoleInput {
        manual: None,
        team_roles: vec![Role::Member, Role::Admin],
    };

    let old = engine.compile(&contract_0_1_0()).unwrap();
    assert_eq!(old.info.contract, "0.1.0");
    assert_eq!(old.info.name, "default");
    let decided = engine
        .effective_role(&old, std::slice::from_ref(&input), "{}")
        .unwrap();
    assert_eq!(
        (decided[0].role, decided[0].source),
        (Role::Admin, RoleSource::Group)
    );
    assert_eq!(engine.explain_role(&old, &input, "{}").unwrap(), None);
    assert!(!old.has_naming());
    assert_eq!(
        engine.team_name(&old, "Engineering (EU)", "{}").unwrap(),
        None
    );

    let current = engine.compile(DEFAULT_POLICY).unwrap();
    assert_eq!(current.info.contract, CONTRACT);
    assert_eq!(CONTRACT, "0.1.2");
    assert!(current.has_naming());
    assert_eq!(
        engine
            .team_name(&current, "Engineering (EU)", "{}")
            .unwrap()
            .as_deref(),
        Some("Engineering-EU")
    );
    let trace = engine
        .explain_role(&current, &input, "{}")
        .unwrap()
        .expect("a 0.1.2 component explains roles");
    assert!(
        trace
            .iter()
            .any(|l| l.starts_with("role admin from a team") && l.contains("admin, member")),
        "{trace:?}"
    );
}

/// Pushed to a running tenant, the 0.1.0 component serves the edge (a PAT and a JWT
/// resolve, the JWT through its `claim-mapping` and `resolve`), and explain works and says
/// why there is no role trace; a SCIM group gets its team name by the host's default rule
/// (the component has no `naming`). Back on the built-in 0.1.2 default, the role trace is
/// there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_previous_contract_serves_the_edge_and_explain_says_what_it_lacks() {
    let w = world().await;
    let (status, body) = w
        .server
        .upload("acme", &contract_0_1_0(), json!({}), true)
        .await;
    assert_eq!(status, 201, "{body}");
    let (_, overview) = w
        .server
        .call(Method::GET, "/api/v1/tenants/acme/policy", OP, None)
        .await;
    assert_eq!(overview["active_policy"]["contract"], "0.1.0", "{overview}");

    let (status, created) = w
        .server
        .call(
            Method::POST,
            &format!("/api/v1/tenants/acme/users/{}/tokens", w.ann),
            OP,
            Some(&json!({ "name": "laptop" })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let pat = created["secret"].as_str().unwrap().to_owned();
    let mut claims = user_claims();
    claims["iat"] = now().into();
    claims["exp"] = (now() + 600).into();
    let jwt = gatehouse_tests::jwt::sign("rsa-a", jsonwebtoken::Algorithm::RS256, &claims);
    for (token, kind) in [(&pat, "pat"), (&jwt, "jwt")] {
        let (status, body) = w
            .server
            .call(Method::POST, "/v1/acme/resolve", Some(token), None)
            .await;
        assert_eq!(status, 200, "{kind}: {body}");
        assert_eq!(body["id"], w.ann.as_str(), "{kind}: {body}");
        assert_eq!(body["token"], kind, "{body}");
        assert_eq!(body["tenant_role"], "admin", "{body}");
    }

    let (status, body) = w.explain(json!({ "claims": user_claims() })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["policy"]["contract"], "0.1.0", "{body}");
    assert_eq!(body["identity"]["id"], w.ann.as_str(), "{body}");
    assert!(!trace_of(&body).is_empty(), "{body}");
    assert_eq!(body["role"]["decision"]["role"], "admin", "{body}");
    assert!(body["role"]["trace"].is_null(), "{body}");
    assert_eq!(
        body["role"]["note"],
        "this policy was built against contract 0.1.0 and does not explain role decisions",
        "{body}"
    );

    // SCIM groups are named by the default rule when the policy has no `naming`.
    let (status, body) = w
        .server
        .call(
            Method::POST,
            "/api/v1/tenants/acme/sso",
            OP,
            Some(&json!({
                "id": "dir", "issuer": "https://dir.example.com", "client_id": "gatehouse",
                "jwks_uri": "https://203.0.113.10/jwks"
            })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = w
        .server
        .call(
            Method::POST,
            "/api/v1/tenants/acme/sso/dir/scim-token",
            OP,
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let scim_token = body["token"].as_str().unwrap().to_owned();
    let (status, body) = w
        .server
        .call(
            Method::PUT,
            "/api/v1/tenants/acme/provisioning",
            OP,
            Some(&json!({ "mode": "scim" })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, group) = w
        .server
        .call(
            Method::POST,
            "/scim/v2/acme/dir/Groups",
            Some(&scim_token),
            Some(&json!({ "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Engineering (EU)" })),
        )
        .await;
    assert_eq!(status, 201, "{group}");
    assert_eq!(group["displayName"], "Engineering (EU)", "{group}");
    let (_, team) = w
        .server
        .call(
            Method::GET,
            &format!(
                "/api/v1/tenants/acme/teams/{}",
                group["id"].as_str().unwrap()
            ),
            OP,
            None,
        )
        .await;
    assert_eq!(team["name"], "Engineering-EU", "{team}");

    let (status, body) = w
        .server
        .send_json(
            Method::POST,
            "/api/v1/tenants/acme/policy/rollback",
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = w.explain(json!({ "claims": user_claims() })).await;
    assert_eq!(body["policy"]["contract"], "0.1.2", "{body}");
    assert!(body["role"]["note"].is_null(), "{body}");
    let role_trace: Vec<&str> = body["role"]["trace"]
        .as_array()
        .unwrap_or_else(|| panic!("no role trace: {body}"))
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(
        role_trace,
        [
            "no manual role",
            "role admin from a team: the highest role of the user's teams (admin)"
        ],
        "{body}"
    );
}

/// A component of another contract line (0.2.0: incompatible while the major is 0; 1.0.0)
/// is refused at push with a 422 that names both contract versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_of_an_incompatible_contract_is_refused_at_push() {
    let server = TestServer::start().await;
    server.create_tenant("acme").await;
    let wrong = std::fs::read_to_string(
        gatehouse_tests::fixtures::root().join("tests/fixtures/wrong-version.wat"),
    )
    .unwrap();
    for version in ["0.2.0", "1.0.0"] {
        let text = wrong.replace("decide@1.0.0", &format!("decide@{version}"));
        let component = wat::parse_str(&text).unwrap();
        let (status, body) = server.upload("acme", &component, json!({}), true).await;
        assert_eq!(status, 422, "{version}: {body}");
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains(&format!("gatehouse:policy@{version}"))
                && detail.contains("this host implements gatehouse:policy@0.1.2")
                && detail.contains("compatible: 0.1.x"),
            "{version}: {body}"
        );
    }
}
