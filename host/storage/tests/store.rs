//! The store over a real redb file in a temp dir.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use sluice_proto::batch::{BatchHeader, decode_records, split_batches};
use sluice_proto::{BatchBuilder, Compression, Durability, Record};
use sluice_storage::{PartitionId, StorageError, Store, StoreFile, StoreOptions};

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

/// What an injected fault looks like to redb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Writes, syncs and growth fail with `ENOSPC`.
    DiskFull,
    /// They fail with some other I/O error.
    Broken,
}

/// In-memory bytes that outlive the redb database over them (so the store can reopen them), and
/// a switch that makes writing to them fail.
#[derive(Debug, Clone, Default)]
struct FlakyFile {
    bytes: Arc<redb::backends::InMemoryBackend>,
    fault: Arc<Mutex<Option<Fault>>>,
}

impl FlakyFile {
    const LOCATION: &str = "memory:flaky-disk";

    fn set_fault(&self, fault: Option<Fault>) {
        *self.fault.lock().unwrap() = fault;
    }

    fn check(&self) -> std::io::Result<()> {
        match *self.fault.lock().unwrap() {
            None => Ok(()),
            Some(Fault::DiskFull) => Err(std::io::Error::from_raw_os_error(28)),
            Some(Fault::Broken) => Err(std::io::Error::other("injected I/O error")),
        }
    }

    fn open(&self) -> Store {
        Store::open_with(
            self.clone(),
            StoreOptions {
                reopen_interval: Duration::from_millis(20),
                ..StoreOptions::default()
            },
        )
        .unwrap()
    }
}

/// One redb backend over a [`FlakyFile`]'s bytes.
#[derive(Debug)]
struct FlakyBackend(FlakyFile);

impl redb::StorageBackend for FlakyBackend {
    fn len(&self) -> std::io::Result<u64> {
        self.0.bytes.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.0.bytes.read(offset, out)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.0.check()?;
        self.0.bytes.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.0.check()?;
        self.0.bytes.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.0.check()?;
        self.0.bytes.write(offset, data)
    }
}

impl StoreFile for FlakyFile {
    type Backend = FlakyBackend;

    fn location(&self) -> String {
        Self::LOCATION.into()
    }
    fn open(&self) -> std::io::Result<FlakyBackend> {
        Ok(FlakyBackend(self.clone()))
    }
    fn probe(&self) -> std::io::Result<()> {
        self.check()
    }
}

