//! SSO login (SPEC §2, §3): the OIDC authorization-code flow with PKCE (S256), `state` and
//! `nonce` against a tenant's SSO configuration, the direct form that takes an ID token
//! from a trusted front end, and carrying out the tenant policy's `login` decision.
//!
//! ID tokens are verified by the one JWT implementation (`jwt::parse`, the shared
//! `JwksCache`, `Parsed::verify`, `check_claims`); the IdP's endpoints come from its
//! discovery document, fetched through the same address guard. Pending logins are kept
//! server-side, one-time, keyed by the SHA-256 of `state`.

use super::session::{IssuedSession, LoginMethod};
use super::{identity, now, App, AppError};
use crate::identity::{Email, SsoConfig, User};
use crate::jwt::jwks::KeyLocation;
use crate::jwt::{self, ClaimRules, JwtError};
use crate::store::{Batch, Record, Space};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use gatehouse_rules::{self as rules, ProvisioningMode, UserSource, UserStatus};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// A tenant's pending logins are swept of expired ones at least this often (on the next
/// `/login`), and at most once per [`FULL_SWEEP_GAP`] while the tenant is at its cap.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
const FULL_SWEEP_GAP: Duration = Duration::from_secs(1);
/// Clock skew accepted on ID token times, in seconds.
const ID_TOKEN_LEEWAY: i64 = 60;
/// Longest accepted `return_to`.
const MAX_RETURN_TO: usize = 2048;

/// A login waiting for its callback.
#[derive(Serialize, Deserialize)]
struct PendingLogin {
    /// Hex SHA-256 of `state`: the record's key.
    state_sha256: String,
    sso_id: String,
    verifier: String,
    nonce: String,
    return_to: String,
    redirect_uri: String,
    expires_at: i64,
    /// Hex SHA-256 of the browser binding: the value of the cookie `/login` set in the
    /// browser that started the login. Absent on logins stored before it existed.
    #[serde(default)]
    browser_sha256: Option<String>,
}

impl Record for PendingLogin {
    const SPACE: Space = Space::SsoPending;
}

/// Per tenant, how many unexpired pending logins there are (exact after each sweep, kept
/// up to date by `/login` and `/callback` in between) and when they were last swept.
pub(super) struct PendingLogins {
    cap: usize,
    ttl: i64,
    tenants: Mutex<HashMap<String, Arc<Mutex<PendingCount>>>>,
}

#[derive(Default)]
struct PendingCount {
    count: usize,
    swept_at: Option<Instant>,
}

impl PendingLogins {
    pub(super) fn new(config: &crate::config::SsoLoginConfig) -> Self {
        PendingLogins {
            cap: config.max_pending_logins,
            ttl: i64::try_from(config.pending_login_ttl_secs)
                .unwrap_or(i64::MAX)
                .max(1),
            tenants: Mutex::default(),
        }
    }

    fn tenant(&self, slug: &str) -> Arc<Mutex<PendingCount>> {
        self.tenants
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(slug.to_owned())
            .or_default()
            .clone()
    }

    /// One pending login of `slug` is gone (completed or refused at the callback).
    fn taken(&self, slug: &str) {
        let tenant = self.tenant(slug);
        let mut count = tenant.lock().unwrap_or_else(|p| p.into_inner());
        count.count = count.count.saturating_sub(1);
    }
}

/// Where to send the browser to log in.
#[derive(Debug)]
pub struct LoginStart {
    pub authorization_url: String,
    /// The browser binding: `http` sets it as the cookie `binding_cookie`, on
    /// the callback's path, and the callback must bring it back.
    pub browser_binding: String,
    /// The binding cookie's name ([`login_cookie_name`] of the login's `state`).
    pub binding_cookie: String,
    /// The callback's path (the cookie's `Path`).
    pub callback_path: String,
    /// How long the pending login lives, in seconds (the cookie's `Max-Age`).
    pub ttl_secs: i64,
}

