//! The store over a real redb file in a temp dir.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use sluice_proto::batch::{BatchHeader, decode_records, split_batches};
use sluice_proto::{BatchBuilder, Compression, Durability, Record};
use sluice_storage::{PartitionId, StorageError, Store, StoreOptions};

const FSYNC: Durability = Durability::Fsync;

fn batch(records: u32, timestamp: i64, tag: &str) -> Vec<u8> {
    let mut b = BatchBuilder::new(Compression::None);
    for i in 0..records {
        b.push(&Record {
            value: Some(Bytes::from(format!("{tag}-{i}"))),
            timestamp,
            ..Default::default()
        });
    }
    b.finish(-1, -1, -1).unwrap()
}

fn values(bytes: Bytes) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    for (header, b) in split_batches(bytes).unwrap() {
        for r in decode_records(&header, &b).unwrap() {
            out.push((
                r.offset,
                String::from_utf8(r.value.unwrap().to_vec()).unwrap(),
            ));
        }
    }
    out
}

fn headers(bytes: Bytes) -> Vec<BatchHeader> {
    split_batches(bytes)
        .unwrap()
        .into_iter()
        .map(|(h, _)| h)
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

fn p(topic_id: u64, partition: u32) -> PartitionId {
    PartitionId {
        topic_id,
        partition,
    }
}

#[tokio::test]
async fn append_and_read_round_trip_with_dense_offsets_across_partitions() {
    let d = dir();
    let store = open(&d.path);
    let (a, b) = (p(1, 0), p(1, 1));
    store.create_partition(a).unwrap();
    store.create_partition(a).unwrap(); // idempotent
    store.create_partition(b).unwrap();
    for i in 0..5u64 {
        let got = store
            .append(a, batch(3, 1000, &format!("a{i}")), 7, FSYNC)
            .await
            .unwrap();
        assert_eq!(
            (got.base_offset, got.log_start, got.log_end),
            (3 * i, 0, 3 * i + 3)
        );
        let got = store
            .append(b, batch(2, 1000, &format!("b{i}")), 8, FSYNC)
            .await
            .unwrap();
        assert_eq!(got.base_offset, 2 * i);
    }
    let state = store.partition_state(a).unwrap();
    assert_eq!((state.log_start, state.log_end, state.batches), (0, 15, 5));

    let all = store.read(a, 0, u32::MAX).unwrap();
    assert_eq!((all.log_start, all.log_end), (0, 15));
    assert_eq!(all.bytes.len() as u64, state.size_bytes);
    let hs = headers(all.bytes.clone());
    assert_eq!(
        hs.iter().map(|h| h.base_offset).collect::<Vec<_>>(),
        [0, 3, 6, 9, 12]
    );
    assert!(hs.iter().all(|h| h.leader_epoch == 7));
    let vals = values(all.bytes);
    assert_eq!(vals.len(), 15);
    assert_eq!(vals[4], (4, "a1-1".to_string()));
    assert!(vals.iter().enumerate().all(|(i, (o, _))| *o == i as u64));

    // From the middle of a batch: starts with the batch that holds the offset.
    let mid = store.read(a, 4, u32::MAX).unwrap();
    assert_eq!(headers(mid.bytes)[0].base_offset, 3);
    // max_bytes smaller than one batch still returns exactly one batch.
    let one = store.read(a, 7, 1).unwrap();
    assert_eq!(
        headers(one.bytes)
            .iter()
            .map(|h| h.base_offset)
            .collect::<Vec<_>>(),
        [6]
    );
    // Two batches fit exactly.
    let len = batch(3, 1000, "a0").len() as u32;
    assert_eq!(headers(store.read(a, 0, 2 * len).unwrap().bytes).len(), 2);
    assert_eq!(
        headers(store.read(a, 0, 2 * len - 1).unwrap().bytes).len(),
        1
    );

    assert!(store.read(a, 15, 100).unwrap().bytes.is_empty());
    assert!(matches!(
        store.read(a, 16, 100),
        Err(StorageError::OffsetOutOfRange {
            log_start: 0,
            log_end: 15
        })
    ));
    let bvals = values(store.read(b, 0, u32::MAX).unwrap().bytes);
    assert_eq!(bvals.last().unwrap(), &(9, "b4-1".to_string()));
    assert!(matches!(
        store.read(p(9, 0), 0, 100),
        Err(StorageError::UnknownPartition(_))
    ));
    assert!(matches!(
        store.append(p(9, 0), batch(1, 0, "x"), 0, FSYNC).await,
        Err(StorageError::UnknownPartition(_))
    ));
    assert!(matches!(
        store.append(a, vec![1, 2, 3], 0, FSYNC).await,
        Err(StorageError::InvalidBatch(_))
    ));
    assert_eq!(store.partition_state(a).unwrap().log_end, 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_get_dense_unique_offsets_in_few_commits() {
    let d = dir();
    let store = open(&d.path);
    let parts: Vec<_> = (0..4).map(|i| p(3, i)).collect();
    for &id in &parts {
        store.create_partition(id).unwrap();
    }
    let before = store.commit_count();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..1000u32 {
        let store = store.clone();
        let id = parts[(i % 4) as usize];
        tasks.spawn(async move {
            let got = store
                .append(id, batch(1, i64::from(i), &format!("v{i}")), 1, FSYNC)
                .await
                .unwrap();
            (id, got.base_offset, i)
        });
    }
    let mut offsets: HashMap<PartitionId, Vec<(u64, u32)>> = HashMap::new();
    while let Some(r) = tasks.join_next().await {
        let (id, offset, i) = r.unwrap();
        offsets.entry(id).or_default().push((offset, i));
    }
    let commits = store.commit_count() - before;
    assert!(
        commits < 100,
        "1000 concurrent appends took {commits} commits; group commit is not grouping"
    );
    for id in parts {
        let mut got = offsets.remove(&id).unwrap();
        got.sort();
        assert_eq!(
            got.iter().map(|g| g.0).collect::<Vec<_>>(),
            (0..250).collect::<Vec<u64>>()
        );
        // Each offset holds the value of the append that was told it got that offset.
        let stored = values(store.read(id, 0, u32::MAX).unwrap().bytes);
        for ((offset, i), (so, value)) in got.iter().zip(stored) {
            assert_eq!((*offset, format!("v{i}-0")), (so, value));
        }
    }
}

#[tokio::test]
async fn reopen_keeps_data_and_continues_at_the_next_offset() {
    let d = dir();
    let id = p(5, 2);
    {
        let store = open(&d.path);
        store.create_partition(id).unwrap();
        store
            .append(id, batch(4, 10, "one"), 1, FSYNC)
            .await
            .unwrap();
        // Not fsync'd on append: dropping the last handle still makes it durable.
        store
            .append(id, batch(2, 20, "two"), 1, Durability::IntervalMs(60_000))
            .await
            .unwrap();
    }
    let store = open(&d.path);
    let state = store.partition_state(id).unwrap();
    assert_eq!((state.log_start, state.log_end, state.batches), (0, 6, 2));
    let got = store
        .append(id, batch(1, 30, "three"), 2, FSYNC)
        .await
        .unwrap();
    assert_eq!(got.base_offset, 6);
    let vals = values(store.read(id, 0, u32::MAX).unwrap().bytes);
    assert_eq!(
        vals.iter().map(|v| v.1.as_str()).collect::<Vec<_>>(),
        [
            "one-0", "one-1", "one-2", "one-3", "two-0", "two-1", "three-0"
        ]
    );
    store.shutdown().unwrap();
    drop(store);
    // And after an explicit shutdown too.
    let store = open(&d.path);
    assert_eq!(store.partition_state(id).unwrap().log_end, 7);
}

#[tokio::test]
async fn retention_by_size_and_time_moves_log_start() {
    let d = dir();
    let store = open(&d.path);
    let id = p(7, 0);
    store.create_partition(id).unwrap();
    for i in 0..10i64 {
        store
            .append(id, batch(2, 1000 * i, "r"), 0, FSYNC)
            .await
            .unwrap();
    }
    let len = batch(2, 0, "r").len() as u64;
    assert_eq!(store.offset_for_timestamp(id, 2500).unwrap(), 6);
    assert_eq!(store.offset_for_timestamp(id, -5).unwrap(), 0);
    assert_eq!(store.offset_for_timestamp(id, 99_999).unwrap(), 20);

    // Size: keep at most 7 batches' worth.
    let out = store
        .apply_retention(id, None, Some(7 * len), 0)
        .await
        .unwrap();
    assert_eq!(
        (out.removed_batches, out.removed_bytes, out.log_start),
        (3, 3 * len, 6)
    );
    let state = store.partition_state(id).unwrap();
    assert_eq!(
        (state.log_start, state.log_end, state.size_bytes),
        (6, 20, 7 * len)
    );
    assert!(matches!(
        store.read(id, 5, 100),
        Err(StorageError::OffsetOutOfRange {
            log_start: 6,
            log_end: 20
        })
    ));
    assert_eq!(
        headers(store.read(id, 6, 1).unwrap().bytes)[0].base_offset,
        6
    );
    assert_eq!(store.offset_for_timestamp(id, 0).unwrap(), 6);

    // Time: at now = 10_000 with 5 s retention, batches with max_timestamp < 5000 go.
    let out = store
        .apply_retention(id, Some(5000), None, 10_000)
        .await
        .unwrap();
    assert_eq!((out.removed_batches, out.log_start), (2, 10));
    // Nothing more to remove.
    let out = store
        .apply_retention(id, Some(5000), Some(u64::MAX), 10_000)
        .await
        .unwrap();
    assert_eq!((out.removed_batches, out.log_start), (0, 10));

    // Everything expires: the log is empty but keeps its end, across a reopen.
    let out = store
        .apply_retention(id, Some(0), None, 1_000_000)
        .await
        .unwrap();
    assert_eq!((out.removed_batches, out.log_start), (5, 20));
    assert!(store.read(id, 20, 100).unwrap().bytes.is_empty());
    drop(store);
    let store = open(&d.path);
    let state = store.partition_state(id).unwrap();
    assert_eq!((state.log_start, state.log_end, state.batches), (20, 20, 0));
    let got = store
        .append(id, batch(1, 0, "after"), 0, FSYNC)
        .await
        .unwrap();
    assert_eq!(got.base_offset, 20, "offsets are never reused");
    assert!(matches!(
        store.apply_retention(p(8, 0), None, Some(0), 0).await,
        Err(StorageError::UnknownPartition(_))
    ));
}

const RAW_BATCHES: TableDefinition<(u64, u32, u64), &[u8]> = TableDefinition::new("batches");
const RAW_FORMAT: TableDefinition<&str, u64> = TableDefinition::new("sluice_format");

#[tokio::test]
async fn a_corrupted_batch_is_never_served() {
    let d = dir();
    let id = p(2, 0);
    {
        let store = open(&d.path);
        store.create_partition(id).unwrap();
        for i in 0..3 {
            store
                .append(id, batch(2, 0, &format!("c{i}")), 0, FSYNC)
                .await
                .unwrap();
        }
    }
    // Flip one byte of a record in the middle batch, straight through redb.
    {
        let db = redb::Database::create(&d.path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(RAW_BATCHES).unwrap();
            let mut value = table.get((2, 0, 2)).unwrap().unwrap().value().to_vec();
            let last = value.len() - 1;
            value[last] ^= 0x40;
            table.insert((2, 0, 2), value.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let store = open(&d.path);
    match store.read(id, 2, u32::MAX) {
        Err(StorageError::Corrupt {
            id: got,
            base_offset,
            reason,
        }) => {
            assert_eq!((got, base_offset), (id, 2));
            assert!(reason.contains("CRC") || reason.contains("crc"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // A read spanning it fails too rather than stopping short silently.
    assert!(matches!(
        store.read(id, 0, u32::MAX),
        Err(StorageError::Corrupt { .. })
    ));
    // The batches around it are still served.
    assert_eq!(values(store.read(id, 0, 1).unwrap().bytes).len(), 2);
    assert_eq!(values(store.read(id, 4, 1).unwrap().bytes)[0].0, 4);
}

#[tokio::test]
async fn delete_topic_removes_every_partition_and_its_data() {
    let d = dir();
    let store = open(&d.path);
    for part in 0..3 {
        store.create_partition(p(10, part)).unwrap();
        store
            .append(p(10, part), batch(1, 0, "gone"), 0, FSYNC)
            .await
            .unwrap();
    }
    store.create_partition(p(11, 0)).unwrap();
    store
        .append(p(11, 0), batch(1, 0, "kept"), 0, FSYNC)
        .await
        .unwrap();
    store.delete_topic(10).unwrap();
    for part in 0..3 {
        assert_eq!(store.partition_state(p(10, part)), None);
        assert!(matches!(
            store.read(p(10, part), 0, 100),
            Err(StorageError::UnknownPartition(_))
        ));
    }
    assert!(matches!(
        store.append(p(10, 0), batch(1, 0, "x"), 0, FSYNC).await,
        Err(StorageError::UnknownPartition(_))
    ));
    assert_eq!(store.partitions(), vec![p(11, 0)]);
    drop(store);

    let store = open(&d.path);
    assert_eq!(store.partitions(), vec![p(11, 0)]);
    assert_eq!(
        values(store.read(p(11, 0), 0, 100).unwrap().bytes)[0].1,
        "kept-0"
    );
    // No batch of the deleted topic is left in the file.
    store.shutdown().unwrap();
    drop(store);
    let db = redb::Database::create(&d.path).unwrap();
    let txn = db.begin_read().unwrap();
    let table = txn.open_table(RAW_BATCHES).unwrap();
    assert_eq!(table.len().unwrap(), 1);
}

#[test]
fn meta_log_and_kv_survive_reopen() {
    let d = dir();
    {
        let store = open(&d.path);
        assert_eq!(store.meta_entries().unwrap(), vec![]);
        assert_eq!(store.meta_get("cluster_id").unwrap(), None);
        for i in 1..=3u64 {
            store
                .meta_append(i, format!("entry {i}").as_bytes())
                .unwrap();
        }
        store.meta_put("cluster_id", b"abc").unwrap();
        store.meta_put("node_id", b"1").unwrap();
        store.meta_put("node_id", b"2").unwrap();
    }
    let store = open(&d.path);
    assert_eq!(
        store.meta_entries().unwrap(),
        (1..=3u64)
            .map(|i| (i, format!("entry {i}").into_bytes()))
            .collect::<Vec<_>>()
    );
    assert_eq!(store.meta_get("cluster_id").unwrap(), Some(b"abc".to_vec()));
    assert_eq!(store.meta_get("node_id").unwrap(), Some(b"2".to_vec()));
}

#[test]
fn unknown_format_versions_and_foreign_files_are_refused() {
    let d = dir();
    drop(open(&d.path));
    {
        let db = redb::Database::create(&d.path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(RAW_FORMAT)
            .unwrap()
            .insert("version", 2)
            .unwrap();
        txn.commit().unwrap();
    }
    match Store::open(&d.path, StoreOptions::default()) {
        Err(StorageError::UnsupportedFormat(msg)) => assert!(msg.contains("version 2"), "{msg}"),
        other => panic!("expected UnsupportedFormat, got {other:?}"),
    }

    let other = dir();
    {
        let db = redb::Database::create(&other.path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(RAW_BATCHES).unwrap();
        txn.commit().unwrap();
    }
    assert!(matches!(
        Store::open(&other.path, StoreOptions::default()),
        Err(StorageError::UnsupportedFormat(_))
    ));
}

#[tokio::test]
async fn interval_durability_syncs_within_the_interval() {
    let d = dir();
    let store = open(&d.path);
    let id = p(4, 0);
    store.create_partition(id).unwrap();
    let before = store.commit_count();
    store
        .append(id, batch(1, 0, "i"), 0, Durability::IntervalMs(20))
        .await
        .unwrap();
    assert_eq!(store.commit_count(), before + 1);
    // The writer makes one more (durable) commit by itself, and only one.
    let mut waited = Duration::ZERO;
    while store.commit_count() < before + 2 && waited < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(5)).await;
        waited += Duration::from_millis(5);
    }
    assert_eq!(store.commit_count(), before + 2);
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(store.commit_count(), before + 2);
    store.flush().await.unwrap();
    assert_eq!(store.commit_count(), before + 3);
}

#[tokio::test]
async fn shutdown_closes_every_handle() {
    let d = dir();
    let store = open(&d.path);
    let other = store.clone();
    let id = p(1, 0);
    store.create_partition(id).unwrap();
    store.append(id, batch(1, 0, "s"), 0, FSYNC).await.unwrap();
    store.shutdown().unwrap();
    assert!(matches!(other.shutdown(), Err(StorageError::Closed)));
    assert!(matches!(
        other.append(id, batch(1, 0, "s"), 0, FSYNC).await,
        Err(StorageError::Closed)
    ));
    assert!(matches!(other.read(id, 0, 10), Err(StorageError::Closed)));
    assert!(matches!(other.flush().await, Err(StorageError::Closed)));
    assert!(matches!(
        other.meta_put("k", b"v"),
        Err(StorageError::Closed)
    ));
    // The file is released: it can be opened again while the handles live.
    let again = open(&d.path);
    assert_eq!(again.partition_state(id).unwrap().log_end, 1);
}

/// An in-memory backend whose writes and syncs start failing on request.
#[derive(Debug)]
struct FlakyBackend {
    inner: redb::backends::InMemoryBackend,
    broken: Arc<AtomicBool>,
}

impl FlakyBackend {
    fn check(&self) -> std::io::Result<()> {
        if self.broken.load(Ordering::SeqCst) {
            Err(std::io::Error::other("injected I/O error"))
        } else {
            Ok(())
        }
    }
}

impl redb::StorageBackend for FlakyBackend {
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.check()?;
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.check()?;
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.check()?;
        self.inner.write(offset, data)
    }
}

#[tokio::test]
async fn after_a_failed_commit_the_store_refuses_writes_but_still_reads() {
    let broken = Arc::new(AtomicBool::new(false));
    let store = Store::open_with_backend(
        FlakyBackend {
            inner: redb::backends::InMemoryBackend::new(),
            broken: broken.clone(),
        },
        StoreOptions::default(),
    )
    .unwrap();
    let id = p(1, 0);
    store.create_partition(id).unwrap();
    store.append(id, batch(2, 0, "ok"), 0, FSYNC).await.unwrap();
    broken.store(true, Ordering::SeqCst);
    assert!(matches!(
        store.append(id, batch(1, 0, "lost"), 0, FSYNC).await,
        Err(StorageError::Failed(_))
    ));
    broken.store(false, Ordering::SeqCst);
    // Even with the disk back, the store does not guess: writes stay refused.
    assert!(matches!(
        store.append(id, batch(1, 0, "no"), 0, FSYNC).await,
        Err(StorageError::Failed(_))
    ));
    assert!(matches!(
        store.meta_put("k", b"v"),
        Err(StorageError::Failed(_))
    ));
    // What was acknowledged is still what readers see.
    assert_eq!(store.partition_state(id).unwrap().log_end, 2);
}
