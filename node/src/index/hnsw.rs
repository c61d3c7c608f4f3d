//! HNSW index on usearch, storing f32, f16, or quantized codes
//! ([`super::quant`]) with the full vectors in a [`VectorFile`].
//!
//! Quantized searches take `oversampling × k` candidates from the graph by
//! their codes' distance and re-score them with the full vectors
//! ([`SearchOpts`]); exact scans read the full vectors.
//!
//! Per-request `ef`: usearch takes the expansion as an index-wide setting,
//! but its search uses `max(expansion_search, wanted)` candidates. We keep
//! `expansion_search = 1` and ask for `max(ef, k)` results, then keep the
//! best `k`, which is the same candidate list as `expansion_search = ef`
//! without shared mutable state between concurrent searches.
//!
//! Concurrency: usearch serves each concurrent call from a pre-reserved
//! thread context; [`HnswIndex`] bounds concurrent calls with a semaphore
//! sized to the reserved contexts, and takes an exclusive lock only to grow
//! capacity.
use std::borrow::Cow;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex, RwLock};
use roaring::RoaringBitmap;
use shoal_proto::v1::Metric;
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use super::quant::{Code, Codec, CALIBRATION_ROWS};
use super::vecfile::VectorFile;
use super::{kernel, kernel_i8, sort_hits, Allowed, Hit, Precision, VectorIndex};
use crate::error::IndexError;
use crate::scan::cpu::GEMM_MIN_QUERIES;
use crate::scan::device::Offload;
use crate::scan::mirror::Mirror;
use crate::scan::rows::{FileRows, GraphRows};
use crate::scan::ScanMetric;

/// Oversampling of an INT8 search when the request names none: measured
/// in docs/benchmarks.md ("Quantized storage").
pub const DEFAULT_OVERSAMPLING_INT8: f32 = 2.0;
/// Oversampling of a BINARY search when the request names none.
pub const DEFAULT_OVERSAMPLING_BINARY: f32 = 16.0;

/// Per-search settings of a quantized graph (ignored by f32 and f16).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SearchOpts {
    /// Candidates per result taken from the graph (default per kind).
    pub oversampling: Option<f32>,
    /// Re-score with the full vectors (default true).
    pub rescore: Option<bool>,
}

/// The graph and the codec its codes were made with: they change together
/// (a compaction swaps both).
struct Graph {
    index: Index,
    codec: Option<Codec>,
    /// Rows the codec was calibrated on (0 before the first add).
    calibrated_on: usize,
    /// The storage kind: a live storage change swaps in a graph of
    /// another kind ([`HnswIndex::replace_with`]).
    precision: Precision,
    /// Quantized kinds: the full vectors, and whether this graph writes
    /// them (a compaction's new graph shares the live graph's file and
    /// leaves it to the live one).
    vectors: Option<Arc<VectorFile>>,
    write_vectors: bool,
}

/// The sidecar name of an unquantized graph's kind (`None` when quantized:
/// its calibration names it).
fn plain_kind(p: Precision) -> Option<&'static str> {
    match p {
        Precision::F32 => Some("f32"),
        Precision::F16 => Some("f16"),
        _ => None,
    }
}

/// A graph key as a vector-file offset (keys are u32 point-version offsets).
fn offset_of(key: u64) -> Result<u32, IndexError> {
    u32::try_from(key).map_err(|_| IndexError::Usearch(format!("key {key} past the offset range")))
}

fn file_error(e: std::io::Error) -> IndexError {
    IndexError::File { path: "vector file".into(), detail: e.to_string() }
}

/// Build parameters.
#[derive(Debug, Clone, Copy)]
pub struct HnswParams {
    pub dim: usize,
    pub metric: Metric,
    pub precision: Precision,
    pub m: usize,
    pub ef_construction: usize,
}

/// A graph's first nodes are inserted one at a time ([`HnswIndex`]'s
/// `add_batch`); later ones in parallel.
const SEQUENTIAL_SEED: usize = 1024;

/// Concurrent calls into one index (usearch thread contexts reserved).
pub fn max_concurrency() -> usize {
    std::thread::available_parallelism().map_or(4, |n| n.get()).max(4) * 4
}

