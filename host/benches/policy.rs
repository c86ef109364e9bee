//! Policy engine benchmark: `cargo bench -p gatehouse --bench policy`.
//!
//! Reports, in one run on this machine:
//! - evaluation cost per decision on a fresh instance (p50, p99) for each decision kind;
//! - component compile time (upload → compiled);
//! - activation of a precompiled policy (artifact → runnable, and the full durable
//!   activation through the app, store flush included);
//! - startup with 1,000 tenants whose policies are precompiled (`App::open`).
//!
//! It measures each call with `Instant` (about 25 ns of overhead) because the targets are
//! percentiles, which a mean-based harness does not report.

use gatehouse::app::{App, Upload};
use gatehouse::config::Config;
use gatehouse::policy::{Limits, PolicyEngine, DEFAULT_POLICY};
use gatehouse::store::{NewPolicyVersion, PolicyVersionRecord, Store, TenantRecord};
use gatehouse_rules as rules;
use std::time::{Duration, Instant};

struct Stats {
    samples: Vec<Duration>,
}

impl Stats {
    fn measure(iterations: usize, mut f: impl FnMut()) -> Stats {
        for _ in 0..(iterations / 10).max(1) {
            f(); // warm-up
        }
        let mut samples = Vec::with_capacity(iterations);
        for _ in 0..iterations {
            let start = Instant::now();
            f();
            samples.push(start.elapsed());
        }
        samples.sort();
        Stats { samples }
    }

    fn pct(&self, p: f64) -> Duration {
        let i = ((self.samples.len() as f64 - 1.0) * p).round() as usize;
        self.samples[i]
    }
}

fn fmt(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{:.1} µs", d.as_secs_f64() * 1e6)
    } else {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    }
}

fn row(what: &str, stats: &Stats, target: &str) {
    println!(
        "| {what} | {} | {} | {} | {} | {target} |",
        stats.samples.len(),
        fmt(stats.pct(0.5)),
        fmt(stats.pct(0.99)),
        fmt(*stats.samples.last().unwrap())
    );
}

fn resolve_input() -> rules::ResolveInput {
    rules::ResolveInput {
        idp: "okta".into(),
        user_claim: Some("ann@acme.io".into()),
        va_name: None,
        team_values: vec!["ml".into(), "data".into()],
        users: vec![rules::UserCandidate {
            id: "u-1".into(),
            email: "ann@acme.io".into(),
            status: rules::UserStatus::Active,
            matched_by: rules::UserMatch::Email,
            teams: vec!["t-everyone".into()],
        }],
        teams: vec![rules::TeamCandidate {
            id: "t-ml".into(),
            name: "ml".into(),
            matched: "ml".into(),
        }],
        settings: "{}".into(),
        ..Default::default()
    }
}

