//! `shoal-scan-bench`: exact search through the scan engine
//! (node/src/scan) beside the per-query paths it replaces, in one run.
//!
//! Builds an f32 graph of the dataset (its vectors are the rows), then
//! measures, each over the same queries:
//! - `loop-all`: `HnswIndex::exact` with no filter, one query at a time
//!   (usearch's brute force, today's `exact=true`);
//! - `loop-set`: `HnswIndex::exact` with every key allowed, one query at a
//!   time (a copy and a kernel call per row: today's filtered scan);
//! - `scan-graph/B/T`: `CpuScan` on T threads over the graph's rows (each
//!   copied out once per batch), B queries per call;
//! - `scan-dense/B/T`: the same over the base set held contiguously (the
//!   layout a scan-friendly store would give).
//!
//! With `--no-graph` (large sets, where building the graph would take
//! most of the run) the per-query path is `loop-dense`: `LoopScan`, one
//! kernel call per query and row over the contiguous rows (how Shoal
//! scanned before the engine), and only `scan-dense` is measured.
//!
//! Then an f32 matrix product of 1,024 x 1,024 x dim on one thread, the
//! machine's measured GEMM rate, against which the scan's rate is given.
//!
//!   shoal-scan-bench --dataset ../shared/data/debian-384 --batch 1,8,64,1024 --json out.json
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use roaring::RoaringBitmap;
use serde_json::json;
use shoal_client::bench::metric_of;
use shoal_client::dataset::Dataset;
use shoal_node::index::hnsw::{HnswIndex, HnswParams};
use shoal_node::index::{Allowed, Precision, VectorIndex};
use shoal_node::scan::cpu::CpuScan;
use shoal_node::scan::{DenseRows, LoopScan, RowStore, Scan, ScanMetric};
use shoal_proto::v1::Metric;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    dataset: PathBuf,
    /// Queries per scan call.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64,1024")]
    batch: Vec<usize>,
    /// Scan threads to measure (0: every core).
    #[arg(long, value_delimiter = ',', default_value = "1,0")]
    threads: Vec<usize>,
    /// Use only the first N base vectors.
    #[arg(long)]
    limit: Option<usize>,
    /// Use only the first N queries.
    #[arg(long)]
    queries: Option<usize>,
    /// Build no graph: compare the scan with the per-row kernel loop over
    /// contiguous rows only.
    #[arg(long)]
    no_graph: bool,
    #[arg(long, default_value_t = 3.0)]
    min_secs: f64,
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The graph's rows, copied out one by one (`VectorIndex::get`).
struct GraphRows<'a>(&'a HnswIndex, usize);

impl RowStore for GraphRows<'_> {
    fn dim(&self) -> usize {
        self.1
    }
    fn fill(&self, key: u64, out: &mut [f32]) -> bool {
        self.0.get(key, out)
    }
}

