//! Identity operations: callers, users, teams, roles, personal access tokens, audit.
//!
//! Every change to a tenant's identity data runs under that tenant's write lock: it reads
//! what it needs, asks the policy what it must (effective roles), and writes everything —
//! records, indexes, recomputed roles, the audit entry — as one durable batch.

use super::{now, App, AppError};
use crate::identity::{
    new_id, parse_role_part, role_part, AuditEntry, Email, Link, LinkPurpose, Mapping,
    OutboxMessage, Team, TeamName, Token, TokenKind, User, EVERYONE,
};
use crate::policy;
use crate::store::{Batch, Space, StoreError};
use gatehouse_rules::{self as rules, Role, RoleSource, UserSource, UserStatus};
use serde::Serialize;
use serde_json::value::RawValue;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use time::{Duration, OffsetDateTime};

/// Who is making a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The operator token: everything, in every tenant.
    Operator,
    /// A tenant admin's token: everything in that tenant.
    Admin { user: String },
    /// A member's token: itself only.
    Member { user: String },
}

impl Caller {
    /// How the caller appears in the audit log.
    pub fn actor(&self) -> String {
        match self {
            Caller::Operator => "operator".to_owned(),
            Caller::Admin { user } | Caller::Member { user } => format!("user:{user}"),
        }
    }

    /// Refuses anyone who is not the operator or a tenant admin.
    pub fn require_admin(&self) -> Result<(), AppError> {
        match self {
            Caller::Operator | Caller::Admin { .. } => Ok(()),
            Caller::Member { .. } => Err(AppError::Forbidden("this needs a tenant admin".into())),
        }
    }

    /// Refuses anyone but the operator, a tenant admin, or the user `id` itself.
    pub fn require_self_or_admin(&self, id: &str) -> Result<(), AppError> {
        match self {
            Caller::Member { user } if user != id => Err(AppError::Forbidden(
                "a member's token can only read its own user".into(),
            )),
            _ => Ok(()),
        }
    }
}

/// Above this many users, role decisions read all memberships in one scan.
const BULK_USERS: usize = 256;

/// Prefix of personal access tokens: `ghp_<tenant>_<secret>`.
pub(crate) const PAT_PREFIX: &str = "ghp_";

/// Prefix of virtual-account API tokens: `gva_<tenant>_<secret>`.
pub(crate) const VA_PREFIX: &str = "gva_";

/// A tenant just created: its first admin and that admin's token (shown once).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TenantCreated {
    pub tenant: crate::store::TenantRecord,
    pub admin: Option<User>,
    pub admin_token: Option<String>,
}

/// An invitation.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Invite {
    pub email: String,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub given_name: Option<String>,
    #[serde(default)]
    pub family_name: Option<String>,
    /// Send an email with a one-time link to set a password.
    #[serde(default)]
    pub send_password_email: bool,
}

/// Filters and paging of the user list.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UserQuery {
    /// Only users in this lifecycle state.
    pub status: Option<UserStatus>,
    /// Only users that came in this way.
    pub source: Option<UserSource>,
    /// Case-insensitive substring of email or display name.
    pub q: Option<String>,
    /// Only members of this team (id).
    pub team: Option<String>,
    /// Page size (1-500, default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<usize>,
    /// Continue after this user id (the previous page's `next`).
    pub after: Option<String>,
}

/// One page of a list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next: Option<String>,
}

/// Which audit entries a listing keeps: every set field must match.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub actor: Option<String>,
    /// An exact action, or a prefix when it ends with `*` (`user.*`).
    pub action: Option<String>,
    pub since: Option<OffsetDateTime>,
    pub until: Option<OffsetDateTime>,
}

impl AuditFilter {
    /// From query values; a time that is not RFC 3339 is a 400 naming it.
    pub fn parse(
        actor: Option<String>,
        action: Option<String>,
        since: Option<&str>,
        until: Option<&str>,
    ) -> Result<AuditFilter, AppError> {
        let time = |name: &str, value: Option<&str>| {
            value
                .map(|v| {
                    OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
                        .map_err(|_| {
                            AppError::BadRequest(format!(
                                "{name} {v:?} is not an RFC 3339 time (e.g. 2026-01-31T12:00:00Z)"
                            ))
                        })
                })
                .transpose()
        };
        Ok(AuditFilter {
            actor: actor.filter(|a| !a.is_empty()),
            action: action.filter(|a| !a.is_empty()),
            since: time("since", since)?,
            until: time("until", until)?,
        })
    }

    /// Whether `entry` passes every set field.
    pub fn accepts(&self, entry: &AuditEntry) -> bool {
        self.actor.as_ref().is_none_or(|a| &entry.actor == a)
            && self
                .action
                .as_ref()
                .is_none_or(|a| match a.strip_suffix('*') {
                    Some(prefix) => entry.action.starts_with(prefix),
                    None => &entry.action == a,
                })
            && self.since.is_none_or(|t| entry.at >= t)
            && self.until.is_none_or(|t| entry.at < t)
    }
}

/// A team with its members.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TeamView {
    #[serde(flatten)]
    pub team: Team,
    pub members: Vec<String>,
}

/// A new team.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTeam {
    pub name: String,
    #[serde(default)]
    pub role: Option<Role>,
    #[serde(default)]
    pub members: Vec<String>,
    #[serde(default)]
    pub mappings: Vec<Mapping>,
}

/// A change to a team; absent fields stay as they are. `role: null` clears the role.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TeamPatch {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, with = "double_option")]
    pub role: Option<Option<Role>>,
    #[serde(default)]
    pub mappings: Option<Vec<Mapping>>,
}

mod double_option {
    use serde::{Deserialize, Deserializer};
    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

/// A membership change: ids to add and to remove.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberChange {
    #[serde(default)]
    pub add: Vec<String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A new personal access token.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    pub name: String,
    /// Days until it expires (1-3650); absent: 90.
    #[serde(default)]
    pub expires_in_days: Option<i64>,
}

/// A token as shown: never its secret, except once at creation.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenCreated {
    #[serde(flatten)]
    pub token: Token,
    /// The secret, shown this once.
    pub secret: String,
}

/// A user whose role the policy must decide, with where its inputs come from.
pub(super) struct RoleView<'a> {
    /// Team roles that differ from the stored ones (changed in this operation).
    pub(super) team_roles: HashMap<&'a str, Option<Role>>,
    /// Users whose team list differs from the stored one.
    pub(super) user_teams: HashMap<&'a str, Vec<String>>,
    /// Users whose manual role differs from the stored one.
    pub(super) manual: HashMap<&'a str, Option<Role>>,
    /// Member lists already read in this operation (not re-read while deciding).
    pub(super) members: HashMap<&'a str, &'a [String]>,
}

/// A `team.members` audit entry: who joined, who left, and how many members remain.
#[derive(Serialize)]
struct MembershipChange<'a> {
    added: &'a BTreeSet<String>,
    removed: &'a BTreeSet<String>,
    members: usize,
}

/// What deciding a user's role needs of the user: who it is, the manual role, and the
/// outcome stored now. Read from whole user records, or from the users' side table alone
/// when many users' roles are recomputed and nothing else of them is needed.
pub(super) struct RoleState {
    pub(super) id: String,
    pub(super) role: Role,
    pub(super) source: RoleSource,
    pub(super) manual: Option<Role>,
}

impl From<&User> for RoleState {
    fn from(user: &User) -> RoleState {
        RoleState {
            id: user.id.clone(),
            role: user.role,
            source: user.role_source,
            manual: user.manual_role,
        }
    }
}

