//! Partition graphs: for a keyword value that searches filter on and that
//! passes a middling share of a shard's points, a small HNSW graph over
//! only those points.
//!
//! A predicate walk over the shard's graph keeps only allowed points in its
//! result list, so at selectivity `s` it walks about `fetch / s` points
//! however low its `ef` (docs/filters.md): at 10% that is an unfiltered
//! walk of `ef` 140, several times an `ef` 32 search, and a scan of 10% of
//! the points is slower still. Over a graph of only the value's points the
//! same search is an unfiltered walk of a smaller graph. Qdrant adds links
//! per payload value to its one graph for the same reason; Shoal keeps
//! separate graphs because usearch graphs cannot share vectors or take
//! extra links.
//!
//! - **Which values.** A search whose filter has a `must` keyword match on
//!   an indexed field, on a value holding at least
//!   [`PARTITION_MIN_POINTS`] and at most [`PARTITION_MAX_SELECTIVITY`] of
//!   the shard, and that would otherwise walk the shard's graph, asks for
//!   that value's partition. The node's indexer builds wanted partitions
//!   when idle, within [`PARTITION_BUDGET`] (partition points over the
//!   shard's points), evicting one unused for [`PARTITION_EVICTABLE`] if it
//!   must, and drops those unused for [`PARTITION_IDLE`].
//! - **Never wrong, at worst slower.** A partition is a hint, not state. It
//!   is not persisted (rebuilt after a restart when searches ask again) and
//!   not updated by writes: the indexer catches it up when idle (new
//!   versions in, retired ones out, reused offsets re-added). A search walks
//!   the partition with a predicate of the points its whole filter allows
//!   now, scans allowed points the partition lacks, and takes every
//!   distance from the shard's own graph. So a stale partition can only
//!   miss a point's new neighbourhood, never return a retired version or a
//!   wrong score; with more than [`MAX_OUTSIDE`] allowed points missing the
//!   search walks the shard's graph instead.
//! - **Storage.** Only shards whose graph stores F32 or F16 use partitions
//!   (the same kind, so the same distances); quantized shards walk their
//!   graph with the predicate.
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use roaring::RoaringBitmap;
use shoal_proto::v1::{condition, match_condition, Filter};

use super::{filtered_ef, prefer_scan, Shard, State};
use crate::error::Result;
use crate::index::hnsw::{HnswIndex, SearchOpts};
use crate::index::{Allowed, Hit, Precision, VectorIndex};

/// Values with fewer points are scanned ([`prefer_scan`]) or walked.
pub const PARTITION_MIN_POINTS: u64 = 1_000;
/// Values passing more of the shard walk its graph (at most twice an
/// unfiltered walk's reach).
pub const PARTITION_MAX_SELECTIVITY: f64 = 0.5;
/// All partitions of a shard together hold at most this many points per
/// live point of the shard: at 1.0, at most one more copy of each vector.
pub const PARTITION_BUDGET: f64 = 1.0;
/// A partition unused this long is dropped.
pub const PARTITION_IDLE: Duration = Duration::from_secs(600);
/// A partition unused this long may make room for a wanted one.
pub const PARTITION_EVICTABLE: Duration = Duration::from_secs(60);
/// Points one maintenance step adds to a partition (the indexer checks for
/// other work and for shutdown between steps).
const STEP_POINTS: usize = 4096;
/// Allowed points a partition may lack (scanned exactly) before a search
/// walks the shard's graph instead.
pub const MAX_OUTSIDE: u64 = 256;

/// A partition walk uses this many times the search's `ef`: a graph of one
/// value's points is denser in near neighbours than the shard's (debian
/// `section=libs`, ef 32: recall@10 0.940 at 1x, 0.97 at 2x, against 0.970
/// unfiltered), and at a tenth of the points 2x still costs less than the
/// unfiltered search (docs/benchmarks.md, "Filtered search").
pub const PARTITION_EF_FACTOR: usize = 2;

/// `(field, keyword)`.
type Value = (String, String);

#[derive(Default)]
pub(super) struct Partitions {
    graphs: RwLock<HashMap<Value, Arc<Partition>>>,
    /// Values searches asked for, with when they last asked.
    wanted: Mutex<HashMap<Value, Instant>>,
    /// Offsets new versions took again since the indexer last looked: a
    /// partition holding one holds its old vector.
    reused: Mutex<RoaringBitmap>,
    /// The partition being built, [`STEP_POINTS`] at a time.
    building: Mutex<Option<Build>>,
    /// What the last upkeep pass saw (write sequence, versions indexed,
    /// reused offsets, wishes): an idle pass over an unchanged shard stops
    /// there.
    seen: Mutex<Option<(u64, u64, u64, usize)>>,
}

