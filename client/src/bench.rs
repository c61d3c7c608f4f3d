//! `shoalctl bench`: measures a running Shoal against a dataset folder and
//! against usearch in-process on the same machine, in the same run.
//!
//! Steps: create `bench-<dataset>` (deleting an old one), ingest the base
//! vectors (with payloads when present) through gRPC; build the same HNSW
//! (same M, ef_construction, metric, f32, same thread count as the server's
//! batch insert) in-process; for each `ef`, run every query through gRPC at
//! the given client concurrency and the same queries on the in-process
//! index with as many threads; then each filtered query set of
//! `filters.json`, approximate and exact. Writes JSON and a PNG plot.
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde_json::json;
use shoal_proto::v1::{Metric, PayloadIndexType, PointId, ScoredPoint};

use crate::dataset::Dataset;
use crate::{filter, Client, CollectionBuilder, Point, SearchBuilder};

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Dataset folder (meta.json, base.fvecs, query.fvecs, groundtruth.ivecs, ...).
    #[arg(long)]
    pub dataset: PathBuf,
    /// ef values to measure.
    #[arg(long, value_delimiter = ',', default_value = "16,32,64,128,256")]
    pub ef: Vec<u32>,
    /// In-process search threads, and gRPC searches in flight unless
    /// `--inflight` is given.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// gRPC searches in flight (one connection per 32). A
    /// network client needs more requests in flight than a thread pool to
    /// keep the same server cores busy, because each request also waits for
    /// its round trip.
    #[arg(long)]
    pub inflight: Option<usize>,
    /// Threads of the bench's search client. 1 (the default) drives every
    /// search from one current-thread runtime, as a lean client process
    /// would: on this 2-core machine the client shares the server's cores,
    /// and a multi-threaded client spends much of its CPU handing requests
    /// between its threads (see docs/benchmarks.md).
    #[arg(long, default_value_t = 1)]
    pub client_threads: usize,
    /// Queries per request: 1 sends each as a `Search`; N > 1 sends them N
    /// at a time as `SearchBatch` (the per-request cost is paid once per N
    /// queries). QPS counts queries either way; latency is per request.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub search_batch: u32,
    /// Measurements per ef, alternating gRPC and in-process; the median of
    /// each is reported (p50/p99 and recall come from the first round).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Upsert requests in flight while ingesting.
    #[arg(long, default_value_t = 4)]
    pub ingest_concurrency: usize,
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    #[arg(long, default_value_t = 16)]
    pub m: u32,
    #[arg(long, default_value_t = 128)]
    pub ef_construction: u32,
    #[arg(long, default_value_t = 1)]
    pub shards: u32,
    /// Replicas per shard (needs as many nodes).
    #[arg(long, default_value_t = 1)]
    pub replication_factor: u32,
    /// Read consistencies to measure searches at (strong, leader, any;
    /// comma-separated: each ef runs once per consistency, side by side).
    #[arg(long, value_delimiter = ',', default_value = "strong", value_parser = ["strong", "leader", "any"])]
    pub consistency: Vec<String>,
    /// Use only the first N base vectors (recall is then measured against
    /// an exact ground truth computed here).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Write results as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a recall-vs-QPS plot as PNG.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Skip the in-process usearch comparison.
    #[arg(long)]
    pub no_inprocess: bool,
    /// Keep `bench-<dataset>` if it already holds the points and measure
    /// searches only (before and after a cluster operation); ingest
    /// figures are then null.
    #[arg(long)]
    pub reuse: bool,
    /// `ef` of the filtered query sets (default: the collection's); each
    /// set's QPS is also reported as a ratio to the unfiltered QPS at this
    /// `ef` when `--ef` measured it.
    #[arg(long)]
    pub filter_ef: Option<u32>,
    /// Build the in-process baseline for cosine data the way Shoal stores it
    /// (unit vectors, inner product) instead of with usearch's cos metric:
    /// the ratio then measures serving overhead alone.
    #[arg(long)]
    pub inprocess_unit_ip: bool,
    /// Repeat the query set until each QPS measurement has run this long
    /// (recall is scored on the first pass).
    #[arg(long, default_value_t = 3.0)]
    pub min_secs: f64,
    /// Process id of the server under test, when it runs on this machine
    /// (Linux): the bench then reports the server's CPU time per query
    /// beside the client's and the in-process index's, which separates
    /// the server's cost from the load generator's on shared cores.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Send the searches over `SearchStream` (one query per message,
    /// --concurrency in flight) instead of one `Search` call each.
    #[arg(long, conflicts_with = "search_batch")]
    pub stream: bool,
    /// How the collection's graph stores vectors (f32, f16, int8, binary);
    /// other than f32, the collection is `bench-<dataset>-<storage>`.
    #[arg(long, value_enum, default_value_t = crate::cli::StorageArg::F32)]
    pub storage: crate::cli::StorageArg,
    /// int8/binary: where the full vectors live.
    #[arg(long, value_enum)]
    pub memory: Option<crate::cli::MemoryArg>,
    /// int8/binary: candidates per result before re-scoring (default: the
    /// server's per kind).
    #[arg(long)]
    pub oversampling: Option<f32>,
    /// Exact searches (`exact=true`, the scan engine) instead of the graph
    /// walk; ef is ignored by the server then.
    #[arg(long)]
    pub exact: bool,
}

