//! The storage operations of partition replication on a real redb file: replica appends,
//! durable truncation, the leader-epoch index, the high watermark checkpoint and retention
//! bounded by the high watermark. Ends with a property test against a `Vec` model.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use redb::{ReadableTableMetadata, TableDefinition};
use sluice_proto::batch::{BatchHeader, assign_offset, split_batches};
use sluice_proto::{BatchBuilder, Compression, Durability, Record};
use sluice_storage::{PartitionId, PartitionState, StorageError, Store, StoreOptions};

const FSYNC: Durability = Durability::Fsync;
const P: PartitionId = PartitionId {
    topic_id: 1,
    partition: 0,
};

/// A batch of `records` records at `timestamp`, of producer `pid` (-1: not idempotent)
/// starting at sequence `seq`.
fn batch(records: u32, timestamp: i64, pid: i64, seq: i32) -> Vec<u8> {
    let mut b = BatchBuilder::new(Compression::None);
    for i in 0..records {
        b.push(&Record {
            value: Some(Bytes::from(format!("v{i}"))),
            timestamp,
            ..Default::default()
        });
    }
    let epoch = if pid < 0 { -1 } else { 0 };
    b.finish(pid, epoch, seq).unwrap()
}

/// A batch as a leader stored it: placed at `base` in leader epoch `epoch`.
fn leader_batch(base: u64, epoch: u32, records: u32, pid: i64, seq: i32) -> Vec<u8> {
    let mut b = batch(records, 1_000, pid, seq);
    assign_offset(&mut b, base, epoch);
    b
}

fn headers(store: &Store, id: PartitionId) -> Vec<BatchHeader> {
    let from = store.partition_state(id).unwrap().log_start;
    split_batches(store.read(id, from, u32::MAX).unwrap().bytes)
        .unwrap()
        .into_iter()
        .map(|(h, _)| h)
        .collect()
}

/// `(base_offset, record_count, leader_epoch)` of every stored batch.
fn layout(store: &Store, id: PartitionId) -> Vec<(u64, u32, u32)> {
    headers(store, id)
        .iter()
        .map(|h| (h.base_offset, h.record_count, h.leader_epoch))
        .collect()
}

struct Dir {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn dir() -> Dir {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.redb");
    Dir { _dir: dir, path }
}

fn open(path: &Path) -> Store {
    Store::open(path, StoreOptions::default()).unwrap()
}

fn bounds(store: &Store, id: PartitionId) -> (u64, u64) {
    let s = store.partition_state(id).unwrap();
    (s.log_start, s.log_end)
}

#[tokio::test]
async fn a_replica_keeps_the_leaders_offsets_and_epochs_and_appends_only_at_its_log_end() {
    let d = dir();
    let store = open(&d.path);
    store.create_partition(P).unwrap();
    let first = leader_batch(0, 3, 2, -1, -1);
    let got = store.append_replica(P, first.clone(), FSYNC).await.unwrap();
    assert_eq!((got.base_offset, got.log_end, got.duplicate), (0, 2, false));
    let got = store
        .append_replica(P, leader_batch(2, 5, 3, -1, -1), FSYNC)
        .await
        .unwrap();
    assert_eq!((got.base_offset, got.log_end), (2, 5));

    for wrong in [4, 6, 0] {
        match store
            .append_replica(P, leader_batch(wrong, 5, 1, -1, -1), FSYNC)
            .await
        {
            Err(StorageError::ReplicaOffsetMismatch { id, expected, got }) => {
                assert_eq!((id, expected, got), (P, 5, wrong));
            }
            other => panic!("expected ReplicaOffsetMismatch, got {other:?}"),
        }
    }
    let err = store
        .append_replica(P, leader_batch(7, 5, 1, -1, -1), FSYNC)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "replica batch for partition 1/0 starts at offset 7, but the log ends at 5: a replica \
         appends only at its log end; nothing was stored"
    );
    assert_eq!(layout(&store, P), [(0, 2, 3), (2, 3, 5)]);
    assert_eq!(store.partition_state(P).unwrap().batches, 2);
    // Stored byte for byte.
    let read = store.read(P, 0, u32::MAX).unwrap();
    assert_eq!(&read.bytes[..first.len()], &first[..]);
    assert_eq!(store.leader_epochs(P).unwrap(), [(3, 0), (5, 2)]);

