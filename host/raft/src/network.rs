//! How Raft messages travel between controller nodes.
//!
//! [`RaftTransport`] is the one thing a transport implements: deliver a [`RaftRequest`] to a
//! peer and bring back its [`RaftReply`]. Both are serde types, so a network transport (QUIC,
//! mTLS) is a thin adapter: postcard-frame the request on one bidirectional stream, and on the
//! receiving node pass the decoded request to [`crate::MetadataRaft::handle_rpc`] and frame the
//! reply back. This module adapts any such transport to openraft's network traits and provides
//! an in-process transport for tests.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use sluice_metadata::MetadataCommand;

use crate::{CommandResponse, MetadataRaft, NodeId, PeerNode, TypeConfig};

/// A Raft message from one node to another.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RaftRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    /// One chunk of a snapshot.
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A follower hands the leader a command to propose (its own client asked for it).
    Propose(MetadataCommand),
    /// A broker's session heartbeat to the metadata leader, in its broker epoch.
    Heartbeat {
        node_id: NodeId,
        broker_epoch: u64,
    },
    /// Asks a peer which cluster and voters it was configured with (before a new node forms
    /// the group: nodes that disagree must not).
    Identify,
    /// A message of the partition replication protocol, opaque here: handed to the handler the
    /// broker installed ([`crate::MetadataRaft::set_replica_handler`]). It rides the same
    /// mutually authenticated peer connections as Raft.
    Replica(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// The answer to a [`RaftRequest`], of the matching variant, or [`RaftReply::Refused`].
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftReply {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    /// The receiver would not take the request (a snapshot over its size limit); the text says
    /// why. The sender backs off and tries again, so the limit must be raised to recover.
    Refused(String),
    /// What became of a forwarded [`RaftRequest::Propose`].
    Proposed(Forwarded),
    /// A [`RaftRequest::Heartbeat`] was recorded (`true`), or the receiver does not lead
    /// (`false`).
    HeartbeatTaken(bool),
    /// The answer to [`RaftRequest::Identify`]; `None` before the node set its identity.
    Identity(Option<crate::Identity>),
    /// The handler's answer to a [`RaftRequest::Replica`], or why there is none (no handler
    /// installed yet: the node is starting).
    Replica(Result<ReplicaPayload, String>),
}

/// A replication handler's answer: a message, opaque here, and bytes that travel beside it
/// rather than inside it — the frame's raw part on a network transport, so batches read for a
/// follower go to the connection as they are, with no serialisation and no copy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaPayload {
    #[serde(with = "serde_bytes")]
    pub message: Vec<u8>,
    /// Not part of the encoded reply: the transport carries it ([`RaftReply::take_raw`],
    /// [`RaftReply::attach_raw`]).
    #[serde(skip)]
    pub raw: bytes::Bytes,
}

impl ReplicaPayload {
    pub fn new(message: Vec<u8>, raw: bytes::Bytes) -> Self {
        ReplicaPayload { message, raw }
    }
}

impl RaftReply {
    /// Takes out the bytes that travel beside the encoded reply (empty for every reply but a
    /// replication answer that has some).
    pub fn take_raw(&mut self) -> bytes::Bytes {
        match self {
            RaftReply::Replica(Ok(payload)) => std::mem::take(&mut payload.raw),
            _ => bytes::Bytes::new(),
        }
    }

    /// Puts back the bytes that arrived beside the encoded reply. Only a replication answer
    /// carries any: raw bytes after any other reply are a malformed frame.
    pub fn attach_raw(&mut self, raw: bytes::Bytes) -> Result<(), TransportError> {
        if raw.is_empty() {
            return Ok(());
        }
        match self {
            RaftReply::Replica(Ok(payload)) => {
                payload.raw = raw;
                Ok(())
            }
            _ => Err(TransportError::Failed(
                "a raft reply other than a replication answer carries raw bytes".into(),
            )),
        }
    }
}

/// The outcome of a proposal a follower forwarded to the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Forwarded {
    /// Committed at this log index, with this outcome (a refusal is an outcome too).
    Committed {
        index: u64,
        response: CommandResponse,
    },
    /// Refused before it reached the log.
    Refused(CommandResponse),
    /// The receiver does not lead (any more); `leader` is who does, when known.
    NotLeader { leader: Option<(NodeId, PeerNode)> },
    /// The receiver has stopped.
    Stopped(String),
}

/// Why a request got no reply.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// The peer cannot be reached (no connection, or cut off). openraft backs off before it
    /// tries this peer again.
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    /// The request was sent but the exchange failed (connection lost, bad frame).
    #[error("raft request failed: {0}")]
    Failed(String),
}

/// Delivers Raft messages to peers. Implementations must be cheap to share: one instance
/// serves every peer of a node.
pub trait RaftTransport: Send + Sync + 'static {
    /// Sends `request` to node `target`, reachable at `peer`, and waits for its reply.
    /// openraft bounds the wait itself (heartbeat and snapshot timeouts).
    fn call(
        &self,
        target: NodeId,
        peer: &PeerNode,
        request: RaftRequest,
    ) -> impl Future<Output = Result<RaftReply, TransportError>> + Send;
}

/// openraft's network factory over a [`RaftTransport`].
#[derive(Debug)]
pub(crate) struct NetworkFactory<T> {
    pub(crate) transport: Arc<T>,
}

/// openraft's connection to one peer.
#[derive(Debug)]
pub(crate) struct PeerConnection<T> {
    transport: Arc<T>,
    target: NodeId,
    peer: PeerNode,
}

