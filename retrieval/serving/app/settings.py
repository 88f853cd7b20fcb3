"""The web app's settings: one flat, typed record built from ``configs/app.yaml``."""

from __future__ import annotations

from dataclasses import dataclass, fields

from omegaconf import DictConfig

GROUND_TRUTH_MODES = ("auto", "classic", "revisited", "none")


@dataclass(frozen=True)
class AppSettings:
    db: str
    host: str = "127.0.0.1"  # loopback by default: exposing the app is an explicit choice
    port: int = 8000
    k: int = 20  # results shown unless the request asks for another k
    max_k: int = 200
    max_upload_bytes: int = 10 * 1024 * 1024
    # decoded size limit: a small file can declare a huge canvas (a decompression bomb);
    # 40 MP decodes to 120 MB of RGB, more than any landmark photo needs
    max_pixels: int = 40_000_000
    thumbnail_size: int = 256
    model_threads: int = 1  # searches queue here, off the event loop
    query_crop: bool = True  # dataset queries cropped to their box, as in evaluation
    ground_truth: str = "auto"
    ckpt_path: str | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.ground_truth not in GROUND_TRUTH_MODES:
            raise ValueError(f"ground_truth must be one of {GROUND_TRUTH_MODES}, got {self.ground_truth!r}")
        for name in ("k", "max_k", "max_upload_bytes", "max_pixels", "thumbnail_size", "model_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def from_config(cls, cfg: DictConfig) -> AppSettings:
        """The entries of ``cfg`` that are settings (``upload.*`` flattened); others ignored."""
        flat = {k: v for k, v in cfg.items() if not isinstance(v, DictConfig)}
        flat.update(max_upload_bytes=cfg.upload.max_bytes, max_pixels=cfg.upload.max_pixels)
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in flat.items() if k in names})
