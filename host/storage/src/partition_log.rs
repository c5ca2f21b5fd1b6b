//! The partition log's offset bookkeeping as a plain state machine: no redb, no threads, no clock.
//!
//! A [`PartitionLog`] knows where a partition's log starts and ends, how many bytes and batches
//! it holds, and, for every stored batch, where it ends, its largest timestamp and its size. It
//! assigns offsets (dense, never reused), answers "which batch holds offset X" and "the first
//! batch at or after time T", and computes which prefix retention removes. It also keeps the
//! partition's [`LeaderEpochs`], changed by appends and retention like the rest.
//!
//! Appends come in two kinds: a leader's ([`PartitionLog::stage_append`]) gets the next offset
//! here; a replica's ([`PartitionLog::stage_append_at`]) already has its offset from the leader
//! and is taken only at exactly the log end. Truncation is not staged here: the store rebuilds
//! the partition from its tables after a truncation has committed
//! ([`PartitionLog::restore`], [`PartitionLog::restore_epochs`]).
//!
//! Changes are *staged* and then either committed or aborted, mirroring the write transaction
//! that carries them to disk: the writer stages a whole group of appends and retentions, commits
//! the redb transaction, and only then calls [`PartitionLog::commit_staged`]. Readers only ever
//! see the committed view, so they never observe an offset that is not yet on disk.

use std::collections::BTreeMap;

use crate::PartitionState;
use crate::leader_epochs::LeaderEpochs;

/// What the index keeps about one stored batch, keyed by its base offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMeta {
    /// Offset after the batch's last record: the next batch's base offset.
    pub next_offset: u64,
    /// The largest record timestamp in the batch (ms since the Unix epoch).
    pub max_timestamp: i64,
    /// Length of the stored batch in bytes, header included.
    pub len: u32,
}

/// The front of the log that a staged retention removes: batches with base offsets in
/// `[from, to)`. `to` is the new log start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPlan {
    pub from: u64,
    pub to: u64,
    pub removed_batches: u64,
    pub removed_bytes: u64,
}

/// The index of a partition that disagrees with its recorded bounds (found on startup).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InconsistentIndex {
    pub base_offset: u64,
    pub reason: String,
}

/// A batch refused by [`PartitionLog::stage_append`] or [`PartitionLog::stage_append_at`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendRefused {
    /// A replica's batch does not start at the (staged) log end, where it had to start.
    NotAtLogEnd { log_end: u64 },
    /// Its leader epoch is older than the log's latest: it comes from (or was decided by) a
    /// leader that was replaced before this log's last batches were written.
    OlderEpoch { epoch: u32, latest: u32 },
}

/// One partition's offsets and batch index. See the module docs.
#[derive(Debug, Clone, Default)]
pub struct PartitionLog {
    committed: PartitionState,
    staged: PartitionState,
    /// Every batch of the committed view and of the staged view: from `committed.log_start`
    /// (retention only moves the start forward) up to `staged.log_end`.
    batches: BTreeMap<u64, BatchMeta>,
    /// Prefix maxima of `max_timestamp` over `batches` from `committed.log_start`, as
    /// `(max_timestamp, base_offset)`, strictly increasing in both. The first batch whose
    /// `max_timestamp >= ts` always sets a new maximum, so a binary search here answers
    /// timestamp lookups without scanning the index.
    time_index: Vec<(i64, u64)>,
    /// Leader epochs of the committed view.
    epochs: LeaderEpochs,
    /// Leader epochs of the staged view; equal to `epochs` unless a staged change moved them.
    staged_epochs: LeaderEpochs,
}

