"""``model.freeze_batchnorm`` (default true): training keeps the ImageNet network's
BatchNorm running statistics and still trains its affine weights; false re-estimates the
statistics from the batches. Both through Lightning's own loop, which switches the module to
train mode at every epoch start and after validation."""

from __future__ import annotations

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from retrieval.pipelines.build import build_datamodule, build_model
from tests.helpers.configs import compose_cfg
from tests.helpers.trainers import quiet_trainer


def _batchnorm_state(model) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    stats, affine = {}, {}
    for name, module in model.net.named_modules():
        if isinstance(module, _BatchNorm):
            stats[name] = module.running_mean.clone()
            affine[name] = module.weight.detach().clone()
    return stats, affine


@pytest.mark.parametrize("frozen", [True, False])
def test_training_keeps_or_re_estimates_batchnorm_statistics(frozen, tmp_path):
    cfg = compose_cfg(
        "train.yaml",
        [
            "dataset=toy_classes",
            f"paths.data_dir={tmp_path}",
            "dataset.num_workers=0",
            "dataset.image_size=32",
            "dataset.classes_per_batch=2",
            "dataset.images_per_class=2",
            f"model.freeze_batchnorm={frozen}",
        ],
    )
    datamodule, model = build_datamodule(cfg), build_model(cfg)
    stats_before, affine_before = _batchnorm_state(model)
    assert stats_before  # the ImageNet EfficientNet-Lite0 has BatchNorm layers
    quiet_trainer(2, limit_val_batches=0, default_root_dir=tmp_path).fit(model, datamodule=datamodule)
    stats_after, affine_after = _batchnorm_state(model)
    unchanged = [torch.equal(stats_before[k], stats_after[k]) for k in stats_before]
    assert all(unchanged) if frozen else not any(unchanged)
    # the affine weights train either way
    assert any(not torch.equal(affine_before[k], affine_after[k]) for k in affine_before)
    model.train()
    bn_modes = {m.training for m in model.net.modules() if isinstance(m, _BatchNorm)}
    assert bn_modes == {not frozen} and model.net.training
