//! Shadow (canary) evaluation: a candidate policy decides beside the tenant's active one on
//! live traffic, off the answer's path. The active policy answers; the request thread only
//! pushes the (already anonymised, shared) input and the active outcome onto the shadow's
//! bounded queue (full: the sample is dropped and counted), and the worker thread takes
//! whole batches off it, evaluates the candidate, compares outcomes, counts, and logs each
//! difference.
//!
//! What the answer path pays is kept to a lock, a push and, only when the worker is asleep,
//! a wake-up: no copy of the input (the ring's `Arc` is shared), no JSON (outcomes are
//! compared as values; JSON is made only for the log line of a difference), no system call
//! while the worker is busy.

use super::registry::Outcome;
use super::ring::RecordedInput;
use super::{PolicyEngine, TenantPolicy};
use gatehouse_rules as rules;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// How many decisions may wait for the shadow worker before new ones are dropped.
pub const SHADOW_QUEUE: usize = 1024;

/// Counters of a shadow, as the admin API shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct ShadowStats {
    /// Decisions the candidate evaluated.
    pub evaluated: u64,
    /// Of those, decisions whose outcome differed from the active policy's.
    pub differed: u64,
    /// Decisions where the candidate failed (trap, timeout, malformed answer).
    pub failed: u64,
    /// Decisions not evaluated because the worker was behind.
    pub dropped: u64,
}

