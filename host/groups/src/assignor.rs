//! Partition assignment strategies, computed by the coordinator (as in Kafka's KIP-848).
//!
//! Every function is pure: members (sorted by id), each member's subscribed topics, the
//! partition count of every topic, and — for sticky — the previous target assignment go in;
//! the new target assignment comes out. Every partition of a subscribed topic goes to exactly
//! one member subscribed to it.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// A topic and one of its partitions.
pub type TopicPartition = (String, u32);

/// A member's partitions.
pub type Assignment = BTreeSet<TopicPartition>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Assignor {
    /// Per topic, contiguous ranges of partitions to members in id order.
    Range,
    /// All partitions in (topic, partition) order dealt to members in turn.
    RoundRobin,
    /// Balanced like round-robin, but partitions stay where they were whenever balance allows,
    /// so a rebalance moves as few partitions as possible.
    #[default]
    Sticky,
}

impl std::str::FromStr for Assignor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "range" => Ok(Assignor::Range),
            "round-robin" | "roundrobin" => Ok(Assignor::RoundRobin),
            "sticky" | "uniform" => Ok(Assignor::Sticky),
            other => Err(format!(
                "unknown assignor {other:?}; expected range, round-robin or sticky"
            )),
        }
    }
}

impl std::fmt::Display for Assignor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Assignor::Range => "range",
            Assignor::RoundRobin => "round-robin",
            Assignor::Sticky => "sticky",
        })
    }
}

/// Computes the target assignment.
pub fn assign(
    assignor: Assignor,
    subscriptions: &BTreeMap<String, BTreeSet<String>>,
    partitions: &BTreeMap<String, u32>,
    previous: &BTreeMap<String, Assignment>,
) -> BTreeMap<String, Assignment> {
    let mut out: BTreeMap<String, Assignment> = subscriptions
        .keys()
        .map(|m| (m.clone(), Assignment::new()))
        .collect();
    match assignor {
        Assignor::Range => {
            for (topic, &count) in partitions {
                let members: Vec<&String> = subscriptions
                    .iter()
                    .filter(|(_, t)| t.contains(topic))
                    .map(|(m, _)| m)
                    .collect();
                if members.is_empty() {
                    continue;
                }
                let n = members.len() as u32;
                let (per, extra) = (count / n, count % n);
                let mut next = 0;
                for (i, m) in members.iter().enumerate() {
                    let take = per + u32::from((i as u32) < extra);
                    let set = out.get_mut(*m).expect("member present");
                    for p in next..next + take {
                        set.insert((topic.clone(), p));
                    }
                    next += take;
                }
            }
        }
        Assignor::RoundRobin => {
            let mut turn = 0usize;
            let members: Vec<&String> = subscriptions.keys().collect();
            for (topic, &count) in partitions {
                for p in 0..count {
                    // The next member in turn that subscribes to this topic.
                    for step in 0..members.len() {
                        let m = members[(turn + step) % members.len()];
                        if subscriptions[m].contains(topic) {
                            out.get_mut(m)
                                .expect("member present")
                                .insert((topic.clone(), p));
                            turn = (turn + step + 1) % members.len();
                            break;
                        }
                    }
                }
            }
        }
        Assignor::Sticky => sticky(subscriptions, partitions, previous, &mut out),
    }
    out
}

