//! Edge evaluator benchmark: `cargo bench -p gatehouse --bench edge`.
//!
//! Reports, in one run on this machine:
//! - the raw RS256 verification rate of the benchmark's tokens with `jsonwebtoken` alone
//!   (`decode` with the same public key), single thread;
//! - in process, single thread: resolve of (a) unique RS256 tokens (every one verified and
//!   resolved through the policy), (b) one repeated token (verified-result cache),
//!   (c) PATs — throughput, p50 and p99;
//! - over HTTP with keep-alive, the load generator in the same process on the same 2
//!   cores: `/healthz` and `/v1/{tenant}/resolve` with a repeated token, same generator,
//!   same connections; then `/resolve` at a fixed rate of half that throughput (32 paced
//!   connections), p50/p99.

use gatehouse::app::{App, Caller, IdpInput, Invite, LoginMethod, NewToken};
use gatehouse::config::Config;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOKEN: &str = "bench-operator-token-000";
const ISSUER: &str = "https://idp.bench/corp";
const UNIQUE: usize = 3_000;

fn keys_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/keys")
}

fn fmt(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.1} µs")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    (
        samples[samples.len() / 2],
        samples[(samples.len() * 99 / 100).min(samples.len() - 1)],
    )
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn run() {
    let jwks: Value =
        serde_json::from_str(&std::fs::read_to_string(keys_dir().join("jwks.json")).unwrap())
            .unwrap();
    let public = jwks["rsa-a"].clone();
    // The key set, served on loopback.
    let set = json!({ "keys": [public.clone()] }).to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jwks_url = format!("http://{}/jwks", listener.local_addr().unwrap());
    let router = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || {
            let set = set.clone();
            async move { ([("cache-control", "max-age=3600")], set) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

    let data = tempfile::tempdir().unwrap();
    let mut config = Config {
        data: data.path().join("db"),
        operator_token: Some(TOKEN.into()),
        allow_private_urls: true,
        ..Default::default()
    };
    config.edge.decision_log = false;
    let (app, _) = App::open(&config).unwrap();
    let app = Arc::new(app);
    app.create_tenant_with_admin("acme", Some("admin@acme.io"), "bench")
        .unwrap();
    let op = Caller::Operator;
    app.put_identity_provider(
        "acme",
        serde_json::from_value::<IdpInput>(json!({
            "name": "corp", "issuer": ISSUER, "jwks_uri": jwks_url, "audiences": ["api"],
            "algorithms": ["RS256"], "user_claim": "email", "team_claim": "groups"
        }))
        .unwrap(),
        true,
        &op,
    )
    .unwrap();
    let user = app
        .invite_user(
            "acme",
            serde_json::from_value::<Invite>(json!({ "email": "ann@acme.io" })).unwrap(),
            &op,
        )
        .unwrap();
    app.set_user_active("acme", &user.id, true, &op).unwrap();
    let pat = app
        .create_pat(
            "acme",
            &user.id,
            serde_json::from_value::<NewToken>(json!({ "name": "bench" })).unwrap(),
            &op,
        )
        .unwrap()
        .secret;

    // Unique tokens (distinct `jti`), signed up front.
    let pem = std::fs::read(keys_dir().join("rsa-a.pem")).unwrap();
    let signing = EncodingKey::from_rsa_pem(&pem).unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa-a".into());
    let exp = time::OffsetDateTime::now_utc().unix_timestamp() + 3600;
    let tokens: Vec<String> = (0..UNIQUE)
        .map(|i| {
            jsonwebtoken::encode(
                &header,
                &json!({ "iss": ISSUER, "aud": "api", "exp": exp, "jti": i,
                         "email": "ann@acme.io", "groups": ["eng"] }),
                &signing,
            )
            .unwrap()
        })
        .collect();

    println!("| measurement | n | throughput | p50 | p99 | target |");
    println!("|---|---|---|---|---|---|");

    // Raw verification with jsonwebtoken alone.
    let key = DecodingKey::from_rsa_components(
        public["n"].as_str().unwrap(),
        public["e"].as_str().unwrap(),
    )
    .unwrap();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&["api"]);
    validation.set_issuer(&[ISSUER]);
    // Warm the key set and the claim map.
    let auth = |t: &str| format!("Bearer {t}");
    let warm = auth(&tokens[0]);
    let result = app.resolve_token("acme", &[warm.as_bytes()]).await.result;
    assert!(result.is_ok(), "{result:?}");

    // Raw verification and (a) alternate over chunks of the same tokens, so both see the
    // same machine conditions; each token is verified raw once and resolved once.
    let (mut raw, mut resolved) = (Vec::with_capacity(UNIQUE), Vec::with_capacity(UNIQUE));
    let (mut raw_total, mut resolve_total) = (Duration::ZERO, Duration::ZERO);
    for chunk in tokens[1..].chunks(250) {
        let started = Instant::now();
        for token in chunk {
            let t = Instant::now();
            jsonwebtoken::decode::<Value>(token, &key, &validation).unwrap();
            raw.push(t.elapsed());
        }
        raw_total += started.elapsed();
        let headers: Vec<String> = chunk.iter().map(|t| auth(t)).collect();
        let started = Instant::now();
        for header in &headers {
            let t = Instant::now();
            let evaluation = app.resolve_token("acme", &[header.as_bytes()]).await;
            resolved.push(t.elapsed());
            assert!(evaluation.result.is_ok() && !evaluation.cache_hit);
        }
        resolve_total += started.elapsed();
    }
    let n = raw.len();
    let raw_rate = n as f64 / raw_total.as_secs_f64();
    let rate = n as f64 / resolve_total.as_secs_f64();
    let (p50, p99) = percentiles(raw);
    println!(
        "| raw RS256 `jsonwebtoken::decode`, same tokens, 1 thread | {n} | {raw_rate:.0}/s | {} | {} | |",
        fmt(p50),
        fmt(p99)
    );
    let (p50, p99) = percentiles(resolved);
    println!(
        "| (a) resolve unique RS256 tokens, in process, 1 thread | {n} | {rate:.0}/s ({:.0} % of raw) | {} | {} | ≥ 80 % of raw |",
        rate / raw_rate * 100.0,
        fmt(p50),
        fmt(p99)
    );

    // (b) one repeated token (cache hits).
    let repeated = auth(&tokens[1]);
    let n = 200_000;
    let mut samples = Vec::with_capacity(n);
    let started = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        let evaluation = app.resolve_token("acme", &[repeated.as_bytes()]).await;
        samples.push(t.elapsed());
        assert!(evaluation.cache_hit);
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let (p50, p99) = percentiles(samples);
    println!(
        "| (b) resolve a repeated token (cache), in process, 1 thread | {n} | {rate:.0}/s | {} | {} | |",
        fmt(p50),
        fmt(p99)
    );

    // (c) PATs.
    let pat_header = auth(&pat);
    let mut samples = Vec::with_capacity(n);
    let started = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        let evaluation = app.resolve_token("acme", &[pat_header.as_bytes()]).await;
        samples.push(t.elapsed());
        assert!(evaluation.result.is_ok());
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let (p50, p99) = percentiles(samples);
    println!(
        "| (c) resolve a PAT, in process, 1 thread | {n} | {rate:.0}/s | {} | {} | |",
        fmt(p50),
        fmt(p99)
    );

    // (d) Gatehouse session tokens (EdDSA): the first use of each verifies the signature;
    // later uses are result-cache hits until the tenant's identity data changes.
    let n_first = 2_000;
    let mut fresh = Vec::with_capacity(n_first);
    for _ in 0..n_first {
        let token = app
            .issue_session(
                "acme",
                &user.id,
                LoginMethod::Sso("corp".into()),
                time::OffsetDateTime::now_utc(),
            )
            .unwrap()
            .token;
        fresh.push(auth(&token));
    }
    let mut samples = Vec::with_capacity(n_first);
    let started = Instant::now();
    for header in &fresh {
        let t = Instant::now();
        let evaluation = app.resolve_token("acme", &[header.as_bytes()]).await;
        samples.push(t.elapsed());
        assert!(evaluation.result.is_ok() && !evaluation.cache_hit);
    }
    let rate = n_first as f64 / started.elapsed().as_secs_f64();
    let (p50, p99) = percentiles(samples);
    println!(
        "| (d) first use of a session token (`ghs_`, EdDSA signature check), in process, 1 thread | {n_first} | {rate:.0}/s | {} | {} | |",
        fmt(p50),
        fmt(p99)
    );
    let session = app
        .issue_session(
            "acme",
            &user.id,
            LoginMethod::Sso("corp".into()),
            time::OffsetDateTime::now_utc(),
        )
        .unwrap()
        .token;
    let session_header = auth(&session);
    let warm = app
        .resolve_token("acme", &[session_header.as_bytes()])
        .await;
    assert!(warm.result.is_ok(), "{:?}", warm.result);
    let n_session = 20_000;
    let mut samples = Vec::with_capacity(n_session);
    let started = Instant::now();
    for _ in 0..n_session {
        let t = Instant::now();
        let evaluation = app
            .resolve_token("acme", &[session_header.as_bytes()])
            .await;
        samples.push(t.elapsed());
        assert!(evaluation.result.is_ok() && evaluation.cache_hit);
    }
    let rate = n_session as f64 / started.elapsed().as_secs_f64();
    let (p50, p99) = percentiles(samples);
    println!(
        "| (d) resolve a session token again (result cache), in process, 1 thread | {n_session} | {rate:.0}/s | {} | {} | |",
        fmt(p50),
        fmt(p99)
    );

    // Over HTTP.
    // The server runs on a runtime of its own (2 workers), the load generator on the
    // bench's: they share the 2 cores, as a gateway on the same host would.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server_app = app.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            gatehouse::http::serve(server_app, listener, std::future::pending())
                .await
                .unwrap();
        });
    });
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let clients = 16;
    let window = Duration::from_secs(4);
    let health = saturate(&client, &format!("{base}/healthz"), None, clients, window).await;
    let resolve = saturate(
        &client,
        &format!("{base}/v1/acme/resolve"),
        Some(repeated.clone()),
        clients,
        window,
    )
    .await;
    let pat_http = saturate(
        &client,
        &format!("{base}/v1/acme/resolve"),
        Some(pat_header.clone()),
        clients,
        window,
    )
    .await;
    let session_http = saturate(
        &client,
        &format!("{base}/v1/acme/forward-auth"),
        Some(session_header.clone()),
        clients,
        window,
    )
    .await;
    println!(
        "| `/healthz` over HTTP, keep-alive, {clients} connections | {} | {:.0}/s | | | reference |",
        health.0, health.1
    );
    println!(
        "| (b) `/v1/acme/resolve`, repeated token, over HTTP, {clients} connections | {} | {:.0}/s ({:.0} % of /healthz) | | | ≥ 60 % of /healthz |",
        resolve.0,
        resolve.1,
        resolve.1 / health.1 * 100.0
    );
    println!(
        "| (c) `/v1/acme/resolve`, PAT, over HTTP, {clients} connections | {} | {:.0}/s ({:.0} % of /healthz) | | | |",
        pat_http.0,
        pat_http.1,
        pat_http.1 / health.1 * 100.0
    );
    println!(
        "| (d) `/v1/acme/forward-auth`, session token, over HTTP, {clients} connections | {} | {:.0}/s ({:.0} % of /healthz) | | | |",
        session_http.0,
        session_http.1,
        session_http.1 / health.1 * 100.0
    );
    let rate = resolve.1 / 2.0;
    let (sent, p50, p99) = fixed_rate(
        &client,
        &format!("{base}/v1/acme/resolve"),
        &repeated,
        rate,
        Duration::from_secs(4),
    )
    .await;
    println!(
        "| (b) `/v1/acme/resolve` at a fixed {rate:.0}/s (half the throughput) | {sent} | | {} | {} | p99 ≤ 2 ms |",
        fmt(p50),
        fmt(p99)
    );
}

