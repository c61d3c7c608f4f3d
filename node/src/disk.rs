//! Free space on the data volume, and the watermark below which the node
//! stops taking new data.
//!
//! A volume that fills up under RocksDB fails its writes, and a Raft group
//! whose log write fails stops for good (openraft treats it as a storage
//! error). So the node keeps a margin instead (`--min-free-disk-mb`):
//! - below it, a leader refuses upserts with `RESOURCE_EXHAUSTED` (deletes
//!   still go through: they are how space is won back), and
//! - a follower refuses AppendEntries that carry entries (heartbeats still
//!   pass, so it does not stand for election): its leader retries, and the
//!   replica catches up by itself once space returns.
//!
//! The reading is refreshed every second ([`DiskSpace::refresh`]).
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::error::NodeError;

/// Free bytes on the volume holding `dir`, as unprivileged writers see
/// them (`f_bavail`).
pub fn free_bytes(dir: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs writes into the zeroed struct we pass; the path is a
    // valid NUL-terminated string for the duration of the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// The data volume's free space against the watermark.
#[derive(Debug)]
pub struct DiskSpace {
    dir: PathBuf,
    /// Watermark in bytes (0: off, as for in-memory nodes).
    min_free: u64,
    free: AtomicU64,
    low: AtomicBool,
}

impl DiskSpace {
    pub fn new(dir: PathBuf, min_free: u64) -> Self {
        let d = DiskSpace { dir, min_free, free: AtomicU64::new(u64::MAX), low: AtomicBool::new(false) };
        d.refresh();
        d
    }

    /// Reads the free space again; logs when the node crosses the
    /// watermark either way.
    pub fn refresh(&self) {
        if self.min_free == 0 {
            return;
        }
        let free = match free_bytes(&self.dir) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read the data volume's free space");
                return;
            }
        };
        self.free.store(free, Ordering::Relaxed);
        let low = free < self.min_free;
        if self.low.swap(low, Ordering::Relaxed) != low {
            if low {
                tracing::error!(free, min_free = self.min_free, "data volume below the free-space watermark: upserts refused, replication to this node paused until space returns");
            } else {
                tracing::info!(free, min_free = self.min_free, "data volume above the free-space watermark again: taking writes");
            }
        }
    }

    pub fn is_low(&self) -> bool {
        self.low.load(Ordering::Relaxed)
    }

    /// Free bytes at the last reading (`u64::MAX` when not watched).
    pub fn free(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }

    /// `Err(DiskFull)` while below the watermark.
    pub fn check(&self) -> Result<(), NodeError> {
        if self.is_low() {
            return Err(NodeError::DiskFull { free: self.free(), min_free: self.min_free });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watermark_follows_the_volume() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        assert!(free > 0);
        let off = DiskSpace::new(dir.path().to_path_buf(), 0);
        assert!(!off.is_low() && off.check().is_ok(), "a watermark of 0 is off");
        let fine = DiskSpace::new(dir.path().to_path_buf(), 1);
        assert!(!fine.is_low());
        let full = DiskSpace::new(dir.path().to_path_buf(), u64::MAX);
        assert!(full.is_low());
        let e = full.check().unwrap_err();
        assert_eq!(tonic::Status::from(e).code(), tonic::Code::ResourceExhausted);
        assert!(free_bytes(&dir.path().join("missing")).is_err());
    }
}
