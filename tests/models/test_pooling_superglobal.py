"""pooling=superglobal (Regional-GeM + GeM+) against SuperGlobal's reference modules, and in
the real network: it composes, embeds ImageNet EfficientNet-Lite0 feature maps, trains p
only when asked."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from retrieval.models.superglobal_pooling import RegionalGeM
from tests.helpers.configs import compose_cfg


def _reference(x: torch.Tensor, pr: float = 2.5, size: int = 5, p: float = 4.6, eps: float = 1e-8):
    """Transcribed from ShihaoShao-GH/SuperGlobal, modules/coarse_retrieval/rgem.py (class
    rgem) and gemp.py (class gemp), applied as model/resnet.py's _forward_singlescale does
    (rgem on the map, flatten the positions, gemp)."""
    nominater = (size**2) ** (1.0 / pr)
    lppool, pad = nn.LPPool2d(pr, int(size), stride=1), nn.ReflectionPad2d(int((size - 1) // 2.0))
    x = 0.5 * lppool(pad(x / nominater)) + 0.5 * x
    x = x.view(x.shape[0], x.shape[1], -1)
    x = x.clamp(eps).pow(p)
    return torch.nn.functional.adaptive_avg_pool1d(x, 1).pow(1.0 / p).flatten(1)


@settings(max_examples=25, deadline=None)
@given(
    h=st.integers(3, 12),
    w=st.integers(3, 12),
    size=st.sampled_from([3, 5]),
    seed=st.integers(0, 2**16),
)
def test_matches_the_reference_implementation(h, w, size, seed):
    if min(h, w) <= (size - 1) // 2:
        return  # the reference cannot reflect-pad such a map (tested below)
    # post-ReLU activations: non-negative, some exactly zero
    x = torch.relu(
        torch.randn(2, 7, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    )
    pooling = RegionalGeM(region_size=size)
    # the exponent as the parameter stores it (float32 4.6), so float64 maps compare exactly
    expected = _reference(x, size=size, p=float(pooling.p))
    torch.testing.assert_close(pooling(x), expected, rtol=1e-10, atol=1e-12)


def test_the_regional_step_changes_the_descriptor_and_tiny_maps_pass_through():
    x = torch.relu(torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(1)))
    pooling = RegionalGeM()
    gem_plus = x.clamp(min=1e-8).pow(4.6).mean(dim=(2, 3)).pow(1 / 4.6)
    assert not torch.allclose(pooling(x), gem_plus)  # regional context moves it
    tiny = x[..., :2, :2]  # 2x2 map: no 5x5 window can be reflected, GeM+ alone
    torch.testing.assert_close(pooling(tiny), tiny.clamp(min=1e-8).pow(4.6).mean(dim=(2, 3)).pow(1 / 4.6))
    with pytest.raises(ValueError, match="region_size must be an odd number"):
        RegionalGeM(region_size=4)


def test_superglobal_pooling_in_the_imagenet_network():
    cfg = compose_cfg("train.yaml", ["dataset=toy_classes", "pooling=superglobal"])
    model = instantiate(cfg.model)
    pooling = model.net.pooling
    assert isinstance(pooling, RegionalGeM) and not pooling.p.requires_grad  # GeM+: p fixed at 4.6
    embeddings = model.eval()(torch.rand(2, 3, 160, 160))  # 5x5 feature map: the regional step runs
    assert embeddings.shape == (2, 1280)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(2))
    learnable = compose_cfg("train.yaml", ["pooling=superglobal", "model.net.pooling.learnable=true"])
    assert instantiate(learnable.model.net.pooling).p.requires_grad
