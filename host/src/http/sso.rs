//! SSO login routes (SPEC §3): `/v1/{tenant}/sso/{ssoId}/login` redirects to the identity
//! provider, `/callback` completes the code flow, `/token-login` takes an ID token from a
//! trusted front end. A browser gets a session cookie and a redirect, or a small HTML page
//! when refused; an API client (`Accept: application/json`) gets JSON or a problem body.
//! Nothing here logs a code, a token or a secret.

use super::{parse_json, Problem, Shared};
use crate::app::{App, AppError, SsoLogin};
use crate::identity::User;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The cookie a browser login sets (HttpOnly, SameSite=Lax; Secure behind https).
pub(super) const SESSION_COOKIE: &str = "gatehouse_session";

/// The SSO login routes, at the root.
pub(super) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/{tenant}/sso/{sso_id}/login", get(login))
        .route("/v1/{tenant}/sso/{sso_id}/callback", get(callback))
        .route("/v1/{tenant}/sso/{sso_id}/token-login", post(token_login))
        .route("/v1/{tenant}/logout", post(logout))
        .layer(axum::middleware::from_fn(super::off_the_workers))
}

/// What a successful login answers to an API client.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct LoginAnswer {
    /// A Gatehouse session token (`ghs_…`): send it as `Authorization: Bearer`.
    session_token: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    expires_at: time::OffsetDateTime,
    /// `created` (just in time), `activated` (first login of an invited user) or `allowed`.
    outcome: &'static str,
    user: User,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct LoginQuery {
    /// Where to go after the login: a path on this site (default `/`).
    return_to: Option<String>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    /// Set by the identity provider when it did not log the person in.
    error: Option<String>,
    /// The issuer that answered (RFC 9207); when present it must be the configuration's.
    iss: Option<String>,
}

/// The direct form's body.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct TokenLogin {
    /// An ID token from the SSO configuration's issuer, for its client id.
    id_token: String,
    /// The nonce the front end sent in its authorization request, if any.
    #[serde(default)]
    nonce: Option<String>,
}

fn accepts(headers: &HeaderMap, kind: &str) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains(kind))
}

/// A browser (asks for HTML, not JSON) gets pages, cookies and redirects.
pub(super) fn is_browser(headers: &HeaderMap) -> bool {
    accepts(headers, "text/html") && !accepts(headers, "application/json")
}

/// This service's origin as the request reached it (used when `public_url` is not set).
fn request_origin(headers: &HeaderMap) -> Result<String, AppError> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        })
        .ok_or_else(|| AppError::BadRequest("the request has no usable Host header".into()))?;
    Ok(format!("http://{host}"))
}

/// An error as a page for a browser, else as a problem body.
fn refusal(error: AppError, browser: bool) -> Response {
    let page = match &error {
        AppError::LoginRefused { reason, message } => Some((reason.clone(), message.clone())),
        AppError::LoginInvalid { reason, message } => Some(((*reason).to_owned(), message.clone())),
        AppError::IdpUnavailable(message) => Some(("idp_unavailable".to_owned(), message.clone())),
        AppError::NotFound(_) | AppError::BadRequest(_) => Some(("".to_owned(), error.to_string())),
        _ => None,
    };
    match page {
        Some((reason, message)) if browser => {
            let status = error.into_response().status();
            let body = format!(
                "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Login not completed</title></head>\
                 <body><h1>Login not completed</h1><p>{}</p>{}</body></html>",
                escape(&message),
                if reason.is_empty() {
                    String::new()
                } else {
                    format!("<p><small>Reason: <code>{}</code></small></p>", escape(&reason))
                }
            );
            (status, Html(body)).into_response()
        }
        _ => error.into_response(),
    }
}

