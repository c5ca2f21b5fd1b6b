//! The producer: batches records per partition in a background task and sends the batches on
//! long-lived pipelined streams.
//!
//! [`Producer::send`] looks up the topic's partition count (cached), picks the partition when it
//! can (explicit or key hash), reserves buffer memory (this is where backpressure waits), and
//! hands the record to the background task. That task owns the [`Accumulator`] (the pure core),
//! sends what it says is ready, and feeds outcomes back: success, retry after backoff, or a
//! final failure that fails every record of the batch.
//!
//! **Idempotence** (on by default, as in Kafka 3+): before the first batch is encoded the task
//! asks the broker for a producer id and epoch (`InitProducerId`). Each batch then carries that
//! id and the sequence number of its first record on its partition; a retry resends the same
//! bytes, so when the first attempt did reach the log (only its answer was lost) the broker
//! answers with the offset it was stored at instead of storing it twice, and it refuses a batch
//! that would leave a gap (`OutOfOrderSequence`). When a sequenced batch fails for good (any
//! error, including `OutOfOrderSequence` and `ProducerFenced`), its records fail with that
//! error, and the producer obtains a **new producer id** for later batches, whose sequences
//! start at 0: the failed batch left a hole in the old sequence that the broker would refuse
//! forever. Batches already encoded keep their id. Under [`Acks::None`] idempotence is off
//! (the broker sends nothing back, so there is nothing to deduplicate against), as Kafka
//! requires `acks=all` for it.

mod accumulator;
mod delivery;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sluice_proto::batch::{BatchBuilder, HEADER_LEN, Record};
use sluice_proto::{
    Acks, Compression, ErrorCode, Header, ProduceRequest, ProduceResponse, Request, ResponseBody,
    WireError,
};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tracing::{debug, warn};

use self::accumulator::{
    Accumulator, AccumulatorConfig, ProducerIdentity, SealedBatch, TopicPartition,
};
pub use self::delivery::DeliveryFuture;
use self::delivery::{BatchDone, Placed};
use crate::client::{TopicRoute, unexpected};
use crate::lane::Lane;
use crate::{Client, ClientError};

/// Producer settings. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Acknowledgement to wait for (default [`Acks::All`]).
    pub acks: Acks,
    /// Batch compression (default none).
    pub compression: Compression,
    /// How long a batch waits for more records before it is sent (default 5 ms).
    pub linger: Duration,
    /// A batch is sent once it reaches this many bytes, before compression (default 1 MiB).
    /// A single larger record still goes, alone in its batch.
    pub max_batch_bytes: usize,
    /// Batches of one partition in flight at once (default 5, as Kafka's
    /// `max.in.flight.requests.per.connection`). With idempotence it is capped at 5 (the
    /// batches the broker remembers per producer) and nothing is reordered or duplicated:
    /// when one batch fails in transit, the ones sent behind it that the broker refuses as out
    /// of sequence wait for its retry and go again after it. Without idempotence, more than 1
    /// can reorder a partition's records when a retry happens: set 1 to keep order then.
    pub max_in_flight_per_partition: usize,
    /// Stamp batches with a producer id and sequence numbers so that retries are never stored
    /// twice (default true). Ignored (off) under [`Acks::None`].
    pub idempotence: bool,
    /// Retries of a batch after a retriable error (default 10).
    pub retries: u32,
    /// Wait before the first retry; doubles per attempt, up to 10× (default 100 ms).
    pub retry_backoff: Duration,
    /// Upper bound on the time from `send` to the outcome, retries included (default 120 s).
    pub delivery_timeout: Duration,
    /// How long the broker may wait for the acknowledgement condition (default 30 000 ms).
    pub request_timeout_ms: u32,
    /// Bytes of records the producer holds before `send` waits for room (default 64 MiB).
    pub buffer_memory: usize,
    /// Long-lived streams batches are spread over (default 4); a partition always uses the
    /// same one, so its batches reach the broker in order.
    pub sender_lanes: usize,
    /// How long a topic's cached partition count is trusted (default 5 min).
    pub metadata_max_age: Duration,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            acks: Acks::All,
            compression: Compression::None,
            linger: Duration::from_millis(5),
            max_batch_bytes: 1024 * 1024,
            max_in_flight_per_partition: 5,
            idempotence: true,
            retries: 10,
            retry_backoff: Duration::from_millis(100),
            delivery_timeout: Duration::from_secs(120),
            request_timeout_ms: 30_000,
            buffer_memory: 64 * 1024 * 1024,
            sender_lanes: 4,
            metadata_max_age: Duration::from_secs(300),
        }
    }
}