impl PartitionLog {
    /// An empty partition whose first offset will be 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds a partition from its recorded bounds and its index entries, checking that the
    /// entries are exactly the dense run of batches from `log_start` to `log_end`. Its leader
    /// epochs are empty until [`PartitionLog::restore_epochs`] sets them.
    pub fn restore(
        log_start: u64,
        log_end: u64,
        entries: impl IntoIterator<Item = (u64, BatchMeta)>,
    ) -> Result<Self, InconsistentIndex> {
        let mut log = PartitionLog {
            committed: PartitionState {
                log_start,
                log_end: log_start,
                size_bytes: 0,
                batches: 0,
            },
            ..Self::default()
        };
        for (base, meta) in entries {
            if base != log.committed.log_end {
                return Err(InconsistentIndex {
                    base_offset: base,
                    reason: format!(
                        "expected a batch at offset {}, found one at {base}",
                        log.committed.log_end
                    ),
                });
            }
            if meta.next_offset <= base {
                return Err(InconsistentIndex {
                    base_offset: base,
                    reason: format!("batch ends at {} before it starts", meta.next_offset),
                });
            }
            log.push(base, meta);
            log.committed.log_end = meta.next_offset;
            log.committed.size_bytes += u64::from(meta.len);
            log.committed.batches += 1;
        }
        if log.committed.log_end != log_end {
            return Err(InconsistentIndex {
                base_offset: log.committed.log_end,
                reason: format!(
                    "the index ends at offset {} but the partition records log end {log_end}",
                    log.committed.log_end
                ),
            });
        }
        log.staged = log.committed;
        Ok(log)
    }

    /// Sets the leader epochs of a restored partition, after checking them against its batches
    /// (see [`LeaderEpochs::check`]). On an error nothing changes.
    pub fn restore_epochs(&mut self, epochs: LeaderEpochs) -> Result<(), InconsistentIndex> {
        let state = self.committed;
        epochs
            .check(state.log_start, state.log_end, |offset| {
                self.batches.contains_key(&offset)
            })
            .map_err(|(base_offset, reason)| InconsistentIndex {
                base_offset,
                reason,
            })?;
        self.staged_epochs = epochs.clone();
        self.epochs = epochs;
        Ok(())
    }

    /// The committed view's leader epochs: `(epoch, start_offset)`, oldest first.
    pub fn epochs(&self) -> &[(u32, u64)] {
        self.epochs.entries()
    }

    /// The staged view's leader epochs.
    pub fn staged_epochs(&self) -> &LeaderEpochs {
        &self.staged_epochs
    }

    /// Whether staged changes moved the leader epochs (so their rows must be written).
    pub fn epochs_staged(&self) -> bool {
        self.staged_epochs != self.epochs
    }

    /// The committed view: what readers may see.
    pub fn state(&self) -> PartitionState {
        self.committed
    }

    /// The view including staged, not yet committed, changes.
    pub fn staged_state(&self) -> PartitionState {
        self.staged
    }

    /// Stages a leader's append of a batch of `record_count` records, of leader epoch
    /// `leader_epoch`; returns its base offset, the (staged) log end.
    ///
    /// Refused when `leader_epoch` is older than the log's latest: the append was decided by
    /// a leader that has since been replaced (this node may have followed the new leader and
    /// stored its batches meanwhile), and placing it after them would put an old leader's
    /// batch into a newer epoch's part of the log.
    pub fn stage_append(
        &mut self,
        leader_epoch: u32,
        record_count: u32,
        max_timestamp: i64,
        len: u32,
    ) -> Result<u64, AppendRefused> {
        self.check_epoch(leader_epoch)?;
        let base = self.staged.log_end;
        self.push_staged(base, leader_epoch, record_count, max_timestamp, len);
        Ok(base)
    }

    fn check_epoch(&self, leader_epoch: u32) -> Result<(), AppendRefused> {
        match self.staged_epochs.latest() {
            Some((latest, _)) if leader_epoch < latest => Err(AppendRefused::OlderEpoch {
                epoch: leader_epoch,
                latest,
            }),
            _ => Ok(()),
        }
    }

    /// The leader epoch of the batch holding `offset` in the committed view, if it holds it.
    pub fn epoch_at(&self, offset: u64) -> Option<u32> {
        if offset < self.committed.log_start || offset >= self.committed.log_end {
            return None;
        }
        self.epochs.epoch_at(offset)
    }

