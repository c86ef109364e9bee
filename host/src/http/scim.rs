//! The SCIM 2.0 endpoint `/scim/v2/{tenant}/{ssoId}/...` (RFC 7644) and the admins' view of
//! pending SCIM memberships.
//!
//! One handler takes every SCIM request: it authenticates the connection, applies its
//! rate limit, dispatches on method and path, turns every [`ScimError`] into an RFC 7644
//! error body (this module is the one place that happens for SCIM routes), and writes one
//! log line per request (tenant, connection, operation, resource id, status, latency;
//! never the token or a body). Operations run on a blocking thread: each write is a
//! durable batch under the tenant's lock.

use super::{admin, bearer, Shared};
use crate::app::{App, Connection, ListPage, ListQuery};
use crate::scim::filter::{parse_attr_path, parse_filter};
use crate::scim::resource::{self, Projection};
use crate::scim::{ScimError, ERROR_SCHEMA, LIST_SCHEMA};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use futures_util::FutureExt;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

const SCIM_JSON: &str = "application/scim+json";

/// The SCIM routes (outside `/api/v1`).
pub(super) fn routes(max_body: usize) -> Router<Arc<App>> {
    Router::new()
        .route("/scim/v2/{tenant}/{sso}", any(root))
        .route("/scim/v2/{tenant}/{sso}/", any(root))
        .route("/scim/v2/{tenant}/{sso}/{*rest}", any(scim))
        .route("/scim", any(outside))
        .route("/scim/{*rest}", any(outside))
        .layer(DefaultBodyLimit::max(max_body))
}

/// Admin routes under `/api/v1`.
pub(super) fn admin_routes() -> Router<Arc<App>> {
    Router::new().route("/tenants/{tenant}/sso/{sso}/scim/pending", get(pending))
}

async fn pending(
    State(app): Shared,
    headers: HeaderMap,
    Path((tenant, sso)): Path<(String, String)>,
) -> Result<Response, crate::app::AppError> {
    let caller = admin(&app, &tenant, &headers)?;
    Ok(Json(json!({ "pending": app.scim_pending(&tenant, &sso, &caller)? })).into_response())
}

/// Paths under `/scim` that name no connection: a SCIM 404 (no lookup, so nothing is
/// revealed about tenants).
async fn outside() -> Response {
    error_response(
        ScimError::NotFound("SCIM endpoint: use /scim/v2/{tenant}/{ssoId}/".into()),
        "",
    )
}

async fn root(
    state: Shared,
    method: Method,
    Path((tenant, sso)): Path<(String, String)>,
    query: RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    serve(
        state,
        method,
        tenant,
        sso,
        String::new(),
        query,
        headers,
        body,
    )
    .await
}

async fn scim(
    state: Shared,
    method: Method,
    Path((tenant, sso, rest)): Path<(String, String, String)>,
    query: RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    serve(state, method, tenant, sso, rest, query, headers, body).await
}

/// What one request did, for its log line.
struct Outcome {
    operation: &'static str,
    resource: String,
    response: Result<Response, ScimError>,
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    State(app): Shared,
    method: Method,
    tenant: String,
    sso: String,
    rest: String,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let request_id = crate::logging::request_id();
    // HEAD is GET without the body (RFC 9110 §9.3.2), which the server leaves out.
    let method = if method == Method::HEAD {
        Method::GET
    } else {
        method
    };
    let max_body = app.scim.config.max_body_kib as usize * 1024;
    let (log_tenant, log_sso) = (tenant.clone(), sso.clone());
    // A user create on a store on this machine waits for its round in this task, not on
    // a thread of its own (decision 85); every other request runs on a blocking thread.
    // A panic in either is a 500 with its log line.
    let outcome = if method == Method::POST && is_users(&rest) && !app.store.is_shared() {
        let query = query.as_deref();
        AssertUnwindSafe(create_user_queued(
            &app, &tenant, &sso, query, &headers, body, max_body,
        ))
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| stopped(crate::logging::panic_message(&*panic)))
    } else {
        tokio::task::spawn_blocking(move || {
            let (conn, body) = match admit(&app, &tenant, &sso, &headers, body, max_body) {
                Ok(admitted) => admitted,
                Err(why) => return refused(why),
            };
            let request = Request {
                app: &app,
                conn: &conn,
                method: &method,
                query: query.as_deref().unwrap_or_default(),
                headers: &headers,
                body: &body,
            };
            request.dispatch(&rest)
        })
        .await
        .unwrap_or_else(stopped)
    };
    let response = match outcome.response {
        Ok(response) => response,
        Err(e) => error_response(e, &request_id),
    };
    let status = response.status().as_u16();
    tracing::info!(
        tenant = %log_tenant, connection = %log_sso, operation = outcome.operation,
        resource = %outcome.resource, status, latency_us = started.elapsed().as_micros() as u64,
        "scim request"
    );
    metrics::counter!("gatehouse_scim_requests_total", "operation" => outcome.operation, "status" => status.to_string()).increment(1);
    response
}

