//! Partition leadership on this node: which partitions it leads (from the metadata), and each
//! led partition's high watermark — the offset below which records are committed and served.
//! Replication (cluster part 2) moves the high watermark from followers' progress here.

use std::sync::Arc;
use std::time::Duration;

use sluice_metadata::{MetadataCommand, MetadataState};
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

    /// Waits until the batch at `base_offset` ending at `log_end`, appended here as leader, is
    /// committed — at once with one replica, once the in-sync replicas have it with more —
    /// which is when `acks=all` may be answered and when work built on it (a pipeline's
    /// checkpoint, a group's commit) may count on it surviving a failover. A retriable
    /// `Timeout` after `timeout`: the batch may still commit.
    pub(crate) async fn committed(
        &self,
        id: PartitionId,
        appended: &sluice_storage::Appended,
        timeout: Duration,
    ) -> Result<(), WireError> {
        let (base_offset, log_end) = (appended.base_offset, appended.log_end);
        // Checked now and then: a leader that lost its partition meanwhile answers at once
        // (the batch is then committed only if the new leader had it), not after `timeout`.
        let started = std::time::Instant::now();
        while started.elapsed() < timeout {
            let slice = (timeout - started.elapsed()).min(Duration::from_millis(250));
            if self.wait_high_watermark(id, log_end, slice).await {
                // The watermark passing `log_end` commits *this* batch only if the log still
                // holds it there. A leader replaced before the batch committed follows the new
                // leader: its log is cut below the batch and written again with the new
                // leader's records, and the watermark it then learns passes the same offsets.
                // Acknowledging on the offsets alone lost acknowledged records (found by the
                // fault harness's soak).
                self.still_holds(id, appended)?;
                return self.check_committed_in_sync(id);
            }
            let leader = self.controller.read(|s| {
                s.topic_by_id(id.topic_id)
                    .and_then(|t| t.partitions.get(id.partition as usize))
                    .and_then(|p| p.leader)
            });
            if leader != Some(self.node_id) {
                let e = WireError::new(
                    ErrorCode::NotLeader,
                    format!(
                        "node {} stopped leading partition {id} before the batch at offset \
                         {base_offset} was committed; it may still be (retry: a duplicate is \
                         recognised)",
                        self.node_id
                    ),
                );
                return Err(match leader {
                    Some(l) => e.with_leader(l),
                    None => e,
                });
            }
        }
        Err(WireError::new(
            ErrorCode::Timeout,
            format!(
                "the batch at offset {base_offset} of partition {id} was not replicated to the \
                 in-sync replicas within {} ms; it may still commit",
                timeout.as_millis()
            ),
        ))
    }

    /// Whether the log still holds the batch `appended` describes: the batch at its base
    /// offset is of the leader epoch it was appended in (a leader epoch's batches come from
    /// one leader, in one order). Below the log start, retention removed it, which it does
    /// only to committed batches.
    fn still_holds(
        &self,
        id: PartitionId,
        appended: &sluice_storage::Appended,
    ) -> Result<(), WireError> {
        let log_start = self.store.partition_state(id).map_or(0, |s| s.log_start);
        let held = self.store.epoch_at(id, appended.base_offset);
        if appended.base_offset < log_start || held == Some(appended.leader_epoch) {
            return Ok(());
        }
        Err(WireError::new(
            ErrorCode::NotLeader,
            format!(
                "node {} stopped leading partition {id} before the batch at offset {} \
                 (leader epoch {}) was committed, and the new leader did not have it \
                 (the offset now holds {}); retry at the new leader",
                self.node_id,
                appended.base_offset,
                appended.leader_epoch,
                held.map_or("nothing".to_owned(), |e| format!("leader epoch {e}")),
            ),
        ))
    }

    /// Whether the partition has more than one replica.
    pub(crate) fn replicated(&self, id: PartitionId) -> bool {
        self.controller.read(|s| {
            s.topic_by_id(id.topic_id)
                .and_then(|t| t.partitions.get(id.partition as usize))
                .is_some_and(|p| p.replicas.len() > 1)
        })
    }

    /// Stores the high watermark of every replicated partition whose watermark moved since
    /// its last checkpoint, so that a restart does not take the log end for it.
    pub(crate) async fn checkpoint_high_watermarks(&self) {
        use std::sync::atomic::Ordering;
        let runtimes: Vec<(PartitionId, Arc<PartitionRuntime>)> = self
            .partitions
            .read()
            .expect("partitions lock poisoned")
            .iter()
            .map(|(id, rt)| (*id, rt.clone()))
            .collect();
        for (id, rt) in runtimes {
            let hw = *rt.high_watermark.borrow();
            if hw == rt.checkpointed.load(Ordering::Relaxed) || !self.replicated(id) {
                continue;
            }
            let log_end = self.store.partition_state(id).map_or(0, |s| s.log_end);
            match self
                .store
                .checkpoint_high_watermark(id, hw.min(log_end))
                .await
            {
                Ok(()) => rt.checkpointed.store(hw, Ordering::Relaxed),
                Err(e) => {
                    tracing::debug!(partition = %id, cause = %e, "high watermark not checkpointed")
                }
            }
        }
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
    /// The high watermark last checkpointed to the store (replicated partitions).
    pub(crate) checkpointed: std::sync::atomic::AtomicU64,
    /// Woken when this node, as leader, appended to the partition: followers' fetches
    /// waiting at the log end answer at once.
    pub(crate) appended: tokio::sync::Notify,
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
        // With one replica, everything stored is committed. With more, a restarted replica
        // knows only what it checkpointed: its log end may hold records never committed.
        let start = if self.replicated(id) {
            self.store
                .high_watermark_checkpoint(id)
                .ok()
                .flatten()
                .unwrap_or(0)
                .min(log_end)
        } else {
            log_end
        };
        self.partitions
            .write()
            .expect("partitions lock poisoned")
            .entry(id)
            .or_insert_with(|| {
                Arc::new(PartitionRuntime {
                    high_watermark: watch::channel(start).0,
                    appended: tokio::sync::Notify::new(),
                    checkpointed: std::sync::atomic::AtomicU64::new(start),
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

/// On the metadata leader, every `cluster.leader_balance_interval_ms` (when
/// `cluster.auto_leader_balance` is on): gives each partition led by another than its
/// preferred replica back to it once it is live and in sync. Until shutdown.
pub(crate) async fn balance(broker: Arc<Broker>) {
    let Some(cluster) = broker.config.cluster.clone() else {
        return;
    };
    if !cluster.auto_leader_balance {
        return;
    }
    let mut shutdown = broker.shutdown.subscribe();
    let mut ticker =
        tokio::time::interval(Duration::from_millis(cluster.leader_balance_interval_ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        if broker.controller.leader() != Some(broker.node_id) {
            continue;
        }
        for (topic, partition, leader) in broker.controller.read(|s| s.unclean_elections()) {
            let cmd = MetadataCommand::ElectUncleanLeader {
                topic: topic.clone(),
                partition,
                leader,
            };
            match broker.controller.propose_async(cmd).await {
                Ok(()) => tracing::error!(
                    topic,
                    partition,
                    leader,
                    "UNCLEAN LEADER ELECTION: no in-sync replica of this partition is alive, and \
                     the topic allows an out-of-sync one to lead; records node {leader} lacks are \
                     LOST"
                ),
                Err(e) => {
                    tracing::debug!(topic, partition, cause = %e, "unclean election not made")
                }
            }
        }
        for (topic, partition) in broker.controller.read(preferred_elections) {
            let cmd = MetadataCommand::ElectPreferredLeader {
                topic: topic.clone(),
                partition,
            };
            match broker.controller.propose_async(cmd).await {
                Ok(()) => {
                    tracing::info!(topic, partition, "leadership back to the preferred replica")
                }
                Err(e) => {
                    tracing::debug!(topic, partition, cause = %e, "preferred leader not elected")
                }
            }
        }
    }
}

/// Partitions whose preferred replica (the first) does not lead but could: it is live and
/// in sync.
pub(crate) fn preferred_elections(s: &MetadataState) -> Vec<(String, u32)> {
    let live: std::collections::BTreeSet<u32> = s.live_brokers().map(|b| b.node_id).collect();
    s.topics()
        .flat_map(|t| {
            t.partitions
                .iter()
                .enumerate()
                .filter(|(_, p)| {
                    let preferred = p.replicas[0];
                    p.leader != Some(preferred)
                        && live.contains(&preferred)
                        && p.in_sync.contains(&preferred)
                })
                .map(|(i, _)| (t.name.clone(), i as u32))
                .collect::<Vec<_>>()
        })
        .collect()
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
