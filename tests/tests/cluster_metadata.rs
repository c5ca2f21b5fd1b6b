//! Three `sluice broker` processes form one cluster: the metadata quorum over QUIC with mutual
//! TLS under a dev cluster CA. A topic created through any node is seen by every node; the
//! metadata leader killed with `kill -9`, the others elect a new one and topic creation works
//! again; the killed node restarts and catches up.

use std::time::{Duration, Instant};

use sluice_tests::{BrokerProcess, all_logs, start_cluster};

/// Every wait here is bounded by this.
const LIMIT: Duration = Duration::from_secs(120);

fn topic_names(broker: &BrokerProcess) -> Vec<String> {
    broker
        .run_ok(&["topic", "list"])
        .lines()
        .filter_map(|l| l.split('\t').next())
        .filter(|n| !n.starts_with("__"))
        .map(str::to_owned)
        .collect()
}

/// Polls (bounded) until `broker` lists exactly `want`.
fn wait_for_topics(broker: &BrokerProcess, want: &[&str]) {
    let started = Instant::now();
    loop {
        let got = topic_names(broker);
        if got == want {
            return;
        }
        assert!(
            started.elapsed() < LIMIT,
            "node never listed {want:?}, has {got:?}; log:\n{}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The metadata leader a node reported when its quorum formed.
fn leader_seen_by(broker: &BrokerProcess) -> u32 {
    let log = broker.log();
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("metadata quorum formed"))
        .unwrap_or_else(|| panic!("no quorum line; log:\n{log}"));
    let at = line.find("leader=").expect("leader field") + "leader=".len();
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn three_brokers_share_the_metadata_and_survive_losing_its_leader() {
    let dir = tempfile::tempdir().unwrap();
    // Started together: each waits at start for a quorum of the others.
    let mut nodes = start_cluster(dir.path(), 3, "");

    // A topic created through node 2 is listed by all three.
    let out = nodes[1].run_cli(&["topic", "create", "orders", "--partitions", "6"], b"");
    assert!(
        out.status.success(),
        "create failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        all_logs(&nodes)
    );
    for node in &nodes {
        wait_for_topics(node, &["orders"]);
    }
    let described = nodes[2].run_ok(&["topic", "describe", "orders"]);
    // Placed over the three brokers: each leads two of the six partitions.
    for id in 1..=3 {
        let leads = described
            .lines()
            .filter(|l| l.split('\t').nth(1) == Some(&id.to_string()))
            .count();
        assert_eq!(leads, 2, "node {id} in:\n{described}");
    }

    // Kill the metadata leader; the others elect another and creation works again.
    let leader = leader_seen_by(&nodes[0]);
    let killed = (leader - 1) as usize;
    nodes[killed].kill9();
    let survivor = (killed + 1) % 3;
    let started = Instant::now();
    loop {
        let out = nodes[survivor].run_cli(&["topic", "create", "after-failover"], b"");
        if out.status.success() {
            break;
        }
        assert!(
            started.elapsed() < LIMIT,
            "no topic creation within {LIMIT:?} after the leader died: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "topic creation worked again {:?} after node {leader} (the metadata leader) was killed",
        started.elapsed()
    );
    for (i, node) in nodes.iter().enumerate() {
        if i != killed {
            wait_for_topics(node, &["after-failover", "orders"]);
        }
    }
    // The killed node comes back with its data and catches up.
    nodes[killed].restart();
    wait_for_topics(&nodes[killed], &["after-failover", "orders"]);
}
