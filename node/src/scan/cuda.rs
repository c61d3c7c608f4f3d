//! [`Accel`] on an NVIDIA GPU through cudarc (cargo feature `cuda`).
//!
//! NOT YET RUN ON A GPU: no device machine was lent to the task that wrote
//! it (docs/decisions.md, "The CUDA backend"). It builds on every machine
//! (cudarc loads libcuda, libcublas and libnvrtc at run time) and
//! [`CudaAccel::open`] checks for each library before its first call,
//! because cudarc panics on a call into a library that is absent.
//!
//! A scan of `nq` queries over a buffer of rows runs in chunks of rows
//! sized so the score matrix stays under [`SCORE_BYTES`]:
//! 1. cuBLAS `sgemm`: scores (nq x R, row-major) = queries · chunkᵀ, f32;
//! 2. the NVRTC kernel `shoal_topk`: one block per query, each of its
//!    [`THREADS`] threads keeps the `k` best rows the mask admits among
//!    the rows it strides over (distance from the product as the host
//!    reference computes it, ties by row);
//! 3. the threads' lists (nq x THREADS x k) come back and the host merges
//!    them into each query's top-k.
use std::sync::Arc;

use cudarc::cublas::{sys::cublasOperation_t, CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DriverError, LaunchConfig, PushKernelArg};
use parking_lot::Mutex;

use super::device::{Accel, DeviceError, DeviceRows, DEVICE_MAX_K};
use super::{ScanMetric, TopK};
use crate::index::Hit;

/// Threads per query in the top-k kernel.
pub const THREADS: u32 = 128;
/// The largest score matrix of one chunk, in bytes.
pub const SCORE_BYTES: usize = 256 << 20;

