//! Routes of the identity model: provisioning mode, users, teams, tokens, audit, outbox.

use super::{bearer, parse_json, Problem, Shared};
use crate::app::{
    App, AppError, Caller, Invite, MemberChange, NewTeam, NewToken, Page, TeamPatch, TeamView,
    TokenCreated, UserQuery,
};
use crate::identity::{AuditEntry, OutboxMessage, Token, User};
use crate::store::TenantRecord;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use gatehouse_rules::Role;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The identity routes, under `/api/v1`.
pub(super) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/tenants/{tenant}/provisioning", put(set_mode))
        .route("/tenants/{tenant}/users", get(list_users).post(invite_user))
        .route("/tenants/{tenant}/users/me", get(me))
        .route(
            "/tenants/{tenant}/users/{user}",
            get(get_user).delete(delete_user),
        )
        .route(
            "/tenants/{tenant}/users/{user}/deactivate",
            post(deactivate_user),
        )
        .route(
            "/tenants/{tenant}/users/{user}/reactivate",
            post(reactivate_user),
        )
        .route(
            "/tenants/{tenant}/users/{user}/role",
            put(set_role).delete(clear_role),
        )
        .route(
            "/tenants/{tenant}/users/{user}/reset-password",
            post(reset_password),
        )
        .route("/tenants/{tenant}/users/{user}/mappings", put(set_mappings))
        .route(
            "/tenants/{tenant}/users/{user}/tokens",
            get(list_tokens)
                .post(create_token)
                .delete(revoke_all_tokens),
        )
        .route(
            "/tenants/{tenant}/users/{user}/tokens/{token}",
            axum::routing::delete(revoke_token),
        )
        .route("/tenants/{tenant}/teams", get(list_teams).post(create_team))
        .route(
            "/tenants/{tenant}/teams/{team}",
            get(get_team).patch(patch_team).delete(delete_team),
        )
        .route(
            "/tenants/{tenant}/teams/{team}/members",
            put(replace_members).patch(change_members),
        )
        .route("/tenants/{tenant}/roles/recompute", post(recompute_roles))
        .route("/tenants/{tenant}/audit", get(audit))
        .route("/tenants/{tenant}/outbox", get(outbox))
}

fn caller(app: &App, tenant: &str, headers: &HeaderMap) -> Result<Caller, AppError> {
    app.authenticate(Some(tenant), bearer(headers))
}

/// Parses a query string into `T`, answering 400 with the reason.
fn parse_query<T: DeserializeOwned + Default>(query: Option<&str>) -> Result<T, AppError> {
    match query {
        None | Some("") => Ok(T::default()),
        Some(query) => serde_urlencoded::from_str(query)
            .map_err(|e| AppError::BadRequest(format!("query string is not valid: {e}"))),
    }
}

fn json<T: serde::Serialize>(status: StatusCode, value: T) -> Response {
    (status, Json(value)).into_response()
}

/// Tokens of one owner (a user or a virtual account), never their secrets.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct TokenList {
    pub(super) tokens: Vec<Token>,
}

/// How many tokens a revocation revoked.
#[derive(Serialize, utoipa::ToSchema)]
struct Revoked {
    revoked: usize,
}

/// Every team of a tenant, with its members.
#[derive(Serialize, utoipa::ToSchema)]
struct TeamList {
    teams: Vec<TeamView>,
}

/// How many users' effective roles a recomputation changed.
#[derive(Serialize, utoipa::ToSchema)]
struct Recomputed {
    changed: usize,
}

/// A tenant's outbox, oldest first.
#[derive(Serialize, utoipa::ToSchema)]
struct OutboxList {
    messages: Vec<OutboxMessage>,
}

/// A provisioning mode.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ModeBody {
    /// `scim`, `jit` (needs an SSO configuration) or `invite_only`.
    #[schema(value_type = gatehouse_rules::ProvisioningMode)]
    mode: String,
}

