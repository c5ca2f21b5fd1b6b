//! The redb tables of format version 1 (documented in `docs/storage.md`), opening checks, and
//! the rebuild of a partition's in-memory state from them: at startup, and after a truncation.

use std::collections::HashMap;

use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition};
use sluice_proto::batch::BatchHeader;
use tracing::{info, warn};

use crate::leader_epochs::LeaderEpochs;
use crate::partition_log::{BatchMeta, InconsistentIndex, PartitionLog};
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
/// `(topic_id, partition, leader_epoch)`.
pub(crate) type EpochKey = (u64, u32, u32);
/// Per partition and leader epoch in its log: the offset where that epoch's first batch starts
/// (see `leader_epochs`). Added to format 1 later: a file without rows here gets them rebuilt
/// from its batch headers when it is opened.
pub(crate) const LEADER_EPOCHS: TableDefinition<EpochKey, u64> =
    TableDefinition::new("leader_epochs");
/// Per partition: the high watermark last checkpointed. No row: never checkpointed.
pub(crate) const HIGH_WATERMARKS: TableDefinition<(u64, u32), u64> =
    TableDefinition::new("high_watermarks");
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
    txn.open_table(LEADER_EPOCHS)?;
    txn.open_table(HIGH_WATERMARKS)?;
    txn.commit()?;
    Ok(())
}

/// What startup rebuilds from the partition, index and leader-epoch tables.
pub(crate) struct Loaded {
    pub logs: HashMap<PartitionId, PartitionLog>,
    /// Only partitions that hold batches of idempotent producers.
    pub producers: HashMap<PartitionId, ProducerState>,
}

/// One partition's in-memory state, rebuilt from its rows by [`restore_partition`].
pub(crate) struct Restored {
    pub log: PartitionLog,
    pub producers: ProducerState,
    /// Leader epochs that had to be rebuilt from the batch headers, because the stored ones were
    /// missing (a file written before the `leader_epochs` table existed) or disagreed with the
    /// log. The caller writes them.
    pub repaired_epochs: Option<LeaderEpochs>,
}

/// The one piece of code that turns a partition's stored rows into its in-memory state: its
/// bounds, its `batch_index` rows in offset order and its `leader_epochs` rows in epoch order
/// become a [`PartitionLog`] (checked: dense, within the bounds, epochs on batch starts) and the
/// idempotent producers' recent batches (replayed in offset order, as the writer recorded them).
/// `batch_epochs` reads `(base_offset, leader_epoch)` of every stored batch of the partition; it
/// is called only if the stored epochs must be rebuilt.
fn restore_partition(
    id: PartitionId,
    (log_start, log_end): (u64, u64),
    index: Vec<(u64, IndexRow)>,
    epochs: Vec<(u32, u64)>,
    batch_epochs: impl FnOnce() -> Result<Vec<(u64, u32)>, StorageError>,
) -> Result<Restored, StorageError> {
    let corrupt = |what: &str, bad: InconsistentIndex| StorageError::Corrupt {
        id,
        base_offset: bad.base_offset,
        reason: format!("{what}: {}", bad.reason),
    };
    let mut producers = ProducerState::new();
    let mut batches = Vec::with_capacity(index.len());
    for (base, (next_offset, max_timestamp, len, producer_id, epoch, base_sequence)) in index {
        let stamp = ProducerStamp {
            producer_id,
            epoch,
            base_sequence,
        };
        if stamp.is_idempotent() {
            let count = next_offset.saturating_sub(base).min(u64::from(u32::MAX)) as u32;
            producers.record(stamp, count, base);
        }
        batches.push((
            base,
            BatchMeta {
                next_offset,
                max_timestamp,
                len,
            },
        ));
    }
    let mut log = PartitionLog::restore(log_start, log_end, batches)
        .map_err(|bad| corrupt("batch index", bad))?;
    let had_epochs = !epochs.is_empty();
    let repaired_epochs = match log.restore_epochs(LeaderEpochs::from_entries(epochs)) {
        Ok(()) => None,
        Err(bad) => {
            // The epochs are derived from the batch headers, which are the truth: rebuild them.
            let mut rebuilt = LeaderEpochs::new();
            for (base, epoch) in batch_epochs()? {
                rebuilt.assign(epoch, base);
            }
            log.restore_epochs(rebuilt.clone())
                .map_err(|bad| corrupt("leader epochs read from the batch headers", bad))?;
            if had_epochs {
                warn!(partition = %id, cause = bad.reason, at = bad.base_offset,
                      "stored leader epochs disagree with the log; rebuilt from the batch headers");
            } else {
                info!(partition = %id, epochs = rebuilt.entries().len(),
                      "leader epochs rebuilt from the batch headers");
            }
            Some(rebuilt)
        }
    };
    Ok(Restored {
        log,
        producers,
        repaired_epochs,
    })
}

/// `(base_offset, leader_epoch)` of every stored batch of the partition in `[log_start,
/// log_end)`, from the batch headers.
fn batch_epochs(
    batches: &impl ReadableTable<BatchKey, &'static [u8]>,
    id: PartitionId,
    log_start: u64,
    log_end: u64,
) -> Result<Vec<(u64, u32)>, StorageError> {
    let key = |offset| (id.topic_id, id.partition, offset);
    let mut out = Vec::new();
    for row in batches.range(key(log_start)..key(log_end))? {
        let (k, v) = row?;
        let base = k.value().2;
        let header = BatchHeader::parse(v.value()).map_err(|err| StorageError::Corrupt {
            id,
            base_offset: base,
            reason: format!("reading its leader epoch: {err}"),
        })?;
        out.push((base, header.leader_epoch));
    }
    Ok(out)
}

