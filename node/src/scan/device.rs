//! Scans on an accelerator (a GPU), with the CPU as the fallback.
//!
//! - [`Accel`]: what a device offers: allocate a buffer of rows, write rows
//!   into it, grow it, and take the exact top-k of a batch of queries over
//!   the rows a bitmap admits. [`super::cuda`] implements it with cuBLAS
//!   and an NVRTC kernel (cargo feature `cuda`); [`super::host`] is the
//!   reference implementation on the host, which the tests drive, with
//!   injected faults, through everything above it.
//! - [`super::mirror::Mirror`]: one graph's rows on the device, filled on
//!   demand and kept by offset (a version's offset never changes its
//!   vector), so each scan uploads only the rows written since the last.
//! - [`Offload`]: the node's device, its circuit breaker and its counters.
//!   [`Offload::scan`] answers a scan on the device or returns `None`, and
//!   the caller then scans on the CPU, so a device fault (an error, an
//!   out-of-memory, a panic in the binding, a wrong answer count) never
//!   fails a request. Each fallback is counted
//!   (`shoal_scan_fallbacks_total`). After [`TRIP_AFTER`] failures in a
//!   row the breaker keeps work off the device for [`COOL_DOWN`], then lets
//!   one scan through to try it again.
//! - [`GpuMode`] and [`init`]: the node's `--gpu auto|on|off`.
//!
//! Which scans go to the device is the cost model in [`Offload::wants`].
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{LazyLock, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus::IntCounterVec;
use roaring::RoaringBitmap;
use shoal_common::telemetry::counter_vec;
use shoal_proto::v1::GpuStatus;

use super::mirror::Mirror;
use super::{RowStore, ScanMetric};
use crate::index::Hit;

/// Consecutive device failures that open the breaker.
pub const TRIP_AFTER: u32 = 3;
/// How long an open breaker keeps work off the device.
pub const COOL_DOWN: Duration = Duration::from_secs(30);
/// Scans of fewer rows than this stay on the CPU: there a scan of one
/// query takes well under a millisecond on one core, about what a device
/// round trip (upload, two launches, download) costs. Not yet measured on
/// a GPU (docs/decisions.md, "The CUDA backend").
pub const DEVICE_MIN_ROWS: u64 = 4_096;
/// The largest `k` the device's top-k kernel keeps per thread; larger
/// scans run on the CPU (not a fault).
pub const DEVICE_MAX_K: usize = 128;
/// Rows the device may score per row a scan allows (see
/// [`Offload::wants`]).
pub const MAX_SPARSENESS: u64 = 8;

/// Scans the CPU answered because the device failed, was cooling down or
/// had no room for the graph, per device and reason.
pub static SCAN_FALLBACKS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec("shoal_scan_fallbacks_total", "Scans the CPU answered because the device failed (error), its breaker was open (breaker_open) or the graph did not fit (no_room)", &["device", "reason"])
});

/// Why a device could not answer.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// No device here: no driver, no libraries, no GPU.
    #[error("no device: {0}")]
    Unavailable(String),
    #[error("device out of memory: {0}")]
    OutOfMemory(String),
    /// A graph's rows do not fit beside what the device holds: that graph
    /// scans on the CPU for a while, without counting against the device.
    #[error("no room on the device: {0}")]
    NoRoom(String),
    #[error("device error: {0}")]
    Fault(String),
    /// A scan the device does not take (a `k` above [`DEVICE_MAX_K`]):
    /// answered on the CPU without counting against the device.
    #[error("not supported on the device: {0}")]
    Unsupported(String),
}

/// An accelerator's operations.
pub trait Accel: Send + Sync {
    /// What status shows, e.g. `cuda:0 NVIDIA H100 80GB HBM3`.
    fn name(&self) -> String;
    /// Device memory in use and in total, in bytes.
    fn memory(&self) -> Option<(u64, u64)>;
    /// A buffer of `rows` rows of `dim` f32 (zeroed).
    fn alloc(&self, rows: usize, dim: usize) -> Result<Box<dyn DeviceRows>, DeviceError>;
}

