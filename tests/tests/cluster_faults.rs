//! A cluster refuses what would split it or mix it up, each with its reason: configs that make
//! no sense, a voter list that disagrees between nodes, a node holding another cluster's CA;
//! and a broker stopped past its session (`SIGSTOP`) is fenced, then comes back in a new broker
//! epoch, requests naming its old leader epoch refused.

use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_client::{ClientConfig, TlsConfig};
use sluice_proto::{Acks, ErrorCode, ProduceRequest, Request};
use sluice_tests::{
    BrokerProcess, all_logs, bootstrap_list, cluster_config, free_udp_port, start_cluster,
    start_cluster_nodes,
};

/// Every wait here is bounded by this.
const LIMIT: Duration = Duration::from_secs(120);

/// Starts a node that must refuse to start, and returns its log once it has exited non-zero.
fn refused(dir: &std::path::Path, config: &str) -> String {
    let mut node = BrokerProcess::spawn_at(dir, config, "127.0.0.1:0".parse().unwrap());
    let status = node
        .exit_status_within(LIMIT)
        .unwrap_or_else(|| panic!("the node did not exit; log:\n{}", node.log()));
    assert!(!status.success(), "the node exited 0; log:\n{}", node.log());
    node.log()
}

#[test]
fn cluster_configs_that_make_no_sense_are_refused_with_their_reason() {
    let dir = tempfile::tempdir().unwrap();
    let peers = [free_udp_port(), free_udp_port(), free_udp_port()];
    let ca = dir.path().join("ca");
    // A node id that is not among the voters.
    let config = cluster_config(1, &peers, &ca, "").replace("node_id = 1", "node_id = 7");
    let log = refused(&dir.path().join("a"), &config);
    assert!(log.contains("node 7 is not among cluster.voters"), "{log}");
    // No cluster id.
    let config = cluster_config(1, &peers, &ca, "").replace("cluster_id = \"test-cluster\"\n", "");
    let log = refused(&dir.path().join("b"), &config);
    assert!(
        log.contains("a node of a cluster needs cluster_id"),
        "{log}"
    );
    // A voter named twice.
    let config = cluster_config(1, &peers, &ca, "").replace(
        &format!("\"2@{}\"", peers[1]),
        &format!("\"1@{}\"", peers[1]),
    );
    let log = refused(&dir.path().join("c"), &config);
    assert!(log.contains("names a node twice"), "{log}");
}

#[test]
fn a_node_whose_voter_list_disagrees_is_refused_and_the_cluster_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let peers = [free_udp_port(), free_udp_port(), free_udp_port()];
    let ca = dir.path().join("ca");
    let good = start_cluster_nodes(dir.path(), &peers, 1..=2, "", &|_| String::new());
    // Node 3 believes in a fourth voter.
    let mut wrong_peers = peers.to_vec();
    wrong_peers.push(free_udp_port());
    let log = refused(
        &dir.path().join("node-3"),
        &cluster_config(3, &wrong_peers, &ca, ""),
    );
    assert!(
        log.contains("every node of a cluster needs the same cluster_id and cluster.voters"),
        "{log}"
    );
    // The two that agree serve on.
    good[0].run_ok(&["topic", "create", "still-here"]);
    let topics = good[1].run_ok(&["topic", "list"]);
    assert!(topics.contains("still-here"), "{topics}");
}

