//! The partition log's offset bookkeeping as a plain state machine: no redb, no threads, no clock.
//!
//! A [`PartitionLog`] knows where a partition's log starts and ends, how many bytes and batches
//! it holds, and, for every stored batch, where it ends, its largest timestamp and its size. It
//! assigns offsets (dense, never reused), answers "which batch holds offset X" and "the first
//! batch at or after time T", and computes which prefix retention removes.
//!
//! Changes are *staged* and then either committed or aborted, mirroring the write transaction
//! that carries them to disk: the writer stages a whole group of appends and retentions, commits
//! the redb transaction, and only then calls [`PartitionLog::commit_staged`]. Readers only ever
//! see the committed view, so they never observe an offset that is not yet on disk.

use std::collections::BTreeMap;

use crate::PartitionState;

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
}

impl PartitionLog {
    /// An empty partition whose first offset will be 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds a partition from its recorded bounds and its index entries, checking that the
    /// entries are exactly the dense run of batches from `log_start` to `log_end`.
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

    /// The committed view: what readers may see.
    pub fn state(&self) -> PartitionState {
        self.committed
    }

    /// The view including staged, not yet committed, changes.
    pub fn staged_state(&self) -> PartitionState {
        self.staged
    }

    /// Stages an append of a batch of `record_count` records; returns its base offset.
    pub fn stage_append(&mut self, record_count: u32, max_timestamp: i64, len: u32) -> u64 {
        debug_assert!(record_count > 0, "a batch holds at least one record");
        let base = self.staged.log_end;
        let meta = BatchMeta {
            next_offset: base + u64::from(record_count.max(1)),
            max_timestamp,
            len,
        };
        self.push(base, meta);
        self.staged.log_end = meta.next_offset;
        self.staged.size_bytes += u64::from(len);
        self.staged.batches += 1;
        base
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
    /// or the log is larger than `retention_bytes`. Whole batches only; the log end never moves.
    pub fn stage_retention(
        &mut self,
        retention_ms: Option<u64>,
        retention_bytes: Option<u64>,
        now_ms: i64,
    ) -> RetentionPlan {
        let cutoff =
            retention_ms.map(|ms| now_ms.saturating_sub(i64::try_from(ms).unwrap_or(i64::MAX)));
        self.stage_prefix_removal(|meta, size| {
            let expired = cutoff.is_some_and(|cutoff| meta.max_timestamp < cutoff);
            let too_big = retention_bytes.is_some_and(|limit| size > limit);
            expired || too_big
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
        plan
    }

    /// Whether anything is staged.
    pub fn has_staged(&self) -> bool {
        self.staged != self.committed
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
    }

    /// Forgets everything staged (after the transaction carrying it failed).
    pub fn abort_staged(&mut self) {
        let end = self.committed.log_end;
        self.batches.split_off(&end);
        let keep = self.time_index.partition_point(|&(_, base)| base < end);
        self.time_index.truncate(keep);
        self.staged = self.committed;
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
        assert_eq!(log.stage_append(3, 10, 100), 0);
        assert_eq!(log.stage_append(1, 20, 50), 3);
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
        log.stage_append(2, 5, 10);
        log.commit_staged();
        log.stage_append(2, 50, 10);
        log.abort_staged();
        assert_eq!(log.state(), log.staged_state());
        assert_eq!(log.offset_for_timestamp(6), 2);
        assert_eq!(log.stage_append(1, 7, 10), 2);
    }

    #[test]
    fn retention_by_size_and_time_removes_a_prefix_and_keeps_log_end() {
        let mut log = PartitionLog::new();
        for ts in [100, 200, 300, 400] {
            log.stage_append(2, ts, 10);
        }
        log.commit_staged();
        let mut copy = log.clone();
        let plan = copy.stage_delete_before(10);
        assert!(
            plan.to <= 10,
            "never removes a batch that ends after the offset"
        );
        let plan = log.stage_retention(None, Some(25), 0);
        assert_eq!((plan.from, plan.to, plan.removed_batches), (0, 4, 2));
        log.commit_staged();
        assert_eq!(log.state().log_start, 4);
        assert_eq!(log.state().log_end, 8);
        let plan = log.stage_retention(Some(100), None, 450);
        assert_eq!((plan.to, plan.removed_bytes), (6, 10));
        let plan = log.stage_retention(Some(0), None, 10_000);
        assert_eq!(plan.to, 8);
        log.commit_staged();
        assert_eq!(log.state().batches, 0);
        assert_eq!(log.offset_for_timestamp(0), 8);
        assert_eq!(log.stage_append(1, 0, 1), 8, "offsets are never reused");
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
        fn retain(&mut self, ms: Option<u64>, bytes: Option<u64>, now: i64) -> (u64, u64) {
            let mut removed = (0, 0);
            loop {
                let size: u64 = self.batches.iter().map(|b| u64::from(b.3)).sum();
                let Some(&(_, _, ts, len)) = self.batches.first() else {
                    break;
                };
                let expired =
                    ms.is_some_and(|ms| i128::from(ts) < i128::from(now) - i128::from(ms));
                let too_big = bytes.is_some_and(|b| size > b);
                if !(expired || too_big) {
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
        Retain(Option<u64>, Option<u64>, i64),
        Commit,
        Abort,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (1u32..5, -50i64..1000, 1u32..100).prop_map(|(c, t, l)| Op::Append(c, t, l)),
            2 => (proptest::option::of(0u64..1200), proptest::option::of(0u64..2000), 0i64..1500)
                .prop_map(|(m, b, n)| Op::Retain(m, b, n)),
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
                        let base = log.stage_append(count, ts, len);
                        prop_assert_eq!(base, staged.end);
                        staged.batches.push((base, count, ts, len));
                        staged.end += u64::from(count);
                    }
                    Op::Retain(ms, bytes, now) => {
                        let plan = log.stage_retention(ms, bytes, now);
                        let from = staged.start;
                        let removed = staged.retain(ms, bytes, now);
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
