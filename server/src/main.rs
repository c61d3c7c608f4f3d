//! `shoal`: the Shoal server.
//!
//! - `shoal node`: a data node (internal API).
//! - `shoal coordinator`: a stateless router serving the public API.
//! - `shoal dev`: both in one process with embedded defaults: the quickest
//!   way to a working endpoint, optionally loaded with a sample collection.
//! - `shoal certs`: a development CA and certificates (docs/security.md).
//! - `shoal handoff`, `shoal probe`: the Kubernetes preStop hook and
//!   probes, over the node's own certificate when TLS is on.
//!
//! This crate sits above both `shoal-node` and `shoal-coordinator` (neither
//! imports the other); [`security`] turns the security flags into the
//! TLS context, authenticator and audit log of `shoal-common`.
mod security;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use security::{Security, SecurityArgs};
use shoal_common::tls::Expect;
use shoal_coordinator::router::LocalNode;
use shoal_coordinator::CoordinatorConfig;
use shoal_node::service::shard::ShardService;
use shoal_node::config::NodeArgs;
use shoal_node::engine::{Engine, EngineConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;

#[derive(Parser)]
#[command(name = "shoal", version, about = "Shoal distributed vector database server")]
struct Cli {
    /// Log filter, e.g. `info` or `shoal_node=debug` (RUST_LOG syntax).
    /// openraft's own INFO lines (whole Raft states) stay off unless asked
    /// for (`--log info,openraft=info`).
    #[arg(long, env = "SHOAL_LOG", default_value = "info,openraft=warn", global = true)]
    log: String,
    /// Emit logs as JSON lines.
    #[arg(long, env = "SHOAL_LOG_JSON", global = true)]
    log_json: bool,
    /// Export traces over OTLP/gRPC to this endpoint (e.g.
    /// `http://otel-collector:4317`). Off when unset.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", global = true)]
    otlp_endpoint: Option<String>,
    /// Which spans are exported (RUST_LOG syntax), independent of `--log`.
    #[arg(long, env = "SHOAL_TRACE_FILTER", default_value = shoal_common::telemetry::DEFAULT_TRACE_FILTER, global = true)]
    trace_filter: String,
    /// Serve Prometheus metrics on `http://ADDR/metrics` (e.g.
    /// `0.0.0.0:9400`; port 0 picks a free one). Off when unset.
    #[arg(long, env = "SHOAL_METRICS_LISTEN", global = true)]
    metrics_listen: Option<String>,
    #[command(flatten)]
    security: SecurityArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a data node.
    Node(NodeArgs),
    /// Run a coordinator.
    Coordinator {
        /// Public API listen address.
        #[arg(long, env = "SHOAL_LISTEN", default_value = "127.0.0.1:6333")]
        listen: String,
        /// Internal addresses of cluster nodes to load the cluster map from
        /// (comma-separated; any node of the cluster will do).
        #[arg(long, env = "SHOAL_META_ADDR", default_value = "127.0.0.1:7400", value_delimiter = ',')]
        meta: Vec<String>,
        /// Deadline for each shard call, in milliseconds.
        #[arg(long, env = "SHOAL_SHARD_DEADLINE_MS", default_value_t = 30_000)]
        shard_deadline_ms: u64,
    },
    /// Hand the shard leaderships of a running node to its followers
    /// (before a planned stop: the Kubernetes preStop hook). Exits 0 even
    /// when some did not move; the stop then costs an election for those.
    Handoff {
        /// Internal address of the node.
        #[arg(long, default_value = "127.0.0.1:7400")]
        node: String,
        /// This node's id, for --tls-dir (default: from SHOAL_NODE_ID or
        /// SHOAL_POD_NAME, as `shoal node` takes it).
        #[arg(long, env = "SHOAL_NODE_ID")]
        node_id: Option<u64>,
    },
    /// Check a node's health over its internal API (the Kubernetes probes:
    /// exec, because the internal port needs a client certificate). Exits
    /// 0 when SERVING.
    Probe {
        /// Internal address of the node.
        #[arg(long, default_value = "127.0.0.1:7400")]
        node: String,
        /// Check readiness (caught up) instead of liveness.
        #[arg(long)]
        ready: bool,
        /// This node's id, for --tls-dir (default: from SHOAL_NODE_ID or
        /// SHOAL_POD_NAME).
        #[arg(long, env = "SHOAL_NODE_ID")]
        node_id: Option<u64>,
        /// Probe a coordinator's public API instead of a node.
        #[arg(long)]
        public: bool,
    },
    /// Write a development CA and certificates for a test cluster: ca.pem,
    /// node-N.pem/.key, coordinator.pem/.key, operator.pem/.key.
    Certs {
        /// Output directory.
        #[arg(long)]
        dir: PathBuf,
        /// Node certificates to issue (node-1 .. node-N).
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// Host names and addresses every certificate is valid for.
        #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1")]
        hosts: Vec<String>,
    },
    /// Run a coordinator and a node in one process (embedded defaults).
    Dev {
        /// Public API listen address (port 0 picks a free port).
        #[arg(long, env = "SHOAL_LISTEN", default_value = "127.0.0.1:6333")]
        listen: String,
        /// Data directory.
        #[arg(long, env = "SHOAL_DATA_DIR", default_value = "./shoal-data")]
        data_dir: PathBuf,
        /// Load a generated sample collection `sample` with this many points
        /// (skipped if it already exists).
        #[arg(long, default_value_t = 0)]
        sample: u64,
        /// Keep data in memory only.
        #[arg(long)]
        in_memory: bool,
        /// RocksDB memtable budget in MiB.
        #[arg(long, env = "SHOAL_MEMTABLE_MB", default_value_t = 16)]
        memtable_mb: usize,
        /// RocksDB block cache in MiB.
        #[arg(long, env = "SHOAL_BLOCK_CACHE_MB", default_value_t = 8)]
        block_cache_mb: usize,
        /// Filtered searches allowing at most this many points scan
        /// exactly (unset: chosen per search by estimated cost).
        #[arg(long, env = "SHOAL_EXACT_SCAN_THRESHOLD")]
        exact_scan_threshold: Option<u64>,
        /// Microseconds a single exact search waits for concurrent ones
        /// to share a scan (only while others are in flight).
        #[arg(long, env = "SHOAL_SCAN_BATCH_WINDOW_US", default_value_t = 100, value_parser = clap::value_parser!(u64).range(0..=100_000))]
        scan_batch_window_us: u64,
        /// Exact scans on a GPU: auto, on (refuse to start without one)
        /// or off.
        #[arg(long, env = "SHOAL_GPU", value_enum, default_value_t = shoal_node::scan::device::GpuMode::Auto)]
        gpu: shoal_node::scan::device::GpuMode,
    },
}

/// Serves `/metrics` on `addr` if set; `collect` refreshes the process's
/// gauges before each scrape. Prints the address ("metrics=").
async fn serve_metrics(addr: Option<&str>, security: &Security, collect: std::sync::Arc<dyn Fn() + Send + Sync>, stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let Some(addr) = addr.filter(|a| !a.is_empty()) else { return Ok(()) };
    let (listener, bound) = bind(addr).await?;
    let tls = security.tls.clone();
    println!("shoal metrics ready: metrics={}://{bound}/metrics", if tls.is_some() { "https" } else { "http" });
    tokio::spawn(async move {
        if let Err(e) = shoal_common::telemetry::serve_metrics(listener, tls, collect, wait(stop)).await {
            tracing::error!(error = %e, "metrics endpoint failed");
        }
    });
    Ok(())
}

fn node_collector(engine: std::sync::Arc<Engine>) -> std::sync::Arc<dyn Fn() + Send + Sync> {
    let device = shoal_node::server::device();
    std::sync::Arc::new(move || shoal_node::metrics::collect(&engine, &device))
}

/// How to run `shoalctl`, as this process was started: through cargo
/// (`cargo run` sets `CARGO`), as the `shoalctl` beside this binary, or
/// from `PATH`.
fn shoalctl_command() -> String {
    if std::env::var_os("CARGO").is_some() {
        return "cargo run --release --bin shoalctl --".into();
    }
    match std::env::current_exe().map(|e| e.with_file_name("shoalctl")) {
        Ok(p) if p.is_file() => p.display().to_string(),
        _ => "shoalctl".into(),
    }
}

/// Resolves on SIGINT or SIGTERM.
fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        let _ = tx.send(true);
    });
    rx
}