/// Rows held on a device, addressed by row number.
pub trait DeviceRows: Send {
    /// Rows it has room for.
    fn capacity(&self) -> usize;
    /// Device bytes it holds.
    fn bytes(&self) -> usize;
    /// Grows to room for at least `rows` rows, keeping those written.
    fn grow(&mut self, rows: usize) -> Result<(), DeviceError>;
    /// Writes rows `first..first + n` (`data` is n x dim, row-major) and
    /// their squared norms (`norms`, n).
    fn write(&mut self, first: usize, data: &[f32], norms: &[f32]) -> Result<(), DeviceError>;
    /// Each query's `k` closest rows among those whose bit is set in
    /// `mask` (bit `r % 64` of word `r / 64`), sorted by distance, then
    /// row; `queries` is `nq` x dim, row-major. `Hit::key` is the row.
    fn top_k(&mut self, queries: &[f32], nq: usize, mask: &[u64], k: usize, metric: ScanMetric) -> Result<Vec<Vec<Hit>>, DeviceError>;
}

/// A circuit breaker over a device's failures.
pub struct Breaker {
    cool_down: Duration,
    failures: AtomicU32,
    open_until: Mutex<Option<Instant>>,
}

impl Breaker {
    pub fn new(cool_down: Duration) -> Self {
        Breaker { cool_down, failures: AtomicU32::new(0), open_until: Mutex::new(None) }
    }

    /// Whether the breaker keeps work off the device now.
    pub fn is_open(&self) -> bool {
        self.open_until.lock().is_some_and(|t| Instant::now() < t)
    }

    /// Whether a scan may use the device. Once an open breaker has cooled
    /// down, one scan is let through as a trial and the breaker stays open
    /// for the others until it succeeds or fails.
    fn allow(&self) -> bool {
        let mut open = self.open_until.lock();
        match *open {
            None => true,
            Some(t) if Instant::now() < t => false,
            Some(_) => {
                *open = Some(Instant::now() + self.cool_down);
                true
            }
        }
    }

    /// A success closes the breaker (a trial after the cool-down, or a
    /// fault that passed).
    fn success(&self) {
        if self.failures.swap(0, Ordering::AcqRel) != 0 {
            *self.open_until.lock() = None;
        }
    }

    /// A trial that did not test the device (the scan was not the
    /// device's to take) leaves the breaker as it was before the trial.
    fn release_trial(&self) {
        if self.failures.load(Ordering::Acquire) >= TRIP_AFTER {
            let mut open = self.open_until.lock();
            if open.is_some() {
                *open = Some(Instant::now());
            }
        }
    }

    fn failure(&self, device: &str, why: &str) {
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        tracing::warn!(device, failures = n, why, "device scan failed; answered on the CPU");
        if n >= TRIP_AFTER {
            *self.open_until.lock() = Some(Instant::now() + self.cool_down);
            tracing::warn!(device, cool_down_s = self.cool_down.as_secs_f64(), "device breaker open: scans stay on the CPU until it cools down");
        }
    }
}

/// The node's device: the accelerator, its breaker and its counters.
pub struct Offload {
    accel: Box<dyn Accel>,
    name: String,
    breaker: Breaker,
    min_rows: u64,
    fallbacks: AtomicU64,
    scans: AtomicU64,
    pub(crate) mirrors: AtomicUsize,
    pub(crate) mirrored_bytes: AtomicUsize,
}

impl Offload {
    pub fn new(accel: Box<dyn Accel>) -> Self {
        Self::with(accel, COOL_DOWN, DEVICE_MIN_ROWS)
    }