/// The path segments after the connection, as [`Request::dispatch`] routes them.
fn segments(rest: &str) -> Vec<&str> {
    rest.split('/').filter(|s| !s.is_empty()).collect()
}

/// Whether `rest` is the Users collection.
fn is_users(rest: &str) -> bool {
    matches!(segments(rest)[..], [kind] if kind.eq_ignore_ascii_case("users"))
}

/// The connection a request authenticates as, once it is within the connection's rate
/// and its body was read; otherwise the operation that refused it (for the log) and why.
fn admit(
    app: &App,
    tenant: &str,
    sso: &str,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    max_body: usize,
) -> Result<(Connection, Bytes), (&'static str, ScimError)> {
    let conn = app
        .scim_connect(tenant, sso, bearer(headers))
        .map_err(|e| ("auth", e))?;
    if let Err(wait) = app.scim.admit(&format!("{tenant}/{sso}")) {
        return Err(("rate_limit", ScimError::RateLimited(wait)));
    }
    let body = body.map_err(|rejection| {
        let error = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ScimError::TooLarge(max_body)
        } else {
            ScimError::InvalidSyntax(format!("the request body could not be read: {rejection}"))
        };
        ("read_body", error)
    })?;
    Ok((conn, body))
}

/// What a request whose handler panicked (`why`) did, for its log line.
fn stopped(why: impl std::fmt::Display) -> Outcome {
    Outcome {
        operation: "panic",
        resource: String::new(),
        response: Err(ScimError::Internal(format!(
            "the SCIM handler stopped: {why}"
        ))),
    }
}

/// What a request refused by [`admit`] did, for its log line.
fn refused((operation, error): (&'static str, ScimError)) -> Outcome {
    Outcome {
        operation,
        resource: String::new(),
        response: Err(error),
    }
}

/// `POST Users` waiting for its round in the request's task ([`Request::create_user_queued`]).
async fn create_user_queued(
    app: &Arc<App>,
    tenant: &str,
    sso: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    max_body: usize,
) -> Outcome {
    let (conn, body) = match admit(app, tenant, sso, headers, body, max_body) {
        Ok(admitted) => admitted,
        Err(why) => return refused(why),
    };
    let request = Request {
        app,
        conn: &conn,
        method: &Method::POST,
        query: query.unwrap_or_default(),
        headers,
        body: &body,
    };
    Outcome {
        operation: "users.create",
        resource: String::new(),
        response: request.create_user_queued(app).await,
    }
}

/// A create's answer: 201, or 200 when it created nothing (a retry).
fn created_response(resource: Value, created: bool, projection: &Projection) -> Response {
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    resource_response(status, resource, projection)
}

/// The RFC 7644 §3.12 error body.
fn error_response(e: ScimError, request_id: &str) -> Response {
    let (status, scim_type) = match &e {
        ScimError::Unauthorized => (StatusCode::UNAUTHORIZED, None),
        ScimError::InvalidFilter(_) => (StatusCode::BAD_REQUEST, Some("invalidFilter")),
        ScimError::InvalidPath(_) => (StatusCode::BAD_REQUEST, Some("invalidPath")),
        ScimError::InvalidValue(_) => (StatusCode::BAD_REQUEST, Some("invalidValue")),
        ScimError::InvalidSyntax(_) => (StatusCode::BAD_REQUEST, Some("invalidSyntax")),
        ScimError::NoTarget(_) => (StatusCode::BAD_REQUEST, Some("noTarget")),
        ScimError::Mutability(_) => (StatusCode::BAD_REQUEST, Some("mutability")),
        ScimError::Uniqueness(_) => (StatusCode::CONFLICT, Some("uniqueness")),
        ScimError::Conflict(_) => (StatusCode::CONFLICT, None),
        ScimError::Forbidden(_) => (StatusCode::FORBIDDEN, None),
        ScimError::NotFound(_) => (StatusCode::NOT_FOUND, None),
        ScimError::PreconditionFailed(_) => (StatusCode::PRECONDITION_FAILED, None),
        ScimError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, None),
        ScimError::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, None),
        ScimError::NotImplemented(_) => (StatusCode::NOT_IMPLEMENTED, None),
        ScimError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, None),
        ScimError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, None),
        ScimError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, None),
    };
    let detail = if matches!(e, ScimError::Internal(_)) {
        tracing::error!(request_id, error = %e, "scim internal error");
        format!("internal error; request id {request_id}")
    } else {
        e.to_string()
    };
    let mut body = json!({
        "schemas": [ERROR_SCHEMA],
        "status": status.as_u16().to_string(),
        "detail": detail,
    });
    if let Some(kind) = scim_type {
        body["scimType"] = json!(kind);
    }
    let mut response = scim_json(status, &body);
    let headers = response.headers_mut();
    match e {
        ScimError::Unauthorized => {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        ScimError::RateLimited(wait) => {
            if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
                headers.insert(header::RETRY_AFTER, v);
            }
        }
        ScimError::Unavailable(_) => {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        ScimError::MethodNotAllowed(allowed) => {
            headers.insert(header::ALLOW, HeaderValue::from_static(allowed));
        }
        _ => {}
    }
    response
}

