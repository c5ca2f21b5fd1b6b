//! Partition replication on the broker: followers pull the leader's batches over the peer
//! connections (the replication channel of `sluice-raft`, mutual TLS) and append them as they
//! are (`Store::append_replica`, same offsets and leader epochs), truncating a suffix the leader
//! does not have. The rules — when a fetch position is consistent, where a diverging log is
//! cut — are `sluice-replication`'s; this module moves messages and bytes.
//!
//! The leader of a replicated partition keeps a `sluice_replication::PartitionLeader`: each
//! follower fetch tells it the follower's log end, and the high watermark — what consumers
//! see and what `acks=all` waits for — is the smallest log end over the in-sync set. Followers
//! that fall behind for `cluster.replica_lag_max_ms` leave the in-sync set, and rejoin once
//! caught up, through `AlterInSync` committed by the metadata quorum; `acks=all` is refused
//! with `NotEnoughReplicas` while fewer than `min.insync.replicas` (2 with three or more
//! replicas, else 1) are in sync.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_metadata::MetadataCommand;
use sluice_proto::batch::split_batches;
use sluice_proto::{ErrorCode, WireError};
use sluice_raft::ReplicaPayload;
use sluice_replication::wire::{self, ReplicaAnswer, ReplicaFetch};
use sluice_replication::{
    EpochCache, FetchOutcome, FollowerAction, LeaderConfig, PartitionFollower, PartitionLeader,
};
use sluice_storage::{PartitionId, StorageError};

use crate::Broker;

/// Bytes a follower asks for per fetch.
const FETCH_BYTES: u32 = 1 << 20;
/// How long the leader holds a fetch that is at its log end, waiting for more.
const LONG_POLL: Duration = Duration::from_millis(500);
/// Bound on one fetch round trip.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The leader state of each replicated partition this node leads, with the leader epoch it
/// was made for.
#[derive(Debug, Default)]
pub(crate) struct Leaders(Mutex<HashMap<PartitionId, LeaderEntry>>);

impl Leaders {
    /// How far each follower of each replicated partition led here is behind the leader's
    /// log end (in records), as the leader last learnt from its fetches (followers that have
    /// not fetched in this leader's epoch are left out).
    pub(crate) fn follower_lags(&self) -> Vec<(PartitionId, u32, u64)> {
        let leaders = self.0.lock().expect("leaders lock poisoned");
        let mut lags = Vec::new();
        for (id, (_, leader, lives)) in leaders.iter() {
            for follower in lives.keys() {
                if let Some(end) = leader.follower_log_end(*follower) {
                    lags.push((*id, *follower, leader.log_end().saturating_sub(end)));
                }
            }
        }
        lags
    }
}

/// One led partition: the leader epoch its state was made for, the state, and the broker
/// epoch (life) of each replica when last seen.
type LeaderEntry = (u32, PartitionLeader, HashMap<u32, u64>);

/// Milliseconds on the broker's monotonic clock.
fn now_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

