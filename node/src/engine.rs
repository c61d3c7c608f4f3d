//! The node's shard replicas and its copy of the cluster map.
//!
//! - **Metadata.** Every node runs the `meta` Raft group ([`crate::raft::meta`]):
//!   up to three nodes vote, the rest follow as learners, so each node
//!   applies the same cluster map. Changes (register a node, create or
//!   delete a collection) are proposed on the metadata leader
//!   ([`Engine::create_collection`] and friends; the `Meta` service forwards
//!   to the leader).
//! - **Replicas.** Every hosted shard replica is a Raft group ([`Replica`]).
//!   [`Engine::reconcile`] runs whenever the applied map changes: it opens
//!   the replicas the map places on this node and drops the ones it no
//!   longer does. A replica opened for a collection it has not seen before
//!   (by the collection's `uid`) starts empty and initialises its group
//!   with the placement's members.
//! - A new cluster starts only through [`Engine::init_cluster`]
//!   (`shoalctl cluster init` or `shoal node --bootstrap`), never because a
//!   disk is empty; other nodes join through [`Engine::register_node`].
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, Raft, ServerState};
use parking_lot::{Mutex, RwLock};
use shoal_proto::internal::v1::{ClusterMap, CollectionEntry, NodeStatusResponse, ShardPlacement, ShardReplicaStatus};
use shoal_proto::v1::CollectionConfig;
use shoal_proto::{placement, routing, validate};

use crate::error::{NodeError, Result};
use crate::raft::election::Elections;
use crate::raft::log_store::LogStore;
use crate::raft::meta::{MetaCommand, MetaStateMachine, EXISTS, META_GROUP, META_VOTERS, NOT_FOUND};
use crate::raft::network::{Groups, Network, Peers};
use crate::raft::rejoin::CatchUp;
use crate::raft::state_machine::{uid_key, ShardStateMachine, CHILD_LOCK};
use crate::raft::{Command, Reply, TypeConfig};
use crate::shard::Shard;
use crate::storage::memory::MemoryEngine;
use crate::storage::rocks::{RocksEngine, RocksTuning};
use crate::storage::{shard_store, KvEngine, ShardStore};

pub mod backup;
pub mod ops;
pub mod split;

/// How long a registration waits for a new metadata learner to catch up.
const LEARNER_CATCH_UP: Duration = Duration::from_secs(10);
/// How long a proposal waits for its group to elect a leader.
pub const LEADER_WAIT: Duration = Duration::from_secs(10);
/// A non-first replica of a new shard initialises the group itself when it
/// has heard nothing from the first replica after this long (the first
/// replica's node may be down).
const SECONDARY_INIT_DELAY: Duration = Duration::from_secs(3);
/// Pending versions the indexer moves into a graph per step.
const INDEX_CHUNK: usize = 1024;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub node_id: u64,
    /// Root of RocksDB (`db/`) and index files (`index/`).
    pub data_dir: PathBuf,
    /// Internal address other processes dial to reach this node.
    pub advertise: String,
    /// Keep everything in memory (tests, throwaway dev runs).
    pub in_memory: bool,
    pub rocks: RocksTuning,
    /// Filtered searches allowing at most this many points scan exactly.
    /// How filtered searches choose their plan (node flags).
    pub plan: crate::shard::SearchPlan,
    /// Raft timing and snapshot policy of every group on the node.
    pub raft: openraft::Config,
    /// Shared directory for backups (none: backups refused).
    pub backup_root: Option<PathBuf>,
    /// Free-space watermark of the data volume in bytes (0: off); see
    /// [`crate::disk`].
    pub min_free_disk: u64,
    /// The node's certificates (none: TLS off). Outgoing calls to peers
    /// use them; the server takes its own copy ([`crate::server`]).
    pub tls: Option<Arc<shoal_common::tls::TlsContext>>,
}

type ShardKey = (String, u32);

/// One hosted shard replica: its Raft group, state machine and log.
#[derive(Clone)]
pub struct Replica {
    pub group: String,
    pub raft: Raft<TypeConfig>,
    pub sm: ShardStateMachine,
    pub log: LogStore,
    /// Group commit of writes proposed on this replica.
    pub writes: crate::raft::batch::WriteQueue,
    /// The collection's uid this replica belongs to.
    pub uid: u64,
    /// A leadership transfer is under way: new writes wait (they answer
    /// UNAVAILABLE and are retried) so the followers' lease can run out.
    pub transfer: Arc<std::sync::atomic::AtomicBool>,
}

impl Replica {
    pub fn shard(&self) -> Arc<Shard> {
        self.sm.shard()
    }
}

/// The Raft group name of a shard.
pub fn group_name(collection: &str, shard_id: u32) -> String {
    format!("{collection}/{shard_id}")
}

/// Proposes `cmd` to `raft` and waits until it is committed and applied
/// here. Waits for an election when the group has no leader; on a
/// follower it answers `NotLeader` naming the leader.
/// How often a node checks the shards it leads for payload index changes
/// ([`Engine::sync_payload_indexes`]).
pub const INDEX_SYNC_INTERVAL: Duration = Duration::from_millis(500);

/// Proposes a shard's schema change as a control entry of its log
/// ([`crate::shard::Schema`]) and waits for it to apply here.
pub async fn propose_schema(raft: &Raft<TypeConfig>, group: &str, want: &crate::shard::Schema) -> Result<()> {
    let ctl = shoal_proto::internal::v1::ShardControl { op: Some(shoal_proto::internal::v1::shard_control::Op::PayloadIndexes(shoal_proto::internal::v1::PayloadIndexesControl { specs: want.encode() })) };
    let write = shoal_proto::internal::v1::ShardWriteRequest { control: Some(ctl), ..Default::default() };
    match propose(raft, group, Command { write: prost::Message::encode_to_vec(&write) }).await? {
        Reply { error: Some(e), .. } => Err(NodeError::Rejected(format!("shard schema change refused: {e}"))),
        _ => Ok(()),
    }
}

pub async fn propose(raft: &Raft<TypeConfig>, group: &str, cmd: Command) -> Result<Reply> {
    let deadline = tokio::time::Instant::now() + LEADER_WAIT;
    loop {
        match raft.client_write(cmd.clone()).await {
            Ok(r) => return Ok(r.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                if let (Some(id), Some(node)) = (f.leader_id, f.leader_node) {
                    return Err(NodeError::NotLeader { group: group.to_string(), leader: Some((id, node.addr)) });
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(NodeError::NotLeader { group: group.to_string(), leader: None });
                }
                let left = deadline - tokio::time::Instant::now();
                let _ = raft.wait(Some(left)).metrics(|m| m.current_leader.is_some(), "leader elected").await;
            }
            Err(e) => return Err(NodeError::Raft(e.to_string())),
        }
    }
}

/// Keeps a replica's indexing mode in step with its role: followers defer
/// HNSW inserts to the node's indexer, the leader indexes as it applies
/// (its `strong` and `leader` searches stay fast). Ends with the group.
pub async fn track_role(raft: Raft<TypeConfig>, sm: ShardStateMachine) {
    let mut rx = raft.metrics();
    let mut was = None;
    loop {
        let follower = rx.borrow().state != ServerState::Leader;
        if was != Some(follower) {
            sm.set_defer_index(follower);
            was = Some(follower);
        }
        if rx.changed().await.is_err() {
            break;
        }
    }
}

