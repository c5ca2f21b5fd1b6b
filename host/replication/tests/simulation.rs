//! A seeded, deterministic simulation of one partition replicated on three nodes: the leader
//! and followers driven by `sluice-replication`'s state machines, a controller that commits
//! in-sync set changes and elects leaders from the in-sync set, a network that delays, drops and
//! reorders messages, and nodes that crash (keeping their logs, as fsync'd disks do) and come
//! back. After every step the invariants of `docs/replication.md` are checked; at the end the
//! faults stop and every replica must converge on the leader's log.
//!
//! `SIM_SEEDS=N` runs more or fewer schedules (default 1,000; 20,000 take about a minute in a
//! debug build).

use std::collections::{BTreeMap, BTreeSet};

use sluice_replication::{
    EpochCache, FetchOutcome, FollowerAction, LeaderConfig, PartitionFollower, PartitionLeader,
};

type Epoch = u32;
type NodeId = u32;

const NODES: [NodeId; 3] = [1, 2, 3];
const CONFIG: LeaderConfig = LeaderConfig {
    lag_max_ms: 300,
    min_insync: 2,
};
/// A fetch unanswered this long (ms) is given up and sent again.
const FETCH_TIMEOUT: u64 = 150;
/// Records per fetch answer at most.
const MAX_BATCHES: usize = 4;

/// xorshift64*: deterministic per seed, no dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

enum Role {
    Leader(PartitionLeader),
    Follower(PartitionFollower),
}

struct Node {
    alive: bool,
    /// One record per batch: (leader epoch, value).
    log: Vec<(Epoch, u64)>,
    role: Option<Role>,
    /// When the fetch that is out was sent (one at a time, as a real follower does); a fetch
    /// unanswered for [`FETCH_TIMEOUT`] counts as lost.
    fetching: Option<u64>,
}

impl Node {
    fn epochs(&self) -> EpochCache {
        let mut c = EpochCache::new();
        for (i, (e, _)) in self.log.iter().enumerate() {
            c.assign(*e, i as u64);
        }
        c
    }
    fn hw(&self) -> u64 {
        match &self.role {
            Some(Role::Leader(l)) => l.high_watermark(),
            Some(Role::Follower(f)) => f.high_watermark(),
            None => 0,
        }
    }
}

enum Message {
    Fetch {
        from: NodeId,
        to: NodeId,
        leader_epoch: Epoch,
        fetch_offset: u64,
        last_fetched_epoch: Option<Epoch>,
    },
    Answer {
        to: NodeId,
        leader_epoch: Epoch,
        outcome: FetchOutcome,
        batches: Vec<(Epoch, u64)>,
    },
    Isr {
        from: NodeId,
        leader_epoch: Epoch,
        isr: Vec<NodeId>,
    },
}

struct Controller {
    epoch: Epoch,
    leader: Option<NodeId>,
    isr: BTreeSet<NodeId>,
    /// Every leader each epoch ever had (election safety).
    leaders: BTreeMap<Epoch, NodeId>,
}

struct Sim {
    rng: Rng,
    now: u64,
    nodes: BTreeMap<NodeId, Node>,
    controller: Controller,
    net: Vec<(u64, Message)>,
    next_value: u64,
    /// Writes waiting for the high watermark: (leader, epoch, offset, value).
    pending: Vec<(NodeId, Epoch, u64, u64)>,
    /// Acknowledged writes: offset -> value.
    acked: BTreeMap<u64, u64>,
    /// Each leader's high watermark, by epoch, to check it never goes back.
    hw_seen: BTreeMap<Epoch, u64>,
    faults: bool,
    /// The latest events, for a failure message.
    trace: std::collections::VecDeque<String>,
}

impl Sim {
    fn note(&mut self, event: String) {
        if self.trace.len() == 60 {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("t={} {event}", self.now));
    }

