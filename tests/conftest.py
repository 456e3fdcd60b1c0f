"""Shared fixtures: real espeak audio made on the spot, the shipped codec, tiny real models, a
Prefect test server for the session, and a preference store on SQLite and (when CI gives one)
PostgreSQL."""

from __future__ import annotations

import os
import shutil
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
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "PREFECT_HOME": str(_SESSION_HOME / "prefect"),
    "PREFECT_LOCAL_STORAGE_PATH": str(_SESSION_HOME / "prefect" / "storage"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "speechalign",
    # each test process trains on its own: the host training lock would make xdist's workers take turns
    "SPEECHALIGN_LOCK_DIR": str(_SESSION_HOME / "locks"),
})

# pytest-xdist's workers share the cores: each takes its share of threads (torch, onnxruntime, CTranslate2 and the
# subprocesses it starts), so two workers on two cores do not each run two threads and wait on each other
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _THREADS = str(max(1, (os.cpu_count() or 1) // _WORKERS))
    os.environ.update({"OMP_NUM_THREADS": _THREADS, "MKL_NUM_THREADS": _THREADS})

POSTGRES_URL = os.environ.get("SPEECHALIGN_TEST_POSTGRES_URL")
TINY_MODEL = [  # a one-layer Llama: learns little, but every code path is the real one
    "model.layers=1", "model.hidden_size=64", "model.heads=2", "model.sft_epochs=2", "model.sft_batch_size=8",
    "generate.k=2", "generate.batch_size=32", "generate.max_new_tokens=150", "train.batch_size=8",
    "train.lora_r=4", "train.lora_alpha=8", "train.learning_rate=0.001", "evaluate.mode=sampled",
    "train.method=dpo", "generate.prompts_per_round=128", "online.beta=0.0", "reward.min_length_ratio=0.5",
    "evaluate.samples_per_prompt=2", "evaluate.probe_prompts=3",
    "corpus.heldout_fraction=0.2", "codec.acoustic_steps=30",
]


@pytest.fixture(scope="session")
def prefect_server():
    """One Prefect test server for the whole session (it takes 10-20 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(autouse=True)
def _prefect_for_tests_that_run_flows(request):
    """Every test but the pure ones (marked `pure`: no flow, task or model; `make test-fast`) gets the server."""
    if request.node.get_closest_marker("pure") is None:
        request.getfixturevalue("prefect_server")


def built_once(tmp_path_factory, name: str, build) -> Path:
    """The folder `name`, filled by `build(folder)` in one test process for all of them: pytest-xdist's workers
    share the session's temporary root, the first takes a file lock and builds, the others wait and reuse it
    (a build that fails leaves nothing, and the next worker tries again). For session fixtures whose product the
    tests copy and never change."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    folder, built = root / name, root / f"{name}.built"
    with FileLock(str(root / f"{name}.lock")):
        if not built.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            built.touch()
    return folder


@pytest.fixture(scope="session")
def espeak_corpus(tmp_path_factory) -> Path:
    """24 utterances in two espeak voices, with a manifest in the format users give."""
    from speechalign.bootstrap.demo_corpus import build_demo_corpus

    def build(folder: Path) -> None:
        build_demo_corpus(folder, 24, ["en-us+m3", "en-gb+f3"], seed=7, speed=175)

    return built_once(tmp_path_factory, "corpus", build) / "manifest.jsonl"


@pytest.fixture(scope="session")
def codec():
    from speechalign.config import Config
    from speechalign.models.speechtokenizer.codec import load_codec

    return load_codec(*Config().codec.files())


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


@pytest.fixture(scope="session")
def bootstrap_template(tmp_path_factory, espeak_corpus, prefect_server):
    """One `speechalign bootstrap` of the tiny model for the session (`built_once`): corpus imported, golden
    tokens, acoustic stage, base model and ceiling. Tests get a copy of it (`bootstrapped`), never the template."""
    from speechalign.config import load_config

    def build(folder: Path) -> None:
        from speechalign.flows.bootstrap import bootstrap
        from speechalign.runtime.preflight import prepare

        cfg = tiny_config(folder / "work", f"sqlite:///{folder / 'store.db'}", espeak_corpus, "prefect.task_retries=0")
        prepare(cfg)
        result = bootstrap(str(cfg.workdir))
        assert result["import"]["imported"] == 24 and result["import"]["heldout"] == 5

    return load_config(workdir=str(built_once(tmp_path_factory, "template", build) / "work"))


def copy_bootstrap(template, workdir: Path, store_url: str, *extra: str):
    """A work directory of one's own: the template's files, its store's rows on `store_url`, and its MLflow
    store, with every path into the template's work directory moved to the copy's."""
    from sqlalchemy import insert, select, text

    from speechalign.preference_store import migrate
    from speechalign.preference_store.schema import Base
    from speechalign.preference_store.store import PreferenceStore, open_store

    shutil.copytree(template.workdir, workdir)
    relocate = _relocator(str(template.workdir), str(workdir))
    _relocate_sqlite(template.layout.mlflow_db.name, workdir, str(template.workdir))
    cfg = tiny_config(workdir, store_url, Path(template.corpus.manifest), "prefect.task_retries=0", *extra)
    migrate.upgrade(store_url)
    source, target = open_store(template.store_url), PreferenceStore(store_url)
    with source.session() as read, target.session() as write:
        for table in Base.metadata.sorted_tables:
            rows = [{k: relocate(v) for k, v in r._mapping.items()} for r in read.execute(select(table))]
            if rows:
                write.execute(insert(table), rows)
            if target.engine.dialect.name == "postgresql" and "id" in table.c:  # ids were copied: move the sequence
                write.execute(text(f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                                   f"coalesce(max(id), 0) + 1, false) FROM {table.name}"))
    target.engine.dispose()
    return cfg


LIGHT_SCORING = ['score.metrics=["unit_edit_distance", "length_ratio", "dnsmos"]', "score.heldout_metrics=[]",
                 'guard.gate_metrics=["unit_edit_distance"]']  # no ASR, so no WER to gate on


def light_scoring(cfg, *extra: str):
    """For tests about stages, rows, servers and processes, not metrics: score with the plug-ins that read units and
    one audio model (DNSMOS), and no held-out ASR, so each process (and each killed and resumed one) loads less.
    `extra` are more `--set` overrides, e.g. 'score.candidates="all"'."""
    from speechalign.config import load_config, save_config

    light = load_config(overrides=[*LIGHT_SCORING, *extra], workdir=str(cfg.workdir))
    save_config(light)
    return light


def _relocator(old: str, new: str):
    """Replace the path prefix `old` with `new` in a value, inside JSON values too."""
    def relocate(value):
        if isinstance(value, str):
            return value.replace(old, new)
        if isinstance(value, list):
            return [relocate(v) for v in value]
        if isinstance(value, dict):
            return {k: relocate(v) for k, v in value.items()}
        return value
    return relocate


def _relocate_sqlite(name: str, workdir: Path, old: str) -> None:
    """In the copied SQLite file `workdir/name` (MLflow's store), every text value holding `old` gets the copy's
    work directory instead (experiments' artifact locations, runs' artifact URIs, model versions' sources)."""
    import sqlite3

    if not (workdir / name).is_file():
        return
    with sqlite3.connect(workdir / name) as db:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for column in [c[1] for c in db.execute(f'PRAGMA table_info("{table}")')
                           if any(t in c[2].upper() for t in ("CHAR", "TEXT", "CLOB")) or not c[2]]:
                db.execute(f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) WHERE instr("{column}", ?)',
                           (old, str(workdir), old))


@pytest.fixture
def bootstrapped(tmp_path, store_url, bootstrap_template):
    """A work directory after `speechalign bootstrap` with the tiny model, on the given store."""
    return copy_bootstrap(bootstrap_template, tmp_path / "work", store_url)


def pytest_collection_modifyitems(items):
    """Order for two xdist workers: tests that need no bootstrapped work directory fill the first half, then the
    tests that do, then the rest of those that don't. Work stealing hands the first half of the list to one worker
    and the second to the other, so one starts building the bootstrap template (`built_once`) at once while the
    other runs tests that need none, instead of waiting on its lock; the short tests at the end are what the
    workers steal from each other when one runs out."""
    bound = [item for item in items if "bootstrap_template" in getattr(item, "fixturenames", ())]
    free = [item for item in items if "bootstrap_template" not in getattr(item, "fixturenames", ())]
    half = len(items) // 2
    items[:] = free[:half] + bound + free[half:]
