"""A checkpoint's pixel normalisation (its backbone's, from timm's pretrained_cfg) reaches
every downstream artifact: the database serves with it and the export records it."""

from __future__ import annotations

import json

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import open_dict

from retrieval.models.export import preprocessing_path
from retrieval.models.input_normalization import IMAGENET_MEAN, IMAGENET_STD
from retrieval.pipelines.database import build_database
from retrieval.pipelines.export import export
from retrieval.serving.database import load_database, load_model_for_database
from tests.helpers.configs import SMALL_VGG_MODEL, compose_cfg

TF_HALF = (0.5, 0.5, 0.5)


@pytest.mark.parametrize(
    "backbone, mean, std",
    [("tf_efficientnet_lite0", TF_HALF, TF_HALF), ("resnet18", IMAGENET_MEAN, IMAGENET_STD)],
)
def test_database_and_export_use_the_checkpoints_normalisation(small_vgg_root, tmp_path, backbone, mean, std):
    model_overrides = [*SMALL_VGG_MODEL, f"model.net.backbone.name={backbone}"]
    cfg = compose_cfg(
        "database.yaml",
        [*model_overrides, f"paths.data_dir={small_vgg_root.parent}", f"db_dir={tmp_path / 'db'}"],
    )
    torch.manual_seed(0)
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": instantiate(cfg.model).state_dict()}, ckpt)
    with open_dict(cfg):
        cfg.ckpt_path = str(ckpt)
        cfg.paths.cache_dir = str(tmp_path / "cache")
    artifact = load_database(build_database(cfg))
    assert (artifact.input_normalization.mean, artifact.input_normalization.std) == (mean, std)
    _, transform = load_model_for_database(artifact)
    normalize = transform.transforms[-1]
    assert tuple(normalize.mean) == pytest.approx(mean) and tuple(normalize.std) == pytest.approx(std)

    exported = export(
        compose_cfg("export.yaml", [*model_overrides, f"ckpt_path={ckpt}", "format=onnx", "check=false"])
    )
    sidecar = json.loads(preprocessing_path(exported).read_text())
    assert sidecar["mean"] == pytest.approx(list(mean)) and sidecar["std"] == pytest.approx(list(std))
