#!/usr/bin/env bash
# The single-node benchmark of docs/benchmarks.md ("Single node"): for each
# dataset, a fresh `shoal dev` per run, in three modes: one query per
# `Search` call, 8 per `SearchBatch` call, and one per message of a
# `SearchStream`; each against usearch in-process in the same run, with the
# server's CPU time per query (--server-pid).
#
#   [MODES="1 8 stream"] bench/single_node.sh OUT_DIR DATASET_DIR... [-- extra bench flags]
#
# Writes OUT_DIR/NAME.json, NAME-batch8.json and NAME-stream.json (plus
# .png plots) and prints the tables (bench/tables.py).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:?out dir}"; shift
sets=(); while (($#)) && [ "$1" != -- ]; do sets+=("$1"); shift; done
[ "${1:-}" = -- ] && shift
BIN="${SHOAL_BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}"
mkdir -p "$OUT"
D=$(mktemp -d)
trap '[ -f "$D/pid" ] && kill "$(cat "$D/pid")" 2>/dev/null; rm -rf "$D"' EXIT
for ds in "${sets[@]}"; do
  name=$(basename "$ds")
  for b in ${MODES:-1 8 stream}; do
    case $b in
      stream) suffix=-stream; mode=(--stream) ;;
      1) suffix=; mode=() ;;
      *) suffix=-batch$b; mode=(--search-batch "$b") ;;
    esac
    rm -rf "$D/data" && mkdir "$D/data"
    "$BIN/shoal" dev --listen 127.0.0.1:0 --data-dir "$D/data" >"$D/out" 2>"$D/log" &
    echo $! >"$D/pid"
    for _ in $(seq 300); do grep -q "ready: public=" "$D/out" && break; sleep 0.1; done
    addr=$(sed -n 's/.*ready: public=\([^ ]*\).*/\1/p' "$D/out")
    [ -n "$addr" ] || { cat "$D/log"; echo "shoal dev did not start" >&2; exit 1; }
    "$BIN/shoalctl" --addr "$addr" bench --dataset "$ds" --ef 16,32,64,128 --concurrency 8 \
      "${mode[@]}" --rounds 3 --min-secs 3 --inprocess-unit-ip --server-pid "$(cat "$D/pid")" \
      --json "$OUT/$name$suffix.json" --plot "$OUT/$name$suffix.png" "$@" >/dev/null
    kill "$(cat "$D/pid")"; wait "$(cat "$D/pid")" 2>/dev/null || true; rm -f "$D/pid"
  done
done
for ds in "${sets[@]}"; do
  name=$(basename "$ds")
  for f in "$OUT/$name.json" "$OUT/$name-batch8.json" "$OUT/$name-stream.json"; do
    [ -f "$f" ] && python3 bench/tables.py "$f"
  done
done
