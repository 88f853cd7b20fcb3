"""Benchmark: database embedding throughput, sharded ``trainer.predict`` (shard files written
atomically, the merge included) against the one-process loop it replaced
(``retrieval.models.inference.embed_dataset``), timed interleaved in the same run.

On the generated toy set (640 images) with the ImageNet EfficientNet-Lite0 at 128 px on
CPU. On a GPU machine, the same build across its GPUs:

    retrieval-database build dataset=toy trainer=ddp trainer.devices=N dataset.num_workers=8

    python bench/database_embedding.py [--repeats 2] [--workers 2] [--size 128]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from functools import partial
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import open_dict

from retrieval.models.inference import embed_dataset
from retrieval.pipelines.build import build_datamodule, build_model
from retrieval.serving.sharded_embedding import embed_in_shards
from retrieval.serving.shards import ShardPlan
from retrieval.tracking.resolvers import register_resolvers

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--shard-size", type=int, default=128)
    args = parser.parse_args()
    register_resolvers()
    overrides = [
        f"dataset.image_size={args.size}",
        f"dataset.num_workers={args.workers}",
        "trainer.accelerator=cpu",
    ]
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose("database.yaml", overrides=overrides)
    with open_dict(cfg):  # the data under the launch folder, as a command reads it; no run folder
        cfg.paths.output_dir = tempfile.mkdtemp(prefix="bench-database-")
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("validate")
    model, dataset = build_model(cfg), datamodule.database_dataset()
    batch = int(cfg.embed.batch_size)
    print(
        f"{len(dataset)} images at {args.size} px, batch {batch}, {args.workers} loader workers; "
        f"load {os.getloadavg()[0]:.2f}, cores {sorted(os.sched_getaffinity(0))}"
    )

    def loop() -> None:
        embed_dataset(model, dataset, batch, args.workers, "cpu", progress=False)

    def sharded() -> None:
        with tempfile.TemporaryDirectory() as work:
            plan = ShardPlan.create(
                Path(work), {"bench": True}, [str(p) for p in dataset.paths], args.shard_size
            )
            trainer = partial(instantiate, cfg.trainer, enable_progress_bar=False)
            embed_in_shards(model, dataset, plan, trainer, batch, args.workers)

    times: dict[str, list[float]] = {"loop": [], "sharded": []}
    for _ in range(args.repeats):
        for name, run in (("loop", loop), ("sharded", sharded)):
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    best = {name: min(values) for name, values in times.items()}
    for name, seconds in best.items():
        print(f"{name:8s} {seconds:6.2f} s  {len(dataset) / seconds:7.1f} images/s")
    print(f"sharded / loop time: {best['sharded'] / best['loop']:.2f}; load after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
