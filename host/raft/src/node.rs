//! [`MetadataRaft`]: one controller node of the metadata Raft group, the API the broker calls.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, Fatal, InitializeError, RaftError};
use openraft::{ChangeMembers, Config, Raft, ServerState, SnapshotPolicy};
use sluice_metadata::liveness::Liveness;
use sluice_metadata::{MetadataCommand, MetadataError, MetadataState};

use crate::log_store::{LogStore, StorageOpenError, open_database};
use crate::network::{
    Forwarded, NetworkFactory, RaftReply, RaftRequest, RaftTransport, ReplicaPayload,
    TransportError,
};
use crate::state_machine::StateMachineStore;
use crate::{CommandResponse, Identity, NodeId, PeerNode, TypeConfig};

/// The raft file's name in the node's data directory.
pub const RAFT_FILE: &str = "raft.redb";

/// Timing, snapshot and size settings. The defaults suit a cluster on one LAN or loopback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataRaftConfig {
    /// How often the leader sends heartbeats.
    pub heartbeat_ms: u64,
    /// A follower that hears no leader for a random time in this range starts an election.
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Time allowed for one snapshot chunk to be sent and acknowledged.
    pub install_snapshot_timeout_ms: u64,
    /// A snapshot is taken every this many applied entries.
    pub snapshot_every_logs: u64,
    /// Entries kept in the log behind the snapshot, so a follower a little behind catches up
    /// from the log rather than a whole snapshot.
    pub keep_logs_after_snapshot: u64,
    /// Largest snapshot a node accepts from a leader; bigger ones are refused with an error.
    pub max_snapshot_bytes: u64,
}