struct Build {
    key: Value,
    part: Arc<Partition>,
    /// Offsets still to add.
    todo: RoaringBitmap,
}

pub(super) struct Partition {
    graph: HnswIndex,
    /// The offsets in `graph`.
    members: RwLock<RoaringBitmap>,
    last_used: Mutex<Instant>,
}

impl Partition {
    /// Points the graph holds, removed ones included (they keep their
    /// memory until the graph is dropped).
    fn held(&self) -> u64 {
        self.members.read().len() + self.graph.removed() as u64
    }
}

impl Partitions {
    /// Notes offsets a write takes again (only while partitions exist).
    pub(super) fn note_reused(&self, offsets: &[u32]) {
        if !offsets.is_empty() && (!self.graphs.read().is_empty() || self.building.lock().is_some()) {
            self.reused.lock().extend(offsets.iter().copied());
        }
    }

    /// Partitions and the points they hold, for status.
    pub fn stats(&self) -> (usize, u64) {
        let g = self.graphs.read();
        (g.len(), g.values().map(|p| p.members.read().len()).sum())
    }

    pub(super) fn memory_bytes(&self) -> usize {
        let building = self.building.lock().as_ref().map_or(0, |b| b.part.graph.memory_bytes());
        building + self.graphs.read().values().map(|p| p.graph.memory_bytes() + p.members.read().serialized_size()).sum::<usize>()
    }

}

/// Whether partitions serve a graph of this kind.
fn serves(p: Precision) -> bool {
    matches!(p, Precision::F32 | Precision::F16)
}

impl Shard {
    /// The partition to search for `filter` (allowing `allowed`), if one
    /// is built; records the wish for one otherwise.
    pub(super) fn partition_for(&self, filter: &Filter, st: &State, allowed: &RoaringBitmap, ef: usize, fetch: usize) -> Option<Arc<Partition>> {
        if !self.use_partitions || !serves(self.index.params().precision) || prefer_scan(allowed.len(), st.live.len(), ef, fetch, self.exact_scan_threshold) {
            return None;
        }
        for c in &filter.must {
            let Some(condition::Kind::Match(m)) = &c.kind else { continue };
            let Some(match_condition::Value::Keyword(v)) = &m.value else { continue };
            let Some(points) = st.payload.keyword_points(&m.key, v) else { continue };
            if !eligible(points.len(), st.live.len()) {
                continue;
            }
            let key = (m.key.clone(), v.clone());
            if let Some(p) = self.partitions.graphs.read().get(&key) {
                *p.last_used.lock() = Instant::now();
                return Some(p.clone());
            }
            let mut w = self.partitions.wanted.lock();
            // Bounded: one entry per indexed keyword value at most.
            w.insert(key, Instant::now());
        }
        None
    }

    /// The `fetch` nearest to `q` among `allowed` through partition `p`:
    /// its graph walked with `allowed` as the predicate, plus the allowed
    /// points it lacks, all scored by the shard's graph. `None` when it
    /// lacks too many (the caller walks the shard's graph).
    pub(super) fn partition_hits(&self, p: &Partition, q: &[f32], fetch: usize, ef: usize, allowed: &RoaringBitmap) -> Result<Option<Vec<Hit>>> {
        // Reused offsets hold older vectors there until the indexer re-adds
        // them: they count as missing.
        let members = &*p.members.read() - &*self.partitions.reused.lock();
        let outside = allowed - &members;
        if outside.len() > MAX_OUTSIDE {
            return Ok(None);
        }
        let inside = allowed & &members;
        let mut cands = outside;
        if !inside.is_empty() {
            let walk = filtered_ef(ef, fetch, inside.len(), members.len()) * PARTITION_EF_FACTOR;
            // Always the predicate, even when it passes every member: the
            // graph may still hold retired and reused offsets.
            cands.extend(p.graph.search_with(q, fetch, walk, &Allowed::Set(&inside), SearchOpts::default())?.iter().map(|h| h.key as u32));
        }
        // Distances from the shard's graph: the partition may still hold a
        // reused offset's older vector.
        Ok(Some(self.index.exact(q, fetch, &Allowed::Set(&cands))?))
    }

