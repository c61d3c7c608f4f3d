//! # shoal-client: the Rust SDK and the `shoalctl` admin CLI
//!
//! ## Layout
//! - [`Client`] (this file): an async client for the public `shoal.v1` API
//!   with typed builders ([`CollectionBuilder`], [`SearchBuilder`],
//!   [`Point`]) and retries with backoff on transient errors (all Shoal
//!   writes are idempotent, so retrying them is safe).
//! - [`query`]: builders for `Points/Query` ([`QueryBuilder`],
//!   [`PrefetchBuilder`], [`Q`]).
//! - [`filter`]: filters from JSON (the neutral form used by dataset
//!   `filters.json` files and by `shoalctl --filter`).
//! - [`dataset`]: readers for .fvecs/.ivecs, .npy and JSONL, and benchmark
//!   dataset folders.
//! - `stream.rs`: [`Client::search_stream`], many searches over one HTTP/2
//!   stream ([`SearchSender`], [`SearchReceiver`]).
//! - [`bench`]: `shoalctl bench`: ingest, search QPS/latency/recall, and the
//!   same workload on in-process usearch for comparison.
//! - `cli/`: the `shoalctl` commands (`src/bin/shoalctl.rs` is the entry).
//!
//! ## Connecting securely
//! [`Client::connect_with`] takes [`ConnectOptions`]: the CA that signed the
//! server's certificate (the address may then be `https://host:port`), an
//! optional client certificate, and [`Credentials`] (an API key or a JWT,
//! sent as `authorization: Bearer ...`). `shoalctl` builds them from
//! `--ca`, `--cert`/`--key`, `SHOAL_API_KEY` and `--token-file`.
//!
//! ## Path of a request
//! `client.search(SearchBuilder::new("docs", v, 10).ef(128))` builds a
//! `SearchPointsRequest`, sends it over a shared tonic channel, and on
//! `UNAVAILABLE` retries with exponential backoff up to the policy's limit;
//! any other status is returned as [`ClientError::Status`].
use std::time::Duration;

use shoal_proto::v1::cluster_client::ClusterClient;
use shoal_proto::v1::collections_client::CollectionsClient;
use shoal_proto::v1::points_client::PointsClient;
use shoal_proto::v1::*;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

pub mod bench;
pub mod bench_hybrid;
pub mod cli;
pub mod dataset;
pub mod filter;
pub mod query;
mod stream;

pub use shoal_proto;
pub use shoal_proto::v1::{Filter, Metric, PointId, ScoredPoint};
pub use query::{PrefetchBuilder, QueryBuilder, Q};
pub use stream::{SearchReceiver, SearchSender};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    #[error("cannot connect: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("invalid address {0:?}")]
    Address(String),
    #[error("payload: {0}")]
    Payload(#[from] shoal_proto::payload::PayloadError),
    #[error("filter: {0}")]
    Filter(String),
    #[error("the search stream is closed")]
    StreamClosed,
    #[error("credentials: {0}")]
    Credentials(String),
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// Retry policy for transient errors (`UNAVAILABLE`, `DEADLINE_EXCEEDED`
/// on reads).
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { attempts: 5, initial_backoff: Duration::from_millis(50), max_backoff: Duration::from_secs(2) }
    }
}

/// A point to upsert.
#[derive(Debug, Clone)]
pub struct Point {
    pub id: PointId,
    pub vector: Vec<f32>,
    pub payload: Option<serde_json::Value>,
    /// Named sparse vectors (declared by the collection).
    pub sparse: std::collections::BTreeMap<String, SparseVector>,
    /// Named dense vectors and multi-vectors (declared by the collection).
    pub vectors: std::collections::BTreeMap<String, NamedVector>,
}

