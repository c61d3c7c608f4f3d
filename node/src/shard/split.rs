//! Shard splits on the replica side (docs/operations.md, "Shard split").
//!
//! A split is two entries in the parent shard's Raft log, applied by every
//! replica at the same position:
//! 1. **split** ([`Shard::split_off`]): under the writer lock, the points
//!    hashing into `[mid, end]` are copied (offsets kept) into the child's
//!    storage together with the parent's HNSW graph file, which is valid
//!    for those offsets (the child drops the others when it opens). The
//!    parent keeps its copies *frozen*: it refuses writes to that range and
//!    filter deletes (the sender re-routes), and serves the copies to reads
//!    routed with a map that does not know the child yet. Reads routed with
//!    a map that does ([`Shard::search_scoped`] with `hide`) leave them out.
//! 2. **finish** ([`Shard::finish_split`]): the frozen copies are deleted
//!    and writes routed with an older map epoch are refused from then on.
//!
//! The [`RangeState`] is a metadata record of the shard, so it survives
//! restarts and travels in snapshots.
use std::path::Path;

use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};
use shoal_proto::internal::v1::ShardWriteRequest;
use shoal_proto::v1::{PointId, PointStruct};
use shoal_proto::{validate, PointKey};

use super::{write_sidecar, Shard};
use crate::error::{NodeError, Result};
use crate::index::VectorIndex;
use crate::storage::{ShardStore, StoreBatch};

/// The shard metadata record holding its [`RangeState`] (postcard).
pub const RANGE: &str = "range";
/// Prefix of a rejection that means "re-route" in a replicated reply.
pub const MOVED: &str = "[moved] ";
/// Points per child write batch while splitting.
const COPY_BATCH: usize = 1000;

/// What a shard owns after splits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeState {
    /// The hash range this shard accepts writes for (`None`: never split;
    /// whatever the map routes to it).
    pub owned: Option<(u64, u64)>,
    /// A split applied but not finished.
    pub pending: Option<PendingSplit>,
    /// Writes routed with a map epoch below this are refused (0: none).
    pub min_epoch: u64,
}

/// The frozen upper part of a shard being split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingSplit {
    pub mid: u64,
    pub end: u64,
    pub child: u32,
}

impl RangeState {
    pub fn decode(b: Option<&[u8]>) -> Result<Self> {
        match b {
            None => Ok(RangeState::default()),
            Some(b) => postcard::from_bytes(b).map_err(|e| crate::error::StorageError::Corrupt { what: "shard range state", detail: e.to_string() }.into()),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("range state encodes")
    }
}

/// What the child of a split is made of.
pub struct ChildSpec<'a> {
    pub store: &'a ShardStore,
    pub index_dir: &'a Path,
    pub shard_id: u32,
    /// The child's metadata records (its Raft applied id and membership).
    pub meta: Vec<(&'static str, Vec<u8>)>,
}

impl Shard {
    /// The shard's range state.
    pub fn range_state(&self) -> RangeState {
        self.range.read().clone()
    }

    /// The split this shard is in the middle of, if any.
    pub fn pending_split(&self) -> Option<PendingSplit> {
        self.range.read().pending
    }

    /// Offsets of the frozen copies of a pending split, computed from the
    /// live points (at open, or when the split applies).
    pub(super) fn frozen_offsets(&self, mid: u64, end: u64) -> RoaringBitmap {
        let st = self.state.read();
        st.live
            .iter()
            .filter(|off| {
                st.keys.get(*off).is_some_and(|k| {
                    let h = k.route_hash();
                    h >= mid && h <= end
                })
            })
            .collect()
    }

    /// Refuses a write this shard must not apply because of a split:
    /// an id outside its range, a filter delete while a split is pending,
    /// or a write routed with a map older than the last split. The error
    /// is [`NodeError::RangeMoved`]: the sender reloads the map and
    /// re-routes. Deterministic (the state is replicated), so the leader
    /// checks before proposing and every replica again when applying.
    pub fn check_route(&self, upserts: &[PointStruct], delete_ids: &[PointId], filter_delete: bool, epoch: u64) -> Result<()> {
        let r = self.range.read();
        if r.owned.is_none() && r.pending.is_none() && r.min_epoch == 0 {
            return Ok(());
        }
        if epoch != 0 && epoch < r.min_epoch {
            return Err(NodeError::RangeMoved(format!("shard {}/{} was split at map epoch {}; the write was routed with epoch {epoch}", self.collection, self.shard_id, r.min_epoch)));
        }
        if filter_delete && r.pending.is_some() {
            return Err(NodeError::RangeMoved(format!("shard {}/{} is being split; filter deletes wait until it finishes", self.collection, self.shard_id)));
        }
        if let Some((lo, hi)) = r.owned {
            let ids = upserts.iter().filter_map(|p| p.id.as_ref()).chain(delete_ids);
            for id in ids {
                let Ok(k) = PointKey::try_from(id) else {
                    continue;
                };
                let h = k.route_hash();
                if h < lo || h > hi {
                    return Err(NodeError::RangeMoved(format!("point {k} (hash {h:#018x}) is outside shard {}/{}'s range {lo:#x}..={hi:#x} after a split", self.collection, self.shard_id)));
                }
            }
        }
        Ok(())
    }

