//! Admin-API commands beyond tenants, users and teams: identity providers, SSO configurations and SCIM tokens, resources, virtual accounts (and their
//! tokens, rotation with grace) and the audit log. Same conventions as `client.rs`:
//! readable output by default, `--json` prints the API's answer, API refusals exit non-zero.

use crate::client::{text, Api};
use anyhow::Result;
use clap::Subcommand;
use reqwest::Method;
use serde_json::{json, Value};

/// An identity provider's settings, as flags (the API checks them).
#[derive(clap::Args)]
pub struct IdpSettings {
    #[arg(long)]
    tenant: String,
    /// The provider's name.
    name: String,
    #[arg(long)]
    issuer: String,
    /// The JWKS URL (https; or give --discovery-url).
    #[arg(long)]
    jwks_uri: Option<String>,
    /// The OpenID discovery URL (instead of --jwks-uri).
    #[arg(long)]
    discovery_url: Option<String>,
    /// An accepted audience (repeat for more).
    #[arg(long = "audience")]
    audiences: Vec<String>,
    /// An accepted signing algorithm (repeat for more; default the API's).
    #[arg(long = "algorithm")]
    algorithms: Vec<String>,
    #[arg(long)]
    leeway_seconds: Option<u32>,
    #[arg(long)]
    user_claim: Option<String>,
    #[arg(long)]
    va_name_claim: Option<String>,
    #[arg(long)]
    team_claim: Option<String>,
}

impl IdpSettings {
    fn body(&self) -> Value {
        let mut body = json!({
            "name": self.name,
            "issuer": self.issuer,
            "jwks_uri": self.jwks_uri,
            "discovery_url": self.discovery_url,
            "audiences": self.audiences,
            "user_claim": self.user_claim,
            "va_name_claim": self.va_name_claim,
            "team_claim": self.team_claim,
        });
        if !self.algorithms.is_empty() {
            body["algorithms"] = json!(self.algorithms);
        }
        if let Some(leeway) = self.leeway_seconds {
            body["leeway_seconds"] = leeway.into();
        }
        body
    }
}

/// `gatehouse idp ...`
#[derive(Subcommand)]
pub enum IdpCommand {
    /// List identity providers.
    List {
        #[arg(long)]
        tenant: String,
    },
    /// Add an identity provider (unsafe settings are refused by the API).
    Create(IdpSettings),
    /// Replace an identity provider's settings (every setting: absent ones take defaults).
    Replace(IdpSettings),
    /// Delete an identity provider (refused while something maps it).
    Delete {
        #[arg(long)]
        tenant: String,
        name: String,
    },
}

/// Runs an `idp` command.
pub fn idp(api: &Api, command: IdpCommand) -> Result<()> {
    match command {
        IdpCommand::List { tenant } => {
            let idps = api.call(
                Method::GET,
                &format!("/api/v1/tenants/{tenant}/identity-providers"),
                None,
            )?;
            api.show(&idps, &["NAME", "ISSUER", "AUDIENCES", "KEYS FROM"], |v| {
                v["identity_providers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|i| {
                        vec![
                            text(i, "name"),
                            text(i, "issuer"),
                            text(i, "audiences"),
                            if i["jwks_uri"].is_string() {
                                text(i, "jwks_uri")
                            } else {
                                text(i, "discovery_url")
                            },
                        ]
                    })
                    .collect()
            });
        }
        IdpCommand::Create(settings) => {
            let idp = api.call(
                Method::POST,
                &format!("/api/v1/tenants/{}/identity-providers", settings.tenant),
                Some(settings.body()),
            )?;
            api.done(
                &idp,
                format!(
                    "added identity provider {} ({})",
                    text(&idp, "name"),
                    text(&idp, "issuer")
                ),
            );
        }
        IdpCommand::Replace(settings) => {
            let idp = api.call(
                Method::PUT,
                &format!(
                    "/api/v1/tenants/{}/identity-providers/{}",
                    settings.tenant, settings.name
                ),
                Some(settings.body()),
            )?;
            api.done(
                &idp,
                format!(
                    "replaced identity provider {} ({})",
                    text(&idp, "name"),
                    text(&idp, "issuer")
                ),
            );
        }
        IdpCommand::Delete { tenant, name } => {
            let answer = api.call(
                Method::DELETE,
                &format!("/api/v1/tenants/{tenant}/identity-providers/{name}"),
                None,
            )?;
            api.done(&answer, format!("deleted identity provider {name}"));
        }
    }
    Ok(())
}

