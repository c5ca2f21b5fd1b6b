//! Consumer group coordination: the driver around the pure `sluice_groups::Groups`.
//!
//! Group state lives in the internal topic `__consumer_offsets`: every change the state
//! machine reports is appended there (one batch per request, fsync'd) before the request is
//! answered. The coordinator of a group is the leader of the offsets partition that holds it.
//! A node loads an offsets partition's groups (replays its records) when it finds itself that
//! partition's leader — at start-up, or when the metadata moves leadership to it — and answers
//! requests for those groups with a retriable `CoordinatorLoadInProgress` until it has; it
//! forgets them when it stops leading the partition. Requests for groups it does not
//! coordinate get `NotCoordinator` naming the leader; clients find the coordinator with
//! `FindCoordinator`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_groups::records::{self, OFFSETS_TOPIC, RecordKey};
use sluice_groups::{Change, GroupError, Groups, HeartbeatRequest};
use sluice_metadata::{MetadataCommand, MetadataError};
use sluice_proto::batch::{BatchHeader, decode_records, split_batches};
use sluice_proto::{
    BatchBuilder, Compression, Durability, ErrorCode, GroupDescription, GroupHeartbeatRequest,
    GroupHeartbeatResponse, GroupMember, GroupOffset, GroupPartition, OffsetCommitRequest,
    OffsetSpec, Record, Request, ResetOffsetsRequest, ResetTo, ResponseBody, TopicConfig,
    TopicPartitions, WireError,
};
use sluice_storage::PartitionId;

use crate::controller::ProposeError;
use crate::retention::now_ms;
use crate::router::Reply;
use crate::wire_error::storage_error;
use crate::{Broker, BrokerError};

/// Partitions of the offsets topic.
pub(crate) const OFFSETS_PARTITIONS: u32 = 4;

/// How long a node of a cluster starting together waits for the other voters to register
/// before it places the offsets topic over those that did.
const OFFSETS_PLACEMENT_WAIT: Duration = Duration::from_secs(15);

#[derive(Debug, Default)]
pub(crate) struct GroupCoordinator {
    /// A `std` mutex: held only while the state machine runs and the resulting append is
    /// queued (queuing under the lock keeps the log in the order of the state changes).
    groups: Mutex<Groups>,
    /// Offsets partitions whose groups are loaded here (this node leads them).
    loaded: Mutex<BTreeSet<u32>>,
}

fn group_error(e: GroupError) -> WireError {
    let code = match &e {
        GroupError::UnknownMember(_) => ErrorCode::UnknownMember,
        GroupError::UnknownGroup(_) => ErrorCode::UnknownGroup,
        GroupError::NotEmpty { .. } => ErrorCode::GroupNotEmpty,
        GroupError::NotOwner { .. } => ErrorCode::NotPartitionOwner,
        GroupError::Invalid(_) => ErrorCode::InvalidRequest,
    };
    WireError::new(code, e.to_string())
}

impl Broker {
    /// The offsets partition holding `group`.
    /// (partition id, leader epoch) of offsets partition `partition`, which this node must
    /// lead.
    fn offsets_partition(&self, partition: u32) -> Result<(PartitionId, u32), WireError> {
        self.controller.read(|s| {
            let t = s.topic(OFFSETS_TOPIC).ok_or_else(|| {
                WireError::new(
                    ErrorCode::NotCoordinator,
                    "the group coordinator is still starting; retry",
                )
            })?;
            let p = t.partitions.get(partition as usize).ok_or_else(|| {
                WireError::new(ErrorCode::Internal, "the offsets topic lacks a partition")
            })?;
            if p.leader != Some(self.node_id) {
                let e = WireError::new(
                    ErrorCode::NotCoordinator,
                    match p.leader {
                        Some(l) => format!(
                            "node {} does not coordinate the group; node {l} does",
                            self.node_id
                        ),
                        None => "the group's coordinator is not available; retry shortly".into(),
                    },
                );
                return Err(match p.leader {
                    Some(l) => e.with_leader(l),
                    None => e,
                });
            }
            Ok((
                PartitionId {
                    topic_id: t.topic_id,
                    partition,
                },
                p.leader_epoch,
            ))
        })
    }

