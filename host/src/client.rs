//! Operator and tenant-admin commands against a running server (`GATEHOUSE_URL`,
//! `GATEHOUSE_TOKEN`): readable output by default, `--json` for scripts.

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use serde_json::{json, Value};

/// A client of the admin API.
pub struct Api {
    url: String,
    token: String,
    client: reqwest::blocking::Client,
    /// Print raw JSON answers instead of tables.
    pub json: bool,
}

impl Api {
    /// From `GATEHOUSE_URL` (default `http://127.0.0.1:8080`) and `GATEHOUSE_TOKEN`.
    pub fn from_env(json: bool) -> Result<Api> {
        let url = std::env::var("GATEHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
        let token = std::env::var("GATEHOUSE_TOKEN")
            .context("set GATEHOUSE_TOKEN to the operator token or a tenant admin's token")?;
        Ok(Api {
            url: url.trim_end_matches('/').to_owned(),
            token,
            client: reqwest::blocking::Client::new(),
            json,
        })
    }

    /// One request; a problem answer becomes an error carrying its detail.
    pub fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value> {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .with_context(|| format!("cannot reach {}", self.url))?;
        let status = response.status();
        let text = response.text().unwrap_or_default();
        let body: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if !status.is_success() {
            bail!(
                "{status}: {}",
                body.get("detail")
                    .and_then(Value::as_str)
                    .unwrap_or("no detail")
            );
        }
        Ok(body)
    }

    /// Prints `value` as JSON, or `table` rows (tab-separated, header first).
    pub(crate) fn show(
        &self,
        value: &Value,
        header: &[&str],
        rows: impl Fn(&Value) -> Vec<Vec<String>>,
    ) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(value).unwrap_or_default()
            );
            return;
        }
        let rows = rows(value);
        let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
        for row in &rows {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.len());
            }
        }
        let line = |cells: Vec<String>| {
            cells
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_owned()
        };
        println!("{}", line(header.iter().map(|h| h.to_string()).collect()));
        for row in rows {
            println!("{}", line(row));
        }
    }

    pub(crate) fn done(&self, value: &Value, message: String) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(value).unwrap_or_default()
            );
        } else {
            println!("{message}");
        }
    }
}

