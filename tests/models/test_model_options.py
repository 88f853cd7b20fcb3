"""Model options: local / hub weights, triplet distances, projection head, bf16 +
channels_last + torch.compile in a real (one-batch) training run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import timm
import torch
from hydra.utils import instantiate

from retrieval.models.backbone import create_backbone
from retrieval.models.losses import cosine_distance, euclidean, squared_euclidean
from retrieval.utils.errors import UserFacingError, WeightsError
from tests.helpers.configs import compose_cfg
from tests.helpers.runs import run_ok, small_run


def test_local_weights_load_into_the_headless_backbone(tmp_path):
    full = timm.create_model("resnet18", num_classes=10)  # with a classifier, as ImageNet files are
    torch.save(full.state_dict(), tmp_path / "resnet18.pth")
    backbone = create_backbone("resnet18", weights=tmp_path / "resnet18.pth")
    assert torch.equal(backbone.state_dict()["conv1.weight"], full.state_dict()["conv1.weight"])
    assert backbone(torch.zeros(1, 3, 64, 64)).ndim == 4  # a feature map: no pooling, no classifier


def test_wrong_or_missing_weights_name_the_file(tmp_path):
    torch.save(timm.create_model("resnet34").state_dict(), tmp_path / "resnet34.pth")
    with pytest.raises(WeightsError, match="resnet34.pth does not fit the backbone"):
        create_backbone("resnet18", weights=tmp_path / "resnet34.pth")
    with pytest.raises(WeightsError, match="nope.pth does not exist"):
        create_backbone("resnet18", weights=tmp_path / "nope.pth")


def test_failed_download_names_the_ways_out():
    code = "from retrieval.models.backbone import create_backbone; create_backbone('resnet18', weights='imagenet')"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # the hub unreachable, without waiting on a network
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode != 0
    assert "WeightsError" in result.stderr and "model.net.backbone.weights=FILE" in result.stderr
    assert "model.net.backbone.weights=none" in result.stderr
    assert "model.net.backbone.name=tf_efficientnet_lite0" in result.stderr


def test_triplet_distances():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    assert torch.allclose(squared_euclidean(x, y), torch.tensor([2.0, 0.0]))
    assert torch.allclose(euclidean(x, y), torch.tensor([2.0**0.5, 1e-6]), atol=1e-5)
    assert torch.allclose(cosine_distance(x, y), torch.tensor([1.0, 0.0]))
    # anchor x, positive y, negative -x: d(a, n) is 2 on both rows for both distances, so
    # with margin 2 the hinge keeps exactly d(a, p): mean(√2, 0) and mean(1, 0)
    for name, expected in (("euclidean", 2.0**0.5 / 2), ("cosine_distance", 0.5)):
        cfg = compose_cfg(
            "train.yaml", [f"model.loss.distance_function._target_=retrieval.models.losses.{name}"]
        )
        assert cfg.model.loss.margin == 2
        loss = instantiate(cfg.model.loss)
        assert loss(x, y, -x).item() == pytest.approx(expected, abs=1e-5)
        # a negative farther than the positive by the whole margin costs nothing
        assert loss(x, x, -x).item() == pytest.approx(0.0, abs=1e-5)


def test_linear_head_is_sized_before_the_optimizer_sees_it(tmp_path):
    cfg = compose_cfg(
        "train.yaml",
        [
            "head=linear",
            "model.net.projection.out_features=32",
            "model.net.backbone.name=resnet18",
            "model.net.backbone.weights=none",
        ],
    )
    model = instantiate(cfg.model)
    model.configure_model()  # outside a trainer: sized at 224 px
    optimizer = model.configure_optimizers()["optimizer"]
    assert all(
        not isinstance(p, torch.nn.parameter.UninitializedParameter)
        for group in optimizer.param_groups
        for p in group["params"]
    )
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 32)
    # a checkpoint of it loads into a fresh, still lazy model
    fresh = instantiate(cfg.model)
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh.net.projection.weight, model.net.projection.weight)


@pytest.mark.slow
def test_bf16_channels_last_compile_linear_head_train(tiny_landmarks, tmp_path):
    # the eager backend exercises torch.compile's code path without a C++ toolchain's minutes
    run_ok(
        "train.py",
        *small_run(tiny_landmarks, tmp_path),
        "debug=fast",
        "logger=csv",
        "trainer.precision=bf16-mixed",
        "model.channels_last=true",
        "model.compile=true",
        "+model.compile_options.backend=eager",
        "head=linear",
        cwd=tmp_path,
    )


def test_whitening_head_starts_from_a_fitted_whitening(tmp_path):
    import numpy as np

    from retrieval.evaluation.whitening import fit_whitening
    from retrieval.models.projection import WhiteningProjection

    rng = np.random.default_rng(0)
    descriptors = rng.normal(size=(200, 16)).astype(np.float32) @ rng.normal(size=(16, 16)).astype(np.float32)
    whitening = fit_whitening(descriptors, dim=8)
    np.savez(tmp_path / "whitening.npz", **whitening.to_dict())
    layer = WhiteningProjection(init_from=tmp_path / "whitening.npz")
    x = descriptors[:5]
    assert np.allclose(layer(torch.from_numpy(x)).detach().numpy(), whitening.transform(x), atol=1e-4)
    identity = WhiteningProjection(in_features=16)
    assert torch.equal(identity(torch.from_numpy(x)), torch.from_numpy(x))
    np.savez(tmp_path / "power.npz", **fit_whitening(descriptors, dim=8, power=0.5).to_dict())
    with pytest.raises(UserFacingError, match="power normalisation"):
        WhiteningProjection(init_from=tmp_path / "power.npz")
    cfg = compose_cfg(
        "train.yaml",
        [
            "head=whitening",
            "model.net.projection.in_features=512",
            "model.net.backbone.name=resnet18",
            "model.net.backbone.weights=none",
        ],
    )
    assert instantiate(cfg.model)(torch.zeros(2, 3, 64, 64)).shape == (2, 512)
