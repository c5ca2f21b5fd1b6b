//! The QUIC side: accepts connections and streams, reads request frames, writes responses in
//! request order.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use sluice_proto::frame::{decode_body, read_frame, write_frame};
use sluice_proto::{ErrorCode, ProtoError, Request, Response, WireError};
use tokio::sync::{OnceCell, mpsc};
use tracing::Instrument;

use crate::Broker;
use crate::handler::Reply;

/// How many requests of one stream may be in flight before the broker stops reading more.
const MAX_PIPELINED: usize = 128;

pub(crate) async fn accept_loop(broker: Arc<Broker>, endpoint: quinn::Endpoint) {
    let mut next_conn: u64 = 0;
    while let Some(incoming) = endpoint.accept().await {
        next_conn += 1;
        let span = tracing::info_span!("conn", id = next_conn, peer = %incoming.remote_address());
        let broker = broker.clone();
        tokio::spawn(
            async move {
                match incoming.await {
                    Ok(conn) => serve_connection(broker, conn).await,
                    Err(e) => tracing::debug!(cause = %e, "handshake failed"),
                }
            }
            .instrument(span),
        );
    }
}

/// What one connection has agreed: the protocol version, once `Hello` has been answered.
#[derive(Debug, Default)]
pub(crate) struct Session {
    pub(crate) version: OnceCell<u16>,
}

async fn serve_connection(broker: Arc<Broker>, conn: quinn::Connection) {
    tracing::debug!("connection open");
    let session = Arc::new(Session::default());
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let span = tracing::debug_span!("stream", id = %send.id());
                tokio::spawn(
                    serve_stream(broker.clone(), session.clone(), send, recv).instrument(span),
                );
            }
            Err(e) => {
                tracing::debug!(cause = %e, "connection closed");
                return;
            }
        }
    }
}

type Pending = tokio::task::JoinHandle<Reply>;

async fn serve_stream(
    broker: Arc<Broker>,
    session: Arc<Session>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let (tx, mut rx) = mpsc::channel::<Pending>(MAX_PIPELINED);
    let writer = tokio::spawn(async move {
        while let Some(pending) = rx.recv().await {
            let reply = match pending.await {
                Ok(reply) => reply,
                Err(e) => {
                    tracing::error!(cause = %e, "request handler panicked");
                    Reply::error(WireError::new(
                        ErrorCode::Internal,
                        "the broker failed while handling the request",
                    ))
                }
            };
            if let Reply::Frame(resp, raw) = reply
                && let Err(e) = write_frame(&mut send, &resp, &raw).await
            {
                tracing::debug!(cause = %e, "client went away before its response");
                return;
            }
        }
        let _ = send.finish();
    });

    let max = broker.config.max_frame_bytes;
    loop {
        let body = match read_frame(&mut recv, max).await {
            Ok(Some(body)) => body,
            Ok(None) => break,
            Err(ProtoError::FrameTooLarge { len, max }) => {
                // The body was not read, so the stream cannot be resynchronised: answer, then
                // stop reading it. Other streams and connections are unaffected.
                tracing::debug!(len, max, "oversized frame refused");
                let msg = format!(
                    "frame of {len} bytes exceeds the broker's maximum of {max} bytes; send smaller batches"
                );
                let _ = tx
                    .send(ready(Reply::error(WireError::new(
                        ErrorCode::FrameTooLarge,
                        msg,
                    ))))
                    .await;
                let _ = recv.stop(1u32.into());
                break;
            }
            Err(e) => {
                tracing::debug!(cause = %e, "stream ended mid-frame");
                break;
            }
        };
        let pending = match decode_body::<Request>(body) {
            Ok((request, raw)) => dispatch(&broker, &session, request, raw),
            Err(e) => {
                // The frame boundary is intact, so the stream stays usable.
                tracing::debug!(cause = %e, "undecodable request");
                ready(Reply::error(WireError::new(
                    ErrorCode::InvalidRequest,
                    format!("request could not be decoded: {e}"),
                )))
            }
        };
        if tx.send(pending).await.is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}

fn ready(reply: Reply) -> Pending {
    tokio::spawn(async move { reply })
}

/// Starts handling one request. Produce requests enqueue their append here, before the next
/// request of the stream is read, so pipelined batches of one partition keep their order.
fn dispatch(broker: &Arc<Broker>, session: &Arc<Session>, request: Request, raw: Bytes) -> Pending {
    if *broker.shutdown.borrow() {
        return ready(Reply::error(WireError::new(
            ErrorCode::ShuttingDown,
            "the broker is shutting down; retry shortly",
        )));
    }
    let guard = crate::InFlight::new(broker);
    if let Request::Hello(hello) = &request {
        return ready(crate::handler::hello(broker, session, hello));
    }
    if session.version.get().is_none() {
        return ready(Reply::error(WireError::new(
            ErrorCode::UnsupportedVersion,
            "the first request on a connection must be Hello (protocol version negotiation)",
        )));
    }
    let fut: BoxFuture<'static, Reply> = crate::handler::handle(broker.clone(), request, raw);
    tokio::spawn(async move {
        let reply = fut.await;
        drop(guard);
        reply
    })
}

impl Reply {
    pub(crate) fn error(e: WireError) -> Reply {
        let resp: Response = Err(e);
        Reply::Frame(resp, Bytes::new())
    }
}
