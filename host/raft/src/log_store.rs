//! The Raft log on redb, in its own file (see docs/storage.md, "Metadata Raft log").
//!
//! Every write commits with `Durability::Immediate` before it returns, and `append` reports
//! the entries flushed only after that commit: a leader counts an entry towards the quorum only
//! once it is on disk here. redb calls block, so they run on tokio's blocking pool. Any
//! storage error is returned to openraft, which treats it as fatal and stops the node: after an
//! I/O failure nothing more is written to the file.

use std::fmt::Debug;
use std::ops::{Bound, Deref, RangeBounds};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{NodeId, TypeConfig};

/// Log entries: index → postcard of `Entry<TypeConfig>`.
pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// Single values, postcard-encoded, under the `*_KEY` names below.
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
/// The latest snapshot: [`SNAPSHOT_META_KEY`] and [`SNAPSHOT_DATA_KEY`].
pub(crate) const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_snapshot");

const VOTE_KEY: &str = "vote";
const COMMITTED_KEY: &str = "committed";
const LAST_PURGED_KEY: &str = "last_purged";
pub(crate) const SNAPSHOT_META_KEY: &str = "meta";
pub(crate) const SNAPSHOT_DATA_KEY: &str = "data";

/// Why the raft file could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StorageOpenError {
    /// redb could not open or create the file, or create its tables.
    #[error("cannot open the raft log: {0}")]
    Redb(#[from] redb::Error),
    /// A stored value (snapshot, vote) does not decode: the file is damaged or was written by
    /// an incompatible version.
    #[error("the raft log holds a value that does not decode: {0}")]
    Corrupt(String),
}

/// The open raft file. Says when it is closed: redb releases the file in `Database`'s drop,
/// which may run on a blocking-pool thread after the last handle went away, and a restart in
/// the same process must wait for it.
#[derive(Debug)]
pub(crate) struct RaftFile {
    db: Option<Database>,
    closed: Arc<AtomicBool>,
}

impl RaftFile {
    /// Becomes true once the file is closed.
    pub(crate) fn closed_flag(&self) -> Arc<AtomicBool> {
        self.closed.clone()
    }
}

impl Deref for RaftFile {
    type Target = Database;

    fn deref(&self) -> &Database {
        self.db.as_ref().expect("open until dropped")
    }
}

impl Drop for RaftFile {
    fn drop(&mut self) {
        drop(self.db.take());
        self.closed.store(true, Ordering::Release);
    }
}

/// Opens (creating if needed) the raft file and its tables.
pub(crate) fn open_database(path: &Path) -> Result<Arc<RaftFile>, redb::Error> {
    let db = Database::create(path)?;
    let txn = db.begin_write()?;
    txn.open_table(LOG)?;
    txn.open_table(META)?;
    txn.open_table(SNAPSHOT)?;
    txn.commit()?;
    Ok(Arc::new(RaftFile {
        db: Some(db),
        closed: Arc::new(AtomicBool::new(false)),
    }))
}

/// Runs blocking redb work on tokio's blocking pool.
pub(crate) async fn blocking<T, F>(db: &Arc<RaftFile>, f: F) -> Result<T, redb::Error>
where
    T: Send + 'static,
    F: FnOnce(&Database) -> Result<T, redb::Error> + Send + 'static,
{
    let db = db.clone();
    match tokio::task::spawn_blocking(move || f(&db)).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(std::io::Error::other(e).into()),
    }
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("raft values always encode")
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, redb::Error> {
    postcard::from_bytes(bytes).map_err(|e| std::io::Error::other(e).into())
}

/// The Raft log of one node. Cheap to clone: clones share the database, and serve as the log
/// reader openraft's replication tasks use.
#[derive(Debug, Clone)]
pub struct LogStore {
    db: Arc<RaftFile>,
}

impl LogStore {
    pub(crate) fn new(db: Arc<RaftFile>) -> Self {
        LogStore { db }
    }

    async fn read_meta<T>(&self, key: &'static str) -> Result<Option<T>, redb::Error>
    where
        T: DeserializeOwned + Send + 'static,
    {
        blocking(&self.db, move |db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(META)?;
            table.get(key)?.map(|v| decode(v.value())).transpose()
        })
        .await
    }

