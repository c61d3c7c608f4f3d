//! The node's shards and the cluster map they are hosted for.
//!
//! Every hosted shard replica is a Raft group ([`Replica`]): writes are
//! proposed to it and applied by its state machine; the groups are served
//! over `shoal.internal.v1.Raft` from [`Engine::groups`].
//!
//! Until the Raft issue moves it behind a metadata Raft group, each node is
//! its own metadata authority: the cluster map (nodes, collections, shard
//! ranges, replica placement, epoch) is stored under a node-level key in
//! RocksDB and every change bumps the epoch. The coordinator caches the map
//! and refreshes it when a node answers with a stale-epoch error.
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use prost::Message;
use shoal_proto::internal::v1::{ClusterMap, CollectionEntry, NodeEntry, NodeStatusResponse, ShardPlacement, ShardReplicaStatus};
use shoal_proto::v1::CollectionConfig;
use shoal_proto::{placement, routing, validate};

use crate::error::{NodeError, Result, StorageError};
use crate::raft::log_store::LogStore;
use crate::raft::network::{Groups, Network, Peers};
use crate::raft::state_machine::ShardStateMachine;
use crate::raft::{default_config, TypeConfig};
use crate::shard::Shard;
use crate::storage::memory::MemoryEngine;
use crate::storage::rocks::{RocksEngine, RocksTuning};
use crate::storage::{shard_store, KvEngine, ShardStore};

const MAP_KEY: &str = "cluster_map";

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
    pub exact_scan_threshold: u64,
}

type ShardKey = (String, u32);

/// One hosted shard replica: its Raft group, state machine and log.
#[derive(Clone)]
pub struct Replica {
    pub group: String,
    pub raft: openraft::Raft<TypeConfig>,
    pub sm: ShardStateMachine,
    pub log: LogStore,
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

pub struct Engine {
    cfg: EngineConfig,
    kv: Arc<dyn KvEngine>,
    shards: RwLock<HashMap<ShardKey, Replica>>,
    /// Raft groups served by this node's `Raft` service.
    pub groups: Groups,
    peers: Peers,
    /// Timing shared by every shard group on the node.
    raft_config: Arc<openraft::Config>,
    map: RwLock<ClusterMap>,
    meta: Mutex<()>,
}

impl Engine {
    /// Opens the node's storage and every shard replica it hosts.
    pub fn open(cfg: EngineConfig) -> Result<Arc<Self>> {
        let kv: Arc<dyn KvEngine> = if cfg.in_memory { Arc::new(MemoryEngine::new()) } else { Arc::new(RocksEngine::open_with(&cfg.data_dir.join("db"), cfg.rocks)?) };
        let mut map = match shard_store::node_meta_get(&*kv, MAP_KEY)? {
            Some(b) => ClusterMap::decode(b.as_slice()).map_err(|e| StorageError::Corrupt { what: "cluster map", detail: e.to_string() })?,
            None => ClusterMap::default(),
        };
        let me = NodeEntry { id: cfg.node_id, address: cfg.advertise.clone() };
        match map.nodes.iter_mut().find(|n| n.id == cfg.node_id) {
            Some(n) if n.address == me.address => {}
            Some(n) => {
                n.address = me.address.clone();
                map.epoch += 1;
            }
            None => {
                map.nodes.push(me);
                map.epoch += 1;
            }
        }
        shard_store::node_meta_put(&*kv, MAP_KEY, map.encode_to_vec())?;
        let engine = Arc::new(Engine {
            cfg,
            kv,
            shards: RwLock::new(HashMap::new()),
            groups: Groups::default(),
            peers: Peers::default(),
            raft_config: Arc::new(default_config().validate().map_err(|e| NodeError::Raft(e.to_string()))?),
            map: RwLock::new(map.clone()),
            meta: Mutex::new(()),
        });
        for c in &map.collections {
            let config = c.config.clone().unwrap_or_default();
            for s in &c.shards {
                if s.replicas.contains(&engine.cfg.node_id) {
                    engine.open_shard(&config, s, &map, false)?;
                }
            }
        }
        Ok(engine)
    }

