//! Index tests: HNSW against the flat oracle, per metric and precision.
use rand::{Rng, SeedableRng};
use roaring::RoaringBitmap;
use shoal_proto::v1::Metric;

use super::flat::FlatIndex;
use super::hnsw::{HnswIndex, HnswParams};
use super::*;

fn data(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
    // Clustered Gaussian-ish data: realistic enough for graph recall checks.
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    let centers: Vec<Vec<f32>> = (0..16).map(|_| (0..dim).map(|_| r.random_range(-1.0..1.0)).collect()).collect();
    (0..n)
        .map(|i| centers[i % 16].iter().map(|c| c + r.random_range(-0.3..0.3)).collect())
        .collect()
}

fn params(dim: usize, metric: Metric, precision: Precision) -> HnswParams {
    HnswParams { dim, metric, precision, m: 16, ef_construction: 128 }
}

fn recall(a: &[Hit], b: &[Hit]) -> f64 {
    let want: std::collections::HashSet<u64> = b.iter().map(|h| h.key).collect();
    a.iter().filter(|h| want.contains(&h.key)).count() as f64 / b.len().max(1) as f64
}

#[test]
fn hnsw_recall_against_flat_oracle() {
    for metric in [Metric::Cosine, Metric::Dot, Metric::L2] {
        for precision in [Precision::F32, Precision::F16] {
            let dim = 24;
            let mut v = data(3000, dim, 7);
            if metric == Metric::Dot {
                // Inner-product HNSW is only well-behaved on (near-)normalised
                // data, which is how dot collections are used in practice.
                for x in v.iter_mut() {
                    let n = x.iter().map(|a| a * a).sum::<f32>().sqrt();
                    x.iter_mut().for_each(|a| *a /= n);
                }
            }
            let h = HnswIndex::new(params(dim, metric, precision)).unwrap();
            let f = FlatIndex::new(dim, Distance(metric), precision);
            let items: Vec<(u64, &[f32])> = v.iter().enumerate().map(|(i, x)| (i as u64, x.as_slice())).collect();
            h.add_batch(&items).unwrap();
            f.add_batch(&items).unwrap();
            assert_eq!(h.len(), 3000);
            let qs = data(50, dim, 99);
            let mut total = 0.0;
            for q in &qs {
                // Clustered noise in 24-d has high intrinsic dimension: a wide ef is needed.
                let got = h.search(q, 10, 400, &Allowed::All).unwrap();
                let want = f.exact(q, 10, &Allowed::All).unwrap();
                total += recall(&got, &want);
                // Exact search over the HNSW's stored vectors equals the oracle.
                let all: RoaringBitmap = (0..3000u32).collect();
                // Each path is checked against the f64 reference of the
                // original vectors, never against the other's output: f16
                // storage rounds each side by up to 2^-11 of its magnitude.
                let ex = h.exact(q, 10, &Allowed::Set(&all)).unwrap();
                // Rounding each component to f16 moves a dot or cosine by at
                // most 4·2^-11 of Σ|aᵢbᵢ|, and an L2 distance by at most
                // 4·2^-11 of Σ(aᵢ²+bᵢ²).
                let tol = match precision {
                    Precision::F32 => KERNEL_TOLERANCE,
                    Precision::F16 => 4.0 * 2f64.powi(-11) + KERNEL_TOLERANCE,
                    Precision::I8 | Precision::B1 => unreachable!("quantized kinds: quant_tests.rs"),
                };
                let check = |hit: &Hit| {
                    let row = &v[hit.key as usize];
                    let (r, mut scale) = reference(metric, q, row);
                    if metric == Metric::L2 && precision == Precision::F16 {
                        scale = q.iter().chain(row).map(|x| (*x as f64).powi(2)).sum();
                    }
                    let err = (hit.distance as f64 - r).abs();
                    assert!(err <= tol * scale, "{metric:?} {precision:?}: {hit:?} vs f64 {r} (error {err:e}, scale {scale})");
                };
                ex.iter().chain(&want).for_each(check);
            }
            let r = total / qs.len() as f64;
            assert!(r >= 0.95, "{metric:?} {precision:?}: recall@10 {r}");
        }
    }
}

