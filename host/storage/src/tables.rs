//! The redb tables of format version 1 (documented in `docs/storage.md`), opening checks, and
//! the startup rebuild of the in-memory index.

use std::collections::HashMap;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::partition_log::{BatchMeta, PartitionLog};
use crate::producer_state::{ProducerStamp, ProducerState};
use crate::{PartitionId, StorageError};

/// The on-disk format version this build writes and reads.
pub const FORMAT_VERSION: u64 = 1;

/// `(topic_id, partition, base_offset)`: big-endian-ordered tuple keys keep a partition's
/// batches together and in offset order.
pub(crate) type BatchKey = (u64, u32, u64);

/// The stored batches, whole, with base offset and leader epoch already patched in.
pub(crate) const BATCHES: TableDefinition<BatchKey, &[u8]> = TableDefinition::new("batches");
/// Per batch: `(next_offset, max_timestamp, len, producer_id, producer_epoch, base_sequence)`,
/// so startup rebuilds offsets and idempotent producers' state without reading batch bodies.
pub(crate) const BATCH_INDEX: TableDefinition<BatchKey, IndexRow> =
    TableDefinition::new("batch_index");

/// A `batch_index` value: `(next_offset, max_timestamp, len, producer_id, producer_epoch,
/// base_sequence)`.
pub(crate) type IndexRow = (u64, i64, u32, i64, i16, i32);
/// Per partition: `(log_start, log_end)`. Kept even when the partition holds no batch, so
/// offsets are never reused.
pub(crate) const PARTITIONS: TableDefinition<(u64, u32), (u64, u64)> =
    TableDefinition::new("partitions");
/// The metadata log: index -> entry.
pub(crate) const META_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("meta_log");
/// Node-level facts: key -> value.
pub(crate) const META_KV: TableDefinition<&str, &[u8]> = TableDefinition::new("meta_kv");
/// `"version"` -> the format version.
pub(crate) const FORMAT: TableDefinition<&str, u64> = TableDefinition::new("sluice_format");

const VERSION_KEY: &str = "version";

/// Creates the tables of a new store, or checks the format version of an existing one.
pub(crate) fn init(db: &Database) -> Result<(), StorageError> {
    let txn = db.begin_write()?;
    let existing = txn.list_tables()?.count();
    {
        let mut format = txn.open_table(FORMAT)?;
        let version = format.get(VERSION_KEY)?.map(|v| v.value());
        match version {
            Some(FORMAT_VERSION) => {}
            Some(other) => {
                return Err(StorageError::UnsupportedFormat(format!(
                    "the file has format version {other}; this build reads version \
                     {FORMAT_VERSION} only (use a build that matches the file)"
                )));
            }
            None if existing > 0 => {
                return Err(StorageError::UnsupportedFormat(
                    "the file is a redb database without a Sluice format version; it is not \
                     a Sluice store (point the broker at another data directory)"
                        .into(),
                ));
            }
            None => {
                format.insert(VERSION_KEY, FORMAT_VERSION)?;
            }
        }
    }
    txn.open_table(BATCHES)?;
    txn.open_table(BATCH_INDEX)?;
    txn.open_table(PARTITIONS)?;
    txn.open_table(META_LOG)?;
    txn.open_table(META_KV)?;
    txn.commit()?;
    Ok(())
}

/// What startup rebuilds from the partition and index tables.
pub(crate) struct Loaded {
    pub logs: HashMap<PartitionId, PartitionLog>,
    /// Only partitions that hold batches of idempotent producers.
    pub producers: HashMap<PartitionId, ProducerState>,
}

/// Rebuilds every partition's in-memory log, and its idempotent producers' recent batches,
/// from the partition and index tables.
pub(crate) fn load_partitions(db: &Database) -> Result<Loaded, StorageError> {
    let txn = db.begin_read()?;
    let partitions = txn.open_table(PARTITIONS)?;
    let index = txn.open_table(BATCH_INDEX)?;
    // One pass over the index (sorted by partition, then offset), then one over the bounds.
    let mut entries: HashMap<PartitionId, Vec<(u64, BatchMeta)>> = HashMap::new();
    let mut producers: HashMap<PartitionId, ProducerState> = HashMap::new();
    for row in index.iter()? {
        let (key, meta) = row?;
        let (topic_id, partition, base) = key.value();
        let (next_offset, max_timestamp, len, producer_id, epoch, base_sequence) = meta.value();
        let id = PartitionId::new(topic_id, partition);
        let stamp = ProducerStamp {
            producer_id,
            epoch,
            base_sequence,
        };
        if stamp.is_idempotent() {
            let count = next_offset.saturating_sub(base).min(u64::from(u32::MAX)) as u32;
            producers.entry(id).or_default().record(stamp, count, base);
        }
        entries.entry(id).or_default().push((
            base,
            BatchMeta {
                next_offset,
                max_timestamp,
                len,
            },
        ));
    }
    let mut out = HashMap::new();
    for row in partitions.iter()? {
        let (key, bounds) = row?;
        let (topic_id, partition) = key.value();
        let (log_start, log_end) = bounds.value();
        let id = PartitionId::new(topic_id, partition);
        let batches = entries.remove(&id).unwrap_or_default();
        let log = PartitionLog::restore(log_start, log_end, batches).map_err(|bad| {
            StorageError::Corrupt {
                id,
                base_offset: bad.base_offset,
                reason: format!("batch index: {}", bad.reason),
            }
        })?;
        out.insert(id, log);
    }
    if let Some((&id, batches)) = entries.iter().next() {
        return Err(StorageError::Corrupt {
            id,
            base_offset: batches[0].0,
            reason: "batch index entries for a partition that does not exist".into(),
        });
    }
    Ok(Loaded {
        logs: out,
        producers,
    })
}
