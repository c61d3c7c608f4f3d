//! A cluster of real processes on loopback: `shoal node` processes that
//! form a cluster (the first bootstraps it, the others join through it)
//! and a `shoal coordinator` over them. Every process listens on a port the
//! OS picks; a restarted node reuses its address and data directory.
//!
//! Faults are real signals: [`NodeProc::kill9`] (SIGKILL),
//! [`NodeProc::pause`]/[`NodeProc::resume`] (SIGSTOP/SIGCONT),
//! [`NodeProc::terminate`] (SIGTERM, graceful).
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use shoal_proto::internal::v1::meta_client::MetaClient;
use shoal_proto::internal::v1::{ClusterMap, GetClusterMapRequest, NodeStatusRequest, NodeStatusResponse, ShardDigestRequest};

use crate::shoal_bin;

/// Spawns `shoal ARGS`, waits (up to 120 s) for a stdout line starting with
/// `ready`, and returns the child and the first word after the prefix.
pub fn spawn_ready(args: &[String], ready: &'static str, log: &str) -> Result<(Child, String)> {
    let (child, rest) = spawn_ready_line(args, ready, log)?;
    Ok((child, rest.split_whitespace().next().unwrap_or_default().to_string()))
}

/// [`spawn_ready`], returning the whole rest of the ready line.
pub fn spawn_ready_line(args: &[String], ready: &'static str, log: &str) -> Result<(Child, String)> {
    let bin = shoal_bin();
    if !bin.exists() {
        bail!("{} not found: run `cargo build --release --bins` or set SHOAL_BIN", bin.display());
    }
    let mut child = Command::new(&bin)
        .args(args)
        .env("SHOAL_LOG", log)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("spawning {}", bin.display()))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix(ready) {
                let _ = tx.send(rest.to_string());
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(a) => Ok((child, a)),
        Err(e) => {
            let _ = child.kill();
            let status = child.wait().ok().map(|s| s.to_string()).unwrap_or_default();
            match e {
                std::sync::mpsc::RecvTimeoutError::Disconnected => bail!("`shoal {}` exited before it was ready ({status})", args.join(" ")),
                std::sync::mpsc::RecvTimeoutError::Timeout => bail!("`shoal {}` did not become ready within 120 s", args.join(" ")),
            }
        }
    }
}

fn signal(child: &Option<Child>, sig: i32) {
    if let Some(c) = child {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(c.id() as i32, sig) };
    }
}

/// One `shoal node` process.
pub struct NodeProc {
    child: Option<Child>,
    pub id: u64,
    pub data_dir: PathBuf,
    /// Internal address (fixed after the first start).
    pub addr: String,
    join: Vec<String>,
    bootstrap: bool,
    /// Further `shoal node` flags, kept across restarts.
    extra: Vec<String>,
}

impl NodeProc {
    /// Starts node `id` on `listen` (`127.0.0.1:0` for a free port).
    pub fn start(id: u64, data_dir: &Path, listen: &str, bootstrap: bool, join: &[String]) -> Result<Self> {
        Self::start_with(id, data_dir, listen, bootstrap, join, &[])
    }

