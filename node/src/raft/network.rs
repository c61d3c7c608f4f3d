//! Raft over gRPC (`shoal.internal.v1.Raft`).
//!
//! - Client side: one [`Network`] factory per group. Every group on the node
//!   shares one lazily connected channel per peer address ([`Peers`]), and
//!   every request names its group. Transport failures map to openraft's
//!   `Unreachable`, so openraft backs off; a peer's Raft error comes back as
//!   `RemoteError`.
//! - Server side: [`RaftService`] decodes the request, finds the group in
//!   the node's [`Groups`] and hands it to that group's `Raft`.
//!
//! Bodies are postcard-encoded openraft messages (see internal.proto).
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest, VoteResponse};
use openraft::{BasicNode, Raft};
use parking_lot::RwLock;
use serde::de::DeserializeOwned;
use serde::Serialize;
use shoal_proto::internal::v1::raft_client::RaftClient;
use shoal_proto::internal::v1::raft_server::Raft as RaftApi;
use shoal_proto::internal::v1::{RaftReply, RaftRequest};
use shoal_proto::limits::MAX_MESSAGE_BYTES;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

use super::election::{Elections, PreVoteRequest};
use super::log_store::LogStore;
use super::rejoin::CatchUp;
use super::{NodeId, TypeConfig};
use crate::disk::DiskSpace;
use crate::error::NodeError;

/// Lazily connected channels to peer nodes, shared by all groups.
///
/// Fault injection: [`Peers::block`] makes every call from this node to a
/// peer address fail as unreachable (one direction only), which the
/// cluster harness uses to partition nodes.
#[derive(Clone, Default)]
pub struct Peers {
    channels: Arc<RwLock<HashMap<String, Channel>>>,
    raft_channels: Arc<RwLock<HashMap<String, Channel>>>,
    blocked: Arc<RwLock<std::collections::HashSet<String>>>,
    /// Node id -> current address, from the cluster map. Preferred over the
    /// address stored in a group's membership, which is the address the
    /// node had when it joined that group.
    book: Arc<RwLock<HashMap<NodeId, String>>>,
    /// The node's certificates (none: plain TCP). Peers must present a
    /// node certificate from the cluster CA.
    tls: Option<Arc<shoal_common::tls::TlsContext>>,
}

#[derive(Debug, thiserror::Error)]
#[error("link to {0} is cut (fault injection)")]
struct LinkCut(String);

impl Peers {
    /// Peers reached over TLS with the node's certificates.
    pub fn with_tls(tls: Option<Arc<shoal_common::tls::TlsContext>>) -> Self {
        Peers { tls, ..Default::default() }
    }

    /// The node's TLS context, if TLS is on.
    pub fn tls(&self) -> Option<Arc<shoal_common::tls::TlsContext>> {
        self.tls.clone()
    }

    /// Cuts the link from this node to `addr`.
    pub fn block(&self, addr: &str) {
        self.blocked.write().insert(addr.to_string());
    }

    /// Restores the link from this node to `addr`.
    pub fn unblock(&self, addr: &str) {
        self.blocked.write().remove(addr);
    }

    /// Restores every link from this node.
    pub fn heal(&self) {
        self.blocked.write().clear();
    }

    /// Replaces the address book (node id -> address).
    pub fn set_addresses(&self, book: HashMap<NodeId, String>) {
        *self.book.write() = book;
    }

    /// The current address of node `id`, if the map knows it.
    pub fn address(&self, id: NodeId) -> Option<String> {
        self.book.read().get(&id).cloned()
    }

