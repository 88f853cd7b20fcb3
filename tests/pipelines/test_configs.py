"""Every option of every config group composes, and instantiates what it names."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.helpers.configs import CONFIGS, compose_cfg

# dataset_model, eval_inputs and train_inputs are chosen by interpolation (from the dataset
# and model choices), so they are exercised through the dataset and model options; hydra/ is
# Hydra's own settings
GROUPS = sorted(
    p.name
    for p in CONFIGS.iterdir()
    if p.is_dir() and p.name not in ("hydra", "dataset_model", "eval_inputs", "train_inputs")
)
# the dataset an option belongs to when not the default (toy, a landmark set)
# the dataset an option needs (by group, or by (group, option)): class-set options need a class set
CONTEXT = {"batch_miner": ["dataset=toy_classes"], ("model", "class_metric"): ["dataset=toy_classes"]}
# what each command composes besides the dataset and model groups, by kind of set
LANDMARK_TRAINING = {"augmentation", "split", "mining"}
CLASS_TRAINING = {"augmentation", "batch_miner"}


def options(group: str) -> list[str]:
    # files starting with '_' are shared bases, not options
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml") if not p.stem.startswith("_"))


def choices(config_name: str, overrides: list[str] = ()) -> dict[str, str | None]:
    """The composed defaults of a command: group -> option (None: an empty slot)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    return {k: v for k, v in cfg.hydra.runtime.choices.items() if not k.startswith("hydra/")}


def composed(config_name: str, overrides: list[str] = ()) -> set[str]:
    """The groups a command composes (empty slots left out)."""
    return {group for group, option in choices(config_name, overrides).items() if option is not None}


@pytest.mark.parametrize("config_name", ["train.yaml", "evaluate.yaml"])
@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes(config_name, group, option):
    context = CONTEXT.get((group, option), CONTEXT.get(group, []))
    # a group in the command's defaults (an empty slot too) is overridden, any other appended
    prefix = "" if group in choices(config_name, context) else "+"
    cfg = compose_cfg(config_name, [*context, f"{prefix}{group}={option}"])
    resolved = OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert resolved["dataset"]["_target_"] and resolved["model"]["_target_"]


@pytest.mark.parametrize("dataset", ["toy", "oxford5k", "folder", "csv", "toy_classes"])
def test_each_kind_of_set_composes_its_own_module_and_negatives(dataset):
    landmarks = dataset in ("toy", "oxford5k")
    cfg = compose_cfg("train.yaml", [f"dataset={dataset}"])
    groups = composed("train.yaml", [f"dataset={dataset}"])
    module = choices("train.yaml", [f"dataset={dataset}"])["model"]
    assert module == ("triplet" if landmarks else "class_metric")
    assert groups >= (LANDMARK_TRAINING if landmarks else CLASS_TRAINING)
    assert not groups & ({"batch_miner"} if landmarks else {"mining", "split"})
    if landmarks:
        assert cfg.dataset.negative_pools == cfg.mining and cfg.dataset.split == cfg.split
        assert cfg.model._target_.endswith("TripletRetrievalModule")
    else:  # the module comes from the model group (model/class_metric.yaml), its miner from batch_miner
        assert "negative_pools" not in cfg.dataset and "split" not in cfg.dataset
        assert cfg.model._target_ == "retrieval.training.class_metric_module.ClassMetricModule"
        assert cfg.model.miner == cfg.batch_miner and cfg.batch_miner._target_.endswith("every_triplet")
        assert (
            cfg.model.net == compose_cfg("train.yaml", ["dataset=toy"]).model.net
        )  # the same ImageNet Lite0


@pytest.mark.parametrize("dataset", ["toy", "folder"])
def test_commands_compose_only_the_groups_they_use(dataset):
    """evaluate / database build the datamodule (a landmark set's split, no training inputs),
    export only the network, download and mine no network at all."""
    landmarks = dataset == "toy"
    training = LANDMARK_TRAINING | {"batch_miner"}
    for name in ("evaluate.yaml", "database.yaml"):
        groups = composed(name, [f"dataset={dataset}"])
        assert groups & training == ({"split"} if landmarks else set()), name
        # a database is embedded by trainer.predict (trainer=ddp over GPUs): its trainer only
        predict = {"trainer"} if name == "database.yaml" else set()
        assert groups & {"trainer", "callbacks", "logger"} == predict
        assert "augmentations" not in compose_cfg(name, [f"dataset={dataset}"]).dataset
    assert not composed("export.yaml", [f"dataset={dataset}"]) & training
    for name in ("download.yaml", "mine.yaml"):
        assert "model" not in composed(name, [f"dataset={dataset}"])
    # the entries that rebuild a network share one defaults list: configs/_model_entry.yaml
    for name in ("evaluate.yaml", "database.yaml", "export.yaml"):
        assert "  - _model_entry\n" in (CONFIGS / name).read_text()


@pytest.mark.parametrize("name", ["evaluate.yaml", "database.yaml", "export.yaml"])
def test_recipes_rebuild_their_network_in_every_command(name):
    """An experiment's training-only choices (augmentation, mining) are pinned empty outside
    train.py; its network and dataset settings apply."""
    for experiment in ("oxford_reference", "paris_to_roxford"):
        cfg = compose_cfg(name, [f"experiment={experiment}"])
        groups = composed(name, [f"experiment={experiment}"])
        assert not groups & {"augmentation", "mining"}
        assert cfg.model.net.pooling._target_.endswith("Flatten") and cfg.dataset.image_size == 448
        assert ("split" in groups) == (name != "export.yaml")
    train = composed("train.yaml", ["experiment=paris_to_roxford"])
    assert choices("train.yaml", ["experiment=paris_to_roxford"])["mining"] == "ssim"
    assert {"augmentation", "mining", "split"} <= train
    assert choices("evaluate.yaml", ["experiment=paris_to_roxford"])["split"] == "cross"


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
