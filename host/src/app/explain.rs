//! `policy explain`: what the tenant's active policy decides for a set of token claims,
//! and why. The claims are taken as given (no signature check: that is the point of an
//! explanation), then follow the edge's own path: the identity provider, the policy's
//! claim map, the values it picks out, the directory's candidates, the policy's
//! `resolve` with its trace, the decision carried out, and, for a user, the effective-role
//! decision with the policy's role trace when its contract version offers one.
//!
//! Nothing here is a real decision: it is not recorded in the decision ring, not offered to
//! a shadow, not memoised, not counted in the edge's metrics and not counted toward
//! automatic rollback.

use super::{App, AppError, PolicyFailure};
use crate::edge::{self, ClaimValues, Identity};
use crate::identity::User;
use crate::policy::{PolicyError, RoleExplanation};
use gatehouse_rules as rules;
use serde::Serialize;

/// A set of token claims to explain.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExplainRequest {
    /// The token's claims (a JSON object), taken as verified.
    #[schema(value_type = Object)]
    pub claims: serde_json::Map<String, serde_json::Value>,
    /// The identity provider, by name. Default: the one whose issuer is the claims' `iss`.
    #[serde(default)]
    pub idp: Option<String>,
}

/// What the active policy decides for the claims, step by step.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Explanation {
    /// The active version (`null`: the built-in default policy).
    pub policy_version: Option<u64>,
    pub policy: rules::PolicyInfo,
    /// The identity provider the claims are read as coming from.
    pub idp: String,
    /// `name` (asked for) or `issuer` (the claims' `iss`).
    pub idp_chosen_by: &'static str,
    /// The identity provider's own claim overrides, as given to `claim-mapping`.
    pub idp_claims: rules::IdpClaims,
    /// Where the policy said to find each value (`claim-mapping`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claim_map: Option<rules::ClaimMap>,
    /// The values found at those paths.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extracted: Option<Extracted>,
    /// The candidates the host matched to those values (what the policy may choose from).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidates: Option<Candidates>,
    /// The policy's `resolve` decision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolution: Option<rules::Resolution>,
    /// The rules the policy says it applied, in order.
    pub trace: Vec<String>,
    /// The decision carried out: who the token would be, or why it would be refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusal: Option<ExplainedRefusal>,
    /// For a user: the effective-role decision for their stored manual role and teams.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<ExplainedRole>,
    /// The policy failed: the request would be refused with `policy_error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_error: Option<PolicyFailure>,
}

/// The values a claim map picked out of the claims.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Extracted {
    pub user_claim: Option<String>,
    pub va_name: Option<String>,
    pub team_values: Vec<String>,
    pub extra: Vec<rules::Claim>,
}

/// What the host found for the extracted values.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Candidates {
    pub virtual_accounts: Vec<rules::VaCandidate>,
    pub users: Vec<rules::UserCandidate>,
    pub teams: Vec<rules::TeamCandidate>,
}

/// A refusal: the reason code a client would get, and its message.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ExplainedRefusal {
    /// `policy` (the policy's `refuse`) or `host` (e.g. a deactivated user, a disabled
    /// virtual account).
    pub by: &'static str,
    pub reason: String,
    pub message: String,
}

/// The effective-role decision of a resolved user.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ExplainedRole {
    pub input: rules::RoleInput,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<rules::RoleDecision>,
    /// The policy's role trace (contract 0.1.1 `explain-role`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<Vec<String>>,
    /// Why there is no trace (a policy built against an earlier contract).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

fn failure(e: &PolicyError) -> PolicyFailure {
    PolicyFailure {
        reason: "policy_error",
        kind: e.kind(),
        message: e.to_string(),
    }
}

