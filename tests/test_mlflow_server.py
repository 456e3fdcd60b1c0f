"""A campaign tracked by a real `mlflow server` (HTTP tracking URI): runs, registry and artifacts go
through the server, as they do for a team sharing one."""

import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import tiny_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def mlflow_backend(request, tmp_path) -> str:
    """The server's own backend store: SQLite, or a fresh database on the CI's PostgreSQL."""
    from tests.conftest import POSTGRES_URL, _postgres_database

    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'server.db'}"
    if not POSTGRES_URL:
        pytest.skip("no PostgreSQL server: set SPEECHALIGN_TEST_POSTGRES_URL (.ci/run starts one)")
    return _postgres_database()


@pytest.fixture
def mlflow_server(tmp_path, mlflow_backend):
    port = free_port()
    log = open(tmp_path / "mlflow-server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", mlflow_backend,
                             "--artifacts-destination", str(tmp_path / "server-artifacts"), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("mlflow server did not start: " + (tmp_path / "mlflow-server.log").read_text()[-2000:])
        time.sleep(1)
    yield url
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_round_tracked_by_a_real_mlflow_server(tmp_path, store_url, espeak_corpus, mlflow_server):
    from speechalign.flows.bootstrap import bootstrap
    from speechalign.flows.campaign import alignment_campaign
    from speechalign.preflight import prepare
    from speechalign.tasks.stage import open_store

    cfg = tiny_config(tmp_path / "work", store_url, espeak_corpus, f'mlflow.tracking_uri="{mlflow_server}"')
    prepare(cfg)  # reaches the server's /health
    bootstrap(str(cfg.workdir))
    [result] = alignment_campaign(str(cfg.workdir), rounds=1)
    assert result["version"] == "1"

    client = MlflowClient(mlflow_server)
    [version] = client.search_model_versions(f"name='{cfg.registered_model}'")
    assert version.tags["speechalign.round"] == "1" and version.status == "READY"
    store = open_store(cfg)
    rnd = store.rounds(store.campaign(cfg.campaign.name).id)[-1]
    assert version.run_id == rnd.mlflow_run_id
    run = client.get_run(rnd.mlflow_run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # uploads go through the server
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"adapter", "audio"}
    assert list((tmp_path / "server-artifacts").rglob("3_round_1.wav"))  # in the server's store
    assert not (cfg.workdir / "mlartifacts").exists()  # nothing written beside the client