    /// Drops every partition graph and wish (benchmarks compare plans;
    /// a node started with `--filter-partitions=false`).
    pub fn clear_partitions(&self) {
        let p = &self.partitions;
        p.graphs.write().clear();
        p.wanted.lock().clear();
        *p.building.lock() = None;
        p.reused.lock().clear();
        *p.seen.lock() = None;
    }

    /// Partition graphs and the points they hold.
    pub fn partition_stats(&self) -> (usize, u64) {
        self.partitions.stats()
    }

    /// One step of partition upkeep, for the node's indexer when idle:
    /// drops idle or ineligible partitions, catches one up with the
    /// shard, or adds a step to the one being built or starts building one
    /// that searches asked for. True if it changed anything.
    pub fn maintain_partitions(&self, stopping: &AtomicBool) -> Result<bool> {
        let parts = &self.partitions;
        if !self.use_partitions || !serves(self.index.params().precision) {
            let had = !parts.graphs.read().is_empty() || parts.building.lock().is_some();
            self.clear_partitions();
            return Ok(had);
        }
        if parts.graphs.read().is_empty() && parts.wanted.lock().is_empty() && parts.building.lock().is_none() {
            parts.reused.lock().clear();
            return Ok(false);
        }
        let now = Instant::now();
        // Cleared once every partition dropped them (searches treat them as
        // missing until then).
        let reused = parts.reused.lock().clone();
        // The points each value should hold: live and in the shard's graph.
        let (targets, live, wanted) = {
            let st = self.state.read();
            let seen = (st.seq, self.indexed.load(Ordering::Relaxed), reused.len(), parts.wanted.lock().len());
            if parts.building.lock().is_none() && parts.seen.lock().replace(seen) == Some(seen) {
                // Nothing changed since the last pass; idle partitions age
                // out on the next change.
                return Ok(false);
            }
            let pending: RoaringBitmap = self.pending.read().keys().copied().collect();
            let indexing = self.indexing.lock().clone();
            let target = |(f, v): &Value| st.payload.keyword_points(f, v).map(|b| (b & &st.live) - &pending - &indexing).unwrap_or_default();
            let graphs = parts.graphs.read();
            let targets: Vec<(Value, Arc<Partition>, RoaringBitmap)> = graphs.iter().map(|(k, p)| (k.clone(), p.clone(), target(k))).collect();
            let building = parts.building.lock().as_ref().map(|b| b.key.clone());
            let mut wanted: Vec<(Value, Instant, RoaringBitmap)> = if building.is_some() {
                vec![]
            } else {
                parts.wanted.lock().drain().filter(|(k, _)| !graphs.contains_key(k)).map(|(k, t)| {
                    let b = target(&k);
                    (k, t, b)
                }).collect()
            };
            wanted.sort_by_key(|w| std::cmp::Reverse(w.1));
            // `make_room` takes the graphs exclusively.
            drop(graphs);
            if let Some((k, _, t)) = wanted.iter().find(|(_, _, t)| eligible(t.len(), st.live.len())) {
                // Started under the state lock, so that every offset reused
                // after `t` was taken is noted.
                if self.make_room(t.len(), st.live.len(), now) {
                    let part = Arc::new(Partition { graph: HnswIndex::new(self.index.params())?, members: RwLock::new(RoaringBitmap::new()), last_used: Mutex::new(now) });
                    *parts.building.lock() = Some(Build { key: k.clone(), part, todo: t.clone() });
                }
            }
            (targets, st.live.len(), wanted)
        };
        drop(wanted);
        // 1. Drop idle and ineligible partitions.
        let mut changed = false;
        for (k, p, t) in &targets {
            if now.duration_since(*p.last_used.lock()) > PARTITION_IDLE || !eligible(t.len(), live) {
                parts.graphs.write().remove(k);
                changed = true;
            }
        }
        // 2. Reused offsets and retired versions leave every partition
        //    (reused ones come back with their new vectors as missing); a
        //    graph left with more removed nodes than members is dropped
        //    (built again when searches ask).
        let mut all: Vec<&Arc<Partition>> = targets.iter().map(|(_, p, _)| p).collect();
        let build = parts.building.lock().as_ref().map(|b| b.part.clone());
        all.extend(build.as_ref());
        for p in all {
            let stale = {
                let m = p.members.read();
                let t = targets.iter().find(|(_, q, _)| Arc::ptr_eq(p, q)).map(|(_, _, t)| t);
                match t {
                    Some(t) => (&*m - t) | (&*m & &reused),
                    None => &*m & &reused,
                }
            };
            if stale.is_empty() {
                continue;
            }
            *p.members.write() -= &stale;
            for o in &stale {
                p.graph.remove(o as u64)?;
            }
            if let Some(b) = parts.building.lock().as_mut().filter(|b| Arc::ptr_eq(&b.part, p)) {
                // Retired ones drop out of the build's remaining offsets by
                // the check in `add_to_partition`; reused ones go back in.
                b.todo |= &stale & &reused;
            }
            if p.held() > 2 * p.members.read().len() {
                parts.graphs.write().retain(|_, q| !Arc::ptr_eq(p, q));
            }
            changed = true;
        }
        *parts.reused.lock() -= &reused;
        // 3. Catch one partition up with new versions.
        for (k, p, t) in &targets {
            if !parts.graphs.read().contains_key(k) {
                continue;
            }
            let missing = t - &*p.members.read();
            if !missing.is_empty() {
                self.add_to_partition(p, &missing)?;
                return Ok(true);
            }
        }
        // 4. One step of the partition being built.
        let mut slot = parts.building.lock();
        if let Some(b) = slot.as_mut() {
            if stopping.load(Ordering::Relaxed) {
                return Ok(changed);
            }
            let step: RoaringBitmap = b.todo.iter().take(STEP_POINTS).collect();
            b.todo -= &step;
            let (part, done) = (b.part.clone(), b.todo.is_empty());
            let key = b.key.clone();
            if done {
                *slot = None;
            }
            drop(slot);
            self.add_to_partition(&part, &step)?;
            if done {
                tracing::debug!(collection = %self.collection, shard = self.shard_id, field = %key.0, value = %key.1, points = part.members.read().len(), "partition graph built");
                parts.graphs.write().insert(key, part);
            }
            return Ok(true);
        }
        Ok(changed)
    }

