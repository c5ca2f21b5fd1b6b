//! Issue 9, acceptance 1: RF=3, min in-sync 2, four idempotent `acks=all` producers; the
//! leader of every partition is killed with `kill -9` in turn (and restarted). Nothing
//! acknowledged is lost, nothing is duplicated, and the producers resume after each kill.

use sluice_tests::jepsen::{Fault, Settings, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_every_partition_leader_in_turn_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings::three_nodes(vec![Fault::KillLeader; 3]);
    let outcome = run(dir.path(), settings).await;
    let table = outcome.table();
    println!("{table}");
    assert!(outcome.is_clean(), "{table}");
    assert_eq!(outcome.injected.len(), 3);
    assert!(outcome.report.acknowledged > 1_000, "{table}");
    assert_eq!(outcome.failed_deliveries, 0, "{table}");
}

/// Issue 9, acceptances 5 and 6: the harness with every kind of fault, 20 of them, while
/// producers, assigned consumers, a consumer group and a pipeline run; every anomaly the
/// checker counts is 0, no committed group offset is lost and the pipeline's output is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_mixed_faults_leave_no_anomaly() {
    let dir = tempfile::tempdir().unwrap();
    let kinds = [
        Fault::KillLeader,
        Fault::PauseFollower,
        Fault::KillController,
        Fault::PauseLeader,
        Fault::Restart,
        Fault::KillCoordinator,
    ];
    let faults: Vec<Fault> = (0..20).map(|i| kinds[i % kinds.len()]).collect();
    let mut settings = Settings::three_nodes(faults);
    settings.between_faults = std::time::Duration::from_secs(1);
    let outcome = run(dir.path(), settings).await;
    let table = outcome.table();
    println!("{table}");
    assert!(outcome.is_clean(), "{table}");
    assert_eq!(outcome.injected.len(), 20);
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
    let dir = tempfile::tempdir().unwrap();
    let count: usize = std::env::var("SLUICE_SOAK_FAULTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    let kinds = [
        Fault::KillLeader,
        Fault::PauseFollower,
        Fault::KillController,
        Fault::PauseLeader,
        Fault::Restart,
        Fault::KillCoordinator,
    ];
    let faults: Vec<Fault> = (0..count).map(|i| kinds[i % kinds.len()]).collect();
    let outcome = run(dir.path(), Settings::three_nodes(faults)).await;
    let table = outcome.table();
    println!("{table}");
    assert!(outcome.is_clean(), "{table}");
    assert_eq!(outcome.injected.len(), count);
}
