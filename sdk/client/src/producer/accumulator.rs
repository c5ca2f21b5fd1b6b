//! The producer's pure core: per-partition batches, partition choice and send readiness.
//!
//! No I/O and no clock of its own: the driver passes `now` in, takes ready batches out with
//! [`Accumulator::poll_ready`], and reports back with [`Accumulator::handle_done`] or
//! [`Accumulator::handle_retry`]. `W` is what the driver keeps per batch to tell the records'
//! senders the outcome ([`BatchWaiter`]: a completion shared by the batch's delivery futures
//! there, nothing in the tests); each appended record gets a ticket from its batch's `W`.
//!
//! Rules:
//! - A partition has at most one open batch. It is sealed when the next record would push it
//!   past `max_batch_bytes`, or when it has lingered for `linger` and the partition may send.
//! - At most `max_in_flight` batches per partition are in flight. Records keep accumulating
//!   meanwhile, so batches grow under load instead of requests multiplying.
//! - A batch to retry goes back to the front of its partition's queue and blocks later batches
//!   of that partition until it is resent, which keeps per-partition order.
//! - Keyless records without a partition stick to one partition per topic until its batch is
//!   sealed, then move to the next (round robin): big batches, yet an even spread over time.
//! - A batch is encoded when it is first sent, not when it is sealed (stamped by
//!   [`Accumulator::poll_ready`], encoded by [`SealedBatch::encode`], outside any lock the
//!   driver holds around the accumulator). Under idempotence that is
//!   when it gets its producer id, epoch and base sequence (the partition's next sequence, which
//!   then moves on by its record count): sequences follow send order, and a batch that never
//!   left can still take a new producer id. Retries resend the encoded bytes unchanged, which
//!   is what lets the broker recognise them. Until the driver hands over a producer id
//!   ([`Accumulator::set_producer`]) no batch is encoded; [`Accumulator::reset_producer`]
//!   takes it back after a sequenced batch failed for good (its partition's sequence now has a
//!   hole the broker would refuse), and later batches wait for a fresh one.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_proto::ProtoError;
use sluice_proto::batch::{BatchBuilder, Compression, Record};
use sluice_proto::partitioner::partition_for_key;

/// How a record's partition is chosen.
pub(crate) fn choose_partition(
    explicit: Option<u32>,
    key: Option<&[u8]>,
    partitions: u32,
) -> Option<u32> {
    explicit.or_else(|| key.map(|k| partition_for_key(k, partitions)))
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct AccumulatorConfig {
    pub linger: Duration,
    pub max_batch_bytes: usize,
    pub max_in_flight: usize,
    pub compression: Compression,
    /// Stamp batches with a producer id and per-partition sequence numbers.
    pub idempotent: bool,
}

/// The producer id and epoch an idempotent producer stamps on its batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProducerIdentity {
    pub producer_id: i64,
    pub epoch: i16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct TopicPartition {
    pub topic: Arc<str>,
    pub partition: u32,
}

/// What the driver keeps per batch to tell the senders of its records the outcome.
pub(crate) trait BatchWaiter: Default {
    /// What a record's sender gets back from [`Accumulator::append`].
    type Ticket;
    /// The ticket of the record at `index` in the batch.
    fn ticket(&self, index: usize) -> Self::Ticket;
}

/// Where [`Accumulator::append`] put a record.
#[derive(Debug)]
pub(crate) struct Appended<T> {
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "the driver does not need it; the tests check placement by it"
        )
    )]
    pub partition: u32,
    pub ticket: T,
    /// A batch was opened or sealed: the driver's next wake-up or its ready batches changed.
    pub changed: bool,
}

/// One record waiting for its batch's outcome.
#[derive(Debug)]
pub(crate) struct PendingRecord {
    /// Order of arrival across the whole producer; `flush` waits on it.
    pub seq: u64,
    pub timestamp: i64,
    /// Bytes of the producer's buffer this record holds until its outcome is known.
    pub reserved: usize,
}

#[derive(Debug)]
struct OpenBatch<W> {
    builder: BatchBuilder,
    records: Vec<PendingRecord>,
    waiter: W,
    opened: Instant,
}

