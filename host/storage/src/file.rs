//! Where a store's redb file lives, so the writer can open it again after an I/O error.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::PathBuf;

use redb::Database;

use crate::{StorageError, StoreOptions};

/// The bytes behind a store: how to open a redb backend over them, again and again, and how to
/// tell whether writing can succeed again.
///
/// After an I/O error redb refuses every write transaction until its `Database` is dropped and
/// opened again. The writer thread does that by itself (every `StoreOptions::reopen_interval`),
/// but only once [`StoreFile::probe`] succeeds: until then it keeps the failed database, so
/// reads keep working. [`Store::open`](crate::Store::open) uses the file at a path; tests
/// implement this over a shared in-memory backend that injects faults.
pub trait StoreFile: Send + Sync + 'static {
    /// The redb backend [`StoreFile::open`] gives.
    type Backend: redb::StorageBackend;

    /// Names the bytes in messages and logs, e.g. `/var/lib/sluice/sluice.redb`.
    fn location(&self) -> String;

    /// A fresh backend over the same bytes. redb repairs them on open if a commit was cut short.
    fn open(&self) -> io::Result<Self::Backend>;

    /// Whether writes can succeed now (e.g. the disk has room again), checked without touching
    /// the store's own bytes. An error keeps the store in its failed state until the next try.
    fn probe(&self) -> io::Result<()>;
}

/// The store's redb file on a local file system.
#[derive(Debug, Clone)]
pub(crate) struct PathFile {
    pub(crate) path: PathBuf,
}

impl PathFile {
    /// How much room the probe asks for: enough for redb's repair on open and a few commits.
    const PROBE_BYTES: usize = 1024 * 1024;
}

impl StoreFile for PathFile {
    type Backend = redb::backends::FileBackend;

    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn open(&self) -> io::Result<Self::Backend> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.path)?;
        redb::backends::FileBackend::new(file).map_err(io::Error::other)
    }

    /// Writes and syncs a scratch file beside the store, then removes it: a full disk refuses it.
    fn probe(&self) -> io::Result<()> {
        let mut probe = self.path.clone().into_os_string();
        probe.push(".space-probe");
        let probe = PathBuf::from(probe);
        let result = (|| {
            let mut file = std::fs::File::create(&probe)?;
            file.write_all(&[0; Self::PROBE_BYTES])?;
            file.sync_all()
        })();
        // Best effort: a probe file left behind is removed by the next probe.
        let _ = std::fs::remove_file(&probe);
        result
    }
}

/// [`StoreFile`] without its backend type, so the writer can hold any of them.
pub(crate) trait Reopen: Send + Sync {
    fn location(&self) -> String;
    fn probe(&self) -> io::Result<()>;
    /// Opens redb over a fresh backend; whether redb had to walk the whole file to repair it
    /// (a crash with no allocator state saved: see `StoreOptions::quick_repair`).
    fn open_database(&self, options: &StoreOptions) -> Result<(Database, bool), StorageError>;
}

impl<F: StoreFile> Reopen for F {
    fn location(&self) -> String {
        StoreFile::location(self)
    }

    fn probe(&self) -> io::Result<()> {
        StoreFile::probe(self)
    }

    fn open_database(&self, options: &StoreOptions) -> Result<(Database, bool), StorageError> {
        let backend = self.open().map_err(redb::Error::Io)?;
        let repaired = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, location) = (repaired.clone(), self.location());
        let db = redb::Builder::new()
            .set_cache_size(options.cache_bytes)
            .set_repair_callback(move |_| {
                if !flag.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!(
                        location,
                        "the store was not closed cleanly and its last commit saved no \
                         allocator state: reading the whole file to repair it"
                    );
                }
            })
            .create_with_backend(backend)?;
        Ok((db, repaired.load(std::sync::atomic::Ordering::Relaxed)))
    }
}
