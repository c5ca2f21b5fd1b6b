//! The metadata log is a Raft log of its own (`DATA_DIR/raft.redb`). A data dir written before
//! it existed (the metadata log in the store) keeps its topics: the old entries are proposed
//! into the Raft log once, at the first start.

use sluice_metadata::{MetadataCommand, encode_command};
use sluice_proto::TopicConfig;
use sluice_storage::{Store, StoreOptions};
use sluice_tests::{BrokerProcess, TEST_CONFIG};

#[test]
fn a_pre_raft_metadata_log_is_brought_over_once() {
    let dir = tempfile::tempdir().unwrap();
    {
        // What an older broker left: its metadata log in the store.
        let store = Store::open(&dir.path().join("sluice.redb"), StoreOptions::default()).unwrap();
        let entries = [
            MetadataCommand::RegisterBroker {
                node_id: 1,
                addr: "127.0.0.1:1".into(),
            },
            MetadataCommand::CreateTopic {
                name: "legacy".into(),
                config: TopicConfig::default(),
                assignments: vec![vec![1]; 3],
            },
            // Refused when it was first appended too (the topic exists): still refused.
            MetadataCommand::CreateTopic {
                name: "legacy".into(),
                config: TopicConfig::default(),
                assignments: vec![vec![1]; 5],
            },
            MetadataCommand::AllocateProducerId,
        ];
        for (i, cmd) in entries.iter().enumerate() {
            store
                .meta_append(i as u64 + 1, &encode_command(cmd))
                .unwrap();
        }
        store.shutdown().unwrap();
    }
    let mut broker = BrokerProcess::start(dir.path(), TEST_CONFIG);
    assert!(dir.path().join("raft.redb").exists());
    let describe = broker.run_ok(&["topic", "describe", "legacy"]);
    assert!(describe.contains("3 partition(s)"), "{describe}");
    broker.run_ok(&["topic", "create", "after"]);
    // Restarted: the Raft log has it all, and the old entries are not proposed again.
    assert!(broker.terminate(), "log:\n{}", broker.log());
    broker.restart();
    let list = broker.run_ok(&["topic", "list"]);
    assert!(
        list.contains("legacy\t3 partition(s)") && list.contains("after\t1 partition(s)"),
        "{list}"
    );
    let log = broker.log();
    assert_eq!(
        log.matches("bringing the store's metadata log into the Raft log")
            .count(),
        1,
        "{log}"
    );
}