    /// Stages a replica's append of a batch the leader already placed at `base_offset`. It is
    /// taken only if it starts exactly at the (staged) log end; otherwise nothing changes and
    /// the error says where the log ends.
    pub fn stage_append_at(
        &mut self,
        base_offset: u64,
        leader_epoch: u32,
        record_count: u32,
        max_timestamp: i64,
        len: u32,
    ) -> Result<(), AppendRefused> {
        if base_offset != self.staged.log_end {
            return Err(AppendRefused::NotAtLogEnd {
                log_end: self.staged.log_end,
            });
        }
        self.check_epoch(leader_epoch)?;
        self.push_staged(base_offset, leader_epoch, record_count, max_timestamp, len);
        Ok(())
    }

    fn push_staged(
        &mut self,
        base: u64,
        leader_epoch: u32,
        record_count: u32,
        max_timestamp: i64,
        len: u32,
    ) {
        debug_assert!(record_count > 0, "a batch holds at least one record");
        let meta = BatchMeta {
            next_offset: base + u64::from(record_count.max(1)),
            max_timestamp,
            len,
        };
        self.push(base, meta);
        self.staged.log_end = meta.next_offset;
        self.staged.size_bytes += u64::from(len);
        self.staged.batches += 1;
        self.staged_epochs.assign(leader_epoch, base);
    }

    fn push(&mut self, base: u64, meta: BatchMeta) {
        self.batches.insert(base, meta);
        if self
            .time_index
            .last()
            .is_none_or(|&(max, _)| meta.max_timestamp > max)
        {
            self.time_index.push((meta.max_timestamp, base));
        }
    }

    /// Stages retention on the staged view: removes batches from the front while the first
    /// remaining batch is older than `now_ms - retention_ms` (its `max_timestamp` is below that)
    /// or the log is larger than `retention_bytes`, and it ends at or before `max_offset` (when
    /// given: the high watermark, so retention never removes what followers may still need or
    /// consumers cannot see yet). Whole batches only; the log end never moves.
    pub fn stage_retention(
        &mut self,
        retention_ms: Option<u64>,
        retention_bytes: Option<u64>,
        now_ms: i64,
        max_offset: Option<u64>,
    ) -> RetentionPlan {
        let cutoff =
            retention_ms.map(|ms| now_ms.saturating_sub(i64::try_from(ms).unwrap_or(i64::MAX)));
        self.stage_prefix_removal(|meta, size| {
            let expired = cutoff.is_some_and(|cutoff| meta.max_timestamp < cutoff);
            let too_big = retention_bytes.is_some_and(|limit| size > limit);
            let below_bound = max_offset.is_none_or(|bound| meta.next_offset <= bound);
            (expired || too_big) && below_bound
        })
    }

    /// Stages the removal of every batch that ends at or before `offset` (whole batches only):
    /// what compaction does once the live state has been rewritten after them.
    pub fn stage_delete_before(&mut self, offset: u64) -> RetentionPlan {
        self.stage_prefix_removal(|meta, _| meta.next_offset <= offset)
    }

    /// Removes batches from the front while `remove(batch, bytes still held)` says so.
    fn stage_prefix_removal(&mut self, remove: impl Fn(&BatchMeta, u64) -> bool) -> RetentionPlan {
        let from = self.staged.log_start;
        let mut plan = RetentionPlan {
            from,
            to: from,
            removed_batches: 0,
            removed_bytes: 0,
        };
        let mut size = self.staged.size_bytes;
        for (_, meta) in self.batches.range(from..self.staged.log_end) {
            if !remove(meta, size) {
                break;
            }
            size -= u64::from(meta.len);
            plan.to = meta.next_offset;
            plan.removed_batches += 1;
            plan.removed_bytes += u64::from(meta.len);
        }
        self.staged.log_start = plan.to;
        self.staged.size_bytes = size;
        self.staged.batches -= plan.removed_batches;
        if plan.removed_batches > 0 {
            self.staged_epochs.trim_before(plan.to);
        }
        plan
    }

