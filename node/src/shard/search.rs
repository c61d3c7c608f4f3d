//! Search over a shard: the graph walk or an exact scan, the pending set
//! (versions not yet in the graph), and the answers with their payloads.
//! Exact searches of a batch that share a filter are scored together in
//! one pass of the scan engine (scan/).
use std::collections::HashSet;

use roaring::RoaringBitmap;
use shoal_proto::v1::{Filter, Metric, ScoredPoint, SearchPointsRequest};
use shoal_proto::{validate, PointKey};

use super::plan::{filtered_ef, prefer_scan};
use super::{normalise, Shard, StoreSource, RESPONSE_BYTES};
use crate::error::{IndexError, Result};
use crate::filter;
use crate::index::hnsw::{HnswIndex, SearchOpts};
use crate::index::{Allowed, Distance, Hit, VectorIndex};
use crate::scan::rows::MapRows;
use crate::storage::StoredPoint;

impl Shard {
    /// Exact top-`k` of each query among the pending versions `allowed`
    /// admits, through the scan engine (index convention: cosine vectors
    /// are unit, scored by inner product).
    pub(super) fn pending_batch(&self, qs: &[&[f32]], allowed: &RoaringBitmap, k: usize) -> Result<Vec<Vec<Hit>>> {
        let p = self.pending.read();
        if p.is_empty() {
            return Ok(vec![vec![]; qs.len()]);
        }
        let keys: Vec<u64> = p.keys().filter(|o| allowed.contains(**o)).map(|o| u64::from(*o)).collect();
        let rows = MapRows { rows: &p, dim: self.config.dimension as usize };
        Ok(crate::scan::backend().top_k(qs, &keys, &rows, k, self.index.scan_metric()).map_err(IndexError::from)?)
    }

    /// [`Shard::pending_batch`] for one query.
    pub(super) fn pending_hits(&self, q: &[f32], allowed: &RoaringBitmap, k: usize) -> Result<Vec<Hit>> {
        Ok(self.pending_batch(&[q], allowed, k)?.pop().unwrap_or_default())
    }

    /// `hits` (from the graph) and `extra` (from the pending set) as one
    /// list of the `fetch` closest: a version being moved into the graph
    /// can be in both.
    fn merge_pending(mut hits: Vec<Hit>, extra: Vec<Hit>, fetch: usize) -> Vec<Hit> {
        if extra.is_empty() {
            return hits;
        }
        hits.extend(extra);
        crate::index::sort_hits(&mut hits, usize::MAX);
        let mut seen = HashSet::with_capacity(hits.len());
        hits.retain(|h| seen.insert(h.key));
        hits.truncate(fetch);
        hits
    }

