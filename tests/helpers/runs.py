"""End-to-end runs of the commands (train.py, python -m retrieval.pipelines.X) as
subprocesses, and the overrides that make them seconds long."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers.configs import SMALL_VGG_MODEL

REPO_ROOT = Path(__file__).resolve().parents[2]


def start_script(
    script: str, *overrides: str, cwd: Path, env: dict[str, str] | None = None, **popen
) -> subprocess.Popen:
    """Start ``python <repo>/<script> <overrides>`` in ``cwd`` (``script`` ``-m``: the first
    override names a module), output captured as text; W&B offline, its caches in ``cwd``
    (offline artifacts are staged under the W&B data dir, which must not be the user's)."""
    wandb_env = {
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(cwd),
        "WANDB_CACHE_DIR": str(cwd / ".wandb-cache"),
        "WANDB_DATA_DIR": str(cwd / ".wandb-data"),
        "WANDB_CONFIG_DIR": str(cwd / ".wandb-config"),
    }
    command = [sys.executable, "-m"] if script == "-m" else [sys.executable, str(REPO_ROOT / script)]
    return subprocess.Popen(
        [*command, *overrides],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **wandb_env, **(env or {})},
        **popen,
    )


def finish(process: subprocess.Popen, timeout: int = 600) -> subprocess.CompletedProcess:
    """Wait for a started script; a timeout kills it (and raises, as ``subprocess.run`` does)."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def run_script(
    script: str, *overrides: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """Run a script to its end (see :func:`start_script`)."""
    return finish(start_script(script, *overrides, cwd=cwd, env=env), timeout)


# dataset=oxford5k composes the reference recipe (flatten, SSIM negatives, augmentations, 4
# accumulated steps); the small test runs pin the plain options, one override each
PLAIN_TRAINING = ["pooling=gem", "mining=random", "augmentation=none", "trainer.accumulate_grad_batches=1"]


def tiny_run(data: Path, logs: Path, *extra: str) -> list[str]:
    """Overrides for a seconds-long training run: 32 px, resnet18, one epoch."""
    return [
        f"paths.data_dir={data}",
        f"paths.log_dir={logs}",
        "dataset=oxford5k",
        *PLAIN_TRAINING,
        "dataset.image_size=32",
        "dataset.num_workers=0",
        "model.net.backbone.name=resnet18",
        "model.net.backbone.weights=none",
        "trainer.max_epochs=1",
        *extra,
    ]


def small_run(data: Path, tmp: Path) -> list[str]:
    """Overrides for a small run at 64 px (resnet18), logging under ``tmp/logs``; epochs as
    the test needs them."""
    return [f"paths.data_dir={data}", f"paths.log_dir={tmp / 'logs'}", *SMALL_VGG_MODEL, *PLAIN_TRAINING]


def run_ok(script: str, *overrides: str, cwd: Path, **options) -> subprocess.CompletedProcess:
    """:func:`run_script` that must succeed; a failure shows the end of its stderr."""
    result = run_script(script, *overrides, cwd=cwd, **options)
    assert result.returncode == 0, result.stderr[-3000:]
    return result