    /// The shared, lazily connected channel to `addr` (Raft RPCs, and the
    /// `Meta` service forwarding changes to the metadata leader).
    pub fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        self.cached(&self.channels, addr)
    }

    /// The channel Raft messages to `addr` use: a connection of their own,
    /// so heartbeats never queue behind bulk shard or snapshot traffic or
    /// share its stream limits and resets.
    pub fn raft_channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        self.cached(&self.raft_channels, addr)
    }

    /// Sends a `PreVote` for `group` to `addr` on the Raft connection: the
    /// answer, or the peer's error code; `None` when no answer came within
    /// `wait` (or the link is cut).
    pub async fn pre_vote(&self, addr: &str, group: &str, payload: Vec<u8>, wait: Duration) -> Option<Result<Vec<u8>, Code>> {
        if self.blocked.read().contains(addr) {
            tokio::time::sleep(wait).await;
            return None;
        }
        let mut client = RaftClient::new(self.raft_channel(addr).ok()?);
        let mut request = Request::new(RaftRequest { group: group.to_string(), payload });
        request.set_timeout(wait);
        match tokio::time::timeout(wait, client.pre_vote(request)).await {
            Ok(Ok(reply)) => Some(Ok(reply.into_inner().payload)),
            Ok(Err(s)) => Some(Err(s.code())),
            Err(_) => None,
        }
    }

    fn cached(&self, map: &RwLock<HashMap<String, Channel>>, addr: &str) -> Result<Channel, tonic::transport::Error> {
        // With TLS, the server at `addr` must present the certificate of
        // the node the map lists there (any node's when the map does not
        // know the address yet: joining), so no other node can stand in
        // for it; the cache is per (address, node).
        let id = self.book.read().iter().find(|(_, a)| a.as_str() == addr).map(|(id, _)| *id);
        let key = match id {
            Some(id) => format!("{addr}#{id}"),
            None => addr.to_string(),
        };
        if let Some(c) = map.read().get(&key) {
            return Ok(c.clone());
        }
        let expect = match id {
            Some(id) => shoal_common::tls::Expect::NodeId(id),
            None => shoal_common::tls::Expect::Node,
        };
        let connect_timeout = Duration::from_secs(1);
        let ep = Endpoint::from_shared(shoal_common::tls::endpoint_uri(addr))?
            .connect_timeout(connect_timeout)
            .http2_keep_alive_interval(shoal_proto::transport::KEEPALIVE_INTERVAL)
            .keep_alive_timeout(shoal_proto::transport::KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        let c = shoal_common::tls::lazy_channel(ep, self.tls.clone(), expect, connect_timeout);
        map.write().insert(key, c.clone());
        Ok(c)
    }
}

/// The network of one Raft group.
#[derive(Clone)]
pub struct Network {
    group: String,
    peers: Peers,
}

impl Network {
    pub fn new(group: impl Into<String>, peers: Peers) -> Self {
        Network { group: group.into(), peers }
    }
}

/// One peer of one group.
pub struct Peer {
    group: String,
    target: NodeId,
    addr: String,
    peers: Peers,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer { group: self.group.clone(), target, addr: node.addr.clone(), peers: self.peers.clone() }
    }
}

#[derive(Clone, Copy)]
enum Rpc {
    Append,
    Vote,
    Snapshot,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl Peer {
    async fn call<Req, Resp, E>(&self, rpc: Rpc, req: &Req, option: &RPCOption) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let addr = self.peers.address(self.target).unwrap_or_else(|| self.addr.clone());
        if self.peers.blocked.read().contains(&addr) {
            // Like a dropped packet: the caller waits out its timeout.
            tokio::time::sleep(option.hard_ttl()).await;
            return Err(RPCError::Unreachable(Unreachable::new(&LinkCut(addr))));
        }
        let payload = postcard::to_stdvec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let channel = self.peers.raft_channel(&addr).map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let mut client = RaftClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES);
        let mut request = Request::new(RaftRequest { group: self.group.clone(), payload });
        request.set_timeout(option.hard_ttl());
        let reply = match rpc {
            Rpc::Append => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::Snapshot => client.install_snapshot(request).await,
        };
        let reply = reply.map_err(|s| match s.code() {
            // A full follower (RESOURCE_EXHAUSTED) is retried with backoff
            // like a silent one.
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown | Code::ResourceExhausted => RPCError::Unreachable(Unreachable::new(&s)),
            _ => RPCError::Network(NetworkError::new(&s)),
        })?;
        let res: Result<Resp, RaftError<NodeId, E>> = postcard::from_bytes(&reply.into_inner().payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(&mut self, rpc: AppendEntriesRequest<TypeConfig>, option: RPCOption) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        self.call(Rpc::Append, &rpc, &option).await
    }

