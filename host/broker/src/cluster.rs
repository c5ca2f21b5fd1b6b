//! Cluster requests: the status of the cluster as this node sees it, and membership changes.

use std::sync::Arc;
use std::time::Duration;

use sluice_proto::{
    ClusterNode, ClusterStatus, ElectedLeader, Request, ResponseBody, TopicReplication,
};

use sluice_metadata::MetadataCommand;
use sluice_proto::{ErrorCode, WireError};

use crate::Broker;
use crate::controller::MembershipChange;
use crate::router::Reply;
use crate::wire_error::propose_error;

/// Why a membership change failed, as clients see it.
fn membership_error(e: MembershipChange) -> WireError {
    match e.0 {
        sluice_raft::MembershipError::NotLeader { leader } => {
            let e = WireError::new(
                ErrorCode::NotLeader,
                "membership changes go to the metadata leader; send it there",
            );
            match leader.and_then(|(id, _)| u32::try_from(id).ok()) {
                Some(l) => e.with_leader(l),
                None => e,
            }
        }
        sluice_raft::MembershipError::Refused(why) => WireError::new(ErrorCode::InvalidConfig, why),
        sluice_raft::MembershipError::Stopped(e) => {
            WireError::new(ErrorCode::LeaderNotAvailable, e.to_string())
        }
    }
}

/// Handles `AddNode`: the node (started with `cluster.join`) becomes a voter.
pub(crate) async fn add_node(broker: Arc<Broker>, node_id: u32, peer_addr: String) -> Reply {
    if !broker.controller.is_clustered() {
        return Reply::error(WireError::new(
            ErrorCode::InvalidConfig,
            "this broker runs alone (no [cluster] in its config); nodes join a cluster",
        ));
    }
    if let Err(e) = broker.controller.add_voter(node_id, &peer_addr).await {
        return Reply::error(membership_error(e));
    }
    tracing::info!(node_id, %peer_addr, "node added to the metadata quorum");
    status(broker).await
}

/// Handles `RemoveNode`: refused while the node holds partitions; else it leaves the brokers
/// and the quorum.
pub(crate) async fn remove_node(broker: Arc<Broker>, node_id: u32) -> Reply {
    if broker.controller.leader() != Some(broker.node_id) {
        let e = WireError::new(
            ErrorCode::NotLeader,
            "membership changes go to the metadata leader; send it there",
        );
        return Reply::error(match broker.controller.leader() {
            Some(l) => e.with_leader(l),
            None => e,
        });
    }
    let registered = broker.controller.read(|s| s.broker(node_id).is_some());
    if registered
        && let Err(e) = broker
            .controller
            .propose_async(MetadataCommand::UnregisterBroker { node_id })
            .await
    {
        return Reply::error(propose_error(e));
    }
    if let Err(e) = broker.controller.remove_voter(node_id).await {
        return Reply::error(membership_error(e));
    }
    tracing::info!(node_id, "node removed from the cluster");
    status(broker).await
}

/// Handles `ElectLeaders`: proposes a preferred-leader election for every eligible partition
/// (of `topic`, or of all) as this node's metadata shows them; answers those that committed.
/// The automatic balancing (`leadership::balance`) does the same on a timer.
pub(crate) async fn elect_leaders(broker: Arc<Broker>, topic: Option<String>) -> Reply {
    if let Some(t) = &topic
        && broker.controller.read(|s| s.topic(t).is_none())
    {
        return Reply::error(crate::wire_error::unknown_topic(t));
    }
    let eligible: Vec<(String, u32)> = broker
        .controller
        .read(crate::leadership::preferred_elections)
        .into_iter()
        .filter(|(t, _)| topic.as_ref().is_none_or(|want| want == t))
        .collect();
    let mut elected = Vec::new();
    for (topic, partition) in eligible {
        let cmd = MetadataCommand::ElectPreferredLeader {
            topic: topic.clone(),
            partition,
        };
        match broker.controller.propose_async(cmd).await {
            Ok(()) => {
                let leader = broker.controller.read(|s| {
                    s.topic(&topic)
                        .and_then(|t| t.partitions.get(partition as usize))
                        .and_then(|p| p.leader)
                });
                tracing::info!(%topic, partition, ?leader, "leadership back to the preferred replica");
                elected.push(ElectedLeader {
                    topic,
                    partition,
                    leader: leader.unwrap_or_default(),
                });
            }
            // Another election or an in-sync change got there first: not eligible any more.
            Err(e) => {
                tracing::debug!(%topic, partition, cause = %e, "preferred leader not elected")
            }
        }
    }
    Reply::ok(ResponseBody::ElectedLeaders(elected))
}

