//! The CPU backend of [`Scan`]: blocked f32 matrix products.
//!
//! The queries are packed once into an n x dim matrix. The keys are split
//! into one contiguous range per thread; each thread takes its range
//! [`BLOCK_ROWS`] rows at a time (lent in place by the store when it holds
//! them contiguously, else gathered into one buffer), multiplies the
//! queries by the block transposed with the `gemm` crate (its kernels pick
//! AVX-512, AVX2+FMA or NEON at run time; single-threaded per call, since
//! the threads here already split the rows), turns the products into
//! distances, and keeps a top-k per query. The threads' top-k lists are
//! merged at the end. Batches of fewer than [`GEMM_MIN_QUERIES`] queries
//! score each row with the distance kernels instead.
use super::{check_dims, RowStore, Scan, ScanError, ScanMetric, TopK, BLOCK_ROWS};
use crate::index::Hit;

/// Below this many queries a scan scores rows with the distance kernels
/// (index/kernel.rs) instead of a matrix product: on debian-384 a product
/// with one query ran at 40% of the kernel loop's speed, and one with four
/// below the loop with two (docs/benchmarks.md, "The scan engine").
pub const GEMM_MIN_QUERIES: usize = 8;

/// Multiply-adds a scan gives each thread at least (about 0.1 to 0.25
/// ms of work at the kernels' and the product's rates here).
pub const MIN_WORK_PER_THREAD: usize = 1 << 20;

/// Matrix-product scans on the CPU, over up to `threads` threads.
pub struct CpuScan {
    threads: usize,
}

impl CpuScan {
    /// A scan using every core the process may run on.
    pub fn new() -> Self {
        CpuScan { threads: std::thread::available_parallelism().map_or(1, |n| n.get()) }
    }

    /// A scan over at most `threads` threads (at least one).
    pub fn with_threads(threads: usize) -> Self {
        CpuScan { threads: threads.max(1) }
    }
}

impl Default for CpuScan {
    fn default() -> Self {
        Self::new()
    }
}

impl Scan for CpuScan {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn top_k(&self, queries: &[&[f32]], keys: &[u64], rows: &dyn RowStore, k: usize, metric: ScanMetric) -> Result<Vec<Vec<Hit>>, ScanError> {
        check_dims(queries, rows)?;
        if queries.is_empty() {
            return Ok(vec![]);
        }
        let dim = rows.dim();
        if dim == 0 {
            // Nothing to measure (the API refuses dimension 0).
            return Ok(vec![vec![]; queries.len()]);
        }
        let packed: Vec<f32> = queries.concat();
        let norms: Vec<f32> = match metric {
            ScanMetric::L2 => queries.iter().map(|q| crate::index::kernel::dot(q, q)).collect(),
            ScanMetric::InnerProduct => vec![],
        };
        let job = Job { q: &packed, norms: &norms, n: queries.len(), dim, rows, k, metric };
        let blocks = keys.len().div_ceil(BLOCK_ROWS);
        // A thread per part only where each part has work enough to repay
        // starting it (tens of microseconds): small filtered scans (a few
        // hundred rows) ran 35% slower split over two threads.
        let work = keys.len().saturating_mul(dim).saturating_mul(queries.len());
        let threads = self.threads.min(blocks).min(work / MIN_WORK_PER_THREAD).max(1);
        if threads == 1 {
            return Ok(job.run(keys).into_iter().map(TopK::into_sorted).collect());
        }
        let per = blocks.div_ceil(threads) * BLOCK_ROWS;
        let parts: Vec<Vec<TopK>> = std::thread::scope(|s| {
            // The first part runs on this thread. A part whose thread could
            // not start (the process at its thread limit) runs here too.
            let mut chunks = keys.chunks(per);
            let first = chunks.next().unwrap_or_default();
            let handles: Vec<_> = chunks.map(|part| (part, std::thread::Builder::new().name("shoal-scan".into()).spawn_scoped(s, || job.run(part)).ok())).collect();
            let mut parts = vec![job.run(first)];
            for (part, h) in handles {
                parts.push(match h {
                    Some(h) => h.join().expect("scan threads do not panic"),
                    None => job.run(part),
                });
            }
            parts
        });
        let mut parts = parts.into_iter();
        let mut tops = parts.next().unwrap_or_default();
        for part in parts {
            for (t, p) in tops.iter_mut().zip(part) {
                t.merge(p);
            }
        }
        Ok(tops.into_iter().map(TopK::into_sorted).collect())
    }
}