    /// Where [`truncation`](crate::Store::truncate) at `offset` cuts the staged log: the log end
    /// when `offset` is at or after it (nothing to remove); `offset` itself when it is at or
    /// before the log start (everything goes, and the log restarts there); otherwise the base
    /// offset of the batch holding `offset`, since batches are removed whole.
    pub fn truncation_point(&self, offset: u64) -> u64 {
        let state = self.staged;
        if offset >= state.log_end {
            state.log_end
        } else if offset <= state.log_start {
            offset
        } else {
            self.batches
                .range(..=offset)
                .next_back()
                .map_or(state.log_start, |(&base, _)| base)
        }
    }

    /// Whether anything is staged.
    pub fn has_staged(&self) -> bool {
        self.staged != self.committed || self.epochs_staged()
    }

    /// Makes the staged view the committed one (after the transaction carrying it committed).
    pub fn commit_staged(&mut self) {
        if self.staged.log_start > self.committed.log_start {
            // Retention: drop the removed prefix and rebuild the prefix maxima, which depend on
            // where the log starts.
            self.batches = self.batches.split_off(&self.staged.log_start);
            self.time_index.clear();
            let mut max = None;
            for (&base, meta) in &self.batches {
                if max.is_none_or(|max| meta.max_timestamp > max) {
                    max = Some(meta.max_timestamp);
                    self.time_index.push((meta.max_timestamp, base));
                }
            }
        }
        self.committed = self.staged;
        if self.epochs_staged() {
            self.epochs.clone_from(&self.staged_epochs);
        }
    }

    /// Forgets everything staged (after the transaction carrying it failed).
    pub fn abort_staged(&mut self) {
        let end = self.committed.log_end;
        self.batches.split_off(&end);
        let keep = self.time_index.partition_point(|&(_, base)| base < end);
        self.time_index.truncate(keep);
        self.staged = self.committed;
        if self.epochs_staged() {
            self.staged_epochs.clone_from(&self.epochs);
        }
    }

    /// The committed batch holding `offset`, as `(base_offset, meta)`.
    pub fn batch_containing(&self, offset: u64) -> Option<(u64, BatchMeta)> {
        if offset < self.committed.log_start || offset >= self.committed.log_end {
            return None;
        }
        let (&base, &meta) = self.batches.range(..=offset).next_back()?;
        (meta.next_offset > offset).then_some((base, meta))
    }

    /// Base offset of the first committed batch whose `max_timestamp >= ts_ms`; the log end if
    /// there is none.
    pub fn offset_for_timestamp(&self, ts_ms: i64) -> u64 {
        let i = self.time_index.partition_point(|&(max, _)| max < ts_ms);
        match self.time_index.get(i) {
            Some(&(_, base)) if base < self.committed.log_end => base,
            _ => self.committed.log_end,
        }
    }

    /// The committed batches in offset order.
    pub fn batches(&self) -> impl Iterator<Item = (u64, BatchMeta)> + '_ {
        self.batches
            .range(self.committed.log_start..self.committed.log_end)
            .map(|(&base, &meta)| (base, meta))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn offsets_are_dense_and_follow_record_counts() {
        let mut log = PartitionLog::new();
        assert_eq!(log.stage_append(0, 3, 10, 100).unwrap(), 0);
        assert_eq!(log.stage_append(0, 1, 20, 50).unwrap(), 3);
        assert_eq!(log.state().log_end, 0, "nothing visible before commit");
        log.commit_staged();
        assert_eq!(
            log.state(),
            PartitionState {
                log_start: 0,
                log_end: 4,
                size_bytes: 150,
                batches: 2
            }
        );
        assert_eq!(log.batch_containing(2).map(|(b, _)| b), Some(0));
        assert_eq!(log.batch_containing(3).map(|(b, _)| b), Some(3));
        assert_eq!(log.batch_containing(4), None);
    }

