//! The conformance suite every [`Scan`] backend passes, against the
//! per-row loop ([`LoopScan`]) and an f64 reference.
//!
//! Tolerance: a backend may compute a distance in another order (and L2
//! as `|q|² + |r|² - 2 q·r`), so its distances may differ from the f64
//! reference by `(2·dim + 16) · ε_f32 · (|q|² + |r|²)` (the standard
//! bound for an f32 sum of `dim` products, twice over for the norms of
//! the expanded L2). Results must then agree: the same number of hits,
//! each hit's distance within that bound of its reference distance, and
//! the same keys except where two rows lie within the bound of the k-th
//! distance (a near-tie may rank either way).
use super::cpu::CpuScan;
use super::*;

fn data(n: usize, dim: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n * dim)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn unit(mut v: Vec<f32>, dim: usize) -> Vec<f32> {
    for r in v.chunks_exact_mut(dim) {
        let n = r.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        r.iter_mut().for_each(|x| *x /= n);
    }
    v
}

fn reference(q: &[f32], r: &[f32], metric: ScanMetric) -> f64 {
    match metric {
        ScanMetric::InnerProduct => 1.0 - q.iter().zip(r).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>(),
        ScanMetric::L2 => q.iter().zip(r).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum::<f64>(),
    }
}

fn bound(q: &[f32], r: &[f32]) -> f64 {
    let sq = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>();
    (2.0 * q.len() as f64 + 16.0) * f32::EPSILON as f64 * (sq(q) + sq(r)) + 1e-30
}

/// Rows whose `fill` refuses some keys (points deleted since the keys
/// were listed).
struct Holey<'a>(DenseRows<'a>);

impl RowStore for Holey<'_> {
    fn dim(&self) -> usize {
        self.0.dim
    }
    fn fill(&self, key: u64, out: &mut [f32]) -> bool {
        key % 7 != 3 && self.0.fill(key, out)
    }
}

/// Checks `got` (one query's hits) against the f64 reference over `keys`.
fn conforms(what: &str, q: &[f32], got: &[Hit], keys: &[u64], rows: &dyn RowStore, k: usize, metric: ScanMetric) {
    let dim = rows.dim();
    let mut buf = vec![0f32; dim];
    let mut all: Vec<(u64, f64, f64)> = Vec::new();
    for &key in keys {
        if rows.fill(key, &mut buf) {
            all.push((key, reference(q, &buf, metric), bound(q, &buf)));
        }
    }
    all.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    assert_eq!(got.len(), k.min(all.len()), "{what}: hit count");
    let Some(kth) = all.get(got.len().saturating_sub(1)).map(|x| x.1) else { return };
    for h in got {
        let (_, want, tol) = *all.iter().find(|x| x.0 == h.key).unwrap_or_else(|| panic!("{what}: key {} is not a row", h.key));
        assert!((h.distance as f64 - want).abs() <= tol, "{what}: key {} at {} vs reference {want} (bound {tol})", h.key, h.distance);
        assert!(want <= kth + 2.0 * tol, "{what}: key {} at {want} is beyond the k-th distance {kth}", h.key);
    }
    for w in got.windows(2) {
        assert!(w[0].distance.total_cmp(&w[1].distance).then(w[0].key.cmp(&w[1].key)).is_lt(), "{what}: sorted by distance, then key");
    }
    // Every row clearly inside the k-th distance is among the hits.
    for (key, d, tol) in &all {
        if *d < kth - 2.0 * tol {
            assert!(got.iter().any(|h| h.key == *key), "{what}: key {key} at {d} (k-th {kth}) is missing");
        }
    }
}

fn backends() -> Vec<Box<dyn Scan>> {
    vec![Box::new(LoopScan), Box::new(CpuScan::with_threads(1)), Box::new(CpuScan::with_threads(3))]
}

