//! The edge token evaluator (SPEC §4): a bearer token for a tenant → who that is, or a
//! refusal with a stable reason.
//!
//! Hot path, in order: the verified-result cache (keyed by tenant and token hash); for an
//! opaque token (PAT, VA token) a lookup in the tenant's in-memory [`Directory`]; for a
//! JWT strict parsing, the IdP by exact `iss`, its key (cached JWKS), the signature and
//! claims, the policy's claim map (cached per policy version and IdP), candidate lookups in
//! the directory and the policy's `resolve`. No storage read happens on that path: the
//! directory is an immutable snapshot rebuilt from the store after a change (every
//! identity change bumps the tenant's generation; the next request rebuilds once).
//!
//! A cached result is used only while the token is unexpired, the tenant's generation and
//! policy are the ones it was computed with, and the key that verified it is still in its
//! provider's set — so a deactivation, a team or role change, a disabled VA, a new policy or
//! a removed key takes effect on the very next request.

mod directory;

pub use directory::{DirIdp, Directory};

use crate::app::{PAT_PREFIX, SESSION_PREFIX, VA_PREFIX};
use crate::jwt::jwks::{JwksCache, JwksSettings, Source};
use crate::jwt::{self, ClaimRules, JwtError};
use crate::policy::{PolicyEngine, Registry, TenantPolicy};
use crate::store::Store;
use directory::{DirUser, TokenOwner};
use gatehouse_rules::{self as rules, Role, UserStatus};
use serde::Serialize;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

/// Limits and timings of the evaluator.
#[derive(Debug, Clone)]
pub struct EdgeSettings {
    pub jwks: JwksSettings,
    /// Entries in the verified-result cache.
    pub cache_entries: usize,
    /// Longest a verified result is reused (never past the token's `exp`).
    pub cache_ttl: Duration,
    /// One log line per decision.
    pub decision_log: bool,
    /// Prefix of `forward-auth` identity headers.
    pub header_prefix: String,
    /// Ask the proxy to drop `Authorization` upstream.
    pub strip_authorization: bool,
}

impl Default for EdgeSettings {
    fn default() -> Self {
        EdgeSettings {
            jwks: JwksSettings::default(),
            cache_entries: 100_000,
            cache_ttl: Duration::from_secs(300),
            decision_log: true,
            header_prefix: "X-Gatehouse-".into(),
            strip_authorization: false,
        }
    }
}

/// Who a token is.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Identity {
    /// `user` or `virtual_account`.
    pub kind: &'static str,
    pub id: String,
    /// A user's email.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// A virtual account's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Team names giving the request its team context.
    pub teams: Vec<String>,
    pub team_ids: Vec<String>,
    pub tenant_role: Role,
    /// The identity provider that issued the token (external JWTs only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idp: Option<String>,
    /// `jwt`, `pat`, `va_token` or `session`.
    pub token: &'static str,
    /// When the token stops being valid (seconds since the epoch), if it expires.
    pub expires_at: Option<i64>,
    /// What the HTTP layer encoded from this identity on first use: a cached result
    /// answers many requests with the same bytes.
    #[serde(skip)]
    pub encoded: Encoded,
}

/// A value derived once from the identity that holds it (the HTTP layer keeps its encoded
/// answers here); invisible to comparison and `Debug`, and not carried by a clone (a clone
/// may be changed, so it derives its own).
#[derive(Default)]
pub struct Encoded(std::sync::OnceLock<Box<dyn std::any::Any + Send + Sync>>);

impl Encoded {
    /// The value, made by `encode` the first time; `None` if a value of another type was
    /// made first.
    pub fn get_or_init<T: std::any::Any + Send + Sync>(
        &self,
        encode: impl FnOnce() -> T,
    ) -> Option<&T> {
        self.0.get_or_init(|| Box::new(encode())).downcast_ref()
    }
}

impl Clone for Encoded {
    fn clone(&self) -> Encoded {
        Encoded::default()
    }
}

impl PartialEq for Encoded {
    fn eq(&self, _: &Encoded) -> bool {
        true
    }
}

