//! Quantized graphs (INT8, BINARY) against the flat f32 oracle: recall
//! after re-scoring, exact scores from the vector file, calibration saved
//! and loaded with the graph.
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use roaring::RoaringBitmap;
use shoal_proto::v1::Metric;

use super::flat::FlatIndex;
use super::hnsw::{HnswIndex, HnswParams, SearchOpts};
use super::vecfile::{Memory, VectorFile};
use super::*;

fn data(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    let centers: Vec<Vec<f32>> = (0..16).map(|_| (0..dim).map(|_| r.random_range(-1.0..1.0)).collect()).collect();
    (0..n).map(|i| centers[i % 16].iter().map(|c| c + r.random_range(-0.5..0.5)).collect()).collect()
}

fn unit(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
}

fn graph(dir: &std::path::Path, dim: usize, metric: Metric, precision: Precision) -> HnswIndex {
    let file = Arc::new(VectorFile::open(&dir.join(format!("{metric:?}{precision:?}.vectors")), dim, Memory::Cached).unwrap());
    HnswIndex::with_vectors(HnswParams { dim, metric, precision, m: 16, ef_construction: 128 }, Some(file)).unwrap()
}

fn recall(a: &[Hit], b: &[Hit]) -> f64 {
    let want: std::collections::HashSet<u64> = b.iter().map(|h| h.key).collect();
    a.iter().filter(|h| want.contains(&h.key)).count() as f64 / b.len().max(1) as f64
}

/// f64 distance in the index convention (unit vectors for cosine).
fn reference(metric: Metric, q: &[f32], v: &[f32]) -> f64 {
    let (mut q, mut v) = (q.to_vec(), v.to_vec());
    if metric == Metric::Cosine {
        unit(&mut q);
        unit(&mut v);
    }
    match metric {
        Metric::L2 => q.iter().zip(&v).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum(),
        _ => 1.0 - q.iter().zip(&v).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>(),
    }
}

#[test]
fn quantized_graphs_recall_after_rescoring_and_score_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let dim = 128;
    for metric in [Metric::Cosine, Metric::Dot, Metric::L2] {
        let mut v = data(3000, dim, 5);
        if metric == Metric::Dot {
            v.iter_mut().for_each(|x| unit(x));
        }
        let f = FlatIndex::new(dim, Distance(metric), Precision::F32);
        let items: Vec<(u64, &[f32])> = v.iter().enumerate().map(|(i, x)| (i as u64, x.as_slice())).collect();
        f.add_batch(&items).unwrap();
        // Clustered data with uniform noise is hard on sign codes: within
        // a cluster most signs are the centre's, so the Hamming distance
        // says little (measured 0.38-0.46 re-scored at oversampling 10,
        // 0.09 on codes alone). Real embeddings: docs/benchmarks.md.
        for (precision, over, floor) in [(Precision::I8, None, 0.95), (Precision::B1, Some(10.0), 0.3)] {
            let h = graph(dir.path(), dim, metric, precision);
            h.add_batch(&items).unwrap();
            assert_eq!(h.len(), 3000);
            let qs = data(40, dim, 77);
            let (mut total, mut plain) = (0.0, 0.0);
            let all: RoaringBitmap = (0..3000u32).collect();
            for q in &qs {
                let want = f.exact(q, 10, &Allowed::All).unwrap();
                let got = h.search_with(q, 10, 200, &Allowed::All, SearchOpts { oversampling: over, rescore: None }).unwrap();
                total += recall(&got, &want);
                plain += recall(&h.search_with(q, 10, 200, &Allowed::All, SearchOpts { oversampling: None, rescore: Some(false) }).unwrap(), &want);
                // Re-scored distances are the full vectors' (f32 kernels
                // against an f64 reference, relative 1e-4).
                for hit in &got {
                    let r = reference(metric, q, &v[hit.key as usize]);
                    assert!((hit.distance as f64 - r).abs() <= 1e-4 * r.abs().max(1.0), "{metric:?} {precision:?}: {} vs {r}", hit.distance);
                }
                // Exact search reads the vector file: the oracle's keys.
                let ex = h.exact(q, 10, &Allowed::Set(&all)).unwrap();
                assert_eq!(recall(&ex, &want), 1.0, "{metric:?} {precision:?} exact");
                assert_eq!(h.exact(q, 10, &Allowed::All).unwrap().iter().map(|h| h.key).collect::<Vec<_>>(), ex.iter().map(|h| h.key).collect::<Vec<_>>());
            }
            let (total, plain) = (total / qs.len() as f64, plain / qs.len() as f64);
            eprintln!("{metric:?} {precision:?}: recall@10 {total:.3} re-scored, {plain:.3} on codes alone");
            assert!(total >= floor, "{metric:?} {precision:?}: recall {total}");
            assert!(total >= plain, "{metric:?} {precision:?}: re-scoring lowered recall ({total} < {plain})");
        }
    }
}

#[test]
fn int8_scores_without_rescoring_approximate_the_true_ones() {
    let dir = tempfile::tempdir().unwrap();
    let dim = 96;
    for metric in [Metric::Cosine, Metric::L2] {
        let v = data(500, dim, 9);
        let h = graph(dir.path(), dim, metric, Precision::I8);
        let items: Vec<(u64, &[f32])> = v.iter().enumerate().map(|(i, x)| (i as u64, x.as_slice())).collect();
        h.add_batch(&items).unwrap();
        let q = &data(1, dim, 3)[0];
        for hit in h.search_with(q, 10, 100, &Allowed::All, SearchOpts { oversampling: None, rescore: Some(false) }).unwrap() {
            let r = reference(metric, q, &v[hit.key as usize]);
            // int8 rounding: about 1% of the distance's scale.
            assert!((hit.distance as f64 - r).abs() <= 0.03 * r.abs().max(1.0), "{metric:?}: approximate {} vs {r}", hit.distance);
        }
    }
}

