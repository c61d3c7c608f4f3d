//! The one place that maps [`NodeError`] to a gRPC [`Status`].
//!
//! Codes are part of the contract: coordinators act on them (`NOT_FOUND`
//! for a missing collection, `FAILED_PRECONDITION` with a `shoal-stale-epoch`
//! detail to refresh the cluster map, `UNAVAILABLE` to retry elsewhere).
use tonic::{Code, Status};

use crate::error::NodeError;

use shoal_proto::{LEADER_ADDR_KEY, LEADER_ID_KEY, STALE_EPOCH_KEY};

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Self {
        let msg = e.to_string();
        match e {
            NodeError::Invalid(_) => Status::invalid_argument(msg),
            NodeError::CollectionNotFound(_) | NodeError::ShardNotFound { .. } | NodeError::RaftGroupNotFound(_) => Status::not_found(msg),
            NodeError::RaftCodec(_) | NodeError::Rejected(_) => Status::invalid_argument(msg),
            NodeError::NotLeader { leader, .. } => {
                let mut s = Status::unavailable(msg);
                if let Some((id, addr)) = leader {
                    if let (Ok(id), Ok(addr)) = (id.to_string().parse(), addr.parse()) {
                        s.metadata_mut().insert(LEADER_ID_KEY, id);
                        s.metadata_mut().insert(LEADER_ADDR_KEY, addr);
                    }
                }
                s
            }
            NodeError::Raft(_) | NodeError::NoQuorum { .. } | NodeError::MapBehind { .. } | NodeError::ShardOpening { .. } | NodeError::Quarantined { .. } | NodeError::CatchingUp(_) | NodeError::NoCluster => Status::unavailable(msg),
            NodeError::AlreadyInitialized | NodeError::Precondition(_) => Status::failed_precondition(msg),
            NodeError::Forbidden(_) => Status::permission_denied(msg),
            NodeError::CollectionExists(_) | NodeError::AliasConflict(_) => Status::already_exists(msg),
            NodeError::AliasNotFound(_) => Status::not_found(msg),
            NodeError::RangeMoved(_) => {
                // Same contract as a stale epoch: reload the map, re-route.
                let mut s = Status::new(Code::FailedPrecondition, msg);
                s.metadata_mut().insert(STALE_EPOCH_KEY, tonic::metadata::MetadataValue::from_static("0"));
                s
            }
            NodeError::StaleEpoch { have, .. } => {
                let mut s = Status::new(Code::FailedPrecondition, msg);
                if let Ok(v) = have.to_string().parse() {
                    s.metadata_mut().insert(STALE_EPOCH_KEY, v);
                }
                s
            }
            NodeError::ShuttingDown => Status::unavailable(msg),
            NodeError::TooLarge(_) | NodeError::DiskFull { .. } => Status::resource_exhausted(msg),
            NodeError::BackupExists(_) => Status::already_exists(msg),
            NodeError::BackupNotFound(_) => Status::not_found(msg),
            NodeError::BackupCorrupt(_) => Status::data_loss(msg),
            NodeError::Backup(_) => {
                tracing::error!(error = %msg, "backup failed");
                Status::internal(msg)
            }
            NodeError::Storage(_) | NodeError::Index(_) => {
                tracing::error!(error = %msg, "internal error");
                Status::internal(msg)
            }
        }
    }
}