struct Gate {
    free: Mutex<usize>,
    cv: Condvar,
}

struct Permit<'a>(&'a Gate);

impl Gate {
    fn acquire(&self) -> Permit<'_> {
        let mut f = self.free.lock();
        while *f == 0 {
            self.cv.wait(&mut f);
        }
        *f -= 1;
        Permit(self)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *self.0.free.lock() += 1;
        self.0.cv.notify_one();
    }
}

/// A graph's rows read one at a time, each under its own short lock
/// ([`VectorIndex::get`]): what the device path uploads from, so no lock
/// of the graph is held while a device works.
struct IndexRows<'a>(&'a HnswIndex);

impl crate::scan::RowStore for IndexRows<'_> {
    fn dim(&self) -> usize {
        self.0.params.dim
    }

    fn fill(&self, key: u64, out: &mut [f32]) -> bool {
        self.0.get(key, out)
    }
}

pub struct HnswIndex {
    params: HnswParams,
    index: RwLock<Graph>,
    /// Quantized kinds: the keys in the graph (exact scans of all of it).
    keys: Mutex<RoaringBitmap>,
    /// Held shared by adds and removes, exclusively by a save and a memory
    /// measurement: usearch cannot serialise (or walk) a graph while nodes
    /// are being inserted, but searches may run during a save. (A save
    /// once took the index lock exclusively, so searches on async workers
    /// waited for it and Raft heartbeats on those workers were missed.)
    mutate: RwLock<()>,
    /// Held shared around each usearch insert, exclusively by usearch's
    /// exact search: usearch counts a new node (which its exact search
    /// walks) before it stores the node's vector, so an exact search
    /// beside an insert could read a null vector (a segfault seen when a
    /// restarted node indexed deferred versions while serving). `get`
    /// needs no such guard: the vendored usearch stores a vector before it
    /// maps the key (node/vendor/usearch/SHOAL.md).
    inserting: RwLock<()>,
    gate: Gate,
    live: AtomicUsize,
    /// Removals since the graph was built or loaded: usearch keeps removed
    /// nodes in the graph (searches walk through them), so a shard
    /// compacts its graph when they pile up ([`HnswIndex::replace_with`]).
    removed: AtomicUsize,
    /// usearch's memory use as of the last time it could be measured
    /// without waiting (see `memory_bytes`).
    memory: AtomicUsize,
    /// This graph's rows on the node's GPU, when it has one (scan/mirror.rs).
    mirror: Mirror,
}

fn options(p: &HnswParams) -> IndexOptions {
    if p.precision.quantized() {
        let (quantization, metric) = Codec::usearch_kind(p.precision == Precision::I8, p.metric);
        return IndexOptions { dimensions: p.dim, metric, quantization, connectivity: p.m, expansion_add: p.ef_construction, expansion_search: 1, multi: false };
    }
    IndexOptions {
        dimensions: p.dim,
        // Cosine vectors are stored and queried as unit vectors (see
        // `unit`), so the inner product is the cosine: usearch's cos kernel
        // would recompute both norms on every distance.
        metric: match p.metric {
            Metric::L2 => MetricKind::L2sq,
            _ => MetricKind::IP,
        },
        // Set explicitly: usearch's default stores BF16.
        quantization: match p.precision {
            Precision::F16 => ScalarKind::F16,
            _ => ScalarKind::F32,
        },
        connectivity: p.m,
        expansion_add: p.ef_construction,
        expansion_search: 1,
        multi: false,
    }
}

/// An f32 graph measures with Shoal's f32-accumulating kernels
/// (kernel.rs), an INT8 graph with Shoal's int8 kernels (kernel_i8.rs);
/// usearch keeps its own for F16 and BINARY.
fn use_kernels(index: &mut Index, p: &HnswParams) -> Result<(), IndexError> {
    if !kernel::enabled() {
        return Ok(());
    }
    match p.precision {
        Precision::F32 => kernel::register(index, p.dim, p.metric == Metric::L2)?,
        Precision::I8 => kernel_i8::register(index, p.dim, p.metric == Metric::L2)?,
        _ => {}
    }
    Ok(())
}

fn usearch_index(p: &HnswParams) -> Result<Index, IndexError> {
    let mut index = Index::new(&options(p))?;
    use_kernels(&mut index, p)?;
    Ok(index)
}

