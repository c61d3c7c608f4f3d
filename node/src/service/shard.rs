//! `shoal.internal.v1.Shard`: shard-level reads, writes and search.
use std::sync::Arc;

use shoal_proto::internal::v1::shard_server::Shard as ShardApi;
use shoal_proto::internal::v1::*;
use shoal_proto::limits::*;
use shoal_proto::v1::{Filter, SearchPointsRequest, SearchResult};
use shoal_proto::validate::{self, invalid};
use tonic::{Request, Response, Status};

use super::blocking;

use openraft::error::RaftError;
use shoal_proto::v1::Consistency;

use crate::engine::{Engine, Replica};
use crate::error::{NodeError, Result};
use crate::shard::Shard;

/// A single unfiltered search up to this `top_k`, without payloads or
/// vectors, runs on the async worker (its cost is small and bounded);
/// anything heavier goes to the blocking pool.
const CHEAP_TOP_K: u32 = 100;

/// Searches per thread below which a batch runs on one thread (a thread
/// costs tens of microseconds to start; a search, hundreds).
const PARALLEL_SEARCHES_MIN: usize = 4;

/// Extra search threads running batches on this node at once, at most
/// twice the cores.
static BATCH_THREADS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Extra batch threads reserved (released on drop).
struct BatchThreads(usize);

impl BatchThreads {
    fn reserve(want: usize) -> Self {
        use std::sync::atomic::Ordering;
        let max = 2 * std::thread::available_parallelism().map_or(1, |t| t.get());
        let mut got = 0;
        let _ = BATCH_THREADS.fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
            got = want.min(max.saturating_sub(cur));
            Some(cur + got)
        });
        BatchThreads(got)
    }
}

impl Drop for BatchThreads {
    fn drop(&mut self) {
        BATCH_THREADS.fetch_sub(self.0, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Write batches at least this large trim the heap when done.
const BULK_WRITE_POINTS: usize = 256;

/// Checks that this replica may answer a read at `consistency`:
/// `STRONG` (the default) confirms leadership with a read-index round
/// (openraft's `ensure_linearizable`) and waits until the read index is
/// applied here; `LEADER` checks that this replica believes it leads;
/// `ANY` answers from whatever this replica has applied.
async fn read_barrier(replica: &Replica, node_id: u64, consistency: i32) -> Result<()> {
    use openraft::error::CheckIsLeaderError;
    let not_leader = |leader: Option<(u64, String)>| NodeError::NotLeader { group: replica.group.clone(), leader };
    match Consistency::try_from(consistency).unwrap_or(Consistency::Unspecified) {
        Consistency::Any => Ok(()),
        Consistency::Leader => {
            // Per request: read the metrics in place, no copy.
            let rx = replica.raft.metrics();
            let m = rx.borrow();
            if m.current_leader == Some(node_id) {
                return Ok(());
            }
            Err(not_leader(m.current_leader.and_then(|id| m.membership_config.membership().get_node(&id).map(|n| (id, n.addr.clone())))))
        }
        Consistency::Strong | Consistency::Unspecified if sole_voter(replica, node_id) => Ok(()),
        Consistency::Strong | Consistency::Unspecified => match replica.raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => Err(not_leader(f.leader_id.zip(f.leader_node.map(|n| n.addr)))),
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q))) => Err(NodeError::NoQuorum { group: replica.group.clone(), detail: q.to_string() }),
            Err(e) => Err(NodeError::Raft(e.to_string())),
        },
    }
}

/// True when this replica leads a group whose only voter is itself (a
/// replication factor of 1). No other node can then lead or commit, and a
/// write is acknowledged only after it is applied here, so the local state
/// already reflects every acknowledged write: a `strong` read needs no
/// read-index round through the Raft core (measured in docs/benchmarks.md).
fn sole_voter(replica: &Replica, node_id: u64) -> bool {
    let rx = replica.raft.metrics();
    let m = rx.borrow();
    let joint = m.membership_config.membership().get_joint_config();
    m.current_leader == Some(node_id) && joint.len() == 1 && joint[0].len() == 1 && joint[0].contains(&node_id)
}

