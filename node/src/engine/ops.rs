//! Cluster operations: replica moves, leadership transfers, replication
//! factor changes and node removal (docs/operations.md).
//!
//! An operation is a record in the replicated cluster map
//! ([`MetaCommand::SubmitOps`]). The metadata leader drives pending ones,
//! one at a time in id order ([`Engine::drive_operations`]); when it loses
//! leadership or crashes, the next leader finds the same record and drives
//! it again. Every step therefore first checks whether it is already done:
//!
//! 1. a move's target is listed as a learner of the shard in the map (its
//!    node opens an empty replica that waits to be added);
//! 2. the shard's leader adds it as a Raft learner; it catches up from the
//!    log or a snapshot (progress: its matched index against the leader's
//!    last index when the step began);
//! 3. the leader replaces the voters (joint consensus), the source leaving;
//! 4. the map lists the new voters, and the source node drops its copy.
//!
//! Membership steps run on the shard group's leader through the
//! `ShardMembers` RPC ([`Engine::shard_members`]), wherever it is.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use openraft::{BasicNode, ChangeMembers, ServerState};
use parking_lot::Mutex;
use prost::Message;
use shoal_proto::internal::v1::meta_client::MetaClient;
use shoal_proto::internal::v1::operation::Kind;
use shoal_proto::internal::v1::shard_members_request::Action;
use shoal_proto::internal::v1::*;
use shoal_proto::validate::invalid;
use shoal_proto::{LEADER_ADDR_KEY, LEADER_ID_KEY};

use super::{Engine, Replica};
use crate::error::{NodeError, Result};
use crate::raft::meta::{MetaCommand, META_GROUP, NOT_FOUND};

/// A learner that gains nothing for this long fails its move (the move
/// can be submitted again; it resumes from where it stopped).
const CATCH_UP_STALL: Duration = Duration::from_secs(120);
/// Points a new replica may still have to index when it is promoted
/// (one indexer step, `engine::INDEX_CHUNK`).
const INDEXED_SLACK: u64 = 1024;
/// How long a move waits for the new replica's graph once it has applied
/// everything.
const INDEXING_WAIT: Duration = Duration::from_secs(20);
/// A step that fails this many times in a row fails its operation.
const MAX_ATTEMPTS: u32 = 30;
/// Operations of one submission that may run at once, at most.
pub const MAX_PARALLEL: u32 = 16;
/// A membership call tries the shard's replicas for this long.
const MEMBERS_CALL_WAIT: Duration = Duration::from_secs(30);

/// The driver's memory: live progress and retry counts per operation.
#[derive(Default)]
pub struct OpsState {
    progress: Mutex<HashMap<u64, (u64, u64, String)>>,
    attempts: Mutex<HashMap<u64, u32>>,
}

/// Why a step did not complete.
pub(super) enum StepError {
    /// Try again shortly (no leader, node unreachable ...).
    Retry(String),
    /// The operation cannot succeed.
    Fatal(String),
}

impl From<NodeError> for StepError {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::Invalid(_) | NodeError::Precondition(_) | NodeError::CollectionNotFound(_) => StepError::Fatal(e.to_string()),
            e => StepError::Retry(e.to_string()),
        }
    }
}

fn pending(op: &Operation) -> bool {
    op.state == OperationState::Pending as i32
}

/// The voters after moving `from` to `to` (0: none): the target takes the
/// source's place (a preferred leader's replacement stays preferred).
/// Idempotent: applied to its own result it changes nothing.
pub fn next_voters(replicas: &[u64], from: u64, to: u64) -> Vec<u64> {
    let mut v = replicas.to_vec();
    if to != 0 && !v.contains(&to) {
        match v.iter().position(|x| *x == from && from != 0) {
            Some(p) => v[p] = to,
            None => v.push(to),
        }
    }
    if from != 0 && from != to {
        v.retain(|x| *x != from);
    }
    v
}

/// Checks an operation against the map when it is submitted.
fn validate(map: &ClusterMap, op: &Operation) -> Result<()> {
    let placement = |collection: &str, shard_id: u32| -> Result<(CollectionEntry, ShardPlacement)> {
        let c = map.collections.iter().find(|c| c.config.as_ref().is_some_and(|x| x.name == collection)).ok_or_else(|| NodeError::CollectionNotFound(collection.to_string()))?;
        let s = c.shards.iter().find(|s| s.shard_id == shard_id).ok_or_else(|| NodeError::ShardNotFound { collection: collection.to_string(), shard: shard_id })?;
        if s.splitting {
            return Err(NodeError::Precondition(format!("{collection}/{shard_id} is being split off shard {}; wait until the split is done", s.split_from)));
        }
        Ok((c.clone(), s.clone()))
    };
    let node_known = |id: u64| map.nodes.iter().any(|n| n.id == id);
    match &op.kind {
        None => Err(invalid("operations", "an operation has no kind").into()),
        Some(Kind::Move(m)) => {
            let (_, s) = placement(&m.collection, m.shard_id)?;
            match (m.from_node, m.to_node) {
                (0, 0) => Err(invalid("move", "a move needs a source, a target or both").into()),
                (f, t) if f == t => Err(invalid("move", format!("source and target are both node {f}")).into()),
                (f, _) if f != 0 && !s.replicas.contains(&f) => Err(invalid("move.from_node", format!("node {f} holds no replica of {}/{}", m.collection, m.shard_id)).into()),
                (_, t) if t != 0 && !node_known(t) => Err(invalid("move.to_node", format!("node {t} is not in the cluster")).into()),
                (_, t) if t != 0 && s.replicas.contains(&t) => Err(invalid("move.to_node", format!("node {t} already holds a replica of {}/{}", m.collection, m.shard_id)).into()),
                (_, 0) if s.replicas.len() <= 1 => Err(NodeError::Precondition(format!("{}/{} has one replica left; it cannot be removed", m.collection, m.shard_id))),
                _ => Ok(()),
            }
        }
        Some(Kind::Transfer(t)) => {
            let (_, s) = placement(&t.collection, t.shard_id)?;
            if !s.replicas.contains(&t.to_node) {
                return Err(invalid("transfer.to_node", format!("node {} holds no replica of {}/{}", t.to_node, t.collection, t.shard_id)).into());
            }
            Ok(())
        }
        Some(Kind::Split(sp)) => {
            let (_, s) = placement(&sp.collection, sp.shard_id)?;
            if s.range_end == s.range_start {
                return Err(NodeError::Precondition(format!("{}/{} owns a single hash and cannot be split", sp.collection, sp.shard_id)));
            }
            if sp.mid != 0 && (sp.mid <= s.range_start || sp.mid > s.range_end) {
                return Err(invalid("split.mid", format!("{:#x} is not inside {}/{}'s range {:#x}..={:#x} (above its start)", sp.mid, sp.collection, sp.shard_id, s.range_start, s.range_end)).into());
            }
            if sp.child_shard_id != 0 {
                return Err(invalid("split.child_shard_id", "the new shard's id is chosen by the cluster; leave it 0").into());
            }
            Ok(())
        }
        Some(Kind::SetReplication(r)) => {
            if !map.collections.iter().any(|c| c.config.as_ref().is_some_and(|x| x.name == r.collection)) {
                return Err(NodeError::CollectionNotFound(r.collection.clone()));
            }
            if r.replication_factor == 0 || r.replication_factor as usize > map.nodes.len() {
                return Err(invalid("set_replication.replication_factor", format!("{} is outside 1..={} (the cluster's nodes)", r.replication_factor, map.nodes.len())).into());
            }
            Ok(())
        }
    }
}

