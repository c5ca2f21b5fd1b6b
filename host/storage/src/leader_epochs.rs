//! A partition's leader-epoch index as a plain state machine: for every leader epoch in the
//! log, the offset where its first batch starts.
//!
//! Replication needs it to find where two replicas' logs diverge: a follower names the epoch of
//! its last batch, the leader answers where that epoch ends in its own log (the start of the
//! next epoch, or its log end), and the follower truncates there. The rules are those of
//! `sluice_replication::EpochCache` (and Kafka's leader-epoch cache), so the broker can build one
//! from [`LeaderEpochs::entries`]:
//!
//! - a batch whose epoch is newer than the latest entry's starts a new entry at its base offset;
//!   a batch of the latest epoch, or of an older one, changes nothing (a log's epochs only grow;
//!   an older one is a late write of a deposed leader and counts as part of the latest epoch);
//! - truncation to `end` drops the entries that start at or after `end`;
//! - retention, moving the log start to `start`, drops the entries wholly before it and moves
//!   the one covering `start` up to it. When retention empties the log, the latest entry stays,
//!   moved to the log end, so the log still knows its latest epoch; the next batch of a newer
//!   epoch replaces it (an entry that covers no batch is worth nothing once a newer one starts
//!   at the same offset).
//!
//! Entries are strictly increasing in both epoch and start offset. In a non-empty log the first
//! entry starts at the log start and every entry at a batch's base offset inside the log; an
//! empty log has at most the one entry at its log end.

/// The leader epochs of one partition's log. See the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaderEpochs {
    /// `(epoch, start_offset)`, both strictly increasing.
    entries: Vec<(u32, u64)>,
}

impl LeaderEpochs {
    /// No epochs: an empty log, or one whose epochs are still to be read.
    pub fn new() -> Self {
        Self::default()
    }

    /// Entries as stored, without any check (see [`LeaderEpochs::check`]).
    pub fn from_entries(entries: Vec<(u32, u64)>) -> Self {
        LeaderEpochs { entries }
    }

    /// `(epoch, start_offset)` pairs, oldest first.
    pub fn entries(&self) -> &[(u32, u64)] {
        &self.entries
    }

    /// The newest epoch and where it starts.
    pub fn latest(&self) -> Option<(u32, u64)> {
        self.entries.last().copied()
    }

    /// The epoch of the entry covering `offset`: the latest starting at or before it.
    pub fn epoch_at(&self, offset: u64) -> Option<u32> {
        let covering = self.entries.partition_point(|&(_, start)| start <= offset);
        covering.checked_sub(1).map(|i| self.entries[i].0)
    }

    /// A batch of leader epoch `epoch` was appended at `base_offset` (the log end). Returns
    /// whether the entries changed.
    pub fn assign(&mut self, epoch: u32, base_offset: u64) -> bool {
        match self.entries.last_mut() {
            Some((latest, _)) if epoch <= *latest => false,
            // The latest entry starts at the log end, so it covers no batch (retention emptied
            // the log): the newer epoch takes its place.
            Some((latest, start)) if *start >= base_offset => {
                *latest = epoch;
                *start = base_offset;
                true
            }
            _ => {
                self.entries.push((epoch, base_offset));
                true
            }
        }
    }

    /// The log was truncated to end at `log_end`: entries starting at or after it go. Returns
    /// whether the entries changed.
    pub fn truncate_to(&mut self, log_end: u64) -> bool {
        let keep = self.entries.partition_point(|&(_, start)| start < log_end);
        let changed = keep < self.entries.len();
        self.entries.truncate(keep);
        changed
    }

    /// Retention moved the log start to `log_start`: the entry covering it now starts there
    /// and the ones before it go. Returns whether the entries changed.
    pub fn trim_before(&mut self, log_start: u64) -> bool {
        let covering = self
            .entries
            .partition_point(|&(_, start)| start <= log_start);
        let Some(first) = covering.checked_sub(1) else {
            return false;
        };
        let changed = first > 0 || self.entries[first].1 != log_start;
        self.entries.drain(..first);
        self.entries[0].1 = log_start;
        changed
    }

