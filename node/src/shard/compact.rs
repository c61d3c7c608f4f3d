//! Graph compaction: usearch keeps removed nodes in the HNSW graph, and
//! searches walk through them. After a split each half of a shard's graph
//! is removed nodes (measured: 0.64x the QPS of a freshly built layout,
//! docs/benchmarks.md), and replaces and deletes add more over time. When
//! removals reach half the live vectors, the node's low-priority indexer
//! rebuilds the graph from the stored vectors and swaps it in.
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use roaring::RoaringBitmap;

use std::sync::Arc;

use shoal_proto::v1::VectorStorage;

use super::{memory_of, precision_of, Shard};
use crate::error::{NodeError, Result};
use crate::index::hnsw::HnswParams;
use crate::index::vecfile::VectorFile;
use crate::index::Precision;
use crate::index::VectorIndex;

/// Fewer removals than this never trigger a rebuild.
pub const COMPACT_MIN_REMOVED: usize = 1_000;
/// Vectors added to the new graph per call.
const BUILD_BATCH: usize = 4096;

impl Shard {
    /// Whether removed nodes make up a third of the graph or more (at
    /// least [`COMPACT_MIN_REMOVED`]).
    pub fn needs_compaction(&self) -> bool {
        let removed = self.index.removed();
        (removed >= COMPACT_MIN_REMOVED && removed * 2 >= self.index.len()) || self.index.needs_recalibration() || self.storage_change().is_some()
    }

    /// The storage kind of the graph now.
    pub fn storage_kind(&self) -> VectorStorage {
        self.index.params().precision.storage()
    }

    /// The vector file's mapped and resident bytes (0 without one).
    pub fn vector_file_bytes(&self) -> (u64, u64) {
        self.index.vector_file().map_or((0, 0), |f| (f.mapped_bytes(), f.resident_bytes()))
    }

    /// Maps the vector file (if any) with the memory setting asked for,
    /// when it is mapped another way.
    fn map_vectors_as_asked(&self) {
        let memory = self.storage_target.lock().1;
        if let Some(file) = self.index.vector_file().filter(|f| f.memory() != memory) {
            if let Err(e) = file.set_memory(memory) {
                tracing::warn!(collection = %self.collection, shard = self.shard_id, error = %e, "mapping the vector file with the new memory setting failed");
            }
        }
    }

    /// The storage kind the map asks for, when the graph has another.
    pub fn storage_change(&self) -> Option<Precision> {
        let want = self.storage_target.lock().0;
        (want != self.index.params().precision).then_some(want)
    }

    /// Takes the collection's storage settings from the cluster map: a
    /// new `memory` applies at once (the vector file is mapped again); a
    /// new storage kind is built by the indexer in the background
    /// ([`Shard::compact_index`]), searches and writes going on.
    pub fn set_storage(&self, storage: i32, memory: i32) {
        let precision = precision_of(storage);
        let memory = memory_of(memory);
        let changed = std::mem::replace(&mut *self.storage_target.lock(), (precision, memory)) != (precision, memory);
        // Checked against the file each time: a rebuild that began before
        // a memory change swaps in a file mapped the old way.
        self.map_vectors_as_asked();
        if changed && precision != self.index.params().precision {
            tracing::info!(collection = %self.collection, shard = self.shard_id, from = ?self.index.params().precision, to = ?precision, "storage change: the graph is rebuilt in the background");
        }
    }

    /// Whether a named vector's graph needs compacting
    /// ([`Shard::compact_named`]).
    pub fn named_need_compaction(&self) -> bool {
        self.named.read().needs_compaction()
    }