/// The node id and address a NOT_LEADER status names, if any.
fn leader_hint(s: &tonic::Status) -> Option<(u64, String)> {
    let id = s.metadata().get(LEADER_ID_KEY)?.to_str().ok()?.parse().ok()?;
    let addr = s.metadata().get(LEADER_ADDR_KEY)?.to_str().ok()?.to_string();
    Some((id, addr))
}

/// Resets a replica's transfer state however the transfer ends.
struct TransferGuard<'a>(&'a Replica);

impl Drop for TransferGuard<'_> {
    fn drop(&mut self) {
        self.0.transfer.store(false, Ordering::Release);
    }
}

impl Engine {
    /// Validates and records operations; returns their ids. Metadata
    /// leader only.
    pub async fn submit_operations(&self, req: SubmitOperationsRequest) -> Result<Vec<u64>> {
        if req.operations.is_empty() {
            return Err(invalid("operations", "no operations given").into());
        }
        if req.operations.len() > 10_000 {
            return Err(invalid("operations", format!("{} operations exceed the limit of 10000 per submission", req.operations.len())).into());
        }
        if req.parallel > MAX_PARALLEL {
            return Err(invalid("parallel", format!("{} operations at once exceed the limit of {MAX_PARALLEL}", req.parallel)).into());
        }
        let _w = self.meta_write.lock().await;
        let map = self.cluster_map();
        for (i, op) in req.operations.iter().enumerate() {
            // Later operations of a plan build on earlier ones: only the
            // first of each shard is checked against today's map.
            let first_for_shard = !req.operations[..i].iter().any(|o| shard_of(o).is_some() && shard_of(o) == shard_of(op));
            if first_for_shard {
                validate(&map, op)?;
            }
        }
        let n = req.operations.len() as u64;
        let reply = self.propose_meta(MetaCommand::SubmitOps { request: req.encode_to_vec() }).await?;
        if let Some(e) = reply.error {
            return Err(NodeError::Rejected(e));
        }
        Ok((reply.affected..reply.affected + n).collect())
    }

    /// Recorded operations with the driver's live progress.
    pub fn list_operations(&self) -> Vec<Operation> {
        let progress = self.ops.progress.lock();
        self.cluster_map()
            .operations
            .into_iter()
            .map(|mut op| {
                if let (true, Some((done, total, step))) = (pending(&op), progress.get(&op.id)) {
                    op.progress_done = *done;
                    op.progress_total = *total;
                    if op.detail.is_empty() {
                        op.detail = step.clone();
                    }
                }
                op
            })
            .collect()
    }

