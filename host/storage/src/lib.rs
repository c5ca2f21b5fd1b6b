//! The broker's on-disk partition log, kept in one redb file.
//!
//! **Data in**: [`Store::append`] takes a whole record batch (already validated by the broker),
//! hands it to the single writer thread, which gives it the partition's next offsets, writes the
//! batch, its index entry and the partition's new bounds in one write transaction shared with
//! every other append queued at the same moment (group commit), commits once, and answers each
//! waiter. [`Store::apply_retention`], [`Store::create_partition`], [`Store::delete_topic`] and
//! the metadata log ([`Store::meta_append`], [`Store::meta_put`]) take the same road.
//!
//! **Data out**: [`Store::read`] opens a redb read transaction (concurrent with the writer) and
//! returns whole stored batches, byte for byte, each checked against its CRC-32C.
//! [`Store::partition_state`] and [`Store::offset_for_timestamp`] answer from an in-memory index
//! that is rebuilt from a small index table on startup, without reading batch bodies.
//!
//! **Replication**: a follower appends the leader's batches as they are with
//! [`Store::append_replica`] (only at its log end), cuts a diverging suffix with
//! [`Store::truncate`] (durable; the in-memory state is rebuilt from the tables), finds where
//! each leader epoch starts with [`Store::leader_epochs`] (a stored index kept by appends,
//! truncation and retention), and keeps its high watermark with
//! [`Store::checkpoint_high_watermark`]. [`Store::apply_retention_bounded`] never removes a
//! batch that ends past the bound it is given (the high watermark).
//!
//! Idempotent producers: the writer checks each batch's producer id, epoch and sequence against
//! [`ProducerState`] (a pure state machine) where it assigns offsets, refusing gaps and answering
//! exact retries with their original offset instead of storing them twice.
//!
//! The offset logic is a pure state machine, [`PartitionLog`]; the redb and threading driver is
//! in `store`. The on-disk format, durability modes and failure behaviour are described in
//! `docs/storage.md`.
//!
//! **Failures**: after a failed write transaction the store refuses writes at once
//! ([`StorageError::DiskFull`] when the disk is full) while reads keep working. After an I/O
//! error the writer reopens the file by itself once a [`StoreFile::probe`] succeeds, rebuilding
//! its in-memory state from what reached the file, and writes resume.

mod error;
mod file;
pub mod leader_epochs;
pub mod partition_log;
pub mod producer_state;
mod store;
mod tables;

use std::fmt;
use std::time::Duration;

pub use error::StorageError;
pub use file::StoreFile;
pub use leader_epochs::LeaderEpochs;
pub use partition_log::{AppendRefused, BatchMeta, PartitionLog, RetentionPlan};
pub use producer_state::{ProducerStamp, ProducerState, SequenceCheck};
pub use store::Store;
pub use tables::FORMAT_VERSION;

/// One partition of one topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionId {
    pub topic_id: u64,
    pub partition: u32,
}

impl PartitionId {
    pub fn new(topic_id: u64, partition: u32) -> Self {
        PartitionId {
            topic_id,
            partition,
        }
    }
}

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic_id, self.partition)
    }
}

/// Where a partition's log starts and ends, and what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PartitionState {
    /// First offset still stored (retention moves it forward).
    pub log_start: u64,
    /// The offset the next appended record will get.
    pub log_end: u64,
    /// Sum of the stored batches' lengths.
    pub size_bytes: u64,
    /// Number of stored batches.
    pub batches: u64,
}

/// Limits on how much the writer puts into one write transaction, and how it recovers.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Most commands (appends and others) in one group commit. Default 4096.
    pub max_group_batches: usize,
    /// Most batch bytes in one group commit. Default 32 MiB.
    pub max_group_bytes: usize,
    /// Memory redb may use to cache pages. Default 256 MiB; small edge nodes set less.
    pub cache_bytes: usize,
    /// Most batch bytes appended without fsync (topics with `interval:MS` durability) before a
    /// durable commit, whatever the interval. Default 8 MiB. redb keeps the pages of commits
    /// made without fsync in its write buffer and writes them all out in the next durable
    /// commit, which holds up every append behind it for as long; this bounds that pause
    /// (docs/performance.md).
    pub max_unsynced_bytes: usize,
    /// Save redb's allocator state with every durable commit (redb's quick repair), so that
    /// opening the store after a crash takes milliseconds instead of a walk of the whole file
    /// (seconds per 10 GB, more with a cold page cache). Default true.
    pub quick_repair: bool,
    /// After an I/O error (a full disk, ...) the writer tries this often to reopen the file and
    /// resume writes. Default 1 s.
    pub reopen_interval: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_group_batches: 4096,
            max_group_bytes: 32 * 1024 * 1024,
            cache_bytes: 256 * 1024 * 1024,
            max_unsynced_bytes: 8 * 1024 * 1024,
            quick_repair: true,
            reopen_interval: Duration::from_millis(1000),
        }
    }
}

/// The outcome of one append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Offset given to the batch's first record.
    pub base_offset: u64,
    pub log_start: u64,
    /// Log end right after this batch.
    pub log_end: u64,
    /// The batch was an idempotent producer's retry of one already stored: `base_offset` is
    /// where the first copy went, and nothing was written again. `log_end` is then the end of
    /// that first copy.
    pub duplicate: bool,
    /// The leader epoch of the batch at `base_offset` (of the first copy, for a duplicate).
    /// A leader waiting for the batch to commit checks the batch at `base_offset` still has
    /// it: a log truncated and written again by another leader holds a newer epoch there.
    pub leader_epoch: u32,
}

/// Whole batches, concatenated, as a fetch returns them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadBatches {
    pub bytes: bytes::Bytes,
    pub log_start: u64,
    pub log_end: u64,
}

/// What one retention pass removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionOutcome {
    pub removed_batches: u64,
    pub removed_bytes: u64,
    /// The log start after retention.
    pub log_start: u64,
}
