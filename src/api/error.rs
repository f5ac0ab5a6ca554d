//! The one place where failures become HTTP answers: an AWS JSON error (`__type`, `message`)
//! with the status code the AWS SDKs expect, so their retry logic works unchanged. Messages
//! are written for the user; internals stay in the log.

use super::auth::AuthError;
use hyper::StatusCode;

use crate::catalog::CatalogError;
use crate::pipeline::PutError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    ResourceNotFound,
    ResourceInUse,
    InvalidArgument,
    Validation,
    ConcurrentModification,
    ServiceUnavailable,
    LimitExceeded,
    MissingAuthenticationToken,
    IncompleteSignature,
    UnrecognizedClient,
    InvalidSignature,
    AccessDenied,
    Serialization,
    UnknownOperation,
    Internal,
}

impl ErrorKind {
    pub fn aws_type(self) -> &'static str {
        match self {
            ErrorKind::ResourceNotFound => "ResourceNotFoundException",
            ErrorKind::ResourceInUse => "ResourceInUseException",
            ErrorKind::InvalidArgument => "InvalidArgumentException",
            ErrorKind::Validation => "ValidationException",
            ErrorKind::ConcurrentModification => "ConcurrentModificationException",
            ErrorKind::ServiceUnavailable => "ServiceUnavailableException",
            ErrorKind::LimitExceeded => "LimitExceededException",
            ErrorKind::MissingAuthenticationToken => "MissingAuthenticationTokenException",
            ErrorKind::IncompleteSignature => "IncompleteSignatureException",
            ErrorKind::UnrecognizedClient => "UnrecognizedClientException",
            ErrorKind::InvalidSignature => "InvalidSignatureException",
            ErrorKind::AccessDenied => "AccessDeniedException",
            ErrorKind::Serialization => "SerializationException",
            ErrorKind::UnknownOperation => "UnknownOperationException",
            ErrorKind::Internal => "InternalFailure",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::MissingAuthenticationToken => StatusCode::FORBIDDEN,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

#[derive(Debug)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
    /// Answered before the request's body was read to its end: the connection closes.
    pub close: bool,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
            close: false,
        }
    }

    /// Refused while its body was being read: the rest of the body is never read.
    pub fn unread_body(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            close: true,
            ..Self::new(kind, message)
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }

    pub fn body(&self) -> Vec<u8> {
        serde_json::json!({ "__type": self.kind.aws_type(), "message": self.message })
            .to_string()
            .into_bytes()
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let kind = match e {
            AuthError::Missing => ErrorKind::MissingAuthenticationToken,
            AuthError::Incomplete(_) => ErrorKind::IncompleteSignature,
            AuthError::UnknownKey(_) => ErrorKind::UnrecognizedClient,
            AuthError::BadSignature(_) => ErrorKind::InvalidSignature,
            AuthError::Denied(_) => ErrorKind::AccessDenied,
        };
        ApiError::new(kind, e.to_string())
    }
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        let kind = match &e {
            CatalogError::NotFound(_) => ErrorKind::ResourceNotFound,
            CatalogError::BadName => ErrorKind::Validation,
            CatalogError::InUse(_) => ErrorKind::ResourceInUse,
            CatalogError::Invalid(_) => ErrorKind::InvalidArgument,
            CatalogError::VersionMismatch { .. } => ErrorKind::ConcurrentModification,
            CatalogError::Unavailable(_) => ErrorKind::ServiceUnavailable,
            CatalogError::LimitExceeded(_) => ErrorKind::LimitExceeded,
            CatalogError::Internal(detail) => {
                tracing::error!(error = %detail, "control-plane operation failed");
                return ApiError::new(ErrorKind::Internal, "internal error; see the daemon's log");
            }
        };
        ApiError::new(kind, e.to_string())
    }
}

impl From<PutError> for ApiError {
    fn from(e: PutError) -> Self {
        ApiError::new(ErrorKind::ServiceUnavailable, e.to_string())
    }
}

/// Turns a body that failed to parse into the error AWS would give: broken JSON or a wrong
/// type is a SerializationException, a missing required member a ValidationException.
pub fn from_json_error(e: &serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    let text = e.to_string();
    match e.classify() {
        Category::Data if text.starts_with("missing field") => ApiError::new(
            ErrorKind::Validation,
            format!("1 validation error detected: {text}"),
        ),
        _ => ApiError::new(
            ErrorKind::Serialization,
            format!("request body is not a valid request for this operation: {text}"),
        ),
    }
}
