//! The edge fleet over HTTP (decisions 70–72): the operator's edge credentials
//! (`/api/v1/edges`), the stream an edge follows (`POST /v1/edge/stream`, chunked NDJSON),
//! and the router of `gatehouse edge` itself: the edge routes, `/healthz`, `/readyz`,
//! `/metrics`, and 404 for everything else.

use super::{bearer, edge, operator, parse_json, request_span, Shared};
use crate::app::fleet::{EdgeCredential, Frame, IssuedEdgeCredential, StreamRequest};
use crate::app::{App, AppError};
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The operator's routes, under `/api/v1`.
pub(super) fn admin_routes() -> Router<Arc<App>> {
    Router::new()
        .route("/edges", post(issue).get(list))
        .route("/edges/{id}", delete(revoke))
}

/// The stream, at the root.
pub(super) fn stream_routes() -> Router<Arc<App>> {
    Router::new().route("/v1/edge/stream", post(stream))
}

/// A new edge credential.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewEdge {
    /// A name for people (`eu-west-gw-1`): letters, digits, `-`, `_`, `.`.
    name: String,
    /// The tenants this edge receives; leave it out for every tenant.
    #[serde(default)]
    tenants: Option<Vec<String>>,
}

/// Every edge credential.
#[derive(Serialize, utoipa::ToSchema)]
struct EdgeList {
    edges: Vec<EdgeCredential>,
}

/// Issue an edge credential (operator only); its token is in this answer only.
#[utoipa::path(
    post,
    path = "/api/v1/edges",
    tag = "edges",
    request_body = NewEdge,
    responses(
        (status = 201, description = "Issued; `token` is shown this once", body = IssuedEdgeCredential),
        (status = 400, description = "The body, the name or a tenant is not valid", body = super::Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not the operator token", body = super::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn issue(State(app): Shared, headers: HeaderMap, body: Bytes) -> Result<Response, AppError> {
    operator(&app, &headers)?;
    let new: NewEdge = parse_json(&body)?;
    let issued = app.issue_edge_credential(&new.name, new.tenants)?;
    Ok((StatusCode::CREATED, Json(issued)).into_response())
}

/// List edge credentials (operator only), revoked ones with `revoked_at`.
#[utoipa::path(
    get,
    path = "/api/v1/edges",
    tag = "edges",
    responses(
        (status = 200, description = "Every edge credential, oldest first", body = EdgeList),
        (status = 401, description = "Not the operator token", body = super::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn list(State(app): Shared, headers: HeaderMap) -> Result<Json<EdgeList>, AppError> {
    operator(&app, &headers)?;
    Ok(Json(EdgeList {
        edges: app.edge_credentials()?,
    }))
}

/// Revoke an edge credential (operator only): its stream ends within a second.
#[utoipa::path(
    delete,
    path = "/api/v1/edges/{id}",
    tag = "edges",
    params(("id" = String, Path, description = "The credential's id (`edge_…`)")),
    responses(
        (status = 200, description = "Revoked (again: unchanged)", body = EdgeCredential),
        (status = 401, description = "Not the operator token", body = super::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such edge credential", body = super::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn revoke(
    State(app): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<EdgeCredential>, AppError> {
    operator(&app, &headers)?;
    Ok(Json(app.revoke_edge_credential(&id)?))
}

/// An edge's stream of its tenants' records (edge credential): NDJSON lines `hello`, then
/// `snapshot` and `batch` frames per tenant, and `synced` at least every second.
#[utoipa::path(
    post,
    path = "/v1/edge/stream",
    tag = "edges",
    request_body = StreamRequest,
    responses(
        (status = 200, description = "The stream (application/x-ndjson), until the edge disconnects", body = String, content_type = "application/x-ndjson"),
        (status = 400, description = "The body is not valid", body = super::Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not a live edge credential", body = super::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn stream(State(app): Shared, headers: HeaderMap, body: Bytes) -> Result<Response, AppError> {
    let token = bearer(&headers).unwrap_or_default().to_owned();
    let credential = app.authenticate_edge(Some(&token))?;
    let request: StreamRequest = if body.is_empty() {
        StreamRequest::default()
    } else {
        parse_json(&body)?
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let worker = app.clone();
    let id = credential.id.clone();
    std::thread::Builder::new()
        .name("gatehouse-edge-stream".into())
        .spawn(move || {
            let mut send = |frame: &Frame| {
                let mut line = serde_json::to_vec(frame).expect("frames serialize");
                line.push(b'\n');
                tx.blocking_send(Bytes::from(line)).is_ok()
            };
            tracing::info!(edge = %id, "edge stream opened");
            match worker.stream_to_edge(&token, request, &mut send) {
                Ok(()) => tracing::info!(edge = %id, "edge stream closed"),
                Err(e) => tracing::warn!(edge = %id, error = %e, "edge stream ended"),
            }
        })
        .map_err(|e| AppError::Internal(format!("cannot start a stream thread: {e}")))?;
    let body = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|line| line.map(Ok::<_, std::convert::Infallible>))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response())
}

/// The router of `gatehouse edge`.
pub fn edge_router(app: Arc<App>) -> Router {
    let _ = super::metrics_handle();
    Router::new()
        .route("/healthz", get(super::healthz))
        .route("/readyz", get(edge_readyz))
        .route("/metrics", get(edge_metrics))
        .merge(edge::routes())
        .fallback(super::not_found)
        .layer(DefaultBodyLimit::max(1 << 20))
        .layer(middleware::from_fn(request_span))
        .with_state(app)
}

/// An edge's readiness: how stale its replica is.
#[derive(Serialize)]
struct EdgeHealth {
    /// `ready`, or `stale` (decisions are refused).
    status: &'static str,
    /// Seconds since the replica was last known current (absent: never synced).
    staleness_secs: Option<f64>,
    max_staleness_secs: u64,
    /// The stream to the control plane is up.
    connected: bool,
    tenants: usize,
}

async fn edge_readyz(State(app): Shared) -> Response {
    let Some(freshness) = app.freshness() else {
        return super::readyz(State(app)).await;
    };
    let stale = freshness.is_stale();
    let health = EdgeHealth {
        status: if stale { "stale" } else { "ready" },
        staleness_secs: freshness.staleness().map(|s| s.as_secs_f64()),
        max_staleness_secs: freshness.max_staleness().as_secs(),
        connected: freshness.connected(),
        tenants: app.policies.len(),
    };
    let status = if stale {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, Json(health)).into_response()
}

async fn edge_metrics(State(app): Shared) -> Response {
    if let Some(freshness) = app.freshness() {
        freshness.export_metrics();
    }
    super::metrics_text().await
}
