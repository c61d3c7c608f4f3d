//! Elections with a pre-vote, run by Shoal (openraft 0.9 has none).
//!
//! Without a pre-vote, a replica that stops hearing its leader raises its
//! term at once and asks for votes. A replica with a stale log (one that
//! just restarted, or sits behind a one-way partition) cannot win, but the
//! higher term it leaves behind deposes a healthy leader or makes the next
//! real candidate lose a round: the slow failovers measured in
//! docs/benchmarks.md were such rounds.
//!
//! So every group runs with openraft's own election timer off
//! (`enable_elect = false`, [`super::config_with`]) and [`Elections`] keeps
//! the timer instead:
//! - The Raft server records each message from a leader it accepts
//!   ([`Elections::contact`]), and each vote it grants.
//! - A ticker checks every group. A follower that has heard no leader for
//!   its timeout (drawn at random between the leader lease plus two
//!   heartbeats and twice the lease, anew after every contact; a leader
//!   handing over waits out one lease, so the target stands first) asks the
//!   other voters a `PreVote`: would you vote for me now? A replica says
//!   yes only if it is not the leader, has heard no leader within the
//!   lease, and the candidate's last log id is at least its own. It changes
//!   no state to answer.
//! - Only with a yes from a majority of every voter set (joint
//!   configurations included, the candidate's own yes counted) does the
//!   candidate raise its term: `trigger().elect()`.
//!
//! The lease is openraft's (`election_timeout_max`): openraft refuses a
//! real vote while its own lease on a leader holds, so a pre-vote grant
//! never comes before the real vote would be granted. A group whose only
//! voter is this node elects at once, as openraft would. A replica that is
//! catching up after losing its data ([`super::rejoin`]) does not stand
//! and answers no.
//!
//! Who may call `PreVote`: any peer on the internal plane. The worst
//! request costs one read of the group's last log entry and changes
//! nothing.
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::{LogId, Raft, ServerState};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::network::{Groups, Peers};
use super::rejoin::CatchUp;
use super::{NodeId, TypeConfig};

/// How often the ticker looks at every group.
const TICK: Duration = Duration::from_millis(20);

/// `PreVote` body: the candidate and its last log id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreVoteRequest {
    pub candidate: NodeId,
    pub last_log_id: Option<LogId<NodeId>>,
}

/// `PreVote` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreVoteResponse {
    pub granted: bool,
}

/// Election timing of one node, from its openraft configuration.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// No pre-vote is granted while a leader was heard within this.
    pub lease: Duration,
    /// A follower's timeout is drawn from `[min, max]`.
    pub min: Duration,
    pub max: Duration,
}

impl Timing {
    pub fn of(config: &openraft::Config) -> Self {
        let lease = Duration::from_millis(config.election_timeout_max);
        Timing { lease, min: lease + Duration::from_millis(2 * config.heartbeat_interval), max: lease * 2 }
    }

    fn draw(&self) -> Duration {
        let (lo, hi) = (self.min.as_millis() as u64, self.max.as_millis().max(self.min.as_millis() + 1) as u64);
        Duration::from_millis(rand::random_range(lo..hi))
    }
}

struct Timer {
    /// Last message accepted from a leader.
    contact: Option<Instant>,
    /// When the follower may next stand.
    due: Instant,
    /// A pre-vote round is out.
    campaigning: bool,
    /// Bumped by every contact and every granted vote: a round whose
    /// count moved meanwhile does not stand (someone else is leading or
    /// standing).
    events: u64,
}

/// The election timers of every group on a node. Cheap to clone.
#[derive(Clone)]
pub struct Elections {
    me: NodeId,
    timing: Timing,
    timers: Arc<Mutex<HashMap<String, Timer>>>,
    /// Pre-vote rounds started and elections triggered (status, tests).
    rounds: Arc<std::sync::atomic::AtomicU64>,
    elections: Arc<std::sync::atomic::AtomicU64>,
}

