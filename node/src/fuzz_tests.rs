//! Property-based fuzzing of every decoder of persisted or received bytes
//! and of the validators: arbitrary input must give a value or an error,
//! never a panic, a hang or an unbounded allocation.
//!
//! CI runs proptest's default number of cases per decoder. The long run
//! (10 million cases in all, about a million per target) is
//! `PROPTEST_CASES=1000000 cargo test --release -p shoal-node --lib fuzz_tests`
//! (docs/limits.md records its results).
use proptest::prelude::*;
use shoal_proto::v1::{CollectionConfig, Filter, PointStruct, Struct};

use crate::raft::{Entry, NodeId, TypeConfig};

/// Arbitrary bytes, biased towards the shapes decoders see: a valid prefix
/// (magic, a length) followed by noise.
fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        proptest::collection::vec(any::<u8>(), 0..4096),
        (any::<u32>(), proptest::collection::vec(any::<u8>(), 0..512)).prop_map(|(n, rest)| {
            let mut v = n.to_be_bytes().to_vec();
            v.extend(rest);
            v
        }),
    ]
}

/// Arbitrary protobuf-ish bytes: a mix of valid-looking tags and varints.
fn protobuf_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        bytes(),
        proptest::collection::vec((0u8..64, any::<u64>()), 0..64).prop_map(|fields| {
            let mut v = vec![];
            for (tag, val) in fields {
                v.push(tag);
                let mut x = val;
                loop {
                    let b = (x & 0x7f) as u8;
                    x >>= 7;
                    if x == 0 {
                        v.push(b);
                        break;
                    }
                    v.push(b | 0x80);
                }
            }
            v
        }),
    ]
}

proptest! {
    /// Shard snapshot headers (magic, length, postcard `Header`).
    #[test]
    fn fuzz_snapshot_header(body in bytes(), len in any::<u32>()) {
        let mut f = crate::raft::snapshot::MAGIC.to_vec();
        f.extend_from_slice(&len.to_be_bytes());
        f.extend_from_slice(&body);
        let _ = crate::raft::snapshot::read_header(&mut f.as_slice());
        let _ = crate::raft::snapshot::read_header(&mut body.as_slice());
    }

    /// Raft log entries as stored (postcard).
    #[test]
    fn fuzz_log_entries(b in bytes()) {
        let _ = postcard::from_bytes::<Entry>(&b);
    }

    /// Raft messages as received from a peer (postcard, `Raft` service).
    #[test]
    fn fuzz_raft_messages(b in bytes()) {
        let _ = postcard::from_bytes::<openraft::raft::AppendEntriesRequest<TypeConfig>>(&b);
        let _ = postcard::from_bytes::<openraft::raft::VoteRequest<NodeId>>(&b);
        let _ = postcard::from_bytes::<openraft::raft::InstallSnapshotRequest<TypeConfig>>(&b);
    }

    /// Stored points (protobuf), and their validation as an upsert.
    #[test]
    fn fuzz_stored_points(b in protobuf_bytes()) {
        let _ = crate::storage::shard_store::decode_point(&b);
        if let Ok(p) = <PointStruct as prost::Message>::decode(b.as_slice()) {
            let _ = shoal_proto::validate::vector("v", &p.vector, 4, shoal_proto::v1::Metric::Cosine);
            if let Some(pl) = &p.payload {
                let _ = shoal_proto::validate::payload("p", pl, &[]);
            }
        }
    }

    /// Payload index keys as stored.
    #[test]
    fn fuzz_index_keys(b in bytes()) {
        if let Ok(e) = crate::storage::IndexEntry::decode(&b) {
            // What decodes encodes back to the same bytes.
            let again = e.encode(&[]);
            prop_assert_eq!(crate::storage::IndexEntry::decode(&again).unwrap(), e);
        }
    }

    /// The split state record (postcard).
    #[test]
    fn fuzz_range_state(b in bytes()) {
        let _ = crate::shard::split::RangeState::decode(Some(&b));
    }

    /// The usearch sidecar (`{"checksum":..,"next_offset":..}`).
    #[test]
    fn fuzz_sidecar(s in "\\PC{0,200}", n in any::<u64>(), c in any::<u64>()) {
        let _ = crate::shard::parse_sidecar(&s);
        let made = format!("{{\"checksum\":{c},\"next_offset\":{n},\"seq\":1}}");
        let parsed = crate::shard::parse_sidecar(&made);
        match u32::try_from(n) {
            Ok(n) => prop_assert_eq!(parsed, Some((c, n))),
            Err(_) => prop_assert_eq!(parsed, None),
        }
    }

    /// Validators over arbitrary decoded requests.
    #[test]
    fn fuzz_validators(b in protobuf_bytes()) {
        if let Ok(f) = <Filter as prost::Message>::decode(b.as_slice()) {
            let _ = shoal_proto::validate::filter(&f);
        }
        if let Ok(c) = <CollectionConfig as prost::Message>::decode(b.as_slice()) {
            let _ = shoal_proto::validate::collection_config(&c);
        }
        if let Ok(s) = <Struct as prost::Message>::decode(b.as_slice()) {
            let _ = shoal_proto::validate::payload("p", &s, &[]);
        }
    }
}
