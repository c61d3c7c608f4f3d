//! Pure merging of per-shard answers.
use std::collections::HashSet;

use shoal_proto::v1::{RetrievedPoint, ScoredPoint};
use shoal_proto::PointKey;

/// The key of a wire id; None when absent or malformed.
pub(crate) fn key(p: &Option<shoal_proto::v1::PointId>) -> Option<PointKey> {
    p.as_ref().and_then(|id| PointKey::try_from(id).ok())
}

/// Merges per-shard top-k lists into the global top-`k`.
///
/// Order: best score first (highest, or lowest when `higher_is_better` is
/// false, as for L2), ties by ascending id. A point id seen twice (a replica
/// answering twice, or a move in flight) keeps its best entry. Results worse
/// than `threshold` are dropped. Results without a valid id are dropped.
pub fn merge_top_k(per_shard: Vec<Vec<ScoredPoint>>, k: usize, higher_is_better: bool, threshold: Option<f32>) -> Vec<ScoredPoint> {
    let mut all: Vec<(PointKey, ScoredPoint)> = per_shard.into_iter().flatten().filter_map(|p| key(&p.id).map(|k| (k, p))).collect();
    all.retain(|(_, p)| !p.score.is_nan() && threshold.is_none_or(|t| if higher_is_better { p.score >= t } else { p.score <= t }));
    all.sort_by(|(ka, a), (kb, b)| {
        let by_score = if higher_is_better { b.score.total_cmp(&a.score) } else { a.score.total_cmp(&b.score) };
        by_score.then(ka.cmp(kb))
    });
    let mut seen = HashSet::with_capacity(k);
    let mut out = Vec::with_capacity(k.min(all.len()));
    for (key, p) in all {
        if out.len() == k {
            break;
        }
        if seen.insert(key) {
            out.push(p);
        }
    }
    out
}

/// Bytes of points one merged scroll page holds at most.
pub const SCROLL_PAGE_BYTES: usize = shoal_proto::limits::MAX_MESSAGE_BYTES / 2;

