//! Graph compaction: usearch keeps removed nodes in the HNSW graph, and
//! searches walk through them. After a split each half of a shard's graph
//! is removed nodes (measured: 0.64x the QPS of a freshly built layout,
//! docs/benchmarks.md), and replaces and deletes add more over time. When
//! removals reach half the live vectors, the node's low-priority indexer
//! rebuilds the graph from the stored vectors and swaps it in.
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use roaring::RoaringBitmap;

use super::Shard;
use crate::error::{NodeError, Result};
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
        (removed >= COMPACT_MIN_REMOVED && removed * 2 >= self.index.len()) || self.index.needs_recalibration()
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
        let fresh = self.index.fresh(self.index.params(), None)?;
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
        self.index.replace_with(fresh);
        // The saved file is stale now.
        self.indexed.fetch_add(1, Ordering::Relaxed);
        tracing::info!(collection = %self.collection, shard = self.shard_id, vectors = n, removed, secs = started.elapsed().as_secs_f64(), "HNSW graph compacted");
        Ok(n)
    }
}
