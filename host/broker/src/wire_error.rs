//! The one place where errors of the broker's parts (metadata, storage, the controller) become
//! the error codes and messages a client receives.

use sluice_metadata::MetadataError;
use sluice_proto::{ErrorCode, WireError};
use sluice_storage::StorageError;

use crate::controller::ProposeError;

pub(crate) fn unknown_topic(name: &str) -> WireError {
    WireError::new(
        ErrorCode::UnknownTopic,
        format!("topic {name:?} does not exist; create it with `sluice topic create {name}`"),
    )
}

pub(crate) fn metadata_error(e: MetadataError) -> WireError {
    let code = match &e {
        MetadataError::UnknownTopic(name) => return unknown_topic(name),
        MetadataError::TopicExists(_) => ErrorCode::TopicAlreadyExists,
        MetadataError::InvalidName(_) => ErrorCode::InvalidTopicName,
        MetadataError::UnknownPartition { .. } => ErrorCode::UnknownPartition,
        MetadataError::InvalidPartitions(_)
        | MetadataError::InvalidConfig(_)
        | MetadataError::UnknownBroker(_) => ErrorCode::InvalidConfig,
        MetadataError::StaleBrokerEpoch { .. } => ErrorCode::InvalidRequest,
        MetadataError::StaleLeaderEpoch { .. } => ErrorCode::FencedLeaderEpoch,
        MetadataError::ProducerIdsExhausted => ErrorCode::Internal,
        MetadataError::UnknownPlugin(_) => ErrorCode::UnknownPlugin,
        MetadataError::PluginInUse { .. } => ErrorCode::InvalidConfig,
        MetadataError::UnknownPipeline(_) => ErrorCode::UnknownPipeline,
        MetadataError::PipelineExists(_) => ErrorCode::PipelineExists,
        MetadataError::TopicInUse { .. } => ErrorCode::InvalidConfig,
        MetadataError::UnknownConnector(_) => ErrorCode::UnknownConnector,
        MetadataError::ConnectorExists(_) => ErrorCode::ConnectorExists,
        MetadataError::ConnectorTaskReplaced { .. } => ErrorCode::InvalidRequest,
        MetadataError::UnknownCredential(_) => ErrorCode::InvalidConfig,
    };
    WireError::new(code, e.to_string())
}

pub(crate) fn storage_error(e: StorageError) -> WireError {
    match e {
        StorageError::OffsetOutOfRange { log_start, log_end } => WireError::new(
            ErrorCode::OffsetOutOfRange,
            format!("offset out of range: the partition holds offsets {log_start}..{log_end}"),
        )
        .with_offset(log_start),
        // Only partitions the metadata places here reach the store, so a missing one is a
        // replica the watcher has yet to create (the topic was just created through another
        // broker) or one just deleted: either way, asking again soon gets the right answer.
        StorageError::UnknownPartition(id) => WireError::new(
            ErrorCode::LeaderNotAvailable,
            format!(
                "partition {} is not ready on this broker yet; retry shortly",
                id.partition
            ),
        ),
        StorageError::Corrupt { .. } => WireError::new(ErrorCode::CorruptData, e.to_string()),
        StorageError::OutOfOrderSequence {
            id,
            producer_id,
            expected,
            got,
        } => WireError::new(
            ErrorCode::OutOfOrderSequence,
            format!(
                "out of order sequence on partition {}: producer {producer_id} sent sequence \
                 {got}, expected sequence {expected} (a batch before it is missing); nothing was \
                 stored — the producer must start over with a new producer id",
                id.partition
            ),
        ),
        StorageError::ProducerFenced {
            id,
            producer_id,
            epoch,
            current_epoch,
        } => WireError::new(
            ErrorCode::ProducerFenced,
            format!(
                "producer {producer_id} epoch {epoch} is fenced on partition {}: epoch \
                 {current_epoch} is current (a newer instance of this producer exists); nothing \
                 was stored",
                id.partition
            ),
        ),
        // Only a leader's append reaches a client with this: it was decided as leader of an
        // epoch this node's log has moved past, so another node leads now.
        StorageError::EpochBehind { .. } => WireError::new(
            ErrorCode::NotLeader,
            format!("{e}; this broker no longer leads the partition, retry at its leader"),
        ),
        StorageError::Closed => WireError::new(
            ErrorCode::ShuttingDown,
            "the store is closing; retry shortly",
        ),
        // Says the disk is full, which file, and that writes resume once space is freed.
        StorageError::DiskFull { .. } => WireError::new(ErrorCode::StorageError, e.to_string()),
        other => WireError::new(ErrorCode::StorageError, other.to_string()),
    }
}

pub(crate) fn propose_error(e: ProposeError) -> WireError {
    match e {
        ProposeError::Refused(m) => metadata_error(m),
        ProposeError::Unavailable(why) => WireError::new(
            ErrorCode::LeaderNotAvailable,
            format!("{why}; retry shortly"),
        ),
    }
}
