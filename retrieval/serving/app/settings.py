"""The web app's settings: one flat, typed record built from ``configs/app.yaml``.

Every value is checked here, before the database or the model is loaded and before a
port is bound, so a typo (``port=99999``, ``k`` over ``max_k``) is one sentence at start-up
instead of a server that starts and then refuses every request.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from omegaconf import DictConfig
from PIL import Image

GROUND_TRUTH_MODES = ("auto", "classic", "revisited", "none")
# the name on the command line of each setting that is not spelled as its field
CONFIG_KEYS = {
    "max_upload_bytes": "upload.max_bytes",
    "max_pixels": "upload.max_pixels",
    "kept_uploads": "upload.keep",
}
POSITIVE_INTS = (
    "port",
    "k",
    "max_k",
    "max_upload_bytes",
    "max_pixels",
    "thumbnail_size",
    "model_threads",
    "kept_uploads",
)


def pillow_hard_limit() -> int | None:
    """Pillow refuses to open a canvas over twice its MAX_IMAGE_PIXELS whatever the app
    allows; read when checked, as retrieval.data.image_io raises that process-wide limit."""
    return 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else None


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
    # uploads whose results pages stay reachable by their link (/upload/<id>), least
    # recently seen dropped first: a descriptor and a ~50 kB thumbnail each, in memory
    kept_uploads: int = 256
    thumbnail_size: int = 256
    model_threads: int = 1  # searches queue here, off the event loop
    query_crop: bool = True  # dataset queries cropped to their box, as in evaluation
    ground_truth: str = "auto"
    ckpt_path: str | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.ground_truth not in GROUND_TRUTH_MODES:
            raise ValueError(f"ground_truth must be one of {GROUND_TRUTH_MODES}, got {self.ground_truth!r}")
        for name in POSITIVE_INTS:
            value, key = getattr(self, name), CONFIG_KEYS.get(name, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{key} must be a whole number, got {value!r}")
            if value < 1:
                raise ValueError(f"{key} must be >= 1, got {value}")
        if self.port > 65535:
            raise ValueError(f"port must be between 1 and 65535, got {self.port}; e.g. port=8000")
        if self.k > self.max_k:
            raise ValueError(
                f"k={self.k} is over max_k={self.max_k}: every search that does not ask for "
                f"its own k would be refused; lower k or raise max_k"
            )
        if (hard_limit := pillow_hard_limit()) and self.max_pixels > hard_limit:
            raise ValueError(
                f"upload.max_pixels={self.max_pixels} is over {hard_limit}, the largest "
                f"canvas Pillow opens; the limit would not hold"
            )

    @classmethod
    def from_config(cls, cfg: DictConfig) -> AppSettings:
        """The entries of ``cfg`` that are settings (``upload.*`` flattened); others ignored."""
        flat = {k: v for k, v in cfg.items() if not isinstance(v, DictConfig)}
        flat.update(
            max_upload_bytes=cfg.upload.max_bytes,
            max_pixels=cfg.upload.max_pixels,
            kept_uploads=cfg.upload.get("keep", cls.kept_uploads),
        )
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in flat.items() if k in names})