/// Rebuilds every partition's in-memory log, with its leader epochs, and its idempotent
/// producers' recent batches, from the partition, index and leader-epoch tables. Leader epochs
/// that are missing or disagree with the log are rebuilt from the batch headers and written
/// back, in one durable commit, so that happens once.
pub(crate) fn load_partitions(db: &Database) -> Result<Loaded, StorageError> {
    let mut repairs: Vec<(PartitionId, LeaderEpochs)> = Vec::new();
    let loaded = {
        let txn = db.begin_read()?;
        let partitions = txn.open_table(PARTITIONS)?;
        let index = txn.open_table(BATCH_INDEX)?;
        let epoch_table = txn.open_table(LEADER_EPOCHS)?;
        let batches = txn.open_table(BATCHES)?;
        // One pass over the index and one over the epochs (both sorted by partition), then one
        // over the bounds.
        let mut rows: HashMap<PartitionId, Vec<(u64, IndexRow)>> = HashMap::new();
        for row in index.iter()? {
            let (key, meta) = row?;
            let (topic_id, partition, base) = key.value();
            rows.entry(PartitionId::new(topic_id, partition))
                .or_default()
                .push((base, meta.value()));
        }
        let mut epochs: HashMap<PartitionId, Vec<(u32, u64)>> = HashMap::new();
        for row in epoch_table.iter()? {
            let (key, start) = row?;
            let (topic_id, partition, epoch) = key.value();
            epochs
                .entry(PartitionId::new(topic_id, partition))
                .or_default()
                .push((epoch, start.value()));
        }
        let mut logs = HashMap::new();
        let mut producers = HashMap::new();
        for row in partitions.iter()? {
            let (key, bounds) = row?;
            let (topic_id, partition) = key.value();
            let id = PartitionId::new(topic_id, partition);
            let (log_start, log_end) = bounds.value();
            let restored = restore_partition(
                id,
                (log_start, log_end),
                rows.remove(&id).unwrap_or_default(),
                epochs.remove(&id).unwrap_or_default(),
                || batch_epochs(&batches, id, log_start, log_end),
            )?;
            if let Some(repaired) = restored.repaired_epochs {
                repairs.push((id, repaired));
            }
            if !restored.producers.is_empty() {
                producers.insert(id, restored.producers);
            }
            logs.insert(id, restored.log);
        }
        if let Some((&id, batches)) = rows.iter().next() {
            return Err(StorageError::Corrupt {
                id,
                base_offset: batches[0].0,
                reason: "batch index entries for a partition that does not exist".into(),
            });
        }
        // Epoch rows of a partition that does not exist are harmless (creating the partition
        // clears them); they are left alone rather than refuse to open.
        Loaded { logs, producers }
    };
    if !repairs.is_empty() {
        let txn = db.begin_write()?;
        {
            let mut table = txn.open_table(LEADER_EPOCHS)?;
            for (id, epochs) in &repairs {
                write_epochs(&mut table, *id, epochs)?;
            }
        }
        txn.commit()?;
        info!(partitions = repairs.len(), "rebuilt leader epochs written");
    }
    Ok(loaded)
}

/// Rebuilds one partition from its rows as they stand in a write transaction (after a
/// truncation, before its commit), with the same code as startup.
pub(crate) fn load_partition(
    id: PartitionId,
    partitions: &impl ReadableTable<(u64, u32), (u64, u64)>,
    index: &impl ReadableTable<BatchKey, IndexRow>,
    epoch_table: &impl ReadableTable<EpochKey, u64>,
    batches: &impl ReadableTable<BatchKey, &'static [u8]>,
) -> Result<Restored, StorageError> {
    let (log_start, log_end) = partitions
        .get((id.topic_id, id.partition))?
        .ok_or(StorageError::UnknownPartition(id))?
        .value();
    let key = |offset| (id.topic_id, id.partition, offset);
    let mut rows = Vec::new();
    for row in index.range(key(0)..=key(u64::MAX))? {
        let (k, meta) = row?;
        rows.push((k.value().2, meta.value()));
    }
    let mut epochs = Vec::new();
    for row in epoch_table.range(epoch_range(id))? {
        let (k, start) = row?;
        epochs.push((k.value().2, start.value()));
    }
    restore_partition(id, (log_start, log_end), rows, epochs, || {
        batch_epochs(batches, id, log_start, log_end)
    })
}

/// Every `leader_epochs` key of one partition.
pub(crate) fn epoch_range(id: PartitionId) -> std::ops::RangeInclusive<EpochKey> {
    (id.topic_id, id.partition, 0)..=(id.topic_id, id.partition, u32::MAX)
}

/// Replaces the partition's `leader_epochs` rows by `epochs`.
pub(crate) fn write_epochs(
    table: &mut Table<'_, EpochKey, u64>,
    id: PartitionId,
    epochs: &LeaderEpochs,
) -> Result<(), redb::StorageError> {
    table.retain_in(epoch_range(id), |_, _| false)?;
    for &(epoch, start) in epochs.entries() {
        table.insert((id.topic_id, id.partition, epoch), start)?;
    }
    Ok(())
}