    #[test]
    fn abort_forgets_staged_appends_and_reuses_nothing_committed() {
        let mut log = PartitionLog::new();
        log.stage_append(0, 2, 5, 10).unwrap();
        log.commit_staged();
        log.stage_append(0, 2, 50, 10).unwrap();
        log.abort_staged();
        assert_eq!(log.state(), log.staged_state());
        assert_eq!(log.offset_for_timestamp(6), 2);
        assert_eq!(log.stage_append(0, 1, 7, 10).unwrap(), 2);
    }

    #[test]
    fn retention_by_size_and_time_removes_a_prefix_and_keeps_log_end() {
        let mut log = PartitionLog::new();
        for ts in [100, 200, 300, 400] {
            log.stage_append(0, 2, ts, 10).unwrap();
        }
        log.commit_staged();
        let mut copy = log.clone();
        let plan = copy.stage_delete_before(10);
        assert!(
            plan.to <= 10,
            "never removes a batch that ends after the offset"
        );
        let plan = log.stage_retention(None, Some(25), 0, None);
        assert_eq!((plan.from, plan.to, plan.removed_batches), (0, 4, 2));
        log.commit_staged();
        assert_eq!(log.state().log_start, 4);
        assert_eq!(log.state().log_end, 8);
        let plan = log.stage_retention(Some(100), None, 450, None);
        assert_eq!((plan.to, plan.removed_bytes), (6, 10));
        let plan = log.stage_retention(Some(0), None, 10_000, None);
        assert_eq!(plan.to, 8);
        log.commit_staged();
        assert_eq!(log.state().batches, 0);
        assert_eq!(log.offset_for_timestamp(0), 8);
        assert_eq!(
            log.stage_append(0, 1, 0, 1).unwrap(),
            8,
            "offsets are never reused"
        );
    }

    #[test]
    fn restore_checks_density() {
        let meta = |next| BatchMeta {
            next_offset: next,
            max_timestamp: 0,
            len: 1,
        };
        assert!(PartitionLog::restore(5, 9, [(5, meta(7)), (7, meta(9))]).is_ok());
        assert!(PartitionLog::restore(5, 9, [(5, meta(7)), (8, meta(9))]).is_err());
        assert!(PartitionLog::restore(5, 10, [(5, meta(7)), (7, meta(9))]).is_err());
        assert!(PartitionLog::restore(3, 3, []).is_ok());
    }

    #[test]
    fn retention_never_removes_a_batch_ending_past_the_bound() {
        let mut log = PartitionLog::new();
        for _ in 0..4 {
            log.stage_append(0, 2, 100, 10).unwrap();
        }
        log.commit_staged();
        // Everything is expired, but the bound (a high watermark of 5) keeps [4, 6) and on.
        let plan = log.stage_retention(Some(0), None, 10_000, Some(5));
        assert_eq!((plan.to, plan.removed_batches), (4, 2));
        let plan = log.stage_retention(Some(0), None, 10_000, Some(3));
        assert_eq!(plan.removed_batches, 0, "nothing more ends at or before 3");
        let plan = log.stage_retention(Some(0), None, 10_000, Some(8));
        assert_eq!((plan.to, plan.removed_batches), (8, 2));
        log.commit_staged();
        assert_eq!(log.state().batches, 0);
    }

    #[test]
    fn a_replica_batch_of_an_epoch_older_than_the_logs_latest_is_refused() {
        let mut log = PartitionLog::new();
        log.stage_append(5, 3, 0, 10).unwrap();
        assert_eq!(
            log.stage_append_at(3, 4, 2, 0, 10),
            Err(AppendRefused::OlderEpoch {
                epoch: 4,
                latest: 5
            })
        );
        assert_eq!(log.staged_state().log_end, 3);
        assert_eq!(log.stage_append_at(3, 5, 2, 0, 10), Ok(()));
        assert_eq!(log.stage_append_at(5, 7, 1, 0, 10), Ok(()));
        assert_eq!(log.staged_epochs().entries(), &[(5, 0), (7, 5)]);
    }

