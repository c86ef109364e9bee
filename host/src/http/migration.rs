//! Routes of the migration from the legacy model (docs/migration.md): plan (changes
//! nothing) and apply, for a tenant admin or the operator. The body is the legacy export.

use super::{bearer, Problem, Shared};
use crate::app::{App, AppError, Caller, MigrationApplied};
use crate::migrate::Plan;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::Arc;

/// The migration routes, under `/api/v1`.
pub(super) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/tenants/{tenant}/migration/plan", post(migration_plan))
        .route("/tenants/{tenant}/migration/apply", post(migration_apply))
}

fn caller(app: &App, tenant: &str, headers: &HeaderMap) -> Result<Caller, AppError> {
    app.authenticate(Some(tenant), bearer(headers))
}

/// Plan a migration from a legacy export; nothing changes.
#[utoipa::path(
    post,
    path = "/api/v1/tenants/{tenant}/migration/plan",
    tag = "migration",
    params(("tenant" = String, Path, description = "Tenant slug")),
    request_body(content = Object, description = "The legacy export (docs/migration.md)", content_type = "application/json"),
    responses(
        (status = 200, description = "The plan, with its digest", body = Plan),
        (status = 400, description = "The export is malformed (the detail names the JSON path) or an identity provider fails the checks", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant (or a token of another tenant)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn migration_plan(
    State(app): Shared,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    let plan = app.migration_plan(&tenant, &body, &caller)?;
    Ok((StatusCode::OK, Json(plan)).into_response())
}

/// Which reviewed plan an apply must match.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ApplyQuery {
    /// The digest of the reviewed plan: the apply is refused (409) if the plan differs now.
    plan: Option<String>,
}

/// Apply a migration from a legacy export in one atomic, audited change; a second apply
/// changes nothing and says so (`applied: false`).
#[utoipa::path(
    post,
    path = "/api/v1/tenants/{tenant}/migration/apply",
    tag = "migration",
    params(("tenant" = String, Path, description = "Tenant slug"), ApplyQuery),
    request_body(content = Object, description = "The legacy export (docs/migration.md)", content_type = "application/json"),
    responses(
        (status = 200, description = "What was applied, and what is left to a human", body = MigrationApplied),
        (status = 400, description = "The export is malformed (the detail names the JSON path) or an identity provider fails the checks; nothing changed", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant (or a token of another tenant)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The plan differs from the reviewed one, or a name is taken; nothing changed", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn migration_apply(
    State(app): Shared,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    Query(query): Query<ApplyQuery>,
    body: Bytes,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    let applied = app.migration_apply(&tenant, &body, query.plan.as_deref(), &caller)?;
    Ok((StatusCode::OK, Json(applied)).into_response())
}
