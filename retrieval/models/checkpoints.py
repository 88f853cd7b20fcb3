"""Checkpoint files: their identity (sha256), reading them, and loading their weights into a
model, with one readable paragraph for every way a file can be the wrong one."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parameter import UninitializedParameter

from retrieval.utils.errors import UserFacingError

_WHERE = "train.py writes them to logs/train/runs/<run>/checkpoints/ (last.ckpt, epoch_NNN.ckpt)"


class CheckpointError(UserFacingError):
    """A checkpoint file is missing, unreadable, or not one of this model."""


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_checkpoint(ckpt_path: str | Path, weights_only: bool = True) -> dict[str, Any]:
    """The checkpoint's dict (tensors on the CPU); a :class:`CheckpointError` naming the file
    and the fix when it does not exist, is a folder, is empty or cut short, is not a torch
    file, or holds no ``state_dict``."""
    path = Path(ckpt_path).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist (ckpt_path=FILE; {_WHERE})")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is a folder, not a file (ckpt_path=FILE; {_WHERE})")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): an interrupted copy? ({_WHERE})")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as error:  # noqa: BLE001 - torch.load of a text or cut-short file raises
        # anything (UnpicklingError, IndexError, RuntimeError, EOFError, ...): all mean unreadable
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({str(error).splitlines()[0][:200]}): it is truncated "
            f"or not a PyTorch checkpoint. Use a .ckpt file as written ({_WHERE})"
        ) from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(
            f"checkpoint {path} holds no 'state_dict': it is a torch file, but not a Lightning "
            f"checkpoint of this project ({_WHERE})"
        )
    return checkpoint


def mismatch(model: nn.Module, state_dict: dict[str, torch.Tensor], shown: int = 3) -> str | None:
    """How ``state_dict`` does not fit ``model`` (missing, unexpected, other shapes), or None."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict
        and hasattr(state_dict[k], "shape")
        # a lazy parameter (head=linear, per-channel GeM, a classification loss's class
        # weights) takes its shape from the file when loaded: nothing to compare yet
        and not isinstance(v, UninitializedParameter)
        and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    parts = []
    for label, items in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("other shapes (file vs model)", shapes),
    ):
        if items:
            more = f" and {len(items) - shown} more" if len(items) > shown else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:shown])}{more}")
    return "; ".join(parts) or None


def load_weights(model: nn.Module, ckpt_path: str | Path, network_only: bool = False) -> None:
    """Load the checkpoint's weights into ``model``, or a :class:`CheckpointError` saying how
    the file and the configured model differ.

    ``network_only``: load the embedding network (``model.net``, the checkpoint's ``net.*``
    keys) and nothing of the training objective. What embeds images (evaluation, databases,
    export) does not need a classification loss's class weights, so an ArcFace checkpoint
    loads whatever ``loss=`` the command composes."""
    state_dict = read_checkpoint(ckpt_path)["state_dict"]
    target: nn.Module = model
    if network_only:
        target = model.net  # type: ignore[assignment]
        state_dict = {k.removeprefix("net."): v for k, v in state_dict.items() if k.startswith("net.")}
    if (difference := mismatch(target, state_dict)) is not None:
        settings = "model.net.backbone.name=..., pooling=..., head=..." + (
            "" if network_only else ", loss=..."
        )
        raise CheckpointError(
            f"checkpoint {ckpt_path} was trained with another model than the configured one "
            f"({difference}). Pass the model overrides it was trained with (its run's "
            f".hydra/config.yaml lists them: {settings})"
        )
    target.load_state_dict(state_dict)
