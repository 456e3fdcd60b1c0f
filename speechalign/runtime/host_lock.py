"""One run per accelerator on a host at a time, across processes and campaigns: training, and on a GPU every stage
that loads the policy (speechalign/runtime/stage.py).

The campaign's round lock (preference_store/round_lock.py) keeps two rounds of one campaign apart;
this keeps two campaigns (or a served deployment and a hand-run round) from training on the same
GPU at once. It is an advisory `flock` on a file per device in a host-wide directory: the kernel
drops it when the holder exits or is killed, so a dead run never blocks the next. A run that finds
the lock taken says who holds it and waits.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger("speechalign")
LOCK_DIR_ENV = "SPEECHALIGN_LOCK_DIR"


def lock_dir() -> Path:
    return Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "speechalign-locks")


def device_name() -> str:
    import torch  # noqa: PLC0415

    if torch.cuda.is_available():
        return f"cuda{torch.cuda.current_device()}"
    return "cpu"


class HostTrainingLock:
    def __init__(self, what: str, device: str | None = None, directory: Path | None = None):
        self.what, self.device = what, device or device_name()
        self.path = (directory or lock_dir()) / f"train-{self.device}.lock"
        self.fd: int | None = None
        self.waited_s = 0.0

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def __enter__(self) -> HostTrainingLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        started = time.monotonic()
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("%s: waiting for the %s training lock (%s), held by %s", self.what, self.device, self.path,
                        self.holder())
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        self.waited_s = time.monotonic() - started
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps({"what": self.what, "pid": os.getpid(), "host": socket.gethostname(),
                                       "since": datetime.now(UTC).isoformat()}).encode(), 0)
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
