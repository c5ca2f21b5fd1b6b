//! Request handling: what the broker does for each request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use sluice_metadata::{MetadataCommand, MetadataError, TopicRecord};
use sluice_proto::batch::{self, BatchHeader};
use sluice_proto::{
    Acks, BrokerInfo, CreateTopicRequest, ErrorCode, FetchRequest, FetchResponse, FetchedPartition,
    HelloRequest, HelloResponse, ListOffsetsRequest, MetadataResponse, OffsetSpec,
    PartitionDescription, PartitionMetadata, PartitionOffset, ProduceRequest, ProduceResponse,
    Request, Response, ResponseBody, TopicConfig, TopicDescription, TopicMetadata, WireError,
};
use sluice_storage::{PartitionId, StorageError};

use crate::Broker;
use crate::controller::ProposeError;
use crate::retention::now_ms;
use crate::server::Session;

/// What goes back on the stream for one request.
#[derive(Debug)]
pub(crate) enum Reply {
    Frame(Response, Bytes),
    /// Nothing: `acks=0` produce requests get no response.
    None,
}

impl Reply {
    fn ok(body: ResponseBody) -> Reply {
        Reply::Frame(Ok(body), Bytes::new())
    }

    fn from(result: Result<ResponseBody, WireError>) -> Reply {
        Reply::Frame(result, Bytes::new())
    }
}

/// Longest long-poll a fetch may ask for.
const MAX_FETCH_WAIT: Duration = Duration::from_secs(30);

pub(crate) fn hello(broker: &Broker, session: &Session, hello: &HelloRequest) -> Reply {
    let version = sluice_proto::PROTOCOL_VERSION.min(hello.max_version);
    if version < hello.min_version || version < sluice_proto::MIN_PROTOCOL_VERSION {
        return Reply::error(WireError::new(
            ErrorCode::UnsupportedVersion,
            format!(
                "client speaks protocol versions {}..={}, this broker {}..={}; upgrade the older side",
                hello.min_version,
                hello.max_version,
                sluice_proto::MIN_PROTOCOL_VERSION,
                sluice_proto::PROTOCOL_VERSION
            ),
        ));
    }
    let _ = session.version.set(version);
    tracing::debug!(client = %hello.client_id, version, "hello");
    Reply::ok(ResponseBody::Hello(HelloResponse {
        version,
        node_id: broker.node_id,
        cluster_id: broker.cluster_id.clone(),
        max_frame_bytes: broker.config.max_frame_bytes as u32,
    }))
}

/// Starts handling a request. Called in stream order: anything that must keep that order
/// (enqueueing a produce) happens before this returns; the rest runs in the returned future.
pub(crate) fn handle(
    broker: Arc<Broker>,
    request: Request,
    raw: Bytes,
) -> BoxFuture<'static, Reply> {
    match request {
        // Produce requests are validated (and routed) in the stream's order by the server,
        // which calls `produce` or `plugins::produce_routed` itself.
        Request::Produce(_) => Box::pin(async {
            Reply::error(WireError::new(
                ErrorCode::InvalidRequest,
                "request routed to the wrong handler",
            ))
        }),
        Request::Fetch(f) => Box::pin(async move { fetch(broker, f).await }),
        Request::GroupHeartbeat(_)
        | Request::OffsetCommit(_)
        | Request::OffsetFetch { .. }
        | Request::ListGroups
        | Request::DescribeGroup { .. }
        | Request::ResetOffsets(_)
        | Request::DeleteGroup { .. } => Box::pin(crate::groups::handle(broker, request)),
        Request::CreatePipeline(_)
        | Request::ListPipelines
        | Request::DescribePipeline { .. }
        | Request::PausePipeline { .. }
        | Request::ResumePipeline { .. }
        | Request::DeletePipeline { .. } => Box::pin(crate::pipelines::handle(broker, request)),
        Request::DeleteTopic { name } => Box::pin(crate::topic_delete::handle(broker, name, false)),
        Request::DeleteTopicForced { name } => {
            Box::pin(crate::topic_delete::handle(broker, name, true))
        }
        Request::FetchTransformed(req) => Box::pin(crate::plugins::fetch_transformed(broker, req)),
        Request::DeployPlugin { .. }
        | Request::ListPlugins
        | Request::DescribePlugin { .. }
        | Request::DeletePlugin { .. } => Box::pin(async move {
            let b = broker.clone();
            match tokio::task::spawn_blocking(move || crate::plugins::admin(&b, request, raw)).await
            {
                Ok(r) => Reply::from(r),
                Err(e) => Reply::error(WireError::new(
                    ErrorCode::Internal,
                    format!("handler failed: {e}"),
                )),
            }
        }),
        other => Box::pin(async move {
            let b = broker.clone();
            match tokio::task::spawn_blocking(move || admin(&b, other)).await {
                Ok(r) => Reply::from(r),
                Err(e) => Reply::error(WireError::new(
                    ErrorCode::Internal,
                    format!("handler failed: {e}"),
                )),
            }
        }),
    }
}

