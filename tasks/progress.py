"""Training progress in the log, every few steps, instead of a printed line per step."""

from __future__ import annotations

from transformers import TrainerCallback

from speechalign.tasks.stage import fault_point, log


class ProgressLog(TrainerCallback):
    """Log a trainer's figures every `every` steps (in place of one printed line per step)."""

    def __init__(self, what: str, keys: tuple[str, ...], every: int = 10):
        self.what, self.keys, self.every = what, keys, every

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1:
            fault_point(self.what, "mid")  # the resume tests kill training here

    def on_log(self, args, state, control, logs=None, **kwargs):
        step = state.global_step
        if logs and self.keys[0] in logs and (step % self.every == 0 or step == state.max_steps):
            figures = " ".join(f"{k} {logs[k]:.4g}" for k in self.keys if k in logs)
            log.info("%s: step %d/%d %s", self.what, step, state.max_steps, figures)
