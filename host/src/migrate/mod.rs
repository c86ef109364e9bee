//! Migration from the legacy identity model (SPEC §9): the export format (wire types), its
//! validation into a `Legacy` tenant, and the pure plan. No storage, no HTTP: `app::migrate`
//! reads the tenant's current state and the policy's role decisions, hands them here, and
//! carries the plan out.

mod plan;
mod report;
mod wire;

pub use plan::{
    plan, Action, CollaboratorStep, Current, CurrentIdp, Fix, IdpStep, ModeStep, Plan,
    PlannedSubject, ResourceStep, RoleChange, SsoStep, Target, TargetStep, TeamStep, UserStep,
};
pub use report::{markdown, sections, table, Section};

use gatehouse_rules::{Role, UserStatus};
use std::collections::{BTreeMap, BTreeSet};

/// What a legacy export can be refused for.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The JSON does not match the documented format; `path` is where.
    #[error("the export is malformed at {path}: {reason}")]
    Malformed { path: String, reason: String },
}

fn bad(path: impl Into<String>, reason: impl Into<String>) -> MigrateError {
    MigrateError::Malformed {
        path: path.into(),
        reason: reason.into(),
    }
}

/// The legacy SSO configuration, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct LegacySso {
    pub id: String,
    pub fqn: String,
    pub issuer: String,
    pub client_id: String,
    pub discovery_url: Option<String>,
    pub jwks_uri: Option<String>,
    pub email_claim: Option<String>,
    pub groups_claim: Option<String>,
    pub role_mapping: bool,
    pub admin_groups: BTreeSet<String>,
    pub scim_inline: bool,
}

/// How a legacy user got its role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleSetBy {
    Manual,
    RoleMapping,
    Default,
}

/// A legacy user, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct LegacyUser {
    pub email: crate::identity::Email,
    pub display_name: Option<String>,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    pub status: UserStatus,
    pub role: Role,
    pub role_set_by: RoleSetBy,
    pub groups: Vec<String>,
}

/// Who used an External Identity's tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsedBy {
    Machines,
    Humans,
}

/// A legacy External Identity, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct LegacyExternalIdentity {
    pub name: String,
    pub issuer: String,
    pub jwks_uri: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<String>,
    pub user_claim: Option<String>,
    pub name_claim: Option<String>,
    pub name_value: String,
    pub team_claim: Option<String>,
    pub team_values: Vec<crate::identity::TeamName>,
    pub used_by: UsedBy,
    pub sso_fqn: Option<String>,
}

/// A legacy collaborator's subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LegacySubject {
    User(String),
    Team(String),
    ExternalIdentity(String),
}

/// A legacy resource, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct LegacyResource {
    pub kind: String,
    pub name: String,
    pub collaborators: Vec<(LegacySubject, String)>,
}

/// A legacy tenant export, validated: every reference resolves, names follow the new rules.
#[derive(Debug, Clone, PartialEq)]
pub struct Legacy {
    pub sso: Option<LegacySso>,
    pub users: Vec<LegacyUser>,
    pub external_identities: Vec<LegacyExternalIdentity>,
    pub resources: Vec<LegacyResource>,
}

/// The export format's name and version (`format` field).
pub const FORMAT: &str = "gatehouse-legacy-export/1";

/// Parses and validates an export; a problem is named by its JSON path.
pub fn parse(bytes: &[u8]) -> Result<Legacy, MigrateError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let export: wire::Export = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." {
            "$".to_owned()
        } else {
            format!("$.{path}")
        };
        bad(path, e.into_inner().to_string())
    })?;
    validate(export)
}

fn slug(path: &str, what: &str, text: &str) -> Result<String, MigrateError> {
    crate::model::TenantId::parse(text)
        .map(|t| t.to_string())
        .map_err(|_| {
            bad(
                path,
                format!("{what} {text:?} is invalid: use 1-63 of a-z 0-9 - starting with a letter or digit"),
            )
        })
}

