//! Raft messages over QUIC with mutual TLS: [`QuicTransport`] dials peers, [`serve_peers`]
//! answers them.
//!
//! Both take quinn configuration ready made (certificates, ALPN, client-certificate
//! verification): how the cluster's TLS material is made and loaded is the caller's business.
//! The dialler checks it reached the node it meant by using [`peer_server_name`] as the server
//! name, so the target's certificate must carry that name.
//!
//! One request per bidirectional stream: the dialler writes a request frame and finishes its
//! side; the server reads it, passes it to [`MetadataRaft::handle_rpc`], writes the reply frame
//! and finishes. The frames are the wire protocol's ([`sluice_proto::frame`]): a `u32`
//! big-endian length, checked against the reader's maximum before anything is allocated for
//! the body, then the body: a `u32` control length, the postcard-encoded [`RaftRequest`] or
//! [`RaftReply`], and no raw bytes — except after a replication answer, whose bytes (batches
//! read for a follower) are the frame's raw part, handed to quinn as they are.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use sluice_proto::ProtoError;
use sluice_proto::frame::{decode_body, read_frame, write_frame};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::Instrument;

use crate::network::{RaftReply, RaftRequest, RaftTransport, TransportError};
use crate::{MetadataRaft, NodeId, PeerNode};

/// The server name node `id` is dialled with; its peer certificate must carry it as a DNS
/// name. The broker issues its peer certificates for it (`sluice_broker::tls::node_dns_name`
/// calls this).
pub fn peer_server_name(id: NodeId) -> String {
    format!("node-{id}.sluice.invalid")
}

/// Default largest frame either side reads: far above an `AppendEntries` batch, and room for a
/// snapshot chunk (openraft sends 3 MiB chunks).
pub const DEFAULT_MAX_PEER_FRAME: usize = 64 << 20;

/// Stream error code sent when a request or reply frame is malformed or too large.
pub const MALFORMED_FRAME_CODE: u32 = 1;
/// Stream error code sent when a frame did not arrive, or could not be written, in time.
pub const FRAME_TIMEOUT_CODE: u32 = 2;

/// QUIC transport settings for both ends of peer connections, for the caller to put in its
/// [`quinn::ServerConfig`] and [`quinn::ClientConfig`]: at most `max_streams` RPCs in flight
/// per connection (a peer opening more waits for credit), no unidirectional streams, and a
/// dead peer's connection given up within a few seconds. The idle timeout is what lets
/// [`QuicTransport`] notice a peer that vanished without closing (crashed, or restarted with a
/// new endpoint that cannot reset the old connection) and dial it afresh; keep-alives hold an
/// idle but healthy connection open.
pub fn peer_transport_config(max_streams: u32) -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(max_streams.into())
        .max_concurrent_uni_streams(0u32.into())
        .max_idle_timeout(Some(
            Duration::from_secs(3)
                .try_into()
                .expect("3 s fits a VarInt"),
        ))
        .keep_alive_interval(Some(Duration::from_millis(500)));
    transport
}

/// Settings of the dialling side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuicTransportConfig {
    /// Time for the address lookup and the QUIC handshake with a peer. QUIC has no "connection
    /// refused", so this is how long a dead peer takes to count as unreachable.
    pub connect_timeout: Duration,
    /// After a failed dial, calls to that peer fail at once for this long rather than dial
    /// again: openraft sends heartbeats far more often than a dial to a dead peer times out.
    pub redial_backoff: Duration,
    /// Bound on one request and its reply. openraft puts its own, usually shorter, deadline
    /// around every call (the heartbeat interval, the election timeout, the snapshot timeout);
    /// this one bounds calls made outside openraft.
    pub rpc_timeout: Duration,
    /// Largest reply frame accepted.
    pub max_frame_bytes: usize,
    /// Peers dialled at another address than the one they advertise (a NAT, a tunnel, a
    /// proxy between two nodes).
    pub routes: HashMap<NodeId, String>,
}

impl Default for QuicTransportConfig {
    fn default() -> Self {
        QuicTransportConfig {
            connect_timeout: Duration::from_secs(1),
            redial_backoff: Duration::from_millis(500),
            rpc_timeout: Duration::from_secs(10),
            max_frame_bytes: DEFAULT_MAX_PEER_FRAME,
            routes: HashMap::new(),
        }
    }
}

