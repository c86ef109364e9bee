//! Teams (role, IdP mappings, SCIM-managed ones marked; create and delete as the API
//! allows), the audit log (filter by actor, action, time; paged) and, for the operator, the
//! outbox (addresses, subjects and delivery state; never a body, which holds a link).

use super::{
    admin_only, checked_form, date, field_error, here, page, redirect, seg, signed_in, word, words,
    Con, Ctx, Refusal,
};
use crate::app::{App, AppError, AuditFilter, NewTeam};
use crate::http::Shared;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use gatehouse_rules::Role;
use maud::html;
use std::collections::HashMap;

/// Audit entries per page.
const AUDIT_PAGE: usize = 50;

pub(super) async fn teams(
    State(app): Shared,
    Extension(console): Con,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    let ctx = match signed_in(&app, &console, &tenant, &headers, &here(&tenant, "/teams")) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    if let Err(r) = admin_only(&ctx) {
        return r.into_response();
    }
    teams_page(&app, &ctx, StatusCode::OK, None)
}

fn teams_page(
    app: &App,
    ctx: &Ctx,
    status: StatusCode,
    error: Option<(String, String)>,
) -> Response {
    let teams = match app.teams(&ctx.tenant, &ctx.caller) {
        Ok(t) => t,
        Err(e) => return Refusal::from(e).into_response(),
    };
    let err = |f: &str| {
        error
            .as_ref()
            .filter(|(n, _)| n == f)
            .map(|(_, w)| w.as_str())
    };
    page(
        status,
        Some(ctx),
        "Teams",
        html! {
            table {
                thead { tr { th scope="col" { "Team" } th scope="col" { "Role" } th scope="col" { "Members" } th scope="col" { "IdP mappings" } th scope="col" { "" } } }
                tbody {
                    @for t in &teams {
                        tr {
                            td { (t.team.name)
                                @if t.team.builtin { " " span.badge { "built-in" } }
                                @if let Some(scim) = &t.team.scim { " " span.badge { "managed by SCIM (" (scim.sso_id) ")" } } }
                            td { (t.team.role.map(|r| word(&r)).unwrap_or_else(|| "—".into())) }
                            td { a href={ "/console/" (seg(&ctx.tenant)) "/users?team=" (seg(&t.team.id)) } { (t.members.len()) " members" } }
                            td { @for m in &t.team.mappings { code { (m.idp) ": " (m.value) } " " } }
                            td {
                                @if !t.team.builtin {
                                    form method="post" action={ "/console/" (seg(&ctx.tenant)) "/teams/" (seg(&t.team.id)) "/add-member" } {
                                        input type="hidden" name="csrf" value=(ctx.csrf);
                                        label for={ "add-" (t.team.id) } { "Add member (email)" }
                                        input id={ "add-" (t.team.id) } name="email" type="email" required;
                                        button type="submit" { "Add to " (t.team.name) }
                                    }
                                    form method="post" action={ "/console/" (seg(&ctx.tenant)) "/teams/" (seg(&t.team.id)) "/mappings" } {
                                        input type="hidden" name="csrf" value=(ctx.csrf);
                                        label for={ "map-" (t.team.id) } { "IdP mappings (one idp:value a line)" }
                                        textarea id={ "map-" (t.team.id) } name="mappings" {
                                            @for m in &t.team.mappings { (m.idp) ":" (m.value) "\n" }
                                        }
                                        button.secondary type="submit" { "Save mappings" }
                                    }
                                }
                                @if !t.team.builtin {
                                    form method="post" action={ "/console/" (seg(&ctx.tenant)) "/teams/" (seg(&t.team.id)) "/delete" } {
                                        input type="hidden" name="csrf" value=(ctx.csrf);
                                        button.danger type="submit" aria-label={ "Delete team " (t.team.name) } { "Delete" }
                                    }
                                    (field_error(&format!("team-{}", t.team.id), err(&t.team.id)))
                                }
                            }
                        }
                    }
                }
            }
            h2 id="new-team" { "Create a team" }
            form method="post" action={ "/console/" (seg(&ctx.tenant)) "/teams" } aria-labelledby="new-team" {
                input type="hidden" name="csrf" value=(ctx.csrf);
                label for="team-name" { "Name" }
                input id="team-name" name="name" required aria-describedby=[err("name").map(|_| "team-name-error")];
                (field_error("team-name", err("name")))
                label for="team-role" { "Role its members get" }
                select id="team-role" name="role" {
                    option value="" { "None" }
                    option value="member" { "member" }
                    option value="admin" { "admin" }
                }
                button type="submit" { "Create team" }
            }
        },
    )
}

