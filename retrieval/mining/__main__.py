"""Mine and cache negative pools for a dataset ahead of training:

    python -m retrieval.mining dataset=oxford5k            # SSIM pools (the default)
    python -m retrieval.mining dataset=toy mining.top_k=100

Training mines the same cache automatically when it is missing; this command lets a
long mining run happen (and resume after an interruption) on its own.
"""
import logging
from pathlib import Path

import hydra
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from retrieval.utils.errors import exit_on_user_error

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="../../configs", config_name="mine.yaml")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    datamodule = instantiate(cfg.dataset)
    gt = datamodule.read_ground_truth()
    pools = instantiate(cfg.mining)(gt, cache_dir=Path(cfg.paths.cache_dir) / gt.name)
    sizes = np.array([len(p) for p in pools])
    print(f"{gt.name}: {len(pools)} queries, pool sizes min {sizes.min()} / mean {sizes.mean():.0f} "
          f"/ max {sizes.max()}; cached under {Path(cfg.paths.cache_dir) / gt.name}")


if __name__ == "__main__":
    main()
