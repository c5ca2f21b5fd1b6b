//! Metadata log entries read back from disk, under an allocator with a limit: a corrupt or
//! hostile entry claiming huge vector or string lengths must be refused without an allocation
//! sized by the claim (postcard, through serde, preallocates at most 1 MiB per sequence and
//! checks string lengths against the input). A decoder that tries aborts this test process.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use sluice_metadata::{
    ConnectorKind, ConnectorSpec, MetadataCommand, PipelineSpec, SourceIntent, decode_command,
    encode_command,
};
use sluice_proto::TopicConfig;

#[global_allocator]
static ALLOC: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

/// The largest postcard varint (ten bytes, every bit set), and lengths a hostile entry might
/// claim.
fn huge_lengths() -> Vec<Vec<u8>> {
    [u64::MAX, u64::from(u32::MAX), 1 << 31, 1 << 28]
        .into_iter()
        .map(|mut v| {
            let mut out = Vec::new();
            while v >= 0x80 {
                out.push((v as u8) | 0x80);
                v >>= 7;
            }
            out.push(v as u8);
            out
        })
        .collect()
}

fn samples() -> Vec<MetadataCommand> {
    vec![
        MetadataCommand::CreateTopic {
            name: "orders".into(),
            config: TopicConfig::default(),
            assignments: vec![vec![1, 2, 3], vec![2, 3, 1]],
        },
        MetadataCommand::SetLeader {
            topic: "orders".into(),
            partition: 1,
            leader: Some(2),
            in_sync: vec![2, 3],
        },
        MetadataCommand::CreatePipeline(PipelineSpec {
            name: "p".into(),
            plugins: vec!["f".into(), "g".into()],
            from: "in".into(),
            to: "out".into(),
            config: vec![("k".into(), "v".into())],
            max_call_ms: Some(5),
            max_memory_bytes: None,
            start_offsets: vec![0, 10, 20],
        }),
        MetadataCommand::RegisterBrokerLife {
            node_id: 3,
            addr: "127.0.0.1:9000".into(),
            peer_addr: Some("127.0.0.1:9471".into()),
            rack: Some("a".into()),
            fresh: true,
        },
        MetadataCommand::AlterInSync {
            topic: "orders".into(),
            partition: 0,
            leader: 1,
            leader_epoch: 4,
            in_sync: vec![1, 2],
        },
        MetadataCommand::ElectPreferredLeader {
            topic: "orders".into(),
            partition: 1,
        },
        MetadataCommand::AlterTopicReplication {
            topic: "orders".into(),
            min_insync_replicas: Some(2),
            unclean_leader_election: Some(true),
        },
        MetadataCommand::ElectUncleanLeader {
            topic: "orders".into(),
            partition: 1,
            leader: 3,
        },
        MetadataCommand::CreateConnector(ConnectorSpec {
            name: "app-logs".into(),
            plugin: "tail".into(),
            kind: ConnectorKind::Source,
            topics: vec!["logs".into()],
            settings: vec![("path".into(), "/var/log/app.log".into())],
            dirs: vec!["/var/log:ro".into()],
            http_hosts: vec!["indexer:8080".into()],
            transforms: vec!["mask".into()],
            max_records_per_second: Some(500),
            dead_letter_topic: Some("logs-dlq".into()),
        }),
        MetadataCommand::SetConnectorPaused {
            name: "app-logs".into(),
            paused: true,
        },
        MetadataCommand::ConnectorStarted {
            name: "app-logs".into(),
            created_index: 12,
            node: 2,
        },
        MetadataCommand::ConnectorIntent {
            name: "app-logs".into(),
            created_index: 12,
            generation: 3,
            intent: SourceIntent {
                before: Some(vec![1, 2, 3]),
                count: 100,
                after: vec![4, 5, 6, 7],
                parts: vec![(0, 17, 60), (2, 5, 40)],
            },
        },
        MetadataCommand::ConnectorOffsets {
            name: "app-out".into(),
            created_index: 13,
            generation: 1,
            offsets: vec![("logs".into(), 0, 1234)],
        },
        MetadataCommand::ConnectorFailed {
            name: "app-logs".into(),
            created_index: 12,
            at_ms: 1_700_000_000_000,
            error: "boom".into(),
        },
        MetadataCommand::DeleteConnector {
            name: "app-logs".into(),
        },
    ]
}

/// One test, so the limit set at its start holds for everything the process allocates.
#[test]
fn stored_commands_with_huge_lengths_and_arbitrary_bytes() {
    const HEADROOM: usize = 32 * 1024 * 1024;
    ALLOC.set_limit(ALLOC.allocated() + HEADROOM).unwrap();
    // The limit is in force: an allocation past it fails (and, when not fallible, aborts).
    // (Tests run in parallel threads: what is free varies, but nothing above the whole limit
    // can ever be had.)
    assert!(Vec::<u8>::new().try_reserve(ALLOC.limit()).is_err());
    let huge = huge_lengths();
    for cmd in samples() {
        let bytes = encode_command(&cmd);
        assert_eq!(decode_command(&bytes).unwrap(), cmd);
        // A huge length spliced over, and in front of, every byte: every field is hit.
        for at in 0..bytes.len() {
            for v in &huge {
                let mut bad = bytes.clone();
                bad.splice(at..=at, v.iter().copied());
                let _ = decode_command(&bad);
                let mut bad = bytes.clone();
                bad.splice(at..at, v.iter().copied());
                let _ = decode_command(&bad);
            }
        }
    }
    // CreateTopic (variant 1) named "a", default config, then u32::MAX partition assignments.
    let mut bytes = encode_command(&MetadataCommand::CreateTopic {
        name: "a".into(),
        config: TopicConfig::default(),
        assignments: vec![],
    });
    bytes.pop();
    bytes.extend_from_slice(&huge[1]);
    assert!(decode_command(&bytes).is_err());

    let mut runner = TestRunner::new(Config::with_cases(5000));
    runner
        .run(&proptest::collection::vec(any::<u8>(), 0..300), |data| {
            let _ = decode_command(&data);
            Ok(())
        })
        .unwrap();
}
