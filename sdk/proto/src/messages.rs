//! Requests and responses. Each is the control part of a frame (see [`crate::frame`]); record
//! batches travel beside them as raw bytes.
//!
//! Compatibility rule: within a protocol version, messages never change. A new version may add
//! request variants at the end of [`Request`] and response variants at the end of
//! [`ResponseBody`]; the `Hello` exchange tells each side which version the other speaks.

use serde::{Deserialize, Serialize};

use crate::batch::Compression;
use crate::error::WireError;

/// A request, sent by a client on a bidirectional stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// First request on every connection: negotiates the protocol version.
    Hello(HelloRequest),
    /// Brokers, topics, partitions and their leaders.
    Metadata {
        topics: Option<Vec<String>>,
    },
    CreateTopic(CreateTopicRequest),
    DeleteTopic {
        name: String,
    },
    ListTopics,
    DescribeTopic {
        name: String,
    },
    /// Adds `count` partitions to a topic (the number to add, not the new total).
    AddPartitions {
        name: String,
        count: u32,
    },
    /// Appends the one record batch carried as the frame's raw bytes.
    Produce(ProduceRequest),
    /// Reads batches from one or more partitions; the response's raw bytes hold them.
    Fetch(FetchRequest),
    ListOffsets(ListOffsetsRequest),
    /// Asks the cluster for a fresh producer id and epoch, for an idempotent producer; answered
    /// with [`ResponseBody::ProducerId`].
    InitProducerId,
    /// Joins, stays in or leaves a consumer group (a KIP-848-style heartbeat); answered with
    /// the member's current assignment.
    GroupHeartbeat(GroupHeartbeatRequest),
    /// Commits offsets for a group; answered with [`ResponseBody::GroupOffsets`].
    OffsetCommit(OffsetCommitRequest),
    /// A group's committed offsets.
    OffsetFetch {
        group: String,
    },
    ListGroups,
    DescribeGroup {
        group: String,
    },
    /// Moves an empty group's committed offsets for one topic.
    ResetOffsets(ResetOffsetsRequest),
    /// Deletes an empty group and its offsets.
    DeleteGroup {
        group: String,
    },
    /// Deploys a new version of plugin `name`: the frame's raw bytes are the WebAssembly
    /// component. The broker validates and compiles it before accepting it.
    DeployPlugin {
        name: String,
    },
    ListPlugins,
    DescribePlugin {
        name: String,
    },
    /// Deletes a plugin and all its versions.
    DeletePlugin {
        name: String,
    },
    /// A fetch whose records pass through a transform plugin (a filter or map) on the broker;
    /// only the result crosses the network. Answered with [`ResponseBody::FetchedTransformed`].
    FetchTransformed(FetchTransformedRequest),
    /// Creates a pipeline that runs transform plugins from one topic to another; answered with
    /// [`ResponseBody::Pipeline`].
    CreatePipeline(CreatePipelineRequest),
    ListPipelines,
    DescribePipeline {
        name: String,
    },
    /// Stops a pipeline's runners; the pipeline stays paused across restarts.
    PausePipeline {
        name: String,
    },
    /// Restarts a paused or failed pipeline from its checkpoints.
    ResumePipeline {
        name: String,
    },
    /// Stops a pipeline and forgets it (its output stays in the output topic).
    DeletePipeline {
        name: String,
    },
    /// Sets (or, with `None`, removes) a topic's partitioner plugin and its configuration.
    SetPartitioner {
        topic: String,
        plugin: Option<String>,
        config: Vec<(String, String)>,
    },
    /// Deletes a topic together with every pipeline that reads or writes it (`topic delete
    /// --force`); answered like [`Request::DeleteTopic`], which refuses a topic in use. A
    /// request of its own rather than a flag on `DeleteTopic`, so that clients that send the
    /// old `DeleteTopic` keep working (see the compatibility rule above).
    DeleteTopicForced {
        name: String,
    },
    /// Which broker coordinates a consumer group: the leader of the group's partition of
    /// `__consumer_offsets`. Answered by any broker with [`ResponseBody::Coordinator`].
    FindCoordinator {
        group: String,
    },
    /// The cluster as the answering broker sees it: nodes, roles, broker epochs, the metadata
    /// leader, term and commit index. Answered with [`ResponseBody::ClusterStatus`].
    ClusterStatus,
    /// Adds a node (started with `cluster.join = true`) to the metadata quorum as a voter: it
    /// becomes a learner, catches up, then the voters change (joint consensus). Answered by the
    /// metadata leader (others say `NotLeader`, naming it) with [`ResponseBody::ClusterStatus`].
    AddNode {
        node_id: u32,
        peer_addr: String,
    },
    /// Removes a node from the metadata quorum and the brokers; refused while it leads
    /// partitions. Answered like [`Request::AddNode`].
    RemoveNode {
        node_id: u32,
    },
    /// Like [`Request::CreateTopic`], with `replication_factor` replicas of each partition on
    /// as many brokers (version 4).
    CreateTopicReplicated {
        topic: CreateTopicRequest,
        replication_factor: u16,
    },
    /// Gives every partition (of `topic`, or of all topics) whose preferred replica — the
    /// first — is live and in sync but does not lead back to it (version 5). Answered with
    /// [`ResponseBody::ElectedLeaders`].
    ElectLeaders {
        topic: Option<String>,
    },
    /// Sets a topic's replication settings — `min.insync.replicas` (1 to its replica count)
    /// and whether an out-of-sync replica may lead when no in-sync one is left; `None` leaves
    /// a setting as it is (version 5). Answered with [`ResponseBody::TopicReplication`].
    AlterTopicReplication {
        topic: String,
        min_insync_replicas: Option<u16>,
        unclean_leader_election: Option<bool>,
    },
    /// A topic's replication settings (version 5). Answered with
    /// [`ResponseBody::TopicReplication`].
    DescribeTopicReplication {
        topic: String,
    },
    /// Creates a connector (version 6); answered with [`ResponseBody::Connector`]. Its
    /// settings are checked by opening it once before it is created.
    CreateConnector(CreateConnectorRequest),
    ListConnectors,
    DescribeConnector {
        name: String,
    },
    /// Stops a connector's task; it stays paused across restarts.
    PauseConnector {
        name: String,
    },
    /// Starts a paused connector's task again from its progress.
    ResumeConnector {
        name: String,
    },
    /// Starts the connector's task again now (after a failure, without waiting out the
    /// backoff), from its progress.
    RestartConnector {
        name: String,
    },
    /// Stops a connector and forgets it (what it wrote stays).
    DeleteConnector {
        name: String,
    },
    /// Who the broker takes this connection's client for: its principal and how it was
    /// authenticated (docs/security.md).
    WhoAmI,
    /// Adds access control bindings (at most [`MAX_ACLS_PER_REQUEST`]); each is a metadata
    /// log entry. Answered with the bindings now in force.
    CreateAcls {
        bindings: Vec<crate::acl::AclBinding>,
    },
    /// Removes access control bindings (at most [`MAX_ACLS_PER_REQUEST`]). Answered with the
    /// bindings now in force.
    DeleteAcls {
        bindings: Vec<crate::acl::AclBinding>,
    },
    /// Every access control binding.
    ListAcls,
    /// One step of authenticating this connection (v8): SCRAM-SHA-256's two messages, or an
    /// API token. Under a `client_auth` that takes credentials, a connection without a client
    /// certificate may send nothing but `Hello`, `WhoAmI` and this until it succeeds.
    Authenticate(crate::auth::AuthStep),
    /// Creates a user, or replaces its credential (a password change). The client derives the
    /// credential from the password: the password never leaves it. Answered with the users.
    UpsertUser {
        name: String,
        credential: crate::auth::ScramCredential,
    },
    /// Deletes a user; connections it authenticated stop working at their next request.
    DeleteUser {
        name: String,
    },
    ListUsers,
    /// Creates an API token for `principal` (the caller's own when `None`), answered with the
    /// token, shown this once.
    CreateToken {
        principal: Option<String>,
        description: String,
        /// Lifetime from now; `None`: until revoked.
        expires_in_ms: Option<u64>,
    },
    /// Revokes a token by id; connections it authenticated stop working at their next request.
    RevokeToken {
        id: String,
    },
    /// The caller's own tokens, or everyone's for a principal that may describe the cluster.
    ListTokens,
    /// Sets (or with `None` removes) a principal's quota; `*` is the default for principals
    /// without one. Answered with the quotas.
    SetQuota {
        principal: String,
        quota: Option<crate::auth::Quota>,
    },
    ListQuotas,
}