/// Set the tenant's provisioning mode: `scim`, `jit` (needs an SSO configuration) or
/// `invite_only`. Changing it removes no one.
#[utoipa::path(
    put,
    path = "/api/v1/tenants/{tenant}/provisioning",
    tag = "tenants",
    params(("tenant" = String, Path, description = "Tenant slug")),
    request_body = ModeBody,
    responses(
        (status = 200, description = "The tenant in its new mode", body = TenantRecord),
        (status = 400, description = "The body is not valid or the mode is unknown", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant (or a token of another tenant)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`jit` without an SSO configuration", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn set_mode(
    State(app): Shared,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    let request: ModeBody = parse_json(&body)?;
    Ok(json(
        StatusCode::OK,
        app.set_mode(&tenant, &request.mode, &caller)?,
    ))
}

/// List users, filtered and paged.
#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenant}/users",
    tag = "users",
    params(
        ("tenant" = String, Path, description = "Tenant slug"),
        UserQuery,
    ),
    responses(
        (status = 200, description = "One page of users, in id order", body = Page<User>),
        (status = 400, description = "The query string is not valid, the limit is out of range or a time is not RFC 3339", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant (or a token of another tenant)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn list_users(
    State(app): Shared,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    let query: UserQuery = parse_query(query.as_deref())?;
    Ok(json(StatusCode::OK, app.users(&tenant, &query, &caller)?))
}

/// Invite a user; `send_password_email` queues a one-time link to set a password.
#[utoipa::path(
    post,
    path = "/api/v1/tenants/{tenant}/users",
    tag = "users",
    params(("tenant" = String, Path, description = "Tenant slug")),
    request_body = Invite,
    responses(
        (status = 201, description = "The invited user", body = User),
        (status = 400, description = "The body or the email is not valid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant (or a token of another tenant)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A user with this email exists", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The tenant's policy could not decide effective roles; nothing changed", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The tenant's policy ran past its deadline, or every sandbox was busy; nothing changed, try again (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn invite_user(
    State(app): Shared,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    let invite: Invite = parse_json(&body)?;
    Ok(json(
        StatusCode::CREATED,
        app.invite_user(&tenant, invite, &caller)?,
    ))
}

/// The user the token belongs to.
#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenant}/users/me",
    tag = "users",
    params(("tenant" = String, Path, description = "Tenant slug")),
    responses(
        (status = 200, description = "The token's own user", body = User),
        (status = 400, description = "The operator token is not a user of any tenant", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant (or a token of another tenant)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn me(
    State(app): Shared,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    match &caller {
        Caller::Admin { user } | Caller::Member { user } => {
            Ok(json(StatusCode::OK, app.user(&tenant, user, &caller)?))
        }
        Caller::Operator => Err(AppError::BadRequest(
            "the operator is not a user of any tenant".into(),
        )),
    }
}

/// Read a user (a member's token: only its own user).
#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenant}/users/{user}",
    tag = "users",
    params(
        ("tenant" = String, Path, description = "Tenant slug"),
        ("user" = String, Path, description = "User id"),
    ),
    responses(
        (status = 200, description = "The user", body = User),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token for another user", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant or user", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn get_user(
    State(app): Shared,
    headers: HeaderMap,
    Path((tenant, user)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    Ok(json(StatusCode::OK, app.user(&tenant, &user, &caller)?))
}

/// Delete a user, its tokens and its mappings.
#[utoipa::path(
    delete,
    path = "/api/v1/tenants/{tenant}/users/{user}",
    tag = "users",
    params(
        ("tenant" = String, Path, description = "Tenant slug"),
        ("user" = String, Path, description = "User id"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant or user", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The user still belongs to teams or resources (named in the detail)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn delete_user(
    State(app): Shared,
    headers: HeaderMap,
    Path((tenant, user)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    app.delete_user(&tenant, &user, &caller)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Deactivate a user: the record and memberships stay; its tokens stop authenticating on
/// the next request.
#[utoipa::path(
    post,
    path = "/api/v1/tenants/{tenant}/users/{user}/deactivate",
    tag = "users",
    params(
        ("tenant" = String, Path, description = "Tenant slug"),
        ("user" = String, Path, description = "User id"),
    ),
    responses(
        (status = 200, description = "The deactivated user", body = User),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant or user", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "An admin cannot deactivate their own user", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn deactivate_user(
    State(app): Shared,
    headers: HeaderMap,
    Path((tenant, user)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    Ok(json(
        StatusCode::OK,
        app.set_user_active(&tenant, &user, false, &caller)?,
    ))
}

/// Reactivate a deactivated user.
#[utoipa::path(
    post,
    path = "/api/v1/tenants/{tenant}/users/{user}/reactivate",
    tag = "users",
    params(
        ("tenant" = String, Path, description = "Tenant slug"),
        ("user" = String, Path, description = "User id"),
    ),
    responses(
        (status = 200, description = "The reactivated user", body = User),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant or user", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn reactivate_user(
    State(app): Shared,
    headers: HeaderMap,
    Path((tenant, user)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    Ok(json(
        StatusCode::OK,
        app.set_user_active(&tenant, &user, true, &caller)?,
    ))
}

/// A manual role.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RoleBody {
    role: Role,
}

/// Set the user's manual role; the policy decides the effective role.
#[utoipa::path(
    put,
    path = "/api/v1/tenants/{tenant}/users/{user}/role",
    tag = "users",
    params(
        ("tenant" = String, Path, description = "Tenant slug"),
        ("user" = String, Path, description = "User id"),
    ),
    request_body = RoleBody,
    responses(
        (status = 200, description = "The user with its recomputed effective role", body = User),
        (status = 400, description = "The body is not valid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant or user", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The tenant's policy could not decide effective roles; nothing changed", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The tenant's policy ran past its deadline, or every sandbox was busy; nothing changed, try again (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn set_role(
    State(app): Shared,
    headers: HeaderMap,
    Path((tenant, user)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    let request: RoleBody = parse_json(&body)?;
    Ok(json(
        StatusCode::OK,
        app.set_manual_role(&tenant, &user, Some(request.role), &caller)?,
    ))
}

/// Clear the user's manual role; the policy decides the effective role.
#[utoipa::path(
    delete,
    path = "/api/v1/tenants/{tenant}/users/{user}/role",
    tag = "users",
    params(
        ("tenant" = String, Path, description = "Tenant slug"),
        ("user" = String, Path, description = "User id"),
    ),
    responses(
        (status = 200, description = "The user with its recomputed effective role", body = User),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant or user", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The tenant's policy could not decide effective roles; nothing changed", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The tenant's policy ran past its deadline, or every sandbox was busy; nothing changed, try again (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn clear_role(
    State(app): Shared,
    headers: HeaderMap,
    Path((tenant, user)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    Ok(json(
        StatusCode::OK,
        app.set_manual_role(&tenant, &user, None, &caller)?,
    ))
}

/// Send the user a one-time link to set a new password.
#[utoipa::path(
    post,
    path = "/api/v1/tenants/{tenant}/users/{user}/reset-password",
    tag = "users",
    params(
        ("tenant" = String, Path, description = "Tenant slug"),
        ("user" = String, Path, description = "User id"),
    ),
    responses(
        (status = 202, description = "A one-time link to set a password is queued in the outbox"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant or user", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The user is deactivated", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn reset_password(
    State(app): Shared,
    headers: HeaderMap,
    Path((tenant, user)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    app.reset_password(&tenant, &user, &caller)?;
    Ok(StatusCode::ACCEPTED.into_response())
}

/// A user's identity-provider mappings, all of them.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Mappings {
    mappings: Vec<crate::identity::Mapping>,
}

/// Replace the user's identity-provider mappings (each `{idp, value}` maps one user).
#[utoipa::path(
    put,
    path = "/api/v1/tenants/{tenant}/users/{user}/mappings",
    tag = "users",
    params(
        ("tenant" = String, Path, description = "Tenant slug"),
        ("user" = String, Path, description = "User id"),
    ),
    request_body = Mappings,
    responses(
        (status = 200, description = "The user with its new mappings", body = User),
        (status = 400, description = "The body is not valid or names an unknown identity provider", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant or user", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A mapping already maps another user", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn set_mappings(
    State(app): Shared,
    headers: HeaderMap,
    Path((tenant, user)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    let request: Mappings = parse_json(&body)?;
    Ok(json(
        StatusCode::OK,
        app.set_user_mappings(&tenant, &user, request.mappings, &caller)?,
    ))
}

/// List a user's personal access tokens.
#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenant}/users/{user}/tokens",
    tag = "tokens",
    params(
        ("tenant" = String, Path, description = "Tenant slug"),
        ("user" = String, Path, description = "User id"),
    ),
    responses(
        (status = 200, description = "The user's tokens, without secrets", body = TokenList),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token for another user", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant or user", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn list_tokens(
    State(app): Shared,
    headers: HeaderMap,
    Path((tenant, user)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    Ok(json(
        StatusCode::OK,
        TokenList {
            tokens: app.pats(&tenant, &user, &caller)?,
        },
    ))
}

/// Create a personal access token for a user (a member: for itself).
#[utoipa::path(
    post,
    path = "/api/v1/tenants/{tenant}/users/{user}/tokens",
    tag = "tokens",
    params(
        ("tenant" = String, Path, description = "Tenant slug"),
        ("user" = String, Path, description = "User id"),
    ),
    request_body = NewToken,
    responses(
        (status = 201, description = "The token, with its secret shown this once", body = TokenCreated),
        (status = 400, description = "The body is not valid: name, or expiry out of range", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token for another user", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant or user", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The user is deactivated", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn create_token(
    State(app): Shared,
    headers: HeaderMap,
    Path((tenant, user)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    let request: NewToken = parse_json(&body)?;
    Ok(json(
        StatusCode::CREATED,
        app.create_pat(&tenant, &user, request, &caller)?,
    ))
}

/// Revoke every personal access token of a user.
#[utoipa::path(
    delete,
    path = "/api/v1/tenants/{tenant}/users/{user}/tokens",
    tag = "tokens",
    params(
        ("tenant" = String, Path, description = "Tenant slug"),
        ("user" = String, Path, description = "User id"),
    ),
    responses(
        (status = 200, description = "How many tokens were revoked", body = Revoked),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token for another user", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant or user", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn revoke_all_tokens(
    State(app): Shared,
    headers: HeaderMap,
    Path((tenant, user)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    let revoked = app.revoke_pats(&tenant, &user, None, &caller)?;
    Ok(json(StatusCode::OK, Revoked { revoked }))
}

/// Revoke one personal access token.
#[utoipa::path(
    delete,
    path = "/api/v1/tenants/{tenant}/users/{user}/tokens/{token}",
    tag = "tokens",
    params(
        ("tenant" = String, Path, description = "Tenant slug"),
        ("user" = String, Path, description = "User id"),
        ("token" = String, Path, description = "Token id"),
    ),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token for another user", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant, user or token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn revoke_token(
    State(app): Shared,
    headers: HeaderMap,
    Path((tenant, user, token)): Path<(String, String, String)>,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    app.revoke_pats(&tenant, &user, Some(&token), &caller)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// List teams.
#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenant}/teams",
    tag = "teams",
    params(("tenant" = String, Path, description = "Tenant slug")),
    responses(
        (status = 200, description = "Every team with its members", body = TeamList),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant (or a token of another tenant)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn list_teams(
    State(app): Shared,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    Ok(json(
        StatusCode::OK,
        TeamList {
            teams: app.teams(&tenant, &caller)?,
        },
    ))
}

/// Create a team with a role, members and identity-provider mappings.
#[utoipa::path(
    post,
    path = "/api/v1/tenants/{tenant}/teams",
    tag = "teams",
    params(("tenant" = String, Path, description = "Tenant slug")),
    request_body = NewTeam,
    responses(
        (status = 201, description = "The team", body = TeamView),
        (status = 400, description = "The body, the team name, a mapping or a member is not valid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant (or a token of another tenant)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A team with this name (case-insensitively) or one of the mappings exists", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The tenant's policy could not decide effective roles; nothing changed", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The tenant's policy ran past its deadline, or every sandbox was busy; nothing changed, try again (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn create_team(
    State(app): Shared,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    let request: NewTeam = parse_json(&body)?;
    Ok(json(
        StatusCode::CREATED,
        app.create_team(&tenant, request, &caller)?,
    ))
}

/// Read a team.
#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenant}/teams/{team}",
    tag = "teams",
    params(
        ("tenant" = String, Path, description = "Tenant slug"),
        ("team" = String, Path, description = "Team id"),
    ),
    responses(
        (status = 200, description = "The team with its members", body = TeamView),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant or team", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn get_team(
    State(app): Shared,
    headers: HeaderMap,
    Path((tenant, team)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    Ok(json(StatusCode::OK, app.team(&tenant, &team, &caller)?))
}

/// Change a team's name, role or mappings; absent fields stay, `role: null` clears the role.
#[utoipa::path(
    patch,
    path = "/api/v1/tenants/{tenant}/teams/{team}",
    tag = "teams",
    params(
        ("tenant" = String, Path, description = "Tenant slug"),
        ("team" = String, Path, description = "Team id"),
    ),
    request_body = TeamPatch,
    responses(
        (status = 200, description = "The changed team", body = TeamView),
        (status = 400, description = "The body, the name or a mapping is not valid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant or team", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The name is taken, or the built-in team cannot be renamed", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The tenant's policy could not decide effective roles; nothing changed", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The tenant's policy ran past its deadline, or every sandbox was busy; nothing changed, try again (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn patch_team(
    State(app): Shared,
    headers: HeaderMap,
    Path((tenant, team)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    let request: TeamPatch = parse_json(&body)?;
    Ok(json(
        StatusCode::OK,
        app.patch_team(&tenant, &team, request, &caller)?,
    ))
}

/// Delete a team; its members' effective roles are recomputed.
#[utoipa::path(
    delete,
    path = "/api/v1/tenants/{tenant}/teams/{team}",
    tag = "teams",
    params(
        ("tenant" = String, Path, description = "Tenant slug"),
        ("team" = String, Path, description = "Team id"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant or team", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The built-in team cannot be deleted", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The tenant's policy could not decide effective roles; nothing changed", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The tenant's policy ran past its deadline, or every sandbox was busy; nothing changed, try again (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn delete_team(
    State(app): Shared,
    headers: HeaderMap,
    Path((tenant, team)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    app.delete_team(&tenant, &team, &caller)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A team's members (user ids), all of them.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Members {
    members: Vec<String>,
}

/// Replace a team's members.
#[utoipa::path(
    put,
    path = "/api/v1/tenants/{tenant}/teams/{team}/members",
    tag = "teams",
    params(
        ("tenant" = String, Path, description = "Tenant slug"),
        ("team" = String, Path, description = "Team id"),
    ),
    request_body = Members,
    responses(
        (status = 200, description = "The team with its new members", body = TeamView),
        (status = 400, description = "The body is not valid or names an unknown user", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant or team", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The members of the built-in team cannot be changed", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The tenant's policy could not decide effective roles; nothing changed", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The tenant's policy ran past its deadline, or every sandbox was busy; nothing changed, try again (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn replace_members(
    State(app): Shared,
    headers: HeaderMap,
    Path((tenant, team)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    let request: Members = parse_json(&body)?;
    let change = MemberChange {
        add: request.members,
        remove: Vec::new(),
    };
    Ok(json(
        StatusCode::OK,
        app.change_members(&tenant, &team, change, true, &caller)?,
    ))
}

/// Add and remove team members.
#[utoipa::path(
    patch,
    path = "/api/v1/tenants/{tenant}/teams/{team}/members",
    tag = "teams",
    params(
        ("tenant" = String, Path, description = "Tenant slug"),
        ("team" = String, Path, description = "Team id"),
    ),
    request_body = MemberChange,
    responses(
        (status = 200, description = "The team with its new members", body = TeamView),
        (status = 400, description = "The body is not valid or names an unknown user", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant or team", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The members of the built-in team cannot be changed", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The tenant's policy could not decide effective roles; nothing changed", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The tenant's policy ran past its deadline, or every sandbox was busy; nothing changed, try again (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn change_members(
    State(app): Shared,
    headers: HeaderMap,
    Path((tenant, team)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    let change: MemberChange = parse_json(&body)?;
    Ok(json(
        StatusCode::OK,
        app.change_members(&tenant, &team, change, false, &caller)?,
    ))
}

/// Recompute every user's effective role (after a policy change).
#[utoipa::path(
    post,
    path = "/api/v1/tenants/{tenant}/roles/recompute",
    tag = "users",
    params(("tenant" = String, Path, description = "Tenant slug")),
    responses(
        (status = 200, description = "How many users' effective roles changed", body = Recomputed),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant (or a token of another tenant)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The tenant's policy could not decide effective roles; nothing changed", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The tenant's policy ran past its deadline, or every sandbox was busy; nothing changed, try again (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn recompute_roles(
    State(app): Shared,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    let changed = app.recompute_all_roles(&tenant, &caller)?;
    Ok(json(StatusCode::OK, Recomputed { changed }))
}

/// Paging of the audit log.
#[derive(Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct AuditQuery {
    /// Only entries after this sequence number (the previous page's `next`; default 0).
    after: Option<u64>,
    /// Page size (1-1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// Only entries by this actor (exact: a user or token id, `operator`, `scim:...`).
    actor: Option<String>,
    /// Only entries of this action (exact, e.g. `user.invite`; `user.*` matches a prefix).
    action: Option<String>,
    /// Only entries at or after this time (RFC 3339).
    since: Option<String>,
    /// Only entries before this time (RFC 3339).
    until: Option<String>,
}

/// The tenant's audit log: append-only, never a secret.
#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenant}/audit",
    tag = "audit",
    params(
        ("tenant" = String, Path, description = "Tenant slug"),
        AuditQuery,
    ),
    responses(
        (status = 200, description = "One page of audit entries, oldest first", body = Page<AuditEntry>),
        (status = 400, description = "The query string is not valid or the limit is out of range", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A member's token: this needs a tenant admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant (or a token of another tenant)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn audit(
    State(app): Shared,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    let query: AuditQuery = parse_query(query.as_deref())?;
    let filter = crate::app::AuditFilter::parse(
        query.actor,
        query.action,
        query.since.as_deref(),
        query.until.as_deref(),
    )?;
    Ok(json(
        StatusCode::OK,
        app.audit_matching(
            &tenant,
            query.after.unwrap_or(0),
            query.limit.unwrap_or(100),
            &filter,
            &caller,
        )?,
    ))
}

/// The tenant's outbox of emails (operator only).
#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenant}/outbox",
    tag = "audit",
    params(("tenant" = String, Path, description = "Tenant slug")),
    responses(
        (status = 200, description = "Queued and sent emails, oldest first", body = OutboxList),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the operator: the outbox is for the operator", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant (or a token of another tenant)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn outbox(
    State(app): Shared,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    Ok(json(
        StatusCode::OK,
        OutboxList {
            messages: app.outbox(&tenant, &caller)?,
        },
    ))
}
