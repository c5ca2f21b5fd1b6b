//! A lane: one long-lived bidirectional stream carrying pipelined requests.
//!
//! The broker answers the requests of a stream in order, so the lane matches answers to callers
//! with a FIFO queue instead of ids. Two tasks drive it: a writer that owns the send half and a
//! reader that owns the receive half. The writer queues the caller's reply slot *before* it
//! writes the frame, so the reader always finds the slot for the answer it reads. Requests that
//! get no answer (`Produce` with `Acks::None`) queue no slot; their caller learns only that the
//! frame was written.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use sluice_proto::frame;
use sluice_proto::{Request, ResponseBody};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::ClientError;
use crate::conn::{Conn, connection_error, decode_response};

type Answer = Result<(ResponseBody, Bytes), ClientError>;

enum Reply {
    /// Wait for the broker's answer.
    Answer(oneshot::Sender<Answer>),
    /// The broker sends no answer: report once the frame is written.
    Written(oneshot::Sender<Result<(), ClientError>>),
}

struct Command {
    request: Request,
    raw: Bytes,
    reply: Reply,
}

/// Handle to a lane. Dropping it finishes the stream once queued requests are written; answers
/// still arrive to their callers.
#[derive(Debug)]
pub(crate) struct Lane {
    commands: mpsc::UnboundedSender<Command>,
    dead: Arc<AtomicBool>,
}

impl Lane {
    /// Starts the lane's tasks. The stream is opened by the writer task, so this does not wait:
    /// requests queued meanwhile go out once it is open, or fail if it cannot be opened.
    pub(crate) fn spawn(conn: Arc<Conn>, max_frame: usize) -> Lane {
        let (commands, rx) = mpsc::unbounded_channel();
        let dead = Arc::new(AtomicBool::new(false));
        tokio::spawn(run_writer(conn, max_frame, rx, dead.clone()));
        Lane { commands, dead }
    }

    /// Whether the stream has failed; a failed lane answers every request with an error, so
    /// its owner should replace it.
    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Relaxed) || self.commands.is_closed()
    }

    /// Queues a request; the receiver yields the broker's answer.
    pub(crate) fn call(&self, request: Request, raw: Bytes) -> oneshot::Receiver<Answer> {
        let (tx, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError(cmd)) = self.commands.send(Command {
            request,
            raw,
            reply: Reply::Answer(tx),
        }) {
            fail(cmd.reply, lane_closed());
        }
        rx
    }

    /// Queues a request the broker will not answer; the receiver yields once it is written.
    pub(crate) fn send_only(
        &self,
        request: Request,
        raw: Bytes,
    ) -> oneshot::Receiver<Result<(), ClientError>> {
        let (tx, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError(cmd)) = self.commands.send(Command {
            request,
            raw,
            reply: Reply::Written(tx),
        }) {
            fail(cmd.reply, lane_closed());
        }
        rx
    }
}

fn lane_closed() -> ClientError {
    ClientError::ConnectionLost("the request stream to the broker has failed".into())
}

fn fail(reply: Reply, e: ClientError) {
    match reply {
        Reply::Answer(tx) => {
            let _ = tx.send(Err(e));
        }
        Reply::Written(tx) => {
            let _ = tx.send(Err(e));
        }
    }
}

async fn run_writer(
    conn: Arc<Conn>,
    max_frame: usize,
    mut commands: mpsc::UnboundedReceiver<Command>,
    dead: Arc<AtomicBool>,
) {
    let opened = match conn.connection().await {
        Ok(c) => c.open_bi().await.map_err(connection_error),
        Err(e) => Err(e),
    };
    let (mut send, recv) = match opened {
        Ok(pair) => pair,
        Err(e) => {
            dead.store(true, Ordering::Relaxed);
            debug!(cause = %e, "could not open a request stream");
            while let Some(cmd) = commands.recv().await {
                fail(cmd.reply, e.clone());
            }
            return;
        }
    };
    let (slots, slots_rx) = mpsc::unbounded_channel();
    tokio::spawn(run_reader(
        recv,
        max_frame,
        conn.shared.clone(),
        slots_rx,
        dead.clone(),
    ));
    while let Some(cmd) = commands.recv().await {
        if dead.load(Ordering::Relaxed) {
            fail(cmd.reply, lane_closed());
            continue;
        }
        let written = match cmd.reply {
            Reply::Answer(tx) => {
                if let Err(mpsc::error::SendError(tx)) = slots.send(tx) {
                    // The reader has stopped: the stream is broken.
                    let _ = tx.send(Err(lane_closed()));
                    dead.store(true, Ordering::Relaxed);
                    continue;
                }
                None
            }
            Reply::Written(tx) => Some(tx),
        };
        let result = crate::conn::send_frame(&mut send, &cmd.request, cmd.raw)
            .await
            .map_err(ClientError::from_proto);
        if let Err(e) = &result {
            debug!(cause = %e, "request stream failed while writing");
            dead.store(true, Ordering::Relaxed);
            // Answers cannot come for a half-written frame; the reader fails the waiting
            // callers when the broker resets or closes the stream.
            let _ = send.reset(0u32.into());
        }
        if let Some(tx) = written {
            let _ = tx.send(result);
        }
    }
    let _ = send.finish();
}

async fn run_reader(
    mut recv: quinn::RecvStream,
    max_frame: usize,
    shared: Arc<crate::client::Shared>,
    mut slots: mpsc::UnboundedReceiver<oneshot::Sender<Answer>>,
    dead: Arc<AtomicBool>,
) {
    let failure = loop {
        // Wait for a caller before reading, so a stream the broker ends cleanly while nobody
        // waits is not taken for a failure.
        let Some(slot) = slots.recv().await else {
            return;
        };
        match frame::read_frame(&mut recv, max_frame).await {
            Ok(Some(body)) => {
                let _ = slot.send(decode_response(body, &shared.throttle));
            }
            Ok(None) => {
                let e = ClientError::ConnectionLost(
                    "the broker closed the request stream without answering".into(),
                );
                let _ = slot.send(Err(e.clone()));
                break e;
            }
            Err(e) => {
                let e = ClientError::from_proto(e);
                let _ = slot.send(Err(e.clone()));
                break e;
            }
        }
    };
    debug!(cause = %failure, "request stream failed");
    dead.store(true, Ordering::Relaxed);
    slots.close();
    while let Some(slot) = slots.recv().await {
        let _ = slot.send(Err(failure.clone()));
    }
}
