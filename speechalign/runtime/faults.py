"""Kill this process at a named point of a stage, the way an OOM killer or a lost machine would.

SPEECHALIGN_FAULT=<stage>:<point> (start | mid | end) makes any command SIGKILL itself there: no
exception handler runs, nothing is recorded. The resume tests (and a sceptical user) use it to check
that running the round again writes nothing twice and loses nothing.
"""

from __future__ import annotations

import logging
import os
import signal

FAULT_ENV = "SPEECHALIGN_FAULT"
log = logging.getLogger(__name__)


def fault_point(stage: str, point: str) -> None:
    if os.environ.get(FAULT_ENV) == f"{stage}:{point}":
        log.warning("%s=%s, so this process is killed now (SIGKILL)", FAULT_ENV, os.environ[FAULT_ENV])
        os.kill(os.getpid(), signal.SIGKILL)
