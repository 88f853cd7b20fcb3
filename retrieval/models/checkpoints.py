"""Checkpoint files: their identity (sha256) and loading their weights into a model."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from retrieval.utils.errors import UserFacingError


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def load_weights(model: nn.Module, ckpt_path: Path) -> None:
    if not ckpt_path.is_file():
        raise UserFacingError(f"checkpoint {ckpt_path} does not exist (ckpt_path=...)")
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        raise UserFacingError(
            f"checkpoint {ckpt_path} does not match the configured model "
            f"(pass the same model/pooling overrides it was trained with): "
            f"{str(error).splitlines()[0]}"
        ) from None
