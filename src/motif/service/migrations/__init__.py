"""Schema migrations: one Alembic history for SQLite and PostgreSQL, run from code or `motif db ...`.

The revisions live in `versions/`; each is frozen once released (a change to the tables is a new one).
A database made before Alembic (a `schema_version` table at version 1) is stamped at the first revision.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

HERE = Path(__file__).parent
FIX_COMMAND = "motif db upgrade"


class SchemaError(RuntimeError):
    """The database's schema is not the one this Motif runs on; the message says which command fixes it."""


def _config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.attributes["connection"] = connection
    return config


def head() -> str:
    """The newest revision this Motif knows."""
    script = ScriptDirectory(str(HERE))
    revision = script.get_current_head()
    assert revision is not None
    return revision


def current(engine: Engine) -> str | None:
    """The database's revision (None: no Alembic table yet)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Upgrade to `revision`; returns the revision found before. Raises SchemaError for a newer database."""
    with engine.begin() as conn:
        found = MigrationContext.configure(conn).get_current_revision()
        _refuse_unknown(found)
        config = _config(conn)
        if found is None and _is_pre_alembic(conn):
            command.stamp(config, "0001")
        command.upgrade(config, revision)
    return found


def downgrade(engine: Engine, revision: str) -> None:
    with engine.begin() as conn:
        command.downgrade(_config(conn), revision)


def check(engine: Engine) -> None:
    """Raise SchemaError unless the database is at the newest revision."""
    found = current(engine)
    _refuse_unknown(found)
    if found != head():
        state = "has no schema yet" if found is None else f"is at schema revision {found}"
        raise SchemaError(f"the database {state}; this Motif needs {head()}: run `{FIX_COMMAND}`")


def _refuse_unknown(found: str | None) -> None:
    if found is not None and found not in {rev.revision for rev in ScriptDirectory(str(HERE)).walk_revisions()}:
        raise SchemaError(f"the database is at schema revision {found}, newer than this Motif ({head()}): "
                          "upgrade Motif, or restore a backup made for this version")  # fmt: skip


def _is_pre_alembic(conn: Connection) -> bool:
    inspector = inspect(conn)
    if not inspector.has_table("schema_version") or not inspector.has_table("audio"):
        return False
    return conn.execute(text("SELECT max(version) FROM schema_version")).scalar() == 1
