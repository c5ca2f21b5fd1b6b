//! Cluster metadata as a deterministic state machine.
//!
//! Every change — a broker registering, a topic created or deleted, partitions added, a
//! leader elected — is a [`MetadataCommand`]. Commands are appended to a metadata log and
//! applied in log order by [`MetadataState::apply`], which depends on nothing but the state
//! and the command. On a single node the broker persists the log in its redb store; in a
//! cluster, Raft replicates the same log and every node applies the same commands, reaching the
//! same state, without this crate changing.
//!
//! Data enters as commands (from the broker's controller) and leaves as read-only views of
//! topics, partitions and brokers.

pub mod acl;
pub mod connectors;
pub mod liveness;
pub mod placement;
pub mod security;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sluice_proto::TopicConfig;

pub use connectors::{ConnectorKind, ConnectorRecord, ConnectorSpec, SourceIntent};

/// A node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerRecord {
    pub node_id: u32,
    /// Address clients reach the node at, `host:port`.
    pub addr: String,
    /// Address other brokers reach the node at (the peer listener), when it has one.
    pub peer_addr: Option<String>,
    /// Where the node stands (a rack, a zone), for placing replicas apart.
    pub rack: Option<String>,
    /// The broker epoch: the log index of the node's latest registration. Unique and growing,
    /// so a message from an earlier life of the node (a stale epoch) can always be told apart.
    pub epoch: u64,
    /// The node missed its session: it leads nothing and gets no new partitions until it
    /// registers again (with a new epoch).
    pub fenced: bool,
}

/// One partition's placement and leadership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRecord {
    /// Nodes holding a replica, preferred leader first.
    pub replicas: Vec<u32>,
    /// The node that accepts produce and serves fetch; `None` while none is elected.
    pub leader: Option<u32>,
    /// Bumped on every leadership change; batches carry the epoch of the leader that wrote
    /// them, which lets a new follower truncate what a dead leader never committed.
    pub leader_epoch: u32,
    /// Replicas caught up with the leader; leaders are elected only from this set.
    pub in_sync: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    pub name: String,
    /// Unique for the life of the cluster: a topic deleted and created again gets a new id,
    /// so its old data can never be mistaken for the new topic's.
    pub topic_id: u64,
    pub config: TopicConfig,
    pub partitions: Vec<PartitionRecord>,
}

/// A change to the metadata. Validated by [`MetadataState::validate`] before it is appended
/// to the log; applying a validated command cannot fail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataCommand {
    /// A node joins, or announces a new address.
    RegisterBroker {
        node_id: u32,
        addr: String,
    },
    /// Creates a topic; `assignments[p]` lists partition `p`'s replicas, the first leading.
    CreateTopic {
        name: String,
        config: TopicConfig,
        assignments: Vec<Vec<u32>>,
    },
    /// Deletes a topic. Refused ([`MetadataError::TopicInUse`]) while anything reads or writes
    /// it: a pipeline would fail on its next record, and a topic created again under the name
    /// would silently become its input or output.
    DeleteTopic {
        name: String,
    },
    /// Appends partitions to a topic, placed as `assignments` says.
    AddPartitions {
        name: String,
        assignments: Vec<Vec<u32>>,
    },
    /// Changes a partition's leader and in-sync set; bumps its leader epoch.
    SetLeader {
        topic: String,
        partition: u32,
        leader: Option<u32>,
        in_sync: Vec<u32>,
    },
    /// Replaces a topic's configuration.
    SetTopicConfig {
        name: String,
        config: TopicConfig,
    },
    /// Hands out the next producer id to an idempotent producer (epoch 0). Ids come from the
    /// log, so they are never reused: not after a restart, and not on another node once Raft
    /// replicates the log.
    AllocateProducerId,
    /// Creates an internal topic (its name starts with `__`), such as the consumer groups'
    /// `__consumer_offsets`. Users cannot create these.
    CreateInternalTopic {
        name: String,
        config: TopicConfig,
        assignments: Vec<Vec<u32>>,
    },
    /// Adds a version of a plugin (creating the plugin). The component itself is stored by
    /// hash beside the log; the log records what it is.
    DeployPlugin {
        name: String,
        kind: String,
        hash: String,
        size_bytes: u64,
        deployed_at_ms: i64,
    },
    /// Removes a plugin and all its versions.
    DeletePlugin {
        name: String,
    },
    /// Creates a pipeline. Applying it hands out one producer id per input partition (the
    /// next ids in line, as [`MetadataCommand::AllocateProducerId`] would), so the ids are
    /// part of the pipeline's record from the start and never change.
    CreatePipeline(PipelineSpec),
    /// Pauses (`true`) or resumes (`false`) a pipeline; survives restarts.
    SetPipelinePaused {
        name: String,
        paused: bool,
    },
    DeletePipeline {
        name: String,
    },
    /// Deletes a topic together with every pipeline that reads or writes it (`topic delete
    /// --force`). One command, so a crash cannot leave the pipelines deleted and the topic
    /// not, nor a pipeline pointing at a topic that is gone. A new variant rather than a flag
    /// on [`MetadataCommand::DeleteTopic`]: commands already in a log must keep decoding.
    DeleteTopicForced {
        name: String,
    },
    /// A node (re)joins the cluster with its addresses and rack. Its broker epoch becomes the
    /// index of this entry and it is no longer fenced; every leaderless partition whose
    /// in-sync set holds it gets it as leader (a new leader epoch). (The older
    /// [`MetadataCommand::RegisterBroker`] says the same without a peer address or rack.)
    RegisterBrokerEpoch {
        node_id: u32,
        addr: String,
        peer_addr: Option<String>,
        rack: Option<String>,
    },
    /// The node missed its session while in `epoch`: it is fenced, and every partition it
    /// leads loses its leader (leader epoch bumped) until a new leader is elected. It leaves
    /// every in-sync set but one where it is the last member: the last in-sync replica stays
    /// (as in Kafka), so that it, and only it, may lead again when it returns. Refused when `epoch` is not the node's current one: the node has
    /// registered again since, and that life is not the one that missed its session.
    FenceBroker {
        node_id: u32,
        epoch: u64,
    },
    /// Adds a version of a plugin with the component itself, so that every node has it (the
    /// older [`MetadataCommand::DeployPlugin`] left the bytes on the deploying node only). The
    /// bytes are kept, by hash, as long as a version of some plugin refers to them.
    DeployPluginComponent {
        name: String,
        kind: String,
        hash: String,
        deployed_at_ms: i64,
        wasm: Vec<u8>,
    },
    /// A pipeline runner's checkpoint for one input partition (opaque to the metadata), after
    /// the output before it was acknowledged. Refused unless the pipeline `name` is the one
    /// created at `created_index` (not one deleted and created again since).
    PipelineCheckpoint {
        name: String,
        created_index: u64,
        partition: u32,
        checkpoint: Vec<u8>,
    },
    /// Hands a broker a block of `count` consecutive producer ids (the next in line), which it
    /// gives out to idempotent producers without a log entry each. The first id is found with
    /// [`MetadataState::producer_id_allocated_at`]. Ids of a block never used are never reused.
    AllocateProducerIdBlock {
        node_id: u32,
        count: u32,
    },
    /// Forgets a broker that left the cluster (`cluster remove-node`). Refused while it holds
    /// a replica of a partition.
    UnregisterBroker {
        node_id: u32,
    },
    /// A partition leader's change of its in-sync set (a follower fell behind or caught up).
    /// Refused unless `leader` still leads the partition in `leader_epoch`, and the set is
    /// made of the partition's replicas and holds the leader.
    AlterInSync {
        topic: String,
        partition: u32,
        leader: u32,
        leader_epoch: u32,
        in_sync: Vec<u32>,
    },
    /// A node starts a new life (every broker start): it registers with a new broker epoch,
    /// and since what it held before may not all have survived (a crash under
    /// `durability=interval`, or a wiped data dir: `fresh`), it does not count as in sync
    /// until it has caught up again. For every partition it replicates: it leaves the in-sync
    /// set unless it is the last member — always, when `fresh`; where it led, the first live
    /// in-sync replica takes over (a new leader epoch) and, with none, it keeps leading only if
    /// it is the last in-sync member and not `fresh`; a leaderless partition whose last in-sync
    /// member it is gets it as leader unless `fresh`. (Replaces
    /// [`MetadataCommand::RegisterBrokerEpoch`], which made a restarted node in sync at once.)
    RegisterBrokerLife {
        node_id: u32,
        addr: String,
        peer_addr: Option<String>,
        rack: Option<String>,
        fresh: bool,
    },
    /// Gives leadership of a partition back to its preferred replica (the first), which must
    /// be live and in sync and not lead already; a new leader epoch.
    ElectPreferredLeader {
        topic: String,
        partition: u32,
    },
    /// Sets a topic's replication settings (`None` leaves one as it is).
    AlterTopicReplication {
        topic: String,
        min_insync_replicas: Option<u16>,
        unclean_leader_election: Option<bool>,
    },
    /// An unclean election: `leader`, a live replica outside the in-sync set, leads a
    /// partition that has no leader and no live in-sync replica, alone in a new in-sync set,
    /// in a new leader epoch. Records it never had are lost. Refused unless the topic opted in
    /// (`unclean_leader_election`).
    ElectUncleanLeader {
        topic: String,
        partition: u32,
        leader: u32,
    },
    /// Creates a connector. Applying it hands out its producer id.
    CreateConnector(ConnectorSpec),
    /// Pauses (`true`) or resumes (`false`) a connector; survives restarts.
    SetConnectorPaused {
        name: String,
        paused: bool,
    },
    DeleteConnector {
        name: String,
    },
    /// A connector task starts on `node`: the connector's generation moves on, and progress
    /// from any earlier task is refused from now on.
    ConnectorStarted {
        name: String,
        created_index: u64,
        node: u32,
    },
    /// A source task of `generation` is about to write a batch (docs/connectors.md).
    ConnectorIntent {
        name: String,
        created_index: u64,
        generation: u64,
        intent: SourceIntent,
    },
    /// A sink task of `generation` flushed everything before these next offsets.
    ConnectorOffsets {
        name: String,
        created_index: u64,
        generation: u64,
        offsets: Vec<(String, u32, u64)>,
    },
    /// A connector task failed (it is restarted with backoff).
    ConnectorFailed {
        name: String,
        created_index: u64,
        at_ms: i64,
        error: String,
    },
    /// Adds an access control binding (docs/security.md); adding one already there changes
    /// nothing.
    AddAcl(acl::AclBinding),
    /// Removes an access control binding; removing one that is not there changes nothing.
    RemoveAcl(acl::AclBinding),
    /// Creates a SCRAM user or replaces its credential.
    UpsertUser {
        name: String,
        credential: sluice_proto::auth::ScramCredential,
    },
    DeleteUser {
        name: String,
    },
    /// Records an API token (its hash) under `id`.
    CreateToken {
        id: String,
        token: security::TokenRecord,
    },
    RevokeToken {
        id: String,
    },
    /// Sets a principal's quota (`*`: the default); `None` or an unlimited one removes it.
    SetQuota {
        principal: String,
        quota: Option<sluice_proto::auth::Quota>,
    },
    /// [`MetadataCommand::CreatePipeline`] recording the principal the pipeline acts as.
    CreatePipelineAs {
        spec: PipelineSpec,
        owner: String,
    },
    /// [`MetadataCommand::CreateConnector`] recording the principal the connector acts as.
    CreateConnectorAs {
        spec: ConnectorSpec,
        owner: String,
    },
    /// Sets the cluster's decoy secret (docs/security.md) unless it is set: proposed by a
    /// broker that finds none.
    InitDecoySecret {
        secret: Vec<u8>,
    },
}

/// A topic's replication settings (Kafka's `min.insync.replicas` and
/// `unclean.leader.election.enable`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationSettings {
    /// `acks=all` needs this many in-sync replicas; `None`: 2 with three or more replicas,
    /// else 1.
    pub min_insync_replicas: Option<u16>,
    /// A replica outside the in-sync set may lead when no in-sync one is left (losing what it
    /// lacks). Off by default.
    pub unclean_leader_election: bool,
}

impl ReplicationSettings {
    /// The in-sync replicas `acks=all` needs for a partition of `replicas` replicas.
    pub fn min_insync(&self, replicas: usize) -> usize {
        match self.min_insync_replicas {
            Some(n) => usize::from(n),
            None if replicas >= 3 => 2,
            None => 1,
        }
    }
}

/// Most producer ids one [`MetadataCommand::AllocateProducerIdBlock`] may ask for.
pub const MAX_PRODUCER_ID_BLOCK: u32 = 100_000;

