"""One round of a campaign at a time, across processes and hosts that share the store.

A run takes the campaign's row in `round_locks` before it touches the round and keeps its
heartbeat fresh from a background thread. A second trigger (CLI, a Prefect deployment run, a
schedule) finds the row held and is refused with who holds it. A holder that died (SIGKILL, a lost
machine) is taken over: on its own host when its process is gone, anywhere once its heartbeat is
older than `stale_after_s`.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from datetime import datetime

from sqlalchemy import delete, select, update

from speechalign.preference_store.schema import RoundLock, utcnow
from speechalign.preference_store.store import PreferenceStore, insert_ignore


class RoundBusy(RuntimeError):
    """Another run holds the campaign's round lock."""


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=utcnow().tzinfo)  # SQLite returns naive datetimes


def why_gone(lock: RoundLock, stale_after_s: float) -> str | None:
    """Why the holder no longer holds the lock in fact, or None while it does."""
    if lock.host == socket.gethostname() and not process_alive(lock.pid):
        return f"its process {lock.pid} on {lock.host} is gone"
    silent = (utcnow() - _aware(lock.heartbeat_at)).total_seconds()
    if silent > stale_after_s:
        return f"no heartbeat from pid {lock.pid} on {lock.host} for {silent:.0f} s (limit {stale_after_s:.0f} s)"
    return None


class CampaignRoundLock:
    """`with CampaignRoundLock(store, campaign_id, name):` runs the block as the campaign's only round."""

    def __init__(self, store: PreferenceStore, campaign_id: int, campaign_name: str,
                 stale_after_s: float = 300.0, heartbeat_s: float = 20.0):
        self.store, self.campaign_id, self.name = store, campaign_id, campaign_name
        self.stale_after_s, self.heartbeat_s = stale_after_s, heartbeat_s
        self.owner = uuid.uuid4().hex
        self.took_over: str | None = None  # why the previous holder's lock was taken, if it was
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        now = utcnow()
        mine = {"campaign_id": self.campaign_id, "owner": self.owner, "host": socket.gethostname(),
                "pid": os.getpid(), "acquired_at": now, "heartbeat_at": now}
        with self.store.session() as s:
            insert_ignore(s, RoundLock, [mine], ["campaign_id"])
        with self.store.session() as s:
            held = s.get(RoundLock, self.campaign_id)
            if held.owner == self.owner:
                return
            reason = why_gone(held, self.stale_after_s)
            if reason is None:
                raise RoundBusy(
                    f"campaign {self.name!r}: a round is already running (pid {held.pid} on {held.host}, "
                    f"since {_aware(held.acquired_at):%Y-%m-%d %H:%M:%S} UTC); this trigger is refused so that "
                    f"rounds never overlap. Wait for it (`speechalign report` shows its stages), or stop that "
                    f"process; a killed holder's lock is taken over after {self.stale_after_s:.0f} s without "
                    "heartbeat")
            taken = s.execute(update(RoundLock).where(RoundLock.campaign_id == self.campaign_id,
                                                      RoundLock.owner == held.owner).values(**mine))
            if taken.rowcount != 1:
                raise RoundBusy(f"campaign {self.name!r}: another run took the round lock just now; try again")
        self.took_over = reason

    def release(self) -> None:
        with self.store.session() as s:
            s.execute(delete(RoundLock).where(RoundLock.campaign_id == self.campaign_id,
                                              RoundLock.owner == self.owner))

    def holder(self) -> RoundLock | None:
        with self.store.session() as s:
            return s.scalar(select(RoundLock).where(RoundLock.campaign_id == self.campaign_id))

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                with self.store.session() as s:
                    s.execute(update(RoundLock).where(RoundLock.campaign_id == self.campaign_id,
                                                      RoundLock.owner == self.owner)
                              .values(heartbeat_at=utcnow()))
            except Exception:  # noqa: BLE001 - a missed beat is retried; the round must not die of it
                continue

    def __enter__(self) -> CampaignRoundLock:
        self.acquire()
        self._thread = threading.Thread(target=self._beat, name=f"round-lock-{self.name}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.release()