async fn wait(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

async fn bind(addr: &str) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    let a = l.local_addr()?;
    Ok((l, a))
}

type Served = (tokio::task::JoinHandle<anyhow::Result<()>>, SocketAddr, std::sync::Arc<Engine>);

/// Opens and serves a node. With `wait_join` it returns only once the node
/// is registered in the cluster map (`shoal dev`, whose coordinator needs
/// the map to name this node's current address).
async fn run_node(args: NodeArgs, security: &Security, stop: watch::Receiver<bool>, in_memory: bool, wait_join: bool) -> anyhow::Result<Served> {
    let (listener, addr) = bind(&args.internal_listen).await?;
    if let Some(id) = security.tls.as_ref().and_then(|t| t.identity()) {
        // Other nodes check Raft messages and registrations against it.
        anyhow::ensure!(id == shoal_common::identity::Identity::Node(args.node_id), "this node is node {} but its certificate names {id} (its URI SAN must be {})", args.node_id, shoal_common::identity::Identity::Node(args.node_id).uri());
    } else if security.tls.is_some() {
        anyhow::bail!("the node's certificate names no Shoal identity: its URI SAN must be {}", shoal_common::identity::Identity::Node(args.node_id).uri());
    }
    let device = shoal_node::scan::device::init(args.gpu).with_context(|| format!("--gpu {:?}", args.gpu).to_lowercase())?;
    let advertise = args.advertise.clone().unwrap_or_else(|| addr.to_string());
    let cfg = EngineConfig { node_id: args.node_id, data_dir: args.data_dir.clone(), advertise, in_memory, rocks: args.rocks(), plan: shoal_node::shard::SearchPlan { exact_scan_threshold: args.exact_scan_threshold, partitions: args.filter_partitions, batch_window: std::time::Duration::from_micros(args.scan_batch_window_us) }, raft: args.raft(), backup_root: args.backup_root.clone(), min_free_disk: if in_memory { 0 } else { args.min_free_disk_mb.saturating_mul(1 << 20) }, tls: security.tls.clone() };
    let engine = tokio::task::spawn_blocking(move || Engine::open(cfg)).await?.context("opening node storage")?;
    tracing::info!(node_id = args.node_id, %addr, data_dir = %args.data_dir.display(), simd = %shoal_node::index::simd_backends(), %device, "node serving internal API");
    let every = Duration::from_secs(args.index_save_interval);
    let internal_security = shoal_node::server::Security { tls: security.tls.clone(), audit: security.audit.clone(), reflection: security.reflection };
    let h = tokio::spawn(shoal_node::server::serve_internal(engine.clone(), listener, every, internal_security, wait(stop)));
    let empty = !engine.in_cluster();
    let others: Vec<String> = args.join.iter().filter(|s| !s.is_empty() && s.as_str() != engine.advertise()).cloned().collect();
    let tls = security.tls.clone();
    if args.bootstrap && !engine.in_cluster() && !others.is_empty() && seeds_have_cluster(&others, &tls).await {
        tracing::warn!(seeds = ?others, "--bootstrap ignored: the seeds already form a cluster (this node lost its data or starts late); joining it");
    } else if args.bootstrap && !engine.in_cluster() {
        match engine.init_cluster().await {
            Ok(map) => tracing::info!(epoch = map.epoch, "started a new cluster"),
            Err(e) => tracing::error!(error = %e, "bootstrapping the cluster failed"),
        }
    }
    // Register through the seeds; a member whose address changed since
    // its last start (a new port, a rescheduled pod) re-registers through
    // its own Meta service, which forwards to the metadata leader.
    let mut seeds: Vec<String> = args.join.iter().filter(|s| !s.is_empty()).cloned().collect();
    let listed = engine.cluster_map().nodes.iter().any(|n| n.id == engine.node_id() && n.address == engine.advertise());
    if engine.in_cluster() && !listed {
        seeds.push(engine.advertise().to_string());
    }
    if seeds.is_empty() {
        if !engine.in_cluster() {
            tracing::warn!("this node belongs to no cluster: run `shoalctl cluster init --node {addr}`, or restart it with --join SEED or --bootstrap");
        }
    } else {
        // An empty data directory joining a running cluster (it did not
        // just start one): note the collections that exist already.
        let note = empty && !engine.in_cluster();
        let join = tokio::spawn(join_cluster(engine.clone(), seeds, note, tls));
        if wait_join {
            join.await?;
        }
    }
    Ok((h, addr, engine))
}

