//! The metadata controller: appends commands to the metadata log and applies them.
//!
//! On a single node the log lives in the broker's redb store. This is the seam Raft fills
//! later: `propose` becomes "replicate through Raft, then apply on commit", and the state
//! machine in `sluice-metadata` stays exactly as it is.

use std::sync::{Mutex, RwLock};

use sluice_metadata::{
    MetadataCommand, MetadataError, MetadataState, decode_command, encode_command,
};
use sluice_storage::Store;

use crate::BrokerError;

#[derive(Debug)]
pub struct MetadataController {
    state: RwLock<MetadataState>,
    /// Serialises proposals so log indexes are assigned in order. A `std` mutex: proposals
    /// run on blocking threads and hold it across the durable append, never across an await.
    log: Mutex<u64>,
    store: Store,
}

impl MetadataController {
    /// Rebuilds the state by replaying the metadata log.
    pub fn open(store: Store) -> Result<Self, BrokerError> {
        let mut state = MetadataState::new();
        let mut last = 0;
        for (index, bytes) in store.meta_entries()? {
            let cmd = decode_command(&bytes).map_err(|e| {
                BrokerError::Metadata(format!("metadata log entry {index} is unreadable: {e}"))
            })?;
            // Entries were validated before they were appended; a refusal on replay means
            // the same refusal happened live, and the state machine recorded nothing.
            if let Err(e) = state.apply(index, &cmd) {
                tracing::debug!(index, cause = %e, "metadata entry refused on replay, as it was live");
            }
            last = index;
        }
        Ok(MetadataController {
            state: RwLock::new(state),
            log: Mutex::new(last),
            store,
        })
    }

    /// Validates `cmd`, appends it durably to the metadata log and applies it. Blocking: call
    /// it from a blocking thread.
    pub fn propose(&self, cmd: MetadataCommand) -> Result<(), ProposeError> {
        self.propose_then(cmd, |_| ())
    }

    /// Like [`MetadataController::propose`], then runs `f` on the state as this command left
    /// it, before any later proposal applies: how a caller learns what its command did (the
    /// producer id it allocated, say).
    pub fn propose_then<R>(
        &self,
        cmd: MetadataCommand,
        f: impl FnOnce(&MetadataState) -> R,
    ) -> Result<R, ProposeError> {
        let mut last = self.log.lock().expect("metadata log lock poisoned");
        self.state
            .read()
            .expect("metadata lock poisoned")
            .validate(&cmd)?;
        let index = *last + 1;
        self.store.meta_append(index, &encode_command(&cmd))?;
        *last = index;
        let mut state = self.state.write().expect("metadata lock poisoned");
        state.apply(index, &cmd)?;
        Ok(f(&state))
    }

    /// Runs `f` on the current state.
    pub fn read<R>(&self, f: impl FnOnce(&MetadataState) -> R) -> R {
        f(&self.state.read().expect("metadata lock poisoned"))
    }
}

/// Why a proposal failed.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    #[error(transparent)]
    Refused(#[from] MetadataError),
    #[error(transparent)]
    Storage(#[from] sluice_storage::StorageError),
}
