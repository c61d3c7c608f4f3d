#!/usr/bin/env bash
# Restart-to-serving of a node whose data a previous bench/scale.sh run
# (NODES=1) left behind: starts a coordinator, then twice starts the node
# on its old data directory and address, and times process start to the
# "ready" line and to the first search the coordinator answers; stops the
# node with SIGTERM after each round (a clean shutdown).
#
#   bench/restart.sh RUN_DIR NODE_ADDR COLLECTION DATASET_DIR
#   e.g. bench/restart.sh /tmp/scale1/run-int8 127.0.0.1:43035 \
#          bench-clustered-1m-768-int8 /tmp/data/clustered-1m-768
#
# NODE_ADDR is the node's old internal address (node-1.log's ready line):
# the cluster map names it. Delete `<index dir>/<shard>.keys` first to time
# an open that scans every stored point (the path without a checkpoint).
#
# CRASH_WRITES=FILE.fvecs (optional): after round 1 serves, imports FILE
# into the collection (ids from 0: replaces of stored points) and kills the
# node with SIGKILL, so round 2 times a restart after a crash with those
# writes unsaved (journal replay, the versions in the pending set).
set -euo pipefail
run=$1; addr=$2; coll=$3; ds=$4
bin=${CARGO_TARGET_DIR:-target}/release
log=$(mktemp -d)
q=$(python3 -c "import struct,sys; f=open(sys.argv[1],'rb'); d=struct.unpack('<i',f.read(4))[0]; print(','.join(str(x) for x in struct.unpack('<%df'%d,f.read(4*d))))" "$ds/query.fvecs")
"$bin/shoal" --log warn coordinator --listen 127.0.0.1:0 --meta "$addr" > "$log/coord.log" 2>&1 &
cpid=$!
trap 'kill $cpid 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q "ready: public=" "$log/coord.log" && break; sleep 0.1; done
coord=$(grep -m1 -o "public=[^ ]*" "$log/coord.log" | cut -d= -f2)
for round in 1 2; do
  t0=$(date +%s.%N)
  "$bin/shoal" --log warn,shoal_node=info node --node-id 1 --data-dir "$run/n1" --internal-listen "$addr" --bootstrap > "$log/node-$round.log" 2>&1 &
  npid=$!
  for _ in $(seq 6000); do grep -q "shoal node ready" "$log/node-$round.log" && break; sleep 0.01; done
  t1=$(date +%s.%N)
  for _ in $(seq 6000); do "$bin/shoalctl" --addr "$coord" search -c "$coll" --vector="$q" --top-k 10 > /dev/null 2>&1 && break; sleep 0.02; done
  t2=$(date +%s.%N)
  echo "round $round: ready $(echo "$t1 - $t0" | bc) s, first search answered $(echo "$t2 - $t0" | bc) s"
  grep -E "shard opened" "$log/node-$round.log" | sed 's/.*shard opened/  shard opened/'
  if [ "$round" = 1 ] && [ -n "${CRASH_WRITES:-}" ]; then
    w0=$(date +%s.%N)
    "$bin/shoalctl" --addr "$coord" point import -c "$coll" "$CRASH_WRITES" --start-id 0 > /dev/null
    echo "  imported $CRASH_WRITES in $(echo "$(date +%s.%N) - $w0" | bc) s; SIGKILL"
    kill -KILL $npid; wait $npid || true
  else
    kill -TERM $npid; wait $npid || true
  fi
done
