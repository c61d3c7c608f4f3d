//! Storage: an ordered key-value engine behind [`KvEngine`], and the
//! shard-level record layout on top of it ([`ShardStore`]).
//!
//! Two engines implement [`KvEngine`]: [`rocks::RocksEngine`] (production:
//! one RocksDB per node, column families `points`, `payload_index`, `meta`)
//! and [`memory::MemoryEngine`] (tests and ephemeral nodes). Both must pass
//! [`conformance`], which exercises the engine directly and through
//! [`ShardStore`].
//!
//! Key layout (all column families): `shard prefix ++ record key`, where the
//! shard prefix is `u16 BE length ++ collection name ++ u32 BE shard id`, so
//! one shard's records are contiguous and a shard is dropped with one range
//! delete.
//! - `points`: `prefix ++ PointKey::to_bytes()` -> [`StoredPoint`] (protobuf).
//! - `payload_index`: `prefix ++ field ++ 0x00 ++ tag ++ value ++ offset u32 BE`
//!   -> empty; see [`IndexEntry`].
//! - `raft_log`: `group prefix ++ index u64 BE` -> log entry (see
//!   [`crate::raft::log_store`]).
//! - `meta`: `prefix ++ name` -> bytes (shard metadata such as the applied
//!   sequence number and offset counter), and node-level keys under the
//!   empty prefix (the cluster map).
pub mod conformance;
pub mod memory;
pub mod rocks;
pub mod shard_store;

pub use shard_store::{IndexEntry, IndexValue, ShardStore, StoreBatch, StoredPoint};

/// Renames `from` to `to` and fsyncs the directory holding `to`, so the
/// rename itself survives a power loss (a rename is durable only once its
/// directory entry is). Every file the node replaces atomically goes
/// through here: HNSW graphs and sidecars, snapshots, backups.
pub fn rename_durable(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::rename(from, to)?;
    let dir = match to.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` atomically and durably: a sibling temporary
/// file, fsynced, then [`rename_durable`]. Sidecars and key checkpoints go
/// through here (backups have their own, which also refuses symlinks).
pub fn write_durable(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, bytes)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    rename_durable(&tmp, path)
}

use crate::error::StorageError;

/// Column families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cf {
    Points,
    PayloadIndex,
    Meta,
    /// Raft log entries of every group on the node.
    RaftLog,
}

impl Cf {
    pub const ALL: [Cf; 4] = [Cf::Points, Cf::PayloadIndex, Cf::Meta, Cf::RaftLog];
    pub fn name(self) -> &'static str {
        match self {
            Cf::Points => "points",
            Cf::PayloadIndex => "payload_index",
            Cf::Meta => "meta",
            Cf::RaftLog => "raft_log",
        }
    }
}

/// An owned key and value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// One write operation.
#[derive(Debug, Clone, PartialEq)]
pub enum KvOp {
    Put(Cf, Vec<u8>, Vec<u8>),
    Delete(Cf, Vec<u8>),
    /// Deletes `[start, end)`.
    DeleteRange(Cf, Vec<u8>, Vec<u8>),
}

/// An ordered key-value engine with column families and atomic batches.
pub trait KvEngine: Send + Sync + 'static {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;
    /// Applies all ops atomically, in order. With `sync`, the batch is durable
    /// (WAL fsynced) when this returns.
    fn write(&self, ops: Vec<KvOp>, sync: bool) -> Result<(), StorageError>;
    /// Visits keys in `[start, end)` in ascending byte order until `visit`
    /// returns false.
    fn scan(&self, cf: Cf, start: &[u8], end: &[u8], visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), StorageError>;
    /// The greatest key in `[start, end)` and its value.
    fn last(&self, cf: Cf, start: &[u8], end: &[u8]) -> Result<Option<KeyValue>, StorageError>;
    /// Flushes memtables (used before snapshots and at shutdown).
    fn flush(&self) -> Result<(), StorageError>;
    /// Makes every write so far durable (fsyncs the write-ahead log).
    fn sync_log(&self) -> Result<(), StorageError> {
        Ok(())
    }
    /// Before the process exits: syncs the log and stops background work
    /// (RocksDB's flush and compaction threads must not run while the
    /// process tears down its statics). Reads and writes still work.
    fn quiesce(&self) {}
}

/// The smallest key greater than every key with prefix `p` (None if `p` is
/// all 0xff).
pub fn prefix_end(p: &[u8]) -> Vec<u8> {
    let mut end = p.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; p.len() + 1]
}
