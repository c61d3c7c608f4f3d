//! One shard replica: storage, HNSW index, payload index and id maps.
//!
//! ## Write path ([`Shard::write`])
//! 1. Validate every vector and id; a bad point rejects the whole batch.
//! 2. Under the shard's writer lock: give every upserted point an offset
//!    (its version; see "Offsets" below), compute payload-index entries, and write points,
//!    index entries, the sequence number and the offset counter in ONE
//!    RocksDB batch, synced to the WAL.
//! 3. Only then update memory: add new versions to HNSW and the payload
//!    index, then retire replaced or deleted versions. Searches dedupe by id,
//!    so a replace is never invisible in between.
//!
//! ## Deferred indexing (followers)
//! With [`Shard::set_defer_index`] on (the Raft state machine sets it on
//! followers), step 3 puts new versions in a pending set instead of the
//! HNSW graph; [`Shard::index_pending`], called by the node's low-priority
//! indexer thread, moves them into the graph in chunks. Searches scan the
//! pending set exactly and merge it with the graph's results, so a lagging
//! replica answers the same points, only slower. The leader indexes
//! synchronously, so a replication factor of 3 does not make every write
//! wait for three graph inserts on the same cores.
//!
//! ## Index persistence
//! The HNSW index is saved to `<index_dir>/<shard>.usearch` with a sidecar
//! `<shard>.meta` (xxh3 checksum, offset counter at save time). On open the
//! file is loaded if its checksum holds and reconciled with RocksDB exactly:
//! live versions missing from the file are added and retired versions
//! present in it are removed (versions are immutable, so set difference is
//! enough). A missing or damaged file is rebuilt from RocksDB.
//!
//! ## Offsets
//! Offsets are `u32`, and the key table, the bitmaps and the graph grow
//! with the highest one. A retired offset is handed out again, lowest
//! first, once the saved graph file no longer holds it (it was retired
//! before the last save, or the file never had it): then "versions are
//! immutable" still holds for everything a restart can load, and a shard
//! whose points are replaced over and over stays near its live count
//! instead of refusing writes after 2^32 versions. Offsets are local to a
//! replica (digests and snapshots do not depend on them matching).
use std::collections::BTreeMap;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use roaring::RoaringBitmap;
use shoal_proto::v1::{CollectionConfig, Condition, Filter, Metric, PayloadIndexSpec, PointId, PointStruct, RetrievedPoint, ScoredPoint, SearchPointsRequest, SparseVector, Struct, UpdatePayloadRequest, VectorMemory, VectorStorage};
use shoal_proto::{validate, PointKey};

use crate::error::{IndexError, NodeError, Result};
use crate::filter::{self, FilterSource, PayloadIndex};
use crate::sparse::SparseIndex;
use crate::index::hnsw::{HnswIndex, HnswParams};
use crate::index::vecfile::{Memory, VectorFile};
use crate::index::{Distance, Precision, VectorIndex};
use crate::storage::{ShardStore, StoreBatch, StoredPoint};
pub use reindex::Schema;

pub use plan::{filtered_ef, prefer_scan, SearchPlan, WALK_EF_IN_SCANNED_POINTS};

const META_SEQ: &str = "seq";
const META_NEXT_OFFSET: &str = "next_offset";
/// Live versions after the last write (absent before the write journal):
/// checked after a journal replay (journal.rs).
const META_LIVE: &str = "live";

/// In-memory state guarded by one lock.
struct State {
    keys: KeyTable,
    live: RoaringBitmap,
    payload: PayloadIndex,
    /// One inverted index per declared sparse vector ([`crate::sparse`]).
    sparse: HashMap<String, SparseIndex>,
    /// High-water mark of offsets handed out (persisted).
    next_offset: u32,
    seq: u64,
    /// Retired offsets a write may take again: none of them is in the
    /// saved graph file, so a restart cannot load an old vector under a
    /// reused offset. Lowest first, so offsets stay dense (the key table
    /// and the bitmaps grow with the highest offset, not the live count).
    reusable: RoaringBitmap,
    /// Offsets retired since the graph file was saved (the file may hold
    /// their old vectors): reusable after the next save.
    retired_unsaved: RoaringBitmap,
    /// Offsets reused while a graph compaction builds; it re-adds them from
    /// storage ([`compact`]).
    reused_watch: Option<RoaringBitmap>,
}

/// Bytes of points one get or one search may return from a shard (half
/// the message limit: a shard's answer must fit one message).
pub const RESPONSE_BYTES: usize = shoal_proto::limits::MAX_MESSAGE_BYTES / 2;
/// Bytes of new versions one payload update may write on a shard (8 times
/// the largest write entry).
pub const MAX_PAYLOAD_UPDATE_BYTES: usize = 8 * shoal_proto::limits::MAX_WRITE_BYTES;
/// Bytes of points one scroll page holds at most; a page ends early there.
pub const SCROLL_PAGE_BYTES: usize = shoal_proto::limits::MAX_MESSAGE_BYTES / 4;

pub struct Shard {
    pub collection: String,
    pub shard_id: u32,
    config: CollectionConfig,
    /// The payload indexes the shard keeps ([`reindex`]): the config's at
    /// open, changed live by [`Shard::set_payload_indexes`].
    index_specs: RwLock<Vec<PayloadIndexSpec>>,
    /// Named vectors ([`named`]): the config's at open, changed live by
    /// [`Shard::set_schema`].
    named: RwLock<named::NamedSet>,
    /// The version of the shard's schema ([`Schema`]).
    schema_version: AtomicU64,
    dist: Distance,
    store: ShardStore,
    index: HnswIndex,
    /// The storage kind and vector memory the cluster map asks for
    /// ([`Shard::set_storage`]); the indexer rebuilds the graph when the
    /// kind differs from the graph's.
    storage_target: Mutex<(Precision, Memory)>,
    state: RwLock<State>,
    writer: Mutex<()>,
    /// Recent request ids and what they did ([`requests`]); changed under
    /// the writer lock.
    requests: Mutex<requests::RequestTable>,
    index_path: PathBuf,
    saved_seq: AtomicU64,
    /// Pending-set changes moved into the graph since open (forces a save).
    indexed: AtomicU64,
    saved_indexed: AtomicU64,
    /// `--exact-scan-threshold`: filtered searches allowing at most this
    /// many points scan them; `None` chooses by cost ([`prefer_scan`]).
    pub exact_scan_threshold: Option<u64>,
    /// `--filter-partitions`: whether filtered searches ask for partition
    /// graphs.
    pub use_partitions: bool,
    /// Offsets [`Shard::index_pending`] is adding to the graph now (it runs
    /// without the writer lock): a save keeps them out of the reusable
    /// set, since the file may catch one of them before it is removed.
    indexing: Mutex<RoaringBitmap>,
    /// Versions applied but not yet in the graph: offset -> prepared vector.
    pending: RwLock<BTreeMap<u32, Vec<f32>>>,
    /// Bytes of `pending` deferred at open and still reserved in the
    /// node-wide budget (keyfile::DEFER_AT_OPEN_BYTES).
    open_deferred: AtomicUsize,
    defer_index: AtomicBool,
    /// Graphs over frequently filtered keyword values ([`partition`]).
    partitions: partition::Partitions,
    /// How the HNSW graph was obtained at open.
    opened: IndexOpen,
    /// Whether open used the key checkpoint instead of scanning every
    /// stored point (keyfile.rs).
    from_checkpoint: bool,
    /// Destroyed (e.g. replaced by a snapshot install): later saves and
    /// exports through stale handles must not recreate files or read the
    /// deleted records as if they were the shard.
    retired: AtomicBool,
    /// What the shard owns after splits ([`split`]).
    range: RwLock<split::RangeState>,
    /// Offsets of the frozen copies of a pending split.
    frozen: RwLock<RoaringBitmap>,
    /// Concurrent single exact searches, gathered into one scan.
    exact_batcher: ExactBatcher,
}

