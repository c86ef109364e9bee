//! Durable state: the only module that names sled or PostgreSQL.
//!
//! Two layers:
//! - [`Backend`]: a narrow key-value interface (get, prefix scan, a serializable
//!   transaction, flush, tenant lock) over named spaces. `sled` (embedded, one process)
//!   and PostgreSQL (any number of replicas on one database) implement it.
//! - [`Store`]: the typed API the rest of the host uses. Every key starts with the tenant
//!   slug and a 0 byte, so a scan or a page can never cross tenants. Every write that the
//!   caller acknowledges is flushed to disk before the method returns.
//!
//! Precompiled policy artifacts are not in sled: they are files under `DIR/artifacts`,
//! named by the component's SHA-256 and the engine's compatibility key, so the engine can
//! map them instead of copying them (a restart with 1,000 tenants reads no artifact bytes
//! through sled). They are a cache: each is derivable from component bytes kept in sled.

mod change_log;
mod overlay;
mod pg_backend;
// The tests crate's PostgreSQL harness (one cluster per test binary).
#[cfg(test)]
#[path = "../../../tests/pg.rs"]
pub(crate) mod pg_cluster;
mod records;
mod replica;
mod side;
mod sled_backend;
mod tenant_lock;

pub use change_log::{Change, ChangeEntry, ChangePage};
pub use records::{Batch, Record};
pub use replica::{RawRecord, ReplicaCursor};

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use pg_backend::{PgBackend, PgOptions, SCHEMA_VERSION};
pub use sled_backend::SledBackend;
pub use tenant_lock::{HeldLock, TenantGuard};

/// The named key spaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Space {
    /// Process-wide records (the operator token's hash).
    System,
    Tenants,
    PolicyState,
    PolicyVersions,
    PolicyBlobs,
    /// The tenant's shadow candidate, if one runs: tenant → [`ShadowRecord`] (its bytes
    /// are in `PolicyBlobs`), so every replica runs it (decision 74).
    PolicyShadows,
    /// Users by id.
    Users,
    /// The side table of users (their effective role, its source and the manual role),
    /// see [`side`].
    UserSides,
    /// Index: lowercased email → user id.
    UserEmails,
    /// Teams by id.
    Teams,
    /// Index: lowercased team name → team id.
    TeamNames,
    /// Index: team id, user id → (empty). A team's members.
    Members,
    /// Index: user id, team id → (empty). A user's teams.
    UserTeams,
    /// Tokens (PATs and VA tokens) by SHA-256 of the secret.
    Tokens,
    /// Index: owner id, token id → token hash.
    OwnerTokens,
    /// Append-only audit entries by sequence number.
    Audit,
    /// Per-tenant counters (audit sequence, ...).
    Counters,
    /// Outbox messages by id.
    Outbox,
    /// Index: message id → (empty). Outbox messages neither sent nor given up on.
    OutboxPending,
    /// One-time links (set password, reset) by SHA-256 of the secret.
    Links,
    /// Virtual accounts by id.
    VirtualAccounts,
    /// Index: virtual account name → id.
    VaNames,
    /// Index: idp, value → virtual account id (a VA mapping is unique).
    VaMappings,
    /// Identity providers by name.
    IdentityProviders,
    /// Index: issuer → identity provider name (an issuer is used once per tenant).
    IdpIssuers,
    /// SSO configurations by id.
    SsoConfigs,
    /// Resources by id.
    Resources,
    /// Index: idp, value → user id (a user mapping is unique).
    UserMappings,
    /// SCIM attributes of users a connection provisioned: sso id, user id → record.
    ScimUsers,
    /// SCIM lookups: sso id, kind, value → id (`u.name`, `u.ext`, `g.ext`), or
    /// sso id, `u.mail`, email, user id → (empty); `@owner`, user id → sso id.
    ScimIndex,
    /// SCIM memberships waiting for their user: sso id, member value, team id → record.
    ScimPending,
    /// Gatehouse's session signing keys: kid → record (private key included).
    SessionKeys,
    /// Pending SSO logins (one-time): SHA-256 of `state` → record.
    SsoPending,
    /// Password hashes (argon2id PHC strings): user id → record. Apart from the user
    /// record, so no answer or audit entry that shows a user can carry one.
    Passwords,
    /// The IdP's unique id of SSO users, bound at first login: sso id, issuer hash, `s`,
    /// SHA-256 of the unique id → user id; sso id, issuer hash, `u`, user id → unique id.
    SsoSubjects,
    /// Sessions logged out before they expire: session id → record (with its expiry).
    RevokedSessions,
    /// The change log's head per tenant: slug → the last sequence number (u64, big-endian).
    LogHeads,
    /// The per-tenant change log: tenant, sequence number (big-endian) → the keys one
    /// committed batch put and removed ([`ChangeEntry`]).
    ChangeLog,
}

impl Space {
    /// Every space, for backends that create them up front.
    pub const ALL: [Space; 38] = [
        Space::System,
        Space::Tenants,
        Space::PolicyState,
        Space::PolicyVersions,
        Space::PolicyBlobs,
        Space::PolicyShadows,
        Space::Users,
        Space::UserSides,
        Space::UserEmails,
        Space::Teams,
        Space::TeamNames,
        Space::Members,
        Space::UserTeams,
        Space::Tokens,
        Space::OwnerTokens,
        Space::Audit,
        Space::Counters,
        Space::Outbox,
        Space::OutboxPending,
        Space::Links,
        Space::VirtualAccounts,
        Space::VaNames,
        Space::VaMappings,
        Space::IdentityProviders,
        Space::IdpIssuers,
        Space::SsoConfigs,
        Space::Resources,
        Space::UserMappings,
        Space::ScimUsers,
        Space::ScimIndex,
        Space::ScimPending,
        Space::SessionKeys,
        Space::SsoPending,
        Space::Passwords,
        Space::SsoSubjects,
        Space::RevokedSessions,
        Space::LogHeads,
        Space::ChangeLog,
    ];

    /// The side table of this space's records, if they keep a part apart (see [`side`]).
    pub fn side(self) -> Option<Space> {
        match self {
            Space::Users => Some(Space::UserSides),
            _ => None,
        }
    }

    /// The space's stable name on disk.
    pub fn name(self) -> &'static str {
        match self {
            Space::System => "system",
            Space::Tenants => "tenants",
            Space::PolicyState => "policy_state",
            Space::PolicyVersions => "policy_versions",
            Space::PolicyBlobs => "policy_blobs",
            Space::PolicyShadows => "policy_shadows",
            Space::Users => "users",
            Space::UserSides => "user_sides",
            Space::UserEmails => "user_emails",
            Space::Teams => "teams",
            Space::TeamNames => "team_names",
            Space::Members => "members",
            Space::UserTeams => "user_teams",
            Space::Tokens => "tokens",
            Space::OwnerTokens => "owner_tokens",
            Space::Audit => "audit",
            Space::Counters => "counters",
            Space::Outbox => "outbox",
            Space::OutboxPending => "outbox_pending",
            Space::Links => "links",
            Space::VirtualAccounts => "virtual_accounts",
            Space::VaNames => "va_names",
            Space::VaMappings => "va_mappings",
            Space::IdentityProviders => "identity_providers",
            Space::IdpIssuers => "idp_issuers",
            Space::SsoConfigs => "sso_configs",
            Space::Resources => "resources",
            Space::UserMappings => "user_mappings",
            Space::ScimUsers => "scim_users",
            Space::ScimIndex => "scim_index",
            Space::ScimPending => "scim_pending",
            Space::SessionKeys => "session_keys",
            Space::SsoPending => "sso_pending",
            Space::Passwords => "passwords",
            Space::SsoSubjects => "sso_subjects",
            Space::RevokedSessions => "revoked_sessions",
            Space::LogHeads => "log_heads",
            Space::ChangeLog => "change_log",
        }
    }
}

/// What the store can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("stored record {key} is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("storage failure: {0}")]
    Io(String),
    /// The database cannot be reached (or answers that it cannot serve now); nothing was
    /// written, or for a lost COMMIT answer the outcome is unknown. Worth trying again.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
}

/// Why a transaction body stopped.
pub enum TxFail {
    /// The body decided to abort; nothing is written and the error is returned.
    Abort(StoreError),
    /// The backend needs the body to stop (conflict, I/O); it may run the body again.
    Backend(BackendFail),
}

/// A backend's reason to stop a transaction body, opaque to the body.
pub enum BackendFail {
    Sled(sled_backend::SledFail),
    Pg(pg_backend::PgFail),
    /// The backend could not be reached at all.
    Unavailable(StoreError),
}

impl BackendFail {
    fn into_store_error(self) -> StoreError {
        match self {
            BackendFail::Sled(_) => StoreError::Io("a sled transaction failed".into()),
            BackendFail::Pg(fail) => fail.into_store_error(),
            BackendFail::Unavailable(e) => e,
        }
    }
}

impl From<StoreError> for TxFail {
    fn from(e: StoreError) -> Self {
        TxFail::Abort(e)
    }
}