/// The strongest of some read consistencies (`STRONG`, the default, over
/// `LEADER` over `ANY`), as its wire value.
pub fn strongest(levels: impl Iterator<Item = i32>) -> i32 {
    let rank = |c: i32| match Consistency::try_from(c).unwrap_or(Consistency::Unspecified) {
        Consistency::Any => 0,
        Consistency::Leader => 1,
        Consistency::Strong | Consistency::Unspecified => 2,
    };
    levels.max_by_key(|c| rank(*c)).unwrap_or(Consistency::Strong as i32)
}

pub struct ShardService {
    engine: Arc<Engine>,
}

impl ShardService {
    pub fn new(engine: Arc<Engine>) -> Self {
        ShardService { engine }
    }

    fn replica(&self, r: &Option<ShardRef>) -> Result<Replica> {
        let r = r.as_ref().ok_or_else(|| invalid("shard", "shard reference is missing"))?;
        self.engine.replica(&r.collection, r.shard_id, r.epoch)
    }

    /// The shard behind a read, once the read barrier for `consistency`
    /// has passed, and whether the read leaves out a pending split's
    /// frozen copies ([`Engine::replica_for_read`]).
    async fn shard(&self, r: &Option<ShardRef>, consistency: i32) -> Result<(Arc<Shard>, bool)> {
        let r = r.as_ref().ok_or_else(|| invalid("shard", "shard reference is missing"))?;
        let (replica, hide) = self.engine.replica_for_read(&r.collection, r.shard_id, r.epoch)?;
        read_barrier(&replica, self.engine.node_id(), consistency).await?;
        Ok((replica.shard(), hide))
    }
}

fn non_empty(f: &Option<Filter>) -> Option<&Filter> {
    f.as_ref().filter(|f| !(f.must.is_empty() && f.should.is_empty() && f.must_not.is_empty()))
}

#[tonic::async_trait]
impl ShardApi for ShardService {
    async fn write(&self, req: Request<ShardWriteRequest>) -> Result<Response<ShardWriteResponse>, Status> {
        let req = req.into_inner();
        let replica = self.replica(&req.shard)?;
        if replica.transfer.load(std::sync::atomic::Ordering::Acquire) {
            // Leadership is being handed over: the coordinator retries.
            return Err(NodeError::NotLeader { group: replica.group.clone(), leader: None }.into());
        }
        if !req.upserts.is_empty() {
            // Below the free-space watermark only deletes go on (crate::disk).
            self.engine.disk.check()?;
        }
        let has_delete = !req.delete_ids.is_empty() || req.delete_filter.is_some();
        if !req.upserts.is_empty() && has_delete {
            return Err(NodeError::from(invalid("upserts", "a shard write carries upserts or deletes, not both")).into());
        }
        if req.upserts.len() > MAX_UPSERT_BATCH {
            return Err(NodeError::from(invalid("upserts", format!("{} points exceed the batch limit of {MAX_UPSERT_BATCH}", req.upserts.len()))).into());
        }
        let bytes = prost::Message::encoded_len(&req);
        if bytes > MAX_WRITE_BYTES {
            return Err(NodeError::from(invalid("upserts", format!("the write is {bytes} bytes encoded, the limit is {MAX_WRITE_BYTES}; split the batch"))).into());
        }
        if !(req.request_id.is_empty() || req.request_id.len() == 16) {
            return Err(NodeError::from(invalid("request_id", format!("a request id is empty or 16 bytes, not {}", req.request_id.len()))).into());
        }
        // Reject bad input before it enters the replicated log, then encode
        // the command off the async workers (batches are megabytes).
        let shard = replica.shard();
        // A retry of a write this replica has applied: answered from the
        // request-id table without a new entry (the state machine would
        // skip it anyway).
        if let Some(done) = crate::shard::requests::request_id(&req.request_id).and_then(|id| shard.request_done(&id)) {
            return Ok(Response::new(ShardWriteResponse { affected: done.affected }));
        }
        if req.upserts.iter().any(|p| !p.vectors.is_empty()) {
            let collection = req.shard.as_ref().map(|s| s.collection.clone()).unwrap_or_default();
            self.engine.catch_up_schema(&collection, &replica).await?;
        }
        let bulk = req.upserts.len() >= BULK_WRITE_POINTS;
        if !req.batch.is_empty() || req.control.is_some() {
            return Err(NodeError::from(invalid("batch", "write groups and control entries are formed by the node, not sent to it")).into());
        }
        let req = blocking(move || {
            shard.validate_write(&req.upserts, &req.delete_ids, req.delete_filter.as_ref(), req.delete_all, req.payload_update.as_ref())?;
            let epoch = req.shard.as_ref().map_or(0, |s| s.epoch);
            shard.check_write_route(&req)?;
            // Only the epoch travels in the log: replicas check it too.
            Ok(ShardWriteRequest { shard: Some(ShardRef { epoch, ..Default::default() }), ..req })
        })
        .await?;
        // Group commit with concurrent writes to this shard (raft::batch).
        let (affected, error) = replica.writes.submit(req).await?;
        if bulk {
            // A bulk batch frees megabytes of decoded points: hand the pages
            // back now rather than at the next periodic trim.
            let _ = tokio::task::spawn_blocking(crate::memory::release_free_memory).await;
        }
        match error {
            Some(e) => match e.strip_prefix(crate::shard::split::MOVED) {
                Some(m) => Err(NodeError::RangeMoved(m.to_string()).into()),
                None => Err(NodeError::Rejected(e).into()),
            },
            None => Ok(Response::new(ShardWriteResponse { affected })),
        }
    }