    /// [`NodeProc::start`] with further `shoal node` flags.
    pub fn start_with(id: u64, data_dir: &Path, listen: &str, bootstrap: bool, join: &[String], extra: &[String]) -> Result<Self> {
        let mut args: Vec<String> = vec!["node".into(), "--node-id".into(), id.to_string(), "--data-dir".into(), data_dir.display().to_string(), "--internal-listen".into(), listen.into()];
        args.extend(crate::tls::node_flags(id));
        args.extend(extra.iter().cloned());
        if bootstrap {
            args.push("--bootstrap".into());
        }
        if !join.is_empty() {
            args.push("--join".into());
            args.push(join.join(","));
        }
        let log = std::env::var("SHOAL_TEST_LOG").unwrap_or_else(|_| "warn,openraft=off".into());
        let (child, addr) = spawn_ready(&args, "shoal node ready: internal=", &log)?;
        Ok(NodeProc { child: Some(child), id, data_dir: data_dir.to_path_buf(), addr, join: join.to_vec(), bootstrap, extra: extra.to_vec() })
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL: no chance to flush or save anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP: the process stays, its sockets stay open, nothing answers.
    pub fn pause(&self) {
        signal(&self.child, libc::SIGSTOP);
    }

    /// SIGCONT.
    pub fn resume(&self) {
        signal(&self.child, libc::SIGCONT);
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> Result<()> {
        match self.child.take() {
            Some(c) => crate::terminate_child(c),
            None => Ok(()),
        }
    }

    /// Starts the node again on the same address and data directory.
    pub fn restart(&mut self) -> Result<()> {
        self.kill9();
        let next = NodeProc::start_with(self.id, &self.data_dir.clone(), &self.addr.clone(), self.bootstrap, &self.join.clone(), &self.extra.clone())?;
        *self = next;
        Ok(())
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.resume();
        self.kill9();
    }
}

/// A `shoal coordinator` process.
pub struct CoordProc {
    child: Option<Child>,
    pub addr: String,
}

impl CoordProc {
    pub fn start(seeds: &[String]) -> Result<Self> {
        Self::start_with(seeds, &[])
    }

    /// [`CoordProc::start`] with further flags.
    pub fn start_with(seeds: &[String], extra: &[String]) -> Result<Self> {
        let mut args: Vec<String> = vec!["coordinator".into(), "--listen".into(), "127.0.0.1:0".into(), "--meta".into(), seeds.join(",")];
        args.extend(crate::tls::coordinator_flags());
        args.extend(extra.iter().cloned());
        let (child, addr) = spawn_ready(&args, "shoal coordinator ready: public=", "warn,openraft=off")?;
        Ok(CoordProc { child: Some(child), addr })
    }
}

impl Drop for CoordProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// N nodes and one coordinator.
pub struct ProcCluster {
    _dir: tempfile::TempDir,
    root: PathBuf,
    pub nodes: Vec<NodeProc>,
    pub coordinator: CoordProc,
}

async fn meta(addr: &str) -> Result<MetaClient<shoal_client::AuthChannel>> {
    Ok(MetaClient::new(crate::tls::channel_with(addr, Duration::from_secs(5)).await?))
}

impl ProcCluster {
    /// Starts `n` nodes (node 1 bootstraps, the others join through it),
    /// waits until every node is in the map and has applied it, then
    /// starts a coordinator that knows every node.
    pub async fn start(n: u64) -> Result<Self> {
        Self::start_with(n, &[]).await
    }

    /// [`ProcCluster::start`] with further flags for every node.
    pub async fn start_with(n: u64, extra: &[&str]) -> Result<Self> {
        Self::start_opts(n, extra, &[]).await
    }

    /// [`ProcCluster::start_with`], with further flags for the coordinator.
    pub async fn start_opts(n: u64, extra: &[&str], coordinator_extra: &[String]) -> Result<Self> {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let dir = tempfile::tempdir()?;
        let root = dir.path().to_path_buf();
        let first = NodeProc::start_with(1, &root.join("n1"), "127.0.0.1:0", true, &[], &extra)?;
        let seed = vec![first.addr.clone()];
        let mut nodes = vec![first];
        for id in 2..=n {
            nodes.push(NodeProc::start_with(id, &root.join(format!("n{id}")), "127.0.0.1:0", false, &seed, &extra)?);
        }
        let addrs: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
        let coordinator = CoordProc::start_with(&addrs, coordinator_extra)?;
        let c = ProcCluster { _dir: dir, root, nodes, coordinator };
        c.wait_members(n as usize, Duration::from_secs(60)).await?;
        Ok(c)
    }

    /// Adds node `id`, joining through the running nodes.
    pub async fn add_node(&mut self) -> Result<u64> {
        let id = self.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
        let seeds: Vec<String> = self.nodes.iter().filter(|n| n.is_running()).map(|n| n.addr.clone()).collect();
        self.nodes.push(NodeProc::start(id, &self.root.join(format!("n{id}")), "127.0.0.1:0", false, &seeds)?);
        self.wait_members(self.nodes.len(), Duration::from_secs(60)).await?;
        Ok(id)
    }

    /// Adds a node whose data directory is `data_dir` (under the cluster's
    /// root when `None`), with further `shoal node` flags.
    pub async fn add_node_with(&mut self, data_dir: Option<&Path>, extra: &[String]) -> Result<u64> {
        let id = self.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
        let seeds: Vec<String> = self.nodes.iter().filter(|n| n.is_running()).map(|n| n.addr.clone()).collect();
        let dir = data_dir.map_or_else(|| self.root.join(format!("n{id}")), Path::to_path_buf);
        self.nodes.push(NodeProc::start_with(id, &dir, "127.0.0.1:0", false, &seeds, extra)?);
        self.wait_members(self.nodes.len(), Duration::from_secs(60)).await?;
        Ok(id)
    }

    /// Starts node `id` again (it must be stopped) with an emptied data
    /// directory, on its old address, joining through every node: a node
    /// back from a lost disk.
    pub fn start_empty(&mut self, id: u64) -> Result<()> {
        let seeds: Vec<String> = self.nodes.iter().map(|n| n.addr.clone()).collect();
        let n = self.node(id);
        anyhow::ensure!(!n.is_running(), "node {id} is running");
        if n.data_dir.exists() {
            std::fs::remove_dir_all(&n.data_dir)?;
        }
        *n = NodeProc::start(id, &n.data_dir.clone(), &n.addr.clone(), false, &seeds)?;
        Ok(())
    }

    pub fn node(&mut self, id: u64) -> &mut NodeProc {
        self.nodes.iter_mut().find(|n| n.id == id).expect("node id")
    }

    /// The running nodes as a [`Nodes`] view (digests, catch-up, maps).
    pub fn view(&self) -> Nodes {
        Nodes(self.nodes.iter().filter(|n| n.is_running()).map(|n| (n.id, n.addr.clone())).collect())
    }

    /// The map as node `id` has applied it.
    pub async fn map_at(&self, id: u64) -> Result<ClusterMap> {
        self.view().map_at(id).await
    }

    /// Waits until every running node's map lists `count` nodes.
    pub async fn wait_members(&self, count: usize, within: Duration) -> Result<()> {
        self.view().wait_members(count, within).await
    }

    /// See [`Nodes::digests`].
    pub async fn digests(&self, collection: &str, shard_id: u32) -> Result<BTreeMap<u64, (u64, String, u64)>> {
        self.view().digests(collection, shard_id).await
    }

    /// See [`Nodes::applied`].
    pub async fn applied(&self, collection: &str, shard_id: u32) -> Result<BTreeMap<u64, u64>> {
        self.view().applied(collection, shard_id).await
    }

    /// See [`Nodes::converged`].
    pub async fn converged(&self, collection: &str, shards: u32, within: Duration) -> Result<Vec<BTreeMap<u64, (u64, String, u64)>>> {
        self.view().converged(collection, shards, within).await
    }

    /// The running node that leads the metadata group (it drives the
    /// cluster operations); waits up to 30 s for one.
    pub async fn meta_leader(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for n in self.nodes.iter().filter(|n| n.is_running()) {
                if self.node_status(n.id).await.is_some_and(|st| st.meta_role == "leader") {
                    return n.id;
                }
            }
            assert!(Instant::now() < deadline, "no metadata leader");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Node `id`'s own status (internal `Meta/NodeStatus`), or `None` when
    /// it is not running or does not answer.
    pub async fn node_status(&self, id: u64) -> Option<NodeStatusResponse> {
        let n = self.nodes.iter().find(|n| n.id == id && n.is_running())?;
        Some(meta(&n.addr).await.ok()?.node_status(NodeStatusRequest {}).await.ok()?.into_inner())
    }

    /// See [`Nodes::caught_up`].
    pub async fn caught_up(&self, collection: &str, shard_id: u32, replicas: usize, slack: u64, within: Duration) -> Result<()> {
        self.view().caught_up(collection, shard_id, replicas, slack, within).await
    }
}

/// The reachable nodes of a cluster, as (id, internal address): the
/// checks every harness (processes, containers) shares.
#[derive(Debug, Clone)]
pub struct Nodes(pub Vec<(u64, String)>);

impl Nodes {
    fn addr(&self, id: u64) -> Result<&str> {
        self.0.iter().find(|n| n.0 == id).map(|n| n.1.as_str()).context("node id")
    }

    /// The map as node `id` has applied it.
    pub async fn map_at(&self, id: u64) -> Result<ClusterMap> {
        Ok(meta(self.addr(id)?).await?.get_cluster_map(GetClusterMapRequest {}).await?.into_inner())
    }

    /// Waits until every node's map lists `count` nodes.
    pub async fn wait_members(&self, count: usize, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let mut ok = true;
            for (id, _) in &self.0 {
                match self.map_at(*id).await {
                    Ok(m) if m.nodes.len() == count => {}
                    _ => ok = false,
                }
            }
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("nodes did not all see {count} members within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Per-replica (points, digest, applied index) of one shard, from every
    /// node here that hosts it.
    pub async fn digests(&self, collection: &str, shard_id: u32) -> Result<BTreeMap<u64, (u64, String, u64)>> {
        let map = self.map_at(self.0.first().context("no node running")?.0).await?;
        let entry = map.collections.iter().find(|c| c.config.as_ref().is_some_and(|x| x.name == collection)).context("collection")?;
        let placement = entry.shards.iter().find(|s| s.shard_id == shard_id).context("shard")?;
        let mut out = BTreeMap::new();
        for id in &placement.replicas {
            let Ok(addr) = self.addr(*id) else { continue };
            let d = meta(addr).await?.shard_digest(ShardDigestRequest { collection: collection.into(), shard_id }).await?.into_inner();
            out.insert(*id, (d.points, d.digest, d.applied_index));
        }
        Ok(out)
    }

    /// Applied index of each replica of a shard here (cheap: node status,
    /// not a digest).
    pub async fn applied(&self, collection: &str, shard_id: u32) -> Result<BTreeMap<u64, u64>> {
        let mut out = BTreeMap::new();
        for (id, addr) in &self.0 {
            let st = meta(addr).await?.node_status(shoal_proto::internal::v1::NodeStatusRequest {}).await?.into_inner();
            if let Some(r) = st.shards.iter().find(|r| r.collection == collection && r.shard_id == shard_id) {
                out.insert(*id, r.applied_index);
            }
        }
        Ok(out)
    }

    /// Waits until all replicas of every shard of `collection` report the
    /// same digest; returns the digests per shard.
    pub async fn converged(&self, collection: &str, shards: u32, within: Duration) -> Result<Vec<BTreeMap<u64, (u64, String, u64)>>> {
        let deadline = Instant::now() + within;
        loop {
            let mut all = vec![];
            let mut same = true;
            for s in 0..shards {
                match self.digests(collection, s).await {
                    Ok(d) => {
                        let distinct: std::collections::BTreeSet<&String> = d.values().map(|v| &v.1).collect();
                        same &= distinct.len() == 1;
                        all.push(d);
                    }
                    Err(_) => same = false,
                }
            }
            if same {
                return Ok(all);
            }
            if Instant::now() > deadline {
                bail!("replicas of {collection} did not converge within {within:?}: {all:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until every replica of a shard is reachable and within `slack`
    /// entries of the most advanced one (works under write load, unlike
    /// [`Nodes::converged`]).
    pub async fn caught_up(&self, collection: &str, shard_id: u32, replicas: usize, slack: u64, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let seen = match self.applied(collection, shard_id).await {
                Ok(d) => {
                    let max = d.values().max().copied().unwrap_or(0);
                    if d.len() == replicas && d.values().all(|v| v + slack >= max) {
                        return Ok(());
                    }
                    format!("{d:?}")
                }
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                bail!("replicas of {collection}/{shard_id} did not catch up within {within:?}; last seen: {seen}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
