#!/usr/bin/env python3
"""Single-threaded in-process search QPS and recall@10 of other vector-search engines.

Puts numbers next to Shoal's on the same datasets (TEXMEX folders, see
/work/shared/data/README.md): for each dataset, each engine/variant and each ef
it reports queries per second on ONE search thread and recall@10 against the
exact ground truth, plus the index build time and inserts per second.

Engines and variants (an engine whose package does not import, or a variant
that fails to build, is skipped with a message on stderr; the run goes on):

  faiss-hnsw-flat  faiss `IndexHNSWFlat(dim, M=16)`, efConstruction=128,
                   searched with hnsw.efSearch = ef.
  usearch-f32      usearch `Index(ndim, metric, dtype='f32', connectivity=16,
                   expansion_add=128)`, searched with expansion_search = ef.
  qdrant-f32       Qdrant's engine in-process through PyPI `qdrant-edge-py`
  qdrant-int8      (`qdrant_edge.EdgeShard`): HNSW m=16, ef_construct=128,
  qdrant-binary    searched with SearchParams(hnsw_ef=ef). int8 = scalar
                   quantization (ScalarType.Int8, quantized vectors pinned in
                   RAM = the old always_ram=true), binary = binary quantization
                   (one bit, pinned in RAM); both re-score with the f32
                   vectors (rescore=True) and use Qdrant's default oversampling
                   (1.0: the top 10 by quantized score are re-scored) unless
                   --qdrant-int8-oversampling / --qdrant-binary-oversampling
                   is given. One-bit binary codes of these embeddings lose
                   much recall at oversampling 1.0 (about 0.5 on a 5,000-row
                   slice of debian-384, about 0.8 at --qdrant-binary-oversampling 4;
                   0.17 on glove-50).
                   The shard is set up to search one HNSW graph holding every
                   point, as the other engines do: default_segment_number=1,
                   indexing_threshold=1 KB and full_scan_threshold=1 KB (never
                   a brute-force scan), then optimize(); info() shows 2
                   segments, the indexed one and an empty appendable one.
                   The write-ahead log is off while building (--qdrant-wal).

Cosine datasets are unit-normalised once here; faiss and usearch then use inner
product and Qdrant uses Distance.Cosine (which normalises again, a no-op).
`dot` datasets use inner product as is, `l2` uses squared L2 / Euclid.

How it measures
  * Build once per engine/variant: all base vectors in one add call (faiss,
    usearch), or upserts of 10,000 points per call then EdgeShard.optimize()
    (Qdrant: build_s = upsert + optimize, both reported). Building may use
    --build-threads threads (default: all cores).
  * For each ef: every query of the set in ONE batch call that runs on one
    thread (faiss `index.search(Q, 10)` under omp_set_num_threads(1), usearch
    `index.search(Q, 10, threads=1)`, Qdrant `shard.query_batch(...)` on a
    shard created with max_search_threads=1), repeated until --min-secs of
    wall time have passed. QPS = queries answered / wall time; recall@10 is
    scored on the first pass against groundtruth[:, :10]. qps_method is
    "batch" then. Request objects (Qdrant's QueryBatchRequest) are built
    before the clock starts; turning results into ids for the recall is done
    outside it. The garbage collector is paused while timing.
  * Fallback, for an engine that only has a per-query call (a qdrant-edge-py
    without query_batch): a Python loop of one call per query; the same loop
    calling a no-op function with the same argument is timed for the same
    number of calls, and both the raw QPS ("qps") and the call-cost-subtracted
    QPS ("qps_call_cost_subtracted") are reported; qps_method is
    "per-query" then.
  * Before the first ef of a variant, 50 untimed queries warm it up.
  * cpu_per_wall = process CPU time (all threads) / wall time over the timed
    loop; about 1.0 (or below, on a busy machine) confirms a single search
    thread, well above 1.0 would mean the engine ran threads of its own.

Threads: OMP_NUM_THREADS, MKL_NUM_THREADS and OPENBLAS_NUM_THREADS are set to 1
at the top of this file, before numpy or faiss are imported, so numpy's BLAS and
faiss default to one thread for the whole process. Index building then raises
the count explicitly for the build only (faiss.omp_set_num_threads(B), usearch
add(threads=B), Qdrant HnswIndexConfig(max_indexing_threads=B)) with
B = --build-threads, and faiss is set back to 1 thread before any search.
--build-threads 1 makes the whole run single-threaded.

--limit N indexes only the first N base vectors; the exact top-10 of each query
among those N is then computed here by brute force (common.exact_topk from
/work/shared/data/common.py: numpy, chunks of 100 queries, cosine on unit
vectors), instead of reading groundtruth.ivecs.

Install:   python3 -m pip install faiss-cpu qdrant-edge-py usearch numpy
Run (the comparison with Shoal's numbers; keep the machine otherwise idle):
  python3 bench/engines.py --dataset /work/shared/data/debian-384 \\
      --dataset /tmp/data/glove-50-angular --ef 32,64,128 --min-secs 3 \\
      --json bench/results/engines.json
Quick check on a small slice:
  python3 bench/engines.py --dataset /work/shared/data/debian-384 --limit 5000 --ef 32,64 --min-secs 0.5

Output: one line per (dataset, variant, ef) on stderr as it goes, a table on
stdout at the end, and with --json OUT a list of records {dataset, engine,
variant, ef, qps, recall_at_10, build_s, n, dim, qps_method, ...}.
"""
import os

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_v] = "1"  # before numpy / faiss are imported: see the docstring

