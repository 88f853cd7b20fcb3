"""Export a trained embedding network to ONNX or TorchScript, checked against PyTorch.

    retrieval-export ckpt_path=CKPT format=onnx|torchscript [output=FILE]

The exported graph maps ``images (B, 3, H, W)``, normalised with the backbone's own mean/std (also written to
``<model>.preprocessing.json``), to
L2-normalised ``embeddings (B, D)``; batch size and image size stay dynamic. PCA whitening
is not part of it: it lives in the database artifact.
"""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from retrieval.models.checkpoints import load_weights
from retrieval.models.export import (
    SUFFIXES,
    export_onnx,
    export_torchscript,
    max_abs_difference,
    write_preprocessing,
)
from retrieval.pipelines.cli import hydra_command
from retrieval.utils.errors import UserFacingError


def export(cfg: DictConfig) -> Path:
    if cfg.format not in SUFFIXES:
        raise UserFacingError(f"format={cfg.format} is not one of {sorted(SUFFIXES)}")
    ckpt = Path(cfg.ckpt_path).expanduser()
    cfg.model.net.backbone.weights = "none"  # every weight comes from the checkpoint
    model = instantiate(cfg.model)
    load_weights(model, ckpt, network_only=True)
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
            raise UserFacingError(
                f"the {cfg.format} export differs from PyTorch by {difference:.2e} "
                f"(> atol={cfg.atol}); nothing was written"
            )
    tmp.replace(output)
    sidecar = write_preprocessing(output, net.input_normalization, int(cfg.image_size))
    print(
        f"{cfg.format} model written to {output}; its input normalisation (mean "
        f"{list(net.input_normalization.mean)}, std {list(net.input_normalization.std)}) to {sidecar}"
    )
    return output


main = hydra_command("export", export)


if __name__ == "__main__":
    main()
