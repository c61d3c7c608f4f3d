//! Raft replication (openraft 0.9.25 with `storage-v2`).
//!
//! Every shard replica is one Raft group and the cluster metadata another;
//! all groups on a node share the node's RocksDB (see [`log_store`]).
//! - [`log_store`]: the durable log of every group, in RocksDB.
//! - [`state_machine`]: a shard driven by committed entries, with
//!   snapshots.
//! - [`meta`]: the cluster map driven by the metadata group.
//! - [`network`]: Raft RPCs over gRPC, the group registry.
//! - [`snapshot`]: snapshot data (memory or file) and the shard snapshot
//!   file format.
//! - [`batch`]: group commit of concurrent writes to one shard.
//! - [`election`]: the election timer and pre-vote (openraft's own timer
//!   is off).
//! - [`rejoin`]: replicas of a node that lost its data vote again only
//!   once they hold every committed entry.
//!
//! The gRPC network, write batching and the group registry build on these
//! (docs/raft.md tracks what exists).
use serde::{Deserialize, Serialize};

pub mod aliases;
pub mod batch;
pub mod election;
pub mod log_store;
pub mod meta;
pub mod network;
pub mod rejoin;
pub mod snapshot;
pub mod state_machine;

pub type NodeId = u64;

/// A replicated command. In shard groups: one `ShardWriteRequest`,
/// protobuf-encoded (the wire contract stays the single definition of a
/// write). In the metadata group: a postcard-encoded
/// [`meta::MetaCommand`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub write: Vec<u8>,
}

/// What applying a [`Command`] returns to the writer: the points affected,
/// or why every replica rejected the write (deterministic validation).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub affected: u64,
    pub error: Option<String>,
    /// For a grouped entry (`ShardWriteRequest.batch`): one (affected,
    /// rejection) per write, in order.
    pub parts: Vec<(u64, Option<String>)>,
}

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Command,
        R = Reply,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        SnapshotData = snapshot::SnapshotData,
);

pub type Entry = openraft::Entry<TypeConfig>;

/// Default log entries between snapshots (`--snapshot-every`).
pub const SNAPSHOT_EVERY: u64 = 10_000;
/// Default log entries kept behind a snapshot (`--snapshot-keep`).
pub const SNAPSHOT_KEEP: u64 = 1_000;

/// Timing of every group: heartbeats every 100 ms, a leader lease of
/// 400 ms (openraft's `election_timeout_max`), a pre-vote after 600 to
/// 800 ms without a leader ([`election::Timing`]; openraft's own election
/// timer is off), a snapshot every 10,000 entries, 1,000 entries kept
/// behind it.
pub fn default_config() -> openraft::Config {
    config_with(SNAPSHOT_EVERY, SNAPSHOT_KEEP)
}

/// [`default_config`] with another snapshot policy: a snapshot after
/// `every` entries (0: never), `keep` entries kept behind it.
pub fn config_with(every: u64, keep: u64) -> openraft::Config {
    openraft::Config {
        cluster_name: "shoal".into(),
        heartbeat_interval: 100,
        // openraft's timer is off (`enable_elect`); `election_timeout_max`
        // is its leader lease, during which it refuses votes.
        election_timeout_min: 250,
        election_timeout_max: 400,
        enable_elect: false,
        install_snapshot_timeout: 2_000,
        snapshot_policy: if every == 0 { openraft::SnapshotPolicy::Never } else { openraft::SnapshotPolicy::LogsSinceLast(every) },
        max_in_snapshot_log_to_keep: keep,
        purge_batch_size: 256,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
