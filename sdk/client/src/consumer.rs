//! The consumer: reads assigned partitions from positions it tracks itself.
//!
//! Each [`Consumer::poll`] sends one long-polling `Fetch` for every assigned partition at its
//! position. The answer's raw bytes are each partition's batches back to back; they are split,
//! CRC-checked and decoded, records below the position are dropped (a fetch may start at a
//! batch boundary before it), and the position moves past the last record returned. Positions
//! are only committed once the whole answer decoded, so an error never skips records.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use sluice_proto::batch::{decode_records, split_batches};
use sluice_proto::{
    ErrorCode, FetchPartition, FetchRequest, FetchTransformedRequest, FetchedPartition,
    GroupOffset, Header, OffsetCommitRequest, OffsetSpec, ProtoError, Request, ResponseBody,
    WireError,
};
use tracing::debug;

use crate::client::unexpected;
use crate::group::{self, GroupEvent, GroupOptions, Membership, Subscription};
use crate::producer::unknown_topic;
use crate::{Client, ClientError};

/// Consumer settings. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Longest time the broker holds a fetch open waiting for `min_bytes` (default 500 ms).
    pub max_wait: Duration,
    /// Bytes the broker waits for before answering early (default 1).
    pub min_bytes: u32,
    /// Upper bound on one fetch's batches, over all partitions (default 8 MiB). The broker
    /// still returns one batch larger than this, so a consumer always makes progress.
    pub max_bytes: u32,
    /// Upper bound on one partition's batches in a fetch (default 2 MiB).
    pub max_partition_bytes: u32,
    /// Where to start when a partition has no position or its position is out of range
    /// (default [`OffsetReset::Earliest`]).
    pub reset: OffsetReset,
    /// Run a deployed transform plugin (a filter or map) on the broker over what is fetched;
    /// only its output crosses the network, and positions still move past filtered records.
    pub transform: Option<FetchTransform>,
}

/// A fetch-time transform: a deployed plugin and its configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchTransform {
    pub plugin: String,
    pub config: Vec<(String, String)>,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            max_wait: Duration::from_millis(500),
            min_bytes: 1,
            max_bytes: 8 * 1024 * 1024,
            max_partition_bytes: 2 * 1024 * 1024,
            reset: OffsetReset::Earliest,
            transform: None,
        }
    }
}

/// What to do when a partition has no valid position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OffsetReset {
    /// Start from the earliest record still stored.
    #[default]
    Earliest,
    /// Start after the last record: only records produced from now on.
    Latest,
    /// Fail the poll with [`ClientError::OffsetOutOfRange`] or [`ClientError::NoPosition`].
    Error,
}

/// Where [`Consumer::seek`] moves a partition's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeekTo {
    Earliest,
    Latest,
    Offset(u64),
    /// The first record at or after this time (ms since the Unix epoch); the log end if none.
    Timestamp(i64),
}

/// A record read from a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
}

#[derive(Debug, Clone)]
struct Assignment {
    topic: String,
    partition: u32,
    /// Next offset to read; `None` until the reset policy or a seek sets it.
    position: Option<u64>,
}

/// Reads records from the partitions assigned to it. Made by [`Client::consumer`].
#[derive(Debug)]
pub struct Consumer {
    client: Client,
    config: ConsumerConfig,
    assigned: Vec<Assignment>,
    /// Set by [`Consumer::subscribe`]: the coordinator decides the assignment.
    group: Option<Membership>,
    /// The next fetch, sent when a poll returned (as Kafka's consumer pipelines its fetches):
    /// the broker reads and sends while the application handles the records. Used by the
    /// next poll if it asks for the same partitions at the same positions, dropped otherwise.
    prefetch: Option<Prefetch>,
}

type FetchResult = Result<(Vec<Fetched>, usize), ClientError>;

/// A partition a fetch asks for: topic, partition, offset.
type Asked = (String, u32, u64);

