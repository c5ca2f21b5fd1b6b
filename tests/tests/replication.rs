//! Partition replication, first step: a topic with three replicas per partition on three
//! broker processes; followers pull their leaders' batches over the peer connections and
//! store them unchanged, so every replica ends up with the same bytes at the same offsets and
//! leader epochs.

use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_client::{ProducerConfig, ProducerRecord};
use sluice_proto::{Request, ResponseBody};
use sluice_storage::{PartitionId, Store, StoreOptions};
use sluice_tests::{all_logs, start_cluster};

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

    let client = sluice_tests::cluster_client(&nodes).await;
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

/// The leader and in-sync set of partition 0 of `topic`, from `topic describe` on `node`.
fn in_sync(node: &sluice_tests::BrokerProcess, topic: &str) -> (u32, Vec<u32>) {
    let (leader, isr) = leader_and_in_sync(node, topic);
    (leader.expect("partition 0 has a leader"), isr)
}

/// The same, where the partition may be between leaders (`none`: an election after nodes
/// came back is still running).
fn leader_and_in_sync(node: &sluice_tests::BrokerProcess, topic: &str) -> (Option<u32>, Vec<u32>) {
    let out = node.run_ok(&["topic", "describe", topic]);
    let row: Vec<String> = out
        .lines()
        .map(|l| l.split('\t').map(str::to_owned).collect::<Vec<_>>())
        .find(|f| f.len() == 8 && f[0] == "0")
        .unwrap_or_else(|| panic!("{out}"));
    let leader = match row[1].as_str() {
        "none" => None,
        id => Some(id.parse().unwrap_or_else(|_| panic!("{out}"))),
    };
    (
        leader,
        row[4].split(',').map(|n| n.parse().unwrap()).collect(),
    )
}

