//! The application core: what Gatehouse does, independent of HTTP. It holds the store,
//! the policy engine and every tenant's current policy, and carries out operations:
//! tenants, the policy lifecycle (upload → compile → type-check → validate settings →
//! run the policy's cases → store → activate), and evaluations.

use crate::config::Config;
use crate::edge::{Edge, EdgeContext, Evaluation};
use crate::model::TenantId;
use crate::policy::{self, Compiled, PolicyEngine, PolicyError, Registry, TenantPolicy};
use crate::store::{
    NewPolicyVersion, PolicyState, PolicyVersionRecord, Store, StoreError, TenantRecord,
};
use gatehouse_rules::{self as rules, cases};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

mod directory;
pub mod edge_sync;
mod explain;
pub mod fleet;
mod identity;
mod migrate;
mod outbox;
mod password;
pub mod replica;
mod scim;
mod session;
mod sso;

pub use directory::{
    IdpInput, NewResource, NewVaToken, NewVirtualAccount, ScimToken, SsoInput, SsoView,
    VirtualAccountPatch, ALLOWED_ALGORITHMS,
};
pub use explain::{
    Candidates, ExplainRequest, ExplainedRefusal, ExplainedRole, Explanation, Extracted,
};
pub use identity::{
    AuditFilter, Caller, Invite, MemberChange, NewTeam, NewToken, Page, TeamPatch, TeamView,
    TenantCreated, TokenCreated, UserQuery,
};
pub(crate) use identity::{PAT_PREFIX, VA_PREFIX};
pub use migrate::MigrationApplied;
pub use outbox::{Delivery, PendingMessage};
pub use password::{LinkView, LoginPage, Passwords};
pub use scim::{Connection, ListPage, ListQuery, MemberReport, ScimRuntime};
pub use session::{
    verify as verify_session, IssuedSession, LoginMethod, RevokedSession, SessionClaims,
    SessionKeyRecord, SessionRefusal, Sessions, SESSION_PREFIX,
};
pub use sso::{check_return_to, login_cookie_name, LoginStart, SsoLogin};

/// What an operation can fail with; `http::error` turns each into an answer.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("a valid bearer token is required: the operator token, or a personal access token or session token of this tenant")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("the tenant's policy could not decide, so nothing changed: {0}")]
    PolicyFailed(PolicyError),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PolicyRefused(PolicyError),
    #[error("{} of {} policy cases failed", .failed.len(), .total)]
    CasesFailed {
        total: usize,
        failed: Vec<cases::CaseReport>,
    },
    /// The login was genuine but the tenant's rules refuse it (`not_provisioned`,
    /// `deactivated`, …): the reason code is the policy's.
    #[error("{message}")]
    LoginRefused { reason: String, message: String },
    /// The login itself is not valid (bad `state`, replayed code, wrong nonce or audience,
    /// expired ID token, …).
    #[error("{message}")]
    LoginInvalid {
        reason: &'static str,
        message: String,
    },
    /// Too much at once (`reason` says what); try again after `retry_after_secs`.
    #[error("{message}")]
    TooManyRequests {
        reason: &'static str,
        message: String,
        retry_after_secs: u64,
    },
    /// The identity provider cannot be reached or answered nonsense.
    #[error("{0}")]
    IdpUnavailable(String),
    /// A set-password or reset link that cannot be used (unknown, used, expired alike).
    #[error("{0}")]
    LinkInvalid(String),
    #[error("{0}")]
    Internal(String),
    /// The store cannot be reached now (503 with `Retry-After`).
    #[error("the store is unavailable, try again shortly: {0}")]
    Unavailable(String),
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => AppError::NotFound(what),
            StoreError::Conflict(why) => AppError::Conflict(why),
            e @ (StoreError::Corrupt { .. } | StoreError::Io(_)) => {
                AppError::Internal(e.to_string())
            }
            StoreError::Unavailable(why) => AppError::Unavailable(why),
        }
    }
}

/// Who asked for a change, for the record.
pub const OPERATOR: &str = "operator";

/// A policy upload.
pub struct Upload {
    pub component: Vec<u8>,
    pub settings: String,
    /// The policy's own decision cases; all must pass before the version is stored.
    pub cases: Vec<cases::Case>,
    pub activate: bool,
}

/// A tenant's policy: what runs now, and every stored version.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct PolicyOverview {
    /// The active version; `null` is the built-in default policy.
    pub active: Option<u64>,
    pub active_policy: rules::PolicyInfo,
    /// Versions that `rollback` would return to, most recent last.
    pub history: Vec<Option<u64>>,
    pub versions: Vec<PolicyVersionRecord>,
    /// Versions whose compiled code this replica holds (in memory or in its artifact
    /// cache): activating one of them is only a swap here. Every replica compiles each
    /// uploaded version in the background (decision 73).
    pub compiled: Vec<u64>,
}

