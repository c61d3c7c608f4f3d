//! Replicas that lost their data: no vote until every committed entry is
//! back.
//!
//! Raft assumes a voter's vote and log survive a restart. A node that comes
//! back with an emptied data directory under its old id (a lost disk, a
//! pod rescheduled onto a fresh volume) breaks that assumption in every
//! group that existed before: with an empty log it grants its vote to any
//! candidate, so in a double fault (this node plus the leader) a follower
//! that misses committed entries can win an election and overwrite them
//! when the old leader returns.
//!
//! Such a replica is *catching up*: it does not vote and does not stand for
//! election (the election timer, [`super::election`], skips it), so it
//! counts for nothing in a quorum, as a learner would, while it receives the log as a follower.
//! It goes back to voting once it has applied the commit index of a leader
//! that has committed an entry of its own term: by Raft's leader
//! completeness that leader holds every entry committed before this node
//! lost its data, and each of those entries lies at or below that index.
//! The set is kept on disk, so a restart during the catch-up keeps it.
//!
//! The target is taken only from appends the replica accepted, with the
//! leader's vote; a later leader (a higher vote) replaces it, and the hold
//! lifts only while the replica still follows the leader the target came
//! from.
//!
//! One exception: in a group of two voters the replica votes at once.
//! There every committed entry is on both voters, so the other one, the
//! only possible candidate, holds them all; refusing would leave a group
//! whose leader lost its disk without a leader for good. (In general the
//! vote of a replica that lost its data is safe only when the intact votes
//! alone reach every majority, which with n voters and a quorum of q needs
//! n - q + 1 intact votes: one for n = 2, and then the candidate's own.)
//!
//! What this does not cover: a leader of an older term that has not heard
//! of a newer one still counts the emptied node's acknowledgements (the
//! node forgot which term it had seen). That needs a partition at the same
//! moment as the lost disk; per-incarnation member ids would close it
//! (docs/raft.md).
use std::collections::HashMap;
use std::sync::Arc;

use openraft::{LogId, Raft, Vote};
use parking_lot::Mutex;

use super::{NodeId, TypeConfig};
use crate::error::{Result, StorageError};
use crate::storage::{shard_store, KvEngine};

/// Node-meta key of the persisted set (postcard `Vec<String>`).
const KEY: &str = "catching-up";

/// The commit index a held replica must apply, and the vote of the leader
/// that sent it.
type Target = Option<(Vote<NodeId>, u64)>;

/// The groups on this node that are catching up, each with the commit
/// index it must apply first (once a leader has told it).
#[derive(Clone)]
pub struct CatchUp {
    groups: Arc<Mutex<HashMap<String, Target>>>,
    /// Voters of each held group as the node's map places them (0 or
    /// absent: not known yet).
    voters: Arc<Mutex<HashMap<String, usize>>>,
    kv: Arc<dyn KvEngine>,
}

impl CatchUp {
    /// Loads the persisted set.
    pub fn load(kv: Arc<dyn KvEngine>) -> Result<Self> {
        let mut groups = HashMap::new();
        if let Some(b) = shard_store::node_meta_get(&*kv, KEY)? {
            let names: Vec<String> = postcard::from_bytes(&b).map_err(|e| StorageError::Corrupt { what: "catch-up set", detail: e.to_string() })?;
            groups.extend(names.into_iter().map(|n| (n, None)));
        }
        Ok(CatchUp { groups: Arc::new(Mutex::new(groups)), voters: Arc::default(), kv })
    }

    fn persist(&self, groups: &HashMap<String, Target>) -> Result<()> {
        let mut names: Vec<&String> = groups.keys().collect();
        names.sort();
        let bytes = postcard::to_stdvec(&names).map_err(|e| StorageError::Corrupt { what: "catch-up set", detail: e.to_string() })?;
        shard_store::node_meta_put(&*self.kv, KEY, bytes)?;
        Ok(())
    }

