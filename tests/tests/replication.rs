//! Partition replication, first step: a topic with three replicas per partition on three
//! broker processes; followers pull their leaders' batches over the peer connections and
//! store them unchanged, so every replica ends up with the same bytes at the same offsets and
//! leader epochs.

use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_client::{ClientConfig, ProducerConfig, ProducerRecord, TlsConfig};
use sluice_proto::{Request, ResponseBody};
use sluice_storage::{PartitionId, Store, StoreOptions};
use sluice_tests::{all_logs, bootstrap_list, start_cluster};

/// Every wait here is bounded by this.
const LIMIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_copy_their_leaders_logs_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(dir.path(), 3, "");
    let out = nodes[0].run_ok(&[
        "topic",
        "create",
        "r3",
        "--partitions",
        "3",
        "--replication-factor",
        "3",
    ]);
    assert!(out.contains("created topic r3"), "{out}");
    // Every partition has three replicas, led by different brokers.
    let described = nodes[1].run_ok(&["topic", "describe", "r3"]);
    let rows: Vec<Vec<&str>> = described
        .lines()
        .map(|l| l.split('\t').collect::<Vec<_>>())
        .filter(|f| f.len() == 8 && f[0].parse::<u32>().is_ok())
        .collect();
    assert_eq!(rows.len(), 3, "{described}");
    for f in &rows {
        assert_eq!(f[3].split(',').count(), 3, "three replicas: {described}");
    }
    // More replicas than brokers is refused.
    nodes[0].run_fails(
        &["topic", "create", "r4", "--replication-factor", "4"],
        "broker",
    );

    let client = nodes[0]
        .client_with(ClientConfig::new(
            bootstrap_list(&nodes),
            TlsConfig::CaFile(nodes[0].ca_path()),
        ))
        .await;
    let producer = client.producer(ProducerConfig::default());
    let mut pending = Vec::new();
    for i in 0..3_000 {
        pending.push(
            producer
                .send(ProducerRecord::new("r3", format!("value-{i}")).with_key(format!("k{i}")))
                .await
                .unwrap(),
        );
    }
    for d in pending {
        tokio::time::timeout(LIMIT, d).await.unwrap().unwrap();
    }

    // Each node's own view of its replicas (a describe asked of it directly) catches up with
    // the leaders' log ends.
    let ends = |t: &sluice_proto::TopicDescription| -> Vec<u64> {
        t.partitions.iter().map(|p| p.log_end).collect()
    };
    let leader_ends = ends(&client.admin().describe_topic("r3").await.unwrap());
    assert_eq!(leader_ends.iter().sum::<u64>(), 3_000);
    let started = Instant::now();
    for node in 1..=3u32 {
        loop {
            let local = match client
                .request_to(
                    node,
                    Request::DescribeTopic { name: "r3".into() },
                    Bytes::new(),
                )
                .await
                .unwrap()
                .0
            {
                ResponseBody::Topic(t) => ends(&t),
                other => panic!("{other:?}"),
            };
            if local == leader_ends {
                break;
            }
            assert!(
                started.elapsed() < LIMIT,
                "node {node} holds {local:?}, the leaders {leader_ends:?}\n{}",
                all_logs(&nodes)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let topic_id = client
        .metadata(Some(vec!["r3".into()]))
        .await
        .unwrap()
        .topics[0]
        .topic_id;
    client.close();
    for node in &mut nodes {
        assert!(node.terminate(), "clean shutdown");
    }
    // The same bytes, at the same offsets and leader epochs, on every replica.
    let mut copies = Vec::new();
    for node in &nodes {
        let store =
            Store::open(&node.data_dir.join("sluice.redb"), StoreOptions::default()).unwrap();
        let mut partitions = Vec::new();
        for partition in 0..3 {
            let id = PartitionId {
                topic_id,
                partition,
            };
            let read = store.read(id, 0, 64 << 20).unwrap();
            partitions.push((read.bytes, store.leader_epochs(id).unwrap()));
        }
        store.shutdown().unwrap();
        copies.push(partitions);
    }
    for (i, copy) in copies.iter().enumerate().skip(1) {
        for p in 0..3 {
            assert!(!copies[0][p].0.is_empty());
            assert_eq!(copy[p], copies[0][p], "node {} partition {p}", i + 1);
        }
    }
}
