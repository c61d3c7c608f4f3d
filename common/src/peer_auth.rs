//! Authorization of the internal plane by certificate identity.
//!
//! With TLS on, every connection to a node's internal port carries a
//! certificate from the cluster CA (mutual TLS), and the identity it names
//! ([`Identity`]) decides which methods the caller may reach:
//! [`INTERNAL_METHODS`] is the table. Per-message checks that need the
//! request (a Raft message's sender against the group's leader and members,
//! `RegisterNode` for the caller itself) are made by the services, which
//! read the caller from [`caller`]. With TLS off the layer lets everything
//! through (development on loopback; docs/security.md).
use tonic::Status;

use crate::identity::Identity;

/// Who may call a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Callers {
    /// Any identity of the cluster (and the health service: anyone with a
    /// certificate from the CA).
    Any,
    /// Data nodes only.
    Nodes,
    /// Nodes and coordinators.
    NodesCoordinators,
    /// Nodes and operators.
    NodesOperators,
    /// Nodes, coordinators and operators.
    NotAnonymous,
}

impl Callers {
    pub fn admits(self, id: Option<&Identity>) -> bool {
        match (self, id) {
            (Callers::Any, _) => true,
            (_, None) => false,
            (Callers::Nodes, Some(i)) => matches!(i, Identity::Node(_)),
            (Callers::NodesCoordinators, Some(i)) => matches!(i, Identity::Node(_) | Identity::Coordinator),
            (Callers::NodesOperators, Some(i)) => matches!(i, Identity::Node(_) | Identity::Operator),
            (Callers::NotAnonymous, Some(_)) => true,
        }
    }
}

/// Every internal method and who may call it (docs/security.md prints
/// this table). A path not listed is refused.
pub const INTERNAL_METHODS: &[(&str, Callers)] = &[
    ("/shoal.internal.v1.Raft/AppendEntries", Callers::Nodes),
    ("/shoal.internal.v1.Raft/Vote", Callers::Nodes),
    ("/shoal.internal.v1.Raft/InstallSnapshot", Callers::Nodes),
    ("/shoal.internal.v1.Raft/PreVote", Callers::Nodes),
    ("/shoal.internal.v1.Shard/Write", Callers::NodesCoordinators),
    ("/shoal.internal.v1.Shard/Get", Callers::NotAnonymous),
    ("/shoal.internal.v1.Shard/Scroll", Callers::NotAnonymous),
    ("/shoal.internal.v1.Shard/Count", Callers::NotAnonymous),
    ("/shoal.internal.v1.Shard/Search", Callers::NotAnonymous),
    ("/shoal.internal.v1.Shard/TextStats", Callers::NotAnonymous),
    ("/shoal.internal.v1.Shard/TextSearch", Callers::NotAnonymous),
    ("/shoal.internal.v1.Shard/Score", Callers::NotAnonymous),
    ("/shoal.internal.v1.Shard/SparseStats", Callers::NotAnonymous),
    ("/shoal.internal.v1.Shard/SparseSearch", Callers::NotAnonymous),
    ("/shoal.internal.v1.Meta/GetClusterMap", Callers::NotAnonymous),
    ("/shoal.internal.v1.Meta/NodeStatus", Callers::NotAnonymous),
    ("/shoal.internal.v1.Meta/CreateCollection", Callers::NotAnonymous),
    ("/shoal.internal.v1.Meta/DeleteCollection", Callers::NotAnonymous),
    ("/shoal.internal.v1.Meta/UpdateAliases", Callers::NotAnonymous),
    ("/shoal.internal.v1.Meta/UpdatePayloadIndexes", Callers::NotAnonymous),
    ("/shoal.internal.v1.Meta/UpdateVectors", Callers::NotAnonymous),
    ("/shoal.internal.v1.Meta/UpdateStorage", Callers::NotAnonymous),
    ("/shoal.internal.v1.Meta/RegisterNode", Callers::Nodes),
    ("/shoal.internal.v1.Meta/InitCluster", Callers::NodesOperators),
    ("/shoal.internal.v1.Meta/ShardDigest", Callers::NodesOperators),
    ("/shoal.internal.v1.Meta/SubmitOperations", Callers::NodesOperators),
    ("/shoal.internal.v1.Meta/ListOperations", Callers::NodesOperators),
    ("/shoal.internal.v1.Meta/RemoveNode", Callers::NodesOperators),
    ("/shoal.internal.v1.Meta/ShardMembers", Callers::NodesOperators),
    ("/shoal.internal.v1.Meta/HandOff", Callers::NodesOperators),
    ("/shoal.internal.v1.Meta/CreateBackup", Callers::NodesOperators),
    ("/shoal.internal.v1.Meta/BackupShard", Callers::NodesOperators),
    ("/shoal.internal.v1.Meta/GetBackup", Callers::NodesOperators),
    ("/shoal.internal.v1.Meta/ReadBackup", Callers::NodesOperators),
    ("/grpc.health.v1.Health/Check", Callers::Any),
    ("/grpc.health.v1.Health/Watch", Callers::Any),
    ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", Callers::NotAnonymous),
    ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", Callers::NotAnonymous),
];

