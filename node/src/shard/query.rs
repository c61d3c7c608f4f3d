//! The shard's side of the query API: BM25 statistics and top-k over a
//! text index, and exact scores of stored vectors against several query
//! vectors (recommend by best score, MMR).
use std::cmp::Ordering;

use roaring::RoaringBitmap;
use shoal_proto::internal::v1::{ScoredRow, ShardScoreRequest, ShardTextSearchRequest};
use shoal_proto::v1::{Filter, Metric, ScoredPoint, SparseVector};
use shoal_proto::{validate, PointKey};

use super::{normalise, Shard, StoreSource, RESPONSE_BYTES};
use crate::error::{NodeError, Result};
use crate::filter;
use crate::text::{Bm25Params, Stats};

/// Multiply-adds one `Shard/Score` call may spend (points x vectors x
/// dimension; about a second of one core).
pub const MAX_SCORE_WORK: u64 = 1 << 30;
/// Postings one sparse query may walk on a shard (it holds the state read
/// lock meanwhile).
pub const MAX_SPARSE_WORK: u64 = 1 << 27;

fn non_empty(f: Option<&Filter>) -> Option<&Filter> {
    f.filter(|f| !(f.must.is_empty() && f.should.is_empty() && f.must_not.is_empty()))
}

/// Similarity of two vectors by `metric` (f64 accumulation); L2 gives
/// the distance. Cosine vectors are already unit length.
pub fn similarity(metric: Metric, a: &[f32], b: &[f32]) -> f32 {
    match metric {
        Metric::L2 => a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum::<f64>().sqrt() as f32,
        _ => a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum::<f64>() as f32,
    }
}

impl Shard {
    fn text_field(&self, key: &str) -> Result<()> {
        if self.state.read().payload.text_index(key).is_none() {
            return Err(NodeError::Invalid(validate::invalid("key", format!("payload field {key:?} has no TEXT index; BM25 needs one (declare it in payload_indexes)"))));
        }
        Ok(())
    }

    /// This shard's statistics of `key` for `text`'s tokens.
    pub fn text_stats(&self, key: &str, text: &str, hide: bool) -> Result<Stats> {
        self.text_field(key)?;
        let hidden = self.hidden(hide);
        let st = self.state.read();
        let idx = st.payload.text_index(key).expect("checked above");
        let terms = idx.tokenizer.tokens(text);
        if terms.is_empty() {
            return Err(NodeError::Invalid(validate::invalid("text", "the query text has no tokens (only punctuation or stop words)")));
        }
        Ok(idx.stats(terms, hidden.as_ref()))
    }

    /// BM25 top-k under the statistics in `req`. Best first, ties by id.
    pub fn text_search(&self, req: &ShardTextSearchRequest, hide: bool) -> Result<Vec<ScoredPoint>> {
        self.text_field(&req.key)?;
        if req.terms.len() != req.idf.len() {
            return Err(NodeError::Invalid(validate::invalid("idf", format!("{} idf values for {} terms", req.idf.len(), req.terms.len()))));
        }
        let hidden = self.hidden(hide);
        let k = req.top_k as usize;
        let top: Vec<(PointKey, f32)> = {
            let st = self.state.read();
            let mut allowed = non_empty(req.filter.as_ref()).map(|f| filter::evaluate(f, &StoreSource { state: &st, store: &self.store }));
            if let Some(h) = hidden {
                allowed = Some(allowed.unwrap_or_else(|| st.live.clone()) - h);
            }
            let idx = st.payload.text_index(&req.key).expect("checked above");
            let q = Bm25Params { terms: &req.terms, idf: &req.idf, avgdl: req.avgdl, k1: req.k1 as f64, b: req.b as f64 };
            idx.bm25(&q, allowed.as_ref(), k, |o| st.keys.get(o))
        };
        self.scored_points(top, req.with_payload, req.with_vector)
    }

    /// How many points hold sparse vector `name`, and the document
    /// frequency of each of `dims` (for the collection-wide IDF).
    pub fn sparse_stats(&self, name: &str, dims: &[u32], hide: bool) -> Result<(u64, Vec<u64>)> {
        let hidden = self.hidden(hide);
        let st = self.state.read();
        let idx = st.sparse.get(name).ok_or_else(|| self.undeclared_sparse(name))?;
        // Frozen copies of a pending split are not counted here.
        Ok(idx.stats(dims, hidden.as_ref()))
    }

    /// Sparse dot-product top-k (the query weighted by the caller). Best
    /// first, ties by id.
    pub fn sparse_search(&self, name: &str, q: &SparseVector, filter: Option<&Filter>, top_k: u32, hide: bool) -> Result<Vec<ScoredPoint>> {
        let hidden = self.hidden(hide);
        let top: Vec<(PointKey, f32)> = {
            let st = self.state.read();
            let idx = st.sparse.get(name).ok_or_else(|| self.undeclared_sparse(name))?;
            let work = idx.work(q);
            if work > MAX_SPARSE_WORK {
                return Err(NodeError::TooLarge(format!("the sparse query walks {work} postings on shard {}/{}, the limit is {MAX_SPARSE_WORK}; use fewer or rarer dimensions", self.collection, self.shard_id)));
            }
            let mut allowed = non_empty(filter).map(|f| filter::evaluate(f, &StoreSource { state: &st, store: &self.store }));
            if let Some(h) = hidden {
                allowed = Some(allowed.unwrap_or_else(|| st.live.clone()) - h);
            }
            idx.search(q, allowed.as_ref(), top_k as usize, st.next_offset, |o| st.keys.get(o))
        };
        self.scored_points(top, false, false)
    }

