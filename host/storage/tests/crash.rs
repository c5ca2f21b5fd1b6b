//! kill -9 in the middle of a load: nothing acknowledged is lost, the store reopens, and offsets
//! continue without reuse.
//!
//! The test runs itself as a child process (selected by an environment variable) that appends
//! from several tasks and prints every acknowledgement; the parent kills it with SIGKILL after a
//! while and checks the file.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_proto::batch::{decode_records, split_batches};
use sluice_proto::{BatchBuilder, Compression, Durability, Record};
use sluice_storage::{PartitionId, Store, StoreOptions};

const CHILD_ENV: &str = "SLUICE_STORAGE_CRASH_CHILD";
const ID: PartitionId = PartitionId {
    topic_id: 1,
    partition: 0,
};

fn batch(value: &str) -> Vec<u8> {
    let mut b = BatchBuilder::new(Compression::None);
    for _ in 0..2 {
        b.push(&Record {
            value: Some(Bytes::from(value.to_owned())),
            timestamp: 0,
            ..Default::default()
        });
    }
    b.finish(-1, -1, -1).unwrap()
}

fn child(path: &Path) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = Store::open(path, StoreOptions::default()).unwrap();
        store.create_partition(ID).unwrap();
        println!("READY");
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for task in 0..8 {
            let store = store.clone();
            tasks.spawn(async move {
                // Bounded, in case the parent dies without killing us.
                for i in 0.. {
                    if started.elapsed() > Duration::from_secs(20) {
                        break;
                    }
                    let value = format!("t{task}-{i}");
                    let got = store
                        .append(ID, batch(&value), 1, Durability::Fsync)
                        .await
                        .unwrap();
                    println!("ACK {} {value}", got.base_offset);
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    });
}

/// Runs this test binary's test `name` as a child process, with `env` naming the store's
/// `path` (which makes the test play the child), its stdout piped.
fn spawn_child(name: &str, env: &str, path: &Path) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(env, path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn kill_9_loses_no_acknowledged_append() {
    if let Some(path) = std::env::var_os(CHILD_ENV) {
        child(Path::new(&path));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.redb");
    let mut proc = spawn_child("kill_9_loses_no_acknowledged_append", CHILD_ENV, &path);
    let stdout = BufReader::new(proc.stdout.take().unwrap());
    let mut acked = BTreeMap::new();
    for line in stdout.lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("ACK ") {
            let (offset, value) = rest.split_once(' ').unwrap();
            acked.insert(offset.parse::<u64>().unwrap(), value.to_owned());
            if acked.len() == 300 {
                break;
            }
        }
    }
    proc.kill().unwrap(); // SIGKILL
    proc.wait().unwrap();
    assert_eq!(acked.len(), 300, "the child stopped early");

    let store = Store::open(&path, StoreOptions::default()).unwrap();
    // Every durable commit saved redb's allocator state: no walk of the whole file.
    assert!(!store.repaired_at_open(), "a full repair after the crash");
    let state = store.partition_state(ID).unwrap();
    let (&last, _) = acked.last_key_value().unwrap();
    assert!(
        state.log_end > last,
        "log end {} lost acked offset {last}",
        state.log_end
    );
    assert_eq!(state.log_end % 2, 0);
    let bytes = store.read(ID, 0, u32::MAX).unwrap().bytes;
    let mut stored = BTreeMap::new();
    let mut next = 0;
    for (header, b) in split_batches(bytes).unwrap() {
        assert_eq!(header.base_offset, next, "offsets are dense");
        next = header.next_offset();
        for r in decode_records(&header, &b).unwrap() {
            stored.insert(
                r.offset,
                String::from_utf8(r.value.unwrap().to_vec()).unwrap(),
            );
        }
    }
    assert_eq!(next, state.log_end);
    for (offset, value) in &acked {
        assert_eq!(
            stored.get(offset),
            Some(value),
            "acked offset {offset} lost"
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let got = runtime
        .block_on(store.append(ID, batch("after"), 2, Durability::Fsync))
        .unwrap();
    assert_eq!(
        got.base_offset, state.log_end,
        "offsets continue without reuse"
    );
}

const UNSYNCED_CHILD_ENV: &str = "SLUICE_STORAGE_UNSYNCED_CHILD";
/// The child's bound on bytes appended without fsync, and what it appends in all.
const UNSYNCED_BOUND: usize = 256 * 1024;
const UNSYNCED_BATCHES: u64 = 64;

/// Appends `UNSYNCED_BATCHES` batches of ~16 KiB to a topic that asks for an fsync once an
/// hour, one after the other, then says DONE and waits to be killed.
fn unsynced_child(path: &Path) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let options = StoreOptions {
            max_unsynced_bytes: UNSYNCED_BOUND,
            // And the control of `kill_9_loses_no_acknowledged_append`'s quick repair.
            quick_repair: false,
            ..StoreOptions::default()
        };
        let store = Store::open(path, options).unwrap();
        store.create_partition(ID).unwrap();
        let value = "x".repeat(8 * 1024);
        for _ in 0..UNSYNCED_BATCHES {
            store
                .append(ID, batch(&value), 1, Durability::IntervalMs(3_600_000))
                .await
                .unwrap();
        }
        println!("DONE");
        // Bounded, in case the parent dies without killing us.
        tokio::time::sleep(Duration::from_secs(20)).await;
    });
}

/// Appends made without fsync (an `interval:MS` topic) are made durable once
/// `max_unsynced_bytes` of them are waiting, not only when the interval ends: killed with
/// `kill -9` after 1 MiB of appends on a topic that syncs hourly, the store keeps all but the
/// last `max_unsynced_bytes` (and a batch) of them. Without the bound it would keep none
/// (redb holds commits made without fsync in memory until a durable one).
#[test]
fn kill_9_keeps_appends_without_fsync_up_to_the_unsynced_bound() {
    if let Some(path) = std::env::var_os(UNSYNCED_CHILD_ENV) {
        unsynced_child(Path::new(&path));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.redb");
    let mut proc = spawn_child(
        "kill_9_keeps_appends_without_fsync_up_to_the_unsynced_bound",
        UNSYNCED_CHILD_ENV,
        &path,
    );
    let stdout = BufReader::new(proc.stdout.take().unwrap());
    let done = stdout.lines().any(|l| l.is_ok_and(|l| l.ends_with("DONE")));
    proc.kill().unwrap(); // SIGKILL
    proc.wait().unwrap();
    assert!(done, "the child stopped early");

    let store = Store::open(&path, StoreOptions::default()).unwrap();
    assert!(
        store.repaired_at_open(),
        "no allocator state saved (quick_repair off), so the crash needs a full repair"
    );
    let kept_batches = store.partition_state(ID).map_or(0, |s| s.log_end / 2);
    // Each batch is ~16 KiB: at most the bound's worth and one more batch are lost.
    let lost_at_most = (UNSYNCED_BOUND / (16 * 1024)) as u64 + 1;
    assert!(
        kept_batches >= UNSYNCED_BATCHES - lost_at_most,
        "kept {kept_batches} of {UNSYNCED_BATCHES} batches"
    );
    assert!(kept_batches <= UNSYNCED_BATCHES);
}