    /// Rebuilds the graph from the stored vectors of the versions it
    /// holds, without the removed nodes; then, with writers held off,
    /// brings it up to date with what changed meanwhile and swaps it in.
    /// Searches go on throughout. Returns the vectors in the new graph.
    /// Runs on the node's indexer thread, never beside
    /// [`Shard::index_pending`] (versions waiting there stay pending).
    /// Gives up, changing nothing, once `stop` is set (node shutdown).
    pub fn compact_index(&self, stop: &AtomicBool) -> Result<usize> {
        if self.retired.load(Ordering::Relaxed) {
            return Ok(0);
        }
        let started = Instant::now();
        let removed = self.index.removed();
        let current = self.index.params();
        let (target, memory) = *self.storage_target.lock();
        // A storage change to a quantized kind from f32 or f16 builds its
        // vector file beside the graph's, moved into place at the swap.
        let new_file = if target.quantized() && !current.precision.quantized() {
            let path = self.index_path.with_extension("vectors.new");
            let _ = std::fs::remove_file(&path);
            Some(Arc::new(VectorFile::open(&path, current.dim, memory).map_err(crate::error::StorageError::from)?))
        } else {
            None
        };
        let fresh = self.index.fresh(HnswParams { precision: target, ..current }, new_file.clone())?;
        // Offsets reused while the new graph builds hold other vectors by
        // the swap; the swap takes them from storage again.
        self.state.write().reused_watch = Some(RoaringBitmap::new());
        let unwatch = || self.state.write().reused_watch = None;
        let mut built = RoaringBitmap::new();
        let scanned = self.scan_in_batches(
            BUILD_BATCH,
            &mut |_, p| self.index.contains(p.offset as u64),
            &mut |batch| {
                // Shutting down: end the scan here (the error is dropped).
                if stop.load(Ordering::Relaxed) {
                    return Err(NodeError::ShuttingDown);
                }
                built.extend(batch.iter().map(|p| p.offset));
                let items: Vec<(u64, &[f32])> = batch.iter().map(|p| (p.offset as u64, p.vector.as_slice())).collect();
                Ok(fresh.add_batch(&items)?)
            },
        );
        match scanned {
            Err(NodeError::ShuttingDown) => {
                unwatch();
                return Ok(0);
            }
            Err(e) => {
                unwatch();
                return Err(e);
            }
            Ok(()) => {}
        }
        if stop.load(Ordering::Relaxed) {
            unwatch();
            return Ok(0);
        }

        let _w = self.writer.lock();
        if self.retired.load(Ordering::Relaxed) {
            unwatch();
            return Ok(0);
        }
        let mut extra: Vec<(u64, Vec<f32>)> = Vec::new();
        {
            let reused = self.state.write().reused_watch.take().unwrap_or_default();
            let st = self.state.read();
            for off in built.iter().filter(|o| !st.live.contains(*o) || reused.contains(*o)) {
                fresh.remove(off as u64)?;
            }
            for off in st.live.iter().filter(|o| (!built.contains(*o) || reused.contains(*o)) && self.index.contains(*o as u64)) {
                if let Some(p) = st.keys.get(off).map(|k| self.store.get(&k)).transpose()?.flatten() {
                    extra.push((off as u64, p.vector));
                }
            }
        }
        let items: Vec<(u64, &[f32])> = extra.iter().map(|(k, v)| (*k, v.as_slice())).collect();
        fresh.add_batch(&items)?;
        let n = fresh.len();
        if new_file.is_some() {
            crate::storage::rename_durable(&self.index_path.with_extension("vectors.new"), &self.index_path.with_extension("vectors")).map_err(crate::error::StorageError::from)?;
        }
        self.index.replace_with(fresh);
        // A memory change that came during the build.
        self.map_vectors_as_asked();
        if !target.quantized() && current.precision.quantized() {
            // Searches still on the old graph keep their mapping.
            let _ = std::fs::remove_file(self.index_path.with_extension("vectors"));
        }
        // The saved file is stale now.
        self.indexed.fetch_add(1, Ordering::Relaxed);
        tracing::info!(collection = %self.collection, shard = self.shard_id, vectors = n, removed, storage = ?target, secs = started.elapsed().as_secs_f64(), "HNSW graph rebuilt");
        Ok(n)
    }
}