/// What a candidate policy would change on the tenant's recent decisions.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct DryRunReport {
    /// The candidate's name and version, as it reports them.
    pub candidate: rules::PolicyInfo,
    /// The version the tenant runs now (`null`: the built-in default).
    pub active: Option<u64>,
    /// How many recorded decisions were evaluated by both.
    pub evaluated: usize,
    /// Exactly the decisions whose outcome differs, oldest first.
    pub changed: Vec<DryRunChange>,
}

/// A candidate running in shadow beside the tenant's active policy.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ShadowState {
    pub candidate: rules::PolicyInfo,
    pub stats: policy::shadow::ShadowStats,
}

/// One decision the candidate would decide differently.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct DryRunChange {
    /// `login` or `resolve`.
    pub decision: &'static str,
    /// The recorded (anonymised) input.
    #[schema(value_type = Object)]
    pub input: serde_json::Value,
    /// The active policy's outcome, or `{"error": {"kind", "message"}}`.
    #[schema(value_type = Object)]
    pub before: serde_json::Value,
    /// The candidate's outcome, or `{"error": {"kind", "message"}}`.
    #[schema(value_type = Object)]
    pub after: serde_json::Value,
}

/// One decision to evaluate through a tenant's policy (tests, benchmarks, explanations).
#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(tag = "decision", rename_all = "snake_case", deny_unknown_fields)]
pub enum Evaluate {
    Login { input: rules::LoginInput },
    Resolve { input: rules::ResolveInput },
    EffectiveRole { input: Vec<rules::RoleInput> },
    ClaimMapping { input: rules::IdpClaims },
}

/// The answer to [`Evaluate`]: the decision, or the policy error that became a deny.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Evaluated {
    pub policy_version: Option<u64>,
    pub policy: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_error: Option<PolicyFailure>,
}

/// A policy error as reported to the caller: `deny` with reason `policy_error`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct PolicyFailure {
    pub reason: &'static str,
    pub kind: &'static str,
    pub message: String,
}

/// The application.
pub struct App {
    pub store: Store,
    /// Whether JWKS and discovery URLs may point at private addresses.
    allow_private_urls: bool,
    /// The configured `public_url` (no trailing slash): the base of links in emails.
    public_url: Option<String>,
    /// Woken each time a message is queued in an outbox, so the relay sends it at once.
    outbox_queued: Arc<tokio::sync::Notify>,
    /// One write lock per tenant for identity changes (see `identity`).
    pub engine: Arc<PolicyEngine>,
    pub policies: Registry,
    /// Niceness of shadow workers (`policy.shadow_nice`).
    shadow_nice: u8,
    default_policy: Arc<Compiled>,
    /// Compiled components by hash, so tenants running the same bytes share machine code.
    compiled: Mutex<HashMap<[u8; 32], Weak<Compiled>>>,
    /// Per tenant, the compiled code of its newest versions, kept loaded so that an
    /// activation or rollback to one of them is only a swap (decision 73).
    warm: Mutex<HashMap<String, Vec<Arc<Compiled>>>>,
    operator_token_sha256: [u8; 32],
    /// Serializes policy changes so the store and the registry agree.
    policy_changes: tokio::sync::Mutex<()>,
    /// Serializes bringing a tenant's running policy in line with the store (the
    /// tailer and the background compiler), so a slower sync never undoes a newer one.
    policy_sync: Mutex<()>,
    /// The edge token evaluator (its directories are rebuilt after identity changes).
    pub edge: Edge,
    /// SCIM limits and per-connection rate buckets.
    pub scim: ScimRuntime,
    /// Session token settings and each tenant's current signing key.
    sessions: Sessions,
    /// Password settings and attempt buckets.
    passwords: Passwords,
    /// Bounds on SSO logins in progress.
    sso_pending: sso::PendingLogins,
    /// On an edge (`gatehouse edge`): how up to date its replica is; `None` on `serve`.
    freshness: Option<Arc<edge_sync::Freshness>>,
    /// Set when the server stops: edge streams end, so graceful shutdown is not held up.
    edge_streams_stop: std::sync::atomic::AtomicBool,
}

const OPERATOR_TOKEN_HASH: &str = "operator-token-sha256";

impl App {
    /// Opens the store, loads the default policy and every tenant's policy (from
    /// precompiled artifacts), and sets up the operator token. Returns the app and, on a
    /// first start without a configured token, the generated token to show once.
    pub fn open(config: &Config) -> Result<(App, Option<String>), AppError> {
        // Checked before the store opens, so a bad URL changes nothing.
        config
            .public_url()
            .map_err(|e| AppError::BadRequest(e.to_string()))?;
        let store = match config
            .database_url()
            .map_err(|e| AppError::BadRequest(e.to_string()))?
        {
            Some(url) => Store::open_postgres(&url, &config.data, &config.store)?,
            None => Store::open_with(&config.data, &config.store)?,
        };
        let (operator_token_sha256, generated) = operator_token(&store, config)?;
        Ok((
            App::assemble(config, store, operator_token_sha256, None)?,
            generated,
        ))
    }

