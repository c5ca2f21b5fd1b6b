//! A partition leader's bookkeeping: its followers' progress, the high watermark, in-sync set
//! proposals and `min.insync.replicas`.

use std::collections::{BTreeMap, BTreeSet};

use crate::{Epoch, EpochCache, Millis, NodeId, Offset};

/// The leader's settings for one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaderConfig {
    /// A follower not caught up for longer than this leaves the in-sync set
    /// (`replica.lag.time.max.ms`).
    pub lag_max_ms: Millis,
    /// Fewer in-sync replicas than this refuse `acks=all` produce (`min.insync.replicas`).
    pub min_insync: usize,
}

/// What a follower learned about one fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchOutcome {
    /// Send the batches from `from`; the follower may move its high watermark up to `hw`.
    Read { from: Offset, hw: Offset },
    /// The follower's log diverges from this one: `epoch` (the newest epoch here not newer than
    /// the follower's last) ends at `end_offset`. The follower truncates to it.
    Diverging { epoch: Epoch, end_offset: Offset },
    /// The fetch offset is outside this log (`log_start..=log_end`).
    OutOfRange { log_start: Offset, log_end: Offset },
    /// The fetching node is not a replica of the partition.
    NotReplica,
}

/// A change of the in-sync set the leader asks the controller to commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsrProposal {
    /// The epoch of the leader proposing: the controller refuses it once another leads.
    pub leader_epoch: Epoch,
    pub isr: Vec<NodeId>,
}

/// `acks=all` is refused: fewer in-sync replicas than `min.insync.replicas`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotEnoughReplicas {
    pub in_sync: usize,
    pub required: usize,
}

#[derive(Debug, Clone)]
struct Progress {
    /// The follower's log end, from its latest fetch from this leader; `None` before one.
    leo: Option<Offset>,
    /// When it was last caught up (see [`PartitionLeader::on_fetch`]).
    last_caught_up: Millis,
    /// When it last fetched, and this leader's log end then.
    last_fetch: Option<(Millis, Offset)>,
}

/// Whether a follower's fetch position is consistent with the leader's log `log_start..log_end`
/// whose epochs are `epochs`: `None` if so (serve it from `fetch_offset`), else the answer that
/// sets it right — where its last epoch ends here ([`FetchOutcome::Diverging`]), or the bounds
/// of this log ([`FetchOutcome::OutOfRange`]).
pub fn check_fetch_position(
    epochs: &EpochCache,
    log_start: Offset,
    log_end: Offset,
    fetch_offset: Offset,
    last_fetched_epoch: Option<Epoch>,
) -> Option<FetchOutcome> {
    if let Some(e) = last_fetched_epoch {
        match epochs.end_offset_for(e, log_end) {
            Some((held, end)) if held == e && end >= fetch_offset => {}
            Some((held, end)) => {
                return Some(FetchOutcome::Diverging {
                    epoch: held,
                    end_offset: end.min(fetch_offset),
                });
            }
            // Nothing that old is held here any more (retention): start over.
            None => {
                return Some(FetchOutcome::OutOfRange { log_start, log_end });
            }
        }
    }
    if fetch_offset > log_end || (fetch_offset < log_start && fetch_offset != 0) {
        return Some(FetchOutcome::OutOfRange { log_start, log_end });
    }
    None
}

/// One partition as its leader sees it. See `docs/replication.md`.
#[derive(Debug, Clone)]
pub struct PartitionLeader {
    me: NodeId,
    epoch: Epoch,
    /// This leader's log end when it became leader: a follower rejoins the in-sync set only
    /// once it has everything of earlier epochs.
    epoch_start: Offset,
    isr: BTreeSet<NodeId>,
    pending: Option<BTreeSet<NodeId>>,
    log_start: Offset,
    leo: Offset,
    hw: Offset,
    followers: BTreeMap<NodeId, Progress>,
    config: LeaderConfig,
}

