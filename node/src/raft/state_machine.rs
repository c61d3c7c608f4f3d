//! The shard state machine: a [`Shard`] driven by committed Raft entries.
//!
//! - **Apply.** A `Normal` entry carries a protobuf `ShardWriteRequest`.
//!   Applying it is `Shard::write_with_meta`, with the entry's log id (and
//!   the membership, when it changes) in the same synced RocksDB batch as
//!   the points. A restart then reads the last applied id from the shard,
//!   so no entry is applied twice or skipped. Applies are not fsynced on
//!   their own ([`Durability::Deferred`]): the log shares the RocksDB WAL
//!   and syncs on every append and purge, so a crash loses only applies
//!   that the log replays. A write the shard rejects as
//!   invalid is rejected the same way on every replica (validation is
//!   deterministic). The rejection is returned in the [`Reply`], and the
//!   applied id still advances.
//! - **Snapshot.** A consistent export of the shard (every stored point,
//!   read under the shard's writer lock) plus the applied id and
//!   membership, encoded as length-delimited protobuf `StoredPoint`s after
//!   a postcard header.
//! - **Install.** The shard's records are dropped, the points are
//!   re-imported through the normal write path (fresh offsets, payload
//!   indexes, HNSW), and the applied id and membership are written with
//!   the last batch. An install cut short by a crash is redone: the
//!   leader resends the snapshot, and the install starts by dropping
//!   everything. The index file is rebuilt, not shipped (docs/raft.md).
// openraft's trait methods return `StorageError` (224 bytes); helpers return
// the same type so `?` needs no conversion.
#![allow(clippy::result_large_err)]

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{AnyError, BasicNode, EntryPayload, ErrorSubject, ErrorVerb, LogId, Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership};
use parking_lot::RwLock;
use prost::Message;
use serde::{Deserialize, Serialize};
use shoal_proto::internal::v1::ShardWriteRequest;
use shoal_proto::v1::{CollectionConfig, PointStruct};

use super::{Entry, NodeId, Reply, TypeConfig};
use crate::error::NodeError;
use crate::shard::{Durability, Shard};
use crate::storage::{ShardStore, StoredPoint};

const APPLIED: &str = "raft/applied";
const MEMBERSHIP: &str = "raft/membership";
/// Points per write batch when installing a snapshot.
const IMPORT_BATCH: usize = 1000;

type Membership = StoredMembership<NodeId, BasicNode>;
/// The last built or installed snapshot, kept for followers that need it.
type CurrentSnapshot = (SnapshotMeta<NodeId, BasicNode>, Vec<u8>);

fn sm_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::new(ErrorSubject::StateMachine, verb, AnyError::error(e.to_string())).into()
}

/// Snapshot header, followed by the points.
#[derive(Serialize, Deserialize)]
struct Header {
    applied: Option<LogId<NodeId>>,
    membership: Membership,
    points: u64,
}

/// Everything needed to (re)open the shard after an install.
struct Recipe {
    config: CollectionConfig,
    shard_id: u32,
    store: ShardStore,
    index_dir: PathBuf,
    exact_scan_threshold: u64,
}

/// One shard replica's state machine. Clones share the shard.
#[derive(Clone)]
pub struct ShardStateMachine {
    shard: Arc<RwLock<Arc<Shard>>>,
    /// Defer graph inserts (followers); kept across snapshot installs.
    defer_index: Arc<std::sync::atomic::AtomicBool>,
    recipe: Arc<Recipe>,
    snapshot: Arc<RwLock<Option<CurrentSnapshot>>>,
}

impl ShardStateMachine {
    /// Opens the shard (loading or rebuilding its index) for Raft.
    pub fn open(config: CollectionConfig, shard_id: u32, store: ShardStore, index_dir: PathBuf) -> Result<Self, NodeError> {
        Self::open_with(config, shard_id, store, index_dir, crate::shard::DEFAULT_EXACT_SCAN_THRESHOLD)
    }

    /// Like [`ShardStateMachine::open`] with a filtered-search exact-scan
    /// threshold (kept across snapshot installs).
    pub fn open_with(config: CollectionConfig, shard_id: u32, store: ShardStore, index_dir: PathBuf, exact_scan_threshold: u64) -> Result<Self, NodeError> {
        let (mut shard, _) = Shard::open(config.clone(), shard_id, store.clone(), &index_dir)?;
        shard.exact_scan_threshold = exact_scan_threshold;
        Ok(ShardStateMachine {
            shard: Arc::new(RwLock::new(Arc::new(shard))),
            defer_index: Arc::default(),
            recipe: Arc::new(Recipe { config, shard_id, store, index_dir, exact_scan_threshold }),
            snapshot: Arc::new(RwLock::new(None)),
        })
    }

