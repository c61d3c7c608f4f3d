#!/usr/bin/env python3
"""Prints the markdown tables of docs/benchmarks.md from `shoalctl bench --json` files.

Usage: python3 bench/tables.py bench/results/debian-384.json [...]
"""
import json
import sys

for path in sys.argv[1:]:
    d = json.load(open(path))
    print(f"### {d['dataset']} ({path})\n")
    print(f"{d['vectors']} vectors, in-process threads {d['concurrency']} ({d.get('inprocess_metric', 'usearch cos')}), "
          f"gRPC in flight {d.get('inflight', d['concurrency'])}, " + ("one query per SearchStream message, " if d.get("stream") else f"queries per request {d.get('search_batch', 1)}, ") +
          f"client threads {d.get('client_threads', 'runtime default')}, default ef {d['default_ef']}\n")
    ir = d.get("ingest_ratio")
    print(f"Ingest {d['ingest_per_s']:.0f}/s, in-process usearch insert {d['inprocess_insert_per_s']:.0f}/s: ratio **{ir:.2f}**.\n")
    cpu = any(r.get("server_cpu_us_per_query") for r in d["runs"])
    if cpu:
        print("| ef | recall@10 | QPS (gRPC) | p50 ms | p99 ms | in-process QPS | ratio | CPU µs/query: server | client | in-process | CPU ratio |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
    else:
        print("| ef | recall@10 | QPS (gRPC) | p50 ms | p99 ms | in-process QPS | ratio |")
        print("|---|---|---|---|---|---|---|")
    for r in d["runs"]:
        row = f"| {r['ef']} | {r['recall_at_10']:.4f} | {r['qps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['inprocess_qps']:.0f} | {r['qps_ratio']:.2f} |"
        if cpu:
            row += f" {r['server_cpu_us_per_query']:.0f} | {r['client_cpu_us_per_query']:.0f} | {r['inprocess_cpu_us_per_query']:.0f} | {r['server_cpu_ratio']:.2f} |"
        print(row)
    if d.get("filtered"):
        print("\n| filter set | selectivity | recall@10 | QPS | exact: identical top-10 | exact QPS |")
        print("|---|---|---|---|---|---|")
        for f in d["filtered"]:
            print(f"| {f['name']} | {f['selectivity']:.4f} | {f['recall_at_10']:.4f} | {f['qps']:.0f} | {f['exact_identical_top10']:.3f} | {f['exact_qps']:.0f} |")
    if "memory_marginal_ratio" in d:
        print(f"\nMemory after ingest: RSS {d['rss_bytes_per_vector']:.0f} B/vector (ratio {d['memory_ratio']:.2f}); "
              f"marginal over the {d['rss_before_ingest_bytes'] / 2**20:.0f} MiB node before ingest "
              f"{d['rss_marginal_bytes_per_vector']:.0f} B/vector (ratio **{d['memory_marginal_ratio']:.2f}**); "
              f"raw + links {d['raw_plus_links_bytes_per_vector']:.0f} B/vector.")
    print()
