//! Three `sluice broker` processes form one cluster: the metadata quorum over QUIC with mutual
//! TLS under a dev cluster CA. A topic created through any node is seen by every node. The
//! metadata leader killed with `kill -9` under a stream of topic creates: the others elect a new
//! leader within seconds and creation goes on, no topic is half-created, every node agrees on
//! the topic list, and the killed node, restarted far behind, catches up by installing a
//! snapshot.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sluice_client::{ClientConfig, ClientError, ErrorCode, TlsConfig, TopicConfig};
use sluice_tests::{BrokerProcess, all_logs, bootstrap_list, start_cluster_with};

/// Every wait here is bounded by this.
const LIMIT: Duration = Duration::from_secs(120);

fn topic_names(broker: &BrokerProcess) -> BTreeSet<String> {
    broker
        .run_ok(&["topic", "list"])
        .lines()
        .filter_map(|l| l.split('\t').next())
        .filter(|n| !n.starts_with("__"))
        .map(str::to_owned)
        .collect()
}

/// Polls (bounded) until `broker` lists exactly `want`.
fn wait_for_topics(broker: &BrokerProcess, want: &BTreeSet<String>) {
    let started = Instant::now();
    loop {
        let got = topic_names(broker);
        if &got == want {
            return;
        }
        assert!(
            started.elapsed() < LIMIT,
            "node never listed the {} topics, has {} (missing {:?}); log:\n{}",
            want.len(),
            got.len(),
            want.difference(&got).take(5).collect::<Vec<_>>(),
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The metadata leader, from `cluster status` on `node`.
fn controller(node: &BrokerProcess) -> Option<u32> {
    node.run_ok(&["cluster", "status"])
        .lines()
        .find_map(|l| l.strip_prefix("controller "))
        .and_then(|rest| rest.split('\t').next())
        .and_then(|c| c.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metadata_leader_killed_under_a_stream_of_creates() {
    let dir = tempfile::tempdir().unwrap();
    // Snapshots every 50 entries (5 kept behind), so a node that misses more catches up by
    // installing one.
    let mut nodes = start_cluster_with(dir.path(), 3, "", "snapshot_every_entries = 50\n");

    // A topic created through node 2 is listed by all three, placed over the three.
    let out = nodes[1].run_cli(&["topic", "create", "orders", "--partitions", "6"], b"");
    assert!(
        out.status.success(),
        "create failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        all_logs(&nodes)
    );
    let orders: BTreeSet<String> = ["orders".to_string()].into();
    for node in &nodes {
        wait_for_topics(node, &orders);
    }
    let described = nodes[2].run_ok(&["topic", "describe", "orders"]);
    for id in 1..=3 {
        let leads = described
            .lines()
            .filter(|l| l.split('\t').nth(1) == Some(&id.to_string()))
            .count();
        assert_eq!(leads, 2, "node {id} in:\n{described}");
    }

    // A stream of creates through a client that knows every node.
    let client = nodes[0]
        .client_with(ClientConfig {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(3),
            ..ClientConfig::new(
                bootstrap_list(&nodes),
                TlsConfig::CaFile(nodes[0].ca_path()),
            )
        })
        .await;
    let stop = Arc::new(AtomicBool::new(false));
    let created = Arc::new(AtomicU64::new(0));
    let creator = {
        let (client, stop, created) = (client.clone(), stop.clone(), created.clone());
        tokio::spawn(async move {
            let admin = client.admin();
            let mut names = BTreeSet::new();
            let mut i = 0u64;
            let mut last_ok = Instant::now();
            let mut longest_gap = Duration::ZERO;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("s-{i}");
                match admin.create_topic(&name, 2, TopicConfig::default()).await {
                    Ok(_) => {}
                    // An attempt whose answer was lost had created it.
                    Err(ClientError::Broker(e)) if e.code == ErrorCode::TopicAlreadyExists => {}
                    Err(e) if e.is_retriable() => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    Err(e) => panic!("create {name}: {e}"),
                }
                longest_gap = longest_gap.max(last_ok.elapsed());
                last_ok = Instant::now();
                names.insert(name);
                created.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            (names, longest_gap)
        })
    };
    let wait_created = |n: u64| {
        let created = created.clone();
        async move {
            let started = Instant::now();
            while created.load(Ordering::Relaxed) < n {
                assert!(started.elapsed() < LIMIT, "creates stalled");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_created(20).await;

    let leader = controller(&nodes[0]).expect("a metadata leader");
    let killed = (leader - 1) as usize;
    let before_kill = created.load(Ordering::Relaxed);
    nodes[killed].kill9();
    let killed_at = Instant::now();
    // Well past the snapshot interval while it is down.
    wait_created(before_kill + 150).await;
    stop.store(true, Ordering::Relaxed);
    let (names, longest_gap) = creator.await.unwrap();
    println!(
        "{} topics created under the stream; the longest pause between two creates was \
         {longest_gap:?}; node {leader}, the metadata leader, was killed {:?} before the stream \
         stopped",
        names.len(),
        killed_at.elapsed()
    );
    assert!(longest_gap < Duration::from_secs(30), "{longest_gap:?}");

    // The survivors agree, and nothing is half-created: every partition of every topic has
    // a leader among the live nodes and its replica is there.
    let mut want = names.clone();
    want.insert("orders".into());
    for (i, node) in nodes.iter().enumerate() {
        if i != killed {
            wait_for_topics(node, &want);
        }
    }
    let survivor = (killed + 1) % 3;
    for name in names.iter().step_by(25) {
        let d = nodes[survivor].run_ok(&["topic", "describe", name]);
        let rows: Vec<&str> = d
            .lines()
            .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
            .collect();
        assert_eq!(rows.len(), 2, "{d}");
    }

    // The killed node comes back with its data and catches up, by snapshot.
    nodes[killed].restart();
    wait_for_topics(&nodes[killed], &want);
    let log = nodes[killed].log();
    assert!(
        log.contains("metadata snapshot installed from the leader"),
        "node {leader} caught up without a snapshot; log:\n{log}"
    );
    // And serves its partitions again: a record to every partition of a topic, read back.
    let input: String = (0..20).map(|i| format!("k{i}:v{i}\n")).collect();
    nodes[killed].run_ok_in(
        &["produce", "orders", "--key-separator", ":"],
        input.as_bytes(),
    );
    let read = nodes[survivor].run_ok(&[
        "consume",
        "orders",
        "--from-beginning",
        "--timeout-ms",
        "2000",
    ]);
    assert_eq!(read.lines().count(), 20, "{read}");
}
