//! Partition replication as pure state machines: no tokio, no network, no disk, no clock.
//! Time is passed in (milliseconds on any monotonic scale), inputs are events, outputs are
//! decisions. The broker moves events in and carries decisions out; `docs/replication.md`
//! states the protocol and the invariants these types keep.
//!
//! - [`EpochCache`]: a replica's leader epochs and where each starts in its log; answers "where
//!   does epoch e end" for divergence checks.
//! - [`PartitionLeader`]: a leader's view of its followers: their log ends and last caught-up
//!   times, the high watermark, in-sync set proposals, `min.insync.replicas`.
//! - [`PartitionFollower`]: what a follower asks for and what it does with the answer (append,
//!   or truncate a diverging suffix).
//! - [`AckWaiters`]: `acks=all` producers waiting for the high watermark to pass their batch.
//! - [`wire`]: the replica fetch and the leader's answer, as they travel between brokers.

mod epochs;
mod follower;
mod leader;
mod waiters;
pub mod wire;

pub use epochs::EpochCache;
pub use follower::{FetchPosition, FollowerAction, PartitionFollower};
pub use leader::{
    FetchOutcome, IsrProposal, LeaderConfig, NotEnoughReplicas, PartitionLeader,
    check_fetch_position,
};
pub use waiters::AckWaiters;

/// A broker's node id.
pub type NodeId = u32;
/// A record offset in a partition.
pub type Offset = u64;
/// A leader epoch.
pub type Epoch = u32;
/// Milliseconds on a monotonic clock of the caller's choice.
pub type Millis = u64;
