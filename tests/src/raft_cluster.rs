//! In-process Raft cluster harness: one shard group replicated on N nodes
//! inside the test process. Each node has its own RocksDB directory, its own
//! gRPC server on a free loopback port serving `shoal.internal.v1.Raft`, and
//! a real `ShardStateMachine`. Nodes can be stopped (server and Raft shut
//! down, storage kept), restarted on the same storage and address, and cut
//! off per link direction through the network's fault injection.
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use openraft::{BasicNode, Raft, ServerState};
use prost::Message;
use shoal_node::raft::election::Elections;
use shoal_node::raft::log_store::LogStore;
use shoal_node::raft::network::{Groups, Network, Peers, RaftService};
use shoal_node::raft::state_machine::ShardStateMachine;
use shoal_node::raft::{default_config, Command, NodeId, TypeConfig};
use shoal_node::storage::rocks::RocksEngine;
use shoal_node::storage::{KvEngine, ShardStore};
use shoal_proto::internal::v1::raft_server::RaftServer;
use shoal_proto::internal::v1::ShardWriteRequest;
use shoal_proto::v1::{CollectionConfig, Metric, PointStruct, Struct};
use shoal_proto::limits::MAX_MESSAGE_BYTES;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub const GROUP: &str = "c/0";

/// The shard's collection: 4-d L2 vectors, a sparse vector `s`, a named
/// dense vector `d` (3-d cosine) and a multi-vector `m` (2-d dot).
pub fn collection() -> CollectionConfig {
    let sparse = vec![shoal_proto::v1::SparseVectorConfig { name: "s".into(), modifier: 0 }];
    let vectors = vec![
        shoal_proto::v1::NamedVectorConfig { name: "d".into(), dimension: 3, metric: Metric::Cosine as i32, ..Default::default() },
        shoal_proto::v1::NamedVectorConfig { name: "m".into(), dimension: 2, metric: Metric::Dot as i32, multivector: true, ..Default::default() },
    ];
    let c = CollectionConfig { name: "c".into(), dimension: 4, metric: Metric::L2 as i32, sparse_vectors: sparse, vectors, ..Default::default() };
    shoal_proto::validate::collection_config(&c).expect("valid config")
}

/// The sparse vector `s` of point `i` at `version`.
pub fn sparse_of(i: u64, version: u64) -> shoal_proto::v1::SparseVector {
    shoal_proto::v1::SparseVector { indices: vec![(i % 7) as u32, 100 + (i % 3) as u32], values: vec![1.0, version as f32] }
}

/// The named vectors of point `i` at `version`: `d` on every point, `m`
/// (1 to 3 rows) on odd ones.
pub fn named_of(i: u64, version: u64) -> std::collections::BTreeMap<String, shoal_proto::v1::NamedVector> {
    use shoal_proto::v1::{DenseVector, NamedVector};
    let mut m = std::collections::BTreeMap::new();
    m.insert("d".to_string(), NamedVector { values: vec![1.0 + i as f32, version as f32, 0.5], rows: vec![] });
    if i % 2 == 1 {
        let rows = (0..1 + (i + version) % 3).map(|r| DenseVector { values: vec![r as f32, version as f32 + i as f32] }).collect();
        m.insert("m".to_string(), NamedVector { values: vec![], rows });
    }
    m
}

/// A write of points `ids` (vector derived from the id and `version`).
pub fn upsert_cmd(ids: impl Iterator<Item = u64>, version: u64) -> Command {
    let upserts = ids
        .map(|i| PointStruct {
            id: Some(i.into()),
            vector: vec![i as f32, version as f32, 1.0, 2.0],
            // Several keys and a nested object: replica digests must not
            // depend on map order (issue 14, point 8).
            payload: Some(Struct::try_from(&serde_json::json!({"v": version, "id": i, "tags": ["a", format!("t{}", i % 5)], "nested": {"x": i % 7, "y": "s", "z": [1.5, version]}})).expect("object")),
            sparse: [("s".to_string(), sparse_of(i, version))].into(),
            vectors: named_of(i, version),
        })
        .collect();
    Command { write: ShardWriteRequest { upserts, ..Default::default() }.encode_to_vec() }
}

struct Running {
    raft: Raft<TypeConfig>,
    sm: ShardStateMachine,
    log: LogStore,
    server: JoinHandle<()>,
    elector: JoinHandle<()>,
    elections: Elections,
    stop: tokio::sync::oneshot::Sender<()>,
}

