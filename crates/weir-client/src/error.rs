//! The client's errors.

use weir_proto::call::CallError;
use weir_types::ErrorCode;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// A definite or final answer from a server.
    #[error("{code}: {message}")]
    Server { code: ErrorCode, message: String },
    /// No node could be reached, or the connection broke.
    #[error("{0}")]
    Unavailable(String),
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    /// The producer or consumer was closed.
    #[error("closed")]
    Closed,
    /// Retried until the deadline; the last failure, and its code when a server gave one.
    #[error("gave up after {attempts} attempts: {last}")]
    Exhausted {
        attempts: u32,
        last: String,
        code: Option<ErrorCode>,
    },
}

impl ClientError {
    pub(crate) fn exhausted(attempts: u32, last: &ClientError) -> ClientError {
        ClientError::Exhausted {
            attempts,
            last: last.to_string(),
            code: last.code(),
        }
    }

    /// The server's error code, if the failure came from one (for `Exhausted`, the last
    /// attempt's).
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            ClientError::Exhausted { code, .. } => *code,
            _ => None,
        }
    }

    pub(crate) fn from_status(status: &tonic::Status) -> ClientError {
        match weir_proto::status::error_code(status) {
            Some(code) => ClientError::Server {
                code,
                message: status.message().to_string(),
            },
            None => ClientError::Unavailable(status.message().to_string()),
        }
    }

    /// Whether sending the same request again may succeed, for a sender that is (or is not)
    /// idempotent.
    pub(crate) fn retriable(&self, idempotent: bool) -> bool {
        match self {
            ClientError::Server { code, .. } => {
                code.is_retriable()
                    && (idempotent || code.outcome() == weir_types::error::Outcome::Definite)
            }
            ClientError::Unavailable(_) => idempotent,
            _ => false,
        }
    }
}

impl From<CallError> for ClientError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Status(s) => ClientError::from_status(&s),
            CallError::Unavailable(m) => ClientError::Unavailable(m),
            CallError::Bootstrap(m) => ClientError::Invalid {
                field: "bootstrap".into(),
                reason: m,
            },
        }
    }
}