    async fn get(&self, req: Request<ShardGetRequest>) -> Result<Response<ShardGetResponse>, Status> {
        let req = req.into_inner();
        // The same limit coordinators apply: a peer's request with millions
        // of ids would otherwise size the answer's allocation.
        if req.ids.len() > shoal_proto::limits::MAX_IDS_PER_REQUEST {
            return Err(NodeError::from(invalid("ids", format!("{} ids is more than {}", req.ids.len(), shoal_proto::limits::MAX_IDS_PER_REQUEST))).into());
        }
        let (shard, _) = self.shard(&req.shard, req.consistency).await?;
        let points = blocking(move || shard.get(&req.ids, req.with_payload, req.with_vector)).await?;
        Ok(Response::new(ShardGetResponse { points }))
    }

    async fn scroll(&self, req: Request<ShardScrollRequest>) -> Result<Response<ShardScrollResponse>, Status> {
        let req = req.into_inner();
        let (shard, hide) = self.shard(&req.shard, req.consistency).await?;
        let limit = if req.limit == 0 { DEFAULT_SCROLL_LIMIT } else { req.limit };
        if limit > MAX_SCROLL_LIMIT {
            return Err(NodeError::from(invalid("limit", format!("limit {limit} exceeds {MAX_SCROLL_LIMIT}"))).into());
        }
        let (points, next) = blocking(move || shard.scroll_scoped(req.offset.as_ref(), limit, non_empty(&req.filter), req.with_payload, req.with_vector, hide)).await?;
        Ok(Response::new(ShardScrollResponse { points, next_offset: next.map(|k| k.to_proto()) }))
    }

    async fn count(&self, req: Request<ShardCountRequest>) -> Result<Response<ShardCountResponse>, Status> {
        let req = req.into_inner();
        let (shard, hide) = self.shard(&req.shard, req.consistency).await?;
        let count = blocking(move || shard.count_scoped(non_empty(&req.filter), hide)).await?;
        Ok(Response::new(ShardCountResponse { count }))
    }

