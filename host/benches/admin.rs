//! Admin API benchmark: `cargo bench -p gatehouse --bench admin`.
//!
//! Reports, in one run:
//! - the cost of recomputing the roles of a 10,000-member team when its role changes
//!   (one batched policy call, the member index, the users' side table, one durable
//!   batch), with each storage step timed alone;
//! - admin API write throughput (invitations: durable, audited) and read throughput
//!   (user reads, user list pages) over HTTP on loopback with concurrent clients.

use gatehouse::app::{App, Caller, NewTeam, TeamPatch};
use gatehouse::config::Config;
use gatehouse::identity::{Email, User};
use gatehouse::store::{Batch, Space};
use gatehouse_rules::{Role, RoleSource, UserSource, UserStatus};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOKEN: &str = "bench-operator-token-000";

fn main() {
    let data = tempfile::tempdir().unwrap();
    let config = Config {
        data: data.path().join("db"),
        operator_token: Some(TOKEN.into()),
        ..Default::default()
    };
    let (app, _) = App::open(&config).unwrap();
    let app = Arc::new(app);
    app.create_tenant_with_admin("acme", Some("admin@acme.io"), "bench")
        .unwrap();
    println!("| measurement | n | p50 | p99 / total | target |");
    println!("|---|---|---|---|---|");
    role_recomputation(&app);
    http_throughput(app);
}

/// 10,000 users written straight to the store (setup, not measured), one team holding
/// them all, then its role toggled: every toggle recomputes 10,000 roles.
fn role_recomputation(app: &App) {
    let everyone = app
        .teams("acme", &Caller::Operator)
        .unwrap()
        .remove(0)
        .team
        .id;
    let now = time::OffsetDateTime::now_utc();
    let mut ids = Vec::new();
    for chunk in 0..10 {
        let mut batch = Batch::new("acme");
        for i in 0..1000 {
            let email = Email::parse(&format!("user{chunk}-{i}@acme.io")).unwrap();
            let user = User {
                id: format!("usr_bench{chunk:02}{i:04}"),
                email: email.as_str().to_owned(),
                display_name: None,
                given_name: None,
                family_name: None,
                external_id: None,
                status: UserStatus::Active,
                source: UserSource::Invite,
                role: Role::Member,
                role_source: RoleSource::Initial,
                manual_role: (i % 50 == 0).then_some(Role::Member),
                password_hash: None,
                mappings: Vec::new(),
                deactivated_at: None,
                created_at: now,
                updated_at: now,
            };
            batch
                .put(&[&user.id], &user)
                .put_raw(Space::UserEmails, &[&email.key()], user.id.as_bytes())
                .put_raw(Space::Members, &[&everyone, &user.id], b"")
                .put_raw(Space::UserTeams, &[&user.id, &everyone], b"");
            ids.push(user.id);
        }
        app.store.apply(&batch).unwrap();
    }
    let started = Instant::now();
    let team = app
        .create_team(
            "acme",
            NewTeam {
                name: "big".into(),
                role: None,
                members: ids,
                mappings: vec![],
            },
            &Caller::Operator,
        )
        .unwrap();
    let created = started.elapsed();
    println!(
        "| create a team with 10,000 members (memberships + roles + audit, durable) | 1 | {} | | |",
        fmt(created)
    );
    let mut samples = Vec::new();
    for round in 0..6 {
        let role = if round % 2 == 0 {
            Some(Role::Admin)
        } else {
            None
        };
        let started = Instant::now();
        app.patch_team(
            "acme",
            &team.team.id,
            TeamPatch {
                role: Some(role),
                ..Default::default()
            },
            &Caller::Operator,
        )
        .unwrap();
        samples.push(started.elapsed());
    }
    samples.sort();
    let decided = Instant::now();
    let users: Vec<gatehouse_rules::RoleInput> = (0..10_000)
        .map(|_| gatehouse_rules::RoleInput {
            manual: None,
            team_roles: vec![Role::Admin, Role::Member],
        })
        .collect();
    let policy = app.current_policy("acme").unwrap();
    policy.effective_role(&app.engine, &users).unwrap();
    let policy_only = decided.elapsed();
    println!(
        "| change the role of a 10,000-member team (recompute every member, durable) | {} | {} | max {} | ≤ 100 ms |",
        samples.len(),
        fmt(samples[samples.len() / 2]),
        fmt(*samples.last().unwrap())
    );
    println!(
        "| of which: the policy's batched `effective-role` for 10,000 users | 1 | {} | | |",
        fmt(policy_only)
    );
    // The storage steps of one recomputation, each timed alone through the same store API
    // the operation uses (the breakdown BENCHMARKS.md quotes).
    let started = Instant::now();
    let members = app
        .store
        .index(Space::Members, "acme", &[&team.team.id])
        .unwrap();
    let scan = started.elapsed();
    let started = Instant::now();
    let names: Vec<&str> = members.iter().map(String::as_str).collect();
    let parts = app.store.sides(Space::UserSides, "acme", &names).unwrap();
    assert!(parts.iter().all(Option::is_some));
    let read = started.elapsed();
    let started = Instant::now();
    let mut batch = Batch::new("acme");
    for (id, part) in members.iter().zip(parts) {
        batch.put_side::<User>(&[id], part.unwrap());
    }
    app.store.apply(&batch).unwrap();
    let write = started.elapsed();
    let started = Instant::now();
    let whole: Vec<User> = members
        .iter()
        .map(|id| app.store.get::<User>("acme", &[id]).unwrap().unwrap())
        .collect();
    let read_whole = started.elapsed();
    let started = Instant::now();
    let mut batch = Batch::new("acme");
    for user in &whole {
        batch.put(&[&user.id], user);
    }
    app.store.apply(&batch).unwrap();
    let write_whole = started.elapsed();
    for (what, took) in [
        ("iterate the team's 10,000 member index entries", scan),
        ("read the 10,000 members' role states (side table)", read),
        ("write 10,000 role states durably (side table)", write),
        (
            "for comparison: read the 10,000 whole user records",
            read_whole,
        ),
        (
            "for comparison: write 10,000 whole user records durably",
            write_whole,
        ),
    ] {
        println!("| of which: {what} | 1 | {} | | |", fmt(took));
    }
}