/// Internal methods whose calls go to the audit log.
pub const AUDITED_INTERNAL: &[&str] = &[
    "/shoal.internal.v1.Meta/CreateCollection",
    "/shoal.internal.v1.Meta/DeleteCollection",
    "/shoal.internal.v1.Meta/UpdateAliases",
    "/shoal.internal.v1.Meta/UpdatePayloadIndexes",
    "/shoal.internal.v1.Meta/UpdateVectors",
    "/shoal.internal.v1.Meta/UpdateStorage",
    "/shoal.internal.v1.Meta/RegisterNode",
    "/shoal.internal.v1.Meta/InitCluster",
    "/shoal.internal.v1.Meta/SubmitOperations",
    "/shoal.internal.v1.Meta/RemoveNode",
    "/shoal.internal.v1.Meta/HandOff",
    "/shoal.internal.v1.Meta/CreateBackup",
    "/shoal.internal.v1.Meta/ReadBackup",
];

pub fn callers_of(path: &str) -> Option<Callers> {
    INTERNAL_METHODS.iter().find(|(p, _)| *p == path).map(|(_, c)| *c)
}

/// Who called, as far as the connection tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Not a TLS connection: nothing is known (TLS off).
    Plain,
    /// A TLS connection whose client certificate the CA verified, and the
    /// identity it names, if any.
    Verified(Option<Identity>),
}

/// The caller of a request.
pub fn caller(ext: &http::Extensions) -> Caller {
    match crate::tls::peer(ext) {
        Some(p) if p.tls => Caller::Verified(p.identity.clone()),
        _ => Caller::Plain,
    }
}

/// Refuses internal calls whose caller's identity the table does not
/// admit, when `enforce` (TLS on). Use as `Guard(PeerPolicy { enforce })`.
#[derive(Clone)]
pub struct PeerPolicy {
    pub enforce: bool,
}

/// The internal plane's identity layer.
pub type PeerAuthLayer = crate::layer::Guard<PeerPolicy>;

impl PeerPolicy {
    pub fn layer(enforce: bool) -> PeerAuthLayer {
        crate::layer::Guard(PeerPolicy { enforce })
    }
}

impl crate::layer::Policy for PeerPolicy {
    fn admit<B>(&self, req: &mut http::Request<B>) -> Result<(), Status> {
        if !self.enforce {
            return Ok(());
        }
        let path = req.uri().path();
        let id = crate::tls::peer(req.extensions()).and_then(|p| p.identity.clone());
        let refused = match callers_of(path) {
            None => Status::permission_denied(format!("unknown internal method {path}")),
            Some(c) if !c.admits(id.as_ref()) => match &id {
                None => Status::unauthenticated(format!("{path}: the client certificate names no Shoal identity (spiffe://shoal/...)")),
                Some(i) => Status::permission_denied(format!("{path} may not be called by {i}")),
            },
            Some(_) => return Ok(()),
        };
        tracing::warn!(path, caller = ?id, remote = ?crate::tls::peer(req.extensions()).and_then(|p| p.remote_addr), "internal call refused");
        crate::telemetry::PEER_REFUSALS.with_label_values(&[crate::audit::code_name(refused.code())]).inc();
        Err(refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_internal_method_is_in_the_table() {
        for path in shoal_proto::method_paths() {
            if path.starts_with("/shoal.internal.") {
                assert!(callers_of(path).is_some(), "{path} has no entry in INTERNAL_METHODS");
            }
        }
        assert!(Callers::Nodes.admits(Some(&Identity::Node(2))));
        assert!(!Callers::Nodes.admits(Some(&Identity::Coordinator)));
        assert!(!Callers::NodesOperators.admits(Some(&Identity::Coordinator)));
        assert!(!Callers::NotAnonymous.admits(None));
        assert!(Callers::Any.admits(None));
    }
}