/// Appends `tag` again and again until the store takes it (bounded), as a client retrying does.
async fn append_once_writable(store: &Store, id: PartitionId, tag: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match store.append(id, batch(1, 0, tag), 0, FSYNC).await {
            Ok(got) => return got.base_offset,
            Err(err) if Instant::now() < deadline => {
                assert!(
                    matches!(err, StorageError::DiskFull { .. } | StorageError::Failed(_)),
                    "{err}"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(err) => panic!("writes did not resume within 30 s: {err}"),
        }
    }
}

fn idempotent_batch(tag: &str, sequence: i32) -> Vec<u8> {
    let mut b = BatchBuilder::new(Compression::None);
    b.push(&Record {
        value: Some(Bytes::from(tag.to_owned())),
        ..Default::default()
    });
    b.finish(7, 0, sequence).unwrap()
}

#[tokio::test]
async fn a_full_disk_refuses_writes_naming_it_keeps_reads_and_resumes_once_space_returns() {
    let file = FlakyFile::default();
    let store = file.open();
    let id = p(1, 0);
    store.create_partition(id).unwrap();
    let mut acked = Vec::new();
    for i in 0..3 {
        let tag = format!("before{i}");
        store.append(id, batch(1, 0, &tag), 0, FSYNC).await.unwrap();
        acked.push(format!("{tag}-0"));
    }
    store
        .append(id, idempotent_batch("seq0", 0), 0, FSYNC)
        .await
        .unwrap();
    acked.push("seq0".into());

    file.set_fault(Some(Fault::DiskFull));
    // The append that meets the full disk, an idempotent one whose sequence must not count.
    let err = store
        .append(id, idempotent_batch("lost-seq1", 1), 0, FSYNC)
        .await
        .unwrap_err();
    let StorageError::DiskFull { location, cause } = &err else {
        panic!("expected DiskFull, got {err}");
    };
    assert_eq!(location, FlakyFile::LOCATION);
    assert!(cause.contains("No space left on device"), "{cause}");
    let text = err.to_string();
    assert!(
        text.starts_with("disk full: No space left on device")
            && text.contains(FlakyFile::LOCATION)
            && !text.contains("failed earlier"),
        "{text}"
    );
    // Every write after it is refused at once, with the same words, while the disk is full —
    // also across the writer's reopen attempts, which the probe holds back.
    for i in 0..5 {
        let refused = store
            .append(id, batch(1, 0, &format!("lost{i}")), 0, FSYNC)
            .await
            .unwrap_err();
        assert!(
            matches!(&refused, StorageError::DiskFull { location, .. } if location == FlakyFile::LOCATION),
            "{refused}"
        );
        assert!(matches!(
            store.meta_put("k", b"v"),
            Err(StorageError::DiskFull { .. })
        ));
        // Reads keep working on what was committed.
        let read = values(store.read(id, 0, u32::MAX).unwrap().bytes);
        assert_eq!(
            read.iter().map(|v| &v.1).collect::<Vec<_>>(),
            acked.iter().collect::<Vec<_>>()
        );
        assert_eq!(store.partition_state(id).unwrap().log_end, 4);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }

    file.set_fault(None);
    let base = append_once_writable(&store, id, "after0").await;
    assert_eq!(
        base, 4,
        "offsets continue after the last acknowledged append"
    );
    acked.push("after0-0".into());
    // The sequence that failed was never stored: sending it again is accepted, not a duplicate.
    let got = store
        .append(id, idempotent_batch("seq1", 1), 0, FSYNC)
        .await
        .unwrap();
    assert!(!got.duplicate);
    acked.push("seq1".into());
    store.meta_put("k", b"v").unwrap();

    let expect = |store: &Store| {
        let read = values(store.read(id, 0, u32::MAX).unwrap().bytes);
        assert_eq!(
            read,
            acked
                .iter()
                .enumerate()
                .map(|(i, v)| (i as u64, v.clone()))
                .collect::<Vec<_>>(),
            "every acknowledged append, densely, and none of the refused ones"
        );
    };
    expect(&store);
    // And the file says the same when opened afresh.
    store.shutdown().unwrap();
    drop(store);
    let store = file.open();
    expect(&store);
    assert_eq!(store.meta_get("k").unwrap().as_deref(), Some(&b"v"[..]));
}

#[tokio::test]
async fn after_another_io_error_writes_are_refused_until_the_store_reopened_itself() {
    let file = FlakyFile::default();
    let store = file.open();
    let id = p(1, 0);
    store.create_partition(id).unwrap();
    store.append(id, batch(2, 0, "ok"), 0, FSYNC).await.unwrap();
    file.set_fault(Some(Fault::Broken));
    let err = store
        .append(id, batch(1, 0, "lost"), 0, FSYNC)
        .await
        .unwrap_err();
    let StorageError::Failed(reason) = &err else {
        panic!("expected Failed, got {err}");
    };
    assert!(
        reason.contains("injected I/O error") && reason.contains("reopens itself"),
        "{reason}"
    );
    assert!(matches!(
        store.meta_put("k", b"v"),
        Err(StorageError::Failed(_))
    ));
    // What was acknowledged is still what readers see.
    assert_eq!(store.partition_state(id).unwrap().log_end, 2);
    file.set_fault(None);
    assert_eq!(append_once_writable(&store, id, "again").await, 2);
    assert_eq!(
        values(store.read(id, 0, u32::MAX).unwrap().bytes),
        [(0, "ok-0"), (1, "ok-1"), (2, "again-0")].map(|(o, v)| (o, v.to_owned()))
    );
}

#[tokio::test]
async fn a_truncation_that_meets_a_full_disk_changes_nothing() {
    let file = FlakyFile::default();
    let store = file.open();
    let id = p(1, 0);
    store.create_partition(id).unwrap();
    for (i, epoch) in [1, 1, 2].into_iter().enumerate() {
        let tag = format!("b{i}");
        store
            .append(id, batch(2, 0, &tag), epoch, FSYNC)
            .await
            .unwrap();
    }
    file.set_fault(Some(Fault::DiskFull));
    let err = store.truncate(id, 3).unwrap_err();
    assert!(matches!(err, StorageError::DiskFull { .. }), "{err}");
    // Memory still says what the file holds.
    assert_eq!(store.partition_state(id).unwrap().log_end, 6);
    assert_eq!(store.leader_epochs(id).unwrap(), [(1, 0), (2, 4)]);
    assert_eq!(store.read(id, 0, u32::MAX).unwrap().log_end, 6);

    file.set_fault(None);
    // Once the store has reopened itself, the truncation goes through.
    let deadline = Instant::now() + Duration::from_secs(30);
    let to = loop {
        match store.truncate(id, 3) {
            Ok(to) => break to,
            Err(err) if Instant::now() < deadline => {
                assert!(
                    matches!(err, StorageError::DiskFull { .. } | StorageError::Failed(_)),
                    "{err}"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(err) => panic!("writes did not resume within 30 s: {err}"),
        }
    };
    assert_eq!(to, 2, "from the base of the batch holding offset 3");
    let kept = [(0, "b0-0"), (1, "b0-1")].map(|(o, v)| (o, v.to_owned()));
    assert_eq!(values(store.read(id, 0, u32::MAX).unwrap().bytes), kept);
    assert_eq!(store.leader_epochs(id).unwrap(), [(1, 0)]);
    store.shutdown().unwrap();
    drop(store);
    let store = file.open();
    assert_eq!(values(store.read(id, 0, u32::MAX).unwrap().bytes), kept);
    assert_eq!(store.leader_epochs(id).unwrap(), [(1, 0)]);
}

#[test]
fn create_partitions_makes_them_all_in_one_commit() {
    let d = dir();
    let store = open(&d.path);
    let ids: Vec<_> = (0..1000)
        .map(|i| p(9, i))
        .chain([p(4, 0), p(4, 1)])
        .collect();
    let before = store.commit_count();
    store.create_partitions(&ids).unwrap();
    assert_eq!(
        store.commit_count(),
        before + 1,
        "one commit for 1002 partitions"
    );
    // Idempotent, also when only some are new.
    store.create_partitions(&[p(9, 0), p(9, 1000)]).unwrap();
    assert_eq!(store.partitions().len(), 1003);
    assert_eq!(store.stored_topic_ids(), [4, 9]);
    drop(store);
    let store = open(&d.path);
    assert_eq!(store.partitions().len(), 1003);
    assert_eq!(store.partition_state(p(9, 999)).unwrap().log_end, 0);
    assert_eq!(store.stored_topic_ids(), [4, 9]);
}