type Tls = Option<std::sync::Arc<shoal_common::tls::TlsContext>>;

/// A channel to a node's internal API (with TLS: the node's certificate
/// must name a node).
async fn node_channel(addr: &str, tls: &Tls) -> anyhow::Result<tonic::transport::Channel> {
    shoal_common::tls::connect(addr, tls.clone(), Expect::Node, Duration::from_secs(3)).await.map_err(|e| anyhow::anyhow!("cannot reach node {addr}: {e}: {}", std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default()))
}

/// The cluster map a seed answers with, or `None` when it does not answer
/// within 2 s.
async fn seed_map(seed: &str, tls: &Tls) -> Option<shoal_proto::internal::v1::ClusterMap> {
    use shoal_proto::internal::v1::{meta_client::MetaClient, GetClusterMapRequest};
    let ask = async { MetaClient::new(node_channel(seed, tls).await.ok()?).get_cluster_map(GetClusterMapRequest {}).await.ok() };
    tokio::time::timeout(Duration::from_secs(2), ask).await.ok().flatten().map(|r| r.into_inner())
}

/// Decides, for a node started with both `--bootstrap` and `--join` (pod 0
/// of a StatefulSet, `shoal-0` in compose), whether a cluster exists
/// already: true as soon as one seed answers with a map that lists nodes;
/// false only once every seed has answered and none belongs to a cluster.
/// Seeds that do not answer are asked again every 2 s, never guessed
/// about, so an empty pod 0 never starts a second cluster beside a running
/// one.
async fn seeds_have_cluster(seeds: &[String], tls: &Tls) -> bool {
    let started = std::time::Instant::now();
    let mut warned = false;
    loop {
        let mut silent = vec![];
        for seed in seeds {
            match seed_map(seed, tls).await {
                Some(map) if !map.nodes.is_empty() => return true,
                Some(_) => {}
                None => silent.push(seed.as_str()),
            }
        }
        if silent.is_empty() {
            return false;
        }
        if !warned && started.elapsed() > Duration::from_secs(10) {
            tracing::warn!(seeds = ?silent, "waiting for these seeds to answer before deciding whether to bootstrap a new cluster");
            warned = true;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Reads a seed's map (retrying until one lists nodes) and records its
/// collections as older than this data directory.
async fn note_existing_collections(engine: &Engine, seeds: &[String], tls: &Tls) {
    let mut backoff = Duration::from_millis(100);
    loop {
        for seed in seeds {
            let Some(map) = seed_map(seed, tls).await.filter(|m| !m.nodes.is_empty()) else { continue };
            if let Err(e) = engine.note_preexisting(&map) {
                // Storage failing here fails everything else too; joining
                // anyway keeps the node's errors where operators look.
                tracing::error!(error = %e, "recording the cluster's existing collections failed");
            }
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Registers this node through the first seed that answers, retrying with
/// backoff until one does. Registration is idempotent and keeps the node's
/// address current in the map. With `note_existing` (an empty data
/// directory joining), first records the cluster's existing collections.
async fn join_cluster(engine: std::sync::Arc<Engine>, seeds: Vec<String>, note_existing: bool, tls: Tls) {
    use shoal_proto::internal::v1::{meta_client::MetaClient, RegisterNodeRequest};
    let req = RegisterNodeRequest { node_id: engine.node_id(), address: engine.advertise().to_string(), incarnation: engine.incarnation() };
    // Before registering (which starts replication to this node): the
    // collections a seed's map already holds (Engine::note_preexisting).
    if note_existing {
        note_existing_collections(&engine, &seeds, &tls).await;
    }
    let mut backoff = Duration::from_millis(100);
    loop {
        if engine.is_meta_leader() {
            match engine.register_node(req.node_id, req.address.clone(), req.incarnation).await {
                Ok(_) => return,
                Err(e) => tracing::debug!(error = %e, "registration on this node (the metadata leader) failed"),
            }
        }
        for seed in &seeds {
            let res = async {
                let mut c = MetaClient::new(node_channel(seed, &tls).await.map_err(|e| e.to_string())?);
                c.register_node(req.clone()).await.map_err(|s| s.message().to_string())
            }
            .await;
            match res {
                Ok(map) => {
                    tracing::info!(seed = %seed, epoch = map.get_ref().epoch, "registered with the cluster");
                    return;
                }
                Err(e) => tracing::debug!(seed = %seed, error = %e, "registration attempt failed"),
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
        if backoff == Duration::from_secs(5) {
            tracing::warn!(seeds = ?seeds, "still trying to register with the cluster");
        }
    }
}

fn main() -> anyhow::Result<()> {
    // Before any thread exists (see shoal_node::memory).
    shoal_node::memory::tune_allocator();
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (service, instance) = match &cli.cmd {
        Cmd::Node(a) => ("shoal-node", a.pod_name.clone().unwrap_or_else(|| format!("node-{}", a.node_id))),
        Cmd::Coordinator { listen, .. } => ("shoal-coordinator", listen.clone()),
        Cmd::Dev { listen, .. } => ("shoal-dev", listen.clone()),
        Cmd::Handoff { node, .. } => ("shoal-handoff", node.clone()),
        Cmd::Probe { node, .. } => ("shoal-probe", node.clone()),
        Cmd::Certs { .. } => ("shoal-certs", String::new()),
    };
    let telemetry_cfg = shoal_common::telemetry::TelemetryConfig {
        service: service.into(),
        instance,
        filter: cli.log.clone(),
        json: cli.log_json,
        otlp_endpoint: cli.otlp_endpoint.clone(),
        trace_filter: cli.trace_filter.clone(),
    };
    let mut telemetry = shoal_common::telemetry::init(&telemetry_cfg)?;
    let res = serve(cli).await;
    // The last audit lines reach their sink before the process ends.
    if let Some(a) = AUDIT.get() {
        let a = a.clone();
        let _ = tokio::task::spawn_blocking(move || a.flush(Duration::from_secs(2))).await;
    }
    // Export the last spans (blocking: off the async workers).
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    res
}

/// The socket addresses `addrs` name (for the loopback check; a name that
/// does not resolve counts as not loopback).
fn listen_addrs(addrs: &[&str]) -> Vec<SocketAddr> {
    use std::net::ToSocketAddrs;
    addrs.iter().filter(|a| !a.is_empty()).flat_map(|a| a.to_socket_addrs().map(|i| i.collect::<Vec<_>>()).unwrap_or_else(|_| vec![SocketAddr::from(([0, 0, 0, 0], 0))])).collect()
}

async fn serve(cli: Cli) -> anyhow::Result<()> {
    let stop = shutdown_signal();
    let metrics = cli.metrics_listen.clone();
    let metrics_addr = metrics.clone().unwrap_or_default();
    match cli.cmd {
        Cmd::Node(args) => {
            let args = args.resolve().map_err(anyhow::Error::msg)?;
            let security = cli.security.build(&listen_addrs(&[&args.internal_listen, &metrics_addr]), "the internal API", Some(args.node_id))?;
            let (h, addr, engine) = run_node(args, &security, stop.clone(), false, false).await?;
            serve_metrics(metrics.as_deref(), &security, node_collector(engine), stop).await?;
            println!("shoal node ready: internal={addr}");
            h.await??;
        }
        Cmd::Coordinator { listen, meta, shard_deadline_ms } => {
            let security = cli.security.build(&listen_addrs(&[&listen, &metrics_addr]), "the public API", None)?;
            if security.auth.is_none() {
                tracing::warn!("authentication is off: every client of the public API may read, write and drop every collection (set --api-keys-file or a JWT key)");
            }
            let (listener, addr) = bind(&listen).await?;
            serve_metrics(metrics.as_deref(), &security, std::sync::Arc::new(|| {}), stop.clone()).await?;
            println!("shoal coordinator ready: public={addr} meta={}", meta.join(","));
            let cfg = CoordinatorConfig { seeds: meta, shard_deadline: Duration::from_millis(shard_deadline_ms), local: None, tls: security.tls, auth: security.auth, audit: security.audit, reflection: security.reflection };
            shoal_coordinator::serve(cfg, listener, wait(stop)).await?;
        }
        Cmd::Handoff { node, node_id } => {
            use shoal_proto::internal::v1::{meta_client::MetaClient, HandOffRequest};
            let tls = cli.security.tls(node_id.or_else(pod_node_id))?;
            let ch = shoal_common::tls::connect(&node, tls, Expect::Node, Duration::from_secs(3)).await.with_context(|| format!("cannot reach node {node}"))?;
            let r = MetaClient::new(ch).hand_off(HandOffRequest::default()).await.map_err(|s| anyhow::anyhow!("{}", s.message()))?.into_inner();
            for m in &r.moved {
                println!("moved {m}");
            }
            for f in &r.failed {
                println!("kept {f}");
            }
        }
        Cmd::Probe { node, ready, node_id, public } => {
            use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};
            let tls = cli.security.tls(node_id.or_else(pod_node_id))?;
            let expect = if public { Expect::Any } else { Expect::Node };
            let ch = shoal_common::tls::connect(&node, tls, expect, Duration::from_secs(3)).await.with_context(|| format!("cannot reach {node}"))?;
            let service = if ready { shoal_node::server::READY_SERVICE.to_string() } else { String::new() };
            let st = HealthClient::new(ch).check(HealthCheckRequest { service }).await.map_err(|s| anyhow::anyhow!("health check failed: {}", s.message()))?.into_inner().status;
            anyhow::ensure!(st == ServingStatus::Serving as i32, "not serving (status {st})");
            println!("serving");
        }
        Cmd::Certs { dir, nodes, hosts } => {
            let key = security::write_dev_pki(&dir, nodes, &hosts)?;
            println!("wrote a development CA, certificates for nodes 1..={nodes}, a coordinator and an operator, and an admin API key to {} (valid for {})", dir.display(), hosts.join(", "));
            println!("admin API key: {key}");
        }
        Cmd::Dev { listen, data_dir, sample, in_memory, memtable_mb, block_cache_mb, exact_scan_threshold, scan_batch_window_us, gpu } => {
            let listens = listen_addrs(&[&listen, &metrics_addr]);
            let mut sec_args = cli.security.clone();
            let configured = sec_args.tls_files(Some(1))?.is_some() || sec_args.api_keys_file.is_some() || sec_args.jwt_secret_file.is_some() || sec_args.jwt_public_key_file.is_some();
            let mut dev_key = None;
            if !configured && !sec_args.insecure && listens.iter().any(|a| !a.ip().is_loopback()) {
                // Off loopback, dev is never open: a throwaway CA and an
                // admin key, made once in the data directory.
                let (args, key) = security::dev_defaults(&data_dir, listens.first().expect("an address"))?;
                sec_args = SecurityArgs { audit_log: sec_args.audit_log.clone(), reflection: sec_args.reflection, ..args };
                dev_key = Some(key);
            }
            let security = sec_args.build(&listens, "the public API", Some(1))?;
            let args = NodeArgs {
                node_id: 1,
                data_dir: data_dir.clone(),
                internal_listen: "127.0.0.1:0".into(),
                advertise: None,
                join: vec![],
                bootstrap: true,
                index_save_interval: 60,
                memtable_mb,
                block_cache_mb,
                exact_scan_threshold,
                filter_partitions: true,
                scan_batch_window_us,
                gpu,
                snapshot_every: shoal_node::raft::SNAPSHOT_EVERY,
                snapshot_keep: shoal_node::raft::SNAPSHOT_KEEP,
                pod_name: None,
                backup_root: None,
                min_free_disk_mb: 100,
            };
            let (node, internal, engine) = run_node(args, &security, stop.clone(), in_memory, true).await?;
            serve_metrics(metrics.as_deref(), &security, node_collector(engine.clone()), stop.clone()).await?;
            let (listener, public) = bind(&listen).await?;
            // The coordinator calls this process's node directly.
            let local = LocalNode { address: engine.advertise().to_string(), shard: std::sync::Arc::new(ShardService::new(engine)) };
            let client = sample::DevClient { addr: public, tls: security.tls.clone(), api_key: dev_key.clone().or_else(|| first_admin_key(&sec_args)) };
            let cfg = CoordinatorConfig { seeds: vec![internal.to_string()], shard_deadline: Duration::from_secs(30), local: Some(local), tls: security.tls.clone(), auth: security.auth.clone(), audit: security.audit.clone(), reflection: security.reflection };
            let coord = tokio::spawn(shoal_coordinator::serve(cfg, listener, wait(stop.clone())));
            sample::wait_ready(&client).await?;
            if sample > 0 {
                sample::load(&client, sample).await?;
            }
            println!("shoal dev ready: public={public} internal={internal}");
            match (&dev_key, &security.tls) {
                (Some(key), Some(tls)) => {
                    println!("TLS and an admin API key were generated in {} (not on loopback, so not open):", data_dir.join("dev-security").display());
                    // The certificate names loopback, not a wildcard address.
                    let mut dial = public;
                    if dial.ip().is_unspecified() {
                        dial.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                    }
                    println!("try: SHOAL_API_KEY={key} {} --addr https://{dial} --ca {} collection list", shoalctl_command(), tls.files().ca.display());
                }
                _ => println!("try: {} --addr {public} collection list", shoalctl_command()),
            }
            coord.await??;
            node.await??;
        }
    }
    Ok(())
}

/// The node id of this pod (SHOAL_POD_NAME's ordinal + 1, as `shoal node`
/// takes it), for the probes' `--tls-dir`.
fn pod_node_id() -> Option<u64> {
    let pod = std::env::var("SHOAL_POD_NAME").ok()?;
    pod.rsplit_once('-')?.1.parse::<u64>().ok().map(|n| n + 1)
}

/// The process's audit log, once opened (flushed at exit).
static AUDIT: std::sync::OnceLock<std::sync::Arc<shoal_common::audit::AuditLog>> = std::sync::OnceLock::new();

/// The first admin key of a keys file (so `--sample` can load through an
/// authenticated dev server).
fn first_admin_key(args: &SecurityArgs) -> Option<String> {
    let text = std::fs::read_to_string(args.api_keys_file.as_ref()?).ok()?;
    text.lines().map(str::trim).filter(|l| !l.starts_with('#')).find_map(|l| l.strip_prefix("admin ").and_then(|r| r.split_whitespace().next()).map(str::to_string))
}

mod sample {
    //! The generated sample collection of `shoal dev --sample N`.
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use rand::{Rng, SeedableRng};
    use shoal_proto::v1::collections_client::CollectionsClient;
    use shoal_proto::v1::points_client::PointsClient;
    use shoal_proto::v1::*;

    pub const DIM: usize = 64;

    /// How this process reaches its own public API.
    pub struct DevClient {
        pub addr: SocketAddr,
        pub tls: Option<std::sync::Arc<shoal_common::tls::TlsContext>>,
        pub api_key: Option<String>,
    }

    impl DevClient {
        async fn channel(&self) -> anyhow::Result<tonic::transport::Channel> {
            // A wildcard bind is reached on loopback (which the dev
            // certificate names).
            let mut addr = self.addr;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            Ok(shoal_common::tls::connect(&addr.to_string(), self.tls.clone(), shoal_common::tls::Expect::Any, Duration::from_secs(3)).await?)
        }

        fn auth(&self) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone {
            let header = self.api_key.as_ref().and_then(|k| format!("Bearer {k}").parse::<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>().ok());
            move |mut r: tonic::Request<()>| {
                if let Some(h) = &header {
                    r.metadata_mut().insert("authorization", h.clone());
                }
                Ok(r)
            }
        }
    }

    /// Polls the coordinator's health service until it reports SERVING
    /// (it has loaded the cluster map), so "ready" means ready.
    pub async fn wait_ready(client: &DevClient) -> anyhow::Result<()> {
        use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(ch) = client.channel().await {
                let mut h = HealthClient::new(ch);
                if h.check(HealthCheckRequest { service: String::new() }).await.is_ok_and(|r| r.get_ref().status == ServingStatus::Serving as i32) {
                    return Ok(());
                }
            }
            anyhow::ensure!(Instant::now() < deadline, "server did not become ready within 60 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Creates `sample` (64-d cosine, 2 shards) with `n` clustered vectors
    /// and payloads `{category, price, in_stock, tags}`, unless it exists.
    pub async fn load(client: &DevClient, n: u64) -> anyhow::Result<()> {
        let ch = client.channel().await?;
        let mut cols = CollectionsClient::with_interceptor(ch.clone(), client.auth());
        if cols.get(GetCollectionRequest { name: "sample".into() }).await.is_ok() {
            println!("sample collection already present");
            return Ok(());
        }
        let config = CollectionConfig {
            name: "sample".into(),
            dimension: DIM as u32,
            metric: Metric::Cosine as i32,
            shard_count: 2,
            payload_indexes: vec![
                PayloadIndexSpec { key: "category".into(), r#type: PayloadIndexType::Keyword as i32, text: None },
                PayloadIndexSpec { key: "price".into(), r#type: PayloadIndexType::Numeric as i32, text: None },
                PayloadIndexSpec { key: "text".into(), r#type: PayloadIndexType::Text as i32, text: Some(TextIndexParams { stemmer: "english".into(), stop_words: "english".into(), keep_accents: false }) },
            ],
            ..Default::default()
        };
        cols.create(CreateCollectionRequest { config: Some(config) }).await?;
        let mut points = PointsClient::with_interceptor(ch, client.auth());
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        let cats = ["books", "music", "garden", "toys", "tools", "food", "sports", "games"];
        let centers: Vec<Vec<f32>> = (0..cats.len()).map(|_| (0..DIM).map(|_| rng.random_range(-1.0..1.0)).collect()).collect();
        let t = Instant::now();
        let mut id = 0u64;
        while id < n {
            let batch: Vec<PointStruct> = (id..(id + 1000).min(n))
                .map(|i| {
                    let c = (i % cats.len() as u64) as usize;
                    let vector = centers[c].iter().map(|x| x + rng.random_range(-0.5..0.5)).collect();
                    let adjectives = ["used", "new", "vintage", "handmade", "classic", "compact", "deluxe", "organic"];
                    let text = format!("{} {} for {} lovers", adjectives[rng.random_range(0..adjectives.len())], cats[c], cats[rng.random_range(0..cats.len())]);
                    let payload = serde_json::json!({"category": cats[c], "price": rng.random_range(1..500), "in_stock": rng.random_bool(0.7), "tags": [cats[(c + 1) % cats.len()]], "text": text});
                    PointStruct { id: Some(i.into()), vector, payload: Some(Struct::try_from(&payload).expect("object")), sparse: Default::default(), vectors: Default::default() }
                })
                .collect();
            id += batch.len() as u64;
            points.upsert(UpsertPointsRequest { collection: "sample".into(), points: batch }).await?;
        }
        println!("loaded {n} sample points into `sample` in {:.1} s", t.elapsed().as_secs_f64());
        Ok(())
    }
}
