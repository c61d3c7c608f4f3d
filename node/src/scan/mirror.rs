//! One graph's rows on the device.
//!
//! Row `r` of the device buffer holds the vector of key (version offset)
//! `r`, the layout of the shard's vector file. Each scan uploads the rows
//! its allowed set needs that the device does not hold yet (the writes
//! since the last scan, or everything on the first), reading them from
//! the scan's [`RowStore`], and scores only the rows its allowed set
//! admits. Writes never touch the device: a write path that waits for a
//! GPU, or fails with it, would put the device on the path of every
//! acknowledged write.
//!
//! Offsets are reused once their version is retired, so every change to
//! the graph marks its row stale ([`Mirror::invalidate`]: an insert, a
//! removal, a repaired vector-file slot), and a swapped graph marks every
//! row stale ([`Mirror::reset`]); neither waits for a scan in flight. A
//! scan drops the stale rows before it uploads, so a removed row is never
//! scored from the device, and a reused offset is uploaded again.
//!
//! A graph that does not fit on the device (its rows plus
//! [`RESERVE_BYTES`] beyond what is in use) stays on the CPU for
//! [`NO_ROOM_COOL_DOWN`] without counting against the device.
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use parking_lot::Mutex;
use roaring::RoaringBitmap;

use super::device::{DeviceError, DeviceRows, Offload, DEVICE_MAX_K};
use super::{RowStore, ScanMetric};
use crate::index::Hit;

/// Rows uploaded per device write.
const UPLOAD_ROWS: usize = 4_096;
/// The smallest buffer a mirror allocates, in rows.
const MIN_ROWS: usize = 1_024;
/// The longest run of rows not held that an upload bridges with zeros.
const MAX_GAP: usize = 64;
/// The most rows a mirror holds (the kernel indexes rows with 32-bit
/// signed integers).
pub const MAX_DEVICE_ROWS: usize = i32::MAX as usize;
/// Device memory a mirror leaves free for the scans' own buffers (score
/// matrices up to 256 MiB, candidate lists).
pub const RESERVE_BYTES: u64 = 1 << 30;
/// How long a graph that did not fit stays on the CPU before it is tried
/// on the device again.
pub const NO_ROOM_COOL_DOWN: std::time::Duration = std::time::Duration::from_secs(300);

/// A graph's rows on the device.
pub struct Mirror {
    dim: usize,
    state: Mutex<State>,
    /// Rows rewritten since the last scan (a short lock of their own, so a
    /// write never waits behind a scan holding `state`).
    stale: Mutex<RoaringBitmap>,
    reset: AtomicBool,
    /// Rows are on the device (until then there is nothing to invalidate).
    active: AtomicBool,
}

#[derive(Default)]
struct State {
    rows: Option<Box<dyn DeviceRows>>,
    /// Rows on the device that hold their key's vector.
    held: RoaringBitmap,
    /// The device whose totals count this mirror, and the bytes counted.
    owner: Option<&'static Offload>,
    counted: usize,
    /// The graph did not fit on the device: not tried again before this.
    no_room_until: Option<Instant>,
}

impl Mirror {
    pub fn new(dim: usize) -> Self {
        Mirror { dim, state: Mutex::new(State::default()), stale: Mutex::new(RoaringBitmap::new()), reset: AtomicBool::new(false), active: AtomicBool::new(false) }
    }

    /// Row `key` was rewritten: upload it again before it is scored.
    pub fn invalidate(&self, key: u64) {
        if !self.active.load(Ordering::Acquire) {
            return;
        }
        if let Ok(k) = u32::try_from(key) {
            self.stale.lock().insert(k);
        }
    }

    /// Every row is stale (the graph was replaced).
    pub fn reset(&self) {
        self.reset.store(true, Ordering::Release);
    }

    /// Rows held on the device now.
    pub fn rows_held(&self) -> u64 {
        self.state.lock().held.len()
    }

