//! How a filtered search chooses its plan: an exact scan of the allowed
//! points or a predicate walk, and how far the walk goes (docs/filters.md).

/// Node settings of filtered-search planning.
#[derive(Debug, Clone, Copy)]
pub struct SearchPlan {
    /// `--exact-scan-threshold` ([`prefer_scan`]).
    pub exact_scan_threshold: Option<u64>,
    /// `--filter-partitions` ([`partition`]).
    pub partitions: bool,
    /// `--scan-batch-window-us`: how long a single exact search waits for
    /// concurrent ones of its shard to share a scan
    /// ([`crate::scan::batcher`]).
    pub batch_window: std::time::Duration,
}

impl Default for SearchPlan {
    fn default() -> Self {
        SearchPlan { exact_scan_threshold: None, partitions: true, batch_window: crate::scan::batcher::DEFAULT_WINDOW }
    }
}

/// The cost of one `ef` of a predicate walk, in points of an exact scan.
/// Measured on debian-384 in-process (docs/benchmarks.md, "Filtered
/// search"): an unfiltered walk costs about 3.3 µs per `ef` there (a
/// predicate adds 1.2x to 1.8x), a scan 0.16 µs per point when its rows
/// are in cache and 0.38 µs when they are not. Both grow with the
/// dimension, so their ratio holds better than either.
pub const WALK_EF_IN_SCANNED_POINTS: u64 = 12;

/// Whether a filtered search scans the `allowed` points exactly rather
/// than walk the graph with a predicate. With `threshold` (the node's
/// `--exact-scan-threshold`), it scans at most that many points; without
/// it, it scans when that costs less than the walk. A walk keeping
/// [`filtered_ef`] allowed points goes as far out as an unfiltered walk of
/// `max(ef, fetch / s)` at selectivity `s`: at least `fetch / s`, which is
/// what makes walks over rare values slow (a 0.2% filter walks like an
/// unfiltered `ef` of 7,000).
pub fn prefer_scan(allowed: u64, total: u64, ef: usize, fetch: usize, threshold: Option<u64>) -> bool {
    if let Some(t) = threshold {
        return allowed <= t;
    }
    let walk_ef = (ef as u64).max((fetch as u64).saturating_mul(total.max(1)) / allowed.max(1));
    allowed <= walk_ef.saturating_mul(WALK_EF_IN_SCANNED_POINTS)
}

/// The `ef` of a predicate walk over a filter allowing `allowed` of
/// `total` points, for a search asking `ef`. The walk's result list holds
/// allowed points only, so its radius is that of its `ef'`-th allowed
/// point: about the `ef'/s`-th point overall at selectivity `s`. Asking
/// for `ef·s` allowed points (at least `fetch`) walks as far out as an
/// unfiltered search of `ef` does; asking for `ef` walks `1/s` times as
/// far and costs about that much more (docs/benchmarks.md, "Filtered
/// search").
pub fn filtered_ef(ef: usize, fetch: usize, allowed: u64, total: u64) -> usize {
    let s = (allowed as f64 / total.max(1) as f64).min(1.0);
    ((ef as f64 * s).ceil() as usize).clamp(fetch, ef.max(fetch))
}
