#!/usr/bin/env bash
# Scale harness: a local cluster loaded with a large dataset, then ingest
# rate, bytes per vector, QPS and recall per storage kind, and the time a
# restarted node takes to serve again.
#
#   bench/scale.sh OUT_DIR DATASET_DIR [STORAGE...]     (default: int8)
#
# DATASET_DIR is a dataset folder; `shoal-gen --out DIR --n 1000000 --dim
# 768` makes the 1M x 768 clustered set with exact ground truth. Per
# storage kind the script:
#   1. starts NODES nodes (default 3; node 1 bootstraps, the rest join) and
#      a coordinator, all on loopback ports the OS picks, data under OUT_DIR;
#   2. runs `shoalctl bench` (ingest, then searches at EF) with
#      REPLICAS replicas (default NODES) of SHARDS shards (default 1);
#   3. records the nodes' RSS (also in the bench's JSON, with the ratio to
#      raw f32 plus links) and their data directories' size;
#   4. stops node 1 with SIGTERM (a clean shutdown saves its graphs and key
#      checkpoints), starts it again, and times: process start to "ready",
#      and start to serving (NODES=1: the first search through the
#      coordinator succeeds; otherwise `shoal probe --ready`, which the node
#      re-evaluates every second, says its replicas are caught up);
#   5. stops everything.
# Results: OUT_DIR/scale-<storage>.json and a summary on stdout.
# Env: NODES, REPLICAS, SHARDS, EF (default 64), CONCURRENCY (default 2),
# CARGO_TARGET_DIR (binaries in its release/).
set -euo pipefail
out=$1; ds=$2; shift 2
kinds=("${@:-int8}")
[ ${#kinds[@]} -eq 0 ] && kinds=(int8)
bin=${CARGO_TARGET_DIR:-target}/release
nodes=${NODES:-3}; replicas=${REPLICAS:-$nodes}; shards=${SHARDS:-1}; ef=${EF:-64}
mkdir -p "$out"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# wait_line FILE PREFIX: echoes what follows PREFIX on FILE's first such line.
wait_line() {
  for _ in $(seq 1 600); do
    if l=$(grep -m1 "$2" "$1" 2>/dev/null); then echo "${l#*"$2"}" | cut -d' ' -f1; return 0; fi
    sleep 0.1
  done
  echo "timed out waiting for '$2' in $1" >&2; return 1
}

now() { date +%s.%N; }

start_node() { # id dir join(optional) -> sets node_pid[id], node_addr[id]
  local id=$1 dir=$2 join=${3:-} args
  args=(node --node-id "$id" --data-dir "$dir" --internal-listen "${node_listen[$id]:-127.0.0.1:0}")
  if [ "$id" = 1 ] && [ -z "$join" ]; then args+=(--bootstrap); fi
  [ -n "$join" ] && args+=(--join "$join")
  "$bin/shoal" --log warn "${args[@]}" > "$out/node-$id.log" 2>&1 &
  node_pid[$id]=$!
  pids+=("$!")
}

for kind in "${kinds[@]}"; do
  run=$out/run-$kind
  rm -rf "$run"; mkdir -p "$run"
  declare -A node_pid=() node_addr=() node_listen=()
  start_node 1 "$run/n1"
  node_addr[1]=$(wait_line "$out/node-1.log" "shoal node ready: internal=")
  node_listen[1]=${node_addr[1]}
  for id in $(seq 2 "$nodes"); do
    start_node "$id" "$run/n$id" "${node_addr[1]}"
    node_addr[$id]=$(wait_line "$out/node-$id.log" "shoal node ready: internal=")
    node_listen[$id]=${node_addr[$id]}
  done
  seeds=$(for id in $(seq 1 "$nodes"); do printf '%s,' "${node_addr[$id]}"; done); seeds=${seeds%,}
  "$bin/shoal" --log warn coordinator --listen 127.0.0.1:0 --meta "$seeds" > "$out/coord.log" 2>&1 &
  pids+=("$!")
  coord=$(wait_line "$out/coord.log" "shoal coordinator ready: public=")
  echo "[$kind] $nodes nodes (${node_addr[*]}), coordinator $coord"

  "$bin/shoalctl" --addr "$coord" bench --dataset "$ds" --storage "$kind" --ef "$ef" --shards "$shards" \
    --replication-factor "$replicas" --concurrency "${CONCURRENCY:-2}" --rounds 1 --no-inprocess \
    --json "$run/bench.json" | tee "$run/bench.txt"
  # shoalctl bench's collection: bench-<dataset name>[-<kind> unless f32].
  collection=bench-$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['name'])" "$ds/meta.json")$([ "$kind" = f32 ] || echo "-$kind")
  rss=$(for id in $(seq 1 "$nodes"); do ps -o rss= -p "${node_pid[$id]}"; done | paste -sd+ | bc)
  disk=$(du -sb "$run" | cut -f1)

  # Restart node 1 cleanly and time it back to serving.
  kill -TERM "${node_pid[1]}"; wait "${node_pid[1]}" || true
  t0=$(now)
  start_node 1 "$run/n1"
  wait_line "$out/node-1.log" "shoal node ready: internal=" > /dev/null
  t_ready=$(now)
  q=$(python3 -c "import struct,sys; f=open(sys.argv[1],'rb'); d=struct.unpack('<i',f.read(4))[0]; print(','.join(str(x) for x in struct.unpack('<%df'%d,f.read(4*d))))" "$ds/query.fvecs")
  for _ in $(seq 1 1200); do
    if [ "$nodes" = 1 ]; then
      "$bin/shoalctl" --addr "$coord" search -c "$collection" --vector="$q" --top-k 10 > /dev/null 2>&1 && break
    else
      "$bin/shoal" --log error probe --node "${node_addr[1]}" --ready > /dev/null 2>&1 && break
    fi
    sleep 0.05
  done
  t_serve=$(now)
  python3 - "$run" "$kind" "$nodes" "$rss" "$disk" "$t0" "$t_ready" "$t_serve" "$out/scale-$kind.json" <<'EOF'
import json, sys
run, kind, nodes, rss, disk, t0, t_ready, t_serve, dest = sys.argv[1:]
bench = json.load(open(f"{run}/bench.json"))
n = bench.get("vectors") or 0
r = {"storage": kind, "nodes": int(nodes), "points": n, "bench": bench,
     "rss_bytes_all_nodes": int(rss) * 1024, "disk_bytes_all_nodes": int(disk),
     "restart_to_ready_s": float(t_ready) - float(t0), "restart_to_serving_s": float(t_serve) - float(t0)}
if n:
    r["rss_bytes_per_vector_per_replica"] = r["rss_bytes_all_nodes"] / n / int(nodes)
    r["disk_bytes_per_vector_per_replica"] = r["disk_bytes_all_nodes"] / n / int(nodes)
json.dump(r, open(dest, "w"), indent=1)
print(f"[{kind}] restart: ready {r['restart_to_ready_s']:.2f}s, serving {r['restart_to_serving_s']:.2f}s; "
      f"RSS {r['rss_bytes_all_nodes']/2**30:.2f} GiB, disk {r['disk_bytes_all_nodes']/2**30:.2f} GiB over {nodes} nodes")
EOF
  cleanup; pids=()
done