    /// Each query's top-k among `allowed` on `off`'s device, uploading
    /// the allowed rows the device lacks from `store` first.
    pub(crate) fn top_k(&self, off: &'static Offload, queries: &[&[f32]], allowed: &RoaringBitmap, store: &dyn RowStore, k: usize, metric: ScanMetric) -> Result<Vec<Vec<Hit>>, DeviceError> {
        if k > DEVICE_MAX_K {
            return Err(DeviceError::Unsupported(format!("k {k} above {DEVICE_MAX_K}")));
        }
        if store.dim() != self.dim {
            return Err(DeviceError::Fault(format!("rows of {} dimensions for a mirror of {}", store.dim(), self.dim)));
        }
        let Some(last) = allowed.max() else { return Ok(vec![vec![]; queries.len()]) };
        let need = last as usize + 1;
        if need > MAX_DEVICE_ROWS {
            return Err(DeviceError::Unsupported(format!("offset {last} past the device's {MAX_DEVICE_ROWS} rows")));
        }
        let mut st = self.state.lock();
        if st.no_room_until.is_some_and(|t| Instant::now() < t) {
            return Err(DeviceError::NoRoom("this graph did not fit on the device; it is tried again after a cool-down".into()));
        }
        if self.reset.swap(false, Ordering::AcqRel) {
            st.held.clear();
        }
        {
            let mut stale = self.stale.lock();
            st.held -= &*stale;
            stale.clear();
        }
        let tried = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.scan_locked(&mut st, off, queries, allowed, need, store, k, metric)));
        // Account for the device bytes whatever happened (a grow may have
        // succeeded before a later step failed, or panicked).
        let now = st.rows.as_ref().map_or(0, |r| r.bytes());
        if now != st.counted {
            off.mirrored_bytes.fetch_add(now, Ordering::Relaxed);
            off.mirrored_bytes.fetch_sub(st.counted, Ordering::Relaxed);
            st.counted = now;
        }
        match tried {
            Ok(Err(Failed::Upload(e))) => {
                // A failed write may have left rows half written: trust
                // none. A graph that does not fit backs off on its own,
                // without counting against the device.
                st.held.clear();
                if matches!(e, DeviceError::OutOfMemory(_) | DeviceError::NoRoom(_)) {
                    st.no_room_until = Some(Instant::now() + NO_ROOM_COOL_DOWN);
                    return Err(DeviceError::NoRoom(e.to_string()));
                }
                Err(e)
            }
            Ok(Err(Failed::Scan(e))) => Err(e),
            Ok(Ok(hits)) => Ok(hits),
            Err(panic) => {
                st.held.clear();
                drop(st);
                std::panic::resume_unwind(panic)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn scan_locked(&self, st: &mut State, off: &'static Offload, queries: &[&[f32]], allowed: &RoaringBitmap, need: usize, store: &dyn RowStore, k: usize, metric: ScanMetric) -> Result<Vec<Vec<Hit>>, Failed> {
        let dim = self.dim;
        let row_bytes = (dim + 1) * 4;
        // Room for `rows` rows beside what the device holds now, keeping
        // RESERVE_BYTES free for the scans' own buffers.
        let fits = |rows: usize, held: usize| -> Result<(), DeviceError> {
            let Some((used, total)) = off.accel().memory() else { return Ok(()) };
            let want = (rows.saturating_sub(held) * row_bytes) as u64;
            if used.saturating_add(want).saturating_add(RESERVE_BYTES) > total {
                return Err(DeviceError::NoRoom(format!("{rows} rows of {dim} need {want} more bytes; {used} of {total} are in use")));
            }
            Ok(())
        };
        match &mut st.rows {
            Some(rows) if rows.capacity() < need => {
                // Grow by half again (a grow briefly holds old and new).
                let want = need.max(rows.capacity().saturating_add(rows.capacity() / 2)).min(MAX_DEVICE_ROWS);
                fits(want + rows.capacity(), rows.capacity()).map_err(Failed::Upload)?;
                rows.grow(want).map_err(Failed::Upload)?;
            }
            Some(_) => {}
            None => {
                let want = need.saturating_add(need / 4).clamp(MIN_ROWS, MAX_DEVICE_ROWS);
                fits(want, 0).map_err(Failed::Upload)?;
                let rows = off.accel().alloc(want, dim).map_err(Failed::Upload)?;
                off.mirrors.fetch_add(1, Ordering::Relaxed);
                st.owner = Some(off);
                st.rows = Some(rows);
                self.active.store(true, Ordering::Release);
            }
        }
        let rows = st.rows.as_mut().expect("allocated above");
        // Upload the allowed rows the device lacks, in runs of consecutive
        // rows. A key the store does not hold is skipped (never scored).
        let missing = allowed - &st.held;
        let mut data: Vec<f32> = Vec::with_capacity(UPLOAD_ROWS.min(missing.len() as usize) * dim);
        let mut norms: Vec<f32> = Vec::new();
        let mut first = 0usize;
        let mut uploaded = RoaringBitmap::new();
        let mut run: Vec<u32> = Vec::new();
        let flush = |rows: &mut Box<dyn DeviceRows>, first: usize, data: &mut Vec<f32>, norms: &mut Vec<f32>, run: &mut Vec<u32>, uploaded: &mut RoaringBitmap| -> Result<(), Failed> {
            if !run.is_empty() {
                rows.write(first, data, norms).map_err(Failed::Upload)?;
                uploaded.extend(run.iter().copied());
            }
            data.clear();
            norms.clear();
            run.clear();
            Ok(())
        };
        let mut row = vec![0f32; dim];
        for key in &missing {
            if !store.fill(u64::from(key), &mut row) {
                continue;
            }
            // The row after the upload being gathered (its held rows and
            // bridged gaps); keys come in increasing order.
            let next = first + norms.len();
            if !run.is_empty() && key as usize != next {
                // A short gap of rows the device does not hold is written
                // as zeros (never scored: not held), so scattered removals
                // do not split an upload into many small copies.
                let gap = key as usize - next;
                if gap <= MAX_GAP && norms.len() + gap < UPLOAD_ROWS && st.held.range_cardinality(next as u32..key) == 0 {
                    data.resize(data.len() + gap * dim, 0.0);
                    norms.resize(norms.len() + gap, 0.0);
                } else {
                    flush(rows, first, &mut data, &mut norms, &mut run, &mut uploaded)?;
                }
            }
            if norms.len() >= UPLOAD_ROWS {
                flush(rows, first, &mut data, &mut norms, &mut run, &mut uploaded)?;
            }
            if run.is_empty() {
                first = key as usize;
            }
            data.extend_from_slice(&row);
            norms.push(crate::index::kernel::dot(&row, &row));
            run.push(key);
        }
        flush(rows, first, &mut data, &mut norms, &mut run, &mut uploaded)?;
        st.held |= uploaded;
        let scored = allowed & &st.held;
        let rows = st.rows.as_mut().expect("allocated above");
        // The mask covers rows up to the highest allowed one.
        let mut mask = vec![0u64; need.div_ceil(64)];
        for r in &scored {
            mask[r as usize / 64] |= 1 << (r % 64);
        }
        let packed: Vec<f32> = queries.concat();
        rows.top_k(&packed, queries.len(), &mask, k, metric).map_err(Failed::Scan)
    }
}

/// Where a mirrored scan failed: writing rows (which then cannot be
/// trusted) or scoring them.
enum Failed {
    Upload(DeviceError),
    Scan(DeviceError),
}

impl Drop for Mirror {
    fn drop(&mut self) {
        let st = self.state.get_mut();
        if let Some(off) = st.owner {
            off.mirrors.fetch_sub(1, Ordering::Relaxed);
            off.mirrored_bytes.fetch_sub(st.counted, Ordering::Relaxed);
        }
    }
}
