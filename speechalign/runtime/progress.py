"""Progress of the long stages: a bar in the terminal (tqdm: counts, rate, ETA) and a Prefect progress
artifact on the stage's task run (percent done), updated together.

    with Progress("generate: 640 candidates of round 2", total=len(batches), unit="batch") as progress:
        for batch in batches:
            ...
            progress.advance()

Outside Prefect (a notebook, a benchmark) only the bar shows; without a terminal (CI, a served
deployment's log) the bar stays quiet and the artifact and the log carry the progress.
"""

from __future__ import annotations

import logging
import sys
import time

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import TaskRunContext
from tqdm.auto import tqdm

log = logging.getLogger(__name__)
ARTIFACT_EVERY_S = 2.0  # the Prefect API is told at most this often (and at the end)


class Progress:
    def __init__(self, description: str, total: int, unit: str = "it", done: int = 0):
        self.description, self.total, self.done = description, total, done
        self.bar = tqdm(total=total, initial=done, desc=description, unit=unit, dynamic_ncols=True, leave=True,
                        disable=None if sys.stderr.isatty() else True)
        self.artifact_id, self.updated = None, time.monotonic()
        if TaskRunContext.get() is not None:
            try:
                self.artifact_id = create_progress_artifact(self._percent(), description=description)
            except Exception as exc:  # noqa: BLE001 - progress display must never fail a stage
                log.warning("%s: no progress artifact (%s)", description, exc)

    def _percent(self) -> float:
        return 100.0 * self.done / self.total if self.total else 100.0

    def advance(self, n: int = 1, **figures) -> None:
        self.set(self.done + n, **figures)

    def set(self, done: int, **figures) -> None:
        self.bar.update(done - self.done)
        self.done = done
        if figures:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in figures.items()}, refresh=False)
        now = time.monotonic()
        if self.artifact_id is not None and (done >= self.total or now - self.updated >= ARTIFACT_EVERY_S):
            self.updated = now
            try:
                update_progress_artifact(self.artifact_id, self._percent())
            except Exception:  # noqa: BLE001
                self.artifact_id = None

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
