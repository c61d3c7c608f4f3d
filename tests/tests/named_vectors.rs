//! Named dense vectors and multi-vectors through the public API of a
//! 3-node cluster: the same data in a 1-shard and a 5-shard collection (2
//! replicas each). Every query form that names a vector (nearest,
//! recommend, MaxSim as a scan and as a re-score, fusion of two named
//! vectors, the classic search) gives the same answer at 1 and at 5
//! shards and equals a brute force computed here in f64; vectors added and
//! dropped on the live collection; bad input refused; shoalctl.
use std::collections::HashSet;

use shoal_client::{Client, CollectionBuilder, Point, PrefetchBuilder, QueryBuilder, SearchBuilder, Q};
use shoal_proto::v1::*;
use shoal_proto::PointKey;
use shoal_tests::procs::ProcCluster;
use shoal_tests::vector;

const N: u64 = 400;

/// Point `i`: `img` (6-d L2) on three in four, `tag` (4-d dot) on all,
/// `col` (3-d dot multi-vector, 1 to 4 rows) on two in three; `cat` one of
/// three values.
fn img(i: u64) -> Option<Vec<f32>> {
    (!i.is_multiple_of(4)).then(|| vector(i + 1_000, 6))
}
fn tag(i: u64) -> Vec<f32> {
    vector(i + 2_000, 4)
}
fn col(i: u64) -> Option<Vec<Vec<f32>>> {
    (!i.is_multiple_of(3)).then(|| (0..1 + i % 4).map(|r| vector(i * 10 + r + 3_000, 3)).collect())
}
fn cat(i: u64) -> &'static str {
    ["a", "b", "c"][(i % 3) as usize]
}

fn point(i: u64) -> Point {
    let mut p = Point::new(i, vector(i, 8)).payload(serde_json::json!({"cat": cat(i), "i": i})).named("tag", tag(i));
    if let Some(v) = img(i) {
        p = p.named("img", v);
    }
    if let Some(rows) = col(i) {
        p = p.multi("col", rows);
    }
    p
}

async fn create(c: &Client, name: &str, shards: u32) {
    let cfg = CollectionBuilder::new(name, 8, Metric::Cosine)
        .shards(shards)
        .replication_factor(2)
        .index("cat", PayloadIndexType::Keyword)
        .vector("img", 6, Metric::L2, false)
        .vector("tag", 4, Metric::Dot, false)
        .vector("col", 3, Metric::Dot, true)
        .build();
    c.create_collection(cfg).await.unwrap();
    let pts: Vec<Point> = (0..N).map(point).collect();
    for chunk in pts.chunks(100) {
        c.upsert(name, chunk.to_vec()).await.unwrap();
    }
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}
fn l2(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum::<f64>().sqrt()
}
fn maxsim(q: &[Vec<f32>], rows: &[Vec<f32>]) -> f64 {
    q.iter().map(|a| rows.iter().map(|r| dot(a, r)).fold(f64::NEG_INFINITY, f64::max)).sum()
}
fn unit(v: &[f32]) -> Vec<f32> {
    let n = dot(v, v).sqrt();
    v.iter().map(|x| (*x as f64 / n) as f32).collect()
}

/// Best first (`higher`: similarities; else distances), ties by id.
fn top(mut v: Vec<(u64, f64)>, k: usize, higher: bool) -> Vec<(u64, f64)> {
    v.sort_by(|a, b| if higher { b.1.total_cmp(&a.1) } else { a.1.total_cmp(&b.1) }.then(a.0.cmp(&b.0)));
    v.truncate(k);
    v
}

fn num(id: &Option<PointId>) -> u64 {
    match PointKey::try_from(id.as_ref().unwrap()).unwrap() {
        PointKey::Num(n) => n,
        _ => panic!("numeric ids only"),
    }
}

