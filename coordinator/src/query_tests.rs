//! The planner against a brute-force evaluator: random query trees of
//! nearest, BM25-like and fusion stages with filters, limits, thresholds
//! and pagination, over random points. The executor and the reference
//! both score by brute force; the reference evaluates the tree directly
//! from its definition (docs/query.md) over every point, without the
//! planner's candidate passing, filter combination or limits logic.
use std::collections::{HashMap, HashSet};

use proptest::prelude::*;
use shoal_proto::v1::query::Kind as Q;
use shoal_proto::v1::*;
use shoal_proto::PointKey;

use crate::error::Result;
use crate::query::{self, Answer, Exec, Row, Scored};

#[derive(Debug, Clone)]
struct P {
    key: PointKey,
    v: Vec<f32>,
    g: String,
    n: i64,
    words: Vec<String>,
}

struct Brute {
    points: Vec<P>,
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum::<f64>() as f32
}

/// The test's own filter semantics for the conditions it generates.
fn passes(f: &Filter, p: &P) -> bool {
    let cond = |c: &Condition| match &c.kind {
        Some(condition::Kind::Filter(f)) => passes(f, p),
        Some(condition::Kind::Match(m)) => matches!(&m.value, Some(match_condition::Value::Keyword(k)) if *k == p.g),
        Some(condition::Kind::Range(r)) => r.gte.is_none_or(|b| p.n as f64 >= b) && r.lt.is_none_or(|b| (p.n as f64) < b),
        Some(condition::Kind::HasId(h)) => h.ids.iter().any(|i| PointKey::try_from(i).ok() == Some(p.key)),
        _ => panic!("unexpected condition {c:?}"),
    };
    f.must.iter().all(cond) && (f.should.is_empty() || f.should.iter().any(cond)) && !f.must_not.iter().any(cond)
}

fn bm25_like(p: &P, text: &str) -> f32 {
    let q: Vec<&str> = text.split(' ').collect();
    p.words.iter().filter(|w| q.contains(&w.as_str())).count() as f32 + 1.0 / (1.0 + p.words.len() as f32)
}

/// The test's sparse semantics: a point's positive dense components are its
/// sparse vector; points sharing no dimension with the query are left out.
fn sparse_like(p: &P, q: &SparseVector) -> Option<f32> {
    let hits: Vec<f64> = q.indices.iter().zip(&q.values).filter_map(|(i, w)| p.v.get(*i as usize).filter(|x| **x > 0.0).map(|x| *x as f64 * *w as f64)).collect();
    (!hits.is_empty()).then(|| hits.iter().sum::<f64>() as f32)
}

fn top(mut v: Vec<Scored>, limit: usize) -> Vec<Scored> {
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(limit);
    v
}

/// The collection the brute-force evaluator stands for: dot, 3
/// dimensions, and a multi-vector "mv" whose rows for a point are its
/// vector and the vector negated (so MaxSim is the sum of |q . v|).
fn brute_config() -> &'static CollectionConfig {
    static C: std::sync::OnceLock<CollectionConfig> = std::sync::OnceLock::new();
    C.get_or_init(|| CollectionConfig {
        name: "c".into(),
        dimension: 3,
        metric: Metric::Dot as i32,
        vectors: vec![NamedVectorConfig { name: "mv".into(), dimension: 3, metric: Metric::Dot as i32, multivector: true, ..Default::default() }],
        ..Default::default()
    })
}

