"""Mine and cache the negative pools of a landmark set ahead of training:

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

from retrieval.datamodules.landmark_datamodule import LandmarkDataModule
from retrieval.datamodules.negative_pools import EpochNegativePoolSource, NegativePoolSource
from retrieval.pipelines.cli import hydra_command
from retrieval.utils.errors import UserFacingError

log = logging.getLogger(__name__)


def mine(cfg: DictConfig) -> None:
    datamodule = instantiate(cfg.dataset)
    if not isinstance(datamodule, LandmarkDataModule):
        raise UserFacingError(
            f"dataset={cfg.dataset.name} is class-labelled: its triplets are mined "
            f"inside each P×K batch during training (batch_miner=all|batch_hard|"
            f"semi_hard), there are no negative pools to mine ahead"
        )
    source: NegativePoolSource | EpochNegativePoolSource = instantiate(cfg.mining)
    if isinstance(source, EpochNegativePoolSource):
        raise UserFacingError(
            "mining=current_model re-mines the pools with the network being trained, "
            "at every epoch of training: there is nothing to mine ahead"
        )
    gt = datamodule.read_ground_truth()
    pools = source(gt, cache_dir=Path(cfg.paths.cache_dir) / gt.name)
    sizes = np.array([len(p) for p in pools])
    print(
        f"{gt.name}: {len(pools)} queries, pool sizes min {sizes.min()} / mean {sizes.mean():.0f} "
        f"/ max {sizes.max()}; cached under {Path(cfg.paths.cache_dir) / gt.name}"
    )


main = hydra_command("mine", mine)

if __name__ == "__main__":
    main()