import argparse
import gc
import importlib.metadata
import json
import shutil
import sys
import tempfile
import time
import traceback

import numpy as np

sys.path.insert(0, "/work/shared/data")
import common  # noqa: E402  (read_fvecs, read_ivecs, exact_topk)

K = 10
WARMUP_QUERIES = 50
HNSW_M = 16
EF_CONSTRUCTION = 128
QDRANT_UPSERT_CHUNK = 10_000


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def pkg_version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# ----------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------

class Dataset:
    def __init__(self, path, limit):
        self.path = path
        with open(os.path.join(path, "meta.json")) as f:
            self.meta = json.load(f)
        self.name = self.meta.get("name", os.path.basename(os.path.normpath(path)))
        self.metric = self.meta.get("metric", "cosine")
        if self.metric not in ("cosine", "dot", "l2"):
            raise ValueError(f"{path}: unknown metric {self.metric!r}")
        base = common.read_fvecs(os.path.join(path, "base.fvecs"))
        queries = common.read_fvecs(os.path.join(path, "query.fvecs"))
        self.n_total = len(base)
        if limit is not None and limit < len(base):
            base = base[:limit]
            t = time.perf_counter()
            self.gt = common.exact_topk(base, queries, K, self.metric)
            self.gt_source = f"exact top-{K} of the first {limit} base rows, computed here"
            log(f"[{self.name}] ground truth for --limit {limit}: {time.perf_counter() - t:.1f} s")
        else:
            self.gt = common.read_ivecs(os.path.join(path, "groundtruth.ivecs"))[:, :K]
            self.gt_source = "groundtruth.ivecs[:, :10]"
        self.dim = base.shape[1]
        if self.meta.get("dim") not in (None, self.dim):
            raise ValueError(f"{path}: meta dim {self.meta['dim']} != file dim {self.dim}")
        if self.metric == "cosine":
            base = unit(base)
            queries = unit(queries)
        self.base = np.ascontiguousarray(base, dtype=np.float32)
        self.queries = np.ascontiguousarray(queries, dtype=np.float32)
        self.n = len(self.base)


def unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)


def recall_at_k(ids, gt):
    hits = 0
    for row, truth in zip(ids, gt):
        hits += len(set(int(i) for i in row[:K] if i >= 0) & set(int(t) for t in truth[:K]))
    return hits / (K * len(gt))


# ----------------------------------------------------------------------------
# Engines. Each variant: build(ds) -> dict, prepare(ef) -> Searcher, close().
# A Searcher has .method ("batch" | "per-query"), .run() (one pass over all
# queries, returns raw results), .ids(raw) -> (nq, K) int array, and for
# per-query searchers .noop() (the same loop calling a no-op).
# ----------------------------------------------------------------------------

