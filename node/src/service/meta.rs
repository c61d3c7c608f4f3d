//! `shoal.internal.v1.Meta`: the cluster map, collection lifecycle, joins.
//!
//! Reads (`GetClusterMap`, `NodeStatus`, `ShardDigest`) answer from this
//! node. Changes run on the metadata leader: a node that is not the leader
//! forwards the request there once (marked with `shoal-forwarded`), so
//! coordinators and `shoalctl` may call any node.
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use shoal_proto::internal::v1::meta_client::MetaClient;
use shoal_proto::internal::v1::meta_server::Meta;
use shoal_proto::internal::v1::*;
use shoal_proto::v1::{CreateCollectionRequest, DeleteCollectionRequest};
use shoal_proto::validate::invalid;
use shoal_common::identity::Identity;
use shoal_proto::FORWARDED_KEY;
use tonic::{Request, Response, Status};

use super::blocking;
use crate::engine::Engine;
use crate::error::NodeError;

/// How long the check of a registered address may take.
const ADDRESS_CHECK_WAIT: Duration = Duration::from_secs(5);

/// Checks that `address` is served by node `id`'s certificate (TLS on): a
/// node cannot point another's address at itself.
async fn verify_address(tls: Arc<shoal_common::tls::TlsContext>, id: u64, address: &str) -> crate::error::Result<()> {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let check = async {
        let ch = shoal_common::tls::connect(address, Some(tls), shoal_common::tls::Expect::NodeId(id), ADDRESS_CHECK_WAIT).await.map_err(|e| format!("{e}: {}", std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default()))?;
        HealthClient::new(ch).check(HealthCheckRequest { service: String::new() }).await.map_err(|s| s.message().to_string())
    };
    match tokio::time::timeout(ADDRESS_CHECK_WAIT, check).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(why)) => Err(NodeError::Forbidden(format!("node {id}'s new address {address} is not served by node {id}: {why}"))),
        Err(_) => Err(NodeError::Forbidden(format!("node {id}'s new address {address} did not answer within {ADDRESS_CHECK_WAIT:?}"))),
    }
}

/// How long a change waits for the metadata group to know its leader.
const META_LEADER_WAIT: Duration = Duration::from_secs(5);

pub struct MetaService {
    engine: Arc<Engine>,
    device: String,
}

impl MetaService {
    pub fn new(engine: Arc<Engine>, device: String) -> Self {
        MetaService { engine, device }
    }

    /// Runs `local` here if this node leads the metadata group, else sends
    /// the request to the leader with `remote`.
    async fn on_leader<T, R, L, LF, RF, RFut>(&self, req: Request<T>, local: L, remote: RF) -> Result<Response<R>, Status>
    where
        T: Clone,
        L: FnOnce(Arc<Engine>, T) -> LF,
        LF: Future<Output = crate::error::Result<R>>,
        RF: FnOnce(MetaClient<tonic::transport::Channel>, Request<T>) -> RFut,
        RFut: Future<Output = Result<Response<R>, Status>>,
    {
        if !self.engine.in_cluster() {
            return Err(NodeError::NoCluster.into());
        }
        let forwarded = req.metadata().contains_key(FORWARDED_KEY);
        let body = req.into_inner();
        if self.engine.is_meta_leader() {
            return Ok(Response::new(local(self.engine.clone(), body).await?));
        }
        let leader = self.engine.wait_meta_leader(META_LEADER_WAIT).await;
        match leader {
            Some((id, _)) if id == self.engine.node_id() => Ok(Response::new(local(self.engine.clone(), body).await?)),
            Some((id, addr)) if !forwarded => {
                let channel = self.engine.peers().channel(&addr).map_err(|e| Status::internal(format!("bad metadata leader address {addr:?} (node {id}): {e}")))?;
                let mut fwd = Request::new(body);
                fwd.metadata_mut().insert(FORWARDED_KEY, tonic::metadata::MetadataValue::from_static("1"));
                remote(MetaClient::new(channel), fwd).await
            }
            leader => Err(NodeError::NotLeader { group: crate::raft::meta::META_GROUP.into(), leader }.into()),
        }
    }
}

