#!/usr/bin/env bash
# Search recall and QPS before and after a rebalance and a resharding
# split of a live collection (docs/operations.md): 3 nodes ingest DATASET
# into 4 shards (rf 1) through the bench; a 4th node joins; `shoalctl
# cluster rebalance` moves shards onto it (snapshot transfers with the HNSW
# graph); the bench measures the same collection again (--reuse); then
# `shoalctl cluster split --all` splits every shard (4 -> 8) and the bench
# measures once more.
#
#   bench/ops_recall.sh DATASET_DIR OUT_DIR [extra bench flags]
#
# Writes OUT_DIR/before.json, after-rebalance.json, after-split.json (at
# once), after-compaction.json (once the split graphs are rebuilt) and
# fresh-8.json (a control: the data ingested fresh into 8 shards), and
# prints recall@10 and QPS per ef side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
DS="${1:?dataset dir}"; OUT="${2:?out dir}"; shift 2
BIN="${SHOAL_BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}"
mkdir -p "$OUT"
D=$(mktemp -d)
trap 'bench/cluster.sh stop "$D"; rm -rf "$D"' EXIT
bench/cluster.sh 3 "$D" | tee "$D/cluster.txt"
ADDR=$(sed -n 's/^SHOAL_ADDR=//p' "$D/cluster.txt")
NODE1=$(sed -n 's/^node 1: \([^ ]*\).*/\1/p' "$D/cluster.txt")
common=(--dataset "$DS" --replication-factor 1 --ef 32,64,128 --no-inprocess --rounds 1 --min-secs 2 "$@")
"$BIN/shoalctl" bench --addr "$ADDR" "${common[@]}" --shards 4 --json "$OUT/before.json"

"$BIN/shoal" node --node-id 4 --data-dir "$D/n4" --internal-listen 127.0.0.1:0 --join "$NODE1" >"$D/n4.out" 2>"$D/n4.log" &
echo $! >"$D/n4.pid"
for _ in $(seq 300); do grep -q "shoal node ready" "$D/n4.out" && break; sleep 0.2; done
sleep 2
start=$(date +%s.%N)
"$BIN/shoalctl" cluster rebalance --node "$NODE1"
end=$(date +%s.%N)
echo "rebalance took $(python3 -c "print(round($end - $start, 1))") s"
"$BIN/shoalctl" --addr "$ADDR" cluster status
"$BIN/shoalctl" bench --addr "$ADDR" "${common[@]}" --reuse --json "$OUT/after-rebalance.json"

NAME=$(python3 -c "import json,re,sys; print('bench-' + re.sub(r'[^A-Za-z0-9_-]', '-', json.load(open(sys.argv[1]))['name']))" "$DS/meta.json")
start=$(date +%s.%N)
"$BIN/shoalctl" cluster split --collection "$NAME" --all --node "$NODE1"
end=$(date +%s.%N)
echo "split of every shard took $(python3 -c "print(round($end - $start, 1))") s"
"$BIN/shoalctl" --addr "$ADDR" cluster status
"$BIN/shoalctl" bench --addr "$ADDR" "${common[@]}" --reuse --json "$OUT/after-split.json"
# Each half of a split graph is removed nodes until the node's indexer
# rebuilds it (node/src/shard/compact.rs): wait for the 8 rebuilds.
for _ in $(seq 600); do
  [ "$(cat "$D"/n*.log | grep -c "HNSW graph compacted.*$NAME")" -ge 8 ] && break
  sleep 1
done
echo "graphs compacted: $(cat "$D"/n*.log | grep -c "HNSW graph compacted.*$NAME") of 8, $(python3 -c "print(round($(date +%s.%N) - $end, 1))") s after the split"
"$BIN/shoalctl" bench --addr "$ADDR" "${common[@]}" --reuse --json "$OUT/after-compaction.json"
# Control: the same data ingested fresh into as many shards as the split
# left (the bench recreates the collection), on the same 4 nodes.
"$BIN/shoalctl" bench --addr "$ADDR" "${common[@]}" --shards 8 --json "$OUT/fresh-8.json"
python3 - "$OUT"/{before,after-rebalance,after-split,after-compaction,fresh-8}.json <<'PY'
import json, sys
names = ["before (4 shards)", "rebalanced", "split (8)", "compacted", "fresh 8"]
runs = [json.load(open(p))["runs"] for p in sys.argv[1:6]]
print("recall@10 / QPS per ef")
print(f"{'':<18}" + "".join(f"ef={r['ef']:<16}" for r in runs[0]))
for name, rs in zip(names, runs):
    print(f"{name:<18}" + "".join(f"{r['recall_at_10']:.4f} / {r['qps']:<7.0f} " for r in rs))
PY