/// The role states of `users`.
pub(super) fn role_states(users: &[User]) -> Vec<RoleState> {
    users.iter().map(RoleState::from).collect()
}

impl App {
    // ------------------------------------------------------------- callers

    /// Who `bearer` is for a request about `tenant` (`None`: not a tenant route). A tenant
    /// token used on another tenant's route reads as "no such tenant" (404), so tenant
    /// names do not leak; an unknown, expired or revoked token, or one whose user is
    /// deactivated, is 401.
    pub fn authenticate(
        &self,
        tenant: Option<&str>,
        bearer: Option<&str>,
    ) -> Result<Caller, AppError> {
        let Some(bearer) = bearer else {
            return Err(AppError::Unauthorized);
        };
        if self.authorize_operator(Some(bearer)).is_ok() {
            return Ok(Caller::Operator);
        }
        let Some(tenant) = tenant else {
            return Err(AppError::Unauthorized);
        };
        if let Some(jws) = bearer.strip_prefix(super::SESSION_PREFIX) {
            return self.authenticate_session(tenant, jws);
        }
        let Some((token_tenant, _)) = bearer
            .strip_prefix(PAT_PREFIX)
            .and_then(|rest| rest.split_once('_'))
        else {
            return Err(AppError::Unauthorized);
        };
        if token_tenant != tenant {
            return Err(AppError::NotFound(format!("tenant {tenant}")));
        }
        let sha = hex::encode(policy::sha256(bearer.as_bytes()));
        let token: Token = self
            .store
            .get(tenant, &[&sha])?
            .ok_or(AppError::Unauthorized)?;
        let now = now();
        if token.kind != TokenKind::Pat || !token.is_live(now) {
            return Err(AppError::Unauthorized);
        }
        let user: User = self
            .store
            .get(tenant, &[&token.owner])?
            .ok_or(AppError::Unauthorized)?;
        if user.status != UserStatus::Active {
            return Err(AppError::Unauthorized);
        }
        Ok(match user.role {
            Role::Admin => Caller::Admin { user: user.id },
            Role::Member => Caller::Member { user: user.id },
        })
    }

    /// Runs `change` under the tenant's write lock (after checking the tenant exists).
    pub(super) fn with_tenant<R: Send>(
        &self,
        tenant: &str,
        change: impl FnOnce(&str) -> Result<R, AppError> + Send,
    ) -> Result<R, AppError> {
        let slug = self.tenant(tenant)?.slug;
        // The lock goes first, then one flush covers the change's writes (decisions 62
        // and 79: concurrent changes of the tenant share the lock's round and its flush).
        let result = self.store.write_locked(&slug, || change(&slug));
        // The edge's next decision for this tenant rebuilds its view (a view built
        // meanwhile carries the older generation and is dropped).
        self.edge.touch(&slug);
        result?
    }