impl HnswIndex {
    /// An empty graph. Quantized kinds need `vectors`, the file their full
    /// vectors go to.
    pub fn new(params: HnswParams) -> Result<Self, IndexError> {
        Self::with_vectors(params, None)
    }

    /// [`HnswIndex::new`] with the full-vector file of a quantized kind.
    pub fn with_vectors(params: HnswParams, vectors: Option<Arc<VectorFile>>) -> Result<Self, IndexError> {
        let index = usearch_index(&params)?;
        index.reserve_capacity_and_threads(1024, max_concurrency())?;
        Self::wrap(params, Graph { index, codec: None, calibrated_on: 0, precision: params.precision, vectors, write_vectors: true }, 0)
    }

    /// An empty graph with `params` that reads this one's vector file but
    /// leaves writing it to this graph (a compaction's rebuild). A graph
    /// of another kind (a storage change) writes the file itself when this
    /// one has none.
    pub fn fresh(&self, params: HnswParams, vectors: Option<Arc<VectorFile>>) -> Result<Self, IndexError> {
        let mine = self.vector_file();
        let shared = params.precision.quantized() && mine.is_some() && vectors.is_none();
        let g = Self::with_vectors(params, if shared { mine } else { vectors })?;
        g.index.write().write_vectors = !shared;
        Ok(g)
    }

    fn wrap(params: HnswParams, graph: Graph, live: usize) -> Result<Self, IndexError> {
        if params.precision.quantized() != graph.vectors.is_some() {
            return Err(IndexError::Usearch(format!("{:?} storage {} a vector file", params.precision, if graph.vectors.is_some() { "takes no" } else { "needs" })));
        }
        Ok(HnswIndex {
            params,
            index: RwLock::new(graph),
            keys: Mutex::new(RoaringBitmap::new()),
            mutate: RwLock::new(()),
            inserting: RwLock::new(()),
            gate: Gate { free: Mutex::new(max_concurrency()), cv: Condvar::new() },
            live: AtomicUsize::new(live),
            removed: AtomicUsize::new(0),
            memory: AtomicUsize::new(0),
            mirror: Mirror::new(params.dim),
        })
    }

    /// Loads an index saved by [`VectorIndex::save`]. Fails if the file is
    /// missing, damaged or was built with other parameters. A quantized
    /// kind needs the calibration saved with it ([`HnswIndex::calibration`])
    /// and its vector file; `keys` are the keys the file holds (the shard's
    /// reconciliation removes the stale ones).
    pub fn load(params: HnswParams, path: &Path, calibration: Option<&str>, vectors: Option<Arc<VectorFile>>) -> Result<Self, IndexError> {
        let file_err = |d: String| IndexError::File { path: path.display().to_string(), detail: d };
        let (codec, calibrated_on) = match (params.precision.quantized(), calibration) {
            // Sidecars from before live storage changes name no kind.
            (false, None) => (None, 0),
            (false, Some(text)) if Some(text) == plain_kind(params.precision) => (None, 0),
            (false, Some(text)) => return Err(file_err(format!("the file is a {text:?} graph, the collection stores {:?}", params.precision))),
            (true, None) => return Err(file_err("no calibration for a quantized graph".into())),
            (true, Some(text)) => {
                let (c, rows) = text.rsplit_once(';').ok_or_else(|| file_err(format!("the file is a {text:?} graph, the collection stores {:?}", params.precision)))?;
                let codec = Codec::from_text(c, params.dim).ok_or_else(|| file_err("malformed calibration".into()))?;
                let matches = matches!((&codec, params.precision), (Codec::I8 { .. }, Precision::I8) | (Codec::B1 { .. }, Precision::B1));
                if !matches {
                    return Err(file_err("calibration of another storage kind".into()));
                }
                (Some(codec), rows.parse().map_err(|_| file_err("malformed calibration".into()))?)
            }
        };
        let mut index = Index::new(&options(&params))?;
        index.load(path.to_str().ok_or_else(|| file_err("non-UTF-8 path".into()))?).map_err(|e| file_err(e.what().to_string()))?;
        if index.dimensions() != params.dim {
            return Err(file_err(format!("file has {} dimensions, collection has {}", index.dimensions(), params.dim)));
        }
        // usearch takes the scalar kind and metric from the file's header:
        // a file of another kind (a sidecar that names none) or an older
        // metric (cosine graphs before unit vectors) is rebuilt, and Shoal's
        // f32 kernels only ever see f32 rows.
        let want = options(&params);
        if index.scalar_kind() != want.quantization || index.metric_kind() != want.metric {
            return Err(file_err(format!("file stores {:?} with {:?}, the collection wants {:?} with {:?}", index.scalar_kind(), index.metric_kind(), want.quantization, want.metric)));
        }
        use_kernels(&mut index, &params)?;
        let size = index.size();
        index.reserve_capacity_and_threads((size + 1024).max(index.capacity()), max_concurrency())?;
        Self::wrap(params, Graph { index, codec, calibrated_on, precision: params.precision, vectors, write_vectors: true }, size)
    }

