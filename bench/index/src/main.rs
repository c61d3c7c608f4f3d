//! `shoal-index-bench`: Shoal's vector search in-process, single-threaded,
//! for every storage kind, on a dataset folder (`../shared/data/README.md`).
//!
//! Two levels are measured, each on one thread with no RPC:
//! - `index`: the node's HNSW index (`HnswIndex::search_with`), the walk
//!   and, for INT8 and BINARY, the re-scoring from the vector file;
//! - `shard`: a whole `Shard::search` over an in-memory store: the same
//!   walk plus what the node does per request around it (query checks
//!   and normalisation, the key table, answers with ids).
//!
//! For each kind it reports build time, memory per vector (graph, and the
//! vector file mapped and resident), and for each `ef` (and oversampling,
//! for quantized kinds) QPS over the whole query set (repeated until
//! `--min-secs`) and recall@10 from the first pass. `bench/engines.sh`
//! runs it beside faiss, Qdrant's engine and usearch (`bench/engines.py`)
//! so that every figure is a ratio from one run.
//!
//! With `--filters`, the shard level also loads the payloads, indexes the
//! fields of the dataset's `filters.json` and measures each filter set at
//! every `ef`: the node's plan (walk or scan, chosen by the number of
//! points the filter allows), the predicate walk alone, the exact scan
//! alone, and the plan again once the partition graphs the searches asked
//! for are built, beside the unfiltered search of the same `ef`.
//!
//! `shoal-index-bench --dataset ../shared/data/debian-384 --storage f32,int8,binary --ef 32,64 --json out.json`
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use serde_json::json;
use shoal_node::index::hnsw::{HnswIndex, HnswParams, SearchOpts};
use shoal_node::index::vecfile::{Memory, VectorFile};
use shoal_node::index::{Allowed, Precision, VectorIndex};
use shoal_node::shard::Shard;
use shoal_node::storage::{memory::MemoryEngine, ShardStore};
use shoal_client::bench::{exact_truth, metric_of};
use shoal_client::cli::StorageArg;
use shoal_client::dataset::Dataset;
use shoal_proto::v1::{CollectionConfig, Filter, HnswConfig, PayloadIndexSpec, PayloadIndexType, PointStruct, SearchPointsRequest, Struct, VectorStorage};

#[derive(Parser, Debug)]
struct Args {
    /// Dataset folder (meta.json, base.fvecs, query.fvecs, groundtruth.ivecs).
    #[arg(long)]
    dataset: PathBuf,
    /// Storage kinds: f32, f16, int8, binary.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "f32,int8,binary")]
    storage: Vec<StorageArg>,
    #[arg(long, value_delimiter = ',', default_value = "32,64,128")]
    ef: Vec<usize>,
    /// Oversampling factors for quantized kinds (default: the server's).
    #[arg(long, value_delimiter = ',')]
    oversampling: Vec<f32>,
    /// f32 and int8 distance kernels to compare: shoal
    /// (node/src/index/kernel.rs, kernel_i8.rs), usearch (its built-in
    /// numkong kernels). F16 and BINARY always use usearch's.
    #[arg(long, value_delimiter = ',', default_value = "shoal")]
    kernels: Vec<String>,
    /// usearch's vector prefetch in the graph walk (node/vendor/usearch):
    /// on, off, or ab (each index-level search measured off, on, off, on
    /// over the same graph).
    #[arg(long, default_value = "on")]
    prefetch: String,
    /// index, shard or both.
    #[arg(long, default_value = "both")]
    level: String,
    #[arg(long, default_value_t = 16)]
    m: usize,
    #[arg(long, default_value_t = 128)]
    ef_construction: usize,
    /// Use only the first N base vectors (exact ground truth computed here).
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long, default_value_t = 3.0)]
    min_secs: f64,
    /// Where the vector files go (default: a temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    #[arg(long)]
    json: Option<PathBuf>,
    /// Shard level: also measure the dataset's filter sets.
    #[arg(long)]
    filters: bool,
}

fn recall(got: &[u64], want: &[u64]) -> f64 {
    let want = &want[..want.len().min(10)];
    got.iter().filter(|g| want.contains(g)).count() as f64 / want.len().max(1) as f64
}