class Searcher:
    def __init__(self, method, run, ids, noop=None):
        self.method, self.run, self.ids, self.noop = method, run, ids, noop


class FaissHNSW:
    engine, variant = "faiss", "faiss-hnsw-flat"

    def __init__(self, faiss, args):
        self.faiss, self.args = faiss, args

    def build(self, ds):
        faiss = self.faiss
        metric = faiss.METRIC_L2 if ds.metric == "l2" else faiss.METRIC_INNER_PRODUCT
        self.index = faiss.IndexHNSWFlat(ds.dim, HNSW_M, metric)
        self.index.hnsw.efConstruction = EF_CONSTRUCTION
        faiss.omp_set_num_threads(self.args.build_threads)
        t = time.perf_counter()
        self.index.add(ds.base)
        build_s = time.perf_counter() - t
        faiss.omp_set_num_threads(1)  # every search from here on runs on one thread
        assert faiss.omp_get_max_threads() == 1
        self.queries = ds.queries
        return {"build_s": build_s, "params": {"M": HNSW_M, "efConstruction": EF_CONSTRUCTION,
                                               "metric": "l2" if ds.metric == "l2" else "ip",
                                               "search_threads": faiss.omp_get_max_threads()}}

    def prepare(self, ef, queries=None):
        q = self.queries if queries is None else queries
        self.index.hnsw.efSearch = ef
        return Searcher("batch", lambda: self.index.search(q, K), lambda raw: raw[1])

    def close(self):
        self.index = None


class USearch:
    engine, variant = "usearch", "usearch-f32"

    def __init__(self, usearch_index, args):
        self.Index, self.args = usearch_index.Index, args

    def build(self, ds):
        metric = "l2sq" if ds.metric == "l2" else "ip"
        self.index = self.Index(ndim=ds.dim, metric=metric, dtype="f32",
                                connectivity=HNSW_M, expansion_add=EF_CONSTRUCTION)
        keys = np.arange(ds.n, dtype=np.uint64)
        t = time.perf_counter()
        self.index.add(keys, ds.base, threads=self.args.build_threads)
        build_s = time.perf_counter() - t
        self.queries = ds.queries
        return {"build_s": build_s, "params": {
            "connectivity": HNSW_M, "expansion_add": EF_CONSTRUCTION, "metric": metric,
            "dtype": "f32", "search_threads": 1,
            "hardware_acceleration": getattr(self.index, "hardware_acceleration", None)}}

    def prepare(self, ef, queries=None):
        q = self.queries if queries is None else queries
        self.index.expansion_search = ef

        def ids(m):
            keys = np.asarray(m.keys).astype(np.int64).reshape(len(q), -1)[:, :K]
            counts = np.asarray(m.counts).reshape(-1)
            keys[np.arange(keys.shape[1])[None, :] >= counts[:, None]] = -1
            return keys

        return Searcher("batch", lambda: self.index.search(q, K, threads=1), ids)

    def close(self):
        self.index = None


