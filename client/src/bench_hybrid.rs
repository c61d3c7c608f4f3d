//! `shoalctl bench-hybrid`: dense, BM25 and fused retrieval on a dataset
//! with a `text` payload (debian-384): quality on a judged query set built
//! from the data, and cost (QPS, latency) side by side in one run.
//!
//! Judged set ("sibling packages", docs/benchmarks.md): a package's
//! siblings are the other packages of its source family, found by name
//! (`libfoo1`, `libfoo-dev`, `foo-doc` and `foo` share the stem `foo`).
//! A query is a package with at least one sibling: its summary is the text
//! query, its embedding the dense query, the package itself is filtered
//! out, and its siblings are the relevant results.
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde_json::json;
use shoal_proto::v1::*;

use crate::dataset::Dataset;
use crate::{filter, Client, CollectionBuilder, Point, PrefetchBuilder, QueryBuilder, Q};

#[derive(clap::Args, Debug, Clone)]
pub struct HybridArgs {
    /// Dataset folder with payload.jsonl.gz holding `package`, `summary`
    /// and `text`.
    #[arg(long)]
    pub dataset: PathBuf,
    /// Judged queries to use (at most).
    #[arg(long, default_value_t = 500)]
    pub queries: usize,
    /// Queries in flight.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Timing rounds (alternating the variants); medians are reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Candidates of each prefetch of a fused query.
    #[arg(long, default_value_t = 20)]
    pub prefetch: u32,
    #[arg(long, default_value_t = 1)]
    pub shards: u32,
    /// Keep an existing collection with the right number of points.
    #[arg(long)]
    pub reuse: bool,
    #[arg(long)]
    pub out: Option<PathBuf>,
}

const SUFFIXES: &[&str] = &["-dev", "-doc", "-docs", "-data", "-common", "-bin", "-utils", "-tools", "-dbg", "-examples", "-plugins", "-plugin", "-l10n", "-locales", "-runtime", "-tests", "-perl", "-java", "-cil", "-gtk", "-qt", "-daemon", "-client", "-server", "-core"];

/// A package's source-family stem.
pub fn stem(name: &str) -> String {
    let mut s = name.to_string();
    loop {
        let before = s.clone();
        for suf in SUFFIXES {
            if let Some(x) = s.strip_suffix(suf) {
                s = x.to_string();
            }
        }
        // Version-like tails: "libfoo1", "libfoo2.0", "foo-1.2".
        s = s.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.' || c == '-').to_string();
        if s == before {
            break;
        }
    }
    let s = s.strip_prefix("lib").unwrap_or(&s).to_string();
    for p in ["python3-", "python-", "ruby-", "golang-", "node-", "r-cran-", "php-", "librust-"] {
        if let Some(x) = s.strip_prefix(p) {
            return x.to_string();
        }
    }
    s
}

fn ndcg10(got: &[u64], rel: &[u64]) -> f64 {
    let dcg: f64 = got.iter().take(10).enumerate().filter(|(_, g)| rel.contains(g)).map(|(i, _)| 1.0 / (i as f64 + 2.0).log2()).sum();
    let ideal: f64 = (0..rel.len().min(10)).map(|i| 1.0 / (i as f64 + 2.0).log2()).sum();
    if ideal == 0.0 {
        0.0
    } else {
        dcg / ideal
    }
}

fn ids(r: &QueryPointsResponse) -> Vec<u64> {
    r.points.iter().filter_map(|p| match p.id.as_ref()?.kind {
        Some(point_id::Kind::Num(n)) => Some(n),
        _ => None,
    }).collect()
}

async fn timed(client: &Client, qs: Arc<Vec<QueryBuilder>>, conc: usize) -> Result<(f64, Histogram<u64>, Vec<Vec<u64>>)> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t = Instant::now();
    let mut tasks = vec![];
    for _ in 0..conc {
        let (client, qs, next) = (client.clone(), qs.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Histogram::<u64>::new(3).unwrap();
            let mut out = vec![];
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= qs.len() {
                    break;
                }
                let s = Instant::now();
                let r = client.query(qs[i].clone()).await?;
                lat.record(s.elapsed().as_micros() as u64).ok();
                out.push((i, ids(&r)));
            }
            Ok::<_, crate::ClientError>((lat, out))
        }));
    }
    let mut lat = Histogram::<u64>::new(3).unwrap();
    let mut res = vec![vec![]; qs.len()];
    for t in tasks {
        let (l, out) = t.await??;
        lat.add(&l).ok();
        for (i, r) in out {
            res[i] = r;
        }
    }
    Ok((qs.len() as f64 / t.elapsed().as_secs_f64(), lat, res))
}