/// One scan's shared inputs.
struct Job<'a> {
    /// Queries, n x dim, row-major.
    q: &'a [f32],
    /// Squared norms of the queries (L2 only).
    norms: &'a [f32],
    n: usize,
    dim: usize,
    rows: &'a dyn RowStore,
    k: usize,
    metric: ScanMetric,
}

impl Job<'_> {
    /// The top-k of every query over `keys`.
    fn run(&self, keys: &[u64]) -> Vec<TopK> {
        let (n, dim) = (self.n, self.dim);
        let mut tops: Vec<TopK> = (0..n).map(|_| TopK::new(self.k)).collect();
        let mut gathered = vec![0f32; BLOCK_ROWS * dim];
        let mut kept: Vec<u64> = Vec::with_capacity(BLOCK_ROWS);
        let mut scores = vec![0f32; n * BLOCK_ROWS];
        let mut row_norms = vec![0f32; BLOCK_ROWS];
        for block in keys.chunks(BLOCK_ROWS) {
            let (data, used): (&[f32], &[u64]) = match self.rows.block(block) {
                Some(d) if d.len() == block.len() * dim => (d, block),
                _ => {
                    kept.clear();
                    for &key in block {
                        let at = kept.len() * dim;
                        if self.rows.fill(key, &mut gathered[at..at + dim]) {
                            kept.push(key);
                        }
                    }
                    (&gathered[..kept.len() * dim], &kept)
                }
            };
            let m = used.len();
            if m == 0 {
                continue;
            }
            if n < GEMM_MIN_QUERIES {
                // A product with a few rows on the left runs below the
                // kernels' speed: score each row directly.
                for (qi, top) in tops.iter_mut().enumerate() {
                    let q = &self.q[qi * dim..(qi + 1) * dim];
                    let mut bound = top.bound();
                    for (j, r) in data.chunks_exact(dim).enumerate() {
                        let d = match self.metric {
                            ScanMetric::InnerProduct => 1.0 - crate::index::kernel::dot(q, r),
                            ScanMetric::L2 => crate::index::kernel::l2sq(q, r),
                        };
                        if d <= bound {
                            top.push(used[j], d);
                            bound = top.bound();
                        }
                    }
                }
                continue;
            }
            // scores (n x m) = q (n x dim) · dataᵀ (dim x m).
            // SAFETY: every pointer covers the extent its strides address:
            // scores n·m floats (row stride m), q n·dim (row stride dim),
            // data m·dim read as a dim x m matrix (column stride dim).
            unsafe {
                gemm::gemm(
                    n,
                    m,
                    dim,
                    scores.as_mut_ptr(),
                    1,
                    m as isize,
                    false,
                    self.q.as_ptr(),
                    1,
                    dim as isize,
                    data.as_ptr(),
                    dim as isize,
                    1,
                    0.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            if self.metric == ScanMetric::L2 {
                for (j, r) in data.chunks_exact(dim).enumerate() {
                    row_norms[j] = crate::index::kernel::dot(r, r);
                }
            }
            for (qi, top) in tops.iter_mut().enumerate() {
                let s = &scores[qi * m..(qi + 1) * m];
                let mut bound = top.bound();
                for (j, &dot) in s.iter().enumerate() {
                    let d = match self.metric {
                        ScanMetric::InnerProduct => 1.0 - dot,
                        // Rounding can take a tiny distance below zero;
                        // NaN stays NaN (TopK drops it).
                        ScanMetric::L2 => match self.norms[qi] + row_norms[j] - 2.0 * dot {
                            d if d < 0.0 => 0.0,
                            d => d,
                        },
                    };
                    if d <= bound {
                        top.push(used[j], d);
                        bound = top.bound();
                    }
                }
            }
        }
        tops
    }
}
