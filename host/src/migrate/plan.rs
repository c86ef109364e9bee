//! The plan: what a legacy export becomes in the new model, given what the tenant holds
//! now. Pure: the caller reads the tenant and asks the policy for roles.

use super::{Legacy, LegacySubject, RoleSetBy, UsedBy};
use crate::identity::Mapping;
use gatehouse_rules::{Role, RoleSource, UserStatus};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

/// What a step does to the tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Create,
    Update,
    Unchanged,
}

/// An identity provider as the tenant holds it now (the fields the plan carries over).
#[derive(Debug, Clone, PartialEq)]
pub struct CurrentIdp {
    pub name: String,
    pub issuer: String,
    pub jwks_uri: Option<String>,
    pub audiences: Vec<String>,
    pub algorithms: Vec<String>,
    pub user_claim: Option<String>,
    pub va_name_claim: Option<String>,
    pub team_claim: Option<String>,
}

/// What the tenant holds now, as far as the plan needs it.
#[derive(Debug, Clone, Default)]
pub struct Current {
    pub tenant: String,
    pub mode: String,
    pub sso_ids: BTreeSet<String>,
    pub idps: Vec<CurrentIdp>,
    /// Users by email key.
    pub users: BTreeSet<String>,
    /// Virtual accounts by name, with their mappings.
    pub vas: BTreeMap<String, Vec<Mapping>>,
    /// Teams by name key, with their mappings.
    pub teams: BTreeMap<String, Vec<Mapping>>,
    /// Resources by (kind, name), with their collaborators in plan terms.
    pub resources: BTreeMap<(String, String), Vec<CollaboratorStep>>,
}

/// A collaborator's subject, by name (ids are made when the plan is applied).
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum PlannedSubject {
    /// A user, by email.
    User(String),
    /// A team, by name.
    Team(String),
    /// A virtual account, by name.
    VirtualAccount(String),
    /// A legacy External Identity still named on a resource.
    ExternalIdentity(String),
}

/// The provisioning mode the tenant gets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModeStep {
    pub from: String,
    pub to: String,
    pub reason: String,
    pub action: Action,
}

/// The SSO configuration carried over (authentication only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SsoStep {
    pub id: String,
    pub issuer: String,
    pub client_id: String,
    pub discovery_url: Option<String>,
    pub jwks_uri: Option<String>,
    pub email_claim: Option<String>,
    pub action: Action,
}

/// An identity provider carried over unchanged from the External Identities of one issuer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IdpStep {
    pub name: String,
    pub issuer: String,
    pub jwks_uri: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<String>,
    pub user_claim: Option<String>,
    pub va_name_claim: Option<String>,
    pub team_claim: Option<String>,
    pub external_identities: Vec<String>,
    pub action: Action,
}

/// A legacy user carried over (source `migration`); an existing user is left as it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UserStep {
    pub email: String,
    pub display_name: Option<String>,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    pub status: UserStatus,
    /// The manual role kept (a role set by hand in the legacy tenant).
    pub manual_role: Option<Role>,
    pub action: Action,
}

/// What an External Identity becomes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Target {
    /// A virtual account whose mapping matches the identity provider's VA name claim.
    VirtualAccount { name: String, mapping: Mapping },
    /// Teams whose mappings match values of the team claim; tokens resolve to users.
    Teams {
        teams: Vec<String>,
        mappings: Vec<Mapping>,
    },
}

/// One External Identity's replacement, with the reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TargetStep {
    pub external_identity: String,
    pub idp: String,
    pub target: Target,
    pub reason: String,
    pub action: Action,
}

/// A team the plan creates or adds mappings to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TeamStep {
    pub name: String,
    /// Every mapping the team has after the plan.
    pub mappings: Vec<Mapping>,
    pub action: Action,
}

/// A collaborator on a resource, in plan terms.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
pub struct CollaboratorStep {
    pub subject: PlannedSubject,
    pub role: String,
}

