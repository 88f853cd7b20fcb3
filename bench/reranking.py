"""Benchmark: ranking + revisited metrics for 70 queries against a simulated 1M-image
database in bounded memory, and the time per query of each re-ranker.

The database is simulated as a 2048-d descriptor reduced to 512-d (a fixed random
projection standing in for PCA-whitening), L2-normalised, float32, generated in chunks into
a memory map (the 2 GB of vectors are never a Python allocation). 70 "landmarks": each query
has 40 easy, 40 hard (noisier) and 20 junk images around its landmark's centre; the other
images are distractors around 2000 other centres.

Timed in the same run: the blocked ranking (top-100 + exact ranks of labelled images,
evaluation/blocked_ranking.py) against the full ranking (one [70, 1M] similarity, a stable
argsort, revisited_metrics), checking that the metrics are identical; peak memory is
tracemalloc's peak of each (the memory-mapped database is not counted in either). Then
re-ranking time per query: SuperGlobal (M 400), k-reciprocal (shortlist --kr-shortlist) and
diffusion's online step (truncation 1000) on the offline graph's rows it reads.

    python bench/reranking.py [--database 1000000] [--queries 70] [--skip-full] [--skip-diffusion]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import tracemalloc
from functools import partial
from pathlib import Path

import numpy as np

from retrieval.data.ground_truth import Query
from retrieval.evaluation.blocked_ranking import rank_top_and_labelled
from retrieval.evaluation.landmark_metrics import revisited_metrics
from retrieval.evaluation.ranking import rank_by_similarity
from retrieval.evaluation.reranking.diffusion import Diffusion, reached_graph
from retrieval.evaluation.reranking.k_reciprocal import KReciprocal
from retrieval.evaluation.reranking.superglobal import SuperGlobal
from retrieval.evaluation.vectors import cosine_similarity, l2_normalize

SOURCE_DIM, DIM, CHUNK = 2048, 512, 20000
EASY, HARD, JUNK = 40, 40, 20


def simulate(n_db: int, n_q: int, path: Path, seed: int = 0):
    """(queries [n_q, 512], database memmap [n_db, 512], revisited Query list)."""
    rng = np.random.default_rng(seed)
    projection = (rng.standard_normal((SOURCE_DIM, DIM)) / np.sqrt(DIM)).astype(np.float32)
    centres = rng.standard_normal((n_q + 2000, SOURCE_DIM)).astype(np.float32)
    per_query = EASY + HARD + JUNK
    labelled = rng.permutation(n_db)[: n_q * per_query].reshape(n_q, per_query)
    owner = np.full(n_db, -1, dtype=np.int64)  # the landmark of each labelled image
    noise = np.ones(n_db, dtype=np.float32)  # distractors: tight clusters of their own
    for q in range(n_q):  # 70 small assignments, not a loop over the database
        owner[labelled[q]] = q
        noise[labelled[q, :EASY]] = 2.0  # cosine to the query ~0.37, hard ~0.26, while the
        noise[labelled[q, EASY:]] = 3.2  # best of 1M unrelated images reaches ~0.2
    database = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n_db, DIM))
    # (centre + sigma * n) @ P with n ~ N(0, I_2048) equals centre @ P + sigma * z @ L.T with
    # z ~ N(0, I_512) and L L^T = P^T P in distribution: 4x fewer random numbers and flops
    projected = centres @ projection
    cholesky = np.linalg.cholesky(projection.T.astype(np.float64) @ projection).astype(np.float32)
    for start in range(0, n_db, CHUNK):
        rows = slice(start, min(start + CHUNK, n_db))
        centre = np.where(
            owner[rows] >= 0, owner[rows], rng.integers(n_q, n_q + 2000, size=rows.stop - start)
        )
        z = rng.standard_normal((rows.stop - start, DIM), np.float32) @ cholesky.T
        database[rows] = l2_normalize(projected[centre] + noise[rows, None] * z)
    database.flush()
    queries = l2_normalize(
        (centres[:n_q] + 0.7 * rng.standard_normal((n_q, SOURCE_DIM), np.float32)) @ projection
    )
    gt = [
        Query(
            f"q{q}",
            f"l{q}",
            Path(f"q{q}.jpg"),
            easy=np.sort(row[:EASY]),
            hard=np.sort(row[EASY : EASY + HARD]),
            junk=np.sort(row[EASY + HARD :]),
        )
        for q, row in enumerate(labelled)
    ]
    return queries.astype(np.float32), np.load(path, mmap_mode="r"), gt


def diffusion_on_reached_rows(database, shortlist: np.ndarray, queries: np.ndarray):
    """Diffusion's online step only reads the offline graph among each query's truncation, so
    the kNN lists are computed for the images the truncations reach (faiss IVF, approximate,
    as the reference loads an approximate graph at large scale; Diffusion() without a graph
    does the same with exact lists) and the graph is built on them (reached_graph)."""
    import faiss

    t0 = time.perf_counter()
    reached = np.unique(shortlist)
    quantizer = faiss.IndexFlatIP(DIM)
    index = faiss.IndexIVFFlat(quantizer, DIM, 1024, faiss.METRIC_INNER_PRODUCT)
    index.train(np.asarray(database[:: max(1, len(database) // 50_000)]))
    for start in range(0, len(database), 100_000):
        index.add(np.ascontiguousarray(database[start : start + 100_000]))
    index.nprobe = 8
    sims, ids = index.search(np.ascontiguousarray(database[reached]), 50)
    graph = reached_graph(reached, ids, sims, 3.0)
    print(
        f"diffusion offline graph for the {len(reached)} reached images (faiss IVF1024 nprobe 8, k 50): "
        f"{time.perf_counter() - t0:.1f} s"
    )

    def online(_queries, _database, rows):
        return reached[Diffusion()(queries, database[reached], np.searchsorted(reached, rows), graph)]

    return Diffusion(), {"_online": online}


def measured(fn):
    """(seconds, peak traced bytes, result)."""
    tracemalloc.start()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return seconds, peak, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=70)
    parser.add_argument("--kr-shortlist", type=int, default=300)
    parser.add_argument("--skip-full", action="store_true", help="no full-ranking baseline")
    parser.add_argument("--skip-diffusion", action="store_true", help="no offline graph (faiss IVF)")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    print(f"load {os.getloadavg()[0]:.2f}, cores {cores}, database {args.database} x {DIM} float32")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        queries, database, gt = simulate(args.database, args.queries, Path(tmp) / "db.npy")
        print(f"simulated in {time.perf_counter() - t0:.1f} s (2048-d -> 512-d, chunks of {CHUNK})")
        labelled = [q.labelled for q in gt]
        t_block, m_block, top = measured(lambda: rank_top_and_labelled(queries, database, 1000, labelled))
        t_metrics, _, blocked = measured(lambda: revisited_metrics(top, gt))
        print(
            f"blocked ranking (top-1000 + exact labelled ranks): {t_block:.2f} s, peak {m_block / 2**20:.0f} MiB"
        )
        print(f"revisited metrics from it: {t_metrics * 1e3:.1f} ms; M/mAP {blocked.metrics['M/mAP']:.4f}")
        if not args.skip_full:

            def full():
                ranking = rank_by_similarity(cosine_similarity(queries, np.asarray(database)))
                return revisited_metrics(ranking, gt)

            t_full, m_full, whole = measured(full)
            assert whole.metrics == blocked.metrics, "blocked metrics differ from the full ranking's"
            print(
                f"full ranking + metrics (baseline): {t_full:.2f} s, peak {m_full / 2**20:.0f} MiB; "
                f"blocked: x{t_full / (t_block + t_metrics):.2f} time, x{m_full / m_block:.1f} less memory; "
                f"metrics identical"
            )
        shortlist = top.ids
        rerankers: dict = {
            "SuperGlobal M=400": (SuperGlobal(), {}),
            f"k-reciprocal shortlist {args.kr_shortlist}": (KReciprocal(shortlist=args.kr_shortlist), {}),
        }
        if not args.skip_diffusion:
            rerankers["diffusion truncation 1000 (online)"] = diffusion_on_reached_rows(
                database, shortlist, queries
            )
        baseline = revisited_metrics(top, gt).metrics["M/mAP"]
        for name, (reranker, extra) in rerankers.items():
            depth = reranker.depth
            call = extra.get("_online", reranker)
            t, peak, head = measured(partial(call, queries, database, shortlist[:, :depth]))
            m_map = revisited_metrics(top.with_head(head), gt).metrics["M/mAP"]
            print(
                f"{name}: {t / args.queries * 1e3:.1f} ms per query ({t:.2f} s for {args.queries}), "
                f"peak {peak / 2**20:.0f} MiB; M/mAP {baseline:.4f} -> {m_map:.4f}"
            )


if __name__ == "__main__":
    main()