const TOPK_SRC: &str = r#"
#define KMAX 128
extern "C" __global__ void shoal_topk(const float* __restrict__ scores, int rows, int first,
        const unsigned long long* __restrict__ mask, const float* __restrict__ qnorms,
        const float* __restrict__ rnorms, int l2, int k,
        float* __restrict__ out_d, unsigned int* __restrict__ out_r) {
    const int q = blockIdx.x;
    const int t = threadIdx.x;
    float bd[KMAX];
    unsigned int br[KMAX];
    int n = 0;
    const float* s = scores + (size_t)q * rows;
    for (int i = t; i < rows; i += blockDim.x) {
        const unsigned int r = (unsigned int)(first + i);
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
    const size_t base = ((size_t)q * blockDim.x + t) * k;
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
    /// One scan or write at a time on the stream.
    busy: Mutex<()>,
}

impl CudaAccel {
    /// Opens device `ordinal`, or says why there is none.
    pub fn open(ordinal: usize) -> Result<Self, DeviceError> {
        // SAFETY: these only try to load each library (libloading).
        let present = unsafe { [("libcuda (the NVIDIA driver)", cudarc::driver::sys::is_culib_present()), ("libcublas", cudarc::cublas::sys::is_culib_present()), ("libnvrtc", cudarc::nvrtc::sys::is_culib_present())] };
        if let Some((lib, _)) = present.iter().find(|(_, here)| !here) {
            return Err(DeviceError::Unavailable(format!("{lib} not found")));
        }
        // cudarc panics on some driver states it does not expect; a panic
        // here must not take the node down.
        std::panic::catch_unwind(|| Self::open_present(ordinal)).unwrap_or_else(|_| Err(DeviceError::Unavailable("the CUDA binding panicked while opening the device".into())))
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
        let name = format!("cuda:{ordinal} {}", ctx.name().unwrap_or_else(|_| "unknown".into()));
        Ok(CudaAccel { inner: Arc::new(Inner { ctx, stream, blas, topk, busy: Mutex::new(()) }), name })
    }
}

impl Accel for CudaAccel {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn memory(&self) -> Option<(u64, u64)> {
        let (free, total) = self.inner.ctx.mem_get_info().ok()?;
        Some(((total - free.min(total)) as u64, total as u64))
    }

    fn alloc(&self, rows: usize, dim: usize) -> Result<Box<dyn DeviceRows>, DeviceError> {
        let _b = self.inner.busy.lock();
        let floats = rows.checked_mul(dim).ok_or_else(|| DeviceError::OutOfMemory(format!("{rows} rows of {dim}")))?;
        let s = &self.inner.stream;
        let data = s.alloc_zeros::<f32>(floats).map_err(driver)?;
        let norms = s.alloc_zeros::<f32>(rows).map_err(driver)?;
        Ok(Box::new(CudaRows { inner: self.inner.clone(), dim, rows, data, norms }))
    }
}

struct CudaRows {
    inner: Arc<Inner>,
    dim: usize,
    rows: usize,
    data: CudaSlice<f32>,
    norms: CudaSlice<f32>,
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
        if queries.len() != nq * dim || mask.len() * 64 < self.rows {
            return Err(DeviceError::Fault(format!("{} floats for {nq} queries of {dim}, a mask of {} words for {} rows", queries.len(), mask.len(), self.rows)));
        }
        let qnorms: Vec<f32> = queries.chunks_exact(dim).map(|q| crate::index::kernel::dot(q, q)).collect();
        // The highest admitted row bounds the rows scanned.
        let Some(end) = mask.iter().enumerate().rev().find(|(_, w)| **w != 0).map(|(i, w)| i * 64 + 64 - w.leading_zeros() as usize) else {
            return Ok(vec![vec![]; nq]);
        };
        let end = end.min(self.rows);
        let chunk = (SCORE_BYTES / 4 / nq).clamp(1, end);
        let _b = self.inner.busy.lock();
        let s = &self.inner.stream;
        let q_dev = s.clone_htod(queries).map_err(driver)?;
        let qn_dev = s.clone_htod(&qnorms).map_err(driver)?;
        let mask_dev = s.clone_htod(mask).map_err(driver)?;
        let mut scores = s.alloc_zeros::<f32>(nq * chunk).map_err(driver)?;
        let lists = nq * THREADS as usize * k;
        let mut out_d = s.alloc_zeros::<f32>(lists).map_err(driver)?;
        let mut out_r = s.alloc_zeros::<u32>(lists).map_err(driver)?;
        let mut tops: Vec<TopK> = (0..nq).map(|_| TopK::new(k)).collect();
        let l2 = i32::from(metric == ScanMetric::L2);
        let (nq_i, k_i, dim_i) = (nq as i32, k as i32, dim as i32);
        let mut first = 0usize;
        while first < end {
            let r = chunk.min(end - first);
            let r_i = r as i32;
            // Column-major: scoresᵀ (r x nq) = chunk (dim x r)ᵀ · queries
            // (dim x nq), which is scores (nq x r) row-major.
            let cfg = GemmConfig { transa: cublasOperation_t::CUBLAS_OP_T, transb: cublasOperation_t::CUBLAS_OP_N, m: r_i, n: nq_i, k: dim_i, alpha: 1.0f32, lda: dim_i, ldb: dim_i, beta: 0.0f32, ldc: r_i };
            let a = self.data.slice(first * dim..(first + r) * dim);
            // SAFETY: a covers r rows of dim, q_dev nq of dim, scores
            // nq * chunk >= nq * r floats: the extents the strides address.
            unsafe { self.inner.blas.gemm(cfg, &a, &q_dev, &mut scores) }.map_err(|e| DeviceError::Fault(format!("cuBLAS sgemm: {e}")))?;
            let first_i = first as i32;
            let mut launch = s.launch_builder(&self.inner.topk);
            launch.arg(&scores).arg(&r_i).arg(&first_i).arg(&mask_dev).arg(&qn_dev).arg(&self.norms).arg(&l2).arg(&k_i).arg(&mut out_d).arg(&mut out_r);
            let cfg = LaunchConfig { grid_dim: (nq as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
            // SAFETY: the kernel reads scores[q * r + i] for i < r, mask
            // words up to row first + r - 1 < rows, qnorms[q], rnorms
            // below rows, and writes nq * THREADS * k entries of each out.
            unsafe { launch.launch(cfg) }.map_err(driver)?;
            let d = s.clone_dtoh(&out_d).map_err(driver)?;
            let rr = s.clone_dtoh(&out_r).map_err(driver)?;
            s.synchronize().map_err(driver)?;
            for (qi, top) in tops.iter_mut().enumerate() {
                let at = qi * THREADS as usize * k;
                for (dist, row) in d[at..at + THREADS as usize * k].iter().zip(&rr[at..at + THREADS as usize * k]) {
                    if *row != u32::MAX {
                        top.push(u64::from(*row), *dist);
                    }
                }
            }
            first += r;
        }
        Ok(tops.into_iter().map(TopK::into_sorted).collect())
    }
}
