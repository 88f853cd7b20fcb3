"""Compose a command's config as Hydra would, outside a running app."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

# the tiny VGG set (conftest's small_vgg_root) read by a resnet18 at 64 px, no weights: the
# model overrides every small evaluate/database/train test shares
SMALL_VGG_MODEL = [
    "dataset=oxford5k",
    "pooling=gem",
    "dataset.image_size=64",
    "dataset.num_workers=0",
    "model.net.backbone.name=resnet18",
    "model.net.backbone.weights=none",
]


def compose_cfg(config_name: str, overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name, overrides=overrides)
    # resolve ${hydra:...} outside a running app
    with open_dict(cfg):
        cfg.paths.root_dir = "/tmp/retrieval-test"
        cfg.paths.output_dir = "/tmp/retrieval-test/out"
    return cfg
