//! The one error shape of the REST API: `{ "error": "<human readable>", "code": "<machine_code>" }`
//! with the right status, for handler errors and for everything poem itself refuses (malformed
//! JSON, wrong content type, unknown route, oversized body).

use poem::{IntoResponse, Response, http::StatusCode};
use poem_openapi::{ApiResponse, Object, payload::Json};

use crate::{auth::AuthError, domain::InvalidRoom, store::StoreError};

/// Body of every error response.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct ErrorBody {
    /// Human-readable explanation, safe to show to a user.
    pub error: String,
    /// Stable machine-readable code.
    pub code: String,
}

impl poem_openapi::types::Example for ErrorBody {
    fn example() -> Self {
        Self { error: "invalid credentials".into(), code: "invalid_credentials".into() }
    }
}

/// Every error status the API answers with.
#[derive(Debug, ApiResponse)]
#[oai(bad_request_handler = "bad_request")]
pub enum ApiError {
    /// The request is malformed or a field is invalid.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// Missing, invalid or expired credentials.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// The account is disabled, or its role does not allow this.
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// No such resource, or one the caller may not see (a private room it is not in).
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The resource already exists (email taken, room name taken).
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// The body is not sent as `Content-Type: application/json`.
    #[oai(status = 415)]
    UnsupportedMediaType(Json<ErrorBody>),
    /// Too many requests from this client; retry after `Retry-After` seconds.
    #[oai(status = 429)]
    TooManyRequests(Json<ErrorBody>, #[oai(header = "Retry-After")] u64),
    /// A dependency (database) is unavailable, or the server is too busy (password checks);
    /// retry after `Retry-After` seconds.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>, #[oai(header = "Retry-After")] u64),
    /// Something failed on the server; details are in its log, not here.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
}

fn body(error: impl Into<String>, code: &str) -> Json<ErrorBody> {
    Json(ErrorBody { error: error.into(), code: code.into() })
}

impl ApiError {
    /// The machine-readable code of the body (a fixed set: each is a literal in this crate).
    pub fn code(&self) -> &str {
        match self {
            Self::BadRequest(b)
            | Self::Unauthorized(b)
            | Self::Forbidden(b)
            | Self::NotFound(b)
            | Self::Conflict(b)
            | Self::UnsupportedMediaType(b)
            | Self::TooManyRequests(b, _)
            | Self::Unavailable(b, _)
            | Self::Internal(b) => &b.code,
        }
    }

    pub fn bad_request(error: impl Into<String>, code: &str) -> Self {
        Self::BadRequest(body(error, code))
    }

    pub fn not_found(error: impl Into<String>) -> Self {
        Self::NotFound(body(error, "not_found"))
    }

    pub fn forbidden(error: impl Into<String>) -> Self {
        Self::Forbidden(body(error, "forbidden"))
    }

    pub fn conflict(error: impl Into<String>, code: &str) -> Self {
        Self::Conflict(body(error, code))
    }

    pub fn unauthorized() -> Self {
        Self::Unauthorized(body("missing, invalid or expired access token", "unauthorized"))
    }

    /// 403 with a code of its own (a limit reached, rather than a right missing).
    pub fn forbidden_code(error: impl Into<String>, code: &str) -> Self {
        Self::Forbidden(body(error, code))
    }

    pub fn rate_limited(retry_after_secs: u64) -> Self {
        Self::TooManyRequests(body("too many requests, try again later", "rate_limited"), retry_after_secs.max(1))
    }

    pub fn internal() -> Self {
        Self::Internal(body("internal error", "internal"))
    }

    pub fn unavailable() -> Self {
        Self::Unavailable(body("service temporarily unavailable, try again later", "unavailable"), 1)
    }

