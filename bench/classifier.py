"""Scoring latency of the shipped classifier beside its routing quality, in one run.

    ./dev bench classifier [--queries 2000]

Latency: one query at a time, in-process, on real benchmark prompts (read from TRIAGE_DATA), p50/p99/max,
against a peer measured in the same run: a scikit-learn TF-IDF (word 1-2 + char 2-4) + LogisticRegression
pipeline's predict_proba, the usual way to serve such a classifier. Quality: every evaluation protocol.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import classifiers
from classifiers.lab.data import load_benchmark
from classifiers.lab.evaluate import run_protocols


def latencies(fn: Callable[[str], object], texts: list[str]) -> np.ndarray:
    for t in texts[:100]:
        fn(t)
    gc.collect()
    out = np.empty(len(texts))
    for i, t in enumerate(texts):
        start = time.perf_counter()
        fn(t)
        out[i] = time.perf_counter() - start
    return out * 1000


def peer(train: list[str], small: list[float], large: list[float]) -> Callable[[str], object]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    pipe = make_pipeline(
        make_union(
            TfidfVectorizer(ngram_range=(1, 2), max_features=100_000),
            TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), max_features=100_000),
        ),
        LogisticRegression(max_iter=500),
    )
    pipe.fit(train, [int(lg > sm) for sm, lg in zip(small, large, strict=True)])
    return lambda text: pipe.predict_proba([text])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--skip-quality", action="store_true")
    args = ap.parse_args()
    benches = [load_benchmark(n) for n in ("mmlu", "gsm8k", "mt_bench")]
    items = [i for b in benches for i in b.items]
    rng = random.Random(0)
    texts = [i.prompt for i in rng.sample(items, min(args.queries, len(items)))]
    model = classifiers.load()
    print("fitting the peer pipeline (TF-IDF + LogisticRegression) on MMLU...", file=sys.stderr)
    mmlu = benches[0].items
    peer_score = peer([i.prompt for i in mmlu], [i.small for i in mmlu], [i.large for i in mmlu])
    rows = []
    for name, fn in (("llm-triage score()", model.score), ("sklearn TF-IDF+LR predict_proba", peer_score)):
        ms = latencies(fn, texts)
        rows.append((name, np.percentile(ms, 50), np.percentile(ms, 99), ms.max()))
    lengths = [len(t) for t in texts]
    print(
        f"\nscoring one query ({len(texts)} benchmark prompts, {np.mean(lengths):.0f} chars mean, {max(lengths)} max)"
    )
    print("| scorer | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|")
    for name, p50, p99, mx in rows:
        print(f"| {name} | {p50:.3f} | {p99:.3f} | {mx:.3f} |")
    print(f"ratio: peer p50 / ours = {rows[1][1] / rows[0][1]:.1f}x, peer p99 / ours = {rows[1][2] / rows[0][2]:.1f}x")
    if not args.skip_quality:
        print("\nrouting quality (large-model share needed for 95% of the large model's quality; lower is better)")
        print("| protocol | ours | random | APGR ours |\n|---|---:|---:|---:|")
        for r in run_protocols(progress=lambda m: print(m, file=sys.stderr)):
            ours, rand = r.rows[0], r.rows[1]
            print(f"| {r.name} | {ours.share_at_95:.1%} | {rand.share_at_95:.1%} | {ours.apgr:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