    /// The graph's kind and a quantized graph's calibration, for its
    /// sidecar: `f32`, `f16`, or the codec and its sample size (`None` for
    /// a quantized graph before its first vector).
    pub fn calibration(&self) -> Option<String> {
        let g = self.index.read();
        match plain_kind(g.precision) {
            Some(kind) => Some(kind.into()),
            None => g.codec.as_ref().map(|c| format!("{};{}", c.to_text(), g.calibrated_on)),
        }
    }

    /// Whether a quantized graph's calibration was made on a sample small
    /// beside what it holds now, so a rebuild would calibrate better
    /// (its first [`CALIBRATION_ROWS`]).
    pub fn needs_recalibration(&self) -> bool {
        let g = self.index.read();
        let sampled = match &g.codec {
            Some(Codec::I8 { scale }) if *scale == 0.0 => return false,
            Some(Codec::B1 { center }) if center.is_empty() => return false,
            Some(_) => g.calibrated_on,
            None => return false,
        };
        sampled < CALIBRATION_ROWS && self.len() >= 4 * sampled.max(256)
    }

    /// The full-vector file of a quantized graph.
    pub fn vector_file(&self) -> Option<Arc<VectorFile>> {
        self.index.read().vectors.clone()
    }

    /// Keeps `key`, which a loaded graph holds and storage has as `v`: a
    /// quantized graph notes the key and checks its vector-file slot,
    /// rewriting it when it does not hold `v` (returns true then). The
    /// shard calls this for every live key at open.
    pub fn keep_loaded(&self, key: u64, v: &[f32]) -> Result<bool, IndexError> {
        let Some(file) = self.vector_file() else { return Ok(false) };
        let off = offset_of(key)?;
        self.check_dim(v)?;
        self.keys.lock().insert(off);
        let v = self.unit(v);
        if file.holds(key, &v) {
            return Ok(false);
        }
        file.put(key, &v).map_err(file_error)?;
        self.mirror.invalidate(key);
        Ok(true)
    }

    /// Keeps `key`, which a loaded graph holds, without its stored vector
    /// (a shard opening from its key checkpoint): true if there is nothing
    /// to check (no vector file) or its slot's checksum holds; false means
    /// the caller must pass the stored vector to [`HnswIndex::keep_loaded`].
    pub fn keep_checked(&self, key: u64) -> Result<bool, IndexError> {
        let Some(file) = self.vector_file() else { return Ok(true) };
        let off = offset_of(key)?;
        if !file.valid(key) {
            return Ok(false);
        }
        self.keys.lock().insert(off);
        Ok(true)
    }

    /// Sets the codec from `sample` if the graph has none yet.
    fn calibrate(&self, sample: &[&[f32]]) {
        if sample.is_empty() {
            return;
        }
        {
            let g = self.index.read();
            if !g.precision.quantized() || g.codec.is_some() {
                return;
            }
        }
        let mut g = self.index.write();
        if g.codec.is_none() {
            let unit: Vec<Cow<[f32]>> = sample.iter().take(CALIBRATION_ROWS).map(|v| self.unit(v)).collect();
            let refs: Vec<&[f32]> = unit.iter().map(|v| &**v).collect();
            g.codec = Some(Codec::calibrate(g.precision == Precision::I8, self.params.metric, self.params.dim, &refs));
            g.calibrated_on = refs.len();
        }
    }

