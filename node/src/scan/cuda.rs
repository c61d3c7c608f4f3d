//! [`Accel`] on an NVIDIA GPU through cudarc (cargo feature `cuda`).
//!
//! NOT YET RUN ON A GPU: no device machine was lent to the task that wrote
//! it (docs/decisions.md, "The CUDA backend"). It builds on every machine
//! (cudarc loads libcuda, libcublas and libnvrtc at run time) and
//! [`CudaAccel::open`] checks for each library before its first call,
//! because cudarc panics on a call into a library that is absent.
//!
//! A scan of `nq` queries runs over the rows from the lowest the mask
//! admits to the highest, in chunks sized so the score matrix stays under
//! [`SCORE_BYTES`] (chunks the mask admits nothing of are skipped):
//! 1. cuBLAS `sgemm`: scores (nq x R, row-major) = queries · chunkᵀ, f32;
//! 2. the NVRTC kernel `shoal_topk`: a grid of queries x slabs of the
//!    chunk (at least twice as many blocks as multiprocessors); each of a
//!    block's [`THREADS`] threads keeps the `k` best rows the mask admits
//!    among those it strides over (distance from the product as the host
//!    reference computes it, ties by row), carrying its list on the
//!    device from chunk to chunk;
//! 3. after the last chunk the lists come back once and the host merges
//!    them into each query's top-k.
//!
//! At open, [`super::device::self_test`] compares its scans with the host
//! reference's on random rows (both metrics, several `k` and batch sizes,
//! a mask with gaps, chunks crossed); a device that disagrees is not
//! used.
use std::sync::Arc;

use cudarc::cublas::{sys::cublasOperation_t, CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DriverError, LaunchConfig, PushKernelArg};
use parking_lot::Mutex;

use super::device::{Accel, DeviceError, DeviceRows, DEVICE_MAX_K};
use super::{ScanMetric, TopK};
use crate::index::Hit;

/// Threads per block of the top-k kernel.
pub const THREADS: u32 = 128;
/// The largest score matrix of one chunk, in bytes.
pub const SCORE_BYTES: usize = 256 << 20;
/// The largest candidate lists of one launch group, in bytes.
pub const LIST_BYTES: usize = 256 << 20;
/// The most blocks per query (slabs of a chunk's rows).
pub const MAX_SLABS: usize = 64;

const TOPK_SRC: &str = r#"
#define KMAX 128
// Block (q, y) keeps, per thread, the k best rows it strides over in slab
// y of the chunk: rows first + [y * per, (y + 1) * per). With `resume` it
// continues the lists a launch over the previous chunk left in out_d and
// out_r (row 0xffffffff: no entry).
extern "C" __global__ void shoal_topk(const float* __restrict__ scores, unsigned int rows, unsigned int first,
        const unsigned long long* __restrict__ mask, const float* __restrict__ qnorms,
        const float* __restrict__ rnorms, int l2, int k, int resume,
        float* __restrict__ out_d, unsigned int* __restrict__ out_r) {
    const unsigned int q = blockIdx.x;
    const unsigned int y = blockIdx.y;
    const unsigned int t = threadIdx.x;
    const unsigned int per = (rows + gridDim.y - 1) / gridDim.y;
    const unsigned int lo = y * per;
    const unsigned int hi = min(rows, lo + per);
    const size_t base = (((size_t)q * gridDim.y + y) * blockDim.x + t) * k;
    float bd[KMAX];
    unsigned int br[KMAX];
    int n = 0;
    if (resume) {
        while (n < k && out_r[base + n] != 0xffffffffu) {
            bd[n] = out_d[base + n];
            br[n] = out_r[base + n];
            n++;
        }
    }
    const float* s = scores + (size_t)q * rows;
    for (unsigned int i = lo + t; i < hi; i += blockDim.x) {
        const unsigned int r = first + i;
        if (!((mask[r >> 6] >> (r & 63)) & 1ull)) continue;
        const float dot = s[i];
        float d;
        if (l2) {
            d = qnorms[q] + rnorms[r] - 2.0f * dot;
            if (d < 0.0f) d = 0.0f;
        } else {
            d = 1.0f - dot;
        }
        if (d != d) continue;
        if (n == k) {
            if (d > bd[n - 1] || (d == bd[n - 1] && r > br[n - 1])) continue;
            n--;
        }
        int j = n;
        while (j > 0 && (bd[j - 1] > d || (bd[j - 1] == d && br[j - 1] > r))) {
            bd[j] = bd[j - 1];
            br[j] = br[j - 1];
            j--;
        }
        bd[j] = d;
        br[j] = r;
        n++;
    }
    for (int j = 0; j < k; j++) {
        out_d[base + j] = j < n ? bd[j] : __int_as_float(0x7f800000);
        out_r[base + j] = j < n ? br[j] : 0xffffffffu;
    }
}
"#;

