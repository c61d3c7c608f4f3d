//! `shoal.internal.v1.Meta`: the cluster map and collection lifecycle.
use std::sync::Arc;

use shoal_proto::internal::v1::meta_server::Meta;
use shoal_proto::internal::v1::{ClusterMap, GetClusterMapRequest, NodeStatusRequest, NodeStatusResponse};
use shoal_proto::v1::{CreateCollectionRequest, DeleteCollectionRequest};
use shoal_proto::validate::invalid;
use tonic::{Request, Response, Status};

use super::blocking;
use crate::engine::Engine;
use crate::error::NodeError;

pub struct MetaService {
    engine: Arc<Engine>,
    device: String,
}

impl MetaService {
    pub fn new(engine: Arc<Engine>, device: String) -> Self {
        MetaService { engine, device }
    }
}

#[tonic::async_trait]
impl Meta for MetaService {
    async fn get_cluster_map(&self, _: Request<GetClusterMapRequest>) -> Result<Response<ClusterMap>, Status> {
        Ok(Response::new(self.engine.cluster_map()))
    }

    async fn create_collection(&self, req: Request<CreateCollectionRequest>) -> Result<Response<ClusterMap>, Status> {
        let config = req.into_inner().config.ok_or_else(|| NodeError::from(invalid("config", "collection config is missing")))?;
        let engine = self.engine.clone();
        Ok(Response::new(blocking(move || engine.create_collection(&config)).await?))
    }

    async fn delete_collection(&self, req: Request<DeleteCollectionRequest>) -> Result<Response<ClusterMap>, Status> {
        let name = req.into_inner().name;
        let engine = self.engine.clone();
        Ok(Response::new(blocking(move || engine.delete_collection(&name)).await?))
    }

    async fn node_status(&self, _: Request<NodeStatusRequest>) -> Result<Response<NodeStatusResponse>, Status> {
        Ok(Response::new(self.engine.status(&self.device)))
    }
}
