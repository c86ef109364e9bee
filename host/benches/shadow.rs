//! Shadow evaluation cost: `cargo bench -p gatehouse --bench shadow`.
//!
//! One tenant runs the default policy; `resolve` is asked through the registry's
//! `TenantPolicy` as the edge asks it (the decision ring records every input). Reported per
//! decision (mean over the run, and p50 of single calls):
//! - **single**: the active policy alone;
//! - **shadow, answer path**: the same with a shadow candidate (the default policy again)
//!   running: what a request waits for (anonymise the input, hand it to the worker);
//! - **shadow, total work**: wall time for the same number of decisions until the worker
//!   has evaluated every one of them (both policies' work, on two threads).

use gatehouse::policy::shadow::Shadow;
use gatehouse::policy::{Limits, PolicyEngine, Registry, TenantPolicy, DEFAULT_POLICY};
use gatehouse_rules as rules;
use std::sync::Arc;
use std::time::{Duration, Instant};

const N: usize = 2_000;

fn input(i: usize) -> rules::ResolveInput {
    rules::ResolveInput {
        idp: "okta".into(),
        user_claim: Some(format!("user{i}@example.com")),
        team_values: vec!["eng".into(), "ops".into()],
        users: vec![rules::UserCandidate {
            id: format!("u-{i}"),
            email: format!("user{i}@example.com"),
            status: rules::UserStatus::Active,
            matched_by: rules::UserMatch::Email,
            teams: vec!["everyone".into()],
        }],
        teams: vec![rules::TeamCandidate {
            id: "t-eng".into(),
            name: "eng".into(),
            matched: "eng".into(),
        }],
        ..rules::ResolveInput::default()
    }
}

fn run(registry: &Registry, engine: &PolicyEngine) -> (Duration, Duration) {
    let inputs: Vec<_> = (0..N).map(input).collect();
    let mut samples = Vec::with_capacity(N);
    let started = Instant::now();
    for input in &inputs {
        let policy = registry.get("acme").expect("tenant");
        let one = Instant::now();
        policy.resolve(engine, input).expect("decides");
        samples.push(one.elapsed());
    }
    let total = started.elapsed();
    samples.sort();
    (total / N as u32, samples[N / 2])
}

fn main() {
    let engine = Arc::new(PolicyEngine::new(Limits::default()).expect("engine"));
    let compiled = engine.compile(DEFAULT_POLICY).expect("default policy");
    let registry = Registry::default();
    registry.set(
        "acme",
        TenantPolicy::new(None, compiled.clone(), "{}".into()),
    );
    run(&registry, &engine); // warm-up
    let (single_mean, single_p50) = run(&registry, &engine);

    let shadow = Shadow::start(
        engine.clone(),
        "acme",
        TenantPolicy::new(None, compiled.clone(), "{}".into()),
        compiled.info.clone(),
        DEFAULT_POLICY.into(),
    );
    registry.set_shadow("acme", Some(shadow.clone()));
    let before = shadow.stats();
    let started = Instant::now();
    let (answer_mean, answer_p50) = run(&registry, &engine);
    while shadow.stats().evaluated + shadow.stats().dropped
        < before.evaluated + before.dropped + N as u64
    {
        std::thread::sleep(Duration::from_micros(200));
    }
    let total = started.elapsed() / N as u32;
    let stats = shadow.stats();

    let ratio = |d: Duration| d.as_secs_f64() / single_mean.as_secs_f64();
    println!("| resolve, {N} decisions | mean | p50 | × single (mean) |");
    println!("|---|---|---|---|");
    println!("| single (active policy only) | {single_mean:.1?} | {single_p50:.1?} | 1.00 |");
    println!(
        "| shadow, answer path | {answer_mean:.1?} | {answer_p50:.1?} | {:.2} |",
        ratio(answer_mean)
    );
    println!(
        "| shadow, total work (until the worker drained) | {total:.1?} | — | {:.2} |",
        ratio(total)
    );
    println!(
        "shadow counters: evaluated {}, differed {}, failed {}, dropped {}",
        stats.evaluated, stats.differed, stats.failed, stats.dropped
    );
}