impl std::fmt::Debug for Encoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Encoded")
    }
}

/// Whether a refusal means "who are you?" (401) or "not you" (403).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyKind {
    /// The token is missing, malformed, unverifiable, expired or revoked.
    Unauthenticated,
    /// The token is genuine but its subject may not pass (deactivated, not provisioned,
    /// disabled, refused by the policy).
    Forbidden,
}

/// A refusal: a stable reason code and a message a person can act on. Never the token.
#[derive(Debug, Clone, PartialEq)]
pub struct Deny {
    pub kind: DenyKind,
    pub reason: Cow<'static, str>,
    pub message: String,
}

impl Deny {
    fn unauthenticated(reason: &'static str, message: impl Into<String>) -> Self {
        Deny {
            kind: DenyKind::Unauthenticated,
            reason: Cow::Borrowed(reason),
            message: message.into(),
        }
    }

    fn forbidden(reason: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Deny {
            kind: DenyKind::Forbidden,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

impl From<JwtError> for Deny {
    fn from(error: JwtError) -> Self {
        Deny::unauthenticated(error.reason(), error.to_string())
    }
}

/// The evaluator's answer, with what the decision log needs.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub result: Result<Arc<Identity>, Deny>,
    pub cache_hit: bool,
    /// Shared with the cached result, so a cache hit copies no string.
    pub idp: Option<Arc<str>>,
    pub kid: Option<Arc<str>>,
}

/// A verified result kept for reuse.
struct Cached {
    identity: Arc<Identity>,
    generation: u64,
    /// The policy it was decided by (a `Weak` keeps the address from being reused).
    policy: Weak<TenantPolicy>,
    /// Unix seconds after which the entry is not used.
    valid_until: i64,
    key: Option<(Arc<Source>, [u8; 32])>,
    idp: Option<Arc<str>>,
    kid: Option<Arc<str>>,
}

/// What a `resolve` decision depends on.
#[derive(Clone, PartialEq, Eq, Hash)]
struct MemoKey {
    tenant: String,
    generation: u64,
    /// The deciding policy's address: a swap also bumps the generation, but between the
    /// swap and the bump a request must not reuse the old policy's answers. (Entries of a
    /// dropped policy can never match again: their generation is gone.)
    policy: usize,
    idp: String,
    values: ClaimValues,
}

/// Per-tenant state: the generation counter and the current directory snapshot.
#[derive(Default)]
struct TenantState {
    generation: AtomicU64,
    snapshot: RwLock<Option<Arc<Directory>>>,
    rebuild: Mutex<()>,
    /// Whether a request needed the directory since [`Edge::warm`] last looked.
    asked: AtomicBool,
}

impl TenantState {
    /// The snapshot, if it is of the current generation.
    fn current(&self) -> Option<Arc<Directory>> {
        let generation = self.generation.load(Ordering::SeqCst);
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|d| d.generation == generation)
            .cloned()
    }
}

/// The edge evaluator. One per process, shared by every request.
pub struct Edge {
    settings: EdgeSettings,
    jwks: Arc<JwksCache>,
    cache: quick_cache::sync::Cache<[u8; 32], Arc<Cached>>,
    /// The policy's `resolve` answers by their inputs. A policy is pure (no imports: no
    /// clock, no randomness, no I/O) and its input is a function of the tenant's
    /// generation and the token's mapped claim values, so equal keys mean equal answers;
    /// a new token of a known subject costs a signature check, not a policy call.
    memo: quick_cache::sync::Cache<MemoKey, Arc<rules::ResolveDecision>>,
    tenants: RwLock<HashMap<String, Arc<TenantState>>>,
    /// Registered on first use: by then `/metrics` has installed the recorder (a handle
    /// taken before that would count into nothing).
    metrics: std::sync::OnceLock<EdgeMetrics>,
}

/// The edge's metric handles, looked up once instead of per decision.
struct EdgeMetrics {
    decision_seconds: metrics::Histogram,
    cache_hits: metrics::Counter,
    /// `gatehouse_edge_decisions_total` by reason, for `allow` and for `deny`. Policy-defined
    /// reasons are bounded by the policy contract's code shape; the set stays small.
    allowed: RwLock<HashMap<String, metrics::Counter>>,
    denied: RwLock<HashMap<String, metrics::Counter>>,
}

impl Default for EdgeMetrics {
    fn default() -> Self {
        EdgeMetrics {
            decision_seconds: metrics::histogram!("gatehouse_edge_decision_seconds"),
            cache_hits: metrics::counter!("gatehouse_edge_cache_hits_total"),
            allowed: RwLock::default(),
            denied: RwLock::default(),
        }
    }
}

impl EdgeMetrics {
    fn decided(&self, allowed: bool, reason: &str) {
        let (counters, result) = if allowed {
            (&self.allowed, "allow")
        } else {
            (&self.denied, "deny")
        };
        if let Some(counter) = counters
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(reason)
        {
            counter.increment(1);
            return;
        }
        counters
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(reason.to_owned())
            .or_insert_with(|| {
                metrics::counter!("gatehouse_edge_decisions_total",
                    "result" => result, "reason" => reason.to_owned())
            })
            .increment(1);
    }
}

impl Edge {
    pub fn new(settings: EdgeSettings) -> Result<Self, String> {
        let jwks = Arc::new(JwksCache::new(settings.jwks.clone())?);
        let cache = quick_cache::sync::Cache::new(settings.cache_entries.max(16));
        let memo = quick_cache::sync::Cache::new((settings.cache_entries / 4).max(16));
        Ok(Edge {
            settings,
            jwks,
            cache,
            memo,
            tenants: RwLock::default(),
            metrics: std::sync::OnceLock::new(),
        })
    }

