//! The QUIC side: accepts connections and streams, reads request frames, writes responses in
//! request order.
//!
//! What a client can hold of the broker is bounded here (docs/cli.md has the settings and the
//! arithmetic):
//! - connections: at most `max_connections`; more are refused at the handshake;
//! - streams: at most `max_streams_per_connection` per connection (QUIC stream credit);
//! - bytes QUIC buffers for a client: its receive window, `connection_window_bytes`, of which
//!   one stream may fill a quarter (so a stream that is not being read cannot stall the others);
//! - memory: a frame's body is read only once its length is granted from the connection's
//!   budget and the broker's (small frames from a reserve of their own), and an answer's bytes
//!   are charged the same way; both are held until the answer is written. Buffers grow as bytes
//!   arrive. A frame that gets no memory in time is read, dropped and refused (the stream stays
//!   usable); an answer that gets none is replaced by a retriable error;
//! - time: a frame's length prefix, and then its body, must each arrive within
//!   `frame_timeout_ms`, or the broker answers with an error and stops reading the stream; a
//!   connection with no request for `idle_timeout_ms` is closed, keep-alives or not;
//! - CPU: large or compressed batches, and batches routed by a partitioner plugin, are handled
//!   on a bounded set of threads, one at a time per connection, so a flood of heavy requests
//!   queues behind its own sender.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use sluice_proto::frame::{decode_body, read_frame_body, read_frame_len};
use sluice_proto::{Acks, ErrorCode, ProtoError, Request, WireError};
use tokio::io::AsyncReadExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;
use tracing::Instrument;

use crate::Broker;
use crate::auth::Session;
use crate::config::BrokerConfig;
use crate::router::Reply;

/// How many requests of one stream may be in flight before the broker stops reading more.
const MAX_PIPELINED: usize = 128;

/// Frames up to this size draw on the small-frame reserve of the request memory.
const SMALL_FRAME: usize = 64 * 1024;
/// The small-frame reserve is this fraction (1/n) of `request_memory_bytes`.
pub(crate) const SMALL_FRAME_RESERVE_SHARE: usize = 8;
/// What one connection may hold of the small-frame reserve: 16 small frames.
pub(crate) const CONNECTION_SMALL_BYTES: usize = 16 * SMALL_FRAME;

/// QUIC application close code for a connection closed because it sat idle.
pub const IDLE_CLOSE_CODE: u32 = 2;
/// QUIC stop code for a stream the broker stops reading (a frame too large or too slow).
pub const STREAM_REFUSED_CODE: u32 = 3;
/// QUIC application close code for a connection refused for who it is (or is not): a verified
/// certificate that names no principal, repeated authentication failures, or no authentication
/// in time.
pub const AUTH_CLOSE_CODE: u32 = 4;

/// Largest frame read from a connection that has not authenticated yet (SCRAM's messages are
/// under 1 KiB): it cannot hold more of the broker's memory than this per stream.
const UNAUTHENTICATED_MAX_FRAME: usize = 16 * 1024;

/// How long a connection may take to authenticate (under `client_auth = "credentials"`)
/// before it is closed.
const AUTHENTICATION_DEADLINE: Duration = Duration::from_secs(10);

/// Limits shared by every connection of a broker.
#[derive(Debug)]
pub(crate) struct ClientLimits {
    /// Bytes of large request frames and answers (above [`SMALL_FRAME`]) held by all
    /// connections together.
    request_memory: Arc<Semaphore>,
    /// The same for small ones: a reserve that slow large frames cannot take, so metadata,
    /// fetch and small produce requests are served while a flood holds the rest.
    small_request_memory: Arc<Semaphore>,
    /// Validations of large or compressed batches running at once.
    validation: Arc<Semaphore>,
    /// Fetches reading from the store at once: what they read is in memory before its answer
    /// is charged to the budgets, so their number is bounded too.
    pub(crate) fetch_reads: Semaphore,
    connections: AtomicUsize,
    /// Request streams open, all connections.
    pub(crate) streams: AtomicUsize,
    /// `acks=0` produce requests refused; they get no answer, so they are counted here and
    /// logged.
    pub(crate) acks0_refused: AtomicU64,
}

