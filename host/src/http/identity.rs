//! Routes of the identity model: provisioning mode, users, teams, tokens, audit, outbox.

use super::{bearer, parse_json, Shared};
use crate::app::{
    App, AppError, Caller, Invite, MemberChange, NewTeam, NewToken, TeamPatch, UserQuery,
};
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use gatehouse_rules::Role;
use serde::de::DeserializeOwned;
use serde::Deserialize;
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModeBody {
    mode: String,
}

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

async fn get_user(
    State(app): Shared,
    headers: HeaderMap,
    Path((tenant, user)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    Ok(json(StatusCode::OK, app.user(&tenant, &user, &caller)?))
}

async fn delete_user(
    State(app): Shared,
    headers: HeaderMap,
    Path((tenant, user)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    app.delete_user(&tenant, &user, &caller)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleBody {
    role: Role,
}

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

async fn reset_password(
    State(app): Shared,
    headers: HeaderMap,
    Path((tenant, user)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    app.reset_password(&tenant, &user, &caller)?;
    Ok(StatusCode::ACCEPTED.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Mappings {
    mappings: Vec<crate::identity::Mapping>,
}

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

async fn list_tokens(
    State(app): Shared,
    headers: HeaderMap,
    Path((tenant, user)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    Ok(json(
        StatusCode::OK,
        serde_json::json!({ "tokens": app.pats(&tenant, &user, &caller)? }),
    ))
}

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

async fn revoke_all_tokens(
    State(app): Shared,
    headers: HeaderMap,
    Path((tenant, user)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    let revoked = app.revoke_pats(&tenant, &user, None, &caller)?;
    Ok(json(
        StatusCode::OK,
        serde_json::json!({ "revoked": revoked }),
    ))
}

async fn revoke_token(
    State(app): Shared,
    headers: HeaderMap,
    Path((tenant, user, token)): Path<(String, String, String)>,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    app.revoke_pats(&tenant, &user, Some(&token), &caller)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_teams(
    State(app): Shared,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    Ok(json(
        StatusCode::OK,
        serde_json::json!({ "teams": app.teams(&tenant, &caller)? }),
    ))
}

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

async fn get_team(
    State(app): Shared,
    headers: HeaderMap,
    Path((tenant, team)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    Ok(json(StatusCode::OK, app.team(&tenant, &team, &caller)?))
}

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

async fn delete_team(
    State(app): Shared,
    headers: HeaderMap,
    Path((tenant, team)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    app.delete_team(&tenant, &team, &caller)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Members {
    members: Vec<String>,
}

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

async fn recompute_roles(
    State(app): Shared,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    let changed = app.recompute_all_roles(&tenant, &caller)?;
    Ok(json(
        StatusCode::OK,
        serde_json::json!({ "changed": changed }),
    ))
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

async fn audit(
    State(app): Shared,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    let query: AuditQuery = parse_query(query.as_deref())?;
    Ok(json(
        StatusCode::OK,
        app.audit(
            &tenant,
            query.after.unwrap_or(0),
            query.limit.unwrap_or(100),
            &caller,
        )?,
    ))
}

async fn outbox(
    State(app): Shared,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Result<Response, AppError> {
    let caller = caller(&app, &tenant, &headers)?;
    Ok(json(
        StatusCode::OK,
        serde_json::json!({ "messages": app.outbox(&tenant, &caller)? }),
    ))
}
