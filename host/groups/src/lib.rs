//! Consumer groups as a plain state machine: membership, target assignment, incremental
//! reconciliation and committed offsets — no tokio, no storage, no clock (callers pass `now`).
//!
//! Requests enter through [`Groups`] (heartbeat, commit, fetch offsets, describe, reset,
//! delete, expire). Every change that must survive a restart leaves as a list of
//! [`Change`]s — key/value records the broker appends to the internal `__consumer_offsets`
//! topic — and [`Groups::apply_record`] rebuilds the state from those records at start-up.
//!
//! Reconciliation follows Kafka's KIP-848: the coordinator computes a target assignment; a
//! member is given a partition only once no other member holds it — neither has it assigned nor
//! still reports owning it — so a partition is revoked from its old owner (who commits and
//! stops) before it reaches the new one, and members whose partitions did not move keep
//! consuming throughout.

pub mod assignor;
mod group;
pub mod records;

pub use assignor::{Assignment, Assignor, TopicPartition};
pub use group::{
    Change, GroupError, GroupSummary, Groups, HeartbeatReply, HeartbeatRequest, LEAVE_EPOCH,
    MemberSummary, STATIC_LEAVE_EPOCH,
};
