//! The admin console at `/console` (docs/decisions.md 65–69): server-rendered HTML (maud),
//! no script at all, every page an ordinary link or form. Each page calls the same `App`
//! operations the admin API calls, with the same [`Caller`], so every rule (who may do
//! what, what a change refuses) is the API's own.
//!
//! Sign-in: a tenant admin or member through the tenant's login page (the
//! `gatehouse_session` cookie it sets); the operator with the operator token on a separate
//! form, which sets an opaque console cookie (`SameSite=Strict`, `HttpOnly`, path
//! `/console`) naming an in-memory sign-in; the token itself is never put in a cookie or a
//! page. Every state-changing form carries a token derived from the caller's credential,
//! and a post from another site (`Sec-Fetch-Site: cross-site`, or an `Origin` that is not
//! this service) is refused before anything else is read.

mod accounts;
mod directory;
mod migration;
mod policies;
mod settings;
mod users;

use super::sso::{cookie, SESSION_COOKIE};
use super::Shared;
use crate::app::{App, AppError, Caller};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Multipart, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use maud::{html, Markup, DOCTYPE};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The operator's console cookie.
const OPERATOR_COOKIE: &str = "gatehouse_console";
/// How long an operator sign-in lasts.
const OPERATOR_TTL: Duration = Duration::from_secs(8 * 3600);
/// At most this many operator sign-ins are kept (the oldest go first).
const MAX_OPERATOR_SESSIONS: usize = 256;
/// Largest accepted form body (uploads have their own limit).
const MAX_FORM: usize = 64 * 1024;

/// The console's own state: the key its form tokens are derived with and the operator's
/// sign-ins. Both live in memory: a restart signs the operator out and asks forms to be
/// opened again, nothing else.
pub(super) struct Console {
    key: [u8; 32],
    operators: Mutex<HashMap<String, Instant>>,
}

impl Console {
    fn new() -> Console {
        Console {
            key: rand::random(),
            operators: Mutex::new(HashMap::new()),
        }
    }

    fn sign_in_operator(&self) -> String {
        let id = hex::encode(rand::random::<[u8; 32]>());
        let mut map = self.operators.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        map.retain(|_, until| *until > now);
        while map.len() >= MAX_OPERATOR_SESSIONS {
            let oldest = map.iter().min_by_key(|(_, t)| **t).map(|(k, _)| k.clone());
            match oldest {
                Some(k) => map.remove(&k),
                None => break,
            };
        }
        map.insert(id.clone(), now + OPERATOR_TTL);
        id
    }

    fn operator_signed_in(&self, id: &str) -> bool {
        let map = self.operators.lock().unwrap_or_else(|p| p.into_inner());
        map.get(id).is_some_and(|until| *until > Instant::now())
    }

    fn sign_out_operator(&self, id: &str) {
        let mut map = self.operators.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(id);
    }

    /// The form token of a credential: a keyed hash, so it proves the page came from
    /// this server to this signed-in browser, and tells nothing about the credential.
    fn form_token(&self, credential: &str) -> String {
        let mut hash = Sha256::new();
        hash.update(self.key);
        hash.update(b"console-form\0");
        hash.update(credential.as_bytes());
        hex::encode(&hash.finalize()[..20])
    }
}

type Con = Extension<Arc<Console>>;

