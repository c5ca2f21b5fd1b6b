//! Groups, members and the heartbeat protocol. See the crate docs.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::assignor::{self, Assignment, Assignor, TopicPartition};
use crate::records::{GroupRecord, MemberRecord, RecordKey, RecordValue};

/// `member_epoch` in a heartbeat that leaves the group.
pub const LEAVE_EPOCH: i32 = -1;
/// `member_epoch` of a static member that stops for a while: it keeps its partitions until
/// its session times out, so a quick restart causes no rebalance.
pub const STATIC_LEAVE_EPOCH: i32 = -2;

const MIN_SESSION_MS: u32 = 1_000;
const MAX_SESSION_MS: u32 = 300_000;

/// A record to persist: `None` deletes the key.
pub type Change = (RecordKey, Option<RecordValue>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatRequest {
    /// `None` (with epoch 0) to join.
    pub member_id: Option<String>,
    /// Static membership: an id that survives restarts.
    pub instance_id: Option<String>,
    pub client_id: String,
    /// 0 to join, the last epoch received otherwise, [`LEAVE_EPOCH`] or [`STATIC_LEAVE_EPOCH`].
    pub member_epoch: i32,
    /// Topics subscribed; `None` keeps the previous subscription.
    pub subscribed: Option<BTreeSet<String>>,
    /// Strategy wanted; the first member's choice sets the group's.
    pub assignor: Option<Assignor>,
    /// Partitions the member currently owns (still consuming).
    pub owned: Option<Assignment>,
    pub session_timeout_ms: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatReply {
    pub member_id: String,
    pub member_epoch: i32,
    /// What the member may own now. Partitions it owns that are missing here must be
    /// revoked (commit, stop) and the next heartbeat must no longer report them.
    pub assignment: Assignment,
    /// Partitions the target gives this member that another member has not yet released.
    pub pending: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupError {
    /// The coordinator does not know this member (expired or never joined): rejoin with epoch 0.
    UnknownMember(String),
    /// The group does not exist.
    UnknownGroup(String),
    /// The operation needs a group without members.
    NotEmpty { group: String, members: usize },
    /// A commit for partitions the member does not hold.
    NotOwner {
        member: String,
        topic: String,
        partition: u32,
    },
    /// The request makes no sense (the message says why).
    Invalid(String),
}

impl std::fmt::Display for GroupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GroupError::UnknownMember(m) => write!(
                f,
                "member {m:?} is not in the group (its session expired?); rejoin"
            ),
            GroupError::UnknownGroup(g) => write!(f, "group {g:?} does not exist"),
            GroupError::NotEmpty { group, members } => {
                write!(
                    f,
                    "group {group:?} has {members} active member(s); stop them first"
                )
            }
            GroupError::NotOwner {
                member,
                topic,
                partition,
            } => {
                write!(
                    f,
                    "member {member:?} does not own {topic}/{partition}; it cannot commit its offset"
                )
            }
            GroupError::Invalid(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for GroupError {}

#[derive(Debug, Clone)]
struct Member {
    instance_id: Option<String>,
    client_id: String,
    subscribed: BTreeSet<String>,
    assigned: Assignment,
    /// Last reported ownership.
    owned: Assignment,
    member_epoch: u32,
    session_timeout_ms: u32,
    deadline: Instant,
}

impl Member {
    fn record(&self) -> RecordValue {
        RecordValue::Member(MemberRecord {
            instance_id: self.instance_id.clone(),
            client_id: self.client_id.clone(),
            subscribed: self.subscribed.clone(),
            assigned: self.assigned.clone(),
            member_epoch: self.member_epoch,
            session_timeout_ms: self.session_timeout_ms,
        })
    }

    fn holds(&self, tp: &TopicPartition) -> bool {
        self.assigned.contains(tp) || self.owned.contains(tp)
    }
}

#[derive(Debug, Clone, Default)]
struct Group {
    epoch: u32,
    assignor: Assignor,
    next_member: u64,
    members: BTreeMap<String, Member>,
    offsets: BTreeMap<TopicPartition, u64>,
    /// Target assignment, and the group epoch and partition counts it was computed for.
    target: BTreeMap<String, Assignment>,
    target_for: Option<(u32, BTreeMap<String, u32>)>,
}

impl Group {
    fn meta_record(&self) -> RecordValue {
        RecordValue::Group(GroupRecord {
            epoch: self.epoch,
            assignor: self.assignor,
            next_member: self.next_member,
        })
    }

    fn refresh_target(&mut self, partitions: &BTreeMap<String, u32>) {
        let subscribed: BTreeSet<&String> =
            self.members.values().flat_map(|m| &m.subscribed).collect();
        let relevant: BTreeMap<String, u32> = partitions
            .iter()
            .filter(|(t, _)| subscribed.contains(t))
            .map(|(t, n)| (t.clone(), *n))
            .collect();
        if self.target_for.as_ref() == Some(&(self.epoch, relevant.clone())) {
            return;
        }
        let subs: BTreeMap<String, BTreeSet<String>> = self
            .members
            .iter()
            .map(|(id, m)| (id.clone(), m.subscribed.clone()))
            .collect();
        // Sticky starts from what members hold now, so restarts and joins move little.
        let previous: BTreeMap<String, Assignment> = if self.target.is_empty() {
            self.members
                .iter()
                .map(|(id, m)| (id.clone(), m.assigned.clone()))
                .collect()
        } else {
            self.target.clone()
        };
        self.target = assignor::assign(self.assignor, &subs, &relevant, &previous);
        self.target_for = Some((self.epoch, relevant));
    }

    /// Moves `member` towards its target: keeps what the target still gives it, drops what it
    /// does not, and adds target partitions no other member holds. Returns whether the
    /// assignment changed, and how many target partitions are still held by others.
    fn reconcile(&mut self, member_id: &str) -> (bool, usize) {
        let target = self.target.get(member_id).cloned().unwrap_or_default();
        let others_hold = |tp: &TopicPartition, members: &BTreeMap<String, Member>| {
            members.iter().any(|(id, m)| id != member_id && m.holds(tp))
        };
        let current = &self.members[member_id].assigned;
        let mut next: Assignment = current.intersection(&target).cloned().collect();
        let mut pending = 0;
        for tp in target.difference(current) {
            if others_hold(tp, &self.members) {
                pending += 1;
            } else {
                next.insert(tp.clone());
            }
        }
        let m = self.members.get_mut(member_id).expect("member present");
        if next != m.assigned {
            m.assigned = next;
            m.member_epoch += 1;
            (true, pending)
        } else {
            (false, pending)
        }
    }
}

/// A group as `group list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSummary {
    pub group: String,
    pub epoch: u32,
    pub assignor: Assignor,
    pub members: Vec<MemberSummary>,
    pub offsets: BTreeMap<TopicPartition, u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSummary {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub member_epoch: u32,
    pub subscribed: BTreeSet<String>,
    pub assigned: Assignment,
}

/// Every group this coordinator is responsible for.
#[derive(Debug, Default)]
pub struct Groups {
    groups: BTreeMap<String, Group>,
}

fn clamp_session(ms: u32) -> u32 {
    ms.clamp(MIN_SESSION_MS, MAX_SESSION_MS)
}

impl Groups {
    pub fn new() -> Self {
        Self::default()
    }

    /// Handles a member's heartbeat. `partitions` holds the partition count of every topic.
    pub fn heartbeat(
        &mut self,
        now: Instant,
        group_name: &str,
        req: HeartbeatRequest,
        partitions: &BTreeMap<String, u32>,
    ) -> Result<(HeartbeatReply, Vec<Change>), GroupError> {
        let mut changes = Vec::new();
        let group = self.groups.entry(group_name.to_owned()).or_default();
        let session = clamp_session(req.session_timeout_ms);
        let mut membership_changed = false;

        let member_id = match (req.member_epoch, &req.member_id) {
            (LEAVE_EPOCH, Some(id)) | (STATIC_LEAVE_EPOCH, Some(id)) => {
                let Some(m) = group.members.get_mut(id) else {
                    return Err(GroupError::UnknownMember(id.clone()));
                };
                if req.member_epoch == STATIC_LEAVE_EPOCH && m.instance_id.is_some() {
                    // Keeps its partitions until the session times out; owns nothing meanwhile.
                    m.owned.clear();
                    return Ok((
                        HeartbeatReply {
                            member_id: id.clone(),
                            member_epoch: STATIC_LEAVE_EPOCH,
                            assignment: Assignment::new(),
                            pending: 0,
                        },
                        changes,
                    ));
                }
                group.members.remove(id);
                group.epoch += 1;
                changes.push((
                    RecordKey::Member {
                        group: group_name.into(),
                        member_id: id.clone(),
                    },
                    None,
                ));
                changes.push((
                    RecordKey::Group {
                        group: group_name.into(),
                    },
                    Some(group.meta_record()),
                ));
                return Ok((
                    HeartbeatReply {
                        member_id: id.clone(),
                        member_epoch: LEAVE_EPOCH,
                        assignment: Assignment::new(),
                        pending: 0,
                    },
                    changes,
                ));
            }
            (0, _) => {
                // May be empty: a pattern that matches no topic yet.
                let subscribed = req.subscribed.clone().ok_or_else(|| {
                    GroupError::Invalid(
                        "a member joining a group must say what it subscribes to".into(),
                    )
                })?;
                if group.members.is_empty()
                    && let Some(a) = req.assignor
                {
                    group.assignor = a;
                }
                // A static member coming back takes over its old identity and partitions.
                let existing = req
                    .instance_id
                    .as_ref()
                    .and_then(|inst| {
                        group
                            .members
                            .iter()
                            .find(|(_, m)| m.instance_id.as_ref() == Some(inst))
                    })
                    .map(|(id, _)| id.clone());
                match existing {
                    Some(id) => {
                        let m = group.members.get_mut(&id).expect("found above");
                        m.owned = req.owned.clone().unwrap_or_default();
                        m.deadline = now + Duration::from_millis(u64::from(session));
                        m.session_timeout_ms = session;
                        m.client_id = req.client_id.clone();
                        if m.subscribed != subscribed {
                            m.subscribed = subscribed;
                            membership_changed = true;
                        }
                        id
                    }
                    None => {
                        group.next_member += 1;
                        let id = req.member_id.clone().unwrap_or_else(|| {
                            format!(
                                "{}-{}-{}",
                                sanitize(&req.client_id),
                                group.epoch + 1,
                                group.next_member
                            )
                        });
                        group.members.insert(
                            id.clone(),
                            Member {
                                instance_id: req.instance_id.clone(),
                                client_id: req.client_id.clone(),
                                subscribed,
                                assigned: Assignment::new(),
                                owned: Assignment::new(),
                                member_epoch: 0,
                                session_timeout_ms: session,
                                deadline: now + Duration::from_millis(u64::from(session)),
                            },
                        );
                        membership_changed = true;
                        id
                    }
                }
            }
            (e, Some(id)) if e > 0 => {
                let Some(m) = group.members.get_mut(id) else {
                    return Err(GroupError::UnknownMember(id.clone()));
                };
                m.deadline = now + Duration::from_millis(u64::from(session));
                m.session_timeout_ms = session;
                if let Some(owned) = &req.owned {
                    m.owned = owned.clone();
                }
                if let Some(s) = req.subscribed.clone()
                    && s != m.subscribed
                {
                    m.subscribed = s;
                    membership_changed = true;
                }
                id.clone()
            }
            _ => {
                return Err(GroupError::Invalid(format!(
                    "member epoch {} without a member id",
                    req.member_epoch
                )));
            }
        };
        if membership_changed {
            group.epoch += 1;
            changes.push((
                RecordKey::Group {
                    group: group_name.into(),
                },
                Some(group.meta_record()),
            ));
        }
        group.refresh_target(partitions);
        let (changed, pending) = group.reconcile(&member_id);
        let m = &group.members[&member_id];
        if changed || membership_changed {
            changes.push((
                RecordKey::Member {
                    group: group_name.into(),
                    member_id: member_id.clone(),
                },
                Some(m.record()),
            ));
        }
        Ok((
            HeartbeatReply {
                member_id: member_id.clone(),
                member_epoch: m.member_epoch as i32,
                assignment: m.assigned.clone(),
                pending,
            },
            changes,
        ))
    }

    /// Removes members whose session expired; their partitions become free.
    pub fn expire(&mut self, now: Instant) -> Vec<Change> {
        let mut changes = Vec::new();
        for (name, group) in &mut self.groups {
            let expired: Vec<String> = group
                .members
                .iter()
                .filter(|(_, m)| m.deadline <= now)
                .map(|(id, _)| id.clone())
                .collect();
            if expired.is_empty() {
                continue;
            }
            for id in expired {
                group.members.remove(&id);
                changes.push((
                    RecordKey::Member {
                        group: name.clone(),
                        member_id: id,
                    },
                    None,
                ));
            }
            group.epoch += 1;
            changes.push((
                RecordKey::Group {
                    group: name.clone(),
                },
                Some(group.meta_record()),
            ));
        }
        changes
    }

    /// Records committed offsets. A member may commit only partitions it holds; a commit
    /// without a member id is allowed only while the group has no members.
    pub fn commit(
        &mut self,
        group_name: &str,
        member_id: Option<&str>,
        offsets: &[(String, u32, u64)],
        now_ms: i64,
    ) -> Result<Vec<Change>, GroupError> {
        let group = self.groups.entry(group_name.to_owned()).or_default();
        match member_id {
            Some(id) => {
                let m = group
                    .members
                    .get(id)
                    .ok_or_else(|| GroupError::UnknownMember(id.to_owned()))?;
                for (t, p, _) in offsets {
                    if !m.holds(&(t.clone(), *p)) {
                        return Err(GroupError::NotOwner {
                            member: id.to_owned(),
                            topic: t.clone(),
                            partition: *p,
                        });
                    }
                }
            }
            None if !group.members.is_empty() => {
                return Err(GroupError::NotEmpty {
                    group: group_name.to_owned(),
                    members: group.members.len(),
                });
            }
            None => {}
        }
        let mut changes = Vec::with_capacity(offsets.len() + 1);
        if group.offsets.is_empty() && group.members.is_empty() {
            changes.push((
                RecordKey::Group {
                    group: group_name.into(),
                },
                Some(group.meta_record()),
            ));
        }
        for (t, p, o) in offsets {
            group.offsets.insert((t.clone(), *p), *o);
            changes.push((
                RecordKey::Offset {
                    group: group_name.into(),
                    topic: t.clone(),
                    partition: *p,
                },
                Some(RecordValue::Offset {
                    offset: *o,
                    commit_time_ms: now_ms,
                }),
            ));
        }
        Ok(changes)
    }

    /// Committed offsets of a group (all, or those asked for).
    pub fn committed(&self, group: &str) -> BTreeMap<TopicPartition, u64> {
        self.groups
            .get(group)
            .map(|g| g.offsets.clone())
            .unwrap_or_default()
    }

    pub fn describe(&self, group: &str) -> Option<GroupSummary> {
        let g = self.groups.get(group)?;
        Some(GroupSummary {
            group: group.to_owned(),
            epoch: g.epoch,
            assignor: g.assignor,
            members: g
                .members
                .iter()
                .map(|(id, m)| MemberSummary {
                    member_id: id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    member_epoch: m.member_epoch,
                    subscribed: m.subscribed.clone(),
                    assigned: m.assigned.clone(),
                })
                .collect(),
            offsets: g.offsets.clone(),
        })
    }

    pub fn names(&self) -> Vec<String> {
        self.groups.keys().cloned().collect()
    }

    /// Forgets, in memory only, the groups `gone` selects (their coordinator moved away: the
    /// records stay in the offsets topic for the next coordinator to load). Returns how many.
    pub fn unload(&mut self, gone: impl Fn(&str) -> bool) -> usize {
        let before = self.groups.len();
        self.groups.retain(|name, _| !gone(name));
        before - self.groups.len()
    }

    /// Sets committed offsets while the group is empty (`group reset-offsets`).
    pub fn reset(
        &mut self,
        group_name: &str,
        offsets: &[(String, u32, u64)],
        now_ms: i64,
    ) -> Result<Vec<Change>, GroupError> {
        let g = self
            .groups
            .get(group_name)
            .ok_or_else(|| GroupError::UnknownGroup(group_name.to_owned()))?;
        if !g.members.is_empty() {
            return Err(GroupError::NotEmpty {
                group: group_name.to_owned(),
                members: g.members.len(),
            });
        }
        self.commit(group_name, None, offsets, now_ms)
    }

    /// Deletes an empty group and its offsets.
    pub fn delete(&mut self, group_name: &str) -> Result<Vec<Change>, GroupError> {
        let g = self
            .groups
            .get(group_name)
            .ok_or_else(|| GroupError::UnknownGroup(group_name.to_owned()))?;
        if !g.members.is_empty() {
            return Err(GroupError::NotEmpty {
                group: group_name.to_owned(),
                members: g.members.len(),
            });
        }
        let g = self.groups.remove(group_name).expect("checked above");
        let mut changes: Vec<Change> = g
            .offsets
            .keys()
            .map(|(t, p)| {
                (
                    RecordKey::Offset {
                        group: group_name.into(),
                        topic: t.clone(),
                        partition: *p,
                    },
                    None,
                )
            })
            .collect();
        changes.push((
            RecordKey::Group {
                group: group_name.into(),
            },
            None,
        ));
        Ok(changes)
    }

    /// Forgets every committed offset of the topics `gone` selects, in every group: a
    /// deleted topic's offsets must not carry over to a topic created again under its name
    /// (Kafka drops them too). Returns the tombstones to persist.
    pub fn drop_offsets(&mut self, gone: impl Fn(&str) -> bool) -> Vec<Change> {
        let mut changes = Vec::new();
        for (name, g) in &mut self.groups {
            g.offsets.retain(|(topic, partition), _| {
                if !gone(topic) {
                    return true;
                }
                changes.push((
                    RecordKey::Offset {
                        group: name.clone(),
                        topic: topic.clone(),
                        partition: *partition,
                    },
                    None,
                ));
                false
            });
        }
        changes
    }

    /// Every live record of the groups `keep` selects — what compaction writes again so the
    /// records before it can be dropped. Replaying it alone rebuilds the same state.
    pub fn snapshot(&self, keep: impl Fn(&str) -> bool) -> Vec<Change> {
        let mut out = Vec::new();
        for (name, g) in self.groups.iter().filter(|(n, _)| keep(n)) {
            out.push((
                RecordKey::Group {
                    group: name.clone(),
                },
                Some(g.meta_record()),
            ));
            for (id, m) in &g.members {
                out.push((
                    RecordKey::Member {
                        group: name.clone(),
                        member_id: id.clone(),
                    },
                    Some(m.record()),
                ));
            }
            for ((topic, partition), offset) in &g.offsets {
                out.push((
                    RecordKey::Offset {
                        group: name.clone(),
                        topic: topic.clone(),
                        partition: *partition,
                    },
                    // The commit time is not kept in memory; compaction records when it ran.
                    Some(RecordValue::Offset {
                        offset: *offset,
                        commit_time_ms: 0,
                    }),
                ));
            }
        }
        out
    }

    /// Rebuilds state from one persisted record (in log order). Members restored this way
    /// get a fresh session starting at `now`.
    pub fn apply_record(&mut self, now: Instant, key: RecordKey, value: Option<RecordValue>) {
        let name = key.group().to_owned();
        match (key, value) {
            (RecordKey::Group { .. }, Some(RecordValue::Group(r))) => {
                let g = self.groups.entry(name).or_default();
                g.epoch = r.epoch;
                g.assignor = r.assignor;
                g.next_member = r.next_member;
            }
            (RecordKey::Group { .. }, None) => {
                self.groups.remove(&name);
            }
            (RecordKey::Member { member_id, .. }, Some(RecordValue::Member(r))) => {
                let g = self.groups.entry(name).or_default();
                g.members.insert(
                    member_id,
                    Member {
                        instance_id: r.instance_id,
                        client_id: r.client_id,
                        subscribed: r.subscribed,
                        // After a restart the member may still be consuming what it had.
                        owned: r.assigned.clone(),
                        assigned: r.assigned,
                        member_epoch: r.member_epoch,
                        session_timeout_ms: r.session_timeout_ms,
                        deadline: now + Duration::from_millis(u64::from(r.session_timeout_ms)),
                    },
                );
            }
            (RecordKey::Member { member_id, .. }, None) => {
                if let Some(g) = self.groups.get_mut(&name) {
                    g.members.remove(&member_id);
                }
            }
            (
                RecordKey::Offset {
                    topic, partition, ..
                },
                Some(RecordValue::Offset { offset, .. }),
            ) => {
                self.groups
                    .entry(name)
                    .or_default()
                    .offsets
                    .insert((topic, partition), offset);
            }
            (
                RecordKey::Offset {
                    topic, partition, ..
                },
                None,
            ) => {
                if let Some(g) = self.groups.get_mut(&name) {
                    g.offsets.remove(&(topic, partition));
                }
            }
            // A key with a value of another kind: written by a newer version; ignore.
            _ => {}
        }
    }
}

fn sanitize(client_id: &str) -> String {
    let s: String = client_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(32)
        .collect();
    if s.is_empty() { "member".into() } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts() -> BTreeMap<String, u32> {
        [("t".to_string(), 6)].into_iter().collect()
    }

    fn join(groups: &mut Groups, now: Instant, client: &str) -> HeartbeatReply {
        let req = HeartbeatRequest {
            member_id: None,
            instance_id: None,
            client_id: client.into(),
            member_epoch: 0,
            subscribed: Some(["t".to_string()].into_iter().collect()),
            assignor: None,
            owned: Some(Assignment::new()),
            session_timeout_ms: 10_000,
        };
        groups.heartbeat(now, "g", req, &parts()).unwrap().0
    }

    fn beat(
        groups: &mut Groups,
        now: Instant,
        r: &HeartbeatReply,
        owned: &Assignment,
    ) -> HeartbeatReply {
        let req = HeartbeatRequest {
            member_id: Some(r.member_id.clone()),
            instance_id: None,
            client_id: "c".into(),
            member_epoch: r.member_epoch.max(1),
            subscribed: None,
            assignor: None,
            owned: Some(owned.clone()),
            session_timeout_ms: 10_000,
        };
        groups.heartbeat(now, "g", req, &parts()).unwrap().0
    }

    /// Drives members that immediately adopt what they are given, until nothing changes.
    fn settle(
        groups: &mut Groups,
        now: Instant,
        members: &mut [HeartbeatReply],
        owned: &mut [Assignment],
    ) {
        for _ in 0..10 {
            let mut changed = false;
            for i in 0..members.len() {
                let r = beat(groups, now, &members[i], &owned[i]);
                // Invariant: nobody is given a partition another member still owns.
                for (j, o) in owned.iter().enumerate() {
                    if j != i {
                        assert!(
                            r.assignment.is_disjoint(o),
                            "handed out a partition still owned elsewhere"
                        );
                    }
                }
                if r.assignment != owned[i] {
                    changed = true;
                }
                owned[i] = r.assignment.clone();
                members[i] = r;
            }
            if !changed {
                return;
            }
        }
    }

    #[test]
    fn join_rebalance_and_leave() {
        let now = Instant::now();
        let mut g = Groups::new();
        let a = join(&mut g, now, "a");
        assert_eq!(a.assignment.len(), 6);
        let mut members = vec![a.clone()];
        let mut owned = vec![a.assignment.clone()];
        // b joins: gets nothing until a releases.
        let b = join(&mut g, now, "b");
        assert!(b.assignment.is_empty());
        assert_eq!(b.pending, 3);
        members.push(b);
        owned.push(Assignment::new());
        settle(&mut g, now, &mut members, &mut owned);
        assert_eq!(owned[0].len(), 3);
        assert_eq!(owned[1].len(), 3);
        assert!(owned[0].is_disjoint(&owned[1]));
        // a leaves: b gets all six.
        let leave = HeartbeatRequest {
            member_id: Some(members[0].member_id.clone()),
            instance_id: None,
            client_id: "a".into(),
            member_epoch: LEAVE_EPOCH,
            subscribed: None,
            assignor: None,
            owned: None,
            session_timeout_ms: 10_000,
        };
        g.heartbeat(now, "g", leave, &parts()).unwrap();
        let b = beat(&mut g, now, &members[1], &owned[1]);
        assert_eq!(b.assignment.len(), 6);
    }

    #[test]
    fn expired_members_release_their_partitions() {
        let now = Instant::now();
        let mut g = Groups::new();
        let a = join(&mut g, now, "a");
        let b = join(&mut g, now, "b");
        let mut members = vec![a.clone(), b];
        let mut owned = vec![a.assignment.clone(), Assignment::new()];
        settle(&mut g, now, &mut members, &mut owned);
        let later = now + Duration::from_secs(5);
        let b = beat(&mut g, later, &members[1], &owned[1]);
        assert_eq!(b.assignment.len(), 3);
        let changes = g.expire(now + Duration::from_secs(11));
        assert!(
            changes
                .iter()
                .any(|(k, v)| matches!(k, RecordKey::Member { .. }) && v.is_none())
        );
        let b = beat(&mut g, now + Duration::from_secs(11), &b, &owned[1]);
        assert_eq!(b.assignment.len(), 6);
    }

    #[test]
    fn commits_only_from_owners_and_state_survives_replay() {
        let now = Instant::now();
        let mut g = Groups::new();
        let a = join(&mut g, now, "a");
        let mut log: Vec<Change> = Vec::new();
        let tp = a.assignment.iter().next().unwrap().clone();
        log.extend(
            g.commit("g", Some(&a.member_id), &[(tp.0.clone(), tp.1, 42)], 1)
                .unwrap(),
        );
        assert!(matches!(
            g.commit("g", Some(&a.member_id), &[("other".into(), 0, 1)], 1),
            Err(GroupError::NotOwner { .. })
        ));
        assert!(matches!(
            g.commit("g", None, &[("t".into(), 0, 1)], 1),
            Err(GroupError::NotEmpty { .. })
        ));
        assert!(matches!(
            g.reset("g", &[("t".into(), 0, 1)], 1),
            Err(GroupError::NotEmpty { .. })
        ));
        // Rebuild from the records a real coordinator would have written.
        let mut all: Vec<Change> = Vec::new();
        let mut g2 = Groups::new();
        let r = g2
            .heartbeat(
                now,
                "g",
                HeartbeatRequest {
                    member_id: None,
                    instance_id: None,
                    client_id: "a".into(),
                    member_epoch: 0,
                    subscribed: Some(["t".to_string()].into_iter().collect()),
                    assignor: None,
                    owned: None,
                    session_timeout_ms: 10_000,
                },
                &parts(),
            )
            .unwrap();
        all.extend(r.1);
        all.extend(
            g2.commit("g", Some(&r.0.member_id), &[("t".into(), 2, 7)], 1)
                .unwrap(),
        );
        let mut replayed = Groups::new();
        for (k, v) in all {
            replayed.apply_record(now, k, v);
        }
        assert_eq!(replayed.committed("g"), g2.committed("g"));
        assert_eq!(
            replayed.describe("g").unwrap().members,
            g2.describe("g").unwrap().members
        );
        let _ = log;
    }

    #[test]
    fn snapshot_replays_to_the_same_state() {
        let now = Instant::now();
        let mut g = Groups::new();
        let a = join(&mut g, now, "a");
        let _ = join(&mut g, now, "b");
        let tp = a.assignment.iter().next().unwrap().clone();
        g.commit("g", Some(&a.member_id), &[(tp.0.clone(), tp.1, 5)], 1)
            .unwrap();
        let mut replayed = Groups::new();
        for (k, v) in g.snapshot(|_| true) {
            replayed.apply_record(now, k, v);
        }
        assert_eq!(replayed.describe("g"), g.describe("g"));
        assert!(g.snapshot(|name| name != "g").is_empty());
    }

    #[test]
    fn static_member_returns_without_rebalance() {
        let now = Instant::now();
        let mut g = Groups::new();
        let mk = |epoch: i32, id: Option<String>| HeartbeatRequest {
            member_id: id,
            instance_id: Some("worker-1".into()),
            client_id: "w".into(),
            member_epoch: epoch,
            subscribed: Some(["t".to_string()].into_iter().collect()),
            assignor: None,
            owned: Some(Assignment::new()),
            session_timeout_ms: 10_000,
        };
        let (r, _) = g.heartbeat(now, "g", mk(0, None), &parts()).unwrap();
        let epoch = g.describe("g").unwrap().epoch;
        g.heartbeat(
            now,
            "g",
            mk(STATIC_LEAVE_EPOCH, Some(r.member_id.clone())),
            &parts(),
        )
        .unwrap();
        let (back, _) = g.heartbeat(now, "g", mk(0, None), &parts()).unwrap();
        assert_eq!(back.member_id, r.member_id);
        assert_eq!(back.assignment, r.assignment);
        assert_eq!(g.describe("g").unwrap().epoch, epoch, "no rebalance");
    }
    #[test]
    fn offsets_of_deleted_topics_are_dropped_durably() {
        let now = Instant::now();
        let mut g = Groups::new();
        let mut log: Vec<Change> = Vec::new();
        for group in ["g", "h"] {
            log.extend(
                g.commit(
                    group,
                    None,
                    &[("t".into(), 0, 50), ("t".into(), 1, 7), ("u".into(), 0, 3)],
                    1,
                )
                .unwrap(),
            );
        }
        let dropped = g.drop_offsets(|topic| topic == "t");
        assert_eq!(dropped.len(), 4, "two partitions of t in two groups");
        assert!(
            dropped.iter().all(|(k, v)| v.is_none()
                && matches!(k, RecordKey::Offset { topic, .. } if topic == "t"))
        );
        for group in ["g", "h"] {
            assert_eq!(
                g.committed(group).into_iter().collect::<Vec<_>>(),
                [(("u".to_string(), 0), 3)],
                "only u's offset is left in {group}"
            );
        }
        assert!(
            g.drop_offsets(|topic| topic == "t").is_empty(),
            "nothing left"
        );
        // The tombstones replay: state rebuilt from the whole log agrees.
        log.extend(dropped);
        let mut replayed = Groups::new();
        for (k, v) in log {
            replayed.apply_record(now, k, v);
        }
        assert_eq!(replayed.committed("g"), g.committed("g"));
        assert_eq!(replayed.committed("h"), g.committed("h"));
        assert_eq!(replayed.names(), ["g", "h"], "the groups themselves stay");
    }
}
