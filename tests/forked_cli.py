"""The speechalign CLI in a child process forked from a warm one, for the tests that kill a command.

A fresh `python -c "...main()"` spends about 18 s importing torch, transformers, TRL, PEFT, MLflow and Prefect
before it does anything. multiprocessing's forkserver imports this module (and so all of them) once per test
process; each command then runs in a fork of it, a process of its own that can be SIGKILLed like any other,
which calls the same `speechalign.cli.main` with its own environment. Its output goes to a log file.
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import mlflow  # noqa: F401 - imported here once, so every forked command has it
import onnxruntime  # noqa: F401
import peft  # noqa: F401
import torch  # noqa: F401
import transformers  # noqa: F401
import trl  # noqa: F401

import speechalign.cli  # noqa: F401
import speechalign.flows.round  # noqa: F401 - and prefect

_context = None


def _forkserver():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload([__name__])
    return _context


def _main(argv: list[str], env: dict[str, str], log: str) -> None:
    with open(log, "ab", buffering=0) as out:
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
    os.environ.update(env)
    from prefect.settings import PREFECT_API_URL, temporary_settings  # noqa: PLC0415

    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):  # prefect read its settings when imported
        raise SystemExit(speechalign.cli.main(argv))


def run_cli(argv: list[str], env: dict[str, str], log: Path, timeout: float = 600) -> int:
    """`speechalign <argv>` in a forked child with `env` added to its environment; its exit code (-9: SIGKILL)."""
    child = _forkserver().Process(target=_main, args=(argv, env, str(log)))
    child.start()
    child.join(timeout)
    if child.is_alive():
        child.kill()
        child.join()
        raise TimeoutError(f"speechalign {' '.join(argv)} ran over {timeout} s; its output: {log}")
    return child.exitcode