    /// [`Shard::check_route`] for one shard write: its upserts and deletes,
    /// and a payload update's ids (or its filter, which waits for a split
    /// like a filter delete).
    pub fn check_write_route(&self, w: &ShardWriteRequest) -> Result<()> {
        use shoal_proto::v1::update_payload_request::Selector;
        let epoch = w.shard.as_ref().map_or(0, |s| s.epoch);
        match w.payload_update.as_ref().and_then(|u| u.selector.as_ref()) {
            Some(Selector::Ids(l)) => self.check_route(&w.upserts, &l.ids, w.delete_filter.is_some(), epoch)?,
            Some(_) => self.check_route(&w.upserts, &w.delete_ids, true, epoch)?,
            None => self.check_route(&w.upserts, &w.delete_ids, w.delete_filter.is_some(), epoch)?,
        }
        if w.payload_update.is_some() && !(w.upserts.is_empty() && w.delete_ids.is_empty() && w.delete_filter.is_none()) {
            return Err(validate::invalid("payload_update", "a payload update is a write of its own: upserts and deletes must be empty").into());
        }
        Ok(())
    }

    /// First half of applying a split entry on a replica that creates the
    /// child: copies the points hashing into `[mid, end]` (offsets kept),
    /// and the HNSW graph, into the child's storage, synced. Returns the
    /// points copied. The parent is unchanged; writes cannot interleave
    /// (the state machine applies one entry at a time).
    pub fn copy_range_to(&self, mid: u64, end: u64, spec: ChildSpec<'_>) -> Result<u64> {
        let _w = self.writer.lock();
        let (next_offset, seq) = {
            let st = self.state.read();
            (st.next_offset, st.seq)
        };
        let mut copied = 0u64;
        // The child's entries are built for the parent's indexes now (they
        // may have changed since it opened), and recorded as such.
        let schema = self.schema();
        self.scan_in_batches(
            COPY_BATCH,
            &mut |k, _| {
                let h = k.route_hash();
                h >= mid && h <= end
            },
            &mut |batch| {
                copied += batch.len() as u64;
                Shard::import(spec.store, &schema.specs, batch)
            },
        )?;
        // The graph before the synced metadata: a missing or partial file
        // only means the child rebuilds it.
        std::fs::create_dir_all(spec.index_dir).map_err(crate::error::StorageError::from)?;
        let path = super::index_file(spec.index_dir, spec.shard_id);
        self.index.save(&path)?;
        let bytes = std::fs::read(&path).map_err(crate::error::StorageError::from)?;
        write_sidecar(&path, xxhash_rust::xxh3::xxh3_64(&bytes), next_offset, seq, self.index.calibration().as_deref())?;
        // A quantized graph's full vectors: the child checks each live
        // slot at open and rewrites what does not match.
        if let Some(file) = self.index.vector_file() {
            file.sync().map_err(crate::error::StorageError::from)?;
            std::fs::copy(self.index_path.with_extension("vectors"), super::vector_file(spec.index_dir, spec.shard_id)).map_err(crate::error::StorageError::from)?;
        }
        // The child keeps the parent's request ids: a write retried after
        // the split must not apply twice in the child either.
        // Its log starts at 1: inherited ids take index 0, so they are the
        // first to go as the child's own writes arrive.
        let requests: Vec<_> = self.requests.lock().entries().into_iter().map(|(id, d)| (id, super::requests::Done { index: 0, ..d })).collect();
        Shard::import_finish(spec.store, next_offset, seq, spec.meta, &requests, &schema)?;
        Ok(copied)
    }

    /// Second half of applying a split entry, on every replica: records
    /// the parent's new [`RangeState`] with `meta` (the applied id) and
    /// freezes the points of `[mid, end]`.
    pub fn begin_split(&self, range: (u64, u64), mid: u64, child: u32, meta: Vec<(&'static str, Vec<u8>)>) -> Result<()> {
        let (lo, end) = range;
        let _w = self.writer.lock();
        let state = RangeState { owned: Some((lo, mid - 1)), pending: Some(PendingSplit { mid, end, child }), min_epoch: self.range.read().min_epoch };
        let mut put_meta = meta;
        put_meta.push((RANGE, state.encode()));
        self.store.write(StoreBatch { put_meta, ..Default::default() }, false)?;
        *self.frozen.write() = self.frozen_offsets(mid, end);
        *self.range.write() = state;
        Ok(())
    }

    /// Applies a split-finish entry: deletes the frozen copies and refuses
    /// writes routed with an epoch below `min_epoch` from now on, recorded
    /// with `meta` (the applied id). Returns the points deleted.
    pub fn finish_split(&self, min_epoch: u64, meta: Vec<(&'static str, Vec<u8>)>) -> Result<u64> {
        let current = self.range_state();
        let state = RangeState { owned: current.owned, pending: None, min_epoch: current.min_epoch.max(min_epoch) };
        let mut put_meta = meta;
        put_meta.push((RANGE, state.encode()));
        if current.pending.is_none() {
            self.put_meta(put_meta, super::Durability::Deferred)?;
            *self.range.write() = state;
            return Ok(0);
        }
        // Frozen copies take no writes, so the cached set is exact. (Not
        // `frozen_offsets`: it takes the state lock this already holds.)
        let ids: Vec<PointId> = {
            let frozen = self.frozen.read();
            let st = self.state.read();
            frozen.iter().filter_map(|o| st.keys.get(o)).map(|k| k.to_proto()).collect()
        };
        let deleted = self.write_with_meta(&[], &ids, None, put_meta, super::Durability::Deferred)?;
        *self.range.write() = state;
        self.frozen.write().clear();
        Ok(deleted)
    }

    /// Offsets reads must leave out: the frozen copies, once the reader's
    /// map routes them to the child.
    pub(super) fn hidden(&self, hide: bool) -> Option<RoaringBitmap> {
        if !hide {
            return None;
        }
        let f = self.frozen.read();
        (!f.is_empty()).then(|| f.clone())
    }
}
