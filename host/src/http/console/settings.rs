//! Settings › Security & Access: Provisioning (one mode, switched with a confirmation
//! that says what changes), SSO (authentication only; the SCIM token button; the
//! connection's pending memberships) and Identity Providers (with "test a token", which
//! runs `policy explain`).

use super::{
    admin_only, blocking, checked_form, field_error, here, page, redirect, seg, signed_in, words,
    Con, Ctx, Form, Refusal,
};
use crate::app::{App, AppError, ExplainRequest, IdpInput, SsoInput, ALLOWED_ALGORITHMS};
use crate::http::Shared;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use maud::{html, Markup};
use std::collections::HashMap;

/// The three modes, as the product documents explain them, and what switching to each
/// changes (SPEC §2).
const MODES: [(&str, &str, &str, &str); 3] = [
    (
        "scim",
        "SCIM",
        "Your identity provider pushes users and groups into Gatehouse; deprovisioning is handled by the identity provider too. Best when the IdP is the source of truth for the user and group lifecycle.",
        "SCIM connections may create, change and deactivate users and sync teams from groups. An SSO login for an email with no user is refused (not provisioned). Admins can still invite people outside the IdP.",
    ),
    (
        "jit",
        "Just-in-time (JIT)",
        "Gatehouse creates a user the first time a valid SSO login arrives from your identity provider. Best for SSO without SCIM sync.",
        "Anyone who signs in through an SSO configuration gets a user (active, source jit). SCIM connections can only read. Deactivated users stay refused: JIT never reactivates anyone. Needs an SSO configuration.",
    ),
    (
        "invite_only",
        "Invite-only",
        "Admins invite every user from Access › Users. Best for external collaborators, early rollouts, or tenants where every user is approved by hand.",
        "Only invited users can sign in; an SSO login for anyone else is refused (not provisioned). SCIM connections can only read.",
    ),
];

fn mode_name(mode: &str) -> &str {
    MODES
        .iter()
        .find(|m| m.0 == mode)
        .map(|m| m.1)
        .unwrap_or(mode)
}

/// Settings › Provisioning.
pub(super) async fn provisioning(
    State(app): Shared,
    Extension(console): Con,
    Path(tenant): Path<String>,
    Query(raw): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let ctx = match signed_in(
        &app,
        &console,
        &tenant,
        &headers,
        &here(&tenant, "/provisioning"),
    ) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    if let Err(r) = admin_only(&ctx) {
        return r.into_response();
    }
    provisioning_page(&app, &ctx, StatusCode::OK, raw.contains_key("done"), None)
}

fn provisioning_page(
    app: &App,
    ctx: &Ctx,
    status: StatusCode,
    done: bool,
    error: Option<String>,
) -> Response {
    let current = match app.tenant(&ctx.tenant) {
        Ok(t) => t.mode,
        Err(e) => return Refusal::from(e).into_response(),
    };
    page(
        status,
        Some(ctx),
        "Provisioning",
        html! {
            @if done { p.notice role="status" { "The provisioning mode is now " (mode_name(&current)) "." } }
            p { "Current mode: " strong id="current-mode" { (mode_name(&current)) } }
            p.muted { "Pick exactly one mode. Switching never deletes or deactivates anyone; it changes what happens next." }
            form method="post" action={ "/console/" (seg(&ctx.tenant)) "/provisioning" } {
                input type="hidden" name="csrf" value=(ctx.csrf);
                fieldset aria-describedby=[error.as_ref().map(|_| "mode-error")] {
                    legend { "Provisioning mode" }
                    @for (id, name, what, _) in MODES {
                        label.check {
                            input type="radio" name="mode" value=(id) checked[current == id];
                            span { strong { (name) } br; span.muted { (what) } }
                        }
                    }
                }
                (field_error("mode", error.as_deref()))
                button type="submit" id="review-switch" { "Review the switch" }
            }
        },
    )
}

