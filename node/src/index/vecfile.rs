//! The full-precision vector file of a quantized graph: one fixed-size
//! slot per point-version offset, memory-mapped for reading.
//!
//! Layout: a 64-byte header (`SHOALVEC`, format version, dimension), then
//! slot `o` at `64 + o * stride`: `dim` little-endian f32 (unit length for
//! cosine, as the graph stores them) and a CRC-32 of the offset and those
//! bytes. Slots are written with `pwrite` and read through a shared
//! mapping (Linux keeps the two coherent), so there is no RAM copy beyond
//! the page cache. An offset's slot is written again only when a later
//! version reuses the offset, which the shard allows only once no search
//! can reach the old version.
//!
//! The file is derived state: RocksDB holds every vector. A shard that
//! scans its stored points at open checks each live version's slot against
//! its stored vector and rewrites the slots that differ or fail their
//! checksum (a crash between the apply and the slot write, a damaged disk
//! block), so nothing acknowledged is lost. A clean restart from the key
//! checkpoint (shard/keyfile.rs) checks only each slot's checksum: nothing
//! was written after the save that synced the file, so a slot with a valid
//! checksum holds its stored version. A header that does not match starts
//! the file over.
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memmap2::{Advice, Mmap, MmapOptions};
use parking_lot::{Mutex, RwLock, RwLockReadGuard};

const MAGIC: &[u8; 8] = b"SHOALVEC";
const FORMAT: u32 = 1;
const HEADER: u64 = 64;
/// Slots the file grows by at least.
const GROW_SLOTS: u64 = 1024;

/// Where the mapped vectors are meant to live (`shoal.v1.VectorMemory`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Memory {
    /// Read in when mapped and advised to stay.
    Ram,
    /// Left to the page cache.
    Cached,
    /// No read-ahead (`MADV_RANDOM`).
    Cold,
}

pub struct VectorFile {
    path: PathBuf,
    file: File,
    dim: usize,
    stride: u64,
    memory: RwLock<Memory>,
    map: RwLock<Option<Mmap>>,
    /// Slots the file has room for (its length less the header).
    slots: RwLock<u64>,
    grow: Mutex<()>,
}

/// Read access to the slots; holds off a remap while alive.
pub struct Reader<'a> {
    map: RwLockReadGuard<'a, Option<Mmap>>,
    dim: usize,
    stride: u64,
}

impl Reader<'_> {
    /// The vector in slot `off`; `None` past the mapped end. An unwritten
    /// slot reads as zeros (callers ask only for offsets they wrote).
    pub fn get(&self, off: u64) -> Option<&[f32]> {
        let m = self.map.as_ref()?;
        let at = usize::try_from(HEADER + off.checked_mul(self.stride)?).ok()?;
        let bytes = m.get(at..at + self.dim * 4)?;
        // The mapping is page aligned and `at` a multiple of 4.
        bytemuck::try_cast_slice(bytes).ok()
    }
}

fn checksum(off: u64, bytes: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&off.to_le_bytes());
    h.update(bytes);
    h.finalize()
}

