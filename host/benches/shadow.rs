//! Shadow evaluation cost: `cargo bench -p gatehouse --bench shadow`.
//!
//! One tenant runs the default policy; `resolve` is asked through the registry's
//! `TenantPolicy` as the edge asks it (the decision ring records every input). Reported per
//! decision, medians over alternating rounds:
//! - **single**: the active policy alone;
//! - **shadow**: the same with a shadow candidate (the default policy again) running, with
//!   the worker at the answers' priority (`policy.shadow_nice` 0, the default) and at
//!   niceness 10;
//! - per configuration: the answer path's wall time (mean, p50: what a request waits for),
//!   the answering thread's own CPU time, the wall and process CPU time until the worker has
//!   evaluated (or dropped) every decision (both policies' work), and the comparisons made
//!   and dropped.

use gatehouse::policy::shadow::Shadow;
use gatehouse::policy::{Limits, PolicyEngine, Registry, TenantPolicy, DEFAULT_POLICY};
use gatehouse_rules as rules;
use std::sync::Arc;
use std::time::{Duration, Instant};

const N: usize = 10_000;
const ROUNDS: usize = 5;

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

/// CPU time of the calling thread (`thread`) or of the whole process (Linux; elsewhere 0).
#[cfg(not(target_os = "linux"))]
fn cpu_time(_thread: bool) -> Duration {
    Duration::ZERO
}

/// CPU time of the calling thread (`thread`) or of the whole process.
#[cfg(target_os = "linux")]
fn cpu_time(thread: bool) -> Duration {
    let clock = if thread {
        libc::CLOCK_THREAD_CPUTIME_ID
    } else {
        libc::CLOCK_PROCESS_CPUTIME_ID
    };
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec for the duration of the call.
    unsafe { libc::clock_gettime(clock, &mut now) };
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// Mean and p50 wall time per decision, and the answering thread's CPU time per decision.
fn run(registry: &Registry, engine: &PolicyEngine) -> (Duration, Duration, Duration) {
    let inputs: Vec<_> = (0..N).map(input).collect();
    let mut samples = Vec::with_capacity(N);
    let cpu = cpu_time(true);
    let started = Instant::now();
    for input in &inputs {
        let policy = registry.get("acme").expect("tenant");
        let one = Instant::now();
        policy.resolve(engine, input).expect("decides");
        samples.push(one.elapsed());
    }
    let total = started.elapsed();
    let cpu = cpu_time(true) - cpu;
    samples.sort();
    (total / N as u32, samples[N / 2], cpu / N as u32)
}

/// One measured configuration: per-decision mean and p50 of the answer path, total work
/// per decision, and the shadow's counters.
#[derive(Default, Clone, Copy)]
struct Row {
    mean: Duration,
    p50: Duration,
    /// CPU time of the answering thread per decision.
    answer_cpu: Duration,
    total: Duration,
    /// CPU time of the whole process per decision, until the shadow drained.
    total_cpu: Duration,
    evaluated: u64,
    dropped: u64,
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
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

    // Rounds alternate the three configurations, so a burst of load from elsewhere on the
    // machine hits them alike; the table shows each figure's median over the rounds.
    let mut rows: Vec<Vec<Row>> = vec![Vec::new(); 3];
    for _ in 0..ROUNDS {
        let (started, cpu) = (Instant::now(), cpu_time(false));
        let (mean, p50, answer_cpu) = run(&registry, &engine);
        rows[0].push(Row {
            mean,
            p50,
            answer_cpu,
            total: started.elapsed() / N as u32,
            total_cpu: (cpu_time(false) - cpu) / N as u32,
            ..Row::default()
        });
        for (slot, nice) in [(1, 0u8), (2, 10u8)] {
            let shadow = Shadow::start(
                engine.clone(),
                "acme",
                TenantPolicy::new(None, compiled.clone(), "{}".into()),
                compiled.info.clone(),
                DEFAULT_POLICY.into(),
                nice,
            );
            registry.set_shadow("acme", Some(shadow.clone()));
            let (started, cpu) = (Instant::now(), cpu_time(false));
            let (mean, p50, answer_cpu) = run(&registry, &engine);
            while shadow.stats().evaluated + shadow.stats().dropped < N as u64 {
                std::thread::sleep(Duration::from_micros(200));
            }
            let total = started.elapsed() / N as u32;
            let total_cpu = (cpu_time(false) - cpu) / N as u32;
            let stats = shadow.stats();
            registry.set_shadow("acme", None);
            rows[slot].push(Row {
                mean,
                p50,
                answer_cpu,
                total,
                total_cpu,
                evaluated: stats.evaluated,
                dropped: stats.dropped,
            });
        }
    }

    let med = |rows: &[Row], f: fn(&Row) -> Duration| median(rows.iter().map(f).collect());
    let single_rows = rows[0].clone();
    let single_mean = med(&rows[0], |r| r.mean);
    let single_p50 = med(&rows[0], |r| r.p50);
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!(
        "resolve, {N} decisions per configuration and round, {ROUNDS} rounds; medians over the rounds"
    );
    println!();
    println!("| configuration | answer path mean | p50 | × single (mean) | × single (p50) | answer thread CPU | wall until drained | process CPU until drained | × single CPU | compared / dropped (all rounds) |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (label, rows) in [
        ("single (active policy only)", &rows[0]),
        ("shadow, `shadow_nice` 0 (default)", &rows[1]),
        ("shadow, `shadow_nice` 10", &rows[2]),
    ] {
        let (mean, p50, answer_cpu, total, total_cpu) = (
            med(rows, |r| r.mean),
            med(rows, |r| r.p50),
            med(rows, |r| r.answer_cpu),
            med(rows, |r| r.total),
            med(rows, |r| r.total_cpu),
        );
        let single_cpu = med(&single_rows, |r| r.total_cpu);
        let evaluated: u64 = rows.iter().map(|r| r.evaluated).sum();
        let dropped: u64 = rows.iter().map(|r| r.dropped).sum();
        println!(
            "| {label} | {mean:.1?} | {p50:.1?} | {:.2} | {:.2} | {answer_cpu:.1?} | {total:.1?} | {total_cpu:.1?} | {:.2} | {} |",
            ratio(mean, single_mean),
            ratio(p50, single_p50),
            ratio(total_cpu, single_cpu),
            if evaluated + dropped == 0 {
                "—".to_owned()
            } else {
                format!("{evaluated} / {dropped}")
            }
        );
    }
    let per_round = |slot: usize| {
        rows[slot]
            .iter()
            .zip(&rows[0])
            .map(|(r, s)| format!("{:.2}", ratio(r.mean, s.mean)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!();
    println!("answer-path mean ÷ the same round's single mean, per round:");
    println!("  shadow_nice 0:  {}", per_round(1));
    println!("  shadow_nice 10: {}", per_round(2));
}
