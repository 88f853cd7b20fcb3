"""A tiny dataset in the exact Oxford VGG layout (jpg/ + gt_files/), written for a test."""

from __future__ import annotations

from pathlib import Path

from PIL import Image


def write_vgg(root: Path, nested: bool = False, prefix: str = "oxc1_") -> Path:
    """Two landmarks x 2 queries, 4 views each, 3 distractors; Paris-style nesting optional."""
    images = root / "jpg"
    names = [f"{lm}_{i:06d}" for lm in ("arch", "tower") for i in range(4)] + [
        f"random_{i:06d}" for i in range(3)
    ]
    for n in names:
        folder = images / ("paris" if nested else "") / (n.split("_")[0] if nested else "")
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 30), color=(len(n) * 9 % 255, 80, 120)).save(folder / f"{n}.jpg")
    gt = root / "gt_files"
    gt.mkdir(parents=True)
    for lm in ("arch", "tower"):
        for k in (1, 2):
            (gt / f"{lm}_{k}_query.txt").write_text(f"{prefix}{lm}_{k - 1:06d} 1.5 2.0 30.0 25.5\n")
            (gt / f"{lm}_{k}_good.txt").write_text(f"{lm}_000000\n{lm}_000001\n")
            (gt / f"{lm}_{k}_ok.txt").write_text(f"{lm}_000002\n")
            (gt / f"{lm}_{k}_junk.txt").write_text(f"{lm}_000003\n\n")
    return root