    // A leader append after replica ones continues at the log end, in its own epoch.
    let got = store.append(P, batch(1, 1_000, -1, -1), 6, FSYNC).await;
    let got = got.unwrap();
    assert_eq!((got.base_offset, got.leader_epoch), (5, 6));
    assert_eq!(store.leader_epochs(P).unwrap(), [(3, 0), (5, 2), (6, 5)]);
    // The epoch of the batch holding an offset, for a leader checking its batch is still
    // there when the watermark passes it.
    let held: Vec<Option<u32>> = (0..7).map(|o| store.epoch_at(P, o)).collect();
    assert_eq!(
        held,
        [Some(3), Some(3), Some(5), Some(5), Some(5), Some(6), None]
    );
    // An append decided as leader of an epoch the log has moved past is refused: this node
    // followed a newer leader meanwhile.
    match store.append(P, batch(1, 1_000, -1, -1), 5, FSYNC).await {
        Err(StorageError::EpochBehind { id, epoch, latest }) => {
            assert_eq!((id, epoch, latest), (P, 5, 6));
        }
        other => panic!("expected EpochBehind, got {other:?}"),
    }
    assert_eq!(bounds(&store, P), (0, 6));
    assert!(matches!(
        store
            .append_replica(PartitionId::new(9, 9), leader_batch(0, 1, 1, -1, -1), FSYNC)
            .await,
        Err(StorageError::UnknownPartition(_))
    ));
}

#[tokio::test]
async fn a_new_leader_recognises_retries_of_batches_it_replicated() {
    let d = dir();
    let store = open(&d.path);
    store.create_partition(P).unwrap();
    // As a follower: producer 7's batches at sequences 0 (2 records) and 2 (1 record).
    store
        .append_replica(P, leader_batch(0, 1, 2, 7, 0), FSYNC)
        .await
        .unwrap();
    // No sequence check on a replica: the leader did it (it may even have accepted an unknown
    // producer mid-sequence).
    store
        .append_replica(P, leader_batch(2, 1, 1, 7, 2), FSYNC)
        .await
        .unwrap();
    // Now leading: the producer retries sequence 2, which must not be stored twice.
    let retry = store.append(P, batch(1, 1_000, 7, 2), 2, FSYNC).await;
    let retry = retry.unwrap();
    assert!(retry.duplicate);
    // Where the first copy is, and in which epoch (the previous leader's).
    assert_eq!((retry.base_offset, retry.leader_epoch), (2, 1));
    let gap = store.append(P, batch(1, 1_000, 7, 9), 2, FSYNC).await;
    assert!(matches!(
        gap,
        Err(StorageError::OutOfOrderSequence { expected: 3, .. })
    ));
    // And after a restart, from the stored index.
    store.shutdown().unwrap();
    let store = open(&d.path);
    let retry = store.append(P, batch(2, 1_000, 7, 0), 2, FSYNC).await;
    assert_eq!(retry.unwrap().base_offset, 0);
}