fn clean(value: Option<String>) -> Option<String> {
    value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

fn validate(export: wire::Export) -> Result<Legacy, MigrateError> {
    if export.format != FORMAT {
        return Err(bad(
            "$.format",
            format!(
                "format {:?} is not supported: use {FORMAT:?}",
                export.format
            ),
        ));
    }
    let sso = match export.sso {
        None => None,
        Some(s) => {
            let id = slug("$.sso.id", "SSO configuration id", &s.id)?;
            if s.issuer.trim().is_empty() {
                return Err(bad("$.sso.issuer", "issuer must not be empty"));
            }
            if s.client_id.trim().is_empty() {
                return Err(bad("$.sso.client_id", "client_id must not be empty"));
            }
            if s.discovery_url.is_some() == s.jwks_uri.is_some() {
                return Err(bad(
                    "$.sso",
                    "give exactly one of discovery_url and jwks_uri",
                ));
            }
            let mapping = s.role_mapping.unwrap_or_default();
            if mapping.enabled && s.groups_claim.is_none() {
                return Err(bad(
                    "$.sso.role_mapping.enabled",
                    "role mapping needs a groups_claim",
                ));
            }
            Some(LegacySso {
                id,
                fqn: s.fqn,
                issuer: s.issuer,
                client_id: s.client_id,
                discovery_url: s.discovery_url,
                jwks_uri: s.jwks_uri,
                email_claim: s.email_claim,
                groups_claim: s.groups_claim,
                role_mapping: mapping.enabled,
                admin_groups: mapping.admin_groups.into_iter().collect(),
                scim_inline: s.scim_inline,
            })
        }
    };
    let mut users = Vec::with_capacity(export.users.len());
    let mut emails = BTreeSet::new();
    for (i, u) in export.users.into_iter().enumerate() {
        let email = crate::identity::Email::parse(&u.email)
            .map_err(|why| bad(format!("$.users[{i}].email"), why))?;
        if !emails.insert(email.key()) {
            return Err(bad(
                format!("$.users[{i}].email"),
                format!("email {} appears twice", email.as_str()),
            ));
        }
        let role_set_by = match u.role_set_by {
            wire::RoleSetBy::Manual => RoleSetBy::Manual,
            wire::RoleSetBy::RoleMapping => RoleSetBy::RoleMapping,
            wire::RoleSetBy::Default => RoleSetBy::Default,
        };
        if role_set_by == RoleSetBy::RoleMapping && !sso.as_ref().is_some_and(|s| s.role_mapping) {
            return Err(bad(
                format!("$.users[{i}].role_set_by"),
                "role_mapping needs sso.role_mapping.enabled",
            ));
        }
        if role_set_by == RoleSetBy::Default && u.role != Role::Member {
            return Err(bad(
                format!("$.users[{i}].role"),
                "a default role is member",
            ));
        }
        users.push(LegacyUser {
            email,
            display_name: clean(u.display_name),
            given_name: clean(u.given_name),
            family_name: clean(u.family_name),
            status: u.status,
            role: u.role,
            role_set_by,
            groups: u.groups,
        });
    }
    let mut external_identities: Vec<LegacyExternalIdentity> = Vec::new();
    for (i, e) in export.external_identities.into_iter().enumerate() {
        let at = |field: &str| format!("$.external_identities[{i}].{field}");
        let name = slug(&at("name"), "external identity name", &e.name)?;
        if external_identities.iter().any(|x| x.name == name) {
            return Err(bad(
                at("name"),
                format!("external identity {name} appears twice"),
            ));
        }
        if e.issuer.trim().is_empty() || e.issuer.len() > 512 {
            return Err(bad(at("issuer"), "issuer must be 1-512 characters"));
        }
        if e.jwks_uri.trim().is_empty() {
            return Err(bad(at("jwks_uri"), "jwks_uri must not be empty"));
        }
        for (field, claim) in [
            ("user_claim", &e.user_claim),
            ("name_claim", &e.name_claim),
            ("team_claim", &e.team_claim),
        ] {
            if let Some(claim) = claim {
                gatehouse_rules::check_claim_path(claim).map_err(|why| bad(at(field), why))?;
            }
        }
        if let Some(fqn) = &e.sso_fqn {
            if sso.as_ref().is_none_or(|s| &s.fqn != fqn) {
                return Err(bad(
                    at("sso_fqn"),
                    format!("no SSO configuration with fqn {fqn:?} in the export"),
                ));
            }
        }
        let mut team_values = Vec::new();
        for (j, value) in e.team_values.iter().enumerate() {
            team_values.push(
                crate::identity::TeamName::parse(value).map_err(|why| {
                    bad(format!("$.external_identities[{i}].team_values[{j}]"), why)
                })?,
            );
        }
        let name_value = e.name_value.unwrap_or_else(|| name.clone());
        if name_value.is_empty() || name_value.len() > 512 {
            return Err(bad(
                at("name_value"),
                "a name value must be 1-512 characters",
            ));
        }
        // Two External Identities of one issuer become one identity provider: they must
        // agree on what the provider validates.
        if let Some(other) = external_identities.iter().find(|x| x.issuer == e.issuer) {
            if other.jwks_uri != e.jwks_uri || other.audiences != e.audiences {
                return Err(bad(
                    at("issuer"),
                    format!(
                        "issuer {} is also used by external identity {} with another jwks_uri or audiences; one issuer is one identity provider",
                        e.issuer, other.name
                    ),
                ));
            }
        }
        external_identities.push(LegacyExternalIdentity {
            name,
            issuer: e.issuer,
            jwks_uri: e.jwks_uri,
            audiences: e.audiences,
            algorithms: e.algorithms,
            user_claim: e.user_claim,
            name_claim: e.name_claim,
            name_value,
            team_claim: e.team_claim,
            team_values,
            used_by: match e.used_by {
                wire::UsedBy::Machines => UsedBy::Machines,
                wire::UsedBy::Humans => UsedBy::Humans,
            },
            sso_fqn: e.sso_fqn,
        });
    }
    // Claim overrides of one issuer must agree where they are set.
    let mut claims: BTreeMap<(&str, &str), (&str, &str)> = BTreeMap::new();
    for (i, e) in external_identities.iter().enumerate() {
        for (field, claim) in [
            ("user_claim", &e.user_claim),
            ("name_claim", &e.name_claim),
            ("team_claim", &e.team_claim),
        ] {
            let Some(claim) = claim else { continue };
            if let Some((other, theirs)) = claims.insert((&e.issuer, field), (&e.name, claim)) {
                if theirs != claim {
                    return Err(bad(
                        format!("$.external_identities[{i}].{field}"),
                        format!("{field} {claim:?} differs from {theirs:?} of external identity {other} on the same issuer"),
                    ));
                }
            }
        }
    }
    let mut resources: Vec<LegacyResource> = Vec::new();
    for (i, r) in export.resources.into_iter().enumerate() {
        let at = |field: &str| format!("$.resources[{i}].{field}");
        let kind = r.kind.trim().to_owned();
        let name = r.name.trim().to_owned();
        if kind.is_empty() || kind.len() > 64 {
            return Err(bad(at("kind"), "a resource kind must be 1-64 characters"));
        }
        if name.is_empty() || name.len() > 256 {
            return Err(bad(at("name"), "a resource name must be 1-256 characters"));
        }
        if resources.iter().any(|x| x.kind == kind && x.name == name) {
            return Err(bad(
                at("name"),
                format!("resource {kind} {name} appears twice"),
            ));
        }
        let mut collaborators = Vec::new();
        for (j, c) in r.collaborators.into_iter().enumerate() {
            let at = |field: &str| format!("$.resources[{i}].collaborators[{j}].{field}");
            if c.role.trim().is_empty() || c.role.len() > 64 {
                return Err(bad(
                    at("role"),
                    "a collaborator role must be 1-64 characters",
                ));
            }
            let subject = match c.subject {
                wire::Subject::User(email) => {
                    let email = crate::identity::Email::parse(&email)
                        .map_err(|why| bad(at("subject.user"), why))?;
                    if !emails.contains(&email.key()) {
                        return Err(bad(
                            at("subject.user"),
                            format!("no user {} in the export", email.as_str()),
                        ));
                    }
                    LegacySubject::User(email.key())
                }
                wire::Subject::Team(team) => {
                    let team = crate::identity::TeamName::parse(&team)
                        .map_err(|why| bad(at("subject.team"), why))?;
                    LegacySubject::Team(team.as_str().to_owned())
                }
                wire::Subject::ExternalIdentity(name) => {
                    if !external_identities.iter().any(|e| e.name == name) {
                        return Err(bad(
                            at("subject.external_identity"),
                            format!("no external identity {name} in the export"),
                        ));
                    }
                    LegacySubject::ExternalIdentity(name)
                }
            };
            collaborators.push((subject, c.role.trim().to_owned()));
        }
        resources.push(LegacyResource {
            kind,
            name,
            collaborators,
        });
    }
    Ok(Legacy {
        sso,
        users,
        external_identities,
        resources,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_rules::RoleSource;
    use serde_json::{json, Value};

    fn export() -> Value {
        json!({
            "format": FORMAT,
            "sso": {
                "id": "okta", "fqn": "acme:sso:okta", "issuer": "https://okta.test",
                "client_id": "web", "jwks_uri": "https://okta.test/keys",
                "groups_claim": "groups",
                "role_mapping": { "enabled": true, "admin_groups": ["admins"] }
            },
            "users": [
                { "email": "a@x.io", "status": "active", "role": "admin", "role_set_by": "role_mapping", "groups": ["admins"] },
                { "email": "b@x.io", "status": "active", "role": "admin", "role_set_by": "manual" },
                { "email": "c@x.io", "status": "invited", "role": "member", "role_set_by": "default" }
            ],
            "external_identities": [
                { "name": "bot", "issuer": "https://idp.test", "jwks_uri": "https://idp.test/jwks",
                  "name_claim": "client_id", "name_value": "bot-1" },
                { "name": "people", "issuer": "https://idp.test", "jwks_uri": "https://idp.test/jwks",
                  "team_claim": "groups", "team_values": ["ds"], "used_by": "humans" }
            ],
            "resources": [
                { "kind": "model", "name": "m", "collaborators": [
                    { "subject": { "external_identity": "bot" }, "role": "viewer" },
                    { "subject": { "external_identity": "people" }, "role": "viewer" },
                    { "subject": { "user": "A@x.io" }, "role": "owner" } ] }
            ]
        })
    }

    fn parsed(value: &Value) -> Result<Legacy, MigrateError> {
        parse(value.to_string().as_bytes())
    }

    /// What the policy decides with no team roles: the manual role, else member.
    fn roles(legacy: &Legacy) -> Vec<(Role, RoleSource)> {
        legacy
            .users
            .iter()
            .map(|u| match u.role_set_by {
                RoleSetBy::Manual => (u.role, RoleSource::Manual),
                _ => (Role::Member, RoleSource::Initial),
            })
            .collect()
    }

    fn empty() -> Current {
        Current {
            tenant: "acme".into(),
            mode: "invite_only".into(),
            ..Current::default()
        }
    }

    #[test]
    fn malformed_exports_are_refused_with_the_json_path() {
        type Change = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(&str, Change)> = vec![
            ("$.format", Box::new(|v| v["format"] = json!("other/9"))),
            (
                "$.users[1].status",
                Box::new(|v| v["users"][1]["status"] = json!("asleep")),
            ),
            (
                "$.users[0].email",
                Box::new(|v| v["users"][0]["email"] = json!("nope")),
            ),
            (
                "$.users[2].email",
                Box::new(|v| v["users"][2]["email"] = json!("A@X.IO")),
            ),
            (
                "$.sso.role_mapping.extra",
                Box::new(|v| v["sso"]["role_mapping"]["extra"] = json!(1)),
            ),
            (
                "$.external_identities[0].name",
                Box::new(|v| v["external_identities"][0]["name"] = json!("Bad Name")),
            ),
            (
                "$.external_identities[1].issuer",
                Box::new(|v| {
                    v["external_identities"][1]["jwks_uri"] = json!("https://other.test/jwks")
                }),
            ),
            (
                "$.external_identities[1].team_values[0]",
                Box::new(|v| v["external_identities"][1]["team_values"] = json!(["a b"])),
            ),
            (
                "$.external_identities[0].sso_fqn",
                Box::new(|v| v["external_identities"][0]["sso_fqn"] = json!("nope")),
            ),
            (
                "$.resources[0].collaborators[2].subject.user",
                Box::new(|v| {
                    v["resources"][0]["collaborators"][2]["subject"]["user"] = json!("z@x.io")
                }),
            ),
            (
                "$.resources[0].collaborators[0].role",
                Box::new(|v| v["resources"][0]["collaborators"][0]["role"] = json!("")),
            ),
        ];
        for (path, change) in cases {
            let mut value = export();
            change(&mut value);
            match parsed(&value) {
                Err(MigrateError::Malformed { path: got, reason }) => {
                    assert_eq!(got, path, "{reason}")
                }
                Ok(_) => panic!("{path}: accepted"),
            }
        }
        assert!(parse(b"{").is_err());
        assert!(parse(b"[]").is_err());
    }

    #[test]
    fn the_plan_maps_identities_roles_and_collaborators() {
        let legacy = parsed(&export()).unwrap();
        let plan = plan(&legacy, &empty(), &roles(&legacy));
        assert_eq!(plan.provisioning_mode.to, "jit");
        assert_eq!(plan.identity_providers.len(), 1);
        let idp = &plan.identity_providers[0];
        assert_eq!(idp.name, "bot");
        assert_eq!(idp.va_name_claim.as_deref(), Some("client_id"));
        assert_eq!(idp.team_claim.as_deref(), Some("groups"));
        assert!(matches!(&plan.targets[0].target,
            Target::VirtualAccount { name, mapping } if name == "bot" && mapping.value == "bot-1"));
        assert!(matches!(&plan.targets[1].target,
            Target::Teams { teams, .. } if teams == &["ds".to_owned()]));
        assert_eq!(plan.teams.len(), 1);
        assert_eq!(plan.teams[0].action, Action::Create);
        assert_eq!(plan.targets[1].action, Action::Create);
        let subjects: Vec<&PlannedSubject> = plan.resources[0]
            .collaborators
            .iter()
            .map(|c| &c.subject)
            .collect();
        assert_eq!(
            subjects,
            [
                &PlannedSubject::User("a@x.io".into()),
                &PlannedSubject::Team("ds".into()),
                &PlannedSubject::VirtualAccount("bot".into()),
            ]
        );
        assert_eq!(plan.role_changes.len(), 1);
        assert_eq!(plan.role_changes[0].email, "a@x.io");
        assert_eq!(
            plan.role_changes[0].fix,
            Fix::ManualRole { role: Role::Admin }
        );
        assert_eq!(plan.manual_roles_kept, ["b@x.io"]);
        assert_eq!(plan.changes, 1 + 1 + 1 + 3 + 2 + 1 + 1);
    }

    #[test]
    fn scim_inline_gives_scim_and_a_team_role_fix() {
        let mut value = export();
        value["sso"]["scim_inline"] = json!(true);
        let legacy = parsed(&value).unwrap();
        let plan = plan(&legacy, &empty(), &roles(&legacy));
        assert_eq!(plan.provisioning_mode.to, "scim");
        assert_eq!(
            plan.role_changes[0].fix,
            Fix::ScimTeamRole {
                group: "admins".into(),
                role: Role::Admin
            }
        );
        let mut value = export();
        value.as_object_mut().unwrap().remove("sso");
        for user in value["users"].as_array_mut().unwrap() {
            if user["role_set_by"] == "role_mapping" {
                user["role_set_by"] = json!("manual");
            }
        }
        let legacy = parsed(&value).unwrap();
        assert_eq!(plan_for_empty(&legacy).provisioning_mode.to, "invite_only");
    }

    fn plan_for_empty(legacy: &Legacy) -> Plan {
        plan(legacy, &empty(), &roles(legacy))
    }

    /// The tenant as a plan leaves it.
    fn after(plan: &Plan) -> Current {
        Current {
            tenant: plan.tenant.clone(),
            mode: plan.provisioning_mode.to.clone(),
            sso_ids: plan.sso.iter().map(|s| s.id.clone()).collect(),
            idps: plan
                .identity_providers
                .iter()
                .map(|i| CurrentIdp {
                    name: i.name.clone(),
                    issuer: i.issuer.clone(),
                    jwks_uri: Some(i.jwks_uri.clone()),
                    audiences: i.audiences.clone(),
                    algorithms: i.algorithms.clone(),
                    user_claim: i.user_claim.clone(),
                    va_name_claim: i.va_name_claim.clone(),
                    team_claim: i.team_claim.clone(),
                })
                .collect(),
            users: plan.users.iter().map(|u| u.email.to_lowercase()).collect(),
            vas: plan
                .targets
                .iter()
                .filter_map(|t| match &t.target {
                    Target::VirtualAccount { name, mapping } => {
                        Some((name.clone(), vec![mapping.clone()]))
                    }
                    Target::Teams { .. } => None,
                })
                .collect(),
            teams: plan
                .teams
                .iter()
                .map(|t| (t.name.to_ascii_lowercase(), t.mappings.clone()))
                .collect(),
            resources: plan
                .resources
                .iter()
                .map(|r| ((r.kind.clone(), r.name.clone()), r.collaborators.clone()))
                .collect(),
        }
    }

    #[test]
    fn a_plan_on_the_tenant_it_produced_changes_nothing_and_digests_are_stable() {
        let legacy = parsed(&export()).unwrap();
        let first = plan_for_empty(&legacy);
        assert_eq!(first.digest, plan_for_empty(&legacy).digest);
        assert_eq!(first.digest, first.compute_digest());
        let second = plan(&legacy, &after(&first), &roles(&legacy));
        assert_eq!(second.changes, 0, "{second:#?}");
        assert_ne!(second.digest, first.digest);
        // The role report does not depend on what is already applied.
        assert_eq!(second.role_changes, first.role_changes);
    }

    #[test]
    fn reports_show_every_section() {
        let legacy = parsed(&export()).unwrap();
        let plan = plan_for_empty(&legacy);
        let text = table(&plan);
        for needle in [
            "Provisioning mode",
            "invite_only  jit",
            "a@x.io",
            "bot:bot-1",
            "Left to a human",
        ] {
            assert!(text.contains(needle), "{needle:?} not in\n{text}");
        }
        let md = markdown(&plan);
        assert!(
            md.contains("| a@x.io | admin | role_mapping | member | set a manual admin role |"),
            "{md}"
        );
        assert!(
            md.contains("| model m | people | viewer | team ds |"),
            "{md}"
        );
    }
}
