//! Virtual accounts (their tokens, rotation with a grace period, revocation; a new secret
//! shown once) and resources with their collaborators.

use super::{
    admin_only, checked_form, date, field_error, here, page, redirect, seg, signed_in, word, words,
    Con, Ctx, Refusal,
};
use crate::app::{App, NewResource, NewVaToken, NewVirtualAccount};
use crate::http::Shared;
use crate::identity::{Collaborator, Subject};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use gatehouse_rules::Role;
use maud::html;

pub(super) async fn list(
    State(app): Shared,
    Extension(console): Con,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    let ctx = match signed_in(
        &app,
        &console,
        &tenant,
        &headers,
        &here(&tenant, "/virtual-accounts"),
    ) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    if let Err(r) = admin_only(&ctx) {
        return r.into_response();
    }
    list_page(&app, &ctx, StatusCode::OK, None)
}

fn list_page(app: &App, ctx: &Ctx, status: StatusCode, error: Option<String>) -> Response {
    let accounts = match app.virtual_accounts(&ctx.tenant, &ctx.caller) {
        Ok(a) => a,
        Err(e) => return Refusal::from(e).into_response(),
    };
    page(
        status,
        Some(ctx),
        "Virtual accounts",
        html! {
            table {
                thead { tr { th scope="col" { "Name" } th scope="col" { "Role" } th scope="col" { "Enabled" } th scope="col" { "IdP mappings" } } }
                tbody {
                    @for a in &accounts {
                        tr {
                            td { a href={ "/console/" (seg(&ctx.tenant)) "/virtual-accounts/" (seg(&a.id)) } { (a.name) } }
                            td { (word(&a.role)) }
                            td { (if a.enabled { "yes" } else { "no" }) }
                            td { @for m in &a.mappings { code { (m.idp) ": " (m.value) } " " } }
                        }
                    }
                }
            }
            @if accounts.is_empty() { p.muted { "No virtual account yet." } }
            h2 id="new-va" { "Create a virtual account" }
            form method="post" action={ "/console/" (seg(&ctx.tenant)) "/virtual-accounts" } aria-labelledby="new-va" {
                input type="hidden" name="csrf" value=(ctx.csrf);
                label for="va-name" { "Name" }
                input id="va-name" name="name" required aria-describedby=[error.as_ref().map(|_| "va-name-error")];
                (field_error("va-name", error.as_deref()))
                label for="va-role" { "Role" }
                select id="va-role" name="role" { option value="member" { "member" } option value="admin" { "admin" } }
                button type="submit" { "Create virtual account" }
            }
        },
    )
}

