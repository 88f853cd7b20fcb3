"""Benchmark: database search latency, exact and approximate, against faiss baselines.

Part 1, exact search on a 5k database (Oxford5k-sized) at 2048-d (raw ResNet50 GeM
descriptors) and at the deployed, PCA-whitened dimension (512-d): faiss ``IndexFlatIP``
(the baseline) vs NumPy brute force vs ``SearchIndex(backend="exact")``, per single query
and per query in batches, all measured interleaved in this run. Target line: the reference
faiss demo's 4.09 ms per retrieval; ours should be <= 0.3 ms per query at the deployed dim.

Part 2, a simulated 1M x 256-d database (clustered, L2-normalised vectors: a mixture of
Gaussian clusters with a decaying noise spectrum, like real descriptors; isotropic noise,
``--data gaussian``, is the worst case for any index): build time, recall@10 against exact
search and single-query latency of IVF-Flat, IVF-PQ (+ exact re-ranking) over an ``nprobe``
sweep, and HNSW (on ``--hnsw-n`` vectors: its build is the slow part on 2 cores). Target:
recall@10 >= 0.95 at <= 2 ms per query.

    python bench/search.py [--n 1000000] [--hnsw-n 200000] [--queries 200] [--skip-ann]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import faiss
import numpy as np
from threadpoolctl import threadpool_limits

from retrieval.evaluation.vectors import l2_normalize
from retrieval.serving.search import SearchIndex, top_k

REFERENCE_MS = 4.09  # the reference faiss demo, per retrieval
TARGET_EXACT_MS = 0.3  # ours, per query at the deployed dimension
TARGET_ANN = (0.95, 2.0)  # recall@10, ms per query
K = 10


class Mixture:
    """Unit vectors from a mixture of 1000 Gaussian clusters with a decaying noise spectrum
    (as real descriptors have), separated (``clustered``) or overlapping (``overlapping``),
    or from one isotropic Gaussian (``gaussian``: no structure, the worst case for every
    index). Queries and database are drawn from the same mixture."""

    # centre scale: 1 = separated clusters (a query's top 10 lie in its own cluster);
    # 0.27 = overlapping ones (top 10 spill over neighbouring clusters and IVF cells)
    SCALES = {"clustered": 1.0, "overlapping": 0.27}

    def __init__(
        self, d: int, rng: np.random.Generator, kind: str = "clustered", clusters: int = 1000
    ) -> None:
        self.rng = rng
        if kind == "gaussian":
            self.centres, self.spread = np.zeros((1, d)), np.ones(d)
        else:
            self.centres = self.SCALES[kind] * rng.standard_normal((clusters, d))
            self.spread = np.geomspace(1.0, 0.05, d)

    def sample(self, n: int) -> np.ndarray:
        d = self.centres.shape[1]
        out = np.empty((n, d), np.float32)
        for start in range(0, n, 1 << 16):  # blocks keep the float64 temporaries small
            m = min(1 << 16, n - start)
            block = (
                self.centres[self.rng.integers(0, len(self.centres), m)]
                + self.rng.standard_normal((m, d)) * self.spread
            )
            out[start : start + m] = l2_normalize(block)
        return out


def numpy_search(vectors: np.ndarray) -> Callable:
    return lambda q: top_k(q @ vectors.T, K)


def _settle() -> None:
    # After a call, faiss's OpenMP threads and NumPy's OpenBLAS threads keep spinning for a
    # while; on 2 cores the other pool's next call then waits for a scheduler slice (NumPy
    # single queries measured 8 ms instead of 0.2 ms right after faiss calls). So methods are
    # timed in separate blocks with a pause before each, in alternating order, best block kept.
    time.sleep(0.3)


def _blocks(
    methods: dict[str, Callable], run_block: Callable[[Callable], float], rounds: int = 2
) -> dict[str, float]:
    best = {name: float("inf") for name in methods}
    for r in range(rounds):
        for name in list(methods) if r % 2 == 0 else list(methods)[::-1]:
            _settle()
            best[name] = min(best[name], run_block(methods[name]))
    return best


def per_query_ms(methods: dict[str, Callable], queries: np.ndarray, rounds: int = 2) -> dict[str, float]:
    """Median latency (ms) of one-query calls over ``queries``."""

    def block(search: Callable) -> float:
        times = []
        for q in queries:
            start = time.perf_counter()
            search(q[None])
            times.append(time.perf_counter() - start)
        return 1e3 * float(np.median(times))

    return _blocks(methods, block, rounds)


def batched_ms(
    methods: dict[str, Callable], queries: np.ndarray, repeats: int = 5, rounds: int = 2
) -> dict[str, float]:
    """Time per query (ms) of whole-batch calls, median of ``repeats``."""

    def block(search: Callable) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            search(queries)
            times.append(time.perf_counter() - start)
        return 1e3 * float(np.median(times)) / len(queries)

    return _blocks(methods, block, rounds)


def exact_part(n: int, dims: tuple[int, ...], n_queries: int, rng: np.random.Generator) -> None:
    print(f"\n== exact search, {n} database vectors, k={K}; ms per query (median) ==")
    for d in dims:
        mixture = Mixture(d, rng)
        vectors, queries = mixture.sample(n), mixture.sample(max(n_queries, 512))
        flat = faiss.IndexFlatIP(d)
        flat.add(vectors)
        ours = SearchIndex(vectors)
        methods = {
            "faiss IndexFlatIP": lambda q, flat=flat: flat.search(q, K),
            "numpy brute force": numpy_search(vectors),
            "SearchIndex exact": lambda q, ours=ours: ours.search(q, K),
        }
        np.testing.assert_array_equal(ours.search(queries[:64], K)[1], flat.search(queries[:64], K)[1])
        rows = {"1 (single)": per_query_ms(methods, queries[:n_queries])}
        with threadpool_limits(1):  # latency that does not depend on a second core being free
            rows["1, 1 thread"] = per_query_ms(methods, queries[:n_queries])
        for batch in (8, 64, 128, 256, 512):
            rows[str(batch)] = batched_ms(methods, queries[:batch])
        print(f"-- {d}-d --")
        print(f"{'batch':>11} | " + " | ".join(f"{name:>18}" for name in methods) + " | faiss / numpy")
        for batch, ms in rows.items():
            ratio = ms["faiss IndexFlatIP"] / ms["numpy brute force"]
            print(f"{batch:>11} | " + " | ".join(f"{ms[m]:15.4f} ms" for m in methods) + f" | x{ratio:.2f}")
        single = rows["1 (single)"]["SearchIndex exact"]
        print(
            f"single query, ours: {single:.3f} ms = {REFERENCE_MS / single:.0f}x faster than the reference "
            f"demo's {REFERENCE_MS} ms; x{rows['1 (single)']['faiss IndexFlatIP'] / single:.2f} vs faiss "
            f"flat in this run"
            + (
                f"; target <= {TARGET_EXACT_MS} ms: {'met' if single <= TARGET_EXACT_MS else 'MISSED'}"
                if d <= 512
                else ""
            )
        )


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / K for a, b in zip(found, exact)]))


def sweep(
    name: str,
    index: SearchIndex,
    set_param: Callable[[int], None],
    values: tuple[int, ...],
    queries: np.ndarray,
    exact: np.ndarray,
    exact_ms: float,
    n_latency: int,
) -> None:
    for value in values:
        set_param(value)
        recall = recall_at_k(index.search(queries, K)[1], exact)
        ms = per_query_ms({name: lambda q: index.search(q, K)}, queries[:n_latency])[name]
        batch_ms = batched_ms({name: lambda q: index.search(q, K)}, queries, repeats=3)[name]
        ok = recall >= TARGET_ANN[0] and ms <= TARGET_ANN[1]
        print(
            f"  {name:28s} {value:5d} | recall@10 {recall:.3f} | {ms:7.3f} ms/query single, "
            f"{batch_ms:7.3f} batched | x{exact_ms / ms:6.1f} vs exact | {'MEETS' if ok else '-'} target"
        )


def ann_part(n: int, hnsw_n: int, d: int, n_queries: int, kind: str, rng: np.random.Generator) -> None:
    print(
        f"\n== approximate search: {n} x {d}-d {kind} vectors, {n_queries} queries, k={K}; "
        f"target recall@10 >= {TARGET_ANN[0]} at <= {TARGET_ANN[1]} ms/query =="
    )
    start = time.perf_counter()
    mixture = Mixture(d, rng, kind)
    vectors, queries = mixture.sample(n), mixture.sample(n_queries)
    print(f"data generated in {time.perf_counter() - start:.1f} s ({vectors.nbytes / 2**30:.2f} GiB)")
    exact_index = SearchIndex(vectors)
    start = time.perf_counter()
    exact = exact_index.search(queries, K)[1]
    print(f"exact ground truth: {1e3 * (time.perf_counter() - start) / n_queries:.2f} ms/query batched")
    exact_ms = per_query_ms({"exact": lambda q: exact_index.search(q, K)}, queries[:20])["exact"]
    print(f"exact single query (the baseline below): {exact_ms:.2f} ms")
    n_latency = min(n_queries, 100)

    nlist = 1024 if n >= 500_000 else max(64, int(4 * np.sqrt(n)))
    for name, params in (("ivfflat", {}), ("ivfpq", {"pq_m": 32, "refine": 16})):
        start = time.perf_counter()
        index = SearchIndex(vectors, backend=name, nlist=nlist, **params)
        label = f"{name} nlist={nlist}" + (" PQ32x8 refine=16" if params else "")
        print(f"{label}: built in {time.perf_counter() - start:.1f} s; nprobe sweep:")
        sweep(
            f"{name} nprobe",
            index,
            lambda v, index=index: setattr(index._impl.ivf, "nprobe", v),
            (4, 8, 16, 32, 64, 128),
            queries,
            exact,
            exact_ms,
            n_latency,
        )
        del index

    if hnsw_n:
        sub = vectors[:hnsw_n]
        sub_exact = SearchIndex(sub).search(queries, K)[1]
        sub_exact_ms = per_query_ms({"e": lambda q: top_k(q @ sub.T, K)}, queries[:20])["e"]
        start = time.perf_counter()
        index = SearchIndex(sub, backend="hnsw", m=32, ef_construction=80)
        print(
            f"hnsw M=32 efConstruction=80 on the first {hnsw_n} vectors (exact there: {sub_exact_ms:.2f} ms): "
            f"built in {time.perf_counter() - start:.1f} s; efSearch sweep:"
        )
        sweep(
            "hnsw efSearch",
            index,
            lambda v: setattr(index._impl.index.hnsw, "efSearch", v),
            (16, 32, 64, 128),
            queries,
            sub_exact,
            sub_exact_ms,
            n_latency,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=int, default=5000, help="exact part: database size")
    parser.add_argument("--dims", type=int, nargs="+", default=[2048, 512], help="exact part: dimensions")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--n", type=int, default=1_000_000, help="ANN part: database size")
    parser.add_argument("--hnsw-n", type=int, default=200_000, help="HNSW database size (0: skip)")
    parser.add_argument("--d", type=int, default=256, help="ANN part: dimension")
    parser.add_argument("--data", choices=("clustered", "overlapping", "gaussian"), default="clustered")
    parser.add_argument("--skip-ann", action="store_true")
    args = parser.parse_args()
    print(
        f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} OpenMP threads, numpy {np.__version__}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    rng = np.random.default_rng(0)
    exact_part(args.db, tuple(args.dims), args.queries, rng)
    if not args.skip_ann:
        ann_part(args.n, min(args.hnsw_n, args.n), args.d, 1000, args.data, rng)


if __name__ == "__main__":
    main()