pub(crate) fn text(value: &Value, key: &str) -> String {
    match &value[key] {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// `gatehouse tenant ...`
#[derive(Subcommand)]
pub enum TenantCommand {
    /// Create a tenant, optionally with its first admin (whose token is printed once).
    Create {
        slug: String,
        #[arg(long)]
        admin_email: Option<String>,
    },
    /// List tenants (operator).
    List,
    /// Set the provisioning mode: scim, jit or invite_only.
    Mode { slug: String, mode: String },
}

/// `gatehouse user ...`
#[derive(Subcommand)]
pub enum UserCommand {
    /// List users.
    List {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        status: Option<String>,
        /// Substring of email or name.
        #[arg(long)]
        q: Option<String>,
    },
    /// Invite a user by email.
    Invite {
        #[arg(long)]
        tenant: String,
        email: String,
        /// Email a one-time link to set a password.
        #[arg(long)]
        send_password_email: bool,
    },
    /// Deactivate a user (tokens stop working at once).
    Deactivate {
        #[arg(long)]
        tenant: String,
        /// The user's id or email.
        id: String,
    },
    /// Reactivate a user.
    Reactivate {
        #[arg(long)]
        tenant: String,
        /// The user's id or email.
        id: String,
    },
    /// Delete a user (refused while it is in a team or collaborates on a resource).
    Delete {
        #[arg(long)]
        tenant: String,
        /// The user's id or email.
        id: String,
    },
    /// Set the manual role (admin, member) or clear it (clear).
    Role {
        #[arg(long)]
        tenant: String,
        /// The user's id or email.
        id: String,
        role: String,
    },
}

/// `gatehouse team ...`
#[derive(Subcommand)]
pub enum TeamCommand {
    /// List teams with their member counts.
    List {
        #[arg(long)]
        tenant: String,
    },
    /// Create a team.
    Create {
        #[arg(long)]
        tenant: String,
        name: String,
        /// Tenant role its members inherit: admin or member.
        #[arg(long)]
        role: Option<String>,
    },
    /// Add users (ids or emails) to a team (its id or name).
    Add {
        #[arg(long)]
        tenant: String,
        team: String,
        users: Vec<String>,
    },
    /// Remove users (ids or emails) from a team (its id or name).
    Remove {
        #[arg(long)]
        tenant: String,
        team: String,
        users: Vec<String>,
    },
    /// Delete a team (its id or name).
    Delete {
        #[arg(long)]
        tenant: String,
        team: String,
    },
}

use reqwest::Method;

/// Runs a tenant command.
pub fn tenant(api: &Api, command: TenantCommand) -> Result<()> {
    match command {
        TenantCommand::Create { slug, admin_email } => {
            let created = api.call(
                Method::POST,
                "/api/v1/tenants",
                Some(json!({ "slug": slug, "admin_email": admin_email })),
            )?;
            let mut message = format!("created tenant {slug}");
            if let Some(token) = created["admin_token"].as_str() {
                message.push_str(&format!(
                    "\nfirst admin {} (token shown once): {token}",
                    text(&created["admin"], "email")
                ));
            }
            api.done(&created, message);
        }
        TenantCommand::List => {
            let tenants = api.call(Method::GET, "/api/v1/tenants", None)?;
            api.show(&tenants, &["SLUG", "MODE", "CREATED"], |v| {
                v["tenants"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| vec![text(t, "slug"), text(t, "mode"), text(t, "created_at")])
                    .collect()
            });
        }
        TenantCommand::Mode { slug, mode } => {
            let tenant = api.call(
                Method::PUT,
                &format!("/api/v1/tenants/{slug}/provisioning"),
                Some(json!({ "mode": mode })),
            )?;
            api.done(
                &tenant,
                format!("tenant {slug} is now in {} mode", text(&tenant, "mode")),
            );
        }
    }
    Ok(())
}

/// Runs a user command.
pub fn user(api: &Api, command: UserCommand) -> Result<()> {
    match command {
        UserCommand::List { tenant, status, q } => {
            let mut query = vec![("limit", "500".to_owned())];
            query.extend(status.map(|s| ("status", s)));
            query.extend(q.map(|q| ("q", q)));
            let query = serde_urlencoded::to_string(&query)?;
            let users = api.call(
                Method::GET,
                &format!("/api/v1/tenants/{tenant}/users?{query}"),
                None,
            )?;
            api.show(&users, &["ID", "EMAIL", "STATUS", "ROLE", "SOURCE"], |v| {
                v["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|u| {
                        vec![
                            text(u, "id"),
                            text(u, "email"),
                            text(u, "status"),
                            format!("{} ({})", text(u, "role"), text(u, "role_source")),
                            text(u, "source"),
                        ]
                    })
                    .collect()
            });
        }
        UserCommand::Invite {
            tenant,
            email,
            send_password_email,
        } => {
            let user = api.call(
                Method::POST,
                &format!("/api/v1/tenants/{tenant}/users"),
                Some(json!({ "email": email, "send_password_email": send_password_email })),
            )?;
            api.done(
                &user,
                format!("invited {} as {}", text(&user, "email"), text(&user, "id")),
            );
        }
        UserCommand::Deactivate { tenant, id } => {
            let id = user_id(api, &tenant, &id)?;
            let user = api.call(
                Method::POST,
                &format!("/api/v1/tenants/{tenant}/users/{id}/deactivate"),
                None,
            )?;
            api.done(&user, format!("deactivated {}", text(&user, "email")));
        }
        UserCommand::Reactivate { tenant, id } => {
            let id = user_id(api, &tenant, &id)?;
            let user = api.call(
                Method::POST,
                &format!("/api/v1/tenants/{tenant}/users/{id}/reactivate"),
                None,
            )?;
            api.done(&user, format!("reactivated {}", text(&user, "email")));
        }
        UserCommand::Delete { tenant, id } => {
            let id = user_id(api, &tenant, &id)?;
            let answer = api.call(
                Method::DELETE,
                &format!("/api/v1/tenants/{tenant}/users/{id}"),
                None,
            )?;
            api.done(&answer, format!("deleted user {id}"));
        }
        UserCommand::Role { tenant, id, role } => {
            let id = user_id(api, &tenant, &id)?;
            let path = format!("/api/v1/tenants/{tenant}/users/{id}/role");
            let user = match role.as_str() {
                "clear" => api.call(Method::DELETE, &path, None)?,
                "admin" | "member" => {
                    api.call(Method::PUT, &path, Some(json!({ "role": role })))?
                }
                other => bail!("role {other:?} is invalid: use admin, member or clear"),
            };
            api.done(
                &user,
                format!(
                    "{} is {} ({})",
                    text(&user, "email"),
                    text(&user, "role"),
                    text(&user, "role_source")
                ),
            );
        }
    }
    Ok(())
}

/// Runs a team command.
pub fn team(api: &Api, command: TeamCommand) -> Result<()> {
    let adding = matches!(command, TeamCommand::Add { .. });
    match command {
        TeamCommand::List { tenant } => {
            let teams = api.call(
                Method::GET,
                &format!("/api/v1/tenants/{tenant}/teams"),
                None,
            )?;
            // NAME is what headers, claims and mappings use; DISPLAY NAME is the SCIM
            // group's name as the identity provider sent it (the name, for other teams).
            api.show(
                &teams,
                &["ID", "NAME", "DISPLAY NAME", "ROLE", "MEMBERS"],
                |v| {
                    v["teams"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|t| {
                            vec![
                                text(t, "id"),
                                text(t, "name"),
                                t["display_name"]
                                    .as_str()
                                    .map_or_else(|| text(t, "name"), str::to_owned),
                                text(t, "role"),
                                t["members"].as_array().map_or(0, Vec::len).to_string(),
                            ]
                        })
                        .collect()
                },
            );
        }
        TeamCommand::Create { tenant, name, role } => {
            let team = api.call(
                Method::POST,
                &format!("/api/v1/tenants/{tenant}/teams"),
                Some(json!({ "name": name, "role": role })),
            )?;
            api.done(
                &team,
                format!(
                    "created team {} as {}",
                    text(&team, "name"),
                    text(&team, "id")
                ),
            );
        }
        TeamCommand::Add {
            tenant,
            team,
            users,
        }
        | TeamCommand::Remove {
            tenant,
            team,
            users,
        } if users.is_empty() => {
            bail!("name at least one user (id or email) to change in team {team} of {tenant}")
        }
        TeamCommand::Add {
            tenant,
            team,
            users,
        }
        | TeamCommand::Remove {
            tenant,
            team,
            users,
        } => {
            let change = if adding { "add" } else { "remove" };
            let team = team_id(api, &tenant, &team)?;
            let users = users
                .iter()
                .map(|user| user_id(api, &tenant, user))
                .collect::<Result<Vec<_>>>()?;
            let view = api.call(
                Method::PATCH,
                &format!("/api/v1/tenants/{tenant}/teams/{team}/members"),
                Some(json!({ change: users })),
            )?;
            api.done(
                &view,
                format!(
                    "team {} has {} members",
                    text(&view, "name"),
                    view["members"].as_array().map_or(0, Vec::len)
                ),
            );
        }
        TeamCommand::Delete { tenant, team } => {
            let team = team_id(api, &tenant, &team)?;
            let answer = api.call(
                Method::DELETE,
                &format!("/api/v1/tenants/{tenant}/teams/{team}"),
                None,
            )?;
            api.done(&answer, format!("deleted team {team}"));
        }
    }
    Ok(())
}

/// The id of the user `user` names in `tenant`: itself, or, when it is an email (it has an
/// `@`; ids never do), the id of the user with that email.
fn user_id(api: &Api, tenant: &str, user: &str) -> Result<String> {
    if !user.contains('@') {
        return Ok(user.to_owned());
    }
    let query = serde_urlencoded::to_string([("q", user), ("limit", "500")])?;
    let found = api.call(
        Method::GET,
        &format!("/api/v1/tenants/{tenant}/users?{query}"),
        None,
    )?;
    found["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|u| {
            u["email"]
                .as_str()
                .is_some_and(|e| e.eq_ignore_ascii_case(user))
        })
        .map(|u| text(u, "id"))
        .ok_or_else(|| anyhow::anyhow!("tenant {tenant} has no user with email {user}"))
}

