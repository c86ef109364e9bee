//! Password routes (SPEC §3): the set-password page of a one-time link
//! (`/v1/{tenant}/password?token=…`, GET shows the form, POST sets the password),
//! `/v1/{tenant}/password-login` (form or JSON) and the tenant's login page
//! `/v1/{tenant}/login` ("Login with …" buttons and the email + password form).
//!
//! Pages are plain server-rendered HTML with a little CSS and no script; every value put
//! into a page is escaped. They are sent with `no-store`, `no-referrer` (a link's token
//! must not leak through `Referer`) and a content security policy that allows no script,
//! no framing and forms posting only to this origin. Argon2 work runs on a blocking thread.

use super::sso::{escape, is_browser, logged_in, LoginAnswer};
use super::{Problem, Shared};
use crate::app::{check_return_to, App, AppError, LinkView};
use crate::identity::LinkPurpose;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Largest accepted form or JSON body.
const MAX_BODY: usize = 16 * 1024;

/// The password routes, at the root.
pub(super) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route(
            "/v1/{tenant}/password",
            get(password_page).post(set_password),
        )
        .route("/v1/{tenant}/password-login", post(password_login))
        .route("/v1/{tenant}/login", get(login_page))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct LinkQuery {
    /// The secret from the mailed link.
    token: Option<String>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct LoginPageQuery {
    /// Where to go after the login: a path on this site (default `/`).
    return_to: Option<String>,
}

/// A new password from a set-password or reset link (form fields or JSON).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SetPassword {
    /// The secret from the mailed link.
    token: String,
    password: String,
    /// The password again (the form asks twice); JSON clients may leave it out.
    #[serde(default)]
    confirm: Option<String>,
}

/// The password was set.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct PasswordSet {
    user_id: String,
    email: String,
}

/// Email and password (form fields or JSON).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PasswordLogin {
    email: String,
    password: String,
    /// Where a browser goes after the login: a path on this site (default `/`).
    #[serde(default)]
    return_to: Option<String>,
}