class QdrantEdge:
    engine = "qdrant"

    def __init__(self, qe, quant, args):
        self.qe, self.quant, self.args = qe, quant, args
        self.variant = f"qdrant-{quant}"
        self.oversampling = {"int8": args.qdrant_int8_oversampling,
                             "binary": args.qdrant_binary_oversampling}.get(quant)
        self.dir = None
        self.shard = None

    def _quantization_config(self):
        qe = self.qe
        if self.quant == "f32":
            return None
        if self.quant == "int8":
            return qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, memory=qe.Memory.Pinned)
        if self.quant == "binary":
            return qe.BinaryQuantizationConfig(memory=qe.Memory.Pinned)
        raise ValueError(f"unknown qdrant variant {self.quant!r}")

    def build(self, ds):
        qe = self.qe
        distance = {"cosine": qe.Distance.Cosine, "dot": qe.Distance.Dot,
                    "l2": qe.Distance.Euclid}[ds.metric]
        config = qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=ds.dim, distance=distance),
            # full_scan_threshold (KB) of 1: search the graph even on small
            # segments, never a brute-force scan.
            hnsw_config=qe.HnswIndexConfig(m=HNSW_M, ef_construct=EF_CONSTRUCTION,
                                           full_scan_threshold=1,
                                           max_indexing_threads=self.args.build_threads),
            quantization_config=self._quantization_config(),
            # One indexed segment holding every point (as the other engines
            # have one graph): index any segment over 1 KB, merge to one.
            optimizers=qe.EdgeOptimizersConfig(default_segment_number=1,
                                               max_segment_size=2**40,
                                               indexing_threshold=1),
            max_search_threads=1,
            wal_enabled=bool(self.args.qdrant_wal),
        )
        self.dir = tempfile.mkdtemp(prefix=f"engines-{self.variant}-", dir=self.args.workdir)
        self.shard = qe.EdgeShard.create(self.dir, config)
        t = time.perf_counter()
        for s in range(0, ds.n, QDRANT_UPSERT_CHUNK):
            rows = ds.base[s:s + QDRANT_UPSERT_CHUNK]
            self.shard.update(qe.UpdateOperation.upsert_points(
                [qe.Point(s + i, row.tolist()) for i, row in enumerate(rows)]))
        upsert_s = time.perf_counter() - t
        t = time.perf_counter()
        self.shard.optimize()
        optimize_s = time.perf_counter() - t
        info = self.shard.info()
        if info.points_count != ds.n:
            raise RuntimeError(f"qdrant holds {info.points_count} points, expected {ds.n}")
        if info.indexed_vectors_count < ds.n:
            log(f"  warning: {self.variant}: only {info.indexed_vectors_count} of {ds.n} "
                f"vectors are in an HNSW index after optimize()")
        self.queries = ds.queries
        if self.quant == "f32":
            self.qparams = None
        else:
            self.qparams = qe.QuantizationSearchParams(rescore=True, oversampling=self.oversampling)
        return {"build_s": upsert_s + optimize_s, "upsert_s": upsert_s, "optimize_s": optimize_s,
                "params": {"m": HNSW_M, "ef_construct": EF_CONSTRUCTION, "distance": ds.metric,
                           "quantization": self.quant, "rescore": self.quant != "f32",
                           "oversampling": self.oversampling,
                           "max_search_threads": 1, "wal": bool(self.args.qdrant_wal),
                           "segments": info.segments_count,
                           "indexed_vectors": info.indexed_vectors_count}}

    def prepare(self, ef, queries=None):
        qe = self.qe
        q = self.queries if queries is None else queries
        params = qe.SearchParams(hnsw_ef=ef, quantization=self.qparams)
        reqs = [qe.QueryRequest(limit=K, query=qe.Query.Nearest(v.tolist()), params=params,
                                with_payload=False, with_vector=False) for v in q]

        def ids(raw):
            out = np.full((len(raw), K), -1, np.int64)
            for r, points in enumerate(raw):
                for c, p in enumerate(points[:K]):
                    out[r, c] = p.id
            return out

        if self.args.qdrant_per_query or not hasattr(self.shard, "query_batch"):
            query = self.shard.query

            def noop_call(_req):
                return None

            return Searcher("per-query", lambda: [query(r) for r in reqs], ids,
                            noop=lambda: [noop_call(r) for r in reqs])
        batch = qe.QueryBatchRequest(reqs)
        query_batch = self.shard.query_batch
        return Searcher("batch", lambda: query_batch(batch), ids)

    def close(self):
        if self.shard is not None:
            self.shard.close()
            self.shard = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