    async fn search(&self, req: Request<ShardSearchRequest>) -> Result<Response<ShardSearchResponse>, Status> {
        let req = req.into_inner();
        // One barrier for the batch: the strongest any search asks for.
        let consistency = strongest(req.searches.iter().map(|s| s.consistency));
        let (shard, hide) = self.shard(&req.shard, consistency).await?;
        if req.searches.is_empty() || req.searches.len() > MAX_SEARCH_BATCH {
            return Err(NodeError::from(invalid("searches", format!("{} searches is outside 1..={MAX_SEARCH_BATCH}", req.searches.len()))).into());
        }
        let cheap = !hide && req.searches.len() == 1 && req.searches.iter().all(|s| !s.exact && non_empty(&s.filter).is_none() && s.top_k <= CHEAP_TOP_K && !s.with_payload && !s.with_vector);
        for (i, s) in req.searches.iter().enumerate() {
            validate::search_params(&format!("searches[{i}]."), s.top_k, s.ef).map_err(NodeError::from)?;
            validate::oversampling(&format!("searches[{i}]."), s.oversampling).map_err(NodeError::from)?;
            if let Some(f) = &s.filter {
                validate::filter(f).map_err(NodeError::from)?;
            }
        }
        let dimension = shard.dimension();
        validate::search_cost(req.searches.iter().map(|s| (s.top_k, s.with_vector)), 1, dimension).map_err(NodeError::from)?;
        // Payloads can make a response far larger than its hit count says:
        // stop building it once it passes the message limit.
        let run = move || {
            let n = req.searches.len();
            let all: Vec<&SearchPointsRequest> = req.searches.iter().collect();
            // Exact searches sharing a filter are scored together, one pass
            // of the scan engine (over every core) per group.
            if n == 1 && all[0].exact && all[0].vector_name.is_empty() {
                // A single exact search shares a scan with the shard's
                // concurrent ones.
                let r = SearchResult { results: shard.search_exact_batched(all[0].clone(), hide)? };
                if prost::Message::encoded_len(&r) + 11 > crate::shard::RESPONSE_BYTES {
                    return Err(NodeError::TooLarge(format!("the search response passes {} bytes; ask for fewer hits, fewer payload fields or no vectors", crate::shard::RESPONSE_BYTES)));
                }
                return Ok(vec![r]);
            }
            let grouped = if n > 1 { shard.search_exact_groups(&all, hide)? } else { vec![None] };
            let rest: Vec<&SearchPointsRequest> = all.iter().zip(&grouped).filter(|(_, g)| g.is_none()).map(|(r, _)| *r).collect();
            // The other searches run on every core, each thread taking a
            // contiguous part (answers stay in request order). Each part
            // stops once it alone passes the response limit.
            let want = std::thread::available_parallelism().map_or(1, |t| t.get()).min(rest.len() / PARALLEL_SEARCHES_MIN).max(1);
            // Extra threads are bounded node-wide: many concurrent
            // batches share the cores instead of multiplying threads.
            let extra = BatchThreads::reserve(want - 1);
            let threads = 1 + extra.0;
            let part = |searches: &[&SearchPointsRequest]| -> Result<Vec<SearchResult>, NodeError> {
                let mut bytes = 0usize;
                let mut out = Vec::with_capacity(searches.len());
                for s in searches {
                    let r = SearchResult { results: shard.search_scoped(s, hide)? };
                    bytes += prost::Message::encoded_len(&r) + 11;
                    if bytes > crate::shard::RESPONSE_BYTES {
                        break;
                    }
                    out.push(r);
                }
                Ok(out)
            };
            let parts: Vec<Vec<SearchResult>> = if threads == 1 || rest.is_empty() {
                vec![part(&rest)?]
            } else {
                let chunk = rest.len().div_ceil(threads);
                let chunks: Vec<&[&SearchPointsRequest]> = rest.chunks(chunk).collect();
                std::thread::scope(|sc| {
                    // The first part runs on this thread, the others on
                    // their own; a part whose thread cannot start runs here.
                    let handles: Vec<_> = chunks[1..].iter().map(|c| (*c, std::thread::Builder::new().name("shoal-batch".into()).spawn_scoped(sc, move || part(c)).ok())).collect();
                    let first = part(chunks[0]);
                    std::iter::once(first)
                        .chain(handles.into_iter().map(|(c, h)| match h {
                            Some(h) => h.join().unwrap_or_else(|_| Err(NodeError::Index(crate::error::IndexError::Usearch("a search thread panicked".into())))),
                            None => part(c),
                        }))
                        .collect::<Result<Vec<_>, NodeError>>()
                })?
            };
            // The result, its field tag and its length prefix, over the
            // whole answer.
            let mut bytes = 0usize;
            let mut out = Vec::with_capacity(n);
            let mut rest = parts.into_iter().flatten();
            for g in grouped {
                let r = match g {
                    Some(results) => SearchResult { results },
                    // A part stopped early: the answer is too large.
                    None => match rest.next() {
                        Some(r) => r,
                        None => break,
                    },
                };
                bytes += prost::Message::encoded_len(&r) + 11;
                if bytes > crate::shard::RESPONSE_BYTES {
                    break;
                }
                out.push(r);
            }
            if out.len() < n {
                return Err(NodeError::TooLarge(format!("the search response passes {} bytes at search {} of {n}; ask for fewer hits, fewer payload fields or no vectors", crate::shard::RESPONSE_BYTES, out.len() + 1)));
            }
            Ok(out)
        };
        // One unfiltered HNSW search has a small, bounded cost (well under a
        // millisecond at the ef limit on the benchmark sets): run it on this
        // worker and save the hand-off to the blocking pool, which measured
        // as a large share of a cheap query. Exact scans, filters and
        // batches go to the blocking pool.
        let results = if cheap { run()? } else { blocking(run).await? };
        Ok(Response::new(ShardSearchResponse { results }))
    }