pub(super) async fn create(
    State(app): Shared,
    Extension(console): Con,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ctx = match signed_in(
        &app,
        &console,
        &tenant,
        &headers,
        &here(&tenant, "/virtual-accounts"),
    ) {
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
    let new = NewVirtualAccount {
        name: form.text("name").unwrap_or_default(),
        role: if form.get("role") == Some("admin") {
            Role::Admin
        } else {
            Role::Member
        },
        mappings: Vec::new(),
    };
    match app.create_virtual_account(&ctx.tenant, new, &ctx.caller) {
        Ok(va) => redirect(&format!(
            "/console/{}/virtual-accounts/{}",
            seg(&ctx.tenant),
            seg(&va.id)
        )),
        Err(e) => list_page(&app, &ctx, e.status(), Some(words(&e))),
    }
}

pub(super) async fn detail(
    State(app): Shared,
    Extension(console): Con,
    Path((tenant, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let path = here(&tenant, &format!("/virtual-accounts/{}", seg(&id)));
    let ctx = match signed_in(&app, &console, &tenant, &headers, &path) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    if let Err(r) = admin_only(&ctx) {
        return r.into_response();
    }
    detail_page(&app, &ctx, &id, StatusCode::OK, None, None)
}

fn detail_page(
    app: &App,
    ctx: &Ctx,
    id: &str,
    status: StatusCode,
    created: Option<(String, String)>,
    error: Option<String>,
) -> Response {
    let (va, tokens) = match (
        app.virtual_account(&ctx.tenant, id, &ctx.caller),
        app.va_tokens(&ctx.tenant, id, &ctx.caller),
    ) {
        (Ok(v), Ok(t)) => (v, t),
        (Err(e), _) | (_, Err(e)) => return Refusal::from(e).into_response(),
    };
    let now = time::OffsetDateTime::now_utc();
    let base = format!(
        "/console/{}/virtual-accounts/{}",
        seg(&ctx.tenant),
        seg(&va.id)
    );
    page(
        status,
        Some(ctx),
        &format!("Virtual account {}", va.name),
        html! {
            p { a href={ "/console/" (seg(&ctx.tenant)) "/virtual-accounts" } { "← All virtual accounts" } }
            p { "Role " (word(&va.role)) "; " (if va.enabled { "enabled" } else { "disabled" }) "." }
            @if let Some((name, secret)) = &created {
                div.secret role="status" {
                    p { "Token " strong { (name) } " — copy it now; it is shown this once:" }
                    p { code id="va-secret" { (secret) } }
                }
            }
            h2 { "Tokens" }
            table {
                thead { tr { th scope="col" { "Name" } th scope="col" { "Created" } th scope="col" { "Expires" } th scope="col" { "" } } }
                tbody {
                    @for t in &tokens {
                        tr {
                            td { (t.name) }
                            td { (date(t.created_at)) }
                            td { (t.expires_at.map(date).unwrap_or_else(|| "never".into()))
                                 @if let Some(r) = t.revoked_at { " " span.badge { (if r > now { "rotated: works until " } else { "revoked " }) (date(r)) } } }
                            td {
                                @if t.is_live(now) {
                                    form method="post" action={ (base) "/tokens/" (seg(&t.id)) "/revoke" } {
                                        input type="hidden" name="csrf" value=(ctx.csrf);
                                        button.danger type="submit" aria-label={ "Revoke " (t.name) } { "Revoke" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            h2 id="new-token" { "New token" }
            form method="post" action={ (base) "/tokens" } aria-labelledby="new-token" {
                input type="hidden" name="csrf" value=(ctx.csrf);
                label for="va-token-name" { "Name" }
                input id="va-token-name" name="name" required aria-describedby=[error.as_ref().map(|_| "va-token-error")];
                label for="va-token-days" { "Expires in (days)" }
                input id="va-token-days" name="days" type="number" min="1" max="3650" value="365";
                label for="va-replaces" { "Rotate: replaces (the old token keeps working for the grace period)" }
                select id="va-replaces" name="replaces" {
                    option value="" { "Nothing (an additional token)" }
                    @for t in tokens.iter().filter(|t| t.is_live(now)) { option value=(t.id) { (t.name) } }
                }
                label for="va-grace" { "Grace period (seconds)" }
                input id="va-grace" name="grace_seconds" type="number" min="0" value="3600";
                (field_error("va-token", error.as_deref()))
                button type="submit" { "Create token" }
            }
        },
    )
}

/// A new token (or a rotation); the secret is shown on this answer only. Revocation.
pub(super) async fn token(
    State(app): Shared,
    Extension(console): Con,
    Path((tenant, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = here(&tenant, &format!("/virtual-accounts/{}", seg(&id)));
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
    let number = |name: &str| {
        form.text(name).map(|v| {
            v.parse::<i64>()
                .map_err(|_| format!("{name} must be a whole number"))
        })
    };
    let (days, grace) = match (
        number("days").transpose(),
        number("grace_seconds").transpose(),
    ) {
        (Ok(d), Ok(g)) => (d, g),
        (Err(why), _) | (_, Err(why)) => {
            return detail_page(&app, &ctx, &id, StatusCode::BAD_REQUEST, None, Some(why))
        }
    };
    let replaces = form.text("replaces");
    let new = NewVaToken {
        name: form.text("name").unwrap_or_default(),
        expires_in_days: days,
        grace_seconds: replaces.as_ref().and(grace),
        replaces,
    };
    match app.create_va_token(&ctx.tenant, &id, new, &ctx.caller) {
        Ok(created) => detail_page(
            &app,
            &ctx,
            &id,
            StatusCode::CREATED,
            Some((created.token.name, created.secret)),
            None,
        ),
        Err(e) => detail_page(&app, &ctx, &id, e.status(), None, Some(words(&e))),
    }
}

pub(super) async fn revoke(
    State(app): Shared,
    Extension(console): Con,
    Path((tenant, id, token)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = here(&tenant, &format!("/virtual-accounts/{}", seg(&id)));
    let ctx = match signed_in(&app, &console, &tenant, &headers, &path) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    if let Err(r) = checked_form(&app, &ctx, &headers, &body) {
        return r.into_response();
    }
    if let Err(r) = admin_only(&ctx) {
        return r.into_response();
    }
    match app.revoke_va_token(&ctx.tenant, &id, &token, &ctx.caller) {
        Ok(()) => redirect(&format!(
            "/console/{}/virtual-accounts/{}",
            seg(&ctx.tenant),
            seg(&id)
        )),
        Err(e) => detail_page(&app, &ctx, &id, e.status(), None, Some(words(&e))),
    }
}

// ------------------------------------------------------------------ resources

pub(super) async fn resources(
    State(app): Shared,
    Extension(console): Con,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    let ctx = match signed_in(
        &app,
        &console,
        &tenant,
        &headers,
        &here(&tenant, "/resources"),
    ) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    if let Err(r) = admin_only(&ctx) {
        return r.into_response();
    }
    resources_page(&app, &ctx, StatusCode::OK, None)
}

fn subject_line(subject: &Subject) -> String {
    match subject {
        Subject::User(id) => format!("user:{id}"),
        Subject::Team(id) => format!("team:{id}"),
        Subject::VirtualAccount(id) => format!("virtual_account:{id}"),
        Subject::ExternalIdentity(name) => format!("external_identity:{name}"),
    }
}

/// `kind:id:role` lines as collaborators.
fn collaborators(text: &str) -> Result<Vec<Collaborator>, String> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let mut parts = line.splitn(3, ':');
        let (kind, id, role) = match (parts.next(), parts.next(), parts.next()) {
            (Some(k), Some(i), Some(r)) => (k.trim(), i.trim().to_owned(), r.trim().to_owned()),
            _ => return Err(format!("{line:?} is not kind:id:role")),
        };
        let subject = match kind {
            "user" => Subject::User(id),
            "team" => Subject::Team(id),
            "virtual_account" => Subject::VirtualAccount(id),
            other => {
                return Err(format!(
                    "kind {other:?} is invalid: use user, team or virtual_account"
                ))
            }
        };
        out.push(Collaborator { subject, role });
    }
    Ok(out)
}

/// Replaces a resource's collaborators (the API checks each subject exists).
pub(super) async fn set_collaborators(
    State(app): Shared,
    Extension(console): Con,
    Path((tenant, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ctx = match signed_in(
        &app,
        &console,
        &tenant,
        &headers,
        &here(&tenant, "/resources"),
    ) {
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
    let list = match collaborators(form.get("collaborators").unwrap_or_default()) {
        Ok(l) => l,
        Err(why) => return resources_page(&app, &ctx, StatusCode::BAD_REQUEST, Some((id, why))),
    };
    match app.set_collaborators(&ctx.tenant, &id, list, &ctx.caller) {
        Ok(_) => redirect(&format!("/console/{}/resources", seg(&ctx.tenant))),
        Err(e) => resources_page(&app, &ctx, e.status(), Some((id, words(&e)))),
    }
}

fn resources_page(
    app: &App,
    ctx: &Ctx,
    status: StatusCode,
    error: Option<(String, String)>,
) -> Response {
    let resources = match app.resources(&ctx.tenant, &ctx.caller) {
        Ok(r) => r,
        Err(e) => return Refusal::from(e).into_response(),
    };
    page(
        status,
        Some(ctx),
        "Resources",
        html! {
            table {
                thead { tr { th scope="col" { "Kind" } th scope="col" { "Name" } th scope="col" { "Collaborators" } } }
                tbody {
                    @for r in &resources {
                        tr {
                            td { (r.kind) }
                            td { (r.name) }
                            td {
                                form method="post" action={ "/console/" (seg(&ctx.tenant)) "/resources/" (seg(&r.id)) "/collaborators" } {
                                    input type="hidden" name="csrf" value=(ctx.csrf);
                                    label for={ "collab-" (r.id) } { "One kind:id:role a line (kind: user, team, virtual_account)" }
                                    textarea id={ "collab-" (r.id) } name="collaborators" {
                                        @for c in &r.collaborators { (subject_line(&c.subject)) ":" (c.role) "\n" }
                                    }
                                    button.secondary type="submit" { "Save collaborators" }
                                }
                                (field_error(&format!("collab-{}", r.id), error.as_ref().filter(|(id, _)| id == &r.id).map(|(_, w)| w.as_str())))
                            }
                        }
                    }
                }
            }
            @if resources.is_empty() { p.muted { "No resource yet." } }
            h2 id="new-resource" { "Create a resource" }
            form method="post" action={ "/console/" (seg(&ctx.tenant)) "/resources" } aria-labelledby="new-resource" {
                input type="hidden" name="csrf" value=(ctx.csrf);
                label for="resource-kind" { "Kind (model, workspace, mcp-server, …)" }
                input id="resource-kind" name="kind" required;
                label for="resource-name" { "Name" }
                input id="resource-name" name="name" required aria-describedby=[error.as_ref().filter(|(id, _)| id.is_empty()).map(|_| "resource-error")];
                (field_error("resource", error.as_ref().filter(|(id, _)| id.is_empty()).map(|(_, w)| w.as_str())))
                button type="submit" { "Create resource" }
            }
        },
    )
}

pub(super) async fn create_resource(
    State(app): Shared,
    Extension(console): Con,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ctx = match signed_in(
        &app,
        &console,
        &tenant,
        &headers,
        &here(&tenant, "/resources"),
    ) {
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
    let new = NewResource {
        kind: form.text("kind").unwrap_or_default(),
        name: form.text("name").unwrap_or_default(),
        collaborators: Vec::new(),
    };
    match app.create_resource(&ctx.tenant, new, &ctx.caller) {
        Ok(_) => redirect(&format!("/console/{}/resources", seg(&ctx.tenant))),
        Err(e) => resources_page(&app, &ctx, e.status(), Some((String::new(), words(&e)))),
    }
}