pub(super) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// Answers a completed login: JSON for an API client; for a browser the session cookie
/// and a 303 to `return_to`.
pub(super) fn logged_in(app: &App, login: SsoLogin, browser: bool) -> Response {
    if !browser {
        return Json(LoginAnswer {
            session_token: login.session.token,
            expires_at: login.session.expires_at,
            outcome: login.outcome,
            user: login.user,
        })
        .into_response();
    }
    let max_age = (login.session.expires_at - time::OffsetDateTime::now_utc())
        .whole_seconds()
        .max(0);
    let mut response = StatusCode::SEE_OTHER.into_response();
    set_cookie(
        app,
        &mut response,
        SESSION_COOKIE,
        &login.session.token,
        "/",
        max_age,
    );
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&login.return_to) {
        headers.insert(header::LOCATION, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Adds a `Set-Cookie` to `response`: `HttpOnly`, `SameSite=Lax`, and `Secure` when
/// Gatehouse is served over https (its public URL says so); `max_age` 0 clears the cookie.
fn set_cookie(
    app: &App,
    response: &mut Response,
    name: &str,
    value: &str,
    path: &str,
    max_age: i64,
) {
    let secure = app
        .public_url()
        .is_some_and(|url| url.starts_with("https://"));
    let cookie = format!(
        "{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Lax{}",
        if secure { "; Secure" } else { "" }
    );
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

/// The value of the cookie `name` in a request, if it carries one.
pub(super) fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value)
}

/// Counts a completed or refused login by its outcome or reason code (never who or what).
fn count(result: &Result<SsoLogin, AppError>) {
    let (result, reason): (&'static str, String) = match result {
        Ok(login) => ("allow", login.outcome.to_owned()),
        Err(AppError::LoginRefused { reason, .. }) => ("refuse", reason.clone()),
        Err(AppError::LoginInvalid { reason, .. }) => ("invalid", (*reason).to_owned()),
        Err(AppError::IdpUnavailable(_)) => ("invalid", "idp_unavailable".to_owned()),
        Err(AppError::TooManyRequests { reason, .. }) => ("refuse", (*reason).to_owned()),
        Err(_) => ("error", "other".to_owned()),
    };
    metrics::counter!("gatehouse_sso_logins_total", "result" => result, "reason" => reason)
        .increment(1);
}

/// Starts an SSO login: redirects to the identity provider with PKCE (S256), `state` and
/// `nonce`; the pending login is kept server-side for `sso.pending_login_ttl_secs` (10 minutes), usable
/// once; a tenant holds at most `sso.max_pending_logins` of them.
#[utoipa::path(
    get,
    path = "/v1/{tenant}/sso/{sso_id}/login",
    tag = "login",
    params(
        ("tenant" = String, Path, description = "Tenant slug"),
        ("sso_id" = String, Path, description = "The SSO configuration"),
        LoginQuery,
    ),
    responses(
        (status = 302, description = "To the identity provider's authorization endpoint"),
        (status = 400, description = "`return_to` is not a path on this site", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such SSO login (unknown tenant or SSO configuration alike)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many logins of this tenant in progress (`too_many_pending_logins`)", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The identity provider cannot be reached (`idp_unavailable`)", body = Problem, content_type = "application/problem+json"),
    ),
)]
async fn login(
    State(app): Shared,
    Path((tenant, sso_id)): Path<(String, String)>,
    Query(query): Query<LoginQuery>,
    headers: HeaderMap,
) -> Response {
    let browser = is_browser(&headers);
    let started = match request_origin(&headers) {
        Ok(origin) => {
            app.sso_begin(&tenant, &sso_id, query.return_to.as_deref(), &origin)
                .await
        }
        Err(e) => Err(e),
    };
    match started {
        Ok(start) => {
            let mut response = StatusCode::FOUND.into_response();
            if let Ok(value) = HeaderValue::from_str(&start.authorization_url) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            set_cookie(
                &app,
                &mut response,
                &start.binding_cookie,
                &start.browser_binding,
                &start.callback_path,
                start.ttl_secs,
            );
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(e) => refusal(e, browser),
    }
}

/// Completes an SSO login (the identity provider's redirect): exchanges the code,
/// verifies the ID token, applies the tenant policy's login decision.
#[utoipa::path(
    get,
    path = "/v1/{tenant}/sso/{sso_id}/callback",
    tag = "login",
    params(
        ("tenant" = String, Path, description = "Tenant slug"),
        ("sso_id" = String, Path, description = "The SSO configuration"),
        CallbackQuery,
    ),
    responses(
        (status = 200, description = "Logged in (`Accept: application/json`)", body = LoginAnswer),
        (status = 303, description = "Logged in (browser): `Set-Cookie: gatehouse_session=…` and on to `return_to`"),
        (status = 401, description = "Not a valid login: `bad_state`, `code_rejected`, `nonce`, `audience`, `expired`, …", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Refused by the tenant's rules: `not_provisioned`, `deactivated`, …", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such SSO login", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The identity provider cannot be reached (`idp_unavailable`)", body = Problem, content_type = "application/problem+json"),
    ),
)]
async fn callback(
    State(app): Shared,
    Path((tenant, sso_id)): Path<(String, String)>,
    Query(query): Query<CallbackQuery>,
    headers: HeaderMap,
) -> Response {
    let browser = is_browser(&headers);
    if query.error.is_some() {
        return refusal(
            AppError::LoginInvalid {
                reason: "idp_refused",
                message: "the identity provider did not log you in; try again or ask your admin"
                    .into(),
            },
            browser,
        );
    }
    let state = query.state.as_deref().unwrap_or("");
    let binding_cookie = crate::app::login_cookie_name(state);
    let result = app
        .sso_callback(
            &tenant,
            &sso_id,
            query.code.as_deref().unwrap_or(""),
            state,
            query.iss.as_deref(),
            cookie(&headers, &binding_cookie),
        )
        .await;
    count(&result);
    let mut response = match result {
        Ok(login) => logged_in(&app, login, browser),
        Err(e) => refusal(e, browser),
    };
    // The binding is used up either way (the pending login is).
    if cookie(&headers, &binding_cookie).is_some() {
        if let Some(path) = app.sso_callback_path(&tenant, &sso_id) {
            set_cookie(&app, &mut response, &binding_cookie, "", &path, 0);
        }
    }
    response
}

