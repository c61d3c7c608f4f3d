//! The HTTP/2 limits every Shoal gRPC server runs with (the public API on
//! coordinators, the internal API on nodes), in one place so both stay
//! alike. tonic leaves several of hyper's protections off unless told
//! (`None` means unlimited streams per connection and no cap on locally
//! reset streams); each is set here explicitly, and docs/limits.md lists
//! them.
use std::time::Duration;

use tonic::transport::Server;

/// Concurrent HTTP/2 streams one connection may open. A client over the
/// limit waits for a stream to finish (HTTP/2 flow), it is not refused.
pub const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// Requests of one connection being handled at once; later ones queue.
pub const MAX_CONCURRENT_REQUESTS_PER_CONNECTION: usize = 1024;
/// Streams a peer may reset before the server has accepted them, before
/// the connection is closed (the HTTP/2 "rapid reset" attack). h2's
/// default of 20 closed every peer connection of a node resumed after a
/// pause, when the requests that timed out meanwhile were all cancelled at
/// once; 256 keeps the protection with room for that burst.
pub const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 256;
/// Streams the server itself may reset (errors) per connection before
/// closing it: hyper's default, which tonic turns off unless set.
pub const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;
/// HTTP/2 PING interval and the time to wait for its answer: a dead peer
/// (or a half-open connection) is noticed within about 30 s.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// TCP keepalive on accepted connections.
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(30);

/// A server builder with Shoal's HTTP/2 limits.
pub fn server() -> Server {
    Server::builder()
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .concurrency_limit_per_connection(MAX_CONCURRENT_REQUESTS_PER_CONNECTION)
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESET_STREAMS))
        .http2_max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESET_STREAMS))
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .tcp_keepalive(Some(TCP_KEEPALIVE))
        .tcp_nodelay(true)
}
