//! # shoal-node: a Shoal data node
//!
//! A node owns shard replicas of collections. It stores points in RocksDB,
//! indexes vectors with usearch HNSW, evaluates payload filters, and serves
//! the internal `shoal.internal.v1` API (`Shard`, `Meta`) to coordinators.
//! The `shoal` binary (`src/bin/shoal.rs`) runs a node, a coordinator, or
//! both (`shoal dev`).
//!
//! ## Layout
//! - [`storage`]: the [`storage::KvEngine`] trait with RocksDB and
//!   in-memory engines and their conformance suite; [`storage::ShardStore`]
//!   lays out one shard's points, payload-index entries and metadata.
//! - [`index`]: the [`index::VectorIndex`] trait; usearch HNSW (f32, f16,
//!   or int8/binary codes re-scored from a memory-mapped vector file) and
//!   the flat simsimd oracle.
//! - [`scan`]: the scan engine: exact top-k of a batch of queries over a
//!   set of rows by blocked matrix products (CPU backend), with the
//!   per-row loop as the conformance oracle.
//! - [`filter`]: payload indexes in memory and filter evaluation to a bitmap
//!   of allowed point versions.
//! - [`shard`]: one shard replica: applies write batches (storage first,
//!   then indexes), searches, reads, persists and reconciles its HNSW file.
//! - [`engine`]: the node's shards and the cluster map it hosts them for
//!   (single-node metadata authority until the Raft issue).
//! - [`service`]: gRPC handlers for `Shard` and `Meta`; [`server`] wires
//!   them with health and reflection.
//! - [`memory`]: resident size and glibc allocator tuning.
//! - [`disk`]: the data volume's free space and the watermark below which
//!   the node takes no new data.
//! - [`raft`]: openraft type configuration and the RocksDB-backed Raft log
//!   shared by every group on the node.
//! - [`error`] and [`status`]: the node's error enum and its one mapping to
//!   gRPC status codes.
//!
//! ## Path of a request
//! `Shard/Write` arrives in [`service`], which finds the [`shard::Shard`] in
//! the [`engine::Engine`]. The shard validates vectors, assigns each upserted
//! point a fresh offset, writes points, payload-index entries and its
//! sequence number (and a write-journal record, shard/journal.rs) in one
//! synced RocksDB batch, and only then updates the
//! HNSW and payload indexes and acknowledges. `Shard/Search` evaluates the
//! filter to a bitmap, chooses HNSW predicate search or an exact scan by the
//! filter's selectivity, and returns scored hits best first.

pub mod config;
pub mod disk;
pub mod engine;
pub mod error;
pub mod filter;
pub mod index;
pub mod memory;
pub mod metrics;
pub mod raft;
pub mod scan;
pub mod server;
pub mod service;
pub mod shard;
pub mod sparse;
pub mod status;
pub mod storage;
pub mod text;

#[cfg(test)]
mod fuzz_tests;