/// `gatehouse sso ...`
#[derive(Subcommand)]
pub enum SsoCommand {
    /// List SSO configurations (never their secrets).
    List {
        #[arg(long)]
        tenant: String,
    },
    /// Add an SSO configuration (OIDC); the API checks the settings.
    Create {
        #[arg(long)]
        tenant: String,
        /// The configuration's id.
        id: String,
        #[arg(long)]
        issuer: String,
        #[arg(long)]
        client_id: String,
        /// The client secret (or set GATEHOUSE_SSO_CLIENT_SECRET to keep it out of the shell
        /// history).
        #[arg(long, env = "GATEHOUSE_SSO_CLIENT_SECRET", hide_env_values = true)]
        client_secret: Option<String>,
        #[arg(long)]
        discovery_url: Option<String>,
        #[arg(long)]
        jwks_uri: Option<String>,
        #[arg(long)]
        email_claim: Option<String>,
        #[arg(long)]
        unique_id_claim: Option<String>,
    },
    /// Delete an SSO configuration.
    Delete {
        #[arg(long)]
        tenant: String,
        id: String,
    },
    /// Generate the configuration's SCIM token (shown once; replaces any previous one).
    ScimToken {
        #[arg(long)]
        tenant: String,
        id: String,
    },
}

/// Runs an `sso` command.
pub fn sso(api: &Api, command: SsoCommand) -> Result<()> {
    match command {
        SsoCommand::List { tenant } => {
            let list = api.call(Method::GET, &format!("/api/v1/tenants/{tenant}/sso"), None)?;
            api.show(
                &list,
                &["ID", "ISSUER", "CLIENT", "SCIM TOKEN", "SCIM BASE URL"],
                |v| {
                    v["sso"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|c| {
                            vec![
                                text(c, "id"),
                                text(c, "issuer"),
                                text(c, "client_id"),
                                if c["scim_token_set"] == true {
                                    "set"
                                } else {
                                    "-"
                                }
                                .to_owned(),
                                text(c, "scim_base_url"),
                            ]
                        })
                        .collect()
                },
            );
        }
        SsoCommand::Create {
            tenant,
            id,
            issuer,
            client_id,
            client_secret,
            discovery_url,
            jwks_uri,
            email_claim,
            unique_id_claim,
        } => {
            let body = json!({
                "id": id,
                "issuer": issuer,
                "client_id": client_id,
                "client_secret": client_secret,
                "discovery_url": discovery_url,
                "jwks_uri": jwks_uri,
                "email_claim": email_claim,
                "unique_id_claim": unique_id_claim,
            });
            let view = api.call(
                Method::POST,
                &format!("/api/v1/tenants/{tenant}/sso"),
                Some(body),
            )?;
            api.done(
                &view,
                format!(
                    "added SSO configuration {} ({})",
                    text(&view, "id"),
                    text(&view, "issuer")
                ),
            );
        }
        SsoCommand::Delete { tenant, id } => {
            let answer = api.call(
                Method::DELETE,
                &format!("/api/v1/tenants/{tenant}/sso/{id}"),
                None,
            )?;
            api.done(&answer, format!("deleted SSO configuration {id}"));
        }
        SsoCommand::ScimToken { tenant, id } => {
            let token = api.call(
                Method::POST,
                &format!("/api/v1/tenants/{tenant}/sso/{id}/scim-token"),
                None,
            )?;
            api.done(
                &token,
                format!(
                    "SCIM base URL: {}\nSCIM token (shown once): {}",
                    text(&token, "scim_base_url"),
                    text(&token, "token")
                ),
            );
        }
    }
    Ok(())
}