/// What a user asks for when creating a pipeline, plus where each input partition starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineSpec {
    pub name: String,
    /// Transform plugins, applied in order.
    pub plugins: Vec<String>,
    pub from: String,
    pub to: String,
    pub config: Vec<(String, String)>,
    pub max_call_ms: Option<u64>,
    pub max_memory_bytes: Option<u64>,
    /// First input offset per input partition, fixed at creation.
    pub start_offsets: Vec<u64>,
}

/// A pipeline as the metadata holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineRecord {
    pub spec: PipelineSpec,
    /// The idempotent producer id (epoch 0) of each input partition's runner.
    pub producer_ids: Vec<i64>,
    pub paused: bool,
    /// Metadata log index of the creating command: unique, so a pipeline deleted and created
    /// again under the same name never reads the old one's checkpoints.
    pub created_index: u64,
}

/// A deployed plugin and its versions (oldest first; the last one runs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginRecord {
    pub name: String,
    pub kind: String,
    pub versions: Vec<PluginVersionRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginVersionRecord {
    pub version: u32,
    pub hash: String,
    pub size_bytes: u64,
    pub deployed_at_ms: i64,
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    #[error("topic {0:?} does not exist")]
    UnknownTopic(String),
    #[error("topic {0:?} already exists")]
    TopicExists(String),
    #[error("invalid topic name: {0}")]
    InvalidName(String),
    #[error("topic {topic:?} has no partition {partition}")]
    UnknownPartition { topic: String, partition: u32 },
    #[error("invalid partition count: {0}")]
    InvalidPartitions(String),
    #[error("invalid topic configuration: {0}")]
    InvalidConfig(String),
    #[error("node {0} is not a registered broker")]
    UnknownBroker(u32),
    /// A command names a broker epoch that is not the node's current one.
    #[error("node {node_id}'s broker epoch {epoch} is stale; its current epoch is {current}")]
    StaleBrokerEpoch {
        node_id: u32,
        epoch: u64,
        current: u64,
    },
    /// A leader's request names a leader epoch that is no longer the partition's.
    #[error(
        "{topic}/{partition}: leader epoch {leader_epoch} is stale; the current one is {current}"
    )]
    StaleLeaderEpoch {
        topic: String,
        partition: u32,
        leader_epoch: u32,
        current: u32,
    },
    /// Every producer id (0..i64::MAX) has been handed out.
    #[error("no producer ids are left")]
    ProducerIdsExhausted,
    #[error("plugin {0:?} is not deployed")]
    UnknownPlugin(String),
    #[error("plugin {plugin:?} is in use by {user}; remove that first")]
    PluginInUse { plugin: String, user: String },
    #[error("pipeline {0:?} does not exist")]
    UnknownPipeline(String),
    #[error("pipeline {0:?} already exists")]
    PipelineExists(String),
    #[error("connector {0:?} does not exist")]
    UnknownConnector(String),
    #[error("connector {0:?} already exists")]
    ConnectorExists(String),
    /// No such user or token.
    #[error("{0} does not exist")]
    UnknownCredential(String),
    /// Progress from a connector task that another task has replaced since.
    #[error("connector {name:?}: this task (generation {generation}) was replaced by a newer one")]
    ConnectorTaskReplaced { name: String, generation: u64 },
    /// The topic is read or written by the `users` (never empty); deleting it needs them gone,
    /// or [`MetadataCommand::DeleteTopicForced`].
    #[error("{}", in_use_message(topic, users))]
    TopicInUse {
        topic: String,
        users: Vec<TopicUser>,
    },
}

/// Something that reads or writes a topic and so keeps it from being deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicUser {
    /// A pipeline that reads the topic (`reads`) or writes it.
    Pipeline { name: String, reads: bool },
    /// A connector that reads the topic (a sink; `reads`) or writes it (a source, or a sink's
    /// dead letters).
    Connector { name: String, reads: bool },
}

impl std::fmt::Display for TopicUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TopicUser::Pipeline { name, reads: true } => write!(f, "read by pipeline {name:?}"),
            TopicUser::Pipeline { name, reads: false } => {
                write!(f, "written by pipeline {name:?}")
            }
            TopicUser::Connector { name, reads: true } => {
                write!(f, "read by connector {name:?}")
            }
            TopicUser::Connector { name, reads: false } => {
                write!(f, "written by connector {name:?}")
            }
        }
    }
}

fn in_use_message(topic: &str, users: &[TopicUser]) -> String {
    let list: Vec<String> = users.iter().map(ToString::to_string).collect();
    let them = match users {
        [TopicUser::Pipeline { .. }] => "the pipeline",
        [TopicUser::Connector { .. }] => "the connector",
        _ => "them",
    };
    format!(
        "topic {topic:?} is {}; delete {them} first or use --force",
        list.join(" and ")
    )
}

/// How many of the latest producer id allocations the state remembers by log index.
pub const RECENT_ALLOCATIONS: usize = 4096;

/// The next input offset a pipeline checkpoint records: the broker writes a checkpoint as a
/// version byte (1) and that offset as a little-endian u64 first, then the rest (opaque here).
/// `None` for bytes of another layout (the checkpoint is then taken as it comes).
pub fn checkpoint_offset(checkpoint: &[u8]) -> Option<u64> {
    match checkpoint {
        [1, offset @ ..] if offset.len() >= 8 => {
            Some(u64::from_le_bytes(offset[..8].try_into().ok()?))
        }
        _ => None,
    }
}

/// Most partitions one topic may have; a guard against typos such as `--partitions 1000000`.
pub const MAX_PARTITIONS: usize = 10_000;

/// The state every node reaches by applying the metadata log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataState {
    brokers: BTreeMap<u32, BrokerRecord>,
    topics: BTreeMap<String, TopicRecord>,
    /// The id the next created topic gets. It only grows (nothing but a create touches it)
    /// and is rebuilt by replaying the log (or kept in a snapshot of this state), so topic ids
    /// are never reused: data stored under an id the metadata no longer holds belongs to a
    /// deleted topic, and the broker removes it at start-up.
    next_topic_id: u64,
    /// The id [`MetadataCommand::AllocateProducerId`] hands out next.
    next_producer_id: i64,
    /// The ids the latest allocations handed out, by the log index of their command (the last
    /// [`RECENT_ALLOCATIONS`]): how a proposer learns its id although other nodes' allocations
    /// may have applied right after its own.
    recent_allocations: BTreeMap<u64, i64>,
    /// Index of the last applied log entry (0 before any).
    applied_index: u64,
    plugins: BTreeMap<String, PluginRecord>,
    pipelines: BTreeMap<String, PipelineRecord>,
    /// Plugin components by content hash, while a plugin version refers to them.
    components: BTreeMap<String, Vec<u8>>,
    /// The latest checkpoint of each pipeline input partition, by pipeline name and partition.
    checkpoints: BTreeMap<(String, u32), Vec<u8>>,
    /// Topics whose replication settings were set, by name.
    replication: BTreeMap<String, ReplicationSettings>,
    connectors: BTreeMap<String, ConnectorRecord>,
    /// Access control bindings.
    acls: acl::Acls,
    /// Users, tokens, quotas and owners: carried by snapshots as a section after this
    /// layout ([`MetadataState::snapshot_sections`]), not in it.
    #[serde(skip)]
    security: security::Security,
}

/// [`MetadataState`] as snapshots written before access control bindings joined it: decoded
/// when the current layout does not fit.
#[derive(Debug, Deserialize)]
pub struct MetadataStateV4 {
    brokers: BTreeMap<u32, BrokerRecord>,
    topics: BTreeMap<String, TopicRecord>,
    next_topic_id: u64,
    next_producer_id: i64,
    recent_allocations: BTreeMap<u64, i64>,
    applied_index: u64,
    plugins: BTreeMap<String, PluginRecord>,
    pipelines: BTreeMap<String, PipelineRecord>,
    components: BTreeMap<String, Vec<u8>>,
    checkpoints: BTreeMap<(String, u32), Vec<u8>>,
    replication: BTreeMap<String, ReplicationSettings>,
    connectors: BTreeMap<String, ConnectorRecord>,
}

impl From<MetadataStateV4> for MetadataState {
    fn from(v4: MetadataStateV4) -> Self {
        MetadataState {
            brokers: v4.brokers,
            topics: v4.topics,
            next_topic_id: v4.next_topic_id,
            next_producer_id: v4.next_producer_id,
            recent_allocations: v4.recent_allocations,
            applied_index: v4.applied_index,
            plugins: v4.plugins,
            pipelines: v4.pipelines,
            components: v4.components,
            checkpoints: v4.checkpoints,
            replication: v4.replication,
            connectors: v4.connectors,
            acls: acl::Acls::default(),
            security: security::Security::default(),
        }
    }
}

/// [`MetadataState`] as snapshots written before connectors joined it: decoded when the
/// current layout does not fit.
#[derive(Debug, Deserialize)]
pub struct MetadataStateV3 {
    brokers: BTreeMap<u32, BrokerRecord>,
    topics: BTreeMap<String, TopicRecord>,
    next_topic_id: u64,
    next_producer_id: i64,
    recent_allocations: BTreeMap<u64, i64>,
    applied_index: u64,
    plugins: BTreeMap<String, PluginRecord>,
    pipelines: BTreeMap<String, PipelineRecord>,
    components: BTreeMap<String, Vec<u8>>,
    checkpoints: BTreeMap<(String, u32), Vec<u8>>,
    replication: BTreeMap<String, ReplicationSettings>,
}

impl From<MetadataStateV3> for MetadataState {
    fn from(v3: MetadataStateV3) -> Self {
        MetadataState {
            brokers: v3.brokers,
            topics: v3.topics,
            next_topic_id: v3.next_topic_id,
            next_producer_id: v3.next_producer_id,
            recent_allocations: v3.recent_allocations,
            applied_index: v3.applied_index,
            plugins: v3.plugins,
            pipelines: v3.pipelines,
            components: v3.components,
            checkpoints: v3.checkpoints,
            replication: v3.replication,
            connectors: BTreeMap::new(),
            acls: acl::Acls::default(),
            security: security::Security::default(),
        }
    }
}

/// [`MetadataState`] as snapshots written before topics' replication settings joined it:
/// decoded when the current layout does not fit.
#[derive(Debug, Deserialize)]
pub struct MetadataStateV2 {
    brokers: BTreeMap<u32, BrokerRecord>,
    topics: BTreeMap<String, TopicRecord>,
    next_topic_id: u64,
    next_producer_id: i64,
    recent_allocations: BTreeMap<u64, i64>,
    applied_index: u64,
    plugins: BTreeMap<String, PluginRecord>,
    pipelines: BTreeMap<String, PipelineRecord>,
    components: BTreeMap<String, Vec<u8>>,
    checkpoints: BTreeMap<(String, u32), Vec<u8>>,
}

impl From<MetadataStateV2> for MetadataState {
    fn from(v2: MetadataStateV2) -> Self {
        MetadataState {
            brokers: v2.brokers,
            topics: v2.topics,
            next_topic_id: v2.next_topic_id,
            next_producer_id: v2.next_producer_id,
            recent_allocations: v2.recent_allocations,
            applied_index: v2.applied_index,
            plugins: v2.plugins,
            pipelines: v2.pipelines,
            components: v2.components,
            checkpoints: v2.checkpoints,
            replication: BTreeMap::new(),
            connectors: BTreeMap::new(),
            acls: acl::Acls::default(),
            security: security::Security::default(),
        }
    }
}

/// [`MetadataState`] as snapshots written before plugin components and pipeline checkpoints
/// joined it hold it: decoded when the current layout does not fit.
#[derive(Debug, Deserialize)]
pub struct MetadataStateV1 {
    brokers: BTreeMap<u32, BrokerRecord>,
    topics: BTreeMap<String, TopicRecord>,
    next_topic_id: u64,
    next_producer_id: i64,
    recent_allocations: BTreeMap<u64, i64>,
    applied_index: u64,
    plugins: BTreeMap<String, PluginRecord>,
    pipelines: BTreeMap<String, PipelineRecord>,
}

impl From<MetadataStateV1> for MetadataState {
    fn from(v1: MetadataStateV1) -> Self {
        MetadataState {
            brokers: v1.brokers,
            topics: v1.topics,
            next_topic_id: v1.next_topic_id,
            next_producer_id: v1.next_producer_id,
            recent_allocations: v1.recent_allocations,
            applied_index: v1.applied_index,
            plugins: v1.plugins,
            pipelines: v1.pipelines,
            components: BTreeMap::new(),
            checkpoints: BTreeMap::new(),
            replication: BTreeMap::new(),
            connectors: BTreeMap::new(),
            acls: acl::Acls::default(),
            security: security::Security::default(),
        }
    }
}

