//! Produce: a batch for a partition this node leads is validated whole, appended in the
//! stream's order, and acknowledged per `acks`. Batches routed by a partitioner plugin are in
//! `plugins.rs`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use sluice_proto::batch::{self, BatchHeader};
use sluice_proto::{
    Acks, ErrorCode, ProduceRequest, ProduceResponse, Request, ResponseBody, TopicConfig, WireError,
};

use crate::Broker;
use crate::retention::now_ms;
use crate::router::Reply;
use crate::wire_error::storage_error;

/// Checks a produce request's batch whole: header, CRC, every record (decompressed within
/// `max_decompressed` bytes), and the idempotence fields. CPU-bound: the server runs it off the
/// network tasks for large or compressed batches.
pub(crate) fn validate_batch(
    raw: &[u8],
    max_decompressed: usize,
) -> Result<BatchHeader, WireError> {
    let header = batch::validate_with_limit(raw, max_decompressed).map_err(|e| {
        WireError::new(
            ErrorCode::InvalidRecord,
            format!("invalid record batch: {e}"),
        )
    })?;
    if header.producer_id >= 0 && (header.producer_epoch < 0 || header.base_sequence < 0) {
        return Err(WireError::new(
            ErrorCode::InvalidRecord,
            format!(
                "invalid record batch: producer id {} needs a producer epoch and a base \
                 sequence of 0 or more, got epoch {} and sequence {}",
                header.producer_id, header.producer_epoch, header.base_sequence
            ),
        ));
    }
    Ok(header)
}

impl Broker {
    /// Refuses a batch larger than the topic's limit (or the broker's, whichever is smaller).
    pub(crate) fn check_batch_size(
        &self,
        topic: &str,
        config: &TopicConfig,
        len: usize,
    ) -> Result<(), WireError> {
        let limit = config
            .max_batch_bytes
            .unwrap_or(self.config.max_batch_bytes)
            .min(self.config.max_batch_bytes);
        if len > limit as usize {
            return Err(WireError::new(
                ErrorCode::RecordTooLarge,
                format!(
                    "batch of {len} bytes exceeds the limit of {limit} bytes for topic {topic:?}"
                ),
            ));
        }
        Ok(())
    }
}

/// Appends a produce request's batch, validated by [`validate_batch`], to a partition this node
/// leads. The append is enqueued before this returns (stream order); the answer follows when
/// it commits. Batches routed by a partitioner plugin go to `plugins::produce_routed`.
pub(crate) fn produce(
    broker: Arc<Broker>,
    req: ProduceRequest,
    raw: Bytes,
    validated: Result<BatchHeader, WireError>,
) -> BoxFuture<'static, Reply> {
    let prepared = (|| {
        let led = broker.led_partition_in(&req.topic, req.partition, req.leader_epoch)?;
        if req.acks == Acks::All && led.replicated {
            broker.check_min_insync(led.id, &req.topic)?;
        }
        broker.check_batch_size(&req.topic, &led.config, raw.len())?;
        validated?;
        Ok(led)
    })();
    let led = match prepared {
        Ok(led) => led,
        Err(e) => return Box::pin(async move { Reply::error(e) }),
    };
    let acks = req.acks;
    let len = raw.len();
    // Enqueued now, in stream order; awaited below.
    let append = broker
        .store
        .append(led.id, raw, led.leader_epoch, led.config.durability);
    let timeout = Duration::from_millis(u64::from(req.timeout_ms.max(1)));
    let span = tracing::debug_span!("append", topic = %req.topic, partition = req.partition);
    Box::pin(tracing::Instrument::instrument(
        async move {
            // The store commits or fails every queued append; it is never abandoned half-way,
            // because the high watermark must move past a committed batch either way.
            let appended = match append.await {
                Ok(appended) => appended,
                Err(e) => {
                    tracing::warn!(topic = %req.topic, partition = req.partition, cause = %e, "append failed");
                    return match acks {
                        Acks::None => Reply::None,
                        Acks::Leader | Acks::All => Reply::error(storage_error(e)),
                    };
                }
            };
            if !appended.duplicate {
                crate::metrics::records_in(
                    &req.topic,
                    appended.log_end - appended.base_offset,
                    len,
                );
            }
            // With one replica the committed log end is the high watermark; with more, the
            // leader moves it when the in-sync followers have fetched the batch.
            if led.replicated {
                broker.leader_appended(led.id, appended.log_end);
            } else {
                broker.advance_high_watermark(led.id, appended.log_end);
            }
            let produced = ResponseBody::Produced(ProduceResponse {
                base_offset: appended.base_offset,
                log_start: appended.log_start,
                append_time: now_ms(),
            });
            match acks {
                Acks::None => Reply::None,
                Acks::Leader => Reply::ok(produced),
                Acks::All => match broker.committed(led.id, &appended, timeout).await {
                    Ok(()) => Reply::ok(produced),
                    Err(e) => Reply::error(e),
                },
            }
        },
        span,
    ))
}

/// How long [`produce_at_leader`] keeps trying to hand a batch to a partition's leader.
const AT_LEADER_WAIT: Duration = Duration::from_secs(120);