/// The console routes, at the root.
pub(super) fn routes(max_upload: usize) -> Router<Arc<App>> {
    let uploads = Router::new()
        .route(
            "/console/{tenant}/policies",
            get(policies::overview).post(policies::upload),
        )
        .route(
            "/console/{tenant}/policies/dry-run",
            post(policies::dry_run),
        )
        .route("/console/{tenant}/policies/shadow", post(policies::shadow))
        .route(
            "/console/{tenant}/migration",
            get(migration::page_get).post(migration::plan_or_apply),
        )
        .layer(DefaultBodyLimit::max(max_upload));
    Router::new()
        .merge(uploads)
        .route("/console/{tenant}/policies/{action}", post(policies::act))
        .route("/console", get(home))
        .route("/console/", get(home))
        .route("/console/console.css", get(stylesheet))
        .route("/console/go", get(go))
        .route("/console/operator", post(operator_sign_in))
        .route("/console/sign-out", post(sign_out))
        .route("/console/{tenant}", get(users::overview))
        .route("/console/{tenant}/tokens", post(users::create_own_token))
        .route(
            "/console/{tenant}/users",
            get(users::list).post(users::invite),
        )
        .route("/console/{tenant}/users/{user}", get(users::detail))
        .route("/console/{tenant}/users/{user}/{action}", post(users::act))
        .route(
            "/console/{tenant}/provisioning",
            get(settings::provisioning).post(settings::switch_mode),
        )
        .route(
            "/console/{tenant}/sso",
            get(settings::sso).post(settings::add_sso),
        )
        .route(
            "/console/{tenant}/sso/{sso}/scim-token",
            post(settings::scim_token),
        )
        .route(
            "/console/{tenant}/idps",
            get(settings::idps).post(settings::add_idp),
        )
        .route("/console/{tenant}/idps/test", post(settings::test_token))
        .route(
            "/console/{tenant}/teams",
            get(directory::teams).post(directory::create_team),
        )
        .route(
            "/console/{tenant}/teams/{team}/{action}",
            post(directory::team_action),
        )
        .route("/console/{tenant}/audit", get(directory::audit))
        .route(
            "/console/{tenant}/virtual-accounts",
            get(accounts::list).post(accounts::create),
        )
        .route(
            "/console/{tenant}/virtual-accounts/{va}",
            get(accounts::detail),
        )
        .route(
            "/console/{tenant}/virtual-accounts/{va}/tokens",
            post(accounts::token),
        )
        .route(
            "/console/{tenant}/virtual-accounts/{va}/tokens/{token}/revoke",
            post(accounts::revoke),
        )
        .route(
            "/console/{tenant}/resources",
            get(accounts::resources).post(accounts::create_resource),
        )
        .route(
            "/console/{tenant}/resources/{resource}/collaborators",
            post(accounts::set_collaborators),
        )
        .route("/console/{tenant}/outbox", get(directory::outbox))
        .layer(Extension(Arc::new(Console::new())))
}

// ------------------------------------------------------------------ who is asking

/// A signed-in caller of a tenant's pages.
pub(super) struct Ctx {
    pub tenant: String,
    pub caller: Caller,
    /// The token every form of this page carries.
    pub csrf: String,
}

impl Ctx {
    fn is_admin(&self) -> bool {
        self.caller.require_admin().is_ok()
    }
    fn user_id(&self) -> Option<&str> {
        match &self.caller {
            Caller::Admin { user } | Caller::Member { user } => Some(user),
            Caller::Operator => None,
        }
    }
}

/// Why a page is not shown.
pub(super) enum Refusal {
    /// Not signed in (or the session ended): on to the tenant's login page.
    SignIn(String),
    /// A page with the reason and its status.
    Page(StatusCode, String),
}

impl From<AppError> for Refusal {
    fn from(error: AppError) -> Refusal {
        let status = error.status();
        if status.is_server_error() {
            tracing::error!(error = %error, "console page failed");
            return Refusal::Page(
                status,
                format!(
                    "something went wrong on the server (request {})",
                    crate::logging::request_id()
                ),
            );
        }
        Refusal::Page(status, error.to_string())
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::SignIn(to) => redirect(&to),
            Refusal::Page(status, why) => page(
                status,
                None,
                "Not available",
                html! { p.error role="alert" { (why) } p { a href="/console" { "Back to the console" } } },
            ),
        }
    }
}

/// An error in words, for next to the field it is about. A 5xx says no more than its
/// request id; the detail goes to the log.
pub(super) fn words(error: &AppError) -> String {
    if error.status().is_server_error() {
        tracing::error!(error = %error, "console operation failed");
        return format!(
            "something went wrong on the server (request {})",
            crate::logging::request_id()
        );
    }
    match error {
        AppError::CasesFailed { failed, total } => {
            let names: Vec<String> = failed.iter().map(|c| c.name.clone()).collect();
            format!(
                "{} of {total} policy cases failed: {}",
                failed.len(),
                names.join(", ")
            )
        }
        other => other.to_string(),
    }
}

