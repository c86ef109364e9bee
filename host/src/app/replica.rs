//! Following the other replicas' writes (decision 54).
//!
//! On a shared database every replica polls the change log's heads (one scan of a small
//! table) every [`POLL`]; for each tenant whose head moved it reads the new entries and
//! refreshes what it holds in memory: the edge's directory and result cache (`touch`), the
//! policy registry when policy spaces changed, the cached session signer when the
//! tenant's session keys changed. Correctness never depends on a notification: a missed
//! poll is caught up by the next one, which compares heads. Own writes are seen too and
//! refresh once more, which is harmless (one directory rebuild).

use super::{App, AppError};
use crate::store::Space;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often the heads are read.
pub const POLL: Duration = Duration::from_millis(20);

/// How often old log entries are pruned.
const PRUNE: Duration = Duration::from_secs(60);

/// Entries read per tenant and poll; past that the tenant is refreshed in full.
const BATCH: usize = 256;

/// What one replica has seen of the log.
#[derive(Default)]
pub struct Follower {
    epoch: Option<String>,
    /// When the epoch was last read (it changes only when the database is replaced).
    epoch_read: Option<std::time::Instant>,
    seen: HashMap<String, u64>,
}

impl App {
    /// Refreshes in-memory state for every tenant whose log moved since the last call;
    /// returns how many tenants were refreshed. The first call only records the heads
    /// (everything was loaded when the app opened).
    pub fn follow_changes(&self, follower: &mut Follower) -> Result<usize, AppError> {
        let stale = follower
            .epoch_read
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(1));
        let first = if stale {
            let epoch = self.store.change_log_epoch()?;
            follower.epoch_read = Some(std::time::Instant::now());
            let first = follower.epoch.as_deref() != Some(epoch.as_str());
            follower.epoch = Some(epoch);
            first
        } else {
            false
        };
        let heads = self.store.change_log_heads()?;
        if first {
            follower.seen = heads.into_iter().collect();
            return Ok(0);
        }
        let mut refreshed = 0;
        for (tenant, head) in heads {
            let since = follower.seen.get(&tenant).copied().unwrap_or(0);
            if head <= since {
                continue;
            }
            let page = self.store.changes_since(&tenant, since, BATCH)?;
            let complete = !page.gap && page.entries.len() as u64 == head - since;
            let touched = |space: Space| {
                !complete
                    || page
                        .entries
                        .iter()
                        .any(|e| e.changes.iter().any(|c| c.space == space.name()))
            };
            self.refresh_tenant(&tenant, &touched)?;
            follower.seen.insert(tenant, head);
            refreshed += 1;
        }
        Ok(refreshed)
    }
}

impl App {
    /// Refreshes what this process holds in memory of `tenant` after its stored records
    /// changed, `touched` telling which spaces did: the policy (from the registry's
    /// compiled cache) when its state or the tenant changed, the cached session signer when
    /// the session keys did, and always the edge's directory and result cache. A replica
    /// following the log and an edge applying its stream both call it.
    pub(crate) fn refresh_tenant(
        &self,
        tenant: &str,
        touched: &dyn Fn(Space) -> bool,
    ) -> Result<(), AppError> {
        if touched(Space::PolicyState) || touched(Space::Tenants) {
            let policy = self.load_tenant_policy(tenant)?;
            self.policies.set(tenant, policy);
        }
        if touched(Space::SessionKeys) {
            self.sessions.forget_signer(tenant);
        }
        self.edge.touch(tenant);
        Ok(())
    }
}

impl App {
    /// On a shared database, a tenant another replica created moments ago may not be in
    /// this replica's registry yet: load it now rather than answer "no such tenant", so
    /// the admin API reads its own writes on any replica. `None`: no such tenant.
    pub(super) fn adopt_tenant(&self, tenant: &str) -> Option<Arc<crate::policy::TenantPolicy>> {
        if let Some(policy) = self.policies.get(tenant) {
            return Some(policy);
        }
        if !self.store.is_shared() || !matches!(self.store.tenant(tenant), Ok(Some(_))) {
            return None;
        }
        let policy = self.load_tenant_policy(tenant).ok()?;
        // The tailer may have set it meanwhile; either is the stored state.
        if self.policies.get(tenant).is_none() {
            self.policies.set(tenant, policy);
        }
        self.policies.get(tenant)
    }
}

/// The follower and pruner thread of a serving replica; stops when dropped.
pub struct Tailer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Tailer {
    /// Starts following the log (only on a shared database: on sled this process is the
    /// only writer) and pruning it to `retention` entries per tenant.
    pub fn start(app: Arc<App>, retention: u64) -> Tailer {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("gatehouse-tailer".into())
                .spawn(move || run(&app, retention, &stop))
                .expect("the tailer thread starts")
        };
        Tailer {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Tailer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(app: &App, retention: u64, stop: &AtomicBool) {
    let follow = app.store.is_shared();
    let mut follower = Follower::default();
    // The first round prunes: a replica started with a smaller retention applies it now.
    let mut last_prune = std::time::Instant::now()
        .checked_sub(PRUNE)
        .unwrap_or_else(std::time::Instant::now);
    let mut failing = false;
    while !stop.load(Ordering::SeqCst) {
        if follow {
            match app.follow_changes(&mut follower) {
                Ok(_) if failing => {
                    failing = false;
                    tracing::info!("following the change log again");
                }
                Ok(_) => {}
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "cannot follow the change log; retrying");
                }
                Err(_) => {}
            }
        }
        if last_prune.elapsed() >= PRUNE {
            last_prune = std::time::Instant::now();
            match app.store.prune_change_log(retention) {
                Ok(0) => {}
                Ok(n) => tracing::debug!(entries = n, "change log pruned"),
                Err(e) => tracing::warn!(error = %e, "cannot prune the change log"),
            }
        }
        // Backoff with jitter while the database is away; the poll interval otherwise.
        let wait = if failing {
            Duration::from_millis(200 + rand::random_range(0..300))
        } else {
            POLL
        };
        std::thread::sleep(wait);
    }
}
