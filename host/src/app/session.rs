//! Gatehouse session tokens (SPEC §3): what a successful login (SSO or password) returns.
//!
//! A session token is `ghs_` followed by a compact JWS (`EdDSA`) signed with the tenant's
//! current session key. Each tenant has its own keys, kept in the store (private key
//! included, never shown), so a token of one tenant can never verify for another and keys
//! survive a restart. A key signs for `session.rotate_after_secs`, then a new one is made;
//! the old one keeps verifying until the last token it signed has expired, then it is
//! dropped (tokens name their key with `kid`).
//!
//! Nothing about a session is stored: a token is valid while its signature and `exp` hold
//! and its user is `active` in the tenant right now, so deactivating or deleting the user
//! revokes every session of that user on the next request.

use super::{App, AppError, Caller};
use crate::config::SessionConfig;
use crate::identity::{new_id, User};
use crate::jwt::jwks::Key;
use crate::jwt::signing::{self, SigningKey};
use crate::jwt::{self, ClaimRules};
use crate::store::{Batch, Record, Space};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use gatehouse_rules::{Role, UserStatus};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use time::OffsetDateTime;

/// Prefix of session tokens, so a gateway (and the edge) can tell them apart unparsed.
pub const SESSION_PREFIX: &str = "ghs_";
/// The `iss` of every session token.
const ISSUER: &str = "gatehouse";

/// How a person logged in; carried in the token's `amr` claim and in audit entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginMethod {
    /// Through the tenant's SSO configuration `ssoId`.
    Sso(String),
    /// With email and password.
    Password,
}

impl LoginMethod {
    /// `sso:<ssoId>` or `password`.
    pub fn claim(&self) -> String {
        match self {
            LoginMethod::Sso(id) => format!("sso:{id}"),
            LoginMethod::Password => "password".to_owned(),
        }
    }

    fn parse(claim: &str) -> Option<LoginMethod> {
        match claim {
            "password" => Some(LoginMethod::Password),
            other => other
                .strip_prefix("sso:")
                .filter(|id| !id.is_empty())
                .map(|id| LoginMethod::Sso(id.to_owned())),
        }
    }
}

/// A freshly issued session token. Its `Debug` never shows the token.
pub struct IssuedSession {
    pub token: String,
    pub session_id: String,
    pub expires_at: OffsetDateTime,
}

impl std::fmt::Debug for IssuedSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedSession")
            .field("token", &"<redacted>")
            .field("session_id", &self.session_id)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// The verified content of a session token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionClaims {
    pub user_id: String,
    pub session_id: String,
    pub method: LoginMethod,
    pub issued_at: i64,
    pub expires_at: i64,
}

/// Why a session token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionRefusal {
    Malformed,
    /// Issued for another tenant: answered like an unknown token (never names the tenant).
    OtherTenant,
    /// No such key (dropped, or never this tenant's).
    UnknownKey,
    BadSignature,
    Expired,
}

impl SessionRefusal {
    /// The stable reason code (SPEC §4).
    pub fn reason(self) -> &'static str {
        match self {
            SessionRefusal::Malformed => "malformed",
            SessionRefusal::OtherTenant | SessionRefusal::UnknownKey => "unknown_token",
            SessionRefusal::BadSignature => "bad_signature",
            SessionRefusal::Expired => "expired",
        }
    }

    /// A message a person can act on.
    pub fn message(self) -> &'static str {
        match self {
            SessionRefusal::Malformed => "the session token is malformed",
            SessionRefusal::OtherTenant | SessionRefusal::UnknownKey => {
                "this session token is not known here; log in again"
            }
            SessionRefusal::BadSignature => "the session token's signature does not verify",
            SessionRefusal::Expired => "the session has expired; log in again",
        }
    }
}