pub async fn run(addr: &str, a: HybridArgs) -> Result<()> {
    let ds = Dataset::load(&a.dataset)?;
    let payloads = ds.payloads.as_ref().context("the dataset has no payload.jsonl.gz")?;
    let name = format!("hybrid-{}", ds.meta.name);
    let client = crate::cli::public_client(addr).await?;
    let metric: Metric = match ds.meta.metric.as_str() {
        "dot" => Metric::Dot,
        "l2" => Metric::L2,
        _ => Metric::Cosine,
    };
    let have = client.get_collection(&name).await.ok().map(|c| c.points_count);
    if !(a.reuse && have == Some(ds.base.len() as u64)) {
        let _ = client.delete_collection(&name).await;
        let params = TextIndexParams { stemmer: "english".into(), stop_words: "english".into(), keep_accents: false };
        client.create_collection(CollectionBuilder::new(&name, ds.meta.dim, metric).shards(a.shards).text_index("text", params).index("section", PayloadIndexType::Keyword).index("installed_size_kb", PayloadIndexType::Numeric).build()).await?;
        let t = Instant::now();
        for (chunk, pl) in ds.base.chunks(1000).zip(payloads.chunks(1000)).enumerate().map(|(c, (v, p))| ((c * 1000, v), p)) {
            let (start, vs) = chunk;
            let pts: Vec<Point> = vs.iter().zip(pl).enumerate().map(|(i, (v, p))| Point::new((start + i) as u64, v.clone()).payload(p.clone())).collect();
            client.upsert(&name, pts).await?;
        }
        eprintln!("ingested {} points in {:.1} s", ds.base.len(), t.elapsed().as_secs_f64());
    }

    // The judged set.
    let names: Vec<String> = payloads.iter().map(|p| p["package"].as_str().unwrap_or_default().to_string()).collect();
    let mut families: HashMap<String, Vec<u64>> = HashMap::new();
    for (i, n) in names.iter().enumerate() {
        let s = stem(n);
        if s.len() >= 3 {
            families.entry(s).or_default().push(i as u64);
        }
    }
    let eligible: Vec<u64> = (0..names.len() as u64).filter(|i| families.get(&stem(&names[*i as usize])).is_some_and(|f| f.len() >= 2 && f.len() <= 50)).collect();
    let step = (eligible.len() / a.queries.max(1)).max(1);
    let picked: Vec<u64> = eligible.iter().step_by(step).take(a.queries).copied().collect();
    let rel: Vec<Vec<u64>> = picked.iter().map(|i| families[&stem(&names[*i as usize])].iter().copied().filter(|j| j != i).collect()).collect();
    let not_self = |i: u64| Filter { must_not: vec![Condition { kind: Some(condition::Kind::HasId(HasIdCondition { ids: vec![PointId::from(i)] })) }], ..Default::default() };
    let summary = |i: u64| payloads[i as usize]["summary"].as_str().unwrap_or("package").to_string();
    let dense = |i: u64| QueryBuilder::new(&name, Q::nearest(ds.base[i as usize].clone())).limit(10);
    let text = |i: u64| QueryBuilder::new(&name, Q::bm25("text", summary(i))).limit(10);
    let fused = |i: u64, f: Query| QueryBuilder::new(&name, f).prefetch(PrefetchBuilder::new(Q::nearest(ds.base[i as usize].clone()), a.prefetch)).prefetch(PrefetchBuilder::new(Q::bm25("text", summary(i)), a.prefetch)).limit(10);

    // Quality (package itself filtered out).
    let mut quality = serde_json::Map::new();
    type Make<'a> = Box<dyn Fn(u64) -> QueryBuilder + 'a>;
    let variants: Vec<(&str, Make)> = vec![
        ("dense", Box::new(|i| dense(i).filter(not_self(i)))),
        ("bm25", Box::new(|i| text(i).filter(not_self(i)))),
        ("rrf", Box::new(|i| fused(i, Q::rrf()).filter(not_self(i)))),
        ("dbsf", Box::new(|i| fused(i, Q::dbsf(vec![])).filter(not_self(i)))),
    ];
    for (label, make) in &variants {
        let qs: Arc<Vec<QueryBuilder>> = Arc::new(picked.iter().map(|i| make(*i)).collect());
        let (_, _, res) = timed(&client, qs, a.concurrency).await?;
        let n = res.len() as f64;
        let recall = res.iter().zip(&rel).map(|(g, r)| g.iter().take(10).filter(|x| r.contains(x)).count() as f64 / r.len().min(10) as f64).sum::<f64>() / n;
        let ndcg = res.iter().zip(&rel).map(|(g, r)| ndcg10(g, r)).sum::<f64>() / n;
        let mrr = res.iter().zip(&rel).map(|(g, r)| g.iter().position(|x| r.contains(x)).map_or(0.0, |p| 1.0 / (p as f64 + 1.0))).sum::<f64>() / n;
        println!("quality {label:6}: recall@10 {recall:.3}  nDCG@10 {ndcg:.3}  MRR {mrr:.3}  ({} queries)", res.len());
        quality.insert(label.to_string(), json!({"recall_at_10": recall, "ndcg_at_10": ndcg, "mrr": mrr}));
    }

    // Cost, side by side: dense at the default ef, BM25, fused, and fused
    // with the dataset's first filter set.
    let f0 = ds.filters.first().map(|s| filter::from_json(&s.filter)).transpose()?.unwrap_or_default();
    let cost: Vec<(&str, Make)> = vec![
        ("dense", Box::new(dense)),
        ("dense+filter", Box::new(|i| dense(i).filter(f0.clone()))),
        ("bm25", Box::new(text)),
        ("rrf", Box::new(|i| fused(i, Q::rrf()))),
        ("rrf+filter", Box::new(|i| fused(i, Q::rrf()).filter(f0.clone()))),
    ];
    let sets: Vec<Arc<Vec<QueryBuilder>>> = cost.iter().map(|(_, m)| Arc::new(picked.iter().map(|i| m(*i)).collect())).collect();
    let mut qps: Vec<Vec<f64>> = vec![vec![]; cost.len()];
    let mut lats: Vec<Histogram<u64>> = (0..cost.len()).map(|_| Histogram::new(3).unwrap()).collect();
    for _ in 0..a.rounds {
        for (k, set) in sets.iter().enumerate() {
            let (q, l, _) = timed(&client, set.clone(), a.concurrency).await?;
            qps[k].push(q);
            lats[k].add(&l).ok();
        }
    }
    let mut out_cost = serde_json::Map::new();
    let base_qps = crate::bench::median(&mut qps[0].clone());
    for (k, (label, _)) in cost.iter().enumerate() {
        let q = crate::bench::median(&mut qps[k]);
        let (p50, p99) = (lats[k].value_at_quantile(0.5) as f64 / 1000.0, lats[k].value_at_quantile(0.99) as f64 / 1000.0);
        println!("cost {label:12}: {q:7.0} QPS  p50 {p50:.2} ms  p99 {p99:.2} ms  cost vs dense {:.2}x", base_qps / q);
        out_cost.insert(label.to_string(), json!({"qps": q, "p50_ms": p50, "p99_ms": p99, "cost_vs_dense": base_qps / q}));
    }
    let out = json!({"dataset": ds.meta.name, "queries": picked.len(), "concurrency": a.concurrency, "prefetch": a.prefetch, "filter": ds.filters.first().map(|s| s.name.clone()), "quality": quality, "cost": out_cost});
    if let Some(p) = &a.out {
        std::fs::write(p, serde_json::to_string_pretty(&out)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn stems_group_source_families() {
        for (a, b) in [("libfoo1", "foo"), ("libfoo-dev", "foo"), ("foo-doc", "foo"), ("python3-foo", "foo"), ("0ad-data", "0ad"), ("libgtk-3-0", "gtk")] {
            assert_eq!(super::stem(a), b, "{a}");
        }
    }
}