    async fn write_meta<T: Serialize>(
        &self,
        key: &'static str,
        value: &T,
        durability: Durability,
    ) -> Result<(), redb::Error> {
        let bytes = encode(value);
        blocking(&self.db, move |db| {
            let mut txn = db.begin_write()?;
            txn.set_durability(durability)?;
            txn.open_table(META)?.insert(key, bytes.as_slice())?;
            txn.commit()?;
            Ok(())
        })
        .await
    }

    /// Writes `entries` (replacing any at the same indexes) and syncs. `append` is this plus
    /// the flushed report.
    async fn write_entries(&self, entries: Vec<Entry<TypeConfig>>) -> Result<(), redb::Error> {
        let rows: Vec<(u64, Vec<u8>)> = entries
            .iter()
            .map(|e| (e.log_id.index, encode(e)))
            .collect();
        blocking(&self.db, move |db| {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            {
                let mut table = txn.open_table(LOG)?;
                for (index, bytes) in &rows {
                    table.insert(index, bytes.as_slice())?;
                }
            }
            txn.commit()?;
            Ok(())
        })
        .await
    }

    async fn last_purged(&self) -> Result<Option<LogId<NodeId>>, redb::Error> {
        self.read_meta(LAST_PURGED_KEY).await
    }
}

fn start_of(range: &impl RangeBounds<u64>) -> u64 {
    match range.start_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i.saturating_add(1),
        Bound::Unbounded => 0,
    }
}