#[tokio::test]
async fn truncation_removes_whole_batches_durably_and_rebuilds_memory() {
    let d = dir();
    let store = open(&d.path);
    store.create_partition(P).unwrap();
    // Epoch 1: [0, 3) [3, 5); epoch 2: [5, 8); producer 4 at sequences 0, 3, 5.
    for (records, epoch, seq) in [(3, 1, 0), (2, 1, 3), (3, 2, 5)] {
        store
            .append(
                P,
                batch(records, 100 * i64::from(seq), 4, seq),
                epoch,
                FSYNC,
            )
            .await
            .unwrap();
    }
    store.checkpoint_high_watermark(P, 8).await.unwrap();
    assert_eq!(store.high_watermark_checkpoint(P).unwrap(), Some(8));
    assert_eq!(store.leader_epochs(P).unwrap(), [(1, 0), (2, 5)]);

    // At or after the log end: nothing to remove, nothing written.
    let commits = store.commit_count();
    assert_eq!(store.truncate(P, 8).unwrap(), 8);
    assert_eq!(store.truncate(P, 100).unwrap(), 8);
    assert_eq!(store.commit_count(), commits);

    // Inside the batch [3, 5): from its base.
    assert_eq!(store.truncate(P, 4).unwrap(), 3);
    let state = store.partition_state(P).unwrap();
    assert_eq!((state.log_start, state.log_end, state.batches), (0, 3, 1));
    assert_eq!(
        state.size_bytes,
        store.read(P, 0, u32::MAX).unwrap().bytes.len() as u64
    );
    assert_eq!(layout(&store, P), [(0, 3, 1)]);
    assert_eq!(store.leader_epochs(P).unwrap(), [(1, 0)]);
    assert_eq!(store.high_watermark_checkpoint(P).unwrap(), Some(3));
    assert_eq!(
        store.offset_for_timestamp(P, 250).unwrap(),
        3,
        "the log end"
    );
    assert!(matches!(
        store.read(P, 4, u32::MAX),
        Err(StorageError::OffsetOutOfRange {
            log_start: 0,
            log_end: 3
        })
    ));
    // The producer state forgot the removed batches: sequence 3 is new again, not a
    // duplicate, and goes to offset 3.
    let again = store
        .append(P, batch(2, 300, 4, 3), 3, FSYNC)
        .await
        .unwrap();
    assert_eq!((again.base_offset, again.duplicate), (3, false));
    assert_eq!(store.leader_epochs(P).unwrap(), [(1, 0), (3, 3)]);

    // Durable, and what a reopen rebuilds is what memory holds.
    let before = (
        store.partition_state(P),
        store.leader_epochs(P).unwrap(),
        layout(&store, P),
    );
    store.shutdown().unwrap();
    let store = open(&d.path);
    let after = (
        store.partition_state(P),
        store.leader_epochs(P).unwrap(),
        layout(&store, P),
    );
    assert_eq!(before, after);
    assert_eq!(store.high_watermark_checkpoint(P).unwrap(), Some(3));
    let retry = store
        .append(P, batch(2, 300, 4, 3), 3, FSYNC)
        .await
        .unwrap();
    assert!(retry.duplicate);
}

#[tokio::test]
async fn a_replica_behind_its_leaders_log_start_starts_over_there() {
    let d = dir();
    let store = open(&d.path);
    store.create_partition(P).unwrap();
    // Producer 4's batches at sequences 0 and 2, epochs 1 and 2: [0, 2) [2, 5).
    store
        .append_replica(P, leader_batch(0, 1, 2, 4, 0), FSYNC)
        .await
        .unwrap();
    store
        .append_replica(P, leader_batch(2, 2, 3, 4, 2), FSYNC)
        .await
        .unwrap();
    store.checkpoint_high_watermark(P, 5).await.unwrap();
    // The leader's log now starts at 40: everything here goes, the log restarts there.
    assert_eq!(store.truncate_fully(P, 40).unwrap(), 40);
    let emptied = PartitionState {
        log_start: 40,
        log_end: 40,
        size_bytes: 0,
        batches: 0,
    };
    assert_eq!(store.partition_state(P).unwrap(), emptied);
    assert_eq!(store.leader_epochs(P).unwrap(), []);
    assert_eq!(store.high_watermark_checkpoint(P).unwrap(), Some(5));
    assert!(store.read(P, 40, u32::MAX).unwrap().bytes.is_empty());
    assert!(matches!(
        store.read(P, 0, u32::MAX),
        Err(StorageError::OffsetOutOfRange {
            log_start: 40,
            log_end: 40
        })
    ));
    // Replica batches continue at 40; the old producer state went with the batches.
    let got = store
        .append_replica(P, leader_batch(40, 7, 1, -1, -1), FSYNC)
        .await
        .unwrap();
    assert_eq!((got.base_offset, got.log_end), (40, 41));
    let retry = store.append(P, batch(3, 1_000, 4, 2), 7, FSYNC).await;
    assert!(
        matches!(retry, Ok(ref a) if !a.duplicate),
        "sequence 2 of producer 4 is not remembered: {retry:?}"
    );
    // Durable, and the same after a reopen.
    store.shutdown().unwrap();
    let store = open(&d.path);
    assert_eq!(bounds(&store, P), (40, 44));
    assert_eq!(store.leader_epochs(P).unwrap(), [(7, 40)]);
    assert_eq!(layout(&store, P), [(40, 1, 7), (41, 3, 7)]);
}

