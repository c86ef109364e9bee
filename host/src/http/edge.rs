//! The edge routes (SPEC §4, §11): `POST /v1/{tenant}/resolve` answers JSON,
//! `/v1/{tenant}/forward-auth` (any method) answers in headers for nginx `auth_request`,
//! Traefik ForwardAuth and Envoy `ext_authz`. The tenant comes from the path, never from
//! the token. Both answer 200 (allowed), 401 (no valid token) or 403 (a genuine token whose
//! subject may not pass), with the same reason codes.

use super::Shared;
use crate::app::App;
use crate::edge::{Deny, DenyKind, Evaluation, Identity};
use axum::extract::{Path, Request, State};
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
    // Zero, one or "more than one" is all the evaluator tells apart: no list needed.
    let mut values = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .map(|v| v.as_bytes());
    match (values.next(), values.next()) {
        (None, _) => app.resolve_token(tenant, &[]).await,
        (Some(one), None) => app.resolve_token(tenant, &[one]).await,
        (Some(one), Some(two)) => app.resolve_token(tenant, &[one, two]).await,
    }
}

/// The JSON answer of a refusal (`/resolve` and `forward-auth`); an allow is
/// [`allow_answer`].
#[derive(Serialize)]
struct Answer<'a> {
    decision: &'static str,
    reason: &'a str,
    message: &'a str,
}

/// What the allow answers of one identity are, encoded once (kept in its
/// [`crate::edge::Encoded`]): a cached result answers many requests with the same bytes.
#[derive(Default)]
struct Encodings {
    /// `/resolve`'s body; empty if the identity could not be encoded.
    json: std::sync::OnceLock<bytes::Bytes>,
    /// `forward-auth`'s headers, built once into the map an answer clones (no header is
    /// hashed per answer).
    forward: std::sync::OnceLock<ForwardAnswer>,
}

/// `forward-auth`'s allow headers, with the tenant (as the request's path named it) they
/// were built for; the prefix and `strip_authorization` are the edge's fixed settings.
struct ForwardAnswer {
    tenant: String,
    headers: HeaderMap,
}

fn encodings(identity: &Identity) -> Option<&Encodings> {
    identity.encoded.get_or_init(Encodings::default)
}

/// `{"decision":"allow", <the identity's fields>}`: the identity serialized as it is, with
/// the decision spliced in front (serde's `flatten` would buffer every field first).
fn allow_json(identity: &Identity) -> bytes::Bytes {
    const DECISION: &[u8] = br#"{"decision":"allow","#;
    let mut body = Vec::with_capacity(256);
    body.extend_from_slice(DECISION);
    match serde_json::to_writer(&mut body, identity) {
        // An identity always has fields: its object is `{"kind":…}`, never `{}`.
        Ok(()) if body.len() > DECISION.len() + 2 => {
            body.remove(DECISION.len()); // the identity's own `{`
            body.into()
        }
        _ => bytes::Bytes::new(),
    }
}