impl MetadataState {
    pub fn new() -> Self {
        MetadataState {
            next_topic_id: 1,
            ..Default::default()
        }
    }

    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// A deployed plugin component by content hash, if the log carried its bytes.
    pub fn component(&self, hash: &str) -> Option<&[u8]> {
        self.components.get(hash).map(Vec::as_slice)
    }

    /// The latest checkpoint of input partition `partition` of pipeline `name`.
    pub fn pipeline_checkpoint(&self, name: &str, partition: u32) -> Option<&[u8]> {
        self.checkpoints
            .get(&(name.to_owned(), partition))
            .map(Vec::as_slice)
    }

    /// The topic with id `topic_id` (a scan: topics are kept by name).
    pub fn topic_by_id(&self, topic_id: u64) -> Option<&TopicRecord> {
        self.topics.values().find(|t| t.topic_id == topic_id)
    }

    pub fn topic(&self, name: &str) -> Option<&TopicRecord> {
        self.topics.get(name)
    }

    /// A topic's replication settings (the defaults unless set).
    pub fn replication_settings(&self, topic: &str) -> ReplicationSettings {
        self.replication.get(topic).copied().unwrap_or_default()
    }

    /// Partitions an unclean election could give a leader: leaderless, no live in-sync
    /// replica, a live replica outside the set, in a topic that opted in; with that replica
    /// (the first live one in replica order).
    pub fn unclean_elections(&self) -> Vec<(String, u32, u32)> {
        let live: BTreeSet<u32> = self.live_brokers().map(|b| b.node_id).collect();
        self.topics
            .values()
            .filter(|t| self.replication_settings(&t.name).unclean_leader_election)
            .flat_map(|t| {
                let live = &live;
                t.partitions.iter().enumerate().filter_map(move |(i, p)| {
                    if p.leader.is_some() || p.in_sync.iter().any(|r| live.contains(r)) {
                        return None;
                    }
                    let leader = p.replicas.iter().find(|r| live.contains(r))?;
                    Some((t.name.clone(), i as u32, *leader))
                })
            })
            .collect()
    }

    pub fn topics(&self) -> impl Iterator<Item = &TopicRecord> {
        self.topics.values()
    }

    /// The (first) producer id the [`MetadataCommand::AllocateProducerId`] (or
    /// [`MetadataCommand::AllocateProducerIdBlock`]) at log index `index` handed out, while it
    /// is among the latest allocations.
    pub fn producer_id_allocated_at(&self, index: u64) -> Option<i64> {
        self.recent_allocations.get(&index).copied()
    }

    /// The id the next allocation hands out; the last one allocated is this minus one.
    pub fn next_producer_id(&self) -> i64 {
        self.next_producer_id
    }

    pub fn plugin(&self, name: &str) -> Option<&PluginRecord> {
        self.plugins.get(name)
    }

    pub fn plugins(&self) -> impl Iterator<Item = &PluginRecord> {
        self.plugins.values()
    }

    pub fn connector(&self, name: &str) -> Option<&ConnectorRecord> {
        self.connectors.get(name)
    }

    /// The access control bindings.
    /// Users, tokens, quotas and the principals pipelines and connectors act as.
    pub fn security(&self) -> &security::Security {
        &self.security
    }

    /// The principal pipeline `name` acts as (`None`: created before owners were recorded).
    pub fn pipeline_principal(&self, name: &str) -> Option<&str> {
        let p = self.pipelines.get(name)?;
        self.security
            .owner(acl::ResourceType::Pipeline, name, p.created_index)
    }

    /// The principal connector `name` acts as (`None`: created before owners were recorded).
    pub fn connector_principal(&self, name: &str) -> Option<&str> {
        let c = self.connectors.get(name)?;
        self.security
            .owner(acl::ResourceType::Connector, name, c.created_index)
    }

    /// The snapshot sections that follow this state's fixed layout in a snapshot.
    pub fn snapshot_sections(&self) -> Vec<u8> {
        security::encode_sections(&self.security)
    }

    /// Restores what [`MetadataState::snapshot_sections`] wrote (nothing, for a snapshot from
    /// before sections).
    pub fn restore_sections(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.security = security::decode_sections(bytes)?;
        Ok(())
    }

    fn validate_owner(&self, owner: &str) -> Result<(), MetadataError> {
        if owner.is_empty()
            || owner.len() > acl::MAX_ACL_TEXT
            || owner.chars().any(char::is_control)
        {
            return Err(MetadataError::InvalidConfig(
                "an owner is a principal of 1 to 256 bytes, no control characters".into(),
            ));
        }
        Ok(())
    }

    pub fn acls(&self) -> &acl::Acls {
        &self.acls
    }

    pub fn connectors(&self) -> impl Iterator<Item = &ConnectorRecord> {
        self.connectors.values()
    }

    /// The live broker connector `name` runs on ([`connectors::owner_of`]).
    pub fn connector_owner(&self, name: &str) -> Option<u32> {
        connectors::owner_of(name, self.live_brokers().map(|b| b.node_id))
    }

    pub fn pipeline(&self, name: &str) -> Option<&PipelineRecord> {
        self.pipelines.get(name)
    }

    pub fn pipelines(&self) -> impl Iterator<Item = &PipelineRecord> {
        self.pipelines.values()
    }

    /// Everything that reads or writes topic `name`, in name order.
    pub fn topic_users(&self, name: &str) -> Vec<TopicUser> {
        let mut users = Vec::new();
        for p in self.pipelines.values() {
            if p.spec.from == name {
                users.push(TopicUser::Pipeline {
                    name: p.spec.name.clone(),
                    reads: true,
                });
            }
            if p.spec.to == name {
                users.push(TopicUser::Pipeline {
                    name: p.spec.name.clone(),
                    reads: false,
                });
            }
        }
        for c in self.connectors.values() {
            if c.uses_topic(name) {
                users.push(TopicUser::Connector {
                    name: c.spec.name.clone(),
                    reads: c.spec.kind == ConnectorKind::Sink
                        && c.spec.topics.iter().any(|t| t == name),
                });
            }
        }
        users
    }

    pub fn broker(&self, node_id: u32) -> Option<&BrokerRecord> {
        self.brokers.get(&node_id)
    }

    /// Registered brokers that are not fenced: those that may lead and hold new partitions.
    pub fn live_brokers(&self) -> impl Iterator<Item = &BrokerRecord> {
        self.brokers.values().filter(|b| !b.fenced)
    }

    pub fn brokers(&self) -> impl Iterator<Item = &BrokerRecord> {
        self.brokers.values()
    }