#[test]
fn every_backend_matches_the_reference() {
    for dim in [1usize, 3, 16, 50, 384] {
        for metric in [ScanMetric::InnerProduct, ScanMetric::L2] {
            let n = 700;
            let rows_data = if metric == ScanMetric::InnerProduct { unit(data(n, dim, dim as u64, 1.0), dim) } else { data(n, dim, dim as u64, 4.0) };
            let queries_data = if metric == ScanMetric::InnerProduct { unit(data(9, dim, 99, 1.0), dim) } else { data(9, dim, 99, 4.0) };
            let all_queries: Vec<&[f32]> = queries_data.chunks_exact(dim).collect();
            let dense = DenseRows { dim, data: &rows_data };
            let holey = Holey(DenseRows { dim, data: &rows_data });
            // All rows in order (lent in place), a scattered subset
            // (gathered), and keys the store partly lacks.
            let all: Vec<u64> = (0..n as u64).collect();
            let some: Vec<u64> = (0..n as u64).filter(|k| k % 3 != 1).rev().collect();
            let cases: [(&str, &[u64], &dyn RowStore); 3] = [("all", &all, &dense), ("subset", &some, &dense), ("holey", &all, &holey)];
            for backend in backends() {
                for (case, keys, rows) in cases {
                    // 1 and 7 queries take CpuScan's kernel path, 8 and 9
                    // its matrix products.
                    for (k, nq) in [(1usize, 9usize), (10, 1), (10, 7), (10, 8), (257, 9), (5000, 9)] {
                        let queries = &all_queries[..nq];
                        let got = backend.top_k(queries, keys, rows, k, metric).unwrap();
                        assert_eq!(got.len(), queries.len());
                        for (q, hits) in queries.iter().zip(&got) {
                            conforms(&format!("{} {case} dim={dim} {metric:?} k={k} queries={nq}", backend.name()), q, hits, keys, rows, k, metric);
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn edge_cases_answer_without_panicking() {
    let dim = 8;
    let rows_data = data(10, dim, 1, 1.0);
    let rows = DenseRows { dim, data: &rows_data };
    let q = data(1, dim, 2, 1.0);
    for backend in backends() {
        let name = backend.name();
        assert!(backend.top_k(&[], &[0, 1], &rows, 5, ScanMetric::L2).unwrap().is_empty(), "{name}: no queries");
        assert_eq!(backend.top_k(&[&q], &[], &rows, 5, ScanMetric::L2).unwrap(), vec![vec![]], "{name}: no rows");
        assert_eq!(backend.top_k(&[&q], &[0, 1, 2], &rows, 0, ScanMetric::L2).unwrap(), vec![vec![]], "{name}: k = 0");
        assert_eq!(backend.top_k(&[&q], &[40, 41], &rows, 3, ScanMetric::L2).unwrap(), vec![vec![]], "{name}: keys the store lacks");
        let short = vec![0f32; dim - 1];
        assert!(matches!(backend.top_k(&[&q, &short], &[0], &rows, 1, ScanMetric::L2), Err(ScanError::Dimension { got: 7, want: 8 })), "{name}: a query of another dimension");
    }
}

/// The same rows lent in place and gathered give the same answer.
#[test]
fn lent_and_gathered_rows_agree() {
    // Rows enough that three threads each get MIN_WORK_PER_THREAD.
    let dim = 24;
    let n = 3 * crate::scan::cpu::MIN_WORK_PER_THREAD / (dim * 4) + 1;
    let rows_data = data(n, dim, 5, 2.0);
    let queries_data = data(12, dim, 6, 2.0);
    let keys: Vec<u64> = (0..n as u64).collect();
    let lent = DenseRows { dim, data: &rows_data };
    struct Gathered<'a>(DenseRows<'a>);
    impl RowStore for Gathered<'_> {
        fn dim(&self) -> usize {
            self.0.dim
        }
        fn fill(&self, key: u64, out: &mut [f32]) -> bool {
            self.0.fill(key, out)
        }
    }
    let gathered = Gathered(DenseRows { dim, data: &rows_data });
    for nq in [4, 12] {
        let queries: Vec<&[f32]> = queries_data.chunks_exact(dim).take(nq).collect();
        for metric in [ScanMetric::InnerProduct, ScanMetric::L2] {
            let one = CpuScan::with_threads(1).top_k(&queries, &keys, &lent, 20, metric).unwrap();
            assert_eq!(one, CpuScan::with_threads(1).top_k(&queries, &keys, &gathered, 20, metric).unwrap(), "{nq} queries, {metric:?}: lent and gathered");
            assert_eq!(one, CpuScan::with_threads(3).top_k(&queries, &keys, &lent, 20, metric).unwrap(), "{nq} queries, {metric:?}: one thread and three");
        }
    }
}

/// Rows or queries holding NaN or infinity never panic, never return
/// more than k hits, and never rank a NaN distance.
#[test]
fn non_finite_values_are_never_ranked() {
    let dim = 16;
    let mut rows_data = data(40, dim, 7, 1.0);
    rows_data[3 * dim + 2] = f32::NAN;
    rows_data[5 * dim] = f32::INFINITY;
    let rows = DenseRows { dim, data: &rows_data };
    let keys: Vec<u64> = (0..40).collect();
    let good = data(9, dim, 8, 1.0);
    let mut bad = good.clone();
    bad[0] = f32::INFINITY;
    for backend in backends() {
        for queries_data in [&good, &bad] {
            for nq in [1, 9] {
                let queries: Vec<&[f32]> = queries_data.chunks_exact(dim).take(nq).collect();
                for metric in [ScanMetric::InnerProduct, ScanMetric::L2] {
                    for hits in backend.top_k(&queries, &keys, &rows, 10, metric).unwrap() {
                        assert!(hits.len() <= 10);
                        assert!(hits.iter().all(|h| !h.distance.is_nan()), "{}: {metric:?} ranked a NaN distance", backend.name());
                        assert!(!hits.iter().any(|h| h.key == 3), "{}: {metric:?} ranked the NaN row", backend.name());
                    }
                }
            }
        }
    }
}
