#!/usr/bin/env bash
# Shoal's index and shard search beside faiss, Qdrant's engine and usearch,
# in-process and single-threaded, on the same datasets in one run (the
# engines one after another, so each has the machine to itself).
#
#   bench/engines.sh OUT_DIR DATASET_DIR... 
#
# Env: EF (default 32,64,128), SHOAL_STORAGE (f32,int8,binary),
# OVERSAMPLING (Shoal's quantized kinds; default the server's per kind),
# QDRANT_INT8_OVERSAMPLING / QDRANT_BINARY_OVERSAMPLING (Qdrant's; default
# its own 1.0), MIN_SECS (3). Needs `cargo build --release -p shoal-bench`
# and `python3 -m pip install faiss-cpu qdrant-edge-py usearch numpy`.
set -euo pipefail
out=$1; shift
mkdir -p "$out"
bin=${CARGO_TARGET_DIR:-target}/release/shoal-index-bench
ef=${EF:-32,64,128}
for ds in "$@"; do
  name=$(basename "$ds")
  over=()
  [ -n "${OVERSAMPLING:-}" ] && over=(--oversampling "$OVERSAMPLING")
  "$bin" --dataset "$ds" --storage "${SHOAL_STORAGE:-f32,int8,binary}" --ef "$ef" "${over[@]}" --min-secs "${MIN_SECS:-3}" --json "$out/shoal-$name.json"
  q=()
  [ -n "${QDRANT_INT8_OVERSAMPLING:-}" ] && q+=(--qdrant-int8-oversampling "$QDRANT_INT8_OVERSAMPLING")
  [ -n "${QDRANT_BINARY_OVERSAMPLING:-}" ] && q+=(--qdrant-binary-oversampling "$QDRANT_BINARY_OVERSAMPLING")
  python3 "$(dirname "$0")/engines.py" --dataset "$ds" --ef "$ef" "${q[@]}" --min-secs "${MIN_SECS:-3}" --json "$out/engines-$name.json"
done
