//! BM25 against a reference implementation (PyPI `bm25s`, method
//! "lucene") on the `text` field of debian-384's payloads: a 3-node
//! cluster, the collection in 3 shards, every query's top 10 ids and
//! scores equal to bm25s's to 1e-4 relative (ids may differ only inside
//! ties). The reference is given Shoal's tokens (English stemming and
//! stop words), so the comparison is of scoring and of the collection-wide
//! statistics summed over shards.
//!
//! Ignored by default: it needs the dataset (`SHOAL_DATA`, default
//! `../shared/data`) and a Python with bm25s (`SHOAL_BM25_PYTHON`).
//! `.ci/run` runs it where both exist; `bash bench/bm25_reference.sh`
//! sets them up.
use std::io::{BufRead, Write};
use std::path::PathBuf;

use shoal_client::{Point, QueryBuilder, Q};
use shoal_node::text::Tokenizer;
use shoal_proto::v1::*;
use shoal_proto::PointKey;
use shoal_tests::procs::ProcCluster;

fn data_dir() -> PathBuf {
    std::env::var_os("SHOAL_DATA").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"))
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs debian-384 and a Python with bm25s: bash bench/bm25_reference.sh"]
async fn bm25_equals_bm25s_on_debian_384() {
    let python = std::env::var("SHOAL_BM25_PYTHON").expect("SHOAL_BM25_PYTHON: a python with bm25s installed");
    let file = std::fs::File::open(data_dir().join("debian-384/payload.jsonl.gz")).expect("debian-384 payloads (SHOAL_DATA)");
    let texts: Vec<String> = std::io::BufReader::new(flate2::read::GzDecoder::new(file))
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(&l.unwrap()).unwrap()["text"].as_str().unwrap().to_string())
        .collect();
    let params = TextIndexParams { stemmer: "english".into(), stop_words: "english".into(), keep_accents: false };
    let tok = Tokenizer::new(&params);
    let tokens: Vec<Vec<String>> = texts.iter().map(|t| tok.tokens(t)).collect();
    assert!(tokens.iter().all(|t| !t.is_empty()), "every document has tokens (N counts the same documents on both sides)");

    // Queries: every 300th package's summary words, plus single words.
    let mut queries: Vec<String> = (0..texts.len()).step_by(300).map(|i| texts[i].split(". ").next().unwrap_or_default().replace(':', " ")).collect();
    queries.extend(["python", "library", "kernel module", "GNOME", "documentation files", "the"].iter().map(|s| s.to_string()));
    queries.retain(|q| !tok.tokens(q).is_empty());

    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, rows: &[Vec<String>]| {
        let mut f = std::io::BufWriter::new(std::fs::File::create(dir.path().join(name)).unwrap());
        for r in rows {
            writeln!(f, "{}", serde_json::to_string(r).unwrap()).unwrap();
        }
    };
    write("corpus.jsonl", &tokens);
    write("queries.jsonl", &queries.iter().map(|q| tok.tokens(q)).collect::<Vec<_>>());

    let cluster = ProcCluster::start(3).await.unwrap();
    let c = shoal_tests::tls::client(&cluster.coordinator.addr).await;
    c.create_collection(shoal_client::CollectionBuilder::new("deb", 4, Metric::Dot).shards(3).text_index("text", params.clone()).build()).await.unwrap();
    let points: Vec<Point> = texts.iter().enumerate().map(|(i, t)| Point::new(i as u64, vec![1.0, (i % 7) as f32, 0.0, 1.0]).payload(serde_json::json!({"text": t}))).collect();
    for chunk in points.chunks(2000) {
        c.upsert("deb", chunk.to_vec()).await.unwrap();
    }

    for (k1, b) in [(1.2f32, 0.75f32), (0.9, 0.4)] {
        let out = dir.path().join(format!("ref-{k1}-{b}.jsonl"));
        let st = std::process::Command::new(&python)
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench/bm25_reference.py"))
            .args([dir.path().join("corpus.jsonl"), dir.path().join("queries.jsonl"), out.clone()])
            .args([k1.to_string(), b.to_string(), "10".to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "bm25_reference.py failed");
        let want: Vec<serde_json::Value> = std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(want.len(), queries.len());
        let (mut compared, mut worst) = (0usize, 0f64);
        for (q, w) in queries.iter().zip(&want) {
            let r = c.query(QueryBuilder::new("deb", Q::bm25_with("text", q, k1, b)).limit(10)).await.unwrap();
            let got: Vec<(u64, f32)> = r.points.iter().map(|p| (match PointKey::try_from(p.id.as_ref().unwrap()).unwrap() { PointKey::Num(n) => n, _ => unreachable!() }, p.score)).collect();
            let wd: Vec<u64> = w["docs"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
            let ws: Vec<f64> = w["scores"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
            assert_eq!(got.len(), wd.len(), "{q:?}: got {got:?}, bm25s {wd:?} {ws:?}");
            for (i, (g, s)) in got.iter().zip(&ws).enumerate() {
                let rel = (g.1 as f64 - s).abs() / s.abs().max(1e-9);
                worst = worst.max(rel);
                assert!(rel <= 1e-4, "{q:?} rank {i}: Shoal {} vs bm25s {s} (k1 {k1}, b {b})", g.1);
                if g.0 != wd[i] {
                    // Only inside a tie: bm25s lists the same score for Shoal's id.
                    let tie = wd.iter().zip(&ws).any(|(d, x)| *d == g.0 && ((x - s).abs() / s.abs()) <= 1e-4);
                    let score_of_g = bm25_of(&tokens[g.0 as usize], &tok.tokens(q), &tokens, k1 as f64, b as f64);
                    assert!(tie || (score_of_g - s).abs() / s <= 1e-4, "{q:?} rank {i}: Shoal id {} vs bm25s id {}", g.0, wd[i]);
                }
                compared += 1;
            }
        }
        println!("k1 {k1} b {b}: {} queries, {compared} scores compared, worst relative difference {worst:.2e}", queries.len());
    }
}

/// One document's score from the definition (for ids at the edge of a tie
/// bm25s cut differently).
fn bm25_of(doc: &[String], q: &[String], all: &[Vec<String>], k1: f64, b: f64) -> f64 {
    let n = all.len() as f64;
    let avgdl = all.iter().map(Vec::len).sum::<usize>() as f64 / n;
    q.iter()
        .map(|t| {
            let tf = doc.iter().filter(|x| *x == t).count() as f64;
            if tf == 0.0 {
                return 0.0;
            }
            let df = all.iter().filter(|d| d.contains(t)).count() as f64;
            (1.0 + (n - df + 0.5) / (df + 0.5)).ln() * tf / (tf + k1 * (1.0 - b + b * doc.len() as f64 / avgdl))
        })
        .sum()
}
