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
//! - **Snapshot** (format in [`super::snapshot`]). Under the shard's
//!   writer lock: every stored point (offsets included) is streamed into a
//!   file and the HNSW graph is saved beside it; then the two are joined
//!   with a checksummed header into `<shard>.snapshots/current.snap`.
//!   openraft streams that file to a follower in chunks.
//! - **Install, atomic.** The receiver stages the snapshot in a new storage
//!   *generation*: the points go under a fresh key prefix
//!   ([`ShardStore::with_generation`]) and the HNSW file into
//!   `<shard>.gen<N>/`. Both sections are checksummed while they are read.
//!   Only when everything is synced does one synced write flip the node
//!   key `replica_gen/<collection>/<shard>` to the new generation: that is
//!   the commit point. A crash before it leaves the old shard, with its
//!   old applied id, whole (the staged generation is dropped at the next
//!   open); a crash after it finds the new one whole. The old generation
//!   keeps serving reads until the swap, then is deleted. The shipped
//!   graph is loaded, not rebuilt.
// openraft's trait methods return `StorageError` (224 bytes); helpers return
// the same type so `?` needs no conversion.
#![allow(clippy::result_large_err)]

use std::io::{BufReader, BufWriter, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{AnyError, BasicNode, EntryPayload, ErrorSubject, ErrorVerb, LogId, Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership};
use parking_lot::RwLock;
use prost::Message;
use serde::Serialize;
use shoal_proto::internal::v1::{shard_control, ShardControl, ShardWriteRequest};
use shoal_proto::v1::CollectionConfig;
use tokio::io::AsyncWriteExt;

use super::snapshot::{self, Hashing, Header, SnapshotData, SnapshotFileError};
use super::{Entry, NodeId, Reply, TypeConfig};
use crate::error::NodeError;
use crate::shard::{self as shard_mod, Durability, Schema, Shard};
use crate::shard::requests::request_id;
use crate::storage::{shard_store, KvEngine, ShardStore, StoredPoint};

const APPLIED: &str = "raft/applied";
const MEMBERSHIP: &str = "raft/membership";
use crate::shard::split::{ChildSpec, RangeState, MOVED, RANGE};

/// Serialises creating a split's child replica (split apply) with opening
/// a fresh replica (the engine), which both check and set the uid key.
pub static CHILD_LOCK: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

/// The node key naming the collection uid a local replica belongs to.
pub fn uid_key(collection: &str, shard_id: u32) -> String {
    format!("{UID_PREFIX}{collection}/{shard_id}")
}

/// Prefix of every [`uid_key`].
pub const UID_PREFIX: &str = "replica_uid/";

/// The (collection, shard) a [`uid_key`] names.
pub fn parse_uid_key(key: &str) -> Option<(String, u32)> {
    let (collection, shard) = key.strip_prefix(UID_PREFIX)?.rsplit_once('/')?;
    Some((collection.to_string(), shard.parse().ok()?))
}
/// Points per write batch when installing a snapshot.
const IMPORT_BATCH: usize = 1000;
/// A point frame larger than this is corrupt (64k dimensions of f32 plus
/// a payload within the message limit).
const MAX_FRAME: u32 = 64 << 20;
const CURRENT: &str = "current.snap";

type Membership = StoredMembership<NodeId, BasicNode>;

fn sm_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::new(ErrorSubject::StateMachine, verb, AnyError::error(e.to_string())).into()
}

/// The node key holding a replica's live storage generation.
fn generation_key(collection: &str, shard_id: u32) -> String {
    format!("replica_gen/{collection}/{shard_id}")
}

/// Where generation `g` keeps its HNSW file (generation 0: `index_dir`).
fn generation_dir(index_dir: &Path, shard_id: u32, g: u64) -> PathBuf {
    if g == 0 {
        index_dir.to_path_buf()
    } else {
        index_dir.join(format!("{shard_id}.gen{g}"))
    }
}

fn snapshot_dir(index_dir: &Path, shard_id: u32) -> PathBuf {
    index_dir.join(format!("{shard_id}.snapshots"))
}

