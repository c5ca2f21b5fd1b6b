//! Several metadata Raft nodes in one process, joined by the in-process transport, on real
//! redb files in temporary directories. Every wait polls with a deadline (30 s), never a fixed
//! sleep, so the tests do not depend on the machine's speed.

mod common;
use common::wait_for;
use std::collections::{BTreeMap, BTreeSet};

use sluice_metadata::{MetadataCommand, MetadataError};
use sluice_proto::TopicConfig;
use sluice_raft::{
    InProcessRouter, MetadataRaft, MetadataRaftConfig, NodeId, PeerNode, ProposeError, RaftStatus,
    Role,
};
use tempfile::TempDir;

struct Cluster {
    router: InProcessRouter,
    config: MetadataRaftConfig,
    dirs: BTreeMap<NodeId, TempDir>,
    nodes: BTreeMap<NodeId, MetadataRaft>,
}

fn peer(id: NodeId) -> PeerNode {
    PeerNode::new(format!("node-{id}.test:9094"))
}

impl Cluster {
    fn new(config: MetadataRaftConfig) -> Self {
        Cluster {
            router: InProcessRouter::new(),
            config,
            dirs: BTreeMap::new(),
            nodes: BTreeMap::new(),
        }
    }

    /// Starts node `id` from its directory (a new one the first time) and makes it reachable.
    async fn start(&mut self, id: NodeId) {
        let dir = self
            .dirs
            .entry(id)
            .or_insert_with(|| TempDir::new().unwrap());
        let node = MetadataRaft::start(id, dir.path(), self.router.transport(id), &self.config)
            .await
            .unwrap();
        self.router.register(&node);
        self.nodes.insert(id, node);
    }

    /// Three voters, initialized, with a leader every node agrees on.
    async fn three_voters(config: MetadataRaftConfig) -> (Cluster, NodeId) {
        let mut cluster = Cluster::new(config);
        for id in 1..=3 {
            cluster.start(id).await;
        }
        let voters: BTreeMap<_, _> = (1..=3).map(|id| (id, peer(id))).collect();
        cluster.nodes[&1].initialize(voters).await.unwrap();
        let leader = cluster.agreed_leader(None).await;
        (cluster, leader)
    }

    async fn stop(&mut self, id: NodeId) {
        let node = self.nodes.remove(&id).unwrap();
        self.router.deregister(id);
        node.shutdown().await.unwrap();
    }

    fn node(&self, id: NodeId) -> &MetadataRaft {
        &self.nodes[&id]
    }

    async fn status(&self, id: NodeId) -> RaftStatus {
        self.node(id).status().await.unwrap()
    }

    /// Waits until every running node names the same leader (other than `not`), which says it
    /// leads.
    async fn agreed_leader(&self, not: Option<NodeId>) -> NodeId {
        wait_for("a leader all nodes agree on", || async {
            let mut leaders = BTreeSet::new();
            for id in self.nodes.keys() {
                leaders.insert(self.status(*id).await.leader?);
            }
            let leader = *leaders.first()?;
            let ok = leaders.len() == 1
                && Some(leader) != not
                && self.nodes.contains_key(&leader)
                && self.status(leader).await.role == Role::Leader;
            ok.then_some(leader)
        })
        .await
    }

    /// Waits until every running node has applied the same entries and holds the same state
    /// (compared as serialized bytes); returns those bytes.
    async fn converged(&self) -> Vec<u8> {
        wait_for("every node to reach the same state", || async {
            let mut applied = BTreeSet::new();
            let mut states = BTreeSet::new();
            for (id, node) in &self.nodes {
                applied.insert(self.status(*id).await.last_applied);
                states.insert(node.read(|s| postcard::to_allocvec(s).unwrap()));
            }
            (applied.len() == 1 && states.len() == 1).then(|| states.pop_first().unwrap())
        })
        .await
    }
}

fn topic(name: &str, partitions: usize) -> MetadataCommand {
    MetadataCommand::CreateTopic {
        name: name.to_string(),
        config: TopicConfig::default(),
        assignments: vec![vec![1, 2, 3]; partitions],
    }
}

