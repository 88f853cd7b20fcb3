"""Get a dataset into the layout the loaders read: download, verify and unpack a benchmark,
or generate one of the embedded sets.

    retrieval-download                                      # the datasets and their sources
    retrieval-download dataset=oxford5k paths.data_dir=DATA_DIR [mirror=URL]
    retrieval-download -m dataset=roxford5k,rparis6k        # several (a Hydra multirun)
    retrieval-download dataset=gldv2 shards=2               # GLDv2's metadata + its first 2 shards
    retrieval-download dataset=toy                          # generate the toy landmark set
    retrieval-download dataset=toy_classes                  # generate the toy class set

Interrupted downloads resume; a re-run with everything in place does nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from retrieval.acquisition.datasets import DATASETS, dataset_table
from retrieval.acquisition.download import download_dataset
from retrieval.acquisition.fetch import FetchOptions
from retrieval.pipelines.cli import hydra_command
from retrieval.utils.errors import UserFacingError

GENERATED = {"toy": "ground_truth", "toy_classes": "items"}  # dataset -> the node that generates it


def download(cfg: DictConfig) -> Path | None:
    if cfg.get("dataset") is None:
        print(
            "usage: retrieval-download dataset=NAME [paths.data_dir=DIR] [mirror=URL]\n\n"
            f"datasets (approximate download size; official sources):\n{dataset_table()}\n"
            f"  toy, toy_classes: generated locally from scikit-image's photographs"
        )
        return None
    name = cfg.dataset.name
    if name in GENERATED:
        instantiate(cfg.dataset[GENERATED[name]])()  # generates on first use, then reads
        print(f"{name}: ready in {cfg.dataset.root}")
        return Path(cfg.dataset.root)
    if name not in DATASETS:
        raise UserFacingError(
            f"dataset={name} cannot be downloaded; downloadable: {', '.join([*DATASETS, *GENERATED])}"
        )
    options = FetchOptions(retries=int(cfg.retries), timeout_s=float(cfg.timeout_s), quiet=bool(cfg.quiet))
    try:
        report = download_dataset(
            name,
            cfg.paths.data_dir,
            mirror=cfg.mirror,
            keep_archives=cfg.keep_archives,
            ignore_pinned=cfg.ignore_pinned,
            options=options,
            shards=cfg.get("shards"),
        )
    except KeyboardInterrupt:
        print(
            "\ninterrupted: partial downloads are kept; run the same command again to resume.",
            file=sys.stderr,
        )
        sys.exit(130)
    return report.folder


main = hydra_command("download", download)

if __name__ == "__main__":
    main()
