//! Each kernel this CPU can run, against an f64 reference.
//!
//! Tolerance: a kernel splits the sum over at most 8 lanes' worth of
//! independent partial sums in the worst (portable) case, so its rounding
//! error is at most `(n / 8 + 8) · ε_f32 · Σ|aᵢ·bᵢ|` (the standard bound
//! for recursive summation of `n / 8` terms plus the final reduction).
//! The bound holds whatever order a kernel adds in, so it does not depend
//! on which instruction set the machine picked.
use super::*;

fn reference(a: &[f32], b: &[f32], l2: bool) -> (f64, f64) {
    let terms = a.iter().zip(b).map(|(&x, &y)| if l2 { (x as f64 - y as f64).powi(2) } else { x as f64 * y as f64 });
    terms.fold((0.0, 0.0), |(s, m), t| (s + t, m + t.abs()))
}

fn data(n: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    ((0..n).map(|_| next() * 3.0).collect(), (0..n).map(|_| next()).collect())
}

fn variants() -> Vec<(&'static str, Raw, Raw)> {
    let mut v: Vec<(&'static str, Raw, Raw)> = vec![("portable", portable::dot, portable::l2sq)];
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            v.push(("avx2", x86::sum_avx2::<false>, x86::sum_avx2::<true>));
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            v.push(("avx512f", x86::sum_avx512::<false>, x86::sum_avx512::<true>));
        }
    }
    v
}

#[test]
fn every_kernel_matches_an_f64_reference_within_its_bound() {
    let lengths: Vec<usize> = (0..=130).chain([255, 256, 257, 384, 768, 1000, 1536, 4096]).collect();
    for (name, dot_k, l2_k) in variants() {
        for &n in &lengths {
            let (a, b) = data(n, n as u64 + 7);
            for (l2, k) in [(false, dot_k), (true, l2_k)] {
                let (exact, mass) = reference(&a, &b, l2);
                // SAFETY: both vectors hold `n` floats and the variant's
                // instruction set was detected above.
                let got = unsafe { k(a.as_ptr(), b.as_ptr(), n) } as f64;
                let bound = (n as f64 / 8.0 + 8.0) * f32::EPSILON as f64 * mass + 1e-30;
                assert!((got - exact).abs() <= bound, "{name} l2={l2} n={n}: {got} vs {exact} (bound {bound})");
            }
        }
    }
}

#[test]
fn kernels_read_no_lane_past_the_end() {
    // A vector ending on the last float of its allocation: a kernel that
    // loaded a full lane past `n` would read garbage (or fault) and miss
    // the reference.
    for (name, dot_k, _) in variants() {
        for n in [1usize, 15, 17, 33, 63, 65] {
            let (a, b) = data(n, 3);
            let (a, b) = (a.into_boxed_slice(), b.into_boxed_slice());
            let (exact, mass) = reference(&a, &b, false);
            // SAFETY: as above.
            let got = unsafe { dot_k(a.as_ptr(), b.as_ptr(), n) } as f64;
            assert!((got - exact).abs() <= (n as f64 / 8.0 + 8.0) * f32::EPSILON as f64 * mass + 1e-30, "{name} n={n}");
        }
    }
}

#[test]
fn a_registered_graph_ranks_like_the_exact_distance() {
    let dim = 100;
    for l2 in [false, true] {
        let mut index = usearch::Index::new(&usearch::IndexOptions {
            dimensions: dim,
            metric: if l2 { usearch::MetricKind::L2sq } else { usearch::MetricKind::IP },
            quantization: usearch::ScalarKind::F32,
            connectivity: 16,
            expansion_add: 128,
            expansion_search: 64,
            multi: false,
        })
        .unwrap();
        register(&mut index, dim, l2).unwrap();
        index.reserve(300).unwrap();
        let rows: Vec<Vec<f32>> = (0..300).map(|i| data(dim, i).0).collect();
        for (i, r) in rows.iter().enumerate() {
            index.add(i as u64, r).unwrap();
        }
        let q = data(dim, 999).1;
        let m = index.exact_search(&q, 5).unwrap();
        let mut want: Vec<(u64, f64)> = rows.iter().enumerate().map(|(i, r)| (i as u64, if l2 { reference(&q, r, true).0 } else { 1.0 - reference(&q, r, false).0 })).collect();
        want.sort_by(|x, y| x.1.total_cmp(&y.1));
        assert_eq!(m.keys, want.iter().take(5).map(|w| w.0).collect::<Vec<_>>(), "l2={l2}");
        for (d, w) in m.distances.iter().zip(&want) {
            assert!((*d as f64 - w.1).abs() <= 1e-3 * w.1.abs().max(1.0), "l2={l2}: {d} vs {}", w.1);
        }
    }
}