pub struct Node {
    config: Arc<openraft::Config>,
    collection: CollectionConfig,
    pub id: NodeId,
    pub addr: SocketAddr,
    dir: PathBuf,
    pub peers: Peers,
    running: Option<Running>,
}

pub struct RaftCluster {
    _root: tempfile::TempDir,
    pub nodes: Vec<Node>,
}

impl Node {
    async fn start(&mut self) -> Result<()> {
        // A restart can come before the stopped instance's last tasks (the
        // role tracker, in-flight applies) dropped their handles to its
        // database: wait for RocksDB's lock to be released, as a restarted
        // process would find it after the old one exited.
        let deadline = Instant::now() + Duration::from_secs(10);
        let engine: Arc<dyn KvEngine> = loop {
            match RocksEngine::open(&self.dir.join("db")) {
                Ok(e) => break Arc::new(e),
                Err(e) if e.to_string().contains("lock hold by current process") && Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(e) => return Err(e.into()),
            }
        };
        let sm = ShardStateMachine::open(self.collection.clone(), 0, ShardStore::new(engine.clone(), "c", 0), self.dir.join("index"))?;
        let log = LogStore::new(engine, GROUP);
        let log_handle = log.clone();
        let raft = Raft::new(self.id, self.config.clone(), Network::new(GROUP, self.peers.clone()), log, sm.clone()).await?;
        // Followers defer graph inserts, as on a node (tests drain them with
        // `Shard::index_pending`; searches cover pending points meanwhile).
        tokio::spawn(shoal_node::engine::track_role(raft.clone(), sm.clone()));
        let groups = Groups::default();
        groups.insert(GROUP, raft.clone(), log_handle.clone());
        // The node's election timer and pre-votes (openraft's timer is off).
        let elections = Elections::new(self.id, &self.config);
        let elector = elections.spawn(groups.clone(), self.peers.clone(), None);
        let elections_handle = elections.clone();
        // Same address on restart: the membership records it.
        let listener = bind_retry(self.addr).await?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                // The message limits of a node's internal server.
                .add_service(RaftServer::new(RaftService::new(groups, elections)).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES))
                .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)), async {
                    let _ = stopped.await;
                })
                .await;
        });
        self.running = Some(Running { raft, sm, log: log_handle, server, elector, elections: elections_handle, stop });
        Ok(())
    }

    pub fn raft(&self) -> Option<&Raft<TypeConfig>> {
        self.running.as_ref().map(|r| &r.raft)
    }

    /// The node's log store (append counts).
    pub fn log(&self) -> Option<&LogStore> {
        self.running.as_ref().map(|r| &r.log)
    }

    /// The node's election timers (pre-vote rounds run and won).
    pub fn elections(&self) -> Option<&Elections> {
        self.running.as_ref().map(|r| &r.elections)
    }

    pub fn sm(&self) -> Option<&ShardStateMachine> {
        self.running.as_ref().map(|r| &r.sm)
    }
}

async fn bind_retry(addr: SocketAddr) -> Result<TcpListener> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => return Err(e).with_context(|| format!("rebinding {addr}")),
        }
    }
}

impl RaftCluster {
    /// Starts `n` nodes (ids 1..=n) with the default shard-group timing and
    /// initialises the group on node 1.
    pub async fn start(n: usize) -> Result<Self> {
        Self::start_with(n, default_config()).await
    }

    /// Like [`RaftCluster::start`] with a given Raft configuration.
    pub async fn start_with(n: usize, config: openraft::Config) -> Result<Self> {
        Self::start_full(n, config, collection()).await
    }