    #[test]
    fn a_replica_append_is_taken_only_at_the_log_end() {
        let mut log = PartitionLog::new();
        log.stage_append(1, 3, 0, 10).unwrap();
        assert_eq!(
            log.stage_append_at(2, 1, 1, 0, 10),
            Err(AppendRefused::NotAtLogEnd { log_end: 3 })
        );
        assert_eq!(
            log.stage_append_at(4, 1, 1, 0, 10),
            Err(AppendRefused::NotAtLogEnd { log_end: 3 })
        );
        assert_eq!(
            log.staged_state().batches,
            1,
            "a refused batch changes nothing"
        );
        assert_eq!(log.stage_append_at(3, 2, 2, 0, 10), Ok(()));
        assert_eq!(log.stage_append(2, 1, 0, 10).unwrap(), 5);
        log.commit_staged();
        assert_eq!(log.state().log_end, 6);
        assert_eq!(log.epochs(), &[(1, 0), (2, 3)]);
    }

    #[test]
    fn leader_epochs_are_staged_committed_aborted_and_trimmed_with_the_log() {
        let mut log = PartitionLog::new();
        log.stage_append(1, 2, 0, 10).unwrap();
        log.stage_append(1, 2, 0, 10).unwrap();
        assert!(log.epochs_staged());
        assert_eq!(log.epochs(), &[], "nothing committed yet");
        log.commit_staged();
        assert!(!log.epochs_staged());
        log.stage_append(3, 2, 0, 10).unwrap();
        assert!(log.has_staged());
        log.abort_staged();
        assert_eq!(log.epochs(), &[(1, 0)]);
        assert_eq!(log.staged_epochs().entries(), &[(1, 0)]);
        log.stage_append(3, 2, 0, 10).unwrap();
        log.commit_staged();
        assert_eq!(log.epochs(), &[(1, 0), (3, 4)]);
        // Retention of the first batch moves epoch 1's start to the new log start.
        log.stage_delete_before(2);
        log.commit_staged();
        assert_eq!(log.epochs(), &[(1, 2), (3, 4)]);
        // Emptied by retention: the latest epoch stays, at the log end.
        log.stage_delete_before(6);
        log.commit_staged();
        assert_eq!(log.state().batches, 0);
        assert_eq!(log.epochs(), &[(3, 6)]);
    }

    #[test]
    fn truncation_cuts_at_whole_batches() {
        let mut log = PartitionLog::new();
        for _ in 0..3 {
            log.stage_append(0, 3, 0, 10).unwrap(); // [0, 3), [3, 6), [6, 9)
        }
        log.commit_staged();
        log.stage_delete_before(3); // log start 3
        log.commit_staged();
        assert_eq!(
            log.truncation_point(9),
            9,
            "at the log end: nothing to remove"
        );
        assert_eq!(log.truncation_point(20), 9);
        assert_eq!(log.truncation_point(7), 6, "inside a batch: from its base");
        assert_eq!(log.truncation_point(6), 6);
        assert_eq!(log.truncation_point(4), 3);
        assert_eq!(log.truncation_point(3), 3, "at the log start: everything");
        assert_eq!(
            log.truncation_point(1),
            1,
            "below the log start: restarts there"
        );
    }

    #[test]
    fn restored_epochs_are_checked_against_the_batches() {
        let meta = |next| BatchMeta {
            next_offset: next,
            max_timestamp: 0,
            len: 1,
        };
        let mut log = PartitionLog::restore(5, 9, [(5, meta(7)), (7, meta(9))]).unwrap();
        let bad = log
            .restore_epochs(LeaderEpochs::from_entries(vec![(1, 5), (2, 8)]))
            .unwrap_err();
        assert_eq!(bad.base_offset, 8);
        assert_eq!(log.epochs(), &[], "a refused set changes nothing");
        log.restore_epochs(LeaderEpochs::from_entries(vec![(1, 5), (2, 7)]))
            .unwrap();
        assert_eq!(log.epochs(), &[(1, 5), (2, 7)]);
        assert!(!log.has_staged());
    }

    /// The model: a plain vector of committed batches and one of staged batches.
    #[derive(Debug, Clone, Default)]
    struct Model {
        start: u64,
        end: u64,
        batches: Vec<(u64, u32, i64, u32)>, // base, count, max_ts, len
    }

