//! The HTTP surface: the only module that names axum. Handlers parse, call [`App`], and
//! answer; `error` is the one place an error becomes a response.

mod console;
mod directory;
mod edge;
mod error;
mod fleet;
mod identity;
mod migration;
mod openapi;
mod password;
mod scim;
mod sso;

use crate::app::{
    App, AppError, Caller, Evaluate, Evaluated, PolicyOverview, TenantCreated, Upload, OPERATOR,
};
use crate::store::{PolicyState, PolicyVersionRecord, TenantRecord};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use gatehouse_rules::cases::Case;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use tracing::Instrument;

pub use error::Problem;
pub use fleet::edge_router;
pub use openapi::{openapi_json, ApiDoc};

type Shared = State<Arc<App>>;

/// The process's Prometheus recorder; installed once, rendered by `/metrics`.
fn metrics_handle() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets(&[
                0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.005, 0.025,
                0.1, 0.5,
            ])
            .expect("bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (tests embedding several servers);
        // then this handle renders an empty registry, which is still valid output.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Installs the process's Prometheus recorder. `serve` and `edge` call it first thing, before
/// the store opens or an edge applies its first frame: a metric recorded before the recorder
/// exists is lost (the `metrics` facade drops it). The routers install it too, for tests.
pub fn install_metrics_recorder() {
    let _ = metrics_handle();
}

/// The whole router.
pub fn router(app: Arc<App>) -> Router {
    let max_upload = app.engine.limits().max_component_bytes * 2 + (1 << 20);
    let _ = metrics_handle();
    let scim_max_body = app.scim.config.max_body_kib as usize * 1024;
    let api = Router::new()
        .route("/tenants", post(create_tenant).get(list_tenants))
        .route("/tenants/{tenant}", get(get_tenant))
        .route("/openapi.json", get(openapi::document))
        .route("/tenants/{tenant}/policy", get(policy_overview))
        .route(
            "/tenants/{tenant}/policy/versions",
            post(upload_policy)
                .get(policy_versions)
                .layer(DefaultBodyLimit::max(max_upload)),
        )
        .route(
            "/tenants/{tenant}/policy/dry-run",
            post(dry_run_policy).layer(DefaultBodyLimit::max(max_upload)),
        )
        .route(
            "/tenants/{tenant}/policy/shadow",
            post(start_shadow)
                .get(shadow_state)
                .delete(discard_shadow)
                .layer(DefaultBodyLimit::max(max_upload)),
        )
        .route(
            "/tenants/{tenant}/policy/shadow/promote",
            post(promote_shadow),
        )
        .route("/tenants/{tenant}/policy/activate", post(activate_policy))
        .route("/tenants/{tenant}/policy/rollback", post(rollback_policy))
        .route("/tenants/{tenant}/policy/evaluate", post(evaluate))
        .route("/tenants/{tenant}/policy/explain", post(explain_policy))
        .merge(identity::routes())
        .merge(directory::routes())
        .merge(migration::routes())
        .merge(scim::admin_routes())
        .merge(fleet::admin_routes())
        .layer(middleware::from_fn(off_the_workers))
        .layer(middleware::from_fn(error::bare_errors_as_problems));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .nest("/api/v1", api)
        .merge(edge::routes())
        .merge(fleet::stream_routes())
        .merge(sso::routes())
        .merge(password::routes())
        .merge(console::routes(max_upload))
        .merge(scim::routes(scim_max_body))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(1 << 20))
        .layer(middleware::from_fn(request_span))
        .with_state(app)
}

/// Serves `app` on `listener` until `shutdown` resolves; requests in flight finish.
pub async fn serve(
    app: Arc<App>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // The peer address is kept for the per-address password attempt limit.
    let router = router(app.clone());
    // Edge streams never end by themselves: stop them, or shutdown would wait forever.
    let shutdown = async move {
        shutdown.await;
        app.stop_edge_streams();
    };
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// Serves an edge (`gatehouse edge`) on `listener` until `shutdown` resolves.
pub async fn serve_edge(
    app: Arc<App>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, edge_router(app))
        .with_graceful_shutdown(shutdown)
        .await
}

