//! Gatehouse's identity rules (SPEC §2–§5) as pure Rust.
//!
//! This crate is the single place where a decision rule is written. The default policy
//! component (`guest/`) and the example policies (`policies/*`) are thin wrappers that
//! convert WIT values to these types and back; native unit tests and the case files in
//! `policies/default/cases` exercise the very same functions.
//!
//! The types mirror `wit/policy.wit` one to one. With the `serde` feature they also have
//! the JSON form used by case files and by the host's evaluation route (snake_case names,
//! enums as lowercase strings).

#![forbid(unsafe_code)]

mod rules;

#[cfg(feature = "serde")]
pub mod cases;

pub use rules::{
    check_claim_path, claim_mapping, effective_role, explain_role, is_team_name, login, resolve,
    team_name, validate_settings, Settings, TEAM_NAME_MAX,
};

/// The contract version (`wit/policy.wit`) these types implement.
pub const CONTRACT_VERSION: &str = "0.1.2";

#[cfg(feature = "serde")]
use serde::{Deserialize, Serialize};

/// How users come into a tenant. Exactly one per tenant.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(Serialize, Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum ProvisioningMode {
    Scim,
    Jit,
    InviteOnly,
}

impl ProvisioningMode {
    /// The mode's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ProvisioningMode::Scim => "scim",
            ProvisioningMode::Jit => "jit",
            ProvisioningMode::InviteOnly => "invite_only",
        }
    }
}

/// Lifecycle state of a user record.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(Serialize, Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum UserStatus {
    Invited,
    Active,
    Deactivated,
}

impl UserStatus {
    /// The status's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            UserStatus::Invited => "invited",
            UserStatus::Active => "active",
            UserStatus::Deactivated => "deactivated",
        }
    }
}

/// How a user record came to exist.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(Serialize, Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum UserSource {
    Scim,
    Jit,
    Invite,
    Migration,
}

/// A tenant role; `Admin` outranks `Member`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(Serialize, Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum Role {
    Member,
    Admin,
}

/// Who decided a user's effective role.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(Serialize, Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum RoleSource {
    Manual,
    Group,
    Initial,
}

/// A refusal with a stable code and a message a person can act on.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct Refusal {
    pub code: String,
    pub message: String,
}

impl Refusal {
    /// A refusal with `code` and `message`.
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Refusal {
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

/// Name, version and contract of a policy.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct PolicyInfo {
    pub name: String,
    pub version: String,
    pub contract: String,
}

// ------------------------------------------------------------------------- login

/// Claims of a validated SSO login.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize), serde(default))]
pub struct LoginClaims {
    pub email: String,
    pub subject: String,
    pub name: Option<String>,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
}

/// The user record that already carries the login's email.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct ExistingUser {
    pub id: String,
    pub status: UserStatus,
    pub source: UserSource,
}

/// Everything the login decision depends on.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct LoginInput {
    pub mode: ProvisioningMode,
    pub sso_configured: bool,
    pub claims: LoginClaims,
    #[cfg_attr(feature = "serde", serde(default))]
    pub user: Option<ExistingUser>,
    #[cfg_attr(feature = "serde", serde(default = "empty_settings"))]
    pub settings: String,
}

/// The profile of a user created just in time.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct NewUser {
    pub email: String,
    pub display_name: Option<String>,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
}

/// What the host does with a login.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(Serialize, Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum LoginOutcome {
    Create(NewUser),
    Activate(String),
    Allow(String),
    Refuse(Refusal),
}

/// A login outcome with the rules that led to it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct LoginDecision {
    pub outcome: LoginOutcome,
    #[cfg_attr(feature = "serde", serde(default))]
    pub trace: Vec<String>,
}

// ----------------------------------------------------------------------- resolve

/// A claim extracted at a dot path.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct Claim {
    pub path: String,
    pub values: Vec<String>,
}

/// A virtual account whose mapping matched the VA-name claim.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct VaCandidate {
    pub id: String,
    pub name: String,
    pub enabled: bool,
}

/// How a user candidate matched the user claim.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(Serialize, Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum UserMatch {
    Mapping,
    Email,
}

/// A user whose mapping or email matched the user claim.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct UserCandidate {
    pub id: String,
    pub email: String,
    pub status: UserStatus,
    pub matched_by: UserMatch,
    #[cfg_attr(feature = "serde", serde(default))]
    pub teams: Vec<String>,
}

/// A team whose mapping matched a team-claim value.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct TeamCandidate {
    pub id: String,
    pub name: String,
    pub matched: String,
}

/// Everything the token-resolution decision depends on.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize), serde(default))]
pub struct ResolveInput {
    pub idp: String,
    pub user_claim: Option<String>,
    pub va_name: Option<String>,
    pub team_values: Vec<String>,
    pub extra: Vec<Claim>,
    pub virtual_accounts: Vec<VaCandidate>,
    pub users: Vec<UserCandidate>,
    pub teams: Vec<TeamCandidate>,
    #[cfg_attr(feature = "serde", serde(default = "empty_settings"))]
    pub settings: String,
}

/// A token resolved to a user.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct UserResolution {
    pub id: String,
    pub teams: Vec<String>,
}

/// Who a token is.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(Serialize, Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum Resolution {
    VirtualAccount(String),
    User(UserResolution),
    Refuse(Refusal),
}

/// A resolution with the rules that led to it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct ResolveDecision {
    pub outcome: Resolution,
    #[cfg_attr(feature = "serde", serde(default))]
    pub trace: Vec<String>,
}

// ------------------------------------------------------------------------- roles

/// The inputs of one user's effective role.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize), serde(default))]
pub struct RoleInput {
    pub manual: Option<Role>,
    pub team_roles: Vec<Role>,
}

/// A user's effective role and who decided it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct RoleDecision {
    pub role: Role,
    pub source: RoleSource,
}

// ----------------------------------------------------------------- claim mapping

/// Claim overrides configured on an identity provider.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize), serde(default))]
pub struct IdpClaims {
    pub user_claim: Option<String>,
    pub va_name_claim: Option<String>,
    pub team_claim: Option<String>,
}

/// Where the host finds each value in a token's claims (dot paths).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct ClaimMap {
    pub user_claim: String,
    pub va_name_claim: Option<String>,
    pub team_claim: Option<String>,
    #[cfg_attr(feature = "serde", serde(default))]
    pub extra_claims: Vec<String>,
}

#[cfg(feature = "serde")]
fn empty_settings() -> String {
    "{}".to_owned()
}
