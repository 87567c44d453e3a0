//! The storage engine's typed errors.

use std::path::PathBuf;

use weir_types::{BatchError, ErrorCode, LeaderEpoch, Offset};

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The batch offered for append is malformed or too large; nothing was written.
    #[error("invalid batch: {0}")]
    InvalidBatch(#[from] BatchError),
    /// An append carried a leader epoch older than the newest one in the log.
    #[error("leader epoch {epoch} is older than the log's latest epoch {latest}")]
    StaleEpoch {
        epoch: LeaderEpoch,
        latest: LeaderEpoch,
    },
    /// A replicated batch does not start at the log end.
    #[error("replicated batch starts at offset {got}, the log ends at {expected}")]
    NonContiguous { expected: Offset, got: Offset },
    #[error("offset {offset} is outside the log [{start}, {end})")]
    OffsetOutOfRange {
        offset: Offset,
        start: Offset,
        end: Offset,
    },
    /// Stored data failed a CRC or framing check where it cannot be a torn tail. The
    /// partition must not be served from this replica.
    #[error("corruption in {path} at byte {position}: {reason}")]
    Corruption {
        path: PathBuf,
        position: u64,
        reason: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// An fsync failed. The page cache may have dropped the data, so the log refuses all
    /// further writes (it must be reopened, which recovers from what is on disk).
    #[error("fsync failed, the log is closed for writes: {0}")]
    FlushFailed(String),
    #[error("invalid log config: {0}")]
    Config(String),
    /// An idempotent producer's batch is out of sequence or from a fenced epoch.
    #[error(transparent)]
    Producer(#[from] crate::producer::ProducerError),
}

impl LogError {
    /// As [`LogError::io`], with the context built only when there is an error (paths are
    /// formatted on the hot path's failures, not on every append).
    pub(crate) fn io_with(
        context: impl FnOnce() -> String,
    ) -> impl FnOnce(std::io::Error) -> LogError {
        move |source| LogError::Io {
            context: context(),
            source,
        }
    }

    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> LogError {
        let context = context.into();
        move |source| LogError::Io { context, source }
    }

    /// The wire code a server answers with for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            LogError::InvalidBatch(BatchError::TooLarge { .. }) => ErrorCode::RecordBatchTooLarge,
            LogError::InvalidBatch(_) => ErrorCode::InvalidRecordBatch,
            LogError::StaleEpoch { .. } => ErrorCode::FencedLeaderEpoch,
            LogError::NonContiguous { .. } => ErrorCode::OffsetOutOfRange,
            LogError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
            LogError::Corruption { .. } => ErrorCode::CorruptRecord,
            LogError::Io { .. } | LogError::FlushFailed(_) => ErrorCode::StorageError,
            LogError::Config(_) => ErrorCode::InvalidArgument,
            LogError::Producer(crate::producer::ProducerError::OutOfOrder { .. }) => {
                ErrorCode::OutOfOrderSequence
            }
            LogError::Producer(crate::producer::ProducerError::Fenced { .. }) => {
                ErrorCode::InvalidProducerEpoch
            }
        }
    }
}

pub type Result<T, E = LogError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn an_io_context_is_built_only_for_an_error() {
        let built = Cell::new(0);
        let context = || {
            built.set(built.get() + 1);
            format!("fsync {}", "/data/p-0/0.log")
        };
        Ok::<(), std::io::Error>(())
            .map_err(LogError::io_with(context))
            .expect("no error");
        assert_eq!(built.get(), 0, "formatted on success");
        let err = Err::<(), _>(std::io::Error::other("EIO"))
            .map_err(LogError::io_with(context))
            .expect_err("an error");
        assert_eq!(built.get(), 1);
        assert_eq!(err.to_string(), "fsync /data/p-0/0.log: EIO");
    }
}
