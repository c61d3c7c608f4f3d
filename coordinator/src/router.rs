//! The coordinator's view of the cluster: a cached cluster map, a shard map
//! per collection, and a gRPC channel per node.
//!
//! Every call to a node carries the map epoch it was routed with. A node
//! with a newer map answers `FAILED_PRECONDITION` with the
//! `shoal-stale-epoch` metadata key; [`Router::call_shard`] then reloads the
//! map and retries. Writes and `strong`/`leader` reads go to the shard
//! leader: the router remembers the leader per shard, follows the
//! `shoal-leader-id` hint of a node that is not the leader, and moves to
//! another replica (with backoff) when one is unreachable or electing, all
//! within the call's deadline. `any` reads rotate over the replicas.
//!
//! A node served in the same process ([`LocalNode`], as in `shoal dev`) is
//! called directly through its service trait: same validation and errors,
//! no HTTP/2 hop or protobuf round trip.
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
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

use shoal_proto::{LEADER_ID_KEY, STALE_EPOCH_KEY};

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
            ShardConn::Remote(c) => c.write(shoal_common::telemetry::request(r)).await,
            ShardConn::Local(s) => s.write(tonic::Request::new(r)).await,
        }
    }
    pub async fn get(&mut self, r: ShardGetRequest) -> Reply<ShardGetResponse> {
        match self {
            ShardConn::Remote(c) => c.get(shoal_common::telemetry::request(r)).await,
            ShardConn::Local(s) => s.get(tonic::Request::new(r)).await,
        }
    }
    pub async fn scroll(&mut self, r: ShardScrollRequest) -> Reply<ShardScrollResponse> {
        match self {
            ShardConn::Remote(c) => c.scroll(shoal_common::telemetry::request(r)).await,
            ShardConn::Local(s) => s.scroll(tonic::Request::new(r)).await,
        }
    }
    pub async fn count(&mut self, r: ShardCountRequest) -> Reply<ShardCountResponse> {
        match self {
            ShardConn::Remote(c) => c.count(shoal_common::telemetry::request(r)).await,
            ShardConn::Local(s) => s.count(tonic::Request::new(r)).await,
        }
    }
    pub async fn search(&mut self, r: ShardSearchRequest) -> Reply<ShardSearchResponse> {
        match self {
            ShardConn::Remote(c) => c.search(shoal_common::telemetry::request(r)).await,
            ShardConn::Local(s) => s.search(tonic::Request::new(r)).await,
        }
    }
    pub async fn text_stats(&mut self, r: ShardTextStatsRequest) -> Reply<ShardTextStatsResponse> {
        match self {
            ShardConn::Remote(c) => c.text_stats(shoal_common::telemetry::request(r)).await,
            ShardConn::Local(s) => s.text_stats(tonic::Request::new(r)).await,
        }
    }
    pub async fn text_search(&mut self, r: ShardTextSearchRequest) -> Reply<ShardSearchResponse> {
        match self {
            ShardConn::Remote(c) => c.text_search(shoal_common::telemetry::request(r)).await,
            ShardConn::Local(s) => s.text_search(tonic::Request::new(r)).await,
        }
    }
    pub async fn sparse_stats(&mut self, r: ShardSparseStatsRequest) -> Reply<ShardSparseStatsResponse> {
        match self {
            ShardConn::Remote(c) => c.sparse_stats(shoal_common::telemetry::request(r)).await,
            ShardConn::Local(s) => s.sparse_stats(tonic::Request::new(r)).await,
        }
    }
    pub async fn sparse_search(&mut self, r: ShardSparseSearchRequest) -> Reply<ShardSearchResponse> {
        match self {
            ShardConn::Remote(c) => c.sparse_search(shoal_common::telemetry::request(r)).await,
            ShardConn::Local(s) => s.sparse_search(tonic::Request::new(r)).await,
        }
    }
    pub async fn score(&mut self, r: ShardScoreRequest) -> Reply<ShardScoreResponse> {
        match self {
            ShardConn::Remote(c) => c.score(shoal_common::telemetry::request(r)).await,
            ShardConn::Local(s) => s.score(tonic::Request::new(r)).await,
        }
    }
}

/// Which replica a shard call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The shard leader (writes, `strong` and `leader` reads).
    Leader,
    /// Any live replica, spreading load (`any` reads).
    Any,
}

