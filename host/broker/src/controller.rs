//! The metadata controller: proposes commands to the metadata log and reads the state every
//! node reaches by applying it.
//!
//! The log is replicated by Raft (`sluice-raft`, its own file `DATA_DIR/raft.redb`); the state
//! machine is `sluice-metadata`'s. Without `[cluster]` in its config a broker is a cluster of
//! one: the only voter, and so its own metadata leader. With it, the configured voters form the
//! group over the peer endpoint (`peers.rs`); a follower forwards proposals to the leader. A data dir written before the Raft log existed
//! keeps its metadata log in the store; it is proposed again, entry by entry, into the Raft log
//! once, at the first start with Raft.

use std::collections::BTreeMap;
use std::path::Path;
use std::path::PathBuf;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use sluice_metadata::{MetadataCommand, MetadataError, MetadataState, decode_command};
use sluice_raft::{
    Identity, MetadataRaft, MetadataRaftConfig, NodeId, PeerNode, PeerServerConfig, QuicTransport,
    QuicTransportConfig, RaftReply, RaftRequest, RaftStatus, RaftTransport, TransportError,
};
use sluice_storage::Store;

use crate::BrokerError;
use crate::config::{BrokerConfig, ClusterSettings};

/// Key in the store's metadata table marking that the store's own (pre-Raft) metadata log was
/// proposed into the Raft log.
const IMPORTED_KEY: &str = "metadata_log_imported_to_raft";

/// How long start-up waits for this node to lead its one-node metadata group.
const LEADERSHIP_WAIT: Duration = Duration::from_secs(30);

/// How long one attempt at a proposal waits for its commit before it is tried again.
const PROPOSE_ATTEMPT: Duration = Duration::from_secs(5);

/// How long a proposal in a cluster waits for a metadata leader to take it.
const PROPOSE_WAIT: Duration = Duration::from_secs(30);

/// How long a cluster node waits at start for the voters to elect a metadata leader.
const CLUSTER_WAIT: Duration = Duration::from_secs(120);

/// How long a joining node waits to be added to the cluster.
const JOIN_WAIT: Duration = Duration::from_secs(600);