    pub fn settings(&self) -> &EdgeSettings {
        &self.settings
    }

    /// The key-set cache (shared with SSO login, which verifies ID tokens the same way).
    pub fn jwks(&self) -> &Arc<JwksCache> {
        &self.jwks
    }

    fn state(&self, tenant: &str) -> Arc<TenantState> {
        if let Some(state) = self
            .tenants
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
        {
            return state.clone();
        }
        self.tenants
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(tenant.to_owned())
            .or_default()
            .clone()
    }

    /// Marks the tenant's identity data as changed: its directory is rebuilt on the next
    /// request and no cached result computed before is used again. Called after every
    /// acknowledged identity change.
    pub fn touch(&self, tenant: &str) {
        self.state(tenant).generation.fetch_add(1, Ordering::SeqCst);
    }

    /// The tenant's directory, rebuilt from the store if something changed since.
    fn directory(
        &self,
        store: &Store,
        tenant: &str,
        state: &TenantState,
    ) -> Result<Arc<Directory>, String> {
        if let Some(dir) = state.current() {
            return Ok(dir);
        }
        // One rebuild at a time per tenant; who waited finds it done.
        let _rebuild = state.rebuild.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(dir) = state.current() {
            return Ok(dir);
        }
        let generation = state.generation.load(Ordering::SeqCst);
        let started = Instant::now();
        let dir = Arc::new(Directory::build(store, tenant, generation)?);
        metrics::histogram!("gatehouse_edge_directory_build_seconds").record(started.elapsed());
        *state.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Some(dir.clone());
        Ok(dir)
    }

    /// The tenant's current directory snapshot (rebuilt if something changed), for
    /// callers that explain a decision the way the edge makes it.
    pub fn snapshot(&self, store: &Store, tenant: &str) -> Result<Arc<Directory>, String> {
        let state = self.state(tenant);
        self.directory(store, tenant, &state)
    }

    /// Rebuilds the tenant's directory ahead of its next request when a request needed it
    /// since the last call: a tenant nobody asks for is not read whole for every change
    /// (its first request builds it).
    pub fn warm(&self, store: &Store, tenant: &str) {
        let state = self.state(tenant);
        if state.asked.swap(false, Ordering::Relaxed) {
            if let Err(e) = self.directory(store, tenant, &state) {
                tracing::error!(tenant, error = %e, "directory rebuild failed");
            }
        }
    }