impl Broker {
    /// Runs `f` on the leader state of partition `id` if this node leads it and it has more
    /// than one replica, making the state when this node just became leader.
    fn with_leader_state<R>(
        &self,
        id: PartitionId,
        f: impl FnOnce(&mut PartitionLeader) -> R,
    ) -> Option<R> {
        let now = now_ms();
        let lag_max_ms = self
            .config
            .cluster
            .as_ref()
            .map_or(30_000, |c| c.replica_lag_max_ms);
        let placement = self.controller.read(|s| {
            s.topic_by_id(id.topic_id).and_then(|t| {
                t.partitions.get(id.partition as usize).and_then(|p| {
                    (p.leader == Some(self.node_id) && p.replicas.len() > 1).then(|| {
                        let min_insync =
                            s.replication_settings(&t.name).min_insync(p.replicas.len());
                        let lives: HashMap<u32, u64> = p
                            .replicas
                            .iter()
                            .map(|r| (*r, s.broker(*r).map_or(0, |b| b.epoch)))
                            .collect();
                        (
                            p.leader_epoch,
                            p.replicas.clone(),
                            p.in_sync.clone(),
                            min_insync,
                            lives,
                        )
                    })
                })
            })
        });
        let mut leaders = self.leaders.0.lock().expect("leaders lock poisoned");
        let Some((epoch, replicas, in_sync, min_insync, lives)) = placement else {
            leaders.remove(&id);
            return None;
        };
        let stale = leaders.get(&id).is_none_or(|(e, _, _)| *e != epoch);
        if stale {
            let state = self.store.partition_state(id).unwrap_or_default();
            let hw = self.high_watermark(id);
            let leader = PartitionLeader::new(
                self.node_id,
                epoch,
                &replicas,
                in_sync,
                state.log_start,
                state.log_end,
                hw,
                now,
                LeaderConfig {
                    lag_max_ms,
                    min_insync,
                },
            );
            tracing::info!(
                partition = %id, epoch, log_end = state.log_end, high_watermark = hw,
                in_sync = ?leader.isr(), "leading the partition"
            );
            crate::metrics::leadership_started();
            leaders.insert(id, (epoch, leader, lives.clone()));
        }
        let (_, leader, seen) = leaders.get_mut(&id).expect("just made");
        // A follower that registered again since (a restart, a wiped disk) may hold less than
        // its earlier fetches said.
        for (node, life) in &lives {
            if seen.get(node).is_some_and(|before| before != life) {
                tracing::info!(partition = %id, follower = node, life, "a follower started a new life: its fetch position is forgotten");
                leader.forget_follower(*node);
            }
        }
        *seen = lives;
        // The topic's setting may have changed since.
        leader.set_min_insync(min_insync);
        // The store's log is the truth: a replica fetch that was in flight when this node
        // became leader may still have appended the previous leader's batches after the state
        // was made. A log end lagging behind would tell followers holding those batches that
        // they diverge, for ever.
        if let Some(state) = self.store.partition_state(id) {
            leader.on_appended(state.log_end);
            leader.on_log_start(state.log_start);
        }
        Some(f(leader))
    }

    /// The leader appended up to `log_end`: with one replica that is committed at once; with
    /// more, when the in-sync followers have it.
    pub(crate) fn leader_appended(&self, id: PartitionId, log_end: u64) {
        match self.with_leader_state(id, |l| l.on_appended(log_end)) {
            Some(hw) => self.advance_high_watermark(id, hw),
            // One replica: what is stored is committed.
            None if !self.replicated(id) => self.advance_high_watermark(id, log_end),
            // Leadership moved while the batch was being written (a preferred-leader election,
            // a fence): the new leader decides what is committed, and it may not have this
            // batch. Taking the log end for the watermark here acknowledged writes the new
            // leader then truncated away (found by the fault harness).
            None => {}
        }
        self.runtime(id).appended.notify_waiters();
    }

    /// `acks=all` is refused while the partition has fewer in-sync replicas than its
    /// `min.insync.replicas` (counting only those caught up as far as the leader can tell).
    pub(crate) fn check_min_insync(&self, id: PartitionId, topic: &str) -> Result<(), WireError> {
        let checked = self.with_leader_state(id, |l| l.check_acks_all(now_ms()));
        match checked {
            Some(Err(e)) => Err(WireError::new(
                ErrorCode::NotEnoughReplicas,
                format!(
                    "{topic}/{} has {} in-sync replica(s) caught up; acks=all needs {} \
                     (min.insync.replicas); retry when a replica has caught up",
                    id.partition, e.in_sync, e.required
                ),
            )),
            _ => Ok(()),
        }
    }
}