    /// As a `poem::Error`, for places that must return one (security scheme checkers).
    pub fn into_poem(self) -> poem::Error {
        poem::Error::from_response(self.into_response())
    }
}

/// Parse failures of parameters and payloads detected by poem-openapi.
#[allow(clippy::needless_pass_by_value)] // the signature poem-openapi calls
fn bad_request(err: poem::Error) -> ApiError {
    ApiError::bad_request(err.to_string(), "invalid_payload")
}

/// The refusal of a parameter that broke a rule the OpenAPI document states and poem-openapi
/// checks (room name pattern, `limit` and `before` ranges), with the rule's own code and
/// message. `detail` is poem-openapi's text for a bad parameter, which names it:
/// ``failed to parse parameter `limit`: …``.
pub fn rule_broken(detail: &str) -> Option<ApiError> {
    let name = detail.strip_prefix("failed to parse parameter `")?.split('`').next()?;
    let (message, code) = match name {
        "room" => (InvalidRoom.to_string(), "invalid_room"),
        "limit" => ("limit must be between 1 and 200".to_owned(), "invalid_limit"),
        "before" => ("before must be a positive seq".to_owned(), "invalid_before"),
        _ => return None,
    };
    Some(ApiError::bad_request(message, code))
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let code = e.code();
        match e {
            AuthError::InvalidEmail | AuthError::InvalidPassword(_) => Self::BadRequest(body(e.to_string(), code)),
            AuthError::EmailTaken => Self::Conflict(body(e.to_string(), code)),
            AuthError::InvalidCredentials | AuthError::InvalidRefreshToken | AuthError::Unauthorized => {
                Self::Unauthorized(body(e.to_string(), code))
            }
            AuthError::Disabled | AuthError::RegistrationClosed | AuthError::InvalidInvite => {
                Self::Forbidden(body(e.to_string(), code))
            }
            AuthError::Store(e) => e.into(),
            AuthError::Hash(crate::auth::password::HashError::Busy { retry_after }) => {
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                Self::Unavailable(body(e.to_string(), code), secs.max(1))
            }
            AuthError::Hash(e) => {
                tracing::error!(error = %e, "password hashing failed");
                Self::internal()
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if e.is_unavailable() {
            tracing::warn!(error = ?e, "database unavailable");
            Self::unavailable()
        } else {
            tracing::error!(error = ?e, "database error");
            Self::internal()
        }
    }
}

/// The JSON error response for a status poem produced on its own (no handler ran, or a
/// handler returned a bare status).
pub fn from_status(status: StatusCode, detail: Option<String>) -> Response {
    let (code, default) = match status {
        StatusCode::BAD_REQUEST => ("invalid_payload", "the request is malformed"),
        StatusCode::UNAUTHORIZED => ("unauthorized", "missing, invalid or expired access token"),
        StatusCode::FORBIDDEN => ("forbidden", "forbidden"),
        StatusCode::NOT_FOUND => ("not_found", "no such resource"),
        StatusCode::METHOD_NOT_ALLOWED => ("method_not_allowed", "method not allowed for this resource"),
        StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "request body is too large"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ("unsupported_media_type", "send the body as JSON with Content-Type: application/json")
        }
        StatusCode::TOO_MANY_REQUESTS => ("rate_limited", "too many requests, try again later"),
        StatusCode::SERVICE_UNAVAILABLE => ("unavailable", "service temporarily unavailable"),
        s if s.is_server_error() => ("internal", "internal error"),
        _ => ("error", "the request failed"),
    };
    // Server-side details stay in the log; client-side ones (which field is wrong) help.
    let error = match detail {
        Some(d) if status.is_client_error() && !d.is_empty() => d,
        _ => default.to_owned(),
    };
    json(status, &error, code)
}

/// The error shape as a bare response, for endpoints outside the OpenAPI routes (WebSocket
/// upgrades, Engine.IO polling) and for what poem refuses on its own.
pub fn json(status: StatusCode, error: &str, code: &str) -> Response {
    let body = serde_json::json!({ "error": error, "code": code }).to_string();
    Response::builder().status(status).content_type("application/json; charset=utf-8").body(body)
}