/// Reads and writes inside one transaction.
pub trait Txn {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, TxFail>;
    /// The values of `keys`, in order (a backend across a network reads them at once).
    fn get_many(&self, space: Space, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, TxFail> {
        keys.iter().map(|key| self.get(space, key)).collect()
    }
    fn put(&self, space: Space, key: &[u8], value: &[u8]) -> Result<(), TxFail>;
    fn remove(&self, space: Space, key: &[u8]) -> Result<(), TxFail>;
    /// The backend's [`Backend::stamp`] as this transaction began, with no other one
    /// committing: equal to a stamp taken before some reads, nothing those reads saw has
    /// changed since. `None`: the backend cannot tell.
    fn stamp(&self) -> Option<u64> {
        None
    }
}

/// A transaction body; it may run more than once, so it must only act through `Txn`.
pub type TxBody<'a> = dyn Fn(&dyn Txn) -> Result<(), TxFail> + 'a;

/// Key-value pairs, in key order.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// The narrow storage interface.
pub trait Backend: Send + Sync + 'static {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// The values of `keys`, in order. A backend across a network answers in one round
    /// trip what a loop of [`Backend::get`] would take one per key for.
    fn get_many(&self, space: Space, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        keys.iter().map(|key| self.get(space, key)).collect()
    }
    /// Visits the entries under `prefix` in key order, starting after `after` (a full
    /// key), until `visit` returns false.
    fn scan_each(
        &self,
        space: Space,
        prefix: &[u8],
        after: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError>;
    /// Every entry under `prefix`, in key order.
    fn scan(&self, space: Space, prefix: &[u8]) -> Result<Pairs, StoreError> {
        collect_pairs(|visit| self.scan_each(space, prefix, None, visit))
    }
    /// Every entry under each of `prefixes`, in key order, one list per prefix (one round
    /// trip on a backend across a network).
    fn scan_many(&self, space: Space, prefixes: &[Vec<u8>]) -> Result<Vec<Pairs>, StoreError> {
        prefixes
            .iter()
            .map(|prefix| self.scan(space, prefix))
            .collect()
    }
    /// Runs `body` atomically and in isolation: all its writes happen, or none.
    fn transact(&self, body: &TxBody<'_>) -> Result<(), StoreError>;
    /// Makes every write so far durable.
    fn flush(&self) -> Result<(), StoreError>;
    /// A stamp of the transactions committed so far, where the backend can give one
    /// cheaply: take it before reading, and a later transaction whose [`Txn::stamp`] is
    /// the same knows no other transaction committed since, so what was read still holds
    /// (a round skips re-reading its reads at commit, decision 81). `None` (the default):
    /// the backend cannot tell, or a transaction is committing right now.
    fn stamp(&self) -> Option<u64> {
        None
    }
    /// Returns once the flushes running when it was called have finished; `true` when it
    /// waited for one. A round's leader calls it before it commits, which on sled waits
    /// for them anyway, so that the writes queued meanwhile join its round.
    fn await_flushes(&self) -> bool {
        false
    }
    /// Takes the lock of tenant `slug` for other processes sharing this backend, held until
    /// the returned guard drops (`None`: no other process can write, so the store's
    /// in-process lock is enough). The store takes its in-process lock first.
    /// Other processes may write through the same data (a database, not a directory).
    fn shared(&self) -> bool {
        false
    }
    fn lock_tenant(&self, _slug: &str) -> Result<Option<Box<dyn HeldLock + '_>>, StoreError> {
        Ok(None)
    }
}

/// Every pair a [`Backend::scan_each`]-like `scan` visits, in order.
fn collect_pairs(
    scan: impl FnOnce(&mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), StoreError>,
) -> Result<Pairs, StoreError> {
    let mut pairs = Vec::new();
    scan(&mut |k, v| {
        pairs.push((k.to_vec(), v.to_vec()));
        true
    })?;
    Ok(pairs)
}

/// Where a [`Backend::scan_each`] of `prefix` after `after` starts: just after `after`
/// when it is at or past the prefix, else at the prefix.
fn scan_start(prefix: &[u8], after: Option<&[u8]>) -> std::ops::Bound<Vec<u8>> {
    match after {
        Some(after) if after >= prefix => std::ops::Bound::Excluded(after.to_vec()),
        _ => std::ops::Bound::Included(prefix.to_vec()),
    }
}

/// The values of `keys`, in order: `known`'s where it has one (`Some(value)`, a value
/// being `None` when absent), the others read at once with `read`.
fn fill_missing<E>(
    keys: &[Vec<u8>],
    mut known: Vec<Option<Option<Vec<u8>>>>,
    read: impl FnOnce(Vec<Vec<u8>>) -> Result<Vec<Option<Vec<u8>>>, E>,
) -> Result<Vec<Option<Vec<u8>>>, E> {
    let missing: Vec<Vec<u8>> = keys
        .iter()
        .zip(&known)
        .filter(|(_, value)| value.is_none())
        .map(|(key, _)| key.clone())
        .collect();
    if !missing.is_empty() {
        let mut read = read(missing)?.into_iter();
        for value in known.iter_mut().filter(|value| value.is_none()) {
            *value = Some(read.next().flatten());
        }
    }
    Ok(known.into_iter().map(Option::flatten).collect())
}

/// A tenant as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TenantRecord {
    pub slug: String,
    pub created_at: String,
    pub created_by: String,
    /// `scim`, `jit` or `invite_only`.
    #[serde(default = "invite_only")]
    pub mode: String,
}

fn invite_only() -> String {
    "invite_only".to_owned()
}

/// One uploaded version of a tenant's policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PolicyVersionRecord {
    pub version: u64,
    /// Hex SHA-256 of the component bytes.
    pub sha256: String,
    pub size: u64,
    /// The component's own name and version (from its `info`).
    pub name: String,
    pub policy_version: String,
    pub contract: String,
    pub settings: String,
    pub uploaded_by: String,
    pub uploaded_at: String,
}

/// Which version a tenant runs (`None`: the built-in default) and which ones it ran
/// before, most recent last, for rollback.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PolicyState {
    pub active: Option<u64>,
    pub history: Vec<Option<u64>>,
    pub next_version: u64,
}

/// The shadow candidate a tenant runs beside its active policy (its component bytes are
/// stored by hash with the versions').
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowRecord {
    /// Hex SHA-256 of the component bytes.
    pub sha256: String,
    pub settings: String,
    pub started_by: String,
    pub started_at: String,
}

/// A new policy version to store.
pub struct NewPolicyVersion<'a> {
    pub record: PolicyVersionRecord,
    pub component: &'a [u8],
    pub activate: bool,
}

/// The typed store.
#[derive(Clone)]
pub struct Store {
    /// The backend, seen through the round this thread leads (decision 80).
    kv: Arc<overlay::Overlaid>,
    /// Concurrent writes of a tenant go in rounds (`store.group_commit`, decisions 79 and
    /// 80); `false`: each write takes the lock, commits and flushes on its own.
    rounds_on: bool,
    artifacts: PathBuf,
    locks: Arc<tenant_lock::LocalLocks>,
    rounds: Arc<tenant_lock::Rounds>,
}

/// A write that panicked, as an error for its caller (with the panic's message).
fn panicked(panic: &(dyn std::any::Any + Send)) -> StoreError {
    let what = crate::logging::panic_message(panic);
    StoreError::Io(format!("the write panicked: {what}"))
}

/// A task of [`Store::write_queued`] that stopped: it panicked, or the runtime is
/// shutting down.
fn stopped(e: tokio::task::JoinError) -> StoreError {
    match e.try_into_panic() {
        Ok(panic) => panicked(&*panic),
        Err(e) => StoreError::Io(format!("the write stopped: {e}")),
    }
}

/// `tenant \0 rest...`: every tenant-owned key starts like this.
fn tkey(tenant: &str, rest: &[&[u8]]) -> Vec<u8> {
    let mut key =
        Vec::with_capacity(tenant.len() + 1 + rest.iter().map(|r| r.len() + 1).sum::<usize>());
    key.extend_from_slice(tenant.as_bytes());
    key.push(0);
    for (i, part) in rest.iter().enumerate() {
        if i > 0 {
            key.push(0);
        }
        key.extend_from_slice(part);
    }
    key
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("store records serialize")
}

fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).replace('\0', "/"),
        reason: e.to_string(),
    })
}