impl Target {
    /// The target a read at `consistency` needs.
    pub fn for_read(consistency: i32) -> Self {
        if consistency == shoal_proto::v1::Consistency::Any as i32 {
            Target::Any
        } else {
            Target::Leader
        }
    }
}

/// How a failed shard call is retried.
enum Retry {
    /// The map is stale: reload it.
    Refresh,
    /// The node named the leader: go there at once.
    Leader(u64),
    /// Try another replica after a backoff.
    Elsewhere,
}

fn classify(s: &tonic::Status) -> Option<Retry> {
    if s.code() == Code::FailedPrecondition && s.metadata().get(STALE_EPOCH_KEY).is_some() {
        return Some(Retry::Refresh);
    }
    if let Some(id) = s.metadata().get(LEADER_ID_KEY).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()) {
        return Some(Retry::Leader(id));
    }
    match s.code() {
        // Transport failures, elections, nodes catching up or opening the
        // shard, no quorum: all transient.
        Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded => Some(Retry::Elsewhere),
        Code::Unknown if s.message().contains("transport") || s.message().contains("connection") => Some(Retry::Elsewhere),
        _ => None,
    }
}

/// Per-attempt limit: a node that stopped answering (SIGSTOP, partition)
/// is given up on after this long and another replica is tried, within
/// the call's overall deadline, unless it answers a health check at once
/// (then it is busy, not gone, and the call keeps waiting for it).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest wait between two rounds over a shard's replicas while none of
/// them leads (an election): a new leader is found within this of winning.
const ELECTION_ROUND: Duration = Duration::from_millis(100);
/// A node that timed out or could not be reached is passed over for this
/// long: replicas are tried before it, and leader hints naming it (a
/// follower that has not heard of the election yet) are not followed.
/// Without this, requests kept returning to a frozen or cut-off leader and
/// waited out a second attempt timeout (docs/raft.md).
const SUSPECT_FOR: Duration = Duration::from_secs(3);
/// How long a node that passed an attempt timeout has to answer a health
/// check to count as busy rather than gone.
const HEALTH_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

pub struct Router {
    seeds: Vec<String>,
    local: Option<LocalNode>,
    view: RwLock<View>,
    channels: RwLock<HashMap<String, Channel>>,
    /// Last known leader per (collection, shard).
    leaders: RwLock<HashMap<(String, u32), u64>>,
    /// Rotates `any` reads over replicas.
    spread: AtomicUsize,
    /// Nodes that recently timed out or were unreachable, until when.
    suspects: RwLock<HashMap<u64, std::time::Instant>>,
    pub deadline: Duration,
    /// The coordinator's certificates (none: plain TCP). Nodes must
    /// present a node certificate from the cluster CA, so maps come from
    /// nodes only.
    tls: Option<Arc<shoal_common::tls::TlsContext>>,
}

/// The most a new cluster map's epoch may pass the cached one by. Epochs
/// grow by one per metadata change; a map far ahead (a forged
/// `epoch = u64::MAX` would otherwise shut out every real map for good) is
/// refused, logged and counted (`shoal_cluster_map_refusals_total`).
pub const MAX_EPOCH_JUMP: u64 = 1_000_000;

fn endpoint(addr: &str, tls: Option<Arc<shoal_common::tls::TlsContext>>, expect: shoal_common::tls::Expect) -> Result<Channel> {
    let connect_timeout = Duration::from_secs(1);
    let ep = Endpoint::from_shared(shoal_common::tls::endpoint_uri(addr))
        .map_err(|e| CoordError::Internal(format!("bad node address {addr:?}: {e}")))?
        .connect_timeout(connect_timeout)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5));
    Ok(shoal_common::tls::lazy_channel(ep, tls, expect, connect_timeout))
}

fn build_view(map: ClusterMap) -> View {
    let mut collections = HashMap::new();
    for c in &map.collections {
        let Some(config) = c.config.clone() else {
            continue;
        };
        // A shard being split off is not routed until the split commits.
        let routed: Vec<&ShardPlacement> = c.shards.iter().filter(|s| !s.splitting).collect();
        let ranges = routed.iter().map(|s| ShardRange { shard_id: s.shard_id, start: s.range_start, end: s.range_end }).collect();
        let Ok(shards) = ShardMap::new(ranges) else {
            tracing::error!(collection = %config.name, "cluster map has an invalid shard map; collection unroutable");
            continue;
        };
        let route = CollectionRoute {
            metric: Metric::try_from(config.metric).unwrap_or(Metric::Cosine),
            replicas: routed.iter().map(|s| (s.shard_id, s.replicas.clone())).collect(),
            shards,
            config: config.clone(),
        };
        collections.insert(config.name.clone(), Arc::new(route));
    }
    // An alias routes as its collection (the map never lets an alias take
    // a collection's name).
    for a in &map.aliases {
        if let Some(route) = collections.get(&a.collection).cloned() {
            collections.entry(a.alias.clone()).or_insert(route);
        }
    }
    View { map, collections }
}

