//! The one place an error becomes an HTTP answer: an RFC 9457 problem body. A 5xx carries
//! only the request id; its detail goes to the log.

use crate::app::AppError;
use crate::policy::PolicyError;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// A problem body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    pub status: u16,
    pub title: &'static str,
    pub detail: String,
    /// A stable machine-readable code.
    pub reason: std::borrow::Cow<'static, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_cases: Option<Vec<gatehouse_rules::cases::CaseReport>>,
}

impl AppError {
    /// Seconds a client should wait before trying again: a 429's own wait, and one second
    /// for every 503 (whatever made it one), so no 503 goes out without `Retry-After`.
    pub(super) fn retry_after(&self) -> Option<u64> {
        match self {
            AppError::TooManyRequests {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ if self.status() == StatusCode::SERVICE_UNAVAILABLE => Some(1),
            _ => None,
        }
    }
}

impl AppError {
    /// The HTTP status of this error: the one mapping the API and the console share.
    pub(super) fn status(&self) -> StatusCode {
        match self {
            AppError::Unauthorized | AppError::LoginInvalid { .. } => StatusCode::UNAUTHORIZED,
            AppError::Forbidden(_) | AppError::LoginRefused { .. } => StatusCode::FORBIDDEN,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::PolicyRefused(PolicyError::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::PolicyRefused(PolicyError::Busy) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::PolicyFailed(e) if e.is_transient() => StatusCode::SERVICE_UNAVAILABLE,
            AppError::PolicyFailed(_)
            | AppError::PolicyRefused(_)
            | AppError::CasesFailed { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            AppError::IdpUnavailable(_) => StatusCode::BAD_GATEWAY,
            AppError::LinkInvalid(_) => StatusCode::GONE,
            AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let retry_after = self.retry_after();
        let status = self.status();
        let (reason, detail, failed_cases): (std::borrow::Cow<'static, str>, _, _) = match self {
            AppError::Unauthorized => ("unauthorized".into(), self.to_string(), None),
            AppError::Forbidden(_) => ("forbidden".into(), self.to_string(), None),
            AppError::PolicyFailed(_) => ("policy_error".into(), self.to_string(), None),
            AppError::NotFound(_) => ("not_found".into(), self.to_string(), None),
            AppError::BadRequest(_) => ("bad_request".into(), self.to_string(), None),
            AppError::Conflict(_) => ("conflict".into(), self.to_string(), None),
            AppError::PolicyRefused(ref e) => (policy_reason(e).into(), self.to_string(), None),
            AppError::CasesFailed { ref failed, .. } => (
                "policy_cases_failed".into(),
                self.to_string(),
                Some(failed.clone()),
            ),
            AppError::LoginRefused { ref reason, .. } => {
                (reason.clone().into(), self.to_string(), None)
            }
            AppError::LoginInvalid { reason, .. } => (reason.into(), self.to_string(), None),
            AppError::TooManyRequests { reason, .. } => (reason.into(), self.to_string(), None),
            AppError::IdpUnavailable(_) => ("idp_unavailable".into(), self.to_string(), None),
            AppError::LinkInvalid(_) => ("invalid_link".into(), self.to_string(), None),
            AppError::Unavailable(ref detail) => {
                tracing::warn!(detail, "store unavailable");
                ("store_unavailable".into(), self.to_string(), None)
            }
            AppError::Internal(detail) => {
                let id = crate::logging::request_id();
                tracing::error!(request_id = %id, detail, "internal error");
                (
                    "internal".into(),
                    format!("internal error; request id {id}"),
                    None,
                )
            }
        };
        let problem = Problem {
            status: status.as_u16(),
            title: status.canonical_reason().unwrap_or("error"),
            detail,
            reason,
            failed_cases,
        };
        let mut response = (status, axum::Json(problem)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// axum answers a method it does not route (405) and a body over the limit (413) itself,
/// with an empty or plain-text body; on the admin API those become problems too, so every
/// refusal there has the same shape and a reason.
pub(super) async fn bare_errors_as_problems(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let (reason, detail) = match status {
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "this route does not answer this method; see GET /api/v1/openapi.json",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "too_large",
            "the request body is larger than this route accepts",
        ),
        _ => return response,
    };
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if is_problem {
        return response;
    }
    let allow = response.headers().get(header::ALLOW).cloned();
    let problem = Problem {
        status: status.as_u16(),
        title: status.canonical_reason().unwrap_or("error"),
        detail: detail.to_owned(),
        reason: reason.into(),
        failed_cases: None,
    };
    let mut answer = (status, axum::Json(problem)).into_response();
    answer.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/problem+json"),
    );
    if let Some(allow) = allow {
        answer.headers_mut().insert(header::ALLOW, allow);
    }
    answer
}

fn policy_reason(e: &PolicyError) -> &'static str {
    match e {
        PolicyError::TooLarge { .. } => "policy_too_large",
        PolicyError::Invalid(_) => "policy_invalid",
        PolicyError::Imports(_) => "policy_imports",
        PolicyError::Contract { .. } => "policy_contract",
        PolicyError::Settings(_) => "policy_settings",
        PolicyError::Timeout(_)
        | PolicyError::OutOfMemory(_)
        | PolicyError::Trap(_)
        | PolicyError::Malformed(_)
        | PolicyError::Unavailable(_)
        | PolicyError::Engine(_) => "policy_error",
        PolicyError::Busy => "policy_busy",
    }
}