/// A page: status, title and the already-escaped body.
fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title><style>{STYLE}</style></head>\
         <body><main><h1>{title}</h1>{body}</main></body></html>",
        title = escape(title),
    );
    let mut response = (status, Html(html)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;background:#f4f5f7;margin:0}\
main{max-width:24rem;margin:4rem auto;background:#fff;padding:2rem;border-radius:8px;\
box-shadow:0 1px 4px rgba(0,0,0,.15)}h1{font-size:1.3rem;margin-top:0}\
label{display:block;margin:.8rem 0 .2rem}input{width:100%;box-sizing:border-box;padding:.5rem}\
button,a.sso{display:block;width:100%;box-sizing:border-box;margin-top:1rem;padding:.6rem;\
text-align:center;border:0;border-radius:4px;background:#2d5bd3;color:#fff;font-size:1rem;\
text-decoration:none;cursor:pointer}a.sso{background:#333}\
.error{color:#a40000;background:#fdecec;padding:.5rem;border-radius:4px}\
.or{text-align:center;color:#777;margin:1.2rem 0 0}";

/// An error as a page (browser) or a problem body. A 5xx page says no more than a problem.
fn error_page(error: AppError, browser: bool, title: &str) -> Response {
    let status = error.status();
    if !browser || status.is_server_error() {
        return error.into_response();
    }
    let retry = error.retry_after();
    let mut response = page(
        status,
        title,
        &format!("<p class=\"error\">{}</p>", escape(&error.to_string())),
    );
    if let Some(seconds) = retry {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// The form of a link: new password twice, the token hidden.
fn password_form(app: &App, view: &LinkView, token: &str, error: Option<&str>) -> String {
    let verb = match view.purpose {
        LinkPurpose::SetPassword => "Set",
        LinkPurpose::ResetPassword => "Reset",
    };
    format!(
        "<p>{verb} the password of <strong>{email}</strong> for <strong>{tenant}</strong>.</p>{error}\
         <form method=\"post\" action=\"/v1/{tenant_path}/password\">\
         <input type=\"hidden\" name=\"token\" value=\"{token}\">\
         <label for=\"password\">New password (at least {min} characters)</label>\
         <input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"new-password\" required minlength=\"{min}\">\
         <label for=\"confirm\">The same password again</label>\
         <input id=\"confirm\" name=\"confirm\" type=\"password\" autocomplete=\"new-password\" required minlength=\"{min}\">\
         <button type=\"submit\">{verb} password</button></form>",
        email = escape(&view.email),
        tenant = escape(&view.tenant),
        tenant_path = escape(&view.tenant),
        token = escape(token),
        min = app.password_min_length(),
        error = error
            .map(|e| format!("<p class=\"error\">{}</p>", escape(e)))
            .unwrap_or_default(),
    )
}

/// The page of a set-password or reset link: the form, or why the link cannot be used.
#[utoipa::path(
    get,
    path = "/v1/{tenant}/password",
    tag = "login",
    params(("tenant" = String, Path, description = "Tenant slug"), LinkQuery),
    responses(
        (status = 200, description = "The form: new password twice", content_type = "text/html"),
        (status = 410, description = "The link is unknown, used, replaced or expired (one answer for all)", content_type = "text/html"),
    ),
)]
async fn password_page(
    State(app): Shared,
    Path(tenant): Path<String>,
    Query(query): Query<LinkQuery>,
) -> Response {
    let token = query.token.unwrap_or_default();
    match app.password_link(&tenant, &token) {
        Ok(view) => page(
            StatusCode::OK,
            "Choose a password",
            &password_form(&app, &view, &token, None),
        ),
        Err(e) => error_page(e, true, "This link cannot be used"),
    }
}

/// Reads a form (`application/x-www-form-urlencoded`) or JSON body.
fn parse_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, AppError> {
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if form {
        serde_urlencoded::from_bytes(body)
            .map_err(|e| AppError::BadRequest(format!("the form is not valid: {e}")))
    } else {
        super::parse_json(body)
    }
}

/// A browser's form post from another site (`Sec-Fetch-Site: cross-site`, sent by current
/// browsers, kept by proxies) is refused: it would log the browser into someone else's
/// account (login CSRF) or set a password from a page the person did not open.
pub(super) fn cross_site(headers: &HeaderMap) -> Result<(), AppError> {
    let site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if site.eq_ignore_ascii_case("cross-site") {
        return Err(AppError::Forbidden(
            "this form was sent from another site; open the page on this site and try again".into(),
        ));
    }
    Ok(())
}

/// The client's address for the per-address limit: the TCP peer, or, when the peer is one
/// of the `trusted` proxies, the right-most `X-Forwarded-For` entry that is not (entries
/// further left are whatever the client wrote, and are never read). Should the first
/// untrusted entry not be an address, the peer is counted. IPv4-mapped IPv6 addresses (a
/// server listening on `[::]`) are compared as IPv4.
fn client_address(
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    trusted: &[ipnet::IpNet],
) -> Option<IpAddr> {
    let peer = peer?.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    // Raw bytes: a header with a non-ASCII byte somewhere to the left is still read from
    // the right; the last header line is the nearest proxy's.
    let lines: Vec<&[u8]> = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    for entry in lines
        .iter()
        .rev()
        .flat_map(|line| line.rsplit(|b| *b == b','))
    {
        let ip = std::str::from_utf8(entry)
            .ok()
            .and_then(|text| text.trim().parse::<IpAddr>().ok())
            .map(|ip| ip.to_canonical());
        match ip {
            Some(ip) if is_trusted(&ip) => continue,
            Some(ip) => return Some(ip),
            None => return Some(peer),
        }
    }
    Some(peer)
}

/// A form post's fields (form-encoded or JSON) and the client's address; a cross-site post
/// is refused before the body is read.
async fn read_form<T: serde::de::DeserializeOwned>(
    request: Request,
    trusted: &[ipnet::IpNet],
) -> Result<(T, Option<IpAddr>), AppError> {
    cross_site(request.headers())?;
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let address = client_address(peer, request.headers(), trusted);
    let headers = request.headers().clone();
    let body = axum::body::to_bytes(request.into_body(), MAX_BODY)
        .await
        .map_err(|_| AppError::BadRequest(format!("the body is larger than {MAX_BODY} bytes")))?;
    Ok((parse_body(&headers, &body)?, address))
}

/// Sets the password of a set-password or reset link's user and uses the link up. The
/// link works once and for 24 hours; a newer link of the same user replaces it.
#[utoipa::path(
    post,
    path = "/v1/{tenant}/password",
    tag = "login",
    params(("tenant" = String, Path, description = "Tenant slug")),
    request_body(content = SetPassword, content_type = "application/x-www-form-urlencoded", description = "Form fields or the same as JSON"),
    responses(
        (status = 200, description = "The password is set (JSON, or a page for a browser)", body = PasswordSet),
        (status = 400, description = "Too short, the two entries differ, or the body is not valid", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A form sent from another site (`Sec-Fetch-Site: cross-site`)", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "The link is unknown, used, replaced or expired (`invalid_link`)", body = Problem, content_type = "application/problem+json"),
    ),
)]
async fn set_password(
    State(app): Shared,
    Path(tenant): Path<String>,
    request: Request,
) -> Response {
    let browser = is_browser(request.headers());
    let input: SetPassword = match read_form(request, app.trusted_proxies()).await {
        Ok((input, _)) => input,
        Err(e) => return error_page(e, browser, "The password was not set"),
    };
    let worker = app.clone();
    let (tenant_for, token) = (tenant.clone(), input.token.clone());
    let result = tokio::task::spawn_blocking(move || {
        let confirm = input.confirm.as_deref().unwrap_or(&input.password);
        worker.set_password(&tenant_for, &token, &input.password, confirm)
    })
    .await
    .unwrap_or_else(|e| {
        Err(AppError::Internal(format!(
            "setting a password failed: {e}"
        )))
    });
    match result {
        Ok(user) if browser => page(
            StatusCode::OK,
            "Your password is set",
            &format!(
                "<p>You can now log in as <strong>{}</strong>.</p><p><a href=\"/v1/{}/login\">Go to the login page</a></p>",
                escape(&user.email),
                escape(&tenant),
            ),
        ),
        Ok(user) => Json(PasswordSet {
            user_id: user.id,
            email: user.email,
        })
        .into_response(),
        // A browser with a bad entry gets the form again, with the reason.
        Err(AppError::BadRequest(why)) if browser => {
            match app.password_link(&tenant, &input.token) {
                Ok(view) => page(
                    StatusCode::BAD_REQUEST,
                    "Choose a password",
                    &password_form(&app, &view, &input.token, Some(&why)),
                ),
                Err(e) => error_page(e, true, "This link cannot be used"),
            }
        }
        Err(e) => error_page(e, browser, "This link cannot be used"),
    }
}

/// The login page's body: the IdP buttons, then the password form.
fn login_body(
    app: &App,
    tenant: &str,
    return_to: &str,
    error: Option<&str>,
) -> Result<String, AppError> {
    let view = app.login_page(tenant)?;
    let encoded: String = url::form_urlencoded::byte_serialize(return_to.as_bytes()).collect();
    let mut body = String::new();
    if let Some(error) = error {
        body.push_str(&format!("<p class=\"error\">{}</p>", escape(error)));
    }
    for (id, issuer) in &view.sso {
        let id_path: String = url::form_urlencoded::byte_serialize(id.as_bytes()).collect();
        body.push_str(&format!(
            "<a class=\"sso\" href=\"/v1/{tenant}/sso/{id_path}/login?return_to={encoded}\" title=\"{issuer}\">Login with {name}</a>",
            tenant = escape(&view.tenant),
            id_path = escape(&id_path),
            encoded = escape(&encoded),
            issuer = escape(issuer),
            name = escape(id),
        ));
    }
    if !view.sso.is_empty() {
        body.push_str("<p class=\"or\">or with your email and password</p>");
    }
    body.push_str(&format!(
        "<form method=\"post\" action=\"/v1/{tenant}/password-login\">\
         <input type=\"hidden\" name=\"return_to\" value=\"{return_to}\">\
         <label for=\"email\">Email</label>\
         <input id=\"email\" name=\"email\" type=\"email\" autocomplete=\"username\" required>\
         <label for=\"password\">Password</label>\
         <input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>\
         <button type=\"submit\">Log in</button></form>",
        tenant = escape(&view.tenant),
        return_to = escape(return_to),
    ));
    Ok(body)
}

/// The tenant's login page: a "Login with …" button per SSO configuration (passing
/// `return_to` on) and the email + password form. No script.
#[utoipa::path(
    get,
    path = "/v1/{tenant}/login",
    tag = "login",
    params(("tenant" = String, Path, description = "Tenant slug"), LoginPageQuery),
    responses(
        (status = 200, description = "The login page", content_type = "text/html"),
        (status = 400, description = "`return_to` is not a path on this site", content_type = "text/html"),
        (status = 404, description = "No such tenant", content_type = "text/html"),
    ),
)]
async fn login_page(
    State(app): Shared,
    Path(tenant): Path<String>,
    Query(query): Query<LoginPageQuery>,
) -> Response {
    let title = "Log in";
    let return_to = match check_return_to(query.return_to.as_deref().unwrap_or("/")) {
        Ok(r) => r,
        Err(e) => return error_page(e, true, title),
    };
    match login_body(&app, &tenant, &return_to, None) {
        Ok(body) => page(StatusCode::OK, &format!("Log in to {}", tenant), &body),
        Err(e) => error_page(e, true, "Not found"),
    }
}

/// Logs in with email and password. An API client gets the session token as JSON; a
/// browser (the login page's form) gets the session cookie and a 303 to `return_to`, or
/// the page again with the reason. Unknown email and wrong password answer the same.
#[utoipa::path(
    post,
    path = "/v1/{tenant}/password-login",
    tag = "login",
    params(("tenant" = String, Path, description = "Tenant slug")),
    request_body(content = PasswordLogin, content_type = "application/json", description = "JSON or the same as form fields"),
    responses(
        (status = 200, description = "Logged in (API client)", body = LoginAnswer),
        (status = 303, description = "Logged in (browser): `Set-Cookie: gatehouse_session=…` and on to `return_to`"),
        (status = 400, description = "The body or `return_to` is not valid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Wrong email or password (`invalid_credentials`, one answer for both)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Refused by the tenant's rules (`deactivated`, …), or a form sent from another site", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many failed attempts for this email or from this address (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
    ),
)]
async fn password_login(
    State(app): Shared,
    Path(tenant): Path<String>,
    request: Request,
) -> Response {
    let browser = is_browser(request.headers());
    let (input, address): (PasswordLogin, _) = match read_form(request, app.trusted_proxies()).await
    {
        Ok(read) => read,
        Err(e) => return error_page(e, browser, "Log in"),
    };
    let return_to = match check_return_to(input.return_to.as_deref().unwrap_or("/")) {
        Ok(r) => r,
        Err(e) => return error_page(e, browser, "Log in"),
    };
    let worker = app.clone();
    let (tenant_for, back) = (tenant.clone(), return_to.clone());
    let result = tokio::task::spawn_blocking(move || {
        worker.password_login(&tenant_for, &input.email, &input.password, address, &back)
    })
    .await
    .unwrap_or_else(|e| Err(AppError::Internal(format!("password login failed: {e}"))));
    match result {
        Ok(login) => logged_in(&app, login, browser),
        Err(e)
            if browser && !e.status().is_server_error() && !matches!(e, AppError::NotFound(_)) =>
        {
            let status = e.status();
            let retry = e.retry_after();
            let message = match &e {
                AppError::LoginRefused { reason, message } => format!("{message} ({reason})"),
                other => other.to_string(),
            };
            let mut response = match login_body(&app, &tenant, &return_to, Some(&message)) {
                Ok(body) => page(status, &format!("Log in to {tenant}"), &body),
                Err(e) => return error_page(e, true, "Log in"),
            };
            if let Some(seconds) = retry {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            response
        }
        Err(e) => error_page(e, browser, "Log in"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(forwarded: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in forwarded {
            headers.append("x-forwarded-for", value.parse().unwrap());
        }
        headers
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn the_client_address_believes_only_trusted_proxies() {
        let trusted: Vec<ipnet::IpNet> = vec![
            "10.0.0.0/8".parse().unwrap(),
            "127.0.0.1/32".parse().unwrap(),
        ];
        // A direct client: its own X-Forwarded-For is ignored.
        assert_eq!(
            client_address(ip("203.0.113.9"), &headers(&["1.2.3.4"]), &trusted),
            ip("203.0.113.9")
        );
        // Through two trusted proxies: the right-most untrusted entry, not what the client
        // wrote further left.
        assert_eq!(
            client_address(
                ip("127.0.0.1"),
                &headers(&["6.6.6.6, 198.51.100.7", "10.1.2.3"]),
                &trusted
            ),
            ip("198.51.100.7")
        );
        // A trusted peer with no header, or with junk where the client should be: the peer.
        assert_eq!(
            client_address(ip("10.9.9.9"), &headers(&[]), &trusted),
            ip("10.9.9.9")
        );
        assert_eq!(
            client_address(ip("10.9.9.9"), &headers(&["1.1.1.1, junk"]), &trusted),
            ip("10.9.9.9")
        );
        // Junk bytes left of the real address do not hide it.
        let mut raw = HeaderMap::new();
        raw.append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"\xff\xfe, 198.51.100.7").unwrap(),
        );
        assert_eq!(
            client_address(ip("10.0.0.1"), &raw, &trusted),
            ip("198.51.100.7")
        );
        // A server on [::] sees an IPv4 proxy as ::ffff:a.b.c.d: still trusted.
        assert_eq!(
            client_address(
                ip("::ffff:10.0.0.1"),
                &headers(&["::ffff:198.51.100.7"]),
                &trusted
            ),
            ip("198.51.100.7")
        );
        // Nothing trusted (the default): always the peer.
        assert_eq!(
            client_address(ip("127.0.0.1"), &headers(&["198.51.100.7"]), &[]),
            ip("127.0.0.1")
        );
    }
}
