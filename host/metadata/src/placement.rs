//! Where a topic's partitions and their replicas go: a pure function of the live brokers, the
//! replication factor and what the brokers already lead.
//!
//! Brokers are ordered so that consecutive ones sit on different racks where racks are known
//! (rack A's first broker, rack B's first, rack C's first, rack A's second, ...). Partition
//! `p`'s leader is the broker at position `start + p` of that order, so leaders go round the
//! brokers evenly; `start` is the broker that leads the fewest partitions, so topics created one
//! after the other do not pile their leaders on the same node. Followers follow the leader in
//! the order at a distance that grows each time the partitions have gone once round the
//! brokers, so the replicas of one broker's partitions are spread over the others rather than
//! always landing on its neighbour. With racks, a follower whose rack already holds a replica
//! of the partition is skipped while another rack is free.

use std::collections::{BTreeMap, BTreeSet};

/// A live broker that can hold replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub node_id: u32,
    /// Where the broker stands (a rack, a zone); `None` when not configured.
    pub rack: Option<String>,
}

/// Why partitions cannot be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// The replication factor is zero.
    #[error("the replication factor must be at least 1")]
    ZeroReplicationFactor,
    /// More replicas per partition than live brokers to hold them.
    #[error(
        "replication factor {replication_factor} is larger than the {live} live broker(s); \
         start more brokers or lower the replication factor"
    )]
    NotEnoughBrokers {
        replication_factor: usize,
        live: usize,
    },
}

/// Places `partitions` new partitions with `replication_factor` replicas each. `leading` counts
/// the partitions each broker leads already (brokers missing from it lead none). Returns each
/// partition's replicas, the leader first.
pub fn place(
    brokers: &[Candidate],
    partitions: usize,
    replication_factor: usize,
    leading: &BTreeMap<u32, usize>,
) -> Result<Vec<Vec<u32>>, PlacementError> {
    if replication_factor == 0 {
        return Err(PlacementError::ZeroReplicationFactor);
    }
    let order = rack_alternating(brokers);
    let n = order.len();
    if replication_factor > n {
        return Err(PlacementError::NotEnoughBrokers {
            replication_factor,
            live: n,
        });
    }
    let start = (0..n)
        .min_by_key(|&i| (leading.get(&order[i].node_id).copied().unwrap_or(0), i))
        .unwrap_or(0);
    let mut out = Vec::with_capacity(partitions);
    for p in 0..partitions {
        let leader = (start + p) % n;
        // 1 ..= n-1: how far the first follower stands from the leader in this round.
        let shift = if n > 1 { 1 + (p / n) % (n - 1) } else { 0 };
        // Followers in order of preference: from the shifted position on, then the rest.
        let mut sequence: Vec<usize> = Vec::with_capacity(n);
        for at in (0..n).map(|k| (leader + shift + k) % n).chain(0..n) {
            if at != leader && !sequence.contains(&at) {
                sequence.push(at);
            }
        }
        let mut replicas = vec![order[leader].node_id];
        let mut used_racks: BTreeSet<&str> = order[leader].rack.as_deref().into_iter().collect();
        // First a broker on a rack not used yet (brokers without a rack always qualify), then
        // whatever comes next.
        for at in &sequence {
            if replicas.len() == replication_factor {
                break;
            }
            match order[*at].rack.as_deref() {
                Some(rack) if used_racks.contains(rack) => {}
                rack => {
                    used_racks.extend(rack);
                    replicas.push(order[*at].node_id);
                }
            }
        }
        for at in &sequence {
            if replicas.len() == replication_factor {
                break;
            }
            if !replicas.contains(&order[*at].node_id) {
                replicas.push(order[*at].node_id);
            }
        }
        out.push(replicas);
    }
    Ok(out)
}