/// Exact searches (and whether each hides a split's frozen copies) and
/// their answers ([`crate::scan::batcher`]).
type ExactBatcher = crate::scan::batcher::Batcher<(SearchPointsRequest, bool), Result<Vec<ScoredPoint>>>;

/// When a shard write is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The WAL is fsynced before the write returns (direct writes).
    Sync,
    /// Durable with the next synced write on the same RocksDB WAL. The
    /// Raft state machine uses this: its entries are already durable in
    /// the Raft log, which shares the WAL and syncs on every append and
    /// purge. So a crash can lose only applies that the log replays.
    Deferred,
}

/// A consistent copy of a shard: its points and the requested metadata
/// records (see [`Shard::export`]).
pub type Export = (Vec<StoredPoint>, Vec<Option<Vec<u8>>>);

/// What [`Shard::export_to`] wrote: the requested metadata records, the
/// number of points, and the offset counter and write sequence.
#[derive(Debug, Clone)]
pub struct ExportInfo {
    pub meta: Vec<Option<Vec<u8>>>,
    /// The request-id table, oldest first.
    pub requests: Vec<(requests::RequestId, requests::Done)>,
    pub points: u64,
    pub next_offset: u32,
    pub seq: u64,
    /// The saved graph's kind and calibration ([`HnswIndex::calibration`]).
    pub index_kind: Option<String>,
}

/// Outcome of opening a shard, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexOpen {
    /// Loaded from file; `added`/`removed` versions reconciled.
    Loaded { added: usize, removed: usize },
    /// No usable file: rebuilt from storage (reason in the log).
    Rebuilt,
}

struct StoreSource<'a> {
    state: &'a State,
    store: &'a ShardStore,
}

impl FilterSource for StoreSource<'_> {
    fn universe(&self) -> &RoaringBitmap {
        &self.state.live
    }
    fn index(&self) -> &PayloadIndex {
        &self.state.payload
    }
    fn offset_of(&self, id: &PointKey) -> Option<u32> {
        match self.store.get(id) {
            Ok(p) => p.map(|p| p.offset).filter(|o| self.state.live.contains(*o)),
            Err(e) => {
                tracing::error!(error = %e, "has_id lookup failed");
                None
            }
        }
    }
    fn scan(&self, c: &Condition) -> RoaringBitmap {
        let mut out = RoaringBitmap::new();
        let prepared = filter::Prepared::new(c, &self.state.payload);
        let res = self.store.scan_points(None, &mut |k, p| {
            if self.state.live.contains(p.offset) && prepared.matches(&k, p.payload.as_ref()) {
                out.insert(p.offset);
            }
            true
        });
        if let Err(e) = res {
            tracing::error!(error = %e, "payload scan failed");
        }
        out
    }
    fn scan_many(&self, cs: &[&Condition]) -> Vec<RoaringBitmap> {
        let prepared: Vec<filter::Prepared> = cs.iter().map(|c| filter::Prepared::new(c, &self.state.payload)).collect();
        let mut out = vec![RoaringBitmap::new(); cs.len()];
        let res = self.store.scan_points(None, &mut |k, p| {
            if self.state.live.contains(p.offset) {
                for (o, c) in out.iter_mut().zip(&prepared) {
                    if c.matches(&k, p.payload.as_ref()) {
                        o.insert(p.offset);
                    }
                }
            }
            true
        });
        if let Err(e) = res {
            tracing::error!(error = %e, "payload scan failed");
        }
        out
    }
    fn verify(&self, c: &Condition, candidates: RoaringBitmap) -> RoaringBitmap {
        let prepared = filter::Prepared::new(c, &self.state.payload);
        let mut out = RoaringBitmap::new();
        for o in candidates.iter() {
            let Some(k) = self.state.keys.get(o) else { continue };
            match self.store.get(&k) {
                Ok(Some(p)) if p.offset == o && prepared.matches(&k, p.payload.as_ref()) => {
                    out.insert(o);
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "payload read failed"),
            }
        }
        out
    }
}

fn normalise(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// A new version a write makes: key, vector (as indexed) and payload.
type NewVersion = (PointKey, Vec<f32>, Option<Struct>, BTreeMap<String, SparseVector>, BTreeMap<String, shoal_proto::v1::NamedVector>);

/// What one write changes: upserts, deletes (by ids, then by filter), or a
/// payload update (alone).
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteOps<'a> {
    pub upserts: &'a [PointStruct],
    pub delete_ids: &'a [PointId],
    pub delete_filter: Option<&'a Filter>,
    pub payload_update: Option<&'a UpdatePayloadRequest>,
}

impl<'a> WriteOps<'a> {
    /// The changes of a shard write request.
    pub fn of(w: &'a shoal_proto::internal::v1::ShardWriteRequest) -> Self {
        WriteOps { upserts: &w.upserts, delete_ids: &w.delete_ids, delete_filter: w.delete_filter.as_ref(), payload_update: w.payload_update.as_ref() }
    }
}

impl Drop for Shard {
    /// Versions deferred at open and never indexed give their share of the
    /// node-wide budget back.
    fn drop(&mut self) {
        keyfile::release(*self.open_deferred.get_mut());
    }
}

