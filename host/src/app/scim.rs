//! SCIM operations (SPEC §7): what a connection (an SSO configuration's SCIM endpoint)
//! may read and change, carried out like every other identity change — under the tenant's
//! write lock, as one durable batch with its audit entries, roles recomputed through the
//! tenant's policy.
//!
//! Scope: a connection sees only users it provisioned (a [`ScimUser`] under its id) and
//! teams it manages (`Team::scim`). It may adopt an invited or JIT user with the same
//! email; the adoption is audited.

use super::identity::{
    add_user_records, add_user_records_without_email, new_user_with, stage_new_team, status_change,
    RoleState, RoleView,
};
use super::{now, App, AppError};
use crate::config::ScimConfig;
use crate::identity::{
    check_display_name, new_id, Email, ScimLink, SsoConfig, Team, TeamName, User,
};
use crate::policy;
use crate::scim::filter::{self, AttrPath, Filter};
use crate::scim::patch::{self, GroupChange};
use crate::scim::resource::{
    group_json, user_json, version, GroupInput, MemberRef, PendingMember, ScimUser, UserInput,
};
use crate::scim::ScimError;
use crate::store::{Batch, Space, StoreError};
use gatehouse_rules::{UserSource, UserStatus};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use time::{Duration, OffsetDateTime};

/// An authenticated SCIM connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    pub tenant: String,
    pub sso: String,
    /// `/scim/v2/{tenant}/{sso}`: resource locations start with it.
    pub base: String,
}

impl Connection {
    fn actor(&self) -> String {
        format!("scim:{}", self.sso)
    }
}

/// SCIM limits and the per-connection rate buckets.
pub struct ScimRuntime {
    pub config: ScimConfig,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl ScimRuntime {
    /// Limits from the configuration, every bucket full.
    pub fn new(config: ScimConfig) -> ScimRuntime {
        ScimRuntime {
            config,
            buckets: Mutex::default(),
        }
    }

    /// Takes one request from the connection's token bucket; `Err(seconds)` to wait when
    /// it is empty.
    pub fn admit(&self, connection: &str) -> Result<(), u64> {
        let rate = f64::from(self.config.rate_per_second.max(1));
        let burst = f64::from(self.config.burst.max(1));
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, at) = buckets.entry(connection.to_owned()).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / rate).ceil().max(1.0) as u64)
        }
    }
}

/// A list request (`GET` with query parameters, or `POST .search`).
#[derive(Debug, Clone)]
pub struct ListQuery {
    pub filter: Option<Filter>,
    /// 1-based.
    pub start_index: usize,
    pub count: usize,
    pub sort_by: Option<AttrPath>,
    pub descending: bool,
    /// Whether group members are read at all (`excludedAttributes=members` skips them).
    pub with_members: bool,
}

/// One page of a list.
#[derive(Debug)]
pub struct ListPage {
    pub total: usize,
    pub start_index: usize,
    pub resources: Vec<Value>,
}

/// How a write changed a group's members beyond what was asked: values kept pending and
/// values refused (nested groups, users of another connection), each with its reason.
#[derive(Debug, Default)]
pub struct MemberReport {
    pub pending: Vec<String>,
    pub refused: Vec<(String, String)>,
}

/// Ids in paths are the ids Gatehouse made (`usr_…`, `team_…`); anything else is unknown.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Index values are keys: lowercased where SCIM compares case-insensitively, and never
/// holding the 0 byte that separates key parts.
fn key_value(value: &str) -> Option<&str> {
    (!value.contains('\0') && value.len() <= 512).then_some(value)
}

const NAME: &str = "u.name";
const EXT: &str = "u.ext";
const MAIL: &str = "u.mail";
const GROUP_EXT: &str = "g.ext";
/// A connection's groups by `displayName`, lowercased (SCIM compares it case-insensitively).
const GROUP_NAME: &str = "g.name";

/// The index key of a group display name (lowercased); `None` for what no stored display
/// name can be (a 0 byte, more than 256 characters of up to 4 bytes, lowercased).
fn display_index_key(display: &str) -> Option<String> {
    let key = display_key(display);
    (!key.contains('\0') && key.len() <= 2048).then_some(key)
}

/// A display name as SCIM compares it: case-insensitively.
fn display_key(display: &str) -> String {
    display.to_lowercase()
}

/// How many suffixed names are tried before a derived team name is given up as taken.
const SUFFIX_TRIES: u32 = 16;

/// The `n`th suffixed form of a team name: `base` cut to leave room, `-`, and six hex
/// digits of SHA-256 over the display name (and `n` after the first try), so the same
/// group gets the same name on every server.
fn suffixed_name(base: &str, display: &str, n: u32) -> String {
    let seed = if n == 0 {
        display.to_owned()
    } else {
        format!("{display}\0{n}")
    };
    let digest = hex::encode(&policy::sha256(seed.as_bytes())[..3]);
    let room = gatehouse_rules::TEAM_NAME_MAX - 1 - digest.len();
    let head: String = base.chars().take(room).collect();
    let head = head.trim_end_matches('-');
    if head.is_empty() {
        format!("team-{digest}")
    } else {
        format!("{head}-{digest}")
    }
}
const OWNER: &str = "@owner";

/// Compares a client's `If-Match` with the current version (weakly, `*` matches all).
fn check_if_match(if_match: Option<&str>, current: &str) -> Result<(), ScimError> {
    let Some(wanted) = if_match else {
        return Ok(());
    };
    let strip = |v: &str| {
        v.trim()
            .trim_start_matches("W/")
            .trim_matches('"')
            .to_owned()
    };
    let current_bare = strip(current);
    if wanted
        .split(',')
        .any(|v| v.trim() == "*" || strip(v) == current_bare)
    {
        Ok(())
    } else {
        Err(ScimError::PreconditionFailed(current.to_owned()))
    }
}

/// A SCIM user to create, as checked before the tenant's lock is taken.
struct NewUser {
    input: UserInput,
    email: Option<Email>,
    /// The lowercased `userName` and the `externalId`, as index keys.
    name_key: String,
    ext_key: Option<String>,
}

impl NewUser {
    fn parse(body: &Value) -> Result<NewUser, ScimError> {
        let input = UserInput::from_json(body)?;
        input.check_one_primary()?;
        let email = input.email()?;
        let name_key = input.user_name.to_lowercase();
        let (name_key, ext_key) = match (
            key_value(&name_key),
            input.external_id.as_deref().map(key_value),
        ) {
            (Some(n), None) => (n.to_owned(), None),
            (Some(n), Some(Some(e))) => (n.to_owned(), Some(e.to_owned())),
            _ => {
                return Err(ScimError::InvalidValue(
                    "userName and externalId must be at most 512 bytes and hold no 0 byte".into(),
                ))
            }
        };
        Ok(NewUser {
            input,
            email,
            name_key,
            ext_key,
        })
    }
}