    fn new(seed: u64) -> Self {
        let nodes = NODES
            .iter()
            .map(|id| {
                (
                    *id,
                    Node {
                        alive: true,
                        log: Vec::new(),
                        role: None,
                        fetching: None,
                    },
                )
            })
            .collect();
        let mut sim = Sim {
            rng: Rng::new(seed),
            now: 0,
            nodes,
            controller: Controller {
                epoch: 0,
                leader: None,
                isr: NODES.iter().copied().collect(),
                leaders: BTreeMap::new(),
            },
            net: Vec::new(),
            next_value: 1,
            pending: Vec::new(),
            acked: BTreeMap::new(),
            hw_seen: BTreeMap::new(),
            faults: true,
            trace: std::collections::VecDeque::new(),
        };
        sim.elect();
        sim
    }

    /// The controller picks the first live in-sync replica (in replica order) and tells
    /// everyone; with none, the partition has no leader. The old leader leaves the in-sync set
    /// unless it is the last member.
    fn elect(&mut self) {
        let old = self.controller.leader.take();
        if let Some(old) = old
            && self.controller.isr.len() > 1
        {
            self.controller.isr.remove(&old);
        }
        let Some(new) = NODES
            .iter()
            .copied()
            .find(|id| self.controller.isr.contains(id) && self.nodes[id].alive)
        else {
            // Leaderless: every live node waits.
            for n in self.nodes.values_mut() {
                n.role = None;
            }
            return;
        };
        self.controller.epoch += 1;
        let epoch = self.controller.epoch;
        assert!(
            self.controller.leaders.insert(epoch, new).is_none(),
            "two leaders for epoch {epoch}"
        );
        self.controller.leader = Some(new);
        let isr = self.controller.isr.clone();
        let now = self.now;
        for (id, n) in self.nodes.iter_mut() {
            n.fetching = None;
            if !n.alive {
                n.role = None;
                continue;
            }
            let hw = n.hw();
            let leo = n.log.len() as u64;
            n.role = Some(if *id == new {
                Role::Leader(PartitionLeader::new(
                    new,
                    epoch,
                    &NODES,
                    isr.iter().copied(),
                    0,
                    leo,
                    hw,
                    now,
                    CONFIG,
                ))
            } else {
                Role::Follower(PartitionFollower::new(epoch, 0, leo, hw, n.epochs()))
            });
        }
        // Writes the old leader had not acknowledged are failed to their producers.
        self.pending.clear();
    }

    fn send(&mut self, msg: Message) {
        if self.faults && self.rng.chance(10) {
            return; // lost
        }
        let delay = 1 + self.rng.below(if self.faults { 60 } else { 5 });
        self.net.push((self.now + delay, msg));
    }

    fn step(&mut self) {
        self.now += 1 + self.rng.below(20);
        match self.rng.below(100) {
            0..=29 => self.produce(),
            30..=59 => self.fetches(),
            60..=89 => self.deliver(),
            90..=94 => self.isr_changes(),
            _ if self.faults => self.fault(),
            _ => {}
        }
        self.check();
    }

    fn produce(&mut self) {
        let Some(leader) = self.controller.leader else {
            return;
        };
        let value = self.next_value;
        let n = self.nodes.get_mut(&leader).expect("node");
        let Some(Role::Leader(l)) = &mut n.role else {
            return;
        };
        if l.check_acks_all(self.now).is_err() {
            return; // NotEnoughReplicas: nothing appended
        }
        self.next_value += 1;
        let epoch = l.epoch();
        n.log.push((epoch, value));
        let offset = n.log.len() as u64 - 1;
        l.on_appended(n.log.len() as u64);
        self.pending.push((leader, epoch, offset, value));
        self.acknowledge();
    }

    /// Every live follower without a fetch out sends one.
    fn fetches(&mut self) {
        let Some(leader) = self.controller.leader else {
            return;
        };
        let mut out = Vec::new();
        let now = self.now;
        for (id, n) in self.nodes.iter_mut() {
            if !n.alive || n.fetching.is_some_and(|at| now - at < FETCH_TIMEOUT) {
                continue;
            }
            if let Some(Role::Follower(f)) = &n.role {
                let p = f.position();
                n.fetching = Some(now);
                out.push(Message::Fetch {
                    from: *id,
                    to: leader,
                    leader_epoch: p.leader_epoch,
                    fetch_offset: p.fetch_offset,
                    last_fetched_epoch: p.last_fetched_epoch,
                });
            }
        }
        for m in out {
            self.send(m);
        }
    }