impl PartitionLeader {
    /// `me` starts leading in `epoch` with its log `log_start..leo` and the high watermark it
    /// knew; every follower gets a whole lag interval from `now` before it can be dropped.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        me: NodeId,
        epoch: Epoch,
        replicas: &[NodeId],
        isr: impl IntoIterator<Item = NodeId>,
        log_start: Offset,
        leo: Offset,
        hw: Offset,
        now: Millis,
        config: LeaderConfig,
    ) -> Self {
        let mut isr: BTreeSet<NodeId> = isr.into_iter().collect();
        isr.insert(me);
        let followers = replicas
            .iter()
            .filter(|r| **r != me)
            .map(|r| {
                (
                    *r,
                    Progress {
                        leo: None,
                        last_caught_up: now,
                        last_fetch: None,
                    },
                )
            })
            .collect();
        let mut leader = PartitionLeader {
            me,
            epoch,
            epoch_start: leo,
            isr,
            pending: None,
            log_start,
            leo,
            hw: hw.min(leo),
            followers,
            config,
        };
        leader.advance_hw();
        leader
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    pub fn log_end(&self) -> Offset {
        self.leo
    }

    pub fn high_watermark(&self) -> Offset {
        self.hw
    }

    /// The committed in-sync set the leader acts on.
    pub fn isr(&self) -> &BTreeSet<NodeId> {
        &self.isr
    }

    /// A follower's log end, as its latest fetch said.
    pub fn follower_log_end(&self, follower: NodeId) -> Option<Offset> {
        self.followers.get(&follower).and_then(|p| p.leo)
    }

    /// Whether an `acks=all` produce may be appended at `now`: the committed in-sync set must
    /// have `min_insync` members, and as many of them must be caught up as far as this leader
    /// can tell (a member that stopped fetching counts only until it lags; its removal may not
    /// be committable — the metadata quorum may be down with it — but refusing is always safe).
    pub fn check_acks_all(&self, now: Millis) -> Result<(), NotEnoughReplicas> {
        let caught_up = self
            .isr
            .iter()
            .filter(|id| {
                **id == self.me
                    || self.followers.get(id).is_some_and(|p| {
                        now.saturating_sub(p.last_caught_up) <= self.config.lag_max_ms
                    })
            })
            .count();
        let in_sync = self.isr.len().min(caught_up);
        if in_sync < self.config.min_insync {
            return Err(NotEnoughReplicas {
                in_sync,
                required: self.config.min_insync,
            });
        }
        Ok(())
    }

    /// Whether a batch the high watermark just passed may be acknowledged to an `acks=all`
    /// producer: the committed in-sync set still has `min_insync` members. The set may have
    /// shrunk since the batch was appended, and the watermark then moved on over fewer copies
    /// than the producer asked for (Kafka's NOT_ENOUGH_REPLICAS_AFTER_APPEND): the batch is
    /// stored and will not be written twice, but the producer hears it is not yet safe.
    pub fn check_committed_in_sync(&self) -> Result<(), NotEnoughReplicas> {
        if self.isr.len() < self.config.min_insync {
            return Err(NotEnoughReplicas {
                in_sync: self.isr.len(),
                required: self.config.min_insync,
            });
        }
        Ok(())
    }

    /// The leader appended: its log now ends at `leo`. Returns the high watermark.
    pub fn on_appended(&mut self, leo: Offset) -> Offset {
        self.leo = self.leo.max(leo);
        self.advance_hw();
        self.hw
    }

    /// `follower` started a new life (it restarted, perhaps with less data than before, or
    /// none): what its earlier fetches said no longer holds. It counts as not having fetched
    /// in this epoch, so it neither holds the high watermark up nor rejoins the in-sync set
    /// until it fetches again.
    pub fn forget_follower(&mut self, follower: NodeId) {
        if let Some(p) = self.followers.get_mut(&follower) {
            p.leo = None;
            p.last_fetch = None;
        }
    }

    /// `min.insync.replicas` changed (a topic setting).
    pub fn set_min_insync(&mut self, min_insync: usize) {
        self.config.min_insync = min_insync;
    }

    /// Retention moved the log start.
    pub fn on_log_start(&mut self, log_start: Offset) {
        self.log_start = self.log_start.max(log_start);
    }

    /// A fetch from `follower` at `fetch_offset`, whose last fetched batch had epoch
    /// `last_fetched_epoch` (`None`: its log is empty). `epochs` is this leader's epoch cache.
    /// A consistent fetch says the follower holds everything below `fetch_offset`: it becomes
    /// its log end, the high watermark may move, and the follower counts as caught up at `now`
    /// if it reached this log's end, or as of its previous fetch if it reached the end this log
    /// had then.
    pub fn on_fetch(
        &mut self,
        follower: NodeId,
        fetch_offset: Offset,
        last_fetched_epoch: Option<Epoch>,
        epochs: &EpochCache,
        now: Millis,
    ) -> FetchOutcome {
        if !self.followers.contains_key(&follower) {
            return FetchOutcome::NotReplica;
        }
        if let Some(refused) = check_fetch_position(
            epochs,
            self.log_start,
            self.leo,
            fetch_offset,
            last_fetched_epoch,
        ) {
            return refused;
        }
        let p = self.followers.get_mut(&follower).expect("checked above");
        if fetch_offset >= self.leo {
            p.last_caught_up = now;
        } else if let Some((at, leo_then)) = p.last_fetch
            && fetch_offset >= leo_then
        {
            p.last_caught_up = p.last_caught_up.max(at);
        }
        p.leo = Some(fetch_offset);
        p.last_fetch = Some((now, self.leo));
        self.advance_hw();
        FetchOutcome::Read {
            from: fetch_offset,
            hw: self.hw,
        }
    }

    /// A change of the in-sync set to propose, if one is due and none is pending: followers
    /// in the set not caught up for `lag_max_ms` leave it; followers out of it that hold
    /// everything committed (and everything of earlier epochs) and are caught up join it.
    pub fn poll_isr_change(&mut self, now: Millis) -> Option<IsrProposal> {
        if self.pending.is_some() {
            return None;
        }
        let lagging = |p: &Progress| now.saturating_sub(p.last_caught_up) > self.config.lag_max_ms;
        let mut next = self.isr.clone();
        for (id, p) in &self.followers {
            let in_set = self.isr.contains(id);
            if in_set && lagging(p) {
                next.remove(id);
            }
            let complete = p.leo.is_some_and(|l| l >= self.hw.max(self.epoch_start));
            if !in_set && complete && !lagging(p) {
                next.insert(*id);
            }
        }
        if next == self.isr {
            return None;
        }
        self.pending = Some(next.clone());
        Some(IsrProposal {
            leader_epoch: self.epoch,
            isr: next.into_iter().collect(),
        })
    }

    /// The controller committed an in-sync set for this leader's epoch.
    pub fn on_isr_committed(&mut self, isr: impl IntoIterator<Item = NodeId>) {
        self.isr = isr.into_iter().collect();
        self.isr.insert(self.me);
        self.pending = None;
        self.advance_hw();
    }

    /// The controller refused the pending proposal (another change won, or the epoch moved).
    pub fn on_isr_refused(&mut self) {
        self.pending = None;
    }

    /// The high watermark: the smallest log end over the in-sync set — the *maximal* one, the
    /// committed set with any pending additions (a follower proposed in holds the watermark
    /// back from the moment it is proposed, so it is complete when the change commits; one
    /// proposed out holds it until the change commits). A member that has not fetched from
    /// this leader yet holds it where it is. It never goes back.
    fn advance_hw(&mut self) {
        let mut min = self.leo;
        let pending = self.pending.iter().flatten();
        let maximal: BTreeSet<NodeId> = self.isr.iter().chain(pending).copied().collect();
        for id in maximal.iter().filter(|id| **id != self.me) {
            let leo = self
                .followers
                .get(id)
                .and_then(|p| p.leo)
                .unwrap_or(self.hw);
            min = min.min(leo);
        }
        self.hw = self.hw.max(min);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: LeaderConfig = LeaderConfig {
        lag_max_ms: 1_000,
        min_insync: 2,
    };

    fn epochs(leo: Offset) -> EpochCache {
        let mut c = EpochCache::new();
        if leo > 0 {
            c.assign(1, 0);
        }
        c
    }

    #[test]
    fn the_high_watermark_is_the_smallest_log_end_in_the_set() {
        let mut l = PartitionLeader::new(1, 1, &[1, 2, 3], [1, 2, 3], 0, 0, 0, 0, CONFIG);
        assert_eq!(l.on_appended(10), 0, "followers have not fetched");
        let e = epochs(10);
        assert_eq!(
            l.on_fetch(2, 10, Some(1), &e, 5),
            FetchOutcome::Read { from: 10, hw: 0 }
        );
        assert_eq!(
            l.on_fetch(3, 4, Some(1), &e, 5),
            FetchOutcome::Read { from: 4, hw: 4 }
        );
        assert_eq!(l.high_watermark(), 4);
        l.on_fetch(3, 10, Some(1), &e, 6);
        assert_eq!(l.high_watermark(), 10);
    }

    #[test]
    fn a_lagging_follower_leaves_the_set_and_the_watermark_moves_on() {
        let mut l = PartitionLeader::new(1, 1, &[1, 2, 3], [1, 2, 3], 0, 0, 0, 0, CONFIG);
        let e = epochs(10);
        l.on_appended(10);
        l.on_fetch(2, 10, Some(1), &e, 100);
        assert_eq!(l.high_watermark(), 0, "3 holds it back");
        assert_eq!(l.poll_isr_change(900), None);
        let p = l.poll_isr_change(1_001).expect("3 lags");
        assert_eq!(
            p,
            IsrProposal {
                leader_epoch: 1,
                isr: vec![1, 2]
            }
        );
        assert_eq!(l.poll_isr_change(1_002), None, "one proposal at a time");
        assert_eq!(l.high_watermark(), 0, "acts on the committed set only");
        l.on_isr_committed([1, 2]);
        assert_eq!(l.high_watermark(), 10);
        assert!(l.check_acks_all(1_001).is_ok());
        // 3 comes back, catches up, and is proposed back in.
        l.on_fetch(3, 10, Some(1), &e, 1_100);
        let p = l.poll_isr_change(1_100).expect("3 caught up");
        assert_eq!(p.isr, vec![1, 2, 3]);
        l.on_isr_committed(p.isr);
    }

    #[test]
    fn fewer_in_sync_than_required_refuses_acks_all() {
        let mut l = PartitionLeader::new(1, 1, &[1, 2, 3], [1], 0, 0, 0, 0, CONFIG);
        assert_eq!(
            l.check_acks_all(0),
            Err(NotEnoughReplicas {
                in_sync: 1,
                required: 2
            })
        );
        assert!(l.check_committed_in_sync().is_err());
        l.on_isr_committed([1, 2]);
        assert!(l.check_acks_all(500).is_ok());
        assert!(l.check_committed_in_sync().is_ok());
        // 2 stops fetching: past the lag it no longer counts, even before the set shrinks.
        assert_eq!(
            l.check_acks_all(1_001),
            Err(NotEnoughReplicas {
                in_sync: 1,
                required: 2
            })
        );
    }

    #[test]
    fn a_follower_keeping_up_under_load_stays_caught_up() {
        let mut l = PartitionLeader::new(1, 1, &[1, 2], [1, 2], 0, 0, 0, 0, CONFIG);
        let mut e = EpochCache::new();
        e.assign(1, 0);
        // Every fetch reaches what the log held at the previous fetch, never the current end.
        let mut leo = 0;
        for t in 0..50u64 {
            let fetch_at = leo;
            leo += 10;
            l.on_appended(leo);
            l.on_fetch(2, fetch_at, Some(1), &e, t * 100);
            assert_eq!(l.poll_isr_change(t * 100), None, "at {t}");
        }
    }

    #[test]
    fn a_diverging_follower_is_told_where_the_epoch_ends() {
        let mut e = EpochCache::new();
        e.assign(1, 0);
        e.assign(3, 10);
        let mut l = PartitionLeader::new(1, 3, &[1, 2], [1], 0, 15, 10, 0, CONFIG);
        l.on_appended(15);
        // 2 led epoch 2 from 10 and wrote up to 12: epoch 2 is not here, epoch 1 ends at 10.
        assert_eq!(
            l.on_fetch(2, 12, Some(2), &e, 1),
            FetchOutcome::Diverging {
                epoch: 1,
                end_offset: 10
            }
        );
        // Truncated, it fetches from 10 with epoch 1 and is served.
        assert_eq!(
            l.on_fetch(2, 10, Some(1), &e, 2),
            FetchOutcome::Read { from: 10, hw: 15 },
            "the leader alone is in sync"
        );
        assert_eq!(l.on_fetch(9, 0, None, &e, 3), FetchOutcome::NotReplica);
        assert_eq!(
            l.on_fetch(2, 99, Some(3), &e, 4),
            FetchOutcome::Diverging {
                epoch: 3,
                end_offset: 15
            }
        );
    }
}