/// The id of the team `team` names in `tenant`: a team's id, or its name (names are
/// unique in a tenant, compared case-insensitively).
fn team_id(api: &Api, tenant: &str, team: &str) -> Result<String> {
    let teams = api.call(
        Method::GET,
        &format!("/api/v1/tenants/{tenant}/teams"),
        None,
    )?;
    let teams = teams["teams"].as_array().cloned().unwrap_or_default();
    teams
        .iter()
        .find(|t| t["id"] == team)
        .or_else(|| {
            teams.iter().find(|t| {
                t["name"]
                    .as_str()
                    .is_some_and(|name| name.eq_ignore_ascii_case(team))
            })
        })
        .map(|t| text(t, "id"))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "tenant {tenant} has no team with id or name {team} (gatehouse team list --tenant {tenant})"
            )
        })
}

/// `gatehouse migrate ...`
#[derive(Subcommand)]
pub enum MigrateCommand {
    /// Plan a migration from a legacy export; changes nothing.
    Plan {
        #[arg(long)]
        tenant: String,
        /// The legacy export (JSON, docs/migration.md).
        file: std::path::PathBuf,
        /// `table` (default) or `markdown` (for a change-approval board).
        #[arg(long, default_value = "table")]
        format: ReportFormat,
    },
    /// Apply a migration in one atomic, audited change (a second apply changes nothing).
    Apply {
        #[arg(long)]
        tenant: String,
        /// The legacy export (JSON, docs/migration.md).
        file: std::path::PathBuf,
        /// The reviewed plan (a file written by `migrate plan --json`, or its digest):
        /// refused if the plan differs now.
        #[arg(long)]
        plan: Option<String>,
        /// `table` (default) or `markdown`.
        #[arg(long, default_value = "table")]
        format: ReportFormat,
    },
}

