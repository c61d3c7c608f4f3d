#!/usr/bin/env bash
# The cost of TLS plus authentication (docs/benchmarks.md, "TLS and
# authentication"): one data directory, one collection, served by `shoal
# dev` alternately without security and with TLS (certificates from
# `shoal certs`) plus API keys, ROUNDS times each in the order off, on, off,
# on, ...; each serving is benchmarked at ef 128 (the default ef_search)
# with 8 searches in flight. Prints QPS per serving and the ratio of the
# medians (on / off).
#
#   [ROUNDS=3] bench/tls_cost.sh DATASET_DIR [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
DS="${1:?dataset dir}"; OUT="${2:-$(mktemp -d)}"
BIN="${SHOAL_BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}"
mkdir -p "$OUT"
D=$(mktemp -d)
trap '[ -f "$D/pid" ] && kill "$(cat "$D/pid")" 2>/dev/null; rm -rf "$D"' EXIT
"$BIN/shoal" certs --dir "$D/tls" --nodes 1 --hosts localhost,127.0.0.1 >/dev/null
KEY=$(awk '{print $2}' "$D/tls/auth/api-keys")
mkdir "$D/data"
serve() { # $1: off|on; prints the address
  local sec=()
  [ "$1" = on ] && sec=(--tls-dir "$D/tls" --api-keys-file "$D/tls/auth/api-keys")
  "$BIN/shoal" "${sec[@]}" dev --listen 127.0.0.1:0 --data-dir "$D/data" >"$D/out" 2>"$D/log" &
  echo $! >"$D/pid"
  for _ in $(seq 600); do grep -q "ready: public=" "$D/out" && break; sleep 0.1; done
  sed -n 's/.*ready: public=\([^ ]*\).*/\1/p' "$D/out"
}
# `serve` runs in a command substitution: the server is not this shell's
# child, so wait for it to be gone (it holds the data directory's lock).
stop() { local p; p=$(cat "$D/pid"); kill "$p"; while kill -0 "$p" 2>/dev/null; do sleep 0.1; done; rm -f "$D/pid"; }
for r in $(seq "${ROUNDS:-3}"); do
  for mode in off on; do
    addr=$(serve $mode)
    [ -n "$addr" ] || { cat "$D/log"; exit 1; }
    cli=(env -u SHOAL_API_KEY "$BIN/shoalctl" --addr "$addr")
    [ $mode = on ] && cli=(env SHOAL_API_KEY="$KEY" "$BIN/shoalctl" --addr "https://$addr" --ca "$D/tls/ca.crt")
    # The first serving ingests; later ones reuse the collection.
    "${cli[@]}" bench --dataset "$DS" --ef 128 --concurrency 8 --rounds 3 --min-secs 3 --no-inprocess --reuse \
      --json "$OUT/$mode-$r.json" >/dev/null
    stop
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[2], sys.argv[3], [round(x['qps']) for x in r['runs'] if x['ef']==128])" "$OUT/$mode-$r.json" "$mode" "$r" 2>/dev/null || true
  done
done
python3 - "$OUT" "${ROUNDS:-3}" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def qps(mode):
    v = []
    for r in range(1, rounds + 1):
        j = json.load(open(f"{out}/{mode}-{r}.json"))
        v += [x["qps"] for x in j["runs"] if x["ef"] == 128]
    return v
off, on = qps("off"), qps("on")
print(f"off: median {statistics.median(off):.0f} QPS over {len(off)} rounds {[round(x) for x in off]}")
print(f"on:  median {statistics.median(on):.0f} QPS over {len(on)} rounds {[round(x) for x in on]}")
print(f"on/off: {statistics.median(on) / statistics.median(off):.3f}")
PY
