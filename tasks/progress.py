"""Progress of the long stages: in the log, and as a Prefect progress artifact in the UI.

Training logs its figures every few steps instead of a printed line per step. Generation, decoding,
scoring (one artifact per metric) and training also keep a progress artifact (percent done) on their
Prefect task run, when they run inside one; called outside Prefect (a notebook, a benchmark) they only log.
"""

from __future__ import annotations

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import TaskRunContext
from transformers import TrainerCallback

from speechalign.tasks.stage import fault_point, log


class StageProgress:
    """A Prefect progress artifact for one stage of one round, updated as work is done."""

    def __init__(self, stage: str, description: str):
        self.artifact_id = None
        if TaskRunContext.get() is not None:
            try:
                self.artifact_id = create_progress_artifact(0.0, description=description)
            except Exception as exc:  # noqa: BLE001 - progress display must never fail a stage
                log.warning("%s: no progress artifact (%s)", stage, exc)

    def update(self, done: int, total: int) -> None:
        if self.artifact_id is not None and total:
            try:
                update_progress_artifact(self.artifact_id, 100.0 * done / total)
            except Exception:  # noqa: BLE001
                self.artifact_id = None


class ProgressLog(TrainerCallback):
    """Log a trainer's figures every `every` steps (in place of one printed line per step)."""

    def __init__(self, what: str, keys: tuple[str, ...], every: int = 10):
        self.what, self.keys, self.every = what, keys, every
        self.progress: StageProgress | None = None

    def _due(self, state) -> bool:
        return state.global_step % self.every == 0 or state.global_step == state.max_steps

    def on_train_begin(self, args, state, control, **kwargs):
        self.progress = StageProgress(self.what, f"{self.what}: optimizer steps done")

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1:
            fault_point(self.what, "mid")  # the resume tests kill training here
        if self.progress and self._due(state):
            self.progress.update(state.global_step, state.max_steps)

    def on_log(self, args, state, control, logs=None, **kwargs):
        step = state.global_step
        if logs and self.keys[0] in logs and self._due(state):
            figures = " ".join(f"{k} {logs[k]:.4g}" for k in self.keys if k in logs)
            log.info("%s: step %d/%d %s", self.what, step, state.max_steps, figures)