#[tokio::test]
async fn truncation_at_or_below_the_log_start_empties_the_log_there() {
    let d = dir();
    let store = open(&d.path);
    store.create_partition(P).unwrap();
    for epoch in [1, 2, 2] {
        store
            .append(P, batch(2, 1_000, -1, -1), epoch, FSYNC)
            .await
            .unwrap();
    }
    store.delete_before(P, 2).await.unwrap(); // log [2, 6)
    store.checkpoint_high_watermark(P, 6).await.unwrap();
    assert_eq!(store.leader_epochs(P).unwrap(), [(2, 2)]);

    assert_eq!(store.truncate(P, 1).unwrap(), 1);
    assert_eq!(
        store.partition_state(P).unwrap(),
        PartitionState {
            log_start: 1,
            log_end: 1,
            size_bytes: 0,
            batches: 0
        }
    );
    assert_eq!(store.leader_epochs(P).unwrap(), []);
    assert_eq!(store.high_watermark_checkpoint(P).unwrap(), Some(1));
    assert!(store.read(P, 1, u32::MAX).unwrap().bytes.is_empty());
    // The log continues at the truncation point.
    let got = store
        .append_replica(P, leader_batch(1, 4, 2, -1, -1), FSYNC)
        .await
        .unwrap();
    assert_eq!((got.base_offset, got.log_start, got.log_end), (1, 1, 3));
    assert_eq!(store.leader_epochs(P).unwrap(), [(4, 1)]);

    // Exactly at the log start: everything goes, the log start stays.
    assert_eq!(store.truncate(P, 1).unwrap(), 1);
    assert_eq!(bounds(&store, P), (1, 1));
    assert!(matches!(
        store.truncate(PartitionId::new(5, 5), 0),
        Err(StorageError::UnknownPartition(_))
    ));
    store.shutdown().unwrap();
    let store = open(&d.path);
    assert_eq!(bounds(&store, P), (1, 1));
    assert_eq!(store.leader_epochs(P).unwrap(), []);
}

#[tokio::test]
async fn a_truncation_runs_alone_between_queued_appends() {
    let d = dir();
    let store = open(&d.path);
    store.create_partition(P).unwrap();
    store
        .append(P, batch(2, 1_000, -1, -1), 1, FSYNC)
        .await
        .unwrap();
    // Appends queued before and after a truncation, from another thread, keep their order.
    let before: Vec<_> = (0..3)
        .map(|_| store.append(P, batch(1, 1_000, -1, -1), 1, Durability::IntervalMs(50)))
        .collect();
    let truncated = {
        let store = store.clone();
        std::thread::spawn(move || store.truncate(P, 3))
            .join()
            .unwrap()
    };
    let after = store.append(P, batch(1, 1_000, -1, -1), 2, FSYNC);
    for (i, a) in before.into_iter().enumerate() {
        assert_eq!(a.await.unwrap().base_offset, 2 + i as u64);
    }
    assert_eq!(truncated.unwrap(), 3);
    assert_eq!(after.await.unwrap().base_offset, 3);
    assert_eq!(layout(&store, P), [(0, 2, 1), (2, 1, 1), (3, 1, 2)]);
}

#[tokio::test]
async fn retention_leaves_what_is_past_the_bound_and_moves_the_first_epoch() {
    let d = dir();
    let store = open(&d.path);
    store.create_partition(P).unwrap();
    for (ts, epoch) in [(100, 1), (200, 1), (300, 2), (400, 2)] {
        store
            .append(P, batch(2, ts, -1, -1), epoch, FSYNC)
            .await
            .unwrap();
    }
    // Everything is expired, but only batches that end at or before 5 may go.
    let out = store
        .apply_retention_bounded(P, Some(1), None, 10_000, Some(5))
        .await
        .unwrap();
    assert_eq!((out.removed_batches, out.log_start), (2, 4));
    assert_eq!(store.leader_epochs(P).unwrap(), [(2, 4)]);
    let out = store
        .apply_retention_bounded(P, None, Some(0), 0, Some(5))
        .await
        .unwrap();
    assert_eq!(out.removed_batches, 0, "[4, 6) ends past the bound");
    // No bound: the old entry point.
    let out = store.apply_retention(P, None, Some(0), 0).await.unwrap();
    assert_eq!((out.removed_batches, out.log_start), (2, 8));
    // Emptied: the latest epoch stays, at the log end; the next newer one replaces it.
    assert_eq!(store.leader_epochs(P).unwrap(), [(2, 8)]);
    store.shutdown().unwrap();
    let store = open(&d.path);
    assert_eq!(store.leader_epochs(P).unwrap(), [(2, 8)]);
    store
        .append(P, batch(1, 500, -1, -1), 3, FSYNC)
        .await
        .unwrap();
    assert_eq!(store.leader_epochs(P).unwrap(), [(3, 8)]);
}

