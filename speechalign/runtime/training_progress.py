"""A Trainer's optimizer steps as a progress bar and a Prefect progress artifact (speechalign/runtime/progress.py), with
its figures beside the bar and in the log every few steps (in place of the Trainer's line per step)."""

from __future__ import annotations

import logging

from transformers import TrainerCallback

from speechalign.runtime.faults import fault_point
from speechalign.runtime.progress import Progress

log = logging.getLogger(__name__)


class TrainingProgress(TrainerCallback):
    """A Trainer's optimizer steps as a `Progress`, with its figures beside the bar and in the log every
    `every` steps (in place of the Trainer's own line per step)."""

    def __init__(self, what: str, keys: tuple[str, ...], every: int = 10):
        self.what, self.keys, self.every = what, keys, every
        self.progress: Progress | None = None

    def _due(self, state) -> bool:
        return state.global_step % self.every == 0 or state.global_step == state.max_steps

    def on_train_begin(self, args, state, control, **kwargs):
        self.progress = Progress(f"{self.what}: optimizer steps done", total=state.max_steps, unit="step")

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1:
            fault_point(self.what, "mid")  # the resume tests kill training here
        if self.progress:
            self.progress.set(state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or self.keys[0] not in logs:
            return
        figures = {k: logs[k] for k in self.keys if k in logs}
        if self.progress:
            self.progress.bar.set_postfix({k: f"{v:.4g}" for k, v in figures.items()}, refresh=False)
        if self._due(state):
            log.info("%s: step %d/%d %s", self.what, state.global_step, state.max_steps,
                     " ".join(f"{k} {v:.4g}" for k, v in figures.items()))

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress:
            self.progress.close()