/// A legacy collaborator replaced by its new identities.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Replacement {
    pub external_identity: String,
    pub role: String,
    pub by: Vec<PlannedSubject>,
}

/// A resource with its collaborators after the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ResourceStep {
    pub kind: String,
    pub name: String,
    pub collaborators: Vec<CollaboratorStep>,
    pub replacements: Vec<Replacement>,
    pub action: Action,
}

/// A suggested fix for a role that changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Fix {
    /// Sync the IdP group over SCIM and give its team this role.
    ScimTeamRole { group: String, role: Role },
    /// Set this role by hand on the user.
    ManualRole { role: Role },
}

/// A user whose effective role changes because the groups claim and the role-mapping
/// toggle no longer assign roles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RoleChange {
    pub email: String,
    pub legacy_role: Role,
    pub legacy_set_by: String,
    pub new_role: Role,
    pub new_source: RoleSource,
    pub fix: Fix,
}

/// A migration plan: nothing changes until it is applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Plan {
    pub tenant: String,
    /// SHA-256 of the plan without this field: `apply --plan` compares it.
    pub digest: String,
    /// How many steps change something; 0: applying changes nothing.
    pub changes: usize,
    pub provisioning_mode: ModeStep,
    pub sso: Option<SsoStep>,
    pub identity_providers: Vec<IdpStep>,
    pub users: Vec<UserStep>,
    pub targets: Vec<TargetStep>,
    pub teams: Vec<TeamStep>,
    pub resources: Vec<ResourceStep>,
    pub role_changes: Vec<RoleChange>,
    /// Users whose manual role is kept and wins.
    pub manual_roles_kept: Vec<String>,
    pub human_steps: Vec<String>,
}

fn action(exists: bool, same: bool) -> Action {
    match (exists, same) {
        (false, _) => Action::Create,
        (true, false) => Action::Update,
        (true, true) => Action::Unchanged,
    }
}