/// A record to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerRecord {
    pub topic: String,
    /// `None`: by key hash if there is a key, else sticky round robin.
    pub partition: Option<u32>,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
    /// Milliseconds since the Unix epoch; `None` means now.
    pub timestamp: Option<i64>,
}

impl ProducerRecord {
    pub fn new(topic: impl Into<String>, value: impl Into<Bytes>) -> Self {
        ProducerRecord {
            topic: topic.into(),
            partition: None,
            key: None,
            value: Some(value.into()),
            headers: Vec::new(),
            timestamp: None,
        }
    }

    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    pub fn with_partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }

    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push(Header {
            key: key.into(),
            value: Some(value.into()),
        });
        self
    }

    pub fn with_timestamp(mut self, timestamp: i64) -> Self {
        self.timestamp = Some(timestamp);
        self
    }
}

/// Where a record was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    pub topic: Arc<str>,
    pub partition: u32,
    /// The record's offset; [`RecordMetadata::UNKNOWN_OFFSET`] under [`Acks::None`], where the
    /// broker does not say.
    pub offset: u64,
    /// The record's timestamp (ms since the Unix epoch).
    pub timestamp: i64,
}

impl RecordMetadata {
    /// The offset reported under [`Acks::None`].
    pub const UNKNOWN_OFFSET: u64 = u64::MAX;
}

/// Sends records to topics. Cheap to clone; clones share one background task, which keeps
/// running until every clone is dropped and everything queued has its outcome.
#[derive(Debug, Clone)]
pub struct Producer {
    handle: Arc<Handle>,
}

/// What the clones of one `Producer` share; dropping the last one closes the producer.
#[derive(Debug)]
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.core().closing = true;
        self.shared.wake.notify_one();
    }
}

/// What the producer's clones and its driver share.
#[derive(Debug)]
struct Shared {
    client: Client,
    config: ProducerConfig,
    /// Permits are bytes of buffered records; `send` waits here when the buffer is full.
    memory: Arc<Semaphore>,
    /// `send` appends to the accumulator itself (as Kafka's producer does), so a record costs
    /// no message to the driver and no channel of its own: its delivery future is its batch's
    /// outcome and its place in the batch. The lock is held for the append or for one round of
    /// the driver's bookkeeping, never across an await.
    core: Mutex<Core>,
    /// Tells the driver that a batch opened or was sealed, a flush was asked for, or the
    /// producer closed.
    wake: Notify,
}

#[derive(Debug)]
struct Core {
    accumulator: Accumulator<BatchDone>,
    flushes: Vec<FlushWaiter>,
    /// Every `Producer` clone is gone: deliver what is held, then stop.
    closing: bool,
}

impl Shared {
    fn core(&self) -> MutexGuard<'_, Core> {
        // A panic under the lock leaves plain data behind; carry on with it.
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn memory_capacity(&self) -> usize {
        self.config.buffer_memory.clamp(1, Semaphore::MAX_PERMITS)
    }
}

impl Producer {
    pub(crate) fn new(client: Client, config: ProducerConfig) -> Producer {
        let memory = Arc::new(Semaphore::new(
            config.buffer_memory.clamp(1, Semaphore::MAX_PERMITS),
        ));
        let shared = Arc::new(Shared {
            client: client.clone(),
            core: Mutex::new(Core {
                accumulator: Accumulator::new(accumulator_config(&config)),
                flushes: Vec::new(),
                closing: false,
            }),
            config,
            memory,
            wake: Notify::new(),
        });
        tokio::spawn(Driver::new(shared.clone()).run());
        Producer {
            handle: Arc::new(Handle { shared }),
        }
    }

