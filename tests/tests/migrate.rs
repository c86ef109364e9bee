//! Migration from the legacy model (SPEC §9, docs/migration.md): the plan changes nothing,
//! apply carries it out atomically and once, tokens the legacy External Identities accepted
//! resolve through the edge afterwards (key set served over HTTP on loopback), a malformed
//! export is refused with its JSON path, and the CLI prints the report against a server.

use gatehouse_tests::jwt::{jwk, sign, Jwks};
use gatehouse_tests::{gatehouse_bin, TestServer, OPERATOR_TOKEN};
use jsonwebtoken::Algorithm;
use reqwest::Method;
use serde_json::{json, Value};

const OP: Option<&str> = Some(OPERATOR_TOKEN);

/// A fixture export with `JWKS_URI` pointing at `jwks`.
fn export(name: &str, jwks: &Jwks) -> Value {
    let path = gatehouse_tests::fixtures::root()
        .join("tests/fixtures/migration")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("JWKS_URI", &jwks.url);
    serde_json::from_str(&text).unwrap()
}

async fn setup() -> (TestServer, Jwks) {
    let jwks = Jwks::serve(vec![jwk("rsa-a")], 300).await;
    let server = TestServer::start_with(|config| config.allow_private_urls = true).await;
    server
        .create_tenant_with_admin("acme", "root@acme.io")
        .await;
    (server, jwks)
}

/// Everything an apply could change, to compare before and after.
async fn state(server: &TestServer) -> Value {
    let mut all = json!({});
    for what in [
        "audit",
        "users",
        "teams",
        "virtual-accounts",
        "identity-providers",
        "resources",
        "sso",
    ] {
        let (status, body) = server
            .call(
                Method::GET,
                &format!("/api/v1/tenants/acme/{what}"),
                OP,
                None,
            )
            .await;
        assert_eq!(status, 200, "{what}: {body}");
        all[what] = body;
    }
    let (_, tenant) = server
        .call(Method::GET, "/api/v1/tenants/acme", OP, None)
        .await;
    all["tenant"] = tenant;
    all
}

async fn post(server: &TestServer, path: &str, body: &Value) -> (u16, Value) {
    server.call(Method::POST, path, OP, Some(body)).await
}

fn token(claims: Value) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut all =
        json!({ "iss": "https://idp.test/corp", "aud": "api", "iat": now, "exp": now + 600 });
    for (k, v) in claims.as_object().unwrap() {
        all[k] = v.clone();
    }
    sign("rsa-a", Algorithm::RS256, &all)
}