/// Deletes generation `g` of a replica: its records and its index files.
fn drop_generation(store0: &ShardStore, index_dir: &Path, shard_id: u32, g: u64) -> Result<(), NodeError> {
    store0.with_generation(g).destroy()?;
    let dir = generation_dir(index_dir, shard_id, g);
    if g == 0 {
        let f = shard_mod::index_file(&dir, shard_id);
        let _ = std::fs::remove_file(f.with_extension("meta"));
        let _ = std::fs::remove_file(f.with_extension("vectors"));
        let _ = std::fs::remove_file(f.with_extension("vectors.new"));
        let _ = std::fs::remove_file(f.with_extension("keys"));
        let _ = std::fs::remove_file(f);
    } else {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(())
}

/// A unique-enough suffix for temporary snapshot files.
fn nonce() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

/// Everything needed to (re)open the shard after an install.
struct Recipe {
    config: CollectionConfig,
    /// The payload indexes now (the config's at open, changed live by
    /// [`ShardStateMachine::set_payload_indexes`]); a snapshot install
    /// builds its shard for these. Held across an install, so that a
    /// change and an install never interleave.
    specs: parking_lot::Mutex<Schema>,
    /// The storage kind and vector memory now (raw; the config's at open,
    /// changed live by [`ShardStateMachine::set_storage`]): a snapshot
    /// install or a split child opens with them.
    storage: parking_lot::Mutex<(i32, i32)>,
    shard_id: u32,
    /// Generation 0's store; other generations derive from it.
    store: ShardStore,
    kv: Arc<dyn KvEngine>,
    index_dir: PathBuf,
    plan: crate::shard::SearchPlan,
    generation: AtomicU64,
}

impl Recipe {
    fn snapshot_dir(&self) -> PathBuf {
        snapshot_dir(&self.index_dir, self.shard_id)
    }

    /// The config with `schema`'s payload indexes and named vectors, and
    /// the storage settings now.
    fn config_with(&self, schema: &Schema) -> CollectionConfig {
        let (storage, memory) = *self.storage.lock();
        CollectionConfig { storage, memory, ..schema.apply_to(&self.config) }
    }
}

/// One shard replica's state machine. Clones share the shard.
#[derive(Clone)]
pub struct ShardStateMachine {
    shard: Arc<RwLock<Arc<Shard>>>,
    /// Defer graph inserts (followers); kept across snapshot installs.
    defer_index: Arc<AtomicBool>,
    recipe: Arc<Recipe>,
    /// Serialises replacing `current.snap` (a build may finish while an
    /// install runs); held only around the rename.
    current: Arc<parking_lot::Mutex<()>>,
    /// Told when a split entry created a child replica here (the engine
    /// opens it).
    split_hook: Arc<std::sync::OnceLock<Arc<tokio::sync::Notify>>>,
    /// This node's id (0: unknown); a split creates the child only on
    /// voters of the parent (the child group's members).
    node_id: Arc<AtomicU64>,
}

impl ShardStateMachine {
    /// Opens the shard (loading or rebuilding its index) for Raft.
    pub fn open(config: CollectionConfig, shard_id: u32, store: ShardStore, index_dir: PathBuf) -> Result<Self, NodeError> {
        Self::open_with(config, shard_id, store, index_dir, Default::default())
    }

    /// Like [`ShardStateMachine::open`] with a filtered-search exact-scan
    /// threshold (kept across snapshot installs). `store` is the replica's
    /// generation-0 store; the live generation is read from the node key,
    /// and leftovers of an install cut short (or of the generation it
    /// replaced) are deleted.
    pub fn open_with(config: CollectionConfig, shard_id: u32, store: ShardStore, index_dir: PathBuf, plan: crate::shard::SearchPlan) -> Result<Self, NodeError> {
        let kv = store.engine();
        let g = match shard_store::node_meta_get(&*kv, &generation_key(&config.name, shard_id))? {
            Some(b) => u64::from_be_bytes(b.as_slice().try_into().map_err(|_| crate::error::StorageError::Corrupt { what: "replica generation", detail: config.name.clone() })?),
            None => 0,
        };
        // Leftovers: an install cut short (g + 1), the generation an install
        // replaced (g - 1), and any index directory or generation-0 file
        // that a stale handle wrote after its generation was dropped.
        drop_generation(&store, &index_dir, shard_id, g + 1)?;
        if g > 0 {
            drop_generation(&store, &index_dir, shard_id, g - 1)?;
            drop_generation(&store, &index_dir, shard_id, 0)?;
        }
        if let Ok(entries) = std::fs::read_dir(&index_dir) {
            let live = format!("{shard_id}.gen{g}");
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(&format!("{shard_id}.gen")) && name != live {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        // The snapshot of the live generation, if an install was cut short
        // between its commit and keeping the file.
        let snaps = snapshot_dir(&index_dir, shard_id);
        let gen_file = snaps.join(format!("gen{g}.snap"));
        if gen_file.exists() {
            let _ = crate::storage::rename_durable(&gen_file, &snaps.join(CURRENT));
        }
        let dir = generation_dir(&index_dir, shard_id, g);
        let (mut shard, _) = Shard::open(config.clone(), shard_id, store.with_generation(g), &dir)?;
        shard.set_plan(plan);
        let recipe = Recipe { specs: parking_lot::Mutex::new(shard.schema()), storage: parking_lot::Mutex::new((config.storage, config.memory)), config, shard_id, store, kv, index_dir, plan, generation: AtomicU64::new(g) };
        Self::load_current(&recipe.snapshot_dir());
        Ok(ShardStateMachine { shard: Arc::new(RwLock::new(Arc::new(shard))), defer_index: Arc::default(), recipe: Arc::new(recipe), current: Arc::default(), split_hook: Arc::default(), node_id: Arc::default() })
    }

    /// Tells the state machine which node it runs on.
    pub fn set_node_id(&self, id: u64) {
        self.node_id.store(id, Ordering::Relaxed);
    }

    /// Sets what a split entry notifies once it created a child replica.
    pub fn set_split_hook(&self, hook: Arc<tokio::sync::Notify>) {
        let _ = self.split_hook.set(hook);
    }

    /// Deletes every trace of a replica: all storage generations, index
    /// files and snapshots. The replica must not be open.
    pub fn wipe(store: &ShardStore, collection: &str, shard_id: u32, index_dir: &Path) -> Result<(), NodeError> {
        let kv = store.engine();
        let key = generation_key(collection, shard_id);
        let g = shard_store::node_meta_get(&*kv, &key)?.and_then(|b| b.as_slice().try_into().ok()).map_or(0, u64::from_be_bytes);
        for gen in [Some(0), g.checked_sub(1), Some(g), Some(g + 1)].into_iter().flatten() {
            drop_generation(store, index_dir, shard_id, gen)?;
        }
        let _ = std::fs::remove_dir_all(snapshot_dir(index_dir, shard_id));
        shard_store::node_meta_delete(&*kv, &key)?;
        Ok(())
    }

    /// Deletes temporary files of builds and transfers cut short, and a
    /// kept snapshot file whose header is unreadable.
    fn load_current(dir: &Path) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_name() != CURRENT {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        if let Err(e) = Self::open_current(&dir.join(CURRENT)) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %dir.display(), error = %e, "dropping unreadable snapshot file");
                let _ = std::fs::remove_file(dir.join(CURRENT));
            }
        }
    }

    /// Opens a snapshot file and reads its meta from its own header, so the
    /// meta always describes the bytes served (the file may be replaced by
    /// a rename at any time; an open handle keeps its version).
    fn open_current(path: &Path) -> std::io::Result<(SnapshotMeta<NodeId, BasicNode>, std::fs::File)> {
        use std::io::Seek;
        let mut file = std::fs::File::open(path)?;
        let (h, _) = snapshot::read_header(&mut BufReader::new(&mut file)).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
        file.rewind()?;
        Ok((SnapshotMeta { last_log_id: h.applied, last_membership: h.membership, snapshot_id: h.snapshot_id }, file))
    }

    /// Makes `from` the kept snapshot unless the kept one is newer.
    fn keep(&self, from: &Path, applied: Option<LogId<NodeId>>) -> std::io::Result<()> {
        let _g = self.current.lock();
        if applied.is_none() {
            return std::fs::remove_file(from);
        }
        let to = self.recipe.snapshot_dir().join(CURRENT);
        if let Ok((kept, _)) = Self::open_current(&to) {
            if kept.last_log_id > applied {
                return std::fs::remove_file(from);
            }
        }
        crate::storage::rename_durable(from, &to)
    }

    /// Records the storage kind and vector memory the map now asks for
    /// (so an install or a split child opens with them) and hands them to
    /// the shard ([`Shard::set_storage`]).
    pub fn set_storage(&self, storage: i32, memory: i32) {
        *self.recipe.storage.lock() = (storage, memory);
        self.shard().set_storage(storage, memory);
    }

    /// Defers HNSW inserts of applied writes to the node's indexer (on a
    /// follower) or makes them part of every apply (on the leader).
    pub fn set_defer_index(&self, on: bool) {
        self.defer_index.store(on, Ordering::Relaxed);
        self.shard().set_defer_index(on);
    }

    /// Size of the last built or installed snapshot file, in bytes (0 if
    /// none).
    pub fn current_snapshot_bytes(&self) -> u64 {
        std::fs::metadata(self.recipe.snapshot_dir().join(CURRENT)).map_or(0, |m| m.len())
    }

    /// The live storage generation (bumped by every snapshot install).
    pub fn generation(&self) -> u64 {
        self.recipe.generation.load(Ordering::Relaxed)
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
                        let id = request_id(&w.request_id);
                        if let Some(done) = id.and_then(|id| shard.request_done(&id)) {
                            parts.push((done.affected, None));
                            continue;
                        }
                        let res = Self::check_route(&shard, w).and_then(|()| shard.write_request(crate::shard::WriteOps::of(w), vec![], id.map(|id| (id, e.log_id.index)), Durability::Deferred));
                        match res {
                            Ok(n) => parts.push((n, None)),
                            Err(err) => match Self::rejection(err) {
                                Some(why) => parts.push((0, Some(why))),
                                None => return Err(StorageIOError::apply(e.log_id, AnyError::error("write failed")).into()),
                            },
                        }
                    }
                    shard.put_meta(meta, Durability::Deferred).map_err(|x| sm_err(ErrorVerb::Write, x))?;
                    return Ok(Reply { affected: parts.iter().map(|p| p.0).sum(), error: None, parts });
                }
                if let Some(c) = &req.control {
                    return self.apply_control(&shard, e.log_id, &*membership, c);
                }
                // A request applied before (a coordinator's retry) changes
                // nothing and answers as the first apply did.
                let id = request_id(&req.request_id);
                if let Some(done) = id.and_then(|id| shard.request_done(&id)) {
                    shard.put_meta(meta, Durability::Deferred).map_err(|x| sm_err(ErrorVerb::Write, x))?;
                    return Ok(Reply { affected: done.affected, error: None, parts: vec![] });
                }
                let res = Self::check_route(&shard, &req).and_then(|()| shard.write_request(crate::shard::WriteOps::of(&req), meta.clone(), id.map(|id| (id, e.log_id.index)), Durability::Deferred));
                match res {
                    Ok(affected) => Ok(Reply { affected, error: None, parts: vec![] }),
                    Err(err) => {
                        let detail = err.to_string();
                        match Self::rejection(err) {
                            Some(why) => {
                                shard.put_meta(meta, Durability::Deferred).map_err(|x| sm_err(ErrorVerb::Write, x))?;
                                Ok(Reply { affected: 0, error: Some(why), parts: vec![] })
                            }
                            None => Err(StorageIOError::apply(e.log_id, AnyError::error(detail)).into()),
                        }
                    }
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

    /// The split checks of one write ([`Shard::check_route`]).
    fn check_route(shard: &Shard, w: &ShardWriteRequest) -> Result<(), NodeError> {
        shard.check_write_route(w)
    }

    /// A write every replica refuses the same way, as the reply's reason
    /// (a moved range marked with [`MOVED`]); `None` for a failure of this
    /// replica (storage), which must not be applied as a rejection.
    fn rejection(e: NodeError) -> Option<String> {
        match e {
            NodeError::Invalid(_) => Some(e.to_string()),
            NodeError::RangeMoved(m) => Some(format!("{MOVED}{m}")),
            _ => None,
        }
    }

    /// Applies a control entry (a split step); blocking.
    fn apply_control(&self, shard: &Shard, log_id: LogId<NodeId>, membership: &Membership, c: &ShardControl) -> Result<Reply, StorageError<NodeId>> {
        let werr = |x: &dyn std::fmt::Display| sm_err(ErrorVerb::Write, x);
        let meta = Self::meta_records(Some(log_id), None)?;
        let refuse = |why: String| -> Result<Reply, StorageError<NodeId>> {
            shard.put_meta(meta.clone(), Durability::Deferred).map_err(|x| werr(&x))?;
            Ok(Reply { affected: 0, error: Some(why), parts: vec![] })
        };
        match &c.op {
            None => refuse("empty control entry".into()),
            Some(shard_control::Op::PayloadIndexes(p)) => {
                let specs = match Schema::decode(p.specs.as_slice()) {
                    Ok(c) => c,
                    Err(e) => return refuse(format!("undecodable payload index specs: {e}")),
                };
                let r = &self.recipe;
                // Held across the re-index: a snapshot install waits.
                let mut current = r.specs.lock();
                // An older schema than the shard's (a leader whose map
                // lagged, a proposal overtaken by a newer one) changes
                // nothing.
                let Some(next) = specs.successor_of(&shard.schema()) else {
                    shard.put_meta(meta, Durability::Deferred).map_err(|x| werr(&x))?;
                    return Ok(Reply::default());
                };
                if let Err(e) = shoal_proto::validate::collection_config(&r.config_with(&next)) {
                    drop(current);
                    return refuse(format!("payload index specs: {e}"));
                }
                shard.set_schema(&next, meta).map_err(|x| werr(&x))?;
                *current = next;
                Ok(Reply::default())
            }
            Some(shard_control::Op::Split(s)) => {
                let rs = shard.range_state();
                if rs.pending.is_some_and(|p| p.child == s.child_shard_id) || rs.owned.is_some_and(|(_, hi)| hi < s.mid) {
                    // Replayed or retried: already applied.
                    shard.put_meta(meta, Durability::Deferred).map_err(|x| werr(&x))?;
                    return Ok(Reply::default());
                }
                if rs.pending.is_some() {
                    return refuse(format!("shard {} is already being split", shard.shard_id));
                }
                if s.mid <= s.range_start || s.mid > s.range_end || rs.owned.is_some_and(|o| o != (s.range_start, s.range_end)) {
                    return refuse(format!("split at {:#x} does not fit shard {}'s range {:#x}..={:#x} ({:?})", s.mid, shard.shard_id, s.range_start, s.range_end, rs.owned));
                }
                let r = &self.recipe;
                let name = &r.config.name;
                let child = s.child_shard_id;
                let _g = CHILD_LOCK.lock();
                let key = uid_key(name, child);
                let known = shard_store::node_meta_get(&*r.kv, &key).map_err(|x| werr(&x))?.is_some_and(|b| b.as_slice() == s.uid.to_be_bytes());
                let me = self.node_id.load(Ordering::Relaxed);
                // A learner of the parent (a replica being added) is no
                // member of the child: it must not create an orphan copy.
                let member = me == 0 || membership.membership().voter_ids().any(|v| v == me);
                let mut copied = 0;
                if !known && member {
                    // This replica creates the child; one that did not apply
                    // this entry (a snapshot moved it past) gets the child's
                    // state from the child's leader instead.
                    let store = ShardStore::new(r.kv.clone(), name, child);
                    Self::wipe(&store, name, child, &r.index_dir).map_err(|x| werr(&x))?;
                    super::log_store::LogStore::new(r.kv.clone(), &crate::engine::group_name(name, child)).destroy()?;
                    // The child starts as if initialised with the parent's
                    // membership and snapshotted at log id 0: openraft purges
                    // its log to there and builds a snapshot when it opens,
                    // so a replica without the state is sent one.
                    let start = Some(LogId::default());
                    let child_membership = StoredMembership::new(start, membership.membership().clone());
                    let mut child_meta = Self::meta_records(start, Some(&child_membership))?;
                    child_meta.push((RANGE, RangeState { owned: Some((s.mid, s.range_end)), ..Default::default() }.encode()));
                    let spec = ChildSpec { store: &store, index_dir: &r.index_dir, shard_id: child, meta: child_meta };
                    copied = shard.copy_range_to(s.mid, s.range_end, spec).map_err(|x| werr(&x))?;
                    shard_store::node_meta_put(&*r.kv, &key, s.uid.to_be_bytes().to_vec()).map_err(|x| werr(&x))?;
                }
                shard.begin_split((s.range_start, s.range_end), s.mid, child, meta).map_err(|x| werr(&x))?;
                drop(_g);
                tracing::info!(collection = %name, shard = shard.shard_id, child, mid = format!("{:#x}", s.mid), copied, created = !known && member, "split applied");
                if let Some(h) = self.split_hook.get() {
                    h.notify_one();
                }
                Ok(Reply { affected: copied, error: None, parts: vec![] })
            }
            Some(shard_control::Op::Finish(f)) => {
                let deleted = shard.finish_split(f.min_epoch, meta).map_err(|x| werr(&x))?;
                tracing::info!(collection = %self.recipe.config.name, shard = shard.shard_id, deleted, min_epoch = f.min_epoch, "split finished");
                Ok(Reply { affected: deleted, error: None, parts: vec![] })
            }
        }
    }

    /// Builds `current.snap` from a consistent export; blocking.
    fn build(&self) -> Result<(SnapshotMeta<NodeId, BasicNode>, std::fs::File, PathBuf), StorageError<NodeId>> {
        let werr = |e: &dyn std::fmt::Display| sm_err(ErrorVerb::Write, e);
        let dir = self.recipe.snapshot_dir();
        std::fs::create_dir_all(&dir).map_err(|e| werr(&e))?;
        let n = nonce();
        let (points_tmp, index_tmp, snap_tmp) = (dir.join(format!("build-{n}.points")), dir.join(format!("build-{n}.usearch")), dir.join(format!("build-{n}.snap")));
        let cleanup = || {
            for p in [&points_tmp, &index_tmp, &snap_tmp] {
                let _ = std::fs::remove_file(p);
            }
        };
        let res = (|| -> Result<(SnapshotMeta<NodeId, BasicNode>, std::fs::File, PathBuf), StorageError<NodeId>> {
            // An install may swap the shard while this export runs (openraft
            // builds in a task of its own): export again from the new one.
            let (info, points_bytes, points_checksum) = loop {
                let generation = self.generation();
                let shard = self.shard();
                let mut points = Hashing::new(BufWriter::new(std::fs::File::create(&points_tmp).map_err(|e| werr(&e))?));
                match shard.export_to(&[APPLIED, MEMBERSHIP, RANGE, shard_mod::SPECS], &mut points, &index_tmp) {
                    Ok(info) if self.generation() == generation => break (info, points.bytes, points.digest()),
                    Ok(_) => {}
                    Err(e) if self.generation() == generation => return Err(werr(&e)),
                    Err(_) => {}
                }
            };
            let applied: Option<LogId<NodeId>> = decode_or_default(&info.meta[0])?;
            let membership: Membership = decode_or_default(&info.meta[1])?;
            let mut index = Hashing::new(std::io::sink());
            std::io::copy(&mut std::fs::File::open(&index_tmp).map_err(|e| werr(&e))?, &mut index).map_err(|e| werr(&e))?;
            let c = &self.recipe;
            let snapshot_id = format!("{}-{}-{}-{n:x}", c.config.name, c.shard_id, applied.map_or("none".to_string(), |l| l.to_string()));
            let header = Header {
                snapshot_id: snapshot_id.clone(),
                applied,
                membership: membership.clone(),
                points: info.points,
                points_bytes,
                points_checksum,
                next_offset: info.next_offset,
                seq: info.seq,
                index_bytes: index.bytes,
                index_checksum: index.digest(),
                index_next_offset: info.next_offset,
                range: info.meta[2].clone().unwrap_or_default(),
                requests: info.requests,
                specs: info.meta[3].clone().unwrap_or_default(),
                index_kind: info.index_kind.clone().unwrap_or_default(),
            };
            let file = std::fs::File::create(&snap_tmp).map_err(|e| werr(&e))?;
            let mut out = BufWriter::new(file);
            snapshot::write_header(&mut out, &header).map_err(|e| werr(&e))?;
            for part in [&points_tmp, &index_tmp] {
                std::io::copy(&mut std::fs::File::open(part).map_err(|e| werr(&e))?, &mut out).map_err(|e| werr(&e))?;
            }
            out.into_inner().map_err(|e| werr(&e.error().to_string()))?.sync_all().map_err(|e| werr(&e))?;
            // Opened before the rename: the handle keeps this version even
            // if an install replaces the kept file meanwhile.
            let served = std::fs::File::open(&snap_tmp).map_err(|e| werr(&e))?;
            self.keep(&snap_tmp, applied).map_err(|e| werr(&e))?;
            tracing::info!(snapshot = %snapshot_id, points = info.points, "snapshot built");
            Ok((SnapshotMeta { last_log_id: applied, last_membership: membership, snapshot_id }, served, dir.join(CURRENT)))
        })();
        cleanup();
        res
    }

    /// Installs the snapshot file at `path` atomically (see the module
    /// docs) and keeps it as the current snapshot; blocking.
    fn install(&self, meta: &SnapshotMeta<NodeId, BasicNode>, path: &Path) -> Result<(), StorageError<NodeId>> {
        let sig = meta.signature();
        let bad = |e: &dyn std::fmt::Display| StorageError::from(StorageIOError::read_snapshot(Some(sig.clone()), AnyError::error(e.to_string())));
        let werr = |e: &dyn std::fmt::Display| sm_err(ErrorVerb::Write, e);
        let r = &self.recipe;
        let started = std::time::Instant::now();
        let mut specs = r.specs.lock();

        let file = std::fs::File::open(path).map_err(|e| bad(&e))?;
        let len = file.metadata().map_err(|e| bad(&e))?.len();
        let mut f = BufReader::with_capacity(1 << 20, file);
        let (header, hlen) = snapshot::read_header(&mut f).map_err(|e| bad(&e))?;
        // The payload indexes the sender had at the snapshot's log
        // position (an older sender's carry none: this replica's own).
        let config = if header.specs.is_empty() {
            r.config_with(&specs)
        } else {
            let sent = Schema::decode(header.specs.as_slice()).map_err(|e| bad(&SnapshotFileError::Header(format!("payload index specs: {e}"))))?;
            r.config_with(&sent)
        };
        if header.file_len(hlen) != len {
            return Err(bad(&format!("snapshot file is {len} bytes, its header promises {}", header.file_len(hlen))));
        }
        if header.applied != meta.last_log_id {
            return Err(bad(&format!("snapshot file is at {:?}, openraft expects {:?}", header.applied, meta.last_log_id)));
        }

        // Stage the new generation.
        let old_gen = r.generation.load(Ordering::Relaxed);
        let new_gen = old_gen + 1;
        drop_generation(&r.store, &r.index_dir, r.shard_id, new_gen).map_err(|e| werr(&e))?;
        let staging = r.store.with_generation(new_gen);
        let gen_dir = generation_dir(&r.index_dir, r.shard_id, new_gen);
        std::fs::create_dir_all(&gen_dir).map_err(|e| werr(&e))?;
        let staged = (|| -> Result<(), StorageError<NodeId>> {
            let mut points = Hashing::new((&mut f).take(header.points_bytes));
            let mut batch = Vec::with_capacity(IMPORT_BATCH);
            let mut buf = Vec::new();
            for _ in 0..header.points {
                let mut n = [0u8; 4];
                points.read_exact(&mut n).map_err(|e| bad(&SnapshotFileError::Corrupt { section: "points", detail: e.to_string() }))?;
                let n = u32::from_be_bytes(n);
                if n > MAX_FRAME {
                    return Err(bad(&SnapshotFileError::Corrupt { section: "points", detail: format!("frame of {n} bytes") }));
                }
                buf.resize(n as usize, 0);
                points.read_exact(&mut buf).map_err(|e| bad(&SnapshotFileError::Corrupt { section: "points", detail: e.to_string() }))?;
                batch.push(StoredPoint::decode(buf.as_slice()).map_err(|e| bad(&SnapshotFileError::Corrupt { section: "points", detail: e.to_string() }))?);
                if batch.len() == IMPORT_BATCH {
                    Shard::import(&staging, &config.payload_indexes, std::mem::take(&mut batch)).map_err(|e| werr(&e))?;
                }
            }
            Shard::import(&staging, &config.payload_indexes, batch).map_err(|e| werr(&e))?;
            if points.bytes != header.points_bytes || points.digest() != header.points_checksum {
                return Err(bad(&SnapshotFileError::Corrupt { section: "points", detail: "checksum or length mismatch".into() }));
            }
            // The graph: kept only if its checksum holds (else rebuilt at open).
            let index_path = shard_mod::index_file(&gen_dir, r.shard_id);
            let mut index = Hashing::new(BufWriter::new(std::fs::File::create(&index_path).map_err(|e| werr(&e))?));
            std::io::copy(&mut (&mut f).take(header.index_bytes), &mut index).map_err(|e| bad(&e))?;
            let ok = index.bytes == header.index_bytes && index.digest() == header.index_checksum && header.index_bytes > 0;
            index.inner.into_inner().map_err(|e| werr(&e.error().to_string()))?.sync_all().map_err(|e| werr(&e))?;
            if ok {
                shard_mod::write_sidecar(&index_path, header.index_checksum, header.index_next_offset, header.seq, Some(header.index_kind.as_str()).filter(|k| !k.is_empty())).map_err(|e| werr(&e))?;
            } else {
                tracing::warn!(snapshot = %meta.snapshot_id, "snapshot's HNSW file is missing or corrupt; rebuilding the graph from its points");
                let _ = std::fs::remove_file(&index_path);
            }
            let mut records = Self::meta_records(meta.last_log_id, Some(&meta.last_membership))?;
            if !header.range.is_empty() {
                records.push((RANGE, header.range.clone()));
            }
            Shard::import_finish(&staging, header.next_offset, header.seq, records, &header.requests, &Schema::of(&config)).map_err(|e| werr(&e))
        })();
        if let Err(e) = staged {
            let _ = drop_generation(&r.store, &r.index_dir, r.shard_id, new_gen);
            return Err(e);
        }
        // Checked by content, not only by checksum: the staged generation
        // must open as a shard before it becomes live. A snapshot whose
        // points cannot be served (another collection's, say) once
        // committed and then left a replica that could not open.
        let (mut fresh, outcome) = match Shard::open(config.clone(), r.shard_id, staging.clone(), &gen_dir) {
            Ok(x) => x,
            Err(e) => {
                let _ = drop_generation(&r.store, &r.index_dir, r.shard_id, new_gen);
                return Err(bad(&format!("the snapshot's contents do not open as this shard: {e}")));
            }
        };

        // The file becomes this generation's snapshot before the commit, so
        // whichever side of the commit a crash falls on, the kept snapshot
        // matches the live state (`open_with` promotes it).
        let dir = r.snapshot_dir();
        std::fs::create_dir_all(&dir).map_err(|e| werr(&e))?;
        let gen_file = dir.join(format!("gen{new_gen}.snap"));
        if path.parent() == Some(dir.as_path()) {
            crate::storage::rename_durable(path, &gen_file).map_err(|e| werr(&e))?;
        } else {
            std::fs::copy(path, &gen_file).map_err(|e| werr(&e))?;
        }

        // Commit point: one synced write makes the new generation live.
        shard_store::node_meta_put(&*r.kv, &generation_key(&r.config.name, r.shard_id), new_gen.to_be_bytes().to_vec()).map_err(|e| werr(&e))?;
        r.generation.store(new_gen, Ordering::Relaxed);
        fresh.set_plan(r.plan);
        fresh.set_defer_index(self.defer_index.load(Ordering::Relaxed));
        let points = fresh.len();
        *specs = fresh.schema();
        let old = std::mem::replace(&mut *self.shard.write(), Arc::new(fresh));
        // A storage change that came while the shard opened.
        let (storage, memory) = *r.storage.lock();
        self.shard().set_storage(storage, memory);
        // Under the old shard's writer lock, so an export running on it
        // finishes first; stale handles see it retired.
        old.destroy().map_err(|e| werr(&e))?;
        drop_generation(&r.store, &r.index_dir, r.shard_id, old_gen).map_err(|e| werr(&e))?;
        // Kept to send on if this replica leads later.
        self.keep(&gen_file, meta.last_log_id).map_err(|e| werr(&e))?;
        tracing::info!(snapshot = %meta.snapshot_id, points, bytes = len, generation = new_gen, ?outcome, secs = started.elapsed().as_secs_f64(), "snapshot installed");
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
        let (meta, file, path) = blocking(move || me.build()).await?;
        crate::metrics::SNAPSHOT_BUILDS.with_label_values(&["shard"]).inc();
        Ok(Snapshot { meta, snapshot: Box::new(SnapshotData::File { file: tokio::fs::File::from_std(file), path }) })
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

    /// Chunks from the leader go straight into a file beside the kept one.
    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, StorageError<NodeId>> {
        let dir = self.recipe.snapshot_dir();
        let werr = |e: std::io::Error| sm_err(ErrorVerb::Write, e);
        tokio::fs::create_dir_all(&dir).await.map_err(werr)?;
        // One transfer at a time: a file left by one openraft dropped (a new
        // snapshot id, or one already covered by the log) goes.
        if let Ok(mut entries) = tokio::fs::read_dir(&dir).await {
            while let Ok(Some(e)) = entries.next_entry().await {
                if e.file_name().to_string_lossy().starts_with("recv-") {
                    let _ = tokio::fs::remove_file(e.path()).await;
                }
            }
        }
        let path = dir.join(format!("recv-{}.snap", nonce()));
        let file = tokio::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path).await.map_err(werr)?;
        Ok(Box::new(SnapshotData::File { file, path }))
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta<NodeId, BasicNode>, snapshot: Box<SnapshotData>) -> Result<(), StorageError<NodeId>> {
        let werr = |e: std::io::Error| sm_err(ErrorVerb::Write, e);
        let path = match *snapshot {
            SnapshotData::File { mut file, path } => {
                file.flush().await.map_err(werr)?;
                file.sync_all().await.map_err(werr)?;
                path
            }
            SnapshotData::Memory(c) => {
                let dir = self.recipe.snapshot_dir();
                tokio::fs::create_dir_all(&dir).await.map_err(werr)?;
                let path = dir.join(format!("recv-{}.snap", nonce()));
                tokio::fs::write(&path, c.into_inner()).await.map_err(werr)?;
                path
            }
        };
        let (me, meta) = (self.clone(), meta.clone());
        let own = path.parent() == Some(self.recipe.snapshot_dir().as_path());
        blocking(move || {
            let bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
            let res = me.install(&meta, &path);
            if res.is_ok() {
                // The installed state may be past a split this replica
                // never applied: the engine opens the child (empty).
                if let Some(h) = me.split_hook.get() {
                    h.notify_one();
                }
                crate::metrics::SNAPSHOT_INSTALLS.with_label_values(&["shard"]).inc();
                crate::metrics::SNAPSHOT_INSTALL_BYTES.with_label_values(&["shard"]).inc_by(bytes);
            }
            if res.is_err() && own && path.exists() {
                // A refused transfer is not kept. (openraft 0.9 stops the
                // group on this error until the node restarts; docs/raft.md.)
                let _ = std::fs::remove_file(&path);
            }
            res
        })
        .await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let path = self.recipe.snapshot_dir().join(CURRENT);
        let p = path.clone();
        match tokio::task::spawn_blocking(move || Self::open_current(&p)).await.map_err(|e| sm_err(ErrorVerb::Read, e))? {
            Ok((meta, file)) => Ok(Some(Snapshot { meta, snapshot: Box::new(SnapshotData::File { file: tokio::fs::File::from_std(file), path }) })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(sm_err(ErrorVerb::Read, e)),
        }
    }
}