#[test]
fn a_node_with_another_clusters_ca_never_joins() {
    let dir = tempfile::tempdir().unwrap();
    let peers = [free_udp_port(), free_udp_port(), free_udp_port()];
    let good = start_cluster_nodes(dir.path(), &peers, 1..=2, "", &|_| String::new());
    // Node 3 has the right config but certificates from a CA of its own.
    let intruder = BrokerProcess::spawn_at(
        &dir.path().join("node-3"),
        &cluster_config(3, &peers, &dir.path().join("other-ca"), ""),
        "127.0.0.1:0".parse().unwrap(),
    );
    let started = Instant::now();
    loop {
        let log = intruder.log();
        if log.contains("waiting for peers") && log.contains("certificate") {
            break;
        }
        assert!(
            started.elapsed() < LIMIT,
            "node 3 does not say the peers refuse its certificate; log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // It never registered: the cluster knows two brokers.
    let status = good[0].run_ok(&["cluster", "status"]);
    let registered = status
        .lines()
        .filter(|l| l.split('\t').nth(2) == Some("live"))
        .count();
    assert_eq!(registered, 2, "{status}");
    assert!(!intruder.data_dir.join("broker.addr").exists());
}

/// The `cluster status` row of `node`: (state, broker epoch).
fn node_state(status: &str, node: u32) -> Option<(String, u64)> {
    status.lines().find_map(|l| {
        let f: Vec<&str> = l.split('\t').collect();
        (f.len() == 8 && f[0] == node.to_string())
            .then(|| (f[2].to_string(), f[3].parse().unwrap_or(0)))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_stopped_past_its_session_is_fenced_and_returns_in_a_new_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_cluster(dir.path(), 3, "");
    nodes[0].run_ok(&["topic", "create", "t", "--partitions", "3"]);
    let status = nodes[0].run_ok(&["cluster", "status"]);
    let controller: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("controller "))
        .and_then(|rest| rest.split('\t').next())
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{status}"));
    // Stop a broker that is not the metadata leader.
    let victim = (1..=3).find(|id| *id != controller).unwrap();
    let other = (1..=3)
        .find(|id| *id != controller && *id != victim)
        .unwrap();
    let (_, epoch_before) = node_state(&status, victim).unwrap();
    let ask = &nodes[other as usize - 1];
    let led_by_victim = |describe: &str| -> Vec<(u32, Option<u32>, u32)> {
        describe
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                let p: u32 = f.first()?.parse().ok()?;
                Some((p, f.get(1)?.parse().ok(), f.get(2)?.parse().ok()?))
            })
            .collect()
    };
    let before = led_by_victim(&ask.run_ok(&["topic", "describe", "t"]));
    let (partition, _, old_epoch) = *before
        .iter()
        .find(|(_, l, _)| *l == Some(victim))
        .expect("the victim leads a partition");

    nodes[victim as usize - 1].signal("STOP");
    let started = Instant::now();
    loop {
        let s = ask.run_ok(&["cluster", "status"]);
        if node_state(&s, victim).is_some_and(|(state, _)| state == "fenced") {
            break;
        }
        assert!(
            started.elapsed() < LIMIT,
            "node {victim} never fenced:\n{s}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let fenced_after = started.elapsed();
    let during = led_by_victim(&ask.run_ok(&["topic", "describe", "t"]));
    assert_eq!(
        during[partition as usize].1, None,
        "leaderless while fenced"
    );
    assert!(during[partition as usize].2 > old_epoch);

    nodes[victim as usize - 1].signal("CONT");
    let started = Instant::now();
    let epoch_after = loop {
        let s = ask.run_ok(&["cluster", "status"]);
        if let Some((state, epoch)) = node_state(&s, victim)
            && state == "live"
            && epoch > epoch_before
        {
            break epoch;
        }
        assert!(
            started.elapsed() < LIMIT,
            "node {victim} never came back in a new epoch:\n{s}\n{}",
            all_logs(&nodes)
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let after = led_by_victim(&ask.run_ok(&["topic", "describe", "t"]));
    assert_eq!(after[partition as usize].1, Some(victim), "it leads again");
    let new_epoch = after[partition as usize].2;
    assert!(
        new_epoch > during[partition as usize].2,
        "in a new leader epoch"
    );
    println!(
        "node {victim} fenced {fenced_after:?} after SIGSTOP; back in broker epoch {epoch_after} \
         (was {epoch_before}), leader epoch {old_epoch} -> {new_epoch}"
    );

    // A request naming the leader epoch of its earlier life is refused; the current one works.
    let client = nodes[0]
        .client_with(ClientConfig::new(
            bootstrap_list(&nodes),
            TlsConfig::CaFile(nodes[0].ca_path()),
        ))
        .await;
    let batch = {
        let mut b = sluice_proto::BatchBuilder::new(sluice_proto::Compression::None);
        b.push(&sluice_proto::Record {
            key: None,
            value: Some(Bytes::from_static(b"v")),
            headers: vec![],
            timestamp: 0,
        });
        Bytes::from(b.finish(-1, -1, -1).unwrap())
    };
    let produce = |epoch: u32| {
        Request::Produce(ProduceRequest {
            topic: "t".into(),
            partition,
            acks: Acks::All,
            timeout_ms: 10_000,
            leader_epoch: Some(epoch),
        })
    };
    let e = client
        .request_to(victim, produce(old_epoch), batch.clone())
        .await
        .expect_err("the old leader epoch is refused");
    assert_eq!(e.wire_code(), Some(ErrorCode::FencedLeaderEpoch), "{e}");
    client
        .request_to(victim, produce(new_epoch), batch)
        .await
        .unwrap();
}