impl Exec for Brute {
    fn config(&self) -> &CollectionConfig {
        brute_config()
    }
    async fn maxsim(&self, using: &str, rows: &[Vec<f32>], ids: Option<&[PointKey]>, filter: Option<Filter>) -> Result<Vec<Scored>> {
        assert_eq!(using, "mv");
        let keep = |p: &P| match ids {
            Some(ids) => ids.contains(&p.key),
            None => filter.as_ref().is_none_or(|f| passes(f, p)),
        };
        Ok(self.points.iter().filter(|p| keep(p)).map(|p| (p.key, rows.iter().map(|q| dot(q, &p.v) as f64).map(f64::abs).sum::<f64>() as f32)).collect())
    }
    async fn nearest(&self, _: &str, vector: &[f32], filter: Option<Filter>, limit: usize, _: &SearchParams) -> Result<Vec<Scored>> {
        Ok(top(self.points.iter().filter(|p| filter.as_ref().is_none_or(|f| passes(f, p))).map(|p| (p.key, dot(vector, &p.v))).collect(), limit))
    }
    async fn bm25(&self, q: &Bm25Query, filter: Option<Filter>, limit: usize) -> Result<Vec<Scored>> {
        Ok(top(self.points.iter().filter(|p| filter.as_ref().is_none_or(|f| passes(f, p))).map(|p| (p.key, bm25_like(p, &q.text))).filter(|(_, s)| *s >= 1.0).collect(), limit))
    }
    async fn sparse(&self, q: &SparseQuery, filter: Option<Filter>, limit: usize) -> Result<Vec<Scored>> {
        let v = q.vector.clone().unwrap_or_default();
        Ok(top(self.points.iter().filter(|p| filter.as_ref().is_none_or(|f| passes(f, p))).filter_map(|p| sparse_like(p, &v).map(|s| (p.key, s))).collect(), limit))
    }
    async fn score(&self, _: &str, vectors: &[Vec<f32>], ids: Option<&[PointKey]>, filter: Option<Filter>, with_vector: bool) -> Result<Vec<Row>> {
        let keep = |p: &P| match ids {
            Some(ids) => ids.contains(&p.key),
            None => filter.as_ref().is_none_or(|f| passes(f, p)),
        };
        Ok(self.points.iter().filter(|p| keep(p)).map(|p| Row { key: p.key, scores: vectors.iter().map(|v| dot(v, &p.v)).collect(), vector: if with_vector { p.v.clone() } else { vec![] } }).collect())
    }
    async fn vectors(&self, _: &str, ids: &[PointKey]) -> Result<HashMap<PointKey, Vec<f32>>> {
        Ok(self.points.iter().filter(|p| ids.contains(&p.key)).map(|p| (p.key, p.v.clone())).collect())
    }
    async fn fetch(&self, ids: &[PointKey], _: bool, _: bool) -> Result<HashMap<PointKey, (Option<Struct>, Vec<f32>)>> {
        Ok(self
            .points
            .iter()
            .filter(|p| ids.contains(&p.key))
            .map(|p| {
                let mut s = Struct::default();
                s.fields.insert("g".into(), Value { kind: Some(value::Kind::StringValue(p.g.clone())) });
                (p.key, (Some(s), vec![]))
            })
            .collect())
    }
}

/// The definition, evaluated over every point: `filters` are the stage's
/// and its ancestors'.
fn reference(points: &[P], q: &Query, prefetch: &[Prefetch], filters: &[Filter], limit: usize, threshold: Option<f32>, page: usize) -> Vec<Scored> {
    let ok = |p: &P| filters.iter().all(|f| passes(f, p));
    let kids: Vec<Vec<Scored>> = prefetch
        .iter()
        .map(|c| {
            let mut fs = filters.to_vec();
            if let Some(f) = &c.filter {
                fs.push(f.clone());
            }
            let l = if c.limit == 0 { page.max(10) } else { c.limit as usize };
            reference(points, c.query.as_ref().unwrap(), &c.prefetch, &fs, l, c.score_threshold, l)
        })
        .collect();
    let cands: HashSet<PointKey> = kids.iter().flatten().map(|(k, _)| *k).collect();
    let pool = |p: &P| if prefetch.is_empty() { ok(p) } else { cands.contains(&p.key) };
    let list: Vec<Scored> = match q.kind.as_ref().unwrap() {
        Q::Nearest(n) => {
            let Some(vector_input::Kind::Vector(v)) = &n.vector.as_ref().unwrap().kind else { unreachable!() };
            points.iter().filter(|p| pool(p)).map(|p| (p.key, dot(&v.values, &p.v))).collect()
        }
        Q::Bm25(b) => points.iter().filter(|p| pool(p)).map(|p| (p.key, bm25_like(p, &b.text))).filter(|(_, s)| *s >= 1.0).collect(),
        Q::Multivector(mv) => points.iter().filter(|p| pool(p)).map(|p| (p.key, mv.rows.iter().map(|r| (dot(&r.values, &p.v) as f64).abs()).sum::<f64>() as f32)).collect(),
        Q::Sparse(sq) => points.iter().filter(|p| pool(p)).filter_map(|p| sparse_like(p, sq.vector.as_ref().unwrap()).map(|s| (p.key, s))).collect(),
        Q::Fusion(f) => {
            let mut acc: HashMap<PointKey, f64> = HashMap::new();
            for (i, l) in kids.iter().enumerate() {
                let w = f.weights.get(i).copied().unwrap_or(1.0) as f64;
                if f.method == FusionMethod::Rrf as i32 {
                    for (r, (k, _)) in l.iter().enumerate() {
                        *acc.entry(*k).or_default() += w / (60.0 + r as f64 + 1.0);
                    }
                } else if !l.is_empty() {
                    let xs: Vec<f64> = l.iter().map(|x| x.1 as f64).collect();
                    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
                    let sd = (xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / xs.len() as f64).sqrt();
                    for (k, s) in l {
                        let v = if sd > 0.0 { ((*s as f64 - (mean - 3.0 * sd)) / (6.0 * sd)).clamp(0.0, 1.0) } else { 0.5 };
                        *acc.entry(*k).or_default() += w * v;
                    }
                }
            }
            acc.into_iter().map(|(k, s)| (k, s as f32)).collect()
        }
        _ => unreachable!(),
    };
    top(list.into_iter().filter(|(_, s)| threshold.is_none_or(|t| *s >= t)).collect(), limit)
}

