//! `Points/Query` on a cluster: the planner's [`Exec`] as shard fan-outs,
//! and the handler that validates, plans, and attaches payloads.
use std::collections::{BTreeMap, HashMap};

use futures::future::try_join_all;
use shoal_proto::internal::v1::*;
use shoal_proto::limits::*;
use shoal_proto::v1::*;
use shoal_proto::validate;
use shoal_proto::PointKey;

use crate::error::{CoordError, Result};
use crate::merge;
use crate::query::{self, Answer, Exec, Row, Scored};
use crate::router::{CollectionRoute, Target};
use crate::service::Api;

/// The planner's view of one collection through the cluster.
pub struct ClusterExec<'a> {
    pub api: &'a Api,
    pub route: &'a CollectionRoute,
    pub consistency: i32,
}

fn checked(f: Option<Filter>) -> Result<Option<Filter>> {
    if let Some(f) = &f {
        validate::filter(f)?;
    }
    Ok(f)
}

impl ClusterExec<'_> {
    fn shard_ids(&self) -> Vec<u32> {
        self.route.shards.ranges().iter().map(|r| r.shard_id).collect()
    }

    async fn score_calls(&self, by_shard: Vec<(u32, ShardScoreRequest)>) -> Result<Vec<Row>> {
        let want = by_shard.first().map_or(0, |(_, r)| if r.maxsim { 1 } else { r.vectors.len() });
        let (route, consistency) = (self.route, self.consistency);
        let calls = by_shard.into_iter().map(|(sid, req)| async move {
            self.api
                .router
                .call_shard(route, sid, Target::for_read(consistency), |mut c, shard| {
                    let r = ShardScoreRequest { shard: Some(shard), ..req.clone() };
                    async move { c.score(r).await }
                })
                .await
        });
        let mut rows = Vec::new();
        let mut bytes = 0usize;
        for r in try_join_all(calls).await? {
            for row in r.rows {
                bytes += prost::Message::encoded_len(&row);
                if bytes > RESPONSE_BYTES {
                    return Err(CoordError::TooLarge(format!("the scored candidates pass {RESPONSE_BYTES} bytes; lower the limits")));
                }
                if row.scores.len() != want {
                    return Err(CoordError::Internal(format!("a shard scored {} vectors of {want}", row.scores.len())));
                }
                if let Some(key) = merge::key(&row.id) {
                    rows.push(Row { key, scores: row.scores, vector: row.vector });
                }
            }
        }
        rows.sort_by_key(|r| r.key);
        rows.dedup_by_key(|r| r.key);
        Ok(rows)
    }
}

/// Bytes of one query answer (half the message limit).
const RESPONSE_BYTES: usize = MAX_MESSAGE_BYTES / 2;

