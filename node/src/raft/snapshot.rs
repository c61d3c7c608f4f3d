//! Snapshot data and the shard snapshot file format.
//!
//! [`SnapshotData`] is what openraft reads chunks from (on the sender) and
//! writes chunks into (on the receiver). The metadata group's snapshots are
//! a few kilobytes and stay in memory; shard snapshots are files, so a
//! 400k-vector shard is never held in memory whole, and openraft streams
//! them in `snapshot_max_chunk_size` chunks (3 MiB) over the `Raft` gRPC
//! service.
//!
//! ## Shard snapshot file
//! ```text
//! "SHOALSN3"  u32 BE header length  postcard Header
//! points:  Header.points frames of  u32 BE length ++ protobuf StoredPoint
//! index:   Header.index_bytes bytes of the usearch file (may be 0)
//! ```
//! Both sections carry an xxh3-64 checksum in the header. Points keep their
//! offsets, so the shipped HNSW file is valid for them as it is: the
//! receiver loads it instead of rebuilding the graph (and reconciles the
//! few versions it lacks, as at every open).
use std::io::{Read, Write};
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use openraft::{LogId, StoredMembership};
use serde::{Deserialize, Serialize};

use super::NodeId;

/// Format 6: the header names the graph's kind and calibration (written
/// only for quantized graphs; others are written as format 5, which every
/// node of the previous version reads).
pub const MAGIC: &[u8; 8] = b"SHOALSN6";
/// Format 5: the header carries the payload index specs; its body is
/// format 6's without the trailing empty `index_kind`.
pub const MAGIC_V5: &[u8; 8] = b"SHOALSN5";
/// Format 4 (no specs), still read: its body is format 5's without the
/// trailing empty `specs` (one zero byte in postcard).
pub const MAGIC_V4: &[u8; 8] = b"SHOALSN4";
/// Format 3 (no request ids), still read: a node of the previous version
/// may send one during a rolling upgrade.
pub const MAGIC_V3: &[u8; 8] = b"SHOALSN3";
/// A header larger than this is corrupt (it holds a membership, ids and
/// up to `MAX_REQUESTS` request ids of at most 36 bytes each).
pub const MAX_HEADER: u32 = 4 << 20;

/// Snapshot bytes in memory (metadata group) or in a file (shards).
#[derive(Debug)]
pub enum SnapshotData {
    Memory(std::io::Cursor<Vec<u8>>),
    File { file: tokio::fs::File, path: PathBuf },
}

impl SnapshotData {
    pub fn memory(bytes: Vec<u8>) -> Box<Self> {
        Box::new(SnapshotData::Memory(std::io::Cursor::new(bytes)))
    }

    /// Opens a finished snapshot file for reading.
    pub async fn open(path: PathBuf) -> std::io::Result<Box<Self>> {
        let file = tokio::fs::File::open(&path).await?;
        Ok(Box::new(SnapshotData::File { file, path }))
    }

    /// All bytes (the metadata group's snapshots are small).
    pub async fn into_bytes(self) -> std::io::Result<Vec<u8>> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        match self {
            SnapshotData::Memory(c) => Ok(c.into_inner()),
            SnapshotData::File { mut file, .. } => {
                file.seek(std::io::SeekFrom::Start(0)).await?;
                let mut out = Vec::new();
                file.read_to_end(&mut out).await?;
                Ok(out)
            }
        }
    }
}

impl tokio::io::AsyncRead for SnapshotData {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            SnapshotData::Memory(c) => Pin::new(c).poll_read(cx, buf),
            SnapshotData::File { file, .. } => Pin::new(file).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for SnapshotData {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            SnapshotData::Memory(c) => Pin::new(c).poll_write(cx, buf),
            SnapshotData::File { file, .. } => Pin::new(file).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            SnapshotData::Memory(c) => Pin::new(c).poll_flush(cx),
            SnapshotData::File { file, .. } => Pin::new(file).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            SnapshotData::Memory(c) => Pin::new(c).poll_shutdown(cx),
            SnapshotData::File { file, .. } => Pin::new(file).poll_shutdown(cx),
        }
    }
}

impl tokio::io::AsyncSeek for SnapshotData {
    fn start_seek(self: Pin<&mut Self>, position: std::io::SeekFrom) -> std::io::Result<()> {
        match self.get_mut() {
            SnapshotData::Memory(c) => Pin::new(c).start_seek(position),
            SnapshotData::File { file, .. } => Pin::new(file).start_seek(position),
        }
    }
    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<u64>> {
        match self.get_mut() {
            SnapshotData::Memory(c) => Pin::new(c).poll_complete(cx),
            SnapshotData::File { file, .. } => Pin::new(file).poll_complete(cx),
        }
    }
}