def make_variants(args):
    """(engine name, version, [variant objects]) for each engine that imports."""
    out = []
    for engine in args.engines:
        if engine == "faiss":
            try:
                import faiss
            except Exception as e:  # ImportError, or a wheel that does not load
                log(f"skip faiss: cannot import faiss ({type(e).__name__}: {e}); "
                    f"install it with: python3 -m pip install faiss-cpu")
                continue
            out.append(("faiss", faiss.__version__, [FaissHNSW(faiss, args)]))
        elif engine == "usearch":
            try:
                import usearch
                import usearch.index
            except Exception as e:
                log(f"skip usearch: cannot import usearch ({type(e).__name__}: {e}); "
                    f"install it with: python3 -m pip install usearch")
                continue
            out.append(("usearch", usearch.__version__, [USearch(usearch.index, args)]))
        elif engine == "qdrant":
            try:
                import qdrant_edge
            except Exception as e:
                log(f"skip qdrant: cannot import qdrant_edge ({type(e).__name__}: {e}); "
                    f"install it with: python3 -m pip install qdrant-edge-py")
                continue
            variants = []
            for quant in args.qdrant_variants:
                need = {"int8": "ScalarQuantizationConfig",
                        "binary": "BinaryQuantizationConfig"}.get(quant)
                if need and not hasattr(qdrant_edge, need):
                    log(f"skip qdrant-{quant}: this qdrant-edge-py has no {need}")
                    continue
                variants.append(QdrantEdge(qdrant_edge, quant, args))
            out.append(("qdrant", pkg_version("qdrant-edge-py"), variants))
        else:
            raise SystemExit(f"unknown engine {engine!r} (faiss, qdrant, usearch)")
    return out


# ----------------------------------------------------------------------------
# Measurement
# ----------------------------------------------------------------------------

def timed_passes(fn, min_secs, passes=None):
    """Call fn() until min_secs have passed (or exactly `passes` times).
    Returns (first result, passes, wall s, process CPU s)."""
    gc.collect()
    gc.disable()
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        first = fn()
        done = 1
        while (done < passes) if passes is not None else (time.perf_counter() - t0 < min_secs):
            fn()
            done += 1
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        gc.enable()
    return first, done, wall, cpu


def measure(searcher, ds, min_secs):
    nq = len(ds.queries)
    raw, passes, wall, cpu = timed_passes(searcher.run, min_secs)
    rec = {"qps": passes * nq / wall, "passes": passes, "wall_s": wall,
           "cpu_per_wall": cpu / wall, "qps_method": searcher.method,
           "qps_call_cost_subtracted": None}
    if searcher.method == "per-query":
        _, _, noop_wall, _ = timed_passes(searcher.noop, 0, passes=passes)
        rec["call_loop_s"] = noop_wall
        rec["qps_call_cost_subtracted"] = passes * nq / max(wall - noop_wall, 1e-9)
    ids = np.asarray(searcher.ids(raw))
    rec["recall_at_10"] = recall_at_k(ids, ds.gt)
    return rec


def fmt_line(r):
    s = (f"{r['dataset']:<18} {r['variant']:<16} ef={r['ef']:<4} "
         f"recall@10={r['recall_at_10']:.4f}  qps={r['qps']:9.1f}")
    if r["qps_call_cost_subtracted"] is not None:
        s += f" (call-cost-subtracted {r['qps_call_cost_subtracted']:.1f})"
    s += (f"  [{r['qps_method']}, {r['passes']}x{r['queries']} q in {r['wall_s']:.2f}s, "
          f"cpu/wall {r['cpu_per_wall']:.2f}]  build {r['build_s']:.2f}s "
          f"({r['inserts_per_s']:.0f} ins/s) n={r['n']}")
    return s


