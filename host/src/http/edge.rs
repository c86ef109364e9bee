//! The edge routes (SPEC §4, §11): `POST /v1/{tenant}/resolve` answers JSON,
//! `/v1/{tenant}/forward-auth` (any method) answers in headers for nginx `auth_request`,
//! Traefik ForwardAuth and Envoy `ext_authz`. The tenant comes from the path, never from
//! the token. Both answer 200 (allowed), 401 (no valid token) or 403 (a genuine token whose
//! subject may not pass), with the same reason codes.

use super::Shared;
use crate::app::App;
use crate::edge::{Deny, DenyKind, Evaluation, Identity};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use axum::{Json, Router};
use serde::Serialize;
use std::sync::Arc;

/// The edge routes, at the root.
pub(super) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/{tenant}/resolve", post(resolve))
        .route("/v1/{tenant}/forward-auth", any(forward_auth))
        .route("/v1/{tenant}/forward-auth/{*path}", any(forward_auth_below))
}

async fn evaluate(app: &App, tenant: &str, headers: &HeaderMap) -> Evaluation {
    let values: Vec<&[u8]> = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    app.resolve_token(tenant, &values).await
}

/// The JSON answer of `/resolve` (and the body of a `forward-auth` refusal).
#[derive(Serialize)]
struct Answer<'a> {
    decision: &'static str,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    identity: Option<&'a Identity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
}

/// A refusal: `reason` is a stable code (docs/edge.md lists them), `message` says what to do.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct EdgeDeny {
    /// Always `deny`.
    decision: String,
    reason: String,
    message: String,
}

/// An allow: who the token is.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct EdgeAllow {
    /// Always `allow`.
    decision: String,
    #[serde(flatten)]
    identity: Identity,
}

/// Who the bearer token of this request is, for the tenant in the path.
#[utoipa::path(
    post,
    path = "/v1/{tenant}/resolve",
    tag = "edge",
    params(("tenant" = String, Path, description = "The tenant; never taken from the token")),
    responses(
        (status = 200, description = "Allowed: a user with teams and role, or a virtual account", body = EdgeAllow),
        (status = 401, description = "No usable token (`WWW-Authenticate: Bearer ...`): missing, malformed, unverifiable, expired, revoked, unknown tenant", body = EdgeDeny),
        (status = 403, description = "A genuine token whose subject may not pass: deactivated, not provisioned, disabled, refused or failed policy", body = EdgeDeny),
    ),
    security(("bearer" = [])),
)]
async fn resolve(State(app): Shared, Path(tenant): Path<String>, headers: HeaderMap) -> Response {
    let evaluation = evaluate(&app, &tenant, &headers).await;
    match &evaluation.result {
        Ok(identity) => Json(Answer {
            decision: "allow",
            identity: Some(identity),
            reason: None,
            message: None,
        })
        .into_response(),
        Err(deny) => {
            let body = Json(Answer {
                decision: "deny",
                identity: None,
                reason: Some(&deny.reason),
                message: Some(&deny.message),
            });
            let mut response = body.into_response();
            deny_status(&mut response, deny, None);
            response
        }
    }
}

/// The same evaluation for proxies (nginx `auth_request`, Traefik ForwardAuth, Envoy
/// `ext_authz`), answered in `X-Gatehouse-*` headers. Any method is accepted (proxies
/// forward the original one); documented once, as GET.
#[utoipa::path(
    get,
    path = "/v1/{tenant}/forward-auth",
    tag = "edge",
    params(("tenant" = String, Path, description = "The tenant; never taken from the token")),
    responses(
        (status = 200, description = "Allowed; identity in `X-Gatehouse-Id`, `-Kind`, `-Email` or `-Name`, `-Teams`, `-Team-Ids`, `-Role`, `-Idp`, `-Token-Kind`, `-Expires-At`, `-Tenant` (prefix configurable)"),
        (status = 401, description = "No usable token; `WWW-Authenticate: Bearer ...` and `X-Gatehouse-Deny-Reason`", body = EdgeDeny),
        (status = 403, description = "The subject may not pass; `X-Gatehouse-Deny-Reason`", body = EdgeDeny),
    ),
    security(("bearer" = [])),
)]
async fn forward_auth(
    State(app): Shared,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    forward_auth_answer(&app, tenant, &headers).await
}

