//! Replica placement: a pure function from the node list to each shard's
//! replica set.
//!
//! Shard `s` gets `rf` distinct nodes starting at position `s mod n` of the
//! sorted node list. The first replica is the preferred leader, so leaders
//! rotate over the nodes and every node holds `shards * rf / n` replicas
//! (±1).
//!
//! [`plan`] is the rebalance planner behind `shoalctl cluster rebalance`
//! and `drain`: from the current replica sets it proposes replica moves
//! and leadership transfers that empty excluded (draining) nodes and even
//! out replicas, then preferred leaders, over the others.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlacementError {
    #[error("replication factor {rf} exceeds the {nodes} nodes in the cluster")]
    NotEnoughNodes { rf: u32, nodes: usize },
    #[error("replication factor must be at least 1")]
    ZeroReplication,
}

/// The distinct node ids, sorted, if they can hold `rf` replicas of a shard.
fn nodes_for(nodes: &[u64], rf: u32) -> Result<Vec<u64>, PlacementError> {
    if rf == 0 {
        return Err(PlacementError::ZeroReplication);
    }
    let mut sorted = nodes.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if rf as usize > sorted.len() {
        return Err(PlacementError::NotEnoughNodes { rf, nodes: sorted.len() });
    }
    Ok(sorted)
}

/// Replica node ids for each of `shards` shards.
pub fn place(nodes: &[u64], shards: u32, rf: u32) -> Result<Vec<Vec<u64>>, PlacementError> {
    let sorted = nodes_for(nodes, rf)?;
    let n = sorted.len();
    Ok((0..shards as usize).map(|s| (0..rf as usize).map(|r| sorted[(s + r) % n]).collect()).collect())
}

/// One step of a rebalance plan, on the shard at index `shard` of the
/// planner's input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Move the replica on `from` to `to` (it keeps its position, so a
    /// preferred leader's replica stays the preferred leader).
    Move { shard: usize, from: u64, to: u64 },
    /// Make `to`, already a replica, the preferred leader.
    Leader { shard: usize, to: u64 },
}

fn count(shards: &[Vec<u64>], n: u64) -> usize {
    shards.iter().filter(|r| r.contains(&n)).count()
}

fn leads(shards: &[Vec<u64>], n: u64) -> usize {
    shards.iter().filter(|r| r.first() == Some(&n)).count()
}

/// Plans moves so that no replica stays on an `excluded` node and the
/// replica counts of the other `nodes` differ by at most one (counted over
/// all `shards` given, one entry per shard: its replica set, preferred
/// leader first); then leadership transfers that even out preferred
/// leaders as far as the replica sets allow. Pure and deterministic (ties
/// go to the lowest node id); returns the steps in order and the replica
/// sets they lead to.
pub fn plan(nodes: &[u64], excluded: &[u64], shards: &[Vec<u64>]) -> Result<(Vec<Step>, Vec<Vec<u64>>), PlacementError> {
    let mut eligible: Vec<u64> = nodes.iter().copied().filter(|n| !excluded.contains(n)).collect();
    eligible.sort_unstable();
    eligible.dedup();
    let widest = shards.iter().map(Vec::len).max().unwrap_or(0);
    if widest > eligible.len() {
        return Err(PlacementError::NotEnoughNodes { rf: widest as u32, nodes: eligible.len() });
    }
    let mut cur = shards.to_vec();
    let mut steps = Vec::new();
    // 1. Empty the excluded (and unknown) nodes.
    for i in 0..cur.len() {
        for pos in 0..cur[i].len() {
            let from = cur[i][pos];
            if eligible.contains(&from) {
                continue;
            }
            let to = *eligible.iter().filter(|n| !cur[i].contains(n)).min_by_key(|n| (count(&cur, **n), **n)).expect("enough eligible nodes");
            cur[i][pos] = to;
            steps.push(Step::Move { shard: i, from, to });
        }
    }
    // 2. Even out replicas: move one from the fullest node to the emptiest
    // until they differ by at most one (each move lowers the sum of
    // squared counts, so this ends).
    if !eligible.is_empty() {
        loop {
            let max = *eligible.iter().max_by_key(|n| (count(&cur, **n), std::cmp::Reverse(**n))).expect("nodes");
            let min = *eligible.iter().min_by_key(|n| (count(&cur, **n), **n)).expect("nodes");
            if count(&cur, max) <= count(&cur, min) + 1 {
                break;
            }
            // Some shard on `max` lacks `min`, or `min` would hold as many.
            let Some(i) = (0..cur.len()).find(|&i| cur[i].contains(&max) && !cur[i].contains(&min)) else { break };
            let pos = cur[i].iter().position(|n| *n == max).expect("replica");
            cur[i][pos] = min;
            steps.push(Step::Move { shard: i, from: max, to: min });
        }
        // 3. Even out preferred leaders where a replica set allows it.
        loop {
            let max = *eligible.iter().max_by_key(|n| (leads(&cur, **n), std::cmp::Reverse(**n))).expect("nodes");
            let min = *eligible.iter().min_by_key(|n| (leads(&cur, **n), **n)).expect("nodes");
            if leads(&cur, max) <= leads(&cur, min) + 1 {
                break;
            }
            let Some(i) = (0..cur.len()).find(|&i| cur[i].first() == Some(&max) && cur[i].contains(&min)) else { break };
            let pos = cur[i].iter().position(|n| *n == min).expect("replica");
            cur[i].swap(0, pos);
            steps.push(Step::Leader { shard: i, to: min });
        }
    }
    Ok((steps, cur))
}