    /// Defers HNSW inserts of applied writes to the node's indexer (on a
    /// follower) or makes them part of every apply (on the leader).
    pub fn set_defer_index(&self, on: bool) {
        self.defer_index.store(on, std::sync::atomic::Ordering::Relaxed);
        self.shard().set_defer_index(on);
    }

    /// Size of the last built or installed snapshot, in bytes (0 if none).
    pub fn current_snapshot_bytes(&self) -> usize {
        self.snapshot.read().as_ref().map_or(0, |(_, b)| b.len())
    }

    /// The current shard (replaced wholesale by a snapshot install).
    pub fn shard(&self) -> Arc<Shard> {
        self.shard.read().clone()
    }

    fn read_meta<T: serde::de::DeserializeOwned + Default>(shard: &Shard, name: &str) -> Result<T, StorageError<NodeId>> {
        decode_or_default(&shard.meta(name).map_err(|e| sm_err(ErrorVerb::Read, e))?)
    }

    /// The applied-id record, and the membership record when it changes.
    fn meta_records(applied: Option<LogId<NodeId>>, membership: Option<&Membership>) -> Result<Vec<(&'static str, Vec<u8>)>, StorageError<NodeId>> {
        let mut out = vec![(APPLIED, encode(&applied)?)];
        if let Some(m) = membership {
            out.push((MEMBERSHIP, encode(m)?));
        }
        Ok(out)
    }

    /// Applies one entry; blocking (RocksDB and HNSW work).
    fn apply_one(&self, e: Entry, membership: &mut Membership) -> Result<Reply, StorageError<NodeId>> {
        let shard = self.shard();
        match e.payload {
            EntryPayload::Normal(cmd) => {
                let meta = Self::meta_records(Some(e.log_id), None)?;
                let req = match ShardWriteRequest::decode(cmd.write.as_slice()) {
                    Ok(r) => r,
                    Err(err) => {
                        shard.put_meta(meta, Durability::Deferred).map_err(|x| sm_err(ErrorVerb::Write, x))?;
                        return Ok(Reply { affected: 0, error: Some(format!("undecodable write: {err}")), parts: vec![] });
                    }
                };
                if !req.batch.is_empty() {
                    // A group of writes: each applied (or rejected) on its
                    // own, the applied id written after the last. A crash in
                    // between replays the whole entry, and upserts and
                    // deletes are idempotent.
                    let mut parts = Vec::with_capacity(req.batch.len());
                    for w in &req.batch {
                        match shard.write_with_meta(&w.upserts, &w.delete_ids, w.delete_filter.as_ref(), vec![], Durability::Deferred) {
                            Ok(n) => parts.push((n, None)),
                            Err(err @ NodeError::Invalid(_)) => parts.push((0, Some(err.to_string()))),
                            Err(err) => return Err(StorageIOError::apply(e.log_id, AnyError::error(err.to_string())).into()),
                        }
                    }
                    shard.put_meta(meta, Durability::Deferred).map_err(|x| sm_err(ErrorVerb::Write, x))?;
                    return Ok(Reply { affected: parts.iter().map(|p| p.0).sum(), error: None, parts });
                }
                match shard.write_with_meta(&req.upserts, &req.delete_ids, req.delete_filter.as_ref(), meta.clone(), Durability::Deferred) {
                    Ok(affected) => Ok(Reply { affected, error: None, parts: vec![] }),
                    Err(err @ NodeError::Invalid(_)) => {
                        shard.put_meta(meta, Durability::Deferred).map_err(|x| sm_err(ErrorVerb::Write, x))?;
                        Ok(Reply { affected: 0, error: Some(err.to_string()), parts: vec![] })
                    }
                    Err(err) => Err(StorageIOError::apply(e.log_id, AnyError::error(err.to_string())).into()),
                }
            }
            EntryPayload::Membership(m) => {
                *membership = StoredMembership::new(Some(e.log_id), m);
                shard.put_meta(Self::meta_records(Some(e.log_id), Some(membership))?, Durability::Deferred).map_err(|x| sm_err(ErrorVerb::Write, x))?;
                Ok(Reply::default())
            }
            EntryPayload::Blank => {
                shard.put_meta(Self::meta_records(Some(e.log_id), None)?, Durability::Deferred).map_err(|x| sm_err(ErrorVerb::Write, x))?;
                Ok(Reply::default())
            }
        }
    }