fn login_input() -> rules::LoginInput {
    rules::LoginInput {
        mode: rules::ProvisioningMode::Jit,
        sso_configured: true,
        claims: rules::LoginClaims {
            email: "new@acme.io".into(),
            subject: "s".into(),
            ..Default::default()
        },
        user: None,
        settings: "{}".into(),
    }
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument filters nothing here.
    println!("| measurement | n | p50 | p99 | max | target |");
    println!("|---|---|---|---|---|---|");
    let engine = PolicyEngine::new(Limits::default()).expect("engine");
    let compiled = engine
        .compile(DEFAULT_POLICY)
        .expect("default policy compiles");

    let input = resolve_input();
    let stats = Stats::measure(20_000, || {
        engine.resolve(&compiled, &input).unwrap();
    });
    row(
        "evaluate `resolve` (fresh instance)",
        &stats,
        "p50 ≤ 30 µs, p99 ≤ 150 µs",
    );
    let input = login_input();
    let stats = Stats::measure(20_000, || {
        engine.login(&compiled, &input).unwrap();
    });
    row(
        "evaluate `login` (fresh instance)",
        &stats,
        "p50 ≤ 30 µs, p99 ≤ 150 µs",
    );
    let one = [rules::RoleInput {
        manual: None,
        team_roles: vec![rules::Role::Admin],
    }];
    let stats = Stats::measure(20_000, || {
        engine.effective_role(&compiled, &one, "{}").unwrap();
    });
    row(
        "evaluate `effective-role`, 1 user",
        &stats,
        "p50 ≤ 30 µs, p99 ≤ 150 µs",
    );
    let many: Vec<_> = (0..10_000)
        .map(|i| rules::RoleInput {
            manual: (i % 7 == 0).then_some(rules::Role::Admin),
            team_roles: if i % 3 == 0 {
                vec![rules::Role::Member, rules::Role::Admin]
            } else {
                vec![]
            },
        })
        .collect();
    let stats = Stats::measure(50, || {
        engine.effective_role(&compiled, &many, "{}").unwrap();
    });
    row(
        "evaluate `effective-role`, 10,000 users in one call",
        &stats,
        "≤ 100 ms (issue 3)",
    );
    let idp = rules::IdpClaims::default();
    let stats = Stats::measure(20_000, || {
        engine.claim_mapping(&compiled, &idp, "{}").unwrap();
    });
    row(
        "evaluate `claim-mapping` (uncached)",
        &stats,
        "cached per version and IdP",
    );

    let stats = Stats::measure(5, || {
        engine.compile(DEFAULT_POLICY).unwrap();
    });
    row(
        "compile the default component (upload → compiled)",
        &stats,
        "off the request path",
    );

    let artifact = engine.serialize(&compiled).unwrap();
    let artifact_dir = tempfile::tempdir().unwrap();
    let artifact_path = artifact_dir.path().join("default.cwasm");
    std::fs::write(&artifact_path, &artifact).unwrap();
    let stats = Stats::measure(300, || {
        engine
            .load_precompiled_file(&artifact_path, compiled.sha256)
            .unwrap();
    });
    row(
        "load a precompiled artifact file (map + type-check + info)",
        &stats,
        "activation ≤ 5 ms p99",
    );

    let data = tempfile::tempdir().unwrap();
    let config = Config {
        data: data.path().join("db"),
        operator_token: Some("bench-operator-token-000".into()),
        ..Default::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    {
        let (app, _) = App::open(&config).unwrap();
        let app = std::sync::Arc::new(app);
        app.create_tenant("acme", "bench").unwrap();
        let upload = Upload {
            component: DEFAULT_POLICY.to_vec(),
            settings: "{}".into(),
            cases: vec![],
            activate: false,
        };
        let upload_stats = Stats::measure(3, || {
            let upload = Upload {
                component: upload.component.clone(),
                settings: "{}".into(),
                cases: vec![],
                activate: true,
            };
            runtime
                .block_on(app.upload_policy("acme", upload, "bench"))
                .unwrap();
        });
        row(
            "upload → active through the app (bytes cached: no recompile)",
            &upload_stats,
            "",
        );
        let mut version = 1;
        let stats = Stats::measure(300, || {
            version = if version == 1 { 2 } else { 1 };
            runtime
                .block_on(app.activate_policy("acme", Some(version)))
                .unwrap();
        });
        row(
            "activate a stored version (durable: store flush included)",
            &stats,
            "≤ 5 ms p99",
        );
    }

    // 1,000 tenants, each with its own component bytes (a custom section makes them
    // distinct, so nothing is shared between tenants) and its precompiled artifact.
    let data = tempfile::tempdir().unwrap();
    let config = Config {
        data: data.path().join("db"),
        operator_token: Some("bench-operator-token-000".into()),
        ..Default::default()
    };
    {
        let store = Store::open(&config.data).unwrap();
        let key = engine.artifact_key();
        // The section changes the bytes, not the code: one artifact serves every tenant's
        // record, and each tenant still deserializes its own copy at startup.
        for i in 0..1000 {
            let slug = format!("tenant-{i:04}");
            store
                .create_tenant(&TenantRecord {
                    slug: slug.clone(),
                    created_at: String::new(),
                    created_by: "bench".into(),
                    mode: "invite_only".into(),
                })
                .unwrap();
            let mut component = DEFAULT_POLICY.to_vec();
            component.extend(custom_section(&slug));
            let record = PolicyVersionRecord {
                version: 0,
                sha256: hex::encode(gatehouse::policy::sha256(&component)),
                size: component.len() as u64,
                name: "default".into(),
                policy_version: "0.1.0".into(),
                contract: "0.1.0".into(),
                settings: "{}".into(),
                uploaded_by: "bench".into(),
                uploaded_at: String::new(),
            };
            store.put_artifact(&record.sha256, &key, &artifact).unwrap();
            store
                .add_policy_version(
                    &slug,
                    NewPolicyVersion {
                        record,
                        component: &component,
                        activate: true,
                    },
                )
                .unwrap();
        }
    }
    let stats = Stats::measure(3, || {
        let (app, _) = App::open(&config).unwrap();
        assert_eq!(app.policies.len(), 1000);
    });
    row(
        "startup with 1,000 tenants' precompiled policies (`App::open`)",
        &stats,
        "≤ 1 s",
    );
}

/// A component-level custom section (id 0) named `gatehouse-bench` holding `payload`.
fn custom_section(payload: &str) -> Vec<u8> {
    let name = b"gatehouse-bench";
    let mut body = vec![name.len() as u8];
    body.extend_from_slice(name);
    body.extend_from_slice(payload.as_bytes());
    let mut section = vec![0u8];
    let mut len = body.len();
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            section.push(byte);
            break;
        }
        section.push(byte | 0x80);
    }
    section.extend(body);
    section
}