/// Checks a session token (without its `ghs_` prefix) for `tenant` at `now`; `key` finds
/// the tenant's verification key by `kid`.
pub fn verify(
    tenant: &str,
    jws: &str,
    now: i64,
    key: impl FnOnce(&str) -> Option<Arc<Key>>,
) -> Result<SessionClaims, SessionRefusal> {
    let parsed = jwt::parse(jws).map_err(|_| SessionRefusal::Malformed)?;
    let text = |name: &str| parsed.claims.get(name).and_then(|v| v.as_str());
    if parsed.iss != ISSUER {
        return Err(SessionRefusal::Malformed);
    }
    if text("tid") != Some(tenant) {
        return Err(SessionRefusal::OtherTenant);
    }
    let kid = parsed.kid.as_deref().ok_or(SessionRefusal::Malformed)?;
    let key = key(kid).ok_or(SessionRefusal::UnknownKey)?;
    parsed
        .verify(&key)
        .map_err(|_| SessionRefusal::BadSignature)?;
    parsed
        .check_claims(
            &ClaimRules {
                audiences: &[],
                leeway_seconds: 0,
            },
            now,
        )
        .map_err(|e| match e {
            jwt::JwtError::Expired => SessionRefusal::Expired,
            _ => SessionRefusal::Malformed,
        })?;
    // `check_claims` allows `now == exp`; a session ends at `exp`.
    if now >= parsed.exp {
        return Err(SessionRefusal::Expired);
    }
    let (Some(sub), Some(sid), Some(method)) = (
        text("sub"),
        text("sid"),
        text("amr").and_then(LoginMethod::parse),
    ) else {
        return Err(SessionRefusal::Malformed);
    };
    Ok(SessionClaims {
        user_id: sub.to_owned(),
        session_id: sid.to_owned(),
        method,
        issued_at: parsed.iat.unwrap_or(0),
        expires_at: parsed.exp,
    })
}

/// A session logged out before its expiry. Kept until then, so the edge's directory and the
/// admin API refuse it; swept after.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevokedSession {
    pub session_id: String,
    pub expires_at: i64,
}

impl Record for RevokedSession {
    const SPACE: Space = Space::RevokedSessions;
}

/// A tenant's session signing key as stored. The private key is only ever read to sign.
#[derive(Clone, Serialize, Deserialize)]
pub struct SessionKeyRecord {
    pub kid: String,
    /// PKCS#8, base64url.
    private_pkcs8: String,
    /// The raw Ed25519 public key, base64url.
    pub public: String,
    pub created_at: i64,
    /// Signs new tokens until then.
    pub sign_until: i64,
    /// Verifies until then (the last token it signed expires by then); dropped after.
    pub keep_until: i64,
}

impl std::fmt::Debug for SessionKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKeyRecord")
            .field("kid", &self.kid)
            .field("private_pkcs8", &"<redacted>")
            .field("sign_until", &self.sign_until)
            .field("keep_until", &self.keep_until)
            .finish()
    }
}

impl Record for SessionKeyRecord {
    const SPACE: Space = Space::SessionKeys;
}

impl SessionKeyRecord {
    /// The key that verifies what this one signed.
    pub fn verification_key(&self) -> Option<Arc<Key>> {
        let public = URL_SAFE_NO_PAD.decode(&self.public).ok()?;
        Some(signing::verification_key(&self.kid, &public))
    }

    fn signing_key(&self) -> Result<SigningKey, AppError> {
        let pkcs8 = URL_SAFE_NO_PAD
            .decode(&self.private_pkcs8)
            .map_err(|_| AppError::Internal(format!("session key {} is corrupt", self.kid)))?;
        SigningKey::from_pkcs8(&self.kid, &pkcs8).map_err(|e| AppError::Internal(e.to_string()))
    }
}

/// The key a tenant signs with now.
struct Signer {
    key: SigningKey,
    sign_until: i64,
    keep_until: i64,
}

/// Session settings and each tenant's current signer.
pub struct Sessions {
    ttl: i64,
    rotate_after: i64,
    signers: Mutex<HashMap<String, Arc<Signer>>>,
}

impl Sessions {
    /// Drops the tenant's cached signer (another replica changed its keys).
    pub(super) fn forget_signer(&self, tenant: &str) {
        self.signers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(tenant);
    }

    pub fn new(config: &SessionConfig) -> Sessions {
        Sessions {
            ttl: config.ttl_secs.clamp(1, i64::MAX as u64 / 4) as i64,
            rotate_after: config.rotate_after_secs.clamp(1, i64::MAX as u64 / 4) as i64,
            signers: Mutex::default(),
        }
    }
}

