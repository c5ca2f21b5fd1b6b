//! Errors: the codes carried on the wire, and the errors of this crate's codecs.

use serde::{Deserialize, Serialize};

/// Why a request failed, as carried on the wire. [`ErrorCode::is_retriable`] tells a client
/// whether sending the same request again (perhaps after refreshing metadata) can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The topic does not exist.
    UnknownTopic,
    /// The topic exists but has no such partition.
    UnknownPartition,
    /// The topic name breaks the naming rule.
    InvalidTopicName,
    /// A topic of that name already exists.
    TopicAlreadyExists,
    /// A configuration value is out of range or unparseable.
    InvalidConfig,
    /// This node does not lead the partition; refresh metadata and retry at the leader.
    NotLeader,
    /// The partition has no leader right now (election in progress); retry later.
    LeaderNotAvailable,
    /// The requested offset is outside the log; `WireError::offset` carries the earliest offset.
    OffsetOutOfRange,
    /// A record batch is larger than the topic or broker allows.
    RecordTooLarge,
    /// A record batch failed validation (bad CRC, bad header, bad records).
    InvalidRecord,
    /// A stored batch failed its CRC check when read back; it is not served.
    CorruptData,
    /// The request could not be decoded or makes no sense.
    InvalidRequest,
    /// A frame exceeded the maximum frame size.
    FrameTooLarge,
    /// No protocol version is shared by client and broker.
    UnsupportedVersion,
    /// The broker could not complete the request in time; the outcome is unknown.
    Timeout,
    /// Fewer in-sync replicas than `min.insync.replicas`; retry later.
    NotEnoughReplicas,
    /// The broker's store refuses writes (a full disk, an I/O error); the message says why and
    /// whether writes resume by themselves (they do once a full disk has space again).
    StorageError,
    /// The broker is shutting down; retry against it (or another) later.
    ShuttingDown,
    /// Something unexpected happened inside the broker.
    Internal,
    /// An idempotent producer's batch does not continue its sequence for the partition (a batch
    /// before it is missing); the message says which sequence the broker expected. Not
    /// retriable: resending the same batch cannot fill the gap.
    OutOfOrderSequence,
    /// The batch carries an older epoch of its producer id than the broker has seen: a newer
    /// instance of the producer exists. Not retriable.
    ProducerFenced,
    /// The consumer group coordinator does not know this member (its session expired, or it
    /// left): rejoin the group.
    UnknownMember,
    /// The consumer group does not exist.
    UnknownGroup,
    /// The operation needs a group without active members.
    GroupNotEmpty,
    /// A member committed offsets of a partition it does not own.
    NotPartitionOwner,
    /// This node does not coordinate the group; refresh metadata and retry at the coordinator.
    NotCoordinator,
    /// No plugin of that name is deployed.
    UnknownPlugin,
    /// The plugin is not a valid component, implements the wrong world, or failed (trapped,
    /// ran out of time or memory, returned malformed output); the message says which.
    InvalidPlugin,
    /// No pipeline of that name exists.
    UnknownPipeline,
    /// A pipeline of that name already exists.
    PipelineExists,
    /// The request carries an older leader epoch than the partition's current one: the
    /// client's metadata is stale. Refresh it and retry at the current leader.
    FencedLeaderEpoch,
    /// The request carries a newer leader epoch than this broker knows: this broker's metadata
    /// is behind. Retry shortly.
    UnknownLeaderEpoch,
    /// This node coordinates the group but is still loading its state (it just became the
    /// leader of the group's offsets partition). Retry shortly.
    CoordinatorLoadInProgress,
    /// No connector of that name exists.
    UnknownConnector,
    /// A connector of that name already exists.
    ConnectorExists,
    /// The client's principal may not do this; the message names the operation and the
    /// resource (docs/security.md).
    NotAuthorized,
    /// The connection has not authenticated (and must, under this broker's `client_auth`),
    /// its authentication failed, or the credential it used is gone (user deleted, token
    /// revoked or expired). The message says which.
    NotAuthenticated,
}

impl ErrorCode {
    /// Whether a retry of the same request can succeed without the caller changing it.
    pub fn is_retriable(self) -> bool {
        matches!(
            self,
            ErrorCode::NotLeader
                | ErrorCode::LeaderNotAvailable
                | ErrorCode::Timeout
                | ErrorCode::NotEnoughReplicas
                | ErrorCode::ShuttingDown
                | ErrorCode::NotCoordinator
                | ErrorCode::FencedLeaderEpoch
                | ErrorCode::UnknownLeaderEpoch
                | ErrorCode::CoordinatorLoadInProgress
        )
    }
}

/// An error response as carried on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct WireError {
    pub code: ErrorCode,
    /// What went wrong and, where it helps, what to do about it.
    pub message: String,
    /// For [`ErrorCode::OffsetOutOfRange`]: the partition's earliest available offset.
    pub offset: Option<u64>,
    /// For [`ErrorCode::NotLeader`]: the node id of the current leader, when known.
    pub leader: Option<u32>,
}

impl WireError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        WireError {
            code,
            message: message.into(),
            offset: None,
            leader: None,
        }
    }

    pub fn with_offset(mut self, offset: u64) -> Self {
        self.offset = Some(offset);
        self
    }

    pub fn with_leader(mut self, leader: u32) -> Self {
        self.leader = Some(leader);
        self
    }
}

/// Errors of this crate's codecs and frame I/O.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// Bytes that do not follow the format.
    #[error("malformed data: {0}")]
    Malformed(&'static str),
    /// A batch whose CRC-32C does not match its contents.
    #[error("batch CRC mismatch: header says {expected:#010x}, contents give {actual:#010x}")]
    CrcMismatch { expected: u32, actual: u32 },
    /// A frame longer than the receiver accepts.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge { len: usize, max: usize },
    /// The stream ended in the middle of a frame.
    #[error("stream ended in the middle of a frame")]
    Truncated,
    /// A control message that serde could not decode or encode.
    #[error("control message: {0}")]
    Codec(#[from] postcard::Error),
    /// Compressing or decompressing a batch failed.
    #[error("compression: {0}")]
    Compression(String),
    /// The underlying stream failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}