/// `gatehouse resource ...`
#[derive(Subcommand)]
pub enum ResourceCommand {
    /// List resources.
    List {
        #[arg(long)]
        tenant: String,
    },
    /// Create a resource.
    Create {
        #[arg(long)]
        tenant: String,
        /// What it is (model, workspace, mcp_server, ...).
        #[arg(long)]
        kind: String,
        name: String,
        /// A collaborator as KIND:ID:ROLE (KIND user, team or va; repeat for more).
        #[arg(long = "collaborator")]
        collaborators: Vec<String>,
    },
    /// Replace a resource's collaborators (none given: no collaborators).
    Collaborators {
        #[arg(long)]
        tenant: String,
        resource: String,
        /// A collaborator as KIND:ID:ROLE (KIND user, team or va; repeat for more).
        #[arg(long = "collaborator")]
        collaborators: Vec<String>,
    },
    /// Delete a resource.
    Delete {
        #[arg(long)]
        tenant: String,
        resource: String,
    },
}

/// `KIND:ID:ROLE` as the API's collaborator.
fn collaborator(spec: &str) -> Result<Value> {
    let mut parts = spec.splitn(3, ':');
    let (kind, id, role) = match (parts.next(), parts.next(), parts.next()) {
        (Some(k), Some(i), Some(r)) if !i.is_empty() && !r.is_empty() => (k, i, r),
        _ => anyhow::bail!(
            "collaborator {spec:?} is invalid: use KIND:ID:ROLE (e.g. user:u_1:editor)"
        ),
    };
    let kind = match kind {
        "user" | "team" | "virtual_account" | "external_identity" => kind,
        "va" => "virtual_account",
        other => anyhow::bail!("collaborator kind {other:?} is invalid: use user, team or va"),
    };
    Ok(json!({ "subject": { kind: id }, "role": role }))
}

fn collaborators(specs: &[String]) -> Result<Vec<Value>> {
    specs.iter().map(|s| collaborator(s)).collect()
}

fn resource_line(r: &Value) -> String {
    format!(
        "resource {} ({} {}) has {} collaborator(s)",
        text(r, "id"),
        text(r, "kind"),
        text(r, "name"),
        r["collaborators"].as_array().map_or(0, Vec::len)
    )
}

/// Runs a `resource` command.
pub fn resource(api: &Api, command: ResourceCommand) -> Result<()> {
    match command {
        ResourceCommand::List { tenant } => {
            let resources = api.call(
                Method::GET,
                &format!("/api/v1/tenants/{tenant}/resources"),
                None,
            )?;
            api.show(&resources, &["ID", "KIND", "NAME", "COLLABORATORS"], |v| {
                v["resources"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| {
                        vec![
                            text(r, "id"),
                            text(r, "kind"),
                            text(r, "name"),
                            r["collaborators"]
                                .as_array()
                                .map_or(0, Vec::len)
                                .to_string(),
                        ]
                    })
                    .collect()
            });
        }
        ResourceCommand::Create {
            tenant,
            kind,
            name,
            collaborators: specs,
        } => {
            let body =
                json!({ "kind": kind, "name": name, "collaborators": collaborators(&specs)? });
            let created = api.call(
                Method::POST,
                &format!("/api/v1/tenants/{tenant}/resources"),
                Some(body),
            )?;
            api.done(&created, format!("created {}", resource_line(&created)));
        }
        ResourceCommand::Collaborators {
            tenant,
            resource,
            collaborators: specs,
        } => {
            let body = json!({ "collaborators": collaborators(&specs)? });
            let changed = api.call(
                Method::PUT,
                &format!("/api/v1/tenants/{tenant}/resources/{resource}/collaborators"),
                Some(body),
            )?;
            api.done(&changed, resource_line(&changed));
        }
        ResourceCommand::Delete { tenant, resource } => {
            let answer = api.call(
                Method::DELETE,
                &format!("/api/v1/tenants/{tenant}/resources/{resource}"),
                None,
            )?;
            api.done(&answer, format!("deleted resource {resource}"));
        }
    }
    Ok(())
}

