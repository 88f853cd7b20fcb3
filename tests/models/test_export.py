"""ONNX / TorchScript export: the exported graph embeds like PyTorch, at any image size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from retrieval.models.export import max_abs_difference
from retrieval.pipelines.export import export
from tests.helpers.configs import compose_cfg
from tests.helpers.runs import REPO_ROOT as ROOT
from tests.helpers.runs import run_script as run


def _checkpoint(tmp_path: Path, pooling: str) -> tuple[Path, list[str]]:
    """A Lightning-format checkpoint ({'state_dict': ...}) of a small, randomly initialised model."""
    overrides = [
        "model.net.backbone.name=resnet18",
        "model.net.backbone.weights=none",
        "dataset.image_size=64",
        f"pooling={pooling}",
    ]
    cfg = compose_cfg("export.yaml", [*overrides, "ckpt_path=unused"])
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    ckpt = tmp_path / f"{pooling}.ckpt"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    return ckpt, overrides


@pytest.mark.parametrize("pooling", ["gem", "flatten"])
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_matches_pytorch(tmp_path, fmt, pooling):
    ckpt, overrides = _checkpoint(tmp_path, pooling)
    cfg = compose_cfg("export.yaml", [*overrides, f"ckpt_path={ckpt}", f"format={fmt}", "check=false"])
    path = export(cfg)
    assert path == ckpt.with_suffix(".onnx" if fmt == "onnx" else ".torchscript.pt")
    assert path.is_file() and not path.with_name(f".tmp-{path.name}").exists()
    model = instantiate(cfg.model)
    model.load_state_dict(torch.load(ckpt, weights_only=True)["state_dict"])
    # another batch and image size than the traced ones (even the flattened map's length follows)
    assert max_abs_difference(model.net.eval(), path, 64) < 1e-4


def test_parity_check_catches_a_different_network(tmp_path):
    ckpt, overrides = _checkpoint(tmp_path, "gem")
    path = export(compose_cfg("export.yaml", [*overrides, f"ckpt_path={ckpt}", "format=onnx"]))
    torch.manual_seed(1)
    other = instantiate(compose_cfg("export.yaml", [*overrides, "ckpt_path=x"]).model).net.eval()
    assert max_abs_difference(other, path, 64) > 1e-2


def test_export_cli(tmp_path):
    ckpt, overrides = _checkpoint(tmp_path, "gem")
    result = run(
        "-m",
        "retrieval.pipelines.export",
        *overrides,
        f"ckpt_path={ckpt}",
        "format=torchscript",
        f"output={tmp_path / 'net.pt'}",
        f"paths.log_dir={tmp_path}",
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "parity: max |exported - pytorch|" in result.stdout and (tmp_path / "net.pt").is_file()
    result = run(
        "-m",
        "retrieval.pipelines.export",
        *overrides,
        f"ckpt_path={tmp_path / 'nope.ckpt'}",
        f"paths.log_dir={tmp_path}",
        cwd=ROOT,
    )
    assert result.returncode == 2 and "nope.ckpt does not exist" in result.stderr
