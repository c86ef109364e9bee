//! Equal replicas on one PostgreSQL database: two real `gatehouse serve` processes (each
//! with a data directory of its own for its artifact cache) on a fresh database of the
//! test binary's cluster (tests/pg.rs).

use base64::Engine as _;
use gatehouse_tests::{pg, Process, OPERATOR_TOKEN};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const OP: Option<&str> = Some(OPERATOR_TOKEN);
const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";

struct Replicas {
    // Fields drop in order: the processes (killed by their handles) before their data.
    a: Process,
    b: Process,
    _dirs: tempfile::TempDir,
    url: String,
    client: reqwest::Client,
}

fn replica(dirs: &tempfile::TempDir, name: &str, url: &str) -> Process {
    let data = dirs.path().join(name);
    Process::start_with_env(
        &data,
        &[
            ("GATEHOUSE_OPERATOR_TOKEN", OPERATOR_TOKEN),
            ("GATEHOUSE_DATABASE_URL", url),
        ],
    )
    .unwrap_or_else(|e| panic!("replica {name} starts: {e:#}"))
}

/// The tests of this file run one at a time: each runs two servers, and timings measured
/// on a 2-core machine mean little when four pairs compete.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Two replicas started together on one new database (their migrations race).
fn start() -> Replicas {
    start_on(pg::database_url())
}

/// Two replicas started together on database `url`.
fn start_on(url: String) -> Replicas {
    let dirs = tempfile::tempdir().unwrap();
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| replica(&dirs, "a", &url));
        let b = s.spawn(|| replica(&dirs, "b", &url));
        (a.join().unwrap(), b.join().unwrap())
    });
    Replicas {
        _dirs: dirs,
        a,
        b,
        url,
        client: reqwest::Client::new(),
    }
}