    async fn text_stats(&self, req: Request<ShardTextStatsRequest>) -> Result<Response<ShardTextStatsResponse>, Status> {
        let req = req.into_inner();
        let (shard, hide) = self.shard(&req.shard, req.consistency).await?;
        validate::key("key", &req.key).map_err(NodeError::from)?;
        validate::query_text("text", &req.text).map_err(NodeError::from)?;
        let st = blocking(move || shard.text_stats(&req.key, &req.text, hide)).await?;
        Ok(Response::new(ShardTextStatsResponse { docs: st.docs, tokens: st.tokens, terms: st.terms, df: st.df }))
    }

    async fn text_search(&self, req: Request<ShardTextSearchRequest>) -> Result<Response<ShardSearchResponse>, Status> {
        let req = req.into_inner();
        let (shard, hide) = self.shard(&req.shard, req.consistency).await?;
        validate::key("key", &req.key).map_err(NodeError::from)?;
        validate::search_params("", req.top_k, None).map_err(NodeError::from)?;
        // Checked here too: any node or coordinator may call this.
        if req.terms.is_empty() || req.terms.len() > validate::MAX_QUERY_WORDS || req.terms.iter().any(|t| t.len() > crate::text::MAX_TOKEN_BYTES) {
            return Err(NodeError::from(invalid("terms", format!("{} terms, allowed 1..={} of at most {} bytes", req.terms.len(), validate::MAX_QUERY_WORDS, crate::text::MAX_TOKEN_BYTES))).into());
        }
        let sane = req.idf.iter().all(|x| x.is_finite() && *x > 0.0) && req.avgdl.is_finite() && req.avgdl > 0.0 && (0.0..=10.0).contains(&req.k1) && (0.0..=1.0).contains(&req.b);
        if !sane {
            return Err(NodeError::from(invalid("bm25", "idf must be finite and > 0, avgdl finite and > 0, k1 in 0..=10, b in 0..=1")).into());
        }
        if let Some(f) = &req.filter {
            validate::filter(f).map_err(NodeError::from)?;
        }
        validate::search_cost(std::iter::once((req.top_k, req.with_vector)), 1, shard.dimension()).map_err(NodeError::from)?;
        let results = blocking(move || shard.text_search(&req, hide)).await?;
        Ok(Response::new(ShardSearchResponse { results: vec![SearchResult { results }] }))
    }

