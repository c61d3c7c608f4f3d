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

/// Writes `bytes` to `path` atomically (temporary file, sync, rename).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| io("create", &tmp, e))?;
    f.write_all(bytes).map_err(|e| io("write", &tmp, e))?;
    f.sync_all().map_err(|e| io("sync", &tmp, e))?;
    crate::storage::rename_durable(&tmp, path).map_err(|e| io("rename", &tmp, e))
}

/// xxh3-64 of a file, hex.
fn file_hash(path: &Path) -> Result<(u64, String)> {
    let mut f = BufReader::new(std::fs::File::open(path).map_err(|e| io("open", path, e))?);
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
            let tmp = path.with_extension("tmp");
            let f = std::fs::File::create(&tmp).map_err(|e| io("create", &tmp, e))?;
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
        let bytes = match std::fs::read(&path) {
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
        let mut f = BufReader::new(std::fs::File::open(&path).map_err(|e| io("open", &path, e))?);
        f.seek(SeekFrom::Start(req.cursor)).map_err(|e| io("seek", &path, e))?;
        let mut points = Vec::new();
        let mut pos = req.cursor;
        while points.len() < max as usize && pos < s.bytes {
            let mut len = [0u8; 4];
            f.read_exact(&mut len).map_err(|e| io("read", &path, e))?;
            let n = u32::from_be_bytes(len) as usize;
            let mut buf = vec![0u8; n];
            f.read_exact(&mut buf).map_err(|e| io("read", &path, e))?;
            points.push(PointStruct::decode(buf.as_slice()).map_err(|e| NodeError::BackupCorrupt(format!("{} at byte {pos}: {e}", path.display())))?);
            pos += 4 + n as u64;
        }
        Ok(ReadBackupResponse { points, next_cursor: pos, done: pos >= s.bytes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