    /// Removes a node that holds no replicas from the map and from the
    /// metadata group (a metadata voter is replaced by another node first).
    /// Metadata leader only.
    pub async fn remove_node(&self, id: u64) -> Result<ClusterMap> {
        let _w = self.meta_write.lock().await;
        let map = self.cluster_map();
        let membership = self.meta_raft.metrics().borrow().membership_config.membership().clone();
        let in_map = map.nodes.iter().any(|n| n.id == id);
        let in_group = membership.get_node(&id).is_some();
        if !in_map && !in_group {
            return Err(invalid("node_id", format!("node {id} is not in the cluster")).into());
        }
        let held: Vec<String> = map
            .collections
            .iter()
            .flat_map(|c| c.shards.iter().map(move |s| (c, s)))
            .filter(|(_, s)| s.replicas.contains(&id) || s.learners.contains(&id))
            .map(|(c, s)| format!("{}/{}", c.config.as_ref().map_or("", |x| x.name.as_str()), s.shard_id))
            .collect();
        if !held.is_empty() {
            return Err(NodeError::Precondition(format!("node {id} still holds replicas of {}; drain it first (`shoalctl cluster drain --node-id {id}`)", held.join(", "))));
        }
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let spare = map.nodes.iter().map(|n| n.id).find(|n| *n != id && !voters.contains(n));
        if voters.contains(&id) && spare.is_none() && voters.len() <= 1 {
            return Err(NodeError::Precondition(format!("node {id} is the last metadata voter")));
        }
        // Map first, then the group: a retry after a crash in between finds
        // the node only in the group and finishes the job.
        if in_map {
            let reply = self.propose_meta(MetaCommand::RemoveNode { id }).await?;
            if let Some(e) = reply.error.filter(|e| e != NOT_FOUND) {
                return Err(NodeError::Precondition(format!("node {id} cannot be removed: {e}")));
            }
        }
        let raft_err = |e: openraft::error::RaftError<u64, openraft::error::ClientWriteError<u64, BasicNode>>| NodeError::Raft(e.to_string());
        if voters.contains(&id) {
            if let Some(s) = spare {
                // Keep the metadata group at its size: a learner takes the
                // leaving voter's seat.
                self.meta_raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([s])), true).await.map_err(raft_err)?;
                tracing::info!(node = s, replaces = id, "node joined the metadata voters");
            }
        }
        if in_group {
            // A voter leaves through a joint change (not kept as a
            // learner); a learner is simply dropped.
            let change = if voters.contains(&id) { ChangeMembers::RemoveVoters(BTreeSet::from([id])) } else { ChangeMembers::RemoveNodes(BTreeSet::from([id])) };
            self.meta_raft.change_membership(change, false).await.map_err(raft_err)?;
            tracing::info!(node = id, "node removed from the cluster");
        }
        Ok(self.cluster_map())
    }

    /// One membership step of a shard group, on its leader.
    pub async fn shard_members(&self, req: ShardMembersRequest) -> Result<ShardMembersResponse> {
        let shard = req.shard.ok_or_else(|| invalid("shard", "shard reference is missing"))?;
        let r = self.replica(&shard.collection, shard.shard_id, 0)?;
        if let Some(Action::Elect(true)) = req.action {
            // A transfer asks the target to stand for election at once;
            // not a replica that lost its data and is catching up.
            if self.catch_up.is_held(&r.group) {
                return Err(NodeError::CatchingUp(r.group.clone()));
            }
            r.raft.trigger().elect().await.map_err(|e| NodeError::Raft(e.to_string()))?;
            return Ok(self.members_status(&r));
        }
        let not_leader = |r: &Replica| {
            let m = r.raft.metrics().borrow().clone();
            let leader = m.current_leader.and_then(|id| self.peers.address(id).or_else(|| m.membership_config.membership().get_node(&id).map(|n| n.addr.clone())).map(|a| (id, a)));
            NodeError::NotLeader { group: r.group.clone(), leader }
        };
        if r.raft.metrics().borrow().state != ServerState::Leader {
            return Err(not_leader(&r));
        }
        let raft_err = |e: openraft::error::RaftError<u64, openraft::error::ClientWriteError<u64, BasicNode>>| match e {
            openraft::error::RaftError::APIError(openraft::error::ClientWriteError::ForwardToLeader(_)) => not_leader(&r),
            e => NodeError::Raft(e.to_string()),
        };
        let membership = r.raft.metrics().borrow().membership_config.membership().clone();
        match req.action {
            None | Some(Action::Status(_)) | Some(Action::Elect(_)) => {}
            Some(Action::AddLearner(id)) => {
                if membership.get_node(&id).is_none() {
                    let addr = self.peers.address(id).ok_or_else(|| invalid("add_learner", format!("node {id} has no known address")))?;
                    r.raft.add_learner(id, BasicNode::new(addr), false).await.map_err(raft_err)?;
                    tracing::info!(group = %r.group, node = id, "learner added");
                }
            }
            Some(Action::SetVoters(v)) => {
                let want: BTreeSet<u64> = v.ids.iter().copied().collect();
                if want.is_empty() {
                    return Err(invalid("set_voters", "a group needs at least one voter").into());
                }
                if let Some(missing) = want.iter().find(|id| membership.get_node(id).is_none()) {
                    return Err(NodeError::Precondition(format!("node {missing} is not a member of {} yet (add it as a learner first)", r.group)));
                }
                let joint = membership.get_joint_config().len() > 1;
                let have: BTreeSet<u64> = membership.voter_ids().collect();
                let extra = membership.nodes().any(|(id, _)| !want.contains(id));
                if have != want || joint || extra {
                    r.raft.change_membership(ChangeMembers::ReplaceAllVoters(want.clone()), false).await.map_err(raft_err)?;
                    tracing::info!(group = %r.group, voters = ?want, "voters replaced");
                }
            }
            Some(Action::TransferTo(to)) => self.transfer_leader(&r, to).await?,
            Some(Action::Control(ctl)) => {
                // Alone in its entry (not through the write queue, whose
                // groups carry writes only).
                let write = ShardWriteRequest { control: Some(ctl), ..Default::default() }.encode_to_vec();
                let reply = super::propose(&r.raft, &r.group, crate::raft::Command { write }).await?;
                if let Some(e) = reply.error {
                    return Err(NodeError::Precondition(format!("{}: {e}", r.group)));
                }
            }
        }
        Ok(self.members_status(&r))
    }

    fn members_status(&self, r: &Replica) -> ShardMembersResponse {
        let m = r.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let learners = membership.nodes().map(|(id, _)| *id).filter(|id| !voters.contains(id)).collect();
        let mut matched: BTreeMap<u64, u64> = BTreeMap::new();
        if let Some(rep) = &m.replication {
            for (id, l) in rep.iter() {
                matched.insert(*id, l.map_or(0, |l| l.index));
            }
        }
        let last_index = m.last_log_index.unwrap_or(0);
        if m.state == ServerState::Leader {
            matched.insert(self.cfg.node_id, last_index);
        }
        ShardMembersResponse { leader: m.current_leader.unwrap_or(0), voters: voters.into_iter().collect(), learners, last_index, matched, joint: membership.get_joint_config().len() > 1 }
    }

    /// Hands the group's leadership to voter `to`. openraft 0.9 has no
    /// transfer, so: writes here pause (they answer UNAVAILABLE and the
    /// coordinator retries), heartbeats stop, `to` catches up, and once the
    /// followers' leader lease has run out `to` stands for election.
    async fn transfer_leader(&self, r: &Replica, to: u64) -> Result<()> {
        if to == self.cfg.node_id {
            return Ok(());
        }
        let membership = r.raft.metrics().borrow().membership_config.membership().clone();
        if !membership.voter_ids().any(|v| v == to) {
            return Err(NodeError::Precondition(format!("node {to} is not a voter of {}", r.group)));
        }
        let addr = self.peers.address(to).ok_or_else(|| invalid("transfer_to", format!("node {to} has no known address")))?;
        let _guard = TransferGuard(r);
        r.transfer.store(true, Ordering::Release);
        let shard = r.shard();
        let req = ShardMembersRequest { shard: Some(ShardRef { collection: shard.collection.clone(), shard_id: shard.shard_id, epoch: 0 }), action: Some(Action::Elect(true)) };
        self.hand_over(&r.raft, &r.group, to, &addr, |mut c| async move { c.shard_members(req).await.map(drop) }).await?;
        tracing::info!(group = %r.group, to, "leadership transferred");
        Ok(())
    }

    /// Hands `raft`'s leadership to voter `to` (openraft 0.9 has no
    /// transfer; the caller has paused new proposals): heartbeats stop,
    /// `to` catches up, and once the followers' leader lease has run out
    /// `elect` asks `to` to stand for election.
    async fn hand_over<F, Fut>(&self, raft: &openraft::Raft<crate::raft::TypeConfig>, group: &str, to: u64, addr: &str, elect: F) -> Result<()>
    where
        F: FnOnce(MetaClient<tonic::transport::Channel>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<(), tonic::Status>>,
    {
        struct Heartbeat<'a>(&'a openraft::Raft<crate::raft::TypeConfig>);
        impl Drop for Heartbeat<'_> {
            fn drop(&mut self) {
                self.0.runtime_config().heartbeat(true);
            }
        }
        let me = self.cfg.node_id;
        let _hb = Heartbeat(raft);
        raft.runtime_config().heartbeat(false);
        // Let the last entries reach the target (they may still be in
        // flight when proposals pause).
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let m = raft.metrics().borrow().clone();
            let done = m.replication.as_ref().and_then(|r| r.get(&to).copied().flatten()).map_or(0, |l| l.index);
            if done >= m.last_log_index.unwrap_or(0) {
                break;
            }
            if Instant::now() > deadline {
                return Err(NodeError::Precondition(format!("node {to} did not catch up with {group} within 3 s; try again")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Followers refuse votes while their lease on this leader holds
        // (openraft: election_timeout_max since the last message).
        tokio::time::sleep(Duration::from_millis(self.raft_config.election_timeout_max + 50)).await;
        let channel = self.peers.channel(addr).map_err(|e| NodeError::Raft(format!("bad address {addr:?} of node {to}: {e}")))?;
        elect(MetaClient::new(channel)).await.map_err(|s| NodeError::Raft(format!("node {to} could not stand for election: {}", s.message())))?;
        // Stepping down clears the leader; the new one's first message names it.
        let _ = raft.wait(Some(Duration::from_secs(3))).metrics(|m| m.current_leader.is_some_and(|l| l != me), "leadership handed over").await;
        let now = raft.metrics().borrow().current_leader;
        match now {
            Some(l) if l == to => Ok(()),
            other => Err(NodeError::Precondition(format!("leadership of {group} went to {other:?}, not node {to}; try again"))),
        }
    }

    /// Calls `ShardMembers` on the shard's leader, wherever it is
    /// ([`Engine::on_shard_leader`]).
    pub(super) async fn call_shard_leader(&self, collection: &str, shard_id: u32, action: Action) -> std::result::Result<ShardMembersResponse, StepError> {
        if self.placement(collection, shard_id).is_none() {
            return Err(StepError::Fatal(format!("{collection}/{shard_id} no longer exists")));
        }
        let req = ShardMembersRequest { shard: Some(ShardRef { collection: collection.to_string(), shard_id, epoch: 0 }), action: Some(action) };
        self.on_shard_leader(collection, shard_id, move |mut c| {
            let req = req.clone();
            async move { c.shard_members(req).await }
        })
        .await
        .map_err(|s| StepError::Retry(s.message().to_string()))
    }

    /// Calls `f` with a `Meta` client of the shard's leader, wherever it
    /// is: tries the replicas (and learners) in the map and follows leader
    /// hints, for up to 30 s. A replica that is not the leader, unreachable
    /// or still opening the shard is passed over; any other error ends the
    /// call with that status.
    pub(super) async fn on_shard_leader<T, F, Fut>(&self, collection: &str, shard_id: u32, f: F) -> std::result::Result<T, tonic::Status>
    where
        F: Fn(MetaClient<tonic::transport::Channel>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = Instant::now() + MEMBERS_CALL_WAIT;
        let mut hint: Option<(u64, String)> = None;
        let mut last = String::from("no replica answered");
        loop {
            let Some((_, placement)) = self.placement(collection, shard_id) else {
                return Err(tonic::Status::not_found(format!("{collection}/{shard_id} no longer exists")));
            };
            let mut targets: Vec<(u64, String)> = hint.take().into_iter().collect();
            for id in placement.replicas.iter().chain(&placement.learners) {
                if let Some(a) = self.peers.address(*id) {
                    targets.push((*id, a));
                }
            }
            for (id, addr) in targets {
                let res = match self.peers.channel(&addr) {
                    Ok(ch) => f(MetaClient::new(ch)).await.map(|r| r.into_inner()),
                    Err(e) => Err(tonic::Status::unavailable(e.to_string())),
                };
                match res {
                    Ok(r) => return Ok(r),
                    Err(s) if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::DeadlineExceeded) || s.code() == tonic::Code::NotFound && s.message().contains("not hosted") => {
                        last = format!("node {id}: {}", s.message());
                        if let Some(h) = leader_hint(&s) {
                            hint = Some(h);
                            break;
                        }
                    }
                    Err(s) => return Err(s),
                }
            }
            if Instant::now() > deadline {
                return Err(tonic::Status::unavailable(format!("no leader of {collection}/{shard_id} answered: {last}")));
            }
            if hint.is_none() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// A collection's uid and one shard's placement in the current map.
    pub(super) fn placement(&self, collection: &str, shard_id: u32) -> Option<(u64, ShardPlacement)> {
        self.meta_sm.with_map(|m| {
            let c = m.collections.iter().find(|c| c.config.as_ref().is_some_and(|x| x.name == collection))?;
            Some((c.uid, c.shards.iter().find(|s| s.shard_id == shard_id)?.clone()))
        })
    }

    async fn set_placement(&self, collection: &str, uid: u64, shard_id: u32, replicas: Vec<u64>, learners: Vec<u64>) -> std::result::Result<(), StepError> {
        let _w = self.meta_write.lock().await;
        let reply = self.propose_meta(MetaCommand::SetPlacement { collection: collection.to_string(), uid, shard_id, replicas, learners }).await?;
        match reply.error {
            Some(e) => Err(StepError::Fatal(format!("{collection}/{shard_id}: {e}"))),
            None => Ok(()),
        }
    }

    pub(super) fn note(&self, id: u64, done: u64, total: u64, step: &str) {
        self.ops.progress.lock().insert(id, (done, total, step.to_string()));
    }

    async fn drive_move(&self, id: u64, m: &MoveReplica) -> std::result::Result<(), StepError> {
        let (c, s, from, to) = (m.collection.as_str(), m.shard_id, m.from_node, m.to_node);
        let (uid, p) = self.placement(c, s).ok_or_else(|| StepError::Fatal(format!("{c}/{s} no longer exists")))?;
        if to != 0 && !p.replicas.contains(&to) {
            if !self.meta_sm.with_map(|m| m.nodes.iter().any(|n| n.id == to)) {
                return Err(StepError::Fatal(format!("node {to} is not in the cluster")));
            }
            if !p.learners.contains(&to) {
                self.note(id, 0, 0, "placing learner");
                let mut learners = p.learners.clone();
                learners.push(to);
                self.set_placement(c, uid, s, p.replicas.clone(), learners).await?;
            }
            self.note(id, 0, 0, "adding learner");
            let st = self.call_shard_leader(c, s, Action::AddLearner(to)).await?;
            let target = st.last_index;
            let (mut best, mut since) = (0, Instant::now());
            loop {
                let st = self.call_shard_leader(c, s, Action::Status(true)).await?;
                let done = st.matched.get(&to).copied().unwrap_or(0);
                self.note(id, done.min(target), target, "learner catching up");
                if done >= target {
                    break;
                }
                if done > best {
                    (best, since) = (done, Instant::now());
                } else if since.elapsed() > CATCH_UP_STALL {
                    return Err(StepError::Fatal(format!("node {to} gained nothing for {CATCH_UP_STALL:?} (at index {done} of {target}); submit the move again to resume")));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            // Holding the log is enough for safety; serving well needs the
            // entries applied and the HNSW graph built, so the new voter
            // does not answer its first searches by exact scans.
            self.wait_applied_and_indexed(id, c, s, to, target).await?;
        }
        let (uid, p) = self.placement(c, s).ok_or_else(|| StepError::Fatal(format!("{c}/{s} no longer exists")))?;
        let voters = next_voters(&p.replicas, from, to);
        if voters.is_empty() {
            return Err(StepError::Fatal(format!("{c}/{s} would have no replica left")));
        }
        self.note(id, 1, 1, "changing voters");
        self.call_shard_leader(c, s, Action::SetVoters(VoterSet { ids: voters.clone() })).await?;
        let learners: Vec<u64> = p.learners.iter().copied().filter(|l| *l != to).collect();
        self.set_placement(c, uid, s, voters, learners).await
    }

    /// Waits until node `to`'s replica of `c/s` has applied `target` and
    /// indexed every applied point (progress: applied, then indexed).
    async fn wait_applied_and_indexed(&self, id: u64, c: &str, s: u32, to: u64, target: u64) -> std::result::Result<(), StepError> {
        let addr = self.peers.address(to).ok_or_else(|| StepError::Retry(format!("node {to} has no known address")))?;
        let (mut best, mut since) = ((0, u64::MAX), Instant::now());
        let mut indexing_started: Option<Instant> = None;
        loop {
            let ch = self.peers.channel(&addr).map_err(|e| StepError::Retry(e.to_string()))?;
            let st = MetaClient::new(ch).node_status(NodeStatusRequest {}).await.map_err(|e| StepError::Retry(format!("node {to}: {}", e.message())))?.into_inner();
            let r = st.shards.iter().find(|r| r.collection == c && r.shard_id == s).ok_or_else(|| StepError::Retry(format!("node {to} has not opened {c}/{s} yet")))?;
            // Under write load a follower always has a few points waiting
            // for its indexer: one indexer step's worth is caught up.
            if r.applied_index >= target && r.unindexed <= INDEXED_SLACK {
                return Ok(());
            }
            // The indexer runs at low priority: on a busy node it may not
            // catch up with the writes. Promote anyway after a while (the
            // replica answers correctly meanwhile, scanning the rest).
            if r.applied_index >= target && indexing_started.get_or_insert_with(Instant::now).elapsed() > INDEXING_WAIT {
                tracing::info!(op = id, node = to, unindexed = r.unindexed, "promoting before the graph caught up with the writes");
                return Ok(());
            }
            if r.applied_index < target {
                self.note(id, r.applied_index, target, "learner applying");
            } else {
                self.note(id, r.points.saturating_sub(r.unindexed), r.points, "learner indexing");
            }
            let now = (r.applied_index, r.unindexed);
            if now.0 > best.0 || now.1 < best.1 {
                (best, since) = (now, Instant::now());
            } else if since.elapsed() > CATCH_UP_STALL {
                return Err(StepError::Fatal(format!("node {to} made no progress applying or indexing {c}/{s} for {CATCH_UP_STALL:?}; submit the move again to resume")));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn drive_transfer(&self, id: u64, t: &TransferLeader) -> std::result::Result<(), StepError> {
        let (c, s) = (t.collection.as_str(), t.shard_id);
        let (uid, p) = self.placement(c, s).ok_or_else(|| StepError::Fatal(format!("{c}/{s} no longer exists")))?;
        if !p.replicas.contains(&t.to_node) {
            return Err(StepError::Fatal(format!("node {} holds no replica of {c}/{s}", t.to_node)));
        }
        self.note(id, 0, 1, "transferring leadership");
        let st = self.call_shard_leader(c, s, Action::Status(true)).await?;
        if st.leader != t.to_node {
            self.call_shard_leader(c, s, Action::TransferTo(t.to_node)).await?;
        }
        let mut order = vec![t.to_node];
        order.extend(p.replicas.iter().copied().filter(|n| *n != t.to_node));
        self.set_placement(c, uid, s, order, p.learners.clone()).await
    }

    async fn drive_set_replication(&self, r: &SetReplication) -> std::result::Result<(), StepError> {
        let _w = self.meta_write.lock().await;
        let uid = self
            .meta_sm
            .with_map(|m| m.collections.iter().find(|c| c.config.as_ref().is_some_and(|x| x.name == r.collection)).map(|c| c.uid))
            .ok_or_else(|| StepError::Fatal(format!("collection {:?} no longer exists", r.collection)))?;
        let reply = self.propose_meta(MetaCommand::SetReplication { collection: r.collection.clone(), uid, replication_factor: r.replication_factor }).await?;
        reply.error.map_or(Ok(()), |e| Err(StepError::Fatal(e)))
    }

    async fn drive(&self, op: &Operation) -> std::result::Result<(), StepError> {
        match &op.kind {
            Some(Kind::Move(m)) => self.drive_move(op.id, m).await,
            Some(Kind::Transfer(t)) => self.drive_transfer(op.id, t).await,
            Some(Kind::SetReplication(r)) => self.drive_set_replication(r).await,
            Some(Kind::Split(sp)) => self.drive_split(op.id, sp).await,
            None => Err(StepError::Fatal("operation has no kind".into())),
        }
    }

    async fn finish(&self, id: u64, error: Option<String>) -> Result<()> {
        let _w = self.meta_write.lock().await;
        self.propose_meta(MetaCommand::FinishOp { id, error }).await?;
        self.ops.progress.lock().remove(&id);
        self.ops.attempts.lock().remove(&id);
        Ok(())
    }

    /// Drives pending operations while this node leads the metadata group,
    /// until the engine is dropped.
    pub fn drive_operations(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Engine> = Arc::downgrade(self);
        let mut rx = self.meta_sm.subscribe();
        tokio::spawn(async move {
            loop {
                let Some(engine) = weak.upgrade() else { break };
                let next = if engine.is_meta_leader() { engine.meta_sm.with_map(|m| runnable(&m.operations)) } else { vec![] };
                if next.is_empty() {
                    drop(engine);
                    let _ = tokio::time::timeout(Duration::from_millis(500), rx.changed()).await;
                    continue;
                }
                let outcomes = futures::future::join_all(next.iter().map(|op| engine.run_step(op))).await;
                drop(engine);
                if outcomes.iter().any(|again| *again) {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        })
    }

    /// Drives one operation until it ends or a step asks to be retried
    /// (then `true`: the caller waits before the next round).
    async fn run_step(&self, op: &Operation) -> bool {
        tracing::info!(op = op.id, kind = ?op.kind, "driving operation");
        let outcome = match self.drive(op).await {
            Ok(()) => self.finish(op.id, None).await,
            Err(StepError::Fatal(why)) => {
                tracing::warn!(op = op.id, error = %why, "operation failed");
                self.finish(op.id, Some(why)).await
            }
            Err(StepError::Retry(why)) => {
                let n = {
                    let mut a = self.ops.attempts.lock();
                    let n = a.entry(op.id).or_default();
                    *n += 1;
                    *n
                };
                tracing::info!(op = op.id, attempt = n, error = %why, "operation step will be retried");
                // A split whose child is placed cannot be abandoned: the
                // parent may already refuse writes to the moved range.
                // It is retried until it completes.
                let committed = self.meta_sm.with_map(|m| {
                    m.operations.iter().any(|o| o.id == op.id && matches!(&o.kind, Some(Kind::Split(s)) if s.child_shard_id != 0))
                });
                if n < MAX_ATTEMPTS || committed {
                    self.note(op.id, 0, 0, &format!("retrying: {why}"));
                    return true;
                }
                self.finish(op.id, Some(format!("gave up after {n} attempts: {why}"))).await
            }
        };
        if let Err(e) = outcome {
            tracing::info!(op = op.id, error = %e, "recording the operation's end failed; it runs again");
            return true;
        }
        false
    }
}

/// The pending operations to drive now: the first one, and with it, when
/// its submission allows more than one at a time (`parallel`), the next
/// ones of the same submission on other shards, up to that many. An
/// operation on no single shard (a replication factor change) runs alone,
/// after everything before it; operations on one shard run in order.
pub fn runnable(ops: &[Operation]) -> Vec<Operation> {
    let mut pending = ops.iter().filter(|o| pending(o));
    let Some(first) = pending.next() else { return vec![] };
    let limit = first.parallel.max(1) as usize;
    let mut out = vec![first.clone()];
    let Some(s) = shard_of(first) else { return out };
    let mut shards = vec![s];
    let mut last_id = first.id;
    for op in pending {
        if out.len() >= limit || op.batch != first.batch || op.id != last_id + 1 {
            break;
        }
        last_id = op.id;
        let Some(s) = shard_of(op) else { break };
        if !shards.contains(&s) {
            out.push(op.clone());
        }
        shards.push(s);
    }
    out
}

/// A follower at most this many entries behind its leader counts as
/// caught up for readiness (one snapshot interval).
pub const READY_LAG: u64 = crate::raft::SNAPSHOT_EVERY;

impl Engine {
    /// Whether this node is caught up and serving; `Err` says why not.
    /// Asks each hosted replica's leader how far behind it is.
    pub async fn readiness(&self) -> std::result::Result<(), String> {
        if !self.in_cluster() {
            return Err("not in a cluster yet".into());
        }
        let me = self.cfg.node_id;
        let map = self.cluster_map();
        if !map.nodes.iter().any(|n| n.id == me) {
            return Err("not in the cluster map yet".into());
        }
        for c in &map.collections {
            let Some(name) = c.config.as_ref().map(|x| x.name.as_str()) else {
                continue;
            };
            // A child being split off is not served yet.
            for s in c.shards.iter().filter(|s| s.replicas.contains(&me) && !s.splitting) {
                let r = match self.replica(name, s.shard_id, 0) {
                    // Reported in status and metrics; the node serves the
                    // rest, and a rolling restart must not wait on it.
                    Err(NodeError::Quarantined { .. }) => continue,
                    r => r.map_err(|e| e.to_string())?,
                };
                let m = r.raft.metrics().borrow().clone();
                let Some(leader) = m.current_leader else {
                    return Err(format!("{} has no leader", r.group));
                };
                if leader == me {
                    // openraft 0.9 leaders do not step down without a
                    // quorum: look at when a quorum last acknowledged.
                    let stale = m.millis_since_quorum_ack.is_none_or(|ms| ms > 2 * self.raft_config.election_timeout_max);
                    let alone = m.membership_config.membership().voter_ids().count() == 1;
                    if stale && !alone {
                        return Err(format!("{} leads without a quorum (last acknowledged {:?} ms ago)", r.group, m.millis_since_quorum_ack));
                    }
                    continue;
                }
                // One quick question to the leader this replica follows.
                let addr = self.peers.address(leader).ok_or_else(|| format!("{}: leader node {leader} has no known address", r.group))?;
                let ch = self.peers.channel(&addr).map_err(|e| e.to_string())?;
                let req = ShardMembersRequest { shard: Some(ShardRef { collection: name.to_string(), shard_id: s.shard_id, epoch: 0 }), action: Some(Action::Status(true)) };
                let st = match tokio::time::timeout(Duration::from_secs(2), MetaClient::new(ch).shard_members(req)).await {
                    Ok(Ok(st)) => st.into_inner(),
                    Ok(Err(e)) => return Err(format!("{}: leader node {leader}: {}", r.group, e.message())),
                    Err(_) => return Err(format!("{}: leader node {leader} did not answer within 2 s", r.group)),
                };
                let behind = st.last_index.saturating_sub(st.matched.get(&me).copied().unwrap_or(0));
                if behind > READY_LAG {
                    return Err(format!("{} is {behind} entries behind its leader", r.group));
                }
            }
        }
        Ok(())
    }

    /// Hands each shard leadership held here to the voter with the highest
    /// matched index, all shards at once; returns (moved, failed).
    pub async fn hand_off(&self) -> (Vec<String>, Vec<String>) {
        let me = self.cfg.node_id;
        let led: Vec<Replica> = self.shards.read().values().filter(|r| r.raft.metrics().borrow().current_leader == Some(me)).cloned().collect();
        let jobs = led.into_iter().map(|r| async move {
            let st = self.members_status(&r);
            let target = st.voters.iter().filter(|v| **v != me).max_by_key(|v| (st.matched.get(v).copied().unwrap_or(0), std::cmp::Reverse(**v))).copied();
            match target {
                None => Err(format!("{}: no other voter", r.group)),
                Some(to) => self.transfer_leader(&r, to).await.map(|()| format!("{} -> node {to}", r.group)).map_err(|e| format!("{}: {e}", r.group)),
            }
        });
        let mut moved = vec![];
        let mut failed = vec![];
        for res in futures::future::join_all(jobs).await {
            match res {
                Ok(m) => moved.push(m),
                Err(f) => failed.push(f),
            }
        }
        // The metadata group last: the shard transfers above may need it.
        if self.is_meta_leader() {
            match self.transfer_meta().await {
                Ok(to) => moved.push(format!("meta -> node {to}")),
                Err(e) => failed.push(format!("meta: {e}")),
            }
        }
        (moved, failed)
    }

    /// Hands the metadata group's leadership to its most caught-up other
    /// voter, as [`Engine::transfer_leader`] does for a shard: this node's
    /// metadata changes wait, heartbeats stop, the target catches up, and
    /// once the followers' lease has run out it stands for election.
    async fn transfer_meta(&self) -> Result<u64> {
        let me = self.cfg.node_id;
        let m = self.meta_raft.metrics().borrow().clone();
        let matched = |id: &u64| m.replication.as_ref().and_then(|r| r.get(id).copied().flatten()).map_or(0, |l| l.index);
        let to = m
            .membership_config
            .membership()
            .voter_ids()
            .filter(|v| *v != me)
            .max_by_key(|v| (matched(v), std::cmp::Reverse(*v)))
            .ok_or_else(|| NodeError::Precondition("no other metadata voter".into()))?;
        let addr = self.peers.address(to).ok_or_else(|| NodeError::Precondition(format!("node {to} has no known address")))?;
        // A node of another version may not know `stand_for_meta` (an
        // older one would take it for a full hand-off of its own): during
        // a rolling upgrade the metadata group fails over by election.
        let channel = self.peers.channel(&addr).map_err(|e| NodeError::Raft(format!("bad address {addr:?} of node {to}: {e}")))?;
        let theirs = MetaClient::new(channel.clone()).node_status(NodeStatusRequest {}).await.map_err(|s| NodeError::Raft(format!("node {to}: {}", s.message())))?.into_inner().version;
        if theirs != env!("CARGO_PKG_VERSION") {
            return Err(NodeError::Precondition(format!("node {to} runs version {theirs}, this node {}; the metadata group will elect a leader instead", env!("CARGO_PKG_VERSION"))));
        }
        let _w = self.meta_write.lock().await;
        self.hand_over(&self.meta_raft, META_GROUP, to, &addr, |mut c| async move { c.hand_off(HandOffRequest { stand_for_meta: true }).await.map(drop) }).await?;
        Ok(to)
    }

    /// Asked by a metadata leader handing over: stand for election now.
    pub async fn stand_for_meta(&self) -> Result<()> {
        if self.catch_up.is_held(META_GROUP) {
            return Err(NodeError::CatchingUp(META_GROUP.into()));
        }
        self.meta_raft.trigger().elect().await.map_err(|e| NodeError::Raft(e.to_string()))
    }
}

/// The shard an operation works on, if any.
fn shard_of(op: &Operation) -> Option<(&str, u32)> {
    match &op.kind {
        Some(Kind::Move(m)) => Some((m.collection.as_str(), m.shard_id)),
        Some(Kind::Transfer(t)) => Some((t.collection.as_str(), t.shard_id)),
        Some(Kind::Split(s)) => Some((s.collection.as_str(), s.shard_id)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runnable_respects_parallel_shards_and_barriers() {
        let mv = |id, shard, parallel| Operation {
            id,
            kind: Some(Kind::Move(MoveReplica { collection: "c".into(), shard_id: shard, from_node: 1, to_node: 2 })),
            state: OperationState::Pending as i32,
            parallel,
            batch: "b".into(),
            ..Default::default()
        };
        let ids = |ops: &[Operation]| runnable(ops).iter().map(|o| o.id).collect::<Vec<_>>();
        // One at a time unless the submission allows more.
        assert_eq!(ids(&[mv(1, 0, 0), mv(2, 1, 0)]), vec![1]);
        assert_eq!(ids(&[mv(1, 0, 3), mv(2, 1, 3), mv(3, 2, 3), mv(4, 3, 3)]), vec![1, 2, 3]);
        // A second step on a shard waits for the first; later shards may go.
        assert_eq!(ids(&[mv(1, 0, 3), mv(2, 0, 3), mv(3, 1, 3)]), vec![1, 3]);
        // Finished ones are skipped; another submission waits its turn.
        let mut done = mv(1, 0, 2);
        done.state = OperationState::Done as i32;
        let mut other = mv(4, 5, 2);
        other.batch = "x".into();
        assert_eq!(ids(&[done, mv(2, 1, 2), mv(3, 2, 2), other]), vec![2, 3]);
        // An operation on no shard is a barrier.
        let rf = Operation { id: 3, kind: Some(Kind::SetReplication(SetReplication { collection: "c".into(), replication_factor: 2 })), state: OperationState::Pending as i32, parallel: 4, batch: "b".into(), ..Default::default() };
        assert_eq!(ids(&[mv(1, 0, 4), mv(2, 1, 4), rf.clone(), mv(4, 2, 4)]), vec![1, 2]);
        assert_eq!(ids(&[rf, mv(4, 2, 4)]), vec![3]);
    }

    #[test]
    fn next_voters_is_idempotent_and_keeps_the_position() {
        assert_eq!(next_voters(&[1, 2, 3], 1, 4), vec![4, 2, 3], "the target takes the source's place");
        assert_eq!(next_voters(&[4, 2, 3], 1, 4), vec![4, 2, 3], "done already");
        assert_eq!(next_voters(&[1, 2], 0, 3), vec![1, 2, 3], "add a replica");
        assert_eq!(next_voters(&[1, 2, 3], 2, 0), vec![1, 3], "remove a replica");
        assert_eq!(next_voters(&[1, 3], 2, 0), vec![1, 3]);
        assert_eq!(next_voters(&[1, 2, 4], 1, 4), vec![2, 4], "target already a voter: the source just leaves");
    }

    #[test]
    fn submitted_operations_are_checked_against_the_map() {
        let placement = ShardPlacement { shard_id: 0, replicas: vec![1, 2], ..Default::default() };
        let map = ClusterMap {
            nodes: (1..=3).map(|id| NodeEntry { id, address: format!("n{id}:1"), ..Default::default() }).collect(),
            collections: vec![CollectionEntry { config: Some(shoal_proto::v1::CollectionConfig { name: "c".into(), ..Default::default() }), shards: vec![placement], uid: 1, ..Default::default() }],
            ..Default::default()
        };
        let mv = |from, to| Operation { kind: Some(Kind::Move(MoveReplica { collection: "c".into(), shard_id: 0, from_node: from, to_node: to })), ..Default::default() };
        assert!(validate(&map, &mv(1, 3)).is_ok());
        assert!(validate(&map, &mv(0, 3)).is_ok());
        assert!(validate(&map, &mv(2, 0)).is_ok());
        for (op, why) in [(mv(0, 0), "source, a target"), (mv(3, 1), "holds no replica"), (mv(1, 9), "not in the cluster"), (mv(1, 2), "already holds"), (mv(1, 1), "both node 1")] {
            let e = validate(&map, &op).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
        let lone = ClusterMap { collections: vec![CollectionEntry { shards: vec![ShardPlacement { replicas: vec![1], ..Default::default() }], ..map.collections[0].clone() }], ..map.clone() };
        assert!(matches!(validate(&lone, &mv(1, 0)), Err(NodeError::Precondition(_))), "the last replica stays");
        let other = Operation { kind: Some(Kind::Move(MoveReplica { collection: "nope".into(), ..Default::default() })), ..Default::default() };
        assert!(matches!(validate(&map, &other), Err(NodeError::CollectionNotFound(_))));
        let rf = |n| Operation { kind: Some(Kind::SetReplication(SetReplication { collection: "c".into(), replication_factor: n })), ..Default::default() };
        assert!(validate(&map, &rf(3)).is_ok());
        assert!(validate(&map, &rf(4)).is_err() && validate(&map, &rf(0)).is_err());
    }
}