impl ClientLimits {
    pub(crate) fn new(config: &BrokerConfig) -> Self {
        let threads = if config.validation_threads == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            config.validation_threads
        };
        let reserve = config.request_memory_bytes / SMALL_FRAME_RESERVE_SHARE;
        ClientLimits {
            request_memory: Arc::new(Semaphore::new(config.request_memory_bytes - reserve)),
            small_request_memory: Arc::new(Semaphore::new(reserve)),
            validation: Arc::new(Semaphore::new(threads)),
            fetch_reads: Semaphore::new(4 * threads),
            connections: AtomicUsize::new(0),
            streams: AtomicUsize::new(0),
            acks0_refused: AtomicU64::new(0),
        }
    }

    /// Client connections open (their handshakes included).
    pub(crate) fn open_connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Bytes of the request memory budget (`request_memory_bytes`) held now by frames being
    /// read or handled and answers waiting to be written.
    pub(crate) fn request_memory_in_use(&self, config: &BrokerConfig) -> usize {
        let free =
            self.request_memory.available_permits() + self.small_request_memory.available_permits();
        config.request_memory_bytes.saturating_sub(free)
    }
}

/// One connection's share of the broker, and what tells whether it is idle.
#[derive(Debug)]
struct ConnectionState {
    /// Bytes of large request frames and answers this connection holds.
    request_memory: Arc<Semaphore>,
    /// The same for small ones, so its large frames waiting for the broker's memory do not
    /// hold up its small requests.
    small_request_memory: Arc<Semaphore>,
    /// One heavy validation at a time per connection.
    validation: Arc<Semaphore>,
    /// Requests being read or handled.
    busy: AtomicUsize,
    /// When the last request arrived or finished.
    last_active: Mutex<Instant>,
    /// The connection itself (closed after repeated authentication failures).
    connection: quinn::Connection,
    /// The connection's log span: it gets the principal once the client authenticates.
    span: tracing::Span,
}

impl ConnectionState {
    fn new(config: &BrokerConfig, connection: quinn::Connection) -> Self {
        ConnectionState {
            connection,
            span: tracing::Span::current(),
            request_memory: Arc::new(Semaphore::new(config.connection_request_memory_bytes)),
            small_request_memory: Arc::new(Semaphore::new(CONNECTION_SMALL_BYTES)),
            validation: Arc::new(Semaphore::new(1)),
            busy: AtomicUsize::new(0),
            last_active: Mutex::new(Instant::now()),
        }
    }

    fn touch(&self) {
        // A std mutex: held for one assignment, never across an await.
        *self.last_active.lock().expect("activity lock poisoned") = Instant::now();
    }

    /// When the connection becomes idle if nothing happens before; `None` while busy.
    fn idle_at(&self, idle: Duration) -> Option<Instant> {
        if self.busy.load(Ordering::SeqCst) > 0 {
            return None;
        }
        Some(*self.last_active.lock().expect("activity lock poisoned") + idle)
    }
}

/// Marks a request as being read or handled on its connection until dropped.
#[derive(Debug)]
struct Busy(Arc<ConnectionState>);

