//! Cluster requests: the status of the cluster as this node sees it.

use std::sync::Arc;
use std::time::Duration;

use sluice_proto::{ClusterNode, ClusterStatus, ResponseBody};

use crate::Broker;
use crate::router::Reply;
use crate::wire_error::propose_error;

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
