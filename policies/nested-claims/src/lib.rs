//! An example tenant policy for identity providers that nest claims, such as Keycloak,
//! whose tokens carry realm roles in `realm_access.roles` and client roles in
//! `resource_access.<client>.roles`.
//!
//! What it changes from the default policy:
//! - **claim mapping**: the team claim defaults to `realm_access.roles` (an identity
//!   provider's own override still wins), and the tenant's settings can name other paths;
//! - **resolution**: only team-claim values with a prefix (`team-`) may give team context,
//!   a tenant can require that a token gives at least one team, and can require a role
//!   (e.g. `gatehouse-user`) in the token before anyone is resolved at all.
//!
//! Login and roles are the default rules. See README.md for the settings.

use gatehouse_policy_sdk::{
    export_policy, rules, ClaimMap, IdpClaims, Policy, PolicyInfo, Refusal, Resolution,
    ResolveDecision, ResolveInput,
};
use serde::Deserialize;

/// Where Keycloak puts a user's realm roles.
pub const REALM_ROLES: &str = "realm_access.roles";

/// The tenant's settings of this policy (JSON object; every key optional; unknown keys
/// are refused).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Claim carrying team values unless the identity provider overrides it
    /// (default `realm_access.roles`).
    pub team_claim: Option<String>,
    /// Claim carrying the user unless the identity provider overrides it (default `email`).
    pub user_claim: Option<String>,
    /// Claim carrying a virtual account's name unless the identity provider overrides it
    /// (default none; Keycloak service accounts carry their client in `azp`).
    pub va_name_claim: Option<String>,
    /// Only team-claim values that start with this prefix give team context, so a realm
    /// role that happens to equal a team mapping (`admin`, `offline_access`) never does.
    pub team_prefix: Option<String>,
    /// Refuse a user whose token gives no team (`no_team`), even if they belong to teams.
    #[serde(default)]
    pub require_team: bool,
    /// A role every token must carry in `role_claim`, or it is refused (`missing_role`).
    pub required_role: Option<String>,
    /// Claim holding `required_role` (default `realm_access.roles`).
    pub role_claim: Option<String>,
}

impl Settings {
    /// Parses and checks settings text; empty text means "no settings".
    pub fn parse(text: &str) -> Result<Settings, String> {
        if text.trim().is_empty() {
            return Ok(Settings::default());
        }
        // Through a map: a derived struct would also accept a JSON array of its fields.
        let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text)
            .map_err(|e| format!("settings are invalid: {e}; use a JSON object"))?;
        let settings = Settings::deserialize(serde_json::Value::Object(object))
            .map_err(|e| format!("settings are invalid: {e}"))?;
        for (key, path) in [
            ("team_claim", &settings.team_claim),
            ("user_claim", &settings.user_claim),
            ("va_name_claim", &settings.va_name_claim),
            ("role_claim", &settings.role_claim),
        ] {
            if let Some(path) = path {
                rules::check_claim_path(path).map_err(|why| format!("settings.{key}: {why}"))?;
            }
        }
        for (key, value) in [
            ("team_prefix", &settings.team_prefix),
            ("required_role", &settings.required_role),
        ] {
            if value.as_deref().is_some_and(str::is_empty) {
                return Err(format!(
                    "settings.{key} is empty: give a non-empty value, or leave the key out"
                ));
            }
        }
        if settings.role_claim.is_some() && settings.required_role.is_none() {
            return Err(
                "settings.role_claim is set without settings.required_role: set both, or neither"
                    .to_owned(),
            );
        }
        Ok(settings)
    }

    fn role_claim(&self) -> &str {
        self.role_claim.as_deref().unwrap_or(REALM_ROLES)
    }
}

/// The nested-claims policy.
pub struct NestedClaims;

impl Policy for NestedClaims {
    fn info() -> PolicyInfo {
        gatehouse_policy_sdk::info("nested-claims", env!("CARGO_PKG_VERSION"))
    }

    fn validate_settings(settings: &str) -> Result<(), String> {
        Settings::parse(settings).map(|_| ())
    }