/// The header of a shard snapshot file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub snapshot_id: String,
    pub applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, openraft::BasicNode>,
    /// Point frames in the points section, and its length and checksum.
    pub points: u64,
    pub points_bytes: u64,
    pub points_checksum: u64,
    /// The shard's offset counter and write sequence at export.
    pub next_offset: u32,
    pub seq: u64,
    /// The usearch file: length, checksum, offset counter when saved.
    pub index_bytes: u64,
    pub index_checksum: u64,
    pub index_next_offset: u32,
    /// The shard's split state record (postcard `RangeState`; empty: none).
    pub range: Vec<u8>,
    /// The shard's request-id table, oldest first (`shard::requests`; at
    /// most `MAX_REQUESTS`, about 1.5 MB).
    pub requests: Vec<(crate::shard::requests::RequestId, crate::shard::requests::Done)>,
    /// The payload index specs the shard had at export (a protobuf
    /// `CollectionConfig` holding only them); empty from older senders.
    pub specs: Vec<u8>,
    /// The graph's kind and calibration as its sidecar names them
    /// (`HnswIndex::calibration`); empty from older senders and for f32
    /// and f16 graphs written as format 5.
    pub index_kind: String,
}

/// A header of format 3 (before request ids), still read.
#[derive(Deserialize)]
struct HeaderV3 {
    snapshot_id: String,
    applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
    points: u64,
    points_bytes: u64,
    points_checksum: u64,
    next_offset: u32,
    seq: u64,
    index_bytes: u64,
    index_checksum: u64,
    index_next_offset: u32,
    range: Vec<u8>,
}

impl From<HeaderV3> for Header {
    fn from(h: HeaderV3) -> Self {
        Header {
            snapshot_id: h.snapshot_id,
            applied: h.applied,
            membership: h.membership,
            points: h.points,
            points_bytes: h.points_bytes,
            points_checksum: h.points_checksum,
            next_offset: h.next_offset,
            seq: h.seq,
            index_bytes: h.index_bytes,
            index_checksum: h.index_checksum,
            index_next_offset: h.index_next_offset,
            range: h.range,
            requests: Vec::new(),
            specs: Vec::new(),
            index_kind: String::new(),
        }
    }
}

impl Header {
    /// Total file length this header promises.
    pub fn file_len(&self, header_len: usize) -> u64 {
        (MAGIC.len() + 4 + header_len) as u64 + self.points_bytes + self.index_bytes
    }
}

/// Why a snapshot file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    #[error("snapshot i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a Shoal shard snapshot (bad magic)")]
    Magic,
    #[error("snapshot header: {0}")]
    Header(String),
    #[error("snapshot {section} section is corrupt: {detail}")]
    Corrupt { section: &'static str, detail: String },
}

/// Writes the magic and the header; returns the header's encoded length.
pub fn write_header(out: &mut impl Write, h: &Header) -> Result<usize, SnapshotFileError> {
    let quantized = h.index_kind.contains(':');
    let mut body = if quantized { postcard::to_stdvec(h) } else { postcard::to_stdvec(&Header { index_kind: String::new(), ..h.clone() }) }.map_err(|e| SnapshotFileError::Header(e.to_string()))?;
    let magic = if quantized {
        MAGIC
    } else {
        // Format 5: the body of an empty `index_kind`, less its one byte.
        body.pop();
        MAGIC_V5
    };
    out.write_all(magic)?;
    out.write_all(&(body.len() as u32).to_be_bytes())?;
    out.write_all(&body)?;
    Ok(body.len())
}

/// Reads the magic and the header; returns it with its encoded length.
pub fn read_header(r: &mut impl Read) -> Result<(Header, usize), SnapshotFileError> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC && &magic != MAGIC_V5 && &magic != MAGIC_V4 && &magic != MAGIC_V3 {
        return Err(SnapshotFileError::Magic);
    }
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len);
    if len > MAX_HEADER {
        return Err(SnapshotFileError::Header(format!("header length {len} exceeds {MAX_HEADER}")));
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body)?;
    let h = if &magic == MAGIC_V3 {
        postcard::from_bytes::<HeaderV3>(&body).map(Header::from)
    } else if &magic == MAGIC_V4 {
        body.extend_from_slice(&[0, 0]);
        postcard::from_bytes(&body)
    } else if &magic == MAGIC_V5 {
        body.push(0);
        postcard::from_bytes(&body)
    } else {
        postcard::from_bytes(&body)
    }
    .map_err(|e| SnapshotFileError::Header(e.to_string()))?;
    Ok((h, len as usize))
}

