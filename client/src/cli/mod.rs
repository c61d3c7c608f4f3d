//! `shoalctl` commands. Human tables by default, `-o json` for scripts.
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use shoal_proto::v1::*;

use crate::{dataset, filter, Client, CollectionBuilder, Point, SearchBuilder};

mod cluster;
mod query;

#[derive(Parser)]
#[command(name = "shoalctl", version, about = "Shoal admin CLI")]
pub struct Cli {
    /// Coordinator address (host:port, or https://host:port with --ca).
    #[arg(long, env = "SHOAL_ADDR", default_value = "127.0.0.1:6333", global = true)]
    pub addr: String,
    /// CA certificate (PEM) that signed the servers' certificates: TLS on,
    /// for the coordinator and for nodes.
    #[arg(long, env = "SHOAL_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM): the operator certificate for cluster and
    /// backup commands on a TLS cluster (they speak to nodes).
    #[arg(long, env = "SHOAL_CLIENT_CERT", global = true)]
    pub cert: Option<PathBuf>,
    /// Key of --cert (PEM).
    #[arg(long, env = "SHOAL_CLIENT_KEY", global = true)]
    pub key: Option<PathBuf>,
    /// API key (or JWT) for the public API.
    #[arg(long, env = "SHOAL_API_KEY", global = true, hide_env_values = true)]
    pub api_key: Option<String>,
    /// File holding an API key or JWT (read at start).
    #[arg(long, env = "SHOAL_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// TLS name to verify servers against instead of the host dialled.
    #[arg(long, env = "SHOAL_TLS_SERVER_NAME", global = true)]
    pub tls_server_name: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Manage collections.
    #[command(subcommand)]
    Collection(CollectionCmd),
    /// Collection aliases: set (create or re-point atomically), delete,
    /// list.
    #[command(subcommand)]
    Alias(AliasCmd),
    /// Write points.
    #[command(subcommand)]
    Point(PointCmd),
    /// Search a collection.
    Search(SearchArgs),
    /// Hybrid and multi-stage queries: nearest, BM25, both fused,
    /// recommend, MMR, group-by (docs/query.md).
    Query(query::QueryArgs),
    /// Cluster operations.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Back collections up and restore them (docs/operations.md#backups).
    #[command(subcommand)]
    Backup(cluster::BackupCmd),
    /// Benchmark a server against a dataset folder (see docs/benchmarks.md).
    Bench(crate::bench::BenchArgs),
    /// Dense, BM25 and fused retrieval: quality on a judged set and cost
    /// side by side (docs/benchmarks.md, "Hybrid retrieval").
    BenchHybrid(crate::bench_hybrid::HybridArgs),
}

#[derive(Clone, Copy, ValueEnum)]
pub enum MetricArg {
    Cosine,
    Dot,
    L2,
}

impl From<MetricArg> for Metric {
    fn from(m: MetricArg) -> Self {
        match m {
            MetricArg::Cosine => Metric::Cosine,
            MetricArg::Dot => Metric::Dot,
            MetricArg::L2 => Metric::L2,
        }
    }
}

