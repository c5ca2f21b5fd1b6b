//! The Sluice wire protocol, shared by the broker (`host/`) and the client SDK (`sdk/`).
//!
//! Data enters as bytes read from a QUIC stream (or from disk, for record batches) and leaves as
//! typed values; the reverse direction encodes. Nothing here does I/O except the small async
//! frame reader/writer in [`frame`], which is generic over tokio's `AsyncRead`/`AsyncWrite`.
//!
//! - [`batch`]: the record batch format — the unit that is produced, stored and fetched.
//! - [`frame`]: length-prefixed frames carrying a serde-encoded control message plus raw bytes.
//! - [`messages`]: every request and response.
//! - [`error`]: error codes that tell a client whether retrying can help.
//! - [`partitioner`]: the documented key-hash function producers use to pick partitions.
//!
//! The format is documented in `docs/protocol.md`.

pub mod acl;
pub mod auth;
pub mod batch;
pub mod error;
pub mod frame;
pub mod messages;
pub mod partitioner;
mod varint;

pub use batch::{BatchBuilder, BatchHeader, Compression, Header, Record, StoredRecord};
pub use error::{ErrorCode, ProtoError, WireError};
pub use messages::*;

/// ALPN protocol id negotiated by TLS on every Sluice QUIC connection.
pub const ALPN: &[u8] = b"sluice/1";

/// Newest protocol version this build speaks. Version 2 added the leader epoch to produce and
/// fetch requests; version 3 added `FindCoordinator`, `ClusterStatus`, `AddNode`, `RemoveNode`
/// and the `CoordinatorLoadInProgress` error; version 4 `CreateTopicReplicated`; version 5
/// `ElectLeaders`, `AlterTopicReplication` and `DescribeTopicReplication`; version 6 the
/// connector requests and the `UnknownConnector` and `ConnectorExists` errors; version 7
/// `WhoAmI`; version 8 `Authenticate`, the user, token and quota requests, the `Throttled`
/// answer and the `NotAuthenticated` error — all appended, so older messages decode unchanged.
pub const PROTOCOL_VERSION: u16 = 8;
/// Oldest protocol version this build still speaks. Version 1 clients are told at `Hello` to
/// upgrade: their produce and fetch requests would not decode.
pub const MIN_PROTOCOL_VERSION: u16 = 2;

/// Topic names: 1–249 characters of `[A-Za-z0-9._-]`, not `.` or `..`; names starting with
/// `__` are reserved for internal topics. Same rule as Kafka, so names carry over.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("topic name is empty".into());
    }
    if name.len() > 249 {
        return Err(format!(
            "topic name is {} characters long; the limit is 249",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("topic name {name:?} is not allowed"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '.' || *c == '_' || *c == '-'))
    {
        return Err(format!(
            "topic name {name:?} contains {c:?}; use only letters, digits, '.', '_' and '-'"
        ));
    }
    if name.starts_with("__") {
        return Err(format!(
            "topic name {name:?} starts with '__', which is reserved for internal topics"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        assert!(validate_topic_name("orders.v1-eu_west").is_ok());
        assert!(validate_topic_name("").is_err());
        assert!(validate_topic_name("..").is_err());
        assert!(validate_topic_name("has space").is_err());
        assert!(validate_topic_name("a/b").is_err());
        assert!(validate_topic_name("__internal").is_err());
        assert!(validate_topic_name(&"x".repeat(250)).is_err());
        assert!(validate_topic_name(&"x".repeat(249)).is_ok());
    }
}