    async fn install_snapshot(&mut self, rpc: InstallSnapshotRequest<TypeConfig>, option: RPCOption) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(Rpc::Snapshot, &rpc, &option).await
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        self.call(Rpc::Vote, &rpc, &option).await
    }
}

type GroupEntry = (Raft<TypeConfig>, LogStore);

/// The Raft groups hosted on this node, by group name, each with its log
/// (pre-votes compare last log ids).
#[derive(Clone, Default)]
pub struct Groups {
    map: Arc<RwLock<HashMap<String, GroupEntry>>>,
}

impl Groups {
    pub fn insert(&self, group: impl Into<String>, raft: Raft<TypeConfig>, log: LogStore) {
        self.map.write().insert(group.into(), (raft, log));
    }

    pub fn get(&self, group: &str) -> Option<Raft<TypeConfig>> {
        self.map.read().get(group).map(|(r, _)| r.clone())
    }

    /// The log of `group`.
    pub fn log(&self, group: &str) -> Option<LogStore> {
        self.map.read().get(group).map(|(_, l)| l.clone())
    }

    /// Every group, by name.
    pub fn all(&self) -> Vec<(String, Raft<TypeConfig>)> {
        self.map.read().iter().map(|(g, (r, _))| (g.clone(), r.clone())).collect()
    }

    pub fn remove(&self, group: &str) -> Option<Raft<TypeConfig>> {
        self.map.write().remove(group).map(|(r, _)| r)
    }
}

/// Whether any of `entries` writes points (decoded only while the volume
/// is low; an entry that does not decode counts as writing).
fn carries_upserts(entries: &[openraft::Entry<TypeConfig>]) -> bool {
    use prost::Message;
    use shoal_proto::internal::v1::ShardWriteRequest;
    fn writes(w: &ShardWriteRequest) -> bool {
        !w.upserts.is_empty() || w.batch.iter().any(writes)
    }
    entries.iter().any(|e| match &e.payload {
        openraft::EntryPayload::Normal(cmd) => ShardWriteRequest::decode(cmd.write.as_slice()).map_or(true, |w| writes(&w)),
        _ => false,
    })
}

/// Serves `shoal.internal.v1.Raft` for the node's groups.
pub struct RaftService {
    groups: Groups,
    /// The node's election timers: messages from leaders restart them, and
    /// pre-votes are answered from them ([`super::election`]).
    elections: Elections,
    /// Groups that lost their data and do not vote yet (see
    /// [`super::rejoin`]); none in harnesses without a node.
    catch_up: Option<CatchUp>,
    /// The node's data volume: shard replicas take no entries below its
    /// watermark ([`crate::disk`]).
    disk: Option<Arc<DiskSpace>>,
    /// Per group: the snapshot being received and the bytes received so
    /// far. A chunk may only rewrite or extend what came before: openraft
    /// seeks to the chunk's offset, and a seek far past the end grew an
    /// in-memory snapshot to the offset (a TiB) or a file to a sparse TiB.
    streams: parking_lot::Mutex<HashMap<String, (String, u64)>>,
    /// TLS is on: every message's sender is checked against the node
    /// certificate of the connection ([`RaftService::check_sender`]).
    identities: bool,
    /// The nodes the applied cluster map places in a group (shard replicas
    /// and learners; every registered node for the metadata group), asked
    /// when a replica knows no membership of its own yet.
    placed: Option<Placed>,
}

/// Who the cluster map places in a group: `None` when the map does not
/// know the group (a node that has not applied a map yet).
pub type Placed = Arc<dyn Fn(&str) -> Option<Vec<NodeId>> + Send + Sync>;

