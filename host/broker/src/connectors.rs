//! Connector tasks: each connector runs as one task on the live broker the metadata names for
//! it ([`sluice_metadata::MetadataState::connector_owner`]); tasks start and stop as
//! connectors come and go, are paused, and as brokers come and go ([`ConnectorTasks::follow`],
//! run on every metadata change). A failed task is reported to the metadata log and started
//! again with backoff (1 s doubling to 60 s), from the connector's last progress.
//!
//! A **source** task writes an intent to the metadata log before each batch it writes (the
//! checkpoint before, the records polled, the checkpoint after, the partitions and sequences),
//! then writes the batch with the connector's idempotent producer id, acks=all. A new task
//! first replays the last intent — opens the source at the checkpoint before, polls the same
//! number of records, writes them with the same sequences (a copy already stored is recognised
//! and dropped) — then goes on. A **sink** task reads the committed records of its topics'
//! partitions from their leaders (here, or over the peer connection), hands them to the
//! component, and after each flush commits the next offsets to the metadata log. See
//! docs/connectors.md.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_metadata::{
    ConnectorKind, ConnectorRecord, ConnectorSpec, MetadataCommand, MetadataError, SourceIntent,
};
use sluice_plugin_abi::{BatchReader, encode_batch};
use sluice_plugin_host::{
    DirGrant, Grants, Limits, MemoryState, PARTITION_UNSET, PluginKind, PluginRecord, SinkInstance,
    TransformInstance,
};
use sluice_proto::batch::{decode_records, split_batches};
use sluice_proto::{
    BatchBuilder, Compression, ConnectorDescription, CreateConnectorRequest, ErrorCode, Request,
    ResponseBody, WireError,
};
use sluice_storage::PartitionId;

use crate::Broker;
use crate::controller::ProposeError;
use crate::produce::Output;
use crate::router::Reply;
use crate::wire_error::propose_error;

/// Records asked of a source per poll.
const POLL_RECORDS: u32 = 1_000;
/// Bytes read per partition per sink step.
const SINK_READ_BYTES: u32 = 1 << 20;
/// A sink flushes (and commits) after this many records, or when it has read everything.
const SINK_FLUSH_RECORDS: u64 = 10_000;
/// How long a batch's write waits for its partition's in-sync replicas before the task fails.
const WRITE_COMMIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Header naming a record's topic, for a sink reading several.
pub(crate) const TOPIC_HEADER: &str = "sluice.topic";

/// What `connector describe` shows of a task running here.
#[derive(Debug, Clone, Default)]
pub(crate) struct TaskStatus {
    pub(crate) state: &'static str,
    pub(crate) records: u64,
    pub(crate) started: Option<Instant>,
}

struct Task {
    created_index: u64,
    handle: tokio::task::JoinHandle<()>,
    status: Arc<Mutex<TaskStatus>>,
}

/// The connector tasks running on this node, by connector name.
#[derive(Default)]
pub(crate) struct ConnectorTasks(Mutex<HashMap<String, Task>>);

impl std::fmt::Debug for ConnectorTasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.0.lock().expect("tasks lock").keys().cloned().collect();
        f.debug_tuple("ConnectorTasks").field(&names).finish()
    }
}

impl Drop for ConnectorTasks {
    fn drop(&mut self) {
        for t in self.0.get_mut().expect("tasks lock").values() {
            t.handle.abort();
        }
    }
}

impl ConnectorTasks {
    /// Brings this node's tasks in line with the metadata: one for every connector that is
    /// not paused and that this node owns, none for anything else.
    pub(crate) fn follow(broker: &Arc<Broker>) {
        let me = broker.node_id;
        let wanted: HashMap<String, ConnectorRecord> = broker.controller.read(|s| {
            s.connectors()
                .filter(|c| !c.paused && s.connector_owner(&c.spec.name) == Some(me))
                .map(|c| (c.spec.name.clone(), c.clone()))
                .collect()
        });
        let mut tasks = broker.connectors.0.lock().expect("tasks lock");
        tasks.retain(|name, t| {
            let keep = wanted
                .get(name)
                .is_some_and(|c| c.created_index == t.created_index)
                && !t.handle.is_finished();
            if !keep {
                tracing::info!(connector = %name, "connector task stops here");
                t.handle.abort();
            }
            keep
        });
        for (name, rec) in wanted {
            tasks.entry(name.clone()).or_insert_with(|| {
                tracing::info!(connector = %name, kind = rec.spec.kind.as_str(), "connector task starts here");
                let status = Arc::new(Mutex::new(TaskStatus {
                    state: "starting",
                    ..TaskStatus::default()
                }));
                Task {
                    created_index: rec.created_index,
                    handle: tokio::spawn(supervise(broker.clone(), rec, status.clone())),
                    status,
                }
            });
        }
    }