#[derive(Default)]
struct Counters {
    evaluated: AtomicU64,
    differed: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

struct Job {
    input: Arc<RecordedInput>,
    active: Outcome,
}

/// The queue between the answer path and the worker.
#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    wake: Condvar,
    /// Set with `QueueState::closed`, read by the worker between jobs without the lock: a
    /// stopped or promoted shadow stops evaluating (and counting) at once, not after the
    /// batch in hand.
    stopped: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct QueueState {
    jobs: VecDeque<Job>,
    /// The worker waits on `wake`: the next push must notify it.
    asleep: bool,
    /// The shadow is gone: the worker ends.
    closed: bool,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pushes `job` unless the queue is full; never blocks on the worker.
    fn push(&self, job: Job) -> bool {
        let mut state = self.lock();
        if state.jobs.len() >= SHADOW_QUEUE || state.closed {
            return false;
        }
        state.jobs.push_back(job);
        let wake = std::mem::take(&mut state.asleep);
        drop(state);
        if wake {
            self.wake.notify_one();
        }
        true
    }

    /// Everything waiting, once there is something; `None` when closed.
    fn take_batch(&self) -> Option<VecDeque<Job>> {
        let mut state = self.lock();
        loop {
            if state.closed {
                return None;
            }
            if !state.jobs.is_empty() {
                return Some(std::mem::take(&mut state.jobs));
            }
            state.asleep = true;
            state = self.wake.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    fn close(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        self.lock().closed = true;
        self.wake.notify_one();
    }
}

/// A candidate running in shadow for one tenant.
pub struct Shadow {
    /// What the candidate says it is.
    pub info: rules::PolicyInfo,
    /// Its component and settings, kept so that promoting stores exactly what ran.
    pub component: Arc<[u8]>,
    pub settings: Arc<str>,
    counters: Arc<Counters>,
    queue: Arc<Queue>,
    tenant: Arc<str>,
}

impl Drop for Shadow {
    fn drop(&mut self) {
        self.queue.close();
    }
}

impl Shadow {
    /// Starts a shadow: `candidate` (a policy outside the registry) evaluated by a worker
    /// thread that ends when the shadow is dropped, at niceness `nice` (0-19).
    pub fn start(
        engine: Arc<PolicyEngine>,
        tenant: &str,
        candidate: TenantPolicy,
        info: rules::PolicyInfo,
        component: Arc<[u8]>,
        nice: u8,
    ) -> Arc<Shadow> {
        let queue = Arc::new(Queue::default());
        let worker_queue = queue.clone();
        let counters = Arc::new(Counters::default());
        let worker_counters = counters.clone();
        let settings = candidate.settings.clone();
        let worker_tenant: Arc<str> = tenant.into();
        let name = info.name.clone();
        std::thread::Builder::new()
            .name(format!("shadow-{tenant}"))
            .spawn(move || {
                set_niceness(nice);
                while let Some(batch) = worker_queue.take_batch() {
                    for job in batch {
                        if worker_queue.stopped() {
                            break;
                        }
                        let after = candidate.decide_outcome(&engine, &job.input);
                        metrics::counter!("gatehouse_policy_shadow_evaluations_total")
                            .increment(1);
                        // `evaluated` counts a decision once its difference (or failure) is
                        // counted, and is published last: whoever reads `evaluated == n`
                        // sees the `differed` and `failed` of those n decisions.
                        let shadow = match after {
                            Ok(after) if after == job.active => {
                                worker_counters.evaluated.fetch_add(1, Ordering::Release);
                                continue;
                            }
                            Ok(after) => after.to_json().unwrap_or_default(),
                            Err(e) => {
                                worker_counters.failed.fetch_add(1, Ordering::Relaxed);
                                serde_json::json!({ "error": { "kind": e.kind(), "message": e.to_string() } })
                            }
                        };
                        worker_counters.differed.fetch_add(1, Ordering::Relaxed);
                        worker_counters.evaluated.fetch_add(1, Ordering::Release);
                        metrics::counter!("gatehouse_policy_shadow_differences_total")
                            .increment(1);
                        let active = job.active.to_json().unwrap_or_default();
                        tracing::info!(
                            tenant = %worker_tenant, candidate = %name,
                            decision = match *job.input { RecordedInput::Login(_) => "login", RecordedInput::Resolve(_) => "resolve" },
                            %active, %shadow,
                            "shadow policy decided differently"
                        );
                    }
                }
            })
            .expect("a thread starts");
        Arc::new(Shadow {
            info,
            component,
            settings,
            counters,
            queue,
            tenant: tenant.into(),
        })
    }

    /// Hands a decision to the worker; never waits for it. `input` is the ring's anonymised
    /// copy (the difference log carries no emails).
    pub(super) fn offer(&self, input: Arc<RecordedInput>, active: Outcome) {
        if !self.queue.push(Job { input, active }) {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("gatehouse_policy_shadow_dropped_total").increment(1);
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> ShadowStats {
        // `evaluated` first (see the worker): the other counts are at least its decisions'.
        let evaluated = self.counters.evaluated.load(Ordering::Acquire);
        ShadowStats {
            evaluated,
            differed: self.counters.differed.load(Ordering::Relaxed),
            failed: self.counters.failed.load(Ordering::Relaxed),
            dropped: self.counters.dropped.load(Ordering::Relaxed),
        }
    }

    /// The tenant it shadows.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }
}

/// Lowers the calling thread's scheduling priority to `nice` (0-19): on busy cores the
/// threads answering requests are then scheduled before the shadow worker, which catches up
/// when they idle (a full queue drops, and counts, what it cannot catch up with).
#[cfg(target_os = "linux")]
fn set_niceness(nice: u8) {
    if nice == 0 {
        return;
    }
    let nice = libc::c_int::from(nice);
    // SAFETY: `gettid` and `setpriority` take and return plain integers and touch no
    // memory of ours; on Linux, PRIO_PROCESS with a thread id changes only that thread.
    let result =
        unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) };
    if result != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "shadow worker keeps its priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn set_niceness(_nice: u8) {}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(i: usize) -> Job {
        Job {
            input: Arc::new(RecordedInput::Resolve(rules::ResolveInput {
                user_claim: Some(format!("u{i}")),
                ..rules::ResolveInput::default()
            })),
            active: Outcome::Resolve(rules::Resolution::VirtualAccount(format!("va{i}"))),
        }
    }

    #[test]
    fn the_queue_is_bounded_hands_over_batches_and_closes() {
        let queue = Arc::new(Queue::default());
        for i in 0..SHADOW_QUEUE {
            assert!(queue.push(job(i)));
        }
        assert!(!queue.push(job(SHADOW_QUEUE)), "full: dropped, not blocked");
        let batch = queue.take_batch().expect("open");
        assert_eq!(batch.len(), SHADOW_QUEUE);
        assert_eq!(batch[0].active, job(0).active, "oldest first");

        // A sleeping worker is woken by a push, and ends when the queue closes.
        let worker = {
            let queue = queue.clone();
            std::thread::spawn(move || {
                let mut taken = 0;
                while let Some(batch) = queue.take_batch() {
                    taken += batch.len();
                }
                taken
            })
        };
        while !queue.lock().asleep {
            std::thread::yield_now();
        }
        assert!(queue.push(job(1)));
        while !queue.lock().jobs.is_empty() {
            std::thread::yield_now();
        }
        queue.close();
        assert_eq!(worker.join().unwrap(), 1);
        assert!(!queue.push(job(2)), "closed: nothing is queued");
    }
}