    fn undeclared_sparse(&self, name: &str) -> NodeError {
        NodeError::Invalid(validate::invalid("name", format!("collection {:?} declares no sparse vector {name:?}", self.collection)))
    }

    /// Exact scores of the listed points (or of the filter's points) against
    /// every query vector, in id order.
    pub fn score(&self, req: &ShardScoreRequest, hide: bool) -> Result<Vec<ScoredRow>> {
        // The vector scored: the default one, or a named one.
        let (metric, dimension, multi, holders) = if req.using.is_empty() {
            (self.metric(), self.config.dimension, false, None)
        } else {
            let c = self.named_config(&req.using)?;
            (validate::metric(c.metric)?, c.dimension, c.multivector, Some(self.holders(&req.using)?))
        };
        if multi != req.maxsim {
            let why = if multi { "is a multi-vector: score it by MaxSim" } else { "is not a multi-vector: MaxSim needs one" };
            return Err(NodeError::Invalid(validate::invalid("using", format!("{:?} {why}", req.using))));
        }
        if req.maxsim && (req.vectors.is_empty() || req.vectors.len() > shoal_proto::limits::MAX_MULTIVECTOR_ROWS) {
            return Err(NodeError::Invalid(validate::invalid("vectors", format!("{} query rows, allowed 1..={}", req.vectors.len(), shoal_proto::limits::MAX_MULTIVECTOR_ROWS))));
        }
        let mut queries = Vec::with_capacity(req.vectors.len());
        for (i, v) in req.vectors.iter().enumerate() {
            validate::vector(&format!("vectors[{i}]"), &v.values, dimension, metric)?;
            let mut q = v.values.clone();
            if metric == Metric::Cosine {
                normalise(&mut q);
            }
            queries.push(q);
        }
        let hidden = self.hidden(hide);
        let keys: Vec<PointKey> = if req.ids.is_empty() {
            let st = self.state.read();
            let mut allowed: RoaringBitmap = match non_empty(req.filter.as_ref()) {
                Some(f) => filter::evaluate(f, &StoreSource { state: &st, store: &self.store }),
                None => st.live.clone(),
            };
            if let Some(h) = &hidden {
                allowed -= h;
            }
            if let Some(h) = &holders {
                allowed &= h;
            }
            if allowed.len() > req.max_points as u64 {
                return Err(NodeError::TooLarge(format!("{} points to score on this shard, the request allows {}; narrow the filter", allowed.len(), req.max_points)));
            }
            allowed.iter().filter_map(|o| st.keys.get(o)).collect()
        } else {
            if req.ids.len() > shoal_proto::limits::MAX_FILTER_VALUES {
                return Err(NodeError::Invalid(validate::invalid("ids", format!("{} ids, the limit is {}", req.ids.len(), shoal_proto::limits::MAX_FILTER_VALUES))));
            }
            let mut ks = Vec::with_capacity(req.ids.len());
            for (i, id) in req.ids.iter().enumerate() {
                ks.push(PointKey::try_from(id).map_err(|e| validate::invalid(format!("ids[{i}]"), e.to_string()))?);
            }
            ks
        };
        let (n_points, n_queries) = (keys.len(), queries.len());
        let too_much = |work: u64| NodeError::TooLarge(format!("scoring {n_points} points against {n_queries} query vectors of {dimension} dimensions is {work} multiply-adds or more, the limit is {MAX_SCORE_WORK}; narrow the filter or use fewer examples or rows"));
        let mut work = keys.len() as u64 * queries.len() as u64 * dimension as u64;
        if work > MAX_SCORE_WORK {
            return Err(too_much(work));
        }
        let mut rows = Vec::with_capacity(keys.len());
        let mut bytes = 0usize;
        for k in keys {
            let Some(mut p) = self.store.get(&k)? else { continue };
            if hidden.as_ref().is_some_and(|h| h.contains(p.offset)) {
                continue;
            }
            let vector = if req.using.is_empty() {
                std::mem::take(&mut p.vector)
            } else {
                // Points without the named vector are not scored.
                let Some(v) = p.vectors.remove(&req.using) else { continue };
                if req.maxsim {
                    // Each point's rows multiply the work.
                    work += (v.rows.len().saturating_sub(1) as u64) * queries.len() as u64 * dimension as u64;
                    if work > MAX_SCORE_WORK {
                        return Err(too_much(work));
                    }
                    let rs: Vec<&[f32]> = v.rows.iter().map(|r| r.values.as_slice()).collect();
                    let score = super::named::maxsim(metric, &queries, &rs);
                    let row = ScoredRow { id: Some(k.to_proto()), scores: vec![score], vector: vec![] };
                    bytes += prost::Message::encoded_len(&row);
                    rows.push(row);
                    continue;
                }
                v.values
            };
            let scores = queries.iter().map(|q| similarity(metric, q, &vector)).collect();
            let row = ScoredRow { id: Some(k.to_proto()), scores, vector: if req.with_vector { vector } else { vec![] } };
            bytes += prost::Message::encoded_len(&row);
            if bytes > RESPONSE_BYTES {
                return Err(NodeError::TooLarge(format!("the scored points pass {RESPONSE_BYTES} bytes; score fewer points or vectors")));
            }
            rows.push(row);
        }
        rows.sort_by(|a, b| {
            let (ka, kb) = (a.id.as_ref().and_then(|i| PointKey::try_from(i).ok()), b.id.as_ref().and_then(|i| PointKey::try_from(i).ok()));
            ka.partial_cmp(&kb).unwrap_or(Ordering::Equal)
        });
        Ok(rows)
    }
}