impl Exec for ClusterExec<'_> {
    fn config(&self) -> &CollectionConfig {
        &self.route.config
    }

    async fn nearest(&self, using: &str, vector: &[f32], filter: Option<Filter>, limit: usize, params: &SearchParams) -> Result<Vec<Scored>> {
        let s = SearchPointsRequest { vector: vector.to_vec(), top_k: limit as u32, filter: checked(filter)?, ef: params.ef, exact: params.exact, oversampling: params.oversampling, rescore: params.rescore, consistency: self.consistency, vector_name: using.to_string(), ..Default::default() };
        let mut out = self.api.search_all(self.route, vec![s]).await?;
        Ok(out.pop().map(|r| r.results).unwrap_or_default().into_iter().filter_map(|p| merge::key(&p.id).map(|k| (k, p.score))).collect())
    }

    async fn bm25(&self, q: &Bm25Query, filter: Option<Filter>, limit: usize) -> Result<Vec<Scored>> {
        let filter = checked(filter)?;
        let (route, consistency) = (self.route, self.consistency);
        // Round 1: every shard's statistics, summed.
        let stats = try_join_all(self.shard_ids().into_iter().map(|sid| async move {
            self.api
                .router
                .call_shard(route, sid, Target::for_read(consistency), |mut c, shard| {
                    let r = ShardTextStatsRequest { shard: Some(shard), key: q.key.clone(), text: q.text.clone(), consistency };
                    async move { c.text_stats(r).await }
                })
                .await
        }))
        .await?;
        let terms = stats.first().map(|s| s.terms.clone()).unwrap_or_default();
        if stats.iter().any(|s| s.terms != terms || s.df.len() != terms.len()) {
            return Err(CoordError::Internal("shards tokenized the query differently (mixed versions?)".into()));
        }
        let docs: u64 = stats.iter().map(|s| s.docs).sum();
        let tokens: u64 = stats.iter().map(|s| s.tokens).sum();
        if docs == 0 {
            return Ok(vec![]);
        }
        let df: Vec<u64> = (0..terms.len()).map(|i| stats.iter().map(|s| s.df[i]).sum()).collect();
        let idf: Vec<f64> = df.iter().map(|d| bm25_idf(docs, *d)).collect();
        let avgdl = tokens as f64 / docs as f64;
        // Round 2: top-k per shard under the global statistics.
        let (terms, idf, filter) = (&terms, &idf, &filter);
        let lists = try_join_all(self.shard_ids().into_iter().map(|sid| async move {
            self.api
                .router
                .call_shard(route, sid, Target::for_read(consistency), |mut c, shard| {
                    let r = ShardTextSearchRequest {
                        shard: Some(shard),
                        key: q.key.clone(),
                        terms: terms.clone(),
                        idf: idf.clone(),
                        avgdl,
                        k1: q.k1.unwrap_or(1.2),
                        b: q.b.unwrap_or(0.75),
                        top_k: limit as u32,
                        filter: filter.clone(),
                        with_payload: false,
                        with_vector: false,
                        consistency,
                    };
                    async move { c.text_search(r).await }
                })
                .await
        }))
        .await?;
        Ok(merged(lists, limit))
    }

    async fn sparse(&self, q: &SparseQuery, filter: Option<Filter>, limit: usize) -> Result<Vec<Scored>> {
        let filter = checked(filter)?;
        let (route, consistency) = (self.route, self.consistency);
        let spec = route.config.sparse_vectors.iter().find(|s| s.name == q.name).ok_or_else(|| CoordError::Invalid(validate::invalid("sparse.name", format!("collection {:?} declares no sparse vector {:?}", route.config.name, q.name))))?;
        let mut vector = q.vector.clone().unwrap_or_default();
        if spec.modifier == SparseModifier::Idf as i32 {
            // Round 1: every shard's document count and frequencies,
            // summed, so the weights are the collection's at any shard
            // count.
            let indices = &vector.indices;
            let stats = try_join_all(self.shard_ids().into_iter().map(|sid| async move {
                self.api
                    .router
                    .call_shard(route, sid, Target::for_read(consistency), |mut c, shard| {
                        let r = ShardSparseStatsRequest { shard: Some(shard), name: q.name.clone(), indices: indices.clone(), consistency };
                        async move { c.sparse_stats(r).await }
                    })
                    .await
            }))
            .await?;
            if stats.iter().any(|s| s.df.len() != indices.len()) {
                return Err(CoordError::Internal("a shard answered sparse statistics of another length".into()));
            }
            let docs: u64 = stats.iter().map(|s| s.docs).sum();
            for (i, v) in vector.values.iter_mut().enumerate() {
                let df: u64 = stats.iter().map(|s| s.df[i]).sum();
                *v = (*v as f64 * bm25_idf(docs, df)) as f32;
            }
        }
        // Round 2 (the only one without IDF): top-k per shard.
        let (vector, filter) = (&vector, &filter);
        let lists = try_join_all(self.shard_ids().into_iter().map(|sid| async move {
            self.api
                .router
                .call_shard(route, sid, Target::for_read(consistency), |mut c, shard| {
                    let r = ShardSparseSearchRequest { shard: Some(shard), name: q.name.clone(), vector: Some(vector.clone()), top_k: limit as u32, filter: filter.clone(), consistency };
                    async move { c.sparse_search(r).await }
                })
                .await
        }))
        .await?;
        Ok(merged(lists, limit))
    }

    async fn score(&self, using: &str, vectors: &[Vec<f32>], ids: Option<&[PointKey]>, filter: Option<Filter>, with_vector: bool) -> Result<Vec<Row>> {
        let vectors: Vec<DenseVector> = vectors.iter().map(|v| DenseVector { values: v.clone() }).collect();
        let base = ShardScoreRequest { vectors, with_vector, consistency: self.consistency, max_points: MAX_SCORE_POINTS as u32, using: using.to_string(), ..Default::default() };
        self.score_request(base, ids, filter).await
    }

    async fn maxsim(&self, using: &str, rows: &[Vec<f32>], ids: Option<&[PointKey]>, filter: Option<Filter>) -> Result<Vec<Scored>> {
        let vectors: Vec<DenseVector> = rows.iter().map(|v| DenseVector { values: v.clone() }).collect();
        let base = ShardScoreRequest { vectors, consistency: self.consistency, max_points: MAX_SCORE_POINTS as u32, using: using.to_string(), maxsim: true, ..Default::default() };
        // One MaxSim score per point.
        Ok(self.score_request(base, ids, filter).await?.into_iter().map(|r| (r.key, r.scores[0])).collect())
    }

    async fn vectors(&self, using: &str, ids: &[PointKey]) -> Result<HashMap<PointKey, Vec<f32>>> {
        let mut out = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(MAX_IDS_PER_REQUEST) {
            for p in self.api.get_points(self.route, chunk, false, true, self.consistency).await? {
                let Some(k) = merge::key(&p.id) else { continue };
                let v = if using.is_empty() { Some(p.vector) } else { p.vectors.get(using).map(|v| v.values.clone()).filter(|v| !v.is_empty()) };
                if let Some(v) = v {
                    out.insert(k, v);
                }
            }
        }
        Ok(out)
    }

    async fn fetch(&self, ids: &[PointKey], with_payload: bool, with_vector: bool) -> Result<HashMap<PointKey, (Option<Struct>, Vec<f32>)>> {
        let mut out = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(MAX_IDS_PER_REQUEST) {
            for p in self.api.get_points(self.route, chunk, with_payload, with_vector, self.consistency).await? {
                if let Some(k) = merge::key(&p.id) {
                    out.insert(k, (p.payload, p.vector));
                }
            }
        }
        Ok(out)
    }
}

