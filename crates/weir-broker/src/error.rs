//! What a broker request can fail with, as typed values. The gRPC edge turns a
//! [`BrokerError`] into a `tonic::Status` in one place ([`From<BrokerError> for Status`]);
//! nothing inside the broker builds a status.

use tonic::Status;
use weir_proto::status::{redirect, status};
use weir_types::{BrokerId, ErrorCode, LeaderEpoch, Offset};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A request field is wrong; `field` names it as the client spelled it.
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("{topic}/{partition} is not known here")]
    UnknownPartition { topic: String, partition: u32 },
    /// Another broker leads it; `address` is the hint a client follows.
    #[error("{topic}/{partition} is led by broker {leader}")]
    NotLeader {
        topic: String,
        partition: u32,
        leader: BrokerId,
        address: Option<String>,
    },
    #[error("{topic}/{partition} has no leader right now")]
    LeaderNotAvailable { topic: String, partition: u32 },
    #[error("leader epoch {given} is older than the current {current}")]
    FencedLeaderEpoch {
        given: LeaderEpoch,
        current: LeaderEpoch,
    },
    #[error("leader epoch {given} is newer than this broker knows ({current})")]
    UnknownLeaderEpoch {
        given: LeaderEpoch,
        current: LeaderEpoch,
    },
    #[error("{} in-sync replicas {isr:?}, the topic needs {min}", isr.len())]
    NotEnoughReplicas { isr: Vec<BrokerId>, min: u32 },
    #[error("the ISR shrank to {isr:?} (the topic needs {min}) while the batch was replicated")]
    NotEnoughReplicasAfterAppend { isr: Vec<BrokerId>, min: u32 },
    #[error("leadership moved before the batch was replicated; it may or may not be committed")]
    LeaderChangedAfterAppend,
    #[error("the in-sync replicas did not confirm the batch in time; it may still be committed")]
    ReplicationTimedOut,
    #[error("offset {offset} is outside [{start}, {high_watermark}]")]
    OffsetOutOfRange {
        offset: Offset,
        start: Offset,
        high_watermark: Offset,
    },
    #[error("the partition is closing on this broker")]
    Closing,
    #[error("the partition owner stopped before answering")]
    OwnerStopped,
    #[error("this broker is not registered yet")]
    NotRegistered,
    #[error("no producer ids from the controller: {0}")]
    NoProducerIds(String),
    #[error("stored records do not decode: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Log(#[from] weir_log::LogError),
    #[error("internal task failed: {0}")]
    Task(String),
    /// The controllers' answer to a call made for the request (e.g. loading a cursor).
    #[error("{message}")]
    Remote { code: ErrorCode, message: String },
}

impl BrokerError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> BrokerError {
        BrokerError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            BrokerError::Invalid { .. } => ErrorCode::InvalidArgument,
            BrokerError::UnknownPartition { .. } => ErrorCode::UnknownTopicOrPartition,
            BrokerError::NotLeader { .. } | BrokerError::Closing => ErrorCode::NotLeader,
            BrokerError::LeaderNotAvailable { .. } | BrokerError::NotRegistered => {
                ErrorCode::LeaderNotAvailable
            }
            BrokerError::FencedLeaderEpoch { .. } => ErrorCode::FencedLeaderEpoch,
            BrokerError::UnknownLeaderEpoch { .. } => ErrorCode::UnknownLeaderEpoch,
            BrokerError::NotEnoughReplicas { .. } => ErrorCode::NotEnoughReplicas,
            BrokerError::NotEnoughReplicasAfterAppend { .. } => {
                ErrorCode::NotEnoughReplicasAfterAppend
            }
            BrokerError::LeaderChangedAfterAppend => ErrorCode::LeaderChangedAfterAppend,
            BrokerError::ReplicationTimedOut => ErrorCode::RequestTimedOut,
            BrokerError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
            BrokerError::NoProducerIds(_) => ErrorCode::NotController,
            BrokerError::Corrupt(_) => ErrorCode::CorruptRecord,
            BrokerError::OwnerStopped => ErrorCode::StorageError,
            BrokerError::Log(e) => e.code(),
            BrokerError::Task(_) => ErrorCode::Unknown,
            BrokerError::Remote { code, .. } => *code,
        }
    }
}

impl From<BrokerError> for Status {
    fn from(e: BrokerError) -> Status {
        let code = e.code();
        match &e {
            BrokerError::NotLeader { address, .. } => {
                redirect(code, e.to_string(), address.as_deref())
            }
            _ => status(code, e.to_string()),
        }
    }
}

impl From<tokio::task::JoinError> for BrokerError {
    fn from(e: tokio::task::JoinError) -> BrokerError {
        BrokerError::Task(e.to_string())
    }
}
