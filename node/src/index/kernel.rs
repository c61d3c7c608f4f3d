//! f32 distance kernels for the HNSW walk.
//!
//! usearch's built-in f32 kernels (numkong) widen every product to f64,
//! which halves the lanes per instruction, and on this fleet's AVX-512
//! machines they dispatch to the AVX2 variant (docs/benchmarks.md, "Where
//! a search's time goes"). The walk spends about 80% of its time in the
//! distance, so the f32 graphs register these kernels instead
//! ([`register`]): f32 products with f32 accumulation in four independent
//! FMA chains, AVX-512F or AVX2+FMA chosen once at run time, a portable
//! loop elsewhere. Accumulating in f32 over a few thousand dimensions
//! moves a distance by well under 1e-5 relative to an f64 reference
//! (kernel_tests.rs states and checks the bound); HNSW's ranking is
//! insensitive to that.
//!
//! The distances follow usearch's conventions: `1 - dot` for the inner
//! product (cosine vectors are stored as unit vectors) and the squared
//! Euclidean distance for L2.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// Off only in side-by-side benchmarks ([`set_enabled`]).
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Whether graphs created or loaded from now on register these kernels
/// (true unless a benchmark turned them off to measure usearch's own).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// For side-by-side benchmarks (`shoal-index-bench --kernels`): `false`
/// leaves usearch's built-in f32 kernels in graphs made after the call.
/// The node never calls it.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// `(a, b, n) -> value`; callers guarantee both pointers are valid for `n`
/// floats.
type Raw = unsafe fn(*const f32, *const f32, usize) -> f32;

struct Kernels {
    dot: Raw,
    l2sq: Raw,
    name: &'static str,
}

fn kernels() -> &'static Kernels {
    static K: OnceLock<Kernels> = OnceLock::new();
    K.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY of the later calls: AVX-512F is present.
                return Kernels { dot: x86::sum_avx512::<false>, l2sq: x86::sum_avx512::<true>, name: "avx512f" };
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                // SAFETY of the later calls: AVX2 and FMA are present.
                return Kernels { dot: x86::sum_avx2::<false>, l2sq: x86::sum_avx2::<true>, name: "avx2+fma" };
            }
        }
        Kernels { dot: portable::dot, l2sq: portable::l2sq, name: "portable" }
    })
}

/// The instruction set the kernels run on here (for status and benches).
pub fn isa() -> &'static str {
    kernels().name
}

/// Dot product of two equal-length slices.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    // SAFETY: both slices hold at least `n` floats.
    unsafe { (kernels().dot)(a.as_ptr(), b.as_ptr(), n) }
}

/// Squared Euclidean distance of two equal-length slices.
pub fn l2sq(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    // SAFETY: both slices hold at least `n` floats.
    unsafe { (kernels().l2sq)(a.as_ptr(), b.as_ptr(), n) }
}

/// Registers the kernel for `l2` (else the inner product, `1 - dot`) as an
/// f32 graph's metric. usearch does not save a custom metric, so every
/// graph created or loaded calls this again.
pub fn register(index: &mut usearch::Index, dim: usize, l2: bool) -> Result<(), cxx::Exception> {
    let k = kernels();
    let metric: Box<dyn Fn(*const f32, *const f32) -> f32 + Send + Sync> = if l2 {
        let f = k.l2sq;
        // SAFETY: usearch passes pointers to two vectors of the graph's
        // dimension, `dim`.
        Box::new(move |a, b| unsafe { f(a, b, dim) })
    } else {
        let f = k.dot;
        // SAFETY: as above.
        Box::new(move |a, b| 1.0 - unsafe { f(a, b, dim) })
    };
    <f32 as usearch::VectorType>::change_metric(index, metric)
}

mod portable {
    pub unsafe fn dot(a: *const f32, b: *const f32, n: usize) -> f32 {
        // SAFETY: the caller guarantees `n` valid floats behind each pointer.
        let (a, b) = unsafe { (std::slice::from_raw_parts(a, n), std::slice::from_raw_parts(b, n)) };
        let mut acc = [0f32; 8];
        let mut ca = a.chunks_exact(8);
        let mut cb = b.chunks_exact(8);
        for (x, y) in (&mut ca).zip(&mut cb) {
            for i in 0..8 {
                acc[i] += x[i] * y[i];
            }
        }
        let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
        acc.iter().sum::<f32>() + tail
    }