#[tokio::test]
async fn the_high_watermark_checkpoint_is_stored_checked_and_survives_a_reopen() {
    let d = dir();
    let store = open(&d.path);
    store.create_partition(P).unwrap();
    assert_eq!(store.high_watermark_checkpoint(P).unwrap(), None);
    store
        .append(P, batch(4, 1_000, -1, -1), 1, FSYNC)
        .await
        .unwrap();
    let commits = store.commit_count();
    store.checkpoint_high_watermark(P, 2).await.unwrap();
    store.checkpoint_high_watermark(P, 4).await.unwrap();
    assert!(store.commit_count() > commits);
    assert_eq!(store.high_watermark_checkpoint(P).unwrap(), Some(4));
    match store.checkpoint_high_watermark(P, 5).await {
        Err(StorageError::HighWatermarkBeyondLogEnd {
            high_watermark: 5,
            log_end: 4,
            ..
        }) => {}
        other => panic!("expected HighWatermarkBeyondLogEnd, got {other:?}"),
    }
    assert_eq!(store.high_watermark_checkpoint(P).unwrap(), Some(4));
    assert!(matches!(
        store.high_watermark_checkpoint(PartitionId::new(3, 3)),
        Err(StorageError::UnknownPartition(_))
    ));
    assert!(matches!(
        store
            .checkpoint_high_watermark(PartitionId::new(3, 3), 0)
            .await,
        Err(StorageError::UnknownPartition(_))
    ));
    // Not durable by itself, but the shutdown's final commit is.
    store.shutdown().unwrap();
    let store = open(&d.path);
    assert_eq!(store.high_watermark_checkpoint(P).unwrap(), Some(4));

    // Deleting the topic removes the checkpoint and the epochs; a new partition starts clean.
    store.delete_topic(P.topic_id).unwrap();
    store.create_partition(P).unwrap();
    assert_eq!(store.high_watermark_checkpoint(P).unwrap(), None);
    assert_eq!(store.leader_epochs(P).unwrap(), []);
}

const RAW_EPOCHS: TableDefinition<(u64, u32, u32), u64> = TableDefinition::new("leader_epochs");
const RAW_HWS: TableDefinition<(u64, u32), u64> = TableDefinition::new("high_watermarks");

