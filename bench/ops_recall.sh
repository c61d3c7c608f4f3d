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
# Writes OUT_DIR/before.json, OUT_DIR/after-rebalance.json,
# OUT_DIR/after-split.json and prints recall@10 and QPS per ef side by side.
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
# Control: the same data ingested fresh into as many shards as the split
# left (the bench recreates the collection), on the same 4 nodes.
"$BIN/shoalctl" bench --addr "$ADDR" "${common[@]}" --shards 8 --json "$OUT/fresh-8.json"
python3 - "$OUT/before.json" "$OUT/after-rebalance.json" "$OUT/after-split.json" "$OUT/fresh-8.json" <<'PY'
import json, sys
b, a, s, f = (json.load(open(p)) for p in sys.argv[1:5])
print("ef   recall@10: before  rebalanced  split   fresh-8   qps: before  rebalanced  split  fresh-8")
for rb, ra, rs, rf in zip(b["runs"], a["runs"], s["runs"], f["runs"]):
    print(f"{rb['ef']:<4}            {rb['recall_at_10']:.4f}  {ra['recall_at_10']:.4f}      {rs['recall_at_10']:.4f}  {rf['recall_at_10']:.4f}         {rb['qps']:<6.0f}  {ra['qps']:<10.0f}  {rs['qps']:<5.0f}  {rf['qps']:.0f}")
PY
