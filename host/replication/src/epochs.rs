//! A replica's leader-epoch cache: for every leader epoch present in its log, the offset of that
//! epoch's first batch.

use crate::{Epoch, Offset};

/// Leader epochs of a log and their start offsets, epochs strictly increasing and start offsets
/// non-decreasing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochCache {
    entries: Vec<(Epoch, Offset)>,
}

impl EpochCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that a batch of `epoch` starts at `offset` (appended at the log end). A batch of
    /// the latest epoch changes nothing; a newer epoch starts a new entry. An older epoch than
    /// the latest is a caller bug (a log only moves to newer epochs) and is ignored.
    pub fn assign(&mut self, epoch: Epoch, offset: Offset) {
        match self.entries.last() {
            Some(&(last, _)) if epoch <= last => {}
            _ => self.entries.push((epoch, offset)),
        }
    }

    /// The newest epoch and its start offset.
    pub fn latest(&self) -> Option<(Epoch, Offset)> {
        self.entries.last().copied()
    }

    /// The epoch of the batch holding `offset`, if any entry covers it.
    pub fn epoch_at(&self, offset: Offset) -> Option<Epoch> {
        self.entries
            .iter()
            .rev()
            .find(|(_, start)| *start <= offset)
            .map(|(e, _)| *e)
    }

    /// Where `epoch` ends in this log whose end is `log_end`: the largest epoch `<= epoch` held
    /// here and the start offset of the next epoch after it (or `log_end` for the newest).
    /// `None` when every epoch held is newer than `epoch` (or there is none): nothing of it here.
    /// (Kafka's OffsetsForLeaderEpoch.)
    pub fn end_offset_for(&self, epoch: Epoch, log_end: Offset) -> Option<(Epoch, Offset)> {
        let i = self.entries.iter().rposition(|(e, _)| *e <= epoch)?;
        let end = self
            .entries
            .get(i + 1)
            .map_or(log_end, |(_, next_start)| *next_start);
        Some((self.entries[i].0, end))
    }

    /// The log was truncated to `log_end`: epochs starting at or after it are gone.
    pub fn truncate_to(&mut self, log_end: Offset) {
        self.entries.retain(|(_, start)| *start < log_end);
    }

    /// Retention removed the log before `log_start`: the epoch covering it now starts there.
    pub fn trim_before(&mut self, log_start: Offset) {
        let keep_from = self
            .entries
            .iter()
            .rposition(|(_, start)| *start <= log_start)
            .unwrap_or(0);
        self.entries.drain(..keep_from);
        if let Some(first) = self.entries.first_mut()
            && first.1 < log_start
        {
            first.1 = log_start;
        }
    }

    pub fn entries(&self) -> &[(Epoch, Offset)] {
        &self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(entries: &[(Epoch, Offset)]) -> EpochCache {
        let mut c = EpochCache::new();
        for &(e, o) in entries {
            c.assign(e, o);
        }
        c
    }

    #[test]
    fn end_offsets_follow_kafka_semantics() {
        let c = cache(&[(1, 0), (3, 10), (4, 25)]);
        assert_eq!(c.end_offset_for(1, 40), Some((1, 10)));
        assert_eq!(
            c.end_offset_for(2, 40),
            Some((1, 10)),
            "epoch 2 never led here"
        );
        assert_eq!(c.end_offset_for(3, 40), Some((3, 25)));
        assert_eq!(
            c.end_offset_for(4, 40),
            Some((4, 40)),
            "the newest ends at the log end"
        );
        assert_eq!(c.end_offset_for(9, 40), Some((4, 40)));
        assert_eq!(c.end_offset_for(0, 40), None, "older than anything held");
        assert_eq!(EpochCache::new().end_offset_for(1, 0), None);
    }

    #[test]
    fn assigning_the_same_or_an_older_epoch_changes_nothing() {
        let mut c = cache(&[(2, 0)]);
        c.assign(2, 5);
        c.assign(1, 7);
        assert_eq!(c.entries(), &[(2, 0)]);
        c.assign(3, 9);
        assert_eq!(c.latest(), Some((3, 9)));
        assert_eq!(c.epoch_at(8), Some(2));
        assert_eq!(c.epoch_at(9), Some(3));
    }

    #[test]
    fn truncation_and_retention_trim_the_cache() {
        let mut c = cache(&[(1, 0), (3, 10), (4, 25)]);
        c.truncate_to(25);
        assert_eq!(c.entries(), &[(1, 0), (3, 10)]);
        c.truncate_to(11);
        assert_eq!(c.entries(), &[(1, 0), (3, 10)]);
        c.trim_before(12);
        assert_eq!(c.entries(), &[(3, 12)]);
        let mut c = cache(&[(1, 0), (3, 10)]);
        c.trim_before(5);
        assert_eq!(c.entries(), &[(1, 5), (3, 10)]);
    }
}