impl Router {
    pub fn new(seeds: Vec<String>, deadline: Duration, local: Option<LocalNode>, tls: Option<Arc<shoal_common::tls::TlsContext>>) -> Self {
        Router {
            tls,
            seeds,
            local,
            view: RwLock::new(build_view(ClusterMap::default())),
            channels: RwLock::new(HashMap::new()),
            leaders: RwLock::new(HashMap::new()),
            spread: AtomicUsize::new(0),
            suspects: RwLock::new(HashMap::new()),
            deadline,
        }
    }

    fn suspect(&self, node: u64) {
        self.suspects.write().insert(node, std::time::Instant::now() + SUSPECT_FOR);
    }

    fn is_suspect(&self, node: u64) -> bool {
        self.suspects.read().get(&node).is_some_and(|until| *until > std::time::Instant::now())
    }

    fn cleared(&self, node: u64) {
        if self.suspects.read().contains_key(&node) {
            self.suspects.write().remove(&node);
        }
    }

    fn channel(&self, addr: &str) -> Result<Channel> {
        // With TLS, the node at `addr` must present the certificate of the
        // node the map lists there (any node's for a seed the map does not
        // know yet); the cache is per (address, node).
        let id = self.view.read().map.nodes.iter().find(|n| n.address == addr).map(|n| n.id);
        let key = id.map_or_else(|| addr.to_string(), |id| format!("{addr}#{id}"));
        if let Some(c) = self.channels.read().get(&key) {
            return Ok(c.clone());
        }
        let expect = id.map_or(shoal_common::tls::Expect::Node, shoal_common::tls::Expect::NodeId);
        let c = endpoint(addr, self.tls.clone(), expect)?;
        self.channels.write().insert(key, c.clone());
        Ok(c)
    }

    /// The `Meta` service of the node at `addr`, over the cached channel.
    pub fn meta_client_at(&self, addr: &str) -> Result<MetaClient<Channel>> {
        Ok(MetaClient::new(self.channel(addr)?).max_decoding_message_size(MAX_MESSAGE_BYTES))
    }

    /// Seeds first, then every node of the cached map.
    fn meta_candidates(&self) -> Vec<String> {
        let mut out = self.seeds.clone();
        for n in &self.view.read().map.nodes {
            if !out.contains(&n.address) {
                out.push(n.address.clone());
            }
        }
        out
    }

