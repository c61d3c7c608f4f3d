//! The query API and the new filters through the public API of a 3-node
//! cluster: the same data in a 1-shard and a 5-shard collection (2
//! replicas each). Every query form gives the same answer at 1 and at 5
//! shards, and equals a brute-force reference computed here from the data
//! (exact dense scores in f64, BM25 from its formula over the tokens of
//! the collection's tokenizer, filters by the node's reference semantics).
use std::collections::{HashMap, HashSet};

use serde_json::json;
use shoal_client::{Client, Point, PrefetchBuilder, QueryBuilder, Q};
use shoal_node::filter::filter_matches;
use shoal_node::text::Tokenizer;
use shoal_proto::v1::*;
use shoal_proto::PointKey;
use shoal_tests::procs::ProcCluster;
use shoal_tests::vector;

const DIM: usize = 8;
const N: u64 = 600;
const WORDS: &[&str] = &["vector", "vectors", "search", "searching", "database", "graph", "index", "indexes", "fast", "rust", "the", "of", "raft", "shard", "query", "café", "Cafe", "hybrid", "text", "dense"];

fn text_params() -> TextIndexParams {
    TextIndexParams { stemmer: "english".into(), stop_words: "english".into(), keep_accents: false }
}

fn payload(i: u64) -> serde_json::Value {
    let mut x = i.wrapping_mul(2654435761) % 1_000_003;
    let mut next = |m: u64| {
        x = (x * 48271 + 11) % 2_147_483_647;
        x % m
    };
    let len = 3 + next(12) as usize;
    let text: Vec<&str> = (0..len).map(|_| WORDS[next(WORDS.len() as u64) as usize]).collect();
    let tags: Vec<String> = (0..next(4)).map(|t| format!("t{t}")).collect();
    let cat = ["books", "music", "garden", "tools", "food"][(i % 5) as usize];
    let prefix = ["alpha", "beta", "gamma"][(i % 3) as usize];
    json!({
        "cat": cat,
        "n": i % 37,
        "price": (i % 7) as f64 / 2.0,
        "name": format!("{prefix}-{i}"),
        "text": text.join(" "),
        "at": format!("2026-{:02}-{:02}T{:02}:00:00Z", 1 + i % 12, 1 + i % 28, i % 24),
        "loc": {"lat": -60.0 + (i % 120) as f64, "lon": -170.0 + (i * 7 % 340) as f64},
        "tags": tags,
    })
}

/// Point `i`'s sparse vectors: `kw`, its text's word counts over WORDS
/// (searched with the IDF modifier), and `raw`, two dimensions on three
/// points in four (no modifier).
fn sparse_of(i: u64) -> Vec<(&'static str, SparseVector)> {
    let text = payload(i)["text"].as_str().unwrap().to_string();
    let mut counts = std::collections::BTreeMap::new();
    for w in text.split(' ') {
        *counts.entry(WORDS.iter().position(|x| *x == w).unwrap() as u32).or_insert(0f32) += 1.0;
    }
    let mut out = vec![("kw", SparseVector { indices: counts.keys().copied().collect(), values: counts.values().copied().collect() })];
    if !i.is_multiple_of(4) {
        out.push(("raw", SparseVector { indices: vec![(i % 10) as u32, 10 + (i % 13) as u32], values: vec![0.5 + (i % 3) as f32, 1.0] }));
    }
    out
}

struct Data {
    points: Vec<(PointKey, Vec<f32>, Struct)>,
    tok: Tokenizer,
}

fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt() as f32;
    v.iter_mut().for_each(|x| *x /= n);
    v
}

impl Data {
    fn new() -> Self {
        let points = (0..N).map(|i| (PointKey::Num(i), unit(vector(i, DIM)), Struct::try_from(&payload(i)).unwrap())).collect();
        Data { points, tok: Tokenizer::new(&text_params()) }
    }
    /// Sparse dot products in f64: `kw` weighted by the collection-wide
    /// IDF, `raw` plain; points sharing no dimension left out.
    fn sparse(&self, name: &str, q: &SparseVector, f: &Option<Filter>) -> Vec<(PointKey, f32)> {
        let vecs: Vec<(PointKey, &Struct, SparseVector)> = self.points.iter().filter_map(|(k, _, p)| sparse_of(num_of(k)).into_iter().find(|(n, _)| *n == name).map(|(_, v)| (*k, p, v))).collect();
        let n = vecs.len() as f64;
        let weight = |d: u32, w: f32| {
            if name != "kw" {
                return w as f64;
            }
            let df = vecs.iter().filter(|(_, _, v)| v.indices.contains(&d)).count() as f64;
            w as f64 * (1.0 + (n - df + 0.5) / (df + 0.5)).ln()
        };
        vecs.iter()
            .filter(|(k, p, _)| self.passes(f, k, p))
            .filter_map(|(k, _, v)| {
                let hits: Vec<f64> = q.indices.iter().zip(&q.values).filter_map(|(d, w)| v.indices.iter().position(|x| x == d).map(|at| weight(*d, *w) * v.values[at] as f64)).collect();
                (!hits.is_empty()).then(|| (*k, hits.iter().sum::<f64>() as f32))
            })
            .collect()
    }
    fn passes(&self, f: &Option<Filter>, k: &PointKey, p: &Struct) -> bool {
        f.as_ref().is_none_or(|f| filter_matches(f, k, Some(p)))
    }
    fn dense(&self, q: &[f32], f: &Option<Filter>) -> Vec<(PointKey, f32)> {
        let q = unit(q.to_vec());
        self.points.iter().filter(|(k, _, p)| self.passes(f, k, p)).map(|(k, v, _)| (*k, v.iter().zip(&q).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() as f32)).collect()
    }
    fn bm25(&self, text: &str, f: &Option<Filter>, k1: f64, b: f64) -> Vec<(PointKey, f32)> {
        self.bm25_on(&self.tok, "text", text, f, k1, b)
    }
    fn bm25_on(&self, tok: &Tokenizer, field: &str, text: &str, f: &Option<Filter>, k1: f64, b: f64) -> Vec<(PointKey, f32)> {
        let docs: Vec<(PointKey, Vec<String>, &Struct)> = self.points.iter().map(|(k, _, p)| (*k, tok.field_values(p, field).concat(), p)).filter(|(_, t, _)| !t.is_empty()).collect();
        let n = docs.len() as f64;
        let avgdl = docs.iter().map(|d| d.1.len()).sum::<usize>() as f64 / n;
        let q = tok.tokens(text);
        let df = |t: &String| docs.iter().filter(|d| d.1.contains(t)).count() as f64;
        let mut out = vec![];
        for (k, toks, p) in &docs {
            if !self.passes(f, k, p) {
                continue;
            }
            let mut s = 0.0;
            let mut hit = false;
            for t in &q {
                let tf = toks.iter().filter(|x| *x == t).count() as f64;
                if tf > 0.0 {
                    hit = true;
                    let idf = (1.0 + (n - df(t) + 0.5) / (df(t) + 0.5)).ln();
                    s += idf * tf / (tf + k1 * (1.0 - b + b * toks.len() as f64 / avgdl));
                }
            }
            if hit {
                out.push((*k, s as f32));
            }
        }
        out
    }
}

