"""A Prefect server whose database is PostgreSQL runs and records a round, as a team's shared server would."""

import os
import subprocess
import sys

import pytest
from sqlalchemy import create_engine, make_url, text

from tests.conftest import database_url, light_scoring
from tests.servers import free_port, running_server


@pytest.fixture
def prefect_server_on_postgres(tmp_path):
    database = database_url("postgresql", tmp_path / "unused.db")
    asyncpg_url = make_url(database).set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    port = free_port()
    env = {**os.environ, "PREFECT_API_DATABASE_CONNECTION_URL": asyncpg_url, "PREFECT_HOME": str(tmp_path / "ph"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    url = f"http://127.0.0.1:{port}/api"
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with running_server(command, url + "/health", tmp_path / "prefect-server.log", env=env, seconds=240):
        yield url, database


@pytest.mark.postgres
@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_a_round_on_a_prefect_server_backed_by_postgresql(bootstrapped, prefect_server_on_postgres):
    url, database = prefect_server_on_postgres
    bootstrapped = light_scoring(bootstrapped)  # this is about the server's database, not the metrics
    env = {**os.environ, "PREFECT_API_URL": url}  # as a user's shell points `speechalign round` at the server
    done = subprocess.run([sys.executable, "-c", "from speechalign.cli import main; raise SystemExit(main())",
                           "round", "--workdir", str(bootstrapped.workdir)], env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    engine = create_engine(database)
    with engine.connect() as conn:  # the server kept the run in its PostgreSQL database
        runs = conn.execute(text("SELECT f.name, r.state_type FROM flow_run r JOIN flow f ON f.id = r.flow_id")).all()
        tasks = conn.execute(text("SELECT count(*) FROM task_run WHERE state_type = 'COMPLETED'")).scalar()
    engine.dispose()
    assert ("alignment-round", "COMPLETED") in {(n, str(s).split(".")[-1]) for n, s in runs}
    assert tasks >= 7  # generate, decode, score, pairs, train, evaluate, register (and round 0's)