def write_json(path, records):
    if path:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(records, f, indent=1)
        os.replace(tmp, path)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", action="append", required=True, metavar="DIR",
                   help="TEXMEX dataset folder (repeatable)")
    p.add_argument("--ef", default="32,64,128", help="comma-separated search ef values")
    p.add_argument("--limit", type=int, default=None,
                   help="index only the first N base vectors (exact ground truth computed here)")
    p.add_argument("--engines", default="faiss,qdrant,usearch",
                   help="comma-separated subset of faiss,qdrant,usearch")
    p.add_argument("--qdrant-variants", default="f32,int8,binary",
                   help="comma-separated subset of f32,int8,binary")
    p.add_argument("--qdrant-int8-oversampling", type=float, default=None,
                   help="oversampling for qdrant-int8 (default: Qdrant's own, 1.0)")
    p.add_argument("--qdrant-binary-oversampling", type=float, default=None,
                   help="oversampling for qdrant-binary (default: Qdrant's own, 1.0)")
    p.add_argument("--qdrant-per-query", action="store_true",
                   help="time Qdrant with one query() call per query instead of query_batch()")
    p.add_argument("--qdrant-wal", action="store_true",
                   help="keep Qdrant's write-ahead log on while building (default off)")
    p.add_argument("--min-secs", type=float, default=3.0,
                   help="repeat the query set until this much wall time has passed")
    p.add_argument("--build-threads", type=int, default=os.cpu_count() or 1,
                   help="threads for building indexes (searches always use one)")
    p.add_argument("--workdir", default=None, help="where Qdrant's shards go (default: $TMPDIR)")
    p.add_argument("--json", default=None, metavar="OUT", help="write the records here")
    args = p.parse_args()
    args.efs = [int(x) for x in args.ef.split(",") if x.strip()]
    args.engines = [x.strip() for x in args.engines.split(",") if x.strip()]
    args.qdrant_variants = [x.strip() for x in args.qdrant_variants.split(",") if x.strip()]
    for v in args.qdrant_variants:
        if v not in ("f32", "int8", "binary"):
            raise SystemExit(f"unknown qdrant variant {v!r} (f32, int8, binary)")
    if args.build_threads < 1:
        raise SystemExit("--build-threads must be at least 1")

    engines = make_variants(args)
    log("engines: " + ", ".join(f"{name} {ver}" for name, ver, _ in engines)
        + f"; numpy {np.__version__}; build threads {args.build_threads}; search threads 1")
    records = []
    for path in args.dataset:
        ds = Dataset(path, args.limit)
        log(f"[{ds.name}] n={ds.n} (of {ds.n_total}) dim={ds.dim} metric={ds.metric} "
            f"queries={len(ds.queries)}; ground truth: {ds.gt_source}")
        for engine, version, variants in engines:
            for v in variants:
                try:
                    b = v.build(ds)
                    log(f"[{ds.name}] {v.variant}: built in {b['build_s']:.2f}s "
                        f"({ds.n / b['build_s']:.0f} inserts/s) {b['params']}")
                    warm = v.prepare(args.efs[0], ds.queries[:WARMUP_QUERIES])
                    warm.run()
                    for ef in args.efs:
                        m = measure(v.prepare(ef), ds, args.min_secs)
                        r = {"dataset": ds.name, "engine": engine, "variant": v.variant, "ef": ef,
                             "qps": m["qps"], "recall_at_10": m["recall_at_10"],
                             "build_s": b["build_s"], "n": ds.n, "dim": ds.dim,
                             "qps_method": m["qps_method"],
                             "qps_call_cost_subtracted": m["qps_call_cost_subtracted"],
                             "inserts_per_s": ds.n / b["build_s"],
                             "queries": len(ds.queries), "passes": m["passes"],
                             "wall_s": m["wall_s"], "cpu_per_wall": m["cpu_per_wall"],
                             "metric": ds.metric, "k": K, "min_secs": args.min_secs,
                             "build_threads": args.build_threads, "search_threads": 1,
                             "engine_version": version, "ground_truth": ds.gt_source,
                             "params": b["params"]}
                        for extra in ("upsert_s", "optimize_s", "call_loop_s"):
                            if extra in b:
                                r[extra] = b[extra]
                            if extra in m:
                                r[extra] = m[extra]
                        records.append(r)
                        log(fmt_line(r))
                        write_json(args.json, records)
                except Exception as e:
                    log(f"skip {v.variant} on {ds.name}: {type(e).__name__}: {e}")
                    traceback.print_exc(file=sys.stderr)
                finally:
                    v.close()
                    gc.collect()

    if records:
        print("| dataset | variant | ef | recall@10 | QPS (1 thread) | method | build s | inserts/s |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in records:
            qps = f"{r['qps']:.0f}"
            if r["qps_call_cost_subtracted"] is not None:
                qps += f" ({r['qps_call_cost_subtracted']:.0f} call-cost-subtracted)"
            print(f"| {r['dataset']} | {r['variant']} | {r['ef']} | {r['recall_at_10']:.4f} | "
                  f"{qps} | {r['qps_method']} | {r['build_s']:.1f} | {r['inserts_per_s']:.0f} |")
    write_json(args.json, records)
    return 0 if records else 1


if __name__ == "__main__":
    sys.exit(main())