    /// Calls the `Meta` service of the first node that answers (any node
    /// forwards changes to the metadata leader). Only transport failures
    /// move on to the next node.
    /// A metadata change through the metadata leader ([`Router::meta_call`]
    /// answering the new map), installed here at once.
    pub async fn change_map<F, Fut>(&self, what: &str, f: F) -> Result<()>
    where
        F: Fn(MetaClient<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<ClusterMap>, tonic::Status>>,
    {
        let map = self.meta_call(what, f).await?;
        self.install(map);
        Ok(())
    }

    pub async fn meta_call<T, F, Fut>(&self, what: &str, f: F) -> Result<T>
    where
        F: Fn(MetaClient<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut last = None;
        for addr in self.meta_candidates() {
            let client = self.meta_client_at(&addr)?;
            match tokio::time::timeout(self.deadline, f(client)).await {
                Ok(Ok(r)) => return Ok(r.into_inner()),
                Ok(Err(s)) if matches!(classify(&s), Some(Retry::Elsewhere)) && s.metadata().get(LEADER_ID_KEY).is_none() => {
                    last = Some(CoordError::Unreachable { node: 0, address: addr, detail: s.message().to_string() });
                }
                Ok(Err(s)) => return Err(CoordError::from_node(what.to_string(), s)),
                Err(_) => last = Some(CoordError::Unreachable { node: 0, address: addr, detail: "no answer".into() }),
            }
        }
        Err(last.unwrap_or_else(|| CoordError::NoMap("no node addresses configured".into())))
    }

    /// Reloads the cluster map: asks every seed and known node at once and
    /// keeps the newest map (nodes that follow the metadata group may lag
    /// by a moment).
    pub async fn refresh(&self) -> Result<()> {
        let calls = self.meta_candidates().into_iter().map(|addr| async move {
            let mut c = self.meta_client_at(&addr).ok()?;
            tokio::time::timeout(Duration::from_secs(2), c.get_cluster_map(GetClusterMapRequest {})).await.ok()?.ok().map(|r| r.into_inner())
        });
        let maps = futures::future::join_all(calls).await;
        let known = self.epoch();
        // The first map is checked against the other answers instead.
        let floor = if known > 0 { known } else { maps.iter().flatten().map(|m| m.epoch).min().unwrap_or(0) };
        let best = maps.into_iter().flatten().filter(|m| self.plausible(floor, m)).max_by_key(|m| m.epoch);
        match best {
            Some(map) => {
                self.install(map);
                Ok(())
            }
            None => Err(CoordError::NoMap(format!("no node answered ({})", self.meta_candidates().join(", ")))),
        }
    }

    /// Whether `map`'s epoch is within [`MAX_EPOCH_JUMP`] of `floor`;
    /// reports it when not.
    fn plausible(&self, floor: u64, map: &ClusterMap) -> bool {
        let ok = map.epoch <= floor.saturating_add(MAX_EPOCH_JUMP);
        if !ok {
            tracing::error!(epoch = map.epoch, known = floor, max_jump = MAX_EPOCH_JUMP, "refused a cluster map whose epoch jumps far past the known one");
            crate::server::MAP_REFUSALS.inc();
        }
        ok
    }

    /// Installs a map if it is newer than the cached one (and not
    /// implausibly so).
    pub fn install(&self, map: ClusterMap) {
        let known = self.epoch();
        if known > 0 && !self.plausible(known, &map) {
            return;
        }
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

    /// A connection to node `node`.
    fn conn(&self, node: u64) -> Result<(ShardConn, String)> {
        let addr = self.node_address(node).ok_or_else(|| CoordError::Internal(format!("node {node} is not in the cluster map")))?;
        if let Some(l) = self.local.as_ref().filter(|l| l.address == addr) {
            return Ok((ShardConn::Local(l.shard.clone()), addr));
        }
        let client = ShardClient::new(self.channel(&addr)?).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok((ShardConn::Remote(client), addr))
    }

    /// Whether node `node` answers a health check within
    /// [`HEALTH_PROBE_TIMEOUT`] (its async workers are free, even when a
    /// heavy request keeps its blocking pool busy). The in-process node of
    /// `shoal dev` is always alive.
    async fn alive(&self, node: u64, addr: &str) -> bool {
        if self.local.as_ref().is_some_and(|l| l.address == addr) {
            return true;
        }
        let Ok(ch) = self.channel(addr) else { return false };
        let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
        let probe = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() });
        let alive = matches!(tokio::time::timeout(HEALTH_PROBE_TIMEOUT, probe).await, Ok(Ok(_)));
        tracing::debug!(node, alive, "a shard call passed its attempt timeout; health probe");
        alive
    }

    /// Picks the replica for attempt `attempt`: the known leader first for
    /// [`Target::Leader`], then the replicas in turn.
    fn pick(&self, key: &(String, u32), replicas: &[u64], target: Target, attempt: usize, start: usize) -> u64 {
        if target == Target::Leader {
            if let Some(l) = self.leaders.read().get(key).filter(|l| replicas.contains(l)) {
                if attempt == 0 && !self.is_suspect(*l) {
                    return *l;
                }
            }
        }
        // Round-robin from `start + attempt`, passing over suspects unless
        // every replica is one.
        let n = replicas.len();
        (0..n).map(|i| replicas[(start + attempt + i) % n]).find(|r| !self.is_suspect(*r)).unwrap_or(replicas[(start + attempt) % n])
    }