    pub unsafe fn l2sq(a: *const f32, b: *const f32, n: usize) -> f32 {
        // SAFETY: as in `dot`.
        let (a, b) = unsafe { (std::slice::from_raw_parts(a, n), std::slice::from_raw_parts(b, n)) };
        let mut acc = [0f32; 8];
        let mut ca = a.chunks_exact(8);
        let mut cb = b.chunks_exact(8);
        for (x, y) in (&mut ca).zip(&mut cb) {
            for i in 0..8 {
                let d = x[i] - y[i];
                acc[i] += d * d;
            }
        }
        let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| (x - y) * (x - y)).sum();
        acc.iter().sum::<f32>() + tail
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Four 16-lane accumulators (64 floats per step), then one 16-lane
    /// step, then a masked tail.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn sum_avx512<const L2: bool>(a: *const f32, b: *const f32, n: usize) -> f32 {
        #[inline(always)]
        unsafe fn term<const L2: bool>(x: __m512, y: __m512, acc: __m512) -> __m512 {
            if L2 {
                let d = _mm512_sub_ps(x, y);
                _mm512_fmadd_ps(d, d, acc)
            } else {
                _mm512_fmadd_ps(x, y, acc)
            }
        }
        // SAFETY (whole body): every load reads lanes below `n`; the tail
        // load is masked to the lanes that remain.
        unsafe {
            let (mut s0, mut s1, mut s2, mut s3) = (_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps());
            let mut i = 0;
            while i + 64 <= n {
                s0 = term::<L2>(_mm512_loadu_ps(a.add(i)), _mm512_loadu_ps(b.add(i)), s0);
                s1 = term::<L2>(_mm512_loadu_ps(a.add(i + 16)), _mm512_loadu_ps(b.add(i + 16)), s1);
                s2 = term::<L2>(_mm512_loadu_ps(a.add(i + 32)), _mm512_loadu_ps(b.add(i + 32)), s2);
                s3 = term::<L2>(_mm512_loadu_ps(a.add(i + 48)), _mm512_loadu_ps(b.add(i + 48)), s3);
                i += 64;
            }
            while i + 16 <= n {
                s0 = term::<L2>(_mm512_loadu_ps(a.add(i)), _mm512_loadu_ps(b.add(i)), s0);
                i += 16;
            }
            if i < n {
                let mask = ((1u32 << (n - i)) - 1) as __mmask16;
                s1 = term::<L2>(_mm512_maskz_loadu_ps(mask, a.add(i)), _mm512_maskz_loadu_ps(mask, b.add(i)), s1);
            }
            _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)))
        }
    }


    /// Four 8-lane accumulators (32 floats per step), then 8-lane steps,
    /// then a scalar tail.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn sum_avx2<const L2: bool>(a: *const f32, b: *const f32, n: usize) -> f32 {
        #[inline(always)]
        unsafe fn term<const L2: bool>(x: __m256, y: __m256, acc: __m256) -> __m256 {
            if L2 {
                let d = _mm256_sub_ps(x, y);
                _mm256_fmadd_ps(d, d, acc)
            } else {
                _mm256_fmadd_ps(x, y, acc)
            }
        }
        // SAFETY (whole body): every vector load reads lanes below `n`.
        unsafe {
            let (mut s0, mut s1, mut s2, mut s3) = (_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps());
            let mut i = 0;
            while i + 32 <= n {
                s0 = term::<L2>(_mm256_loadu_ps(a.add(i)), _mm256_loadu_ps(b.add(i)), s0);
                s1 = term::<L2>(_mm256_loadu_ps(a.add(i + 8)), _mm256_loadu_ps(b.add(i + 8)), s1);
                s2 = term::<L2>(_mm256_loadu_ps(a.add(i + 16)), _mm256_loadu_ps(b.add(i + 16)), s2);
                s3 = term::<L2>(_mm256_loadu_ps(a.add(i + 24)), _mm256_loadu_ps(b.add(i + 24)), s3);
                i += 32;
            }
            while i + 8 <= n {
                s0 = term::<L2>(_mm256_loadu_ps(a.add(i)), _mm256_loadu_ps(b.add(i)), s0);
                i += 8;
            }
            let s = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
            let h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
            let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
            let h = _mm_add_ss(h, _mm_shuffle_ps::<1>(h, h));
            let mut total = _mm_cvtss_f32(h);
            while i < n {
                let (x, y) = (*a.add(i), *b.add(i));
                total += if L2 { (x - y) * (x - y) } else { x * y };
                i += 1;
            }
            total
        }
    }

}

#[cfg(test)]
#[path = "kernel_tests.rs"]
mod tests;
