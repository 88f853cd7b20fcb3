"""Benchmark: search backends on large simulated databases (issue 16), exact search as the baseline.

For each ``--n`` (default 1M and 10M) x 256-d clustered unit vectors (``bench/search.py``'s
mixture, written block by block into a memory-mapped ``.npy`` under ``--work``, so 10M x
256 float32 = 10 GB sits on disk and in the page cache, not in the process): exact search
(ground truth, and its single-query latency: the baseline of the ratios), then each backend
that fits the time box: ``auto`` at a 64 bytes/vector budget (IVF-PQ + exact re-ranking
from the memory map), ``auto`` at 4GB, IVF-Flat (up to ``--flat-max``), HNSW (up to
``--hnsw-max``), milvus-lite HNSW (up to ``--milvus-max``: inserts go through gRPC). For each:
build time, bytes per vector in memory (the serialised index; the re-ranking vectors are
the database's memory map), recall@10 on fresh queries, ms per query single and batched.
Target at 10M: recall@10 >= 0.95 at <= 2 ms/query and <= 64 bytes/vector.

    python bench/search_scale.py [--n 1000000 10000000] [--queries 200] [--minutes 10]
        [--runs auto64 auto4gb ivfflat hnsw milvus] [--work DIR: keep and reuse the vectors]
        [--keep-index: and the auto indexes]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
from search import Mixture, batched_ms, per_query_ms

from retrieval.serving.auto_index import exact_top_k, recall_at_k
from retrieval.serving.search import IndexSource, SearchIndex

K = 10
TARGET = (0.95, 2.0, 64.0)  # recall@10, ms/query, bytes/vector


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}, cores {len(os.sched_getaffinity(0))}"


def simulate(n: int, d: int, path: Path, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The memory-mapped database and 1000 fresh queries; a database already written to
    ``path`` by an earlier run (its ``.done`` marker present) is reused: 10M rows take minutes."""
    mixture = Mixture(d, rng)
    queries = mixture.sample(1000)  # first: the same queries whether the database is reused or not
    done = path.with_suffix(".done")
    if not done.is_file():
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
        for start in range(0, n, 1 << 20):
            out[start : start + (1 << 20)] = mixture.sample(min(1 << 20, n - start))
        out.flush()
        del out
        done.touch()
    return np.load(path, mmap_mode="r"), queries


def row(name: str, build_s: float, bpv: float, search: Callable, queries, truth, exact_ms) -> None:
    recall = recall_at_k(search(queries)[1], truth)
    single = per_query_ms({name: search}, queries[:50], rounds=1)[name]
    batch = batched_ms({name: search}, queries, repeats=3, rounds=1)[name]
    ok = recall >= TARGET[0] and single <= TARGET[1] and bpv <= TARGET[2]
    print(
        f"  {name:34s} | build {build_s:7.1f} s | {bpv:7.1f} B/vector | recall@10 {recall:.3f} | "
        f"{single:8.3f} ms single (x{exact_ms / single:7.1f} vs exact), {batch:7.3f} batched | "
        f"{'MEETS' if ok else '-'} target | {load()}",
        flush=True,
    )


def bench(n: int, args, work: Path, rng: np.random.Generator) -> None:
    start = time.perf_counter()
    vectors, queries = simulate(n, args.d, work / f"vectors-{n}.npy", rng)
    queries = queries[: args.queries]
    print(
        f"\n== {n:,} x {args.d}-d clustered: generated in {time.perf_counter() - start:.0f} s ({load()}) =="
    )
    start = time.perf_counter()
    truth = exact_top_k(vectors, queries, K)
    exact = SearchIndex(vectors)  # a float32 memory map: no copy
    exact_ms = per_query_ms({"e": lambda q: exact.search(q, K)}, queries[:3], rounds=1)["e"]
    print(
        f"  exact (baseline)                   | ground truth {1e3 * (time.perf_counter() - start) / len(queries):.1f} "
        f"ms/query batched | {4 * args.d} B/vector | {exact_ms:.1f} ms single | {load()}",
        flush=True,
    )
    deadline = time.monotonic() + 60 * args.minutes
    runs: list[tuple[str, str, bool, dict]] = [
        ("auto64", "auto 64 B/vector (IVF-PQ + refine)", True, {"backend": "auto", "memory_budget": 64 * n}),
        ("auto4gb", "auto 4GB", True, {"backend": "auto", "memory_budget": "4GB"}),
        ("ivfflat", "ivfflat nprobe=16", n <= args.flat_max, {"backend": "ivfflat", "nprobe": 16}),
        ("hnsw", "hnsw M=32 ef=64", n <= args.hnsw_max, {"backend": "hnsw"}),
        (
            "milvus",
            "milvus-lite HNSW ef=64",
            n <= args.milvus_max,
            {"backend": "milvus", "uri": str(work / "m.db")},
        ),
    ]
    for key, name, wanted, params in runs:
        if key not in args.runs:
            continue
        if not wanted or time.monotonic() > deadline:
            print(f"  {name:34s} | skipped ({'size limit' if not wanted else 'time box'})")
            continue
        if args.keep_index and params["backend"] == "auto":  # stored: a later run maps it back
            params = {**params, "index_path": str(work / f"auto-{n}-{key}.faiss")}
        start = time.perf_counter()
        index = SearchIndex(vectors, source=IndexSource(dataset="bench"), **params)
        build_s = time.perf_counter() - start
        impl = index._impl
        if hasattr(impl, "bytes_per_vector"):
            bpv = impl.bytes_per_vector
            label = f"{name} [{impl.plan.factory or 'exact'} {impl.param}]"
            if getattr(impl, "build_s", None) == 0.0:
                label += " (stored index read back, not built)"
            if impl.recall is not None:
                label += f" tuned recall {impl.recall:.3f} (>= {impl.recall_low:.3f} at 95%)"
        elif hasattr(impl, "index"):
            bpv, label = len(faiss.serialize_index(impl.index)) / n, name
        else:
            bpv, label = float("nan"), name + " (server-side memory)"
        row(label, build_s, bpv, lambda q, index=index: index.search(q, K), queries, truth, exact_ms)
        del index, impl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--flat-max", type=int, default=2_000_000)
    parser.add_argument("--hnsw-max", type=int, default=200_000)
    parser.add_argument("--milvus-max", type=int, default=100_000)
    parser.add_argument("--minutes", type=float, default=10.0, help="time box per size, after generation")
    parser.add_argument(
        "--runs",
        nargs="+",
        default=["auto64", "auto4gb", "ivfflat", "hnsw", "milvus"],
        help="backends to run",
    )
    parser.add_argument(
        "--keep-index", action="store_true", help="store the auto indexes under --work and reuse them"
    )
    parser.add_argument(
        "--work", default=None, help="folder for the memory-mapped vectors (default: a temp dir)"
    )
    args = parser.parse_args()
    # search=auto's choice, and each tuning step, with timestamps: a 10M build takes a while
    logging.basicConfig(format="%(asctime)s %(message)s", level=logging.INFO)
    logging.getLogger("retrieval.serving.auto_index").setLevel(logging.DEBUG)
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} OpenMP threads, {load()}")
    work = Path(args.work or tempfile.mkdtemp(prefix="search_scale-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        for n in args.n:
            bench(n, args, work, np.random.default_rng(0))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