/// A fetch running ahead of the next poll.
#[derive(Debug)]
struct Prefetch {
    /// Topic, partition and offset of each partition asked for.
    asked: Vec<Asked>,
    task: tokio::task::JoinHandle<FetchResult>,
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Consumer {
    pub(crate) fn new(client: Client, config: ConsumerConfig) -> Consumer {
        Consumer {
            client,
            config,
            assigned: Vec::new(),
            group: None,
            prefetch: None,
        }
    }

    /// Joins consumer group `group`, subscribed to `topics`. From now on the group's
    /// coordinator decides which partitions this consumer reads: `poll` follows its decisions,
    /// starting new partitions at the group's committed offsets (or the reset policy) and
    /// committing the positions of partitions it gives up. [`Consumer::take_events`] tells
    /// which partitions came and went.
    pub async fn subscribe(
        &mut self,
        group: &str,
        topics: &[&str],
        options: GroupOptions,
    ) -> Result<(), ClientError> {
        if group.is_empty() || topics.is_empty() {
            return Err(ClientError::InvalidConfig(
                "subscribe needs a group id and at least one topic".into(),
            ));
        }
        let topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
        self.join(group, Subscription::Topics(topics), options)
    }

    /// Like [`Consumer::subscribe`], to every topic whose name matches `pattern`, a glob (`*`
    /// any run of characters, `?` one character): topics created later that match are picked
    /// up by the coordinator at the next heartbeat.
    pub async fn subscribe_pattern(
        &mut self,
        group: &str,
        pattern: &str,
        options: GroupOptions,
    ) -> Result<(), ClientError> {
        if group.is_empty() || pattern.is_empty() {
            return Err(ClientError::InvalidConfig(
                "subscribe_pattern needs a group id and a pattern".into(),
            ));
        }
        self.join(group, Subscription::Pattern(pattern.to_string()), options)
    }

    fn join(
        &mut self,
        group: &str,
        subscription: Subscription,
        options: GroupOptions,
    ) -> Result<(), ClientError> {
        if self.group.is_some() {
            return Err(ClientError::InvalidConfig(
                "the consumer is already subscribed to a group".into(),
            ));
        }
        if !self.assigned.is_empty() {
            return Err(ClientError::InvalidConfig(
                "the consumer has manually assigned partitions; use one consumer per mode".into(),
            ));
        }
        self.group = Some(Membership::start(
            self.client.clone(),
            group.to_string(),
            subscription,
            options,
        ));
        Ok(())
    }

    /// Assignment changes since the last call, in order.
    pub fn take_events(&mut self) -> Vec<GroupEvent> {
        self.group
            .as_mut()
            .map(|g| std::mem::take(&mut g.events))
            .unwrap_or_default()
    }

    /// Commits the current position of every partition this consumer reads, and waits for it.
    pub async fn commit(&mut self) -> Result<(), ClientError> {
        let offsets: Vec<(String, u32, u64)> = self
            .assigned
            .iter()
            .filter_map(|a| a.position.map(|p| (a.topic.clone(), a.partition, p)))
            .collect();
        self.commit_offsets(&offsets).await
    }

    /// Commits the given `(topic, partition, next offset to read)` triples for the group.
    pub async fn commit_offsets(
        &mut self,
        offsets: &[(String, u32, u64)],
    ) -> Result<(), ClientError> {
        let request = self.commit_request(offsets)?;
        if offsets.is_empty() {
            return Ok(());
        }
        let member_id = match &request {
            Request::OffsetCommit(r) => r.member_id.clone(),
            _ => None,
        };
        let answer = self.client.request(request, Bytes::new()).await;
        if let (Err(ClientError::Broker(e)), Some(g)) = (&answer, &self.group)
            && e.code == ErrorCode::UnknownMember
        {
            g.commit_found_unknown(member_id.as_deref());
        }
        match answer? {
            (ResponseBody::GroupOffsets(_), _) => {
                if let Some(g) = &mut self.group {
                    g.last_commit = std::time::Instant::now();
                }
                Ok(())
            }
            (other, _) => Err(unexpected("GroupOffsets", &other)),
        }
    }

    /// Commits the current positions without waiting; the handle gives the outcome.
    pub fn commit_async(
        &mut self,
    ) -> Result<tokio::task::JoinHandle<Result<(), ClientError>>, ClientError> {
        let offsets: Vec<(String, u32, u64)> = self
            .assigned
            .iter()
            .filter_map(|a| a.position.map(|p| (a.topic.clone(), a.partition, p)))
            .collect();
        let request = self.commit_request(&offsets)?;
        if let Some(g) = &mut self.group {
            g.last_commit = std::time::Instant::now();
        }
        let client = self.client.clone();
        Ok(tokio::spawn(async move {
            match client.request(request, Bytes::new()).await? {
                (ResponseBody::GroupOffsets(_), _) => Ok(()),
                (other, _) => Err(unexpected("GroupOffsets", &other)),
            }
        }))
    }

    fn commit_request(&self, offsets: &[(String, u32, u64)]) -> Result<Request, ClientError> {
        let g = self.group.as_ref().ok_or_else(|| {
            ClientError::InvalidConfig("commit needs a group: call subscribe first".into())
        })?;
        let (member_id, epoch) = {
            let s = group::lock(&g.shared);
            (s.member_id.clone(), s.member_epoch)
        };
        Ok(Request::OffsetCommit(OffsetCommitRequest {
            group: g.group.clone(),
            member_id,
            member_epoch: epoch,
            offsets: offsets
                .iter()
                .map(|(topic, partition, offset)| GroupOffset {
                    topic: topic.clone(),
                    partition: *partition,
                    offset: *offset,
                })
                .collect(),
        }))
    }

    /// The group's committed offset for a partition, if any.
    pub async fn committed(&self, topic: &str, partition: u32) -> Result<Option<u64>, ClientError> {
        let g = self.group.as_ref().ok_or_else(|| {
            ClientError::InvalidConfig(
                "committed offsets need a group: call subscribe first".into(),
            )
        })?;
        Ok(self
            .fetch_committed(&g.group)
            .await?
            .get(&(topic.to_string(), partition))
            .copied())
    }

    async fn fetch_committed(
        &self,
        group: &str,
    ) -> Result<std::collections::BTreeMap<(String, u32), u64>, ClientError> {
        let request = Request::OffsetFetch {
            group: group.to_string(),
        };
        match self.client.request(request, Bytes::new()).await? {
            (ResponseBody::GroupOffsets(o), _) => Ok(o
                .into_iter()
                .map(|o| ((o.topic, o.partition), o.offset))
                .collect()),
            (other, _) => Err(unexpected("GroupOffsets", &other)),
        }
    }

    /// Leaves the group (committing positions first when auto-commit is on), so its
    /// partitions move to the other members at once.
    pub async fn close(mut self) -> Result<(), ClientError> {
        if self
            .group
            .as_ref()
            .is_some_and(|g| g.options.auto_commit_interval.is_some())
        {
            self.commit().await?;
        }
        if let Some(g) = self.group.take() {
            g.leave(&self.client).await;
        }
        Ok(())
    }

    /// Follows the coordinator's latest assignment: revokes (after committing) what is no
    /// longer ours, starts what is new, and tells the heartbeat task what we now own.
    async fn reconcile(&mut self) -> Result<(), ClientError> {
        let Some(g) = &self.group else { return Ok(()) };
        let (target, fatal) = {
            let mut s = group::lock(&g.shared);
            s.last_poll = Some(std::time::Instant::now());
            (s.target.clone(), s.fatal.take())
        };
        if let Some(e) = fatal {
            return Err(e);
        }
        let Some(target) = target else { return Ok(()) };
        let owned: BTreeSet<(String, u32)> = self
            .assigned
            .iter()
            .map(|a| (a.topic.clone(), a.partition))
            .collect();
        let revoked: Vec<(String, u32)> = owned.difference(&target).cloned().collect();
        let added: Vec<(String, u32)> = target.difference(&owned).cloned().collect();
        if revoked.is_empty() && added.is_empty() {
            return Ok(());
        }
        if !revoked.is_empty() {
            let offsets: Vec<(String, u32, u64)> = self
                .assigned
                .iter()
                .filter(|a| revoked.contains(&(a.topic.clone(), a.partition)))
                .filter_map(|a| a.position.map(|p| (a.topic.clone(), a.partition, p)))
                .collect();
            if let Err(e) = self.commit_offsets(&offsets).await {
                // Fenced members cannot commit; their partitions are someone else's already.
                debug!(cause = %e, "commit of revoked partitions failed");
            }
            self.assigned
                .retain(|a| !revoked.contains(&(a.topic.clone(), a.partition)));
            // Recorded at once: if taking the added partitions fails below, the next poll
            // must not forget that these went.
            let now_owned = self
                .assigned
                .iter()
                .map(|a| (a.topic.clone(), a.partition))
                .collect();
            let g = self.group.as_mut().expect("checked above");
            g.events.push(GroupEvent::Revoked(revoked));
            group::lock(&g.shared).owned = now_owned;
        }
        if !added.is_empty() {
            let group_name = self
                .group
                .as_ref()
                .map(|g| g.group.clone())
                .unwrap_or_default();
            let committed = self.fetch_committed(&group_name).await?;
            for (topic, partition) in &added {
                self.assigned.push(Assignment {
                    topic: topic.clone(),
                    partition: *partition,
                    position: committed.get(&(topic.clone(), *partition)).copied(),
                });
            }
            self.assigned
                .sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        }
        let g = self.group.as_mut().expect("checked above");
        if !added.is_empty() {
            g.events.push(GroupEvent::Assigned(added));
        }
        group::lock(&g.shared).owned = target;
        g.wake.notify_one();
        Ok(())
    }

    async fn maybe_auto_commit(&mut self) {
        let due = self.group.as_ref().is_some_and(|g| {
            g.options
                .auto_commit_interval
                .is_some_and(|i| g.last_commit.elapsed() >= i)
        });
        if due {
            if let Err(e) = self.commit().await {
                debug!(cause = %e, "auto-commit failed; retrying at the next interval");
            }
            if let Some(g) = &mut self.group {
                g.last_commit = std::time::Instant::now();
            }
        }
    }

    /// Sets which partitions of `topic` this consumer reads, replacing its earlier assignment
    /// for that topic (other topics keep theirs). Partitions that stay assigned keep their
    /// position; new ones start per the reset policy on the next poll unless sought.
    pub async fn assign(&mut self, topic: &str, partitions: &[u32]) -> Result<(), ClientError> {
        let count = self.partition_count(topic).await?;
        if let Some(&p) = partitions.iter().find(|&&p| p >= count) {
            return Err(ClientError::UnknownPartition {
                topic: topic.to_string(),
                partition: p,
                partitions: count,
            });
        }
        let mut wanted: Vec<u32> = partitions.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        let (mine, others): (Vec<_>, Vec<_>) = std::mem::take(&mut self.assigned)
            .into_iter()
            .partition(|a| a.topic == topic);
        self.assigned = others;
        for p in wanted {
            let position = mine
                .iter()
                .find(|a| a.partition == p)
                .and_then(|a| a.position);
            self.assigned.push(Assignment {
                topic: topic.to_string(),
                partition: p,
                position,
            });
        }
        Ok(())
    }

    /// Assigns every partition `topic` has now; returns them.
    pub async fn assign_all(&mut self, topic: &str) -> Result<Vec<u32>, ClientError> {
        let count = self.partition_count(topic).await?;
        let all: Vec<u32> = (0..count).collect();
        self.assign(topic, &all).await?;
        Ok(all)
    }

    /// The assigned partitions, in fetch order.
    pub fn assignment(&self) -> Vec<(String, u32)> {
        self.assigned
            .iter()
            .map(|a| (a.topic.clone(), a.partition))
            .collect()
    }

    /// Moves an assigned partition's position; returns the offset it now points at.
    /// `Offset` is taken as given (checked by the broker at the next fetch); the others are
    /// looked up with `ListOffsets`.
    pub async fn seek(
        &mut self,
        topic: &str,
        partition: u32,
        to: SeekTo,
    ) -> Result<u64, ClientError> {
        let index = self.index_of(topic, partition)?;
        let offset = match to {
            SeekTo::Offset(o) => o,
            SeekTo::Earliest => {
                self.list_offset(topic, partition, OffsetSpec::Earliest)
                    .await?
            }
            SeekTo::Latest => {
                self.list_offset(topic, partition, OffsetSpec::Latest)
                    .await?
            }
            SeekTo::Timestamp(ts) => {
                self.list_offset(topic, partition, OffsetSpec::Timestamp(ts))
                    .await?
            }
        };
        self.assigned[index].position = Some(offset);
        Ok(offset)
    }

    /// Next offset the consumer will read from the partition; `None` if it is not assigned or
    /// has no position yet.
    pub fn position(&self, topic: &str, partition: u32) -> Option<u64> {
        self.assigned
            .iter()
            .find(|a| a.topic == topic && a.partition == partition)
            .and_then(|a| a.position)
    }

    /// One fetch round (long-poll up to max_wait); returns records in offset order per
    /// partition, possibly none.
    pub async fn poll(&mut self) -> Result<Vec<ConsumerRecord>, ClientError> {
        if self.group.is_some() {
            self.reconcile().await?;
            self.maybe_auto_commit().await;
            if self.assigned.is_empty() {
                // Nothing assigned (yet): wait a little, as a fetch would.
                tokio::time::sleep(self.config.max_wait.min(Duration::from_millis(100))).await;
                return Ok(Vec::new());
            }
        }
        if self.assigned.is_empty() {
            return Err(ClientError::InvalidConfig(
                "the consumer has no partitions assigned; call assign first".into(),
            ));
        }
        for i in 0..self.assigned.len() {
            if self.assigned[i].position.is_none() {
                let position = self.reset_position(i, None).await?;
                self.assigned[i].position = Some(position);
            }
        }
        let (partitions, asked) = self
            .next_fetch()
            .expect("every assigned partition got a position just above");
        let (fetched, mut retriable) = match self.prefetch.take() {
            Some(mut ahead) if ahead.asked == asked => (&mut ahead.task)
                .await
                .unwrap_or(Err(ClientError::Closed))?,
            _ => fetch_from_leaders(&self.client, &self.config, partitions).await?,
        };
        // First pass: find errors that fail the whole poll, before any position moves.
        let mut resets = Vec::new();
        for f in &fetched {
            let fp = &f.partition;
            let Some(e) = &fp.error else { continue };
            let index = self.index_of(&fp.topic, fp.partition).map_err(|_| {
                ClientError::UnexpectedResponse(format!(
                    "fetch answered for {}/{}, which was not asked for",
                    fp.topic, fp.partition
                ))
            })?;
            if e.code == ErrorCode::OffsetOutOfRange {
                if self.config.reset == OffsetReset::Error {
                    return Err(ClientError::OffsetOutOfRange {
                        topic: fp.topic.clone(),
                        partition: fp.partition,
                        earliest: e.offset.unwrap_or(fp.log_start),
                    });
                }
                resets.push((index, e.clone()));
            } else if e.code.is_retriable() {
                debug!(topic = %fp.topic, partition = fp.partition, cause = %e, "skipping partition this round");
                if Client::means_stale_route(&ClientError::Broker(e.clone())) {
                    self.client.invalidate(&fp.topic);
                }
                retriable += 1;
            } else {
                return Err(ClientError::Broker(e.clone()));
            }
        }
        // Second pass: decode everything, then commit positions.
        let mut records = Vec::new();
        let mut positions = Vec::new();
        for f in fetched {
            let fp = &f.partition;
            if fp.error.is_some() {
                continue;
            }
            let index = self.index_of(&fp.topic, fp.partition)?;
            let position = self.assigned[index].position.unwrap_or(0);
            let (mut got, next) = match f.next_offset {
                Some(next) => (
                    decode_packed(&fp.topic, fp.partition, position, &f.data)?,
                    next.max(position),
                ),
                None if f.data.is_empty() => continue,
                None => decode_partition(&fp.topic, fp.partition, position, f.data.clone())
                    .map_err(ClientError::Protocol)?,
            };
            records.append(&mut got);
            positions.push((index, next));
        }
        for (index, next) in positions {
            self.assigned[index].position = Some(next);
        }
        let resetting = !resets.is_empty();
        for (index, e) in resets {
            let position = self.reset_position(index, Some(&e)).await?;
            debug!(
                topic = %self.assigned[index].topic,
                partition = self.assigned[index].partition,
                position,
                "position out of range; reset"
            );
            self.assigned[index].position = Some(position);
        }
        if records.is_empty() && retriable > 0 {
            // Every answer was "try again" (a leader moving): don't spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
        } else if !resetting {
            self.fetch_ahead();
        }
        Ok(records)
    }

    /// The fetch of every assigned partition from its position, with what it asks for (topic,
    /// partition, offset) to match a fetch sent ahead against; `None` while a partition has no
    /// position.
    fn next_fetch(&self) -> Option<(Vec<FetchPartition>, Vec<Asked>)> {
        let partitions = self
            .assigned
            .iter()
            .map(|a| {
                a.position.map(|offset| FetchPartition {
                    topic: a.topic.clone(),
                    partition: a.partition,
                    offset,
                    max_bytes: self.config.max_partition_bytes,
                    leader_epoch: None,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        let asked = partitions
            .iter()
            .map(|p| (p.topic.clone(), p.partition, p.offset))
            .collect();
        Some((partitions, asked))
    }

    /// Sends the fetch the next poll would send, from the positions just reached.
    fn fetch_ahead(&mut self) {
        let Some((partitions, asked)) = self.next_fetch() else {
            return;
        };
        let (client, config) = (self.client.clone(), self.config.clone());
        self.prefetch = Some(Prefetch {
            asked,
            task: tokio::spawn(
                async move { fetch_from_leaders(&client, &config, partitions).await },
            ),
        });
    }

    /// Endless stream of records, polling as needed. Errors are yielded as they come; the
    /// stream ends after the first one that a retry cannot cure.
    pub fn into_stream(self) -> impl Stream<Item = Result<ConsumerRecord, ClientError>> {
        futures::stream::unfold(
            (self, VecDeque::new(), false),
            |(mut consumer, mut buffer, done)| async move {
                if done {
                    return None;
                }
                loop {
                    if let Some(r) = buffer.pop_front() {
                        return Some((Ok(r), (consumer, buffer, false)));
                    }
                    match consumer.poll().await {
                        Ok(records) => buffer.extend(records),
                        Err(e) => {
                            let fatal = !e.is_retriable();
                            if !fatal {
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                            return Some((Err(e), (consumer, buffer, fatal)));
                        }
                    }
                }
            },
        )
    }

    fn index_of(&self, topic: &str, partition: u32) -> Result<usize, ClientError> {
        self.assigned
            .iter()
            .position(|a| a.topic == topic && a.partition == partition)
            .ok_or_else(|| ClientError::NotAssigned {
                topic: topic.to_string(),
                partition,
            })
    }

    /// Where the reset policy puts a partition: with no position (`error` is `None`), or after
    /// the broker said its position is out of range.
    async fn reset_position(
        &self,
        index: usize,
        error: Option<&WireError>,
    ) -> Result<u64, ClientError> {
        let a = &self.assigned[index];
        match self.config.reset {
            OffsetReset::Earliest => match error.and_then(|e| e.offset) {
                Some(earliest) => Ok(earliest),
                None => {
                    self.list_offset(&a.topic, a.partition, OffsetSpec::Earliest)
                        .await
                }
            },
            OffsetReset::Latest => {
                self.list_offset(&a.topic, a.partition, OffsetSpec::Latest)
                    .await
            }
            OffsetReset::Error => match error {
                Some(e) => Err(ClientError::OffsetOutOfRange {
                    topic: a.topic.clone(),
                    partition: a.partition,
                    earliest: e.offset.unwrap_or(0),
                }),
                None => Err(ClientError::NoPosition {
                    topic: a.topic.clone(),
                    partition: a.partition,
                }),
            },
        }
    }

    async fn list_offset(
        &self,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
    ) -> Result<u64, ClientError> {
        let offsets = self
            .client
            .admin()
            .list_offsets(topic, vec![(partition, spec)])
            .await?;
        match offsets.into_iter().find(|o| o.partition == partition) {
            Some(o) => o.result.map_err(ClientError::Broker),
            None => Err(ClientError::UnexpectedResponse(format!(
                "list offsets for {topic}/{partition} returned no entry for it"
            ))),
        }
    }

    async fn partition_count(&self, topic: &str) -> Result<u32, ClientError> {
        let meta = self.client.metadata(Some(vec![topic.to_string()])).await?;
        match meta.topics.iter().find(|t| t.name == topic) {
            Some(t) if !t.partitions.is_empty() => Ok(t.partitions.len() as u32),
            _ => Err(unknown_topic(topic)),
        }
    }
}

/// One partition's part of a fetch answer.
#[derive(Debug)]
struct Fetched {
    partition: FetchedPartition,
    data: Bytes,
    /// Where to continue from, for transformed records (their offsets have gaps).
    next_offset: Option<u64>,
}

/// Sends the fetch for `partitions` to their leaders — one request per broker, all at
/// once — and returns each partition's answer with its bytes, and how many partitions got
/// no answer this round for a reason a retry can cure (no leader known, a broker down).
async fn fetch_from_leaders(
    client: &Client,
    config: &ConsumerConfig,
    partitions: Vec<FetchPartition>,
) -> FetchResult {
    let mut by_leader: BTreeMap<u32, Vec<FetchPartition>> = BTreeMap::new();
    let mut unanswered = 0;
    for mut p in partitions {
        let mut leader = client.cached_leader(&p.topic, p.partition);
        if leader.is_none() {
            if let Err(e) = client.refresh_topic(&p.topic).await {
                debug!(topic = %p.topic, cause = %e, "metadata refresh failed");
            }
            leader = client.cached_leader(&p.topic, p.partition);
        }
        match leader {
            Some((node, epoch)) => {
                p.leader_epoch = Some(epoch);
                by_leader.entry(node).or_default().push(p);
            }
            None => unanswered += 1,
        }
    }
    let max_wait_ms = u32::try_from(config.max_wait.as_millis()).unwrap_or(u32::MAX);
    let requests = by_leader.into_iter().map(|(node, partitions)| {
        let topics: BTreeSet<String> = partitions.iter().map(|p| p.topic.clone()).collect();
        let fetch = FetchRequest {
            max_wait_ms,
            min_bytes: config.min_bytes,
            max_bytes: config.max_bytes,
            partitions,
        };
        let request = match &config.transform {
            Some(t) => Request::FetchTransformed(FetchTransformedRequest {
                fetch,
                plugin: t.plugin.clone(),
                config: t.config.clone(),
            }),
            None => Request::Fetch(fetch),
        };
        async move {
            let answer = client.request_to(node, request, Bytes::new()).await;
            (topics, answer)
        }
    });
    let mut fetched = Vec::new();
    let mut first_error = None;
    let mut sent = 0;
    for (topics, answer) in futures::future::join_all(requests).await {
        sent += 1;
        match answer {
            Ok((ResponseBody::Fetched(f), raw)) => {
                fetched.extend(split_answer(f.partitions, raw, |_| None)?);
            }
            Ok((ResponseBody::FetchedTransformed(f), raw)) => {
                let next: Vec<u64> = f.partitions.iter().map(|p| p.next_offset).collect();
                let partitions = f
                    .partitions
                    .into_iter()
                    .map(|p| FetchedPartition {
                        topic: p.topic,
                        partition: p.partition,
                        error: p.error,
                        high_watermark: p.high_watermark,
                        log_start: p.log_start,
                        bytes: p.bytes,
                    })
                    .collect();
                fetched.extend(split_answer(partitions, raw, |i| next.get(i).copied())?);
            }
            Ok((other, _)) => {
                let wanted = if config.transform.is_some() {
                    "FetchedTransformed"
                } else {
                    "Fetched"
                };
                return Err(unexpected(wanted, &other));
            }
            Err(e) if e.is_retriable() => {
                debug!(cause = %e, "fetch from a leader failed; retrying next round");
                for t in &topics {
                    client.invalidate(t);
                }
                unanswered += 1;
                first_error.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
    }
    // Every broker asked failed: say why rather than return nothing forever.
    if let Some(e) = first_error
        && fetched.is_empty()
        && sent > 0
    {
        return Err(e);
    }
    Ok((fetched, unanswered))
}

/// Splits an answer's raw bytes among its partitions (each partition's `bytes`, in order).
fn split_answer(
    partitions: Vec<FetchedPartition>,
    mut raw: Bytes,
    next_offset: impl Fn(usize) -> Option<u64>,
) -> Result<Vec<Fetched>, ClientError> {
    let mut out = Vec::with_capacity(partitions.len());
    for (i, partition) in partitions.into_iter().enumerate() {
        let len = partition.bytes as usize;
        if len > raw.len() {
            return Err(ClientError::Protocol(ProtoError::Malformed(
                "fetch response claims more batch bytes than it carries",
            )));
        }
        out.push(Fetched {
            partition,
            data: raw.split_to(len),
            next_offset: next_offset(i),
        });
    }
    Ok(out)
}

/// Decodes one partition's transformed records (plugin ABI packed format) at or after
/// `position`.
fn decode_packed(
    topic: &str,
    partition: u32,
    position: u64,
    data: &[u8],
) -> Result<Vec<ConsumerRecord>, ClientError> {
    if data.is_empty() {
        return Ok(Vec::new());
    }
    let records = sluice_plugin_abi::decode_batch(data).map_err(|e| {
        ClientError::UnexpectedResponse(format!("transformed records do not decode: {e}"))
    })?;
    Ok(records
        .into_iter()
        .filter(|r| r.offset >= position)
        .map(|r| ConsumerRecord {
            topic: topic.to_string(),
            partition,
            offset: r.offset,
            timestamp: r.timestamp,
            key: r.key.map(Bytes::from),
            value: r.value.map(Bytes::from),
            headers: r
                .headers
                .into_iter()
                .map(|(key, value)| Header {
                    key,
                    value: value.map(Bytes::from),
                })
                .collect(),
        })
        .collect())
}

/// Decodes one partition's fetched batches: records at or after `position`, in offset order,
/// and the position after them.
fn decode_partition(
    topic: &str,
    partition: u32,
    position: u64,
    data: Bytes,
) -> Result<(Vec<ConsumerRecord>, u64), ProtoError> {
    let mut out = Vec::new();
    let mut next = position;
    for (header, batch) in split_batches(data)? {
        if header.next_offset() <= next {
            continue;
        }
        for r in decode_records(&header, &batch)? {
            if r.offset < next {
                continue;
            }
            next = r.offset + 1;
            out.push(ConsumerRecord {
                topic: topic.to_string(),
                partition,
                offset: r.offset,
                timestamp: r.timestamp,
                key: r.key,
                value: r.value,
                headers: r.headers,
            });
        }
        next = next.max(header.next_offset());
    }
    Ok((out, next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::batch::{BatchBuilder, Compression, Record, assign_offset};

    fn batch(base: u64, values: &[&str]) -> Vec<u8> {
        let mut b = BatchBuilder::new(Compression::Lz4);
        for (i, v) in values.iter().enumerate() {
            b.push(&Record {
                key: None,
                value: Some(Bytes::copy_from_slice(v.as_bytes())),
                headers: vec![],
                timestamp: 1000 + i as i64,
            });
        }
        let mut bytes = b.finish(-1, -1, -1).unwrap();
        assign_offset(&mut bytes, base, 0);
        bytes
    }

    #[test]
    fn skips_records_below_the_position() {
        let mut data = batch(10, &["a", "b", "c"]);
        data.extend(batch(13, &["d", "e"]));
        let (records, next) = decode_partition("t", 2, 12, Bytes::from(data)).unwrap();
        let offsets: Vec<u64> = records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, vec![12, 13, 14]);
        assert_eq!(records[0].value.as_deref(), Some(&b"c"[..]));
        assert_eq!(records[0].timestamp, 1002);
        assert_eq!((records[0].topic.as_str(), records[0].partition), ("t", 2));
        assert_eq!(next, 15);
    }

    #[test]
    fn batches_wholly_below_the_position_are_skipped() {
        let data = batch(0, &["a", "b"]);
        let (records, next) = decode_partition("t", 0, 5, Bytes::from(data)).unwrap();
        assert!(records.is_empty());
        assert_eq!(next, 5, "the position never moves backwards");
    }

    #[test]
    fn corrupt_batch_is_an_error() {
        let mut data = batch(0, &["a", "b"]);
        let last = data.len() - 1;
        data[last] ^= 0xff;
        assert!(matches!(
            decode_partition("t", 0, 0, Bytes::from(data)),
            Err(ProtoError::CrcMismatch { .. })
        ));
    }
}