#[test]
fn remove_hides_at_once_and_filters_restrict() {
    let dim = 8;
    let v = data(500, dim, 1);
    for idx in [
        Box::new(HnswIndex::new(params(dim, Metric::L2, Precision::F32)).unwrap()) as Box<dyn VectorIndex>,
        Box::new(FlatIndex::new(dim, Distance(Metric::L2), Precision::F32)),
    ] {
        for (i, x) in v.iter().enumerate() {
            idx.add(i as u64, x).unwrap();
        }
        let top = idx.search(&v[3], 1, 32, &Allowed::All).unwrap();
        assert_eq!(top[0].key, 3);
        idx.remove(3).unwrap();
        assert!(!idx.contains(3));
        assert_eq!(idx.len(), 499);
        let top = idx.search(&v[3], 5, 32, &Allowed::All).unwrap();
        assert!(top.iter().all(|h| h.key != 3), "removed key returned");
        // Re-adding the same vector under a new key (the new version) works.
        idx.add(1000, &v[3]).unwrap();
        assert_eq!(idx.search(&v[3], 1, 32, &Allowed::All).unwrap()[0].key, 1000);
        let even: RoaringBitmap = (0..500u32).filter(|k| k % 2 == 0).collect();
        let hits = idx.search(&v[7], 10, 64, &Allowed::Set(&even)).unwrap();
        assert_eq!(hits.len(), 10);
        assert!(hits.iter().all(|h| h.key % 2 == 0));
        let mut buf = vec![0.0; dim];
        assert!(idx.get(1000, &mut buf));
        assert_eq!(buf, v[3]);
    }
}

#[test]
fn hnsw_save_load_and_damage() {
    let dim = 16;
    let v = data(800, dim, 3);
    let p = params(dim, Metric::Cosine, Precision::F16);
    let h = HnswIndex::new(p).unwrap();
    for (i, x) in v.iter().enumerate() {
        h.add(i as u64, x).unwrap();
    }
    h.remove(5).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("i.usearch");
    h.save(&path).unwrap();
    let l = HnswIndex::load(p, &path, None, None).unwrap();
    assert!(!l.contains(5));
    assert!(l.contains(6));
    for q in v.iter().take(20) {
        assert_eq!(h.search(q, 10, 50, &Allowed::All).unwrap(), l.search(q, 10, 50, &Allowed::All).unwrap());
    }
    l.add(5000, &v[0]).unwrap();
    // An f16 file under f32 settings with a sidecar that names no kind
    // (older sidecars): refused, so the shard rebuilds rather than read
    // 2-byte rows with the 4-byte f32 kernels; likewise another metric.
    let f32p = params(dim, Metric::Cosine, Precision::F32);
    let err = HnswIndex::load(f32p, &path, None, None).err().expect("an f16 file is not an f32 graph");
    assert!(err.to_string().contains("F16"), "{err}");
    assert!(HnswIndex::load(params(dim, Metric::L2, Precision::F16), &path, None, None).is_err(), "an inner-product file is not an L2 graph");
    let f = HnswIndex::new(f32p).unwrap();
    f.add(1, &v[1]).unwrap();
    f.save(&path).unwrap();
    assert!(HnswIndex::load(f32p, &path, None, None).is_ok());
    std::fs::write(&path, b"garbage").unwrap();
    assert!(HnswIndex::load(p, &path, None, None).is_err(), "damaged file must not load");
    assert!(HnswIndex::load(p, &dir.path().join("missing"), None, None).is_err());
}

/// Memory accounting (cluster status) while another thread adds and
/// searches: usearch's node walk once read a node mid-insert and crashed
/// the process; it must now wait for in-flight adds.
#[test]
fn memory_bytes_is_safe_during_concurrent_adds() {
    let idx = HnswIndex::new(params(16, Metric::Cosine, Precision::F32)).unwrap();
    let vs = data(20_000, 16, 21);
    std::thread::scope(|s| {
        let idx = &idx;
        let vs = &vs;
        s.spawn(move || {
            for (i, chunk) in vs.chunks(500).enumerate() {
                let items: Vec<(u64, &[f32])> = chunk.iter().enumerate().map(|(j, v)| ((i * 500 + j) as u64, v.as_slice())).collect();
                idx.add_batch(&items).unwrap();
            }
        });
        let mut calls = 0;
        while idx.len() < vs.len() {
            std::hint::black_box(idx.memory_bytes());
            calls += 1;
        }
        assert!(calls > 0, "memory was read while adds ran");
    });
    assert_eq!(idx.len(), 20_000);
    assert!(idx.memory_bytes() >= 20_000 * 16 * 4, "holds at least the raw vectors");
}

