//! Generates the gRPC code for `shoal.v1` and `shoal.internal.v1`, plus a
//! file descriptor set for server reflection.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        "proto/shoal/v1/common.proto",
        "proto/shoal/v1/collections.proto",
        "proto/shoal/v1/points.proto",
        "proto/shoal/v1/cluster.proto",
        "proto/shoal/internal/v1/internal.proto",
    ];
    tonic_prost_build::configure()
        // Maps (payload objects) as BTreeMap: encoding is canonical, so
        // equal payloads are equal bytes (replica digests, checksums).
        .btree_map(".")
        .file_descriptor_set_path(out.join("shoal_descriptor.bin"))
        .compile_protos(&protos, &["proto"])?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
