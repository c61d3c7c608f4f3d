//! Collection backups (docs/operations.md#backups).
//!
//! A backup is a directory under the node's `--backup-root`, which must be
//! one shared filesystem mounted at the same path on every node (like a
//! shared-filesystem snapshot repository elsewhere):
//!
//! ```text
//! <root>/<name>/shard-<id>.pts   u32 BE length ++ shoal.v1.PointStruct, per point
//! <root>/<name>/manifest.json    collection config, shard ranges, per-file
//!                                points, bytes and xxh3-64
//! ```
//!
//! [`Engine::create_backup`] runs on the metadata leader: it asks each
//! shard's leader for its part ([`Engine::backup_shard`]: a linearizable
//! read barrier, then the shard exported under its writer lock, so each
//! shard is a consistent copy as of one moment), then writes the manifest
//! last; a backup without a manifest is incomplete and is never restored.
//! Files are written to a temporary name, synced and renamed. Names are
//! validated and every path is checked to stay inside the root
//! ([`resolve`]).
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use prost::Message;
use serde::{Deserialize, Serialize};
use shoal_proto::internal::v1::*;
use shoal_proto::v1::PointStruct;
use shoal_proto::validate::invalid;

use super::Engine;
use crate::error::{NodeError, Result};

/// Manifest format version.
pub const FORMAT: u32 = 1;
/// Points per `ReadBackup` page, at most.
pub const MAX_READ_POINTS: u32 = 1_000;
const MANIFEST: &str = "manifest.json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShardFile {
    pub shard_id: u32,
    pub range_start: u64,
    pub range_end: u64,
    pub file: String,
    pub points: u64,
    pub bytes: u64,
    pub xxh3: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: u32,
    pub name: String,
    pub collection: String,
    pub created_unix_ms: u64,
    /// Readable copy of the main settings; `config_protobuf_hex` is the
    /// exact `shoal.v1.CollectionConfig`.
    pub dimension: u32,
    pub metric: String,
    pub shard_count: u32,
    pub replication_factor: u32,
    pub config_protobuf_hex: String,
    pub shards: Vec<ShardFile>,
}

impl Manifest {
    pub fn points(&self) -> u64 {
        self.shards.iter().map(|s| s.points).sum()
    }
}

/// The directory of backup `name` under `root`: refuses names that are
/// empty, too long, `.`/`..`, or hold anything but `[A-Za-z0-9._-]`, and
/// (for an existing root) any path that resolves outside it.
pub fn resolve(root: &Path, name: &str) -> Result<PathBuf> {
    let ok = !name.is_empty() && name.len() <= 128 && name != "." && name != ".." && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !ok {
        return Err(invalid("name", format!("backup name {name:?} must be 1 to 128 characters of [A-Za-z0-9._-], not \".\" or \"..\"")).into());
    }
    let dir = root.join(name);
    if let (Ok(r), Ok(d)) = (root.canonicalize(), dir.canonicalize()) {
        if !d.starts_with(&r) || d == r {
            return Err(invalid("name", format!("backup {name:?} resolves outside the backup root")).into());
        }
    }
    Ok(dir)
}

fn io(what: &str, path: &Path, e: std::io::Error) -> NodeError {
    NodeError::Backup(format!("{what} {}: {e}", path.display()))
}

/// Largest manifest read.
pub const MAX_MANIFEST_BYTES: u64 = 16 << 20;
/// Largest point record in a shard file (a point is at most one shard
/// write).
pub const MAX_RECORD_BYTES: usize = shoal_proto::limits::MAX_WRITE_BYTES;
/// Bytes of points in one `ReadBackup` answer (half the message limit).
pub const MAX_READ_BYTES: usize = shoal_proto::limits::MAX_MESSAGE_BYTES / 2;

/// A new temporary file beside `path` with a random name, created with
/// `O_EXCL | O_NOFOLLOW` (a planted file or symlink at a predictable name
/// cannot redirect the write), readable by the owner and group only.
fn create_temp(path: &Path) -> Result<(std::fs::File, PathBuf)> {
    use std::os::unix::fs::OpenOptionsExt;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{:016x}.tmp", rand::random::<u64>()));
    let f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o640).custom_flags(libc::O_NOFOLLOW).open(&tmp).map_err(|e| io("create", &tmp, e))?;
    Ok((f, tmp))
}

