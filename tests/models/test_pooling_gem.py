"""GeM's learnable exponent: one for the network (pooling=gem) or one per channel
(pooling=gem_per_channel, sized from the backbone's feature map), trained by the optimizer,
saved and loaded by checkpoints, and a lazy model's checkpoint check does not trip on it."""

from __future__ import annotations

import torch
from hydra.utils import instantiate

from retrieval.models.checkpoints import mismatch
from retrieval.models.pooling import ChannelGeM, GeM
from tests.helpers.configs import compose_cfg


def test_per_channel_gem_starts_as_gem_and_learns_each_channel():
    x = torch.rand(3, 4, 5, 5) + 0.1
    pooling = ChannelGeM(p=3.0)
    assert pooling.has_uninitialized_params()
    assert torch.allclose(pooling(x), GeM(p=3.0)(x))  # all p equal: plain GeM
    assert pooling.p.shape == (4,)
    # gradients differ per channel: each channel's p moves on its own
    pooling(x)[:, :2].sum().backward()
    grad = pooling.p.grad
    assert (grad[:2] != 0).all() and (grad[2:] == 0).all()
    # a hand-set exponent per channel is each channel's own generalised mean
    with torch.no_grad():
        pooling.p.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    for c, p in enumerate([1.0, 2.0, 3.0, 4.0]):
        expected = x[:, c].pow(p).mean(dim=(1, 2)).pow(1 / p)
        assert torch.allclose(pooling(x)[:, c], expected, atol=1e-6)


def test_gem_exponents_are_in_the_optimizer_and_in_checkpoints():
    for pooling, shape in (("gem", ()), ("gem_per_channel", (512,))):
        cfg = compose_cfg(
            "train.yaml",
            [f"pooling={pooling}", "model.net.backbone.name=resnet18", "model.net.backbone.weights=none"],
        )
        model = instantiate(cfg.model)
        model.configure_model()  # the dry forward sizes a per-channel p (resnet18: 512 channels)
        p = model.net.pooling.p
        assert p.shape == shape and p.requires_grad
        optimizer = model.configure_optimizers()["optimizer"]
        assert any(q is p for group in optimizer.param_groups for q in group["params"])
        fresh = instantiate(cfg.model)  # still lazy: the checkpoint check must not trip on it
        with torch.no_grad():
            p.add_(0.5)
        assert mismatch(fresh, model.state_dict()) is None
        fresh.load_state_dict(model.state_dict())
        assert torch.equal(fresh.net.pooling.p, p)