/// The switch: without `confirm` a page saying what changes, with a button that
/// confirms; with it, the mode is set.
pub(super) async fn switch_mode(
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
        &here(&tenant, "/provisioning"),
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
    let mode = form.text("mode").unwrap_or_default();
    let Some((id, name, _, changes)) = MODES.iter().find(|m| m.0 == mode) else {
        return provisioning_page(
            &app,
            &ctx,
            StatusCode::BAD_REQUEST,
            false,
            Some("choose one of the three modes".into()),
        );
    };
    if form.get("confirm") != Some("yes") {
        let current = app.tenant(&ctx.tenant).map(|t| t.mode).unwrap_or_default();
        return page(
            StatusCode::OK,
            Some(&ctx),
            "Confirm the provisioning switch",
            html! {
                p { "Switch from " strong { (mode_name(&current)) } " to " strong { (name) } "?" }
                h2 { "What changes" }
                p id="what-changes" { (changes) }
                p.muted { "Nobody is deleted or deactivated by the switch." }
                div.actions {
                    form method="post" action={ "/console/" (seg(&ctx.tenant)) "/provisioning" } {
                        input type="hidden" name="csrf" value=(ctx.csrf);
                        input type="hidden" name="mode" value=(id);
                        input type="hidden" name="confirm" value="yes";
                        button type="submit" id="confirm-switch" { "Switch to " (name) }
                    }
                    a href={ "/console/" (seg(&ctx.tenant)) "/provisioning" } { "Cancel" }
                }
            },
        );
    }
    match app.set_mode(&ctx.tenant, id, &ctx.caller) {
        Ok(_) => redirect(&format!(
            "/console/{}/provisioning?done=1",
            seg(&ctx.tenant)
        )),
        Err(e) => provisioning_page(&app, &ctx, e.status(), false, Some(words(&e))),
    }
}

// ------------------------------------------------------------------ SSO

/// Settings › SSO: the configurations, their SCIM endpoints and pending memberships, and
/// the form that adds one.
pub(super) async fn sso(
    State(app): Shared,
    Extension(console): Con,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    let ctx = match signed_in(&app, &console, &tenant, &headers, &here(&tenant, "/sso")) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    if let Err(r) = admin_only(&ctx) {
        return r.into_response();
    }
    sso_page(&app, &ctx, StatusCode::OK, None, None, None)
}

/// The SSO form's fields.
const SSO_FIELDS: [(&str, &str, bool); 8] = [
    ("id", "Id (used in the login URL)", true),
    ("issuer", "Issuer", true),
    ("client_id", "Client id", true),
    (
        "client_secret",
        "Client secret (stored, never shown)",
        false,
    ),
    ("discovery_url", "Discovery URL", false),
    ("jwks_uri", "JWKS URI", false),
    ("email_claim", "Email claim (default email)", false),
    ("unique_id_claim", "Unique id claim (default sub)", false),
];

/// Which field an error is about: the field whose value it quotes, else the first field
/// name it mentions, else `fallback`.
fn field_of<'a>(message: &str, form: &Form, fields: &[&'a str], fallback: &'a str) -> &'a str {
    let lower = message.to_lowercase();
    let quoted = fields.iter().find(|f| {
        form.text(f)
            .is_some_and(|v| v.len() > 3 && message.contains(&v) && **f != "issuer")
    });
    if let Some(field) = quoted {
        return field;
    }
    fields
        .iter()
        .find(|f| {
            lower.contains(**f)
                || lower.contains(&f.replace('_', " "))
                || (**f == "jwks_uri" && lower.contains("jwks"))
                || (**f == "discovery_url" && lower.contains("discovery"))
                || (**f == "algorithms" && lower.contains("algorithm"))
                || (**f == "audiences" && lower.contains("audience"))
        })
        .copied()
        .unwrap_or(fallback)
}