#[tokio::test]
async fn a_file_without_leader_epochs_gets_them_from_its_batch_headers() {
    let d = dir();
    let store = open(&d.path);
    let q = PartitionId::new(1, 1);
    store.create_partitions(&[P, q]).unwrap();
    for epoch in [2, 2, 5, 5, 7] {
        store
            .append(P, batch(1, 1_000, -1, -1), epoch, FSYNC)
            .await
            .unwrap();
    }
    store.delete_before(P, 1).await.unwrap();
    let expected = store.leader_epochs(P).unwrap();
    assert_eq!(
        expected,
        [(2, 1), (5, 2), (7, 4)],
        "an epoch starts at its first batch"
    );
    store.shutdown().unwrap();
    // As a file of a build before the table existed: no table at all.
    {
        let db = redb::Database::create(&d.path).unwrap();
        let txn = db.begin_write().unwrap();
        assert!(txn.delete_table(RAW_EPOCHS).unwrap());
        assert!(txn.delete_table(RAW_HWS).unwrap());
        txn.commit().unwrap();
    }
    let store = open(&d.path);
    assert_eq!(store.leader_epochs(P).unwrap(), expected);
    assert_eq!(store.leader_epochs(q).unwrap(), []);
    assert_eq!(store.high_watermark_checkpoint(P).unwrap(), None);
    store.shutdown().unwrap();
    // Written back once: the rows are there for the next open.
    {
        let db = redb::Database::create(&d.path).unwrap();
        let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
        assert_eq!(txn.open_table(RAW_EPOCHS).unwrap().len().unwrap(), 3);
    }
    // Rows that disagree with the log (here: an epoch starting where no batch does) are
    // rebuilt too.
    {
        let db = redb::Database::create(&d.path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(RAW_EPOCHS)
            .unwrap()
            .insert((1, 0, 9), 100)
            .unwrap();
        txn.commit().unwrap();
    }
    let store = open(&d.path);
    assert_eq!(store.leader_epochs(P).unwrap(), expected);
}

mod model {
    //! Random leader appends, replica appends (some at the wrong offset), truncations,
    //! bounded retention, high watermark checkpoints and reopens against a `Vec` model,
    //! compared after every step.

    use super::*;
    use proptest::prelude::*;
    use sluice_storage::producer_state::TRACKED_BATCHES;

    /// The idempotent producer of the test.
    const PID: i64 = 11;

    #[derive(Debug, Clone)]
    enum Op {
        /// A leader append of `records` records, in a newer leader epoch if `bump`; from the
        /// idempotent producer if `idempotent`.
        Leader {
            records: u32,
            bump: bool,
            idempotent: bool,
        },
        /// A replica append at the log end plus `shift` (refused unless 0).
        Replica {
            records: u32,
            bump: bool,
            idempotent: bool,
            shift: i8,
        },
        /// The idempotent producer resends its `back`-th most recent stored batch.
        Retry {
            back: usize,
        },
        /// Truncate at the log start minus 3 plus `at`.
        Truncate {
            at: u64,
        },
        /// Retention with these limits, bounded at the log start plus `bound`.
        Retain {
            ms: Option<u64>,
            bytes: Option<u64>,
            bound: Option<u64>,
        },
        /// Checkpoint the log start plus `at` as the high watermark.
        Checkpoint {
            at: u64,
        },
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            5 => (1u32..4, proptest::bool::weighted(0.2), any::<bool>())
                .prop_map(|(records, bump, idempotent)| Op::Leader { records, bump, idempotent }),
            4 => (1u32..4, proptest::bool::weighted(0.2), any::<bool>(),
                  prop_oneof![4 => Just(0i8), 1 => -2i8..=2])
                .prop_map(|(records, bump, idempotent, shift)| Op::Replica {
                    records, bump, idempotent, shift
                }),
            1 => (0usize..7).prop_map(|back| Op::Retry { back }),
            2 => (0u64..20).prop_map(|at| Op::Truncate { at }),
            2 => (proptest::option::of(0u64..300),
                  prop_oneof![Just(None), Just(Some(0)), (0u64..600).prop_map(Some)],
                  prop_oneof![Just(None), (0u64..40).prop_map(Some)])
                .prop_map(|(ms, bytes, bound)| Op::Retain { ms, bytes, bound }),
            1 => (0u64..16).prop_map(|at| Op::Checkpoint { at }),
            1 => Just(Op::Reopen),
        ]
    }

    #[derive(Debug, Clone, Copy)]
    struct Batch {
        base: u64,
        records: u32,
        epoch: u32,
        len: u32,
        timestamp: i64,
        /// The base sequence, for the idempotent producer's batches.
        seq: Option<i32>,
    }

    impl Batch {
        fn end(&self) -> u64 {
            self.base + u64::from(self.records)
        }
    }

    #[derive(Debug, Default)]
    struct Model {
        start: u64,
        end: u64,
        batches: Vec<Batch>,
        /// The epoch kept at the log end when retention emptied the log.
        emptied_epoch: Option<u32>,
        hw: Option<u64>,
        /// The leader epoch appends use now; only grows.
        epoch: u32,
        /// The producer's next sequence when none of its batches is stored.
        next_seq: i32,
        /// The next batch timestamp; grows by 10 a batch.
        clock: i64,
        /// Batches were truncated from the end since the store opened: an unknown producer is
        /// then accepted at any sequence, as on a log whose start moved; otherwise it must
        /// start at 0.
        truncated: bool,
    }

    impl Model {
        fn state(&self) -> PartitionState {
            PartitionState {
                log_start: self.start,
                log_end: self.end,
                size_bytes: self.batches.iter().map(|b| u64::from(b.len)).sum(),
                batches: self.batches.len() as u64,
            }
        }

        /// The epoch index: the first batch of every epoch in the log; in an emptied log the
        /// epoch retention kept.
        fn epochs(&self) -> Vec<(u32, u64)> {
            if self.batches.is_empty() {
                return self
                    .emptied_epoch
                    .map(|e| (e, self.end))
                    .into_iter()
                    .collect();
            }
            let mut out: Vec<(u32, u64)> = Vec::new();
            for b in &self.batches {
                if out.last().is_none_or(|&(e, _)| b.epoch > e) {
                    out.push((b.epoch, b.base));
                }
            }
            out
        }

        fn producer_batches(&self) -> Vec<Batch> {
            self.batches
                .iter()
                .filter(|b| b.seq.is_some())
                .copied()
                .collect()
        }

        /// The sequence the producer sends next.
        fn sequence(&self) -> i32 {
            self.producer_batches()
                .last()
                .map_or(self.next_seq, |b| b.seq.unwrap() + b.records as i32)
        }

        fn push(&mut self, mut b: Batch) {
            b.base = self.end;
            self.end = b.end();
            if let Some(seq) = b.seq {
                self.next_seq = seq + b.records as i32;
            }
            self.batches.push(b);
        }
    }

    fn check(store: &Store, m: &Model) -> Result<(), TestCaseError> {
        prop_assert_eq!(store.partition_state(P), Some(m.state()));
        let read = store.read(P, m.start, u32::MAX).unwrap();
        prop_assert_eq!((read.log_start, read.log_end), (m.start, m.end));
        let got: Vec<(u64, u32, u32, i64)> = split_batches(read.bytes)
            .unwrap()
            .iter()
            .map(|(h, _)| {
                (
                    h.base_offset,
                    h.record_count,
                    h.leader_epoch,
                    h.max_timestamp,
                )
            })
            .collect();
        let want: Vec<(u64, u32, u32, i64)> = m
            .batches
            .iter()
            .map(|b| (b.base, b.records, b.epoch, b.timestamp))
            .collect();
        prop_assert_eq!(got, want);
        prop_assert_eq!(store.leader_epochs(P).unwrap(), m.epochs());
        prop_assert_eq!(store.high_watermark_checkpoint(P).unwrap(), m.hw);
        Ok(())
    }

    fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let d = dir();
        let mut store = open(&d.path);
        store.create_partition(P).unwrap();
        let mut m = Model::default();
        // Interval durability: the model test is about the log, not the fsyncs.
        let lazy = Durability::IntervalMs(60_000);
        for op in ops {
            match op {
                Op::Leader {
                    records,
                    bump,
                    idempotent,
                }
                | Op::Replica {
                    records,
                    bump,
                    idempotent,
                    shift: 0,
                } => {
                    if bump {
                        m.epoch += 1;
                    }
                    let seq = idempotent.then(|| m.sequence());
                    let unknown = m.producer_batches().is_empty();
                    if matches!(op, Op::Leader { .. })
                        && unknown
                        && seq.is_some_and(|s| s != 0)
                        && m.start == 0
                        && !m.truncated
                    {
                        let bytes = batch(records, m.clock, PID, seq.unwrap_or(-1));
                        let got = rt.block_on(store.append(P, bytes, m.epoch, lazy));
                        let refused = matches!(
                            got,
                            Err(StorageError::OutOfOrderSequence { expected: 0, got: s, .. })
                                if Some(s) == seq
                        );
                        prop_assert!(refused, "a new producer not at 0: {:?}", got);
                        continue;
                    }
                    let bytes = batch(
                        records,
                        m.clock,
                        if idempotent { PID } else { -1 },
                        seq.unwrap_or(-1),
                    );
                    let b = Batch {
                        base: m.end,
                        records,
                        epoch: m.epoch,
                        len: bytes.len() as u32,
                        timestamp: m.clock,
                        seq,
                    };
                    m.clock += 10;
                    let got = if matches!(op, Op::Leader { .. }) {
                        rt.block_on(store.append(P, bytes, m.epoch, lazy))
                    } else {
                        let mut bytes = bytes;
                        assign_offset(&mut bytes, m.end, m.epoch);
                        rt.block_on(store.append_replica(P, bytes, lazy))
                    }
                    .unwrap();
                    prop_assert_eq!((got.base_offset, got.duplicate), (m.end, false));
                    m.push(b);
                    prop_assert_eq!((got.log_start, got.log_end), (m.start, m.end));
                }
                Op::Replica { records, shift, .. } => {
                    let Some(at) = m.end.checked_add_signed(i64::from(shift)) else {
                        continue;
                    };
                    let mut bytes = batch(records, m.clock, -1, -1);
                    assign_offset(&mut bytes, at, m.epoch);
                    match rt.block_on(store.append_replica(P, bytes, lazy)) {
                        Err(StorageError::ReplicaOffsetMismatch { expected, got, .. }) => {
                            prop_assert_eq!((expected, got), (m.end, at));
                        }
                        other => prop_assert!(
                            false,
                            "a replica batch at {} of a log ending at {}: {:?}",
                            at,
                            m.end,
                            other
                        ),
                    }
                }
                Op::Retry { back } => {
                    let sent = m.producer_batches();
                    let Some(b) = sent.len().checked_sub(back + 1).map(|i| sent[i]) else {
                        continue;
                    };
                    let bytes = batch(b.records, b.timestamp, PID, b.seq.unwrap());
                    let got = rt.block_on(store.append(P, bytes, m.epoch, lazy));
                    if back < TRACKED_BATCHES {
                        let got = got.unwrap();
                        prop_assert_eq!((got.base_offset, got.duplicate), (b.base, true));
                    } else {
                        let expected = m.sequence();
                        let refused = matches!(
                            got,
                            Err(StorageError::OutOfOrderSequence { expected: e, .. })
                                if e == expected
                        );
                        prop_assert!(refused, "retry of batch {:?}: {:?}", b, got);
                    }
                }
                Op::Truncate { at } => {
                    let offset = (m.start + at).saturating_sub(3);
                    let to = if offset >= m.end {
                        m.end
                    } else if offset <= m.start {
                        offset
                    } else {
                        m.batches.iter().find(|b| b.end() > offset).unwrap().base
                    };
                    prop_assert_eq!(store.truncate(P, offset).unwrap(), to);
                    if to < m.end {
                        m.truncated = true;
                        m.batches.retain(|b| b.base < to);
                        m.start = m.start.min(to);
                        m.end = to;
                        m.emptied_epoch = None;
                        m.hw = m.hw.map(|hw| hw.min(to));
                    }
                }
                Op::Retain { ms, bytes, bound } => {
                    let bound = bound.map(|b| m.start + b);
                    let now = m.clock;
                    let out = rt
                        .block_on(store.apply_retention_bounded(P, ms, bytes, now, bound))
                        .unwrap();
                    let mut removed = 0;
                    while let Some(first) = m.batches.first().copied() {
                        let size: u64 = m.batches.iter().map(|b| u64::from(b.len)).sum();
                        let expired = ms.is_some_and(|ms| first.timestamp < now - ms as i64);
                        let too_big = bytes.is_some_and(|limit| size > limit);
                        let below = bound.is_none_or(|bound| first.end() <= bound);
                        if !((expired || too_big) && below) {
                            break;
                        }
                        m.batches.remove(0);
                        removed += 1;
                        if m.batches.is_empty() {
                            m.emptied_epoch = Some(first.epoch);
                        }
                    }
                    m.start = m.batches.first().map_or(m.end, |b| b.base);
                    prop_assert_eq!((out.removed_batches, out.log_start), (removed, m.start));
                }
                Op::Checkpoint { at } => {
                    let hw = m.start + at;
                    let got = rt.block_on(store.checkpoint_high_watermark(P, hw));
                    if hw <= m.end {
                        prop_assert!(got.is_ok(), "{:?}", got);
                        m.hw = Some(hw);
                    } else {
                        let refused = matches!(
                            got,
                            Err(StorageError::HighWatermarkBeyondLogEnd { log_end, .. })
                                if log_end == m.end
                        );
                        prop_assert!(refused, "{:?}", got);
                    }
                }
                Op::Reopen => {
                    store.shutdown().unwrap();
                    store = open(&d.path);
                    m.truncated = false;
                }
            }
            check(&store, &m)?;
        }
        // What memory holds is what a reopen rebuilds.
        store.shutdown().unwrap();
        let store = open(&d.path);
        check(&store, &m)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn the_store_agrees_with_a_vec_model(ops in proptest::collection::vec(op(), 1..40)) {
            run(ops)?;
        }
    }
}
