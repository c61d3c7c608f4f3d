//! The shard split driver (docs/operations.md, "Shard split").
//!
//! A split operation runs on the metadata leader like the other
//! operations ([`super::ops`]), in steps that each check first whether
//! they are done, so a new leader resumes it:
//! 1. **prepare** (map): the child is placed on the parent's replicas as
//!    `splitting`, not routed; the operation records the child's id and
//!    the split point.
//! 2. **split** (parent's log): every parent replica copies the upper
//!    range into the child and freezes it ([`crate::shard::split`]); the
//!    child's group elects a leader.
//! 3. **commit** (map): the parent's range ends below the child's and the
//!    child is routed. Coordinators re-route what they had in flight
//!    (`FAILED_PRECONDITION` with the stale-epoch key).
//! 4. **finish** (parent's log): the frozen copies go, and writes routed
//!    with a map older than the commit are refused.
use std::time::{Duration, Instant};

use shoal_proto::internal::v1::operation::Kind;
use shoal_proto::internal::v1::shard_members_request::Action;
use shoal_proto::internal::v1::{shard_control, FinishSplitControl, ShardControl, SplitControl, SplitShard};

use super::ops::StepError;
use super::Engine;
use crate::raft::meta::MetaCommand;

/// How long the child group may take to elect its first leader.
const CHILD_LEADER_WAIT: Duration = Duration::from_secs(60);

/// The split point of `[start, end]` when none is given: its middle.
pub fn middle(start: u64, end: u64) -> u64 {
    start + (end - start) / 2 + 1
}

impl Engine {
    pub(super) async fn drive_split(&self, id: u64, sp: &SplitShard) -> Result<(), StepError> {
        let (c, parent) = (sp.collection.as_str(), sp.shard_id);
        let (uid, p) = self.placement(c, parent).ok_or_else(|| StepError::Fatal(format!("{c}/{parent} no longer exists")))?;
        // 1. Prepare: choose the child once, record it in the operation.
        // The record is read again under the metadata write lock: a
        // previous driver may have chosen since this one read the map.
        let (child, mid) = {
            let _w = self.meta_write.lock().await;
            let recorded = self.meta_sm.with_map(|m| {
                m.operations.iter().find(|o| o.id == id).and_then(|o| match &o.kind {
                    Some(Kind::Split(s)) if s.child_shard_id != 0 => Some((s.child_shard_id, s.mid)),
                    _ => None,
                })
            });
            match recorded {
                Some(r) => r,
                None => {
                    self.note(id, 0, 4, "placing the new shard");
                    let mid = if sp.mid == 0 { middle(p.range_start, p.range_end) } else { sp.mid };
                    // Chosen under the metadata write lock: splits running
                    // at once (`--parallel`) get distinct ids.
                    let child = self
                        .meta_sm
                        .with_map(|m| m.collections.iter().find(|x| x.uid == uid).map(|x| x.shards.iter().map(|s| s.shard_id).max().unwrap_or(0) + 1))
                        .ok_or_else(|| StepError::Fatal(format!("collection {c:?} no longer exists")))?;
                    let reply = self.propose_meta(MetaCommand::PrepareSplit { op: id, collection: c.to_string(), uid, parent, child, mid }).await?;
                    if let Some(e) = reply.error {
                        return Err(StepError::Fatal(format!("{c}/{parent}: {e}")));
                    }
                    (child, mid)
                }
            }
        };
        let (_, child_p) = self.placement(c, child).ok_or_else(|| StepError::Fatal(format!("{c}/{child} vanished from the map during its split")))?;
        if child_p.splitting {
            // 2. Split through the parent's log (idempotent).
            self.note(id, 1, 4, &format!("copying the upper range into shard {child}"));
            let (_, p) = self.placement(c, parent).ok_or_else(|| StepError::Fatal(format!("{c}/{parent} no longer exists")))?;
            let split = SplitControl { range_start: p.range_start, range_end: p.range_end, mid, child_shard_id: child, uid };
            let ctl = ShardControl { op: Some(shard_control::Op::Split(split)) };
            self.call_shard_leader(c, parent, Action::Control(ctl)).await?;
            // The child's group elects among the replicas that created it.
            self.note(id, 2, 4, &format!("waiting for shard {child} to elect a leader"));
            let deadline = Instant::now() + CHILD_LEADER_WAIT;
            loop {
                match self.call_shard_leader(c, child, Action::Status(true)).await {
                    Ok(st) if st.leader != 0 => break,
                    Ok(_) => {}
                    Err(StepError::Fatal(e)) => return Err(StepError::Fatal(e)),
                    Err(StepError::Retry(e)) if Instant::now() > deadline => return Err(StepError::Retry(e)),
                    Err(StepError::Retry(_)) => {}
                }
                if Instant::now() > deadline {
                    return Err(StepError::Retry(format!("shard {child} elected no leader within {CHILD_LEADER_WAIT:?}")));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            // 3. Commit: route the upper range to the child.
            self.note(id, 3, 4, "routing the upper range to the new shard");
            let _w = self.meta_write.lock().await;
            let reply = self.propose_meta(MetaCommand::CommitSplit { collection: c.to_string(), uid, parent, child }).await?;
            if let Some(e) = reply.error {
                return Err(StepError::Fatal(format!("{c}/{parent}: {e}")));
            }
        }
        // 4. Finish: the parent drops its frozen copies; writes routed
        //    before the commit are refused from now on.
        self.note(id, 4, 4, "dropping the parent's copies");
        let min_epoch = self.cluster_map().epoch;
        let ctl = ShardControl { op: Some(shard_control::Op::Finish(FinishSplitControl { min_epoch })) };
        self.call_shard_leader(c, parent, Action::Control(ctl)).await?;
        tracing::info!(op = id, collection = c, parent, child, mid = format!("{mid:#x}"), "shard split");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn middle_halves_the_range() {
        assert_eq!(middle(0, u64::MAX), 1 << 63);
        assert_eq!(middle(0, 1), 1);
        assert_eq!(middle(10, 13), 12);
        // Both halves are non-empty whenever the range has two hashes.
        for (a, b) in [(0u64, 1u64), (5, 6), (0, u64::MAX), (u64::MAX - 1, u64::MAX)] {
            let m = middle(a, b);
            assert!(m > a && m <= b);
        }
    }
}
