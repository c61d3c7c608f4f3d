//! The device path against the CPU: scans through a [`Mirror`] on the
//! host reference device answer as the CPU scan does, upload only what
//! changed, and survive every injected device fault (errors,
//! out-of-memory, panics, short answers) without failing a scan.
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use roaring::RoaringBitmap;
use shoal_proto::v1::Metric;

use super::device::{Accel, Offload, DEVICE_MAX_K, TRIP_AFTER};
use super::host::{Fault, FaultPlan, HostAccel};
use super::mirror::Mirror;
use super::{cpu::CpuScan, DenseRows, Scan, ScanMetric};
use crate::index::hnsw::{HnswIndex, HnswParams};
use crate::index::vecfile::{Memory, VectorFile};
use crate::index::{Hit, Precision, VectorIndex};

fn rows(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n * dim).map(|_| r.random_range(-1.0f32..1.0)).collect()
}

fn leak(off: Offload) -> &'static Offload {
    Box::leak(Box::new(off))
}

/// An offload on the host device that takes scans of any size.
fn host(plan: Option<FaultPlan>, cool_down: Duration) -> (&'static Offload, Arc<std::sync::atomic::AtomicUsize>) {
    let accel = match plan {
        Some(p) => HostAccel::with_faults(p),
        None => HostAccel::new(),
    };
    let calls = accel.calls();
    (leak(Offload::with(Box::new(accel), cool_down, 0)), calls)
}

/// Same ids in the same order, distances within `tol` (relative, at
/// least absolute for distances near zero): the device's products round
/// differently from the CPU's.
fn same(a: &[Vec<Hit>], b: &[Vec<Hit>], tol: f32) {
    assert_eq!(a.len(), b.len(), "one answer per query");
    for (qa, qb) in a.iter().zip(b) {
        assert_eq!(qa.iter().map(|h| h.key).collect::<Vec<_>>(), qb.iter().map(|h| h.key).collect::<Vec<_>>());
        for (x, y) in qa.iter().zip(qb) {
            assert!((x.distance - y.distance).abs() <= tol * x.distance.abs().max(1.0), "{} vs {}", x.distance, y.distance);
        }
    }
}

#[test]
fn mirrored_scans_answer_as_the_cpu_and_upload_only_new_rows() {
    let (dim, n) = (24, 3_000);
    let data = rows(n, dim, 1);
    let store = DenseRows { dim, data: &data };
    let qs_data = rows(9, dim, 2);
    let qs: Vec<&[f32]> = qs_data.chunks_exact(dim).collect();
    let (off, calls) = host(None, Duration::from_secs(30));
    let mirror = Mirror::new(dim);
    for metric in [ScanMetric::L2, ScanMetric::InnerProduct] {
        // A first scan of a sparse set, then a larger one that needs the
        // buffer grown and only the new rows uploaded.
        let small: RoaringBitmap = (0..1_500u32).filter(|k| k % 3 != 0).collect();
        let large: RoaringBitmap = (0..n as u32).filter(|k| k % 7 != 0).collect();
        for allowed in [&small, &large, &small] {
            let keys: Vec<u64> = allowed.iter().map(u64::from).collect();
            let want = CpuScan::new().top_k(&qs, &keys, &store, 10, metric).unwrap();
            let got = off.scan(&mirror, &qs, allowed, &store, 10, metric).expect("the host device answers");
            same(&got, &want, 1e-5);
        }
    }
    assert_eq!(mirror.rows_held(), (0..n as u32).filter(|k| k % 7 != 0 || (*k < 1_500 && k % 3 != 0)).count() as u64);
    // Rows held from the first scan sat between rows the second uploaded
    // (1 and 2 between 0 and 3): they were not overwritten.
    for key in [1u32, 2, 4, 1_001] {
        let q = &data[key as usize * dim..(key as usize + 1) * dim];
        let got = off.scan(&mirror, &[q], &RoaringBitmap::from_iter(0..n as u32), &store, 1, ScanMetric::L2).unwrap();
        assert_eq!((got[0][0].key, got[0][0].distance < 1e-4), (u64::from(key), true), "row {key} holds its vector");
    }
    // Nothing new: one call (the scan), no writes.
    let before = calls.load(Ordering::Relaxed);
    let all: RoaringBitmap = (0..1_500u32).filter(|k| k % 3 != 0).collect();
    off.scan(&mirror, &qs, &all, &store, 5, ScanMetric::L2).unwrap();
    assert_eq!(calls.load(Ordering::Relaxed) - before, 1, "a scan of rows already on the device uploads nothing");
    // A rewritten row is uploaded again before it is scored.
    let mut changed = data.clone();
    changed[4 * dim..5 * dim].copy_from_slice(qs[0]);
    mirror.invalidate(4);
    let store2 = DenseRows { dim, data: &changed };
    let got = off.scan(&mirror, &qs[..1], &all, &store2, 1, ScanMetric::L2).unwrap();
    assert_eq!(got[0][0].key, 4, "the rewritten row, equal to the query, is its nearest");
    assert!(got[0][0].distance < 1e-4);
    assert_eq!(off.fallbacks(), 0);
    assert_eq!(off.status().mirrors, 1);
    assert!(off.status().mirrored_bytes >= (n * (dim + 1) * 4) as u64);
    drop(mirror);
    assert_eq!(off.status().mirrors, 0, "a dropped mirror leaves the device's totals");
    assert_eq!(off.status().mirrored_bytes, 0);
}

