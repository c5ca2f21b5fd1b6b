//! Idempotent producers on a real redb file: sequence checks where offsets are assigned,
//! duplicates answered with their first offset, and the state rebuilt after a reopen.

use bytes::Bytes;
use sluice_proto::batch::{decode_records, split_batches};
use sluice_proto::{BatchBuilder, Compression, Durability, Record};
use sluice_storage::{Appended, PartitionId, StorageError, Store, StoreOptions};

const FSYNC: Durability = Durability::Fsync;
const P: PartitionId = PartitionId {
    topic_id: 1,
    partition: 0,
};

fn batch(records: u32, tag: &str, pid: i64, epoch: i16, seq: i32) -> Vec<u8> {
    let mut b = BatchBuilder::new(Compression::None);
    for i in 0..records {
        b.push(&Record {
            value: Some(Bytes::from(format!("{tag}-{i}"))),
            timestamp: 1_000,
            ..Default::default()
        });
    }
    b.finish(pid, epoch, seq).unwrap()
}

fn values(store: &Store) -> Vec<(u64, String)> {
    let read = store.read(P, 0, u32::MAX).unwrap();
    let mut out = Vec::new();
    for (header, b) in split_batches(read.bytes).unwrap() {
        for r in decode_records(&header, &b).unwrap() {
            out.push((
                r.offset,
                String::from_utf8(r.value.unwrap().to_vec()).unwrap(),
            ));
        }
    }
    out
}

async fn append(store: &Store, bytes: Vec<u8>) -> Result<Appended, StorageError> {
    store.append(P, bytes, 0, FSYNC).await
}

fn open(path: &std::path::Path) -> Store {
    Store::open(path, StoreOptions::default()).unwrap()
}

#[tokio::test]
async fn retries_are_stored_once_gaps_and_stale_epochs_refused_plain_batches_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.redb");
    let store = open(&path);
    store.create_partition(P).unwrap();

    let first = append(&store, batch(3, "a", 7, 0, 0)).await.unwrap();
    assert_eq!((first.base_offset, first.duplicate), (0, false));
    let plain = append(&store, batch(2, "plain", -1, -1, -1)).await.unwrap();
    assert_eq!(plain.base_offset, 3);
    let again = append(&store, batch(3, "a", 7, 0, 0)).await.unwrap();
    assert_eq!(
        (again.base_offset, again.duplicate, again.log_end),
        (0, true, 3),
        "an exact retry is answered with the original offset"
    );
    let second = append(&store, batch(1, "b", 7, 0, 3)).await.unwrap();
    assert_eq!(second.base_offset, 5);
    // Plain batches are never checked: the same bytes twice are stored twice.
    let plain2 = append(&store, batch(2, "plain", -1, -1, -1)).await.unwrap();
    assert_eq!(plain2.base_offset, 6);

    match append(&store, batch(1, "gap", 7, 0, 9)).await {
        Err(StorageError::OutOfOrderSequence {
            producer_id: 7,
            expected: 4,
            got: 9,
            ..
        }) => {}
        other => panic!("expected a refused gap, got {other:?}"),
    }
    // A newer epoch fences the older one.
    append(&store, batch(1, "e1", 7, 1, 0)).await.unwrap();
    match append(&store, batch(1, "old", 7, 0, 4)).await {
        Err(StorageError::ProducerFenced {
            epoch: 0,
            current_epoch: 1,
            ..
        }) => {}
        other => panic!("expected fencing, got {other:?}"),
    }
    // An unknown producer id starts at 0 on a partition that never lost batches from its
    // start: a later batch of it is refused, as a gap would be.
    match append(&store, batch(1, "later", 8, 0, 41)).await {
        Err(StorageError::OutOfOrderSequence {
            expected: 0,
            got: 41,
            ..
        }) => {}
        other => panic!("expected a new producer's later batch refused, got {other:?}"),
    }
    append(&store, batch(1, "other", 8, 0, 0)).await.unwrap();

    let log = values(&store);
    let offsets: Vec<u64> = log.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (0..10).collect::<Vec<_>>(), "dense, no duplicate");
    assert_eq!(log.iter().filter(|(_, v)| v == "a-0").count(), 1);
    assert_eq!(log.iter().filter(|(_, v)| v == "plain-0").count(), 2);
    assert!(
        !log.iter()
            .any(|(_, v)| v == "gap-0" || v == "old-0" || v == "later-0")
    );
}

#[tokio::test]
async fn duplicates_are_recognised_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.redb");
    {
        let store = open(&path);
        store.create_partition(P).unwrap();
        for (i, tag) in ["a", "b", "c"].iter().enumerate() {
            let seq = i as i32 * 2;
            append(&store, batch(2, tag, 5, 3, seq)).await.unwrap();
        }
        store.shutdown().unwrap();
    }
    let store = open(&path);
    let dup = append(&store, batch(2, "b", 5, 3, 2)).await.unwrap();
    assert_eq!((dup.base_offset, dup.duplicate), (2, true));
    match append(&store, batch(1, "x", 5, 3, 7)).await {
        Err(StorageError::OutOfOrderSequence { expected: 6, .. }) => {}
        other => panic!("expected a refused gap after reopen, got {other:?}"),
    }
    match append(&store, batch(1, "x", 5, 2, 6)).await {
        Err(StorageError::ProducerFenced {
            current_epoch: 3, ..
        }) => {}
        other => panic!("expected fencing after reopen, got {other:?}"),
    }
    let next = append(&store, batch(1, "d", 5, 3, 6)).await.unwrap();
    assert_eq!((next.base_offset, next.duplicate), (6, false));
    assert_eq!(values(&store).len(), 7);
}

#[tokio::test]
async fn a_retry_queued_with_its_original_is_answered_after_the_same_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("sluice.redb"));
    store.create_partition(P).unwrap();
    // Both are queued before either commits, so they very likely share one group.
    let a = store.append(P, batch(4, "a", 1, 0, 0), 0, FSYNC);
    let b = store.append(P, batch(4, "a", 1, 0, 0), 0, FSYNC);
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    assert_eq!((a.base_offset, a.duplicate), (0, false));
    assert_eq!((b.base_offset, b.duplicate), (0, true));
    assert_eq!(store.partition_state(P).unwrap().log_end, 4);
}

#[tokio::test]
async fn retention_forgets_producers_like_a_reopen_would() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("sluice.redb"));
    store.create_partition(P).unwrap();
    append(&store, batch(2, "a", 1, 0, 0)).await.unwrap();
    append(&store, batch(2, "b", -1, -1, -1)).await.unwrap();
    store
        .apply_retention(P, None, Some(1), 0)
        .await
        .expect("retention");
    assert_eq!(store.partition_state(P).unwrap().log_start, 4);
    // Producer 1's only batch is gone: it is unknown again and starts anywhere.
    let r = append(&store, batch(1, "c", 1, 0, 17)).await.unwrap();
    assert_eq!((r.base_offset, r.duplicate), (4, false));
}
