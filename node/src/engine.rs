//! The node's shards and the cluster map they are hosted for.
//!
//! Until the Raft issue moves it behind a metadata Raft group, each node is
//! its own metadata authority: the cluster map (nodes, collections, shard
//! ranges, replica placement, epoch) is stored under a node-level key in
//! RocksDB and every change bumps the epoch. The coordinator caches the map
//! and refreshes it when a node answers with a stale-epoch error.
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use prost::Message;
use shoal_proto::internal::v1::{ClusterMap, CollectionEntry, NodeEntry, NodeStatusResponse, ShardPlacement, ShardReplicaStatus};
use shoal_proto::v1::CollectionConfig;
use shoal_proto::{placement, routing, validate};

use crate::error::{NodeError, Result, StorageError};
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

pub struct Engine {
    cfg: EngineConfig,
    kv: Arc<dyn KvEngine>,
    shards: RwLock<HashMap<ShardKey, Arc<Shard>>>,
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
        let engine = Arc::new(Engine { cfg, kv, shards: RwLock::new(HashMap::new()), map: RwLock::new(map.clone()), meta: Mutex::new(()) });
        for c in &map.collections {
            let config = c.config.clone().unwrap_or_default();
            for s in &c.shards {
                if s.replicas.contains(&engine.cfg.node_id) {
                    engine.open_shard(&config, s.shard_id, false)?;
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
        self.shards.read().values().map(|s| s.seq()).fold(0u64, u64::wrapping_add)
    }

    /// The internal address this node is known by in the cluster map.
    pub fn advertise(&self) -> &str {
        &self.cfg.advertise
    }

    fn open_shard(&self, config: &CollectionConfig, shard_id: u32, fresh: bool) -> Result<Arc<Shard>> {
        let store = ShardStore::new(self.kv.clone(), &config.name, shard_id);
        if fresh {
            // Leftovers of an earlier collection with this name (a crash
            // between the map update and the data drop) must not leak in.
            store.destroy()?;
        }
        let dir = self.cfg.data_dir.join("index").join(&config.name);
        if fresh {
            let _ = std::fs::remove_file(dir.join(format!("{shard_id}.usearch")));
            let _ = std::fs::remove_file(dir.join(format!("{shard_id}.meta")));
        }
        let (mut shard, _) = Shard::open(config.clone(), shard_id, store, &dir)?;
        shard.exact_scan_threshold = self.cfg.exact_scan_threshold;
        let shard = Arc::new(shard);
        self.shards.write().insert((config.name.clone(), shard_id), shard.clone());
        Ok(shard)
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
                self.open_shard(&config, s.shard_id, true)?;
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
        let doomed: Vec<Arc<Shard>> = {
            let mut shards = self.shards.write();
            let keys: Vec<ShardKey> = shards.keys().filter(|(c, _)| c == name).cloned().collect();
            keys.iter().filter_map(|k| shards.remove(k)).collect()
        };
        for s in doomed {
            s.destroy()?;
        }
        let _ = std::fs::remove_dir_all(self.cfg.data_dir.join("index").join(name));
        Ok(map)
    }

    /// The local replica of a shard, checking the sender's map epoch.
    pub fn shard(&self, collection: &str, shard_id: u32, epoch: u64) -> Result<Arc<Shard>> {
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
        let shards: Vec<Arc<Shard>> = self.shards.read().values().cloned().collect();
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
            .map(|s| ShardReplicaStatus {
                collection: s.collection.clone(),
                shard_id: s.shard_id,
                points: s.len(),
                applied_index: s.seq(),
                term: 0,
                leader: true,
            })
            .collect();
        shards.sort_by(|a, b| (&a.collection, a.shard_id).cmp(&(&b.collection, b.shard_id)));
        let index_bytes = self.shards.read().values().map(|s| s.index_memory_bytes() as u64).sum();
        NodeStatusResponse { node_id: self.cfg.node_id, device: device.to_string(), version: env!("CARGO_PKG_VERSION").to_string(), shards, rss_bytes: crate::memory::rss_bytes(), index_bytes }
    }
}

