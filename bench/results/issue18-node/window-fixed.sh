#!/bin/bash
B=$HOME/.cache/shoal/target/release
w=100
pkill -f "data-dir /tmp/bx"; sleep 2
$B/shoal --log warn dev --listen 127.0.0.1:0 --data-dir /tmp/bx --scan-batch-window-us $w > /tmp/bx.out 2>&1 &
for i in $(seq 1 60); do grep -q "ready" /tmp/bx.out && break; sleep 0.5; done
ADDR=$(grep -o "public=[0-9.:]*" /tmp/bx.out | cut -d= -f2); PID=$(pgrep -f "data-dir /tmp/bx" | head -1)
for c in 1 16 64; do
  f=bench/results/issue18-node/exact-gather-window$w-c$c.json
  $B/shoalctl --addr $ADDR bench --dataset ../shared/data/debian-384 --reuse --ef 32 --rounds 1 --min-secs 4 --no-inprocess --exact --search-batch 1 --concurrency $c --server-pid $PID --json $f > /dev/null 2>&1
  python3 -c "
import json;d=json.load(open('$f'))
r=d['runs'][0]; print('window $w conc $c', round(r['qps'],1), 'p50', r['p50_ms'], 'p99', r['p99_ms'], 'recall', r['recall_at_10'])"
done
pkill -f "data-dir /tmp/bx"