/// CPU time (user + system, seconds) a process has used so far, from
/// `/proc/PID/stat`; `None` off Linux or when the process is gone.
fn cpu_secs(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may hold spaces) start at 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| ticks / hz as f64)
}

/// Measures CPU seconds used between `start` and `stop` by the server
/// (when its pid is known) and by this process.
struct CpuMeter {
    server: Option<u32>,
    at: (Option<f64>, Option<f64>),
}

impl CpuMeter {
    fn start(server: Option<u32>) -> Self {
        CpuMeter { server, at: (server.and_then(|p| cpu_secs(Some(p))), cpu_secs(None)) }
    }
    /// (server, this process) CPU seconds since `start`.
    fn stop(&self) -> (Option<f64>, Option<f64>) {
        let d = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
        (d(self.at.0, self.server.and_then(|p| cpu_secs(Some(p)))), d(self.at.1, cpu_secs(None)))
    }
}

/// A dataset's `meta.json` metric.
pub fn metric_of(s: &str) -> Result<Metric> {
    Ok(match s {
        "cosine" | "angular" => Metric::Cosine,
        "dot" | "ip" => Metric::Dot,
        "l2" | "euclidean" => Metric::L2,
        other => anyhow::bail!("dataset metric {other:?} is not cosine, dot or l2"),
    })
}

fn num_id(id: &Option<PointId>) -> Option<u64> {
    match id.as_ref()?.kind {
        Some(shoal_proto::v1::point_id::Kind::Num(n)) => Some(n),
        _ => None,
    }
}

/// The median (upper middle for even counts); sorts `xs`.
pub(crate) fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs.get(xs.len() / 2).copied().unwrap_or(0.0)
}

fn recall_at_10(got: &[u64], truth: &[u64]) -> f64 {
    let t: Vec<u64> = truth.iter().take(10).copied().collect();
    if t.is_empty() {
        return 1.0;
    }
    got.iter().take(10).filter(|g| t.contains(g)).count() as f64 / t.len() as f64
}

struct Run {
    qps: f64,
    /// Queries answered, over every pass.
    queries: usize,
    p50_ms: f64,
    p99_ms: f64,
    recall: f64,
    exact_match: f64,
    lat: Histogram<u64>,
}

/// Where and how the search load runs: the server address, HTTP/2
/// connections, and the client runtime's threads.
#[derive(Clone)]
struct Load {
    addr: String,
    connections: usize,
    threads: usize,
    /// Queries per request (`--search-batch`); 0 for `SearchStream`.
    batch: usize,
}

/// Runs [`grpc_run_on`] on a runtime of its own (a thread of its own), so
/// the load generator's cost does not depend on the CLI's runtime.
async fn grpc_run(load: &Load, searches: Arc<Vec<SearchBuilder>>, truth: Arc<Vec<Vec<u64>>>, conc: usize, min_secs: f64) -> Result<Run> {
    let load = load.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name("bench-client".into()).spawn(move || {
        let mut builder = if load.threads <= 1 {
            tokio::runtime::Builder::new_current_thread()
        } else {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(load.threads);
            b
        };
        let res = builder.enable_all().build().map_err(anyhow::Error::from).and_then(|rt| {
            rt.block_on(async {
                let mut pool = vec![];
                for _ in 0..load.connections.max(1) {
                    pool.push(crate::cli::public_client(&load.addr).await?);
                }
                grpc_run_on(&pool, load.batch, searches, truth, conc, min_secs).await
            })
        });
        let _ = tx.send(res);
    })?;
    rx.await.context("bench client thread died")?
}

/// Runs `searches` through gRPC with `conc` concurrent clients, in passes
/// over the set until `min_secs` have elapsed; recall from the first pass.
async fn grpc_run_on(client: &[Client], batch: usize, searches: Arc<Vec<SearchBuilder>>, truth: Arc<Vec<Vec<u64>>>, conc: usize, min_secs: f64) -> Result<Run> {
    let t = Instant::now();
    let pass = || async {
        if batch == 0 {
            stream_pass(client, searches.clone(), truth.clone(), conc).await
        } else {
            grpc_pass(client, batch, searches.clone(), truth.clone(), conc).await
        }
    };
    let mut first = pass().await?;
    let mut done = searches.len();
    while t.elapsed().as_secs_f64() < min_secs {
        let r = pass().await?;
        first.lat.add(&r.lat).ok();
        done += searches.len();
    }
    first.qps = done as f64 / t.elapsed().as_secs_f64();
    first.queries = done;
    first.p50_ms = first.lat.value_at_quantile(0.5) as f64 / 1000.0;
    first.p99_ms = first.lat.value_at_quantile(0.99) as f64 / 1000.0;
    Ok(first)
}

