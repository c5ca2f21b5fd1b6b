//! Idempotent producers' sequence bookkeeping for one partition, as a plain state machine.
//!
//! An idempotent producer stamps each batch with its producer id, epoch and the sequence number
//! of the batch's first record (`base_sequence`); sequences count records per partition, from 0,
//! and wrap to 0 after `i32::MAX` (as in Kafka). For every producer id seen on a partition,
//! [`ProducerState`] keeps its epoch and the last [`TRACKED_BATCHES`] batches it appended:
//! `(first_seq, last_seq, base_offset, record_count)`. [`ProducerState::check`] then classifies
//! the next batch:
//!
//! - the next sequence (`last_seq + 1` of the newest batch) — [`SequenceCheck::Accept`];
//! - exactly one of the tracked batches again (a retry whose answer was lost) —
//!   [`SequenceCheck::Duplicate`] with the offset it was stored at; nothing is written again;
//! - any other sequence — [`SequenceCheck::OutOfOrder`] with the sequence expected;
//! - an epoch older than the producer's — [`SequenceCheck::Fenced`]. A newer epoch starts over
//!   and must begin at sequence 0.
//!
//! A producer id the partition does not know must start at sequence 0 — unless the partition
//! has lost batches from its start (retention, a truncation): the producer's state may have
//! gone with them, and refusing it would wedge the producer for good, so there it is accepted
//! at any sequence. (Accepting any sequence everywhere let a producer's later batch, sent to
//! the partition's new leader while its first batch was still being refused by the old one,
//! start the producer's state past that first batch, whose retry was then out of order for
//! good; refused as out of order, the later batch instead waits for the first, as the SDK does
//! with a batch that overtook an earlier one.) Batches without a producer id
//! (`producer_id < 0`) are never checked.
//!
//! The store's writer thread runs the check where it assigns offsets, so check and append are
//! one step. The state is rebuilt on startup from the `batch_index` table, which carries each
//! batch's producer id, epoch and base sequence, so no batch body is read.

use std::collections::{HashMap, VecDeque};

/// How many of a producer's most recent batches are remembered per partition; a retry of an
/// older batch is refused as out of order. Matches the producer's limit of 5 batches in flight
/// per partition, as in Kafka.
pub const TRACKED_BATCHES: usize = 5;

/// What the partition remembers about one appended batch of an idempotent producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequencedBatch {
    pub first_seq: i32,
    pub last_seq: i32,
    pub base_offset: u64,
    pub record_count: u32,
}

/// The idempotence fields of a batch header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerStamp {
    /// `-1` (any negative value): not idempotent.
    pub producer_id: i64,
    pub epoch: i16,
    pub base_sequence: i32,
}

impl ProducerStamp {
    /// The stamp of a batch from a producer that is not idempotent.
    pub const NONE: ProducerStamp = ProducerStamp {
        producer_id: -1,
        epoch: -1,
        base_sequence: -1,
    };

    pub fn is_idempotent(&self) -> bool {
        self.producer_id >= 0
    }
}

/// The verdict on a batch about to be appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    /// Append it.
    Accept,
    /// Already stored at `base_offset`: answer with that offset and write nothing.
    Duplicate { base_offset: u64 },
    /// A gap or a stale retry: refuse; `expected` is the sequence the partition waits for.
    OutOfOrder { expected: i32 },
    /// The producer id has moved on to `current_epoch`; this producer instance is stale.
    Fenced { current_epoch: i16 },
}

#[derive(Debug, Clone, Default)]
struct ProducerEntry {
    epoch: i16,
    /// Oldest first; at most [`TRACKED_BATCHES`].
    batches: VecDeque<SequencedBatch>,
}

/// Every idempotent producer's recent batches on one partition. See the module docs.
#[derive(Debug, Clone, Default)]
pub struct ProducerState {
    producers: HashMap<i64, ProducerEntry>,
}

/// The sequence after `seq` moved on by `n` records, wrapping to 0 after `i32::MAX`.
pub fn advance_sequence(seq: i32, n: u32) -> i32 {
    ((i64::from(seq) + i64::from(n)) % (i64::from(i32::MAX) + 1)) as i32
}