/// Concurrent clients on loopback for a fixed time; reports requests per second.
fn http_throughput(app: Arc<App>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(gatehouse::http::serve(
            app,
            listener,
            std::future::pending(),
        ));
        let client = reqwest::Client::new();
        let (_, user) = {
            let response = client
                .post(format!("{base}/api/v1/tenants/acme/users"))
                .bearer_auth(TOKEN)
                .json(&serde_json::json!({ "email": "reader@acme.io" }))
                .send()
                .await
                .unwrap();
            ((), response.json::<serde_json::Value>().await.unwrap())
        };
        let user_id = user["id"].as_str().unwrap().to_owned();
        let counter = Arc::new(AtomicUsize::new(0));
        let write = load(
            &client,
            &base,
            8,
            Duration::from_secs(3),
            |n| {
                (
                    reqwest::Method::POST,
                    "/api/v1/tenants/acme/users".to_owned(),
                    Some(serde_json::json!({ "email": format!("w{n}@acme.io") })),
                )
            },
            counter.clone(),
        )
        .await;
        println!(
            "| invite users over HTTP (durable, audited), 8 clients | {} | | {:.0} req/s | |",
            write.0, write.1
        );
        let read = load(
            &client,
            &base,
            8,
            Duration::from_secs(3),
            move |_| {
                (
                    reqwest::Method::GET,
                    format!("/api/v1/tenants/acme/users/{user_id}"),
                    None,
                )
            },
            counter.clone(),
        )
        .await;
        println!(
            "| read a user over HTTP, 8 clients | {} | | {:.0} req/s | |",
            read.0, read.1
        );
        let list = load(
            &client,
            &base,
            8,
            Duration::from_secs(3),
            |_| {
                (
                    reqwest::Method::GET,
                    "/api/v1/tenants/acme/users?limit=50".to_owned(),
                    None,
                )
            },
            counter,
        )
        .await;
        println!(
            "| list a page of 50 users (of 10,000+) over HTTP, 8 clients | {} | | {:.0} req/s | |",
            list.0, list.1
        );
    });
}

type Request = (reqwest::Method, String, Option<serde_json::Value>);

async fn load(
    client: &reqwest::Client,
    base: &str,
    clients: usize,
    duration: Duration,
    request: impl Fn(usize) -> Request + Send + Sync + Clone + 'static,
    counter: Arc<AtomicUsize>,
) -> (usize, f64) {
    let started = Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..clients {
        let (client, base, request, counter, done) = (
            client.clone(),
            base.to_owned(),
            request.clone(),
            counter.clone(),
            done.clone(),
        );
        workers.push(tokio::spawn(async move {
            while started.elapsed() < duration {
                let (method, path, body) = request(counter.fetch_add(1, Ordering::Relaxed));
                let mut builder = client
                    .request(method, format!("{base}{path}"))
                    .bearer_auth(TOKEN);
                if let Some(body) = body {
                    builder = builder.json(&body);
                }
                let response = builder.send().await.unwrap();
                assert!(response.status().is_success(), "{}", response.status());
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    let n = done.load(Ordering::Relaxed);
    (n, n as f64 / started.elapsed().as_secs_f64())
}

fn fmt(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{:.1} µs", d.as_secs_f64() * 1e6)
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    }
}