    pub fn node_id(&self) -> u64 {
        self.cfg.node_id
    }

    /// Sum of the shards' write sequence numbers: changes whenever any shard
    /// applies a write.
    pub fn write_seq(&self) -> u64 {
        self.shards.read().values().map(|r| r.shard().seq()).fold(0u64, u64::wrapping_add)
    }

    /// The internal address this node is known by in the cluster map.
    pub fn advertise(&self) -> &str {
        &self.cfg.advertise
    }

    /// Opens a hosted shard replica and its Raft group. `fresh` drops any
    /// leftovers of an earlier collection of the same name and, on the
    /// preferred leader (first replica), initialises the group. Blocking:
    /// call off the async workers.
    fn open_shard(&self, config: &CollectionConfig, placement: &ShardPlacement, map: &ClusterMap, fresh: bool) -> Result<Replica> {
        let shard_id = placement.shard_id;
        let group = group_name(&config.name, shard_id);
        let store = ShardStore::new(self.kv.clone(), &config.name, shard_id);
        let log = LogStore::new(self.kv.clone(), &group);
        let dir = self.cfg.data_dir.join("index").join(&config.name);
        if fresh {
            // Leftovers of an earlier collection with this name (a crash
            // between the map update and the data drop) must not leak in.
            store.destroy()?;
            log.destroy().map_err(|e| NodeError::Raft(e.to_string()))?;
            let _ = std::fs::remove_file(dir.join(format!("{shard_id}.usearch")));
            let _ = std::fs::remove_file(dir.join(format!("{shard_id}.meta")));
        }
        let sm = ShardStateMachine::open_with(config.clone(), shard_id, store, dir, self.cfg.exact_scan_threshold)?;
        let network = Network::new(group.clone(), self.peers.clone());
        let handle = tokio::runtime::Handle::current();
        let raft = handle
            .block_on(openraft::Raft::new(self.cfg.node_id, self.raft_config.clone(), network, log.clone(), sm.clone()))
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        if fresh && placement.replicas.first() == Some(&self.cfg.node_id) {
            let members: BTreeMap<u64, openraft::BasicNode> = placement
                .replicas
                .iter()
                .filter_map(|id| map.nodes.iter().find(|n| n.id == *id).map(|n| (*id, openraft::BasicNode::new(&n.address))))
                .collect();
            handle.block_on(raft.initialize(members)).map_err(|e| NodeError::Raft(e.to_string()))?;
        }
        self.groups.insert(group.clone(), raft.clone());
        let replica = Replica { group, raft, sm, log };
        self.shards.write().insert((config.name.clone(), shard_id), replica.clone());
        Ok(replica)
    }

    pub fn cluster_map(&self) -> ClusterMap {
        self.map.read().clone()
    }

    fn persist(&self, map: ClusterMap) -> Result<ClusterMap> {
        shard_store::node_meta_put(&*self.kv, MAP_KEY, map.encode_to_vec())?;
        *self.map.write() = map.clone();
        Ok(map)
    }

    /// Validates, places and creates a collection; returns the new map.
    pub fn create_collection(&self, config: &CollectionConfig) -> Result<ClusterMap> {
        let config = validate::collection_config(config)?;
        let _m = self.meta.lock();
        let mut map = self.cluster_map();
        if map.collections.iter().any(|c| c.config.as_ref().is_some_and(|x| x.name == config.name)) {
            return Err(NodeError::CollectionExists(config.name));
        }
        let nodes: Vec<u64> = map.nodes.iter().map(|n| n.id).collect();
        let placement = placement::place(&nodes, config.shard_count, config.replication_factor)
            .map_err(|e| validate::invalid("replication_factor", e.to_string()))?;
        let shards: Vec<ShardPlacement> = routing::uniform_ranges(config.shard_count)
            .into_iter()
            .zip(placement)
            .enumerate()
            .map(|(i, ((start, end), replicas))| ShardPlacement { shard_id: i as u32, range_start: start, range_end: end, replicas })
            .collect();
        for s in &shards {
            if s.replicas.contains(&self.cfg.node_id) {
                self.open_shard(&config, s, &map, true)?;
            }
        }
        map.collections.push(CollectionEntry { config: Some(config), shards });
        map.epoch += 1;
        self.persist(map)
    }