static REQUEST_IDS: AtomicU64 = AtomicU64::new(1);

/// A span per request with its id; the id is echoed in `x-request-id`.
async fn request_span(request: Request, next: Next) -> Response {
    let id = format!(
        "{:x}-{:x}",
        std::process::id(),
        REQUEST_IDS.fetch_add(1, Ordering::Relaxed)
    );
    let span = tracing::info_span!("request", id = %id, method = %request.method(), path = %request.uri().path());
    let header = HeaderValue::from_str(&id);
    let info = crate::logging::RequestInfo {
        id,
        method: request.method().as_str().to_owned(),
        path: request.uri().path().to_owned(),
    };
    let mut response = crate::logging::in_request(info, next.run(request))
        .instrument(span.clone())
        .await;
    span.in_scope(|| tracing::debug!(status = response.status().as_u16(), "answered"));
    if let Ok(value) = header {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// Runs the rest of a request, its handler, on a blocking thread (a layer on the admin API
/// here and on the SSO routes in `sso.rs`). Admin and login handlers
/// call the store directly, and a store call blocks: a write waits for its round's commit
/// and flush, a PostgreSQL query for its round trip, a tenant's lock for the write holding
/// it. On one of the runtime's few workers (one per core) that would stall every request
/// the worker serves meanwhile, the edge's among them (decision 87). The handler keeps its
/// request span and id; a panic in it is a 500 with its log line, not a dropped connection.
pub(super) async fn off_the_workers(request: Request, next: Next) -> Response {
    let span = tracing::Span::current();
    let info = crate::logging::current_request();
    let runtime = tokio::runtime::Handle::current();
    let answer = tokio::task::spawn_blocking(move || {
        let answer = next.run(request).instrument(span);
        match info {
            Some(info) => runtime.block_on(crate::logging::in_request(info, answer)),
            None => runtime.block_on(answer),
        }
    });
    match answer.await {
        Ok(response) => response,
        Err(stopped) => {
            let why = match stopped.try_into_panic() {
                Ok(panic) => crate::logging::panic_message(&*panic).to_owned(),
                Err(stopped) => stopped.to_string(),
            };
            AppError::Internal(format!("the handler stopped: {why}")).into_response()
        }
    }
}

pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn operator(app: &App, headers: &HeaderMap) -> Result<(), AppError> {
    app.authorize_operator(bearer(headers))
}

/// The caller of a tenant route.
fn caller(app: &App, tenant: &str, headers: &HeaderMap) -> Result<Caller, AppError> {
    app.authenticate(Some(tenant), bearer(headers))
}

/// The caller of a tenant route that needs a tenant admin (or the operator).
fn admin(app: &App, tenant: &str, headers: &HeaderMap) -> Result<Caller, AppError> {
    let caller = caller(app, tenant, headers)?;
    caller.require_admin()?;
    Ok(caller)
}

/// Parses a JSON body whatever its media type, answering 400 with serde's reason.
fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, AppError> {
    serde_json::from_slice(body)
        .map_err(|e| AppError::BadRequest(format!("request body is not valid: {e}")))
}

/// Liveness or readiness of the process.
#[derive(Serialize, utoipa::ToSchema)]
struct Health {
    /// `ok` (liveness); `ready` or `unavailable` (readiness).
    status: &'static str,
    /// How many tenants the store holds (readiness, when ready).
    #[serde(skip_serializing_if = "Option::is_none")]
    tenants: Option<usize>,
}

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    responses((status = 200, description = "The process is up", body = Health)),
)]
async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok",
        tenants: None,
    })
}

