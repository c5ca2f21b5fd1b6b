//! Issue 9, acceptance 1: RF=3, min in-sync 2, four idempotent `acks=all` producers; the
//! leader of every partition is killed with `kill -9` in turn (and restarted). Nothing
//! acknowledged is lost, nothing is duplicated, and the producers resume after each kill.

use sluice_storage::{PartitionId, Store, StoreOptions};
use sluice_tests::jepsen::{Fault, Outcome, Settings, run};

/// Once the nodes have stopped: every node's copy of every partition holds the same batches
/// (bytes, offsets, leader epochs) and the same leader-epoch index — no replica kept a suffix
/// its leader did not have, or missed one it had.
fn assert_replicas_identical(dir: &std::path::Path, outcome: &Outcome, partitions: u32) {
    let mut copies = Vec::new();
    for node in 1..=3 {
        let store = Store::open(
            &dir.join(format!("node-{node}")).join("sluice.redb"),
            StoreOptions::default(),
        )
        .unwrap();
        let mut held = Vec::new();
        for &topic_id in &outcome.topic_ids {
            for partition in 0..partitions {
                let id = PartitionId {
                    topic_id,
                    partition,
                };
                let state = store.partition_state(id).unwrap();
                let read = store.read(id, state.log_start, u32::MAX).unwrap();
                held.push((
                    id,
                    state.log_end,
                    read.bytes,
                    store.leader_epochs(id).unwrap(),
                ));
            }
        }
        store.shutdown().unwrap();
        copies.push(held);
    }
    for (node, copy) in copies.iter().enumerate().skip(1) {
        for (mine, first) in copy.iter().zip(&copies[0]) {
            assert_eq!(mine.1, first.1, "node {} {}: log end", node + 1, mine.0);
            assert!(
                mine.2 == first.2,
                "node {} {}: its batches differ from node 1's",
                node + 1,
                mine.0
            );
            assert_eq!(
                mine.3,
                first.3,
                "node {} {}: leader epochs",
                node + 1,
                mine.0
            );
        }
    }
}

/// Where a run keeps its nodes: a temporary directory, removed afterwards — or, with
/// `SLUICE_KEEP_DIR` set, a directory under it that is kept (data dirs and broker logs, for a
/// look after a failure).
fn run_dir() -> (Option<tempfile::TempDir>, std::path::PathBuf) {
    match std::env::var_os("SLUICE_KEEP_DIR") {
        Some(d) => {
            std::fs::create_dir_all(&d).unwrap();
            let dir = tempfile::tempdir_in(d).unwrap().keep();
            println!("nodes' data dirs and logs kept in {}", dir.display());
            (None, dir)
        }
        None => {
            let temp = tempfile::tempdir().unwrap();
            let dir = temp.path().to_owned();
            (Some(temp), dir)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_every_partition_leader_in_turn_loses_and_duplicates_nothing() {
    let (_temp, dir) = run_dir();
    let settings = Settings::three_nodes(vec![Fault::KillLeader; 3]);
    let outcome = run(&dir, settings).await;
    let table = outcome.table();
    println!("{table}");
    assert!(outcome.is_clean(), "{table}");
    assert_eq!(outcome.injected.len(), 3);
    assert_replicas_identical(&dir, &outcome, 3);
    assert!(outcome.report.acknowledged > 1_000, "{table}");
    assert_eq!(outcome.failed_deliveries, 0, "{table}");
}

/// Issue 9, acceptances 5 and 6: the harness with every kind of fault, 20 of them, while
/// producers, assigned consumers, a consumer group and a pipeline run; every anomaly the
/// checker counts is 0, no committed group offset is lost and the pipeline's output is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_mixed_faults_leave_no_anomaly() {
    let (_temp, dir) = run_dir();
    let mut settings = Settings::three_nodes(Fault::mixed(20));
    settings.between_faults = std::time::Duration::from_secs(1);
    let outcome = run(&dir, settings).await;
    let table = outcome.table();
    println!("{table}");
    assert!(outcome.is_clean(), "{table}");
    assert_eq!(outcome.injected.len(), 20);
    assert_replicas_identical(&dir, &outcome, 3);
    assert!(
        outcome.report.read > 0 && outcome.report.acknowledged > 1_000,
        "{table}"
    );
}

/// The soak: the same harness with many more faults (`SLUICE_SOAK_FAULTS`, default 100), run
/// by hand (docs/replication.md, "The fault harness").
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a long soak; run by hand"]
async fn soak() {
    let (_temp, dir) = run_dir();
    let count: usize = std::env::var("SLUICE_SOAK_FAULTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    let outcome = run(&dir, Settings::three_nodes(Fault::mixed(count))).await;
    let table = outcome.table();
    println!("{table}");
    assert!(outcome.is_clean(), "{table}");
    assert_eq!(outcome.injected.len(), count);
    assert_replicas_identical(&dir, &outcome, 3);
}