/// Handles `AlterTopicReplication` (through the metadata log) and
/// `DescribeTopicReplication`: the topic's replication settings in effect.
pub(crate) async fn topic_replication(broker: Arc<Broker>, request: Request) -> Reply {
    let topic = match request {
        Request::AlterTopicReplication {
            topic,
            min_insync_replicas,
            unclean_leader_election,
        } => {
            let cmd = MetadataCommand::AlterTopicReplication {
                topic: topic.clone(),
                min_insync_replicas,
                unclean_leader_election,
            };
            if let Err(e) = broker.controller.propose_async(cmd).await {
                return Reply::error(propose_error(e));
            }
            tracing::info!(%topic, ?min_insync_replicas, ?unclean_leader_election, "topic replication settings changed");
            topic
        }
        Request::DescribeTopicReplication { topic } => topic,
        _ => {
            return Reply::error(WireError::new(
                ErrorCode::InvalidRequest,
                "request routed to the wrong handler",
            ));
        }
    };
    let described = broker.controller.read(|s| {
        let t = s.topic(&topic)?;
        let replicas = t.partitions.first().map_or(1, |p| p.replicas.len());
        let settings = s.replication_settings(&topic);
        Some(TopicReplication {
            topic: topic.clone(),
            replication_factor: replicas as u16,
            min_insync_replicas: settings.min_insync(replicas) as u16,
            unclean_leader_election: settings.unclean_leader_election,
        })
    });
    match described {
        Some(d) => Reply::ok(ResponseBody::TopicReplication(d)),
        None => Reply::error(crate::wire_error::unknown_topic(&topic)),
    }
}

/// Handles `ClusterStatus`: every node of the Raft membership and every registered broker,
/// with roles, broker epochs, liveness (known on the metadata leader; elsewhere a node counts
/// as live unless fenced) and the partitions each leads, beside this node's Raft figures.
pub(crate) async fn status(broker: Arc<Broker>) -> Reply {
    let raft = match broker.controller.status().await {
        Ok(s) => s,
        Err(e) => return Reply::error(propose_error(e)),
    };
    let session = broker
        .config
        .cluster
        .as_ref()
        .map_or(Duration::from_secs(6), |c| {
            Duration::from_millis(c.session_timeout_ms)
        });
    let live = broker.controller.live_brokers(session);
    let nodes = broker.controller.read(|s| {
        let mut ids: Vec<u32> = s.brokers().map(|b| b.node_id).collect();
        ids.extend(
            raft.voters
                .iter()
                .chain(&raft.learners)
                .filter_map(|id| u32::try_from(*id).ok()),
        );
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter()
            .map(|id| {
                let b = s.broker(id);
                let role = if raft.voters.contains(&u64::from(id)) {
                    "voter"
                } else if raft.learners.contains(&u64::from(id)) {
                    "learner"
                } else {
                    "observer"
                };
                let fenced = b.is_some_and(|b| b.fenced);
                ClusterNode {
                    node_id: id,
                    addr: b.map(|b| b.addr.clone()).unwrap_or_default(),
                    peer_addr: b.and_then(|b| b.peer_addr.clone()),
                    rack: b.and_then(|b| b.rack.clone()),
                    role: role.into(),
                    broker_epoch: b.map_or(0, |b| b.epoch),
                    live: match &live {
                        Some(live) => live.contains(&id),
                        None => b.is_some() && !fenced,
                    },
                    fenced,
                    leader_of: s
                        .topics()
                        .flat_map(|t| &t.partitions)
                        .filter(|p| p.leader == Some(id))
                        .count() as u32,
                }
            })
            .collect()
    });
    Reply::ok(ResponseBody::ClusterStatus(ClusterStatus {
        cluster_id: broker.cluster_id.clone(),
        answered_by: broker.node_id,
        controller: raft.leader.and_then(|id| u32::try_from(id).ok()),
        term: raft.term,
        committed: raft.committed,
        applied: raft.last_applied,
        nodes,
    }))
}