/// Produces one batch to the leader of `topic`/`partition` on another broker (this broker
/// as a client of the cluster) with acks=all, retrying what a retry can cure for up to
/// [`AT_LEADER_WAIT`]; a batch stamped by an idempotent producer that had arrived before is
/// recognised there by its sequence. How work done here (a pipeline's output, records a
/// partitioner placed) reaches partitions other brokers lead.
pub(crate) async fn produce_at_leader(
    broker: &Arc<Broker>,
    topic: &str,
    partition: u32,
    bytes: Bytes,
) -> Result<ProduceResponse, WireError> {
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(50);
    loop {
        let leader = broker.controller.read(|s| {
            s.topic(topic)
                .and_then(|t| t.partitions.get(partition as usize))
                .map(|p| (p.leader, p.leader_epoch))
        });
        let Some((leader, epoch)) = leader else {
            return Err(WireError::new(
                ErrorCode::UnknownPartition,
                format!("topic {topic:?} no longer has partition {partition}"),
            ));
        };
        let result = match leader {
            None => Err(sluice_client::ClientError::Broker(WireError::new(
                ErrorCode::LeaderNotAvailable,
                format!("{topic}/{partition} has no leader"),
            ))),
            Some(node) => match broker.cluster_client().await {
                Ok(client) => {
                    let request = Request::Produce(ProduceRequest {
                        topic: topic.to_owned(),
                        partition,
                        acks: Acks::All,
                        timeout_ms: 30_000,
                        leader_epoch: Some(epoch),
                    });
                    match client.request_to(node, request, bytes.clone()).await {
                        Ok((ResponseBody::Produced(r), _)) => Ok(r),
                        Ok((other, _)) => {
                            return Err(WireError::new(
                                ErrorCode::Internal,
                                format!("unexpected answer to a produce: {other:?}"),
                            ));
                        }
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(sluice_client::ClientError::Broker(e)),
            },
        };
        match result {
            Ok(r) => return Ok(r),
            Err(e) if e.is_retriable() && started.elapsed() < AT_LEADER_WAIT => {
                tracing::debug!(topic, partition, cause = %e, "produce at another broker failed; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            Err(sluice_client::ClientError::Broker(e)) => return Err(e),
            Err(e) => {
                return Err(WireError::new(
                    ErrorCode::LeaderNotAvailable,
                    format!("{topic}/{partition} at its leader: {e}"),
                ));
            }
        }
    }
}

/// Where sequenced output (a pipeline's, a source connector's) goes: the topic's partitions as
/// the metadata places them now.
pub(crate) struct Output {
    pub(crate) topic_id: u64,
    pub(crate) partitions: u32,
    pub(crate) leaders: Vec<Option<u32>>,
    pub(crate) leader_epochs: Vec<u32>,
    pub(crate) durability: sluice_proto::Durability,
}

impl Output {
    /// The topic `name` as this node's metadata places it; `None` if it does not exist.
    pub(crate) fn of(broker: &Broker, name: &str) -> Option<Output> {
        broker.controller.read(|s| {
            s.topic(name).map(|t| Output {
                topic_id: t.topic_id,
                partitions: t.partitions.len() as u32,
                leaders: t.partitions.iter().map(|p| p.leader).collect(),
                leader_epochs: t.partitions.iter().map(|p| p.leader_epoch).collect(),
                durability: t.config.durability,
            })
        })
    }
}

/// Writes batches already stamped with an idempotent producer id and sequences to `topic`:
/// appended here for partitions this node leads (queued in order, so the store keeps each
/// partition's order), produced at the leader for the others (each partition's batches in
/// order). Returns once every batch is committed (acks=all), with the number recognised as
/// duplicates of batches already stored (a replay). Any failure is retriable by writing the
/// same batches again.
pub(crate) async fn write_sequenced(
    broker: &Arc<Broker>,
    topic: &str,
    output: &Output,
    batches: Vec<(u32, Vec<u8>)>,
    commit_timeout: Duration,
) -> Result<u64, String> {
    let mut remote: std::collections::BTreeMap<u32, Vec<Vec<u8>>> = Default::default();
    let mut appends = Vec::new();
    for (p, bytes) in batches {
        if output.leaders[p as usize] != Some(broker.node_id) {
            remote.entry(p).or_default().push(bytes);
            continue;
        }
        let id = sluice_storage::PartitionId {
            topic_id: output.topic_id,
            partition: p,
        };
        let epoch = output.leader_epochs[p as usize];
        appends.push((id, broker.store.append(id, bytes, epoch, output.durability)));
    }
    let sends = remote.into_iter().map(|(p, batches)| async move {
        for bytes in batches {
            produce_at_leader(broker, topic, p, bytes.into())
                .await
                .map_err(|e| format!("writing to {topic}/{p} at its leader: {}", e.message))?;
        }
        Ok::<(), String>(())
    });
    for sent in futures::future::join_all(sends).await {
        sent?;
    }
    let mut duplicates = 0;
    for (id, append) in appends {
        let appended = append.await.map_err(|e| {
            format!(
                "writing to {topic}/{}: {}",
                id.partition,
                storage_error(e).message
            )
        })?;
        broker.leader_appended(id, appended.log_end);
        // What the caller records next (a checkpoint) must not outlive this in a failover.
        broker
            .committed(id, &appended, commit_timeout)
            .await
            .map_err(|e| format!("writing to {topic}/{}: {}", id.partition, e.message))?;
        if appended.duplicate {
            duplicates += 1;
        }
    }
    Ok(duplicates)
}