#[derive(Subcommand)]
pub enum CollectionCmd {
    /// Create a collection.
    Create {
        name: String,
        #[arg(long)]
        dim: u32,
        #[arg(long, value_enum, default_value_t = MetricArg::Cosine)]
        metric: MetricArg,
        #[arg(long, default_value_t = 1)]
        shards: u32,
        #[arg(long, default_value_t = 1)]
        replication_factor: u32,
        /// HNSW graph degree (0 = default 16).
        #[arg(long, default_value_t = 0)]
        m: u32,
        /// HNSW build candidate list (0 = default 128).
        #[arg(long, default_value_t = 0)]
        ef_construction: u32,
        /// Default search candidate list (0 = default 128).
        #[arg(long, default_value_t = 0)]
        ef_search: u32,
        /// Store vectors in the index as f16 (same as `--storage f16`).
        #[arg(long)]
        f16: bool,
        /// How the graph stores vectors: f32, f16, int8 or binary (int8 and
        /// binary re-score with full vectors from a memory-mapped file).
        #[arg(long, value_enum)]
        storage: Option<StorageArg>,
        /// int8/binary: where the full vectors live (ram, cached, cold).
        #[arg(long, value_enum)]
        memory: Option<MemoryArg>,
        /// Payload index, `field:keyword|numeric|bool|text|datetime|geo`
        /// (repeatable).
        #[arg(long = "index")]
        indexes: Vec<String>,
        /// Text indexes: Snowball stemmer ("english", ...; default none).
        #[arg(long, default_value = "")]
        text_stemmer: String,
        /// Text indexes: stop word list ("english"; default none).
        #[arg(long, default_value = "")]
        text_stop_words: String,
        /// Text indexes: keep accents (no ASCII folding).
        #[arg(long)]
        text_keep_accents: bool,
        /// Sparse vector, `name` or `name:idf` for the IDF modifier
        /// (repeatable).
        #[arg(long = "sparse")]
        sparse: Vec<String>,
        /// Named vector, `name:dim:cosine|dot|l2`, or
        /// `name:dim:metric:multi` for a multi-vector (repeatable).
        #[arg(long = "vector")]
        vectors: Vec<String>,
    },
    /// Change how a live collection stores its vectors (replicas rebuild
    /// in the background; `cluster status` shows each replica's kind).
    Storage {
        name: String,
        #[arg(long, value_enum)]
        storage: Option<StorageArg>,
        #[arg(long, value_enum)]
        memory: Option<MemoryArg>,
    },
    /// Add and drop named vectors of a live collection.
    Vectors {
        name: String,
        /// Named vector to add, `name:dim:metric[:multi]` (repeatable).
        #[arg(long)]
        add: Vec<String>,
        /// Named vector to drop (repeatable; applied first). Its values
        /// leave every point.
        #[arg(long)]
        drop: Vec<String>,
    },
    /// Add and drop payload indexes of a live collection (the replicas
    /// re-index in the background).
    Index {
        name: String,
        /// Index to add, `field:keyword|numeric|bool|text|datetime|geo`
        /// (repeatable).
        #[arg(long)]
        create: Vec<String>,
        /// Field whose index to drop (repeatable; applied first).
        #[arg(long)]
        drop: Vec<String>,
        /// Text indexes: Snowball stemmer ("english", ...; default none).
        #[arg(long, default_value = "")]
        text_stemmer: String,
        /// Text indexes: stop word list ("english"; default none).
        #[arg(long, default_value = "")]
        text_stop_words: String,
        /// Text indexes: keep accents (no ASCII folding).
        #[arg(long)]
        text_keep_accents: bool,
    },
    /// List collections.
    List,
    /// Describe one collection.
    Describe { name: String },
    /// Delete a collection and its points.
    Delete { name: String },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Fvecs,
    Npy,
    Jsonl,
}

#[derive(Subcommand)]
pub enum AliasCmd {
    /// Point ALIAS at COLLECTION (creates it, or switches it atomically).
    Set { alias: String, collection: String },
    /// Delete an alias (the collection stays).
    Delete { alias: String },
    /// List aliases, of one collection or all.
    List {
        #[arg(long, short)]
        collection: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum PointCmd {
    /// Import points from .fvecs, .npy or JSONL, in batches.
    Import {
        #[arg(long, short)]
        collection: String,
        file: PathBuf,
        /// File format (default: from the extension).
        #[arg(long, value_enum)]
        format: Option<Format>,
        /// Points per upsert request.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// First id for formats without ids (.fvecs, .npy): row i gets start_id + i.
        #[arg(long, default_value_t = 0)]
        start_id: u64,
    },
    /// Set, overwrite or delete payload keys, or clear payloads, of the
    /// points chosen by --ids, --filter or --all (vectors are kept).
    Payload(PayloadArgs),
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("select").required(true).args(["ids", "filter", "all"])))]
#[command(group(clap::ArgGroup::new("op").required(true).args(["set", "overwrite", "delete_keys", "clear"])))]
pub struct PayloadArgs {
    #[arg(long, short)]
    pub collection: String,
    /// Point ids, comma separated (numbers or UUIDs).
    #[arg(long)]
    pub ids: Option<String>,
    /// Filter as JSON (docs/filters.md).
    #[arg(long)]
    pub filter: Option<String>,
    /// Every point of the collection.
    #[arg(long)]
    pub all: bool,
    /// Merge these keys in (a JSON object).
    #[arg(long)]
    pub set: Option<String>,
    /// Replace the payload (a JSON object).
    #[arg(long)]
    pub overwrite: Option<String>,
    /// Remove these top-level keys, comma separated.
    #[arg(long)]
    pub delete_keys: Option<String>,
    /// Remove the whole payload.
    #[arg(long)]
    pub clear: bool,
}

