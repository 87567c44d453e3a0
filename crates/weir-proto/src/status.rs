//! Weir errors as gRPC statuses. The wire `ErrorCode` travels in the `weir-error-code`
//! metadata entry so clients classify failures without parsing messages.

use weir_types::ErrorCode;

use crate::convert::FieldError;

pub const ERROR_CODE_KEY: &str = "weir-error-code";
/// Metadata entry naming the node that can serve the request (`host:port`).
pub const LEADER_KEY: &str = "weir-leader";
/// Metadata entry naming the internal address (`host:port`) of the controller that can serve
/// the request, when controllers serve their internal API apart (`--internal-listen`).
pub const LEADER_INTERNAL_KEY: &str = "weir-leader-internal";

/// A status for `code` with `message`; the gRPC code is chosen from the Weir code.
pub fn status(code: ErrorCode, message: impl Into<String>) -> tonic::Status {
    let grpc = match code {
        ErrorCode::InvalidArgument
        | ErrorCode::InvalidRecordBatch
        | ErrorCode::RecordBatchTooLarge => tonic::Code::InvalidArgument,
        ErrorCode::UnknownTopicOrPartition => tonic::Code::NotFound,
        ErrorCode::TopicAlreadyExists => tonic::Code::AlreadyExists,
        ErrorCode::OffsetOutOfRange => tonic::Code::OutOfRange,
        ErrorCode::RequestTimedOut => tonic::Code::DeadlineExceeded,
        ErrorCode::NotLeader
        | ErrorCode::NotController
        | ErrorCode::LeaderNotAvailable
        | ErrorCode::NotEnoughReplicas
        | ErrorCode::NetworkError
        | ErrorCode::StorageError => tonic::Code::Unavailable,
        ErrorCode::FencedLeaderEpoch
        | ErrorCode::UnknownLeaderEpoch
        | ErrorCode::OutOfOrderSequence
        | ErrorCode::DuplicateSequence
        | ErrorCode::InvalidProducerEpoch
        | ErrorCode::FencedMemberEpoch
        | ErrorCode::UnknownMemberId
        | ErrorCode::FencedBroker
        | ErrorCode::GroupNotEmpty
        | ErrorCode::NotEnoughReplicasAfterAppend => tonic::Code::FailedPrecondition,
        ErrorCode::GroupIdNotFound
        | ErrorCode::SubscriptionNotFound
        | ErrorCode::SnapshotNotFound => tonic::Code::NotFound,
        ErrorCode::SubscriptionAlreadyExists | ErrorCode::SnapshotAlreadyExists => {
            tonic::Code::AlreadyExists
        }
        ErrorCode::LeaderChangedAfterAppend => tonic::Code::Unavailable,
        ErrorCode::CorruptRecord => tonic::Code::DataLoss,
        ErrorCode::Unknown => tonic::Code::Unknown,
    };
    let mut status = tonic::Status::new(grpc, format!("{}: {}", code.name(), message.into()));
    if let Ok(value) = code.as_i32().to_string().parse() {
        status.metadata_mut().insert(ERROR_CODE_KEY, value);
    }
    status
}

/// INVALID_ARGUMENT naming the field.
pub fn invalid_field(err: &FieldError) -> tonic::Status {
    status(ErrorCode::InvalidArgument, err.to_string())
}

/// NOT_CONTROLLER / NOT_LEADER with the address of the node to ask instead, when known.
pub fn redirect(
    code: ErrorCode,
    message: impl Into<String>,
    leader: Option<&str>,
) -> tonic::Status {
    let mut status = status(code, message);
    if let Some(addr) = leader
        && let Ok(value) = addr.parse()
    {
        status.metadata_mut().insert(LEADER_KEY, value);
    }
    status
}

/// [`redirect`] to a controller that serves its internal API at `internal` (callers of the
/// internal API follow that one).
pub fn redirect_controller(
    message: impl Into<String>,
    public: Option<&str>,
    internal: Option<&str>,
) -> tonic::Status {
    let mut status = redirect(ErrorCode::NotController, message, public);
    if let Some(addr) = internal
        && let Ok(value) = addr.parse()
    {
        status.metadata_mut().insert(LEADER_INTERNAL_KEY, value);
    }
    status
}

/// The leader hint a status carries, if any.
pub fn leader_hint(status: &tonic::Status) -> Option<String> {
    hint(status, LEADER_KEY)
}

/// The internal address of the active controller a status names, else its public one.
pub fn internal_leader_hint(status: &tonic::Status) -> Option<String> {
    hint(status, LEADER_INTERNAL_KEY).or_else(|| leader_hint(status))
}

fn hint(status: &tonic::Status, key: &str) -> Option<String> {
    Some(status.metadata().get(key)?.to_str().ok()?.to_string())
}

/// The Weir code a status carries, if any.
pub fn error_code(status: &tonic::Status) -> Option<ErrorCode> {
    let value = status.metadata().get(ERROR_CODE_KEY)?.to_str().ok()?;
    ErrorCode::from_i32(value.parse().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_survive_the_status() {
        for &code in ErrorCode::ALL {
            let s = status(code, "x");
            assert_eq!(error_code(&s), Some(code));
            assert!(s.message().starts_with(code.name()));
        }
        let s = invalid_field(&FieldError::new("records[0].key", "too long"));
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert!(s.message().contains("records[0].key"));
    }
}
