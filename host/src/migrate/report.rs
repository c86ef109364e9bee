//! A plan as text: a terminal table, or Markdown for a change-approval board.

use super::plan::{role_name, Action, Fix, Plan, PlannedSubject, Target};

fn act(a: Action) -> &'static str {
    match a {
        Action::Create => "create",
        Action::Update => "update",
        Action::Unchanged => "unchanged",
    }
}

fn subject(s: &PlannedSubject) -> String {
    match s {
        PlannedSubject::User(email) => format!("user {email}"),
        PlannedSubject::Team(name) => format!("team {name}"),
        PlannedSubject::VirtualAccount(name) => format!("virtual account {name}"),
        PlannedSubject::ExternalIdentity(name) => format!("external identity {name}"),
    }
}

fn fix(f: &Fix) -> String {
    match f {
        Fix::ScimTeamRole { group, role } => {
            format!(
                "SCIM-sync group {group}, give its team the {} role",
                role_name(*role)
            )
        }
        Fix::ManualRole { role } => format!("set a manual {} role", role_name(*role)),
    }
}

/// A report section: title, column headers, rows.
pub type Section = (&'static str, Vec<&'static str>, Vec<Vec<String>>);

/// The plan's sections.
pub fn sections(plan: &Plan) -> Vec<Section> {
    let mut out = Vec::new();
    out.push((
        "Provisioning mode",
        vec!["from", "to", "action", "reason"],
        vec![vec![
            plan.provisioning_mode.from.clone(),
            plan.provisioning_mode.to.clone(),
            act(plan.provisioning_mode.action).into(),
            plan.provisioning_mode.reason.clone(),
        ]],
    ));
    out.push((
        "SSO configuration",
        vec!["id", "issuer", "client id", "action"],
        plan.sso
            .iter()
            .map(|s| {
                vec![
                    s.id.clone(),
                    s.issuer.clone(),
                    s.client_id.clone(),
                    act(s.action).into(),
                ]
            })
            .collect(),
    ));
    out.push((
        "Identity providers (carried over unchanged)",
        vec![
            "name",
            "issuer",
            "jwks uri",
            "audiences",
            "claims",
            "action",
        ],
        plan.identity_providers
            .iter()
            .map(|i| {
                let claims = [
                    ("user", &i.user_claim),
                    ("va name", &i.va_name_claim),
                    ("team", &i.team_claim),
                ]
                .iter()
                .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
                .collect::<Vec<_>>()
                .join(" ");
                vec![
                    i.name.clone(),
                    i.issuer.clone(),
                    i.jwks_uri.clone(),
                    i.audiences.join(" "),
                    claims,
                    act(i.action).into(),
                ]
            })
            .collect(),
    ));
    out.push((
        "External identities",
        vec![
            "external identity",
            "becomes",
            "mapping",
            "action",
            "reason",
        ],
        plan.targets
            .iter()
            .map(|t| {
                let (becomes, mapping) = match &t.target {
                    Target::VirtualAccount { name, mapping } => (
                        format!("virtual account {name}"),
                        format!("{}:{}", mapping.idp, mapping.value),
                    ),
                    Target::Teams { teams, mappings } => (
                        format!("team {}", teams.join(", ")),
                        mappings
                            .iter()
                            .map(|m| format!("{}:{}", m.idp, m.value))
                            .collect::<Vec<_>>()
                            .join(" "),
                    ),
                };
                vec![
                    t.external_identity.clone(),
                    becomes,
                    mapping,
                    act(t.action).into(),
                    t.reason.clone(),
                ]
            })
            .collect(),
    ));
    out.push((
        "Users",
        vec!["email", "status", "manual role", "action"],
        plan.users
            .iter()
            .map(|u| {
                vec![
                    u.email.clone(),
                    u.status.as_str().into(),
                    u.manual_role.map_or("-", role_name).into(),
                    act(u.action).into(),
                ]
            })
            .collect(),
    ));
    out.push((
        "Collaborator replacements",
        vec!["resource", "external identity", "role", "replaced by"],
        plan.resources
            .iter()
            .flat_map(|r| {
                r.replacements.iter().map(move |x| {
                    vec![
                        format!("{} {}", r.kind, r.name),
                        x.external_identity.clone(),
                        x.role.clone(),
                        x.by.iter().map(subject).collect::<Vec<_>>().join(", "),
                    ]
                })
            })
            .collect(),
    ));
    out.push((
        "Role changes",
        vec!["user", "legacy role", "set by", "new role", "suggested fix"],
        plan.role_changes
            .iter()
            .map(|c| {
                vec![
                    c.email.clone(),
                    role_name(c.legacy_role).into(),
                    c.legacy_set_by.clone(),
                    role_name(c.new_role).into(),
                    fix(&c.fix),
                ]
            })
            .collect(),
    ));
    out
}

/// The plan as aligned terminal tables.
pub fn table(plan: &Plan) -> String {
    let mut text = format!(
        "Migration plan for tenant {} (digest {}): {} change(s)\n",
        plan.tenant, plan.digest, plan.changes
    );
    for (title, header, rows) in sections(plan) {
        text.push_str(&format!("\n{title}\n"));
        if rows.is_empty() {
            text.push_str("  (none)\n");
            continue;
        }
        let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
        for row in &rows {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let line = |cells: Vec<String>| {
            let mut l = String::from(" ");
            for (i, cell) in cells.iter().enumerate() {
                l.push(' ');
                l.push_str(cell);
                if i + 1 < cells.len() {
                    l.push_str(&" ".repeat(widths[i] - cell.chars().count() + 1));
                }
            }
            l.trim_end().to_owned() + "\n"
        };
        text.push_str(&line(header.iter().map(|h| h.to_uppercase()).collect()));
        for row in rows {
            text.push_str(&line(row));
        }
    }
    if !plan.manual_roles_kept.is_empty() {
        text.push_str(&format!(
            "\nManual roles kept (they win): {}\n",
            plan.manual_roles_kept.join(", ")
        ));
    }
    text.push_str("\nLeft to a human\n");
    for step in &plan.human_steps {
        text.push_str(&format!("  - {step}\n"));
    }
    text
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// The plan as Markdown, for a change-approval board.
pub fn markdown(plan: &Plan) -> String {
    let mut text = format!(
        "# Migration plan: tenant `{}`\n\n- Digest: `{}`\n- Changes: {}\n",
        plan.tenant, plan.digest, plan.changes
    );
    for (title, header, rows) in sections(plan) {
        text.push_str(&format!("\n## {title}\n\n"));
        if rows.is_empty() {
            text.push_str("_None._\n");
            continue;
        }
        text.push_str(&format!("| {} |\n", header.join(" | ")));
        text.push_str(&format!("|{}\n", "---|".repeat(header.len())));
        for row in rows {
            let cells: Vec<String> = row.iter().map(|c| cell(c)).collect();
            text.push_str(&format!("| {} |\n", cells.join(" | ")));
        }
    }
    text.push_str("\n## Manual roles kept\n\n");
    if plan.manual_roles_kept.is_empty() {
        text.push_str("_None._\n");
    }
    for email in &plan.manual_roles_kept {
        text.push_str(&format!("- {email}\n"));
    }
    text.push_str("\n## Left to a human\n\n");
    for step in &plan.human_steps {
        text.push_str(&format!("- [ ] {step}\n"));
    }
    text
}