impl RaftService {
    pub fn new(groups: Groups, elections: Elections) -> Self {
        RaftService { groups, elections, catch_up: None, disk: None, streams: Default::default(), identities: false, placed: None }
    }

    /// Serves with the node's catch-up set: its replicas that lost their
    /// data refuse votes until they hold every committed entry.
    pub fn with_catch_up(mut self, catch_up: CatchUp) -> Self {
        self.catch_up = Some(catch_up);
        self
    }

    /// Checks each message's sender against the connection's certificate
    /// (TLS on).
    pub fn with_identities(mut self, on: bool) -> Self {
        self.identities = on;
        self
    }

    /// With TLS on: the connection's certificate must name node `claimed`
    /// (the leader or candidate the message speaks for), and that node must
    /// be a member (voter or learner) of the group, as far as this replica
    /// knows its membership. A replica that knows none yet (just created,
    /// waiting for its leader's first message) asks the applied cluster map
    /// who it places in the group; only a node that has applied no map at
    /// all (joining) takes any cluster node for the metadata group. So a
    /// node holding its own valid certificate cannot speak for another, nor
    /// lead or disrupt a group it is not a member of.
    fn check_sender(&self, caller: shoal_common::peer_auth::Caller, group: &str, raft: &Raft<TypeConfig>, claimed: Option<NodeId>) -> Result<(), Status> {
        use shoal_common::peer_auth::Caller;
        if !self.identities {
            return Ok(());
        }
        let id = match caller {
            Caller::Verified(Some(shoal_common::identity::Identity::Node(id))) => id,
            Caller::Verified(other) => return Err(Status::permission_denied(format!("Raft messages come from nodes only, not {other:?}"))),
            Caller::Plain => return Err(Status::unauthenticated("Raft messages need a TLS connection with a node certificate")),
        };
        if claimed != Some(id) {
            return Err(Status::permission_denied(format!("node {id} sent a {group} message on behalf of node {claimed:?}")));
        }
        let m = raft.metrics().borrow().membership_config.clone();
        let own: Vec<NodeId> = m.membership().nodes().map(|(n, _)| *n).collect();
        let known = if own.is_empty() { self.placed.as_ref().and_then(|p| p(group)) } else { Some(own) };
        match known {
            Some(members) if !members.contains(&id) => Err(Status::permission_denied(format!("node {id} is not a member of {group} (members {members:?})"))),
            _ => Ok(()),
        }
    }

    /// Asks `placed` who may lead a group whose replica knows no
    /// membership yet.
    pub fn with_placement(mut self, placed: Placed) -> Self {
        self.placed = Some(placed);
        self
    }

    /// Serves with the node's free-space watermark.
    pub fn with_disk(mut self, disk: Arc<DiskSpace>) -> Self {
        self.disk = Some(disk);
        self
    }

    /// `DiskFull` for new data to a shard group while the volume is low
    /// (the small metadata group always proceeds).
    fn room_for(&self, group: &str) -> Result<(), Status> {
        match &self.disk {
            Some(d) if group != super::meta::META_GROUP => d.check().map_err(Status::from),
            _ => Ok(()),
        }
    }

    /// Refuses a snapshot chunk that starts past the bytes received so far
    /// (offset 0 starts a snapshot anew) or ends past the group's limit;
    /// returns where it ends.
    fn check_chunk(&self, group: &str, rpc: &InstallSnapshotRequest<TypeConfig>) -> Result<u64, Status> {
        use shoal_proto::limits::{MAX_META_SNAPSHOT_BYTES, MAX_SHARD_SNAPSHOT_BYTES};
        let limit = if group == super::meta::META_GROUP { MAX_META_SNAPSHOT_BYTES } else { MAX_SHARD_SNAPSHOT_BYTES };
        let bad = |why: String| Status::invalid_argument(format!("snapshot chunk for {group}: {why}"));
        let mut s = self.streams.lock();
        let id = &rpc.meta.snapshot_id;
        let have = s.get(group).filter(|e| &e.0 == id).map_or(0, |e| e.1);
        if rpc.offset > have {
            return Err(bad(format!("offset {} is past the {have} bytes received of snapshot {id:?}", rpc.offset)));
        }
        let end = rpc.offset.checked_add(rpc.data.len() as u64).filter(|e| *e <= limit).ok_or_else(|| bad(format!("ends past the limit of {limit} bytes")))?;
        if rpc.offset == 0 {
            s.insert(group.to_string(), (id.clone(), 0));
        }
        Ok(end)
    }