    /// Removes a collection from the map, then drops its local data.
    pub fn delete_collection(&self, name: &str) -> Result<ClusterMap> {
        let _m = self.meta.lock();
        let mut map = self.cluster_map();
        let before = map.collections.len();
        map.collections.retain(|c| c.config.as_ref().is_none_or(|x| x.name != name));
        if map.collections.len() == before {
            return Err(NodeError::CollectionNotFound(name.to_string()));
        }
        map.epoch += 1;
        let map = self.persist(map)?;
        let doomed: Vec<Replica> = {
            let mut shards = self.shards.write();
            let keys: Vec<ShardKey> = shards.keys().filter(|(c, _)| c == name).cloned().collect();
            keys.iter().filter_map(|k| shards.remove(k)).collect()
        };
        let handle = tokio::runtime::Handle::current();
        for r in doomed {
            self.groups.remove(&r.group);
            let _ = handle.block_on(r.raft.shutdown());
            r.shard().destroy()?;
            r.log.destroy().map_err(|e| NodeError::Raft(e.to_string()))?;
        }
        let _ = std::fs::remove_dir_all(self.cfg.data_dir.join("index").join(name));
        Ok(map)
    }

    /// The local replica (Raft group and state machine) of a shard,
    /// checking the sender's map epoch.
    pub fn replica(&self, collection: &str, shard_id: u32, epoch: u64) -> Result<Replica> {
        let have = self.map.read().epoch;
        if epoch != 0 && epoch < have {
            return Err(NodeError::StaleEpoch { got: epoch, have });
        }
        match self.shards.read().get(&(collection.to_string(), shard_id)) {
            Some(s) => Ok(s.clone()),
            None if self.map.read().collections.iter().any(|c| c.config.as_ref().is_some_and(|x| x.name == collection)) => {
                Err(NodeError::ShardNotFound { collection: collection.to_string(), shard: shard_id })
            }
            None => Err(NodeError::CollectionNotFound(collection.to_string())),
        }
    }

    /// Saves every dirty HNSW index; returns how many were written.
    pub fn save_indexes(&self) -> usize {
        let shards: Vec<Arc<Shard>> = self.shards.read().values().map(|r| r.shard()).collect();
        let mut n = 0;
        for s in shards {
            match s.save_index() {
                Ok(true) => n += 1,
                Ok(false) => {}
                Err(e) => tracing::error!(collection = %s.collection, shard = s.shard_id, error = %e, "saving index failed"),
            }
        }
        n
    }

    pub fn status(&self, device: &str) -> NodeStatusResponse {
        let mut shards: Vec<ShardReplicaStatus> = self
            .shards
            .read()
            .values()
            .map(|r| {
                let s = r.shard();
                let m = r.raft.metrics().borrow().clone();
                ShardReplicaStatus {
                    collection: s.collection.clone(),
                    shard_id: s.shard_id,
                    points: s.len(),
                    applied_index: m.last_applied.map_or(0, |l| l.index),
                    term: m.current_term,
                    leader: m.current_leader == Some(self.cfg.node_id),
                }
            })
            .collect();
        shards.sort_by(|a, b| (&a.collection, a.shard_id).cmp(&(&b.collection, b.shard_id)));
        let index_bytes = self.shards.read().values().map(|r| r.shard().index_memory_bytes() as u64).sum();
        NodeStatusResponse { node_id: self.cfg.node_id, device: device.to_string(), version: env!("CARGO_PKG_VERSION").to_string(), shards, rss_bytes: crate::memory::rss_bytes(), index_bytes }
    }
}

