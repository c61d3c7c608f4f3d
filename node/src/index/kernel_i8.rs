//! int8 code kernels for the INT8 graphs' walk.
//!
//! An INT8 graph measures its codes with usearch's built-in int8 metric,
//! reached through numkong's run-time dispatch on every distance. These
//! kernels replace it through usearch's custom-metric hook ([`register`]):
//! the same values (`1 - dot` for the inner product, the squared
//! Euclidean distance for L2, both summed exactly in 32-bit integers and
//! converted to f32 once), computed with AVX-512 VNNI (64 products per
//! instruction), AVX-512BW, AVX2, or a portable loop, chosen once at run
//! time. Integer sums are exact, so every variant returns the same value
//! bit for bit (kernel_i8 tests check each against an i64 reference).
//!
//! The VNNI dot treats one side as unsigned after adding 128 (`x ^ 0x80`,
//! exact for every i8, -128 included) and takes `128 · Σb` back off:
//! `Σ(a+128)·b − 128·Σb = Σa·b`. Every partial sum fits an i32 for
//! dimensions up to 4,096 (4,096 · 255 · 128 < 2^31).
use std::sync::OnceLock;

/// `(a, b, n) -> i32 sum`; callers guarantee both pointers are valid for
/// `n` bytes.
type Raw = unsafe fn(*const i8, *const i8, usize) -> i32;

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
            let bw = std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bw") && std::arch::is_x86_feature_detected!("avx512vl");
            if bw && std::arch::is_x86_feature_detected!("avx512vnni") {
                // SAFETY of the later calls: AVX-512F, BW, VL and VNNI are present.
                return Kernels { dot: x86::dot_vnni, l2sq: x86::sum_avx512bw::<true>, name: "avx512vnni" };
            }
            if bw {
                // SAFETY of the later calls: AVX-512F, BW and VL are present.
                return Kernels { dot: x86::sum_avx512bw::<false>, l2sq: x86::sum_avx512bw::<true>, name: "avx512bw" };
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY of the later calls: AVX2 is present.
                return Kernels { dot: x86::sum_avx2::<false>, l2sq: x86::sum_avx2::<true>, name: "avx2" };
            }
        }
        Kernels { dot: portable::dot, l2sq: portable::l2sq, name: "portable" }
    })
}

/// The instruction set the int8 kernels run on here.
pub fn isa() -> &'static str {
    kernels().name
}

/// Registers the int8 kernel for `l2` (else the inner product, `1 - dot`)
/// as an INT8 graph's metric. usearch does not save a custom metric, so
/// every graph created or loaded calls this again.
pub fn register(index: &mut usearch::Index, dim: usize, l2: bool) -> Result<(), cxx::Exception> {
    let k = kernels();
    let metric: Box<dyn Fn(*const i8, *const i8) -> f32 + Send + Sync> = if l2 {
        let f = k.l2sq;
        // SAFETY: usearch passes pointers to two codes of the graph's
        // dimension, `dim` bytes each.
        Box::new(move |a, b| unsafe { f(a, b, dim) } as f32)
    } else {
        let f = k.dot;
        // SAFETY: as above.
        Box::new(move |a, b| 1.0 - unsafe { f(a, b, dim) } as f32)
    };
    <i8 as usearch::VectorType>::change_metric(index, metric)
}

mod portable {
    pub unsafe fn dot(a: *const i8, b: *const i8, n: usize) -> i32 {
        // SAFETY: the caller guarantees `n` valid bytes behind each pointer.
        let (a, b) = unsafe { (std::slice::from_raw_parts(a, n), std::slice::from_raw_parts(b, n)) };
        a.iter().zip(b).map(|(&x, &y)| x as i32 * y as i32).sum()
    }

