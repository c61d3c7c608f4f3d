//! [`Accel`] on the host: the reference the device backends are held to,
//! and the test double that injects device faults.
//!
//! It computes what the CUDA kernels compute, the same way: a distance
//! from the inner product (`1 - dot`, or `|q|² + |r|² - 2 q·r` clamped at
//! zero for L2), the rows the mask admits, the `k` smallest, ties by row.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::device::{Accel, DeviceError, DeviceRows};
use super::{ScanMetric, TopK};
use crate::index::Hit;

/// What an injected fault does to a device call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The call returns a device error.
    Error,
    /// The call runs out of device memory.
    OutOfMemory,
    /// The binding panics.
    Panic,
    /// The scan answers one query fewer than asked.
    ShortAnswer,
    /// A write stores garbage, then reports an error.
    Garbage,
    /// The scan answers with a distance off by 0.5 (a wrong kernel).
    WrongDistance,
}

/// Decides, per device call (numbered from 0, allocations, writes and
/// scans alike), whether it fails.
pub type FaultPlan = Arc<dyn Fn(usize) -> Option<Fault> + Send + Sync>;

/// Device memory on the host.
pub struct HostAccel {
    calls: Arc<AtomicUsize>,
    plan: Option<FaultPlan>,
}

impl HostAccel {
    pub fn new() -> Self {
        HostAccel { calls: Arc::new(AtomicUsize::new(0)), plan: None }
    }

    /// A device that fails the calls `plan` names.
    pub fn with_faults(plan: FaultPlan) -> Self {
        HostAccel { calls: Arc::new(AtomicUsize::new(0)), plan: Some(plan) }
    }

    /// Device calls made so far.
    pub fn calls(&self) -> Arc<AtomicUsize> {
        self.calls.clone()
    }
}

impl Default for HostAccel {
    fn default() -> Self {
        Self::new()
    }
}

fn fault(calls: &AtomicUsize, plan: &Option<FaultPlan>) -> Result<Option<Fault>, DeviceError> {
    let n = calls.fetch_add(1, Ordering::Relaxed);
    match plan.as_ref().and_then(|p| p(n)) {
        Some(Fault::Error) => Err(DeviceError::Fault(format!("injected fault in call {n}"))),
        Some(Fault::OutOfMemory) => Err(DeviceError::OutOfMemory(format!("injected in call {n}"))),
        Some(Fault::Panic) => panic!("injected device panic in call {n}"),
        other => Ok(other),
    }
}

impl Accel for HostAccel {
    fn name(&self) -> String {
        "host".into()
    }

    fn memory(&self) -> Option<(u64, u64)> {
        None
    }

    fn alloc(&self, rows: usize, dim: usize) -> Result<Box<dyn DeviceRows>, DeviceError> {
        fault(&self.calls, &self.plan)?;
        let floats = rows.checked_mul(dim).ok_or_else(|| DeviceError::OutOfMemory(format!("{rows} rows of {dim}")))?;
        Ok(Box::new(HostRows { dim, data: vec![0.0; floats], norms: vec![0.0; rows], calls: self.calls.clone(), plan: self.plan.clone() }))
    }
}

struct HostRows {
    dim: usize,
    data: Vec<f32>,
    norms: Vec<f32>,
    calls: Arc<AtomicUsize>,
    plan: Option<FaultPlan>,
}

impl DeviceRows for HostRows {
    fn capacity(&self) -> usize {
        self.norms.len()
    }

    fn bytes(&self) -> usize {
        (self.data.len() + self.norms.len()) * 4
    }

    fn grow(&mut self, rows: usize) -> Result<(), DeviceError> {
        fault(&self.calls, &self.plan)?;
        if rows > self.norms.len() {
            self.data.resize(rows * self.dim, 0.0);
            self.norms.resize(rows, 0.0);
        }
        Ok(())
    }

    fn write(&mut self, first: usize, data: &[f32], norms: &[f32]) -> Result<(), DeviceError> {
        let garbage = fault(&self.calls, &self.plan)? == Some(Fault::Garbage);
        let n = norms.len();
        if data.len() != n * self.dim || first + n > self.norms.len() {
            return Err(DeviceError::Fault(format!("write of {n} rows at {first} past {} rows", self.norms.len())));
        }
        if garbage {
            self.data[first * self.dim..(first + n) * self.dim].fill(0.5);
            self.norms[first..first + n].fill(0.0);
            return Err(DeviceError::Fault("injected: a write stored garbage".into()));
        }
        self.data[first * self.dim..(first + n) * self.dim].copy_from_slice(data);
        self.norms[first..first + n].copy_from_slice(norms);
        Ok(())
    }

    fn top_k(&mut self, queries: &[f32], nq: usize, mask: &[u64], k: usize, metric: ScanMetric) -> Result<Vec<Vec<Hit>>, DeviceError> {
        let injected = fault(&self.calls, &self.plan)?;
        let dim = self.dim;
        let mut out = Vec::with_capacity(nq);
        for q in queries.chunks_exact(dim).take(nq) {
            let qn = crate::index::kernel::dot(q, q);
            let mut top = TopK::new(k);
            for (w, &bits) in mask.iter().enumerate() {
                let mut b = bits;
                while b != 0 {
                    let r = w * 64 + b.trailing_zeros() as usize;
                    b &= b - 1;
                    let Some(row) = self.data.get(r * dim..(r + 1) * dim) else { break };
                    let dot = crate::index::kernel::dot(q, row);
                    let d = match metric {
                        ScanMetric::InnerProduct => 1.0 - dot,
                        // NaN stays NaN (TopK drops it).
                        ScanMetric::L2 => match qn + self.norms[r] - 2.0 * dot {
                            d if d < 0.0 => 0.0,
                            d => d,
                        },
                    };
                    top.push(r as u64, d);
                }
            }
            out.push(top.into_sorted());
        }
        match injected {
            Some(Fault::ShortAnswer) => {
                out.pop();
            }
            Some(Fault::WrongDistance) => {
                if let Some(h) = out.iter_mut().flatten().next() {
                    h.distance += 0.5;
                }
            }
            _ => {}
        }
        Ok(out)
    }
}
