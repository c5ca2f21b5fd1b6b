//! The records of the internal `__consumer_offsets` topic: the durable form of group state.
//!
//! Keys and values are postcard-encoded. The latest value of a key wins; a record without a
//! value (a tombstone) deletes the key. Which partition of the topic holds a group is
//! [`partition_for_group`].

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::assignor::{Assignment, Assignor};

/// Name of the internal topic holding group state.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RecordKey {
    Offset {
        group: String,
        topic: String,
        partition: u32,
    },
    Member {
        group: String,
        member_id: String,
    },
    Group {
        group: String,
    },
}

impl RecordKey {
    pub fn group(&self) -> &str {
        match self {
            RecordKey::Offset { group, .. }
            | RecordKey::Member { group, .. }
            | RecordKey::Group { group } => group,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordValue {
    Offset { offset: u64, commit_time_ms: i64 },
    Member(MemberRecord),
    Group(GroupRecord),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub instance_id: Option<String>,
    pub client_id: String,
    pub subscribed: BTreeSet<String>,
    pub assigned: Assignment,
    pub member_epoch: u32,
    pub session_timeout_ms: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub epoch: u32,
    pub assignor: Assignor,
    pub next_member: u64,
}

pub fn encode_key(key: &RecordKey) -> Vec<u8> {
    postcard::to_allocvec(key).expect("group keys always encode")
}

pub fn encode_value(value: &RecordValue) -> Vec<u8> {
    postcard::to_allocvec(value).expect("group values always encode")
}

pub fn decode_key(bytes: &[u8]) -> Result<RecordKey, postcard::Error> {
    postcard::from_bytes(bytes)
}

pub fn decode_value(bytes: &[u8]) -> Result<RecordValue, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// The partition of the offsets topic that holds `group`: FNV-1a of the name, modulo the
/// partition count. Stable: changing it would orphan every group's state.
pub fn partition_for_group(group: &str, partitions: u32) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in group.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % partitions.max(1)
}
