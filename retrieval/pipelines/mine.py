"""Mine and cache the negative pools of a landmark set ahead of training:

    retrieval-mine dataset=oxford5k            # SSIM pools (the default)
    retrieval-mine dataset=toy mining.top_k=100

Training mines the same cache automatically when it is missing; this command lets a
long mining run happen on its own. Its settings are checked before any work. Progress is
saved every few seconds: after a SIGKILL (a pre-empted job) or Ctrl-C (one line saying what
is saved, exit code 130) the same command resumes and scores only what is missing.
"""

import logging
import signal
import sys
from pathlib import Path

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from retrieval.datamodules.landmark_datamodule import LandmarkDataModule
from retrieval.datamodules.negative_pools import EpochNegativePoolSource, NegativePoolSource
from retrieval.mining.pools import ssim_negative_pools
from retrieval.mining.ssim_report import MiningInterrupted
from retrieval.mining.ssim_settings import check_settings
from retrieval.pipelines.cli import hydra_command
from retrieval.utils.errors import UserFacingError

log = logging.getLogger(__name__)

INTERRUPTED = 130  # the shell's code for a command stopped by Ctrl-C (128 + SIGINT)
_SSIM_TARGET = f"{ssim_negative_pools.__module__}.{ssim_negative_pools.__qualname__}"


def mine(cfg: DictConfig) -> None:
    """Mine the pools; Ctrl-C prints one line (what is saved) and exits with code 130."""
    try:
        _mine(cfg)
    except KeyboardInterrupt as interrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not add a traceback
        if isinstance(interrupt, MiningInterrupted):
            print(interrupt, file=sys.stderr)
        else:
            print(
                "interrupted before mining started (what earlier runs saved is kept); "
                "run the same command again to mine",
                file=sys.stderr,
            )
        sys.exit(INTERRUPTED)


def _mine(cfg: DictConfig) -> None:
    if cfg.mining.get("_target_") == _SSIM_TARGET:  # settings first: nothing is read before
        settings = OmegaConf.to_container(cfg.mining, resolve=True)
        check_settings(**{k: v for k, v in settings.items() if not k.startswith("_")})
    datamodule = instantiate(cfg.dataset)
    if not isinstance(datamodule, LandmarkDataModule):
        raise UserFacingError(
            f"dataset={cfg.dataset.name} is class-labelled: it has no queries to mine negatives "
            f"for. Its triplets are mined inside each P×K batch while training, e.g. "
            f"`retrieval-train dataset={cfg.dataset.name} batch_miner=batch_hard` "
            f"(batch_miner=all|batch_hard|semi_hard). retrieval-mine is for landmark sets "
            f"(dataset=toy, oxford5k, paris6k, roxford5k, rparis6k)."
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