pub struct Engine {
    cfg: EngineConfig,
    kv: Arc<dyn KvEngine>,
    shards: RwLock<HashMap<ShardKey, Replica>>,
    /// Raft groups served by this node's `Raft` service.
    pub groups: Groups,
    pub(crate) peers: Peers,
    /// Timing shared by every group on the node.
    raft_config: Arc<openraft::Config>,
    meta_raft: Raft<TypeConfig>,
    meta_sm: MetaStateMachine,
    /// Serialises metadata proposals on the leader (check, then propose).
    meta_write: tokio::sync::Mutex<()>,
    /// One reconcile at a time.
    reconciling: Mutex<()>,
    /// The operation driver's progress (see [`ops`]).
    ops: ops::OpsState,
    /// The last readiness check (see [`Engine::readiness`]).
    pub last_ready: Mutex<std::result::Result<(), String>>,
    /// Notified when a split created a child replica here.
    split_created: Arc<tokio::sync::Notify>,
    /// Set at shutdown: the indexer thread stops (see [`Engine::close`]).
    stopping: Arc<std::sync::atomic::AtomicBool>,
    indexer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Collections (by uid) that existed before this data directory joined
    /// the cluster (see [`Engine::note_preexisting`]).
    preexisting: RwLock<HashSet<u64>>,
    /// Replicas placed here that could not be opened (damaged or
    /// undecodable local data), with the collection uid, the reason, and
    /// whether the data is damaged (else the open is retried).
    /// The node serves everything else; requests for these get
    /// [`NodeError::Quarantined`] (UNAVAILABLE, so coordinators use the
    /// other replicas); status and metrics report them. Moving the replica
    /// off this node wipes its local data, and moving it back rebuilds it
    /// from the group's leader.
    quarantined: RwLock<HashMap<ShardKey, (u64, String, bool)>>,
    /// Groups whose local replica lost its data (this data directory was
    /// created after them) and does not vote yet ([`crate::raft::rejoin`]).
    pub catch_up: CatchUp,
    /// Election timers and pre-votes of every group here
    /// ([`crate::raft::election`]).
    pub elections: Elections,
    /// Random id drawn when this data directory was created.
    incarnation: u64,
    /// Free space of the data volume against the watermark.
    pub disk: Arc<crate::disk::DiskSpace>,
}

/// Node-meta key of [`Engine::note_preexisting`]'s set.
const PREEXISTING_KEY: &str = "preexisting-collections";
/// Node-meta key of the data directory's incarnation (big-endian u64).
const INCARNATION_KEY: &str = "incarnation";

impl Engine {
    /// Opens the node's storage, its metadata replica and every shard
    /// replica its copy of the map places here. Blocking: call off the
    /// async workers, inside a tokio runtime.
    pub fn open(cfg: EngineConfig) -> Result<Arc<Self>> {
        let (cfg_dir, min_free) = (cfg.data_dir.clone(), if cfg.in_memory { 0 } else { cfg.min_free_disk });
        let kv: Arc<dyn KvEngine> = if cfg.in_memory { Arc::new(MemoryEngine::new()) } else { Arc::new(RocksEngine::open_with(&cfg.data_dir.join("db"), cfg.rocks)?) };
        let raft_config = Arc::new(cfg.raft.clone().validate().map_err(|e| NodeError::Raft(e.to_string()))?);
        let peers = Peers::with_tls(cfg.tls.clone());
        let meta_sm = MetaStateMachine::open(kv.clone())?;
        let meta_log = LogStore::new(kv.clone(), META_GROUP);
        let catch_up = CatchUp::load(kv.clone())?;
        // A data directory without an incarnation is new, unless it holds
        // a cluster map (written before incarnations existed): that one
        // just gets its id.
        let incarnation = match shard_store::node_meta_get(&*kv, INCARNATION_KEY)? {
            Some(b) if b.len() == 8 => u64::from_be_bytes(b.as_slice().try_into().expect("8 bytes")),
            _ => {
                let used = meta_sm.with_map(|m| !m.nodes.is_empty());
                // A new data directory may belong to a node that lost its
                // disk: its metadata replica does not vote until it has
                // caught up, unless this node starts a new cluster
                // ([`Engine::init_cluster`]). Held before the incarnation is
                // written, so a crash in between cannot skip the hold.
                if !used {
                    catch_up.hold(META_GROUP, "new data directory (a new node, or one that lost its disk)")?;
                }
                let id = rand::random::<u64>().max(1);
                shard_store::node_meta_put(&*kv, INCARNATION_KEY, id.to_be_bytes().to_vec())?;
                id
            }
        };
        let handle = tokio::runtime::Handle::current();
        let meta_raft = handle.block_on(Raft::new(cfg.node_id, raft_config.clone(), Network::new(META_GROUP, peers.clone()), meta_log.clone(), meta_sm.clone())).map_err(|e| NodeError::Raft(e.to_string()))?;
        let groups = Groups::default();
        groups.insert(META_GROUP, meta_raft.clone(), meta_log);
        let elections = Elections::new(cfg.node_id, &raft_config);
        let engine = Arc::new(Engine {
            cfg,
            kv,
            shards: RwLock::new(HashMap::new()),
            groups,
            peers,
            raft_config,
            meta_raft,
            meta_sm,
            meta_write: tokio::sync::Mutex::new(()),
            reconciling: Mutex::new(()),
            ops: ops::OpsState::default(),
            last_ready: Mutex::new(Err("not checked yet".into())),
            split_created: Arc::default(),
            stopping: Arc::default(),
            indexer: Mutex::new(None),
            preexisting: RwLock::new(HashSet::new()),
            quarantined: RwLock::new(HashMap::new()),
            catch_up,
            elections,
            incarnation,
            disk: Arc::new(crate::disk::DiskSpace::new(cfg_dir, min_free)),
        });
        if let Some(b) = shard_store::node_meta_get(&*engine.kv, PREEXISTING_KEY)? {
            // Big-endian u64 uids, one after another.
            engine.preexisting.write().extend(b.chunks_exact(8).map(|c| u64::from_be_bytes(c.try_into().expect("chunks of 8"))));
        }
        engine.sweep_orphans()?;
        engine.reconcile()?;
        engine.start_indexer();
        Ok(engine)
    }

    /// Records the collections of `map` (a seed's map, read before this node
    /// registers) as older than this data directory. Called once, when a
    /// node with an empty data directory joins a running cluster: a new
    /// node, or one that lost its disk and comes back under its old id.
    /// This node never initialises the Raft groups of those collections'
    /// shards, even where the map lists it among their first replicas (the
    /// lost-disk case): the groups exist on the other replicas, and their
    /// leaders bring this replica up to date. Initialising it here would
    /// start a group of one beside the real one, whose elections disturb
    /// the real leader and, for a shard with no other replica, would serve
    /// an empty shard as if nothing were lost. Kept on disk; a second call
    /// changes nothing.
    pub fn note_preexisting(&self, map: &ClusterMap) -> Result<()> {
        if shard_store::node_meta_get(&*self.kv, PREEXISTING_KEY)?.is_some() {
            return Ok(());
        }
        // The metadata replica's vote counts where the group has two voters
        // (raft::rejoin); this node's own copy of the map is empty so far.
        self.catch_up.set_voters(META_GROUP, map.nodes.len().min(META_VOTERS));
        let uids: Vec<u64> = map.collections.iter().map(|c| c.uid).collect();
        shard_store::node_meta_put(&*self.kv, PREEXISTING_KEY, uids.iter().flat_map(|u| u.to_be_bytes()).collect())?;
        tracing::info!(collections = uids.len(), "joining with an empty data directory: shard groups of existing collections wait for their leaders");
        self.preexisting.write().extend(uids);
        Ok(())
    }

