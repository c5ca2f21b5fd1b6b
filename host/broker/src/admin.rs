//! Administrative requests, answered from the metadata and the store on a blocking thread:
//! topics (create, describe, list, add partitions, set a partitioner), cluster metadata, offset
//! lookups and producer ids. Topic deletion has a module of its own (`topic_delete.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;

use sluice_metadata::placement::{self, Candidate};
use sluice_metadata::{MetadataCommand, TopicRecord};
use sluice_proto::{
    BrokerInfo, CreateTopicRequest, ErrorCode, ListOffsetsRequest, MetadataResponse, OffsetSpec,
    PartitionDescription, PartitionMetadata, PartitionOffset, Request, ResponseBody,
    TopicDescription, TopicMetadata, WireError,
};
use sluice_storage::PartitionId;

use crate::Broker;
use crate::wire_error::{propose_error, storage_error, unknown_topic};

/// Requests that read or change metadata. Blocking: runs on a blocking thread.
pub(crate) fn admin(broker: &Broker, request: Request) -> Result<ResponseBody, WireError> {
    match request {
        Request::Metadata { topics } => Ok(ResponseBody::Metadata(metadata(broker, topics))),
        Request::ListTopics => {
            let topics: Vec<TopicRecord> =
                broker.controller.read(|s| s.topics().cloned().collect());
            Ok(ResponseBody::Topics(
                topics.iter().map(|t| describe(broker, t)).collect(),
            ))
        }
        Request::DescribeTopic { name } => {
            let t = broker
                .controller
                .read(|s| s.topic(&name).cloned())
                .ok_or_else(|| unknown_topic(&name))?;
            Ok(ResponseBody::Topic(describe(broker, &t)))
        }
        Request::CreateTopic(req) => create_topic(broker, req, 1),
        Request::CreateTopicReplicated {
            topic,
            replication_factor,
        } => create_topic(broker, topic, replication_factor as usize),
        Request::AddPartitions { name, count } => {
            if count == 0 {
                return Err(WireError::new(
                    ErrorCode::InvalidConfig,
                    "--count must be at least 1",
                ));
            }
            let (existing, replication_factor) = broker
                .controller
                .read(|s| {
                    s.topic(&name).map(|t| {
                        let rf = t.partitions.first().map_or(1, |p| p.replicas.len());
                        (t.partitions.len(), rf)
                    })
                })
                .ok_or_else(|| unknown_topic(&name))?;
            check_partition_count(existing.saturating_add(count as usize))?;
            let assignments = place_partitions(broker, count as usize, replication_factor)?;
            broker
                .controller
                .propose(MetadataCommand::AddPartitions {
                    name: name.clone(),
                    assignments,
                })
                .map_err(propose_error)?;
            let t = broker
                .controller
                .read(|s| s.topic(&name).cloned())
                .ok_or_else(|| unknown_topic(&name))?;
            create_partitions(broker, &t)?;
            Ok(ResponseBody::Topic(describe(broker, &t)))
        }
        Request::ListOffsets(req) => list_offsets(broker, req),
        request @ (Request::SetQuota { .. } | Request::ListQuotas) => {
            crate::quotas::admin(broker, request)
        }
        request @ (Request::CreateAcls { .. } | Request::DeleteAcls { .. } | Request::ListAcls) => {
            crate::acls::admin(broker, request)
        }
        Request::SetPartitioner {
            topic,
            plugin,
            config,
        } => {
            let t = broker
                .controller
                .read(|s| s.topic(&topic).cloned())
                .ok_or_else(|| unknown_topic(&topic))?;
            let mut new_config = t.config.clone();
            new_config.partitioner = plugin;
            new_config.partitioner_config = config;
            broker
                .controller
                .propose(MetadataCommand::SetTopicConfig {
                    name: topic.clone(),
                    config: new_config,
                })
                .map_err(propose_error)?;
            let t = broker
                .controller
                .read(|s| s.topic(&topic).cloned())
                .ok_or_else(|| unknown_topic(&topic))?;
            Ok(ResponseBody::Topic(describe(broker, &t)))
        }
        Request::InitProducerId => {
            let producer_id = broker.next_producer_id()?;
            tracing::debug!(producer_id, "producer id handed out");
            Ok(ResponseBody::ProducerId {
                producer_id,
                epoch: 0,
            })
        }
        Request::Hello(_)
        | Request::WhoAmI
        | Request::Authenticate(_)
        | Request::UpsertUser { .. }
        | Request::DeleteUser { .. }
        | Request::ListUsers
        | Request::CreateToken { .. }
        | Request::RevokeToken { .. }
        | Request::ListTokens
        | Request::DeleteTopic { .. }
        | Request::DeleteTopicForced { .. }
        | Request::Produce(_)
        | Request::Fetch(_)
        | Request::GroupHeartbeat(_)
        | Request::OffsetCommit(_)
        | Request::OffsetFetch { .. }
        | Request::ListGroups
        | Request::DescribeGroup { .. }
        | Request::ResetOffsets(_)
        | Request::DeleteGroup { .. }
        | Request::FetchTransformed(_)
        | Request::DeployPlugin { .. }
        | Request::ListPlugins
        | Request::DescribePlugin { .. }
        | Request::DeletePlugin { .. }
        | Request::CreatePipeline(_)
        | Request::ListPipelines
        | Request::DescribePipeline { .. }
        | Request::PausePipeline { .. }
        | Request::ResumePipeline { .. }
        | Request::DeletePipeline { .. }
        | Request::FindCoordinator { .. }
        | Request::ClusterStatus
        | Request::AddNode { .. }
        | Request::RemoveNode { .. }
        | Request::ElectLeaders { .. }
        | Request::AlterTopicReplication { .. }
        | Request::DescribeTopicReplication { .. }
        | Request::CreateConnector(_)
        | Request::ListConnectors
        | Request::DescribeConnector { .. }
        | Request::PauseConnector { .. }
        | Request::ResumeConnector { .. }
        | Request::RestartConnector { .. }
        | Request::DeleteConnector { .. } => Err(WireError::new(
            ErrorCode::InvalidRequest,
            "request routed to the wrong handler",
        )),
    }
}