    /// [`App::with_tenant`] for a caller in a tokio task: while the change waits for
    /// its round and its flush, no thread waits with it ([`crate::store::Store::write_queued`],
    /// decision 85). `change` gets the app and the tenant's slug. Its tenant check reads
    /// the store on the caller's thread: for a store on this machine (sled) that is a
    /// read from memory; a caller on a shared store uses [`App::with_tenant`] on a
    /// blocking thread instead.
    pub(super) async fn with_tenant_queued<R: Send + 'static>(
        self: &Arc<Self>,
        tenant: &str,
        change: impl FnOnce(&App, &str) -> Result<R, AppError> + Send + 'static,
    ) -> Result<R, AppError> {
        let slug = self.tenant(tenant)?.slug;
        let (app, at) = (self.clone(), slug.clone());
        let result = self
            .store
            .write_queued(&slug, move || change(&app, &at))
            .await;
        // As in `with_tenant`: the edge's next decision for this tenant rebuilds its view.
        self.edge.touch(&slug);
        result?
    }

    // ------------------------------------------------------------- tenants

    /// Creates a tenant with its built-in `everyone` team and, when `admin_email` is
    /// given, its first admin (active, manual admin role) and a token for that admin.
    pub fn create_tenant_with_admin(
        &self,
        slug: &str,
        admin_email: Option<&str>,
        actor: &str,
    ) -> Result<TenantCreated, AppError> {
        let admin_email = admin_email
            .map(Email::parse)
            .transpose()
            .map_err(AppError::BadRequest)?;
        let tenant_id = crate::model::TenantId::parse(slug).map_err(AppError::BadRequest)?;
        let slug = tenant_id.to_string();
        let guard = self.store.lock_tenant(&slug)?;
        let now = now();
        let everyone = Team {
            id: new_id("team_"),
            name: EVERYONE.to_owned(),
            display_name: None,
            role: None,
            mappings: Vec::new(),
            scim: None,
            builtin: true,
            created_at: now,
            updated_at: now,
        };
        let mut batch = Batch::new(&slug);
        batch.put(&[&everyone.id], &everyone).put_raw(
            Space::TeamNames,
            &[EVERYONE],
            everyone.id.as_bytes(),
        );
        let mut audit = self.audit_log(&slug)?;
        audit.record(
            &mut batch,
            actor,
            "team.create",
            &everyone.id,
            None,
            Some(&everyone),
        );
        let (admin, admin_token) = match admin_email {
            Some(email) => {
                let admin = User {
                    status: UserStatus::Active,
                    role: Role::Admin,
                    role_source: RoleSource::Manual,
                    manual_role: Some(Role::Admin),
                    ..new_user(&email, UserSource::Invite, now)
                };
                add_user_records(&mut batch, &admin, &email, &everyone.id);
                audit.record(
                    &mut batch,
                    actor,
                    "user.create",
                    &admin.id,
                    None,
                    Some(&admin),
                );
                let (token, secret) = new_pat(&slug, &admin.id, "bootstrap", None, now);
                put_token(&mut batch, &token);
                audit.record(
                    &mut batch,
                    actor,
                    "token.create",
                    &token.id,
                    None,
                    Some(&token),
                );
                (Some(admin), Some(secret))
            }
            None => (None, None),
        };
        let tenant = self.insert_tenant(&tenant_id, actor, &mut batch)?;
        guard.release()?;
        Ok(TenantCreated {
            tenant,
            admin,
            admin_token,
        })
    }

    /// Sets the tenant's provisioning mode. Switching deletes and deactivates no one; `jit`
    /// needs an SSO configuration.
    pub fn set_mode(
        &self,
        tenant: &str,
        mode: &str,
        caller: &Caller,
    ) -> Result<crate::store::TenantRecord, AppError> {
        caller.require_admin()?;
        let mode = match mode {
            "scim" | "invite_only" | "jit" => mode,
            other => {
                return Err(AppError::BadRequest(format!(
                    "provisioning mode {other:?} is invalid: use scim, jit or invite_only"
                )))
            }
        };
        self.with_tenant(tenant, |slug| {
            if mode == "jit" && !self.has_sso_config(slug)? {
                return Err(AppError::Conflict(
                    "jit needs an SSO configuration: add one to the tenant first".into(),
                ));
            }
            let before = self.tenant(slug)?;
            let after = crate::store::TenantRecord {
                mode: mode.to_owned(),
                ..before.clone()
            };
            let mut batch = Batch::new(slug);
            batch.put_tenant(&after);
            self.audit_log(slug)?.record(
                &mut batch,
                &caller.actor(),
                "tenant.mode",
                slug,
                Some(&before),
                Some(&after),
            );
            self.store.apply(&batch)?;
            Ok(after)
        })
    }

    // --------------------------------------------------------------- users

    /// Invites a user (status `invited`, source `invite`, role `member` from `initial`), and
    /// with `send_password_email` queues a one-time set-password link in the outbox.
    pub fn invite_user(
        &self,
        tenant: &str,
        invite: Invite,
        caller: &Caller,
    ) -> Result<User, AppError> {
        caller.require_admin()?;
        let email = Email::parse(&invite.email).map_err(AppError::BadRequest)?;
        let send_email = invite.send_password_email;
        let user = self.with_tenant(tenant, |slug| {
            let now = now();
            let everyone = self.everyone(slug)?;
            let mut user = User {
                display_name: clean(invite.display_name),
                given_name: clean(invite.given_name),
                family_name: clean(invite.family_name),
                ..new_user(&email, UserSource::Invite, now)
            };
            let mut batch = Batch::new(slug);
            add_user_records(&mut batch, &user, &email, &everyone.id);
            let view = RoleView::default_with_teams(&user.id, vec![everyone.id.clone()]);
            let roles = self.decide_roles(slug, &[RoleState::from(&user)], &view)?;
            (user.role, user.role_source) = roles[0];
            batch.put(&[&user.id], &user);
            let mut audit = self.audit_log(slug)?;
            audit.record(
                &mut batch,
                &caller.actor(),
                "user.invite",
                &user.id,
                None,
                Some(&user),
            );
            if invite.send_password_email {
                self.queue_link(&mut batch, slug, &user, LinkPurpose::SetPassword, now)?;
                audit.record::<()>(
                    &mut batch,
                    &caller.actor(),
                    "user.set_password_link",
                    &user.id,
                    None,
                    None,
                );
            }
            self.store.apply(&batch)?;
            Ok(user)
        })?;
        // Once the write is durable (and visible to the relay's thread).
        if send_email {
            self.outbox_queued.notify_one();
        }
        Ok(user)
    }

    /// One user; a member may read only itself.
    pub fn user(&self, tenant: &str, id: &str, caller: &Caller) -> Result<User, AppError> {
        caller.require_self_or_admin(id)?;
        let slug = self.tenant(tenant)?.slug;
        self.store
            .get(&slug, &[id])?
            .ok_or_else(|| AppError::NotFound(format!("user {id}")))
    }

    /// A page of users, in id order, filtered.
    pub fn users(
        &self,
        tenant: &str,
        query: &UserQuery,
        caller: &Caller,
    ) -> Result<Page<User>, AppError> {
        caller.require_admin()?;
        let slug = self.tenant(tenant)?.slug;
        let limit = query.limit.unwrap_or(50);
        if !(1..=500).contains(&limit) {
            return Err(AppError::BadRequest(format!(
                "limit {limit} is invalid: use 1-500"
            )));
        }
        let in_team: Option<BTreeSet<String>> = match &query.team {
            Some(team) => Some(
                self.store
                    .index(Space::Members, &slug, &[team])?
                    .into_iter()
                    .collect(),
            ),
            None => None,
        };
        let needle = query.q.as_deref().map(str::to_lowercase);
        let (items, more) =
            self.store
                .page::<User>(&slug, &[], query.after.as_deref(), limit, &mut |user| {
                    query.status.is_none_or(|s| s == user.status)
                        && query.source.is_none_or(|s| s == user.source)
                        && in_team
                            .as_ref()
                            .is_none_or(|members| members.contains(&user.id))
                        && needle.as_deref().is_none_or(|n| {
                            user.email.to_lowercase().contains(n)
                                || user
                                    .display_name
                                    .as_deref()
                                    .is_some_and(|d| d.to_lowercase().contains(n))
                        })
                })?;
        let next = more.then(|| items.last().map(|u| u.id.clone())).flatten();
        Ok(Page { items, next })
    }

    /// Deactivates (`false`) or reactivates (`true`) a user. Deactivation keeps the record
    /// and memberships and takes effect on the next request: tokens stop authenticating.
    pub fn set_user_active(
        &self,
        tenant: &str,
        id: &str,
        active: bool,
        caller: &Caller,
    ) -> Result<User, AppError> {
        caller.require_admin()?;
        self.with_tenant(tenant, |slug| {
            let before = self.existing_user(slug, id)?;
            let Some((after, action)) = status_change(&before, active, now()) else {
                return Ok(before);
            };
            if !active
                && caller
                    == &(Caller::Admin {
                        user: id.to_owned(),
                    })
            {
                return Err(AppError::Conflict(
                    "an admin cannot deactivate their own user".into(),
                ));
            }
            let mut batch = Batch::new(slug);
            batch.put(&[id], &after);
            self.audit_log(slug)?.record(
                &mut batch,
                &caller.actor(),
                action,
                id,
                Some(&before),
                Some(&after),
            );
            self.store.apply(&batch)?;
            Ok(after)
        })
    }

    /// Deletes a user, refused (409, naming them) while the user is in any team but
    /// `everyone`. Tokens go with the user; the audit log keeps the history.
    pub fn delete_user(&self, tenant: &str, id: &str, caller: &Caller) -> Result<(), AppError> {
        caller.require_admin()?;
        self.with_tenant(tenant, |slug| {
            let user = self.existing_user(slug, id)?;
            let teams = self.store.index(Space::UserTeams, slug, &[id])?;
            let mut blocking = Vec::new();
            for team_id in &teams {
                if let Some(team) = self.store.get::<Team>(slug, &[team_id])? {
                    if !team.builtin {
                        blocking.push(format!("team {}", team.name));
                    }
                }
            }
            let subject = crate::identity::Subject::User(id.to_owned());
            for resource in self.store.list::<crate::identity::Resource>(slug, &[])? {
                if resource.collaborators.iter().any(|c| c.subject == subject) {
                    blocking.push(format!(
                        "{} {} (collaborator)",
                        resource.kind, resource.name
                    ));
                }
            }
            if !blocking.is_empty() {
                return Err(AppError::Conflict(format!(
                    "user {} cannot be deleted while it belongs to: {}; remove it from them first",
                    user.email,
                    blocking.join(", ")
                )));
            }
            let mut batch = Batch::new(slug);
            self.stage_user_removal(slug, &user, &mut batch)?;
            self.audit_log(slug)?.record(
                &mut batch,
                &caller.actor(),
                "user.delete",
                id,
                Some(&user),
                None::<&User>,
            );
            self.store.apply(&batch)?;
            Ok(())
        })
    }

    /// Puts the removal of `user` into `batch`: the record, its email and password, its
    /// memberships, mappings and tokens, its IdP unique-id bindings, and its SCIM records (a
    /// tombstone stays). The caller has checked what may block the deletion and audits it.
    pub(super) fn stage_user_removal(
        &self,
        slug: &str,
        user: &User,
        batch: &mut Batch,
    ) -> Result<(), StoreError> {
        let id = user.id.as_str();
        for mapping in &user.mappings {
            batch.remove(Space::UserMappings, &[&mapping.idp, &mapping.value]);
        }
        batch
            .remove(Space::Users, &[id])
            .remove(Space::Passwords, &[id])
            .remove(Space::UserEmails, &[&user.email.to_lowercase()]);
        for team_id in self.store.index(Space::UserTeams, slug, &[id])? {
            batch
                .remove(Space::Members, &[&team_id, id])
                .remove(Space::UserTeams, &[id, &team_id]);
        }
        for token_id in self.store.index(Space::OwnerTokens, slug, &[id])? {
            if let Some(sha) = self
                .store
                .get_raw(Space::OwnerTokens, slug, &[id, &token_id])?
            {
                batch.remove(Space::Tokens, &[&String::from_utf8_lossy(&sha)]);
            }
            batch.remove(Space::OwnerTokens, &[id, &token_id]);
        }
        self.stage_subject_unbinding(slug, id, batch)?;
        self.stage_scim_user_removal(slug, user, batch)
    }

    /// Sets (`Some`) or clears (`None`) a user's manual role; the policy decides the
    /// effective role (a manual role always wins; cleared, the derived one applies).
    pub fn set_manual_role(
        &self,
        tenant: &str,
        id: &str,
        role: Option<Role>,
        caller: &Caller,
    ) -> Result<User, AppError> {
        caller.require_admin()?;
        self.with_tenant(tenant, |slug| {
            let before = self.existing_user(slug, id)?;
            let mut view = RoleView::empty();
            view.manual.insert(id, role);
            let (new_role, source) =
                self.decide_roles(slug, &[RoleState::from(&before)], &view)?[0];
            let after = User {
                manual_role: role,
                role: new_role,
                role_source: source,
                updated_at: now(),
                ..before.clone()
            };
            let mut batch = Batch::new(slug);
            batch.put(&[id], &after);
            let action = if role.is_some() {
                "user.role.set"
            } else {
                "user.role.clear"
            };
            self.audit_log(slug)?.record(
                &mut batch,
                &caller.actor(),
                action,
                id,
                Some(&before),
                Some(&after),
            );
            self.store.apply(&batch)?;
            Ok(after)
        })
    }

    /// Replaces a user's identity-provider mappings: each names an IdP of the tenant, and a
    /// `{idp, value}` pair maps one user only.
    pub fn set_user_mappings(
        &self,
        tenant: &str,
        id: &str,
        mappings: Vec<Mapping>,
        caller: &Caller,
    ) -> Result<User, AppError> {
        caller.require_admin()?;
        self.with_tenant(tenant, |slug| {
            let before = self.existing_user(slug, id)?;
            let added: Vec<Mapping> = mappings
                .iter()
                .filter(|m| !before.mappings.contains(m))
                .cloned()
                .collect();
            self.check_mappings(slug, &added)?;
            let mut batch = Batch::new(slug);
            for gone in before.mappings.iter().filter(|m| !mappings.contains(m)) {
                batch.remove(Space::UserMappings, &[&gone.idp, &gone.value]);
            }
            for mapping in &added {
                batch
                    .require_absent(
                        Space::UserMappings,
                        &[&mapping.idp, &mapping.value],
                        format!(
                            "another user already maps {} on {}",
                            mapping.value, mapping.idp
                        ),
                    )
                    .put_raw(
                        Space::UserMappings,
                        &[&mapping.idp, &mapping.value],
                        id.as_bytes(),
                    );
            }
            let after = User {
                mappings,
                updated_at: now(),
                ..before.clone()
            };
            batch.put(&[id], &after);
            self.audit_log(slug)?.record(
                &mut batch,
                &caller.actor(),
                "user.mappings",
                id,
                Some(&before),
                Some(&after),
            );
            self.store.apply(&batch)?;
            Ok(after)
        })
    }

    /// Queues a one-time password-reset link for the user in the outbox.
    pub fn reset_password(&self, tenant: &str, id: &str, caller: &Caller) -> Result<(), AppError> {
        caller.require_admin()?;
        self.with_tenant(tenant, |slug| {
            let user = self.existing_user(slug, id)?;
            if user.status == UserStatus::Deactivated {
                return Err(AppError::Conflict(format!(
                    "user {} is deactivated; reactivate it first",
                    user.email
                )));
            }
            let mut batch = Batch::new(slug);
            self.queue_link(&mut batch, slug, &user, LinkPurpose::ResetPassword, now())?;
            self.audit_log(slug)?.record::<()>(
                &mut batch,
                &caller.actor(),
                "user.reset_password",
                id,
                None,
                None,
            );
            self.store.apply(&batch)?;
            Ok(())
        })?;
        // Once the write is durable (and visible to the relay's thread).
        self.outbox_queued.notify_one();
        Ok(())
    }

    /// The outbox of a tenant (oldest first).
    pub fn outbox(&self, tenant: &str, caller: &Caller) -> Result<Vec<OutboxMessage>, AppError> {
        if caller != &Caller::Operator {
            return Err(AppError::Forbidden("the outbox is for the operator".into()));
        }
        let slug = self.tenant(tenant)?.slug;
        Ok(self.store.list(&slug, &[])?)
    }

    fn queue_link(
        &self,
        batch: &mut Batch,
        tenant: &str,
        user: &User,
        purpose: LinkPurpose,
        now: OffsetDateTime,
    ) -> Result<(), AppError> {
        if user.email.is_empty() {
            return Err(AppError::BadRequest(format!(
                "user {} has no email, so no password link can be sent; its SCIM connection must provide one first",
                user.id
            )));
        }
        let secret = super::new_secret("");
        let sha256 = hex::encode(policy::sha256(secret.as_bytes()));
        // A new link replaces every earlier one of the user; expired links of anyone go too.
        super::password::drop_links(&self.store, batch, tenant, Some(&user.id), now)?;
        let link = Link {
            purpose,
            user: user.id.clone(),
            sha256: sha256.clone(),
            expires_at: now + Duration::hours(super::password::LINK_TTL_HOURS),
        };
        batch.put(&[&sha256], &link);
        let (subject, verb) = match purpose {
            LinkPurpose::SetPassword => ("Set your password", "set"),
            LinkPurpose::ResetPassword => ("Reset your password", "reset"),
        };
        // Built on `public_url` when configured: the stored body is exactly what is mailed.
        let base = self.public_url.as_deref().unwrap_or_default();
        let message = OutboxMessage {
            id: format!("{:020}-{}", now.unix_timestamp_nanos(), new_id("msg_")),
            to: user.email.clone(),
            subject: format!("{subject} for {tenant}"),
            body: format!(
                "Use this link within 24 hours to {verb} your password for {tenant}:\n\n{base}/v1/{tenant}/password?token={secret}\n\nIf you did not expect this email, ignore it.\n"
            ),
            created_at: now,
            sent_at: None,
            attempts: 0,
            last_attempt_at: None,
            last_error: None,
            failed_at: None,
        };
        batch.put(&[&message.id], &message);
        super::outbox::mark_pending(batch, &message.id, None);
        Ok(())
    }

    pub(super) fn existing_user(&self, tenant: &str, id: &str) -> Result<User, AppError> {
        self.store
            .get(tenant, &[id])?
            .ok_or_else(|| AppError::NotFound(format!("user {id}")))
    }

    pub(super) fn everyone(&self, tenant: &str) -> Result<Team, AppError> {
        let id = self
            .store
            .get_raw(Space::TeamNames, tenant, &[EVERYONE])?
            .ok_or_else(|| AppError::Internal(format!("tenant {tenant} has no everyone team")))?;
        let id = String::from_utf8_lossy(&id).into_owned();
        self.store
            .get(tenant, &[&id])?
            .ok_or_else(|| AppError::Internal(format!("team {id} is missing")))
    }

    // --------------------------------------------------------------- teams

    /// Every team of the tenant, with members.
    pub fn teams(&self, tenant: &str, caller: &Caller) -> Result<Vec<TeamView>, AppError> {
        caller.require_admin()?;
        let slug = self.tenant(tenant)?.slug;
        self.store
            .list::<Team>(&slug, &[])?
            .into_iter()
            .map(|team| {
                Ok(TeamView {
                    members: self.store.index(Space::Members, &slug, &[&team.id])?,
                    team,
                })
            })
            .collect()
    }

    /// The teams user `id` belongs to, read through the user → teams index (no scan).
    pub fn user_teams(
        &self,
        tenant: &str,
        id: &str,
        caller: &Caller,
    ) -> Result<Vec<Team>, AppError> {
        caller.require_self_or_admin(id)?;
        let slug = self.tenant(tenant)?.slug;
        let mut teams = Vec::new();
        for team_id in self.store.index(Space::UserTeams, &slug, &[id])? {
            if let Some(team) = self.store.get::<Team>(&slug, &[&team_id])? {
                teams.push(team);
            }
        }
        Ok(teams)
    }

    /// One team with its members.
    pub fn team(&self, tenant: &str, id: &str, caller: &Caller) -> Result<TeamView, AppError> {
        caller.require_admin()?;
        let slug = self.tenant(tenant)?.slug;
        let team = self.existing_team(&slug, id)?;
        Ok(TeamView {
            members: self.store.index(Space::Members, &slug, &[id])?,
            team,
        })
    }

    /// Creates a team (name rule, unique case-insensitively), with members and a role.
    pub fn create_team(
        &self,
        tenant: &str,
        new: NewTeam,
        caller: &Caller,
    ) -> Result<TeamView, AppError> {
        caller.require_admin()?;
        let name = TeamName::parse(&new.name).map_err(AppError::BadRequest)?;
        self.with_tenant(tenant, |slug| {
            self.check_mappings(slug, &new.mappings)?;
            let now = now();
            let team = Team {
                id: new_id("team_"),
                name: name.as_str().to_owned(),
                display_name: None,
                role: new.role,
                mappings: new.mappings.clone(),
                scim: None,
                builtin: false,
                created_at: now,
                updated_at: now,
            };
            let members: BTreeSet<String> = new.members.iter().cloned().collect();
            let mut batch = Batch::new(slug);
            stage_new_team(&mut batch, &team, &name);
            let users = self.users_by_id(slug, &members)?;
            let mut view = RoleView::empty();
            view.team_roles.insert(&team.id, team.role);
            for user in &users {
                let mut teams = self.store.index(Space::UserTeams, slug, &[&user.id])?;
                teams.push(team.id.clone());
                view.user_teams.insert(&user.id, teams);
                batch
                    .put_raw(Space::Members, &[&team.id, &user.id], b"")
                    .put_raw(Space::UserTeams, &[&user.id, &team.id], b"");
            }
            let mut audit = self.audit_log(slug)?;
            let after = TeamView {
                team: team.clone(),
                members: members.iter().cloned().collect(),
            };
            audit.record(
                &mut batch,
                &caller.actor(),
                "team.create",
                &team.id,
                None,
                Some(&after),
            );
            let states = role_states(&users);
            self.recompute(
                slug,
                &states,
                &view,
                &mut batch,
                &mut audit,
                &caller.actor(),
            )?;
            self.store.apply(&batch)?;
            Ok(after)
        })
    }

    /// Renames a team, changes its role (`null` clears it) or its mappings. A role change
    /// recomputes every member's effective role through the policy.
    pub fn patch_team(
        &self,
        tenant: &str,
        id: &str,
        patch: TeamPatch,
        caller: &Caller,
    ) -> Result<TeamView, AppError> {
        caller.require_admin()?;
        let name = patch
            .name
            .as_deref()
            .map(TeamName::parse)
            .transpose()
            .map_err(AppError::BadRequest)?;
        self.with_tenant(tenant, |slug| {
            if let Some(mappings) = &patch.mappings {
                self.check_mappings(slug, mappings)?;
            }
            let before = self.existing_team(slug, id)?;
            let mut after = Team {
                updated_at: now(),
                ..before.clone()
            };
            let mut batch = Batch::new(slug);
            if let Some(name) = &name {
                if before.builtin && name.as_str() != before.name {
                    return Err(AppError::Conflict(format!(
                        "the built-in team {EVERYONE} cannot be renamed"
                    )));
                }
                rename_team(&mut batch, id, &before.name, name);
                after.name = name.as_str().to_owned();
            }
            if let Some(role) = patch.role {
                after.role = role;
            }
            if let Some(mappings) = &patch.mappings {
                after.mappings = mappings.clone();
            }
            batch.put(&[id], &after);
            let members = self.store.index(Space::Members, slug, &[id])?;
            let mut audit = self.audit_log(slug)?;
            audit.record(
                &mut batch,
                &caller.actor(),
                "team.update",
                id,
                Some(&before),
                Some(&after),
            );
            if after.role != before.role {
                // Only the members' role states are needed: read from the side table, not
                // 10,000 whole user records for a team of 10,000.
                let states = self.role_states_of(slug, &members)?;
                let mut view = RoleView::empty();
                view.team_roles.insert(id, after.role);
                view.members.insert(id, &members);
                self.recompute(
                    slug,
                    &states,
                    &view,
                    &mut batch,
                    &mut audit,
                    &caller.actor(),
                )?;
            }
            self.store.apply(&batch)?;
            Ok(TeamView {
                team: after,
                members,
            })
        })
    }

    /// Deletes a team (never `everyone`); its members' roles are recomputed.
    pub fn delete_team(&self, tenant: &str, id: &str, caller: &Caller) -> Result<(), AppError> {
        caller.require_admin()?;
        self.with_tenant(tenant, |slug| {
            let team = self.existing_team(slug, id)?;
            if team.builtin {
                return Err(AppError::Conflict(format!(
                    "the built-in team {EVERYONE} cannot be deleted"
                )));
            }
            let members = self.store.index(Space::Members, slug, &[id])?;
            let mut batch = Batch::new(slug);
            batch
                .remove(Space::Teams, &[id])
                .remove(Space::TeamNames, &[&team.name.to_ascii_lowercase()]);
            let users = self.users_by_id(slug, &members.iter().cloned().collect())?;
            let mut view = RoleView::empty();
            for user in &users {
                batch
                    .remove(Space::Members, &[id, &user.id])
                    .remove(Space::UserTeams, &[&user.id, id]);
                let teams = self
                    .store
                    .index(Space::UserTeams, slug, &[&user.id])?
                    .into_iter()
                    .filter(|t| t != id)
                    .collect();
                view.user_teams.insert(&user.id, teams);
            }
            let mut audit = self.audit_log(slug)?;
            let before = TeamView { team, members };
            audit.record(
                &mut batch,
                &caller.actor(),
                "team.delete",
                id,
                Some(&before),
                None,
            );
            let states = role_states(&users);
            self.recompute(
                slug,
                &states,
                &view,
                &mut batch,
                &mut audit,
                &caller.actor(),
            )?;
            self.store.apply(&batch)?;
            Ok(())
        })
    }

    /// Adds and removes members (`replace`: the members become exactly `add`). Unknown
    /// user ids are refused, naming them. Roles of everyone affected are recomputed.
    pub fn change_members(
        &self,
        tenant: &str,
        id: &str,
        change: MemberChange,
        replace: bool,
        caller: &Caller,
    ) -> Result<TeamView, AppError> {
        caller.require_admin()?;
        self.with_tenant(tenant, |slug| {
            let team = self.existing_team(slug, id)?;
            if team.builtin {
                return Err(AppError::Conflict(format!(
                    "the members of {EVERYONE} are every user; they cannot be changed"
                )));
            }
            let before: BTreeSet<String> = self
                .store
                .index(Space::Members, slug, &[id])?
                .into_iter()
                .collect();
            let mut after = if replace {
                BTreeSet::new()
            } else {
                before.clone()
            };
            after.extend(change.add.iter().cloned());
            for user in &change.remove {
                after.remove(user);
            }
            let mut batch = Batch::new(slug);
            let mut audit = self.audit_log(slug)?;
            self.stage_members(
                slug,
                id,
                &before,
                &after,
                &mut batch,
                &mut audit,
                &caller.actor(),
            )?;
            self.store.apply(&batch)?;
            Ok(TeamView {
                team,
                members: after.into_iter().collect(),
            })
        })
    }

    /// Puts a membership change of team `id` (from `before` to `after`) into `batch`:
    /// index entries, one `team.members` audit entry, and every affected user's role as the
    /// policy decides it. Every id in the difference must be a user.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn stage_members(
        &self,
        slug: &str,
        id: &str,
        before: &BTreeSet<String>,
        after: &BTreeSet<String>,
        batch: &mut Batch,
        audit: &mut AuditLog,
        actor: &str,
    ) -> Result<(), AppError> {
        let added: BTreeSet<String> = after.difference(before).cloned().collect();
        let removed: BTreeSet<String> = before.difference(after).cloned().collect();
        let users = self.users_by_id(slug, &added.union(&removed).cloned().collect())?;
        let mut view = RoleView::empty();
        let ids: Vec<&str> = users.iter().map(|u| u.id.as_str()).collect();
        let user_teams = self.store.index_many(Space::UserTeams, slug, &[], &ids)?;
        for (user, mut teams) in users.iter().zip(user_teams) {
            if added.contains(&user.id) {
                teams.push(id.to_owned());
                batch.put_raw(Space::Members, &[id, &user.id], b"").put_raw(
                    Space::UserTeams,
                    &[&user.id, id],
                    b"",
                );
            } else {
                teams.retain(|t| t != id);
                batch
                    .remove(Space::Members, &[id, &user.id])
                    .remove(Space::UserTeams, &[&user.id, id]);
            }
            view.user_teams.insert(&user.id, teams);
        }
        if !added.is_empty() || !removed.is_empty() {
            // The change, not the whole list: a push of 100 members into a team of 10,000
            // records 100 ids, not 20,000.
            let change = MembershipChange {
                added: &added,
                removed: &removed,
                members: after.len(),
            };
            audit.record(batch, actor, "team.members", id, None, Some(&change));
        }
        self.recompute(slug, &role_states(&users), &view, batch, audit, actor)?;
        Ok(())
    }

    pub(super) fn existing_team(&self, tenant: &str, id: &str) -> Result<Team, AppError> {
        self.store
            .get(tenant, &[id])?
            .ok_or_else(|| AppError::NotFound(format!("team {id}")))
    }

    /// The users with these ids; an unknown id is a 400 that names it.
    pub(super) fn users_by_id(
        &self,
        tenant: &str,
        ids: &BTreeSet<String>,
    ) -> Result<Vec<User>, AppError> {
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut users = Vec::with_capacity(ids.len());
        let mut unknown = Vec::new();
        for (id, user) in ids
            .iter()
            .zip(self.store.get_many::<User>(tenant, &[], &ids)?)
        {
            match user {
                Some(user) => users.push(user),
                None => unknown.push(*id),
            }
        }
        if !unknown.is_empty() {
            return Err(AppError::BadRequest(format!(
                "no such user: {}",
                unknown.join(", ")
            )));
        }
        Ok(users)
    }

    // --------------------------------------------------------------- roles

    /// The role states of the users `ids`, from the users' side table (a user written before
    /// side tables existed is read whole).
    fn role_states_of(&self, tenant: &str, ids: &[String]) -> Result<Vec<RoleState>, AppError> {
        let names: Vec<&str> = ids.iter().map(String::as_str).collect();
        let parts = self.store.sides(Space::UserSides, tenant, &names)?;
        let mut states = Vec::with_capacity(ids.len());
        for (id, part) in ids.iter().zip(parts) {
            let state = match part {
                Some(part) => {
                    let (role, source, manual) = parse_role_part(&part).map_err(|reason| {
                        AppError::from(StoreError::Corrupt {
                            key: format!("{tenant}/user_sides/{id}"),
                            reason,
                        })
                    })?;
                    RoleState {
                        id: id.clone(),
                        role,
                        source,
                        manual,
                    }
                }
                None => RoleState::from(&self.existing_user(tenant, id)?),
            };
            states.push(state);
        }
        Ok(states)
    }

    /// The effective role and source of each user, decided by the tenant's policy in one
    /// batched call, seeing the changes in `view`.
    pub(super) fn decide_roles(
        &self,
        tenant: &str,
        users: &[RoleState],
        view: &RoleView<'_>,
    ) -> Result<Vec<(Role, RoleSource)>, AppError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let inputs = self.role_inputs(tenant, users, view)?;
        let policy = self.current_policy(tenant)?;
        let decisions = policy.effective_role(&self.engine, &inputs).map_err(|e| {
            tracing::warn!(tenant, error = %e, "policy error while deciding roles; nothing changed");
            AppError::PolicyFailed(e)
        })?;
        Ok(decisions.into_iter().map(|d| (d.role, d.source)).collect())
    }

    /// The policy's role input of each user (manual role, roles of the user's teams), as
    /// `view` changes the stored state.
    pub(super) fn role_inputs(
        &self,
        tenant: &str,
        users: &[RoleState],
        view: &RoleView<'_>,
    ) -> Result<Vec<rules::RoleInput>, AppError> {
        let mut team_roles: HashMap<String, Option<Role>> = view
            .team_roles
            .iter()
            .map(|(id, role)| ((*id).to_owned(), *role))
            .collect();
        // Many users (a large team changing role): only teams with a role can give one, so
        // read the tenant's teams once (a tenant has few) and the members of those with a
        // role, instead of every membership of every user.
        let bulk: Option<HashMap<&str, Vec<Role>>> = if users.len() > BULK_USERS {
            let wanted: HashMap<&str, ()> = users
                .iter()
                .filter(|u| !view.user_teams.contains_key(u.id.as_str()))
                .map(|u| (u.id.as_str(), ()))
                .collect();
            let mut by_user: HashMap<&str, Vec<Role>> = HashMap::with_capacity(wanted.len());
            for team in self.store.list::<Team>(tenant, &[])? {
                let role = match view.team_roles.get(team.id.as_str()) {
                    Some(role) => *role,
                    None => team.role,
                };
                team_roles.insert(team.id.clone(), role);
                let Some(role) = role else { continue };
                let read;
                let members = match view.members.get(team.id.as_str()) {
                    Some(members) => *members,
                    None => {
                        read = self.store.index(Space::Members, tenant, &[&team.id])?;
                        &read
                    }
                };
                for member in members {
                    if let Some((user, ())) = wanted.get_key_value(member.as_str()) {
                        by_user.entry(user).or_default().push(role);
                    }
                }
            }
            Some(by_user)
        } else {
            None
        };
        let mut inputs = Vec::with_capacity(users.len());
        for user in users {
            let roles = match (view.user_teams.get(user.id.as_str()), &bulk) {
                (None, Some(by_user)) => by_user.get(user.id.as_str()).cloned().unwrap_or_default(),
                (teams, _) => {
                    let teams = match teams {
                        Some(teams) => teams.clone(),
                        None => self.store.index(Space::UserTeams, tenant, &[&user.id])?,
                    };
                    let mut roles = Vec::new();
                    for team in teams {
                        let role = match team_roles.get(&team) {
                            Some(role) => *role,
                            None => {
                                let role = self
                                    .store
                                    .get::<Team>(tenant, &[&team])?
                                    .and_then(|t| t.role);
                                team_roles.insert(team, role);
                                role
                            }
                        };
                        roles.extend(role);
                    }
                    roles
                }
            };
            let manual = view
                .manual
                .get(user.id.as_str())
                .copied()
                .unwrap_or(user.manual);
            inputs.push(rules::RoleInput {
                manual,
                team_roles: roles,
            });
        }
        Ok(inputs)
    }

    /// Puts every user whose effective role changed into `batch`, audited.
    pub(super) fn recompute(
        &self,
        tenant: &str,
        users: &[RoleState],
        view: &RoleView<'_>,
        batch: &mut Batch,
        audit: &mut AuditLog,
        actor: &str,
    ) -> Result<usize, AppError> {
        let decided = self.decide_roles(tenant, users, view)?;
        let mut changes = Vec::new();
        for (user, (role, source)) in users.iter().zip(decided) {
            if user.role != role || user.source != source {
                // Only the side part: the rest of the record is unchanged.
                let manual = view
                    .manual
                    .get(user.id.as_str())
                    .copied()
                    .unwrap_or(user.manual);
                batch.put_side::<User>(&[&user.id], role_part(role, source, manual));
                changes.push(RoleChange {
                    user: &user.id,
                    before: (user.role, user.source),
                    after: (role, source),
                });
            }
        }
        // One entry for the whole recomputation: a team of 10,000 changes role in one
        // audited step, every user's before and after listed in it.
        if !changes.is_empty() {
            audit.record(
                batch,
                actor,
                "user.role.recompute",
                &format!("{} users", changes.len()),
                None,
                Some(&changes),
            );
        }
        Ok(changes.len())
    }

    /// Recomputes the effective role of every user of the tenant (e.g. after a policy
    /// change); returns how many changed.
    pub fn recompute_all_roles(&self, tenant: &str, caller: &Caller) -> Result<usize, AppError> {
        caller.require_admin()?;
        self.with_tenant(tenant, |slug| {
            let users = self.store.list::<User>(slug, &[])?;
            let mut batch = Batch::new(slug);
            let mut audit = self.audit_log(slug)?;
            let changed = self.recompute(
                slug,
                &role_states(&users),
                &RoleView::empty(),
                &mut batch,
                &mut audit,
                &caller.actor(),
            )?;
            self.store.apply(&batch)?;
            Ok(changed)
        })
    }

    // -------------------------------------------------------------- tokens

    /// Creates a personal access token for a user (an admin's, or the user's own).
    pub fn create_pat(
        &self,
        tenant: &str,
        user: &str,
        new: NewToken,
        caller: &Caller,
    ) -> Result<TokenCreated, AppError> {
        caller.require_self_or_admin(user)?;
        if new.name.trim().is_empty() || new.name.len() > 100 {
            return Err(AppError::BadRequest(
                "a token name must be 1-100 characters".into(),
            ));
        }
        let days = new.expires_in_days.unwrap_or(90);
        if !(1..=3650).contains(&days) {
            return Err(AppError::BadRequest(format!(
                "expires_in_days {days} is invalid: use 1-3650"
            )));
        }
        self.with_tenant(tenant, |slug| {
            let owner = self.existing_user(slug, user)?;
            if owner.status == UserStatus::Deactivated {
                return Err(AppError::Conflict(format!(
                    "user {} is deactivated",
                    owner.email
                )));
            }
            let now = now();
            let (token, secret) = new_pat(
                slug,
                user,
                new.name.trim(),
                Some(now + Duration::days(days)),
                now,
            );
            let mut batch = Batch::new(slug);
            put_token(&mut batch, &token);
            self.audit_log(slug)?.record(
                &mut batch,
                &caller.actor(),
                "token.create",
                &token.id,
                None,
                Some(&token),
            );
            self.store.apply(&batch)?;
            Ok(TokenCreated { token, secret })
        })
    }

    /// A user's tokens (never their secrets).
    pub fn pats(&self, tenant: &str, user: &str, caller: &Caller) -> Result<Vec<Token>, AppError> {
        caller.require_self_or_admin(user)?;
        let slug = self.tenant(tenant)?.slug;
        self.existing_user(&slug, user)?;
        self.owner_tokens(&slug, user)
    }

    pub(super) fn owner_tokens(&self, tenant: &str, owner: &str) -> Result<Vec<Token>, AppError> {
        let mut tokens = Vec::new();
        for token_id in self.store.index(Space::OwnerTokens, tenant, &[owner])? {
            if let Some(sha) =
                self.store
                    .get_raw(Space::OwnerTokens, tenant, &[owner, &token_id])?
            {
                tokens.extend(
                    self.store
                        .get::<Token>(tenant, &[&String::from_utf8_lossy(&sha)])?,
                );
            }
        }
        Ok(tokens)
    }

    /// Revokes one token (`Some(id)`) or every token (`None`) of a user, at once.
    pub fn revoke_pats(
        &self,
        tenant: &str,
        user: &str,
        token: Option<&str>,
        caller: &Caller,
    ) -> Result<usize, AppError> {
        caller.require_self_or_admin(user)?;
        self.with_tenant(tenant, |slug| {
            self.existing_user(slug, user)?;
            let now = now();
            let tokens = self.owner_tokens(slug, user)?;
            if let Some(id) = token {
                if !tokens.iter().any(|t| t.id == id) {
                    return Err(AppError::NotFound(format!("token {id}")));
                }
            }
            let mut batch = Batch::new(slug);
            let mut audit = self.audit_log(slug)?;
            let mut revoked = 0;
            for before in tokens
                .iter()
                .filter(|t| token.is_none_or(|id| t.id == id) && t.revoked_at.is_none())
            {
                let after = Token {
                    revoked_at: Some(now),
                    ..before.clone()
                };
                batch.put(&[&after.sha256], &after);
                audit.record(
                    &mut batch,
                    &caller.actor(),
                    "token.revoke",
                    &after.id,
                    Some(before),
                    Some(&after),
                );
                revoked += 1;
            }
            self.store.apply(&batch)?;
            Ok(revoked)
        })
    }

    // --------------------------------------------------------------- audit

    /// Audit entries after sequence number `after`, oldest first, at most `limit`.
    pub fn audit(
        &self,
        tenant: &str,
        after: u64,
        limit: usize,
        caller: &Caller,
    ) -> Result<Page<AuditEntry>, AppError> {
        self.audit_matching(tenant, after, limit, &AuditFilter::default(), caller)
    }

    /// One page of the audit entries `filter` accepts (the page holds up to `limit` of them).
    pub fn audit_matching(
        &self,
        tenant: &str,
        after: u64,
        limit: usize,
        filter: &AuditFilter,
        caller: &Caller,
    ) -> Result<Page<AuditEntry>, AppError> {
        caller.require_admin()?;
        if !(1..=1000).contains(&limit) {
            return Err(AppError::BadRequest(format!(
                "limit {limit} is invalid: use 1-1000"
            )));
        }
        let slug = self.tenant(tenant)?.slug;
        // Keys are the zero-padded sequence number: the page starts right after `after`.
        let (items, more) = self.store.page::<AuditEntry>(
            &slug,
            &[],
            Some(&format!("{after:020}")),
            limit,
            &mut |entry| filter.accepts(entry),
        )?;
        let next = more.then(|| items.last().map(|e| e.seq.to_string()).unwrap_or_default());
        Ok(Page { items, next })
    }

    pub(super) fn audit_log(&self, tenant: &str) -> Result<AuditLog, AppError> {
        let seq = match self.store.get_raw(Space::Counters, tenant, &["audit"])? {
            Some(bytes) => u64::from_be_bytes(
                bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| AppError::Internal("audit counter is unreadable".into()))?,
            ),
            None => 0,
        };
        Ok(AuditLog { seq })
    }
}