    /// Makes the next [`Edge::warm`] of `tenant` rebuild its directory even if no request
    /// asked for it yet (a tenant an edge has just taken whole).
    pub fn want(&self, tenant: &str) {
        self.state(tenant).asked.store(true, Ordering::Relaxed);
    }

    /// Evaluates one request, then logs and counts the decision (never the token).
    pub async fn evaluate(
        &self,
        ctx: &EdgeContext<'_>,
        tenant: &str,
        authorization: &[&[u8]],
    ) -> Evaluation {
        let started = Instant::now();
        let evaluation = self.decide(ctx, tenant, authorization).await;
        self.record(tenant, &evaluation, started.elapsed());
        evaluation
    }

    /// Counts and logs a decision made for `tenant` in `elapsed` (never the token): every
    /// answer the edge gives goes through here, including ones made before evaluation (an
    /// edge too stale to answer).
    pub fn record(&self, tenant: &str, evaluation: &Evaluation, elapsed: std::time::Duration) {
        let (result, reason) = match &evaluation.result {
            Ok(_) => ("allow", Cow::Borrowed("ok")),
            Err(deny) => ("deny", deny.reason.clone()),
        };
        let metrics = self.metrics.get_or_init(EdgeMetrics::default);
        metrics.decided(evaluation.result.is_ok(), &reason);
        metrics.decision_seconds.record(elapsed);
        if evaluation.cache_hit {
            metrics.cache_hits.increment(1);
        }
        if self.settings.decision_log {
            let (kind, id) = match &evaluation.result {
                Ok(identity) => (identity.kind, identity.id.as_str()),
                Err(_) => ("", ""),
            };
            crate::logging::decision(&crate::logging::Decision {
                tenant,
                idp: evaluation.idp.as_deref().unwrap_or(""),
                kid: evaluation.kid.as_deref().unwrap_or(""),
                subject_kind: kind,
                subject_id: id,
                decision: result,
                reason: reason.as_ref(),
                latency_us: elapsed.as_micros() as u64,
                cache_hit: evaluation.cache_hit,
            });
        }
    }