impl Shard {
    /// Opens (or creates) a shard over `store`, loading or rebuilding its
    /// HNSW index from `index_dir`.
    pub fn open(config: CollectionConfig, shard_id: u32, store: ShardStore, index_dir: &Path) -> Result<(Self, IndexOpen)> {
        let metric = validate::metric(config.metric)?;
        let hnsw = config.hnsw.unwrap_or_default();
        let precision = precision_of(config.storage);
        let params = HnswParams { dim: config.dimension as usize, metric, precision, m: hnsw.m as usize, ef_construction: hnsw.ef_construction as usize };
        std::fs::create_dir_all(index_dir).map_err(crate::error::StorageError::from)?;
        let index_path = index_file(index_dir, shard_id);
        let seq = store.meta_u64(META_SEQ)?;
        let next_offset = store.meta_u64(META_NEXT_OFFSET)? as u32;
        let memory = memory_of(config.memory);
        let vectors = if precision.quantized() {
            Some(Arc::new(VectorFile::open(&vector_file(index_dir, shard_id), params.dim, memory).map_err(crate::error::StorageError::from)?))
        } else {
            VectorFile::remove(&vector_file(index_dir, shard_id));
            None
        };

        let (index, file_next, graph_sum) = match load_index(params, &index_path, vectors.clone()) {
            Ok(x) => (x.0, Some(x.1), Some(x.2)),
            Err(e) => {
                if index_path.exists() {
                    tracing::warn!(collection = %config.name, shard_id, error = %e, "HNSW index unusable; rebuilding from storage");
                } else if seq > 0 {
                    // Never saved (saves run every --index-save-interval and
                    // at shutdown), e.g. after a kill -9: expected.
                    tracing::info!(collection = %config.name, shard_id, "no saved HNSW index; building it from storage");
                }
                (HnswIndex::with_vectors(params, vectors.clone())?, None, None)
            }
        };

        // The specs the stored entries were built for (the log changes
        // them, [`reindex`]); the config's for a shard without a record.
        let recorded = reindex::stored_schema(&store)?;
        let schema = recorded.clone().unwrap_or_else(|| reindex::Schema::of(&config));
        let built_for = schema.specs.clone();
        let named = named::NamedSet::new(&schema.vectors)?;
        let mut payload = PayloadIndex::new(&built_for);
        store.scan_index(&mut |e| payload.insert(&e))?;

        let mut state = State {
            keys: KeyTable::default(),
            live: RoaringBitmap::new(),
            payload,
            sparse: config.sparse_vectors.iter().map(|s| (s.name.clone(), SparseIndex::default())).collect(),
            next_offset,
            seq,
            reusable: RoaringBitmap::new(),
            retired_unsaved: RoaringBitmap::new(),
            reused_watch: None,
        };
        let mut added = 0usize;
        // Vector-file slots that did not hold their stored vector.
        let mut repaired = 0usize;
        let text = state.payload.has_text();
        // A clean restart: the key checkpoint saved with this graph at
        // storage's current write sequence stands in for the scan below.
        let mut replayed = 0u64;
        // Versions the graph lacks, searched exactly until the indexer adds
        // them (keyfile::DEFER_AT_OPEN_BYTES).
        let mut deferred = BTreeMap::new();
        let checkpoint = match graph_sum {
            Some(sum) if !text && state.sparse.is_empty() && named.is_empty() => keyfile::read(&keyfile::path(&index_path), seq, sum, next_offset),
            _ => None,
        };
        // Writes after the checkpoint (a crash before the next save): its
        // journal records bring it up to storage's sequence.
        let checkpoint = match checkpoint {
            Some((at, mut live, mut keys)) => journal::replay(&store, at, seq, next_offset, store.meta_get(META_LIVE)?.as_deref(), &mut live, &mut keys).map(|n| {
                replayed = n;
                (live, keys)
            }),
            None => None,
        };
        let checkpoint_tried = checkpoint.is_some();
        let restored = match checkpoint {
            Some((live, keys)) => keyfile::restore(&store, &index, &live, &keys)?.map(|r| {
                (added, repaired, deferred) = (r.added, r.repaired, r.deferred);
                (state.live, state.keys) = (live, keys);
            }),
            None => None,
        };
        // A checkpoint not used (stale, damaged, for another graph, or one
        // storage disagreed with) is dropped; the next save writes a true
        // one, and saves what restore added before it gave up.
        let abandoned = checkpoint_tried && restored.is_none();
        if restored.is_none() {
            let _ = std::fs::remove_file(keyfile::path(&index_path));
            deferred = keyfile::scan_points(&store, &index, &named, &mut state, text, &mut added, &mut repaired)?;
        }
        let mut removed = 0;
        if let Some(file_next) = file_next {
            for off in 0..file_next.max(next_offset) {
                if state.live.contains(off) {
                    continue;
                }
                if index.contains(off as u64) {
                    // The file holds a retired version: not reusable until
                    // the file is saved again.
                    index.remove(off as u64)?;
                    state.retired_unsaved.insert(off);
                    removed += 1;
                } else {
                    state.reusable.insert(off);
                }
            }
        } else {
            // Rebuilt from storage. Without a file every retired offset may
            // be reused; a file that failed to load may load at the next
            // start (a passing read error), so its offsets wait for a save.
            let mut retired = RoaringBitmap::new();
            retired.insert_range(0..next_offset);
            retired -= &state.live;
            if index_path.exists() {
                state.retired_unsaved = retired;
            } else {
                state.reusable = retired;
            }
        }
        let outcome = match file_next {
            Some(_) => IndexOpen::Loaded { added, removed },
            None => IndexOpen::Rebuilt,
        };
        let saved = if matches!(outcome, IndexOpen::Loaded { added: 0, removed: 0 }) && !abandoned { seq } else { u64::MAX };
        let range = split::RangeState::decode(store.meta_get(split::RANGE)?.as_deref())?;
        let requests = Self::load_requests(&store)?;
        if repaired > 0 {
            tracing::warn!(collection = %config.name, shard_id, repaired, "vector file slots rewritten from storage (a new file, a crash before the slot write, or damage)");
        }
        tracing::info!(collection = %config.name, shard_id, points = state.live.len(), ?outcome, from_checkpoint = restored.is_some(), replayed, "shard opened");
        let shard = Shard {
            collection: config.name.clone(),
            shard_id,
            dist: Distance(metric),
            index_specs: RwLock::new(built_for),
            named: RwLock::new(named),
            schema_version: AtomicU64::new(schema.version),
            config,
            store,
            index,
            storage_target: Mutex::new((precision, memory)),
            state: RwLock::new(state),
            writer: Mutex::new(()),
            requests: Mutex::new(requests),
            indexing: Mutex::new(RoaringBitmap::new()),
            index_path,
            saved_seq: AtomicU64::new(saved),
            indexed: AtomicU64::new(0),
            saved_indexed: AtomicU64::new(0),
            exact_scan_threshold: None,
            use_partitions: true,
            open_deferred: AtomicUsize::new(keyfile::bytes_of(&deferred)),
            pending: RwLock::new(deferred),
            defer_index: AtomicBool::new(false),
            partitions: Default::default(),
            opened: outcome,
            from_checkpoint: restored.is_some(),
            retired: AtomicBool::new(false),
            range: RwLock::new(range),
            frozen: RwLock::new(RoaringBitmap::new()),
            exact_batcher: ExactBatcher::new(crate::scan::batcher::DEFAULT_WINDOW, crate::scan::batcher::DEFAULT_MAX_BATCH),
        };
        if let Some(p) = shard.pending_split() {
            *shard.frozen.write() = shard.frozen_offsets(p.mid, p.end);
        }
        if recorded.is_none() {
            shard.store.write(StoreBatch { put_meta: vec![(reindex::SPECS, schema.encode())], ..Default::default() }, true)?;
        }
        Ok((shard, outcome))
    }

    /// How the HNSW graph was obtained when the shard was opened.
    pub fn index_open(&self) -> IndexOpen {
        self.opened
    }

    /// Whether the shard opened from its key checkpoint (a clean restart)
    /// rather than by scanning every stored point.
    pub fn opened_from_checkpoint(&self) -> bool {
        self.from_checkpoint
    }

    /// The config the shard was opened with (its payload indexes may have
    /// changed since: [`Shard::payload_index_specs`]).
    pub fn config(&self) -> &CollectionConfig {
        &self.config
    }

    pub fn len(&self) -> u64 {
        self.state.read().live.len()
    }

