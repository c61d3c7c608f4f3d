//! Named vectors of a shard: dense ones, each with its own HNSW graph, and
//! multi-vectors, scored by MaxSim without a graph.
//!
//! A named vector is stored with its point (`StoredPoint::vectors`, cosine
//! ones normalised) and replicated with it. Each graph holds the offsets of
//! the live versions that carry its vector, keyed like the default graph;
//! `holders` lists them (for filtered and exact searches and MaxSim
//! scans). Graphs of named vectors are not saved: a shard builds them from
//! its stored points when it opens (docs/decisions.md).
use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::RwLock;
use roaring::RoaringBitmap;
use shoal_proto::v1::{Metric, NamedVector, NamedVectorConfig, ScoredPoint, SearchPointsRequest, VectorStorage};
use shoal_proto::{validate, PointKey};

use super::{filter, normalise, Shard, StoreSource};
use crate::error::{NodeError, Result};
use crate::index::hnsw::{HnswIndex, HnswParams};
use crate::index::{Distance, Precision, VectorIndex};

/// One named vector on a shard.
pub struct Named {
    pub cfg: NamedVectorConfig,
    pub metric: Metric,
    /// The HNSW graph of a dense vector; `None` for a multi-vector.
    pub graph: Option<HnswIndex>,
    /// Offsets of the live versions that carry this vector.
    pub holders: RwLock<RoaringBitmap>,
    /// Offsets added while a compaction of the graph builds (it takes
    /// them again from the old graph at the swap).
    watch: parking_lot::Mutex<Option<RoaringBitmap>>,
}

impl Named {
    fn new(cfg: &NamedVectorConfig) -> Result<Self> {
        let metric = validate::metric(cfg.metric)?;
        let graph = if cfg.multivector {
            None
        } else {
            let h = cfg.hnsw.unwrap_or_default();
            let precision = if VectorStorage::try_from(cfg.storage) == Ok(VectorStorage::F16) { Precision::F16 } else { Precision::F32 };
            Some(HnswIndex::new(HnswParams { dim: cfg.dimension as usize, metric, precision, m: h.m as usize, ef_construction: h.ef_construction as usize })?)
        };
        Ok(Named { cfg: cfg.clone(), metric, graph, holders: RwLock::new(RoaringBitmap::new()), watch: parking_lot::Mutex::new(None) })
    }
}

/// A shard's named vectors, in declaration order.
#[derive(Default)]
pub struct NamedSet {
    list: Vec<Arc<Named>>,
}

impl NamedSet {
    pub fn new(cfgs: &[NamedVectorConfig]) -> Result<Self> {
        Ok(NamedSet { list: cfgs.iter().map(|c| Named::new(c).map(Arc::new)).collect::<Result<_>>()? })
    }