/// Runs `search` over the queries until `min_secs`; QPS and mean recall@10
/// of the first pass.
fn measure(queries: &[Vec<f32>], truth: &[Vec<u64>], min_secs: f64, mut search: impl FnMut(&[f32]) -> Vec<u64>) -> (f64, f64) {
    let first: Vec<Vec<u64>> = queries.iter().map(|q| search(q)).collect();
    let r = first.iter().zip(truth).map(|(g, t)| recall(g, t)).sum::<f64>() / queries.len().max(1) as f64;
    let start = Instant::now();
    let mut n = 0usize;
    while start.elapsed().as_secs_f64() < min_secs {
        for q in queries {
            std::hint::black_box(search(q));
        }
        n += queries.len();
    }
    (n as f64 / start.elapsed().as_secs_f64(), r)
}

/// One `Shard::search`, the hits' numeric ids.
fn shard_search(shard: &Shard, q: &[f32], ef: usize, over: Option<f32>, filter: Option<&Filter>, exact: bool) -> Vec<u64> {
    let req = SearchPointsRequest { vector: q.to_vec(), top_k: 10, ef: Some(ef as u32), oversampling: over, filter: filter.cloned(), exact, ..Default::default() };
    shard
        .search(&req)
        .expect("search")
        .iter()
        .map(|p| match p.id.as_ref().and_then(|i| i.kind.as_ref()) {
            Some(shoal_proto::v1::point_id::Kind::Num(n)) => *n,
            _ => u64::MAX,
        })
        .collect()
}

