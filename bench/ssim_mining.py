"""SSIM mining speed and memory: the project's miner path against a plain skimage loop.

    python bench/ssim_mining.py [--images N] [--queries Q] [--pairs P] [--memory-images M]

On synthetic 500x500 grayscale uint8 images (smoothed noise, so windows have realistic
structure) it times, in the same run:
  (a) ``skimage.metrics.structural_similarity`` over a sample of query x candidate pairs;
  (b) the miner's path: ``ssim_many_vs_many`` of Q queries against N images on both cores,
      once on precomputed statistics (kernel) and once from raw crops (statistics computed
      per chunk inside the pass, as the miner does);
and extrapolates both to the full Oxford5k mining run (55 queries x 5063 images).
Peak memory is measured in a child process that runs the whole ``mine_ssim_negatives``
(decode, crop cache, mining; 55 queries in one pass as on Oxford) on M images written as
JPEGs: the peak, sampled every 20 ms, of the summed PSS (proportional set size, from
/proc/<pid>/smaps_rollup) of that process and its forked scoring workers -- resident
memory with shared pages (copy-on-write data, the memory-mapped crops) counted once.
Crop pages that were read count in it, so it is extrapolated to 5063 images by adding
the crop bytes of the missing images. With CUDA, the torch path is timed on a full
Oxford-size run. Timings are best-of-3, interleaved between the methods. The machine may
be shared: the load average is printed, and runs also report CPU time (this process's
``time.process_time`` plus its finished workers' ``getrusage(RUSAGE_CHILDREN)``), which
other processes' load inflates far less than wall time; CPU time / wall time of the
parallel run shows how many cores the workers actually got.
"""

from __future__ import annotations

import argparse
import inspect
import multiprocessing
import os
import resource
import tempfile
import threading
import time
from pathlib import Path
from typing import Self

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter
from skimage.metrics import structural_similarity

from retrieval.mining.ssim import ssim_many_vs_many
from retrieval.mining.ssim_miner import mine_ssim_negatives
from retrieval.mining.ssim_stats import ImageStats

OXFORD_QUERIES, OXFORD_IMAGES, SIDE = 55, 5063, 500


