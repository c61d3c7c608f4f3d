//! The coordinator's gRPC server: `Collections`, `Points`, `Cluster`, the
//! standard health service and (when enabled) reflection, with the
//! documented message limit, TLS, API-key/JWT authentication and the audit
//! log.
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use shoal_proto::limits::MAX_MESSAGE_BYTES;
use shoal_proto::v1::cluster_server::ClusterServer;
use shoal_proto::v1::collections_server::CollectionsServer;
use shoal_proto::v1::points_server::PointsServer;
use shoal_common::audit::{AuditLayer, AuditLog};
use shoal_common::auth::{AuthPolicy, Authenticator};
use shoal_common::tls::{Plane, TlsContext};
use tokio::net::TcpListener;

use crate::router::Router;
use crate::service::Api;

/// How often a coordinator reloads the cluster map in the background.
pub const MAP_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// A node served by this same process, called without the network.
    pub local: Option<crate::router::LocalNode>,
    /// Internal addresses of cluster nodes to load the map from (any node).
    pub seeds: Vec<String>,
    /// Deadline for each fan-out call to a shard.
    pub shard_deadline: Duration,
    /// Certificates: the public API is served over TLS and nodes are
    /// called with mutual TLS (none: plain TCP).
    pub tls: Option<Arc<TlsContext>>,
    /// Credentials of the public API (none: every caller may do anything).
    pub auth: Option<Arc<Authenticator>>,
    pub audit: Option<Arc<AuditLog>>,
    /// Serve gRPC reflection.
    pub reflection: bool,
}

/// Public methods always audited; writes by filter are marked by their
/// handler ([`shoal_common::audit::note`]).
pub const AUDITED_PUBLIC: &[&str] = &["/shoal.v1.Collections/Create", "/shoal.v1.Collections/Delete", "/shoal.v1.Cluster/Status"];

/// Cluster maps refused for an implausible epoch jump.
pub static MAP_REFUSALS: std::sync::LazyLock<prometheus::IntCounter> = std::sync::LazyLock::new(|| {
    let c = prometheus::IntCounter::new("shoal_cluster_map_refusals_total", "cluster maps refused because their epoch jumped far past the known one").expect("valid counter");
    let _ = shoal_common::telemetry::registry().register(Box::new(c.clone()));
    c
});

/// Serves the public API until `shutdown` resolves. Waits (with retries)
/// for the metadata node before reporting SERVING on the health service.
pub async fn serve(cfg: CoordinatorConfig, listener: TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let router = Arc::new(Router::new(cfg.seeds.clone(), cfg.shard_deadline, cfg.local.clone(), cfg.tls.clone()));
    let (reporter, health) = tonic_health::server::health_reporter();
    let api = Api { router: router.clone() };
    let reflection = match cfg.reflection {
        true => Some(tonic_reflection::server::Builder::configure().register_encoded_file_descriptor_set(shoal_proto::FILE_DESCRIPTOR_SET).register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET).build_v1()?),
        false => None,
    };
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
            // Map changes made through other coordinators (an alias
            // switch, a new collection) reach this one within
            // MAP_REFRESH_INTERVAL, and at once on a routing miss.
            loop {
                tokio::time::sleep(MAP_REFRESH_INTERVAL).await;
                if let Err(e) = router.refresh().await {
                    tracing::debug!(error = %e, "periodic cluster map refresh failed");
                }
            }
        });
    }
    let watchers: Vec<_> = [cfg.tls.as_ref().map(|t| t.watch(shoal_common::tls::RELOAD_EVERY)), cfg.auth.as_ref().map(|a| a.watch(shoal_common::tls::RELOAD_EVERY))].into_iter().flatten().collect();
    let incoming = shoal_common::tls::incoming(listener, cfg.tls.clone().map(|t| (t, Plane::Public)));
    shoal_proto::transport::server()
        .trace_fn(shoal_common::telemetry::server_span)
        .layer(shoal_common::telemetry::RpcMetricsLayer)
        .layer(AuthPolicy::layer(cfg.auth.clone(), cfg.audit.clone()))
        .layer(AuditLayer::new(cfg.audit.clone(), AUDITED_PUBLIC))
        .add_service(health)
        .add_optional_service(reflection)
        .add_service(CollectionsServer::new(api.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES))
        .add_service(PointsServer::new(api.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES))
        .add_service(ClusterServer::new(api))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    for w in watchers {
        w.abort();
    }
    Ok(())
}