    /// Builds a snapshot from a consistent export; blocking.
    fn build(&self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let shard = self.shard();
        let (points, meta) = shard.export(&[APPLIED, MEMBERSHIP]).map_err(|e| sm_err(ErrorVerb::Read, e))?;
        let applied: Option<LogId<NodeId>> = decode_or_default(&meta[0])?;
        let membership: Membership = decode_or_default(&meta[1])?;
        let header = Header { applied, membership: membership.clone(), points: points.len() as u64 };
        let mut bytes = encode(&header)?;
        let hlen = bytes.len() as u64;
        bytes.splice(0..0, hlen.to_be_bytes());
        for p in &points {
            p.encode_length_delimited(&mut bytes).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        }
        let id = format!("{}-{}-{}", self.recipe.config.name, self.recipe.shard_id, applied.map_or("none".to_string(), |l| l.to_string()));
        let meta = SnapshotMeta { last_log_id: applied, last_membership: membership, snapshot_id: id };
        *self.snapshot.write() = Some((meta.clone(), bytes.clone()));
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(bytes)) })
    }

    /// Replaces the shard with a snapshot's contents; blocking.
    fn install(&self, meta: &SnapshotMeta<NodeId, BasicNode>, bytes: Vec<u8>) -> Result<(), StorageError<NodeId>> {
        let bad = |e: &dyn std::fmt::Display| StorageError::from(StorageIOError::read_snapshot(Some(meta.signature()), AnyError::error(e.to_string())));
        if bytes.len() < 8 {
            return Err(bad(&"snapshot shorter than its header length"));
        }
        let hlen = u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
        let body = bytes.get(8..8 + hlen).ok_or_else(|| bad(&"truncated snapshot header"))?;
        let header: Header = postcard::from_bytes(body).map_err(|e| bad(&e))?;
        let mut rest = &bytes[8 + hlen..];
        let mut points = Vec::with_capacity(header.points as usize);
        while !rest.is_empty() {
            points.push(StoredPoint::decode_length_delimited(&mut rest).map_err(|e| bad(&e))?);
        }
        if points.len() as u64 != header.points {
            return Err(bad(&format!("snapshot holds {} points, header says {}", points.len(), header.points)));
        }

        let r = &self.recipe;
        let old = self.shard();
        old.destroy().map_err(|e| sm_err(ErrorVerb::Write, e))?;
        let (mut fresh, _) = Shard::open(r.config.clone(), r.shard_id, r.store.clone(), &r.index_dir).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        fresh.exact_scan_threshold = r.exact_scan_threshold;
        fresh.set_defer_index(self.defer_index.load(std::sync::atomic::Ordering::Relaxed));
        let upserts: Vec<PointStruct> = points.into_iter().map(|p| PointStruct { id: p.id, vector: p.vector, payload: p.payload }).collect();
        for chunk in upserts.chunks(IMPORT_BATCH) {
            fresh.write(chunk, &[], None).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        }
        // Last: from here on the shard reports the snapshot's log id.
        let records = Self::meta_records(meta.last_log_id, Some(&meta.last_membership))?;
        fresh.put_meta(records, Durability::Sync).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        *self.shard.write() = Arc::new(fresh);
        *self.snapshot.write() = Some((meta.clone(), bytes));
        Ok(())
    }
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StorageError<NodeId>> {
    postcard::to_stdvec(v).map_err(|e| sm_err(ErrorVerb::Write, e))
}

fn decode_or_default<T: serde::de::DeserializeOwned + Default>(b: &Option<Vec<u8>>) -> Result<T, StorageError<NodeId>> {
    match b {
        None => Ok(T::default()),
        Some(b) => postcard::from_bytes(b).map_err(|e| sm_err(ErrorVerb::Read, e)),
    }
}

/// Runs blocking state-machine work off the async worker.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, StorageError<NodeId>> + Send + 'static) -> Result<T, StorageError<NodeId>> {
    tokio::task::spawn_blocking(f).await.map_err(|e| sm_err(ErrorVerb::Write, e))?
}

impl RaftSnapshotBuilder<TypeConfig> for ShardStateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let me = self.clone();
        blocking(move || me.build()).await
    }
}

impl RaftStateMachine<TypeConfig> for ShardStateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId<NodeId>>, Membership), StorageError<NodeId>> {
        let shard = self.shard();
        let applied: Option<LogId<NodeId>> = Self::read_meta(&shard, APPLIED)?;
        let membership: Membership = Self::read_meta(&shard, MEMBERSHIP)?;
        Ok((applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Reply>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let me = self.clone();
        blocking(move || {
            let shard = me.shard();
            let mut membership: Membership = Self::read_meta(&shard, MEMBERSHIP)?;
            entries.into_iter().map(|e| me.apply_one(e, &mut membership)).collect()
        })
        .await
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta<NodeId, BasicNode>, snapshot: Box<Cursor<Vec<u8>>>) -> Result<(), StorageError<NodeId>> {
        let (me, meta) = (self.clone(), meta.clone());
        blocking(move || me.install(&meta, snapshot.into_inner())).await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        Ok(self.snapshot.read().as_ref().map(|(m, b)| Snapshot { meta: m.clone(), snapshot: Box::new(Cursor::new(b.clone())) }))
    }
}
