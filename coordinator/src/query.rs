//! The query planner: `Points/Query` trees of prefetch stages, evaluated
//! stage by stage over the whole collection (docs/query.md).
//!
//! Every stage's list is computed globally (merged over shards by the
//! [`Exec`] it runs on) before its parent uses it, so a fused or re-scored
//! result does not depend on how the collection is sharded. The planner
//! itself is pure logic over an [`Exec`]: the cluster implements it with
//! shard fan-outs (`query_exec`), tests with brute force.
use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};

use shoal_proto::limits::*;
use shoal_proto::v1::query::Kind as Q;
use shoal_proto::v1::*;
use shoal_proto::validate::{self, invalid};
use shoal_proto::PointKey;

use crate::error::{CoordError, Result};

/// One scored candidate.
pub type Scored = (PointKey, f32);

/// A stored point's scores against query vectors, and its vector if asked.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub key: PointKey,
    pub scores: Vec<f32>,
    pub vector: Vec<f32>,
}

/// What the planner needs from the collection: each call covers every
/// shard and returns a global answer.
#[allow(async_fn_in_trait)]
pub trait Exec {
    /// The collection's config (its vectors: [`space_of`]).
    fn config(&self) -> &CollectionConfig;
    /// Top `limit` of vector `using` ("": the default one) by its metric
    /// (L2: distances, ascending), ties by id.
    async fn nearest(&self, using: &str, vector: &[f32], filter: Option<Filter>, limit: usize, params: &SearchParams) -> Result<Vec<Scored>>;
    /// BM25 top `limit` under collection-wide statistics, ties by id.
    async fn bm25(&self, q: &Bm25Query, filter: Option<Filter>, limit: usize) -> Result<Vec<Scored>>;
    /// Sparse dot-product top `limit` (IDF-weighted where the vector's
    /// modifier says so, under collection-wide statistics), ties by id.
    async fn sparse(&self, q: &SparseQuery, filter: Option<Filter>, limit: usize) -> Result<Vec<Scored>>;
    /// Scores of stored points' vector `using` against `vectors`: the
    /// listed ids, or every point passing `filter` (points without that
    /// vector are left out).
    async fn score(&self, using: &str, vectors: &[Vec<f32>], ids: Option<&[PointKey]>, filter: Option<Filter>, with_vector: bool) -> Result<Vec<Row>>;
    /// MaxSim of multi-vector `using` against the query's `rows`: the
    /// listed ids, or every point passing `filter` (points without it are
    /// left out).
    async fn maxsim(&self, using: &str, rows: &[Vec<f32>], ids: Option<&[PointKey]>, filter: Option<Filter>) -> Result<Vec<Scored>>;
    /// Stored vectors `using` of points (absent ids, and points without
    /// that vector, are left out).
    async fn vectors(&self, using: &str, ids: &[PointKey]) -> Result<HashMap<PointKey, Vec<f32>>>;
    /// Payloads (whole) and vectors of points, for the final page and
    /// group-by.
    async fn fetch(&self, ids: &[PointKey], with_payload: bool, with_vector: bool) -> Result<HashMap<PointKey, (Option<Struct>, Vec<f32>)>>;
}

fn bad(field: impl Into<String>, msg: impl Into<String>) -> CoordError {
    CoordError::Invalid(invalid(field, msg))
}

/// Default and bounds of stage limits.
const DEFAULT_LIMIT: u32 = 10;
const DEFAULT_RRF_K: u32 = 60;
const DEFAULT_MMR_CANDIDATES: u32 = 100;
const DEFAULT_GROUP_SIZE: u32 = 3;
const MAX_GROUP_SIZE: u32 = 100;
/// Results a group-by query groups: (offset + limit) x group_size x this.
pub const GROUP_CANDIDATE_FACTOR: usize = 8;
/// Examples of one recommend query.
pub const MAX_EXAMPLES: usize = 256;
/// Multiply-adds one MMR stage may spend (limit x candidates x dimension).
pub const MAX_MMR_WORK: u64 = 1 << 30;
/// Payload keys one query may select.
const MAX_PAYLOAD_KEYS: usize = 256;

/// A stage ready to run: its query, prefetches, the filter of it and all
/// its ancestors, and its limit.
struct Stage<'a> {
    query: Option<&'a Query>,
    prefetch: &'a [Prefetch],
    filters: Vec<&'a Filter>,
    limit: usize,
    threshold: Option<f32>,
    params: SearchParams,
    path: String,
}