impl App {
    /// The connection `tenant`/`sso` if `bearer` is its current SCIM token (compared in
    /// constant time with the stored SHA-256). Every failure — no token, a wrong, rotated
    /// or other tenant's token, an unknown tenant or connection — is the same 401.
    pub fn scim_connect(
        &self,
        tenant: &str,
        sso: &str,
        bearer: Option<&str>,
    ) -> Result<Connection, ScimError> {
        use subtle::ConstantTimeEq;
        let given = policy::sha256(bearer.unwrap_or_default().as_bytes());
        let valid = crate::model::TenantId::parse(tenant).is_ok()
            && crate::model::TenantId::parse(sso).is_ok();
        // A store that cannot answer is a 503, not a 401: the token may well be good.
        let config: Option<SsoConfig> = if valid {
            self.store
                .get(tenant, &[sso])
                .map_err(|e| ScimError::from(AppError::from(e)))?
        } else {
            None
        };
        let stored: Option<[u8; 32]> = config
            .and_then(|c| hex::decode(c.scim_token_sha256?).ok())
            .and_then(|b| b.try_into().ok());
        // Compare even when nothing is stored, so timing does not tell the cases apart.
        let expected = stored.unwrap_or([0u8; 32]);
        let equal: bool = given.ct_eq(&expected).into();
        if bearer.is_some() && stored.is_some() && equal {
            Ok(Connection {
                tenant: tenant.to_owned(),
                sso: sso.to_owned(),
                base: format!("/scim/v2/{tenant}/{sso}"),
            })
        } else {
            Err(ScimError::Unauthorized)
        }
    }

    fn scim_write<R: Send>(
        &self,
        conn: &Connection,
        change: impl FnOnce(&str) -> Result<R, ScimError> + Send,
    ) -> Result<R, ScimError> {
        self.with_tenant(&conn.tenant, |slug| {
            Ok(self.scim_may_change(slug).and_then(|()| change(slug)))
        })?
    }