/// A [`RaftTransport`] over QUIC: one connection per peer, dialled on first use and again once
/// closed, one bidirectional stream per request.
#[derive(Debug)]
pub struct QuicTransport {
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    config: QuicTransportConfig,
    /// A `std::sync::Mutex`: held only to find a peer's slot, never across an await.
    peers: Mutex<HashMap<NodeId, Arc<PeerSlot>>>,
}

/// What the transport knows of one peer.
#[derive(Debug, Default)]
struct PeerSlot {
    /// Held while dialling, so concurrent calls share one dial instead of racing their own.
    dialling: tokio::sync::Mutex<()>,
    /// A `std::sync::Mutex`, not a Tokio one: no await happens while it is held.
    link: Mutex<Link>,
}

#[derive(Debug, Default)]
struct Link {
    /// The connection and the address it was dialled at (a membership change may move a peer).
    connection: Option<(String, quinn::Connection)>,
    /// When the last dial failed, and why.
    failed: Option<(Instant, String)>,
}

impl PeerSlot {
    /// The open connection to `addr`, if there is one.
    fn open_connection(&self, addr: &str) -> Option<quinn::Connection> {
        let link = self.link.lock().expect("peer slot lock poisoned");
        link.connection
            .as_ref()
            .filter(|(at, conn)| at == addr && conn.close_reason().is_none())
            .map(|(_, conn)| conn.clone())
    }

    /// Why the last dial failed, if it failed less than `backoff` ago.
    fn recent_failure(&self, backoff: Duration) -> Option<String> {
        let link = self.link.lock().expect("peer slot lock poisoned");
        link.failed
            .as_ref()
            .filter(|(at, _)| at.elapsed() < backoff)
            .map(|(_, why)| why.clone())
    }

    fn record(&self, addr: &str, dialled: &Result<quinn::Connection, String>) {
        let mut link = self.link.lock().expect("peer slot lock poisoned");
        match dialled {
            Ok(conn) => {
                link.connection = Some((addr.to_string(), conn.clone()));
                link.failed = None;
            }
            Err(why) => {
                link.connection = None;
                link.failed = Some((Instant::now(), why.clone()));
            }
        }
    }
}

/// What a dial needs, owned, so it can run in a task of its own.
#[derive(Debug, Clone)]
struct Dialler {
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    connect_timeout: Duration,
    redial_backoff: Duration,
}