    /// Delivers the messages that are due, in an order the network chose.
    fn deliver(&mut self) {
        let now = self.now;
        let mut due = Vec::new();
        let mut i = 0;
        while i < self.net.len() {
            if self.net[i].0 <= now {
                due.push(self.net.swap_remove(i).1);
            } else {
                i += 1;
            }
        }
        for msg in due {
            self.handle(msg);
        }
    }

    fn handle(&mut self, msg: Message) {
        let now = self.now;
        match msg {
            Message::Fetch {
                from,
                to,
                leader_epoch,
                fetch_offset,
                last_fetched_epoch,
            } => {
                let n = self.nodes.get_mut(&to).expect("node");
                if !n.alive {
                    return;
                }
                let epochs = n.epochs();
                let Some(Role::Leader(l)) = &mut n.role else {
                    return;
                };
                if l.epoch() != leader_epoch {
                    return; // a fenced epoch: the follower learns the new one from metadata
                }
                let outcome = l.on_fetch(from, fetch_offset, last_fetched_epoch, &epochs, now);
                let hw_now = l.high_watermark();
                let batches = match &outcome {
                    FetchOutcome::Read { from, .. } => n
                        .log
                        .iter()
                        .skip(*from as usize)
                        .take(MAX_BATCHES)
                        .copied()
                        .collect(),
                    _ => Vec::new(),
                };
                let epoch = l.epoch();
                self.note(format!(
                    "leader {to} got fetch from {from} at {fetch_offset}: {outcome:?}, hw {hw_now}"
                ));
                self.acknowledge();
                self.send(Message::Answer {
                    to: from,
                    leader_epoch: epoch,
                    outcome,
                    batches,
                });
            }
            Message::Answer {
                to,
                leader_epoch,
                outcome,
                batches,
            } => {
                let n = self.nodes.get_mut(&to).expect("node");
                n.fetching = None;
                if !n.alive {
                    return;
                }
                let Some(Role::Follower(f)) = &mut n.role else {
                    return;
                };
                if f.position().leader_epoch != leader_epoch {
                    return;
                }
                match outcome {
                    FetchOutcome::Read { from, hw } => {
                        if n.log.len() as u64 != from {
                            return; // an answer to an older position
                        }
                        let got = batches.len();
                        let mut appended = Vec::new();
                        for (e, v) in batches {
                            let off = n.log.len() as u64;
                            n.log.push((e, v));
                            appended.push((e, off, off + 1));
                        }
                        f.on_appended(&appended, hw);
                        let len = n.log.len();
                        self.note(format!("node {to} appended {got} from {from}: log {len}"));
                    }
                    FetchOutcome::Diverging { epoch, end_offset } => {
                        let FollowerAction::Truncate { to } = f.on_diverging(epoch, end_offset)
                        else {
                            unreachable!("diverging answers truncate");
                        };
                        n.log.truncate(to as usize);
                    }
                    FetchOutcome::OutOfRange { log_start, log_end } => {
                        match f.on_out_of_range(log_start, log_end) {
                            FollowerAction::Truncate { to } => n.log.truncate(to as usize),
                            FollowerAction::Reset { .. } => n.log.clear(),
                        }
                    }
                    FetchOutcome::NotReplica => panic!("every node is a replica"),
                }
            }
            Message::Isr {
                from,
                leader_epoch,
                isr,
            } => {
                // The controller commits a change only from the current leader of its epoch.
                let current =
                    self.controller.leader == Some(from) && self.controller.epoch == leader_epoch;
                self.note(format!(
                    "isr proposal {isr:?} from {from}: committed {current}"
                ));
                let n = self.nodes.get_mut(&from).expect("node");
                let leader = match &mut n.role {
                    Some(Role::Leader(l)) if n.alive && l.epoch() == leader_epoch => Some(l),
                    _ => None,
                };
                if current {
                    self.controller.isr = isr.iter().copied().collect();
                    if let Some(l) = leader {
                        l.on_isr_committed(isr);
                    }
                    self.acknowledge();
                } else if let Some(l) = leader {
                    l.on_isr_refused();
                }
            }
        }
    }

