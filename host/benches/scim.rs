//! SCIM benchmark: `cargo bench -p gatehouse --bench scim`.
//!
//! Reports, in one run:
//! - user creates per second (in-process, sequential; and over HTTP with 8 clients);
//! - `filter=userName eq "…"` lookups over HTTP among 13,000+ users: throughput and p99;
//! - PATCH adding 1,000 members to a group of 10,000 (target ≤ 200 ms);
//! - GET of the 10,000-member group with `excludedAttributes=members` (target ≤ 5 ms);
//! - single-resource reads paced at 500 requests/s (target p99 ≤ 5 ms).

use gatehouse::app::{App, Caller, SsoInput};
use gatehouse::config::Config;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOKEN: &str = "bench-operator-token-000";
const USERS: usize = 13_000;

fn main() {
    let data = tempfile::tempdir().unwrap();
    let config = Config {
        data: data.path().join("db"),
        operator_token: Some(TOKEN.into()),
        ..Default::default()
    };
    let mut config = config;
    // The benchmark is the only client: no rate limit in the way.
    config.scim.rate_per_second = 1_000_000;
    config.scim.burst = 1_000_000;
    config.scim.max_body_kib = 8192;
    let (app, _) = App::open(&config).unwrap();
    let app = Arc::new(app);
    app.create_tenant_with_admin("acme", Some("admin@acme.io"), "bench")
        .unwrap();
    app.set_mode("acme", "scim", &Caller::Operator).unwrap();
    app.put_sso_config(
        "acme",
        SsoInput {
            id: "idp".into(),
            issuer: "https://idp.example.com".into(),
            client_id: "gatehouse".into(),
            client_secret: None,
            discovery_url: None,
            jwks_uri: Some("https://203.0.113.10/jwks".into()),
            email_claim: None,
            unique_id_claim: None,
        },
        true,
        &Caller::Operator,
    )
    .unwrap();
    let token = app
        .generate_scim_token("acme", "idp", &Caller::Operator)
        .unwrap()
        .token;
    let conn = app.scim_connect("acme", "idp", Some(&token)).unwrap();

    println!("| measurement | n | p50 | p99 / rate | target |");
    println!("|---|---|---|---|---|");

    // Users, in process: each create is a durable, audited batch.
    let started = Instant::now();
    let mut ids = Vec::with_capacity(USERS);
    for i in 0..USERS {
        let (user, _) = app
            .scim_create_user(
                &conn,
                &user_body(&format!("u{i}@acme.io"), &format!("ext{i}")),
            )
            .unwrap();
        ids.push(user["id"].as_str().unwrap().to_owned());
    }
    let elapsed = started.elapsed();
    println!(
        "| create a user in process (durable, audited), sequential | {USERS} | | {:.0} /s | |",
        USERS as f64 / elapsed.as_secs_f64()
    );

    // A group of 10,000, built 1,000 at a time.
    let (group, _, _) = app
        .scim_create_group(&conn, &json!({ "displayName": "big" }))
        .unwrap();
    let gid = group["id"].as_str().unwrap().to_owned();
    let mut building = Vec::new();
    for chunk in ids[..10_000].chunks(1000) {
        let started = Instant::now();
        app.scim_patch_group(&conn, &gid, &add(chunk), None, false)
            .unwrap();
        building.push(started.elapsed());
    }
    report(
        "PATCH add 1,000 members while the group grows 0 → 10,000",
        building,
        "",
    );
    let extra = &ids[10_000..11_000];
    let mut adds = Vec::new();
    for _ in 0..7 {
        let started = Instant::now();
        app.scim_patch_group(&conn, &gid, &add(extra), None, false)
            .unwrap();
        adds.push(started.elapsed());
        let remove: Vec<Value> = extra
            .iter()
            .map(|id| json!({ "op": "remove", "path": format!("members[value eq \"{id}\"]") }))
            .collect();
        app.scim_patch_group(&conn, &gid, &json!({ "Operations": remove }), None, false)
            .unwrap();
    }
    report(
        "PATCH add 1,000 members to a 10,000-member group (in process, durable)",
        adds,
        "≤ 200 ms",
    );

    http(app, token, ids, gid);
}

fn user_body(email: &str, ext: &str) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": email, "externalId": ext, "active": true,
        "name": { "givenName": "Bench", "familyName": "User" },
        "emails": [{ "value": email, "type": "work", "primary": true }]
    })
}

fn add(ids: &[String]) -> Value {
    let members: Vec<Value> = ids.iter().map(|id| json!({ "value": id })).collect();
    json!({ "Operations": [{ "op": "add", "path": "members", "value": members }] })
}

fn report(what: &str, mut samples: Vec<Duration>, target: &str) {
    samples.sort();
    let p =
        |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
    println!(
        "| {what} | {} | {} | p99 {} (max {}) | {target} |",
        samples.len(),
        fmt(p(0.5)),
        fmt(p(0.99)),
        fmt(*samples.last().unwrap())
    );
}