    /// Queues the record; returns a handle that resolves when the batch is acknowledged.
    ///
    /// Waits only to look up the topic (first use) and for buffer room (backpressure). Fails
    /// here for an unknown topic, a partition the topic does not have, or an oversized record.
    pub async fn send(&self, record: ProducerRecord) -> Result<DeliveryFuture, ClientError> {
        let shared = &*self.handle.shared;
        let mut route = self.topic_info(&record.topic).await?;
        if let Some(p) = record.partition
            && p as usize >= route.partitions.len()
        {
            // The cached count may be stale (partitions added): look again before refusing.
            shared.client.invalidate(&record.topic);
            route = self.topic_info(&record.topic).await?;
            if p as usize >= route.partitions.len() {
                return Err(ClientError::UnknownPartition {
                    topic: record.topic,
                    partition: p,
                    partitions: route.partitions.len() as u32,
                });
            }
        }
        let partitions = route.partitions.len() as u32;
        // A topic with a partitioner plugin places records the caller did not place itself:
        // they go to the broker in batches addressed to ROUTE_BY_PARTITIONER.
        let partition = if route.partitioner && record.partition.is_none() {
            Some(sluice_proto::ROUTE_BY_PARTITIONER)
        } else {
            accumulator::choose_partition(record.partition, record.key.as_deref(), partitions)
        };
        let record_bytes = Record {
            key: record.key,
            value: record.value,
            headers: record.headers,
            timestamp: record.timestamp.unwrap_or_else(now_ms),
        };
        let size = BatchBuilder::record_size_estimate(&record_bytes);
        // Room for the batch header and the control message beside it in the frame.
        let max = shared
            .client
            .broker_max_frame_bytes()
            .saturating_sub(HEADER_LEN + 1024);
        if size > max {
            return Err(ClientError::RecordTooLarge { size, max });
        }
        let reserved = size.clamp(1, shared.memory_capacity());
        shared
            .memory
            .acquire_many(reserved as u32)
            .await
            .map_err(|_| ClientError::Closed)?
            .forget();
        let appended = shared.core().accumulator.append(
            &route.name,
            partition,
            partitions,
            &record_bytes,
            reserved,
            Instant::now,
        );
        if appended.changed {
            shared.wake.notify_one();
        }
        Ok(appended.ticket)
    }

    /// Sends and waits for the outcome.
    pub async fn send_and_wait(
        &self,
        record: ProducerRecord,
    ) -> Result<RecordMetadata, ClientError> {
        self.send(record).await?.await
    }

    /// Sends everything queued so far without waiting for linger, and waits until each of
    /// those records has its outcome. Returns the first delivery error among them, if any
    /// (each record's own [`DeliveryFuture`] reports its own outcome as well).
    pub async fn flush(&self) -> Result<(), ClientError> {
        let shared = &self.handle.shared;
        let (reply, rx) = oneshot::channel();
        {
            let mut core = shared.core();
            let upto = core.accumulator.next_seq();
            core.flushes.push(FlushWaiter {
                upto,
                first_error: None,
                reply,
            });
        }
        shared.wake.notify_one();
        rx.await.map_err(|_| ClientError::Closed)?
    }

    pub fn config(&self) -> &ProducerConfig {
        &self.handle.shared.config
    }

