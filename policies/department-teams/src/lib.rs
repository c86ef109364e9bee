//! An example tenant policy: teams from a custom `department` claim (as HR-fed identity
//! providers put it in tokens: `"department": "Engineering"`), through an allow-list.
//!
//! What it changes from the default policy:
//! - **claim mapping**: the team claim is the department claim (`department` unless the
//!   settings name another path; an identity provider's own team-claim override still wins);
//! - **resolution**: only departments on the tenant's allow-list give team context; with
//!   `refuse_unlisted`, a user whose token carries a department that is not on the list is
//!   refused (`department_not_allowed`).
//!
//! Login and roles are the default rules. See README.md for the settings.

use gatehouse_policy_sdk::{
    export_policy, rules, ClaimMap, IdpClaims, Policy, PolicyInfo, Refusal, Resolution,
    ResolveDecision, ResolveInput,
};
use serde::Deserialize;

/// Where the department is, unless the settings say otherwise.
pub const DEPARTMENT: &str = "department";

/// The tenant's settings of this policy (a JSON object; unknown keys are refused).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Claim path carrying the department (default `department`).
    pub department_claim: Option<String>,
    /// The departments that may give team context, compared exactly (case-sensitive). A
    /// team's mapping must name the department as it appears in the token.
    pub allowed_departments: Vec<String>,
    /// Refuse a user whose token carries a department that is not on the list.
    #[serde(default)]
    pub refuse_unlisted: bool,
}

impl Settings {
    /// Parses and checks settings text. There is no default allow-list: a tenant must say
    /// which departments count, so empty settings are refused.
    pub fn parse(text: &str) -> Result<Settings, String> {
        let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text)
            .map_err(|e| {
                format!("settings are invalid: {e}; use a JSON object with allowed_departments")
            })?;
        let settings = Settings::deserialize(serde_json::Value::Object(object))
            .map_err(|e| format!("settings are invalid: {e}"))?;
        if let Some(path) = &settings.department_claim {
            rules::check_claim_path(path)
                .map_err(|why| format!("settings.department_claim: {why}"))?;
        }
        if settings.allowed_departments.is_empty() {
            return Err("settings.allowed_departments is empty: list the departments that give team context, e.g. [\"Engineering\"]".to_owned());
        }
        if let Some(blank) = settings
            .allowed_departments
            .iter()
            .position(|d| d.trim().is_empty())
        {
            return Err(format!(
                "settings.allowed_departments[{blank}] is blank: name a department"
            ));
        }
        Ok(settings)
    }

    fn allows(&self, department: &str) -> bool {
        self.allowed_departments.iter().any(|d| d == department)
    }
}

/// The department-teams policy.
pub struct DepartmentTeams;

impl Policy for DepartmentTeams {
    fn info() -> PolicyInfo {
        gatehouse_policy_sdk::info("department-teams", env!("CARGO_PKG_VERSION"))
    }

    fn validate_settings(settings: &str) -> Result<(), String> {
        Settings::parse(settings).map(|_| ())
    }

    fn claim_mapping(idp: &IdpClaims, settings: &str) -> ClaimMap {
        // Unreadable settings make `resolve` refuse every token; the mapping only says
        // where to look.
        let claim = Settings::parse(settings)
            .ok()
            .and_then(|s| s.department_claim)
            .unwrap_or_else(|| DEPARTMENT.to_owned());
        ClaimMap {
            user_claim: idp.user_claim.clone().unwrap_or_else(|| "email".to_owned()),
            va_name_claim: idp.va_name_claim.clone(),
            team_claim: Some(idp.team_claim.clone().unwrap_or(claim)),
            extra_claims: Vec::new(),
        }
    }

    fn resolve(input: &ResolveInput) -> ResolveDecision {
        let settings = match Settings::parse(&input.settings) {
            Ok(settings) => settings,
            Err(why) => {
                return refuse(
                    Vec::new(),
                    "policy_settings",
                    format!("the tenant's policy settings cannot be used ({why}); a tenant admin must fix them"),
                )
            }
        };
        let mut trace = Vec::new();
        let unlisted: Vec<&String> = input
            .team_values
            .iter()
            .filter(|v| !settings.allows(v))
            .collect();
        let is_user = input.virtual_accounts.is_empty();
        if settings.refuse_unlisted && is_user {
            if let Some(department) = unlisted.first() {
                trace.push(format!("department {department:?} is not on the allow-list"));
                return refuse(
                    trace,
                    "department_not_allowed",
                    format!("department {department:?} may not sign in to this tenant; ask a tenant admin to allow it"),
                );
            }
        }
        let mut narrowed = input.clone();
        narrowed.teams.retain(|t| settings.allows(&t.matched));
        narrowed.team_values.retain(|v| settings.allows(v));
        for department in &unlisted {
            trace.push(format!(
                "department {department:?} is not on the allow-list: it gives no team"
            ));
        }
        let mut decision = rules::resolve(&narrowed);
        trace.append(&mut decision.trace);
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

export_policy!(DepartmentTeams);

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_policy_sdk::PolicyEvaluator;
    use gatehouse_rules::cases;

    #[test]
    fn settings_errors_name_the_key() {
        for (text, needle) in [
            ("{}", "missing field `allowed_departments`"),
            (r#"{"allowed_departments": []}"#, "allowed_departments is empty"),
            (r#"{"allowed_departments": [" "]}"#, "allowed_departments[0] is blank"),
            (r#"{"allowed_departments": ["x"], "teams": 1}"#, "unknown field `teams`"),
            (
                r#"{"allowed_departments": ["x"], "department_claim": "a..b"}"#,
                "settings.department_claim",
            ),
        ] {
            let message = DepartmentTeams::validate_settings(text).expect_err(text);
            assert!(message.contains(needle), "{message:?} should contain {needle:?}");
        }
    }

    /// `cases/*.json` pass natively, through the same WIT conversions as the component.
    #[test]
    fn every_case_passes() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cases");
        let cases = cases::load_dir(&dir).unwrap_or_else(|e| panic!("loading cases: {e}"));
        assert!(cases.len() >= 8, "expected at least 8 cases, found {}", cases.len());
        let mut policy = PolicyEvaluator::<DepartmentTeams>::new();
        let failures: Vec<String> = cases
            .iter()
            .map(|(file, case)| (file, case.run(&mut policy)))
            .filter(|(_, report)| !report.passed)
            .map(|(file, r)| {
                format!("{file}: {}\n  expected: {}\n  actual:   {}", r.name, r.expected, r.actual)
            })
            .collect();
        assert!(failures.is_empty(), "{} cases failed:\n{}", failures.len(), failures.join("\n"));
    }
}