/// `forward-auth` with the original request's path appended, as Envoy's `ext_authz`
/// `path_prefix` sends it; the path plays no part in the decision.
#[utoipa::path(
    get,
    path = "/v1/{tenant}/forward-auth/{path}",
    tag = "edge",
    params(
        ("tenant" = String, Path, description = "The tenant; never taken from the token"),
        ("path" = String, Path, description = "The original request's path (ignored)"),
    ),
    responses(
        (status = 200, description = "Allowed; the same headers as `/v1/{tenant}/forward-auth`"),
        (status = 401, description = "No usable token", body = EdgeDeny),
        (status = 403, description = "The subject may not pass", body = EdgeDeny),
    ),
    security(("bearer" = [])),
)]
async fn forward_auth_below(
    State(app): Shared,
    Path((tenant, _path)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    forward_auth_answer(&app, tenant, &headers).await
}

/// The session cookie a browser login set, as a bearer value, when the request carries no
/// `Authorization` header (forward-auth only: a browser reaching a proxied app sends the
/// cookie, not a header). Only a session token (`ghs_…`) is taken from a cookie.
fn session_cookie(headers: &HeaderMap) -> Option<String> {
    if headers.contains_key(header::AUTHORIZATION) {
        return None;
    }
    super::sso::cookie(headers, super::sso::SESSION_COOKIE)
        .filter(|value| value.starts_with(crate::app::SESSION_PREFIX))
        .map(|value| format!("Bearer {value}"))
}

async fn forward_auth_answer(app: &App, tenant: String, headers: &HeaderMap) -> Response {
    let evaluation = match session_cookie(headers) {
        Some(bearer) => app.resolve_token(&tenant, &[bearer.as_bytes()]).await,
        None => evaluate(app, &tenant, headers).await,
    };
    let settings = app.edge.settings();
    let prefix = settings.header_prefix.as_str();
    match &evaluation.result {
        Ok(identity) => {
            let mut response = StatusCode::OK.into_response();
            let out = response.headers_mut();
            let mut put = |name: &str, value: &str| {
                if let (Ok(name), Ok(value)) = (
                    HeaderName::try_from(format!("{prefix}{name}")),
                    HeaderValue::from_str(value),
                ) {
                    out.insert(name, value);
                }
            };
            put("Tenant", &tenant);
            put("Kind", identity.kind);
            put("Id", &identity.id);
            if let Some(email) = &identity.email {
                put("Email", email);
            }
            if let Some(name) = &identity.name {
                put("Name", name);
            }
            put("Teams", &identity.teams.join(","));
            put("Team-Ids", &identity.team_ids.join(","));
            put(
                "Role",
                match identity.tenant_role {
                    gatehouse_rules::Role::Admin => "admin",
                    gatehouse_rules::Role::Member => "member",
                },
            );
            if let Some(idp) = &identity.idp {
                put("Idp", idp);
            }
            put("Token-Kind", identity.token);
            if let Some(at) = identity.expires_at {
                put("Expires-At", &at.to_string());
            }
            if settings.strip_authorization {
                out.insert(
                    HeaderName::from_static("x-envoy-auth-headers-to-remove"),
                    HeaderValue::from_static("authorization"),
                );
            }
            response
        }
        Err(deny) => {
            let mut response = Json(Answer {
                decision: "deny",
                identity: None,
                reason: Some(&deny.reason),
                message: Some(&deny.message),
            })
            .into_response();
            deny_status(&mut response, deny, Some(prefix));
            response
        }
    }
}

/// 401 with a `WWW-Authenticate: Bearer` challenge (RFC 6750 §3), or 403.
fn deny_status(response: &mut Response, deny: &Deny, prefix: Option<&str>) {
    match deny.kind {
        DenyKind::Unauthenticated => {
            *response.status_mut() = StatusCode::UNAUTHORIZED;
            let challenge = if deny.reason == "missing_token" {
                // No credentials at all: no error code (RFC 6750 §3.1).
                "Bearer".to_owned()
            } else {
                format!(
                    "Bearer error=\"invalid_token\", error_description=\"{}\"",
                    deny.reason
                )
            };
            if let Ok(value) = HeaderValue::from_str(&challenge) {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, value);
            }
        }
        DenyKind::Forbidden => *response.status_mut() = StatusCode::FORBIDDEN,
    }
    if let Some(prefix) = prefix {
        if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(format!("{prefix}Deny-Reason")),
            HeaderValue::from_str(&deny.reason),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
}
