//! Broker sessions, as the metadata leader keeps them: a pure state machine with the time
//! passed in.
//!
//! Every broker heartbeats to the metadata leader with its broker epoch. A registered,
//! unfenced broker whose last heartbeat *in its current epoch* is older than the session
//! timeout has missed its session: the leader proposes `FenceBroker` for that epoch. Sessions
//! are kept in memory only; a new leader starts with none and gives every broker a whole
//! session from the moment it took over before fencing anyone, so an election never fences
//! brokers that were heartbeating to the old leader. Likewise a broker epoch the leader sees
//! for the first time (a registration) gets a whole session from that moment.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::BrokerRecord;

#[derive(Debug, Default)]
pub struct Liveness {
    /// Last heartbeat of each node: the epoch it carried and when it arrived.
    sessions: HashMap<u32, (u64, Instant)>,
    /// Since when this node leads, if it does.
    leading_since: Option<Instant>,
    /// When this leader first saw each node's current broker epoch.
    epoch_seen: HashMap<u32, (u64, Instant)>,
}

impl Liveness {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a heartbeat of `node_id` in broker epoch `epoch`.
    pub fn heartbeat(&mut self, node_id: u32, epoch: u64, now: Instant) {
        self.sessions.insert(node_id, (epoch, now));
    }

    /// Tells the tracker whether this node leads now. Gaining leadership starts afresh.
    pub fn set_leading(&mut self, leading: bool, now: Instant) {
        match (leading, self.leading_since) {
            (true, None) => {
                self.sessions.clear();
                self.epoch_seen.clear();
                self.leading_since = Some(now);
            }
            (false, Some(_)) => {
                self.sessions.clear();
                self.epoch_seen.clear();
                self.leading_since = None;
            }
            _ => {}
        }
    }

    pub fn is_leading(&self) -> bool {
        self.leading_since.is_some()
    }

    /// Notes the brokers' current epochs: one not seen before starts its grace now.
    pub fn observe<'a>(
        &mut self,
        brokers: impl IntoIterator<Item = &'a BrokerRecord>,
        now: Instant,
    ) {
        for b in brokers {
            match self.epoch_seen.get(&b.node_id) {
                Some(&(epoch, _)) if epoch == b.epoch => {}
                _ => {
                    self.epoch_seen.insert(b.node_id, (b.epoch, now));
                }
            }
        }
    }

    /// Whether `b` heartbeated in its current epoch within `timeout` (or has not yet had a
    /// whole session to do so: since this node took over, or since it saw the epoch).
    pub fn is_live(&self, b: &BrokerRecord, now: Instant, timeout: Duration) -> bool {
        if b.fenced {
            return false;
        }
        let Some(since) = self.leading_since else {
            return false;
        };
        let recent = |at: Instant| now.saturating_duration_since(at) <= timeout;
        let grace_from = match self.epoch_seen.get(&b.node_id) {
            Some(&(epoch, at)) if epoch == b.epoch => at.max(since),
            _ => now,
        };
        match self.sessions.get(&b.node_id) {
            Some(&(epoch, at)) if epoch == b.epoch => recent(at),
            _ => recent(grace_from),
        }
    }

    /// The (node, epoch) pairs to fence: registered, unfenced brokers that missed their
    /// session. Empty unless this node leads.
    pub fn expired<'a>(
        &mut self,
        brokers: impl IntoIterator<Item = &'a BrokerRecord> + Clone,
        now: Instant,
        timeout: Duration,
    ) -> Vec<(u32, u64)> {
        if !self.is_leading() {
            return Vec::new();
        }
        self.observe(brokers.clone(), now);
        brokers
            .into_iter()
            .filter(|b| !b.fenced && !self.is_live(b, now, timeout))
            .map(|b| (b.node_id, b.epoch))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker(node_id: u32, epoch: u64) -> BrokerRecord {
        BrokerRecord {
            node_id,
            addr: String::new(),
            peer_addr: None,
            rack: None,
            epoch,
            fenced: false,
        }
    }

    #[test]
    fn a_broker_that_stops_heartbeating_is_fenced_after_one_session() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(6);
        let mut l = Liveness::new();
        let brokers = [broker(1, 10), broker(2, 11)];
        assert!(l.expired(&brokers, t0, timeout).is_empty(), "not leading");
        l.set_leading(true, t0);
        l.heartbeat(1, 10, t0);
        l.heartbeat(2, 11, t0);
        let t1 = t0 + Duration::from_secs(5);
        l.heartbeat(1, 10, t1);
        assert!(l.expired(&brokers, t1, timeout).is_empty());
        let t2 = t0 + Duration::from_secs(7);
        assert_eq!(l.expired(&brokers, t2, timeout), vec![(2, 11)]);
        assert!(l.is_live(&brokers[0], t2, timeout));
        assert!(!l.is_live(&brokers[1], t2, timeout));
    }

    #[test]
    fn a_new_leader_gives_everyone_a_whole_session() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(6);
        let mut l = Liveness::new();
        let brokers = [broker(1, 10)];
        l.set_leading(true, t0);
        l.observe(&brokers, t0);
        assert!(
            l.expired(&brokers, t0 + Duration::from_secs(5), timeout)
                .is_empty()
        );
        assert_eq!(
            l.expired(&brokers, t0 + Duration::from_secs(7), timeout),
            vec![(1, 10)]
        );
        // Losing and regaining leadership starts afresh.
        l.set_leading(false, t0 + Duration::from_secs(8));
        assert!(
            l.expired(&brokers, t0 + Duration::from_secs(9), timeout)
                .is_empty()
        );
        l.set_leading(true, t0 + Duration::from_secs(9));
        l.observe(&brokers, t0 + Duration::from_secs(9));
        assert!(
            l.expired(&brokers, t0 + Duration::from_secs(14), timeout)
                .is_empty()
        );
    }

    #[test]
    fn a_new_registration_gets_a_whole_session() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(6);
        let mut l = Liveness::new();
        l.set_leading(true, t0);
        l.heartbeat(1, 10, t0);
        assert!(l.expired(&[broker(1, 10)], t0, timeout).is_empty());
        // Long after, the node restarts and registers (epoch 20): not fenced at once.
        let t1 = t0 + Duration::from_secs(30);
        assert!(l.expired(&[broker(1, 20)], t1, timeout).is_empty());
        l.heartbeat(1, 20, t1 + Duration::from_secs(1));
        assert!(
            l.expired(&[broker(1, 20)], t1 + Duration::from_secs(6), timeout)
                .is_empty()
        );
        assert_eq!(
            l.expired(&[broker(1, 20)], t1 + Duration::from_secs(8), timeout),
            vec![(1, 20)]
        );
    }

    #[test]
    fn a_heartbeat_from_an_older_epoch_does_not_keep_the_new_one_alive() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(6);
        let mut l = Liveness::new();
        l.set_leading(true, t0);
        assert!(l.expired(&[broker(1, 20)], t0, timeout).is_empty());
        // The node registered again (epoch 20) but a stale process still heartbeats epoch 10.
        let t1 = t0 + Duration::from_secs(10);
        l.heartbeat(1, 10, t1);
        assert_eq!(l.expired(&[broker(1, 20)], t1, timeout), vec![(1, 20)]);
        let mut fenced = broker(1, 20);
        fenced.fenced = true;
        assert!(
            l.expired(&[fenced], t1, timeout).is_empty(),
            "already fenced"
        );
    }
}
