"""A stage of a round: a Prefect task whose result is a frozen dataclass (runtime/results.py), recorded in the store.

    @stage
    def train(ctx: RoundContext, pairs: Pairs) -> Trained: ...

    trained = train(ctx, pairs)       # in the round flow: a Prefect task run named "train"

`@stage` adds what every stage needs and nothing else:
- the store's bookkeeping: a stage recorded as completed is not run again; its stored result is loaded
  back into the same dataclass, so running a round again after a failure continues where it stopped;
  a failure is recorded with its traceback;
- Prefect's retries (`[prefect] task_retries`, `retry_delay_seconds`);
- fault points at its start and end (speechalign/runtime/faults.py), where the resume tests kill it;
- on a GPU, the device's host lock for the stages that load the policy, and the allocator's cache emptied after.
The stage's name is its result type's (`Trained.stage == "train"`). `train.fn(ctx, pairs)` calls the plain
function, without Prefect or the store.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import traceback
from collections.abc import Callable
from typing import Generic, TypeVar, get_type_hints

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from speechalign.runtime.context import RoundContext
from speechalign.runtime.faults import fault_point
from speechalign.runtime.host_lock import HostTrainingLock
from speechalign.runtime.results import dump, load

log = logging.getLogger(__name__)
R = TypeVar("R")


class Stage(Generic[R]):
    def __init__(self, fn: Callable[..., R]):
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.result_type = get_type_hints(fn)["return"]
        self.name: str = self.result_type.stage

        def run(ctx: RoundContext, *args, **kwargs) -> R:
            return self._run(ctx, *args, **kwargs)

        run.__name__ = run.__qualname__ = self.name
        self.task = task(run, name=self.name, task_run_name=self.name, cache_policy=NO_CACHE)

    def __call__(self, ctx: RoundContext, *args, **kwargs) -> R:
        p = ctx.cfg.prefect
        return self.task.with_options(retries=p.task_retries, retry_delay_seconds=p.retry_delay_seconds)(
            ctx, *args, **kwargs)

    def _run(self, ctx: RoundContext, *args, **kwargs) -> R:
        store, round_id = ctx.store, ctx.round.id
        done = store.stages(round_id).get(self.name)
        if done is not None and done.status == "completed":
            log.info("round %d: %s already completed, skipping", ctx.number, self.name)
            return load(self.result_type, done.result)
        store.stage_started(round_id, self.name)
        fault_point(self.name, "start")
        started = time.monotonic()
        try:
            with device_lock(ctx, self.name):
                result = self.fn(ctx, *args, **kwargs)
        except BaseException as exc:
            store.stage_failed(round_id, self.name,
                               f"{exc.__class__.__name__}: {exc}\n{traceback.format_exc(limit=5)}")
            raise
        finally:
            if torch.cuda.is_available():  # what the stage's models left in the allocator's cache
                torch.cuda.empty_cache()
        fault_point(self.name, "end")  # the work is done and written, but not yet recorded as completed
        store.stage_completed(round_id, self.name, dump(result), time.monotonic() - started)
        return result


POLICY_STAGES = ("generate", "score", "generate_heldout", "score_heldout", "evaluate")  # train takes its own


def device_lock(ctx: RoundContext, name: str):
    """On a GPU, the host's lock of the device for a stage that loads the policy on it: two campaigns never hold a
    policy on one GPU at once (training takes the lock of every GPU it uses itself)."""
    if name in POLICY_STAGES and torch.cuda.is_available():
        return HostTrainingLock(f"campaign {ctx.cfg.campaign.name} round {ctx.number} {name}")
    return contextlib.nullcontext()


def stage(fn: Callable[..., R]) -> Stage[R]:
    return Stage(fn)
