//! Migration from the legacy model: `migrate` plans (pure), this module reads the tenant,
//! asks the policy for roles, and applies a plan as one audited batch under the tenant's
//! write lock, reusing the record writers of `identity` and `directory`.

use super::directory::{
    sso_view, stage_identity_provider, stage_new_va, stage_va_mappings, IdpInput,
};
use super::identity::{add_user_records, new_user, stage_new_team, Caller, RoleState, RoleView};
use super::{now, App, AppError};
use crate::identity::{
    new_id, Collaborator, Email, IdentityProvider, Resource, SsoConfig, Subject, Team, TeamName,
    User, VirtualAccount,
};
use crate::migrate::{
    self, Action, CollaboratorStep, Current, CurrentIdp, Legacy, MigrateError, Plan,
    PlannedSubject, RoleSetBy, Target,
};
use crate::store::{Batch, Space};
use gatehouse_rules::{Role, RoleSource, UserSource};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

impl From<MigrateError> for AppError {
    fn from(e: MigrateError) -> Self {
        AppError::BadRequest(e.to_string())
    }
}

/// What an apply did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MigrationApplied {
    /// Whether anything changed (false: the tenant already matched the plan).
    pub applied: bool,
    /// How many steps changed something.
    pub changes: usize,
    /// The plan that was carried out.
    pub plan: Plan,
    /// What is left to a human.
    pub human_steps: Vec<String>,
}

impl App {
    /// The plan for a legacy export on `tenant`; changes nothing.
    pub fn migration_plan(
        &self,
        tenant: &str,
        export: &[u8],
        caller: &Caller,
    ) -> Result<Plan, AppError> {
        caller.require_admin()?;
        let legacy = migrate::parse(export)?;
        let slug = self.tenant(tenant)?.slug;
        let (plan, _) = self.plan_for(&slug, &legacy)?;
        Ok(plan)
    }

    /// Carries out the plan for a legacy export in one audited batch; with `reviewed`, only
    /// if the plan's digest is still that one. A second apply changes nothing.
    pub fn migration_apply(
        &self,
        tenant: &str,
        export: &[u8],
        reviewed: Option<&str>,
        caller: &Caller,
    ) -> Result<MigrationApplied, AppError> {
        caller.require_admin()?;
        let legacy = migrate::parse(export)?;
        self.with_tenant(tenant, |slug| {
            let (plan, roles) = self.plan_for(slug, &legacy)?;
            if let Some(reviewed) = reviewed {
                if reviewed != plan.digest {
                    return Err(AppError::Conflict(format!(
                        "the plan changed since it was reviewed (reviewed {reviewed}, now {}): plan again and review it",
                        plan.digest
                    )));
                }
            }
            if plan.changes > 0 {
                let batch = self.migration_batch(slug, &legacy, &plan, &roles, caller)?;
                self.store.apply(&batch)?;
            }
            Ok(MigrationApplied {
                applied: plan.changes > 0,
                changes: plan.changes,
                human_steps: plan.human_steps.clone(),
                plan,
            })
        })
    }

    /// The plan and each legacy user's role after the migration (decided by the policy).
    fn plan_for(
        &self,
        slug: &str,
        legacy: &Legacy,
    ) -> Result<(Plan, Vec<(Role, RoleSource)>), AppError> {
        let current = self.current(slug)?;
        let roles = self.migrated_roles(slug, legacy)?;
        let plan = migrate::plan(legacy, &current, &roles);
        // The providers carried over must pass the checks the admin API applies.
        for step in &plan.identity_providers {
            let input = idp_input(step);
            self.check_idp(&input)
                .and_then(|()| self.check_issuer_sharing(slug, &input))
                .map_err(|e| {
                    AppError::BadRequest(format!(
                        "identity provider {} (from external identity {}) fails the identity provider checks: {e}",
                        step.name,
                        step.external_identities.join(", ")
                    ))
                })?;
        }
        Ok((plan, roles))
    }