#[tokio::test]
async fn plan_changes_nothing_and_apply_carries_it_out_once() {
    let (server, jwks) = setup().await;
    let export = export("role-mapping.json", &jwks);
    let before = state(&server).await;

    let (status, plan) = post(&server, "/api/v1/tenants/acme/migration/plan", &export).await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(state(&server).await, before, "the plan changed something");

    // Mode: SSO without SCIM → jit, with the reason.
    assert_eq!(plan["provisioning_mode"]["to"], "jit");
    assert_eq!(plan["provisioning_mode"]["action"], "update");
    // Two issuers → two identity providers carried over unchanged.
    let idps = plan["identity_providers"].as_array().unwrap();
    assert_eq!(idps.len(), 2, "{plan}");
    assert_eq!(idps[0]["name"], "ci-deployer");
    assert_eq!(idps[0]["issuer"], "https://idp.test/corp");
    assert_eq!(idps[0]["jwks_uri"], jwks.url.as_str());
    assert_eq!(idps[0]["audiences"], json!(["api"]));
    assert_eq!(idps[0]["va_name_claim"], "client_id");
    assert_eq!(idps[0]["team_claim"], "groups");
    assert_eq!(idps[0]["user_claim"], "email");
    assert_eq!(
        idps[0]["external_identities"],
        json!(["ci-deployer", "analysts"])
    );
    assert_eq!(idps[1]["name"], "partner-etl");
    // Targets: machines → VA on the name claim; people with a team claim → team mapping.
    let targets = plan["targets"].as_array().unwrap();
    assert_eq!(targets[0]["target"]["kind"], "virtual_account");
    assert_eq!(
        targets[0]["target"]["mapping"],
        json!({ "idp": "ci-deployer", "value": "ci-bot" })
    );
    assert_eq!(targets[1]["target"]["kind"], "teams");
    assert_eq!(targets[1]["target"]["teams"], json!(["data-science"]));
    assert!(targets[1]["reason"]
        .as_str()
        .unwrap()
        .contains("team claim groups"));
    assert_eq!(targets[2]["target"]["name"], "partner-etl");
    // Roles: alice and bob lose admin (role mapping gone); carol's manual admin is kept.
    let changes: Vec<(&str, &str, &str)> = plan["role_changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["email"].as_str().unwrap(),
                c["new_role"].as_str().unwrap(),
                c["fix"]["kind"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            ("alice@acme.io", "member", "manual_role"),
            ("bob@acme.io", "member", "manual_role")
        ]
    );
    assert_eq!(plan["manual_roles_kept"], json!(["carol@acme.io"]));
    // Collaborators: each External Identity replaced by its target.
    let churn = &plan["resources"][0];
    assert_eq!(
        churn["replacements"],
        json!([
            { "external_identity": "ci-deployer", "role": "viewer", "by": [{ "virtual_account": "ci-deployer" }] },
            { "external_identity": "analysts", "role": "viewer", "by": [{ "team": "data-science" }] }
        ])
    );
    assert!(plan["human_steps"].as_array().unwrap().iter().any(|s| s
        .as_str()
        .unwrap()
        .contains("client secret of SSO configuration okta")));
    let digest = plan["digest"].as_str().unwrap().to_owned();
    assert_eq!(digest.len(), 64);

    // A reviewed plan that differs is refused, and nothing changes.
    let (status, body) = post(
        &server,
        &format!(
            "/api/v1/tenants/acme/migration/apply?plan={}",
            "0".repeat(64)
        ),
        &export,
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(body["detail"].as_str().unwrap().contains(&digest), "{body}");
    assert_eq!(state(&server).await, before);

    // Apply the reviewed plan.
    let (status, applied) = post(
        &server,
        &format!("/api/v1/tenants/acme/migration/apply?plan={digest}"),
        &export,
    )
    .await;
    assert_eq!(status, 200, "{applied}");
    assert_eq!(applied["applied"], true);
    assert!(!applied["human_steps"].as_array().unwrap().is_empty());

    let after = state(&server).await;
    assert_eq!(after["tenant"]["mode"], "jit");
    let users = after["users"]["items"].as_array().unwrap();
    let role = |email: &str| {
        let u = users.iter().find(|u| u["email"] == email).unwrap();
        (u["role"].as_str().unwrap().to_owned(), u["source"].clone())
    };
    assert_eq!(role("alice@acme.io"), ("member".into(), json!("migration")));
    assert_eq!(role("carol@acme.io"), ("admin".into(), json!("migration")));
    let audit = after["audit"]["items"].as_array().unwrap();
    assert!(audit.iter().any(|e| e["action"] == "migration.apply"));

    // Resources now name the VA and the team.
    let vas = after["virtual-accounts"]["virtual_accounts"]
        .as_array()
        .unwrap();
    let ci = vas.iter().find(|v| v["name"] == "ci-deployer").unwrap();
    let teams = after["teams"]["teams"].as_array().unwrap();
    let ds = teams.iter().find(|t| t["name"] == "data-science").unwrap();
    let resources = after["resources"]["resources"].as_array().unwrap();
    let churn = resources.iter().find(|r| r["name"] == "churn").unwrap();
    let subjects: Vec<&Value> = churn["collaborators"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["subject"])
        .collect();
    assert!(
        subjects.contains(&&json!({ "virtual_account": ci["id"] })),
        "{churn}"
    );
    assert!(subjects.contains(&&json!({ "team": ds["id"] })), "{churn}");
    assert!(!churn.to_string().contains("external_identity"), "{churn}");

    // Tokens the legacy External Identities accepted resolve through the edge.
    let (status, body) = server
        .call(
            Method::POST,
            "/v1/acme/resolve",
            Some(&token(json!({ "client_id": "ci-bot" }))),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["kind"], "virtual_account", "{body}");
    assert_eq!(body["id"], ci["id"]);
    let (status, body) = server
        .call(
            Method::POST,
            "/v1/acme/resolve",
            Some(&token(
                json!({ "email": "dave@acme.io", "groups": ["data-science"] }),
            )),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["kind"], "user", "{body}");
    assert_eq!(body["email"], "dave@acme.io", "{body}");
    assert!(
        body["teams"]
            .as_array()
            .unwrap()
            .contains(&json!("data-science")),
        "{body}"
    );

    // A second apply is a no-op: nothing changes, not even the audit log, and it says so.
    let (status, again) = post(&server, "/api/v1/tenants/acme/migration/apply", &export).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["applied"], false);
    assert_eq!(again["changes"], 0);
    assert_eq!(state(&server).await, after);
}

#[tokio::test]
async fn a_malformed_export_is_refused_with_its_path_and_nothing_changes() {
    let (server, jwks) = setup().await;
    let before = state(&server).await;
    let export = export("malformed.json", &jwks);
    for step in ["plan", "apply"] {
        let (status, body) = post(
            &server,
            &format!("/api/v1/tenants/acme/migration/{step}"),
            &export,
        )
        .await;
        assert_eq!(status, 400, "{body}");
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("$.users[1].status"),
            "{body}"
        );
    }
    // Validation past the types names its path too: a collaborator naming no one.
    let mut bad = export.clone();
    bad["users"][1]["status"] = json!("active");
    bad["resources"] = json!([{ "kind": "model", "name": "m", "collaborators": [
        { "subject": { "external_identity": "ghost" }, "role": "viewer" } ] }]);
    let (status, body) = post(&server, "/api/v1/tenants/acme/migration/apply", &bad).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("$.resources[0].collaborators[0].subject.external_identity"),
        "{body}"
    );
    let (status, body) = server
        .client
        .post(format!(
            "{}/api/v1/tenants/acme/migration/plan",
            server.base
        ))
        .bearer_auth(OPERATOR_TOKEN)
        .body("{not json")
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map(|s| (s, ()))
        .unwrap();
    assert_eq!((status, body), (400, ()));
    assert_eq!(state(&server).await, before);
}

