//! Following the other replicas' writes (decision 54).
//!
//! On a shared database every replica polls the change log's heads (one scan of a small
//! table) every [`POLL`]; for each tenant whose head moved it reads the new entries and
//! refreshes what it holds in memory: the edge's directory and result cache (`touch`), the
//! policy registry when policy spaces changed, the cached session signer when the
//! tenant's session keys changed. Correctness never depends on a notification: a missed
//! poll is caught up by the next one, which compares heads. Own writes are seen too and
//! refresh once more, which is harmless (one directory rebuild).
//!
//! Policies (decision 73): the tailer never compiles. A version uploaded anywhere is
//! handed to the [`Compiler`] thread, which compiles it into this replica's artifact
//! cache in the background; an activation, rollback, shadow or promotion of a version
//! compiled here is then only a load and a swap, done by the tailer at once. One that
//! arrives before the compiler is done is left to the compiler: until then this replica
//! keeps answering with the version it runs (no request fails), then swaps.

use super::{App, AppError};
use crate::policy::{self, TenantPolicy};
use crate::store::Space;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// How often the heads are read.
pub const POLL: Duration = Duration::from_millis(20);

/// How often old log entries are pruned.
const PRUNE: Duration = Duration::from_secs(60);

/// Entries read per tenant and poll; past that the tenant is refreshed in full.
const BATCH: usize = 256;

/// How many of a tenant's newest versions each replica keeps loaded (compiled code in
/// memory), besides the one it runs.
const WARM_VERSIONS: usize = 4;

/// What one replica has seen of the log.
#[derive(Default)]
pub struct Follower {
    epoch: Option<String>,
    /// When the epoch was last read (it changes only when the database is replaced).
    epoch_read: Option<std::time::Instant>,
    seen: HashMap<String, u64>,
    /// Tenants whose policies need compiling go here; without it (a follower outside
    /// the tailer) they are compiled inline.
    compiler: Option<mpsc::Sender<String>>,
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
            self.refresh_tenant(&tenant, &touched, follower.compiler.as_ref())?;
            follower.seen.insert(tenant, head);
            refreshed += 1;
        }
        Ok(refreshed)
    }
}

impl App {
    /// Brings the tenant's running policy and shadow in line with the store. With
    /// `compile` false, a component this replica has no compiled code for is left alone
    /// (the running one keeps answering) and `false` is returned: hand the tenant to the
    /// compiler. Serialized with every other sync, so an older state never overwrites a
    /// newer one.
    pub(super) fn sync_policy(&self, tenant: &str, compile: bool) -> Result<bool, AppError> {
        let _sync = self.policy_sync.lock().unwrap_or_else(|p| p.into_inner());
        let running = self.policies.get(tenant);
        if running.is_none() && self.store.tenant(tenant)?.is_none() {
            return Ok(true);
        }
        let mut in_line = true;
        let state = self.store.policy_state(tenant)?;
        let current = running
            .as_ref()
            .is_some_and(|p| p.version == state.active && p.compiled().is_ok());
        if !current {
            let ready = match state.active {
                None => true,
                Some(version) => {
                    compile
                        || self
                            .store
                            .policy_version(tenant, version)?
                            .is_some_and(|r| self.compiled_here(&r.sha256))
                }
            };
            if ready {
                let policy = match self.policy_for_version(tenant, state.active) {
                    Ok(policy) => policy,
                    // Fail closed for this tenant only, as at start-up.
                    Err(e) => {
                        tracing::error!(tenant, version = state.active, error = %e, "tenant policy unavailable; its decisions are denied");
                        TenantPolicy::unavailable(state.active, "{}".into(), e.to_string())
                    }
                };
                self.swap_policy(tenant, policy);
            } else {
                in_line = false;
            }
        }
        let stored = self.store.policy_shadow(tenant)?;
        let running = self.policies.shadow(tenant);
        match (stored, running) {
            (None, None) => {}
            (None, Some(_)) => {
                self.policies.set_shadow(tenant, None);
                tracing::info!(tenant, "shadow policy stopped (stopped on another replica)");
            }
            (Some(record), running) => {
                let same = running.is_some_and(|s| {
                    hex::encode(policy::sha256(&s.component)) == record.sha256
                        && *s.settings == *record.settings
                });
                if same {
                } else if compile || self.compiled_here(&record.sha256) {
                    self.start_stored_shadow(tenant, &record)?;
                } else {
                    in_line = false;
                }
            }
        }
        Ok(in_line)
    }

    /// Starts the stored shadow `record` here (compiling its component if need be).
    fn start_stored_shadow(
        &self,
        tenant: &str,
        record: &crate::store::ShadowRecord,
    ) -> Result<(), AppError> {
        let component = self
            .store
            .policy_component(tenant, &record.sha256)?
            .ok_or_else(|| {
                AppError::Internal(format!(
                    "the shadow of tenant {tenant} has no stored component"
                ))
            })?;
        let sha = policy::sha256(&component);
        let compiled = match self.cached(&sha) {
            Some(compiled) => compiled,
            None => {
                let compiled =
                    super::precompiled(&self.store, &self.engine, sha, || Ok(component.clone()))?;
                self.remember(&compiled);
                compiled
            }
        };
        let info = compiled.info.clone();
        let shadow = policy::shadow::Shadow::start(
            self.engine.clone(),
            tenant,
            TenantPolicy::new(None, compiled, record.settings.as_str().into()),
            info,
            component.into(),
            self.shadow_nice,
        );
        self.policies.set_shadow(tenant, Some(shadow));
        tracing::info!(tenant, sha256 = %record.sha256, "shadow policy started (stored)");
        Ok(())
    }

