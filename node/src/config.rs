//! Node configuration: defaults, then `SHOAL_*` environment variables, then
//! command-line flags (clap resolves the last two).
use std::path::PathBuf;

#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// Node id, unique in the cluster.
    #[arg(long, env = "SHOAL_NODE_ID", default_value_t = 1)]
    pub node_id: u64,
    /// Data directory (RocksDB and index files).
    #[arg(long, env = "SHOAL_DATA_DIR", default_value = "./shoal-data")]
    pub data_dir: PathBuf,
    /// Internal API listen address (port 0 picks a free port).
    #[arg(long = "internal-listen", env = "SHOAL_INTERNAL_LISTEN", default_value = "127.0.0.1:7400")]
    pub internal_listen: String,
    /// Address peers and coordinators dial; defaults to the bound listen address.
    #[arg(long, env = "SHOAL_ADVERTISE")]
    pub advertise: Option<String>,
    /// Addresses of nodes of the cluster to join (comma-separated). The node
    /// registers through the first that answers, at every start.
    #[arg(long, env = "SHOAL_JOIN", value_delimiter = ',')]
    pub join: Vec<String>,
    /// Start a new cluster with this node as its first member if it does
    /// not belong to one yet. Use on exactly one node (or run `shoalctl
    /// cluster init` instead); an empty disk alone never starts a cluster.
    /// Given together with `--join` (pod 0 of a StatefulSet), the node
    /// first asks the seeds and bootstraps only if every one answers and
    /// none belongs to a cluster; otherwise it joins theirs.
    #[arg(long, env = "SHOAL_BOOTSTRAP")]
    pub bootstrap: bool,
    /// Seconds between saves of changed HNSW indexes (0 disables; they are
    /// always saved at shutdown).
    #[arg(long, env = "SHOAL_INDEX_SAVE_INTERVAL", default_value_t = 60)]
    pub index_save_interval: u64,
    /// RocksDB memtable budget in MiB (all column families together).
    #[arg(long, env = "SHOAL_MEMTABLE_MB", default_value_t = 16)]
    pub memtable_mb: usize,
    /// RocksDB block cache in MiB.
    #[arg(long, env = "SHOAL_BLOCK_CACHE_MB", default_value_t = 8)]
    pub block_cache_mb: usize,
    /// Filtered searches whose filter allows at most this many points scan
    /// them exactly instead of searching HNSW with a predicate. Unset, each
    /// search chooses by its estimated cost (docs/filters.md).
    #[arg(long, env = "SHOAL_EXACT_SCAN_THRESHOLD")]
    pub exact_scan_threshold: Option<u64>,
    /// Microseconds a single exact search waits for concurrent exact
    /// searches of its shard, to score them in one scan (only while others
    /// are in flight; a lone search never waits). 0 batches only what
    /// queues while a scan runs.
    #[arg(long, env = "SHOAL_SCAN_BATCH_WINDOW_US", default_value_t = 100, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    pub scan_batch_window_us: u64,
    /// Exact scans on a GPU: `auto` uses one when the binary has CUDA
    /// support and the machine a driver and a device, `on` refuses to
    /// start without one, `off` never uses one (docs/operations.md).
    #[arg(long, env = "SHOAL_GPU", value_enum, default_value_t = crate::scan::device::GpuMode::Auto)]
    pub gpu: crate::scan::device::GpuMode,
    /// Build partition graphs for keyword values that filtered searches
    /// use (docs/filters.md); `false` turns them off.
    #[arg(long, env = "SHOAL_FILTER_PARTITIONS", default_value_t = true, action = clap::ArgAction::Set)]
    pub filter_partitions: bool,
    /// Build a shard snapshot after this many log entries since the last
    /// one; the log behind it is then purged (0 never snapshots: the log
    /// grows without bound).
    #[arg(long, env = "SHOAL_SNAPSHOT_EVERY", default_value_t = crate::raft::SNAPSHOT_EVERY)]
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot, so a follower that is only a
    /// little behind catches up from the log instead of a snapshot.
    #[arg(long, env = "SHOAL_SNAPSHOT_KEEP", default_value_t = crate::raft::SNAPSHOT_KEEP)]
    pub snapshot_keep: u64,
    /// The pod's name in a StatefulSet (`shoal-2`; Kubernetes sets it from
    /// `metadata.name`). When given, the node id is the pod's ordinal + 1
    /// (overriding `--node-id`), and `--bootstrap` acts only on ordinal 0,
    /// so every pod can run the same command.
    #[arg(long, env = "SHOAL_POD_NAME")]
    pub pod_name: Option<String>,
    /// Directory backups are written to and restored from: one filesystem
    /// shared by every node, mounted at the same path (backups are off
    /// without it).
    #[arg(long, env = "SHOAL_BACKUP_ROOT")]
    pub backup_root: Option<PathBuf>,
    /// Free space (MiB) the node keeps on its data volume: below it, it
    /// refuses upserts (RESOURCE_EXHAUSTED) and pauses replication to its
    /// own replicas until space returns (0 turns the check off; see
    /// docs/limits.md).
    #[arg(long, env = "SHOAL_MIN_FREE_DISK_MB", default_value_t = 100)]
    pub min_free_disk_mb: u64,
}

/// The ordinal of a StatefulSet pod name: the number after the last `-`.
pub fn pod_ordinal(name: &str) -> Option<u64> {
    let (_, n) = name.rsplit_once('-')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

impl NodeArgs {
    /// Applies `--pod-name`: node id = ordinal + 1, bootstrap only on
    /// ordinal 0.
    pub fn resolve(mut self) -> Result<Self, String> {
        if let Some(pod) = &self.pod_name {
            let ordinal = pod_ordinal(pod).ok_or_else(|| format!("--pod-name {pod:?} does not end in -<ordinal> (a StatefulSet pod name such as shoal-0)"))?;
            self.node_id = ordinal + 1;
            self.bootstrap &= ordinal == 0;
        }
        Ok(self)
    }

    /// Raft timing and log compaction for every group on the node.
    pub fn raft(&self) -> openraft::Config {
        crate::raft::config_with(self.snapshot_every, self.snapshot_keep)
    }

    pub fn rocks(&self) -> crate::storage::rocks::RocksTuning {
        crate::storage::rocks::RocksTuning { memtable_budget: self.memtable_mb.max(1) << 20, block_cache: self.block_cache_mb << 20 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_ordinals() {
        assert_eq!(pod_ordinal("shoal-0"), Some(0));
        assert_eq!(pod_ordinal("my-shoal-12"), Some(12));
        for bad in ["shoal", "shoal-", "shoal-x1", "shoal-1a", "-"] {
            assert_eq!(pod_ordinal(bad), None, "{bad}");
        }
    }
}