fn non_empty(f: &Option<Filter>) -> Option<&Filter> {
    f.as_ref().filter(|f| !(f.must.is_empty() && f.should.is_empty() && f.must_not.is_empty()))
}

/// The AND of several filters (None when there are none).
pub fn and_filters(fs: &[&Filter]) -> Option<Filter> {
    match fs {
        [] => None,
        [one] => Some((*one).clone()),
        many => Some(Filter { must: many.iter().map(|f| Condition { kind: Some(condition::Kind::Filter((*f).clone())) }).collect(), ..Default::default() }),
    }
}

fn exclude(f: Option<Filter>, ids: &[PointKey]) -> Option<Filter> {
    if ids.is_empty() {
        return f;
    }
    let not = Condition { kind: Some(condition::Kind::HasId(HasIdCondition { ids: ids.iter().map(|k| k.to_proto()).collect() })) };
    match f {
        None => Some(Filter { must_not: vec![not], ..Default::default() }),
        Some(f) => Some(Filter { must: vec![Condition { kind: Some(condition::Kind::Filter(f)) }], must_not: vec![not], ..Default::default() }),
    }
}

/// Is `a` better than `b` in a list ordered `higher` first?
fn order(higher: bool) -> impl Fn(&Scored, &Scored) -> Ordering {
    move |a, b| {
        let s = if higher { b.1.total_cmp(&a.1) } else { a.1.total_cmp(&b.1) };
        s.then(a.0.cmp(&b.0))
    }
}

fn keep(score: f32, threshold: Option<f32>, higher: bool) -> bool {
    threshold.is_none_or(|t| if higher { score >= t } else { score <= t })
}

/// Sorts, drops results past the threshold, and keeps `limit`.
pub fn finish(mut v: Vec<Scored>, limit: usize, threshold: Option<f32>, higher: bool) -> Vec<Scored> {
    v.retain(|(_, s)| !s.is_nan() && keep(*s, threshold, higher));
    v.sort_by(order(higher));
    v.truncate(limit);
    v
}

/// Reciprocal rank fusion of ranked lists (each best first).
pub fn rrf(lists: &[Vec<Scored>], weights: &[f32], k: u32) -> Vec<Scored> {
    let mut acc: HashMap<PointKey, f64> = HashMap::new();
    for (i, l) in lists.iter().enumerate() {
        let w = weights.get(i).copied().unwrap_or(1.0) as f64;
        for (rank, (key, _)) in l.iter().enumerate() {
            *acc.entry(*key).or_default() += w / (k as f64 + rank as f64 + 1.0);
        }
    }
    acc.into_iter().map(|(k, s)| (k, s as f32)).collect()
}

/// Distribution-based score fusion: each list mapped to [0, 1] by mean
/// +- 3 standard deviations (population), clamped, then a weighted sum.
/// `higher[i]` tells whether list i's scores are similarities.
pub fn dbsf(lists: &[Vec<Scored>], higher: &[bool], weights: &[f32]) -> Vec<Scored> {
    let mut acc: HashMap<PointKey, f64> = HashMap::new();
    for (i, l) in lists.iter().enumerate() {
        if l.is_empty() {
            continue;
        }
        let w = weights.get(i).copied().unwrap_or(1.0) as f64;
        let sign = if higher[i] { 1.0 } else { -1.0 };
        let xs: Vec<f64> = l.iter().map(|(_, s)| sign * *s as f64).collect();
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let sd = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
        let (lo, hi) = (mean - 3.0 * sd, mean + 3.0 * sd);
        for ((key, _), x) in l.iter().zip(&xs) {
            let v = if hi > lo { ((x - lo) / (hi - lo)).clamp(0.0, 1.0) } else { 0.5 };
            *acc.entry(*key).or_default() += w * v;
        }
    }
    acc.into_iter().map(|(k, s)| (k, s as f32)).collect()
}

/// Similarity for recommend and MMR: higher is closer (L2 negated).
fn sim(metric: Metric, raw: f32) -> f32 {
    if metric == Metric::L2 {
        -raw
    } else {
        raw
    }
}

/// Best-score recommendation score of one point from its similarities
/// to the positive examples (`pos`) and the negative ones (`neg`).
pub fn best_score(pos: &[f32], neg: &[f32]) -> f32 {
    let max = |v: &[f32]| v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let (p, n) = (max(pos), max(neg));
    if pos.is_empty() {
        -n
    } else if neg.is_empty() || p > n {
        p
    } else {
        -n
    }
}

