"""One round of a campaign at a time: a second trigger is refused while a live run holds the lock,
and the lock of a run that died (SIGKILL, or silent on another host) is taken over."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from sqlalchemy import update

from speechalign.preference_store.round_lock import CampaignRoundLock, RoundBusy
from speechalign.preference_store.schema import RoundLock, utcnow

pytestmark = pytest.mark.pure  # make test-fast

HOLDER = textwrap.dedent("""
    import sys, time
    from speechalign.preference_store.store import PreferenceStore
    from speechalign.preference_store.round_lock import CampaignRoundLock
    with CampaignRoundLock(PreferenceStore(sys.argv[1]), int(sys.argv[2]), "c", heartbeat_s=0.2):
        print("held", flush=True)
        time.sleep(600)
""")


@pytest.fixture
def campaign_id(store):
    return store.create_campaign("c", {}, "/nowhere").id


def test_a_live_holder_in_another_process_refuses_the_second_trigger_until_it_is_killed(store, campaign_id):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, store.url, str(campaign_id)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RoundBusy, match=rf"campaign 'c': a round is already running \(pid {holder.pid} on "):
            CampaignRoundLock(store, campaign_id, "c").acquire()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    lock = CampaignRoundLock(store, campaign_id, "c")
    with lock:  # the killed holder's row is still there; its process is gone, so it is taken over
        assert f"its process {holder.pid}" in lock.took_over
        assert lock.holder().owner == lock.owner and lock.holder().pid == os.getpid()
    assert lock.holder() is None  # released on exit


def test_a_holder_on_another_host_is_trusted_until_its_heartbeat_goes_stale(store, campaign_id):
    with store.session() as s:
        s.add(RoundLock(campaign_id=campaign_id, owner="x" * 32, host="gpu-node-7", pid=1,
                        acquired_at=utcnow(), heartbeat_at=utcnow()))
    with pytest.raises(RoundBusy, match="pid 1 on gpu-node-7"):
        CampaignRoundLock(store, campaign_id, "c", stale_after_s=60).acquire()
    with store.session() as s:
        s.execute(update(RoundLock).values(heartbeat_at=utcnow().replace(year=2020)))
    lock = CampaignRoundLock(store, campaign_id, "c", stale_after_s=60)
    lock.acquire()
    assert lock.took_over.startswith("no heartbeat from pid 1 on gpu-node-7")
    with pytest.raises(RoundBusy):  # and now this process holds it against the next one
        CampaignRoundLock(store, campaign_id, "c").acquire()
    lock.release()


def test_the_holder_keeps_its_heartbeat_fresh(store, campaign_id):
    import time

    with CampaignRoundLock(store, campaign_id, "c", heartbeat_s=0.1) as lock:
        first = lock.holder().heartbeat_at
        time.sleep(0.5)
        assert lock.holder().heartbeat_at > first
