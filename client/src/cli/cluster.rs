//! `shoalctl cluster` operations: replica moves, leadership, rebalance,
//! drain, node removal, replication factor (docs/operations.md).
//!
//! These are admin calls: they talk to the internal `Meta` service of any
//! node (`--node`, `SHOAL_NODE`), which forwards them to the metadata
//! leader; applications only ever see the coordinator's public port.
//! Submitted operations are recorded in the cluster map and driven by the
//! cluster itself: interrupting `shoalctl` stops the display, not the
//! work, and `shoalctl cluster ops --watch` picks the display up again.
use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use shoal_proto::internal::v1::meta_client::MetaClient;
use shoal_proto::internal::v1::operation::Kind;
use shoal_proto::internal::v1::*;
use shoal_proto::placement::{self, Step};
use tonic::transport::Channel;

use super::{print_table, table, Output};

#[derive(Args)]
pub struct NodeAddr {
    /// Internal address (host:port) of any node.
    #[arg(long, env = "SHOAL_NODE", default_value = "127.0.0.1:7400")]
    pub node: String,
}

#[derive(Args)]
pub struct ShardArgs {
    #[arg(long)]
    pub collection: String,
    #[arg(long)]
    pub shard: u32,
}

#[derive(Args)]
pub struct Submit {
    /// Record the operations and return at once (watch them with
    /// `shoalctl cluster ops --watch`).
    #[arg(long)]
    pub no_wait: bool,
    /// Run up to this many of the operations at once, each on a shard of
    /// its own (1 to 16; default one at a time).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub parallel: u32,
}

#[derive(Subcommand)]
pub enum OpsCmd {
    /// Move a shard replica from one node to another (learner added,
    /// caught up, promoted; the source's copy removed).
    Move {
        #[command(flatten)]
        node: NodeAddr,
        #[command(flatten)]
        shard: ShardArgs,
        #[arg(long)]
        from: u64,
        #[arg(long)]
        to: u64,
        #[command(flatten)]
        submit: Submit,
    },
    /// Add a replica of a shard on a node.
    AddReplica {
        #[command(flatten)]
        node: NodeAddr,
        #[command(flatten)]
        shard: ShardArgs,
        #[arg(long)]
        to: u64,
        #[command(flatten)]
        submit: Submit,
    },
    /// Remove a shard's replica from a node (never the last one).
    RemoveReplica {
        #[command(flatten)]
        node: NodeAddr,
        #[command(flatten)]
        shard: ShardArgs,
        #[arg(long)]
        from: u64,
        #[command(flatten)]
        submit: Submit,
    },
    /// Hand a shard's leadership to one of its replicas (and make it the
    /// preferred leader).
    TransferLeader {
        #[command(flatten)]
        node: NodeAddr,
        #[command(flatten)]
        shard: ShardArgs,
        #[arg(long)]
        to: u64,
        #[command(flatten)]
        submit: Submit,
    },
    /// Change a collection's replication factor: replicas are added or
    /// removed one at a time, then the counts are evened out.
    SetReplication {
        #[command(flatten)]
        node: NodeAddr,
        #[arg(long)]
        collection: String,
        #[arg(long)]
        rf: u32,
        #[command(flatten)]
        submit: Submit,
    },
    /// Even out replicas and preferred leaders over the nodes: shows the
    /// plan, then runs it one move at a time with a progress display.
    Rebalance {
        #[command(flatten)]
        node: NodeAddr,
        /// Show the plan only.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        submit: Submit,
    },
    /// Move every replica off a node (before removing it).
    Drain {
        #[command(flatten)]
        node: NodeAddr,
        #[arg(long)]
        node_id: u64,
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        submit: Submit,
    },
    /// Remove a drained node from the cluster (refused while it holds
    /// replicas). Stop its process afterwards.
    RemoveNode {
        #[command(flatten)]
        node: NodeAddr,
        #[arg(long)]
        node_id: u64,
    },
    /// Split shards in two hash ranges (resharding, online): the upper
    /// half of each range moves to a new shard on the same replicas.
    Split {
        #[command(flatten)]
        node: NodeAddr,
        #[arg(long)]
        collection: String,
        /// The shard to split (or --all).
        #[arg(long, required_unless_present = "all", conflicts_with = "all")]
        shard: Option<u32>,
        /// Split every shard (doubles the shard count).
        #[arg(long)]
        all: bool,
        /// Split point: the first hash of the new shard, hex (default: the
        /// middle of the range). Only with --shard.
        #[arg(long, value_parser = parse_hash, conflicts_with = "all")]
        at: Option<u64>,
        #[command(flatten)]
        submit: Submit,
    },
    /// Recorded operations: pending ones with their progress, then the last
    /// finished ones.
    Ops {
        #[command(flatten)]
        node: NodeAddr,
        /// Follow the pending operations until they finish.
        #[arg(long)]
        watch: bool,
    },
}