/// Maximal marginal relevance over candidates: (key, sim to the query,
/// vector); picks `limit`. Similarity between candidates by `metric`.
pub fn mmr(metric: Metric, cands: Vec<(PointKey, f32, Vec<f32>)>, diversity: f32, limit: usize) -> Vec<Scored> {
    let lambda = diversity as f64;
    let pair = |a: &[f32], b: &[f32]| -> f64 {
        let raw = match metric {
            Metric::L2 => a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum::<f64>().sqrt(),
            _ => a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum::<f64>(),
        };
        if metric == Metric::L2 {
            -raw
        } else {
            raw
        }
    };
    let mut rest = cands;
    rest.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut picked: Vec<(PointKey, f32, Vec<f32>)> = Vec::new();
    let mut max_sim: Vec<f64> = vec![f64::NEG_INFINITY; rest.len()];
    while picked.len() < limit && !rest.is_empty() {
        let mut best = 0usize;
        let mut best_v = f64::NEG_INFINITY;
        for (i, c) in rest.iter().enumerate() {
            let div = if picked.is_empty() { 0.0 } else { max_sim[i] };
            let v = (1.0 - lambda) * c.1 as f64 - lambda * div;
            if v > best_v {
                best_v = v;
                best = i;
            }
        }
        let p = rest.remove(best);
        max_sim.remove(best);
        for (i, c) in rest.iter().enumerate() {
            max_sim[i] = max_sim[i].max(pair(&c.2, &p.2));
        }
        picked.push(p);
    }
    picked.into_iter().map(|(k, s, _)| (k, s)).collect()
}

/// A vector of the collection by name ("": the default one): its metric,
/// dimension, and whether it is a multi-vector. `None` if undeclared.
pub fn space_of(cfg: &CollectionConfig, using: &str) -> Option<(Metric, u32, bool)> {
    if using.is_empty() {
        return Some((Metric::try_from(cfg.metric).unwrap_or(Metric::Cosine), cfg.dimension, false));
    }
    cfg.vectors.iter().find(|v| v.name == using).map(|v| (Metric::try_from(v.metric).unwrap_or(Metric::Cosine), v.dimension, v.multivector))
}

/// The dense vector `using` names, or why it cannot be used.
fn dense_space(cfg: &CollectionConfig, field: &str, using: &str) -> Result<(Metric, u32)> {
    match space_of(cfg, using) {
        None => Err(bad(field, format!("collection {:?} declares no vector {using:?}", cfg.name))),
        Some((_, _, true)) => Err(bad(field, format!("{using:?} is a multi-vector: query it with a multivector query"))),
        Some((m, d, false)) => Ok((m, d)),
    }
}

/// Checks a request's shape and limits before anything runs.
pub fn validate(req: &QueryPointsRequest, cfg: &CollectionConfig) -> Result<()> {
    let limit = if req.limit == 0 { DEFAULT_LIMIT } else { req.limit };
    if limit > MAX_TOP_K || req.offset.saturating_add(limit) > MAX_TOP_K {
        return Err(bad("limit", format!("offset + limit is {}, the limit is {MAX_TOP_K}", req.offset as u64 + limit as u64)));
    }
    if let Some(t) = req.score_threshold {
        if !t.is_finite() {
            return Err(bad("score_threshold", "score_threshold must be finite"));
        }
    }
    if req.payload_keys.len() > MAX_PAYLOAD_KEYS {
        return Err(bad("payload_keys", format!("{} keys, the limit is {MAX_PAYLOAD_KEYS}", req.payload_keys.len())));
    }
    for (i, k) in req.payload_keys.iter().enumerate() {
        validate::key(&format!("payload_keys[{i}]"), k)?;
    }
    Consistency::try_from(req.consistency).map_err(|_| bad("consistency", format!("unknown consistency {}", req.consistency)))?;
    if let Some(g) = &req.group_by {
        validate::key("group_by", &g.key)?;
        if g.group_size > MAX_GROUP_SIZE {
            return Err(bad("group_by.group_size", format!("group_size {} exceeds {MAX_GROUP_SIZE}", g.group_size)));
        }
    }
    let mut stages = 0usize;
    stage_ok("query", req.query.as_ref(), &req.prefetch, req.filter.as_ref(), req.params.as_ref(), 1, &mut stages, cfg)
}

