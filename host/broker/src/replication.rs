//! Partition replication on the broker: followers pull the leader's batches over the peer
//! connections (the replication channel of `sluice-raft`, mutual TLS) and append them as they
//! are (`Store::append_replica`, same offsets and leader epochs), truncating a suffix the leader
//! does not have. The rules — when a fetch position is consistent, where a diverging log is
//! cut — are `sluice-replication`'s; this module moves messages and bytes.
//!
//! Status (docs/replication.md): followers copy their leaders' logs. The leader's high
//! watermark and `acks=all` do not wait for them yet, and leaders are not yet elected from the
//! in-sync set on failure of a replicated partition's leader beyond what fencing does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_proto::batch::split_batches;
use sluice_replication::{EpochCache, FetchOutcome, FollowerAction, PartitionFollower};
use sluice_storage::{PartitionId, StorageError};

use crate::Broker;

/// Bytes a follower asks for per fetch.
const FETCH_BYTES: u32 = 1 << 20;
/// How long the leader holds a fetch that is at its log end, waiting for more.
const LONG_POLL: Duration = Duration::from_millis(500);
/// Bound on one fetch round trip.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// A follower's fetch: it holds everything below `fetch_offset`, and its last batch has
/// `last_fetched_epoch`.
#[derive(Debug, Serialize, Deserialize)]
struct ReplicaFetch {
    topic_id: u64,
    partition: u32,
    follower: u32,
    leader_epoch: u32,
    fetch_offset: u64,
    last_fetched_epoch: Option<u32>,
    max_bytes: u32,
}

/// The leader's answer.
#[derive(Debug, Serialize, Deserialize)]
enum ReplicaAnswer {
    /// Whole batches from the fetch offset (none when nothing new came within the long poll).
    Batches { high_watermark: u64, bytes: Vec<u8> },
    /// The follower's log diverges: `epoch` ends at `end_offset` here.
    Diverging { epoch: u32, end_offset: u64 },
    /// The fetch offset is outside this log.
    OutOfRange { log_start: u64, log_end: u64 },
    /// Not the leader of that partition in that epoch, or another reason not to serve.
    Refused(String),
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
                let fetch: ReplicaFetch = postcard::from_bytes(&message)
                    .map_err(|e| format!("undecodable replication message: {e}"))?;
                let answer = answer_fetch(&broker, fetch).await;
                postcard::to_allocvec(&answer).map_err(|e| e.to_string())
            })
        }));
}

async fn answer_fetch(broker: &Arc<Broker>, fetch: ReplicaFetch) -> ReplicaAnswer {
    let name = broker.controller.read(|s| {
        s.topics()
            .find(|t| t.topic_id == fetch.topic_id)
            .map(|t| t.name.clone())
    });
    let Some(name) = name else {
        return ReplicaAnswer::Refused(format!("no topic has id {}", fetch.topic_id));
    };
    let led = match broker.led_partition_in(&name, fetch.partition, Some(fetch.leader_epoch)) {
        Ok(led) => led,
        Err(e) => return ReplicaAnswer::Refused(e.message),
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
    let (log_start, log_end, epochs) = match position(broker) {
        Ok(p) => p,
        Err(e) => return ReplicaAnswer::Refused(e.to_string()),
    };
    match sluice_replication::check_fetch_position(
        &epochs,
        log_start,
        log_end,
        fetch.fetch_offset,
        fetch.last_fetched_epoch,
    ) {
        Some(FetchOutcome::Diverging { epoch, end_offset }) => {
            return ReplicaAnswer::Diverging { epoch, end_offset };
        }
        Some(FetchOutcome::OutOfRange { log_start, log_end }) => {
            return ReplicaAnswer::OutOfRange { log_start, log_end };
        }
        Some(other) => return ReplicaAnswer::Refused(format!("{other:?}")),
        None => {}
    }
    if fetch.fetch_offset >= log_end {
        // Nothing new: hold the fetch until the log grows (the leader's high watermark moves
        // with its log end until the in-sync set drives it).
        broker
            .wait_high_watermark(id, fetch.fetch_offset + 1, LONG_POLL)
            .await;
    }
    let b = broker.clone();
    let read = tokio::task::spawn_blocking(move || {
        b.store
            .read(id, fetch.fetch_offset, fetch.max_bytes.min(FETCH_BYTES))
    })
    .await;
    match read {
        Ok(Ok(read)) => ReplicaAnswer::Batches {
            high_watermark: broker.high_watermark(id),
            bytes: read.bytes.to_vec(),
        },
        Ok(Err(e)) => ReplicaAnswer::Refused(e.to_string()),
        Err(e) => ReplicaAnswer::Refused(format!("read task failed: {e}")),
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
            s.topics()
                .find(|t| t.topic_id == id.topic_id)
                .and_then(|t| {
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
    let message = postcard::to_allocvec(&fetch).map_err(|e| e.to_string())?;
    let answer = tokio::time::timeout(
        FETCH_TIMEOUT,
        broker.controller.call_replica(leader, message),
    )
    .await
    .map_err(|_| format!("no answer within {FETCH_TIMEOUT:?}"))?
    .map_err(|e| e.to_string())?;
    let answer: ReplicaAnswer =
        postcard::from_bytes(&answer).map_err(|e| format!("undecodable answer: {e}"))?;
    let mut follower =
        PartitionFollower::new(leader_epoch, state.log_start, state.log_end, 0, cache);
    match answer {
        ReplicaAnswer::Batches { bytes, .. } if bytes.is_empty() => Ok(false),
        ReplicaAnswer::Batches { bytes, .. } => {
            let batches = split_batches(bytes.into()).map_err(|e| e.to_string())?;
            let max = broker.config.max_batch_bytes as usize;
            for (header, batch) in batches {
                if header.base_offset < state.log_end {
                    continue; // the read began at the batch holding the offset
                }
                crate::produce::validate_batch(&batch, max).map_err(|e| e.message)?;
                broker
                    .store
                    .append_replica(id, batch.to_vec(), durability)
                    .await
                    .map_err(|e| e.to_string())?;
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
                FollowerAction::Reset { from } => Err(format!(
                    "the leader's log now starts at {from}, after this replica's end: starting \
                 over from there is not supported yet"
                )),
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