/// The name of the cookie that binds the login with this `state` to the browser that
/// started it: one per login, so logins in two tabs do not undo each other.
pub fn login_cookie_name(state: &str) -> String {
    let digest = hex::encode(crate::policy::sha256(state.as_bytes()));
    format!("gatehouse_sso_{}", &digest[..16])
}

/// A completed login.
#[derive(Debug)]
pub struct SsoLogin {
    pub user: User,
    pub session: IssuedSession,
    /// Where the browser goes next (a same-origin path); `/` for the direct form.
    pub return_to: String,
    /// `created`, `activated` or `allowed`.
    pub outcome: &'static str,
}

/// Checks a `return_to`: a same-origin relative path only (`/…`, not `//…` or `/\…`).
pub fn check_return_to(value: &str) -> Result<String, AppError> {
    let ok = value.starts_with('/')
        && !value.starts_with("//")
        && !value.starts_with("/\\")
        && value.len() <= MAX_RETURN_TO
        && !value.chars().any(|c| c.is_control() || c == '\\');
    if ok {
        Ok(value.to_owned())
    } else {
        Err(AppError::BadRequest(
            "return_to must be a path on this site, starting with a single / (at most 2048 characters)".into(),
        ))
    }
}

fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

fn invalid(reason: &'static str, message: impl Into<String>) -> AppError {
    AppError::LoginInvalid {
        reason,
        message: message.into(),
    }
}

fn from_jwt(error: JwtError) -> AppError {
    match error {
        JwtError::KeysUnavailable => AppError::IdpUnavailable(
            "the identity provider's keys cannot be fetched; try again later".into(),
        ),
        other => invalid(
            other.reason(),
            format!("the identity provider's ID token was refused: {other}"),
        ),
    }
}

/// The OpenID endpoints Gatehouse uses.
struct Endpoints {
    authorization: String,
    token: String,
    /// `authorization_response_iss_parameter_supported` (RFC 9207): every authorization
    /// response carries `iss`.
    names_itself: bool,
}

/// Where an SSO configuration's unique ids are bound to users: per configuration and
/// issuer (a configuration re-created for another IdP starts afresh).
struct SubjectKeys {
    sso_id: String,
    issuer: String,
}

impl SubjectKeys {
    fn new(sso: &SsoConfig) -> Self {
        SubjectKeys {
            sso_id: sso.id.clone(),
            issuer: hex::encode(&crate::policy::sha256(sso.issuer.as_bytes())[..16]),
        }
    }

    /// → user id.
    fn by_subject(&self, subject: &str) -> [String; 4] {
        let hash = hex::encode(crate::policy::sha256(subject.as_bytes()));
        [self.sso_id.clone(), self.issuer.clone(), "s".into(), hash]
    }

    /// → unique id.
    fn by_user(&self, user_id: &str) -> [String; 4] {
        [
            self.sso_id.clone(),
            self.issuer.clone(),
            "u".into(),
            user_id.to_owned(),
        ]
    }
}

fn parts(key: &[String; 4]) -> [&str; 4] {
    [&key[0], &key[1], &key[2], &key[3]]
}

impl App {
    /// Puts the removal of `user_id`'s IdP unique-id bindings (decision 41) into `batch`:
    /// under every SSO configuration of the tenant and every issuer it ever had (an admin
    /// may have changed it since the binding was made).
    pub(super) fn stage_subject_unbinding(
        &self,
        slug: &str,
        user_id: &str,
        batch: &mut Batch,
    ) -> Result<(), crate::store::StoreError> {
        for sso in self.store.list::<SsoConfig>(slug, &[])? {
            for rest in self.store.index(Space::SsoSubjects, slug, &[&sso.id])? {
                let parts: Vec<&str> = rest.split('\0').collect();
                let [issuer, "u", user] = parts[..] else {
                    continue;
                };
                if user != user_id {
                    continue;
                }
                let by_user = [sso.id.as_str(), issuer, "u", user];
                if let Some(sub) = self.store.get_raw(Space::SsoSubjects, slug, &by_user)? {
                    let hash = hex::encode(crate::policy::sha256(&sub));
                    batch
                        .remove(Space::SsoSubjects, &by_user)
                        .remove(Space::SsoSubjects, &[&sso.id, issuer, "s", &hash]);
                }
            }
        }
        Ok(())
    }

