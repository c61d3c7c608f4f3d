//! The node's Prometheus gauges, filled from the engine at each scrape
//! (`/metrics`, see `shoal_common::telemetry` and
//! docs/observability.md). Snapshot counters are bumped where snapshots are
//! built and installed (`raft::state_machine`).
use std::sync::LazyLock;

use prometheus::{GaugeVec, IntCounterVec};
use shoal_common::telemetry::{counter_vec, gauge_vec};

use crate::engine::Engine;

struct Gauges {
    term: GaugeVec,
    last_log: GaugeVec,
    applied: GaugeVec,
    leader: GaugeVec,
    lag: GaugeVec,
    points: GaugeVec,
    unindexed: GaugeVec,
    index_bytes: GaugeVec,
    rss: GaugeVec,
    info: GaugeVec,
    gpu: GaugeVec,
    gpu_memory: GaugeVec,
    gpu_mirrors: GaugeVec,
    gpu_mirrored: GaugeVec,
    gpu_breaker: GaugeVec,
    quarantined: GaugeVec,
    catching_up: GaugeVec,
    disk_free: GaugeVec,
    disk_low: GaugeVec,
    vectors_mapped: GaugeVec,
    vectors_resident: GaugeVec,
}

static GAUGES: LazyLock<Gauges> = LazyLock::new(|| Gauges {
    term: gauge_vec("shoal_raft_term", "Current Raft term, per group", &["group"]),
    last_log: gauge_vec("shoal_raft_last_log_index", "Last log index, per group", &["group"]),
    applied: gauge_vec("shoal_raft_applied_index", "Last applied log index, per group", &["group"]),
    leader: gauge_vec("shoal_raft_is_leader", "1 where this node leads the group", &["group"]),
    lag: gauge_vec("shoal_raft_replication_lag", "Entries a member is behind the leader (on the leader), per group and member", &["group", "member"]),
    points: gauge_vec("shoal_shard_points", "Points in a local shard replica", &["collection", "shard"]),
    unindexed: gauge_vec("shoal_shard_unindexed_points", "Applied points not yet in the replica's HNSW graph", &["collection", "shard"]),
    index_bytes: gauge_vec("shoal_index_memory_bytes", "Memory held by the node's HNSW indexes", &[]),
    rss: gauge_vec("shoal_process_resident_bytes", "Resident memory of the process", &[]),
    info: gauge_vec("shoal_node_info", "Always 1; labels describe the node", &["node_id", "device", "version"]),
    gpu: gauge_vec("shoal_gpu_available", "1 when searches can use a GPU on this node", &[]),
    gpu_memory: gauge_vec("shoal_gpu_memory_bytes", "GPU memory in use and in total (state = used | total)", &["state"]),
    gpu_mirrors: gauge_vec("shoal_gpu_mirrored_graphs", "Graphs (shard replicas, partition graphs) with rows on the GPU", &[]),
    gpu_mirrored: gauge_vec("shoal_gpu_mirrored_bytes", "GPU bytes the mirrored rows take", &[]),
    gpu_breaker: gauge_vec("shoal_gpu_breaker_open", "1 while repeated GPU failures keep scans on the CPU", &[]),
    quarantined: gauge_vec("shoal_replica_quarantined", "1 per local replica that could not be opened and serves nothing (see cluster status for why)", &["collection", "shard"]),
    disk_free: gauge_vec("shoal_disk_free_bytes", "Free bytes on the node's data volume", &[]),
    disk_low: gauge_vec("shoal_disk_low", "1 while the data volume is below the free-space watermark (upserts refused)", &[]),
    vectors_mapped: gauge_vec("shoal_shard_vector_file_mapped_bytes", "Bytes of a quantized replica's full-vector file (memory-mapped)", &["collection", "shard"]),
    vectors_resident: gauge_vec("shoal_shard_vector_file_resident_bytes", "Bytes of a quantized replica's full-vector file in memory now", &["collection", "shard"]),
    catching_up: gauge_vec("shoal_raft_catching_up", "1 per local group that lost its data with the disk and does not vote until it holds every committed entry", &["group"]),
});