#[tonic::async_trait]
impl Meta for MetaService {
    async fn get_cluster_map(&self, _: Request<GetClusterMapRequest>) -> Result<Response<ClusterMap>, Status> {
        Ok(Response::new(self.engine.cluster_map()))
    }

    async fn create_collection(&self, req: Request<CreateCollectionRequest>) -> Result<Response<ClusterMap>, Status> {
        if req.get_ref().config.is_none() {
            return Err(NodeError::from(invalid("config", "collection config is missing")).into());
        }
        self.on_leader(
            req,
            |e, r: CreateCollectionRequest| async move { e.create_collection(&r.config.unwrap_or_default()).await },
            |mut c, r| async move { c.create_collection(r).await },
        )
        .await
    }

    async fn delete_collection(&self, req: Request<DeleteCollectionRequest>) -> Result<Response<ClusterMap>, Status> {
        self.on_leader(req, |e, r: DeleteCollectionRequest| async move { e.delete_collection(&r.name).await }, |mut c, r| async move { c.delete_collection(r).await }).await
    }

    async fn update_aliases(&self, req: Request<shoal_proto::v1::UpdateAliasesRequest>) -> Result<Response<ClusterMap>, Status> {
        shoal_proto::validate::alias_update(req.get_ref()).map_err(NodeError::from)?;
        self.on_leader(req, |e, r: shoal_proto::v1::UpdateAliasesRequest| async move { e.update_aliases(&r).await }, |mut c, r| async move { c.update_aliases(r).await }).await
    }

    async fn update_payload_indexes(&self, req: Request<shoal_proto::v1::UpdatePayloadIndexesRequest>) -> Result<Response<ClusterMap>, Status> {
        shoal_proto::validate::collection_name(&req.get_ref().collection).map_err(NodeError::from)?;
        self.on_leader(req, |e, r: shoal_proto::v1::UpdatePayloadIndexesRequest| async move { e.update_payload_indexes(&r).await }, |mut c, r| async move { c.update_payload_indexes(r).await }).await
    }

    async fn update_vectors(&self, req: Request<shoal_proto::v1::UpdateVectorsRequest>) -> Result<Response<ClusterMap>, Status> {
        shoal_proto::validate::collection_name(&req.get_ref().collection).map_err(NodeError::from)?;
        self.on_leader(req, |e, r: shoal_proto::v1::UpdateVectorsRequest| async move { e.update_vectors(&r).await }, |mut c, r| async move { c.update_vectors(r).await }).await
    }

    async fn update_storage(&self, req: Request<shoal_proto::v1::UpdateStorageRequest>) -> Result<Response<ClusterMap>, Status> {
        shoal_proto::validate::collection_name(&req.get_ref().collection).map_err(NodeError::from)?;
        self.on_leader(req, |e, r: shoal_proto::v1::UpdateStorageRequest| async move { e.update_storage(&r).await }, |mut c, r| async move { c.update_storage(r).await }).await
    }

    async fn register_node(&self, req: Request<RegisterNodeRequest>) -> Result<Response<ClusterMap>, Status> {
        let id = req.get_ref().node_id;
        if id == 0 {
            return Err(NodeError::from(invalid("node_id", "node ids start at 1")).into());
        }
        // With TLS on, a node registers (or moves) only itself: the
        // caller's certificate must name the node, or the caller is a node
        // forwarding the registration to the metadata leader (which checked
        // its own caller); either way the leader then checks that the new
        // address is served by that node's certificate.
        if let shoal_common::peer_auth::Caller::Verified(caller) = shoal_common::peer_auth::caller(req.extensions()) {
            let forwarded = req.metadata().contains_key(FORWARDED_KEY);
            match caller {
                Some(Identity::Node(n)) if n == id || forwarded => {}
                other => return Err(NodeError::Forbidden(format!("node {id} may register only itself; the caller's certificate names {other:?}")).into()),
            }
        }
        self.on_leader(
            req,
            |e, r: RegisterNodeRequest| async move {
                if let Some(tls) = e.peers().tls() {
                    verify_address(tls, r.node_id, &r.address).await?;
                }
                e.register_node(r.node_id, r.address, r.incarnation).await
            },
            |mut c, r| async move { c.register_node(r).await },
        )
        .await
    }

