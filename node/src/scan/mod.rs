//! The scan engine: the exact top-k of a batch of queries over a set of
//! rows (issue 18).
//!
//! Exact search, filtered scans, re-scoring, MaxSim and a follower's
//! pending vectors all score many rows against one or more queries. Done
//! one query and one row at a time, every query streams every row from
//! memory again. For a batch the same work is a matrix product, queries
//! (n x dim) times rows transposed (dim x m), then a top-k per query,
//! which reads each row once for the whole batch and runs at close to the
//! core's arithmetic peak.
//!
//! - [`Scan`]: the boundary. It takes queries, the keys of the rows to
//!   score, a [`RowStore`] that can copy a row by key (or lend a block of
//!   rows in place), `k` and the metric, and returns each query's top-k
//!   as [`Hit`]s (lower distance is closer, ties by key).
//! - [`cpu::CpuScan`]: blocked f32 matrix products (the `gemm` crate),
//!   rows gathered [`BLOCK_ROWS`] at a time, the blocks split over threads.
//! - [`device`]: scans on a GPU with the CPU as the fallback: the
//!   [`device::Accel`] boundary, the node's [`device::Offload`] (circuit
//!   breaker, counters, cost model) and `--gpu auto|on|off`;
//!   [`mirror`] keeps a graph's rows on the device; [`cuda`] is the CUDA
//!   backend (cargo feature `cuda`; not yet run on a GPU), [`host`] the
//!   host reference and fault-injecting test double. [`backend`] is the
//!   CPU scan the node's searches use when the device does not answer.
//! - [`batcher`]: micro-batching of concurrent single searches.
//! - [`rows`]: the stores a shard scans: a full-precision graph, a
//!   quantized graph's vector file, the pending set.
//! - [`LoopScan`]: one kernel call per query and row (how Shoal scanned
//!   before); the oracle of the conformance suite (tests.rs), which every
//!   backend must pass.
//!
//! Distances follow the index's conventions (index/kernel.rs): `1 - dot`
//! for the inner product (cosine rows and queries are unit vectors) and
//! the squared Euclidean distance for L2. A matrix product gets L2 as
//! `|q|² + |r|² - 2 q·r`, which differs from the direct sum of squared
//! differences by rounding: the conformance suite states the bound.
use std::collections::BinaryHeap;

use crate::index::{Hit, Precision};

pub mod batcher;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod device;
pub mod host;
pub mod mirror;
pub mod rows;

#[cfg(test)]
mod device_tests;
#[cfg(test)]
mod tests;

/// Rows gathered into one contiguous block per matrix product: 256 rows
/// of 384 f32 are 384 KiB, about what a core's L2 cache holds beside the
/// queries.
pub const BLOCK_ROWS: usize = 256;

/// How a scan measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanMetric {
    /// `1 - dot` (inner product and cosine over unit vectors).
    InnerProduct,
    /// Squared Euclidean distance.
    L2,
}

/// Where a scan's rows come from.
pub trait RowStore: Sync {
    /// Floats per row.
    fn dim(&self) -> usize;
    /// Copies row `key` into `out` (`dim` floats); false if it has none.
    fn fill(&self, key: u64, out: &mut [f32]) -> bool;
    /// Rows `keys`, contiguous and in order, if the store holds them so
    /// (no copy); `None` makes the scan gather them with [`RowStore::fill`].
    fn block(&self, _keys: &[u64]) -> Option<&[f32]> {
        None
    }
    /// The storage precision of the rows (their values are f32 either way).
    fn precision(&self) -> Precision {
        Precision::F32
    }
}

/// The CPU scan the node's searches use (a device, when there is one,
/// is tried first: [`device::Offload::scan`]).
static BACKEND: std::sync::OnceLock<cpu::CpuScan> = std::sync::OnceLock::new();

/// The scan the node's searches use on the CPU.
pub fn backend() -> &'static dyn Scan {
    BACKEND.get_or_init(cpu::CpuScan::new)
}

/// Errors of a scan backend.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("query has {got} dimensions, rows have {want}")]
    Dimension { got: usize, want: usize },
}

/// An exact top-k scan of a batch of queries.
pub trait Scan: Send + Sync {
    /// The backend, for status and benchmarks.
    fn name(&self) -> &'static str;
    /// Each query's `k` closest rows among `keys` (rows the store lacks are
    /// skipped), sorted by distance, then key.
    fn top_k(&self, queries: &[&[f32]], keys: &[u64], rows: &dyn RowStore, k: usize, metric: ScanMetric) -> Result<Vec<Vec<Hit>>, ScanError>;
}

