//! Issue 7, tenant policy authoring: `gatehouse policy new` scaffolds a crate that builds and
//! passes its cases, the example policies pass `gatehouse policy test`, invalid settings are
//! refused with the policy's own message by the admin API and the CLI, and the examples go
//! through push, activation and rollback on a running server.

use gatehouse_tests::{fixtures, gatehouse_bin, TestServer, OPERATOR_TOKEN};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs the real binary with `args`, no `GATEHOUSE_*` variables but `env`.
fn gatehouse(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(gatehouse_bin());
    command.args(args);
    for (key, _) in std::env::vars() {
        if key.starts_with("GATEHOUSE_") {
            command.env_remove(key);
        }
    }
    for (key, value) in env {
        command.env(key, value);
    }
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

/// A target directory the wasm builds of these tests share across runs.
fn wasm_target() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("policy-authoring-wasm")
}

#[test]
fn policy_new_scaffolds_a_crate_that_builds_and_passes_its_cases() {
    let dir = tempfile::tempdir().unwrap();
    let crate_dir = dir.path().join("acme-rules");
    let crate_path = crate_dir.to_str().unwrap();
    let output = gatehouse(&["policy", "new", "acme-rules", "--dir", crate_path], &[]);
    assert!(output.status.success(), "{}", text(&output));
    for file in [
        "Cargo.toml",
        "Cargo.lock",
        "src/lib.rs",
        "cases/resolve.json",
    ] {
        assert!(crate_dir.join(file).is_file(), "{file} missing");
    }
    let manifest = std::fs::read_to_string(crate_dir.join("Cargo.toml")).unwrap();
    assert!(
        manifest.contains("name = \"gatehouse-policy-acme-rules\""),
        "{manifest}"
    );

    // Scaffolding over an existing directory, or with a bad name, is refused and says why.
    let again = gatehouse(&["policy", "new", "acme-rules", "--dir", crate_path], &[]);
    assert!(!again.status.success());
    assert!(text(&again).contains("already exists"), "{}", text(&again));
    let bad = gatehouse(&["policy", "new", "Acme Rules", "--dir", crate_path], &[]);
    assert!(!bad.status.success());
    assert!(text(&bad).contains("is invalid"), "{}", text(&bad));

    // The repository's own tooling builds it and runs its cases (the default policy's).
    let target = wasm_target();
    let output = gatehouse(
        &[
            "policy",
            "test",
            crate_path,
            "--target-dir",
            target.to_str().unwrap(),
        ],
        &[],
    );
    assert!(output.status.success(), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");

    // The built component names itself after the new policy.
    let out = dir.path().join("acme.wasm");
    let output = gatehouse(
        &[
            "policy",
            "build",
            crate_path,
            "--target-dir",
            target.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert!(output.status.success(), "{}", text(&output));
    let engine =
        gatehouse::policy::PolicyEngine::new(gatehouse::policy::Limits::default()).unwrap();
    let compiled = engine.compile(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(compiled.info.name, "acme-rules");
    assert_eq!(compiled.info.contract, gatehouse::policy::CONTRACT);
}

/// `gatehouse policy test DIR --component FILE` on each example and its own cases.
#[test]
fn both_examples_pass_policy_test() {
    let dir = tempfile::tempdir().unwrap();
    for (name, component, min_cases) in [
        ("nested-claims", fixtures::NESTED_CLAIMS, 8),
        ("department-teams", fixtures::DEPARTMENT_TEAMS, 8),
    ] {
        let file = dir.path().join(format!("{name}.wasm"));
        std::fs::write(&file, component).unwrap();
        let crate_dir = fixtures::root().join("policies").join(name);
        let output = gatehouse(
            &[
                "policy",
                "test",
                crate_dir.to_str().unwrap(),
                "--component",
                file.to_str().unwrap(),
            ],
            &[],
        );
        assert!(output.status.success(), "{name}: {}", text(&output));
        let stdout = String::from_utf8_lossy(&output.stdout);
        let passed: usize = stdout
            .lines()
            .last()
            .and_then(|line| line.strip_suffix(" passed, 0 failed"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{name}: no summary line in {stdout}"));
        assert!(passed >= min_cases, "{name}: only {passed} cases ran");
    }
}

/// A resolve request as the admin API's evaluate endpoint takes it.
fn resolve(email: &str, department: &str, team: &str) -> Value {
    json!({
        "decision": "resolve",
        "input": {
            "idp": "okta", "user_claim": email, "team_values": [department],
            "users": [{ "id": "u-1", "email": email, "status": "active", "matched_by": "email", "teams": [] }],
            "teams": [{ "id": team, "name": team, "matched": department }]
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_settings_are_refused_with_the_policys_message_by_api_and_cli() {
    let server = TestServer::start().await;
    server.create_tenant("acme").await;
    for (settings, message) in [
        (json!({}), "missing field `allowed_departments`"),
        (
            json!({ "allowed_departments": ["Engineering", " "] }),
            "settings.allowed_departments[1] is blank",
        ),
        (
            json!({ "allowed_departments": ["Engineering"], "team_prefix": "x" }),
            "unknown field `team_prefix`",
        ),
    ] {
        let (status, body) = server
            .upload("acme", fixtures::DEPARTMENT_TEAMS, settings.clone(), true)
            .await;
        assert_eq!(status, 422, "{settings}: {body}");
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(message), "{settings}: {body}");
    }

    let dir = tempfile::tempdir().unwrap();
    let component = dir.path().join("department-teams.wasm");
    std::fs::write(&component, fixtures::DEPARTMENT_TEAMS).unwrap();
    let settings = dir.path().join("settings.json");
    std::fs::write(&settings, r#"{"allowed_departments": []}"#).unwrap();
    let env = [
        ("GATEHOUSE_URL", server.base.as_str()),
        ("GATEHOUSE_TOKEN", OPERATOR_TOKEN),
    ];
    let push = |settings: &Path| {
        gatehouse(
            &[
                "policy",
                "push",
                "--tenant",
                "acme",
                component.to_str().unwrap(),
                "--settings",
                settings.to_str().unwrap(),
            ],
            &env,
        )
    };
    let output = tokio::task::block_in_place(|| push(&settings));
    assert!(!output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("settings.allowed_departments is empty"),
        "{}",
        text(&output)
    );
    // Nothing was stored: the tenant still runs the default policy.
    let (_, state) = server
        .call(
            reqwest::Method::GET,
            "/api/v1/tenants/acme/policy",
            Some(OPERATOR_TOKEN),
            None,
        )
        .await;
    assert!(
        state["versions"].as_array().is_none_or(Vec::is_empty),
        "{state}"
    );

    std::fs::write(&settings, r#"{"allowed_departments": ["Engineering"]}"#).unwrap();
    let output = tokio::task::block_in_place(|| push(&settings));
    assert!(output.status.success(), "{}", text(&output));
    let (status, body) = server
        .evaluate("acme", &resolve("ann@acme.io", "Engineering", "t-eng"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["policy"], "department-teams", "{body}");
}

/// Each example: pushed without activating, activated (promoted), deciding as its settings
/// say, then rolled back to what ran before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_examples_are_pushed_promoted_and_rolled_back() {
    let server = TestServer::start().await;
    server.create_tenant("acme").await;
    let overview = || async {
        server
            .call(
                reqwest::Method::GET,
                "/api/v1/tenants/acme/policy",
                Some(OPERATOR_TOKEN),
                None,
            )
            .await
            .1
    };
    let teams_of = |body: &Value| body["decision"]["outcome"]["user"]["teams"].clone();

    // nested-claims, with a team prefix: only `team-` values give teams.
    let (status, body) = server
        .upload(
            "acme",
            fixtures::NESTED_CLAIMS,
            json!({ "team_prefix": "team-" }),
            false,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(overview().await["active"], Value::Null);
    let (status, body) = server
        .send_json(
            reqwest::Method::POST,
            "/api/v1/tenants/acme/policy/activate",
            &json!({ "version": 1 }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = server
        .evaluate("acme", &resolve("ann@acme.io", "admin", "t-admins"))
        .await;
    assert_eq!(body["policy"], "nested-claims", "{body}");
    assert_eq!(teams_of(&body), json!([]), "{body}");

    // department-teams on top: Engineering is allowed, Finance is not.
    let (status, body) = server
        .upload(
            "acme",
            fixtures::DEPARTMENT_TEAMS,
            json!({ "allowed_departments": ["Engineering"] }),
            false,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = server
        .send_json(
            reqwest::Method::POST,
            "/api/v1/tenants/acme/policy/activate",
            &json!({ "version": 2 }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = server
        .evaluate("acme", &resolve("ann@acme.io", "Engineering", "t-eng"))
        .await;
    assert_eq!(body["policy"], "department-teams", "{body}");
    assert_eq!(teams_of(&body), json!(["t-eng"]), "{body}");
    let (_, body) = server
        .evaluate("acme", &resolve("bob@acme.io", "Finance", "t-fin"))
        .await;
    assert_eq!(teams_of(&body), json!([]), "{body}");

    // Roll back twice: nested-claims, then the built-in default policy.
    for (expected_active, expected_policy) in
        [(json!(1), "nested-claims"), (Value::Null, "default")]
    {
        let (status, body) = server
            .send_json(
                reqwest::Method::POST,
                "/api/v1/tenants/acme/policy/rollback",
                &json!({}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let state = overview().await;
        assert_eq!(state["active"], expected_active, "{state}");
        assert_eq!(state["active_policy"]["name"], expected_policy, "{state}");
    }
}

/// The ring records what the tenant's policy decided; a dry run of department-teams with an
/// allow-list of Engineering and Sales lists exactly the decisions it changes: the Finance
/// user loses the Finance team, and the refusal with `refuse_unlisted`; nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_lists_exactly_the_decisions_that_change() {
    let server = TestServer::start().await;
    server.create_tenant("acme").await;
    let traffic = [
        resolve("ann@acme.io", "Engineering", "t-eng"),
        resolve("bob@acme.io", "Finance", "t-fin"),
        resolve("cy@acme.io", "Sales", "t-sales"),
        resolve("dee@acme.io", "Engineering", "t-eng"),
        jit(),
    ];
    for request in &traffic {
        let (status, body) = server.evaluate("acme", request).await;
        assert_eq!(status, 200, "{body}");
    }
    let dry_run = |settings: Value| {
        let server = &server;
        async move {
            use base64::Engine;
            server
                .send_json(
                    reqwest::Method::POST,
                    "/api/v1/tenants/acme/policy/dry-run",
                    &json!({
                        "component_base64": base64::engine::general_purpose::STANDARD.encode(fixtures::DEPARTMENT_TEAMS),
                        "settings": settings,
                    }),
                )
                .await
        }
    };
    let (status, report) =
        dry_run(json!({ "allowed_departments": ["Engineering", "Sales"] })).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["evaluated"], traffic.len(), "{report}");
    assert_eq!(report["candidate"]["name"], "department-teams");
    let changed = report["changed"].as_array().unwrap();
    assert_eq!(changed.len(), 1, "{report}");
    assert_eq!(changed[0]["decision"], "resolve");
    assert_eq!(changed[0]["input"]["team_values"], json!(["Finance"]));
    assert_eq!(changed[0]["before"]["user"]["teams"], json!(["t-fin"]));
    assert_eq!(changed[0]["after"]["user"]["teams"], json!([]));
    // Anonymised: the email is a pseudonym that keeps its domain.
    let whole = report.to_string();
    assert!(!whole.contains("bob@acme.io"), "{whole}");
    let claim = changed[0]["input"]["user_claim"].as_str().unwrap();
    assert!(
        claim.starts_with("anon-") && claim.ends_with("@acme.io"),
        "{claim}"
    );

    // Stricter settings change one more kind of answer, still only for Finance.
    let (status, report) = dry_run(
        json!({ "allowed_departments": ["Engineering", "Sales"], "refuse_unlisted": true }),
    )
    .await;
    assert_eq!(status, 200, "{report}");
    let changed = report["changed"].as_array().unwrap();
    assert_eq!(changed.len(), 1, "{report}");
    assert_eq!(
        changed[0]["after"]["refuse"]["code"], "department_not_allowed",
        "{report}"
    );

    // An allow-list of Engineering only changes Finance and Sales; a refused setting is 422.
    let (_, report) = dry_run(json!({ "allowed_departments": ["Engineering"] })).await;
    let mut changed: Vec<Value> = report["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["input"]["team_values"][0].clone())
        .collect();
    changed.sort_by_key(Value::to_string);
    assert_eq!(changed, [json!("Finance"), json!("Sales")], "{report}");
    let (status, body) = dry_run(json!({ "allowed_departments": [] })).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("allowed_departments is empty"),
        "{body}"
    );

    // Nothing was stored or activated by the dry runs.
    let (_, state) = server
        .call(
            reqwest::Method::GET,
            "/api/v1/tenants/acme/policy",
            Some(OPERATOR_TOKEN),
            None,
        )
        .await;
    assert_eq!(state["active"], Value::Null, "{state}");
    assert!(state["versions"].as_array().unwrap().is_empty(), "{state}");

    // The CLI prints the same report.
    let dir = tempfile::tempdir().unwrap();
    let component = dir.path().join("c.wasm");
    std::fs::write(&component, fixtures::DEPARTMENT_TEAMS).unwrap();
    let settings = dir.path().join("s.json");
    std::fs::write(
        &settings,
        r#"{"allowed_departments": ["Engineering", "Sales"]}"#,
    )
    .unwrap();
    let output = tokio::task::block_in_place(|| {
        gatehouse(
            &[
                "policy",
                "dry-run",
                "--tenant",
                "acme",
                component.to_str().unwrap(),
                "--settings",
                settings.to_str().unwrap(),
            ],
            &[
                ("GATEHOUSE_URL", server.base.as_str()),
                ("GATEHOUSE_TOKEN", OPERATOR_TOKEN),
            ],
        )
    });
    assert!(output.status.success(), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("1 of 5 recent decisions would change"),
        "{stdout}"
    );
    assert!(stdout.contains("\"Finance\""), "{stdout}");
}

fn jit() -> Value {
    gatehouse_tests::jit_login("eve@acme.io")
}

fn candidate(component: &[u8], settings: Value) -> Value {
    use base64::Engine;
    json!({
        "component_base64": base64::engine::general_purpose::STANDARD.encode(component),
        "settings": settings,
    })
}

/// department-teams runs in shadow beside nested-claims: the active policy answers every
/// request, the shadow counts the one difference; discarded, then started again and
/// promoted (stored and active), then rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_counts_differences_the_active_policy_answers_then_it_is_promoted() {
    let server = TestServer::start().await;
    server.create_tenant("acme").await;
    let (status, body) = server
        .upload("acme", fixtures::NESTED_CLAIMS, json!({}), true)
        .await;
    assert_eq!(status, 201, "{body}");
    let shadow_path = "/api/v1/tenants/acme/policy/shadow";
    let department = candidate(
        fixtures::DEPARTMENT_TEAMS,
        json!({ "allowed_departments": ["Engineering", "Sales"] }),
    );
    let (status, body) = server
        .send_json(reqwest::Method::POST, shadow_path, &department)
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["candidate"]["name"], "department-teams");

    let traffic = [
        resolve("ann@acme.io", "Engineering", "t-eng"),
        resolve("bob@acme.io", "Finance", "t-fin"),
        resolve("cy@acme.io", "Sales", "t-sales"),
    ];
    for request in &traffic {
        let (status, body) = server.evaluate("acme", request).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["policy"], "nested-claims",
            "the active policy answers: {body}"
        );
    }
    // Finance keeps its team under the active policy, though the shadow would drop it.
    let (_, body) = server.evaluate("acme", &traffic[1]).await;
    assert_eq!(
        body["decision"]["outcome"]["user"]["teams"],
        json!(["t-fin"])
    );

    let mut state = Value::Null;
    for _ in 0..100 {
        let (status, body) = server
            .call(
                reqwest::Method::GET,
                shadow_path,
                Some(OPERATOR_TOKEN),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        state = body;
        if state["stats"]["evaluated"] == 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        state["stats"],
        json!({ "evaluated": 4, "differed": 2, "failed": 0, "dropped": 0 }),
        "{state}"
    );

    // Discard: gone, nothing stored.
    let (status, body) = server
        .call(
            reqwest::Method::DELETE,
            shadow_path,
            Some(OPERATOR_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = server
        .call(
            reqwest::Method::GET,
            shadow_path,
            Some(OPERATOR_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = server
        .call(
            reqwest::Method::POST,
            "/api/v1/tenants/acme/policy/shadow/promote",
            Some(OPERATOR_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 404);

    // A shadow with refused settings does not start.
    let (status, body) = server
        .send_json(
            reqwest::Method::POST,
            shadow_path,
            &candidate(fixtures::DEPARTMENT_TEAMS, json!({})),
        )
        .await;
    assert_eq!(status, 422, "{body}");

    // Start again and promote: version 2, active, answering; the shadow is gone.
    let (status, _) = server
        .send_json(reqwest::Method::POST, shadow_path, &department)
        .await;
    assert_eq!(status, 201);
    let (status, record) = server
        .call(
            reqwest::Method::POST,
            "/api/v1/tenants/acme/policy/shadow/promote",
            Some(OPERATOR_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 201, "{record}");
    assert_eq!(record["version"], 2, "{record}");
    assert_eq!(record["name"], "department-teams", "{record}");
    let (_, body) = server.evaluate("acme", &traffic[1]).await;
    assert_eq!(body["policy"], "department-teams", "{body}");
    assert_eq!(
        body["decision"]["outcome"]["user"]["teams"],
        json!([]),
        "{body}"
    );
    let (status, _) = server
        .call(
            reqwest::Method::GET,
            shadow_path,
            Some(OPERATOR_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 404);

    // And back.
    let (status, body) = server
        .send_json(
            reqwest::Method::POST,
            "/api/v1/tenants/acme/policy/rollback",
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = server.evaluate("acme", &traffic[1]).await;
    assert_eq!(body["policy"], "nested-claims", "{body}");
}

/// A version that traps after activation is rolled back on its own once it fails 3 times
/// within the window, and the audit log says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_version_is_rolled_back_automatically_and_audited() {
    let server = TestServer::start_with(|config| {
        config.policy.auto_rollback_failures = 3;
        config.policy.auto_rollback_window_secs = 60;
    })
    .await;
    server.create_tenant("acme").await;
    let (status, body) = server
        .upload(
            "acme",
            fixtures::DEPARTMENT_TEAMS,
            json!({ "allowed_departments": ["Engineering"] }),
            true,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = server
        .upload("acme", fixtures::HOSTILE, json!({ "mode": "trap" }), true)
        .await;
    assert_eq!(status, 201, "{body}");
    let request = resolve("ann@acme.io", "Engineering", "t-eng");
    for attempt in 1..=3 {
        let (status, body) = server.evaluate("acme", &request).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["policy_version"], 2, "attempt {attempt}: {body}");
        assert_eq!(
            body["policy_error"]["kind"], "trap",
            "attempt {attempt}: {body}"
        );
    }
    // The third failure tripped it: version 1 answers again.
    let (_, state) = server
        .call(
            reqwest::Method::GET,
            "/api/v1/tenants/acme/policy",
            Some(OPERATOR_TOKEN),
            None,
        )
        .await;
    assert_eq!(state["active"], 1, "{state}");
    let (_, body) = server.evaluate("acme", &request).await;
    assert_eq!(body["policy"], "department-teams", "{body}");
    assert_eq!(
        body["decision"]["outcome"]["user"]["teams"],
        json!(["t-eng"])
    );

    let (status, audit) = server
        .call(
            reqwest::Method::GET,
            "/api/v1/tenants/acme/audit?limit=100",
            Some(OPERATOR_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 200, "{audit}");
    let entries: Vec<&Value> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "policy.auto_rollback")
        .collect();
    assert_eq!(entries.len(), 1, "{audit}");
    let entry = entries[0].to_string();
    for needle in [
        "\"version\":2",
        "\"failures\":3",
        "trapped",
        "\"active\":1",
        "gatehouse",
    ] {
        assert!(entry.contains(needle), "{needle} missing in {entry}");
    }
}