    /// The app over an opened store: `serve` (`freshness: None`) or an edge.
    fn assemble(
        config: &Config,
        store: Store,
        operator_token_sha256: [u8; 32],
        freshness: Option<Arc<edge_sync::Freshness>>,
    ) -> Result<App, AppError> {
        let public_url = config
            .public_url()
            .map_err(|e| AppError::BadRequest(e.to_string()))?;
        let engine = Arc::new(
            PolicyEngine::new(config.policy.limits())
                .map_err(|e| AppError::Internal(e.to_string()))?,
        );
        let default_policy = load_default_policy(&store, &engine)?;
        // An edge never writes a policy change, so it never rolls back on its own.
        let auto_rollback = match freshness {
            Some(_) => None,
            None => config.policy.auto_rollback(),
        };
        let app = App {
            store,
            engine,
            policies: Registry::with_auto_rollback(auto_rollback),
            shadow_nice: config.policy.shadow_nice,
            default_policy,
            compiled: Mutex::default(),
            warm: Mutex::default(),
            operator_token_sha256,
            policy_changes: tokio::sync::Mutex::new(()),
            policy_sync: Mutex::new(()),
            allow_private_urls: config.allow_private_urls,
            edge: Edge::new(config.edge.settings(config.allow_private_urls))
                .map_err(AppError::Internal)?,
            public_url,
            outbox_queued: Arc::default(),
            scim: ScimRuntime::new(config.scim.clone()),
            sessions: Sessions::new(&config.session),
            passwords: Passwords::new(&config.password)?,
            sso_pending: sso::PendingLogins::new(&config.sso),
            freshness,
            edge_streams_stop: std::sync::atomic::AtomicBool::new(false),
        };
        app.load_all_tenants()?;
        Ok(app)
    }