impl App {
    /// Explains what the tenant's active policy decides for `request.claims`.
    pub fn explain(&self, tenant: &str, request: &ExplainRequest) -> Result<Explanation, AppError> {
        let slug = self.tenant(tenant)?.slug;
        let policy = self.current_policy(&slug)?;
        let info = policy
            .compiled()
            .map(|c| c.info.clone())
            .unwrap_or_else(|e| rules::PolicyInfo {
                name: "unavailable".into(),
                version: String::new(),
                contract: e.to_string(),
            });
        let dir = self
            .edge
            .snapshot(&self.store, &slug)
            .map_err(AppError::Internal)?;
        let (idp, chosen_by) = match (&request.idp, request.claims.get("iss")) {
            (Some(name), _) => (
                dir.idp_named(name).ok_or_else(|| {
                    AppError::BadRequest(format!(
                        "identity provider {name:?} is not configured for tenant {slug}"
                    ))
                })?,
                "name",
            ),
            (None, Some(serde_json::Value::String(iss))) => (
                dir.idps.get(iss).ok_or_else(|| {
                    AppError::BadRequest(format!(
                        "no identity provider of tenant {slug} has issuer {iss:?}: pass the provider's name (idp)"
                    ))
                })?,
                "issuer",
            ),
            (None, _) => {
                return Err(AppError::BadRequest(
                    "the claims have no string `iss`: pass the identity provider's name (idp)"
                        .into(),
                ))
            }
        };
        let mut explanation = Explanation {
            policy_version: policy.version,
            policy: info,
            idp: idp.name.clone(),
            idp_chosen_by: chosen_by,
            idp_claims: idp.claims.clone(),
            claim_map: None,
            extracted: None,
            candidates: None,
            resolution: None,
            trace: Vec::new(),
            identity: None,
            refusal: None,
            role: None,
            policy_error: None,
        };
        let values = match edge::claim_values(&self.engine, &policy, idp, &request.claims) {
            Ok(values) => values,
            Err(e) => {
                explanation.policy_error = Some(failure(&e));
                return Ok(explanation);
            }
        };
        explanation.claim_map = policy.claim_mapping(&self.engine, &idp.claims).ok();
        let input = dir.candidates_for(&idp.name, &values);
        let ClaimValues {
            user_claim,
            va_name,
            team_values,
            ..
        } = values;
        explanation.extracted = Some(Extracted {
            user_claim,
            va_name,
            team_values,
            extra: input.extra.clone(),
        });
        explanation.candidates = Some(Candidates {
            virtual_accounts: input.virtual_accounts.clone(),
            users: input.users.clone(),
            teams: input.teams.clone(),
        });
        let decision = match policy.explain_resolve(&self.engine, &input) {
            Ok(decision) => decision,
            Err(e) => {
                explanation.policy_error = Some(failure(&e));
                return Ok(explanation);
            }
        };
        explanation.trace = decision.trace.clone();
        match edge::identity_for(&dir, &idp.name, &decision.outcome, None) {
            Ok(identity) => explanation.identity = Some(identity),
            Err(deny) => {
                let by = match &decision.outcome {
                    rules::Resolution::Refuse(_) => "policy",
                    _ => "host",
                };
                explanation.refusal = Some(ExplainedRefusal {
                    by,
                    reason: deny.reason.into_owned(),
                    message: deny.message,
                });
            }
        }
        if let rules::Resolution::User(user) = &decision.outcome {
            explanation.role = self.explain_role(&slug, &policy, &user.id)?;
        }
        explanation.resolution = Some(decision.outcome);
        Ok(explanation)
    }

    /// The effective-role decision for a user's stored manual role and teams' roles.
    fn explain_role(
        &self,
        tenant: &str,
        policy: &crate::policy::TenantPolicy,
        user: &str,
    ) -> Result<Option<ExplainedRole>, AppError> {
        let Some(record) = self.store.get::<User>(tenant, &[user])? else {
            return Ok(None);
        };
        let state = super::identity::RoleState::from(&record);
        let Some(input) = self
            .role_inputs(tenant, &[state], &super::identity::RoleView::empty())?
            .pop()
        else {
            return Ok(None);
        };
        let mut role = ExplainedRole {
            input: input.clone(),
            decision: None,
            trace: None,
            note: None,
        };
        match policy.explain_role(&self.engine, &input) {
            Ok(RoleExplanation { decision, trace }) => {
                role.decision = Some(decision);
                match trace {
                    Some(trace) => role.trace = Some(trace),
                    None => {
                        role.note = Some(format!(
                            "this policy was built against contract {} and does not explain role decisions",
                            policy
                                .compiled()
                                .map(|c| c.info.contract.clone())
                                .unwrap_or_default()
                        ))
                    }
                }
            }
            Err(e) => role.note = Some(format!("the policy failed deciding the role: {e}")),
        }
        Ok(Some(role))
    }
}