pub(crate) fn check_dims(queries: &[&[f32]], rows: &dyn RowStore) -> Result<(), ScanError> {
    let want = rows.dim();
    match queries.iter().find(|q| q.len() != want) {
        Some(q) => Err(ScanError::Dimension { got: q.len(), want }),
        None => Ok(()),
    }
}

/// A bounded max-heap keeping the `k` closest hits.
pub(crate) struct TopK {
    k: usize,
    heap: BinaryHeap<Ranked>,
}

#[derive(Clone, Copy)]
struct Ranked(Hit);

impl PartialEq for Ranked {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == std::cmp::Ordering::Equal
    }
}
impl Eq for Ranked {}
impl PartialOrd for Ranked {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Ranked {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.distance.total_cmp(&o.0.distance).then(self.0.key.cmp(&o.0.key))
    }
}

impl TopK {
    pub(crate) fn new(k: usize) -> Self {
        TopK { k, heap: BinaryHeap::with_capacity(k.saturating_add(1).min(1 << 16)) }
    }

    /// The distance a hit must beat to enter (infinite until `k` are held).
    #[inline]
    pub(crate) fn bound(&self) -> f32 {
        if self.heap.len() < self.k {
            f32::INFINITY
        } else {
            self.heap.peek().map_or(f32::INFINITY, |h| h.0.distance)
        }
    }

    /// Offers a hit. A NaN distance (a row or query holding NaN or an
    /// overflow; writes refuse non-finite vectors) cannot be ranked and is
    /// dropped, on every backend alike.
    #[inline]
    pub(crate) fn push(&mut self, key: u64, distance: f32) {
        if self.k == 0 || distance.is_nan() {
            return;
        }
        let hit = Ranked(Hit { key, distance });
        if self.heap.len() < self.k {
            self.heap.push(hit);
        } else if self.heap.peek().is_some_and(|top| hit < *top) {
            self.heap.pop();
            self.heap.push(hit);
        }
    }

    pub(crate) fn merge(&mut self, other: TopK) {
        for h in other.heap {
            self.push(h.0.key, h.0.distance);
        }
    }

    pub(crate) fn into_sorted(self) -> Vec<Hit> {
        let mut v: Vec<Hit> = self.heap.into_iter().map(|h| h.0).collect();
        crate::index::sort_hits(&mut v, self.k);
        v
    }
}

/// One kernel call per query and row: the scan as Shoal ran it before the
/// engine, and the conformance suite's oracle.
pub struct LoopScan;

impl Scan for LoopScan {
    fn name(&self) -> &'static str {
        "loop"
    }

    fn top_k(&self, queries: &[&[f32]], keys: &[u64], rows: &dyn RowStore, k: usize, metric: ScanMetric) -> Result<Vec<Vec<Hit>>, ScanError> {
        check_dims(queries, rows)?;
        let mut buf = vec![0f32; rows.dim()];
        let mut out = Vec::with_capacity(queries.len());
        for q in queries {
            let mut top = TopK::new(k);
            for &key in keys {
                if !rows.fill(key, &mut buf) {
                    continue;
                }
                let d = match metric {
                    ScanMetric::InnerProduct => 1.0 - crate::index::kernel::dot(q, &buf),
                    ScanMetric::L2 => crate::index::kernel::l2sq(q, &buf),
                };
                top.push(key, d);
            }
            out.push(top.into_sorted());
        }
        Ok(out)
    }
}

/// Rows held in one contiguous row-major array, row `i` under key `i`
/// (benchmarks, tests, and the flat index's layout).
pub struct DenseRows<'a> {
    pub dim: usize,
    pub data: &'a [f32],
}

impl RowStore for DenseRows<'_> {
    fn dim(&self) -> usize {
        self.dim
    }

    fn fill(&self, key: u64, out: &mut [f32]) -> bool {
        let Some(r) = usize::try_from(key).ok().and_then(|i| self.rows(i, 1)) else { return false };
        if out.len() != self.dim {
            return false;
        }
        out.copy_from_slice(r);
        true
    }

    fn block(&self, keys: &[u64]) -> Option<&[f32]> {
        let first = *keys.first()?;
        let contiguous = keys.iter().enumerate().all(|(i, k)| first.checked_add(i as u64) == Some(*k));
        if !contiguous {
            return None;
        }
        self.rows(usize::try_from(first).ok()?, keys.len())
    }
}

impl DenseRows<'_> {
    /// Rows `first..first + n`, if all are present (no overflow).
    fn rows(&self, first: usize, n: usize) -> Option<&[f32]> {
        let start = first.checked_mul(self.dim)?;
        let end = first.checked_add(n)?.checked_mul(self.dim)?;
        self.data.get(start..end)
    }
}