#[derive(clap::Args)]
pub struct SearchArgs {
    #[arg(long, short)]
    pub collection: String,
    /// Query vector as comma-separated numbers.
    #[arg(long)]
    pub vector: String,
    #[arg(long, short = 'k', default_value_t = 10)]
    pub top_k: u32,
    /// Filter as JSON (see docs/filters.md).
    #[arg(long)]
    pub filter: Option<String>,
    #[arg(long)]
    pub ef: Option<u32>,
    #[arg(long)]
    pub exact: bool,
    /// int8/binary storage: candidates per result before re-scoring.
    #[arg(long)]
    pub oversampling: Option<f32>,
    /// int8/binary storage: score by the codes alone (no re-scoring).
    #[arg(long)]
    pub no_rescore: bool,
    #[arg(long)]
    pub with_payload: bool,
    #[arg(long)]
    pub with_vector: bool,
    #[arg(long)]
    pub score_threshold: Option<f32>,
}

#[derive(Subcommand)]
pub enum ClusterCmd {
    /// Nodes, shards and replicas: leader, term, applied index and lag.
    Status,
    /// Start a new cluster with one node as its first member. Talks to the
    /// node's internal address, not the coordinator; refused by a node that
    /// already belongs to a cluster. Other nodes join with `--join`.
    Init {
        /// Internal address of the node (host:port).
        #[arg(long)]
        node: String,
    },
    #[command(flatten)]
    Ops(cluster::OpsCmd),
}

fn print_table(t: Table) {
    println!("{t}");
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(header.to_vec());
    t
}

fn metric_name(m: i32) -> &'static str {
    match Metric::try_from(m) {
        Ok(Metric::Cosine) => "cosine",
        Ok(Metric::Dot) => "dot",
        Ok(Metric::L2) => "l2",
        _ => "?",
    }
}

/// `name:dim:metric[:multi]` as a named vector config.
fn parse_named(s: &str) -> Result<shoal_proto::v1::NamedVectorConfig> {
    let parts: Vec<&str> = s.split(':').collect();
    let (name, dim, metric, multi) = match parts.as_slice() {
        [n, d, m] => (n, d, m, false),
        [n, d, m, "multi"] => (n, d, m, true),
        _ => bail!("--vector {s:?}: expected name:dim:cosine|dot|l2 or name:dim:metric:multi"),
    };
    let dimension = dim.parse::<u32>().with_context(|| format!("--vector {s:?}: {dim:?} is not a dimension"))?;
    let metric = match *metric {
        "cosine" => Metric::Cosine,
        "dot" => Metric::Dot,
        "l2" => Metric::L2,
        m => bail!("--vector {s:?}: unknown metric {m:?} (cosine, dot or l2)"),
    };
    Ok(shoal_proto::v1::NamedVectorConfig { name: name.to_string(), dimension, metric: metric as i32, multivector: multi, ..Default::default() })
}

/// `f32`, `f16`, `int8` or `binary`.
fn storage_name(raw: i32) -> String {
    VectorStorage::try_from(raw).map_or("?", |s| s.as_str_name()).trim_start_matches("VECTOR_STORAGE_").replace("UNSPECIFIED", "F32").to_lowercase()
}

/// `ram`, `cached` or `cold`.
fn memory_name(raw: i32) -> String {
    shoal_proto::v1::VectorMemory::try_from(raw).map_or("?", |m| m.as_str_name()).trim_start_matches("VECTOR_MEMORY_").to_lowercase()
}

/// Storage kinds for `--storage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StorageArg {
    F32,
    F16,
    Int8,
    Binary,
}

impl From<StorageArg> for VectorStorage {
    fn from(s: StorageArg) -> Self {
        match s {
            StorageArg::F32 => VectorStorage::F32,
            StorageArg::F16 => VectorStorage::F16,
            StorageArg::Int8 => VectorStorage::Int8,
            StorageArg::Binary => VectorStorage::Binary,
        }
    }
}

/// Vector memory settings for `--memory`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MemoryArg {
    Ram,
    Cached,
    Cold,
}

impl From<MemoryArg> for shoal_proto::v1::VectorMemory {
    fn from(m: MemoryArg) -> Self {
        match m {
            MemoryArg::Ram => Self::Ram,
            MemoryArg::Cached => Self::Cached,
            MemoryArg::Cold => Self::Cold,
        }
    }
}

