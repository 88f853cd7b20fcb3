"""OmegaConf resolvers the configs use; registered by the entry scripts."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf


def _mkdir(path: str) -> str:
    """``${mkdir:DIR}``: DIR, created if missing (SQLite will not create an Optuna storage's folder)."""
    Path(path).mkdir(parents=True, exist_ok=True)
    return path


def register_resolvers() -> None:
    """Idempotent: entry scripts call it at import, and submitit jobs (which unpickle the
    task function without running the script's module code) once more inside it."""
    if not OmegaConf.has_resolver("mkdir"):
        OmegaConf.register_new_resolver("mkdir", _mkdir)