pub(crate) fn unknown_topic(name: &str) -> WireError {
    WireError::new(
        ErrorCode::UnknownTopic,
        format!("topic {name:?} does not exist; create it with `sluice topic create {name}`"),
    )
}

pub(crate) fn metadata_error(e: MetadataError) -> WireError {
    let code = match &e {
        MetadataError::UnknownTopic(name) => return unknown_topic(name),
        MetadataError::TopicExists(_) => ErrorCode::TopicAlreadyExists,
        MetadataError::InvalidName(_) => ErrorCode::InvalidTopicName,
        MetadataError::UnknownPartition { .. } => ErrorCode::UnknownPartition,
        MetadataError::InvalidPartitions(_)
        | MetadataError::InvalidConfig(_)
        | MetadataError::UnknownBroker(_) => ErrorCode::InvalidConfig,
        MetadataError::ProducerIdsExhausted => ErrorCode::Internal,
        MetadataError::UnknownPlugin(_) => ErrorCode::UnknownPlugin,
        MetadataError::PluginInUse { .. } => ErrorCode::InvalidConfig,
        MetadataError::UnknownPipeline(_) => ErrorCode::UnknownPipeline,
        MetadataError::PipelineExists(_) => ErrorCode::PipelineExists,
        MetadataError::TopicInUse { .. } => ErrorCode::InvalidConfig,
    };
    WireError::new(code, e.to_string())
}

pub(crate) fn storage_error(e: StorageError) -> WireError {
    match e {
        StorageError::OffsetOutOfRange { log_start, log_end } => WireError::new(
            ErrorCode::OffsetOutOfRange,
            format!("offset out of range: the partition holds offsets {log_start}..{log_end}"),
        )
        .with_offset(log_start),
        StorageError::UnknownPartition(id) => WireError::new(
            ErrorCode::UnknownPartition,
            format!("partition {} is not stored here", id.partition),
        ),
        StorageError::Corrupt { .. } => WireError::new(ErrorCode::CorruptData, e.to_string()),
        StorageError::OutOfOrderSequence {
            id,
            producer_id,
            expected,
            got,
        } => WireError::new(
            ErrorCode::OutOfOrderSequence,
            format!(
                "out of order sequence on partition {}: producer {producer_id} sent sequence \
                 {got}, expected sequence {expected} (a batch before it is missing); nothing was \
                 stored — the producer must start over with a new producer id",
                id.partition
            ),
        ),
        StorageError::ProducerFenced {
            id,
            producer_id,
            epoch,
            current_epoch,
        } => WireError::new(
            ErrorCode::ProducerFenced,
            format!(
                "producer {producer_id} epoch {epoch} is fenced on partition {}: epoch \
                 {current_epoch} is current (a newer instance of this producer exists); nothing \
                 was stored",
                id.partition
            ),
        ),
        StorageError::Closed => WireError::new(
            ErrorCode::ShuttingDown,
            "the store is closing; retry shortly",
        ),
        // Says the disk is full, which file, and that writes resume once space is freed.
        StorageError::DiskFull { .. } => WireError::new(ErrorCode::StorageError, e.to_string()),
        other => WireError::new(ErrorCode::StorageError, other.to_string()),
    }
}