#[allow(clippy::too_many_arguments)]
fn stage_ok(path: &str, q: Option<&Query>, prefetch: &[Prefetch], filter: Option<&Filter>, params: Option<&SearchParams>, depth: usize, stages: &mut usize, cfg: &CollectionConfig) -> Result<()> {
    *stages += 1;
    if *stages > MAX_QUERY_STAGES {
        return Err(bad(path, format!("the query has more than {MAX_QUERY_STAGES} stages (the limit)")));
    }
    if depth > MAX_QUERY_DEPTH {
        return Err(bad(path, format!("prefetches nest deeper than {MAX_QUERY_DEPTH} levels (the limit)")));
    }
    if let Some(f) = filter {
        validate::filter(f).map_err(|e| bad(format!("{path}.{}", e.field), e.message))?;
    }
    validate::oversampling(&format!("{path}.params."), params.and_then(|p| p.oversampling))?;
    if let Some(ef) = params.and_then(|p| p.ef) {
        if ef == 0 || ef > MAX_EF {
            return Err(bad(format!("{path}.params.ef"), format!("ef {ef} is outside 1..={MAX_EF}")));
        }
    }
    let vector = |field: String, v: &Option<VectorInput>, using: &str| -> Result<()> {
        let (metric, dim) = dense_space(cfg, &format!("{path}.using"), using)?;
        match v.as_ref().and_then(|v| v.kind.as_ref()) {
            None => Err(bad(field, "vector input is missing: set vector or id")),
            Some(vector_input::Kind::Vector(d)) => validate::vector(&field, &d.values, dim, metric).map_err(CoordError::from),
            Some(vector_input::Kind::Id(id)) => PointKey::try_from(id).map(|_| ()).map_err(|e| bad(field, e.to_string())),
        }
    };
    let kind = q.and_then(|q| q.kind.as_ref()).ok_or_else(|| bad(format!("{path}.kind"), "query is missing: set nearest, bm25, sparse, multivector, fusion, recommend or mmr"))?;
    match kind {
        Q::Nearest(n) => vector(format!("{path}.nearest.vector"), &n.vector, &n.using)?,
        Q::Multivector(mv) => {
            match space_of(cfg, &mv.using) {
                Some((metric, dim, true)) => {
                    if mv.rows.is_empty() || mv.rows.len() > MAX_MULTIVECTOR_ROWS {
                        return Err(bad(format!("{path}.multivector.rows"), format!("{} rows, allowed 1..={MAX_MULTIVECTOR_ROWS}", mv.rows.len())));
                    }
                    for (i, r) in mv.rows.iter().enumerate() {
                        validate::vector(&format!("{path}.multivector.rows[{i}]"), &r.values, dim, metric)?;
                    }
                }
                Some(_) => return Err(bad(format!("{path}.multivector.using"), format!("{:?} is not a multi-vector", mv.using))),
                None => return Err(bad(format!("{path}.multivector.using"), format!("collection {:?} declares no multi-vector {:?}", cfg.name, mv.using))),
            }
        }
        Q::Bm25(b) => {
            validate::key(&format!("{path}.bm25"), &b.key)?;
            validate::query_text(&format!("{path}.bm25.text"), &b.text)?;
            if b.k1.is_some_and(|k| !(0.0..=10.0).contains(&k)) {
                return Err(bad(format!("{path}.bm25.k1"), "k1 must be in 0..=10"));
            }
            if b.b.is_some_and(|x| !(0.0..=1.0).contains(&x)) {
                return Err(bad(format!("{path}.bm25.b"), "b must be in 0..=1"));
            }
        }
        Q::Sparse(sq) => {
            if sq.name.is_empty() {
                return Err(bad(format!("{path}.sparse.name"), "name the sparse vector to search"));
            }
            let v = sq.vector.as_ref().ok_or_else(|| bad(format!("{path}.sparse.vector"), "the query's sparse vector is missing"))?;
            validate::sparse_vector(&format!("{path}.sparse.vector"), v)?;
            if v.indices.is_empty() {
                return Err(bad(format!("{path}.sparse.vector"), "the query's sparse vector is empty"));
            }
        }
        Q::Fusion(f) => {
            if prefetch.is_empty() {
                return Err(bad(format!("{path}.fusion"), "fusion combines prefetches: give at least one"));
            }
            if !f.weights.is_empty() && f.weights.len() != prefetch.len() {
                return Err(bad(format!("{path}.fusion.weights"), format!("{} weights for {} prefetches", f.weights.len(), prefetch.len())));
            }
            if f.weights.iter().any(|w| !w.is_finite() || *w < 0.0) {
                return Err(bad(format!("{path}.fusion.weights"), "weights must be finite and >= 0"));
            }
            FusionMethod::try_from(f.method).map_err(|_| bad(format!("{path}.fusion.method"), format!("unknown fusion method {}", f.method)))?;
            if f.rrf_k.is_some_and(|k| k > 1_000_000) {
                return Err(bad(format!("{path}.fusion.rrf_k"), "rrf_k must be at most 1,000,000"));
            }
        }
        Q::Recommend(r) => {
            let n = r.positive.len() + r.negative.len();
            if n == 0 || n > MAX_EXAMPLES {
                return Err(bad(format!("{path}.recommend"), format!("{n} examples, allowed 1..={MAX_EXAMPLES}")));
            }
            let strategy = RecommendStrategy::try_from(r.strategy).map_err(|_| bad(format!("{path}.recommend.strategy"), format!("unknown strategy {}", r.strategy)))?;
            if strategy == RecommendStrategy::AverageVector && r.positive.is_empty() {
                return Err(bad(format!("{path}.recommend.positive"), "the average-vector strategy needs a positive example"));
            }
            for (i, v) in r.positive.iter().enumerate() {
                vector(format!("{path}.recommend.positive[{i}]"), &Some(v.clone()), &r.using)?;
            }
            for (i, v) in r.negative.iter().enumerate() {
                vector(format!("{path}.recommend.negative[{i}]"), &Some(v.clone()), &r.using)?;
            }
        }
        Q::Mmr(m) => {
            vector(format!("{path}.mmr.vector"), &m.vector, &m.using)?;
            if m.diversity.is_some_and(|d| !(0.0..=1.0).contains(&d)) {
                return Err(bad(format!("{path}.mmr.diversity"), "diversity must be in 0..=1"));
            }
            if m.candidates > MAX_TOP_K {
                return Err(bad(format!("{path}.mmr.candidates"), format!("candidates {} exceeds {MAX_TOP_K}", m.candidates)));
            }
        }
    }
    let mut union = 0usize;
    for (i, p) in prefetch.iter().enumerate() {
        let sub = format!("{path}.prefetch[{i}]");
        if p.limit > MAX_TOP_K {
            return Err(bad(format!("{sub}.limit"), format!("limit {} exceeds {MAX_TOP_K}", p.limit)));
        }
        if let Some(t) = p.score_threshold {
            if !t.is_finite() {
                return Err(bad(format!("{sub}.score_threshold"), "score_threshold must be finite"));
            }
        }
        union += if p.limit == 0 { MAX_TOP_K as usize } else { p.limit as usize };
        stage_ok(&sub, p.query.as_ref(), &p.prefetch, p.filter.as_ref(), p.params.as_ref(), depth + 1, stages, cfg)?;
    }
    if !prefetch.is_empty() && !matches!(kind, Q::Fusion(_)) && union > MAX_RESCORE_CANDIDATES {
        return Err(bad(format!("{path}.prefetch"), format!("the prefetches pass up to {union} candidates to re-score, the limit is {MAX_RESCORE_CANDIDATES}; lower their limits")));
    }
    Ok(())
}