/// One pass over `searches` with `conc` concurrent clients, `batch`
/// queries per request.
async fn grpc_pass(client: &[Client], batch: usize, searches: Arc<Vec<SearchBuilder>>, truth: Arc<Vec<Vec<u64>>>, conc: usize) -> Result<Run> {
    let next = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let mut tasks = Vec::new();
    let batch = batch.max(1);
    for t in 0..conc {
        // Tasks spread over the connections as a pooled client would.
        let (client, searches, next) = (client[t % client.len()].clone(), searches.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Histogram::<u64>::new(3).unwrap();
            let mut got: Vec<(usize, Vec<u64>)> = Vec::new();
            loop {
                let i = next.fetch_add(batch, Ordering::Relaxed);
                if i >= searches.len() {
                    break;
                }
                let s = Instant::now();
                if batch == 1 {
                    let r: Vec<ScoredPoint> = client.search(searches[i].clone()).await?;
                    got.push((i, r.iter().filter_map(|p| num_id(&p.id)).collect()));
                } else {
                    let end = (i + batch).min(searches.len());
                    let collection = searches[i].collection().to_string();
                    let r = client.search_batch(&collection, searches[i..end].to_vec()).await?;
                    for (j, r) in r.iter().enumerate() {
                        got.push((i + j, r.iter().filter_map(|p| num_id(&p.id)).collect()));
                    }
                }
                lat.record(s.elapsed().as_micros() as u64).ok();
            }
            Ok::<_, crate::ClientError>((lat, got))
        }));
    }
    gather(tasks, searches.len(), &truth, t).await
}

/// A pass's [`Run`] from its results (in query order), latencies and start.
fn finish(results: Vec<Vec<u64>>, truth: &[Vec<u64>], lat: Histogram<u64>, t: Instant) -> Run {
    let secs = t.elapsed().as_secs_f64();
    let recall = results.iter().zip(truth.iter()).map(|(g, t)| recall_at_10(g, t)).sum::<f64>() / results.len().max(1) as f64;
    let exact_match = results.iter().zip(truth.iter()).filter(|(g, t)| g.iter().take(10).eq(t.iter().take(10))).count() as f64 / results.len().max(1) as f64;
    Run { qps: results.len() as f64 / secs, queries: results.len(), p50_ms: lat.value_at_quantile(0.5) as f64 / 1000.0, p99_ms: lat.value_at_quantile(0.99) as f64 / 1000.0, recall, exact_match, lat }
}

/// One pass over `searches` through one `SearchStream` per connection,
/// `conc` searches in flight in all.
async fn stream_pass(clients: &[Client], searches: Arc<Vec<SearchBuilder>>, truth: Arc<Vec<Vec<u64>>>, conc: usize) -> Result<Run> {
    let t = Instant::now();
    let n = searches.len();
    let next = Arc::new(AtomicUsize::new(0));
    let per = conc.div_ceil(clients.len()).max(1);
    let mut tasks = vec![];
    for client in clients {
        let (client, searches, next) = (client.clone(), searches.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let (tx, mut rx) = client.search_stream().await?;
            let (mut lat, mut got) = (Histogram::<u64>::new(3).expect("valid histogram bounds"), vec![]);
            let mut sent: std::collections::HashMap<u64, Instant> = std::collections::HashMap::with_capacity(per);
            loop {
                while sent.len() < per {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    tx.send(i as u64, searches[i].clone()).await?;
                    sent.insert(i as u64, Instant::now());
                }
                if sent.is_empty() {
                    break;
                }
                let (tag, r) = rx.next().await?.ok_or(crate::ClientError::StreamClosed)?;
                let at = sent.remove(&tag).ok_or_else(|| crate::ClientError::Status(tonic::Status::internal(format!("answer for unknown tag {tag}"))))?;
                lat.record(at.elapsed().as_micros() as u64).ok();
                got.push((tag as usize, r?.iter().filter_map(|p| num_id(&p.id)).collect::<Vec<u64>>()));
            }
            Ok::<_, crate::ClientError>((lat, got))
        }));
    }
    gather(tasks, n, &truth, t).await
}

/// The load tasks' latencies and (query index, result ids), merged into
/// the pass's [`Run`].
type LoadTask = tokio::task::JoinHandle<std::result::Result<(Histogram<u64>, Vec<(usize, Vec<u64>)>), crate::ClientError>>;