/// The brokers placements refer to, then `n` commands: topics and producer ids in turn.
async fn load(leader: &MetadataRaft, prefix: &str, n: usize) {
    for node_id in 1..=3 {
        let cmd = MetadataCommand::RegisterBroker {
            node_id,
            addr: format!("node-{node_id}.test:9092"),
        };
        leader.propose(cmd).await.unwrap();
    }
    for i in 0..n {
        let cmd = if i % 2 == 0 {
            topic(&format!("{prefix}{i}"), 1 + i % 3)
        } else {
            MetadataCommand::AllocateProducerId
        };
        leader.propose(cmd).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_agree_and_survive_losing_the_leader() {
    let (mut cluster, leader) = Cluster::three_voters(MetadataRaftConfig::default()).await;
    let status = cluster.status(leader).await;
    assert_eq!(status.voters, BTreeSet::from([1, 2, 3]));
    assert!(status.learners.is_empty());

    load(cluster.node(leader), "t", 200).await;
    let state = cluster.converged().await;
    let topics = cluster.node(leader).read(|s| s.topics().count());
    assert_eq!(topics, 100);
    assert_eq!(cluster.node(leader).read(|s| s.next_producer_id()), 100);

    // A follower forwards proposals to the leader, and returns once it has applied the entry
    // itself: the caller reads its own write there.
    let follower = *cluster.nodes.keys().find(|id| **id != leader).unwrap();
    let index = cluster
        .node(follower)
        .propose(topic("x", 1))
        .await
        .expect("a forwarded proposal");
    assert!(cluster.node(follower).read(|s| s.topic("x").is_some()));
    assert!(cluster.node(follower).read(|s| s.applied_index()) >= index);
    // A forwarded command the metadata refuses comes back refused, with the reason.
    assert!(matches!(
        cluster.node(follower).propose(topic("x", 1)).await,
        Err(ProposeError::Refused(MetadataError::TopicExists(_)))
    ));

    // Invalid against the state: refused before it takes a log entry.
    let before = cluster.status(leader).await.last_log_index;
    let refused = cluster.node(leader).propose(topic("t0", 1)).await;
    assert!(matches!(
        refused,
        Err(ProposeError::Refused(MetadataError::TopicExists(_)))
    ));
    assert_eq!(cluster.status(leader).await.last_log_index, before);

    // Two creates of one name race: both pass validation, both enter the log, the second is
    // refused when applied, on every node.
    let node = cluster.node(leader).clone();
    let second = MetadataCommand::CreateTopic {
        name: "race".into(),
        config: retention(60_000),
        assignments: vec![vec![2]],
    };
    let (a, b) = tokio::join!(node.propose(topic("race", 1)), node.propose(second));
    let outcomes = [a.is_ok(), b.is_ok()];
    assert_eq!(outcomes.iter().filter(|ok| **ok).count(), 1, "{a:?} {b:?}");
    let refused = if a.is_err() { a } else { b };
    assert!(matches!(
        refused,
        Err(ProposeError::Refused(MetadataError::TopicExists(_)))
    ));
    let raced = cluster.converged().await;
    assert_ne!(raced, state);
    let expected_config = if outcomes[0] {
        TopicConfig::default()
    } else {
        retention(60_000)
    };
    for node in cluster.nodes.values() {
        let config = node.read(|s| s.topic("race").unwrap().config.clone());
        assert_eq!(config, expected_config);
    }

    // The leader goes; another is elected and proposals carry on.
    cluster.stop(leader).await;
    let new_leader = cluster.agreed_leader(Some(leader)).await;
    assert_ne!(new_leader, leader);
    for i in 0..20 {
        let cmd = topic(&format!("after{i}"), 1);
        cluster.node(new_leader).propose(cmd).await.unwrap();
    }

    // The old leader comes back from its files and catches up.
    cluster.start(leader).await;
    let state = cluster.converged().await;
    let restarted = cluster
        .node(leader)
        .read(|s| postcard::to_allocvec(s).unwrap());
    assert_eq!(restarted, state);
    assert!(cluster.node(leader).read(|s| s.topic("after19").is_some()));
    assert_ne!(cluster.status(leader).await.role, Role::Leader);

    for id in [1, 2, 3] {
        cluster.stop(id).await;
    }
}

fn retention(ms: u64) -> TopicConfig {
    TopicConfig {
        retention_ms: Some(ms),
        ..TopicConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learner_catches_up_from_a_snapshot_and_restarts_from_its_own() {
    let config = MetadataRaftConfig {
        snapshot_every_logs: 20,
        keep_logs_after_snapshot: 5,
        ..MetadataRaftConfig::default()
    };
    let (mut cluster, leader) = Cluster::three_voters(config).await;
    load(cluster.node(leader), "t", 150).await;
    let state = cluster.converged().await;

    // The leader has snapshotted and purged the start of its log, so a new node can only
    // catch up from a snapshot.
    let purged = wait_for("the leader to purge its log", || async {
        let status = cluster.status(leader).await;
        status.purged.filter(|p| *p >= 100)
    })
    .await;
    assert!(cluster.status(leader).await.snapshot >= Some(purged));

    cluster.start(4).await;
    cluster.node(leader).add_learner(4, peer(4)).await.unwrap();
    let caught_up = cluster.converged().await;
    assert_eq!(caught_up, state);
    let learner = cluster.status(4).await;
    assert_eq!(learner.role, Role::Learner);
    assert_eq!(learner.learners, BTreeSet::from([4]));
    assert!(learner.snapshots_installed >= 1, "{learner:?}");
    assert!(learner.purged >= Some(purged), "{learner:?}");

    // Promote it; the group keeps agreeing.
    let voters = BTreeSet::from([1, 2, 3, 4]);
    cluster
        .node(leader)
        .change_membership(voters.clone(), false)
        .await
        .unwrap();
    cluster
        .node(leader)
        .propose(topic("four", 1))
        .await
        .unwrap();
    let state = cluster.converged().await;
    assert_eq!(cluster.status(4).await.voters, voters);

    // A follower restarted cut off from the others rebuilds its state from its own snapshot
    // and the log after it: the entries before the snapshot are no longer in its file.
    let follower = *cluster.nodes.keys().find(|id| **id != leader).unwrap();
    cluster.stop(follower).await;
    cluster.router.isolate(follower);
    cluster.start(follower).await;
    let node = cluster.node(follower).clone();
    let status = wait_for("the restarted node to apply its committed log", || async {
        let bytes = node.read(|s| postcard::to_allocvec(s).unwrap());
        let status = node.status().await.unwrap();
        (bytes == state && status.purged.is_some()).then_some(status)
    })
    .await;
    let own_purged = status.purged.unwrap();
    assert!(own_purged >= 100, "{status:?}");
    assert!(status.snapshot >= Some(own_purged), "{status:?}");
    assert_eq!(status.snapshots_installed, 0);

    cluster.router.reconnect(follower);
    cluster
        .node(leader)
        .propose(topic("five", 1))
        .await
        .unwrap();
    cluster.converged().await;
    for id in [1, 2, 3, 4] {
        cluster.stop(id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_chunks_past_the_limit_are_refused() {
    use openraft::raft::InstallSnapshotRequest;
    use openraft::{SnapshotMeta, Vote};
    use sluice_raft::{RaftReply, RaftRequest};

    let config = MetadataRaftConfig {
        max_snapshot_bytes: 1024,
        ..MetadataRaftConfig::default()
    };
    let mut cluster = Cluster::new(config);
    cluster.start(1).await;
    let chunk = |offset: u64, len: usize| {
        RaftRequest::InstallSnapshot(InstallSnapshotRequest {
            vote: Vote::new_committed(1, 2),
            meta: SnapshotMeta::default(),
            offset,
            data: vec![0; len],
            done: false,
        })
    };
    let node = cluster.node(1).clone();
    // The first chunk fits; a later one would take the snapshot past 1 KiB.
    let reply = node.handle_rpc(chunk(0, 1000)).await;
    assert!(
        matches!(reply, RaftReply::InstallSnapshot(Ok(_))),
        "{reply:?}"
    );
    let reply = node.handle_rpc(chunk(1000, 100)).await;
    assert!(matches!(reply, RaftReply::Refused(_)), "{reply:?}");
    cluster.stop(1).await;
}
