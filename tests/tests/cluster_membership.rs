//! Membership changes: a fourth broker started with `cluster.join = true` waits to be added,
//! `sluice cluster add-node` makes it a voter (joint consensus by openraft) and it takes
//! partitions; `remove-node` is refused while it holds partitions, and works once it holds
//! none.

use std::time::{Duration, Instant};

use sluice_tests::{
    BrokerProcess, cluster_config, free_udp_port, partition_leaders, start_cluster_nodes,
};

/// Every wait here is bounded by this.
const LIMIT: Duration = Duration::from_secs(120);

/// Rows of `cluster status`: (node, role, state).
fn rows(status: &str) -> Vec<(u32, String, String)> {
    status
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.len() == 8)
                .then(|| Some((f[0].parse().ok()?, f[1].to_string(), f[2].to_string())))
                .flatten()
        })
        .collect()
}

#[test]
fn a_node_joins_takes_partitions_and_leaves_once_it_holds_none() {
    let dir = tempfile::tempdir().unwrap();
    let peers = [free_udp_port(), free_udp_port(), free_udp_port()];
    let ca = dir.path().join("ca");
    let nodes = start_cluster_nodes(dir.path(), &peers, 1..=3, "", &|_| String::new());

    // Node 4 knows the voters, is not one of them, and joins.
    let p4 = free_udp_port();
    let config4 = cluster_config(1, &peers, &ca, "")
        .replace("node_id = 1", "node_id = 4")
        .replace(
            &format!("peer_listen = \"{}\"", peers[0]),
            &format!("peer_listen = \"{p4}\""),
        )
        + "join = true\n";
    let mut node4 = BrokerProcess::spawn_at(
        &dir.path().join("node-4"),
        &config4,
        "127.0.0.1:0".parse().unwrap(),
    );
    let started = Instant::now();
    while !node4.log().contains("waiting to be added to the cluster") {
        assert!(started.elapsed() < LIMIT, "node 4 log:\n{}", node4.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = nodes[1].run_ok(&[
        "cluster",
        "add-node",
        "--node-id",
        "4",
        "--peer-addr",
        &p4.to_string(),
    ]);
    assert!(out.contains("added node 4"), "{out}");
    node4.wait_ready();
    let started = Instant::now();
    loop {
        let status = nodes[0].run_ok(&["cluster", "status"]);
        let r = rows(&status);
        let voters = r
            .iter()
            .filter(|(_, role, _)| role.starts_with("voter"))
            .count();
        let live = r.iter().filter(|(_, _, state)| state == "live").count();
        if voters == 4 && live == 4 {
            break;
        }
        assert!(started.elapsed() < LIMIT, "{status}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // It takes its share of a new topic.
    nodes[0].run_ok(&["topic", "create", "wide", "--partitions", "8"]);
    let leaders = partition_leaders(&nodes[0], "wide");
    assert_eq!(
        leaders.iter().filter(|l| **l == 4).count(),
        2,
        "{leaders:?}"
    );
    // Data through it: a record to each partition, read back.
    let input: String = (0..40).map(|i| format!("k{i}:v{i}\n")).collect();
    node4.run_ok_in(
        &["produce", "wide", "--key-separator", ":"],
        input.as_bytes(),
    );
    let read = nodes[2].run_ok(&[
        "consume",
        "wide",
        "--from-beginning",
        "--format",
        "%v\n",
        "--timeout-ms",
        "2000",
    ]);
    assert_eq!(read.lines().count(), 40, "{read}");

    // Not removable while it holds partitions; the message says which.
    nodes[0].run_fails(
        &["cluster", "remove-node", "--node-id", "4"],
        "still holds 2 partition(s)",
    );
    nodes[0].run_ok(&["topic", "delete", "wide"]);
    let out = nodes[2].run_ok(&["cluster", "remove-node", "--node-id", "4"]);
    assert!(out.contains("removed node 4"), "{out}");
    let status = nodes[0].run_ok(&["cluster", "status"]);
    let r = rows(&status);
    assert!(r.iter().all(|(id, _, _)| *id != 4), "{status}");
    assert_eq!(r.len(), 3, "{status}");
    // New topics go to the three that are left.
    nodes[0].run_ok(&["topic", "create", "narrow", "--partitions", "6"]);
    assert!(
        partition_leaders(&nodes[0], "narrow")
            .iter()
            .all(|l| *l != 4)
    );
    node4.kill9();
}