fn num_of(k: &PointKey) -> u64 {
    match k {
        PointKey::Num(n) => *n,
        _ => panic!("numeric ids only"),
    }
}

fn top(mut v: Vec<(PointKey, f32)>, k: usize) -> Vec<(PointKey, f32)> {
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(k);
    v
}

fn got(r: &QueryPointsResponse) -> Vec<(PointKey, f32)> {
    r.points.iter().map(|p| (PointKey::try_from(p.id.as_ref().unwrap()).unwrap(), p.score)).collect()
}

/// Same ids in order and scores within `tol` (relative); ids may swap only
/// where the reference's scores are within `tol` of each other.
fn assert_close(what: &str, got: &[(PointKey, f32)], want: &[(PointKey, f32)], tol: f32) {
    assert!(!want.is_empty(), "{what}: an empty reference tests nothing");
    assert_eq!(got.len(), want.len(), "{what}: got {got:?}\nwant {want:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g.1 - w.1).abs() <= tol * w.1.abs().max(1.0), "{what}: score {i}: got {got:?}\nwant {want:?}");
        if g.0 != w.0 {
            let tie = want.iter().any(|x| x.0 == g.0 && (x.1 - w.1).abs() <= tol * w.1.abs().max(1.0));
            assert!(tie, "{what}: id {i}: got {got:?}\nwant {want:?}");
        }
    }
}