    fn claim_mapping(idp: &IdpClaims, settings: &str) -> ClaimMap {
        // Settings were validated when they were stored. Should they be unreadable anyway,
        // `resolve` refuses every token, so the fallback here never lets anyone in.
        let settings = Settings::parse(settings).unwrap_or_default();
        let role_claim = settings
            .required_role
            .is_some()
            .then(|| settings.role_claim().to_owned());
        ClaimMap {
            user_claim: idp
                .user_claim
                .clone()
                .or(settings.user_claim)
                .unwrap_or_else(|| "email".to_owned()),
            va_name_claim: idp.va_name_claim.clone().or(settings.va_name_claim),
            team_claim: Some(
                idp.team_claim
                    .clone()
                    .or(settings.team_claim)
                    .unwrap_or_else(|| REALM_ROLES.to_owned()),
            ),
            extra_claims: role_claim.into_iter().collect(),
        }
    }

    fn resolve(input: &ResolveInput) -> ResolveDecision {
        let settings = match Settings::parse(&input.settings) {
            Ok(settings) => settings,
            // Fail closed: a required role or team must never be skipped because the
            // settings that require it cannot be read.
            Err(why) => {
                return refuse(
                    Vec::new(),
                    "policy_settings",
                    format!("the tenant's policy settings cannot be used ({why}); a tenant admin must fix them"),
                )
            }
        };
        let mut trace = Vec::new();

        if let Some(role) = &settings.required_role {
            let claim = settings.role_claim();
            let carried = input
                .extra
                .iter()
                .filter(|c| c.path == claim)
                .flat_map(|c| &c.values)
                .any(|v| v == role);
            if !carried {
                trace.push(format!(
                    "the token lacks the required role {role} in {claim}"
                ));
                return refuse(
                    trace,
                    "missing_role",
                    format!("the token lacks the role {role:?} in {claim}; ask an admin of your identity provider to grant it"),
                );
            }
            trace.push(format!("the token carries the required role {role}"));
        }

        let filtered;
        let input = match &settings.team_prefix {
            Some(prefix) => {
                let mut narrowed = input.clone();
                narrowed
                    .teams
                    .retain(|t| t.matched.starts_with(prefix.as_str()));
                narrowed
                    .team_values
                    .retain(|v| v.starts_with(prefix.as_str()));
                trace.push(format!(
                    "only team-claim values starting with {prefix:?} give team context"
                ));
                filtered = narrowed;
                &filtered
            }
            None => input,
        };

        let mut decision = rules::resolve(input);
        trace.append(&mut decision.trace);
        if settings.require_team && input.teams.is_empty() {
            if let Resolution::User(user) = &decision.outcome {
                trace.push(format!(
                    "user {} has no team from the token, and the tenant requires one",
                    user.id
                ));
                return refuse(
                    trace,
                    "no_team",
                    "the token gives no team of this tenant; ask an admin to add you to a mapped team in your identity provider",
                );
            }
        }
        ResolveDecision {
            outcome: decision.outcome,
            trace,
        }
    }
}

fn refuse(trace: Vec<String>, code: &str, message: impl Into<String>) -> ResolveDecision {
    ResolveDecision {
        outcome: Resolution::Refuse(Refusal::new(code, message)),
        trace,
    }
}