    /// Marks `group` as catching up, durably, before its Raft exists, so
    /// it never stands for election before it has caught up.
    /// `why` goes to the log.
    pub fn hold(&self, group: &str, why: &str) -> Result<()> {
        let mut g = self.groups.lock();
        if !g.contains_key(group) {
            g.insert(group.to_string(), None);
            self.persist(&g)?;
            tracing::info!(group, "{why}: the replica does not vote until it holds every committed entry");
        }
        Ok(())
    }

    pub fn is_held(&self, group: &str) -> bool {
        self.groups.lock().contains_key(group)
    }

    /// Records how many voters `group` has (from the cluster map). While
    /// the group is held the count only grows: a map being replayed may
    /// show an older, smaller group.
    pub fn set_voters(&self, group: &str, n: usize) {
        let held = self.is_held(group);
        let mut v = self.voters.lock();
        let e = v.entry(group.to_string()).or_insert(n);
        *e = if held { (*e).max(n) } else { n };
    }

    /// Whether `group`'s replica must refuse a vote now: it is held, and
    /// neither the map nor its own membership (every joint half) is known
    /// to have at most two voters.
    pub fn refuses_votes(&self, group: &str, raft: &Raft<TypeConfig>) -> bool {
        if !self.is_held(group) {
            return false;
        }
        let local: std::collections::BTreeSet<NodeId> = raft.metrics().borrow().membership_config.membership().get_joint_config().iter().flatten().copied().collect();
        let mapped = self.voters.lock().get(group).copied().unwrap_or(0);
        !(matches!(mapped, 1..=2) && local.len() <= 2)
    }

    /// The groups held now.
    pub fn held(&self) -> Vec<String> {
        let mut v: Vec<String> = self.groups.lock().keys().cloned().collect();
        v.sort();
        v
    }

    /// Forgets `group` without voting again (its replica left the node).
    pub fn forget(&self, group: &str) -> Result<()> {
        let mut g = self.groups.lock();
        if g.remove(group).is_some() {
            self.persist(&g)?;
        }
        Ok(())
    }

    /// Notes the catch-up target of an AppendEntries the replica accepted:
    /// the leader's commit index, once the leader has committed an entry
    /// of its own term (before that its commit index may lie below
    /// entries its predecessor committed). A higher vote replaces it.
    pub fn observe(&self, group: &str, vote: Vote<NodeId>, leader_commit: Option<LogId<NodeId>>) {
        let mut g = self.groups.lock();
        let Some(target) = g.get_mut(group) else { return };
        if !vote.committed || target.is_some_and(|(v, _)| v >= vote) {
            return;
        }
        if let Some(c) = leader_commit.filter(|c| c.leader_id.term == vote.leader_id.term) {
            tracing::info!(group, target = c.index, term = vote.leader_id.term, "catching up to the leader's commit index");
            *target = Some((vote, c.index));
        }
    }

    /// Lets `group` vote again once it has applied its target. True when
    /// it did now.
    pub fn check(&self, group: &str, raft: &Raft<TypeConfig>) -> bool {
        let (applied, vote) = {
            let m = raft.metrics().borrow().clone();
            (m.last_applied.map_or(0, |l| l.index), m.vote)
        };
        let mut g = self.groups.lock();
        match g.get(group) {
            Some(Some((v, target))) if applied >= *target && *v == vote => {}
            _ => return false,
        }
        let kept = g.remove(group).flatten();
        let target = kept.map_or(0, |t| t.1);
        if let Err(e) = self.persist(&g) {
            // Keep holding: a node that cannot write its state must not
            // start voting on an assumption it cannot keep.
            g.insert(group.to_string(), kept);
            tracing::error!(group, error = %e, "could not record the end of a catch-up; still not voting");
            return false;
        }
        drop(g);
        tracing::info!(group, applied, target, "replica caught up after losing its data: voting again");
        true
    }
}