/// A writer that hashes (xxh3-64) and counts what passes through it.
pub struct Hashing<W> {
    pub inner: W,
    pub hasher: xxhash_rust::xxh3::Xxh3,
    pub bytes: u64,
}

impl<W> Hashing<W> {
    pub fn new(inner: W) -> Self {
        Hashing { inner, hasher: xxhash_rust::xxh3::Xxh3::new(), bytes: 0 }
    }
    pub fn digest(&self) -> u64 {
        self.hasher.digest()
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_rejects_garbage() {
        let h = Header {
            snapshot_id: "c-0-1-7".into(),
            applied: Some(openraft::testing::log_id(1, 1, 7)),
            membership: StoredMembership::default(),
            points: 3,
            points_bytes: 120,
            points_checksum: 9,
            next_offset: 5,
            seq: 4,
            index_bytes: 1000,
            index_checksum: 11,
            index_next_offset: 5,
            range: vec![],
            requests: vec![([7; 16], crate::shard::requests::Done { index: 6, affected: 2 })],
            specs: vec![1, 2, 3],
            index_kind: "i8:0;4096".into(),
        };
        let mut buf = Vec::new();
        let n = write_header(&mut buf, &h).unwrap();
        assert_eq!(buf.len(), 12 + n);
        assert_eq!(h.file_len(n), buf.len() as u64 + 1120);
        let (back, m) = read_header(&mut buf.as_slice()).unwrap();
        assert_eq!((back, m), (h.clone(), n));

        // Format 4 is the same header without the specs, and format 3
        // without the request ids too (postcard: an empty list is one
        // trailing zero byte).
        // An f32 graph's header is written as format 5 (readable by the
        // previous version), a quantized one's as format 6.
        assert_eq!(&buf[..8], MAGIC);
        let f32h = Header { index_kind: "f32".into(), ..h.clone() };
        let mut bf = Vec::new();
        write_header(&mut bf, &f32h).unwrap();
        assert_eq!(&bf[..8], MAGIC_V5);
        assert_eq!(read_header(&mut bf.as_slice()).unwrap().0, Header { index_kind: String::new(), ..h.clone() });
        let v5 = Header { specs: vec![], index_kind: String::new(), ..h.clone() };
        let mut b5 = Vec::new();
        let n5 = write_header(&mut b5, &v5).unwrap();
        assert_eq!(&b5[..8], MAGIC_V5);
        assert_eq!(b5.last(), Some(&0));
        let mut v4 = MAGIC_V4.to_vec();
        v4.extend_from_slice(&(n5 as u32 - 1).to_be_bytes());
        v4.extend_from_slice(&b5[12..b5.len() - 1]);
        assert_eq!(read_header(&mut v4.as_slice()).unwrap(), (v5.clone(), n5 - 1));
        let v4h = Header { requests: vec![], specs: vec![], index_kind: String::new(), ..h.clone() };
        let mut b4 = Vec::new();
        let n4 = write_header(&mut b4, &v4h).unwrap();
        assert_eq!(&b4[b4.len() - 2..], &[0, 0]);
        let mut v3 = MAGIC_V3.to_vec();
        v3.extend_from_slice(&(n4 as u32 - 2).to_be_bytes());
        v3.extend_from_slice(&b4[12..b4.len() - 2]);
        assert_eq!(read_header(&mut v3.as_slice()).unwrap(), (v4h, n4 - 2));

        let mut bad = buf.clone();
        bad[0] = b'X';
        assert!(matches!(read_header(&mut bad.as_slice()), Err(SnapshotFileError::Magic)));
        let mut huge = buf.clone();
        huge[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(read_header(&mut huge.as_slice()), Err(SnapshotFileError::Header(_))));
        assert!(matches!(read_header(&mut &buf[..10]), Err(SnapshotFileError::Io(_))));
    }

    #[test]
    fn hashing_matches_one_shot_digest() {
        let data: Vec<u8> = (0..10_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let mut w = Hashing::new(Vec::new());
        for c in data.chunks(777) {
            w.write_all(c).unwrap();
        }
        assert_eq!(w.digest(), xxhash_rust::xxh3::xxh3_64(&data));
        assert_eq!(w.bytes, data.len() as u64);
        let mut r = Hashing::new(data.as_slice());
        std::io::copy(&mut r, &mut std::io::sink()).unwrap();
        assert_eq!(r.digest(), xxhash_rust::xxh3::xxh3_64(&data));
    }
}
