"""What one SSIM mining run found saved and computed, and the Ctrl-C that stops it."""

from __future__ import annotations

from dataclasses import dataclass


class MiningInterrupted(KeyboardInterrupt):
    """Ctrl-C while mining; the message says what is saved (entry points print it alone)."""


@dataclass
class MiningReport:
    """What one call of :func:`mine_ssim_negatives` found saved and what it computed."""

    queries: int  # asked for
    saved_before: int  # finished by an earlier run, read back
    candidates: int = 0  # images each query is scored against
    mined: int = 0  # finished and saved by this run
    pairs_scored: int = 0  # (query, image) scores computed by this run
    pairs_resumed: int = 0  # read back from the saved blocks of an unfinished pass
    pass_in_progress: tuple[int, int] | None = None  # (queries, candidates saved) of the open pass

    def summary(self) -> str:
        return (
            f"SSIM mining: mined {self.mined} of {self.queries} queries in this run "
            f"({self.saved_before} saved by an earlier run); {self.pairs_scored} query-image pairs "
            f"scored, {self.pairs_resumed} resumed from saved blocks"
        )

    def interrupted(self) -> str:
        saved = self.saved_before + self.mined
        partial = ""
        if self.pass_in_progress is not None and self.pass_in_progress[1] > 0:
            queries, done = self.pass_in_progress
            partial = f" (and {done} of {self.candidates} images scored for {queries} more)"
        return (
            f"interrupted: {saved} of {self.queries} queries mined are saved{partial}; "
            f"run the same command again to resume"
        )
