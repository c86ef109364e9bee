//! The real binary: `listening on` first, health endpoints, graceful SIGTERM, and
//! acknowledged writes (a policy upload; SCIM creates under load) that survive `kill -9`.

use gatehouse_tests::{fixtures, Process, OPERATOR_TOKEN};
use serde_json::{json, Value};

fn get(base: &str, path: &str) -> reqwest::blocking::Response {
    reqwest::blocking::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(OPERATOR_TOKEN)
        .send()
        .unwrap()
}

fn post(base: &str, path: &str, body: &Value) -> (u16, Value) {
    let response = reqwest::blocking::Client::new()
        .post(format!("{base}{path}"))
        .bearer_auth(OPERATOR_TOKEN)
        .json(body)
        .send()
        .unwrap();
    (
        response.status().as_u16(),
        response.json().unwrap_or(Value::Null),
    )
}

#[test]
fn serve_answers_health_and_stops_gracefully_on_sigterm() {
    let data = tempfile::tempdir().unwrap();
    let server = Process::start(&data.path().join("db")).unwrap();
    assert!(
        server.base.starts_with("http://127.0.0.1:"),
        "{}",
        server.base
    );
    assert_eq!(get(&server.base, "/healthz").status(), 200);
    let ready: Value = get(&server.base, "/readyz").json().unwrap();
    assert_eq!(ready["status"], "ready");
    let (status, _) = post(&server.base, "/api/v1/tenants", &json!({ "slug": "acme" }));
    assert_eq!(status, 201);
    let (status, body) = post(
        &server.base,
        "/api/v1/tenants/acme/policy/evaluate",
        &gatehouse_tests::jit_login("a@acme.io"),
    );
    assert_eq!(status, 200, "{body}");
    let metrics = get(&server.base, "/metrics").text().unwrap();
    assert!(
        metrics.contains("gatehouse_policy_evaluations_total"),
        "{metrics}"
    );
    let status = server.terminate();
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
}