impl Store {
    /// Opens (or creates) the embedded sled store in `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Store::open_with(dir, &crate::config::StoreConfig::default())
    }

    /// [`Store::open`] with the store settings spelled out (group commit).
    pub fn open_with(
        dir: &Path,
        settings: &crate::config::StoreConfig,
    ) -> Result<Store, StoreError> {
        let artifacts = dir.join("artifacts");
        std::fs::create_dir_all(&artifacts)
            .map_err(|e| StoreError::Io(format!("cannot create {}: {e}", artifacts.display())))?;
        Ok(Store {
            rounds_on: settings.group_commit,
            ..Store::with_backend(
                Arc::new(SledBackend::open(&dir.join("sled"), settings.group_commit)?),
                artifacts,
            )
        })
    }

    /// Opens the store on the PostgreSQL database at `url` (migrating its schema); `dir`
    /// keeps only the local artifact cache.
    pub fn open_postgres(
        url: &str,
        dir: &Path,
        settings: &crate::config::StoreConfig,
    ) -> Result<Store, StoreError> {
        let artifacts = dir.join("artifacts");
        std::fs::create_dir_all(&artifacts)
            .map_err(|e| StoreError::Io(format!("cannot create {}: {e}", artifacts.display())))?;
        let options = PgOptions {
            max_connections: settings.max_connections,
            ..PgOptions::default()
        };
        Ok(Store {
            rounds_on: settings.group_commit,
            ..Store::with_backend(Arc::new(PgBackend::open(url, &options)?), artifacts)
        })
    }

    /// A store over any backend, with artifacts in `artifacts`.
    pub fn with_backend(kv: Arc<dyn Backend>, artifacts: PathBuf) -> Store {
        Store {
            kv: Arc::new(overlay::Overlaid::new(kv)),
            rounds_on: true,
            artifacts,
            locks: Arc::default(),
            rounds: Arc::default(),
        }
    }

    /// The backend is PostgreSQL (other processes may write the same data).
    pub fn is_shared(&self) -> bool {
        self.kv.shared()
    }

    /// Takes tenant `slug`'s write lock, for this process and (on a shared database) for
    /// every other replica, until the guard is released. Writes this thread makes
    /// meanwhile commit at once; [`TenantGuard::release`] makes them durable after the
    /// lock is let go.
    pub fn lock_tenant(&self, slug: &str) -> Result<TenantGuard<'_>, StoreError> {
        let local = self.locks.lock(slug);
        let remote = self.kv.lock_tenant(slug)?;
        Ok(TenantGuard::new(&*self.kv, remote, local))
    }

    /// Runs `write` under tenant `slug`'s write lock and returns its result once the
    /// writes it made are durable (an `Err` when they may not be: nothing may be
    /// acknowledged then).
    ///
    /// Concurrent writes of one tenant go in rounds (decision 79): the first takes the
    /// lock and runs, on its own thread, the writes queued behind it meanwhile, one after
    /// the other, each committing on its own as if it held the lock alone; one flush then
    /// covers the whole round. A queued write's thread sleeps once and wakes once, with
    /// its result; the lock changes hands once per round, not once per write. A panic in
    /// `write` is resumed on its caller's thread. A write nested in another takes the
    /// lock directly, as [`Store::lock_tenant`] would.
    pub fn write_locked<R: Send>(
        &self,
        slug: &str,
        write: impl FnOnce() -> R + Send,
    ) -> Result<R, StoreError> {
        // A write nested in another (this thread holds a tenant guard: it leads a round,
        // or holds `lock_tenant`) takes its lock directly, as a plain lock would, rather
        // than queue behind a round that may wait for this thread.
        if !self.rounds_on || tenant_lock::holds_any(tenant_lock::backend_id(&*self.kv)) {
            let guard = self.lock_tenant(slug)?;
            let out = write();
            guard.release()?;
            return Ok(out);
        }
        let mut out = None;
        // The job logs under its caller's span, whichever thread runs it.
        let span = tracing::Span::current();
        let slot = &mut out;
        let job: Box<dyn FnOnce() + Send + '_> = Box::new(move || {
            let _entered = span.enter();
            *slot = Some(write());
        });
        // SAFETY: only the lifetime is erased (the same trait object). The job borrows
        // this frame (`write`'s captures and `out`), and this function neither returns
        // nor unwinds before the job is gone: a queued caller waits until its waiter is
        // `Done`, which the round's end (`RoundEnd`, also when its leader panics) sets
        // only after the job has run (a panic in it is caught) or been dropped unrun. A
        // leader that unwinds has passed through that same end first.
        let job: tenant_lock::Job =
            unsafe { std::mem::transmute::<Box<dyn FnOnce() + Send + '_>, tenant_lock::Job>(job) };
        let me = tenant_lock::Waiter::new(job);
        if self.rounds.join(slug, &me) {
            self.lead(slug, &me);
        }
        loop {
            match me.wait() {
                tenant_lock::Next::Lead => self.lead(slug, &me),
                tenant_lock::Next::Done(durable, panic) => {
                    if let Some(panic) = panic {
                        std::panic::resume_unwind(panic);
                    }
                    durable?;
                    return out.ok_or_else(|| StoreError::Io("the write did not run".to_owned()));
                }
            }
        }
    }

    /// Leads a round of `slug` on this thread, `me` (handed the lead) first.
    fn lead(&self, slug: &str, me: &Arc<tenant_lock::Waiter>) {
        // In a runtime, the next round's lead starts on a blocking thread as soon as this
        // round hands it off, instead of waking its caller to start it (one thread hop
        // fewer between two rounds); outside one, the dropped `next` wakes its caller.
        let runtime = tokio::runtime::Handle::try_current().ok();
        let start = |next: tenant_lock::NextLead| {
            if let Some(runtime) = &runtime {
                let (store, slug) = (self.clone(), slug.to_owned());
                runtime.spawn_blocking(move || store.lead(&slug, &next.take()));
            }
        };
        self.rounds.lead(
            slug,
            me.clone(),
            || Ok(self.kv.open_round(self.lock_tenant(slug)?)),
            &start,
        )
    }

    /// [`Store::write_locked`] for a caller in a tokio task (decision 85): the write joins
    /// the tenant's round the same way and is acknowledged the same way (`Ok` only once a
    /// flush covers it), but while it is queued no thread waits for it, only the task.
    /// Handed the lead, the task leads the round on a blocking thread. The protocol runs
    /// in a task of its own, so a caller that stops waiting (a client gone) neither
    /// loses a round its write was to lead nor stops its write: a write once queued
    /// happens, as one on a thread would. A panic in `write` is an `Err` here. Not for
    /// a write nested in another (no thread of this task holds a tenant guard). With
    /// rounds off it is [`Store::write_locked`] on a blocking thread.
    pub async fn write_queued<R: Send + 'static>(
        &self,
        slug: &str,
        write: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, StoreError> {
        let (store, slug) = (self.clone(), slug.to_owned());
        // Under the caller's span, so the write logs under it whichever thread runs it.
        let span = tracing::Span::current();
        tokio::spawn(tracing::Instrument::instrument(
            store.queued(slug, write),
            span,
        ))
        .await
        .unwrap_or_else(|e| Err(stopped(e)))
    }

    async fn queued<R: Send + 'static>(
        self,
        slug: String,
        write: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, StoreError> {
        if !self.rounds_on {
            return tokio::task::spawn_blocking(move || self.write_locked(&slug, write))
                .await
                .unwrap_or_else(|e| Err(stopped(e)));
        }
        let out = Arc::new(std::sync::Mutex::new(None));
        let slot = out.clone();
        // The job logs under its caller's span, whichever thread runs it.
        let span = tracing::Span::current();
        let me = tenant_lock::Waiter::new(Box::new(move || {
            let _entered = span.enter();
            let value = write();
            *slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(value);
        }));
        let mut lead = self.rounds.join(&slug, &me);
        loop {
            if lead {
                let (store, slug, me) = (self.clone(), slug.clone(), me.clone());
                // However the round ends (a panic included), `me` is then `Done`.
                let _ = tokio::task::spawn_blocking(move || store.lead(&slug, &me)).await;
            }
            match me.wait_async().await {
                tenant_lock::Next::Lead => lead = true,
                tenant_lock::Next::Done(durable, panic) => {
                    if let Some(panic) = panic {
                        return Err(panicked(&*panic));
                    }
                    durable?;
                    return out
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .take()
                        .ok_or_else(|| StoreError::Io("the write did not run".to_owned()));
                }
            }
        }
    }

    /// Makes every write so far durable (also done by each write method).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.kv.flush()
    }

    /// Runs `body` in one transaction that also appends, per tenant it touched, the next
    /// entry of that tenant's change log; durable when it returns, or, when this thread
    /// holds a tenant lock of this store, when that lock is released.
    fn transact_durably(&self, body: &TxBody<'_>) -> Result<(), StoreError> {
        // In a round this thread leads: staged, committed with the round.
        if let Some(staged) = self.kv.stage(body) {
            return staged;
        }
        self.kv.transact(&|tx| change_log::logged(tx, body))?;
        if tenant_lock::defer_flush(tenant_lock::backend_id(&*self.kv)) {
            return Ok(());
        }
        self.kv.flush()
    }

    // ------------------------------------------------------------------ system

    /// A process-wide value.
    pub fn system_get(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.kv.get(Space::System, name.as_bytes())
    }

    /// Sets a process-wide value, durably.
    pub fn system_put(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        self.transact_durably(&|tx| tx.put(Space::System, name.as_bytes(), value))
    }

    // ----------------------------------------------------------------- tenants

    /// Creates a tenant; `Conflict` if the slug is taken.
    pub fn create_tenant(&self, tenant: &TenantRecord) -> Result<(), StoreError> {
        let value = encode(tenant);
        self.transact_durably(&|tx| {
            if tx.get(Space::Tenants, tenant.slug.as_bytes())?.is_some() {
                return Err(
                    StoreError::Conflict(format!("tenant {} already exists", tenant.slug)).into(),
                );
            }
            tx.put(Space::Tenants, tenant.slug.as_bytes(), &value)
        })
    }

    /// A tenant by slug.
    pub fn tenant(&self, slug: &str) -> Result<Option<TenantRecord>, StoreError> {
        self.kv
            .get(Space::Tenants, slug.as_bytes())?
            .map(|v| decode(slug.as_bytes(), &v))
            .transpose()
    }

    /// Every tenant, by slug.
    pub fn tenants(&self) -> Result<Vec<TenantRecord>, StoreError> {
        self.kv
            .scan(Space::Tenants, b"")?
            .iter()
            .map(|(k, v)| decode(k, v))
            .collect()
    }

    // ------------------------------------------------------------------ outbox

    /// Every pending outbox message of every tenant as `(tenant, message id, value)`, in
    /// key order; the value is what the relay stored (its next try's time). Process-wide,
    /// like [`Store::tenants`]: the relay serves all tenants.
    pub fn outbox_pending(&self) -> Result<Vec<(String, String, Vec<u8>)>, StoreError> {
        self.kv
            .scan(Space::OutboxPending, b"")?
            .into_iter()
            .map(|(key, value)| {
                let split = key.iter().position(|&b| b == 0);
                let parts = split.and_then(|i| {
                    Some((
                        String::from_utf8(key[..i].to_vec()).ok()?,
                        String::from_utf8(key[i + 1..].to_vec()).ok()?,
                    ))
                });
                match parts {
                    Some((tenant, id)) => Ok((tenant, id, value)),
                    None => Err(StoreError::Corrupt {
                        key: String::from_utf8_lossy(&key).replace('\0', "/"),
                        reason: "not a tenant and a message id".into(),
                    }),
                }
            })
            .collect()
    }

    // ---------------------------------------------------------------- policies

    /// The tenant's policy state (default state when it never uploaded one).
    pub fn policy_state(&self, tenant: &str) -> Result<PolicyState, StoreError> {
        let key = tkey(tenant, &[]);
        Ok(self
            .kv
            .get(Space::PolicyState, &key)?
            .map(|v| decode(&key, &v))
            .transpose()?
            .unwrap_or_default())
    }

    /// Stores a new version (bytes and record) and, if asked, activates it, all in one
    /// transaction. The version number is assigned here. Write its artifact first
    /// ([`Store::put_artifact`]) so an acknowledged version never lacks one.
    pub fn add_policy_version(
        &self,
        tenant: &str,
        new: NewPolicyVersion<'_>,
    ) -> Result<(PolicyVersionRecord, PolicyState), StoreError> {
        let state_key = tkey(tenant, &[]);
        let blob_key = tkey(tenant, &[new.record.sha256.as_bytes()]);
        let outcome = std::sync::Mutex::new(None);
        self.transact_durably(&|tx| {
            if tx.get(Space::Tenants, tenant.as_bytes())?.is_none() {
                return Err(StoreError::NotFound(format!("tenant {tenant}")).into());
            }
            let mut state: PolicyState = tx
                .get(Space::PolicyState, &state_key)?
                .map(|v| decode(&state_key, &v))
                .transpose()?
                .unwrap_or_default();
            state.next_version = state.next_version.max(1);
            let record = PolicyVersionRecord {
                version: state.next_version,
                ..new.record.clone()
            };
            state.next_version += 1;
            if new.activate {
                state.history.push(state.active);
                state.active = Some(record.version);
            }
            tx.put(
                Space::PolicyVersions,
                &tkey(tenant, &[&record.version.to_be_bytes()]),
                &encode(&record),
            )?;
            tx.put(Space::PolicyBlobs, &blob_key, new.component)?;
            tx.put(Space::PolicyState, &state_key, &encode(&state))?;
            *outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some((record, state));
            Ok(())
        })?;
        let outcome = outcome.into_inner().unwrap_or_else(|p| p.into_inner());
        outcome.ok_or_else(|| StoreError::Io("transaction committed without an outcome".into()))
    }

    /// Makes `version` (`None`: the built-in default) the tenant's active policy.
    pub fn activate_policy(
        &self,
        tenant: &str,
        version: Option<u64>,
    ) -> Result<PolicyState, StoreError> {
        self.update_policy_state(tenant, &|state, tx| {
            if let Some(v) = version {
                if tx
                    .get(Space::PolicyVersions, &tkey(tenant, &[&v.to_be_bytes()]))?
                    .is_none()
                {
                    return Err(StoreError::NotFound(format!(
                        "policy version {v} of tenant {tenant}"
                    ))
                    .into());
                }
            }
            if state.active != version {
                state.history.push(state.active);
                state.active = version;
            }
            Ok(())
        })
    }

    /// Returns the tenant to the version it ran before the current one.
    pub fn rollback_policy(&self, tenant: &str) -> Result<PolicyState, StoreError> {
        self.update_policy_state(tenant, &|state, _| match state.history.pop() {
            Some(previous) => {
                state.active = previous;
                Ok(())
            }
            None => Err(StoreError::Conflict(format!(
                "tenant {tenant} has no earlier policy to roll back to"
            ))
            .into()),
        })
    }

    fn update_policy_state(
        &self,
        tenant: &str,
        change: &dyn Fn(&mut PolicyState, &dyn Txn) -> Result<(), TxFail>,
    ) -> Result<PolicyState, StoreError> {
        let key = tkey(tenant, &[]);
        let outcome = std::sync::Mutex::new(None);
        self.transact_durably(&|tx| {
            if tx.get(Space::Tenants, tenant.as_bytes())?.is_none() {
                return Err(StoreError::NotFound(format!("tenant {tenant}")).into());
            }
            let mut state: PolicyState = tx
                .get(Space::PolicyState, &key)?
                .map(|v| decode(&key, &v))
                .transpose()?
                .unwrap_or_default();
            change(&mut state, tx)?;
            tx.put(Space::PolicyState, &key, &encode(&state))?;
            *outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(state);
            Ok(())
        })?;
        let outcome = outcome.into_inner().unwrap_or_else(|p| p.into_inner());
        outcome.ok_or_else(|| StoreError::Io("transaction committed without an outcome".into()))
    }

    /// One version's record.
    pub fn policy_version(
        &self,
        tenant: &str,
        version: u64,
    ) -> Result<Option<PolicyVersionRecord>, StoreError> {
        let key = tkey(tenant, &[&version.to_be_bytes()]);
        self.kv
            .get(Space::PolicyVersions, &key)?
            .map(|v| decode(&key, &v))
            .transpose()
    }

    /// Every version of the tenant's policy, oldest first.
    pub fn policy_versions(&self, tenant: &str) -> Result<Vec<PolicyVersionRecord>, StoreError> {
        self.kv
            .scan(Space::PolicyVersions, &tkey(tenant, &[]))?
            .iter()
            .map(|(k, v)| decode(k, v))
            .collect()
    }

    /// The component bytes with this hash, as uploaded by the tenant.
    pub fn policy_component(
        &self,
        tenant: &str,
        sha256: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.kv
            .get(Space::PolicyBlobs, &tkey(tenant, &[sha256.as_bytes()]))
    }

    /// The tenant's stored shadow candidate, if any.
    pub fn policy_shadow(&self, tenant: &str) -> Result<Option<ShadowRecord>, StoreError> {
        let key = tkey(tenant, &[]);
        self.kv
            .get(Space::PolicyShadows, &key)?
            .map(|v| decode(&key, &v))
            .transpose()
    }

    /// Stores the tenant's shadow candidate (`Some`, with its component bytes) or removes
    /// it (`None`), in one transaction.
    pub fn set_policy_shadow(
        &self,
        tenant: &str,
        shadow: Option<(&ShadowRecord, &[u8])>,
    ) -> Result<(), StoreError> {
        let key = tkey(tenant, &[]);
        self.transact_durably(&|tx| {
            if tx.get(Space::Tenants, tenant.as_bytes())?.is_none() {
                return Err(StoreError::NotFound(format!("tenant {tenant}")).into());
            }
            match shadow {
                Some((record, component)) => {
                    tx.put(
                        Space::PolicyBlobs,
                        &tkey(tenant, &[record.sha256.as_bytes()]),
                        component,
                    )?;
                    tx.put(Space::PolicyShadows, &key, &encode(record))
                }
                None => tx.remove(Space::PolicyShadows, &key),
            }
        })
    }

    /// Where the precompiled artifact of component `sha256` for an engine with
    /// `artifact_key` lives (it may not exist yet).
    pub fn artifact_path(&self, sha256: &str, artifact_key: &str) -> PathBuf {
        self.artifacts
            .join(format!("{sha256}-{artifact_key}.cwasm"))
    }

    /// Writes an artifact durably and atomically: a temporary file, fsync, rename, fsync of
    /// the directory. A mapped artifact is never modified in place.
    pub fn put_artifact(
        &self,
        sha256: &str,
        artifact_key: &str,
        artifact: &[u8],
    ) -> Result<PathBuf, StoreError> {
        let path = self.artifact_path(sha256, artifact_key);
        let io = |e: std::io::Error| StoreError::Io(format!("writing {}: {e}", path.display()));
        let tmp = path.with_extension(format!(
            "tmp-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let mut file = std::fs::File::create(&tmp).map_err(io)?;
        file.write_all(artifact).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        std::fs::File::open(&self.artifacts)
            .and_then(|dir| dir.sync_all())
            .map_err(io)?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where a test store lives: its artifact directory, and the database when on
    /// PostgreSQL (to reopen it).
    struct Place {
        dir: tempfile::TempDir,
        url: Option<String>,
    }

    impl Place {
        fn open(&self) -> Store {
            match &self.url {
                Some(url) => {
                    Store::open_postgres(url, self.dir.path(), &Default::default()).unwrap()
                }
                None => Store::open(self.dir.path()).unwrap(),
            }
        }
    }

    /// One empty store on each backend: sled, then PostgreSQL.
    fn places() -> Vec<Place> {
        vec![
            Place {
                dir: tempfile::tempdir().unwrap(),
                url: None,
            },
            Place {
                dir: tempfile::tempdir().unwrap(),
                url: Some(pg_cluster::database_url()),
            },
        ]
    }

    /// Runs `test` on an empty store on each backend.
    fn on_both(test: impl Fn(&Store)) {
        for place in places() {
            let store = place.open();
            test(&store);
        }
    }

    fn tenant(slug: &str) -> TenantRecord {
        TenantRecord {
            slug: slug.into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            created_by: "operator".into(),
            mode: "invite_only".into(),
        }
    }

    fn version(sha: &str) -> PolicyVersionRecord {
        PolicyVersionRecord {
            version: 0,
            sha256: sha.into(),
            size: 3,
            name: "p".into(),
            policy_version: "1".into(),
            contract: "0.1.0".into(),
            settings: "{}".into(),
            uploaded_by: "operator".into(),
            uploaded_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    fn add(store: &Store, t: &str, sha: &str, activate: bool) -> PolicyVersionRecord {
        let new = NewPolicyVersion {
            record: version(sha),
            component: b"abc",
            activate,
        };
        store.add_policy_version(t, new).unwrap().0
    }

    #[test]
    fn a_tenant_slug_is_taken_once() {
        on_both(|store| {
            store.create_tenant(&tenant("acme")).unwrap();
            let err = store.create_tenant(&tenant("acme")).unwrap_err();
            assert!(matches!(err, StoreError::Conflict(_)), "{err}");
            assert_eq!(store.tenants().unwrap().len(), 1);
        });
    }

    #[test]
    fn versions_activate_and_roll_back_in_order() {
        on_both(|store| {
            store.create_tenant(&tenant("acme")).unwrap();
            assert_eq!(add(store, "acme", "aa", true).version, 1);
            assert_eq!(add(store, "acme", "bb", false).version, 2);
            assert_eq!(store.policy_state("acme").unwrap().active, Some(1));
            assert_eq!(
                store.activate_policy("acme", Some(2)).unwrap().active,
                Some(2)
            );
            assert_eq!(store.rollback_policy("acme").unwrap().active, Some(1));
            assert_eq!(store.rollback_policy("acme").unwrap().active, None);
            assert!(matches!(
                store.rollback_policy("acme"),
                Err(StoreError::Conflict(_))
            ));
            assert!(matches!(
                store.activate_policy("acme", Some(9)),
                Err(StoreError::NotFound(_))
            ));
        });
    }

    #[test]
    fn one_tenant_never_sees_another_tenants_policies() {
        on_both(|store| {
            // "acme" is a prefix of "acme-labs": the 0 byte after the slug keeps them apart.
            store.create_tenant(&tenant("acme")).unwrap();
            store.create_tenant(&tenant("acme-labs")).unwrap();
            add(store, "acme-labs", "cc", true);
            assert!(store.policy_versions("acme").unwrap().is_empty());
            assert_eq!(store.policy_state("acme").unwrap().active, None);
            assert!(store.policy_component("acme", "cc").unwrap().is_none());
            assert_eq!(store.policy_versions("acme-labs").unwrap().len(), 1);
        });
    }

    #[test]
    fn writes_survive_reopening() {
        for place in places() {
            {
                let store = place.open();
                store.create_tenant(&tenant("acme")).unwrap();
                add(&store, "acme", "aa", true);
                store.put_artifact("aa", "k", b"art").unwrap();
            }
            let store = place.open();
            assert_eq!(store.policy_state("acme").unwrap().active, Some(1));
            assert_eq!(
                store.policy_component("acme", "aa").unwrap().as_deref(),
                Some(&b"abc"[..])
            );
            assert_eq!(
                std::fs::read(store.artifact_path("aa", "k")).unwrap(),
                b"art"
            );
        }
    }

    #[test]
    fn a_version_for_an_unknown_tenant_is_refused() {
        on_both(|store| {
            let new = NewPolicyVersion {
                record: version("aa"),
                component: b"abc",
                activate: true,
            };
            assert!(matches!(
                store.add_policy_version("ghost", new),
                Err(StoreError::NotFound(_))
            ));
        });
    }

    #[test]
    fn scans_page_in_key_order_within_the_prefix_and_after_a_key() {
        on_both(|store| {
            // More entries than one PostgreSQL page, plus neighbours outside the prefix.
            let n = 1200u32;
            store
                .kv
                .transact(&|tx| {
                    for i in 0..n {
                        tx.put(Space::Members, &tkey("t", &[&i.to_be_bytes()]), b"v")?;
                    }
                    tx.put(Space::Members, b"s\xff", b"before")?;
                    tx.put(Space::Members, b"t\x01", b"after")?;
                    tx.put(Space::Members, b"", b"empty key")?;
                    Ok(())
                })
                .unwrap();
            let all = store.kv.scan(Space::Members, &tkey("t", &[])).unwrap();
            assert_eq!(all.len(), n as usize);
            assert!(all.windows(2).all(|w| w[0].0 < w[1].0));
            let after = tkey("t", &[&999u32.to_be_bytes()]);
            let mut rest = Vec::new();
            store
                .kv
                .scan_each(
                    Space::Members,
                    &tkey("t", &[]),
                    Some(&after),
                    &mut |k, _| {
                        rest.push(k.to_vec());
                        rest.len() < 50
                    },
                )
                .unwrap();
            assert_eq!(rest.len(), 50);
            assert_eq!(rest[0], tkey("t", &[&1000u32.to_be_bytes()]));
            assert_eq!(
                store.kv.scan(Space::Members, b"").unwrap().len(),
                n as usize + 3
            );
            assert!(store.kv.scan(Space::Teams, b"").unwrap().is_empty());
        });
    }

    #[test]
    fn many_reads_at_once_answer_as_one_read_each() {
        on_both(|store| {
            let k = |t: &str, parts: &[&[u8]]| tkey(t, parts);
            store
                .kv
                .transact(&|tx| {
                    for (user, teams) in [("u1", &["a", "b"][..]), ("u2", &["c"]), ("u10", &["d"])]
                    {
                        for team in teams {
                            tx.put(
                                Space::UserTeams,
                                &k("t", &[user.as_bytes(), team.as_bytes()]),
                                b"",
                            )?;
                        }
                        tx.put(Space::Users, &k("t", &[user.as_bytes()]), user.as_bytes())?;
                    }
                    // Another tenant's entries never answer for this one's keys.
                    tx.put(Space::UserTeams, &k("u", &[b"u1", b"z"]), b"")?;
                    tx.put(Space::Users, &k("u", &[b"u3"]), b"other")
                })
                .unwrap();
            let keys: Vec<Vec<u8>> = ["u2", "u3", "u1", "u2", "nobody"]
                .iter()
                .map(|u| k("t", &[u.as_bytes()]))
                .collect();
            let one_by_one: Vec<Option<Vec<u8>>> = keys
                .iter()
                .map(|key| store.kv.get(Space::Users, key).unwrap())
                .collect();
            assert_eq!(store.kv.get_many(Space::Users, &keys).unwrap(), one_by_one);
            assert_eq!(one_by_one[0].as_deref(), Some(&b"u2"[..]));
            assert_eq!(one_by_one[1], None);
            assert!(store.kv.get_many(Space::Users, &[]).unwrap().is_empty());

            // `u1`'s prefix must not take `u10`'s entries: prefixes end in a 0 byte.
            let prefixes: Vec<Vec<u8>> = ["u1", "u10", "nobody", "u2"]
                .iter()
                .map(|u| {
                    let mut p = k("t", &[u.as_bytes()]);
                    p.push(0);
                    p
                })
                .collect();
            let scans: Vec<Pairs> = prefixes
                .iter()
                .map(|p| store.kv.scan(Space::UserTeams, p).unwrap())
                .collect();
            assert_eq!(
                store.kv.scan_many(Space::UserTeams, &prefixes).unwrap(),
                scans
            );
            assert_eq!(scans.iter().map(Vec::len).collect::<Vec<_>>(), [2, 1, 0, 1]);

            // Inside a transaction, its own writes (and removals) answer first.
            store
                .kv
                .transact(&|tx| {
                    tx.put(Space::Users, &k("t", &[b"u3"]), b"new")?;
                    tx.remove(Space::Users, &k("t", &[b"u1"]))?;
                    let seen = tx.get_many(Space::Users, &keys)?;
                    let each: Vec<_> = keys
                        .iter()
                        .map(|key| tx.get(Space::Users, key))
                        .collect::<Result<_, _>>()?;
                    assert_eq!(seen, each);
                    assert_eq!(seen[1].as_deref(), Some(&b"new"[..]));
                    assert_eq!(seen[2], None);
                    assert_eq!(seen[0].as_deref(), Some(&b"u2"[..]));
                    Ok(())
                })
                .unwrap();
        });
    }

    #[test]
    fn concurrent_read_modify_write_transactions_lose_no_update() {
        on_both(|store| {
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    let store = store.clone();
                    std::thread::spawn(move || {
                        for _ in 0..25 {
                            store
                                .transact_durably(&|tx| {
                                    let n = tx
                                        .get(Space::Counters, b"t\0n")?
                                        .map(|v| u64::from_be_bytes(v.try_into().unwrap()))
                                        .unwrap_or(0);
                                    tx.put(Space::Counters, b"t\0n", &(n + 1).to_be_bytes())
                                })
                                .unwrap();
                        }
                    })
                })
                .collect();
            for worker in workers {
                worker.join().unwrap();
            }
            let n = store.kv.get(Space::Counters, b"t\0n").unwrap().unwrap();
            assert_eq!(u64::from_be_bytes(n.try_into().unwrap()), 100);
        });
    }

    #[test]
    fn a_tenant_lock_excludes_other_stores_on_the_same_database() {
        let place = &places()[1];
        let (a, b) = (place.open(), place.open());
        let held = a.lock_tenant("acme").unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let b = b.clone();
            std::thread::spawn(move || {
                let _other_tenant = b.lock_tenant("globex").unwrap();
                tx.send("globex").unwrap();
                let _guard = b.lock_tenant("acme").unwrap();
                tx.send("acme").unwrap();
            })
        };
        let timeout = std::time::Duration::from_secs(10);
        assert_eq!(rx.recv_timeout(timeout).unwrap(), "globex");
        // While `a` holds acme, `b` waits; the wait is what is asserted, briefly.
        assert!(rx
            .recv_timeout(std::time::Duration::from_millis(300))
            .is_err());
        drop(held);
        assert_eq!(rx.recv_timeout(timeout).unwrap(), "acme");
        waiter.join().unwrap();
    }

    /// A sled backend whose flushes are counted and wait at a gate the test opens.
    struct GatedFlush {
        inner: SledBackend,
        flushes: std::sync::atomic::AtomicUsize,
        transactions: std::sync::atomic::AtomicUsize,
        /// Every key a committed transaction put, in commit order.
        written: std::sync::Mutex<Vec<Vec<u8>>>,
        gate: std::sync::Mutex<()>,
        /// The next flush panics.
        panic_next: std::sync::atomic::AtomicBool,
        /// Keys read inside transactions.
        transaction_reads: std::sync::atomic::AtomicUsize,
    }

    impl Backend for GatedFlush {
        fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.get(space, key)
        }
        fn scan_each(
            &self,
            space: Space,
            prefix: &[u8],
            after: Option<&[u8]>,
            visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
        ) -> Result<(), StoreError> {
            self.inner.scan_each(space, prefix, after, visit)
        }
        fn transact(&self, body: &TxBody<'_>) -> Result<(), StoreError> {
            self.transactions
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            /// Notes the keys put (a body may run again: only the last run's count) and
            /// counts the keys read.
            struct Spy<'a>(
                &'a dyn Txn,
                &'a std::cell::RefCell<Vec<Vec<u8>>>,
                &'a std::sync::atomic::AtomicUsize,
            );
            impl Txn for Spy<'_> {
                fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, TxFail> {
                    self.2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    self.0.get(space, key)
                }
                fn stamp(&self) -> Option<u64> {
                    self.0.stamp()
                }
                fn put(&self, space: Space, key: &[u8], value: &[u8]) -> Result<(), TxFail> {
                    self.1.borrow_mut().push(key.to_vec());
                    self.0.put(space, key, value)
                }
                fn remove(&self, space: Space, key: &[u8]) -> Result<(), TxFail> {
                    self.0.remove(space, key)
                }
            }
            let put = std::cell::RefCell::new(Vec::new());
            self.inner.transact(&|tx| {
                put.borrow_mut().clear();
                body(&Spy(tx, &put, &self.transaction_reads))
            })?;
            self.written.lock().unwrap().extend(put.into_inner());
            Ok(())
        }
        fn flush(&self) -> Result<(), StoreError> {
            self.flushes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _open = self
                .gate
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if self
                .panic_next
                .swap(false, std::sync::atomic::Ordering::SeqCst)
            {
                panic!("the flush fails");
            }
            self.inner.flush()
        }
        fn stamp(&self) -> Option<u64> {
            self.inner.stamp()
        }
    }

    /// A sled store in `dir` behind a [`GatedFlush`].
    fn gated_store(dir: &Path) -> (Arc<GatedFlush>, Store) {
        let backend = Arc::new(GatedFlush {
            inner: SledBackend::open(&dir.join("sled"), true).unwrap(),
            flushes: Default::default(),
            transactions: Default::default(),
            written: Default::default(),
            gate: Default::default(),
            panic_next: Default::default(),
            transaction_reads: Default::default(),
        });
        let store = Store::with_backend(backend.clone(), dir.join("artifacts"));
        (backend, store)
    }

    /// Writes team name `name` of tenant `acme`.
    fn put_team(store: &Store, name: &str) -> Result<(), StoreError> {
        let mut batch = Batch::new("acme");
        batch.put_raw(Space::TeamNames, &[name], b"x");
        store.apply(&batch)
    }

    #[test]
    fn writes_under_a_tenant_lock_are_flushed_once_after_the_lock_is_released() {
        use std::sync::atomic::Ordering::SeqCst;
        let dir = tempfile::tempdir().unwrap();
        let (backend, store) = gated_store(dir.path());
        let put = |name: &str| put_team(&store, name).unwrap();
        // Outside a lock each write waits for its own flush.
        put("outside");
        assert_eq!(backend.flushes.load(SeqCst), 1);

        let closed = backend.gate.lock().unwrap();
        std::thread::scope(|s| {
            let writer = s.spawn(|| {
                let guard = store.lock_tenant("acme").unwrap();
                put("a");
                put("b");
                // Committed, visible, and not yet flushed.
                assert_eq!(backend.flushes.load(SeqCst), 1);
                guard.release()
            });
            // The writer's flush has started and waits at the gate: the lock is free.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while backend.flushes.load(SeqCst) < 2 {
                assert!(std::time::Instant::now() < deadline, "no flush started");
                std::thread::yield_now();
            }
            let next = store.lock_tenant("acme").unwrap();
            assert!(!writer.is_finished(), "released before its flush finished");
            drop(next);
            drop(closed);
            writer.join().unwrap().unwrap();
        });
        // One flush for both writes under the lock.
        assert_eq!(backend.flushes.load(SeqCst), 2);
        assert!(store
            .kv
            .get(Space::TeamNames, &tkey("acme", &[b"b"]))
            .unwrap()
            .is_some());
    }

    /// Whether team name `name` of tenant `acme` is committed to the backend.
    fn has_team(store: &Store, name: &str) -> bool {
        store
            .kv
            .get(Space::TeamNames, &tkey("acme", &[name.as_bytes()]))
            .unwrap()
            .is_some()
    }

    /// Polls `done` until it holds, failing after ten seconds.
    fn eventually(what: &str, done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            std::thread::yield_now();
        }
    }

    #[test]
    fn concurrent_writes_of_a_tenant_share_one_round_and_its_flush() {
        use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
        let dir = tempfile::tempdir().unwrap();
        let (backend, store) = gated_store(dir.path());
        let put = |name: &str| put_team(&store, name).map(|()| name.to_owned());
        let names: Vec<String> = (0..6).map(|i| format!("q{i}")).collect();
        let closed = backend.gate.lock().unwrap();
        let b_started = AtomicBool::new(false);
        std::thread::scope(|s| {
            // A's round is A alone; its flush waits at the gate.
            let a = s.spawn(|| store.write_locked("acme", || put("a")));
            eventually("A's flush starts", || backend.flushes.load(SeqCst) == 1);
            // B leads the next round, and six writes queue behind it while it runs.
            let b = s.spawn(|| {
                store.write_locked("acme", || {
                    b_started.store(true, SeqCst);
                    eventually("six writes queue", || store.rounds.queued("acme") == 6);
                    put("b")
                })
            });
            eventually("B leads", || b_started.load(SeqCst));
            let queued: Vec<_> = names
                .iter()
                .map(|name| s.spawn(|| store.write_locked("acme", || put(name))))
                .collect();
            // B's round ran the six on B's thread, under the lock, and flushes once.
            eventually("B's round flushes", || backend.flushes.load(SeqCst) == 2);
            for name in names.iter().map(String::as_str).chain(["a", "b"]) {
                assert!(has_team(&store, name), "{name} is committed");
            }
            // Nothing is acknowledged before a flush that covers it has finished.
            assert!(!a.is_finished() && !b.is_finished());
            assert!(queued.iter().all(|q| !q.is_finished()));
            drop(closed);
            assert_eq!(a.join().unwrap().unwrap().unwrap(), "a");
            assert_eq!(b.join().unwrap().unwrap().unwrap(), "b");
            for (q, name) in queued.into_iter().zip(&names) {
                assert_eq!(&q.join().unwrap().unwrap().unwrap(), name);
            }
        });
        // Eight writes, two flushes and two transactions: one of each per round.
        assert_eq!(backend.flushes.load(SeqCst), 2);
        assert_eq!(backend.transactions.load(SeqCst), 2);
    }

    /// The team names of tenant `acme`, as a scan from this thread sees them.
    fn team_names(store: &Store) -> Vec<String> {
        store.index(Space::TeamNames, "acme", &[]).unwrap()
    }

    #[test]
    fn a_round_reads_its_own_writes_and_commits_them_at_its_end_with_their_log_entries() {
        let dir = tempfile::tempdir().unwrap();
        let (backend, store) = gated_store(dir.path());
        put_team(&store, "a").unwrap();
        put_team(&store, "c").unwrap();
        let head = store.changes_since("acme", 0, 10).unwrap().head;
        let before = backend
            .transactions
            .load(std::sync::atomic::Ordering::SeqCst);
        store
            .write_locked("acme", || {
                put_team(&store, "b").unwrap();
                let mut removal = Batch::new("acme");
                removal.remove(Space::TeamNames, &["c"]);
                store.apply(&removal).unwrap();
                // This thread sees the round's writes, merged into scans in key order,
                // a removal hiding the stored entry...
                assert_eq!(team_names(&store), ["a", "b"]);
                let keys: Vec<Vec<u8>> = ["a", "b", "c"]
                    .iter()
                    .map(|n| tkey("acme", &[n.as_bytes()]))
                    .collect();
                let values = store.kv.get_many(Space::TeamNames, &keys).unwrap();
                assert_eq!(
                    values.iter().map(Option::is_some).collect::<Vec<_>>(),
                    [true, true, false]
                );
                // ...and a check in a later batch sees them too.
                let mut again = Batch::new("acme");
                again.require_absent(Space::TeamNames, &["b"], "b is taken".into());
                assert!(matches!(store.apply(&again), Err(StoreError::Conflict(_))));
                // Another thread sees none of them before the round commits.
                let elsewhere =
                    std::thread::scope(|s| s.spawn(|| team_names(&store)).join().unwrap());
                assert_eq!(elsewhere, ["a", "c"]);
            })
            .unwrap();
        // One transaction for the round, and each batch got its own log entry, in order.
        assert_eq!(
            backend
                .transactions
                .load(std::sync::atomic::Ordering::SeqCst)
                - before,
            1
        );
        assert_eq!(team_names(&store), ["a", "b"]);
        let page = store.changes_since("acme", head, 10).unwrap();
        let logged: Vec<(u64, bool)> = page
            .entries
            .iter()
            .map(|e| (e.seq, e.changes[0].removed))
            .collect();
        assert_eq!(logged, [(head + 1, false), (head + 2, true)]);
        assert_eq!(page.head, head + 2);
    }

    #[test]
    fn a_rounds_scans_merge_its_writes_after_a_key_and_stop_when_told() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for name in ["a", "c", "e"] {
            put_team(&store, name).unwrap();
        }
        store
            .write_locked("acme", || {
                let mut batch = Batch::new("acme");
                batch.remove(Space::TeamNames, &["c"]);
                for name in ["b", "d", "f"] {
                    batch.put_raw(Space::TeamNames, &[name], b"x");
                }
                store.apply(&batch).unwrap();
                let prefix = tkey("acme", &[]);
                let scan = |after: Option<&str>, most: usize| {
                    let after = after.map(|a| tkey("acme", &[a.as_bytes()]));
                    let mut seen = Vec::new();
                    store
                        .kv
                        .scan_each(Space::TeamNames, &prefix, after.as_deref(), &mut |k, _| {
                            seen.push(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
                            seen.len() < most
                        })
                        .unwrap();
                    seen
                };
                assert_eq!(scan(None, 10), ["a", "b", "d", "e", "f"]);
                assert_eq!(scan(Some("a"), 3), ["b", "d", "e"]);
                assert_eq!(scan(Some("c"), 10), ["d", "e", "f"]);
                assert_eq!(scan(Some("e"), 1), ["f"]);
                assert_eq!(scan(None, 1), ["a"]);
            })
            .unwrap();
        assert_eq!(team_names(&store), ["a", "b", "d", "e", "f"]);
    }

    #[test]
    fn a_round_writes_nothing_when_what_it_read_was_changed_by_a_writer_outside_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let outcome = store.write_locked("acme", || {
            let mut batch = Batch::new("acme");
            batch
                .require_absent(Space::TeamNames, &["k"], "k is taken".into())
                .put_raw(Space::TeamNames, &["x"], b"x");
            store.apply(&batch).unwrap();
            // A writer that does not take the tenant's lock writes the key checked.
            std::thread::scope(|s| s.spawn(|| put_team(&store, "k").unwrap()).join().unwrap());
        });
        assert!(
            matches!(outcome, Err(StoreError::Unavailable(_))),
            "{outcome:?}"
        );
        assert_eq!(team_names(&store), ["k"]);
        // The tenant is not stuck: the next round commits.
        store
            .write_locked("acme", || put_team(&store, "x").unwrap())
            .unwrap();
        assert_eq!(team_names(&store), ["k", "x"]);
    }

    #[test]
    fn a_round_rereads_what_it_read_only_when_another_transaction_committed_meanwhile() {
        use std::sync::atomic::Ordering::SeqCst;
        let dir = tempfile::tempdir().unwrap();
        let (backend, store) = gated_store(dir.path());
        // A writer that does not take the tenant's lock, straight to sled (its
        // transaction's reads are not counted).
        let outside = || {
            let key = tkey("globex", &[b"g"]);
            backend
                .inner
                .transact(&|tx| tx.put(Space::TeamNames, &key, b"x"))
                .unwrap();
        };
        let round = |other_writer: bool| {
            let before = backend.transaction_reads.load(SeqCst);
            store
                .write_locked("acme", || {
                    let mut batch = Batch::new("acme");
                    batch
                        .require_absent(Space::TeamNames, &["k"], "k is taken".into())
                        .put_raw(
                            Space::TeamNames,
                            &[if other_writer { "y" } else { "x" }],
                            b"x",
                        );
                    store.apply(&batch).unwrap();
                    if other_writer {
                        outside();
                    }
                })
                .unwrap();
            backend.transaction_reads.load(SeqCst) - before
        };
        // Alone, the round's transaction reads only the change log's head: "k" (and what
        // else the batch read) was read after the last commit, and nothing committed since.
        let alone = round(false);
        // Another transaction committed between the reads and the round's commit: they
        // are read again (they still hold, so the round commits).
        let checked = round(true);
        assert_eq!(alone, 1, "the change log's head");
        assert!(
            checked > alone,
            "alone {alone}, with another writer {checked}"
        );
        assert_eq!(team_names(&store), ["x", "y"]);
    }

    #[test]
    fn a_write_nested_in_a_round_lands_after_what_the_round_wrote_before_it() {
        use std::sync::atomic::Ordering::SeqCst;
        let dir = tempfile::tempdir().unwrap();
        let (backend, store) = gated_store(dir.path());
        store
            .write_locked("acme", || {
                put_team(&store, "first").unwrap();
                store
                    .write_locked("globex", || {
                        let mut batch = Batch::new("globex");
                        batch.put_raw(Space::TeamNames, &["g"], b"x");
                        store.apply(&batch).unwrap();
                    })
                    .unwrap();
                // The nested write's own flush has run.
                assert_eq!(backend.flushes.load(SeqCst), 1);
            })
            .unwrap();
        // What the round staged before the nested write was committed before it.
        let teams: Vec<Vec<u8>> = ["first", "g"]
            .iter()
            .zip(["acme", "globex"])
            .map(|(name, tenant)| tkey(tenant, &[name.as_bytes()]))
            .collect();
        let written = backend.written.lock().unwrap().clone();
        let order: Vec<&Vec<u8>> = written.iter().filter(|k| teams.contains(k)).collect();
        assert_eq!(order, teams.iter().collect::<Vec<_>>());
        // The round flushed too, after the nested write's flush, though it staged nothing
        // since: "first" was committed on its behalf, so it owes the flush that covers it.
        assert_eq!(backend.flushes.load(SeqCst), 2);
        assert_eq!(team_names(&store), ["first"]);
    }

    #[test]
    fn a_failed_round_fails_only_the_writes_not_committed_before_its_last_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        std::thread::scope(|s| {
            // A leads and stages "a" once B and C are queued behind it, in that order.
            let a = s.spawn(|| {
                store.write_locked("acme", || {
                    eventually("B and C queue", || store.rounds.queued("acme") == 2);
                    put_team(&store, "a")
                })
            });
            eventually("A leads", || store.rounds.led("acme"));
            // B's nested write commits what the round staged before it ("a").
            let b = s.spawn(|| {
                store.write_locked("acme", || {
                    store.write_locked("globex", || {
                        let mut batch = Batch::new("globex");
                        batch.put_raw(Space::TeamNames, &["g"], b"x");
                        store.apply(&batch)
                    })
                })
            });
            eventually("B queues", || store.rounds.queued("acme") == 1);
            // C checks "k" is free, and a writer outside the lock takes it meanwhile.
            let c = s.spawn(|| {
                store.write_locked("acme", || {
                    let mut batch = Batch::new("acme");
                    batch
                        .require_absent(Space::TeamNames, &["k"], "k is taken".into())
                        .put_raw(Space::TeamNames, &["c"], b"x");
                    store.apply(&batch).unwrap();
                    std::thread::scope(|s| {
                        s.spawn(|| put_team(&store, "k").unwrap()).join().unwrap()
                    });
                })
            });
            assert!(matches!(a.join().unwrap(), Ok(Ok(()))));
            assert!(matches!(b.join().unwrap(), Ok(Ok(Ok(())))));
            let c = c.join().unwrap();
            assert!(matches!(c, Err(StoreError::Unavailable(_))), "{c:?}");
        });
        assert_eq!(team_names(&store), ["a", "k"]);
    }

    #[test]
    fn with_group_commit_off_each_write_takes_the_lock_commits_and_flushes_alone() {
        use std::sync::atomic::Ordering::SeqCst;
        let dir = tempfile::tempdir().unwrap();
        let settings = crate::config::StoreConfig {
            group_commit: false,
            ..Default::default()
        };
        assert!(!Store::open_with(dir.path(), &settings).unwrap().rounds_on);
        let (backend, store) = gated_store(&dir.path().join("gated"));
        let store = Store {
            rounds_on: false,
            ..store
        };
        for (i, name) in ["a", "b"].into_iter().enumerate() {
            store
                .write_locked("acme", || {
                    assert!(!store.rounds.led("acme"), "no round");
                    put_team(&store, name).unwrap();
                    // Committed at once: another thread sees it before the write returns.
                    let seen =
                        std::thread::scope(|s| s.spawn(|| team_names(&store)).join().unwrap());
                    assert!(seen.contains(&name.to_owned()));
                })
                .unwrap();
            assert_eq!(backend.transactions.load(SeqCst), i + 1);
            assert_eq!(backend.flushes.load(SeqCst), i + 1);
        }
    }

    #[test]
    fn a_round_whose_flush_panics_ends_every_write_in_it_and_the_next_round_runs() {
        use std::sync::atomic::Ordering::SeqCst;
        let dir = tempfile::tempdir().unwrap();
        let (backend, store) = gated_store(dir.path());
        let put = |name: &str| put_team(&store, name);
        backend.panic_next.store(true, SeqCst);
        std::thread::scope(|s| {
            // A leads and waits until B is queued behind it; the round's flush panics.
            let a = s.spawn(|| {
                store.write_locked("acme", || {
                    eventually("B queues", || store.rounds.queued("acme") == 1);
                    put("a")
                })
            });
            eventually("A leads", || store.rounds.led("acme"));
            let b = s.spawn(|| store.write_locked("acme", || put("b")));
            // A's thread panics; B is not acknowledged, and does not wait forever.
            assert!(a.join().is_err());
            assert!(matches!(b.join().unwrap(), Err(StoreError::Io(_))));
        });
        // The tenant has no stale leader: the next write runs and is flushed.
        assert!(store.write_locked("acme", || put("c")).unwrap().is_ok());
        assert_eq!(backend.flushes.load(SeqCst), 2);
    }

    /// A tokio runtime like the server's: two workers and a blocking pool.
    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn queued_writes_join_a_threads_round_and_are_acknowledged_after_its_flush() {
        use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
        let dir = tempfile::tempdir().unwrap();
        let (backend, store) = gated_store(dir.path());
        let rt = runtime();
        let closed = backend.gate.lock().unwrap();
        let b_started = AtomicBool::new(false);
        std::thread::scope(|s| {
            // A's round is A alone; its flush waits at the gate.
            let a = s.spawn(|| store.write_locked("acme", || put_team(&store, "a")));
            eventually("A's flush starts", || backend.flushes.load(SeqCst) == 1);
            // B, on a thread, leads the next round; three tasks queue behind it.
            let b = s.spawn(|| {
                store.write_locked("acme", || {
                    b_started.store(true, SeqCst);
                    eventually("three writes queue", || store.rounds.queued("acme") == 3);
                    put_team(&store, "b")
                })
            });
            eventually("B leads", || b_started.load(SeqCst));
            let tasks: Vec<_> = (0..3)
                .map(|i| {
                    let (store, name) = (store.clone(), format!("t{i}"));
                    rt.spawn(async move {
                        let at = store.clone();
                        store
                            .write_queued("acme", move || put_team(&at, &name))
                            .await
                    })
                })
                .collect();
            // B's round ran the three on B's thread and flushes once for all four.
            eventually("B's round flushes", || backend.flushes.load(SeqCst) == 2);
            assert!(["t0", "t1", "t2", "b"]
                .iter()
                .all(|name| has_team(&store, name)));
            // Nothing is acknowledged before a flush that covers it has finished.
            assert!(!a.is_finished() && !b.is_finished());
            assert!(tasks.iter().all(|task| !task.is_finished()));
            drop(closed);
            for task in tasks {
                assert!(rt.block_on(task).unwrap().unwrap().is_ok());
            }
            assert!(a.join().unwrap().unwrap().is_ok() && b.join().unwrap().unwrap().is_ok());
        });
        // Five writes, two rounds: one transaction and one flush each.
        assert_eq!(backend.transactions.load(SeqCst), 2);
        assert_eq!(backend.flushes.load(SeqCst), 2);
    }

    #[test]
    fn a_queued_write_handed_the_lead_leads_its_round_after_its_caller_has_gone() {
        use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
        let go = AtomicBool::new(false);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let rt = runtime();
        std::thread::scope(|s| {
            // A leads; 63 writes on threads queue behind it, then one task's: the round
            // takes A and the 63 (a full round), and hands the lead to the task's write.
            let a = s.spawn(|| {
                store.write_locked("acme", || {
                    eventually("64 writes are queued", || go.load(SeqCst));
                    put_team(&store, "a")
                })
            });
            eventually("A leads", || store.rounds.led("acme"));
            let threads: Vec<_> = (0..63)
                .map(|i| {
                    let store = &store;
                    s.spawn(move || {
                        store.write_locked("acme", || put_team(store, &format!("w{i}")))
                    })
                })
                .collect();
            eventually("63 writes queue", || store.rounds.queued("acme") == 63);
            let at = store.clone();
            let caller = rt.spawn({
                let store = store.clone();
                async move {
                    store
                        .write_queued("acme", move || put_team(&at, "last"))
                        .await
                }
            });
            eventually("the task's write queues", || {
                store.rounds.queued("acme") == 64
            });
            // Its caller stops waiting (a client gone): the write is led and made anyway.
            caller.abort();
            go.store(true, SeqCst);
            assert!(a.join().unwrap().unwrap().is_ok());
            for thread in threads {
                assert!(thread.join().unwrap().unwrap().is_ok());
            }
        });
        eventually("the last write commits", || has_team(&store, "last"));
        // And the tenant has no stale leader.
        eventually("its round ends", || !store.rounds.led("acme"));
        assert!(store
            .write_locked("acme", || put_team(&store, "after"))
            .unwrap()
            .is_ok());
    }

    #[test]
    fn a_queued_write_that_panics_is_an_error_and_rounds_off_run_it_on_a_thread() {
        let rt = runtime();
        for group_commit in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let config = crate::config::StoreConfig {
                group_commit,
                ..Default::default()
            };
            let store = Store::open_with(dir.path(), &config).unwrap();
            let failed =
                rt.block_on(store.write_queued("acme", || -> u32 { panic!("the write fails") }));
            match failed {
                Err(StoreError::Io(e)) => assert!(e.contains("the write fails"), "{e}"),
                other => panic!("{other:?}"),
            }
            let at = store.clone();
            let written = rt.block_on(store.write_queued("acme", move || put_team(&at, "b")));
            assert!(written.unwrap().is_ok());
            assert_eq!(team_names(&store), ["b"]);
        }
    }

    #[test]
    fn a_write_nested_in_another_takes_its_lock_directly() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let nested = store.write_locked("acme", || {
            // Under the lock, not in a round of its own.
            store.write_locked("globex", || store.rounds.led("globex"))
        });
        assert!(!nested.unwrap().unwrap());
        assert!(store
            .write_locked("globex", || store.rounds.led("globex"))
            .unwrap());
    }

    #[test]
    fn a_write_that_panics_panics_its_own_caller_and_leaves_the_tenant_unlocked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            store.write_locked("acme", || -> u32 { panic!("the write fails") })
        }));
        assert_eq!(
            panicked.unwrap_err().downcast_ref::<&str>(),
            Some(&"the write fails")
        );
        assert_eq!(store.write_locked("acme", || 7).unwrap(), 7);
        let guard = store.lock_tenant("acme").unwrap();
        guard.release().unwrap();
    }

    #[test]
    fn replicas_starting_together_on_a_new_database_all_migrate_it() {
        // Eight stores opened at once, on each of several fresh databases: every one starts
        // (the losers of the catalog race retry rather than fail).
        for _ in 0..4 {
            let url = pg_cluster::database_url();
            let dirs: Vec<_> = (0..8).map(|_| tempfile::tempdir().unwrap()).collect();
            std::thread::scope(|s| {
                let opened: Vec<_> = dirs
                    .iter()
                    .map(|dir| {
                        let url = &url;
                        s.spawn(move || Store::open_postgres(url, dir.path(), &Default::default()))
                    })
                    .collect();
                for store in opened {
                    if let Err(e) = store.join().unwrap() {
                        panic!("a replica starting beside seven others failed: {e}");
                    }
                }
            });
        }
    }

    #[test]
    fn a_database_with_a_newer_schema_is_refused() {
        let place = &places()[1];
        drop(place.open());
        let url = place.url.as_deref().unwrap();
        let name = url.rsplit('/').next().unwrap();
        pg_cluster::cluster().psql_in(name, "UPDATE gatehouse_schema SET version = version + 1");
        let err = Store::open_postgres(url, place.dir.path(), &Default::default())
            .err()
            .expect("a newer schema is refused");
        assert!(err.to_string().contains("newer than this binary"), "{err}");
    }

    #[test]
    fn an_unreachable_database_is_unavailable() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let url = format!("postgres://postgres@127.0.0.1:{port}/none?connect_timeout=2");
        let err = Store::open_postgres(&url, dir.path(), &Default::default())
            .err()
            .expect("no database there");
        assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    }

    #[test]
    fn each_committed_batch_gets_the_tenants_next_sequence_number_gap_free() {
        for place in places() {
            let store = place.open();
            store.create_tenant(&tenant("acme")).unwrap();
            store.create_tenant(&tenant("globex")).unwrap();
            let workers: Vec<_> = (0..4)
                .map(|w| {
                    let store = store.clone();
                    std::thread::spawn(move || {
                        for i in 0..25 {
                            let mut batch = Batch::new("acme");
                            batch.put_raw(Space::TeamNames, &[&format!("t{w}-{i}")], b"x");
                            store.apply(&batch).unwrap();
                        }
                    })
                })
                .collect();
            for worker in workers {
                worker.join().unwrap();
            }
            let page = store.changes_since("acme", 0, 1000).unwrap();
            assert_eq!(page.head, 101, "the tenant's creation, then 100 batches");
            assert!(!page.gap);
            let seqs: Vec<u64> = page.entries.iter().map(|e| e.seq).collect();
            assert_eq!(seqs, (1..=101).collect::<Vec<_>>());
            assert!(page.entries[0]
                .changes
                .iter()
                .any(|c| c.space == "tenants" && c.key == hex::encode("acme")));
            assert_eq!(page.entries[5].changes.len(), 1);
            assert_eq!(page.entries[5].changes[0].space, "team_names");
            // Another tenant's log is its own.
            assert_eq!(store.changes_since("globex", 0, 10).unwrap().head, 1);
            let heads = store.change_log_heads().unwrap();
            assert_eq!(
                heads,
                vec![("acme".to_owned(), 101), ("globex".to_owned(), 1)]
            );

            // A cursor, a limit; a cursor at the head has nothing to read.
            let page = store.changes_since("acme", 99, 1).unwrap();
            assert_eq!(
                page.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
                [100]
            );
            assert!(store
                .changes_since("acme", 101, 10)
                .unwrap()
                .entries
                .is_empty());

            // Pruning keeps the newest entries; a cursor behind them sees the gap.
            assert_eq!(store.prune_change_log(10).unwrap(), 91);
            let behind = store.changes_since("acme", 5, 10).unwrap();
            assert!(behind.gap);
            let recent = store.changes_since("acme", 91, 100).unwrap();
            assert!(!recent.gap);
            assert_eq!(recent.entries.len(), 10);
            assert_eq!(store.prune_change_log(10).unwrap(), 0);

            // The epoch is made once and kept.
            let epoch = store.change_log_epoch().unwrap();
            assert_eq!(epoch.len(), 32);
            drop(store);
            assert_eq!(place.open().change_log_epoch().unwrap(), epoch);
        }
    }

    #[test]
    fn a_removed_key_is_logged_as_removed() {
        on_both(|store| {
            store.create_tenant(&tenant("acme")).unwrap();
            let mut batch = Batch::new("acme");
            batch.put_raw(Space::TeamNames, &["a"], b"x");
            store.apply(&batch).unwrap();
            let mut batch = Batch::new("acme");
            batch.remove(Space::TeamNames, &["a"]);
            store.apply(&batch).unwrap();
            let page = store.changes_since("acme", 2, 10).unwrap();
            assert_eq!(
                page.entries[0].changes,
                vec![Change {
                    space: "team_names".into(),
                    key: hex::encode(tkey("acme", &[b"a"])),
                    removed: true,
                }]
            );
        });
    }
}
