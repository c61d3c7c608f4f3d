//! Local vector indexes behind [`VectorIndex`].
//!
//! - [`hnsw::HnswIndex`]: the production index, usearch HNSW storing f32 or
//!   f16. Approximate search (optionally with a predicate) and exact search
//!   over its stored vectors with simsimd kernels.
//! - [`flat::FlatIndex`]: exact brute force over a contiguous array with
//!   simsimd kernels. It is the oracle that recall and equivalence tests
//!   compare against.
//!
//! Keys are point-version offsets (see `storage::StoredPoint::offset`).
//! Distances follow usearch: lower is closer. For cosine they are
//! `1 - cos`, for dot `1 - dot`, for L2 the squared Euclidean distance;
//! [`Distance::score`] turns them into the public score.
use std::path::Path;

use roaring::RoaringBitmap;
use shoal_proto::v1::Metric;

use crate::error::IndexError;

pub mod flat;
pub mod hnsw;

/// One search result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub key: u64,
    pub distance: f32,
}

/// Vector precision inside an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    F32,
    F16,
}

/// Which vectors a search may return.
pub enum Allowed<'a> {
    All,
    /// Only keys in the bitmap.
    Set(&'a RoaringBitmap),
}

impl Allowed<'_> {
    pub fn contains(&self, key: u64) -> bool {
        match self {
            Allowed::All => true,
            Allowed::Set(b) => key <= u32::MAX as u64 && b.contains(key as u32),
        }
    }
}

/// Distance helpers per metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Distance(pub Metric);

impl Distance {
    /// Public score of an index distance (see `shoal.v1.Metric`).
    pub fn score(self, d: f32) -> f32 {
        match self.0 {
            Metric::L2 => d.max(0.0).sqrt(),
            _ => 1.0 - d,
        }
    }

    /// True when a higher score is better.
    pub fn higher_is_better(self) -> bool {
        self.0 != Metric::L2
    }

    /// simsimd distance between two f32 vectors, in index convention.
    pub fn f32(self, a: &[f32], b: &[f32]) -> f32 {
        use simsimd::SpatialSimilarity;
        let d = match self.0 {
            Metric::Cosine => <f32 as SpatialSimilarity>::cos(a, b).map(|c| c as f32),
            Metric::Dot => <f32 as SpatialSimilarity>::dot(a, b).map(|x| 1.0 - x as f32),
            _ => <f32 as SpatialSimilarity>::l2sq(a, b).map(|x| x as f32),
        };
        d.unwrap_or(f32::INFINITY)
    }

    /// simsimd distance between two f16 vectors.
    pub fn f16(self, a: &[half::f16], b: &[half::f16]) -> f32 {
        use simsimd::SpatialSimilarity;
        // half::f16 and simsimd::f16 are both the IEEE binary16 bit pattern.
        let a: &[simsimd::f16] = unsafe { std::slice::from_raw_parts(a.as_ptr() as *const simsimd::f16, a.len()) };
        let b: &[simsimd::f16] = unsafe { std::slice::from_raw_parts(b.as_ptr() as *const simsimd::f16, b.len()) };
        let d = match self.0 {
            Metric::Cosine => simsimd::f16::cos(a, b).map(|c| c as f32),
            Metric::Dot => simsimd::f16::dot(a, b).map(|x| 1.0 - x as f32),
            _ => simsimd::f16::l2sq(a, b).map(|x| x as f32),
        };
        d.unwrap_or(f32::INFINITY)
    }
}

/// Orders hits best first, ties by key, and keeps the first `k`.
pub fn sort_hits(hits: &mut Vec<Hit>, k: usize) {
    hits.sort_by(|a, b| a.distance.total_cmp(&b.distance).then(a.key.cmp(&b.key)));
    hits.truncate(k);
}

/// A local vector index. Implementations are internally synchronised:
/// searches may run concurrently with each other and with `add`/`remove`.
pub trait VectorIndex: Send + Sync {
    fn dimension(&self) -> usize;
    /// Live vectors.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Adds a vector under a new key.
    fn add(&self, key: u64, v: &[f32]) -> Result<(), IndexError>;
    /// Adds many vectors, possibly in parallel.
    fn add_batch(&self, items: &[(u64, &[f32])]) -> Result<(), IndexError> {
        items.iter().try_for_each(|(k, v)| self.add(*k, v))
    }
    /// Removes a key; removing an absent key is a no-op.
    fn remove(&self, key: u64) -> Result<(), IndexError>;
    fn contains(&self, key: u64) -> bool;
    /// Approximate top-`k` with a candidate list of `ef` (>= k), restricted
    /// to `allowed`. Best first.
    fn search(&self, q: &[f32], k: usize, ef: usize, allowed: &Allowed<'_>) -> Result<Vec<Hit>, IndexError>;
    /// Exact top-`k` over `allowed`. Best first, ties by key.
    fn exact(&self, q: &[f32], k: usize, allowed: &Allowed<'_>) -> Result<Vec<Hit>, IndexError>;
    /// Copies the stored vector of `key` (converted to f32) into `out`.
    fn get(&self, key: u64, out: &mut [f32]) -> bool;
    /// Bytes of memory the index holds.
    fn memory_bytes(&self) -> usize;
    /// Writes the index to `path` (atomically: temp file then rename).
    fn save(&self, path: &Path) -> Result<(), IndexError>;
}

#[cfg(test)]
mod tests;