#[test]
fn calibration_travels_with_the_graph_and_removals_leave_exact_scans() {
    let dir = tempfile::tempdir().unwrap();
    let dim = 32;
    let v = data(800, dim, 21);
    let path = dir.path().join("g.usearch");
    let file = Arc::new(VectorFile::open(&dir.path().join("g.vectors"), dim, Memory::Cached).unwrap());
    let p = HnswParams { dim, metric: Metric::L2, precision: Precision::I8, m: 16, ef_construction: 64 };
    let h = HnswIndex::with_vectors(p, Some(file.clone())).unwrap();
    assert!(h.calibration().is_none(), "no calibration before the first vector");
    let items: Vec<(u64, &[f32])> = v.iter().enumerate().map(|(i, x)| (i as u64, x.as_slice())).collect();
    h.add_batch(&items).unwrap();
    h.remove(3).unwrap();
    assert!(h.exact(&v[3], 1, &Allowed::All).unwrap()[0].key != 3, "a removed key leaves exact scans");
    let cal = h.calibration().unwrap();
    assert!(cal.starts_with("i8:") && cal.ends_with(";800"), "{cal}");
    h.save(&path).unwrap();
    let before = h.search(&v[10], 5, 64, &Allowed::All).unwrap();
    assert!(HnswIndex::load(p, &path, None, Some(file.clone())).is_err(), "a quantized graph needs its calibration");
    assert!(HnswIndex::load(p, &path, Some("b1:;5"), Some(file.clone())).is_err(), "another kind's calibration is refused");
    assert!(HnswIndex::load(p, &path, Some(&cal), None).is_err(), "a quantized graph needs its vector file");
    let l = HnswIndex::load(p, &path, Some(&cal), Some(file)).unwrap();
    for (k, x) in v.iter().enumerate().filter(|(k, _)| *k != 3) {
        assert!(!l.keep_loaded(k as u64, x).unwrap(), "slot {k} holds its vector");
    }
    assert_eq!(l.search(&v[10], 5, 64, &Allowed::All).unwrap(), before);
    let mut out = vec![0f32; dim];
    assert!(l.get(10, &mut out) && out == v[10]);
    assert!(!l.get(3, &mut out), "not kept at load");
}

/// `Codec::approx_distance` relies on usearch's int8 inner-product distance
/// being `1 - dot(codes)`.
#[test]
fn usearch_int8_inner_product_distance_is_one_minus_dot() {
    let idx = usearch::Index::new(&usearch::IndexOptions { dimensions: 4, metric: usearch::MetricKind::IP, quantization: usearch::ScalarKind::I8, connectivity: 16, expansion_add: 64, expansion_search: 1, multi: false }).unwrap();
    idx.reserve(10).unwrap();
    idx.add(1, &[10i8, 0, 0, 0]).unwrap();
    idx.add(2, &[100i8, 2, 0, 0]).unwrap();
    idx.add(3, &[-50i8, 0, 0, 0]).unwrap();
    let m = idx.search(&[1i8, 3, 0, 0], 3).unwrap();
    assert_eq!(m.keys, vec![2, 1, 3]);
    assert_eq!(m.distances, vec![1.0 - 106.0, 1.0 - 10.0, 1.0 + 50.0]);
}

/// A cosine int8 graph from before shared scales (usearch's int8 cosine,
/// each vector scaled on its own, sidecar `i8:0`) is refused at load, so
/// the shard rebuilds it with the inner-product codes.
#[test]
fn a_legacy_cosine_int8_graph_is_rebuilt_not_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let dim = 16;
    let path = dir.path().join("old.usearch");
    let old = usearch::Index::new(&usearch::IndexOptions { dimensions: dim, metric: usearch::MetricKind::Cos, quantization: usearch::ScalarKind::I8, connectivity: 16, expansion_add: 64, expansion_search: 1, multi: false }).unwrap();
    old.reserve(10).unwrap();
    for k in 0..5u64 {
        old.add(k, &vec![k as i8 + 1; dim]).unwrap();
    }
    old.save(path.to_str().unwrap()).unwrap();
    let file = Arc::new(VectorFile::open(&dir.path().join("old.vectors"), dim, Memory::Cached).unwrap());
    let p = HnswParams { dim, metric: Metric::Cosine, precision: Precision::I8, m: 16, ef_construction: 64 };
    let err = HnswIndex::load(p, &path, Some("i8:0;5"), Some(file.clone())).err().expect("a Cos graph is not today's cosine int8 graph");
    assert!(err.to_string().contains("Cos"), "{err}");
    // Today's cosine int8 graph: one calibrated scale, inner product.
    let v = data(300, dim, 2);
    let h = HnswIndex::with_vectors(p, Some(file)).unwrap();
    h.add_batch(&v.iter().enumerate().map(|(i, x)| (i as u64, x.as_slice())).collect::<Vec<_>>()).unwrap();
    let cal = h.calibration().unwrap();
    assert!(!cal.starts_with("i8:0;"), "a shared scale, not per-vector: {cal}");
}
