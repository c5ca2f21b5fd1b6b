//! Background retention: drops whole batches past a topic's time or size limit.

use std::sync::Arc;
use std::time::Duration;

use sluice_storage::PartitionId;

use crate::Broker;

/// How often replicated partitions' high watermarks are checkpointed (Kafka's
/// `replica.high.watermark.checkpoint.interval.ms`, 5 s).
const HIGH_WATERMARK_CHECKPOINT: Duration = Duration::from_secs(5);

/// Retention passes every `retention_check_interval_ms`, and high watermark checkpoints, until
/// the task is aborted at shutdown (which checkpoints once more).
pub(crate) async fn run(broker: Arc<Broker>) {
    let mut tick = tokio::time::interval(Duration::from_millis(
        broker.config.retention_check_interval_ms,
    ));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut checkpoint = tokio::time::interval(HIGH_WATERMARK_CHECKPOINT);
    checkpoint.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = checkpoint.tick() => {
                broker.checkpoint_high_watermarks().await;
                continue;
            }
        }
        let work: Vec<(PartitionId, Option<u64>, Option<u64>)> = broker.controller.read(|s| {
            s.topics()
                .filter(|t| t.config.retention_ms.is_some() || t.config.retention_bytes.is_some())
                .flat_map(|t| {
                    let (ms, bytes) = (t.config.retention_ms, t.config.retention_bytes);
                    (0..t.partitions.len() as u32).map(move |partition| {
                        (
                            PartitionId {
                                topic_id: t.topic_id,
                                partition,
                            },
                            ms,
                            bytes,
                        )
                    })
                })
                .collect()
        });
        let now = now_ms();
        for (id, ms, bytes) in work {
            // A replicated partition keeps what is not committed yet: a follower may still
            // fetch it, or a truncation remove it.
            let bound = broker.replicated(id).then(|| broker.high_watermark(id));
            match broker
                .store
                .apply_retention_bounded(id, ms, bytes, now, bound)
                .await
            {
                Ok(out) if out.removed_batches > 0 => tracing::info!(
                    topic_id = id.topic_id,
                    partition = id.partition,
                    removed_batches = out.removed_batches,
                    removed_bytes = out.removed_bytes,
                    log_start = out.log_start,
                    "retention removed old batches"
                ),
                Ok(_) => tracing::trace!(
                    topic_id = id.topic_id,
                    partition = id.partition,
                    "nothing past retention"
                ),
                Err(e) => {
                    tracing::warn!(topic_id = id.topic_id, partition = id.partition, cause = %e, "retention failed")
                }
            }
        }
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