async fn create(c: &Client, name: &str, shards: u32) {
    let mut cfg = shoal_client::CollectionBuilder::new(name, DIM as u32, Metric::Cosine).shards(shards).replication_factor(2).text_index("text", text_params()).sparse_vector("kw", true).sparse_vector("raw", false).index("cat", PayloadIndexType::Keyword).index("name", PayloadIndexType::Keyword).index("n", PayloadIndexType::Numeric).index("price", PayloadIndexType::Numeric).index("loc", PayloadIndexType::Geo).build();
    cfg.payload_indexes.push(PayloadIndexSpec { key: "at".into(), r#type: PayloadIndexType::Datetime as i32, text: None });
    c.create_collection(cfg).await.unwrap();
    let pts: Vec<Point> = (0..N).map(|i| sparse_of(i).into_iter().fold(Point::new(i, vector(i, DIM)).payload(payload(i)), |p, (n, v)| p.sparse(n, v.indices, v.values))).collect();
    for chunk in pts.chunks(200) {
        c.upsert(name, chunk.to_vec()).await.unwrap();
    }
}

fn cond(k: condition::Kind) -> Condition {
    Condition { kind: Some(k) }
}

fn must(c: Condition) -> Option<Filter> {
    Some(Filter { must: vec![c], ..Default::default() })
}

#[tokio::test(flavor = "multi_thread")]
async fn every_query_form_is_shard_count_independent_and_equals_brute_force() {
    let cluster = ProcCluster::start(3).await.unwrap();
    let c = shoal_tests::tls::client(&cluster.coordinator.addr).await;
    create(&c, "q1", 1).await;
    create(&c, "q5", 5).await;
    let d = Data::new();
    let qv = vector(10_001, DIM);
    let cat = |v: &str| must(cond(condition::Kind::Match(MatchCondition { key: "cat".into(), value: Some(match_condition::Value::Keyword(v.into())) })));
    let run = |b: QueryBuilder| {
        let c = c.clone();
        async move {
            let mut out = vec![];
            for name in ["q1", "q5"] {
                out.push(c.query(b.clone().collection(name)).await.unwrap());
            }
            let (a, b) = (got(&out[0]), got(&out[1]));
            assert_eq!(a.iter().map(|x| x.0).collect::<Vec<_>>(), b.iter().map(|x| x.0).collect::<Vec<_>>(), "1 shard vs 5 shards");
            for (x, y) in a.iter().zip(&b) {
                assert!((x.1 - y.1).abs() <= 1e-5 * x.1.abs().max(1.0), "scores at 1 vs 5 shards: {a:?} {b:?}");
            }
            out.pop().unwrap()
        }
    };

    // Dense, exact, filtered.
    let r = run(QueryBuilder::new("", Q::nearest(qv.clone())).filter(cat("music").unwrap()).exact().limit(15)).await;
    assert_close("dense", &got(&r), &top(d.dense(&qv, &cat("music")), 15), 1e-4);

    // BM25 alone, default and custom k1/b, with a filter.
    for (k1, b) in [(1.2, 0.75), (0.5, 0.3)] {
        let r = run(QueryBuilder::new("", Q::bm25_with("text", "fast vector searches of the Café", k1 as f32, b as f32)).limit(20)).await;
        assert_close("bm25", &got(&r), &top(d.bm25("fast vector searches of the Café", &None, k1, b), 20), 1e-5);
    }
    let r = run(QueryBuilder::new("", Q::bm25("text", "graph index")).filter(cat("books").unwrap()).limit(10)).await;
    assert_close("bm25 filtered", &got(&r), &top(d.bm25("graph index", &cat("books"), 1.2, 0.75), 10), 1e-5);

    // RRF and DBSF of dense and BM25, each stage's global list first.
    let dense50 = top(d.dense(&qv, &None), 50);
    let text50 = top(d.bm25("rust raft shard", &None, 1.2, 0.75), 50);
    let hybrid = |fusion: Query| QueryBuilder::new("", fusion).prefetch(PrefetchBuilder::new(Q::nearest(qv.clone()), 50).exact()).prefetch(PrefetchBuilder::new(Q::bm25("text", "rust raft shard"), 50)).limit(10);
    let r = run(hybrid(Q::rrf())).await;
    assert_close("rrf", &got(&r), &top(shoal_coordinator::query::rrf(&[dense50.clone(), text50.clone()], &[], 60), 10), 1e-5);
    let r = run(hybrid(Q::dbsf(vec![1.0, 2.0]))).await;
    assert_close("dbsf", &got(&r), &top(shoal_coordinator::query::dbsf(&[dense50.clone(), text50.clone()], &[true, true], &[1.0, 2.0]), 10), 1e-5);
    // Pagination: the next page continues the same ranking.
    let r = run(hybrid(Q::rrf()).offset(10)).await;
    assert_close("rrf page 2", &got(&r), &top(shoal_coordinator::query::rrf(&[dense50.clone(), text50.clone()], &[], 60), 20)[10..], 1e-5);

    // Sparse: with the collection-wide IDF, plain with a filter, fused with
    // dense, and as the re-score of a dense prefetch.
    let kw = SparseVector { indices: vec![0, 5, 12, 19], values: vec![1.0, 2.0, 0.5, 1.0] };
    let r = run(QueryBuilder::new("", Q::sparse("kw", kw.indices.clone(), kw.values.clone())).limit(15)).await;
    assert_close("sparse idf", &got(&r), &top(d.sparse("kw", &kw, &None), 15), 1e-5);
    let raw = SparseVector { indices: vec![3, 12, 15], values: vec![1.0, 0.5, 2.0] };
    let r = run(QueryBuilder::new("", Q::sparse("raw", raw.indices.clone(), raw.values.clone())).filter(cat("garden").unwrap()).limit(10)).await;
    assert_close("sparse filtered", &got(&r), &top(d.sparse("raw", &raw, &cat("garden")), 10), 1e-5);
    let r = run(QueryBuilder::new("", Q::rrf()).prefetch(PrefetchBuilder::new(Q::nearest(qv.clone()), 50).exact()).prefetch(PrefetchBuilder::new(Q::sparse("kw", kw.indices.clone(), kw.values.clone()), 50)).limit(10)).await;
    assert_close("sparse + dense rrf", &got(&r), &top(shoal_coordinator::query::rrf(&[dense50.clone(), top(d.sparse("kw", &kw, &None), 50)], &[], 60), 10), 1e-5);
    let r = run(QueryBuilder::new("", Q::sparse("raw", raw.indices.clone(), raw.values.clone())).prefetch(PrefetchBuilder::new(Q::nearest(qv.clone()), 100).exact()).limit(10)).await;
    let cands: HashSet<PointKey> = top(d.dense(&qv, &None), 100).into_iter().map(|x| x.0).collect();
    assert_close("sparse re-score", &got(&r), &top(d.sparse("raw", &raw, &None).into_iter().filter(|x| cands.contains(&x.0)).collect(), 10), 1e-5);
    // Stored and returned with the point.
    let back = c.get("q5", vec![7u64.into()], false, true).await.unwrap();
    assert_eq!(back[0].sparse, sparse_of(7).into_iter().map(|(n, v)| (n.to_string(), v)).collect());
    // Bad sparse input: an undeclared name, a repeated index.
    let bad = c.query(QueryBuilder::new("q5", Q::sparse("nope", vec![1], vec![1.0]))).await.unwrap_err();
    assert!(bad.to_string().contains("declares no sparse vector"), "{bad}");
    let bad = c.upsert("q5", vec![Point::new(1u64, vector(1, DIM)).sparse("raw", vec![3, 3], vec![1.0, 2.0])]).await.unwrap_err();
    assert!(bad.to_string().contains("appears twice"), "{bad}");
    let bad = c.upsert("q5", vec![Point::new(1u64, vector(1, DIM)).sparse("other", vec![3], vec![1.0])]).await.unwrap_err();
    assert!(bad.to_string().contains("not declared"), "{bad}");

    // Re-score: BM25 candidates ordered by the dense vector; the top-level
    // filter applies to the prefetch too.
    let r = run(QueryBuilder::new("", Q::nearest(qv.clone())).prefetch(PrefetchBuilder::new(Q::bm25("text", "database query"), 40)).filter(cat("tools").unwrap()).limit(10)).await;
    let cands: HashSet<PointKey> = top(d.bm25("database query", &cat("tools"), 1.2, 0.75), 40).into_iter().map(|x| x.0).collect();
    let want = top(d.dense(&qv, &None).into_iter().filter(|x| cands.contains(&x.0)).collect(), 10);
    assert_close("re-score", &got(&r), &want, 1e-5);

    // Score threshold.
    let r = run(QueryBuilder::new("", Q::nearest(qv.clone())).exact().score_threshold(0.5).limit(1000)).await;
    let want = top(d.dense(&qv, &None).into_iter().filter(|x| x.1 >= 0.5).collect(), 1000);
    assert!(!want.is_empty());
    assert_close("threshold", &got(&r), &want, 1e-4);

    // Recommend, average vector (examples by id, left out of the results).
    let (p1, p2, n1) = (3u64, 77u64, 150u64);
    let vec_of = |i: u64| d.points[i as usize].1.clone();
    let avg: Vec<f32> = (0..DIM).map(|j| {
        let p = (vec_of(p1)[j] + vec_of(p2)[j]) / 2.0;
        p + (p - vec_of(n1)[j])
    }).collect();
    let r = run(QueryBuilder::new("", Q::recommend(vec![shoal_client::query::by_id(p1), shoal_client::query::by_id(p2)], vec![shoal_client::query::by_id(n1)], RecommendStrategy::AverageVector)).exact().limit(10)).await;
    let want = top(d.dense(&avg, &None).into_iter().filter(|x| ![p1, p2, n1].contains(&match x.0 { PointKey::Num(n) => n, _ => 0 })).collect(), 10);
    assert_close("recommend average", &got(&r), &want, 1e-4);

    // Recommend, best score.
    let r = run(QueryBuilder::new("", Q::recommend(vec![shoal_client::query::by_id(p1), shoal_client::query::by_vector(qv.clone())], vec![shoal_client::query::by_id(n1)], RecommendStrategy::BestScore)).filter(cat("garden").unwrap()).limit(10)).await;
    let sims = |q: &[f32]| -> HashMap<PointKey, f32> { d.dense(q, &cat("garden")).into_iter().collect() };
    let (s1, s2, s3) = (sims(&vec_of(p1)), sims(&qv), sims(&vec_of(n1)));
    let want = top(s1.keys().filter(|k| ![PointKey::Num(p1), PointKey::Num(n1)].contains(k)).map(|k| (*k, shoal_coordinator::query::best_score(&[s1[k], s2[k]], &[s3[k]]))).collect(), 10);
    assert_close("recommend best score", &got(&r), &want, 1e-5);

    // MMR over the 60 nearest.
    let r = run(QueryBuilder::new("", Q::mmr(shoal_client::query::by_vector(qv.clone()), 0.6, 60)).exact().limit(8)).await;
    let near60: Vec<(PointKey, f32, Vec<f32>)> = top(d.dense(&qv, &None), 60).into_iter().map(|(k, s)| (k, s, d.points[match k { PointKey::Num(n) => n as usize, _ => 0 }].1.clone())).collect();
    assert_close("mmr", &got(&r), &shoal_coordinator::query::mmr(Metric::Cosine, near60, 0.6, 8), 1e-5);

    // Group-by a payload key, with payload key selection.
    let mut reqs = vec![];
    for name in ["q1", "q5"] {
        reqs.push(c.query(QueryBuilder::new(name, Q::bm25("text", "hybrid dense text")).group_by("cat", 2).payload_keys(&["cat"]).limit(3)).await.unwrap());
    }
    assert_eq!(reqs[0], reqs[1], "group-by at 1 and 5 shards");
    let ranked = top(d.bm25("hybrid dense text", &None, 1.2, 0.75), (3 * 2 * shoal_coordinator::query::GROUP_CANDIDATE_FACTOR).min(10_000));
    let mut want: Vec<(String, Vec<PointKey>)> = vec![];
    for (k, _) in &ranked {
        let cat = d.points[match k { PointKey::Num(n) => *n as usize, _ => 0 }].2.fields["cat"].clone();
        let Some(value::Kind::StringValue(cat)) = cat.kind else { panic!() };
        match want.iter_mut().find(|g| g.0 == cat) {
            Some(g) if g.1.len() < 2 => g.1.push(*k),
            Some(_) => {}
            None => want.push((cat, vec![*k])),
        }
    }
    want.truncate(3);
    let groups: Vec<(String, Vec<PointKey>)> = reqs[1]
        .groups
        .iter()
        .map(|g| {
            let Some(value::Kind::StringValue(s)) = g.key.as_ref().unwrap().kind.clone() else { panic!() };
            for p in &g.points {
                let pl = p.payload.as_ref().unwrap();
                assert_eq!(pl.fields.keys().collect::<Vec<_>>(), vec!["cat"], "only the selected payload key");
            }
            (s, g.points.iter().map(|p| PointKey::try_from(p.id.as_ref().unwrap()).unwrap()).collect())
        })
        .collect();
    assert_eq!(groups, want, "groups");

    // Every new filter kind, counted at 1 and 5 shards against the reference.
    let geo = |lat: f64, lon: f64| Some(GeoPoint { lat, lon });
    let filters: Vec<(&str, Option<Filter>)> = vec![
        ("text all", must(cond(condition::Kind::Text(TextCondition { key: "text".into(), text: "Vectors searching".into(), mode: TextMatch::All as i32 })))),
        ("text any", must(cond(condition::Kind::Text(TextCondition { key: "text".into(), text: "cafe graph".into(), mode: TextMatch::Any as i32 })))),
        ("phrase", must(cond(condition::Kind::Text(TextCondition { key: "text".into(), text: "fast rust".into(), mode: TextMatch::Phrase as i32 })))),
        ("float", must(cond(condition::Kind::Match(MatchCondition { key: "price".into(), value: Some(match_condition::Value::Float(1.5)) })))),
        ("prefix", must(cond(condition::Kind::Match(MatchCondition { key: "name".into(), value: Some(match_condition::Value::Prefix("gamma-1".into())) })))),
        ("datetime", must(cond(condition::Kind::DatetimeRange(DatetimeRangeCondition { key: "at".into(), gte: Some("2026-03-01".into()), lt: Some("2026-05-15T12:00:00+02:00".into()), ..Default::default() })))),
        ("values_count", must(cond(condition::Kind::ValuesCount(ValuesCountCondition { key: "tags".into(), gte: Some(2), ..Default::default() })))),
        ("is_empty", must(cond(condition::Kind::IsEmpty(IsEmptyCondition { key: "tags".into() })))),
        ("geo radius", must(cond(condition::Kind::GeoRadius(GeoRadiusCondition { key: "loc".into(), center: geo(10.0, 20.0), radius_m: 3_000_000.0 })))),
        ("geo box", must(cond(condition::Kind::GeoBoundingBox(GeoBoundingBoxCondition { key: "loc".into(), top_left: geo(30.0, 160.0), bottom_right: geo(-30.0, -160.0) })))),
        ("geo polygon", must(cond(condition::Kind::GeoPolygon(GeoPolygonCondition { key: "loc".into(), exterior: vec![GeoPoint { lat: 0.0, lon: 0.0 }, GeoPoint { lat: 40.0, lon: 0.0 }, GeoPoint { lat: 0.0, lon: 60.0 }] })))),
    ];
    let text_ref = |name: &str, f: &Option<Filter>, k: &PointKey, p: &Struct| -> bool {
        // Text conditions use the field's tokenizer (stemming, stop words).
        if name.starts_with("text") || name == "phrase" {
            let Some(condition::Kind::Text(t)) = &f.as_ref().unwrap().must[0].kind else { unreachable!() };
            d.tok.payload_matches(p, "text", &d.tok.tokens(&t.text), TextMatch::try_from(t.mode).unwrap())
        } else {
            d.passes(f, k, p)
        }
    };
    for (name, f) in &filters {
        let want = d.points.iter().filter(|(k, _, p)| text_ref(name, f, k, p)).count() as u64;
        assert!(want > 0 && want < N, "{name}: a filter that selects {want} of {N} tests nothing");
        for col in ["q1", "q5"] {
            assert_eq!(c.count(col, f.clone()).await.unwrap(), want, "{name} on {col}");
        }
        // And as a search filter, with the dense reference.
        let r = run(QueryBuilder::new("", Q::nearest(qv.clone())).filter(f.clone().unwrap()).exact().limit(5)).await;
        let want = top(d.points.iter().filter(|(k, _, p)| text_ref(name, f, k, p)).map(|(k, v, _)| (*k, v.iter().zip(&unit(qv.clone())).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() as f32)).collect(), 5);
        assert_close(name, &got(&r), &want, 1e-4);
    }

    // shoalctl: a hybrid query from flags gives the SDK's answer.
    let addr = cluster.coordinator.addr.clone();
    let v: Vec<String> = qv.iter().map(|x| x.to_string()).collect();
    let (ok, out, err) = shoal_tests::shoalctl(&["-o", "json", "--addr", &addr, "query", "-c", "q5", "--vector", &v.join(","), "--text", "rust raft shard", "--exact", "--prefetch-limit", "50", "-k", "10", "--payload-keys", "cat"]);
    assert!(ok, "shoalctl query: {out}\n{err}");
    let rows: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let sdk = run(hybrid(Q::rrf())).await;
    let cli_ids: Vec<u64> = rows.as_array().unwrap().iter().map(|r| r["id"].as_u64().unwrap()).collect();
    let sdk_ids: Vec<u64> = got(&sdk).iter().map(|(k, _)| match k { PointKey::Num(n) => *n, _ => 0 }).collect();
    assert_eq!(cli_ids, sdk_ids);
    assert!(rows[0]["payload"]["cat"].is_string() && rows[0]["payload"].as_object().unwrap().len() == 1);
    // A sparse query from flags, fused with the dense one.
    let (ok, out, err) = shoal_tests::shoalctl(&["-o", "json", "--addr", &addr, "query", "-c", "q5", "--vector", &v.join(","), "--sparse", "kw:0=1,5=2,12=0.5,19=1", "--exact", "--prefetch-limit", "50", "-k", "10"]);
    assert!(ok, "shoalctl sparse query: {out}\n{err}");
    let rows: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let want = top(shoal_coordinator::query::rrf(&[dense50.clone(), top(d.sparse("kw", &kw, &None), 50)], &[], 60), 10);
    assert_eq!(rows.as_array().unwrap().iter().map(|r| r["id"].as_u64().unwrap()).collect::<Vec<_>>(), want.iter().map(|(k, _)| num_of(k)).collect::<Vec<_>>());
    let (ok, out, err) = shoal_tests::shoalctl(&["-o", "json", "--addr", &addr, "query", "-c", "q5", "--text", "graph", "--filter", r#"{"must": [{"key": "text", "phrase": "fast rust"}]}"#, "--group-by", "cat", "--group-size", "1"]);
    assert!(ok, "shoalctl grouped query: {out}\n{err}");
    let groups: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(groups.as_array().is_some_and(|g| !g.is_empty() && g.iter().all(|g| g["points"].as_array().unwrap().len() == 1)), "{groups}");

    payload_updates_equal_the_reference(&c, &addr, d, &qv).await;

    // Bad queries get INVALID_ARGUMENT, not a hang or a crash.
    let bad = c.query(QueryBuilder::new("q5", Q::bm25("cat", "books"))).await.unwrap_err();
    assert!(bad.to_string().contains("InvalidArgument") || bad.to_string().contains("invalid"), "{bad}");
    let bad = c.query(QueryBuilder::new("q5", Q::rrf())).await.unwrap_err();
    assert!(bad.to_string().contains("prefetch"), "{bad}");
    let bad = c.query(QueryBuilder::new("q5", Q::bm25("text", "the of"))).await.unwrap_err();
    assert!(bad.to_string().contains("no tokens"), "{bad}");
}

/// Payload set, delete-keys, overwrite and clear, by ids, by filter and
/// through shoalctl, on both collections and on the reference (plain JSON
/// edits here); then every payload, the indexed filters, BM25 over the
/// updated texts and the (unchanged) vectors equal the reference at 1 and
/// at 5 shards.
async fn payload_updates_equal_the_reference(c: &Client, addr: &str, mut d: Data, qv: &[f32]) {
    use shoal_client::{PayloadOp, Select};
    let num = |k: &PointKey| match k {
        PointKey::Num(n) => *n,
        _ => u64::MAX,
    };
    let mut refs: Vec<serde_json::Value> = d.points.iter().map(|(_, _, p)| serde_json::Value::from(p)).collect();
    let cat_is = |v: &str| Filter { must: vec![cond(condition::Kind::Match(MatchCondition { key: "cat".into(), value: Some(match_condition::Value::Keyword(v.into())) }))], ..Default::default() };
    let n_below = |x: f64| Filter { must: vec![cond(condition::Kind::Range(RangeCondition { key: "n".into(), lt: Some(x), ..Default::default() }))], ..Default::default() };
    for name in ["q1", "q5"] {
        // Set by ids (one absent).
        let n = c.update_payload(name, Select::Ids(vec![1u64.into(), 2u64.into(), 3u64.into(), 500u64.into(), 99_999u64.into()]), PayloadOp::Set(json!({"cat": "moved", "text": "rust raft moved shard", "extra": {"k": 1}}))).await.unwrap();
        assert_eq!(n, 4, "{name}: set by ids");
        // Set by filter on an indexed keyword.
        let n = c.update_payload(name, Select::Filter(cat_is("music")), PayloadOp::Set(json!({"flag": true}))).await.unwrap();
        // Point 1 was "music" until the update above.
        assert_eq!(n, N / 5 - 1, "{name}: set by filter");
        // Delete keys by a numeric range.
        let n = c.update_payload(name, Select::Filter(n_below(3.0)), PayloadOp::DeleteKeys(vec!["tags".into(), "price".into(), "absent".into()])).await.unwrap();
        assert_eq!(n, refs.iter().filter(|j| j["n"].as_f64().is_some_and(|x| x < 3.0)).count() as u64, "{name}: delete keys");
        // Overwrite by ids.
        assert_eq!(c.update_payload(name, Select::Ids(vec![10u64.into(), 11u64.into()]), PayloadOp::Overwrite(json!({"cat": "books", "text": "brand new moved text"}))).await.unwrap(), 2);
        // Clear, through shoalctl.
        let (ok, out, err) = shoal_tests::shoalctl(&["-o", "json", "--addr", addr, "point", "payload", "-c", name, "--ids", "20,21", "--clear"]);
        assert!(ok && out.contains("\"updated\":2"), "shoalctl point payload: {out}\n{err}");
    }
    // The same edits on the reference.
    for i in [1usize, 2, 3, 500] {
        let o = refs[i].as_object_mut().unwrap();
        o.insert("cat".into(), json!("moved"));
        o.insert("text".into(), json!("rust raft moved shard"));
        o.insert("extra".into(), json!({"k": 1}));
    }
    for j in refs.iter_mut().filter(|j| j["cat"] == "music") {
        j.as_object_mut().unwrap().insert("flag".into(), json!(true));
    }
    for j in refs.iter_mut().filter(|j| j["n"].as_f64().is_some_and(|x| x < 3.0)) {
        let o = j.as_object_mut().unwrap();
        o.remove("tags");
        o.remove("price");
    }
    for i in [10usize, 11] {
        refs[i] = json!({"cat": "books", "text": "brand new moved text"});
    }
    for i in [20usize, 21] {
        refs[i] = json!({});
    }
    for (p, j) in d.points.iter_mut().zip(&refs) {
        p.2 = Struct::try_from(j).unwrap();
    }
    // Every payload and vector, read back from both collections.
    let ids: Vec<PointId> = (0..N).map(PointId::from).collect();
    for name in ["q1", "q5"] {
        let got = c.get(name, ids.clone(), true, true).await.unwrap();
        assert_eq!(got.len(), N as usize);
        for (p, (k, v, _)) in got.iter().zip(&d.points) {
            let i = num(k) as usize;
            assert_eq!(p.id.as_ref().and_then(|x| PointKey::try_from(x).ok()), Some(*k));
            assert_eq!(serde_json::Value::from(&p.payload.clone().unwrap_or_default()), refs[i], "{name}: payload of {i}");
            assert!(p.vector.iter().zip(v).all(|(a, b)| (a - b).abs() < 1e-6), "{name}: vector of {i} changed");
            assert_eq!(p.sparse.len(), sparse_of(i as u64).len(), "{name}: sparse vectors of {i} kept");
        }
        // Indexed filters see the new values and not the old ones.
        for cat in ["moved", "music", "books", "garden"] {
            let want = refs.iter().filter(|j| j["cat"] == cat).count() as u64;
            assert_eq!(c.count(name, Some(cat_is(cat))).await.unwrap(), want, "{name}: count cat={cat}");
        }
    }
    // BM25 over the updated texts (collection-wide statistics moved too),
    // and dense results over the kept vectors, at 1 and at 5 shards.
    for name in ["q1", "q5"] {
        let r = c.query(QueryBuilder::new(name, Q::bm25("text", "moved raft")).limit(10)).await.unwrap();
        assert_close(&format!("{name}: bm25 after updates"), &got(&r), &top(d.bm25("moved raft", &None, 1.2, 0.75), 10), 1e-5);
        let r = c.query(QueryBuilder::new(name, Q::nearest(qv.to_vec())).filter(cat_is("moved")).exact().limit(5)).await.unwrap();
        assert_close(&format!("{name}: dense after updates"), &got(&r), &top(d.dense(qv, &Some(cat_is("moved"))), 5), 1e-4);
    }
    // Payload indexes on the live collections: a text index on "name" is
    // added and "price" dropped. BM25 over "name" answers once every
    // replica has re-indexed, equal to the reference at 1 and 5 shards; a
    // range filter on the dropped field scans to the same answer.
    let name_text = PayloadIndexSpec { key: "name".into(), r#type: PayloadIndexType::Text as i32, text: Some(TextIndexParams::default()) };
    for name in ["q1", "q5"] {
        // "name" was a keyword index: dropped and re-created as text.
        let info = c.update_payload_indexes(name, vec![name_text.clone()], vec!["price".into(), "name".into()]).await.unwrap();
        let keys: Vec<String> = info.config.unwrap().payload_indexes.into_iter().map(|p| p.key).collect();
        assert!(keys.contains(&"name".to_string()) && !keys.contains(&"price".to_string()), "{keys:?}");
    }
    let name_tok = Tokenizer::new(&TextIndexParams::default());
    let want = top(d.bm25_on(&name_tok, "name", "gamma 59", &None, 1.2, 0.75), 10);
    for name in ["q1", "q5"] {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let r = loop {
            match c.query(QueryBuilder::new(name, Q::bm25("name", "gamma 59")).limit(10)).await {
                Ok(r) if got(&r).len() == want.len() => break r,
                other if std::time::Instant::now() > deadline => panic!("{name}: BM25 over the new text index never answered: {other:?}"),
                _ => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
            }
        };
        assert_close(&format!("{name}: bm25 over a live-added index"), &got(&r), &want, 1e-5);
        let cheap = Filter { must: vec![cond(condition::Kind::Range(RangeCondition { key: "price".into(), lt: Some(1.0), ..Default::default() }))], ..Default::default() };
        let want_n = refs.iter().filter(|j| j["price"].as_f64().is_some_and(|p| p < 1.0)).count() as u64;
        assert_eq!(c.count(name, Some(cheap)).await.unwrap(), want_n, "{name}: a dropped index's field is scanned");
    }
    // Through shoalctl: drop it again; BM25 over "name" is then refused
    // (once the shards' logs have the change).
    let (ok, out, err) = shoal_tests::shoalctl(&["--addr", addr, "collection", "index", "q5", "--drop", "name"]);
    assert!(ok, "shoalctl collection index: {out}\n{err}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let bad = loop {
        match c.query(QueryBuilder::new("q5", Q::bm25("name", "gamma"))).await {
            Err(e) => break e,
            Ok(_) if std::time::Instant::now() < deadline => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
            Ok(r) => panic!("BM25 over a dropped text index still answers: {r:?}"),
        }
    };
    assert!(bad.to_string().contains("no TEXT index"), "{bad}");
    let bad = c.update_payload_indexes("q5", vec![], vec!["nope".into()]).await.unwrap_err();
    assert!(bad.to_string().contains("not indexed"), "{bad}");

    // Refused updates: no selector, an empty filter, no op.
    let bad = c.update_payload("q5", Select::Filter(Filter::default()), PayloadOp::Clear).await.unwrap_err();
    assert!(bad.to_string().contains("all"), "{bad}");
    let bad = c.update_payload("q5", Select::All, PayloadOp::DeleteKeys(vec![])).await.unwrap_err();
    assert!(bad.to_string().contains("no keys"), "{bad}");
}

/// Aliases on a 3-node cluster: reads and writes through an alias reach
/// its collection; a switch under a stream of reads answers every read
/// from the old collection or the new one, never an error; the rules
/// (no alias with a collection's name, no alias to nothing, aliases go
/// with their collection) hold; shoalctl sets, lists and deletes them.
#[tokio::test(flavor = "multi_thread")]
async fn aliases_switch_atomically_under_reads() {
    use shoal_client::{alias_delete, alias_put};
    let cluster = ProcCluster::start(3).await.unwrap();
    let c = shoal_tests::tls::client(&cluster.coordinator.addr).await;
    for (name, n) in [("v1", 3u64), ("v2", 5)] {
        c.create_collection(shoal_client::CollectionBuilder::new(name, DIM as u32, Metric::Cosine).shards(2).replication_factor(2).build()).await.unwrap();
        c.upsert(name, (0..n).map(|i| Point::new(i, vector(i, DIM)).payload(json!({"from": name, "i": i}))).collect()).await.unwrap();
    }
    c.update_aliases(vec![alias_put("live", "v1")]).await.unwrap();
    assert_eq!(c.count("live", None).await.unwrap(), 3);
    assert_eq!(c.get_collection("live").await.unwrap().config.unwrap().name, "v1");
    // A write through the alias lands in v1.
    c.upsert("live", vec![Point::new(100u64, vector(100, DIM)).payload(json!({"from": "live"}))]).await.unwrap();
    assert_eq!(c.count("v1", None).await.unwrap(), 4);

    // Readers through the alias while it switches.
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let (stop, reads) = (std::sync::Arc::new(AtomicBool::new(false)), std::sync::Arc::new(AtomicUsize::new(0)));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (c, stop, reads) = (c.clone(), stop.clone(), reads.clone());
            tokio::spawn(async move {
                let mut seen = HashSet::new();
                while !stop.load(Ordering::Relaxed) {
                    let n = c.count("live", None).await.expect("a read through the alias failed during the switch");
                    assert!(n == 4 || n == 5, "count {n} is neither v1's nor v2's");
                    seen.insert(n);
                    reads.fetch_add(1, Ordering::Relaxed);
                }
                seen
            })
        })
        .collect();
    // Reads complete before the switch and after it: each reader has at
    // most one read in flight, so 6 completions after the switch include
    // reads that started after it.
    let reads_past = |n: usize| {
        let reads = reads.clone();
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while reads.load(Ordering::Relaxed) < n {
                assert!(std::time::Instant::now() < deadline, "the readers stalled");
                tokio::task::yield_now().await;
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
    };
    reads_past(6).await;
    c.update_aliases(vec![alias_put("live", "v2"), alias_put("old", "v1")]).await.unwrap();
    reads_past(reads.load(Ordering::Relaxed) + 6).await;
    stop.store(true, Ordering::Relaxed);
    let mut seen = HashSet::new();
    for r in readers {
        seen.extend(r.await.unwrap());
    }
    assert!(seen.contains(&5), "readers never saw the new collection: {seen:?}");
    assert_eq!(c.count("live", None).await.unwrap(), 5);
    assert_eq!(c.count("old", None).await.unwrap(), 4);
    let r = c.query(QueryBuilder::new("live", Q::nearest(vector(2, DIM))).exact().limit(1)).await.unwrap();
    assert_eq!(got(&r)[0].0, PointKey::Num(2));

    // The rules.
    let e = c.update_aliases(vec![alias_put("v1", "v2")]).await.unwrap_err();
    assert!(e.to_string().contains("AlreadyExists") || e.to_string().contains("already exists"), "{e}");
    let e = c.update_aliases(vec![alias_put("x", "v2"), alias_put("y", "nothing")]).await.unwrap_err();
    assert!(e.to_string().contains("NotFound") || e.to_string().contains("not found"), "{e}");
    assert!(c.list_aliases(None).await.unwrap().iter().all(|a| a.alias != "x"), "a failed update applies nothing");
    let e = c.update_aliases(vec![alias_delete("nope")]).await.unwrap_err();
    assert!(e.to_string().contains("not found"), "{e}");
    let e = c.create_collection(shoal_client::CollectionBuilder::new("live", DIM as u32, Metric::Cosine).build()).await.unwrap_err();
    assert!(e.to_string().contains("already exists") || e.to_string().contains("AlreadyExists"), "{e}");

    // shoalctl.
    let addr = cluster.coordinator.addr.clone();
    let (ok, out, err) = shoal_tests::shoalctl(&["--addr", &addr, "alias", "set", "third", "v2"]);
    assert!(ok, "{out}\n{err}");
    let (ok, out, err) = shoal_tests::shoalctl(&["-o", "json", "--addr", &addr, "alias", "list", "-c", "v2"]);
    assert!(ok, "{out}\n{err}");
    let listed: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(listed, json!([{"alias": "live", "collection": "v2"}, {"alias": "third", "collection": "v2"}]));
    let (ok, out, err) = shoal_tests::shoalctl(&["--addr", &addr, "alias", "delete", "third"]);
    assert!(ok, "{out}\n{err}");

    // Deleting a collection deletes its aliases.
    c.delete_collection("v1").await.unwrap();
    let left: Vec<(String, String)> = c.list_aliases(None).await.unwrap().into_iter().map(|a| (a.alias, a.collection)).collect();
    assert_eq!(left, vec![("live".to_string(), "v2".to_string())]);
    assert!(c.count("old", None).await.is_err());
}
