//! The coordinator's view of the cluster: a cached cluster map, a shard map
//! per collection, and a gRPC channel per node.
//!
//! Every call to a node carries the map epoch it was routed with. A node
//! with a newer map answers `FAILED_PRECONDITION` with the
//! `shoal-stale-epoch` metadata key; [`Router::call_shard`] then reloads the
//! map and retries once.
//!
//! A node served in the same process ([`LocalNode`], as in `shoal dev`) is
//! called directly through its service trait: same validation and errors,
//! no HTTP/2 hop or protobuf round trip.
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use shoal_proto::internal::v1::meta_client::MetaClient;
use shoal_proto::internal::v1::shard_client::ShardClient;
use shoal_proto::internal::v1::shard_server::Shard as ShardApi;
use shoal_proto::internal::v1::*;
use shoal_proto::limits::MAX_MESSAGE_BYTES;
use shoal_proto::routing::{ShardMap, ShardRange};
use shoal_proto::v1::{CollectionConfig, Metric};
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use crate::error::{CoordError, Result};

use shoal_proto::STALE_EPOCH_KEY;

/// Routing facts about one collection.
#[derive(Debug, Clone)]
pub struct CollectionRoute {
    pub config: CollectionConfig,
    pub metric: Metric,
    pub shards: ShardMap,
    /// shard id -> replica node ids (first = preferred leader).
    pub replicas: HashMap<u32, Vec<u64>>,
}

struct View {
    map: ClusterMap,
    collections: HashMap<String, Arc<CollectionRoute>>,
}

/// A node's `Shard` service served in this process (`shoal dev`): calls to
/// it skip the network and protobuf encoding.
#[derive(Clone)]
pub struct LocalNode {
    /// The node's advertised internal address, as in the cluster map.
    pub address: String,
    pub shard: Arc<dyn ShardApi>,
}

impl std::fmt::Debug for LocalNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalNode").field("address", &self.address).finish_non_exhaustive()
    }
}

/// A connection to one node's `Shard` service: over gRPC, or a direct call
/// when the node runs in this process. Same methods as the generated client.
#[derive(Clone)]
pub enum ShardConn {
    Remote(ShardClient<Channel>),
    Local(Arc<dyn ShardApi>),
}

type Reply<T> = std::result::Result<tonic::Response<T>, tonic::Status>;

impl ShardConn {
    pub async fn write(&mut self, r: ShardWriteRequest) -> Reply<ShardWriteResponse> {
        match self {
            ShardConn::Remote(c) => c.write(r).await,
            ShardConn::Local(s) => s.write(tonic::Request::new(r)).await,
        }
    }
    pub async fn get(&mut self, r: ShardGetRequest) -> Reply<ShardGetResponse> {
        match self {
            ShardConn::Remote(c) => c.get(r).await,
            ShardConn::Local(s) => s.get(tonic::Request::new(r)).await,
        }
    }
    pub async fn scroll(&mut self, r: ShardScrollRequest) -> Reply<ShardScrollResponse> {
        match self {
            ShardConn::Remote(c) => c.scroll(r).await,
            ShardConn::Local(s) => s.scroll(tonic::Request::new(r)).await,
        }
    }
    pub async fn count(&mut self, r: ShardCountRequest) -> Reply<ShardCountResponse> {
        match self {
            ShardConn::Remote(c) => c.count(r).await,
            ShardConn::Local(s) => s.count(tonic::Request::new(r)).await,
        }
    }
    pub async fn search(&mut self, r: ShardSearchRequest) -> Reply<ShardSearchResponse> {
        match self {
            ShardConn::Remote(c) => c.search(r).await,
            ShardConn::Local(s) => s.search(tonic::Request::new(r)).await,
        }
    }
}

pub struct Router {
    meta_addr: String,
    local: Option<LocalNode>,
    view: RwLock<View>,
    channels: RwLock<HashMap<String, Channel>>,
    pub deadline: Duration,
}

fn endpoint(addr: &str) -> Result<Channel> {
    let uri = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
    Ok(Endpoint::from_shared(uri)
        .map_err(|e| CoordError::Internal(format!("bad node address {addr:?}: {e}")))?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .connect_lazy())
}

fn build_view(map: ClusterMap) -> View {
    let mut collections = HashMap::new();
    for c in &map.collections {
        let Some(config) = c.config.clone() else { continue };
        let ranges = c.shards.iter().map(|s| ShardRange { shard_id: s.shard_id, start: s.range_start, end: s.range_end }).collect();
        let Ok(shards) = ShardMap::new(ranges) else {
            tracing::error!(collection = %config.name, "cluster map has an invalid shard map; collection unroutable");
            continue;
        };
        let route = CollectionRoute {
            metric: Metric::try_from(config.metric).unwrap_or(Metric::Cosine),
            replicas: c.shards.iter().map(|s| (s.shard_id, s.replicas.clone())).collect(),
            shards,
            config: config.clone(),
        };
        collections.insert(config.name.clone(), Arc::new(route));
    }
    View { map, collections }
}