    /// Calls one shard with `f` under the deadline. Follows leader hints,
    /// reloads a stale map, and tries other replicas with backoff when one
    /// is unreachable, electing, or catching up. Writes are idempotent
    /// (upserts replace, deletes of absent ids are no-ops), so a retried
    /// write is safe even if an earlier attempt committed.
    ///
    /// `route` is the layout the caller planned with: when the map shows
    /// another one (a split committed), the call ends with
    /// [`CoordError::Rerouted`] and the caller plans again.
    pub async fn call_shard<T, F, Fut>(&self, route: &CollectionRoute, shard_id: u32, target: Target, f: F) -> Result<T>
    where
        F: Fn(ShardConn, ShardRef) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let collection = route.config.name.as_str();
        let deadline = tokio::time::Instant::now() + self.deadline;
        let key = (collection.to_string(), shard_id);
        let start = match target {
            Target::Any => self.spread.fetch_add(1, Ordering::Relaxed),
            Target::Leader => 0,
        };
        let mut backoff = Duration::from_millis(25);
        let mut attempt = 0usize;
        let mut hinted: Option<u64> = None;
        let mut last: Option<CoordError> = None;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(last.unwrap_or(CoordError::Deadline(self.deadline)));
            }
            let now = self.collection(collection)?;
            if now.shards != route.shards {
                return Err(CoordError::Rerouted(collection.to_string()));
            }
            let replicas = now.replicas.get(&shard_id).filter(|r| !r.is_empty()).ok_or_else(|| CoordError::Internal(format!("shard {shard_id} has no replicas")))?;
            let node = match hinted.take().filter(|h| replicas.contains(h)) {
                Some(h) => h,
                None => self.pick(&key, replicas, target, attempt, start),
            };
            attempt += 1;
            let (client, addr) = self.conn(node)?;
            let shard = ShardRef { collection: collection.to_string(), shard_id, epoch: self.epoch() };
            let call = f(client, shard);
            tokio::pin!(call);
            let mut waited = Duration::ZERO;
            let res = loop {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match tokio::time::timeout(left.min(ATTEMPT_TIMEOUT), &mut call).await {
                    Ok(r) => break Some(r),
                    Err(_) => {
                        waited += left.min(ATTEMPT_TIMEOUT);
                        // Silence, or work in progress? A node that answers
                        // a health check at once is alive and busy with a
                        // heavy request: keep waiting for it, up to the
                        // call's deadline. Only a node that does not answer
                        // is given up on and passed over.
                        if deadline > tokio::time::Instant::now() && self.alive(node, &addr).await {
                            continue;
                        }
                        break None;
                    }
                }
            };
            let Some(res) = res else {
                if deadline <= tokio::time::Instant::now() && waited > ATTEMPT_TIMEOUT {
                    // A live node that was still working when the deadline came.
                    return Err(CoordError::Deadline(self.deadline));
                }
                last = Some(CoordError::Unreachable { node, address: addr, detail: format!("no answer within {waited:?}") });
                self.leaders.write().remove(&key);
                self.suspect(node);
                continue;
            };
            let s = match res {
                Ok(r) => {
                    self.cleared(node);
                    if target == Target::Leader {
                        self.leaders.write().insert(key, node);
                    }
                    return Ok(r.into_inner());
                }
                Err(s) => s,
            };
            match classify(&s) {
                Some(Retry::Refresh) => {
                    let before = self.epoch();
                    let _ = self.refresh().await;
                    last = Some(CoordError::from_node(format!("shard {collection}/{shard_id}"), s));
                    if self.epoch() == before {
                        // The node knows of a change the metadata group has
                        // not published yet (a split in progress): wait.
                        tokio::time::sleep(backoff.min(left)).await;
                        backoff = (backoff * 2).min(Duration::from_millis(500));
                    }
                }
                // A hint naming a suspect is followed only after two whole
                // rounds over the replicas (with their backoff) still point
                // to it: a slow but live leader is not passed over for long.
                Some(Retry::Leader(id)) if id != node && (!self.is_suspect(id) || attempt >= 2 * replicas.len()) => {
                    self.cleared(id);
                    self.leaders.write().insert(key.clone(), id);
                    hinted = Some(id);
                    last = Some(CoordError::from_node(format!("shard {collection}/{shard_id}"), s));
                }
                Some(_) => {
                    self.leaders.write().remove(&key);
                    let unreachable = s.message().contains("transport") || s.message().contains("connect");
                    if unreachable {
                        self.suspect(node);
                    }
                    last = Some(if unreachable {
                        CoordError::Unreachable { node, address: addr, detail: s.message().to_string() }
                    } else {
                        CoordError::from_node(format!("shard {collection}/{shard_id}"), s)
                    });
                    // A whole round over the replicas failed: back off
                    // before the next one. Elections take a few hundred ms,
                    // and a round is cheap (live replicas answer at once,
                    // dead ones refuse the connection): rounds stay at most
                    // ELECTION_ROUND apart, so a new leader is found within
                    // that of its election.
                    if attempt.is_multiple_of(replicas.len()) {
                        tokio::time::sleep(backoff.min(left)).await;
                        backoff = (backoff * 2).min(ELECTION_ROUND);
                    }
                }
                None => return Err(CoordError::from_node(format!("shard {collection}/{shard_id}"), s)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A map whose epoch jumps more than MAX_EPOCH_JUMP past the cached one
    /// is refused (a forged `u64::MAX` shut every coordinator out for
    /// good); ordinary newer maps are taken.
    #[test]
    fn implausible_epoch_jumps_are_refused() {
        let r = Router::new(vec![], Duration::from_secs(1), None, None);
        let map = |epoch| ClusterMap { epoch, ..Default::default() };
        r.install(map(5));
        assert_eq!(r.epoch(), 5);
        r.install(map(u64::MAX));
        assert_eq!(r.epoch(), 5, "u64::MAX refused");
        r.install(map(5 + MAX_EPOCH_JUMP + 1));
        assert_eq!(r.epoch(), 5, "just past the cap refused");
        r.install(map(5 + MAX_EPOCH_JUMP));
        assert_eq!(r.epoch(), 5 + MAX_EPOCH_JUMP, "at the cap taken");
        r.install(map(3));
        assert_eq!(r.epoch(), 5 + MAX_EPOCH_JUMP, "older maps never replace newer ones");
        // refresh() checks the first map against the other answers.
        assert!(r.plausible(10, &map(10 + MAX_EPOCH_JUMP)));
        assert!(!r.plausible(10, &map(11 + MAX_EPOCH_JUMP)));
    }

    /// Suspects are passed over by the rotation and by the cached leader,
    /// unless every replica is one; an answer clears a node.
    #[test]
    fn pick_passes_over_suspects() {
        let r = Router::new(vec![], Duration::from_secs(1), None, None);
        let key = ("c".to_string(), 0);
        let reps = [1, 2, 3];
        let picks = |r: &Router, target| (0..3).map(|a| r.pick(&key, &reps, target, a, 0)).collect::<Vec<_>>();
        assert_eq!(picks(&r, Target::Any), vec![1, 2, 3]);
        r.suspect(2);
        assert_eq!(picks(&r, Target::Any), vec![1, 3, 3], "2 is passed over");
        r.leaders.write().insert(key.clone(), 2);
        assert_eq!(r.pick(&key, &reps, Target::Leader, 0, 0), 1, "a suspect cached leader is not tried first");
        r.suspect(1);
        r.suspect(3);
        assert_eq!(picks(&r, Target::Any), vec![1, 2, 3], "all suspects: plain rotation");
        r.cleared(2);
        assert_eq!(r.pick(&key, &reps, Target::Leader, 0, 0), 2, "cleared by an answer");
    }

    /// A shard being split off is not routed (its range overlaps its
    /// parent's) until the split commits.
    #[test]
    fn splitting_shards_are_not_routed() {
        let config = CollectionConfig { name: "c".into(), ..Default::default() };
        let parent = ShardPlacement { shard_id: 0, range_start: 0, range_end: u64::MAX, replicas: vec![1], ..Default::default() };
        let child = ShardPlacement { shard_id: 1, range_start: 1 << 63, range_end: u64::MAX, replicas: vec![1], splitting: true, split_from: 0, ..Default::default() };
        let map = |shards| ClusterMap { collections: vec![CollectionEntry { config: Some(config.clone()), shards, uid: 1, ..Default::default() }], ..Default::default() };
        let v = build_view(map(vec![parent.clone(), child.clone()]));
        let route = &v.collections["c"];
        assert_eq!(route.shards.ranges().len(), 1);
        assert!(!route.replicas.contains_key(&1));
        let committed = ShardPlacement { range_end: (1 << 63) - 1, ..parent };
        let v = build_view(map(vec![committed, ShardPlacement { splitting: false, ..child }]));
        assert_eq!(v.collections["c"].shards.shard_for_hash(u64::MAX), 1);
        assert_eq!(v.collections["c"].shards.shard_for_hash(5), 0);
    }
}