/// Opens a backup file for reading, refusing symlinks.
fn open_read(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path)
}

/// Writes `bytes` to `path` atomically (temporary file, sync, rename).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let (mut f, tmp) = create_temp(path)?;
    f.write_all(bytes).map_err(|e| io("write", &tmp, e))?;
    f.sync_all().map_err(|e| io("sync", &tmp, e))?;
    crate::storage::rename_durable(&tmp, path).map_err(|e| io("rename", &tmp, e))
}

/// xxh3-64 of a file, hex.
fn file_hash(path: &Path) -> Result<(u64, String)> {
    let mut f = BufReader::new(open_read(path).map_err(|e| io("open", path, e))?);
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).map_err(|e| io("read", path, e))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((n, format!("{:016x}", h.digest())))
}

impl Engine {
    fn backup_root(&self) -> Result<&Path> {
        self.cfg
            .backup_root
            .as_deref()
            .ok_or_else(|| NodeError::Precondition(format!("backups are not configured on node {} (start it with --backup-root DIR, a filesystem shared by every node)", self.cfg.node_id)))
    }

    /// Writes this node's replica of one shard into backup `name`, after a
    /// linearizable read barrier. Shard leader only.
    pub async fn backup_shard(&self, req: BackupShardRequest) -> Result<BackupShardResponse> {
        let r = req.shard.ok_or_else(|| invalid("shard", "shard reference is missing"))?;
        let dir = resolve(self.backup_root()?, &req.name)?;
        let replica = self.replica(&r.collection, r.shard_id, 0)?;
        match replica.raft.ensure_linearizable().await {
            Ok(_) => {}
            Err(openraft::error::RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(f))) => {
                let leader = f.leader_id.zip(f.leader_node.map(|n| n.addr));
                return Err(NodeError::NotLeader { group: replica.group.clone(), leader });
            }
            Err(e) => return Err(NodeError::Raft(e.to_string())),
        }
        let shard = replica.shard();
        if let Some(p) = shard.pending_split() {
            return Err(NodeError::Precondition(format!("{}/{} is being split into shard {}; back up again when `shoalctl cluster ops` shows the split done", r.collection, r.shard_id, p.child)));
        }
        let file = format!("shard-{}.pts", r.shard_id);
        let path = dir.join(&file);
        tokio::task::spawn_blocking(move || -> Result<BackupShardResponse> {
            std::fs::create_dir_all(&dir).map_err(|e| io("create", &dir, e))?;
            let (f, tmp) = create_temp(&path)?;
            let mut w = BufWriter::new(f);
            let points = shard.backup_to(&mut w)?;
            let f = w.into_inner().map_err(|e| io("write", &tmp, e.into_error()))?;
            f.sync_all().map_err(|e| io("sync", &tmp, e))?;
            crate::storage::rename_durable(&tmp, &path).map_err(|e| io("rename", &tmp, e))?;
            let (bytes, xxh3) = file_hash(&path)?;
            Ok(BackupShardResponse { file, points, bytes, xxh3 })
        })
        .await
        .map_err(|e| NodeError::Backup(e.to_string()))?
    }

    /// Backs collection `collection` up as `name`. Metadata leader only.
    pub async fn create_backup(&self, collection: &str, name: &str) -> Result<Manifest> {
        let root = self.backup_root()?.to_path_buf();
        let dir = resolve(&root, name)?;
        if dir.join(MANIFEST).exists() {
            return Err(NodeError::BackupExists(name.to_string()));
        }
        let entry =
            self.cluster_map().collections.into_iter().find(|c| c.config.as_ref().is_some_and(|x| x.name == collection)).ok_or_else(|| NodeError::CollectionNotFound(collection.to_string()))?;
        std::fs::create_dir_all(&dir).map_err(|e| io("create", &dir, e))?;
        resolve(&root, name)?;
        let mut shards = Vec::new();
        if entry.shards.iter().any(|s| s.splitting) {
            return Err(NodeError::Precondition(format!("{collection} has a shard split in progress; back up again when `shoalctl cluster ops` shows it done")));
        }
        for s in &entry.shards {
            let req = BackupShardRequest { shard: Some(ShardRef { collection: collection.to_string(), shard_id: s.shard_id, epoch: 0 }), name: name.to_string() };
            let part = self
                .on_shard_leader(collection, s.shard_id, move |mut c| {
                    let req = req.clone();
                    async move { c.backup_shard(req).await }
                })
                .await
                .map_err(|st| match st.code() {
                    tonic::Code::Unavailable => NodeError::NoQuorum { group: format!("{collection}/{}", s.shard_id), detail: st.message().to_string() },
                    _ => NodeError::Backup(format!("{collection}/{}: {}", s.shard_id, st.message())),
                })?;
            shards.push(ShardFile { shard_id: s.shard_id, range_start: s.range_start, range_end: s.range_end, file: part.file, points: part.points, bytes: part.bytes, xxh3: part.xxh3 });
        }
        let config = entry.config.unwrap_or_default();
        let manifest = Manifest {
            format: FORMAT,
            name: name.to_string(),
            collection: collection.to_string(),
            created_unix_ms: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
            dimension: config.dimension,
            metric: shoal_proto::v1::Metric::try_from(config.metric).map_or("?".into(), |m| m.as_str_name().to_string()),
            shard_count: config.shard_count,
            replication_factor: config.replication_factor,
            config_protobuf_hex: config.encode_to_vec().iter().map(|b| format!("{b:02x}")).collect(),
            shards,
        };
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| NodeError::Backup(e.to_string()))?;
        write_atomic(&dir.join(MANIFEST), &json)?;
        tracing::info!(collection, name, points = manifest.points(), "backup written");
        Ok(manifest)
    }

    /// A backup's manifest.
    pub fn get_backup(&self, name: &str) -> Result<Manifest> {
        let path = resolve(self.backup_root()?, name)?.join(MANIFEST);
        let read = |p: &Path| -> std::io::Result<Vec<u8>> {
            let mut b = Vec::new();
            open_read(p)?.take(MAX_MANIFEST_BYTES + 1).read_to_end(&mut b)?;
            Ok(b)
        };
        let bytes = match read(&path) {
            Ok(b) if b.len() as u64 > MAX_MANIFEST_BYTES => return Err(NodeError::BackupCorrupt(format!("{}: larger than {MAX_MANIFEST_BYTES} bytes", path.display()))),
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(NodeError::BackupNotFound(name.to_string())),
            Err(e) => return Err(io("read", &path, e)),
        };
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| NodeError::BackupCorrupt(format!("{}: {e}", path.display())))?;
        if m.format != FORMAT {
            return Err(NodeError::BackupCorrupt(format!("{}: format {} (this release reads {FORMAT})", path.display(), m.format)));
        }
        Ok(m)
    }

    /// One page of a backed-up shard's points (blocking). Verifies the
    /// whole file against the manifest when `cursor` is 0.
    pub fn read_backup(&self, req: &ReadBackupRequest) -> Result<ReadBackupResponse> {
        let m = self.get_backup(&req.name)?;
        let s = m.shards.iter().find(|s| s.shard_id == req.shard_id).ok_or_else(|| invalid("shard_id", format!("backup {} has no shard {}", req.name, req.shard_id)))?;
        let dir = resolve(self.backup_root()?, &req.name)?;
        let path = dir.join(&s.file);
        if !path.starts_with(&dir) || s.file.contains('/') || s.file.contains("..") {
            return Err(NodeError::BackupCorrupt(format!("manifest names a file outside the backup: {:?}", s.file)));
        }
        if req.cursor == 0 {
            let (bytes, hash) = file_hash(&path)?;
            if bytes != s.bytes || hash != s.xxh3 {
                return Err(NodeError::BackupCorrupt(format!("{}: {bytes} bytes with xxh3 {hash}, the manifest says {} bytes with xxh3 {}", path.display(), s.bytes, s.xxh3)));
            }
        }
        let max = if req.max_points == 0 { MAX_READ_POINTS } else { req.max_points.min(MAX_READ_POINTS) };
        let (points, pos) = read_page(&path, req.cursor, max as usize, s.bytes)?;
        Ok(ReadBackupResponse { points, next_cursor: pos, done: pos >= s.bytes })
    }
}

