//! The admin API's OpenAPI document, generated from the handlers' `#[utoipa::path]`
//! attributes and the wire types' `ToSchema` derives, and served (built once) at
//! `GET /api/v1/openapi.json`. A handler added to the router must be listed in
//! [`ApiDoc`]'s `paths(...)`; `tests/tests/openapi.rs` fails when the two disagree.

use super::{directory, edge, fleet, identity, migration, password, sso};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::sync::LazyLock;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};

const DESCRIPTION: &str = "\
Administration of a Gatehouse server: tenants and their policies, users, teams, tokens, \
virtual accounts, identity providers, SSO configurations and resources.

Every `/api/v1` route except this document takes `Authorization: Bearer <token>`: the \
operator token (everything, in every tenant), a tenant admin's personal access token \
(`ghp_<tenant>_…`: everything in that tenant) or a member's (itself only). A tenant token on \
another tenant's route answers 404, never 403, so tenant names do not leak.

Errors are `application/problem+json` bodies (`Problem`) with `status`, `detail` and a \
stable `reason`. A 5xx body carries only a request id (also in the `x-request-id` header of \
every answer).";

/// The document: every route the router serves, except the 404 fallback.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Gatehouse admin API",
        version = env!("CARGO_PKG_VERSION"),
        description = DESCRIPTION,
    ),
    paths(
        super::healthz,
        super::readyz,
        super::metrics_text,
        document,
        super::create_tenant,
        super::list_tenants,
        super::get_tenant,
        identity::set_mode,
        super::policy_overview,
        super::policy_versions,
        super::upload_policy,
        super::dry_run_policy,
        super::start_shadow,
        super::shadow_state,
        super::discard_shadow,
        super::promote_shadow,
        super::activate_policy,
        super::rollback_policy,
        super::evaluate,
        super::explain_policy,
        fleet::issue,
        fleet::list,
        fleet::revoke,
        fleet::stream,
        identity::list_users,
        identity::invite_user,
        identity::me,
        identity::get_user,
        identity::delete_user,
        identity::deactivate_user,
        identity::reactivate_user,
        identity::set_role,
        identity::clear_role,
        identity::reset_password,
        identity::set_mappings,
        identity::recompute_roles,
        identity::list_tokens,
        identity::create_token,
        identity::revoke_all_tokens,
        identity::revoke_token,
        identity::list_teams,
        identity::create_team,
        identity::get_team,
        identity::patch_team,
        identity::delete_team,
        identity::replace_members,
        identity::change_members,
        identity::audit,
        identity::outbox,

        directory::list_vas,
        directory::create_va,
        directory::get_va,
        directory::patch_va,
        directory::delete_va,
        directory::list_va_tokens,
        directory::create_va_token,
        directory::revoke_va_token,
        directory::list_idps,
        directory::create_idp,
        directory::replace_idp,
        directory::delete_idp,
        directory::list_sso,
        directory::create_sso,
        directory::replace_sso,
        directory::delete_sso,
        directory::scim_token,
        directory::list_resources,
        directory::create_resource,
        directory::delete_resource,
        directory::set_collaborators,
        migration::migration_plan,
        migration::migration_apply,
        edge::resolve,
        edge::forward_auth,
        edge::forward_auth_below,
        sso::login,
        sso::callback,
        sso::token_login,
        sso::logout,
        password::password_page,
        password::set_password,
        password::password_login,
        password::login_page,
    ),
    modifiers(&BearerAndInternalErrors),
    tags(
        (name = "health", description = "Liveness, readiness, metrics and this document; no token needed"),
        (name = "tenants", description = "Tenants (operator) and their provisioning mode"),
        (name = "policies", description = "A tenant's policy: upload, activate, roll back, evaluate, explain"),
        (name = "users", description = "Users: invitations, lifecycle, roles, identity-provider mappings"),
        (name = "teams", description = "Teams, their members and roles"),
        (name = "tokens", description = "Users' personal access tokens"),
        (name = "virtual-accounts", description = "Machine identities and their API tokens"),
        (name = "identity-providers", description = "JWT issuers whose tokens the edge validates"),
        (name = "sso", description = "SSO configurations and their SCIM tokens"),
        (name = "resources", description = "Resources and their collaborators"),
        (name = "migration", description = "Migration from the legacy model: plan (a dry run) and apply (docs/migration.md)"),
        (name = "audit", description = "The audit log and the outbox"),
        (name = "login", description = "SSO login (the OIDC code flow and the direct ID-token form), password login, set-password links and the login page; logins answer a Gatehouse session token"),
        (name = "edge", description = "Token evaluation for gateways: the bearer token of a request for a tenant → who that is (docs/edge.md)"),
        (name = "edges", description = "The edge fleet: edge credentials (operator) and the stream each `gatehouse edge` follows (docs/operating.md)"),
    ),
)]
pub struct ApiDoc;

/// Declares the `bearer` scheme the operations name, and the 500 that any authenticated
/// operation can answer (a store failure), so each handler lists only its own errors.
struct BearerAndInternalErrors;

impl Modify for BearerAndInternalErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The operator token, or a personal access token (`ghp_<tenant>_…`) of \
                         the tenant in the path",
                    ))
                    .build(),
            ),
        );
        let internal = ResponseBuilder::new()
            .description("Internal error; the body carries only the request id")
            .content(
                "application/problem+json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Problem")))
                    .build(),
            )
            .build();
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                if operation.security.as_ref().is_some_and(|s| !s.is_empty()) {
                    operation
                        .responses
                        .responses
                        .insert("500".to_owned(), internal.clone().into());
                }
            }
        }
    }
}

/// The document as JSON, built on first use.
pub fn openapi_json() -> &'static str {
    static JSON: LazyLock<String> = LazyLock::new(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .expect("the OpenAPI document serializes")
    });
    &JSON
}

/// This document.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "health",
    responses((
        status = 200,
        description = "The OpenAPI document of this API",
        body = Object,
        content_type = "application/json",
    )),
)]
pub(super) async fn document() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json()).into_response()
}