async fn connect(addr: &str) -> Result<MetaClient<Channel>> {
    Ok(MetaClient::new(super::node_channel(addr).await?))
}

fn status_err(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", s.message())
}

/// Calls `f` until it succeeds or fails for a reason other than
/// UNAVAILABLE (a metadata election after a leader left), for up to 15 s.
/// Repeating a submission whose first try did commit after all is
/// harmless: every operation is idempotent (a second identical move finds
/// the replica moved and finishes at once).
async fn retry<T, F, Fut>(mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        match f().await {
            Ok(r) => return Ok(r.into_inner()),
            Err(s) if s.code() == tonic::Code::Unavailable && std::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(300)).await,
            Err(s) => return Err(status_err(s)),
        }
    }
}

fn mv(collection: &str, shard_id: u32, from: u64, to: u64) -> Operation {
    Operation { kind: Some(Kind::Move(MoveReplica { collection: collection.into(), shard_id, from_node: from, to_node: to })), ..Default::default() }
}

fn transfer(collection: &str, shard_id: u32, to: u64) -> Operation {
    Operation { kind: Some(Kind::Transfer(TransferLeader { collection: collection.into(), shard_id, to_node: to })), ..Default::default() }
}

/// One line describing an operation.
pub fn describe(op: &Operation) -> String {
    match &op.kind {
        Some(Kind::Move(m)) => match (m.from_node, m.to_node) {
            (0, t) => format!("add replica of {}/{} on node {t}", m.collection, m.shard_id),
            (f, 0) => format!("remove replica of {}/{} from node {f}", m.collection, m.shard_id),
            (f, t) => format!("move {}/{} from node {f} to node {t}", m.collection, m.shard_id),
        },
        Some(Kind::Transfer(t)) => format!("leader of {}/{} to node {}", t.collection, t.shard_id, t.to_node),
        Some(Kind::SetReplication(r)) => format!("replication factor of {} to {}", r.collection, r.replication_factor),
        Some(Kind::Split(sp)) if sp.child_shard_id != 0 => format!("split {}/{} at {:#018x} into new shard {}", sp.collection, sp.shard_id, sp.mid, sp.child_shard_id),
        Some(Kind::Split(sp)) => format!("split {}/{}", sp.collection, sp.shard_id),
        None => "?".into(),
    }
}

fn state_name(op: &Operation) -> &'static str {
    match OperationState::try_from(op.state).unwrap_or(OperationState::Unspecified) {
        OperationState::Pending => "pending",
        OperationState::Done => "done",
        OperationState::Failed => "failed",
        OperationState::Unspecified => "?",
    }
}

fn op_json(op: &Operation) -> serde_json::Value {
    json!({"id": op.id, "operation": describe(op), "state": state_name(op), "detail": op.detail, "progress": [op.progress_done, op.progress_total], "batch": op.batch})
}

/// Every shard of the map with its collection: (collection, shard id,
/// replicas).
fn shards(map: &ClusterMap) -> Vec<(String, u32, Vec<u64>)> {
    map.collections
        .iter()
        .flat_map(|c| {
            let name = c.config.as_ref().map_or(String::new(), |x| x.name.clone());
            // A shard being split off is not placed by plans until it is done.
            c.shards.iter().filter(|s| !s.splitting).map(move |s| (name.clone(), s.shard_id, s.replicas.clone()))
        })
        .collect()
}

/// Turns planner steps over `all` into operations.
fn to_ops(all: &[(String, u32, Vec<u64>)], steps: &[Step]) -> Vec<Operation> {
    steps
        .iter()
        .map(|s| match *s {
            Step::Move { shard, from, to } => mv(&all[shard].0, all[shard].1, from, to),
            Step::Leader { shard, to } => transfer(&all[shard].0, all[shard].1, to),
        })
        .collect()
}

