//! Pipelines: chains of transform plugins applied to every committed record of one topic,
//! written to another through the broker's normal append path, exactly once through a restart.
//!
//! One runner task per input partition, on the broker that leads it: runners start and stop
//! as pipelines come and go and as leadership moves ([`PipelineRunners::follow`], run on every
//! metadata change). Output to a partition this broker leads is appended here; output to one
//! another broker leads is produced there, as any idempotent producer would, with the same
//! producer id and sequences. Checkpoints go into the metadata log, so whichever broker leads an
//! input partition next resumes from the last one. A runner waits for the input high watermark to pass its
//! checkpoint, reads whole stored batches from there and handles them one input batch at a time
//! (their boundaries are fixed in the log, so a replay sees identical units): records go through
//! the chain on a blocking thread, the output is routed (key hash, round-robin for keyless
//! records, or the partition a record names) and becomes one batch per output partition,
//! stamped with the runner's own idempotent producer id (allocated in the metadata log when the
//! pipeline is created, epoch 0) and per-output-partition sequence numbers.
//!
//! After at most [`BATCHES_PER_CHECKPOINT`] input batches, once their output is acknowledged
//! (durably: appended here, or acknowledged by the leader with acks=all), the runner writes its
//! checkpoint to the metadata log: the next input offset, the next sequence per output
//! partition and every plugin's state. So a committed checkpoint implies that the output before
//! it is durable too. After a crash the runner
//! resumes from the checkpoint and replays the same input batches with the same state and the
//! same sequences; the output batches that had reached the log are recognised by the
//! idempotent-producer check and dropped (at most `BATCHES_PER_CHECKPOINT` per output partition
//! since the checkpoint, within the 5 batches each partition remembers per producer). This
//! needs deterministic plugins: the same input and state must give the same number of records
//! per output partition.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use sluice_metadata::{MetadataCommand, PipelineRecord, PipelineSpec};
use sluice_plugin_host::{
    Limits, MemoryState, PARTITION_UNSET, PluginKind, PluginRecord, TransformInstance,
};
use sluice_proto::batch::{decode_records, split_batches};
use sluice_proto::{
    BatchBuilder, Compression, CreatePipelineRequest, ErrorCode, Header, OffsetSpec,
    PipelineDescription, PipelinePartition, PipelineStart, Record, Request, ResponseBody,
    WireError,
};
use sluice_storage::{PartitionId, StorageError};

use crate::Broker;
use crate::fetch::below_high_watermark;
use crate::produce::Output;
use crate::router::Reply;
use crate::wire_error::{propose_error, storage_error};

/// Input batches handled between two checkpoints. Each gives at most one output batch per
/// output partition, and a partition remembers a producer's last 5 batches, so a replay of
/// everything since the checkpoint is always recognised.
const BATCHES_PER_CHECKPOINT: usize = 4;

/// How often an idle runner looks again at its creator's rights.
const RIGHTS_RECHECK: Duration = Duration::from_secs(2);

/// Bytes read from the input per step (at least one whole batch is always read).
const READ_BYTES: u32 = 1 << 20;

/// The running pipelines of this node.
#[derive(Debug, Default)]
pub(crate) struct PipelineRunners {
    /// A `std` mutex: held only to look up, start or stop runners, never across an await.
    running: Mutex<HashMap<String, Running>>,
    /// Steps that wrote output, for `pipeline_fault_abort_before_checkpoint`.
    steps_with_output: AtomicU64,
}

#[derive(Debug)]
struct Running {
    created_index: u64,
    /// The runners of the input partitions this node leads, by partition.
    partitions: BTreeMap<u32, Runner>,
}

#[derive(Debug)]
struct Runner {
    status: Arc<Mutex<RunnerStatus>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Runner {
    fn drop(&mut self) {
        // Stopping a runner anywhere is safe: whatever it wrote after its checkpoint is
        // replayed, and recognised, by the next runner.
        self.task.abort();
    }
}

impl Runner {
    /// Ended without failing: it stopped leading its input partition.
    fn ended_cleanly(&self) -> bool {
        self.task.is_finished()
            && self.status.lock().expect("pipeline status lock").state == RunnerState::Running
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum RunnerState {
    Running,
    Failed(String),
}

#[derive(Debug, Clone)]
struct RunnerStatus {
    state: RunnerState,
    checkpoint: u64,
    duplicates_dropped: u64,
}

/// What a runner writes after each acknowledged step.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Checkpoint {
    next_offset: u64,
    /// Next sequence number per output partition (absent: 0).
    sequences: BTreeMap<u32, i32>,
    /// `MemoryState::to_bytes` of each plugin of the chain, in chain order.
    states: Vec<Vec<u8>>,
}

const CHECKPOINT_VERSION: u8 = 1;

impl Checkpoint {
    /// `version:u8 next_offset:u64 n:u32 (partition:u32 seq:i32)*n m:u32 (len:u32 bytes)*m`,
    /// little-endian.
    /// Its head (version, next offset) is what the metadata state reads to keep checkpoints
    /// moving forward ([`sluice_metadata::checkpoint_offset`]).
    fn encode(&self) -> Vec<u8> {
        let mut b = vec![CHECKPOINT_VERSION];
        b.extend_from_slice(&self.next_offset.to_le_bytes());
        b.extend_from_slice(&(self.sequences.len() as u32).to_le_bytes());
        for (p, s) in &self.sequences {
            b.extend_from_slice(&p.to_le_bytes());
            b.extend_from_slice(&s.to_le_bytes());
        }
        b.extend_from_slice(&(self.states.len() as u32).to_le_bytes());
        for s in &self.states {
            b.extend_from_slice(&(s.len() as u32).to_le_bytes());
            b.extend_from_slice(s);
        }
        b
    }