    /// Puts the removal of every binding made through SSO configuration `sso_id` into
    /// `batch` (the configuration is being deleted).
    pub(super) fn stage_sso_bindings_removal(
        &self,
        slug: &str,
        sso_id: &str,
        batch: &mut Batch,
    ) -> Result<(), crate::store::StoreError> {
        for rest in self.store.index(Space::SsoSubjects, slug, &[sso_id])? {
            let mut key = vec![sso_id];
            key.extend(rest.split('\0'));
            batch.remove(Space::SsoSubjects, &key);
        }
        Ok(())
    }
}

fn discovery_url(sso: &SsoConfig) -> String {
    sso.discovery_url.clone().unwrap_or_else(|| {
        format!(
            "{}/.well-known/openid-configuration",
            sso.issuer.trim_end_matches('/')
        )
    })
}

impl App {
    /// The configured `public_url`, if any (no trailing slash).
    pub fn public_url(&self) -> Option<&str> {
        self.public_url.as_deref()
    }

    /// The path a browser calls `tenant`'s SSO configuration `sso_id` back at (the public
    /// URL's own path first, if it has one); `None` when there is no such configuration.
    pub fn sso_callback_path(&self, tenant: &str, sso_id: &str) -> Option<String> {
        let (slug, sso) = self.sso_config(tenant, sso_id).ok()?;
        let prefix = self
            .public_url
            .as_deref()
            .and_then(|u| url::Url::parse(u).ok())
            .map(|u| u.path().trim_end_matches('/').to_owned())
            .unwrap_or_default();
        Some(format!("{prefix}/v1/{slug}/sso/{}/callback", sso.id))
    }

    /// The SSO configuration `sso_id` of `tenant`. An unknown tenant and an unknown
    /// configuration read the same, so a login URL never tells whether a tenant exists.
    fn sso_config(&self, tenant: &str, sso_id: &str) -> Result<(String, SsoConfig), AppError> {
        let not_found = || AppError::NotFound("SSO login".into());
        let slug = self.tenant(tenant).map_err(|_| not_found())?.slug;
        let sso: SsoConfig = self.store.get(&slug, &[sso_id])?.ok_or_else(not_found)?;
        Ok((slug, sso))
    }

    async fn endpoints(&self, sso: &SsoConfig) -> Result<Endpoints, AppError> {
        let url = discovery_url(sso);
        let doc = self.edge.jwks().discovery(&url).await.map_err(|e| {
            tracing::warn!(error = %e, "SSO discovery failed");
            AppError::IdpUnavailable(
                "the identity provider cannot be reached (discovery failed); try again later"
                    .into(),
            )
        })?;
        let field = |name: &str| doc.get(name).and_then(Value::as_str).map(str::to_owned);
        if field("issuer").as_deref() != Some(sso.issuer.as_str()) {
            return Err(AppError::IdpUnavailable(
                "the identity provider's discovery document names another issuer than the SSO configuration".into(),
            ));
        }
        match (field("authorization_endpoint"), field("token_endpoint")) {
            (Some(authorization), Some(token)) => Ok(Endpoints {
                authorization,
                token,
                names_itself: doc
                    .get("authorization_response_iss_parameter_supported")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            }),
            _ => Err(AppError::IdpUnavailable(
                "the identity provider's discovery document lacks the authorization or token endpoint".into(),
            )),
        }
    }