    async fn sparse_stats(&self, req: Request<ShardSparseStatsRequest>) -> Result<Response<ShardSparseStatsResponse>, Status> {
        let req = req.into_inner();
        let (shard, hide) = self.shard(&req.shard, req.consistency).await?;
        if req.indices.len() > shoal_proto::limits::MAX_SPARSE_NNZ {
            return Err(NodeError::from(invalid("indices", format!("{} indices, the limit is {}", req.indices.len(), shoal_proto::limits::MAX_SPARSE_NNZ))).into());
        }
        let (docs, df) = blocking(move || shard.sparse_stats(&req.name, &req.indices, hide)).await?;
        Ok(Response::new(ShardSparseStatsResponse { docs, df }))
    }

    async fn sparse_search(&self, req: Request<ShardSparseSearchRequest>) -> Result<Response<ShardSearchResponse>, Status> {
        let req = req.into_inner();
        let (shard, hide) = self.shard(&req.shard, req.consistency).await?;
        validate::search_params("", req.top_k, None).map_err(NodeError::from)?;
        let vector = req.vector.unwrap_or_default();
        // Weighted by idf (at most ln(1 + 2N) < 50): within 64 times the
        // stored bound.
        let bound = shoal_proto::limits::MAX_SPARSE_VALUE * 64.0;
        let scaled = shoal_proto::v1::SparseVector { indices: vector.indices.clone(), values: vector.values.iter().map(|x| if x.abs() <= bound { x / 64.0 } else { f32::INFINITY }).collect() };
        validate::sparse_vector("vector", &scaled).map_err(NodeError::from)?;
        if let Some(f) = &req.filter {
            validate::filter(f).map_err(NodeError::from)?;
        }
        let results = blocking(move || shard.sparse_search(&req.name, &vector, req.filter.as_ref(), req.top_k, hide)).await?;
        Ok(Response::new(ShardSearchResponse { results: vec![SearchResult { results }] }))
    }

    async fn score(&self, req: Request<ShardScoreRequest>) -> Result<Response<ShardScoreResponse>, Status> {
        let req = req.into_inner();
        let (shard, hide) = self.shard(&req.shard, req.consistency).await?;
        if req.vectors.is_empty() || req.vectors.len() > MAX_QUERY_VECTORS {
            return Err(NodeError::from(invalid("vectors", format!("{} vectors is outside 1..={MAX_QUERY_VECTORS}", req.vectors.len()))).into());
        }
        if req.max_points as usize > MAX_SCORE_POINTS {
            return Err(NodeError::from(invalid("max_points", format!("max_points {} exceeds {MAX_SCORE_POINTS}", req.max_points))).into());
        }
        if let Some(f) = &req.filter {
            validate::filter(f).map_err(NodeError::from)?;
            if !req.ids.is_empty() {
                return Err(NodeError::from(invalid("filter", "give ids or a filter, not both")).into());
            }
        }
        let rows = blocking(move || shard.score(&req, hide)).await?;
        Ok(Response::new(ShardScoreResponse { rows }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch mixing `ANY` and `STRONG` searches takes the strong barrier,
    /// whatever the order (it once applied only the first search's).
    #[test]
    fn batch_takes_the_strongest_barrier() {
        let (any, leader, strong) = (Consistency::Any as i32, Consistency::Leader as i32, Consistency::Strong as i32);
        assert_eq!(strongest([any, strong].into_iter()), strong);
        assert_eq!(strongest([any, leader, any].into_iter()), leader);
        assert_eq!(strongest([any, 0].into_iter()), 0, "unspecified is strong");
        assert_eq!(strongest([any].into_iter()), any);
    }
}
