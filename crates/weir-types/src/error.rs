//! The wire error codes every Weir API speaks.
//!
//! Numbers are explicit and never reused: clients in other languages match on them. Each code
//! says whether retrying may succeed ([`ErrorCode::is_retriable`]) and whether a failed write
//! definitely did not happen or may have been committed ([`ErrorCode::outcome`]).

use std::fmt;

/// What a client may conclude about a write that failed with a given code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The request was definitely not applied.
    Definite,
    /// The request may or may not have been applied ("maybe committed").
    Indeterminate,
}

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $name:ident = $num:literal, $wire:literal, retriable: $retry:literal, outcome: $outcome:ident; )*) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(i32)]
        pub enum ErrorCode {
            $( $(#[$doc])* $name = $num, )*
        }

        impl ErrorCode {
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name),*];

            pub fn as_i32(self) -> i32 {
                self as i32
            }

            /// The code for a wire number; `None` for numbers this build does not know.
            pub fn from_i32(value: i32) -> Option<ErrorCode> {
                match value {
                    $( $num => Some(ErrorCode::$name), )*
                    _ => None,
                }
            }

            /// Whether the same request may succeed if sent again (possibly to another node).
            pub fn is_retriable(self) -> bool {
                match self {
                    $( ErrorCode::$name => $retry, )*
                }
            }

            /// Whether a write failing with this code definitely did not happen.
            pub fn outcome(self) -> Outcome {
                match self {
                    $( ErrorCode::$name => Outcome::$outcome, )*
                }
            }

            /// The SCREAMING_SNAKE name clients see.
            pub fn name(self) -> &'static str {
                match self {
                    $( ErrorCode::$name => $wire, )*
                }
            }
        }
    };
}