#[tokio::test]
async fn a_tenant_with_scim_inline_plans_scim_and_a_scim_team_role() {
    let (server, jwks) = setup().await;
    let export = export("scim-inline.json", &jwks);
    let (status, plan) = post(&server, "/api/v1/tenants/acme/migration/plan", &export).await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(plan["provisioning_mode"]["to"], "scim");
    assert_eq!(
        plan["role_changes"],
        json!([{
            "email": "gina@globex.io", "legacy_role": "admin", "legacy_set_by": "role_mapping",
            "new_role": "member", "new_source": "initial",
            "fix": { "kind": "scim_team_role", "group": "gx-admins", "role": "admin" }
        }])
    );
    assert_eq!(plan["manual_roles_kept"], json!(["hank@globex.io"]));
    let (status, applied) = post(&server, "/api/v1/tenants/acme/migration/apply", &export).await;
    assert_eq!(status, 200, "{applied}");
    let (_, tenant) = server
        .call(Method::GET, "/api/v1/tenants/acme", OP, None)
        .await;
    assert_eq!(tenant["mode"], "scim");
    let (_, users) = server
        .call(
            Method::GET,
            "/api/v1/tenants/acme/users?status=deactivated",
            OP,
            None,
        )
        .await;
    assert_eq!(users["items"][0]["email"], "ida@globex.io", "{users}");
}

/// Runs the real binary's client against `server`.
async fn cli(server: &TestServer, args: Vec<String>) -> (bool, String, String) {
    let base = server.base.clone();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(gatehouse_bin())
            .args(&args)
            .env("GATEHOUSE_URL", base)
            .env("GATEHOUSE_TOKEN", OPERATOR_TOKEN)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn the_cli_prints_a_table_markdown_and_applies_a_reviewed_plan() {
    let (server, jwks) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("export.json");
    std::fs::write(&file, export("role-mapping.json", &jwks).to_string()).unwrap();
    let file = file.display().to_string();
    let args = |extra: &[&str]| -> Vec<String> { extra.iter().map(|s| s.to_string()).collect() };

    let (ok, table, err) = cli(
        &server,
        args(&["migrate", "plan", "--tenant", "acme", &file]),
    )
    .await;
    assert!(ok, "{err}");
    for needle in [
        "Migration plan for tenant acme",
        "Role changes",
        "USER           LEGACY ROLE  SET BY        NEW ROLE  SUGGESTED FIX",
        "alice@acme.io  admin        role_mapping  member    set a manual admin role",
        "ci-deployer        virtual account ci-deployer",
        "Left to a human",
    ] {
        assert!(table.contains(needle), "{needle:?} not in:\n{table}");
    }

    let (ok, md, err) = cli(
        &server,
        args(&[
            "migrate", "plan", "--tenant", "acme", &file, "--format", "markdown",
        ]),
    )
    .await;
    assert!(ok, "{err}");
    assert!(md.starts_with("# Migration plan: tenant `acme`"), "{md}");
    assert!(
        md.contains("| user | legacy role | set by | new role | suggested fix |"),
        "{md}"
    );
    assert!(
        md.contains("| bob@acme.io | admin | role_mapping | member | set a manual admin role |"),
        "{md}"
    );
    assert!(md.contains("- [ ] "), "{md}");

    let (ok, json_plan, err) = cli(
        &server,
        args(&["--json", "migrate", "plan", "--tenant", "acme", &file]),
    )
    .await;
    assert!(ok, "{err}");
    let plan_file = dir.path().join("plan.json");
    std::fs::write(&plan_file, &json_plan).unwrap();
    let plan_file = plan_file.display().to_string();

    let (ok, out, err) = cli(
        &server,
        args(&[
            "migrate", "apply", "--tenant", "acme", &file, "--plan", &plan_file,
        ]),
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.starts_with("Applied "), "{out}");
    // The reviewed plan no longer matches: refused.
    let (ok, _, err) = cli(
        &server,
        args(&[
            "migrate", "apply", "--tenant", "acme", &file, "--plan", &plan_file,
        ]),
    )
    .await;
    assert!(!ok);
    assert!(
        err.contains("the plan changed since it was reviewed"),
        "{err}"
    );
    let (ok, out, err) = cli(
        &server,
        args(&["migrate", "apply", "--tenant", "acme", &file]),
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.starts_with("Nothing to do"), "{out}");
}