/// Logs in with an ID token a trusted front end obtained from the SSO configuration's
/// identity provider; the same checks and decision as the code flow.
#[utoipa::path(
    post,
    path = "/v1/{tenant}/sso/{sso_id}/token-login",
    tag = "login",
    params(
        ("tenant" = String, Path, description = "Tenant slug"),
        ("sso_id" = String, Path, description = "The SSO configuration"),
    ),
    request_body = TokenLogin,
    responses(
        (status = 200, description = "Logged in", body = LoginAnswer),
        (status = 400, description = "The body is not valid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "The ID token is not valid: `expired`, `audience`, `nonce`, `bad_signature`, …", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Refused by the tenant's rules: `not_provisioned`, `deactivated`, …", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such SSO login", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The identity provider's keys cannot be fetched (`idp_unavailable`)", body = Problem, content_type = "application/problem+json"),
    ),
)]
async fn token_login(
    State(app): Shared,
    Path((tenant, sso_id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let request: TokenLogin = match parse_json(&body) {
        Ok(request) => request,
        Err(e) => return e.into_response(),
    };
    let result = app
        .sso_token_login(
            &tenant,
            &sso_id,
            &request.id_token,
            request.nonce.as_deref(),
        )
        .await;
    count(&result);
    match result {
        Ok(login) => logged_in(&app, login, false),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct LogoutQuery {
    /// Where a browser goes next: a path on this site (default: the tenant's login page).
    return_to: Option<String>,
}

/// Logs a session out: the session token in `Authorization: Bearer`, or the browser's
/// session cookie (then the post must not come from another site). From then on neither
/// the edge nor the admin API accepts that session; the user's other sessions stay. A
/// browser gets its cookie cleared and a 303 to `return_to`; an API client 204. A token
/// that is no live session changes nothing and gets the same answer.
#[utoipa::path(
    post,
    path = "/v1/{tenant}/logout",
    tag = "login",
    params(("tenant" = String, Path, description = "Tenant slug"), LogoutQuery),
    responses(
        (status = 204, description = "Logged out (or nothing to log out)"),
        (status = 303, description = "A browser: logged out, cookie cleared, on to `return_to`"),
        (status = 400, description = "`return_to` is not a path on this site", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A cookie-authenticated post from another site", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant", body = Problem, content_type = "application/problem+json"),
    ),
)]
async fn logout(
    State(app): Shared,
    Path(tenant): Path<String>,
    Query(query): Query<LogoutQuery>,
    headers: HeaderMap,
) -> Response {
    let browser = is_browser(&headers);
    // Any Authorization header is the credential; only without one is the cookie read.
    let bearer = super::bearer(&headers);
    let from_cookie = !headers.contains_key(header::AUTHORIZATION);
    let result = (|| {
        let return_to = crate::app::check_return_to(
            query
                .return_to
                .as_deref()
                .unwrap_or(&format!("/v1/{tenant}/login")),
        )?;
        let token = if from_cookie {
            super::password::cross_site(&headers)?;
            cookie(&headers, SESSION_COOKIE)
        } else {
            Some(bearer.ok_or_else(|| {
                AppError::BadRequest(
                    "the Authorization header must be `Bearer <session token>`".into(),
                )
            })?)
        };
        if let Some(token) = token {
            app.logout_session(&tenant, token)?;
        } else {
            app.tenant(&tenant)?;
        }
        Ok::<_, AppError>(return_to)
    })();
    let return_to = match result {
        Ok(return_to) => return_to,
        Err(e) => return refusal(e, browser),
    };
    let mut response = if browser {
        let mut response = StatusCode::SEE_OTHER.into_response();
        if let Ok(value) = HeaderValue::from_str(&return_to) {
            response.headers_mut().insert(header::LOCATION, value);
        }
        response
    } else {
        StatusCode::NO_CONTENT.into_response()
    };
    if from_cookie {
        set_cookie(&app, &mut response, SESSION_COOKIE, "", "/", 0);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