fn assert_close(what: &str, got: &[(u64, f32)], want: &[(u64, f64)]) {
    assert!(!want.is_empty(), "{what}: an empty reference tests nothing");
    assert_eq!(got.len(), want.len(), "{what}: got {got:?}\nwant {want:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = 1e-4 * w.1.abs().max(1.0);
        assert!((g.1 as f64 - w.1).abs() <= tol, "{what}: score {i}: got {got:?}\nwant {want:?}");
        if g.0 != w.0 {
            assert!(want.iter().any(|x| x.0 == g.0 && (x.1 - w.1).abs() <= tol), "{what}: id {i}: got {got:?}\nwant {want:?}");
        }
    }
}

fn filter_cat(v: &str) -> Filter {
    Filter { must: vec![Condition { kind: Some(condition::Kind::Match(MatchCondition { key: "cat".into(), value: Some(match_condition::Value::Keyword(v.into())) })) }], ..Default::default() }
}

#[tokio::test(flavor = "multi_thread")]
async fn named_and_multi_vectors_are_shard_count_independent_and_equal_brute_force() {
    let cluster = ProcCluster::start(3).await.unwrap();
    let c = shoal_tests::tls::client(&cluster.coordinator.addr).await;
    create(&c, "n1", 1).await;
    create(&c, "n5", 5).await;
    let run = |b: QueryBuilder| {
        let c = c.clone();
        async move {
            let mut out = vec![];
            for name in ["n1", "n5"] {
                let r = c.query(b.clone().collection(name)).await.unwrap();
                out.push(r.points.iter().map(|p| (num(&p.id), p.score)).collect::<Vec<_>>());
            }
            assert_eq!(out[0].iter().map(|x| x.0).collect::<Vec<_>>(), out[1].iter().map(|x| x.0).collect::<Vec<_>>(), "1 shard vs 5 shards");
            out.pop().unwrap()
        }
    };
    let all: Vec<u64> = (0..N).collect();

    // Nearest by a named L2 vector, exact and filtered: distances ascending.
    let q = vector(77_777, 6);
    let want = |f: &dyn Fn(u64) -> bool, k| top(all.iter().filter(|i| f(**i)).filter_map(|i| img(*i).map(|v| (*i, l2(&q, &v)))).collect(), k, false);
    let r = run(QueryBuilder::new("", Q::nearest_using("img", shoal_client::query::by_vector(q.clone()))).exact().limit(15)).await;
    assert_close("img nearest", &r, &want(&|_| true, 15));
    let r = run(QueryBuilder::new("", Q::nearest_using("img", shoal_client::query::by_vector(q.clone()))).filter(filter_cat("b")).exact().limit(15)).await;
    assert_close("img nearest filtered", &r, &want(&|i| cat(i) == "b", 15));
    // Through the graph (default ef): a recall, not ids one by one.
    let approx = c.query(QueryBuilder::new("n5", Q::nearest_using("img", shoal_client::query::by_vector(q.clone()))).limit(10)).await.unwrap();
    let truth: HashSet<u64> = want(&|_| true, 10).into_iter().map(|x| x.0).collect();
    assert!(approx.points.iter().filter(|p| truth.contains(&num(&p.id))).count() >= 9, "graph recall over a named vector");
    // The classic search RPC names the vector too.
    for name in ["n1", "n5"] {
        let r = c.search(SearchBuilder::new(name, q.clone(), 10).using("img").exact(true)).await.unwrap();
        assert_close("search using img", &r.iter().map(|p| (num(&p.id), p.score)).collect::<Vec<_>>(), &want(&|_| true, 10));
    }

    // Recommend by the named `tag` (dot), average vector: examples by id.
    let (pos, neg) = ([3u64, 10, 25], [7u64]);
    let avg = |ids: &[u64]| -> Vec<f64> { (0..4).map(|d| ids.iter().map(|i| tag(*i)[d] as f64).sum::<f64>() / ids.len() as f64).collect() };
    let (ap, an) = (avg(&pos), avg(&neg));
    let rv: Vec<f32> = ap.iter().zip(&an).map(|(p, n)| (p + (p - n)) as f32).collect();
    let examples: HashSet<u64> = pos.iter().chain(&neg).copied().collect();
    let want_rec = top(all.iter().filter(|i| !examples.contains(i)).map(|i| (*i, dot(&rv, &tag(*i)))).collect(), 10, true);
    let by = |ids: &[u64]| ids.iter().map(|i| shoal_client::query::by_id(*i)).collect::<Vec<_>>();
    let r = run(QueryBuilder::new("", Q::recommend_using("tag", by(&pos), by(&neg), RecommendStrategy::AverageVector)).exact().limit(10)).await;
    assert_close("recommend using tag", &r, &want_rec);

    // MaxSim as a filtered scan, and as the re-score of a dense prefetch.
    let mq: Vec<Vec<f32>> = (0..3).map(|r| vector(99_000 + r, 3)).collect();
    let r = run(QueryBuilder::new("", Q::maxsim("col", mq.clone())).filter(filter_cat("b")).limit(12)).await;
    let want_ms = top(all.iter().filter(|i| cat(**i) == "b").filter_map(|i| col(*i).map(|rows| (*i, maxsim(&mq, &rows)))).collect(), 12, true);
    assert_close("maxsim scan", &r, &want_ms);
    let dq = vector(55_555, 8);
    let cands: HashSet<u64> = top(all.iter().map(|i| (*i, dot(&unit(&dq), &unit(&vector(*i, 8))))).collect(), 60, true).into_iter().map(|x| x.0).collect();
    let r = run(QueryBuilder::new("", Q::maxsim("col", mq.clone())).prefetch(PrefetchBuilder::new(Q::nearest(dq.clone()), 60).exact()).limit(10)).await;
    let want_rs = top(cands.iter().filter_map(|i| col(*i).map(|rows| (*i, maxsim(&mq, &rows)))).collect(), 10, true);
    assert_close("maxsim re-score", &r, &want_rs);

    // RRF of two named vectors' lists.
    let tq = vector(66_666, 4);
    let img40: Vec<(PointKey, f32)> = want(&|_| true, 40).into_iter().map(|(i, s)| (PointKey::Num(i), s as f32)).collect();
    let tag40: Vec<(PointKey, f32)> = top(all.iter().map(|i| (*i, dot(&tq, &tag(*i)))).collect(), 40, true).into_iter().map(|(i, s)| (PointKey::Num(i), s as f32)).collect();
    let fused: Vec<(u64, f64)> = shoal_coordinator::query::finish(shoal_coordinator::query::rrf(&[img40, tag40], &[], 60), 10, None, true).into_iter().map(|(k, s)| (match k { PointKey::Num(n) => n, _ => unreachable!() }, s as f64)).collect();
    let r = run(QueryBuilder::new("", Q::rrf())
        .prefetch(PrefetchBuilder::new(Q::nearest_using("img", shoal_client::query::by_vector(q.clone())), 40).exact())
        .prefetch(PrefetchBuilder::new(Q::nearest_using("tag", shoal_client::query::by_vector(tq.clone())), 40).exact())
        .limit(10))
    .await;
    assert_close("rrf of named vectors", &r, &fused);

    // Stored and returned with the point (cosine default vector aside).
    let back = c.get("n5", vec![5u64.into()], false, true).await.unwrap();
    assert_eq!(back[0].vectors["tag"].values, tag(5));
    assert_eq!(back[0].vectors["col"].rows.iter().map(|r| r.values.clone()).collect::<Vec<_>>(), col(5).unwrap());

    // Bad input: an undeclared name, a wrong dimension, a multi-vector
    // searched by nearest, MaxSim over a dense vector.
    let err = c.upsert("n5", vec![Point::new(1u64, vector(1, 8)).named("nope", vec![1.0])]).await.unwrap_err().to_string();
    assert!(err.contains("not declared"), "{err}");
    let err = c.upsert("n5", vec![Point::new(1u64, vector(1, 8)).named("img", vec![1.0; 5])]).await.unwrap_err().to_string();
    assert!(err.contains("dimensions"), "{err}");
    let err = c.query(QueryBuilder::new("n5", Q::nearest_using("col", shoal_client::query::by_vector(vec![1.0; 3])))).await.unwrap_err().to_string();
    assert!(err.contains("multi-vector"), "{err}");
    let err = c.query(QueryBuilder::new("n5", Q::maxsim("tag", vec![vec![1.0; 4]]))).await.unwrap_err().to_string();
    assert!(err.contains("not a multi-vector"), "{err}");

    // shoalctl: --using and a --maxsim re-score give the SDK's answers.
    let addr = cluster.coordinator.addr.clone();
    let qs: Vec<String> = q.iter().map(|x| x.to_string()).collect();
    let (ok, out, err) = shoal_tests::shoalctl(&["-o", "json", "--addr", &addr, "query", "-c", "n5", "--using", "img", &format!("--vector={}", qs.join(",")), "--exact", "-k", "15"]);
    assert!(ok, "shoalctl query --using: {out}\n{err}");
    let ids: Vec<u64> = serde_json::from_str::<serde_json::Value>(out.trim()).unwrap().as_array().unwrap().iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, want(&|_| true, 15).into_iter().map(|x| x.0).collect::<Vec<_>>());
    let dqs: Vec<String> = dq.iter().map(|x| x.to_string()).collect();
    let rows = serde_json::to_string(&mq).unwrap();
    let (ok, out, err) = shoal_tests::shoalctl(&["-o", "json", "--addr", &addr, "query", "-c", "n5", &format!("--vector={}", dqs.join(",")), "--exact", "--prefetch-limit", "60", "--maxsim", &format!("col:{rows}"), "-k", "10"]);
    assert!(ok, "shoalctl query --maxsim: {out}\n{err}");
    let ids: Vec<u64> = serde_json::from_str::<serde_json::Value>(out.trim()).unwrap().as_array().unwrap().iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, want_rs.iter().map(|x| x.0).collect::<Vec<_>>());

    // Live: drop `tag` and add `tag2` (through shoalctl on one collection,
    // the SDK on the other). Each shard switches through its log; the
    // stored values go.
    let (ok, out, err) = shoal_tests::shoalctl(&["-o", "json", "--addr", &addr, "collection", "vectors", "n1", "--drop", "tag", "--add", "tag2:2:l2"]);
    assert!(ok, "shoalctl collection vectors: {out}\n{err}");
    let info = c.update_vectors("n5", vec![NamedVectorConfig { name: "tag2".into(), dimension: 2, metric: Metric::L2 as i32, ..Default::default() }], vec!["tag".into()]).await.unwrap();
    assert_eq!(info.config.unwrap().vectors.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), vec!["img", "col", "tag2"]);
    for name in ["n1", "n5"] {
        let err = c.query(QueryBuilder::new(name, Q::nearest_using("tag", shoal_client::query::by_vector(tq.clone())))).await.unwrap_err().to_string();
        assert!(err.contains("declares no vector"), "{err}");
        let err = c.upsert(name, vec![point(1)]).await.unwrap_err().to_string();
        assert!(err.contains("not declared"), "a write naming a dropped vector: {err}");
        // Every shard's leader proposes the change within a second or so.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let pts = c.get(name, all.iter().map(|i| (*i).into()).collect(), false, true).await.unwrap();
            if pts.iter().all(|p| !p.vectors.contains_key("tag")) {
                assert!(pts.iter().filter(|p| p.vectors.contains_key("img")).count() == all.iter().filter(|i| img(**i).is_some()).count(), "other vectors stay");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{name}: the dropped vector's values are still stored");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        // The new vector starts empty and takes writes.
        c.upsert(name, vec![Point::new(9_999u64, vector(9_999, 8)).named("tag2", vec![0.5, 0.5])]).await.unwrap();
        let r = c.query(QueryBuilder::new(name, Q::nearest_using("tag2", shoal_client::query::by_vector(vec![0.0, 0.0]))).limit(5)).await.unwrap();
        assert_eq!(r.points.iter().map(|p| num(&p.id)).collect::<Vec<_>>(), vec![9_999], "{name}: only the new point holds tag2");
    }
}