/// The caller of `tenant`'s pages: the operator's console sign-in, else the browser's
/// session for this tenant. A session of another tenant reads as "no such tenant".
pub(super) fn signed_in(
    app: &App,
    console: &Console,
    tenant: &str,
    headers: &HeaderMap,
    path: &str,
) -> Result<Ctx, Refusal> {
    if let Some(id) = cookie(headers, OPERATOR_COOKIE).filter(|id| console.operator_signed_in(id)) {
        app.tenant(tenant)?;
        return Ok(Ctx {
            tenant: tenant.to_owned(),
            caller: Caller::Operator,
            csrf: console.form_token(&format!("operator:{id}")),
        });
    }
    let to_login = || {
        let back: String = url::form_urlencoded::byte_serialize(path.as_bytes()).collect();
        let slug: String = url::form_urlencoded::byte_serialize(tenant.as_bytes()).collect();
        Refusal::SignIn(format!("/v1/{slug}/login?return_to={back}"))
    };
    let Some(session) = cookie(headers, SESSION_COOKIE) else {
        app.tenant(tenant)?;
        return Err(to_login());
    };
    if !session.starts_with(crate::app::SESSION_PREFIX) {
        return Err(to_login());
    }
    match app.authenticate(Some(tenant), Some(session)) {
        Ok(caller) => Ok(Ctx {
            tenant: app.tenant(tenant)?.slug,
            caller,
            csrf: console.form_token(&format!("session:{session}")),
        }),
        Err(AppError::Unauthorized) => Err(to_login()),
        Err(e) => Err(e.into()),
    }
}

/// Refuses anyone but a tenant admin or the operator, before a page reads anything.
pub(super) fn admin_only(ctx: &Ctx) -> Result<(), Refusal> {
    ctx.caller.require_admin().map_err(Refusal::from)
}

