//! This node's replicas follow the metadata.
//!
//! The metadata says which partitions each node holds a replica of; the store holds what this
//! node has. A topic created (or grown) through another broker reaches this node as an applied
//! metadata entry, and a topic deleted elsewhere the same way. A watcher compares the two each
//! time the applied index moves and brings the store in line:
//! - partitions of which this node is a replica and which the store lacks are created (empty);
//! - the stored partitions of topics the metadata no longer holds are removed.
//!
//! Topic ids are never reused, so stored data of a topic id the metadata lacks belongs to no
//! live topic. Removal is guarded against a state that went backwards (a Raft node reopened
//! from a file whose commit index lagged): it runs only when the applied index is at or past
//! the highest one seen. At start-up the first pass runs after this node's own registration
//! was applied here, which implies every earlier entry was.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use sluice_storage::{PartitionId, Store};

use crate::controller::MetadataController;
use crate::{Broker, BrokerError};

/// What one pass changed in the store.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Reconciled {
    pub(crate) created: Vec<PartitionId>,
    pub(crate) removed_topics: Vec<u64>,
}

/// Creates the local replicas the store lacks and removes the data of topics the metadata no
/// longer holds. Idempotent; blocks for at most two store commits.
pub(crate) fn reconcile(
    store: &Store,
    controller: &MetadataController,
    node_id: u32,
) -> Result<Reconciled, BrokerError> {
    let (live, wanted): (BTreeSet<u64>, Vec<PartitionId>) = controller.read(|s| {
        let live = s.topics().map(|t| t.topic_id).collect();
        let wanted = s
            .topics()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.replicas.contains(&node_id))
                    .map(move |(i, _)| PartitionId {
                        topic_id: t.topic_id,
                        partition: i as u32,
                    })
            })
            .collect();
        (live, wanted)
    });
    let created: Vec<PartitionId> = wanted
        .into_iter()
        .filter(|id| store.partition_state(*id).is_none())
        .collect();
    if !created.is_empty() {
        store.create_partitions(&created)?;
        tracing::info!(
            partitions = created.len(),
            "created this node's replicas of partitions the metadata assigns it"
        );
    }
    let stored: BTreeSet<u64> = store.partitions().iter().map(|p| p.topic_id).collect();
    let removed_topics: Vec<u64> = stored.difference(&live).copied().collect();
    for &topic_id in &removed_topics {
        tracing::info!(topic_id, "removing the data of a deleted topic");
        store.delete_topic(topic_id)?;
    }
    Ok(Reconciled {
        created,
        removed_topics,
    })
}

/// Runs [`reconcile`] whenever the applied metadata index moves, until shutdown.
pub(crate) async fn watch(broker: Arc<Broker>) {
    let mut shutdown = broker.shutdown.subscribe();
    let mut seen: Option<u64> = None;
    let mut highest: Option<u64> = None;
    loop {
        let applied = tokio::select! {
            a = broker.controller.wait_applied_change(seen, Duration::from_secs(1)) => a,
            _ = shutdown.changed() => return,
        };
        if applied == seen {
            continue;
        }
        seen = applied;
        if applied < highest {
            tracing::warn!(
                ?applied,
                ?highest,
                "the metadata state is behind what this node applied before; waiting for it to \
                 catch up before changing the store"
            );
            continue;
        }
        highest = applied;
        let b = broker.clone();
        let pass =
            tokio::task::spawn_blocking(move || reconcile(&b.store, &b.controller, b.node_id))
                .await;
        match pass {
            Ok(Ok(done)) => {
                let b = broker.clone();
                match tokio::task::spawn_blocking(move || {
                    crate::groups::GroupCoordinator::follow_leadership(&b)
                })
                .await
                {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "loading consumer groups failed"),
                    Err(e) => tracing::error!(error = %e, "loading consumer groups panicked"),
                }
                crate::pipelines::PipelineRunners::follow(&broker);
                crate::connectors::ConnectorTasks::follow(&broker);
                crate::replication::follow_leadership(&broker);
                for &topic_id in &done.removed_topics {
                    broker.forget_topic(topic_id);
                }
                if !done.removed_topics.is_empty()
                    && let Err(e) = crate::groups::drop_deleted_offsets(&broker).await
                {
                    tracing::warn!(error = %e, "dropping offsets of deleted topics");
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "bringing the store in line with the metadata failed; retrying");
                seen = None;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "replica watcher pass panicked; retrying");
                seen = None;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
