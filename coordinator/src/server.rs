//! The coordinator's gRPC server: `Collections`, `Points`, `Cluster`, the
//! standard health service and reflection, with the documented message
//! limit.
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use shoal_proto::limits::MAX_MESSAGE_BYTES;
use shoal_proto::v1::cluster_server::ClusterServer;
use shoal_proto::v1::collections_server::CollectionsServer;
use shoal_proto::v1::points_server::PointsServer;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::router::Router;
use crate::service::Api;

#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// A node served by this same process, called without the network.
    pub local: Option<crate::router::LocalNode>,
    /// Internal addresses of cluster nodes to load the map from (any node).
    pub seeds: Vec<String>,
    /// Deadline for each fan-out call to a shard.
    pub shard_deadline: Duration,
}

/// Serves the public API until `shutdown` resolves. Waits (with retries)
/// for the metadata node before reporting SERVING on the health service.
pub async fn serve(cfg: CoordinatorConfig, listener: TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let router = Arc::new(Router::new(cfg.seeds.clone(), cfg.shard_deadline, cfg.local.clone()));
    let (reporter, health) = tonic_health::server::health_reporter();
    let api = Api { router: router.clone() };
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(shoal_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
    {
        let (router, reporter) = (router.clone(), reporter.clone());
        tokio::spawn(async move {
            let mut wait = Duration::from_millis(50);
            loop {
                match router.refresh().await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "waiting for the metadata node");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(2));
                    }
                }
            }
            reporter.set_serving::<PointsServer<Api>>().await;
            reporter.set_serving::<CollectionsServer<Api>>().await;
            reporter.set_serving::<ClusterServer<Api>>().await;
            reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
        });
    }
    shoal_proto::transport::server()
        .trace_fn(crate::telemetry::server_span)
        .layer(crate::telemetry::RpcMetricsLayer)
        .add_service(health)
        .add_service(reflection)
        .add_service(CollectionsServer::new(api.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES))
        .add_service(PointsServer::new(api.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES))
        .add_service(ClusterServer::new(api))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)).with_keepalive(Some(shoal_proto::transport::TCP_KEEPALIVE)), shutdown)
        .await?;
    Ok(())
}