    /// Starts the node's indexer: a thread at lower CPU priority (nice 10)
    /// that moves followers' pending versions into their HNSW graphs, so
    /// replication competes with the leader's writes only for idle CPU.
    fn start_indexer(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let stopping = self.stopping.clone();
        let spawned = std::thread::Builder::new().name("shoal-indexer".into()).spawn(move || {
            // SAFETY: setpriority on the calling thread (Linux: per thread);
            // threads it spawns (parallel graph inserts) inherit it.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
            loop {
                if stopping.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let Some(engine) = weak.upgrade() else { break };
                let shards: Vec<Arc<Shard>> = engine.shards.read().values().map(|r| r.shard()).collect();
                drop(engine);
                let mut moved = 0;
                for s in &shards {
                    match s.index_pending(INDEX_CHUNK) {
                        Ok(n) => moved += n,
                        Err(e) => tracing::error!(collection = %s.collection, shard = s.shard_id, error = %e, "indexing pending points failed"),
                    }
                }
                // Idle: rebuild one graph full of removed nodes (after a
                // split, or many replaces), if any; else keep partition
                // graphs (shard/partition.rs) up to date, one step.
                let mut worked = false;
                if moved == 0 {
                    if let Some(s) = shards.iter().find(|s| s.needs_compaction()) {
                        if let Err(e) = s.compact_index(&stopping) {
                            tracing::error!(collection = %s.collection, shard = s.shard_id, error = %e, "compacting the HNSW graph failed");
                        }
                    } else if let Some(s) = shards.iter().find(|s| s.named_need_compaction()) {
                        if let Err(e) = s.compact_named(&stopping) {
                            tracing::error!(collection = %s.collection, shard = s.shard_id, error = %e, "compacting a named HNSW graph failed");
                        }
                    } else {
                        for s in &shards {
                            match s.maintain_partitions(&stopping) {
                                Ok(w) => worked |= w,
                                Err(e) => tracing::error!(collection = %s.collection, shard = s.shard_id, error = %e, "updating partition graphs failed"),
                            }
                        }
                    }
                }
                if moved == 0 && !worked {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        });
        match spawned {
            Ok(h) => *self.indexer.lock() = Some(h),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the indexer thread; followers index as they apply");
                for r in self.shards.read().values() {
                    r.sm.set_defer_index(false);
                }
            }
        }
    }

    /// Last step of a shutdown, after the groups stopped and the indexes
    /// were saved: stops the indexer thread (a graph compaction in
    /// progress gives up) and quiesces storage, so that no thread is inside
    /// RocksDB while the process exits. Blocking.
    pub fn close(&self) {
        self.stopping.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(h) = self.indexer.lock().take() {
            let _ = h.join();
        }
        self.kv.quiesce();
    }

    /// Every [`INDEX_SYNC_INTERVAL`], on each shard this node leads whose
    /// payload indexes differ from the cluster map's: proposes the change
    /// as a control entry of the shard's log, so that every replica
    /// switches at the same position ([`crate::shard::SPECS`]). A failed
    /// proposal is tried again at the next tick.
    pub fn sync_payload_indexes(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Engine> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(INDEX_SYNC_INTERVAL).await;
                let Some(engine) = weak.upgrade() else { break };
                if engine.stopping.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let map = engine.cluster_map();
                let due: Vec<(Raft<TypeConfig>, String, crate::shard::Schema)> = engine
                    .shards
                    .read()
                    .iter()
                    .filter_map(|((name, _), r)| {
                        let want = Self::schema_in(&map, name, r.uid)?;
                        let leads = r.raft.metrics().borrow().state == ServerState::Leader;
                        (leads && want.version > r.shard().schema().version).then(|| (r.raft.clone(), r.group.clone(), want))
                    })
                    .collect();
                drop(engine);
                for (raft, group, want) in due {
                    match propose_schema(&raft, &group, &want).await {
                        Ok(()) => tracing::info!(%group, "shard schema change applied"),
                        Err(e) => tracing::warn!(%group, error = %e, "shard schema change not applied; retrying"),
                    }
                }
            }
        })
    }

    /// The schema (payload indexes, named vectors) the map gives collection
    /// `name` of `uid`.
    fn schema_in(map: &ClusterMap, name: &str, uid: u64) -> Option<crate::shard::Schema> {
        let entry = map.collections.iter().find(|c| c.uid == uid && c.config.as_ref().is_some_and(|x| x.name == name))?;
        crate::shard::Schema::current(entry)
    }

    /// Brings a shard this node leads to the map's schema before a write
    /// that names vectors: a write sent right after `UpdateVectors` added a
    /// vector must not be refused because the sync loop has not run yet.
    pub async fn catch_up_schema(&self, collection: &str, replica: &Replica) -> Result<()> {
        let Some(want) = Self::schema_in(&self.cluster_map(), collection, replica.uid) else { return Ok(()) };
        if want.version <= replica.shard().schema().version {
            return Ok(());
        }
        propose_schema(&replica.raft, &replica.group, &want).await
    }

    /// Runs [`Engine::reconcile`] whenever the applied map changes, until
    /// the engine is dropped.
    pub fn watch_map(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let mut rx = self.meta_sm.subscribe();
        let weak: Weak<Engine> = Arc::downgrade(self);
        let split = self.split_created.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = rx.changed() => if r.is_err() { break },
                    () = split.notified() => {}
                }
                let Some(engine) = weak.upgrade() else { break };
                let res = tokio::task::spawn_blocking(move || engine.reconcile()).await;
                match res {
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "applying the cluster map failed; retrying at the next change")
                    }
                    Err(e) => tracing::error!(error = %e, "reconcile task failed"),
                    Ok(Ok(())) => {}
                }
            }
        })
    }

    pub fn node_id(&self) -> u64 {
        self.cfg.node_id
    }

    /// Sum of the shards' write sequence numbers: changes whenever any shard
    /// applies a write.
    pub fn write_seq(&self) -> u64 {
        self.shards.read().values().map(|r| r.shard().seq()).fold(0u64, u64::wrapping_add)
    }

    /// The internal address this node advertises.
    pub fn advertise(&self) -> &str {
        &self.cfg.advertise
    }

    /// This node's copy of the cluster map.
    pub fn cluster_map(&self) -> ClusterMap {
        self.meta_sm.map()
    }

    /// Who the applied map places in a Raft group (for the Raft sender
    /// check of a replica that knows no membership yet): a shard's
    /// replicas and learners, or every registered node for the metadata
    /// group; `None` while no map is applied.
    pub fn placement_fn(self: &Arc<Self>) -> crate::raft::network::Placed {
        let me = Arc::downgrade(self);
        Arc::new(move |group: &str| {
            let map = me.upgrade()?.cluster_map();
            if map.nodes.is_empty() {
                return None;
            }
            if group == crate::raft::meta::META_GROUP {
                return Some(map.nodes.iter().map(|n| n.id).collect());
            }
            // A group the map does not place anywhere takes no one.
            let placed = group.rsplit_once('/').and_then(|(collection, shard)| {
                let shard: u32 = shard.parse().ok()?;
                let c = map.collections.iter().find(|c| c.config.as_ref().is_some_and(|x| x.name == collection))?;
                let p = c.shards.iter().find(|s| s.shard_id == shard)?;
                Some(p.replicas.iter().chain(&p.learners).copied().collect())
            });
            Some(placed.unwrap_or_default())
        })
    }

    /// The peer links (fault injection in tests).
    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    /// Whether this node belongs to a cluster (its metadata group has a
    /// membership or has ever voted).
    pub fn in_cluster(&self) -> bool {
        let m = self.meta_raft.metrics().borrow().clone();
        m.membership_config.membership().nodes().next().is_some() || m.current_term > 0
    }

    /// The metadata leader this node knows of: (id, address).
    pub fn meta_leader(&self) -> Option<(u64, String)> {
        let m = self.meta_raft.metrics().borrow().clone();
        let id = m.current_leader?;
        let addr = self.peers.address(id).or_else(|| m.membership_config.membership().get_node(&id).map(|n| n.addr.clone()))?;
        Some((id, addr))
    }

    pub fn is_meta_leader(&self) -> bool {
        self.meta_raft.metrics().borrow().state == ServerState::Leader
    }

    /// This node's role in the metadata group.
    pub fn meta_role(&self) -> &'static str {
        let m = self.meta_raft.metrics().borrow().clone();
        let me = self.cfg.node_id;
        if m.state == ServerState::Leader {
            "leader"
        } else if m.membership_config.membership().voter_ids().any(|v| v == me) {
            "voter"
        } else if m.membership_config.membership().get_node(&me).is_some() {
            "learner"
        } else {
            "none"
        }
    }

    /// Waits up to `wait` for the metadata group to know a leader.
    /// A leader known by id whose address this node cannot resolve (it
    /// was just removed) counts as none: an election follows.
    pub async fn wait_meta_leader(&self, wait: Duration) -> Option<(u64, String)> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let _ = self.meta_raft.wait(Some(left)).metrics(|m| m.current_leader.is_some(), "metadata leader").await;
            let leader = self.meta_leader();
            if leader.is_some() || tokio::time::Instant::now() >= deadline {
                return leader;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts a new cluster with this node as the only metadata voter and
    /// registers it. Refused if the node already belongs to a cluster.
    pub async fn init_cluster(&self) -> Result<ClusterMap> {
        if self.in_cluster() {
            return Err(NodeError::AlreadyInitialized);
        }
        // A new cluster has no entries to catch up on.
        self.catch_up.forget(META_GROUP)?;
        let me = BTreeMap::from([(self.cfg.node_id, BasicNode::new(&self.cfg.advertise))]);
        self.meta_raft.initialize(me).await.map_err(|e| match e {
            RaftError::APIError(openraft::error::InitializeError::NotAllowed(_)) => NodeError::AlreadyInitialized,
            e => NodeError::Raft(e.to_string()),
        })?;
        self.wait_meta_leader(LEADER_WAIT).await;
        self.register_node(self.cfg.node_id, self.cfg.advertise.clone(), self.incarnation).await
    }

    /// The random id drawn when this node's data directory was created.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    async fn propose_meta(&self, cmd: MetaCommand) -> Result<Reply> {
        propose(&self.meta_raft, META_GROUP, cmd.encode()).await
    }

    /// Adds node `id` (or updates its address) and makes it a metadata
    /// learner, or a voter while there are fewer than three. Leader only.
    /// `incarnation` is the id of the node's data directory (0 from nodes
    /// that predate it): a new one under a known id records a lost disk.
    pub async fn register_node(&self, id: u64, address: String, incarnation: u64) -> Result<ClusterMap> {
        if address.is_empty() {
            return Err(validate::invalid("address", "node address is empty").into());
        }
        let _w = self.meta_write.lock().await;
        // The address through the command every version applies, then the
        // incarnation through one older versions skip (it changes no
        // routing and no epoch, so their maps stay in step meanwhile).
        self.propose_meta(MetaCommand::RegisterNode { id, address: address.clone() }).await?;
        let known = self.meta_sm.with_map(|m| m.nodes.iter().find(|n| n.id == id).map(|n| n.incarnation));
        if incarnation != 0 && known != Some(incarnation) {
            self.propose_meta(MetaCommand::Register { id, address: address.clone(), incarnation }).await?;
        }
        let raft_err = |e: RaftError<u64, ClientWriteError<u64, BasicNode>>| NodeError::Raft(e.to_string());
        let membership = self.meta_raft.metrics().borrow().membership_config.membership().clone();
        match membership.get_node(&id) {
            None => {
                // Waits for the new learner to catch up, but not forever: an
                // unreachable address held the metadata lock, and with it
                // every metadata change, for good. The node registers again.
                match tokio::time::timeout(LEARNER_CATCH_UP, self.meta_raft.add_learner(id, BasicNode::new(&address), true)).await {
                    Ok(r) => {
                        r.map_err(raft_err)?;
                    }
                    Err(_) => return Err(NodeError::Raft(format!("node {id} at {address} did not catch up with the metadata log within {LEARNER_CATCH_UP:?}; it is a learner until it registers again"))),
                }
            }
            Some(n) if n.addr != address => {
                let nodes = BTreeMap::from([(id, BasicNode::new(&address))]);
                self.meta_raft.change_membership(ChangeMembers::SetNodes(nodes), false).await.map_err(raft_err)?;
            }
            Some(_) => {}
        }
        let voters: BTreeSet<u64> = self.meta_raft.metrics().borrow().membership_config.membership().voter_ids().collect();
        if voters.len() < META_VOTERS && !voters.contains(&id) {
            // Only a learner that answers becomes a voter: making an
            // unreachable one a voter never commits (the joint quorum
            // needs it) and held the metadata lock for good. openraft's
            // blocking add_learner returns at once while the log is short
            // (a learner holding nothing is within its lag threshold), so
            // wait here, bounded, for its first acknowledgement.
            let answered = |m: &openraft::RaftMetrics<u64, BasicNode>| m.replication.as_ref().and_then(|r| r.get(&id).copied().flatten()).is_some();
            if self.meta_raft.wait(Some(LEARNER_CATCH_UP)).metrics(answered, "learner answered").await.is_err() {
                return Err(NodeError::Raft(format!("node {id} at {address} has not caught up with the metadata log within {LEARNER_CATCH_UP:?}; it is a learner until it registers again")));
            }
            self.meta_raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false).await.map_err(raft_err)?;
            tracing::info!(node = id, "node joined the metadata voters");
        }
        Ok(self.cluster_map())
    }

    /// Validates, places and creates a collection; returns the new map.
    /// Leader only.
    pub async fn create_collection(&self, config: &CollectionConfig) -> Result<ClusterMap> {
        let config = validate::collection_config(config)?;
        let _w = self.meta_write.lock().await;
        let map = self.cluster_map();
        if map.collections.iter().any(|c| c.config.as_ref().is_some_and(|x| x.name == config.name)) {
            return Err(NodeError::CollectionExists(config.name));
        }
        let nodes: Vec<u64> = map.nodes.iter().map(|n| n.id).collect();
        let placement = placement::place(&nodes, config.shard_count, config.replication_factor).map_err(|e| validate::invalid("replication_factor", e.to_string()))?;
        let shards: Vec<ShardPlacement> = routing::uniform_ranges(config.shard_count)
            .into_iter()
            .zip(placement)
            .enumerate()
            .map(|(i, ((start, end), replicas))| ShardPlacement { shard_id: i as u32, range_start: start, range_end: end, replicas, ..Default::default() })
            .collect();
        let name = config.name.clone();
        let entry = CollectionEntry { config: Some(config), shards, uid: 0, ..Default::default() };
        let reply = self.propose_meta(MetaCommand::CreateCollection { entry: prost::Message::encode_to_vec(&entry) }).await?;
        match reply.error.as_deref() {
            None => Ok(self.cluster_map()),
            Some(EXISTS) => Err(NodeError::CollectionExists(name)),
            Some(e) => Err(NodeError::Rejected(e.to_string())),
        }
    }

    /// Removes a collection from the map; every replica drops its data
    /// when it applies the change. Leader only.
    pub async fn delete_collection(&self, name: &str) -> Result<ClusterMap> {
        let _w = self.meta_write.lock().await;
        if !self.cluster_map().collections.iter().any(|c| c.config.as_ref().is_some_and(|x| x.name == name)) {
            return Err(NodeError::CollectionNotFound(name.to_string()));
        }
        let reply = self.propose_meta(MetaCommand::DeleteCollection { name: name.to_string() }).await?;
        match reply.error.as_deref() {
            None => Ok(self.cluster_map()),
            Some(NOT_FOUND) => Err(NodeError::CollectionNotFound(name.to_string())),
            Some(e) => Err(NodeError::Rejected(e.to_string())),
        }
    }

    /// Creates, re-points and deletes aliases in one map change
    /// ([`crate::raft::aliases`]). Leader only.
    pub async fn update_aliases(&self, req: &shoal_proto::v1::UpdateAliasesRequest) -> Result<ClusterMap> {
        let _w = self.meta_write.lock().await;
        // Checked before proposing, so that a bad update never enters the
        // log; the apply checks again.
        crate::raft::aliases::apply(&mut self.cluster_map(), req).map_err(alias_error)?;
        let reply = self.propose_meta(MetaCommand::UpdateAliases { request: prost::Message::encode_to_vec(req) }).await?;
        match reply.error {
            None => Ok(self.cluster_map()),
            Some(e) => Err(alias_error(e)),
        }
    }

    /// Adds and drops a collection's payload indexes in one map change;
    /// every replica re-indexes when it applies it ([`Engine::reconcile`]).
    /// Leader only.
    pub async fn update_payload_indexes(&self, req: &shoal_proto::v1::UpdatePayloadIndexesRequest) -> Result<ClusterMap> {
        self.change_collection(&req.collection, |entry| {
            let config = entry.config.clone().unwrap_or_default();
            let specs = validate::payload_index_change(&config.payload_indexes, &req.create, &req.drop)?;
            validate::collection_config(&CollectionConfig { payload_indexes: specs.clone(), ..config })?;
            let encoded = prost::Message::encode_to_vec(&CollectionConfig { payload_indexes: specs, ..Default::default() });
            Ok(MetaCommand::SetPayloadIndexes { collection: req.collection.clone(), uid: entry.uid, specs: encoded })
        })
        .await
    }

    /// Adds and drops a collection's named vectors in one map change; each
    /// shard's leader then switches its shard through the shard's log
    /// ([`Engine::sync_payload_indexes`]). Leader only.
    pub async fn update_vectors(&self, req: &shoal_proto::v1::UpdateVectorsRequest) -> Result<ClusterMap> {
        self.change_collection(&req.collection, |entry| {
            let config = entry.config.clone().unwrap_or_default();
            let vectors = validate::vector_change(&config.vectors, &req.add, &req.drop)?;
            let vectors = validate::collection_config(&CollectionConfig { vectors, ..config })?.vectors;
            let encoded = prost::Message::encode_to_vec(&CollectionConfig { vectors, ..Default::default() });
            Ok(MetaCommand::SetVectors { collection: req.collection.clone(), uid: entry.uid, vectors: encoded })
        })
        .await
    }

    /// Changes a collection's storage kind and vector memory in one map
    /// change; each replica takes them from the map ([`Engine::reconcile`],
    /// [`Shard::set_storage`]). Leader only.
    pub async fn update_storage(&self, req: &shoal_proto::v1::UpdateStorageRequest) -> Result<ClusterMap> {
        self.change_collection(&req.collection, |entry| {
            let config = entry.config.clone().unwrap_or_default();
            let storage = if req.storage == 0 { config.storage } else { validate::storage(req.storage)? as i32 };
            let memory = if req.memory == 0 { config.memory } else { validate::memory(req.memory)? as i32 };
            validate::collection_config(&CollectionConfig { storage, memory, ..config })?;
            Ok(MetaCommand::SetStorage { collection: req.collection.clone(), uid: entry.uid, storage, memory })
        })
        .await
    }

    /// Proposes the metadata command `make` builds from collection
    /// `name`'s map entry (checks and proposal under the metadata write
    /// lock); returns the map after it. Leader only.
    async fn change_collection(&self, name: &str, make: impl FnOnce(&shoal_proto::internal::v1::CollectionEntry) -> Result<MetaCommand>) -> Result<ClusterMap> {
        let _w = self.meta_write.lock().await;
        let map = self.cluster_map();
        let entry = map.collections.iter().find(|c| c.config.as_ref().is_some_and(|x| x.name == name)).ok_or_else(|| NodeError::CollectionNotFound(name.to_string()))?;
        let reply = self.propose_meta(make(entry)?).await?;
        match reply.error.as_deref() {
            None => Ok(self.cluster_map()),
            Some(NOT_FOUND) => Err(NodeError::CollectionNotFound(name.to_string())),
            Some(e) => Err(NodeError::Rejected(e.to_string())),
        }
    }

    /// Opens the replicas the map places here and drops the ones it no
    /// longer does. Blocking.
    pub fn reconcile(&self) -> Result<()> {
        let _r = self.reconciling.lock();
        let map = self.cluster_map();
        self.peers.set_addresses(map.nodes.iter().map(|n| (n.id, n.address.clone())).collect());
        let me = self.cfg.node_id;
        let mut wanted: HashMap<ShardKey, (CollectionConfig, ShardPlacement, u64)> = HashMap::new();
        for c in &map.collections {
            let Some(config) = c.config.as_ref() else {
                continue;
            };
            for s in c.shards.iter().filter(|s| s.replicas.contains(&me) || s.learners.contains(&me)) {
                // A child being split off opens once this node's replica
                // of the parent has created it (the split entry), never
                // empty: until the split commits it may only be created.
                // Except where this node's parent replica is already past
                // the split without having created it (it got the parent's
                // state by snapshot): then the child opens empty and is
                // sent the child leader's snapshot.
                if s.splitting && !self.holds_uid(&config.name, s.shard_id, c.uid) && !self.shards.read().contains_key(&(config.name.clone(), s.shard_id)) && !self.parent_past_split(&config.name, s) {
                    continue;
                }
                // A replica that starts empty replays its log from the
                // beginning: under the schema the collection was created
                // with (a shard with data opens with its recorded one).
                let start = crate::shard::Schema::initial(c).map_or_else(|| config.clone(), |s| s.apply_to(config));
                wanted.insert((config.name.clone(), s.shard_id), (start, s.clone(), c.uid));
            }
        }
        let doomed: Vec<Replica> = {
            let mut shards = self.shards.write();
            let gone: Vec<ShardKey> = shards.iter().filter(|(k, r)| wanted.get(*k).is_none_or(|w| w.2 != r.uid)).map(|(k, _)| k.clone()).collect();
            gone.iter().filter_map(|k| shards.remove(k)).collect()
        };
        for r in doomed {
            self.drop_replica(r)?;
        }
        // A quarantined replica no longer placed here (moved away): its
        // local data goes, so a later placement here starts fresh.
        // Also one placed here again as a learner (moved away and back
        // while this node only saw the final map): the group is adding this
        // node afresh, so its damaged copy goes and a fresh one opens.
        let released: Vec<ShardKey> =
            self.quarantined.read().iter().filter(|(k, q)| wanted.get(*k).is_none_or(|w| w.2 != q.0 || w.1.learners.contains(&me))).map(|(k, _)| k.clone()).collect();
        for key in released {
            tracing::info!(collection = %key.0, shard = key.1, "quarantined replica no longer placed here: wiping its local data");
            // One failed wipe must not stop every later reconcile: it stays
            // quarantined, with the reason, and is tried again next time.
            match self.wipe_local(&key.0, key.1) {
                Ok(()) => {
                    self.quarantined.write().remove(&key);
                }
                Err(e) => {
                    tracing::error!(collection = %key.0, shard = key.1, error = %e, "wiping a quarantined replica failed");
                    if let Some(q) = self.quarantined.write().get_mut(&key) {
                        q.1 = format!("wiping its local data failed: {e}");
                    }
                }
            }
        }
        for (key, (_, placement, _)) in &wanted {
            self.catch_up.set_voters(&group_name(&key.0, key.1), placement.replicas.len());
        }
        if !map.nodes.is_empty() {
            self.catch_up.set_voters(META_GROUP, map.nodes.len().min(META_VOTERS));
        }
        for (key, (config, placement, uid)) in wanted {
            // Damaged data stays quarantined until repaired; an open that
            // failed for another reason (I/O, a full disk) is tried again
            // at every reconcile.
            if let Some(r) = self.shards.read().get(&key) {
                r.sm.set_storage(config.storage, config.memory);
            }
            if self.shards.read().contains_key(&key) || self.quarantined.read().get(&key).is_some_and(|q| q.0 == uid && q.2) {
                continue;
            }
            match self.open_shard(&config, &placement, uid, &map) {
                Ok(_) => {
                    self.quarantined.write().remove(&key);
                }
                Err(e) => {
                    // One replica that cannot open must not stop the node (it
                    // once crash-looped every node holding a replica).
                    let damaged = matches!(e, NodeError::Storage(crate::error::StorageError::Corrupt { .. }) | NodeError::Index(_));
                    tracing::error!(collection = %key.0, shard = key.1, error = %e, damaged, "replica cannot be opened: quarantined; the other replicas serve it (move it off this node and back to repair)");
                    self.groups.remove(&group_name(&key.0, key.1));
                    self.quarantined.write().insert(key, (uid, e.to_string(), damaged));
                }
            }
        }
        Ok(())
    }

    /// At start, before any group runs: wipes local replica data the map
    /// no longer places on this node. A replica dropped while the node was
    /// down (a quarantined one moved away, say) would otherwise keep its
    /// data and uid, and a replica moved back later would reopen it.
    fn sweep_orphans(&self) -> Result<()> {
        let me = self.cfg.node_id;
        let placed: HashSet<ShardKey> = self.meta_sm.with_map(|m| {
            m.collections
                .iter()
                .filter_map(|c| c.config.as_ref().map(|cfg| (cfg.name.clone(), c)))
                .flat_map(|(name, c)| c.shards.iter().filter(|s| s.replicas.contains(&me) || s.learners.contains(&me)).map(move |s| (name.clone(), s.shard_id)))
                .collect()
        });
        if !self.in_cluster() {
            return Ok(());
        }
        for key in shard_store::node_meta_names(&*self.kv, crate::raft::state_machine::UID_PREFIX)? {
            let Some(replica) = crate::raft::state_machine::parse_uid_key(&key) else { continue };
            if !placed.contains(&replica) {
                tracing::info!(collection = %replica.0, shard = replica.1, "local data of a replica no longer placed here: wiping it");
                self.wipe_local(&replica.0, replica.1)?;
            }
        }
        Ok(())
    }

    /// Replicas quarantined on this node: (collection, shard, reason).
    pub fn quarantined(&self) -> Vec<(String, u32, String)> {
        let mut v: Vec<_> = self.quarantined.read().iter().map(|(k, q)| (k.0.clone(), k.1, q.1.clone())).collect();
        v.sort();
        v
    }

    /// Deletes every local record of a replica: points, index entries,
    /// HNSW files, Raft log and vote, and its collection uid.
    fn wipe_local(&self, collection: &str, shard_id: u32) -> Result<()> {
        let dir = self.cfg.data_dir.join("index").join(collection);
        let store = ShardStore::new(self.kv.clone(), collection, shard_id);
        ShardStateMachine::wipe(&store, collection, shard_id, &dir)?;
        LogStore::new(self.kv.clone(), &group_name(collection, shard_id)).destroy().map_err(|e| NodeError::Raft(e.to_string()))?;
        shard_store::node_meta_delete(&*self.kv, &uid_key(collection, shard_id))?;
        self.catch_up.forget(&group_name(collection, shard_id))?;
        Ok(())
    }

    /// Whether this node's replica of `child`'s parent has the split behind
    /// it (its owned range ends below the child's).
    fn parent_past_split(&self, collection: &str, child: &ShardPlacement) -> bool {
        self.shards.read().get(&(collection.to_string(), child.split_from)).is_some_and(|r| {
            let st = r.shard().range_state();
            st.owned.is_some_and(|(_, hi)| hi < child.range_start) && st.pending.is_none_or(|p| p.child != child.shard_id)
        })
    }

    /// Whether local replica data of `collection/shard_id` belongs to the
    /// collection created as `uid`.
    fn holds_uid(&self, collection: &str, shard_id: u32, uid: u64) -> bool {
        shard_store::node_meta_get(&*self.kv, &uid_key(collection, shard_id)).ok().flatten().is_some_and(|b| b.as_slice() == uid.to_be_bytes())
    }

    fn drop_replica(&self, r: Replica) -> Result<()> {
        let shard = r.shard();
        tracing::info!(group = %r.group, "dropping replica no longer placed here");
        self.groups.remove(&r.group);
        self.catch_up.forget(&r.group)?;
        let _ = tokio::runtime::Handle::current().block_on(r.raft.shutdown());
        let (collection, shard_id) = (shard.collection.clone(), shard.shard_id);
        drop(shard);
        let dir = self.cfg.data_dir.join("index").join(&collection);
        let store = ShardStore::new(self.kv.clone(), &collection, shard_id);
        ShardStateMachine::wipe(&store, &collection, shard_id, &dir)?;
        r.log.destroy().map_err(|e| NodeError::Raft(e.to_string()))?;
        shard_store::node_meta_delete(&*self.kv, &uid_key(&collection, shard_id))?;
        Ok(())
    }

    /// Whether collection `uid` is older than this node's data directory:
    /// created before the map registered this incarnation (or the map has
    /// not registered it yet), or noted by [`Engine::note_preexisting`].
    /// Maps from before incarnations existed (0) rely on the note alone.
    fn older_than_me(&self, uid: u64, map: &ClusterMap) -> bool {
        let registered = match map.nodes.iter().find(|n| n.id == self.cfg.node_id) {
            Some(n) if n.incarnation == self.incarnation => uid < n.since,
            Some(n) if n.incarnation == 0 => false,
            _ => true,
        };
        registered || self.preexisting.read().contains(&uid)
    }

    /// Opens a hosted shard replica and its Raft group. A replica of a
    /// collection uid not seen here before starts from empty storage and
    /// initialises its group. Blocking.
    fn open_shard(&self, config: &CollectionConfig, placement: &ShardPlacement, uid: u64, map: &ClusterMap) -> Result<Replica> {
        // The name becomes a directory below the data directory: never one
        // that leaves it (a map applied by an older version did not check).
        validate::collection_name(&config.name)?;
        let shard_id = placement.shard_id;
        let group = group_name(&config.name, shard_id);
        let store = ShardStore::new(self.kv.clone(), &config.name, shard_id);
        let log = LogStore::new(self.kv.clone(), &group);
        let dir = self.cfg.data_dir.join("index").join(&config.name);
        let key = uid_key(&config.name, shard_id);
        let older = self.older_than_me(uid, map);
        let fresh = {
            // Checked and set under the lock a split's child creation takes.
            let _g = CHILD_LOCK.lock();
            let known = shard_store::node_meta_get(&*self.kv, &key)?.map(|b| b.as_slice() == uid.to_be_bytes());
            let fresh = known != Some(true);
            // A group older than this data directory lost its local data
            // with the disk: it receives the log but does not vote until it
            // holds every committed entry. So does a split child of a
            // parent still catching up (its uid was written by the replayed
            // split, not by this open). Recorded before the uid, so a crash
            // or a failed open in between cannot skip the hold.
            let prefix = format!("{}/", config.name);
            let parent_held = older && self.catch_up.held().iter().any(|g| g.starts_with(&prefix) && g != &group);
            if (fresh && older) || parent_held {
                self.catch_up.hold(&group, "shard group older than this data directory (the node lost its disk)")?;
            } else if fresh {
                // A hold left from an earlier collection of this name.
                self.catch_up.forget(&group)?;
            }
            if fresh {
                // Leftovers of an earlier collection with this name must not
                // leak into the new one.
                ShardStateMachine::wipe(&store, &config.name, shard_id, &dir)?;
                log.destroy().map_err(|e| NodeError::Raft(e.to_string()))?;
                shard_store::node_meta_put(&*self.kv, &key, uid.to_be_bytes().to_vec())?;
            }
            fresh
        };
        let sm = ShardStateMachine::open_with(config.clone(), shard_id, store, dir, self.cfg.plan)?;
        sm.set_split_hook(self.split_created.clone());
        sm.set_node_id(self.cfg.node_id);
        let network = Network::new(group.clone(), self.peers.clone());
        let handle = tokio::runtime::Handle::current();
        let raft = handle.block_on(Raft::new(self.cfg.node_id, self.raft_config.clone(), network, log.clone(), sm.clone())).map_err(|e| NodeError::Raft(e.to_string()))?;
        // Only the members a shard was created with initialise its group;
        // a replica added later (a move) waits for the leader to add it.
        if fresh && placement.changes == 0 && placement.replicas.contains(&self.cfg.node_id) && !older {
            let addr = |id: &u64| map.nodes.iter().find(|n| n.id == *id).map_or("", |n| n.address.as_str());
            let members: BTreeMap<u64, BasicNode> = placement.replicas.iter().map(|id| (*id, BasicNode::new(addr(id)))).collect();
            // Every replica may initialise with the same membership (safe in
            // openraft); the first does it at once, the others only if the
            // first has not reached them, so one node being down at creation
            // does not leave the shard without a leader.
            let first = placement.replicas.first() == Some(&self.cfg.node_id);
            let r = raft.clone();
            handle.spawn(async move {
                if !first {
                    tokio::time::sleep(SECONDARY_INIT_DELAY).await;
                    let m = r.metrics().borrow().clone();
                    if m.current_term > 0 || m.last_log_index.is_some() {
                        return;
                    }
                }
                if let Err(e) = r.initialize(members).await {
                    tracing::debug!(error = %e, "shard group already initialised");
                }
            });
        }
        handle.spawn(track_role(raft.clone(), sm.clone()));
        self.groups.insert(group.clone(), raft.clone(), log.clone());
        let writes = crate::raft::batch::WriteQueue::start(&handle, raft.clone(), group.clone());
        let replica = Replica { group, raft, sm, log, writes, uid, transfer: Default::default() };
        self.shards.write().insert((config.name.clone(), shard_id), replica.clone());
        tracing::info!(collection = %config.name, shard = shard_id, fresh, "replica open");
        Ok(replica)
    }

    /// The local replica of a shard for a read, and whether the read must
    /// leave out the frozen copies of a pending split: the map the read
    /// was routed with (the node's own, the epochs being equal) already
    /// routes them to the child.
    ///
    /// A replica that has not applied a split the map has committed (it is
    /// behind its group) still holds the moved range as its own: it answers
    /// [`NodeError::ShardOpening`] and the coordinator reads elsewhere.
    pub fn replica_for_read(&self, collection: &str, shard_id: u32, epoch: u64) -> Result<(Replica, bool)> {
        let r = self.replica(collection, shard_id, epoch)?;
        let st = r.shard().range_state();
        let (hide, behind) = self.meta_sm.with_map(|m| {
            let Some(c) = m.collections.iter().find(|c| c.config.as_ref().is_some_and(|x| x.name == collection)) else { return (false, false) };
            let hide = st.pending.is_some_and(|p| c.shards.iter().find(|s| s.shard_id == shard_id).is_some_and(|s| s.range_end < p.mid));
            let owns_below = |start: u64| st.owned.is_some_and(|(_, hi)| hi < start);
            let behind = c.shards.iter().any(|s| s.split_child && !s.splitting && s.split_from == shard_id && !owns_below(s.range_start));
            (hide, behind)
        });
        if behind {
            return Err(NodeError::ShardOpening { collection: collection.to_string(), shard: shard_id });
        }
        Ok((r, hide))
    }

    /// The local replica of a shard, checking the sender's map epoch.
    pub fn replica(&self, collection: &str, shard_id: u32, epoch: u64) -> Result<Replica> {
        // Every shard request passes here: read the map in place, no copy.
        let have = self.meta_sm.with_map(|m| m.epoch);
        if epoch != 0 && epoch < have {
            return Err(NodeError::StaleEpoch { got: epoch, have });
        }
        if epoch > have {
            return Err(NodeError::MapBehind { want: epoch, have });
        }
        if let Some(s) = self.shards.read().get(&(collection.to_string(), shard_id)) {
            return Ok(s.clone());
        }
        if let Some((_, reason, _)) = self.quarantined.read().get(&(collection.to_string(), shard_id)) {
            return Err(NodeError::Quarantined { collection: collection.to_string(), shard: shard_id, reason: reason.clone() });
        }
        self.meta_sm.with_map(|map| match map.collections.iter().find(|c| c.config.as_ref().is_some_and(|x| x.name == collection)) {
            Some(c) if c.shards.iter().any(|s| s.shard_id == shard_id && s.replicas.contains(&self.cfg.node_id)) => {
                Err(NodeError::ShardOpening { collection: collection.to_string(), shard: shard_id })
            }
            Some(_) => Err(NodeError::ShardNotFound { collection: collection.to_string(), shard: shard_id }),
            None => Err(NodeError::CollectionNotFound(collection.to_string())),
        })
    }

    /// Saves every dirty HNSW index; returns how many were written.
    pub fn save_indexes(&self) -> usize {
        let shards: Vec<Arc<Shard>> = self.shards.read().values().map(|r| r.shard()).collect();
        let mut n = 0;
        for s in shards {
            match s.save_index() {
                Ok(true) => n += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(collection = %s.collection, shard = s.shard_id, error = %e, "saving index failed")
                }
            }
        }
        n
    }

    /// Stops every Raft group (graceful shutdown).
    pub async fn shutdown_groups(&self) {
        let rafts: Vec<Raft<TypeConfig>> = self.shards.read().values().map(|r| r.raft.clone()).chain(std::iter::once(self.meta_raft.clone())).collect();
        for r in rafts {
            let _ = r.shutdown().await;
        }
    }

    /// Contents digest of a local replica: (points, xxh3-128 hex over the
    /// stored points in id order without their replica-local offsets,
    /// applied index), streamed ([`crate::shard::Shard::digest`]: it loaded
    /// every point into memory at once). Blocking.
    pub fn shard_digest(&self, collection: &str, shard_id: u32) -> Result<(u64, String, u64)> {
        let r = self.replica(collection, shard_id, 0)?;
        let applied = r.raft.metrics().borrow().last_applied.map_or(0, |l| l.index);
        let (points, digest) = r.shard().digest()?;
        Ok((points, format!("{digest:032x}"), applied))
    }

    /// Raft metrics of every group on this node: `meta` and each hosted
    /// shard replica.
    pub fn group_metrics(&self) -> Vec<(String, openraft::RaftMetrics<u64, BasicNode>)> {
        let mut out = vec![(META_GROUP.to_string(), self.meta_raft.metrics().borrow().clone())];
        out.extend(self.shards.read().values().map(|r| (r.group.clone(), r.raft.metrics().borrow().clone())));
        out
    }

    /// Groups whose Raft core stopped on a fatal error (a failed log or
    /// state-machine write, such as a full disk). openraft does not restart
    /// them: shard groups are reopened by [`Engine::restart_stopped_groups`],
    /// and a stopped metadata group fails the node's liveness check.
    pub fn stopped_groups(&self) -> Vec<String> {
        let mut v: Vec<String> = self.group_metrics().into_iter().filter(|(_, m)| m.running_state.is_err()).map(|(g, _)| g).collect();
        v.sort();
        v
    }

    /// Lets held replicas that have caught up vote again (also checked at
    /// every AppendEntries; this covers a leader that fell silent just
    /// after the replica caught up).
    pub fn check_catch_up(&self) {
        for g in self.catch_up.held() {
            if let Some(raft) = self.groups.get(&g) {
                self.catch_up.check(&g, &raft);
            }
        }
    }

    /// Reopens shard replicas whose Raft core stopped on a storage error
    /// (a write that failed on a full volume), once the volume is above
    /// its watermark again: the replica is dropped from the node without
    /// touching its data and opened again by [`Engine::reconcile`], which
    /// quarantines it if it cannot open. Returns how many. Blocking.
    pub fn restart_stopped_groups(&self) -> Result<usize> {
        if self.disk.is_low() {
            return Ok(0);
        }
        let stopped: Vec<Replica> = {
            let mut shards = self.shards.write();
            let keys: Vec<ShardKey> = shards.iter().filter(|(_, r)| r.raft.metrics().borrow().running_state.is_err()).map(|(k, _)| k.clone()).collect();
            keys.iter().filter_map(|k| shards.remove(k)).collect()
        };
        for r in &stopped {
            tracing::warn!(group = %r.group, "raft group stopped on a storage error: reopening it");
            self.groups.remove(&r.group);
            let _ = tokio::runtime::Handle::current().block_on(r.raft.shutdown());
        }
        if !stopped.is_empty() {
            self.reconcile()?;
        }
        Ok(stopped.len())
    }

    /// Whether the metadata group stopped on a storage error (it is not
    /// reopened in place: the node's liveness check fails instead).
    pub fn meta_stopped(&self) -> bool {
        self.meta_raft.metrics().borrow().running_state.is_err()
    }

    pub fn status(&self, device: &str) -> NodeStatusResponse {
        let me = self.cfg.node_id;
        let mut shards: Vec<ShardReplicaStatus> = self
            .shards
            .read()
            .values()
            .map(|r| {
                let s = r.shard();
                let m = r.raft.metrics().borrow().clone();
                let vectors = s.vector_file_bytes();
                ShardReplicaStatus {
                    collection: s.collection.clone(),
                    shard_id: s.shard_id,
                    points: s.len(),
                    applied_index: m.last_applied.map_or(0, |l| l.index),
                    term: m.current_term,
                    leader: m.current_leader == Some(me),
                    leader_id: m.current_leader.unwrap_or(0),
                    unindexed: s.unindexed(),
                    quarantined: String::new(),
                    catching_up: self.catch_up.is_held(&r.group),
                    storage: s.storage_kind() as i32,
                    vectors_mapped_bytes: vectors.0,
                    vectors_resident_bytes: vectors.1,
                }
            })
            .collect();
        shards.extend(self.quarantined().into_iter().map(|(collection, shard_id, reason)| ShardReplicaStatus { collection, shard_id, quarantined: reason, ..Default::default() }));
        shards.sort_by(|a, b| (&a.collection, a.shard_id).cmp(&(&b.collection, b.shard_id)));
        let index_bytes = self.shards.read().values().map(|r| r.shard().index_memory_bytes() as u64).sum();
        NodeStatusResponse {
            node_id: me,
            device: device.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            shards,
            rss_bytes: crate::memory::rss_bytes(),
            index_bytes,
            meta_role: self.meta_role().to_string(),
            meta_leader: self.meta_raft.metrics().borrow().current_leader.unwrap_or(0),
            incarnation: self.incarnation,
            meta_catching_up: self.catch_up.is_held(META_GROUP),
            disk_free_bytes: self.disk.free(),
            disk_low: self.disk.is_low(),
            stopped_groups: self.stopped_groups(),
            gpu: crate::scan::device::offload().map(|o| o.status()),
            ..Default::default()
        }
    }
}

/// An alias update's rejection as the error clients see.
fn alias_error(e: String) -> NodeError {
    if let Some(m) = e.strip_prefix(crate::raft::meta::NOT_FOUND) {
        NodeError::AliasNotFound(format!("not found{m}"))
    } else if let Some(m) = e.strip_prefix(crate::raft::meta::EXISTS) {
        NodeError::AliasConflict(format!("already exists{m}"))
    } else {
        NodeError::Invalid(validate::invalid("actions", e))
    }
}
