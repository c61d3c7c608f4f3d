//! Group commit for one shard group: writes that arrive while earlier ones
//! are being committed are merged into one log entry
//! (`ShardWriteRequest.batch`), so concurrent writers share a log fsync
//! and a replication round instead of paying one each. openraft 0.9 on its
//! own appends (and fsyncs) every proposal separately.
//!
//! One task per replica drains the queue. Up to [`IN_FLIGHT`] entries are
//! being committed at once; while all are busy, new writes wait in the
//! queue and the next entry takes as many as fit ([`MAX_WRITES`],
//! [`MAX_BYTES`]). A lone write is proposed as itself. Each writer gets its
//! own outcome back: points affected, or why the shard rejected its part.
use std::sync::Arc;

use openraft::Raft;
use prost::Message;
use shoal_proto::internal::v1::ShardWriteRequest;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::{Command, TypeConfig};
use crate::engine::propose;
use crate::error::NodeError;

/// Entries of one group being committed at once.
pub const IN_FLIGHT: usize = 4;
/// Writes merged into one entry, at most.
pub const MAX_WRITES: usize = 256;
/// Encoded size of one merged entry, at most (a single larger write is
/// still proposed alone).
pub const MAX_BYTES: usize = 4 << 20;

/// Points affected and the shard's rejection, if any, of one write.
pub type Outcome = (u64, Option<String>);

struct Job {
    req: ShardWriteRequest,
    bytes: usize,
    reply: oneshot::Sender<Result<Outcome, NodeError>>,
}

/// The write queue of one shard replica. Cheap to clone.
#[derive(Clone)]
pub struct WriteQueue {
    tx: mpsc::Sender<Job>,
}

/// The error every writer of a failed entry gets (the leader hint kept).
fn shared(e: &NodeError) -> NodeError {
    match e {
        NodeError::NotLeader { group, leader } => NodeError::NotLeader { group: group.clone(), leader: leader.clone() },
        NodeError::NoQuorum { group, detail } => NodeError::NoQuorum { group: group.clone(), detail: detail.clone() },
        NodeError::ShuttingDown => NodeError::ShuttingDown,
        e => NodeError::Raft(e.to_string()),
    }
}

async fn commit(raft: Raft<TypeConfig>, group: String, mut jobs: Vec<Job>) {
    // A lone write is proposed as itself; several become one group entry.
    // Either way the (possibly megabytes) encoding runs off the workers.
    let (req, replies): (ShardWriteRequest, Vec<_>) = if jobs.len() == 1 {
        let job = jobs.pop().expect("one job");
        (job.req, vec![job.reply])
    } else {
        let (reqs, replies): (Vec<ShardWriteRequest>, Vec<_>) = jobs.into_iter().map(|j| (j.req, j.reply)).unzip();
        (ShardWriteRequest { batch: reqs, ..Default::default() }, replies)
    };
    let grouped = !req.batch.is_empty();
    let n = replies.len();
    let res = match tokio::task::spawn_blocking(move || req.encode_to_vec()).await {
        Ok(write) => propose(&raft, &group, Command { write }).await,
        Err(e) => Err(NodeError::Raft(format!("encoding a write failed: {e}"))),
    };
    match res {
        Ok(r) if !grouped => {
            let _ = replies.into_iter().next().expect("one reply").send(Ok((r.affected, r.error)));
        }
        Ok(r) if r.parts.len() == n => {
            for (reply, part) in replies.into_iter().zip(r.parts) {
                let _ = reply.send(Ok(part));
            }
        }
        Ok(r) => {
            let why = r.error.unwrap_or_else(|| format!("a group of {n} writes came back with {} outcomes", r.parts.len()));
            for reply in replies {
                let _ = reply.send(Err(NodeError::Rejected(why.clone())));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(shared(&e)));
            }
        }
    }
}

impl WriteQueue {
    /// Starts the queue's task on `rt`; it ends when the last clone drops.
    pub fn start(rt: &tokio::runtime::Handle, raft: Raft<TypeConfig>, group: String) -> Self {
        let (tx, mut rx) = mpsc::channel::<Job>(4 * MAX_WRITES);
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        rt.spawn(async move {
            // A write taken off the queue that did not fit the last entry.
            let mut held: Option<Job> = None;
            loop {
                let first = match held.take() {
                    Some(j) => j,
                    None => match rx.recv().await {
                        Some(j) => j,
                        None => break,
                    },
                };
                // Wait for a free slot first: writes queue up meanwhile and
                // join this entry.
                let Ok(slot) = slots.clone().acquire_owned().await else { break };
                let mut bytes = first.bytes;
                let mut jobs = vec![first];
                // An entry never grows past MAX_BYTES by merging: only a
                // lone write may be larger (up to MAX_WRITE_BYTES).
                while jobs.len() < MAX_WRITES {
                    match rx.try_recv() {
                        Ok(j) if bytes + j.bytes <= MAX_BYTES => {
                            bytes += j.bytes;
                            jobs.push(j);
                        }
                        Ok(j) => {
                            held = Some(j);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let (raft, group) = (raft.clone(), group.clone());
                tokio::spawn(async move {
                    commit(raft, group, jobs).await;
                    drop(slot);
                });
            }
        });
        WriteQueue { tx }
    }

    /// Queues a validated write and waits until it is committed and
    /// applied here.
    pub async fn submit(&self, req: ShardWriteRequest) -> Result<Outcome, NodeError> {
        let (reply, rx) = oneshot::channel();
        let bytes = req.encoded_len();
        self.tx.send(Job { req, bytes, reply }).await.map_err(|_| NodeError::ShuttingDown)?;
        rx.await.map_err(|_| NodeError::ShuttingDown)?
    }
}
