//! The identity model (SPEC §1): users, teams, tokens, audit entries, as stored. Newtypes
//! carry the rules that must not be forgotten (email and team-name comparison, slugs).

use crate::store::{Record, Space};
use gatehouse_rules::{Role, RoleSource, UserSource, UserStatus};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// An email address, kept as given; compared case-insensitively through [`Email::key`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    /// Parses an address: one `@`, something on both sides, no spaces or control
    /// characters, at most 254 characters.
    pub fn parse(text: &str) -> Result<Email, String> {
        let text = text.trim();
        let shown: String = text.chars().take(80).collect();
        let valid = text.len() <= 254
            && !text.chars().any(|c| c.is_whitespace() || c.is_control())
            && matches!(text.split_once('@'), Some((local, domain))
                if !local.is_empty() && !domain.is_empty() && !domain.contains('@') && !domain.starts_with('.') && !domain.ends_with('.'));
        if valid {
            Ok(Email(text.to_owned()))
        } else {
            Err(format!(
                "email {shown:?} is invalid: use an address like name@example.com"
            ))
        }
    }

    /// The address as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The comparison key: emails are unique per tenant, case-insensitively.
    pub fn key(&self) -> String {
        self.0.to_lowercase()
    }
}

/// A team name: `^[A-Za-z0-9_-]{1,36}$`, unique per tenant case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeamName(String);

impl TeamName {
    /// Parses a team name, saying what is allowed when it is not one.
    pub fn parse(text: &str) -> Result<TeamName, String> {
        let valid = (1..=36).contains(&text.len())
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if valid {
            Ok(TeamName(text.to_owned()))
        } else {
            let shown: String = text.chars().take(80).collect();
            Err(format!(
                "team name {shown:?} is invalid: use 1-36 of A-Z a-z 0-9 _ -"
            ))
        }
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The comparison key.
    pub fn key(&self) -> String {
        self.0.to_ascii_lowercase()
    }
}

/// Checks a group display name as an identity provider sends it: 1-256 characters, no
/// control characters (spaces, accents and punctuation are kept exactly).
pub fn check_display_name(text: &str) -> Result<(), String> {
    let count = text.chars().count();
    if count == 0 || count > 256 {
        return Err(format!("displayName must be 1-256 characters, not {count}"));
    }
    if text.chars().any(char::is_control) {
        return Err("displayName must not contain control characters".into());
    }
    if text.trim().is_empty() {
        return Err("displayName must not be only spaces".into());
    }
    Ok(())
}

/// The name of the built-in team every tenant has.
pub const EVERYONE: &str = "everyone";

/// A new random id with a readable prefix (`usr_`, `team_`, `tok_`).
pub fn new_id(prefix: &str) -> String {
    let bytes: [u8; 10] = rand::random();
    format!("{prefix}{}", hex::encode(bytes))
}

/// An identity-provider mapping on its target: `{idp, value}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    pub idp: String,
    pub value: String,
}

impl Mapping {
    /// Checks the IdP name rule and a non-empty value.
    pub fn validate(&self) -> Result<(), String> {
        crate::model::TenantId::parse(&self.idp)
            .map_err(|_| format!("identity provider name {:?} is invalid: use 1-63 of a-z 0-9 - starting with a letter or digit", self.idp))?;
        if self.value.is_empty() || self.value.len() > 512 {
            return Err("a mapping value must be 1-512 characters".into());
        }
        Ok(())
    }
}

/// A user as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct User {
    pub id: String,
    /// Unique per tenant, case-insensitively. Empty (and left out of the record and every
    /// answer) for a SCIM user whose `userName` is not an email and who has no `emails`
    /// (SPEC §7): such a user is matched at the edge by its `userName` and cannot log in by
    /// password or SSO until an email arrives.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub email: String,
    pub display_name: Option<String>,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    pub external_id: Option<String>,
    pub status: UserStatus,
    pub source: UserSource,
    /// The effective role, as the tenant's policy last decided it.
    pub role: Role,
    pub role_source: RoleSource,
    /// The role an admin set by hand, if any; it always wins.
    pub manual_role: Option<Role>,
    /// Never set: password hashes are kept apart from the user record (space
    /// `passwords`, docs/decisions.md 30), so no answer shows one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub password_hash: Option<String>,
    #[serde(default)]
    pub mappings: Vec<Mapping>,
    /// When the user was last deactivated. Sessions issued until then stay revoked after a
    /// reactivation (SPEC §3: a session is revoked when its user is deactivated); PATs pass
    /// again once the user is active (decision 26).
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub deactivated_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Record for User {
    const SPACE: Space = Space::Users;

    /// The role fields live in the users' side table, so recomputing the roles of a large
    /// team rewrites a few small buckets instead of every user record.
    fn side(&self) -> Vec<u8> {
        role_part(self.role, self.role_source, self.manual_role)
    }

    fn set_side(&mut self, part: &[u8]) -> Result<(), String> {
        (self.role, self.role_source, self.manual_role) = parse_role_part(part)?;
        Ok(())
    }
}