fn end_of(range: &impl RangeBounds<u64>) -> Option<u64> {
    match range.end_bound() {
        Bound::Included(&i) => Some(i),
        Bound::Excluded(&0) => None,
        Bound::Excluded(&i) => Some(i - 1),
        Bound::Unbounded => Some(u64::MAX),
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let start = start_of(&range);
        let Some(end) = end_of(&range).filter(|&end| end >= start) else {
            return Ok(Vec::new());
        };
        blocking(&self.db, move |db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(LOG)?;
            let mut entries = Vec::new();
            for row in table.range(start..=end)? {
                let (_, bytes) = row?;
                entries.push(decode(bytes.value())?);
            }
            Ok(entries)
        })
        .await
        .map_err(|e| StorageIOError::read_logs(&e).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let io = |e: redb::Error| StorageError::from(StorageIOError::read_logs(&e));
        let last_purged_log_id = self.last_purged().await.map_err(io)?;
        let last = blocking(&self.db, |db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(LOG)?;
            table
                .last()?
                .map(|(_, bytes)| decode::<Entry<TypeConfig>>(bytes.value()).map(|e| e.log_id))
                .transpose()
        })
        .await
        .map_err(io)?;
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last.or(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.write_meta(VOTE_KEY, vote, Durability::Immediate)
            .await
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.read_meta(VOTE_KEY)
            .await
            .map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        // Not synced on its own: the committed id only spares a restarted node waiting for the
        // leader before it applies; an older one after a crash is safe. The next append or vote
        // (synced) makes it durable.
        self.write_meta(COMMITTED_KEY, &committed, Durability::None)
            .await
            .map_err(|e| StorageIOError::write(&e).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        self.read_meta::<Option<LogId<NodeId>>>(COMMITTED_KEY)
            .await
            .map(Option::flatten)
            .map_err(|e| StorageIOError::read(&e).into())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.write_entries(entries.into_iter().collect())
            .await
            .map_err(|e| StorageError::from(StorageIOError::write_logs(&e)))?;
        // Only now, with the commit on disk, may openraft count these entries as held here.
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        blocking(&self.db, move |db| {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            txn.open_table(LOG)?
                .retain_in(log_id.index.., |_, _| false)?;
            txn.commit()?;
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let purged = encode(&log_id);
        blocking(&self.db, move |db| {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            // One transaction: the purged id and the removal land together or not at all.
            txn.open_table(META)?
                .insert(LAST_PURGED_KEY, purged.as_slice())?;
            txn.open_table(LOG)?
                .retain_in(..=log_id.index, |_, _| false)?;
            txn.commit()?;
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::write_logs(&e).into())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use openraft::testing::{StoreBuilder, Suite};
    use openraft::{EntryPayload, LeaderId};
    use proptest::prelude::*;
    use sluice_metadata::MetadataCommand;
    use tempfile::TempDir;

    use super::*;
    use crate::StateMachineStore;

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for Builder {
        async fn build(
            &self,
        ) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<NodeId>> {
            let dir = TempDir::new().unwrap();
            let db = open_database(&dir.path().join("raft.redb")).unwrap();
            let sm = StateMachineStore::open(db.clone(), 1 << 20).await.unwrap();
            Ok((dir, LogStore::new(db), sm))
        }
    }

    /// openraft's own conformance suite for log stores and state machines.
    #[test]
    fn openraft_storage_suite() {
        Suite::test_all(Builder).unwrap();
    }

    fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(LeaderId::new(term, 1), index),
            payload: if index.is_multiple_of(3) {
                EntryPayload::Blank
            } else {
                EntryPayload::Normal(MetadataCommand::AllocateProducerId)
            },
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Appends this many entries after the last one, in a new term.
        Append(u64),
        /// Truncates at the n-th present entry (mod their count).
        Truncate(u64),
        /// Purges up to the n-th present entry (mod their count).
        Purge(u64),
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1u64..20).prop_map(Op::Append),
            1 => any::<u64>().prop_map(Op::Truncate),
            1 => any::<u64>().prop_map(Op::Purge),
            1 => Just(Op::Reopen),
        ]
    }

    /// The model: the entries present, and the last purged log id.
    #[derive(Default)]
    struct Model {
        entries: Vec<Entry<TypeConfig>>,
        purged: Option<LogId<NodeId>>,
    }

    impl Model {
        fn next_index(&self) -> u64 {
            self.entries
                .last()
                .map(|e| e.log_id.index + 1)
                .or(self.purged.map(|p| p.index + 1))
                .unwrap_or(1)
        }
    }

    fn open(path: &Path) -> LogStore {
        LogStore::new(open_database(path).unwrap())
    }

    async fn check(store: &mut LogStore, model: &Model) {
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, model.purged);
        assert_eq!(
            state.last_log_id,
            model.entries.last().map(|e| e.log_id).or(model.purged)
        );
        let all = store.try_get_log_entries(..).await.unwrap();
        let ids: Vec<_> = all.iter().map(|e| e.log_id).collect();
        let want: Vec<_> = model.entries.iter().map(|e| e.log_id).collect();
        assert_eq!(ids, want);
        if let (Some(first), Some(last)) = (model.entries.first(), model.entries.last()) {
            let (a, b) = (first.log_id.index, last.log_id.index);
            let mid = store.try_get_log_entries(a + 1..b).await.unwrap();
            assert_eq!(mid.len() as u64, (b - a).saturating_sub(1));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Appends, truncations, purges and reopening the file agree with a `Vec`.
        #[test]
        fn log_agrees_with_model(ops in prop::collection::vec(op(), 1..30)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let dir = TempDir::new().unwrap();
                let path = dir.path().join("raft.redb");
                let mut store = open(&path);
                let mut model = Model::default();
                let mut term = 1;
                for op in ops {
                    match op {
                        Op::Append(n) => {
                            term += 1;
                            let first = model.next_index();
                            let new: Vec<_> = (first..first + n).map(|i| entry(term, i)).collect();
                            store.write_entries(new.clone()).await.unwrap();
                            model.entries.extend(new);
                        }
                        Op::Truncate(k) if !model.entries.is_empty() => {
                            let at = (k % model.entries.len() as u64) as usize;
                            store.truncate(model.entries[at].log_id).await.unwrap();
                            model.entries.truncate(at);
                        }
                        Op::Purge(k) if !model.entries.is_empty() => {
                            let upto = (k % model.entries.len() as u64) as usize;
                            let id = model.entries[upto].log_id;
                            store.purge(id).await.unwrap();
                            model.entries.drain(..=upto);
                            model.purged = Some(id);
                        }
                        Op::Truncate(_) | Op::Purge(_) => {}
                        Op::Reopen => {
                            drop(store);
                            store = open(&path);
                        }
                    }
                    check(&mut store, &model).await;
                }
            });
        }
    }

    #[tokio::test]
    async fn vote_and_committed_survive_reopening() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("raft.redb");
        let mut store = open(&path);
        assert_eq!(store.read_vote().await.unwrap(), None);
        assert_eq!(store.read_committed().await.unwrap(), None);
        let vote = Vote::new(7, 2);
        let committed = Some(LogId::new(LeaderId::new(7, 2), 41));
        store.save_vote(&vote).await.unwrap();
        store.save_committed(committed).await.unwrap();
        // The committed id is written without a sync; the next synced write carries it.
        store.write_entries(vec![entry(7, 1)]).await.unwrap();
        drop(store);
        let mut store = open(&path);
        assert_eq!(store.read_vote().await.unwrap(), Some(vote));
        assert_eq!(store.read_committed().await.unwrap(), committed);
    }
}
