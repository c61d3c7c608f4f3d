#!/usr/bin/env python3
"""BM25 reference scores with bm25s (method "lucene"), for
tests/tests/bm25_reference.rs.

Input: corpus.jsonl (one JSON list of tokens per document, in row order)
and queries.jsonl (one JSON list of tokens per query), both tokenized by
Shoal's tokenizer with the collection's settings, so that the comparison
is of scoring and statistics. Output: one JSON object per query, the top
`k` as {"docs": [row...], "scores": [float...]}.

usage: bm25_reference.py CORPUS QUERIES OUT K1 B K
"""
import json
import sys

import bm25s

corpus_path, queries_path, out_path, k1, b, k = sys.argv[1:7]
corpus = [json.loads(line) for line in open(corpus_path)]
queries = [json.loads(line) for line in open(queries_path)]
retriever = bm25s.BM25(method="lucene", k1=float(k1), b=float(b))
retriever.index(corpus, show_progress=False)
vocab = retriever.vocab_dict
with open(out_path, "w") as out:
    for q in queries:
        # Tokens absent from the corpus add nothing to any score.
        q = [t for t in q if t in vocab]
        docs, scores = retriever.retrieve([q], k=int(k), show_progress=False)
        pairs = [(int(d), float(s)) for d, s in zip(docs[0], scores[0]) if s > 0]
        out.write(json.dumps({"docs": [d for d, _ in pairs], "scores": [s for _, s in pairs]}) + "\n")
print(f"bm25s {bm25s.__version__}: {len(queries)} queries over {len(corpus)} documents")