    /// Whether this node coordinates `group` now: it leads the group's offsets partition and
    /// has loaded it.
    fn check_coordinator(&self, group: &str) -> Result<(), WireError> {
        let partition = records::partition_for_group(group, OFFSETS_PARTITIONS);
        self.offsets_partition(partition)?;
        let loaded = self.groups.loaded.lock().expect("groups lock poisoned");
        if !loaded.contains(&partition) {
            return Err(WireError::new(
                ErrorCode::CoordinatorLoadInProgress,
                format!(
                    "node {} is loading the state of group {group:?}; retry shortly",
                    self.node_id
                ),
            ));
        }
        Ok(())
    }

    /// Partition counts of every user topic.
    fn topic_partitions(&self) -> BTreeMap<String, u32> {
        self.controller.read(|s| {
            s.topics()
                .filter(|t| !t.name.starts_with("__"))
                .map(|t| (t.name.clone(), t.partitions.len() as u32))
                .collect()
        })
    }

    /// Queues `changes` for the offsets partition of `group` (call with the groups lock held)
    /// and returns the future that resolves once they are durable.
    fn persist_group_changes(
        self: &Arc<Self>,
        group: &str,
        changes: Vec<Change>,
    ) -> impl Future<Output = Result<Option<u64>, WireError>> + Send + use<> {
        // A group record is written when the group starts a new epoch: a rebalance.
        for (key, value) in &changes {
            if let (RecordKey::Group { group }, Some(_)) = (key, value) {
                crate::metrics::group_rebalanced(group);
            }
        }
        self.persist_to(
            records::partition_for_group(group, OFFSETS_PARTITIONS),
            changes,
        )
    }

    /// Queues `changes` as one batch on offsets partition `partition`; the future resolves to
    /// the batch's base offset once it is durable (`None` when there was nothing to write).
    fn persist_to(
        self: &Arc<Self>,
        partition: u32,
        changes: Vec<Change>,
    ) -> impl Future<Output = Result<Option<u64>, WireError>> + Send + use<> {
        let queued = (|| {
            if changes.is_empty() {
                return Ok(None);
            }
            let (id, epoch) = self.offsets_partition(partition)?;
            let mut b = BatchBuilder::new(Compression::None);
            let ts = now_ms();
            for (key, value) in &changes {
                b.push(&Record {
                    key: Some(Bytes::from(records::encode_key(key))),
                    value: value
                        .as_ref()
                        .map(|v| Bytes::from(records::encode_value(v))),
                    headers: vec![],
                    timestamp: ts,
                });
            }
            let bytes = b.finish(-1, -1, -1).map_err(|e| {
                WireError::new(ErrorCode::Internal, format!("group record batch: {e}"))
            })?;
            Ok(Some((
                id,
                self.store.append(id, bytes, epoch, Durability::Fsync),
            )))
        })();
        let broker = self.clone();
        async move {
            match queued? {
                None => Ok(None),
                Some((id, append)) => {
                    let appended = append.await.map_err(storage_error)?;
                    broker.leader_appended(id, appended.log_end);
                    // Group state is written as with acks=all: a commit is answered once the
                    // in-sync replicas have it, so a coordinator that fails over keeps it.
                    broker.committed(id, &appended, GROUP_WRITE_TIMEOUT).await?;
                    Ok(Some(appended.base_offset))
                }
            }
        }
    }
}

/// How long a group write waits for the offsets partition's in-sync replicas.
const GROUP_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Replicas of each offsets partition: three, as Kafka's `offsets.topic.replication.factor`,
/// or every live broker in a smaller cluster (one on a single node).
fn offsets_replication_factor(broker: &Broker) -> usize {
    broker
        .controller
        .read(|s| s.live_brokers().count())
        .clamp(1, 3)
}

impl GroupCoordinator {
    /// Every group coordinated here, as its summary (members, committed offsets).
    pub(crate) fn summaries(&self) -> Vec<sluice_groups::GroupSummary> {
        let groups = self.groups.lock().expect("groups lock poisoned");
        groups
            .names()
            .iter()
            .filter_map(|g| groups.describe(g))
            .collect()
    }

