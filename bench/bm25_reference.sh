#!/usr/bin/env bash
# BM25 against bm25s on debian-384 (tests/tests/bm25_reference.rs).
# usage: bash bench/bm25_reference.sh [DATA_DIR]   (default ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/.."
export SHOAL_DATA="${1:-${SHOAL_DATA:-$(cd .. && pwd)/shared/data}}"
venv="${SHOAL_PY_VENV:-$HOME/.cache/shoal/venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check bm25s==0.3.16 numpy scipy
export SHOAL_BM25_PYTHON="$venv/bin/python"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/shoal/target}"
cargo test --release -p shoal-tests --test bm25_reference -- --ignored --nocapture