    /// Checks the invariants of the module docs against a log `[log_start, log_end)` whose
    /// batches start where `is_batch_start` says. Returns what is wrong, and at which offset.
    pub fn check(
        &self,
        log_start: u64,
        log_end: u64,
        is_batch_start: impl Fn(u64) -> bool,
    ) -> Result<(), (u64, String)> {
        for pair in self.entries.windows(2) {
            let ((e0, s0), (e1, s1)) = (pair[0], pair[1]);
            if e1 <= e0 || s1 <= s0 {
                return Err((
                    s1,
                    format!(
                        "leader epoch {e1} at offset {s1} does not follow epoch {e0} at offset \
                         {s0}: both must grow"
                    ),
                ));
            }
        }
        if log_start == log_end {
            return match self.entries.as_slice() {
                [] => Ok(()),
                [(_, start)] if *start == log_end => Ok(()),
                _ => Err((
                    log_end,
                    format!(
                        "the log is empty at offset {log_end} but holds leader epochs {:?}",
                        self.entries
                    ),
                )),
            };
        }
        match self.entries.first() {
            None => {
                return Err((
                    log_start,
                    "the log holds batches but no leader epoch".to_string(),
                ));
            }
            Some(&(epoch, start)) if start != log_start => {
                return Err((
                    start,
                    format!(
                        "the first leader epoch {epoch} starts at offset {start}, not at the log \
                         start {log_start}"
                    ),
                ));
            }
            Some(_) => {}
        }
        for &(epoch, start) in &self.entries {
            if start >= log_end || !is_batch_start(start) {
                return Err((
                    start,
                    format!(
                        "leader epoch {epoch} starts at offset {start}, where no batch of the log \
                         [{log_start}, {log_end}) starts"
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epochs(entries: &[(u32, u64)]) -> LeaderEpochs {
        LeaderEpochs::from_entries(entries.to_vec())
    }

    #[test]
    fn only_a_newer_epoch_starts_an_entry() {
        let mut e = LeaderEpochs::new();
        assert!(e.assign(2, 0));
        assert!(!e.assign(2, 3), "same epoch");
        assert!(!e.assign(1, 5), "an older epoch counts as the latest");
        assert!(e.assign(4, 7));
        assert_eq!(e.entries(), &[(2, 0), (4, 7)]);
        assert_eq!(e.latest(), Some((4, 7)));
    }

    #[test]
    fn truncation_drops_entries_at_and_after_the_point() {
        let mut e = epochs(&[(1, 0), (3, 10), (4, 20)]);
        assert!(!e.truncate_to(25));
        assert!(e.truncate_to(20));
        assert_eq!(e.entries(), &[(1, 0), (3, 10)]);
        assert!(!e.truncate_to(11), "the batch at 10 stays");
        assert_eq!(e.entries(), &[(1, 0), (3, 10)]);
        assert!(e.truncate_to(10));
        assert_eq!(e.entries(), &[(1, 0)]);
        assert!(e.truncate_to(0));
        assert_eq!(e.entries(), &[]);
    }

    #[test]
    fn retention_moves_the_covering_entry_to_the_log_start() {
        let mut e = epochs(&[(1, 0), (3, 10), (4, 20)]);
        assert!(!e.trim_before(0));
        assert!(e.trim_before(12));
        assert_eq!(e.entries(), &[(3, 12), (4, 20)]);
        assert!(e.trim_before(20));
        assert_eq!(e.entries(), &[(4, 20)]);
        // Retention emptied the log (start = end = 30): the latest epoch stays, at the end.
        assert!(e.trim_before(30));
        assert_eq!(e.entries(), &[(4, 30)]);
        assert!(e.check(30, 30, |_| false).is_ok());
        // The next batch of a newer epoch takes that entry's place; one of the same epoch
        // keeps it.
        let mut same = e.clone();
        assert!(!same.assign(4, 30));
        assert_eq!(same.entries(), &[(4, 30)]);
        assert!(e.assign(6, 30));
        assert_eq!(e.entries(), &[(6, 30)]);
    }

    #[test]
    fn check_names_what_is_wrong() {
        let starts = [0u64, 4, 10];
        let batch = |o: u64| starts.contains(&o);
        assert!(epochs(&[(1, 0), (2, 10)]).check(0, 12, batch).is_ok());
        assert!(epochs(&[]).check(5, 5, batch).is_ok());
        let err = |e: LeaderEpochs, start, end| e.check(start, end, batch).unwrap_err().1;
        assert!(err(epochs(&[]), 0, 12).contains("no leader epoch"));
        assert!(err(epochs(&[(1, 4)]), 0, 12).contains("not at the log start"));
        assert!(err(epochs(&[(1, 0), (2, 5)]), 0, 12).contains("where no batch"));
        assert!(err(epochs(&[(1, 0), (2, 12)]), 0, 12).contains("where no batch"));
        assert!(err(epochs(&[(2, 0), (1, 4)]), 0, 12).contains("must grow"));
        assert!(err(epochs(&[(2, 3)]), 5, 5).contains("empty"));
    }
}