    /// Compiles every stored version (and the shadow) of the tenant that this replica
    /// has no compiled code for into its artifact cache, keeps the newest versions loaded,
    /// then brings the running policy in line. Returns how many components were compiled.
    pub fn compile_tenant(&self, tenant: &str) -> Result<usize, AppError> {
        let mut compiled = 0;
        let versions = self.store.policy_versions(tenant)?;
        for record in &versions {
            if self.compiled_here(&record.sha256) {
                continue;
            }
            let started = Instant::now();
            let outcome = self.policy_for_version(tenant, Some(record.version));
            let label = if outcome.is_ok() { "ok" } else { "failed" };
            metrics::counter!("gatehouse_policy_background_compiles_total", "outcome" => label)
                .increment(1);
            match outcome {
                Ok(_) => {
                    compiled += 1;
                    tracing::info!(
                        tenant, version = record.version, sha256 = %record.sha256,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "policy version compiled here"
                    );
                }
                Err(e) => {
                    tracing::warn!(tenant, version = record.version, error = %e, "policy version does not compile here")
                }
            }
        }
        let warm: Vec<_> = versions
            .iter()
            .rev()
            .take(WARM_VERSIONS)
            .filter_map(|r| self.policy_for_version(tenant, Some(r.version)).ok())
            .filter_map(|p| p.compiled().ok().cloned())
            .collect();
        self.warm
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tenant.to_owned(), warm);
        self.sync_policy(tenant, true)?;
        Ok(compiled)
    }
}

impl App {
    /// Refreshes what this process holds in memory of `tenant` after its stored records
    /// changed, `touched` telling which spaces did: the policy (from the registry's
    /// compiled cache) when its state or the tenant changed, the cached session signer when
    /// the session keys did, and always the edge's directory and result cache. A replica
    /// following the log and an edge applying its stream both call it.
    ///
    /// Policies: a version uploaded somewhere is compiled here now, before anyone
    /// activates it, by `compiler` (the background compiler thread) when there is one,
    /// else inline (an edge's sync task).
    pub(crate) fn refresh_tenant(
        &self,
        tenant: &str,
        touched: &dyn Fn(Space) -> bool,
        compiler: Option<&mpsc::Sender<String>>,
    ) -> Result<(), AppError> {
        let compile = || match compiler {
            Some(compiler) if compiler.send(tenant.to_owned()).is_ok() => Ok(()),
            _ => self.compile_tenant(tenant).map(drop),
        };
        let policies = || {
            if touched(Space::PolicyVersions) {
                compile()?;
            }
            if (touched(Space::PolicyState)
                || touched(Space::Tenants)
                || touched(Space::PolicyShadows))
                && !self.sync_policy(tenant, compiler.is_none())?
            {
                compile()?;
            }
            Ok(())
        };
        let refreshed = policies();
        if touched(Space::SessionKeys) {
            self.sessions.forget_signer(tenant);
        }
        // Whatever happened to the policy, the records changed: the next answer must not
        // come from the directory or results of before (the change is not sent again).
        self.edge.touch(tenant);
        refreshed
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

/// The follower and pruner thread of a serving replica, and its background compiler;
/// both stop when dropped.
pub struct Tailer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    compiler: Option<std::thread::JoinHandle<()>>,
}

impl Tailer {
    /// Starts following the log (only on a shared database: on sled this process is the
    /// only writer) and pruning it to `retention` entries per tenant.
    pub fn start(app: Arc<App>, retention: u64) -> Tailer {
        let stop = Arc::new(AtomicBool::new(false));
        let (jobs, queue) = mpsc::channel::<String>();
        // At start, every tenant: versions uploaded while this replica was away (or
        // compiled by an older engine) and stored shadows.
        if let Ok(tenants) = app.store.tenants() {
            for tenant in tenants {
                let _ = jobs.send(tenant.slug);
            }
        }
        let compiler = {
            let (app, stop) = (app.clone(), stop.clone());
            std::thread::Builder::new()
                .name("gatehouse-compiler".into())
                .spawn(move || compile_in_background(&app, &queue, &stop))
                .expect("the compiler thread starts")
        };
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("gatehouse-tailer".into())
                .spawn(move || run(&app, retention, &stop, jobs))
                .expect("the tailer thread starts")
        };
        Tailer {
            stop,
            thread: Some(thread),
            compiler: Some(compiler),
        }
    }
}

impl Drop for Tailer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // The tailer held the queue's sender: the compiler ends after the job in hand.
        if let Some(compiler) = self.compiler.take() {
            let _ = compiler.join();
        }
    }
}

/// The compiler thread: takes tenants off the queue (duplicates merged) and compiles what
/// this replica lacks of each, off the tailer's thread. A tenant that failed (the database
/// away) is tried again a second later; the running version keeps answering meanwhile.
fn compile_in_background(app: &App, queue: &mpsc::Receiver<String>, stop: &AtomicBool) {
    let mut retry = BTreeSet::new();
    loop {
        let mut tenants = std::mem::take(&mut retry);
        let next = if tenants.is_empty() {
            queue
                .recv()
                .map_err(|_| mpsc::RecvTimeoutError::Disconnected)
        } else {
            queue.recv_timeout(Duration::from_secs(1))
        };
        match next {
            Ok(tenant) => {
                tenants.insert(tenant);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        tenants.extend(queue.try_iter());
        for tenant in tenants {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            if let Err(e) = app.compile_tenant(&tenant) {
                tracing::warn!(tenant, error = %e, "cannot compile the tenant's policies here; retrying");
                retry.insert(tenant);
            }
        }
    }
}

fn run(app: &App, retention: u64, stop: &AtomicBool, compiler: mpsc::Sender<String>) {
    let follow = app.store.is_shared();
    let mut follower = Follower {
        compiler: Some(compiler),
        ..Follower::default()
    };
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