/// Readiness: the store answers.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses(
        (status = 200, description = "Ready: the store answers", body = Health),
        (status = 503, description = "The store does not answer", body = Health),
    ),
)]
async fn readyz(State(app): Shared) -> Response {
    match app.store.tenants() {
        Ok(tenants) => Json(Health {
            status: "ready",
            tenants: Some(tenants.len()),
        })
        .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "not ready: store unavailable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(Health {
                    status: "unavailable",
                    tenants: None,
                }),
            )
                .into_response()
        }
    }
}

/// Prometheus metrics.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    responses((
        status = 200,
        description = "Prometheus text exposition format",
        body = String,
        content_type = "text/plain; version=0.0.4",
    )),
)]
async fn metrics_text() -> Response {
    crate::logging::export_metrics();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics_handle().render(),
    )
        .into_response()
}

async fn not_found() -> Result<(), AppError> {
    Err(AppError::NotFound("route".into()))
}

/// A new tenant.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateTenant {
    /// Lowercase letters, digits and hyphens.
    slug: String,
    /// The first tenant admin; the answer carries a token for them (shown once).
    #[serde(default)]
    admin_email: Option<String>,
}

/// Create a tenant (operator only).
///
/// The tenant starts with its built-in `everyone` team, the built-in default policy and
/// `invite_only` provisioning; with `admin_email`, also with a first admin whose token the
/// answer carries, once.
#[utoipa::path(
    post,
    path = "/api/v1/tenants",
    tag = "tenants",
    request_body = CreateTenant,
    responses(
        (status = 201, description = "Created", body = TenantCreated),
        (status = 400, description = "The body, the slug or the email is not valid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not the operator token", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The tenant exists", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn create_tenant(
    State(app): Shared,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AppError> {
    operator(&app, &headers)?;
    let request: CreateTenant = parse_json(&body)?;
    let created =
        app.create_tenant_with_admin(&request.slug, request.admin_email.as_deref(), OPERATOR)?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// Every tenant.
#[derive(Serialize, utoipa::ToSchema)]
struct TenantList {
    tenants: Vec<TenantRecord>,
}

/// List tenants (operator only).
#[utoipa::path(
    get,
    path = "/api/v1/tenants",
    tag = "tenants",
    responses(
        (status = 200, description = "Every tenant", body = TenantList),
        (status = 401, description = "Not the operator token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn list_tenants(State(app): Shared, headers: HeaderMap) -> Result<Response, AppError> {
    operator(&app, &headers)?;
    Ok(Json(TenantList {
        tenants: app.tenants()?,
    })
    .into_response())
}

/// Read a tenant (operator or tenant admin).
#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenant}",
    tag = "tenants",
    params(("tenant" = String, Path, description = "Tenant slug")),
    responses(
        (status = 200, description = "The tenant", body = TenantRecord),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant (or a token of another tenant)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn get_tenant(
    State(app): Shared,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Result<Response, AppError> {
    admin(&app, &tenant, &headers)?;
    Ok(Json(app.tenant(&tenant)?).into_response())
}

/// The tenant's policy: the active version, rollback history, every stored version.
#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenant}/policy",
    tag = "policies",
    params(("tenant" = String, Path, description = "Tenant slug")),
    responses(
        (status = 200, description = "The policy overview", body = PolicyOverview),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant (or a token of another tenant)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn policy_overview(
    State(app): Shared,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Result<Response, AppError> {
    admin(&app, &tenant, &headers)?;
    Ok(Json(app.policy_overview(&tenant)?).into_response())
}

/// The same overview as `GET /policy`, at the collection the uploads go to.
#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenant}/policy/versions",
    tag = "policies",
    params(("tenant" = String, Path, description = "Tenant slug")),
    responses(
        (status = 200, description = "The policy overview", body = PolicyOverview),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant (or a token of another tenant)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn policy_versions(
    state: Shared,
    headers: HeaderMap,
    tenant: Path<String>,
) -> Result<Response, AppError> {
    policy_overview(state, headers, tenant).await
}

/// A JSON upload: the component in base64, its settings, its cases.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UploadJson {
    /// The component's bytes, base64 (standard alphabet, padded).
    component_base64: String,
    /// The policy's settings: a JSON value, or JSON text in a string (absent: `{}`).
    #[serde(default)]
    settings: Option<serde_json::Value>,
    /// The policy's decision cases; every one must pass before the version is stored.
    #[serde(default)]
    cases: Vec<Case>,
    /// Activate the version once stored (default `true`).
    #[serde(default = "yes")]
    #[schema(default = true)]
    activate: bool,
}

fn yes() -> bool {
    true
}

/// `?activate=true|false` (default true) of a raw `application/wasm` upload.
fn activate_param(query: Option<&str>) -> Result<bool, AppError> {
    let mut activate = true;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        activate = match pair {
            "activate=true" | "activate" => true,
            "activate=false" => false,
            other => {
                return Err(AppError::BadRequest(format!(
                "query parameter {other:?} is not understood: use activate=true or activate=false"
            )))
            }
        };
    }
    Ok(activate)
}

/// Upload a policy version: compile, type-check, validate settings, run its cases, store,
/// and (by default) activate it.
///
/// `application/wasm`: the body is the component (no settings, no cases; `?activate=`).
/// Anything else: [`UploadJson`].
#[utoipa::path(
    post,
    path = "/api/v1/tenants/{tenant}/policy/versions",
    tag = "policies",
    params(
        ("tenant" = String, Path, description = "Tenant slug"),
        ("activate" = Option<bool>, Query, description = "Raw `application/wasm` uploads only: activate the version once stored (default `true`)"),
    ),
    request_body(
        description = "The component as base64 JSON with settings and cases, or as raw bytes",
        content(
            (UploadJson = "application/json"),
            ("application/wasm"),
        ),
    ),
    responses(
        (status = 201, description = "Stored (and activated, unless asked not to)", body = PolicyVersionRecord),
        (status = 400, description = "The body, its base64 or the query string is not valid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant (or a token of another tenant)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The component is larger than the configured limit (a body past twice that, plus 1 MiB, is cut off earlier with a plain-text 413)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Refused: not a valid component, forbidden imports, wrong contract, settings refused, or failing cases (`failed_cases`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Every sandbox slot is busy; try again", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn upload_policy(
    State(app): Shared,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Response, AppError> {
    let caller = admin(&app, &tenant, &headers)?;
    let is_wasm = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/wasm"));
    let upload = if is_wasm {
        let activate = activate_param(query.as_deref())?;
        Upload {
            component: body.to_vec(),
            settings: "{}".into(),
            cases: Vec::new(),
            activate,
        }
    } else {
        use base64::Engine;
        let request: UploadJson = parse_json(&body)?;
        let component = base64::engine::general_purpose::STANDARD
            .decode(request.component_base64.trim())
            .map_err(|e| AppError::BadRequest(format!("component_base64 is not base64: {e}")))?;
        let settings = match request.settings {
            None | Some(serde_json::Value::Null) => "{}".to_owned(),
            Some(serde_json::Value::String(text)) => text,
            Some(value) => value.to_string(),
        };
        Upload {
            component,
            settings,
            cases: request.cases,
            activate: request.activate,
        }
    };
    let record = app.upload_policy(&tenant, upload, &caller.actor()).await?;
    Ok((StatusCode::CREATED, Json(record)).into_response())
}

/// A candidate for a dry run: the component in base64 and its settings.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct DryRunJson {
    /// The component's bytes, base64 (standard alphabet, padded).
    component_base64: String,
    /// The candidate's settings: a JSON value, or JSON text in a string (absent: `{}`).
    #[serde(default)]
    settings: Option<serde_json::Value>,
}

/// Dry-run a candidate policy on the tenant's recent decisions (an anonymised ring kept in
/// memory): every decision whose outcome would change, with the active policy's outcome
/// and the candidate's. Nothing is stored or activated.
#[utoipa::path(
    post,
    path = "/api/v1/tenants/{tenant}/policy/dry-run",
    tag = "policies",
    params(("tenant" = String, Path, description = "Tenant slug")),
    request_body = DryRunJson,
    responses(
        (status = 200, description = "The decisions that would change", body = crate::app::DryRunReport),
        (status = 400, description = "The body is not valid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The component is too large", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Refused: not a valid component, wrong contract, or settings refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn dry_run_policy(
    State(app): Shared,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Result<Response, AppError> {
    admin(&app, &tenant, &headers)?;
    let (component, settings) = candidate_body(&body)?;
    let report = app.dry_run_policy(&tenant, component, settings).await?;
    Ok(Json(report).into_response())
}

/// Start a candidate in shadow: evaluated beside the active policy on live decisions (off
/// the answer's path), differences counted and logged; the active policy keeps answering.
/// Replaces any earlier shadow. The candidate is stored (not as a version) so every replica
/// runs it, each counting its own decisions, until it is promoted or discarded.
#[utoipa::path(
    post,
    path = "/api/v1/tenants/{tenant}/policy/shadow",
    tag = "policies",
    params(("tenant" = String, Path, description = "Tenant slug")),
    request_body = DryRunJson,
    responses(
        (status = 201, description = "The shadow runs", body = crate::app::ShadowState),
        (status = 400, description = "The body is not valid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The component is too large", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Refused: not a valid component, wrong contract, or settings refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn start_shadow(
    State(app): Shared,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Result<Response, AppError> {
    admin(&app, &tenant, &headers)?;
    let (component, settings) = candidate_body(&body)?;
    let state = app.start_shadow(&tenant, component, settings).await?;
    Ok((StatusCode::CREATED, Json(state)).into_response())
}

/// The shadow candidate and its counters (evaluated, differed, failed, dropped).
#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenant}/policy/shadow",
    tag = "policies",
    params(("tenant" = String, Path, description = "Tenant slug")),
    responses(
        (status = 200, description = "The shadow", body = crate::app::ShadowState),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant, or no shadow runs", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn shadow_state(
    State(app): Shared,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Result<Response, AppError> {
    admin(&app, &tenant, &headers)?;
    Ok(Json(app.shadow_state(&tenant)?).into_response())
}

/// Discard the shadow candidate; answers its final counters.
#[utoipa::path(
    delete,
    path = "/api/v1/tenants/{tenant}/policy/shadow",
    tag = "policies",
    params(("tenant" = String, Path, description = "Tenant slug")),
    responses(
        (status = 200, description = "Discarded; its final counters", body = crate::app::ShadowState),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant, or no shadow runs", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn discard_shadow(
    State(app): Shared,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Result<Response, AppError> {
    admin(&app, &tenant, &headers)?;
    Ok(Json(app.discard_shadow(&tenant)?).into_response())
}

/// Promote the shadow candidate: store it as a new version, activate it, stop the shadow.
#[utoipa::path(
    post,
    path = "/api/v1/tenants/{tenant}/policy/shadow/promote",
    tag = "policies",
    params(("tenant" = String, Path, description = "Tenant slug")),
    responses(
        (status = 201, description = "Stored and active", body = PolicyVersionRecord),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant, or no shadow runs", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn promote_shadow(
    State(app): Shared,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Result<Response, AppError> {
    let caller = admin(&app, &tenant, &headers)?;
    let record = app.promote_shadow(&tenant, &caller.actor()).await?;
    Ok((StatusCode::CREATED, Json(record)).into_response())
}

/// A candidate's component and settings from a `DryRunJson` body.
fn candidate_body(body: &[u8]) -> Result<(Vec<u8>, String), AppError> {
    use base64::Engine;
    let request: DryRunJson = parse_json(body)?;
    let component = base64::engine::general_purpose::STANDARD
        .decode(request.component_base64.trim())
        .map_err(|e| AppError::BadRequest(format!("component_base64 is not base64: {e}")))?;
    let settings = match request.settings {
        None | Some(serde_json::Value::Null) => "{}".to_owned(),
        Some(serde_json::Value::String(text)) => text,
        Some(value) => value.to_string(),
    };
    Ok((component, settings))
}

/// Which stored version to run.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Activate {
    /// `null` activates the built-in default policy.
    version: Option<u64>,
}

/// Activate a stored policy version (`null`: the built-in default policy).
#[utoipa::path(
    post,
    path = "/api/v1/tenants/{tenant}/policy/activate",
    tag = "policies",
    params(("tenant" = String, Path, description = "Tenant slug")),
    request_body = Activate,
    responses(
        (status = 200, description = "The version now runs", body = PolicyState),
        (status = 400, description = "The body is not valid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant or version", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn activate_policy(
    State(app): Shared,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Result<Response, AppError> {
    admin(&app, &tenant, &headers)?;
    let request: Activate = parse_json(&body)?;
    let state = app.activate_policy(&tenant, request.version).await?;
    Ok(Json(state).into_response())
}

/// Return to the version that ran before the current one.
#[utoipa::path(
    post,
    path = "/api/v1/tenants/{tenant}/policy/rollback",
    tag = "policies",
    params(("tenant" = String, Path, description = "Tenant slug")),
    responses(
        (status = 200, description = "The previous version runs again", body = PolicyState),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant (or a token of another tenant)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Nothing to roll back to", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn rollback_policy(
    State(app): Shared,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Result<Response, AppError> {
    admin(&app, &tenant, &headers)?;
    let state = app.rollback_policy(&tenant).await?;
    Ok(Json(state).into_response())
}

/// Run one decision through the tenant's active policy. A policy error is not a failure
/// here: it is reported in `policy_error`, as the deny it becomes.
#[utoipa::path(
    post,
    path = "/api/v1/tenants/{tenant}/policy/evaluate",
    tag = "policies",
    params(("tenant" = String, Path, description = "Tenant slug")),
    request_body = Evaluate,
    responses(
        (status = 200, description = "The decision, or the policy error", body = Evaluated),
        (status = 400, description = "The body is not valid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant (or a token of another tenant)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn evaluate(
    State(app): Shared,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Result<Response, AppError> {
    admin(&app, &tenant, &headers)?;
    let request: Evaluate = parse_json(&body)?;
    let answer = app.evaluate(&tenant, &request)?;
    app.check_auto_rollback(&tenant).await;
    Ok(Json(answer).into_response())
}

/// Explain what the tenant's active policy decides for a set of token claims, and why: the
/// identity provider, the policy's claim map, the values it picks out, the candidates the
/// host matches, the resolution with the policy's trace, the decision carried out and, for
/// a user, the effective role with the policy's role trace. The claims are taken as given
/// (no signature check) and nothing is recorded, memoised or counted as a decision.
#[utoipa::path(
    post,
    path = "/api/v1/tenants/{tenant}/policy/explain",
    tag = "policies",
    params(("tenant" = String, Path, description = "Tenant slug")),
    request_body = crate::app::ExplainRequest,
    responses(
        (status = 200, description = "The explanation (a policy failure is reported in `policy_error`)", body = crate::app::Explanation),
        (status = 400, description = "The body is not valid, or no identity provider matches", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant (or a token of another tenant)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn explain_policy(
    State(app): Shared,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Result<Response, AppError> {
    admin(&app, &tenant, &headers)?;
    let request: crate::app::ExplainRequest = parse_json(&body)?;
    let app2 = app.clone();
    let explanation = tokio::task::spawn_blocking(move || app2.explain(&tenant, &request))
        .await
        .map_err(|e| AppError::Internal(format!("explain stopped: {e}")))??;
    Ok(Json(explanation).into_response())
}
