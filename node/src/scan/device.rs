//! A device backend behind [`Scan`] with the CPU path as its fallback.
//!
//! A [`Device`] (the CUDA backend, or a test double) may fail any call: out
//! of memory, a driver error, a lost device, even a panic in its binding.
//! [`FallbackScan`] answers every such call on the CPU instead, so a device
//! fault never fails a request, and counts it
//! (`shoal_scan_fallbacks_total`). After [`TRIP_AFTER`] failures in a row
//! its circuit breaker stops offering work to the device for a cool-down,
//! then lets one call through to try it again.
//!
//! The CUDA device itself (a device mirror of each shard's rows, cuBLAS
//! products, a top-k kernel from NVRTC) is not built yet: no GPU was lent
//! to the task that built this layer (docs/decisions.md).
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus::IntCounterVec;
use shoal_common::telemetry::counter_vec;

use super::cpu::CpuScan;
use super::{check_dims, RowStore, Scan, ScanError, ScanMetric};
use crate::index::Hit;

/// Consecutive device failures that open the breaker.
pub const TRIP_AFTER: u32 = 3;
/// How long an open breaker keeps work off the device.
pub const COOL_DOWN: Duration = Duration::from_secs(30);

/// Scans the CPU answered because the device failed or was cooling down,
/// per device and reason.
pub static SCAN_FALLBACKS: LazyLock<IntCounterVec> =
    LazyLock::new(|| counter_vec("shoal_scan_fallbacks_total", "Scans the CPU answered because the device failed (error) or its breaker was open (breaker_open)", &["device", "reason"]));

/// Why a device could not answer.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("device out of memory: {0}")]
    OutOfMemory(String),
    #[error("device error: {0}")]
    Fault(String),
}

/// A scan backend that may fail.
pub trait Device: Send + Sync {
    fn name(&self) -> &'static str;
    fn top_k(&self, queries: &[&[f32]], keys: &[u64], rows: &dyn RowStore, k: usize, metric: ScanMetric) -> Result<Vec<Vec<Hit>>, DeviceError>;
}

/// The device while it works, the CPU when it does not.
pub struct FallbackScan<D> {
    device: D,
    cpu: CpuScan,
    cool_down: Duration,
    failures: AtomicU32,
    open_until: Mutex<Option<Instant>>,
    fallbacks: AtomicU64,
}

impl<D: Device> FallbackScan<D> {
    pub fn new(device: D) -> Self {
        Self::with_cool_down(device, COOL_DOWN)
    }

    pub fn with_cool_down(device: D, cool_down: Duration) -> Self {
        FallbackScan { device, cpu: CpuScan::new(), cool_down, failures: AtomicU32::new(0), open_until: Mutex::new(None), fallbacks: AtomicU64::new(0) }
    }

    /// Scans the CPU answered instead of the device.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    /// Whether the breaker keeps work off the device now.
    pub fn is_open(&self) -> bool {
        self.open_until.lock().is_some_and(|t| Instant::now() < t)
    }

    fn fell_back(&self, reason: &str) {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        SCAN_FALLBACKS.with_label_values(&[self.device.name(), reason]).inc();
    }

    fn failed(&self, why: &str) {
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        tracing::warn!(device = self.device.name(), failures = n, why, "device scan failed; answered on the CPU");
        if n >= TRIP_AFTER {
            *self.open_until.lock() = Some(Instant::now() + self.cool_down);
            tracing::warn!(device = self.device.name(), cool_down_s = self.cool_down.as_secs_f64(), "device breaker open: scans stay on the CPU until it cools down");
        }
    }
}