    /// Creates the offsets topic when missing, then rebuilds group state from it. Blocking.
    pub(crate) fn load(broker: &Broker) -> Result<(), BrokerError> {
        // In a cluster starting together, give the other voters a moment (bounded) to register,
        // so that the offsets partitions are spread over all of them rather than all placed on
        // the first node up.
        let voters = broker.config.cluster.as_ref().map_or(1, |c| c.voters.len());
        let started = Instant::now();
        while broker
            .controller
            .read(|s| s.topic(OFFSETS_TOPIC).is_none() && s.live_brokers().count() < voters)
            && started.elapsed() < OFFSETS_PLACEMENT_WAIT
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        if broker.controller.read(|s| s.topic(OFFSETS_TOPIC).is_none()) {
            let cmd = MetadataCommand::CreateInternalTopic {
                name: OFFSETS_TOPIC.into(),
                config: TopicConfig {
                    durability: Durability::Fsync,
                    ..TopicConfig::default()
                },
                assignments: crate::admin::place_partitions(
                    broker,
                    OFFSETS_PARTITIONS as usize,
                    offsets_replication_factor(broker),
                )
                .map_err(|e| BrokerError::Metadata(e.message))?,
            };
            match broker.controller.propose(cmd) {
                // In a cluster starting together, another node created it first.
                Ok(()) | Err(ProposeError::Refused(MetadataError::TopicExists(_))) => {}
                Err(e) => return Err(BrokerError::Metadata(e.to_string())),
            }
        }
        // In a cluster another node may have created it: wait (bounded) until this node has
        // applied that entry too.
        let started = Instant::now();
        loop {
            if broker.controller.read(|s| s.topic(OFFSETS_TOPIC).is_some()) {
                break;
            }
            if started.elapsed() > Duration::from_secs(60) {
                return Err(BrokerError::Metadata(format!(
                    "the offsets topic {OFFSETS_TOPIC} did not appear in this node's metadata \
                     within 60 s"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Self::follow_leadership(broker)
    }

    /// Loads the groups of every offsets partition this node now leads and has not loaded,
    /// and forgets those of partitions it no longer leads. Blocking (reads the store). Run at
    /// start-up and whenever the metadata changes.
    pub(crate) fn follow_leadership(broker: &Broker) -> Result<(), BrokerError> {
        let Some((topic_id, led)) = broker.controller.read(|s| {
            s.topic(OFFSETS_TOPIC).map(|t| {
                let led: BTreeSet<u32> = (0..t.partitions.len() as u32)
                    .filter(|p| t.partitions[*p as usize].leader == Some(broker.node_id))
                    .collect();
                (t.topic_id, led)
            })
        }) else {
            return Ok(());
        };
        let loaded = broker
            .groups
            .loaded
            .lock()
            .expect("groups lock poisoned")
            .clone();
        let lost: BTreeSet<u32> = loaded.difference(&led).copied().collect();
        if !lost.is_empty() {
            let mut loaded = broker.groups.loaded.lock().expect("groups lock poisoned");
            let mut groups = broker.groups.groups.lock().expect("groups lock poisoned");
            let dropped = groups
                .unload(|g| lost.contains(&records::partition_for_group(g, OFFSETS_PARTITIONS)));
            loaded.retain(|p| !lost.contains(p));
            tracing::info!(partitions = ?lost, groups = dropped, "no longer coordinating these offsets partitions");
        }
        for partition in led.difference(&loaded).copied() {
            let id = PartitionId {
                topic_id,
                partition,
            };
            if broker.store.partition_state(id).is_none() {
                // The replica watcher creates it; the next metadata change or pass loads it.
                broker.store.create_partition(id)?;
            }
            Self::load_partition(broker, id)?;
        }
        Ok(())
    }

    /// Replays one offsets partition into the groups state and marks it loaded.
    fn load_partition(broker: &Broker, id: PartitionId) -> Result<(), BrokerError> {
        let now = Instant::now();
        let mut loaded_set = broker.groups.loaded.lock().expect("groups lock poisoned");
        let mut groups = broker.groups.groups.lock().expect("groups lock poisoned");
        let mut loaded = 0u64;
        {
            let Some(state) = broker.store.partition_state(id) else {
                return Ok(());
            };
            let mut offset = state.log_start;
            while offset < state.log_end {
                let read = broker.store.read(id, offset, 4 << 20)?;
                if read.bytes.is_empty() {
                    break;
                }
                let batches = split_batches(read.bytes)
                    .map_err(|e| BrokerError::Metadata(format!("offsets topic batch: {e}")))?;
                for (header, bytes) in batches {
                    let header: BatchHeader = header;
                    for r in decode_records(&header, &bytes)
                        .map_err(|e| BrokerError::Metadata(format!("offsets topic records: {e}")))?
                    {
                        if r.offset < offset {
                            continue;
                        }
                        let key = r.key.as_deref().and_then(|k| records::decode_key(k).ok());
                        let value = r.value.as_deref().map(records::decode_value);
                        match (key, value) {
                            (Some(k), None) => groups.apply_record(now, k, None),
                            (Some(k), Some(Ok(v))) => groups.apply_record(now, k, Some(v)),
                            _ => {
                                tracing::warn!(offset = r.offset, "unreadable group record skipped")
                            }
                        }
                        loaded += 1;
                    }
                    offset = header.next_offset();
                }
            }
        }
        loaded_set.insert(id.partition);
        tracing::info!(
            partition = id.partition,
            records = loaded,
            groups = groups.names().len(),
            "consumer group state loaded"
        );
        Ok(())
    }

    /// Removes members whose sessions expired, every `tick`.
    pub(crate) async fn run_expiry(broker: Arc<Broker>, tick: Duration) {
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let pending: Vec<_> = {
                let mut groups = broker.groups.groups.lock().expect("groups lock poisoned");
                let changes = groups.expire(Instant::now());
                let mut by_group: BTreeMap<String, Vec<Change>> = BTreeMap::new();
                for c in changes {
                    by_group.entry(c.0.group().to_owned()).or_default().push(c);
                }
                by_group
                    .into_iter()
                    .map(|(g, c)| {
                        tracing::info!(group = %g, "member session expired; rebalancing");
                        broker.persist_group_changes(&g, c)
                    })
                    .collect()
            };
            for p in pending {
                if let Err(e) = p.await {
                    tracing::warn!(cause = %e, "could not persist expired members");
                }
            }
            for partition in 0..OFFSETS_PARTITIONS {
                if let Err(e) = compact_if_due(&broker, partition).await {
                    tracing::warn!(partition, cause = %e, "offsets topic compaction failed");
                }
            }
        }
    }
}

/// Forgets, durably, every group's committed offsets for the topics `gone` selects; returns
/// how many were dropped. Called when a topic is deleted, and at start-up for topics that no
/// longer exist (see [`drop_deleted_offsets`]).
pub(crate) async fn drop_offsets(
    broker: &Arc<Broker>,
    gone: impl Fn(&str) -> bool,
) -> Result<usize, WireError> {
    let (dropped, pending): (usize, Vec<_>) = {
        let mut groups = broker.groups.groups.lock().expect("groups lock poisoned");
        let changes = groups.drop_offsets(gone);
        let mut by_group: BTreeMap<String, Vec<Change>> = BTreeMap::new();
        for c in changes {
            by_group.entry(c.0.group().to_owned()).or_default().push(c);
        }
        (
            by_group.values().map(Vec::len).sum(),
            by_group
                .into_iter()
                .map(|(g, c)| broker.persist_group_changes(&g, c))
                .collect(),
        )
    };
    for p in pending {
        p.await?;
    }
    Ok(dropped)
}

/// Drops the offsets of topics the metadata no longer holds. Run at start-up once group state
/// is replayed: a crash between a topic's metadata delete and the deletion of its offsets
/// would otherwise let a topic created again under its name resume from the old offsets.
pub(crate) async fn drop_deleted_offsets(broker: &Arc<Broker>) -> Result<(), BrokerError> {
    let topics: std::collections::HashSet<String> = broker
        .controller
        .read(|s| s.topics().map(|t| t.name.clone()).collect());
    let dropped = drop_offsets(broker, |t| !topics.contains(t))
        .await
        .map_err(|e| BrokerError::Metadata(format!("dropping offsets of deleted topics: {e}")))?;
    if dropped > 0 {
        tracing::info!(
            offsets = dropped,
            "dropped committed offsets of topics deleted before a crash"
        );
    }
    Ok(())
}

/// An offsets partition is compacted once it holds this many batches (about one per commit).
pub(crate) const COMPACT_AFTER_BATCHES: u64 = 1_000;

/// Keeps `__consumer_offsets` compact: when a partition has grown past
/// [`COMPACT_AFTER_BATCHES`], the live state of its groups is written again as one batch and
/// every batch before it is dropped. A crash between the two only leaves old records in front
/// of the snapshot, which replay overwrites; a lost deletion is redone next time.
async fn compact_if_due(broker: &Arc<Broker>, partition: u32) -> Result<(), WireError> {
    let (id, _) = match broker.offsets_partition(partition) {
        Ok(led) => led,
        // Another node coordinates these groups (in a cluster): its compaction, not ours.
        Err(e) if e.code == ErrorCode::NotCoordinator => return Ok(()),
        Err(e) => return Err(e),
    };
    let Some(state) = broker.store.partition_state(id) else {
        return Ok(());
    };
    if state.batches < COMPACT_AFTER_BATCHES {
        return Ok(());
    }
    let persisted = {
        let groups = broker.groups.groups.lock().expect("groups lock poisoned");
        let live =
            groups.snapshot(|g| records::partition_for_group(g, OFFSETS_PARTITIONS) == partition);
        broker.persist_to(partition, live)
    };
    let keep_from = match persisted.await? {
        Some(base) => base,
        // Nothing is live: everything stored so far can go.
        None => state.log_end,
    };
    let out = broker
        .store
        .delete_before(id, keep_from)
        .await
        .map_err(storage_error)?;
    tracing::info!(
        partition,
        removed_batches = out.removed_batches,
        log_start = out.log_start,
        "offsets topic compacted"
    );
    Ok(())
}

/// Handles a consumer group request.
/// `principal`: who sent the request (a subscription by pattern covers the topics it may read).
pub(crate) async fn handle(broker: Arc<Broker>, request: Request, principal: String) -> Reply {
    let span = tracing::debug_span!("group", group = request.group().unwrap_or(""));
    tracing::Instrument::instrument(handle_in_span(broker, request, principal), span).await
}

async fn handle_in_span(broker: Arc<Broker>, request: Request, principal: String) -> Reply {
    if let Some(group) = request.group()
        && let Err(e) = broker.check_coordinator(group)
    {
        return Reply::error(e);
    }
    let result = match request {
        Request::FindCoordinator { group } => find_coordinator(&broker, &group),
        Request::GroupHeartbeat(req) => heartbeat(&broker, req, &principal).await,
        Request::OffsetCommit(req) => commit(&broker, req).await,
        Request::OffsetFetch { group } => {
            let committed = broker
                .groups
                .groups
                .lock()
                .expect("groups lock poisoned")
                .committed(&group);
            Ok(ResponseBody::GroupOffsets(
                committed
                    .into_iter()
                    .map(|((topic, partition), offset)| GroupOffset {
                        topic,
                        partition,
                        offset,
                    })
                    .collect(),
            ))
        }
        Request::ListGroups => {
            let names = broker
                .groups
                .groups
                .lock()
                .expect("groups lock poisoned")
                .names();
            let mut groups = Vec::with_capacity(names.len());
            for g in &names {
                groups.extend(describe(&broker, g).await);
            }
            Ok(ResponseBody::Groups(groups))
        }
        Request::DescribeGroup { group } => describe(&broker, &group)
            .await
            .map(ResponseBody::Group)
            .ok_or_else(|| group_error(GroupError::UnknownGroup(group))),
        Request::ResetOffsets(req) => reset(&broker, req).await,
        Request::DeleteGroup { group } => delete(&broker, &group).await,
        _ => Err(WireError::new(
            ErrorCode::InvalidRequest,
            "not a group request",
        )),
    };
    match result {
        Ok(body) => Reply::Frame(Ok(body), Bytes::new()),
        Err(e) => Reply::error(e),
    }
}

/// The leader of the group's offsets partition, with its client address.
fn find_coordinator(broker: &Broker, group: &str) -> Result<ResponseBody, WireError> {
    let partition = records::partition_for_group(group, OFFSETS_PARTITIONS);
    broker.controller.read(|s| {
        let unavailable = || {
            WireError::new(
                ErrorCode::NotCoordinator,
                format!("group {group:?} has no coordinator right now; retry shortly"),
            )
        };
        let leader = s
            .topic(OFFSETS_TOPIC)
            .and_then(|t| t.partitions.get(partition as usize))
            .and_then(|p| p.leader)
            .ok_or_else(unavailable)?;
        let b = s.broker(leader).ok_or_else(unavailable)?;
        Ok(ResponseBody::Coordinator(sluice_proto::BrokerInfo {
            node_id: leader,
            addr: b.addr.clone(),
        }))
    })
}

async fn heartbeat(
    broker: &Arc<Broker>,
    req: GroupHeartbeatRequest,
    principal: &str,
) -> Result<ResponseBody, WireError> {
    if req.group.is_empty() {
        return Err(WireError::new(
            ErrorCode::InvalidRequest,
            "the group id is empty",
        ));
    }
    let assignor = match req.assignor.as_deref().map(str::parse) {
        None => None,
        Some(Ok(a)) => Some(a),
        Some(Err(e)) => return Err(WireError::new(ErrorCode::InvalidConfig, e)),
    };
    let partitions = broker.topic_partitions();
    let session_timeout_ms = req.session_timeout_ms;
    let (reply, persisted) = {
        let mut groups = broker.groups.groups.lock().expect("groups lock poisoned");
        let (reply, changes) = groups
            .heartbeat(
                Instant::now(),
                &req.group,
                HeartbeatRequest {
                    member_id: req.member_id,
                    instance_id: req.instance_id,
                    client_id: req.client_id,
                    member_epoch: req.member_epoch,
                    subscribed: match &req.topic_pattern {
                        Some(pattern) => Some(
                            partitions
                                .keys()
                                .filter(|t| glob_match(pattern, t))
                                // Only the topics the member's principal may read.
                                .filter(|t| {
                                    crate::authz::require(
                                        broker,
                                        principal,
                                        sluice_proto::acl::Operation::Read,
                                        sluice_proto::acl::ResourceType::Topic,
                                        t,
                                    )
                                    .is_ok()
                                })
                                .cloned()
                                .collect(),
                        ),
                        None => req.topics.map(|t| t.into_iter().collect()),
                    },
                    assignor,
                    owned: req
                        .owned
                        .as_deref()
                        .map(|o| TopicPartitions::pairs(o).collect()),
                    session_timeout_ms,
                },
                &partitions,
            )
            .map_err(group_error)?;
        (reply, broker.persist_group_changes(&req.group, changes))
    };
    persisted.await?;
    Ok(ResponseBody::GroupHeartbeat(GroupHeartbeatResponse {
        member_id: reply.member_id,
        member_epoch: reply.member_epoch,
        heartbeat_interval_ms: (session_timeout_ms / 4).clamp(100, 1_000),
        assignment: TopicPartitions::group(&reply.assignment),
    }))
}

async fn commit(broker: &Arc<Broker>, req: OffsetCommitRequest) -> Result<ResponseBody, WireError> {
    let offsets: Vec<(String, u32, u64)> = req
        .offsets
        .iter()
        .map(|o| (o.topic.clone(), o.partition, o.offset))
        .collect();
    let persisted = {
        let mut groups = broker.groups.groups.lock().expect("groups lock poisoned");
        let changes = groups
            .commit(&req.group, req.member_id.as_deref(), &offsets, now_ms())
            .map_err(group_error)?;
        broker.persist_group_changes(&req.group, changes)
    };
    persisted.await?;
    Ok(ResponseBody::GroupOffsets(req.offsets))
}

async fn reset(broker: &Arc<Broker>, req: ResetOffsetsRequest) -> Result<ResponseBody, WireError> {
    let count = broker
        .controller
        .read(|s| s.topic(&req.topic).map(|t| t.partitions.len() as u32))
        .ok_or_else(|| {
            WireError::new(
                ErrorCode::UnknownTopic,
                format!("topic {:?} does not exist", req.topic),
            )
        })?;
    // Each partition's offsets come from its leader, here or on another broker.
    let all: Vec<u32> = (0..count).collect();
    let spec = match req.to {
        ResetTo::Earliest => OffsetSpec::Earliest,
        ResetTo::Latest | ResetTo::Offset(_) => OffsetSpec::Latest,
        ResetTo::Timestamp(ts) => OffsetSpec::Timestamp(ts),
    };
    let found = crate::admin::cluster_offsets(broker, &req.topic, &all, spec).await;
    let starts = match req.to {
        ResetTo::Offset(_) => {
            crate::admin::cluster_offsets(broker, &req.topic, &all, OffsetSpec::Earliest).await
        }
        _ => Vec::new(),
    };
    let mut offsets = Vec::with_capacity(count as usize);
    for partition in 0..count {
        let at = found[partition as usize].clone()?;
        let offset = match req.to {
            // Clamped into what the partition holds: [log start, high watermark].
            ResetTo::Offset(o) => o.max(starts[partition as usize].clone()?).min(at),
            _ => at,
        };
        offsets.push((req.topic.clone(), partition, offset));
    }
    let persisted = {
        let mut groups = broker.groups.groups.lock().expect("groups lock poisoned");
        let changes = groups
            .reset(&req.group, &offsets, now_ms())
            .map_err(group_error)?;
        broker.persist_group_changes(&req.group, changes)
    };
    persisted.await?;
    Ok(ResponseBody::GroupOffsets(
        offsets
            .into_iter()
            .map(|(topic, partition, offset)| GroupOffset {
                topic,
                partition,
                offset,
            })
            .collect(),
    ))
}

async fn delete(broker: &Arc<Broker>, group: &str) -> Result<ResponseBody, WireError> {
    let description = describe(broker, group)
        .await
        .ok_or_else(|| group_error(GroupError::UnknownGroup(group.into())))?;
    let persisted = {
        let mut groups = broker.groups.groups.lock().expect("groups lock poisoned");
        let changes = groups.delete(group).map_err(group_error)?;
        broker.persist_group_changes(group, changes)
    };
    persisted.await?;
    Ok(ResponseBody::Group(description))
}

async fn describe(broker: &Arc<Broker>, group: &str) -> Option<GroupDescription> {
    let summary = broker
        .groups
        .groups
        .lock()
        .expect("groups lock poisoned")
        .describe(group)?;
    let mut owners: BTreeMap<(String, u32), String> = BTreeMap::new();
    for m in &summary.members {
        for tp in &m.assigned {
            owners.insert(tp.clone(), m.member_id.clone());
        }
    }
    // Every partition of every topic the group has offsets for or subscribes to.
    let mut topics: std::collections::BTreeSet<String> =
        summary.offsets.keys().map(|(t, _)| t.clone()).collect();
    topics.extend(
        summary
            .members
            .iter()
            .flat_map(|m| m.subscribed.iter().cloned()),
    );
    let mut partitions = Vec::new();
    for topic in topics {
        let Some(count) = broker
            .controller
            .read(|s| s.topic(&topic).map(|t| t.partitions.len() as u32))
        else {
            continue;
        };
        // Log start and end from each partition's leader (here, or another broker).
        let all: Vec<u32> = (0..count).collect();
        let starts =
            crate::admin::cluster_offsets(broker, &topic, &all, OffsetSpec::Earliest).await;
        let ends = crate::admin::cluster_offsets(broker, &topic, &all, OffsetSpec::Latest).await;
        for partition in 0..count {
            let log_end = ends[partition as usize].as_ref().copied().unwrap_or(0);
            let log_start = starts[partition as usize].as_ref().copied().unwrap_or(0);
            let committed = summary.offsets.get(&(topic.clone(), partition)).copied();
            partitions.push(GroupPartition {
                owner: owners.get(&(topic.clone(), partition)).cloned(),
                committed,
                log_end,
                lag: log_end.saturating_sub(committed.unwrap_or(log_start).max(log_start)),
                topic: topic.clone(),
                partition,
            });
        }
    }
    Some(GroupDescription {
        group: summary.group,
        epoch: summary.epoch,
        assignor: summary.assignor.to_string(),
        members: summary
            .members
            .into_iter()
            .map(|m| GroupMember {
                member_id: m.member_id,
                instance_id: m.instance_id,
                client_id: m.client_id,
                member_epoch: m.member_epoch,
                assignment: TopicPartitions::group(&m.assigned),
            })
            .collect(),
        partitions,
    })
}

/// Matches `name` against a glob: `*` is any run of characters, `?` one character.
fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Classic two-pointer match with backtracking to the last `*`.
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_groups::records::{RecordKey, RecordValue};

    #[test]
    fn globs() {
        assert!(glob_match("orders-*", "orders-eu"));
        assert!(glob_match("orders-*", "orders-"));
        assert!(!glob_match("orders-*", "order"));
        assert!(glob_match("*-eu", "orders-eu"));
        assert!(glob_match("o?ders", "orders"));
        assert!(glob_match("*", "anything"));
        assert!(!glob_match("a*b*c", "aXbY"));
        assert!(glob_match("a*b*c", "aXbYc"));
    }

    #[test]
    fn group_records_decode_as_written() {
        let key = RecordKey::Offset {
            group: "g".into(),
            topic: "t".into(),
            partition: 3,
        };
        let value = RecordValue::Offset {
            offset: 9,
            commit_time_ms: 1,
        };
        assert_eq!(
            records::decode_key(&records::encode_key(&key)).unwrap(),
            key
        );
        assert_eq!(
            records::decode_value(&records::encode_value(&value)).unwrap(),
            value
        );
    }
}
