//! The metadata controller: proposes commands to the metadata log and reads the state every
//! node reaches by applying it.
//!
//! The log is replicated by Raft (`sluice-raft`, its own file `DATA_DIR/raft.redb`); the state
//! machine is `sluice-metadata`'s. Until peers are configured a broker is a cluster of one: the
//! only voter, and so its own metadata leader. A data dir written before the Raft log existed
//! keeps its metadata log in the store; it is proposed again, entry by entry, into the Raft log
//! once, at the first start with Raft.

use std::collections::BTreeMap;
use std::path::Path;
use std::path::PathBuf;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use sluice_metadata::{MetadataCommand, MetadataError, MetadataState, decode_command};
use sluice_raft::{
    MetadataRaft, MetadataRaftConfig, NodeId, PeerNode, RaftReply, RaftRequest, RaftStatus,
    RaftTransport, TransportError,
};
use sluice_storage::Store;

use crate::BrokerError;

/// Key in the store's metadata table marking that the store's own (pre-Raft) metadata log was
/// proposed into the Raft log.
const IMPORTED_KEY: &str = "metadata_log_imported_to_raft";

/// How long start-up waits for this node to lead its one-node metadata group.
const LEADERSHIP_WAIT: Duration = Duration::from_secs(30);

/// A stopped Raft node (a write failed: the disk is full, say) is reopened at most this often.
const REOPEN_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct MetadataController {
    /// The running Raft node. Replaced when it stopped on a storage error (a full disk): the
    /// next proposal after [`REOPEN_INTERVAL`] opens it again from its file.
    raft: RwLock<MetadataRaft>,
    node_id: u32,
    data_dir: PathBuf,
    /// When the node was last (re)opened; reopening is tried at most once per interval.
    opened_at: Mutex<Instant>,
    /// Serialises this node's proposals, so [`MetadataController::propose_then`] reads the
    /// state exactly as its own command left it. A `std` mutex: proposals run on blocking
    /// threads, which wait for the commit while holding it; no async task ever takes it.
    proposing: Mutex<()>,
    runtime: tokio::runtime::Handle,
}

/// The transport of a node without peers: there is nobody to send to.
struct NoPeers;

impl RaftTransport for NoPeers {
    async fn call(
        &self,
        target: NodeId,
        _peer: &PeerNode,
        _request: RaftRequest,
    ) -> Result<RaftReply, TransportError> {
        Err(TransportError::Unreachable(format!(
            "node {target}: this broker has no peers configured"
        )))
    }
}

impl MetadataController {
    /// Starts the metadata Raft node of `node_id` in `data_dir`, makes it the single voter of
    /// a new group (a restarted node already is), waits until it leads, and brings over a
    /// pre-Raft metadata log from `store` once.
    pub async fn open(node_id: u32, data_dir: &Path, store: &Store) -> Result<Self, BrokerError> {
        let raft = start_node(node_id, data_dir).await?;
        let controller = MetadataController {
            raft: RwLock::new(raft),
            node_id,
            data_dir: data_dir.to_owned(),
            opened_at: Mutex::new(Instant::now()),
            proposing: Mutex::new(()),
            runtime: tokio::runtime::Handle::current(),
        };
        controller.import_store_log(store).await?;
        Ok(controller)
    }

    /// The current Raft node (a cheap clone).
    fn node(&self) -> MetadataRaft {
        self.raft.read().expect("raft lock poisoned").clone()
    }

    /// Proposes through the current node; if it has stopped, opens it again (at most once per
    /// [`REOPEN_INTERVAL`]) and proposes once more.
    async fn propose_raft(&self, cmd: MetadataCommand) -> Result<u64, ProposeError> {
        match self.node().propose(cmd.clone()).await {
            Err(sluice_raft::ProposeError::Stopped(stopped)) => {
                let due = {
                    let mut at = self.opened_at.lock().expect("reopen lock poisoned");
                    if at.elapsed() < REOPEN_INTERVAL {
                        false
                    } else {
                        *at = Instant::now();
                        true
                    }
                };
                if !due {
                    return Err(ProposeError::Unavailable(stopped.to_string()));
                }
                tracing::warn!(cause = %stopped, "metadata log stopped; opening it again");
                let _ = self.node().shutdown().await;
                let node = start_node(self.node_id, &self.data_dir)
                    .await
                    .map_err(|e| {
                        ProposeError::Unavailable(format!("{stopped}; reopening failed: {e}"))
                    })?;
                *self.raft.write().expect("raft lock poisoned") = node.clone();
                Ok(node.propose(cmd).await?)
            }
            other => Ok(other?),
        }
    }
}

