//! Wires the internal gRPC server: `Shard`, `Meta`, `Raft`, the standard health
//! service and (when enabled) server reflection, with the documented
//! message-size limit, mutual TLS and the caller-identity table
//! ([`shoal_common::peer_auth`]) when TLS is on, the audit log, plus the
//! background index saver.
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use shoal_proto::internal::v1::meta_server::MetaServer;
use shoal_proto::internal::v1::raft_server::RaftServer;
use shoal_proto::internal::v1::shard_server::ShardServer;
use shoal_proto::limits::MAX_MESSAGE_BYTES;
use shoal_common::audit::{AuditLayer, AuditLog};
use shoal_common::peer_auth::{PeerPolicy, AUDITED_INTERNAL};
use shoal_common::tls::{Plane, TlsContext};
use tokio::net::TcpListener;

use crate::engine::Engine;
use crate::raft::network::RaftService;
use crate::service::{meta::MetaService, shard::ShardService};

/// Health service name that reports SERVING only while the node is caught
/// up ([`Engine::readiness`]); the plain health check ("") means the
/// process serves.
pub const READY_SERVICE: &str = "shoal.ready";

/// The device this node's exact scans use: `cpu`, or the GPU
/// [`crate::scan::device::init`] opened (e.g. `cuda:0 NVIDIA H100`).
pub fn device() -> String {
    crate::scan::device::offload().map_or_else(|| "cpu".to_string(), |o| o.name().to_string())
}

/// How the internal server is secured.
#[derive(Clone, Default)]
pub struct Security {
    /// Mutual TLS with the cluster CA (none: plain TCP, every caller
    /// trusted: development on loopback only).
    pub tls: Option<Arc<TlsContext>>,
    /// Where audited calls are recorded.
    pub audit: Option<Arc<AuditLog>>,
    /// Serve gRPC reflection.
    pub reflection: bool,
}

/// Serves the internal API on `listener` until `shutdown` resolves, then
/// saves every changed index.
pub async fn serve_internal(engine: Arc<Engine>, listener: TcpListener, save_every: Duration, security: Security, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<ShardServer<ShardService>>().await;
    reporter.set_serving::<MetaServer<MetaService>>().await;
    reporter.set_serving::<RaftServer<RaftService>>().await;
    let reflection = match security.reflection {
        true => Some(tonic_reflection::server::Builder::configure().register_encoded_file_descriptor_set(shoal_proto::FILE_DESCRIPTOR_SET).register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET).build_v1()?),
        false => None,
    };
    let shard = ShardServer::new(ShardService::new(engine.clone())).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES);
    let meta = MetaServer::new(MetaService::new(engine.clone(), device()));
    let raft = RaftServer::new(RaftService::new(engine.groups.clone(), engine.elections.clone()).with_catch_up(engine.catch_up.clone()).with_disk(engine.disk.clone()).with_identities(security.tls.is_some()).with_placement(engine.placement_fn())).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES);

    // Election timers and pre-votes of every group (openraft's timer is
    // off).
    let elector = engine.elections.spawn(engine.groups.clone(), engine.peers.clone(), Some(engine.catch_up.clone()));
    // Open and drop shard replicas as the applied cluster map changes.
    let watcher = engine.watch_map();
    let index_sync = engine.sync_payload_indexes();
    // Drive cluster operations while this node leads the metadata group.
    let driver = engine.drive_operations();
    // `shoal.ready`: SERVING once caught up (the Kubernetes readiness
    // probe), rechecked every second.
    let readiness = {
        let (engine, reporter) = (engine.clone(), reporter.clone());
        tokio::spawn(async move {
            let mut was = None;
            let mut was_live = true;
            loop {
                engine.disk.refresh();
                engine.check_catch_up();
                // A shard group stopped on a storage error is reopened once
                // the volume has room again (crate::disk).
                let e = engine.clone();
                match tokio::task::spawn_blocking(move || e.restart_stopped_groups()).await {
                    Ok(Ok(0)) => {}
                    Ok(Ok(n)) => tracing::info!(groups = n, "reopened raft groups stopped on storage errors"),
                    Ok(Err(err)) => tracing::error!(error = %err, "reopening stopped raft groups failed"),
                    Err(err) => tracing::error!(error = %err, "reopening stopped raft groups panicked"),
                }
                // Liveness (the plain health check): fails while the
                // metadata group has stopped (it is not reopened in place),
                // so the node is restarted.
                let live = !engine.meta_stopped();
                if live != was_live {
                    was_live = live;
                    if live {
                        reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
                    } else {
                        tracing::error!("the metadata group stopped on a storage error: reporting not alive so the node is restarted");
                        reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
                    }
                }
                let ready = engine.readiness().await;
                *engine.last_ready.lock() = ready.clone();
                if was.as_ref() != Some(&ready) {
                    match &ready {
                        Ok(()) => tracing::info!("node is caught up and ready"),
                        Err(why) => tracing::info!(why = %why, "node is not ready"),
                    }
                    let status = if ready.is_ok() { tonic_health::ServingStatus::Serving } else { tonic_health::ServingStatus::NotServing };
                    reporter.set_service_status(READY_SERVICE, status).await;
                    was = Some(ready);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    // Hand pages freed by bulk writes back to the OS (see crate::memory).
    let trimmer = {
        let engine = engine.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut last = u64::MAX;
            loop {
                tick.tick().await;
                let seq = engine.write_seq();
                if seq != last {
                    last = seq;
                    let _ = tokio::task::spawn_blocking(crate::memory::release_free_memory).await;
                }
            }
        })
    };
    let saver = (!save_every.is_zero()).then(|| {
        let engine = engine.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(save_every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let e = engine.clone();
                let _ = tokio::task::spawn_blocking(move || e.save_indexes()).await;
            }
        })
    });

    let watcher_tls = security.tls.as_ref().map(|t| t.watch(shoal_common::tls::RELOAD_EVERY));
    let incoming = shoal_common::tls::incoming(listener, security.tls.clone().map(|t| (t, Plane::Internal)));
    shoal_proto::transport::server()
        .trace_fn(shoal_common::telemetry::server_span)
        .layer(shoal_common::telemetry::RpcMetricsLayer)
        .layer(PeerPolicy::layer(security.tls.is_some()))
        .layer(AuditLayer::new(security.audit.clone(), AUDITED_INTERNAL))
        .add_service(health)
        .add_optional_service(reflection)
        .add_service(shard)
        .add_service(meta)
        .add_service(raft)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    if let Some(w) = watcher_tls {
        w.abort();
    }
    if let Some(s) = saver {
        s.abort();
    }
    trimmer.abort();
    elector.abort();
    watcher.abort();
    index_sync.abort();
    driver.abort();
    readiness.abort();
    engine.shutdown_groups().await;
    let e = engine.clone();
    let saved = tokio::task::spawn_blocking(move || {
        let saved = e.save_indexes();
        e.close();
        saved
    })
    .await?;
    tracing::info!(saved, "internal server stopped; indexes saved");
    Ok(())
}