    pub unsafe fn l2sq(a: *const i8, b: *const i8, n: usize) -> i32 {
        // SAFETY: as in `dot`.
        let (a, b) = unsafe { (std::slice::from_raw_parts(a, n), std::slice::from_raw_parts(b, n)) };
        a.iter().zip(b).map(|(&x, &y)| (x as i32 - y as i32).pow(2)).sum()
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// The lanes below `left` (at most 64) of a 64-byte step.
    #[inline(always)]
    fn tail_mask(left: usize) -> __mmask64 {
        if left >= 64 {
            !0
        } else {
            (1u64 << left) - 1
        }
    }

    /// VNNI: `Σ(a ^ 0x80)·b` and `Σb` in two accumulators of 16 i32
    /// lanes, 64 bytes a step, the last step masked.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn dot_vnni(a: *const i8, b: *const i8, n: usize) -> i32 {
        // SAFETY (whole body): every load is masked to the bytes below `n`.
        unsafe {
            let flip = _mm512_set1_epi8(-128);
            let ones = _mm512_set1_epi8(1);
            let (mut prod, mut sum_b) = (_mm512_setzero_si512(), _mm512_setzero_si512());
            let mut i = 0;
            while i < n {
                let m = tail_mask(n - i);
                let x = _mm512_maskz_loadu_epi8(m, a.add(i) as *const _);
                let y = _mm512_maskz_loadu_epi8(m, b.add(i) as *const _);
                // Masked-off lanes: x = 0 turns into 128, but y = 0 there.
                prod = _mm512_dpbusd_epi32(prod, _mm512_xor_si512(x, flip), y);
                sum_b = _mm512_dpbusd_epi32(sum_b, ones, y);
                i += 64;
            }
            _mm512_reduce_add_epi32(prod) - 128 * _mm512_reduce_add_epi32(sum_b)
        }
    }