fn arb_filter() -> impl Strategy<Value = Option<Filter>> {
    prop_oneof![
        2 => Just(None),
        1 => prop::sample::select(vec!["a", "b", "c"]).prop_map(|g| Some(Filter { must: vec![Condition { kind: Some(condition::Kind::Match(MatchCondition { key: "g".into(), value: Some(match_condition::Value::Keyword(g.into())) })) }], ..Default::default() })),
        1 => (0i64..10).prop_map(|n| Some(Filter { must_not: vec![Condition { kind: Some(condition::Kind::Range(RangeCondition { key: "n".into(), gte: Some(n as f64), ..Default::default() })) }], ..Default::default() })),
    ]
}

fn arb_vec() -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(-4i32..=4, 3).prop_map(|v| v.into_iter().map(|x| x as f32 / 4.0).collect())
}

fn arb_leaf() -> impl Strategy<Value = Query> {
    prop_oneof![
        arb_vec().prop_map(crate_nearest),
        prop::sample::subsequence(vec!["w0", "w1", "w2", "w3"], 1..3).prop_map(|w| Query { kind: Some(Q::Bm25(Bm25Query { key: "t".into(), text: w.join(" "), k1: None, b: None })) }),
        prop::collection::vec(arb_vec(), 1..3).prop_map(multivector),
        (prop::sample::subsequence(vec![0u32, 1, 2], 1..3), 1i32..4).prop_map(|(ix, w)| Query {
            kind: Some(Q::Sparse(SparseQuery { name: "s".into(), vector: Some(SparseVector { values: ix.iter().map(|i| (w + *i as i32) as f32 / 2.0).collect(), indices: ix }) }))
        }),
    ]
}

fn multivector(rows: Vec<Vec<f32>>) -> Query {
    Query { kind: Some(Q::Multivector(MultiVectorQuery { using: "mv".into(), rows: rows.into_iter().map(|values| DenseVector { values }).collect() })) }
}

fn crate_nearest(v: Vec<f32>) -> Query {
    Query { kind: Some(Q::Nearest(NearestQuery { vector: Some(VectorInput { kind: Some(vector_input::Kind::Vector(DenseVector { values: v })) }), using: String::new() })) }
}

