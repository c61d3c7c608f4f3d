//! `shoal-gen`: a clustered synthetic dataset folder with exact ground
//! truth, for memory, ingest and restart figures at scale (recall claims
//! use the real sets in `../shared/data/`).
//!
//! Points are Gaussian clusters: `clusters` centres drawn from N(0, 1) per
//! dimension, each point a centre plus N(0, `spread`²) noise, queries drawn
//! the same way. The ground truth is the exact top 100 per query (L2 or
//! cosine), computed here with Shoal's f32 kernels over all threads, base
//! rows scanned in blocks for a batch of queries at a time.
//!
//! `shoal-gen --out /tmp/data/clustered-1m-768 --n 1000000 --dim 768`
//! (about 3 GB, two minutes on two cores). The folder has the layout of
//! `../shared/data/README.md`: meta.json, base.fvecs, query.fvecs,
//! groundtruth.ivecs.
use std::collections::BinaryHeap;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use shoal_client::dataset::write_fvecs;
use shoal_node::index::kernel;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 1_000_000)]
    n: usize,
    #[arg(long, default_value_t = 768)]
    dim: usize,
    #[arg(long, default_value_t = 1000)]
    queries: usize,
    #[arg(long, default_value_t = 1000)]
    clusters: usize,
    /// Noise around a centre (standard deviation per dimension).
    #[arg(long, default_value_t = 0.5)]
    spread: f32,
    /// l2 or cosine.
    #[arg(long, default_value = "l2")]
    metric: String,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// xorshift64* with Box-Muller normals: reproducible, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f32 {
        ((-2.0 * self.next().ln()).sqrt() * (std::f64::consts::TAU * self.next()).cos()) as f32
    }
}

/// The ground truth as .ivecs (the client's dataset module reads them but
/// writes only .fvecs).
fn write_ivecs(path: &PathBuf, rows: &[Vec<i32>]) -> Result<()> {
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    for r in rows {
        w.write_all(&(r.len() as i32).to_le_bytes())?;
        for x in r {
            w.write_all(&x.to_le_bytes())?;
        }
    }
    w.flush()?;
    Ok(())
}

fn main() -> Result<()> {
    let a = Args::parse();
    let cosine = match a.metric.as_str() {
        "l2" => false,
        "cosine" => true,
        m => anyhow::bail!("--metric takes l2 or cosine, not {m:?}"),
    };
    anyhow::ensure!(a.n >= 100 && a.dim > 0 && a.clusters > 0, "--n must be at least 100, --dim and --clusters positive");
    std::fs::create_dir_all(&a.out)?;
    let mut rng = Rng(a.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let centres: Vec<Vec<f32>> = (0..a.clusters).map(|_| (0..a.dim).map(|_| rng.normal()).collect()).collect();
    let draw = |rng: &mut Rng| -> Vec<f32> {
        let c = &centres[(rng.next() * a.clusters as f64) as usize % a.clusters];
        let mut v: Vec<f32> = c.iter().map(|x| x + a.spread * rng.normal()).collect();
        if cosine {
            let n = kernel::dot(&v, &v).sqrt().max(1e-12);
            v.iter_mut().for_each(|x| *x /= n);
        }
        v
    };
    let t = Instant::now();
    let base: Vec<Vec<f32>> = (0..a.n).map(|_| draw(&mut rng)).collect();
    let queries: Vec<Vec<f32>> = (0..a.queries).map(|_| draw(&mut rng)).collect();
    eprintln!("generated {} x {} in {:.1}s", a.n, a.dim, t.elapsed().as_secs_f64());
    write_fvecs(&a.out.join("base.fvecs"), &base)?;
    write_fvecs(&a.out.join("query.fvecs"), &queries)?;

    // Exact top 100: threads take batches of queries; each batch scans the
    // base once, block by block, so a block is read from memory once per
    // batch rather than once per query.
    let t = Instant::now();
    let k = 100;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let batch = 32;
    // Rows per block: 256 x 768 floats (768 KiB) stay in L2 while the
    // batch's queries pass over them.
    const BLOCK: usize = 256;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut truth: Vec<Vec<i32>> = vec![vec![]; queries.len()];
    let results = std::sync::Mutex::new(&mut truth);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let from = next.fetch_add(batch, std::sync::atomic::Ordering::Relaxed);
                if from >= queries.len() {
                    break;
                }
                let qs = &queries[from..(from + batch).min(queries.len())];
                // Max-heaps of (distance bits, id): the worst on top.
                let mut heaps: Vec<BinaryHeap<(u32, u32)>> = qs.iter().map(|_| BinaryHeap::with_capacity(k + 1)).collect();
                for (b, block) in base.chunks(BLOCK).enumerate() {
                    for (q, heap) in qs.iter().zip(heaps.iter_mut()) {
                        for (i, row) in block.iter().enumerate() {
                            let d = if cosine { 1.0 - kernel::dot(q, row) } else { kernel::l2sq(q, row) };
                            // Non-negative f32s order as their bits do.
                            let key = (d.max(0.0).to_bits(), (b * BLOCK + i) as u32);
                            if heap.len() < k {
                                heap.push(key);
                            } else if key < *heap.peek().expect("k > 0") {
                                heap.pop();
                                heap.push(key);
                            }
                        }
                    }
                }
                let mut out = results.lock().expect("no panics hold it");
                for (j, heap) in heaps.into_iter().enumerate() {
                    out[from + j] = heap.into_sorted_vec().into_iter().map(|(_, id)| id as i32).collect();
                }
            });
        }
    });
    eprintln!("exact ground truth (top {k}) for {} queries in {:.1}s on {threads} threads", queries.len(), t.elapsed().as_secs_f64());
    write_ivecs(&a.out.join("groundtruth.ivecs"), &truth)?;
    let name = a.out.file_name().map_or("clustered".into(), |n| n.to_string_lossy().into_owned());
    let meta = serde_json::json!({
        "name": name,
        "source": format!("shoal-gen: {} Gaussian clusters (spread {}), seed {}", a.clusters, a.spread, a.seed),
        "dim": a.dim, "metric": a.metric, "base": a.n, "queries": a.queries, "k": k, "payload_fields": [],
    });
    std::fs::write(a.out.join("meta.json"), serde_json::to_vec_pretty(&meta)?)?;
    eprintln!("wrote {}", a.out.display());
    Ok(())
}