impl super::App {
    /// Issues a session token for `user_id` of `tenant`, who just logged in by `method`.
    /// The user must be `active` (a login activates an invited user first).
    pub fn issue_session(
        &self,
        tenant: &str,
        user_id: &str,
        method: LoginMethod,
        now: OffsetDateTime,
    ) -> Result<IssuedSession, AppError> {
        let slug = self.tenant(tenant)?.slug;
        let user: User = self
            .store
            .get(&slug, &[user_id])?
            .ok_or_else(|| AppError::NotFound(format!("user {user_id}")))?;
        match user.status {
            UserStatus::Active => {}
            UserStatus::Deactivated => {
                return Err(AppError::Forbidden(
                    "this user is deactivated; ask a tenant admin".into(),
                ))
            }
            UserStatus::Invited => {
                return Err(AppError::Forbidden(
                    "this user has not completed a first login yet".into(),
                ))
            }
        }
        let now = now.unix_timestamp();
        let signer = self.session_signer(&slug, now)?;
        let expires_at = now.saturating_add(self.sessions.ttl).min(signer.keep_until);
        let session_id = new_id("ses_");
        let claims = serde_json::json!({
            "iss": ISSUER,
            "tid": slug,
            "sub": user.id,
            "sid": session_id,
            "amr": method.claim(),
            "iat": now,
            "exp": expires_at,
        });
        let jws = signer
            .key
            .sign(&claims)
            .map_err(|e| AppError::Internal(e.to_string()))?;
        Ok(IssuedSession {
            token: format!("{SESSION_PREFIX}{jws}"),
            session_id,
            expires_at: OffsetDateTime::from_unix_timestamp(expires_at)
                .map_err(|e| AppError::Internal(e.to_string()))?,
        })
    }

    /// The tenant's current signing key: cached, else the newest stored one still signing,
    /// else a new one (stored durably first; keys past their `keep_until` are dropped).
    fn session_signer(&self, tenant: &str, now: i64) -> Result<Arc<Signer>, AppError> {
        let cached = |signers: &HashMap<String, Arc<Signer>>| {
            signers.get(tenant).filter(|s| s.sign_until > now).cloned()
        };
        if let Some(signer) = cached(
            &self
                .sessions
                .signers
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        ) {
            return Ok(signer);
        }
        let (slug, signer) = self.with_tenant(tenant, |slug| {
            if let Some(signer) = cached(
                &self
                    .sessions
                    .signers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()),
            ) {
                return Ok((slug.to_owned(), signer));
            }
            let stored: Vec<SessionKeyRecord> = self.store.list(slug, &[])?;
            let current = stored
                .iter()
                .filter(|r| r.sign_until > now)
                .max_by_key(|r| r.sign_until);
            let signer = match current {
                Some(record) => Signer {
                    key: record.signing_key()?,
                    sign_until: record.sign_until,
                    keep_until: record.keep_until,
                },
                None => {
                    let kid = new_id("sk_");
                    let key = SigningKey::generate(&kid)
                        .map_err(|e| AppError::Internal(e.to_string()))?;
                    let sign_until = now.saturating_add(self.sessions.rotate_after);
                    let record = SessionKeyRecord {
                        kid: kid.clone(),
                        private_pkcs8: URL_SAFE_NO_PAD.encode(key.pkcs8()),
                        public: URL_SAFE_NO_PAD.encode(key.public()),
                        created_at: now,
                        sign_until,
                        keep_until: sign_until.saturating_add(self.sessions.ttl),
                    };
                    let mut batch = Batch::new(slug);
                    batch.put(&[&kid], &record);
                    for old in stored.iter().filter(|r| r.keep_until <= now) {
                        batch.remove(Space::SessionKeys, &[&old.kid]);
                    }
                    self.store.apply(&batch)?;
                    tracing::info!(tenant = slug, kid = %kid, "new session signing key");
                    Signer {
                        key,
                        sign_until,
                        keep_until: record.keep_until,
                    }
                }
            };
            Ok((slug.to_owned(), Arc::new(signer)))
        })?;
        // Other threads sign with a cached key without the lock: only once it is durable.
        self.sessions
            .signers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(slug, signer.clone());
        Ok(signer)
    }

    /// The caller a session token (without its prefix) names on `tenant`'s admin API: the
    /// user, as admin or member by its current role. Another tenant's token reads as "no
    /// such tenant", like a PAT.
    pub(super) fn authenticate_session(&self, tenant: &str, jws: &str) -> Result<Caller, AppError> {
        let now = super::now().unix_timestamp();
        let claims = verify(tenant, jws, now, |kid| self.session_key(tenant, kid, now)).map_err(
            |refusal| match refusal {
                SessionRefusal::OtherTenant => AppError::NotFound(format!("tenant {tenant}")),
                _ => AppError::Unauthorized,
            },
        )?;
        if self
            .store
            .get::<RevokedSession>(tenant, &[&claims.session_id])?
            .is_some()
        {
            return Err(AppError::Unauthorized);
        }
        let user: User = self
            .store
            .get(tenant, &[&claims.user_id])?
            .ok_or(AppError::Unauthorized)?;
        let deactivated_at = user.deactivated_at.map(OffsetDateTime::unix_timestamp);
        if user.status != UserStatus::Active
            || crate::edge::session_revoked_by_deactivation(deactivated_at, claims.issued_at)
        {
            return Err(AppError::Unauthorized);
        }
        Ok(match user.role {
            Role::Admin => Caller::Admin { user: user.id },
            Role::Member => Caller::Member { user: user.id },
        })
    }
}