/// Points of a shard file from `cursor`: at most `max`, stopping once the
/// page passes [`MAX_READ_BYTES`] (a record is at most
/// [`MAX_RECORD_BYTES`], so a page stays under the message limit). Returns
/// them and where the next page starts. `end` is the file's length per the
/// manifest: no record may claim to run past it.
fn read_page(path: &Path, cursor: u64, max: usize, end: u64) -> Result<(Vec<PointStruct>, u64)> {
    let mut f = BufReader::new(open_read(path).map_err(|e| io("open", path, e))?);
    f.seek(SeekFrom::Start(cursor)).map_err(|e| io("seek", path, e))?;
    let mut points = Vec::new();
    let mut pos = cursor;
    let mut sent = 0usize;
    while points.len() < max && pos < end && sent < MAX_READ_BYTES {
        let mut len = [0u8; 4];
        f.read_exact(&mut len).map_err(|e| io("read", path, e))?;
        let n = u32::from_be_bytes(len) as usize;
        if n > MAX_RECORD_BYTES || pos + 4 + n as u64 > end {
            return Err(NodeError::BackupCorrupt(format!("{} at byte {pos}: a record of {n} bytes (the limit is {MAX_RECORD_BYTES}, the file ends at {end})", path.display())));
        }
        sent += n;
        let mut buf = vec![0u8; n];
        f.read_exact(&mut buf).map_err(|e| io("read", path, e))?;
        points.push(PointStruct::decode(buf.as_slice()).map_err(|e| NodeError::BackupCorrupt(format!("{} at byte {pos}: {e}", path.display())))?);
        pos += 4 + n as u64;
    }
    Ok((points, pos))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A damaged or hostile shard file cannot make a read allocate what its
    /// length prefixes claim, and a symlink is not followed.
    #[test]
    fn backup_reads_are_bounded_and_follow_no_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let good = PointStruct { id: Some(7u64.into()), vector: vec![1.0; 4], payload: None, sparse: Default::default(), vectors: Default::default() }.encode_to_vec();
        let mut file = (good.len() as u32).to_be_bytes().to_vec();
        file.extend_from_slice(&good);
        let p = dir.path().join("shard-0.pts");
        std::fs::write(&p, &file).unwrap();
        let (pts, next) = read_page(&p, 0, 10, file.len() as u64).unwrap();
        assert_eq!((pts.len(), next), (1, file.len() as u64));
        // A record claiming 4 GiB.
        let mut hostile = file.clone();
        hostile.extend_from_slice(&u32::MAX.to_be_bytes());
        std::fs::write(&p, &hostile).unwrap();
        let e = read_page(&p, 0, 10, hostile.len() as u64 + (1 << 32)).unwrap_err();
        assert!(matches!(e, NodeError::BackupCorrupt(ref m) if m.contains("a record of 4294967295 bytes")), "{e}");
        // A record running past the file's length per the manifest.
        let e = read_page(&p, file.len() as u64 - good.len() as u64 - 4, 10, file.len() as u64 - 1).unwrap_err();
        assert!(matches!(e, NodeError::BackupCorrupt(_)), "{e}");
        // A shard file replaced by a symlink is refused, not followed.
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, &file).unwrap();
        std::fs::remove_file(&p).unwrap();
        std::os::unix::fs::symlink(&target, &p).unwrap();
        assert!(read_page(&p, 0, 10, file.len() as u64).is_err());
        assert!(file_hash(&p).is_err());
    }

    /// Temporary files get fresh random names and never open an existing
    /// file or symlink.
    #[test]
    fn backup_writes_never_reuse_or_follow_a_temporary_name() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("manifest.json");
        let (_, a) = create_temp(&target).unwrap();
        let (_, b) = create_temp(&target).unwrap();
        assert_ne!(a, b);
        assert!(a.file_name().unwrap().to_string_lossy().starts_with(".manifest.json."));
        // A planted symlink where the old fixed name was: untouched.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("manifest.tmp")).unwrap();
        write_atomic(&target, b"{}").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "{}");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&target).unwrap().permissions().mode() & 0o777, 0o640);
    }

    #[test]
    fn names_stay_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        for bad in ["", ".", "..", "../x", "a/b", "/abs", "x\0y", "naïve", &"x".repeat(129)] {
            assert!(matches!(resolve(root.path(), bad), Err(NodeError::Invalid(_))), "{bad:?} accepted");
        }
        for good in ["nightly-2026.11.24", "a", "A_b-c.d", "..x"] {
            assert_eq!(resolve(root.path(), good).unwrap(), root.path().join(good));
        }
        // A symlink planted in the root cannot lead outside it.
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("link")).unwrap();
        assert!(matches!(resolve(root.path(), "link"), Err(NodeError::Invalid(_))));
    }
}