    /// Checks that `cmd` can be applied to the current state.
    pub fn validate(&self, cmd: &MetadataCommand) -> Result<(), MetadataError> {
        match cmd {
            MetadataCommand::RegisterBroker { .. }
            | MetadataCommand::RegisterBrokerEpoch { .. }
            | MetadataCommand::RegisterBrokerLife { .. } => Ok(()),
            MetadataCommand::AlterTopicReplication {
                topic,
                min_insync_replicas,
                ..
            } => {
                let t = self.existing(topic)?;
                let replicas = t.partitions.first().map_or(1, |p| p.replicas.len());
                if let Some(n) = min_insync_replicas
                    && (*n == 0 || usize::from(*n) > replicas)
                {
                    return Err(MetadataError::InvalidConfig(format!(
                        "min.insync.replicas {n} for {topic}: must be between 1 and its {replicas} \
                         replica(s)"
                    )));
                }
                Ok(())
            }
            MetadataCommand::ElectUncleanLeader {
                topic,
                partition,
                leader,
            } => {
                if !self
                    .unclean_elections()
                    .contains(&(topic.clone(), *partition, *leader))
                {
                    return Err(MetadataError::InvalidConfig(format!(
                        "{topic}/{partition}: node {leader} may not lead uncleanly (the topic must \
                         allow it, the partition be leaderless with no live in-sync replica, and \
                         node {leader} be its first live replica)"
                    )));
                }
                Ok(())
            }
            MetadataCommand::ElectPreferredLeader { topic, partition } => {
                let p = self.existing_partition(topic, *partition)?;
                let preferred = p.replicas[0];
                let live = self.brokers.get(&preferred).is_some_and(|b| !b.fenced);
                if p.leader == Some(preferred) || !live || !p.in_sync.contains(&preferred) {
                    return Err(MetadataError::InvalidConfig(format!(
                        "{topic}/{partition}: the preferred replica {preferred} {}",
                        if p.leader == Some(preferred) {
                            "leads already"
                        } else if !live {
                            "is not live"
                        } else {
                            "is not in sync"
                        }
                    )));
                }
                Ok(())
            }
            MetadataCommand::FenceBroker { node_id, epoch } => {
                let b = self
                    .brokers
                    .get(node_id)
                    .ok_or(MetadataError::UnknownBroker(*node_id))?;
                if b.epoch != *epoch {
                    return Err(MetadataError::StaleBrokerEpoch {
                        node_id: *node_id,
                        epoch: *epoch,
                        current: b.epoch,
                    });
                }
                Ok(())
            }
            MetadataCommand::CreateTopic {
                name,
                config,
                assignments,
            }
            | MetadataCommand::CreateInternalTopic {
                name,
                config,
                assignments,
            } => {
                let internal = matches!(cmd, MetadataCommand::CreateInternalTopic { .. });
                match name.strip_prefix("__") {
                    Some(rest) if internal => sluice_proto::validate_topic_name(rest)
                        .map_err(MetadataError::InvalidName)?,
                    None if internal => {
                        return Err(MetadataError::InvalidName(format!(
                            "internal topic {name:?} must start with '__'"
                        )));
                    }
                    _ => sluice_proto::validate_topic_name(name)
                        .map_err(MetadataError::InvalidName)?,
                }
                if self.topics.contains_key(name) {
                    return Err(MetadataError::TopicExists(name.clone()));
                }
                if assignments.is_empty() {
                    return Err(MetadataError::InvalidPartitions(
                        "a topic needs at least one partition".into(),
                    ));
                }
                self.validate_assignments(assignments, 0)?;
                self.validate_config(config)
            }
            MetadataCommand::DeleteTopic { name } => {
                self.existing(name)?;
                let users = self.topic_users(name);
                if users.is_empty() {
                    Ok(())
                } else {
                    Err(MetadataError::TopicInUse {
                        topic: name.clone(),
                        users,
                    })
                }
            }
            MetadataCommand::DeleteTopicForced { name } => self.existing(name).map(|_| ()),
            MetadataCommand::AddPartitions { name, assignments } => {
                let topic = self.existing(name)?;
                if assignments.is_empty() {
                    return Err(MetadataError::InvalidPartitions(
                        "add at least one partition".into(),
                    ));
                }
                self.validate_assignments(assignments, topic.partitions.len())
            }
            MetadataCommand::SetLeader {
                topic,
                partition,
                leader,
                in_sync,
            } => {
                let p = self.existing_partition(topic, *partition)?;
                for node in leader.iter().chain(in_sync) {
                    if !p.replicas.contains(node) {
                        return Err(MetadataError::InvalidPartitions(format!(
                            "node {node} is not a replica of {topic}/{partition}"
                        )));
                    }
                }
                Ok(())
            }
            MetadataCommand::SetTopicConfig { name, config } => {
                self.existing(name)?;
                self.validate_config(config)
            }
            MetadataCommand::DeployPlugin { name, kind, .. }
            | MetadataCommand::DeployPluginComponent { name, kind, .. } => {
                sluice_proto::validate_topic_name(name).map_err(|e| {
                    MetadataError::InvalidName(e.replace("topic name", "plugin name"))
                })?;
                match self.plugins.get(name) {
                    Some(p) if &p.kind != kind => Err(MetadataError::InvalidConfig(format!(
                        "plugin {name:?} is a {}; a new version must be one too, not a {kind}",
                        p.kind
                    ))),
                    _ => Ok(()),
                }
            }
            MetadataCommand::DeletePlugin { name } => {
                if !self.plugins.contains_key(name) {
                    return Err(MetadataError::UnknownPlugin(name.clone()));
                }
                if let Some(t) = self
                    .topics
                    .values()
                    .find(|t| t.config.partitioner.as_deref() == Some(name.as_str()))
                {
                    return Err(MetadataError::PluginInUse {
                        plugin: name.clone(),
                        user: format!("topic {:?} (its partitioner)", t.name),
                    });
                }
                if let Some(p) = self
                    .pipelines
                    .values()
                    .find(|p| p.spec.plugins.contains(name))
                {
                    return Err(MetadataError::PluginInUse {
                        plugin: name.clone(),
                        user: format!("pipeline {:?}", p.spec.name),
                    });
                }
                Ok(())
            }
            MetadataCommand::CreatePipeline(spec) => {
                sluice_proto::validate_topic_name(&spec.name).map_err(|e| {
                    MetadataError::InvalidName(e.replace("topic name", "pipeline name"))
                })?;
                if self.pipelines.contains_key(&spec.name) {
                    return Err(MetadataError::PipelineExists(spec.name.clone()));
                }
                let from = self.existing(&spec.from)?;
                self.existing(&spec.to)?;
                if spec.from == spec.to {
                    return Err(MetadataError::InvalidConfig(
                        "a pipeline cannot write to its own input topic".into(),
                    ));
                }
                if let Some(t) = [&spec.from, &spec.to].iter().find(|t| t.starts_with("__")) {
                    return Err(MetadataError::InvalidConfig(format!(
                        "{t:?} is an internal topic; pipelines read and write user topics"
                    )));
                }
                if spec.plugins.is_empty() {
                    return Err(MetadataError::InvalidConfig(
                        "a pipeline needs at least one plugin".into(),
                    ));
                }
                if let Some(p) = spec.plugins.iter().find(|p| !self.plugins.contains_key(*p)) {
                    return Err(MetadataError::UnknownPlugin(p.clone()));
                }
                if spec.start_offsets.len() != from.partitions.len() {
                    return Err(MetadataError::InvalidConfig(format!(
                        "{} start offsets for {} input partitions",
                        spec.start_offsets.len(),
                        from.partitions.len()
                    )));
                }
                if self.next_producer_id > i64::MAX - spec.start_offsets.len() as i64 {
                    return Err(MetadataError::ProducerIdsExhausted);
                }
                Ok(())
            }
            MetadataCommand::PipelineCheckpoint {
                name,
                created_index,
                partition,
                ..
            } => match self.pipelines.get(name) {
                Some(p)
                    if p.created_index == *created_index
                        && (*partition as usize) < p.spec.start_offsets.len() =>
                {
                    Ok(())
                }
                _ => Err(MetadataError::UnknownPipeline(name.clone())),
            },
            MetadataCommand::CreateConnector(spec) => self.validate_connector(spec),
            MetadataCommand::CreatePipelineAs { spec, owner } => {
                self.validate_owner(owner)?;
                self.validate(&MetadataCommand::CreatePipeline(spec.clone()))
            }
            MetadataCommand::CreateConnectorAs { spec, owner } => {
                self.validate_owner(owner)?;
                self.validate_connector(spec)
            }
            MetadataCommand::UpsertUser { name, credential } => self
                .security
                .validate_user(name, credential)
                .map_err(MetadataError::InvalidConfig),
            MetadataCommand::DeleteUser { name } => {
                if self.security.has_user(name) {
                    Ok(())
                } else {
                    Err(MetadataError::UnknownCredential(format!("user {name:?}")))
                }
            }
            MetadataCommand::CreateToken { id, token } => self
                .security
                .validate_token(id, token)
                .map_err(MetadataError::InvalidConfig),
            MetadataCommand::RevokeToken { id } => {
                if self.security.has_token(id) {
                    Ok(())
                } else {
                    Err(MetadataError::UnknownCredential(format!("token {id}")))
                }
            }
            MetadataCommand::SetQuota { principal, quota } => self
                .security
                .validate_quota(principal, &quota.unwrap_or_default())
                .map_err(MetadataError::InvalidConfig),
            MetadataCommand::InitDecoySecret { secret } => {
                if (16..=64).contains(&secret.len()) {
                    Ok(())
                } else {
                    Err(MetadataError::InvalidConfig(
                        "a decoy secret is 16 to 64 bytes".into(),
                    ))
                }
            }
            MetadataCommand::AddAcl(binding) => {
                binding.validate().map_err(MetadataError::InvalidConfig)?;
                if !self.acls.iter().any(|b| b == binding) && self.acls.len() >= acl::MAX_ACLS {
                    return Err(MetadataError::InvalidConfig(format!(
                        "the cluster holds {} ACL bindings, the most it takes",
                        acl::MAX_ACLS
                    )));
                }
                Ok(())
            }
            MetadataCommand::RemoveAcl(_) => Ok(()),
            MetadataCommand::SetConnectorPaused { name, .. }
            | MetadataCommand::DeleteConnector { name } => {
                if self.connectors.contains_key(name) {
                    Ok(())
                } else {
                    Err(MetadataError::UnknownConnector(name.clone()))
                }
            }
            MetadataCommand::ConnectorStarted {
                name,
                created_index,
                ..
            }
            | MetadataCommand::ConnectorFailed {
                name,
                created_index,
                ..
            } => self.connector_of(name, *created_index, None).map(|_| ()),
            MetadataCommand::ConnectorIntent {
                name,
                created_index,
                generation,
                ..
            }
            | MetadataCommand::ConnectorOffsets {
                name,
                created_index,
                generation,
                ..
            } => self
                .connector_of(name, *created_index, Some(*generation))
                .map(|_| ()),
            MetadataCommand::SetPipelinePaused { name, .. }
            | MetadataCommand::DeletePipeline { name } => {
                if self.pipelines.contains_key(name) {
                    Ok(())
                } else {
                    Err(MetadataError::UnknownPipeline(name.clone()))
                }
            }
            MetadataCommand::AlterInSync {
                topic,
                partition,
                leader,
                leader_epoch,
                in_sync,
            } => {
                let p = self.existing_partition(topic, *partition)?;
                if p.leader != Some(*leader) || p.leader_epoch != *leader_epoch {
                    return Err(MetadataError::StaleLeaderEpoch {
                        topic: topic.clone(),
                        partition: *partition,
                        leader_epoch: *leader_epoch,
                        current: p.leader_epoch,
                    });
                }
                let unique: BTreeSet<&u32> = in_sync.iter().collect();
                if unique.len() != in_sync.len()
                    || !in_sync.contains(leader)
                    || in_sync.iter().any(|n| !p.replicas.contains(n))
                {
                    return Err(MetadataError::InvalidConfig(format!(
                        "{topic}/{partition}: in-sync set {in_sync:?} must hold the leader \
                         {leader}, once each, and only replicas of {:?}",
                        p.replicas
                    )));
                }
                Ok(())
            }
            MetadataCommand::UnregisterBroker { node_id } => {
                if !self.brokers.contains_key(node_id) {
                    return Err(MetadataError::UnknownBroker(*node_id));
                }
                let held: Vec<String> = self
                    .topics
                    .values()
                    .flat_map(|t| {
                        t.partitions
                            .iter()
                            .enumerate()
                            .filter(|(_, p)| {
                                p.leader == Some(*node_id) || p.replicas.contains(node_id)
                            })
                            .map(move |(i, _)| format!("{}/{i}", t.name))
                    })
                    .collect();
                if !held.is_empty() {
                    let shown: Vec<&str> = held.iter().take(10).map(String::as_str).collect();
                    return Err(MetadataError::InvalidConfig(format!(
                        "node {node_id} still holds {} partition(s) ({}{}); move them to other \
                         brokers or delete their topics first",
                        held.len(),
                        shown.join(", "),
                        if held.len() > shown.len() {
                            ", ..."
                        } else {
                            ""
                        }
                    )));
                }
                Ok(())
            }
            MetadataCommand::AllocateProducerIdBlock { count, .. } => {
                if *count == 0 || *count > MAX_PRODUCER_ID_BLOCK {
                    return Err(MetadataError::InvalidConfig(format!(
                        "a producer id block holds 1..={MAX_PRODUCER_ID_BLOCK} ids, not {count}"
                    )));
                }
                if self.next_producer_id > i64::MAX - i64::from(*count) {
                    return Err(MetadataError::ProducerIdsExhausted);
                }
                Ok(())
            }
            MetadataCommand::AllocateProducerId => {
                if self.next_producer_id == i64::MAX {
                    return Err(MetadataError::ProducerIdsExhausted);
                }
                Ok(())
            }
        }
    }

    fn register(
        &mut self,
        index: u64,
        node_id: u32,
        addr: &str,
        peer_addr: Option<String>,
        rack: Option<String>,
    ) {
        self.brokers.insert(
            node_id,
            BrokerRecord {
                node_id,
                addr: addr.to_owned(),
                peer_addr,
                rack,
                epoch: index,
                fenced: false,
            },
        );
    }

    fn add_plugin_version(
        &mut self,
        name: &str,
        kind: &str,
        hash: &str,
        size_bytes: u64,
        deployed_at_ms: i64,
    ) {
        let p = self
            .plugins
            .entry(name.to_owned())
            .or_insert_with(|| PluginRecord {
                name: name.to_owned(),
                kind: kind.to_owned(),
                versions: Vec::new(),
            });
        let version = p.versions.last().map_or(1, |v| v.version + 1);
        p.versions.push(PluginVersionRecord {
            version,
            hash: hash.to_owned(),
            size_bytes,
            deployed_at_ms,
        });
    }

    /// The connector `name` of `created_index`; with `generation`, only if no newer task
    /// started since.
    fn connector_of(
        &self,
        name: &str,
        created_index: u64,
        generation: Option<u64>,
    ) -> Result<&ConnectorRecord, MetadataError> {
        let c = self
            .connectors
            .get(name)
            .filter(|c| c.created_index == created_index)
            .ok_or_else(|| MetadataError::UnknownConnector(name.to_owned()))?;
        match generation {
            Some(g) if g != c.generation => Err(MetadataError::ConnectorTaskReplaced {
                name: name.to_owned(),
                generation: g,
            }),
            _ => Ok(c),
        }
    }

    fn validate_connector(&self, spec: &ConnectorSpec) -> Result<(), MetadataError> {
        sluice_proto::validate_topic_name(&spec.name)
            .map_err(|e| MetadataError::InvalidName(e.replace("topic name", "connector name")))?;
        if self.connectors.contains_key(&spec.name) {
            return Err(MetadataError::ConnectorExists(spec.name.clone()));
        }
        let plugin = self
            .plugins
            .get(&spec.plugin)
            .ok_or_else(|| MetadataError::UnknownPlugin(spec.plugin.clone()))?;
        if plugin.kind != spec.kind.as_str() {
            return Err(MetadataError::InvalidConfig(format!(
                "plugin {:?} is a {}, not a {} connector",
                spec.plugin,
                plugin.kind,
                spec.kind.as_str()
            )));
        }
        match (spec.kind, spec.topics.len()) {
            (ConnectorKind::Source, 1) | (ConnectorKind::Sink, 1..) => {}
            (ConnectorKind::Source, _) => {
                return Err(MetadataError::InvalidConfig(
                    "a source connector writes exactly one topic (`topic = \"...\"`)".into(),
                ));
            }
            (ConnectorKind::Sink, _) => {
                return Err(MetadataError::InvalidConfig(
                    "a sink connector reads at least one topic (`topics = [...]`)".into(),
                ));
            }
        }
        for t in spec.topics.iter().chain(&spec.dead_letter_topic) {
            self.existing(t)?;
            if t.starts_with("__") {
                return Err(MetadataError::InvalidConfig(format!(
                    "{t:?} is an internal topic; connectors read and write user topics"
                )));
            }
        }
        if let Some(t) = spec
            .transforms
            .iter()
            .find(|t| self.plugins.get(*t).is_none_or(|p| p.kind != "transform"))
        {
            return Err(MetadataError::UnknownPlugin(format!("{t} (a transform)")));
        }
        if self.next_producer_id == i64::MAX {
            return Err(MetadataError::ProducerIdsExhausted);
        }
        Ok(())
    }

    fn existing(&self, name: &str) -> Result<&TopicRecord, MetadataError> {
        self.topics
            .get(name)
            .ok_or_else(|| MetadataError::UnknownTopic(name.to_owned()))
    }