    /// The build parameters.
    pub fn params(&self) -> HnswParams {
        HnswParams { precision: self.index.read().precision, ..self.params }
    }

    /// Removals since this graph was built or loaded.
    pub fn removed(&self) -> usize {
        self.removed.load(Ordering::Relaxed)
    }

    /// Holds off adds and removes as a save does (searches go on), for
    /// tests of what runs during a save.
    #[doc(hidden)]
    pub fn hold_mutations(&self) -> impl Drop + '_ {
        struct Held<'a>(#[allow(dead_code)] parking_lot::RwLockWriteGuard<'a, ()>);
        impl Drop for Held<'_> {
            fn drop(&mut self) {}
        }
        Held(self.mutate.write())
    }

    /// Takes over `other`'s graph (a compacted rebuild of this one):
    /// searches running now finish on the old graph, later ones use the
    /// new one. The caller keeps writers out meanwhile.
    pub fn replace_with(&self, other: HnswIndex) {
        let mut g = self.index.write();
        *g = other.index.into_inner();
        // The live graph writes its vector file from now on.
        g.write_vectors = true;
        *self.keys.lock() = std::mem::take(&mut *other.keys.lock());
        self.live.store(other.live.load(Ordering::Relaxed), Ordering::Relaxed);
        self.removed.store(0, Ordering::Relaxed);
        self.mirror.reset();
    }

    /// Adds one vector; the caller holds `mutate`, has grown the index and
    /// calibrated it.
    fn add_one(&self, key: u64, v: &[f32]) -> Result<(), IndexError> {
        let _p = self.gate.acquire();
        self.insert(&self.index.read(), key, v)
    }

    /// Writes `v`'s full vector (quantized kinds) and its code or value
    /// to the graph.
    fn insert(&self, g: &Graph, key: u64, v: &[f32]) -> Result<(), IndexError> {
        let v = self.unit(v);
        match (&g.codec, &g.vectors) {
            (None, None) => {
                let _i = self.inserting.read();
                g.index.add(key, &v)?
            }
            (Some(codec), Some(file)) => {
                let off = offset_of(key)?;
                if g.write_vectors {
                    file.put(key, &v).map_err(file_error)?;
                }
                match codec.encode(&v) {
                    Code::I8(c) => g.index.add(key, &c)?,
                    Code::B1(c) => g.index.add(key, &c)?,
                }
                self.keys.lock().insert(off);
            }
            _ => return Err(IndexError::Usearch("quantized graph without its calibration or vector file".into())),
        }
        self.mirror.invalidate(key);
        self.live.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The search's candidates by the codes (quantized) or values, and
    /// the scale the query was coded with.
    fn walk(&self, g: &Graph, q: &[f32], want: usize, allowed: &Allowed<'_>) -> Result<(usearch::ffi::Matches, f32), IndexError> {
        let filter = |key| allowed.contains(key);
        let all = matches!(allowed, Allowed::All);
        let Some(codec) = &g.codec else {
            return Ok((if all { g.index.search(q, want)? } else { g.index.filtered_search(q, want, filter)? }, 1.0));
        };
        let (code, qscale) = codec.encode_query(self.params.metric, q);
        Ok((
            match code {
                Code::I8(c) if all => g.index.search(&c, want)?,
                Code::I8(c) => g.index.filtered_search(&c, want, filter)?,
                Code::B1(c) if all => g.index.search(&c, want)?,
                Code::B1(c) => g.index.filtered_search(&c, want, filter)?,
            },
            qscale,
        ))
    }

    /// Distance between a (unit for cosine) query and a stored full vector,
    /// in the graph's convention (`1 - dot` for cosine and dot).
    fn full_distance(&self, q: &[f32], v: &[f32]) -> f32 {
        match self.params.metric {
            Metric::L2 => kernel::l2sq(q, v),
            _ => 1.0 - kernel::dot(q, v),
        }
    }

    /// How the scan engine measures this graph's vectors (index
    /// convention: cosine vectors are unit, scored by `1 - dot`).
    pub fn scan_metric(&self) -> ScanMetric {
        match self.params.metric {
            Metric::L2 => ScanMetric::L2,
            _ => ScanMetric::InnerProduct,
        }
    }

    /// The exact top-`k` of each query among the keys `allowed` admits,
    /// through the scan engine: the rows are read once for the whole batch
    /// (scan/). Full-precision graphs lend their own vectors, quantized
    /// ones their vector file. `whole` says `allowed` holds every key the
    /// graph holds: a few queries over a full-precision graph then use
    /// usearch's own brute force, which reads its vectors in place (a
    /// per-row copy out of usearch costs more than the distance).
    pub fn exact_batch(&self, queries: &[&[f32]], k: usize, allowed: &RoaringBitmap, whole: bool) -> Result<Vec<Vec<Hit>>, IndexError> {
        self.exact_batch_on(crate::scan::device::offload(), queries, k, allowed, whole)
    }

    /// [`HnswIndex::exact_batch`] with the device `off` (the node's, or a
    /// test's): scans the cost model sends there run on it, and on the
    /// CPU when it fails.
    pub(crate) fn exact_batch_on(&self, off: Option<&'static Offload>, queries: &[&[f32]], k: usize, allowed: &RoaringBitmap, whole: bool) -> Result<Vec<Vec<Hit>>, IndexError> {
        for q in queries {
            self.check_dim(q)?;
        }
        let units: Vec<Cow<'_, [f32]>> = queries.iter().map(|q| self.unit(q)).collect();
        let qs: Vec<&[f32]> = units.iter().map(|q| &**q).collect();
        let _p = self.gate.acquire();
        let metric = self.scan_metric();
        if let Some(off) = off {
            // No lock of the graph's is held while the device works: a
            // write (or a vector file growing, or a compaction swapping the
            // graph) never waits for a GPU. Rows are read one lock at a
            // time (`VectorIndex::get`) while uploading.
            let quantized = self.vector_file().is_some();
            let held = if quantized { &*self.keys.lock() & allowed } else { allowed.clone() };
            if off.wants_set(&held, k) {
                if let Some(hits) = off.scan(&self.mirror, &qs, &held, &IndexRows(self), k, metric) {
                    return Ok(hits);
                }
            }
        }
        let g = self.index.read();
        let dim = self.params.dim;
        let scan = crate::scan::backend();
        if let Some(file) = &g.vectors {
            let held = &*self.keys.lock() & allowed;
            let keys: Vec<u64> = held.iter().map(u64::from).collect();
            return Ok(scan.top_k(&qs, &keys, &FileRows { reader: file.reader(), dim }, k, metric)?);
        }
        if whole && qs.len() < GEMM_MIN_QUERIES {
            return qs.iter().map(|q| self.usearch_exact(&g, q, k)).collect();
        }
        let keys: Vec<u64> = allowed.iter().map(u64::from).collect();
        Ok(scan.top_k(&qs, &keys, &GraphRows { index: &g.index, dim }, k, metric)?)
    }

    /// Rows this graph holds on the device (status, tests).
    pub fn mirrored_rows(&self) -> u64 {
        self.mirror.rows_held()
    }

    /// usearch's brute force over every node of a full-precision graph
    /// (`q` already unit for cosine). It waits for the inserts in flight
    /// (each well under a millisecond), not for whole batches: usearch
    /// counts a node before it stores its vector.
    fn usearch_exact(&self, g: &Graph, q: &[f32], k: usize) -> Result<Vec<Hit>, IndexError> {
        let m = {
            let _i = self.inserting.write();
            g.index.exact_search(q, k)?
        };
        let mut hits: Vec<Hit> = m.keys.iter().zip(&m.distances).map(|(k, d)| Hit { key: *k, distance: *d }).collect();
        sort_hits(&mut hits, k);
        Ok(hits)
    }

    /// Approximate top-`k` with per-search settings for quantized kinds.
    pub fn search_with(&self, q: &[f32], k: usize, ef: usize, allowed: &Allowed<'_>, opts: SearchOpts) -> Result<Vec<Hit>, IndexError> {
        self.check_dim(q)?;
        let q = self.unit(q);
        let q = &*q;
        let _p = self.gate.acquire();
        let g = self.index.read();
        let (Some(codec), Some(file)) = (&g.codec, &g.vectors) else {
            if g.vectors.is_some() {
                // A quantized graph before its first vector.
                return Ok(vec![]);
            }
            let (m, _) = self.walk(&g, q, ef.max(k), allowed)?;
            let mut hits: Vec<Hit> = m.keys.iter().zip(&m.distances).map(|(k, d)| Hit { key: *k, distance: *d }).collect();
            sort_hits(&mut hits, k);
            return Ok(hits);
        };
        let rescore = opts.rescore.unwrap_or(true);
        let over = opts.oversampling.unwrap_or(match g.precision {
            Precision::B1 => DEFAULT_OVERSAMPLING_BINARY,
            _ => DEFAULT_OVERSAMPLING_INT8,
        });
        // At least k; more by oversampling, up to MAX_EF (top_k may pass it).
        let take = if rescore { ((k as f32 * over.max(1.0)).ceil() as usize).min(shoal_proto::limits::MAX_EF as usize).max(k) } else { k };
        let (m, qscale) = self.walk(&g, q, ef.max(take), allowed)?;
        let mut hits: Vec<Hit> = m.keys.iter().zip(&m.distances).map(|(k, d)| Hit { key: *k, distance: *d }).collect();
        sort_hits(&mut hits, take);
        if !rescore {
            for h in &mut hits {
                h.distance = codec.approx_distance(self.params.metric, self.params.dim, h.distance, qscale);
            }
            sort_hits(&mut hits, k);
            return Ok(hits);
        }
        let r = file.reader();
        hits.retain_mut(|h| match r.get(h.key) {
            Some(v) => {
                h.distance = self.full_distance(q, v);
                true
            }
            None => false,
        });
        sort_hits(&mut hits, k);
        Ok(hits)
    }

    /// Ensures room for `extra` more vectors.
    fn grow(&self, extra: usize) -> Result<(), IndexError> {
        let need = {
            let g = self.index.read();
            let need = g.index.size() + extra;
            if need <= g.index.capacity() {
                return Ok(());
            }
            need
        };
        let g = self.index.write();
        if need > g.index.capacity() {
            g.index.reserve_capacity_and_threads((need + need / 2).max(1024), max_concurrency())?;
        }
        Ok(())
    }

    /// `v` as the index stores it: scaled to unit length for cosine.
    fn unit<'a>(&self, v: &'a [f32]) -> Cow<'a, [f32]> {
        if self.params.metric != Metric::Cosine {
            return Cow::Borrowed(v);
        }
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if n == 0.0 || (n - 1.0).abs() < 1e-6 {
            Cow::Borrowed(v)
        } else {
            Cow::Owned(v.iter().map(|x| x / n).collect())
        }
    }

    fn check_dim(&self, v: &[f32]) -> Result<(), IndexError> {
        if v.len() != self.params.dim {
            return Err(IndexError::Dimension { got: v.len(), want: self.params.dim });
        }
        Ok(())
    }
}

