"""Beam search vs brute force with the same model, and exact inner-product retrieval for context.

For each corpus size (synthetic artifacts, bench/.cache): per-request latency of
- the service's beam search (ONNX scorer, 1 thread, k = 200, beam = 200, one request at a time),
- brute force: the same ONNX scorer on every item (`--chunk` candidates per call, 4096 by
  default: larger calls spill the L2 cache and are slower per candidate), then top-k; with the
  scorer's 1 thread (the same settings as the beam search) and with `--brute-threads` threads,
- exact inner-product top-k (the YouTube-DNN retrieval): one (d,) x (N, d) product + top-k,
- with `--hnsw`, the tuned two-tower baseline's serving path: the faiss HNSW graph
  `trainer.baselines.hnsw_index` builds (same parameters as `compare --methods two-tower`),
  over `--ann-dim` vectors with cluster structure like trained embeddings (random Gaussian
  vectors are the hardest case for a graph index and flatter no one), one query at a time on
  one thread like the beam search; its build time and its recall of the exact top-k.
Also the beam width sweep (latency and overlap with brute force's top-k). Prints tables,
writes JSON.

    .venv/bin/python -m bench.bench_retrieval --sizes 10000,100000,1000000 --json bench/results/retrieval.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bench import command_line
from bench.bench_service import artifact_for
from service.config import Settings
from service.core.beam import brute_force
from service.core.index import SearchParams, TreeIndex
from service.core.topk import top_k
from service.model_store import load_bundle
from service.retrieval import search
from service.scorer import OnnxScorer


def timed(fn, repeat: int) -> tuple[list[float], object]:
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return times, result


def ms(times: list[float]) -> dict[str, float]:
    values = np.asarray(times) * 1000
    return {"p50": float(np.percentile(values, 50)), "p99": float(np.percentile(values, 99)),
            "mean": float(values.mean())}


def clustered_vectors(n: int, dim: int, clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Item vectors around `clusters` centres (last coordinate a Gumbel popularity bias, a few
    items far more popular) and the centres, for queries near them: the structure a trained
    two-tower model's vectors have, at any catalogue size."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    items = centres[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    items[:, -1] = rng.gumbel(size=n)  # the folded-in bias: a few items far more popular
    return items, centres


def bench_hnsw(n_items: int, queries: int, k: int, dim: int) -> dict:
    """Build the two-tower baseline's HNSW index over n_items vectors and time single queries."""
    import faiss

    from trainer.baselines.hnsw_index import HNSWConfig, build_hnsw, search_queries

    items, centres = clustered_vectors(n_items, dim, clusters=max(16, n_items // 1000), seed=1)
    rng = np.random.default_rng(2)
    noise = rng.standard_normal((queries, dim)).astype(np.float32)
    users = centres[rng.integers(0, len(centres), queries)] + 0.5 * noise
    users[:, -1] = 1.0  # the query's bias coordinate
    config = HNSWConfig()
    build_threads = faiss.omp_get_max_threads()
    started = time.perf_counter()
    index = build_hnsw(items, config)  # all cores: building is offline work
    build_seconds = time.perf_counter() - started
    faiss.omp_set_num_threads(1)  # serving: one thread per request, as the beam search
    index.hnsw.efSearch = config.ef_search_for(k)
    padded = search_queries(users)
    index.search(padded[:10], k)
    times, found = [], []
    for row in padded:
        started = time.perf_counter()
        _, got = index.search(row[None, :], k)
        times.append(time.perf_counter() - started)
        found.append(got[0])
    exact_times, recall = [], []
    for user, got in zip(users, found, strict=True):
        started = time.perf_counter()
        exact = top_k((items @ user)[None, :], k)[0][0]
        exact_times.append(time.perf_counter() - started)
        recall.append(len(np.intersect1d(got, exact)) / k)
    faiss.omp_set_num_threads(build_threads)
    return {"dim": dim, "neighbours": config.neighbours, "ef_construction": config.ef_construction,
            "ef_search": config.ef_search_for(k), "build_seconds": build_seconds, "search_ms": ms(times),
            "exact_ms": ms(exact_times), "recall_of_exact_top_k": float(np.mean(recall))}


def bench_size(n_items: int, requests: int, brute_requests: int, k: int, beams: list[int], chunk: int,
               brute_threads: int, hnsw_dim: int | None = None) -> dict:
    artifact = artifact_for(n_items)
    bundle = load_bundle(artifact, Settings(batching=False))
    rng = np.random.default_rng(0)
    histories = [rng.integers(0, n_items, rng.integers(5, 70)).astype(np.int64) for _ in range(requests)]
    for h in histories[:10]:
        search(bundle, h, k, k)
    beam_times = []
    for h in histories:
        started = time.perf_counter()
        search(bundle, h, k, k)
        beam_times.append(time.perf_counter() - started)

    def brute(history: np.ndarray, scorer: OnnxScorer):
        row = np.full((1, bundle.history_length), -1, dtype=np.int64)
        row[0, :len(history[:bundle.history_length])] = history[:bundle.history_length]
        score = TreeIndex(bundle.tree, scorer, bundle.hierarchical).score_fn(row)
        return brute_force(n_items, score, 1, k, bundle.tree.depth, chunk=chunk)

    brute_times, exact = [], []
    for h in histories[:brute_requests]:
        started = time.perf_counter()
        exact.append(brute(h, bundle.scorer).items[0])
        brute_times.append(time.perf_counter() - started)
    wide = OnnxScorer(artifact / "scorer.onnx", threads=brute_threads)
    brute(histories[0], wide)
    brute_wide_times = []
    for h, want in zip(histories[:brute_requests], exact, strict=False):
        started = time.perf_counter()
        got = brute(h, wide).items[0]
        brute_wide_times.append(time.perf_counter() - started)
        assert np.array_equal(np.sort(got), np.sort(want))

    sweep = []
    for beam in beams:
        overlap, times, candidates = [], [], []
        for h, want in zip(histories[:brute_requests], exact, strict=False):
            row = np.full((1, bundle.history_length), -1, dtype=np.int64)
            row[0, :len(h[:bundle.history_length])] = h[:bundle.history_length]
            candidates.append(bundle.index.search(row, k, SearchParams(beam=beam)).candidates_scored)
            started = time.perf_counter()
            got = search(bundle, h, k, beam).items
            times.append(time.perf_counter() - started)
            overlap.append(len(np.intersect1d(got, want)) / len(want))
        sweep.append({"beam": beam, "latency_ms": ms(times), "candidates": float(np.mean(candidates)),
                      "overlap_with_brute_force": float(np.mean(overlap))})

    vectors = np.random.default_rng(1).standard_normal((n_items, 32)).astype(np.float32)
    users = np.random.default_rng(2).standard_normal((requests, 32)).astype(np.float32)
    ip_times = []
    for user in users:
        started = time.perf_counter()
        top_k((vectors @ user)[None, :], k)
        ip_times.append(time.perf_counter() - started)
    bundle.close()
    beam_ms, brute_ms, brute_wide_ms = ms(beam_times), ms(brute_times), ms(brute_wide_times)
    return {"items": n_items, "depth": bundle.tree.depth, "beam_search_ms": beam_ms, "brute_force_ms": brute_ms,
            "brute_over_beam": brute_ms["p50"] / beam_ms["p50"], "brute_force_threads": brute_threads,
            "brute_force_wide_ms": brute_wide_ms, "brute_wide_over_beam": brute_wide_ms["p50"] / beam_ms["p50"],
            "chunk": chunk, "inner_product_ms": ms(ip_times), "beam_sweep": sweep,
            "hnsw": bench_hnsw(n_items, requests, k, hnsw_dim) if hnsw_dim else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--brute-requests", type=int, default=10)
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--beams", default="100,200,400,800")
    parser.add_argument("--chunk", type=int, default=4096, help="brute force: candidates per scorer call")
    parser.add_argument("--brute-threads", type=int, default=2, help="brute force: threads of the second scorer")
    parser.add_argument("--hnsw", action="store_true",
                        help="also time the two-tower baseline's faiss HNSW index (needs the train extra)")
    parser.add_argument("--ann-dim", type=int, default=65,
                        help="HNSW vector width: embedding + folded-in bias (default 65: a 64-wide tower)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.hnsw:
        try:
            import faiss  # noqa: F401
        except ImportError:
            parser.exit(2, "bench_retrieval: --hnsw needs faiss-cpu (pip install -e '.[train]')\n")
    beams = [int(b) for b in args.beams.split(",")]
    rows = [bench_size(int(n), args.requests, args.brute_requests, args.k, beams, args.chunk, args.brute_threads,
                       args.ann_dim if args.hnsw else None)
            for n in args.sizes.split(",")]
    print(f"\nk = {args.k}, one request at a time; beam search with the service's scorer (1 ORT thread), "
          f"brute force with the same scorer ({args.chunk} candidates per call), then with {args.brute_threads} "
          "threads (ms)\n")
    print("| items | depth | beam search p50 | p99 | brute force p50 | brute / beam | brute force "
          f"{args.brute_threads} threads p50 | that / beam | inner product p50 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['items']:,} | {r['depth']} | {r['beam_search_ms']['p50']:.2f} | {r['beam_search_ms']['p99']:.2f} "
              f"| {r['brute_force_ms']['p50']:.1f} | {r['brute_over_beam']:.0f}x "
              f"| {r['brute_force_wide_ms']['p50']:.1f} | {r['brute_wide_over_beam']:.0f}x "
              f"| {r['inner_product_ms']['p50']:.2f} |")
    print("\n| items | beam | candidates scored | p50 ms | overlap with brute-force top-k |")
    print("|---|---|---|---|---|")
    for r in rows:
        for s in r["beam_sweep"]:
            print(f"| {r['items']:,} | {s['beam']} | {s['candidates']:,.0f} | {s['latency_ms']['p50']:.2f} | "
                  f"{100 * s['overlap_with_brute_force']:.1f}% |")
    if args.hnsw:
        print(f"\nThe two-tower baseline's HNSW index (faiss, one thread per query; exact = (N, {args.ann_dim}) "
              "product + top-k) beside the beam search (ms)\n")
        print("| items | beam search p50 | p99 | HNSW p50 | p99 | HNSW recall of exact top-k | exact scan p50 "
              "| HNSW build s (all cores) |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            h = r["hnsw"]
            print(f"| {r['items']:,} | {r['beam_search_ms']['p50']:.2f} | {r['beam_search_ms']['p99']:.2f} "
                  f"| {h['search_ms']['p50']:.2f} | {h['search_ms']['p99']:.2f} "
                  f"| {100 * h['recall_of_exact_top_k']:.1f}% "
                  f"| {h['exact_ms']['p50']:.2f} | {h['build_seconds']:.0f} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"command": command_line(), "k": args.k,
                                               "results": rows}, indent=2))


if __name__ == "__main__":
    main()
