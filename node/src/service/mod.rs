//! gRPC handlers of the internal API: [`shard::ShardService`] (data plane)
//! and [`meta::MetaService`] (cluster map). Both are thin: they decode,
//! hop onto the blocking pool, call the [`Engine`](crate::engine::Engine)
//! or [`Shard`](crate::shard::Shard), and map errors through `status.rs`.
pub mod meta;
pub mod shard;

/// Runs blocking engine work off the async runtime.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> crate::error::Result<T> + Send + 'static) -> Result<T, tonic::Status> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(tonic::Status::from),
        Err(e) => Err(tonic::Status::internal(format!("worker failed: {e}"))),
    }
}