/// Exact searches and gets beside concurrent adds (a shard's pending set
/// is searched while the indexer moves it into the graph). usearch counts
/// a new node before it stores the node's vector; its exact search once
/// read such a null vector and crashed the process.
#[test]
fn exact_and_get_are_safe_during_concurrent_adds() {
    let dim = 32;
    let idx = HnswIndex::new(params(dim, Metric::L2, Precision::F32)).unwrap();
    let vs = data(20_000, dim, 22);
    std::thread::scope(|s| {
        let idx = &idx;
        let vs = &vs;
        s.spawn(move || {
            for (i, chunk) in vs.chunks(1_000).enumerate() {
                let items: Vec<(u64, &[f32])> = chunk.iter().enumerate().map(|(j, v)| ((i * 1_000 + j) as u64, v.as_slice())).collect();
                idx.add_batch(&items).unwrap();
            }
        });
        let (mut searches, mut got) = (0, 0);
        let mut buf = vec![0f32; dim];
        while idx.len() < vs.len() {
            let n = idx.len();
            // Batches go in one after another: with n added, the batches
            // below n / 1000 are whole, so their last key is stored and is
            // its own nearest neighbour.
            let probe = ((n / 1_000) * 1_000).saturating_sub(1);
            let hits = idx.exact(&vs[probe], 1, &Allowed::All).unwrap();
            if n >= 1_000 {
                assert_eq!(hits[0].distance, 0.0, "exact search for stored vector {probe}: {hits:?}");
            }
            // The filtered exact search reads each allowed key's vector
            // with usearch's get, the keys being added among them.
            let set: RoaringBitmap = (n.saturating_sub(64) as u32..(n + 64) as u32).collect();
            let hits = idx.exact(&vs[probe], 1, &Allowed::Set(&set)).unwrap();
            assert!(hits.iter().all(|h| set.contains(h.key as u32)), "filtered exact search stays in its set");
            searches += 1;
            for key in [probe, n, n + 1] {
                if idx.get(key as u64, &mut buf) {
                    assert_eq!(buf, vs[key], "get {key} during adds");
                    got += 1;
                }
            }
        }
        assert!(searches > 0 && got > 0, "searched ({searches}) and read ({got}) while adds ran");
    });
    assert_eq!(idx.len(), 20_000);
}

/// f64 reference of an index distance on the values as stored.
fn reference(metric: Metric, a: &[f32], b: &[f32]) -> (f64, f64) {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let abs: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 * *y as f64).abs()).sum();
    match metric {
        Metric::L2 => {
            let d: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
            (d, d.max(1e-30))
        }
        Metric::Cosine => {
            let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
            let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
            (1.0 - dot / (na * nb), abs / (na * nb))
        }
        _ => (1.0 - dot, abs),
    }
}

/// The documented tolerance (docs/limits.md): a score is within
/// `KERNEL_TOLERANCE × scale` of the f64 reference computed on the stored
/// values, where the scale is Σ|aᵢbᵢ| for dot and cosine (of the
/// normalised vectors) and Σ(aᵢ−bᵢ)² for L2.
const KERNEL_TOLERANCE: f64 = 1e-5;

/// Vectors whose components are exact in f16, so f16 storage rounds
/// nothing and every path sees the same inputs.
fn f16_exact(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| (0..dim).map(|_| half::f16::from_f32(r.random_range(-1.0f32..1.0)).to_f32()).collect()).collect()
}