    /// Evaluates the `Authorization` header values of one request for `tenant`.
    async fn decide(
        &self,
        ctx: &EdgeContext<'_>,
        tenant: &str,
        authorization: &[&[u8]],
    ) -> Evaluation {
        let deny = |d: Deny| Evaluation {
            result: Err(d),
            cache_hit: false,
            idp: None,
            kid: None,
        };
        let token = match bearer(authorization) {
            Ok(token) => token,
            Err(d) => return deny(d),
        };
        let Some(policy) = ctx.policies.get(tenant) else {
            return deny(Deny::unauthenticated(
                "unknown_tenant",
                "no such tenant at this address",
            ));
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let cache_key = cache_key(tenant, token);
        let state = self.state(tenant);
        if let Some(hit) = self.cache.get(&cache_key) {
            let fresh = hit.valid_until > now
                && hit.generation == state.generation.load(Ordering::SeqCst)
                && std::ptr::eq(hit.policy.as_ptr(), Arc::as_ptr(&policy))
                && hit.key.as_ref().is_none_or(|(source, fingerprint)| {
                    source.still_holds(fingerprint, self.settings.jwks.max_stale)
                });
            if fresh {
                return Evaluation {
                    result: Ok(hit.identity.clone()),
                    cache_hit: true,
                    idp: hit.idp.clone(),
                    kid: hit.kid.clone(),
                };
            }
            self.cache.remove(&cache_key);
        }
        state.asked.store(true, Ordering::Relaxed);
        let dir = match self.directory(ctx.store, tenant, &state) {
            Ok(dir) => dir,
            Err(e) => {
                tracing::error!(tenant, error = %e, "directory rebuild failed");
                return deny(Deny::forbidden(
                    "unavailable",
                    "the tenant's directory cannot be read; try again",
                ));
            }
        };
        // Opaque tokens and sessions are cached like an external token's result: every
        // change to the tenant's identity data (a deactivation, a revoked token, a logout,
        // teams, keys) bumps the generation the entry carries, and an entry is never used
        // past the token's expiry or revocation time.
        let decided = if let Some(rest) = token.strip_prefix(PAT_PREFIX) {
            Some(opaque(&dir, tenant, rest, token, now, false))
        } else if let Some(rest) = token.strip_prefix(VA_PREFIX) {
            Some(opaque(&dir, tenant, rest, token, now, true))
        } else {
            // For a session, the signature check (an Ed25519 verification) is the cost saved.
            token.strip_prefix(SESSION_PREFIX).map(|rest| {
                session(&dir, tenant, rest, now)
                    .map(|identity| (identity.expires_at.unwrap_or(now), identity))
            })
        };
        match decided {
            Some(Ok((valid_until, identity))) => {
                let identity = Arc::new(identity);
                let entry = Cached {
                    identity: identity.clone(),
                    generation: dir.generation,
                    policy: Arc::downgrade(&policy),
                    valid_until,
                    key: None,
                    idp: None,
                    kid: None,
                };
                self.remember(cache_key, entry, now);
                return Evaluation {
                    result: Ok(identity),
                    cache_hit: false,
                    idp: None,
                    kid: None,
                };
            }
            Some(Err(d)) => return deny(d),
            // Not an opaque token or a session: an external JWT.
            None => {}
        }
        let mut evaluation = Evaluation {
            result: Err(Deny::unauthenticated("malformed", "")),
            cache_hit: false,
            idp: None,
            kid: None,
        };
        match self
            .external(ctx, &policy, &dir, token, now, &mut evaluation)
            .await
        {
            Ok((identity, valid_until, key)) => {
                let identity = Arc::new(identity);
                let entry = Cached {
                    identity: identity.clone(),
                    generation: dir.generation,
                    policy: Arc::downgrade(&policy),
                    valid_until,
                    key: Some(key),
                    idp: evaluation.idp.clone(),
                    kid: evaluation.kid.clone(),
                };
                self.remember(cache_key, entry, now);
                evaluation.result = Ok(identity);
            }
            Err(d) => evaluation.result = Err(d),
        }
        evaluation
    }

    /// Caches a verified result, for at most `edge.cache_ttl_secs` (and never past the
    /// entry's own `valid_until`, the token's expiry).
    fn remember(&self, cache_key: [u8; 32], mut entry: Cached, now: i64) {
        entry.valid_until = entry
            .valid_until
            .min(now + self.settings.cache_ttl.as_secs() as i64);
        self.cache.insert(cache_key, Arc::new(entry));
    }

    /// An external JWT: verified against its IdP, then resolved by the policy.
    async fn external(
        &self,
        ctx: &EdgeContext<'_>,
        policy: &TenantPolicy,
        dir: &Directory,
        token: &str,
        now: i64,
        log: &mut Evaluation,
    ) -> Result<(Identity, i64, (Arc<Source>, [u8; 32])), Deny> {
        let parsed = jwt::parse(token)?;
        log.kid = parsed.kid.as_deref().map(Arc::from);
        let idp = dir.idps.get(&parsed.iss).ok_or(JwtError::UnknownIssuer)?;
        log.idp = Some(Arc::from(idp.name.as_str()));
        if !idp.algorithms.contains(&parsed.alg) {
            return Err(JwtError::Algorithm(format!("{:?}", parsed.alg)).into());
        }
        let (source, key) = self
            .jwks
            .key(&idp.keys, parsed.kid.as_deref(), parsed.alg)
            .await?;
        parsed.verify(&key)?;
        parsed.check_claims(
            &ClaimRules {
                audiences: &idp.audiences,
                leeway_seconds: idp.leeway_seconds,
            },
            now,
        )?;
        let values = claim_values(ctx.engine, policy, idp, &parsed.claims).map_err(policy_error)?;
        let memo_key = MemoKey {
            tenant: dir.tenant.clone(),
            generation: dir.generation,
            policy: std::ptr::from_ref(policy) as usize,
            idp: idp.name.clone(),
            values,
        };
        let decision = match self.memo.get(&memo_key) {
            Some(decision) => decision,
            None => {
                let input = dir.candidates_for(&idp.name, &memo_key.values);
                let decision = Arc::new(policy.resolve(ctx.engine, &input).map_err(policy_error)?);
                self.memo.insert(memo_key, decision.clone());
                decision
            }
        };
        let identity = identity_for(dir, &idp.name, &decision.outcome, Some(parsed.exp))?;
        Ok((identity, parsed.exp, (source, key.fingerprint)))
    }
}

/// The values a policy's claim map picks out of a token's verified claims: with the
/// candidates the directory matches to them, the policy's `resolve` input.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct ClaimValues {
    pub user_claim: Option<String>,
    pub va_name: Option<String>,
    pub team_values: Vec<String>,
    /// `(path, values)` of each of the policy's extra claims, in its order.
    pub extra: Vec<(String, Vec<String>)>,
}

impl ClaimValues {
    /// Takes what `map` names out of `claims`.
    pub fn extract(
        map: &rules::ClaimMap,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> Self {
        let first = |path: &str| jwt::claim_values(claims, path).into_iter().next();
        ClaimValues {
            user_claim: first(&map.user_claim),
            va_name: map.va_name_claim.as_deref().and_then(first),
            team_values: map
                .team_claim
                .as_deref()
                .map(|path| jwt::claim_values(claims, path))
                .unwrap_or_default(),
            extra: map
                .extra_claims
                .iter()
                .map(|path| (path.clone(), jwt::claim_values(claims, path)))
                .collect(),
        }
    }
}

/// Verified claims of a token from `idp` → the values the tenant's policy maps them to
/// (its claim map, cached per policy version and IdP). The one path from claims to a
/// `resolve` question: the edge and `policy explain` both take it.
pub fn claim_values(
    engine: &PolicyEngine,
    policy: &TenantPolicy,
    idp: &DirIdp,
    claims: &serde_json::Map<String, serde_json::Value>,
) -> Result<ClaimValues, crate::policy::PolicyError> {
    let map = policy.claim_mapping(engine, &idp.claims)?;
    Ok(ClaimValues::extract(&map, claims))
}

/// Carries out a `resolve` decision for a token of `idp`: the identity it names (a
/// disabled VA or a user who may not pass is refused), or the policy's refusal.
pub fn identity_for(
    dir: &Directory,
    idp: &str,
    outcome: &rules::Resolution,
    expires_at: Option<i64>,
) -> Result<Identity, Deny> {
    match outcome {
        rules::Resolution::VirtualAccount(id) => {
            let va = dir.vas.get(id).ok_or_else(|| {
                Deny::forbidden("policy_error", "the policy named an unknown account")
            })?;
            if !va.enabled {
                return Err(Deny::forbidden(
                    "disabled",
                    format!("virtual account {} is disabled", va.name),
                ));
            }
            Ok(Identity {
                kind: "virtual_account",
                id: id.clone(),
                email: None,
                name: Some(va.name.clone()),
                teams: Vec::new(),
                team_ids: Vec::new(),
                tenant_role: va.role,
                idp: Some(idp.to_owned()),
                token: "jwt",
                expires_at,
                encoded: Encoded::default(),
            })
        }
        rules::Resolution::User(resolved) => {
            let user = dir.users.get(&resolved.id).ok_or_else(|| {
                Deny::forbidden("policy_error", "the policy named an unknown user")
            })?;
            user_may_pass(user)?;
            let mut identity = user_identity(dir, &resolved.id, user, &resolved.teams);
            identity.idp = Some(idp.to_owned());
            identity.token = "jwt";
            identity.expires_at = expires_at;
            Ok(identity)
        }
        rules::Resolution::Refuse(refusal) => Err(Deny::forbidden(
            refusal.code.clone(),
            refusal.message.clone(),
        )),
    }
}

/// What the evaluator needs from the rest of the app.
pub struct EdgeContext<'a> {
    pub store: &'a Store,
    pub policies: &'a Registry,
    pub engine: &'a PolicyEngine,
}

fn policy_error(error: crate::policy::PolicyError) -> Deny {
    tracing::warn!(kind = error.kind(), %error, "policy error on the edge: denied");
    Deny::forbidden(
        "policy_error",
        "the tenant's policy failed; the request is refused",
    )
}

/// The bytes of RFC 6750's `b64token` (token68): letters, digits and `-._~+/=`, as a table
/// (a token is checked byte by byte on every request).
const TOKEN68: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=');
        b += 1;
    }
    table
};