fn driver(e: DriverError) -> DeviceError {
    if e.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
        DeviceError::OutOfMemory(e.to_string())
    } else {
        DeviceError::Fault(e.to_string())
    }
}

/// One CUDA device: a context, a stream, cuBLAS on that stream, and the
/// top-k kernel. Calls on one device run one at a time.
pub struct CudaAccel {
    inner: Arc<Inner>,
    name: String,
}

struct Inner {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    topk: CudaFunction,
    /// Streaming multiprocessors: a scan launches at least twice as many
    /// blocks.
    sms: u32,
    /// One scan or write at a time on the stream.
    busy: Mutex<()>,
}

impl CudaAccel {
    /// Opens device `ordinal` and checks its scans against the host
    /// reference ([`super::device::self_test`]), or says why there is
    /// none.
    pub fn open(ordinal: usize) -> Result<Self, DeviceError> {
        // SAFETY: these only try to load each library (libloading).
        let present = unsafe { [("libcuda (the NVIDIA driver)", cudarc::driver::sys::is_culib_present()), ("libcublas", cudarc::cublas::sys::is_culib_present()), ("libnvrtc", cudarc::nvrtc::sys::is_culib_present())] };
        if let Some((lib, _)) = present.iter().find(|(_, here)| !here) {
            return Err(DeviceError::Unavailable(format!("{lib} not found")));
        }
        // cudarc panics on some driver states it does not expect; a panic
        // here must not take the node down.
        let accel = std::panic::catch_unwind(|| Self::open_present(ordinal)).unwrap_or_else(|_| Err(DeviceError::Unavailable("the CUDA binding panicked while opening the device".into())))?;
        let mut dev = accel.rows(SELF_TEST_ROWS, SELF_TEST_DIM, SELF_TEST_CHUNK)?;
        let mut reference = super::host::HostAccel::new().alloc(SELF_TEST_ROWS, SELF_TEST_DIM)?;
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| super::device::self_test(dev.as_mut(), reference.as_mut(), SELF_TEST_DIM))).unwrap_or_else(|_| Err(DeviceError::Fault("the self-test panicked".into())))?;
        Ok(accel)
    }

    fn open_present(ordinal: usize) -> Result<Self, DeviceError> {
        let count = CudaContext::device_count().map_err(|e| DeviceError::Unavailable(e.to_string()))?;
        if count <= ordinal as i32 {
            return Err(DeviceError::Unavailable(format!("{count} CUDA devices, none with ordinal {ordinal}")));
        }
        let ctx = CudaContext::new(ordinal).map_err(driver)?;
        let stream = ctx.new_stream().map_err(driver)?;
        let blas = CudaBlas::new(stream.clone()).map_err(|e| DeviceError::Fault(format!("cuBLAS: {e}")))?;
        let ptx = cudarc::nvrtc::compile_ptx(TOPK_SRC).map_err(|e| DeviceError::Fault(format!("NVRTC: {e}")))?;
        let module = ctx.load_module(ptx).map_err(driver)?;
        let topk = module.load_function("shoal_topk").map_err(driver)?;
        let sms = ctx.attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT).map_err(driver)?.max(1) as u32;
        let name = format!("cuda:{ordinal} {}", ctx.name().unwrap_or_else(|_| "unknown".into()));
        Ok(CudaAccel { inner: Arc::new(Inner { ctx, stream, blas, topk, sms, busy: Mutex::new(()) }), name })
    }

    fn rows(&self, rows: usize, dim: usize, max_chunk: usize) -> Result<Box<dyn DeviceRows>, DeviceError> {
        let _b = self.inner.busy.lock();
        let floats = rows.checked_mul(dim).ok_or_else(|| DeviceError::OutOfMemory(format!("{rows} rows of {dim}")))?;
        let s = &self.inner.stream;
        let data = s.alloc_zeros::<f32>(floats).map_err(driver)?;
        let norms = s.alloc_zeros::<f32>(rows).map_err(driver)?;
        Ok(Box::new(CudaRows { inner: self.inner.clone(), dim, rows, data, norms, max_chunk }))
    }
}