    fn existing_partition(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<&PartitionRecord, MetadataError> {
        self.existing(topic)?
            .partitions
            .get(partition as usize)
            .ok_or_else(|| MetadataError::UnknownPartition {
                topic: topic.to_owned(),
                partition,
            })
    }

    fn validate_assignments(
        &self,
        assignments: &[Vec<u32>],
        existing: usize,
    ) -> Result<(), MetadataError> {
        if existing + assignments.len() > MAX_PARTITIONS {
            return Err(MetadataError::InvalidPartitions(format!(
                "{} partitions requested in all; the limit is {MAX_PARTITIONS}",
                existing + assignments.len()
            )));
        }
        for replicas in assignments {
            if replicas.is_empty() {
                return Err(MetadataError::InvalidPartitions(
                    "a partition needs at least one replica".into(),
                ));
            }
            for (i, node) in replicas.iter().enumerate() {
                if !self.brokers.contains_key(node) {
                    return Err(MetadataError::UnknownBroker(*node));
                }
                if replicas[..i].contains(node) {
                    return Err(MetadataError::InvalidPartitions(format!(
                        "node {node} listed twice as a replica"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Applies the log entry at `index`. Refused commands leave the state unchanged except
    /// for the applied index, so every node that applies the same log agrees.
    pub fn apply(&mut self, index: u64, cmd: &MetadataCommand) -> Result<(), MetadataError> {
        self.applied_index = index;
        self.validate(cmd)?;
        match cmd {
            MetadataCommand::RegisterBroker { node_id, addr } => {
                self.register(index, *node_id, addr, None, None);
            }
            MetadataCommand::RegisterBrokerEpoch {
                node_id,
                addr,
                peer_addr,
                rack,
            } => {
                self.register(index, *node_id, addr, peer_addr.clone(), rack.clone());
                for p in self
                    .topics
                    .values_mut()
                    .flat_map(|t| t.partitions.iter_mut())
                {
                    if p.leader.is_none() && p.in_sync.contains(node_id) {
                        p.leader = Some(*node_id);
                        p.leader_epoch += 1;
                    }
                }
            }
            MetadataCommand::RegisterBrokerLife {
                node_id,
                addr,
                peer_addr,
                rack,
                fresh,
            } => {
                self.register(index, *node_id, addr, peer_addr.clone(), rack.clone());
                let live: BTreeSet<u32> = self
                    .live_brokers()
                    .map(|b| b.node_id)
                    .filter(|n| n != node_id)
                    .collect();
                for p in self
                    .topics
                    .values_mut()
                    .flat_map(|t| t.partitions.iter_mut())
                    .filter(|p| p.replicas.contains(node_id))
                {
                    let last = p.in_sync == [*node_id];
                    let was_in_sync = p.in_sync.contains(node_id);
                    if *fresh || !last {
                        p.in_sync.retain(|n| n != node_id);
                    }
                    let was_leader = p.leader == Some(*node_id);
                    if was_leader || p.leader.is_none() {
                        let next = p
                            .replicas
                            .iter()
                            .find(|r| p.in_sync.contains(r) && live.contains(r))
                            .copied()
                            .or((last && !*fresh).then_some(*node_id));
                        if next != p.leader || was_leader {
                            p.leader = next;
                            p.leader_epoch += 1;
                        }
                    } else if was_in_sync && !p.in_sync.contains(node_id) {
                        // The leader stays, in a new epoch: an in-sync change it proposed
                        // before it learned of this node's new life (counting what the old
                        // life held) is then refused as stale.
                        p.leader_epoch += 1;
                    }
                }
            }
            MetadataCommand::ElectPreferredLeader { topic, partition } => {
                let p = &mut self.topics.get_mut(topic).expect("validated").partitions
                    [*partition as usize];
                p.leader = Some(p.replicas[0]);
                p.leader_epoch += 1;
            }
            MetadataCommand::AlterTopicReplication {
                topic,
                min_insync_replicas,
                unclean_leader_election,
            } => {
                let s = self.replication.entry(topic.clone()).or_default();
                if min_insync_replicas.is_some() {
                    s.min_insync_replicas = *min_insync_replicas;
                }
                if let Some(u) = unclean_leader_election {
                    s.unclean_leader_election = *u;
                }
            }
            MetadataCommand::ElectUncleanLeader {
                topic,
                partition,
                leader,
            } => {
                let p = &mut self.topics.get_mut(topic).expect("validated").partitions
                    [*partition as usize];
                p.leader = Some(*leader);
                p.in_sync = vec![*leader];
                p.leader_epoch += 1;
            }
            MetadataCommand::FenceBroker { node_id, .. } => {
                self.brokers.get_mut(node_id).expect("validated").fenced = true;
                let live: BTreeSet<u32> = self.live_brokers().map(|b| b.node_id).collect();
                for p in self
                    .topics
                    .values_mut()
                    .flat_map(|t| t.partitions.iter_mut())
                {
                    if p.in_sync.len() > 1 {
                        p.in_sync.retain(|n| n != node_id);
                    }
                    if p.leader == Some(*node_id) {
                        // Another in-sync replica takes over, first in replica order among
                        // the live ones; with none, the partition waits for its last in-sync
                        // replica to return.
                        p.leader = p
                            .replicas
                            .iter()
                            .find(|r| p.in_sync.contains(r) && live.contains(r))
                            .copied();
                        p.leader_epoch += 1;
                    }
                }
            }
            MetadataCommand::AlterInSync {
                topic,
                partition,
                in_sync,
                ..
            } => {
                let p = &mut self.topics.get_mut(topic).expect("validated").partitions
                    [*partition as usize];
                p.in_sync = p
                    .replicas
                    .iter()
                    .filter(|r| in_sync.contains(r))
                    .copied()
                    .collect();
            }
            MetadataCommand::CreateTopic {
                name,
                config,
                assignments,
            }
            | MetadataCommand::CreateInternalTopic {
                name,
                config,
                assignments,
            } => {
                let topic_id = self.next_topic_id;
                self.next_topic_id += 1;
                self.topics.insert(
                    name.clone(),
                    TopicRecord {
                        name: name.clone(),
                        topic_id,
                        config: config.clone(),
                        partitions: assignments.iter().map(|r| new_partition(r)).collect(),
                    },
                );
            }
            MetadataCommand::DeleteTopic { name } => {
                self.topics.remove(name);
                self.replication.remove(name);
            }
            MetadataCommand::DeleteTopicForced { name } => {
                self.pipelines
                    .retain(|_, p| p.spec.from != *name && p.spec.to != *name);
                self.connectors.retain(|_, c| !c.uses_topic(name));
                let pipelines = &self.pipelines;
                self.checkpoints
                    .retain(|(pipeline, _), _| pipelines.contains_key(pipeline));
                self.topics.remove(name);
                self.replication.remove(name);
            }
            MetadataCommand::AddPartitions { name, assignments } => {
                let topic = self.topics.get_mut(name).expect("validated");
                topic
                    .partitions
                    .extend(assignments.iter().map(|r| new_partition(r)));
            }
            MetadataCommand::SetLeader {
                topic,
                partition,
                leader,
                in_sync,
            } => {
                let p = &mut self.topics.get_mut(topic).expect("validated").partitions
                    [*partition as usize];
                p.leader = *leader;
                p.in_sync = in_sync.clone();
                p.leader_epoch += 1;
            }
            MetadataCommand::SetTopicConfig { name, config } => {
                self.topics.get_mut(name).expect("validated").config = config.clone();
            }
            MetadataCommand::DeployPluginComponent {
                name,
                kind,
                hash,
                deployed_at_ms,
                wasm,
            } => {
                self.components.insert(hash.clone(), wasm.clone());
                self.add_plugin_version(name, kind, hash, wasm.len() as u64, *deployed_at_ms);
            }
            MetadataCommand::DeployPlugin {
                name,
                kind,
                hash,
                size_bytes,
                deployed_at_ms,
            } => {
                self.add_plugin_version(name, kind, hash, *size_bytes, *deployed_at_ms);
            }
            MetadataCommand::DeletePlugin { name } => {
                self.plugins.remove(name);
                let used: BTreeSet<&String> = self
                    .plugins
                    .values()
                    .flat_map(|p| p.versions.iter().map(|v| &v.hash))
                    .collect();
                self.components.retain(|hash, _| used.contains(hash));
            }
            MetadataCommand::CreatePipeline(spec) => {
                let first = self.next_producer_id;
                let n = spec.start_offsets.len() as i64;
                self.next_producer_id += n;
                self.pipelines.insert(
                    spec.name.clone(),
                    PipelineRecord {
                        spec: spec.clone(),
                        producer_ids: (first..first + n).collect(),
                        paused: false,
                        created_index: index,
                    },
                );
            }
            MetadataCommand::CreateConnector(spec) => {
                let id = self.next_producer_id;
                self.next_producer_id += 1;
                self.connectors.insert(
                    spec.name.clone(),
                    ConnectorRecord::new(spec.clone(), index, id),
                );
            }
            MetadataCommand::SetConnectorPaused { name, paused } => {
                self.connectors.get_mut(name).expect("validated").paused = *paused;
            }
            MetadataCommand::DeleteConnector { name } => {
                self.connectors.remove(name);
            }
            MetadataCommand::ConnectorStarted { name, node, .. } => {
                let c = self.connectors.get_mut(name).expect("validated");
                c.generation += 1;
                c.owner = Some(*node);
            }
            MetadataCommand::ConnectorIntent { name, intent, .. } => {
                let c = self.connectors.get_mut(name).expect("validated");
                c.record_intent(intent);
            }
            MetadataCommand::ConnectorOffsets { name, offsets, .. } => {
                let c = self.connectors.get_mut(name).expect("validated");
                for (topic, partition, next) in offsets {
                    c.offsets.insert((topic.clone(), *partition), *next);
                }
            }
            MetadataCommand::ConnectorFailed {
                name, at_ms, error, ..
            } => {
                let c = self.connectors.get_mut(name).expect("validated");
                c.failures += 1;
                c.last_error = Some((*at_ms, error.clone()));
            }
            MetadataCommand::AddAcl(binding) => {
                self.acls
                    .add(binding.clone())
                    .map_err(MetadataError::InvalidConfig)?;
            }
            MetadataCommand::CreatePipelineAs { spec, owner } => {
                self.apply(index, &MetadataCommand::CreatePipeline(spec.clone()))?;
                self.security
                    .set_owner(acl::ResourceType::Pipeline, &spec.name, index, owner);
            }
            MetadataCommand::CreateConnectorAs { spec, owner } => {
                self.apply(index, &MetadataCommand::CreateConnector(spec.clone()))?;
                self.security
                    .set_owner(acl::ResourceType::Connector, &spec.name, index, owner);
            }
            MetadataCommand::UpsertUser { name, credential } => {
                self.security.upsert_user(name, credential);
            }
            MetadataCommand::DeleteUser { name } => self.security.delete_user(name),
            MetadataCommand::CreateToken { id, token } => self.security.add_token(id, token),
            MetadataCommand::RevokeToken { id } => self.security.revoke_token(id),
            MetadataCommand::SetQuota { principal, quota } => {
                self.security.set_quota(principal, quota.as_ref());
            }
            MetadataCommand::InitDecoySecret { secret } => {
                self.security.init_decoy_secret(secret);
            }
            MetadataCommand::RemoveAcl(binding) => {
                self.acls.remove(binding);
            }
            MetadataCommand::SetPipelinePaused { name, paused } => {
                self.pipelines.get_mut(name).expect("validated").paused = *paused;
            }
            MetadataCommand::DeletePipeline { name } => {
                self.pipelines.remove(name);
                self.checkpoints.retain(|(pipeline, _), _| pipeline != name);
            }
            MetadataCommand::PipelineCheckpoint {
                name,
                partition,
                checkpoint,
                ..
            } => {
                // Checkpoints only move forward. A runner that lost its input partition to
                // another broker may still commit the checkpoint of a step it had under way,
                // after the new runner's later ones: taken, it would send the next runner back
                // to input whose output is already past the 5 batches a partition remembers
                // per producer, and every replay would be refused as out of order (found by
                // the fault harness).
                let key = (name.clone(), *partition);
                let behind = match (
                    self.checkpoints
                        .get(&key)
                        .and_then(|c| checkpoint_offset(c)),
                    checkpoint_offset(checkpoint),
                ) {
                    (Some(stored), Some(new)) => new < stored,
                    _ => false,
                };
                if !behind {
                    self.checkpoints.insert(key, checkpoint.clone());
                }
            }
            MetadataCommand::UnregisterBroker { node_id } => {
                self.brokers.remove(node_id);
            }
            MetadataCommand::AllocateProducerIdBlock { count, .. } => {
                self.recent_allocations.insert(index, self.next_producer_id);
                while self.recent_allocations.len() > RECENT_ALLOCATIONS {
                    self.recent_allocations.pop_first();
                }
                self.next_producer_id += i64::from(*count);
            }
            MetadataCommand::AllocateProducerId => {
                self.recent_allocations.insert(index, self.next_producer_id);
                while self.recent_allocations.len() > RECENT_ALLOCATIONS {
                    self.recent_allocations.pop_first();
                }
                self.next_producer_id += 1;
            }
        }
        if matches!(
            cmd,
            MetadataCommand::DeletePipeline { .. }
                | MetadataCommand::DeleteConnector { .. }
                | MetadataCommand::DeleteTopicForced { .. }
        ) {
            let (pipelines, connectors) = (&self.pipelines, &self.connectors);
            self.security
                .retain_owners(|kind, name, created_index| match kind {
                    acl::ResourceType::Pipeline => pipelines
                        .get(name)
                        .is_some_and(|p| p.created_index == created_index),
                    _ => connectors
                        .get(name)
                        .is_some_and(|c| c.created_index == created_index),
                });
        }
        Ok(())
    }
}

fn new_partition(replicas: &[u32]) -> PartitionRecord {
    PartitionRecord {
        replicas: replicas.to_vec(),
        leader: replicas.first().copied(),
        leader_epoch: 0,
        in_sync: replicas.to_vec(),
    }
}

impl MetadataState {
    /// Config checks that need the state: a partitioner must be a deployed partitioner plugin.
    fn validate_config(&self, config: &TopicConfig) -> Result<(), MetadataError> {
        if let Some(name) = &config.partitioner {
            match self.plugins.get(name) {
                None => return Err(MetadataError::UnknownPlugin(name.clone())),
                Some(p) if p.kind != "partitioner" => {
                    return Err(MetadataError::InvalidConfig(format!(
                        "plugin {name:?} is a {}, not a partitioner",
                        p.kind
                    )));
                }
                Some(_) => {}
            }
        }
        validate_config(config)
    }
}

fn validate_config(config: &TopicConfig) -> Result<(), MetadataError> {
    if config.retention_ms == Some(0) {
        return Err(MetadataError::InvalidConfig(
            "retention.ms must be positive".into(),
        ));
    }
    if config.retention_bytes == Some(0) {
        return Err(MetadataError::InvalidConfig(
            "retention.bytes must be positive".into(),
        ));
    }
    if config.durability == sluice_proto::Durability::IntervalMs(0) {
        return Err(MetadataError::InvalidConfig(
            "durability interval must be positive".into(),
        ));
    }
    if config.max_batch_bytes == Some(0) {
        return Err(MetadataError::InvalidConfig(
            "max.batch.bytes must be positive".into(),
        ));
    }
    Ok(())
}

/// Encodes a command for the metadata log.
pub fn encode_command(cmd: &MetadataCommand) -> Vec<u8> {
    postcard::to_allocvec(cmd).expect("metadata commands always encode")
}

/// Decodes a command read back from the metadata log.
pub fn decode_command(bytes: &[u8]) -> Result<MetadataCommand, postcard::Error> {
    postcard::from_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(node_id: u32, rack: &str) -> MetadataCommand {
        MetadataCommand::RegisterBrokerEpoch {
            node_id,
            addr: format!("127.0.0.1:{node_id}"),
            peer_addr: Some(format!("127.0.0.1:{}", 1000 + node_id)),
            rack: Some(rack.into()),
        }
    }

    #[test]
    fn producer_id_blocks_never_overlap_single_allocations() {
        let mut s = MetadataState::new();
        s.apply(1, &MetadataCommand::AllocateProducerId).unwrap();
        s.apply(
            2,
            &MetadataCommand::AllocateProducerIdBlock {
                node_id: 1,
                count: 1000,
            },
        )
        .unwrap();
        s.apply(3, &MetadataCommand::AllocateProducerId).unwrap();
        s.apply(
            4,
            &MetadataCommand::AllocateProducerIdBlock {
                node_id: 2,
                count: 1000,
            },
        )
        .unwrap();
        assert_eq!(s.producer_id_allocated_at(1), Some(0));
        assert_eq!(s.producer_id_allocated_at(2), Some(1), "ids 1..1001");
        assert_eq!(s.producer_id_allocated_at(3), Some(1001));
        assert_eq!(s.producer_id_allocated_at(4), Some(1002), "ids 1002..2002");
        assert_eq!(s.next_producer_id(), 2002);
        for count in [0, MAX_PRODUCER_ID_BLOCK + 1] {
            assert!(
                s.validate(&MetadataCommand::AllocateProducerIdBlock { node_id: 1, count })
                    .is_err()
            );
        }
    }

    #[test]
    fn a_producer_id_is_found_by_the_index_of_its_allocation() {
        let mut s = MetadataState::new();
        for index in 1..=5 {
            s.apply(index, &MetadataCommand::AllocateProducerId)
                .unwrap();
        }
        // Whatever applied after it, each allocation's id is found by its own index.
        assert_eq!(s.producer_id_allocated_at(2), Some(1));
        assert_eq!(s.producer_id_allocated_at(5), Some(4));
        assert_eq!(s.producer_id_allocated_at(6), None);
        for index in 6..(6 + RECENT_ALLOCATIONS as u64) {
            s.apply(index, &MetadataCommand::AllocateProducerId)
                .unwrap();
        }
        assert_eq!(
            s.producer_id_allocated_at(1),
            None,
            "only the latest are kept"
        );
        assert_eq!(
            s.producer_id_allocated_at(5 + RECENT_ALLOCATIONS as u64),
            Some(4 + RECENT_ALLOCATIONS as i64)
        );
    }

    #[test]
    fn broker_epochs_are_registration_indexes_and_fencing_needs_the_current_one() {
        let mut s = MetadataState::new();
        s.apply(1, &join(1, "a")).unwrap();
        s.apply(2, &join(2, "b")).unwrap();
        s.apply(
            3,
            &MetadataCommand::CreateTopic {
                name: "t".into(),
                config: TopicConfig::default(),
                assignments: vec![vec![1, 2], vec![2, 1], vec![1, 2], vec![1]],
            },
        )
        .unwrap();
        assert_eq!(s.broker(1).unwrap().epoch, 1);
        assert_eq!(s.broker(2).unwrap().rack.as_deref(), Some("b"));

        // Node 1 registers again (a restart): a new epoch; fencing the old one is refused.
        s.apply(4, &join(1, "a")).unwrap();
        assert_eq!(s.broker(1).unwrap().epoch, 4);
        let stale = MetadataCommand::FenceBroker {
            node_id: 1,
            epoch: 1,
        };
        assert_eq!(
            s.validate(&stale),
            Err(MetadataError::StaleBrokerEpoch {
                node_id: 1,
                epoch: 1,
                current: 4
            })
        );
        assert!(s.apply(5, &stale).is_err());
        assert!(!s.broker(1).unwrap().fenced);

        // Fencing the current epoch: node 1 leads nothing, its partitions' epochs move on; the
        // live in-sync replica of each takes over, if there is one.
        let before: Vec<u32> = s
            .topic("t")
            .unwrap()
            .partitions
            .iter()
            .map(|p| p.leader_epoch)
            .collect();
        s.apply(
            6,
            &MetadataCommand::FenceBroker {
                node_id: 1,
                epoch: 4,
            },
        )
        .unwrap();
        let t = s.topic("t").unwrap();
        assert_eq!(
            t.partitions[0].leader,
            Some(2),
            "the other in-sync replica leads"
        );
        assert_eq!(t.partitions[0].leader_epoch, before[0] + 1);
        assert_eq!(
            t.partitions[1].leader,
            Some(2),
            "node 2's partition keeps its leader"
        );
        assert_eq!(t.partitions[1].leader_epoch, before[1]);
        assert_eq!(t.partitions[0].in_sync, vec![2]);
        assert_eq!(t.partitions[3].leader, None);
        assert_eq!(
            t.partitions[3].in_sync,
            vec![1],
            "the last in-sync replica stays in the set"
        );
        assert_eq!(
            s.live_brokers().map(|b| b.node_id).collect::<Vec<_>>(),
            vec![2]
        );
        assert!(s.broker(1).unwrap().fenced);

        // Registering again unfences it, with a new epoch, and it leads its partition again,
        // in a new leader epoch.
        s.apply(7, &join(1, "a")).unwrap();
        assert_eq!(s.broker(1).unwrap().epoch, 7);
        let t = s.topic("t").unwrap();
        assert_eq!(t.partitions[3].leader, Some(1));
        assert_eq!(t.partitions[3].leader_epoch, before[3] + 2);
        assert_eq!(t.partitions[1].leader_epoch, before[1]);
        assert_eq!(
            (t.partitions[0].leader, t.partitions[0].leader_epoch),
            (Some(2), before[0] + 1),
            "node 2 keeps leading; node 1 is not in its in-sync set"
        );
        assert_eq!(s.live_brokers().count(), 2);
        assert_eq!(
            s.validate(&MetadataCommand::FenceBroker {
                node_id: 9,
                epoch: 1
            }),
            Err(MetadataError::UnknownBroker(9))
        );
    }

    fn life(node_id: u32, fresh: bool) -> MetadataCommand {
        MetadataCommand::RegisterBrokerLife {
            node_id,
            addr: format!("127.0.0.1:{node_id}"),
            peer_addr: None,
            rack: None,
            fresh,
        }
    }

    /// Three brokers and a topic with partitions placed `assignments`.
    fn three_brokers_and(assignments: Vec<Vec<u32>>) -> MetadataState {
        let mut s = MetadataState::new();
        for (i, n) in [1, 2, 3].into_iter().enumerate() {
            s.apply(i as u64 + 1, &join(n, "a")).unwrap();
        }
        s.apply(
            4,
            &MetadataCommand::CreateTopic {
                name: "t".into(),
                config: TopicConfig::default(),
                assignments,
            },
        )
        .unwrap();
        s
    }

    #[test]
    fn a_restarted_node_hands_its_leadership_on_and_is_out_of_sync_until_it_catches_up() {
        let mut s = three_brokers_and(vec![vec![1, 2, 3], vec![2, 1, 3], vec![1]]);
        let before: Vec<u32> = s
            .topic("t")
            .unwrap()
            .partitions
            .iter()
            .map(|p| p.leader_epoch)
            .collect();
        s.apply(5, &life(1, false)).unwrap();
        let t = s.topic("t").unwrap();
        assert_eq!(s.broker(1).unwrap().epoch, 5);
        // It led partition 0: node 2, the next live in-sync replica, takes over.
        assert_eq!(t.partitions[0].leader, Some(2));
        assert_eq!(t.partitions[0].leader_epoch, before[0] + 1);
        assert_eq!(t.partitions[0].in_sync, vec![2, 3]);
        // It followed partition 1: out of sync, the leader unchanged but in a new epoch (an
        // in-sync change proposed before the leader knew is refused).
        assert_eq!(t.partitions[1].leader, Some(2));
        assert_eq!(t.partitions[1].leader_epoch, before[1] + 1);
        assert_eq!(t.partitions[1].in_sync, vec![2, 3]);
        // Its only replica: it leads on, in a new epoch.
        assert_eq!(t.partitions[2].leader, Some(1));
        assert_eq!(t.partitions[2].leader_epoch, before[2] + 1);
        assert_eq!(t.partitions[2].in_sync, vec![1]);
    }

    #[test]
    fn a_node_with_a_wiped_data_dir_is_in_no_in_sync_set_and_leads_nothing() {
        let mut s = three_brokers_and(vec![vec![1, 2, 3], vec![1]]);
        s.apply(5, &life(1, true)).unwrap();
        let t = s.topic("t").unwrap();
        assert_eq!(t.partitions[0].leader, Some(2));
        assert_eq!(t.partitions[0].in_sync, vec![2, 3]);
        // Its only replica is gone with the data: leaderless, nobody in sync (only an unclean
        // election could bring it back).
        assert_eq!(t.partitions[1].leader, None);
        assert!(t.partitions[1].in_sync.is_empty());
    }

    #[test]
    fn unclean_elections_only_where_the_topic_opted_in_and_no_in_sync_replica_lives() {
        let mut s = three_brokers_and(vec![vec![1, 2, 3]]);
        // Nodes 2 and 3 fell behind; then node 1, the last in-sync replica, dies.
        let epoch = s.topic("t").unwrap().partitions[0].leader_epoch;
        s.apply(
            5,
            &MetadataCommand::AlterInSync {
                topic: "t".into(),
                partition: 0,
                leader: 1,
                leader_epoch: epoch,
                in_sync: vec![1],
            },
        )
        .unwrap();
        let b1 = s.broker(1).unwrap().epoch;
        s.apply(
            6,
            &MetadataCommand::FenceBroker {
                node_id: 1,
                epoch: b1,
            },
        )
        .unwrap();
        assert_eq!(s.topic("t").unwrap().partitions[0].leader, None);
        assert!(s.unclean_elections().is_empty(), "not opted in");
        let unclean = MetadataCommand::ElectUncleanLeader {
            topic: "t".into(),
            partition: 0,
            leader: 2,
        };
        assert!(s.validate(&unclean).is_err());
        let alter = |min, unclean| MetadataCommand::AlterTopicReplication {
            topic: "t".into(),
            min_insync_replicas: min,
            unclean_leader_election: unclean,
        };
        assert!(
            s.validate(&alter(Some(4), None)).is_err(),
            "more than the replicas"
        );
        assert!(s.validate(&alter(Some(0), None)).is_err());
        s.apply(7, &alter(Some(3), Some(true))).unwrap();
        assert_eq!(s.replication_settings("t").min_insync(3), 3);
        assert_eq!(s.unclean_elections(), vec![("t".to_string(), 0, 2)]);
        s.apply(8, &unclean).unwrap();
        let p = &s.topic("t").unwrap().partitions[0];
        assert_eq!((p.leader, p.in_sync.clone()), (Some(2), vec![2]));
        assert_eq!(p.leader_epoch, epoch + 2);
        // Settings leave with the topic.
        s.apply(9, &MetadataCommand::DeleteTopic { name: "t".into() })
            .unwrap();
        assert_eq!(s.replication_settings("t"), ReplicationSettings::default());
        assert_eq!(ReplicationSettings::default().min_insync(3), 2);
        assert_eq!(ReplicationSettings::default().min_insync(2), 1);
    }

    #[test]
    fn the_preferred_replica_leads_again_only_when_live_and_in_sync() {
        let mut s = three_brokers_and(vec![vec![1, 2, 3]]);
        let elect = MetadataCommand::ElectPreferredLeader {
            topic: "t".into(),
            partition: 0,
        };
        assert!(
            matches!(s.validate(&elect), Err(MetadataError::InvalidConfig(m)) if m.contains("leads already"))
        );
        s.apply(5, &life(1, false)).unwrap();
        assert_eq!(s.topic("t").unwrap().partitions[0].leader, Some(2));
        assert!(
            matches!(s.validate(&elect), Err(MetadataError::InvalidConfig(m)) if m.contains("not in sync"))
        );
        let epoch = s.topic("t").unwrap().partitions[0].leader_epoch;
        s.apply(
            6,
            &MetadataCommand::AlterInSync {
                topic: "t".into(),
                partition: 0,
                leader: 2,
                leader_epoch: epoch,
                in_sync: vec![1, 2, 3],
            },
        )
        .unwrap();
        s.apply(7, &elect).unwrap();
        let p = &s.topic("t").unwrap().partitions[0];
        assert_eq!((p.leader, p.leader_epoch), (Some(1), epoch + 1));
    }

    #[test]
    fn leaders_change_their_in_sync_set_only_in_their_own_epoch() {
        let mut s = MetadataState::new();
        for (i, n) in [1, 2, 3].into_iter().enumerate() {
            s.apply(i as u64 + 1, &join(n, "a")).unwrap();
        }
        s.apply(
            4,
            &MetadataCommand::CreateTopic {
                name: "t".into(),
                config: TopicConfig::default(),
                assignments: vec![vec![1, 2, 3]],
            },
        )
        .unwrap();
        let alter =
            |leader: u32, leader_epoch: u32, in_sync: Vec<u32>| MetadataCommand::AlterInSync {
                topic: "t".into(),
                partition: 0,
                leader,
                leader_epoch,
                in_sync,
            };
        let epoch = s.topic("t").unwrap().partitions[0].leader_epoch;
        // Node 3 fell behind.
        s.apply(5, &alter(1, epoch, vec![2, 1])).unwrap();
        assert_eq!(
            s.topic("t").unwrap().partitions[0].in_sync,
            vec![1, 2],
            "replica order"
        );
        // Not the leader, an old epoch, a set without the leader, a stranger: refused.
        assert!(matches!(
            s.validate(&alter(2, epoch, vec![1, 2])),
            Err(MetadataError::StaleLeaderEpoch { .. })
        ));
        assert!(matches!(
            s.validate(&alter(1, epoch + 1, vec![1, 2])),
            Err(MetadataError::StaleLeaderEpoch { .. })
        ));
        assert!(s.validate(&alter(1, epoch, vec![2])).is_err());
        assert!(s.validate(&alter(1, epoch, vec![1, 9])).is_err());
        assert!(s.validate(&alter(1, epoch, vec![1, 1])).is_err());
        // The leader is fenced: the first live in-sync replica (2) takes over, not 3.
        let b1 = s.broker(1).unwrap().epoch;
        s.apply(
            6,
            &MetadataCommand::FenceBroker {
                node_id: 1,
                epoch: b1,
            },
        )
        .unwrap();
        let p = &s.topic("t").unwrap().partitions[0];
        assert_eq!(
            (p.leader, p.leader_epoch, p.in_sync.clone()),
            (Some(2), epoch + 1, vec![2])
        );
        // The old leader's change in its old epoch is refused now.
        assert!(s.validate(&alter(1, epoch, vec![1, 2, 3])).is_err());
        // Node 2 fenced too: its partition has no in-sync replica left alive, and waits for 2.
        let b2 = s.broker(2).unwrap().epoch;
        s.apply(
            7,
            &MetadataCommand::FenceBroker {
                node_id: 2,
                epoch: b2,
            },
        )
        .unwrap();
        let p = &s.topic("t").unwrap().partitions[0];
        assert_eq!((p.leader, p.in_sync.clone()), (None, vec![2]));
        s.apply(8, &join(2, "a")).unwrap();
        assert_eq!(s.topic("t").unwrap().partitions[0].leader, Some(2));
    }

    fn node1() -> MetadataState {
        let mut s = MetadataState::new();
        s.apply(
            1,
            &MetadataCommand::RegisterBroker {
                node_id: 1,
                addr: "127.0.0.1:1".into(),
            },
        )
        .unwrap();
        s
    }

    fn create(name: &str, n: usize) -> MetadataCommand {
        MetadataCommand::CreateTopic {
            name: name.into(),
            config: TopicConfig::default(),
            assignments: vec![vec![1]; n],
        }
    }

    #[test]
    fn create_add_delete() {
        let mut s = node1();
        s.apply(2, &create("orders", 3)).unwrap();
        let t = s.topic("orders").unwrap();
        assert_eq!(t.partitions.len(), 3);
        assert_eq!(t.partitions[0].leader, Some(1));
        assert_eq!(t.topic_id, 1);
        assert_eq!(
            s.apply(3, &create("orders", 1)),
            Err(MetadataError::TopicExists("orders".into()))
        );
        s.apply(
            4,
            &MetadataCommand::AddPartitions {
                name: "orders".into(),
                assignments: vec![vec![1]; 2],
            },
        )
        .unwrap();
        assert_eq!(s.topic("orders").unwrap().partitions.len(), 5);
        s.apply(
            5,
            &MetadataCommand::DeleteTopic {
                name: "orders".into(),
            },
        )
        .unwrap();
        assert!(s.topic("orders").is_none());
        s.apply(6, &create("orders", 1)).unwrap();
        assert_eq!(
            s.topic("orders").unwrap().topic_id,
            2,
            "a recreated topic gets a fresh id"
        );
        assert_eq!(s.applied_index(), 6);
    }

    #[test]
    fn refusals() {
        let mut s = node1();
        assert!(matches!(
            s.apply(2, &create("bad name", 1)),
            Err(MetadataError::InvalidName(_))
        ));
        assert!(matches!(
            s.apply(3, &create("t", 0)),
            Err(MetadataError::InvalidPartitions(_))
        ));
        let unknown_node = MetadataCommand::CreateTopic {
            name: "t".into(),
            config: TopicConfig::default(),
            assignments: vec![vec![9]],
        };
        assert_eq!(
            s.apply(4, &unknown_node),
            Err(MetadataError::UnknownBroker(9))
        );
        let bad_cfg = MetadataCommand::CreateTopic {
            name: "t".into(),
            config: TopicConfig {
                retention_ms: Some(0),
                ..Default::default()
            },
            assignments: vec![vec![1]],
        };
        assert!(matches!(
            s.apply(5, &bad_cfg),
            Err(MetadataError::InvalidConfig(_))
        ));
        assert_eq!(
            s.apply(
                6,
                &MetadataCommand::DeleteTopic {
                    name: "nope".into()
                }
            ),
            Err(MetadataError::UnknownTopic("nope".into()))
        );
        assert!(s.topics().next().is_none());
    }

    #[test]
    fn leader_changes_bump_the_epoch() {
        let mut s = node1();
        s.apply(2, &create("t", 1)).unwrap();
        s.apply(
            3,
            &MetadataCommand::SetLeader {
                topic: "t".into(),
                partition: 0,
                leader: None,
                in_sync: vec![],
            },
        )
        .unwrap();
        s.apply(
            4,
            &MetadataCommand::SetLeader {
                topic: "t".into(),
                partition: 0,
                leader: Some(1),
                in_sync: vec![1],
            },
        )
        .unwrap();
        let p = &s.topic("t").unwrap().partitions[0];
        assert_eq!((p.leader, p.leader_epoch), (Some(1), 2));
        let not_replica = MetadataCommand::SetLeader {
            topic: "t".into(),
            partition: 0,
            leader: Some(2),
            in_sync: vec![],
        };
        assert!(s.apply(5, &not_replica).is_err());
    }

    #[test]
    fn producer_ids_are_dense_and_survive_replay() {
        let mut s = node1();
        assert_eq!(s.next_producer_id(), 0);
        for i in 0..3 {
            s.apply(2 + i, &MetadataCommand::AllocateProducerId)
                .unwrap();
        }
        assert_eq!(s.next_producer_id(), 3, "ids 0, 1 and 2 were handed out");
        let log = [
            MetadataCommand::RegisterBroker {
                node_id: 1,
                addr: "127.0.0.1:1".into(),
            },
            MetadataCommand::AllocateProducerId,
            create("t", 1),
            MetadataCommand::AllocateProducerId,
            MetadataCommand::AllocateProducerId,
        ];
        let mut replayed = MetadataState::new();
        for (i, cmd) in log.iter().enumerate() {
            let bytes = encode_command(cmd);
            replayed
                .apply(i as u64 + 1, &decode_command(&bytes).unwrap())
                .unwrap();
        }
        assert_eq!(replayed.next_producer_id(), 3);
        let mut full = replayed.clone();
        full.next_producer_id = i64::MAX;
        assert_eq!(
            full.apply(9, &MetadataCommand::AllocateProducerId),
            Err(MetadataError::ProducerIdsExhausted)
        );
        assert_eq!(full.next_producer_id(), i64::MAX);
    }

    #[test]
    fn replaying_the_log_reaches_the_same_state() {
        let cmds = [
            MetadataCommand::RegisterBroker {
                node_id: 1,
                addr: "a:1".into(),
            },
            create("a", 2),
            create("a", 2), // refused, but still part of the log
            create("b", 1),
            MetadataCommand::DeleteTopic { name: "a".into() },
            MetadataCommand::AddPartitions {
                name: "b".into(),
                assignments: vec![vec![1]],
            },
        ];
        let encoded: Vec<Vec<u8>> = cmds.iter().map(encode_command).collect();
        let mut live = MetadataState::new();
        for (i, c) in cmds.iter().enumerate() {
            let _ = live.apply(i as u64 + 1, c);
        }
        let mut replayed = MetadataState::new();
        for (i, bytes) in encoded.iter().enumerate() {
            let _ = replayed.apply(i as u64 + 1, &decode_command(bytes).unwrap());
        }
        assert_eq!(live, replayed);
        assert_eq!(replayed.topic("b").unwrap().topic_id, 2);
    }

    fn pipeline(name: &str, from: &str, to: &str, partitions: usize) -> MetadataCommand {
        MetadataCommand::CreatePipeline(PipelineSpec {
            name: name.into(),
            plugins: vec!["f".into()],
            from: from.into(),
            to: to.into(),
            config: vec![],
            max_call_ms: None,
            max_memory_bytes: None,
            start_offsets: vec![0; partitions],
        })
    }

    #[test]
    fn connectors_are_checked_get_a_producer_id_and_fence_replaced_tasks() {
        let deploy = |name: &str, kind: &str| MetadataCommand::DeployPlugin {
            name: name.into(),
            kind: kind.into(),
            hash: "00".into(),
            size_bytes: 1,
            deployed_at_ms: 0,
        };
        let spec = |name: &str, plugin: &str, kind: ConnectorKind, topics: &[&str]| {
            MetadataCommand::CreateConnector(ConnectorSpec {
                name: name.into(),
                plugin: plugin.into(),
                kind,
                topics: topics.iter().map(|t| t.to_string()).collect(),
                settings: vec![],
                dirs: vec![],
                http_hosts: vec![],
                transforms: vec![],
                max_records_per_second: None,
                dead_letter_topic: None,
            })
        };
        let mut s = MetadataState::new();
        let mut i = 0;
        let mut apply = |s: &mut MetadataState, c: MetadataCommand| {
            i += 1;
            s.apply(i, &c)
        };
        apply(
            &mut s,
            MetadataCommand::RegisterBroker {
                node_id: 1,
                addr: "a:1".into(),
            },
        )
        .unwrap();
        apply(&mut s, create("logs", 2)).unwrap();
        apply(&mut s, deploy("tail", "source")).unwrap();
        apply(&mut s, deploy("f", "transform")).unwrap();
        use ConnectorKind::{Sink, Source};
        let refusals = [
            spec("c", "nope", Source, &["logs"]),         // unknown plugin
            spec("c", "f", Source, &["logs"]),            // a transform
            spec("c", "tail", Sink, &["logs"]),           // a source plugin as a sink
            spec("c", "tail", Source, &["logs", "logs"]), // a source writes one topic
            spec("c", "tail", Source, &["nope"]),         // unknown topic
        ];
        for r in refusals {
            assert!(apply(&mut s, r).is_err());
        }
        let before = s.next_producer_id;
        apply(&mut s, spec("c", "tail", Source, &["logs"])).unwrap();
        assert!(
            apply(&mut s, spec("c", "tail", Source, &["logs"])).is_err(),
            "exists"
        );
        let c = s.connector("c").unwrap().clone();
        assert_eq!(c.producer_id, before);
        assert_eq!(s.next_producer_id, before + 1);
        assert_eq!(s.connector_owner("c"), Some(1));
        let started = |node| MetadataCommand::ConnectorStarted {
            name: "c".into(),
            created_index: c.created_index,
            node,
        };
        let intent = |generation, base| MetadataCommand::ConnectorIntent {
            name: "c".into(),
            created_index: c.created_index,
            generation,
            intent: SourceIntent {
                before: None,
                count: 3,
                after: vec![9],
                parts: vec![(1, base, 3)],
            },
        };
        apply(&mut s, started(1)).unwrap();
        apply(&mut s, intent(1, 0)).unwrap();
        apply(&mut s, started(1)).unwrap();
        // The first task's progress is refused once a second one started.
        assert_eq!(
            apply(&mut s, intent(1, 3)),
            Err(MetadataError::ConnectorTaskReplaced {
                name: "c".into(),
                generation: 1
            })
        );
        apply(&mut s, intent(2, 3)).unwrap();
        let c = s.connector("c").unwrap();
        assert_eq!(c.sequences, BTreeMap::from([(1, 6)]));
        assert_eq!(c.generation, 2);
        apply(
            &mut s,
            MetadataCommand::DeleteConnector { name: "c".into() },
        )
        .unwrap();
        assert!(apply(&mut s, intent(2, 6)).is_err(), "deleted");
    }

    #[test]
    fn pipelines_get_their_own_producer_ids_and_survive_replay() {
        let deploy = MetadataCommand::DeployPlugin {
            name: "f".into(),
            kind: "transform".into(),
            hash: "00".into(),
            size_bytes: 1,
            deployed_at_ms: 0,
        };
        let log = [
            MetadataCommand::RegisterBroker {
                node_id: 1,
                addr: "a:1".into(),
            },
            create("in", 3),
            create("out", 2),
            MetadataCommand::AllocateProducerId,
            pipeline("p", "in", "out", 3), // refused: plugin f not deployed yet
            deploy,
            pipeline("p", "in", "out", 3),
            pipeline("p", "in", "out", 3),   // refused: exists
            pipeline("q", "in", "in", 3),    // refused: writes to its input
            pipeline("q", "in", "out", 2),   // refused: wrong number of start offsets
            pipeline("q", "nope", "out", 3), // refused: unknown topic
            MetadataCommand::SetPipelinePaused {
                name: "p".into(),
                paused: true,
            },
            MetadataCommand::AllocateProducerId,
        ];
        let mut live = MetadataState::new();
        let refused: Vec<usize> = log
            .iter()
            .enumerate()
            .filter(|(i, c)| live.apply(*i as u64 + 1, c).is_err())
            .map(|(i, _)| i)
            .collect();
        assert_eq!(refused, [4, 7, 8, 9, 10]);
        let p = live.pipeline("p").unwrap();
        assert_eq!(
            p.producer_ids,
            [1, 2, 3],
            "after the one id allocated before"
        );
        assert!(p.paused);
        assert_eq!(p.created_index, 7);
        assert_eq!(live.next_producer_id(), 5);
        let mut replayed = MetadataState::new();
        for (i, c) in log.iter().enumerate() {
            let _ = replayed.apply(i as u64 + 1, &decode_command(&encode_command(c)).unwrap());
        }
        assert_eq!(live, replayed);
        live.apply(20, &MetadataCommand::DeletePipeline { name: "p".into() })
            .unwrap();
        assert!(live.pipeline("p").is_none());
        live.apply(22, &pipeline("r", "in", "out", 3)).unwrap();
        assert!(matches!(
            live.apply(23, &MetadataCommand::DeletePlugin { name: "f".into() }),
            Err(MetadataError::PluginInUse { .. })
        ));
        live.apply(
            24,
            &MetadataCommand::CreateInternalTopic {
                name: "__x".into(),
                config: TopicConfig::default(),
                assignments: vec![vec![1]; 3],
            },
        )
        .unwrap();
        assert!(matches!(
            live.apply(25, &pipeline("s", "__x", "out", 3)),
            Err(MetadataError::InvalidConfig(_))
        ));
        assert_eq!(
            live.apply(21, &MetadataCommand::DeletePipeline { name: "p".into() }),
            Err(MetadataError::UnknownPipeline("p".into()))
        );
    }
    #[test]
    fn topics_used_by_pipelines_are_deleted_only_with_them() {
        let mut s = node1();
        let setup = [
            MetadataCommand::DeployPlugin {
                name: "f".into(),
                kind: "transform".into(),
                hash: "00".into(),
                size_bytes: 1,
                deployed_at_ms: 0,
            },
            create("in", 2),
            create("out", 1),
            create("other", 1),
            pipeline("p", "in", "out", 2),
            pipeline("q", "out", "other", 1),
        ];
        for (i, c) in setup.iter().enumerate() {
            s.apply(i as u64 + 2, c).unwrap();
        }
        let delete = |name: &str| MetadataCommand::DeleteTopic { name: name.into() };
        let refused = s.apply(10, &delete("in")).unwrap_err();
        assert_eq!(
            refused,
            MetadataError::TopicInUse {
                topic: "in".into(),
                users: vec![TopicUser::Pipeline {
                    name: "p".into(),
                    reads: true
                }],
            }
        );
        assert_eq!(
            refused.to_string(),
            r#"topic "in" is read by pipeline "p"; delete the pipeline first or use --force"#
        );
        assert_eq!(
            s.apply(11, &delete("out")).unwrap_err().to_string(),
            r#"topic "out" is written by pipeline "p" and read by pipeline "q"; delete them first or use --force"#
        );
        assert!(s.topic("in").is_some() && s.topic("out").is_some());
        let out_id = s.topic("out").unwrap().topic_id;

        // Forced: the topic and both pipelines go in one step; the rest stays.
        s.apply(
            12,
            &MetadataCommand::DeleteTopicForced { name: "out".into() },
        )
        .unwrap();
        assert!(s.topic("out").is_none());
        assert!(s.pipelines().next().is_none());
        assert!(s.topic("in").is_some() && s.topic("other").is_some());
        assert_eq!(
            s.apply(
                13,
                &MetadataCommand::DeleteTopicForced { name: "out".into() }
            ),
            Err(MetadataError::UnknownTopic("out".into()))
        );
        // Nothing uses "in" any more.
        assert!(s.topic_users("in").is_empty());
        s.apply(14, &delete("in")).unwrap();
        // A topic created again never gets a deleted one's id.
        s.apply(15, &create("out", 1)).unwrap();
        assert!(s.topic("out").unwrap().topic_id > out_id);
        assert!(s.topic("out").unwrap().topic_id > s.topic("other").unwrap().topic_id);

        // The same log replays to the same state, refusals included.
        let log: Vec<MetadataCommand> = std::iter::once(MetadataCommand::RegisterBroker {
            node_id: 1,
            addr: "127.0.0.1:1".into(),
        })
        .chain(setup.iter().cloned())
        .collect();
        let mut replayed = MetadataState::new();
        for (i, c) in log.iter().enumerate() {
            replayed.apply(i as u64 + 1, c).unwrap();
        }
        for (i, c) in [
            delete("in"),
            delete("out"),
            MetadataCommand::DeleteTopicForced { name: "out".into() },
            MetadataCommand::DeleteTopicForced { name: "out".into() },
            delete("in"),
            create("out", 1),
        ]
        .iter()
        .enumerate()
        {
            let _ = replayed.apply(i as u64 + 10, &decode_command(&encode_command(c)).unwrap());
        }
        assert_eq!(replayed, s);
    }

    #[test]
    fn acl_bindings_are_added_and_removed_through_the_log() {
        use acl::{AclBinding, Operation, PatternKind, Permission, ResourceType};
        let mut s = MetadataState::new();
        let b = AclBinding {
            principal: "alice".into(),
            resource: ResourceType::Topic,
            pattern: "orders".into(),
            kind: PatternKind::Literal,
            operation: Operation::Write,
            permission: Permission::Allow,
        };
        s.apply(1, &MetadataCommand::AddAcl(b.clone())).unwrap();
        s.apply(2, &MetadataCommand::AddAcl(b.clone())).unwrap();
        assert_eq!(s.acls().iter().collect::<Vec<_>>(), vec![&b]);
        assert!(
            s.acls()
                .authorize(
                    "alice",
                    &[],
                    Operation::Write,
                    ResourceType::Topic,
                    "orders"
                )
                .is_allowed()
        );
        let bad = AclBinding {
            principal: String::new(),
            ..b.clone()
        };
        assert!(matches!(
            s.validate(&MetadataCommand::AddAcl(bad)),
            Err(MetadataError::InvalidConfig(_))
        ));
        s.apply(3, &MetadataCommand::RemoveAcl(b.clone())).unwrap();
        s.apply(4, &MetadataCommand::RemoveAcl(b)).unwrap();
        assert!(s.acls().is_empty());
    }
    #[test]
    fn pipeline_checkpoints_only_move_forward() {
        let log = [
            MetadataCommand::RegisterBroker {
                node_id: 1,
                addr: "a:1".into(),
            },
            create("in", 1),
            create("out", 1),
            MetadataCommand::DeployPlugin {
                name: "f".into(),
                kind: "transform".into(),
                hash: "00".into(),
                size_bytes: 1,
                deployed_at_ms: 0,
            },
            pipeline("p", "in", "out", 1),
        ];
        let mut s = MetadataState::new();
        for (i, c) in log.iter().enumerate() {
            s.apply(i as u64 + 1, c).unwrap();
        }
        let created_index = s.pipeline("p").unwrap().created_index;
        let at = |offset: u64, tail: u8| {
            let mut b = vec![1u8];
            b.extend_from_slice(&offset.to_le_bytes());
            b.push(tail);
            b
        };
        assert_eq!(checkpoint_offset(&at(1444, 0)), Some(1444));
        assert_eq!(checkpoint_offset(&[2, 0, 0, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(checkpoint_offset(&[1, 0]), None);
        let mut index = 10;
        let mut checkpoint = |s: &mut MetadataState, bytes: Vec<u8>| {
            index += 1;
            s.apply(
                index,
                &MetadataCommand::PipelineCheckpoint {
                    name: "p".into(),
                    created_index,
                    partition: 0,
                    checkpoint: bytes,
                },
            )
            .unwrap();
            s.pipeline_checkpoint("p", 0).unwrap().to_vec()
        };
        assert_eq!(checkpoint(&mut s, at(1899, 1)), at(1899, 1));
        // A late checkpoint of a runner that lost the input partition meanwhile: ignored.
        assert_eq!(checkpoint(&mut s, at(1444, 2)), at(1899, 1));
        assert_eq!(checkpoint(&mut s, at(1899, 3)), at(1899, 3));
        assert_eq!(checkpoint(&mut s, at(2000, 4)), at(2000, 4));
    }
}