impl<T: RaftTransport> RaftNetworkFactory<TypeConfig> for NetworkFactory<T> {
    type Network = PeerConnection<T>;

    async fn new_client(&mut self, target: NodeId, node: &PeerNode) -> Self::Network {
        PeerConnection {
            transport: self.transport.clone(),
            target,
            peer: node.clone(),
        }
    }
}

type RpcError<E = openraft::error::Infallible> = RPCError<NodeId, PeerNode, RaftError<NodeId, E>>;

impl<T: RaftTransport> PeerConnection<T> {
    async fn call<E: std::error::Error>(
        &self,
        request: RaftRequest,
    ) -> Result<RaftReply, RpcError<E>> {
        match self.transport.call(self.target, &self.peer, request).await {
            Ok(RaftReply::Refused(why)) => Err(RPCError::Network(NetworkError::new(
                &TransportError::Failed(format!("node {} refused: {why}", self.target)),
            ))),
            Ok(reply) => Ok(reply),
            Err(e @ TransportError::Unreachable(_)) => {
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Err(e @ TransportError::Failed(_)) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }

    fn remote<E: std::error::Error>(&self, e: RaftError<NodeId, E>) -> RpcError<E> {
        RPCError::RemoteError(RemoteError::new_with_node(
            self.target,
            self.peer.clone(),
            e,
        ))
    }

    fn mismatch<E: std::error::Error>(&self, reply: &RaftReply) -> RpcError<E> {
        let e = TransportError::Failed(format!(
            "node {} answered with the wrong kind of reply: {reply:?}",
            self.target
        ));
        RPCError::Network(NetworkError::new(&e))
    }
}

impl<T: RaftTransport> RaftNetwork<TypeConfig> for PeerConnection<T> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcError> {
        match self.call(RaftRequest::AppendEntries(rpc)).await? {
            RaftReply::AppendEntries(reply) => reply.map_err(|e| self.remote(e)),
            other => Err(self.mismatch(&other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcError> {
        match self.call(RaftRequest::Vote(rpc)).await? {
            RaftReply::Vote(reply) => reply.map_err(|e| self.remote(e)),
            other => Err(self.mismatch(&other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcError<InstallSnapshotError>> {
        match self.call(RaftRequest::InstallSnapshot(rpc)).await? {
            RaftReply::InstallSnapshot(reply) => reply.map_err(|e| self.remote(e)),
            other => Err(self.mismatch(&other)),
        }
    }
}

/// Connects the nodes of one process, for tests: each node's [`InProcessTransport`] hands
/// requests to the target's [`MetadataRaft`]. Requests and replies go through postcard on the
/// way, as they would on a network transport, so what the tests pass a real transport can
/// carry. Nodes can be cut off ([`InProcessRouter::isolate`]) and joined again.
#[derive(Debug, Clone, Default)]
pub struct InProcessRouter {
    inner: Arc<Mutex<Routes>>,
}

#[derive(Debug, Default)]
struct Routes {
    nodes: HashMap<NodeId, MetadataRaft>,
    isolated: HashSet<NodeId>,
}

impl InProcessRouter {
    pub fn new() -> Self {
        Self::default()
    }

    /// The transport node `from` sends with.
    pub fn transport(&self, from: NodeId) -> InProcessTransport {
        InProcessTransport {
            from,
            router: self.clone(),
        }
    }

    /// Makes `raft` reachable under its node id (replacing an earlier registration).
    pub fn register(&self, raft: &MetadataRaft) {
        self.routes().nodes.insert(raft.node_id(), raft.clone());
    }

    /// Makes node `id` unreachable, as if its process were gone.
    pub fn deregister(&self, id: NodeId) {
        self.routes().nodes.remove(&id);
    }

    /// Cuts node `id` off: nothing it sends arrives, nothing sent to it arrives.
    pub fn isolate(&self, id: NodeId) {
        self.routes().isolated.insert(id);
    }

    /// Undoes [`InProcessRouter::isolate`].
    pub fn reconnect(&self, id: NodeId) {
        self.routes().isolated.remove(&id);
    }

    /// A `std::sync::Mutex`: held only to look a route up, never across an await.
    fn routes(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.inner.lock().expect("router lock poisoned")
    }
}

/// One node's end of an [`InProcessRouter`].
#[derive(Debug, Clone)]
pub struct InProcessTransport {
    from: NodeId,
    router: InProcessRouter,
}

impl RaftTransport for InProcessTransport {
    async fn call(
        &self,
        target: NodeId,
        _peer: &PeerNode,
        request: RaftRequest,
    ) -> Result<RaftReply, TransportError> {
        let raft = {
            let routes = self.router.routes();
            if routes.isolated.contains(&self.from) || routes.isolated.contains(&target) {
                return Err(TransportError::Unreachable(format!(
                    "{} -> {target} is cut off",
                    self.from
                )));
            }
            routes.nodes.get(&target).cloned().ok_or_else(|| {
                TransportError::Unreachable(format!("node {target} is not running"))
            })?
        };
        let request = round_trip(&request)?;
        let mut reply = raft.handle_rpc(request).await;
        let raw = reply.take_raw();
        let mut reply = round_trip(&reply)?;
        reply.attach_raw(raw)?;
        Ok(reply)
    }
}

/// Encodes and decodes `value` with postcard, as a network transport would.
fn round_trip<T: Serialize + for<'de> Deserialize<'de>>(value: &T) -> Result<T, TransportError> {
    let bytes = postcard::to_allocvec(value).map_err(|e| TransportError::Failed(e.to_string()))?;
    postcard::from_bytes(&bytes).map_err(|e| TransportError::Failed(e.to_string()))
}
