//! The driver: a redb database, the single writer thread doing group commit, and the read path.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, Table, WriteTransaction,
};
use sluice_proto::batch::{self, BatchHeader};
use tokio::sync::oneshot;
use tracing::{debug, error, info, trace, warn};

use crate::error;
use crate::file::{PathFile, Reopen};
use crate::leader_epochs::LeaderEpochs;
use crate::partition_log::{AppendRefused, PartitionLog};
use crate::producer_state::{ProducerStamp, ProducerState, SequenceCheck};
use crate::tables::{
    self, BATCH_INDEX, BATCHES, BatchKey, EpochKey, HIGH_WATERMARKS, IndexRow, LEADER_EPOCHS,
    META_KV, META_LOG, PARTITIONS, Restored,
};
use crate::{
    Appended, PartitionId, PartitionState, ReadBatches, RetentionOutcome, StorageError, StoreFile,
    StoreOptions,
};

type Result<T, E = StorageError> = std::result::Result<T, E>;

/// A partition's in-memory log. A `std::sync::Mutex`, not a Tokio one: it is held only for
/// short, non-async bookkeeping, by the writer thread and by readers.
type SharedLog = Arc<Mutex<PartitionLog>>;

/// A durable commit is never postponed further than this, whatever interval a topic asks for.
const MAX_SYNC_INTERVAL: Duration = Duration::from_secs(3600);

/// Handle on the store. Cheap to clone; every clone talks to the same writer thread.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    commands: Sender<Request>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// What the writer thread and the handles share.
struct Shared {
    /// `None` once the store is shut down, which closes the file (so it can be reopened).
    db: RwLock<Option<Database>>,
    /// Committed view of every partition.
    partitions: RwLock<HashMap<PartitionId, SharedLog>>,
    /// Set while writes are refused: why.
    failure: Mutex<Option<Failure>>,
    /// The store's file, as errors name it.
    location: String,
    closed: AtomicBool,
    commits: AtomicU64,
    /// redb walked the whole file to repair it when the store opened.
    repaired_at_open: bool,
    options: StoreOptions,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = &self.inner.shared;
        f.debug_struct("Store")
            .field("partitions", &read_lock(&shared.partitions).len())
            .field("commits", &shared.commits.load(Ordering::Relaxed))
            .field("closed", &shared.closed.load(Ordering::Relaxed))
            .field("failure", &*lock(&shared.failure))
            .finish()
    }
}

/// Why the store refuses writes.
#[derive(Debug, Clone)]
enum Failure {
    /// The disk is full (the operating system's words). The writer reopens the file once there
    /// is room again.
    DiskFull(String),
    /// Another I/O error. The writer reopens the file once its probe passes; what reached the
    /// file is then the truth, as after a crash.
    Io(String),
    /// Not an I/O error (redb found corruption, ...): reopening by itself is not known to cure
    /// it, so writes stay refused until the store is reopened by hand.
    Fatal(String),
}

impl Failure {
    /// Why a write transaction failed.
    fn of(err: &redb::Error) -> Failure {
        if let Some(io) = error::disk_full(err) {
            Failure::DiskFull(io.to_string())
        } else if error::is_io(err) {
            Failure::Io(err.to_string())
        } else {
            Failure::Fatal(err.to_string())
        }
    }

    /// Whether the writer tries to reopen the file to end it.
    fn reopens(&self) -> bool {
        !matches!(self, Failure::Fatal(_))
    }

    /// The error a refused write gets.
    fn error(&self, shared: &Shared) -> StorageError {
        let location = &shared.location;
        match self {
            Failure::DiskFull(cause) => StorageError::DiskFull {
                location: location.clone(),
                cause: cause.clone(),
            },
            Failure::Io(cause) => StorageError::Failed(format!(
                "writing {location} failed: {cause}; the store reopens itself every {} ms and \
                 writes resume once that succeeds",
                shared.options.reopen_interval.as_millis()
            )),
            Failure::Fatal(cause) => StorageError::Failed(format!(
                "writing {location} failed: {cause}; writes stay refused until the store is \
                 reopened"
            )),
        }
    }
}

/// A full disk named as such, with the file it happened to; any other error as it is.
fn naming_disk_full(err: StorageError, location: &str) -> StorageError {
    match &err {
        StorageError::Redb(e) => match error::disk_full(e) {
            Some(io) => StorageError::DiskFull {
                location: location.to_owned(),
                cause: io.to_string(),
            },
            None => err,
        },
        _ => err,
    }
}

/// Opens the file, creates or checks its tables and rebuilds the in-memory state from it: at
/// start-up, and when the writer reopens the file after an I/O error.
fn open_database(
    file: &dyn Reopen,
    options: &StoreOptions,
) -> Result<(Database, tables::Loaded, bool)> {
    let open = || {
        let (db, repaired) = file.open_database(options)?;
        tables::init(&db)?;
        let loaded = tables::load_partitions(&db)?;
        if options.quick_repair {
            // The last durable commit must carry the allocator state for a quick repair after
            // a crash; the ones above do not.
            let mut txn = db.begin_write()?;
            txn.set_quick_repair(true);
            txn.commit()?;
        }
        Ok((db, loaded, repaired))
    };
    open().map_err(|err| naming_disk_full(err, &file.location()))
}

fn shared_logs(logs: HashMap<PartitionId, PartitionLog>) -> HashMap<PartitionId, SharedLog> {
    logs.into_iter()
        .map(|(id, log)| (id, Arc::new(Mutex::new(log))))
        .collect()
}

impl Shared {
    fn begin_read(&self) -> Result<ReadTransaction> {
        {
            let db = read_lock(&self.db);
            if let Some(db) = db.as_ref() {
                return Ok(db.begin_read()?);
            }
        }
        // No database: shut down, or the writer's last reopen after a failure did not succeed.
        Err(self.refusal().unwrap_or(StorageError::Closed))
    }

    /// The error for a write while the store refuses writes; `None` when it takes them.
    fn refusal(&self) -> Option<StorageError> {
        lock(&self.failure).as_ref().map(|f| f.error(self))
    }

    fn begin_write(&self) -> Result<WriteTransaction, redb::Error> {
        let db = read_lock(&self.db);
        Ok(db
            .as_ref()
            .ok_or(redb::Error::DatabaseClosed)?
            .begin_write()?)
    }