    async fn init_cluster(&self, _: Request<InitClusterRequest>) -> Result<Response<ClusterMap>, Status> {
        Ok(Response::new(self.engine.init_cluster().await?))
    }

    async fn submit_operations(&self, req: Request<SubmitOperationsRequest>) -> Result<Response<SubmitOperationsResponse>, Status> {
        self.on_leader(
            req,
            |e, r: SubmitOperationsRequest| async move { e.submit_operations(r).await.map(|ids| SubmitOperationsResponse { ids }) },
            |mut c, r| async move { c.submit_operations(r).await },
        )
        .await
    }

    async fn list_operations(&self, req: Request<ListOperationsRequest>) -> Result<Response<ListOperationsResponse>, Status> {
        self.on_leader(
            req,
            |e, _: ListOperationsRequest| async move { Ok(ListOperationsResponse { operations: e.list_operations() }) },
            |mut c, r| async move { c.list_operations(r).await },
        )
        .await
    }

    async fn remove_node(&self, req: Request<RemoveNodeRequest>) -> Result<Response<ClusterMap>, Status> {
        self.on_leader(req, |e, r: RemoveNodeRequest| async move { e.remove_node(r.node_id).await }, |mut c, r| async move { c.remove_node(r).await }).await
    }

    async fn shard_members(&self, req: Request<ShardMembersRequest>) -> Result<Response<ShardMembersResponse>, Status> {
        Ok(Response::new(self.engine.shard_members(req.into_inner()).await?))
    }

    async fn create_backup(&self, req: Request<CreateBackupRequest>) -> Result<Response<BackupManifest>, Status> {
        self.on_leader(
            req,
            |e, r: CreateBackupRequest| async move {
                let m = e.create_backup(&r.collection, &r.name).await?;
                Ok(BackupManifest { json: serde_json::to_string_pretty(&m).unwrap_or_default() })
            },
            |mut c, r| async move { c.create_backup(r).await },
        )
        .await
    }

    async fn backup_shard(&self, req: Request<BackupShardRequest>) -> Result<Response<BackupShardResponse>, Status> {
        Ok(Response::new(self.engine.backup_shard(req.into_inner()).await?))
    }

    async fn get_backup(&self, req: Request<GetBackupRequest>) -> Result<Response<BackupManifest>, Status> {
        let m = self.engine.get_backup(&req.into_inner().name)?;
        Ok(Response::new(BackupManifest { json: serde_json::to_string_pretty(&m).unwrap_or_default() }))
    }

    async fn read_backup(&self, req: Request<ReadBackupRequest>) -> Result<Response<ReadBackupResponse>, Status> {
        let r = req.into_inner();
        let engine = self.engine.clone();
        Ok(Response::new(blocking(move || engine.read_backup(&r)).await?))
    }

    async fn hand_off(&self, req: Request<HandOffRequest>) -> Result<Response<HandOffResponse>, Status> {
        if req.into_inner().stand_for_meta {
            self.engine.stand_for_meta().await?;
            return Ok(Response::new(HandOffResponse::default()));
        }
        let (moved, failed) = self.engine.hand_off().await;
        tracing::info!(?moved, ?failed, "leadership handed off");
        Ok(Response::new(HandOffResponse { moved, failed }))
    }

    async fn node_status(&self, _: Request<NodeStatusRequest>) -> Result<Response<NodeStatusResponse>, Status> {
        let mut st = self.engine.status(&self.device);
        // As of the last check (every second, see server.rs).
        match self.engine.last_ready.lock().clone() {
            Ok(()) => st.ready = true,
            Err(why) => st.not_ready = why,
        }
        Ok(Response::new(st))
    }

    async fn shard_digest(&self, req: Request<ShardDigestRequest>) -> Result<Response<ShardDigestResponse>, Status> {
        let r = req.into_inner();
        let engine = self.engine.clone();
        let (points, digest, applied_index) = blocking(move || engine.shard_digest(&r.collection, r.shard_id)).await?;
        Ok(Response::new(ShardDigestResponse { points, digest, applied_index }))
    }
}