fn wait_in_sync(node: &sluice_tests::BrokerProcess, topic: &str, want: usize) -> Vec<u32> {
    let started = Instant::now();
    loop {
        let (_, isr) = leader_and_in_sync(node, topic);
        if isr.len() == want {
            return isr;
        }
        assert!(
            started.elapsed() < LIMIT,
            "the in-sync set never reached {want} members: {isr:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_all_waits_for_the_in_sync_replicas_and_needs_two_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = sluice_tests::start_cluster_with(dir.path(), 3, "", "replica_lag_max_ms = 1500\n");
    nodes[0].run_ok(&["topic", "create", "w", "--replication-factor", "3"]);
    let (leader, isr) = in_sync(&nodes[0], "w");
    assert_eq!(isr.len(), 3);
    let followers: Vec<u32> = (1..=3).filter(|n| *n != leader).collect();
    let node = |id: u32| &nodes[id as usize - 1];
    let client = sluice_tests::cluster_client(&nodes).await;
    let producer = client.producer(ProducerConfig {
        delivery_timeout: LIMIT,
        ..ProducerConfig::default()
    });
    let send = |v: &str| {
        let (producer, v) = (producer.clone(), v.to_owned());
        async move {
            tokio::time::timeout(LIMIT, producer.send_and_wait(ProducerRecord::new("w", v)))
                .await
                .expect("delivered in time")
        }
    };
    send("a").await.unwrap();

    // One follower stops: acks=all waits until it leaves the in-sync set (two remain, enough).
    node(followers[0]).signal("STOP");
    send("b").await.unwrap();
    assert_eq!(wait_in_sync(node(leader), "w", 2).len(), 2);

    // Both stop: once the second lags too, acks=all is refused, retriably (the in-sync set
    // may not even shrink: with two of three nodes stopped the metadata quorum is down).
    node(followers[1]).signal("STOP");
    let batch = {
        let mut b = sluice_proto::BatchBuilder::new(sluice_proto::Compression::None);
        b.push(&sluice_proto::Record {
            key: None,
            value: Some(Bytes::from_static(b"refused")),
            headers: vec![],
            timestamp: 0,
        });
        Bytes::from(b.finish(-1, -1, -1).unwrap())
    };
    let produce = |acks| {
        Request::Produce(sluice_proto::ProduceRequest {
            topic: "w".into(),
            partition: 0,
            acks,
            timeout_ms: 5_000,
            leader_epoch: None,
        })
    };
    let started = Instant::now();
    let e = loop {
        match client
            .request_to(leader, produce(sluice_proto::Acks::All), batch.clone())
            .await
        {
            Err(e) if e.wire_code() == Some(sluice_proto::ErrorCode::NotEnoughReplicas) => {
                break e;
            }
            // Before it lags: the write waits for it and times out (its outcome unknown).
            other => assert!(
                started.elapsed() < LIMIT,
                "acks=all never refused: {other:?}"
            ),
        }
    };
    assert!(e.is_retriable(), "{e}");

    // They return, catch up, rejoin: acks=all works again.
    node(followers[0]).signal("CONT");
    node(followers[1]).signal("CONT");
    send("c").await.unwrap();
    wait_in_sync(node(leader), "w", 3);
    send("d").await.unwrap();

    // What was acknowledged is there, once each, in order (the refused writes are not; the
    // timed-out attempts before the refusal may be).
    let mut consumer = client.consumer(sluice_client::ConsumerConfig::default());
    consumer.assign_all("w").await.unwrap();
    let mut got = Vec::new();
    let started = Instant::now();
    while !got.iter().any(|v| v == "d") {
        assert!(started.elapsed() < LIMIT, "read {got:?}");
        for r in consumer.poll().await.unwrap() {
            got.push(String::from_utf8(r.value.unwrap().to_vec()).unwrap());
        }
    }
    let acked: Vec<&String> = got.iter().filter(|v| *v != "refused").collect();
    assert_eq!(acked, ["a", "b", "c", "d"], "{got:?}");
}

/// Issue 9, acceptance 4: a broker whose data dir was wiped registers as a fresh node (in no
/// in-sync set, leading nothing), re-replicates every partition from the leaders, rejoins the
/// in-sync sets, and — automatic preferred-leader balancing — leads its partitions again,
/// serving every record from its new copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_data_dir_was_wiped_re_replicates_and_leads_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = sluice_tests::start_cluster_with(
        dir.path(),
        3,
        "",
        "session_timeout_ms = 3000\nreplica_lag_max_ms = 3000\nleader_balance_interval_ms = 500\n",
    );
    nodes[0].run_ok(&[
        "topic",
        "create",
        "w",
        "--partitions",
        "3",
        "--replication-factor",
        "3",
    ]);
    let client = sluice_tests::cluster_client(&nodes).await;
    let producer = client.producer(ProducerConfig::default());
    let mut acked = std::collections::BTreeMap::new();
    let mut pending = Vec::new();
    for i in 0..3_000 {
        let value = format!("w-{i}");
        pending.push((
            value.clone(),
            producer
                .send(ProducerRecord::new("w", value).with_key(format!("k{i}")))
                .await
                .unwrap(),
        ));
    }
    for (value, d) in pending {
        let m = tokio::time::timeout(LIMIT, d).await.unwrap().unwrap();
        acked.insert((m.partition, m.offset), value);
    }
    let meta = client.metadata(Some(vec!["w".into()])).await.unwrap();
    let preferred_of_1: Vec<u32> = meta.topics[0]
        .partitions
        .iter()
        .filter(|p| p.replicas[0] == 1)
        .map(|p| p.partition)
        .collect();
    assert!(!preferred_of_1.is_empty(), "{meta:?}");

    // Node 1 dies and loses everything on disk.
    nodes[0].kill9();
    let data_dir = nodes[0].data_dir.clone();
    std::fs::remove_dir_all(&data_dir).unwrap();
    nodes[0].restart();

    // It comes back in sync everywhere and leads its preferred partitions again.
    let started = Instant::now();
    loop {
        let meta = client.metadata(Some(vec!["w".into()])).await;
        if let Ok(meta) = &meta {
            let done = meta.topics[0]
                .partitions
                .iter()
                .all(|p| p.in_sync.contains(&1) && (p.replicas[0] != 1 || p.leader == Some(1)));
            if done {
                break;
            }
        }
        assert!(
            started.elapsed() < LIMIT,
            "node 1 never rejoined and led again: {meta:?}\n{}",
            all_logs(&nodes)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // It registered as holding no data (its log starts again with the wipe).
    assert!(
        nodes[0].log().contains("registers as holding no data"),
        "{}",
        nodes[0].log()
    );

    // Every acknowledged record is there, read through the leaders — node 1 for its
    // partitions, from the copy it re-replicated.
    let mut consumer = client.consumer(sluice_client::ConsumerConfig::default());
    consumer.assign_all("w").await.unwrap();
    let mut read = std::collections::BTreeMap::new();
    let started = Instant::now();
    while read.len() < acked.len() {
        assert!(
            started.elapsed() < LIMIT,
            "read {} of {}",
            read.len(),
            acked.len()
        );
        for r in consumer.poll().await.unwrap() {
            read.insert(
                (r.partition, r.offset),
                String::from_utf8(r.value.unwrap().to_vec()).unwrap(),
            );
        }
    }
    assert_eq!(read, acked);
    let led_by_1: Vec<u32> = client
        .metadata(Some(vec!["w".into()]))
        .await
        .unwrap()
        .topics[0]
        .partitions
        .iter()
        .filter(|p| p.leader == Some(1))
        .map(|p| p.partition)
        .collect();
    assert_eq!(led_by_1, preferred_of_1);
    client.close();
}

/// Leader and in-sync set of partition 0 of `topic` as `node`'s metadata has them.
async fn placement_of(
    client: &sluice_client::Client,
    node: u32,
    topic: &str,
) -> Option<(Option<u32>, Vec<u32>, Vec<u32>)> {
    match client
        .request_to(
            node,
            Request::Metadata {
                topics: Some(vec![topic.into()]),
            },
            Bytes::new(),
        )
        .await
    {
        Ok((ResponseBody::Metadata(m), _)) => m.topics.first().map(|t| {
            let p = &t.partitions[0];
            (p.leader, p.replicas.clone(), p.in_sync.clone())
        }),
        _ => None,
    }
}

/// Waits (bounded) until `node` reports a placement of `topic` partition 0 for which `done`
/// holds.
async fn wait_placement(
    client: &sluice_client::Client,
    node: u32,
    topic: &str,
    what: &str,
    done: impl Fn(&(Option<u32>, Vec<u32>, Vec<u32>)) -> bool,
) {
    let started = Instant::now();
    loop {
        let p = placement_of(client, node, topic).await;
        if p.as_ref().is_some_and(&done) {
            return;
        }
        assert!(started.elapsed() < LIMIT, "{what}: never; last {p:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn one_record(value: &'static str) -> Bytes {
    let mut b = sluice_proto::BatchBuilder::new(sluice_proto::Compression::None);
    b.push(&sluice_proto::Record {
        key: None,
        value: Some(Bytes::from_static(value.as_bytes())),
        headers: vec![],
        timestamp: 0,
    });
    Bytes::from(b.finish(-1, -1, -1).unwrap())
}

fn produce_all(topic: &str) -> Request {
    Request::Produce(sluice_proto::ProduceRequest {
        topic: topic.into(),
        partition: 0,
        acks: sluice_proto::Acks::All,
        timeout_ms: 5_000,
        leader_epoch: None,
    })
}

/// `min.insync.replicas` is a topic setting: set to 3 at create, one follower out of sync
/// refuses acks=all; lowered to 2 with `topic alter`, the same write is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_insync_replicas_is_a_topic_setting() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = sluice_tests::start_cluster_with(dir.path(), 3, "", "replica_lag_max_ms = 1500\n");
    let out = nodes[0].run_ok(&[
        "topic",
        "create",
        "m",
        "--replication-factor",
        "3",
        "--min-insync-replicas",
        "3",
    ]);
    assert!(out.contains("min.insync.replicas=3"), "{out}");
    nodes[0].run_fails(
        &["topic", "alter", "m", "--min-insync-replicas", "4"],
        "between 1 and its 3",
    );
    let (leader, isr) = in_sync(&nodes[0], "m");
    assert_eq!(isr.len(), 3);
    let follower = (1..=3).find(|n| *n != leader).unwrap();
    let client = sluice_tests::cluster_client(&nodes).await;
    nodes[follower as usize - 1].signal("STOP");
    wait_in_sync(&nodes[leader as usize - 1], "m", 2);
    let started = Instant::now();
    loop {
        match client
            .request_to(leader, produce_all("m"), one_record("x"))
            .await
        {
            Err(e) if e.wire_code() == Some(sluice_proto::ErrorCode::NotEnoughReplicas) => break,
            other => assert!(started.elapsed() < LIMIT, "never refused: {other:?}"),
        }
    }
    let out =
        nodes[leader as usize - 1].run_ok(&["topic", "alter", "m", "--min-insync-replicas", "2"]);
    assert!(out.contains("min.insync.replicas=2"), "{out}");
    let started = Instant::now();
    loop {
        match client
            .request_to(leader, produce_all("m"), one_record("y"))
            .await
        {
            Ok((ResponseBody::Produced(_), _)) => break,
            other => assert!(started.elapsed() < LIMIT, "never taken: {other:?}"),
        }
    }
    let described = nodes[leader as usize - 1].run_ok(&["topic", "describe", "m"]);
    assert!(
        described.contains("3 replica(s), min.insync.replicas=2, unclean.leader.election=off"),
        "{described}"
    );
    nodes[follower as usize - 1].signal("CONT");
    client.close();
}

/// Unclean leader election is off by default and a per-topic opt-in: a partition whose only
/// in-sync replica died stays leaderless while its other replica, out of sync, is alive; once
/// the topic allows it, that replica leads (alone in the in-sync set) and the election is
/// logged as the data loss it is. Five nodes, so the metadata quorum outlives the two faults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unclean_leader_election_is_an_opt_in_per_topic() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = sluice_tests::start_cluster_with(
        dir.path(),
        5,
        "",
        "replica_lag_max_ms = 1500\nsession_timeout_ms = 3000\nleader_balance_interval_ms = 300\n",
    );
    nodes[0].run_ok(&["topic", "create", "u", "--replication-factor", "2"]);
    let client = sluice_tests::cluster_client(&nodes).await;
    wait_placement(&client, 1, "u", "in sync", |p| p.2.len() == 2).await;
    let (leader, replicas, _) = placement_of(&client, 1, "u").await.unwrap();
    let leader = leader.unwrap();
    let follower = *replicas.iter().find(|r| **r != leader).unwrap();
    let witness = (1..=5u32).find(|n| !replicas.contains(n)).unwrap();
    let started = Instant::now();
    loop {
        match client
            .request_to(leader, produce_all("u"), one_record("before"))
            .await
        {
            Ok((ResponseBody::Produced(_), _)) => break,
            other => assert!(started.elapsed() < LIMIT, "{other:?}"),
        }
    }

    // The follower falls out of sync, then the leader — the last in-sync replica — dies.
    nodes[follower as usize - 1].signal("STOP");
    wait_placement(&client, witness, "u", "follower out of sync", |p| {
        p.2 == [leader]
    })
    .await;
    nodes[leader as usize - 1].kill9();
    wait_placement(&client, witness, "u", "leaderless", |p| p.0.is_none()).await;
    nodes[follower as usize - 1].signal("CONT");
    // Back and live, but out of sync: with unclean election off the partition waits.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let p = placement_of(&client, witness, "u").await.unwrap();
    assert_eq!((p.0, p.2.clone()), (None, vec![leader]), "{p:?}");
    let described = nodes[witness as usize - 1].run_ok(&["topic", "describe", "u"]);
    assert!(
        described.contains("unclean.leader.election=off"),
        "{described}"
    );

    let out = nodes[witness as usize - 1].run_ok(&[
        "topic",
        "alter",
        "u",
        "--unclean-leader-election",
        "true",
    ]);
    assert!(out.contains("unclean.leader.election=on"), "{out}");
    wait_placement(&client, witness, "u", "unclean leader", |p| {
        p.0 == Some(follower) && p.2 == [follower]
    })
    .await;
    assert!(
        sluice_tests::all_logs(&nodes).contains("UNCLEAN LEADER ELECTION"),
        "the election is logged"
    );
    let started = Instant::now();
    loop {
        match client
            .request_to(follower, produce_all("u"), one_record("after"))
            .await
        {
            Ok((ResponseBody::Produced(_), _)) => break,
            other => assert!(started.elapsed() < LIMIT, "{other:?}"),
        }
    }
    client.close();
    for n in &mut nodes {
        n.terminate();
    }
}