export_policy!(NestedClaims);

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_policy_sdk::{
        Claim, PolicyEvaluator, TeamCandidate, UserCandidate, UserMatch, UserResolution,
        UserStatus, VaCandidate,
    };
    use gatehouse_rules::cases;

    fn keycloak_token(settings: &str) -> ResolveInput {
        ResolveInput {
            idp: "keycloak".into(),
            user_claim: Some("ann@example.com".into()),
            team_values: vec!["team-eng".into(), "admin".into(), "offline_access".into()],
            extra: vec![Claim {
                path: REALM_ROLES.into(),
                values: vec!["team-eng".into(), "admin".into(), "gatehouse-user".into()],
            }],
            users: vec![UserCandidate {
                id: "u-ann".into(),
                email: "ann@example.com".into(),
                status: UserStatus::Active,
                matched_by: UserMatch::Email,
                teams: vec!["everyone".into()],
            }],
            teams: vec![
                TeamCandidate {
                    id: "t-eng".into(),
                    name: "eng".into(),
                    matched: "team-eng".into(),
                },
                TeamCandidate {
                    id: "t-admins".into(),
                    name: "admins".into(),
                    matched: "admin".into(),
                },
            ],
            settings: settings.into(),
            ..ResolveInput::default()
        }
    }

    fn user(id: &str, teams: &[&str]) -> Resolution {
        Resolution::User(UserResolution {
            id: id.into(),
            teams: teams.iter().map(|t| t.to_string()).collect(),
        })
    }

    fn code(decision: &ResolveDecision) -> Option<&str> {
        match &decision.outcome {
            Resolution::Refuse(refusal) => Some(&refusal.code),
            _ => None,
        }
    }

    #[test]
    fn without_settings_it_resolves_like_the_default_policy() {
        let input = keycloak_token("");
        assert_eq!(
            NestedClaims::resolve(&input).outcome,
            rules::resolve(&input).outcome
        );
    }

    #[test]
    fn the_prefix_keeps_realm_roles_out_of_the_team_context() {
        let decision = NestedClaims::resolve(&keycloak_token(r#"{"team_prefix": "team-"}"#));
        assert_eq!(decision.outcome, user("u-ann", &["everyone", "t-eng"]));
        assert!(
            decision.trace.iter().any(|line| line.contains("team-")),
            "{:?}",
            decision.trace
        );
    }

    #[test]
    fn require_team_refuses_a_user_whose_token_gives_no_team() {
        let mut input = keycloak_token(r#"{"team_prefix": "team-", "require_team": true}"#);
        assert_eq!(code(&NestedClaims::resolve(&input)), None);
        input.teams.retain(|t| t.id != "t-eng");
        assert_eq!(code(&NestedClaims::resolve(&input)), Some("no_team"));
    }

    #[test]
    fn require_team_leaves_virtual_accounts_alone() {
        let mut input = keycloak_token(r#"{"require_team": true}"#);
        input.teams.clear();
        input.virtual_accounts = vec![VaCandidate {
            id: "va-ci".into(),
            name: "ci".into(),
            enabled: true,
        }];
        assert_eq!(
            NestedClaims::resolve(&input).outcome,
            Resolution::VirtualAccount("va-ci".into())
        );
    }

    #[test]
    fn a_required_role_is_looked_up_in_the_extra_claim() {
        let settings = r#"{"required_role": "gatehouse-user"}"#;
        let mut input = keycloak_token(settings);
        assert_eq!(code(&NestedClaims::resolve(&input)), None);
        input.extra[0].values.retain(|v| v != "gatehouse-user");
        assert_eq!(code(&NestedClaims::resolve(&input)), Some("missing_role"));
        input.extra.clear();
        assert_eq!(code(&NestedClaims::resolve(&input)), Some("missing_role"));
    }

    #[test]
    fn unreadable_settings_refuse_every_token() {
        let decision = NestedClaims::resolve(&keycloak_token(r#"{"required_role": 1}"#));
        assert_eq!(code(&decision), Some("policy_settings"));
    }

    #[test]
    fn claim_mapping_asks_for_the_role_claim_only_when_a_role_is_required() {
        let none = NestedClaims::claim_mapping(&IdpClaims::default(), "{}");
        assert_eq!(none.team_claim.as_deref(), Some(REALM_ROLES));
        assert!(none.extra_claims.is_empty());
        let some = NestedClaims::claim_mapping(
            &IdpClaims::default(),
            r#"{"required_role": "gatehouse-user", "role_claim": "resource_access.gatehouse.roles"}"#,
        );
        assert_eq!(some.extra_claims, ["resource_access.gatehouse.roles"]);
    }

    #[test]
    fn settings_errors_name_the_key() {
        for (text, needle) in [
            (r#"{"teams": "x"}"#, "unknown field `teams`"),
            (
                r#"{"team_claim": "realm_access..roles"}"#,
                "settings.team_claim",
            ),
            (r#"{"team_prefix": ""}"#, "settings.team_prefix is empty"),
            (
                r#"{"role_claim": "roles"}"#,
                "without settings.required_role",
            ),
            (r#"{"require_team": "yes"}"#, "expected a boolean"),
        ] {
            let message = NestedClaims::validate_settings(text).expect_err(text);
            assert!(
                message.contains(needle),
                "{message:?} should contain {needle:?}"
            );
        }
    }

    /// `cases/*.json` pass natively, through the same WIT conversions as the component.
    #[test]
    fn every_case_passes() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cases");
        let cases = cases::load_dir(&dir).unwrap_or_else(|e| panic!("loading cases: {e}"));
        assert!(
            cases.len() >= 8,
            "expected at least 8 cases, found {}",
            cases.len()
        );
        let mut policy = PolicyEvaluator::<NestedClaims>::new();
        let failures: Vec<String> = cases
            .iter()
            .map(|(file, case)| (file, case.run(&mut policy)))
            .filter(|(_, report)| !report.passed)
            .map(|(file, r)| {
                format!(
                    "{file}: {}\n  expected: {}\n  actual:   {}",
                    r.name, r.expected, r.actual
                )
            })
            .collect();
        assert!(
            failures.is_empty(),
            "{} cases failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
}
