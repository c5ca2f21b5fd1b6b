//! A follower's side: what to fetch, and what to do with the leader's answer.

use crate::{Epoch, EpochCache, Offset};

/// Where a follower fetches from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchPosition {
    pub fetch_offset: Offset,
    /// The epoch of its last batch; `None` for an empty log.
    pub last_fetched_epoch: Option<Epoch>,
    /// The leader epoch it follows.
    pub leader_epoch: Epoch,
}

/// What the follower does to its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowerAction {
    /// Remove everything at and after `to`, then fetch again.
    Truncate { to: Offset },
    /// Remove everything and start the log at the leader's `from` (the leader no longer holds
    /// what this replica would need).
    Reset { from: Offset },
}

/// One partition as a follower sees it.
#[derive(Debug, Clone)]
pub struct PartitionFollower {
    leader_epoch: Epoch,
    log_start: Offset,
    leo: Offset,
    hw: Offset,
    epochs: EpochCache,
}

impl PartitionFollower {
    /// Follows the leader of `leader_epoch` from a log `log_start..leo` whose epochs are
    /// `epochs`, with the high watermark it last knew.
    pub fn new(
        leader_epoch: Epoch,
        log_start: Offset,
        leo: Offset,
        hw: Offset,
        epochs: EpochCache,
    ) -> Self {
        PartitionFollower {
            leader_epoch,
            log_start,
            leo,
            hw: hw.min(leo),
            epochs,
        }
    }

    pub fn position(&self) -> FetchPosition {
        FetchPosition {
            fetch_offset: self.leo,
            last_fetched_epoch: self.epochs.latest().map(|(e, _)| e),
            leader_epoch: self.leader_epoch,
        }
    }

    pub fn log_end(&self) -> Offset {
        self.leo
    }

    pub fn high_watermark(&self) -> Offset {
        self.hw
    }

    pub fn epochs(&self) -> &EpochCache {
        &self.epochs
    }

    /// A newer leader epoch began (the metadata said so).
    pub fn on_new_leader(&mut self, leader_epoch: Epoch) {
        self.leader_epoch = self.leader_epoch.max(leader_epoch);
    }

    /// Batches `(epoch, base_offset, next_offset)` were appended as received; the leader's high
    /// watermark came with them.
    pub fn on_appended(&mut self, batches: &[(Epoch, Offset, Offset)], leader_hw: Offset) {
        for &(epoch, base, next) in batches {
            self.epochs.assign(epoch, base);
            self.leo = self.leo.max(next);
        }
        self.hw = self.hw.max(leader_hw.min(self.leo));
    }

    /// The leader said this log diverges: `epoch` (the newest epoch the leader holds that is not
    /// newer than this log's last) ends at `end_offset` there. What both logs agree on ends at
    /// the smaller of that and where this log's own records of epochs up to `epoch` end (none:
    /// at the start of this log's first epoch); everything after is truncated.
    pub fn on_diverging(&mut self, epoch: Epoch, end_offset: Offset) -> FollowerAction {
        let own_end = match self.epochs.end_offset_for(epoch, self.leo) {
            Some((_, end)) => end,
            None => self
                .epochs
                .entries()
                .first()
                .map_or(self.log_start, |(_, start)| *start),
        };
        let to = end_offset.min(own_end).min(self.leo);
        self.truncate(to);
        FollowerAction::Truncate { to }
    }

    /// The leader said the fetch offset is outside its log `log_start..=log_end`.
    pub fn on_out_of_range(&mut self, log_start: Offset, log_end: Offset) -> FollowerAction {
        if self.leo > log_end {
            self.truncate(log_end);
            return FollowerAction::Truncate { to: log_end };
        }
        self.epochs = EpochCache::new();
        self.log_start = log_start;
        self.leo = log_start;
        self.hw = log_start;
        FollowerAction::Reset { from: log_start }
    }

    fn truncate(&mut self, to: Offset) {
        self.leo = to.max(self.log_start);
        self.epochs.truncate_to(self.leo);
        self.hw = self.hw.min(self.leo);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_appends_fetches_on_and_truncates_a_diverging_suffix() {
        let mut f = PartitionFollower::new(1, 0, 0, 0, EpochCache::new());
        assert_eq!(
            f.position(),
            FetchPosition {
                fetch_offset: 0,
                last_fetched_epoch: None,
                leader_epoch: 1
            }
        );
        f.on_appended(&[(1, 0, 5), (1, 5, 8)], 5);
        assert_eq!((f.log_end(), f.high_watermark()), (8, 5));
        assert_eq!(f.position().last_fetched_epoch, Some(1));
        f.on_new_leader(3);
        assert_eq!(f.on_diverging(1, 6), FollowerAction::Truncate { to: 6 });
        assert_eq!(f.log_end(), 6);
        assert_eq!(f.position().leader_epoch, 3);
        // Ahead of a leader that holds less: truncate; behind its log start: reset.
        assert_eq!(f.on_out_of_range(0, 4), FollowerAction::Truncate { to: 4 });
        assert_eq!(
            f.on_out_of_range(20, 30),
            FollowerAction::Reset { from: 20 }
        );
        assert_eq!(f.position().fetch_offset, 20);
        assert_eq!(f.position().last_fetched_epoch, None);
    }

    #[test]
    fn a_log_whose_first_epoch_the_leader_never_had_is_truncated_to_its_start() {
        // This replica led epoch 2 from offset 0; the leader holds epoch 1 there, up to 5.
        let mut epochs = EpochCache::new();
        epochs.assign(2, 0);
        let mut f = PartitionFollower::new(8, 0, 2, 0, epochs);
        assert_eq!(f.on_diverging(1, 2), FollowerAction::Truncate { to: 0 });
        assert_eq!(f.position().last_fetched_epoch, None);
        // A log that holds epoch 1 up to 3 then epoch 2: truncated where its epoch 1 ends.
        let mut epochs = EpochCache::new();
        epochs.assign(1, 0);
        epochs.assign(2, 3);
        let mut f = PartitionFollower::new(8, 0, 9, 0, epochs);
        assert_eq!(f.on_diverging(1, 5), FollowerAction::Truncate { to: 3 });
    }
}
