//! Consumer group membership for a [`crate::Consumer`]: a background heartbeat task, and the
//! reconciliation the consumer runs in `poll`.
//!
//! The coordinator computes each member's assignment (KIP-848 style). The heartbeat task sends
//! what the consumer owns and receives what it may own. `poll` reconciles: partitions no longer
//! given are revoked — positions committed, fetching stopped, a `Revoked` event queued — and
//! only then reported as released; new partitions start from their committed offsets (or the
//! reset policy) with an `Assigned` event. The coordinator hands a partition to a new owner only
//! after the old owner reported it released, so no partition is ever read by two members.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_proto::{
    ErrorCode, GroupHeartbeatRequest, Request, ResponseBody, TopicPartitions, member_epoch,
};
use tokio::sync::Notify;
use tracing::{debug, warn};

use crate::client::unexpected;
use crate::{Client, ClientError};

/// Settings of a consumer group member. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct GroupOptions {
    /// Without a heartbeat for this long, the coordinator removes the member and reassigns its
    /// partitions (default 10 s).
    pub session_timeout: Duration,
    /// `range`, `round-robin` or `sticky`; `None` leaves the group's choice (default sticky).
    pub assignor: Option<String>,
    /// Static membership: a stable id; a member restarting with it within its session gets
    /// its partitions back without a rebalance.
    pub instance_id: Option<String>,
    /// Commit positions automatically this often, inside `poll` (default 5 s); `None` to
    /// commit only when asked.
    pub auto_commit_interval: Option<Duration>,
    /// A consumer that does not call `poll` for this long leaves the group, so its partitions
    /// go to members that make progress (default 5 min).
    pub max_poll_interval: Duration,
}

impl Default for GroupOptions {
    fn default() -> Self {
        GroupOptions {
            session_timeout: Duration::from_secs(10),
            assignor: None,
            instance_id: None,
            auto_commit_interval: Some(Duration::from_secs(5)),
            max_poll_interval: Duration::from_secs(300),
        }
    }
}

/// A change of a group member's partitions, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupEvent {
    /// The consumer now reads these partitions.
    Assigned(Vec<(String, u32)>),
    /// The consumer stopped reading these partitions (after committing their positions).
    Revoked(Vec<(String, u32)>),
}

pub(crate) type Tp = (String, u32);

/// What a member subscribes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Subscription {
    Topics(Vec<String>),
    /// A glob over topic names, resolved by the coordinator as topics come and go.
    Pattern(String),
}

impl Subscription {
    fn topics(&self) -> Option<Vec<String>> {
        match self {
            Subscription::Topics(t) => Some(t.clone()),
            Subscription::Pattern(_) => None,
        }
    }

    fn pattern(&self) -> Option<String> {
        match self {
            Subscription::Topics(_) => None,
            Subscription::Pattern(p) => Some(p.clone()),
        }
    }
}

/// What the heartbeat task and `poll` share. A `std` mutex: never held across an await.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub(crate) member_id: Option<String>,
    pub(crate) member_epoch: i32,
    /// The latest assignment from the coordinator; `None` before the first answer.
    pub(crate) target: Option<BTreeSet<Tp>>,
    /// What the consumer owns, as last reconciled by `poll`.
    pub(crate) owned: BTreeSet<Tp>,
    pub(crate) last_poll: Option<Instant>,
    /// Set when the member left because it stopped polling.
    pub(crate) left: bool,
    /// A failure the member cannot recover from; returned by the next `poll`.
    pub(crate) fatal: Option<ClientError>,
}

#[derive(Debug)]
pub(crate) struct Membership {
    pub(crate) group: String,
    pub(crate) options: GroupOptions,
    pub(crate) shared: Arc<Mutex<Shared>>,
    pub(crate) wake: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
    pub(crate) events: Vec<GroupEvent>,
    pub(crate) last_commit: Instant,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Shared {
    /// The coordinator no longer knows this member (its session expired, or it was fenced):
    /// the partitions are no longer ours. They are dropped (no commit: someone else may own
    /// them now) and the heartbeat task joins again.
    pub(crate) fn forget_membership(&mut self) {
        self.member_id = None;
        self.member_epoch = 0;
        self.target = Some(BTreeSet::new());
    }
}

pub(crate) fn lock(s: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    s.lock().expect("group state lock poisoned")
}

impl Membership {
    pub(crate) fn start(
        client: Client,
        group: String,
        subscription: Subscription,
        options: GroupOptions,
    ) -> Self {
        let shared = Arc::new(Mutex::new(Shared {
            last_poll: Some(Instant::now()),
            ..Shared::default()
        }));
        let wake = Arc::new(Notify::new());
        let task = tokio::spawn(heartbeat_loop(
            client,
            group.clone(),
            subscription,
            options.clone(),
            shared.clone(),
            wake.clone(),
        ));
        Membership {
            group,
            options,
            shared,
            wake,
            task,
            events: Vec::new(),
            last_commit: Instant::now(),
        }
    }

    /// A commit was refused because the coordinator does not know `member_id`: unless the
    /// heartbeat task has joined again meanwhile, forget the membership and wake it to rejoin
    /// now, rather than go on polling partitions that may be someone else's until the next
    /// heartbeat finds out.
    pub(crate) fn commit_found_unknown(&self, member_id: Option<&str>) {
        let mut s = lock(&self.shared);
        if s.member_id.as_deref() == member_id && member_id.is_some() {
            s.forget_membership();
            drop(s);
            self.wake.notify_one();
        }
    }