/// The answer of a query before payloads are attached.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Points(Vec<Scored>),
    Groups(Vec<(Value, Vec<Scored>)>),
}

/// Runs a validated request.
pub async fn run<E: Exec>(exec: &E, req: &QueryPointsRequest) -> Result<Answer> {
    let limit = if req.limit == 0 { DEFAULT_LIMIT } else { req.limit } as usize;
    let page = req.offset as usize + limit;
    let fetch_n = match &req.group_by {
        Some(g) => (page * group_size(g) * GROUP_CANDIDATE_FACTOR).min(MAX_TOP_K as usize),
        None => page,
    };
    let top = Stage {
        query: req.query.as_ref(),
        prefetch: &req.prefetch,
        filters: non_empty(&req.filter).into_iter().collect(),
        limit: fetch_n,
        threshold: req.score_threshold,
        params: req.params.unwrap_or_default(),
        path: "query".into(),
    };
    let (list, _) = Box::pin(run_stage(exec, top, page)).await?;
    match &req.group_by {
        None => Ok(Answer::Points(list.into_iter().skip(req.offset as usize).take(limit).collect())),
        Some(g) => {
            let keys: Vec<PointKey> = list.iter().map(|(k, _)| *k).collect();
            let got = exec.fetch(&keys, true, false).await?;
            let groups = group(&list, |k| got.get(k).and_then(|(p, _)| p.clone()), &g.key, group_size(g));
            Ok(Answer::Groups(groups.into_iter().skip(req.offset as usize).take(limit).collect()))
        }
    }
}