impl QuicTransport {
    /// Dials peers from `endpoint` (typically the node's peer listener, so one UDP socket
    /// serves both directions) with `client_config`, which must present this node's
    /// certificate and trust only the cluster CA.
    pub fn new(
        endpoint: quinn::Endpoint,
        client_config: quinn::ClientConfig,
        config: QuicTransportConfig,
    ) -> Self {
        QuicTransport {
            endpoint,
            client_config,
            config,
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// The open connection to `target`, dialled if needed.
    async fn connection(
        &self,
        target: NodeId,
        peer: &PeerNode,
    ) -> Result<quinn::Connection, TransportError> {
        let slot = {
            let mut peers = self.peers.lock().expect("peer map lock poisoned");
            peers.entry(target).or_default().clone()
        };
        let addr = self
            .config
            .routes
            .get(&target)
            .unwrap_or(&peer.peer_addr)
            .clone();
        if let Some(conn) = slot.open_connection(&addr) {
            return Ok(conn);
        }
        let dialler = Dialler {
            endpoint: self.endpoint.clone(),
            client_config: self.client_config.clone(),
            connect_timeout: self.config.connect_timeout,
            redial_backoff: self.config.redial_backoff,
        };
        // In a task of its own: openraft drops a call after the heartbeat interval, which may
        // be shorter than a handshake on a busy machine; the dial must survive that to ever
        // complete.
        let dial = tokio::spawn(
            dialler
                .dial(slot, target, addr.clone())
                .instrument(tracing::debug_span!("dial", target, addr = %addr)),
        );
        match dial.await {
            Ok(dialled) => dialled.map_err(TransportError::Unreachable),
            Err(e) => Err(TransportError::Unreachable(format!(
                "dialling node {target} failed: {e}"
            ))),
        }
    }
}

impl Dialler {
    async fn dial(
        self,
        slot: Arc<PeerSlot>,
        target: NodeId,
        addr: String,
    ) -> Result<quinn::Connection, String> {
        let _dialling = slot.dialling.lock().await;
        // Another call may have dialled, or failed to, while this one waited.
        if let Some(conn) = slot.open_connection(&addr) {
            return Ok(conn);
        }
        if let Some(why) = slot.recent_failure(self.redial_backoff) {
            tracing::trace!(cause = %why, "not dialling again yet");
            return Err(why);
        }
        let dialled =
            match tokio::time::timeout(self.connect_timeout, self.connect(target, &addr)).await {
                Ok(dialled) => dialled,
                Err(_) => Err(format!(
                    "node {target} at {addr} did not complete a handshake within {:?}",
                    self.connect_timeout
                )),
            };
        match &dialled {
            Ok(_) => tracing::debug!("connected"),
            Err(why) => tracing::debug!(cause = %why, "dial failed"),
        }
        slot.record(&addr, &dialled);
        dialled
    }

    async fn connect(&self, target: NodeId, addr: &str) -> Result<quinn::Connection, String> {
        let resolved = self.resolve(addr).await?;
        let connecting = self
            .endpoint
            .connect_with(
                self.client_config.clone(),
                resolved,
                &peer_server_name(target),
            )
            .map_err(|e| format!("cannot dial node {target} at {addr}: {e}"))?;
        connecting
            .await
            .map_err(|e| format!("handshake with node {target} at {addr} failed: {e}"))
    }

    /// `addr` resolved, preferring an address of the endpoint's own family (a socket bound
    /// to IPv4 cannot send to IPv6).
    async fn resolve(&self, addr: &str) -> Result<SocketAddr, String> {
        let found: Vec<SocketAddr> = tokio::net::lookup_host(addr)
            .await
            .map_err(|e| format!("cannot resolve {addr}: {e}"))?
            .collect();
        let v4 = self
            .endpoint
            .local_addr()
            .map(|local| local.is_ipv4())
            .unwrap_or(true);
        found
            .iter()
            .find(|a| a.is_ipv4() == v4)
            .or(found.first())
            .copied()
            .ok_or_else(|| format!("{addr} resolves to no address"))
    }
}

impl RaftTransport for QuicTransport {
    async fn call(
        &self,
        target: NodeId,
        peer: &PeerNode,
        request: RaftRequest,
    ) -> Result<RaftReply, TransportError> {
        let conn = self.connection(target, peer).await?;
        let exchange = exchange(&conn, &request, self.config.max_frame_bytes);
        match tokio::time::timeout(self.config.rpc_timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(TransportError::Failed(format!(
                "node {target} did not answer within {:?}",
                self.config.rpc_timeout
            ))),
        }
    }
}

/// One request and its reply, on a new stream of `conn`.
async fn exchange(
    conn: &quinn::Connection,
    request: &RaftRequest,
    max_frame_bytes: usize,
) -> Result<RaftReply, TransportError> {
    // Nothing was sent: the peer is as good as unreachable until the connection is redialled.
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| TransportError::Unreachable(format!("connection lost: {e}")))?;
    let failed = |e: ProtoError| TransportError::Failed(e.to_string());
    write_message(&mut send, request).await.map_err(failed)?;
    send.finish()
        .map_err(|e| TransportError::Failed(e.to_string()))?;
    let (mut reply, raw) = read_frame_message::<RaftReply, _>(&mut recv, max_frame_bytes)
        .await
        .map_err(failed)?;
    reply.attach_raw(raw)?;
    Ok(reply)
}

/// Settings of the answering side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerServerConfig {
    /// Time for a request frame to arrive once its stream is open, and for the reply to be
    /// written: a peer that stalls holds a stream no longer than this.
    pub frame_timeout: Duration,
    /// Largest request frame accepted; it must hold a snapshot chunk.
    pub max_frame_bytes: usize,
}