#[test]
fn device_faults_never_fail_a_scan_and_the_breaker_retries_later() {
    let (dim, n) = (16, 2_000);
    let data = rows(n, dim, 3);
    let store = DenseRows { dim, data: &data };
    let qs_data = rows(10, dim, 4);
    let qs: Vec<&[f32]> = qs_data.chunks_exact(dim).collect();
    let allowed: RoaringBitmap = (0..n as u32).collect();
    let keys: Vec<u64> = (0..n as u64).collect();
    let want = CpuScan::new().top_k(&qs, &keys, &store, 10, ScanMetric::L2).unwrap();
    // Calls 0..3 fail: the allocation (an error), the next allocation (a
    // panic), the third (an error). Then the breaker is open; after the
    // cool-down every call succeeds.
    let plan: FaultPlan = Arc::new(|n| match n {
        0 | 2 => Some(Fault::Error),
        1 => Some(Fault::Panic),
        _ => None,
    });
    let (off, calls) = host(Some(plan), Duration::from_millis(200));
    let mirror = Mirror::new(dim);
    let scan = |off: &'static Offload| off.scan(&mirror, &qs, &allowed, &store, 10, ScanMetric::L2).unwrap_or_else(|| CpuScan::new().top_k(&qs, &keys, &store, 10, ScanMetric::L2).unwrap());
    for i in 0..6 {
        same(&scan(off), &want, 0.0);
        assert!(i < TRIP_AFTER as usize || off.breaker().is_open(), "scan {i}");
    }
    assert!(off.breaker().is_open(), "three failures in a row open the breaker");
    assert_eq!(calls.load(Ordering::Relaxed), 3, "an open breaker keeps work off the device");
    assert_eq!(off.fallbacks(), 6);
    std::thread::sleep(Duration::from_millis(250));
    same(&scan(off), &want, 1e-5);
    assert!(!off.breaker().is_open(), "after the cool-down the device is tried again, and a success closes the breaker");
    assert_eq!(off.fallbacks(), 6);
    assert_eq!(off.status().scans, 1);
}

#[test]
fn a_fault_mid_upload_or_a_short_answer_leaves_no_wrong_row_behind() {
    let (dim, n) = (8, 10_000);
    let data = rows(n, dim, 5);
    let store = DenseRows { dim, data: &data };
    let qs_data = rows(3, dim, 6);
    let qs: Vec<&[f32]> = qs_data.chunks_exact(dim).collect();
    let allowed: RoaringBitmap = (0..n as u32).collect();
    let keys: Vec<u64> = (0..n as u64).collect();
    let want = CpuScan::new().top_k(&qs, &keys, &store, 7, ScanMetric::InnerProduct).unwrap();
    // Call 0 allocates, call 1 writes the first 4,096 rows, call 2 (the
    // second write) stores garbage and fails. The next scan writes again
    // (calls 3 to 5), and its scan (call 6) answers short.
    let plan: FaultPlan = Arc::new(|n| match n {
        2 => Some(Fault::Garbage),
        6 => Some(Fault::ShortAnswer),
        _ => None,
    });
    let (off, _) = host(Some(plan), Duration::from_secs(30));
    let mirror = Mirror::new(dim);
    assert!(off.scan(&mirror, &qs, &allowed, &store, 7, ScanMetric::InnerProduct).is_none(), "a failed upload falls back");
    assert_eq!(mirror.rows_held(), 0, "and no row written before it is trusted");
    assert!(off.scan(&mirror, &qs, &allowed, &store, 7, ScanMetric::InnerProduct).is_none(), "a short answer is a fault");
    let got = off.scan(&mirror, &qs, &allowed, &store, 7, ScanMetric::InnerProduct).expect("the device answers again");
    same(&got, &want, 1e-5);
    assert_eq!(off.fallbacks(), 2);
}

