//! Replica placement: a pure function from the node list to each shard's
//! replica set.
//!
//! Shard `s` gets `rf` distinct nodes starting at position `s mod n` of the
//! sorted node list. The first replica is the preferred leader, so leaders
//! rotate over the nodes and every node holds `shards * rf / n` replicas
//! (±1).

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlacementError {
    #[error("replication factor {rf} exceeds the {nodes} nodes in the cluster")]
    NotEnoughNodes { rf: u32, nodes: usize },
    #[error("replication factor must be at least 1")]
    ZeroReplication,
}

/// Replica node ids for each of `shards` shards.
pub fn place(nodes: &[u64], shards: u32, rf: u32) -> Result<Vec<Vec<u64>>, PlacementError> {
    if rf == 0 {
        return Err(PlacementError::ZeroReplication);
    }
    let mut sorted = nodes.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if rf as usize > sorted.len() {
        return Err(PlacementError::NotEnoughNodes { rf, nodes: sorted.len() });
    }
    let n = sorted.len();
    Ok((0..shards as usize).map(|s| (0..rf as usize).map(|r| sorted[(s + r) % n]).collect()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

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
