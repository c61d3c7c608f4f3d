//! # shoal-proto: Shoal's wire contract
//!
//! Everything two Shoal processes (or a client and a coordinator) must agree
//! on lives here: the generated gRPC code and the plain-Rust domain rules
//! that both sides apply to it.
//!
//! ## Layout
//! - [`v1`]: the public API (`shoal.v1`): `Collections`, `Points`, `Cluster`,
//!   served by coordinators. Sources in `proto/shoal/v1/*.proto`.
//! - [`internal`]: the node API (`shoal.internal.v1`): shard-level `Shard`
//!   and cluster-map `Meta` services on each node's internal port.
//! - [`point_id`]: [`PointKey`], the canonical, ordered, hashable form of a
//!   point id, and its 64-bit routing hash.
//! - [`routing`]: hash-range shard maps: splitting the hash space and finding
//!   the shard for a hash. Stable forever: tested against fixed vectors.
//! - [`placement`]: pure replica placement over nodes.
//! - [`payload`]: conversions between protobuf payload values and
//!   `serde_json::Value`.
//! - [`limits`]: the documented request limits, shared by every layer.
//! - [`transport`]: the HTTP/2 limits every gRPC server runs with.
//! - [`validate`]: request validation shared by coordinator and node
//!   (filters, vectors, collection configs).
//!
//! ## Path of a request
//! A client sends `shoal.v1.Points/Upsert` to a coordinator; the coordinator
//! validates it ([`validate`]), turns each id into a [`PointKey`], hashes it
//! ([`PointKey::route_hash`]) and looks the hash up in the collection's shard
//! map ([`routing::ShardMap`]); each shard's slice of the batch goes to a node
//! as `shoal.internal.v1.Shard/Write`.

pub mod limits;
pub mod payload;
pub mod placement;
pub mod point_id;
pub mod routing;
pub mod transport;
pub mod validate;

pub use point_id::PointKey;

/// gRPC metadata key a node sets on `FAILED_PRECONDITION` when a request
/// was routed with an older cluster-map epoch; its value is the node's epoch.
pub const STALE_EPOCH_KEY: &str = "shoal-stale-epoch";

/// gRPC metadata keys a node sets on `UNAVAILABLE` when it is not the
/// leader of the group a request needs: the leader's node id and internal
/// address, when it knows them. Coordinators go there next.
pub const LEADER_ID_KEY: &str = "shoal-leader-id";
pub const LEADER_ADDR_KEY: &str = "shoal-leader-addr";

/// gRPC metadata key on requests a node forwards to the metadata leader, so
/// a request is forwarded at most once.
pub const FORWARDED_KEY: &str = "shoal-forwarded";

/// Public API, package `shoal.v1`.
#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("shoal.v1");
}

/// Node API, package `shoal.internal.v1`.
pub mod internal {
    #[allow(clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("shoal.internal.v1");
    }
}

/// Encoded `FileDescriptorSet` of every Shoal proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("shoal_descriptor");

/// Every gRPC method path Shoal serves (`/package.Service/Method`), read
/// from [`FILE_DESCRIPTOR_SET`]: metrics label requests by these names
/// only, so a caller inventing paths cannot grow the label set.
pub fn method_paths() -> &'static std::collections::HashSet<String> {
    static PATHS: std::sync::OnceLock<std::collections::HashSet<String>> = std::sync::OnceLock::new();
    PATHS.get_or_init(|| {
        let set: prost_types::FileDescriptorSet = prost::Message::decode(FILE_DESCRIPTOR_SET).expect("the build embeds a valid descriptor set");
        let mut out = std::collections::HashSet::new();
        for f in &set.file {
            for s in &f.service {
                for m in &s.method {
                    out.insert(format!("/{}.{}/{}", f.package(), s.name(), m.name()));
                }
            }
        }
        out
    })
}