/// A batch's bytes: a builder until it is first sent, then encoded for good.
#[derive(Debug)]
pub(crate) enum Payload {
    /// Not yet given its producer id and sequence (it can still take a new producer id).
    Unencoded(BatchBuilder),
    /// Given them (in [`SealedBatch::sequence`]) by [`Accumulator::poll_ready`]; to be encoded
    /// with [`SealedBatch::encode`] before it is sent.
    Stamped(BatchBuilder),
    /// Kept so a retry resends exactly the same bytes.
    Encoded(Result<Bytes, Arc<ProtoError>>),
}

/// A sealed batch: closed to new records, waiting to be sent, or sent.
#[derive(Debug)]
pub(crate) struct SealedBatch<W> {
    pub tp: TopicPartition,
    pub records: Vec<PendingRecord>,
    pub waiter: W,
    /// [`Payload::Stamped`] or [`Payload::Encoded`] in a batch that
    /// [`Accumulator::poll_ready`] handed out.
    pub payload: Payload,
    /// The identity and base sequence stamped on it; `None` when not idempotent.
    pub sequence: Option<(ProducerIdentity, i32)>,
    /// When the batch's first record arrived; the delivery timeout counts from here.
    pub created: Instant,
    /// Attempts made so far.
    pub attempts: u32,
    /// A retry waits until this time (backoff).
    pub not_before: Option<Instant>,
    /// Why the last attempt failed, for the error reported when the batch gives up.
    pub last_error: Option<String>,
}

impl<W> SealedBatch<W> {
    pub(crate) fn first_seq(&self) -> u64 {
        self.records.first().map_or(u64::MAX, |r| r.seq)
    }

    /// The encoded bytes of a batch `poll_ready` handed out: encoded now with the producer id
    /// and sequence it was stamped with if this is its first send; a retry's bytes are those
    /// of its first send.
    pub(crate) fn encode(&mut self) -> Result<Bytes, Arc<ProtoError>> {
        match std::mem::replace(&mut self.payload, Payload::Encoded(Ok(Bytes::new()))) {
            Payload::Stamped(builder) => {
                let (producer_id, epoch, sequence) = self
                    .sequence
                    .map_or((-1, -1, -1), |(id, seq)| (id.producer_id, id.epoch, seq));
                let encoded = builder
                    .finish(producer_id, epoch, sequence)
                    .map(Bytes::from)
                    .map_err(Arc::new);
                self.payload = Payload::Encoded(encoded.clone());
                encoded
            }
            Payload::Encoded(encoded) => {
                self.payload = Payload::Encoded(encoded.clone());
                encoded
            }
            Payload::Unencoded(builder) => {
                self.payload = Payload::Unencoded(builder);
                Err(Arc::new(ProtoError::Malformed(
                    "batch sent before it was stamped",
                )))
            }
        }
    }
}

#[derive(Debug)]
struct PartitionQueue<W> {
    open: Option<OpenBatch<W>>,
    /// Sealed batches not yet sent, in order; a batch to retry goes back in its place
    /// (before every later batch).
    sealed: VecDeque<SealedBatch<W>>,
    /// The first record seq of each batch in flight.
    in_flight: std::collections::BTreeSet<u64>,
    /// Base sequence of the next batch encoded under the current producer id.
    next_sequence: i32,
}

impl<W> Default for PartitionQueue<W> {
    fn default() -> Self {
        PartitionQueue {
            open: None,
            sealed: VecDeque::new(),
            in_flight: std::collections::BTreeSet::new(),
            next_sequence: 0,
        }
    }
}

/// The sequence after `seq` moved on by `n` records: wraps to 0 after `i32::MAX`, as the
/// broker expects.
fn advance_sequence(seq: i32, n: usize) -> i32 {
    ((i64::from(seq) + n as i64) % (i64::from(i32::MAX) + 1)) as i32
}

#[derive(Debug, Clone, Copy)]
struct Sticky {
    current: u32,
    partitions: u32,
}