    /// Leaves the group now (partitions are reassigned at once).
    pub(crate) async fn leave(&self, client: &Client) {
        self.task.abort();
        let (member_id, instance) = {
            let s = lock(&self.shared);
            (s.member_id.clone(), self.options.instance_id.clone())
        };
        let Some(member_id) = member_id else { return };
        let req = GroupHeartbeatRequest {
            group: self.group.clone(),
            member_id: Some(member_id),
            instance_id: instance.clone(),
            client_id: client.config().client_id.clone(),
            member_epoch: if instance.is_some() {
                member_epoch::STATIC_LEAVE
            } else {
                member_epoch::LEAVE
            },
            topics: None,
            topic_pattern: None,
            assignor: None,
            owned: Some(Vec::new()),
            session_timeout_ms: self.options.session_timeout.as_millis() as u32,
        };
        if let Err(e) = client
            .request(Request::GroupHeartbeat(req), Bytes::new())
            .await
        {
            debug!(cause = %e, "leave request failed; the session will expire instead");
        }
    }
}

async fn heartbeat_loop(
    client: Client,
    group: String,
    subscription: Subscription,
    options: GroupOptions,
    shared: Arc<Mutex<Shared>>,
    wake: Arc<Notify>,
) {
    let session_ms = options
        .session_timeout
        .as_millis()
        .min(u128::from(u32::MAX)) as u32;
    let mut interval = Duration::from_millis(u64::from(session_ms / 4).max(100));
    loop {
        let req = {
            let mut s = lock(&shared);
            let stale = s
                .last_poll
                .is_some_and(|t| t.elapsed() > options.max_poll_interval);
            if stale && s.member_id.is_some() && !s.left {
                warn!(group = %group, "poll() not called within max_poll_interval; leaving the group");
                s.left = true;
                s.target = Some(BTreeSet::new());
                let member_id = s.member_id.take();
                s.member_epoch = 0;
                Some(GroupHeartbeatRequest {
                    group: group.clone(),
                    member_id,
                    instance_id: None,
                    client_id: client.config().client_id.clone(),
                    member_epoch: member_epoch::LEAVE,
                    topics: None,
                    topic_pattern: None,
                    assignor: None,
                    owned: Some(Vec::new()),
                    session_timeout_ms: session_ms,
                })
            } else if s.left {
                if stale {
                    None
                } else {
                    // Polling again: rejoin.
                    s.left = false;
                    Some(join_request(
                        &client,
                        &group,
                        &subscription,
                        &options,
                        &s,
                        session_ms,
                    ))
                }
            } else if s.member_id.is_none() {
                Some(join_request(
                    &client,
                    &group,
                    &subscription,
                    &options,
                    &s,
                    session_ms,
                ))
            } else {
                Some(GroupHeartbeatRequest {
                    group: group.clone(),
                    member_id: s.member_id.clone(),
                    instance_id: options.instance_id.clone(),
                    client_id: client.config().client_id.clone(),
                    member_epoch: s.member_epoch.max(1),
                    topics: subscription.topics(),
                    topic_pattern: subscription.pattern(),
                    assignor: None,
                    owned: Some(TopicPartitions::group(&s.owned)),
                    session_timeout_ms: session_ms,
                })
            }
        };
        if let Some(req) = req {
            let leaving = req.member_epoch == member_epoch::LEAVE;
            match client
                .request(Request::GroupHeartbeat(req), Bytes::new())
                .await
            {
                Ok((ResponseBody::GroupHeartbeat(resp), _)) if !leaving => {
                    interval = Duration::from_millis(u64::from(resp.heartbeat_interval_ms.max(50)));
                    let mut s = lock(&shared);
                    if !s.left {
                        s.member_id = Some(resp.member_id);
                        s.member_epoch = resp.member_epoch;
                        s.target = Some(TopicPartitions::pairs(&resp.assignment).collect());
                    }
                }
                Ok((ResponseBody::GroupHeartbeat(_), _)) => {}
                Ok((other, _)) => {
                    lock(&shared).fatal = Some(unexpected("GroupHeartbeat", &other));
                }
                Err(ClientError::Broker(e)) if e.code == ErrorCode::UnknownMember => {
                    warn!(group = %group, cause = %e, "no longer a member; rejoining");
                    lock(&shared).forget_membership();
                    continue;
                }
                Err(e)
                    if e.is_retriable()
                        || matches!(e, ClientError::Timeout | ClientError::ConnectionLost(_)) =>
                {
                    debug!(group = %group, cause = %e, "heartbeat failed; retrying");
                }
                Err(e) => {
                    warn!(group = %group, cause = %e, "heartbeat refused");
                    lock(&shared).fatal = Some(e);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = wake.notified() => {}
        }
    }
}

fn join_request(
    client: &Client,
    group: &str,
    subscription: &Subscription,
    options: &GroupOptions,
    s: &Shared,
    session_ms: u32,
) -> GroupHeartbeatRequest {
    GroupHeartbeatRequest {
        group: group.to_owned(),
        member_id: None,
        instance_id: options.instance_id.clone(),
        client_id: client.config().client_id.clone(),
        member_epoch: member_epoch::JOIN,
        topics: subscription.topics(),
        topic_pattern: subscription.pattern(),
        assignor: options.assignor.clone(),
        owned: Some(TopicPartitions::group(&s.owned)),
        session_timeout_ms: session_ms,
    }
}