fn sticky(
    subscriptions: &BTreeMap<String, BTreeSet<String>>,
    partitions: &BTreeMap<String, u32>,
    previous: &BTreeMap<String, Assignment>,
    out: &mut BTreeMap<String, Assignment>,
) {
    let all: Vec<TopicPartition> = partitions
        .iter()
        .filter(|(t, _)| subscriptions.values().any(|s| s.contains(*t)))
        .flat_map(|(t, &n)| (0..n).map(move |p| (t.clone(), p)))
        .collect();
    if subscriptions.is_empty() {
        return;
    }
    // Quota: with equal subscriptions every member gets floor or ceil of the average.
    let members = subscriptions.len();
    let ceil = all.len().div_ceil(members);
    let floor = all.len() / members;
    let mut at_ceil = all.len() - floor * members; // how many members may hold `ceil`
    let mut taken: BTreeSet<&TopicPartition> = BTreeSet::new();
    // 1. Keep previous ownership, up to the quota.
    for (m, prev) in previous {
        let Some(subs) = subscriptions.get(m) else {
            continue;
        };
        let mut kept = 0;
        for tp in prev {
            let limit = if at_ceil > 0 { ceil } else { floor };
            if kept >= limit {
                break;
            }
            if subs.contains(&tp.0)
                && partitions.get(&tp.0).is_some_and(|&n| tp.1 < n)
                && !taken.contains(tp)
            {
                out.get_mut(m).expect("member present").insert(tp.clone());
                taken.insert(tp);
                kept += 1;
            }
        }
        if kept == ceil && ceil != floor {
            at_ceil -= 1;
        }
    }
    // 2. Give every unowned partition to the least loaded subscribed member (ties: by id).
    for tp in &all {
        if taken.contains(tp) {
            continue;
        }
        let best = out
            .iter()
            .filter(|(m, _)| subscriptions[*m].contains(&tp.0))
            .min_by_key(|(m, a)| (a.len(), (*m).clone()))
            .map(|(m, _)| m.clone());
        if let Some(m) = best {
            out.get_mut(&m).expect("member present").insert(tp.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn subs(members: &[&str], topics: &[&str]) -> BTreeMap<String, BTreeSet<String>> {
        members
            .iter()
            .map(|m| {
                (
                    m.to_string(),
                    topics.iter().map(|t| t.to_string()).collect(),
                )
            })
            .collect()
    }

    fn parts(p: &[(&str, u32)]) -> BTreeMap<String, u32> {
        p.iter().map(|(t, n)| (t.to_string(), *n)).collect()
    }

    fn sizes(a: &BTreeMap<String, Assignment>) -> Vec<usize> {
        a.values().map(|s| s.len()).collect()
    }

    #[test]
    fn range_gives_contiguous_ranges() {
        let a = assign(
            Assignor::Range,
            &subs(&["a", "b"], &["t"]),
            &parts(&[("t", 5)]),
            &BTreeMap::new(),
        );
        assert_eq!(a["a"], (0..3).map(|p| ("t".to_string(), p)).collect());
        assert_eq!(a["b"], (3..5).map(|p| ("t".to_string(), p)).collect());
    }

    #[test]
    fn round_robin_deals_in_turn() {
        let a = assign(
            Assignor::RoundRobin,
            &subs(&["a", "b", "c"], &["t"]),
            &parts(&[("t", 6)]),
            &BTreeMap::new(),
        );
        assert_eq!(sizes(&a), vec![2, 2, 2]);
        assert!(a["a"].contains(&("t".into(), 0)) && a["a"].contains(&("t".into(), 3)));
    }

    #[test]
    fn sticky_moves_little_when_a_member_joins() {
        let p = parts(&[("t", 6)]);
        let two = assign(
            Assignor::Sticky,
            &subs(&["a", "b"], &["t"]),
            &p,
            &BTreeMap::new(),
        );
        assert_eq!(sizes(&two), vec![3, 3]);
        let three = assign(Assignor::Sticky, &subs(&["a", "b", "c"], &["t"]), &p, &two);
        assert_eq!(sizes(&three), vec![2, 2, 2]);
        // a and b each give up exactly one partition; nothing else moves.
        assert!(three["a"].is_subset(&two["a"]) && three["b"].is_subset(&two["b"]));
        let gone = assign(Assignor::Sticky, &subs(&["a", "c"], &["t"]), &p, &three);
        assert!(three["a"].is_subset(&gone["a"]) && three["c"].is_subset(&gone["c"]));
        assert_eq!(sizes(&gone), vec![3, 3]);
    }

    proptest! {
        #[test]
        fn every_partition_has_exactly_one_subscribed_owner(
            n_members in 1usize..6, counts in proptest::collection::vec(1u32..12, 1..4),
            assignor in prop_oneof![Just(Assignor::Range), Just(Assignor::RoundRobin), Just(Assignor::Sticky)],
            restrict in any::<bool>(),
        ) {
            let members: Vec<String> = (0..n_members).map(|i| format!("m{i}")).collect();
            let topics: Vec<String> = (0..counts.len()).map(|i| format!("t{i}")).collect();
            let mut s: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for (i, m) in members.iter().enumerate() {
                let mine: BTreeSet<String> = topics.iter().enumerate()
                    .filter(|(j, _)| !restrict || (i + j) % 2 == 0 || i == 0)
                    .map(|(_, t)| t.clone()).collect();
                s.insert(m.clone(), mine);
            }
            let p: BTreeMap<String, u32> = topics.iter().cloned().zip(counts.iter().copied()).collect();
            let first = assign(assignor, &s, &p, &BTreeMap::new());
            let second = assign(assignor, &s, &p, &first);
            for a in [&first, &second] {
                let mut seen = BTreeSet::new();
                for (m, set) in a.iter() {
                    for tp in set {
                        prop_assert!(s[m].contains(&tp.0), "{m} got {tp:?} without subscribing");
                        prop_assert!(seen.insert(tp.clone()), "{tp:?} assigned twice");
                    }
                }
                let wanted: usize = p.iter().filter(|(t, _)| s.values().any(|x| x.contains(*t))).map(|(_, n)| *n as usize).sum();
                prop_assert_eq!(seen.len(), wanted);
                if !restrict && assignor != Assignor::Range {
                    let sz: Vec<usize> = a.values().map(|x| x.len()).collect();
                    prop_assert!(sz.iter().max().unwrap() - sz.iter().min().unwrap() <= 1, "unbalanced {sz:?}");
                }
            }
            if assignor == Assignor::Sticky {
                prop_assert_eq!(&first, &second, "sticky is stable when nothing changes");
            }
        }
    }
}
