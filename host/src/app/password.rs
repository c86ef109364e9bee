//! Passwords (SPEC §3, §6): the one-time set-password and reset links an invite or a reset
//! queues (`identity::queue_link`), setting a password from one (argon2id, PHC string),
//! password login carried out by the tenant policy's `login` decision, per-user and
//! per-address attempt limits, and what the per-tenant login page shows.
//!
//! A link's secret is never stored, only its SHA-256 (the record's key); taking a link and
//! writing the password happen in one batch that requires the link to be present, so a link
//! works once. Every way a link can be unusable (unknown, used, expired, replaced, its user
//! gone or deactivated) answers the same, so links cannot be probed.

use super::session::LoginMethod;
use super::{identity, now, App, AppError, SsoLogin};
use crate::config::PasswordConfig;
use crate::identity::{Email, Link, LinkPurpose, SsoConfig, User};
use crate::store::{Batch, Record, Space, Store};
use argon2::password_hash::{rand_core::OsRng, PasswordHash, SaltString};
use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use gatehouse_rules::{self as rules, ProvisioningMode, UserStatus};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;
use time::OffsetDateTime;

/// A user's password hash, apart from the user record (never answered, never audited).
#[derive(Serialize, Deserialize)]
struct PasswordRecord {
    user: String,
    /// argon2id, as a PHC string.
    hash: String,
    #[serde(with = "time::serde::rfc3339")]
    set_at: OffsetDateTime,
}

impl Record for PasswordRecord {
    const SPACE: Space = Space::Passwords;
}

/// How long a set-password or reset link works, in hours (the mail says so).
pub(super) const LINK_TTL_HOURS: i64 = 24;
/// Longest accepted password, in bytes (hashing cost must not be the caller's choice).
const MAX_PASSWORD_BYTES: usize = 1024;
/// More buckets than this and full ones are dropped.
const MAX_BUCKETS: usize = 100_000;

/// Counts a password login attempt by result and reason (never who).
fn count(result: &'static str, reason: String) {
    metrics::counter!("gatehouse_password_logins_total", "result" => result, "reason" => reason)
        .increment(1);
}

/// The answer for every unusable link.
fn invalid_link() -> AppError {
    AppError::LinkInvalid(
        "this link is unknown, expired or already used; ask a tenant admin to send a new one"
            .into(),
    )
}

/// The answer for an unknown email, a wrong password and a user without a password alike.
fn invalid_credentials() -> AppError {
    AppError::LoginInvalid {
        reason: "invalid_credentials",
        message: "the email or the password is not right".into(),
    }
}

/// Removes the links of `user` (every one) and every expired link of the tenant.
pub(super) fn drop_links(
    store: &Store,
    batch: &mut Batch,
    tenant: &str,
    user: Option<&str>,
    now: OffsetDateTime,
) -> Result<(), AppError> {
    for link in store.list::<Link>(tenant, &[])? {
        if !link.sha256.is_empty() && (Some(link.user.as_str()) == user || link.expires_at <= now) {
            batch.remove(Space::Links, &[&link.sha256]);
        }
    }
    Ok(())
}

/// Hashes a password with argon2id (default parameters: 19 MiB, 2 passes), as a PHC string.
fn hash_password(password: &str) -> Result<String, AppError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| AppError::Internal(format!("hashing a password failed: {e}")))
}

