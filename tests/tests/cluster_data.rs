//! The data path of a cluster of three `sluice broker` processes: partitions placed over the
//! brokers (one replica each), a producer bootstrapped from one broker, a consumer from
//! another; the SDK sends every produce and fetch to its partition's leader. And a consumer
//! group whose coordinator is killed: retriable errors, recovery once it is back, committed
//! offsets intact.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use sluice_client::{
    Client, ClientConfig, ConsumerConfig, GroupOptions, ProducerConfig, ProducerRecord, TlsConfig,
    TopicConfig,
};
use sluice_storage::{PartitionId, Store, StoreOptions};
use sluice_tests::{BrokerProcess, all_logs, bootstrap_list, partition_leaders, start_cluster};

/// Every wait here is bounded by this.
const LIMIT: Duration = Duration::from_secs(120);

/// Waits (bounded) until `node` lists plugin `name`.
fn wait_plugin(node: &BrokerProcess, name: &str) {
    let started = Instant::now();
    while !node.run_ok(&["plugin", "list"]).contains(name) {
        assert!(started.elapsed() < LIMIT, "node never saw plugin {name}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn client_of(bootstrap: &str, node: &BrokerProcess) -> Client {
    let mut config = ClientConfig::new(bootstrap, TlsConfig::CaFile(node.ca_path()));
    // A dead broker is noticed sooner than with the default 10 s.
    config.connect_timeout = Duration::from_secs(2);
    config.request_timeout = Duration::from_secs(10);
    node.client_with(config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_records_cross_the_cluster_through_the_partition_leaders() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(dir.path(), 3, "");
    nodes[0].run_ok(&["topic", "create", "events", "--partitions", "12"]);
    let leader_of = partition_leaders(&nodes[2], "events");
    assert_eq!(leader_of.len(), 12);
    for id in 1..=3 {
        assert_eq!(
            leader_of.iter().filter(|l| **l == id).count(),
            4,
            "node {id} should lead 4 of 12: {leader_of:?}"
        );
    }

    // Produced through a client that knows only node 1.
    const KEYS: usize = 1_000;
    const RECORDS: usize = 100_000;
    let producer_client = client_of(&nodes[0].addr.to_string(), &nodes[0]).await;
    let producer = producer_client.producer(ProducerConfig::default());
    let mut deliveries = Vec::with_capacity(RECORDS);
    for i in 0..RECORDS {
        let key = format!("key-{}", i % KEYS);
        let value = format!("{key}:{}", i / KEYS);
        deliveries.push(
            producer
                .send(ProducerRecord::new("events", value).with_key(key))
                .await
                .unwrap(),
        );
    }
    let mut partition_of_key: HashMap<String, u32> = HashMap::new();
    for (i, d) in deliveries.into_iter().enumerate() {
        let meta = tokio::time::timeout(LIMIT, d)
            .await
            .expect("delivery in time")
            .unwrap_or_else(|e| panic!("record {i} failed: {e}\n{}", all_logs(&nodes)));
        let key = format!("key-{}", i % KEYS);
        let p = *partition_of_key.entry(key).or_insert(meta.partition);
        assert_eq!(p, meta.partition, "one key, one partition");
    }

    // Consumed through a client that knows only node 2.
    let consumer_client = client_of(&nodes[1].addr.to_string(), &nodes[1]).await;
    let mut consumer = consumer_client.consumer(ConsumerConfig::default());
    consumer.assign_all("events").await.unwrap();
    let mut seen: HashMap<String, Vec<usize>> = HashMap::new();
    let mut next_offset: BTreeMap<u32, u64> = BTreeMap::new();
    let mut total = 0;
    let started = Instant::now();
    while total < RECORDS {
        assert!(
            started.elapsed() < LIMIT,
            "consumed {total} of {RECORDS} in {LIMIT:?}"
        );
        for r in consumer.poll().await.unwrap() {
            let expected = next_offset.entry(r.partition).or_insert(0);
            assert_eq!(
                r.offset, *expected,
                "offsets dense in partition {}",
                r.partition
            );
            *expected += 1;
            let value = String::from_utf8(r.value.unwrap().to_vec()).unwrap();
            let (key, seq) = value.rsplit_once(':').unwrap();
            assert_eq!(
                r.key.as_deref(),
                Some(key.as_bytes()),
                "the key travels with its value"
            );
            assert_eq!(partition_of_key[key], r.partition);
            seen.entry(key.to_owned())
                .or_default()
                .push(seq.parse().unwrap());
            total += 1;
        }
    }
    assert_eq!(total, RECORDS);
    assert_eq!(seen.len(), KEYS);
    for (key, seqs) in &seen {
        let want: Vec<usize> = (0..RECORDS / KEYS).collect();
        assert_eq!(seqs, &want, "{key}: each record once, in order");
    }
    let topic_id = consumer_client
        .metadata(Some(vec!["events".into()]))
        .await
        .unwrap()
        .topics[0]
        .topic_id;
    producer_client.close();
    consumer_client.close();

    // Each broker's store holds only the partitions it leads, with their records.
    for node in &mut nodes {
        assert!(node.terminate(), "clean shutdown");
    }
    for (i, node) in nodes.iter().enumerate() {
        let id = i as u32 + 1;
        let store =
            Store::open(&node.data_dir.join("sluice.redb"), StoreOptions::default()).unwrap();
        let held: BTreeSet<u32> = store
            .partitions()
            .into_iter()
            .filter(|p| p.topic_id == topic_id)
            .map(|p| p.partition)
            .collect();
        let led: BTreeSet<u32> = (0..12).filter(|p| leader_of[*p as usize] == id).collect();
        assert_eq!(held, led, "node {id} stores exactly its partitions");
        for p in led {
            let state = store
                .partition_state(PartitionId {
                    topic_id,
                    partition: p,
                })
                .unwrap();
            assert_eq!(state.log_end, next_offset[&p], "node {id} partition {p}");
        }
        store.shutdown().unwrap();
    }
}

/// Polls `consumer` until `records` holds `want` distinct values or the limit passes.
async fn consume_until(
    consumers: &mut [sluice_client::Consumer],
    seen: &mut BTreeSet<String>,
    want: usize,
) {
    let started = Instant::now();
    while seen.len() < want {
        assert!(
            started.elapsed() < LIMIT,
            "the group consumed {} of {want} in {LIMIT:?}",
            seen.len()
        );
        for c in consumers.iter_mut() {
            match c.poll().await {
                Ok(records) => {
                    for r in records {
                        seen.insert(String::from_utf8(r.value.unwrap().to_vec()).unwrap());
                    }
                }
                Err(e) => assert!(e.is_retriable(), "poll failed for good: {e}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_survives_its_coordinator_restarting_with_offsets_intact() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(dir.path(), 3, "");
    nodes[0].run_ok(&["topic", "create", "work", "--partitions", "6"]);
    let bootstrap = bootstrap_list(&nodes);
    let client = client_of(&bootstrap, &nodes[0]).await;
    let producer = client.producer(ProducerConfig::default());
    let produce = |from: usize, to: usize| {
        let producer = producer.clone();
        async move {
            let mut pending = Vec::new();
            for i in from..to {
                pending.push(
                    producer
                        .send(
                            ProducerRecord::new("work", format!("r{i}")).with_key(format!("k{i}")),
                        )
                        .await
                        .unwrap(),
                );
            }
            for d in pending {
                tokio::time::timeout(LIMIT, d).await.unwrap().unwrap();
            }
        }
    };
    produce(0, 3_000).await;

    // Three members, each with its own client bootstrapped from the whole list.
    let options = GroupOptions {
        session_timeout: Duration::from_secs(30),
        auto_commit_interval: None,
        ..GroupOptions::default()
    };
    let mut members = Vec::new();
    for node in &nodes {
        let c = client_of(&bootstrap, node).await;
        let mut consumer = c.consumer(ConsumerConfig {
            max_wait: Duration::from_millis(200),
            ..ConsumerConfig::default()
        });
        consumer
            .subscribe("g1", &["work"], options.clone())
            .await
            .unwrap();
        members.push(consumer);
    }
    let mut seen = BTreeSet::new();
    consume_until(&mut members, &mut seen, 3_000).await;
    for m in &mut members {
        m.commit().await.unwrap();
    }
    let coordinator = client.find_coordinator("g1").await.unwrap();
    let committed_before: Vec<Option<u64>> = {
        let mut v = Vec::new();
        for p in 0..6 {
            v.push(members[0].committed("work", p).await.unwrap());
        }
        v
    };
    assert_eq!(
        committed_before.iter().map(|o| o.unwrap_or(0)).sum::<u64>(),
        3_000,
        "every record's offset committed: {committed_before:?}"
    );

    // The coordinator dies: group requests fail with errors a retry can cure.
    let killed = coordinator as usize - 1;
    nodes[killed].kill9();
    let e = members[(killed + 1) % 3]
        .committed("work", 0)
        .await
        .expect_err("an offset fetch with the coordinator down");
    assert!(e.is_retriable(), "retriable: {e}");
    println!("with the coordinator (node {coordinator}) down, an offset fetch fails with: {e}");

    // It comes back: the members carry on, their committed offsets intact.
    nodes[killed].restart();
    let started = Instant::now();
    let mut committed_after = Vec::new();
    loop {
        committed_after.clear();
        let mut failed = None;
        for p in 0..6 {
            match members[0].committed("work", p).await {
                Ok(o) => committed_after.push(o),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        match failed {
            None => break,
            Some(e) => {
                assert!(e.is_retriable(), "offset fetch failed for good: {e}");
                assert!(
                    started.elapsed() < LIMIT,
                    "the coordinator did not come back: {e}\n{}",
                    all_logs(&nodes)
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    assert_eq!(committed_after, committed_before, "offsets intact");
    produce(3_000, 4_000).await;
    consume_until(&mut members, &mut seen, 4_000).await;
    let started = Instant::now();
    for m in &mut members {
        loop {
            match m.commit().await {
                Ok(()) => break,
                Err(e) if e.is_retriable() && started.elapsed() < LIMIT => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("commit after recovery: {e}"),
            }
        }
    }
    let mut total = 0;
    for p in 0..6 {
        total += members[0].committed("work", p).await.unwrap().unwrap_or(0);
    }
    assert_eq!(
        total, 4_000,
        "the group committed everything after recovery"
    );
    // Described through any broker, each partition's log end comes from its own leader.
    let described = nodes[0].run_ok(&["group", "describe", "g1"]);
    let (mut log_end, mut lag) = (0u64, 0u64);
    for line in described.lines().filter(|l| l.starts_with("work\t")) {
        let f: Vec<&str> = line.split('\t').collect();
        log_end += f[3].parse::<u64>().unwrap();
        lag += f[4].parse::<u64>().unwrap();
    }
    assert_eq!((log_end, lag), (4_000, 0), "{described}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_runs_across_brokers_with_a_plugin_deployed_through_another() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_cluster(dir.path(), 3, "");
    nodes[0].run_ok(&["topic", "create", "orders", "--partitions", "6"]);
    nodes[0].run_ok(&["topic", "create", "teas", "--partitions", "6"]);
    // Deployed through node 2; the pipeline is created through node 3, and its runners run on
    // every node that leads an input partition.
    nodes[1].run_ok(&["plugin", "deploy", "only-tea", "--builtin", "json-filter"]);
    // A node serves what it has applied: wait until node 3 has applied the deploy (a request
    // through a node that lags a write made through another is not yet read-your-writes).
    wait_plugin(&nodes[2], "only-tea");
    nodes[2].run_ok(&[
        "pipeline",
        "create",
        "tea-orders",
        "--plugin",
        "only-tea",
        "--from",
        "orders",
        "--to",
        "teas",
        "--config",
        "field=drink",
        "--config",
        "op=eq",
        "--config",
        "value=tea",
    ]);
    let input_leaders: BTreeSet<u32> = partition_leaders(&nodes[0], "orders").into_iter().collect();
    let output_leaders: BTreeSet<u32> = partition_leaders(&nodes[0], "teas").into_iter().collect();
    assert_eq!(input_leaders.len(), 3, "inputs led by every broker");
    assert_eq!(output_leaders.len(), 3, "outputs led by every broker");

    const N: usize = 600;
    let bootstrap = bootstrap_list(&nodes);
    let client = client_of(&bootstrap, &nodes[0]).await;
    let producer = client.producer(ProducerConfig::default());
    let mut pending = Vec::new();
    let mut expected = BTreeSet::new();
    for i in 0..N {
        let drink = if i % 3 == 0 { "tea" } else { "coffee" };
        let value = format!("{{\"drink\":\"{drink}\",\"n\":{i}}}");
        if drink == "tea" {
            expected.insert(value.clone());
        }
        pending.push(
            producer
                .send(ProducerRecord::new("orders", value).with_key(format!("c{}", i % 50)))
                .await
                .unwrap(),
        );
    }
    for d in pending {
        tokio::time::timeout(LIMIT, d).await.unwrap().unwrap();
    }

    // The output holds exactly the teas, each once, in order per key (key n grows).
    let mut consumer = client.consumer(ConsumerConfig::default());
    consumer.assign_all("teas").await.unwrap();
    let mut got: Vec<(String, String)> = Vec::new();
    let started = Instant::now();
    while got.len() < expected.len() {
        assert!(
            started.elapsed() < LIMIT,
            "{} of {} outputs in {LIMIT:?}; pipeline: {}\n{}",
            got.len(),
            expected.len(),
            nodes[0].run_ok(&["pipeline", "describe", "tea-orders"]),
            all_logs(&nodes)
        );
        for r in consumer.poll().await.unwrap() {
            let key = String::from_utf8(r.key.unwrap().to_vec()).unwrap();
            got.push((key, String::from_utf8(r.value.unwrap().to_vec()).unwrap()));
        }
    }
    // Nothing more arrives.
    for _ in 0..3 {
        assert!(consumer.poll().await.unwrap().is_empty(), "no extra output");
    }
    let values: BTreeSet<String> = got.iter().map(|(_, v)| v.clone()).collect();
    assert_eq!(values.len(), got.len(), "each output once");
    assert_eq!(values, expected, "exactly the teas");
    let n_of = |v: &str| -> usize {
        v.rsplit_once(':')
            .unwrap()
            .1
            .trim_end_matches('}')
            .parse()
            .unwrap()
    };
    let mut last: HashMap<&str, usize> = HashMap::new();
    for (k, v) in &got {
        let n = n_of(v);
        if let Some(prev) = last.insert(k, n) {
            assert!(n > prev, "key {k}: {n} after {prev}");
        }
    }
    // Runners ran on all three brokers.
    for (i, node) in nodes.iter().enumerate() {
        assert!(
            node.log().contains("pipeline runner started"),
            "node {} ran no runner:\n{}",
            i + 1,
            node.log()
        );
    }
    let described = nodes[1].run_ok(&["pipeline", "describe", "tea-orders"]);
    assert!(described.contains("on node"), "{described}");

    // A partitioner plugin places records on partitions of every broker: the broker that
    // runs it produces those it does not lead to their leaders.
    nodes[2].run_ok(&[
        "plugin",
        "deploy",
        "by-user",
        "--builtin",
        "json-partitioner",
    ]);
    wait_plugin(&nodes[0], "by-user");
    let config = TopicConfig {
        partitioner: Some("by-user".into()),
        partitioner_config: vec![("field".into(), "user".into())],
        ..TopicConfig::default()
    };
    client
        .admin()
        .create_topic("users", 6, config)
        .await
        .unwrap();
    let mut pending = Vec::new();
    for i in 0..120u32 {
        let user = format!("u{}", i % 12);
        let value = format!("{{\"user\":\"{user}\",\"n\":{i}}}");
        pending.push((
            user,
            producer
                .send(ProducerRecord::new("users", value))
                .await
                .unwrap(),
        ));
    }
    let mut partitions_used = BTreeSet::new();
    for (user, d) in pending {
        let m = tokio::time::timeout(LIMIT, d).await.unwrap().unwrap();
        assert_eq!(
            m.partition,
            sluice_proto::partitioner::partition_for_key(user.as_bytes(), 6),
            "{user}"
        );
        partitions_used.insert(m.partition);
    }
    let users_leaders = partition_leaders(&nodes[0], "users");
    let brokers_used: BTreeSet<u32> = partitions_used
        .iter()
        .map(|p| users_leaders[*p as usize])
        .collect();
    assert_eq!(
        brokers_used.len(),
        3,
        "records on every broker: {partitions_used:?}"
    );
    let mut consumer = client.consumer(ConsumerConfig::default());
    consumer.assign_all("users").await.unwrap();
    let mut n = 0;
    let started = Instant::now();
    while n < 120 {
        assert!(started.elapsed() < LIMIT, "read {n} of 120");
        n += consumer.poll().await.unwrap().len();
    }
}