    fn open<T: DeserializeOwned>(&self, req: Request<RaftRequest>) -> Result<(Raft<TypeConfig>, T), Status> {
        let req = req.into_inner();
        let raft = self.groups.get(&req.group).ok_or(NodeError::RaftGroupNotFound(req.group))?;
        let rpc = postcard::from_bytes(&req.payload).map_err(|e| NodeError::RaftCodec(e.to_string()))?;
        Ok((raft, rpc))
    }
}

fn reply<T: Serialize>(res: &T) -> Result<Response<RaftReply>, Status> {
    let payload = postcard::to_stdvec(res).map_err(|e| Status::from(NodeError::RaftCodec(e.to_string())))?;
    Ok(Response::new(RaftReply { payload }))
}

#[tonic::async_trait]
impl RaftApi for RaftService {
    async fn append_entries(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let group = req.get_ref().group.clone();
        let caller = shoal_common::peer_auth::caller(req.extensions());
        let (raft, rpc): (_, AppendEntriesRequest<TypeConfig>) = self.open(req)?;
        self.check_sender(caller, &group, &raft, rpc.vote.leader_id().voted_for())?;
        if let Err(full) = self.room_for(&group) {
            if carries_upserts(&rpc.entries) {
                // The entries wait (the leader retries them with backoff),
                // but the leader's vote still reaches openraft, as a
                // heartbeat would: a lagging follower gets only appends
                // with entries, and without this it would time out and
                // stand for election. Deletes and control entries pass:
                // they are how space is won back.
                let heartbeat = AppendEntriesRequest { vote: rpc.vote, prev_log_id: rpc.prev_log_id, entries: vec![], leader_commit: rpc.leader_commit };
                if leader_accepted(&raft.append_entries(heartbeat).await) {
                    self.elections.contact(&group);
                }
                return Err(full);
            }
        }
        let (vote, commit) = (rpc.vote, rpc.leader_commit);
        let res = raft.append_entries(rpc).await;
        if leader_accepted(&res) {
            self.elections.contact(&group);
        }
        if let Some(c) = self.catch_up.as_ref().filter(|c| c.is_held(&group)) {
            if matches!(res, Ok(AppendEntriesResponse::Success) | Ok(AppendEntriesResponse::PartialSuccess(_))) {
                c.observe(&group, vote, commit);
            }
            c.check(&group, &raft);
        }
        reply(&res)
    }

    async fn vote(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let group = req.get_ref().group.clone();
        let caller = shoal_common::peer_auth::caller(req.extensions());
        let (raft, rpc): (_, VoteRequest<NodeId>) = self.open(req)?;
        self.check_sender(caller, &group, &raft, rpc.vote.leader_id().voted_for())?;
        if self.catch_up.as_ref().is_some_and(|c| c.refuses_votes(&group, &raft)) {
            // No vote at all (not even a refusal that carries our term):
            // to the candidate this replica is silent, as a learner's
            // would be.
            return Err(NodeError::CatchingUp(group).into());
        }
        let res = raft.vote(rpc).await;
        if res.as_ref().is_ok_and(|r| r.vote_granted) {
            self.elections.postpone(&group);
        }
        reply(&res)
    }