fn unit32(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

/// Every distance kernel Shoal scores with, against an f64 reference at 24,
/// 384 and 1536 dimensions: simsimd's f32 kernels (`Distance::f32`), the f16
/// path (`Distance::f16`, widened to f32), and usearch's kernels inside the
/// HNSW index (exact search over its stored rows). No kernel is compared
/// with another, so the test holds whichever SIMD backend the CPU gets.
#[test]
fn kernels_against_f64_reference() {
    for dim in [24, 384, 1536] {
        let rows = f16_exact(64, dim, dim as u64);
        let q = f16_exact(1, dim, 7 + dim as u64).remove(0);
        let q16: Vec<half::f16> = q.iter().map(|x| half::f16::from_f32(*x)).collect();
        for metric in [Metric::Cosine, Metric::Dot, Metric::L2] {
            let d = Distance(metric);
            for row in &rows {
                let (want, scale) = reference(metric, &q, row);
                let r16: Vec<half::f16> = row.iter().map(|x| half::f16::from_f32(*x)).collect();
                for (kernel, got) in [("f32", d.f32(&q, row)), ("f16", d.f16(&q16, &r16))] {
                    let err = (got as f64 - want).abs();
                    assert!(err <= KERNEL_TOLERANCE * scale, "{metric:?} {kernel} dim {dim}: {got} vs f64 {want} (error {err:e}, scale {scale})");
                }
            }
            for precision in [Precision::F32, Precision::F16] {
                let h = HnswIndex::new(params(dim, metric, precision)).unwrap();
                let items: Vec<(u64, &[f32])> = rows.iter().enumerate().map(|(i, x)| (i as u64, x.as_slice())).collect();
                h.add_batch(&items).unwrap();
                // What usearch scores: the query as stored (unit for
                // cosine, then rounded to the index's precision).
                let mut qs = if metric == Metric::Cosine { unit32(&q) } else { q.clone() };
                if precision == Precision::F16 {
                    qs.iter_mut().for_each(|x| *x = half::f16::from_f32(*x).to_f32());
                }
                let mut stored = vec![0f32; dim];
                for hit in h.exact(&q, rows.len(), &Allowed::All).unwrap() {
                    assert!(h.get(hit.key, &mut stored));
                    let (want, scale) = match metric {
                        // Cosine rows are stored unit length: usearch scores them by dot.
                        Metric::Cosine => reference(Metric::Dot, &qs, &stored),
                        m => reference(m, &qs, &stored),
                    };
                    let err = (hit.distance as f64 - want).abs();
                    assert!(err <= KERNEL_TOLERANCE * scale, "usearch {metric:?} {precision:?} dim {dim}: {} vs f64 {want} (error {err:e})", hit.distance);
                }
            }
        }
    }
}

/// The tolerance above catches a kernel that accumulates in half
/// precision, as simsimd's Sapphire Rapids f16 kernels do (emulated here,
/// since the CPU running this test may not have AVX-512 FP16).
#[test]
fn tolerance_rejects_half_precision_accumulation() {
    for dim in [24, 384, 1536] {
        let rows = f16_exact(16, dim, 3 + dim as u64);
        let q = f16_exact(1, dim, 5).remove(0);
        let mut worst = 0f64;
        for row in &rows {
            // 32 f16 lanes, each accumulating with an f16 rounding per step.
            let mut lanes = [half::f16::ZERO; 32];
            for (i, (x, y)) in q.iter().zip(row).enumerate() {
                let l = &mut lanes[i % 32];
                *l = half::f16::from_f32(l.to_f32() + x * y);
            }
            let sum = lanes.iter().fold(half::f16::ZERO, |s, l| half::f16::from_f32(s.to_f32() + l.to_f32()));
            let (want, scale) = reference(Metric::Dot, &q, row);
            worst = worst.max(((1.0 - sum.to_f32() as f64) - want).abs() / scale);
        }
        assert!(worst > KERNEL_TOLERANCE, "dim {dim}: half accumulation stayed within {worst:e}");
    }
}

/// Searches run while a save holds off writers: a save once took the index
/// exclusively, so searches (some on async workers) waited for the whole
/// serialisation and Raft heartbeats on those workers were missed.
#[test]
fn searches_do_not_wait_for_a_save() {
    let dim = 16;
    let v = data(2000, dim, 11);
    let h = HnswIndex::new(params(dim, Metric::Cosine, Precision::F32)).unwrap();
    let items: Vec<(u64, &[f32])> = v.iter().enumerate().map(|(i, x)| (i as u64, x.as_slice())).collect();
    h.add_batch(&items).unwrap();
    let held = h.hold_mutations();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            let hits = h.search(&v[5], 3, 64, &Allowed::All).unwrap();
            let ex = h.exact(&v[5], 3, &Allowed::All).unwrap();
            let _ = h.memory_bytes();
            tx.send((hits[0].key, ex[0].key)).unwrap();
        });
        // A blocked search would never answer while `held` lives.
        let got = rx.recv_timeout(std::time::Duration::from_secs(60));
        drop(held);
        assert_eq!(got.expect("search finished while writers were held off"), (5, 5));
    });
    // And a save with searches running alongside completes.
    let dir = tempfile::tempdir().unwrap();
    std::thread::scope(|s| {
        for t in 0..4 {
            let (h, v) = (&h, &v);
            s.spawn(move || {
                for i in 0..200 {
                    assert_eq!(h.search(&v[(t * 200 + i) % 2000], 1, 64, &Allowed::All).unwrap().len(), 1);
                }
            });
        }
        h.save(&dir.path().join("i.usearch")).unwrap();
    });
}
