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