    async fn install_snapshot(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let group = req.get_ref().group.clone();
        self.room_for(&group)?;
        let caller = shoal_common::peer_auth::caller(req.extensions());
        let (raft, rpc): (_, InstallSnapshotRequest<TypeConfig>) = self.open(req)?;
        self.check_sender(caller, &group, &raft, rpc.vote.leader_id().voted_for())?;
        let end = self.check_chunk(&group, &rpc)?;
        let (vote, id) = (rpc.vote, rpc.meta.snapshot_id.clone());
        let res = raft.install_snapshot(rpc).await;
        if res.is_ok() {
            let mut s = self.streams.lock();
            if let Some(e) = s.get_mut(&group).filter(|e| e.0 == id) {
                e.1 = e.1.max(end);
            }
        }
        if res.as_ref().is_ok_and(|r| r.vote == vote) {
            self.elections.contact(&group);
        }
        if let Some(c) = self.catch_up.as_ref().filter(|c| c.is_held(&group)) {
            c.check(&group, &raft);
        }
        reply(&res)
    }

    async fn pre_vote(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let group = req.get_ref().group.clone();
        let caller = shoal_common::peer_auth::caller(req.extensions());
        let (raft, rpc): (_, PreVoteRequest) = self.open(req)?;
        self.check_sender(caller, &group, &raft, Some(rpc.candidate))?;
        let log = self.groups.log(&group).ok_or_else(|| NodeError::RaftGroupNotFound(group.clone()))?;
        // One seek to the group's last entry.
        let mine = log.last_log_id().map_err(|e| NodeError::Raft(format!("reading the last log id of {group}: {e}")))?;
        let held = self.catch_up.as_ref().is_some_and(|c| c.refuses_votes(&group, &raft));
        reply(&self.elections.answer(&group, &raft, mine, &rpc, held))
    }
}

/// Whether an AppendEntries result shows the sender is this replica's
/// leader (its vote was accepted, whatever became of the entries).
fn leader_accepted<E>(res: &Result<AppendEntriesResponse<NodeId>, E>) -> bool {
    matches!(res, Ok(AppendEntriesResponse::Success | AppendEntriesResponse::PartialSuccess(_) | AppendEntriesResponse::Conflict))
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{SnapshotMeta, Vote};

    fn chunk(id: &str, offset: u64, len: usize) -> InstallSnapshotRequest<TypeConfig> {
        InstallSnapshotRequest { vote: Vote::new_committed(1, 1), meta: SnapshotMeta { snapshot_id: id.into(), ..Default::default() }, offset, data: vec![0; len], done: false }
    }

    /// A chunk may rewrite or extend what came before, never start past it
    /// or end past the group's limit; offset 0 starts a snapshot anew.
    #[test]
    fn snapshot_chunks_cannot_seek_past_what_was_received() {
        let svc = RaftService::new(Groups::default(), Elections::new(1, &super::super::default_config()));
        let ok = |r: Result<u64, Status>| r.unwrap();
        let refused = |r: Result<u64, Status>, needle: &str| {
            let s = r.unwrap_err();
            assert_eq!(s.code(), Code::InvalidArgument);
            assert!(s.message().contains(needle), "{s:?}");
        };
        refused(svc.check_chunk("meta", &chunk("a", 1 << 40, 1)), "past the 0 bytes received");
        assert_eq!(ok(svc.check_chunk("meta", &chunk("a", 0, 100))), 100);
        // What openraft accepted is recorded by the caller.
        svc.streams.lock().get_mut("meta").unwrap().1 = 100;
        assert_eq!(ok(svc.check_chunk("meta", &chunk("a", 100, 50))), 150, "the next chunk");
        assert_eq!(ok(svc.check_chunk("meta", &chunk("a", 40, 10))), 50, "a resent chunk");
        refused(svc.check_chunk("meta", &chunk("a", 101, 1)), "past the 100 bytes received");
        refused(svc.check_chunk("meta", &chunk("b", 100, 1)), "past the 0 bytes received");
        refused(svc.check_chunk("meta", &chunk("a", 100, shoal_proto::limits::MAX_META_SNAPSHOT_BYTES as usize)), "past the limit");
        refused(svc.check_chunk("c/0", &chunk("x", u64::MAX, 2)), "past the 0 bytes received");
    }
}
