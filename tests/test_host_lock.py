"""The host training lock: a second holder waits until the first lets go, or dies."""

import os
import signal
import subprocess
import sys
import threading
import time

from speechalign.runtime.host_lock import HostTrainingLock

HOLD = """
import sys, time
from pathlib import Path
from speechalign.runtime.host_lock import HostTrainingLock
with HostTrainingLock("holder", device="cuda0", directory=Path(sys.argv[1])):
    print("holding", flush=True)
    time.sleep(600)
"""


def test_a_second_training_waits_for_the_first_and_takes_over_when_it_is_killed(tmp_path, caplog):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        acquired = threading.Event()
        result = {}

        def second():
            with HostTrainingLock("second", device="cuda0", directory=tmp_path) as lock:
                result["waited"] = lock.waited_s
                acquired.set()

        thread = threading.Thread(target=second)
        thread.start()
        assert not acquired.wait(2.0)  # the first still trains on cuda0
        with HostTrainingLock("other gpu", device="cuda1", directory=tmp_path) as other:
            assert other.waited_s < 1  # another device's lock is free
        assert f"pid\": {holder.pid}" in (tmp_path / "train-cuda0.lock").read_text()
        os.kill(holder.pid, signal.SIGKILL)  # killed mid-training: the kernel releases its lock
        assert acquired.wait(30)
        thread.join()
        assert result["waited"] >= 2.0
        assert any("held by" in r.message and str(holder.pid) in r.message for r in caplog.records)
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_file_names_its_holder_only_while_held(tmp_path):
    with HostTrainingLock("campaign demo round 1", device="cpu", directory=tmp_path) as lock:
        assert "campaign demo round 1" in lock.holder()
    assert (tmp_path / "train-cpu.lock").read_text() == ""
    start = time.monotonic()
    with HostTrainingLock("again", device="cpu", directory=tmp_path) as lock:
        assert lock.waited_s < 1 and time.monotonic() - start < 1