    /// [`App::scim_write`] for a caller in a tokio task ([`App::with_tenant_queued`]).
    async fn scim_write_queued<R: Send + 'static>(
        self: &Arc<Self>,
        conn: &Connection,
        change: impl FnOnce(&App, &str) -> Result<R, ScimError> + Send + 'static,
    ) -> Result<R, ScimError> {
        self.with_tenant_queued(&conn.tenant, move |app, slug| {
            Ok(app.scim_may_change(slug).and_then(|()| change(app, slug)))
        })
        .await?
    }

    /// SPEC §2: only a tenant in `scim` mode has users and teams pushed by SCIM; in the
    /// other modes a connection can read (and be tested) but not change.
    fn scim_may_change(&self, slug: &str) -> Result<(), ScimError> {
        let mode = self.tenant(slug)?.mode;
        if mode != "scim" {
            return Err(ScimError::Forbidden(format!(
                "tenant {slug} is in provisioning mode {mode}: SCIM changes need mode scim (an admin sets it with PUT /api/v1/tenants/{slug}/provisioning)"
            )));
        }
        Ok(())
    }

    fn index_get(&self, slug: &str, parts: &[&str]) -> Result<Option<String>, AppError> {
        Ok(self
            .store
            .get_raw(Space::ScimIndex, slug, parts)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    // ------------------------------------------------------------------ users

    /// A user of the connection (not deleted).
    fn scim_user(
        &self,
        slug: &str,
        conn: &Connection,
        id: &str,
    ) -> Result<Option<(User, ScimUser)>, AppError> {
        if !valid_id(id) {
            return Ok(None);
        }
        let Some(scim) = self.store.get::<ScimUser>(slug, &[&conn.sso, id])? else {
            return Ok(None);
        };
        if scim.deleted_at.is_some() {
            return Ok(None);
        }
        Ok(self.store.get::<User>(slug, &[id])?.map(|u| (u, scim)))
    }

    fn existing_scim_user(
        &self,
        slug: &str,
        conn: &Connection,
        id: &str,
    ) -> Result<(User, ScimUser), ScimError> {
        self.scim_user(slug, conn, id)?
            .ok_or_else(|| ScimError::NotFound(format!("user {id}")))
    }

    /// Reads one user.
    pub fn scim_get_user(&self, conn: &Connection, id: &str) -> Result<Value, ScimError> {
        let (user, scim) = self.existing_scim_user(&conn.tenant, conn, id)?;
        Ok(user_json(&user, &scim, &conn.base))
    }

    /// Creates a user (or adopts an invited/JIT user with the same email). A retry with
    /// the `externalId` of a user the connection already made returns that user
    /// (`false`: nothing created); the same `userName` with another `externalId` is a
    /// uniqueness conflict.
    pub fn scim_create_user(
        &self,
        conn: &Connection,
        body: &Value,
    ) -> Result<(Value, bool), ScimError> {
        let new = NewUser::parse(body)?;
        self.scim_write(conn, |slug| self.create_scim_user(slug, conn, &new))
    }

    /// [`App::scim_create_user`] for a caller in a tokio task: while the create waits for
    /// its round and its flush, no thread waits with it (decision 85).
    pub async fn scim_create_user_queued(
        self: &Arc<Self>,
        conn: &Connection,
        body: &Value,
    ) -> Result<(Value, bool), ScimError> {
        let new = NewUser::parse(body)?;
        let at = conn.clone();
        self.scim_write_queued(conn, move |app, slug| app.create_scim_user(slug, &at, &new))
            .await
    }

    /// The create itself, under the tenant's lock.
    fn create_scim_user(
        &self,
        slug: &str,
        conn: &Connection,
        new: &NewUser,
    ) -> Result<(Value, bool), ScimError> {
        let NewUser {
            input,
            email,
            name_key,
            ext_key,
        } = new;
        if let Some(ext) = ext_key {
            if let Some(id) = self.index_get(slug, &[&conn.sso, EXT, ext])? {
                if let Some((user, scim)) = self.scim_user(slug, conn, &id)? {
                    if scim.user_name.to_lowercase() == *name_key {
                        return Ok((user_json(&user, &scim, &conn.base), false));
                    }
                    return Err(ScimError::Uniqueness(format!(
                        "externalId {ext:?} already belongs to user {:?}",
                        scim.user_name
                    )));
                }
            }
        }
        // An index entry whose user is gone (an admin deleted it through the admin
        // API) is stale: it is overwritten, not a conflict.
        let taken = match self.index_get(slug, &[&conn.sso, NAME, name_key])? {
            Some(id) if self.scim_user(slug, conn, &id)?.is_some() => Some(id),
            _ => None,
        };
        if let Some(id) = taken {
            return Err(ScimError::Uniqueness(format!(
                "userName {:?} is already taken by user {id}{}",
                input.user_name,
                if input.external_id.is_some() {
                    " with another externalId"
                } else {
                    ""
                }
            )));
        }
        let now = now();
        // A user without an email adopts no one: it is always a new user.
        let existing: Option<User> = match email
            .as_ref()
            .map(|email| self.store.get_raw(Space::UserEmails, slug, &[&email.key()]))
            .transpose()?
            .flatten()
        {
            Some(id) => self.store.get(slug, &[&String::from_utf8_lossy(&id)])?,
            None => None,
        };
        let mut batch = Batch::new(slug);
        let mut audit = self.audit_log(slug)?;
        let actor = conn.actor();
        let (user, action) = match existing {
            Some(before) => {
                let owner = self.index_get(slug, &[OWNER, &before.id])?;
                // Tenant admins set by hand stay under admins' control: a connection
                // that adopted one could deactivate the tenant's last way in.
                if owner.is_none() && before.manual_role == Some(gatehouse_rules::Role::Admin) {
                    return Err(ScimError::Uniqueness(format!(
                        "a user with email {} already exists and is a tenant admin; SCIM does not take over tenant admins",
                        before.email
                    )));
                }
                if owner.as_deref() == Some(conn.sso.as_str()) {
                    return Err(ScimError::Uniqueness(format!(
                        "email {} already belongs to user {} of this connection, under another userName; change that user's email first",
                        before.email, before.id
                    )));
                }
                let adoptable = owner.is_none()
                    && matches!(before.source, UserSource::Invite | UserSource::Jit);
                if !adoptable {
                    return Err(ScimError::Uniqueness(format!(
                        "a user with email {} already exists and is not this connection's to take over (created by {}{})",
                        before.email,
                        source_name(before.source),
                        owner.map(|o| format!(", managed by SCIM connection {o}")).unwrap_or_default()
                    )));
                }
                let mut after = apply_fields(&before, input, email.as_ref(), now);
                // An adopted user without `active` is active, as a created one is.
                if let Some((changed, _)) = status_change(&after, input.active.unwrap_or(true), now)
                {
                    after = changed;
                }
                batch.put(&[&after.id], &after);
                audit.record(
                    &mut batch,
                    &actor,
                    "scim.user.adopt",
                    &after.id,
                    Some(&before),
                    Some(&after),
                );
                (after, "adopted")
            }
            None => {
                let everyone = self.everyone(slug)?;
                let status = if input.active.unwrap_or(true) {
                    UserStatus::Active
                } else {
                    UserStatus::Deactivated
                };
                let mut user = User {
                    status,
                    ..new_user_with(
                        email.as_ref().map_or("", Email::as_str),
                        UserSource::Scim,
                        now,
                    )
                };
                user = apply_fields(&user, input, email.as_ref(), now);
                match &email {
                    Some(email) => add_user_records(&mut batch, &user, email, &everyone.id),
                    None => add_user_records_without_email(&mut batch, &user, &everyone.id),
                }
                let mut view = RoleView::empty();
                view.user_teams.insert(&user.id, vec![everyone.id.clone()]);
                audit.record(
                    &mut batch,
                    &actor,
                    "scim.user.create",
                    &user.id,
                    None,
                    Some(&user),
                );
                self.recompute(
                    slug,
                    &[RoleState::from(&user)],
                    &view,
                    &mut batch,
                    &mut audit,
                    &actor,
                )?;
                (user, "created")
            }
        };
        let scim = scim_record(&user.id, input);
        batch.put(&[&conn.sso, &user.id], &scim);
        put_user_indexes(
            &mut batch,
            conn,
            &user.id,
            &scim,
            input.external_id.as_deref(),
        );
        self.store.apply(&batch)?;
        self.apply_pending(slug, conn, &user, input)?;
        tracing::debug!(tenant = slug, sso = %conn.sso, user = %user.id, action, "scim user provisioned");
        Ok((user_json(&user, &scim, &conn.base), true))
    }

    /// Replaces a user (PUT): every attribute as sent, except that a missing `active`
    /// keeps the user's status; never creates.
    pub fn scim_replace_user(
        &self,
        conn: &Connection,
        id: &str,
        body: &Value,
        if_match: Option<&str>,
    ) -> Result<Value, ScimError> {
        let mut input = UserInput::from_json(body)?;
        input.check_one_primary()?;
        self.scim_write(conn, |slug| {
            let (user, scim) = self.existing_scim_user(slug, conn, id)?;
            check_if_match(if_match, &version(user.updated_at))?;
            // A PUT without `active` asserts nothing about it: the user keeps its status
            // (and an unassigned `active` stays unassigned), so a profile push never
            // reactivates anyone (SPEC §2, decision 88).
            if input.active.is_none() {
                input.active_unassigned = scim.active_unassigned;
            }
            self.write_user(slug, conn, user, scim, input, "scim.user.replace")
        })
    }

    /// Applies a PATCH to a user, atomically.
    pub fn scim_patch_user(
        &self,
        conn: &Connection,
        id: &str,
        body: &Value,
        if_match: Option<&str>,
    ) -> Result<Value, ScimError> {
        let ops = patch::parse(body)?;
        self.scim_write(conn, |slug| {
            let (user, scim) = self.existing_scim_user(slug, conn, id)?;
            check_if_match(if_match, &version(user.updated_at))?;
            let mut resource = user_json(&user, &scim, &conn.base);
            if ops.is_empty() {
                return Ok(resource);
            }
            patch::apply_user(&mut resource, &ops)?;
            let mut input = UserInput::from_json(&resource)?;
            // An `active` the PATCH left unassigned (removed, or already removed) stays
            // so: the user is deactivated and the resource omits `active` (decision 56).
            if crate::scim::filter::get_ci(&resource, "active").is_none() {
                input.active = Some(false);
                input.active_unassigned = true;
            }
            self.write_user(slug, conn, user, scim, input, "scim.user.patch")
        })
    }

    /// Writes a user's new state (PUT or PATCH result): indexes that changed, status,
    /// audit. Nothing is written when nothing changed.
    fn write_user(
        &self,
        slug: &str,
        conn: &Connection,
        before: User,
        before_scim: ScimUser,
        input: UserInput,
        action: &str,
    ) -> Result<Value, ScimError> {
        let email = input.email()?;
        let now = now();
        let mut after = apply_fields(&before, &input, email.as_ref(), now);
        let mut status_action = None;
        if let Some((changed, what)) = input
            .active
            .and_then(|active| status_change(&after, active, now))
        {
            after = changed;
            status_action = Some(what);
        }
        let scim = ScimUser {
            deleted_at: None,
            ..scim_record(&before.id, &input)
        };
        let unchanged = User {
            updated_at: before.updated_at,
            ..after.clone()
        } == before
            && scim == before_scim;
        if unchanged {
            return Ok(user_json(&before, &before_scim, &conn.base));
        }
        let mut batch = Batch::new(slug);
        let id = before.id.as_str();
        let (old_name, new_name) = (
            before_scim.user_name.to_lowercase(),
            input.user_name.to_lowercase(),
        );
        if old_name != new_name {
            let new_name = key_value(&new_name)
                .ok_or_else(|| ScimError::InvalidValue("userName is too long".into()))?;
            batch
                .require_absent(
                    Space::ScimIndex,
                    &[&conn.sso, NAME, new_name],
                    format!("userName {:?} is already taken", input.user_name),
                )
                .remove(Space::ScimIndex, &[&conn.sso, NAME, &old_name])
                .put_raw(
                    Space::ScimIndex,
                    &[&conn.sso, NAME, new_name],
                    id.as_bytes(),
                );
        }
        if before.external_id != after.external_id {
            if let Some(old) = &before.external_id {
                batch.remove(Space::ScimIndex, &[&conn.sso, EXT, old]);
            }
            if let Some(new) = &after.external_id {
                let new = key_value(new)
                    .ok_or_else(|| ScimError::InvalidValue("externalId is too long".into()))?;
                batch
                    .require_absent(
                        Space::ScimIndex,
                        &[&conn.sso, EXT, new],
                        format!("externalId {new:?} already belongs to another user"),
                    )
                    .put_raw(Space::ScimIndex, &[&conn.sso, EXT, new], id.as_bytes());
            }
        }
        let new_key = email.as_ref().map(Email::key).unwrap_or_default();
        if before.email.to_lowercase() != new_key {
            // No email is never indexed, so users without one never collide.
            if !before.email.is_empty() {
                batch.remove(Space::UserEmails, &[&before.email.to_lowercase()]);
            }
            if let Some(email) = &email {
                batch
                    .require_absent(
                        Space::UserEmails,
                        &[&email.key()],
                        format!("a user with email {} already exists", email.as_str()),
                    )
                    .put_raw(Space::UserEmails, &[&email.key()], id.as_bytes());
            }
        }
        for old in &before_scim.emails {
            if let Some(v) = key_value(&old.value.to_lowercase()) {
                batch.remove(Space::ScimIndex, &[&conn.sso, MAIL, v, id]);
            }
        }
        for new in &scim.emails {
            if let Some(v) = key_value(&new.value.to_lowercase()) {
                batch.put_raw(Space::ScimIndex, &[&conn.sso, MAIL, v, id], b"");
            }
        }
        batch.put(&[id], &after).put(&[&conn.sso, id], &scim);
        let mut audit = self.audit_log(slug)?;
        let actor = conn.actor();
        audit.record(&mut batch, &actor, action, id, Some(&before), Some(&after));
        if let Some(what) = status_action {
            audit.record::<()>(&mut batch, &actor, what, id, None, None);
        }
        self.store.apply(&batch)?;
        Ok(user_json(&after, &scim, &conn.base))
    }

    /// Deletes a user (Entra, after its soft-delete period): the user and its memberships
    /// go, and then reads as 404; the SCIM record stays as a tombstone and the audit log
    /// keeps the history. Refused while the user collaborates on a resource (SPEC §6).
    pub fn scim_delete_user(
        &self,
        conn: &Connection,
        id: &str,
        if_match: Option<&str>,
    ) -> Result<(), ScimError> {
        self.scim_write(conn, |slug| {
            let (user, _) = self.existing_scim_user(slug, conn, id)?;
            check_if_match(if_match, &version(user.updated_at))?;
            let subject = crate::identity::Subject::User(id.to_owned());
            let blocking: Vec<String> = self
                .store
                .list::<crate::identity::Resource>(slug, &[])?
                .into_iter()
                .filter(|r| r.collaborators.iter().any(|c| c.subject == subject))
                .map(|r| format!("{} {}", r.kind, r.name))
                .collect();
            if !blocking.is_empty() {
                return Err(ScimError::Conflict(format!(
                    "user {} collaborates on {}; an admin must remove it there first",
                    user.email,
                    blocking.join(", ")
                )));
            }
            let mut batch = Batch::new(slug);
            self.stage_user_removal(slug, &user, &mut batch)?;
            self.audit_log(slug)?.record(
                &mut batch,
                &conn.actor(),
                "scim.user.delete",
                id,
                Some(&user),
                None,
            );
            self.store.apply(&batch)?;
            Ok(())
        })
    }

    /// Lists the connection's users: an indexed lookup when the filter pins `id`,
    /// `userName`, `externalId` or `emails.value` with `eq`, else a scan of the
    /// connection's users; sorted (by id unless `sortBy`), then paged.
    pub fn scim_list_users(
        &self,
        conn: &Connection,
        query: &ListQuery,
    ) -> Result<ListPage, ScimError> {
        let slug = conn.tenant.as_str();
        let filter = query.filter.as_ref();
        let candidates: Option<Vec<String>> = match filter {
            Some(f) => {
                if let Some(id) = f.indexed_eq("id") {
                    Some(vec![id.to_owned()])
                } else if let Some(name) = f.indexed_eq("userName") {
                    Some(
                        key_value(&name.to_lowercase())
                            .map_or(Ok(None), |n| self.index_get(slug, &[&conn.sso, NAME, n]))?
                            .into_iter()
                            .collect(),
                    )
                } else if let Some(ext) = f.indexed_eq("externalId") {
                    Some(
                        key_value(ext)
                            .map_or(Ok(None), |e| self.index_get(slug, &[&conn.sso, EXT, e]))?
                            .into_iter()
                            .collect(),
                    )
                } else if let Some(mail) = f
                    .indexed_eq("emails.value")
                    .or_else(|| f.indexed_eq("emails"))
                {
                    Some(match key_value(&mail.to_lowercase()) {
                        Some(m) => {
                            self.store
                                .index(Space::ScimIndex, slug, &[&conn.sso, MAIL, m])?
                        }
                        None => Vec::new(),
                    })
                } else {
                    None
                }
            }
            None => None,
        };
        let mut found = Vec::new();
        let mut keep = |user: &User, scim: &ScimUser| -> Result<(), ScimError> {
            let json = user_json(user, scim, &conn.base);
            if filter
                .map(|f| f.matches(&json))
                .transpose()?
                .unwrap_or(true)
            {
                found.push(json);
            }
            Ok(())
        };
        match candidates {
            Some(ids) => {
                for id in ids {
                    if let Some((user, scim)) = self.scim_user(slug, conn, &id)? {
                        keep(&user, &scim)?;
                    }
                }
            }
            None => {
                for scim in self.store.list::<ScimUser>(slug, &[&conn.sso])? {
                    if scim.deleted_at.is_some() {
                        continue;
                    }
                    if let Some(user) = self.store.get::<User>(slug, &[&scim.user])? {
                        keep(&user, &scim)?;
                    }
                }
            }
        }
        Ok(page(found, query))
    }

    /// Applies the pending memberships waiting for a user just provisioned (matched by
    /// its externalId or userName), then drops them. Expired ones are dropped unused.
    /// Called inside the write that provisions the user (its tenant's lock held, in the
    /// same round), so both are acknowledged together and a create that finds nothing
    /// pending writes nothing more.
    fn apply_pending(
        &self,
        slug: &str,
        conn: &Connection,
        user: &User,
        input: &UserInput,
    ) -> Result<(), ScimError> {
        let mut keys: Vec<String> = vec![input.user_name.to_lowercase()];
        if let Some(ext) = &input.external_id {
            keys.push(ext.clone());
        }
        let now = now();
        let mut batch = Batch::new(slug);
        let mut teams = BTreeSet::new();
        for key in keys.iter().filter_map(|k| key_value(k)) {
            for pending in self.store.list::<PendingMember>(slug, &[&conn.sso, key])? {
                batch.remove(Space::ScimPending, &[&conn.sso, key, &pending.team]);
                if pending.expires_at > now {
                    teams.insert(pending.team);
                }
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        let mut audit = self.audit_log(slug)?;
        for team_id in teams {
            let Some(mut team) = self.store.get::<Team>(slug, &[&team_id])? else {
                continue;
            };
            let before: BTreeSet<String> = self
                .store
                .index(Space::Members, slug, &[&team_id])?
                .into_iter()
                .collect();
            let mut after = before.clone();
            after.insert(user.id.clone());
            self.stage_members(
                slug,
                &team_id,
                &before,
                &after,
                &mut batch,
                &mut audit,
                &conn.actor(),
            )?;
            team.updated_at = now;
            batch.put(&[&team_id], &team);
        }
        self.store.apply(&batch)?;
        Ok(())
    }

    // ----------------------------------------------------------------- groups

    /// The team name for a group displayed as `display`: the tenant policy's name for it
    /// (`naming`, or the default rule for a component built before 0.1.2), made unique
    /// among the tenant's teams by a short deterministic suffix. `own` is the team being
    /// renamed: the name it already has is not a collision.
    fn derive_team_name(
        &self,
        slug: &str,
        display: &str,
        own: Option<&Team>,
    ) -> Result<TeamName, ScimError> {
        let policy = self.current_policy(slug)?;
        let base = policy.team_name(&self.engine, display).map_err(|e| {
            tracing::warn!(tenant = slug, error = %e, "policy error while naming a team; nothing changed");
            ScimError::Internal(format!(
                "the tenant's policy could not name the team, so nothing changed: {e}"
            ))
        })?;
        let free = |name: &str| -> Result<bool, ScimError> {
            let taken =
                self.store
                    .get_raw(Space::TeamNames, slug, &[&name.to_ascii_lowercase()])?;
            Ok(match taken {
                None => true,
                Some(id) => own.is_some_and(|t| t.id.as_bytes() == id.as_slice()),
            })
        };
        if free(&base)? {
            return TeamName::parse(&base).map_err(ScimError::Internal);
        }
        for n in 0..SUFFIX_TRIES {
            let candidate = suffixed_name(&base, display, n);
            if free(&candidate)? {
                return TeamName::parse(&candidate).map_err(ScimError::Internal);
            }
        }
        Err(ScimError::Uniqueness(format!(
            "no free team name for displayName {display:?}: {base} and its suffixed forms are taken"
        )))
    }

    /// The connection's group with this display name (case-insensitively), if any. Teams
    /// stored before display names were kept are found by their team name.
    fn group_by_display(
        &self,
        slug: &str,
        conn: &Connection,
        display: &str,
    ) -> Result<Option<Team>, AppError> {
        let Some(key) = display_index_key(display) else {
            return Ok(None);
        };
        if let Some(id) = self.index_get(slug, &[&conn.sso, GROUP_NAME, &key])? {
            return self.scim_team(slug, conn, &id);
        }
        match self
            .store
            .get_raw(Space::TeamNames, slug, &[&key.to_ascii_lowercase()])?
        {
            Some(id) => Ok(self
                .scim_team(slug, conn, &String::from_utf8_lossy(&id))?
                .filter(|t| t.display_name.is_none())),
            None => Ok(None),
        }
    }

    fn scim_team(&self, slug: &str, conn: &Connection, id: &str) -> Result<Option<Team>, AppError> {
        if !valid_id(id) {
            return Ok(None);
        }
        Ok(self
            .store
            .get::<Team>(slug, &[id])?
            .filter(|t| t.scim.as_ref().is_some_and(|s| s.sso_id == conn.sso)))
    }

    fn existing_scim_team(
        &self,
        slug: &str,
        conn: &Connection,
        id: &str,
    ) -> Result<Team, ScimError> {
        self.scim_team(slug, conn, id)?
            .ok_or_else(|| ScimError::NotFound(format!("group {id}")))
    }

    fn group_view(
        &self,
        slug: &str,
        conn: &Connection,
        team: &Team,
        with_members: bool,
    ) -> Result<Value, AppError> {
        let members = if with_members {
            Some(self.store.index(Space::Members, slug, &[&team.id])?)
        } else {
            None
        };
        Ok(group_json(team, members.as_deref(), &conn.base))
    }

    /// Reads one group; `with_members: false` reads only the team record.
    pub fn scim_get_group(
        &self,
        conn: &Connection,
        id: &str,
        with_members: bool,
    ) -> Result<Value, ScimError> {
        let team = self.existing_scim_team(&conn.tenant, conn, id)?;
        Ok(self.group_view(&conn.tenant, conn, &team, with_members)?)
    }

    /// Sorts member values into users of this connection, pending values (unknown ids)
    /// and refused ones (groups, users the connection did not provision, values too long
    /// to ever name one of its users).
    fn sort_members(
        &self,
        slug: &str,
        conn: &Connection,
        refs: &[MemberRef],
        report: &mut MemberReport,
    ) -> Result<BTreeSet<String>, AppError> {
        // Every lookup the refs need, read at once: a push of a thousand members is a few
        // round trips to a database, not thousands.
        let ids: Vec<&str> = refs
            .iter()
            .map(|r| r.value.as_str())
            .filter(|v| valid_id(v))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let teams = self.store.get_many::<Team>(slug, &[], &ids)?;
        let scims = self.store.get_many::<ScimUser>(slug, &[&conn.sso], &ids)?;
        let accounts = self.store.get_many::<User>(slug, &[], &ids)?;
        let mut known: HashMap<&str, (bool, bool, bool)> = HashMap::with_capacity(ids.len());
        for (i, id) in ids.iter().enumerate() {
            let provisioned = scims[i].as_ref().is_some_and(|s| s.deleted_at.is_none());
            let user = accounts[i].is_some();
            known.insert(id, (teams[i].is_some(), provisioned && user, user));
        }
        let mut users = BTreeSet::new();
        for r in refs {
            // (a team, a user of this connection, a user); all false for an invalid id.
            let (team, ours, user) = known.get(r.value.as_str()).copied().unwrap_or_default();
            let is_group = r
                .kind
                .as_deref()
                .is_some_and(|k| k.eq_ignore_ascii_case("group"))
                || team;
            if is_group {
                report.refused.push((
                    r.value.clone(),
                    "nested groups are not supported: a group cannot be a member of a group; assign its users instead".into(),
                ));
            } else if ours {
                users.insert(r.value.clone());
            } else if user {
                report.refused.push((
                    r.value.clone(),
                    "this user was not provisioned by this SCIM connection".into(),
                ));
            } else if key_value(&r.value).is_some() {
                report.pending.push(r.value.clone());
            } else {
                // Too long (or holding a 0 byte) to be kept pending, and no user of the
                // connection can ever have it as userName or externalId (both are limited
                // the same way): refused, but said, never dropped (decision 89).
                report.refused.push((
                    r.value.clone(),
                    "this value cannot be kept pending: member values are user ids, userNames or externalIds of at most 512 bytes without a 0 byte, so no user can ever match it".into(),
                ));
            }
        }
        Ok(users)
    }

    fn stage_pending(&self, batch: &mut Batch, conn: &Connection, team: &str, values: &[String]) {
        let now = now();
        let ttl = Duration::hours(self.scim.config.pending_ttl_hours.min(24 * 365) as i64);
        for value in values {
            let record = PendingMember {
                team: team.to_owned(),
                value: value.clone(),
                requested_at: now,
                expires_at: now + ttl,
            };
            batch.put(&[&conn.sso, value, team], &record);
        }
    }

    /// Creates a group (a team managed by this connection), with its members.
    pub fn scim_create_group(
        &self,
        conn: &Connection,
        body: &Value,
    ) -> Result<(Value, bool, MemberReport), ScimError> {
        let input = GroupInput::from_json(body)?;
        check_display_name(&input.display_name).map_err(ScimError::InvalidValue)?;
        if let Some(ext) = &input.external_id {
            if key_value(ext).is_none() {
                return Err(ScimError::InvalidValue("externalId is too long".into()));
            }
        }
        self.scim_write(conn, |slug| {
            if let Some(ext) = &input.external_id {
                if let Some(id) = self.index_get(slug, &[&conn.sso, GROUP_EXT, ext])? {
                    // A stale entry (the team was deleted by an admin) is overwritten.
                    if let Some(team) = self.scim_team(slug, conn, &id)? {
                        if display_key(team.shown_name()) == display_key(&input.display_name) {
                            return Ok((
                                self.group_view(slug, conn, &team, true)?,
                                false,
                                MemberReport::default(),
                            ));
                        }
                        return Err(ScimError::Uniqueness(format!(
                            "externalId {ext:?} already belongs to group {:?}",
                            team.shown_name()
                        )));
                    }
                }
            }
            if let Some(team) = self.group_by_display(slug, conn, &input.display_name)? {
                return Err(ScimError::Uniqueness(format!(
                    "a group with displayName {:?} already exists ({})",
                    team.shown_name(),
                    team.id
                )));
            }
            let name = self.derive_team_name(slug, &input.display_name, None)?;
            let now = now();
            let team = Team {
                id: new_id("team_"),
                name: name.as_str().to_owned(),
                display_name: Some(input.display_name.clone()),
                role: None,
                mappings: Vec::new(),
                scim: Some(ScimLink {
                    sso_id: conn.sso.clone(),
                    external_id: input.external_id.clone(),
                }),
                builtin: false,
                created_at: now,
                updated_at: now,
            };
            let mut report = MemberReport::default();
            let members = self.sort_members(
                slug,
                conn,
                input.members.as_deref().unwrap_or_default(),
                &mut report,
            )?;
            let mut batch = Batch::new(slug);
            stage_new_team(&mut batch, &team, &name);
            stage_display_name(&mut batch, conn, &team.id, None, &input.display_name)?;
            if let Some(ext) = &input.external_id {
                batch.put_raw(
                    Space::ScimIndex,
                    &[&conn.sso, GROUP_EXT, ext],
                    team.id.as_bytes(),
                );
            }
            let mut audit = self.audit_log(slug)?;
            audit.record(
                &mut batch,
                &conn.actor(),
                "scim.group.create",
                &team.id,
                None,
                Some(&team),
            );
            self.stage_members(
                slug,
                &team.id,
                &BTreeSet::new(),
                &members,
                &mut batch,
                &mut audit,
                &conn.actor(),
            )?;
            self.stage_pending(&mut batch, conn, &team.id, &report.pending);
            record_report(&mut audit, &mut batch, conn, &team.id, &report);
            self.store.apply(&batch)?;
            let members: Vec<String> = members.into_iter().collect();
            Ok((group_json(&team, Some(&members), &conn.base), true, report))
        })
    }

    /// Replaces a group (PUT): name, externalId and exactly the members sent.
    pub fn scim_replace_group(
        &self,
        conn: &Connection,
        id: &str,
        body: &Value,
        if_match: Option<&str>,
    ) -> Result<(Value, MemberReport), ScimError> {
        let input = GroupInput::from_json(body)?;
        let change = GroupChange {
            display_name: Some(input.display_name),
            external_id: Some(input.external_id),
            members: vec![patch::MemberOp::Replace(input.members.unwrap_or_default())],
        };
        self.write_group(conn, id, change, if_match, true, "scim.group.replace")
    }

    /// Applies a PATCH to a group, atomically.
    pub fn scim_patch_group(
        &self,
        conn: &Connection,
        id: &str,
        body: &Value,
        if_match: Option<&str>,
        with_members: bool,
    ) -> Result<(Value, MemberReport), ScimError> {
        let change = patch::group_change(&patch::parse(body)?, id)?;
        self.write_group(conn, id, change, if_match, with_members, "scim.group.patch")
    }

    fn write_group(
        &self,
        conn: &Connection,
        id: &str,
        change: GroupChange,
        if_match: Option<&str>,
        with_members: bool,
        action: &str,
    ) -> Result<(Value, MemberReport), ScimError> {
        if let Some(display) = &change.display_name {
            check_display_name(display).map_err(ScimError::InvalidValue)?;
        }
        self.scim_write(conn, |slug| {
            let before = self.existing_scim_team(slug, conn, id)?;
            check_if_match(if_match, &version(before.updated_at))?;
            let now = now();
            let mut after = before.clone();
            let mut batch = Batch::new(slug);
            let mut audit = self.audit_log(slug)?;
            // A rename from the IdP renames both: the display name as sent, the team name
            // derived from it again (kept when the policy gives the name it has).
            if let Some(display) = change
                .display_name
                .as_ref()
                .filter(|d| before.display_name.as_ref() != Some(*d))
            {
                if let Some(other) = self
                    .group_by_display(slug, conn, display)?
                    .filter(|t| t.id != before.id)
                {
                    return Err(ScimError::Uniqueness(format!(
                        "a group with displayName {:?} already exists ({})",
                        other.shown_name(),
                        other.id
                    )));
                }
                let name = self.derive_team_name(slug, display, Some(&before))?;
                super::identity::rename_team(&mut batch, id, &before.name, &name);
                stage_display_name(
                    &mut batch,
                    conn,
                    id,
                    before.display_name.as_deref(),
                    display,
                )?;
                after.name = name.as_str().to_owned();
                after.display_name = Some(display.clone());
            }
            if let Some(ext) = &change.external_id {
                let old = before.scim.as_ref().and_then(|s| s.external_id.clone());
                if &old != ext {
                    if let Some(old) = &old {
                        batch.remove(Space::ScimIndex, &[&conn.sso, GROUP_EXT, old]);
                    }
                    if let Some(new) = ext {
                        let new = key_value(new).ok_or_else(|| {
                            ScimError::InvalidValue("externalId is too long".into())
                        })?;
                        batch
                            .require_absent(
                                Space::ScimIndex,
                                &[&conn.sso, GROUP_EXT, new],
                                format!("externalId {new:?} already belongs to another group"),
                            )
                            .put_raw(
                                Space::ScimIndex,
                                &[&conn.sso, GROUP_EXT, new],
                                id.as_bytes(),
                            );
                    }
                    after.scim = Some(ScimLink {
                        sso_id: conn.sso.clone(),
                        external_id: ext.clone(),
                    });
                }
            }
            let mut report = MemberReport::default();
            let mut members_after = None;
            let mut members_changed = false;
            if !change.members.is_empty() {
                let members: BTreeSet<String> = self
                    .store
                    .index(Space::Members, slug, &[id])?
                    .into_iter()
                    .collect();
                let (wanted, asked) = change.members_after(&members)?;
                let asked_ok = self.sort_members(slug, conn, &asked, &mut report)?;
                // A value added and removed again in the same PATCH is not left pending.
                report.pending.retain(|v| wanted.contains(v));
                // Members the connection asked for that are not users of it stay out; those
                // already members (added by an admin) are kept.
                let after_set: BTreeSet<String> = wanted
                    .into_iter()
                    .filter(|m| members.contains(m) || asked_ok.contains(m))
                    .collect();
                // Pending values are dropped when a later operation removes them.
                let dropped: Vec<String> = change.removed_values();
                for value in dropped.iter().filter_map(|v| key_value(v)) {
                    batch.remove(Space::ScimPending, &[&conn.sso, value, id]);
                }
                if change.clears() {
                    for pending in self.store.list::<PendingMember>(slug, &[&conn.sso])? {
                        if pending.team == id {
                            batch.remove(Space::ScimPending, &[&conn.sso, &pending.value, id]);
                        }
                    }
                }
                self.stage_pending(&mut batch, conn, id, &report.pending);
                if after_set != members {
                    members_changed = true;
                    self.stage_members(
                        slug,
                        id,
                        &members,
                        &after_set,
                        &mut batch,
                        &mut audit,
                        &conn.actor(),
                    )?;
                }
                members_after = Some(after_set);
            }
            // Pending entries are not part of the resource: they do not change its version.
            let renamed = after != before;
            if renamed || members_changed {
                after.updated_at = now;
                batch.put(&[id], &after);
                if renamed {
                    audit.record(
                        &mut batch,
                        &conn.actor(),
                        action,
                        id,
                        Some(&before),
                        Some(&after),
                    );
                }
            }
            record_report(&mut audit, &mut batch, conn, id, &report);
            self.store.apply(&batch)?;
            let members: Option<Vec<String>> = match (with_members, members_after) {
                (false, _) => None,
                (true, Some(set)) => Some(set.into_iter().collect()),
                (true, None) => Some(self.store.index(Space::Members, slug, &[id])?),
            };
            Ok((group_json(&after, members.as_deref(), &conn.base), report))
        })
    }

    /// Deletes a group: the team goes, its members' roles are recomputed.
    pub fn scim_delete_group(
        &self,
        conn: &Connection,
        id: &str,
        if_match: Option<&str>,
    ) -> Result<(), ScimError> {
        self.scim_write(conn, |slug| {
            let team = self.existing_scim_team(slug, conn, id)?;
            check_if_match(if_match, &version(team.updated_at))?;
            let members: BTreeSet<String> = self
                .store
                .index(Space::Members, slug, &[id])?
                .into_iter()
                .collect();
            let mut batch = Batch::new(slug);
            let mut audit = self.audit_log(slug)?;
            // Roles are recomputed as if the team lost every member, then the team goes.
            self.stage_members(
                slug,
                id,
                &members,
                &BTreeSet::new(),
                &mut batch,
                &mut audit,
                &conn.actor(),
            )?;
            batch
                .remove(Space::Teams, &[id])
                .remove(Space::TeamNames, &[&team.name.to_ascii_lowercase()]);
            if let Some(key) = team.display_name.as_deref().and_then(display_index_key) {
                batch.remove(Space::ScimIndex, &[&conn.sso, GROUP_NAME, &key]);
            }
            if let Some(ext) = team.scim.as_ref().and_then(|s| s.external_id.as_deref()) {
                batch.remove(Space::ScimIndex, &[&conn.sso, GROUP_EXT, ext]);
            }
            for pending in self.store.list::<PendingMember>(slug, &[&conn.sso])? {
                if pending.team == id {
                    batch.remove(Space::ScimPending, &[&conn.sso, &pending.value, id]);
                }
            }
            audit.record(
                &mut batch,
                &conn.actor(),
                "scim.group.delete",
                id,
                Some(&team),
                None,
            );
            self.store.apply(&batch)?;
            Ok(())
        })
    }

    /// Lists the connection's groups (indexed by `id`, `displayName`, `externalId`).
    pub fn scim_list_groups(
        &self,
        conn: &Connection,
        query: &ListQuery,
    ) -> Result<ListPage, ScimError> {
        let slug = conn.tenant.as_str();
        let filter = query.filter.as_ref();
        let candidates: Vec<Team> = match filter {
            Some(f) if f.indexed_eq("id").is_some() => self
                .scim_team(slug, conn, f.indexed_eq("id").unwrap_or_default())?
                .into_iter()
                .collect(),
            Some(f) if f.indexed_eq("displayName").is_some() => self
                .group_by_display(slug, conn, f.indexed_eq("displayName").unwrap_or_default())?
                .into_iter()
                .collect(),
            Some(f) if f.indexed_eq("externalId").is_some() => {
                let ext = f.indexed_eq("externalId").unwrap_or_default();
                match key_value(ext)
                    .map(|e| self.index_get(slug, &[&conn.sso, GROUP_EXT, e]))
                    .transpose()?
                    .flatten()
                {
                    Some(id) => self.scim_team(slug, conn, &id)?.into_iter().collect(),
                    None => Vec::new(),
                }
            }
            _ => self
                .store
                .list::<Team>(slug, &[])?
                .into_iter()
                .filter(|t| t.scim.as_ref().is_some_and(|s| s.sso_id == conn.sso))
                .collect(),
        };
        // Filters on members need them; otherwise they are read only for the page.
        let filter_needs_members =
            filter.is_some_and(|f| f.to_string().to_ascii_lowercase().contains("members"));
        let mut found = Vec::new();
        for team in &candidates {
            let json = self.group_view(slug, conn, team, filter_needs_members)?;
            if filter
                .map(|f| f.matches(&json))
                .transpose()?
                .unwrap_or(true)
            {
                found.push(json);
            }
        }
        let mut listed = page(found, query);
        if query.with_members && !filter_needs_members {
            for resource in &mut listed.resources {
                let id = resource["id"].as_str().unwrap_or_default().to_owned();
                let members = self.store.index(Space::Members, slug, &[&id])?;
                if let Some(team) = candidates.iter().find(|t| t.id == id) {
                    *resource = group_json(team, Some(&members), &conn.base);
                }
            }
        }
        Ok(listed)
    }

    /// The memberships a connection asked for whose member is not (yet) one of its
    /// users, for admins; expired ones are left out.
    pub fn scim_pending(
        &self,
        tenant: &str,
        sso: &str,
        caller: &super::Caller,
    ) -> Result<Vec<PendingMember>, AppError> {
        caller.require_admin()?;
        let slug = self.tenant(tenant)?.slug;
        let _: SsoConfig = self
            .store
            .get(&slug, &[sso])?
            .ok_or_else(|| AppError::NotFound(format!("SSO configuration {sso}")))?;
        let now = now();
        Ok(self
            .store
            .list::<PendingMember>(&slug, &[sso])?
            .into_iter()
            .filter(|p| p.expires_at > now)
            .collect())
    }
}

impl GroupChange {
    /// Values named by remove operations.
    fn removed_values(&self) -> Vec<String> {
        self.members
            .iter()
            .flat_map(|op| match op {
                patch::MemberOp::Remove(ids) => ids.clone(),
                _ => Vec::new(),
            })
            .collect()
    }

    /// Whether an operation clears or replaces the member list.
    fn clears(&self) -> bool {
        self.members
            .iter()
            .any(|op| matches!(op, patch::MemberOp::Clear | patch::MemberOp::Replace(_)))
    }
}

/// Moves a group's display-name index entry (per connection, case-insensitive) from `old`
/// to `new`. Callers check first, under the tenant lock, that no live group of the
/// connection has `new` ([`App::group_by_display`]); an entry left by a team an admin
/// deleted is stale and overwritten.
fn stage_display_name(
    batch: &mut Batch,
    conn: &Connection,
    id: &str,
    old: Option<&str>,
    new: &str,
) -> Result<(), ScimError> {
    let new_key = display_index_key(new)
        .ok_or_else(|| ScimError::InvalidValue("displayName is not a valid name".into()))?;
    let old_key = old.and_then(display_index_key);
    if let Some(old_key) = &old_key {
        batch.remove(Space::ScimIndex, &[&conn.sso, GROUP_NAME, old_key]);
    }
    batch.put_raw(
        Space::ScimIndex,
        &[&conn.sso, GROUP_NAME, &new_key],
        id.as_bytes(),
    );
    Ok(())
}

fn record_report(
    audit: &mut super::identity::AuditLog,
    batch: &mut Batch,
    conn: &Connection,
    team: &str,
    report: &MemberReport,
) {
    if report.pending.is_empty() && report.refused.is_empty() {
        return;
    }
    let detail = serde_json::json!({
        "pending": report.pending,
        "refused": report.refused.iter().map(|(v, why)| serde_json::json!({"value": v, "reason": why})).collect::<Vec<_>>(),
    });
    audit.record(
        batch,
        &conn.actor(),
        "scim.group.members_not_applied",
        team,
        None,
        Some(&detail),
    );
    tracing::warn!(tenant = %conn.tenant, sso = %conn.sso, team, pending = report.pending.len(), refused = report.refused.len(), "scim membership values not applied");
}

fn source_name(source: UserSource) -> &'static str {
    match source {
        UserSource::Scim => "SCIM",
        UserSource::Jit => "JIT login",
        UserSource::Invite => "invitation",
        UserSource::Migration => "migration",
    }
}

/// The user with the fields a SCIM client controls set from `input`.
fn apply_fields(
    before: &User,
    input: &UserInput,
    email: Option<&Email>,
    now: OffsetDateTime,
) -> User {
    User {
        email: email.map(|e| e.as_str().to_owned()).unwrap_or_default(),
        display_name: input.display_name.clone(),
        given_name: input.given_name.clone(),
        family_name: input.family_name.clone(),
        external_id: input.external_id.clone(),
        updated_at: now,
        ..before.clone()
    }
}

fn scim_record(user: &str, input: &UserInput) -> ScimUser {
    ScimUser {
        user: user.to_owned(),
        user_name: input.user_name.clone(),
        emails: input.emails.clone(),
        formatted_name: input.formatted_name.clone(),
        title: input.title.clone(),
        employee_number: input.employee_number.clone(),
        department: input.department.clone(),
        active_unassigned: input.active_unassigned,
        deleted_at: None,
    }
}

impl App {
    /// Puts the end of user `user`'s SCIM records into `batch`, if a connection provisioned
    /// it: its lookups go, and its SCIM record stays as a tombstone, so the connection reads
    /// the user as deleted (404) and a later push of the same `userName` creates a new one.
    pub(super) fn stage_scim_user_removal(
        &self,
        slug: &str,
        user: &User,
        batch: &mut Batch,
    ) -> Result<(), StoreError> {
        let id = user.id.as_str();
        let Some(sso) = self.store.get_raw(Space::ScimIndex, slug, &[OWNER, id])? else {
            return Ok(());
        };
        let sso = String::from_utf8_lossy(&sso).into_owned();
        batch.remove(Space::ScimIndex, &[OWNER, id]);
        let Some(scim) = self.store.get::<ScimUser>(slug, &[&sso, id])? else {
            return Ok(());
        };
        batch.remove(
            Space::ScimIndex,
            &[&sso, NAME, &scim.user_name.to_lowercase()],
        );
        if let Some(ext) = &user.external_id {
            batch.remove(Space::ScimIndex, &[&sso, EXT, ext]);
        }
        for e in &scim.emails {
            if let Some(v) = key_value(&e.value.to_lowercase()) {
                batch.remove(Space::ScimIndex, &[&sso, MAIL, v, id]);
            }
        }
        let tombstone = ScimUser {
            deleted_at: Some(now()),
            ..scim
        };
        batch.put(&[&sso, id], &tombstone);
        Ok(())
    }
}

fn put_user_indexes(
    batch: &mut Batch,
    conn: &Connection,
    id: &str,
    scim: &ScimUser,
    ext: Option<&str>,
) {
    let name = scim.user_name.to_lowercase();
    batch
        .put_raw(Space::ScimIndex, &[&conn.sso, NAME, &name], id.as_bytes())
        .put_raw(Space::ScimIndex, &[OWNER, id], conn.sso.as_bytes());
    if let Some(ext) = ext {
        batch.put_raw(Space::ScimIndex, &[&conn.sso, EXT, ext], id.as_bytes());
    }
    for e in &scim.emails {
        if let Some(v) = key_value(&e.value.to_lowercase()) {
            batch.put_raw(Space::ScimIndex, &[&conn.sso, MAIL, v, id], b"");
        }
    }
}

/// Sorts (by `sortBy`, else by id: a stable order) and cuts one page.
fn page(mut found: Vec<Value>, query: &ListQuery) -> ListPage {
    match &query.sort_by {
        Some(path) => {
            // dateTime attributes sort chronologically, as they filter: their text
            // (`…44.84Z` before `…44Z`) does not order them.
            let date_time = filter::is_date_time(path);
            let key = |v: &Value| -> Option<(Option<OffsetDateTime>, String)> {
                filter::values(v, path).first().map(|x| match x {
                    Value::String(s) if date_time => (filter::parse_date_time(s), s.clone()),
                    Value::String(s) => (None, s.to_lowercase()),
                    other => (None, other.to_string()),
                })
            };
            // Resources without the attribute sort last if ascending and first if
            // descending (RFC 7644 §3.4.2.3), ties by id.
            found.sort_by(|a, b| {
                let (ka, kb) = (key(a), key(b));
                let order = match (ka, kb) {
                    (None, None) => std::cmp::Ordering::Equal,
                    (None, Some(_)) => std::cmp::Ordering::Greater,
                    (Some(_), None) => std::cmp::Ordering::Less,
                    (Some(ka), Some(kb)) => ka.cmp(&kb),
                };
                let order = if query.descending {
                    order.reverse()
                } else {
                    order
                };
                order.then_with(|| a["id"].as_str().cmp(&b["id"].as_str()))
            });
        }
        None => found.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str())),
    }
    let total = found.len();
    let start = query.start_index.max(1);
    let resources: Vec<Value> = found
        .into_iter()
        .skip(start - 1)
        .take(query.count)
        .collect();
    ListPage {
        total,
        start_index: start,
        resources,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_compares_weakly() {
        assert!(check_if_match(None, "W/\"1\"").is_ok());
        assert!(check_if_match(Some("W/\"1\""), "W/\"1\"").is_ok());
        assert!(check_if_match(Some("\"1\""), "W/\"1\"").is_ok());
        assert!(check_if_match(Some("*"), "W/\"1\"").is_ok());
        assert!(matches!(
            check_if_match(Some("W/\"2\""), "W/\"1\""),
            Err(ScimError::PreconditionFailed(_))
        ));
    }

    #[test]
    fn sorting_puts_missing_last_ascending_first_descending_and_times_in_order() {
        let resources = vec![
            serde_json::json!({"id": "1", "title": "b", "meta": {"lastModified": "2026-12-07T16:33:44.5Z"}}),
            serde_json::json!({"id": "2", "meta": {"lastModified": "2026-12-07T16:33:44.52Z"}}),
            serde_json::json!({"id": "3", "title": "a", "meta": {"lastModified": "2026-12-07T17:33:44+01:00"}}),
        ];
        let order = |sort: &str, descending: bool| -> Vec<String> {
            let query = ListQuery {
                filter: None,
                start_index: 1,
                count: 10,
                sort_by: Some(filter::parse_attr_path(sort).unwrap()),
                descending,
                with_members: false,
            };
            page(resources.clone(), &query)
                .resources
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(order("title", false), ["3", "1", "2"]);
        assert_eq!(order("title", true), ["2", "1", "3"]);
        assert_eq!(order("meta.lastModified", false), ["3", "1", "2"]);
        assert_eq!(order("meta.lastModified", true), ["2", "1", "3"]);
    }

    #[test]
    fn the_rate_limit_refills() {
        let runtime = ScimRuntime::new(ScimConfig {
            rate_per_second: 1,
            burst: 2,
            ..ScimConfig::default()
        });
        assert!(runtime.admit("a").is_ok());
        assert!(runtime.admit("a").is_ok());
        assert_eq!(runtime.admit("a"), Err(1));
        assert!(runtime.admit("b").is_ok());
    }
}