    /// Without VNNI: both sides widened to i16, `vpmaddwd` of the products
    /// (or, with `L2`, of the differences with themselves), 32 bytes a
    /// step, the last step masked.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn sum_avx512bw<const L2: bool>(a: *const i8, b: *const i8, n: usize) -> i32 {
        // SAFETY (whole body): every load is masked to the bytes below `n`.
        unsafe {
            let mut acc = _mm512_setzero_si512();
            let mut i = 0;
            while i < n {
                let m = tail_mask(n - i) as __mmask32;
                let x = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(m, a.add(i) as *const _));
                let y = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(m, b.add(i) as *const _));
                let (x, y) = if L2 {
                    let d = _mm512_sub_epi16(x, y);
                    (d, d)
                } else {
                    (x, y)
                };
                acc = _mm512_add_epi32(acc, _mm512_madd_epi16(x, y));
                i += 32;
            }
            _mm512_reduce_add_epi32(acc)
        }
    }

    #[target_feature(enable = "avx2")]
    unsafe fn hsum256(v: __m256i) -> i32 {
        let h = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let h = _mm_add_epi32(h, _mm_shuffle_epi32::<0b01_00_11_10>(h));
        let h = _mm_add_epi32(h, _mm_shuffle_epi32::<0b10_11_00_01>(h));
        _mm_cvtsi128_si32(h)
    }

    /// AVX2: 16 bytes a step widened to i16, `vpmaddwd` (of the differences
    /// with `L2`); a scalar tail.
    #[target_feature(enable = "avx2")]
    pub unsafe fn sum_avx2<const L2: bool>(a: *const i8, b: *const i8, n: usize) -> i32 {
        // SAFETY (whole body): vector loads read 16 bytes below `n`.
        unsafe {
            let mut acc = _mm256_setzero_si256();
            let mut i = 0;
            while i + 16 <= n {
                let x = _mm256_cvtepi8_epi16(_mm_loadu_si128(a.add(i) as *const _));
                let y = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.add(i) as *const _));
                let (x, y) = if L2 {
                    let d = _mm256_sub_epi16(x, y);
                    (d, d)
                } else {
                    (x, y)
                };
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(x, y));
                i += 16;
            }
            let mut total = hsum256(acc);
            while i < n {
                let (x, y) = (*a.add(i) as i32, *b.add(i) as i32);
                total += if L2 { (x - y) * (x - y) } else { x * y };
                i += 1;
            }
            total
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn variants() -> Vec<(&'static str, Raw, Raw)> {
        let mut v: Vec<(&'static str, Raw, Raw)> = vec![("portable", portable::dot, portable::l2sq)];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                v.push(("avx2", x86::sum_avx2::<false>, x86::sum_avx2::<true>));
            }
            let bw = std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bw") && std::arch::is_x86_feature_detected!("avx512vl");
            if bw {
                v.push(("avx512bw", x86::sum_avx512bw::<false>, x86::sum_avx512bw::<true>));
            }
            if bw && std::arch::is_x86_feature_detected!("avx512vnni") {
                v.push(("avx512vnni", x86::dot_vnni, x86::sum_avx512bw::<true>));
            }
        }
        v
    }

    fn codes(n: usize, seed: u64) -> Vec<i8> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (((s >> 32) % 255) as i32 - 127) as i8
            })
            .collect()
    }

    /// Integer sums are exact: every variant equals an i64 reference, at
    /// every length around the step sizes, with the extreme codes too.
    #[test]
    fn every_int8_kernel_equals_an_exact_reference() {
        let lengths: Vec<usize> = (0..=130).chain([255, 256, 257, 384, 768, 1000, 1536, 4096]).collect();
        for (name, dot, l2) in variants() {
            for &n in &lengths {
                let (mut a, mut b) = (codes(n, n as u64 + 3), codes(n, n as u64 + 1000));
                for extreme in [false, true] {
                    if extreme {
                        a.iter_mut().enumerate().for_each(|(i, x)| *x = if i % 2 == 0 { 127 } else { -127 });
                        b.iter_mut().enumerate().for_each(|(i, x)| *x = if i % 3 == 0 { 127 } else { -127 });
                    }
                    let want_dot: i64 = a.iter().zip(&b).map(|(&x, &y)| x as i64 * y as i64).sum();
                    let want_l2: i64 = a.iter().zip(&b).map(|(&x, &y)| (x as i64 - y as i64).pow(2)).sum();
                    // SAFETY: both codes hold `n` bytes and the variant's
                    // instruction set was detected above.
                    let (got_dot, got_l2) = unsafe { (dot(a.as_ptr(), b.as_ptr(), n), l2(a.as_ptr(), b.as_ptr(), n)) };
                    assert_eq!(got_dot as i64, want_dot, "{name} dot n={n} extreme={extreme}");
                    assert_eq!(got_l2 as i64, want_l2, "{name} l2 n={n} extreme={extreme}");
                }
            }
        }
    }

    /// A graph with the kernel registered gives the distances usearch's
    /// built-in int8 metric gives on the same codes (both are exact sums).
    #[test]
    fn a_registered_int8_graph_measures_like_usearchs_own() {
        let dim = 100;
        for l2 in [false, true] {
            let make = || {
                usearch::Index::new(&usearch::IndexOptions {
                    dimensions: dim,
                    metric: if l2 { usearch::MetricKind::L2sq } else { usearch::MetricKind::IP },
                    quantization: usearch::ScalarKind::I8,
                    connectivity: 16,
                    expansion_add: 64,
                    expansion_search: 64,
                    multi: false,
                })
                .unwrap()
            };
            let (builtin, mut ours) = (make(), make());
            register(&mut ours, dim, l2).unwrap();
            let rows: Vec<Vec<i8>> = (0..200).map(|i| codes(dim, i)).collect();
            for index in [&builtin, &ours] {
                index.reserve(rows.len()).unwrap();
                for (i, r) in rows.iter().enumerate() {
                    index.add(i as u64, r).unwrap();
                }
            }
            let q = codes(dim, 999);
            let (a, b) = (builtin.exact_search(&q, 10).unwrap(), ours.exact_search(&q, 10).unwrap());
            assert_eq!(a.distances, b.distances, "l2={l2}");
            let want: Vec<f32> = {
                let mut d: Vec<f32> = rows.iter().map(|r| if l2 { r.iter().zip(&q).map(|(&x, &y)| (x as i32 - y as i32).pow(2)).sum::<i32>() as f32 } else { 1.0 - r.iter().zip(&q).map(|(&x, &y)| x as i32 * y as i32).sum::<i32>() as f32 }).collect();
                d.sort_by(f32::total_cmp);
                d.truncate(10);
                d
            };
            assert_eq!(b.distances, want, "l2={l2}: the exact top 10");
        }
    }

    /// The kernels read only the `n` bytes they are given: codes placed
    /// at the very end of a page-sized buffer followed by an unmapped
    /// guard would fault otherwise; here the bytes past the end are set
    /// to values that would change the sum if read.
    #[test]
    fn int8_kernels_ignore_bytes_past_the_end() {
        for (name, dot, l2) in variants() {
            for n in [1usize, 15, 17, 31, 33, 63, 65, 100] {
                let mut a = codes(n, 5);
                let mut b = codes(n, 6);
                let (want_dot, want_l2) = unsafe { (portable::dot(a.as_ptr(), b.as_ptr(), n), portable::l2sq(a.as_ptr(), b.as_ptr(), n)) };
                a.extend(std::iter::repeat_n(127, 128));
                b.extend(std::iter::repeat_n(-127, 128));
                // SAFETY: both buffers hold at least `n` bytes; the variant
                // was detected above.
                let got = unsafe { (dot(a.as_ptr(), b.as_ptr(), n), l2(a.as_ptr(), b.as_ptr(), n)) };
                assert_eq!(got, (want_dot, want_l2), "{name} n={n}");
            }
        }
    }
}