pub(crate) fn propose_error(e: ProposeError) -> WireError {
    match e {
        ProposeError::Refused(m) => metadata_error(m),
        ProposeError::Storage(s) => storage_error(s),
    }
}

/// A partition this node leads, resolved from metadata.
pub(crate) struct Led {
    pub(crate) id: PartitionId,
    leader_epoch: u32,
    config: TopicConfig,
}

impl Broker {
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

    /// Waits until the high watermark reaches `target`; false on timeout.
    async fn wait_high_watermark(&self, id: PartitionId, target: u64, timeout: Duration) -> bool {
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
        let led = broker.led_partition(&req.topic, req.partition)?;
        broker.check_batch_size(&req.topic, &led.config, raw.len())?;
        validated?;
        Ok(led)
    })();
    let led = match prepared {
        Ok(led) => led,
        Err(e) => return Box::pin(async move { Reply::error(e) }),
    };
    let acks = req.acks;
    // Enqueued now, in stream order; awaited below.
    let append = broker.store.append(
        led.id,
        raw.to_vec(),
        led.leader_epoch,
        led.config.durability,
    );
    let timeout = Duration::from_millis(u64::from(req.timeout_ms.max(1)));
    Box::pin(async move {
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
        // On one node the committed log end is the high watermark. With replication the
        // leader moves it when the in-sync followers have fetched the batch.
        broker.advance_high_watermark(led.id, appended.log_end);
        let produced = ResponseBody::Produced(ProduceResponse {
            base_offset: appended.base_offset,
            log_start: appended.log_start,
            append_time: now_ms(),
        });
        match acks {
            Acks::None => Reply::None,
            Acks::Leader => Reply::ok(produced),
            Acks::All => {
                if broker
                    .wait_high_watermark(led.id, appended.log_end, timeout)
                    .await
                {
                    Reply::ok(produced)
                } else {
                    Reply::error(WireError::new(
                        ErrorCode::Timeout,
                        format!(
                            "the batch at offset {} was not replicated to the in-sync replicas within {} ms; it may still commit",
                            appended.base_offset, req.timeout_ms
                        ),
                    ))
                }
            }
        }
    })
}

/// Trims a run of batches to those starting below the high watermark.
pub(crate) fn below_high_watermark(mut bytes: Bytes, hw: u64) -> Bytes {
    let mut keep = 0;
    let mut rest: &[u8] = &bytes;
    while let Ok(h) = BatchHeader::parse(rest) {
        if h.base_offset >= hw || h.batch_len as usize > rest.len() {
            break;
        }
        keep += h.batch_len as usize;
        rest = &rest[h.batch_len as usize..];
    }
    bytes.truncate(keep);
    bytes
}

async fn fetch(broker: Arc<Broker>, req: FetchRequest) -> Reply {
    match fetch_batches(broker, req).await {
        Ok((resp, raw)) => Reply::Frame(Ok(ResponseBody::Fetched(resp)), raw),
        Err(e) => Reply::error(e),
    }
}