    /// Like [`RaftCluster::start_with`] for a given collection (named `c`).
    pub async fn start_full(n: usize, config: openraft::Config, collection: CollectionConfig) -> Result<Self> {
        // Logs for failing runs: RUST_LOG=openraft=debug,shoal_node=debug.
        let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_test_writer().try_init();
        let config = Arc::new(config.validate()?);
        let root = tempfile::tempdir()?;
        let mut nodes = vec![];
        for i in 0..n {
            // Reserve a free port, then let the node bind it.
            let addr = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
            let dir = root.path().join(format!("n{}", i + 1));
            let mut node = Node { config: config.clone(), collection: collection.clone(), id: i as NodeId + 1, addr, dir, peers: Peers::default(), running: None };
            node.start().await?;
            nodes.push(node);
        }
        let members: BTreeMap<NodeId, BasicNode> = nodes.iter().map(|n| (n.id, BasicNode::new(n.addr))).collect();
        nodes[0].raft().expect("running").initialize(members).await.map_err(|e| anyhow!("initialize: {e}"))?;
        Ok(RaftCluster { _root: root, nodes })
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id as usize - 1]
    }

    /// Waits until the running nodes agree on one running leader.
    pub async fn leader(&self, within: Duration) -> Result<NodeId> {
        let deadline = Instant::now() + within;
        loop {
            let running: Vec<&Node> = self.nodes.iter().filter(|n| n.running.is_some()).collect();
            let leaders: BTreeSet<Option<NodeId>> = running.iter().map(|n| n.raft().expect("running").metrics().borrow().current_leader).collect();
            if let [Some(l)] = leaders.iter().copied().collect::<Vec<_>>()[..] {
                let ln = self.node(l);
                if ln.raft().is_some_and(|r| r.metrics().borrow().state == ServerState::Leader) {
                    return Ok(l);
                }
            }
            if Instant::now() > deadline {
                bail!("no single leader within {within:?}: {leaders:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Writes through the current leader, following leader changes until
    /// `within` runs out. Returns the log index of the committed entry.
    pub async fn write(&self, cmd: Command, within: Duration) -> Result<u64> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let leader = self.leader(left).await?;
            let raft = self.node(leader).raft().expect("leader runs").clone();
            match tokio::time::timeout(left, raft.client_write(cmd.clone())).await {
                Ok(Ok(r)) => return Ok(r.log_id.index),
                // Leader changed under the write: retry on the new one.
                Ok(Err(_)) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
                Ok(Err(e)) => bail!("write failed: {e}"),
                Err(_) => bail!("write not committed within {within:?}"),
            }
        }
    }

    /// Stops a node: its server and Raft end, its storage stays.
    pub async fn stop(&mut self, id: NodeId) {
        if let Some(r) = self.nodes[id as usize - 1].running.take() {
            // The Raft stops first, then the server closes its connections
            // (as a dead process's would): peers must not keep talking to
            // the stopped instance over a live HTTP/2 connection.
            r.elector.abort();
            let _ = r.raft.shutdown().await;
            let _ = r.stop.send(());
            let mut server = r.server;
            if tokio::time::timeout(Duration::from_secs(5), &mut server).await.is_err() {
                server.abort();
            }
        }
    }

    /// Deletes a stopped node's storage: it restarts as a fresh replica
    /// with the same id and address (a replaced disk), which the leader
    /// must bring up by snapshot once its log is purged.
    pub fn wipe(&mut self, id: NodeId) -> Result<()> {
        let n = &self.nodes[id as usize - 1];
        anyhow::ensure!(n.running.is_none(), "stop node {id} before wiping it");
        std::fs::remove_dir_all(&n.dir).with_context(|| format!("wiping {}", n.dir.display()))
    }

    /// Restarts a stopped node on its storage and address.
    pub async fn restart(&mut self, id: NodeId) -> Result<()> {
        self.nodes[id as usize - 1].start().await
    }

    /// Cuts both directions between `a` and every node in `others`.
    pub fn partition(&self, a: NodeId, others: &[NodeId]) {
        for &o in others {
            self.node(a).peers.block(&self.node(o).addr.to_string());
            self.node(o).peers.block(&self.node(a).addr.to_string());
        }
    }

    pub fn heal(&self) {
        for n in &self.nodes {
            n.peers.heal();
        }
    }

    /// Waits until every running node has applied at least `index`.
    pub async fn applied_everywhere(&self, index: u64, within: Duration) -> Result<()> {
        for n in self.nodes.iter().filter(|n| n.running.is_some()) {
            n.raft()
                .expect("running")
                .wait(Some(within))
                .applied_index_at_least(Some(index), format!("node {} applies {index}", n.id))
                .await
                .map_err(|e| anyhow!("node {}: {e}", n.id))?;
        }
        Ok(())
    }

    /// Per-node digests (sorted id, vector, payload) of the shard.
    pub fn digests(&self) -> Result<BTreeMap<NodeId, Vec<String>>> {
        let mut out = BTreeMap::new();
        for n in self.nodes.iter().filter(|n| n.running.is_some()) {
            let (points, _) = n.sm().expect("running").shard().export(&[])?;
            let mut d: Vec<String> = points.iter().map(|p| format!("{:?}|{:?}|{:?}|{:?}", p.id, p.vector, p.payload, p.sparse)).collect();
            d.sort();
            out.insert(n.id, d);
        }
        Ok(out)
    }

    /// Shuts every node down.
    pub async fn shutdown(mut self) {
        for id in 1..=self.nodes.len() as NodeId {
            self.stop(id).await;
        }
    }
}