fn create_topic(
    broker: &Broker,
    req: CreateTopicRequest,
    replication_factor: usize,
) -> Result<ResponseBody, WireError> {
    if req.partitions == 0 {
        return Err(WireError::new(
            ErrorCode::InvalidConfig,
            "a topic needs at least one partition",
        ));
    }
    check_partition_count(req.partitions as usize)?;
    let assignments = place_partitions(broker, req.partitions as usize, replication_factor)?;
    broker
        .controller
        .propose(MetadataCommand::CreateTopic {
            name: req.name.clone(),
            config: req.config,
            assignments,
        })
        .map_err(propose_error)?;
    let t = broker
        .controller
        .read(|s| s.topic(&req.name).cloned())
        .ok_or_else(|| unknown_topic(&req.name))?;
    create_partitions(broker, &t)?;
    tracing::info!(topic = %t.name, topic_id = t.topic_id, partitions = t.partitions.len(), "topic created");
    Ok(ResponseBody::Topic(describe(broker, &t)))
}

/// Places `count` new partitions of `replication_factor` replicas each over the live
/// (registered, unfenced) brokers, leaders spread evenly starting at the broker that leads the
/// fewest (`sluice_metadata::placement`). More replicas than live brokers is refused.
pub(crate) fn place_partitions(
    broker: &Broker,
    count: usize,
    replication_factor: usize,
) -> Result<Vec<Vec<u32>>, WireError> {
    let (brokers, leading) = broker.controller.read(|s| {
        let brokers: Vec<Candidate> = s
            .live_brokers()
            .map(|b| Candidate {
                node_id: b.node_id,
                rack: b.rack.clone(),
            })
            .collect();
        let mut leading: BTreeMap<u32, usize> = BTreeMap::new();
        for leader in s
            .topics()
            .flat_map(|t| t.partitions.iter().filter_map(|p| p.leader))
        {
            *leading.entry(leader).or_insert(0) += 1;
        }
        (brokers, leading)
    });
    placement::place(&brokers, count, replication_factor, &leading)
        .map_err(|e| WireError::new(ErrorCode::InvalidConfig, e.to_string()))
}

/// Refuses a partition count above the limit before anything is allocated for it: the count
/// comes from the request.
fn check_partition_count(total: usize) -> Result<(), WireError> {
    if total > sluice_metadata::MAX_PARTITIONS {
        return Err(WireError::new(
            ErrorCode::InvalidConfig,
            format!(
                "{total} partitions requested in all; a topic may have at most {}",
                sluice_metadata::MAX_PARTITIONS
            ),
        ));
    }
    Ok(())
}

/// Creates the partitions of `t` this node holds a replica of and its store lacks, in one
/// commit.
fn create_partitions(broker: &Broker, t: &TopicRecord) -> Result<(), WireError> {
    let missing: Vec<PartitionId> = (0..t.partitions.len() as u32)
        .filter(|p| t.partitions[*p as usize].replicas.contains(&broker.node_id))
        .map(|partition| PartitionId {
            topic_id: t.topic_id,
            partition,
        })
        .filter(|id| broker.store.partition_state(*id).is_none())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    broker
        .store
        .create_partitions(&missing)
        .map_err(storage_error)
}