    /// The highest offset handed out so far, plus one (retired offsets are
    /// reused, so this stays near the live count plus recent retirements).
    pub fn next_offset(&self) -> u32 {
        self.state.read().next_offset
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sequence number of the last applied write batch.
    pub fn seq(&self) -> u64 {
        self.state.read().seq
    }

    pub fn index_memory_bytes(&self) -> usize {
        // Not under the state lock: searches take `named` before `state`.
        let named = self.named.read().memory_bytes();
        let st = self.state.read();
        self.index.memory_bytes() + self.partitions.memory_bytes() + self.pending.read().len() * self.config.dimension as usize * 4 + st.payload.memory_bytes() + st.sparse.values().map(SparseIndex::memory_bytes).sum::<usize>() + named + st.keys.memory_bytes() + st.live.serialized_size()
    }

    fn metric(&self) -> Metric {
        self.dist.0
    }

    /// The collection's vector dimension.
    pub fn dimension(&self) -> u32 {
        self.config.dimension
    }

    /// Validates and prepares an upsert: checks the vector, normalises cosine
    /// vectors.
    fn prepare(&self, i: usize, p: &PointStruct, named: &[shoal_proto::v1::NamedVectorConfig]) -> Result<(PointKey, Vec<f32>)> {
        let key = self.check(i, p, named)?;
        let mut v = p.vector.clone();
        if self.metric() == Metric::Cosine {
            normalise(&mut v);
        }
        Ok((key, v))
    }

    /// Checks one upsert's id and vectors (`named`: the shard's named
    /// vectors, read once per write); returns its key.
    fn check(&self, i: usize, p: &PointStruct, named: &[shoal_proto::v1::NamedVectorConfig]) -> Result<PointKey> {
        let id = p.id.as_ref().ok_or_else(|| validate::invalid(format!("points[{i}].id"), "point id is missing"))?;
        let key = PointKey::try_from(id).map_err(|e| validate::invalid(format!("points[{i}].id"), e.to_string()))?;
        validate::vector(&format!("points[{i}].vector"), &p.vector, self.config.dimension, self.metric())?;
        validate::point_sparse(&format!("points[{i}]"), &p.sparse, &self.config.sparse_vectors)?;
        if !p.vectors.is_empty() {
            validate::point_vectors(&format!("points[{i}]"), &p.vectors, named)?;
        }
        Ok(key)
    }

    /// Parses the ids to delete and checks the delete filter.
    fn check_deletes(delete_ids: &[PointId], delete_filter: Option<&Filter>) -> Result<Vec<PointKey>> {
        let keys =
            delete_ids.iter().enumerate().map(|(i, id)| PointKey::try_from(id).map_err(|e| validate::invalid(format!("ids[{i}]"), e.to_string()))).collect::<std::result::Result<Vec<_>, _>>()?;
        if let Some(f) = delete_filter {
            // Runs at apply too: only the rules every log entry met.
            validate::filter_at_apply(f)?;
        }
        Ok(keys)
    }

    /// The live stored version of `k`: its offset and the payload-index
    /// entries to retire with it. RocksDB is the id -> offset map (bloom
    /// filters make the common miss of a new id cheap).
    fn old_version(&self, st: &State, k: &PointKey) -> Result<Option<(u32, Vec<crate::storage::IndexEntry>)>> {
        let Some(old) = self.store.get(k)? else {
            return Ok(None);
        };
        if !st.live.contains(old.offset) {
            return Ok(None);
        }
        let entries = if st.payload.is_unindexed() { vec![] } else { st.payload.entries_for(old.payload.as_ref(), old.offset) };
        Ok(Some((old.offset, entries)))
    }

    /// The new versions a payload update makes: each live point it selects
    /// with its stored vector and its updated payload, checked against the
    /// payload limits (any failure refuses the whole update, the same way
    /// on every replica).
    fn payload_versions(&self, st: &State, u: &UpdatePayloadRequest) -> Result<Vec<NewVersion>> {
        use shoal_proto::v1::update_payload_request::Selector;
        let op = u.op.as_ref().ok_or_else(|| validate::invalid("op", "a payload update needs an op"))?;
        let too_many = |n: usize| validate::invalid("selector", format!("the update selects {n} points on shard {}/{}, more than the limit of {}; narrow the filter or update by ids", self.collection, self.shard_id, shoal_proto::limits::MAX_PAYLOAD_UPDATE_POINTS));
        let keys: Vec<PointKey> = match &u.selector {
            Some(Selector::Ids(l)) => {
                let mut seen = HashSet::with_capacity(l.ids.len());
                l.ids.iter().filter_map(|id| PointKey::try_from(id).ok()).filter(|k| seen.insert(*k)).collect()
            }
            Some(Selector::Filter(f)) => {
                let allowed = filter::evaluate(f, &StoreSource { state: st, store: &self.store });
                if allowed.len() > shoal_proto::limits::MAX_PAYLOAD_UPDATE_POINTS as u64 {
                    return Err(too_many(allowed.len() as usize).into());
                }
                allowed.iter().filter_map(|o| st.keys.get(o)).collect()
            }
            Some(Selector::All(_)) => {
                if st.live.len() > shoal_proto::limits::MAX_PAYLOAD_UPDATE_POINTS as u64 {
                    return Err(too_many(st.live.len() as usize).into());
                }
                st.live.iter().filter_map(|o| st.keys.get(o)).collect()
            }
            None => return Err(validate::invalid("selector", "a payload update needs a selector").into()),
        };
        let mut out = Vec::with_capacity(keys.len());
        let mut bytes = 0usize;
        let specs = self.index_specs.read().clone();
        for k in keys {
            let Some(old) = self.store.get(&k)? else { continue };
            if !st.live.contains(old.offset) {
                continue;
            }
            let payload = shoal_proto::payload::apply_update(op, old.payload.as_ref());
            if let Some(p) = &payload {
                validate::payload(&format!("point {k}"), p, &specs)?;
            }
            // The versions this entry writes, bounded like a write's bytes
            // (a small entry must not become gigabytes of apply work).
            bytes += old.vector.len() * 4 + payload.as_ref().map_or(0, prost::Message::encoded_len) + old.sparse.values().map(|v| v.indices.len() * 8).sum::<usize>() + old.vectors.values().map(prost::Message::encoded_len).sum::<usize>();
            if bytes > MAX_PAYLOAD_UPDATE_BYTES {
                return Err(validate::invalid("selector", format!("the update rewrites more than {MAX_PAYLOAD_UPDATE_BYTES} bytes of points on shard {}/{}; update fewer points at a time", self.collection, self.shard_id)).into());
            }
            out.push((k, old.vector, payload, old.sparse, old.vectors));
        }
        Ok(out)
    }

    /// Applies upserts and deletes as one durable batch. Returns the number
    /// of points written plus points actually deleted.
    pub fn write(&self, upserts: &[PointStruct], delete_ids: &[PointId], delete_filter: Option<&Filter>) -> Result<u64> {
        self.write_with_meta(upserts, delete_ids, delete_filter, Vec::new(), Durability::Sync)
    }

    /// Reads a shard metadata record.
    pub fn meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.store.meta_get(name)?)
    }

    /// Writes shard metadata records alone, durably.
    pub fn put_meta(&self, meta: Vec<(&'static str, Vec<u8>)>, durability: Durability) -> Result<()> {
        let _w = self.writer.lock();
        self.store.write(StoreBatch { put_meta: meta, ..Default::default() }, durability == Durability::Sync)?;
        Ok(())
    }

    /// Every stored point and the named metadata records, read under the
    /// writer lock so that they form one consistent view.
    pub fn export(&self, meta: &[&str]) -> Result<Export> {
        let _w = self.writer.lock();
        let values = meta.iter().map(|m| self.store.meta_get(m)).collect::<std::result::Result<Vec<_>, _>>()?;
        let mut points = Vec::with_capacity(self.len() as usize);
        self.store.scan_points(None, &mut |_, p| {
            points.push(p);
            true
        })?;
        Ok((points, values))
    }

    /// Contents digest: xxh3-128 over every stored point, length-delimited
    /// and with its replica-local offset zeroed, in storage (id) order,
    /// under the writer lock. Streams: memory stays one point, whatever
    /// the shard's size. Returns (points, digest).
    pub fn digest(&self) -> Result<(u64, u128)> {
        let _w = self.writer.lock();
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        let (mut n, mut buf) = (0u64, Vec::new());
        self.store.scan_points(None, &mut |_, mut p| {
            p.offset = 0;
            buf.clear();
            prost::Message::encode_length_delimited(&p, &mut buf).expect("Vec grows");
            h.update(&buf);
            n += 1;
            true
        })?;
        Ok((n, h.digest128()))
    }

    /// Writes every point as a `u32 BE length ++ shoal.v1.PointStruct`
    /// frame (a backup), under the writer lock: a consistent copy as of
    /// one moment. Returns the number of points.
    pub fn backup_to(&self, out: &mut dyn std::io::Write) -> Result<u64> {
        use prost::Message;
        let _w = self.writer.lock();
        let mut n = 0u64;
        let mut failed = None;
        self.store.scan_points(None, &mut |_, p| {
            let frame = shoal_proto::v1::PointStruct { id: p.id, vector: p.vector, payload: p.payload, sparse: p.sparse, vectors: p.vectors }.encode_to_vec();
            let res = out.write_all(&(frame.len() as u32).to_be_bytes()).and_then(|()| out.write_all(&frame));
            match res {
                Ok(()) => {
                    n += 1;
                    true
                }
                Err(e) => {
                    failed = Some(e);
                    false
                }
            }
        })?;
        match failed {
            Some(e) => Err(crate::error::StorageError::Io(e).into()),
            None => Ok(n),
        }
    }

    /// Streams a consistent copy of the shard for a Raft snapshot: every
    /// stored point as a `u32 BE length ++ StoredPoint` frame into `points`,
    /// the HNSW graph saved to `index_path`, and the named metadata
    /// records, all under the writer lock (about 1 s for a 400k-vector
    /// glove shard; see docs/raft.md).
    pub fn export_to(&self, meta: &[&str], points: &mut dyn std::io::Write, index_path: &Path) -> Result<ExportInfo> {
        use prost::Message;
        let _w = self.writer.lock();
        if self.retired.load(Ordering::Relaxed) {
            return Err(NodeError::Raft("shard was replaced by a snapshot install; export the new one".into()));
        }
        let values = meta.iter().map(|m| self.store.meta_get(m)).collect::<std::result::Result<Vec<_>, _>>()?;
        let (next_offset, seq) = {
            let st = self.state.read();
            (st.next_offset, st.seq)
        };
        let requests = self.requests.lock().entries();
        let mut count = 0u64;
        let mut io_err = None;
        let mut buf = Vec::new();
        self.store.scan_points(None, &mut |_, p| {
            buf.clear();
            p.encode(&mut buf).expect("Vec grows");
            let res = points.write_all(&(buf.len() as u32).to_be_bytes()).and_then(|_| points.write_all(&buf));
            match res {
                Ok(()) => {
                    count += 1;
                    true
                }
                Err(e) => {
                    io_err = Some(e);
                    false
                }
            }
        })?;
        if let Some(e) = io_err {
            return Err(crate::error::StorageError::from(e).into());
        }
        points.flush().map_err(crate::error::StorageError::from)?;
        self.index.save(index_path)?;
        // Under the writer lock: a rebuild's swap waits for it, so this is
        // the saved graph's kind.
        let index_kind = self.index.calibration();
        Ok(ExportInfo { meta: values, requests, points: count, next_offset, seq, index_kind })
    }

    /// Hands the stored points `keep` selects to `sink`, in id order and in
    /// batches of at most `n`; stops at the first error of `sink`.
    pub(crate) fn scan_in_batches(
        &self,
        n: usize,
        keep: &mut dyn FnMut(&PointKey, &StoredPoint) -> bool,
        sink: &mut dyn FnMut(Vec<StoredPoint>) -> Result<()>,
    ) -> Result<()> {
        let mut batch = Vec::with_capacity(n);
        let mut failed = None;
        self.store.scan_points(None, &mut |k, p| {
            if keep(&k, &p) {
                batch.push(p);
                if batch.len() >= n {
                    if let Err(e) = sink(std::mem::replace(&mut batch, Vec::with_capacity(n))) {
                        failed = Some(e);
                        return false;
                    }
                }
            }
            true
        })?;
        match failed {
            Some(e) => Err(e),
            None if batch.is_empty() => Ok(()),
            None => sink(batch),
        }
    }

    /// Writes snapshot points into an (empty, staging) store as they are,
    /// offsets included, with their payload-index entries; not synced
    /// ([`Shard::import_finish`] syncs).
    pub fn import(store: &ShardStore, specs: &[PayloadIndexSpec], points: Vec<StoredPoint>) -> Result<()> {
        let payload = PayloadIndex::new(specs);
        let mut batch = StoreBatch::default();
        for p in points {
            batch.put_index.extend(payload.entries_for(p.payload.as_ref(), p.offset));
            batch.put_points.push(p);
        }
        store.write(batch, false)?;
        Ok(())
    }

    /// Ends an import: the offset counter, the write sequence and `meta`,
    /// synced together with everything imported before.
    /// `schema` is what the imported entries and vectors were built for
    /// (recorded, [`reindex`]).
    pub fn import_finish(store: &ShardStore, next_offset: u32, seq: u64, meta: Vec<(&'static str, Vec<u8>)>, requests: &[(requests::RequestId, requests::Done)], schema: &Schema) -> Result<()> {
        let mut put_meta = meta;
        put_meta.push((reindex::SPECS, schema.encode()));
        put_meta.push((META_SEQ, seq.to_be_bytes().to_vec()));
        put_meta.push((META_NEXT_OFFSET, (next_offset as u64).to_be_bytes().to_vec()));
        let put_requests = requests.iter().map(|(id, d)| (*id, requests::encode_done(d))).collect();
        store.write(StoreBatch { put_meta, put_requests, ..Default::default() }, true)?;
        Ok(())
    }

    /// Runs the checks [`Shard::write`] would run, without writing: a leader
    /// rejects a bad batch before it enters the replicated log.
    ///
    /// Checked here, before proposing, and not again at apply: the payload
    /// limits and the empty-filter rule are newer than some logs, and a
    /// replica replaying an older entry must apply it as it was.
    pub fn validate_write(&self, upserts: &[PointStruct], delete_ids: &[PointId], delete_filter: Option<&Filter>, delete_all: bool, payload_update: Option<&UpdatePayloadRequest>) -> Result<()> {
        if let Some(u) = payload_update {
            // Alone in its write: [`Shard::check_write_route`] checks that.
            return Ok(validate::payload_update(u, &self.index_specs.read(), false)?);
        }
        let named = self.named.read().configs();
        for (i, p) in upserts.iter().enumerate() {
            self.check(i, p, &named)?;
            if let Some(pl) = &p.payload {
                validate::payload(&format!("points[{i}].payload"), pl, &self.index_specs.read())?;
            }
        }
        if let Some(f) = delete_filter {
            if f.must.is_empty() && f.should.is_empty() && f.must_not.is_empty() {
                if !delete_all {
                    return Err(validate::invalid("delete_filter", "a filter without conditions would delete every point; set delete_all").into());
                }
            } else {
                validate::filter(f)?;
            }
        }
        Self::check_deletes(delete_ids, delete_filter).map(|_| ())
    }

    /// Like [`Shard::write`], with `meta` records written in the same atomic
    /// batch (the Raft state machine stores its applied log id this way).
    /// If validation rejects the batch, nothing is written, `meta` included.
    pub fn write_with_meta(&self, upserts: &[PointStruct], delete_ids: &[PointId], delete_filter: Option<&Filter>, meta: Vec<(&'static str, Vec<u8>)>, durability: Durability) -> Result<u64> {
        self.write_request(WriteOps { upserts, delete_ids, delete_filter, payload_update: None }, meta, None, durability)
    }

    /// Like [`Shard::write_with_meta`] for a write carrying a request id,
    /// applied at log index `request.1`: its record ([`requests`]) goes
    /// into the same batch. The caller has checked that the id is new.
    pub fn write_request(&self, ops: WriteOps<'_>, meta: Vec<(&'static str, Vec<u8>)>, request: Option<(requests::RequestId, u64)>, durability: Durability) -> Result<u64> {
        let WriteOps { upserts, delete_ids, delete_filter, payload_update } = ops;
        let sync = durability == Durability::Sync;
        // Validate everything before touching anything. Each new version:
        // its key, vector and payload.
        let mut prepared: Vec<NewVersion> = Vec::with_capacity(upserts.len());
        let named_cfgs = self.named.read().configs();
        for (i, p) in upserts.iter().enumerate() {
            let (k, v) = self.prepare(i, p, &named_cfgs)?;
            let named = if p.vectors.is_empty() { BTreeMap::new() } else { named::prepare(&named_cfgs, &p.vectors) };
            prepared.push((k, v, p.payload.clone(), p.sparse.clone(), named));
        }
        let del_keys = Self::check_deletes(delete_ids, delete_filter)?;
        if let Some(u) = payload_update {
            validate::payload_update(u, &self.index_specs.read(), true)?;
        }

        let _w = self.writer.lock();
        let (mut batch, mut retire, mut added) = (StoreBatch::default(), Vec::<(PointKey, u32)>::new(), Vec::<(PointKey, u32, usize)>::new());
        let mut affected = 0u64;
        let frozen = self.frozen.read().clone();
        let mut reused: Vec<u32> = Vec::new();
        let named_new: Vec<(u32, BTreeMap<String, shoal_proto::v1::NamedVector>)>;
        {
            let st = self.state.read();
            let mut next = st.next_offset;
            // Offsets this write takes again ([`State::reusable`]); never a
            // frozen copy of a pending split.
            let mut reuse = st.reusable.iter().filter(|o| !frozen.contains(*o));
            // Deletes.
            let mut doomed: HashSet<PointKey> = del_keys.into_iter().collect();
            if let Some(f) = delete_filter {
                let allowed = filter::evaluate(f, &StoreSource { state: &st, store: &self.store });
                doomed.extend(allowed.iter().filter_map(|o| st.keys.get(o)));
            }
            for k in &doomed {
                if let Some((off, entries)) = self.old_version(&st, k)? {
                    batch.delete_index.extend(entries);
                    batch.delete_points.push(*k);
                    retire.push((*k, off));
                    affected += 1;
                }
            }
            // A payload update: new versions of its points, with their
            // stored vectors.
            if let Some(u) = payload_update {
                prepared.extend(self.payload_versions(&st, u)?);
            }
            // Upserts. Last write of an id in a batch wins.
            let mut last: HashMap<PointKey, usize> = HashMap::with_capacity(prepared.len());
            for (i, (k, ..)) in prepared.iter().enumerate() {
                last.insert(*k, i);
            }
            for (i, (k, _, payload, sparse, vectors)) in prepared.iter().enumerate() {
                if last[k] != i {
                    continue;
                }
                if let Some((off, entries)) = self.old_version(&st, k)? {
                    batch.delete_index.extend(entries);
                    retire.push((*k, off));
                }
                let off = match reuse.next() {
                    Some(o) => {
                        reused.push(o);
                        o
                    }
                    None => {
                        let o = next;
                        next = next.checked_add(1).ok_or_else(|| validate::invalid("points", "shard offset space exhausted: 2^32 versions are live or retired since the last graph save"))?;
                        o
                    }
                };
                batch.put_index.extend(st.payload.entries_for(payload.as_ref(), off));
                batch.put_points.push(StoredPoint { id: Some(k.to_proto()), vector: prepared[i].1.clone(), payload: payload.clone(), offset: off, sparse: sparse.clone(), vectors: vectors.clone() });
                added.push((*k, off, i));
                affected += 1;
            }
            let request = self.pending_request(request);
            if let Some(r) = &request {
                batch.put_requests.push((r.id, requests::encode_done(&requests::Done { index: r.index, affected })));
                batch.delete_requests.extend(r.evicted.iter().copied());
            }
            if batch.put_points.is_empty() && batch.delete_points.is_empty() {
                drop(st);
                if !meta.is_empty() || request.is_some() {
                    self.store.write(StoreBatch { put_meta: meta, put_requests: batch.put_requests, delete_requests: batch.delete_requests, ..Default::default() }, sync)?;
                    self.note_request(request, 0);
                }
                return Ok(0);
            }
            batch.put_meta.extend(meta);
            batch.put_meta.push((META_SEQ, (st.seq + 1).to_be_bytes().to_vec()));
            batch.put_meta.push((META_NEXT_OFFSET, (next as u64).to_be_bytes().to_vec()));
            let journal_added: Vec<(PointKey, u32)> = added.iter().map(|(k, off, _)| (*k, *off)).collect();
            // A write that deletes and upserts one id retires its old
            // version twice: once in the journal.
            let mut journal_retired: Vec<u32> = retire.iter().map(|(_, off)| *off).collect();
            journal_retired.sort_unstable();
            journal_retired.dedup();
            let live_after = st.live.len() + added.len() as u64 - journal_retired.len() as u64;
            batch.put_meta.push((META_LIVE, live_after.to_be_bytes().to_vec()));
            batch.put_journal = Some((st.seq + 1, journal::encode(&journal_added, &journal_retired)));
            let entries_put = batch.put_index.clone();
            let entries_del = batch.delete_index.clone();
            let texts: Vec<(u32, Option<shoal_proto::v1::Struct>)> = if st.payload.has_text() { batch.put_points.iter().map(|p| (p.offset, p.payload.clone())).collect() } else { vec![] };
            named_new = batch.put_points.iter().filter(|p| !p.vectors.is_empty()).map(|p| (p.offset, p.vectors.clone())).collect();
            let sparse: Vec<(u32, BTreeMap<String, SparseVector>)> = if st.sparse.is_empty() { vec![] } else { batch.put_points.iter().filter(|p| !p.sparse.is_empty()).map(|p| (p.offset, p.sparse.clone())).collect() };
            drop(st);

            // 1. Durable first.
            self.store.write(batch, sync)?;
            self.note_request(request, affected);

            // 2. New versions become searchable: in the graph, or in the
            //    pending set the indexer drains.
            if self.defer_index.load(Ordering::Relaxed) {
                let mut p = self.pending.write();
                for (_, off, i) in &added {
                    p.insert(*off, prepared[*i].1.clone());
                }
            } else {
                let items: Vec<(u64, &[f32])> = added.iter().map(|(_, off, i)| (*off as u64, prepared[*i].1.as_slice())).collect();
                if let Err(e) = self.index.add_batch(&items) {
                    // The write is durable, so memory must not fall behind
                    // storage (the next write's sequence and the journal
                    // depend on it): what the graph refused waits in the
                    // pending set, searched exactly, for the indexer to
                    // retry.
                    tracing::error!(collection = %self.collection, shard = self.shard_id, error = %e, "graph insert failed after the write committed; the new versions wait in the pending set");
                    let mut p = self.pending.write();
                    for (_, off, i) in &added {
                        if !self.index.contains(*off as u64) {
                            p.insert(*off, prepared[*i].1.clone());
                        }
                    }
                }
            }
            let mut st = self.state.write();
            for e in &entries_put {
                st.payload.insert(e);
            }
            // Retired versions leave the text index first: a reused offset
            // may be among the new ones.
            for (_, off) in &retire {
                st.payload.remove_text(*off);
            }
            for (off, p) in &texts {
                st.payload.insert_text(p.as_ref(), *off);
            }
            if !st.sparse.is_empty() {
                for (_, off) in &retire {
                    st.sparse.values_mut().for_each(|x| x.remove(*off));
                }
                for (off, vs) in &sparse {
                    for (name, v) in vs {
                        if let Some(x) = st.sparse.get_mut(name) {
                            x.insert(*off, v);
                        }
                    }
                }
            }
            for (k, off, _) in &added {
                st.keys.insert(*off, *k);
                st.live.insert(*off);
            }
            // 3. Old versions retire.
            for e in &entries_del {
                st.payload.remove(e);
            }
            for (_, off) in &retire {
                st.live.remove(*off);
                st.keys.remove(*off);
                st.retired_unsaved.insert(*off);
            }
            for off in &reused {
                st.reusable.remove(*off);
            }
            self.partitions.note_reused(&reused);
            if let Some(w) = st.reused_watch.as_mut() {
                w.extend(reused.iter().copied());
            }
            st.next_offset = next;
            st.seq += 1;
        }
        if !retire.is_empty() && !self.pending.read().is_empty() {
            let mut p = self.pending.write();
            let mut freed = 0;
            for (_, off) in &retire {
                freed += p.remove(off).map_or(0, |v| v.len() * 4);
            }
            drop(p);
            self.release_deferred(freed);
        }
        for (_, off) in &retire {
            self.index.remove(*off as u64)?;
        }
        {
            // Named vectors: retired versions out, new ones in (a reused
            // offset was retired by an earlier write).
            let named = self.named.read();
            if !named.is_empty() {
                named.remove(&retire.iter().map(|(_, o)| *o).collect::<Vec<_>>())?;
                named.add(&named_new.iter().map(|(o, v)| (*o, v)).collect::<Vec<_>>())?;
            }
        }
        Ok(affected)
    }

    /// Defers graph inserts of new versions to [`Shard::index_pending`]
    /// (on) or makes them part of every write (off).
    pub fn set_defer_index(&self, on: bool) {
        self.defer_index.store(on, Ordering::Relaxed);
    }

    /// Versions applied but not yet in the HNSW graph.
    pub fn unindexed(&self) -> u64 {
        self.pending.read().len() as u64
    }

    /// Moves up to `max` pending versions into the HNSW graph; returns how
    /// many. A version retired meanwhile is taken out again, so the graph
    /// never keeps a dead version.
    pub fn index_pending(&self, max: usize) -> Result<usize> {
        let chunk: Vec<(u32, Vec<f32>)> = {
            let p = self.pending.read();
            let chunk: Vec<(u32, Vec<f32>)> = p.iter().take(max).map(|(o, v)| (*o, v.clone())).collect();
            // Marked while still in `pending`: a save never misses an
            // offset the graph may be about to receive.
            self.indexing.lock().extend(chunk.iter().map(|(o, _)| *o));
            chunk
        };
        if chunk.is_empty() {
            return Ok(0);
        }
        let res = self.index_chunk(&chunk);
        self.indexing.lock().clear();
        res
    }

    fn index_chunk(&self, chunk: &[(u32, Vec<f32>)]) -> Result<usize> {
        let items: Vec<(u64, &[f32])> = chunk.iter().map(|(o, v)| (*o as u64, v.as_slice())).collect();
        self.index.add_batch(&items)?;
        {
            let mut p = self.pending.write();
            for (o, _) in chunk {
                p.remove(o);
            }
        }
        let dead: Vec<u32> = {
            let st = self.state.read();
            chunk.iter().map(|(o, _)| *o).filter(|o| !st.live.contains(*o)).collect()
        };
        for o in dead {
            self.index.remove(o as u64)?;
        }
        self.indexed.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        self.release_deferred(chunk.iter().map(|(_, v)| v.len() * 4).sum());
        Ok(chunk.len())
    }

    /// Gives back up to `bytes` of what the open deferred to the node-wide
    /// budget (the pending set drains versions deferred at open and
    /// followers' alike; only the former were reserved).
    fn release_deferred(&self, bytes: usize) {
        if let Ok(prev) = self.open_deferred.fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| (cur > 0).then(|| cur.saturating_sub(bytes))) {
            keyfile::release(prev.min(bytes));
        }
    }

    fn retrieved(&self, k: PointKey, p: Option<StoredPoint>, with_payload: bool, with_vector: bool) -> RetrievedPoint {
        let p = p.unwrap_or_default();
        let (vector, sparse, vectors) = if with_vector { (p.vector, p.sparse, p.vectors) } else { (vec![], Default::default(), Default::default()) };
        RetrievedPoint { id: Some(k.to_proto()), vector, payload: if with_payload { Some(p.payload.unwrap_or_default()) } else { None }, sparse, vectors }
    }

    /// Points by id, in request order; absent ids are skipped.
    pub fn get(&self, ids: &[PointId], with_payload: bool, with_vector: bool) -> Result<Vec<RetrievedPoint>> {
        let mut out = Vec::with_capacity(ids.len().min(shoal_proto::limits::MAX_IDS_PER_REQUEST));
        let mut bytes = 0usize;
        for (i, id) in ids.iter().enumerate() {
            let k = PointKey::try_from(id).map_err(|e| validate::invalid(format!("ids[{i}]"), e.to_string()))?;
            if let Some(p) = self.store.get(&k)? {
                let r = self.retrieved(k, Some(p), with_payload, with_vector);
                bytes += prost::Message::encoded_len(&r);
                if bytes > RESPONSE_BYTES {
                    return Err(crate::error::NodeError::TooLarge(format!("the points asked for pass {RESPONSE_BYTES} bytes at id {i} of {}; ask for fewer ids or leave payloads or vectors out", ids.len())));
                }
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Number of live points matching `filter`.
    pub fn count(&self, filter: Option<&Filter>) -> Result<u64> {
        self.count_scoped(filter, false)
    }

    /// [`Shard::count`], leaving out a pending split's frozen copies when
    /// `hide` (the reader's map routes them to the child).
    pub fn count_scoped(&self, filter: Option<&Filter>, hide: bool) -> Result<u64> {
        let hidden = self.hidden(hide);
        let st = self.state.read();
        Ok(match (filter, hidden) {
            (None, None) => st.live.len(),
            (None, Some(h)) => st.live.len() - st.live.intersection_len(&h),
            (Some(f), h) => {
                validate::filter(f)?;
                let mut a = filter::evaluate(f, &StoreSource { state: &st, store: &self.store });
                if let Some(h) = h {
                    a -= h;
                }
                a.len()
            }
        })
    }

    /// Up to `limit` points from `offset` (inclusive) in id order, and the id
    /// to continue from.
    pub fn scroll(&self, offset: Option<&PointId>, limit: u32, filter: Option<&Filter>, with_payload: bool, with_vector: bool) -> Result<(Vec<RetrievedPoint>, Option<PointKey>)> {
        self.scroll_scoped(offset, limit, filter, with_payload, with_vector, false)
    }

    /// [`Shard::scroll`], leaving out a pending split's frozen copies when
    /// `hide`.
    pub fn scroll_scoped(&self, offset: Option<&PointId>, limit: u32, filter: Option<&Filter>, with_payload: bool, with_vector: bool, hide: bool) -> Result<(Vec<RetrievedPoint>, Option<PointKey>)> {
        let hidden = self.hidden(hide);
        let from = offset.map(PointKey::try_from).transpose().map_err(|e| validate::invalid("offset", e.to_string()))?;
        let allowed = match filter {
            None => None,
            Some(f) => {
                validate::filter(f)?;
                let st = self.state.read();
                Some(filter::evaluate(f, &StoreSource { state: &st, store: &self.store }))
            }
        };
        let mut out = Vec::new();
        let mut next = None;
        let mut bytes = 0usize;
        self.store.scan_points(from.as_ref(), &mut |k, p| {
            if allowed.as_ref().is_some_and(|a| !a.contains(p.offset)) || hidden.as_ref().is_some_and(|h| h.contains(p.offset)) {
                return true;
            }
            // A page ends at `limit` points or once it holds
            // SCROLL_PAGE_BYTES (large payloads): the caller goes on from
            // `next` either way.
            if out.len() == limit as usize || bytes >= SCROLL_PAGE_BYTES {
                next = Some(k);
                return false;
            }
            let r = self.retrieved(k, Some(p), with_payload, with_vector);
            bytes += prost::Message::encoded_len(&r);
            out.push(r);
            true
        })?;
        Ok((out, next))
    }

    /// Applies the node's filtered-search settings.
    pub fn set_plan(&mut self, plan: SearchPlan) {
        self.exact_scan_threshold = plan.exact_scan_threshold;
        self.use_partitions = plan.partitions;
        self.exact_batcher = ExactBatcher::new(plan.batch_window, crate::scan::batcher::DEFAULT_MAX_BATCH);
    }

    /// Saves the HNSW index if writes happened since the last save.
    pub fn save_index(&self) -> Result<bool> {
        let _w = self.writer.lock();
        if self.retired.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let (seq, next) = {
            let st = self.state.read();
            (st.seq, st.next_offset)
        };
        let indexed = self.indexed.load(Ordering::Relaxed);
        if self.saved_seq.load(Ordering::Relaxed) == seq && self.saved_indexed.load(Ordering::Relaxed) == indexed {
            // The graph on disk is current, but a shard that opened by
            // scanning has no key checkpoint yet: write one for that graph
            // (the checkpoint may be newer than its graph; open adds what
            // the graph lacks).
            let keys = keyfile::path(&self.index_path);
            let sidecar = || std::fs::read_to_string(self.index_path.with_extension("meta")).ok().as_deref().and_then(parse_sidecar);
            if let Some((sum, _)) = (!keys.exists()).then(sidecar).flatten() {
                self.store.engine().sync_log()?;
                if let Some(f) = self.index.vector_file() {
                    f.sync().map_err(crate::error::StorageError::from)?;
                }
                let written = {
                    let st = self.state.read();
                    keyfile::write(&keys, seq, sum, &st.live, &st.keys).map_err(crate::error::StorageError::from)?
                };
                if written {
                    self.store.trim_journal(seq)?;
                }
            }
            return Ok(false);
        }
        // Offsets the indexer may add while the file is written (marked
        // before they left `pending`, so before any retirement; writes wait
        // for this save): the file may catch one of them.
        let busy = self.indexing.lock().clone();
        // Storage durable first: applied writes are not synced one by one,
        // and a file newer than storage after a power loss could hold a
        // reused offset's new vector beside its old stored version.
        self.store.engine().sync_log()?;
        self.index.save(&self.index_path)?;
        let bytes = std::fs::read(&self.index_path).map_err(crate::error::StorageError::from)?;
        let sum = xxhash_rust::xxh3::xxh3_64(&bytes);
        drop(bytes);
        write_sidecar(&self.index_path, sum, next, seq, self.index.calibration().as_deref())?;
        let written = {
            let st = self.state.read();
            keyfile::write(&keyfile::path(&self.index_path), seq, sum, &st.live, &st.keys).map_err(crate::error::StorageError::from)?
        };
        // The checkpoint covers the journal through `seq` (it is durable:
        // `write_durable`).
        if written {
            self.store.trim_journal(seq)?;
        }
        {
            // The file on disk no longer holds the versions retired before
            // this save: their offsets may be taken again, but for `busy`.
            let mut st = self.state.write();
            let mut done = std::mem::take(&mut st.retired_unsaved);
            st.retired_unsaved = &done & &busy;
            done -= &busy;
            st.reusable |= done;
        }
        self.saved_seq.store(seq, Ordering::Relaxed);
        self.saved_indexed.store(indexed, Ordering::Relaxed);
        Ok(true)
    }

    /// Deletes the shard's data and index files.
    pub fn destroy(&self) -> Result<()> {
        let _w = self.writer.lock();
        self.retired.store(true, Ordering::Relaxed);
        self.store.destroy()?;
        let _ = std::fs::remove_file(&self.index_path);
        let _ = std::fs::remove_file(self.index_path.with_extension("meta"));
        let _ = std::fs::remove_file(self.index_path.with_extension("vectors"));
        let _ = std::fs::remove_file(keyfile::path(&self.index_path));
        Ok(())
    }
}

/// A collection's raw `storage` as the graph's precision (unknown: f32).
pub(crate) fn precision_of(raw: i32) -> Precision {
    Precision::of(VectorStorage::try_from(raw).unwrap_or(VectorStorage::F32))
}

/// A collection's `memory` setting as the vector file's.
pub(crate) fn memory_of(raw: i32) -> Memory {
    match validate::memory(raw) {
        Ok(VectorMemory::Ram) => Memory::Ram,
        Ok(VectorMemory::Cold) => Memory::Cold,
        _ => Memory::Cached,
    }
}

/// The full-vector file of a quantized shard (beside its HNSW file).
pub fn vector_file(index_dir: &Path, shard_id: u32) -> PathBuf {
    index_file(index_dir, shard_id).with_extension("vectors")
}

/// The HNSW file of shard `shard_id` in `index_dir` (its sidecar has the
/// extension `meta`).
pub fn index_file(index_dir: &Path, shard_id: u32) -> PathBuf {
    index_dir.join(format!("{shard_id}.usearch"))
}

/// Writes the sidecar that makes `index_path` loadable: its checksum, the
/// offset counter and write sequence it reflects, and a quantized graph's
/// calibration ([`HnswIndex::calibration`]; digits, letters and `:;,.-+`).
/// A calibration from a peer (a snapshot header) that is not of that
/// alphabet or longer than 1 MiB is left out: the graph then loads only if
/// it is f32 or f16, else it is rebuilt from the points.
pub fn write_sidecar(index_path: &Path, checksum: u64, next_offset: u32, seq: u64, calibration: Option<&str>) -> Result<()> {
    // A key checkpoint belongs to the graph saved with it (save_index
    // writes it again after this).
    let _ = std::fs::remove_file(keyfile::path(index_path));
    let ok = |c: &&str| c.len() <= 1 << 20 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b":;,.-+".contains(&b));
    let calibration = calibration.filter(ok).map_or(String::new(), |c| format!(",\"calibration\":\"{c}\""));
    let meta = format!("{{\"checksum\":{checksum},\"next_offset\":{next_offset},\"seq\":{seq}{calibration}}}");
    crate::storage::write_durable(&index_path.with_extension("meta"), meta.as_bytes()).map_err(crate::error::StorageError::from)?;
    Ok(())
}

/// Loads an index file whose sidecar checksum matches; returns it with the
/// offset counter recorded at save time and the checksum.
fn load_index(params: HnswParams, path: &Path, vectors: Option<Arc<VectorFile>>) -> std::result::Result<(HnswIndex, u32, u64), NodeError> {
    let meta_path = path.with_extension("meta");
    let bad = |d: &str| NodeError::Index(IndexError::File { path: path.display().to_string(), detail: d.to_string() });
    let meta = std::fs::read_to_string(&meta_path).map_err(|_| bad("no sidecar .meta file"))?;
    let Some((sum, next)) = parse_sidecar(&meta) else {
        return Err(bad("sidecar is malformed"));
    };
    let bytes = std::fs::read(path).map_err(|_| bad("index file missing"))?;
    if xxhash_rust::xxh3::xxh3_64(&bytes) != sum {
        return Err(bad("checksum mismatch"));
    }
    drop(bytes);
    let calibration = meta.split_once("\"calibration\":\"").and_then(|(_, rest)| rest.split_once('"')).map(|(c, _)| c);
    Ok((HnswIndex::load(params, path, calibration, vectors)?, next, sum))
}

/// The checksum and offset counter of an index sidecar
/// (`{"checksum":N,"next_offset":N,"seq":N}`); `None` if malformed,
/// including an offset counter that does not fit 32 bits.
pub(crate) fn parse_sidecar(meta: &str) -> Option<(u64, u32)> {
    let field = |name: &str| -> Option<u64> {
        let at = meta.find(&format!("\"{name}\":"))? + name.len() + 3;
        meta.get(at..)?.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    };
    Some((field("checksum")?, u32::try_from(field("next_offset")?).ok()?))
}

pub mod compact;
pub mod named;
pub mod query;
mod reindex;
pub use reindex::SPECS;
pub mod requests;
mod journal;
mod search;
mod keyfile;
mod partition;
mod plan;
#[cfg(test)]
mod partition_tests;
mod keys;
pub mod split;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod named_tests;
#[cfg(test)]
mod quant_tests;

use keys::KeyTable;