fn arb_prefetch() -> impl Strategy<Value = Prefetch> {
    let leaf = (arb_leaf(), arb_filter(), 0u32..12, prop::option::weighted(0.2, 0.0f32..2.0)).prop_map(|(q, filter, limit, t)| Prefetch { query: Some(q), filter, limit, score_threshold: t, ..Default::default() });
    leaf.prop_recursive(2, 8, 3, |inner| {
        (prop::collection::vec(inner, 1..4), arb_filter(), 0u32..12, prop::bool::ANY, arb_vec(), prop::bool::ANY).prop_map(|(kids, filter, limit, fuse, v, rrf)| {
            let n = kids.len();
            let q = if fuse {
                Query { kind: Some(Q::Fusion(FusionQuery { method: if rrf { FusionMethod::Rrf } else { FusionMethod::Dbsf } as i32, weights: (0..n).map(|i| 1.0 + i as f32 / 2.0).collect(), rrf_k: None })) }
            } else if rrf {
                crate_nearest(v)
            } else {
                // A late-interaction re-score of the prefetches.
                multivector(vec![v.clone(), v.iter().map(|x| x * 0.5 + 0.25).collect()])
            };
            Prefetch { prefetch: kids, query: Some(q), filter, limit, ..Default::default() }
        })
    })
}

fn arb_points() -> impl Strategy<Value = Vec<P>> {
    prop::collection::vec((arb_vec(), 0usize..3, 0i64..10, prop::collection::vec(0usize..5, 0..5)), 5..40).prop_map(|ps| {
        ps.into_iter()
            .enumerate()
            .map(|(i, (v, g, n, ws))| P { key: PointKey::Num(i as u64 * 7 % 101), v, g: ["a", "b", "c"][g].into(), n, words: ws.into_iter().map(|w| format!("w{w}")).collect() })
            .collect()
    })
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
    #[test]
    fn planner_equals_brute_force(points in arb_points(), top in arb_prefetch(), filter in arb_filter(), limit in 1u32..10, offset in 0u32..4) {
        let req = QueryPointsRequest { collection: "c".into(), prefetch: top.prefetch.clone(), query: top.query.clone(), filter: filter.clone(), limit, offset, ..Default::default() };
        // The top stage's own filter and threshold go to the request.
        let mut req = req;
        if let Some(f) = &top.filter {
            req.filter = Some(match filter.clone() { Some(outer) => query::and_filters(&[&outer, f]).unwrap(), None => f.clone() });
        }
        req.score_threshold = top.score_threshold;
        query::validate(&req, brute_config()).unwrap();
        let exec = Brute { points: points.clone() };
        let Answer::Points(got) = block_on(query::run(&exec, &req)).unwrap() else { panic!("points expected") };
        let filters: Vec<Filter> = req.filter.iter().cloned().collect();
        let page = (offset + limit) as usize;
        let want: Vec<Scored> = reference(&points, req.query.as_ref().unwrap(), &req.prefetch, &filters, page, req.score_threshold, page).into_iter().skip(offset as usize).collect();
        prop_assert_eq!(got.len(), want.len(), "got {:?}\nwant {:?}", got, want);
        for (g, w) in got.iter().zip(&want) {
            prop_assert_eq!(g.0, w.0, "got {:?}\nwant {:?}", got, want);
            prop_assert!((g.1 - w.1).abs() <= 1e-5 * w.1.abs().max(1.0));
        }
    }
}

#[test]
fn fusion_rrf_and_dbsf_by_hand() {
    let k = |i: u64| PointKey::Num(i);
    let a = vec![(k(1), 0.9), (k(2), 0.5), (k(3), 0.1)];
    let b = vec![(k(3), 10.0), (k(1), 5.0)];
    let r: HashMap<PointKey, f32> = query::rrf(&[a.clone(), b.clone()], &[], 60).into_iter().collect();
    assert!((r[&k(1)] - (1.0 / 61.0 + 1.0 / 62.0)).abs() < 1e-7);
    assert!((r[&k(2)] - 1.0 / 62.0).abs() < 1e-7);
    assert!((r[&k(3)] - (1.0 / 63.0 + 1.0 / 61.0)).abs() < 1e-7);
    let d: HashMap<PointKey, f32> = query::dbsf(std::slice::from_ref(&b), &[true], &[2.0]).into_iter().collect();
    // mean 7.5, sd 2.5: [0, 15] -> 10 maps to 2/3, 5 to 1/3; weight 2.
    assert!((d[&k(3)] - 4.0 / 3.0).abs() < 1e-6 && (d[&k(1)] - 2.0 / 3.0).abs() < 1e-6);
    // Distances (lower is better) are negated first.
    let l2: HashMap<PointKey, f32> = query::dbsf(&[b], &[false], &[]).into_iter().collect();
    assert!(l2[&k(1)] > l2[&k(3)]);
    assert_eq!(query::best_score(&[0.2, 0.7], &[0.5]), 0.7);
    assert_eq!(query::best_score(&[0.2], &[0.5]), -0.5);
    assert_eq!(query::best_score(&[], &[0.5]), -0.5);
}

