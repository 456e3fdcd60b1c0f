"""Alembic, driven from code: `speechalign db upgrade` and the store's auto-migration both come here."""

from __future__ import annotations

from importlib.resources import files

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from speechalign.preference_store.store import make_engine


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(files("speechalign.migrations")))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # configparser interpolates '%'
    return cfg


def head_revision(url: str) -> str:
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()


def current_revision(url: str) -> str | None:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def upgrade(url: str, revision: str = "head") -> str | None:
    """Migrate the store at `url` to `revision`; return the revision it is at afterwards."""
    command.upgrade(alembic_config(url), revision)
    return current_revision(url)