impl<D: Device> Scan for FallbackScan<D> {
    fn name(&self) -> &'static str {
        self.device.name()
    }

    fn top_k(&self, queries: &[&[f32]], keys: &[u64], rows: &dyn RowStore, k: usize, metric: ScanMetric) -> Result<Vec<Vec<Hit>>, ScanError> {
        // Bad input is the caller's error on every backend, never a fault.
        check_dims(queries, rows)?;
        if self.is_open() {
            self.fell_back("breaker_open");
            return self.cpu.top_k(queries, keys, rows, k, metric);
        }
        let tried = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.device.top_k(queries, keys, rows, k, metric)));
        match tried {
            Ok(Ok(hits)) if hits.len() == queries.len() => {
                // A success closes the breaker (a trial call after the
                // cool-down, or a fault that passed).
                self.failures.store(0, Ordering::Release);
                *self.open_until.lock() = None;
                return Ok(hits);
            }
            Ok(Ok(hits)) => self.failed(&format!("{} answers for {} queries", hits.len(), queries.len())),
            Ok(Err(e)) => self.failed(&e.to_string()),
            Err(_) => self.failed("the device binding panicked"),
        }
        self.fell_back("error");
        self.cpu.top_k(queries, keys, rows, k, metric)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::DenseRows;
    use std::sync::atomic::AtomicUsize;

    /// A device double: fails (or panics) on the calls `fail` says, else
    /// answers as the CPU does.
    struct Faulty {
        calls: AtomicUsize,
        fail: fn(usize) -> Option<bool>,
    }

    impl Device for Faulty {
        fn name(&self) -> &'static str {
            "test-double"
        }

        fn top_k(&self, queries: &[&[f32]], keys: &[u64], rows: &dyn RowStore, k: usize, metric: ScanMetric) -> Result<Vec<Vec<Hit>>, DeviceError> {
            let n = self.calls.fetch_add(1, Ordering::Relaxed);
            match (self.fail)(n) {
                Some(true) => panic!("injected device panic"),
                Some(false) => Err(DeviceError::OutOfMemory("injected".into())),
                None => Ok(CpuScan::new().top_k(queries, keys, rows, k, metric).unwrap()),
            }
        }
    }

    fn data() -> (Vec<f32>, Vec<Vec<f32>>) {
        let dim = 16;
        let rows: Vec<f32> = (0..2_000 * dim).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let qs: Vec<Vec<f32>> = (0..10).map(|q| (0..dim).map(|j| ((q * 31 + j * 17) % 100) as f32 / 50.0 - 1.0).collect()).collect();
        (rows, qs)
    }

    #[test]
    fn device_faults_never_fail_a_scan_and_the_breaker_retries_later() {
        let (rows, qs) = data();
        let store = DenseRows { dim: 16, data: &rows };
        let keys: Vec<u64> = (0..2_000).collect();
        let refs: Vec<&[f32]> = qs.iter().map(|q| q.as_slice()).collect();
        let want = CpuScan::new().top_k(&refs, &keys, &store, 10, ScanMetric::L2).unwrap();
        // Calls 0..3 fail (an error, a panic, an error): the breaker opens.
        // Later calls succeed.
        let scan = FallbackScan::with_cool_down(
            Faulty { calls: AtomicUsize::new(0), fail: |n| match n {
                0 | 2 => Some(false),
                1 => Some(true),
                _ => None,
            } },
            Duration::from_millis(200),
        );
        for i in 0..6 {
            assert_eq!(scan.top_k(&refs, &keys, &store, 10, ScanMetric::L2).unwrap(), want, "scan {i} answered as the CPU does");
        }
        assert!(scan.is_open(), "three failures in a row open the breaker");
        assert_eq!(scan.device.calls.load(Ordering::Relaxed), 3, "an open breaker keeps work off the device");
        assert_eq!(scan.fallbacks(), 6);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(scan.top_k(&refs, &keys, &store, 10, ScanMetric::L2).unwrap(), want);
        assert_eq!(scan.device.calls.load(Ordering::Relaxed), 4, "after the cool-down the device is tried again");
        assert!(!scan.is_open(), "and a success closes the breaker");
        assert_eq!(scan.fallbacks(), 6);
        // Bad input stays the caller's error; it is not a device fault.
        let short = [1.0f32; 3];
        assert!(matches!(scan.top_k(&[&short[..]], &keys, &store, 10, ScanMetric::L2), Err(ScanError::Dimension { got: 3, want: 16 })));
        assert_eq!(scan.device.calls.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn a_device_answering_the_wrong_count_is_a_fault() {
        struct Short;
        impl Device for Short {
            fn name(&self) -> &'static str {
                "short"
            }
            fn top_k(&self, _: &[&[f32]], _: &[u64], _: &dyn RowStore, _: usize, _: ScanMetric) -> Result<Vec<Vec<Hit>>, DeviceError> {
                Ok(vec![])
            }
        }
        let (rows, qs) = data();
        let store = DenseRows { dim: 16, data: &rows };
        let keys: Vec<u64> = (0..2_000).collect();
        let refs: Vec<&[f32]> = qs.iter().map(|q| q.as_slice()).collect();
        let scan = FallbackScan::new(Short);
        let got = scan.top_k(&refs, &keys, &store, 5, ScanMetric::InnerProduct).unwrap();
        assert_eq!(got, CpuScan::new().top_k(&refs, &keys, &store, 5, ScanMetric::InnerProduct).unwrap());
        assert_eq!(scan.fallbacks(), 1);
    }
}
