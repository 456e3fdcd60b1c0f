"""A campaign tracked by a real `mlflow server` (HTTP tracking URI): runs, registry and artifacts go
through the server, as they do for a team sharing one."""

import sys

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import copy_bootstrap, database_url, light_scoring
from tests.servers import chromium, free_port, running_server


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def mlflow_backend(request, tmp_path) -> str:
    """The server's own backend store: SQLite, or a fresh database on the CI's PostgreSQL."""
    return database_url(request.param, tmp_path / "server.db")


@pytest.fixture
def mlflow_server(tmp_path, mlflow_backend):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with running_server([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                         "--backend-store-uri", mlflow_backend,
                         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--workers", "1"],
                        url + "/health", tmp_path / "mlflow-server.log"):
        yield url


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_round_tracked_by_a_real_mlflow_server(tmp_path, store_url, bootstrap_template, mlflow_server):
    from speechalign.flows.campaign import alignment_campaign
    from speechalign.preference_store.store import open_store
    from speechalign.runtime.preflight import prepare

    cfg = copy_bootstrap(bootstrap_template, tmp_path / "work", store_url, f'mlflow.tracking_uri="{mlflow_server}"')
    cfg = light_scoring(cfg)  # this is about where runs, models and artifacts go, not the metrics
    prepare(cfg)  # reaches the server's /health
    [result] = alignment_campaign(str(cfg.workdir), rounds=1)
    assert result.version == "1"

    client = MlflowClient(mlflow_server)
    [version] = client.search_model_versions(f"name='{cfg.registered_model}'")
    assert version.tags["speechalign.round"] == "1" and version.status == "READY"
    store = open_store(cfg.store_url)
    rnd = store.rounds(store.campaign(cfg.campaign.name).id)[-1]
    assert version.run_id == rnd.mlflow_run_id
    run = client.get_run(rnd.mlflow_run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # uploads go through the server
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"adapter", "audio"}
    assert list((tmp_path / "server-artifacts").rglob("3_round_1.wav"))  # in the server's store
    assert not (cfg.workdir / "mlartifacts").exists()  # nothing written beside the client


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_the_mlflow_link_the_demo_prints_opens_the_campaigns_runs_in_a_browser(tmp_path, store_url,
                                                                                bootstrap_template):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from speechalign.flows.round import baseline
    from speechalign.preference_store.store import open_store
    from speechalign.runtime.tracking import ui_link

    cfg = light_scoring(copy_bootstrap(bootstrap_template, tmp_path / "work", store_url), 'campaign.name="nightly"')
    baseline(str(cfg.workdir))  # round 0: the campaign's experiment and its run
    experiment = open_store(cfg.store_url).campaign("nightly").mlflow_experiment_id
    port = free_port()
    command, url = ui_link(cfg, experiment, port)
    assert url == f"http://127.0.0.1:{port}/#/experiments/{experiment}?workflowType=machine_learning"
    program, *arguments = command.split()
    assert program == "mlflow"
    with running_server([sys.executable, "-m", "mlflow", *arguments], f"http://127.0.0.1:{port}/health",
                        tmp_path / "mlflow-ui.log"):
        browser = chromium()  # a new browser, as a user's first visit: MLflow would start it on GenAI traces
        try:
            browser.get(url)
            try:
                WebDriverWait(browser, 120).until(lambda b: "matching run" in b.find_element(By.TAG_NAME, "body").text)
            except TimeoutException:
                browser.save_screenshot(str(tmp_path / "mlflow-ui.png"))
                pytest.fail(f"{browser.current_url} never listed the runs; the page read:\n"
                            + browser.find_element(By.TAG_NAME, "body").text[:3000])
            page = browser.find_element(By.TAG_NAME, "body").text
            assert f"/#/experiments/{experiment}/runs" in browser.current_url
            assert "Run Name" in page and "nightly" in page.split("Run Name", 1)[1]  # the campaign's run, listed
            assert "No data available" not in page  # not the GenAI overview of traces
        finally:
            browser.quit()