#[test]
fn scans_the_device_does_not_take_stay_on_the_cpu_without_counting() {
    let (dim, n) = (8, 500);
    let data = rows(n, dim, 7);
    let store = DenseRows { dim, data: &data };
    let q = rows(1, dim, 8);
    let allowed: RoaringBitmap = (0..n as u32).collect();
    let (off, calls) = host(None, Duration::from_secs(30));
    let mirror = Mirror::new(dim);
    assert!(off.scan(&mirror, &[&q[..]], &allowed, &store, DEVICE_MAX_K + 1, ScanMetric::L2).is_none());
    assert_eq!((off.fallbacks(), calls.load(Ordering::Relaxed)), (0, 0), "a k above the kernel's is not a device fault");
    let strict = leak(Offload::with(Box::new(HostAccel::new()), Duration::from_secs(30), 4_096));
    assert!(!strict.wants(500, 500, 10), "a small scan stays on the CPU");
    assert!(strict.wants(5_000, 5_000, 10));
    assert!(!strict.wants(5_000, 5_000, DEVICE_MAX_K + 1));
    // An empty allowed set answers empty without touching the device.
    assert_eq!(off.scan(&mirror, &[&q[..]], &RoaringBitmap::new(), &store, 3, ScanMetric::L2), Some(vec![vec![]]));
}

/// Exact searches of real graphs (f32 and INT8, cosine and L2) on the
/// device answer as the same searches on the CPU, filtered or not, after
/// removals, with the device failing now and then.
#[test]
fn graph_exact_searches_on_the_device_answer_as_on_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let (dim, n) = (32, 3_000);
    let data = rows(n, dim, 9);
    let qs_data = rows(12, dim, 10);
    let qs: Vec<&[f32]> = qs_data.chunks_exact(dim).collect();
    // A device that works, and one that fails every fifth call.
    let (clean, _) = host(None, Duration::from_secs(30));
    let plan: FaultPlan = Arc::new(|n| (n % 5 == 4).then_some(Fault::Error));
    let (faulty, _) = host(Some(plan), Duration::from_millis(1));
    for off in [clean, faulty] {
        for (metric, precision) in [(Metric::Cosine, Precision::F32), (Metric::L2, Precision::F32), (Metric::Cosine, Precision::I8), (Metric::L2, Precision::I8)] {
            let p = HnswParams { dim, metric, precision, m: 16, ef_construction: 64 };
            let g = if precision.quantized() {
                let file = Arc::new(VectorFile::open(&dir.path().join(format!("{metric:?}{}.vectors", off.fallbacks())), dim, Memory::Cached).unwrap());
                HnswIndex::with_vectors(p, Some(file)).unwrap()
            } else {
                HnswIndex::new(p).unwrap()
            };
            let items: Vec<(u64, &[f32])> = data.chunks_exact(dim).enumerate().map(|(i, v)| (i as u64, v)).collect();
            g.add_batch(&items).unwrap();
            for k in (0..n as u64).step_by(11) {
                g.remove(k).unwrap();
            }
            let live: RoaringBitmap = (0..n as u32).filter(|k| k % 11 != 0).collect();
            let even: RoaringBitmap = live.iter().filter(|k| k % 2 == 0).collect();
            for (allowed, whole) in [(&live, true), (&even, false), (&live, true)] {
                for batch in [&qs[..1], &qs[..]] {
                    let cpu = g.exact_batch_on(None, batch, 10, allowed, whole).unwrap();
                    let dev = g.exact_batch_on(Some(off), batch, 10, allowed, whole).unwrap();
                    same(&dev, &cpu, 1e-4);
                    assert!(dev.iter().flatten().all(|h| allowed.contains(h.key as u32)), "{metric:?} {precision:?}: only allowed rows answer");
                }
            }
            if std::ptr::eq(off, clean) {
                assert_eq!(g.mirrored_rows(), live.len(), "{metric:?} {precision:?}: the graph's live rows are on the device");
            }
        }
    }
    assert_eq!(clean.fallbacks(), 0);
    assert_eq!(clean.status().scans, 4 * 6, "every scan of the working device ran there");
    assert!(faulty.status().scans > 0 && faulty.fallbacks() > 0, "both paths ran: {:?}", faulty.status());
}