fn group_size(g: &GroupBy) -> usize {
    (if g.group_size == 0 { DEFAULT_GROUP_SIZE } else { g.group_size }) as usize
}

/// Groups a ranked list by the string or integer values at `key`, in the
/// order of each group's best point, each group holding its best `size`.
pub fn group(list: &[Scored], payload: impl Fn(&PointKey) -> Option<Struct>, key: &str, size: usize) -> Vec<(Value, Vec<Scored>)> {
    #[derive(Clone, PartialEq, Eq, Hash)]
    enum GKey {
        S(String),
        I(i64),
    }
    let mut order: Vec<GKey> = Vec::new();
    let mut groups: HashMap<GKey, (Value, Vec<Scored>)> = HashMap::new();
    for (k, s) in list {
        let Some(p) = payload(k) else { continue };
        let mut vals = Vec::new();
        shoal_proto::payload::lookup(&p, key, &mut vals);
        let mut seen = HashSet::new();
        for v in vals {
            let (g, kind) = match &v.kind {
                Some(value::Kind::StringValue(x)) => (GKey::S(x.clone()), value::Kind::StringValue(x.clone())),
                Some(value::Kind::IntegerValue(i)) => (GKey::I(*i), value::Kind::IntegerValue(*i)),
                _ => continue,
            };
            if !seen.insert(g.clone()) {
                continue;
            }
            let e = groups.entry(g.clone()).or_insert_with(|| {
                order.push(g);
                (Value { kind: Some(kind) }, Vec::new())
            });
            if e.1.len() < size {
                e.1.push((*k, *s));
            }
        }
    }
    order.into_iter().filter_map(|g| groups.remove(&g)).collect()
}

fn stage_limit(p: &Prefetch, parent_page: usize) -> usize {
    if p.limit == 0 {
        parent_page.max(DEFAULT_LIMIT as usize)
    } else {
        p.limit as usize
    }
}

/// Resolves vector inputs: literal vectors as given, ids through the
/// stored vectors. Returns the vectors and the ids used (to leave out).
async fn resolve<E: Exec>(exec: &E, using: &str, inputs: &[&VectorInput], path: &str) -> Result<(Vec<Vec<f32>>, Vec<PointKey>)> {
    let ids: Vec<PointKey> = inputs.iter().filter_map(|v| if let Some(vector_input::Kind::Id(id)) = &v.kind { PointKey::try_from(id).ok() } else { None }).collect();
    let stored = if ids.is_empty() { HashMap::new() } else { exec.vectors(using, &ids).await? };
    let mut out = Vec::with_capacity(inputs.len());
    for v in inputs {
        match &v.kind {
            Some(vector_input::Kind::Vector(d)) => out.push(d.values.clone()),
            Some(vector_input::Kind::Id(id)) => {
                let k = PointKey::try_from(id).map_err(|e| bad(path, e.to_string()))?;
                out.push(stored.get(&k).cloned().ok_or_else(|| if using.is_empty() { bad(path, format!("example point {k} does not exist")) } else { bad(path, format!("example point {k} does not exist or has no vector {using:?}")) })?);
            }
            None => return Err(bad(path, "vector input is missing")),
        }
    }
    Ok((out, ids))
}

fn average(vs: &[Vec<f32>]) -> Vec<f32> {
    let n = vs.len().max(1) as f64;
    let dim = vs.first().map_or(0, Vec::len);
    (0..dim).map(|i| (vs.iter().map(|v| v[i] as f64).sum::<f64>() / n) as f32).collect()
}

