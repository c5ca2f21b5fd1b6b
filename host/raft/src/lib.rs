//! The metadata log, replicated by Raft (openraft). The only crate that links openraft.
//!
//! [`sluice_metadata`] stays a pure state machine; this crate makes a quorum of controller
//! nodes agree on the order of its [`MetadataCommand`]s and applies them, in that order, to a
//! [`MetadataState`] on every node.
//!
//! How data enters: the broker calls [`MetadataRaft::propose`] with a command. The command is
//! validated against the local state (as the single-node controller does), then appended by the
//! leader to its log and replicated to the voters through a [`RaftTransport`]. Once a quorum
//! holds it durably, every node applies it. A command refused at apply time (two proposals
//! that raced) is refused identically everywhere: that is an outcome, not a storage error.
//!
//! How data leaves: [`MetadataRaft::read`] (or the shared [`MetadataRaft::state_handle`]) gives
//! read access to the applied state; [`MetadataRaft::status`] reports role, leader, term and log
//! positions. Peers' messages arrive through the transport's server side, which hands them to
//! [`MetadataRaft::handle_rpc`].
//!
//! Between nodes, [`QuicTransport`] carries the messages and [`serve_peers`] answers them, over
//! QUIC with mutual TLS under the cluster CA (the caller supplies the quinn endpoint and
//! configs). Peer RPC framing: each request takes one bidirectional stream of one connection
//! per peer; the dialler writes one frame and finishes its side, the server writes one reply
//! frame and finishes. A frame is the wire protocol's (`sluice_proto::frame`): a `u32`
//! big-endian body length, then the body: a `u32` big-endian control length and the
//! postcard-encoded [`RaftRequest`] or [`RaftReply`], with nothing after it. Each reader checks
//! the length against its maximum ([`DEFAULT_MAX_PEER_FRAME`], 64 MiB, room for a snapshot
//! chunk) before allocating; a frame too large, undecodable, or not arriving within the
//! server's frame timeout resets that stream (codes [`MALFORMED_FRAME_CODE`],
//! [`FRAME_TIMEOUT_CODE`]), not the connection.
//!
//! On disk (one redb file per node, [`RAFT_FILE`], apart from the partition data store): the
//! log entries, the vote, the committed id, the last purged id and the latest snapshot. A
//! restarted node loads the snapshot and replays only the log after it. See docs/storage.md,
//! "Metadata Raft log".

mod log_store;
mod network;
mod node;
mod outcome;
mod quic;
mod state_machine;

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};
pub use sluice_metadata::{MetadataCommand, MetadataError, MetadataState};

pub use log_store::{LogStore, StorageOpenError};
pub use network::{
    Forwarded, InProcessRouter, InProcessTransport, RaftReply, RaftRequest, RaftTransport,
    ReplicaPayload, TransportError,
};
pub use node::{
    MembershipError, MetadataRaft, MetadataRaftConfig, ProposeError, RAFT_FILE, RaftStatus,
    RaftStopped, ReplicaHandler, Role, StartError,
};
pub use quic::{
    DEFAULT_MAX_PEER_FRAME, FRAME_TIMEOUT_CODE, MALFORMED_FRAME_CODE, PeerServerConfig,
    QuicTransport, QuicTransportConfig, peer_server_name, peer_transport_config, serve_peers,
};
pub use state_machine::StateMachineStore;

/// A controller node's id in the Raft group.
pub type NodeId = u64;

/// A controller node as the Raft membership holds it: where its peers reach it. Kept in the
/// membership entries, so every node learns every peer's address from the log itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerNode {
    /// `host:port` of the node's peer (Raft) endpoint.
    pub peer_addr: String,
}

impl PeerNode {
    pub fn new(peer_addr: impl Into<String>) -> Self {
        PeerNode {
            peer_addr: peer_addr.into(),
        }
    }
}

impl fmt::Display for PeerNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.peer_addr)
    }
}

/// What a node was configured with: the cluster it belongs to and the voters it expects. Nodes
/// compare identities before forming a new group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub cluster_id: String,
    /// (node id, peer address), sorted by id.
    pub voters: Vec<(NodeId, String)>,
}

/// What applying one log entry produced. Blank and membership entries are always `Ok`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResponse {
    /// `Err` when [`MetadataState::apply`] refused the command; every node reaches the same
    /// outcome for the same entry.
    #[serde(with = "outcome")]
    pub outcome: Result<(), MetadataError>,
}

openraft::declare_raft_types!(
    /// openraft's type configuration for the metadata log.
    pub TypeConfig:
        D = MetadataCommand,
        R = CommandResponse,
        NodeId = NodeId,
        Node = PeerNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);