async fn gather(tasks: Vec<LoadTask>, n: usize, truth: &[Vec<u64>], t: Instant) -> Result<Run> {
    let mut lat = Histogram::<u64>::new(3)?;
    let mut results = vec![vec![]; n];
    for task in tasks {
        let (l, got) = task.await??;
        lat.add(&l).ok();
        for (i, g) in got {
            results[i] = g;
        }
    }
    Ok(finish(results, truth, lat, t))
}

fn usearch_options(dim: usize, metric: Metric, m: u32, efc: u32, unit_ip: bool) -> usearch::IndexOptions {
    usearch::IndexOptions {
        dimensions: dim,
        metric: match metric {
            Metric::Dot => usearch::MetricKind::IP,
            Metric::L2 => usearch::MetricKind::L2sq,
            _ if unit_ip => usearch::MetricKind::IP,
            _ => usearch::MetricKind::Cos,
        },
        quantization: usearch::ScalarKind::F32,
        connectivity: m as usize,
        expansion_add: efc as usize,
        expansion_search: 64,
        multi: false,
    }
}

/// Builds the in-process index with `threads` threads; returns it and inserts/s.
fn inprocess_build(opts: &usearch::IndexOptions, base: &[Vec<f32>], threads: usize, searchers: usize) -> Result<(usearch::Index, f64)> {
    let index = usearch::Index::new(opts)?;
    // One usearch thread context per concurrent caller, or calls fail fast.
    index.reserve_capacity_and_threads(base.len(), threads.max(searchers).max(1) * 2)?;
    let t = Instant::now();
    let chunk = base.len().div_ceil(threads.max(1));
    std::thread::scope(|s| {
        for (c, part) in base.chunks(chunk.max(1)).enumerate() {
            let index = &index;
            s.spawn(move || {
                for (i, v) in part.iter().enumerate() {
                    index.add((c * chunk + i) as u64, v).expect("in-process add");
                }
            });
        }
    });
    Ok((index, base.len() as f64 / t.elapsed().as_secs_f64()))
}

fn unit(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter().map(|x| x / n).collect()
}

/// In-process QPS and the number of queries run.
fn inprocess_qps(index: &usearch::Index, queries: &[Vec<f32>], ef: u32, threads: usize, min_secs: f64) -> (f64, usize) {
    index.change_expansion_search(ef as usize);
    let (next, done, stop_at) = (AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(usize::MAX));
    let t = Instant::now();
    // Like the gRPC run: whole passes over the set until min_secs.
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i > 0 && i % queries.len() == 0 && t.elapsed().as_secs_f64() >= min_secs {
                    stop_at.fetch_min(i, Ordering::SeqCst);
                }
                if i >= stop_at.load(Ordering::SeqCst) {
                    break;
                }
                let r = index.search(&queries[i % queries.len()], 10).expect("in-process search");
                assert!(!r.keys.is_empty(), "in-process search returned nothing");
                done.fetch_add(1, Ordering::Relaxed);
            });
        }
    });
    let done = done.load(Ordering::Relaxed);
    (done as f64 / t.elapsed().as_secs_f64(), done)
}

/// Exact top-100 by brute force (used with --limit).
pub fn exact_truth(base: &[Vec<f32>], queries: &[Vec<f32>], metric: Metric) -> Vec<Vec<u64>> {
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    queries
        .iter()
        .map(|q| {
            let qn = norm(q);
            let mut d: Vec<(f32, u64)> = base
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    let dot: f32 = q.iter().zip(b).map(|(x, y)| x * y).sum();
                    let dist = match metric {
                        Metric::Cosine => 1.0 - dot / (qn * norm(b)),
                        Metric::Dot => -dot,
                        _ => q.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum(),
                    };
                    (dist, i as u64)
                })
                .collect();
            d.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            d.truncate(100);
            d.into_iter().map(|x| x.1).collect()
        })
        .collect()
}