    pub fn configs(&self) -> Vec<NamedVectorConfig> {
        self.list.iter().map(|n| n.cfg.clone()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&Named> {
        self.list.iter().find(|n| n.cfg.name == name).map(|n| &**n)
    }

    /// Switches to `cfgs`: a vector declared alike keeps its graph, a new
    /// (or re-declared) one starts empty, one not in `cfgs` goes.
    pub fn reshape(&mut self, cfgs: &[NamedVectorConfig]) -> Result<()> {
        let mut old = std::mem::take(&mut self.list);
        for c in cfgs {
            match old.iter().position(|n| &n.cfg == c) {
                Some(i) => self.list.push(old.swap_remove(i)),
                None => self.list.push(Arc::new(Named::new(c)?)),
            }
        }
        Ok(())
    }

    /// Adds new versions' named vectors (already checked and normalised).
    pub fn add(&self, items: &[(u32, &BTreeMap<String, NamedVector>)]) -> Result<()> {
        for n in &self.list {
            let mine: Vec<(u64, &[f32])> = items.iter().filter_map(|(off, vs)| vs.get(&n.cfg.name).map(|v| (*off as u64, v.values.as_slice()))).collect();
            if mine.is_empty() {
                continue;
            }
            if let Some(g) = &n.graph {
                g.add_batch(&mine)?;
            }
            if let Some(w) = n.watch.lock().as_mut() {
                w.extend(mine.iter().map(|(o, _)| *o as u32));
            }
            n.holders.write().extend(mine.iter().map(|(o, _)| *o as u32));
        }
        Ok(())
    }

    /// Takes retired versions out.
    pub fn remove(&self, offsets: &[u32]) -> Result<()> {
        for n in &self.list {
            let mut h = n.holders.write();
            for off in offsets {
                if h.remove(*off) {
                    if let Some(g) = &n.graph {
                        g.remove(*off as u64)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether a named graph holds as many removed nodes as
    /// [`Shard::needs_compaction`] asks of the default one.
    pub fn needs_compaction(&self) -> bool {
        self.list.iter().filter_map(|n| n.graph.as_ref()).any(|g| g.removed() >= super::compact::COMPACT_MIN_REMOVED && g.removed() * 2 >= g.len())
    }

    pub fn memory_bytes(&self) -> usize {
        self.list.iter().map(|n| n.graph.as_ref().map_or(0, |g| g.memory_bytes()) + n.holders.read().serialized_size()).sum()
    }
}

/// Normalises the cosine vectors among `vs` (each row of a multi-vector).
pub fn prepare(cfgs: &[NamedVectorConfig], vs: &BTreeMap<String, NamedVector>) -> BTreeMap<String, NamedVector> {
    let mut out = vs.clone();
    for (name, v) in out.iter_mut() {
        if cfgs.iter().any(|c| &c.name == name && c.metric == Metric::Cosine as i32) {
            normalise(&mut v.values);
            v.rows.iter_mut().for_each(|r| normalise(&mut r.values));
        }
    }
    out
}

/// MaxSim of a point's rows against the query's: the sum over query rows
/// of the best similarity (L2: minus the smallest distance), in f64.
pub fn maxsim(metric: Metric, query: &[Vec<f32>], rows: &[&[f32]]) -> f32 {
    let sim = |a: &[f32], b: &[f32]| -> f64 {
        match metric {
            Metric::L2 => -a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum::<f64>().sqrt(),
            _ => a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum::<f64>(),
        }
    };
    query.iter().map(|q| rows.iter().map(|r| sim(q, r)).fold(f64::NEG_INFINITY, f64::max)).sum::<f64>() as f32
}

impl Shard {
    pub(super) fn undeclared_vector(&self, name: &str) -> NodeError {
        NodeError::Invalid(validate::invalid("vector_name", format!("collection {:?} declares no named vector {name:?}", self.collection)))
    }

    /// Top-k over a named dense vector's graph (see [`Shard::search_scoped`]).
    pub(super) fn search_named(&self, req: &SearchPointsRequest, hide: bool) -> Result<Vec<ScoredPoint>> {
        let hidden = self.hidden(hide);
        let named = self.named.read();
        let n = named.get(&req.vector_name).ok_or_else(|| self.undeclared_vector(&req.vector_name))?;
        let graph = n.graph.as_ref().ok_or_else(|| NodeError::Invalid(validate::invalid("vector_name", format!("{:?} is a multi-vector: query it with a multivector query", req.vector_name))))?;
        validate::vector("vector", &req.vector, n.cfg.dimension, n.metric)?;
        let mut q = req.vector.clone();
        if n.metric == Metric::Cosine {
            normalise(&mut q);
        }
        let k = req.top_k as usize;
        let ef = req.ef.unwrap_or(n.cfg.hnsw.as_ref().map_or(64, |h| h.ef_search)) as usize;
        let fetch = k + 4;
        let (hits, keys) = {
            let st = self.state.read();
            let holders = n.holders.read();
            let mut allowed = match &req.filter {
                Some(f) if !(f.must.is_empty() && f.should.is_empty() && f.must_not.is_empty()) => Some(filter::evaluate(f, &StoreSource { state: &st, store: &self.store }) & &*holders),
                _ => None,
            };
            if let Some(h) = hidden {
                allowed = Some(allowed.unwrap_or_else(|| holders.clone()) - h);
            }
            let hits = self.graph_hits(graph, &q, fetch, ef, allowed.as_ref(), &holders, req)?;
            let keys: Vec<Option<PointKey>> = hits.iter().map(|h| st.keys.get(h.key as u32)).collect();
            (hits, keys)
        };
        let dist = Distance(n.metric);
        drop(named);
        self.score_hits(dist, req, hits, keys, k)
    }

    /// Rebuilds the named graphs full of removed nodes from their own
    /// vectors, without those nodes (see [`Shard::compact_index`]): built
    /// beside the old graph while writes go on, then brought up to date
    /// under the writer lock and swapped in. Returns the graphs rebuilt.
    pub fn compact_named(&self, stop: &std::sync::atomic::AtomicBool) -> Result<usize> {
        // Not under the `named` lock: a schema change (which takes it
        // exclusively, holding the writer lock) must not wait for a build.
        let list: Vec<Arc<Named>> = self.named.read().list.clone();
        let mut rebuilt = 0;
        for n in &list {
            let Some(old) = n.graph.as_ref() else { continue };
            if !(old.removed() >= super::compact::COMPACT_MIN_REMOVED && old.removed() * 2 >= old.len()) {
                continue;
            }
            *n.watch.lock() = Some(RoaringBitmap::new());
            let snap = n.holders.read().clone();
            let fresh = old.fresh(old.params(), None)?;
            let dim = n.cfg.dimension as usize;
            let copy = |offs: &mut dyn Iterator<Item = u32>, into: &HnswIndex| -> Result<()> {
                let mut buf: Vec<(u64, Vec<f32>)> = Vec::with_capacity(4096);
                let flush = |buf: &mut Vec<(u64, Vec<f32>)>| -> Result<()> {
                    into.add_batch(&buf.iter().map(|(k, v)| (*k, v.as_slice())).collect::<Vec<_>>())?;
                    buf.clear();
                    Ok(())
                };
                for off in offs {
                    let mut v = vec![0f32; dim];
                    if old.get(off as u64, &mut v) {
                        buf.push((off as u64, v));
                    }
                    if buf.len() == 4096 {
                        flush(&mut buf)?;
                    }
                }
                flush(&mut buf)
            };
            let built = copy(&mut snap.iter().take_while(|_| !stop.load(std::sync::atomic::Ordering::Relaxed)), &fresh);
            if built.is_err() || stop.load(std::sync::atomic::Ordering::Relaxed) {
                *n.watch.lock() = None;
                built?;
                return Ok(rebuilt);
            }
            // Writes wait from here to the swap.
            let _w = self.writer.lock();
            let changed = n.watch.lock().take().unwrap_or_default();
            if !self.named.read().list.iter().any(|x| Arc::ptr_eq(x, n)) {
                // Dropped or re-declared meanwhile: nothing to swap.
                continue;
            }
            let now = n.holders.read().clone();
            for off in (&snap - &now).iter().chain((&changed - &now).iter()) {
                if fresh.contains(off as u64) {
                    fresh.remove(off as u64)?;
                }
            }
            // Taken again from the old graph: added meanwhile, or retired
            // and reused with another vector.
            let again: RoaringBitmap = (&now - &snap) | (&changed & &now);
            for off in again.iter() {
                if fresh.contains(off as u64) {
                    fresh.remove(off as u64)?;
                }
            }
            copy(&mut again.iter(), &fresh)?;
            old.replace_with(fresh);
            rebuilt += 1;
            tracing::info!(collection = %self.collection, shard = self.shard_id, vector = %n.cfg.name, vectors = now.len(), "named HNSW graph compacted");
        }
        Ok(rebuilt)
    }

    /// The offsets holding named vector `name` (for MaxSim scans).
    pub(super) fn holders(&self, name: &str) -> Result<RoaringBitmap> {
        let named = self.named.read();
        let n = named.get(name).ok_or_else(|| self.undeclared_vector(name))?;
        let h = n.holders.read().clone();
        Ok(h)
    }

    /// The config of named vector `name`.
    pub(super) fn named_config(&self, name: &str) -> Result<NamedVectorConfig> {
        self.named.read().get(name).map(|n| n.cfg.clone()).ok_or_else(|| self.undeclared_vector(name))
    }
}
