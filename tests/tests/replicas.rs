//! Equal replicas on one PostgreSQL database: two real `gatehouse serve` processes (each
//! with a data directory of its own for its artifact cache) on a fresh database of the
//! test binary's cluster (tests/pg.rs).

use gatehouse_tests::{pg, Process, OPERATOR_TOKEN};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const OP: Option<&str> = Some(OPERATOR_TOKEN);
const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";

struct Replicas {
    _dirs: tempfile::TempDir,
    a: Process,
    b: Process,
    url: String,
    client: reqwest::Client,
}

impl Drop for Replicas {
    fn drop(&mut self) {
        for process in [&mut self.a, &mut self.b] {
            let _ = process.child.kill();
            let _ = process.child.wait();
        }
    }
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
    let url = pg::database_url();
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
    use base64::Engine;
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

    let upload = json!({
        "component_base64": base64::engine::general_purpose::STANDARD
            .encode(gatehouse_tests::fixtures::NESTED_CLAIMS),
        "settings": {},
        "activate": true,
    });
    let (status, body) = r
        .a(
            Method::POST,
            "/api/v1/tenants/acme/policy/versions",
            OP,
            Some(&upload),
        )
        .await;
    assert_eq!(status, 201, "{body}");
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
    eprintln!("policy on B after A's activation: {activated:?}, after rollback: {rolled_back:?}");
    // A rollback to a version B already runs needs no compile: the 100 ms bound holds.
    // (The activation includes B compiling the new component for itself: decision 54.)
    assert!(
        rolled_back < Duration::from_millis(100),
        "activation {activated:?}, rollback {rolled_back:?}"
    );
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