impl Point {
    pub fn new(id: impl Into<PointId>, vector: Vec<f32>) -> Self {
        Point { id: id.into(), vector, payload: None, sparse: Default::default(), vectors: Default::default() }
    }
    pub fn payload(mut self, p: serde_json::Value) -> Self {
        self.payload = Some(p);
        self
    }
    /// Adds sparse vector `name` (indices and values, one each).
    pub fn sparse(mut self, name: impl Into<String>, indices: Vec<u32>, values: Vec<f32>) -> Self {
        self.sparse.insert(name.into(), SparseVector { indices, values });
        self
    }
    /// Adds named dense vector `name`.
    pub fn named(mut self, name: impl Into<String>, values: Vec<f32>) -> Self {
        self.vectors.insert(name.into(), NamedVector { values, rows: vec![] });
        self
    }
    /// Adds named multi-vector `name` (its rows).
    pub fn multi(mut self, name: impl Into<String>, rows: Vec<Vec<f32>>) -> Self {
        self.vectors.insert(name.into(), NamedVector { values: vec![], rows: rows.into_iter().map(|values| DenseVector { values }).collect() });
        self
    }
    fn into_proto(self) -> Result<PointStruct> {
        let payload = self.payload.as_ref().map(Struct::try_from).transpose()?;
        Ok(PointStruct { id: Some(self.id), vector: self.vector, payload, sparse: self.sparse, vectors: self.vectors })
    }
}

/// Which points a payload update changes.
#[derive(Debug, Clone)]
pub enum Select {
    Ids(Vec<PointId>),
    /// A filter with at least one condition.
    Filter(Filter),
    /// Every point of the collection.
    All,
}

/// What a payload update does to each selected point's payload.
#[derive(Debug, Clone)]
pub enum PayloadOp {
    /// Merges these top-level keys in (a JSON object).
    Set(serde_json::Value),
    /// Replaces the payload (a JSON object).
    Overwrite(serde_json::Value),
    /// Removes these top-level keys.
    DeleteKeys(Vec<String>),
    /// Removes the whole payload.
    Clear,
}

/// An alias action that creates `alias` or re-points it to `collection`.
pub fn alias_put(alias: impl Into<String>, collection: impl Into<String>) -> AliasAction {
    AliasAction { action: Some(alias_action::Action::Put(Alias { alias: alias.into(), collection: collection.into() })) }
}

/// An alias action that deletes `alias`.
pub fn alias_delete(alias: impl Into<String>) -> AliasAction {
    AliasAction { action: Some(alias_action::Action::Delete(alias.into())) }
}

/// Builder for a collection config.
#[derive(Debug, Clone)]
pub struct CollectionBuilder(CollectionConfig);