impl VectorFile {
    /// Opens `path`, or creates it, for vectors of `dim` dimensions. A file
    /// with another header is started over (its slots fail verification
    /// and the shard rewrites them from storage).
    pub fn open(path: &Path, dim: usize, memory: Memory) -> std::io::Result<VectorFile> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        let mut header = [0u8; HEADER as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..12].copy_from_slice(&FORMAT.to_le_bytes());
        header[12..16].copy_from_slice(&(dim as u32).to_le_bytes());
        let mut found = [0u8; HEADER as usize];
        let len = file.metadata()?.len();
        let file = if len < HEADER || file.read_exact_at(&mut found, 0).is_err() || found != header {
            if len > 0 {
                tracing::warn!(path = %path.display(), "vector file header does not match; starting it over");
            }
            // A new file, not a truncation: a mapping of the old one (a
            // graph still being searched) keeps its pages.
            drop(file);
            let _ = std::fs::remove_file(path);
            let file = OpenOptions::new().read(true).write(true).create_new(true).open(path)?;
            file.write_all_at(&header, 0)?;
            file
        } else {
            file
        };
        let stride = dim as u64 * 4 + 4;
        let len = file.metadata()?.len();
        let vf = VectorFile { path: path.to_path_buf(), file, dim, stride, memory: RwLock::new(memory), map: RwLock::new(None), slots: RwLock::new((len - HEADER) / stride), grow: Mutex::new(()) };
        {
            let _g = vf.grow.lock();
            vf.remap()?;
        }
        Ok(vf)
    }

    /// Maps the file's current length. The new mapping is made (and, for
    /// RAM, read in) before the lock is taken, so searches wait only for
    /// the swap. Callers hold `grow` (one remap at a time).
    fn remap(&self) -> std::io::Result<()> {
        let len = self.file.metadata()?.len();
        let memory = *self.memory.read();
        let fresh = if len == 0 {
            None
        } else {
            let mut opts = MmapOptions::new();
            if memory == Memory::Ram {
                opts.populate();
            }
            // SAFETY: the file is this node's own; it is only ever extended
            // (never truncated while mapped) and slots are rewritten only
            // when no reader can reach them (see the module doc).
            let m = unsafe { opts.map(&self.file)? };
            let advice = match memory {
                Memory::Ram => Advice::WillNeed,
                Memory::Cached => Advice::Normal,
                Memory::Cold => Advice::Random,
            };
            if let Err(e) = m.advise(advice) {
                tracing::debug!(path = %self.path.display(), error = %e, "madvise failed");
            }
            Some(m)
        };
        *self.map.write() = fresh;
        *self.slots.write() = len.saturating_sub(HEADER) / self.stride;
        Ok(())
    }

    pub fn dimension(&self) -> usize {
        self.dim
    }

    pub fn memory(&self) -> Memory {
        *self.memory.read()
    }

    /// Maps the file again under another memory setting.
    pub fn set_memory(&self, memory: Memory) -> std::io::Result<()> {
        let _g = self.grow.lock();
        *self.memory.write() = memory;
        self.remap()
    }

    /// Reads the slots (see [`Reader`]).
    pub fn reader(&self) -> Reader<'_> {
        Reader { map: self.map.read(), dim: self.dim, stride: self.stride }
    }

    /// Writes `v` (of the file's dimension) to slot `off`, growing the file.
    pub fn put(&self, off: u64, v: &[f32]) -> std::io::Result<()> {
        if v.len() != self.dim {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("vector of {} dimensions in a file of {}", v.len(), self.dim)));
        }
        if off >= *self.slots.read() {
            let _g = self.grow.lock();
            let have = *self.slots.read();
            if off >= have {
                let want = (off + 1).max(have + have / 2).max(GROW_SLOTS);
                self.file.set_len(HEADER + want * self.stride)?;
                self.remap()?;
            }
        }
        let bytes: &[u8] = bytemuck::cast_slice(v);
        let mut slot = Vec::with_capacity(self.stride as usize);
        slot.extend_from_slice(bytes);
        slot.extend_from_slice(&checksum(off, bytes).to_le_bytes());
        self.file.write_all_at(&slot, HEADER + off * self.stride)
    }

    /// Whether slot `off` has a valid checksum and its data passes `want`
    /// (false past the mapped end).
    fn check_slot(&self, off: u64, want: impl FnOnce(&[u8]) -> bool) -> bool {
        let r = self.reader();
        let Some(m) = r.map.as_ref() else { return false };
        let Ok(at) = usize::try_from(HEADER + off * self.stride) else { return false };
        let Some(slot) = m.get(at..at + self.stride as usize) else { return false };
        let (data, sum) = slot.split_at(self.dim * 4);
        sum == checksum(off, data).to_le_bytes() && want(data)
    }

    /// Whether slot `off` holds exactly `v` with a valid checksum.
    pub fn holds(&self, off: u64, v: &[f32]) -> bool {
        self.check_slot(off, |data| data == bytemuck::cast_slice::<f32, u8>(v))
    }

    /// Whether slot `off` holds a vector whose checksum is valid (what it
    /// holds is not compared with anything).
    pub fn valid(&self, off: u64) -> bool {
        self.check_slot(off, |_| true)
    }

    /// Flushes written slots to disk.
    pub fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    /// Bytes mapped (the file's length).
    pub fn mapped_bytes(&self) -> u64 {
        self.map.read().as_ref().map_or(0, |m| m.len() as u64)
    }

    /// Bytes of the mapping now in memory (`mincore`).
    pub fn resident_bytes(&self) -> u64 {
        let map = self.map.read();
        let Some(m) = map.as_ref() else { return 0 };
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let pages = m.len().div_ceil(page);
        let mut vec = vec![0u8; pages];
        // SAFETY: the range is this live mapping; `vec` has one byte per page.
        let rc = unsafe { libc::mincore(m.as_ptr() as *mut libc::c_void, m.len(), vec.as_mut_ptr()) };
        if rc != 0 {
            return 0;
        }
        (vec.iter().filter(|b| *b & 1 == 1).count() * page) as u64
    }

    /// Deletes the file.
    pub fn remove(path: &Path) {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_round_trip_grow_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v");
        let f = VectorFile::open(&p, 3, Memory::Cached).unwrap();
        f.put(0, &[1.0, 2.0, 3.0]).unwrap();
        f.put(5000, &[-1.0, 0.5, 0.25]).unwrap();
        assert_eq!(f.reader().get(0).unwrap(), &[1.0, 2.0, 3.0]);
        assert_eq!(f.reader().get(5000).unwrap(), &[-1.0, 0.5, 0.25]);
        assert!(f.holds(5000, &[-1.0, 0.5, 0.25]));
        assert!(!f.holds(5000, &[-1.0, 0.5, 0.5]));
        assert!(!f.holds(7, &[0.0, 0.0, 0.0]), "an unwritten slot fails its checksum");
        assert!(f.put(1, &[1.0]).is_err());
        drop(f);
        let f = VectorFile::open(&p, 3, Memory::Cold).unwrap();
        assert!(f.holds(0, &[1.0, 2.0, 3.0]));
        assert!(f.mapped_bytes() >= 64 + 5001 * 16);
        // Another dimension starts the file over.
        drop(f);
        let f = VectorFile::open(&p, 4, Memory::Ram).unwrap();
        assert!(!f.holds(0, &[1.0, 2.0, 3.0, 0.0]));
        assert!(f.reader().get(0).is_none());
    }

    #[test]
    fn a_damaged_slot_fails_verification() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v");
        let f = VectorFile::open(&p, 4, Memory::Cached).unwrap();
        for o in 0..10u64 {
            f.put(o, &[o as f32; 4]).unwrap();
        }
        drop(f);
        // Flip one byte of slot 3's vector.
        let raw = OpenOptions::new().write(true).read(true).open(&p).unwrap();
        let mut b = [0u8; 1];
        raw.read_exact_at(&mut b, HEADER + 3 * 20 + 2).unwrap();
        raw.write_all_at(&[b[0] ^ 0x10], HEADER + 3 * 20 + 2).unwrap();
        let f = VectorFile::open(&p, 4, Memory::Cached).unwrap();
        let bad: Vec<u64> = (0..10).filter(|o| !f.holds(*o, &[*o as f32; 4])).collect();
        assert_eq!(bad, vec![3]);
        f.put(3, &[3.0; 4]).unwrap();
        assert!(f.holds(3, &[3.0; 4]));
        assert!(f.resident_bytes() > 0);
    }
}