    /// The topic's route (partitions, and whether a partitioner plugin places its records). A
    /// lookup that fails retriably — the broker asked was just lost, a leader is moving — is
    /// tried again (backing off as retries do) until `delivery_timeout`, as Kafka's `send`
    /// blocks for metadata up to `max.block.ms`.
    async fn topic_info(&self, topic: &str) -> Result<Arc<TopicRoute>, ClientError> {
        let shared = &self.handle.shared;
        // Set at the first failure: the lookup of a known topic reads no clock.
        let mut deadline = None;
        let mut pause = shared.config.retry_backoff;
        let route = loop {
            match shared
                .client
                .topic_route(topic, shared.config.metadata_max_age)
                .await
            {
                Ok(route) => break route,
                Err(e)
                    if e.is_retriable()
                        && Instant::now() + pause
                            < *deadline.get_or_insert_with(|| {
                                Instant::now() + shared.config.delivery_timeout
                            }) =>
                {
                    debug!(topic, cause = %e, "topic lookup failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(shared.config.retry_backoff * 10);
                }
                Err(e) => return Err(e),
            }
        };
        if route.partitions.is_empty() {
            return Err(unknown_topic(topic));
        }
        Ok(route)
    }
}

fn accumulator_config(config: &ProducerConfig) -> AccumulatorConfig {
    let idempotent = config.idempotence && config.acks != Acks::None;
    let max_in_flight = if idempotent {
        config
            .max_in_flight_per_partition
            .clamp(1, MAX_IN_FLIGHT_IDEMPOTENT)
    } else {
        config.max_in_flight_per_partition.max(1)
    };
    AccumulatorConfig {
        linger: config.linger,
        max_batch_bytes: config.max_batch_bytes.max(1),
        max_in_flight,
        compression: config.compression,
        idempotent,
    }
}

pub(crate) fn unknown_topic(topic: &str) -> ClientError {
    ClientError::Broker(WireError::new(
        ErrorCode::UnknownTopic,
        format!("topic {topic:?} does not exist; create it with `sluice topics create {topic}`"),
    ))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Most batches per partition an idempotent producer has in flight: what the broker remembers
/// per producer and partition to recognise retries.
const MAX_IN_FLIGHT_IDEMPOTENT: usize = 5;

/// Most answers the driver takes in one go.
const MAX_DRAIN: usize = 256;

/// The key of the bootstrap broker's lanes (no node has this id).
const HOME: u32 = u32::MAX;

/// What came of one attempt to send a batch: the broker's answer (`None` under `Acks::None`).
/// What the broker acknowledged: a batch at a base offset, or (for a topic's partitioner)
/// each record's partition and offset.
enum Acked {
    Batch(ProduceResponse),
    Routed(Vec<sluice_proto::RoutedRecord>),
}

struct Attempt {
    batch: SealedBatch<BatchDone>,
    result: Result<Option<Acked>, ClientError>,
    /// Whether the batch went to a broker; one that did not (no leader was known) comes back
    /// after a metadata refresh, which must not be undone by treating it as a stale route.
    sent: bool,
}

#[derive(Debug)]
struct FlushWaiter {
    /// Records with a seq below this must settle first.
    upto: u64,
    first_error: Option<ClientError>,
    reply: oneshot::Sender<Result<(), ClientError>>,
}

/// The background task.
struct Driver {
    shared: Arc<Shared>,
    client: Client,
    config: ProducerConfig,
    /// Per broker (by node id; [`HOME`] for the bootstrap broker), `sender_lanes` lanes.
    lanes: HashMap<u32, Vec<Option<Lane>>>,
    attempts_tx: mpsc::UnboundedSender<Attempt>,
    attempts_rx: mpsc::UnboundedReceiver<Attempt>,
    /// The answer of the running `InitProducerId` exchange, if one runs.
    init: Option<oneshot::Receiver<Result<ProducerIdentity, ClientError>>>,
}

impl Driver {
    fn new(shared: Arc<Shared>) -> Driver {
        let (attempts_tx, attempts_rx) = mpsc::unbounded_channel();
        Driver {
            client: shared.client.clone(),
            config: shared.config.clone(),
            shared,
            lanes: HashMap::new(),
            attempts_tx,
            attempts_rx,
            init: None,
        }
    }

    async fn run(mut self) {
        let shared = self.shared.clone();
        loop {
            let now = Instant::now();
            let ready = {
                let mut core = shared.core();
                let flushing = core.closing || !core.flushes.is_empty();
                core.accumulator.poll_ready(now, flushing)
            };
            // Encoded here, outside the lock `send` appends under.
            for batch in ready {
                self.dispatch(batch);
            }
            let (settled, closed, wakeup) = {
                let mut core = shared.core();
                let settled = settle_flushes(&mut core);
                let closed = core.closing && core.accumulator.is_idle();
                if !closed && self.init.is_none() && core.accumulator.needs_producer() {
                    self.init = Some(self.start_init());
                }
                let flushing = core.closing || !core.flushes.is_empty();
                (settled, closed, core.accumulator.next_wakeup(now, flushing))
            };
            self.reply_flushes(settled);
            if closed {
                debug!("producer closed and drained");
                return;
            }
            tokio::select! {
                () = shared.wake.notified() => {}
                Some(attempt) = self.attempts_rx.recv() => {
                    let mut core = shared.core();
                    self.handle_attempt(&mut core, attempt);
                    // Take what else is queued before going round the loop again: its
                    // bookkeeping (ready batches, timers) then runs once per burst of answers.
                    for _ in 1..MAX_DRAIN {
                        match self.attempts_rx.try_recv() {
                            Ok(attempt) => self.handle_attempt(&mut core, attempt),
                            Err(_) => break,
                        }
                    }
                }
                init = async { self.init.as_mut().expect("guarded").await }, if self.init.is_some() => {
                    self.init = None;
                    self.handle_init(init.unwrap_or(Err(ClientError::Closed)));
                }
                () = sleep_until(wakeup), if wakeup.is_some() => {}
            }
        }
    }

    /// Asks the broker for a producer id in a task of its own, retrying what a retry can cure
    /// until the delivery timeout.
    fn start_init(&self) -> oneshot::Receiver<Result<ProducerIdentity, ClientError>> {
        let (tx, rx) = oneshot::channel();
        let client = self.client.clone();
        let deadline = Instant::now() + self.config.delivery_timeout;
        let mut backoff = self.config.retry_backoff.max(Duration::from_millis(1));
        let max_backoff = backoff * 10;
        tokio::spawn(async move {
            let result = loop {
                let e = match client.request(Request::InitProducerId, Bytes::new()).await {
                    Ok((ResponseBody::ProducerId { producer_id, epoch }, _)) => {
                        break Ok(ProducerIdentity { producer_id, epoch });
                    }
                    Ok((other, _)) => unexpected("ProducerId", &other),
                    Err(e) => e,
                };
                if !e.is_retriable() || Instant::now() + backoff >= deadline {
                    break Err(e);
                }
                debug!(cause = %e, "retrying InitProducerId");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(max_backoff);
            };
            let _ = tx.send(result);
        });
        rx
    }

    fn handle_init(&mut self, result: Result<ProducerIdentity, ClientError>) {
        match result {
            Ok(identity) => {
                debug!(
                    producer_id = identity.producer_id,
                    epoch = identity.epoch,
                    "idempotent producer id obtained"
                );
                self.shared.core().accumulator.set_producer(identity);
            }
            Err(e) => {
                // Every batch that waits for an id fails; a later record tries again.
                let e = ClientError::Broker(WireError::new(
                    e.wire_code().unwrap_or(ErrorCode::Internal),
                    format!(
                        "could not obtain a producer id for idempotence: {e} — check the \
                         broker, or set idempotence = false"
                    ),
                ));
                let mut core = self.shared.core();
                for batch in core.accumulator.take_unencoded() {
                    release(&self.shared, &batch);
                    finish_failed(&mut core, batch, e.clone());
                }
            }
        }
    }

    /// A live lane to `node` for `tp` (the same one for a partition while it lives, which
    /// keeps its batches in order); `None` when the node's address is not known yet.
    fn lane_for(&mut self, node: u32, tp: &TopicPartition) -> Option<&Lane> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        tp.hash(&mut h);
        let count = self.config.sender_lanes.max(1);
        let lanes = self
            .lanes
            .entry(node)
            .or_insert_with(|| (0..count).map(|_| None).collect());
        let slot = &mut lanes[(h.finish() % count as u64) as usize];
        if slot.as_ref().is_none_or(Lane::is_dead) {
            *slot = if node == HOME {
                Some(self.client.home_lane())
            } else {
                self.client.lane_to_known(node).ok().flatten()
            };
        }
        slot.as_ref()
    }

    /// Where a batch goes: its partition's leader (with the leader epoch to send), or, for a
    /// batch the topic's partitioner places, the bootstrap broker.
    fn target(&self, tp: &TopicPartition) -> Option<(u32, Option<u32>)> {
        if tp.partition == sluice_proto::ROUTE_BY_PARTITIONER {
            return Some((HOME, None));
        }
        let (leader, epoch) = self.client.cached_leader(&tp.topic, tp.partition)?;
        Some((leader, Some(epoch)))
    }

    /// No leader to send to: ask the cluster again in the background and let the batch come
    /// back through the retry path (without counting an attempt: nothing was sent).
    fn no_route(&mut self, batch: SealedBatch<BatchDone>) {
        let client = self.client.clone();
        let attempts = self.attempts_tx.clone();
        let topic = batch.tp.topic.to_string();
        let e = ClientError::Broker(WireError::new(
            ErrorCode::LeaderNotAvailable,
            format!(
                "no leader known for {}/{}; looking it up",
                batch.tp.topic, batch.tp.partition
            ),
        ));
        tokio::spawn(async move {
            if let Err(e) = client.refresh_topic(&topic).await {
                debug!(topic = %topic, cause = %e, "metadata refresh failed");
            }
            let _ = attempts.send(Attempt {
                batch,
                result: Err(e),
                sent: false,
            });
        });
    }

    /// Puts one attempt of a batch on its lane; a task waits for the answer and reports back.
    fn dispatch(&mut self, mut batch: SealedBatch<BatchDone>) {
        let payload = match batch.encode() {
            Ok(p) => p,
            Err(e) => {
                let e = ClientError::Protocol(sluice_proto::ProtoError::Compression(format!(
                    "could not encode the batch: {e}"
                )));
                // Counted in flight by `poll_ready`; its sequence, if any, is now a hole.
                give_up(&self.shared, &mut self.shared.core(), batch, e);
                return;
            }
        };
        let Some((node, leader_epoch)) = self.target(&batch.tp) else {
            self.no_route(batch);
            return;
        };
        if self.lane_for(node, &batch.tp).is_none() {
            self.no_route(batch);
            return;
        }
        batch.attempts += 1;
        let acks = self.config.acks;
        let request = Request::Produce(ProduceRequest {
            topic: batch.tp.topic.to_string(),
            partition: batch.tp.partition,
            acks,
            timeout_ms: self.config.request_timeout_ms,
            leader_epoch,
        });
        // The broker may legitimately take up to `timeout_ms` to acknowledge; give the network
        // some slack on top before calling the outcome unknown.
        let wait = Duration::from_millis(u64::from(self.config.request_timeout_ms))
            .max(self.client.config().request_timeout)
            + Duration::from_secs(5);
        let attempts = self.attempts_tx.clone();
        let lane = self.lane_for(node, &batch.tp).expect("checked above");
        if acks == Acks::None {
            let written = lane.send_only(request, payload);
            tokio::spawn(async move {
                let result = match tokio::time::timeout(wait, written).await {
                    Ok(Ok(Ok(()))) => Ok(None),
                    Ok(Ok(Err(e))) => Err(e),
                    Ok(Err(_)) => Err(ClientError::Closed),
                    Err(_) => Err(ClientError::Timeout),
                };
                let _ = attempts.send(Attempt {
                    batch,
                    result,
                    sent: true,
                });
            });
        } else {
            let answer = lane.call(request, payload);
            tokio::spawn(async move {
                let result = match tokio::time::timeout(wait, answer).await {
                    Ok(Ok(Ok((ResponseBody::Produced(r), _)))) => Ok(Some(Acked::Batch(r))),
                    Ok(Ok(Ok((ResponseBody::ProducedRouted(r), _)))) => Ok(Some(Acked::Routed(r))),
                    Ok(Ok(Ok((other, _)))) => Err(unexpected("Produced", &other)),
                    Ok(Ok(Err(e))) => Err(e),
                    Ok(Err(_)) => Err(ClientError::Closed),
                    Err(_) => Err(ClientError::Timeout),
                };
                let _ = attempts.send(Attempt {
                    batch,
                    result,
                    sent: true,
                });
            });
        }
    }

    fn handle_attempt(
        &mut self,
        core: &mut Core,
        Attempt {
            mut batch,
            result,
            sent,
        }: Attempt,
    ) {
        let e = match result {
            Ok(response) => {
                core.accumulator.handle_done(&batch.tp, batch.first_seq());
                release(&self.shared, &batch);
                let placed = match response {
                    Some(Acked::Batch(p)) => Placed::From(p.base_offset),
                    Some(Acked::Routed(placed)) => Placed::Routed(placed),
                    None => Placed::Unknown,
                };
                let timestamps = batch.records.iter().map(|r| r.timestamp).collect();
                batch.waiter.stored(
                    batch.tp.topic.clone(),
                    batch.tp.partition,
                    placed,
                    timestamps,
                );
                return;
            }
            Err(e) => e,
        };
        if sent && Client::means_stale_route(&e) {
            self.client.invalidate(&batch.tp.topic);
        }
        // Refused as out of sequence because it overtook an earlier batch that failed in
        // transit (in flight together, the earlier one's retry not yet through): not a hole in
        // the sequence. It goes back behind that one, without counting as an attempt.
        let overtook = matches!(&e, ClientError::Broker(w) if w.code == ErrorCode::OutOfOrderSequence)
            && core
                .accumulator
                .has_earlier_unsettled(&batch.tp, batch.first_seq());
        if overtook {
            batch.attempts = batch.attempts.saturating_sub(1);
        }
        let elapsed = batch.created.elapsed();
        let backoff = self.backoff(batch.attempts);
        if (overtook || e.is_retriable()) && batch.attempts <= self.config.retries {
            if elapsed + backoff < self.config.delivery_timeout {
                debug!(
                    topic = %batch.tp.topic,
                    partition = batch.tp.partition,
                    attempt = batch.attempts,
                    cause = %e,
                    "retrying batch"
                );
                batch.last_error = Some(e.to_string());
                core.accumulator
                    .handle_retry(batch, Instant::now() + backoff);
                return;
            }
            let e = ClientError::DeliveryTimeout {
                elapsed,
                attempts: batch.attempts,
                last_error: e.to_string(),
            };
            give_up(&self.shared, core, batch, e);
            return;
        }
        give_up(&self.shared, core, batch, e);
    }

    /// Backoff before retry `attempts` (1-based): doubling from `retry_backoff`, at most 10×.
    fn backoff(&self, attempts: u32) -> Duration {
        let base = self.config.retry_backoff;
        let factor = 1u32 << attempts.saturating_sub(1).min(4);
        (base * factor).min(base * 10)
    }

    /// Answers the flushes whose records all have their outcome. Under acks=0 a batch is
    /// "done" once written to its stream, which does not mean the broker has it (a process
    /// that exits now may take unsent bytes with it). A request that is answered, sent after
    /// them on the same stream, does: the broker handles a stream's requests in order. So the
    /// flush then waits for one such answer per stream.
    fn reply_flushes(&self, done: Vec<FlushWaiter>) {
        if done.is_empty() {
            return;
        }
        let barriers: Vec<_> = if self.config.acks == Acks::None {
            self.lanes
                .values()
                .flatten()
                .flatten()
                .filter(|lane| !lane.is_dead())
                .map(|lane| {
                    lane.call(
                        Request::Metadata {
                            topics: Some(Vec::new()),
                        },
                        Bytes::new(),
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        let wait = self.client.config().request_timeout;
        tokio::spawn(async move {
            for barrier in barriers {
                let _ = tokio::time::timeout(wait, barrier).await;
            }
            for f in done {
                let _ = f.reply.send(f.first_error.map_or(Ok(()), Err));
            }
        });
    }
}

/// Gives back the buffer room a batch's records held.
fn release(shared: &Shared, batch: &SealedBatch<BatchDone>) {
    let bytes: usize = batch.records.iter().map(|r| r.reserved).sum();
    shared.memory.add_permits(bytes);
}

/// A sent batch failed for good. If it carried a sequence, its partition's sequence now has a
/// hole the broker would refuse, so later batches wait for a new producer id.
fn give_up(shared: &Shared, core: &mut Core, batch: SealedBatch<BatchDone>, e: ClientError) {
    core.accumulator.handle_done(&batch.tp, batch.first_seq());
    if let Some((identity, sequence)) = batch.sequence {
        warn!(
            topic = %batch.tp.topic,
            partition = batch.tp.partition,
            producer_id = identity.producer_id,
            sequence,
            "sequenced batch failed; obtaining a new producer id for later batches"
        );
        core.accumulator.reset_producer(identity);
    }
    release(shared, &batch);
    finish_failed(core, batch, e);
}

/// Fails every record of a batch that has given up (already counted out of flight, its
/// buffer room given back).
fn finish_failed(core: &mut Core, batch: SealedBatch<BatchDone>, e: ClientError) {
    warn!(
        topic = %batch.tp.topic,
        partition = batch.tp.partition,
        records = batch.records.len(),
        cause = %e,
        "batch failed"
    );
    let first = batch.first_seq();
    for f in &mut core.flushes {
        if first < f.upto && f.first_error.is_none() {
            f.first_error = Some(e.clone());
        }
    }
    batch.waiter.failed(e);
}

/// Takes the flushes whose records all have their outcome.
fn settle_flushes(core: &mut Core) -> Vec<FlushWaiter> {
    if core.flushes.is_empty() {
        return Vec::new();
    }
    let oldest = core.accumulator.oldest_seq();
    let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut core.flushes)
        .into_iter()
        .partition(|f| oldest.is_none_or(|o| o >= f.upto));
    core.flushes = waiting;
    done
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
