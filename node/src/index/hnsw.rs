//! HNSW index on usearch, storing f32 or f16.
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

use parking_lot::{Condvar, Mutex, RwLock};
use shoal_proto::v1::Metric;
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use super::{sort_hits, Allowed, Distance, Hit, Precision, VectorIndex};
use crate::error::IndexError;

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

pub struct HnswIndex {
    params: HnswParams,
    dist: Distance,
    index: RwLock<Index>,
    /// Held shared by adds and removes, exclusively by a save and a memory
    /// measurement: usearch cannot serialise (or walk) a graph while nodes
    /// are being inserted, but searches may run during a save. (A save
    /// once took the index lock exclusively, so searches on async workers
    /// waited for it and Raft heartbeats on those workers were missed.)
    mutate: RwLock<()>,
    gate: Gate,
    live: AtomicUsize,
    /// Removals since the graph was built or loaded: usearch keeps removed
    /// nodes in the graph (searches walk through them), so a shard
    /// compacts its graph when they pile up ([`HnswIndex::replace_with`]).
    removed: AtomicUsize,
    /// usearch's memory use as of the last time it could be measured
    /// without waiting (see `memory_bytes`).
    memory: AtomicUsize,
}

fn options(p: &HnswParams) -> IndexOptions {
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
            Precision::F32 => ScalarKind::F32,
            Precision::F16 => ScalarKind::F16,
        },
        connectivity: p.m,
        expansion_add: p.ef_construction,
        expansion_search: 1,
        multi: false,
    }
}

impl HnswIndex {
    pub fn new(params: HnswParams) -> Result<Self, IndexError> {
        let index = Index::new(&options(&params))?;
        index.reserve_capacity_and_threads(1024, max_concurrency())?;
        Ok(Self::wrap(params, index, 0))
    }

    fn wrap(params: HnswParams, index: Index, live: usize) -> Self {
        HnswIndex {
            params,
            dist: Distance(params.metric),
            index: RwLock::new(index),
            mutate: RwLock::new(()),
            gate: Gate { free: Mutex::new(max_concurrency()), cv: Condvar::new() },
            live: AtomicUsize::new(live),
            removed: AtomicUsize::new(0),
            memory: AtomicUsize::new(0),
        }
    }

    /// Loads an index saved by [`VectorIndex::save`]. Fails if the file is
    /// missing, damaged or was built with other parameters.
    pub fn load(params: HnswParams, path: &Path) -> Result<Self, IndexError> {
        let file_err = |d: String| IndexError::File { path: path.display().to_string(), detail: d };
        let index = Index::new(&options(&params))?;
        index.load(path.to_str().ok_or_else(|| file_err("non-UTF-8 path".into()))?).map_err(|e| file_err(e.what().to_string()))?;
        if index.dimensions() != params.dim {
            return Err(file_err(format!("file has {} dimensions, collection has {}", index.dimensions(), params.dim)));
        }
        let size = index.size();
        index.reserve_capacity_and_threads((size + 1024).max(index.capacity()), max_concurrency())?;
        Ok(Self::wrap(params, index, size))
    }

    /// The build parameters.
    pub fn params(&self) -> HnswParams {
        self.params
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
        self.live.store(other.live.load(Ordering::Relaxed), Ordering::Relaxed);
        self.removed.store(0, Ordering::Relaxed);
    }

