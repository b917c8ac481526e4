//! API errors, rendered as Kubernetes `Status` objects (kubectl branches on `reason`).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::store::StoreError;

/// One invalid field, as in `Status.details.causes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// Kubernetes' machine-readable reason, e.g. `FieldValueRequired`.
    pub reason: &'static str,
    /// Dotted path of the field, e.g. `spec.replicas`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl Cause {
    /// A cause with the given reason.
    pub fn new(reason: &'static str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Cause {
            reason,
            field: field.into(),
            message: message.into(),
        }
    }

    /// A `FieldValueInvalid` cause.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Cause::new("FieldValueInvalid", field, message)
    }
}

/// An error answered to an API client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The object or resource does not exist.
    #[error("{kind} \"{name}\" not found")]
    NotFound { kind: String, name: String },
    /// A create hit an existing object.
    #[error("{kind} \"{name}\" already exists")]
    AlreadyExists { kind: String, name: String },
    /// A stale resourceVersion or a concurrent write.
    #[error("Operation cannot be fulfilled on {kind} \"{name}\": {message}")]
    Conflict {
        kind: String,
        name: String,
        message: String,
    },
    /// The object failed validation.
    #[error("{kind} \"{name}\" is invalid: {}", causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect::<Vec<_>>().join(", "))]
    Invalid {
        kind: String,
        name: String,
        causes: Vec<Cause>,
    },
    /// Fields the object's type does not know, with `fieldValidation=Strict`.
    #[error("{kind} in version {version:?} cannot be handled as a {kind}: strict decoding error: {}", fields.iter().map(|f| format!("unknown field {f:?}")).collect::<Vec<_>>().join(", "))]
    StrictDecoding {
        kind: String,
        version: String,
        name: String,
        fields: Vec<String>,
    },
    /// A server-side apply would change fields other managers own; `causes` name them.
    #[error("{message}")]
    ApplyConflict { message: String, causes: Vec<Cause> },
    /// A well-formed request that cannot be carried out (a JSON patch `test` that fails).
    #[error("{0}")]
    Unprocessable(String),
    /// A malformed request (bad JSON, bad selector, bad path).
    #[error("{0}")]
    BadRequest(String),
    /// The request carries no valid credentials.
    #[error("Unauthorized")]
    Unauthorized,
    /// The request is refused (e.g. new objects in a terminating namespace).
    #[error("{0}")]
    Forbidden(String),
    /// The request body is larger than the server accepts.
    #[error("Request entity too large: limit is {limit}")]
    TooLarge { limit: usize },
    /// A list's continue token is older than the server keeps; `token` continues
    /// inconsistently from where it stopped.
    #[error("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.")]
    ContinueExpired { token: String },
    /// A randomly drawn cluster IP or node port was taken meanwhile (drawn again).
    #[error("a randomly chosen cluster IP or node port was taken; try again")]
    AllocationRace,
    /// The server could not answer in time (e.g. a resourceVersion it has not reached).
    #[error("{0}")]
    Timeout(String),
    /// The server is not ready to answer (e.g. its cache is still filling).
    #[error("{0}")]
    Unavailable(String),
    /// The verb does not apply to this resource.
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    /// The media type is not supported (e.g. a patch type).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A watch asked for a revision no longer kept.
    #[error("too old resource version: {0}")]
    Expired(String),
    /// The store failed or is unavailable.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// Anything else that is the server's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// A failure of a PATCH: kube-apiserver reports unknown fields there as an invalid
    /// `patch` (422), quoting the patch.
    pub fn for_patch(self, patch: &[u8]) -> Self {
        match self {
            e @ ApiError::StrictDecoding { .. } => {
                let text = e.to_string();
                let decoding = text.split_once(": ").map_or(text.as_str(), |(_, rest)| rest);
                ApiError::Invalid {
                    kind: String::new(),
                    name: String::new(),
                    causes: vec![Cause::invalid(
                        "patch",
                        format!("Invalid value: {:?}: {decoding}", String::from_utf8_lossy(patch)),
                    )],
                }
            }
            other => other,
        }
    }

    /// The 409 for a write based on a version that is no longer the live one.
    pub fn modified(kind: impl Into<String>, name: impl Into<String>) -> Self {
        ApiError::Conflict {
            kind: kind.into(),
            name: name.into(),
            message: "the object has been modified; please apply your changes to the latest version and try again"
                .into(),
        }
    }

    /// HTTP status code and Kubernetes `reason` of this error.
    pub fn code_and_reason(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::NotFound { .. } => (StatusCode::NOT_FOUND, "NotFound"),
            ApiError::AlreadyExists { .. } => (StatusCode::CONFLICT, "AlreadyExists"),
            ApiError::Conflict { .. } => (StatusCode::CONFLICT, "Conflict"),
            ApiError::Invalid { .. } | ApiError::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "Invalid"),
            ApiError::ApplyConflict { .. } => (StatusCode::CONFLICT, "Conflict"),
            ApiError::BadRequest(_) | ApiError::StrictDecoding { .. } => (StatusCode::BAD_REQUEST, "BadRequest"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "Forbidden"),
            ApiError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge"),
            ApiError::ContinueExpired { .. } => (StatusCode::GONE, "Expired"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
            ApiError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "Timeout"),
            ApiError::AllocationRace => (StatusCode::CONFLICT, "Conflict"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
            ApiError::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType"),
            ApiError::Expired(_) => (StatusCode::GONE, "Expired"),
            ApiError::Store(StoreError::Expired { .. }) => (StatusCode::GONE, "Expired"),
            ApiError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
        }
    }

    /// The `Status` object for this error.
    pub fn status(&self) -> serde_json::Value {
        let (code, reason) = self.code_and_reason();
        let mut details = serde_json::Map::new();
        match self {
            ApiError::NotFound { kind, name }
            | ApiError::AlreadyExists { kind, name }
            | ApiError::Conflict { kind, name, .. } => {
                details.insert("name".into(), json!(name));
                details.insert("kind".into(), json!(kind));
            }
            ApiError::Invalid { kind, name, causes } => {
                details.insert("name".into(), json!(name));
                // `Deployment.apps` in the message; kind and group apart in the details.
                match kind.split_once('.') {
                    Some((k, g)) => {
                        details.insert("kind".into(), json!(k));
                        details.insert("group".into(), json!(g));
                    }
                    None => {
                        details.insert("kind".into(), json!(kind));
                    }
                }
                let causes: Vec<_> = causes
                    .iter()
                    .map(|c| json!({"reason": c.reason, "field": c.field, "message": c.message}))
                    .collect();
                details.insert("causes".into(), json!(causes));
            }
            ApiError::ApplyConflict { causes, .. } => {
                let causes: Vec<_> = causes
                    .iter()
                    .map(|c| json!({"reason": c.reason, "field": c.field, "message": c.message}))
                    .collect();
                details.insert("causes".into(), json!(causes));
            }
            _ => {}
        }
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": reason,
            "code": code.as_u16(),
        });
        if !details.is_empty() {
            status["details"] = serde_json::Value::Object(details);
        }
        if let ApiError::ContinueExpired { token } = self {
            status["metadata"] = json!({"continue": token});
        }
        status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, _) = self.code_and_reason();
        if code.is_server_error() {
            tracing::warn!(error = %self, "api request failed");
        }
        (code, axum::Json(self.status())).into_response()
    }
}