error_codes! {
    /// An error the server could not classify; the write may have happened.
    Unknown = 1, "UNKNOWN", retriable: false, outcome: Indeterminate;
    /// A stored batch failed its CRC or framing check.
    CorruptRecord = 2, "CORRUPT_RECORD", retriable: true, outcome: Definite;
    /// The requested offset is below the log start or above the log end.
    OffsetOutOfRange = 3, "OFFSET_OUT_OF_RANGE", retriable: false, outcome: Definite;
    /// The batch sent is malformed: bad framing, CRC, record count or record encoding.
    InvalidRecordBatch = 4, "INVALID_RECORD_BATCH", retriable: false, outcome: Definite;
    /// The batch is larger than the topic's `batch_bytes_max`.
    RecordBatchTooLarge = 5, "RECORD_BATCH_TOO_LARGE", retriable: false, outcome: Definite;
    /// The topic or partition does not exist.
    UnknownTopicOrPartition = 6, "UNKNOWN_TOPIC_OR_PARTITION", retriable: true, outcome: Definite;
    /// This broker does not lead the partition; the leader hint rides in the status details.
    NotLeader = 7, "NOT_LEADER", retriable: true, outcome: Definite;
    /// This node is not the active controller; the leader hint rides in the status details.
    NotController = 8, "NOT_CONTROLLER", retriable: true, outcome: Definite;
    /// The partition has no leader right now.
    LeaderNotAvailable = 9, "LEADER_NOT_AVAILABLE", retriable: true, outcome: Definite;
    /// The request carried a leader epoch older than the partition's.
    FencedLeaderEpoch = 10, "FENCED_LEADER_EPOCH", retriable: true, outcome: Definite;
    /// The request carried a leader epoch newer than this replica knows.
    UnknownLeaderEpoch = 11, "UNKNOWN_LEADER_EPOCH", retriable: true, outcome: Definite;
    /// Fewer than `min_insync_replicas` replicas are in sync; nothing was appended.
    NotEnoughReplicas = 12, "NOT_ENOUGH_REPLICAS", retriable: true, outcome: Definite;
    /// The batch was appended by the leader but the ISR shrank before it was replicated.
    NotEnoughReplicasAfterAppend = 13, "NOT_ENOUGH_REPLICAS_AFTER_APPEND", retriable: true, outcome: Indeterminate;
    /// The request timed out; a write may have happened.
    RequestTimedOut = 14, "REQUEST_TIMED_OUT", retriable: true, outcome: Indeterminate;
    /// The connection broke before the response arrived; a write may have happened.
    NetworkError = 15, "NETWORK_ERROR", retriable: true, outcome: Indeterminate;
    /// A request field is invalid; the message names the field.
    InvalidArgument = 16, "INVALID_ARGUMENT", retriable: false, outcome: Definite;
    /// A topic with this name already exists.
    TopicAlreadyExists = 17, "TOPIC_ALREADY_EXISTS", retriable: false, outcome: Definite;
    /// An idempotent producer's sequence skipped ahead.
    OutOfOrderSequence = 18, "OUT_OF_ORDER_SEQUENCE", retriable: false, outcome: Definite;
    /// The batch was already appended; its original offset is returned.
    DuplicateSequence = 19, "DUPLICATE_SEQUENCE", retriable: false, outcome: Definite;
    /// The producer epoch is older than the current one for this producer id.
    InvalidProducerEpoch = 20, "INVALID_PRODUCER_EPOCH", retriable: false, outcome: Definite;
    /// A consumer-group member used a stale member epoch.
    FencedMemberEpoch = 21, "FENCED_MEMBER_EPOCH", retriable: false, outcome: Definite;
    /// The consumer-group member is not known to the group.
    UnknownMemberId = 22, "UNKNOWN_MEMBER_ID", retriable: false, outcome: Definite;
    /// The replica's storage failed (I/O or fsync error); the partition is not served here.
    StorageError = 23, "STORAGE_ERROR", retriable: true, outcome: Indeterminate;
    /// A broker used an incarnation the controller has fenced; it must register again.
    FencedBroker = 24, "FENCED_BROKER", retriable: false, outcome: Definite;
    /// Leadership moved after the batch was appended and before it was replicated: it may or
    /// may not be committed. Retry only as an idempotent producer.
    LeaderChangedAfterAppend = 25, "LEADER_CHANGED_AFTER_APPEND", retriable: true, outcome: Indeterminate;
    /// The consumer group has active members; the operation needs an empty group.
    GroupNotEmpty = 26, "GROUP_NOT_EMPTY", retriable: false, outcome: Definite;
    /// The consumer group does not exist.
    GroupIdNotFound = 27, "GROUP_ID_NOT_FOUND", retriable: false, outcome: Definite;
    /// The subscription does not exist.
    SubscriptionNotFound = 28, "SUBSCRIPTION_NOT_FOUND", retriable: false, outcome: Definite;
    /// A subscription with this name already exists.
    SubscriptionAlreadyExists = 29, "SUBSCRIPTION_ALREADY_EXISTS", retriable: false, outcome: Definite;
    /// The snapshot does not exist.
    SnapshotNotFound = 30, "SNAPSHOT_NOT_FOUND", retriable: false, outcome: Definite;
    /// A snapshot with this name already exists.
    SnapshotAlreadyExists = 31, "SNAPSHOT_ALREADY_EXISTS", retriable: false, outcome: Definite;
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn numbers_are_unique_and_round_trip() {
        let mut seen = HashSet::new();
        for &code in ErrorCode::ALL {
            assert!(seen.insert(code.as_i32()), "{code:?} reuses a number");
            assert_eq!(ErrorCode::from_i32(code.as_i32()), Some(code));
        }
        assert_eq!(ErrorCode::from_i32(0), None);
        assert_eq!(ErrorCode::from_i32(9999), None);
    }

    #[test]
    fn classification() {
        assert_eq!(ErrorCode::NotEnoughReplicas.name(), "NOT_ENOUGH_REPLICAS");
        assert!(ErrorCode::NotLeader.is_retriable());
        assert_eq!(ErrorCode::NotLeader.outcome(), Outcome::Definite);
        assert_eq!(ErrorCode::RequestTimedOut.outcome(), Outcome::Indeterminate);
        assert_eq!(
            ErrorCode::NotEnoughReplicasAfterAppend.outcome(),
            Outcome::Indeterminate
        );
        assert!(!ErrorCode::OutOfOrderSequence.is_retriable());
    }
}