impl Busy {
    fn new(state: &Arc<ConnectionState>) -> Self {
        state.busy.fetch_add(1, Ordering::SeqCst);
        state.touch();
        Busy(state.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Memory granted to a request: its frame's and, once known, its answer's bytes, from the
/// connection's budget and the broker's. Returned when the answer has been written.
#[derive(Debug, Default)]
pub(crate) struct Grant {
    permits: Vec<OwnedSemaphorePermit>,
}

impl Grant {
    /// Takes `len` bytes from the pools for its size (the connection's first, so one connection
    /// cannot queue for more of the broker than it may hold), waiting for them.
    async fn acquire(broker: &Broker, state: &ConnectionState, len: usize) -> Grant {
        let (connection, pool) = pools(broker, state, len);
        // Lengths are at most max_frame_bytes, which fits in u32; the semaphores never close.
        let n = u32::try_from(len).expect("frame length fits in u32");
        let mine = connection
            .clone()
            .acquire_many_owned(n)
            .await
            .expect("connection budget is never closed");
        let shared = pool
            .clone()
            .acquire_many_owned(n)
            .await
            .expect("request memory is never closed");
        Grant {
            permits: vec![mine, shared],
        }
    }

    /// Adds `len` bytes if they are free now.
    fn try_add(&mut self, broker: &Broker, state: &ConnectionState, len: usize) -> bool {
        let (connection, pool) = pools(broker, state, len);
        let Ok(n) = u32::try_from(len) else {
            return false;
        };
        let Ok(mine) = connection.clone().try_acquire_many_owned(n) else {
            return false;
        };
        let Ok(shared) = pool.clone().try_acquire_many_owned(n) else {
            return false;
        };
        self.permits.extend([mine, shared]);
        true
    }
}

/// The connection's and the broker's budgets for a frame or answer of `len` bytes.
fn pools<'a>(
    broker: &'a Broker,
    state: &'a ConnectionState,
    len: usize,
) -> (&'a Arc<Semaphore>, &'a Arc<Semaphore>) {
    if len <= SMALL_FRAME {
        (
            &state.small_request_memory,
            &broker.limits.small_request_memory,
        )
    } else {
        (&state.request_memory, &broker.limits.request_memory)
    }
}

/// Counts a connection against `max_connections` until dropped.
struct ConnectionSlot(Arc<Broker>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.limits.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

pub(crate) async fn accept_loop(broker: Arc<Broker>, endpoint: quinn::Endpoint) {
    let mut next_conn: u64 = 0;
    while let Some(incoming) = endpoint.accept().await {
        let open = broker.limits.connections.fetch_add(1, Ordering::SeqCst);
        let slot = ConnectionSlot(broker.clone());
        if open >= broker.config.max_connections {
            tracing::warn!(
                peer = %incoming.remote_address(),
                limit = broker.config.max_connections,
                "connection refused: max_connections reached"
            );
            incoming.refuse();
            continue;
        }
        next_conn += 1;
        let span = tracing::info_span!(
            "conn",
            id = next_conn,
            peer = %incoming.remote_address(),
            principal = tracing::field::Empty
        );
        let broker = broker.clone();
        tokio::spawn(
            async move {
                let _slot = slot;
                match incoming.await {
                    Ok(conn) => {
                        crate::metrics::connection_accepted();
                        serve_connection(broker, conn).await;
                    }
                    Err(e) => tracing::debug!(cause = %e, "handshake failed"),
                }
            }
            .instrument(span),
        );
    }
}

async fn serve_connection(broker: Arc<Broker>, conn: quinn::Connection) {
    let session = match crate::auth::open_session(&broker, &conn) {
        Ok(session) => Arc::new(session),
        Err(why) => {
            tracing::warn!(cause = %why, "connection refused: no principal");
            conn.close(AUTH_CLOSE_CODE.into(), why.as_bytes());
            return;
        }
    };
    match session.identity() {
        Some(identity) => {
            tracing::Span::current().record("principal", identity.principal.as_str());
        }
        None => {
            // Authenticate soon or be closed: an idle unauthenticated connection holds a slot.
            let (conn, session) = (conn.clone(), session.clone());
            tokio::spawn(async move {
                tokio::time::sleep(AUTHENTICATION_DEADLINE).await;
                if session.identity().is_none() {
                    tracing::info!("closing a connection that did not authenticate in time");
                    conn.close(
                        AUTH_CLOSE_CODE.into(),
                        b"not authenticated within 10 s of connecting",
                    );
                }
            });
        }
    }
    tracing::debug!(
        mechanism = session.identity().map_or("pending", |i| i.mechanism),
        "connection open"
    );
    let state = Arc::new(ConnectionState::new(&broker.config, conn.clone()));
    let idle = Duration::from_millis(broker.config.idle_timeout_ms);
    loop {
        // While requests are in flight the connection is not idle; look again after `idle`.
        let wake = state.idle_at(idle).unwrap_or_else(|| Instant::now() + idle);
        tokio::select! {
            accepted = conn.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    let span = tracing::debug_span!("stream", id = %send.id());
                    tokio::spawn(
                        serve_stream(broker.clone(), session.clone(), state.clone(), send, recv)
                            .instrument(span),
                    );
                }
                Err(e) => {
                    tracing::debug!(cause = %e, "connection closed");
                    return;
                }
            },
            _ = tokio::time::sleep_until(wake) => {
                if state.idle_at(idle).is_some_and(|at| at <= Instant::now()) {
                    tracing::debug!(idle_ms = broker.config.idle_timeout_ms, "closing idle connection");
                    conn.close(IDLE_CLOSE_CODE.into(), b"idle: no request within idle_timeout_ms");
                    return;
                }
            }
        }
    }
}

/// A request's answer on its way to the writer, with the memory it holds until written.
type Pending = tokio::task::JoinHandle<(Reply, Grant)>;

/// What the reader hands the writer for each request, in order.
struct Queued {
    pending: Pending,
    /// An `acks=0` produce: nothing is written back, whatever happens to it.
    silent: bool,
}

/// A request frame read off a stream.
enum ReadRequest {
    /// Its body, and the memory granted for it (held while the request is in flight).
    Read {
        body: Bytes,
        grant: Grant,
        busy: Busy,
    },
    /// No memory was free for it in time: it was read and dropped, and is answered with
    /// `refused` (unless it is an `acks=0` produce). The stream stays usable.
    Dropped {
        request: Option<Request>,
        refused: WireError,
    },
}

/// Why reading the next request of a stream ended.
enum ReadEnd {
    /// The client finished the stream between frames, or it failed.
    Closed,
    /// Answer this, then stop reading: the stream cannot be resynchronised.
    Refuse(WireError),
}

async fn serve_stream(
    broker: Arc<Broker>,
    session: Arc<Session>,
    state: Arc<ConnectionState>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    broker.limits.streams.fetch_add(1, Ordering::Relaxed);
    let _open = StreamOpen(broker.clone());
    let (tx, mut rx) = mpsc::channel::<Queued>(MAX_PIPELINED);
    let writer = tokio::spawn(async move {
        while let Some(Queued { pending, silent }) = rx.recv().await {
            let (reply, grant) = match pending.await {
                Ok(done) => done,
                Err(e) => {
                    tracing::error!(cause = %e, "request handler panicked");
                    let reply = Reply::error(WireError::new(
                        ErrorCode::Internal,
                        "the broker failed while handling the request",
                    ));
                    (if silent { Reply::None } else { reply }, Grant::default())
                }
            };
            if let Reply::Frame(resp, raw) = reply
                && let Err(e) = sluice_client::send_frame(&mut send, &resp, raw).await
            {
                tracing::debug!(cause = %e, "client went away before its response");
                return;
            }
            drop(grant);
        }
        let _ = send.finish();
    });

    loop {
        let queued = match read_request(&broker, &session, &state, &mut recv).await {
            Ok(ReadRequest::Read { body, grant, busy }) => match decode_request(body) {
                Ok((request, raw)) => {
                    dispatch(&broker, &session, &state, request, raw, grant, busy).await
                }
                Err(e) => {
                    // The frame boundary is intact, so the stream stays usable.
                    tracing::debug!(cause = %e, "undecodable request");
                    ready(Reply::error(WireError::new(
                        ErrorCode::InvalidRequest,
                        format!("request could not be decoded: {e}"),
                    )))
                }
            },
            Ok(ReadRequest::Dropped { request, refused }) => {
                let silent = request.as_ref().is_some_and(is_silent);
                Queued {
                    pending: tokio::spawn(async { (Reply::error(refused), Grant::default()) }),
                    silent,
                }
                .silenced(&broker)
            }
            Err(ReadEnd::Closed) => break,
            Err(ReadEnd::Refuse(e)) => {
                let _ = tx.send(ready(Reply::error(e))).await;
                let _ = recv.stop(STREAM_REFUSED_CODE.into());
                break;
            }
        };
        if tx.send(queued).await.is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// Counts a request stream open until dropped.
struct StreamOpen(Arc<Broker>);

impl Drop for StreamOpen {
    fn drop(&mut self) {
        self.0.limits.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Reads one request frame: its length, then a grant of memory for it, then its body, each
/// within the frame timeout.
async fn read_request(
    broker: &Broker,
    session: &Session,
    state: &Arc<ConnectionState>,
    recv: &mut quinn::RecvStream,
) -> Result<ReadRequest, ReadEnd> {
    let config = &broker.config;
    let timeout = Duration::from_millis(config.frame_timeout_ms);
    let timed_out = |what: &str| {
        tracing::debug!(
            timeout_ms = config.frame_timeout_ms,
            "{what}; resetting the stream"
        );
        ReadEnd::Refuse(WireError::new(
            ErrorCode::InvalidRequest,
            format!(
                "{what} within frame_timeout_ms = {} ms; the stream is closed",
                config.frame_timeout_ms
            ),
        ))
    };
    // Waiting for the first byte of a frame is not a stall: the stream is between requests.
    let mut first = [0u8; 1];
    match recv.read(&mut first).await {
        Ok(Some(1)) => {}
        Ok(_) => return Err(ReadEnd::Closed),
        Err(e) => {
            tracing::debug!(cause = %e, "stream ended");
            return Err(ReadEnd::Closed);
        }
    }
    let busy = Busy::new(state);
    let mut prefix = (&first[..]).chain(&mut *recv);
    let len = match tokio::time::timeout(timeout, read_frame_len(&mut prefix)).await {
        Ok(Ok(Some(len))) => len,
        Ok(Ok(None)) | Ok(Err(_)) => {
            tracing::debug!("stream ended mid-frame");
            return Err(ReadEnd::Closed);
        }
        Err(_) => return Err(timed_out("the frame's length prefix did not arrive")),
    };
    let max = match session.identity() {
        Some(_) => config.max_frame_bytes,
        None => UNAUTHENTICATED_MAX_FRAME.min(config.max_frame_bytes),
    };
    if len > max {
        // The body is not read, so the stream cannot be resynchronised: answer, then stop
        // reading it. Other streams and connections are unaffected.
        tracing::debug!(len, max, "oversized frame refused");
        return Err(ReadEnd::Refuse(WireError::new(
            ErrorCode::FrameTooLarge,
            format!(
                "frame of {len} bytes exceeds the broker's maximum of {max} bytes; send smaller batches"
            ),
        )));
    }
    let wait = Duration::from_millis(config.request_memory_wait_ms);
    let Ok(grant) = tokio::time::timeout(wait, Grant::acquire(broker, state, len)).await else {
        // Waiting longer would let this stream's unread bytes sit in the connection's receive
        // window: read the frame without keeping it, and refuse it.
        tracing::debug!(len, "no request memory free; frame read and dropped");
        let refused = WireError::new(
            ErrorCode::Timeout,
            format!(
                "the broker had no memory free for a {len}-byte request within {} ms \
                 (request_memory_bytes); nothing was done, retry shortly",
                config.request_memory_wait_ms
            ),
        );
        return match tokio::time::timeout(timeout, skip_frame(recv, len)).await {
            Ok(Ok(request)) => Ok(ReadRequest::Dropped { request, refused }),
            Ok(Err(e)) => {
                tracing::debug!(cause = %e, "stream ended mid-frame");
                Err(ReadEnd::Closed)
            }
            Err(_) => Err(timed_out("the frame's body did not arrive")),
        };
    };
    match tokio::time::timeout(timeout, read_frame_body(recv, len)).await {
        Ok(Ok(body)) => Ok(ReadRequest::Read { body, grant, busy }),
        Ok(Err(e)) => {
            tracing::debug!(cause = %e, "stream ended mid-frame");
            Err(ReadEnd::Closed)
        }
        Err(_) => Err(timed_out("the frame's body did not arrive")),
    }
}

/// Largest control message the broker decodes from a frame it drops.
const MAX_CONTROL_OF_DROPPED: usize = 64 * 1024;

/// Reads a frame body of `len` bytes keeping only its control message (a few bytes; the record
/// batch is read and dropped chunk by chunk as QUIC hands it over). `None` when the control
/// message does not decode.
async fn skip_frame(
    recv: &mut quinn::RecvStream,
    len: usize,
) -> Result<Option<Request>, ProtoError> {
    let mut head = [0u8; 4];
    if len < 4 {
        skip(recv, len).await?;
        return Ok(None);
    }
    recv.read_exact(&mut head).await.map_err(|e| match e {
        quinn::ReadExactError::FinishedEarly(_) => ProtoError::Truncated,
        quinn::ReadExactError::ReadError(e) => ProtoError::Io(e.into()),
    })?;
    let control_len = u32::from_be_bytes(head) as usize;
    if control_len > MAX_CONTROL_OF_DROPPED || control_len > len - 4 {
        skip(recv, len - 4).await?;
        return Ok(None);
    }
    let control = read_frame_body(recv, control_len).await?;
    skip(recv, len - 4 - control_len).await?;
    let mut body = bytes::BytesMut::with_capacity(4 + control_len);
    body.extend_from_slice(&head);
    body.extend_from_slice(&control);
    Ok(decode_body::<Request>(body.freeze()).ok().map(|(r, _)| r))
}

/// Reads and drops `n` bytes of a stream.
async fn skip(recv: &mut quinn::RecvStream, mut n: usize) -> Result<(), ProtoError> {
    while n > 0 {
        match recv.read_chunk(n, true).await {
            Ok(Some(chunk)) => n -= chunk.bytes.len(),
            Ok(None) => return Err(ProtoError::Truncated),
            Err(e) => return Err(ProtoError::Io(e.into())),
        }
    }
    Ok(())
}

/// Largest control message (the postcard part of a frame) a request may have. Requests carry
/// names, configs and partition lists there, far below this; decoded, a control message can take
/// many times its size in memory (an empty string is 1 byte on the wire and 24 in memory), so
/// it is bounded well below the frame limit.
pub const MAX_REQUEST_CONTROL: usize = 1024 * 1024;

fn decode_request(body: Bytes) -> Result<(Request, Bytes), ProtoError> {
    let control_len = body
        .get(..4)
        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize);
    if control_len > MAX_REQUEST_CONTROL {
        return Err(ProtoError::Malformed(
            "control message longer than the broker's limit of 1 MiB",
        ));
    }
    decode_body::<Request>(body)
}

fn ready(reply: Reply) -> Queued {
    Queued {
        pending: tokio::spawn(async move { (reply, Grant::default()) }),
        silent: false,
    }
}

impl Queued {
    /// For an `acks=0` produce: its answer, whatever it is, is dropped (logged and counted).
    fn silenced(self, broker: &Arc<Broker>) -> Queued {
        if !self.silent {
            return self;
        }
        let broker = broker.clone();
        let pending = self.pending;
        Queued {
            pending: tokio::spawn(async move {
                match pending.await {
                    Ok((reply, grant)) => (silence(&broker, true, reply), grant),
                    Err(e) => {
                        tracing::error!(cause = %e, "request handler panicked");
                        (Reply::None, Grant::default())
                    }
                }
            }),
            silent: true,
        }
    }
}

/// Whether a request gets no answer whatever happens: `Produce` with `acks=0`.
fn is_silent(request: &Request) -> bool {
    matches!(request, Request::Produce(p) if p.acks == Acks::None)
}

/// Starts handling one request. Produce requests are validated (and routed) and enqueue their
/// appends here, before the next request of the stream is read, so pipelined batches of one
/// partition keep their order.
async fn dispatch(
    broker: &Arc<Broker>,
    session: &Arc<Session>,
    state: &Arc<ConnectionState>,
    request: Request,
    raw: Bytes,
    grant: Grant,
    busy: Busy,
) -> Queued {
    let silent = is_silent(&request);
    let early = if *broker.shutdown.borrow() {
        Err(Reply::error(WireError::new(
            ErrorCode::ShuttingDown,
            "the broker is shutting down; retry shortly",
        )))
    } else if let Request::Hello(hello) = &request {
        Err(crate::router::hello(broker, session, hello))
    } else if session.version.get().is_none() {
        Err(Reply::error(WireError::new(
            ErrorCode::UnsupportedVersion,
            "the first request on a connection must be Hello (protocol version negotiation)",
        )))
    } else if let Request::Authenticate(step) = request {
        let reply = crate::auth::step(broker, session, step);
        if let Ok(sluice_proto::auth::AuthReply::Done { principal, .. }) = &reply {
            state.span.record("principal", principal.as_str());
        }
        if session.failures() >= crate::auth::MAX_AUTH_FAILURES {
            tracing::warn!("closing the connection after repeated authentication failures");
            let conn = state.connection.clone();
            tokio::spawn(async move {
                // After the answer has had a moment to leave.
                tokio::time::sleep(Duration::from_millis(100)).await;
                conn.close(
                    AUTH_CLOSE_CODE.into(),
                    b"too many failed authentication attempts",
                );
            });
        }
        Err(Reply::from(
            reply.map(sluice_proto::ResponseBody::Authenticated),
        ))
    } else {
        match crate::auth::current(broker, session) {
            Err(e) => Err(Reply::error(e)),
            Ok(identity) => {
                if let Request::WhoAmI = &request {
                    Err(Reply::ok(sluice_proto::ResponseBody::WhoAmI {
                        principal: identity.principal.clone(),
                        mechanism: identity.mechanism.to_owned(),
                    }))
                } else if let Err(refused) =
                    crate::authz::check(broker, &identity.principal, &request)
                {
                    Err(Reply::error(refused))
                } else {
                    Ok((identity.clone(), request))
                }
            }
        }
    };
    let (identity, request) = match early {
        Ok(go) => go,
        Err(reply) => {
            let reply = older_codes(reply, session.version.get().copied().unwrap_or(0));
            return Queued {
                pending: tokio::spawn(async move { (reply, grant) }),
                silent,
            }
            .silenced(broker);
        }
    };
    let principal = identity.principal.clone();
    let guard = crate::InFlight::new(broker);
    let kind = crate::metrics::RequestKind::of(&request);
    // Super-users (operators, the brokers themselves) are never throttled.
    let quota = if broker.config.super_users.contains(&principal) {
        None
    } else {
        broker
            .controller
            .read(|s| s.security().quota_for(&principal))
    };
    let produce_bytes = match &request {
        Request::Produce(_) => raw.len() as u64,
        _ => 0,
    };
    let started = Instant::now();
    let fut: BoxFuture<'static, Reply> = match request {
        Request::Produce(p) if p.partition == sluice_proto::ROUTE_BY_PARTITIONER => {
            let acks = p.acks;
            let b = broker.clone();
            let routed =
                on_heavy_threads(broker, state, move || crate::plugins::route(&b, &p, &raw))
                    .await
                    .and_then(|r| r);
            Box::pin(crate::plugins::produce_routed(broker.clone(), acks, routed))
        }
        Request::Produce(p) => {
            let validated = validate_batch(broker, state, &raw).await;
            crate::produce::produce(broker.clone(), p, raw, validated)
        }
        request if crate::auth::is_admin(&request) => {
            let caller = identity.clone();
            crate::router::blocking(broker.clone(), move |b| {
                crate::auth::admin(b, &caller, request)
            })
        }
        request => crate::router::handle(broker.clone(), request, raw, principal.clone()),
    };
    let (b, state) = (broker.clone(), state.clone());
    let version = session.version.get().copied().unwrap_or(0);
    // Inside the connection's and the stream's spans: their ids are this request's fields.
    let span = tracing::debug_span!("request", r#type = kind.name());
    Queued {
        pending: tokio::spawn(
            async move {
                let mut grant = grant;
                let mut reply = fut.await;
                drop(guard);
                let took = started.elapsed();
                kind.done(&reply, took);
                tracing::debug!(micros = took.as_micros() as u64, "request handled");
                crate::authz::filter(&b, &principal, &mut reply);
                let wait = quota.map_or(Duration::ZERO, |quota| {
                    charge_quota(&b, &principal, &quota, produce_bytes, &reply)
                });
                if !wait.is_zero() {
                    // The request is handled: its memory is not held while the answer waits
                    // (the answer's own bytes are accounted for below).
                    grant = Grant::default();
                }
                // The answer's bytes wait for the writer (and the client) under the same budgets
                // as requests; without room for them now, a retriable error goes instead.
                if let Reply::Frame(_, raw) = &reply
                    && !raw.is_empty()
                    && !grant.try_add(&b, &state, raw.len())
                {
                    tracing::debug!(len = raw.len(), "no memory free for an answer; refused");
                    reply = Reply::error(WireError::new(
                        ErrorCode::Timeout,
                        format!(
                            "the broker had no memory free for a {}-byte answer \
                         (request_memory_bytes); retry shortly",
                            raw.len()
                        ),
                    ));
                }
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                    reply = throttled(reply, wait, version);
                }
                drop(busy);
                (reply, grant)
            }
            .instrument(span),
        ),
        silent,
    }
    .silenced(broker)
}

/// Charges `principal`'s quota clocks with a handled request (its batch's bytes, the
/// answer's fetched bytes, one request); how long its answer is held back.
fn charge_quota(
    broker: &Broker,
    principal: &str,
    quota: &sluice_proto::auth::Quota,
    produce_bytes: u64,
    reply: &Reply,
) -> Duration {
    let fetch_bytes = match reply {
        Reply::Frame(Ok(sluice_proto::ResponseBody::Fetched(_)), raw)
        | Reply::Frame(Ok(sluice_proto::ResponseBody::FetchedTransformed(_)), raw) => {
            raw.len() as u64
        }
        _ => 0,
    };
    let usage = crate::quotas::Usage {
        produce_bytes,
        fetch_bytes,
    };
    let wait = broker.quota_clocks.charge(principal, quota, usage);
    if !wait.is_zero() {
        crate::metrics::throttled(wait);
    }
    wait
}

/// `NotAuthenticated` came with protocol v8: an older client cannot decode it, and is told
/// `NotAuthorized` with the same message.
fn older_codes(reply: Reply, version: u16) -> Reply {
    match reply {
        Reply::Frame(Err(mut e), raw) if version < 8 && e.code == ErrorCode::NotAuthenticated => {
            e.code = ErrorCode::NotAuthorized;
            Reply::Frame(Err(e), raw)
        }
        other => other,
    }
}

/// An answer held back for `wait`: a v8 client is told how long.
fn throttled(reply: Reply, wait: Duration, version: u16) -> Reply {
    match reply {
        Reply::Frame(Ok(body), raw) if version >= 8 => Reply::Frame(
            Ok(sluice_proto::ResponseBody::Throttled {
                throttle_ms: wait.as_millis().min(u128::from(u32::MAX)) as u32,
                body: Box::new(body),
            }),
            raw,
        ),
        other => other,
    }
}

/// An `acks=0` request never gets a frame back, whatever happened to it (the client pairs
/// answers with requests by order, and expects none for it): its error is logged and counted.
fn silence(broker: &Broker, silent: bool, reply: Reply) -> Reply {
    if !silent {
        return reply;
    }
    if let Reply::Frame(Err(e), _) = &reply {
        let refused = broker.limits.acks0_refused.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(cause = %e, refused_so_far = refused, "acks=0 produce refused; no answer is sent");
    }
    Reply::None
}

/// Batches at most this large and not compressed are validated on the network task: that costs
/// microseconds. Larger or compressed ones go to the validation threads.
const INLINE_VALIDATION_BYTES: usize = 64 * 1024;

/// Validates a produce request's batch (header, CRC, every record, decompressing within the
/// broker's batch limit). Heavy batches run on the bounded validation threads, one at a time
/// per connection.
async fn validate_batch(
    broker: &Broker,
    state: &ConnectionState,
    raw: &Bytes,
) -> Result<sluice_proto::batch::BatchHeader, WireError> {
    let limit = broker.config.max_batch_bytes as usize;
    let compressed = sluice_proto::batch::BatchHeader::parse(raw)
        .is_ok_and(|h| h.compression != sluice_proto::Compression::None);
    if raw.len() <= INLINE_VALIDATION_BYTES && !compressed {
        return crate::produce::validate_batch(raw, limit);
    }
    let raw = raw.clone();
    on_heavy_threads(broker, state, move || {
        crate::produce::validate_batch(&raw, limit)
    })
    .await
    .and_then(|r| r)
}

/// Runs CPU-heavy work (batch validation, decompression, a partitioner plugin) on the bounded
/// validation threads, one job at a time per connection.
async fn on_heavy_threads<T: Send + 'static>(
    broker: &Broker,
    state: &ConnectionState,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, WireError> {
    let _mine = state
        .validation
        .acquire()
        .await
        .expect("validation budget is never closed");
    let _thread = broker
        .limits
        .validation
        .acquire()
        .await
        .expect("validation threads are never closed");
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| WireError::new(ErrorCode::Internal, format!("request handling failed: {e}")))
}