    /// The effective role of each legacy user after the migration: an existing user keeps
    /// its own; a new one has its manual role (if it was set by hand) and `everyone`.
    fn migrated_roles(
        &self,
        slug: &str,
        legacy: &Legacy,
    ) -> Result<Vec<(Role, RoleSource)>, AppError> {
        let everyone = self.everyone(slug)?;
        let mut states = Vec::with_capacity(legacy.users.len());
        for (i, u) in legacy.users.iter().enumerate() {
            let existing = match self
                .store
                .get_raw(Space::UserEmails, slug, &[&u.email.key()])?
            {
                Some(id) => self
                    .store
                    .get::<User>(slug, &[&String::from_utf8_lossy(&id)])?,
                None => None,
            };
            states.push(match existing {
                Some(user) => (RoleState::from(&user), false),
                None => (
                    RoleState {
                        id: format!("migration:{i}"),
                        role: Role::Member,
                        source: RoleSource::Initial,
                        manual: (u.role_set_by == RoleSetBy::Manual).then_some(u.role),
                    },
                    true,
                ),
            });
        }
        let mut view = RoleView::empty();
        for (state, new) in &states {
            if *new {
                view.user_teams
                    .insert(state.id.as_str(), vec![everyone.id.clone()]);
            }
        }
        let states: Vec<RoleState> = states.iter().map(|(s, _)| s.clone_state()).collect();
        self.decide_roles(slug, &states, &view)
    }

    /// What the tenant holds now, as the plan needs it.
    fn current(&self, slug: &str) -> Result<Current, AppError> {
        let users: Vec<User> = self.store.list(slug, &[])?;
        let teams: Vec<Team> = self.store.list(slug, &[])?;
        let vas: Vec<VirtualAccount> = self.store.list(slug, &[])?;
        let user_email: HashMap<&str, &str> = users
            .iter()
            .map(|u| (u.id.as_str(), u.email.as_str()))
            .collect();
        let team_name: HashMap<&str, &str> = teams
            .iter()
            .map(|t| (t.id.as_str(), t.name.as_str()))
            .collect();
        let va_name: HashMap<&str, &str> = vas
            .iter()
            .map(|v| (v.id.as_str(), v.name.as_str()))
            .collect();
        let mut resources = BTreeMap::new();
        for r in self.store.list::<Resource>(slug, &[])? {
            let collaborators = r
                .collaborators
                .iter()
                .map(|c| CollaboratorStep {
                    subject: match &c.subject {
                        Subject::User(id) => PlannedSubject::User(
                            user_email
                                .get(id.as_str())
                                .map_or(id.clone(), |e| (*e).to_owned()),
                        ),
                        Subject::Team(id) => PlannedSubject::Team(
                            team_name
                                .get(id.as_str())
                                .map_or(id.clone(), |n| (*n).to_owned()),
                        ),
                        Subject::VirtualAccount(id) => PlannedSubject::VirtualAccount(
                            va_name
                                .get(id.as_str())
                                .map_or(id.clone(), |n| (*n).to_owned()),
                        ),
                        Subject::ExternalIdentity(name) => {
                            PlannedSubject::ExternalIdentity(name.clone())
                        }
                    },
                    role: c.role.clone(),
                })
                .collect();
            resources.insert((r.kind.clone(), r.name.clone()), collaborators);
        }
        Ok(Current {
            tenant: slug.to_owned(),
            mode: self.tenant(slug)?.mode,
            sso_ids: self
                .store
                .list::<SsoConfig>(slug, &[])?
                .into_iter()
                .map(|s| s.id)
                .collect(),
            idps: self
                .store
                .list::<IdentityProvider>(slug, &[])?
                .into_iter()
                .map(|i| CurrentIdp {
                    name: i.name,
                    issuer: i.issuer,
                    jwks_uri: i.jwks_uri,
                    audiences: i.audiences,
                    algorithms: i.algorithms,
                    user_claim: i.user_claim,
                    va_name_claim: i.va_name_claim,
                    team_claim: i.team_claim,
                })
                .collect(),
            users: users.iter().map(|u| u.email.to_lowercase()).collect(),
            vas: vas
                .iter()
                .map(|v| (v.name.clone(), v.mappings.clone()))
                .collect(),
            teams: teams
                .iter()
                .map(|t| (t.name.to_ascii_lowercase(), t.mappings.clone()))
                .collect(),
            resources,
        })
    }

