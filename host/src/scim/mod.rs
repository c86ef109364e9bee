//! SCIM 2.0 (RFC 7643/7644) wire layer, free of HTTP: the filter and PATCH-path grammar
//! (`filter`), the PATCH applier (`patch`), resources, their stored SCIM attributes and
//! the discovery documents (`resource`), and the failures SCIM clients understand
//! ([`ScimError`]). `app::scim` carries the operations out; `http::scim` serves them.

pub mod filter;
pub mod patch;
pub mod resource;

use crate::app::AppError;

/// The SCIM error message schema.
pub const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";
/// The list response schema.
pub const LIST_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
/// The PATCH request schema.
pub const PATCH_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
/// The response header of `GET /ServiceProviderConfig` that carries the largest request
/// body accepted, in bytes (decision 55: not a key of the resource).
pub const MAX_REQUEST_BYTES_HEADER: &str = "gatehouse-scim-max-request-bytes";
/// The search request schema.
pub const SEARCH_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:SearchRequest";

/// What a SCIM request can fail with; `http::scim` turns each into an RFC 7644 error body
/// (status as a string, `scimType` where the RFC defines one).
#[derive(Debug, thiserror::Error)]
pub enum ScimError {
    /// 401: missing, wrong, rotated or other-tenant token (never says which).
    #[error("a valid SCIM bearer token for this endpoint is required")]
    Unauthorized,
    /// 400 `invalidFilter`.
    #[error("filter {0}")]
    InvalidFilter(String),
    /// 400 `invalidPath`.
    #[error("{0}")]
    InvalidPath(String),
    /// 400 `invalidValue`.
    #[error("{0}")]
    InvalidValue(String),
    /// 400 `invalidSyntax`.
    #[error("{0}")]
    InvalidSyntax(String),
    /// 400 `noTarget`.
    #[error("{0}")]
    NoTarget(String),
    /// 400 `mutability`.
    #[error("{0}")]
    Mutability(String),
    /// 409 `uniqueness`.
    #[error("{0}")]
    Uniqueness(String),
    /// 409 without a `scimType`.
    #[error("{0}")]
    Conflict(String),
    /// 403: the tenant is not in `scim` provisioning mode, so SCIM may not change it.
    #[error("{0}")]
    Forbidden(String),
    /// 404.
    #[error("{0} not found")]
    NotFound(String),
    /// 412: `If-Match` names another version.
    #[error("the resource changed: its version is now {0}")]
    PreconditionFailed(String),
    /// 413.
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
    /// 429.
    #[error("too many requests for this SCIM connection: retry after {0} s")]
    RateLimited(u64),
    /// 503 with `Retry-After`: the store cannot be reached now.
    #[error("the store is unavailable, try again shortly: {0}")]
    Unavailable(String),
    /// 501.
    #[error("{0} is not implemented")]
    NotImplemented(&'static str),
    /// 405, with the methods the resource allows (its `Allow` header, RFC 9110 §15.5.6).
    #[error("method not allowed here: use {0}")]
    MethodNotAllowed(&'static str),
    /// 500 (detail logged, never shown).
    #[error("{0}")]
    Internal(String),
}

impl From<AppError> for ScimError {
    fn from(e: AppError) -> Self {
        match e {
            AppError::Unauthorized | AppError::Forbidden(_) => ScimError::Unauthorized,
            AppError::NotFound(what) => ScimError::NotFound(what),
            AppError::BadRequest(why) => ScimError::InvalidValue(why),
            AppError::Conflict(why) => ScimError::Uniqueness(why),
            // A deadline or a full sandbox pool passes: the IdP should retry (503).
            AppError::PolicyFailed(e) if e.is_transient() => ScimError::Unavailable(format!(
                "the tenant's policy could not decide roles just now, so nothing changed: {e}"
            )),
            AppError::PolicyFailed(e) => ScimError::Internal(format!(
                "the tenant's policy could not decide roles, so nothing changed: {e}"
            )),
            AppError::PolicyRefused(e) => ScimError::Internal(e.to_string()),
            e @ (AppError::CasesFailed { .. }
            | AppError::LoginRefused { .. }
            | AppError::LoginInvalid { .. }
            | AppError::IdpUnavailable(_)
            | AppError::LinkInvalid(_)) => ScimError::Internal(e.to_string()),
            AppError::TooManyRequests {
                retry_after_secs, ..
            } => ScimError::RateLimited(retry_after_secs),
            AppError::Internal(why) => ScimError::Internal(why),
            AppError::Unavailable(why) => ScimError::Unavailable(why),
        }
    }
}

impl From<filter::ParseError> for ScimError {
    fn from(e: filter::ParseError) -> Self {
        ScimError::InvalidFilter(e.0)
    }
}

impl From<crate::store::StoreError> for ScimError {
    fn from(e: crate::store::StoreError) -> Self {
        ScimError::from(AppError::from(e))
    }
}