impl CollectionBuilder {
    pub fn new(name: impl Into<String>, dimension: u32, metric: Metric) -> Self {
        CollectionBuilder(CollectionConfig { name: name.into(), dimension, metric: metric as i32, ..Default::default() })
    }
    pub fn shards(mut self, n: u32) -> Self {
        self.0.shard_count = n;
        self
    }
    pub fn replication_factor(mut self, n: u32) -> Self {
        self.0.replication_factor = n;
        self
    }
    pub fn hnsw(mut self, m: u32, ef_construction: u32, ef_search: u32) -> Self {
        self.0.hnsw = Some(HnswConfig { m, ef_construction, ef_search });
        self
    }
    pub fn f16(mut self) -> Self {
        self.0.storage = VectorStorage::F16 as i32;
        self
    }
    /// How the default vector is stored in the graph: F32, F16, INT8 or
    /// BINARY (the last two re-score with full vectors kept in a
    /// memory-mapped file; see docs/storage.md).
    pub fn storage(mut self, storage: VectorStorage) -> Self {
        self.0.storage = storage as i32;
        self
    }
    /// Where a quantized collection's full vectors live (RAM, CACHED, COLD).
    pub fn memory(mut self, memory: VectorMemory) -> Self {
        self.0.memory = memory as i32;
        self
    }
    pub fn index(mut self, key: impl Into<String>, ty: PayloadIndexType) -> Self {
        self.0.payload_indexes.push(PayloadIndexSpec { key: key.into(), r#type: ty as i32, text: None });
        self
    }
    /// Declares sparse vector `name`; `idf` weighs query dimensions by
    /// their collection-wide inverse document frequency.
    pub fn sparse_vector(mut self, name: impl Into<String>, idf: bool) -> Self {
        let modifier = if idf { SparseModifier::Idf } else { SparseModifier::None };
        self.0.sparse_vectors.push(SparseVectorConfig { name: name.into(), modifier: modifier as i32 });
        self
    }
    /// Declares a named dense vector (or, with `multivector`, a
    /// multi-vector scored by MaxSim), with default HNSW settings.
    pub fn vector(mut self, name: impl Into<String>, dimension: u32, metric: Metric, multivector: bool) -> Self {
        self.0.vectors.push(NamedVectorConfig { name: name.into(), dimension, metric: metric as i32, multivector, ..Default::default() });
        self
    }
    /// A full-text index (text filters, BM25) with tokenizer settings.
    pub fn text_index(mut self, key: impl Into<String>, params: TextIndexParams) -> Self {
        self.0.payload_indexes.push(PayloadIndexSpec { key: key.into(), r#type: PayloadIndexType::Text as i32, text: Some(params) });
        self
    }
    pub fn build(self) -> CollectionConfig {
        self.0
    }
}

/// Builder for a search.
#[derive(Debug, Clone)]
pub struct SearchBuilder(SearchPointsRequest);

impl SearchBuilder {
    pub fn new(collection: impl Into<String>, vector: Vec<f32>, top_k: u32) -> Self {
        SearchBuilder(SearchPointsRequest { collection: collection.into(), vector, top_k, ..Default::default() })
    }
    /// The collection this search targets.
    pub fn collection(&self) -> &str {
        &self.0.collection
    }
    pub fn filter(mut self, f: Filter) -> Self {
        self.0.filter = Some(f);
        self
    }
    /// Searches named dense vector `name` instead of the default one.
    pub fn using(mut self, name: impl Into<String>) -> Self {
        self.0.vector_name = name.into();
        self
    }
    pub fn ef(mut self, ef: u32) -> Self {
        self.0.ef = Some(ef);
        self
    }
    pub fn exact(mut self, exact: bool) -> Self {
        self.0.exact = exact;
        self
    }
    /// Quantized storage: candidates per result taken before re-scoring.
    pub fn oversampling(mut self, factor: f32) -> Self {
        self.0.oversampling = Some(factor);
        self
    }
    /// Quantized storage: re-score with full vectors (on by default).
    pub fn rescore(mut self, on: bool) -> Self {
        self.0.rescore = Some(on);
        self
    }
    pub fn with_payload(mut self) -> Self {
        self.0.with_payload = true;
        self
    }
    pub fn with_vector(mut self) -> Self {
        self.0.with_vector = true;
        self
    }
    pub fn score_threshold(mut self, t: f32) -> Self {
        self.0.score_threshold = Some(t);
        self
    }
    pub fn consistency(mut self, c: Consistency) -> Self {
        self.0.consistency = c as i32;
        self
    }
    pub fn build(self) -> SearchPointsRequest {
        self.0
    }
}

/// The credential sent with every request: an API key or a JWT.
#[derive(Clone, Default)]
pub struct Credentials {
    header: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret itself.
        f.write_str(if self.header.is_some() { "Credentials(set)" } else { "Credentials(none)" })
    }
}

impl Credentials {
    /// An API key or a JWT (both travel as a bearer token).
    pub fn bearer(token: &str) -> Result<Self> {
        let v = format!("Bearer {}", token.trim()).parse().map_err(|_| ClientError::Credentials("the key or token must be printable ASCII".into()))?;
        Ok(Credentials { header: Some(v) })
    }

    /// A token read from a file (trailing whitespace trimmed).
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let t = std::fs::read_to_string(path).map_err(|e| ClientError::Credentials(format!("reading {}: {e}", path.display())))?;
        Self::bearer(t.trim())
    }
}

impl tonic::service::Interceptor for Credentials {
    fn call(&mut self, mut r: tonic::Request<()>) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(h) = &self.header {
            r.metadata_mut().insert("authorization", h.clone());
        }
        Ok(r)
    }
}

/// How to reach a Shoal endpoint.
#[derive(Clone, Debug, Default)]
pub struct ConnectOptions {
    /// PEM of the CA that signed the server's certificate: TLS on.
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate and key (PEM), for servers that ask for one (the
    /// internal plane always does).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// Name to verify the server's certificate against (default: the host
    /// dialled).
    pub server_name: Option<String>,
    pub credentials: Credentials,
}

impl ConnectOptions {
    /// A channel to `addr` (`host:port`, `http://` or `https://`).
    pub async fn channel(&self, addr: &str, connect_timeout: Option<Duration>) -> Result<Channel> {
        let https = addr.starts_with("https://");
        let rest = addr.split_once("://").map_or(addr, |(_, r)| r);
        let tls = https || self.ca_pem.is_some();
        if !tls && self.credentials.header.is_some() {
            // A key over plain TCP is readable by anyone on the path: only
            // to this machine.
            let host = rest.rsplit_once(':').map_or(rest, |(h, _)| h).trim_start_matches('[').trim_end_matches(']');
            let local = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
            if !local {
                return Err(ClientError::Credentials(format!("refusing to send credentials to {addr} without TLS: use https:// with --ca (SHOAL_CA)")));
            }
        }
        let uri = format!("{}://{rest}", if tls { "https" } else { "http" });
        let mut ep = Endpoint::from_shared(uri).map_err(|_| ClientError::Address(addr.to_string()))?.tcp_nodelay(true);
        if let Some(t) = connect_timeout {
            ep = ep.connect_timeout(t);
        }
        if tls {
            let ca = self.ca_pem.as_ref().ok_or_else(|| ClientError::Credentials(format!("{addr} is https: give the CA certificate that signed the server's (--ca or SHOAL_CA)")))?;
            let mut cfg = tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(ca));
            if let Some((cert, key)) = &self.identity {
                cfg = cfg.identity(tonic::transport::Identity::from_pem(cert, key));
            }
            if let Some(n) = &self.server_name {
                cfg = cfg.domain_name(n.clone());
            }
            ep = ep.tls_config(cfg)?;
        }
        Ok(ep.connect().await?)
    }
}

/// The channel every call of a [`Client`] goes through: credentials added.
pub type AuthChannel = InterceptedService<Channel, Credentials>;

/// Async client for the public API. Cheap to clone; clones share the
/// connection.
#[derive(Clone)]
pub struct Client {
    channel: AuthChannel,
    retry: RetryPolicy,
}

fn transient(s: &tonic::Status) -> bool {
    matches!(s.code(), tonic::Code::Unavailable)
}

macro_rules! call {
    ($self:ident, $client:ident, $method:ident, $req:expr) => {{
        let mut backoff = $self.retry.initial_backoff;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut c = $client::new($self.channel.clone())
                .max_decoding_message_size(shoal_proto::limits::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(shoal_proto::limits::MAX_MESSAGE_BYTES);
            match c.$method($req.clone()).await {
                Ok(r) => break Ok::<_, ClientError>(r.into_inner()),
                Err(s) if transient(&s) && attempt < $self.retry.attempts => {
                    tracing::debug!(attempt, status = %s, "retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min($self.retry.max_backoff);
                }
                Err(s) => break Err(ClientError::Status(s)),
            }
        }
    }};
}

impl Client {
    /// Connects to a coordinator at `host:port` (or a full `http://` URI),
    /// without TLS or credentials.
    pub async fn connect(addr: &str) -> Result<Self> {
        Self::connect_with(addr, &ConnectOptions::default()).await
    }

    /// Connects with TLS and credentials (see [`ConnectOptions`]).
    pub async fn connect_with(addr: &str, opts: &ConnectOptions) -> Result<Self> {
        let channel = opts.channel(addr, None).await?;
        Ok(Client { channel: InterceptedService::new(channel, opts.credentials.clone()), retry: RetryPolicy::default() })
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub async fn create_collection(&self, config: CollectionConfig) -> Result<CollectionInfo> {
        let req = CreateCollectionRequest { config: Some(config) };
        let r = call!(self, CollectionsClient, create, req)?;
        Ok(r.collection.unwrap_or_default())
    }

    pub async fn get_collection(&self, name: &str) -> Result<CollectionInfo> {
        let req = GetCollectionRequest { name: name.to_string() };
        Ok(call!(self, CollectionsClient, get, req)?.collection.unwrap_or_default())
    }

    pub async fn list_collections(&self) -> Result<Vec<CollectionInfo>> {
        Ok(call!(self, CollectionsClient, list, ListCollectionsRequest {})?.collections)
    }

    pub async fn delete_collection(&self, name: &str) -> Result<()> {
        let req = DeleteCollectionRequest { name: name.to_string() };
        call!(self, CollectionsClient, delete, req)?;
        Ok(())
    }

    /// Applies alias actions ([`alias_put`], [`alias_delete`]) in one
    /// atomic step.
    pub async fn update_aliases(&self, actions: Vec<AliasAction>) -> Result<()> {
        let req = UpdateAliasesRequest { actions };
        call!(self, CollectionsClient, update_aliases, req)?;
        Ok(())
    }

    /// Aliases, sorted; of one collection, or all (`None`).
    pub async fn list_aliases(&self, collection: Option<&str>) -> Result<Vec<Alias>> {
        let req = ListAliasesRequest { collection: collection.unwrap_or_default().to_string() };
        Ok(call!(self, CollectionsClient, list_aliases, req)?.aliases)
    }

    /// Adds and drops payload indexes of a live collection (drops first);
    /// returns the collection as it now is. Replicas re-index in the
    /// background.
    /// Adds and drops named vectors of a live collection.
    /// Changes a live collection's storage kind and/or vector memory
    /// (`None`: unchanged); replicas rebuild in the background.
    pub async fn update_storage(&self, collection: &str, storage: Option<VectorStorage>, memory: Option<VectorMemory>) -> Result<CollectionInfo> {
        let req = UpdateStorageRequest { collection: collection.into(), storage: storage.map_or(0, |s| s as i32), memory: memory.map_or(0, |m| m as i32) };
        Ok(call!(self, CollectionsClient, update_storage, req)?.collection.unwrap_or_default())
    }

    pub async fn update_vectors(&self, collection: &str, add: Vec<NamedVectorConfig>, drop: Vec<String>) -> Result<CollectionInfo> {
        let req = UpdateVectorsRequest { collection: collection.into(), add, drop };
        Ok(call!(self, CollectionsClient, update_vectors, req)?.collection.unwrap_or_default())
    }

    pub async fn update_payload_indexes(&self, collection: &str, create: Vec<PayloadIndexSpec>, drop: Vec<String>) -> Result<CollectionInfo> {
        let req = UpdatePayloadIndexesRequest { collection: collection.to_string(), create, drop };
        Ok(call!(self, CollectionsClient, update_payload_indexes, req)?.collection.unwrap_or_default())
    }

    /// Upserts points; returns how many were written.
    pub async fn upsert(&self, collection: &str, points: Vec<Point>) -> Result<u64> {
        let points = points.into_iter().map(Point::into_proto).collect::<Result<Vec<_>>>()?;
        self.upsert_raw(UpsertPointsRequest { collection: collection.to_string(), points }).await
    }

    pub async fn upsert_raw(&self, req: UpsertPointsRequest) -> Result<u64> {
        Ok(call!(self, PointsClient, upsert, req)?.affected)
    }

    pub async fn get(&self, collection: &str, ids: Vec<PointId>, with_payload: bool, with_vector: bool) -> Result<Vec<RetrievedPoint>> {
        let req = GetPointsRequest { collection: collection.to_string(), ids, with_payload, with_vector, consistency: 0 };
        Ok(call!(self, PointsClient, get, req)?.points)
    }

    pub async fn delete_ids(&self, collection: &str, ids: Vec<PointId>) -> Result<u64> {
        let req = DeletePointsRequest { collection: collection.to_string(), selector: Some(delete_points_request::Selector::Ids(PointIdList { ids })) };
        Ok(call!(self, PointsClient, delete, req)?.affected)
    }

    pub async fn delete_filter(&self, collection: &str, filter: Filter) -> Result<u64> {
        let req = DeletePointsRequest { collection: collection.to_string(), selector: Some(delete_points_request::Selector::Filter(filter)) };
        Ok(call!(self, PointsClient, delete, req)?.affected)
    }

    /// Deletes every point of a collection (the collection stays).
    pub async fn delete_all(&self, collection: &str) -> Result<u64> {
        let req = DeletePointsRequest { collection: collection.to_string(), selector: Some(delete_points_request::Selector::All(true)) };
        Ok(call!(self, PointsClient, delete, req)?.affected)
    }

    /// Updates the payloads of the selected points (their vectors stay);
    /// returns how many points were updated.
    pub async fn update_payload(&self, collection: &str, select: Select, op: PayloadOp) -> Result<u64> {
        use update_payload_request::{Op, Selector};
        let selector = match select {
            Select::Ids(ids) => Selector::Ids(PointIdList { ids }),
            Select::Filter(f) => Selector::Filter(f),
            Select::All => Selector::All(true),
        };
        let op = match op {
            PayloadOp::Set(v) => Op::Set(Struct::try_from(&v)?),
            PayloadOp::Overwrite(v) => Op::Overwrite(Struct::try_from(&v)?),
            PayloadOp::DeleteKeys(keys) => Op::DeleteKeys(PayloadKeys { keys }),
            PayloadOp::Clear => Op::Clear(true),
        };
        let req = UpdatePayloadRequest { collection: collection.to_string(), selector: Some(selector), op: Some(op) };
        Ok(call!(self, PointsClient, update_payload, req)?.affected)
    }

    pub async fn count(&self, collection: &str, filter: Option<Filter>) -> Result<u64> {
        let req = CountPointsRequest { collection: collection.to_string(), filter, consistency: 0 };
        Ok(call!(self, PointsClient, count, req)?.count)
    }

    pub async fn scroll(&self, req: ScrollPointsRequest) -> Result<ScrollPointsResponse> {
        call!(self, PointsClient, scroll, req)
    }

    pub async fn search(&self, s: SearchBuilder) -> Result<Vec<ScoredPoint>> {
        let req = s.0;
        Ok(call!(self, PointsClient, search, req)?.results)
    }

    pub async fn search_batch(&self, collection: &str, searches: Vec<SearchBuilder>) -> Result<Vec<Vec<ScoredPoint>>> {
        let req = SearchBatchRequest { collection: collection.to_string(), searches: searches.into_iter().map(|s| s.0).collect() };
        Ok(call!(self, PointsClient, search_batch, req)?.results.into_iter().map(|r| r.results).collect())
    }

    /// A multi-stage or hybrid query ([`QueryBuilder`], docs/query.md).
    pub async fn query(&self, q: QueryBuilder) -> Result<QueryPointsResponse> {
        let req = q.0;
        call!(self, PointsClient, query, req)
    }

    pub async fn cluster_status(&self) -> Result<ClusterStatusResponse> {
        call!(self, ClusterClient, status, ClusterStatusRequest {})
    }
}
