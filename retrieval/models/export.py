"""Export an embedding network to ONNX or TorchScript and check the file against PyTorch
(the command: :mod:`retrieval.pipelines.export`).

The exported graph maps ``images (B, 3, H, W)``, normalised with the backbone's own
mean/std (timm's pretrained config: 0.5/0.5 for ``tf_*`` models, ImageNet's for
torchvision-style ones), to L2-normalised ``embeddings (B, D)``; batch size and image size
stay dynamic. The normalisation and the trained image size are written beside the model
(``<model>.preprocessing.json``) so a deployment cannot guess them wrong. PCA whitening is
not part of it: it lives in the database artifact.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from retrieval.models.input_normalization import InputNormalization
from retrieval.utils.atomic import write_atomic
from retrieval.utils.errors import UserFacingError

SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}


def preprocessing_path(model_path: Path) -> Path:
    return model_path.with_name(f"{model_path.name}.preprocessing.json")


def write_preprocessing(model_path: Path, normalization: InputNormalization, image_size: int) -> Path:
    """What an input must go through before the exported graph: resize, scale to [0, 1],
    normalise; JSON beside the model file."""
    path = preprocessing_path(model_path)
    write_atomic(
        path,
        json.dumps(
            {"image_size": image_size, "scale": "divide by 255", **normalization.to_dict()}, indent=1
        ).encode(),
    )
    return path


def export_onnx(net: nn.Module, example: torch.Tensor, path: Path, opset: int = 17) -> None:
    # The TorchScript-based exporter: it needs no extra package (the dynamo exporter wants
    # onnxscript) and handles every pooling here with dynamic height and width.
    torch.onnx.export(
        net,
        (example,),
        str(path),
        input_names=["images"],
        output_names=["embeddings"],
        dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}, "embeddings": {0: "batch"}},
        opset_version=opset,
        dynamo=False,
    )


def export_torchscript(net: nn.Module, example: torch.Tensor, path: Path) -> None:
    torch.jit.save(torch.jit.trace(net, example), str(path))


def run_exported(path: Path, images: torch.Tensor) -> np.ndarray:
    """Embeddings from the exported file, run the way a deployment would run it."""
    if path.suffix == ".onnx":
        try:
            import onnxruntime
        except ImportError:
            raise UserFacingError(
                "checking an ONNX export needs onnxruntime: pip install 'retrieval[export]' (or check=false)"
            ) from None
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