/// Submits `ops` (after showing them) and follows them unless told not to.
async fn submit(meta: &mut MetaClient<Channel>, ops: Vec<Operation>, batch: &str, s: &Submit, output: Output) -> Result<()> {
    if ops.is_empty() {
        if output == Output::Json {
            println!("{}", json!({"batch": batch, "operations": []}));
        } else {
            println!("{batch}: nothing to do");
        }
        return Ok(());
    }
    let req = SubmitOperationsRequest { operations: ops, batch: batch.into(), parallel: s.parallel };
    let ids = retry(|| {
        let mut m = meta.clone();
        let r = req.clone();
        async move { m.submit_operations(r).await }
    })
    .await?
    .ids;
    if s.no_wait {
        if output == Output::Json {
            println!("{}", json!({"batch": batch, "ids": ids}));
        } else {
            println!("{batch}: recorded operations {ids:?}; follow them with `shoalctl cluster ops --watch`");
        }
        return Ok(());
    }
    watch(meta, &ids, output).await
}

/// Follows operations `ids` until they finish, with a progress bar (one
/// step per operation; the message shows the current one and its learner's
/// catch-up). Fails if any failed.
async fn watch(meta: &mut MetaClient<Channel>, ids: &[u64], output: Output) -> Result<()> {
    let bar = if output == Output::Json { ProgressBar::hidden() } else { ProgressBar::new(ids.len() as u64) };
    bar.set_style(ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}").expect("template").progress_chars("=> "));
    let mut misses = 0;
    let finished = loop {
        let ops = match meta.list_operations(ListOperationsRequest {}).await {
            Ok(r) => {
                misses = 0;
                r.into_inner().operations
            }
            // The metadata leader may be changing: keep watching a while.
            Err(s) if misses < 60 => {
                misses += 1;
                bar.set_message(format!("(waiting for the cluster: {})", s.message()));
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(s) => return Err(status_err(s)),
        };
        let mine: Vec<&Operation> = ops.iter().filter(|o| ids.contains(&o.id)).collect();
        let done = mine.iter().filter(|o| o.state != OperationState::Pending as i32).count() + ids.len().saturating_sub(mine.len());
        bar.set_position(done as u64);
        if let Some(cur) = mine.iter().find(|o| o.state == OperationState::Pending as i32) {
            let progress = if cur.progress_total > 0 { format!(" ({}/{} entries)", cur.progress_done, cur.progress_total) } else { String::new() };
            bar.set_message(format!("#{} {}: {}{progress}", cur.id, describe(cur), cur.detail));
        }
        if done == ids.len() {
            break mine.into_iter().cloned().collect::<Vec<_>>();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    bar.finish_and_clear();
    let failed: Vec<&Operation> = finished.iter().filter(|o| o.state == OperationState::Failed as i32).collect();
    if output == Output::Json {
        println!("{}", json!({"operations": finished.iter().map(op_json).collect::<Vec<_>>()}));
    } else {
        print_ops(&finished);
    }
    if !failed.is_empty() {
        bail!("{} of {} operations failed", failed.len(), ids.len());
    }
    Ok(())
}

fn print_ops(ops: &[Operation]) {
    let mut t = table(&["ID", "OPERATION", "STATE", "DETAIL", "BATCH"]);
    for op in ops {
        let detail = if op.progress_total > 0 { format!("{} ({}/{})", op.detail, op.progress_done, op.progress_total) } else { op.detail.clone() };
        t.add_row(vec![op.id.to_string(), describe(op), state_name(op).into(), detail, op.batch.clone()]);
    }
    print_table(t);
}

fn show_plan(ops: &[Operation], before: &BTreeMap<u64, (usize, usize)>, after: &BTreeMap<u64, (usize, usize)>, output: Output) {
    if output == Output::Json {
        return;
    }
    let mut t = table(&["NODE", "REPLICAS", "LEADERS"]);
    for (n, (r, l)) in before {
        let (r2, l2) = after.get(n).copied().unwrap_or_default();
        t.add_row(vec![n.to_string(), format!("{r} -> {r2}"), format!("{l} -> {l2}")]);
    }
    print_table(t);
    for (i, op) in ops.iter().enumerate() {
        println!("{:>4}. {}", i + 1, describe(op));
    }
}

/// Replicas and preferred leaders per node of the given replica sets.
fn per_node(nodes: &[u64], sets: &[Vec<u64>]) -> BTreeMap<u64, (usize, usize)> {
    let mut out: BTreeMap<u64, (usize, usize)> = nodes.iter().map(|n| (*n, (0, 0))).collect();
    for s in sets {
        for (i, n) in s.iter().enumerate() {
            let e = out.entry(*n).or_default();
            e.0 += 1;
            e.1 += (i == 0) as usize;
        }
    }
    out
}

async fn pending_guard(meta: &mut MetaClient<Channel>) -> Result<()> {
    let ops = retry(|| {
        let mut m = meta.clone();
        async move { m.list_operations(ListOperationsRequest {}).await }
    })
    .await?
    .operations;
    let pending = ops.iter().filter(|o| o.state == OperationState::Pending as i32).count();
    if pending > 0 {
        bail!("{pending} operations are still pending; plan again once they finish (`shoalctl cluster ops --watch`)");
    }
    Ok(())
}

pub async fn run(cmd: OpsCmd, output: Output) -> Result<()> {
    match cmd {
        OpsCmd::Move { node, shard, from, to, submit: s } => {
            let mut meta = connect(&node.node).await?;
            submit(&mut meta, vec![mv(&shard.collection, shard.shard, from, to)], "move", &s, output).await
        }
        OpsCmd::AddReplica { node, shard, to, submit: s } => {
            let mut meta = connect(&node.node).await?;
            submit(&mut meta, vec![mv(&shard.collection, shard.shard, 0, to)], "add replica", &s, output).await
        }
        OpsCmd::RemoveReplica { node, shard, from, submit: s } => {
            let mut meta = connect(&node.node).await?;
            submit(&mut meta, vec![mv(&shard.collection, shard.shard, from, 0)], "remove replica", &s, output).await
        }
        OpsCmd::TransferLeader { node, shard, to, submit: s } => {
            let mut meta = connect(&node.node).await?;
            submit(&mut meta, vec![transfer(&shard.collection, shard.shard, to)], "transfer leader", &s, output).await
        }
        OpsCmd::SetReplication { node, collection, rf, submit: s } => {
            let mut meta = connect(&node.node).await?;
            pending_guard(&mut meta).await?;
            let map = meta.get_cluster_map(GetClusterMapRequest {}).await.map_err(status_err)?.into_inner();
            let all: Vec<_> = shards(&map).into_iter().filter(|s| s.0 == collection).collect();
            if all.is_empty() {
                bail!("collection {collection:?} not found");
            }
            let nodes: Vec<u64> = map.nodes.iter().map(|n| n.id).collect();
            let sets: Vec<Vec<u64>> = all.iter().map(|s| s.2.clone()).collect();
            let (steps, resized) = placement::resize(&nodes, &sets, rf)?;
            let (even, after) = placement::plan(&nodes, &[], &resized)?;
            let mut ops = to_ops(&all, &steps);
            ops.extend(to_ops(&all, &even));
            ops.push(Operation { kind: Some(Kind::SetReplication(SetReplication { collection: collection.clone(), replication_factor: rf })), ..Default::default() });
            show_plan(&ops, &per_node(&nodes, &sets), &per_node(&nodes, &after), output);
            submit(&mut meta, ops, &format!("replication factor of {collection} to {rf}"), &s, output).await
        }
        OpsCmd::Rebalance { node, dry_run, submit: s } => plan_and_run(&node.node, &[], "rebalance", dry_run, &s, output).await,
        OpsCmd::Drain { node, node_id, dry_run, submit: s } => plan_and_run(&node.node, &[node_id], &format!("drain node {node_id}"), dry_run, &s, output).await,
        OpsCmd::RemoveNode { node, node_id } => {
            let meta = connect(&node.node).await?;
            let map = retry(|| {
                let mut m = meta.clone();
                async move { m.remove_node(RemoveNodeRequest { node_id }).await }
            })
            .await?;
            if output == Output::Json {
                println!("{}", json!({"removed": node_id, "epoch": map.epoch, "nodes": map.nodes.iter().map(|n| n.id).collect::<Vec<_>>()}));
            } else {
                println!("node {node_id} removed (map epoch {}); stop its process now", map.epoch);
            }
            Ok(())
        }
        OpsCmd::Split { node, collection, shard, all, at, submit: s } => {
            let mut meta = connect(&node.node).await?;
            let ids: Vec<u32> = match shard {
                Some(id) => vec![id],
                None => {
                    let map = meta.get_cluster_map(GetClusterMapRequest {}).await.map_err(status_err)?.into_inner();
                    let all: Vec<u32> = shards(&map).into_iter().filter(|x| x.0 == collection).map(|x| x.1).collect();
                    if all.is_empty() {
                        bail!("collection {collection:?} not found");
                    }
                    all
                }
            };
            debug_assert!(all || ids.len() == 1);
            let ops = ids
                .into_iter()
                .map(|shard_id| Operation { kind: Some(Kind::Split(SplitShard { collection: collection.clone(), shard_id, mid: at.unwrap_or(0), child_shard_id: 0 })), ..Default::default() })
                .collect();
            submit(&mut meta, ops, &format!("split {collection}"), &s, output).await
        }
        OpsCmd::Ops { node, watch: follow } => {
            let mut meta = connect(&node.node).await?;
            let ops = retry(|| {
                let mut m = meta.clone();
                async move { m.list_operations(ListOperationsRequest {}).await }
            })
            .await?
            .operations;
            let pending: Vec<u64> = ops.iter().filter(|o| o.state == OperationState::Pending as i32).map(|o| o.id).collect();
            if follow && !pending.is_empty() {
                return watch(&mut meta, &pending, output).await;
            }
            if output == Output::Json {
                println!("{}", json!({"operations": ops.iter().map(op_json).collect::<Vec<_>>()}));
            } else {
                print_ops(&ops);
            }
            Ok(())
        }
    }
}

/// A hash value on the command line: hex with or without `0x`.
fn parse_hash(s: &str) -> std::result::Result<u64, String> {
    let t = s.strip_prefix("0x").unwrap_or(s);
    match u64::from_str_radix(t, 16) {
        Ok(0) => Err("0 is the start of the hash space: the lower half would be empty".into()),
        Ok(h) => Ok(h),
        Err(e) => Err(format!("{s:?} is not a 64-bit hex hash: {e}")),
    }
}

async fn plan_and_run(addr: &str, excluded: &[u64], batch: &str, dry_run: bool, s: &Submit, output: Output) -> Result<()> {
    let mut meta = connect(addr).await?;
    pending_guard(&mut meta).await?;
    let map = meta.get_cluster_map(GetClusterMapRequest {}).await.map_err(status_err)?.into_inner();
    for e in excluded {
        if !map.nodes.iter().any(|n| n.id == *e) {
            bail!("node {e} is not in the cluster");
        }
    }
    let all = shards(&map);
    let nodes: Vec<u64> = map.nodes.iter().map(|n| n.id).collect();
    let sets: Vec<Vec<u64>> = all.iter().map(|s| s.2.clone()).collect();
    let (steps, after) = placement::plan(&nodes, excluded, &sets)?;
    let ops = to_ops(&all, &steps);
    show_plan(&ops, &per_node(&nodes, &sets), &per_node(&nodes, &after), output);
    if dry_run {
        if output == Output::Json {
            println!("{}", json!({"batch": batch, "plan": ops.iter().map(describe).collect::<Vec<_>>()}));
        }
        return Ok(());
    }
    submit(&mut meta, ops, batch, s, output).await
}

#[derive(Subcommand)]
pub enum BackupCmd {
    /// Back a collection up into the nodes' shared backup root: each
    /// shard's leader writes a consistent copy, then the manifest with
    /// checksums.
    Create {
        #[command(flatten)]
        node: NodeAddr,
        #[arg(long)]
        collection: String,
        /// Backup name (a directory under the backup root).
        #[arg(long)]
        name: String,
    },
    /// Show a backup's manifest.
    Show {
        #[command(flatten)]
        node: NodeAddr,
        #[arg(long)]
        name: String,
    },
    /// Restore a backup into a new collection through the coordinator
    /// (`--addr`), with any shard count and replication factor. Safe to
    /// run again after an interruption: points are upserted by id, so
    /// `--resume` continues into the existing collection.
    Restore {
        #[command(flatten)]
        node: NodeAddr,
        #[arg(long)]
        name: String,
        /// The new collection's name.
        #[arg(long)]
        collection: String,
        /// Shard count (default: the backed-up collection's).
        #[arg(long)]
        shards: Option<u32>,
        /// Replication factor (default: the backed-up collection's).
        #[arg(long)]
        replication_factor: Option<u32>,
        /// Write into the collection if it exists already (a retried
        /// restore).
        #[arg(long)]
        resume: bool,
    },
}

fn parse_manifest(json: &str) -> Result<serde_json::Value> {
    serde_json::from_str(json).context("undecodable backup manifest")
}

pub async fn run_backup(cmd: BackupCmd, addr: &str, output: Output) -> Result<()> {
    match cmd {
        BackupCmd::Create { node, collection, name } => {
            let mut meta = connect(&node.node).await?;
            let t = std::time::Instant::now();
            let m = meta.create_backup(CreateBackupRequest { collection, name }).await.map_err(status_err)?.into_inner();
            let v = parse_manifest(&m.json)?;
            if output == Output::Json {
                println!("{}", serde_json::to_string(&v)?);
            } else {
                let points: u64 = v["shards"].as_array().map_or(0, |s| s.iter().filter_map(|x| x["points"].as_u64()).sum());
                println!("backup {} of {}: {} shards, {points} points in {:.1} s", v["name"], v["collection"], v["shards"].as_array().map_or(0, Vec::len), t.elapsed().as_secs_f64());
            }
            Ok(())
        }
        BackupCmd::Show { node, name } => {
            let mut meta = connect(&node.node).await?;
            let m = meta.get_backup(GetBackupRequest { name }).await.map_err(status_err)?.into_inner();
            println!("{}", if output == Output::Json { serde_json::to_string(&parse_manifest(&m.json)?)? } else { m.json });
            Ok(())
        }
        BackupCmd::Restore { node, name, collection, shards, replication_factor, resume } => {
            use prost::Message;
            let mut meta = connect(&node.node).await?;
            let m = parse_manifest(&meta.get_backup(GetBackupRequest { name: name.clone() }).await.map_err(status_err)?.into_inner().json)?;
            let hex = m["config_protobuf_hex"].as_str().context("manifest lacks the collection config")?;
            let bytes: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16)).collect::<Result<_, _>>().context("bad config in manifest")?;
            let mut config = shoal_proto::v1::CollectionConfig::decode(bytes.as_slice()).context("bad config in manifest")?;
            config.name = collection.clone();
            if let Some(s) = shards {
                config.shard_count = s;
            }
            if let Some(r) = replication_factor {
                config.replication_factor = r;
            }
            // Verify every file against the manifest before touching the
            // target cluster (a read at cursor 0 checks the checksum).
            for s in m["shards"].as_array().into_iter().flatten() {
                let shard_id = s["shard_id"].as_u64().unwrap_or(0) as u32;
                meta.read_backup(ReadBackupRequest { name: name.clone(), shard_id, cursor: 0, max_points: 1 }).await.map_err(status_err)?;
            }
            let client = super::public_client(addr).await?;
            let exists = client.get_collection(&collection).await.is_ok();
            if exists && !resume {
                bail!("collection {collection:?} exists; pass --resume to continue a restore into it");
            }
            if !exists {
                client.create_collection(config).await?;
            }
            let total: u64 = m["shards"].as_array().map_or(0, |s| s.iter().filter_map(|x| x["points"].as_u64()).sum());
            let bar = if output == Output::Json { ProgressBar::hidden() } else { ProgressBar::new(total) };
            bar.set_style(ProgressStyle::with_template("restore {bar:40} {pos}/{len} {per_sec} eta {eta}").expect("template").progress_chars("=> "));
            let t = std::time::Instant::now();
            let mut restored = 0u64;
            for s in m["shards"].as_array().into_iter().flatten() {
                let shard_id = s["shard_id"].as_u64().unwrap_or(0) as u32;
                let mut cursor = 0;
                loop {
                    let page = meta.read_backup(ReadBackupRequest { name: name.clone(), shard_id, cursor, max_points: 1000 }).await.map_err(status_err)?.into_inner();
                    let n = page.points.len() as u64;
                    if n > 0 {
                        client.upsert_raw(shoal_proto::v1::UpsertPointsRequest { collection: collection.clone(), points: page.points }).await?;
                    }
                    restored += n;
                    bar.inc(n);
                    cursor = page.next_cursor;
                    if page.done {
                        break;
                    }
                }
            }
            bar.finish_and_clear();
            if output == Output::Json {
                println!("{}", json!({"backup": name, "collection": collection, "points": restored, "seconds": t.elapsed().as_secs_f64()}));
            } else {
                println!("restored {restored} points of backup {name} into {collection} in {:.1} s", t.elapsed().as_secs_f64());
            }
            Ok(())
        }
    }
}
