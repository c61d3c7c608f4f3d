//! Canonical point ids.
//!
//! [`PointKey`] is the in-memory form of a `shoal.v1.PointId`. It has:
//! - a total order: all numeric ids, ascending, then all UUIDs by bytes
//!   (scroll cursors rely on it);
//! - an order-preserving byte encoding ([`PointKey::to_bytes`]) used as the
//!   storage key, so RocksDB iteration order is id order;
//! - the routing hash ([`PointKey::route_hash`]):
//!   `xxh3_64(bytes)` with seed 0 where `bytes` is the id as 8 little-endian
//!   bytes for numeric ids and the 16 raw bytes (RFC 4122 order) for UUIDs.
//!   This function decides shard placement and must never change.
use std::fmt;

use crate::v1::{point_id, PointId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PointKey {
    Num(u64),
    Uuid(u128),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PointIdError {
    #[error("point id is empty: set `num` or `uuid`")]
    Missing,
    #[error("point id {0:?} is not a valid UUID")]
    BadUuid(String),
    #[error("stored point key is corrupt ({0} bytes)")]
    BadKey(usize),
}

const TAG_NUM: u8 = 0;
const TAG_UUID: u8 = 1;

impl PointKey {
    /// 64-bit routing hash; see the module docs. Stable forever.
    pub fn route_hash(&self) -> u64 {
        match self {
            PointKey::Num(n) => xxhash_rust::xxh3::xxh3_64(&n.to_le_bytes()),
            PointKey::Uuid(u) => xxhash_rust::xxh3::xxh3_64(&u.to_be_bytes()),
        }
    }

    /// Order-preserving encoding: tag byte, then big-endian value.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(17);
        match self {
            PointKey::Num(n) => {
                out.push(TAG_NUM);
                out.extend_from_slice(&n.to_be_bytes());
            }
            PointKey::Uuid(u) => {
                out.push(TAG_UUID);
                out.extend_from_slice(&u.to_be_bytes());
            }
        }
        out
    }

    pub fn from_bytes(b: &[u8]) -> Result<Self, PointIdError> {
        match (b.first(), b.len()) {
            (Some(&TAG_NUM), 9) => Ok(PointKey::Num(u64::from_be_bytes(b[1..9].try_into().unwrap()))),
            (Some(&TAG_UUID), 17) => Ok(PointKey::Uuid(u128::from_be_bytes(b[1..17].try_into().unwrap()))),
            _ => Err(PointIdError::BadKey(b.len())),
        }
    }

    pub fn to_proto(&self) -> PointId {
        let kind = match self {
            PointKey::Num(n) => point_id::Kind::Num(*n),
            PointKey::Uuid(u) => point_id::Kind::Uuid(uuid::Uuid::from_u128(*u).hyphenated().to_string()),
        };
        PointId { kind: Some(kind) }
    }
}

impl TryFrom<&PointId> for PointKey {
    type Error = PointIdError;
    fn try_from(id: &PointId) -> Result<Self, Self::Error> {
        match &id.kind {
            None => Err(PointIdError::Missing),
            Some(point_id::Kind::Num(n)) => Ok(PointKey::Num(*n)),
            Some(point_id::Kind::Uuid(s)) => uuid::Uuid::parse_str(s)
                .map(|u| PointKey::Uuid(u.as_u128()))
                .map_err(|_| PointIdError::BadUuid(s.clone())),
        }
    }
}

impl From<PointKey> for PointId {
    fn from(k: PointKey) -> Self {
        k.to_proto()
    }
}

impl From<u64> for PointId {
    fn from(n: u64) -> Self {
        PointId { kind: Some(point_id::Kind::Num(n)) }
    }
}

impl From<uuid::Uuid> for PointId {
    fn from(u: uuid::Uuid) -> Self {
        PointId { kind: Some(point_id::Kind::Uuid(u.hyphenated().to_string())) }
    }
}

impl fmt::Display for PointKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PointKey::Num(n) => write!(f, "{n}"),
            PointKey::Uuid(u) => write!(f, "{}", uuid::Uuid::from_u128(*u).hyphenated()),
        }
    }
}

impl fmt::Display for PointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Some(point_id::Kind::Num(n)) => write!(f, "{n}"),
            Some(point_id::Kind::Uuid(u)) => write!(f, "{u}"),
            None => write!(f, "<empty>"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The routing hash is part of the on-disk and wire contract: these
    /// values must never change.
    #[test]
    fn route_hash_fixed_vectors() {
        let cases: [(PointKey, u64); 4] = [
            (PointKey::Num(0), 0xc77b3abb6f87acd9),
            (PointKey::Num(1), 0x2fbc593564db792e),
            (PointKey::Num(u64::MAX), 0x5111c7e47d784413),
            (PointKey::Uuid(0x67e55044_10b1_426f_9247_bb680e5fe0c8), 0xd72a412b133ecb93),
        ];
        for (k, want) in cases {
            assert_eq!(k.route_hash(), want, "hash of {k} changed: 0x{:016x}", k.route_hash());
        }
    }

    #[test]
    fn bytes_roundtrip_and_order() {
        let keys = [PointKey::Num(0), PointKey::Num(5), PointKey::Num(u64::MAX), PointKey::Uuid(0), PointKey::Uuid(u128::MAX)];
        for w in keys.windows(2) {
            assert!(w[0] < w[1]);
            assert!(w[0].to_bytes() < w[1].to_bytes(), "byte order must follow id order");
        }
        for k in keys {
            assert_eq!(PointKey::from_bytes(&k.to_bytes()).unwrap(), k);
        }
        assert_eq!(PointKey::from_bytes(&[9, 1]), Err(PointIdError::BadKey(2)));
    }

    #[test]
    fn proto_conversion() {
        let u = "67E55044-10B1-426F-9247-BB680E5FE0C8";
        let id = PointId { kind: Some(point_id::Kind::Uuid(u.into())) };
        let k = PointKey::try_from(&id).unwrap();
        assert_eq!(k.to_string(), u.to_lowercase());
        assert_eq!(PointKey::try_from(&PointId { kind: None }), Err(PointIdError::Missing));
        assert!(matches!(
            PointKey::try_from(&PointId { kind: Some(point_id::Kind::Uuid("nope".into())) }),
            Err(PointIdError::BadUuid(_))
        ));
    }
}