impl Default for PeerServerConfig {
    fn default() -> Self {
        PeerServerConfig {
            frame_timeout: Duration::from_secs(10),
            max_frame_bytes: DEFAULT_MAX_PEER_FRAME,
        }
    }
}

/// Answers peers' Raft requests arriving at `endpoint` (a peer listener whose server config
/// requires a client certificate from the cluster CA, and bounds streams per connection, see
/// [`peer_transport_config`]), until the endpoint is closed. Spawn it.
pub async fn serve_peers(endpoint: quinn::Endpoint, raft: MetadataRaft, config: PeerServerConfig) {
    let config = Arc::new(config);
    while let Some(incoming) = endpoint.accept().await {
        let span = tracing::info_span!(
            "peer_connection",
            node_id = raft.node_id(),
            remote = %incoming.remote_address()
        );
        tokio::spawn(serve_connection(incoming, raft.clone(), config.clone()).instrument(span));
    }
    tracing::debug!(node_id = raft.node_id(), "peer endpoint closed");
}

async fn serve_connection(
    incoming: quinn::Incoming,
    raft: MetadataRaft,
    config: Arc<PeerServerConfig>,
) {
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::debug!(cause = %e, "peer handshake failed");
            return;
        }
    };
    tracing::debug!("peer connected");
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let span = tracing::trace_span!("rpc", stream = %send.id());
                tokio::spawn(
                    serve_stream(raft.clone(), config.clone(), send, recv).instrument(span),
                );
            }
            Err(e) => {
                tracing::debug!(cause = %e, "peer connection closed");
                return;
            }
        }
    }
}

/// One request: read, handled, answered. A bad or late frame resets the stream; the
/// connection and its other streams carry on.
async fn serve_stream(
    raft: MetadataRaft,
    config: Arc<PeerServerConfig>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let read = read_message::<RaftRequest, _>(&mut recv, config.max_frame_bytes);
    let request = match tokio::time::timeout(config.frame_timeout, read).await {
        Ok(Ok(request)) => request,
        Ok(Err(e)) => {
            tracing::warn!(cause = %e, "bad request frame from a peer; stream reset");
            abandon(&mut send, &mut recv, MALFORMED_FRAME_CODE);
            return;
        }
        Err(_) => {
            tracing::debug!(timeout = ?config.frame_timeout, "request frame did not arrive in time; stream reset");
            abandon(&mut send, &mut recv, FRAME_TIMEOUT_CODE);
            return;
        }
    };
    let mut reply = raft.handle_rpc(request).await;
    let raw = reply.take_raw();
    let write = sluice_client::send_frame(&mut send, &reply, raw);
    match tokio::time::timeout(config.frame_timeout, write).await {
        Ok(Ok(())) => {
            let _ = send.finish();
        }
        Ok(Err(e)) => tracing::debug!(cause = %e, "peer went away before its reply"),
        Err(_) => {
            tracing::debug!(timeout = ?config.frame_timeout, "peer did not take its reply in time");
            abandon(&mut send, &mut recv, FRAME_TIMEOUT_CODE);
        }
    }
}

fn abandon(send: &mut quinn::SendStream, recv: &mut quinn::RecvStream, code: u32) {
    let _ = recv.stop(code.into());
    let _ = send.reset(code.into());
}

/// Writes `message` as one frame with no raw bytes.
async fn write_message<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    message: &T,
) -> Result<(), ProtoError> {
    write_frame(w, message, &[]).await
}

/// Reads one frame of at most `max` bytes and decodes its message, with the raw bytes after
/// it. The stream ending before the frame is an error: every stream carries exactly one.
async fn read_frame_message<T: DeserializeOwned, R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<(T, bytes::Bytes), ProtoError> {
    let body = read_frame(r, max).await?.ok_or(ProtoError::Truncated)?;
    decode_body(body)
}