    /// The whole migration as one batch with its audit entries.
    fn migration_batch(
        &self,
        slug: &str,
        legacy: &Legacy,
        plan: &Plan,
        roles: &[(Role, RoleSource)],
        caller: &Caller,
    ) -> Result<Batch, AppError> {
        let actor = caller.actor();
        let now = now();
        let mut batch = Batch::new(slug);
        let mut audit = self.audit_log(slug)?;

        if let Some(step) = plan.sso.as_ref().filter(|s| s.action == Action::Create) {
            let config = SsoConfig {
                id: step.id.clone(),
                issuer: step.issuer.clone(),
                client_id: step.client_id.clone(),
                client_secret: None,
                discovery_url: step.discovery_url.clone(),
                jwks_uri: step.jwks_uri.clone(),
                email_claim: step.email_claim.clone().unwrap_or_else(|| "email".into()),
                unique_id_claim: "sub".into(),
                scim_token_sha256: None,
                scim_token_created_at: None,
                created_at: now,
                updated_at: now,
            };
            crate::netguard::check_fetch_url(
                config
                    .discovery_url
                    .as_deref()
                    .or(config.jwks_uri.as_deref())
                    .unwrap_or(""),
                self.allow_private_urls,
            )
            .map_err(|e| AppError::BadRequest(format!("SSO configuration {}: {e}", config.id)))?;
            batch.put(&[&config.id], &config);
            audit.record(
                &mut batch,
                &actor,
                "sso.create",
                &config.id,
                None,
                Some(&sso_view(slug, &config)),
            );
        }

        if plan.provisioning_mode.action != Action::Unchanged {
            let before = self.tenant(slug)?;
            let after = crate::store::TenantRecord {
                mode: plan.provisioning_mode.to.clone(),
                ..before.clone()
            };
            batch.put_tenant(&after);
            audit.record(
                &mut batch,
                &actor,
                "tenant.mode",
                slug,
                Some(&before),
                Some(&after),
            );
        }

        for step in plan
            .identity_providers
            .iter()
            .filter(|s| s.action != Action::Unchanged)
        {
            let before: Option<IdentityProvider> = self.store.get(slug, &[&step.name])?;
            let input = idp_input(step);
            let idp = IdentityProvider {
                name: input.name,
                issuer: input.issuer,
                jwks_uri: input.jwks_uri,
                discovery_url: None,
                audiences: input.audiences,
                algorithms: input.algorithms,
                leeway_seconds: before
                    .as_ref()
                    .map_or(input.leeway_seconds, |b| b.leeway_seconds),
                user_claim: input.user_claim,
                va_name_claim: input.va_name_claim,
                team_claim: input.team_claim,
                created_at: before.as_ref().map_or(now, |b| b.created_at),
                updated_at: now,
            };
            stage_identity_provider(&mut batch, before.as_ref(), &idp);
            let action = if before.is_some() {
                "identity_provider.update"
            } else {
                "identity_provider.create"
            };
            audit.record(
                &mut batch,
                &actor,
                action,
                &idp.name,
                before.as_ref(),
                Some(&idp),
            );
        }

        // Users: ids of everyone a collaborator may name.
        let everyone = self.everyone(slug)?;
        let mut user_ids: HashMap<String, String> = HashMap::new();
        for ((step, legacy_user), (role, source)) in plan.users.iter().zip(&legacy.users).zip(roles)
        {
            let key = legacy_user.email.key();
            if step.action != Action::Create {
                if let Some(id) = self.store.get_raw(Space::UserEmails, slug, &[&key])? {
                    user_ids.insert(key, String::from_utf8_lossy(&id).into_owned());
                }
                continue;
            }
            let email: &Email = &legacy_user.email;
            let user = User {
                display_name: step.display_name.clone(),
                given_name: step.given_name.clone(),
                family_name: step.family_name.clone(),
                status: step.status,
                manual_role: step.manual_role,
                role: *role,
                role_source: *source,
                ..new_user(email, UserSource::Migration, now)
            };
            add_user_records(&mut batch, &user, email, &everyone.id);
            audit.record(
                &mut batch,
                &actor,
                "user.create",
                &user.id,
                None,
                Some(&user),
            );
            user_ids.insert(key, user.id.clone());
        }

        // Virtual accounts.
        let mut va_ids: HashMap<String, String> = HashMap::new();
        for step in &plan.targets {
            let Target::VirtualAccount { name, mapping } = &step.target else {
                continue;
            };
            mapping.validate().map_err(AppError::BadRequest)?;
            let existing = match self.store.get_raw(Space::VaNames, slug, &[name])? {
                Some(id) => self
                    .store
                    .get::<VirtualAccount>(slug, &[&String::from_utf8_lossy(&id)])?,
                None => None,
            };
            match existing {
                Some(before) => {
                    va_ids.insert(name.clone(), before.id.clone());
                    if before.mappings.contains(mapping) {
                        continue;
                    }
                    let mut after = before.clone();
                    after.mappings.push(mapping.clone());
                    after.updated_at = now;
                    batch.put(&[&after.id], &after);
                    stage_va_mappings(&mut batch, &after.id, &before.mappings, &after.mappings);
                    audit.record(
                        &mut batch,
                        &actor,
                        "virtual_account.update",
                        &after.id,
                        Some(&before),
                        Some(&after),
                    );
                }
                None => {
                    let va = VirtualAccount {
                        id: new_id("va_"),
                        name: name.clone(),
                        enabled: true,
                        role: Role::Member,
                        mappings: vec![mapping.clone()],
                        created_at: now,
                        updated_at: now,
                    };
                    stage_new_va(&mut batch, &va);
                    stage_va_mappings(&mut batch, &va.id, &[], &va.mappings);
                    audit.record(
                        &mut batch,
                        &actor,
                        "virtual_account.create",
                        &va.id,
                        None,
                        Some(&va),
                    );
                    va_ids.insert(name.clone(), va.id);
                }
            }
        }

        // Teams.
        let mut team_ids: HashMap<String, String> = HashMap::new();
        for step in &plan.teams {
            let name = TeamName::parse(&step.name).map_err(AppError::BadRequest)?;
            for mapping in &step.mappings {
                mapping.validate().map_err(AppError::BadRequest)?;
            }
            let existing = match self.store.get_raw(Space::TeamNames, slug, &[&name.key()])? {
                Some(id) => self
                    .store
                    .get::<Team>(slug, &[&String::from_utf8_lossy(&id)])?,
                None => None,
            };
            match existing {
                Some(before) => {
                    team_ids.insert(name.key(), before.id.clone());
                    if step.action == Action::Unchanged {
                        continue;
                    }
                    let after = Team {
                        mappings: step.mappings.clone(),
                        updated_at: now,
                        ..before.clone()
                    };
                    batch.put(&[&after.id], &after);
                    audit.record(
                        &mut batch,
                        &actor,
                        "team.update",
                        &after.id,
                        Some(&before),
                        Some(&after),
                    );
                }
                None => {
                    let team = Team {
                        id: new_id("team_"),
                        name: name.as_str().to_owned(),
                        display_name: None,
                        role: None,
                        mappings: step.mappings.clone(),
                        scim: None,
                        builtin: false,
                        created_at: now,
                        updated_at: now,
                    };
                    stage_new_team(&mut batch, &team, &name);
                    audit.record(
                        &mut batch,
                        &actor,
                        "team.create",
                        &team.id,
                        None,
                        Some(&team),
                    );
                    team_ids.insert(name.key(), team.id);
                }
            }
        }

        // Resources and their collaborators.
        let existing: Vec<Resource> = self.store.list(slug, &[])?;
        for step in plan
            .resources
            .iter()
            .filter(|s| s.action != Action::Unchanged)
        {
            let mut collaborators = Vec::with_capacity(step.collaborators.len());
            for c in &step.collaborators {
                let subject =
                    match &c.subject {
                        PlannedSubject::User(email) => {
                            let key = email.to_lowercase();
                            Subject::User(user_ids.get(&key).cloned().ok_or_else(|| {
                                AppError::Conflict(format!("user {email} is missing"))
                            })?)
                        }
                        PlannedSubject::Team(name) => {
                            let key = name.to_ascii_lowercase();
                            Subject::Team(team_ids.get(&key).cloned().ok_or_else(|| {
                                AppError::Conflict(format!("team {name} is missing"))
                            })?)
                        }
                        PlannedSubject::VirtualAccount(name) => {
                            Subject::VirtualAccount(va_ids.get(name).cloned().ok_or_else(|| {
                                AppError::Conflict(format!("virtual account {name} is missing"))
                            })?)
                        }
                        PlannedSubject::ExternalIdentity(name) => {
                            Subject::ExternalIdentity(name.clone())
                        }
                    };
                collaborators.push(Collaborator {
                    subject,
                    role: c.role.clone(),
                });
            }
            match existing
                .iter()
                .find(|r| r.kind == step.kind && r.name == step.name)
            {
                Some(before) => {
                    let after = Resource {
                        collaborators,
                        ..before.clone()
                    };
                    batch.put(&[&after.id], &after);
                    audit.record(
                        &mut batch,
                        &actor,
                        "resource.collaborators",
                        &after.id,
                        Some(before),
                        Some(&after),
                    );
                }
                None => {
                    let resource = Resource {
                        id: new_id("res_"),
                        kind: step.kind.clone(),
                        name: step.name.clone(),
                        collaborators,
                        created_by: actor.clone(),
                        created_at: now,
                    };
                    batch.put(&[&resource.id], &resource);
                    audit.record(
                        &mut batch,
                        &actor,
                        "resource.create",
                        &resource.id,
                        None,
                        Some(&resource),
                    );
                }
            }
        }

        #[derive(Serialize)]
        struct Summary<'a> {
            digest: &'a str,
            changes: usize,
            role_changes: usize,
        }
        audit.record(
            &mut batch,
            &actor,
            "migration.apply",
            slug,
            None,
            Some(&Summary {
                digest: &plan.digest,
                changes: plan.changes,
                role_changes: plan.role_changes.len(),
            }),
        );
        Ok(batch)
    }
}

/// The admin API's identity-provider input for a planned provider.
fn idp_input(step: &migrate::IdpStep) -> IdpInput {
    IdpInput {
        name: step.name.clone(),
        issuer: step.issuer.clone(),
        jwks_uri: Some(step.jwks_uri.clone()),
        discovery_url: None,
        audiences: step.audiences.clone(),
        algorithms: step.algorithms.clone(),
        leeway_seconds: 60,
        user_claim: step.user_claim.clone(),
        va_name_claim: step.va_name_claim.clone(),
        team_claim: step.team_claim.clone(),
    }
}

impl RoleState {
    fn clone_state(&self) -> RoleState {
        RoleState {
            id: self.id.clone(),
            role: self.role,
            source: self.source,
            manual: self.manual,
        }
    }
}