    /// Ends every edge stream this process serves (the server is stopping).
    pub fn stop_edge_streams(&self) {
        self.edge_streams_stop
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Makes `policy` the tenant's current one; the edge forgets what the previous one
    /// decided (cached results and memoised decisions).
    fn swap_policy(&self, tenant: &str, policy: TenantPolicy) {
        self.policies.set(tenant, policy);
        self.edge.touch(tenant);
    }

    /// Who the bearer token of a request for `tenant` is (SPEC §4): the `Authorization`
    /// header values as received.
    pub async fn resolve_token(&self, tenant: &str, authorization: &[&[u8]]) -> Evaluation {
        if let Some(freshness) = &self.freshness {
            if freshness.is_stale() {
                let started = std::time::Instant::now();
                metrics::counter!("gatehouse_edge_stale_refusals_total").increment(1);
                let evaluation = Evaluation {
                    result: Err(crate::edge::Deny {
                        kind: crate::edge::DenyKind::Forbidden,
                        reason: std::borrow::Cow::Borrowed("stale"),
                        message: "this edge has not heard from the control plane for longer \
                                  than edge.max_staleness_secs; try another edge"
                            .into(),
                    }),
                    cache_hit: false,
                    idp: None,
                    kid: None,
                };
                self.edge.record(tenant, &evaluation, started.elapsed());
                return evaluation;
            }
        }
        if self.store.is_shared() && self.policies.get(tenant).is_none() {
            self.adopt_tenant(tenant);
        }
        let ctx = EdgeContext {
            store: &self.store,
            policies: &self.policies,
            engine: &self.engine,
        };
        let evaluation = self.edge.evaluate(&ctx, tenant, authorization).await;
        self.check_auto_rollback(tenant).await;
        evaluation
    }

    /// Checks a bearer token against the operator token, in constant time.
    pub fn authorize_operator(&self, bearer: Option<&str>) -> Result<(), AppError> {
        use subtle::ConstantTimeEq;
        let given = policy::sha256(bearer.unwrap_or_default().as_bytes());
        if bearer.is_some() && bool::from(given.ct_eq(&self.operator_token_sha256)) {
            Ok(())
        } else {
            Err(AppError::Unauthorized)
        }
    }

    // ------------------------------------------------------------------ tenants

    /// Creates a tenant running the built-in default policy.
    pub fn create_tenant(&self, slug: &str, actor: &str) -> Result<TenantRecord, AppError> {
        Ok(self.create_tenant_with_admin(slug, None, actor)?.tenant)
    }

    /// Stores a new tenant (with the rest of `batch`, atomically) and gives it the
    /// built-in default policy.
    fn insert_tenant(
        &self,
        tenant: &TenantId,
        actor: &str,
        batch: &mut crate::store::Batch,
    ) -> Result<TenantRecord, AppError> {
        let record = TenantRecord {
            slug: tenant.to_string(),
            created_at: now_rfc3339(),
            created_by: actor.to_owned(),
            mode: "invite_only".to_owned(),
        };
        batch.create_tenant(&record);
        self.store.apply(batch)?;
        self.policies.set(
            tenant.as_str(),
            TenantPolicy::new(None, self.default_policy.clone(), "{}".into()),
        );
        tracing::info!(tenant = %tenant, actor, "tenant created");
        Ok(record)
    }

    /// Every tenant.
    pub fn tenants(&self) -> Result<Vec<TenantRecord>, AppError> {
        Ok(self.store.tenants()?)
    }

    /// One tenant; `NotFound` for an unknown or malformed slug alike.
    pub fn tenant(&self, slug: &str) -> Result<TenantRecord, AppError> {
        let not_found = || AppError::NotFound(format!("tenant {slug}"));
        let tenant = TenantId::parse(slug).map_err(|_| not_found())?;
        self.store.tenant(tenant.as_str())?.ok_or_else(not_found)
    }

    // ----------------------------------------------------------------- policies

    /// The tenant's policy overview.
    pub fn policy_overview(&self, tenant: &str) -> Result<PolicyOverview, AppError> {
        let tenant = self.tenant(tenant)?;
        let state = self.store.policy_state(&tenant.slug)?;
        let current = self.current_policy(&tenant.slug)?;
        let active_policy = match current.compiled() {
            Ok(compiled) => compiled.info.clone(),
            Err(e) => rules::PolicyInfo {
                name: "unavailable".into(),
                version: e.to_string(),
                contract: String::new(),
            },
        };
        let versions = self.store.policy_versions(&tenant.slug)?;
        let compiled = versions
            .iter()
            .filter(|v| self.compiled_here(&v.sha256))
            .map(|v| v.version)
            .collect();
        Ok(PolicyOverview {
            active: state.active,
            active_policy,
            history: state.history,
            versions,
            compiled,
        })
    }

    /// Uploads a policy version: size check, compile (on a blocking thread, off the
    /// request path), type-check, `validate-settings`, the policy's own cases, then one
    /// durable transaction, then (if asked) an atomic swap. Nothing is stored unless every
    /// step passed.
    pub async fn upload_policy(
        self: &Arc<Self>,
        tenant: &str,
        upload: Upload,
        actor: &str,
    ) -> Result<PolicyVersionRecord, AppError> {
        let tenant = self.tenant(tenant)?.slug;
        let started = Instant::now();
        let app = self.clone();
        let prepared = tokio::task::spawn_blocking(move || app.prepare_upload(upload))
            .await
            .map_err(|e| AppError::Internal(format!("policy compilation stopped: {e}")))??;
        let (compiled, upload) = prepared;
        let _guard = self.policy_changes.lock().await;
        let record = PolicyVersionRecord {
            version: 0,
            sha256: hex::encode(compiled.sha256),
            size: upload.component.len() as u64,
            name: compiled.info.name.clone(),
            policy_version: compiled.info.version.clone(),
            contract: compiled.info.contract.clone(),
            settings: upload.settings.clone(),
            uploaded_by: actor.to_owned(),
            uploaded_at: now_rfc3339(),
        };
        let (record, state) = self.store.add_policy_version(
            &tenant,
            NewPolicyVersion {
                record,
                component: &upload.component,
                activate: upload.activate,
            },
        )?;
        if upload.activate {
            self.swap_policy(
                &tenant,
                TenantPolicy::new(state.active, compiled, upload.settings.into()),
            );
        }
        tracing::info!(
            tenant, actor, version = record.version, sha256 = %record.sha256, activated = upload.activate,
            elapsed_ms = started.elapsed().as_millis() as u64, "policy uploaded"
        );
        Ok(record)
    }

    /// Everything of an upload that needs no lock: compile, checks, cases, artifact file.
    fn prepare_upload(&self, upload: Upload) -> Result<(Arc<Compiled>, Upload), AppError> {
        let compiled = self
            .compile(&upload.component)
            .map_err(AppError::PolicyRefused)?;
        match self.engine.validate_settings(&compiled, &upload.settings) {
            Ok(Ok(())) => {}
            Ok(Err(message)) => {
                return Err(AppError::PolicyRefused(PolicyError::Settings(message)))
            }
            Err(e) => return Err(AppError::PolicyRefused(e)),
        }
        let mut runner = policy::CaseRunner::new(&self.engine, &compiled);
        let reports: Vec<_> = upload
            .cases
            .iter()
            .map(|case| case.run(&mut runner))
            .collect();
        let failed: Vec<_> = reports.into_iter().filter(|r| !r.passed).collect();
        if !failed.is_empty() {
            return Err(AppError::CasesFailed {
                total: upload.cases.len(),
                failed,
            });
        }
        let artifact = self
            .engine
            .serialize(&compiled)
            .map_err(|e| AppError::Internal(e.to_string()))?;
        self.store.put_artifact(
            &hex::encode(compiled.sha256),
            &self.engine.artifact_key(),
            &artifact,
        )?;
        Ok((compiled, upload))
    }

    /// Activates a stored version (`None`: the built-in default). Its precompiled artifact
    /// is loaded before anything changes, so a version that cannot load is never active.
    pub async fn activate_policy(
        &self,
        tenant: &str,
        version: Option<u64>,
    ) -> Result<PolicyState, AppError> {
        let tenant = self.tenant(tenant)?.slug;
        let _guard = self.policy_changes.lock().await;
        let policy = self.policy_for_version(&tenant, version)?;
        let state = self.store.activate_policy(&tenant, version)?;
        self.swap_policy(&tenant, policy);
        tracing::info!(tenant, version, "policy activated");
        Ok(state)
    }

    /// Returns the tenant to the policy it ran before the current one.
    pub async fn rollback_policy(&self, tenant: &str) -> Result<PolicyState, AppError> {
        let tenant = self.tenant(tenant)?.slug;
        let _guard = self.policy_changes.lock().await;
        let state = self.store.policy_state(&tenant)?;
        let Some(&previous) = state.history.last() else {
            return Err(AppError::Conflict(format!(
                "tenant {tenant} has no earlier policy to roll back to"
            )));
        };
        let policy = self.policy_for_version(&tenant, previous)?;
        let state = self.store.rollback_policy(&tenant)?;
        self.swap_policy(&tenant, policy);
        tracing::info!(tenant, version = previous, "policy rolled back");
        Ok(state)
    }

    /// Evaluates a candidate component (with its settings) and the active policy on the
    /// tenant's decision ring and reports exactly the decisions whose outcome differs. Stores
    /// nothing; the candidate's settings are validated as at upload.
    pub async fn dry_run_policy(
        self: &Arc<Self>,
        tenant: &str,
        component: Vec<u8>,
        settings: String,
    ) -> Result<DryRunReport, AppError> {
        let tenant = self.tenant(tenant)?.slug;
        let app = self.clone();
        tokio::task::spawn_blocking(move || app.dry_run_blocking(&tenant, &component, settings))
            .await
            .map_err(|e| AppError::Internal(format!("dry run stopped: {e}")))?
    }

    /// Starts `component` (with `settings`, validated as at upload) in shadow for the tenant,
    /// replacing any shadow it had. The candidate is stored (bytes and settings, not as a
    /// version), so every replica runs it and a restart resumes it, until it is promoted or
    /// discarded; each replica counts the decisions it made (decision 74).
    pub async fn start_shadow(
        self: &Arc<Self>,
        tenant: &str,
        component: Vec<u8>,
        settings: String,
    ) -> Result<ShadowState, AppError> {
        let tenant = self.tenant(tenant)?.slug;
        let app = self.clone();
        let (compiled, settings) = tokio::task::spawn_blocking(move || {
            app.candidate(&component, settings)
                .map(|(compiled, settings)| (compiled, settings, component))
        })
        .await
        .map_err(|e| AppError::Internal(format!("shadow start stopped: {e}")))?
        .map(|(compiled, settings, component)| ((compiled, component), settings))?;
        let (compiled, component) = compiled;
        // Stored (bytes and settings) so every replica runs it, and a restart too; the
        // artifact first, as for an upload, so other replicas' loads are cheap.
        let artifact = self
            .engine
            .serialize(&compiled)
            .map_err(|e| AppError::Internal(e.to_string()))?;
        let sha256 = hex::encode(compiled.sha256);
        self.store
            .put_artifact(&sha256, &self.engine.artifact_key(), &artifact)?;
        let record = crate::store::ShadowRecord {
            sha256,
            settings: settings.clone(),
            started_by: OPERATOR.to_owned(),
            started_at: now_rfc3339(),
        };
        self.store
            .set_policy_shadow(&tenant, Some((&record, &component)))?;
        let info = compiled.info.clone();
        let shadow = policy::shadow::Shadow::start(
            self.engine.clone(),
            &tenant,
            TenantPolicy::new(None, compiled, settings.into()),
            info,
            component.into(),
            self.shadow_nice,
        );
        self.policies.set_shadow(&tenant, Some(shadow.clone()));
        tracing::info!(tenant, candidate = %shadow.info.name, "shadow policy started");
        Ok(ShadowState {
            candidate: shadow.info.clone(),
            stats: shadow.stats(),
        })
    }

    /// The tenant's shadow and its counters.
    pub fn shadow_state(&self, tenant: &str) -> Result<ShadowState, AppError> {
        let tenant = self.tenant(tenant)?.slug;
        let shadow = self
            .policies
            .shadow(&tenant)
            .ok_or_else(|| AppError::NotFound(format!("shadow policy of tenant {tenant}")))?;
        Ok(ShadowState {
            candidate: shadow.info.clone(),
            stats: shadow.stats(),
        })
    }

    /// Stops the tenant's shadow (on every replica); returns its final counters here.
    pub fn discard_shadow(&self, tenant: &str) -> Result<ShadowState, AppError> {
        let state = self.shadow_state(tenant)?;
        self.store.set_policy_shadow(tenant, None)?;
        self.policies.set_shadow(tenant, None);
        tracing::info!(tenant, stats = ?state.stats, "shadow policy discarded");
        Ok(state)
    }

    /// Stores the shadow's component and settings as a new version, activates it, and stops
    /// the shadow.
    pub async fn promote_shadow(
        self: &Arc<Self>,
        tenant: &str,
        actor: &str,
    ) -> Result<PolicyVersionRecord, AppError> {
        let tenant = self.tenant(tenant)?.slug;
        let shadow = self
            .policies
            .shadow(&tenant)
            .ok_or_else(|| AppError::NotFound(format!("shadow policy of tenant {tenant}")))?;
        let record = self
            .upload_policy(
                &tenant,
                Upload {
                    component: shadow.component.to_vec(),
                    settings: shadow.settings.to_string(),
                    cases: Vec::new(),
                    activate: true,
                },
                actor,
            )
            .await?;
        self.store.set_policy_shadow(&tenant, None)?;
        self.policies.set_shadow(&tenant, None);
        tracing::info!(tenant, version = record.version, stats = ?shadow.stats(), "shadow policy promoted");
        Ok(record)
    }

    /// Compiles a candidate and validates its settings, as an upload would.
    fn candidate(
        &self,
        component: &[u8],
        settings: String,
    ) -> Result<(Arc<Compiled>, String), AppError> {
        let compiled = self.compile(component).map_err(AppError::PolicyRefused)?;
        match self.engine.validate_settings(&compiled, &settings) {
            Ok(Ok(())) => Ok((compiled, settings)),
            Ok(Err(message)) => Err(AppError::PolicyRefused(PolicyError::Settings(message))),
            Err(e) => Err(AppError::PolicyRefused(e)),
        }
    }

    fn dry_run_blocking(
        &self,
        tenant: &str,
        component: &[u8],
        settings: String,
    ) -> Result<DryRunReport, AppError> {
        let (compiled, settings) = self.candidate(component, settings)?;
        let info = compiled.info.clone();
        let candidate = TenantPolicy::new(None, compiled, settings.into());
        let active = self.current_policy(tenant)?;
        let recorded = self.policies.recent(tenant);
        let outcome = |result: Result<serde_json::Value, PolicyError>| match result {
            Ok(value) => value,
            Err(e) => {
                serde_json::json!({ "error": { "kind": e.kind(), "message": e.to_string() } })
            }
        };
        let mut changed = Vec::new();
        for input in &recorded {
            let before = outcome(active.decide_recorded(&self.engine, input));
            let after = outcome(candidate.decide_recorded(&self.engine, input));
            if before != after {
                let (decision, input) = match input {
                    policy::ring::RecordedInput::Login(i) => ("login", json(i)),
                    policy::ring::RecordedInput::Resolve(i) => ("resolve", json(i)),
                };
                changed.push(DryRunChange {
                    decision,
                    input,
                    before,
                    after,
                });
            }
        }
        Ok(DryRunReport {
            candidate: info,
            active: active.version,
            evaluated: recorded.len(),
            changed,
        })
    }

    /// Acts on a pending automatic-rollback trip of the tenant: when the version that
    /// tripped is still active, returns to the previous one and audits why
    /// (`policy.auto_rollback`, actor `gatehouse`). Called after decisions are answered.
    pub async fn check_auto_rollback(&self, tenant: &str) {
        let Some(trip) = self.policies.take_trip(tenant) else {
            return;
        };
        if let Err(e) = self.auto_rollback(tenant, &trip).await {
            tracing::error!(tenant, version = trip.version, error = %e, "automatic rollback failed");
        }
    }

    async fn auto_rollback(&self, tenant: &str, trip: &policy::Trip) -> Result<(), AppError> {
        let _guard = self.policy_changes.lock().await;
        let state = self.store.policy_state(tenant)?;
        if state.active != Some(trip.version) {
            return Ok(()); // already replaced by someone
        }
        let Some(&previous) = state.history.last() else {
            tracing::warn!(
                tenant,
                version = trip.version,
                "policy failing but nothing to roll back to"
            );
            return Ok(());
        };
        let policy = self.policy_for_version(tenant, previous)?;
        let state = self.store.rollback_policy(tenant)?;
        self.swap_policy(tenant, policy);
        let why = serde_json::json!({
            "version": trip.version,
            "failures": trip.failures,
            "last_error": trip.last_error,
            "reason": format!(
                "{} failed decisions within {}s of activation",
                trip.failures,
                self.policies.auto_rollback().map(|a| a.window.as_secs()).unwrap_or_default()
            ),
        });
        let after = serde_json::json!({ "active": state.active });
        self.with_tenant(tenant, |slug| {
            let mut batch = crate::store::Batch::new(slug);
            self.audit_log(slug)?.record(
                &mut batch,
                "gatehouse",
                "policy.auto_rollback",
                slug,
                Some(&why),
                Some(&after),
            );
            self.store.apply(&batch)?;
            Ok(())
        })?;
        tracing::warn!(tenant, version = trip.version, back_to = ?previous, failures = trip.failures, last_error = %trip.last_error, "policy rolled back automatically");
        Ok(())
    }

    /// The tenant's current policy.
    pub fn current_policy(&self, tenant: &str) -> Result<Arc<TenantPolicy>, AppError> {
        self.adopt_tenant(tenant)
            .ok_or_else(|| AppError::NotFound(format!("tenant {tenant}")))
    }

    /// Evaluates one decision with the tenant's current policy. A policy failure is an
    /// answer (a deny with reason `policy_error`), not an error of the request.
    pub fn evaluate(&self, tenant: &str, request: &Evaluate) -> Result<Evaluated, AppError> {
        let policy = self.current_policy(tenant)?;
        let started = Instant::now();
        let engine = &self.engine;
        let (decision, result) = match request {
            Evaluate::Login { input } => ("login", policy.login(engine, input).map(json)),
            Evaluate::Resolve { input } => ("resolve", policy.resolve(engine, input).map(json)),
            Evaluate::EffectiveRole { input } => (
                "effective_role",
                policy.effective_role(engine, input).map(json),
            ),
            Evaluate::ClaimMapping { input } => (
                "claim_mapping",
                policy.claim_mapping(engine, input).map(json),
            ),
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.kind(),
        };
        metrics::counter!("gatehouse_policy_evaluations_total", "decision" => decision, "outcome" => outcome).increment(1);
        metrics::histogram!("gatehouse_policy_evaluation_seconds", "decision" => decision)
            .record(started.elapsed());
        let name = policy
            .compiled()
            .map(|c| c.info.name.clone())
            .unwrap_or_else(|_| "unavailable".into());
        Ok(match result {
            Ok(decision) => Evaluated {
                policy_version: policy.version,
                policy: name,
                decision: Some(decision),
                policy_error: None,
            },
            Err(e) => {
                tracing::warn!(tenant, decision, kind = e.kind(), error = %e, "policy error: request denied");
                Evaluated {
                    policy_version: policy.version,
                    policy: name,
                    decision: None,
                    policy_error: Some(PolicyFailure {
                        reason: "policy_error",
                        kind: e.kind(),
                        message: e.to_string(),
                    }),
                }
            }
        })
    }

    // ------------------------------------------------------------------ loading

    /// Loads every tenant's policy, spread over the machine's cores: each load is a
    /// store read and a deserialization of machine code, independent of the others.
    fn load_all_tenants(&self) -> Result<(), AppError> {
        let tenants = self.store.tenants()?;
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(tenants.len().max(1));
        let chunk = tenants.len().div_ceil(threads).max(1);
        std::thread::scope(|scope| {
            let workers: Vec<_> = tenants
                .chunks(chunk)
                .map(|chunk| {
                    scope.spawn(move || {
                        for tenant in chunk {
                            let policy = self.load_tenant_policy(&tenant.slug)?;
                            self.policies.set(&tenant.slug, policy);
                        }
                        Ok::<(), AppError>(())
                    })
                })
                .collect();
            workers.into_iter().try_for_each(|worker| {
                worker
                    .join()
                    .map_err(|_| AppError::Internal("a policy loader thread panicked".into()))?
            })
        })
    }

    fn load_tenant_policy(&self, tenant: &str) -> Result<TenantPolicy, AppError> {
        let state = self.store.policy_state(tenant)?;
        match self.policy_for_version(tenant, state.active) {
            Ok(policy) => Ok(policy),
            Err(e) => {
                // Fail closed for this tenant only: the others keep serving.
                tracing::error!(tenant, version = state.active, error = %e, "tenant policy unavailable; its decisions are denied");
                Ok(TenantPolicy::unavailable(
                    state.active,
                    "{}".into(),
                    e.to_string(),
                ))
            }
        }
    }

    /// The runnable policy for a version of a tenant: compiled code from the in-process
    /// cache, else the precompiled artifact, else (engine upgraded) a recompile of the
    /// stored bytes whose artifact is stored for next time.
    fn policy_for_version(
        &self,
        tenant: &str,
        version: Option<u64>,
    ) -> Result<TenantPolicy, AppError> {
        let Some(version) = version else {
            return Ok(TenantPolicy::new(
                None,
                self.default_policy.clone(),
                "{}".into(),
            ));
        };
        let record = self.store.policy_version(tenant, version)?.ok_or_else(|| {
            AppError::NotFound(format!("policy version {version} of tenant {tenant}"))
        })?;
        let sha: [u8; 32] = hex::decode(&record.sha256)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                AppError::Internal(format!(
                    "policy version {version} of tenant {tenant} has a bad hash"
                ))
            })?;
        if let Some(compiled) = self.cached(&sha) {
            return Ok(TenantPolicy::new(
                Some(version),
                compiled,
                record.settings.into(),
            ));
        }
        let compiled = precompiled(&self.store, &self.engine, sha, || {
            self.store
                .policy_component(tenant, &record.sha256)?
                .ok_or_else(|| {
                    AppError::Internal(format!(
                        "policy version {version} of tenant {tenant} has no stored component"
                    ))
                })
        })?;
        self.remember(&compiled);
        Ok(TenantPolicy::new(
            Some(version),
            compiled,
            record.settings.into(),
        ))
    }

    /// Compiles uploaded bytes, reusing machine code already compiled for the same hash.
    fn compile(&self, bytes: &[u8]) -> Result<Arc<Compiled>, PolicyError> {
        if bytes.len() > self.engine.limits().max_component_bytes {
            return Err(PolicyError::TooLarge {
                size: bytes.len(),
                max: self.engine.limits().max_component_bytes,
            });
        }
        if let Some(compiled) = self.cached(&policy::sha256(bytes)) {
            return Ok(compiled);
        }
        let compiled = self.engine.compile(bytes)?;
        self.remember(&compiled);
        Ok(compiled)
    }

    /// Whether this replica holds compiled code for the component with hex hash `sha256`
    /// (in memory, or as an artifact file for this engine).
    fn compiled_here(&self, sha256: &str) -> bool {
        let Some(sha) = hex::decode(sha256)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
        else {
            return false;
        };
        self.cached(&sha).is_some()
            || self
                .store
                .artifact_path(sha256, &self.engine.artifact_key())
                .exists()
    }

    fn cached(&self, sha: &[u8; 32]) -> Option<Arc<Compiled>> {
        self.compiled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(sha)
            .and_then(Weak::upgrade)
    }

    fn remember(&self, compiled: &Arc<Compiled>) {
        let mut cache = self.compiled.lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|_, weak| weak.strong_count() > 0);
        cache.insert(compiled.sha256, Arc::downgrade(compiled));
    }
}