impl Default for MetadataRaftConfig {
    fn default() -> Self {
        MetadataRaftConfig {
            heartbeat_ms: 100,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            // openraft's 200 ms default times a 3 MiB chunk out on a busy or slow link.
            install_snapshot_timeout_ms: 2_000,
            snapshot_every_logs: 1_000,
            keep_logs_after_snapshot: 100,
            max_snapshot_bytes: 256 << 20,
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The raft file could not be opened or read.
    #[error(transparent)]
    Storage(#[from] StorageOpenError),
    /// The settings are inconsistent (for instance election timeouts not above the heartbeat).
    #[error("invalid raft configuration: {0}")]
    Config(String),
    /// openraft refused to start.
    #[error("raft did not start: {0}")]
    Raft(#[from] Fatal<NodeId>),
}

/// The node has stopped (shut down, or halted after a storage error).
#[derive(Debug, Clone, thiserror::Error)]
#[error("the metadata raft node has stopped: {0}")]
pub struct RaftStopped(String);

/// Why a proposal was not applied.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProposeError {
    /// The command is invalid against the metadata: refused before it reached the log, or
    /// refused when applied (it raced another command), in which case every node refused it.
    /// Not retriable as is.
    #[error(transparent)]
    Refused(#[from] MetadataError),
    /// This node is not the leader. Retriable: send to `leader` (when known; otherwise wait
    /// for an election).
    #[error("not the metadata leader; the leader is {leader:?}")]
    NotLeader { leader: Option<(NodeId, PeerNode)> },
    /// The node has stopped.
    #[error(transparent)]
    Stopped(#[from] RaftStopped),
}

/// Why a membership change or initialization failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MembershipError {
    /// Membership changes go to the leader. Retriable there.
    #[error("not the metadata leader; the leader is {leader:?}")]
    NotLeader { leader: Option<(NodeId, PeerNode)> },
    /// The change is not allowed now or at all (another change in progress, a voter that is
    /// not yet a learner, an empty voter set, this node not among the initial voters).
    #[error("membership change refused: {0}")]
    Refused(String),
    /// The node has stopped.
    #[error(transparent)]
    Stopped(#[from] RaftStopped),
}

/// A node's role in the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    /// Receives the log but does not vote.
    Learner,
    ShuttingDown,
}

/// What `sluice cluster status` shows of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftStatus {
    pub id: NodeId,
    pub role: Role,
    pub leader: Option<NodeId>,
    pub term: u64,
    /// Index of the last entry in this node's log.
    pub last_log_index: Option<u64>,
    /// Index of the last entry known committed (held by a quorum).
    pub committed: Option<u64>,
    /// Index of the last entry applied to the metadata state.
    pub last_applied: Option<u64>,
    /// Index the latest snapshot covers.
    pub snapshot: Option<u64>,
    /// Entries up to this index are gone from the log (covered by the snapshot).
    pub purged: Option<u64>,
    /// Snapshots received from a leader and installed since this node started.
    pub snapshots_installed: u64,
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
}

/// One controller node. Cheap to clone; clones drive the same node.
#[derive(Clone)]
pub struct MetadataRaft {
    id: NodeId,
    raft: Raft<TypeConfig>,
    state: Arc<RwLock<MetadataState>>,
    snapshots_installed: Arc<AtomicU64>,
    max_snapshot_bytes: u64,
    /// Set once openraft's storage tasks have let go of the raft file and it is closed (see
    /// [`MetadataRaft::shutdown`]).
    file_closed: Arc<AtomicBool>,
    /// Broker sessions, kept by the leader (see [`sluice_metadata::liveness`]).
    liveness: Arc<Mutex<Liveness>>,
    /// What this node was configured with, told to peers that ask.
    identity: Arc<Mutex<Option<Identity>>>,
    /// Answers replication messages from peers (installed by the broker).
    replica_handler: Arc<Mutex<Option<ReplicaHandler>>>,
    /// Sends a request to a peer: how a follower hands a proposal to the leader.
    forward: Arc<dyn Fn(NodeId, PeerNode, RaftRequest) -> ForwardCall + Send + Sync>,
}

/// Answers one replication message from a peer (see [`MetadataRaft::set_replica_handler`]).
pub type ReplicaHandler = Arc<
    dyn Fn(
            Vec<u8>,
        )
            -> std::pin::Pin<Box<dyn Future<Output = Result<ReplicaPayload, String>> + Send>>
        + Send
        + Sync,
>;

type ForwardCall =
    std::pin::Pin<Box<dyn Future<Output = Result<RaftReply, TransportError>> + Send>>;

/// How long a follower waits for a proposal it forwarded to be applied here too.
const FORWARDED_APPLY_WAIT: Duration = Duration::from_secs(30);

impl fmt::Debug for MetadataRaft {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetadataRaft")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn leader_of(f: openraft::error::ForwardToLeader<NodeId, PeerNode>) -> Option<(NodeId, PeerNode)> {
    Some((f.leader_id?, f.leader_node.unwrap_or_default()))
}

impl MetadataRaft {
    /// Starts node `id` from `dir`/[`RAFT_FILE`] (created if absent), talking to its peers
    /// through `transport`. A fresh node then waits for [`MetadataRaft::initialize`] or for a
    /// leader to add it; a restarted one resumes from its snapshot and log. Must be called
    /// inside a multi-threaded tokio runtime.
    pub async fn start<T: RaftTransport>(
        id: NodeId,
        dir: &Path,
        transport: T,
        config: &MetadataRaftConfig,
    ) -> Result<MetadataRaft, StartError> {
        let raft_config = Config {
            cluster_name: "sluice-metadata".into(),
            heartbeat_interval: config.heartbeat_ms,
            election_timeout_min: config.election_timeout_min_ms,
            election_timeout_max: config.election_timeout_max_ms,
            install_snapshot_timeout: config.install_snapshot_timeout_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every_logs),
            max_in_snapshot_log_to_keep: config.keep_logs_after_snapshot,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StartError::Config(e.to_string()))?;

        let path = dir.join(RAFT_FILE);
        let db = tokio::task::spawn_blocking(move || open_database(&path))
            .await
            .expect("opening the raft file panicked")
            .map_err(StorageOpenError::from)?;
        let file_closed = db.closed_flag();
        let log = LogStore::new(db.clone());
        let state_machine = StateMachineStore::open(db, config.max_snapshot_bytes).await?;
        let state = state_machine.state();
        let snapshots_installed = state_machine.installed_counter();
        let transport = Arc::new(transport);
        let network = NetworkFactory {
            transport: transport.clone(),
        };
        let forward: Arc<dyn Fn(NodeId, PeerNode, RaftRequest) -> ForwardCall + Send + Sync> =
            Arc::new(move |target, peer, request| {
                let transport = transport.clone();
                Box::pin(async move { transport.call(target, &peer, request).await })
            });
        let raft = Raft::new(id, Arc::new(raft_config), network, log, state_machine).await?;
        tracing::info!(node_id = id, dir = %dir.display(), "metadata raft node started");
        Ok(MetadataRaft {
            id,
            raft,
            state,
            snapshots_installed,
            liveness: Arc::new(Mutex::new(Liveness::new())),
            identity: Arc::new(Mutex::new(None)),
            replica_handler: Arc::new(Mutex::new(None)),
            max_snapshot_bytes: config.max_snapshot_bytes,
            file_closed,
            forward,
        })
    }

    pub fn node_id(&self) -> NodeId {
        self.id
    }

    /// Installs what answers peers' replication messages ([`RaftRequest::Replica`]).
    pub fn set_replica_handler(&self, handler: ReplicaHandler) {
        *self
            .replica_handler
            .lock()
            .expect("replica handler lock poisoned") = Some(handler);
    }

    /// Sends a replication message to node `target` and returns its handler's answer.
    pub async fn call_replica(
        &self,
        target: NodeId,
        message: Vec<u8>,
    ) -> Result<ReplicaPayload, TransportError> {
        let peer = {
            let metrics = self.raft.metrics().borrow().clone();
            metrics
                .membership_config
                .membership()
                .get_node(&target)
                .cloned()
                .ok_or_else(|| {
                    TransportError::Unreachable(format!(
                        "node {target} is not a member of the metadata group"
                    ))
                })?
        };
        match (self.forward)(target, peer, RaftRequest::Replica(message)).await? {
            RaftReply::Replica(Ok(answer)) => Ok(answer),
            RaftReply::Replica(Err(why)) => Err(TransportError::Failed(why)),
            other => Err(TransportError::Failed(format!(
                "unexpected answer to a replication message: {other:?}"
            ))),
        }
    }

    /// Sets what this node tells peers that ask who it is ([`RaftRequest::Identify`]).
    pub fn set_identity(&self, identity: Identity) {
        *self.identity.lock().expect("identity lock poisoned") = Some(identity);
    }

    /// Asks peer `target` for its identity; `Ok(None)` when it has not set one yet.
    pub async fn identify(
        &self,
        target: NodeId,
        peer: PeerNode,
    ) -> Result<Option<Identity>, TransportError> {
        match (self.forward)(target, peer, RaftRequest::Identify).await? {
            RaftReply::Identity(identity) => Ok(identity),
            other => Err(TransportError::Failed(format!(
                "unexpected answer to Identify: {other:?}"
            ))),
        }
    }

    /// Whether this node has a log or membership already (it has been part of a group).
    pub fn is_initialized(&self) -> bool {
        let metrics = self.raft.metrics().borrow().clone();
        metrics.last_log_index.is_some()
            || metrics
                .membership_config
                .membership()
                .voter_ids()
                .next()
                .is_some()
    }

    /// Makes `voters` the group's first membership. Call it once, with the same set, on one
    /// node of a new cluster (or on all: a node that already has a log answers `Ok` and does
    /// nothing). Different sets on different nodes would form different clusters.
    pub async fn initialize(
        &self,
        voters: BTreeMap<NodeId, PeerNode>,
    ) -> Result<(), MembershipError> {
        match self.raft.initialize(voters).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(e))) => {
                tracing::debug!(node_id = self.id, reason = %e, "already initialized; nothing to do");
                Ok(())
            }
            Err(RaftError::APIError(e @ InitializeError::NotInMembers(_))) => {
                Err(MembershipError::Refused(e.to_string()))
            }
            Err(RaftError::Fatal(e)) => Err(RaftStopped(e.to_string()).into()),
        }
    }

    /// Proposes `cmd` and waits until it is committed and applied here. Returns the log index
    /// it was applied at. The command is first validated against this node's state, so a
    /// command that is already invalid never takes a log entry.
    ///
    /// On a follower the command is forwarded to the leader (once), and this returns when the
    /// entry is applied here too, so the caller reads its own write.
    pub async fn propose(&self, cmd: MetadataCommand) -> Result<u64, ProposeError> {
        match self.propose_here(cmd.clone()).await {
            Err(ProposeError::NotLeader {
                leader: Some((leader, node)),
            }) if leader != self.id => self.forward_to(leader, node, cmd).await,
            other => other,
        }
    }

    async fn forward_to(
        &self,
        leader: NodeId,
        node: PeerNode,
        cmd: MetadataCommand,
    ) -> Result<u64, ProposeError> {
        let not_leader = |why: String| {
            tracing::debug!(node_id = self.id, leader, cause = %why, "forwarding a proposal failed");
            ProposeError::NotLeader {
                leader: Some((leader, node.clone())),
            }
        };
        // A leader that dies holds the call until its connection times out; once this node
        // learns of another leader, asking that one is quicker. (Whether the dead leader had
        // committed the entry is unknown either way: a retried command the state machine
        // already applied is refused as such, e.g. a topic that exists.)
        let mut metrics = self.raft.metrics();
        let moved = metrics.wait_for(|m| m.current_leader.is_some_and(|l| l != leader));
        let reply = tokio::select! {
            reply = (self.forward)(leader, node.clone(), RaftRequest::Propose(cmd)) => {
                reply.map_err(|e| not_leader(e.to_string()))?
            }
            Ok(m) = moved => {
                let new_leader = m.current_leader.and_then(|l| {
                    let node = m.membership_config.membership().get_node(&l).cloned()?;
                    Some((l, node))
                });
                tracing::debug!(node_id = self.id, old = leader, new = ?new_leader.as_ref().map(|l| l.0), "the leader changed while a proposal was forwarded to it");
                return Err(ProposeError::NotLeader { leader: new_leader });
            }
        };
        let index = match reply {
            RaftReply::Proposed(Forwarded::Committed { index, response }) => {
                response.outcome.map(|()| index)?
            }
            RaftReply::Proposed(Forwarded::Refused(response)) => {
                return Err(match response.outcome {
                    Err(e) => ProposeError::Refused(e),
                    Ok(()) => not_leader("refused without a reason".into()),
                });
            }
            RaftReply::Proposed(Forwarded::NotLeader { leader }) => {
                return Err(ProposeError::NotLeader { leader });
            }
            RaftReply::Proposed(Forwarded::Stopped(why)) | RaftReply::Refused(why) => {
                return Err(not_leader(why));
            }
            other => return Err(not_leader(format!("unexpected reply {other:?}"))),
        };
        self.raft
            .wait(Some(FORWARDED_APPLY_WAIT))
            .applied_index_at_least(Some(index), "a forwarded proposal")
            .await
            .map_err(|e| not_leader(format!("entry {index} not applied here: {e}")))?;
        Ok(index)
    }

    /// Proposes on this node only: the leader's side of a forwarded proposal.
    async fn propose_here(&self, cmd: MetadataCommand) -> Result<u64, ProposeError> {
        self.read(|state| state.validate(&cmd))?;
        match self.raft.client_write(cmd).await {
            Ok(written) => {
                written.data.outcome?;
                Ok(written.log_id.index)
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(ProposeError::NotLeader {
                    leader: leader_of(f),
                })
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                unreachable!("a normal entry is not a membership change: {e}")
            }
            Err(RaftError::Fatal(e)) => Err(RaftStopped(e.to_string()).into()),
        }
    }

    /// Reads this node's applied state. Not linearizable: a follower may lag the leader (use
    /// [`MetadataRaft::read_linearizable`] when that matters).
    pub fn read<T>(&self, f: impl FnOnce(&MetadataState) -> T) -> T {
        f(&self.state.read().expect("metadata state lock poisoned"))
    }

    /// The metadata leader this node knows of.
    pub fn current_leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// The index of the last entry applied to the state here.
    pub fn applied_index(&self) -> Option<u64> {
        self.raft.metrics().borrow().last_applied.map(|id| id.index)
    }

    /// Waits (at most `timeout`) until the applied index is other than `seen`, and returns it.
    pub async fn wait_applied_change(&self, seen: Option<u64>, timeout: Duration) -> Option<u64> {
        let mut metrics = self.raft.metrics();
        let _ = tokio::time::timeout(
            timeout,
            metrics.wait_for(|m| m.last_applied.map(|id| id.index) != seen),
        )
        .await;
        self.applied_index()
    }

    /// Like [`MetadataRaft::read`], on the leader, after confirming with a quorum that it still
    /// leads and applying everything committed before the call.
    pub async fn read_linearizable<T>(
        &self,
        f: impl FnOnce(&MetadataState) -> T,
    ) -> Result<T, ProposeError> {
        use openraft::error::CheckIsLeaderError;
        match self.raft.ensure_linearizable().await {
            Ok(_) => Ok(self.read(f)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(ProposeError::NotLeader {
                    leader: leader_of(f),
                })
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => {
                Err(ProposeError::NotLeader { leader: None }).inspect_err(
                    |_| tracing::debug!(node_id = self.id, cause = %e, "no quorum for a read"),
                )
            }
            Err(RaftError::Fatal(e)) => Err(RaftStopped(e.to_string()).into()),
        }
    }

    /// The state the broker reads, shared with the state machine. Hold its lock briefly.
    pub fn state_handle(&self) -> Arc<RwLock<MetadataState>> {
        self.state.clone()
    }

    /// Adds node `id` as a learner (receives the log, does not vote) and waits until it has
    /// caught up. Leader only.
    pub async fn add_learner(&self, id: NodeId, node: PeerNode) -> Result<(), MembershipError> {
        self.membership_result(self.raft.add_learner(id, node, true).await)
    }

    /// Makes `voters` the voter set (each must already be a learner or voter). Removed voters
    /// stay as learners when `retain`, else leave the group. Leader only; one change at a time.
    pub async fn change_membership(
        &self,
        voters: BTreeSet<NodeId>,
        retain: bool,
    ) -> Result<(), MembershipError> {
        let change = ChangeMembers::ReplaceAllVoters(voters);
        self.membership_result(self.raft.change_membership(change, retain).await)
    }

    fn membership_result<T>(
        &self,
        result: Result<T, RaftError<NodeId, ClientWriteError<NodeId, PeerNode>>>,
    ) -> Result<(), MembershipError> {
        match result {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(MembershipError::NotLeader {
                    leader: leader_of(f),
                })
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(MembershipError::Refused(e.to_string()))
            }
            Err(RaftError::Fatal(e)) => Err(RaftStopped(e.to_string()).into()),
        }
    }

    /// Records a broker's heartbeat if this node leads; says whether it did.
    fn take_heartbeat(&self, node_id: NodeId, broker_epoch: u64) -> bool {
        let leading = self.raft.metrics().borrow().state == ServerState::Leader;
        let mut liveness = self.liveness.lock().expect("liveness lock poisoned");
        liveness.set_leading(leading, Instant::now());
        // Broker node ids are u32; a Raft id beyond that is no broker and has no session.
        if leading && let Ok(node_id) = u32::try_from(node_id) {
            liveness.heartbeat(node_id, broker_epoch, Instant::now());
        }
        leading
    }

    /// Sends this node's broker heartbeat (in `broker_epoch`) to the metadata leader, or
    /// records it here when this node leads.
    pub async fn heartbeat(&self, broker_epoch: u64) -> Result<(), ProposeError> {
        let (leader, node) = {
            let metrics = self.raft.metrics().borrow().clone();
            let Some(leader) = metrics.current_leader else {
                return Err(ProposeError::NotLeader { leader: None });
            };
            let node = metrics
                .membership_config
                .membership()
                .get_node(&leader)
                .cloned()
                .unwrap_or_default();
            (leader, node)
        };
        if leader == self.id {
            return if self.take_heartbeat(self.id, broker_epoch) {
                Ok(())
            } else {
                Err(ProposeError::NotLeader { leader: None })
            };
        }
        let request = RaftRequest::Heartbeat {
            node_id: self.id,
            broker_epoch,
        };
        match (self.forward)(leader, node.clone(), request).await {
            Ok(RaftReply::HeartbeatTaken(true)) => Ok(()),
            Ok(_) => Err(ProposeError::NotLeader { leader: None }),
            Err(e) => {
                tracing::debug!(leader, cause = %e, "heartbeat to the metadata leader failed");
                Err(ProposeError::NotLeader {
                    leader: Some((leader, node)),
                })
            }
        }
    }

    /// On the leader: the (node, broker epoch) pairs that missed their session of `timeout`
    /// and should be fenced. Empty on other nodes.
    pub fn expired_sessions(&self, timeout: Duration) -> Vec<(u32, u64)> {
        let leading = self.raft.metrics().borrow().state == ServerState::Leader;
        let now = Instant::now();
        let mut liveness = self.liveness.lock().expect("liveness lock poisoned");
        liveness.set_leading(leading, now);
        self.read(|s| {
            let brokers: Vec<_> = s.brokers().collect();
            liveness.expired(brokers.iter().copied(), now, timeout)
        })
    }

    /// On the leader: whether each registered broker's session is current. `None` on other
    /// nodes, which do not know.
    pub fn live_brokers(&self, timeout: Duration) -> Option<BTreeSet<u32>> {
        let leading = self.raft.metrics().borrow().state == ServerState::Leader;
        let now = Instant::now();
        let mut liveness = self.liveness.lock().expect("liveness lock poisoned");
        liveness.set_leading(leading, now);
        leading.then(|| {
            self.read(|s| {
                liveness.observe(s.brokers(), now);
                s.brokers()
                    .filter(|b| liveness.is_live(b, now, timeout))
                    .map(|b| b.node_id)
                    .collect()
            })
        })
    }

    /// This node's view of the group.
    pub async fn status(&self) -> Result<RaftStatus, RaftStopped> {
        let metrics = self.raft.metrics().borrow().clone();
        let committed = self
            .raft
            .with_raft_state(|st| st.committed)
            .await
            .map_err(|e| RaftStopped(e.to_string()))?;
        let membership = metrics.membership_config.membership();
        Ok(RaftStatus {
            id: metrics.id,
            role: match metrics.state {
                ServerState::Leader => Role::Leader,
                ServerState::Follower => Role::Follower,
                ServerState::Candidate => Role::Candidate,
                ServerState::Learner => Role::Learner,
                ServerState::Shutdown => Role::ShuttingDown,
            },
            leader: metrics.current_leader,
            term: metrics.current_term,
            last_log_index: metrics.last_log_index,
            committed: committed.map(|id| id.index),
            last_applied: metrics.last_applied.map(|id| id.index),
            snapshot: metrics.snapshot.map(|id| id.index),
            purged: metrics.purged.map(|id| id.index),
            snapshots_installed: self.snapshots_installed.load(Ordering::Relaxed),
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
        })
    }

    /// Handles a request from a peer (the server side of a [`RaftTransport`]).
    pub async fn handle_rpc(&self, request: RaftRequest) -> RaftReply {
        match request {
            RaftRequest::AppendEntries(rpc) => {
                RaftReply::AppendEntries(self.raft.append_entries(rpc).await)
            }
            RaftRequest::Vote(rpc) => RaftReply::Vote(self.raft.vote(rpc).await),
            RaftRequest::Propose(cmd) => RaftReply::Proposed(match self.propose_here(cmd).await {
                Ok(index) => Forwarded::Committed {
                    index,
                    response: CommandResponse { outcome: Ok(()) },
                },
                Err(ProposeError::Refused(e)) => {
                    Forwarded::Refused(CommandResponse { outcome: Err(e) })
                }
                Err(ProposeError::NotLeader { leader }) => Forwarded::NotLeader { leader },
                Err(ProposeError::Stopped(e)) => Forwarded::Stopped(e.to_string()),
            }),
            RaftRequest::Heartbeat {
                node_id,
                broker_epoch,
            } => RaftReply::HeartbeatTaken(self.take_heartbeat(node_id, broker_epoch)),
            RaftRequest::Replica(message) => {
                let handler = self
                    .replica_handler
                    .lock()
                    .expect("replica handler lock poisoned")
                    .clone();
                RaftReply::Replica(match handler {
                    Some(handle) => handle(message).await,
                    None => Err(format!("node {} does not serve replication yet", self.id)),
                })
            }
            RaftRequest::Identify => RaftReply::Identity(
                self.identity
                    .lock()
                    .expect("identity lock poisoned")
                    .clone(),
            ),
            RaftRequest::InstallSnapshot(rpc) => {
                // Checked before openraft buffers the chunk: a snapshot is held whole in memory.
                let end = rpc.offset.saturating_add(rpc.data.len() as u64);
                if end > self.max_snapshot_bytes {
                    let why = format!(
                        "snapshot {} reaches {end} bytes, over this node's limit of {}",
                        rpc.meta.snapshot_id, self.max_snapshot_bytes
                    );
                    tracing::error!(node_id = self.id, cause = %why, "snapshot refused");
                    return RaftReply::Refused(why);
                }
                RaftReply::InstallSnapshot(self.raft.install_snapshot(rpc).await)
            }
        }
    }

    /// Stops the node and waits until the raft file is closed, so the node can be started
    /// again from it in this process.
    pub async fn shutdown(&self) -> Result<(), RaftStopped> {
        self.raft
            .shutdown()
            .await
            .map_err(|e| RaftStopped(e.to_string()))?;
        // openraft's state machine and replication tasks drop their storage handles shortly
        // after the core stops, not before `shutdown` returns.
        let start = Instant::now();
        while !self.file_closed.load(Ordering::Acquire) {
            if start.elapsed() > FILE_CLOSE_WAIT {
                return Err(RaftStopped(format!(
                    "stopped, but the raft file is still open after {FILE_CLOSE_WAIT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }
}

/// How long [`MetadataRaft::shutdown`] waits for openraft's tasks to release the raft file.
const FILE_CLOSE_WAIT: Duration = Duration::from_secs(10);