#[derive(Debug)]
pub(crate) struct Accumulator<W> {
    config: AccumulatorConfig,
    queues: HashMap<TopicPartition, PartitionQueue<W>>,
    sticky: HashMap<Arc<str>, Sticky>,
    next_seq: u64,
    /// First seq of each batch in flight (a multiset), so `oldest_seq` sees them.
    in_flight_seqs: BTreeMap<u64, usize>,
    /// Seeds the first sticky partition of each topic, so that many producers started at once
    /// do not all pile onto partition 0.
    seed: u64,
    /// Under idempotence: the id batches are stamped with; `None` until the driver has one.
    producer: Option<ProducerIdentity>,
}

impl<W: BatchWaiter> Accumulator<W> {
    pub(crate) fn new(config: AccumulatorConfig) -> Self {
        let seed = std::collections::hash_map::RandomState::new().hash_one(0u8);
        Self::with_seed(config, seed)
    }

    pub(crate) fn with_seed(config: AccumulatorConfig, seed: u64) -> Self {
        Accumulator {
            config,
            queues: HashMap::new(),
            sticky: HashMap::new(),
            next_seq: 0,
            in_flight_seqs: BTreeMap::new(),
            seed,
            producer: None,
        }
    }

    /// Hands over a (new) producer id: every partition's sequence starts again at 0.
    pub(crate) fn set_producer(&mut self, identity: ProducerIdentity) {
        self.producer = Some(identity);
        for q in self.queues.values_mut() {
            q.next_sequence = 0;
        }
    }

    /// Takes the producer id back, if it is still `identity`: a batch stamped with it failed
    /// for good, so its partition's sequence has a hole. Batches not yet encoded wait for the
    /// next id; those already encoded keep theirs.
    pub(crate) fn reset_producer(&mut self, identity: ProducerIdentity) {
        if self.producer == Some(identity) {
            self.producer = None;
        }
    }

    /// Whether a batch waits for a producer id: the driver should obtain one.
    pub(crate) fn needs_producer(&self) -> bool {
        self.config.idempotent
            && self.producer.is_none()
            && self
                .queues
                .values()
                .any(|q| q.open.is_some() || !q.sealed.is_empty())
    }

    /// Whether the front batch of `q` cannot go yet because it waits for a producer id.
    fn waits_for_producer(&self, batch: &SealedBatch<W>) -> bool {
        self.config.idempotent
            && self.producer.is_none()
            && matches!(batch.payload, Payload::Unencoded(_))
    }