/// Most bindings one `CreateAcls` or `DeleteAcls` request carries.
pub const MAX_ACLS_PER_REQUEST: usize = 1000;

impl Request {
    /// The consumer group a request is about, if it is about one: such requests are answered
    /// by the group's coordinator.
    pub fn group(&self) -> Option<&str> {
        match self {
            Request::GroupHeartbeat(r) => Some(&r.group),
            Request::OffsetCommit(r) => Some(&r.group),
            Request::ResetOffsets(r) => Some(&r.group),
            Request::OffsetFetch { group }
            | Request::DescribeGroup { group }
            | Request::DeleteGroup { group } => Some(group),
            _ => None,
        }
    }

    /// Short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Hello(_) => "hello",
            Request::Metadata { .. } => "metadata",
            Request::CreateTopic(_) => "create_topic",
            Request::DeleteTopic { .. } => "delete_topic",
            Request::ListTopics => "list_topics",
            Request::DescribeTopic { .. } => "describe_topic",
            Request::AddPartitions { .. } => "add_partitions",
            Request::Produce(_) => "produce",
            Request::Fetch(_) => "fetch",
            Request::ListOffsets(_) => "list_offsets",
            Request::InitProducerId => "init_producer_id",
            Request::GroupHeartbeat(_) => "group_heartbeat",
            Request::OffsetCommit(_) => "offset_commit",
            Request::OffsetFetch { .. } => "offset_fetch",
            Request::ListGroups => "list_groups",
            Request::DescribeGroup { .. } => "describe_group",
            Request::ResetOffsets(_) => "reset_offsets",
            Request::DeleteGroup { .. } => "delete_group",
            Request::DeployPlugin { .. } => "deploy_plugin",
            Request::ListPlugins => "list_plugins",
            Request::DescribePlugin { .. } => "describe_plugin",
            Request::DeletePlugin { .. } => "delete_plugin",
            Request::FetchTransformed(_) => "fetch_transformed",
            Request::SetPartitioner { .. } => "set_partitioner",
            Request::CreateConnector(_) => "create_connector",
            Request::ListConnectors => "list_connectors",
            Request::DescribeConnector { .. } => "describe_connector",
            Request::PauseConnector { .. } => "pause_connector",
            Request::ResumeConnector { .. } => "resume_connector",
            Request::RestartConnector { .. } => "restart_connector",
            Request::DeleteConnector { .. } => "delete_connector",
            Request::CreatePipeline(_) => "create_pipeline",
            Request::ListPipelines => "list_pipelines",
            Request::DescribePipeline { .. } => "describe_pipeline",
            Request::PausePipeline { .. } => "pause_pipeline",
            Request::ResumePipeline { .. } => "resume_pipeline",
            Request::DeletePipeline { .. } => "delete_pipeline",
            Request::DeleteTopicForced { .. } => "delete_topic_forced",
            Request::FindCoordinator { .. } => "find_coordinator",
            Request::ClusterStatus => "cluster_status",
            Request::AddNode { .. } => "add_node",
            Request::RemoveNode { .. } => "remove_node",
            Request::CreateTopicReplicated { .. } => "create_topic_replicated",
            Request::ElectLeaders { .. } => "elect_leaders",
            Request::AlterTopicReplication { .. } => "alter_topic_replication",
            Request::DescribeTopicReplication { .. } => "describe_topic_replication",
            Request::WhoAmI => "who_am_i",
            Request::CreateAcls { .. } => "create_acls",
            Request::DeleteAcls { .. } => "delete_acls",
            Request::ListAcls => "list_acls",
            Request::Authenticate(_) => "authenticate",
            Request::UpsertUser { .. } => "upsert_user",
            Request::DeleteUser { .. } => "delete_user",
            Request::ListUsers => "list_users",
            Request::CreateToken { .. } => "create_token",
            Request::RevokeToken { .. } => "revoke_token",
            Request::ListTokens => "list_tokens",
            Request::SetQuota { .. } => "set_quota",
            Request::ListQuotas => "list_quotas",
        }
    }
}

/// The control part of a response frame.
pub type Response = Result<ResponseBody, WireError>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResponseBody {
    Hello(HelloResponse),
    Metadata(MetadataResponse),
    /// Create, delete and add-partitions answer with the topic as it now is (delete: as it was).
    Topic(TopicDescription),
    Topics(Vec<TopicDescription>),
    Produced(ProduceResponse),
    Fetched(FetchResponse),
    Offsets(Vec<PartitionOffset>),
    /// The answer to [`Request::InitProducerId`]: the id and epoch an idempotent producer stamps
    /// on its batches, beside a per-partition sequence number.
    ProducerId {
        producer_id: i64,
        epoch: i16,
    },
    GroupHeartbeat(GroupHeartbeatResponse),
    /// Committed offsets: after a commit, a fetch or a reset.
    GroupOffsets(Vec<GroupOffset>),
    Groups(Vec<GroupDescription>),
    /// Describe (and delete: the group as it was).
    Group(GroupDescription),
    /// Deploy, describe and delete answer with the plugin (delete: as it was).
    Plugin(PluginDescription),
    Plugins(Vec<PluginDescription>),
    /// The raw bytes hold, per partition in order, `bytes` of records in the plugin ABI's
    /// packed batch format (`sluice-plugin-abi`), each with its original offset.
    FetchedTransformed(FetchTransformedResponse),
    /// Create, describe, pause, resume and delete answer with the pipeline (delete: as it was).
    /// Boxed: the description is large and responses are moved around often.
    Pipeline(Box<PipelineDescription>),
    Pipelines(Vec<PipelineDescription>),
    /// The answer to a produce with [`ROUTE_BY_PARTITIONER`]: where each record of the batch
    /// went, in the batch's order.
    ProducedRouted(Vec<RoutedRecord>),
    Coordinator(BrokerInfo),
    ClusterStatus(ClusterStatus),
    /// The answer to [`Request::ElectLeaders`]: each partition handed to its preferred replica.
    ElectedLeaders(Vec<ElectedLeader>),
    /// A topic's replication settings, in effect.
    TopicReplication(TopicReplication),
    /// Create, describe, pause, resume, restart and delete answer with the connector (delete:
    /// as it was).
    Connector(Box<ConnectorDescription>),
    Connectors(Vec<ConnectorDescription>),
    /// The answer to [`Request::WhoAmI`]: the principal (`ANONYMOUS` without
    /// authentication) and the mechanism that established it (`none`, `mtls`).
    WhoAmI {
        principal: String,
        mechanism: String,
    },
    /// The answer to `CreateAcls`, `DeleteAcls` and `ListAcls`.
    Acls(Vec<crate::acl::AclBinding>),
    /// The answer to `Authenticate`.
    Authenticated(crate::auth::AuthReply),
    /// The answer to `UpsertUser`, `DeleteUser` and `ListUsers`.
    Users(Vec<crate::auth::UserDescription>),
    TokenCreated(crate::auth::CreatedToken),
    /// The answer to `RevokeToken` and `ListTokens`.
    Tokens(Vec<crate::auth::TokenDescription>),
    /// The answer to `SetQuota` and `ListQuotas`.
    Quotas(Vec<crate::auth::QuotaEntry>),
    /// An answer held back by the principal's quota for `throttle_ms` (v8 clients; older ones
    /// get the answer itself, as late). Never nested.
    Throttled {
        throttle_ms: u32,
        #[serde(deserialize_with = "not_throttled")]
        body: Box<ResponseBody>,
    },
}