impl Broker {
    /// After the high watermark passed a batch: refused if the in-sync set shrank below
    /// `min.insync.replicas` meanwhile (see `PartitionLeader::check_committed_in_sync`).
    pub(crate) fn check_committed_in_sync(&self, id: PartitionId) -> Result<(), WireError> {
        match self.with_leader_state(id, |l| l.check_committed_in_sync()) {
            Some(Err(e)) => Err(WireError::new(
                ErrorCode::NotEnoughReplicas,
                format!(
                    "partition {id}: the batch is stored, but the in-sync set shrank to {} \
                     replica(s) before it committed and acks=all needs {} \
                     (min.insync.replicas); retry (a duplicate is recognised)",
                    e.in_sync, e.required
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// Every `tick`, for each replicated partition this node leads: adopts the in-sync set the
/// metadata holds, and proposes the changes the leader state asks for (followers that fell
/// behind out, caught-up ones in). Until shutdown.
pub(crate) async fn maintain_in_sync(broker: Arc<Broker>, tick: Duration) {
    let mut shutdown = broker.shutdown.subscribe();
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.changed() => return,
        }
        let me = broker.node_id;
        let led: Vec<(PartitionId, String, u32, Vec<u32>)> = broker.controller.read(|s| {
            s.topics()
                .flat_map(|t| {
                    t.partitions
                        .iter()
                        .enumerate()
                        .filter(move |(_, p)| p.leader == Some(me) && p.replicas.len() > 1)
                        .map(move |(i, p)| {
                            (
                                PartitionId {
                                    topic_id: t.topic_id,
                                    partition: i as u32,
                                },
                                t.name.clone(),
                                p.leader_epoch,
                                p.in_sync.clone(),
                            )
                        })
                })
                .collect()
        });
        let now = now_ms();
        for (id, topic, epoch, in_sync) in led {
            let proposal = broker.with_leader_state(id, |l| {
                let committed: Vec<u32> = l.isr().iter().copied().collect();
                let mut sorted = in_sync.clone();
                sorted.sort_unstable();
                if committed != sorted {
                    l.on_isr_committed(in_sync.iter().copied());
                }
                (l.poll_isr_change(now), l.high_watermark())
            });
            let Some((proposal, hw)) = proposal else {
                continue;
            };
            broker.advance_high_watermark(id, hw);
            let Some(proposal) = proposal else {
                continue;
            };
            tracing::info!(partition = %id, in_sync = ?proposal.isr, "proposing an in-sync set change");
            let cmd = MetadataCommand::AlterInSync {
                topic,
                partition: id.partition,
                leader: me,
                leader_epoch: epoch,
                in_sync: proposal.isr.clone(),
            };
            let committed = broker.controller.propose_async(cmd).await;
            let hw = broker.with_leader_state(id, |l| {
                match committed {
                    Ok(()) => l.on_isr_committed(proposal.isr.iter().copied()),
                    Err(_) => l.on_isr_refused(),
                }
                l.high_watermark()
            });
            if let Some(hw) = hw {
                broker.advance_high_watermark(id, hw);
            }
        }
    }
}

/// The follower tasks of this node, by partition.
#[derive(Debug, Default)]
pub(crate) struct Followers(Mutex<HashMap<PartitionId, tokio::task::JoinHandle<()>>>);

impl Drop for Followers {
    fn drop(&mut self) {
        for task in self.0.get_mut().expect("followers lock poisoned").values() {
            task.abort();
        }
    }
}

/// Makes this broker answer its followers' fetches.
pub(crate) fn serve(broker: &Arc<Broker>) {
    let weak: Weak<Broker> = Arc::downgrade(broker);
    broker
        .controller
        .set_replica_handler(Arc::new(move |message: Vec<u8>| {
            let weak = weak.clone();
            Box::pin(async move {
                let broker = weak.upgrade().ok_or("the broker is stopping")?;
                let fetch: ReplicaFetch = wire::decode(&message)?;
                let (answer, batches) = match answer_fetch(&broker, fetch).await {
                    Ok((hw, batches)) => (ReplicaAnswer::Batches { high_watermark: hw }, batches),
                    Err(answer) => (answer, Bytes::new()),
                };
                Ok(ReplicaPayload::new(wire::encode(&answer)?, batches))
            })
        }));
}

/// The high watermark and the batches to send (as [`ReplicaAnswer::Batches`] with the batches
/// beside it), or the answer that says why there are none.
type Served = Result<(u64, Bytes), ReplicaAnswer>;

async fn answer_fetch(broker: &Arc<Broker>, fetch: ReplicaFetch) -> Served {
    let name = broker
        .controller
        .read(|s| s.topic_by_id(fetch.topic_id).map(|t| t.name.clone()));
    let Some(name) = name else {
        return Err(ReplicaAnswer::Refused(format!(
            "no topic has id {}",
            fetch.topic_id
        )));
    };
    let led = match broker.led_partition_in(&name, fetch.partition, Some(fetch.leader_epoch)) {
        Ok(led) => led,
        Err(e) => return Err(ReplicaAnswer::Refused(e.message)),
    };
    let id = led.id;
    let position = |broker: &Broker| -> Result<(u64, u64, EpochCache), StorageError> {
        let state = broker
            .store
            .partition_state(id)
            .ok_or(StorageError::UnknownPartition(id))?;
        let mut epochs = EpochCache::new();
        for (epoch, start) in broker.store.leader_epochs(id)? {
            epochs.assign(epoch, start);
        }
        Ok((state.log_start, state.log_end, epochs))
    };
    if fetch.follower == wire::READER {
        return answer_reader(broker, id, &fetch).await;
    }
    let (log_start, log_end, epochs) = match position(broker) {
        Ok(p) => p,
        Err(e) => return Err(ReplicaAnswer::Refused(e.to_string())),
    };
    // The leader's bookkeeping decides (and learns the follower's log end from a consistent
    // fetch); a partition of one replica has no followers to ask.
    let outcome = broker
        .with_leader_state(id, |l| {
            let outcome = l.on_fetch(
                fetch.follower,
                fetch.fetch_offset,
                fetch.last_fetched_epoch,
                &epochs,
                now_ms(),
            );
            (outcome, l.high_watermark())
        })
        .unwrap_or((FetchOutcome::NotReplica, broker.high_watermark(id)));
    match outcome {
        (FetchOutcome::Read { .. }, hw) => broker.advance_high_watermark(id, hw),
        (FetchOutcome::Diverging { epoch, end_offset }, _) => {
            return Err(ReplicaAnswer::Diverging { epoch, end_offset });
        }
        (FetchOutcome::OutOfRange { log_start, log_end }, _) => {
            return Err(ReplicaAnswer::OutOfRange { log_start, log_end });
        }
        (FetchOutcome::NotReplica, _) => {
            return Err(ReplicaAnswer::Refused(format!(
                "node {} is not a follower of this partition",
                fetch.follower
            )));
        }
    }
    let _ = log_start;
    if fetch.fetch_offset >= log_end {
        // Nothing new: hold the fetch until this leader appends (bounded).
        let runtime = broker.runtime(id);
        let deadline = tokio::time::Instant::now() + LONG_POLL;
        loop {
            // Registered before the check, so an append in between is not missed.
            let appended = runtime.appended.notified();
            let grown = broker
                .store
                .partition_state(id)
                .is_none_or(|s| s.log_end > fetch.fetch_offset);
            if grown {
                break;
            }
            tokio::select! {
                _ = appended => {}
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
    }
    let b = broker.clone();
    let read = tokio::task::spawn_blocking(move || {
        b.store
            .read(id, fetch.fetch_offset, fetch.max_bytes.min(FETCH_BYTES))
    })
    .await;
    match read {
        Ok(Ok(read)) => Ok((broker.high_watermark(id), read.bytes)),
        Ok(Err(e)) => Err(ReplicaAnswer::Refused(e.to_string())),
        Err(e) => Err(ReplicaAnswer::Refused(format!("read task failed: {e}"))),
    }
}

/// A reader's fetch ([`wire::READER`]): committed batches from its offset, nothing else.
async fn answer_reader(broker: &Arc<Broker>, id: PartitionId, fetch: &ReplicaFetch) -> Served {
    let hw = broker.high_watermark(id);
    let (b, offset, max) = (
        broker.clone(),
        fetch.fetch_offset,
        fetch.max_bytes.min(FETCH_BYTES),
    );
    let read = tokio::task::spawn_blocking(move || b.store.read(id, offset, max)).await;
    match read {
        Ok(Ok(read)) => Ok((hw, crate::fetch::below_high_watermark(read.bytes, hw))),
        Ok(Err(StorageError::OffsetOutOfRange { log_start, log_end })) => {
            Err(ReplicaAnswer::OutOfRange { log_start, log_end })
        }
        Ok(Err(e)) => Err(ReplicaAnswer::Refused(e.to_string())),
        Err(e) => Err(ReplicaAnswer::Refused(format!("read task failed: {e}"))),
    }
}

/// Reads committed batches of partition `id` from `from` at its leader `leader` (another
/// node, in `leader_epoch`), as a reader rather than a replica. An offset outside the leader's
/// log is an error saying "out of range".
pub(crate) async fn read_at_leader(
    broker: &Arc<Broker>,
    id: PartitionId,
    leader: u32,
    leader_epoch: u32,
    from: u64,
    max_bytes: u32,
) -> Result<bytes::Bytes, String> {
    let fetch = ReplicaFetch {
        topic_id: id.topic_id,
        partition: id.partition,
        follower: wire::READER,
        leader_epoch,
        fetch_offset: from,
        last_fetched_epoch: None,
        max_bytes,
    };
    let message = wire::encode(&fetch)?;
    let answer = tokio::time::timeout(
        FETCH_TIMEOUT,
        broker.controller.call_replica(leader, message),
    )
    .await
    .map_err(|_| format!("no answer from node {leader} within {FETCH_TIMEOUT:?}"))?
    .map_err(|e| e.to_string())?;
    match wire::decode::<ReplicaAnswer>(&answer.message)? {
        ReplicaAnswer::Batches { .. } => Ok(answer.raw),
        ReplicaAnswer::OutOfRange { log_start, log_end } => Err(format!(
            "offset {from} out of range: node {leader} holds {log_start}..{log_end}"
        )),
        ReplicaAnswer::Diverging { .. } => Err("a reader was answered as a replica".into()),
        ReplicaAnswer::Refused(why) => Err(why),
    }
}

/// Starts a follower task for every partition this node replicates but does not lead, and
/// stops those of partitions it now leads or no longer replicates. Run on every metadata
/// change.
pub(crate) fn follow_leadership(broker: &Arc<Broker>) {
    let me = broker.node_id;
    let wanted: Vec<PartitionId> = broker.controller.read(|s| {
        s.topics()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| {
                        p.replicas.len() > 1 && p.replicas.contains(&me) && p.leader != Some(me)
                    })
                    .map(move |(i, _)| PartitionId {
                        topic_id: t.topic_id,
                        partition: i as u32,
                    })
            })
            .collect()
    });
    let mut tasks = broker.followers.0.lock().expect("followers lock poisoned");
    tasks.retain(|id, task| {
        let keep = wanted.contains(id) && !task.is_finished();
        if !keep {
            task.abort();
        }
        keep
    });
    for id in wanted {
        tasks.entry(id).or_insert_with(|| {
            tracing::info!(partition = %id, "following the partition's leader");
            tokio::spawn(follow(broker.clone(), id))
        });
    }
}

/// One partition's follower: fetches from the leader and applies what it answers, until
/// this node leads the partition, stops replicating it, or shuts down.
async fn follow(broker: Arc<Broker>, id: PartitionId) {
    let mut shutdown = broker.shutdown.subscribe();
    let mut pause = Duration::from_millis(50);
    loop {
        if *shutdown.borrow() {
            return;
        }
        let target = broker.controller.read(|s| {
            s.topic_by_id(id.topic_id).and_then(|t| {
                t.partitions
                    .get(id.partition as usize)
                    .map(|p| (p.leader, p.leader_epoch, t.config.durability))
            })
        });
        let Some((leader, leader_epoch, durability)) = target else {
            return; // the topic is gone
        };
        let leader = match leader {
            Some(l) if l == broker.node_id => return, // this node leads now
            Some(l) => l,
            None => {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                    _ = shutdown.changed() => return,
                }
            }
        };
        let result = fetch_once(&broker, id, leader, leader_epoch, durability).await;
        match result {
            Ok(true) => pause = Duration::from_millis(50),
            Ok(false) => {}
            Err(why) => {
                tracing::debug!(partition = %id, leader, cause = %why, "replica fetch failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.changed() => return,
                }
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// One fetch and what follows from it; `Ok(true)` when the log changed.
async fn fetch_once(
    broker: &Arc<Broker>,
    id: PartitionId,
    leader: u32,
    leader_epoch: u32,
    durability: sluice_proto::Durability,
) -> Result<bool, String> {
    let state = broker
        .store
        .partition_state(id)
        .ok_or("the replica is not created yet")?;
    let epochs = broker.store.leader_epochs(id).map_err(|e| e.to_string())?;
    let mut cache = EpochCache::new();
    for (epoch, start) in &epochs {
        cache.assign(*epoch, *start);
    }
    let fetch = ReplicaFetch {
        topic_id: id.topic_id,
        partition: id.partition,
        follower: broker.node_id,
        leader_epoch,
        fetch_offset: state.log_end,
        last_fetched_epoch: epochs.last().map(|(e, _)| *e),
        max_bytes: FETCH_BYTES,
    };
    let message = wire::encode(&fetch)?;
    let answer = tokio::time::timeout(
        FETCH_TIMEOUT,
        broker.controller.call_replica(leader, message),
    )
    .await
    .map_err(|_| format!("no answer within {FETCH_TIMEOUT:?}"))?
    .map_err(|e| e.to_string())?;
    let bytes = answer.raw;
    let answer: ReplicaAnswer = wire::decode(&answer.message)?;
    // Leadership may have moved while the fetch was out — to this node, even. An answer from
    // a leader that no longer is one is dropped: applying it could put the old leader's
    // batches after this node started its own epoch, or cut what a new leader wrote.
    let still = broker.controller.read(|s| {
        s.topic_by_id(id.topic_id)
            .and_then(|t| t.partitions.get(id.partition as usize))
            .is_some_and(|p| p.leader == Some(leader) && p.leader_epoch == leader_epoch)
    });
    if !still {
        return Ok(false);
    }
    let mut follower =
        PartitionFollower::new(leader_epoch, state.log_start, state.log_end, 0, cache);
    match answer {
        ReplicaAnswer::Batches { high_watermark } if bytes.is_empty() => {
            // A follower's high watermark: what the leader has committed, of what it holds.
            broker.advance_high_watermark(id, high_watermark.min(state.log_end));
            Ok(false)
        }
        ReplicaAnswer::Batches { high_watermark } => {
            let batches = split_batches(bytes).map_err(|e| e.to_string())?;
            let max = broker.config.max_batch_bytes as usize;
            // Every batch is checked, then all are queued at once: the store's writer takes
            // them in one group commit (one fsync), not one each.
            let mut appends = Vec::with_capacity(batches.len());
            for (header, batch) in &batches {
                if header.base_offset < state.log_end {
                    continue; // the read began at the batch holding the offset
                }
                crate::produce::validate_batch(batch, max).map_err(|e| e.message)?;
            }
            for (header, batch) in batches {
                if header.base_offset >= state.log_end {
                    appends.push(broker.store.append_replica(id, batch.clone(), durability));
                }
            }
            for append in appends {
                let appended = append.await.map_err(|e| e.to_string())?;
                broker.advance_high_watermark(id, high_watermark.min(appended.log_end));
            }
            Ok(true)
        }
        ReplicaAnswer::Diverging { epoch, end_offset } => {
            let FollowerAction::Truncate { to } = follower.on_diverging(epoch, end_offset) else {
                return Err("a diverging answer asks for a truncation".into());
            };
            truncate(broker, id, to).await?;
            Ok(true)
        }
        ReplicaAnswer::OutOfRange { log_start, log_end } => {
            match follower.on_out_of_range(log_start, log_end) {
                FollowerAction::Truncate { to } => {
                    truncate(broker, id, to).await?;
                    Ok(true)
                }
                // Everything this replica would fetch next is gone from the leader (retention,
                // or the offsets topic's compaction, while this node was away): it starts over
                // at the leader's log start. Stuck here, a restarted node never rejoined a
                // compacted offsets partition's in-sync set (found by the soak).
                FollowerAction::Reset { from } => {
                    let b = broker.clone();
                    tokio::task::spawn_blocking(move || b.store.truncate_fully(id, from))
                        .await
                        .map_err(|e| e.to_string())?
                        .map_err(|e| e.to_string())?;
                    tracing::info!(partition = %id, from, "replica emptied: it starts over at the leader's log start");
                    Ok(true)
                }
            }
        }
        ReplicaAnswer::Refused(why) => Err(why),
    }
}

async fn truncate(broker: &Arc<Broker>, id: PartitionId, to: u64) -> Result<(), String> {
    let b = broker.clone();
    let done = tokio::task::spawn_blocking(move || b.store.truncate(id, to))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    tracing::info!(partition = %id, to = done, "replica truncated to the leader's log");
    Ok(())
}