    /// Takes every batch that has not been encoded yet (open ones sealed first), for the
    /// driver to fail when no producer id can be had.
    pub(crate) fn take_unencoded(&mut self) -> Vec<SealedBatch<W>> {
        let tps: Vec<TopicPartition> = self.queues.keys().cloned().collect();
        let mut out = Vec::new();
        for tp in tps {
            self.seal_open(&tp.topic, tp.partition);
            let q = self.queues.get_mut(&tp).expect("key taken from the map");
            let (unencoded, kept): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut q.sealed)
                .into_iter()
                .partition(|b| matches!(b.payload, Payload::Unencoded(_)));
            q.sealed = kept;
            out.extend(unencoded);
        }
        out
    }

    /// Seq the next record will get; records before it are what a flush now waits for.
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Adds a record. `partition` is the explicit or key-hashed partition, `None` for sticky;
    /// `partitions` is the topic's current partition count; `now` is asked only when the
    /// record opens a batch.
    pub(crate) fn append(
        &mut self,
        topic: &Arc<str>,
        partition: Option<u32>,
        partitions: u32,
        record: &Record,
        reserved: usize,
        now: impl FnOnce() -> Instant,
    ) -> Appended<W::Ticket> {
        let partitions = partitions.max(1);
        let size = BatchBuilder::record_size_estimate(record);
        let mut p = match partition {
            Some(p) => p,
            None => self.sticky_partition(topic, partitions),
        };
        let max = self.config.max_batch_bytes;
        let full = self
            .queue(topic, p)
            .open
            .as_ref()
            .is_some_and(|o| !o.builder.is_empty() && o.builder.size_bytes() + size > max);
        if full {
            self.seal_open(topic, p);
            if partition.is_none() {
                p = self.sticky_partition(topic, partitions);
            }
        }
        let compression = self.config.compression;
        let seq = self.next_seq;
        self.next_seq += 1;
        let queue = self.queue(topic, p);
        let opened = queue.open.is_none();
        // The clock is read only when a batch opens (its linger starts), not per record.
        let open = queue.open.get_or_insert_with(|| OpenBatch {
            builder: BatchBuilder::new(compression),
            records: Vec::new(),
            waiter: W::default(),
            opened: now(),
        });
        open.builder.push(record);
        let ticket = open.waiter.ticket(open.records.len());
        open.records.push(PendingRecord {
            seq,
            timestamp: record.timestamp,
            reserved,
        });
        let sealed = open.builder.size_bytes() >= self.config.max_batch_bytes;
        if sealed {
            self.seal_open(topic, p);
        }
        Appended {
            partition: p,
            ticket,
            changed: full || opened || sealed,
        }
    }

    fn queue(&mut self, topic: &Arc<str>, partition: u32) -> &mut PartitionQueue<W> {
        self.queues
            .entry(TopicPartition {
                topic: topic.clone(),
                partition,
            })
            .or_default()
    }

    fn sticky_partition(&mut self, topic: &Arc<str>, partitions: u32) -> u32 {
        let seed = self.seed;
        let s = self.sticky.entry(topic.clone()).or_insert_with(|| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (seed, &**topic).hash(&mut h);
            Sticky {
                current: (h.finish() % u64::from(partitions)) as u32,
                partitions,
            }
        });
        if s.partitions != partitions {
            s.partitions = partitions;
            s.current %= partitions;
        }
        s.current
    }

    /// Seals the open batch of a partition into its send queue, and moves the topic's sticky
    /// partition on if it was this one.
    fn seal_open(&mut self, topic: &Arc<str>, partition: u32) {
        let tp = TopicPartition {
            topic: topic.clone(),
            partition,
        };
        let Some(queue) = self.queues.get_mut(&tp) else {
            return;
        };
        let Some(open) = queue.open.take() else {
            return;
        };
        queue.sealed.push_back(SealedBatch {
            tp,
            records: open.records,
            waiter: open.waiter,
            payload: Payload::Unencoded(open.builder),
            sequence: None,
            created: open.opened,
            attempts: 0,
            not_before: None,
            last_error: None,
        });
        if let Some(s) = self.sticky.get_mut(topic)
            && s.current == partition
        {
            s.current = (partition + 1) % s.partitions;
        }
    }

    /// Takes every batch that may be sent now and counts it in flight. `flushing` ignores linger.
    pub(crate) fn poll_ready(&mut self, now: Instant, flushing: bool) -> Vec<SealedBatch<W>> {
        let linger = self.config.linger;
        let max_in_flight = self.config.max_in_flight;
        let tps: Vec<TopicPartition> = self.queues.keys().cloned().collect();
        let mut ready = Vec::new();
        for tp in tps {
            loop {
                let q = self.queues.get_mut(&tp).expect("key taken from the map");
                if q.in_flight.len() >= max_in_flight {
                    break;
                }
                let waits = q.sealed.front().is_some_and(|b| {
                    self.config.idempotent
                        && self.producer.is_none()
                        && matches!(b.payload, Payload::Unencoded(_))
                });
                if waits {
                    break;
                }
                let q = self.queues.get_mut(&tp).expect("key taken from the map");
                match q.sealed.front() {
                    Some(b) if b.not_before.is_none_or(|t| t <= now) => {
                        let mut b = q.sealed.pop_front().expect("front exists");
                        // Stamped on first send (and encoded by the driver); a retry keeps
                        // its bytes.
                        let payload =
                            std::mem::replace(&mut b.payload, Payload::Encoded(Ok(Bytes::new())));
                        b.payload = match payload {
                            Payload::Unencoded(builder) => {
                                // Routed batches are re-encoded by the broker per partition, so
                                // they carry no producer sequence.
                                let sequenced = self.config.idempotent
                                    && tp.partition != sluice_proto::ROUTE_BY_PARTITIONER;
                                if let Some(id) = self.producer.filter(|_| sequenced) {
                                    let seq = q.next_sequence;
                                    q.next_sequence = advance_sequence(seq, builder.len());
                                    b.sequence = Some((id, seq));
                                }
                                Payload::Stamped(builder)
                            }
                            stamped_or_encoded => stamped_or_encoded,
                        };
                        q.in_flight.insert(b.first_seq());
                        *self.in_flight_seqs.entry(b.first_seq()).or_default() += 1;
                        ready.push(b);
                    }
                    Some(_) => break,
                    None if q
                        .open
                        .as_ref()
                        .is_some_and(|o| flushing || o.opened + linger <= now) =>
                    {
                        self.seal_open(&tp.topic, tp.partition);
                    }
                    None => break,
                }
            }
        }
        ready
    }

    /// When `poll_ready` may next have something: a linger or a backoff running out.
    pub(crate) fn next_wakeup(&self, now: Instant, flushing: bool) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        for q in self.queues.values() {
            if q.in_flight.len() >= self.config.max_in_flight {
                continue;
            }
            let at = match (q.sealed.front(), &q.open) {
                (Some(b), _) if self.waits_for_producer(b) => continue,
                (Some(b), _) => b.not_before.unwrap_or(now),
                (None, Some(_)) if flushing => now,
                (None, Some(o)) => o.opened + self.config.linger,
                (None, None) => continue,
            };
            next = Some(next.map_or(at, |n| n.min(at)));
        }
        next
    }

    /// A batch got its final outcome (delivered or failed for good).
    pub(crate) fn handle_done(&mut self, tp: &TopicPartition, first_seq: u64) {
        if let Some(q) = self.queues.get_mut(tp) {
            q.in_flight.remove(&first_seq);
        }
        if let Some(n) = self.in_flight_seqs.get_mut(&first_seq) {
            *n -= 1;
            if *n == 0 {
                self.in_flight_seqs.remove(&first_seq);
            }
        }
    }

    /// A batch failed and will be retried, before any later batch of its partition (and
    /// after any earlier one also waiting for its retry: failures of batches in flight
    /// together may be reported in any order, and the broker takes a producer's batches
    /// only in sequence order).
    pub(crate) fn handle_retry(&mut self, mut batch: SealedBatch<W>, not_before: Instant) {
        let tp = batch.tp.clone();
        let first = batch.first_seq();
        self.handle_done(&tp, first);
        batch.not_before = Some(not_before);
        let sealed = &mut self.queues.entry(tp).or_default().sealed;
        let at = sealed.partition_point(|b| b.first_seq() < first);
        sealed.insert(at, batch);
    }

    /// Whether a batch of `tp` before the one starting at record `first_seq` is still in
    /// flight or waiting to be sent again: an `OutOfOrderSequence` for this one then only
    /// says it overtook that one (which failed in transit), not that its sequence is lost.
    pub(crate) fn has_earlier_unsettled(&self, tp: &TopicPartition, first_seq: u64) -> bool {
        self.queues.get(tp).is_some_and(|q| {
            q.in_flight.range(..first_seq).next().is_some()
                || q.sealed.front().is_some_and(|b| b.first_seq() < first_seq)
        })
    }

    /// Seq of the oldest record not yet settled (open, queued or in flight).
    pub(crate) fn oldest_seq(&self) -> Option<u64> {
        let mut oldest = self.in_flight_seqs.keys().next().copied();
        for q in self.queues.values() {
            let first = q.sealed.iter().map(|b| b.first_seq()).chain(
                q.open
                    .iter()
                    .filter_map(|o| o.records.first().map(|r| r.seq)),
            );
            for s in first {
                oldest = Some(oldest.map_or(s, |o| o.min(s)));
            }
        }
        oldest
    }

    /// True when nothing is open, queued or in flight.
    pub(crate) fn is_idle(&self) -> bool {
        self.oldest_seq().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl BatchWaiter for () {
        type Ticket = usize;
        fn ticket(&self, index: usize) -> usize {
            index
        }
    }
    use sluice_proto::batch::{decode_records, split_batches};

    fn config(max_batch_bytes: usize, max_in_flight: usize) -> AccumulatorConfig {
        AccumulatorConfig {
            linger: Duration::from_millis(5),
            max_batch_bytes,
            max_in_flight,
            compression: Compression::None,
            idempotent: false,
        }
    }

    fn record(value: &str, ts: i64) -> Record {
        Record {
            key: None,
            value: Some(Bytes::copy_from_slice(value.as_bytes())),
            headers: vec![],
            timestamp: ts,
        }
    }

    fn topic() -> Arc<str> {
        Arc::from("t")
    }

    #[test]
    fn keyed_records_follow_the_key_hash_and_explicit_wins() {
        let p = choose_partition(None, Some(b"user-1"), 8).unwrap();
        assert_eq!(p, partition_for_key(b"user-1", 8));
        assert_eq!(choose_partition(Some(3), Some(b"user-1"), 8), Some(3));
        assert_eq!(choose_partition(None, None, 8), None);
    }

    #[test]
    fn waits_for_linger_then_sends() {
        let mut acc = Accumulator::<()>::with_seed(config(1 << 20, 1), 0);
        let t0 = Instant::now();
        acc.append(&topic(), Some(0), 4, &record("a", 1), 1, || t0);
        assert!(acc.poll_ready(t0, false).is_empty());
        assert_eq!(
            acc.next_wakeup(t0, false),
            Some(t0 + Duration::from_millis(5))
        );
        let ready = acc.poll_ready(t0 + Duration::from_millis(5), false);
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].records.len(), 1);
        // A flush ignores linger.
        acc.append(&topic(), Some(1), 4, &record("b", 1), 1, || t0);
        assert_eq!(acc.poll_ready(t0, true).len(), 1);
    }

    #[test]
    fn full_batch_is_ready_at_once_and_batches_grow_while_one_is_in_flight() {
        // A one-byte record encodes to 7 bytes and is estimated at 17; with the 57-byte header,
        // a limit of 85 fits exactly two.
        let mut acc = Accumulator::<()>::with_seed(config(85, 1), 0);
        let t0 = Instant::now();
        for i in 0..2 {
            acc.append(&topic(), Some(0), 1, &record("x", i), 1, || t0);
        }
        acc.append(&topic(), Some(0), 1, &record("x", 2), 1, || t0);
        let first = acc.poll_ready(t0, false);
        assert_eq!(
            first.len(),
            1,
            "the full batch goes without waiting for linger"
        );
        assert_eq!(first[0].records.len(), 2);
        // In flight: the open batch keeps growing and is not sent even after linger.
        let later = t0 + Duration::from_secs(1);
        acc.append(&topic(), Some(0), 1, &record("x", 3), 1, || later);
        assert!(acc.poll_ready(later, false).is_empty());
        assert_eq!(acc.next_wakeup(later, false), None);
        acc.handle_done(&first[0].tp, first[0].first_seq());
        let second = acc.poll_ready(later, false);
        assert_eq!(second.len(), 1);
        let seqs: Vec<u64> = second[0].records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![2, 3]);
    }

    #[test]
    fn sticky_partitioning_moves_on_when_a_batch_is_sealed() {
        let mut acc = Accumulator::<()>::with_seed(config(85, 5), 7);
        let t0 = Instant::now();
        let mut chosen = Vec::new();
        for i in 0..8 {
            chosen.push(
                acc.append(&topic(), None, 3, &record("x", i), 1, || t0)
                    .partition,
            );
        }
        // Two records per batch, then the next partition, round robin.
        let first = chosen[0];
        let expect: Vec<u32> = (0..8).map(|i| (first + i / 2) % 3).collect();
        assert_eq!(chosen, expect);
        // Linger-sealing also moves the sticky partition on.
        let later = t0 + Duration::from_secs(1);
        let before = acc
            .append(&topic(), None, 3, &record("y", 9), 1, || later)
            .partition;
        acc.poll_ready(later + Duration::from_secs(1), false);
        let after = acc
            .append(&topic(), None, 3, &record("y", 10), 1, || later)
            .partition;
        assert_eq!(after, (before + 1) % 3);
    }

    #[test]
    fn retry_goes_first_and_blocks_later_batches_until_backoff_ends() {
        let mut acc = Accumulator::<()>::with_seed(config(1 << 20, 1), 0);
        let t0 = Instant::now();
        acc.append(&topic(), Some(0), 1, &record("a", 0), 1, || t0);
        let mut sent = acc.poll_ready(t0, true);
        let batch = sent.pop().unwrap();
        acc.append(&topic(), Some(0), 1, &record("b", 0), 1, || t0);
        let backoff = t0 + Duration::from_millis(100);
        acc.handle_retry(batch, backoff);
        assert!(acc.poll_ready(t0, true).is_empty(), "blocked by backoff");
        assert_eq!(acc.oldest_seq(), Some(0));
        assert_eq!(acc.next_wakeup(t0, true), Some(backoff));
        let again = acc.poll_ready(backoff, true);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].records[0].seq, 0, "the retried batch goes first");
        acc.handle_done(&again[0].tp, again[0].first_seq());
        let next = acc.poll_ready(backoff, true);
        assert_eq!(next[0].records[0].seq, 1);
        acc.handle_done(&next[0].tp, next[0].first_seq());
        assert!(acc.is_idle());
    }

    #[test]
    fn retries_reported_out_of_order_are_resent_in_order() {
        let mut acc = Accumulator::<()>::with_seed(config(1, 3), 0);
        let t0 = Instant::now();
        for _ in 0..3u64 {
            acc.append(&topic(), Some(0), 1, &record("x", 0), 1, || t0);
        }
        let mut sent = acc.poll_ready(t0, true);
        assert_eq!(sent.len(), 3, "three one-record batches in flight");
        let (third, second, first) = (
            sent.pop().unwrap(),
            sent.pop().unwrap(),
            sent.pop().unwrap(),
        );
        let tp = first.tp.clone();
        assert!(acc.has_earlier_unsettled(&tp, third.first_seq()));
        assert!(!acc.has_earlier_unsettled(&tp, first.first_seq()));
        // The failures come back first, third, second.
        acc.handle_retry(first, t0);
        acc.handle_retry(third, t0);
        assert!(
            acc.has_earlier_unsettled(&tp, 2),
            "the first waits to be resent"
        );
        acc.handle_retry(second, t0);
        let again: Vec<u64> = acc
            .poll_ready(t0, true)
            .iter()
            .map(|b| b.first_seq())
            .collect();
        assert_eq!(again, [0, 1, 2], "resent in sequence order");
    }

    #[test]
    fn sealed_batch_decodes_to_the_records_appended() {
        for compression in [Compression::None, Compression::Lz4, Compression::Zstd] {
            let mut acc = Accumulator::<()>::with_seed(
                AccumulatorConfig {
                    compression,
                    ..config(1 << 20, 1)
                },
                0,
            );
            let t0 = Instant::now();
            let mut sent = Vec::new();
            for i in 0..50 {
                let mut r = record(&format!("value-{i}"), 1_000 + i);
                r.key = Some(Bytes::from(format!("k{i}")));
                r.headers.push(sluice_proto::Header {
                    key: "h".into(),
                    value: Some(Bytes::from_static(b"v")),
                });
                acc.append(&topic(), Some(0), 1, &r, 1, || t0);
                sent.push(r);
            }
            let mut batch = acc.poll_ready(t0, true).pop().unwrap();
            let payload = batch.encode().unwrap();
            let mut stored = payload.to_vec();
            sluice_proto::batch::assign_offset(&mut stored, 100, 0);
            let batches = split_batches(Bytes::from(stored)).unwrap();
            let records = decode_records(&batches[0].0, &batches[0].1).unwrap();
            assert_eq!(records.len(), 50);
            for (i, (got, want)) in records.iter().zip(&sent).enumerate() {
                assert_eq!(got.offset, 100 + i as u64);
                assert_eq!(got.timestamp, want.timestamp);
                assert_eq!(got.key, want.key);
                assert_eq!(got.value, want.value);
                assert_eq!(got.headers, want.headers);
            }
        }
    }

    #[test]
    fn in_flight_limit_is_per_partition() {
        let mut acc = Accumulator::<()>::with_seed(config(1 << 20, 2), 0);
        let t0 = Instant::now();
        for _ in 0..3 {
            acc.append(&topic(), Some(0), 2, &record("a", 0), 1, || t0);
            acc.append(&topic(), Some(1), 2, &record("a", 0), 1, || t0);
            // One record per batch.
            acc.seal_open(&topic(), 0);
            acc.seal_open(&topic(), 1);
        }
        let ready = acc.poll_ready(t0, false);
        assert_eq!(ready.len(), 4, "two per partition");
        assert_eq!(acc.oldest_seq(), Some(0));
    }
}