fn http(app: Arc<App>, token: String, ids: Vec<String>, gid: String) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/scim/v2/acme/idp", listener.local_addr().unwrap());
        tokio::spawn(gatehouse::http::serve(app, listener, std::future::pending()));
        let client = reqwest::Client::new();
        let token = Arc::new(token);

        // Creates over HTTP, 8 clients.
        let counter = Arc::new(AtomicUsize::new(0));
        let (n, rate, samples) = load(&client, &base, &token, 8, Duration::from_secs(3), move |_| {
            let n = counter.fetch_add(1, Ordering::Relaxed);
            (reqwest::Method::POST, "/Users".to_owned(), Some(user_body(&format!("h{n}@acme.io"), &format!("h{n}"))))
        })
        .await;
        println!("| create a user over HTTP (durable, audited), 8 clients | {n} | {} | {rate:.0} /s | |", fmt(pct(&samples, 0.5)));

        // userName lookups.
        let ids_len = ids.len();
        let (n, rate, samples) = load(&client, &base, &token, 8, Duration::from_secs(3), move |k| {
            let i = (k * 7919) % ids_len;
            (reqwest::Method::GET, format!("/Users?filter=userName%20eq%20%22u{i}%40acme.io%22"), None)
        })
        .await;
        println!(
            "| `filter=userName eq` lookup over HTTP, 8 clients | {n} | {} | p99 {} ; {rate:.0} /s | |",
            fmt(pct(&samples, 0.5)),
            fmt(pct(&samples, 0.99))
        );

        // GET of the 10,000-member group without members, one client.
        let mut samples = Vec::new();
        for _ in 0..2000 {
            let started = Instant::now();
            let response = client
                .get(format!("{base}/Groups/{gid}?excludedAttributes=members"))
                .bearer_auth(token.as_str())
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            response.bytes().await.unwrap();
            samples.push(started.elapsed());
        }
        report("GET a 10,000-member group with excludedAttributes=members (HTTP)", samples, "≤ 5 ms");
        let mut samples = Vec::new();
        for _ in 0..20 {
            let started = Instant::now();
            let response = client.get(format!("{base}/Groups/{gid}")).bearer_auth(token.as_str()).send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.bytes().await.unwrap();
            samples.push(started.elapsed());
        }
        report("GET the same group with its 10,000 members (HTTP)", samples, "");

        // Single-resource reads paced at 500/s (open loop: a request every 2 ms).
        let samples = Arc::new(Mutex::new(Vec::new()));
        let mut interval = tokio::time::interval(Duration::from_millis(2));
        let mut tasks = Vec::new();
        for k in 0..2500 {
            interval.tick().await;
            let (client, base, token, samples) = (client.clone(), base.clone(), token.clone(), samples.clone());
            let id = ids[(k * 31) % ids.len()].clone();
            tasks.push(tokio::spawn(async move {
                let started = Instant::now();
                let response = client.get(format!("{base}/Users/{id}")).bearer_auth(token.as_str()).send().await.unwrap();
                assert_eq!(response.status(), 200);
                response.bytes().await.unwrap();
                samples.lock().unwrap().push(started.elapsed());
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let samples = std::mem::take(&mut *samples.lock().unwrap());
        report("GET /Users/{id} paced at 500 requests/s (HTTP)", samples, "p99 ≤ 5 ms");
    });
}

type Request = (reqwest::Method, String, Option<Value>);

async fn load(
    client: &reqwest::Client,
    base: &str,
    token: &Arc<String>,
    clients: usize,
    duration: Duration,
    request: impl Fn(usize) -> Request + Send + Sync + Clone + 'static,
) -> (usize, f64, Vec<Duration>) {
    let started = Instant::now();
    let all = Arc::new(Mutex::new(Vec::new()));
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..clients {
        let (client, base, token, request, all, next) = (
            client.clone(),
            base.to_owned(),
            token.clone(),
            request.clone(),
            all.clone(),
            next.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while started.elapsed() < duration {
                let (method, path, body) = request(next.fetch_add(1, Ordering::Relaxed));
                let mut builder = client
                    .request(method, format!("{base}{path}"))
                    .bearer_auth(token.as_str());
                if let Some(body) = body {
                    builder = builder.json(&body);
                }
                let sent = Instant::now();
                let response = builder.send().await.unwrap();
                assert!(response.status().is_success(), "{}", response.status());
                response.bytes().await.unwrap();
                mine.push(sent.elapsed());
            }
            all.lock().unwrap().extend(mine);
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    let mut samples = std::mem::take(&mut *all.lock().unwrap());
    samples.sort();
    let n = samples.len();
    (n, n as f64 / started.elapsed().as_secs_f64(), samples)
}

fn pct(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn fmt(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{:.1} µs", d.as_secs_f64() * 1e6)
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    }
}
