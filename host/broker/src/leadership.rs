//! Partition leadership on this node: which partitions it leads (from the metadata), and each
//! led partition's high watermark — the offset below which records are committed and served.
//! Replication (cluster part 2) moves the high watermark from followers' progress here.

use std::sync::Arc;
use std::time::Duration;

use sluice_proto::{ErrorCode, TopicConfig, WireError};
use sluice_storage::PartitionId;
use tokio::sync::watch;

use crate::Broker;
use crate::wire_error::unknown_topic;

/// A partition this node leads, resolved from metadata.
pub(crate) struct Led {
    pub(crate) id: PartitionId,
    pub(crate) leader_epoch: u32,
    pub(crate) config: TopicConfig,
    /// The partition has more than one replica.
    pub(crate) replicated: bool,
}

/// Checks the leader epoch a request carries against the partition's current one: an older one
/// means the client's metadata is stale, a newer one that this broker's is behind.
pub(crate) fn check_leader_epoch(
    topic: &str,
    partition: u32,
    current: u32,
    requested: Option<u32>,
) -> Result<(), WireError> {
    match requested {
        Some(e) if e < current => Err(WireError::new(
            ErrorCode::FencedLeaderEpoch,
            format!(
                "{topic}/{partition}: the request names leader epoch {e}, the current one is \
                 {current}; refresh metadata and retry"
            ),
        )),
        Some(e) if e > current => Err(WireError::new(
            ErrorCode::UnknownLeaderEpoch,
            format!(
                "{topic}/{partition}: the request names leader epoch {e}, this broker knows \
                 {current}; retry shortly"
            ),
        )),
        _ => Ok(()),
    }
}

impl Broker {
    /// The partition, if this node leads it in the leader epoch the request names (if any).
    pub(crate) fn led_partition_in(
        &self,
        topic: &str,
        partition: u32,
        leader_epoch: Option<u32>,
    ) -> Result<Led, WireError> {
        let led = self.led_partition(topic, partition)?;
        check_leader_epoch(topic, partition, led.leader_epoch, leader_epoch)?;
        Ok(led)
    }

    pub(crate) fn led_partition(&self, topic: &str, partition: u32) -> Result<Led, WireError> {
        self.controller.read(|s| {
            let t = s.topic(topic).ok_or_else(|| unknown_topic(topic))?;
            let p = t.partitions.get(partition as usize).ok_or_else(|| {
                WireError::new(
                    ErrorCode::UnknownPartition,
                    format!(
                        "topic {topic:?} has partitions 0..{}; there is no partition {partition}",
                        t.partitions.len()
                    ),
                )
            })?;
            match p.leader {
                Some(l) if l == self.node_id => Ok(Led {
                    id: PartitionId {
                        topic_id: t.topic_id,
                        partition,
                    },
                    leader_epoch: p.leader_epoch,
                    config: t.config.clone(),
                    replicated: p.replicas.len() > 1,
                }),
                Some(l) => Err(WireError::new(
                    ErrorCode::NotLeader,
                    format!(
                        "node {} does not lead {topic}/{partition}; node {l} does",
                        self.node_id
                    ),
                )
                .with_leader(l)),
                None => Err(WireError::new(
                    ErrorCode::LeaderNotAvailable,
                    format!("{topic}/{partition} has no leader right now; retry shortly"),
                )),
            }
        })
    }

    pub(crate) fn high_watermark(&self, id: PartitionId) -> u64 {
        *self.runtime(id).high_watermark.borrow()
    }

    /// Waits until the high watermark reaches `target`; false on timeout.
    pub(crate) async fn wait_high_watermark(
        &self,
        id: PartitionId,
        target: u64,
        timeout: Duration,
    ) -> bool {
        let mut hw = self.runtime(id).high_watermark.subscribe();
        matches!(
            tokio::time::timeout(timeout, hw.wait_for(|hw| *hw >= target)).await,
            Ok(Ok(_))
        )
    }

    pub(crate) fn advance_high_watermark(&self, id: PartitionId, to: u64) {
        self.runtime(id).high_watermark.send_if_modified(|hw| {
            if to > *hw {
                *hw = to;
                true
            } else {
                false
            }
        });
    }
}

/// Per-partition state that lives only in memory.
#[derive(Debug)]
pub(crate) struct PartitionRuntime {
    /// Offset below which records are committed and visible. On a single node every appended
    /// batch is committed once the store has committed it; with replication the leader moves
    /// it to the minimum log end over the in-sync set.
    pub(crate) high_watermark: watch::Sender<u64>,
}

impl Broker {
    /// The in-memory runtime of a partition, created on first use from the store's state.
    pub(crate) fn runtime(&self, id: PartitionId) -> Arc<PartitionRuntime> {
        if let Some(rt) = self
            .partitions
            .read()
            .expect("partitions lock poisoned")
            .get(&id)
        {
            return rt.clone();
        }
        let log_end = self.store.partition_state(id).map_or(0, |s| s.log_end);
        self.partitions
            .write()
            .expect("partitions lock poisoned")
            .entry(id)
            .or_insert_with(|| {
                Arc::new(PartitionRuntime {
                    high_watermark: watch::channel(log_end).0,
                })
            })
            .clone()
    }

    pub(crate) fn forget_topic(&self, topic_id: u64) {
        self.partitions
            .write()
            .expect("partitions lock poisoned")
            .retain(|id, _| id.topic_id != topic_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_epochs_are_fenced_newer_ones_unknown_and_none_passes() {
        assert!(check_leader_epoch("t", 0, 3, None).is_ok());
        assert!(check_leader_epoch("t", 0, 3, Some(3)).is_ok());
        let old = check_leader_epoch("t", 0, 3, Some(2)).unwrap_err();
        assert_eq!(old.code, ErrorCode::FencedLeaderEpoch);
        assert!(
            old.message.contains("epoch 2") && old.message.contains("is 3"),
            "{old:?}"
        );
        let new = check_leader_epoch("t", 0, 3, Some(4)).unwrap_err();
        assert_eq!(new.code, ErrorCode::UnknownLeaderEpoch);
        assert!(old.code.is_retriable() && new.code.is_retriable());
    }
}
