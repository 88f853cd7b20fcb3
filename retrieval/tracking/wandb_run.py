"""The W&B logger of a run, named after its Hydra job, and the end of its W&B run.

Offline by default: nothing leaves the machine and no run waits on the network; set
``WANDB_MODE=online`` (or ``logger.wandb.mode=online``) to stream, or ``wandb sync`` later.
Hydra's basic launcher runs every multirun job in one process, where a W&B run left open
would swallow the next job's metrics: ``finishing_wandb_run`` closes it after each job.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger

log = logging.getLogger(__name__)

MAX_TAG = 64  # W&B rejects longer tags


@dataclass(frozen=True)
class JobIdentity:
    """How a Hydra job shows up in W&B."""

    suffix: str = ""  # appended to the run name: the job's number in a sweep and overrides
    group: str | None = None  # one group per multirun sweep
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)  # Hydra choices and overrides


def hydra_job_identity() -> JobIdentity:
    """The identity of the running Hydra job (empty outside a Hydra app)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    if not HydraConfig.initialized():
        return JobIdentity()
    hc = HydraConfig.get()
    overrides = hc.job.override_dirname  # excluded keys: configs/hydra/default.yaml
    config = {
        "hydra": {
            "choices": OmegaConf.to_container(hc.runtime.choices),
            "overrides": list(hc.overrides.task),
            "output_dir": hc.runtime.output_dir,
        }
    }
    if hc.mode != RunMode.MULTIRUN:
        return JobIdentity(f"[{overrides}]" if overrides else "", None, [], config)
    sweep = Path(hc.sweep.dir).name
    config["hydra"].update(job_num=hc.job.num, sweep_dir=hc.sweep.dir)
    # the swept values are in the name and config; as tags they would drown the user's tags
    return JobIdentity(f"#{hc.job.num}[{overrides}]", f"{hc.job.name}-{sweep}", ["multirun"], config)


def create_wandb_logger(
    project: str = "retrieval",
    save_dir: str = ".",
    mode: str = "offline",
    name: str | None = None,
    group: str | None = None,
    tags: Sequence[str] = (),
    log_model: bool | str = False,
    job_type: str | None = None,
    **kwargs: Any,
) -> WandbLogger:
    """A Lightning WandbLogger whose name, group, tags and extra config come from Hydra.

    ``mode`` is passed to ``wandb.init`` rather than Lightning's ``offline`` flag: that flag
    rewrites ``WANDB_MODE`` for the whole process and refuses ``log_model``, while an
    offline W&B run stores checkpoint artifacts fine and uploads them on ``wandb sync``.
    """
    job = hydra_job_identity()
    all_tags = list(dict.fromkeys(str(t)[:MAX_TAG] for t in [*tags, *job.tags]))
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(
        project=project,
        save_dir=save_dir,
        name=f"{name or 'run'}{job.suffix}"[:128],
        group=group or job.group,
        tags=all_tags,
        log_model=log_model,
        mode="offline" if mode == "dryrun" else mode,
        job_type=job_type,
        config=job.config,
        **kwargs,
    )


def finish_wandb_run(exit_code: int = 0) -> None:
    """Close the process's W&B run, if one is open (no-op when wandb was never imported)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=exit_code)


@contextlib.contextmanager
def finishing_wandb_run() -> Iterator[None]:
    """Every job ends its own W&B run, marked failed when the job raised."""
    try:
        yield
    except BaseException:
        finish_wandb_run(exit_code=1)
        raise
    finish_wandb_run(exit_code=0)