fn scim_json(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(SCIM_JSON));
    response
}

/// A resource answer: body projected, `ETag` from `meta.version`, `Location` on 201.
fn resource_response(status: StatusCode, resource: Value, projection: &Projection) -> Response {
    let version = resource["meta"]["version"].as_str().map(str::to_owned);
    let location = resource["meta"]["location"].as_str().map(str::to_owned);
    let mut response = scim_json(status, &projection.apply(resource));
    let headers = response.headers_mut();
    if let Some(v) = version.and_then(|v| HeaderValue::from_str(&v).ok()) {
        headers.insert(header::ETAG, v);
    }
    if status == StatusCode::CREATED {
        if let Some(l) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
            headers.insert(header::LOCATION, l);
        }
    }
    response
}

struct Request<'a> {
    app: &'a App,
    conn: &'a Connection,
    method: &'a Method,
    query: &'a str,
    headers: &'a HeaderMap,
    body: &'a [u8],
}

impl Request<'_> {
    fn params(&self) -> Result<HashMap<String, String>, ScimError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(self.query)
            .map_err(|e| ScimError::InvalidSyntax(format!("the query string is not valid: {e}")))?;
        Ok(pairs
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect())
    }

    fn json(&self) -> Result<Value, ScimError> {
        if self.body.is_empty() {
            return Err(ScimError::InvalidSyntax(
                "the request needs a JSON body".into(),
            ));
        }
        serde_json::from_slice(self.body)
            .map_err(|e| ScimError::InvalidSyntax(format!("the request body is not JSON: {e}")))
    }

    fn header(&self, name: header::HeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn projection(&self) -> Result<Projection, ScimError> {
        let params = self.params()?;
        Projection::parse(
            params.get("attributes").map(String::as_str),
            params.get("excludedattributes").map(String::as_str),
        )
    }

    fn dispatch(&self, rest: &str) -> Outcome {
        let segments = segments(rest);
        let kind = segments.first().copied().unwrap_or_default();
        let id = segments.get(1).copied();
        let (operation, resource, result): (&'static str, String, Result<Response, ScimError>) =
            match (kind.to_ascii_lowercase().as_str(), id, segments.len()) {
                ("users", None, 1) => match *self.method {
                    Method::GET => ("users.list", String::new(), self.list(false)),
                    Method::POST => ("users.create", String::new(), self.create_user()),
                    _ => ("users", String::new(), Err(not_allowed("GET, HEAD, POST"))),
                },
                ("groups", None, 1) => match *self.method {
                    Method::GET => ("groups.list", String::new(), self.list(true)),
                    Method::POST => ("groups.create", String::new(), self.create_group()),
                    _ => ("groups", String::new(), Err(not_allowed("GET, HEAD, POST"))),
                },
                ("users", Some(".search"), 2) => ("users.search", String::new(), self.search(false)),
                ("groups", Some(".search"), 2) => ("groups.search", String::new(), self.search(true)),
                ("users", Some(id), 2) => {
                    let result = match *self.method {
                        Method::GET => self.get_user(id),
                        Method::PUT => self.write_user(id, false),
                        Method::PATCH => self.write_user(id, true),
                        Method::DELETE => self.delete(id, false),
                        _ => Err(not_allowed("GET, HEAD, PUT, PATCH, DELETE")),
                    };
                    (user_op(self.method), id.to_owned(), result)
                }
                ("groups", Some(id), 2) => {
                    let result = match *self.method {
                        Method::GET => self.get_group(id),
                        Method::PUT => self.write_group(id, false),
                        Method::PATCH => self.write_group(id, true),
                        Method::DELETE => self.delete(id, true),
                        _ => Err(not_allowed("GET, HEAD, PUT, PATCH, DELETE")),
                    };
                    (group_op(self.method), id.to_owned(), result)
                }
                ("serviceproviderconfig", None, 1) => ("discovery", String::new(), self.discovery(kind, None)),
                ("resourcetypes" | "schemas", _, 1 | 2) => ("discovery", String::new(), self.discovery(kind, id)),
                ("me", _, _) => ("me", String::new(), Err(ScimError::NotImplemented("/Me"))),
                ("bulk", _, _) => ("bulk", String::new(), Err(ScimError::NotImplemented("/Bulk"))),
                (".search", None, 1) => ("search", String::new(), Err(ScimError::NotImplemented("searching all resource types (POST /.search)"))),
                _ => (
                    "unknown",
                    String::new(),
                    Err(ScimError::NotFound(format!(
                        "path /{rest}: use Users, Groups, ServiceProviderConfig, ResourceTypes or Schemas"
                    ))),
                ),
            };
        Outcome {
            operation,
            resource,
            response: result,
        }
    }

    fn list_query(
        &self,
        group: bool,
        from: &HashMap<String, Value>,
    ) -> Result<(ListQuery, Projection), ScimError> {
        let text = |key: &str| -> Option<String> {
            from.get(key).and_then(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                Value::Array(items) => Some(
                    items
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(","),
                ),
                _ => None,
            })
        };
        let number = |key: &str| -> Result<Option<i64>, ScimError> {
            text(key)
                .map(|v| {
                    v.trim().parse::<i64>().map_err(|_| {
                        ScimError::InvalidValue(format!("{key} must be an integer, not {v:?}"))
                    })
                })
                .transpose()
        };
        let max = self.app.scim.config.max_results;
        let filter = text("filter")
            .filter(|f| !f.trim().is_empty())
            .map(|f| parse_filter(&f))
            .transpose()?;
        let projection = Projection::parse(
            text("attributes").as_deref(),
            text("excludedattributes").as_deref(),
        )?;
        let sort_by = text("sortby")
            .map(|s| {
                parse_attr_path(s.trim())
                    .map_err(|e| ScimError::InvalidValue(format!("sortBy: {e}")))
            })
            .transpose()?;
        let descending = match text("sortorder").map(|s| s.to_ascii_lowercase()) {
            None => false,
            Some(s) if s == "ascending" => false,
            Some(s) if s == "descending" => true,
            Some(other) => {
                return Err(ScimError::InvalidValue(format!(
                    "sortOrder {other:?} is not ascending or descending"
                )))
            }
        };
        let query = ListQuery {
            filter,
            start_index: number("startindex")?.unwrap_or(1).max(1) as usize,
            count: number("count")?.unwrap_or(100).clamp(0, max as i64) as usize,
            sort_by,
            descending,
            with_members: group && !projection.excludes_members(),
        };
        Ok((query, projection))
    }

    fn list_response(page: ListPage, projection: &Projection) -> Response {
        let resources: Vec<Value> = page
            .resources
            .into_iter()
            .map(|r| projection.apply(r))
            .collect();
        scim_json(
            StatusCode::OK,
            &json!({
                "schemas": [LIST_SCHEMA],
                "totalResults": page.total,
                "startIndex": page.start_index,
                "itemsPerPage": resources.len(),
                "Resources": resources,
            }),
        )
    }

    fn run_list(&self, group: bool, params: HashMap<String, Value>) -> Result<Response, ScimError> {
        let (query, projection) = self.list_query(group, &params)?;
        let page = if group {
            self.app.scim_list_groups(self.conn, &query)?
        } else {
            self.app.scim_list_users(self.conn, &query)?
        };
        Ok(Self::list_response(page, &projection))
    }

    fn list(&self, group: bool) -> Result<Response, ScimError> {
        let params = self
            .params()?
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect();
        self.run_list(group, params)
    }

    fn search(&self, group: bool) -> Result<Response, ScimError> {
        if *self.method != Method::POST {
            return Err(not_allowed("POST"));
        }
        let body = self.json()?;
        let Value::Object(map) = body else {
            return Err(ScimError::InvalidSyntax(
                "a SearchRequest must be a JSON object".into(),
            ));
        };
        let params = map
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        self.run_list(group, params)
    }

    /// `If-None-Match` on a read: 304 when the client has this version.
    fn not_modified(&self, resource: &Value) -> Option<Response> {
        let wanted = self.header(header::IF_NONE_MATCH)?;
        let current = resource["meta"]["version"].as_str()?;
        let bare = |v: &str| {
            v.trim()
                .trim_start_matches("W/")
                .trim_matches('"')
                .to_owned()
        };
        wanted
            .split(',')
            .any(|v| v.trim() == "*" || bare(v) == bare(current))
            .then(|| {
                let mut response = StatusCode::NOT_MODIFIED.into_response();
                if let Ok(v) = HeaderValue::from_str(current) {
                    response.headers_mut().insert(header::ETAG, v);
                }
                response
            })
    }

    fn get_user(&self, id: &str) -> Result<Response, ScimError> {
        let projection = self.projection()?;
        let user = self.app.scim_get_user(self.conn, id)?;
        if let Some(response) = self.not_modified(&user) {
            return Ok(response);
        }
        Ok(resource_response(StatusCode::OK, user, &projection))
    }

    fn create_user(&self) -> Result<Response, ScimError> {
        let projection = self.projection()?;
        let (user, created) = self.app.scim_create_user(self.conn, &self.json()?)?;
        Ok(created_response(user, created, &projection))
    }

    /// [`Request::create_user`] waiting for its round in this task (`app` is this
    /// request's, shared: the create outlives a borrow).
    async fn create_user_queued(&self, app: &Arc<App>) -> Result<Response, ScimError> {
        let projection = self.projection()?;
        let (user, created) = app
            .scim_create_user_queued(self.conn, &self.json()?)
            .await?;
        Ok(created_response(user, created, &projection))
    }

    fn write_user(&self, id: &str, patch: bool) -> Result<Response, ScimError> {
        let projection = self.projection()?;
        let body = self.json()?;
        let if_match = self.header(header::IF_MATCH);
        let user = if patch {
            self.app.scim_patch_user(self.conn, id, &body, if_match)?
        } else {
            self.app.scim_replace_user(self.conn, id, &body, if_match)?
        };
        Ok(resource_response(StatusCode::OK, user, &projection))
    }

    fn get_group(&self, id: &str) -> Result<Response, ScimError> {
        let projection = self.projection()?;
        let group = self
            .app
            .scim_get_group(self.conn, id, !projection.excludes_members())?;
        if let Some(response) = self.not_modified(&group) {
            return Ok(response);
        }
        Ok(resource_response(StatusCode::OK, group, &projection))
    }

    fn create_group(&self) -> Result<Response, ScimError> {
        let projection = self.projection()?;
        let (group, created, report) = self.app.scim_create_group(self.conn, &self.json()?)?;
        Ok(with_report(
            created_response(group, created, &projection),
            &report,
        ))
    }

    fn write_group(&self, id: &str, patch: bool) -> Result<Response, ScimError> {
        let projection = self.projection()?;
        let body = self.json()?;
        let if_match = self.header(header::IF_MATCH);
        let with_members = !projection.excludes_members();
        let (group, report) = if patch {
            self.app
                .scim_patch_group(self.conn, id, &body, if_match, with_members)?
        } else {
            self.app
                .scim_replace_group(self.conn, id, &body, if_match)?
        };
        Ok(with_report(
            resource_response(StatusCode::OK, group, &projection),
            &report,
        ))
    }

    fn delete(&self, id: &str, group: bool) -> Result<Response, ScimError> {
        let if_match = self.header(header::IF_MATCH);
        if group {
            self.app.scim_delete_group(self.conn, id, if_match)?;
        } else {
            self.app.scim_delete_user(self.conn, id, if_match)?;
        }
        Ok(StatusCode::NO_CONTENT.into_response())
    }

    fn discovery(&self, kind: &str, id: Option<&str>) -> Result<Response, ScimError> {
        if *self.method != Method::GET {
            return Err(not_allowed("GET, HEAD"));
        }
        let base = &self.conn.base;
        let config = &self.app.scim.config;
        let all = match kind.to_ascii_lowercase().as_str() {
            "serviceproviderconfig" => {
                let mut response = scim_json(
                    StatusCode::OK,
                    &resource::service_provider_config(base, config.max_results),
                );
                response.headers_mut().insert(
                    crate::scim::MAX_REQUEST_BYTES_HEADER,
                    HeaderValue::from(config.max_body_kib as usize * 1024),
                );
                return Ok(response);
            }
            "resourcetypes" => resource::resource_types(base),
            _ => resource::schemas(base),
        };
        match id {
            Some(id) => all
                .into_iter()
                .find(|r| r["id"].as_str().is_some_and(|i| i.eq_ignore_ascii_case(id)))
                .map(|r| scim_json(StatusCode::OK, &r))
                .ok_or_else(|| ScimError::NotFound(format!("{kind}/{id}"))),
            None => {
                let total = all.len();
                Ok(scim_json(
                    StatusCode::OK,
                    &json!({
                        "schemas": [LIST_SCHEMA],
                        "totalResults": total,
                        "startIndex": 1,
                        "itemsPerPage": total,
                        "Resources": all,
                    }),
                ))
            }
        }
    }
}

