#!/usr/bin/env bash
# Starts a local cluster of N `shoal node` processes (node 1 bootstraps, the
# others join through it) and one `shoal coordinator`, all on ports the OS
# picks, for benchmarks and manual fault drills.
#
#   bench/cluster.sh N DIR      # prints SHOAL_ADDR=... and the node addresses
#   bench/cluster.sh stop DIR   # kills every process of the cluster in DIR
#
# Binaries come from $SHOAL_BIN_DIR (default: $CARGO_TARGET_DIR/release or
# target/release). Logs and pids are in DIR.
set -euo pipefail
BIN="${SHOAL_BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}"

if [ "${1:-}" = stop ]; then
  for p in "$2"/*.pid; do kill -9 "$(cat "$p")" 2>/dev/null || true; rm -f "$p"; done
  exit 0
fi
N="${1:-3}"; DIR="${2:?usage: cluster.sh N DIR}"
mkdir -p "$DIR"

# wait_ready FILE PREFIX: prints the address after PREFIX once it appears.
wait_ready() {
  for _ in $(seq 600); do
    if grep -q "$2" "$1" 2>/dev/null; then sed -n "s/^$2\([^ ]*\).*/\1/p" "$1" | head -1; return 0; fi
    sleep 0.1
  done
  echo "timed out waiting for $1" >&2; return 1
}

node() { # id extra-args...
  local id=$1; shift
  "$BIN/shoal" node --node-id "$id" --data-dir "$DIR/n$id" --internal-listen "${LISTEN_HOST:-127.0.0.1}:0" "$@" >"$DIR/n$id.out" 2>"$DIR/n$id.log" &
  echo $! >"$DIR/n$id.pid"
  wait_ready "$DIR/n$id.out" "shoal node ready: internal="
}

first=$(node 1 --bootstrap)
addrs="$first"
echo "node 1: $first (pid $(cat "$DIR/n1.pid"))"
for id in $(seq 2 "$N"); do
  a=$(node "$id" --join "$first")
  addrs="$addrs,$a"
  echo "node $id: $a (pid $(cat "$DIR/n$id.pid"))"
done
"$BIN/shoal" coordinator --listen 127.0.0.1:0 --meta "$addrs" >"$DIR/coord.out" 2>"$DIR/coord.log" &
echo $! >"$DIR/coord.pid"
public=$(wait_ready "$DIR/coord.out" "shoal coordinator ready: public=")
# Wait until every node is in the map.
for _ in $(seq 300); do
  n=$("$BIN/shoalctl" --addr "$public" -o json cluster status 2>/dev/null | python3 -c 'import json,sys; print(sum(1 for n in json.load(sys.stdin)["nodes"] if n["state"]=="NODE_STATE_UP"))' 2>/dev/null || echo 0)
  [ "$n" = "$N" ] && break
  sleep 0.2
done
echo "SHOAL_ADDR=$public"
