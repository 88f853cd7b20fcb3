"""Every option of every config group composes, and instantiates what it names."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# dataset_model is chosen by interpolation from the dataset choice, so it is exercised
# through the dataset options; hydra/ is Hydra's own settings
GROUPS = sorted(p.name for p in CONFIGS.iterdir()
                if p.is_dir() and p.name not in ("hydra", "dataset_model"))


def options(group: str) -> list[str]:
    # files starting with '_' are shared bases, not options
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml") if not p.stem.startswith("_"))


def compose_cfg(config_name: str, overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name, overrides=overrides)
    # resolve ${hydra:...} outside a running app
    with open_dict(cfg):
        cfg.paths.root_dir = "/tmp/retrieval-test"
        cfg.paths.output_dir = "/tmp/retrieval-test/out"
    return cfg


@pytest.mark.parametrize("config_name", ["train.yaml", "evaluate.yaml"])
@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes(config_name, group, option):
    prefix = "" if group in _groups_of(config_name) else "+"
    cfg = compose_cfg(config_name, [f"{prefix}{group}={option}"])
    resolved = OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert resolved["dataset"]["_target_"] and resolved["model"]["_target_"]


def _groups_of(config_name: str) -> set[str]:
    text = (CONFIGS / config_name).read_text()
    return {g for g in GROUPS if f"- {g}:" in text or f"- optional {g}:" in text}


def test_default_train_config_targets_instantiate():
    cfg = compose_cfg("train.yaml", [])
    datamodule = instantiate(cfg.dataset)
    assert datamodule.name == "toy" and datamodule.image_size == 128
    model = instantiate(cfg.model)
    assert type(model.net.pooling).__name__ == "GeM"
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    assert {type(c).__name__ for c in callbacks} >= {"RetrievalEvaluation", "ModelCheckpoint"}


def test_pooling_override_replaces_the_dataset_default():
    cfg = compose_cfg("train.yaml", ["pooling=mac"])
    assert cfg.model.net.pooling._target_.endswith("MAC")
    assert "p" not in cfg.model.net.pooling


def test_dataset_aliases_name_the_real_sets():
    assert compose_cfg("train.yaml", ["dataset=paris"]).dataset.name == "paris6k"
    assert compose_cfg("train.yaml", ["dataset=oxford"]).dataset.name == "oxford5k"