    /// Adds one vector; the caller holds `mutate` and has grown the index.
    fn add_one(&self, key: u64, v: &[f32]) -> Result<(), IndexError> {
        let v = self.unit(v);
        let _p = self.gate.acquire();
        self.index.read().add(key, &v)?;
        self.live.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Ensures room for `extra` more vectors.
    fn grow(&self, extra: usize) -> Result<(), IndexError> {
        let need = {
            let g = self.index.read();
            let need = g.size() + extra;
            if need <= g.capacity() {
                return Ok(());
            }
            need
        };
        let g = self.index.write();
        if need > g.capacity() {
            g.reserve_capacity_and_threads((need + need / 2).max(1024), max_concurrency())?;
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
        // The first nodes of a graph go in one at a time: inserted
        // concurrently into a near-empty graph, they link to each other
        // poorly and a few end up unreachable (seen: 5 of 200 points that
        // no search found, ef 200, after a compaction built in parallel).
        let seed = SEQUENTIAL_SEED.saturating_sub(self.index.read().size()).min(items.len());
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
                            g.add(*k, &self.unit(v))?;
                            self.live.fetch_add(1, Ordering::Relaxed);
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
        let removed = self.index.read().remove(key)?;
        if removed > 0 {
            self.live.fetch_sub(1, Ordering::Relaxed);
            self.removed.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn contains(&self, key: u64) -> bool {
        self.index.read().contains(key)
    }

    fn search(&self, q: &[f32], k: usize, ef: usize, allowed: &Allowed<'_>) -> Result<Vec<Hit>, IndexError> {
        self.check_dim(q)?;
        let want = ef.max(k);
        let q = self.unit(q);
        let q = &*q;
        let _p = self.gate.acquire();
        let g = self.index.read();
        let m = match allowed {
            Allowed::All => g.search(q, want)?,
            Allowed::Set(_) => g.filtered_search(q, want, |key| allowed.contains(key))?,
        };
        let mut hits: Vec<Hit> = m.keys.iter().zip(&m.distances).map(|(k, d)| Hit { key: *k, distance: *d }).collect();
        sort_hits(&mut hits, k);
        Ok(hits)
    }

    fn exact(&self, q: &[f32], k: usize, allowed: &Allowed<'_>) -> Result<Vec<Hit>, IndexError> {
        self.check_dim(q)?;
        let q = self.unit(q);
        let q = &*q;
        let _p = self.gate.acquire();
        let g = self.index.read();
        let Allowed::Set(set) = allowed else {
            let m = g.exact_search(q, k)?;
            let mut hits: Vec<Hit> = m.keys.iter().zip(&m.distances).map(|(k, d)| Hit { key: *k, distance: *d }).collect();
            sort_hits(&mut hits, k);
            return Ok(hits);
        };
        // Rescore the allowed vectors with simsimd, keeping a bounded heap.
        let mut buf = vec![0f32; self.params.dim];
        let mut heap = std::collections::BinaryHeap::with_capacity(k + 1);
        for key in set.iter() {
            if g.get(key as u64, &mut buf)? == 0 {
                continue;
            }
            let d = self.dist.f32(q, &buf);
            heap.push(HeapHit(Hit { key: key as u64, distance: d }));
            if heap.len() > k {
                heap.pop();
            }
        }
        let mut hits: Vec<Hit> = heap.into_iter().map(|h| h.0).collect();
        sort_hits(&mut hits, k);
        Ok(hits)
    }

    fn get(&self, key: u64, out: &mut [f32]) -> bool {
        matches!(self.index.read().get(key, out), Ok(n) if n > 0)
    }

    fn memory_bytes(&self) -> usize {
        // usearch walks every node, and a node being added concurrently is
        // not safe to read (it crashed the process), so this needs the
        // index exclusively. Waiting for it would stall writes and the
        // indexer behind a status call: measure only when the index is
        // idle, else report the last measurement.
        if let Some(_m) = self.mutate.try_write() {
            self.memory.store(self.index.read().memory_usage(), Ordering::Relaxed);
        }
        self.memory.load(Ordering::Relaxed)
    }

    fn save(&self, path: &Path) -> Result<(), IndexError> {
        let tmp = path.with_extension("tmp");
        let file_err = |d: String| IndexError::File { path: path.display().to_string(), detail: d };
        // No add or remove may race the serialisation; searches may.
        let _m = self.mutate.write();
        let g = self.index.read();
        self.memory.store(g.memory_usage(), Ordering::Relaxed);
        g.save(tmp.to_str().ok_or_else(|| file_err("non-UTF-8 path".into()))?).map_err(|e| file_err(e.what().to_string()))?;
        std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| file_err(e.to_string()))?;
        crate::storage::rename_durable(&tmp, path).map_err(|e| file_err(e.to_string()))?;
        Ok(())
    }
}

/// Max-heap by (distance, key): the worst hit is on top.
struct HeapHit(Hit);

impl PartialEq for HeapHit {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == std::cmp::Ordering::Equal
    }
}
impl Eq for HeapHit {}
impl PartialOrd for HeapHit {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for HeapHit {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.distance.total_cmp(&o.0.distance).then(self.0.key.cmp(&o.0.key))
    }
}
