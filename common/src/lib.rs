//! # shoal-common: server plumbing below both servers
//!
//! What every Shoal server process (data node, coordinator, `shoal dev`)
//! shares, so that the node crate never imports the coordinator and both
//! take their security from one place (as TiKV's `security` component).
//!
//! ## Layout
//! - [`telemetry`]: the metrics registry, the per-RPC metrics layer, the
//!   `/metrics` endpoint, trace propagation and the log subscriber.
//! - [`tls`]: rustls configurations built from PEM files and reloaded when
//!   they change; the accept loop ([`tls::incoming`]) and the connector
//!   ([`tls::Connector`]) every server and channel uses.
//! - [`identity`]: the Shoal identity a certificate names
//!   (`spiffe://shoal/node/3`, `.../coordinator`, `.../operator`).
//! - [`peer_auth`]: which identity may call which internal method (the
//!   table), as a tower layer on the nodes' internal server.
//! - [`auth`]: API keys and JWTs on the public API: roles, collection
//!   scopes, the method table, and the layer that enforces it.
//! - [`audit`]: the JSON-lines audit log and the layer that writes it.
//! - [`layer`]: the [`layer::Policy`] gate both auth layers are, and
//!   helpers the layers share.
//! - [`reload`]: files checked for changes and reloaded in place.
//! - [`pki`]: a throwaway CA for development and tests.
//!
//! ## Path of a request
//! TCP accept -> [`tls::incoming`] (handshake; the peer's certificate is
//! verified against the cluster CA and its identity read) -> tonic puts a
//! [`tls::PeerInfo`] in the request's extensions -> metrics layer ->
//! [`auth::AuthLayer`] (public) or [`peer_auth::PeerAuthLayer`] (internal)
//! -> [`audit::AuditLayer`] -> the service, which checks what depends on
//! the message ([`auth::authorize`] for a collection, the Raft sender,
//! `RegisterNode`'s node id).
pub mod audit;
pub mod auth;
pub mod identity;
pub mod layer;
pub mod peer_auth;
pub mod pki;
pub mod reload;
pub mod telemetry;
pub mod tls;