    /// Closes the database file, after the writer thread has stopped.
    fn close(&self) {
        write_lock(&self.db).take();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read_lock<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write_lock<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

/// Where the writer sends a command's result: a oneshot for async callers, a std channel for
/// blocking ones (a oneshot's `blocking_recv` would panic when called on a runtime thread).
enum Reply<T> {
    Async(oneshot::Sender<Result<T>>),
    Blocking(SyncSender<Result<T>>),
}

impl<T> Reply<T> {
    fn send(self, result: Result<T>) {
        // A caller that stopped waiting (dropped its future) is no error of ours.
        match self {
            Reply::Async(tx) => {
                let _ = tx.send(result);
            }
            Reply::Blocking(tx) => {
                let _ = tx.send(result);
            }
        }
    }
}

/// What the writer thread receives: a command that shares a group commit with others, or a
/// truncation, which runs in a write transaction of its own.
enum Request {
    Group(Command),
    /// Remove every batch at and after `offset`, or every batch (see [`Store::truncate`],
    /// [`Store::truncate_fully`]).
    Truncate {
        id: PartitionId,
        offset: u64,
        /// Everything goes and the log restarts at `offset`, wherever that is.
        fully: bool,
        reply: Reply<u64>,
    },
}

impl Request {
    fn payload_len(&self) -> usize {
        match self {
            Request::Group(command) => command.payload_len(),
            Request::Truncate { .. } => 0,
        }
    }

    fn is_shutdown(&self) -> bool {
        matches!(self, Request::Group(Command::Shutdown { .. }))
    }

    fn fail(self, err: impl Fn() -> StorageError) {
        match self {
            Request::Group(command) => command.fail(err),
            Request::Truncate { reply, .. } => reply.send(Err(err())),
        }
    }
}

impl From<Command> for Request {
    fn from(command: Command) -> Self {
        Request::Group(command)
    }
}

/// Where an appended batch's offsets come from.
#[derive(Debug, Clone, Copy)]
enum Placement {
    /// This broker leads the partition: the batch gets the log end as its base offset, and
    /// this leader epoch.
    Leader { leader_epoch: u32 },
    /// The leader already placed the batch: it keeps its base offset and leader epoch, and
    /// must start at the log end.
    Replica,
}

enum Command {
    Append {
        id: PartitionId,
        /// As it came from the network: copied once, into its redb page.
        batch: Bytes,
        placement: Placement,
        durability: sluice_proto::Durability,
        reply: Reply<Appended>,
    },
    CreatePartitions {
        ids: Vec<PartitionId>,
        reply: Reply<()>,
    },
    DeleteTopic {
        topic_id: u64,
        reply: Reply<()>,
    },
    Retention {
        id: PartitionId,
        retention_ms: Option<u64>,
        retention_bytes: Option<u64>,
        now_ms: i64,
        /// Instead of the limits: remove every batch that ends at or before this offset.
        delete_before: Option<u64>,
        /// With the limits: remove only batches that end at or before this offset.
        max_offset: Option<u64>,
        reply: Reply<RetentionOutcome>,
    },
    CheckpointHighWatermark {
        id: PartitionId,
        high_watermark: u64,
        reply: Reply<()>,
    },
    MetaAppend {
        index: u64,
        entry: Vec<u8>,
        reply: Reply<()>,
    },
    MetaPut {
        key: String,
        value: Vec<u8>,
        reply: Reply<()>,
    },
    Flush {
        reply: Reply<()>,
    },
    Shutdown {
        reply: Reply<()>,
    },
}

impl Command {
    fn payload_len(&self) -> usize {
        match self {
            Command::Append { batch, .. } => batch.len(),
            Command::MetaAppend { entry, .. } => entry.len(),
            Command::MetaPut { value, .. } => value.len(),
            _ => 0,
        }
    }

    fn fail(self, err: impl Fn() -> StorageError) {
        match self {
            Command::Append { reply, .. } => reply.send(Err(err())),
            Command::Retention { reply, .. } => reply.send(Err(err())),
            Command::CreatePartitions { reply, .. }
            | Command::DeleteTopic { reply, .. }
            | Command::CheckpointHighWatermark { reply, .. }
            | Command::MetaAppend { reply, .. }
            | Command::MetaPut { reply, .. }
            | Command::Flush { reply }
            | Command::Shutdown { reply } => reply.send(Err(err())),
        }
    }
}

impl Store {
    /// Opens or creates the redb file at `path` (e.g. `DATA_DIR/sluice.redb`), checks its format
    /// version, rebuilds the in-memory index and starts the single writer thread.
    ///
    /// A full disk gives [`StorageError::DiskFull`] naming the file.
    pub fn open(path: &Path, options: StoreOptions) -> Result<Store> {
        Self::open_with(
            PathFile {
                path: path.to_owned(),
            },
            options,
        )
    }

    /// Like [`Store::open`], over any [`StoreFile`]: tests use a shared in-memory backend that
    /// injects faults, and can still be reopened by the writer after one.
    pub fn open_with(file: impl StoreFile, options: StoreOptions) -> Result<Store> {
        let file: Box<dyn Reopen> = Box::new(file);
        let location = file.location();
        let (db, loaded, repaired) = open_database(&*file, &options)?;
        let tables::Loaded {
            logs: partitions,
            producers,
        } = loaded;
        info!(
            location,
            partitions = partitions.len(),
            idempotent_producers = producers.values().map(ProducerState::len).sum::<usize>(),
            "storage opened"
        );
        let shared = Arc::new(Shared {
            db: RwLock::new(Some(db)),
            partitions: RwLock::new(shared_logs(partitions)),
            failure: Mutex::new(None),
            location,
            closed: AtomicBool::new(false),
            commits: AtomicU64::new(0),
            repaired_at_open: repaired,
            options,
        });
        let (commands, rx) = mpsc::channel();
        let writer_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("sluice-storage-writer".into())
            .spawn(move || Writer::new(writer_shared, file, producers).run(rx))
            .map_err(|e| StorageError::Redb(e.into()))?;
        Ok(Store {
            inner: Arc::new(Inner {
                shared,
                commands,
                writer: Mutex::new(Some(writer)),
            }),
        })
    }

    fn check_writable(&self) -> Result<()> {
        let shared = &self.inner.shared;
        if shared.closed.load(Ordering::Acquire) {
            return Err(StorageError::Closed);
        }
        // Refused at once, not queued: the caller learns now that the disk is full.
        match shared.refusal() {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.shared.closed.load(Ordering::Acquire) {
            return Err(StorageError::Closed);
        }
        Ok(())
    }

    fn send(&self, request: impl Into<Request>) -> Result<()> {
        self.inner
            .commands
            .send(request.into())
            .map_err(|_| StorageError::Closed)
    }

    async fn submit<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T> {
        Self::outcome(self.enqueue(make)).await
    }

    /// Queues a command for the writer now, before any await, so commands queued by one
    /// caller keep their order.
    fn enqueue<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<oneshot::Receiver<Result<T>>> {
        self.check_writable()?;
        let (tx, rx) = oneshot::channel();
        self.send(make(Reply::Async(tx)))?;
        Ok(rx)
    }

    async fn outcome<T>(queued: Result<oneshot::Receiver<Result<T>>>) -> Result<T> {
        queued?.await.unwrap_or_else(|_| Err(writer_gone()))
    }

    fn submit_blocking<T, R: Into<Request>>(&self, make: impl FnOnce(Reply<T>) -> R) -> Result<T> {
        self.check_writable()?;
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(make(Reply::Blocking(tx)))?;
        rx.recv().unwrap_or_else(|_| Err(writer_gone()))
    }

    /// Creates an empty partition (log start = log end = 0). Idempotent. Durable on return.
    /// Blocks the calling thread for one commit.
    pub fn create_partition(&self, id: PartitionId) -> Result<()> {
        self.create_partitions(&[id])
    }

    /// Creates every partition of `ids` that does not exist yet, empty, in one write
    /// transaction and one durable commit (a topic of 10,000 partitions costs one fsync, not
    /// 10,000). Idempotent. Durable on return; on an error none of them was created. Blocks the
    /// calling thread for that commit.
    pub fn create_partitions(&self, ids: &[PartitionId]) -> Result<()> {
        let ids = ids.to_vec();
        self.submit_blocking(|reply| Command::CreatePartitions { ids, reply })
    }

    /// Removes every batch and the state of every partition of the topic. Durable on return.
    /// Blocks the calling thread for one commit.
    pub fn delete_topic(&self, topic_id: u64) -> Result<()> {
        self.submit_blocking(|reply| Command::DeleteTopic { topic_id, reply })
    }

    /// Appends one whole batch. Its base offset and leader epoch are set here; the rest is
    /// stored as given. A `leader_epoch` newer than the partition's latest starts a new entry
    /// of [`Store::leader_epochs`]. Appends queued together, from any partition, share one write
    /// transaction and one commit. Resolves after that commit, which is durable when
    /// `durability` is `Fsync`; with `IntervalMs(ms)` a durable commit follows within `ms`.
    ///
    /// The append is queued when this is called; dropping the future does not cancel it.
    pub fn append<B: Into<Bytes>>(
        &self,
        id: PartitionId,
        batch: B,
        leader_epoch: u32,
        durability: sluice_proto::Durability,
    ) -> impl Future<Output = Result<Appended>> + Send + use<B> {
        // Queued when called, not when first polled: the broker calls `append` in the order
        // requests arrive on a stream, and that order must be the order of offsets.
        let batch = batch.into();
        Self::outcome(self.enqueue(|reply| Command::Append {
            id,
            batch,
            placement: Placement::Leader { leader_epoch },
            durability,
            reply,
        }))
    }

    /// Appends one whole batch that the partition's leader already appended, as a follower
    /// does with what it fetched: its base offset and leader epoch are kept as they are, and
    /// the bytes are stored unchanged. It must start exactly at the partition's log end (after
    /// every append queued before it); otherwise it is refused with
    /// [`StorageError::ReplicaOffsetMismatch`] and nothing is written.
    ///
    /// A batch of an idempotent producer is recorded in the partition's producer state without
    /// any sequence check (the leader made it), so that if this replica becomes the leader it
    /// recognises the producer's retries. A batch whose leader epoch is newer than the
    /// partition's latest starts a new entry of [`Store::leader_epochs`].
    ///
    /// Shares group commits and durability with [`Store::append`]; the answer's `base_offset`
    /// is the batch's own. Queued when called; dropping the future does not cancel it.
    pub fn append_replica<B: Into<Bytes>>(
        &self,
        id: PartitionId,
        batch: B,
        durability: sluice_proto::Durability,
    ) -> impl Future<Output = Result<Appended>> + Send + use<B> {
        let batch = batch.into();
        Self::outcome(self.enqueue(|reply| Command::Append {
            id,
            batch,
            placement: Placement::Replica,
            durability,
            reply,
        }))
    }

    /// Removes every batch at and after `offset`, as a follower does with a suffix that
    /// diverges from its leader's log. Returns the new log end: `offset` itself, or the base
    /// offset of the batch holding it (batches are removed whole). An `offset` at or after the
    /// log end changes nothing and returns the log end. An `offset` at or below the log start
    /// empties the log and restarts it there (log start = log end = `offset`; the next replica
    /// append must start at it).
    ///
    /// Leader epochs that start at or after the new log end are dropped, and a checkpointed
    /// high watermark above it is lowered to it. Everything is written in one write
    /// transaction with a durable commit of its own (never shared with other commands), and
    /// then the partition's in-memory log and idempotent producers' state are rebuilt from the
    /// tables, as on startup. Durable on return; blocks the calling thread for that commit.
    pub fn truncate(&self, id: PartitionId, offset: u64) -> Result<u64> {
        self.submit_blocking(|reply| Request::Truncate {
            id,
            offset,
            fully: false,
            reply,
        })
    }

    /// Removes every batch of the partition and restarts its log at `offset` (log start = log
    /// end = `offset`), even past the current log end: a follower whose whole log lies before
    /// its leader's log start (the leader's retention or compaction removed what it would
    /// fetch next) starts over at that log start. The leader epochs go, a checkpointed high
    /// watermark above `offset` is lowered to it, and the idempotent producers' state is
    /// rebuilt (empty). Same transaction and durability as [`Store::truncate`]; returns
    /// `offset`.
    pub fn truncate_fully(&self, id: PartitionId, offset: u64) -> Result<u64> {
        self.submit_blocking(|reply| Request::Truncate {
            id,
            offset,
            fully: true,
            reply,
        })
    }

    /// The partition's leader epochs, oldest first: for every leader epoch in its log,
    /// `(epoch, start_offset)` where its first batch starts. The rules (what retention and
    /// truncation do to it) are those of `sluice_replication::EpochCache`, which can be built
    /// from this list with `assign` in order; see [`LeaderEpochs`]. Answers from memory
    /// (committed appends only).
    pub fn leader_epochs(&self, id: PartitionId) -> Result<Vec<(u32, u64)>> {
        self.check_open()?;
        let log = read_lock(&self.inner.shared.partitions)
            .get(&id)
            .cloned()
            .ok_or(StorageError::UnknownPartition(id))?;
        let epochs = lock(&log).epochs().to_vec();
        Ok(epochs)
    }

    /// Stores `high_watermark` as the partition's high watermark checkpoint, so a restarted
    /// replica knows how much of its log was committed. Queued into the writer's next group
    /// commit and not durable by itself (it is cheap to lose: the leader sends the high
    /// watermark again); it becomes durable with the next durable commit. Resolves after its
    /// commit. A value past the partition's log end is refused with
    /// [`StorageError::HighWatermarkBeyondLogEnd`].
    pub fn checkpoint_high_watermark(
        &self,
        id: PartitionId,
        high_watermark: u64,
    ) -> impl Future<Output = Result<()>> + Send + use<> {
        Self::outcome(self.enqueue(|reply| Command::CheckpointHighWatermark {
            id,
            high_watermark,
            reply,
        }))
    }

    /// The high watermark last checkpointed for the partition, as stored; `None` if none was.
    /// A truncation lowers it to the truncation point when it was above.
    pub fn high_watermark_checkpoint(&self, id: PartitionId) -> Result<Option<u64>> {
        self.check_open()?;
        let txn = self.inner.shared.begin_read()?;
        let key = (id.topic_id, id.partition);
        if txn.open_table(PARTITIONS)?.get(key)?.is_none() {
            return Err(StorageError::UnknownPartition(id));
        }
        let hw = txn
            .open_table(HIGH_WATERMARKS)?
            .get(key)?
            .map(|v| v.value());
        Ok(hw)
    }

    /// Reads whole batches starting with the one that holds `offset`, concatenated, up to
    /// `max_bytes` but always at least one batch when one exists at or after `offset`.
    /// `offset == log_end` gives empty bytes; an offset outside `[log_start, log_end]` gives
    /// [`StorageError::OffsetOutOfRange`]. Every batch's CRC-32C is checked; a mismatch gives
    /// [`StorageError::Corrupt`] and no data.
    pub fn read(&self, id: PartitionId, offset: u64, max_bytes: u32) -> Result<ReadBatches> {
        self.check_open()?;
        // Bounds and batches come from one read transaction, so they always agree, whatever
        // the writer commits meanwhile.
        let txn = self.inner.shared.begin_read()?;
        let (log_start, log_end) = txn
            .open_table(PARTITIONS)?
            .get((id.topic_id, id.partition))?
            .ok_or(StorageError::UnknownPartition(id))?
            .value();
        if offset < log_start || offset > log_end {
            return Err(StorageError::OffsetOutOfRange { log_start, log_end });
        }
        // The batches' rows are gathered first and copied once into a buffer of the exact
        // size: growing the buffer as they come copied most bytes again at each doubling.
        let mut rows = Vec::new();
        let mut total = 0usize;
        let batches = txn.open_table(BATCHES)?;
        if offset < log_end {
            let key = |base| (id.topic_id, id.partition, base);
            let first = batches
                .range(key(log_start)..=key(offset))?
                .next_back()
                .transpose()?
                .map(|(k, _)| k.value().2);
            let Some(first) = first else {
                return Err(StorageError::Corrupt {
                    id,
                    base_offset: offset,
                    reason: "no stored batch holds this offset".into(),
                });
            };
            let mut expected = first;
            for row in batches.range(key(first)..key(log_end))? {
                let (k, v) = row?;
                let base = k.value().2;
                let bytes = v.value();
                if total > 0 && total + bytes.len() > max_bytes as usize {
                    break;
                }
                let header = check_stored_batch(id, base, bytes)?;
                let gap = if base != expected {
                    Some(format!(
                        "batches are not dense: expected {expected}, got {base}"
                    ))
                } else if header.next_offset() <= offset {
                    Some(format!("the batch at {base} ends before offset {offset}"))
                } else {
                    None
                };
                if let Some(reason) = gap {
                    return Err(StorageError::Corrupt {
                        id,
                        base_offset: expected,
                        reason,
                    });
                }
                expected = header.next_offset();
                total += bytes.len();
                rows.push(v);
            }
        }
        let mut out = BytesMut::with_capacity(total);
        for v in &rows {
            out.extend_from_slice(v.value());
        }
        Ok(ReadBatches {
            bytes: out.freeze(),
            log_start,
            log_end,
        })
    }

    /// The committed bounds and size of a partition; `None` if it does not exist.
    /// The leader epoch of the committed batch holding `offset`, if the partition holds it.
    pub fn epoch_at(&self, id: PartitionId, offset: u64) -> Option<u32> {
        let log = read_lock(&self.inner.shared.partitions).get(&id)?.clone();
        lock(&log).epoch_at(offset)
    }

    /// Whether redb had to read the whole file to repair it when this store opened: after a
    /// crash whose last durable commit saved no allocator state (`StoreOptions::quick_repair`
    /// off, or a file written by a build without it). Seconds per 10 GB; otherwise opening
    /// after a crash takes milliseconds.
    pub fn repaired_at_open(&self) -> bool {
        self.inner.shared.repaired_at_open
    }

    pub fn partition_state(&self, id: PartitionId) -> Option<PartitionState> {
        let log = read_lock(&self.inner.shared.partitions).get(&id)?.clone();
        let state = lock(&log).state();
        Some(state)
    }

    /// The distinct topic ids that have stored partitions, in order (to find topics the
    /// metadata no longer knows).
    pub fn stored_topic_ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = read_lock(&self.inner.shared.partitions)
            .keys()
            .map(|id| id.topic_id)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Every partition that exists, in order.
    pub fn partitions(&self) -> Vec<PartitionId> {
        let mut ids: Vec<_> = read_lock(&self.inner.shared.partitions)
            .keys()
            .copied()
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Base offset of the first batch whose largest timestamp is `>= ts_ms`; the log end if none.
    pub fn offset_for_timestamp(&self, id: PartitionId, ts_ms: i64) -> Result<u64> {
        self.check_open()?;
        let log = read_lock(&self.inner.shared.partitions)
            .get(&id)
            .cloned()
            .ok_or(StorageError::UnknownPartition(id))?;
        let offset = lock(&log).offset_for_timestamp(ts_ms);
        Ok(offset)
    }

    /// Removes whole batches from the front of the log: while the first one's largest timestamp
    /// is older than `now_ms - retention_ms`, or the log is larger than `retention_bytes`.
    /// The log start moves to the first remaining batch (the log end if none remain); the log
    /// end never moves. Goes through the writer thread, like an append.
    ///
    /// [`Store::apply_retention_bounded`] with no bound.
    pub async fn apply_retention(
        &self,
        id: PartitionId,
        retention_ms: Option<u64>,
        retention_bytes: Option<u64>,
        now_ms: i64,
    ) -> Result<RetentionOutcome> {
        self.apply_retention_bounded(id, retention_ms, retention_bytes, now_ms, None)
            .await
    }

    /// [`Store::apply_retention`] that never removes data at or past `max_offset`: a batch goes
    /// only if it is past the limits and ends at or before `max_offset`. A replicated
    /// partition passes its high watermark, so retention never removes records that are not
    /// committed yet (which a follower may still fetch, or a truncation may still remove).
    /// `None` means no bound. The first leader epoch moves up to the new log start.
    pub async fn apply_retention_bounded(
        &self,
        id: PartitionId,
        retention_ms: Option<u64>,
        retention_bytes: Option<u64>,
        now_ms: i64,
        max_offset: Option<u64>,
    ) -> Result<RetentionOutcome> {
        self.submit(|reply| Command::Retention {
            id,
            retention_ms,
            retention_bytes,
            now_ms,
            delete_before: None,
            max_offset,
            reply,
        })
        .await
    }

    /// Removes every whole batch that ends at or before `offset` (compaction: after the live
    /// records have been written again past it). Like retention, not durable by itself: if a
    /// crash loses it, it is simply done again.
    pub async fn delete_before(&self, id: PartitionId, offset: u64) -> Result<RetentionOutcome> {
        self.submit(|reply| Command::Retention {
            id,
            retention_ms: None,
            retention_bytes: None,
            now_ms: 0,
            delete_before: Some(offset),
            max_offset: None,
            reply,
        })
        .await
    }

    /// Forces a durable commit of everything appended so far.
    pub async fn flush(&self) -> Result<()> {
        self.submit(|reply| Command::Flush { reply }).await
    }

    /// Drains the writer thread, makes a final durable commit and joins the thread. Every later
    /// call (from any clone) fails with [`StorageError::Closed`].
    pub fn shutdown(&self) -> Result<()> {
        let shared = &self.inner.shared;
        if shared.closed.swap(true, Ordering::AcqRel) {
            return Err(StorageError::Closed);
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let result = match self.send(Command::Shutdown {
            reply: Reply::Blocking(tx),
        }) {
            Ok(()) => rx.recv().unwrap_or_else(|_| Err(writer_gone())),
            Err(err) => Err(err),
        };
        if let Some(handle) = lock(&self.inner.writer).take()
            && handle.join().is_err()
        {
            error!("the storage writer thread panicked");
        }
        shared.close();
        result
    }

    /// Appends `entry` to the metadata log at `index` (replacing an entry already there).
    /// Durable on return.
    pub fn meta_append(&self, index: u64, entry: &[u8]) -> Result<()> {
        let entry = entry.to_vec();
        self.submit_blocking(|reply| Command::MetaAppend {
            index,
            entry,
            reply,
        })
    }

    /// Every metadata log entry, in index order.
    pub fn meta_entries(&self) -> Result<Vec<(u64, Vec<u8>)>> {
        self.check_open()?;
        let txn = self.inner.shared.begin_read()?;
        let table = txn.open_table(META_LOG)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            out.push((k.value(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Sets a node-level fact. Durable on return.
    pub fn meta_put(&self, key: &str, value: &[u8]) -> Result<()> {
        let (key, value) = (key.to_owned(), value.to_vec());
        self.submit_blocking(|reply| Command::MetaPut { key, value, reply })
    }

    /// Reads a node-level fact.
    pub fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.check_open()?;
        let txn = self.inner.shared.begin_read()?;
        let table = txn.open_table(META_KV)?;
        Ok(table.get(key)?.map(|v| v.value().to_vec()))
    }

    /// How many write transactions the writer has committed since the store was opened.
    pub fn commit_count(&self) -> u64 {
        self.inner.shared.commits.load(Ordering::Relaxed)
    }
}

fn writer_gone() -> StorageError {
    StorageError::Failed("the storage writer thread stopped".into())
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: finish like `shutdown`, so the file is durable and unlocked
        // (reopenable) once the drop returns.
        if self.shared.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let (tx, rx) = mpsc::sync_channel(1);
        if self
            .commands
            .send(Request::Group(Command::Shutdown {
                reply: Reply::Blocking(tx),
            }))
            .is_ok()
        {
            let _ = rx.recv();
        }
        if let Some(handle) = lock(&self.writer).take() {
            let _ = handle.join();
        }
        self.shared.close();
    }
}

/// Parses and checks one stored batch: header, length, CRC-32C, and the base offset it was
/// stored under.
fn check_stored_batch(id: PartitionId, base: u64, bytes: &[u8]) -> Result<BatchHeader> {
    let corrupt = |reason: String| StorageError::Corrupt {
        id,
        base_offset: base,
        reason,
    };
    let header = BatchHeader::parse(bytes).map_err(|e| corrupt(e.to_string()))?;
    header
        .verify_crc(bytes)
        .map_err(|e| corrupt(e.to_string()))?;
    if header.base_offset != base {
        return Err(corrupt(format!(
            "stored under offset {base} but its header says {}",
            header.base_offset
        )));
    }
    Ok(header)
}

/// The single writer: owns all writes to the database.
struct Writer {
    shared: Arc<Shared>,
    /// The file, to open it again after an I/O error.
    file: Box<dyn Reopen>,
    /// Idempotent producers' recent batches per partition. Owned by the writer thread alone
    /// (no lock): it is read and changed only where offsets are assigned. Changed as batches
    /// are staged, not on commit: if a commit fails the store refuses all writes until the file
    /// is reopened, and reopening rebuilds this from what reached the file.
    producers: HashMap<PartitionId, ProducerState>,
    /// Partitions that lost batches from their end since the store opened (a follower's
    /// diverging suffix): producers' state may have gone with them, so, as on a partition whose
    /// log start moved, an unknown producer is accepted at any sequence (`ProducerState::check`).
    truncated: HashSet<PartitionId>,
    /// When the last non-durable commit must be made durable by.
    sync_deadline: Option<Instant>,
    /// Batch bytes committed without fsync since the last durable commit.
    unsynced_bytes: usize,
    /// While failed after an I/O error: when to try reopening the file next.
    reopen_at: Option<Instant>,
}

/// A reply to send once the group's transaction committed.
enum Waiter {
    Appended(Reply<Appended>, Appended),
    Retention(Reply<RetentionOutcome>, RetentionOutcome),
    Done(Reply<()>),
}

impl Waiter {
    fn succeed(self) {
        match self {
            Waiter::Appended(reply, appended) => reply.send(Ok(appended)),
            Waiter::Retention(reply, outcome) => reply.send(Ok(outcome)),
            Waiter::Done(reply) => reply.send(Ok(())),
        }
    }

    fn fail(self, err: impl Fn() -> StorageError) {
        match self {
            Waiter::Appended(reply, _) => reply.send(Err(err())),
            Waiter::Retention(reply, _) => reply.send(Err(err())),
            Waiter::Done(reply) => reply.send(Err(err())),
        }
    }
}

/// The changes of one group, staged until its transaction commits.
#[derive(Default)]
struct Group {
    waiters: Vec<Waiter>,
    /// Partitions with staged appends or retention, whose bounds row must be rewritten.
    touched: HashMap<PartitionId, SharedLog>,
    /// Every log with staged changes, to abort if the transaction fails.
    staged: Vec<SharedLog>,
    /// Partitions created in this group, published after the commit.
    created: HashMap<PartitionId, SharedLog>,
    /// Topics deleted in this group, dropped from memory after the commit.
    deleted_topics: HashSet<u64>,
    /// A durable commit is needed (fsync append, create, delete, metadata, flush, shutdown).
    durable: bool,
    /// Shortest sync interval asked for by a non-durable append.
    interval: Option<Duration>,
    appends: usize,
    /// Bytes of the batches appended.
    bytes: usize,
    shutdown: bool,
}

/// The tables a group writes to, open for the length of its transaction.
struct GroupTables<'t> {
    batches: Table<'t, BatchKey, &'static [u8]>,
    index: Table<'t, BatchKey, IndexRow>,
    partitions: Table<'t, (u64, u32), (u64, u64)>,
    meta_log: Table<'t, u64, &'static [u8]>,
    meta_kv: Table<'t, &'static str, &'static [u8]>,
    epochs: Table<'t, EpochKey, u64>,
    high_watermarks: Table<'t, (u64, u32), u64>,
}

impl<'t> GroupTables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self, redb::Error> {
        Ok(GroupTables {
            batches: txn.open_table(BATCHES)?,
            index: txn.open_table(BATCH_INDEX)?,
            partitions: txn.open_table(PARTITIONS)?,
            meta_log: txn.open_table(META_LOG)?,
            meta_kv: txn.open_table(META_KV)?,
            epochs: txn.open_table(LEADER_EPOCHS)?,
            high_watermarks: txn.open_table(HIGH_WATERMARKS)?,
        })
    }
}

impl Writer {
    fn new(
        shared: Arc<Shared>,
        file: Box<dyn Reopen>,
        producers: HashMap<PartitionId, ProducerState>,
    ) -> Self {
        Writer {
            shared,
            file,
            producers,
            truncated: HashSet::new(),
            sync_deadline: None,
            unsynced_bytes: 0,
            reopen_at: None,
        }
    }

    fn run(mut self, rx: Receiver<Request>) {
        let _span = tracing::info_span!("storage_writer").entered();
        loop {
            let timer = [self.sync_deadline, self.reopen_at]
                .into_iter()
                .flatten()
                .min();
            let first = match timer {
                Some(deadline) => {
                    match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                        Ok(command) => command,
                        Err(RecvTimeoutError::Timeout) => {
                            self.handle_timers();
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                None => match rx.recv() {
                    Ok(command) => command,
                    Err(_) => break,
                },
            };
            let options = &self.shared.options;
            let mut bytes = first.payload_len();
            let mut requests = vec![first];
            while !requests.last().is_some_and(Request::is_shutdown)
                && requests.len() < options.max_group_batches.max(1)
                && bytes < options.max_group_bytes
            {
                match rx.try_recv() {
                    Ok(request) => {
                        bytes += request.payload_len();
                        requests.push(request);
                    }
                    Err(_) => break,
                }
            }
            if self.run_requests(requests) {
                // Shut down: whatever was queued behind the shutdown is refused.
                while let Ok(request) = rx.try_recv() {
                    request.fail(|| StorageError::Closed);
                }
                debug!("storage writer stopped");
                return;
            }
        }
        // Every handle is gone without a shutdown (the handles' Drop normally sends one).
        if self.sync_deadline.is_some() {
            self.sync();
        }
    }

    fn failure(&self) -> Option<Failure> {
        lock(&self.shared.failure).clone()
    }

    /// Refuses writes from now on, for `failure`, and plans the first reopen if one can end it.
    fn fail_store(&mut self, failure: Failure) {
        if failure.reopens() {
            self.reopen_at = Some(Instant::now() + self.shared.options.reopen_interval);
        }
        lock(&self.shared.failure).get_or_insert(failure);
    }

    fn handle_timers(&mut self) {
        let now = Instant::now();
        if self.reopen_at.is_some_and(|at| at <= now) {
            self.reopen();
        }
        if self.sync_deadline.is_some_and(|at| at <= now) {
            self.sync();
        }
    }

    /// After an I/O error redb refuses every write until its database is dropped and opened
    /// again. Once the probe says writes can succeed, this does that, rebuilds the in-memory
    /// partitions and producer state from what reached the file (as opening does), and ends the
    /// failure. Otherwise it tries again after `reopen_interval`.
    fn reopen(&mut self) {
        self.reopen_at = None;
        if !self.failure().is_some_and(|f| f.reopens()) {
            return;
        }
        let retry = Instant::now() + self.shared.options.reopen_interval;
        // The failed database is kept until the probe passes, so reads keep working meanwhile.
        if let Err(err) = self.file.probe() {
            debug!(cause = %err, "storage not reopened yet: the probe write failed");
            if error::full_io(&err).is_some() {
                *lock(&self.shared.failure) = Some(Failure::DiskFull(err.to_string()));
            }
            self.reopen_at = Some(retry);
            return;
        }
        let reopened = {
            // Readers wait on this lock for the reopen rather than find no database.
            let mut db = write_lock(&self.shared.db);
            db.take();
            open_database(&*self.file, &self.shared.options).map(|(new_db, loaded, _)| {
                *db = Some(new_db);
                *write_lock(&self.shared.partitions) = shared_logs(loaded.logs);
                loaded.producers
            })
        };
        match reopened {
            Ok(producers) => {
                self.producers = producers;
                // Whatever was committed without fsync and not yet synced is what the file
                // says now; there is nothing left to sync.
                self.nothing_unsynced();
                lock(&self.shared.failure).take();
                info!(
                    location = self.shared.location,
                    partitions = read_lock(&self.shared.partitions).len(),
                    "storage reopened after the failure; writes resume"
                );
            }
            Err(err) => {
                warn!(cause = %err, "reopening the store failed; trying again later");
                *lock(&self.shared.failure) = Some(match err {
                    StorageError::DiskFull { cause, .. } => Failure::DiskFull(cause),
                    other => Failure::Io(format!("reopening it failed: {other}")),
                });
                self.reopen_at = Some(retry);
            }
        }
    }

    /// Makes `txn` a durable commit: fsync'd, and with `quick_repair` the allocator state saved
    /// with it, so that opening the file after a crash does not walk the whole database.
    fn durable(&self, txn: &mut redb::WriteTransaction) -> Result<(), redb::Error> {
        txn.set_durability(Durability::Immediate)?;
        txn.set_quick_repair(self.shared.options.quick_repair);
        Ok(())
    }

    /// After a durable commit (or a reopen, which reads what the file holds): nothing committed
    /// without fsync waits to be made durable.
    fn nothing_unsynced(&mut self) {
        self.sync_deadline = None;
        self.unsynced_bytes = 0;
    }

    /// Makes every earlier non-durable commit durable, with an empty durable commit.
    fn sync(&mut self) {
        self.sync_deadline = None;
        if self.failure().is_some() {
            return;
        }
        let result = (|| -> Result<(), redb::Error> {
            let mut txn = self.shared.begin_write()?;
            self.durable(&mut txn)?;
            txn.commit()?;
            Ok(())
        })();
        match result {
            Ok(()) => {
                self.shared.commits.fetch_add(1, Ordering::Relaxed);
                self.nothing_unsynced();
                trace!("interval sync committed");
            }
            Err(err) => {
                error!(cause = %err, "storage sync failed; refusing further writes");
                self.fail_store(Failure::of(&err));
            }
        }
    }

    /// Runs the requests taken from the queue in order: the commands between truncations as
    /// one group each, every truncation alone. Returns whether a shutdown was among them.
    fn run_requests(&mut self, requests: Vec<Request>) -> bool {
        let mut group = Vec::new();
        let mut requests = requests.into_iter();
        while let Some(request) = requests.next() {
            match request {
                Request::Group(command) => group.push(command),
                Request::Truncate {
                    id,
                    offset,
                    fully,
                    reply,
                } => {
                    // A shutdown ends what the writer takes from the queue, so a group that
                    // runs before a truncation holds none; should one, the rest is refused.
                    if !group.is_empty() && self.run_group(std::mem::take(&mut group)) {
                        reply.send(Err(StorageError::Closed));
                        requests.for_each(|r| r.fail(|| StorageError::Closed));
                        return true;
                    }
                    self.run_truncate(id, offset, fully, reply);
                }
            }
        }
        !group.is_empty() && self.run_group(group)
    }

    /// Runs a truncation in a write transaction of its own with a durable commit, then
    /// replaces the partition's in-memory log and producer state by what its tables now hold
    /// (the code that opening the store runs), so memory and file cannot disagree.
    fn run_truncate(&mut self, id: PartitionId, offset: u64, fully: bool, reply: Reply<u64>) {
        if let Some(failure) = self.failure() {
            reply.send(Err(failure.error(&self.shared)));
            return;
        }
        let Some(log) = read_lock(&self.shared.partitions).get(&id).cloned() else {
            reply.send(Err(StorageError::UnknownPartition(id)));
            return;
        };
        // Every earlier group has committed: the staged view is the committed one.
        let (state, to, epochs) = {
            let log = lock(&log);
            let to = if fully {
                offset
            } else {
                log.truncation_point(offset)
            };
            (log.state(), to, log.staged_epochs().clone())
        };
        // What stays: `[log_start, to)`, or nothing and the log restarts at `to`.
        let (start, removed_from) = if fully {
            (to, 0)
        } else {
            (state.log_start.min(to), to)
        };
        if (start, to) == (state.log_start, state.log_end) {
            debug!(partition = %id, offset, log_end = state.log_end,
                   "truncation at or after the log end removes nothing");
            reply.send(Ok(to));
            return;
        }
        // Held across the commit, so a reader of this partition's bounds waits for it (one
        // commit) rather than see offsets the file no longer holds.
        let mut memory = lock(&log);
        match self.commit_truncation(id, start, removed_from, to, epochs) {
            Ok(Ok(restored)) => {
                self.shared.commits.fetch_add(1, Ordering::Relaxed);
                // A durable commit makes every earlier one durable.
                self.nothing_unsynced();
                *memory = restored.log;
                drop(memory);
                if restored.producers.is_empty() {
                    self.producers.remove(&id);
                } else {
                    self.producers.insert(id, restored.producers);
                }
                if to < state.log_end {
                    self.truncated.insert(id);
                }
                info!(partition = %id, offset, log_end = to, old_log_end = state.log_end,
                      "partition truncated");
                reply.send(Ok(to));
            }
            Ok(Err(err)) => {
                error!(cause = %err, partition = %id, "truncation not done: the partition's rows \
                       are inconsistent; nothing was written");
                reply.send(Err(err));
            }
            Err(err) => {
                error!(cause = %err, partition = %id,
                       "storage write failed truncating; refusing further writes");
                let failure = Failure::of(&err);
                self.fail_store(failure.clone());
                reply.send(Err(failure.error(&self.shared)));
            }
        }
    }

    /// The truncation's transaction: removes the batches and index rows from `removed_from`
    /// on, sets the bounds to `[log_start, to)`, the leader epochs and the high watermark
    /// checkpoint, rebuilds the partition from the tables as they now stand, and commits
    /// durably. A rebuild that finds the rows inconsistent aborts the transaction and is the
    /// inner error; a redb error the outer.
    fn commit_truncation(
        &self,
        id: PartitionId,
        log_start: u64,
        removed_from: u64,
        to: u64,
        mut epochs: LeaderEpochs,
    ) -> Result<Result<Restored>, redb::Error> {
        let mut txn = self.shared.begin_write()?;
        let restored = {
            let mut tables = GroupTables::open(&txn)?;
            let key = (id.topic_id, id.partition);
            let removed =
                (id.topic_id, id.partition, removed_from)..=(id.topic_id, id.partition, u64::MAX);
            tables.batches.retain_in(removed.clone(), |_, _| false)?;
            tables.index.retain_in(removed, |_, _| false)?;
            tables.partitions.insert(key, (log_start, to))?;
            epochs.truncate_to(removed_from);
            tables::write_epochs(&mut tables.epochs, id, &epochs)?;
            let checkpoint = tables.high_watermarks.get(key)?.map(|v| v.value());
            if checkpoint.is_some_and(|hw| hw > to) {
                tables.high_watermarks.insert(key, to)?;
            }
            let restored = tables::load_partition(
                id,
                &tables.partitions,
                &tables.index,
                &tables.epochs,
                &tables.batches,
            );
            match restored {
                Ok(restored) => {
                    if let Some(repaired) = &restored.repaired_epochs {
                        tables::write_epochs(&mut tables.epochs, id, repaired)?;
                    }
                    Ok(restored)
                }
                Err(err) => Err(err),
            }
        };
        let restored = match restored {
            Ok(restored) => restored,
            Err(StorageError::Redb(err)) => return Err(err),
            Err(err) => {
                txn.abort()?;
                return Ok(Err(err));
            }
        };
        self.durable(&mut txn)?;
        txn.commit()?;
        Ok(Ok(restored))
    }

    /// Runs one group in one write transaction and answers every command. Returns whether the
    /// group held a shutdown.
    fn run_group(&mut self, commands: Vec<Command>) -> bool {
        let shutdown = commands
            .iter()
            .any(|c| matches!(c, Command::Shutdown { .. }));
        if let Some(failure) = self.failure() {
            for command in commands {
                command.fail(|| failure.error(&self.shared));
            }
            return shutdown;
        }
        let count = commands.len();
        let started = Instant::now();
        let mut group = Group {
            durable: self.sync_deadline.is_some_and(|d| started >= d)
                || self.unsynced_bytes >= self.shared.options.max_unsynced_bytes,
            ..Group::default()
        };
        let mut pending = commands.into_iter();
        let result = self.stage_and_commit(&mut pending, &mut group);
        match result {
            Ok(()) => {
                self.shared.commits.fetch_add(1, Ordering::Relaxed);
                self.publish(&group);
                if group.durable {
                    self.nothing_unsynced();
                } else if let Some(interval) = group.interval {
                    self.unsynced_bytes += group.bytes;
                    let due = started + interval.min(MAX_SYNC_INTERVAL);
                    self.sync_deadline = Some(self.sync_deadline.map_or(due, |d| d.min(due)));
                }
                let took = started.elapsed();
                let durable = if group.durable { "true" } else { "false" };
                metrics::histogram!("sluice_store_commit_duration_seconds", "durable" => durable)
                    .record(took.as_secs_f64());
                metrics::histogram!("sluice_store_commit_batches", "durable" => durable)
                    .record(group.appends as f64);
                trace!(
                    commands = count,
                    appends = group.appends,
                    durable = group.durable,
                    micros = took.as_micros() as u64,
                    "group committed"
                );
                for waiter in group.waiters {
                    waiter.succeed();
                }
            }
            Err(err) => {
                error!(cause = %err, commands = count, "storage write failed; refusing further writes");
                let failure = Failure::of(&err);
                self.fail_store(failure.clone());
                for log in &group.staged {
                    lock(log).abort_staged();
                }
                let refusal = || failure.error(&self.shared);
                for waiter in group.waiters {
                    waiter.fail(refusal);
                }
                for command in pending {
                    command.fail(refusal);
                }
            }
        }
        group.shutdown
    }

    fn stage_and_commit(
        &mut self,
        commands: &mut std::vec::IntoIter<Command>,
        group: &mut Group,
    ) -> Result<(), redb::Error> {
        let mut txn = self.shared.begin_write()?;
        {
            let mut tables = GroupTables::open(&txn)?;
            for command in commands.by_ref() {
                self.stage(command, &mut tables, group)?;
            }
            for (id, log) in &group.touched {
                let log = lock(log);
                let state = log.staged_state();
                tables.partitions.insert(
                    (id.topic_id, id.partition),
                    (state.log_start, state.log_end),
                )?;
                if log.epochs_staged() {
                    tables::write_epochs(&mut tables.epochs, *id, log.staged_epochs())?;
                }
            }
        }
        if group.durable {
            self.durable(&mut txn)?;
        } else {
            txn.set_durability(Durability::None)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Notes what an append (or an acknowledged duplicate) asks of the group's commit.
    fn note_durability(group: &mut Group, durability: sluice_proto::Durability) {
        match durability {
            sluice_proto::Durability::Fsync => group.durable = true,
            sluice_proto::Durability::IntervalMs(ms) => {
                let ms = Duration::from_millis(ms);
                group.interval = Some(group.interval.map_or(ms, |i| i.min(ms)));
            }
        }
    }

    /// The partition as this group sees it: created or deleted in the group, or committed.
    fn lookup(&self, group: &Group, id: PartitionId) -> Option<SharedLog> {
        if let Some(log) = group.created.get(&id) {
            return Some(log.clone());
        }
        if group.deleted_topics.contains(&id.topic_id) {
            return None;
        }
        read_lock(&self.shared.partitions).get(&id).cloned()
    }

    /// Stages one command into the group's transaction. Errors of the command alone (unknown
    /// partition, invalid batch) are answered at once; a redb error fails the whole group.
    fn stage(
        &mut self,
        command: Command,
        tables: &mut GroupTables<'_>,
        group: &mut Group,
    ) -> Result<(), redb::Error> {
        match command {
            Command::Append {
                id,
                batch,
                placement,
                durability,
                reply,
            } => {
                let Some(log) = self.lookup(group, id) else {
                    reply.send(Err(StorageError::UnknownPartition(id)));
                    return Ok(());
                };
                let header = match BatchHeader::parse(&batch) {
                    Ok(header) if header.batch_len as usize == batch.len() => header,
                    Ok(header) => {
                        reply.send(Err(StorageError::InvalidBatch(format!(
                            "header says {} bytes, got {}",
                            header.batch_len,
                            batch.len()
                        ))));
                        return Ok(());
                    }
                    Err(err) => {
                        reply.send(Err(StorageError::InvalidBatch(err.to_string())));
                        return Ok(());
                    }
                };
                let stamp = ProducerStamp {
                    producer_id: header.producer_id,
                    epoch: header.producer_epoch,
                    base_sequence: header.base_sequence,
                };
                // A replica's batch was checked by its leader; it is only recorded below.
                if matches!(placement, Placement::Leader { .. }) && stamp.is_idempotent() {
                    let trimmed =
                        lock(&log).staged_state().log_start > 0 || self.truncated.contains(&id);
                    let producers = self.producers.entry(id).or_default();
                    match producers.check(stamp, header.record_count, trimmed) {
                        SequenceCheck::Accept => {}
                        SequenceCheck::Duplicate { base_offset } => {
                            // Nothing is written, but the answer waits for this group's commit
                            // (durable if the topic asks for it), so it never acknowledges a
                            // first copy that is not yet committed as the topic requires.
                            let (state, first_epoch) = {
                                let log = lock(&log);
                                (
                                    log.staged_state(),
                                    log.staged_epochs().epoch_at(base_offset),
                                )
                            };
                            debug!(partition = %id, producer_id = stamp.producer_id,
                                   sequence = stamp.base_sequence, base_offset,
                                   "duplicate batch not stored again");
                            Self::note_durability(group, durability);
                            group.waiters.push(Waiter::Appended(
                                reply,
                                Appended {
                                    base_offset,
                                    log_start: state.log_start,
                                    log_end: base_offset + u64::from(header.record_count),
                                    duplicate: true,
                                    leader_epoch: first_epoch.unwrap_or(0),
                                },
                            ));
                            return Ok(());
                        }
                        SequenceCheck::OutOfOrder { expected } => {
                            debug!(partition = %id, producer_id = stamp.producer_id,
                                   expected, got = stamp.base_sequence, "sequence gap refused");
                            reply.send(Err(StorageError::OutOfOrderSequence {
                                id,
                                producer_id: stamp.producer_id,
                                expected,
                                got: stamp.base_sequence,
                            }));
                            return Ok(());
                        }
                        SequenceCheck::Fenced { current_epoch } => {
                            reply.send(Err(StorageError::ProducerFenced {
                                id,
                                producer_id: stamp.producer_id,
                                epoch: stamp.epoch,
                                current_epoch,
                            }));
                            return Ok(());
                        }
                    }
                }
                let staged = {
                    let mut log = lock(&log);
                    let staged = match placement {
                        Placement::Leader { leader_epoch } => log.stage_append(
                            leader_epoch,
                            header.record_count,
                            header.max_timestamp,
                            header.batch_len,
                        ),
                        Placement::Replica => log
                            .stage_append_at(
                                header.base_offset,
                                header.leader_epoch,
                                header.record_count,
                                header.max_timestamp,
                                header.batch_len,
                            )
                            .map(|()| header.base_offset),
                    };
                    staged.map(|base| (base, log.staged_state()))
                };
                let (base, state) = match staged {
                    Ok(staged) => staged,
                    Err(AppendRefused::NotAtLogEnd { log_end }) => {
                        debug!(partition = %id, log_end, base_offset = header.base_offset,
                               "replica batch not at the log end refused");
                        reply.send(Err(StorageError::ReplicaOffsetMismatch {
                            id,
                            expected: log_end,
                            got: header.base_offset,
                        }));
                        return Ok(());
                    }
                    Err(AppendRefused::OlderEpoch { epoch, latest }) => {
                        debug!(partition = %id, epoch, latest, "batch of an older leader epoch refused");
                        reply.send(Err(StorageError::EpochBehind { id, epoch, latest }));
                        return Ok(());
                    }
                };
                group.staged.push(log.clone());
                group.touched.insert(id, log);
                let key = (id.topic_id, id.partition, base);
                // Written straight into its page: the one copy of the batch's bytes.
                let mut stored = tables.batches.insert_reserve(key, batch.len())?;
                stored.as_mut().copy_from_slice(&batch);
                if let Placement::Leader { leader_epoch } = placement {
                    batch::assign_offset(stored.as_mut(), base, leader_epoch);
                }
                drop(stored);
                tables.index.insert(
                    key,
                    (
                        state.log_end,
                        header.max_timestamp,
                        header.batch_len,
                        stamp.producer_id,
                        stamp.epoch,
                        stamp.base_sequence,
                    ),
                )?;
                if stamp.is_idempotent() {
                    self.producers
                        .entry(id)
                        .or_default()
                        .record(stamp, header.record_count, base);
                }
                Self::note_durability(group, durability);
                group.appends += 1;
                group.bytes += batch.len();
                group.waiters.push(Waiter::Appended(
                    reply,
                    Appended {
                        base_offset: base,
                        log_start: state.log_start,
                        log_end: state.log_end,
                        duplicate: false,
                        leader_epoch: match placement {
                            Placement::Leader { leader_epoch } => leader_epoch,
                            Placement::Replica => header.leader_epoch,
                        },
                    },
                ));
            }
            Command::CreatePartitions { ids, reply } => {
                group.durable = true;
                for id in ids {
                    if self.lookup(group, id).is_none() {
                        let key = (id.topic_id, id.partition);
                        tables.partitions.insert(key, (0, 0))?;
                        // Rows a deleted partition of the same id may have left (none should).
                        tables
                            .epochs
                            .retain_in(tables::epoch_range(id), |_, _| false)?;
                        tables.high_watermarks.remove(key)?;
                        group.created.insert(id, SharedLog::default());
                        debug!(partition = %id, "partition created");
                    }
                }
                group.waiters.push(Waiter::Done(reply));
            }
            Command::DeleteTopic { topic_id, reply } => {
                group.durable = true;
                let topic = (topic_id, 0, 0)..=(topic_id, u32::MAX, u64::MAX);
                tables.batches.retain_in(topic.clone(), |_, _| false)?;
                tables.index.retain_in(topic, |_, _| false)?;
                tables
                    .partitions
                    .retain_in((topic_id, 0)..=(topic_id, u32::MAX), |_, _| false)?;
                tables
                    .epochs
                    .retain_in((topic_id, 0, 0)..=(topic_id, u32::MAX, u32::MAX), |_, _| {
                        false
                    })?;
                tables
                    .high_watermarks
                    .retain_in((topic_id, 0)..=(topic_id, u32::MAX), |_, _| false)?;
                group.deleted_topics.insert(topic_id);
                self.producers.retain(|id, _| id.topic_id != topic_id);
                group.created.retain(|id, _| id.topic_id != topic_id);
                group.touched.retain(|id, _| id.topic_id != topic_id);
                debug!(topic_id, "topic deleted");
                group.waiters.push(Waiter::Done(reply));
            }
            Command::Retention {
                id,
                retention_ms,
                retention_bytes,
                now_ms,
                delete_before,
                max_offset,
                reply,
            } => {
                let Some(log) = self.lookup(group, id) else {
                    reply.send(Err(StorageError::UnknownPartition(id)));
                    return Ok(());
                };
                let plan = match delete_before {
                    Some(offset) => lock(&log).stage_delete_before(offset),
                    None => lock(&log).stage_retention(
                        retention_ms,
                        retention_bytes,
                        now_ms,
                        max_offset,
                    ),
                };
                if plan.removed_batches > 0 {
                    let removed = (id.topic_id, id.partition, plan.from)
                        ..(id.topic_id, id.partition, plan.to);
                    tables.batches.retain_in(removed.clone(), |_, _| false)?;
                    tables.index.retain_in(removed, |_, _| false)?;
                    if let Some(producers) = self.producers.get_mut(&id) {
                        producers.retain_from(plan.to);
                    }
                    group.staged.push(log.clone());
                    group.touched.insert(id, log);
                    debug!(partition = %id, batches = plan.removed_batches,
                           bytes = plan.removed_bytes, log_start = plan.to, "retention");
                } else {
                    trace!(partition = %id, "retention removed nothing");
                }
                // Not durable on purpose: a retention lost in a crash is simply redone.
                group.waiters.push(Waiter::Retention(
                    reply,
                    RetentionOutcome {
                        removed_batches: plan.removed_batches,
                        removed_bytes: plan.removed_bytes,
                        log_start: plan.to,
                    },
                ));
            }
            Command::CheckpointHighWatermark {
                id,
                high_watermark,
                reply,
            } => {
                let Some(log) = self.lookup(group, id) else {
                    reply.send(Err(StorageError::UnknownPartition(id)));
                    return Ok(());
                };
                let log_end = lock(&log).staged_state().log_end;
                if high_watermark > log_end {
                    reply.send(Err(StorageError::HighWatermarkBeyondLogEnd {
                        id,
                        high_watermark,
                        log_end,
                    }));
                    return Ok(());
                }
                // Not durable on purpose: a checkpoint lost in a crash is an older (lower) one,
                // which is safe, and the leader sends the high watermark again.
                tables
                    .high_watermarks
                    .insert((id.topic_id, id.partition), high_watermark)?;
                group.waiters.push(Waiter::Done(reply));
            }
            Command::MetaAppend {
                index,
                entry,
                reply,
            } => {
                group.durable = true;
                tables.meta_log.insert(index, entry.as_slice())?;
                group.waiters.push(Waiter::Done(reply));
            }
            Command::MetaPut { key, value, reply } => {
                group.durable = true;
                tables.meta_kv.insert(key.as_str(), value.as_slice())?;
                group.waiters.push(Waiter::Done(reply));
            }
            Command::Flush { reply } => {
                group.durable = true;
                group.waiters.push(Waiter::Done(reply));
            }
            Command::Shutdown { reply } => {
                group.durable = true;
                group.shutdown = true;
                group.waiters.push(Waiter::Done(reply));
            }
        }
        Ok(())
    }

    /// After the commit: readers may now see the group's changes.
    fn publish(&self, group: &Group) {
        for log in group.touched.values() {
            lock(log).commit_staged();
        }
        if group.created.is_empty() && group.deleted_topics.is_empty() {
            return;
        }
        let mut partitions = write_lock(&self.shared.partitions);
        partitions.retain(|id, _| !group.deleted_topics.contains(&id.topic_id));
        for (id, log) in &group.created {
            lock(log).commit_staged();
            partitions.insert(*id, log.clone());
        }
    }
}