pub(super) async fn create_team(
    State(app): Shared,
    Extension(console): Con,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ctx = match signed_in(&app, &console, &tenant, &headers, &here(&tenant, "/teams")) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let form = match checked_form(&app, &ctx, &headers, &body) {
        Ok(f) => f,
        Err(r) => return r.into_response(),
    };
    if let Err(r) = admin_only(&ctx) {
        return r.into_response();
    }
    let role = match form.get("role") {
        Some("admin") => Some(Role::Admin),
        Some("member") => Some(Role::Member),
        _ => None,
    };
    let new = NewTeam {
        name: form.text("name").unwrap_or_default(),
        role,
        ..NewTeam::default()
    };
    let worker = app.clone();
    let (t, caller) = (ctx.tenant.clone(), ctx.caller.clone());
    match super::blocking(move || worker.create_team(&t, new, &caller)).await {
        Ok(_) => redirect(&format!("/console/{}/teams", seg(&ctx.tenant))),
        Err(e) => teams_page(&app, &ctx, e.status(), Some(("name".into(), words(&e)))),
    }
}

pub(super) async fn team_action(
    State(app): Shared,
    Extension(console): Con,
    Path((tenant, team, action)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ctx = match signed_in(&app, &console, &tenant, &headers, &here(&tenant, "/teams")) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let form = match checked_form(&app, &ctx, &headers, &body) {
        Ok(f) => f,
        Err(r) => return r.into_response(),
    };
    if let Err(r) = admin_only(&ctx) {
        return r.into_response();
    }
    let worker = app.clone();
    let (t, caller, id) = (ctx.tenant.clone(), ctx.caller.clone(), team.clone());
    let result = match action.as_str() {
        "delete" => super::blocking(move || worker.delete_team(&t, &id, &caller)).await,
        "add-member" => {
            let email = form.text("email").unwrap_or_default();
            super::blocking(move || {
                // The user by email: one indexed-free page of the list, matched exactly.
                let query = crate::app::UserQuery {
                    q: Some(email.clone()),
                    limit: Some(500),
                    ..Default::default()
                };
                let user = worker
                    .users(&t, &query, &caller)?
                    .items
                    .into_iter()
                    .find(|u| u.email.eq_ignore_ascii_case(&email))
                    .ok_or_else(|| AppError::NotFound(format!("user {email}")))?;
                let change = crate::app::MemberChange {
                    add: vec![user.id],
                    remove: Vec::new(),
                };
                worker
                    .change_members(&t, &id, change, false, &caller)
                    .map(|_| ())
            })
            .await
        }
        "mappings" => {
            let mut mappings = Vec::new();
            for line in form.get("mappings").unwrap_or_default().lines() {
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                match line.split_once(':') {
                    Some((idp, value)) => mappings.push(crate::identity::Mapping {
                        idp: idp.trim().to_owned(),
                        value: value.trim().to_owned(),
                    }),
                    None => {
                        let why = format!("mapping {line:?} is not idp:value");
                        return teams_page(&app, &ctx, StatusCode::BAD_REQUEST, Some((team, why)));
                    }
                }
            }
            let patch = crate::app::TeamPatch {
                mappings: Some(mappings),
                ..Default::default()
            };
            super::blocking(move || worker.patch_team(&t, &id, patch, &caller).map(|_| ())).await
        }
        _ => {
            return Refusal::Page(StatusCode::NOT_FOUND, format!("no action {action:?}"))
                .into_response()
        }
    };
    match result {
        Ok(()) => redirect(&format!("/console/{}/teams", seg(&ctx.tenant))),
        Err(e) => teams_page(&app, &ctx, e.status(), Some((team, words(&e)))),
    }
}

/// The audit log, newest pages last as the API pages it: filter by actor, action
/// (`user.*` for a prefix) and time.
pub(super) async fn audit(
    State(app): Shared,
    Extension(console): Con,
    Path(tenant): Path<String>,
    Query(raw): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let ctx = match signed_in(&app, &console, &tenant, &headers, &here(&tenant, "/audit")) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    if let Err(r) = admin_only(&ctx) {
        return r.into_response();
    }
    let value = |k: &str| {
        raw.get(k)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let after = value("after")
        .and_then(|a| a.parse::<u64>().ok())
        .unwrap_or(0);
    let result = AuditFilter::parse(
        value("actor"),
        value("action"),
        value("since").as_deref(),
        value("until").as_deref(),
    )
    .and_then(|filter| app.audit_matching(&ctx.tenant, after, AUDIT_PAGE, &filter, &ctx.caller));
    let (entries, error) = match result {
        Ok(page) => (Some(page), None),
        Err(e @ crate::app::AppError::BadRequest(_)) => (None, Some(words(&e))),
        Err(e) => return Refusal::from(e).into_response(),
    };
    let next = entries.as_ref().and_then(|p| p.next.clone()).map(|next| {
        let mut q: Vec<(String, String)> = ["actor", "action", "since", "until"]
            .iter()
            .filter_map(|k| value(k).map(|v| (k.to_string(), v)))
            .collect();
        q.push(("after".into(), next));
        format!(
            "/console/{}/audit?{}",
            seg(&ctx.tenant),
            serde_urlencoded::to_string(&q).unwrap_or_default()
        )
    });
    let shown = |k: &str| value(k).unwrap_or_default();
    page(
        if error.is_some() {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::OK
        },
        Some(&ctx),
        "Audit log",
        html! {
            form method="get" action={ "/console/" (seg(&ctx.tenant)) "/audit" } aria-label="Filter the audit log" {
                div.row {
                    div { label for="actor" { "Actor" } input id="actor" name="actor" value=(shown("actor")) placeholder="operator or user:usr_…"; }
                    div { label for="action" { "Action" } input id="action" name="action" value=(shown("action")) placeholder="user.* or tenant.mode"; }
                    div { label for="since" { "Since (RFC 3339)" } input id="since" name="since" value=(shown("since")) placeholder="2026-01-31T00:00:00Z"; }
                    div { label for="until" { "Until (RFC 3339)" } input id="until" name="until" value=(shown("until")); }
                    div { button type="submit" { "Filter" } }
                }
                (field_error("audit-filter", error.as_deref()))
            }
            @if let Some(entries) = &entries {
                table id="audit" {
                    thead { tr { th scope="col" { "#" } th scope="col" { "When" } th scope="col" { "Actor" } th scope="col" { "Action" } th scope="col" { "Target" } } }
                    tbody {
                        @for e in &entries.items {
                            tr { td { (e.seq) } td { (date(e.at)) } td { (e.actor) } td { code { (e.action) } } td { (e.target) } }
                        }
                    }
                }
                @if entries.items.is_empty() { p.muted { "No entry matches." } }
                @if let Some(next) = &next { p { a href=(next) rel="next" { "Next page" } } }
            }
        },
    )
}

/// The outbox of a tenant, for the operator: who, what, delivery state; never the body.
pub(super) async fn outbox(
    State(app): Shared,
    Extension(console): Con,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    let ctx = match signed_in(&app, &console, &tenant, &headers, &here(&tenant, "/outbox")) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let messages = match app.outbox(&ctx.tenant, &ctx.caller) {
        Ok(m) => m,
        Err(e) => return Refusal::from(e).into_response(),
    };
    page(
        StatusCode::OK,
        Some(&ctx),
        "Outbox",
        html! {
            p.muted { "Messages are listed without their bodies: a body holds a one-time link." }
            table id="outbox" {
                thead { tr { th scope="col" { "Queued" } th scope="col" { "To" } th scope="col" { "Subject" } th scope="col" { "State" } th scope="col" { "Tries" } } }
                tbody {
                    @for m in &messages {
                        tr {
                            td { (date(m.created_at)) }
                            td { (m.to) }
                            td { (m.subject) }
                            td {
                                @if let Some(t) = m.sent_at { "sent " (date(t)) }
                                @else if let Some(t) = m.failed_at { "gave up " (date(t)) ": " (m.last_error.as_deref().unwrap_or("")) }
                                @else { "pending" @if let Some(e) = &m.last_error { " (last error: " (e) ")" } }
                            }
                            td { (m.attempts) }
                        }
                    }
                }
            }
            @if messages.is_empty() { p.muted { "No messages." } }
        },
    )
}