/// The one bearer token of a request: exactly one `Authorization` header, scheme
/// `Bearer` (any case), a token68 value.
fn bearer<'a>(values: &[&'a [u8]]) -> Result<&'a str, Deny> {
    let value = match values {
        [] => {
            return Err(Deny::unauthenticated(
                "missing_token",
                "send Authorization: Bearer <token>",
            ))
        }
        [one] => *one,
        _ => {
            return Err(Deny::unauthenticated(
                "malformed",
                "more than one Authorization header",
            ))
        }
    };
    let value = std::str::from_utf8(value)
        .map_err(|_| Deny::unauthenticated("malformed", "the Authorization header is not text"))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| Deny::unauthenticated("malformed", "use Authorization: Bearer <token>"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        // Another scheme (Basic, Digest, ...) carries no bearer token: RFC 6750 §3.1's
        // "unsupported authentication method", answered with a bare challenge.
        return Err(Deny::unauthenticated(
            "missing_token",
            "no bearer token: the Authorization header uses another scheme; send Authorization: Bearer <token>",
        ));
    }
    let token = token.trim_matches(' ');
    if token.is_empty()
        || token.len() > jwt::MAX_TOKEN_BYTES
        || !token.bytes().all(|b| TOKEN68[b as usize])
    {
        return Err(Deny::unauthenticated(
            "malformed",
            "the bearer token is empty, too large or has invalid characters",
        ));
    }
    Ok(token)
}