fn sso_page(
    app: &App,
    ctx: &Ctx,
    status: StatusCode,
    form: Option<&Form>,
    error: Option<(&str, String)>,
    scim: Option<(String, String, String)>,
) -> Response {
    let configs = match app.sso_configs(&ctx.tenant, &ctx.caller) {
        Ok(c) => c,
        Err(e) => return Refusal::from(e).into_response(),
    };
    let mut pending = Vec::new();
    for config in &configs {
        match app.scim_pending(&ctx.tenant, &config.id, &ctx.caller) {
            Ok(p) => pending.push(p),
            Err(e) => return Refusal::from(e).into_response(),
        }
    }
    let err = |f: &str| {
        error
            .as_ref()
            .filter(|(n, _)| *n == f)
            .map(|(_, w)| w.as_str())
    };
    page(
        status,
        Some(ctx),
        "SSO",
        html! {
            p.muted { "SSO is authentication only: provisioning is chosen on the Provisioning page; token validation for APIs on Identity providers." }
            @if let Some((id, url, token)) = &scim {
                div.secret role="status" id="scim-secret" {
                    p { "SCIM for " strong { (id) } " — copy the token now; it is shown this once and never again:" }
                    p { "Base URL: " code id="scim-url" { (url) } }
                    p { "Token: " code id="scim-token" { (token) } }
                }
            }
            @if configs.is_empty() { p.muted { "No SSO configuration yet." } }
            @for (config, pending) in configs.iter().zip(&pending) {
                section aria-labelledby={ "sso-" (config.id) } {
                    h2 id={ "sso-" (config.id) } { (config.id) }
                    dl {
                        dt { "Issuer" } dd { (config.issuer) }
                        dt { "Client id" } dd { (config.client_id) }
                        dt { "Client secret" } dd { (if config.client_secret_set { "set" } else { "not set" }) }
                        dt { "Discovery / JWKS" } dd { (config.discovery_url.as_deref().or(config.jwks_uri.as_deref()).unwrap_or("—")) }
                        dt { "Claims" } dd { "email: " code { (config.email_claim) } ", unique id: " code { (config.unique_id_claim) } }
                        dt { "SCIM base URL" } dd { code { (config.scim_base_url) } }
                        dt { "SCIM token" } dd { (if config.scim_token_set { "generated" } else { "none yet" }) }
                    }
                    form method="post" action={ "/console/" (seg(&ctx.tenant)) "/sso/" (seg(&config.id)) "/scim-token" } {
                        input type="hidden" name="csrf" value=(ctx.csrf);
                        button type="submit" id={ "scim-token-" (config.id) } {
                            span aria-hidden="true" { "🔑 " }
                            (if config.scim_token_set { "Generate a new SCIM token (the old one stops working)" } else { "Generate SCIM token" })
                        }
                        (field_error(&format!("scim-{}", config.id), err(&format!("scim-{}", config.id))))
                    }
                    h3 { "Pending memberships" }
                    @if pending.is_empty() { p.muted { "None." } } @else {
                        table {
                            thead { tr { th scope="col" { "Team" } th scope="col" { "Member (as sent)" } th scope="col" { "Expires" } } }
                            tbody { @for p in pending { tr { td { (p.team) } td { (p.value) } td { (super::date(p.expires_at)) } } } }
                        }
                    }
                }
            }
            h2 id="add-sso" { "Add an SSO configuration" }
            form method="post" action={ "/console/" (seg(&ctx.tenant)) "/sso" } aria-labelledby="add-sso" {
                input type="hidden" name="csrf" value=(ctx.csrf);
                @for (name, label, required) in SSO_FIELDS {
                    label for={ "sso-" (name) } { (label) }
                    input id={ "sso-" (name) } name=(name) required[required]
                        type=(if name == "client_secret" { "password" } else { "text" })
                        value=(if name == "client_secret" { "" } else { form.and_then(|f| f.get(name)).unwrap_or("") })
                        aria-describedby=[err(name).map(|_| format!("sso-{name}-error"))];
                    (field_error(&format!("sso-{name}"), err(name)))
                }
                (field_error("sso-form", err("form")))
                button type="submit" { "Add SSO configuration" }
            }
        },
    )
}

