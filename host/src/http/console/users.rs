//! Access › Users: the paged, filtered list with *Invite User*; a user's page with its
//! role (and where it came from), its teams, and deactivate, reactivate, reset password,
//! manual role and delete. A member's own profile and tokens.

use super::{
    admin_only, blocking, checked_form, date, field_error, here, page, redirect, seg, signed_in,
    word, words, Con, Ctx, Refusal,
};
use crate::app::{App, AppError, Invite, MemberChange, NewToken, UserQuery};
use crate::http::Shared;
use crate::identity::User;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use gatehouse_rules::Role;
use maud::{html, Markup};
use std::collections::HashMap;
use std::sync::Arc;

/// Users per page.
const PAGE: usize = 25;

fn notice(done: Option<&str>) -> Markup {
    let text = match done {
        Some("invited") => "The user is invited.",
        Some("deactivated") => {
            "The user is deactivated: their tokens and sessions stop working now."
        }
        Some("reactivated") => "The user is active again.",
        Some("reset-password") => "A password-reset link is on its way to the user.",
        Some("role") => "The manual role is saved; the policy decided the effective role.",
        Some("deleted") => "The user is deleted.",
        Some("left-team") => "The user is removed from the team.",
        _ => return html! {},
    };
    html! { p.notice role="status" { (text) } }
}

/// `/console/{tenant}`: an admin goes on to Users; a member sees their own profile and
/// tokens.
pub(super) async fn overview(
    State(app): Shared,
    Extension(console): Con,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    let ctx = match signed_in(&app, &console, &tenant, &headers, &here(&tenant, "")) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    if ctx.is_admin() {
        return redirect(&format!("/console/{}/users", seg(&ctx.tenant)));
    }
    profile(&app, &ctx, StatusCode::OK, None, None)
}

fn profile(
    app: &App,
    ctx: &Ctx,
    status: StatusCode,
    created: Option<(String, String)>,
    error: Option<String>,
) -> Response {
    let Some(me) = ctx.user_id() else {
        return Refusal::Page(
            StatusCode::BAD_REQUEST,
            "the operator has no profile".into(),
        )
        .into_response();
    };
    let user = match app.user(&ctx.tenant, me, &ctx.caller) {
        Ok(u) => u,
        Err(e) => return Refusal::from(e).into_response(),
    };
    let (teams, tokens) = match (
        app.user_teams(&ctx.tenant, me, &ctx.caller),
        app.pats(&ctx.tenant, me, &ctx.caller),
    ) {
        (Ok(t), Ok(k)) => (t, k),
        (Err(e), _) | (_, Err(e)) => return Refusal::from(e).into_response(),
    };
    page(
        status,
        Some(ctx),
        "My profile",
        html! {
            dl {
                dt { "Email" } dd { (user.email) }
                dt { "Name" } dd { (user.display_name.as_deref().unwrap_or("—")) }
                dt { "Role" } dd { (word(&user.role)) " (" (word(&user.role_source)) ")" }
                dt { "Teams" } dd { @for t in &teams { span.badge { (t.name) } " " } }
            }
            h2 { "My personal access tokens" }
            @if let Some((name, secret)) = &created {
                div.secret role="status" {
                    p { "Token " strong { (name) } " — copy it now; it is shown this once:" }
                    p { code id="new-secret" { (secret) } }
                }
            }
            table {
                thead { tr { th scope="col" { "Name" } th scope="col" { "Created" } th scope="col" { "Expires" } } }
                tbody {
                    @for t in &tokens {
                        tr { td { (t.name) } td { (date(t.created_at)) } td { (t.expires_at.map(date).unwrap_or_else(|| "never".into())) } }
                    }
                }
            }
            form method="post" action={ "/console/" (seg(&ctx.tenant)) "/tokens" } {
                input type="hidden" name="csrf" value=(ctx.csrf);
                label for="token-name" { "New token's name" }
                input id="token-name" name="name" required maxlength="100"
                    aria-describedby=[error.as_ref().map(|_| "token-name-error")];
                (field_error("token-name", error.as_deref()))
                label for="token-days" { "Expires in (days)" }
                input id="token-days" name="days" type="number" min="1" max="3650" value="90";
                button type="submit" { "Create token" }
            }
        },
    )
}

