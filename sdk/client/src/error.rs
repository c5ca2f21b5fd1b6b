//! The one error type of the client SDK.

use std::time::Duration;

use sluice_proto::{ErrorCode, ProtoError, WireError};

/// Everything that can go wrong between an application and a Sluice broker.
///
/// [`ClientError::is_retriable`] separates errors a retry can cure (a leader moving, a connection
/// hiccup) from those it cannot (an unknown topic, a bad certificate). Errors the broker sent keep
/// their [`WireError`] — code and message — so a CLI can print exactly what the broker said.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The broker could not be reached: the name did not resolve, nothing answered on the
    /// address, or the QUIC handshake did not finish in time.
    /// The text names the address and the cause.
    #[error("{0} — is `sluice broker` running there, and is the address right?")]
    Connect(String),

    /// The TLS handshake failed: usually the broker's certificate is not signed by the CA the
    /// client trusts, or it does not name the host the client connected to.
    /// The text names the address and the cause.
    #[error(
        "{0} — pass the broker's CA with --tls-ca, and connect with a host name its certificate names"
    )]
    Tls(String),

    /// Authenticating with a password or token went wrong on this side: a bad user name, or
    /// a broker that could not prove it holds the credential (SCRAM's server signature).
    /// Refusals by the broker (a wrong password) are [`ClientError::Broker`] with
    /// `NotAuthenticated`.
    #[error("authentication failed: {0}")]
    Authentication(String),

    /// The broker answered the request with an error; code and message are the broker's.
    #[error("broker error {}: {}", code_name(.0.code), .0.message)]
    Broker(WireError),

    /// Bytes on the wire did not follow the protocol (a bad frame, a batch with a bad CRC).
    #[error("protocol error: {0}")]
    Protocol(ProtoError),

    /// The broker answered with a message of the wrong kind, or speaks no version this client
    /// does. Upgrading the older of the two usually cures it.
    #[error("unexpected response from broker: {0}")]
    UnexpectedResponse(String),

    /// The connection or stream to the broker broke while a request was outstanding, so its
    /// outcome is unknown. Retrying may duplicate a produced batch.
    #[error("connection to broker lost: {0} — the request's outcome is unknown")]
    ConnectionLost(String),

    /// No answer within the request timeout. The outcome is unknown.
    #[error(
        "request timed out: the broker is overloaded or unreachable — check it, or raise the request timeout"
    )]
    Timeout,

    /// A produced record was not acknowledged within the producer's `delivery_timeout`,
    /// retries included. `last_error` is why the last attempt failed.
    #[error(
        "record not delivered within {elapsed:?} ({attempts} attempts); last error: {last_error} — check the broker, or raise delivery_timeout"
    )]
    DeliveryTimeout {
        elapsed: Duration,
        attempts: u32,
        last_error: String,
    },

    /// The producer's background task is gone (the runtime shut down) or the client was closed.
    #[error("the client is closed")]
    Closed,

    /// A configuration value or argument is unusable; the message says which and why.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    /// The topic has no such partition.
    #[error(
        "topic {topic:?} has no partition {partition}: it has {partitions} (0..{partitions}) — pick one of those, or add partitions with `sluice topics add-partitions`"
    )]
    UnknownPartition {
        topic: String,
        partition: u32,
        partitions: u32,
    },

    /// The consumer's position is outside the partition's log and its reset policy is
    /// [`OffsetReset::Error`](crate::OffsetReset::Error).
    #[error(
        "offset out of range for {topic}/{partition}: the earliest available offset is {earliest} — seek to it, or use a reset policy of earliest or latest"
    )]
    OffsetOutOfRange {
        topic: String,
        partition: u32,
        earliest: u64,
    },

    /// The consumer has no position for the partition, and its reset policy is
    /// [`OffsetReset::Error`](crate::OffsetReset::Error).
    #[error("no position for {topic}/{partition} and the reset policy is `error` — seek first")]
    NoPosition { topic: String, partition: u32 },

    /// The consumer was asked about a partition it was not assigned.
    #[error("{topic}/{partition} is not assigned to this consumer — assign it first")]
    NotAssigned { topic: String, partition: u32 },

    /// A single record is larger than one request may carry.
    #[error(
        "record of about {size} bytes exceeds the largest request of {max} bytes the broker accepts — split it or store it elsewhere"
    )]
    RecordTooLarge { size: usize, max: usize },

    /// A request (a plugin component, a batch) is larger than the broker accepts in one frame
    /// (its `max_frame_bytes`, learnt at Hello). Nothing was sent.
    #[error(
        "request of {size} bytes exceeds the largest request of {max} bytes the broker accepts (its max_frame_bytes); nothing was sent"
    )]
    RequestTooLarge { size: usize, max: usize },
}

fn code_name(code: ErrorCode) -> String {
    format!("{code:?}")
}