/// Starts the metadata Raft node of `node_id` from `data_dir`, makes it the single voter of a
/// new group (a restarted node already is one) and waits until it leads.
async fn start_node(node_id: u32, data_dir: &Path) -> Result<MetadataRaft, BrokerError> {
    {
        let raft = MetadataRaft::start(
            NodeId::from(node_id),
            data_dir,
            NoPeers,
            &MetadataRaftConfig::default(),
        )
        .await
        .map_err(|e| BrokerError::Metadata(format!("starting the metadata log: {e}")))?;
        raft.initialize(BTreeMap::from([(
            NodeId::from(node_id),
            PeerNode::new(String::new()),
        )]))
        .await
        .map_err(|e| BrokerError::Metadata(format!("initializing the metadata log: {e}")))?;
        let started = Instant::now();
        loop {
            let status = raft
                .status()
                .await
                .map_err(|e| BrokerError::Metadata(e.to_string()))?;
            if status.leader == Some(NodeId::from(node_id)) {
                break;
            }
            if started.elapsed() > LEADERSHIP_WAIT {
                return Err(BrokerError::Metadata(format!(
                    "this node did not become the metadata leader within {LEADERSHIP_WAIT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(raft)
    }
}

impl MetadataController {
    /// Proposes the entries of a pre-Raft metadata log, in order, into the Raft log. Entries
    /// the state machine refuses were refused when they were first appended too.
    async fn import_store_log(&self, store: &Store) -> Result<(), BrokerError> {
        if store.meta_get(IMPORTED_KEY)?.is_some() {
            return Ok(());
        }
        let entries = store.meta_entries()?;
        if !entries.is_empty() && self.read(MetadataState::applied_index) == 0 {
            tracing::info!(
                entries = entries.len(),
                "bringing the store's metadata log into the Raft log"
            );
            for (index, bytes) in &entries {
                let cmd = decode_command(bytes).map_err(|e| {
                    BrokerError::Metadata(format!("metadata log entry {index} is unreadable: {e}"))
                })?;
                match self.propose_raft(cmd).await {
                    Ok(_) | Err(ProposeError::Refused(_)) => {}
                    Err(e) => {
                        return Err(BrokerError::Metadata(format!(
                            "bringing metadata log entry {index} into the Raft log: {e}"
                        )));
                    }
                }
            }
        }
        store.meta_put(IMPORTED_KEY, b"1")?;
        Ok(())
    }

    /// Validates `cmd`, commits it to the metadata log and applies it. Blocking: call it from
    /// a blocking thread.
    pub fn propose(&self, cmd: MetadataCommand) -> Result<(), ProposeError> {
        self.propose_then(cmd, |_| ())
    }

    /// Like [`MetadataController::propose`], from async code.
    pub async fn propose_async(&self, cmd: MetadataCommand) -> Result<(), ProposeError> {
        self.propose_raft(cmd).await.map(|_| ())
    }

    /// Like [`MetadataController::propose`], then runs `f` on the state as this command left
    /// it, before any later proposal of this node applies: how a caller learns what its
    /// command did (the producer id it allocated, say). Blocking.
    pub fn propose_then<R>(
        &self,
        cmd: MetadataCommand,
        f: impl FnOnce(&MetadataState) -> R,
    ) -> Result<R, ProposeError> {
        let _one_at_a_time = self.proposing.lock().expect("proposal lock poisoned");
        self.runtime.block_on(self.propose_raft(cmd))?;
        Ok(self.read(f))
    }

    /// Runs `f` on the current state.
    pub fn read<R>(&self, f: impl FnOnce(&MetadataState) -> R) -> R {
        self.node().read(f)
    }

    /// The metadata Raft node's view: role, leader, term, indexes, membership.
    pub async fn status(&self) -> Result<RaftStatus, ProposeError> {
        self.node()
            .status()
            .await
            .map_err(|e| ProposeError::Unavailable(e.to_string()))
    }

    /// Stops the Raft node and closes its file.
    pub async fn shutdown(&self) -> Result<(), BrokerError> {
        self.node()
            .shutdown()
            .await
            .map_err(|e| BrokerError::Metadata(e.to_string()))
    }
}

/// Why a proposal failed.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// The metadata refuses the command; the message says why.
    #[error(transparent)]
    Refused(#[from] MetadataError),
    /// No metadata leader can take the command right now (an election, or the node stopped).
    /// Retriable.
    #[error("the metadata log is unavailable: {0}")]
    Unavailable(String),
}

impl From<sluice_raft::ProposeError> for ProposeError {
    fn from(e: sluice_raft::ProposeError) -> Self {
        match e {
            sluice_raft::ProposeError::Refused(m) => ProposeError::Refused(m),
            other => ProposeError::Unavailable(other.to_string()),
        }
    }
}