/// The plan for `legacy` on a tenant holding `current`; `roles[i]` is the effective role
/// the tenant's policy decides for `legacy.users[i]` after the migration.
pub fn plan(legacy: &Legacy, current: &Current, roles: &[(Role, RoleSource)]) -> Plan {
    let mut human_steps = Vec::new();

    // Provisioning mode.
    let (to, reason) = match &legacy.sso {
        Some(sso) if sso.scim_inline => (
            "scim",
            format!("SCIM was enabled inline on SSO configuration {}", sso.id),
        ),
        Some(sso) => (
            "jit",
            format!(
                "SSO configuration {} existed without SCIM: users kept signing in and being created on first login",
                sso.id
            ),
        ),
        None => (
            "invite_only",
            "no SSO configuration: users came in by invitation".to_owned(),
        ),
    };
    let provisioning_mode = ModeStep {
        from: current.mode.clone(),
        to: to.to_owned(),
        reason,
        action: if current.mode == to {
            Action::Unchanged
        } else {
            Action::Update
        },
    };

    // SSO configuration (authentication only).
    let sso = legacy.sso.as_ref().map(|s| {
        let exists = current.sso_ids.contains(&s.id);
        if !exists {
            human_steps.push(format!(
                "set the client secret of SSO configuration {} (the export carries none)",
                s.id
            ));
        }
        if s.scim_inline {
            human_steps.push(format!(
                "generate a SCIM token for SSO configuration {} and point the IdP's SCIM app at /scim/v2/{}/{}",
                s.id, current.tenant, s.id
            ));
        }
        if s.groups_claim.is_some() {
            human_steps.push(format!(
                "remove the groups claim{} from the IdP's SSO app settings: it no longer assigns roles",
                if s.role_mapping { " and role mapping" } else { "" }
            ));
        }
        SsoStep {
            id: s.id.clone(),
            issuer: s.issuer.clone(),
            client_id: s.client_id.clone(),
            discovery_url: s.discovery_url.clone(),
            jwks_uri: s.jwks_uri.clone(),
            email_claim: s.email_claim.clone(),
            action: action(exists, true),
        }
    });

    // Identity providers: one per issuer, named after an existing provider of that issuer
    // or else the first External Identity using it.
    let mut identity_providers: Vec<IdpStep> = Vec::new();
    for e in &legacy.external_identities {
        if let Some(step) = identity_providers.iter_mut().find(|s| s.issuer == e.issuer) {
            step.external_identities.push(e.name.clone());
            step.user_claim = step.user_claim.clone().or(e.user_claim.clone());
            step.va_name_claim = step.va_name_claim.clone().or(e.name_claim.clone());
            step.team_claim = step.team_claim.clone().or(e.team_claim.clone());
            for alg in &e.algorithms {
                if !step.algorithms.contains(alg) {
                    step.algorithms.push(alg.clone());
                }
            }
            continue;
        }
        let name = current
            .idps
            .iter()
            .find(|i| i.issuer == e.issuer)
            .map_or_else(|| e.name.clone(), |i| i.name.clone());
        identity_providers.push(IdpStep {
            name,
            issuer: e.issuer.clone(),
            jwks_uri: e.jwks_uri.clone(),
            audiences: e.audiences.clone(),
            algorithms: e.algorithms.clone(),
            user_claim: e.user_claim.clone(),
            va_name_claim: e.name_claim.clone(),
            team_claim: e.team_claim.clone(),
            external_identities: vec![e.name.clone()],
            action: Action::Create,
        });
    }
    for step in &mut identity_providers {
        let now = current.idps.iter().find(|i| i.name == step.name);
        step.action = action(
            now.is_some(),
            now.is_some_and(|i| {
                i.issuer == step.issuer
                    && i.jwks_uri.as_deref() == Some(&step.jwks_uri)
                    && i.audiences == step.audiences
                    && i.algorithms == step.algorithms
                    && i.user_claim == step.user_claim
                    && i.va_name_claim == step.va_name_claim
                    && i.team_claim == step.team_claim
            }),
        );
    }
    let idp_of = |issuer: &str| {
        identity_providers
            .iter()
            .find(|s| s.issuer == issuer)
            .map(|s| s.name.clone())
            .unwrap_or_default()
    };

    // Users.
    let users: Vec<UserStep> = legacy
        .users
        .iter()
        .map(|u| UserStep {
            email: u.email.as_str().to_owned(),
            display_name: u.display_name.clone(),
            given_name: u.given_name.clone(),
            family_name: u.family_name.clone(),
            status: u.status,
            manual_role: (u.role_set_by == RoleSetBy::Manual).then_some(u.role),
            action: action(current.users.contains(&u.email.key()), true),
        })
        .collect();

    // External Identities → targets; teams they need.
    let mut team_mappings: BTreeMap<String, (String, Vec<Mapping>)> = BTreeMap::new();
    let mut targets = Vec::new();
    let mut replaced: BTreeMap<String, Vec<PlannedSubject>> = BTreeMap::new();
    for e in &legacy.external_identities {
        let idp = idp_of(&e.issuer);
        let team_claim = e.team_claim.as_ref().filter(|_| !e.team_values.is_empty());
        let (target, reason, act) = match (e.used_by, team_claim) {
            (UsedBy::Humans, Some(claim)) => {
                let mappings: Vec<Mapping> = e
                    .team_values
                    .iter()
                    .map(|t| Mapping {
                        idp: idp.clone(),
                        value: t.as_str().to_owned(),
                    })
                    .collect();
                let mut act = Action::Unchanged;
                for (team, mapping) in e.team_values.iter().zip(&mappings) {
                    let entry = team_mappings
                        .entry(team.key())
                        .or_insert_with(|| (team.as_str().to_owned(), Vec::new()));
                    entry.1.push(mapping.clone());
                    let now = current.teams.get(&team.key());
                    let a = action(now.is_some(), now.is_some_and(|m| m.contains(mapping)));
                    // Creating any team is a create; adding a mapping only, an update.
                    act = match (act, a) {
                        (Action::Create, _) | (_, Action::Create) => Action::Create,
                        (Action::Update, _) | (_, Action::Update) => Action::Update,
                        _ => Action::Unchanged,
                    };
                }
                human_steps.push(format!(
                    "make sure the people whose tokens {} accepted exist as users (SCIM, JIT or invite): an identity provider never creates users",
                    e.name
                ));
                replaced.insert(
                    e.name.clone(),
                    e.team_values
                        .iter()
                        .map(|t| PlannedSubject::Team(t.as_str().to_owned()))
                        .collect(),
                );
                (
                    Target::Teams {
                        teams: e.team_values.iter().map(|t| t.as_str().to_owned()).collect(),
                        mappings,
                    },
                    format!(
                        "used by people whose tokens carry the team claim {claim}: each token resolves to its user, with the teams its {claim} values name"
                    ),
                    act,
                )
            }
            (used_by, _) => {
                let mapping = Mapping {
                    idp: idp.clone(),
                    value: e.name_value.clone(),
                };
                let now = current.vas.get(&e.name);
                let act = action(now.is_some(), now.is_some_and(|m| m.contains(&mapping)));
                replaced.insert(
                    e.name.clone(),
                    vec![PlannedSubject::VirtualAccount(e.name.clone())],
                );
                let claim = e.name_claim.as_deref().unwrap_or("the name claim");
                let reason = if used_by == UsedBy::Humans {
                    human_steps.push(format!(
                        "external identity {} was used by people but has no team claim values: check that one virtual account for all of them is right",
                        e.name
                    ));
                    format!("used by people without a team claim: a virtual account matching {claim} = {} keeps their tokens working", e.name_value)
                } else {
                    format!(
                        "used by machines: a virtual account matching {claim} = {}",
                        e.name_value
                    )
                };
                (
                    Target::VirtualAccount {
                        name: e.name.clone(),
                        mapping,
                    },
                    reason,
                    act,
                )
            }
        };
        human_steps.push(format!(
            "once traffic flows through the new mappings, remove the legacy external identity {}",
            e.name
        ));
        targets.push(TargetStep {
            external_identity: e.name.clone(),
            idp,
            target,
            reason,
            action: act,
        });
    }
    // Teams named as legacy collaborators exist (created without a role when absent).
    for r in &legacy.resources {
        for (subject, _) in &r.collaborators {
            if let LegacySubject::Team(name) = subject {
                team_mappings
                    .entry(name.to_ascii_lowercase())
                    .or_insert_with(|| (name.clone(), Vec::new()));
            }
        }
    }
    let teams: Vec<TeamStep> = team_mappings
        .into_iter()
        .map(|(key, (name, wanted))| {
            let now = current.teams.get(&key);
            let mut mappings = now.cloned().unwrap_or_default();
            let mut same = true;
            for m in wanted {
                if !mappings.contains(&m) {
                    mappings.push(m);
                    same = false;
                }
            }
            TeamStep {
                name,
                mappings,
                action: action(now.is_some(), same),
            }
        })
        .collect();

    // Resources: collaborators in the new model.
    let email_of = |key: &str| {
        legacy
            .users
            .iter()
            .find(|u| u.email.key() == key)
            .map(|u| u.email.as_str().to_owned())
            .unwrap_or_else(|| key.to_owned())
    };
    let resources: Vec<ResourceStep> = legacy
        .resources
        .iter()
        .map(|r| {
            let mut collaborators = BTreeSet::new();
            let mut replacements = Vec::new();
            for (subject, role) in &r.collaborators {
                let subjects = match subject {
                    LegacySubject::User(key) => vec![PlannedSubject::User(email_of(key))],
                    LegacySubject::Team(name) => vec![PlannedSubject::Team(name.clone())],
                    LegacySubject::ExternalIdentity(name) => {
                        let by = replaced.get(name).cloned().unwrap_or_default();
                        replacements.push(Replacement {
                            external_identity: name.clone(),
                            role: role.clone(),
                            by: by.clone(),
                        });
                        by
                    }
                };
                for subject in subjects {
                    collaborators.insert(CollaboratorStep {
                        subject,
                        role: role.clone(),
                    });
                }
            }
            let collaborators: Vec<CollaboratorStep> = collaborators.into_iter().collect();
            let now = current.resources.get(&(r.kind.clone(), r.name.clone()));
            let same = now.is_some_and(|c| {
                let mut c = c.clone();
                c.sort();
                c == collaborators
            });
            ResourceStep {
                kind: r.kind.clone(),
                name: r.name.clone(),
                collaborators,
                replacements,
                action: action(now.is_some(), same),
            }
        })
        .collect();

    // Roles: what the policy decides against what the legacy tenant showed.
    let scim = to == "scim";
    let mut role_changes = Vec::new();
    let mut manual_roles_kept = Vec::new();
    for (u, (role, source)) in legacy.users.iter().zip(roles) {
        if u.role_set_by == RoleSetBy::Manual && *role == u.role {
            manual_roles_kept.push(u.email.as_str().to_owned());
        }
        if *role == u.role {
            continue;
        }
        let admin_group = legacy.sso.as_ref().and_then(|s| {
            u.groups
                .iter()
                .find(|g| s.admin_groups.contains(*g))
                .cloned()
        });
        let fix = match admin_group {
            Some(group) if scim => Fix::ScimTeamRole {
                group,
                role: u.role,
            },
            _ => Fix::ManualRole { role: u.role },
        };
        human_steps.push(match &fix {
            Fix::ScimTeamRole { group, role } => format!(
                "{}: push IdP group {group} over SCIM and give its team the {} role (or set the role by hand)",
                u.email.as_str(),
                role_name(*role)
            ),
            Fix::ManualRole { role } => format!(
                "{}: set a manual {} role if the user should keep it",
                u.email.as_str(),
                role_name(*role)
            ),
        });
        role_changes.push(RoleChange {
            email: u.email.as_str().to_owned(),
            legacy_role: u.role,
            legacy_set_by: match u.role_set_by {
                RoleSetBy::Manual => "manual",
                RoleSetBy::RoleMapping => "role_mapping",
                RoleSetBy::Default => "default",
            }
            .to_owned(),
            new_role: *role,
            new_source: *source,
            fix,
        });
    }

    let mut plan = Plan {
        tenant: current.tenant.clone(),
        digest: String::new(),
        changes: 0,
        provisioning_mode,
        sso,
        identity_providers,
        users,
        targets,
        teams,
        resources,
        role_changes,
        manual_roles_kept,
        human_steps,
    };
    plan.changes = plan.change_count();
    plan.digest = plan.compute_digest();
    plan
}

/// A role's wire name.
pub(super) fn role_name(role: Role) -> &'static str {
    match role {
        Role::Admin => "admin",
        Role::Member => "member",
    }
}

impl Plan {
    fn change_count(&self) -> usize {
        let changed = |a: Action| usize::from(a != Action::Unchanged);
        changed(self.provisioning_mode.action)
            + self.sso.iter().map(|s| changed(s.action)).sum::<usize>()
            + self
                .identity_providers
                .iter()
                .map(|s| changed(s.action))
                .sum::<usize>()
            + self.users.iter().map(|s| changed(s.action)).sum::<usize>()
            + self
                .targets
                .iter()
                .map(|s| changed(s.action))
                .sum::<usize>()
            + self.teams.iter().map(|s| changed(s.action)).sum::<usize>()
            + self
                .resources
                .iter()
                .map(|s| changed(s.action))
                .sum::<usize>()
    }

    /// SHA-256 (hex) of the plan's JSON with an empty digest.
    pub fn compute_digest(&self) -> String {
        let unsigned = Plan {
            digest: String::new(),
            ..self.clone()
        };
        let bytes = serde_json::to_vec(&unsigned).unwrap_or_default();
        hex::encode(Sha256::digest(bytes))
    }
}
