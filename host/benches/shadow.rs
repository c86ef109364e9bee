//! Shadow evaluation cost: `cargo bench -p gatehouse --bench shadow`.
//!
//! One tenant runs the default policy; `resolve` is asked through the registry's
//! `TenantPolicy` as the edge asks it (the decision ring records every input). Reported per
//! decision, medians over alternating rounds:
//! - **single**: the active policy alone;
//! - **shadow**: the same with a shadow candidate (the default policy again) running, with
//!   the worker at the answers' priority (`policy.shadow_nice` 0, the default) and at
//!   niceness 10;
//! - the same two with `tests/fixtures/contract-0.1.0/default.wasm`, the default policy built
//!   before the SDK's arena allocator (decision 46): every decision grows its instance's
//!   memory, which is what made a shadow cost 3× and more;
//! - per configuration: the answer path's wall time (mean, p50: what a request waits for),
//!   the answering thread's own CPU time, the wall and process CPU time until the worker has
//!   evaluated (or dropped) every decision (both policies' work), the comparisons made and
//!   dropped, and the TLB shootdowns the machine counted meanwhile (`/proc/interrupts`,
//!   Linux; each interrupts the other core).

use gatehouse::policy::shadow::Shadow;
use gatehouse::policy::{Compiled, Limits, PolicyEngine, Registry, TenantPolicy, DEFAULT_POLICY};
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

/// The default policy as built before the arena allocator (contract 0.1.0).
static PRE_ARENA: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/contract-0.1.0/default.wasm"
));

/// TLB shootdowns the machine has counted so far, all CPUs (0 where `/proc/interrupts`
/// has no `TLB` line).
fn tlb_shootdowns() -> u64 {
    std::fs::read_to_string("/proc/interrupts")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.trim_start().starts_with("TLB:"))?;
            Some(
                line.split_whitespace()
                    .skip(1)
                    .map_while(|n| n.parse::<u64>().ok())
                    .sum(),
            )
        })
        .unwrap_or(0)
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
    /// TLB shootdowns counted while the configuration ran (until drained).
    tlb: u64,
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

/// A component's bytes and its compiled form.
type Policy<'a> = (&'a [u8], &'a Arc<Compiled>);

/// Measures one round of a configuration: `policy` active, and a shadow of the same
/// component at niceness `shadow` when given.
fn measure(
    registry: &Registry,
    engine: &Arc<PolicyEngine>,
    (bytes, compiled): Policy<'_>,
    shadow: Option<u8>,
) -> Row {
    registry.set(
        "acme",
        TenantPolicy::new(None, compiled.clone(), "{}".into()),
    );
    let shadow = shadow.map(|nice| {
        let shadow = Shadow::start(
            engine.clone(),
            "acme",
            TenantPolicy::new(None, compiled.clone(), "{}".into()),
            compiled.info.clone(),
            bytes.into(),
            nice,
        );
        registry.set_shadow("acme", Some(shadow.clone()));
        shadow
    });
    let (started, cpu, tlb) = (Instant::now(), cpu_time(false), tlb_shootdowns());
    let (mean, p50, answer_cpu) = run(registry, engine);
    let mut row = Row {
        mean,
        p50,
        answer_cpu,
        ..Row::default()
    };
    if let Some(shadow) = &shadow {
        while shadow.stats().evaluated + shadow.stats().dropped < N as u64 {
            std::thread::sleep(Duration::from_micros(200));
        }
        let stats = shadow.stats();
        (row.evaluated, row.dropped) = (stats.evaluated, stats.dropped);
    }
    row.total = started.elapsed() / N as u32;
    row.total_cpu = (cpu_time(false) - cpu) / N as u32;
    row.tlb = tlb_shootdowns() - tlb;
    registry.set_shadow("acme", None);
    row
}

fn main() {
    let engine = Arc::new(PolicyEngine::new(Limits::default()).expect("engine"));
    let current = engine.compile(DEFAULT_POLICY).expect("default policy");
    let pre_arena = engine.compile(PRE_ARENA).expect("contract 0.1.0 fixture");
    let registry = Registry::default();
    let configurations: [(&str, Policy<'_>, Option<u8>); 5] = [
        (
            "single (active policy only)",
            (DEFAULT_POLICY, &current),
            None,
        ),
        (
            "shadow, `shadow_nice` 0 (default)",
            (DEFAULT_POLICY, &current),
            Some(0),
        ),
        (
            "shadow, `shadow_nice` 10",
            (DEFAULT_POLICY, &current),
            Some(10),
        ),
        (
            "single, built before the arena allocator",
            (PRE_ARENA, &pre_arena),
            None,
        ),
        (
            "shadow, built before the arena allocator",
            (PRE_ARENA, &pre_arena),
            Some(0),
        ),
    ];
    measure(&registry, &engine, configurations[0].1, None); // warm-up

    // Rounds alternate the configurations, so a burst of load from elsewhere on the machine
    // hits them alike; the table shows each figure's median over the rounds.
    let mut rows: Vec<Vec<Row>> = vec![Vec::new(); configurations.len()];
    for _ in 0..ROUNDS {
        for (slot, (_, policy, shadow)) in configurations.iter().enumerate() {
            rows[slot].push(measure(&registry, &engine, *policy, *shadow));
        }
    }

    let med = |rows: &[Row], f: fn(&Row) -> Duration| median(rows.iter().map(f).collect());
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!(
        "resolve, {N} decisions per configuration and round, {ROUNDS} rounds; medians over the rounds; × single: of the current single row"
    );
    println!();
    println!("| configuration | answer path mean | p50 | × single (mean) | × single (p50) | answer thread CPU | wall until drained | process CPU until drained | × single CPU | compared / dropped (all rounds) | TLB shootdowns per 1,000 decisions |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let single = &rows[0];
    for ((label, _, _), rows) in configurations.iter().zip(&rows) {
        let (mean, p50, answer_cpu, total, total_cpu) = (
            med(rows, |r| r.mean),
            med(rows, |r| r.p50),
            med(rows, |r| r.answer_cpu),
            med(rows, |r| r.total),
            med(rows, |r| r.total_cpu),
        );
        let evaluated: u64 = rows.iter().map(|r| r.evaluated).sum();
        let dropped: u64 = rows.iter().map(|r| r.dropped).sum();
        let tlb: u64 = rows.iter().map(|r| r.tlb).sum();
        println!(
            "| {label} | {mean:.1?} | {p50:.1?} | {:.2} | {:.2} | {answer_cpu:.1?} | {total:.1?} | {total_cpu:.1?} | {:.2} | {} | {:.1} |",
            ratio(mean, med(single, |r| r.mean)),
            ratio(p50, med(single, |r| r.p50)),
            ratio(total_cpu, med(single, |r| r.total_cpu)),
            if evaluated + dropped == 0 {
                "—".to_owned()
            } else {
                format!("{evaluated} / {dropped}")
            },
            tlb as f64 * 1000.0 / (N * ROUNDS) as f64,
        );
    }
    let per_round = |slot: usize, base: usize| {
        rows[slot]
            .iter()
            .zip(&rows[base])
            .map(|(r, s)| format!("{:.2}", ratio(r.mean, s.mean)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!();
    println!("answer-path mean ÷ the same round's single mean of the same build, per round:");
    println!("  shadow_nice 0:  {}", per_round(1, 0));
    println!("  shadow_nice 10: {}", per_round(2, 0));
    println!("  before the arena allocator: {}", per_round(4, 3));
}