/// `gatehouse va ...`
#[derive(Subcommand)]
pub enum VaCommand {
    /// List virtual accounts.
    List {
        #[arg(long)]
        tenant: String,
    },
    /// Create a virtual account.
    Create {
        #[arg(long)]
        tenant: String,
        name: String,
        /// Tenant role: admin or member (default member).
        #[arg(long)]
        role: Option<String>,
    },
    /// Disable a virtual account (its tokens stop working).
    Disable {
        #[arg(long)]
        tenant: String,
        va: String,
    },
    /// Enable a virtual account again.
    Enable {
        #[arg(long)]
        tenant: String,
        va: String,
    },
    /// Delete a virtual account and its tokens (refused while it collaborates on a resource).
    Delete {
        #[arg(long)]
        tenant: String,
        va: String,
    },
    /// Manage a virtual account's API tokens.
    #[command(subcommand)]
    Token(VaTokenCommand),
}

/// `gatehouse va token ...`
#[derive(Subcommand)]
pub enum VaTokenCommand {
    /// List a virtual account's tokens (never their secrets).
    List {
        #[arg(long)]
        tenant: String,
        va: String,
    },
    /// Create a token; its secret is printed once.
    Create {
        #[arg(long)]
        tenant: String,
        va: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        expires_in_days: Option<i64>,
    },
    /// Rotate a token: a new one (secret printed once) replaces TOKEN, which stays valid
    /// for --grace-seconds.
    Rotate {
        #[arg(long)]
        tenant: String,
        va: String,
        token: String,
        /// The new token's name (default: the replaced token's name).
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        grace_seconds: Option<i64>,
        #[arg(long)]
        expires_in_days: Option<i64>,
    },
    /// Revoke a token at once.
    Revoke {
        #[arg(long)]
        tenant: String,
        va: String,
        token: String,
    },
}

/// `gatehouse audit ...`
#[derive(Subcommand)]
pub enum AuditCommand {
    /// List audit entries, oldest first, with the API's filters and paging.
    List {
        #[arg(long)]
        tenant: String,
        /// Only entries by this actor (exact).
        #[arg(long)]
        actor: Option<String>,
        /// Only entries of this action (exact, or a prefix ending in `*`: `user.*`).
        #[arg(long)]
        action: Option<String>,
        /// Only entries at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Only entries before this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// At most this many entries (one page).
        #[arg(long)]
        limit: Option<usize>,
        /// Continue after this cursor (the `next` of an earlier page).
        #[arg(long)]
        after: Option<String>,
    },
}

fn tokens_table(api: &Api, value: &Value) {
    api.show(
        value,
        &["ID", "NAME", "CREATED", "EXPIRES", "REVOKED"],
        |v| {
            v["tokens"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    vec![
                        text(t, "id"),
                        text(t, "name"),
                        text(t, "created_at"),
                        text(t, "expires_at"),
                        text(t, "revoked_at"),
                    ]
                })
                .collect()
        },
    );
}