impl ProducerState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of producer ids tracked.
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// Classifies a batch of `record_count` records stamped `stamp`. `trimmed`: the partition
    /// has lost batches from its start (its log start is past 0). Changes nothing.
    pub fn check(&self, stamp: ProducerStamp, record_count: u32, trimmed: bool) -> SequenceCheck {
        if !stamp.is_idempotent() {
            return SequenceCheck::Accept;
        }
        let Some(entry) = self.producers.get(&stamp.producer_id) else {
            return if trimmed || stamp.base_sequence == 0 {
                SequenceCheck::Accept
            } else {
                SequenceCheck::OutOfOrder { expected: 0 }
            };
        };
        if stamp.epoch < entry.epoch {
            return SequenceCheck::Fenced {
                current_epoch: entry.epoch,
            };
        }
        if stamp.epoch > entry.epoch {
            return if stamp.base_sequence == 0 {
                SequenceCheck::Accept
            } else {
                SequenceCheck::OutOfOrder { expected: 0 }
            };
        }
        let last_seq = advance_sequence(stamp.base_sequence, record_count.max(1) - 1);
        if let Some(b) = entry
            .batches
            .iter()
            .find(|b| b.first_seq == stamp.base_sequence && b.last_seq == last_seq)
        {
            return SequenceCheck::Duplicate {
                base_offset: b.base_offset,
            };
        }
        let expected = entry
            .batches
            .back()
            .map_or(0, |b| advance_sequence(b.last_seq, 1));
        if stamp.base_sequence == expected {
            SequenceCheck::Accept
        } else {
            SequenceCheck::OutOfOrder { expected }
        }
    }

    /// Records an appended batch (one that `check` accepted, or one read back on startup).
    /// A newer epoch replaces what was known about the producer id.
    pub fn record(&mut self, stamp: ProducerStamp, record_count: u32, base_offset: u64) {
        if !stamp.is_idempotent() {
            return;
        }
        let entry = self.producers.entry(stamp.producer_id).or_default();
        if stamp.epoch != entry.epoch {
            entry.epoch = stamp.epoch;
            entry.batches.clear();
        }
        entry.batches.push_back(SequencedBatch {
            first_seq: stamp.base_sequence,
            last_seq: advance_sequence(stamp.base_sequence, record_count.max(1) - 1),
            base_offset,
            record_count,
        });
        while entry.batches.len() > TRACKED_BATCHES {
            entry.batches.pop_front();
        }
    }

    /// Forgets batches below `log_start` (removed by retention), and producers left with none,
    /// so a running broker knows exactly what a restarted one would rebuild from the log.
    pub fn retain_from(&mut self, log_start: u64) {
        self.producers.retain(|_, entry| {
            entry.batches.retain(|b| b.base_offset >= log_start);
            !entry.batches.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stamp(producer_id: i64, epoch: i16, base_sequence: i32) -> ProducerStamp {
        ProducerStamp {
            producer_id,
            epoch,
            base_sequence,
        }
    }

    #[test]
    fn next_sequence_is_accepted_and_retries_are_duplicates() {
        let mut s = ProducerState::new();
        assert_eq!(s.check(stamp(7, 0, 0), 3, false), SequenceCheck::Accept);
        s.record(stamp(7, 0, 0), 3, 100);
        assert_eq!(s.check(stamp(7, 0, 3), 2, false), SequenceCheck::Accept);
        s.record(stamp(7, 0, 3), 2, 103);
        assert_eq!(
            s.check(stamp(7, 0, 0), 3, false),
            SequenceCheck::Duplicate { base_offset: 100 }
        );
        assert_eq!(
            s.check(stamp(7, 0, 3), 2, false),
            SequenceCheck::Duplicate { base_offset: 103 }
        );
        assert_eq!(
            s.check(stamp(7, 0, 6), 1, false),
            SequenceCheck::OutOfOrder { expected: 5 },
            "a gap is refused"
        );
        assert_eq!(
            s.check(stamp(7, 0, 3), 1, false),
            SequenceCheck::OutOfOrder { expected: 5 },
            "same start, different length: not the batch stored"
        );
    }

    #[test]
    fn unknown_producers_start_at_zero_unless_the_log_was_trimmed() {
        let mut s = ProducerState::new();
        assert_eq!(
            s.check(stamp(1, 0, 42), 1, false),
            SequenceCheck::OutOfOrder { expected: 0 },
            "a new producer's first batch on an untrimmed partition starts at 0"
        );
        assert_eq!(s.check(stamp(1, 0, 0), 1, false), SequenceCheck::Accept);
        // Its state may have gone with batches retention deleted: any sequence.
        assert_eq!(s.check(stamp(1, 0, 42), 1, true), SequenceCheck::Accept);
        s.record(stamp(1, 0, 42), 1, 0);
        assert_eq!(
            s.check(ProducerStamp::NONE, 5, false),
            SequenceCheck::Accept
        );
        s.record(ProducerStamp::NONE, 5, 1);
        assert_eq!(s.len(), 1, "plain batches leave no state");
        assert_eq!(
            s.check(stamp(1, 0, 44), 1, false),
            SequenceCheck::OutOfOrder { expected: 43 }
        );
    }

    #[test]
    fn epochs_fence_older_instances_and_restart_sequences() {
        let mut s = ProducerState::new();
        s.record(stamp(3, 2, 0), 1, 0);
        assert_eq!(
            s.check(stamp(3, 1, 1), 1, false),
            SequenceCheck::Fenced { current_epoch: 2 }
        );
        assert_eq!(
            s.check(stamp(3, 3, 5), 1, false),
            SequenceCheck::OutOfOrder { expected: 0 }
        );
        assert_eq!(s.check(stamp(3, 3, 0), 1, false), SequenceCheck::Accept);
        s.record(stamp(3, 3, 0), 1, 1);
        assert_eq!(
            s.check(stamp(3, 2, 0), 1, false),
            SequenceCheck::Fenced { current_epoch: 3 }
        );
    }

    #[test]
    fn only_the_last_batches_are_remembered() {
        let mut s = ProducerState::new();
        for i in 0..(TRACKED_BATCHES as i32 + 2) {
            s.record(stamp(1, 0, i), 1, i as u64);
        }
        assert_eq!(
            s.check(stamp(1, 0, 0), 1, false),
            SequenceCheck::OutOfOrder { expected: 7 }
        );
        assert_eq!(
            s.check(stamp(1, 0, 2), 1, false),
            SequenceCheck::Duplicate { base_offset: 2 }
        );
    }

    #[test]
    fn sequences_wrap_after_i32_max() {
        assert_eq!(advance_sequence(i32::MAX, 1), 0);
        assert_eq!(advance_sequence(i32::MAX - 1, 3), 1);
        let mut s = ProducerState::new();
        s.record(stamp(1, 0, i32::MAX - 1), 2, 0);
        assert_eq!(s.check(stamp(1, 0, 0), 1, false), SequenceCheck::Accept);
        assert_eq!(
            s.check(stamp(1, 0, i32::MAX - 1), 2, false),
            SequenceCheck::Duplicate { base_offset: 0 }
        );
    }

    #[test]
    fn retention_forgets_producers_whose_batches_are_gone() {
        let mut s = ProducerState::new();
        s.record(stamp(1, 0, 0), 2, 0);
        s.record(stamp(2, 0, 0), 2, 2);
        s.record(stamp(1, 0, 2), 2, 4);
        s.retain_from(3);
        assert_eq!(s.len(), 1);
        assert_eq!(
            s.check(stamp(2, 0, 9), 1, true),
            SequenceCheck::Accept,
            "unknown again"
        );
        assert_eq!(
            s.check(stamp(1, 0, 0), 2, false),
            SequenceCheck::OutOfOrder { expected: 4 },
            "its removed batch is no longer a duplicate"
        );
        assert_eq!(
            s.check(stamp(1, 0, 2), 2, false),
            SequenceCheck::Duplicate { base_offset: 4 }
        );
    }

    /// One producer sending batches 0..n, then any mix of resends of sent batches and fresh
    /// or skipped ones: the log (a Vec) gets each sequence exactly once, in order, and every
    /// duplicate is answered with the offset its first copy got.
    #[derive(Debug, Clone)]
    enum Op {
        /// Send the next batch of this many records.
        Next(u32),
        /// Resend the i-th most recent batch sent (0 = newest).
        Resend(usize),
        /// Send a batch that skips `gap` sequences.
        Skip(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1u32..5).prop_map(Op::Next),
            3 => (0usize..8).prop_map(Op::Resend),
            1 => (1u32..4).prop_map(Op::Skip),
        ]
    }

    proptest! {
        #[test]
        fn agrees_with_a_log_model(ops in proptest::collection::vec(op(), 1..60)) {
            let mut s = ProducerState::new();
            // The log: (first_seq, count, base_offset) of each appended batch.
            let mut log: Vec<(i32, u32, u64)> = Vec::new();
            let mut next_offset = 0u64;
            let mut next_seq = 0i32;
            let mut append = |s: &mut ProducerState, log: &mut Vec<(i32, u32, u64)>, seq: i32, n: u32| {
                match s.check(stamp(9, 0, seq), n, false) {
                    SequenceCheck::Accept => {
                        s.record(stamp(9, 0, seq), n, next_offset);
                        log.push((seq, n, next_offset));
                        next_offset += u64::from(n);
                        Ok(next_offset - u64::from(n))
                    }
                    SequenceCheck::Duplicate { base_offset } => Ok(base_offset),
                    other => Err(other),
                }
            };
            for op in ops {
                match op {
                    Op::Next(n) => {
                        let at = append(&mut s, &mut log, next_seq, n);
                        prop_assert!(at.is_ok());
                        next_seq += n as i32;
                    }
                    Op::Resend(back) => {
                        if back >= log.len() { continue; }
                        let (seq, n, base) = log[log.len() - 1 - back];
                        let got = append(&mut s, &mut log, seq, n);
                        if back < TRACKED_BATCHES {
                            prop_assert_eq!(got, Ok(base));
                        } else {
                            prop_assert_eq!(got, Err(SequenceCheck::OutOfOrder { expected: next_seq }));
                        }
                    }
                    Op::Skip(gap) => {
                        // A gap is refused, a new producer's first batch included (the
                        // partition was never trimmed): it must start at 0.
                        let got = append(&mut s, &mut log, next_seq + gap as i32, 1);
                        prop_assert_eq!(got, Err(SequenceCheck::OutOfOrder { expected: next_seq }));
                    }
                }
            }
            // Every sequence appended once, dense, in order.
            let mut expect_seq = log.first().map_or(0, |b| b.0);
            let mut expect_off = 0;
            for &(seq, n, base) in &log {
                prop_assert_eq!((seq, base), (expect_seq, expect_off));
                expect_seq += n as i32;
                expect_off += u64::from(n);
            }
        }
    }
}
