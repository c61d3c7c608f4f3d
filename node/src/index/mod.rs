//! Local vector indexes behind [`VectorIndex`].
//!
//! - [`hnsw::HnswIndex`]: the production index, usearch HNSW storing f32 or
//!   f16. Approximate search (optionally with a predicate) and exact search
//!   over its stored vectors with simsimd kernels.
//! - [`kernel`]: Shoal's f32 distance kernels (AVX-512F, AVX2+FMA,
//!   portable), registered as the f32 graphs' metric and used to re-score;
//!   [`kernel_i8`]: the int8 code kernels of INT8 graphs (AVX-512 VNNI,
//!   AVX-512BW, AVX2, portable). The HNSW itself is usearch, vendored with
//!   one patch (node/vendor/usearch/SHOAL.md: the walk prefetches vectors).
//! - [`quant`] and [`vecfile`]: the codes of INT8 and BINARY storage and
//!   the memory-mapped file of full vectors they are re-scored with.
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
pub mod kernel;
pub mod kernel_i8;
pub mod quant;
pub mod vecfile;

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
    /// int8 codes; full vectors in a vector file ([`quant`], [`vecfile`]).
    I8,
    /// One bit per dimension; full vectors in a vector file.
    B1,
}

impl Precision {
    /// The precision of a collection's storage kind.
    pub fn of(storage: shoal_proto::v1::VectorStorage) -> Precision {
        use shoal_proto::v1::VectorStorage as S;
        match storage {
            S::F16 => Precision::F16,
            S::Int8 => Precision::I8,
            S::Binary => Precision::B1,
            _ => Precision::F32,
        }
    }

    /// The storage kind of this precision ([`Precision::of`]'s inverse).
    pub fn storage(self) -> shoal_proto::v1::VectorStorage {
        use shoal_proto::v1::VectorStorage as S;
        match self {
            Precision::F32 => S::F32,
            Precision::F16 => S::F16,
            Precision::I8 => S::Int8,
            Precision::B1 => S::Binary,
        }
    }

    /// Codes in the graph, full vectors in a vector file.
    pub fn quantized(self) -> bool {
        matches!(self, Precision::I8 | Precision::B1)
    }
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

    /// Distance between two f16 vectors, accumulated in f32 on every CPU.
    ///
    /// simsimd's own f16 kernels are not used: on CPUs with AVX-512 FP16
    /// (Sapphire Rapids and later) its run-time dispatch picks a kernel
    /// that accumulates in half precision, whose error grows with the
    /// dimension (CI saw -0.3895 scored as -0.3906 at 24 dimensions). Rows
    /// are widened to f32 in stack blocks and scored with the f32 kernels,
    /// which accumulate in f32 or wider on every backend; the tolerance
    /// against an f64 reference is in docs/limits.md and checked by
    /// `index::tests::kernels_against_f64_reference`.
    pub fn f16(self, a: &[half::f16], b: &[half::f16]) -> f32 {
        use half::slice::HalfFloatSliceExt;
        const BLOCK: usize = 256;
        if a.len() != b.len() {
            return f32::INFINITY;
        }
        let (mut wa, mut wb) = ([0f32; BLOCK], [0f32; BLOCK]);
        // Cosine needs the dot product and both norms over the whole vector.
        let (mut ab, mut aa, mut bb, mut l2) = (0f64, 0f64, 0f64, 0f64);
        for (ca, cb) in a.chunks(BLOCK).zip(b.chunks(BLOCK)) {
            let (xa, xb) = (&mut wa[..ca.len()], &mut wb[..cb.len()]);
            ca.convert_to_f32_slice(xa);
            cb.convert_to_f32_slice(xb);
            match self.0 {
                Metric::L2 => l2 += kernel_l2sq(xa, xb),
                Metric::Cosine => {
                    ab += kernel_dot(xa, xb);
                    aa += kernel_dot(xa, xa);
                    bb += kernel_dot(xb, xb);
                }
                _ => ab += kernel_dot(xa, xb),
            }
        }
        match self.0 {
            Metric::L2 => l2 as f32,
            Metric::Cosine => cosine_distance(ab, aa, bb),
            _ => (1.0 - ab) as f32,
        }
    }
}

fn kernel_dot(a: &[f32], b: &[f32]) -> f64 {
    <f32 as simsimd::SpatialSimilarity>::dot(a, b).unwrap_or(f64::NAN)
}

fn kernel_l2sq(a: &[f32], b: &[f32]) -> f64 {
    <f32 as simsimd::SpatialSimilarity>::l2sq(a, b).unwrap_or(f64::NAN)
}

/// `1 - cos` from a dot product and squared norms, with simsimd's
/// conventions for zero vectors (distance 0 when both are zero, 1 when one
/// is).
fn cosine_distance(ab: f64, aa: f64, bb: f64) -> f32 {
    if aa == 0.0 && bb == 0.0 {
        return 0.0;
    }
    if aa == 0.0 || bb == 0.0 {
        return 1.0;
    }
    (1.0 - ab / (aa.sqrt() * bb.sqrt())).max(0.0) as f32
}

/// Which SIMD backends simsimd's run-time dispatch uses on this CPU, for
/// the startup log and `shoal_info`. Scores never depend on it beyond the
/// documented tolerance (see [`Distance::f16`]).
pub fn simd_backends() -> String {
    use simsimd::capabilities as c;
    let all = [
        ("haswell", c::uses_haswell()),
        ("skylake", c::uses_skylake()),
        ("ice", c::uses_ice()),
        ("genoa", c::uses_genoa()),
        ("sapphire", c::uses_sapphire()),
        ("turin", c::uses_turin()),
        ("sierra", c::uses_sierra()),
        ("neon", c::uses_neon()),
        ("sve", c::uses_sve()),
    ];
    let on: Vec<&str> = all.iter().filter(|(_, u)| *u).map(|(n, _)| *n).collect();
    if on.is_empty() {
        "serial".into()
    } else {
        on.join(",")
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
#[cfg(test)]
mod quant_tests;