async fn call(
    client: &reqwest::Client,
    base: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut request = client.request(method, format!("{base}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = request.send().await.expect("request sent");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

impl Replicas {
    async fn a(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        call(&self.client, &self.a.base, method, path, token, body).await
    }

    async fn b(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        call(&self.client, &self.b.base, method, path, token, body).await
    }

    /// Uploads the nested-claims example policy to acme through A, activated or not; the
    /// new version as A answered it.
    async fn upload_nested_claims(&self, activate: bool) -> Value {
        let upload = json!({
            "component_base64": base64::engine::general_purpose::STANDARD
                .encode(gatehouse_tests::fixtures::NESTED_CLAIMS),
            "settings": {},
            "activate": activate,
        });
        let (status, body) = self
            .a(
                Method::POST,
                "/api/v1/tenants/acme/policy/versions",
                OP,
                Some(&upload),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body
    }

    /// Tenant `acme` in SCIM mode with connection `idp`, made on A; its SCIM token.
    async fn scim_tenant(&self) -> String {
        let (status, body) = self
            .a(
                Method::POST,
                "/api/v1/tenants",
                OP,
                Some(&json!({ "slug": "acme", "admin_email": "admin@acme.io" })),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let (status, body) = self
            .a(
                Method::POST,
                "/api/v1/tenants/acme/sso",
                OP,
                Some(&json!({
                    "id": "idp", "issuer": "https://idp.example.com", "client_id": "gatehouse",
                    "jwks_uri": "https://203.0.113.10/jwks"
                })),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let (status, body) = self
            .a(
                Method::POST,
                "/api/v1/tenants/acme/sso/idp/scim-token",
                OP,
                Some(&json!({})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let token = body["token"].as_str().unwrap().to_owned();
        let (status, body) = self
            .a(
                Method::PUT,
                "/api/v1/tenants/acme/provisioning",
                OP,
                Some(&json!({ "mode": "scim" })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        token
    }
}

async fn scim_create(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    user: &Value,
) -> (u16, Value) {
    let response = client
        .post(format!("{base}/scim/v2/acme/idp/Users"))
        .bearer_auth(token)
        .header("content-type", "application/scim+json")
        .body(user.to_string())
        .send()
        .await;
    match response {
        Ok(response) => {
            let status = response.status().as_u16();
            let text = response.text().await.unwrap_or_default();
            (
                status,
                serde_json::from_str(&text).unwrap_or(Value::String(text)),
            )
        }
        // The replica went away mid-request: not acknowledged.
        Err(e) => (0, Value::String(e.to_string())),
    }
}

async fn scim_count(client: &reqwest::Client, base: &str, token: &str, filter: &str) -> u64 {
    let mut url = format!("{base}/scim/v2/acme/idp/Users");
    if !filter.is_empty() {
        // The filters here hold letters, digits, '-', spaces and quotes only.
        let encoded = filter.replace(' ', "%20").replace('"', "%22");
        url = format!("{url}?filter={encoded}");
    }
    let response = client.get(url).bearer_auth(token).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    body["totalResults"].as_u64().unwrap()
}

#[tokio::test]
async fn concurrent_creates_of_one_external_id_on_both_replicas_make_one_user() {
    let _serial = SERIAL.lock().await;
    let r = start();
    let token = r.scim_tenant().await;
    for round in 0..5 {
        let user = json!({
            "schemas": [USER], "userName": format!("ann{round}@acme.io"),
            "externalId": format!("ext-{round}"), "active": true
        });
        let requests = (0..8).map(|i| {
            let base = if i % 2 == 0 { &r.a.base } else { &r.b.base };
            scim_create(&r.client, base, &token, &user)
        });
        let outcomes = futures::future::join_all(requests).await;
        // One create; every other answer is that same user (a create of a known
        // externalId returns it, 200), whichever replica answered.
        let created = outcomes.iter().filter(|(s, _)| *s == 201).count();
        assert_eq!(created, 1, "round {round}: {outcomes:?}");
        let id = &outcomes.iter().find(|(s, _)| *s == 201).unwrap().1["id"];
        assert!(
            outcomes
                .iter()
                .all(|(s, body)| (*s == 201 || *s == 200) && &body["id"] == id),
            "round {round}: {outcomes:?}"
        );
        let filter = format!("externalId eq \"ext-{round}\"");
        assert_eq!(scim_count(&r.client, &r.a.base, &token, &filter).await, 1);
        assert_eq!(scim_count(&r.client, &r.b.base, &token, &filter).await, 1);
    }
    // Both replicas read the database they share (their migrations raced and agreed).
    assert!(!r.url.is_empty());
}

#[tokio::test]
async fn a_user_deactivated_on_a_is_refused_by_bs_resolve_within_100_ms() {
    let _serial = SERIAL.lock().await;
    let r = start();
    let (status, body) = r
        .a(
            Method::POST,
            "/api/v1/tenants",
            OP,
            Some(&json!({ "slug": "acme", "admin_email": "admin@acme.io" })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let mut lags = Vec::new();
    for i in 0..10 {
        let (status, user) = r
            .a(
                Method::POST,
                "/api/v1/tenants/acme/users",
                OP,
                Some(&json!({ "email": format!("u{i}@acme.io") })),
            )
            .await;
        assert_eq!(status, 201, "{user}");
        let id = user["id"].as_str().unwrap().to_owned();
        let (status, _) = r
            .a(
                Method::POST,
                &format!("/api/v1/tenants/acme/users/{id}/reactivate"),
                OP,
                None,
            )
            .await;
        assert_eq!(status, 200);
        let (status, created) = r
            .a(
                Method::POST,
                &format!("/api/v1/tenants/acme/users/{id}/tokens"),
                OP,
                Some(&json!({ "name": "ci" })),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        let pat = created["secret"].as_str().unwrap().to_owned();
        // B answers for the user made on A (it reads its own writes' database).
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (status, body) = r
                .b(Method::POST, "/v1/acme/resolve", Some(&pat), None)
                .await;
            if status == 200 && body["decision"] == "allow" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "B never allowed the new user: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let (status, body) = r
            .a(
                Method::POST,
                &format!("/api/v1/tenants/acme/users/{id}/deactivate"),
                OP,
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let acknowledged = Instant::now();
        loop {
            let (status, body) = r
                .b(Method::POST, "/v1/acme/resolve", Some(&pat), None)
                .await;
            if body["decision"] == "deny" {
                assert_eq!(
                    (status, body["reason"].as_str()),
                    (403, Some("deactivated")),
                    "{body}"
                );
                break;
            }
            assert!(
                acknowledged.elapsed() < Duration::from_secs(5),
                "B still allows a deactivated user: {body}"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        lags.push(acknowledged.elapsed());
    }
    lags.sort();
    let worst = *lags.last().unwrap();
    eprintln!(
        "deactivation on A refused on B after: p50 {:?}, max {:?} (10 users)",
        lags[lags.len() / 2],
        worst
    );
    assert!(
        worst < Duration::from_millis(100),
        "B's log: {}\npropagation took {worst:?}: {lags:?}",
        r.b.stderr()
    );
}

#[tokio::test]
async fn kill_9_of_a_replica_under_scim_load_loses_no_acknowledged_write() {
    let _serial = SERIAL.lock().await;
    let mut r = start();
    let token = r.scim_tenant().await;
    let a_base = r.a.base.clone();
    let client = r.client.clone();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (client, base, token) = (client.clone(), a_base.clone(), token.clone());
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                for i in 0.. {
                    let ext = format!("w{w}-{i}");
                    let user = json!({
                        "schemas": [USER], "userName": format!("{ext}@acme.io"),
                        "externalId": ext, "active": true
                    });
                    match scim_create(&client, &base, &token, &user).await {
                        (201, _) => acknowledged.push(ext),
                        (0, _) => break,
                        (status, body) => panic!("{status} {body}"),
                    }
                }
                acknowledged
            })
        })
        .collect();
    // Let the load run, then kill A without warning.
    let deadline = Instant::now() + Duration::from_secs(30);
    while scim_count(&client, &r.b.base, &token, "").await < 40 {
        assert!(Instant::now() < deadline, "the load never got going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a = std::mem::replace(&mut r.a, replica(&r._dirs, "a2", &r.url));
    a.kill9();
    let mut acknowledged = Vec::new();
    for writer in writers {
        acknowledged.extend(writer.await.unwrap());
    }
    assert!(acknowledged.len() >= 40, "{}", acknowledged.len());
    for ext in &acknowledged {
        let filter = format!("externalId eq \"{ext}\"");
        assert_eq!(
            scim_count(&client, &r.b.base, &token, &filter).await,
            1,
            "acknowledged user {ext} is missing on B"
        );
    }
    // The replacement replica serves the same data.
    let filter = format!("externalId eq \"{}\"", acknowledged[0]);
    assert_eq!(scim_count(&client, &r.a.base, &token, &filter).await, 1);
}

#[tokio::test]
async fn a_policy_activated_on_a_decides_on_b_and_a_rollback_follows() {
    let _serial = SERIAL.lock().await;
    let r = start();
    let (status, body) = r
        .a(
            Method::POST,
            "/api/v1/tenants",
            OP,
            Some(&json!({ "slug": "acme" })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let login = gatehouse_tests::jit_login("ann@acme.io");
    let evaluate = "/api/v1/tenants/acme/policy/evaluate";
    let (status, body) = r.b(Method::POST, evaluate, OP, Some(&login)).await;
    assert_eq!(
        (status, &body["policy_version"]),
        (200, &Value::Null),
        "{body}"
    );

    r.upload_nested_claims(true).await;
    let wait_for = |version: Value| {
        let r = &r;
        let login = &login;
        async move {
            let since = Instant::now();
            loop {
                let (status, body) = r.b(Method::POST, evaluate, OP, Some(login)).await;
                // Zero failed requests on B while the swap propagates.
                assert_eq!(status, 200, "{body}");
                if body["policy_version"] == version {
                    return since.elapsed();
                }
                assert!(
                    since.elapsed() < Duration::from_secs(30),
                    "B never ran version {version}: {body}"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    };
    let activated = wait_for(json!(1)).await;
    let (_, body) = r.b(Method::POST, evaluate, OP, Some(&login)).await;
    assert_eq!(body["policy"], "nested-claims", "{body}");

    let (status, body) = r
        .a(
            Method::POST,
            "/api/v1/tenants/acme/policy/rollback",
            OP,
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let rolled_back = wait_for(Value::Null).await;
    // The activation came before B had compiled the version: B kept answering with the
    // default until its compiler was done (decision 73); the rollback is only a swap.
    eprintln!("policy on B after A's activation: {activated:?}, after rollback: {rolled_back:?}");
    assert!(
        rolled_back < Duration::from_millis(100),
        "activation {activated:?}, rollback {rolled_back:?}"
    );
}

/// Polls `path` on `base` until `done` says the body is what is waited for.
async fn poll_until(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    what: &str,
    done: impl Fn(u16, &Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (status, body) = call(client, base, Method::GET, path, OP, None).await;
        if done(status, &body) {
            return body;
        }
        assert!(Instant::now() < deadline, "never {what}: {status} {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Requests on B from two clients until stopped: (answered, failed, last failure).
fn hammer(
    client: &reqwest::Client,
    base: &str,
    request: &Value,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(u64, u64, String)>> {
    (0..2)
        .map(|_| {
            let (client, base, request, stop) = (
                client.clone(),
                base.to_owned(),
                request.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                let (mut answered, mut failed, mut last) = (0, 0, String::new());
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let (status, body) = call(
                        &client,
                        &base,
                        Method::POST,
                        "/api/v1/tenants/acme/policy/evaluate",
                        OP,
                        Some(&request),
                    )
                    .await;
                    if status == 200 && body["decision"].is_object() {
                        answered += 1;
                    } else {
                        failed += 1;
                        last = format!("{status} {body}");
                    }
                }
                (answered, failed, last)
            })
        })
        .collect()
}

async fn stop_hammer(
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<(u64, u64, String)>>,
) -> u64 {
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut total = 0;
    for client in clients {
        let (answered, failed, last) = client.await.unwrap();
        assert_eq!(failed, 0, "failed requests on B, the last: {last}");
        total += answered;
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_uploaded_on_a_is_compiled_on_b_so_activation_and_rollback_follow_within_100_ms()
{
    let _serial = SERIAL.lock().await;
    let r = start();
    let (status, body) = r
        .a(
            Method::POST,
            "/api/v1/tenants",
            OP,
            Some(&json!({ "slug": "acme" })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    r.upload_nested_claims(false).await;
    // B compiles it in the background, without anyone activating it.
    let compiled_since = Instant::now();
    let overview = poll_until(
        &r.client,
        &r.b.base,
        "/api/v1/tenants/acme/policy",
        "compiled on B",
        |status, body| status == 200 && body["compiled"] == json!([1]),
    )
    .await;
    assert_eq!(overview["active"], Value::Null, "{overview}");
    eprintln!(
        "version 1 compiled on B after {:?}",
        compiled_since.elapsed()
    );

    let login = gatehouse_tests::jit_login("ann@acme.io");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients = hammer(&r.client, &r.b.base, &login, &stop);
    let evaluate = "/api/v1/tenants/acme/policy/evaluate";
    let wait_for = |version: Value| {
        let r = &r;
        let login = &login;
        async move {
            let since = Instant::now();
            loop {
                let (status, body) = r.b(Method::POST, evaluate, OP, Some(login)).await;
                assert_eq!(status, 200, "{body}");
                if body["policy_version"] == version {
                    return (since.elapsed(), body);
                }
                assert!(
                    since.elapsed() < Duration::from_secs(10),
                    "B never ran version {version}: {body}"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    };
    let mut activations = Vec::new();
    let mut rollbacks = Vec::new();
    for _ in 0..5 {
        let (status, body) = r
            .a(
                Method::POST,
                "/api/v1/tenants/acme/policy/activate",
                OP,
                Some(&json!({ "version": 1 })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let (lag, body) = wait_for(json!(1)).await;
        assert_eq!(body["policy"], "nested-claims", "{body}");
        activations.push(lag);
        let (status, body) = r
            .a(
                Method::POST,
                "/api/v1/tenants/acme/policy/rollback",
                OP,
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let (lag, _) = wait_for(Value::Null).await;
        rollbacks.push(lag);
    }
    let answered = stop_hammer(&stop, clients).await;
    activations.sort();
    rollbacks.sort();
    eprintln!(
        "on B after A's acknowledgement: activation p50 {:?} max {:?}, rollback p50 {:?} \
         max {:?}; {answered} requests answered on B meanwhile, none failed",
        activations[2], activations[4], rollbacks[2], rollbacks[4]
    );
    assert!(answered > 0);
    assert!(
        activations[4] < Duration::from_millis(100) && rollbacks[4] < Duration::from_millis(100),
        "activations {activations:?}, rollbacks {rollbacks:?}; B's log: {}",
        r.b.stderr()
    );
}

/// A shadow started on A runs on B too (B counts its own decisions), a promotion on A is
/// in force on B within the bound and stops B's shadow, and a discard on A stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_set_on_a_is_evaluated_on_b_and_its_promotion_follows() {
    let _serial = SERIAL.lock().await;
    let r = start();
    let (status, body) = r
        .a(
            Method::POST,
            "/api/v1/tenants",
            OP,
            Some(&json!({ "slug": "acme" })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let shadow = "/api/v1/tenants/acme/policy/shadow";
    let department = json!({
        "component_base64": base64::engine::general_purpose::STANDARD
            .encode(gatehouse_tests::fixtures::DEPARTMENT_TEAMS),
        "settings": { "allowed_departments": ["Engineering"] },
    });
    let (status, body) = r.a(Method::POST, shadow, OP, Some(&department)).await;
    assert_eq!(status, 201, "{body}");
    let body = poll_until(&r.client, &r.b.base, shadow, "a shadow on B", |s, _| {
        s == 200
    })
    .await;
    assert_eq!(body["candidate"]["name"], "department-teams", "{body}");
    assert_eq!(body["stats"]["evaluated"], 0, "{body}");

    // Decisions made on B: the active (default) policy answers, B's shadow compares.
    let finance = json!({
        "decision": "resolve",
        "input": {
            "idp": "okta", "user_claim": "bob@acme.io", "team_values": ["Finance"],
            "users": [{ "id": "u-1", "email": "bob@acme.io", "status": "active",
                        "matched_by": "email", "teams": [] }],
            "teams": [{ "id": "t-fin", "name": "t-fin", "matched": "Finance" }]
        }
    });
    let evaluate = "/api/v1/tenants/acme/policy/evaluate";
    for _ in 0..3 {
        let (status, body) = r.b(Method::POST, evaluate, OP, Some(&finance)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["policy_version"], Value::Null, "{body}");
        assert_eq!(
            body["decision"]["outcome"]["user"]["teams"],
            json!(["t-fin"]),
            "the active policy answers: {body}"
        );
    }
    let stats = poll_until(&r.client, &r.b.base, shadow, "3 evaluated on B", |s, b| {
        s == 200 && b["stats"]["evaluated"] == 3
    })
    .await;
    assert_eq!(
        stats["stats"],
        json!({ "evaluated": 3, "differed": 3, "failed": 0, "dropped": 0 }),
        "{stats}"
    );
    // A counts only its own decisions.
    let (status, body) = r.a(Method::GET, shadow, OP, None).await;
    assert_eq!(
        (status, &body["stats"]["evaluated"]),
        (200, &json!(0)),
        "{body}"
    );

    // Promoted on A: B runs it within the bound (it compiled the shadow already) and its
    // shadow stops.
    let (status, record) = r
        .a(Method::POST, &format!("{shadow}/promote"), OP, None)
        .await;
    assert_eq!(status, 201, "{record}");
    let promoted = Instant::now();
    loop {
        let (status, body) = r.b(Method::POST, evaluate, OP, Some(&finance)).await;
        assert_eq!(status, 200, "{body}");
        if body["policy_version"] == 1 {
            assert_eq!(
                body["decision"]["outcome"]["user"]["teams"],
                json!([]),
                "{body}"
            );
            break;
        }
        assert!(
            promoted.elapsed() < Duration::from_secs(10),
            "B never ran the promoted version: {body}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let lag = promoted.elapsed();
    poll_until(
        &r.client,
        &r.b.base,
        shadow,
        "the shadow gone on B",
        |s, _| s == 404,
    )
    .await;
    eprintln!("promotion on A in force on B after {lag:?}");
    assert!(lag < Duration::from_millis(100), "{lag:?}");

    // Started again and discarded on A: gone on B too.
    let (status, body) = r.a(Method::POST, shadow, OP, Some(&department)).await;
    assert_eq!(status, 201, "{body}");
    poll_until(
        &r.client,
        &r.b.base,
        shadow,
        "the shadow back on B",
        |s, _| s == 200,
    )
    .await;
    let (status, body) = r.a(Method::DELETE, shadow, OP, None).await;
    assert_eq!(status, 200, "{body}");
    poll_until(&r.client, &r.b.base, shadow, "the discard on B", |s, _| {
        s == 404
    })
    .await;
}

/// A TCP proxy to the cluster that the test can cut (every connection closed, new ones
/// closed on accept) and restore.
struct Proxy {
    port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Proxy {
    fn start(target: u16) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let proxy = Proxy {
            port,
            up: Default::default(),
            open: Default::default(),
        };
        proxy.up.store(true, Ordering::SeqCst);
        let (up, open) = (proxy.up.clone(), proxy.open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if !up.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let mut open = open.lock().unwrap();
                open.push(client.try_clone().unwrap());
                open.push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        proxy
    }

    fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_database_away_writes_answer_503_with_retry_after_and_service_resumes() {
    let _serial = SERIAL.lock().await;
    let url = pg::database_url();
    let name = url.rsplit('/').next().unwrap().to_owned();
    let proxy = Proxy::start(pg::cluster().port);
    let proxied = format!("postgres://postgres@127.0.0.1:{}/{name}", proxy.port);
    let server = gatehouse_tests::TestServer::start_with(|c| c.database_url = Some(proxied)).await;
    server.create_tenant("acme").await;

    proxy.cut();
    let response = server
        .op(Method::POST, "/api/v1/tenants")
        .json(&json!({ "slug": "globex" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["reason"], "store_unavailable", "{body}");
    let ready = server
        .client
        .get(format!("{}/readyz", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 503);

    // Back: the next requests reconnect, without a restart.
    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = server
            .send_json(
                Method::POST,
                "/api/v1/tenants",
                &json!({ "slug": "globex" }),
            )
            .await;
        if status == 201 {
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(
            Instant::now() < deadline,
            "the store never came back: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ready = server
        .client
        .get(format!("{}/readyz", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200);
}

/// A primary with a synchronous streaming standby; both replicas have both hosts in their
/// URL with `target_session_attrs=read-write`. The primary crashes under SCIM load on both
/// replicas and the standby is promoted: every acknowledged create is there, and both
/// replicas take writes again without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_killed_and_its_standby_promoted_under_load_loses_no_acknowledged_write() {
    let _serial = SERIAL.lock().await;
    let (primary, standby) = pg::primary_with_standby("gatehouse");
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/gatehouse?target_session_attrs=read-write",
        primary.port, standby.port
    );
    let r = start_on(url);
    let token = r.scim_tenant().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let since_promotion = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let promoted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let base = if w % 2 == 0 { &r.a.base } else { &r.b.base };
            let (client, base, token) = (r.client.clone(), base.clone(), token.clone());
            let (stop, since_promotion, promoted) =
                (stop.clone(), since_promotion.clone(), promoted.clone());
            tokio::spawn(async move {
                use std::sync::atomic::Ordering;
                let (mut acknowledged, mut refused) = (Vec::new(), 0u64);
                for i in 0.. {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let ext = format!("w{w}-{i}");
                    let user = json!({
                        "schemas": [USER], "userName": format!("{ext}@acme.io"),
                        "externalId": ext, "active": true
                    });
                    match scim_create(&client, &base, &token, &user).await {
                        (201, _) => {
                            acknowledged.push(ext);
                            if promoted.load(Ordering::SeqCst) {
                                since_promotion.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        // The database away: refused, not acknowledged; try the next one.
                        (503, _) => {
                            refused += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        (status, body) => panic!("{status} {body}"),
                    }
                }
                (acknowledged, refused)
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while scim_count(&r.client, &r.b.base, &token, "").await < 40 {
        assert!(Instant::now() < deadline, "the load never got going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    primary.crash();
    standby.promote();
    let failed_over = Instant::now();
    promoted.store(true, std::sync::atomic::Ordering::SeqCst);
    // Service resumes on both replicas, without a restart.
    while since_promotion.load(std::sync::atomic::Ordering::SeqCst) < 20 {
        assert!(
            failed_over.elapsed() < Duration::from_secs(60),
            "writes never resumed after the promotion; A's log: {}\nB's log: {}",
            r.a.stderr(),
            r.b.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resumed = failed_over.elapsed();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (mut acknowledged, mut refused) = (Vec::new(), 0);
    for writer in writers {
        let (a, n) = writer.await.unwrap();
        acknowledged.extend(a);
        refused += n;
    }
    eprintln!(
        "failover: {} creates acknowledged, {refused} refused with 503 meanwhile, writes resumed \
         {resumed:?} after the promotion",
        acknowledged.len()
    );
    for (i, ext) in acknowledged.iter().enumerate() {
        let base = if i % 2 == 0 { &r.a.base } else { &r.b.base };
        let filter = format!("externalId eq \"{ext}\"");
        assert_eq!(
            scim_count(&r.client, base, &token, &filter).await,
            1,
            "acknowledged user {ext} is missing after the failover"
        );
    }
    // And the promoted standby is what answered.
    assert_eq!(standby.query("SELECT pg_is_in_recovery()::text"), "false");
}