    /// Answers for the exact searches of a batch that share a filter and
    /// a `top_k`, two or more at a time, each group scored in one pass over
    /// the rows (scan/); `None` for the searches left to
    /// [`Shard::search_scoped`]. The answers together stop at
    /// [`RESPONSE_BYTES`] (`TooLarge`), as one response must.
    pub fn search_exact_groups(&self, reqs: &[&SearchPointsRequest], hide: bool) -> Result<Vec<Option<Vec<ScoredPoint>>>> {
        let mut out: Vec<Option<Vec<ScoredPoint>>> = vec![None; reqs.len()];
        type Group<'a> = ((Option<&'a Filter>, u32), Vec<usize>);
        let mut groups: Vec<Group<'_>> = vec![];
        for (i, r) in reqs.iter().enumerate() {
            if !r.exact || !r.vector_name.is_empty() {
                continue;
            }
            let f = r.filter.as_ref().filter(|f| !(f.must.is_empty() && f.should.is_empty() && f.must_not.is_empty()));
            // One k per group: a large top_k does not make every query of
            // the batch keep (and look up) that many hits.
            let key = (f, r.top_k);
            match groups.iter_mut().find(|(g, _)| *g == key) {
                Some(g) => g.1.push(i),
                None => groups.push((key, vec![i])),
            }
        }
        let mut bytes = 0usize;
        for ((f, _), idx) in groups.into_iter().filter(|(_, idx)| idx.len() > 1) {
            let group: Vec<&SearchPointsRequest> = idx.iter().map(|&i| reqs[i]).collect();
            for (i, r) in idx.into_iter().zip(self.exact_group(f, &group, hide, &mut bytes)?) {
                out[i] = Some(r);
            }
        }
        Ok(out)
    }

    /// One exact search, scored in one scan with the shard's concurrent
    /// ones ([`crate::scan::batcher`]).
    pub fn search_exact_batched(&self, req: SearchPointsRequest, hide: bool) -> Result<Vec<ScoredPoint>> {
        let run = |items: Vec<(SearchPointsRequest, bool)>| self.run_exact_batch(items);
        self.exact_batcher.submit((req, hide), &run).unwrap_or_else(|| Err(IndexError::Usearch("an exact search batch failed (a scan thread panicked)".into()).into()))
    }

    /// Answers a micro-batch: groups by filter (and by whether a split's
    /// copies are hidden) through [`Shard::search_exact_groups`]; a search
    /// alone in its group, or in a group that failed, runs on its own, so
    /// each caller gets its own answer or error.
    fn run_exact_batch(&self, items: Vec<(SearchPointsRequest, bool)>) -> Vec<Result<Vec<ScoredPoint>>> {
        let mut out: Vec<Option<Result<Vec<ScoredPoint>>>> = (0..items.len()).map(|_| None).collect();
        if items.len() > 1 {
            for hide in [false, true] {
                let idx: Vec<usize> = (0..items.len()).filter(|&i| items[i].1 == hide).collect();
                let refs: Vec<&SearchPointsRequest> = idx.iter().map(|&i| &items[i].0).collect();
                if refs.len() < 2 {
                    continue;
                }
                if let Ok(groups) = self.search_exact_groups(&refs, hide) {
                    for (i, g) in idx.into_iter().zip(groups) {
                        out[i] = g.map(Ok);
                    }
                }
            }
        }
        // The rest (alone in their group, or in a group that failed) on
        // their own, spread over the cores as separate requests would be.
        let left: Vec<usize> = (0..items.len()).filter(|&i| out[i].is_none()).collect();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(left.len()).max(1);
        let answer = |i: usize| self.search_scoped(&items[i].0, items[i].1);
        if threads == 1 {
            for i in left {
                out[i] = Some(answer(i));
            }
        } else {
            let chunk = left.len().div_ceil(threads);
            let done: Vec<(usize, Result<Vec<ScoredPoint>>)> = std::thread::scope(|s| {
                let handles: Vec<_> = left[chunk..].chunks(chunk).map(|c| (c, std::thread::Builder::new().name("shoal-scan".into()).spawn_scoped(s, move || c.iter().map(|&i| (i, answer(i))).collect::<Vec<_>>()).ok())).collect();
                let mut done: Vec<(usize, Result<Vec<ScoredPoint>>)> = left[..chunk].iter().map(|&i| (i, answer(i))).collect();
                for (c, h) in handles {
                    // A part whose thread could not start, or panicked, runs here.
                    match h.and_then(|h| h.join().ok()) {
                        Some(part) => done.extend(part),
                        None => done.extend(c.iter().map(|&i| (i, answer(i)))),
                    }
                }
                done
            });
            for (i, r) in done {
                out[i] = Some(r);
            }
        }
        out.into_iter().map(|o| o.unwrap_or_else(|| Err(IndexError::Usearch("an exact search went unanswered".into()).into()))).collect()
    }

    /// Exact searches sharing the filter `f`, in one scan.
    /// `bytes` counts the answers built so far, across groups.
    fn exact_group(&self, f: Option<&Filter>, reqs: &[&SearchPointsRequest], hide: bool, bytes: &mut usize) -> Result<Vec<Vec<ScoredPoint>>> {
        let hidden = self.hidden(hide);
        let mut qs = Vec::with_capacity(reqs.len());
        for r in reqs {
            validate::vector("vector", &r.vector, self.config.dimension, self.metric())?;
            let mut q = r.vector.clone();
            if self.metric() == Metric::Cosine {
                normalise(&mut q);
            }
            qs.push(q);
        }
        let refs: Vec<&[f32]> = qs.iter().map(|q| q.as_slice()).collect();
        let fetch = reqs.iter().map(|r| r.top_k as usize).max().unwrap_or(0) + 4;
        let found: Vec<(Vec<Hit>, Vec<Option<PointKey>>)> = {
            let st = self.state.read();
            let mut allowed = f.map(|f| filter::evaluate(f, &StoreSource { state: &st, store: &self.store }));
            if let Some(h) = hidden {
                allowed = Some(allowed.unwrap_or_else(|| st.live.clone()) - h);
            }
            let universe = allowed.as_ref().unwrap_or(&st.live);
            // Unfiltered, the live set holds every key the graph does (bar
            // a version retired this instant, which the answers skip).
            let graph = if universe.is_empty() { vec![vec![]; refs.len()] } else { self.index.exact_batch(&refs, fetch, universe, allowed.is_none())? };
            let pending = self.pending_batch(&refs, universe, fetch)?;
            graph
                .into_iter()
                .zip(pending)
                .map(|(g, p)| {
                    let hits = Self::merge_pending(g, p, fetch);
                    let keys = hits.iter().map(|h| st.keys.get(h.key as u32)).collect();
                    (hits, keys)
                })
                .collect()
        };
        let mut out = Vec::with_capacity(reqs.len());
        for (r, (hits, keys)) in reqs.iter().zip(found) {
            let answer = self.score_hits(self.dist, r, hits, keys, r.top_k as usize)?;
            // The result's field tag and length prefix, as the service counts.
            *bytes += answer.iter().map(|p| prost::Message::encoded_len(p) + 3).sum::<usize>() + 11;
            if *bytes > RESPONSE_BYTES {
                return Err(crate::error::NodeError::TooLarge(format!("the search response passes {RESPONSE_BYTES} bytes; ask for fewer hits, fewer payload fields or no vectors")));
            }
            out.push(answer);
        }
        Ok(out)
    }

    /// Top-k search. `req` must already be validated for top_k/ef/filter by
    /// the caller; vectors are re-checked here.
    pub fn search(&self, req: &SearchPointsRequest) -> Result<Vec<ScoredPoint>> {
        self.search_scoped(req, false)
    }

    /// [`Shard::search`], leaving out a pending split's frozen copies when
    /// `hide` (a filtered search over the rest, for the moments between
    /// the map routing them to the child and the split finishing).
    pub fn search_scoped(&self, req: &SearchPointsRequest, hide: bool) -> Result<Vec<ScoredPoint>> {
        if !req.vector_name.is_empty() {
            return self.search_named(req, hide);
        }
        let hidden = self.hidden(hide);
        validate::vector("vector", &req.vector, self.config.dimension, self.metric())?;
        let mut q = req.vector.clone();
        if self.metric() == Metric::Cosine {
            normalise(&mut q);
        }
        let k = req.top_k as usize;
        let ef = req.ef.unwrap_or(self.config.hnsw.as_ref().map_or(64, |h| h.ef_search)) as usize;
        // Over-fetch a little so that a concurrent replace (two versions of
        // one id briefly live) cannot push a result out.
        let fetch = k + 4;
        let (hits, keys) = {
            let st = self.state.read();
            let mut allowed = match &req.filter {
                Some(f) if !(f.must.is_empty() && f.should.is_empty() && f.must_not.is_empty()) => Some(filter::evaluate(f, &StoreSource { state: &st, store: &self.store })),
                _ => None,
            };
            if let Some(h) = hidden {
                allowed = Some(allowed.unwrap_or_else(|| st.live.clone()) - h);
            }
            // A filter on a keyword value with a partition graph walks that.
            let part = match (&req.filter, &allowed) {
                (Some(f), Some(a)) if !req.exact => self.partition_for(f, &st, a, ef, fetch).map(|p| (p, a)),
                _ => None,
            };
            let hits = match part.map(|(p, a)| self.partition_hits(&p, &q, fetch, ef, a)).transpose()?.flatten() {
                Some(h) => h,
                None => self.graph_hits(&self.index, &q, fetch, ef, allowed.as_ref(), &st.live, req)?,
            };
            let extra = self.pending_hits(&q, allowed.as_ref().unwrap_or(&st.live), fetch)?;
            let hits = Self::merge_pending(hits, extra, fetch);
            let keys: Vec<Option<PointKey>> = hits.iter().map(|h| st.keys.get(h.key as u32)).collect();
            (hits, keys)
        };
        self.score_hits(self.dist, req, hits, keys, k)
    }

    /// The `fetch` nearest to `q` in `graph` among `allowed` (all of
    /// `universe` when `None`): an exact scan when asked or when the
    /// filter leaves few points, else the graph walk.
    /// A quantized graph oversamples and re-scores as `req` asks.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn graph_hits(&self, graph: &HnswIndex, q: &[f32], fetch: usize, ef: usize, allowed: Option<&RoaringBitmap>, universe: &RoaringBitmap, req: &SearchPointsRequest) -> Result<Vec<Hit>> {
        let opts = SearchOpts { oversampling: req.oversampling, rescore: req.rescore };
        Ok(match (allowed, req.exact) {
            (Some(a), _) if a.is_empty() => vec![],
            (Some(a), true) => graph.exact(q, fetch, &Allowed::Set(a))?,
            (None, true) => graph.exact_batch(&[q], fetch, universe, true)?.pop().unwrap_or_default(),
            (Some(a), false) if prefer_scan(a.len(), universe.len(), ef, fetch, self.exact_scan_threshold) => graph.exact(q, fetch, &Allowed::Set(a))?,
            (Some(a), false) => graph.search_with(q, fetch, filtered_ef(ef, fetch, a.len(), universe.len()), &Allowed::Set(a), opts)?,
            (None, false) => graph.search_with(q, fetch, ef.max(fetch), &Allowed::All, opts)?,
        })
    }

    /// The first `k` hits as answers. With payloads or vectors asked, a hit
    /// whose point was replaced or deleted after the search matched it is
    /// left out (the search over-fetches for that): its stored payload is
    /// not the one the filter saw.
    pub(super) fn score_hits(&self, dist: Distance, req: &SearchPointsRequest, hits: Vec<Hit>, keys: Vec<Option<PointKey>>, k: usize) -> Result<Vec<ScoredPoint>> {
        let mut seen = HashSet::with_capacity(hits.len());
        let mut out = Vec::with_capacity(k);
        let mut bytes = 0usize;
        for (h, key) in hits.into_iter().zip(keys) {
            let Some(key) = key else { continue };
            if seen.contains(&key) {
                continue;
            }
            let score = dist.score(h.distance);
            if let Some(t) = req.score_threshold {
                let keep = if dist.higher_is_better() { score >= t } else { score <= t };
                if !keep {
                    continue;
                }
            }
            let stored = if req.with_payload || req.with_vector {
                match self.store.get(&key)? {
                    Some(p) if p.offset as u64 == h.key => Some(p),
                    _ => continue,
                }
            } else {
                None
            };
            seen.insert(key);
            self.answer(&mut out, &mut bytes, key, score, stored, req.with_payload, req.with_vector)?;
            if out.len() == k {
                break;
            }
        }
        Ok(out)
    }

    /// Hits as answers, with payloads and vectors read when asked; stops
    /// with `TooLarge` once they pass [`RESPONSE_BYTES`].
    pub(crate) fn scored_points(&self, hits: Vec<(PointKey, f32)>, with_payload: bool, with_vector: bool) -> Result<Vec<ScoredPoint>> {
        let mut scored = Vec::with_capacity(hits.len());
        let mut bytes = 0usize;
        for (key, score) in hits {
            let stored = if with_payload || with_vector { Some(self.store.get(&key)?.unwrap_or_default()) } else { None };
            self.answer(&mut scored, &mut bytes, key, score, stored, with_payload, with_vector)?;
        }
        Ok(scored)
    }

    /// Appends one answer; `TooLarge` once the answers pass
    /// [`RESPONSE_BYTES`].
    #[allow(clippy::too_many_arguments)]
    pub(super) fn answer(&self, out: &mut Vec<ScoredPoint>, bytes: &mut usize, key: PointKey, score: f32, stored: Option<StoredPoint>, with_payload: bool, with_vector: bool) -> Result<()> {
        let (payload, vector) = match stored {
            Some(p) => (if with_payload { Some(p.payload.unwrap_or_default()) } else { None }, if with_vector { p.vector } else { vec![] }),
            None => (None, vec![]),
        };
        let hit = ScoredPoint { id: Some(key.to_proto()), score, payload, vector };
        *bytes += prost::Message::encoded_len(&hit);
        if *bytes > RESPONSE_BYTES {
            return Err(crate::error::NodeError::TooLarge(format!("the search's hits pass {RESPONSE_BYTES} bytes at hit {}; lower top_k or leave payloads or vectors out", out.len() + 1)));
        }
        out.push(hit);
        Ok(())
    }
}