/// Reads batches for a fetch, long-polling until `min_bytes` are there, the wait is over, a
/// partition has an error, or the broker shuts down.
pub(crate) async fn fetch_batches(
    broker: Arc<Broker>,
    req: FetchRequest,
) -> Result<(FetchResponse, Bytes), WireError> {
    let deadline =
        Instant::now() + Duration::from_millis(u64::from(req.max_wait_ms)).min(MAX_FETCH_WAIT);
    let req = Arc::new(req);
    loop {
        // Subscribe before reading so an append between the read and the wait still wakes us.
        let mut watches: Vec<_> = req
            .partitions
            .iter()
            .filter_map(|p| broker.led_partition(&p.topic, p.partition).ok())
            .map(|led| broker.runtime(led.id).high_watermark.subscribe())
            .collect();
        let (b, r) = (broker.clone(), req.clone());
        let reading = broker
            .limits
            .fetch_reads
            .acquire()
            .await
            .expect("fetch reads are never closed");
        let (resp, raw) = tokio::task::spawn_blocking(move || fetch_once(&b, &r))
            .await
            .map_err(|e| WireError::new(ErrorCode::Internal, format!("fetch failed: {e}")))?;
        drop(reading);
        let has_error = resp.partitions.iter().any(|p| p.error.is_some());
        if raw.len() >= req.min_bytes.max(1) as usize
            || has_error
            || Instant::now() >= deadline
            || watches.is_empty()
        {
            return Ok((resp, raw));
        }
        // A long-poll ends early when data arrives or the broker begins shutting down.
        let mut stop = broker.shutdown.subscribe();
        if *stop.borrow_and_update() {
            return Ok((resp, raw));
        }
        let changed =
            futures::future::select_all(watches.iter_mut().map(|w| Box::pin(w.changed())));
        tokio::select! {
            _ = tokio::time::timeout_at(deadline.into(), changed) => {}
            _ = stop.changed() => {}
        }
    }
}

fn fetch_once(broker: &Broker, req: &FetchRequest) -> (FetchResponse, Bytes) {
    // The partitions' batches as the store returned them; joined only when there are several.
    let mut parts: Vec<Bytes> = Vec::new();
    let mut len = 0usize;
    let mut partitions = Vec::with_capacity(req.partitions.len());
    // The sizes come from the request: the answer must also fit in one frame, so neither asks
    // the store for more than that (room is left for the control message).
    let cap = broker
        .config
        .max_frame_bytes
        .saturating_sub(64 * 1024)
        .max(1);
    let max_total = (req.max_bytes.max(1) as usize).min(cap);
    for p in &req.partitions {
        let mut entry = FetchedPartition {
            topic: p.topic.clone(),
            partition: p.partition,
            error: None,
            high_watermark: 0,
            log_start: 0,
            bytes: 0,
        };
        let led = match broker.led_partition(&p.topic, p.partition) {
            Ok(led) => led,
            Err(e) => {
                entry.error = Some(e);
                partitions.push(entry);
                continue;
            }
        };
        let hw = broker.high_watermark(led.id);
        entry.high_watermark = hw;
        let room = max_total.saturating_sub(len);
        if room == 0 && len > 0 {
            entry.log_start = broker
                .store
                .partition_state(led.id)
                .map_or(0, |s| s.log_start);
            partitions.push(entry);
            continue;
        }
        // At least one batch overall, even when it alone exceeds the limits.
        let budget = if len == 0 {
            p.max_bytes.clamp(1, max_total as u32)
        } else {
            (room as u32).min(p.max_bytes).max(1)
        };
        match broker.store.read(led.id, p.offset, budget) {
            Ok(read) => {
                entry.log_start = read.log_start;
                let bytes = below_high_watermark(read.bytes, hw);
                if len > 0 && len + bytes.len() > max_total {
                    // This partition's first batch would overflow the response; it gets its
                    // turn in the next fetch.
                } else {
                    entry.bytes = bytes.len() as u32;
                    len += bytes.len();
                    parts.push(bytes);
                }
            }
            Err(e) => {
                if let StorageError::Corrupt { .. } = &e {
                    tracing::error!(topic = %p.topic, partition = p.partition, cause = %e, "corrupt batch on disk; not served");
                }
                entry.error = Some(storage_error(e));
            }
        }
        partitions.push(entry);
    }
    let raw = match parts.len() {
        0 => Bytes::new(),
        1 => parts.swap_remove(0),
        _ => {
            let mut joined = BytesMut::with_capacity(len);
            for part in &parts {
                joined.extend_from_slice(part);
            }
            joined.freeze()
        }
    };
    (FetchResponse { partitions }, raw)
}