impl ClientError {
    /// Whether sending the same request again may succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Broker(e) => e.code.is_retriable(),
            ClientError::Connect(_) | ClientError::ConnectionLost(_) | ClientError::Timeout => true,
            ClientError::Tls(_)
            | ClientError::Authentication(_)
            | ClientError::Protocol(_)
            | ClientError::UnexpectedResponse(_)
            | ClientError::DeliveryTimeout { .. }
            | ClientError::Closed
            | ClientError::InvalidConfig(_)
            | ClientError::UnknownPartition { .. }
            | ClientError::OffsetOutOfRange { .. }
            | ClientError::NoPosition { .. }
            | ClientError::NotAssigned { .. }
            | ClientError::RecordTooLarge { .. }
            | ClientError::RequestTooLarge { .. } => false,
        }
    }

    /// The broker's error code, when the broker sent one.
    pub fn wire_code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Broker(e) => Some(e.code),
            _ => None,
        }
    }

    /// Frame and stream errors: a broken stream (I/O, truncation) means the connection went
    /// away mid-request, which a retry may cure; anything else is a real protocol violation.
    pub(crate) fn from_proto(e: ProtoError) -> ClientError {
        match e {
            ProtoError::Io(io) => ClientError::ConnectionLost(io.to_string()),
            ProtoError::Truncated => {
                ClientError::ConnectionLost("stream ended in the middle of a frame".into())
            }
            other => ClientError::Protocol(other),
        }
    }
}

/// A failed batch fails each of its records with the same error, so the error must be copied.
/// `ProtoError` holds an `io::Error`, which is not `Clone`; its copy keeps kind and message.
impl Clone for ClientError {
    fn clone(&self) -> Self {
        match self {
            ClientError::Connect(s) => ClientError::Connect(s.clone()),
            ClientError::Tls(s) => ClientError::Tls(s.clone()),
            ClientError::Authentication(s) => ClientError::Authentication(s.clone()),
            ClientError::Broker(e) => ClientError::Broker(e.clone()),
            ClientError::Protocol(e) => ClientError::Protocol(clone_proto(e)),
            ClientError::UnexpectedResponse(s) => ClientError::UnexpectedResponse(s.clone()),
            ClientError::ConnectionLost(s) => ClientError::ConnectionLost(s.clone()),
            ClientError::Timeout => ClientError::Timeout,
            ClientError::DeliveryTimeout {
                elapsed,
                attempts,
                last_error,
            } => ClientError::DeliveryTimeout {
                elapsed: *elapsed,
                attempts: *attempts,
                last_error: last_error.clone(),
            },
            ClientError::Closed => ClientError::Closed,
            ClientError::InvalidConfig(s) => ClientError::InvalidConfig(s.clone()),
            ClientError::UnknownPartition {
                topic,
                partition,
                partitions,
            } => ClientError::UnknownPartition {
                topic: topic.clone(),
                partition: *partition,
                partitions: *partitions,
            },
            ClientError::OffsetOutOfRange {
                topic,
                partition,
                earliest,
            } => ClientError::OffsetOutOfRange {
                topic: topic.clone(),
                partition: *partition,
                earliest: *earliest,
            },
            ClientError::NoPosition { topic, partition } => ClientError::NoPosition {
                topic: topic.clone(),
                partition: *partition,
            },
            ClientError::NotAssigned { topic, partition } => ClientError::NotAssigned {
                topic: topic.clone(),
                partition: *partition,
            },
            ClientError::RecordTooLarge { size, max } => ClientError::RecordTooLarge {
                size: *size,
                max: *max,
            },
            ClientError::RequestTooLarge { size, max } => ClientError::RequestTooLarge {
                size: *size,
                max: *max,
            },
        }
    }
}

fn clone_proto(e: &ProtoError) -> ProtoError {
    match e {
        ProtoError::Malformed(s) => ProtoError::Malformed(s),
        ProtoError::CrcMismatch { expected, actual } => ProtoError::CrcMismatch {
            expected: *expected,
            actual: *actual,
        },
        ProtoError::FrameTooLarge { len, max } => ProtoError::FrameTooLarge {
            len: *len,
            max: *max,
        },
        ProtoError::Truncated => ProtoError::Truncated,
        ProtoError::Codec(c) => ProtoError::Codec(c.clone()),
        ProtoError::Compression(s) => ProtoError::Compression(s.clone()),
        ProtoError::Io(io) => ProtoError::Io(std::io::Error::new(io.kind(), io.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retriable_follows_wire_code() {
        assert!(ClientError::Broker(WireError::new(ErrorCode::NotLeader, "x")).is_retriable());
        assert!(!ClientError::Broker(WireError::new(ErrorCode::UnknownTopic, "x")).is_retriable());
        assert!(ClientError::ConnectionLost("x".into()).is_retriable());
        assert!(!ClientError::Tls("x".into()).is_retriable());
    }

    #[test]
    fn messages_say_what_to_do() {
        let e = ClientError::Broker(WireError::new(
            ErrorCode::UnknownTopic,
            "topic \"x\" does not exist",
        ));
        assert_eq!(
            e.to_string(),
            "broker error UnknownTopic: topic \"x\" does not exist"
        );
        let e = ClientError::Connect("could not reach broker at localhost:1: timed out".into());
        assert!(e.to_string().contains("is `sluice broker` running"));
        let e = ClientError::Protocol(ProtoError::Io(std::io::Error::other("boom")));
        assert_eq!(e.clone().to_string(), e.to_string());
    }
}