#[test]
fn a_graph_that_does_not_fit_stays_on_the_cpu_without_tripping_the_breaker() {
    let (dim, n) = (8, 5_000);
    let data = rows(n, dim, 11);
    let store = DenseRows { dim, data: &data };
    let q = rows(1, dim, 12);
    let allowed: RoaringBitmap = (0..n as u32).collect();
    // The first allocation runs out of memory.
    let plan: FaultPlan = Arc::new(|n| (n == 0).then_some(Fault::OutOfMemory));
    let (off, calls) = host(Some(plan), Duration::from_secs(30));
    let big = Mirror::new(dim);
    for _ in 0..5 {
        assert!(off.scan(&big, &[&q[..]], &allowed, &store, 5, ScanMetric::L2).is_none());
    }
    assert_eq!(calls.load(Ordering::Relaxed), 1, "the graph that did not fit is not tried again at once");
    assert!(!off.breaker().is_open(), "and does not count against the device");
    assert_eq!(off.fallbacks(), 5);
    // Another graph still uses the device.
    let other = Mirror::new(dim);
    let keys: Vec<u64> = (0..n as u64).collect();
    let want = CpuScan::new().top_k(&[&q[..]], &keys, &store, 5, ScanMetric::L2).unwrap();
    same(&off.scan(&other, &[&q[..]], &allowed, &store, 5, ScanMetric::L2).expect("room for it"), &want, 1e-5);
}

/// A removed version's offset that comes back with another vector (the
/// shard reuses retired offsets) is scored with the new vector, and a
/// removed row the caller still allows (a version waiting for the graph)
/// is not scored from the device at all: as on the CPU.
#[test]
fn removed_and_reused_offsets_are_never_scored_with_their_old_vector() {
    let (dim, n) = (16, 5_000);
    let data = rows(n, dim, 13);
    let (off, _) = host(None, Duration::from_secs(30));
    for precision in [Precision::F32, Precision::I8] {
        let dir = tempfile::tempdir().unwrap();
        let p = HnswParams { dim, metric: Metric::L2, precision, m: 16, ef_construction: 64 };
        let g = if precision.quantized() {
            HnswIndex::with_vectors(p, Some(Arc::new(VectorFile::open(&dir.path().join("v"), dim, Memory::Cached).unwrap()))).unwrap()
        } else {
            HnswIndex::new(p).unwrap()
        };
        let items: Vec<(u64, &[f32])> = data.chunks_exact(dim).enumerate().map(|(i, v)| (i as u64, v)).collect();
        g.add_batch(&items).unwrap();
        let all: RoaringBitmap = (0..n as u32).collect();
        let q: Vec<f32> = data[7 * dim..8 * dim].to_vec();
        let first = g.exact_batch_on(Some(off), &[&q[..]], 3, &all, true).unwrap();
        assert_eq!(first[0][0].key, 7, "{precision:?}: row 7 is its own nearest");
        assert_eq!(g.mirrored_rows(), n as u64, "{precision:?}: every row is on the device");
        // Offset 7 retired, still allowed (waiting for the graph): not
        // scored by either path.
        g.remove(7).unwrap();
        let cpu = g.exact_batch_on(None, &[&q[..]], 3, &all, false).unwrap();
        let dev = g.exact_batch_on(Some(off), &[&q[..]], 3, &all, false).unwrap();
        assert!(!cpu[0].iter().any(|h| h.key == 7), "{precision:?}: the CPU skips a removed row");
        same(&dev, &cpu, 1e-4);
        // Offset 7 reused by a far-away vector.
        let far = vec![9.0f32; dim];
        g.add(7, &far).unwrap();
        let dev = g.exact_batch_on(Some(off), &[&far[..]], 1, &all, true).unwrap();
        assert_eq!(dev[0][0].key, 7, "{precision:?}: the new vector answers");
        assert!(dev[0][0].distance < 1e-3, "{precision:?}: scored with the new vector: {:?}", dev[0][0]);
        let dev = g.exact_batch_on(Some(off), &[&q[..]], 3, &all, true).unwrap();
        assert!(!dev[0].iter().any(|h| h.key == 7), "{precision:?}: not with the old one");
        // A compaction's swap drops every row.
        let fresh = g.fresh(p, None).unwrap();
        fresh.add_batch(&items[..100]).unwrap();
        g.replace_with(fresh);
        let some: RoaringBitmap = (0..100u32).collect();
        let dev = g.exact_batch_on(Some(off), &[&q[..]], 3, &some, true).unwrap();
        same(&dev, &g.exact_batch_on(None, &[&q[..]], 3, &some, true).unwrap(), 1e-4);
        assert_eq!(g.mirrored_rows(), 100, "{precision:?}: only the new graph's rows are held");
    }
    assert_eq!(off.fallbacks(), 0);
}

