//! The one error type of the storage API, and how a redb error is told apart: a full disk,
//! another I/O error, or something else.

use std::io;

use crate::PartitionId;

/// Everything that can go wrong in the store.
///
/// `UnknownPartition`, `OffsetOutOfRange`, `InvalidBatch`, `OutOfOrderSequence`,
/// `ProducerFenced`, `ReplicaOffsetMismatch`, `EpochBehind` and `HighWatermarkBeyondLogEnd` are about the
/// request: the store is fine and the caller should answer its client. `Corrupt` means a
/// stored batch failed its checks (it is never served). `DiskFull`, `Failed`, `Closed` and
/// `Redb` mean the store itself cannot serve; after `DiskFull` (and after `Failed` for an I/O
/// error) writes resume by themselves once the store could reopen its file, so a later retry
/// can succeed.
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
    /// A replica's batch (`Store::append_replica`) does not start at the partition's log end:
    /// the follower's log and its fetch position disagree (a batch was lost or fetched twice).
    /// Nothing was stored; the follower should fetch again from `expected`.
    #[error(
        "replica batch for partition {id} starts at offset {got}, but the log ends at {expected}: \
         a replica appends only at its log end; nothing was stored"
    )]
    ReplicaOffsetMismatch {
        id: PartitionId,
        /// The partition's log end, where the batch had to start.
        expected: u64,
        /// The batch's base offset.
        got: u64,
    },
    /// A batch whose leader epoch is older than the log's latest: a replica's from a leader
    /// replaced before this log's last batches were written, or a leader's append decided
    /// before this node stopped leading. Nothing was stored.
    #[error(
        "batch for partition {id} has leader epoch {epoch}, older than the log's latest \
         {latest} (its leader was replaced); nothing was stored"
    )]
    EpochBehind {
        id: PartitionId,
        epoch: u32,
        latest: u32,
    },
    /// A high watermark to checkpoint is past the partition's log end: a replica's high
    /// watermark never exceeds its own log end. Nothing was stored.
    #[error(
        "high watermark {high_watermark} of partition {id} is past its log end {log_end}; \
         nothing was stored"
    )]
    HighWatermarkBeyondLogEnd {
        id: PartitionId,
        high_watermark: u64,
        log_end: u64,
    },
    /// The disk holding the store is full (`ENOSPC`): this write, or the one that failed before
    /// it, was not stored. While the disk stays full every write is refused with this error and
    /// reads keep working; once space is freed the writer reopens the store by itself (see
    /// `StoreOptions::reopen_interval`) and writes resume.
    #[error(
        "disk full: {cause} writing {location}; writes resume by themselves once space is freed"
    )]
    DiskFull {
        /// The store's file, e.g. `/var/lib/sluice/sluice.redb`.
        location: String,
        /// The operating system's words, e.g. "No space left on device (os error 28)".
        cause: String,
    },
    /// A commit or write failed for another reason than a full disk. The store refuses every
    /// further write rather than guess what reached the disk; the message says whether it
    /// reopens itself (after an I/O error) or must be reopened by hand.
    #[error("the store refuses writes: {0}")]
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

/// The `ENOSPC` ("No space left on device") error inside a redb error, if that is its cause.
pub(crate) fn disk_full(err: &redb::Error) -> Option<&io::Error> {
    match err {
        redb::Error::Io(io) => full_io(io),
        redb::Error::Backend(inner) => {
            let mut next: Option<&(dyn std::error::Error + 'static)> = Some(&**inner);
            while let Some(e) = next {
                if let Some(found) = e.downcast_ref::<io::Error>().and_then(full_io) {
                    return Some(found);
                }
                next = e.source();
            }
            None
        }
        _ => None,
    }
}

/// Whether the redb error came from the file (an I/O error now or earlier), so that reopening
/// the file can end it.
pub(crate) fn is_io(err: &redb::Error) -> bool {
    matches!(
        err,
        redb::Error::Io(_) | redb::Error::Backend(_) | redb::Error::PreviousIo
    )
}

/// `err` if it says the disk is full: by its kind, by its raw OS code, or by an `io::Error`
/// wrapped inside it (as `io::Error::other` does).
pub(crate) fn full_io(err: &io::Error) -> Option<&io::Error> {
    // ENOSPC is 28 on Linux and the BSDs; other systems map their code to the kind.
    if err.kind() == io::ErrorKind::StorageFull || (cfg!(unix) && err.raw_os_error() == Some(28)) {
        return Some(err);
    }
    err.get_ref()
        .and_then(|inner| inner.downcast_ref::<io::Error>())
        .and_then(full_io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_is_recognised_by_kind_code_and_wrapping() {
        let by_code = redb::Error::Io(io::Error::from_raw_os_error(28));
        assert!(disk_full(&by_code).is_some());
        let by_kind = redb::Error::Io(io::Error::from(io::ErrorKind::StorageFull));
        assert!(disk_full(&by_kind).is_some());
        let wrapped = redb::Error::Io(io::Error::other(io::Error::from_raw_os_error(28)));
        assert!(disk_full(&wrapped).is_some());
        let boxed = redb::Error::Backend(Box::new(io::Error::from_raw_os_error(28)));
        assert!(disk_full(&boxed).is_some());
        let other = redb::Error::Io(io::Error::other("injected I/O error"));
        assert!(disk_full(&other).is_none());
        assert!(is_io(&other));
        assert!(disk_full(&redb::Error::PreviousIo).is_none());
        assert!(!is_io(&redb::Error::Corrupted("x".into())));
    }
}
