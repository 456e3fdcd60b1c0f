"""What every stage shares: the store it writes to, where its files go, and the bookkeeping that
makes a round resumable (a completed stage is skipped when the round is run again)."""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import time
import traceback
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from speechalign.config import Config
from speechalign.preference_store.store import PreferenceStore

log = logging.getLogger("speechalign")


@lru_cache(maxsize=8)
def _store(url: str) -> PreferenceStore:
    return PreferenceStore(url)


def open_store(cfg: Config) -> PreferenceStore:
    return _store(cfg.store_url)


def round_dir(cfg: Config, number: int) -> Path:
    path = cfg.campaign_dir() / f"round-{number:03d}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def derive_seed(*parts: object) -> int:
    """A stable 31-bit seed from any values (Python's hash() changes between processes)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


FAULT_ENV = "SPEECHALIGN_FAULT"


def fault_point(stage: str, point: str) -> None:
    """Kill this process here when SPEECHALIGN_FAULT=<stage>:<point> (start | mid | end).

    How the resume tests (and a sceptical user) kill a round at each stage with SIGKILL, the way
    an OOM killer or a lost machine would: no exception handler, no cleanup, nothing recorded.
    """
    if os.environ.get(FAULT_ENV) == f"{stage}:{point}":
        log.warning("%s=%s: killing this process (SIGKILL)", FAULT_ENV, os.environ[FAULT_ENV])
        os.kill(os.getpid(), signal.SIGKILL)


def run_stage(cfg: Config, round_id: int, stage: str, work: Callable[..., dict], *args) -> dict:
    """Run `work(cfg, round_id, *args)` once per round: skip it if the store says it completed,
    record its timing, result and failure."""
    store = open_store(cfg)
    done = store.stages(round_id).get(stage)
    if done is not None and done.status == "completed":
        log.info("round %s: %s already completed, skipping", round_id, stage)
        return done.result or {}
    store.stage_started(round_id, stage)
    fault_point(stage, "start")
    started = time.monotonic()
    try:
        result = work(cfg, round_id, *args)
    except BaseException as exc:
        store.stage_failed(round_id, stage, f"{exc.__class__.__name__}: {exc}\n{traceback.format_exc(limit=5)}")
        raise
    fault_point(stage, "end")  # the work is done and written, but not yet recorded as completed
    store.stage_completed(round_id, stage, result, time.monotonic() - started)
    return result