    /// The status of the task of connector `name` if it runs here.
    pub(crate) fn status(&self, name: &str) -> Option<TaskStatus> {
        let tasks = self.0.lock().expect("tasks lock");
        tasks
            .get(name)
            .map(|t| t.status.lock().expect("status lock").clone())
    }
}

fn set_state(status: &Mutex<TaskStatus>, state: &'static str) {
    status.lock().expect("status lock").state = state;
}

/// Runs the connector's task, restarting it with backoff after each failure, until the task
/// is stopped (aborted by [`ConnectorTasks::follow`]) or the broker shuts down.
async fn supervise(broker: Arc<Broker>, rec: ConnectorRecord, status: Arc<Mutex<TaskStatus>>) {
    let mut shutdown = broker.shutdown.subscribe();
    let mut backoff = Duration::from_secs(1);
    loop {
        let started = Instant::now();
        status.lock().expect("status lock").started = Some(started);
        let ended = tokio::select! {
            r = run(&broker, &rec, &status) => r,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let Err(e) = ended else {
            set_state(&status, "stopped");
            return;
        };
        tracing::warn!(connector = %rec.spec.name, cause = %e, retry_in = ?backoff, "connector task failed");
        set_state(&status, "failed");
        let report = MetadataCommand::ConnectorFailed {
            name: rec.spec.name.clone(),
            created_index: rec.created_index,
            at_ms: crate::retention::now_ms(),
            error: e,
        };
        if let Err(ProposeError::Refused(_)) = broker.controller.propose_async(report).await {
            return; // deleted meanwhile
        }
        if started.elapsed() > Duration::from_secs(120) {
            backoff = Duration::from_secs(1); // it ran well for a while: start over gently
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(60));
    }
}

/// Runs a blocking call on a blocking thread, handing `x` there and back.
async fn blocking<T: Send + 'static, R: Send + 'static>(
    x: T,
    f: impl FnOnce(&mut T) -> R + Send + 'static,
) -> Result<(T, R), String> {
    tokio::task::spawn_blocking(move || {
        let mut x = x;
        let r = f(&mut x);
        (x, r)
    })
    .await
    .map_err(|e| format!("connector call failed: {e}"))
}

/// One task: registers itself (a new generation), then runs the source or sink until it fails
/// or another task replaces it (`Ok`).
async fn run(
    broker: &Arc<Broker>,
    rec: &ConnectorRecord,
    status: &Arc<Mutex<TaskStatus>>,
) -> Result<(), String> {
    let name = &rec.spec.name;
    let started = broker
        .controller
        .propose_async(MetadataCommand::ConnectorStarted {
            name: name.clone(),
            created_index: rec.created_index,
            node: broker.node_id,
        })
        .await;
    match started {
        Ok(()) => {}
        Err(ProposeError::Refused(_)) => return Ok(()), // deleted
        Err(e) => return Err(format!("starting: {e}")),
    }
    // The record as of this start: its generation is this task's (a later start elsewhere
    // makes this task's progress refused).
    let Some(rec) = broker.controller.read(|s| s.connector(name).cloned()) else {
        return Ok(());
    };
    if rec.owner != Some(broker.node_id) {
        return Ok(());
    }
    // The connector acts as its creator: checked at each start and before each batch.
    crate::authz::connector_rights(broker, &rec.spec)?;
    let plugin = broker
        .plugin(&rec.spec.plugin)
        .map_err(|e| format!("plugin {:?}: {}", rec.spec.plugin, e.message))?;
    let grants = Grants {
        dirs: rec
            .spec
            .dirs
            .iter()
            .map(|d| DirGrant::parse(d))
            .collect::<Result<_, _>>()?,
        http_hosts: rec.spec.http_hosts.clone(),
    };
    let transforms = start_transforms(broker, &rec)?;
    match rec.spec.kind {
        ConnectorKind::Source => run_source(broker, &rec, plugin, grants, transforms, status).await,
        ConnectorKind::Sink => run_sink(broker, &rec, plugin, grants, transforms, status).await,
    }
}

fn start_transforms(
    broker: &Broker,
    rec: &ConnectorRecord,
) -> Result<Vec<TransformInstance>, String> {
    rec.spec
        .transforms
        .iter()
        .map(|name| {
            let plugin = broker.plugin(name).map_err(|e| e.message)?;
            plugin
                .transform(
                    rec.spec.settings.clone(),
                    Limits::default(),
                    Box::new(MemoryState::new()),
                )
                .map_err(|e| format!("transform {name:?}: {e}"))
        })
        .collect()
}

fn decode_packed(batch: &[u8]) -> Result<Vec<PluginRecord>, String> {
    BatchReader::new(batch)
        .map_err(|e| e.to_string())?
        .map(|r| r.map(|r| r.to_owned_record()).map_err(|e| e.to_string()))
        .collect()
}

fn apply_transforms(
    chain: &mut [TransformInstance],
    mut records: Vec<PluginRecord>,
) -> Result<Vec<PluginRecord>, String> {
    for t in chain {
        if records.is_empty() {
            break;
        }
        records = t.process(&records).map_err(|e| format!("transform: {e}"))?;
    }
    Ok(records)
}

/// Where each record of a source batch goes and with which sequences: the partition a record
/// names, else its key's hash, else round-robin from the total of the sequences so far (so a
/// replay, which starts from the same sequences, routes the same way).
fn plan(
    records: Vec<PluginRecord>,
    partitions: u32,
    sequences: &BTreeMap<u32, i32>,
) -> Result<BTreeMap<u32, Vec<PluginRecord>>, String> {
    let base: u64 = sequences.values().map(|s| *s as u64).sum();
    let mut out: BTreeMap<u32, Vec<PluginRecord>> = BTreeMap::new();
    for (i, r) in records.into_iter().enumerate() {
        let p = if r.partition != PARTITION_UNSET {
            if r.partition >= partitions {
                return Err(format!(
                    "the source named partition {} but the topic has {partitions}",
                    r.partition
                ));
            }
            r.partition
        } else if let Some(key) = &r.key {
            sluice_proto::partitioner::partition_for_key(key, partitions)
        } else {
            ((base + i as u64) % u64::from(partitions)) as u32
        };
        out.entry(p).or_default().push(r);
    }
    Ok(out)
}

/// A planned batch ready to write: the stamped batches by partition, and the intent's parts
/// (partition, base sequence, records).
type Stamped = (Vec<(u32, Vec<u8>)>, Vec<(u32, i32, u32)>);

/// The batches of a planned source batch, stamped with the connector's producer id and the
/// sequences `parts` names.
fn stamp(
    producer_id: i64,
    routed: BTreeMap<u32, Vec<PluginRecord>>,
    sequences: &BTreeMap<u32, i32>,
) -> Result<Stamped, String> {
    let now = crate::retention::now_ms();
    let mut batches = Vec::new();
    let mut parts = Vec::new();
    for (p, recs) in routed {
        let seq = sequences.get(&p).copied().unwrap_or(0);
        let mut b = BatchBuilder::new(Compression::None);
        for r in &recs {
            let mut record = crate::pipelines::to_record(r.clone());
            if record.timestamp <= 0 {
                record.timestamp = now;
            }
            b.push(&record);
        }
        let batch = b
            .finish(producer_id, 0, seq)
            .map_err(|e| format!("output batch: {e}"))?;
        parts.push((p, seq, recs.len() as u32));
        batches.push((p, batch));
    }
    Ok((batches, parts))
}

/// Starts the source instance opened at `checkpoint`, on a blocking thread.
async fn open_source(
    plugin: &sluice_plugin_host::Plugin,
    config: &[(String, String)],
    grants: &Grants,
    checkpoint: Option<Vec<u8>>,
) -> Result<sluice_plugin_host::SourceInstance, String> {
    let (p, c, g) = (plugin.clone(), config.to_vec(), grants.clone());
    let ((), opened) =
        blocking((), move |_| p.source(c, Limits::default(), &g, checkpoint)).await?;
    opened.map_err(|e| format!("opening the source: {e}"))
}

async fn run_source(
    broker: &Arc<Broker>,
    rec: &ConnectorRecord,
    plugin: sluice_plugin_host::Plugin,
    grants: Grants,
    transforms: Vec<TransformInstance>,
    status: &Arc<Mutex<TaskStatus>>,
) -> Result<(), String> {
    let spec = &rec.spec;
    let topic = spec.topics[0].clone();
    let config = spec.settings.clone();
    let output = |broker: &Broker| {
        Output::of(broker, &topic).ok_or_else(|| format!("output topic {topic:?} no longer exists"))
    };
    let mut sequences = rec.sequences.clone();
    let mut checkpoint = rec.intent.as_ref().map(|i| i.after.clone());
    let mut chain = transforms;

    // Replay the last intent: the same records, the same sequences.
    let source = if let Some(intent) = rec.intent.clone() {
        set_state(status, "replaying");
        let source = open_source(&plugin, &config, &grants, intent.before.clone()).await?;
        let count = intent.count;
        let (source, polled) = blocking(source, move |s| {
            let b = s.poll(count)?;
            let after = s.checkpoint()?;
            Ok::<_, sluice_plugin_host::PluginError>((b, after))
        })
        .await?;
        let (batch, after) = polled.map_err(|e| format!("replaying the last batch: {e}"))?;
        let records = decode_packed(&batch)?;
        if records.len() != count as usize {
            return Err(format!(
                "the source did not return the same records when replayed from its checkpoint \
                 ({} records, where {count} were polled before); it cannot be exactly once",
                records.len(),
            ));
        }
        let (c2, transformed) = blocking(chain, move |c| apply_transforms(c, records)).await?;
        chain = c2;
        let out = output(broker)?;
        let mut before_seqs = sequences.clone();
        for (p, base, _) in &intent.parts {
            before_seqs.insert(*p, *base);
        }
        let routed = plan(transformed?, out.partitions, &before_seqs)?;
        let (batches, parts) = stamp(rec.producer_id, routed, &before_seqs)?;
        if parts != intent.parts {
            return Err(
                "replaying the last batch routed it differently; a transform on the way \
                        is not deterministic"
                    .into(),
            );
        }
        let dups =
            crate::produce::write_sequenced(broker, &topic, &out, batches, WRITE_COMMIT_TIMEOUT)
                .await?;
        tracing::info!(connector = %spec.name, records = count, duplicates = dups, "last source batch replayed");
        if after == intent.after {
            source
        } else {
            // The same records, reached another way (a paged source whose page grew since):
            // go on from the position recorded after them, not from this one.
            drop(source);
            open_source(&plugin, &config, &grants, Some(intent.after.clone())).await?
        }
    } else {
        open_source(&plugin, &config, &grants, None).await?
    };

    set_state(status, "running");
    let mut source = source;
    let mut idle = Duration::from_millis(50);
    // At most `rate` records per second, on average since this task started.
    let rate = spec.max_records_per_second.filter(|r| *r > 0);
    let poll_records = rate.map_or(POLL_RECORDS, |r| r.clamp(1, u64::from(POLL_RECORDS)) as u32);
    let paced_from = Instant::now();
    let mut written: u64 = 0;
    loop {
        crate::authz::connector_rights(broker, &rec.spec)?;
        if let Some(rate) = rate {
            let due = Duration::from_secs_f64(written as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(paced_from.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        let (s, polled) = blocking(source, move |s| {
            let b = s.poll(poll_records)?;
            if BatchReader::new(&b).map_or(0, |r| r.remaining()) == 0 {
                return Ok((b, None));
            }
            let after = s.checkpoint()?;
            Ok::<_, sluice_plugin_host::PluginError>((b, Some(after)))
        })
        .await?;
        source = s;
        let (batch, after) = polled.map_err(|e| format!("polling the source: {e}"))?;
        let Some(after) = after else {
            tokio::time::sleep(idle).await;
            idle = (idle * 2).min(Duration::from_secs(1));
            continue;
        };
        idle = Duration::from_millis(50);
        let records = decode_packed(&batch)?;
        let count = records.len() as u32;
        let (c2, transformed) = blocking(chain, move |c| apply_transforms(c, records)).await?;
        chain = c2;
        let out = output(broker)?;
        let routed = plan(transformed?, out.partitions, &sequences)?;
        let (batches, parts) = stamp(rec.producer_id, routed, &sequences)?;
        let intent = SourceIntent {
            before: checkpoint.clone(),
            count,
            after: after.clone(),
            parts: parts.clone(),
        };
        let recorded = MetadataCommand::ConnectorIntent {
            name: spec.name.clone(),
            created_index: rec.created_index,
            generation: rec.generation,
            intent,
        };
        if !record_progress(broker, recorded, "recording the batch").await? {
            return Ok(());
        }
        for (p, base, n) in &parts {
            let next = (i64::from(*base) + i64::from(*n)) % (i64::from(i32::MAX) + 1);
            sequences.insert(*p, next as i32);
        }
        crate::produce::write_sequenced(broker, &topic, &out, batches, WRITE_COMMIT_TIMEOUT)
            .await?;
        checkpoint = Some(after.clone());
        let (s, committed) = blocking(source, move |s| s.commit(after)).await?;
        source = s;
        committed.map_err(|e| format!("committing the source: {e}"))?;
        written += u64::from(count);
        status.lock().expect("status lock").records += u64::from(count);
    }
}

/// Hands `records` (read from `topic`) to the sink. When it refuses one of them for good
/// (a permanent error), it gets them one at a time, and those it refuses go to the
/// connector's dead-letter topic with the error and where they came from in headers (without
/// one, the task fails). Any other error fails the task. Dead letters are written (acks=all)
/// before the offsets past them are committed: none is lost, one may be written twice.
async fn write_or_dead_letter(
    broker: &Arc<Broker>,
    rec: &ConnectorRecord,
    sink: SinkInstance,
    records: Vec<PluginRecord>,
    topic: &str,
) -> Result<SinkInstance, String> {
    let packed = encode_batch(&records);
    let (mut sink, written) = blocking(sink, move |s| s.write(packed)).await?;
    match written {
        Ok(()) => return Ok(sink),
        Err(e) if sluice_plugin_host::is_permanent(&e) => {}
        Err(e) => return Err(format!("writing to the sink: {e}")),
    }
    let mut dead = Vec::new();
    for r in records {
        let packed = encode_batch(std::slice::from_ref(&r));
        let (s, written) = blocking(sink, move |s| s.write(packed)).await?;
        sink = s;
        match written {
            Ok(()) => {}
            Err(e) if sluice_plugin_host::is_permanent(&e) => dead.push((r, e.to_string())),
            Err(e) => return Err(format!("writing to the sink: {e}")),
        }
    }
    let Some(dlq) = &rec.spec.dead_letter_topic else {
        let (r, e) = &dead[0];
        return Err(format!(
            "the sink refused the record at {topic}/{} offset {} for good ({e}), and the \
             connector has no dead_letter_topic",
            r.partition, r.offset
        ));
    };
    let out = Output::of(broker, dlq)
        .ok_or_else(|| format!("dead-letter topic {dlq:?} no longer exists"))?;
    let header = |k: &str, v: String| (k.to_owned(), Some(v.into_bytes()));
    let letters: Vec<PluginRecord> = dead
        .into_iter()
        .map(|(mut r, e)| {
            tracing::warn!(connector = %rec.spec.name, topic, partition = r.partition, offset = r.offset, cause = %e, "record sent to the dead-letter topic");
            r.headers.retain(|(k, _)| k != TOPIC_HEADER);
            r.headers.extend([
                header("sluice.dlq.error", e),
                header("sluice.dlq.connector", rec.spec.name.clone()),
                header("sluice.dlq.topic", topic.to_owned()),
                header("sluice.dlq.partition", r.partition.to_string()),
                header("sluice.dlq.offset", r.offset.to_string()),
            ]);
            r.partition = PARTITION_UNSET;
            r
        })
        .collect();
    let routed = plan(letters, out.partitions, &BTreeMap::new())?;
    let mut batches = Vec::new();
    for (p, recs) in routed {
        let mut b = BatchBuilder::new(Compression::None);
        for r in recs {
            b.push(&crate::pipelines::to_record(r));
        }
        batches.push((p, b.finish(-1, -1, -1).map_err(|e| e.to_string())?));
    }
    crate::produce::write_sequenced(broker, dlq, &out, batches, WRITE_COMMIT_TIMEOUT).await?;
    Ok(sink)
}

/// Records a task's progress in the metadata log. `Ok(false)`: the task is over — another
/// task replaced it, or the connector was deleted.
async fn record_progress(
    broker: &Broker,
    progress: MetadataCommand,
    what: &str,
) -> Result<bool, String> {
    match broker.controller.propose_async(progress).await {
        Ok(()) => Ok(true),
        Err(ProposeError::Refused(
            MetadataError::ConnectorTaskReplaced { .. } | MetadataError::UnknownConnector(_),
        )) => Ok(false),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

/// Reads committed batches of `id` (of `topic`) from `from` at its leader: here, or over the
/// peer connection. `Ok(None)`: no leader right now.
async fn read_committed(
    broker: &Arc<Broker>,
    topic: &str,
    partition: u32,
    from: u64,
) -> Result<Option<(PartitionId, bytes::Bytes)>, String> {
    let placed = broker.controller.read(|s| {
        s.topic(topic).and_then(|t| {
            t.partitions
                .get(partition as usize)
                .map(|p| (t.topic_id, p.leader, p.leader_epoch))
        })
    });
    let Some((topic_id, leader, leader_epoch)) = placed else {
        return Err(format!("topic {topic:?} no longer exists"));
    };
    let id = PartitionId {
        topic_id,
        partition,
    };
    let Some(leader) = leader else {
        return Ok(None);
    };
    if leader == broker.node_id {
        let hw = broker.high_watermark(id);
        return match broker.store.read(id, from, SINK_READ_BYTES) {
            Ok(r) => Ok(Some((id, crate::fetch::below_high_watermark(r.bytes, hw)))),
            Err(e) => Err(crate::wire_error::storage_error(e).message),
        };
    }
    crate::replication::read_at_leader(broker, id, leader, leader_epoch, from, SINK_READ_BYTES)
        .await
        .map(|b| Some((id, b)))
}

async fn run_sink(
    broker: &Arc<Broker>,
    rec: &ConnectorRecord,
    plugin: sluice_plugin_host::Plugin,
    grants: Grants,
    transforms: Vec<TransformInstance>,
    status: &Arc<Mutex<TaskStatus>>,
) -> Result<(), String> {
    let spec = &rec.spec;
    let (p, c, g) = (plugin.clone(), spec.settings.clone(), grants.clone());
    let ((), opened) = blocking((), move |_| p.sink(c, Limits::default(), &g)).await?;
    let mut sink: SinkInstance = opened.map_err(|e| format!("opening the sink: {e}"))?;
    let mut chain = transforms;
    set_state(status, "running");
    // Where each partition is read next: the committed offsets, else the log start.
    let mut positions: BTreeMap<(String, u32), u64> = rec.offsets.clone();
    let mut unflushed: u64 = 0;
    let mut last_flush = Instant::now();
    let mut idle = Duration::from_millis(50);
    loop {
        crate::authz::connector_rights(broker, &rec.spec)?;
        let partitions: Vec<(String, u32)> = broker.controller.read(|s| {
            spec.topics
                .iter()
                .filter_map(|t| s.topic(t).map(|r| (t, r.partitions.len() as u32)))
                .flat_map(|(t, n)| (0..n).map(move |p| (t.clone(), p)))
                .collect()
        });
        let mut read_any = false;
        for (topic, partition) in partitions {
            let from = positions
                .get(&(topic.clone(), partition))
                .copied()
                .unwrap_or(0);
            let read = match read_committed(broker, &topic, partition, from).await {
                Ok(r) => r,
                Err(e) if e.contains("out of range") => {
                    // Retention removed what this sink had yet to read: go on from the start.
                    let start = broker
                        .controller
                        .read(|s| s.topic(&topic).map(|t| t.topic_id));
                    let start = start
                        .and_then(|topic_id| {
                            broker.store.partition_state(PartitionId {
                                topic_id,
                                partition,
                            })
                        })
                        .map_or(from, |s| s.log_start.max(from));
                    tracing::warn!(connector = %spec.name, topic = %topic, partition, from, "records removed before the sink read them; skipping ahead");
                    positions.insert((topic.clone(), partition), start);
                    continue;
                }
                Err(e) => return Err(format!("reading {topic}/{partition}: {e}")),
            };
            let Some((_, bytes)) = read else { continue };
            let batches = split_batches(bytes).map_err(|e| format!("{topic}/{partition}: {e}"))?;
            let mut records = Vec::new();
            let mut next = from;
            for (header, bytes) in batches {
                for r in decode_records(&header, &bytes).map_err(|e| e.to_string())? {
                    if r.offset < from {
                        continue;
                    }
                    next = r.offset + 1;
                    let mut pr = crate::pipelines::to_plugin_record(r, partition);
                    if spec.topics.len() > 1 {
                        pr.headers
                            .push((TOPIC_HEADER.to_owned(), Some(topic.as_bytes().to_vec())));
                    }
                    records.push(pr);
                }
                next = next.max(header.next_offset());
            }
            if next == from {
                continue;
            }
            read_any = true;
            let n = records.len() as u64;
            let (c2, out) = blocking(chain, move |c| apply_transforms(c, records)).await?;
            chain = c2;
            let out = out?;
            if !out.is_empty() {
                sink = write_or_dead_letter(broker, rec, sink, out, &topic).await?;
            }
            positions.insert((topic, partition), next);
            unflushed += n.max(1);
        }
        let due = unflushed >= SINK_FLUSH_RECORDS
            || (unflushed > 0 && (!read_any || last_flush.elapsed() > Duration::from_secs(1)));
        if due {
            let (s, flushed) = blocking(sink, |s| s.flush()).await?;
            sink = s;
            flushed.map_err(|e| format!("flushing the sink: {e}"))?;
            let offsets = positions
                .iter()
                .map(|((t, p), o)| (t.clone(), *p, *o))
                .collect();
            let saved = MetadataCommand::ConnectorOffsets {
                name: spec.name.clone(),
                created_index: rec.created_index,
                generation: rec.generation,
                offsets,
            };
            if !record_progress(broker, saved, "committing the sink's offsets").await? {
                return Ok(());
            }
            status.lock().expect("status lock").records += unflushed;
            unflushed = 0;
            last_flush = Instant::now();
        }
        if !read_any {
            tokio::time::sleep(idle).await;
            idle = (idle * 2).min(Duration::from_millis(500));
        } else {
            idle = Duration::from_millis(50);
        }
    }
}

/// Handles a connector request (on a blocking thread: it proposes and waits).
pub(crate) async fn handle(broker: Arc<Broker>, request: Request, caller: String) -> Reply {
    let result = tokio::task::spawn_blocking(move || admin(&broker, request, &caller)).await;
    match result {
        Ok(r) => Reply::Frame(r, bytes::Bytes::new()),
        Err(e) => Reply::Frame(
            Err(WireError::new(
                ErrorCode::Internal,
                format!("connector handler failed: {e}"),
            )),
            bytes::Bytes::new(),
        ),
    }
}

fn unknown_connector(name: &str) -> WireError {
    WireError::new(
        ErrorCode::UnknownConnector,
        format!("connector {name:?} does not exist (see `sluice connector list`)"),
    )
}

fn record(broker: &Broker, name: &str) -> Result<ConnectorRecord, WireError> {
    broker
        .controller
        .read(|s| s.connector(name).cloned())
        .ok_or_else(|| unknown_connector(name))
}

fn admin(broker: &Arc<Broker>, request: Request, caller: &str) -> Result<ResponseBody, WireError> {
    let one = |broker: &Arc<Broker>, name: &str| -> Result<ResponseBody, WireError> {
        Ok(ResponseBody::Connector(Box::new(describe(
            broker,
            &record(broker, name)?,
        ))))
    };
    match request {
        Request::CreateConnector(req) => {
            let name = req.name.clone();
            create(broker, req, caller)?;
            one(broker, &name)
        }
        Request::ListConnectors => {
            let records: Vec<ConnectorRecord> = broker
                .controller
                .read(|s| s.connectors().cloned().collect());
            Ok(ResponseBody::Connectors(
                records.iter().map(|r| describe(broker, r)).collect(),
            ))
        }
        Request::DescribeConnector { name } => one(broker, &name),
        Request::PauseConnector { name } => {
            set_paused(broker, &name, true)?;
            one(broker, &name)
        }
        Request::ResumeConnector { name } => {
            set_paused(broker, &name, false)?;
            one(broker, &name)
        }
        Request::RestartConnector { name } => {
            // Stopping and starting again through the log: whichever broker runs the task
            // sees both, in order, and starts it at once from its progress.
            set_paused(broker, &name, true)?;
            set_paused(broker, &name, false)?;
            one(broker, &name)
        }
        Request::DeleteConnector { name } => {
            let description = describe(broker, &record(broker, &name)?);
            broker
                .controller
                .propose(MetadataCommand::DeleteConnector { name: name.clone() })
                .map_err(propose_error)?;
            ConnectorTasks::follow(broker);
            tracing::info!(connector = %name, "connector deleted");
            Ok(ResponseBody::Connector(Box::new(description)))
        }
        _ => Err(WireError::new(
            ErrorCode::InvalidRequest,
            "request routed to the wrong handler",
        )),
    }
}

fn set_paused(broker: &Arc<Broker>, name: &str, paused: bool) -> Result<(), WireError> {
    record(broker, name)?;
    broker
        .controller
        .propose(MetadataCommand::SetConnectorPaused {
            name: name.to_owned(),
            paused,
        })
        .map_err(propose_error)?;
    ConnectorTasks::follow(broker);
    tracing::info!(connector = %name, paused, "connector {}", if paused { "paused" } else { "resumed" });
    Ok(())
}

/// Checks the request (the plugin's kind, the grants, the settings — by opening the connector
/// once, so a missing or bad setting is refused now, naming it) and creates the connector.
fn create(
    broker: &Arc<Broker>,
    req: CreateConnectorRequest,
    caller: &str,
) -> Result<(), WireError> {
    let invalid = |m: String| WireError::new(ErrorCode::InvalidConfig, m);
    let plugin = broker.plugin(&req.plugin)?;
    let kind = match plugin.kind() {
        PluginKind::Source => ConnectorKind::Source,
        PluginKind::Sink => ConnectorKind::Sink,
        other => {
            return Err(WireError::new(
                ErrorCode::InvalidPlugin,
                format!(
                    "plugin {:?} is a {other}, not a source or sink connector",
                    req.plugin
                ),
            ));
        }
    };
    let dirs: Vec<DirGrant> = req
        .dirs
        .iter()
        .map(|d| DirGrant::parse(d))
        .collect::<Result<_, _>>()
        .map_err(invalid)?;
    if let Some(d) = dirs.iter().find(|d| !d.path.is_dir()) {
        return Err(invalid(format!(
            "grants.dirs: {} is not a directory on this broker",
            d.path.display()
        )));
    }
    let grants = Grants {
        dirs,
        http_hosts: req.http_hosts.clone(),
    };
    let opened = match kind {
        ConnectorKind::Source => plugin
            .source(req.settings.clone(), Limits::default(), &grants, None)
            .map(drop),
        ConnectorKind::Sink => plugin
            .sink(req.settings.clone(), Limits::default(), &grants)
            .map(drop),
    };
    opened.map_err(|e| {
        WireError::new(
            ErrorCode::InvalidPlugin,
            format!(
                "connector {:?} cannot start with these settings: {e}",
                req.name
            ),
        )
    })?;
    let spec = ConnectorSpec {
        name: req.name.clone(),
        plugin: req.plugin,
        kind,
        topics: req.topics,
        settings: req.settings,
        dirs: req.dirs,
        http_hosts: req.http_hosts,
        transforms: req.transforms,
        max_records_per_second: req.max_records_per_second,
        dead_letter_topic: req.dead_letter_topic,
    };
    broker
        .controller
        .propose(MetadataCommand::CreateConnectorAs {
            spec,
            owner: caller.to_owned(),
        })
        .map_err(propose_error)?;
    ConnectorTasks::follow(broker);
    tracing::info!(connector = %req.name, kind = kind.as_str(), "connector created");
    Ok(())
}

fn describe(broker: &Broker, rec: &ConnectorRecord) -> ConnectorDescription {
    let owner = broker
        .controller
        .read(|s| s.connector_owner(&rec.spec.name));
    let here = broker.connectors.status(&rec.spec.name);
    let (state, records, rate) = match (&here, rec.paused, owner) {
        (_, true, _) => ("paused".to_owned(), 0, 0),
        (Some(st), _, _) => {
            let secs = st.started.map_or(0.0, |t| t.elapsed().as_secs_f64());
            let rate = if secs > 0.0 {
                (st.records as f64 / secs).round() as u64
            } else {
                0
            };
            (st.state.to_owned(), st.records, rate)
        }
        (None, _, None) => ("unassigned".to_owned(), 0, 0),
        (None, _, Some(n)) if n == broker.node_id => ("starting".to_owned(), 0, 0),
        (None, _, Some(n)) => (format!("on node {n}"), 0, 0),
    };
    let checkpoint = match rec.spec.kind {
        ConnectorKind::Source => rec
            .intent
            .as_ref()
            .map_or_else(|| "none".to_owned(), |i| crate::hex(&i.after)),
        ConnectorKind::Sink => rec
            .offsets
            .iter()
            .map(|((t, p), o)| format!("{t}/{p}@{o}"))
            .collect::<Vec<_>>()
            .join(" "),
    };
    ConnectorDescription {
        name: rec.spec.name.clone(),
        plugin: rec.spec.plugin.clone(),
        kind: rec.spec.kind.as_str().to_owned(),
        topics: rec.spec.topics.clone(),
        settings: rec.spec.settings.clone(),
        dirs: rec.spec.dirs.clone(),
        http_hosts: rec.spec.http_hosts.clone(),
        transforms: rec.spec.transforms.clone(),
        state,
        node: rec.owner.filter(|_| !rec.paused).or(owner),
        generation: rec.generation,
        records,
        records_per_second: rate,
        failures: rec.failures,
        last_error: rec.last_error.clone(),
        checkpoint,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(key: Option<&str>) -> PluginRecord {
        PluginRecord {
            key: key.map(|k| k.as_bytes().to_vec()),
            value: Some(b"v".to_vec()),
            headers: Vec::new(),
            timestamp: 0,
            partition: PARTITION_UNSET,
            offset: 0,
        }
    }

    #[test]
    fn a_replay_plans_and_stamps_a_batch_as_the_first_time() {
        let records = vec![rec(None), rec(Some("k")), rec(None), rec(None)];
        let seqs = BTreeMap::from([(0, 5), (1, 2)]);
        let first = plan(records.clone(), 3, &seqs).unwrap();
        let again = plan(records, 3, &seqs).unwrap();
        assert_eq!(first, again);
        let (_, parts) = stamp(9, first, &seqs).unwrap();
        let (_, parts_again) = stamp(9, again, &seqs).unwrap();
        assert_eq!(parts, parts_again);
        let total: u32 = parts.iter().map(|p| p.2).sum();
        assert_eq!(total, 4);
        for (p, base, _) in &parts {
            assert_eq!(*base, seqs.get(p).copied().unwrap_or(0));
        }
    }
}
