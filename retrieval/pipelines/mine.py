"""Mine and cache negative pools for a dataset ahead of training:

    retrieval-mine dataset=oxford5k            # SSIM pools (the default)
    retrieval-mine dataset=toy mining.top_k=100

Training mines the same cache automatically when it is missing; this command lets a
long mining run happen (and resume after an interruption) on its own.
"""
import logging
from pathlib import Path

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from retrieval.pipelines.cli import hydra_command

log = logging.getLogger(__name__)


def mine(cfg: DictConfig) -> None:
    datamodule = instantiate(cfg.dataset)
    gt = datamodule.read_ground_truth()
    pools = instantiate(cfg.mining)(gt, cache_dir=Path(cfg.paths.cache_dir) / gt.name)
    sizes = np.array([len(p) for p in pools])
    print(f"{gt.name}: {len(pools)} queries, pool sizes min {sizes.min()} / mean {sizes.mean():.0f} "
          f"/ max {sizes.max()}; cached under {Path(cfg.paths.cache_dir) / gt.name}")


main = hydra_command("mine", mine)

if __name__ == "__main__":
    main()