fn info_json(c: &CollectionInfo) -> serde_json::Value {
    let cfg = c.config.clone().unwrap_or_default();
    let h = cfg.hnsw.unwrap_or_default();
    json!({
        "name": cfg.name, "dimension": cfg.dimension, "metric": metric_name(cfg.metric), "shards": cfg.shard_count,
        "replication_factor": cfg.replication_factor, "points": c.points_count,
        "hnsw": {"m": h.m, "ef_construction": h.ef_construction, "ef_search": h.ef_search},
        "storage": storage_name(cfg.storage),
        "memory": memory_name(cfg.memory),
        "payload_indexes": cfg.payload_indexes.iter().map(|p| json!({"key": p.key, "type": PayloadIndexType::try_from(p.r#type).map(|t| t.as_str_name()).unwrap_or("?")})).collect::<Vec<_>>(),
        "vectors": cfg.vectors.iter().map(|v| json!({"name": v.name, "dimension": v.dimension, "metric": metric_name(v.metric), "multivector": v.multivector})).collect::<Vec<_>>(),
        "sparse_vectors": cfg.sparse_vectors.iter().map(|s| json!({"name": s.name, "modifier": shoal_proto::v1::SparseModifier::try_from(s.modifier).map(|m| m.as_str_name()).unwrap_or("?")})).collect::<Vec<_>>(),
    })
}

fn id_json(id: &Option<PointId>) -> serde_json::Value {
    match id.as_ref().and_then(|i| i.kind.clone()) {
        Some(point_id::Kind::Num(n)) => json!(n),
        Some(point_id::Kind::Uuid(u)) => json!(u),
        None => serde_json::Value::Null,
    }
}

fn parse_index(s: &str) -> Result<PayloadIndexType> {
    match s {
        "keyword" => Ok(PayloadIndexType::Keyword),
        "numeric" => Ok(PayloadIndexType::Numeric),
        "bool" => Ok(PayloadIndexType::Bool),
        "text" => Ok(PayloadIndexType::Text),
        "datetime" => Ok(PayloadIndexType::Datetime),
        "geo" => Ok(PayloadIndexType::Geo),
        _ => bail!("unknown index type {s:?}: use keyword, numeric, bool, text, datetime or geo"),
    }
}

fn json_id(v: &serde_json::Value, line: usize) -> Result<PointId> {
    match v {
        serde_json::Value::Number(n) => n.as_u64().map(PointId::from).with_context(|| format!("record {line}: id {n} is not an unsigned integer")),
        serde_json::Value::String(s) => Ok(PointId { kind: Some(point_id::Kind::Uuid(s.clone())) }),
        _ => bail!("record {line}: id must be an unsigned integer or UUID string"),
    }
}

static OPTIONS: std::sync::OnceLock<crate::ConnectOptions> = std::sync::OnceLock::new();

/// The connection options of this run (`--ca`, `--cert`, `SHOAL_API_KEY`...).
pub fn options() -> crate::ConnectOptions {
    OPTIONS.get().cloned().unwrap_or_default()
}

fn build_options(cli: &Cli) -> Result<crate::ConnectOptions> {
    let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let credentials = match (&cli.api_key, &cli.token_file) {
        (Some(_), Some(_)) => bail!("give an API key or a token file, not both"),
        (Some(k), None) => crate::Credentials::bearer(k)?,
        (None, Some(f)) => crate::Credentials::from_file(f)?,
        (None, None) => crate::Credentials::default(),
    };
    let identity = match (&cli.cert, &cli.key) {
        (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
        (None, None) => None,
        _ => bail!("--cert and --key go together"),
    };
    Ok(crate::ConnectOptions { ca_pem: cli.ca.as_ref().map(read).transpose()?, identity, server_name: cli.tls_server_name.clone(), credentials })
}

/// A client of the public API with this run's options.
pub async fn public_client(addr: &str) -> Result<Client> {
    Client::connect_with(addr, &options()).await.with_context(|| format!("connecting to {addr}"))
}

/// A channel to a node's internal API with this run's options (on a TLS
/// cluster: --ca plus the operator certificate).
pub async fn node_channel(addr: &str) -> Result<tonic::transport::Channel> {
    options().channel(addr, Some(std::time::Duration::from_secs(5))).await.with_context(|| format!("cannot reach node {addr}"))
}

pub async fn run(cli: Cli) -> Result<()> {
    let _ = OPTIONS.set(build_options(&cli)?);
    let cmd = match cli.cmd {
        Cmd::Bench(args) => return crate::bench::run(&cli.addr, args).await,
        Cmd::BenchHybrid(args) => return crate::bench_hybrid::run(&cli.addr, args).await,
        Cmd::Cluster(ClusterCmd::Ops(c)) => return cluster::run(c, cli.output).await,
        Cmd::Backup(c) => return cluster::run_backup(c, &cli.addr, cli.output).await,
        cmd => cmd,
    };
    let cli = Cli { cmd, ..cli };
    let client = public_client(&cli.addr).await?;
    let json_out = cli.output == Output::Json;
    match cli.cmd {
        Cmd::Collection(CollectionCmd::Create { name, dim, metric, shards, replication_factor, m, ef_construction, ef_search, f16, storage, memory, indexes, text_stemmer, text_stop_words, text_keep_accents, sparse, vectors }) => {
            let mut b = CollectionBuilder::new(name, dim, metric.into()).shards(shards).replication_factor(replication_factor).hnsw(m, ef_construction, ef_search);
            for v in &vectors {
                let c = parse_named(v)?;
                b = b.vector(c.name, c.dimension, Metric::try_from(c.metric).unwrap_or(Metric::Cosine), c.multivector);
            }
            for s in sparse {
                b = match s.split_once(':') {
                    None => b.sparse_vector(s, false),
                    Some((n, "idf")) => b.sparse_vector(n, true),
                    Some((_, m)) => bail!("--sparse {s:?}: unknown modifier {m:?} (use name or name:idf)"),
                };
            }
            if f16 {
                b = b.f16();
            }
            match (f16, storage) {
                (true, Some(s)) if s != StorageArg::F16 => bail!("--f16 and --storage {s:?} disagree"),
                (_, Some(s)) => b = b.storage(s.into()),
                _ => {}
            }
            if let Some(m) = memory {
                b = b.memory(m.into());
            }
            for spec in indexes {
                let (field, ty) = spec.split_once(':').with_context(|| format!("--index {spec:?}: expected field:type"))?;
                b = match parse_index(ty)? {
                    PayloadIndexType::Text => b.text_index(field, TextIndexParams { stemmer: text_stemmer.clone(), stop_words: text_stop_words.clone(), keep_accents: text_keep_accents }),
                    t => b.index(field, t),
                };
            }
            let info = client.create_collection(b.build()).await?;
            if json_out {
                println!("{}", info_json(&info));
            } else {
                println!("created collection {}", info.config.map(|c| c.name).unwrap_or_default());
            }
        }
        Cmd::Collection(CollectionCmd::Storage { name, storage, memory }) => {
            if storage.is_none() && memory.is_none() {
                bail!("give --storage, --memory or both");
            }
            let info = client.update_storage(&name, storage.map(Into::into), memory.map(Into::into)).await?;
            if json_out {
                println!("{}", info_json(&info));
            } else {
                let c = info.config.unwrap_or_default();
                println!("collection {name}: storage {}, memory {} (replicas rebuild in the background)", storage_name(c.storage), memory_name(c.memory));
            }
        }
        Cmd::Collection(CollectionCmd::Vectors { name, add, drop }) => {
            let add = add.iter().map(|v| parse_named(v)).collect::<Result<Vec<_>>>()?;
            let info = client.update_vectors(&name, add, drop).await?;
            if json_out {
                println!("{}", info_json(&info));
            } else {
                let names: Vec<String> = info.config.map(|c| c.vectors.into_iter().map(|v| v.name).collect()).unwrap_or_default();
                println!("collection {name} vectors: {}", names.join(", "));
            }
        }
        Cmd::Collection(CollectionCmd::Index { name, create, drop, text_stemmer, text_stop_words, text_keep_accents }) => {
            let mut specs = vec![];
            for spec in &create {
                let (field, ty) = spec.split_once(':').with_context(|| format!("--create {spec:?}: expected field:type"))?;
                let ty = parse_index(ty)?;
                let text = (ty == PayloadIndexType::Text).then(|| TextIndexParams { stemmer: text_stemmer.clone(), stop_words: text_stop_words.clone(), keep_accents: text_keep_accents });
                specs.push(PayloadIndexSpec { key: field.to_string(), r#type: ty as i32, text });
            }
            let info = client.update_payload_indexes(&name, specs, drop).await?;
            if json_out {
                println!("{}", info_json(&info));
            } else {
                let keys: Vec<String> = info.config.map(|c| c.payload_indexes.into_iter().map(|p| p.key).collect()).unwrap_or_default();
                println!("collection {name} indexes: {}", keys.join(", "));
            }
        }
        Cmd::Collection(CollectionCmd::List) => {
            let cols = client.list_collections().await?;
            if json_out {
                println!("{}", json!(cols.iter().map(info_json).collect::<Vec<_>>()));
            } else {
                let mut t = table(&["NAME", "DIM", "METRIC", "SHARDS", "RF", "POINTS"]);
                for c in &cols {
                    let cfg = c.config.clone().unwrap_or_default();
                    t.add_row(vec![cfg.name, cfg.dimension.to_string(), metric_name(cfg.metric).into(), cfg.shard_count.to_string(), cfg.replication_factor.to_string(), c.points_count.to_string()]);
                }
                print_table(t);
            }
        }
        Cmd::Collection(CollectionCmd::Describe { name }) => {
            let info = client.get_collection(&name).await?;
            let j = info_json(&info);
            if json_out {
                println!("{j}");
            } else {
                let mut t = table(&["FIELD", "VALUE"]);
                for (k, v) in j.as_object().unwrap() {
                    t.add_row(vec![k.clone(), v.to_string()]);
                }
                print_table(t);
            }
        }
        Cmd::Collection(CollectionCmd::Delete { name }) => {
            client.delete_collection(&name).await?;
            if json_out {
                println!("{}", json!({"deleted": name}));
            } else {
                println!("deleted collection {name}");
            }
        }
        Cmd::Point(PointCmd::Import { collection, file, format, batch, start_id }) => {
            anyhow::ensure!((1..=shoal_proto::limits::MAX_UPSERT_BATCH).contains(&batch), "--batch must be 1..={}", shoal_proto::limits::MAX_UPSERT_BATCH);
            let format = match format {
                Some(f) => f,
                None => match file.extension().and_then(|e| e.to_str()) {
                    Some("fvecs") => Format::Fvecs,
                    Some("npy") => Format::Npy,
                    Some("jsonl") | Some("json") => Format::Jsonl,
                    _ => bail!("cannot tell the format of {}; pass --format", file.display()),
                },
            };
            let points: Vec<Point> = match format {
                Format::Fvecs => dataset::read_fvecs(&file)?.into_iter().enumerate().map(|(i, v)| Point::new(start_id + i as u64, v)).collect(),
                Format::Npy => dataset::read_npy(&file)?.into_iter().enumerate().map(|(i, v)| Point::new(start_id + i as u64, v)).collect(),
                Format::Jsonl => dataset::read_jsonl(&file)?
                    .into_iter()
                    .enumerate()
                    .map(|(i, r)| {
                        let sparse = r.sparse.into_iter().map(|(k, v)| (k, shoal_proto::v1::SparseVector { indices: v.indices, values: v.values })).collect();
                        let vectors = r
                            .vectors
                            .into_iter()
                            .map(|(k, v)| {
                                let v = match v {
                                    dataset::JsonNamed::Dense(values) => shoal_proto::v1::NamedVector { values, rows: vec![] },
                                    dataset::JsonNamed::Multi(rows) => shoal_proto::v1::NamedVector { values: vec![], rows: rows.into_iter().map(|values| shoal_proto::v1::DenseVector { values }).collect() },
                                };
                                (k, v)
                            })
                            .collect();
                        Ok(Point { id: json_id(&r.id, i + 1)?, vector: r.vector, payload: r.payload, sparse, vectors })
                    })
                    .collect::<Result<_>>()?,
            };
            let total = points.len() as u64;
            let bar = if json_out { ProgressBar::hidden() } else { ProgressBar::new(total) };
            bar.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} points {per_sec} eta {eta}").unwrap());
            let t = Instant::now();
            let mut done = 0u64;
            let mut it = points.into_iter().peekable();
            while it.peek().is_some() {
                let chunk: Vec<Point> = it.by_ref().take(batch).collect();
                let n = chunk.len() as u64;
                client.upsert(&collection, chunk).await.with_context(|| format!("upserting points {done}..{}", done + n))?;
                done += n;
                bar.set_position(done);
            }
            bar.finish_and_clear();
            let secs = t.elapsed().as_secs_f64();
            if json_out {
                println!("{}", json!({"imported": done, "seconds": secs, "points_per_s": done as f64 / secs}));
            } else {
                println!("imported {done} points in {secs:.1} s ({:.0} points/s)", done as f64 / secs);
            }
        }
        Cmd::Alias(AliasCmd::Set { alias, collection }) => {
            client.update_aliases(vec![crate::alias_put(&alias, &collection)]).await?;
            if json_out {
                println!("{}", json!({"alias": alias, "collection": collection}));
            } else {
                println!("alias {alias} -> {collection}");
            }
        }
        Cmd::Alias(AliasCmd::Delete { alias }) => {
            client.update_aliases(vec![crate::alias_delete(&alias)]).await?;
            if json_out {
                println!("{}", json!({"deleted": alias}));
            } else {
                println!("deleted alias {alias}");
            }
        }
        Cmd::Alias(AliasCmd::List { collection }) => {
            let aliases = client.list_aliases(collection.as_deref()).await?;
            if json_out {
                println!("{}", serde_json::Value::Array(aliases.iter().map(|a| json!({"alias": a.alias, "collection": a.collection})).collect()));
            } else {
                let mut t = table(&["ALIAS", "COLLECTION"]);
                for a in aliases {
                    t.add_row(vec![a.alias, a.collection]);
                }
                print_table(t);
            }
        }
        Cmd::Point(PointCmd::Payload(a)) => {
            let select = match (&a.ids, &a.filter) {
                (Some(ids), _) => crate::Select::Ids(ids.split(',').filter(|x| !x.trim().is_empty()).map(query::parse_id).collect()),
                (None, Some(f)) => crate::Select::Filter(filter::from_json(&serde_json::from_str(f).context("--filter is not JSON")?)?),
                (None, None) => crate::Select::All,
            };
            let obj = |name: &str, v: &str| -> anyhow::Result<serde_json::Value> { serde_json::from_str(v).with_context(|| format!("--{name} is not JSON")) };
            let op = match (&a.set, &a.overwrite, &a.delete_keys) {
                (Some(v), _, _) => crate::PayloadOp::Set(obj("set", v)?),
                (None, Some(v), _) => crate::PayloadOp::Overwrite(obj("overwrite", v)?),
                (None, None, Some(k)) => crate::PayloadOp::DeleteKeys(k.split(',').map(|x| x.trim().to_string()).filter(|x| !x.is_empty()).collect()),
                (None, None, None) => crate::PayloadOp::Clear,
            };
            let n = client.update_payload(&a.collection, select, op).await?;
            if json_out {
                println!("{}", json!({"updated": n}));
            } else {
                println!("updated the payload of {n} points");
            }
        }
        Cmd::Query(a) => query::run(&client, &a, json_out).await?,
        Cmd::Search(a) => {
            let vector = a.vector.split(',').map(|x| x.trim().parse::<f32>().with_context(|| format!("--vector: {x:?} is not a number"))).collect::<Result<Vec<_>>>()?;
            let mut s = SearchBuilder::new(&a.collection, vector, a.top_k).exact(a.exact);
            if let Some(f) = &a.filter {
                s = s.filter(filter::from_json(&serde_json::from_str(f).context("--filter is not JSON")?)?);
            }
            if let Some(ef) = a.ef {
                s = s.ef(ef);
            }
            if let Some(o) = a.oversampling {
                s = s.oversampling(o);
            }
            if a.no_rescore {
                s = s.rescore(false);
            }
            if a.with_payload {
                s = s.with_payload();
            }
            if a.with_vector {
                s = s.with_vector();
            }
            if let Some(t) = a.score_threshold {
                s = s.score_threshold(t);
            }
            let hits = client.search(s).await?;
            let rows: Vec<serde_json::Value> = hits
                .iter()
                .map(|h| json!({"id": id_json(&h.id), "score": h.score, "payload": h.payload.as_ref().map(serde_json::Value::from), "vector": if h.vector.is_empty() { None } else { Some(&h.vector) }}))
                .collect();
            if json_out {
                println!("{}", json!(rows));
            } else {
                let mut t = table(&["ID", "SCORE", "PAYLOAD"]);
                for r in rows {
                    t.add_row(vec![r["id"].to_string(), format!("{:.4}", r["score"].as_f64().unwrap_or(0.0)), if r["payload"].is_null() { String::new() } else { r["payload"].to_string() }]);
                }
                print_table(t);
            }
        }
        Cmd::Cluster(ClusterCmd::Init { node }) => {
            let mut meta = shoal_proto::internal::v1::meta_client::MetaClient::new(node_channel(&node).await?);
            let map = meta.init_cluster(shoal_proto::internal::v1::InitClusterRequest {}).await.map_err(|s| anyhow::anyhow!("{}", s.message()))?.into_inner();
            if json_out {
                println!("{}", json!({"epoch": map.epoch, "nodes": map.nodes.iter().map(|n| json!({"id": n.id, "address": n.address})).collect::<Vec<_>>()}));
            } else {
                println!("cluster initialised on node {node} (map epoch {}); start the other nodes with --join {node}", map.epoch);
            }
        }
        Cmd::Cluster(ClusterCmd::Status) => {
            let s = client.cluster_status().await?;
            if json_out {
                let nodes: Vec<_> = s.nodes.iter().map(|n| json!({"id": n.id, "address": n.address, "state": NodeState::try_from(n.state).map(|x| x.as_str_name()).unwrap_or("?"), "meta_role": n.meta_role, "device": n.device, "version": n.version, "gpu": n.gpu.as_ref().map(|g| json!({"name": g.name, "memory_used_bytes": g.memory_used_bytes, "memory_total_bytes": g.memory_total_bytes, "mirrors": g.mirrors, "mirrored_bytes": g.mirrored_bytes, "scans": g.scans, "fallbacks": g.fallbacks, "breaker_open": g.breaker_open}))})).collect();
                let shards: Vec<_> = s
                    .shards
                    .iter()
                    .map(|sh| json!({"collection": sh.collection, "shard": sh.shard_id, "range": [sh.range_start, sh.range_end], "replicas": sh.replicas.iter().map(|r| json!({"node": r.node_id, "state": ReplicaState::try_from(r.state).map(|x| x.as_str_name()).unwrap_or("?"), "leader": r.leader, "term": r.term, "applied_index": r.applied_index, "lag": r.lag, "points": r.points, "unindexed": r.unindexed, "reason": r.reason})).collect::<Vec<_>>()}))
                    .collect();
                println!("{}", json!({"epoch": s.epoch, "nodes": nodes, "shards": shards}));
            } else {
                println!("cluster map epoch {}", s.epoch);
                let mut t = table(&["NODE", "ADDRESS", "STATE", "META", "DEVICE", "VERSION"]);
                for n in &s.nodes {
                    t.add_row(vec![
                        n.id.to_string(),
                        n.address.clone(),
                        NodeState::try_from(n.state).map(|x| x.as_str_name()).unwrap_or("?").trim_start_matches("NODE_STATE_").to_string(),
                        n.meta_role.clone(),
                        match &n.gpu {
                            Some(g) => format!("{} ({} MiB of {} used, {} graphs mirrored, {} fallbacks{})", n.device, g.memory_used_bytes >> 20, g.memory_total_bytes >> 20, g.mirrors, g.fallbacks, if g.breaker_open { ", breaker open" } else { "" }),
                            None => n.device.clone(),
                        },
                        n.version.clone(),
                    ]);
                }
                print_table(t);
                let mut t = table(&["COLLECTION", "SHARD", "NODE", "LEADER", "STATE", "TERM", "APPLIED", "LAG", "POINTS", "UNINDEXED"]);
                for sh in &s.shards {
                    for r in &sh.replicas {
                        t.add_row(vec![
                            sh.collection.clone(),
                            sh.shard_id.to_string(),
                            r.node_id.to_string(),
                            if r.leader { "*".into() } else { String::new() },
                            ReplicaState::try_from(r.state).map(|x| x.as_str_name()).unwrap_or("?").trim_start_matches("REPLICA_STATE_").to_string(),
                            r.term.to_string(),
                            r.applied_index.to_string(),
                            r.lag.to_string(),
                            r.points.to_string(),
                            r.unindexed.to_string(),
                        ]);
                    }
                }
                print_table(t);
                for sh in &s.shards {
                    for r in sh.replicas.iter().filter(|r| !r.reason.is_empty()) {
                        println!("replica {}/{} on node {} is quarantined: {}", sh.collection, sh.shard_id, r.node_id, r.reason);
                    }
                }
            }
        }
        Cmd::Bench(_) | Cmd::BenchHybrid(_) | Cmd::Backup(_) | Cmd::Cluster(ClusterCmd::Ops(_)) => unreachable!("handled above"),
    }
    Ok(())
}