/// Runs a `va` command.
pub fn va(api: &Api, command: VaCommand) -> Result<()> {
    match command {
        VaCommand::List { tenant } => {
            let vas = api.call(
                Method::GET,
                &format!("/api/v1/tenants/{tenant}/virtual-accounts"),
                None,
            )?;
            api.show(&vas, &["ID", "NAME", "ENABLED", "ROLE", "MAPPINGS"], |v| {
                v["virtual_accounts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| {
                        vec![
                            text(a, "id"),
                            text(a, "name"),
                            text(a, "enabled"),
                            text(a, "role"),
                            a["mappings"].as_array().map_or(0, Vec::len).to_string(),
                        ]
                    })
                    .collect()
            });
        }
        VaCommand::Create { tenant, name, role } => {
            let mut body = json!({ "name": name });
            if let Some(role) = role {
                body["role"] = role.into();
            }
            let va = api.call(
                Method::POST,
                &format!("/api/v1/tenants/{tenant}/virtual-accounts"),
                Some(body),
            )?;
            api.done(
                &va,
                format!(
                    "created virtual account {} as {}",
                    text(&va, "name"),
                    text(&va, "id")
                ),
            );
        }
        VaCommand::Disable { tenant, va } => {
            let view = api.call(
                Method::PATCH,
                &format!("/api/v1/tenants/{tenant}/virtual-accounts/{va}"),
                Some(json!({ "enabled": false })),
            )?;
            api.done(
                &view,
                format!("disabled virtual account {}", text(&view, "name")),
            );
        }
        VaCommand::Enable { tenant, va } => {
            let view = api.call(
                Method::PATCH,
                &format!("/api/v1/tenants/{tenant}/virtual-accounts/{va}"),
                Some(json!({ "enabled": true })),
            )?;
            api.done(
                &view,
                format!("enabled virtual account {}", text(&view, "name")),
            );
        }
        VaCommand::Delete { tenant, va } => {
            let answer = api.call(
                Method::DELETE,
                &format!("/api/v1/tenants/{tenant}/virtual-accounts/{va}"),
                None,
            )?;
            api.done(&answer, format!("deleted virtual account {va}"));
        }
        VaCommand::Token(command) => va_token(api, command)?,
    }
    Ok(())
}

fn va_token(api: &Api, command: VaTokenCommand) -> Result<()> {
    match command {
        VaTokenCommand::List { tenant, va } => {
            let tokens = api.call(
                Method::GET,
                &format!("/api/v1/tenants/{tenant}/virtual-accounts/{va}/tokens"),
                None,
            )?;
            tokens_table(api, &tokens);
        }
        VaTokenCommand::Create {
            tenant,
            va,
            name,
            expires_in_days,
        } => {
            let created = api.call(
                Method::POST,
                &format!("/api/v1/tenants/{tenant}/virtual-accounts/{va}/tokens"),
                Some(json!({ "name": name, "expires_in_days": expires_in_days })),
            )?;
            api.done(
                &created,
                format!(
                    "created token {} ({}); secret (shown once): {}",
                    text(&created, "id"),
                    text(&created, "name"),
                    text(&created, "secret")
                ),
            );
        }
        VaTokenCommand::Rotate {
            tenant,
            va,
            token,
            name,
            grace_seconds,
            expires_in_days,
        } => {
            let path = format!("/api/v1/tenants/{tenant}/virtual-accounts/{va}/tokens");
            let name = match name {
                Some(name) => name,
                None => {
                    let tokens = api.call(Method::GET, &path, None)?;
                    tokens["tokens"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|t| t["id"] == token.as_str())
                        .map(|t| text(t, "name"))
                        .ok_or_else(|| {
                            anyhow::anyhow!("virtual account {va} has no token {token}")
                        })?
                }
            };
            let created = api.call(
                Method::POST,
                &path,
                Some(json!({
                    "name": name,
                    "replaces": token,
                    "grace_seconds": grace_seconds,
                    "expires_in_days": expires_in_days,
                })),
            )?;
            api.done(
                &created,
                format!(
                    "token {token} replaced by {} ({}); secret (shown once): {}",
                    text(&created, "id"),
                    text(&created, "name"),
                    text(&created, "secret")
                ),
            );
        }
        VaTokenCommand::Revoke { tenant, va, token } => {
            let answer = api.call(
                Method::DELETE,
                &format!("/api/v1/tenants/{tenant}/virtual-accounts/{va}/tokens/{token}"),
                None,
            )?;
            api.done(&answer, format!("revoked token {token}"));
        }
    }
    Ok(())
}