fn cache_key(tenant: &str, token: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(tenant.as_bytes());
    hasher.update([0]);
    hasher.update(token.as_bytes());
    hasher.finalize().into()
}

/// A PAT (`ghp_<tenant>_…`) or VA token (`gva_<tenant>_…`), looked up by hash, with the
/// time (Unix seconds) until which the answer holds: its expiry or revocation (a rotated
/// VA token's grace), whichever comes first.
fn opaque(
    dir: &Directory,
    tenant: &str,
    rest: &str,
    token: &str,
    now: i64,
    va: bool,
) -> Result<(i64, Identity), Deny> {
    let unknown = || Deny::unauthenticated("unknown_token", "this token is not known here");
    // A token of another tenant reads as unknown: it never says that tenant exists.
    let (token_tenant, _) = rest.split_once('_').ok_or_else(unknown)?;
    if token_tenant != tenant {
        return Err(unknown());
    }
    let sha = crate::policy::sha256(token.as_bytes());
    let entry = dir.tokens.get(&sha).ok_or_else(unknown)?;
    if entry.revoked_at.is_some_and(|at| at <= now) {
        return Err(Deny::unauthenticated("revoked", "this token was revoked"));
    }
    if entry.expires_at.is_some_and(|at| at <= now) {
        return Err(Deny::unauthenticated("expired", "this token has expired"));
    }
    let valid_until = [entry.expires_at, entry.revoked_at]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(i64::MAX);
    // What the answer reports as `expires_at`: when the token stops passing, its expiry or
    // the end of a replaced token's grace, whichever comes first.
    let stops_passing = (valid_until != i64::MAX).then_some(valid_until);
    match (&entry.owner, va) {
        (TokenOwner::User(id), false) => {
            let user = dir.users.get(id).ok_or_else(unknown)?;
            user_may_pass(user)?;
            let mut identity = user_identity(dir, id, user, &user.teams);
            identity.token = "pat";
            identity.expires_at = stops_passing;
            Ok((valid_until, identity))
        }
        (TokenOwner::VirtualAccount(id), true) => {
            let account = dir.vas.get(id).ok_or_else(unknown)?;
            if !account.enabled {
                return Err(Deny::forbidden(
                    "disabled",
                    format!("virtual account {} is disabled", account.name),
                ));
            }
            Ok((
                valid_until,
                Identity {
                    kind: "virtual_account",
                    id: id.clone(),
                    email: None,
                    name: Some(account.name.clone()),
                    teams: Vec::new(),
                    team_ids: Vec::new(),
                    tenant_role: account.role,
                    idp: None,
                    token: "va_token",
                    expires_at: stops_passing,
                    encoded: Encoded::default(),
                },
            ))
        }
        _ => Err(unknown()),
    }
}

