//! The one error type of the storage API.

use crate::PartitionId;

/// Everything that can go wrong in the store.
///
/// `UnknownPartition`, `OffsetOutOfRange`, `InvalidBatch`, `OutOfOrderSequence` and
/// `ProducerFenced` are about the request: the store is
/// fine and the caller should answer its client. `Corrupt` means a stored batch failed its checks
/// (it is never served). `Failed`, `Closed` and `Redb` mean the store itself cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The partition was never created, or its topic was deleted.
    #[error("unknown partition {0}")]
    UnknownPartition(PartitionId),
    /// The requested offset is outside `[log_start, log_end]`; the client should reset to one of
    /// the bounds given.
    #[error("offset out of range: the partition holds offsets [{log_start}, {log_end})")]
    OffsetOutOfRange { log_start: u64, log_end: u64 },
    /// A stored batch failed its CRC-32C or header checks, or the index disagrees with the
    /// stored batches. Nothing from such a batch is returned.
    #[error("corrupt batch at offset {base_offset} of partition {id}: {reason}")]
    Corrupt {
        id: PartitionId,
        base_offset: u64,
        reason: String,
    },
    /// A batch handed to `append` does not parse as a record batch. The broker validates batches
    /// before appending, so this means a bug upstream; nothing was stored.
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    /// An idempotent producer's batch does not continue its sequence on this partition: a
    /// batch before it is missing (or it retries one too old to be recognised). Nothing was
    /// stored. Resending cannot help; the producer must start a new sequence (a new producer
    /// id).
    #[error(
        "out of order sequence for producer {producer_id} on partition {id}: expected sequence \
         {expected}, got {got}"
    )]
    OutOfOrderSequence {
        id: PartitionId,
        producer_id: i64,
        expected: i32,
        got: i32,
    },
    /// The batch carries an older epoch of its producer id than this partition has seen: a
    /// newer instance of the producer took over. Nothing was stored.
    #[error(
        "producer {producer_id} epoch {epoch} is fenced on partition {id}: epoch \
         {current_epoch} is current"
    )]
    ProducerFenced {
        id: PartitionId,
        producer_id: i64,
        epoch: i16,
        current_epoch: i16,
    },
    /// An earlier commit or write failed (I/O error, full disk, ...). The store refuses every
    /// further write rather than guess what reached the disk; reopen it to recover.
    #[error("the store failed earlier and refuses writes until it is reopened: {0}")]
    Failed(String),
    /// The store was shut down.
    #[error("the store is shut down")]
    Closed,
    /// The file is not a Sluice store, or has an on-disk format version this build does not read.
    #[error("unsupported store format: {0}")]
    UnsupportedFormat(String),
    /// An error from redb outside the write path (opening the file, a read transaction).
    #[error("redb: {0}")]
    Redb(#[from] redb::Error),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StorageError {
            fn from(err: $t) -> Self {
                StorageError::Redb(err.into())
            }
        }
    )*};
}

from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);
