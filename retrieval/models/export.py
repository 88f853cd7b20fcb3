"""Export a trained embedding network to ONNX or TorchScript, checked against PyTorch.

    python -m retrieval.models.export ckpt_path=CKPT format=onnx|torchscript [output=FILE]

The exported graph maps ``images (B, 3, H, W)``, normalised as the eval transform does
(ImageNet mean/std), to L2-normalised ``embeddings (B, D)``; batch size and image size
stay dynamic. PCA whitening is not part of it: it lives in the database artifact.
"""
from __future__ import annotations

from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from retrieval.runs.evaluate import load_weights
from retrieval.utils.errors import UserFacingError, exit_on_user_error

SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}


def export_onnx(net: nn.Module, example: torch.Tensor, path: Path, opset: int = 17) -> None:
    # The TorchScript-based exporter: it needs no extra package (the dynamo exporter wants
    # onnxscript) and handles every pooling here with dynamic height and width.
    torch.onnx.export(net, (example,), str(path), input_names=["images"], output_names=["embeddings"],
                      dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"},
                                    "embeddings": {0: "batch"}},
                      opset_version=opset, dynamo=False)


def export_torchscript(net: nn.Module, example: torch.Tensor, path: Path) -> None:
    torch.jit.save(torch.jit.trace(net, example), str(path))


def run_exported(path: Path, images: torch.Tensor) -> np.ndarray:
    """Embeddings from the exported file, run the way a deployment would run it."""
    if path.suffix == ".onnx":
        try:
            import onnxruntime
        except ImportError:
            raise UserFacingError("checking an ONNX export needs onnxruntime: pip install "
                                  "'retrieval[export]' (or check=false)") from None
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"images": images.numpy()})[0]
    with torch.no_grad():
        return torch.jit.load(str(path), map_location="cpu")(images).numpy()


def max_abs_difference(net: nn.Module, path: Path, image_size: int, seed: int = 0) -> float:
    """Largest embedding difference, exported vs PyTorch, on 3 random images of a size other
    than the traced one (so a graph that froze the shape fails here, not in production)."""
    generator = torch.Generator().manual_seed(seed)
    height, width = image_size + 32, max(image_size - 32, 32)
    images = torch.randn(3, 3, height, width, generator=generator)
    with torch.no_grad():
        expected = net(images).numpy()
    return float(np.abs(run_exported(path, images) - expected).max())


def export(cfg: DictConfig) -> Path:
    if cfg.format not in SUFFIXES:
        raise UserFacingError(f"format={cfg.format} is not one of {sorted(SUFFIXES)}")
    ckpt = Path(cfg.ckpt_path).expanduser()
    cfg.model.net.backbone.pretrained = False  # every weight comes from the checkpoint
    model = instantiate(cfg.model)
    load_weights(model, ckpt)
    net = model.net.eval().float().to(memory_format=torch.contiguous_format)
    output = Path(cfg.output) if cfg.output else ckpt.with_suffix(SUFFIXES[cfg.format])
    output.parent.mkdir(parents=True, exist_ok=True)
    # a crash never leaves a half-written model; the prefix keeps the suffix that names the format
    tmp = output.with_name(f".tmp-{output.name}")
    example = torch.randn(1, 3, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        if cfg.format == "onnx":
            export_onnx(net, example, tmp, cfg.opset)
        else:
            export_torchscript(net, example, tmp)
    if cfg.check:
        difference = max_abs_difference(net, tmp, cfg.image_size)
        print(f"parity: max |exported - pytorch| = {difference:.2e} over 3 images (atol {cfg.atol})")
        if difference > cfg.atol:
            tmp.unlink()
            raise UserFacingError(f"the {cfg.format} export differs from PyTorch by {difference:.2e} "
                                  f"(> atol={cfg.atol}); nothing was written")
    tmp.replace(output)
    print(f"{cfg.format} model written to {output}")
    return output


@hydra.main(version_base="1.3", config_path="../../configs", config_name="export.yaml")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    main()