/// Runs an `audit` command.
pub fn audit(api: &Api, command: AuditCommand) -> Result<()> {
    match command {
        AuditCommand::List {
            tenant,
            actor,
            action,
            since,
            until,
            limit,
            after,
        } => {
            let mut query: Vec<(&str, String)> = Vec::new();
            query.extend(actor.map(|v| ("actor", v)));
            query.extend(action.map(|v| ("action", v)));
            query.extend(since.map(|v| ("since", v)));
            query.extend(until.map(|v| ("until", v)));
            query.extend(limit.map(|v| ("limit", v.to_string())));
            query.extend(after.map(|v| ("after", v)));
            let query = serde_urlencoded::to_string(&query)?;
            let page = api.call(
                Method::GET,
                &format!("/api/v1/tenants/{tenant}/audit?{query}"),
                None,
            )?;
            api.show(&page, &["SEQ", "AT", "ACTOR", "ACTION", "TARGET"], |v| {
                v["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| {
                        vec![
                            text(e, "seq"),
                            text(e, "at"),
                            text(e, "actor"),
                            text(e, "action"),
                            text(e, "target"),
                        ]
                    })
                    .collect()
            });
            if !api.json {
                if let Some(next) = page["next"].as_str() {
                    println!("more: --after {next}");
                }
            }
        }
    }
    Ok(())
}

/// Edge credentials (operator token): what a `gatehouse edge` authenticates with.
#[derive(Subcommand)]
pub enum EdgeCredentialCommand {
    /// Issue a credential; its token is printed this once.
    Issue {
        /// A name for people (`eu-west-gw-1`).
        name: String,
        /// A tenant the edge receives (repeat for more; default: every tenant).
        #[arg(long = "tenant")]
        tenants: Vec<String>,
    },
    /// List credentials, revoked ones too.
    List,
    /// Revoke a credential by id: its edge stops receiving changes within a second.
    Revoke { id: String },
}

/// Runs an `edge-credential` command.
pub fn edge_credential(api: &Api, command: EdgeCredentialCommand) -> Result<()> {
    match command {
        EdgeCredentialCommand::Issue { name, tenants } => {
            let mut body = json!({ "name": name });
            if !tenants.is_empty() {
                body["tenants"] = json!(tenants);
            }
            let issued = api.call(Method::POST, "/api/v1/edges", Some(body))?;
            api.done(
                &issued,
                format!(
                    "issued edge credential {} ({}); its token, shown once: {}",
                    text(&issued, "id"),
                    text(&issued, "name"),
                    text(&issued, "token")
                ),
            );
        }
        EdgeCredentialCommand::List => {
            let list = api.call(Method::GET, "/api/v1/edges", None)?;
            api.show(
                &list,
                &["ID", "NAME", "TENANTS", "CREATED", "REVOKED"],
                |v| {
                    v["edges"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|e| {
                            let tenants = e["tenants"].as_array().map_or("all".to_owned(), |t| {
                                t.iter()
                                    .filter_map(Value::as_str)
                                    .collect::<Vec<_>>()
                                    .join(",")
                            });
                            vec![
                                text(e, "id"),
                                text(e, "name"),
                                tenants,
                                text(e, "created_at"),
                                text(e, "revoked_at"),
                            ]
                        })
                        .collect()
                },
            );
        }
        EdgeCredentialCommand::Revoke { id } => {
            let revoked = api.call(Method::DELETE, &format!("/api/v1/edges/{id}"), None)?;
            api.done(&revoked, format!("revoked edge credential {id}"));
        }
    }
    Ok(())
}