/// Decodes the answer inside [`ResponseBody::Throttled`], refusing another `Throttled` in it
/// before decoding into it: a hostile frame of nested answers would otherwise recurse until the
/// stack overflows.
fn not_throttled<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Box<ResponseBody>, D::Error> {
    thread_local! {
        static INSIDE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if INSIDE.get() {
        return Err(serde::de::Error::custom(
            "a throttled answer inside another",
        ));
    }
    INSIDE.set(true);
    let body = ResponseBody::deserialize(d);
    INSIDE.set(false);
    body.map(Box::new)
}

/// A connector to create (`sluice connector create`, from its config file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateConnectorRequest {
    pub name: String,
    /// A deployed plugin of kind `source` or `sink`.
    pub plugin: String,
    /// A source's output topic (one), or a sink's input topics.
    pub topics: Vec<String>,
    /// The connector's own settings.
    pub settings: Vec<(String, String)>,
    /// Granted directories: `PATH`, `PATH:ro` or `PATH:rw` (absolute paths).
    pub dirs: Vec<String>,
    /// Hosts it may reach over HTTP.
    pub http_hosts: Vec<String>,
    /// Deployed transforms applied on the way, in order.
    pub transforms: Vec<String>,
    /// A source writes at most this many records per second (`None`: as fast as it can).
    pub max_records_per_second: Option<u64>,
    /// Where a sink sends records it can never write (`None`: such a record fails the task).
    pub dead_letter_topic: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectorDescription {
    pub name: String,
    pub plugin: String,
    /// `source` or `sink`.
    pub kind: String,
    pub topics: Vec<String>,
    pub settings: Vec<(String, String)>,
    pub dirs: Vec<String>,
    pub http_hosts: Vec<String>,
    pub transforms: Vec<String>,
    /// `running`, `starting`, `replaying`, `failed`, `paused`, `unassigned` (no live broker),
    /// or `on node N` when another broker runs it than the one answering.
    pub state: String,
    /// The broker that runs it.
    pub node: Option<u32>,
    /// Task starts so far.
    pub generation: u64,
    /// Records moved by the current task (known to the broker running it).
    pub records: u64,
    /// Records per second since the current task started, rounded (the same).
    pub records_per_second: u64,
    /// Task failures so far, and the latest: ms since the epoch and the message.
    pub failures: u64,
    pub last_error: Option<(i64, String)>,
    /// Progress: a source's checkpoint (hex), a sink's next offset per topic partition.
    pub checkpoint: String,
}

/// The answer to [`Request::AlterTopicReplication`] and [`Request::DescribeTopicReplication`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicReplication {
    pub topic: String,
    /// Replicas of each partition.
    pub replication_factor: u16,
    /// In-sync replicas `acks=all` needs (the default: 2 with three or more replicas, else 1).
    pub min_insync_replicas: u16,
    /// Whether an out-of-sync replica may lead when no in-sync one is left.
    pub unclean_leader_election: bool,
}

/// A partition whose leadership went back to its preferred replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElectedLeader {
    pub topic: String,
    pub partition: u32,
    pub leader: u32,
}

/// The answer to [`Request::ClusterStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub cluster_id: String,
    /// The node that answered; the Raft figures are its view.
    pub answered_by: u32,
    /// The metadata (Raft) leader, if one is known.
    pub controller: Option<u32>,
    pub term: u64,
    /// Index of the last metadata entry known committed.
    pub committed: Option<u64>,
    /// Index of the last metadata entry applied on the answering node.
    pub applied: Option<u64>,
    pub nodes: Vec<ClusterNode>,
}

/// One node, as [`ClusterStatus`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNode {
    pub node_id: u32,
    /// Address clients use; empty for a voter that never registered as a broker.
    pub addr: String,
    pub peer_addr: Option<String>,
    pub rack: Option<String>,
    /// `voter`, `learner`, or `observer` (a registered broker outside the Raft membership).
    pub role: String,
    /// The broker epoch of its latest registration (0 if never registered).
    pub broker_epoch: u64,
    /// Its session is current (it heartbeats to the metadata leader).
    pub live: bool,
    /// It missed its session and must register again.
    pub fenced: bool,
    /// Partitions it leads.
    pub leader_of: u32,
}