/// A member (or admin) creates a personal access token for themselves; the secret is
/// shown once, on this answer only.
pub(super) async fn create_own_token(
    State(app): Shared,
    Extension(console): Con,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ctx = match signed_in(&app, &console, &tenant, &headers, &here(&tenant, "")) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let form = match checked_form(&app, &ctx, &headers, &body) {
        Ok(f) => f,
        Err(r) => return r.into_response(),
    };
    let Some(me) = ctx.user_id().map(str::to_owned) else {
        return Refusal::Page(StatusCode::BAD_REQUEST, "the operator has no tokens".into())
            .into_response();
    };
    let days = match form.text("days").map(|d| d.parse::<i64>()) {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(_)) => {
            return profile(
                &app,
                &ctx,
                StatusCode::BAD_REQUEST,
                None,
                Some("days must be a whole number".into()),
            )
        }
    };
    let new = NewToken {
        name: form.text("name").unwrap_or_default(),
        expires_in_days: days,
    };
    match app.create_pat(&ctx.tenant, &me, new, &ctx.caller) {
        Ok(created) => profile(
            &app,
            &ctx,
            StatusCode::CREATED,
            Some((created.token.name, created.secret)),
            None,
        ),
        Err(e) => profile(&app, &ctx, e.status(), None, Some(words(&e))),
    }
}

/// The list's query: every field optional, blanks ignored.
fn user_query(raw: &HashMap<String, String>) -> Result<UserQuery, AppError> {
    let mut fields = serde_json::Map::new();
    for key in ["status", "source", "q", "team", "after"] {
        if let Some(value) = raw.get(key).map(|v| v.trim()).filter(|v| !v.is_empty()) {
            fields.insert(key.into(), value.into());
        }
    }
    fields.insert("limit".into(), PAGE.into());
    serde_json::from_value(serde_json::Value::Object(fields))
        .map_err(|e| AppError::BadRequest(format!("the filter is not valid: {e}")))
}

/// Access › Users: search, status, source and team filters, paged; the invite form.
pub(super) async fn list(
    State(app): Shared,
    Extension(console): Con,
    Path(tenant): Path<String>,
    Query(raw): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let ctx = match signed_in(&app, &console, &tenant, &headers, &here(&tenant, "/users")) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    if let Err(r) = admin_only(&ctx) {
        return r.into_response();
    }
    list_page(&app, &ctx, &raw, StatusCode::OK, None, None)
}

fn list_page(
    app: &App,
    ctx: &Ctx,
    raw: &HashMap<String, String>,
    status: StatusCode,
    invite_error: Option<String>,
    invite: Option<&Invite>,
) -> Response {
    let (users, filter_error) =
        match user_query(raw).and_then(|q| app.users(&ctx.tenant, &q, &ctx.caller)) {
            Ok(page) => (Some(page), None),
            Err(e @ (AppError::BadRequest(_) | AppError::NotFound(_))) => (None, Some(words(&e))),
            Err(e) => return Refusal::from(e).into_response(),
        };
    let teams = match app.teams(&ctx.tenant, &ctx.caller) {
        Ok(t) => t,
        Err(e) => return Refusal::from(e).into_response(),
    };
    let value = |k: &str| raw.get(k).cloned().unwrap_or_default();
    let selected = |k: &str, v: &str| raw.get(k).is_some_and(|x| x == v);
    let next_link = users.as_ref().and_then(|p| p.next.clone()).map(|next| {
        let mut query: Vec<(String, String)> = raw
            .iter()
            .filter(|(k, v)| k.as_str() != "after" && k.as_str() != "done" && !v.is_empty())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        query.sort();
        query.push(("after".into(), next));
        format!(
            "/console/{}/users?{}",
            seg(&ctx.tenant),
            serde_urlencoded::to_string(&query).unwrap_or_default()
        )
    });
    page(
        status,
        Some(ctx),
        "Users",
        html! {
            (notice(raw.get("done").map(String::as_str)))
            form method="get" action={ "/console/" (seg(&ctx.tenant)) "/users" } aria-label="Filter users" {
                div.row {
                    div { label for="q" { "Search email or name" } input id="q" name="q" type="search" value=(value("q")); }
                    div {
                        label for="status" { "Status" }
                        select id="status" name="status" {
                            option value="" { "Any" }
                            @for s in ["invited", "active", "deactivated"] { option value=(s) selected[selected("status", s)] { (s) } }
                        }
                    }
                    div {
                        label for="source" { "Source" }
                        select id="source" name="source" {
                            option value="" { "Any" }
                            @for s in ["invite", "jit", "scim", "migration"] { option value=(s) selected[selected("source", s)] { (s) } }
                        }
                    }
                    div {
                        label for="team" { "Team" }
                        select id="team" name="team" {
                            option value="" { "Any" }
                            @for t in &teams { option value=(t.team.id) selected[selected("team", &t.team.id)] { (t.team.name) } }
                        }
                    }
                    div { button type="submit" { "Filter" } }
                }
                (field_error("filter", filter_error.as_deref()))
            }
            @if let Some(users) = &users {
                table {
                    thead { tr { th scope="col" { "Email" } th scope="col" { "Name" } th scope="col" { "Status" } th scope="col" { "Source" } th scope="col" { "Role" } } }
                    tbody {
                        @for u in &users.items {
                            tr {
                                td { a href={ "/console/" (seg(&ctx.tenant)) "/users/" (seg(&u.id)) } { (u.email) } }
                                td { (u.display_name.as_deref().unwrap_or("")) }
                                td { (word(&u.status)) }
                                td { (word(&u.source)) }
                                td { (word(&u.role)) " " span.muted { "(" (word(&u.role_source)) ")" } }
                            }
                        }
                    }
                }
                @if users.items.is_empty() { p.muted { "No user matches." } }
                @if let Some(next) = &next_link { p { a href=(next) rel="next" { "Next page" } } }
            }
            h2 id="invite-heading" { "Invite user" }
            form method="post" action={ "/console/" (seg(&ctx.tenant)) "/users" } aria-labelledby="invite-heading" {
                input type="hidden" name="csrf" value=(ctx.csrf);
                label for="invite-email" { "Email" }
                input id="invite-email" name="email" type="email" required
                    value=(invite.map(|i| i.email.as_str()).unwrap_or(""))
                    aria-describedby=[invite_error.as_ref().map(|_| "invite-email-error")];
                (field_error("invite-email", invite_error.as_deref()))
                label for="invite-name" { "Display name (optional)" }
                input id="invite-name" name="display_name"
                    value=(invite.and_then(|i| i.display_name.as_deref()).unwrap_or(""));
                label.check {
                    input type="checkbox" name="send_password_email" value="yes" checked[invite.is_none_or(|i| i.send_password_email)];
                    "Send an email to set a password"
                }
                button type="submit" { "Invite user" }
            }
        },
    )
}