impl ClusterExec<'_> {
    /// A `Shard/Score` fan-out: to the shards holding `ids`, or to every
    /// shard with `filter`.
    async fn score_request(&self, base: ShardScoreRequest, ids: Option<&[PointKey]>, filter: Option<Filter>) -> Result<Vec<Row>> {
        let by_shard: Vec<(u32, ShardScoreRequest)> = match ids {
            Some(ids) => {
                if ids.is_empty() {
                    return Ok(vec![]);
                }
                let mut m: BTreeMap<u32, Vec<PointId>> = BTreeMap::new();
                for k in ids {
                    m.entry(self.route.shards.shard_for(k)).or_default().push(k.to_proto());
                }
                m.into_iter().map(|(sid, ids)| (sid, ShardScoreRequest { ids, ..base.clone() })).collect()
            }
            None => {
                let filter = checked(filter)?;
                self.shard_ids().into_iter().map(|sid| (sid, ShardScoreRequest { filter: filter.clone(), ..base.clone() })).collect()
            }
        };
        self.score_calls(by_shard).await
    }
}

/// Lucene's BM25 idf (the nodes score with what the coordinator sends).
/// The global top `limit` of shards' one-search answers (higher is
/// better), ties by id.
fn merged(lists: Vec<ShardSearchResponse>, limit: usize) -> Vec<Scored> {
    let per_shard = lists.into_iter().map(|mut r| r.results.pop().map(|x| x.results).unwrap_or_default()).collect();
    merge::merge_top_k(per_shard, limit, true, None).into_iter().filter_map(|p| merge::key(&p.id).map(|k| (k, p.score))).collect()
}

pub fn bm25_idf(docs: u64, df: u64) -> f64 {
    let (n, df) = (docs as f64, df as f64);
    (1.0 + (n - df + 0.5) / (df + 0.5)).ln()
}

/// The whole `Points/Query` on one route.
pub async fn query(api: &Api, route: &CollectionRoute, req: &QueryPointsRequest) -> Result<QueryPointsResponse> {
    query::validate(req, &route.config)?;
    let exec = ClusterExec { api, route, consistency: req.consistency };
    let answer = query::run(&exec, req).await?;
    let keys: Vec<PointKey> = match &answer {
        Answer::Points(p) => p.iter().map(|(k, _)| *k).collect(),
        Answer::Groups(g) => g.iter().flat_map(|(_, p)| p.iter().map(|(k, _)| *k)).collect(),
    };
    let extra = if (req.with_payload || req.with_vector) && !keys.is_empty() { exec.fetch(&keys, req.with_payload, req.with_vector).await? } else { HashMap::new() };
    let point = |(k, score): &Scored| {
        let (payload, vector) = extra.get(k).cloned().unwrap_or_default();
        ScoredPoint { id: Some(k.to_proto()), score: *score, payload: if req.with_payload { Some(query::select(payload.unwrap_or_default(), &req.payload_keys)) } else { None }, vector }
    };
    let resp = match &answer {
        Answer::Points(p) => QueryPointsResponse { points: p.iter().map(point).collect(), groups: vec![] },
        Answer::Groups(g) => QueryPointsResponse { points: vec![], groups: g.iter().map(|(v, p)| PointGroup { key: Some(v.clone()), points: p.iter().map(point).collect() }).collect() },
    };
    let bytes = prost::Message::encoded_len(&resp);
    if bytes > RESPONSE_BYTES {
        return Err(CoordError::TooLarge(format!("the query answer is {bytes} bytes, the limit is {RESPONSE_BYTES}; lower the limit or select fewer payload keys")));
    }
    Ok(resp)
}