/// One user's role change inside a recomputation's audit entry.
#[derive(Serialize)]
struct RoleChange<'a> {
    user: &'a str,
    before: (Role, RoleSource),
    after: (Role, RoleSource),
}

/// Audit entries added to a batch, numbered from the tenant's counter (read under the
/// tenant's write lock, so numbers never repeat).
pub(super) struct AuditLog {
    seq: u64,
}

impl AuditLog {
    pub(super) fn record<T: Serialize>(
        &mut self,
        batch: &mut Batch,
        actor: &str,
        action: &str,
        target: &str,
        before: Option<&T>,
        after: Option<&T>,
    ) {
        self.seq += 1;
        let entry = AuditEntry {
            seq: self.seq,
            at: now(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            before: before.map(scrub),
            after: after.map(scrub),
        };
        batch.put(&[&format!("{:020}", self.seq)], &entry).put_raw(
            Space::Counters,
            &["audit"],
            &self.seq.to_be_bytes(),
        );
    }
}

/// Moves a team's name index entry to `name` (refused if another team has it; a change of
/// case alone keeps the entry).
pub(super) fn rename_team(batch: &mut Batch, id: &str, old: &str, name: &TeamName) {
    if name.key() != old.to_ascii_lowercase() {
        batch
            .require_absent(
                Space::TeamNames,
                &[&name.key()],
                format!("a team named {} already exists", name.as_str()),
            )
            .remove(Space::TeamNames, &[&old.to_ascii_lowercase()])
            .put_raw(Space::TeamNames, &[&name.key()], id.as_bytes());
    }
}

/// Fields that never reach the audit log (hashes of passwords and tokens, secrets).
const SECRET_FIELDS: [&str; 3] = ["password_hash", "sha256", "secret"];

/// A value as JSON without secrets. Encoded once, straight to text: a recomputation that
/// lists 10,000 role changes costs one serialisation, not a tree of maps.
fn scrub<T: Serialize>(value: &T) -> Box<RawValue> {
    let text = serde_json::to_string(value).unwrap_or_else(|_| "null".into());
    let has_secret = SECRET_FIELDS
        .iter()
        .any(|field| text.contains(&format!("\"{field}\"")));
    let text = if has_secret {
        let mut json: serde_json::Value =
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        if let Some(object) = json.as_object_mut() {
            for secret in SECRET_FIELDS {
                object.remove(secret);
            }
        }
        json.to_string()
    } else {
        text
    };
    RawValue::from_string(text).unwrap_or_else(|_| RawValue::NULL.to_owned())
}

/// Puts a new team into `batch` with its name taken: the batch fails when a team of that
/// name exists (case-insensitively) by the time it is applied.
pub(super) fn stage_new_team(batch: &mut Batch, team: &Team, name: &TeamName) {
    batch
        .require_absent(
            Space::TeamNames,
            &[&name.key()],
            format!("a team named {} already exists", name.as_str()),
        )
        .put(&[&team.id], team)
        .put_raw(Space::TeamNames, &[&name.key()], team.id.as_bytes());
}

impl<'a> RoleView<'a> {
    pub(super) fn empty() -> Self {
        RoleView {
            team_roles: HashMap::new(),
            user_teams: HashMap::new(),
            manual: HashMap::new(),
            members: HashMap::new(),
        }
    }