    /// Starts a login: stores the pending login (verifier, nonce, `return_to`) under the
    /// hash of a fresh `state` and answers the IdP URL to redirect to. `base` is this
    /// service's public origin (the configured `public_url`, else the request's).
    pub async fn sso_begin(
        &self,
        tenant: &str,
        sso_id: &str,
        return_to: Option<&str>,
        base: &str,
    ) -> Result<LoginStart, AppError> {
        let return_to = check_return_to(return_to.unwrap_or("/"))?;
        let (slug, sso) = self.sso_config(tenant, sso_id)?;
        let endpoints = self.endpoints(&sso).await?;
        let base = self.public_url.as_deref().unwrap_or(base);
        let redirect_uri = format!("{base}/v1/{slug}/sso/{}/callback", sso.id);
        // The path the browser will call back at (below the public URL's own path, if any).
        let callback_path = url::Url::parse(&redirect_uri)
            .map(|u| u.path().to_owned())
            .map_err(|_| AppError::BadRequest("this server's public URL is not a URL".into()))?;
        let (state, nonce, verifier) = (random_token(), random_token(), random_token());
        let browser_binding = random_token();
        let challenge = URL_SAFE_NO_PAD.encode(crate::policy::sha256(verifier.as_bytes()));
        let now = now().unix_timestamp();
        let state_sha256 = hex::encode(crate::policy::sha256(state.as_bytes()));
        let pending = PendingLogin {
            state_sha256: state_sha256.clone(),
            sso_id: sso.id.clone(),
            verifier,
            nonce: nonce.clone(),
            return_to,
            redirect_uri: redirect_uri.clone(),
            expires_at: now.saturating_add(self.sso_pending.ttl),
            browser_sha256: Some(hex::encode(crate::policy::sha256(
                browser_binding.as_bytes(),
            ))),
        };
        self.store_pending(&slug, &pending, now)?;
        let mut url = url::Url::parse(&endpoints.authorization).map_err(|_| {
            AppError::IdpUnavailable(
                "the identity provider's authorization endpoint is not a URL".into(),
            )
        })?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &sso.client_id)
            .append_pair("redirect_uri", &redirect_uri)
            .append_pair("scope", "openid email profile")
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        Ok(LoginStart {
            authorization_url: url.into(),
            browser_binding,
            binding_cookie: login_cookie_name(&state),
            callback_path,
            ttl_secs: self.sso_pending.ttl,
        })
    }

    /// Stores a pending login if the tenant is under its cap. Expired pending logins are
    /// swept on the way: at least every [`SWEEP_EVERY`], and (at most once per
    /// [`FULL_SWEEP_GAP`]) when the tenant is at its cap, so a flood of `/login` calls holds
    /// at most `max_pending_logins` records per tenant and costs no scan per call.
    fn store_pending(&self, slug: &str, pending: &PendingLogin, now: i64) -> Result<(), AppError> {
        let limits = &self.sso_pending;
        let tenant = limits.tenant(slug);
        let mut count = tenant.lock().unwrap_or_else(|p| p.into_inner());
        let since = |gap: Duration| count.swept_at.is_none_or(|at| at.elapsed() >= gap);
        if since(SWEEP_EVERY) || (count.count >= limits.cap && since(FULL_SWEEP_GAP)) {
            count.count = self.sweep_pending(slug, now)?;
            count.swept_at = Some(Instant::now());
        }
        if count.count >= limits.cap {
            return Err(AppError::TooManyRequests {
                reason: "too_many_pending_logins",
                message: format!(
                    "too many logins of this tenant are in progress (at most {}); try again in a minute",
                    limits.cap
                ),
                retry_after_secs: 60,
            });
        }
        let mut batch = Batch::new(slug);
        batch.put(&[&pending.state_sha256], pending);
        self.store.apply(&batch)?;
        count.count += 1;
        Ok(())
    }

    /// Removes `slug`'s expired pending logins; answers how many unexpired ones remain.
    fn sweep_pending(&self, slug: &str, now: i64) -> Result<usize, AppError> {
        let mut batch = Batch::new(slug);
        let (mut live, mut expired) = (0, 0);
        for old in self.store.list::<PendingLogin>(slug, &[])? {
            if old.expires_at <= now {
                batch.remove(Space::SsoPending, &[&old.state_sha256]);
                expired += 1;
            } else {
                live += 1;
            }
        }
        if expired > 0 {
            self.store.apply(&batch)?;
            tracing::debug!(tenant = slug, expired, live, "swept expired SSO logins");
        }
        Ok(live)
    }

    /// How many IdP unique-id binding entries `tenant` holds in the store (two per bound
    /// user and SSO configuration).
    pub fn sso_bindings_stored(&self, tenant: &str) -> Result<usize, AppError> {
        let slug = self.tenant(tenant)?.slug;
        Ok(self.store.index(Space::SsoSubjects, &slug, &[])?.len())
    }

    /// How many pending logins `tenant` holds in the store, expired ones included.
    pub fn sso_pending_stored(&self, tenant: &str) -> Result<usize, AppError> {
        let slug = self.tenant(tenant)?.slug;
        Ok(self.store.list::<PendingLogin>(&slug, &[])?.len())
    }

    /// Completes a login from the IdP's redirect: takes the pending login for `state`
    /// (once), exchanges `code` with the PKCE verifier and the client secret, verifies
    /// the ID token (nonce included) and carries out the policy's decision. `iss`, the
    /// authorization response's issuer (RFC 9207), must be the configuration's when given:
    /// a login that started at one provider cannot be completed with another's code.
    /// `browser_binding` is the value of the cookie `/login` set (see [`LoginStart`]): a
    /// callback URL carried to another browser does not log that browser in (login CSRF).
    pub async fn sso_callback(
        &self,
        tenant: &str,
        sso_id: &str,
        code: &str,
        state: &str,
        iss: Option<&str>,
        browser_binding: Option<&str>,
    ) -> Result<SsoLogin, AppError> {
        let (slug, sso) = self.sso_config(tenant, sso_id)?;
        let bad_state = || {
            invalid(
                "bad_state",
                "this login link is unknown, expired or already used; start the login again",
            )
        };
        if state.is_empty() || state.len() > 256 || code.is_empty() || code.len() > 4096 {
            return Err(bad_state());
        }
        let key = hex::encode(crate::policy::sha256(state.as_bytes()));
        let pending: PendingLogin = self.store.get(&slug, &[&key])?.ok_or_else(bad_state)?;
        // One-time: whoever removes it first completes the login.
        let mut take = Batch::new(&slug);
        take.require_present(Space::SsoPending, &[&key], "login".into())
            .remove(Space::SsoPending, &[&key]);
        match self.store.apply(&take) {
            Ok(()) => self.sso_pending.taken(&slug),
            Err(crate::store::StoreError::NotFound(_)) => return Err(bad_state()),
            Err(e) => return Err(e.into()),
        }
        if pending.sso_id != sso.id || pending.expires_at <= now().unix_timestamp() {
            return Err(bad_state());
        }
        if let Some(expected) = &pending.browser_sha256 {
            let brought = browser_binding.map(|b| hex::encode(crate::policy::sha256(b.as_bytes())));
            if brought.as_ref() != Some(expected) {
                return Err(invalid(
                    "browser_mismatch",
                    "this login was started in another browser, or this browser blocks cookies; start the login again here",
                ));
            }
        }
        let endpoints = self.endpoints(&sso).await?;
        // RFC 9207: an IdP that says it names itself must have done so on this response.
        let named = match iss {
            Some(iss) => iss == sso.issuer,
            None => !endpoints.names_itself,
        };
        if !named {
            return Err(invalid(
                "issuer_mismatch",
                "the login came back from another identity provider than the one it started at; start the login again",
            ));
        }
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", pending.redirect_uri.as_str()),
            ("code_verifier", pending.verifier.as_str()),
        ];
        let basic = match &sso.client_secret {
            Some(secret) => Some((sso.client_id.as_str(), secret.as_str())),
            None => {
                form.push(("client_id", sso.client_id.as_str()));
                None
            }
        };
        let (status, body) = self
            .edge
            .jwks()
            .post_form(&endpoints.token, basic, &form)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "SSO token exchange failed");
                AppError::IdpUnavailable(
                    "the identity provider cannot be reached (token exchange failed); try again later".into(),
                )
            })?;
        if !(200..300).contains(&status) {
            let error = body.get("error").and_then(Value::as_str).unwrap_or("");
            tracing::info!(status, error, "SSO token exchange refused");
            return Err(if status >= 500 {
                AppError::IdpUnavailable(format!(
                    "the identity provider failed the token exchange (status {status}); try again later"
                ))
            } else {
                invalid(
                    "code_rejected",
                    "the identity provider refused the login code (used already or expired); start the login again",
                )
            });
        }
        let id_token = body
            .get("id_token")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                AppError::IdpUnavailable("the identity provider answered no ID token".into())
            })?;
        let claims = self
            .verify_id_token(&sso, id_token, Some(&pending.nonce))
            .await?;
        let mut login = self.complete_login(&slug, &sso, &claims)?;
        login.return_to = pending.return_to;
        Ok(login)
    }

    /// The direct form: an ID token a trusted front end obtained, verified like the
    /// callback's (with `nonce` when given), then the same decision.
    pub async fn sso_token_login(
        &self,
        tenant: &str,
        sso_id: &str,
        id_token: &str,
        nonce: Option<&str>,
    ) -> Result<SsoLogin, AppError> {
        let (slug, sso) = self.sso_config(tenant, sso_id)?;
        let claims = self.verify_id_token(&sso, id_token, nonce).await?;
        self.complete_login(&slug, &sso, &claims)
    }

    /// An ID token of `sso`'s issuer: signature by the IdP's JWKS, `iss`, `aud` = client
    /// id, `exp`/`nbf`/`iat` with leeway, and `nonce` when expected.
    async fn verify_id_token(
        &self,
        sso: &SsoConfig,
        id_token: &str,
        nonce: Option<&str>,
    ) -> Result<Map<String, Value>, AppError> {
        let parsed = jwt::parse(id_token).map_err(from_jwt)?;
        if parsed.iss != sso.issuer {
            return Err(from_jwt(JwtError::UnknownIssuer));
        }
        let location = match &sso.jwks_uri {
            Some(uri) => KeyLocation::Jwks(uri.clone()),
            None => KeyLocation::Discovery(discovery_url(sso)),
        };
        let (_, key) = self
            .edge
            .jwks()
            .key(&location, parsed.kid.as_deref(), parsed.alg)
            .await
            .map_err(from_jwt)?;
        parsed.verify(&key).map_err(from_jwt)?;
        let audiences = [sso.client_id.clone()];
        parsed
            .check_claims(
                &ClaimRules {
                    audiences: &audiences,
                    leeway_seconds: ID_TOKEN_LEEWAY,
                },
                now().unix_timestamp(),
            )
            .map_err(from_jwt)?;
        if parsed.aud.is_empty() {
            return Err(from_jwt(JwtError::Audience));
        }
        if let Some(expected) = nonce {
            if parsed.claims.get("nonce").and_then(Value::as_str) != Some(expected) {
                return Err(invalid(
                    "nonce",
                    "the ID token does not belong to this login (nonce mismatch); start the login again",
                ));
            }
        }
        Ok(parsed.claims)
    }

    /// Asks the tenant policy's `login` decision and carries it out under the tenant's
    /// write lock (so two first logins of one person make one user), auditing every
    /// outcome; then issues the session.
    fn complete_login(
        &self,
        slug: &str,
        sso: &SsoConfig,
        claims: &Map<String, Value>,
    ) -> Result<SsoLogin, AppError> {
        let first = |path: &str| jwt::claim_values(claims, path).into_iter().next();
        let email = first(&sso.email_claim).unwrap_or_default();
        let subject = first(&sso.unique_id_claim);
        let login_claims = rules::LoginClaims {
            email: email.trim().to_owned(),
            subject: subject.clone().unwrap_or_default(),
            name: first("name"),
            given_name: first("given_name"),
            family_name: first("family_name"),
        };
        let method = LoginMethod::Sso(sso.id.clone());
        let (user, outcome) = self.with_tenant(slug, |slug| {
            let tenant = self.tenant(slug)?;
            let mode = match tenant.mode.as_str() {
                "scim" => ProvisioningMode::Scim,
                "jit" => ProvisioningMode::Jit,
                _ => ProvisioningMode::InviteOnly,
            };
            let subject_keys = SubjectKeys::new(sso);
            let user_by_id = |id: Vec<u8>| -> Result<Option<User>, AppError> {
                Ok(self.store.get(slug, &[&String::from_utf8_lossy(&id)])?)
            };
            // The IdP's unique id decides who this is once it is bound (decision 41): the
            // email may have changed at the IdP since.
            let by_subject: Option<User> = match &subject {
                Some(sub) => match self.store.get_raw(Space::SsoSubjects, slug, &parts(&subject_keys.by_subject(sub)))? {
                    Some(id) => user_by_id(id)?,
                    None => None,
                },
                None => None,
            };
            let by_email: Option<User> = match Email::parse(&login_claims.email) {
                Ok(email) => match self.store.get_raw(Space::UserEmails, slug, &[&email.key()])? {
                    Some(id) => user_by_id(id)?,
                    None => None,
                },
                Err(_) => None,
            };
            let bound = by_subject.is_some();
            // An email whose user is bound to another unique id of this IdP is someone
            // else's (a reassigned address): refused, never merged.
            let mut mismatch = false;
            let existing = match (by_subject, by_email) {
                (Some(user), _) => Some(user),
                (None, Some(user)) => {
                    mismatch = subject.is_some()
                        && self
                            .store
                            .get_raw(Space::SsoSubjects, slug, &parts(&subject_keys.by_user(&user.id)))?
                            .is_some();
                    Some(user)
                }
                (None, None) => None,
            };
            let input = rules::LoginInput {
                mode,
                sso_configured: true,
                claims: login_claims.clone(),
                user: existing.as_ref().map(|u| rules::ExistingUser {
                    id: u.id.clone(),
                    status: u.status,
                    source: u.source,
                }),
                settings: String::new(),
            };
            let policy = self
                .policies
                .get(slug)
                .ok_or_else(|| AppError::NotFound("SSO login".into()))?;
            // No unique id, or one that is not the email's user's: refused before the
            // policy is asked (and audited like any).
            let refuse = |code: &str, message: String| rules::LoginDecision {
                outcome: rules::LoginOutcome::Refuse(rules::Refusal {
                    code: code.into(),
                    message,
                }),
                trace: Vec::new(),
            };
            let decision = match &subject {
                Some(_) if mismatch => refuse(
                    "subject_mismatch",
                    format!(
                        "the account with this email is linked to another {} at your identity provider; ask your admin",
                        sso.unique_id_claim
                    ),
                ),
                Some(_) => policy
                    .login(&self.engine, &input)
                    .map_err(AppError::PolicyFailed)?,
                None => refuse(
                    "missing_subject",
                    format!(
                        "your identity provider sent no {} claim; ask your admin to release it",
                        sso.unique_id_claim
                    ),
                ),
            };
            let now = now();
            let mut batch = Batch::new(slug);
            let mut audit = self.audit_log(slug)?;
            let record = |batch: &mut Batch,
                          audit: &mut identity::AuditLog,
                          user: &str,
                          outcome: &str,
                          reason: Option<&str>| {
                let entry = LoginAudit {
                    method: method.claim(),
                    email: &login_claims.email,
                    subject: &login_claims.subject,
                    outcome,
                    reason,
                };
                audit.record(batch, &format!("sso:{}", sso.id), "login.sso", user, None, Some(&entry));
            };
            let same_user = |id: &str| -> Result<User, AppError> {
                existing.clone().filter(|u| u.id == id).ok_or_else(|| {
                    AppError::PolicyFailed(crate::policy::PolicyError::Malformed(
                        "the login decision named a user the host did not offer".into(),
                    ))
                })
            };
            let result = match decision.outcome {
                rules::LoginOutcome::Refuse(refusal) => {
                    let target = existing.as_ref().map(|u| u.id.as_str()).unwrap_or("");
                    record(&mut batch, &mut audit, target, "refused", Some(&refusal.code));
                    self.store.apply(&batch)?;
                    return Err(AppError::LoginRefused {
                        reason: refusal.code,
                        message: refusal.message,
                    });
                }
                rules::LoginOutcome::Allow(id) => {
                    let user = same_user(&id)?;
                    if user.status != UserStatus::Active {
                        return Err(AppError::PolicyFailed(crate::policy::PolicyError::Malformed(
                            "the login decision let in a user who is not active".into(),
                        )));
                    }
                    record(&mut batch, &mut audit, &user.id, "allowed", None);
                    (user, "allowed")
                }
                rules::LoginOutcome::Activate(id) => {
                    let before = same_user(&id)?;
                    if before.status != UserStatus::Invited {
                        // Never reactivates a deactivated user, whatever a policy says.
                        return Err(AppError::PolicyFailed(crate::policy::PolicyError::Malformed(
                            "the login decision activated a user who is not invited".into(),
                        )));
                    }
                    let after = User {
                        status: UserStatus::Active,
                        updated_at: now,
                        ..before.clone()
                    };
                    batch.put(&[&after.id], &after);
                    audit.record(&mut batch, &format!("sso:{}", sso.id), "user.activate", &after.id, Some(&before), Some(&after));
                    record(&mut batch, &mut audit, &after.id, "activated", None);
                    (after, "activated")
                }
                rules::LoginOutcome::Create(new) => {
                    if existing.is_some() || mode != ProvisioningMode::Jit {
                        return Err(AppError::PolicyFailed(crate::policy::PolicyError::Malformed(
                            "the login decision created a user outside jit mode or for a known email".into(),
                        )));
                    }
                    let email = Email::parse(&new.email).map_err(|e| AppError::LoginRefused {
                        reason: "missing_email".into(),
                        message: format!("the email your identity provider sent is unusable: {e}"),
                    })?;
                    let everyone = self.everyone(slug)?;
                    let mut user = User {
                        status: UserStatus::Active,
                        display_name: identity::clean(new.display_name),
                        given_name: identity::clean(new.given_name),
                        family_name: identity::clean(new.family_name),
                        ..identity::new_user(&email, UserSource::Jit, now)
                    };
                    identity::add_user_records(&mut batch, &user, &email, &everyone.id);
                    let view = identity::RoleView::default_with_teams(&user.id, vec![everyone.id.clone()]);
                    let roles = self.decide_roles(slug, &[identity::RoleState::from(&user)], &view)?;
                    (user.role, user.role_source) = roles[0];
                    batch.put(&[&user.id], &user);
                    audit.record(&mut batch, &format!("sso:{}", sso.id), "user.jit_create", &user.id, None, Some(&user));
                    record(&mut batch, &mut audit, &user.id, "created", None);
                    (user, "created")
                }
            };
            if let (false, Some(sub)) = (bound, &subject) {
                let user = &result.0.id;
                batch.put_raw(Space::SsoSubjects, &parts(&subject_keys.by_subject(sub)), user.as_bytes());
                batch.put_raw(Space::SsoSubjects, &parts(&subject_keys.by_user(user)), sub.as_bytes());
            }
            self.store.apply(&batch)?;
            Ok(result)
        })?;
        let session = self.issue_session(slug, &user.id, method, OffsetDateTime::now_utc())?;
        tracing::info!(tenant = slug, sso = %sso.id, user = %user.id, outcome, "SSO login");
        Ok(SsoLogin {
            user,
            session,
            return_to: "/".into(),
            outcome,
        })
    }
}

/// A login's audit entry: never a token or a code.
#[derive(Serialize)]
struct LoginAudit<'a> {
    method: String,
    email: &'a str,
    subject: &'a str,
    outcome: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_to_is_a_same_origin_path() {
        for ok in ["/", "/app", "/a/b?c=d#e"] {
            assert_eq!(check_return_to(ok).unwrap(), ok);
        }
        for bad in [
            "",
            "app",
            "//evil.io",
            "/\\evil.io",
            "https://evil.io/",
            "/a\nb",
            "/a\\b",
        ] {
            assert!(check_return_to(bad).is_err(), "{bad:?}");
        }
    }
}