#[test]
fn first_start_without_a_token_prints_one_that_works() {
    let data = tempfile::tempdir().unwrap();
    let server = Process::start_with_env(&data.path().join("db"), &[]).unwrap();
    let stderr = server.stderr();
    let token = stderr
        .lines()
        .find_map(|line| {
            line.split("operator token")
                .nth(1)?
                .rsplit(' ')
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| panic!("no operator token in stderr: {stderr}"));
    let client = reqwest::blocking::Client::new();
    let ok = client
        .get(format!("{}/api/v1/tenants", server.base))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(ok.status(), 200);
    let refused = client
        .get(format!("{}/api/v1/tenants", server.base))
        .bearer_auth("nope")
        .send()
        .unwrap();
    assert_eq!(refused.status(), 401);
    server.kill9();
}

#[test]
fn an_acknowledged_upload_survives_kill_9() {
    use base64::Engine;
    let data = tempfile::tempdir().unwrap();
    let db = data.path().join("db");
    let server = Process::start(&db).unwrap();
    assert_eq!(
        post(&server.base, "/api/v1/tenants", &json!({ "slug": "acme" })).0,
        201
    );
    let upload = json!({
        "component_base64": base64::engine::general_purpose::STANDARD.encode(fixtures::NESTED_CLAIMS),
        "settings": {},
    });
    let (status, body) = post(
        &server.base,
        "/api/v1/tenants/acme/policy/versions",
        &upload,
    );
    assert_eq!(status, 201, "{body}");
    server.kill9();

    let server = Process::start(&db).unwrap();
    let policy: Value = get(&server.base, "/api/v1/tenants/acme/policy")
        .json()
        .unwrap();
    assert_eq!(policy["active"], 1, "{policy}");
    assert_eq!(policy["active_policy"]["name"], "nested-claims", "{policy}");
    let (status, body) = post(
        &server.base,
        "/api/v1/tenants/acme/policy/evaluate",
        &gatehouse_tests::jit_login("a@acme.io"),
    );
    assert_eq!(
        (status, body["policy_version"].clone()),
        (200, json!(1)),
        "{body}"
    );
    server.kill9();
}

#[test]
fn the_cli_manages_tenants_users_and_teams_on_a_running_server() {
    let data = tempfile::tempdir().unwrap();
    let server = Process::start(&data.path().join("db")).unwrap();
    let run = |args: &[&str]| {
        let output = std::process::Command::new(gatehouse_tests::gatehouse_bin())
            .args(args)
            .env("GATEHOUSE_URL", &server.base)
            .env("GATEHOUSE_TOKEN", OPERATOR_TOKEN)
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (ok, out, err) = run(&["tenant", "create", "acme", "--admin-email", "a@acme.io"]);
    assert!(
        ok && out.contains("created tenant acme") && out.contains("ghp_acme_"),
        "{out}{err}"
    );
    let (ok, out, err) = run(&["user", "invite", "--tenant", "acme", "bob@acme.io"]);
    assert!(ok && out.contains("invited bob@acme.io"), "{out}{err}");
    let (ok, out, _) = run(&["--json", "user", "list", "--tenant", "acme", "--q", "bob"]);
    assert!(ok);
    let listed: Value = serde_json::from_str(&out).unwrap();
    let bob = listed["items"][0]["id"].as_str().unwrap().to_owned();
    let (ok, out, err) = run(&[
        "team", "create", "--tenant", "acme", "ml", "--role", "admin",
    ]);
    assert!(ok && out.contains("created team ml"), "{out}{err}");
    let team = out.trim().rsplit(' ').next().unwrap().to_owned();
    let (ok, out, err) = run(&["team", "add", "--tenant", "acme", &team, &bob]);
    assert!(ok && out.contains("1 members"), "{out}{err}");
    // A team by its name and users by their email do as well as ids.
    let (ok, out, err) = run(&["team", "remove", "--tenant", "acme", "ML", "BOB@acme.io"]);
    assert!(ok && out.contains("0 members"), "{out}{err}");
    let (ok, out, err) = run(&["team", "add", "--tenant", "acme", "ml", "bob@acme.io"]);
    assert!(ok && out.contains("1 members"), "{out}{err}");
    let (ok, _, err) = run(&["team", "add", "--tenant", "acme", "ml", "nobody@acme.io"]);
    assert!(
        !ok && err.contains("no user with email nobody@acme.io"),
        "{err}"
    );
    let (ok, _, err) = run(&["team", "add", "--tenant", "acme", "design", &bob]);
    assert!(
        !ok && err.contains("no team with id or name design"),
        "{err}"
    );
    let (ok, out, _) = run(&["user", "list", "--tenant", "acme"]);
    assert!(
        ok && out.lines().next().unwrap().starts_with("ID") && out.contains("admin (group)"),
        "{out}"
    );
    let (ok, _, err) = run(&["user", "role", "--tenant", "acme", &bob, "boss"]);
    assert!(!ok && err.contains("admin, member or clear"), "{err}");
    let (ok, _, err) = run(&["user", "delete", "--tenant", "acme", &bob]);
    assert!(
        !ok && err.contains("team ml"),
        "the server's refusal reaches the user: {err}"
    );
    server.kill9();
}

/// Runs the real binary as a client of `base` with the operator token.
fn cli(base: &str, args: &[&str]) -> (bool, String, String) {
    let output = std::process::Command::new(gatehouse_tests::gatehouse_bin())
        .args(args)
        .env("GATEHOUSE_URL", base)
        .env("GATEHOUSE_TOKEN", OPERATOR_TOKEN)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `--json` output, parsed; panics with stderr when the command failed.
fn cli_json(base: &str, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (ok, out, err) = cli(base, &all);
    assert!(ok, "{args:?} failed: {out}{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

/// The edge's answer for a bearer token at tenant acme.
fn resolve(base: &str, token: &str) -> Value {
    reqwest::blocking::Client::new()
        .post(format!("{base}/v1/acme/resolve"))
        .bearer_auth(token)
        .send()
        .unwrap()
        .json()
        .unwrap_or(Value::Null)
}

#[test]
fn the_cli_manages_identity_providers() {
    let data = tempfile::tempdir().unwrap();
    let server = Process::start(&data.path().join("db")).unwrap();
    let base = server.base.as_str();
    let (ok, out, err) = cli(base, &["tenant", "create", "acme"]);
    assert!(ok, "{out}{err}");
    let (ok, _, err) = cli(
        base,
        &[
            "idp",
            "create",
            "--tenant",
            "acme",
            "corp",
            "--issuer",
            "https://idp.example.test",
            "--jwks-uri",
            "https://idp.example.test/jwks",
            "--audience",
            "api",
            "--algorithm",
            "HS256",
        ],
    );
    assert!(
        !ok && err.contains("400"),
        "HMAC is the API's refusal: {err}"
    );
    let listed = cli_json(base, &["idp", "list", "--tenant", "acme"]);
    assert_eq!(
        listed["identity_providers"],
        json!([]),
        "nothing stored after a refusal"
    );
    let (ok, out, err) = cli(
        base,
        &[
            "idp",
            "create",
            "--tenant",
            "acme",
            "corp",
            "--issuer",
            "https://idp.example.test",
            "--jwks-uri",
            "https://idp.example.test/jwks",
            "--audience",
            "api",
            "--user-claim",
            "email",
        ],
    );
    assert!(
        ok && out.contains("added identity provider corp"),
        "{out}{err}"
    );
    let (ok, out, _) = cli(base, &["idp", "list", "--tenant", "acme"]);
    assert!(
        ok && out.lines().next().unwrap().starts_with("NAME")
            && out.contains("https://idp.example.test/jwks"),
        "{out}"
    );
    let replaced = cli_json(
        base,
        &[
            "idp",
            "replace",
            "--tenant",
            "acme",
            "corp",
            "--issuer",
            "https://idp.example.test",
            "--jwks-uri",
            "https://idp.example.test/jwks",
            "--audience",
            "api",
            "--audience",
            "web",
        ],
    );
    assert_eq!(replaced["audiences"], json!(["api", "web"]));
    let stored = get(base, "/api/v1/tenants/acme/identity-providers")
        .json::<Value>()
        .unwrap();
    assert_eq!(
        stored["identity_providers"][0]["audiences"],
        json!(["api", "web"]),
        "{stored}"
    );
    let (ok, _, err) = cli(
        base,
        &[
            "idp",
            "replace",
            "--tenant",
            "acme",
            "nope",
            "--issuer",
            "https://other.example.test",
            "--jwks-uri",
            "https://other.example.test/jwks",
            "--audience",
            "api",
        ],
    );
    assert!(!ok && err.contains("404"), "{err}");
    let (ok, out, err) = cli(base, &["idp", "delete", "--tenant", "acme", "corp"]);
    assert!(
        ok && out.contains("deleted identity provider corp"),
        "{out}{err}"
    );
    let stored = get(base, "/api/v1/tenants/acme/identity-providers")
        .json::<Value>()
        .unwrap();
    assert_eq!(stored["identity_providers"], json!([]));
    server.kill9();
}

#[test]
fn the_cli_manages_sso_configurations_and_their_scim_token() {
    let data = tempfile::tempdir().unwrap();
    let server = Process::start(&data.path().join("db")).unwrap();
    let base = server.base.as_str();
    let (ok, out, err) = cli(base, &["tenant", "create", "acme"]);
    assert!(ok, "{out}{err}");
    let (ok, _, err) = cli(
        base,
        &[
            "sso",
            "create",
            "--tenant",
            "acme",
            "okta",
            "--issuer",
            "https://idp.example.test",
            "--client-id",
            "gh",
            "--jwks-uri",
            "http://idp.example.test/jwks",
        ],
    );
    assert!(
        !ok && err.contains("400"),
        "a non-https JWKS URL is the API's refusal: {err}"
    );
    let (ok, out, err) = cli(
        base,
        &[
            "sso",
            "create",
            "--tenant",
            "acme",
            "okta",
            "--issuer",
            "https://idp.example.test",
            "--client-id",
            "gh",
            "--jwks-uri",
            "https://idp.example.test/jwks",
        ],
    );
    assert!(
        ok && out.contains("added SSO configuration okta"),
        "{out}{err}"
    );
    let listed = cli_json(base, &["sso", "list", "--tenant", "acme"]);
    assert_eq!(listed["sso"][0]["id"], "okta", "{listed}");
    assert_eq!(listed["sso"][0]["scim_token_set"], false);

    let (ok, out, err) = cli(base, &["sso", "scim-token", "--tenant", "acme", "okta"]);
    assert!(
        ok && out.contains("SCIM token (shown once): "),
        "{out}{err}"
    );
    let token = out.trim().rsplit(' ').next().unwrap().to_owned();
    let scim_url = out
        .lines()
        .find_map(|l| l.strip_prefix("SCIM base URL: "))
        .unwrap()
        .to_owned();
    let path = scim_url
        .find("/scim/")
        .map(|i| &scim_url[i..])
        .expect("a /scim/ URL");
    let users = reqwest::blocking::Client::new()
        .get(format!("{base}{path}/Users"))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(
        users.status().as_u16(),
        200,
        "the printed SCIM token opens SCIM"
    );
    let (ok, out, _) = cli(base, &["sso", "list", "--tenant", "acme"]);
    assert!(
        ok && out.lines().next().unwrap().starts_with("ID") && out.contains("set"),
        "{out}"
    );

    let (ok, out, err) = cli(base, &["sso", "delete", "--tenant", "acme", "okta"]);
    assert!(
        ok && out.contains("deleted SSO configuration okta"),
        "{out}{err}"
    );
    let stored = get(base, "/api/v1/tenants/acme/sso")
        .json::<Value>()
        .unwrap();
    assert_eq!(stored["sso"], json!([]));
    let (ok, _, err) = cli(base, &["sso", "scim-token", "--tenant", "acme", "okta"]);
    assert!(!ok && err.contains("404"), "{err}");
    server.kill9();
}

#[test]
fn the_cli_manages_resources_and_their_collaborators() {
    let data = tempfile::tempdir().unwrap();
    let server = Process::start(&data.path().join("db")).unwrap();
    let base = server.base.as_str();
    let (ok, out, err) = cli(base, &["tenant", "create", "acme"]);
    assert!(ok, "{out}{err}");
    let user = cli_json(base, &["user", "invite", "--tenant", "acme", "bob@acme.io"]);
    let bob = user["id"].as_str().unwrap().to_owned();
    let va = cli_json(base, &["va", "create", "--tenant", "acme", "bot"]);
    let va = va["id"].as_str().unwrap().to_owned();

    let (ok, _, err) = cli(
        base,
        &[
            "resource",
            "create",
            "--tenant",
            "acme",
            "--kind",
            "model",
            "m1",
            "--collaborator",
            "user:nobody:editor",
        ],
    );
    assert!(
        !ok && err.contains("400"),
        "an unknown subject is the API's refusal: {err}"
    );
    let (ok, _, err) = cli(
        base,
        &[
            "resource",
            "create",
            "--tenant",
            "acme",
            "--kind",
            "model",
            "m1",
            "--collaborator",
            "bob",
        ],
    );
    assert!(!ok && err.contains("KIND:ID:ROLE"), "{err}");
    let created = cli_json(
        base,
        &[
            "resource",
            "create",
            "--tenant",
            "acme",
            "--kind",
            "model",
            "m1",
            "--collaborator",
            &format!("user:{bob}:editor"),
        ],
    );
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(
        created["collaborators"],
        json!([{ "subject": { "user": bob }, "role": "editor" }])
    );
    let (ok, out, _) = cli(base, &["resource", "list", "--tenant", "acme"]);
    assert!(
        ok && out.lines().next().unwrap().starts_with("ID") && out.contains("m1"),
        "{out}"
    );

    let (ok, out, err) = cli(
        base,
        &[
            "resource",
            "collaborators",
            "--tenant",
            "acme",
            &id,
            "--collaborator",
            &format!("va:{va}:viewer"),
        ],
    );
    assert!(ok && out.contains("1 collaborator(s)"), "{out}{err}");
    let stored = get(base, "/api/v1/tenants/acme/resources")
        .json::<Value>()
        .unwrap();
    assert_eq!(
        stored["resources"][0]["collaborators"],
        json!([{ "subject": { "virtual_account": va }, "role": "viewer" }]),
        "{stored}"
    );
    let (ok, _, err) = cli(base, &["va", "delete", "--tenant", "acme", &va]);
    assert!(
        !ok && err.contains("409"),
        "the API refuses while it collaborates: {err}"
    );

    let (ok, out, err) = cli(base, &["resource", "delete", "--tenant", "acme", &id]);
    assert!(ok && out.contains("deleted resource"), "{out}{err}");
    let stored = get(base, "/api/v1/tenants/acme/resources")
        .json::<Value>()
        .unwrap();
    assert_eq!(stored["resources"], json!([]));
    server.kill9();
}

#[test]
fn the_cli_manages_virtual_accounts_and_rotates_their_tokens_with_grace() {
    let data = tempfile::tempdir().unwrap();
    let server = Process::start(&data.path().join("db")).unwrap();
    let base = server.base.as_str();
    let (ok, out, err) = cli(base, &["tenant", "create", "acme"]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = cli(base, &["va", "create", "--tenant", "acme", "ci-bot"]);
    assert!(
        ok && out.contains("created virtual account ci-bot"),
        "{out}{err}"
    );
    let va = out.trim().rsplit(' ').next().unwrap().to_owned();
    let (ok, _, err) = cli(base, &["va", "create", "--tenant", "acme", "ci-bot"]);
    assert!(
        !ok && err.contains("409"),
        "a duplicate name is the API's 409: {err}"
    );
    let (ok, out, _) = cli(base, &["va", "list", "--tenant", "acme"]);
    assert!(
        ok && out.lines().next().unwrap().starts_with("ID") && out.contains("ci-bot"),
        "{out}"
    );
    let listed = cli_json(base, &["va", "list", "--tenant", "acme"]);
    assert_eq!(listed["virtual_accounts"][0]["id"], va.as_str());

    let first = cli_json(
        base,
        &[
            "va", "token", "create", "--tenant", "acme", &va, "--name", "deploy",
        ],
    );
    let (old_id, old_secret) = (
        first["id"].as_str().unwrap().to_owned(),
        first["secret"].as_str().unwrap().to_owned(),
    );
    assert_eq!(resolve(base, &old_secret)["id"], va.as_str());

    let (ok, out, err) = cli(
        base,
        &[
            "va",
            "token",
            "rotate",
            "--tenant",
            "acme",
            &va,
            &old_id,
            "--grace-seconds",
            "3600",
        ],
    );
    assert!(
        ok && out.contains(&format!("token {old_id} replaced by")),
        "{out}{err}"
    );
    let new_secret = out.trim().rsplit(' ').next().unwrap().to_owned();
    assert_ne!(new_secret, old_secret);
    assert_eq!(resolve(base, &new_secret)["id"], va.as_str());
    assert_eq!(
        resolve(base, &old_secret)["id"],
        va.as_str(),
        "the replaced token works during its grace period"
    );
    let tokens = cli_json(base, &["va", "token", "list", "--tenant", "acme", &va]);
    let tokens = tokens["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 2, "{tokens:?}");
    let new_id = tokens.iter().find(|t| t["id"] != old_id.as_str()).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        tokens.iter().all(|t| t.get("secret").is_none()),
        "no secret in a listing: {tokens:?}"
    );
    let old = tokens.iter().find(|t| t["id"] == old_id.as_str()).unwrap();
    assert!(
        old["revoked_at"].is_string()
            && tokens
                .iter()
                .any(|t| t["name"] == "deploy" && t["id"] != old_id.as_str()),
        "{tokens:?}"
    );

    let (ok, _, err) = cli(
        base,
        &[
            "va",
            "token",
            "rotate",
            "--tenant",
            "acme",
            &va,
            &old_id,
            "--grace-seconds",
            "999999",
        ],
    );
    assert!(
        !ok && err.contains("grace_seconds"),
        "the API's reason: {err}"
    );

    let (ok, out, err) = cli(
        base,
        &["va", "token", "revoke", "--tenant", "acme", &va, &new_id],
    );
    assert!(ok && out.contains("revoked token"), "{out}{err}");
    assert_eq!(
        resolve(base, &new_secret)["decision"],
        "deny",
        "a revoked token stops at once"
    );

    let (ok, out, err) = cli(base, &["va", "disable", "--tenant", "acme", &va]);
    assert!(
        ok && out.contains("disabled virtual account ci-bot"),
        "{out}{err}"
    );
    let view = get(base, &format!("/api/v1/tenants/acme/virtual-accounts/{va}"));
    assert_eq!(view.json::<Value>().unwrap()["enabled"], false);
    assert_eq!(
        resolve(base, &old_secret)["decision"],
        "deny",
        "a disabled account's tokens stop"
    );
    let enabled = cli_json(base, &["va", "enable", "--tenant", "acme", &va]);
    assert_eq!(enabled["enabled"], true);

    let (ok, out, err) = cli(base, &["va", "delete", "--tenant", "acme", &va]);
    assert!(ok && out.contains("deleted virtual account"), "{out}{err}");
    let gone = get(base, &format!("/api/v1/tenants/acme/virtual-accounts/{va}"));
    assert_eq!(gone.status().as_u16(), 404);
    let (ok, _, err) = cli(base, &["va", "token", "list", "--tenant", "acme", &va]);
    assert!(!ok && err.contains("404"), "{err}");
    server.kill9();
}

#[test]
fn the_cli_lists_the_audit_log_with_filters_and_paging() {
    let data = tempfile::tempdir().unwrap();
    let server = Process::start(&data.path().join("db")).unwrap();
    let base = server.base.as_str();
    let (ok, out, err) = cli(base, &["tenant", "create", "acme"]);
    assert!(ok, "{out}{err}");
    for email in ["a@acme.io", "b@acme.io", "c@acme.io"] {
        let (ok, out, err) = cli(base, &["user", "invite", "--tenant", "acme", email]);
        assert!(ok, "{out}{err}");
    }
    let (ok, out, err) = cli(base, &["team", "create", "--tenant", "acme", "ml"]);
    assert!(ok, "{out}{err}");

    let all = cli_json(base, &["audit", "list", "--tenant", "acme"]);
    let all = all["items"].as_array().unwrap().clone();
    assert!(all.len() >= 4, "{all:?}");
    let users = cli_json(
        base,
        &["audit", "list", "--tenant", "acme", "--action", "user.*"],
    );
    let users = users["items"].as_array().unwrap();
    assert_eq!(users.len(), 3, "{users:?}");
    assert!(users
        .iter()
        .all(|e| e["action"].as_str().unwrap().starts_with("user.")));
    let by_nobody = cli_json(
        base,
        &["audit", "list", "--tenant", "acme", "--actor", "nobody"],
    );
    assert_eq!(by_nobody["items"], json!([]));
    let future = cli_json(
        base,
        &[
            "audit",
            "list",
            "--tenant",
            "acme",
            "--since",
            "2999-01-01T00:00:00Z",
        ],
    );
    assert_eq!(future["items"], json!([]));
    let until_future = cli_json(
        base,
        &[
            "audit",
            "list",
            "--tenant",
            "acme",
            "--until",
            "2999-01-01T00:00:00Z",
        ],
    );
    assert_eq!(until_future["items"].as_array().unwrap().len(), all.len());

    // Paging: one entry a page, following `next` visits every entry once.
    let (ok, out, err) = cli(
        base,
        &[
            "audit", "list", "--tenant", "acme", "--action", "user.*", "--limit", "1",
        ],
    );
    assert!(
        ok && out.lines().next().unwrap().starts_with("SEQ"),
        "{out}{err}"
    );
    let more = out
        .lines()
        .find_map(|l| l.strip_prefix("more: --after "))
        .expect("a next cursor");
    let mut seen = vec![];
    let mut after: Option<String> = None;
    loop {
        let mut args = vec![
            "audit", "list", "--tenant", "acme", "--action", "user.*", "--limit", "1",
        ];
        if let Some(a) = after.as_deref() {
            args.extend(["--after", a]);
        }
        let page = cli_json(base, &args);
        if after.is_none() {
            assert_eq!(
                page["next"].as_str(),
                Some(more),
                "the readable page names its cursor"
            );
        }
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["seq"].clone()),
        );
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
        assert!(seen.len() <= 3, "paging does not end: {seen:?}");
    }
    assert_eq!(
        seen,
        users.iter().map(|e| e["seq"].clone()).collect::<Vec<_>>()
    );
    assert_eq!(
        seen.first().map(|s| s.to_string()).is_some(),
        !more.is_empty()
    );

    let (ok, _, err) = cli(
        base,
        &["audit", "list", "--tenant", "acme", "--since", "yesterday"],
    );
    assert!(
        !ok && err.contains("400") && err.contains("RFC 3339"),
        "the API's reason: {err}"
    );
    server.kill9();
}

#[test]
fn a_stalled_log_pipe_never_holds_a_request_and_dropped_lines_are_counted() {
    // stderr is a pipe nobody reads: once its buffer is full the log writer thread
    // blocks, its small queue fills, and every further line must be dropped — while
    // every request still gets its answer.
    let data = tempfile::tempdir().unwrap();
    let server = Process::start_with_stderr(
        &data.path().join("db"),
        &[
            ("GATEHOUSE_OPERATOR_TOKEN", OPERATOR_TOKEN),
            ("GATEHOUSE_LOG_QUEUE_LINES", "8"),
        ],
        std::process::Stdio::piped(),
        data.path().join("unread"),
    )
    .unwrap();
    let (status, _) = post(&server.base, "/api/v1/tenants", &json!({ "slug": "acme" }));
    assert_eq!(status, 201);
    let client = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .unwrap();
    // Each refused decision writes one decision-log line (~200 bytes): 2,000 of them
    // overflow a 64 KiB pipe several times over.
    for n in 0..2_000 {
        let response = client
            .post(format!("{}/v1/acme/resolve", server.base))
            .bearer_auth(format!("not-a-token-{n}"))
            .send()
            .unwrap_or_else(|e| panic!("request {n} got no answer: {e}"));
        assert_eq!(response.status(), 401, "request {n}");
    }
    let metrics = get(&server.base, "/metrics").text().unwrap();
    let dropped: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("gatehouse_log_dropped_lines_total "))
        .unwrap_or_else(|| panic!("no drop counter: {metrics}"))
        .trim()
        .parse()
        .unwrap();
    assert!(dropped > 0, "lines were dropped and counted: {metrics}");
    server.kill9();
}

/// Sets tenant `acme` up for SCIM on `base` and returns the connection's SCIM token.
fn scim_tenant(base: &str) -> String {
    assert_eq!(
        post(base, "/api/v1/tenants", &json!({ "slug": "acme" })).0,
        201
    );
    let response = reqwest::blocking::Client::new()
        .put(format!("{base}/api/v1/tenants/acme/provisioning"))
        .bearer_auth(OPERATOR_TOKEN)
        .json(&json!({ "mode": "scim" }))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    let sso = json!({
        "id": "idp", "issuer": "https://idp.example.com", "client_id": "gatehouse",
        "jwks_uri": "https://203.0.113.10/jwks"
    });
    assert_eq!(post(base, "/api/v1/tenants/acme/sso", &sso).0, 201);
    let (status, body) = post(base, "/api/v1/tenants/acme/sso/idp/scim-token", &json!({}));
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

#[test]
fn every_acknowledged_scim_create_survives_kill_9_under_load() {
    // Eight connections create users as fast as the server acknowledges them (so group
    // commit has concurrent writers to share flushes between); the process is killed
    // mid-stream. Every create answered 201 must be there after a restart.
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    let data = tempfile::tempdir().unwrap();
    let db = data.path().join("db");
    let server = Process::start(&db).unwrap();
    let token = scim_tenant(&server.base);
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..8)
        .map(|worker| {
            let (base, token) = (server.base.clone(), token.clone());
            let (acknowledged, count, stop) = (acknowledged.clone(), count.clone(), stop.clone());
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder()
                    .timeout(std::time::Duration::from_secs(10))
                    .build()
                    .unwrap();
                for n in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let name = format!("u{worker}-{n}@acme.io");
                    let user = json!({
                        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                        "userName": name, "externalId": format!("x-{name}"), "active": true,
                    });
                    let Ok(response) = client
                        .post(format!("{base}/scim/v2/acme/idp/Users"))
                        .bearer_auth(&token)
                        .header("content-type", "application/scim+json")
                        .body(user.to_string())
                        .send()
                    else {
                        break; // the server is gone
                    };
                    // Only a whole 201 answer is an acknowledgement.
                    if response.status() == 201 && response.bytes().is_ok() {
                        acknowledged.lock().unwrap().push(name);
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while count.load(Ordering::Relaxed) < 300 {
        assert!(
            std::time::Instant::now() < deadline,
            "creates are not acknowledged"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // The creates went in rounds, and `/metrics` times their phases (BENCHMARKS.md reads
    // them through `bench/scim-http.sh`).
    let metrics = reqwest::blocking::get(format!("{}/metrics", server.base))
        .unwrap()
        .text()
        .unwrap();
    let metric = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} is not on /metrics:\n{metrics}"))
    };
    let rounds = metric("gatehouse_store_rounds_total");
    assert!(rounds >= 1.0);
    assert!(metric("gatehouse_store_round_writes_total") >= rounds);
    for phase in ["commit", "flush"] {
        assert!(metric(&format!("gatehouse_store_round_{phase}_seconds_count")) >= 1.0);
        assert!(metric(&format!("gatehouse_store_round_{phase}_seconds_sum")) > 0.0);
    }
    server.kill9();
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() >= 300);

    let server = Process::start(&db).unwrap();
    let client = reqwest::blocking::Client::new();
    let missing: Vec<&String> = acknowledged
        .iter()
        .filter(|name| {
            let found: Value = client
                // Names are [a-z0-9@.-]: only the filter's space and quotes need escaping.
                .get(format!(
                    "{}/scim/v2/acme/idp/Users?filter=userName%20eq%20%22{name}%22",
                    server.base
                ))
                .bearer_auth(&token)
                .send()
                .unwrap()
                .json()
                .unwrap();
            found["totalResults"] != 1
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged creates lost: {missing:?}",
        missing.len(),
        acknowledged.len()
    );
    server.kill9();
}