    /// With a breaker cool-down and a smallest scan of its own (tests).
    pub fn with(accel: Box<dyn Accel>, cool_down: Duration, min_rows: u64) -> Self {
        let name = accel.name();
        Offload { accel, name, breaker: Breaker::new(cool_down), min_rows, fallbacks: AtomicU64::new(0), scans: AtomicU64::new(0), mirrors: AtomicUsize::new(0), mirrored_bytes: AtomicUsize::new(0) }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn accel(&self) -> &dyn Accel {
        self.accel.as_ref()
    }

    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// Scans the CPU answered instead of the device.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    /// What node status and metrics show of the device.
    pub fn status(&self) -> GpuStatus {
        let (memory_used_bytes, memory_total_bytes) = self.accel.memory().unwrap_or((0, 0));
        GpuStatus {
            name: self.name.clone(),
            memory_used_bytes,
            memory_total_bytes,
            mirrors: self.mirrors.load(Ordering::Relaxed) as u64,
            mirrored_bytes: self.mirrored_bytes.load(Ordering::Relaxed) as u64,
            scans: self.scans.load(Ordering::Relaxed),
            fallbacks: self.fallbacks(),
            breaker_open: self.breaker.is_open(),
        }
    }

    /// The cost model: an exact scan goes to the device when it covers at
    /// least `min_rows` rows (fewer are cheaper on the CPU than a device
    /// round trip), the rows are not too sparse over their offsets (the
    /// device scores every row from the lowest allowed to the highest,
    /// `span` of them, skipping only chunks with none allowed: at most
    /// [`MAX_SPARSENESS`] rows scored per row allowed), and `k` fits the
    /// kernel. Approximate (HNSW) searches never come here: whether an
    /// unfiltered search on a GPU node should scan the device instead of
    /// walking the graph is not measured yet.
    pub fn wants(&self, rows: u64, span: u64, k: usize) -> bool {
        rows >= self.min_rows && span <= rows.saturating_mul(MAX_SPARSENESS) && k <= DEVICE_MAX_K
    }

    /// [`Offload::wants`] for the rows `allowed` admits.
    pub fn wants_set(&self, allowed: &RoaringBitmap, k: usize) -> bool {
        let span = match (allowed.min(), allowed.max()) {
            (Some(lo), Some(hi)) => u64::from(hi - lo) + 1,
            _ => 0,
        };
        self.wants(allowed.len(), span, k)
    }

    /// Each query's top-k over the rows `allowed` admits, on the device
    /// through `mirror` (rows it lacks are read from `store`), or `None`
    /// when the device failed, has no room for the graph, or its breaker
    /// is open: the caller then scans on the CPU. Callers check
    /// dimensions first.
    pub fn scan(&'static self, mirror: &Mirror, queries: &[&[f32]], allowed: &RoaringBitmap, store: &dyn RowStore, k: usize, metric: ScanMetric) -> Option<Vec<Vec<Hit>>> {
        if !self.breaker.allow() {
            self.fell_back("breaker_open");
            return None;
        }
        let tried = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| mirror.top_k(self, queries, allowed, store, k, metric)));
        match tried {
            Ok(Ok(hits)) if hits.len() == queries.len() => {
                self.breaker.success();
                self.scans.fetch_add(1, Ordering::Relaxed);
                return Some(hits);
            }
            Ok(Err(DeviceError::Unsupported(_))) => {
                // Not the device's fault: close a trial's breaker again.
                self.breaker.release_trial();
                return None;
            }
            Ok(Err(DeviceError::NoRoom(why))) => {
                self.breaker.release_trial();
                tracing::debug!(device = %self.name, why, "a graph does not fit on the device; it scans on the CPU");
                self.fell_back("no_room");
                return None;
            }
            Ok(Ok(hits)) => {
                // The device's state is unknown: upload again next time.
                mirror.reset();
                self.breaker.failure(&self.name, &format!("{} answers for {} queries", hits.len(), queries.len()))
            }
            Ok(Err(e)) => self.breaker.failure(&self.name, &e.to_string()),
            Err(_) => {
                mirror.reset();
                self.breaker.failure(&self.name, "the device binding panicked")
            }
        }
        self.fell_back("error");
        None
    }

    fn fell_back(&self, reason: &str) {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        SCAN_FALLBACKS.with_label_values(&[self.name.as_str(), reason]).inc();
    }
}

static OFFLOAD: OnceLock<Offload> = OnceLock::new();

/// The node's device, if [`init`] found one.
pub fn offload() -> Option<&'static Offload> {
    OFFLOAD.get()
}

/// Makes `off` the node's device: a program embedding the node with its
/// own [`Accel`], or a test's. False if the node already has one.
pub fn install(off: Offload) -> bool {
    OFFLOAD.set(off).is_ok()
}

/// The node's `--gpu` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GpuMode {
    /// Use a GPU when the binary has CUDA support and the machine has a
    /// driver and a device; else the CPU.
    Auto,
    /// Require a GPU: the node does not start without one.
    On,
    /// Never use a GPU.
    Off,
}