/// Where a new pipeline starts reading its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PipelineStart {
    /// From the first record still stored.
    Earliest,
    /// From the high watermark at creation: only records produced afterwards.
    Latest,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatePipelineRequest {
    pub name: String,
    /// Deployed transform plugins, applied in this order.
    pub plugins: Vec<String>,
    /// Input topic.
    pub from: String,
    /// Output topic.
    pub to: String,
    /// Configuration passed to every plugin of the chain.
    pub config: Vec<(String, String)>,
    pub start: PipelineStart,
    /// Per-call time limit; `None`: the runtime's default.
    pub max_call_ms: Option<u64>,
    /// Per-instance memory limit; `None`: the runtime's default.
    pub max_memory_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineDescription {
    pub name: String,
    pub plugins: Vec<String>,
    pub from: String,
    pub to: String,
    pub config: Vec<(String, String)>,
    /// `running`, `paused` or `failed` (failed when any input partition's runner failed).
    pub status: String,
    /// The first failed partition's error, for the user.
    pub error: Option<String>,
    pub partitions: Vec<PipelinePartition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelinePartition {
    /// Input partition.
    pub partition: u32,
    /// `running`, `paused`, `failed` or `stopped`.
    pub status: String,
    /// Next input offset to process: everything below it is in the output topic.
    pub checkpoint: u64,
    /// Input partition's high watermark.
    pub high_watermark: u64,
    /// `high_watermark - checkpoint`.
    pub lag: u64,
    pub error: Option<String>,
    /// Output batches the broker recognised as already written while this runner replayed
    /// input after a restart (dropped, not written twice).
    pub duplicates_dropped: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginDescription {
    pub name: String,
    /// `transform`, `partitioner`, `source` or `sink`: the world the component implements.
    pub kind: String,
    /// Oldest first; the last one is what runs.
    pub versions: Vec<PluginVersion>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginVersion {
    pub version: u32,
    /// SHA-256 of the component, hex.
    pub hash: String,
    pub size_bytes: u64,
    pub deployed_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchTransformedRequest {
    pub fetch: FetchRequest,
    /// A deployed transform plugin.
    pub plugin: String,
    /// Configuration passed to the plugin.
    pub config: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchTransformedResponse {
    pub partitions: Vec<TransformedPartition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransformedPartition {
    pub topic: String,
    pub partition: u32,
    pub error: Option<WireError>,
    pub high_watermark: u64,
    pub log_start: u64,
    /// Where the consumer continues: past every input record the plugin saw, including
    /// those it filtered out.
    pub next_offset: u64,
    /// Length of this partition's packed records in the frame's raw bytes.
    pub bytes: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutedRecord {
    pub partition: u32,
    pub offset: u64,
}

/// A topic and some of its partitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicPartitions {
    pub topic: String,
    pub partitions: Vec<u32>,
}

impl TopicPartitions {
    /// Groups `(topic, partition)` pairs, sorted by topic, into one entry per topic.
    pub fn group<'a>(pairs: impl IntoIterator<Item = &'a (String, u32)>) -> Vec<TopicPartitions> {
        let mut out: Vec<TopicPartitions> = Vec::new();
        for (t, p) in pairs {
            match out.last_mut() {
                Some(last) if &last.topic == t => last.partitions.push(*p),
                _ => out.push(TopicPartitions {
                    topic: t.clone(),
                    partitions: vec![*p],
                }),
            }
        }
        out
    }

    /// The `(topic, partition)` pairs of a list, the inverse of [`TopicPartitions::group`].
    pub fn pairs(list: &[TopicPartitions]) -> impl Iterator<Item = (String, u32)> + '_ {
        list.iter()
            .flat_map(|t| t.partitions.iter().map(move |p| (t.topic.clone(), *p)))
    }
}

/// `member_epoch` values with a meaning of their own in [`GroupHeartbeatRequest`].
pub mod member_epoch {
    /// Join the group.
    pub const JOIN: i32 = 0;
    /// Leave the group; partitions are reassigned at once.
    pub const LEAVE: i32 = -1;
    /// A static member stopping briefly: keeps its partitions until its session times out.
    pub const STATIC_LEAVE: i32 = -2;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupHeartbeatRequest {
    pub group: String,
    /// `None` when joining: the coordinator assigns one.
    pub member_id: Option<String>,
    /// Static membership: a stable id that survives restarts without a rebalance.
    pub instance_id: Option<String>,
    pub client_id: String,
    /// See [`member_epoch`]; otherwise the last epoch the member received.
    pub member_epoch: i32,
    /// Subscribed topics; `None` keeps the previous subscription.
    pub topics: Option<Vec<String>>,
    /// Subscribes to every topic whose name matches this glob (`*` any run of characters,
    /// `?` one character), now and as topics appear; used instead of `topics`.
    pub topic_pattern: Option<String>,
    /// `range`, `round-robin` or `sticky` (default); the first member's choice holds.
    pub assignor: Option<String>,
    /// Partitions the member still owns (is consuming); `None` when unchanged.
    pub owned: Option<Vec<TopicPartitions>>,
    pub session_timeout_ms: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupHeartbeatResponse {
    pub member_id: String,
    pub member_epoch: i32,
    pub heartbeat_interval_ms: u32,
    /// What the member may own now. Owned partitions missing here must be revoked: commit,
    /// stop consuming, and stop reporting them as owned.
    pub assignment: Vec<TopicPartitions>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupOffset {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetCommitRequest {
    pub group: String,
    /// `None` only for groups without members (tools, manually assigned consumers).
    pub member_id: Option<String>,
    pub member_epoch: i32,
    pub offsets: Vec<GroupOffset>,
}

/// Where `group reset-offsets` moves a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResetTo {
    Earliest,
    Latest,
    Offset(u64),
    /// The first offset at or after this time, ms since the Unix epoch.
    Timestamp(i64),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetOffsetsRequest {
    pub group: String,
    pub topic: String,
    pub to: ResetTo,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupDescription {
    pub group: String,
    /// Bumped whenever membership or subscriptions change.
    pub epoch: u32,
    pub assignor: String,
    pub members: Vec<GroupMember>,
    /// Per partition with a committed offset or an owner: committed offset, log end and lag.
    pub partitions: Vec<GroupPartition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub member_epoch: u32,
    pub assignment: Vec<TopicPartitions>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupPartition {
    pub topic: String,
    pub partition: u32,
    pub owner: Option<String>,
    pub committed: Option<u64>,
    /// The high watermark: what a consumer can read up to.
    pub log_end: u64,
    /// `log_end - committed` (or `log_end - log_start` with nothing committed).
    pub lag: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloRequest {
    pub min_version: u16,
    pub max_version: u16,
    /// Free text identifying the client, for the broker's logs.
    pub client_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloResponse {
    /// The version both sides now speak.
    pub version: u16,
    pub node_id: u32,
    pub cluster_id: String,
    /// Largest frame the broker accepts.
    pub max_frame_bytes: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerInfo {
    pub node_id: u32,
    /// Address clients connect to, `host:port`.
    pub addr: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataResponse {
    pub cluster_id: String,
    pub controller: Option<u32>,
    pub brokers: Vec<BrokerInfo>,
    pub topics: Vec<TopicMetadata>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMetadata {
    pub name: String,
    pub topic_id: u64,
    /// The topic's partitioner plugin, if any: producers then send records without an
    /// explicit partition with [`ROUTE_BY_PARTITIONER`].
    pub partitioner: Option<String>,
    pub partitions: Vec<PartitionMetadata>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMetadata {
    pub partition: u32,
    /// Node id of the leader; `None` while no leader is elected.
    pub leader: Option<u32>,
    pub leader_epoch: u32,
    pub replicas: Vec<u32>,
    pub in_sync: Vec<u32>,
}

/// How long a topic keeps its data safe before an append is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Durability {
    /// Every acknowledged batch has been fsync'd.
    #[default]
    Fsync,
    /// Batches are acknowledged once written; fsync runs at least every `ms` milliseconds.
    IntervalMs(u64),
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Durability::Fsync => f.write_str("fsync"),
            Durability::IntervalMs(ms) => write!(f, "interval:{ms}"),
        }
    }
}

impl std::str::FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "fsync" {
            return Ok(Durability::Fsync);
        }
        if let Some(ms) = s.strip_prefix("interval:") {
            return match ms.parse::<u64>() {
                Ok(ms) if ms > 0 => Ok(Durability::IntervalMs(ms)),
                _ => Err(format!(
                    "durability {s:?}: the interval must be a positive number of ms"
                )),
            };
        }
        Err(format!("durability {s:?}: expected fsync or interval:<ms>"))
    }
}

/// Per-topic settings. `None` means "no limit".
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TopicConfig {
    /// Delete batches whose newest record is older than this.
    pub retention_ms: Option<u64>,
    /// Delete the oldest batches while a partition holds more than this.
    pub retention_bytes: Option<u64>,
    pub durability: Durability,
    /// Largest batch the topic accepts; `None` uses the broker's limit.
    pub max_batch_bytes: Option<u32>,
    /// A deployed partitioner plugin that places records produced without an explicit
    /// partition (the producer sends them with [`ROUTE_BY_PARTITIONER`]); `None`: the key
    /// hash, sticky for records without key.
    pub partitioner: Option<String>,
    /// Configuration passed to the partitioner plugin.
    pub partitioner_config: Vec<(String, String)>,
}

/// `ProduceRequest::partition` meaning "let the topic's partitioner plugin place each record";
/// answered with [`ResponseBody::ProducedRouted`].
pub const ROUTE_BY_PARTITIONER: u32 = u32::MAX;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateTopicRequest {
    pub name: String,
    pub partitions: u32,
    pub config: TopicConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicDescription {
    pub name: String,
    pub topic_id: u64,
    pub config: TopicConfig,
    pub partitions: Vec<PartitionDescription>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionDescription {
    pub partition: u32,
    pub leader: Option<u32>,
    pub leader_epoch: u32,
    /// Earliest offset still stored.
    pub log_start: u64,
    /// Offset the next record will get.
    pub log_end: u64,
    /// Offset up to which records are committed and visible to consumers.
    pub high_watermark: u64,
    /// Bytes of stored batches.
    pub size_bytes: u64,
}

/// How many acknowledgements a producer waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Acks {
    /// Fire and forget: the broker sends no response.
    None,
    /// The leader has appended the batch (under the topic's durability setting).
    Leader,
    /// The high watermark has passed the batch: every in-sync replica has it.
    #[default]
    All,
}

impl std::str::FromStr for Acks {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "0" => Ok(Acks::None),
            "1" => Ok(Acks::Leader),
            "all" | "-1" => Ok(Acks::All),
            other => Err(format!("acks {other:?}: expected 0, 1 or all")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProduceRequest {
    pub topic: String,
    pub partition: u32,
    pub acks: Acks,
    /// How long the broker may wait for the acknowledgement condition.
    pub timeout_ms: u32,
    /// The leader epoch the client believes the partition's leader is in (from its metadata);
    /// `None` skips the check. An older epoch is answered `FencedLeaderEpoch`, a newer one
    /// `UnknownLeaderEpoch`: either way the client refreshes its metadata and retries.
    pub leader_epoch: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProduceResponse {
    /// Offset given to the first record of the batch.
    pub base_offset: u64,
    pub log_start: u64,
    /// Broker time at append, ms since the Unix epoch.
    pub append_time: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchRequest {
    /// Longest time to wait for `min_bytes` to arrive (long-poll).
    pub max_wait_ms: u32,
    pub min_bytes: u32,
    /// Upper bound on the whole response's batches; at least one batch is returned even if
    /// it alone is larger, so a consumer always makes progress.
    pub max_bytes: u32,
    pub partitions: Vec<FetchPartition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchPartition {
    pub topic: String,
    pub partition: u32,
    /// First offset wanted; the first batch returned may start before it.
    pub offset: u64,
    pub max_bytes: u32,
    /// As in [`ProduceRequest::leader_epoch`].
    pub leader_epoch: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchResponse {
    /// One entry per requested partition, in request order. The raw bytes of the frame are
    /// the concatenation of each entry's `bytes` worth of batches, in the same order.
    pub partitions: Vec<FetchedPartition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchedPartition {
    pub topic: String,
    pub partition: u32,
    pub error: Option<WireError>,
    pub high_watermark: u64,
    pub log_start: u64,
    /// Length of this partition's batches in the frame's raw bytes.
    pub bytes: u32,
}

/// Which offset [`Request::ListOffsets`] looks up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OffsetSpec {
    Earliest,
    Latest,
    /// First offset whose record timestamp is at or after this time (ms since the Unix epoch);
    /// the log end if there is none.
    Timestamp(i64),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListOffsetsRequest {
    pub topic: String,
    pub partitions: Vec<(u32, OffsetSpec)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionOffset {
    pub partition: u32,
    pub result: Result<u64, WireError>,
}

/// Every compression codec, for listings.
pub const COMPRESSIONS: [Compression; 3] = [Compression::None, Compression::Lz4, Compression::Zstd];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use crate::frame::{decode_body, encode_body};
    use bytes::Bytes;
    use proptest::prelude::*;

    #[test]
    fn a_throttled_answer_inside_another_is_refused_without_recursing() {
        let one = ResponseBody::Throttled {
            throttle_ms: 5,
            body: Box::new(ResponseBody::Quotas(vec![])),
        };
        let bytes = postcard::to_allocvec(&one).unwrap();
        assert_eq!(postcard::from_bytes::<ResponseBody>(&bytes).unwrap(), one);
        let two = ResponseBody::Throttled {
            throttle_ms: 5,
            body: Box::new(one.clone()),
        };
        assert!(
            postcard::from_bytes::<ResponseBody>(&postcard::to_allocvec(&two).unwrap()).is_err()
        );
        // A million nested levels (a hostile frame) are refused at the second.
        let tag = bytes[0];
        let mut deep = Vec::new();
        for _ in 0..1_000_000 {
            deep.extend_from_slice(&[tag, 5]);
        }
        assert!(postcard::from_bytes::<ResponseBody>(&deep).is_err());
        // Decoding still works after a refusal.
        assert_eq!(postcard::from_bytes::<ResponseBody>(&bytes).unwrap(), one);
    }

    fn arb_wire_error() -> impl Strategy<Value = WireError> {
        (
            prop_oneof![
                Just(ErrorCode::OffsetOutOfRange),
                Just(ErrorCode::NotLeader),
                Just(ErrorCode::OutOfOrderSequence),
                Just(ErrorCode::ProducerFenced),
            ],
            ".{0,20}",
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u32>()),
        )
            .prop_map(|(code, message, offset, leader)| WireError {
                code,
                message,
                offset,
                leader,
            })
    }

    fn arb_config() -> impl Strategy<Value = TopicConfig> {
        (
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
            prop_oneof![
                Just(Durability::Fsync),
                any::<u64>().prop_map(Durability::IntervalMs)
            ],
            proptest::option::of(any::<u32>()),
            proptest::option::of("[a-z-]{1,6}"),
        )
            .prop_map(
                |(retention_ms, retention_bytes, durability, max_batch_bytes, partitioner)| {
                    TopicConfig {
                        retention_ms,
                        retention_bytes,
                        durability,
                        max_batch_bytes,
                        partitioner_config: partitioner
                            .iter()
                            .map(|p| ("field".to_string(), p.clone()))
                            .collect(),
                        partitioner,
                    }
                },
            )
    }

    fn arb_partition_desc() -> impl Strategy<Value = PartitionDescription> {
        (
            any::<u32>(),
            proptest::option::of(any::<u32>()),
            any::<u32>(),
            any::<[u64; 4]>(),
        )
            .prop_map(|(partition, leader, leader_epoch, [a, b, c, d])| {
                PartitionDescription {
                    partition,
                    leader,
                    leader_epoch,
                    log_start: a,
                    log_end: b,
                    high_watermark: c,
                    size_bytes: d,
                }
            })
    }

    fn arb_topic() -> impl Strategy<Value = TopicDescription> {
        (
            "[a-z]{1,10}",
            any::<u64>(),
            arb_config(),
            proptest::collection::vec(arb_partition_desc(), 0..4),
        )
            .prop_map(|(name, topic_id, config, partitions)| TopicDescription {
                name,
                topic_id,
                config,
                partitions,
            })
    }

    fn arb_acks() -> impl Strategy<Value = Acks> {
        prop_oneof![Just(Acks::None), Just(Acks::Leader), Just(Acks::All)]
    }

    fn arb_request() -> impl Strategy<Value = Request> {
        prop_oneof![
            (any::<u16>(), any::<u16>(), ".{0,10}").prop_map(
                |(min_version, max_version, client_id)| {
                    Request::Hello(HelloRequest {
                        min_version,
                        max_version,
                        client_id,
                    })
                }
            ),
            proptest::option::of(proptest::collection::vec("[a-z]{1,5}", 0..3))
                .prop_map(|topics| Request::Metadata { topics }),
            ("[a-z]{1,10}", any::<u32>(), arb_config()).prop_map(|(name, partitions, config)| {
                Request::CreateTopic(CreateTopicRequest {
                    name,
                    partitions,
                    config,
                })
            }),
            "[a-z]{1,10}".prop_map(|name| Request::DeleteTopic { name }),
            "[a-z]{1,10}".prop_map(|name| Request::DeleteTopicForced { name }),
            Just(Request::ListTopics),
            "[a-z]{1,10}".prop_map(|name| Request::DescribeTopic { name }),
            ("[a-z]{1,10}", any::<u32>())
                .prop_map(|(name, count)| Request::AddPartitions { name, count }),
            (
                "[a-z]{1,10}",
                any::<u32>(),
                arb_acks(),
                any::<u32>(),
                any::<Option<u32>>()
            )
                .prop_map(|(topic, partition, acks, timeout_ms, leader_epoch)| {
                    Request::Produce(ProduceRequest {
                        topic,
                        partition,
                        acks,
                        timeout_ms,
                        leader_epoch,
                    })
                }),
            (
                any::<[u32; 3]>(),
                proptest::collection::vec(
                    (
                        "[a-z]{1,5}",
                        any::<u32>(),
                        any::<u64>(),
                        any::<u32>(),
                        any::<Option<u32>>()
                    ),
                    0..4
                )
            )
                .prop_map(|([max_wait_ms, min_bytes, max_bytes], ps)| Request::Fetch(
                    FetchRequest {
                        max_wait_ms,
                        min_bytes,
                        max_bytes,
                        partitions: ps
                            .into_iter()
                            .map(|(topic, partition, offset, max_bytes, leader_epoch)| {
                                FetchPartition {
                                    topic,
                                    partition,
                                    offset,
                                    max_bytes,
                                    leader_epoch,
                                }
                            })
                            .collect(),
                    }
                )),
            (
                "[a-z]{1,5}",
                proptest::collection::vec(
                    (
                        any::<u32>(),
                        prop_oneof![
                            Just(OffsetSpec::Earliest),
                            Just(OffsetSpec::Latest),
                            any::<i64>().prop_map(OffsetSpec::Timestamp)
                        ]
                    ),
                    0..4
                )
            )
                .prop_map(|(topic, partitions)| Request::ListOffsets(
                    ListOffsetsRequest { topic, partitions }
                )),
            Just(Request::InitProducerId),
            arb_group_request(),
            arb_plugin_request(),
            arb_pipeline_request(),
            arb_cluster_request(),
        ]
    }

    /// The requests of versions 3 to 5: coordinators, the cluster, replicated topics.
    fn arb_cluster_request() -> impl Strategy<Value = Request> {
        prop_oneof![
            "[a-z]{1,5}".prop_map(|group| Request::FindCoordinator { group }),
            Just(Request::ClusterStatus),
            (any::<u32>(), "[0-9.:]{0,12}")
                .prop_map(|(node_id, peer_addr)| Request::AddNode { node_id, peer_addr }),
            any::<u32>().prop_map(|node_id| Request::RemoveNode { node_id }),
            ("[a-z]{1,10}", any::<u32>(), arb_config(), any::<u16>()).prop_map(
                |(name, partitions, config, replication_factor)| Request::CreateTopicReplicated {
                    topic: CreateTopicRequest {
                        name,
                        partitions,
                        config,
                    },
                    replication_factor,
                }
            ),
            proptest::option::of("[a-z]{1,10}").prop_map(|topic| Request::ElectLeaders { topic }),
            (
                "[a-z]{1,10}",
                proptest::option::of(any::<u16>()),
                proptest::option::of(any::<bool>())
            )
                .prop_map(|(topic, min_insync_replicas, unclean_leader_election)| {
                    Request::AlterTopicReplication {
                        topic,
                        min_insync_replicas,
                        unclean_leader_election,
                    }
                }),
            "[a-z]{1,10}".prop_map(|topic| Request::DescribeTopicReplication { topic }),
            (
                "[a-z-]{1,8}",
                proptest::collection::vec("[a-z]{1,6}", 0..3),
                proptest::collection::vec(("[a-z]{1,4}", "[ -~]{0,8}"), 0..3),
                proptest::collection::vec("/[a-z/]{0,8}(:rw)?", 0..2),
            )
                .prop_map(|(name, topics, settings, dirs)| {
                    Request::CreateConnector(CreateConnectorRequest {
                        plugin: format!("{name}-plugin"),
                        name,
                        topics,
                        settings,
                        dirs,
                        http_hosts: vec!["localhost:8080".into()],
                        transforms: Vec::new(),
                        max_records_per_second: Some(1000),
                        dead_letter_topic: Some("dlq".into()),
                    })
                }),
            Just(Request::ListConnectors),
            "[a-z-]{1,8}".prop_map(|name| Request::DescribeConnector { name }),
            "[a-z-]{1,8}".prop_map(|name| Request::PauseConnector { name }),
            "[a-z-]{1,8}".prop_map(|name| Request::ResumeConnector { name }),
            "[a-z-]{1,8}".prop_map(|name| Request::RestartConnector { name }),
            "[a-z-]{1,8}".prop_map(|name| Request::DeleteConnector { name }),
        ]
    }

    fn arb_connector_description() -> impl Strategy<Value = ConnectorDescription> {
        (
            "[a-z-]{1,8}",
            any::<u64>(),
            proptest::option::of(any::<u32>()),
            proptest::option::of((any::<i64>(), "[ -~]{0,12}")),
        )
            .prop_map(|(name, n, node, last_error)| ConnectorDescription {
                plugin: format!("{name}-plugin"),
                name,
                kind: "source".into(),
                topics: vec!["t".into()],
                settings: vec![("path".into(), "/tmp/x".into())],
                dirs: vec!["/tmp:ro".into()],
                http_hosts: Vec::new(),
                transforms: Vec::new(),
                state: "running".into(),
                node,
                generation: n % 1000,
                records: n,
                records_per_second: n % 1000,
                failures: n % 7,
                last_error,
                checkpoint: "00ff".into(),
            })
    }

    fn arb_cluster_response() -> impl Strategy<Value = Response> {
        prop_oneof![
            (any::<u32>(), "[0-9.:]{0,12}").prop_map(|(node_id, addr)| Ok(
                ResponseBody::Coordinator(BrokerInfo { node_id, addr })
            )),
            (
                "[a-z0-9-]{0,8}",
                any::<u32>(),
                proptest::option::of(any::<u32>()),
                any::<u64>(),
                proptest::option::of(any::<u64>()),
                proptest::collection::vec(
                    (
                        any::<u32>(),
                        "[0-9.:]{0,12}",
                        any::<u64>(),
                        any::<[bool; 2]>()
                    ),
                    0..3
                ),
            )
                .prop_map(
                    |(cluster_id, answered_by, controller, term, committed, nodes)| {
                        Ok(ResponseBody::ClusterStatus(ClusterStatus {
                            cluster_id,
                            answered_by,
                            controller,
                            term,
                            committed,
                            applied: committed,
                            nodes: nodes
                                .into_iter()
                                .map(
                                    |(node_id, addr, broker_epoch, [live, fenced])| ClusterNode {
                                        node_id,
                                        peer_addr: Some(addr.clone()),
                                        addr,
                                        rack: None,
                                        role: "voter".into(),
                                        broker_epoch,
                                        live,
                                        fenced,
                                        leader_of: node_id % 7,
                                    },
                                )
                                .collect(),
                        }))
                    }
                ),
            arb_connector_description().prop_map(|c| Ok(ResponseBody::Connector(Box::new(c)))),
            proptest::collection::vec(arb_connector_description(), 0..3)
                .prop_map(|c| Ok(ResponseBody::Connectors(c))),
            ("[a-z]{1,10}", any::<u16>(), any::<u16>(), any::<bool>()).prop_map(
                |(topic, replication_factor, min_insync_replicas, unclean_leader_election)| Ok(
                    ResponseBody::TopicReplication(TopicReplication {
                        topic,
                        replication_factor,
                        min_insync_replicas,
                        unclean_leader_election
                    })
                )
            ),
            proptest::collection::vec(("[a-z]{1,5}", any::<u32>(), any::<u32>()), 0..4).prop_map(
                |e| Ok(ResponseBody::ElectedLeaders(
                    e.into_iter()
                        .map(|(topic, partition, leader)| ElectedLeader {
                            topic,
                            partition,
                            leader
                        })
                        .collect()
                ))
            ),
        ]
    }

    fn arb_pipeline_request() -> impl Strategy<Value = Request> {
        prop_oneof![
            (
                "[a-z-]{1,8}",
                proptest::collection::vec("[a-z-]{1,6}", 0..3),
                proptest::collection::vec(("[a-z]{1,4}", "[a-z0-9]{0,4}"), 0..3),
                any::<bool>(),
                proptest::option::of(any::<u64>()),
                proptest::option::of(any::<u64>()),
            )
                .prop_map(
                    |(name, plugins, config, latest, max_call_ms, max_memory_bytes)| {
                        Request::CreatePipeline(CreatePipelineRequest {
                            name,
                            plugins,
                            from: "a".into(),
                            to: "b".into(),
                            config,
                            start: if latest {
                                PipelineStart::Latest
                            } else {
                                PipelineStart::Earliest
                            },
                            max_call_ms,
                            max_memory_bytes,
                        })
                    }
                ),
            Just(Request::ListPipelines),
            "[a-z-]{1,8}".prop_map(|name| Request::DescribePipeline { name }),
            "[a-z-]{1,8}".prop_map(|name| Request::PausePipeline { name }),
            "[a-z-]{1,8}".prop_map(|name| Request::ResumePipeline { name }),
            "[a-z-]{1,8}".prop_map(|name| Request::DeletePipeline { name }),
        ]
    }

    fn arb_pipeline_description() -> impl Strategy<Value = PipelineDescription> {
        (
            "[a-z-]{1,8}",
            proptest::option::of(".{0,12}"),
            proptest::collection::vec((any::<[u64; 4]>(), proptest::option::of(".{0,12}")), 0..3),
        )
            .prop_map(|(name, error, ps)| PipelineDescription {
                name,
                plugins: vec!["p".into(), "q".into()],
                from: "a".into(),
                to: "b".into(),
                config: vec![("k".into(), "v".into())],
                status: "failed".into(),
                error,
                partitions: ps
                    .into_iter()
                    .enumerate()
                    .map(
                        |(i, ([checkpoint, high_watermark, lag, duplicates_dropped], error))| {
                            PipelinePartition {
                                partition: i as u32,
                                status: "running".into(),
                                checkpoint,
                                high_watermark,
                                lag,
                                error,
                                duplicates_dropped,
                            }
                        },
                    )
                    .collect(),
            })
    }

    fn arb_plugin_request() -> impl Strategy<Value = Request> {
        prop_oneof![
            "[a-z-]{1,8}".prop_map(|name| Request::DeployPlugin { name }),
            Just(Request::ListPlugins),
            "[a-z-]{1,8}".prop_map(|name| Request::DescribePlugin { name }),
            "[a-z-]{1,8}".prop_map(|name| Request::DeletePlugin { name }),
            ("[a-z]{1,5}", proptest::option::of("[a-z-]{1,6}")).prop_map(|(topic, plugin)| {
                Request::SetPartitioner {
                    topic,
                    plugin,
                    config: vec![("field".into(), "user".into())],
                }
            }),
            (
                "[a-z]{1,5}",
                any::<u64>(),
                proptest::collection::vec(("[a-z]{1,4}", "[a-z0-9]{0,4}"), 0..3)
            )
                .prop_map(|(topic, offset, config)| Request::FetchTransformed(
                    FetchTransformedRequest {
                        fetch: FetchRequest {
                            max_wait_ms: 1,
                            min_bytes: 1,
                            max_bytes: 2,
                            partitions: vec![FetchPartition {
                                topic,
                                partition: 0,
                                offset,
                                max_bytes: 3,
                                leader_epoch: Some(4),
                            }],
                        },
                        plugin: "p".into(),
                        config,
                    }
                )),
        ]
    }

    fn arb_plugin_description() -> impl Strategy<Value = PluginDescription> {
        (
            "[a-z-]{1,8}",
            proptest::collection::vec(
                (any::<u32>(), "[0-9a-f]{8}", any::<u64>(), any::<i64>()),
                0..3,
            ),
        )
            .prop_map(|(name, versions)| PluginDescription {
                name,
                kind: "transform".into(),
                versions: versions
                    .into_iter()
                    .map(
                        |(version, hash, size_bytes, deployed_at_ms)| PluginVersion {
                            version,
                            hash,
                            size_bytes,
                            deployed_at_ms,
                        },
                    )
                    .collect(),
            })
    }

    fn arb_tps() -> impl Strategy<Value = Vec<TopicPartitions>> {
        proptest::collection::vec(
            ("[a-z]{1,5}", proptest::collection::vec(any::<u32>(), 0..4))
                .prop_map(|(topic, partitions)| TopicPartitions { topic, partitions }),
            0..3,
        )
    }

    fn arb_offsets() -> impl Strategy<Value = Vec<GroupOffset>> {
        proptest::collection::vec(
            ("[a-z]{1,5}", any::<u32>(), any::<u64>()).prop_map(|(topic, partition, offset)| {
                GroupOffset {
                    topic,
                    partition,
                    offset,
                }
            }),
            0..3,
        )
    }

    fn arb_group_description() -> impl Strategy<Value = GroupDescription> {
        (
            "[a-z]{1,5}",
            any::<u32>(),
            proptest::collection::vec(
                (
                    "[a-z0-9-]{1,8}",
                    proptest::option::of("[a-z]{1,4}"),
                    any::<u32>(),
                    arb_tps(),
                ),
                0..3,
            ),
            proptest::collection::vec(
                (
                    "[a-z]{1,5}",
                    any::<u32>(),
                    proptest::option::of("[a-z]{1,3}"),
                    proptest::option::of(any::<u64>()),
                    any::<[u64; 2]>(),
                ),
                0..3,
            ),
        )
            .prop_map(|(group, epoch, members, partitions)| GroupDescription {
                group,
                epoch,
                assignor: "sticky".into(),
                members: members
                    .into_iter()
                    .map(
                        |(member_id, instance_id, member_epoch, assignment)| GroupMember {
                            client_id: member_id.clone(),
                            member_id,
                            instance_id,
                            member_epoch,
                            assignment,
                        },
                    )
                    .collect(),
                partitions: partitions
                    .into_iter()
                    .map(
                        |(topic, partition, owner, committed, [log_end, lag])| GroupPartition {
                            topic,
                            partition,
                            owner,
                            committed,
                            log_end,
                            lag,
                        },
                    )
                    .collect(),
            })
    }

    fn arb_group_request() -> impl Strategy<Value = Request> {
        prop_oneof![
            (
                "[a-z]{1,5}",
                proptest::option::of("[a-z0-9-]{1,8}"),
                proptest::option::of("[a-z]{1,4}"),
                any::<i32>(),
                proptest::option::of(proptest::collection::vec("[a-z]{1,5}", 0..3)),
                proptest::option::of(arb_tps()),
                any::<u32>(),
            )
                .prop_map(
                    |(
                        group,
                        member_id,
                        instance_id,
                        member_epoch,
                        topics,
                        owned,
                        session_timeout_ms,
                    )| {
                        Request::GroupHeartbeat(GroupHeartbeatRequest {
                            group,
                            member_id,
                            instance_id,
                            client_id: "c".into(),
                            member_epoch,
                            topic_pattern: topics.as_ref().map(|t| format!("{}*", t.len())),
                            topics,
                            assignor: Some("range".into()),
                            owned,
                            session_timeout_ms,
                        })
                    }
                ),
            (
                "[a-z]{1,5}",
                proptest::option::of("[a-z0-9-]{1,8}"),
                any::<i32>(),
                arb_offsets()
            )
                .prop_map(|(group, member_id, member_epoch, offsets)| {
                    Request::OffsetCommit(OffsetCommitRequest {
                        group,
                        member_id,
                        member_epoch,
                        offsets,
                    })
                }),
            "[a-z]{1,5}".prop_map(|group| Request::OffsetFetch { group }),
            Just(Request::ListGroups),
            "[a-z]{1,5}".prop_map(|group| Request::DescribeGroup { group }),
            (
                "[a-z]{1,5}",
                "[a-z]{1,5}",
                prop_oneof![
                    Just(ResetTo::Earliest),
                    Just(ResetTo::Latest),
                    any::<u64>().prop_map(ResetTo::Offset),
                    any::<i64>().prop_map(ResetTo::Timestamp)
                ]
            )
                .prop_map(|(group, topic, to)| Request::ResetOffsets(
                    ResetOffsetsRequest { group, topic, to }
                )),
            "[a-z]{1,5}".prop_map(|group| Request::DeleteGroup { group }),
        ]
    }

    fn arb_group_response() -> impl Strategy<Value = Response> {
        prop_oneof![
            ("[a-z0-9-]{1,8}", any::<i32>(), any::<u32>(), arb_tps()).prop_map(
                |(member_id, member_epoch, heartbeat_interval_ms, assignment)| Ok(
                    ResponseBody::GroupHeartbeat(GroupHeartbeatResponse {
                        member_id,
                        member_epoch,
                        heartbeat_interval_ms,
                        assignment
                    })
                )
            ),
            arb_offsets().prop_map(|o| Ok(ResponseBody::GroupOffsets(o))),
            proptest::collection::vec(arb_group_description(), 0..3)
                .prop_map(|g| Ok(ResponseBody::Groups(g))),
            arb_group_description().prop_map(|g| Ok(ResponseBody::Group(g))),
        ]
    }

    fn arb_response() -> impl Strategy<Value = Response> {
        prop_oneof![
            arb_wire_error().prop_map(Err),
            (any::<u16>(), any::<u32>(), "[a-z0-9-]{0,12}", any::<u32>()).prop_map(
                |(version, node_id, cluster_id, max_frame_bytes)| Ok(ResponseBody::Hello(
                    HelloResponse {
                        version,
                        node_id,
                        cluster_id,
                        max_frame_bytes
                    }
                ))
            ),
            (
                "[a-z]{0,5}",
                proptest::option::of(any::<u32>()),
                proptest::collection::vec((any::<u32>(), "[0-9.:]{0,12}"), 0..3),
                proptest::collection::vec(
                    (
                        "[a-z]{1,5}",
                        any::<u64>(),
                        proptest::collection::vec(
                            (
                                any::<u32>(),
                                proptest::option::of(any::<u32>()),
                                any::<u32>(),
                                proptest::collection::vec(any::<u32>(), 0..3)
                            ),
                            0..3
                        )
                    ),
                    0..3
                )
            )
                .prop_map(|(cluster_id, controller, brokers, topics)| Ok(
                    ResponseBody::Metadata(MetadataResponse {
                        cluster_id,
                        controller,
                        brokers: brokers
                            .into_iter()
                            .map(|(node_id, addr)| BrokerInfo { node_id, addr })
                            .collect(),
                        topics: topics
                            .into_iter()
                            .map(|(name, topic_id, ps)| TopicMetadata {
                                partitioner: (topic_id % 2 == 0).then(|| name.clone()),
                                name,
                                topic_id,
                                partitions: ps
                                    .into_iter()
                                    .map(|(partition, leader, leader_epoch, replicas)| {
                                        PartitionMetadata {
                                            partition,
                                            leader,
                                            leader_epoch,
                                            in_sync: replicas.clone(),
                                            replicas,
                                        }
                                    })
                                    .collect(),
                            })
                            .collect(),
                    })
                )),
            arb_topic().prop_map(|t| Ok(ResponseBody::Topic(t))),
            proptest::collection::vec(arb_topic(), 0..3).prop_map(|t| Ok(ResponseBody::Topics(t))),
            (any::<u64>(), any::<u64>(), any::<i64>()).prop_map(
                |(base_offset, log_start, append_time)| {
                    Ok(ResponseBody::Produced(ProduceResponse {
                        base_offset,
                        log_start,
                        append_time,
                    }))
                }
            ),
            proptest::collection::vec(
                (
                    "[a-z]{1,5}",
                    any::<u32>(),
                    proptest::option::of(arb_wire_error()),
                    any::<u64>(),
                    any::<u64>(),
                    any::<u32>()
                ),
                0..4
            )
            .prop_map(|ps| Ok(ResponseBody::Fetched(FetchResponse {
                partitions: ps
                    .into_iter()
                    .map(
                        |(topic, partition, error, high_watermark, log_start, bytes)| {
                            FetchedPartition {
                                topic,
                                partition,
                                error,
                                high_watermark,
                                log_start,
                                bytes,
                            }
                        }
                    )
                    .collect(),
            }))),
            proptest::collection::vec(
                (
                    any::<u32>(),
                    prop_oneof![any::<u64>().prop_map(Ok), arb_wire_error().prop_map(Err)]
                ),
                0..4
            )
            .prop_map(|ps| Ok(ResponseBody::Offsets(
                ps.into_iter()
                    .map(|(partition, result)| PartitionOffset { partition, result })
                    .collect()
            ))),
            (any::<i64>(), any::<i16>()).prop_map(|(producer_id, epoch)| Ok(
                ResponseBody::ProducerId { producer_id, epoch }
            )),
            arb_group_response(),
            arb_cluster_response(),
            arb_plugin_description().prop_map(|p| Ok(ResponseBody::Plugin(p))),
            arb_pipeline_description().prop_map(|p| Ok(ResponseBody::Pipeline(Box::new(p)))),
            proptest::collection::vec(arb_pipeline_description(), 0..3)
                .prop_map(|p| Ok(ResponseBody::Pipelines(p))),
            proptest::collection::vec((any::<u32>(), any::<u64>()), 0..4).prop_map(|r| Ok(
                ResponseBody::ProducedRouted(
                    r.into_iter()
                        .map(|(partition, offset)| RoutedRecord { partition, offset })
                        .collect()
                )
            )),
            proptest::collection::vec(arb_plugin_description(), 0..3)
                .prop_map(|p| Ok(ResponseBody::Plugins(p))),
            (
                any::<[u64; 3]>(),
                any::<u32>(),
                proptest::option::of(arb_wire_error())
            )
                .prop_map(
                    |([high_watermark, log_start, next_offset], bytes, error)| Ok(
                        ResponseBody::FetchedTransformed(FetchTransformedResponse {
                            partitions: vec![TransformedPartition {
                                topic: "t".into(),
                                partition: 1,
                                error,
                                high_watermark,
                                log_start,
                                next_offset,
                                bytes,
                            }],
                        })
                    )
                ),
        ]
    }

    proptest! {
        #[test]
        fn request_roundtrip(req in arb_request(), raw in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut body = Vec::new();
            encode_body(&req, &raw, &mut body).unwrap();
            let (back, back_raw): (Request, Bytes) = decode_body(Bytes::from(body)).unwrap();
            prop_assert_eq!(back, req);
            prop_assert_eq!(&back_raw[..], &raw[..]);
        }

        #[test]
        fn response_roundtrip(resp in arb_response(), raw in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut body = Vec::new();
            encode_body(&resp, &raw, &mut body).unwrap();
            let (back, back_raw): (Response, Bytes) = decode_body(Bytes::from(body)).unwrap();
            prop_assert_eq!(back, resp);
            prop_assert_eq!(&back_raw[..], &raw[..]);
        }

        #[test]
        fn garbage_bodies_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_body::<Request>(Bytes::from(data.clone()));
            let _ = decode_body::<Response>(Bytes::from(data));
        }
    }

    #[test]
    fn topic_partitions_group_and_flatten() {
        let pairs: std::collections::BTreeSet<(String, u32)> = [
            ("a".to_string(), 1),
            ("a".to_string(), 0),
            ("b".to_string(), 3),
        ]
        .into_iter()
        .collect();
        let grouped = TopicPartitions::group(&pairs);
        assert_eq!(grouped.len(), 2);
        assert_eq!(grouped[0].partitions, vec![0, 1]);
        assert_eq!(
            TopicPartitions::pairs(&grouped).collect::<std::collections::BTreeSet<_>>(),
            pairs
        );
    }

    #[test]
    fn parse_cli_values() {
        assert_eq!("fsync".parse::<Durability>().unwrap(), Durability::Fsync);
        assert_eq!(
            "interval:50".parse::<Durability>().unwrap(),
            Durability::IntervalMs(50)
        );
        assert!("interval:0".parse::<Durability>().is_err());
        assert!("sometimes".parse::<Durability>().is_err());
        assert_eq!("all".parse::<Acks>().unwrap(), Acks::All);
        assert_eq!("0".parse::<Acks>().unwrap(), Acks::None);
        assert!("2".parse::<Acks>().is_err());
    }
}