pub(crate) fn describe(broker: &Broker, t: &TopicRecord) -> TopicDescription {
    TopicDescription {
        name: t.name.clone(),
        topic_id: t.topic_id,
        config: t.config.clone(),
        partitions: t
            .partitions
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let id = PartitionId {
                    topic_id: t.topic_id,
                    partition: i as u32,
                };
                let state = broker.store.partition_state(id);
                PartitionDescription {
                    partition: i as u32,
                    leader: p.leader,
                    leader_epoch: p.leader_epoch,
                    log_start: state.map_or(0, |s| s.log_start),
                    log_end: state.map_or(0, |s| s.log_end),
                    high_watermark: broker.high_watermark(id),
                    size_bytes: state.map_or(0, |s| s.size_bytes),
                }
            })
            .collect(),
    }
}

fn metadata(broker: &Broker, topics: Option<Vec<String>>) -> MetadataResponse {
    broker.controller.read(|s| MetadataResponse {
        cluster_id: broker.cluster_id.clone(),
        controller: broker.controller.leader(),
        brokers: s
            .brokers()
            .map(|b| BrokerInfo {
                node_id: b.node_id,
                addr: b.addr.clone(),
            })
            .collect(),
        topics: s
            .topics()
            .filter(|t| topics.as_ref().is_none_or(|names| names.contains(&t.name)))
            .map(|t| TopicMetadata {
                name: t.name.clone(),
                topic_id: t.topic_id,
                partitioner: t.config.partitioner.clone(),
                partitions: t
                    .partitions
                    .iter()
                    .enumerate()
                    .map(|(i, p)| PartitionMetadata {
                        partition: i as u32,
                        leader: p.leader,
                        leader_epoch: p.leader_epoch,
                        replicas: p.replicas.clone(),
                        in_sync: p.in_sync.clone(),
                    })
                    .collect(),
            })
            .collect(),
    })
}

fn list_offsets(broker: &Broker, req: ListOffsetsRequest) -> Result<ResponseBody, WireError> {
    let out = req
        .partitions
        .into_iter()
        .map(|(partition, spec)| PartitionOffset {
            partition,
            result: local_offset(broker, &req.topic, partition, spec),
        })
        .collect();
    Ok(ResponseBody::Offsets(out))
}

/// The offset `spec` names in a partition this node leads (`NotLeader` otherwise).
fn local_offset(
    broker: &Broker,
    topic: &str,
    partition: u32,
    spec: OffsetSpec,
) -> Result<u64, WireError> {
    let led = broker.led_partition(topic, partition)?;
    let hw = broker.high_watermark(led.id);
    let state = broker
        .store
        .partition_state(led.id)
        .ok_or_else(|| storage_error(sluice_storage::StorageError::UnknownPartition(led.id)))?;
    match spec {
        OffsetSpec::Earliest => Ok(state.log_start),
        OffsetSpec::Latest => Ok(hw),
        OffsetSpec::Timestamp(ts) => broker
            .store
            .offset_for_timestamp(led.id, ts)
            .map(|o| o.min(hw))
            .map_err(storage_error),
    }
}

/// The offset `spec` names in each of `partitions` of `topic`, wherever they are led: here
/// from the store, elsewhere from their leaders (this broker as a client of the cluster).
pub(crate) async fn cluster_offsets(
    broker: &Arc<Broker>,
    topic: &str,
    partitions: &[u32],
    spec: OffsetSpec,
) -> Vec<Result<u64, WireError>> {
    let mut out: Vec<Result<u64, WireError>> = partitions
        .iter()
        .map(|p| local_offset(broker, topic, *p, spec))
        .collect();
    let remote: Vec<(u32, OffsetSpec)> = partitions
        .iter()
        .zip(&out)
        .filter(|(_, r)| r.as_ref().is_err_and(|e| e.code == ErrorCode::NotLeader))
        .map(|(p, _)| (*p, spec))
        .collect();
    if remote.is_empty() {
        return out;
    }
    let answers = match broker.cluster_client().await {
        Ok(client) => client
            .admin()
            .list_offsets(topic, remote)
            .await
            .map_err(|e| WireError::new(ErrorCode::LeaderNotAvailable, e.to_string())),
        Err(e) => Err(e),
    };
    for (slot, p) in out.iter_mut().zip(partitions) {
        if !slot.as_ref().is_err_and(|e| e.code == ErrorCode::NotLeader) {
            continue;
        }
        *slot = match &answers {
            Ok(offsets) => offsets.iter().find(|o| o.partition == *p).map_or_else(
                || {
                    Err(WireError::new(
                        ErrorCode::LeaderNotAvailable,
                        format!("{topic}/{p}: its leader gave no offset"),
                    ))
                },
                |o| o.result.clone(),
            ),
            Err(e) => Err(e.clone()),
        };
    }
    out
}