/// A user's side part: effective role, its source, the manual role.
pub fn role_part(role: Role, source: RoleSource, manual: Option<Role>) -> Vec<u8> {
    let role_byte = |role: Role| match role {
        Role::Member => 1,
        Role::Admin => 2,
    };
    vec![
        role_byte(role),
        match source {
            RoleSource::Manual => 1,
            RoleSource::Group => 2,
            RoleSource::Initial => 3,
        },
        manual.map_or(0, role_byte),
    ]
}

/// The inverse of [`role_part`].
pub fn parse_role_part(part: &[u8]) -> Result<(Role, RoleSource, Option<Role>), String> {
    let role = |byte: u8| match byte {
        1 => Ok(Role::Member),
        2 => Ok(Role::Admin),
        other => Err(format!("unknown role {other} in a user's side part")),
    };
    let [r, s, m] = part else {
        return Err(format!(
            "a user's side part has {} bytes, not 3",
            part.len()
        ));
    };
    let source = match s {
        1 => RoleSource::Manual,
        2 => RoleSource::Group,
        3 => RoleSource::Initial,
        other => return Err(format!("unknown role source {other} in a user's side part")),
    };
    let manual = match m {
        0 => None,
        m => Some(role(*m)?),
    };
    Ok((role(*r)?, source, manual))
}

/// A team as stored (members are kept in index spaces).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Team {
    pub id: String,
    /// The rule-following name (`^[A-Za-z0-9_-]{1,36}$`): what headers, claims and
    /// mappings use.
    pub name: String,
    /// The name people see: for a SCIM-managed team, the group's `displayName` exactly as
    /// the identity provider sent it (the team name is derived from it by the tenant's
    /// policy). `None` for teams made by an admin or a migration, and for SCIM teams stored
    /// before display names were kept: their display name is their name.
    #[serde(default)]
    pub display_name: Option<String>,
    /// The tenant role every member inherits, if any.
    pub role: Option<Role>,
    #[serde(default)]
    pub mappings: Vec<Mapping>,
    /// Set when a SCIM connection manages this team (its SSO id and the group's externalId).
    #[serde(default)]
    pub scim: Option<ScimLink>,
    /// The built-in `everyone` team.
    #[serde(default)]
    pub builtin: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Record for Team {
    const SPACE: Space = Space::Teams;
}

impl Team {
    /// The name people see: the display name when it has one, else the team name.
    pub fn shown_name(&self) -> &str {
        self.display_name.as_deref().unwrap_or(&self.name)
    }
}

/// Which SCIM connection manages a team.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScimLink {
    pub sso_id: String,
    pub external_id: Option<String>,
}

/// What a token authenticates as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// A user's personal access token.
    Pat,
    /// A virtual account's API token.
    VirtualAccount,
}

/// A token as stored, keyed by the SHA-256 of its secret (the secret is never stored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Token {
    pub id: String,
    pub kind: TokenKind,
    /// The user or virtual account it belongs to.
    pub owner: String,
    pub name: String,
    /// Hex SHA-256 of the secret.
    pub sha256: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub revoked_at: Option<OffsetDateTime>,
}

impl Record for Token {
    const SPACE: Space = Space::Tokens;
}

impl Token {
    /// Whether the token authenticates at `now`.
    pub fn is_live(&self, now: OffsetDateTime) -> bool {
        self.revoked_at.is_none_or(|revoked| revoked > now)
            && self.expires_at.is_none_or(|expires| expires > now)
    }
}

/// One audit entry: who changed what, when, from what to what. Secrets never appear.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub actor: String,
    pub action: String,
    pub target: String,
    /// The record before the change (kept as written: never re-parsed on the way out).
    #[schema(value_type = Option<serde_json::Value>)]
    pub before: Option<Box<serde_json::value::RawValue>>,
    #[schema(value_type = Option<serde_json::Value>)]
    pub after: Option<Box<serde_json::value::RawValue>>,
}