/// The header that carries what was not applied of a membership change: JSON
/// `{"pending": [value…], "refused": [{"value", "reason"}…]}`, non-ASCII escaped, at most
/// [`REPORT_ENTRIES`] entries of each (`"truncated": true` when cut; the admin API's
/// pending view has every pending one). Kept out of the resource: strict clients validate
/// a Group against its schema, and a report is not part of the group (decision 59).
pub const MEMBERSHIP_REPORT_HEADER: &str = "gatehouse-scim-membership-report";

/// How many pending and refused entries the report header carries at most.
const REPORT_ENTRIES: usize = 50;

/// Adds the membership report header to a group answer when something was not applied.
fn with_report(mut response: Response, report: &crate::app::MemberReport) -> Response {
    if report.pending.is_empty() && report.refused.is_empty() {
        return response;
    }
    let truncated = report.pending.len() > REPORT_ENTRIES || report.refused.len() > REPORT_ENTRIES;
    let mut body = json!({
        "pending": report.pending.iter().take(REPORT_ENTRIES).collect::<Vec<_>>(),
        "refused": report.refused.iter().take(REPORT_ENTRIES).map(|(v, why)| json!({"value": v, "reason": why})).collect::<Vec<_>>(),
    });
    if truncated {
        body["truncated"] = json!(true);
    }
    let mut text = String::new();
    for c in body.to_string().chars() {
        if c.is_ascii() && !c.is_ascii_control() {
            text.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                text.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    if let Ok(value) = HeaderValue::from_str(&text) {
        response
            .headers_mut()
            .insert(MEMBERSHIP_REPORT_HEADER, value);
    }
    response
}

fn not_allowed(allowed: &'static str) -> ScimError {
    ScimError::MethodNotAllowed(allowed)
}

fn user_op(method: &Method) -> &'static str {
    match *method {
        Method::GET => "users.get",
        Method::PUT => "users.replace",
        Method::PATCH => "users.patch",
        Method::DELETE => "users.delete",
        _ => "users",
    }
}

fn group_op(method: &Method) -> &'static str {
    match *method {
        Method::GET => "groups.get",
        Method::PUT => "groups.replace",
        Method::PATCH => "groups.patch",
        Method::DELETE => "groups.delete",
        _ => "groups",
    }
}
