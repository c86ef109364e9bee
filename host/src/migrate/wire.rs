//! The legacy export as it arrives (docs/migration.md): unknown fields are refused, so a
//! typo is named rather than ignored.

use gatehouse_rules::{Role, UserStatus};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Export {
    pub format: String,
    #[serde(default)]
    pub sso: Option<Sso>,
    #[serde(default)]
    pub users: Vec<User>,
    #[serde(default)]
    pub external_identities: Vec<ExternalIdentity>,
    #[serde(default)]
    pub resources: Vec<Resource>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Sso {
    pub id: String,
    pub fqn: String,
    pub issuer: String,
    pub client_id: String,
    #[serde(default)]
    pub discovery_url: Option<String>,
    #[serde(default)]
    pub jwks_uri: Option<String>,
    #[serde(default)]
    pub email_claim: Option<String>,
    #[serde(default)]
    pub groups_claim: Option<String>,
    #[serde(default)]
    pub role_mapping: Option<RoleMapping>,
    #[serde(default)]
    pub scim_inline: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RoleMapping {
    pub enabled: bool,
    #[serde(default)]
    pub admin_groups: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum RoleSetBy {
    Manual,
    RoleMapping,
    Default,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct User {
    pub email: String,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub given_name: Option<String>,
    #[serde(default)]
    pub family_name: Option<String>,
    pub status: UserStatus,
    pub role: Role,
    pub role_set_by: RoleSetBy,
    #[serde(default)]
    pub groups: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum UsedBy {
    #[default]
    Machines,
    Humans,
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into()]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ExternalIdentity {
    pub name: String,
    pub issuer: String,
    pub jwks_uri: String,
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    #[serde(default)]
    pub user_claim: Option<String>,
    #[serde(default)]
    pub name_claim: Option<String>,
    #[serde(default)]
    pub name_value: Option<String>,
    #[serde(default)]
    pub team_claim: Option<String>,
    #[serde(default)]
    pub team_values: Vec<String>,
    #[serde(default)]
    pub used_by: UsedBy,
    #[serde(default)]
    pub sso_fqn: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub(super) enum Subject {
    User(String),
    Team(String),
    ExternalIdentity(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Collaborator {
    pub subject: Subject,
    pub role: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Resource {
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub collaborators: Vec<Collaborator>,
}
