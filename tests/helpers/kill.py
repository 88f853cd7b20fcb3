"""A callback that SIGKILLs its own training process, as a cluster pre-empts a job: no
exception, no ``finally``, no Lightning teardown. Tests add it to a real ``train.py`` run:
``+callbacks.kill._target_=tests.helpers.kill.KillAtStep +callbacks.kill.step=N``."""

from __future__ import annotations

import os
import signal

import lightning as L


class KillAtStep(L.Callback):
    """Dies at the start of the batch after ``step`` optimizer steps: Lightning runs the
    checkpoint callbacks last, so a checkpoint written after step ``step`` is on disk."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)