/// Payload indexes for the fields the filter sets use, typed by the first
/// payload's values.
fn payload_indexes(sets: &[shoal_client::dataset::FilterSet], first: Option<&Struct>) -> Vec<PayloadIndexSpec> {
    let mut keys = vec![];
    for s in sets {
        shoal_client::bench::collect_keys(&s.filter, &mut keys);
    }
    keys.sort();
    keys.dedup();
    use shoal_proto::v1::value::Kind;
    keys.into_iter()
        .filter_map(|k| {
            let ty = match first?.fields.get(&k)?.kind.as_ref()? {
                Kind::StringValue(_) => PayloadIndexType::Keyword,
                Kind::IntegerValue(_) | Kind::DoubleValue(_) => PayloadIndexType::Numeric,
                Kind::BoolValue(_) => PayloadIndexType::Bool,
                _ => return None,
            };
            Some(PayloadIndexSpec { key: k, r#type: ty as i32, ..Default::default() })
        })
        .collect()
}

fn main() -> Result<()> {
    let a = Args::parse();
    let ds = Dataset::load(&a.dataset)?;
    let name = ds.meta.name.clone();
    let metric = metric_of(&ds.meta.metric)?;
    let (mut base, queries) = (ds.base, ds.queries);
    let (payloads, filter_sets) = if a.filters {
        anyhow::ensure!(a.limit.is_none(), "--filters uses the whole base set (the filter sets' ground truth is for it): drop --limit");
        let p = ds.payloads.ok_or_else(|| anyhow::anyhow!("--filters: the dataset has no payload.jsonl.gz"))?;
        (p.iter().map(Struct::try_from).collect::<Result<Vec<_>, _>>()?, ds.filters)
    } else {
        (vec![], vec![])
    };
    let truth: Vec<Vec<u64>> = match a.limit {
        Some(n) if n < base.len() => {
            base.truncate(n);
            eprintln!("exact ground truth for the first {n} vectors");
            exact_truth(&base, &queries, metric)
        }
        _ => ds.groundtruth.into_iter().map(|r| r.into_iter().map(|x| x as u64).collect()).collect(),
    };
    let dim = base[0].len();
    let tmp = tempfile::tempdir()?;
    let dir = a.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let mut out = vec![];
    eprintln!("shoal kernels: f32 {}, int8 {}", shoal_node::index::kernel::isa(), shoal_node::index::kernel_i8::isa());
    match a.prefetch.as_str() {
        "on" | "ab" => usearch::set_prefetch(true),
        "off" => usearch::set_prefetch(false),
        p => anyhow::bail!("--prefetch takes on, off or ab, not {p:?}"),
    }
    let mut runs: Vec<(StorageArg, &str)> = vec![];
    for s in &a.storage {
        for (i, k) in a.kernels.iter().enumerate() {
            if i == 0 || matches!(s, StorageArg::F32 | StorageArg::Int8) {
                runs.push((*s, k.as_str()));
            }
        }
    }
    for (arg, kernels) in runs {
        if !matches!(kernels, "shoal" | "usearch") {
            anyhow::bail!("--kernels takes shoal or usearch, not {kernels:?}");
        }
        shoal_node::index::kernel::set_enabled(kernels == "shoal");
        let storage = VectorStorage::from(arg);
        let precision = Precision::of(storage);
        let kind = if matches!(precision, Precision::F32 | Precision::I8) && a.kernels.len() > 1 { format!("{}/{kernels}", format!("{arg:?}").to_lowercase()) } else { format!("{arg:?}").to_lowercase() };
        let overs: Vec<Option<f32>> = if precision.quantized() && !a.oversampling.is_empty() { a.oversampling.iter().map(|o| Some(*o)).collect() } else { vec![None] };
        if a.level == "index" || a.level == "both" {
            let params = HnswParams { dim, metric, precision, m: a.m, ef_construction: a.ef_construction };
            let path = dir.join(format!("{name}-{}.vectors", kind.replace('/', "-")));
            let _ = std::fs::remove_file(&path);
            let file = if precision.quantized() { Some(Arc::new(VectorFile::open(&path, dim, Memory::Cached)?)) } else { None };
            let index = HnswIndex::with_vectors(params, file.clone())?;
            let started = Instant::now();
            for (c, chunk) in base.chunks(10_000).enumerate() {
                let items: Vec<(u64, &[f32])> = chunk.iter().enumerate().map(|(i, v)| ((c * 10_000 + i) as u64, v.as_slice())).collect();
                index.add_batch(&items)?;
            }
            let build = started.elapsed().as_secs_f64();
            let graph = index.memory_bytes() as f64 / base.len() as f64;
            let (mapped, resident) = file.as_ref().map_or((0.0, 0.0), |f| (f.mapped_bytes() as f64 / base.len() as f64, f.resident_bytes() as f64 / base.len() as f64));
            eprintln!("{name} {kind} index: built in {build:.1}s ({:.0}/s); graph {graph:.0} B/vector, vector file {mapped:.0} B/vector mapped, {resident:.0} resident (raw f32 {} B)", base.len() as f64 / build, dim * 4);
            for &ef in &a.ef {
                for over in &overs {
                    let opts = SearchOpts { oversampling: *over, rescore: None };
                    if a.prefetch == "ab" {
                        for on in [false, true, false, true] {
                            usearch::set_prefetch(on);
                            let (qps, r) = measure(&queries, &truth, a.min_secs, |q| index.search_with(q, 10, ef, &Allowed::All, opts).expect("search").iter().map(|h| h.key).collect());
                            eprintln!("{name} {kind} index ef={ef} oversampling={over:?} prefetch={on}: qps={qps:.0} recall@10={r:.4}");
                            out.push(json!({"dataset": name, "engine": "shoal", "level": "index", "storage": kind, "ef": ef, "oversampling": over, "prefetch": on, "qps": qps, "recall_at_10": r, "n": base.len(), "dim": dim}));
                        }
                        usearch::set_prefetch(true);
                        continue;
                    }
                    let (qps, r) = measure(&queries, &truth, a.min_secs, |q| index.search_with(q, 10, ef, &Allowed::All, opts).expect("search").iter().map(|h| h.key).collect());
                    eprintln!("{name} {kind} index ef={ef} oversampling={over:?}: qps={qps:.0} recall@10={r:.4}");
                    out.push(json!({"dataset": name, "engine": "shoal", "level": "index", "storage": kind, "ef": ef, "oversampling": over, "qps": qps, "recall_at_10": r,
                        "build_s": build, "n": base.len(), "dim": dim, "graph_bytes_per_vector": graph, "file_mapped_bytes_per_vector": mapped, "file_resident_bytes_per_vector": resident}));
                }
            }
        }
        if a.level == "shard" || a.level == "both" {
            let config = shoal_proto::validate::collection_config(&CollectionConfig {
                name: "bench".into(),
                dimension: dim as u32,
                metric: metric as i32,
                storage: storage as i32,
                hnsw: Some(HnswConfig { m: a.m as u32, ef_construction: a.ef_construction as u32, ef_search: 0 }),
                payload_indexes: payload_indexes(&filter_sets, payloads.first()),
                ..Default::default()
            })?;
            let sdir = dir.join(format!("shard-{}", kind.replace('/', "-")));
            let _ = std::fs::remove_dir_all(&sdir);
            let (mut shard, _) = Shard::open(config, 0, ShardStore::new(Arc::new(MemoryEngine::new()), "bench", 0), &sdir)?;
            let started = Instant::now();
            for (c, chunk) in base.chunks(1000).enumerate() {
                let points: Vec<PointStruct> = chunk.iter().enumerate().map(|(i, v)| PointStruct { id: Some(((c * 1000 + i) as u64).into()), vector: v.clone(), payload: payloads.get(c * 1000 + i).cloned(), ..Default::default() }).collect();
                shard.write(&points, &[], None)?;
            }
            let build = started.elapsed().as_secs_f64();
            eprintln!("{name} {kind} shard: {} points written in {build:.1}s", base.len());
            for &ef in &a.ef {
                for over in &overs {
                    let (qps, r) = measure(&queries, &truth, a.min_secs, |q| shard_search(&shard, q, ef, *over, None, false));
                    eprintln!("{name} {kind} shard ef={ef} oversampling={over:?}: qps={qps:.0} recall@10={r:.4}");
                    out.push(json!({"dataset": name, "engine": "shoal", "level": "shard", "storage": kind, "ef": ef, "oversampling": over, "qps": qps, "recall_at_10": r, "n": base.len(), "dim": dim}));
                    for set in &filter_sets {
                        let f = shoal_client::filter::from_json(&set.filter)?;
                        let gt: Vec<Vec<u64>> = set.groundtruth.clone();
                        let threshold = shard.exact_scan_threshold;
                        shard.clear_partitions();
                        let mut row = json!({"dataset": name, "engine": "shoal", "level": "shard", "storage": kind, "ef": ef, "oversampling": over, "filter": set.name, "selectivity": set.selectivity, "unfiltered_qps": qps});
                        for (plan, t, exact) in [("plan", threshold, false), ("walk", Some(0), false), ("scan", Some(u64::MAX), false), ("exact", threshold, true)] {
                            shard.exact_scan_threshold = t;
                            let (fq, fr) = measure(&queries, &gt, a.min_secs, |q| shard_search(&shard, q, ef, *over, Some(&f), exact));
                            eprintln!("{name} {kind} shard ef={ef} filter {:<28} sel={:.4} {plan:<5}: qps={fq:.0} ({:.2}x unfiltered) recall@10={fr:.4}", set.name, set.selectivity, fq / qps);
                            row[plan] = json!({"qps": fq, "recall_at_10": fr, "ratio": fq / qps});
                        }
                        shard.exact_scan_threshold = threshold;
                        // The plan again once the indexer (here: this
                        // loop) built the partition graphs searches asked for.
                        let started = Instant::now();
                        while shard.maintain_partitions(&std::sync::atomic::AtomicBool::new(false))? {}
                        let built = started.elapsed().as_secs_f64();
                        let (fq, fr) = measure(&queries, &gt, a.min_secs, |q| shard_search(&shard, q, ef, *over, Some(&f), false));
                        let (parts, points) = shard.partition_stats();
                        eprintln!("{name} {kind} shard ef={ef} filter {:<28} sel={:.4} partitioned: qps={fq:.0} ({:.2}x unfiltered) recall@10={fr:.4} ({parts} partitions, {points} points, built in {built:.1}s)", set.name, set.selectivity, fq / qps);
                        row["partitioned"] = json!({"qps": fq, "recall_at_10": fr, "ratio": fq / qps, "partitions": parts, "points": points, "build_s": built});
                        shard.clear_partitions();
                        out.push(row);
                    }
                }
            }
        }
    }
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_vec_pretty(&out)?)?;
    }
    Ok(())
}