/// How a migration report is printed (`--json` wins).
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ReportFormat {
    Table,
    Markdown,
}

fn render(plan: &gatehouse::migrate::Plan, format: ReportFormat) -> String {
    match format {
        ReportFormat::Table => gatehouse::migrate::table(plan),
        ReportFormat::Markdown => gatehouse::migrate::markdown(plan),
    }
}

/// Runs a `migrate` command.
pub fn migrate(api: &Api, command: MigrateCommand) -> Result<()> {
    let read = |file: &std::path::Path| -> Result<Value> {
        let bytes =
            std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("{} is not JSON", file.display()))
    };
    match command {
        MigrateCommand::Plan {
            tenant,
            file,
            format,
        } => {
            let answer = api.call(
                reqwest::Method::POST,
                &format!("/api/v1/tenants/{tenant}/migration/plan"),
                Some(read(&file)?),
            )?;
            let plan: gatehouse::migrate::Plan = serde_json::from_value(answer.clone())
                .context("the server's plan is unreadable")?;
            api.done(&answer, render(&plan, format));
        }
        MigrateCommand::Apply {
            tenant,
            file,
            plan,
            format,
        } => {
            let digest = match plan {
                None => None,
                Some(p) if p.len() == 64 && p.chars().all(|c| c.is_ascii_hexdigit()) => Some(p),
                Some(p) => {
                    let reviewed = read(std::path::Path::new(&p))?;
                    match reviewed.get("digest").and_then(Value::as_str) {
                        Some(d) => Some(d.to_owned()),
                        None => {
                            bail!("{p} is not a plan written by `migrate plan --json` (no digest)")
                        }
                    }
                }
            };
            let query = digest.map(|d| format!("?plan={d}")).unwrap_or_default();
            let answer = api.call(
                reqwest::Method::POST,
                &format!("/api/v1/tenants/{tenant}/migration/apply{query}"),
                Some(read(&file)?),
            )?;
            let plan: gatehouse::migrate::Plan = serde_json::from_value(answer["plan"].clone())
                .context("the server's plan is unreadable")?;
            let headline = if answer["applied"] == Value::Bool(true) {
                format!("Applied {} change(s) to tenant {tenant}.\n\n", plan.changes)
            } else {
                format!("Nothing to do: tenant {tenant} already matches the plan (nothing changed).\n\n")
            };
            api.done(&answer, headline + &render(&plan, format));
        }
    }
    Ok(())
}