#[test]
fn the_self_test_passes_the_reference_and_refuses_a_wrong_kernel() {
    let dim = 40;
    let mut a = HostAccel::new().alloc(3_000, dim).unwrap();
    let mut b = HostAccel::new().alloc(3_000, dim).unwrap();
    super::device::self_test(a.as_mut(), b.as_mut(), dim).expect("the reference agrees with itself");
    // A device whose 5th scan is off by 0.5 (calls 0 and the writes come
    // first: one write, then the scans).
    let plan: FaultPlan = Arc::new(|n| (n == 5).then_some(Fault::WrongDistance));
    let mut wrong = HostAccel::with_faults(plan).alloc(3_000, dim).unwrap();
    let e = super::device::self_test(wrong.as_mut(), b.as_mut(), dim).unwrap_err();
    assert!(e.to_string().contains("self-test"), "{e}");
}

#[test]
fn answers_compare_by_rows_and_distances_with_ties_allowed() {
    let h = |key, distance| Hit { key, distance };
    let want = vec![vec![h(1, 0.1), h(2, 0.2), h(3, 0.3)]];
    assert!(super::device::same_answers(&want, &want, 1e-4).is_ok());
    // A tie broken the other way.
    assert!(super::device::same_answers(&[vec![h(2, 0.2), h(1, 0.2)]], &[vec![h(1, 0.2), h(2, 0.2)]], 1e-4).is_ok());
    assert!(super::device::same_answers(&[vec![h(1, 0.1), h(2, 0.2), h(9, 0.3)]], &want, 1e-4).is_ok(), "a tie at the k-th distance");
    assert!(super::device::same_answers(&[vec![h(1, 0.1), h(9, 0.2), h(3, 0.3)]], &want, 1e-4).is_err(), "a different row inside the top-k");
    assert!(super::device::same_answers(&[vec![h(1, 0.1), h(2, 0.25), h(3, 0.3)]], &want, 1e-4).is_err(), "a wrong distance");
    assert!(super::device::same_answers(&[vec![h(1, 0.1)]], &want, 1e-4).is_err(), "too few hits");
    assert!(super::device::same_answers(&[], &want, 1e-4).is_err(), "too few answers");
}

#[test]
fn sparse_sets_stay_on_the_cpu() {
    let off = leak(Offload::with(Box::new(HostAccel::new()), Duration::from_secs(30), 4_096));
    let dense: RoaringBitmap = (0..10_000u32).collect();
    let sparse: RoaringBitmap = (0..10_000u32).map(|k| k * 100).collect();
    assert!(off.wants_set(&dense, 10));
    assert!(!off.wants_set(&sparse, 10), "10k rows spread over 1M offsets");
}