    fn isr_changes(&mut self) {
        let Some(leader) = self.controller.leader else {
            return;
        };
        let now = self.now;
        let n = self.nodes.get_mut(&leader).expect("node");
        let Some(Role::Leader(l)) = &mut n.role else {
            return;
        };
        if let Some(p) = l.poll_isr_change(now) {
            let msg = Message::Isr {
                from: leader,
                leader_epoch: p.leader_epoch,
                isr: p.isr,
            };
            // Proposals to the controller travel the quorum, not this lossy link: they may be
            // late but are not lost (a lost one would be sent again in the real system).
            let delay = 1 + self.rng.below(30);
            self.net.push((self.now + delay, msg));
        }
    }

    fn fault(&mut self) {
        let id = NODES[self.rng.below(3) as usize];
        let alive = self.nodes[&id].alive;
        self.note(format!(
            "node {id} {}",
            if alive { "crashes" } else { "restarts" }
        ));
        if alive {
            // A crash: the log survives (fsync'd), the role and in-flight state do not.
            let n = self.nodes.get_mut(&id).expect("node");
            n.alive = false;
            n.role = None;
            n.fetching = None;
            if self.controller.leader == Some(id) {
                self.elect();
            }
        } else {
            // A restart: it follows the current leader, or leads if the partition waits for it.
            let epoch = self.controller.epoch;
            let n = self.nodes.get_mut(&id).expect("node");
            n.alive = true;
            n.fetching = None;
            let leo = n.log.len() as u64;
            n.role = Some(Role::Follower(PartitionFollower::new(
                epoch,
                0,
                leo,
                0,
                n.epochs(),
            )));
            if self.controller.leader.is_none() {
                self.elect();
            }
        }
    }

    /// Writes whose leader still leads in their epoch and whose offset is below its high
    /// watermark are acknowledged.
    fn acknowledge(&mut self) {
        let Some(leader) = self.controller.leader else {
            return;
        };
        let Some(Role::Leader(l)) = &self.nodes[&leader].role else {
            return;
        };
        let (epoch, hw) = (l.epoch(), l.high_watermark());
        let mut still = Vec::new();
        for w in self.pending.drain(..) {
            let (node, e, offset, value) = w;
            if node == leader && e == epoch && offset < hw {
                assert!(
                    self.acked.insert(offset, value).is_none(),
                    "offset {offset} acknowledged twice"
                );
            } else {
                still.push(w);
            }
        }
        self.pending = still;
    }

    fn check(&mut self) {
        let state = format!(
            "{}last events:\n{}",
            self.describe(),
            self.trace.iter().cloned().collect::<Vec<_>>().join("\n")
        );
        // Log matching: same offset and epoch means the same record and the same prefix.
        let logs: Vec<(&NodeId, &Vec<(Epoch, u64)>)> =
            self.nodes.iter().map(|(id, n)| (id, &n.log)).collect();
        for (i, (a, la)) in logs.iter().enumerate() {
            for (b, lb) in &logs[i + 1..] {
                let common = la.len().min(lb.len());
                if let Some(last_same) = (0..common).rev().find(|o| la[*o].0 == lb[*o].0) {
                    assert_eq!(
                        la[..=last_same],
                        lb[..=last_same],
                        "nodes {a} and {b} share epoch {} at offset {last_same} but differ before",
                        la[last_same].0
                    );
                }
            }
        }
        let Some(leader) = self.controller.leader else {
            return;
        };
        let n = &self.nodes[&leader];
        let Some(Role::Leader(l)) = &n.role else {
            return;
        };
        // The high watermark never goes back within an epoch and never passes an in-sync
        // member's log.
        let hw = l.high_watermark();
        let seen = self.hw_seen.entry(l.epoch()).or_insert(0);
        assert!(hw >= *seen, "hw went back in epoch {}", l.epoch());
        *seen = hw;
        for m in l.isr() {
            assert!(
                self.nodes[m].log.len() as u64 >= hw,
                "in-sync node {m} holds {} records, below the hw {hw}:\n{state}",
                self.nodes[m].log.len()
            );
        }
        // Committed durability: the leader holds every acknowledged write where it was put.
        for (offset, value) in &self.acked {
            assert_eq!(
                n.log.get(*offset as usize).map(|(_, v)| v),
                Some(value),
                "acknowledged offset {offset} lost on leader {leader} (epoch {})",
                l.epoch()
            );
        }
    }