/// `clients` concurrent keep-alive loops for `window`; returns (requests, requests/s).
async fn saturate(
    client: &reqwest::Client,
    url: &str,
    authorization: Option<String>,
    clients: usize,
    window: Duration,
) -> (usize, f64) {
    let done = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, url, auth) = (client.clone(), url.to_owned(), authorization.clone());
        let (done, count) = (done.clone(), count.clone());
        tasks.push(tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let mut request = client.post(&url);
                if url.ends_with("/healthz") {
                    request = client.get(&url);
                }
                if let Some(auth) = &auth {
                    request = request.header("authorization", auth);
                }
                let response = request.send().await.unwrap();
                assert!(response.status().is_success(), "{}", response.status());
                response.bytes().await.unwrap();
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start_count = count.load(Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let n = count.load(Ordering::Relaxed) - start_count;
    let elapsed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    (n, n as f64 / elapsed.as_secs_f64())
}

/// Requests started at a fixed rate (open loop) for `window`; latency of each.
async fn fixed_rate(
    client: &reqwest::Client,
    url: &str,
    authorization: &str,
    rate: f64,
    window: Duration,
) -> (usize, Duration, Duration) {
    // 32 paced connections, each sending one request per period (rate / 32 per second,
    // periods above the timer's 1 ms resolution), offset from each other so the aggregate
    // is smooth rather than bursts. Latency counts from when a request is sent: the timer's
    // lag (up to its 1 ms resolution) belongs to the generator, not to the server.
    const LANES: usize = 32;
    let period = Duration::from_secs_f64(LANES as f64 / rate);
    let start = tokio::time::Instant::now() + Duration::from_millis(10);
    let mut lanes = Vec::new();
    for lane in 0..LANES {
        let (client, url, auth) = (client.clone(), url.to_owned(), authorization.to_owned());
        let first = start + period.mul_f64(lane as f64 / LANES as f64);
        lanes.push(tokio::spawn(async move {
            let mut ticker = tokio::time::interval_at(first, period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut samples = Vec::new();
            let end = first + window;
            loop {
                let due = ticker.tick().await;
                if due >= end {
                    break;
                }
                let sent = Instant::now();
                let response = client
                    .post(&url)
                    .header("authorization", &auth)
                    .send()
                    .await
                    .unwrap();
                response.bytes().await.unwrap();
                samples.push(sent.elapsed());
            }
            samples
        }));
    }
    let mut samples = Vec::new();
    for lane in lanes {
        samples.extend(lane.await.unwrap());
    }
    let n = samples.len();
    let (p50, p99) = percentiles(samples);
    (n, p50, p99)
}