impl Record for AuditEntry {
    const SPACE: Space = Space::Audit;
}

/// An email waiting to be sent (or sent) by the outbox relay. It is pending while both
/// `sent_at` and `failed_at` are unset (and then also listed in `Space::OutboxPending`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OutboxMessage {
    /// `<created_at in ns, 20 digits>-msg_<random>`: ids sort oldest first.
    pub id: String,
    pub to: String,
    pub subject: String,
    pub body: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When the SMTP server accepted the message.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub sent_at: Option<OffsetDateTime>,
    /// Delivery tries so far, the successful one included.
    #[serde(default)]
    pub attempts: u32,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub last_attempt_at: Option<OffsetDateTime>,
    /// Why the last failed try failed (kept after a later success).
    #[serde(default)]
    pub last_error: Option<String>,
    /// When the relay gave up on the message (attempts used up, or it cannot be built).
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub failed_at: Option<OffsetDateTime>,
}

impl Record for OutboxMessage {
    const SPACE: Space = Space::Outbox;
}

/// What a one-time link does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkPurpose {
    SetPassword,
    ResetPassword,
}

/// A one-time link, keyed by the SHA-256 of its secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Link {
    pub purpose: LinkPurpose,
    pub user: String,
    /// Hex SHA-256 of the secret (the record's key), so a newer link of the user can
    /// remove it; empty in links stored before it was kept.
    #[serde(default)]
    pub sha256: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

impl Record for Link {
    const SPACE: Space = Space::Links;
}

/// A machine identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VirtualAccount {
    pub id: String,
    pub name: String,
    pub enabled: bool,
    pub role: Role,
    #[serde(default)]
    pub mappings: Vec<Mapping>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Record for VirtualAccount {
    const SPACE: Space = Space::VirtualAccounts;
}

/// An identity provider: validates externally issued JWTs (it never creates users).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IdentityProvider {
    pub name: String,
    pub issuer: String,
    /// Exactly one of `jwks_uri` and `discovery_url`.
    pub jwks_uri: Option<String>,
    pub discovery_url: Option<String>,
    pub audiences: Vec<String>,
    pub algorithms: Vec<String>,
    pub leeway_seconds: u32,
    pub user_claim: Option<String>,
    pub va_name_claim: Option<String>,
    pub team_claim: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Record for IdentityProvider {
    const SPACE: Space = Space::IdentityProviders;
}

/// An SSO configuration (OIDC): authentication only, plus its SCIM endpoint's token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SsoConfig {
    pub id: String,
    pub issuer: String,
    pub client_id: String,
    /// Never shown after it is set.
    pub client_secret: Option<String>,
    pub discovery_url: Option<String>,
    pub jwks_uri: Option<String>,
    pub email_claim: String,
    pub unique_id_claim: String,
    /// Hex SHA-256 of the current SCIM bearer token.
    pub scim_token_sha256: Option<String>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub scim_token_created_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Record for SsoConfig {
    const SPACE: Space = Space::SsoConfigs;
}

/// Who collaborates on a resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Subject {
    User(String),
    Team(String),
    VirtualAccount(String),
    /// A legacy External Identity, by name (until the migration replaces it).
    ExternalIdentity(String),
}

/// A collaborator on a resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Collaborator {
    pub subject: Subject,
    pub role: String,
}

/// Something identities collaborate on (model, workspace, MCP server, agent, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Resource {
    pub id: String,
    pub kind: String,
    pub name: String,
    pub collaborators: Vec<Collaborator>,
    pub created_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl Record for Resource {
    const SPACE: Space = Space::Resources;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_compare_case_insensitively_and_refuse_junk() {
        assert_eq!(Email::parse(" Ann@Acme.IO ").unwrap().key(), "ann@acme.io");
        for bad in [
            "",
            "ann",
            "@acme.io",
            "ann@",
            "a b@acme.io",
            "ann@acme.io@x",
            "ann@.io",
            "a\u{0}@x.io",
        ] {
            assert!(
                Email::parse(bad).unwrap_err().contains("is invalid"),
                "{bad}"
            );
        }
    }

    #[test]
    fn team_names_follow_the_rule() {
        assert_eq!(TeamName::parse("ML-Ops_2").unwrap().key(), "ml-ops_2");
        for bad in ["", "a b", "é", &"x".repeat(37), "team/1"] {
            assert!(
                TeamName::parse(bad)
                    .unwrap_err()
                    .contains("1-36 of A-Z a-z 0-9 _ -"),
                "{bad}"
            );
        }
    }
}
