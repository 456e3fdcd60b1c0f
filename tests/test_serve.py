"""`speechalign serve` against a real Prefect server: the deployment appears, a run triggered by
hand (as `prefect deployment run` does) completes a round in the store and in MLflow."""

import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from speechalign.preference_store.store import open_store
from tests.conftest import light_scoring

CLI = "from speechalign.cli import main; raise SystemExit(main())"


def wait_for_deployment(client, name: str, proc: subprocess.Popen, seconds: float = 120):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"speechalign serve exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            return client.read_deployment_by_name(name)
        except Exception:  # noqa: BLE001 - not registered yet
            time.sleep(1)
    pytest.fail(f"deployment {name} did not appear in {seconds} s")


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_served_round_deployment_runs_when_triggered_by_hand(bootstrapped):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    # about serving and triggering, not the metrics; a campaign name of its own, so its deployment is not one that
    # another test of this process deployed to the same server (test_prefect_yaml_deploys_... deploys "demo")
    cfg = light_scoring(bootstrapped, 'campaign.name="served"')
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    proc = subprocess.Popen([sys.executable, "-c", CLI, "serve", "--workdir", str(cfg.workdir), "--cron", "0 3 * * *"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with get_client(sync_client=True) as client:
            deployment = wait_for_deployment(client, f"alignment-round/{cfg.campaign.name}", proc)
        assert deployment.schedules[0].schedule.cron == "0 3 * * *"
        assert deployment.parameters["workdir"] == str(cfg.workdir)
        assert deployment.global_concurrency_limit.limit == 1
        assert deployment.concurrency_options.collision_strategy == "ENQUEUE"  # a second trigger queues
        run = run_deployment(f"alignment-round/{cfg.campaign.name}", timeout=600)
        assert run.state.is_completed(), run.state.message
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    store = open_store(cfg.store_url)
    rounds = store.rounds(store.campaign(cfg.campaign.name).id)
    assert [(r.number, r.status) for r in rounds] == [(0, "completed"), (1, "completed")]
    versions = MlflowClient(cfg.tracking_uri).search_model_versions(f"name='{cfg.registered_model}'")
    assert [v.tags["speechalign.round"] for v in versions] == ["1"]


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_serve_without_a_prefect_server_says_how_to_start_one(bootstrapped, capsys):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from speechalign.cli import main

    with temporary_settings(updates={PREFECT_API_URL: None}):
        assert main(["serve", "--workdir", str(bootstrapped.workdir)]) == 2
    assert "prefect server start" in capsys.readouterr().err


def test_prefect_yaml_deploys_the_round_flow_to_a_work_pool(tmp_path):
    """The repository's prefect.yaml, deployed with the real `prefect deploy` against the test server."""
    from pathlib import Path

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    repo = Path(__file__).resolve().parents[1]
    prefect = [sys.executable, "-m", "prefect"]
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "SPEECHALIGN_REPO": str(repo),
           "SPEECHALIGN_WORKDIR": str(tmp_path / "work")}
    subprocess.run([*prefect, "work-pool", "create", "speechalign", "--type", "process", "--overwrite"],
                   env=env, check=True, capture_output=True)
    done = subprocess.run([*prefect, "--no-prompt", "deploy", "--all"], cwd=repo, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("alignment-round/demo")
    assert deployment.entrypoint == "flows/round.py:alignment_round"
    assert deployment.parameters == {"workdir": str(tmp_path / "work")}
    assert deployment.work_pool_name == "speechalign" and deployment.schedules[0].schedule.cron == "0 3 * * *"
    assert deployment.global_concurrency_limit.limit == 1
    assert deployment.concurrency_options.collision_strategy == "ENQUEUE"