    fn decode(mut b: &[u8]) -> Result<Self, String> {
        fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
            if b.len() < n {
                return Err("pipeline checkpoint is truncated".into());
            }
            let (h, t) = b.split_at(n);
            *b = t;
            Ok(h)
        }
        fn u32_(b: &mut &[u8]) -> Result<u32, String> {
            Ok(u32::from_le_bytes(take(b, 4)?.try_into().expect("4 bytes")))
        }
        let version = take(&mut b, 1)?[0];
        if version != CHECKPOINT_VERSION {
            return Err(format!("unknown pipeline checkpoint version {version}"));
        }
        let next_offset = u64::from_le_bytes(take(&mut b, 8)?.try_into().expect("8 bytes"));
        let mut sequences = BTreeMap::new();
        for _ in 0..u32_(&mut b)? {
            let p = u32_(&mut b)?;
            let s = i32::from_le_bytes(take(&mut b, 4)?.try_into().expect("4 bytes"));
            sequences.insert(p, s);
        }
        let mut states = Vec::new();
        for _ in 0..u32_(&mut b)? {
            let n = u32_(&mut b)? as usize;
            states.push(take(&mut b, n)?.to_vec());
        }
        if !b.is_empty() {
            return Err("trailing bytes after the pipeline checkpoint".into());
        }
        Ok(Checkpoint {
            next_offset,
            sequences,
            states,
        })
    }
}

fn checkpoint_key(rec: &PipelineRecord, partition: u32) -> String {
    format!(
        "pipeline/{}/{}/{partition}",
        rec.spec.name, rec.created_index
    )
}

/// The sequence after `seq` moved on by `n` records, wrapping to 0 after `i32::MAX` (as the
/// store counts).
fn advance_sequence(seq: i32, n: usize) -> i32 {
    ((i64::from(seq) + n as i64) % (i64::from(i32::MAX) + 1)) as i32
}

/// Routes a chain's output to output partitions: the partition a record names, else its key's
/// hash, else round-robin from `base` (the input batch's base offset, so a replay routes the
/// same way). Keeps each partition's records in output order.
fn route(
    records: Vec<PluginRecord>,
    partitions: u32,
    base: u64,
    to: &str,
) -> Result<BTreeMap<u32, Vec<PluginRecord>>, String> {
    let mut out: BTreeMap<u32, Vec<PluginRecord>> = BTreeMap::new();
    for (i, r) in records.into_iter().enumerate() {
        let p = if r.partition != PARTITION_UNSET {
            if r.partition >= partitions {
                return Err(format!(
                    "plugin output record {i} names partition {} but topic {to:?} has \
                     partitions 0..{partitions}",
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

pub(crate) fn to_plugin_record(r: sluice_proto::StoredRecord, partition: u32) -> PluginRecord {
    PluginRecord {
        key: r.key.map(|b| b.to_vec()),
        value: r.value.map(|b| b.to_vec()),
        headers: r
            .headers
            .into_iter()
            .map(|h| (h.key, h.value.map(|v| v.to_vec())))
            .collect(),
        timestamp: r.timestamp,
        partition,
        offset: r.offset,
    }
}

pub(crate) fn to_record(r: PluginRecord) -> Record {
    Record {
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
        timestamp: r.timestamp,
    }
}

fn limits(spec: &PipelineSpec) -> Limits {
    let mut l = Limits::default();
    if let Some(ms) = spec.max_call_ms {
        l.max_call_ms = ms;
    }
    if let Some(b) = spec.max_memory_bytes {
        l.max_memory_bytes = b as usize;
    }
    l
}

/// One step's result: output batches in append order, and the checkpoint once they are stored.
struct Step {
    batches: Vec<(u32, Vec<u8>)>,
    checkpoint: Checkpoint,
}

/// Reads up to [`BATCHES_PER_CHECKPOINT`] input batches from `cp.next_offset` and runs them
/// through the chain. Blocking: plugin calls and store reads.
fn step(
    broker: &Broker,
    spec: &PipelineSpec,
    producer_id: i64,
    input: PartitionId,
    output: &Output,
    chain: &mut [TransformInstance],
    cp: &Checkpoint,
) -> Result<Step, String> {
    let hw = broker.high_watermark(input);
    let read = match broker.store.read(input, cp.next_offset, READ_BYTES) {
        Ok(r) => r,
        Err(StorageError::OffsetOutOfRange { log_start, .. }) if log_start > cp.next_offset => {
            // Retention removed input this pipeline never read; nothing can bring it back.
            tracing::warn!(pipeline = %spec.name, partition = input.partition, from = cp.next_offset, to = log_start, "input removed by retention before the pipeline read it; skipping");
            return Ok(Step {
                batches: Vec::new(),
                checkpoint: Checkpoint {
                    next_offset: log_start,
                    ..cp.clone()
                },
            });
        }
        Err(e) => return Err(storage_error(e).message),
    };
    let bytes = below_high_watermark(read.bytes, hw);
    let batches = split_batches(bytes).map_err(|e| format!("input batch: {e}"))?;
    let mut next = cp.clone();
    let mut out = Vec::new();
    for (header, bytes) in batches.into_iter().take(BATCHES_PER_CHECKPOINT) {
        let records: Vec<PluginRecord> = decode_records(&header, &bytes)
            .map_err(|e| format!("input batch at offset {}: {e}", header.base_offset))?
            .into_iter()
            .filter(|r| r.offset >= cp.next_offset)
            .map(|r| to_plugin_record(r, input.partition))
            .collect();
        let mut records = records;
        for (t, name) in chain.iter_mut().zip(&spec.plugins) {
            if records.is_empty() {
                break;
            }
            records = t.process(&records).map_err(|e| {
                format!(
                    "plugin {name:?} failed on the input batch at offset {}: {e}",
                    header.base_offset
                )
            })?;
        }
        for (p, recs) in route(records, output.partitions, header.base_offset, &spec.to)? {
            let mut b = BatchBuilder::new(Compression::None);
            for r in &recs {
                b.push(&to_record(r.clone()));
            }
            let seq = next.sequences.get(&p).copied().unwrap_or(0);
            let batch = b
                .finish(producer_id, 0, seq)
                .map_err(|e| format!("output batch: {e}"))?;
            next.sequences.insert(p, advance_sequence(seq, recs.len()));
            out.push((p, batch));
        }
        next.next_offset = header.next_offset();
    }
    next.states = chain
        .iter()
        .map(|t| MemoryState::copy_of(t.state()).to_bytes())
        .collect();
    Ok(Step {
        batches: out,
        checkpoint: next,
    })
}

/// Builds the chain's instances from a checkpoint's states. Blocking.
fn start_chain(
    broker: &Broker,
    spec: &PipelineSpec,
    cp: &Checkpoint,
) -> Result<Vec<TransformInstance>, String> {
    let mut chain = Vec::with_capacity(spec.plugins.len());
    for (i, name) in spec.plugins.iter().enumerate() {
        let plugin = broker.plugin(name).map_err(|e| e.message)?;
        let state = match cp.states.get(i) {
            Some(bytes) => MemoryState::from_bytes(bytes)
                .map_err(|e| format!("checkpointed state of plugin {name:?}: {e}"))?,
            None => MemoryState::new(),
        };
        let t = plugin
            .transform(spec.config.clone(), limits(spec), Box::new(state))
            .map_err(|e| format!("plugin {name:?}: {e}"))?;
        chain.push(t);
    }
    Ok(chain)
}

/// The partition's checkpoint: from the metadata log, else (a pipeline that ran before
/// checkpoints went there) from this node's store, else the pipeline's start.
fn load_checkpoint(
    broker: &Broker,
    rec: &PipelineRecord,
    partition: u32,
) -> Result<Checkpoint, String> {
    if let Some(bytes) = broker.controller.read(|s| {
        s.pipeline_checkpoint(&rec.spec.name, partition)
            .map(<[u8]>::to_vec)
    }) {
        return Checkpoint::decode(&bytes);
    }
    match broker
        .store
        .meta_get(&checkpoint_key(rec, partition))
        .map_err(|e| storage_error(e).message)?
    {
        Some(bytes) => Checkpoint::decode(&bytes),
        None => Ok(Checkpoint {
            next_offset: rec.spec.start_offsets[partition as usize],
            sequences: BTreeMap::new(),
            states: Vec::new(),
        }),
    }
}

async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, String> + Send + 'static,
) -> Result<R, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("pipeline task failed: {e}"))?
}

/// Why a runner stopped before its work was over.
#[derive(Debug)]
enum Stop {
    /// The plugins or the pipeline's definition failed: a retry would fail the same way, so
    /// the runner stays failed until the pipeline is resumed.
    Failed(String),
    /// The cluster around it failed (a write, a checkpoint, a leader moving): the runner
    /// starts again from its checkpoint after a pause; replayed output is recognised.
    Retry(String),
}

impl From<String> for Stop {
    fn from(e: String) -> Stop {
        Stop::Retry(e)
    }
}

/// How long an output batch appended here waits for its partition's in-sync replicas before
/// the step is retried.
const OUTPUT_COMMIT_TIMEOUT: Duration = Duration::from_secs(30);

/// One input partition's runner. Returns when the broker shuts down or stops leading the
/// input partition.
async fn run(
    broker: Arc<Broker>,
    rec: Arc<PipelineRecord>,
    partition: u32,
    status: Arc<Mutex<RunnerStatus>>,
) -> Result<(), Stop> {
    let producer_id = *rec.producer_ids.get(partition as usize).ok_or_else(|| {
        Stop::Failed(format!("input partition {partition} was added after the pipeline was created; recreate the pipeline to cover it"))
    })?;
    let (b, r) = (broker.clone(), rec.clone());
    let (mut cp, mut chain) = blocking(move || {
        let cp = load_checkpoint(&b, &r, partition)?;
        let chain = start_chain(&b, &r.spec, &cp)?;
        Ok((cp, chain))
    })
    .await
    .map_err(Stop::Failed)?;
    status.lock().expect("pipeline status lock").checkpoint = cp.next_offset;
    let mut shutdown = broker.shutdown.subscribe();
    loop {
        // The pipeline acts as its creator: each step needs the creator's rights as they are
        // (looked at again at least every RIGHTS_RECHECK while the input is quiet).
        crate::authz::pipeline_rights(&broker, &rec.spec).map_err(Stop::Failed)?;
        let input = match broker.led_partition(&rec.spec.from, partition) {
            Ok(led) => led.id,
            // Leadership moved: the new leader's runner carries on from the checkpoint.
            Err(e) if e.code.is_retriable() => {
                tracing::info!(pipeline = %rec.spec.name, partition, cause = %e.message, "no longer leading the input partition; runner stops");
                return Ok(());
            }
            Err(e) => return Err(Stop::Failed(e.message)),
        };
        let mut hw = broker.runtime(input).high_watermark.subscribe();
        let from = cp.next_offset;
        tokio::select! {
            r = hw.wait_for(|hw| *hw > from) => { r.map_err(|e| e.to_string())?; }
            _ = shutdown.wait_for(|s| *s) => return Ok(()),
            _ = tokio::time::sleep(RIGHTS_RECHECK) => continue,
        }
        crate::authz::pipeline_rights(&broker, &rec.spec).map_err(Stop::Failed)?;
        let output = Output::of(&broker, &rec.spec.to).ok_or_else(|| {
            Stop::Failed(format!("output topic {:?} no longer exists", rec.spec.to))
        })?;
        let (b, r, prev) = (broker.clone(), rec.clone(), cp.clone());
        let (chain_back, result) = tokio::task::spawn_blocking(move || {
            let result = step(&b, &r.spec, producer_id, input, &output, &mut chain, &prev);
            (chain, result.map(|s| (s, output)))
        })
        .await
        .map_err(|e| format!("pipeline task failed: {e}"))?;
        chain = chain_back;
        let (step, output) = result.map_err(Stop::Failed)?;
        let wrote_output = !step.batches.is_empty();
        let duplicates = crate::produce::write_sequenced(
            &broker,
            &rec.spec.to,
            &output,
            step.batches,
            OUTPUT_COMMIT_TIMEOUT,
        )
        .await?;
        if duplicates > 0 {
            tracing::info!(pipeline = %rec.spec.name, partition, duplicates, "replayed output recognised as already written; dropped");
        }
        if let Some(n) = broker.config.pipeline_fault_abort_before_checkpoint
            && wrote_output
            && broker
                .pipelines
                .steps_with_output
                .fetch_add(1, Ordering::Relaxed)
                + 1
                == n
        {
            tracing::error!(pipeline = %rec.spec.name, partition, "pipeline_fault_abort_before_checkpoint: aborting (testing only)");
            std::process::abort();
        }
        cp = step.checkpoint;
        let saved = broker
            .controller
            .propose_async(MetadataCommand::PipelineCheckpoint {
                name: rec.spec.name.clone(),
                created_index: rec.created_index,
                partition,
                checkpoint: cp.encode(),
            })
            .await;
        match saved {
            Ok(()) => {}
            // Deleted (and perhaps created again) meanwhile: this runner's work is over.
            Err(crate::controller::ProposeError::Refused(
                sluice_metadata::MetadataError::UnknownPipeline(_),
            )) => return Ok(()),
            Err(e) => return Err(Stop::Retry(format!("saving the checkpoint: {e}"))),
        }
        let mut s = status.lock().expect("pipeline status lock");
        s.checkpoint = cp.next_offset;
        s.duplicates_dropped += duplicates;
    }
}

impl PipelineRunners {
    /// Brings this node's runners in line with the metadata: a runner for every input
    /// partition this node leads of every pipeline that is not paused (started from its
    /// checkpoint), none for anything else. A runner that failed stays, with its error, until
    /// the pipeline is resumed; one that ended because leadership moved is started again if
    /// leadership came back. Run on every metadata change and after a pipeline request.
    pub(crate) fn follow(broker: &Arc<Broker>) {
        let node = broker.node_id;
        let wanted: HashMap<String, (PipelineRecord, Vec<u32>)> = broker.controller.read(|s| {
            s.pipelines()
                .filter(|p| !p.paused)
                .map(|p| {
                    let led = s.topic(&p.spec.from).map_or_else(Vec::new, |t| {
                        (0..p.spec.start_offsets.len().min(t.partitions.len()) as u32)
                            .filter(|i| t.partitions[*i as usize].leader == Some(node))
                            .collect()
                    });
                    (p.spec.name.clone(), (p.clone(), led))
                })
                .collect()
        });
        let mut stopped = Vec::new();
        let mut running = broker.pipelines.running.lock().expect("pipelines lock");
        let names: Vec<String> = running.keys().cloned().collect();
        for name in names {
            let keep = wanted
                .get(&name)
                .is_some_and(|(rec, _)| running[&name].created_index == rec.created_index);
            if !keep {
                stopped.extend(running.remove(&name));
            }
        }
        for (name, (rec, led)) in wanted {
            let entry = running.entry(name).or_insert_with(|| Running {
                created_index: rec.created_index,
                partitions: BTreeMap::new(),
            });
            let gone: Vec<u32> = entry
                .partitions
                .iter()
                .filter(|(p, r)| !led.contains(p) || r.ended_cleanly())
                .map(|(p, _)| *p)
                .collect();
            for p in gone {
                stopped.extend(entry.partitions.remove(&p).map(|r| Running {
                    created_index: rec.created_index,
                    partitions: BTreeMap::from([(p, r)]),
                }));
            }
            let rec = Arc::new(rec);
            for partition in led {
                if let std::collections::btree_map::Entry::Vacant(slot) =
                    entry.partitions.entry(partition)
                {
                    slot.insert(spawn_runner(broker, rec.clone(), partition));
                    tracing::info!(pipeline = %rec.spec.name, partition, "pipeline runner started");
                }
            }
        }
        drop(running);
        // Dropping stops them, outside the lock.
        drop(stopped);
    }

    fn stop(&self, name: &str) {
        let old = self.running.lock().expect("pipelines lock").remove(name);
        drop(old);
    }

    /// Stops the runners of pipelines that the metadata command at log index `index` removed
    /// (a forced topic delete removes every pipeline of the topic with it), as
    /// [`PipelineRunners::stop`] does for one. `live` holds every pipeline as that command left
    /// the metadata, by name and creating index; runners of pipelines created by a later
    /// command are left alone.
    pub(crate) fn stop_removed(&self, index: u64, live: &HashMap<String, u64>) {
        let removed: Vec<(String, Running)> = {
            let mut running = self.running.lock().expect("pipelines lock");
            let names: Vec<String> = running
                .iter()
                .filter(|(name, r)| {
                    r.created_index < index && live.get(*name) != Some(&r.created_index)
                })
                .map(|(name, _)| name.clone())
                .collect();
            names
                .into_iter()
                .filter_map(|name| running.remove(&name).map(|r| (name, r)))
                .collect()
        };
        for (name, _) in &removed {
            tracing::info!(pipeline = %name, "pipeline deleted with its topic; runners stopped");
        }
        // Dropping a `Running` aborts its tasks, outside the lock.
        drop(removed);
    }
}

/// First pause before a runner interrupted by the cluster starts again; it doubles up to
/// [`RETRY_PAUSE_MAX`].
const RETRY_PAUSE: Duration = Duration::from_millis(200);
const RETRY_PAUSE_MAX: Duration = Duration::from_secs(5);

/// Starts the runner of one input partition.
fn spawn_runner(broker: &Arc<Broker>, rec: Arc<PipelineRecord>, partition: u32) -> Runner {
    let status = Arc::new(Mutex::new(RunnerStatus {
        state: RunnerState::Running,
        checkpoint: rec.spec.start_offsets[partition as usize],
        duplicates_dropped: 0,
    }));
    let (b, s) = (broker.clone(), status.clone());
    let task = tokio::spawn(async move {
        let name = rec.spec.name.clone();
        let mut shutdown = b.shutdown.subscribe();
        let mut pause = RETRY_PAUSE;
        loop {
            match run(b.clone(), rec.clone(), partition, s.clone()).await {
                Ok(()) => return,
                Err(Stop::Failed(e)) => {
                    tracing::error!(pipeline = %name, partition, cause = %e, "pipeline partition stopped");
                    s.lock().expect("pipeline status lock").state = RunnerState::Failed(e);
                    return;
                }
                Err(Stop::Retry(e)) => {
                    tracing::warn!(pipeline = %name, partition, cause = %e, retry_in = ?pause, "pipeline partition interrupted; resuming from its checkpoint");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            pause = (pause * 2).min(RETRY_PAUSE_MAX);
        }
    });
    Runner { status, task }
}

pub(crate) async fn handle(broker: Arc<Broker>, request: Request, caller: String) -> Reply {
    let result = tokio::task::spawn_blocking(move || admin(&broker, request, &caller)).await;
    match result {
        Ok(r) => Reply::Frame(r, Bytes::new()),
        Err(e) => Reply::Frame(
            Err(WireError::new(
                ErrorCode::Internal,
                format!("pipeline handler failed: {e}"),
            )),
            Bytes::new(),
        ),
    }
}

fn unknown_pipeline(name: &str) -> WireError {
    WireError::new(
        ErrorCode::UnknownPipeline,
        format!("pipeline {name:?} does not exist; see `sluice pipeline list`"),
    )
}

fn record(broker: &Broker, name: &str) -> Result<PipelineRecord, WireError> {
    broker
        .controller
        .read(|s| s.pipeline(name).cloned())
        .ok_or_else(|| unknown_pipeline(name))
}

/// Pipeline requests. Blocking: runs on a blocking thread (tokio's, so runners can be spawned).
fn admin(broker: &Arc<Broker>, request: Request, caller: &str) -> Result<ResponseBody, WireError> {
    match request {
        Request::CreatePipeline(req) => create(broker, req, caller),
        Request::ListPipelines => {
            let records: Vec<PipelineRecord> =
                broker.controller.read(|s| s.pipelines().cloned().collect());
            Ok(ResponseBody::Pipelines(
                records.iter().map(|r| describe(broker, r)).collect(),
            ))
        }
        Request::DescribePipeline { name } => Ok(ResponseBody::Pipeline(Box::new(describe(
            broker,
            &record(broker, &name)?,
        )))),
        Request::PausePipeline { name } => set_paused(broker, &name, true),
        Request::ResumePipeline { name } => set_paused(broker, &name, false),
        Request::DeletePipeline { name } => {
            let rec = record(broker, &name)?;
            let description = describe(broker, &rec);
            broker
                .controller
                .propose(MetadataCommand::DeletePipeline { name: name.clone() })
                .map_err(propose_error)?;
            broker.pipelines.stop(&name);
            tracing::info!(pipeline = %name, "pipeline deleted");
            Ok(ResponseBody::Pipeline(Box::new(description)))
        }
        _ => Err(WireError::new(
            ErrorCode::InvalidRequest,
            "request routed to the wrong handler",
        )),
    }
}

fn set_paused(broker: &Arc<Broker>, name: &str, paused: bool) -> Result<ResponseBody, WireError> {
    record(broker, name)?;
    broker
        .controller
        .propose(MetadataCommand::SetPipelinePaused {
            name: name.to_owned(),
            paused,
        })
        .map_err(propose_error)?;
    let rec = record(broker, name)?;
    // Resume restarts every runner from its checkpoint, failed ones included.
    broker.pipelines.stop(name);
    PipelineRunners::follow(broker);
    tracing::info!(pipeline = %name, paused, "pipeline {}", if paused { "paused" } else { "resumed" });
    Ok(ResponseBody::Pipeline(Box::new(describe(broker, &rec))))
}

fn create(
    broker: &Arc<Broker>,
    req: CreatePipelineRequest,
    caller: &str,
) -> Result<ResponseBody, WireError> {
    if req.plugins.is_empty() {
        return Err(WireError::new(
            ErrorCode::InvalidConfig,
            "a pipeline needs at least one plugin (--plugin NAME)",
        ));
    }
    let spec_limits = PipelineSpec {
        name: req.name.clone(),
        plugins: req.plugins.clone(),
        from: req.from.clone(),
        to: req.to.clone(),
        config: req.config.clone(),
        max_call_ms: req.max_call_ms,
        max_memory_bytes: req.max_memory_bytes,
        start_offsets: Vec::new(),
    };
    // Refuse what can never run now, not on the first record: a plugin that is not a
    // transform, or one whose `init` refuses the configuration.
    for name in &req.plugins {
        let plugin = broker.plugin(name)?;
        if plugin.kind() != PluginKind::Transform {
            return Err(WireError::new(
                ErrorCode::InvalidPlugin,
                format!(
                    "plugin {name:?} is a {}, not a transform; a pipeline runs transforms",
                    plugin.kind()
                ),
            ));
        }
        plugin
            .transform(
                req.config.clone(),
                limits(&spec_limits),
                Box::new(MemoryState::new()),
            )
            .map_err(|e| {
                WireError::new(
                    ErrorCode::InvalidPlugin,
                    format!("plugin {name:?} cannot start with this configuration: {e}"),
                )
            })?;
    }
    let from = broker.controller.read(|s| {
        s.topic(&req.from).map(|t| {
            let local: Vec<bool> = t
                .partitions
                .iter()
                .map(|p| p.leader == Some(broker.node_id))
                .collect();
            (t.topic_id, local)
        })
    });
    let Some((topic_id, local)) = from else {
        return Err(WireError::new(
            ErrorCode::UnknownTopic,
            format!("input topic {:?} does not exist", req.from),
        ));
    };
    // Partitions other brokers lead: their leaders say where they start.
    let spec_of = match req.start {
        PipelineStart::Earliest => OffsetSpec::Earliest,
        PipelineStart::Latest => OffsetSpec::Latest,
    };
    let remote: Vec<(u32, OffsetSpec)> = (0..local.len() as u32)
        .filter(|p| !local[*p as usize])
        .map(|p| (p, spec_of))
        .collect();
    let remote_offsets: BTreeMap<u32, u64> = if remote.is_empty() {
        BTreeMap::new()
    } else {
        let topic = req.from.clone();
        tokio::runtime::Handle::current().block_on(async {
            let client = broker.cluster_client().await?;
            let offsets = client
                .admin()
                .list_offsets(&topic, remote)
                .await
                .map_err(|e| WireError::new(ErrorCode::LeaderNotAvailable, e.to_string()))?;
            offsets
                .into_iter()
                .map(|o| o.result.map(|offset| (o.partition, offset)))
                .collect::<Result<BTreeMap<u32, u64>, WireError>>()
        })?
    };
    let start_offsets = (0..local.len() as u32)
        .map(|partition| {
            let id = PartitionId {
                topic_id,
                partition,
            };
            if let Some(o) = remote_offsets.get(&partition) {
                return *o;
            }
            match req.start {
                PipelineStart::Earliest => {
                    broker.store.partition_state(id).map_or(0, |s| s.log_start)
                }
                PipelineStart::Latest => broker.high_watermark(id),
            }
        })
        .collect();
    let spec = PipelineSpec {
        start_offsets,
        ..spec_limits
    };
    let rec = broker
        .controller
        .propose_then(
            MetadataCommand::CreatePipelineAs {
                spec,
                owner: caller.to_owned(),
            },
            |s, _| s.pipeline(&req.name).cloned(),
        )
        .map_err(propose_error)?
        .ok_or_else(|| unknown_pipeline(&req.name))?;
    PipelineRunners::follow(broker);
    tracing::info!(pipeline = %req.name, from = %req.from, to = %req.to, plugins = ?req.plugins, "pipeline created");
    Ok(ResponseBody::Pipeline(Box::new(describe(broker, &rec))))
}

/// Blocking: partitions led by other brokers get their high watermarks from them.
/// The runners on this node, for metrics: (pipeline, input partition, `running` or `failed`,
/// lag in records behind the input partition's high watermark).
pub(crate) fn local_runners(broker: &Broker) -> Vec<(String, u32, &'static str, u64)> {
    let topics: HashMap<String, String> = broker.controller.read(|s| {
        s.pipelines()
            .map(|p| (p.spec.name.clone(), p.spec.from.clone()))
            .collect()
    });
    let running = broker.pipelines.running.lock().expect("pipelines lock");
    let mut out = Vec::new();
    for (name, r) in running.iter() {
        let Some(from) = topics.get(name) else {
            continue;
        };
        for (partition, runner) in &r.partitions {
            let status = runner.status.lock().expect("pipeline status lock");
            let state = match status.state {
                RunnerState::Running => "running",
                RunnerState::Failed(_) => "failed",
            };
            let hw = broker
                .led_partition(from, *partition)
                .map_or(status.checkpoint, |led| broker.high_watermark(led.id));
            out.push((
                name.clone(),
                *partition,
                state,
                hw.saturating_sub(status.checkpoint),
            ));
        }
    }
    out
}

fn describe(broker: &Arc<Broker>, rec: &PipelineRecord) -> PipelineDescription {
    let statuses: BTreeMap<u32, RunnerStatus> = broker
        .pipelines
        .running
        .lock()
        .expect("pipelines lock")
        .get(&rec.spec.name)
        .filter(|r| r.created_index == rec.created_index)
        .map(|r| {
            r.partitions
                .iter()
                .map(|(p, r)| (*p, r.status.lock().expect("pipeline status lock").clone()))
                .collect()
        })
        .unwrap_or_default();
    let (topic_id, leaders): (Option<u64>, Vec<Option<u32>>) = broker.controller.read(|s| {
        s.topic(&rec.spec.from).map_or((None, Vec::new()), |t| {
            (
                Some(t.topic_id),
                t.partitions.iter().map(|p| p.leader).collect(),
            )
        })
    });
    let remote: Vec<u32> = (0..rec.spec.start_offsets.len() as u32)
        .filter(|p| {
            leaders
                .get(*p as usize)
                .copied()
                .flatten()
                .is_some_and(|l| l != broker.node_id)
        })
        .collect();
    let remote_hw: BTreeMap<u32, u64> = if remote.is_empty() {
        BTreeMap::new()
    } else {
        let found = tokio::runtime::Handle::current().block_on(crate::admin::cluster_offsets(
            broker,
            &rec.spec.from,
            &remote,
            OffsetSpec::Latest,
        ));
        remote
            .iter()
            .zip(found)
            .filter_map(|(p, r)| r.ok().map(|hw| (*p, hw)))
            .collect()
    };
    let partitions: Vec<PipelinePartition> = (0..rec.spec.start_offsets.len() as u32)
        .map(|partition| {
            let status = statuses.get(&partition);
            let elsewhere = leaders
                .get(partition as usize)
                .copied()
                .flatten()
                .filter(|l| *l != broker.node_id);
            let checkpoint = match status {
                Some(s) => s.checkpoint,
                None => load_checkpoint(broker, rec, partition)
                    .map_or(rec.spec.start_offsets[partition as usize], |c| {
                        c.next_offset
                    }),
            };
            let high_watermark = remote_hw.get(&partition).copied().unwrap_or_else(|| {
                topic_id.map_or(0, |topic_id| {
                    broker.high_watermark(PartitionId {
                        topic_id,
                        partition,
                    })
                })
            });
            let (state, error) = match status.map(|s| &s.state) {
                _ if rec.paused => ("paused".to_string(), None),
                Some(RunnerState::Running) => ("running".to_string(), None),
                Some(RunnerState::Failed(e)) => ("failed".to_string(), Some(e.clone())),
                // Its runner runs on the input partition's leader; ask that broker for more.
                None => match elsewhere {
                    Some(node) => (format!("on node {node}"), None),
                    None => ("stopped".to_string(), None),
                },
            };
            PipelinePartition {
                partition,
                status: state,
                checkpoint,
                high_watermark,
                lag: high_watermark.saturating_sub(checkpoint),
                error,
                duplicates_dropped: status.map_or(0, |s| s.duplicates_dropped),
            }
        })
        .collect();
    let error = partitions.iter().find_map(|p| {
        p.error
            .as_ref()
            .map(|e| format!("partition {}: {e}", p.partition))
    });
    let status = if rec.paused {
        "paused"
    } else if error.is_some() {
        "failed"
    } else {
        "running"
    };
    PipelineDescription {
        name: rec.spec.name.clone(),
        plugins: rec.spec.plugins.clone(),
        from: rec.spec.from.clone(),
        to: rec.spec.to.clone(),
        config: rec.spec.config.clone(),
        status: status.into(),
        error,
        partitions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_roundtrip_and_refusals() {
        let cp = Checkpoint {
            next_offset: 1234,
            sequences: [(0, 5), (3, i32::MAX)].into_iter().collect(),
            states: vec![vec![], vec![1, 2, 3]],
        };
        let bytes = cp.encode();
        assert_eq!(Checkpoint::decode(&bytes).unwrap(), cp);
        // The metadata state reads the offset from the head to keep checkpoints moving forward.
        assert_eq!(sluice_metadata::checkpoint_offset(&bytes), Some(1234));
        for cut in 0..bytes.len() {
            assert!(Checkpoint::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Checkpoint::decode(&longer).is_err());
    }

    #[test]
    fn sequences_wrap_like_the_store() {
        assert_eq!(advance_sequence(0, 3), 3);
        assert_eq!(advance_sequence(i32::MAX, 1), 0);
        assert_eq!(advance_sequence(i32::MAX - 1, 3), 1);
    }

    fn rec(key: Option<&str>, partition: u32) -> PluginRecord {
        PluginRecord {
            partition,
            ..PluginRecord::new(key.map(|k| k.as_bytes().to_vec()), Some(b"v".to_vec()))
        }
    }

    #[test]
    fn routing_by_partition_key_and_round_robin() {
        let out = route(
            vec![
                rec(None, 2),
                rec(Some("k"), PARTITION_UNSET),
                rec(None, PARTITION_UNSET),
                rec(None, PARTITION_UNSET),
            ],
            3,
            10,
            "out",
        )
        .unwrap();
        let k = sluice_proto::partitioner::partition_for_key(b"k", 3);
        let mut expected: BTreeMap<u32, usize> = BTreeMap::new();
        *expected.entry(2).or_default() += 1;
        *expected.entry(k).or_default() += 1;
        // Keyless records at output positions 2 and 3 of the batch at base 10.
        *expected.entry(12 % 3).or_default() += 1;
        *expected.entry(13 % 3).or_default() += 1;
        let got: BTreeMap<u32, usize> = out.iter().map(|(p, r)| (*p, r.len())).collect();
        assert_eq!(got, expected);
        let err = route(vec![rec(None, 3)], 3, 0, "out").unwrap_err();
        assert!(err.contains("names partition 3"), "{err}");
    }
}

/// The checkpoint decoder against hostile or corrupt stored bytes. It reserves nothing from a
/// count or length it reads (each entry is taken only once its bytes are there), so huge
/// counts and lengths must end in an error at the first missing byte.
#[cfg(test)]
mod checkpoint_decoding {
    use super::*;

    fn sample() -> Checkpoint {
        Checkpoint {
            next_offset: 42,
            sequences: BTreeMap::from([(0, 7), (3, i32::MAX)]),
            states: vec![vec![], b"state".to_vec()],
        }
    }

    /// Byte offsets of the sequence count, of the state count, and of the first state's
    /// length in `sample().encode()`.
    const AT_SEQUENCES: usize = 1 + 8;
    const AT_STATES: usize = AT_SEQUENCES + 4 + 2 * 8;
    const AT_FIRST_STATE_LEN: usize = AT_STATES + 4;

    #[test]
    fn round_trip() {
        let c = sample();
        assert_eq!(Checkpoint::decode(&c.encode()).unwrap(), c);
    }

    #[test]
    fn huge_counts_and_lengths_are_refused() {
        let good = sample().encode();
        for at in [AT_SEQUENCES, AT_STATES, AT_FIRST_STATE_LEN] {
            for v in [u32::MAX, 1 << 31, 1 << 28] {
                let mut bad = good.clone();
                bad[at..at + 4].copy_from_slice(&v.to_le_bytes());
                let err = Checkpoint::decode(&bad).unwrap_err();
                assert!(err.contains("truncated"), "{v} at byte {at}: {err}");
            }
        }
    }

    #[test]
    fn every_truncation_is_an_error_and_no_changed_byte_panics() {
        let good = sample().encode();
        for n in 0..good.len() {
            assert!(Checkpoint::decode(&good[..n]).is_err(), "cut at {n}");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(Checkpoint::decode(&longer).is_err());
        for at in 0..good.len() {
            for v in [0, 1, 0x7f, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[at] = v;
                // A changed count or length is an error; a changed value may decode.
                let _ = Checkpoint::decode(&bad);
            }
        }
    }
}
