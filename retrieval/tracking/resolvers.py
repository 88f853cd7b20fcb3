"""OmegaConf resolvers the configs use; registered by the entry scripts."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf


def _mkdir(path: str) -> str:
    """``${mkdir:DIR}``: DIR, created if missing (SQLite will not create an Optuna storage's folder)."""
    Path(path).mkdir(parents=True, exist_ok=True)
    return path


def _launch_dir() -> str:
    """``${launch_dir:}``: the folder the command was started from. Not ``${hydra:runtime.cwd}``:
    Hydra sets that only inside a job, and a multirun resolves ``hydra.sweep.dir`` (which
    sits under ``paths.log_dir``) before any job exists. Jobs never change directory
    (``hydra.job.chdir=false``), so both name the same folder."""
    return os.getcwd()


def register_resolvers() -> None:
    """Idempotent: entry scripts call it at import, and submitit jobs (which unpickle the
    task function without running the script's module code) once more inside it."""
    if not OmegaConf.has_resolver("mkdir"):
        OmegaConf.register_new_resolver("mkdir", _mkdir)
    if not OmegaConf.has_resolver("launch_dir"):
        OmegaConf.register_new_resolver("launch_dir", _launch_dir)