/// A joining node (`cluster.join`): waits (bounded) until a leader has added it and it knows
/// the leader, saying what to run meanwhile.
async fn wait_to_be_added(
    raft: &MetadataRaft,
    node_id: u32,
    cluster: &ClusterSettings,
) -> Result<(), BrokerError> {
    let peer = cluster
        .peer_advertised_addr
        .clone()
        .unwrap_or_else(|| cluster.peer_listen.to_string());
    let started = Instant::now();
    let mut said: Option<Instant> = None;
    loop {
        let status = raft
            .status()
            .await
            .map_err(|e| BrokerError::Metadata(e.to_string()))?;
        let member = status.voters.contains(&NodeId::from(node_id))
            || status.learners.contains(&NodeId::from(node_id));
        if member && let Some(leader) = status.leader {
            tracing::info!(
                node_id,
                leader,
                term = status.term,
                "joined the metadata quorum"
            );
            return Ok(());
        }
        if said.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
            tracing::info!(
                node_id,
                "waiting to be added to the cluster: run `sluice cluster add-node --node-id \
                 {node_id} --peer-addr {peer}` against it"
            );
            said = Some(Instant::now());
        }
        if started.elapsed() > JOIN_WAIT {
            return Err(BrokerError::Metadata(format!(
                "node {node_id} was not added to the cluster within {JOIN_WAIT:?}; run `sluice \
                 cluster add-node --node-id {node_id} --peer-addr {peer}`, then start it again"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How long one identity question to a peer may take.
const IDENTIFY_WAIT: Duration = Duration::from_secs(2);

/// Before a new node forms the metadata group: asks the other voters who they are until a
/// majority (this node included) answered with the same cluster id and voter list, waiting
/// (bounded) and saying whom it waits for. A peer configured differently is an error: nodes
/// that disagree would form two groups, or one with the wrong members.
async fn agree_with_peers(
    raft: &MetadataRaft,
    node_id: u32,
    mine: &Identity,
) -> Result<(), BrokerError> {
    let me = NodeId::from(node_id);
    let others: Vec<&(NodeId, String)> = mine.voters.iter().filter(|(id, _)| *id != me).collect();
    let needed = mine.voters.len() / 2;
    let mut agreed: std::collections::BTreeSet<NodeId> = std::collections::BTreeSet::new();
    // Why each peer did not answer last time, for the log.
    let mut why: BTreeMap<NodeId, String> = BTreeMap::new();
    let started = Instant::now();
    let mut said = Instant::now();
    loop {
        let pending: Vec<&(NodeId, String)> = others
            .iter()
            .copied()
            .filter(|(id, _)| !agreed.contains(id))
            .collect();
        for (id, addr) in pending {
            let asked = tokio::time::timeout(
                IDENTIFY_WAIT,
                raft.identify(*id, PeerNode::new(addr.clone())),
            )
            .await;
            match asked {
                Ok(Ok(Some(theirs))) if theirs == *mine => {
                    agreed.insert(*id);
                }
                Ok(Ok(Some(theirs))) => {
                    return Err(BrokerError::Config(format!(
                        "node {id} (peer address {addr}) is configured for cluster {:?} with \
                         voters {:?}, but this node for cluster {:?} with voters {:?}: every \
                         node of a cluster needs the same cluster_id and cluster.voters",
                        theirs.cluster_id, theirs.voters, mine.cluster_id, mine.voters
                    )));
                }
                // Not up yet, unreachable, or still starting: ask again.
                Ok(Ok(None)) => {
                    why.insert(*id, "starting".into());
                }
                Ok(Err(e)) => {
                    why.insert(*id, e.to_string());
                }
                Err(_) => {
                    why.insert(*id, format!("no answer within {IDENTIFY_WAIT:?}"));
                }
            }
        }
        if agreed.len() >= needed {
            return Ok(());
        }
        let waiting: Vec<String> = others
            .iter()
            .filter(|(id, _)| !agreed.contains(id))
            .map(|(id, addr)| {
                let cause = why.get(id).map_or("", String::as_str);
                format!("node {id} at {addr} ({cause})")
            })
            .collect();
        if said.elapsed() > Duration::from_secs(5) {
            tracing::info!(
                node_id,
                agreed = agreed.len(),
                needed,
                waiting = %waiting.join(", "),
                "waiting for peers to answer on their peer addresses before forming the metadata group"
            );
            said = Instant::now();
        }
        if started.elapsed() > CLUSTER_WAIT {
            return Err(BrokerError::Metadata(format!(
                "only {} of the {needed} other voters needed answered within {CLUSTER_WAIT:?} \
                 (still waiting for {}): are they running, and reachable on their peer \
                 addresses?",
                agreed.len(),
                waiting.join(", ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A stopped Raft node (a write failed: the disk is full, say) is reopened at most this often.
const REOPEN_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct MetadataController {
    /// The running Raft node. Replaced when it stopped on a storage error (a full disk): the
    /// next proposal after [`REOPEN_INTERVAL`] opens it again from its file.
    raft: RwLock<MetadataRaft>,
    node_id: u32,
    data_dir: PathBuf,
    /// When the node was last (re)opened; reopening is tried at most once per interval.
    opened_at: Mutex<Instant>,
    /// The peer endpoint, in a cluster; `None` for a cluster of one.
    peer_endpoint: Option<quinn::Endpoint>,
    /// Serialises this node's proposals, so [`MetadataController::propose_then`] reads the
    /// state exactly as its own command left it. A `std` mutex: proposals run on blocking
    /// threads, which wait for the commit while holding it; no async task ever takes it.
    proposing: Mutex<()>,
    runtime: tokio::runtime::Handle,
}

/// The transport of a node without peers: there is nobody to send to.
struct NoPeers;

impl RaftTransport for NoPeers {
    async fn call(
        &self,
        target: NodeId,
        _peer: &PeerNode,
        _request: RaftRequest,
    ) -> Result<RaftReply, TransportError> {
        Err(TransportError::Unreachable(format!(
            "node {target}: this broker has no peers configured"
        )))
    }
}

impl MetadataController {
    /// Starts the metadata Raft node of `node_id` in `data_dir`, makes it the single voter of
    /// a new group (a restarted node already is), waits until it leads, and brings over a
    /// pre-Raft metadata log from `store` once.
    pub async fn open(config: &BrokerConfig, store: &Store) -> Result<Self, BrokerError> {
        let (node_id, data_dir) = (config.node_id, config.data_dir.as_path());
        let (raft, peer_endpoint) = match &config.cluster {
            None => (start_node(node_id, data_dir).await?, None),
            Some(cluster) => {
                let cluster_id = config.cluster_id.clone().unwrap_or_default();
                let (raft, endpoint) = start_cluster_node(
                    node_id,
                    data_dir,
                    &cluster_id,
                    cluster,
                    config.quic_congestion,
                )
                .await?;
                (raft, Some(endpoint))
            }
        };
        let controller = MetadataController {
            raft: RwLock::new(raft),
            node_id,
            data_dir: data_dir.to_owned(),
            opened_at: Mutex::new(Instant::now()),
            peer_endpoint,
            proposing: Mutex::new(()),
            runtime: tokio::runtime::Handle::current(),
        };
        if config.cluster.is_none() {
            controller.import_store_log(store).await?;
        }
        Ok(controller)
    }

    /// The current Raft node (a cheap clone).
    fn node(&self) -> MetadataRaft {
        self.raft.read().expect("raft lock poisoned").clone()
    }

    /// Proposes through the current node; if it has stopped, opens it again (at most once per
    /// [`REOPEN_INTERVAL`]) and proposes once more.
    async fn propose_raft(&self, cmd: MetadataCommand) -> Result<u64, ProposeError> {
        // No leader known, or it could not be reached (an election, a leader that just died):
        // wait for the group to settle, a bounded time, as a client would retry.
        let started = Instant::now();
        let mut pause = Duration::from_millis(20);
        loop {
            match self.propose_once(cmd.clone()).await {
                Err(ProposeError::Unavailable(why))
                    if self.peer_endpoint.is_some() && started.elapsed() < PROPOSE_WAIT =>
                {
                    tracing::debug!(cause = %why, "no metadata leader to take the proposal yet");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                other => return other,
            }
        }
    }

    async fn propose_once(&self, cmd: MetadataCommand) -> Result<u64, ProposeError> {
        // A node that believes it leads but does not (a restarted old leader, before it hears of
        // the newer term) takes a proposal it can never commit: give up on it and ask again,
        // by then through the real leader. (Should the first attempt commit after all, the
        // retry is refused or changes nothing: every command is validated against the state.)
        // A node alone always leads: no limit there.
        let limit = if self.peer_endpoint.is_some() {
            PROPOSE_ATTEMPT
        } else {
            Duration::MAX
        };
        let node = self.node();
        let attempt = tokio::time::timeout(limit, node.propose(cmd.clone()));
        let Ok(outcome) = attempt.await else {
            return Err(ProposeError::Unavailable(format!(
                "the proposal was not committed within {PROPOSE_ATTEMPT:?}"
            )));
        };
        match outcome {
            // In a cluster the peers' transport comes with the node: restart the broker.
            Err(sluice_raft::ProposeError::Stopped(stopped)) if self.peer_endpoint.is_none() => {
                let due = {
                    let mut at = self.opened_at.lock().expect("reopen lock poisoned");
                    if at.elapsed() < REOPEN_INTERVAL {
                        false
                    } else {
                        *at = Instant::now();
                        true
                    }
                };
                if !due {
                    return Err(ProposeError::Unavailable(stopped.to_string()));
                }
                tracing::warn!(cause = %stopped, "metadata log stopped; opening it again");
                let _ = self.node().shutdown().await;
                let node = start_node(self.node_id, &self.data_dir)
                    .await
                    .map_err(|e| {
                        ProposeError::Unavailable(format!("{stopped}; reopening failed: {e}"))
                    })?;
                *self.raft.write().expect("raft lock poisoned") = node.clone();
                Ok(node.propose(cmd).await?)
            }
            other => Ok(other?),
        }
    }
}

/// Starts node `node_id` of a configured cluster: its peer endpoint (listening and dialling
/// under mutual TLS), the Raft node over it, the peer listener; initializes the group with the
/// configured voters (the same on every node; a node with a log already ignores it) and waits
/// until some node leads, saying what it waits for.
async fn start_cluster_node(
    node_id: u32,
    data_dir: &Path,
    cluster_id: &str,
    cluster: &ClusterSettings,
    congestion: sluice_client::QuicCongestion,
) -> Result<(MetadataRaft, quinn::Endpoint), BrokerError> {
    let voters = cluster.voter_addrs()?;
    let mut identity = Identity {
        cluster_id: cluster_id.to_owned(),
        voters: voters
            .iter()
            .map(|(id, addr)| (NodeId::from(*id), addr.clone()))
            .collect(),
    };
    identity.voters.sort();
    let (endpoint, client) = crate::peers::peer_endpoint(node_id, cluster, congestion)?;
    let transport_config = QuicTransportConfig {
        routes: cluster
            .peer_route_addrs()?
            .into_iter()
            .map(|(id, addr)| (NodeId::from(id), addr))
            .collect(),
        ..QuicTransportConfig::default()
    };
    let transport = QuicTransport::new(endpoint.clone(), client, transport_config);
    let raft_config = MetadataRaftConfig {
        snapshot_every_logs: cluster.snapshot_every_entries,
        keep_logs_after_snapshot: (cluster.snapshot_every_entries / 10).clamp(1, 100),
        ..MetadataRaftConfig::default()
    };
    let raft = MetadataRaft::start(NodeId::from(node_id), data_dir, transport, &raft_config)
        .await
        .map_err(|e| BrokerError::Metadata(format!("starting the metadata log: {e}")))?;
    raft.set_identity(identity.clone());
    tokio::spawn(sluice_raft::serve_peers(
        endpoint.clone(),
        raft.clone(),
        PeerServerConfig::default(),
    ));
    if cluster.join {
        wait_to_be_added(&raft, node_id, cluster).await?;
        return Ok((raft, endpoint));
    }
    if !raft.is_initialized() {
        agree_with_peers(&raft, node_id, &identity).await?;
    }
    let members: BTreeMap<NodeId, PeerNode> = voters
        .iter()
        .map(|(id, addr)| (NodeId::from(*id), PeerNode::new(addr.clone())))
        .collect();
    raft.initialize(members)
        .await
        .map_err(|e| BrokerError::Metadata(format!("initializing the metadata log: {e}")))?;
    let started = Instant::now();
    let mut said = Instant::now();
    loop {
        let status = raft
            .status()
            .await
            .map_err(|e| BrokerError::Metadata(e.to_string()))?;
        if let Some(leader) = status.leader {
            tracing::info!(
                node_id,
                leader,
                term = status.term,
                "metadata quorum formed"
            );
            break;
        }
        if said.elapsed() > Duration::from_secs(5) {
            tracing::info!(node_id, voters = ?cluster.voters, "waiting for a quorum of the voters to elect a metadata leader");
            said = Instant::now();
        }
        if started.elapsed() > CLUSTER_WAIT {
            return Err(BrokerError::Metadata(format!(
                "no metadata leader among the voters {:?} within {CLUSTER_WAIT:?}: are a \
                 majority of them running and reachable on their peer addresses?",
                cluster.voters
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((raft, endpoint))
}

/// Starts the metadata Raft node of `node_id` from `data_dir`, makes it the single voter of a
/// new group (a restarted node already is one) and waits until it leads.
async fn start_node(node_id: u32, data_dir: &Path) -> Result<MetadataRaft, BrokerError> {
    {
        let raft = MetadataRaft::start(
            NodeId::from(node_id),
            data_dir,
            NoPeers,
            &MetadataRaftConfig::default(),
        )
        .await
        .map_err(|e| BrokerError::Metadata(format!("starting the metadata log: {e}")))?;
        raft.initialize(BTreeMap::from([(
            NodeId::from(node_id),
            PeerNode::new(String::new()),
        )]))
        .await
        .map_err(|e| BrokerError::Metadata(format!("initializing the metadata log: {e}")))?;
        let started = Instant::now();
        loop {
            let status = raft
                .status()
                .await
                .map_err(|e| BrokerError::Metadata(e.to_string()))?;
            if status.leader == Some(NodeId::from(node_id)) {
                break;
            }
            if started.elapsed() > LEADERSHIP_WAIT {
                return Err(BrokerError::Metadata(format!(
                    "this node did not become the metadata leader within {LEADERSHIP_WAIT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(raft)
    }
}

impl MetadataController {
    /// Proposes the entries of a pre-Raft metadata log, in order, into the Raft log. Entries
    /// the state machine refuses were refused when they were first appended too.
    async fn import_store_log(&self, store: &Store) -> Result<(), BrokerError> {
        if store.meta_get(IMPORTED_KEY)?.is_some() {
            return Ok(());
        }
        let entries = store.meta_entries()?;
        if !entries.is_empty() && self.read(MetadataState::applied_index) == 0 {
            tracing::info!(
                entries = entries.len(),
                "bringing the store's metadata log into the Raft log"
            );
            for (index, bytes) in &entries {
                let cmd = decode_command(bytes).map_err(|e| {
                    BrokerError::Metadata(format!("metadata log entry {index} is unreadable: {e}"))
                })?;
                match self.propose_raft(cmd).await {
                    Ok(_) | Err(ProposeError::Refused(_)) => {}
                    Err(e) => {
                        return Err(BrokerError::Metadata(format!(
                            "bringing metadata log entry {index} into the Raft log: {e}"
                        )));
                    }
                }
            }
        }
        store.meta_put(IMPORTED_KEY, b"1")?;
        Ok(())
    }

    /// Validates `cmd`, commits it to the metadata log and applies it. Blocking: call it from
    /// a blocking thread.
    pub fn propose(&self, cmd: MetadataCommand) -> Result<(), ProposeError> {
        self.propose_then(cmd, |_, _| ())
    }

    /// Like [`MetadataController::propose`], from async code.
    pub async fn propose_async(&self, cmd: MetadataCommand) -> Result<(), ProposeError> {
        self.propose_raft(cmd).await.map(|_| ())
    }

    /// Like [`MetadataController::propose`], then runs `f` on the state with the log index the
    /// command was applied at: how a caller learns what its command did (the producer id it
    /// allocated: `producer_id_allocated_at(index)`). In a cluster, other nodes' entries may
    /// have applied after it, so `f` must look the result up by name or index. Blocking.
    pub fn propose_then<R>(
        &self,
        cmd: MetadataCommand,
        f: impl FnOnce(&MetadataState, u64) -> R,
    ) -> Result<R, ProposeError> {
        let _one_at_a_time = self.proposing.lock().expect("proposal lock poisoned");
        let index = self.runtime.block_on(self.propose_raft(cmd))?;
        Ok(self.read(|s| f(s, index)))
    }

    /// Runs `f` on the current state.
    pub fn read<R>(&self, f: impl FnOnce(&MetadataState) -> R) -> R {
        // On every request's path: no clone of the node, only its lock.
        self.raft.read().expect("raft lock poisoned").read(f)
    }

    /// Adds node `id` (reachable at `peer_addr`) as a voter: a learner first, caught up, then
    /// the voters change by joint consensus. Only on the metadata leader.
    pub async fn add_voter(&self, id: u32, peer_addr: &str) -> Result<(), MembershipChange> {
        let raft = self.node();
        raft.add_learner(NodeId::from(id), PeerNode::new(peer_addr))
            .await?;
        let mut voters = raft
            .status()
            .await
            .map_err(sluice_raft::MembershipError::from)?
            .voters;
        voters.insert(NodeId::from(id));
        raft.change_membership(voters, false).await?;
        Ok(())
    }

    /// Removes node `id` from the voters and learners. Only on the metadata leader.
    pub async fn remove_voter(&self, id: u32) -> Result<(), MembershipChange> {
        let raft = self.node();
        let status = raft
            .status()
            .await
            .map_err(sluice_raft::MembershipError::from)?;
        let mut voters = status.voters;
        voters.remove(&NodeId::from(id));
        if voters.is_empty() {
            return Err(MembershipChange(sluice_raft::MembershipError::Refused(
                "the cluster's last voter cannot be removed".into(),
            )));
        }
        raft.change_membership(voters, false).await?;
        Ok(())
    }

    /// Waits (at most `timeout`) until the applied index is other than `seen`, and returns it.
    pub async fn wait_applied_change(&self, seen: Option<u64>, timeout: Duration) -> Option<u64> {
        self.node().wait_applied_change(seen, timeout).await
    }

    /// The metadata leader this node knows of.
    pub fn leader(&self) -> Option<u32> {
        self.node()
            .current_leader()
            .and_then(|id| u32::try_from(id).ok())
    }

    /// Whether this node is one of a cluster of several (it has peers).
    pub fn is_clustered(&self) -> bool {
        self.peer_endpoint.is_some()
    }

    /// Installs what answers peers' replication messages.
    pub fn set_replica_handler(&self, handler: sluice_raft::ReplicaHandler) {
        self.node().set_replica_handler(handler);
    }

    /// Sends a replication message to node `target` over the peer connection.
    pub async fn call_replica(
        &self,
        target: u32,
        message: Vec<u8>,
    ) -> Result<sluice_raft::ReplicaPayload, TransportError> {
        self.node()
            .call_replica(NodeId::from(target), message)
            .await
    }

    /// Sends this node's session heartbeat to the metadata leader.
    pub async fn heartbeat(&self, broker_epoch: u64) -> Result<(), ProposeError> {
        self.node()
            .heartbeat(broker_epoch)
            .await
            .map_err(Into::into)
    }

    /// On the metadata leader: the (node, broker epoch) pairs whose session expired.
    pub fn expired_sessions(&self, timeout: Duration) -> Vec<(u32, u64)> {
        self.node().expired_sessions(timeout)
    }

    /// On the metadata leader: the brokers whose session is current; `None` elsewhere.
    pub fn live_brokers(&self, timeout: Duration) -> Option<std::collections::BTreeSet<u32>> {
        self.node().live_brokers(timeout)
    }

    /// The metadata Raft node's view: role, leader, term, indexes, membership.
    pub async fn status(&self) -> Result<RaftStatus, ProposeError> {
        self.node()
            .status()
            .await
            .map_err(|e| ProposeError::Unavailable(e.to_string()))
    }

    /// Stops the Raft node and closes its file, then the peer endpoint.
    pub async fn shutdown(&self) -> Result<(), BrokerError> {
        let stopped = self
            .node()
            .shutdown()
            .await
            .map_err(|e| BrokerError::Metadata(e.to_string()));
        if let Some(endpoint) = &self.peer_endpoint {
            endpoint.close(0u32.into(), b"broker shutting down");
        }
        stopped
    }
}

/// Why a membership change failed.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct MembershipChange(#[from] pub sluice_raft::MembershipError);

/// Why a proposal failed.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// The metadata refuses the command; the message says why.
    #[error(transparent)]
    Refused(#[from] MetadataError),
    /// No metadata leader can take the command right now (an election, or the node stopped).
    /// Retriable.
    #[error("the metadata log is unavailable: {0}")]
    Unavailable(String),
}

impl From<sluice_raft::ProposeError> for ProposeError {
    fn from(e: sluice_raft::ProposeError) -> Self {
        match e {
            sluice_raft::ProposeError::Refused(m) => ProposeError::Refused(m),
            other => ProposeError::Unavailable(other.to_string()),
        }
    }
}