impl App {
    /// `slug`'s verification key `kid`, while it is kept.
    fn session_key(&self, slug: &str, kid: &str, now: i64) -> Option<Arc<Key>> {
        self.store
            .get::<SessionKeyRecord>(slug, &[kid])
            .ok()
            .flatten()
            .filter(|r| r.keep_until > now)
            .and_then(|r| r.verification_key())
    }

    /// Logs a session out (`token` with its `ghs_` prefix): from now on neither the edge nor
    /// the admin API accepts it. Audited as `session.logout` by the session's user. A token
    /// that is not a live session of `tenant` (expired, malformed, another tenant's, already
    /// logged out) changes nothing, since it does not work anyway: answers whether one was
    /// logged out.
    pub fn logout_session(&self, tenant: &str, token: &str) -> Result<bool, AppError> {
        let Some(jws) = token.strip_prefix(SESSION_PREFIX) else {
            return Ok(false);
        };
        let slug = self.tenant(tenant)?.slug;
        let now = super::now().unix_timestamp();
        let Ok(claims) = verify(&slug, jws, now, |kid| self.session_key(&slug, kid, now)) else {
            return Ok(false);
        };
        self.with_tenant(&slug, |slug| {
            let revoked = self.store.list::<RevokedSession>(slug, &[])?;
            if revoked.iter().any(|r| r.session_id == claims.session_id) {
                return Ok(false);
            }
            let mut batch = Batch::new(slug);
            // Sweep the ones that expired meanwhile: the list holds only live sessions.
            for old in revoked.iter().filter(|r| r.expires_at <= now) {
                batch.remove(Space::RevokedSessions, &[&old.session_id]);
            }
            batch.put(
                &[&claims.session_id],
                &RevokedSession {
                    session_id: claims.session_id.clone(),
                    expires_at: claims.expires_at,
                },
            );
            self.audit_log(slug)?.record(
                &mut batch,
                &format!("user:{}", claims.user_id),
                "session.logout",
                &claims.session_id,
                None,
                Some(&serde_json::json!({ "method": claims.method.claim() })),
            );
            self.store.apply(&batch)?;
            Ok(true)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{App, Invite, OPERATOR};
    use super::*;
    use crate::config::Config;

    fn open(dir: &std::path::Path, ttl: u64, rotate: u64) -> App {
        let config = Config {
            data: dir.to_owned(),
            operator_token: Some("op-token-for-session-tests".into()),
            session: SessionConfig {
                ttl_secs: ttl,
                rotate_after_secs: rotate,
            },
            ..Default::default()
        };
        App::open(&config).unwrap().0
    }

    /// Tenants `acme` (admin root@acme.io, active member mia@acme.io) and `beta`.
    fn world(app: &App) -> (String, String) {
        let created = app
            .create_tenant_with_admin("acme", Some("root@acme.io"), OPERATOR)
            .unwrap();
        app.create_tenant_with_admin("beta", None, OPERATOR)
            .unwrap();
        let admin = created.admin.unwrap().id;
        let mia = app
            .invite_user(
                "acme",
                Invite {
                    email: "mia@acme.io".into(),
                    ..Default::default()
                },
                &Caller::Operator,
            )
            .unwrap()
            .id;
        app.set_user_active("acme", &mia, true, &Caller::Operator)
            .unwrap();
        (admin, mia)
    }

    async fn resolve(app: &App, tenant: &str, token: &str) -> Result<String, String> {
        let header = format!("Bearer {token}");
        let evaluation = app.resolve_token(tenant, &[header.as_bytes()]).await;
        match evaluation.result {
            Ok(identity) => {
                assert_eq!(identity.kind, "user");
                assert_eq!(identity.token, "session");
                Ok(identity.id.clone())
            }
            Err(deny) => {
                assert!(!deny.message.contains("beta") && !deny.message.contains("acme"));
                Err(deny.reason.to_string())
            }
        }
    }

    #[tokio::test]
    async fn a_session_resolves_authenticates_and_is_revoked_by_deactivation() {
        let dir = tempfile::tempdir().unwrap();
        let app = open(dir.path(), 3600, 86_400);
        let (admin, mia) = world(&app);
        let now = OffsetDateTime::now_utc();
        let issued = app
            .issue_session("acme", &mia, LoginMethod::Sso("okta".into()), now)
            .unwrap();
        assert!(issued.token.starts_with(SESSION_PREFIX));
        assert_eq!(
            issued.expires_at.unix_timestamp(),
            now.unix_timestamp() + 3600
        );
        assert!(!format!("{issued:?}").contains(&issued.token));
        assert_eq!(resolve(&app, "acme", &issued.token).await, Ok(mia.clone()));
        // Never on another tenant's route, and it does not say which tenant it is for.
        assert_eq!(
            resolve(&app, "beta", &issued.token).await,
            Err("unknown_token".into())
        );
        // A tampered token fails its signature.
        let mut forged = issued.token.clone();
        forged.pop();
        forged.push(if issued.token.ends_with('A') {
            'B'
        } else {
            'A'
        });
        assert!(resolve(&app, "acme", &forged).await.is_err());

        // The admin API: a member reads itself only, an admin administers.
        let member = app.authenticate(Some("acme"), Some(&issued.token)).unwrap();
        assert_eq!(member, Caller::Member { user: mia.clone() });
        assert!(app.user("acme", &mia, &member).is_ok());
        assert!(app.user("acme", &admin, &member).is_err());
        let admin_session = app
            .issue_session("acme", &admin, LoginMethod::Password, now)
            .unwrap();
        let caller = app
            .authenticate(Some("acme"), Some(&admin_session.token))
            .unwrap();
        assert_eq!(
            caller,
            Caller::Admin {
                user: admin.clone()
            }
        );
        assert!(matches!(
            app.authenticate(Some("beta"), Some(&admin_session.token)),
            Err(AppError::NotFound(_))
        ));

        // Deactivation revokes at once, even after the result was seen.
        app.set_user_active("acme", &mia, false, &caller).unwrap();
        assert_eq!(
            resolve(&app, "acme", &issued.token).await,
            Err("deactivated".into())
        );
        assert!(matches!(
            app.authenticate(Some("acme"), Some(&issued.token)),
            Err(AppError::Unauthorized)
        ));
        // And a deactivated user gets no new session.
        assert!(app
            .issue_session("acme", &mia, LoginMethod::Password, now)
            .is_err());
    }

    #[tokio::test]
    async fn keys_rotate_survive_a_restart_and_expire_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::now_utc();
        let (ancient, expired, old, new, mia) = {
            let app = open(dir.path(), 3600, 100);
            let (_, mia) = world(&app);
            let at = |secs: i64| now - time::Duration::seconds(secs);
            // Its key stops verifying 3,500 s ago: dropped when the next key is made.
            let ancient = app
                .issue_session("acme", &mia, LoginMethod::Password, at(7200))
                .unwrap();
            // Expired 50 s ago; its key verifies for 50 s more.
            let expired = app
                .issue_session("acme", &mia, LoginMethod::Password, at(3650))
                .unwrap();
            let old = app
                .issue_session("acme", &mia, LoginMethod::Password, at(150))
                .unwrap();
            let new = app
                .issue_session("acme", &mia, LoginMethod::Password, now)
                .unwrap();
            let kid = |t: &str| {
                jwt::parse(t.strip_prefix(SESSION_PREFIX).unwrap())
                    .unwrap()
                    .kid
                    .unwrap()
            };
            assert_ne!(kid(&old.token), kid(&new.token), "a new key after 100 s");
            assert_ne!(kid(&expired.token), kid(&old.token));
            (ancient, expired, old, new, mia)
        };
        // A restart reads the keys back: both sessions still resolve.
        let app = open(dir.path(), 3600, 100);
        assert_eq!(resolve(&app, "acme", &old.token).await, Ok(mia.clone()));
        assert_eq!(resolve(&app, "acme", &new.token).await, Ok(mia.clone()));
        assert_eq!(
            resolve(&app, "acme", &expired.token).await,
            Err("expired".into())
        );
        assert_eq!(
            resolve(&app, "acme", &ancient.token).await,
            Err("unknown_token".into())
        );
        // The ancient token's key was dropped when the next one was made.
        let stored: Vec<SessionKeyRecord> = app.store.list("acme", &[]).unwrap();
        assert_eq!(stored.len(), 3);
        assert!(!format!("{stored:?}").contains(&stored[0].private_pkcs8));
        // The signer in use after the restart is the stored one, not a new key.
        let again = app
            .issue_session(
                "acme",
                &mia,
                LoginMethod::Password,
                OffsetDateTime::now_utc(),
            )
            .unwrap();
        let kid = |t: &str| {
            jwt::parse(t.strip_prefix(SESSION_PREFIX).unwrap())
                .unwrap()
                .kid
        };
        assert_eq!(kid(&again.token), kid(&new.token));
    }
}
