//! The replication messages that travel between brokers (inside the peer connections'
//! replication frames, mutual TLS): a follower's fetch and the leader's answer, in postcard.
//! Decoding is for hostile bytes too: a peer could be compromised or buggy. Postcard checks
//! every length against the bytes present before it copies, and the frame carrying a message is
//! bounded by the peer transport's limit, so no count or length from the bytes sizes an
//! allocation beyond them (`tests/alloc_capped.rs`).

use serde::{Deserialize, Serialize};

/// A follower's fetch: it holds everything below `fetch_offset`, and its last batch has
/// `last_fetched_epoch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaFetch {
    pub topic_id: u64,
    pub partition: u32,
    pub follower: u32,
    pub leader_epoch: u32,
    pub fetch_offset: u64,
    pub last_fetched_epoch: Option<u32>,
    pub max_bytes: u32,
}

/// `ReplicaFetch::follower` of a reader that is not a replica — a sink connector's task on
/// another broker: it is answered with committed batches only (below the high watermark) and
/// leaves no trace in the leader's bookkeeping of its followers.
pub const READER: u32 = u32::MAX;

/// The leader's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaAnswer {
    /// Whole batches from the fetch offset (none when nothing new came within the long poll).
    /// The batches are not in the message: they follow it as the peer frame's raw part, as read
    /// from the store, so the leader neither encodes nor copies them.
    Batches { high_watermark: u64 },
    /// The follower's log diverges: `epoch` ends at `end_offset` here.
    Diverging { epoch: u32, end_offset: u64 },
    /// The fetch offset is outside this log.
    OutOfRange { log_start: u64, log_end: u64 },
    /// Not the leader of that partition in that epoch, or another reason not to serve.
    Refused(String),
}

/// Encodes a message.
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, String> {
    postcard::to_allocvec(message).map_err(|e| format!("encoding a replication message: {e}"))
}

/// Decodes a message; bytes left over after it are refused too.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, String> {
    match postcard::take_from_bytes(bytes) {
        Ok((message, [])) => Ok(message),
        Ok((_, rest)) => Err(format!(
            "undecodable replication message: {} byte(s) after its end",
            rest.len()
        )),
        Err(e) => Err(format!("undecodable replication message: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_trailing_bytes_are_refused() {
        let fetch = ReplicaFetch {
            topic_id: 7,
            partition: 2,
            follower: 3,
            leader_epoch: 9,
            fetch_offset: 1 << 40,
            last_fetched_epoch: Some(8),
            max_bytes: 1 << 20,
        };
        let bytes = encode(&fetch).unwrap();
        assert_eq!(decode::<ReplicaFetch>(&bytes).unwrap(), fetch);
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(
            decode::<ReplicaFetch>(&longer)
                .unwrap_err()
                .contains("after its end")
        );
        for answer in [
            ReplicaAnswer::Batches { high_watermark: 5 },
            ReplicaAnswer::Diverging {
                epoch: 4,
                end_offset: 10,
            },
            ReplicaAnswer::OutOfRange {
                log_start: 3,
                log_end: 9,
            },
            ReplicaAnswer::Refused("no".into()),
        ] {
            let bytes = encode(&answer).unwrap();
            assert_eq!(decode::<ReplicaAnswer>(&bytes).unwrap(), answer);
            assert!(decode::<ReplicaAnswer>(&bytes[..bytes.len() - 1]).is_err());
        }
    }
}