/// Requests that read or change metadata. Blocking: runs on a blocking thread.
fn admin(broker: &Broker, request: Request) -> Result<ResponseBody, WireError> {
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
        Request::CreateTopic(req) => create_topic(broker, req),
        Request::AddPartitions { name, count } => {
            if count == 0 {
                return Err(WireError::new(
                    ErrorCode::InvalidConfig,
                    "--count must be at least 1",
                ));
            }
            let existing = broker
                .controller
                .read(|s| s.topic(&name).map(|t| t.partitions.len()))
                .ok_or_else(|| unknown_topic(&name))?;
            check_partition_count(existing.saturating_add(count as usize))?;
            let assignments = vec![vec![broker.node_id]; count as usize];
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
            // Allocated through the metadata log, so an id is never handed out twice, not even
            // after a restart. Every new producer starts at epoch 0.
            let producer_id = broker
                .controller
                .propose_then(MetadataCommand::AllocateProducerId, |s| {
                    s.next_producer_id() - 1
                })
                .map_err(propose_error)?;
            tracing::debug!(producer_id, "producer id allocated");
            Ok(ResponseBody::ProducerId {
                producer_id,
                epoch: 0,
            })
        }
        Request::Hello(_)
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
        | Request::DeletePipeline { .. } => Err(WireError::new(
            ErrorCode::InvalidRequest,
            "request routed to the wrong handler",
        )),
    }
}

fn create_topic(broker: &Broker, req: CreateTopicRequest) -> Result<ResponseBody, WireError> {
    if req.partitions == 0 {
        return Err(WireError::new(
            ErrorCode::InvalidConfig,
            "a topic needs at least one partition",
        ));
    }
    check_partition_count(req.partitions as usize)?;
    let assignments = vec![vec![broker.node_id]; req.partitions as usize];
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

/// Creates the topic's partitions the store does not have yet, in one commit.
fn create_partitions(broker: &Broker, t: &TopicRecord) -> Result<(), WireError> {
    let missing: Vec<PartitionId> = (0..t.partitions.len() as u32)
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
        controller: Some(broker.node_id),
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
    let mut out = Vec::with_capacity(req.partitions.len());
    for (partition, spec) in req.partitions {
        let result = broker.led_partition(&req.topic, partition).and_then(|led| {
            let hw = broker.high_watermark(led.id);
            let state = broker.store.partition_state(led.id).ok_or_else(|| {
                WireError::new(
                    ErrorCode::UnknownPartition,
                    format!("partition {partition} is not stored here"),
                )
            })?;
            match spec {
                OffsetSpec::Earliest => Ok(state.log_start),
                OffsetSpec::Latest => Ok(hw),
                OffsetSpec::Timestamp(ts) => broker
                    .store
                    .offset_for_timestamp(led.id, ts)
                    .map(|o| o.min(hw))
                    .map_err(storage_error),
            }
        });
        out.push(PartitionOffset { partition, result });
    }
    Ok(ResponseBody::Offsets(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::{BatchBuilder, Compression, Record};

    fn batch_at(base: u64, n: usize) -> Vec<u8> {
        let mut b = BatchBuilder::new(Compression::None);
        for _ in 0..n {
            b.push(&Record {
                value: Some(Bytes::from_static(b"v")),
                ..Default::default()
            });
        }
        let mut bytes = b.finish(-1, -1, -1).unwrap();
        batch::assign_offset(&mut bytes, base, 0);
        bytes
    }

    #[test]
    fn trims_batches_at_or_above_the_high_watermark() {
        let mut all = batch_at(0, 3);
        all.extend(batch_at(3, 2));
        all.extend(batch_at(5, 4));
        let all = Bytes::from(all);
        let one = batch_at(0, 3).len();
        let two = one + batch_at(3, 2).len();
        assert_eq!(below_high_watermark(all.clone(), 9).len(), all.len());
        assert_eq!(below_high_watermark(all.clone(), 5).len(), two);
        assert_eq!(
            below_high_watermark(all.clone(), 4).len(),
            two,
            "a batch straddling the mark is whole"
        );
        assert_eq!(below_high_watermark(all.clone(), 1).len(), one);
        assert_eq!(below_high_watermark(all, 0).len(), 0);
    }
}