/// A Gatehouse session token (`ghs_…`): this tenant's key, unexpired, its user active.
fn session(dir: &Directory, tenant: &str, jws: &str, now: i64) -> Result<Identity, Deny> {
    let claims =
        crate::app::verify_session(tenant, jws, now, |kid| dir.session_keys.get(kid).cloned())
            .map_err(|refusal| Deny::unauthenticated(refusal.reason(), refusal.message()))?;
    if dir.revoked_sessions.contains(&claims.session_id) {
        return Err(Deny::unauthenticated(
            "revoked",
            "this session was logged out; log in again",
        ));
    }
    let user = dir
        .users
        .get(&claims.user_id)
        .ok_or_else(|| Deny::unauthenticated("revoked", "this session's user no longer exists"))?;
    user_may_pass(user)?;
    if session_revoked_by_deactivation(user.deactivated_at, claims.issued_at) {
        return Err(Deny::unauthenticated(
            "revoked",
            "this session ended when its user was deactivated; log in again",
        ));
    }
    let mut identity = user_identity(dir, &claims.user_id, user, &user.teams);
    identity.token = "session";
    identity.expires_at = Some(claims.expires_at);
    Ok(identity)
}

/// SPEC §3: a session is revoked when its user is deactivated, so one issued before (or in
/// the second of) the user's last deactivation never passes again, reactivated or not.
pub fn session_revoked_by_deactivation(deactivated_at: Option<i64>, issued_at: i64) -> bool {
    deactivated_at.is_some_and(|at| issued_at <= at)
}

fn user_may_pass(user: &DirUser) -> Result<(), Deny> {
    match user.status {
        UserStatus::Active => Ok(()),
        UserStatus::Deactivated => Err(Deny::forbidden(
            "deactivated",
            "this user is deactivated; ask a tenant admin",
        )),
        UserStatus::Invited => Err(Deny::forbidden(
            "not_provisioned",
            "this user has not logged in yet; log in once through SSO first",
        )),
    }
}

fn user_identity(dir: &Directory, id: &str, user: &DirUser, teams: &[String]) -> Identity {
    // Teams by name (stable for headers and logs), ids in the same order.
    let mut named: Vec<(&String, &String)> = teams
        .iter()
        .filter_map(|t| dir.team_names.get(t).map(|name| (name, t)))
        .collect();
    named.sort();
    named.dedup();
    let teams = named.iter().map(|(name, _)| (*name).clone()).collect();
    let team_ids = named.iter().map(|(_, id)| (*id).clone()).collect();
    Identity {
        kind: "user",
        id: id.to_owned(),
        email: (!user.email.is_empty()).then(|| user.email.clone()),
        name: None,
        teams,
        team_ids,
        tenant_role: user.role,
        idp: None,
        token: "pat",
        expires_at: None,
        encoded: Encoded::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_takes_exactly_one_well_formed_header() {
        assert_eq!(bearer(&[b"Bearer abc.def"]).unwrap(), "abc.def");
        assert_eq!(bearer(&[b"bearer abc"]).unwrap(), "abc");
        for (values, reason) in [
            (vec![], "missing_token"),
            (vec![&b"Bearer a"[..], &b"Bearer b"[..]], "malformed"),
            (vec![&b"Basic YTpi"[..]], "missing_token"),
            (vec![&b"Bearer"[..]], "malformed"),
            (vec![&b"Bearer "[..]], "malformed"),
            (vec![&b"Bearer a b"[..]], "malformed"),
            (vec![&b"Bearer \xff"[..]], "malformed"),
        ] {
            assert_eq!(bearer(&values).unwrap_err().reason, reason, "{values:?}");
        }
    }
}