pub async fn run(addr: &str, a: BenchArgs) -> Result<()> {
    let ds = Dataset::load(&a.dataset).with_context(|| format!("loading dataset {}", a.dataset.display()))?;
    let metric = metric_of(&ds.meta.metric)?;
    let n = a.limit.unwrap_or(ds.base.len()).min(ds.base.len());
    let base = &ds.base[..n];
    let truth: Vec<Vec<u64>> = if n < ds.base.len() {
        eprintln!("computing exact ground truth for the first {n} vectors");
        exact_truth(base, &ds.queries, metric)
    } else {
        ds.groundtruth.iter().map(|r| r.iter().map(|x| *x as u64).collect()).collect()
    };
    let client = crate::cli::public_client(addr).await?;
    let oversampling = a.oversampling;
    let over = move |s: SearchBuilder| match oversampling {
        Some(o) => s.oversampling(o),
        None => s,
    };
    // Search clients: one HTTP/2 connection per 32 requests in flight (more
    // connections measured slower here: each costs client CPU on the same
    // cores as the server).
    let pool = Load { addr: addr.to_string(), connections: a.inflight.unwrap_or(a.concurrency).div_ceil(32), threads: a.client_threads, batch: if a.stream { 0 } else { a.search_batch as usize } };
    let suffix = match a.storage {
        crate::cli::StorageArg::F32 => String::new(),
        s => format!("-{s:?}").to_lowercase(),
    };
    let name: String = format!("bench-{}{suffix}", ds.meta.name).chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' }).collect();
    let reuse = a.reuse && client.count(&name, None).await.ok() == Some(n as u64);
    if reuse {
        eprintln!("reusing {name}: it holds the {n} points; ingest skipped");
    } else {
        let _ = client.delete_collection(&name).await;
    }

    // Payload indexes for the fields the filter sets use.
    let mut b = CollectionBuilder::new(&name, ds.meta.dim, metric).shards(a.shards).replication_factor(a.replication_factor).hnsw(a.m, a.ef_construction, 0).storage(a.storage.into());
    if let Some(m) = a.memory {
        b = b.memory(m.into());
    }
    if let Some(p) = ds.payloads.as_ref().and_then(|p| p.first()) {
        let mut keys: Vec<String> = vec![];
        for s in &ds.filters {
            collect_keys(&s.filter, &mut keys);
        }
        keys.sort();
        keys.dedup();
        for k in keys {
            match p.get(&k) {
                Some(serde_json::Value::String(_)) => b = b.index(k, PayloadIndexType::Keyword),
                Some(serde_json::Value::Number(_)) => b = b.index(k, PayloadIndexType::Numeric),
                Some(serde_json::Value::Bool(_)) => b = b.index(k, PayloadIndexType::Bool),
                _ => {}
            }
        }
    }
    // The node's resident size before this collection exists: the bench
    // reports the marginal cost per vector beside the absolute one.
    let before = client.cluster_status().await?;
    let rss_before: u64 = before.nodes.iter().map(|x| x.rss_bytes).sum();
    let other_points: u64 = before.shards.iter().filter_map(|s| s.replicas.first()).map(|r| r.points).sum();
    if other_points > 0 {
        eprintln!("note: the cluster already holds {other_points} points of other collections; absolute memory per vector includes them");
    }
    if !reuse {
        client.create_collection(b.build()).await?;
    }

    // Ingest.
    let bar = indicatif::ProgressBar::new(n as u64);
    bar.set_style(indicatif::ProgressStyle::with_template("ingest {bar:40} {pos}/{len} {per_sec} eta {eta}").unwrap());
    let t = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(a.ingest_concurrency.max(1)));
    let mut tasks = Vec::new();
    for start in (0..n).step_by(a.batch).filter(|_| !reuse) {
        let end = (start + a.batch).min(n);
        let points: Vec<Point> = (start..end)
            .map(|i| {
                let p = Point::new(i as u64, base[i].clone());
                match ds.payloads.as_ref().and_then(|ps| ps.get(i)) {
                    Some(pl) => p.payload(pl.clone()),
                    None => p,
                }
            })
            .collect();
        let permit = sem.clone().acquire_owned().await?;
        let (client, name, bar) = (client.clone(), name.clone(), bar.clone());
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let r = client.upsert(&name, points).await;
            let took = sent.elapsed();
            bar.inc((end - start) as u64);
            drop(permit);
            r.map(|_| took)
        }));
    }
    let mut write_lat = Histogram::<u64>::new(3)?;
    for task in tasks {
        write_lat.record(task.await??.as_micros() as u64)?;
    }
    bar.finish_and_clear();
    let ingest_per_s = if reuse { f64::NAN } else { n as f64 / t.elapsed().as_secs_f64() };
    let (write_p50_ms, write_p99_ms) = (write_lat.value_at_quantile(0.5) as f64 / 1000.0, write_lat.value_at_quantile(0.99) as f64 / 1000.0);
    eprintln!("ingested {n} vectors: {ingest_per_s:.0}/s; upsert of {} points p50 {write_p50_ms:.1} ms p99 {write_p99_ms:.1} ms", a.batch);
    // Followers index in the background: wait until every replica's graph
    // holds every point, and report that time too (searches before then
    // are correct but scan the unindexed points exactly).
    let mut status = client.cluster_status().await?;
    loop {
        let unindexed: u64 = status.shards.iter().flat_map(|s| &s.replicas).map(|r| r.unindexed).sum();
        if unindexed == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        status = client.cluster_status().await?;
    }
    let indexed_after_s = t.elapsed().as_secs_f64();
    eprintln!("every replica indexed {:.1} s after ingest began ({:.0} vectors/s)", indexed_after_s, n as f64 / indexed_after_s);
    let rss: u64 = status.nodes.iter().map(|x| x.rss_bytes).sum();
    let index_bytes: u64 = status.nodes.iter().map(|x| x.index_bytes).sum();

    let threads = std::thread::available_parallelism().map_or(1, |x| x.get());
    let inproc = if a.no_inprocess {
        None
    } else {
        let unit_ip = a.inprocess_unit_ip && metric == Metric::Cosine;
        let (idx, rate) = if unit_ip {
            let unit: Vec<Vec<f32>> = base.iter().map(|v| unit(v)).collect();
            inprocess_build(&usearch_options(ds.meta.dim as usize, metric, a.m, a.ef_construction, true), &unit, threads, a.concurrency)?
        } else {
            inprocess_build(&usearch_options(ds.meta.dim as usize, metric, a.m, a.ef_construction, false), base, threads, a.concurrency)?
        };
        eprintln!("in-process usearch insert: {rate:.0}/s");
        Some((idx, rate))
    };

    let inproc_queries: Vec<Vec<f32>> =
        if a.inprocess_unit_ip && metric == Metric::Cosine { ds.queries.iter().map(|q| unit(q)).collect() } else { ds.queries.clone() };
    let truth = Arc::new(truth);
    // Warm-up, not measured: one pass each way. The first measured run
    // was up to 20% slower without it (caches, and the node settling
    // after ingest).
    if let Some(&ef) = a.ef.first() {
        let warm: Arc<Vec<SearchBuilder>> = Arc::new(ds.queries.iter().map(|q| over(SearchBuilder::new(&name, q.clone(), 10).ef(ef).exact(a.exact))).collect());
        grpc_run(&pool, warm, truth.clone(), a.inflight.unwrap_or(a.concurrency), 0.0).await?;
        if let Some((idx, _)) = inproc.as_ref() {
            inprocess_qps(idx, &inproc_queries, ef, a.concurrency, 0.0);
        }
    }
    let mut runs = vec![];
    for (&ef, cname) in a.ef.iter().flat_map(|ef| a.consistency.iter().map(move |c| (ef, c))) {
        let consistency = match cname.as_str() {
            "any" => shoal_proto::v1::Consistency::Any,
            "leader" => shoal_proto::v1::Consistency::Leader,
            _ => shoal_proto::v1::Consistency::Strong,
        };
        let searches: Arc<Vec<SearchBuilder>> = Arc::new(ds.queries.iter().map(|q| over(SearchBuilder::new(&name, q.clone(), 10).ef(ef).exact(a.exact).consistency(consistency))).collect());
        // Rounds alternate gRPC and in-process measurements, so a noisy
        // moment on the machine hits both; the medians are reported.
        let (mut grpc_qps, mut ip_qps, mut first) = (vec![], vec![], None);
        // CPU microseconds per query, per round: the server's and the
        // client's during gRPC rounds, this process's during in-process ones.
        let (mut server_us, mut client_us, mut ip_us) = (vec![], vec![], vec![]);
        for _ in 0..a.rounds.max(1) {
            let cpu = CpuMeter::start(a.server_pid);
            let r = grpc_run(&pool, searches.clone(), truth.clone(), a.inflight.unwrap_or(a.concurrency), a.min_secs).await?;
            let (server, client) = cpu.stop();
            server_us.extend(server.map(|s| s * 1e6 / r.queries as f64));
            client_us.extend(client.map(|s| s * 1e6 / r.queries as f64));
            grpc_qps.push(r.qps);
            first.get_or_insert(r);
            if let Some((idx, _)) = inproc.as_ref() {
                let cpu = CpuMeter::start(None);
                let (qps, done) = inprocess_qps(idx, &inproc_queries, ef, a.concurrency, a.min_secs);
                ip_us.extend(cpu.stop().1.map(|s| s * 1e6 / done.max(1) as f64));
                ip_qps.push(qps);
            }
        }
        let r = first.expect("at least one round");
        let med = |xs: &mut Vec<f64>| (!xs.is_empty()).then(|| median(xs));
        let (qps, ip) = (median(&mut grpc_qps), med(&mut ip_qps));
        let (server_cpu, client_cpu, ip_cpu) = (med(&mut server_us), med(&mut client_us), med(&mut ip_us));
        // In-process CPU per query over the server's: the QPS ratio the
        // server would reach with the cores to itself (client elsewhere).
        let cpu_ratio = ip_cpu.zip(server_cpu).map(|(i, s)| i / s);
        eprintln!("ef={ef:<4} consistency={cname:<6} recall@10={:.4} qps={qps:.0} p50={:.2}ms p99={:.2}ms inprocess_qps={:.0} (rounds: grpc {grpc_qps:.0?}, in-process {ip_qps:.0?})", r.recall, r.p50_ms, r.p99_ms, ip.unwrap_or(0.0));
        let us = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.0}"));
        eprintln!("         cpu us/query: server {} client {} in-process {}; server cpu ratio {}", us(server_cpu), us(client_cpu), us(ip_cpu), cpu_ratio.map_or("-".to_string(), |x| format!("{x:.2}")));
        runs.push(json!({"ef": ef, "consistency": cname, "recall_at_10": r.recall, "qps": qps, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "inprocess_qps": ip, "qps_ratio": ip.map(|x| qps / x),
            "server_cpu_us_per_query": server_cpu, "client_cpu_us_per_query": client_cpu, "inprocess_cpu_us_per_query": ip_cpu, "server_cpu_ratio": cpu_ratio,
            "rounds_qps": grpc_qps, "rounds_inprocess_qps": ip_qps, "rounds_server_cpu_us": server_us, "rounds_client_cpu_us": client_us, "rounds_inprocess_cpu_us": ip_us}));
    }

    let default_ef = shoal_proto::limits::DEFAULT_HNSW_EF_SEARCH;
    let mut filtered = vec![];
    if n == ds.base.len() && !ds.filters.is_empty() {
        // Warm-up: the filtered searches ask for the partition graphs they
        // would use, and nodes build them when idle (docs/filters.md). The
        // pause gives them time (debian's largest takes about 0.5 s); the
        // bench does not check that every build finished.
        for set in &ds.filters {
            let f = filter::from_json(&set.filter).with_context(|| format!("filter set {}", set.name))?;
            let warm: Arc<Vec<SearchBuilder>> = Arc::new(ds.queries.iter().take(32).map(|q| over(SearchBuilder::new(&name, q.clone(), 10).filter(f.clone()).ef(a.filter_ef.unwrap_or(default_ef)))).collect());
            grpc_run(&pool, warm, Arc::new(set.groundtruth.clone()), a.inflight.unwrap_or(a.concurrency), 0.0).await?;
        }
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    }
    if n == ds.base.len() {
        for set in &ds.filters {
            let f = filter::from_json(&set.filter).with_context(|| format!("filter set {}", set.name))?;
            let gt: Arc<Vec<Vec<u64>>> = Arc::new(set.groundtruth.clone());
            let filter_ef = a.filter_ef;
            let mk = |exact: bool| -> Arc<Vec<SearchBuilder>> {
                Arc::new(
                    ds.queries
                        .iter()
                        .map(|q| {
                            let s = over(SearchBuilder::new(&name, q.clone(), 10).filter(f.clone()).exact(exact));
                            match filter_ef {
                                Some(ef) => s.ef(ef),
                                None => s,
                            }
                        })
                        .collect(),
                )
            };
            let approx = grpc_run(&pool, mk(false), gt.clone(), a.inflight.unwrap_or(a.concurrency), 0.0).await?;
            let exact = grpc_run(&pool, mk(true), gt, a.inflight.unwrap_or(a.concurrency), 0.0).await?;
            let ef = a.filter_ef.unwrap_or(default_ef);
            let ratio = runs.iter().find(|r| r["ef"] == ef && r["consistency"] == "strong").and_then(|r| r["qps"].as_f64()).map(|u| approx.qps / u);
            eprintln!(
                "filter {:<28} sel={:.4} ef={ef} recall@10={:.4} qps={:.0} ({} unfiltered) | exact: recall@10={:.4} identical_top10={:.4} qps={:.0}",
                set.name,
                set.selectivity,
                approx.recall,
                approx.qps,
                ratio.map_or("-".into(), |r| format!("{r:.2}x")),
                exact.recall,
                exact.exact_match,
                exact.qps
            );
            filtered.push(json!({"name": set.name, "selectivity": set.selectivity, "ef": ef, "recall_at_10": approx.recall, "qps": approx.qps, "ratio_to_unfiltered": ratio, "p99_ms": approx.p99_ms,
                "exact_recall_at_10": exact.recall, "exact_identical_top10": exact.exact_match, "exact_qps": exact.qps}));
        }
    }

    let raw = ds.meta.dim as f64 * 4.0;
    let links = 2.0 * a.m as f64 * 4.0;
    let out = json!({
        "dataset": ds.meta.name, "storage": format!("{:?}", a.storage).to_lowercase(), "oversampling": a.oversampling,
        "vectors": n,
        "dim": ds.meta.dim,
        "metric": ds.meta.metric,
        "m": a.m, "ef_construction": a.ef_construction, "concurrency": a.concurrency, "inprocess_metric": if a.inprocess_unit_ip && metric == Metric::Cosine { "ip on unit vectors" } else { "usearch cos" }, "inflight": a.inflight.unwrap_or(a.concurrency), "client_threads": a.client_threads, "search_batch": a.search_batch, "stream": a.stream, "exact": a.exact, "threads": threads,
        "ingest_per_s": ingest_per_s,
        "indexed_after_s": indexed_after_s,
        "indexed_per_s": n as f64 / indexed_after_s,
        "write_batch": a.batch,
        "write_p50_ms": write_p50_ms,
        "write_p99_ms": write_p99_ms,
        "replication_factor": a.replication_factor,
        "shards": a.shards,
        "consistency": a.consistency,
        "inprocess_insert_per_s": inproc.as_ref().map(|x| x.1),
        "ingest_ratio": inproc.as_ref().map(|x| ingest_per_s / x.1),
        "default_ef": default_ef,
        "rss_bytes": rss,
        "rss_bytes_per_vector": rss as f64 / n as f64,
        "rss_before_ingest_bytes": rss_before,
        "rss_marginal_bytes_per_vector": rss.saturating_sub(rss_before) as f64 / n as f64,
        "memory_ratio": rss as f64 / n as f64 / (raw + links),
        "memory_marginal_ratio": rss.saturating_sub(rss_before) as f64 / n as f64 / (raw + links),
        "index_bytes_per_vector": index_bytes as f64 / n as f64,
        "raw_plus_links_bytes_per_vector": raw + links,
        "runs": runs,
        "filtered": filtered,
    });
    eprintln!(
        "memory: rss {:.0} B/vector (ratio {:.2}), marginal {:.0} B/vector over the {:.0} MiB node before ingest (ratio {:.2}); indexes {:.0} B/vector; raw+links {:.0} B/vector",
        rss as f64 / n as f64,
        rss as f64 / n as f64 / (raw + links),
        rss.saturating_sub(rss_before) as f64 / n as f64,
        rss_before as f64 / (1 << 20) as f64,
        rss.saturating_sub(rss_before) as f64 / n as f64 / (raw + links),
        index_bytes as f64 / n as f64,
        raw + links,
    );
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_vec_pretty(&out)?)?;
    }
    if let Some(p) = &a.plot {
        plot(p, &ds.meta.name, &out)?;
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// The payload keys a neutral filter (`filters.json`) names.
pub fn collect_keys(f: &serde_json::Value, out: &mut Vec<String>) {
    for clause in ["must", "should", "must_not"] {
        for c in f.get(clause).and_then(|x| x.as_array()).into_iter().flatten() {
            if let Some(k) = c.get("key").and_then(|k| k.as_str()) {
                out.push(k.to_string());
            }
            if let Some(n) = c.get("filter") {
                collect_keys(n, out);
            }
        }
    }
}

const FONT_PATHS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Recall@10 (x) against QPS (y, log) for Shoal and in-process usearch.
fn plot(path: &std::path::Path, name: &str, out: &serde_json::Value) -> Result<()> {
    use plotters::prelude::*;
    let font = FONT_PATHS.iter().find_map(|p| std::fs::read(p).ok());
    if let Some(bytes) = font {
        let leaked: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, leaked);
    } else {
        eprintln!("no TTF font found (install fonts-dejavu-core); plot has no labels");
    }
    let runs = out["runs"].as_array().cloned().unwrap_or_default();
    let pts = |k: &str| -> Vec<(f64, f64)> { runs.iter().filter_map(|r| Some((r["recall_at_10"].as_f64()?, r[k].as_f64()?))).collect() };
    let (shoal, inproc) = (pts("qps"), {
        let q: Vec<(f64, f64)> = runs.iter().filter_map(|r| Some((r["recall_at_10"].as_f64()?, r["inprocess_qps"].as_f64()?))).collect();
        q
    });
    let ymax = shoal.iter().chain(&inproc).map(|p| p.1).fold(1.0, f64::max) * 1.5;
    let xmin = shoal.iter().map(|p| p.0).fold(1.0, f64::min).min(0.9) - 0.02;
    let root = BitMapBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{name}: recall@10 vs QPS"), ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(xmin..1.0f64, (1.0f64..ymax).log_scale())?;
    chart.configure_mesh().x_desc("recall@10").y_desc("queries/s").draw()?;
    chart.draw_series(LineSeries::new(shoal.clone(), &BLUE))?.label("Shoal (gRPC)").legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart.draw_series(shoal.iter().map(|p| Circle::new(*p, 4, BLUE.filled())))?;
    if !inproc.is_empty() {
        chart.draw_series(LineSeries::new(inproc.clone(), &RED))?.label("usearch in-process").legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
        chart.draw_series(inproc.iter().map(|p| TriangleMarker::new(*p, 5, RED.filled())))?;
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}
