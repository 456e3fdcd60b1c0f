"""Shared fixtures: real espeak audio made on the spot, the shipped codec, tiny real models, a
Prefect test server for the session, and a preference store on SQLite and (when CI gives one)
PostgreSQL."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import pytest

# before prefect, transformers or mlflow are imported by any test module
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="speechalign-tests-"))
(_SESSION_HOME / "prefect" / "storage").mkdir(parents=True)
os.environ.update({
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "PREFECT_HOME": str(_SESSION_HOME / "prefect"),
    "PREFECT_LOCAL_STORAGE_PATH": str(_SESSION_HOME / "prefect" / "storage"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "speechalign",
})

POSTGRES_URL = os.environ.get("SPEECHALIGN_TEST_POSTGRES_URL")
TINY_MODEL = [  # a one-layer Llama: learns little, but every code path is the real one
    "model.layers=1", "model.hidden_size=64", "model.heads=2", "model.sft_epochs=2", "model.sft_batch_size=8",
    "generate.k=2", "generate.batch_size=32", "generate.max_new_tokens=120", "train.batch_size=8",
    "train.lora_r=4", "train.lora_alpha=8", "train.learning_rate=0.001", "evaluate.mode=sampled",
    "evaluate.samples_per_prompt=2",
    "corpus.heldout_fraction=0.2", "codec.acoustic_steps=30",
]


@pytest.fixture(scope="session", autouse=True)
def prefect_server():
    """One Prefect test server for the whole session (it takes 10-20 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def espeak_corpus(tmp_path_factory) -> Path:
    """24 utterances in two espeak voices, with a manifest in the format users give."""
    from speechalign.tasks.demo_corpus import build_demo_corpus

    return build_demo_corpus(tmp_path_factory.mktemp("corpus"), 24, ["en-us+m3", "en-gb+f3"], seed=7, speed=175)


@pytest.fixture(scope="session")
def codec():
    from speechalign.config import Config
    from speechalign.models.codec import load_codec

    return load_codec(*Config().codec_files())


def _postgres_database() -> str:
    """A fresh database on the CI server, so tests never see each other's rows."""
    from sqlalchemy import create_engine, make_url, text

    name = f"sa_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)


def database_url(kind: str, sqlite_path: Path) -> str:
    """A SQLite file, or a fresh database on the CI's PostgreSQL (the test is skipped without one)."""
    if kind == "sqlite":
        return f"sqlite:///{sqlite_path}"
    if not POSTGRES_URL:
        pytest.skip("no PostgreSQL server: set SPEECHALIGN_TEST_POSTGRES_URL (.ci/run starts one)")
    return _postgres_database()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request, tmp_path) -> str:
    return database_url(request.param, tmp_path / "store.db")


@pytest.fixture
def store(store_url):
    from speechalign.preference_store import migrate
    from speechalign.preference_store.store import PreferenceStore

    migrate.upgrade(store_url)
    s = PreferenceStore(store_url)
    yield s
    s.engine.dispose()


def tiny_config(workdir: Path, store_url: str, manifest: Path, *extra: str):
    """The demo config shrunk to seconds, on the given store, with MLflow under the work directory."""
    from speechalign.config import load_config, save_config

    cfg = load_config(overrides=[*TINY_MODEL, f'store.url="{store_url}"', f'corpus.manifest="{manifest}"', *extra],
                      workdir=str(workdir))
    save_config(cfg)
    return cfg


@pytest.fixture
def bootstrapped(tmp_path, store_url, espeak_corpus):
    """A work directory after `speechalign bootstrap` with the tiny model, on the given store."""
    from speechalign.flows.bootstrap import bootstrap
    from speechalign.preflight import prepare

    cfg = tiny_config(tmp_path / "work", store_url, espeak_corpus, "prefect.task_retries=0")
    prepare(cfg)
    result = bootstrap(str(cfg.workdir))
    assert result["import"]["imported"] == 24 and result["import"]["heldout"] == 5
    return cfg