/// Queries per second of `run` over `queries` in calls of `batch`, for at
/// least `min_secs` (and at least one call).
fn qps(queries: &[Vec<f32>], batch: usize, min_secs: f64, mut run: impl FnMut(&[Vec<f32>])) -> f64 {
    let start = Instant::now();
    let mut n = 0usize;
    'outer: loop {
        for chunk in queries.chunks(batch) {
            run(chunk);
            n += chunk.len();
            if start.elapsed().as_secs_f64() >= min_secs {
                break 'outer;
            }
        }
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() -> Result<()> {
    let a = Args::parse();
    let ds = Dataset::load(&a.dataset)?;
    let name = ds.meta.name.clone();
    let metric = metric_of(&ds.meta.metric)?;
    let mut base = ds.base;
    if let Some(n) = a.limit {
        base.truncate(n);
    }
    let dim = base[0].len();
    let unit = |v: &[f32]| -> Vec<f32> {
        if metric != Metric::Cosine {
            return v.to_vec();
        }
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        v.iter().map(|x| x / n).collect()
    };
    let queries: Vec<Vec<f32>> = ds.queries.iter().take(a.queries.unwrap_or(usize::MAX)).map(|q| unit(q)).collect();
    let scan_metric = if metric == Metric::L2 { ScanMetric::L2 } else { ScanMetric::InnerProduct };
    let index = HnswIndex::new(HnswParams { dim, metric, precision: Precision::F32, m: 16, ef_construction: 128 })?;
    let started = Instant::now();
    if !a.no_graph {
        for (c, chunk) in base.chunks(10_000).enumerate() {
            let items: Vec<(u64, &[f32])> = chunk.iter().enumerate().map(|(i, v)| ((c * 10_000 + i) as u64, v.as_slice())).collect();
            index.add_batch(&items)?;
        }
        eprintln!("{name}: {} x {dim} graph built in {:.1}s", base.len(), started.elapsed().as_secs_f64());
    }
    let dense: Vec<f32> = base.iter().flat_map(|v| unit(v)).collect();
    drop(base);
    let n = dense.len() / dim;
    let keys: Vec<u64> = (0..n as u64).collect();
    let mut all = RoaringBitmap::new();
    all.insert_range(0..n as u32);
    let graph = GraphRows(&index, dim);
    let dense_rows = DenseRows { dim, data: &dense };
    let mut out = vec![];
    let mut row = |what: String, batch: usize, threads: usize, qps: f64| {
        let gflops = qps * n as f64 * dim as f64 * 2.0 / 1e9;
        eprintln!("{name} {what:<24} batch={batch:<5} threads={threads}: {qps:>9.1} QPS ({gflops:.1} GFLOP/s)");
        out.push(json!({"dataset": name, "path": what, "batch": batch, "threads": threads, "qps": qps, "gflops": gflops, "n": n, "dim": dim}));
    };
    // Today's paths, one query at a time on one thread.
    let want: Vec<Vec<u64>> = if a.no_graph {
        // The dataset's exact ground truth (a scan of every query over
        // 1M rows one row at a time would take minutes).
        let want = ds.groundtruth.iter().take(queries.len()).map(|g| g.iter().take(10).map(|&i| i as u64).collect()).collect();
        let loop_dense = qps(&queries, 1, a.min_secs, |qs| {
            std::hint::black_box(LoopScan.top_k(&[qs[0].as_slice()], &keys, &dense_rows, 10, scan_metric).expect("loop"));
        });
        row("loop-dense".into(), 1, 1, loop_dense);
        want
    } else {
        let want = queries.iter().map(|q| index.exact(q, 10, &Allowed::All).map(|h| h.iter().map(|x| x.key).collect())).collect::<Result<_, _>>()?;
        let loop_all = qps(&queries, 1, a.min_secs, |qs| {
            std::hint::black_box(index.exact(&qs[0], 10, &Allowed::All).expect("exact"));
        });
        row("loop-all".into(), 1, 1, loop_all);
        let loop_set = qps(&queries, 1, a.min_secs, |qs| {
            std::hint::black_box(index.exact(&qs[0], 10, &Allowed::Set(&all)).expect("exact"));
        });
        row("loop-set".into(), 1, 1, loop_set);
        want
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for &t in &a.threads {
        let threads = if t == 0 { cores } else { t };
        let scan = CpuScan::with_threads(threads);
        for &batch in &a.batch {
            let stores: &[(&str, &dyn RowStore)] = if a.no_graph { &[("scan-dense", &dense_rows)] } else { &[("scan-graph", &graph), ("scan-dense", &dense_rows)] };
            for &(what, rows) in stores {
                // The same answers as today's path (ties aside): checked on
                // the first pass.
                // (over the first 64 queries, or one batch if larger)
                let mut agree = 0usize;
                let checked = batch.max(64).min(queries.len());
                for (chunk, w) in queries[..checked].chunks(batch).zip(want.chunks(batch)) {
                    let qs: Vec<&[f32]> = chunk.iter().map(|q| q.as_slice()).collect();
                    let got = scan.top_k(&qs, &keys, rows, 10, scan_metric)?;
                    agree += got.iter().zip(w).map(|(g, w)| g.iter().filter(|h| w.contains(&h.key)).count()).sum::<usize>();
                }
                let q = qps(&queries, batch, a.min_secs, |chunk| {
                    let qs: Vec<&[f32]> = chunk.iter().map(|q| q.as_slice()).collect();
                    std::hint::black_box(scan.top_k(&qs, &keys, rows, 10, scan_metric).expect("scan"));
                });
                row(format!("{what} (agree {:.4})", agree as f64 / (checked * 10) as f64), batch, threads, q);
            }
        }
    }
    // The machine's single-thread f32 GEMM rate at a large shape.
    let (m, n, k) = (1024usize, 1024usize, dim);
    let (x, y) = (vec![0.5f32; m * k], vec![0.25f32; n * k]);
    let mut z = vec![0f32; m * n];
    let start = Instant::now();
    let mut reps = 0;
    while start.elapsed().as_secs_f64() < a.min_secs || reps == 0 {
        // SAFETY: x is m x k, y is read as k x n (column stride k), z is
        // m x n; every pointer covers its strides.
        unsafe { gemm::gemm(m, n, k, z.as_mut_ptr(), 1, n as isize, false, x.as_ptr(), 1, k as isize, y.as_ptr(), k as isize, 1, 0.0, 1.0, false, false, false, gemm::Parallelism::None) };
        reps += 1;
    }
    let peak = reps as f64 * (2 * m * n * k) as f64 / start.elapsed().as_secs_f64() / 1e9;
    eprintln!("{name} gemm {m}x{n}x{k}, one thread: {peak:.1} GFLOP/s");
    out.push(json!({"dataset": name, "path": "gemm-peak", "threads": 1, "gflops": peak, "shape": [m, n, k]}));
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_vec_pretty(&out)?)?;
    }
    Ok(())
}
