"""The settings of SSIM mining (the ``mining.*`` keys of ``configs/mining/ssim.yaml``),
checked all at once before any image is read: one message names every unusable one."""

from __future__ import annotations

import re

from retrieval.mining.crop_spec import SMALL_POLICIES
from retrieval.mining.ssim_stats import WIN_SIZE
from retrieval.utils.errors import UserFacingError

_DEVICE = re.compile(r"auto|cpu|numpy|fused|cuda(:\d+)?|torch:\S+")


def check_settings(
    top_k: object = 500,
    crop_size: object = 500,
    grayscale: object = True,
    small_images: object = "upscale",
    device: object = "auto",
    num_workers: object = 2,
    queries_per_pass: object = 64,
    candidates_per_block: object = 128,
    show_progress: object = True,
) -> None:
    """Raise a :class:`UserFacingError` naming every unusable setting (the ``mining.*`` keys
    of ``configs/mining/ssim.yaml``), before any image is read."""
    problems = []

    def whole(name: str, value: object, minimum: int, meaning: str) -> None:
        if not (type(value) is int and value >= minimum):  # bool is not a count either
            problems.append(f"mining.{name}={value} must be a whole number of at least {minimum} ({meaning})")

    whole("top_k", top_k, 1, "the negatives kept per query; the reference keeps 500")
    if type(crop_size) is int and 0 < crop_size < WIN_SIZE:
        problems.append(
            f"mining.crop_size={crop_size} is smaller than SSIM's {WIN_SIZE}x{WIN_SIZE} window: the "
            f"minimum is {WIN_SIZE} pixels (the reference compares 500x500 centre crops)"
        )
    else:
        whole(
            "crop_size", crop_size, WIN_SIZE, "the side of the centre crop in pixels; the reference's is 500"
        )
    whole("num_workers", num_workers, 0, "worker processes; 0 or 1 score in this process")
    whole("queries_per_pass", queries_per_pass, 1, "queries scored in one pass over the images")
    whole("candidates_per_block", candidates_per_block, 1, "images scored between two saves of progress")
    for name, value in (("grayscale", grayscale), ("show_progress", show_progress)):
        if not isinstance(value, bool):
            problems.append(f"mining.{name}={value} must be true or false")
    if small_images not in SMALL_POLICIES:
        problems.append(f"mining.small_images={small_images} must be one of {', '.join(SMALL_POLICIES)}")
    if not (isinstance(device, str) and _DEVICE.fullmatch(device)):
        problems.append(
            f"mining.device={device} must be auto, cpu (fused kernel, else NumPy), fused, numpy, cuda, "
            "cuda:N or torch:<device>"
        )
    elif device.removeprefix("torch:").startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            problems.append(
                f"mining.device={device} asks for CUDA but none is available: use mining.device=auto or cpu"
            )
    if problems:
        raise UserFacingError(f"SSIM mining settings: {'; '.join(problems)}. Nothing was mined.")