/// Runs one stage; returns its list (best first) and whether its scores
/// are higher-is-better.
async fn run_stage<E: Exec>(exec: &E, st: Stage<'_>, page: usize) -> Result<(Vec<Scored>, bool)> {
    // The metric of the vector a stage uses.
    let space = |using: &str| dense_space(exec.config(), &st.path, using);
    let q = st.query.and_then(|q| q.kind.as_ref()).ok_or_else(|| bad(&st.path, "query is missing"))?;
    let filter = and_filters(&st.filters);
    // Prefetches first, all at once: their lists, each computed over the
    // collection.
    let kids = st.prefetch.iter().enumerate().map(|(i, p)| {
        let mut filters = st.filters.clone();
        if let Some(f) = non_empty(&p.filter) {
            filters.push(f);
        }
        let child = Stage { query: p.query.as_ref(), prefetch: &p.prefetch, filters, limit: stage_limit(p, page), threshold: p.score_threshold, params: p.params.unwrap_or(st.params), path: format!("{}.prefetch[{i}]", st.path) };
        let cl = child.limit;
        Box::pin(run_stage(exec, child, cl))
    });
    let children: Vec<(Vec<Scored>, bool)> = futures::future::try_join_all(kids).await?;
    let leaf = st.prefetch.is_empty();
    let candidates: Vec<PointKey> = {
        let mut seen = HashSet::new();
        children.iter().flat_map(|(l, _)| l.iter().map(|(k, _)| *k)).filter(|k| seen.insert(*k)).collect()
    };
    let (list, higher) = match q {
        Q::Fusion(f) => {
            let lists: Vec<Vec<Scored>> = children.iter().map(|(l, _)| l.clone()).collect();
            let highs: Vec<bool> = children.iter().map(|(_, h)| *h).collect();
            let fused = match FusionMethod::try_from(f.method).unwrap_or(FusionMethod::Rrf) {
                FusionMethod::Rrf => rrf(&lists, &f.weights, f.rrf_k.unwrap_or(DEFAULT_RRF_K)),
                FusionMethod::Dbsf => dbsf(&lists, &highs, &f.weights),
            };
            (fused, true)
        }
        Q::Nearest(n) => {
            let dense_higher = space(&n.using)?.0 != Metric::L2;
            let (vs, used) = resolve(exec, &n.using, &[n.vector.as_ref().ok_or_else(|| bad(&st.path, "vector is missing"))?], &st.path).await?;
            let f = exclude(filter, &used);
            if leaf {
                (exec.nearest(&n.using, &vs[0], f, st.limit, &st.params).await?, dense_higher)
            } else {
                let cands: Vec<PointKey> = candidates.into_iter().filter(|k| !used.contains(k)).collect();
                let rows = exec.score(&n.using, &vs, Some(&cands), None, false).await?;
                (rows.into_iter().map(|r| (r.key, r.scores[0])).collect(), dense_higher)
            }
        }
        Q::Multivector(mv) => {
            let rows: Vec<Vec<f32>> = mv.rows.iter().map(|r| r.values.clone()).collect();
            if leaf {
                (exec.maxsim(&mv.using, &rows, None, filter).await?, true)
            } else if candidates.is_empty() {
                (vec![], true)
            } else {
                (exec.maxsim(&mv.using, &rows, Some(&candidates), None).await?, true)
            }
        }
        Q::Bm25(b) => {
            if leaf {
                (exec.bm25(b, filter, st.limit).await?, true)
            } else if candidates.is_empty() {
                (vec![], true)
            } else {
                let only = Filter { must: vec![Condition { kind: Some(condition::Kind::HasId(HasIdCondition { ids: candidates.iter().map(|k| k.to_proto()).collect() })) }], ..Default::default() };
                (exec.bm25(b, Some(only), st.limit).await?, true)
            }
        }
        Q::Sparse(sq) => {
            if leaf {
                (exec.sparse(sq, filter, st.limit).await?, true)
            } else if candidates.is_empty() {
                (vec![], true)
            } else {
                let only = Filter { must: vec![Condition { kind: Some(condition::Kind::HasId(HasIdCondition { ids: candidates.iter().map(|k| k.to_proto()).collect() })) }], ..Default::default() };
                (exec.sparse(sq, Some(only), st.limit).await?, true)
            }
        }
        Q::Recommend(r) => {
            let metric = space(&r.using)?.0;
            let dense_higher = metric != Metric::L2;
            let pos: Vec<&VectorInput> = r.positive.iter().collect();
            let neg: Vec<&VectorInput> = r.negative.iter().collect();
            let (pv, pu) = resolve(exec, &r.using, &pos, &format!("{}.recommend.positive", st.path)).await?;
            let (nv, nu) = resolve(exec, &r.using, &neg, &format!("{}.recommend.negative", st.path)).await?;
            let used: Vec<PointKey> = pu.into_iter().chain(nu).collect();
            match RecommendStrategy::try_from(r.strategy).unwrap_or(RecommendStrategy::AverageVector) {
                RecommendStrategy::AverageVector => {
                    let avg_p = average(&pv);
                    let v: Vec<f32> = if nv.is_empty() {
                        avg_p
                    } else {
                        let avg_n = average(&nv);
                        avg_p.iter().zip(&avg_n).map(|(p, n)| p + (p - n)).collect()
                    };
                    if metric == Metric::Cosine && v.iter().all(|x| *x == 0.0) {
                        return Err(bad(format!("{}.recommend", st.path), "the examples average to a zero vector, which has no cosine direction"));
                    }
                    let f = exclude(filter, &used);
                    if leaf {
                        (exec.nearest(&r.using, &v, f, st.limit, &st.params).await?, dense_higher)
                    } else {
                        let cands: Vec<PointKey> = candidates.into_iter().filter(|k| !used.contains(k)).collect();
                        let rows = exec.score(&r.using, &[v], Some(&cands), None, false).await?;
                        (rows.into_iter().map(|r| (r.key, r.scores[0])).collect(), dense_higher)
                    }
                }
                RecommendStrategy::BestScore => {
                    let all: Vec<Vec<f32>> = pv.iter().chain(&nv).cloned().collect();
                    let rows = if leaf {
                        exec.score(&r.using, &all, None, exclude(filter, &used), false).await?
                    } else {
                        let cands: Vec<PointKey> = candidates.into_iter().filter(|k| !used.contains(k)).collect();
                        exec.score(&r.using, &all, Some(&cands), None, false).await?
                    };
                    let np = pv.len();
                    let list = rows
                        .into_iter()
                        .filter(|r| !used.contains(&r.key))
                        .map(|r| {
                            let s: Vec<f32> = r.scores.iter().map(|x| sim(metric, *x)).collect();
                            (r.key, best_score(&s[..np], &s[np..]))
                        })
                        .collect();
                    (list, true)
                }
            }
        }
        Q::Mmr(m) => {
            let (metric, dimension) = space(&m.using)?;
            let (vs, used) = resolve(exec, &m.using, &[m.vector.as_ref().ok_or_else(|| bad(&st.path, "vector is missing"))?], &st.path).await?;
            let cands: Vec<PointKey> = if leaf {
                let n = if m.candidates == 0 { DEFAULT_MMR_CANDIDATES } else { m.candidates } as usize;
                exec.nearest(&m.using, &vs[0], exclude(filter, &used), n.max(st.limit), &st.params).await?.into_iter().map(|(k, _)| k).collect()
            } else {
                candidates.into_iter().filter(|k| !used.contains(k)).collect()
            };
            let work = (st.limit as u64).saturating_mul(cands.len() as u64).saturating_mul(dimension as u64);
            if work > MAX_MMR_WORK {
                return Err(bad(format!("{}.mmr", st.path), format!("MMR over {} candidates picking {} is {work} multiply-adds of {}-dimensional vectors, the limit is {MAX_MMR_WORK}; use fewer candidates or a lower limit", cands.len(), st.limit, dimension)));
            }
            let rows = if cands.is_empty() { vec![] } else { exec.score(&m.using, &vs, Some(&cands), None, true).await? };
            let cs: Vec<(PointKey, f32, Vec<f32>)> = rows.into_iter().map(|r| (r.key, sim(metric, r.scores[0]), r.vector)).collect();
            let (diversity, limit) = (m.diversity.unwrap_or(0.5), st.limit);
            // Quadratic in the candidates: off the async workers.
            let picked = tokio::task::spawn_blocking(move || mmr(metric, cs, diversity, limit)).await.map_err(|e| CoordError::Internal(format!("MMR task: {e}")))?;
            // MMR's order is its pick order, not the score order.
            let kept: Vec<Scored> = picked.into_iter().filter(|(_, s)| keep(*s, st.threshold, true)).collect();
            return Ok((kept, true));
        }
    };
    Ok((finish(list, st.limit, st.threshold, higher), higher))
}

/// Keeps only `keys` (top-level) of a payload; all of it when empty.
pub fn select(payload: Struct, keys: &[String]) -> Struct {
    if keys.is_empty() {
        return payload;
    }
    Struct { fields: payload.fields.into_iter().filter(|(k, _)| keys.iter().any(|x| x == k)).collect() }
}
