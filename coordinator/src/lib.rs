//! # shoal-coordinator: the stateless router
//!
//! Serves the public `shoal.v1` API. It holds no data: it caches the cluster
//! map (loaded from a metadata node), routes each point to the shard that
//! owns its id hash, fans reads and searches out to every shard concurrently
//! under a deadline, and merges the answers.
//!
//! ## Layout
//! - [`router`]: the cached cluster map, one [`shoal_proto::routing::ShardMap`]
//!   per collection, gRPC channels per node, and the calls to nodes (with a
//!   refresh-and-retry when a node reports a stale epoch).
//! - [`merge`]: pure functions that merge per-shard top-k lists and scroll
//!   pages; table-tested.
//! - [`service`]: the `Collections`, `Points` and `Cluster` handlers:
//!   validation, fan-out, merge.
//! - [`query`]: the `Points/Query` planner (prefetch stages, fusion,
//!   re-scoring, recommend, MMR, group-by) over an [`query::Exec`];
//!   [`query_exec`] implements it with shard fan-outs (BM25 in two rounds:
//!   statistics, then scoring under the collection-wide statistics).
//! - [`stream`]: `SearchStream`, many searches over one HTTP/2 stream,
//!   each run as its own task through the same path as `Search`.
//! - [`server`]: the tonic server with health, reflection and limits.
//! - [`error`]: the coordinator's error enum and its one mapping to gRPC
//!   status (and from node statuses back).
//! - Telemetry, TLS, authentication and the audit log come from
//!   `shoal_common`, shared with the node crate.
//!
//! ## Path of a request
//! `Points/Search` -> [`service`] validates the vector against the
//! collection's dimension, `top_k`, `ef` and the filter -> [`router`] sends
//! one `Shard/Search` per shard to the node holding its leader replica, all
//! at once, under the deadline -> [`merge::merge_top_k`] orders the union by
//! score then id, drops duplicate ids and results past `score_threshold`,
//! and keeps `top_k`.
pub mod error;
pub mod merge;
pub mod query;
pub mod query_exec;
#[cfg(test)]
mod query_tests;
pub mod router;
pub mod server;
pub mod service;
pub mod stream;

pub use server::{serve, CoordinatorConfig};