/// `/resolve`'s allow answer.
fn allow_answer(identity: &Identity) -> Response {
    let body = match encodings(identity) {
        Some(encoded) => encoded.json.get_or_init(|| allow_json(identity)).clone(),
        None => allow_json(identity),
    };
    if body.is_empty() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
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
async fn resolve(State(app): Shared, Path(tenant): Path<String>, request: Request) -> Response {
    // The request by value: the `HeaderMap` extractor would copy every header.
    let evaluation = evaluate(&app, &tenant, request.headers()).await;
    match &evaluation.result {
        Ok(identity) => allow_answer(identity),
        Err(deny) => {
            let body = Json(Answer {
                decision: "deny",
                reason: &deny.reason,
                message: &deny.message,
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
    request: Request,
) -> Response {
    forward_auth_answer(&app, tenant, request.headers()).await
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
async fn forward_auth_below(State(app): Shared, request: Request) -> Response {
    // Not the `Path` extractor: it decodes the original path too, and refuses one whose
    // escapes are not UTF-8 (`caf%E9.txt`, Latin-1), which a URI may well carry.
    let tenant = tenant_segment(request.uri().path());
    forward_auth_answer(&app, tenant, request.headers()).await
}

/// The tenant in `/v1/{tenant}/…`, percent-decoded as the `Path` extractor would (a
/// segment that does not decode to text names no tenant: empty).
fn tenant_segment(path: &str) -> String {
    let segment = path
        .strip_prefix("/v1/")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_default();
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map(std::borrow::Cow::into_owned)
        .unwrap_or_default()
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
            let strip = settings.strip_authorization;
            let built = |identity| forward_answer(prefix, &tenant, strip, identity);
            let fresh;
            let answer = match encodings(identity)
                .map(|encoded| encoded.forward.get_or_init(|| built(identity)))
            {
                Some(cached) if cached.tenant == tenant => cached,
                _ => {
                    fresh = built(identity);
                    &fresh
                }
            };
            let mut response = StatusCode::OK.into_response();
            *response.headers_mut() = answer.headers.clone();
            response
        }
        Err(deny) => {
            let mut response = Json(Answer {
                decision: "deny",
                reason: &deny.reason,
                message: &deny.message,
            })
            .into_response();
            deny_status(&mut response, deny, Some(prefix));
            response
        }
    }
}

/// `forward-auth`'s allow headers for `identity`, asked for `tenant`.
fn forward_answer(
    prefix: &str,
    tenant: &str,
    strip_authorization: bool,
    identity: &Identity,
) -> ForwardAnswer {
    let names = forward_names(prefix);
    let mut headers = HeaderMap::with_capacity(12);
    let mut put = |name: &Option<HeaderName>, value: &str| {
        if let (Some(name), Ok(value)) = (name, HeaderValue::from_str(value)) {
            headers.insert(name.clone(), value);
        }
    };
    put(&names.tenant, tenant);
    put(&names.kind, identity.kind);
    put(&names.id, &identity.id);
    if let Some(email) = &identity.email {
        put(&names.email, email);
    }
    if let Some(name) = &identity.name {
        put(&names.name, name);
    }
    put(&names.teams, &identity.teams.join(","));
    put(&names.team_ids, &identity.team_ids.join(","));
    put(
        &names.role,
        match identity.tenant_role {
            gatehouse_rules::Role::Admin => "admin",
            gatehouse_rules::Role::Member => "member",
        },
    );
    if let Some(idp) = &identity.idp {
        put(&names.idp, idp);
    }
    put(&names.token_kind, identity.token);
    if let (Some(name), Some(at)) = (&names.expires_at, identity.expires_at) {
        headers.insert(name.clone(), HeaderValue::from(at));
    }
    if strip_authorization {
        headers.insert(
            HeaderName::from_static("x-envoy-auth-headers-to-remove"),
            HeaderValue::from_static("authorization"),
        );
    }
    ForwardAnswer {
        tenant: tenant.to_owned(),
        headers,
    }
}

/// The `forward-auth` answer's header names under one prefix (`None`: the prefix makes no
/// valid header name, and the header is left out).
struct ForwardNames {
    prefix: String,
    tenant: Option<HeaderName>,
    kind: Option<HeaderName>,
    id: Option<HeaderName>,
    email: Option<HeaderName>,
    name: Option<HeaderName>,
    teams: Option<HeaderName>,
    team_ids: Option<HeaderName>,
    role: Option<HeaderName>,
    idp: Option<HeaderName>,
    token_kind: Option<HeaderName>,
    expires_at: Option<HeaderName>,
}

/// The names for `prefix`, built when an answer is first encoded. They are static (leaked,
/// one set per distinct prefix: a process serves one, several only in tests), so cloning
/// one into an answer touches no reference count.
fn forward_names(prefix: &str) -> &'static ForwardNames {
    static ALL: std::sync::Mutex<Vec<&'static ForwardNames>> = std::sync::Mutex::new(Vec::new());
    let mut all = ALL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match all.iter().find(|names| names.prefix == prefix) {
        Some(names) => names,
        None => {
            let name = |suffix: &str| {
                let name = HeaderName::try_from(format!("{prefix}{suffix}")).ok()?;
                let name: &'static str = Box::leak(name.as_str().into());
                Some(HeaderName::from_static(name))
            };
            let names: &'static ForwardNames = Box::leak(Box::new(ForwardNames {
                prefix: prefix.to_owned(),
                tenant: name("Tenant"),
                kind: name("Kind"),
                id: name("Id"),
                email: name("Email"),
                name: name("Name"),
                teams: name("Teams"),
                team_ids: name("Team-Ids"),
                role: name("Role"),
                idp: name("Idp"),
                token_kind: name("Token-Kind"),
                expires_at: name("Expires-At"),
            }));
            all.push(names);
            names
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