#[test]
fn mmr_trades_relevance_for_diversity() {
    let k = |i: u64| PointKey::Num(i);
    // 1 and 2 are the same direction; 3 is orthogonal but less relevant.
    let c = vec![(k(1), 0.9, vec![1.0, 0.0]), (k(2), 0.89, vec![1.0, 0.0]), (k(3), 0.5, vec![0.0, 1.0])];
    assert_eq!(query::mmr(Metric::Dot, c.clone(), 0.0, 2).iter().map(|x| x.0).collect::<Vec<_>>(), vec![k(1), k(2)]);
    assert_eq!(query::mmr(Metric::Dot, c, 0.5, 2).iter().map(|x| x.0).collect::<Vec<_>>(), vec![k(1), k(3)]);
}

#[test]
fn group_by_keeps_group_order_and_size() {
    let k = |i: u64| PointKey::Num(i);
    let list = vec![(k(1), 0.9), (k(2), 0.8), (k(3), 0.7), (k(4), 0.6)];
    let pay = |key: &PointKey| {
        let g = match key {
            PointKey::Num(1) | PointKey::Num(3) | PointKey::Num(4) => "x",
            _ => "y",
        };
        let mut s = Struct::default();
        s.fields.insert("g".into(), Value { kind: Some(value::Kind::StringValue(g.into())) });
        Some(s)
    };
    let g = query::group(&list, pay, "g", 2);
    assert_eq!(g.len(), 2);
    assert_eq!(g[0].1, vec![(k(1), 0.9), (k(3), 0.7)]);
    assert_eq!(g[1].1, vec![(k(2), 0.8)]);
}

#[test]
fn validation_refuses_bad_trees() {
    let near = crate_nearest(vec![1.0, 0.0, 0.0]);
    let base = QueryPointsRequest { collection: "c".into(), query: Some(near.clone()), ..Default::default() };
    assert!(query::validate(&base, brute_config()).is_ok());
    let mut r = base.clone();
    r.query = Some(Query { kind: Some(Q::Fusion(FusionQuery::default())) });
    assert!(query::validate(&r, brute_config()).unwrap_err().to_string().contains("at least one"));
    r = base.clone();
    r.query = Some(crate_nearest(vec![1.0]));
    assert!(query::validate(&r, brute_config()).unwrap_err().to_string().contains("dimensions"));
    r = base.clone();
    r.limit = 9_000;
    r.offset = 2_000;
    assert!(query::validate(&r, brute_config()).is_err());
    // Too deep.
    let mut p = Prefetch { query: Some(near.clone()), ..Default::default() };
    for _ in 0..9 {
        p = Prefetch { query: Some(near.clone()), prefetch: vec![p], limit: 10, ..Default::default() };
    }
    r = base.clone();
    r.prefetch = vec![p];
    assert!(query::validate(&r, brute_config()).unwrap_err().to_string().contains("deeper"));
    // Too many stages.
    r = base.clone();
    r.query = Some(Query { kind: Some(Q::Fusion(FusionQuery::default())) });
    r.prefetch = (0..70).map(|_| Prefetch { query: Some(near.clone()), limit: 10, ..Default::default() }).collect();
    assert!(query::validate(&r, brute_config()).unwrap_err().to_string().contains("stages"));
    // A re-score over too many candidates.
    r = base.clone();
    r.prefetch = (0..7).map(|_| Prefetch { query: Some(near.clone()), limit: 10_000, ..Default::default() }).collect();
    assert!(query::validate(&r, brute_config()).unwrap_err().to_string().contains("re-score"));
    r = base;
    r.query = Some(Query { kind: Some(Q::Bm25(Bm25Query { key: "t".into(), text: " ".into(), k1: None, b: None })) });
    assert!(query::validate(&r, brute_config()).is_err());
}
