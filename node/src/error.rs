//! The node's error enum. `status.rs` is the one place that turns it into a
//! gRPC status.
use shoal_proto::validate::ValidationError;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("collection {0:?} not found")]
    CollectionNotFound(String),
    #[error("collection {0:?} already exists")]
    CollectionExists(String),
    /// An alias update names an alias or collection that does not exist.
    #[error("{0}")]
    AliasNotFound(String),
    /// An alias update would give an alias a collection's name.
    #[error("{0}")]
    AliasConflict(String),
    #[error("shard {collection}/{shard} is not hosted on this node")]
    ShardNotFound { collection: String, shard: u32 },
    #[error("stale cluster map: request routed with epoch {got}, node has {have}")]
    StaleEpoch { got: u64, have: u64 },
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("index: {0}")]
    Index(#[from] IndexError),
    #[error("node is shutting down")]
    ShuttingDown,
    #[error("raft group {0:?} is not hosted on this node")]
    RaftGroupNotFound(String),
    /// A response would be too large to send.
    #[error("{0}")]
    TooLarge(String),
    #[error("raft message could not be decoded: {0}")]
    RaftCodec(String),
    #[error("raft: {0}")]
    Raft(String),
    #[error("{}", not_leader_message(group, leader))]
    NotLeader { group: String, leader: Option<(u64, String)> },
    #[error("group {group} has no quorum: {detail}")]
    NoQuorum { group: String, detail: String },
    #[error("this node's cluster map (epoch {have}) is behind the request's (epoch {want}); it is catching up, retry")]
    MapBehind { want: u64, have: u64 },
    #[error("shard {collection}/{shard} is being opened on this node; retry")]
    ShardOpening { collection: String, shard: u32 },
    #[error("this node's replica of shard {collection}/{shard} is quarantined (it could not be opened: {reason}); the other replicas serve it, and moving the replica off this node and back repairs it")]
    Quarantined { collection: String, shard: u32, reason: String },
    /// The data volume is below the free-space watermark (`crate::disk`).
    #[error("this node's data volume has {free} bytes free, below its watermark of {min_free} (--min-free-disk-mb): upserts are refused until space is freed (deletes still work)")]
    DiskFull { free: u64, min_free: u64 },
    /// A replica catching up after its node lost its data refuses votes
    /// (see `raft::rejoin`).
    #[error("this node's replica of {0} lost its data and is catching up; it does not vote until it holds every committed entry")]
    CatchingUp(String),
    #[error("this node already belongs to a cluster (metadata group initialised)")]
    AlreadyInitialized,
    #[error("this node has not joined a cluster yet: start one with `shoalctl cluster init` (or `shoal node --bootstrap`) or join it with `--join SEED`")]
    NoCluster,
    #[error("{0}")]
    Rejected(String),
    /// The write or read belongs to a hash range this shard no longer
    /// serves (a split moved it): the sender reloads the map and re-routes.
    #[error("{0}")]
    RangeMoved(String),
    /// An operation that the cluster's state does not allow now.
    #[error("{0}")]
    Precondition(String),
    /// The caller's certificate does not allow this (TLS on).
    #[error("{0}")]
    Forbidden(String),
    #[error("backup: {0}")]
    Backup(String),
    #[error("backup {0:?} already exists")]
    BackupExists(String),
    #[error("backup {0:?} not found (no manifest.json under the backup root)")]
    BackupNotFound(String),
    #[error("backup is damaged: {0}")]
    BackupCorrupt(String),
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("corrupt record {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("usearch: {0}")]
    Usearch(String),
    #[error("index file {path}: {detail}")]
    File { path: String, detail: String },
    #[error("vector has {got} dimensions, index has {want}")]
    Dimension { got: usize, want: usize },
}

impl From<crate::scan::ScanError> for IndexError {
    fn from(e: crate::scan::ScanError) -> Self {
        match e {
            crate::scan::ScanError::Dimension { got, want } => IndexError::Dimension { got, want },
        }
    }
}

impl From<cxx::Exception> for IndexError {
    fn from(e: cxx::Exception) -> Self {
        IndexError::Usearch(e.what().to_string())
    }
}

fn not_leader_message(group: &str, leader: &Option<(u64, String)>) -> String {
    match leader {
        Some((id, addr)) => {
            format!("this node is not the leader of {group}; the leader is node {id} at {addr}")
        }
        None => {
            format!("group {group} has no leader at the moment (election in progress or no quorum)")
        }
    }
}

pub type Result<T, E = NodeError> = std::result::Result<T, E>;
