//! How the console's API reports a failure: a status and a JSON body `{"error": "..."}` whose
//! message tells the caller what to do.

use crate::InspectorError;
use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::json;

/// A failed API call.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong and what to do.
    pub message: String,
}

impl ApiError {
    /// A failure with `status`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// 400: the request itself is wrong.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({ "error": self.message }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"secflow-console\""),
            );
        }
        response
    }
}

impl From<InspectorError> for ApiError {
    fn from(e: InspectorError) -> Self {
        let status = match &e {
            InspectorError::Usage(_) | InspectorError::NoMatch { .. } => StatusCode::BAD_REQUEST,
            InspectorError::UnknownId { .. } => StatusCode::NOT_FOUND,
            InspectorError::Locked(_) => StatusCode::CONFLICT,
            InspectorError::Broker(_) | InspectorError::Redis { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            InspectorError::Export { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, e.to_string())
    }
}

impl From<secflow_common::runs::RunError> for ApiError {
    fn from(e: secflow_common::runs::RunError) -> Self {
        use secflow_common::runs::RunError;
        let status = match &e {
            RunError::UnknownRun(_) => StatusCode::NOT_FOUND,
            RunError::Corrupt(_) => StatusCode::INTERNAL_SERVER_ERROR,
            RunError::Redis(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        Self::new(status, e.to_string())
    }
}

/// What an API handler returns.
pub type ApiResult<T> = Result<T, ApiError>;
