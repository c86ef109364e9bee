//! Shadow (canary) evaluation: a candidate policy decides beside the tenant's active one on
//! live traffic, off the answer's path. The active policy answers; the request thread only
//! hands the input and the active outcome to the shadow's worker thread over a bounded
//! channel (full: the sample is dropped and counted), and the worker evaluates the
//! candidate, compares outcomes, counts, and logs each difference.

use super::ring::RecordedInput;
use super::{PolicyEngine, TenantPolicy};
use gatehouse_rules as rules;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

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
    input: RecordedInput,
    active: serde_json::Value,
}

/// A candidate running in shadow for one tenant.
pub struct Shadow {
    /// What the candidate says it is.
    pub info: rules::PolicyInfo,
    /// Its component and settings, kept so that promoting stores exactly what ran.
    pub component: Arc<[u8]>,
    pub settings: Arc<str>,
    counters: Arc<Counters>,
    tx: Mutex<SyncSender<Job>>,
    tenant: Arc<str>,
}

impl Shadow {
    /// Starts a shadow: `candidate` (a policy outside the registry) evaluated by a worker
    /// thread that ends when the shadow is dropped.
    pub fn start(
        engine: Arc<PolicyEngine>,
        tenant: &str,
        candidate: TenantPolicy,
        info: rules::PolicyInfo,
        component: Arc<[u8]>,
    ) -> Arc<Shadow> {
        let (tx, rx) = sync_channel::<Job>(SHADOW_QUEUE);
        let counters = Arc::new(Counters::default());
        let worker_counters = counters.clone();
        let settings = candidate.settings.clone();
        let worker_tenant: Arc<str> = tenant.into();
        let name = info.name.clone();
        std::thread::Builder::new()
            .name(format!("shadow-{tenant}"))
            .spawn(move || {
                for job in rx {
                    let after = candidate.decide_recorded(&engine, &job.input);
                    let after = match after {
                        Ok(value) => value,
                        Err(e) => {
                            worker_counters.failed.fetch_add(1, Ordering::Relaxed);
                            serde_json::json!({ "error": { "kind": e.kind(), "message": e.to_string() } })
                        }
                    };
                    worker_counters.evaluated.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("gatehouse_policy_shadow_evaluations_total").increment(1);
                    if after != job.active {
                        worker_counters.differed.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!("gatehouse_policy_shadow_differences_total")
                            .increment(1);
                        tracing::info!(
                            tenant = %worker_tenant, candidate = %name,
                            decision = match job.input { RecordedInput::Login(_) => "login", RecordedInput::Resolve(_) => "resolve" },
                            active = %job.active, shadow = %after,
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
            tx: Mutex::new(tx),
            tenant: tenant.into(),
        })
    }

    /// Hands a decision to the worker; never blocks. `input` is anonymised first (the
    /// difference log carries no emails).
    pub(super) fn offer(&self, input: RecordedInput, active: serde_json::Value) {
        let sent = self
            .tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .try_send(Job { input, active });
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = sent {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("gatehouse_policy_shadow_dropped_total").increment(1);
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> ShadowStats {
        ShadowStats {
            evaluated: self.counters.evaluated.load(Ordering::Relaxed),
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