/// The self-test's rows and dimensions, and its chunk (small, so its scans
/// cross chunks as large ones do).
const SELF_TEST_ROWS: usize = 3_000;
const SELF_TEST_DIM: usize = 40;
const SELF_TEST_CHUNK: usize = 700;

impl Accel for CudaAccel {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn memory(&self) -> Option<(u64, u64)> {
        let (free, total) = self.inner.ctx.mem_get_info().ok()?;
        Some(((total - free.min(total)) as u64, total as u64))
    }

    fn alloc(&self, rows: usize, dim: usize) -> Result<Box<dyn DeviceRows>, DeviceError> {
        self.rows(rows, dim, usize::MAX)
    }
}

struct CudaRows {
    inner: Arc<Inner>,
    dim: usize,
    rows: usize,
    data: CudaSlice<f32>,
    norms: CudaSlice<f32>,
    /// The most rows one product covers (besides the score-matrix bound).
    max_chunk: usize,
}

/// Whether any row of `first..end` is set in `mask`.
fn any_set(mask: &[u64], first: usize, end: usize) -> bool {
    (first / 64..end.div_ceil(64)).any(|w| {
        let lo = if w == first / 64 { first % 64 } else { 0 };
        let hi = if w == end / 64 { end % 64 } else { 64 };
        let bits = mask.get(w).copied().unwrap_or(0) >> lo << lo;
        let bits = if hi < 64 { bits & ((1u64 << hi) - 1) } else { bits };
        bits != 0
    })
}

impl DeviceRows for CudaRows {
    fn capacity(&self) -> usize {
        self.rows
    }

    fn bytes(&self) -> usize {
        (self.rows * self.dim + self.rows) * 4
    }

    fn grow(&mut self, rows: usize) -> Result<(), DeviceError> {
        if rows <= self.rows {
            return Ok(());
        }
        let _b = self.inner.busy.lock();
        let s = &self.inner.stream;
        let floats = rows.checked_mul(self.dim).ok_or_else(|| DeviceError::OutOfMemory(format!("{rows} rows of {}", self.dim)))?;
        let mut data = s.alloc_zeros::<f32>(floats).map_err(driver)?;
        let mut norms = s.alloc_zeros::<f32>(rows).map_err(driver)?;
        s.memcpy_dtod(&self.data, &mut data.slice_mut(..self.rows * self.dim)).map_err(driver)?;
        s.memcpy_dtod(&self.norms, &mut norms.slice_mut(..self.rows)).map_err(driver)?;
        self.data = data;
        self.norms = norms;
        self.rows = rows;
        Ok(())
    }

    fn write(&mut self, first: usize, data: &[f32], norms: &[f32]) -> Result<(), DeviceError> {
        let n = norms.len();
        if data.len() != n * self.dim || first.checked_add(n).is_none_or(|end| end > self.rows) {
            return Err(DeviceError::Fault(format!("write of {n} rows at {first} past {} rows", self.rows)));
        }
        let _b = self.inner.busy.lock();
        let s = &self.inner.stream;
        s.memcpy_htod(data, &mut self.data.slice_mut(first * self.dim..(first + n) * self.dim)).map_err(driver)?;
        s.memcpy_htod(norms, &mut self.norms.slice_mut(first..first + n)).map_err(driver)?;
        Ok(())
    }