impl VectorIndex for HnswIndex {
    fn dimension(&self) -> usize {
        self.params.dim
    }

    fn len(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    fn add(&self, key: u64, v: &[f32]) -> Result<(), IndexError> {
        self.check_dim(v)?;
        // Before growing: a save holds `mutate`, and a grow queued behind
        // the save's read lock would hold up every search behind it.
        let _m = self.mutate.read();
        self.grow(1)?;
        self.calibrate(&[v]);
        self.add_one(key, v)
    }

    fn add_batch(&self, items: &[(u64, &[f32])]) -> Result<(), IndexError> {
        for (_, v) in items {
            self.check_dim(v)?;
        }
        // Taken once here, never again in the threads below (a read lock
        // taken twice deadlocks behind a waiting save).
        let _m = self.mutate.read();
        self.grow(items.len())?;
        self.calibrate(&items.iter().map(|(_, v)| *v).collect::<Vec<_>>());
        // The first nodes of a graph go in one at a time: inserted
        // concurrently into a near-empty graph, they link to each other
        // poorly and a few end up unreachable (seen: 5 of 200 points that
        // no search found, ef 200, after a compaction built in parallel).
        let seed = SEQUENTIAL_SEED.saturating_sub(self.index.read().index.size()).min(items.len());
        let (first, items) = items.split_at(seed);
        first.iter().try_for_each(|(k, v)| self.add_one(*k, v))?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(items.len().div_ceil(64)).max(1);
        if threads == 1 {
            return items.iter().try_for_each(|(k, v)| self.add_one(*k, v));
        }
        let chunk = items.len().div_ceil(threads);
        std::thread::scope(|s| {
            let handles: Vec<_> = items
                .chunks(chunk)
                .map(|part| {
                    s.spawn(move || -> Result<(), IndexError> {
                        let _p = self.gate.acquire();
                        let g = self.index.read();
                        for (k, v) in part {
                            self.insert(&g, *k, v)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            handles.into_iter().try_for_each(|h| h.join().unwrap_or_else(|_| Err(IndexError::Usearch("index thread panicked".into()))))
        })
    }

    fn remove(&self, key: u64) -> Result<(), IndexError> {
        let _m = self.mutate.read();
        let _p = self.gate.acquire();
        let g = self.index.read();
        let removed = g.index.remove(key)?;
        if g.vectors.is_some() && key <= u32::MAX as u64 {
            self.keys.lock().remove(key as u32);
        }
        // The offset may be reused by a later version.
        self.mirror.invalidate(key);
        if removed > 0 {
            self.live.fetch_sub(1, Ordering::Relaxed);
            self.removed.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn contains(&self, key: u64) -> bool {
        self.index.read().index.contains(key)
    }

    fn search(&self, q: &[f32], k: usize, ef: usize, allowed: &Allowed<'_>) -> Result<Vec<Hit>, IndexError> {
        self.search_with(q, k, ef, allowed, SearchOpts::default())
    }

    fn exact(&self, q: &[f32], k: usize, allowed: &Allowed<'_>) -> Result<Vec<Hit>, IndexError> {
        match allowed {
            Allowed::Set(set) => Ok(self.exact_batch(&[q], k, set, false)?.pop().unwrap_or_default()),
            Allowed::All if self.index.read().vectors.is_some() => {
                let keys = self.keys.lock().clone();
                Ok(self.exact_batch(&[q], k, &keys, true)?.pop().unwrap_or_default())
            }
            Allowed::All => {
                self.check_dim(q)?;
                let q = self.unit(q);
                let _p = self.gate.acquire();
                self.usearch_exact(&self.index.read(), &q, k)
            }
        }
    }

    fn get(&self, key: u64, out: &mut [f32]) -> bool {
        if let Some(file) = self.vector_file() {
            if key > u32::MAX as u64 || !self.keys.lock().contains(key as u32) || out.len() != self.params.dim {
                return false;
            }
            return match file.reader().get(key) {
                Some(v) => {
                    out.copy_from_slice(v);
                    true
                }
                None => false,
            };
        }
        matches!(self.index.read().index.get(key, out), Ok(n) if n > 0)
    }

    fn memory_bytes(&self) -> usize {
        // usearch walks every node, and a node being added concurrently is
        // not safe to read (it crashed the process), so this needs the
        // index exclusively. Waiting for it would stall writes and the
        // indexer behind a status call: measure only when the index is
        // idle, else report the last measurement.
        if let Some(_m) = self.mutate.try_write() {
            self.memory.store(self.index.read().index.memory_usage(), Ordering::Relaxed);
        }
        self.memory.load(Ordering::Relaxed)
    }

    fn save(&self, path: &Path) -> Result<(), IndexError> {
        let tmp = path.with_extension("tmp");
        let file_err = |d: String| IndexError::File { path: path.display().to_string(), detail: d };
        // No add or remove may race the serialisation; searches may.
        let _m = self.mutate.write();
        let g = self.index.read();
        self.memory.store(g.index.memory_usage(), Ordering::Relaxed);
        if let Some(f) = &g.vectors {
            f.sync().map_err(|e| file_err(format!("vector file: {e}")))?;
        }
        g.index.save(tmp.to_str().ok_or_else(|| file_err("non-UTF-8 path".into()))?).map_err(|e| file_err(e.what().to_string()))?;
        std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| file_err(e.to_string()))?;
        crate::storage::rename_durable(&tmp, path).map_err(|e| file_err(e.to_string()))?;
        Ok(())
    }
}