/// Adds an SSO configuration; a refusal is shown next to the field it names.
pub(super) async fn add_sso(
    State(app): Shared,
    Extension(console): Con,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ctx = match signed_in(&app, &console, &tenant, &headers, &here(&tenant, "/sso")) {
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
    let input = SsoInput {
        id: form.text("id").unwrap_or_default(),
        issuer: form.text("issuer").unwrap_or_default(),
        client_id: form.text("client_id").unwrap_or_default(),
        client_secret: form.text("client_secret"),
        discovery_url: form.text("discovery_url"),
        jwks_uri: form.text("jwks_uri"),
        email_claim: form.text("email_claim"),
        unique_id_claim: form.text("unique_id_claim"),
    };
    let worker = app.clone();
    let (t, caller) = (ctx.tenant.clone(), ctx.caller.clone());
    match blocking(move || worker.put_sso_config(&t, input, true, &caller)).await {
        Ok(_) => redirect(&format!("/console/{}/sso", seg(&ctx.tenant))),
        Err(e) => {
            let message = words(&e);
            let names: Vec<&str> = SSO_FIELDS.iter().map(|f| f.0).collect();
            let field = field_of(&message, &form, &names, "form");
            sso_page(
                &app,
                &ctx,
                e.status(),
                Some(&form),
                Some((field, message)),
                None,
            )
        }
    }
}

/// The SCIM token button: the base URL and a new token, shown on this answer only.
pub(super) async fn scim_token(
    State(app): Shared,
    Extension(console): Con,
    Path((tenant, sso)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ctx = match signed_in(&app, &console, &tenant, &headers, &here(&tenant, "/sso")) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    if let Err(r) = checked_form(&app, &ctx, &headers, &body) {
        return r.into_response();
    }
    if let Err(r) = admin_only(&ctx) {
        return r.into_response();
    }
    match app.generate_scim_token(&ctx.tenant, &sso, &ctx.caller) {
        Ok(token) => sso_page(
            &app,
            &ctx,
            StatusCode::OK,
            None,
            None,
            Some((sso.clone(), token.scim_base_url, token.token)),
        ),
        Err(e) => {
            let field = format!("scim-{sso}");
            sso_page(
                &app,
                &ctx,
                e.status(),
                None,
                Some((&field, words(&e))),
                None,
            )
        }
    }
}

// ------------------------------------------------------------------ identity providers

/// The identity-provider form's text fields.
const IDP_FIELDS: [(&str, &str, bool); 9] = [
    ("name", "Name", true),
    ("issuer", "Issuer", true),
    ("jwks_uri", "JWKS URI (or a discovery URL)", false),
    ("discovery_url", "Discovery URL (or a JWKS URI)", false),
    ("audiences", "Allowed audiences (comma-separated)", false),
    ("leeway_seconds", "Clock leeway (seconds)", false),
    ("user_claim", "User claim path (e.g. email)", false),
    ("va_name_claim", "Virtual-account name claim path", false),
    ("team_claim", "Team claim path (e.g. groups)", false),
];

/// Settings › Identity Providers.
pub(super) async fn idps(
    State(app): Shared,
    Extension(console): Con,
    Path(tenant): Path<String>,
    Query(raw): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let ctx = match signed_in(&app, &console, &tenant, &headers, &here(&tenant, "/idps")) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    if let Err(r) = admin_only(&ctx) {
        return r.into_response();
    }
    let done = raw.contains_key("done");
    idp_page(&app, &ctx, StatusCode::OK, done, None, None, None)
}

/// What "test a token" found: the pasted text and the explanation or the refusal.
struct Tested {
    input: String,
    idp: String,
    outcome: Result<crate::app::Explanation, String>,
}

fn idp_page(
    app: &App,
    ctx: &Ctx,
    status: StatusCode,
    done: bool,
    form: Option<&Form>,
    error: Option<(&str, String)>,
    tested: Option<Tested>,
) -> Response {
    let providers = match app.identity_providers(&ctx.tenant, &ctx.caller) {
        Ok(p) => p,
        Err(e) => return Refusal::from(e).into_response(),
    };
    let err = |f: &str| {
        error
            .as_ref()
            .filter(|(n, _)| *n == f)
            .map(|(_, w)| w.as_str())
    };
    let algorithms: Vec<String> = match form {
        Some(f) => f.all("algorithms"),
        None => vec!["RS256".into(), "ES256".into()],
    };
    page(
        status,
        Some(ctx),
        "Identity providers",
        html! {
            @if done { p.notice role="status" { "The identity provider is saved." } }
            p.muted { "Identity providers validate externally issued JWTs (issuer, keys, audiences) for API access; which identity a token resolves to is set on virtual accounts, teams and users." }
            table {
                thead { tr { th scope="col" { "Name" } th scope="col" { "Issuer" } th scope="col" { "Keys" } th scope="col" { "Audiences" } th scope="col" { "Algorithms" } th scope="col" { "Claim paths" } } }
                tbody {
                    @for p in &providers {
                        tr {
                            td { (p.name) }
                            td { (p.issuer) }
                            td { (p.jwks_uri.as_deref().or(p.discovery_url.as_deref()).unwrap_or("")) }
                            td { (p.audiences.join(", ")) }
                            td { (p.algorithms.join(", ")) }
                            td {
                                @if let Some(c) = &p.user_claim { "user: " code { (c) } " " }
                                @if let Some(c) = &p.va_name_claim { "va: " code { (c) } " " }
                                @if let Some(c) = &p.team_claim { "team: " code { (c) } }
                            }
                        }
                    }
                }
            }
            @if providers.is_empty() { p.muted { "No identity provider yet." } }
            h2 id="add-idp" { "Add an identity provider" }
            form method="post" action={ "/console/" (seg(&ctx.tenant)) "/idps" } aria-labelledby="add-idp" {
                input type="hidden" name="csrf" value=(ctx.csrf);
                @for (name, label, required) in IDP_FIELDS {
                    label for={ "idp-" (name) } { (label) }
                    input id={ "idp-" (name) } name=(name) required[required]
                        value=(form.and_then(|f| f.get(name)).unwrap_or(if name == "leeway_seconds" { "60" } else { "" }))
                        aria-describedby=[err(name).map(|_| format!("idp-{name}-error"))];
                    (field_error(&format!("idp-{name}"), err(name)))
                }
                fieldset aria-describedby=[err("algorithms").map(|_| "idp-algorithms-error")] {
                    legend { "Algorithms" }
                    @for alg in ALLOWED_ALGORITHMS {
                        label.check { input type="checkbox" name="algorithms" value=(alg) checked[algorithms.iter().any(|a| a == alg)]; (alg) }
                    }
                }
                (field_error("idp-algorithms", err("algorithms")))
                (field_error("idp-form", err("form")))
                button type="submit" { "Add identity provider" }
            }
            h2 id="test-token" { "Test a token" }
            p.muted { "Paste a JWT or its claims as JSON: the active policy explains who it would resolve to, step by step. The signature is not checked and nothing is recorded." }
            form method="post" action={ "/console/" (seg(&ctx.tenant)) "/idps/test" } aria-labelledby="test-token" {
                input type="hidden" name="csrf" value=(ctx.csrf);
                label for="test-input" { "JWT or claims (JSON)" }
                textarea id="test-input" name="token" required
                    aria-describedby=[tested.as_ref().filter(|t| t.outcome.is_err()).map(|_| "test-input-error")] {
                    (tested.as_ref().map(|t| t.input.as_str()).unwrap_or(""))
                }
                (field_error("test-input", tested.as_ref().and_then(|t| t.outcome.as_ref().err()).map(String::as_str)))
                label for="test-idp" { "Identity provider (default: the one whose issuer is the token's iss)" }
                select id="test-idp" name="idp" {
                    option value="" { "By issuer" }
                    @for p in &providers { option value=(p.name) selected[tested.as_ref().is_some_and(|t| t.idp == p.name)] { (p.name) } }
                }
                button type="submit" { "Explain" }
            }
            @if let Some(Tested { outcome: Ok(explanation), .. }) = &tested {
                (explanation_view(explanation))
            }
        },
    )
}

fn explanation_view(e: &crate::app::Explanation) -> Markup {
    let result = match (&e.identity, &e.refusal, &e.policy_error) {
        (Some(identity), _, _) => format!(
            "resolves to {}",
            serde_json::to_string(identity).unwrap_or_default()
        ),
        (_, Some(refusal), _) => format!(
            "refused by the {}: {} ({})",
            refusal.by, refusal.message, refusal.reason
        ),
        (_, _, Some(failure)) => format!("the policy failed: {}", failure.message),
        _ => "no decision".to_owned(),
    };
    html! {
        section aria-labelledby="explained" id="explanation" {
            h3 id="explained" { "Result" }
            p id="explain-result" { strong { (result) } }
            p { "Identity provider: " (e.idp) " (chosen by " (e.idp_chosen_by) "); policy "
                (e.policy.name) " " (e.policy_version.map(|v| format!("v{v}")).unwrap_or_else(|| "built-in".into())) }
            @if !e.trace.is_empty() {
                h3 { "Trace" }
                ol { @for step in &e.trace { li { (step) } } }
            }
            @if let Some(role) = &e.role {
                h3 { "Role" }
                pre { (serde_json::to_string_pretty(&role.decision).unwrap_or_default()) }
            }
            details {
                summary { "Everything (JSON)" }
                pre { (serde_json::to_string_pretty(e).unwrap_or_default()) }
            }
        }
    }
}

/// Reads the identity-provider form into the API's input.
fn idp_input(form: &Form) -> Result<IdpInput, (&'static str, String)> {
    let leeway = match form.text("leeway_seconds") {
        None => 60,
        Some(v) => v.parse::<u32>().map_err(|_| {
            (
                "leeway_seconds",
                format!("leeway {v:?} is invalid: use a whole number of seconds"),
            )
        })?,
    };
    Ok(IdpInput {
        name: form.text("name").unwrap_or_default(),
        issuer: form.text("issuer").unwrap_or_default(),
        jwks_uri: form.text("jwks_uri"),
        discovery_url: form.text("discovery_url"),
        audiences: form
            .text("audiences")
            .map(|a| {
                a.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        algorithms: form.all("algorithms"),
        leeway_seconds: leeway,
        user_claim: form.text("user_claim"),
        va_name_claim: form.text("va_name_claim"),
        team_claim: form.text("team_claim"),
    })
}

/// Adds an identity provider; each refusal is shown next to the field it is about.
pub(super) async fn add_idp(
    State(app): Shared,
    Extension(console): Con,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ctx = match signed_in(&app, &console, &tenant, &headers, &here(&tenant, "/idps")) {
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
    let input = match idp_input(&form) {
        Ok(i) => i,
        Err((field, why)) => {
            return idp_page(
                &app,
                &ctx,
                StatusCode::BAD_REQUEST,
                false,
                Some(&form),
                Some((field, why)),
                None,
            )
        }
    };
    let worker = app.clone();
    let (t, caller) = (ctx.tenant.clone(), ctx.caller.clone());
    match blocking(move || worker.put_identity_provider(&t, input, true, &caller)).await {
        Ok(_) => redirect(&format!("/console/{}/idps?done=1", seg(&ctx.tenant))),
        Err(e) => {
            let message = words(&e);
            let mut names: Vec<&str> = IDP_FIELDS.iter().map(|f| f.0).collect();
            names.push("algorithms");
            // "issuer" appears in many messages about keys; prefer the more specific names.
            names.sort_by_key(|n| *n == "issuer" || *n == "name");
            let field = field_of(&message, &form, &names, "form");
            idp_page(
                &app,
                &ctx,
                e.status(),
                false,
                Some(&form),
                Some((field, message)),
                None,
            )
        }
    }
}

/// The claims of a pasted JWT (its payload, not verified) or JSON object.
fn claims_of(text: &str) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let text = text.trim();
    let json = if text.starts_with('{') {
        text.to_owned()
    } else {
        use base64::Engine;
        let payload = text
            .split('.')
            .nth(1)
            .ok_or("this is neither JSON claims nor a JWT (header.payload.signature)")?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .map_err(|e| format!("the JWT's payload is not base64url: {e}"))?;
        String::from_utf8(bytes).map_err(|_| "the JWT's payload is not UTF-8".to_owned())?
    };
    match serde_json::from_str(&json) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err("the claims must be a JSON object".into()),
        Err(e) => Err(format!("the claims are not valid JSON: {e}")),
    }
}

/// "Test a token": `policy explain` on the pasted claims or JWT.
pub(super) async fn test_token(
    State(app): Shared,
    Extension(console): Con,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ctx = match signed_in(&app, &console, &tenant, &headers, &here(&tenant, "/idps")) {
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
    let input = form.get("token").unwrap_or_default().to_owned();
    let idp = form.text("idp");
    let outcome = match claims_of(&input) {
        Err(why) => Err(why),
        Ok(claims) => {
            let worker = app.clone();
            let t = ctx.tenant.clone();
            let request = ExplainRequest {
                claims,
                idp: idp.clone(),
            };
            blocking(move || worker.explain(&t, &request))
                .await
                .map_err(|e: AppError| words(&e))
        }
    };
    let status = if outcome.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    let tested = Tested {
        input,
        idp: idp.unwrap_or_default(),
        outcome,
    };
    idp_page(&app, &ctx, status, false, None, None, Some(tested))
}
