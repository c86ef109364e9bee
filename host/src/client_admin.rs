//! Admin-API commands beyond tenants, users and teams: virtual accounts (and their
//! tokens, rotation with grace) and the audit log. Same conventions as `client.rs`:
//! readable output by default, `--json` prints the API's answer, API refusals exit non-zero.

use crate::client::{text, Api};
use anyhow::Result;
use clap::Subcommand;
use reqwest::Method;
use serde_json::{json, Value};

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