    /// Adds up to [`STEP_POINTS`] of `offsets` to `p`, with the vectors the
    /// shard's graph holds (one it no longer holds is left out).
    fn add_to_partition(&self, p: &Partition, offsets: &RoaringBitmap) -> Result<()> {
        let dim = self.config.dimension as usize;
        let mut buf = vec![0f32; dim];
        let mut keys = Vec::with_capacity(STEP_POINTS);
        let mut vecs: Vec<f32> = Vec::with_capacity(STEP_POINTS * dim);
        for o in offsets.iter().take(STEP_POINTS) {
            if self.index.get(o as u64, &mut buf) {
                keys.push(o);
                vecs.extend_from_slice(&buf);
            }
        }
        let items: Vec<(u64, &[f32])> = keys.iter().zip(vecs.chunks(dim)).map(|(k, v)| (*k as u64, v)).collect();
        p.graph.add_batch(&items)?;
        p.members.write().extend(keys);
        Ok(())
    }

    /// Whether `points` more fit in the budget, evicting partitions idle
    /// for [`PARTITION_EVICTABLE`] (longest unused first) if that makes
    /// them fit; evicts nothing if it would not.
    fn make_room(&self, points: u64, live: u64, now: Instant) -> bool {
        let budget = (live as f64 * PARTITION_BUDGET) as u64;
        let mut g = self.partitions.graphs.write();
        let held: u64 = g.values().map(|p| p.held()).sum();
        if held + points <= budget {
            return true;
        }
        let mut idle: Vec<(Value, Instant, u64)> = g.iter().map(|(k, p)| (k.clone(), *p.last_used.lock(), p.held())).filter(|(_, t, _)| now.duration_since(*t) > PARTITION_EVICTABLE).collect();
        if held - idle.iter().map(|x| x.2).sum::<u64>() + points > budget {
            return false;
        }
        idle.sort_by_key(|x| x.1);
        let mut held = held;
        for (k, _, n) in idle {
            if held + points <= budget {
                break;
            }
            g.remove(&k);
            held -= n;
        }
        true
    }
}

/// Whether a value of `points` among `live` gets a partition.
fn eligible(points: u64, live: u64) -> bool {
    points >= PARTITION_MIN_POINTS && points as f64 <= live as f64 * PARTITION_MAX_SELECTIVITY
}
