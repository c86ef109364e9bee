//! Routes of the rest of the directory: virtual accounts and their tokens, identity
//! providers, SSO configurations and SCIM tokens, resources.

use super::identity::TokenList;
use super::{bearer, parse_json, Problem, Shared};
use crate::app::{
    App, AppError, Caller, IdpInput, NewResource, NewVaToken, NewVirtualAccount, ScimToken,
    SsoInput, SsoView, TokenCreated, VirtualAccountPatch,
};
use crate::identity::{Collaborator, IdentityProvider, Resource, VirtualAccount};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
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

/// Every virtual account of a tenant.
#[derive(Serialize, utoipa::ToSchema)]
struct VirtualAccountList {
    virtual_accounts: Vec<VirtualAccount>,
}

/// Every identity provider of a tenant.
#[derive(Serialize, utoipa::ToSchema)]
struct IdentityProviderList {
    identity_providers: Vec<IdentityProvider>,
}

/// Every SSO configuration of a tenant, never a secret.
#[derive(Serialize, utoipa::ToSchema)]
struct SsoList {
    sso: Vec<SsoView>,
}

/// Every resource of a tenant.
#[derive(Serialize, utoipa::ToSchema)]
struct ResourceList {
    resources: Vec<Resource>,
}

/// List virtual accounts (machine identities).
#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenant}/virtual-accounts",
    tag = "virtual-accounts",
    params(("tenant" = String, Path, description = "Tenant slug")),
    responses(
        (status = 200, description = "Every virtual account", body = VirtualAccountList),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant (or a token of another tenant)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn list_vas(
    State(app): Shared,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    Ok(json(
        StatusCode::OK,
        VirtualAccountList {
            virtual_accounts: app.virtual_accounts(&tenant, &caller)?,
        },
    ))
}

/// Create a virtual account.
#[utoipa::path(
    post,
    path = "/api/v1/tenants/{tenant}/virtual-accounts",
    tag = "virtual-accounts",
    params(("tenant" = String, Path, description = "Tenant slug")),
    request_body = NewVirtualAccount,
    responses(
        (status = 201, description = "The virtual account", body = VirtualAccount),
        (status = 400, description = "The body, the name or a mapping is not valid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant (or a token of another tenant)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A virtual account with this name or one of the mappings exists", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
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

/// Read a virtual account.
#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenant}/virtual-accounts/{va}",
    tag = "virtual-accounts",
    params(
        ("tenant" = String, Path, description = "Tenant slug"),
        ("va" = String, Path, description = "Virtual account id"),
    ),
    responses(
        (status = 200, description = "The virtual account", body = VirtualAccount),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant or virtual account", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
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

/// Change a virtual account; absent fields stay.
#[utoipa::path(
    patch,
    path = "/api/v1/tenants/{tenant}/virtual-accounts/{va}",
    tag = "virtual-accounts",
    params(
        ("tenant" = String, Path, description = "Tenant slug"),
        ("va" = String, Path, description = "Virtual account id"),
    ),
    request_body = VirtualAccountPatch,
    responses(
        (status = 200, description = "The changed virtual account", body = VirtualAccount),
        (status = 400, description = "The body or a mapping is not valid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant or virtual account", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A mapping already maps something else", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
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

/// Delete a virtual account and its tokens.
#[utoipa::path(
    delete,
    path = "/api/v1/tenants/{tenant}/virtual-accounts/{va}",
    tag = "virtual-accounts",
    params(
        ("tenant" = String, Path, description = "Tenant slug"),
        ("va" = String, Path, description = "Virtual account id"),
    ),
    responses(
        (status = 204, description = "Deleted, with its tokens"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant or virtual account", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "It still collaborates on resources (named in the detail)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn delete_va(
    State(app): Shared,
    headers: HeaderMap,
    Path((tenant, va)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    app.delete_virtual_account(&tenant, &va, &caller)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// List a virtual account's API tokens.
#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenant}/virtual-accounts/{va}/tokens",
    tag = "virtual-accounts",
    params(
        ("tenant" = String, Path, description = "Tenant slug"),
        ("va" = String, Path, description = "Virtual account id"),
    ),
    responses(
        (status = 200, description = "The virtual account's tokens, without secrets", body = TokenList),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant or virtual account", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn list_va_tokens(
    State(app): Shared,
    headers: HeaderMap,
    Path((tenant, va)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    Ok(json(
        StatusCode::OK,
        TokenList {
            tokens: app.va_tokens(&tenant, &va, &caller)?,
        },
    ))
}

/// Create a virtual-account token; `replaces` rotates an existing token, which stays valid
/// for `grace_seconds`.
#[utoipa::path(
    post,
    path = "/api/v1/tenants/{tenant}/virtual-accounts/{va}/tokens",
    tag = "virtual-accounts",
    params(
        ("tenant" = String, Path, description = "Tenant slug"),
        ("va" = String, Path, description = "Virtual account id"),
    ),
    request_body = NewVaToken,
    responses(
        (status = 201, description = "The token, with its secret shown this once", body = TokenCreated),
        (status = 400, description = "The body is not valid: name, expiry or grace period", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant, virtual account or replaced token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
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

/// Revoke one virtual-account token.
#[utoipa::path(
    delete,
    path = "/api/v1/tenants/{tenant}/virtual-accounts/{va}/tokens/{token}",
    tag = "virtual-accounts",
    params(
        ("tenant" = String, Path, description = "Tenant slug"),
        ("va" = String, Path, description = "Virtual account id"),
        ("token" = String, Path, description = "Token id"),
    ),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant, virtual account or token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn revoke_va_token(
    State(app): Shared,
    headers: HeaderMap,
    Path((tenant, va, token)): Path<(String, String, String)>,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    app.revoke_va_token(&tenant, &va, &token, &caller)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// List identity providers (JWT issuers).
#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenant}/identity-providers",
    tag = "identity-providers",
    params(("tenant" = String, Path, description = "Tenant slug")),
    responses(
        (status = 200, description = "Every identity provider", body = IdentityProviderList),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant (or a token of another tenant)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn list_idps(
    State(app): Shared,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    Ok(json(
        StatusCode::OK,
        IdentityProviderList {
            identity_providers: app.identity_providers(&tenant, &caller)?,
        },
    ))
}

/// Add an identity provider.
#[utoipa::path(
    post,
    path = "/api/v1/tenants/{tenant}/identity-providers",
    tag = "identity-providers",
    params(("tenant" = String, Path, description = "Tenant slug")),
    request_body = IdpInput,
    responses(
        (status = 201, description = "The identity provider", body = IdentityProvider),
        (status = 400, description = "Refused settings: the body, algorithms (HMAC, `none`), a non-https or private JWKS URL", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant (or a token of another tenant)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The name or the issuer is taken in this tenant, or the issuer is another tenant's too and audiences are missing", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
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

/// Replace an identity provider's settings.
#[utoipa::path(
    put,
    path = "/api/v1/tenants/{tenant}/identity-providers/{idp}",
    tag = "identity-providers",
    params(
        ("tenant" = String, Path, description = "Tenant slug"),
        ("idp" = String, Path, description = "Identity provider name"),
    ),
    request_body = IdpInput,
    responses(
        (status = 200, description = "The identity provider", body = IdentityProvider),
        (status = 400, description = "Refused settings, or the body names another provider than the path", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant or identity provider", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The issuer is taken in this tenant, or it is another tenant's too and audiences are missing", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
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

/// Delete an identity provider.
#[utoipa::path(
    delete,
    path = "/api/v1/tenants/{tenant}/identity-providers/{idp}",
    tag = "identity-providers",
    params(
        ("tenant" = String, Path, description = "Tenant slug"),
        ("idp" = String, Path, description = "Identity provider name"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant or identity provider", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Users, teams or virtual accounts still map it (named in the detail)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn delete_idp(
    State(app): Shared,
    headers: HeaderMap,
    Path((tenant, idp)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    app.delete_identity_provider(&tenant, &idp, &caller)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// List SSO configurations.
#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenant}/sso",
    tag = "sso",
    params(("tenant" = String, Path, description = "Tenant slug")),
    responses(
        (status = 200, description = "Every SSO configuration, never a secret", body = SsoList),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant (or a token of another tenant)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn list_sso(
    State(app): Shared,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    Ok(json(
        StatusCode::OK,
        SsoList {
            sso: app.sso_configs(&tenant, &caller)?,
        },
    ))
}

/// Add an SSO configuration.
#[utoipa::path(
    post,
    path = "/api/v1/tenants/{tenant}/sso",
    tag = "sso",
    params(("tenant" = String, Path, description = "Tenant slug")),
    request_body = SsoInput,
    responses(
        (status = 201, description = "The SSO configuration, without its secrets", body = SsoView),
        (status = 400, description = "The body or a setting is not valid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant (or a token of another tenant)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "An SSO configuration with this id exists", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
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

/// Replace an SSO configuration.
#[utoipa::path(
    put,
    path = "/api/v1/tenants/{tenant}/sso/{sso}",
    tag = "sso",
    params(
        ("tenant" = String, Path, description = "Tenant slug"),
        ("sso" = String, Path, description = "SSO configuration id"),
    ),
    request_body = SsoInput,
    responses(
        (status = 200, description = "The SSO configuration, without its secrets", body = SsoView),
        (status = 400, description = "A setting is not valid, or the body names another configuration than the path", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant or SSO configuration", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
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

/// Delete an SSO configuration.
#[utoipa::path(
    delete,
    path = "/api/v1/tenants/{tenant}/sso/{sso}",
    tag = "sso",
    params(
        ("tenant" = String, Path, description = "Tenant slug"),
        ("sso" = String, Path, description = "SSO configuration id"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant or SSO configuration", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The tenant is in `jit` mode and this is its last SSO configuration", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn delete_sso(
    State(app): Shared,
    headers: HeaderMap,
    Path((tenant, sso)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    app.delete_sso_config(&tenant, &sso, &caller)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Generate the SCIM token of an SSO configuration (replacing any previous one).
#[utoipa::path(
    post,
    path = "/api/v1/tenants/{tenant}/sso/{sso}/scim-token",
    tag = "sso",
    params(
        ("tenant" = String, Path, description = "Tenant slug"),
        ("sso" = String, Path, description = "SSO configuration id"),
    ),
    responses(
        (status = 201, description = "The SCIM token, shown this once, with the SCIM base URL it opens", body = ScimToken),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant or SSO configuration", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
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

/// List resources.
#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenant}/resources",
    tag = "resources",
    params(("tenant" = String, Path, description = "Tenant slug")),
    responses(
        (status = 200, description = "Every resource", body = ResourceList),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant (or a token of another tenant)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn list_resources(
    State(app): Shared,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    Ok(json(
        StatusCode::OK,
        ResourceList {
            resources: app.resources(&tenant, &caller)?,
        },
    ))
}

/// Create a resource with its collaborators.
#[utoipa::path(
    post,
    path = "/api/v1/tenants/{tenant}/resources",
    tag = "resources",
    params(("tenant" = String, Path, description = "Tenant slug")),
    request_body = NewResource,
    responses(
        (status = 201, description = "The resource", body = Resource),
        (status = 400, description = "The body, the kind, the name or a collaborator is not valid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant (or a token of another tenant)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
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

/// Delete a resource.
#[utoipa::path(
    delete,
    path = "/api/v1/tenants/{tenant}/resources/{resource}",
    tag = "resources",
    params(
        ("tenant" = String, Path, description = "Tenant slug"),
        ("resource" = String, Path, description = "Resource id"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant or resource", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn delete_resource(
    State(app): Shared,
    headers: HeaderMap,
    Path((tenant, resource)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    app.delete_resource(&tenant, &resource, &caller)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A resource's collaborators, all of them.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Collaborators {
    collaborators: Vec<Collaborator>,
}

/// Replace a resource's collaborators.
#[utoipa::path(
    put,
    path = "/api/v1/tenants/{tenant}/resources/{resource}/collaborators",
    tag = "resources",
    params(
        ("tenant" = String, Path, description = "Tenant slug"),
        ("resource" = String, Path, description = "Resource id"),
    ),
    request_body = Collaborators,
    responses(
        (status = 200, description = "The resource with its new collaborators", body = Resource),
        (status = 400, description = "The body is not valid or names an unknown subject", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant or resource", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
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