    /// The state, for a failure message.
    fn describe(&self) -> String {
        let mut out = format!(
            "controller: epoch {} leader {:?} isr {:?}; {} messages in flight\n",
            self.controller.epoch,
            self.controller.leader,
            self.controller.isr,
            self.net.len()
        );
        for (id, n) in &self.nodes {
            let role = match &n.role {
                Some(Role::Leader(l)) => format!(
                    "leader epoch {} hw {} isr {:?}",
                    l.epoch(),
                    l.high_watermark(),
                    l.isr()
                ),
                Some(Role::Follower(f)) => {
                    format!("follower {:?} hw {}", f.position(), f.high_watermark())
                }
                None => "none".into(),
            };
            out += &format!(
                "node {id}: alive {} fetching {:?} log {} epochs {:?}; {role}\n",
                n.alive,
                n.fetching,
                n.log.len(),
                n.epochs().entries()
            );
        }
        out
    }

    /// Faults off, every node up, until the replicas converge (bounded).
    fn heal(&mut self) -> bool {
        self.faults = false;
        for id in NODES {
            if !self.nodes[&id].alive {
                let epoch = self.controller.epoch;
                let n = self.nodes.get_mut(&id).expect("node");
                n.alive = true;
                let leo = n.log.len() as u64;
                n.role = Some(Role::Follower(PartitionFollower::new(
                    epoch,
                    0,
                    leo,
                    0,
                    n.epochs(),
                )));
            }
        }
        if self.controller.leader.is_none() {
            self.elect();
        }
        for _ in 0..5_000 {
            self.step();
            let Some(leader) = self.controller.leader else {
                continue;
            };
            let log = &self.nodes[&leader].log;
            let converged = self.nodes.values().all(|n| &n.log == log)
                && self.nodes[&leader].hw() == log.len() as u64;
            if converged {
                return true;
            }
        }
        false
    }
}

#[test]
fn thousands_of_schedules_keep_every_invariant() {
    let seeds: u64 = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000);
    let mut acked_total = 0;
    let mut elections = 0;
    /// Names the schedule that failed.
    struct Seed(u64);
    impl Drop for Seed {
        fn drop(&mut self) {
            if std::thread::panicking() {
                eprintln!("failing schedule: seed {}", self.0);
            }
        }
    }
    for seed in 0..seeds {
        let _seed = Seed(seed);
        let mut sim = Sim::new(seed);
        for _ in 0..400 {
            sim.step();
        }
        assert!(
            sim.heal(),
            "seed {seed}: the replicas did not converge once healed:\n{}",
            sim.describe()
        );
        // Everything acknowledged is in the converged log.
        let leader = sim.controller.leader.expect("a leader after healing");
        let log = &sim.nodes[&leader].log;
        for (offset, value) in &sim.acked {
            assert_eq!(
                log[*offset as usize].1, *value,
                "seed {seed}: offset {offset}"
            );
        }
        acked_total += sim.acked.len();
        elections += u64::from(sim.controller.epoch);
    }
    assert!(
        acked_total > 0 && elections > seeds,
        "the schedules did something"
    );
    println!("{seeds} schedules: {acked_total} writes acknowledged, {elections} elections");
}