    impl Model {
        fn state(&self) -> PartitionState {
            PartitionState {
                log_start: self.start,
                log_end: self.end,
                size_bytes: self.batches.iter().map(|b| u64::from(b.3)).sum(),
                batches: self.batches.len() as u64,
            }
        }
        fn retain(
            &mut self,
            ms: Option<u64>,
            bytes: Option<u64>,
            now: i64,
            bound: Option<u64>,
        ) -> (u64, u64) {
            let mut removed = (0, 0);
            loop {
                let size: u64 = self.batches.iter().map(|b| u64::from(b.3)).sum();
                let Some(&(base, count, ts, len)) = self.batches.first() else {
                    break;
                };
                let expired =
                    ms.is_some_and(|ms| i128::from(ts) < i128::from(now) - i128::from(ms));
                let too_big = bytes.is_some_and(|b| size > b);
                let below = bound.is_none_or(|b| base + u64::from(count) <= b);
                if !((expired || too_big) && below) {
                    break;
                }
                self.batches.remove(0);
                removed.0 += 1;
                removed.1 += u64::from(len);
            }
            self.start = self.batches.first().map_or(self.end, |b| b.0);
            removed
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Append(u32, i64, u32),
        Retain(Option<u64>, Option<u64>, i64, Option<u64>),
        Commit,
        Abort,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (1u32..5, -50i64..1000, 1u32..100).prop_map(|(c, t, l)| Op::Append(c, t, l)),
            2 => (proptest::option::of(0u64..1200), proptest::option::of(0u64..2000), 0i64..1500,
                  proptest::option::of(0u64..200))
                .prop_map(|(m, b, n, bound)| Op::Retain(m, b, n, bound)),
            3 => Just(Op::Commit),
            1 => Just(Op::Abort),
        ]
    }

    proptest! {
        #[test]
        fn agrees_with_a_vec_model(ops in proptest::collection::vec(op(), 1..80),
                                   probes in proptest::collection::vec(-60i64..1100, 8)) {
            let mut log = PartitionLog::new();
            let mut committed = Model::default();
            let mut staged = Model::default();
            for op in ops {
                match op {
                    Op::Append(count, ts, len) => {
                        let base = log.stage_append(0, count, ts, len).unwrap();
                        prop_assert_eq!(base, staged.end);
                        staged.batches.push((base, count, ts, len));
                        staged.end += u64::from(count);
                    }
                    Op::Retain(ms, bytes, now, bound) => {
                        let plan = log.stage_retention(ms, bytes, now, bound);
                        let from = staged.start;
                        let removed = staged.retain(ms, bytes, now, bound);
                        prop_assert_eq!((plan.from, plan.to), (from, staged.start));
                        prop_assert_eq!((plan.removed_batches, plan.removed_bytes), removed);
                    }
                    Op::Commit => {
                        log.commit_staged();
                        committed = staged.clone();
                    }
                    Op::Abort => {
                        log.abort_staged();
                        staged = committed.clone();
                    }
                }
                prop_assert_eq!(log.state(), committed.state());
                prop_assert_eq!(log.staged_state(), staged.state());
                let listed: Vec<u64> = log.batches().map(|(b, _)| b).collect();
                let expected: Vec<u64> = committed.batches.iter().map(|b| b.0).collect();
                prop_assert_eq!(listed, expected);
                for &ts in &probes {
                    let want = committed.batches.iter().find(|b| b.2 >= ts).map_or(committed.end, |b| b.0);
                    prop_assert_eq!(log.offset_for_timestamp(ts), want);
                }
                for offset in committed.start.saturating_sub(1)..committed.end + 1 {
                    let want = committed.batches.iter()
                        .find(|b| b.0 <= offset && offset < b.0 + u64::from(b.1))
                        .map(|b| b.0);
                    prop_assert_eq!(log.batch_containing(offset).map(|(b, _)| b), want);
                }
            }
        }
    }
}