/// Snapshots built on this node, per group kind ("shard" or "meta").
pub static SNAPSHOT_BUILDS: LazyLock<IntCounterVec> = LazyLock::new(|| counter_vec("shoal_snapshot_builds_total", "Snapshots built", &["kind"]));
/// Snapshots installed on this node (received from a leader).
pub static SNAPSHOT_INSTALLS: LazyLock<IntCounterVec> = LazyLock::new(|| counter_vec("shoal_snapshot_installs_total", "Snapshots installed from a leader", &["kind"]));
/// Bytes of snapshot files installed.
pub static SNAPSHOT_INSTALL_BYTES: LazyLock<IntCounterVec> = LazyLock::new(|| counter_vec("shoal_snapshot_install_bytes_total", "Bytes of snapshots installed", &["kind"]));

/// Refreshes the gauges from `engine` (blocking; run before a scrape).
pub fn collect(engine: &Engine, device: &str) {
    let g = &*GAUGES;
    for v in [&g.term, &g.last_log, &g.applied, &g.leader, &g.lag, &g.points, &g.unindexed, &g.quarantined, &g.catching_up] {
        v.reset();
    }
    let me = engine.node_id();
    for (group, m) in engine.group_metrics() {
        let grp = [group.as_str()];
        g.term.with_label_values(&grp).set(m.current_term as f64);
        let last = m.last_log_index.unwrap_or(0);
        g.last_log.with_label_values(&grp).set(last as f64);
        g.applied.with_label_values(&grp).set(m.last_applied.map_or(0, |l| l.index) as f64);
        g.leader.with_label_values(&grp).set(f64::from(m.current_leader == Some(me)));
        if engine.catch_up.is_held(&group) {
            g.catching_up.with_label_values(&grp).set(1.0);
        }
        if let Some(rep) = &m.replication {
            for (member, matched) in rep.iter() {
                let behind = last.saturating_sub(matched.map_or(0, |l| l.index));
                g.lag.with_label_values(&[group.as_str(), member.to_string().as_str()]).set(behind as f64);
            }
        }
    }
    let st = engine.status(device);
    for s in &st.shards {
        let l = [s.collection.as_str(), &s.shard_id.to_string()];
        if !s.quarantined.is_empty() {
            g.quarantined.with_label_values(&l).set(1.0);
            continue;
        }
        g.points.with_label_values(&l).set(s.points as f64);
        g.unindexed.with_label_values(&l).set(s.unindexed as f64);
        g.vectors_mapped.with_label_values(&l).set(s.vectors_mapped_bytes as f64);
        g.vectors_resident.with_label_values(&l).set(s.vectors_resident_bytes as f64);
    }
    g.index_bytes.with_label_values::<&str>(&[]).set(st.index_bytes as f64);
    g.rss.with_label_values::<&str>(&[]).set(st.rss_bytes as f64);
    if st.disk_free_bytes != u64::MAX {
        g.disk_free.with_label_values::<&str>(&[]).set(st.disk_free_bytes as f64);
    }
    g.disk_low.with_label_values::<&str>(&[]).set(f64::from(st.disk_low));
    g.info.reset();
    g.info.with_label_values(&[me.to_string().as_str(), device, st.version.as_str()]).set(1.0);
    g.gpu.with_label_values::<&str>(&[]).set(f64::from(device != "cpu"));
    if let Some(gpu) = &st.gpu {
        g.gpu_memory.with_label_values(&["used"]).set(gpu.memory_used_bytes as f64);
        g.gpu_memory.with_label_values(&["total"]).set(gpu.memory_total_bytes as f64);
        g.gpu_mirrors.with_label_values::<&str>(&[]).set(gpu.mirrors as f64);
        g.gpu_mirrored.with_label_values::<&str>(&[]).set(gpu.mirrored_bytes as f64);
        g.gpu_breaker.with_label_values::<&str>(&[]).set(f64::from(gpu.breaker_open));
    }
}