/// Replica additions (`from` 0) and removals (`to` 0) that bring every
/// shard to `rf` replicas: added on the nodes holding the fewest replicas,
/// removed from the fullest nodes, never the preferred leader. Greedy per
/// shard, so counts may end uneven: follow with [`plan`] on the result.
/// Pure; returns the steps and the replica sets they lead to.
pub fn resize(nodes: &[u64], shards: &[Vec<u64>], rf: u32) -> Result<(Vec<Step>, Vec<Vec<u64>>), PlacementError> {
    let sorted = nodes_for(nodes, rf)?;
    let mut cur = shards.to_vec();
    let mut steps = Vec::new();
    for i in 0..cur.len() {
        while cur[i].len() < rf as usize {
            let to = *sorted.iter().filter(|n| !cur[i].contains(n)).min_by_key(|n| (count(&cur, **n), **n)).expect("enough nodes");
            cur[i].push(to);
            steps.push(Step::Move { shard: i, from: 0, to });
        }
        while cur[i].len() > rf as usize {
            let from = *cur[i][1..].iter().max_by_key(|n| (count(&cur, **n), std::cmp::Reverse(**n))).expect("more than one replica");
            cur[i].retain(|n| *n != from);
            steps.push(Step::Move { shard: i, from, to: 0 });
        }
    }
    Ok((steps, cur))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Replays `steps` on `shards`, checking each is legal.
    fn replay(shards: &[Vec<u64>], steps: &[Step]) -> Vec<Vec<u64>> {
        let mut cur = shards.to_vec();
        for s in steps {
            match *s {
                Step::Move { shard, from: 0, to } => {
                    assert!(!cur[shard].contains(&to), "{s:?} onto a node that holds the shard");
                    cur[shard].push(to);
                }
                Step::Move { shard, from, to } => {
                    assert!(!cur[shard].contains(&to), "{s:?} onto a node that holds the shard");
                    let pos = cur[shard].iter().position(|n| *n == from).expect("move from a replica");
                    cur[shard][pos] = to;
                }
                Step::Leader { shard, to } => {
                    let pos = cur[shard].iter().position(|n| *n == to).expect("leader is a replica");
                    cur[shard].swap(0, pos);
                }
            }
        }
        cur
    }

    #[test]
    fn drains_and_evens_out() {
        // Everything on nodes 1-3; node 4 joined; node 2 drains.
        let shards = place(&[1, 2, 3], 6, 2).unwrap();
        let (steps, after) = plan(&[1, 2, 3, 4], &[2], &shards).unwrap();
        assert_eq!(replay(&shards, &steps), after);
        assert_eq!(count(&after, 2), 0);
        for n in [1, 3, 4] {
            assert_eq!(count(&after, n), 4, "{after:?}");
            assert_eq!(leads(&after, n), 2, "{after:?}");
        }
        // A balanced placement needs nothing.
        assert_eq!(plan(&[1, 2, 3], &[], &shards).unwrap().0, vec![]);
        // Too few nodes left for rf 3.
        assert_eq!(plan(&[1, 2, 3], &[3], &place(&[1, 2, 3], 1, 3).unwrap()), Err(PlacementError::NotEnoughNodes { rf: 3, nodes: 2 }));
    }

    #[test]
    fn resize_adds_to_the_emptiest_and_removes_from_the_fullest() {
        let shards = place(&[1, 2, 3], 3, 1).unwrap();
        let (steps, up) = resize(&[1, 2, 3], &shards, 2).unwrap();
        assert_eq!(steps.len(), 3);
        assert_eq!(replay(&shards, &steps), up);
        for (before, after) in shards.iter().zip(&up) {
            assert_eq!(after[0], before[0], "the preferred leader stays first");
            assert_eq!(after.len(), 2);
            assert_ne!(after[0], after[1]);
        }
        // Then the planner evens the counts out.
        let (_, even) = plan(&[1, 2, 3], &[], &up).unwrap();
        for n in [1, 2, 3] {
            assert_eq!(count(&even, n), 2, "{even:?}");
        }
        let three = place(&[1, 2, 3], 3, 3).unwrap();
        let (down, _) = resize(&[1, 2, 3], &three, 2).unwrap();
        assert_eq!(down.len(), 3);
        let mut after = three.clone();
        for s in &down {
            let Step::Move { shard, from, to: 0 } = *s else { panic!("{s:?}") };
            assert_ne!(after[shard][0], from, "the preferred leader stays");
            after[shard].retain(|n| *n != from);
        }
        let (_, even) = plan(&[1, 2, 3], &[], &after).unwrap();
        for n in [1, 2, 3] {
            assert_eq!(count(&even, n), 2, "{even:?}");
        }
        assert_eq!(resize(&[1, 2], &shards, 3), Err(PlacementError::NotEnoughNodes { rf: 3, nodes: 2 }));
        assert_eq!(resize(&[1, 2, 3], &three, 3).unwrap().0, vec![]);
    }

    proptest! {
        #[test]
        fn plans_are_legal_and_balanced(nodes in 1usize..7, extra in 0usize..3, shards in 1u32..12, rf in 1usize..4, drained in 0usize..2) {
            let rf = rf.min(nodes);
            let old: Vec<u64> = (1..=nodes as u64).collect();
            let before = place(&old, shards, rf as u32).unwrap();
            let all: Vec<u64> = (1..=(nodes + extra) as u64).collect();
            let excluded: Vec<u64> = all.iter().copied().take(drained).collect();
            match plan(&all, &excluded, &before) {
                Err(PlacementError::NotEnoughNodes { .. }) => prop_assert!(all.len() - excluded.len() < rf),
                Err(e) => prop_assert!(false, "{e}"),
                Ok((steps, after)) => {
                    prop_assert_eq!(replay(&before, &steps), after.clone());
                    let eligible: Vec<u64> = all.iter().copied().filter(|n| !excluded.contains(n)).collect();
                    let counts: Vec<usize> = eligible.iter().map(|n| count(&after, *n)).collect();
                    prop_assert!(counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1, "{:?}", after);
                    for e in &excluded { prop_assert_eq!(count(&after, *e), 0); }
                    for r in &after {
                        let mut d = r.clone();
                        d.sort_unstable();
                        d.dedup();
                        prop_assert_eq!(d.len(), rf);
                    }
                    // Re-planning a plan's result changes nothing.
                    prop_assert_eq!(plan(&all, &excluded, &after).unwrap().0, vec![]);
                }
            }
        }
    }

    #[test]
    fn table() {
        assert_eq!(place(&[1], 2, 1).unwrap(), vec![vec![1], vec![1]]);
        assert_eq!(place(&[3, 1, 2], 3, 2).unwrap(), vec![vec![1, 2], vec![2, 3], vec![3, 1]]);
        assert_eq!(place(&[1, 2], 1, 3), Err(PlacementError::NotEnoughNodes { rf: 3, nodes: 2 }));
        assert_eq!(place(&[1, 2], 1, 0), Err(PlacementError::ZeroReplication));
    }

    #[test]
    fn spreads_replicas_and_leaders_evenly() {
        let nodes = [10, 20, 30, 40];
        let p = place(&nodes, 8, 3).unwrap();
        for n in nodes {
            let replicas = p.iter().filter(|r| r.contains(&n)).count();
            let leaders = p.iter().filter(|r| r[0] == n).count();
            assert_eq!(replicas, 6);
            assert_eq!(leaders, 2);
        }
        for r in &p {
            let mut d = r.clone();
            d.dedup();
            assert_eq!(d.len(), 3, "replicas must be on distinct nodes");
        }
    }
}