/// [`read_frame_message`] for a frame that must carry no raw bytes.
async fn read_message<T: DeserializeOwned, R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<T, ProtoError> {
    let (message, raw) = read_frame_message(r, max).await?;
    if !raw.is_empty() {
        return Err(ProtoError::Malformed(
            "raft frame carries bytes after its message",
        ));
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use openraft::Vote;
    use openraft::raft::{VoteRequest, VoteResponse};

    use super::*;

    #[tokio::test]
    async fn messages_round_trip_through_frames() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let request = RaftRequest::Vote(VoteRequest::new(Vote::new(7, 3), None));
        write_message(&mut a, &request).await.unwrap();
        let RaftRequest::Vote(read) = read_message(&mut b, 1024).await.unwrap() else {
            panic!("not a vote request");
        };
        assert_eq!(read.vote, Vote::new(7, 3));

        let reply = RaftReply::Vote(Ok(VoteResponse::new(Vote::new(7, 3), None, true)));
        write_message(&mut a, &reply).await.unwrap();
        let read: RaftReply = read_message(&mut b, 1024).await.unwrap();
        assert!(matches!(read, RaftReply::Vote(Ok(r)) if r.vote_granted));
    }

    /// A replication answer's bytes travel as the frame's raw part and come back beside it;
    /// raw bytes after any other reply make the exchange fail.
    #[tokio::test]
    async fn only_a_replication_answer_carries_raw_bytes() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let mut reply = RaftReply::Replica(Ok(crate::ReplicaPayload::new(
            b"control".to_vec(),
            bytes::Bytes::from_static(b"batches"),
        )));
        let raw = reply.take_raw();
        assert_eq!(raw, &b"batches"[..]);
        write_frame(&mut a, &reply, &raw).await.unwrap();
        let (mut read, raw) = read_frame_message::<RaftReply, _>(&mut b, 1024)
            .await
            .unwrap();
        read.attach_raw(raw).unwrap();
        let RaftReply::Replica(Ok(payload)) = read else {
            panic!("not a replication answer: {read:?}");
        };
        assert_eq!(payload.message, b"control");
        assert_eq!(payload.raw, &b"batches"[..]);

        for mut other in [
            RaftReply::HeartbeatTaken(true),
            RaftReply::Replica(Err("no handler".into())),
        ] {
            assert!(other.take_raw().is_empty());
            write_frame(&mut a, &other, b"extra").await.unwrap();
            let (mut read, raw) = read_frame_message::<RaftReply, _>(&mut b, 1024)
                .await
                .unwrap();
            assert!(read.attach_raw(raw).is_err());
        }
    }

    #[tokio::test]
    async fn a_frame_over_the_limit_is_refused_before_its_body() {
        // Only the length prefix is written: the body is never needed to refuse it.
        let (mut a, mut b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, &(1u32 << 30).to_be_bytes())
            .await
            .unwrap();
        let refused = read_message::<RaftRequest, _>(&mut b, 1 << 20).await;
        assert!(
            matches!(refused, Err(ProtoError::FrameTooLarge { len, max }) if len == 1 << 30 && max == 1 << 20),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn malformed_and_truncated_frames_are_errors() {
        // A body whose control message is not a request.
        let (mut a, mut b) = tokio::io::duplex(64);
        let body = [0u8, 0, 0, 2, 0xff, 0xff];
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        tokio::io::AsyncWriteExt::write_all(&mut a, &frame)
            .await
            .unwrap();
        let bad = read_message::<RaftRequest, _>(&mut b, 1024).await;
        assert!(matches!(bad, Err(ProtoError::Codec(_))), "{bad:?}");

        // A message followed by raw bytes.
        let (mut a, mut b) = tokio::io::duplex(1024);
        let request = RaftRequest::Vote(VoteRequest::new(Vote::new(1, 1), None));
        write_frame(&mut a, &request, b"extra").await.unwrap();
        let bad = read_message::<RaftRequest, _>(&mut b, 1024).await;
        assert!(matches!(bad, Err(ProtoError::Malformed(_))), "{bad:?}");

        // The stream ends before any frame, or inside one.
        let (a, mut b) = tokio::io::duplex(64);
        drop(a);
        let bad = read_message::<RaftRequest, _>(&mut b, 1024).await;
        assert!(matches!(bad, Err(ProtoError::Truncated)), "{bad:?}");
        let (mut a, mut b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, &[0, 0, 0, 9, 1])
            .await
            .unwrap();
        drop(a);
        let bad = read_message::<RaftRequest, _>(&mut b, 1024).await;
        assert!(matches!(bad, Err(ProtoError::Truncated)), "{bad:?}");
    }
}