impl Router {
    pub fn new(meta_addr: String, deadline: Duration, local: Option<LocalNode>) -> Self {
        Router { meta_addr, local, view: RwLock::new(build_view(ClusterMap::default())), channels: RwLock::new(HashMap::new()), deadline }
    }

    fn channel(&self, addr: &str) -> Result<Channel> {
        if let Some(c) = self.channels.read().get(addr) {
            return Ok(c.clone());
        }
        let c = endpoint(addr)?;
        self.channels.write().insert(addr.to_string(), c.clone());
        Ok(c)
    }

    pub fn meta_client(&self) -> Result<MetaClient<Channel>> {
        self.meta_client_at(&self.meta_addr)
    }

    /// The `Meta` service of the node at `addr`, over the cached channel.
    pub fn meta_client_at(&self, addr: &str) -> Result<MetaClient<Channel>> {
        Ok(MetaClient::new(self.channel(addr)?).max_decoding_message_size(MAX_MESSAGE_BYTES))
    }

    /// Reloads the cluster map from the metadata node.
    pub async fn refresh(&self) -> Result<()> {
        let map = self
            .meta_client()?
            .get_cluster_map(GetClusterMapRequest {})
            .await
            .map_err(|s| CoordError::NoMap(format!("{} ({})", s.message(), self.meta_addr)))?
            .into_inner();
        self.install(map);
        Ok(())
    }

    /// Installs a map if it is newer than the cached one.
    pub fn install(&self, map: ClusterMap) {
        let mut v = self.view.write();
        if map.epoch >= v.map.epoch {
            *v = build_view(map);
        }
    }

    pub fn map(&self) -> ClusterMap {
        self.view.read().map.clone()
    }

    pub fn epoch(&self) -> u64 {
        self.view.read().map.epoch
    }

    pub fn collection(&self, name: &str) -> Result<Arc<CollectionRoute>> {
        self.view.read().collections.get(name).cloned().ok_or_else(|| CoordError::CollectionNotFound(name.to_string()))
    }

    /// Like [`Router::collection`], but reloads the map once on a miss (the
    /// collection may have been created through another coordinator).
    pub async fn collection_fresh(&self, name: &str) -> Result<Arc<CollectionRoute>> {
        match self.collection(name) {
            Ok(c) => Ok(c),
            Err(_) => {
                self.refresh().await?;
                self.collection(name)
            }
        }
    }

    pub fn node_address(&self, node: u64) -> Option<String> {
        self.view.read().map.nodes.iter().find(|n| n.id == node).map(|n| n.address.clone())
    }

    /// A connection to the node holding shard `shard_id`'s leader replica.
    fn shard_client(&self, route: &CollectionRoute, shard_id: u32) -> Result<(ShardConn, u64, String)> {
        let node = *route.replicas.get(&shard_id).and_then(|r| r.first()).ok_or_else(|| CoordError::Internal(format!("shard {shard_id} has no replicas")))?;
        let addr = self.node_address(node).ok_or_else(|| CoordError::Internal(format!("node {node} is not in the cluster map")))?;
        if let Some(l) = self.local.as_ref().filter(|l| l.address == addr) {
            return Ok((ShardConn::Local(l.shard.clone()), node, addr));
        }
        let client = ShardClient::new(self.channel(&addr)?).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok((ShardConn::Remote(client), node, addr))
    }

    /// Calls one shard with `f`, under the deadline, refreshing the map and
    /// retrying once on a stale epoch.
    pub async fn call_shard<T, F, Fut>(&self, collection: &str, shard_id: u32, f: F) -> Result<T>
    where
        F: Fn(ShardConn, ShardRef) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        for attempt in 0..2 {
            let route = self.collection(collection)?;
            let (client, node, addr) = self.shard_client(&route, shard_id)?;
            let shard = ShardRef { collection: collection.to_string(), shard_id, epoch: self.epoch() };
            let res = tokio::time::timeout(self.deadline, f(client, shard)).await.map_err(|_| CoordError::Deadline(self.deadline))?;
            match res {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) if s.code() == Code::FailedPrecondition && s.metadata().get(STALE_EPOCH_KEY).is_some() && attempt == 0 => {
                    self.refresh().await?;
                }
                Err(s) if s.code() == Code::Unavailable && s.message().contains("transport") || s.code() == Code::Unknown && s.message().contains("transport") => {
                    return Err(CoordError::Unreachable { node, address: addr, detail: s.message().to_string() });
                }
                Err(s) => return Err(CoordError::from_node(format!("shard {collection}/{shard_id}"), s)),
            }
        }
        Err(CoordError::Internal("stale epoch persisted after a refresh".into()))
    }
}