/// A form post's fields, after the checks every state-changing form passes: not sent
/// from another site, the `Origin` (when sent) this service, and the page's form token.
pub(super) fn checked_form(
    app: &App,
    ctx: &Ctx,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Form, Refusal> {
    same_site(app, headers)?;
    let form = Form::parse(body)?;
    check_token(ctx, &form)?;
    Ok(form)
}

/// A multipart form post (file uploads): its fields, after the same checks as
/// [`checked_form`]. Files come back as bytes under their field name.
pub(super) async fn checked_upload(
    app: &App,
    ctx: &Ctx,
    headers: &HeaderMap,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<(Form, HashMap<String, Vec<u8>>), Refusal> {
    same_site(app, headers)?;
    let mut multipart = multipart.map_err(|e| {
        Refusal::Page(
            StatusCode::BAD_REQUEST,
            format!("the upload is not a valid form: {e}"),
        )
    })?;
    let bad = |e: axum::extract::multipart::MultipartError| {
        Refusal::Page(
            e.status(),
            format!("the upload could not be read: {}", e.body_text()),
        )
    };
    let (mut fields, mut files) = (Vec::new(), HashMap::new());
    while let Some(field) = multipart.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or_default().to_owned();
        if field.file_name().is_some() {
            let bytes = field.bytes().await.map_err(bad)?;
            files.insert(name, bytes.to_vec());
        } else {
            let text = field.text().await.map_err(bad)?;
            fields.push((name, text));
        }
    }
    let form = Form(fields);
    check_token(ctx, &form)?;
    Ok((form, files))
}

fn check_token(ctx: &Ctx, form: &Form) -> Result<(), Refusal> {
    let sent = form.get("csrf").unwrap_or_default();
    use subtle::ConstantTimeEq;
    if sent.len() != ctx.csrf.len() || !bool::from(sent.as_bytes().ct_eq(ctx.csrf.as_bytes())) {
        return Err(Refusal::Page(
            StatusCode::FORBIDDEN,
            "this form is out of date or was not sent from the console: open the page again and retry".into(),
        ));
    }
    Ok(())
}

/// Refuses a post from another site (a browser's `Sec-Fetch-Site`, or an `Origin`
/// header naming another origin than this service's).
fn same_site(app: &App, headers: &HeaderMap) -> Result<(), Refusal> {
    let refused = || {
        Refusal::Page(
            StatusCode::FORBIDDEN,
            "this form was sent from another site; open the console on this site and try again"
                .into(),
        )
    };
    super::password::cross_site(headers).map_err(|_| refused())?;
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().map_err(|_| refused())?;
    let ok = match app.public_url() {
        Some(public) => url::Url::parse(public)
            .map(|u| u.origin().ascii_serialization() == origin)
            .unwrap_or(false),
        None => headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .is_some_and(|host| {
                origin == format!("http://{host}") || origin == format!("https://{host}")
            }),
    };
    if ok {
        Ok(())
    } else {
        Err(refused())
    }
}

/// The fields of a form post, in order (a field may repeat: checkboxes).
pub(super) struct Form(Vec<(String, String)>);

impl Form {
    fn parse(body: &[u8]) -> Result<Form, Refusal> {
        if body.len() > MAX_FORM {
            return Err(Refusal::Page(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the form is larger than {MAX_FORM} bytes"),
            ));
        }
        serde_urlencoded::from_bytes(body).map(Form).map_err(|e| {
            Refusal::Page(
                StatusCode::BAD_REQUEST,
                format!("the form is not valid: {e}"),
            )
        })
    }

    /// The field's value, if sent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The field's value trimmed, `None` when absent or blank.
    pub fn text(&self, name: &str) -> Option<String> {
        self.get(name)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    }

    /// Every value of a repeated field.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

// ------------------------------------------------------------------ pages

/// Sends `markup` as a console page: no caching, no referrer, no framing, and a CSP that
/// allows this origin's stylesheet and forms, and no script at all.
pub(super) fn send(status: StatusCode, markup: Markup) -> Response {
    let mut response = (status, markup.into_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure_headers(headers);
    response
}

fn secure_headers(headers: &mut HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        // Not `no-referrer`: with it a browser sends `Origin: null` on form posts, and
        // the origin check needs the real one. No console URL carries a secret.
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
}

/// A 303 to `to` (a path on this site).
pub(super) fn redirect(to: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(to) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    secure_headers(response.headers_mut());
    response
}

/// A whole page: the tenant's navigation when signed in to one, then `body`.
pub(super) fn page(status: StatusCode, ctx: Option<&Ctx>, title: &str, body: Markup) -> Response {
    send(status, layout(ctx, title, body))
}

fn layout(ctx: Option<&Ctx>, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Gatehouse console" }
                link rel="stylesheet" href="/console/console.css";
            }
            body {
                header {
                    a.brand href="/console" { "Gatehouse" }
                    @if let Some(ctx) = ctx {
                        span.tenant { (ctx.tenant) }
                        nav aria-label="Console" {
                            @if ctx.is_admin() {
                                a href={ "/console/" (ctx.tenant) "/users" } { "Users" }
                                a href={ "/console/" (ctx.tenant) "/teams" } { "Teams" }
                                a href={ "/console/" (ctx.tenant) "/virtual-accounts" } { "Virtual accounts" }
                                a href={ "/console/" (ctx.tenant) "/resources" } { "Resources" }
                                a href={ "/console/" (ctx.tenant) "/provisioning" } { "Provisioning" }
                                a href={ "/console/" (ctx.tenant) "/sso" } { "SSO" }
                                a href={ "/console/" (ctx.tenant) "/idps" } { "Identity providers" }
                                a href={ "/console/" (ctx.tenant) "/policies" } { "Policies" }
                                a href={ "/console/" (ctx.tenant) "/migration" } { "Migration" }
                                a href={ "/console/" (ctx.tenant) "/audit" } { "Audit log" }
                                @if ctx.caller == Caller::Operator {
                                    a href={ "/console/" (ctx.tenant) "/outbox" } { "Outbox" }
                                }
                            } @else {
                                a href={ "/console/" (ctx.tenant) } { "My profile" }
                            }
                        }
                        form.inline method="post" action="/console/sign-out" {
                            input type="hidden" name="csrf" value=(ctx.csrf);
                            input type="hidden" name="tenant" value=(ctx.tenant);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// An error paragraph for a field, linked from it by `aria-describedby`.
pub(super) fn field_error(id: &str, error: Option<&str>) -> Markup {
    html! {
        @if let Some(error) = error {
            p.error id={ (id) "-error" } role="alert" { (error) }
        }
    }
}

/// The words of a serde-named enum value (`invite_only`, `admin`, …).
pub(super) fn word<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

/// A path segment, percent-encoded.
pub(super) fn seg(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

pub(super) fn date(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

const STYLE: &str = include_str!("console.css");

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        STYLE,
    )
        .into_response()
}

// ------------------------------------------------------------------ sign-in

/// The console's front door: the tenant list for a signed-in operator; otherwise the
/// two ways in (a tenant's login page, the operator form).
async fn home(State(app): Shared, Extension(console): Con, headers: HeaderMap) -> Response {
    let operator = cookie(&headers, OPERATOR_COOKIE).filter(|id| console.operator_signed_in(id));
    if let Some(id) = operator {
        let csrf = console.form_token(&format!("operator:{id}"));
        let tenants = match app.tenants() {
            Ok(t) => t,
            Err(e) => return Refusal::from(e).into_response(),
        };
        return page(
            StatusCode::OK,
            None,
            "Tenants",
            html! {
                p { "Signed in as the operator. Open a tenant to manage it." }
                table {
                    thead { tr { th scope="col" { "Tenant" } th scope="col" { "Provisioning" } th scope="col" { "Created" } } }
                    tbody {
                        @for t in &tenants {
                            tr {
                                td { a href={ "/console/" (seg(&t.slug)) "/users" } { (t.slug) } }
                                td { (t.mode) }
                                td { (t.created_at) }
                            }
                        }
                    }
                }
                form method="post" action="/console/sign-out" {
                    input type="hidden" name="csrf" value=(csrf);
                    button type="submit" { "Sign out" }
                }
            },
        );
    }
    sign_in_page(StatusCode::OK, None)
}

fn sign_in_page(status: StatusCode, error: Option<&str>) -> Response {
    page(
        status,
        None,
        "Sign in to the console",
        html! {
            section aria-labelledby="tenant-heading" {
                h2 id="tenant-heading" { "Tenant admins and members" }
                form method="get" action="/console/go" {
                    label for="tenant" { "Tenant" }
                    input id="tenant" name="tenant" required autocomplete="organization";
                    button type="submit" { "Continue to the tenant's login" }
                }
            }
            section aria-labelledby="operator-heading" {
                h2 id="operator-heading" { "Operator" }
                form method="post" action="/console/operator" {
                    label for="operator-token" { "Operator token" }
                    input id="operator-token" name="token" type="password" required autocomplete="off"
                        aria-describedby=[error.map(|_| "operator-token-error")];
                    (field_error("operator-token", error))
                    button type="submit" { "Sign in as operator" }
                }
            }
        },
    )
}

#[derive(Deserialize)]
struct GoQuery {
    tenant: Option<String>,
}

/// The tenant form's target: on to that tenant's console (and so its login page).
async fn go(Query(query): Query<GoQuery>) -> Response {
    match query
        .tenant
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        Some(tenant) => redirect(&format!("/console/{}", seg(tenant))),
        None => sign_in_page(StatusCode::BAD_REQUEST, None),
    }
}

/// The operator signs in with the operator token; the browser gets an opaque cookie.
async fn operator_sign_in(
    State(app): Shared,
    Extension(console): Con,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(refusal) = same_site(&app, &headers) {
        return refusal.into_response();
    }
    let form = match Form::parse(&body) {
        Ok(f) => f,
        Err(r) => return r.into_response(),
    };
    let token = form.get("token").unwrap_or_default().trim();
    if app.authorize_operator(Some(token)).is_err() {
        return sign_in_page(
            StatusCode::UNAUTHORIZED,
            Some("that is not the operator token"),
        );
    }
    let id = console.sign_in_operator();
    let mut response = redirect("/console");
    set_cookie(
        &app,
        &mut response,
        OPERATOR_COOKIE,
        &id,
        OPERATOR_TTL.as_secs() as i64,
    );
    response
}

fn set_cookie(app: &App, response: &mut Response, name: &str, value: &str, max_age: i64) {
    let secure = app
        .public_url()
        .is_some_and(|url| url.starts_with("https://"));
    let path = if name == OPERATOR_COOKIE {
        "/console"
    } else {
        "/"
    };
    let text = format!(
        "{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    );
    if let Ok(value) = HeaderValue::from_str(&text) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

/// Signs out: the operator's console sign-in ends; a tenant session is logged out (as
/// `/v1/{tenant}/logout` does) and its cookie cleared.
async fn sign_out(
    State(app): Shared,
    Extension(console): Con,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = same_site(&app, &headers) {
        return r.into_response();
    }
    let form = match Form::parse(&body) {
        Ok(f) => f,
        Err(r) => return r.into_response(),
    };
    let sent = form.get("csrf").unwrap_or_default();
    let mut response = redirect("/console");
    if let Some(id) = cookie(&headers, OPERATOR_COOKIE) {
        if console.form_token(&format!("operator:{id}")) == sent {
            console.sign_out_operator(id);
            set_cookie(&app, &mut response, OPERATOR_COOKIE, "", 0);
        }
    }
    if let (Some(session), Some(tenant)) = (cookie(&headers, SESSION_COOKIE), form.get("tenant")) {
        if console.form_token(&format!("session:{session}")) == sent {
            let _ = app.logout_session(tenant, session);
            set_cookie(&app, &mut response, SESSION_COOKIE, "", 0);
        }
    }
    response
}

/// The path a request was for, for the login page's `return_to`.
pub(super) fn here(tenant: &str, rest: &str) -> String {
    format!("/console/{}{rest}", seg(tenant))
}

/// Runs a blocking `App` operation (argon2, policy calls) off the async threads.
pub(super) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, AppError> + Send + 'static,
) -> Result<T, AppError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(AppError::Internal(format!("console task failed: {e}"))))
}