/// Opens the device `mode` asks for and makes it the node's. Returns what
/// status shows as the search device (`cpu` without one). With
/// [`GpuMode::On`], no device is an error.
pub fn init(mode: GpuMode) -> Result<String, DeviceError> {
    if mode == GpuMode::Off {
        return Ok("cpu".into());
    }
    match open_accel() {
        Ok(accel) => {
            let name = accel.name();
            // A second init (tests starting several nodes in one process)
            // keeps the first device.
            let _ = install(Offload::new(accel));
            tracing::info!(device = %name, "exact scans run on the GPU");
            Ok(name)
        }
        Err(e) if mode == GpuMode::On => Err(e),
        Err(e) => {
            tracing::info!(why = %e, "no GPU: scans run on the CPU");
            Ok("cpu".into())
        }
    }
}

#[cfg(feature = "cuda")]
fn open_accel() -> Result<Box<dyn Accel>, DeviceError> {
    Ok(Box::new(super::cuda::CudaAccel::open(0)?))
}

#[cfg(not(feature = "cuda"))]
fn open_accel() -> Result<Box<dyn Accel>, DeviceError> {
    Err(DeviceError::Unavailable("this binary was built without the `cuda` feature".into()))
}

/// Whether `got` answers as `want` does: per query the same number of
/// hits, distances rank by rank within `tol` (relative, absolute below
/// 1), and the same rows except where two rows' distances are within
/// `tol` of each other (a tie the two computations may break apart).
pub fn same_answers(got: &[Vec<Hit>], want: &[Vec<Hit>], tol: f32) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{} answers for {} queries", got.len(), want.len()));
    }
    let close = |a: f32, b: f32| (a - b).abs() <= tol * a.abs().max(b.abs()).max(1.0);
    for (q, (g, w)) in got.iter().zip(want).enumerate() {
        if g.len() != w.len() {
            return Err(format!("query {q}: {} hits, want {}", g.len(), w.len()));
        }
        for (i, (a, b)) in g.iter().zip(w).enumerate() {
            if !close(a.distance, b.distance) {
                return Err(format!("query {q}, rank {i}: distance {} (row {}), want {} (row {})", a.distance, a.key, b.distance, b.key));
            }
            if a.key != b.key && !w.iter().any(|x| x.key == a.key && close(x.distance, a.distance)) && !close(w.last().map_or(f32::INFINITY, |x| x.distance), a.distance) {
                return Err(format!("query {q}, rank {i}: row {}, want row {}", a.key, b.key));
            }
        }
    }
    Ok(())
}

/// Checks a device against the host reference before the node uses it:
/// writes the same pseudo-random rows (`dev` and `reference` must hold at
/// least 3,000 rows of `dim`) and compares their scans, both metrics, k
/// of 1, 10 and 128, batches of 1 and 9 queries, every row admitted and a
/// mask with gaps and a long hole. A device that answers differently is
/// refused, so a wrong kernel never serves a search.
pub fn self_test(dev: &mut dyn DeviceRows, reference: &mut dyn DeviceRows, dim: usize) -> Result<(), DeviceError> {
    const ROWS: usize = 3_000;
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let data: Vec<f32> = (0..ROWS * dim).map(|_| next()).collect();
    let norms: Vec<f32> = data.chunks_exact(dim).map(|r| crate::index::kernel::dot(r, r)).collect();
    dev.write(0, &data, &norms)?;
    reference.write(0, &data, &norms)?;
    let queries: Vec<f32> = (0..9 * dim).map(|_| next()).collect();
    let mut all = vec![u64::MAX; ROWS.div_ceil(64)];
    if !ROWS.is_multiple_of(64) {
        *all.last_mut().expect("rows") = (1 << (ROWS % 64)) - 1;
    }
    let gaps: Vec<u64> = all.iter().enumerate().map(|(w, bits)| if (10..25).contains(&w) { 0 } else { bits & 0x6DB6_DB6D_B6DB_6DB6 }).collect();
    for mask in [&all, &gaps] {
        for metric in [ScanMetric::L2, ScanMetric::InnerProduct] {
            for k in [1, 10, DEVICE_MAX_K] {
                for nq in [1, 9] {
                    let got = dev.top_k(&queries[..nq * dim], nq, mask, k, metric)?;
                    let want = reference.top_k(&queries[..nq * dim], nq, mask, k, metric)?;
                    same_answers(&got, &want, 1e-4).map_err(|e| DeviceError::Fault(format!("self-test ({metric:?}, k {k}, {nq} queries): {e}")))?;
                }
            }
        }
    }
    Ok(())
}