    fn top_k(&mut self, queries: &[f32], nq: usize, mask: &[u64], k: usize, metric: ScanMetric) -> Result<Vec<Vec<Hit>>, DeviceError> {
        let dim = self.dim;
        if k == 0 || nq == 0 || self.rows == 0 {
            return Ok(vec![vec![]; nq]);
        }
        if k > DEVICE_MAX_K {
            return Err(DeviceError::Unsupported(format!("k {k} above {DEVICE_MAX_K}")));
        }
        if queries.len() != nq * dim {
            return Err(DeviceError::Fault(format!("{} floats for {nq} queries of {dim}", queries.len())));
        }
        // Rows from the lowest admitted to the highest (the mask may be
        // shorter than the buffer: rows past it are not admitted).
        let set = |i: usize, w: &u64| (*w != 0).then_some(i);
        let (Some(lo_word), Some(hi_word)) = (mask.iter().enumerate().find_map(|(i, w)| set(i, w)), mask.iter().enumerate().rev().find_map(|(i, w)| set(i, w))) else {
            return Ok(vec![vec![]; nq]);
        };
        let start = lo_word * 64 + mask[lo_word].trailing_zeros() as usize;
        let end = (hi_word * 64 + 64 - mask[hi_word].leading_zeros() as usize).min(self.rows);
        if start >= end {
            return Ok(vec![vec![]; nq]);
        }
        let threads = THREADS as usize;
        // Queries per launch group, so each group's candidate lists fit
        // LIST_BYTES; slabs per query, so a launch has at least twice as
        // many blocks as the device has multiprocessors.
        let group = (LIST_BYTES / (threads * k * 8)).max(1).min(nq);
        let _b = self.inner.busy.lock();
        let s = &self.inner.stream;
        let mask_dev = s.clone_htod(mask).map_err(driver)?;
        let mut out = Vec::with_capacity(nq);
        for qs in queries.chunks(group * dim) {
            let g = qs.len() / dim;
            let slabs = (2 * self.inner.sms as usize).div_ceil(g).clamp(1, MAX_SLABS).min((LIST_BYTES / (g * threads * k * 8)).max(1));
            let qnorms: Vec<f32> = qs.chunks_exact(dim).map(|q| crate::index::kernel::dot(q, q)).collect();
            let q_dev = s.clone_htod(qs).map_err(driver)?;
            let qn_dev = s.clone_htod(&qnorms).map_err(driver)?;
            let chunk = (SCORE_BYTES / 4 / g).clamp(1, end - start).min(self.max_chunk);
            // SAFETY: every element is written before it is read: the
            // product fills the scores a launch reads, and the first launch
            // (resume = 0) writes every list entry.
            let mut scores = unsafe { s.alloc::<f32>(g * chunk) }.map_err(driver)?;
            let lists = g * slabs * threads * k;
            let mut out_d = unsafe { s.alloc::<f32>(lists) }.map_err(driver)?;
            let mut out_r = unsafe { s.alloc::<u32>(lists) }.map_err(driver)?;
            let l2 = i32::from(metric == ScanMetric::L2);
            let (g_i, k_i, dim_i) = (g as i32, k as i32, dim as i32);
            let mut resume = 0i32;
            let mut first = start;
            while first < end {
                let r = chunk.min(end - first);
                if !any_set(mask, first, first + r) {
                    first += r;
                    continue;
                }
                let (r_i, r_u, first_u) = (r as i32, r as u32, first as u32);
                // Column-major: scoresᵀ (r x g) = chunk (dim x r)ᵀ ·
                // queries (dim x g), which is scores (g x r) row-major.
                let cfg = GemmConfig { transa: cublasOperation_t::CUBLAS_OP_T, transb: cublasOperation_t::CUBLAS_OP_N, m: r_i, n: g_i, k: dim_i, alpha: 1.0f32, lda: dim_i, ldb: dim_i, beta: 0.0f32, ldc: r_i };
                let a = self.data.slice(first * dim..(first + r) * dim);
                // SAFETY: a covers r rows of dim, q_dev g of dim, scores
                // g * chunk >= g * r floats: the extents the strides address.
                unsafe { self.inner.blas.gemm(cfg, &a, &q_dev, &mut scores) }.map_err(|e| DeviceError::Fault(format!("cuBLAS sgemm: {e}")))?;
                let mut launch = s.launch_builder(&self.inner.topk);
                launch.arg(&scores).arg(&r_u).arg(&first_u).arg(&mask_dev).arg(&qn_dev).arg(&self.norms).arg(&l2).arg(&k_i).arg(&resume).arg(&mut out_d).arg(&mut out_r);
                let cfg = LaunchConfig { grid_dim: (g as u32, slabs as u32, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
                // SAFETY: the kernel reads scores[q * r + i] for i < r, mask
                // words of rows first..first + r (below `end`, which the
                // mask covers), qnorms[q], rnorms of rows below self.rows,
                // and writes g * slabs * THREADS * k entries of each list.
                unsafe { launch.launch(cfg) }.map_err(driver)?;
                resume = 1;
                first += r;
            }
            if resume == 0 {
                out.extend((0..g).map(|_| vec![]));
                continue;
            }
            let d = s.clone_dtoh(&out_d).map_err(driver)?;
            let rr = s.clone_dtoh(&out_r).map_err(driver)?;
            s.synchronize().map_err(driver)?;
            let per = slabs * threads * k;
            for q in 0..g {
                let mut top = TopK::new(k);
                for (dist, row) in d[q * per..(q + 1) * per].iter().zip(&rr[q * per..(q + 1) * per]) {
                    if *row != u32::MAX {
                        top.push(u64::from(*row), *dist);
                    }
                }
                out.push(top.into_sorted());
            }
        }
        Ok(out)
    }
}