/// Merges per-shard scroll pages (each in id order, each with the shard's
/// own next id) into one page of `limit` points and the global next id.
pub fn merge_scroll(pages: Vec<(Vec<RetrievedPoint>, Option<PointKey>)>, limit: usize) -> (Vec<RetrievedPoint>, Option<PointKey>) {
    let mut next: Option<PointKey> = None;
    let mut all = Vec::new();
    for (points, n) in pages {
        if let Some(n) = n {
            next = Some(next.map_or(n, |x| x.min(n)));
        }
        all.extend(points.into_iter().filter_map(|p| key(&p.id).map(|k| (k, p))));
    }
    all.sort_by_key(|a| a.0);
    all.dedup_by(|a, b| a.0 == b.0);
    if all.len() > limit {
        let cut = all[limit].0;
        next = Some(next.map_or(cut, |x| x.min(cut)));
        all.truncate(limit);
    }
    // A page also ends where it passes SCROLL_PAGE_BYTES (large payloads
    // from several shards), so the answer fits one message.
    let mut bytes = 0usize;
    if let Some(at) = all.iter().position(|(_, p)| {
        bytes += prost::Message::encoded_len(p);
        bytes > SCROLL_PAGE_BYTES
    }) {
        if at > 0 {
            let cut = all[at].0;
            next = Some(next.map_or(cut, |x| x.min(cut)));
            all.truncate(at);
        }
    }
    // Every point before `next` is on this page.
    if let Some(n) = next {
        all.retain(|(k, _)| *k < n);
    }
    (all.into_iter().map(|(_, p)| p).collect(), next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp(id: u64, score: f32) -> ScoredPoint {
        ScoredPoint { id: Some(id.into()), score, ..Default::default() }
    }
    fn ids(v: &[ScoredPoint]) -> Vec<u64> {
        v.iter().map(|p| match key(&p.id).unwrap() { PointKey::Num(n) => n, _ => 0 }).collect()
    }

    #[test]
    fn top_k_table() {
        struct Case {
            name: &'static str,
            shards: Vec<Vec<ScoredPoint>>,
            k: usize,
            higher: bool,
            threshold: Option<f32>,
            want: Vec<u64>,
        }
        let cases = vec![
            Case { name: "interleaves shards", shards: vec![vec![sp(1, 0.9), sp(2, 0.5)], vec![sp(3, 0.8), sp(4, 0.1)]], k: 3, higher: true, threshold: None, want: vec![1, 3, 2] },
            Case { name: "ties by ascending id", shards: vec![vec![sp(9, 0.5)], vec![sp(2, 0.5)], vec![sp(5, 0.5)]], k: 2, higher: true, threshold: None, want: vec![2, 5] },
            Case { name: "duplicates keep the best", shards: vec![vec![sp(7, 0.4)], vec![sp(7, 0.9), sp(8, 0.5)]], k: 3, higher: true, threshold: None, want: vec![7, 8] },
            Case { name: "threshold drops worse", shards: vec![vec![sp(1, 0.9), sp(2, 0.3)], vec![sp(3, 0.6)]], k: 10, higher: true, threshold: Some(0.5), want: vec![1, 3] },
            Case { name: "lower is better for L2", shards: vec![vec![sp(1, 3.0), sp(2, 0.5)], vec![sp(3, 1.0)]], k: 2, higher: false, threshold: None, want: vec![2, 3] },
            Case { name: "L2 threshold is an upper bound", shards: vec![vec![sp(1, 3.0), sp(2, 0.5)]], k: 5, higher: false, threshold: Some(1.0), want: vec![2] },
            Case { name: "empty shards", shards: vec![vec![], vec![]], k: 5, higher: true, threshold: None, want: vec![] },
            Case { name: "fewer than k", shards: vec![vec![sp(1, 0.1)]], k: 5, higher: true, threshold: None, want: vec![1] },
            Case { name: "nan scores dropped", shards: vec![vec![sp(1, f32::NAN), sp(2, 0.1)]], k: 5, higher: true, threshold: None, want: vec![2] },
        ];
        for c in cases {
            assert_eq!(ids(&merge_top_k(c.shards, c.k, c.higher, c.threshold)), c.want, "{}", c.name);
        }
    }

    #[test]
    fn uuid_ids_sort_after_numbers_on_ties() {
        let u = ScoredPoint { id: Some(uuid::Uuid::from_u128(1).into()), score: 0.5, ..Default::default() };
        let out = merge_top_k(vec![vec![u], vec![sp(99, 0.5)]], 2, true, None);
        assert_eq!(key(&out[0].id), Some(PointKey::Num(99)));
    }

    fn rp(id: u64) -> RetrievedPoint {
        RetrievedPoint { id: Some(id.into()), ..Default::default() }
    }

    #[test]
    fn scroll_table() {
        let n = |x: u64| Some(PointKey::Num(x));
        let page_ids = |v: &[RetrievedPoint]| v.iter().map(|p| key(&p.id).unwrap()).collect::<Vec<_>>();
        // Shard A has more after 2; B's 4 must not skip A's 3.
        let (p, next) = merge_scroll(vec![(vec![rp(1), rp(2)], n(3)), (vec![rp(4), rp(5)], n(6))], 2);
        assert_eq!(page_ids(&p), vec![PointKey::Num(1), PointKey::Num(2)]);
        assert_eq!(next, n(3));
        let (p, next) = merge_scroll(vec![(vec![rp(1), rp(5)], None), (vec![rp(2)], None)], 2);
        assert_eq!(page_ids(&p), vec![PointKey::Num(1), PointKey::Num(2)]);
        assert_eq!(next, n(5));
        let (p, next) = merge_scroll(vec![(vec![rp(1)], None), (vec![], None)], 5);
        assert_eq!(p.len(), 1);
        assert_eq!(next, None);
        // A shard's next below other shards' points truncates the page.
        let (p, next) = merge_scroll(vec![(vec![rp(1)], n(2)), (vec![rp(3), rp(4)], None)], 3);
        assert_eq!(page_ids(&p), vec![PointKey::Num(1)]);
        assert_eq!(next, n(2));
    }
}