def synthetic_images(n: int, seed: int = 0) -> np.ndarray:
    """(n, 500, 500) uint8: Gaussian-smoothed noise with contrast stretched to [0, 255]."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, SIDE, SIDE), np.uint8)
    for i in range(n):
        field = gaussian_filter(rng.normal(0, 1, (SIDE, SIDE)), rng.uniform(1, 4))
        out[i] = np.clip(128 + field / field.std() * 50, 0, 255)
    return out


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the forked workers)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def best_of(methods: dict, repeats: int = 3) -> dict[str, tuple[float, float]]:
    """Best (wall, CPU) seconds of each method, run round-robin so load changes hit all alike."""
    best = {name: (float("inf"), float("inf")) for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            wall, cpu = time.perf_counter(), cpu_seconds()
            fn()
            wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    return best


class TreeMemory:
    """Peak PSS of this process plus its children (the miner's forked workers), sampled.

    PSS (proportional set size, /proc/<pid>/smaps_rollup) splits shared pages among the
    processes that map them, so copy-on-write data and the memory-mapped crops count once.
    """

    def __init__(self, interval: float = 0.02) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _pss(pid: int) -> int:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    @staticmethod
    def _children(pid: int) -> list[int]:
        kids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    kids.append(int(stat.parent.name))
            except (OSError, ValueError, IndexError):
                pass
        return kids

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.wait(self.interval):
            total = self._pss(me) + sum(self._pss(kid) for kid in self._children(me))
            self.peak = max(self.peak, total)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()


def fmt(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.2f} h"


def memory_probe(folder: str, n_queries: int, queue) -> None:
    """Child process: mine on the JPEGs in ``folder``; report the peak memory in bytes."""
    from retrieval.mining.ssim_store import QuerySpec

    paths = sorted(Path(folder).glob("*.jpg"))
    queries = [QuerySpec(f"q{i}", paths[i], np.array([i])) for i in range(n_queries)]
    start = time.perf_counter()
    with TreeMemory() as memory:
        mine_ssim_negatives(paths, queries, Path(folder) / "cache", device="cpu", show_progress=False)
    queue.put((memory.peak, time.perf_counter() - start))


def measure_memory(images: np.ndarray, n_queries: int) -> tuple[int, float]:
    with tempfile.TemporaryDirectory() as folder:
        for i, image in enumerate(images):
            Image.fromarray(image).save(Path(folder) / f"im_{i:05d}.jpg", quality=95)
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: its peak is the miner's
        queue = ctx.Queue()
        child = ctx.Process(target=memory_probe, args=(folder, n_queries, queue))
        child.start()
        result = queue.get()
        child.join()
    return result


def time_torch_full_run(images: np.ndarray) -> None:
    import torch

    from retrieval.mining.ssim_torch import ssim_many_vs_many_torch

    if not torch.cuda.is_available():
        print("\n(torch/CUDA: no CUDA device here, GPU timing skipped)")
        return
    database = np.resize(images, (OXFORD_IMAGES, SIDE, SIDE))  # content does not change timing
    for dtype in (torch.float32, torch.float64):
        ssim_many_vs_many_torch(images[:2], database[:256], 255, dtype=dtype)  # warm-up
        torch.cuda.synchronize()
        start = time.perf_counter()
        ssim_many_vs_many_torch(np.resize(images, (OXFORD_QUERIES, SIDE, SIDE)), database, 255, dtype=dtype)
        torch.cuda.synchronize()
        print(
            f"torch on {torch.cuda.get_device_name()}, {dtype}: full Oxford run "
            f"{OXFORD_QUERIES}x{OXFORD_IMAGES} in {time.perf_counter() - start:.1f} s"
        )


def report_memory(n_images: int, n_queries: int) -> None:
    peak, seconds = measure_memory(synthetic_images(n_images), n_queries)
    crop_bytes = SIDE * SIDE
    full_peak = peak + (OXFORD_IMAGES - n_images) * crop_bytes
    print(
        f"peak memory (PSS of the miner and its workers), mine_ssim_negatives on {n_images} JPEGs"
        f" x {n_queries} queries (decode + cache + mining, {seconds:.1f} s): {peak / 2**30:.2f} GiB"
    )
    print(
        f"  extrapolated to {OXFORD_IMAGES} images (+ their memory-mapped crops, "
        f"{OXFORD_IMAGES * crop_bytes / 2**30:.2f} GiB in all): {full_peak / 2**30:.2f} GiB "
        "(target <= 4 GB)"
    )


def report_speed(queries: np.ndarray, database: np.ndarray, n_pairs: int, workers: int) -> None:
    rng = np.random.default_rng(1)
    pairs = [tuple(rng.choice(len(database), 2, replace=False)) for _ in range(n_pairs)]
    q_stats, db_stats = ImageStats.compute(queries), ImageStats.compute(database)
    n = len(queries) * len(database)
    best = best_of(
        {
            "skimage": lambda: [
                structural_similarity(database[i], database[j], data_range=255) for i, j in pairs
            ],
            "one": lambda: ssim_many_vs_many(q_stats, db_stats, 255, workers=1),
            "many": lambda: ssim_many_vs_many(q_stats, db_stats, 255, workers=workers),
            "raw": lambda: ssim_many_vs_many(queries, database, 255, workers=workers),
            "stats": lambda: ImageStats.compute(database[:16]),
        }
    )
    sk_wall, sk_cpu = (t / len(pairs) for t in best["skimage"])
    one_wall, one_cpu = (t / n for t in best["one"])
    (many_wall, many_cpu), raw_wall = (t / n for t in best["many"]), best["raw"][0] / n
    stats_wall = best["stats"][0] / 16
    check = ssim_many_vs_many(q_stats, database[:3], 255)[0]
    error = max(
        abs(check[j] - structural_similarity(queries[0], database[j], data_range=255)) for j in range(3)
    )
    print(f"\nper pair, 500x500 grayscale uint8 (max |ours - skimage| = {error:.1e}), wall / CPU ms:")
    print(f"  skimage structural_similarity loop        {sk_wall * 1e3:7.3f} / {sk_cpu * 1e3:7.3f}")
    print(
        f"  ours, precomputed stats, 1 process        {one_wall * 1e3:7.3f} / {one_cpu * 1e3:7.3f}"
        f"   x{sk_wall / one_wall:5.1f} wall, x{sk_cpu / one_cpu:5.1f} CPU"
    )
    print(
        f"  ours, precomputed stats, {workers} workers        {many_wall * 1e3:7.3f} / {many_cpu * 1e3:7.3f}"
        f"   x{sk_wall / many_wall:5.1f} wall; the workers got {many_cpu / many_wall:.2f} cores"
    )
    print(
        f"  ours, stats inside ({len(queries)} queries/pass)     {raw_wall * 1e3:7.3f}"
        f"             x{sk_wall / raw_wall:5.1f} wall"
    )
    print(f"  window statistics, per image              {stats_wall * 1e3:7.3f} (once per pass)")

    full = OXFORD_QUERIES * OXFORD_IMAGES
    per_pass = inspect.signature(mine_ssim_negatives).parameters["queries_per_pass"].default
    passes = -(-OXFORD_QUERIES // per_pass)
    stats_time = passes * OXFORD_IMAGES * stats_wall / workers  # candidates' stats, once a pass
    ours, ours_cpu = full * many_wall + stats_time, full * many_cpu / workers + stats_time
    print(f"\nfull Oxford5k mining, {OXFORD_QUERIES} x {OXFORD_IMAGES} = {full} pairs, {passes} pass(es):")
    print(f"  skimage loop   {fmt(full * sk_wall)} wall ({fmt(full * sk_cpu)} of CPU)")
    print(f"  ours           {fmt(ours)} wall, speed-up x{full * sk_wall / ours:.1f} (target >= 30)")
    print(
        f"  ours from CPU times, {workers} workers scaling ideally on free cores: {fmt(ours_cpu)},"
        f" speed-up x{full * sk_cpu / ours_cpu:.1f}"
    )
    load = os.getloadavg()[0]
    if load > 1.5:
        print(
            f"  note: load average {load:.1f}: other processes hold the cores, so wall-clock ratios"
            " of the parallel runs are understated; the CPU-time ratios are not"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=160, help="candidates for the miner path")
    parser.add_argument("--queries", type=int, default=8, help="queries for the miner path")
    parser.add_argument("--pairs", type=int, default=24, help="pairs sampled for skimage")
    parser.add_argument("--memory-images", type=int, default=200, help="0 skips the probe")
    parser.add_argument("--memory-queries", type=int, default=OXFORD_QUERIES)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
    if args.memory_images:  # first, while this process is still small
        report_memory(args.memory_images, args.memory_queries)
    images = synthetic_images(max(args.images, args.queries, 2))
    report_speed(images[: args.queries], images[: args.images], args.pairs, args.workers)
    time_torch_full_run(images)
    print(f"\nload average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