/// Whether `password` matches the PHC string `hash` (any argon2 variant it names).
fn verify_password(password: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// Password settings, a hash to verify against when there is no user, and the attempt
/// buckets.
pub struct Passwords {
    config: PasswordConfig,
    /// Made on the first login that needs it (hashing costs time at every start otherwise).
    dummy_hash: OnceLock<String>,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl Passwords {
    pub fn new(config: &PasswordConfig) -> Result<Passwords, AppError> {
        Ok(Passwords {
            config: config.clone(),
            dummy_hash: OnceLock::new(),
            buckets: Mutex::default(),
        })
    }

    /// A hash of a random secret, to verify against when there is no hash to check.
    fn dummy_hash(&self) -> Result<&str, AppError> {
        if let Some(hash) = self.dummy_hash.get() {
            return Ok(hash);
        }
        let hash = hash_password(&super::new_secret(""))?;
        Ok(self.dummy_hash.get_or_init(|| hash))
    }

    /// Takes one attempt from each bucket (`(key, capacity)`), or none and `Err(seconds)`
    /// until every one has an attempt again. A bucket refills completely over the window.
    fn take(&self, keys: &[(&str, u32)]) -> Result<(), u64> {
        let window = self.config.window_secs.max(1) as f64;
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > MAX_BUCKETS {
            // Untouched for a whole window means full again: nothing is lost.
            buckets.retain(|_, (_, at)| now.duration_since(*at).as_secs_f64() < window);
        }
        let mut wait = 0.0f64;
        for (key, capacity) in keys {
            let capacity = f64::from((*capacity).max(1));
            let (tokens, at) = buckets.entry((*key).to_owned()).or_insert((capacity, now));
            *tokens =
                (*tokens + now.duration_since(*at).as_secs_f64() * capacity / window).min(capacity);
            *at = now;
            if *tokens < 1.0 {
                wait = wait.max((1.0 - *tokens) * window / capacity);
            }
        }
        if wait > 0.0 {
            return Err(wait.ceil().max(1.0) as u64);
        }
        for (key, _) in keys {
            if let Some((tokens, _)) = buckets.get_mut(*key) {
                *tokens -= 1.0;
            }
        }
        Ok(())
    }

    /// Gives the attempts back (a successful login does not count against anyone).
    fn refund(&self, keys: &[(&str, u32)]) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        for (key, capacity) in keys {
            if let Some((tokens, _)) = buckets.get_mut(*key) {
                *tokens = (*tokens + 1.0).min(f64::from((*capacity).max(1)));
            }
        }
    }
}

/// What a link page shows.
#[derive(Debug, Clone)]
pub struct LinkView {
    pub purpose: LinkPurpose,
    pub email: String,
    pub tenant: String,
}

/// What the login page of a tenant shows.
#[derive(Debug, Clone)]
pub struct LoginPage {
    pub tenant: String,
    /// `(ssoId, issuer)` of each SSO configuration, in id order.
    pub sso: Vec<(String, String)>,
}

/// A password login's audit entry: never a password or a hash.
#[derive(Serialize)]
struct LoginAudit<'a> {
    method: &'static str,
    email: &'a str,
    outcome: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

impl App {
    /// The reverse proxies whose `X-Forwarded-For` is believed (`password.trusted_proxies`).
    pub fn trusted_proxies(&self) -> &[ipnet::IpNet] {
        &self.passwords.config.trusted_proxies
    }

    /// The shortest accepted password.
    pub fn password_min_length(&self) -> usize {
        self.passwords.config.min_length
    }

    /// The link `token` of `tenant`, if it is usable now; the same error for every kind of
    /// unusable link, unknown tenants included.
    pub fn password_link(&self, tenant: &str, token: &str) -> Result<LinkView, AppError> {
        let slug = self.tenant(tenant).map_err(|_| invalid_link())?.slug;
        let (link, user) = self.usable_link(&slug, token)?;
        Ok(LinkView {
            purpose: link.purpose,
            email: user.email,
            tenant: slug,
        })
    }

    fn usable_link(&self, slug: &str, token: &str) -> Result<(Link, User), AppError> {
        if token.is_empty() || token.len() > 256 {
            return Err(invalid_link());
        }
        let key = hex::encode(crate::policy::sha256(token.as_bytes()));
        let link: Link = self.store.get(slug, &[&key])?.ok_or_else(invalid_link)?;
        if link.expires_at <= now() {
            return Err(invalid_link());
        }
        let user: User = self
            .store
            .get(slug, &[&link.user])?
            .ok_or_else(invalid_link)?;
        if user.status == UserStatus::Deactivated {
            return Err(invalid_link());
        }
        Ok((link, user))
    }

    /// Checks a new password: length (in characters) and that both entries match.
    pub fn check_new_password(&self, password: &str, confirm: &str) -> Result<(), AppError> {
        let min = self.passwords.config.min_length;
        if password != confirm {
            return Err(AppError::BadRequest(
                "the two passwords are not the same; type the same password twice".into(),
            ));
        }
        if password.chars().count() < min {
            return Err(AppError::BadRequest(format!(
                "the password is too short: use at least {min} characters"
            )));
        }
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(AppError::BadRequest(format!(
                "the password is too long: use at most {MAX_PASSWORD_BYTES} bytes"
            )));
        }
        Ok(())
    }

    /// Sets the password of the link's user and uses the link up, in one batch (the link
    /// must still be there, so two submissions set one password). Every other link of the
    /// user goes too. The user's status does not change: an invited user becomes active
    /// on the first login (the policy's `login` decision), like after an SSO login.
    /// Hashes on the calling thread: call it from a blocking one.
    pub fn set_password(
        &self,
        tenant: &str,
        token: &str,
        password: &str,
        confirm: &str,
    ) -> Result<User, AppError> {
        let slug = self.tenant(tenant).map_err(|_| invalid_link())?.slug;
        // Refuse unusable links before spending a hash on them.
        self.usable_link(&slug, token)?;
        self.check_new_password(password, confirm)?;
        let hash = hash_password(password)?;
        self.with_tenant(&slug, |slug| {
            let (link, before) = self.usable_link(slug, token)?;
            let key = hex::encode(crate::policy::sha256(token.as_bytes()));
            let now = now();
            let after = User {
                updated_at: now,
                ..before.clone()
            };
            let mut batch = Batch::new(slug);
            batch.put(
                &[&after.id],
                &PasswordRecord {
                    user: after.id.clone(),
                    hash,
                    set_at: now,
                },
            );
            batch
                .require_present(Space::Links, &[&key], "link".into())
                .remove(Space::Links, &[&key]);
            drop_links(&self.store, &mut batch, slug, Some(&after.id), now)?;
            batch.put(&[&after.id], &after);
            let action = match link.purpose {
                LinkPurpose::SetPassword => "user.password_set",
                LinkPurpose::ResetPassword => "user.password_reset",
            };
            // The hash never reaches the log (scrubbed), only that it changed.
            self.audit_log(slug)?.record::<()>(
                &mut batch,
                &format!("user:{}", after.id),
                action,
                &after.id,
                None,
                None,
            );
            match self.store.apply(&batch) {
                Ok(()) => Ok(after),
                Err(crate::store::StoreError::NotFound(_)) => Err(invalid_link()),
                Err(e) => Err(e.into()),
            }
        })
    }

    /// Logs in with email and password. Attempts are limited per email of the tenant and
    /// per client address (failures count; a success gives its attempt back). An unknown
    /// email, a user without a password and a wrong password answer the same, after the
    /// same work (a hash is verified in every case). A right password is then the tenant
    /// policy's `login` decision, carried out like an SSO login's: it may refuse
    /// (`deactivated`), let an active user in, or activate an invited one.
    /// Hashes on the calling thread: call it from a blocking one.
    pub fn password_login(
        &self,
        tenant: &str,
        email: &str,
        password: &str,
        address: Option<IpAddr>,
        return_to: &str,
    ) -> Result<SsoLogin, AppError> {
        let slug = self.tenant(tenant)?.slug;
        let email_key = Email::parse(email.trim())
            .map(|e| e.key())
            .unwrap_or_else(|_| email.trim().to_ascii_lowercase());
        let user_key = format!("user\0{slug}\0{email_key}");
        let address_key = format!(
            "addr\0{}",
            address.map(|a| a.to_string()).unwrap_or_default()
        );
        let config = &self.passwords.config;
        let mut keys = vec![(user_key.as_str(), config.attempts_per_user)];
        if address.is_some() {
            keys.push((address_key.as_str(), config.attempts_per_address));
        }
        if let Err(retry_after) = self.passwords.take(&keys) {
            count("limited", "rate_limited".into());
            return Err(AppError::TooManyRequests {
                reason: "rate_limited",
                message: format!("too many failed logins; try again in {retry_after} seconds"),
                retry_after_secs: retry_after,
            });
        }
        let found: Option<User> =
            match self
                .store
                .get_raw(Space::UserEmails, &slug, &[&email_key])?
            {
                Some(id) => self.store.get(&slug, &[&String::from_utf8_lossy(&id)])?,
                None => None,
            };
        let too_long = password.len() > MAX_PASSWORD_BYTES;
        let record: Option<PasswordRecord> = match &found {
            Some(user) => self.store.get(&slug, &[&user.id])?,
            None => None,
        };
        let hash = record
            .as_ref()
            .map(|r| r.hash.as_str())
            .filter(|_| !too_long);
        let matches = match hash {
            Some(hash) => verify_password(password, hash),
            None => {
                // Same work for an unknown email or a user without a password.
                let _ = verify_password(
                    if too_long { "" } else { password },
                    self.passwords.dummy_hash()?,
                );
                false
            }
        };
        let user = match (found, matches) {
            (Some(user), true) => user,
            (found, _) => {
                count("invalid", "invalid_credentials".into());
                if let Some(user) = found {
                    // A wrong password for a known user is audited (attempts are limited,
                    // so this cannot flood the log); unknown emails are only counted.
                    self.with_tenant(&slug, |slug| {
                        let mut batch = Batch::new(slug);
                        let entry = LoginAudit {
                            method: "password",
                            email: &user.email,
                            outcome: "refused",
                            reason: Some("invalid_credentials"),
                        };
                        self.audit_log(slug)?.record(
                            &mut batch,
                            "password",
                            "login.password",
                            &user.id,
                            None,
                            Some(&entry),
                        );
                        self.store.apply(&batch)?;
                        Ok(())
                    })?;
                }
                return Err(invalid_credentials());
            }
        };
        self.passwords.refund(&keys);
        let (user, outcome) = self.password_decision(&slug, &user.id)?;
        let session = self.issue_session(
            &slug,
            &user.id,
            LoginMethod::Password,
            OffsetDateTime::now_utc(),
        )?;
        count("allow", outcome.into());
        tracing::info!(tenant = %slug, user = %user.id, outcome, "password login");
        Ok(SsoLogin {
            user,
            session,
            return_to: return_to.to_owned(),
            outcome,
        })
    }

    /// The policy's `login` decision for a user whose password was right, carried out
    /// under the tenant's lock with its audit entries.
    fn password_decision(&self, slug: &str, id: &str) -> Result<(User, &'static str), AppError> {
        self.with_tenant(slug, |slug| {
            let tenant = self.tenant(slug)?;
            let mode = match tenant.mode.as_str() {
                "scim" => ProvisioningMode::Scim,
                "jit" => ProvisioningMode::Jit,
                _ => ProvisioningMode::InviteOnly,
            };
            // Read again under the lock: it may have changed since the password check.
            let existing: User = self
                .store
                .get(slug, &[id])?
                .ok_or_else(invalid_credentials)?;
            let sso_configured = !self.store.list::<SsoConfig>(slug, &[])?.is_empty();
            let input = rules::LoginInput {
                mode,
                sso_configured,
                claims: rules::LoginClaims {
                    email: existing.email.clone(),
                    subject: existing.id.clone(),
                    name: existing.display_name.clone(),
                    given_name: existing.given_name.clone(),
                    family_name: existing.family_name.clone(),
                },
                user: Some(rules::ExistingUser {
                    id: existing.id.clone(),
                    status: existing.status,
                    source: existing.source,
                }),
                settings: String::new(),
            };
            let policy = self
                .policies
                .get(slug)
                .ok_or_else(|| AppError::NotFound(format!("tenant {slug}")))?;
            let decision = policy
                .login(&self.engine, &input)
                .map_err(AppError::PolicyFailed)?;
            let now = now();
            let mut batch = Batch::new(slug);
            let mut audit = self.audit_log(slug)?;
            let record = |batch: &mut Batch,
                          audit: &mut identity::AuditLog,
                          outcome: &str,
                          reason: Option<&str>| {
                let entry = LoginAudit {
                    method: "password",
                    email: &existing.email,
                    outcome,
                    reason,
                };
                audit.record(
                    batch,
                    "password",
                    "login.password",
                    &existing.id,
                    None,
                    Some(&entry),
                );
            };
            let malformed = |why: &str| {
                AppError::PolicyFailed(crate::policy::PolicyError::Malformed(why.into()))
            };
            let result = match decision.outcome {
                rules::LoginOutcome::Refuse(refusal) => {
                    record(&mut batch, &mut audit, "refused", Some(&refusal.code));
                    self.store.apply(&batch)?;
                    count("refuse", refusal.code.clone());
                    return Err(AppError::LoginRefused {
                        reason: refusal.code,
                        message: refusal.message,
                    });
                }
                rules::LoginOutcome::Allow(id) => {
                    if id != existing.id || existing.status != UserStatus::Active {
                        return Err(malformed(
                            "the login decision let in a user the host did not offer \
                             or who is not active",
                        ));
                    }
                    record(&mut batch, &mut audit, "allowed", None);
                    (existing.clone(), "allowed")
                }
                rules::LoginOutcome::Activate(id) => {
                    if id != existing.id || existing.status != UserStatus::Invited {
                        // Never reactivates a deactivated user, whatever a policy says.
                        return Err(malformed(
                            "the login decision activated a user the host did not offer \
                             or who is not invited",
                        ));
                    }
                    let after = User {
                        status: UserStatus::Active,
                        updated_at: now,
                        ..existing.clone()
                    };
                    batch.put(&[&after.id], &after);
                    audit.record(
                        &mut batch,
                        "password",
                        "user.activate",
                        &after.id,
                        Some(&existing),
                        Some(&after),
                    );
                    record(&mut batch, &mut audit, "activated", None);
                    (after, "activated")
                }
                rules::LoginOutcome::Create(_) => {
                    return Err(malformed(
                        "the login decision created a user for a known email",
                    ));
                }
            };
            self.store.apply(&batch)?;
            Ok(result)
        })
    }

    /// What the tenant's login page shows; an unknown tenant is the usual 404.
    pub fn login_page(&self, tenant: &str) -> Result<LoginPage, AppError> {
        let slug = self.tenant(tenant)?.slug;
        let sso = self
            .store
            .list::<SsoConfig>(&slug, &[])?
            .into_iter()
            .map(|s| (s.id, s.issuer))
            .collect();
        Ok(LoginPage { tenant: slug, sso })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passwords(per_user: u32, per_address: u32) -> Passwords {
        Passwords::new(&PasswordConfig {
            min_length: 12,
            attempts_per_user: per_user,
            attempts_per_address: per_address,
            window_secs: 900,
            trusted_proxies: Vec::new(),
        })
        .unwrap()
    }

    #[test]
    fn hashes_are_argon2id_phc_strings_that_verify() {
        let hash = hash_password("correct horse battery").unwrap();
        assert!(hash.starts_with("$argon2id$v=19$"), "{hash}");
        assert!(verify_password("correct horse battery", &hash));
        assert!(!verify_password("correct horse batterY", &hash));
        assert!(!verify_password("anything", "not a phc string"));
    }

    #[test]
    fn buckets_refuse_after_capacity_and_tell_how_long() {
        let p = passwords(3, 100);
        let keys = [("u", 3), ("a", 100)];
        for _ in 0..3 {
            assert!(p.take(&keys).is_ok());
        }
        let wait = p.take(&keys).unwrap_err();
        assert!((1..=300).contains(&wait), "{wait}");
        // A refused attempt takes nothing from the other bucket.
        p.refund(&keys);
        assert!(p.take(&keys).is_ok());
        assert!(p.take(&[("other", 3), ("a", 100)]).is_ok());
    }
}