/// The default policy from its precompiled artifact, or compiled (and its artifact
/// written) on the first start of this build.
fn load_default_policy(store: &Store, engine: &PolicyEngine) -> Result<Arc<Compiled>, AppError> {
    precompiled(
        store,
        engine,
        policy::sha256(policy::DEFAULT_POLICY),
        || Ok(policy::DEFAULT_POLICY.to_vec()),
    )
    .map_err(|e| AppError::Internal(format!("the built-in default policy does not load: {e}")))
}

/// The runnable form of component `sha`: its artifact file mapped, else (first start, or
/// an engine upgrade) the component's `bytes` compiled and the artifact written for next
/// time.
fn precompiled(
    store: &Store,
    engine: &PolicyEngine,
    sha: [u8; 32],
    bytes: impl FnOnce() -> Result<Vec<u8>, AppError>,
) -> Result<Arc<Compiled>, AppError> {
    let (sha_hex, key) = (hex::encode(sha), engine.artifact_key());
    let path = store.artifact_path(&sha_hex, &key);
    if path.exists() {
        match engine.load_precompiled_file(&path, sha) {
            Ok(compiled) => return Ok(compiled),
            Err(e) => {
                tracing::warn!(artifact = %path.display(), error = %e, "artifact unusable; recompiling")
            }
        }
    }
    let compiled = engine.compile(&bytes()?).map_err(AppError::PolicyRefused)?;
    let artifact = engine
        .serialize(&compiled)
        .map_err(|e| AppError::Internal(e.to_string()))?;
    store.put_artifact(&sha_hex, &key, &artifact)?;
    Ok(compiled)
}

/// The operator token's hash: from the configuration, else the stored one, else a new
/// token (returned so it can be shown once).
fn operator_token(store: &Store, config: &Config) -> Result<([u8; 32], Option<String>), AppError> {
    if let Some(token) = config
        .operator_token()
        .map_err(|e| AppError::BadRequest(e.to_string()))?
    {
        if token.len() < 16 {
            return Err(AppError::BadRequest(
                "the operator token must be at least 16 characters".into(),
            ));
        }
        return Ok((policy::sha256(token.as_bytes()), None));
    }
    if let Some(hash) = store.system_get(OPERATOR_TOKEN_HASH)? {
        if let Ok(hash) = <[u8; 32]>::try_from(hash.as_slice()) {
            return Ok((hash, None));
        }
    }
    let token = new_secret("gho_");
    let hash = policy::sha256(token.as_bytes());
    store.system_put(OPERATOR_TOKEN_HASH, &hash)?;
    Ok((hash, Some(token)))
}

/// A random secret with a recognisable prefix (so scanners can find leaked ones).
pub fn new_secret(prefix: &str) -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

fn json<T: serde::Serialize>(value: T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

/// The clock, read once per operation and passed down.
pub fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// The current time as RFC 3339 (UTC).
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}