/// *Invite User*: on success on to the new user's page; else the list with the reason
/// next to the email.
pub(super) async fn invite(
    State(app): Shared,
    Extension(console): Con,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ctx = match signed_in(&app, &console, &tenant, &headers, &here(&tenant, "/users")) {
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
    let invite = Invite {
        email: form.text("email").unwrap_or_default(),
        display_name: form.text("display_name"),
        send_password_email: form.get("send_password_email").is_some(),
        ..Invite::default()
    };
    match app.invite_user(&ctx.tenant, invite.clone(), &ctx.caller) {
        Ok(user) => redirect(&format!(
            "/console/{}/users/{}?done=invited",
            seg(&ctx.tenant),
            seg(&user.id)
        )),
        Err(e) => list_page(
            &app,
            &ctx,
            &HashMap::new(),
            e.status(),
            Some(words(&e)),
            Some(&invite),
        ),
    }
}

/// A user's page.
pub(super) async fn detail(
    State(app): Shared,
    Extension(console): Con,
    Path((tenant, user)): Path<(String, String)>,
    Query(raw): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let path = here(&tenant, &format!("/users/{}", seg(&user)));
    let ctx = match signed_in(&app, &console, &tenant, &headers, &path) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    if let Err(r) = admin_only(&ctx) {
        return r.into_response();
    }
    user_page(
        &app,
        &ctx,
        &user,
        StatusCode::OK,
        raw.get("done").map(String::as_str),
        None,
    )
}

/// The user's page, with `error` (action, words) next to the control that caused it.
fn user_page(
    app: &App,
    ctx: &Ctx,
    id: &str,
    status: StatusCode,
    done: Option<&str>,
    error: Option<(&str, String)>,
) -> Response {
    let user: User = match app.user(&ctx.tenant, id, &ctx.caller) {
        Ok(u) => u,
        Err(e) => return Refusal::from(e).into_response(),
    };
    let teams = match app.user_teams(&ctx.tenant, id, &ctx.caller) {
        Ok(t) => t,
        Err(e) => return Refusal::from(e).into_response(),
    };
    let err = |action: &str| {
        error
            .as_ref()
            .filter(|(a, _)| *a == action)
            .map(|(_, w)| w.as_str())
    };
    let base = format!("/console/{}/users/{}", seg(&ctx.tenant), seg(&user.id));
    let button = |action: &str, label: &str, class: &str| {
        html! {
            form method="post" action={ (base) "/" (action) } {
                input type="hidden" name="csrf" value=(ctx.csrf);
                button type="submit" class=(class) id={ "do-" (action) }
                    aria-describedby=[err(action).map(|_| format!("{action}-error"))] { (label) }
                (field_error(action, err(action)))
            }
        }
    };
    let role_source = match user.role_source {
        gatehouse_rules::RoleSource::Manual => "set by hand (a manual role always wins)",
        gatehouse_rules::RoleSource::Group => "from a team's role",
        gatehouse_rules::RoleSource::Initial => "the initial role",
    };
    page(
        status,
        Some(ctx),
        &user.email,
        html! {
            (notice(done))
            p { a href={ "/console/" (seg(&ctx.tenant)) "/users" } { "← All users" } }
            dl {
                dt { "Name" } dd { (user.display_name.as_deref().unwrap_or("—")) }
                dt { "Status" } dd id="user-status" { (word(&user.status)) }
                dt { "Source" } dd { (word(&user.source)) }
                dt { "Role" } dd id="user-role" { (word(&user.role)) " — " (role_source) }
                dt { "Created" } dd { (date(user.created_at)) }
            }
            h2 { "Teams" }
            @if teams.is_empty() { p.muted { "No teams." } }
            ul id="user-teams" {
                @for t in &teams {
                    li {
                        (t.name)
                        @if t.role.is_some() { " " span.badge { "gives " (word(&t.role)) } }
                        @if t.scim.is_some() { " " span.badge { "managed by SCIM" } }
                        @if !t.builtin {
                            form.inline method="post" action={ (base) "/leave-team" } {
                                input type="hidden" name="csrf" value=(ctx.csrf);
                                input type="hidden" name="team" value=(t.id);
                                button.secondary type="submit" aria-label={ "Remove from " (t.name) } { "Remove from team" }
                            }
                        }
                    }
                }
            }
            (field_error("leave-team", err("leave-team")))
            h2 { "Role set by hand" }
            form method="post" action={ (base) "/role" } {
                input type="hidden" name="csrf" value=(ctx.csrf);
                label for="manual-role" { "Manual role" }
                select id="manual-role" name="role" aria-describedby=[err("role").map(|_| "role-error")] {
                    option value="" selected[user.manual_role.is_none()] { "None (the policy derives it)" }
                    option value="member" selected[user.manual_role == Some(Role::Member)] { "member" }
                    option value="admin" selected[user.manual_role == Some(Role::Admin)] { "admin" }
                }
                (field_error("role", err("role")))
                button type="submit" { "Save role" }
            }
            h2 { "Actions" }
            div.actions {
                @if user.status == gatehouse_rules::UserStatus::Deactivated {
                    (button("reactivate", "Reactivate", ""))
                } @else {
                    (button("deactivate", "Deactivate", "secondary"))
                    (button("reset-password", "Reset password", "secondary"))
                }
                (button("delete", "Delete user", "danger"))
            }
        },
    )
}

/// The user page's actions.
pub(super) async fn act(
    State(app): Shared,
    Extension(console): Con,
    Path((tenant, user, action)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = here(&tenant, &format!("/users/{}", seg(&user)));
    let ctx = match signed_in(&app, &console, &tenant, &headers, &path) {
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
    let (t, caller) = (ctx.tenant.clone(), ctx.caller.clone());
    let app2: Arc<App> = app.clone();
    let id = user.clone();
    let result: Result<&'static str, AppError> = match action.as_str() {
        "deactivate" => app
            .set_user_active(&t, &id, false, &caller)
            .map(|_| "deactivated"),
        "reactivate" => app
            .set_user_active(&t, &id, true, &caller)
            .map(|_| "reactivated"),
        "reset-password" => app
            .reset_password(&t, &id, &caller)
            .map(|_| "reset-password"),
        "delete" => app.delete_user(&t, &id, &caller).map(|_| "deleted"),
        "role" => {
            let role = match form.get("role").unwrap_or_default() {
                "" => Ok(None),
                "admin" => Ok(Some(Role::Admin)),
                "member" => Ok(Some(Role::Member)),
                other => Err(AppError::BadRequest(format!(
                    "role {other:?} is invalid: use admin, member or none"
                ))),
            };
            match role {
                Ok(role) => blocking(move || app2.set_manual_role(&t, &id, role, &caller))
                    .await
                    .map(|_| "role"),
                Err(e) => Err(e),
            }
        }
        "leave-team" => {
            let team = form.text("team").unwrap_or_default();
            let change = MemberChange {
                add: Vec::new(),
                remove: vec![id.clone()],
            };
            blocking(move || app2.change_members(&t, &team, change, false, &caller))
                .await
                .map(|_| "left-team")
        }
        _ => {
            return Refusal::Page(StatusCode::NOT_FOUND, format!("no action {action:?}"))
                .into_response()
        }
    };
    match result {
        Ok("deleted") => redirect(&format!("/console/{}/users?done=deleted", seg(&ctx.tenant))),
        Ok(done) => redirect(&format!(
            "/console/{}/users/{}?done={done}",
            seg(&ctx.tenant),
            seg(&user)
        )),
        Err(e) => user_page(
            &app,
            &ctx,
            &user,
            e.status(),
            None,
            Some((action.as_str(), words(&e))),
        ),
    }
}