impl Elections {
    pub fn new(me: NodeId, config: &openraft::Config) -> Self {
        Elections { me, timing: Timing::of(config), timers: Arc::default(), rounds: Arc::default(), elections: Arc::default() }
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// Pre-vote rounds this node started, and how many won (each then
    /// raised its term).
    pub fn counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.rounds.load(Relaxed), self.elections.load(Relaxed))
    }

    fn timer<'a>(&self, timers: &'a mut HashMap<String, Timer>, group: &str, now: Instant) -> &'a mut Timer {
        if !timers.contains_key(group) {
            timers.insert(group.to_string(), Timer { contact: None, due: now + self.timing.draw(), campaigning: false, events: 0 });
        }
        timers.get_mut(group).expect("inserted above")
    }

    /// `group` accepted a message from its leader: the lease starts again
    /// and the timer is drawn anew.
    pub fn contact(&self, group: &str) {
        let now = Instant::now();
        let mut t = self.timers.lock();
        let timer = self.timer(&mut t, group, now);
        timer.contact = Some(now);
        timer.due = now + self.timing.draw();
        timer.events += 1;
    }

    /// `group` granted a vote, or leads: its timer is drawn anew.
    pub fn postpone(&self, group: &str) {
        let now = Instant::now();
        let mut t = self.timers.lock();
        let timer = self.timer(&mut t, group, now);
        timer.due = now + self.timing.draw();
        timer.events += 1;
    }

    fn events(&self, group: &str) -> u64 {
        self.timers.lock().get(group).map_or(0, |t| t.events)
    }

    /// Whether `group` heard a leader within the lease.
    fn leader_heard(&self, group: &str) -> bool {
        self.timers.lock().get(group).and_then(|t| t.contact).is_some_and(|c| c.elapsed() < self.timing.lease)
    }

    /// Starts a round for `group` if its timer has run out (or at once
    /// when `now_due`) and none is out.
    fn take_due(&self, group: &str, now_due: bool) -> bool {
        let now = Instant::now();
        let mut t = self.timers.lock();
        let timing = self.timing;
        let timer = self.timer(&mut t, group, now);
        if timer.campaigning || (!now_due && now < timer.due) {
            return false;
        }
        timer.campaigning = true;
        timer.due = now + timing.draw();
        true
    }

    fn round_over(&self, group: &str) {
        if let Some(t) = self.timers.lock().get_mut(group) {
            t.campaigning = false;
        }
    }

    /// The answer to a `PreVote` for `group`, whose replica here is `raft`
    /// with last log id `mine`. `held`: the replica is catching up and
    /// does not vote.
    pub fn answer(&self, group: &str, raft: &Raft<TypeConfig>, mine: Option<LogId<NodeId>>, req: &PreVoteRequest, held: bool) -> PreVoteResponse {
        let leads = raft.metrics().borrow().state == ServerState::Leader;
        let granted = !held && !leads && !self.leader_heard(group) && req.last_log_id >= mine;
        tracing::debug!(group, candidate = req.candidate, granted, leads, "pre-vote");
        PreVoteResponse { granted }
    }

    /// Runs the timers of every group in `groups` until the task is
    /// aborted.
    pub fn spawn(&self, groups: Groups, peers: Peers, catch_up: Option<CatchUp>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                this.tick(&groups, &peers, catch_up.as_ref());
            }
        })
    }

    fn tick(&self, groups: &Groups, peers: &Peers, catch_up: Option<&CatchUp>) {
        let all = groups.all();
        let live: HashSet<&str> = all.iter().map(|(g, _)| g.as_str()).collect();
        self.timers.lock().retain(|g, _| live.contains(g.as_str()));
        for (group, raft) in &all {
            let (state, configs) = {
                let m = raft.metrics();
                let m = m.borrow();
                if m.running_state.is_err() {
                    continue;
                }
                (m.state, m.membership_config.membership().get_joint_config().clone())
            };
            if state == ServerState::Leader || catch_up.is_some_and(|c| c.is_held(group)) {
                self.postpone(group);
                continue;
            }
            let voters: BTreeSet<NodeId> = configs.iter().flatten().copied().collect();
            if !voters.contains(&self.me) {
                continue;
            }
            let alone = voters.len() == 1;
            // A lone voter stands at once, but a candidate waits out its
            // timeout: its election may be waiting on the vote's fsync, and
            // standing again would only raise the term again.
            if !self.take_due(group, alone && state != ServerState::Candidate) {
                continue;
            }
            let (this, group, raft, peers) = (self.clone(), group.clone(), raft.clone(), peers.clone());
            let log = groups.log(&group);
            tokio::spawn(async move {
                this.rounds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (events, term) = (this.events(&group), raft.metrics().borrow().current_term);
                let won = alone || this.pre_vote(&group, &raft, log, &peers, &configs).await;
                // Not if a leader spoke, a vote was granted or the term
                // moved while the round was out: another node is ahead.
                let won = won && this.events(&group) == events && raft.metrics().borrow().current_term == term;
                if won {
                    this.elections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!(group, "pre-vote won: standing for election");
                    if let Err(e) = raft.trigger().elect().await {
                        tracing::warn!(group, error = %e, "could not start an election");
                    }
                }
                this.round_over(&group);
            });
        }
    }

    /// Asks every other voter; true once every voter set has a majority of
    /// yes (this node's included).
    async fn pre_vote(&self, group: &str, raft: &Raft<TypeConfig>, log: Option<super::log_store::LogStore>, peers: &Peers, configs: &[BTreeSet<NodeId>]) -> bool {
        let last_log_id = match log.map(|l| l.last_log_id().map_err(|e| e.to_string())) {
            Some(Ok(l)) => l,
            Some(Err(e)) => {
                tracing::warn!(group, error = %e, "pre-vote: cannot read the last log id");
                return false;
            }
            None => return false,
        };
        let req = PreVoteRequest { candidate: self.me, last_log_id };
        let Ok(payload) = postcard::to_stdvec(&req) else { return false };
        let membership = raft.metrics().borrow().membership_config.clone();
        let mut asks = tokio::task::JoinSet::new();
        for id in configs.iter().flatten().copied().collect::<BTreeSet<_>>() {
            if id == self.me {
                continue;
            }
            let Some(addr) = peers.address(id).or_else(|| membership.membership().get_node(&id).map(|n| n.addr.clone())) else { continue };
            let (peers, group, payload, wait) = (peers.clone(), group.to_string(), payload.clone(), self.timing.lease);
            asks.spawn(async move {
                let granted = match peers.pre_vote(&addr, &group, payload, wait).await {
                    Some(Ok(b)) => postcard::from_bytes::<PreVoteResponse>(&b).is_ok_and(|r| r.granted),
                    // A node of a version without pre-votes: let openraft's
                    // real vote decide (it checks everything a pre-vote
                    // does but the lease of a leader it heard).
                    Some(Err(tonic::Code::Unimplemented)) => true,
                    _ => false,
                };
                (id, granted)
            });
        }
        let mut yes = BTreeSet::from([self.me]);
        let quorum = |yes: &BTreeSet<NodeId>| configs.iter().all(|c| c.iter().filter(|n| yes.contains(n)).count() * 2 > c.len());
        while !quorum(&yes) {
            match asks.join_next().await {
                Some(Ok((id, true))) => {
                    yes.insert(id);
                }
                Some(_) => {}
                None => break,
            }
        }
        let won = quorum(&yes);
        tracing::debug!(group, won, yes = ?yes, "pre-vote round");
        won
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_fall_between_the_lease_and_twice_the_lease() {
        let t = Timing::of(&super::super::default_config());
        assert!(t.min > t.lease, "{t:?}");
        for _ in 0..1000 {
            let d = t.draw();
            assert!(d >= t.min && d < t.max, "{d:?} outside {t:?}");
        }
    }

    #[test]
    fn a_round_starts_only_when_due_and_one_at_a_time() {
        let e = Elections::new(1, &super::super::default_config());
        assert!(!e.take_due("g", false), "a new timer is not due at once");
        assert!(e.take_due("g", true), "a lone voter stands at once");
        assert!(!e.take_due("g", true), "one round at a time");
        e.round_over("g");
        e.contact("g");
        assert!(e.leader_heard("g"));
        assert!(!e.take_due("g", false), "contact restarts the timer");
    }
}