    pub(super) fn default_with_teams(user: &'a str, teams: Vec<String>) -> Self {
        let mut view = RoleView::empty();
        view.user_teams.insert(user, teams);
        view
    }
}

/// The user after deactivation (`false`) or reactivation (`true`) and its audit action;
/// `None` when nothing changes. Deactivation is a status: tokens and sessions check it on
/// every request, so access ends with the write that stores it.
pub(super) fn status_change(
    before: &User,
    active: bool,
    now: OffsetDateTime,
) -> Option<(User, &'static str)> {
    let (status, action) = if active {
        (UserStatus::Active, "user.reactivate")
    } else {
        (UserStatus::Deactivated, "user.deactivate")
    };
    (before.status != status).then(|| {
        (
            User {
                status,
                updated_at: now,
                deactivated_at: if active {
                    before.deactivated_at
                } else {
                    Some(now)
                },
                ..before.clone()
            },
            action,
        )
    })
}

pub(super) fn new_user(email: &Email, source: UserSource, now: OffsetDateTime) -> User {
    new_user_with(email.as_str(), source, now)
}

/// A new user record with `email` as given (empty: a SCIM user without an email).
pub(super) fn new_user_with(email: &str, source: UserSource, now: OffsetDateTime) -> User {
    User {
        id: new_id("usr_"),
        email: email.to_owned(),
        display_name: None,
        given_name: None,
        family_name: None,
        external_id: None,
        status: UserStatus::Invited,
        source,
        role: Role::Member,
        role_source: RoleSource::Initial,
        manual_role: None,
        password_hash: None,
        mappings: Vec::new(),
        deactivated_at: None,
        created_at: now,
        updated_at: now,
    }
}

/// The records of a new user: itself, its email index (unique), `everyone` membership.
pub(super) fn add_user_records(batch: &mut Batch, user: &User, email: &Email, everyone: &str) {
    batch
        .require_absent(
            Space::UserEmails,
            &[&email.key()],
            format!("a user with email {} already exists", email.as_str()),
        )
        .put(&[&user.id], user)
        .put_raw(Space::UserEmails, &[&email.key()], user.id.as_bytes())
        .put_raw(Space::Members, &[everyone, &user.id], b"")
        .put_raw(Space::UserTeams, &[&user.id, everyone], b"");
}

/// The records of a new user without an email (a SCIM user whose `userName` is not an
/// address and who has no `emails`): itself and its `everyone` membership, no email index.
pub(super) fn add_user_records_without_email(batch: &mut Batch, user: &User, everyone: &str) {
    batch
        .put(&[&user.id], user)
        .put_raw(Space::Members, &[everyone, &user.id], b"")
        .put_raw(Space::UserTeams, &[&user.id, everyone], b"");
}

fn new_pat(
    tenant: &str,
    owner: &str,
    name: &str,
    expires_at: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> (Token, String) {
    new_token(TokenKind::Pat, tenant, owner, name, expires_at, now)
}

/// A new token and its secret, `<prefix><tenant>_<random>`: the tenant in the secret lets
/// a request on another tenant's route be told apart without a lookup.
pub(super) fn new_token(
    kind: TokenKind,
    tenant: &str,
    owner: &str,
    name: &str,
    expires_at: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> (Token, String) {
    let prefix = match kind {
        TokenKind::Pat => PAT_PREFIX,
        TokenKind::VirtualAccount => VA_PREFIX,
    };
    let secret = super::new_secret(&format!("{prefix}{tenant}_"));
    let token = Token {
        id: new_id("tok_"),
        kind,
        owner: owner.to_owned(),
        name: name.to_owned(),
        sha256: hex::encode(policy::sha256(secret.as_bytes())),
        created_at: now,
        expires_at,
        revoked_at: None,
    };
    (token, secret)
}

pub(super) fn put_token(batch: &mut Batch, token: &Token) {
    batch.put(&[&token.sha256], token).put_raw(
        Space::OwnerTokens,
        &[&token.owner, &token.id],
        token.sha256.as_bytes(),
    );
}

pub(super) fn clean(value: Option<String>) -> Option<String> {
    value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}