/// Brokers by node id, interleaved by rack: the first broker of each rack (racks by name), then
/// the second of each, and so on; brokers without a rack form a rack of their own.
fn rack_alternating(brokers: &[Candidate]) -> Vec<Candidate> {
    let mut by_rack: BTreeMap<Option<&str>, Vec<&Candidate>> = BTreeMap::new();
    let mut sorted: Vec<&Candidate> = brokers.iter().collect();
    sorted.sort_by_key(|b| b.node_id);
    sorted.dedup_by_key(|b| b.node_id);
    for b in sorted {
        by_rack.entry(b.rack.as_deref()).or_default().push(b);
    }
    let rounds = by_rack.values().map(Vec::len).max().unwrap_or(0);
    let mut out = Vec::new();
    for round in 0..rounds {
        for members in by_rack.values() {
            if let Some(b) = members.get(round) {
                out.push((*b).clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn brokers(ids: &[u32]) -> Vec<Candidate> {
        ids.iter()
            .map(|&node_id| Candidate {
                node_id,
                rack: None,
            })
            .collect()
    }

    fn counts(placed: &[Vec<u32>], f: impl Fn(&Vec<u32>) -> Vec<u32>) -> BTreeMap<u32, usize> {
        let mut c = BTreeMap::new();
        for r in placed {
            for id in f(r) {
                *c.entry(id).or_insert(0) += 1;
            }
        }
        c
    }

    #[test]
    fn twelve_partitions_over_three_brokers_are_led_four_each() {
        let placed = place(&brokers(&[1, 2, 3]), 12, 1, &BTreeMap::new()).unwrap();
        let leaders = counts(&placed, |r| vec![r[0]]);
        assert_eq!(leaders, BTreeMap::from([(1, 4), (2, 4), (3, 4)]));
        assert!(placed.iter().all(|r| r.len() == 1));
    }

    #[test]
    fn a_single_node_leads_everything() {
        let placed = place(&brokers(&[7]), 5, 1, &BTreeMap::new()).unwrap();
        assert_eq!(placed, vec![vec![7]; 5]);
    }

    #[test]
    fn more_replicas_than_brokers_is_refused_and_zero_too() {
        assert_eq!(
            place(&brokers(&[1, 2]), 3, 3, &BTreeMap::new()),
            Err(PlacementError::NotEnoughBrokers {
                replication_factor: 3,
                live: 2
            })
        );
        assert_eq!(
            place(&brokers(&[1, 2]), 3, 0, &BTreeMap::new()),
            Err(PlacementError::ZeroReplicationFactor)
        );
        let message = place(&brokers(&[1]), 1, 2, &BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("larger than the 1 live broker"),
            "{message}"
        );
    }

    #[test]
    fn new_topics_start_at_the_broker_leading_least() {
        let leading = BTreeMap::from([(1, 10), (2, 3), (3, 10)]);
        let placed = place(&brokers(&[1, 2, 3]), 1, 1, &leading).unwrap();
        assert_eq!(placed, vec![vec![2]]);
    }

    #[test]
    fn replicas_of_a_partition_sit_on_different_racks() {
        let b = |node_id, rack: &str| Candidate {
            node_id,
            rack: Some(rack.into()),
        };
        // Rack a holds 1, 2, 3; rack b holds 4; rack c holds 5.
        let cands = vec![b(1, "a"), b(2, "a"), b(3, "a"), b(4, "b"), b(5, "c")];
        let racks: BTreeMap<u32, &str> =
            BTreeMap::from([(1, "a"), (2, "a"), (3, "a"), (4, "b"), (5, "c")]);
        let placed = place(&cands, 30, 3, &BTreeMap::new()).unwrap();
        for r in &placed {
            let distinct: BTreeSet<&str> = r.iter().map(|id| racks[id]).collect();
            assert_eq!(distinct.len(), 3, "{r:?}");
        }
    }

    proptest! {
        #[test]
        fn every_partition_gets_distinct_replicas_and_leaders_are_even(
            ids in proptest::collection::btree_set(0u32..50, 1..8),
            partitions in 0usize..60,
            rf_pick in 0usize..8,
        ) {
            let ids: Vec<u32> = ids.into_iter().collect();
            let rf = 1 + rf_pick % ids.len();
            let placed = place(&brokers(&ids), partitions, rf, &BTreeMap::new()).unwrap();
            prop_assert_eq!(placed.len(), partitions);
            for r in &placed {
                prop_assert_eq!(r.len(), rf);
                let distinct: BTreeSet<_> = r.iter().collect();
                prop_assert_eq!(distinct.len(), rf);
                prop_assert!(r.iter().all(|id| ids.contains(id)));
            }
            let leaders = counts(&placed, |r| vec![r[0]]);
            let most = leaders.values().max().copied().unwrap_or(0);
            let least = ids.iter().map(|id| leaders.get(id).copied().unwrap_or(0)).min().unwrap_or(0);
            prop_assert!(most - least <= 1, "leaders {:?}", leaders);
            // Every broker holds about as many replicas as any other.
            let replicas = counts(&placed, |r| r.clone());
            let most = replicas.values().max().copied().unwrap_or(0);
            let least = ids.iter().map(|id| replicas.get(id).copied().unwrap_or(0)).min().unwrap_or(0);
            prop_assert!(most - least <= rf, "replicas {:?}", replicas);
        }

        #[test]
        fn with_enough_racks_no_rack_holds_two_replicas_of_a_partition(
            layout in proptest::collection::vec(0u8..4, 1..10),
            partitions in 1usize..40,
            rf_pick in 0usize..4,
        ) {
            let cands: Vec<Candidate> = layout.iter().enumerate().map(|(i, r)| Candidate {
                node_id: i as u32,
                rack: Some(format!("rack-{r}")),
            }).collect();
            let racks: BTreeSet<u8> = layout.iter().copied().collect();
            let rf = 1 + rf_pick % racks.len();
            let placed = place(&cands, partitions, rf, &BTreeMap::new()).unwrap();
            for r in &placed {
                let used: BTreeSet<u8> = r.iter().map(|id| layout[*id as usize]).collect();
                prop_assert_eq!(used.len(), rf, "{:?} over {:?}", r, layout);
            }
        }
    }
}
