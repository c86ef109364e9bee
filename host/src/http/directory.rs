//! Routes of the rest of the directory: virtual accounts and their tokens, identity
//! providers, SSO configurations and SCIM tokens, resources.

use super::{bearer, parse_json, Shared};
use crate::app::{
    App, AppError, Caller, IdpInput, NewResource, NewVaToken, NewVirtualAccount, SsoInput,
    VirtualAccountPatch,
};
use crate::identity::Collaborator;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::Arc;

/// The directory routes, under `/api/v1`.
pub(super) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route(
            "/tenants/{tenant}/virtual-accounts",
            get(list_vas).post(create_va),
        )
        .route(
            "/tenants/{tenant}/virtual-accounts/{va}",
            get(get_va).patch(patch_va).delete(delete_va),
        )
        .route(
            "/tenants/{tenant}/virtual-accounts/{va}/tokens",
            get(list_va_tokens).post(create_va_token),
        )
        .route(
            "/tenants/{tenant}/virtual-accounts/{va}/tokens/{token}",
            delete(revoke_va_token),
        )
        .route(
            "/tenants/{tenant}/identity-providers",
            get(list_idps).post(create_idp),
        )
        .route(
            "/tenants/{tenant}/identity-providers/{idp}",
            put(replace_idp).delete(delete_idp),
        )
        .route("/tenants/{tenant}/sso", get(list_sso).post(create_sso))
        .route(
            "/tenants/{tenant}/sso/{sso}",
            put(replace_sso).delete(delete_sso),
        )
        .route("/tenants/{tenant}/sso/{sso}/scim-token", post(scim_token))
        .route(
            "/tenants/{tenant}/resources",
            get(list_resources).post(create_resource),
        )
        .route(
            "/tenants/{tenant}/resources/{resource}",
            delete(delete_resource),
        )
        .route(
            "/tenants/{tenant}/resources/{resource}/collaborators",
            put(set_collaborators),
        )
}

fn caller(app: &App, tenant: &str, headers: &HeaderMap) -> Result<Caller, AppError> {
    app.authenticate(Some(tenant), bearer(headers))
}

fn json<T: serde::Serialize>(status: StatusCode, value: T) -> Response {
    (status, Json(value)).into_response()
}

async fn list_vas(
    State(app): Shared,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    Ok(json(
        StatusCode::OK,
        serde_json::json!({ "virtual_accounts": app.virtual_accounts(&tenant, &caller)? }),
    ))
}

async fn create_va(
    State(app): Shared,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    let request: NewVirtualAccount = parse_json(&body)?;
    Ok(json(
        StatusCode::CREATED,
        app.create_virtual_account(&tenant, request, &caller)?,
    ))
}

async fn get_va(
    State(app): Shared,
    headers: HeaderMap,
    Path((tenant, va)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    Ok(json(
        StatusCode::OK,
        app.virtual_account(&tenant, &va, &caller)?,
    ))
}

async fn patch_va(
    State(app): Shared,
    headers: HeaderMap,
    Path((tenant, va)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    let patch: VirtualAccountPatch = parse_json(&body)?;
    Ok(json(
        StatusCode::OK,
        app.patch_virtual_account(&tenant, &va, patch, &caller)?,
    ))
}

async fn delete_va(
    State(app): Shared,
    headers: HeaderMap,
    Path((tenant, va)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    app.delete_virtual_account(&tenant, &va, &caller)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_va_tokens(
    State(app): Shared,
    headers: HeaderMap,
    Path((tenant, va)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    Ok(json(
        StatusCode::OK,
        serde_json::json!({ "tokens": app.va_tokens(&tenant, &va, &caller)? }),
    ))
}

async fn create_va_token(
    State(app): Shared,
    headers: HeaderMap,
    Path((tenant, va)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    let request: NewVaToken = parse_json(&body)?;
    Ok(json(
        StatusCode::CREATED,
        app.create_va_token(&tenant, &va, request, &caller)?,
    ))
}

async fn revoke_va_token(
    State(app): Shared,
    headers: HeaderMap,
    Path((tenant, va, token)): Path<(String, String, String)>,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    app.revoke_va_token(&tenant, &va, &token, &caller)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_idps(
    State(app): Shared,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    Ok(json(
        StatusCode::OK,
        serde_json::json!({ "identity_providers": app.identity_providers(&tenant, &caller)? }),
    ))
}

async fn create_idp(
    State(app): Shared,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    let input: IdpInput = parse_json(&body)?;
    Ok(json(
        StatusCode::CREATED,
        app.put_identity_provider(&tenant, input, true, &caller)?,
    ))
}

async fn replace_idp(
    State(app): Shared,
    headers: HeaderMap,
    Path((tenant, idp)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    let input: IdpInput = parse_json(&body)?;
    if input.name != idp {
        return Err(AppError::BadRequest(format!(
            "the body names {} but the path names {idp}",
            input.name
        )));
    }
    Ok(json(
        StatusCode::OK,
        app.put_identity_provider(&tenant, input, false, &caller)?,
    ))
}

async fn delete_idp(
    State(app): Shared,
    headers: HeaderMap,
    Path((tenant, idp)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    app.delete_identity_provider(&tenant, &idp, &caller)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_sso(
    State(app): Shared,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    Ok(json(
        StatusCode::OK,
        serde_json::json!({ "sso": app.sso_configs(&tenant, &caller)? }),
    ))
}

async fn create_sso(
    State(app): Shared,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    let input: SsoInput = parse_json(&body)?;
    Ok(json(
        StatusCode::CREATED,
        app.put_sso_config(&tenant, input, true, &caller)?,
    ))
}

async fn replace_sso(
    State(app): Shared,
    headers: HeaderMap,
    Path((tenant, sso)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    let input: SsoInput = parse_json(&body)?;
    if input.id != sso {
        return Err(AppError::BadRequest(format!(
            "the body names {} but the path names {sso}",
            input.id
        )));
    }
    Ok(json(
        StatusCode::OK,
        app.put_sso_config(&tenant, input, false, &caller)?,
    ))
}

async fn delete_sso(
    State(app): Shared,
    headers: HeaderMap,
    Path((tenant, sso)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    app.delete_sso_config(&tenant, &sso, &caller)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn scim_token(
    State(app): Shared,
    headers: HeaderMap,
    Path((tenant, sso)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    Ok(json(
        StatusCode::CREATED,
        app.generate_scim_token(&tenant, &sso, &caller)?,
    ))
}

async fn list_resources(
    State(app): Shared,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    Ok(json(
        StatusCode::OK,
        serde_json::json!({ "resources": app.resources(&tenant, &caller)? }),
    ))
}

async fn create_resource(
    State(app): Shared,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    let request: NewResource = parse_json(&body)?;
    Ok(json(
        StatusCode::CREATED,
        app.create_resource(&tenant, request, &caller)?,
    ))
}

async fn delete_resource(
    State(app): Shared,
    headers: HeaderMap,
    Path((tenant, resource)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    app.delete_resource(&tenant, &resource, &caller)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Collaborators {
    collaborators: Vec<Collaborator>,
}

async fn set_collaborators(
    State(app): Shared,
    headers: HeaderMap,
    Path((tenant, resource)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    let request: Collaborators = parse_json(&body)?;
    Ok(json(
        StatusCode::OK,
        app.set_collaborators(&tenant, &resource, request.collaborators, &caller)?,
    ))
}
