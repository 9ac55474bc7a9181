"""The job store's schema version: what a store has, creating an empty one, upgrading.

The schema is versioned with Alembic; its revisions ship in :mod:`service.jobs.migrations`
and are numbered ``0001``, ``0002``, ... (the *schema version*). Upgrades are explicit, because
a hospital backs up before it changes its database: :func:`check_schema` (run whenever a
:class:`~service.jobs.store.JobStore` opens) creates an empty store at the newest schema, opens
a current one, and refuses an older or a newer one with one line that says what to do;
:func:`upgrade` (``cordt1 db upgrade``) brings an older store to the newest schema. A store an
earlier cordt1 made with ``metadata.create_all`` (no ``alembic_version`` table) is recognised as
schema 1 and stamped so before it is upgraded.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

__all__ = [
    "SCHEMA_TABLES",
    "SchemaError",
    "SchemaState",
    "SchemaStatus",
    "check_schema",
    "head_revision",
    "schema_number",
    "schema_status",
    "upgrade",
]

LOGGER = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
#: The tables of a cordt1 job store (schema 1 onwards).
SCHEMA_TABLES = ("instances", "jobs", "deliveries", "events")
#: Columns of ``jobs`` that stores made before leases lack (added when such a store is stamped).
_PRE_LEASE_COLUMNS = {
    "lease_owner": "VARCHAR(128) NOT NULL DEFAULT ''",
    "lease_expires_at": "FLOAT",
}
#: PostgreSQL advisory lock held while a schema is created or upgraded (any constant key).
_PG_LOCK_KEY = 0x636F726474  # "cordt"
VERSION_TABLE = "alembic_version"
UPGRADE_HINT = "run `cordt1 db upgrade` (back up first: docs/operations.md)"


class SchemaError(ValueError):
    """The job store's schema cannot be used by this cordt1 (the message says what to do)."""


class SchemaState(StrEnum):
    """Where a store's schema stands against this cordt1."""

    EMPTY = "empty"  #: no cordt1 table yet: created at the newest schema when opened
    CURRENT = "current"  #: at the newest schema this cordt1 knows
    OLDER = "older"  #: needs ``cordt1 db upgrade``
    NEWER = "newer"  #: made by a newer cordt1: this one must not touch it
    FOREIGN = "foreign"  #: tables of ours but no jobs table nor version: not made by cordt1


@dataclass(frozen=True)
class SchemaStatus:
    """A store's schema version against this cordt1's.

    Attributes
    ----------
    state : SchemaState
    current : str or None
        The store's revision (``"0001"``, ...); ``None`` when empty.
    head : str
        The newest revision this cordt1 knows.
    unversioned : bool
        The store was made before migrations (no ``alembic_version`` table): schema 1.
    detail : str
        One line for an operator.
    """

    state: SchemaState
    current: str | None
    head: str
    unversioned: bool
    detail: str


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def head_revision() -> str:
    """The newest schema revision this cordt1 ships (e.g. ``"0002"``)."""
    head = _script().get_current_head()
    if head is None:  # pragma: no cover - the package always ships revisions
        raise RuntimeError(f"no job store migrations in {MIGRATIONS_DIR}")
    return head


def schema_number(revision: str) -> str:
    """The schema version as printed: ``"0002"`` -> ``"2"`` (other ids unchanged)."""
    return str(int(revision)) if revision.isdigit() else revision


def _recorded_revision(conn: Connection, tables: set[str]) -> str | None:
    """The revision in ``alembic_version`` (read directly: Alembic's context logs at INFO)."""
    if VERSION_TABLE not in tables:
        return None
    rows = [str(r[0]) for r in conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))]
    if len(rows) > 1:  # cordt1's history is linear: several heads are not ours
        return "+".join(sorted(rows))
    return rows[0] if rows else None


def _status(conn: Connection, script: ScriptDirectory) -> SchemaStatus:
    head = script.get_current_head() or ""
    present = set(inspect(conn).get_table_names())
    ours = [name for name in SCHEMA_TABLES if name in present]
    current = _recorded_revision(conn, present)
    unversioned = False
    if current is None:
        if not ours:
            return SchemaStatus(
                SchemaState.EMPTY,
                None,
                head,
                False,
                f"empty: created at schema {schema_number(head)} when cordt1 opens it",
            )
        if "jobs" not in ours:
            return SchemaStatus(
                SchemaState.FOREIGN,
                None,
                head,
                False,
                f"the database has tables {', '.join(ours)} but no jobs table and no schema "
                "version: not a cordt1 job store (use another database or schema)",
            )
        current, unversioned = "0001", True
    known = current in {rev.revision for rev in script.walk_revisions()}
    numbers = (schema_number(current), schema_number(head))
    if not known:
        newer = current.isdigit() and head.isdigit() and int(current) > int(head)
        detail = (
            f"job store schema {numbers[0]} is newer than this cordt1 ({numbers[1]}): "
            "run the cordt1 release that upgraded it (see docs/operations.md)"
            if newer
            else f"job store schema {current!r} is unknown to this cordt1 ({numbers[1]}): "
            "it was not made by cordt1, or by a newer release"
        )
        return SchemaStatus(SchemaState.NEWER, current, head, unversioned, detail)
    if current == head:
        return SchemaStatus(
            SchemaState.CURRENT, current, head, unversioned, f"schema {numbers[0]}: current"
        )
    made = " (made before schema versions were recorded)" if unversioned else ""
    return SchemaStatus(
        SchemaState.OLDER,
        current,
        head,
        unversioned,
        f"job store schema {numbers[0]}{made} is older than this cordt1 ({numbers[1]}): "
        + UPGRADE_HINT,
    )


def schema_status(engine: Engine) -> SchemaStatus:
    """Where the store's schema stands (reads only).

    Parameters
    ----------
    engine : Engine
        The job store's engine.
    """
    with engine.connect() as conn:
        return _status(conn, _script())


def _lock(conn: Connection) -> None:
    """Serialise schema changes between processes opening one PostgreSQL store at once."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})


def check_schema(engine: Engine) -> SchemaStatus:
    """Open the store: create an empty one at the newest schema, accept a current one.

    Parameters
    ----------
    engine : Engine
        The job store's engine.

    Returns
    -------
    SchemaStatus
        The store's status (``CURRENT``) after the check.

    Raises
    ------
    SchemaError
        With one line for the operator when the schema is older (``cordt1 db upgrade``),
        newer than this cordt1, or the database is not a cordt1 job store.
    """
    script = _script()

    def status_now() -> SchemaStatus:
        with engine.connect() as conn:
            return _status(conn, script)

    status = status_now()
    if status.state is SchemaState.EMPTY:
        try:
            with _transactional(engine) as eng, eng.begin() as conn:
                _lock(conn)
                if _status(conn, script).state is SchemaState.EMPTY:
                    command.upgrade(_config(conn), "head")
                    LOGGER.info("job store created at schema %s", schema_number(status.head))
        except Exception:
            # Another process may have created it at the same moment (both lock, but the
            # creation itself can still collide): fine if the store is now current.
            if status_now().state is not SchemaState.CURRENT:
                raise
        status = status_now()
    if status.state is not SchemaState.CURRENT:
        raise SchemaError(status.detail)
    return status


def _stamp_unversioned(conn: Connection, script: ScriptDirectory) -> None:
    """Record schema 1 in a store made by ``create_all`` before migrations.

    Such a store has the tables of schema 1, or part of them when an early release made it
    (no ``deliveries`` table, no lease columns): what is missing is added first, as the
    ``create_all`` of every later release would have done.
    """
    first = script.get_revision("0001")
    if first is None:  # pragma: no cover - shipped with the package
        raise RuntimeError(f"revision 0001 missing from {MIGRATIONS_DIR}")
    first.module.SCHEMA_1.create_all(conn, checkfirst=True)
    present = {c["name"] for c in inspect(conn).get_columns("jobs")}
    for name, ddl in _PRE_LEASE_COLUMNS.items():
        if name not in present:
            conn.execute(text(f"ALTER TABLE jobs ADD COLUMN {name} {ddl}"))
    command.stamp(_config(conn), "0001")


@contextmanager
def _transactional(engine: Engine) -> Iterator[Engine]:
    """An engine whose transactions include DDL (all or nothing), also on SQLite.

    Python's sqlite3 driver starts its transactions only before data changes, so a
    ``CREATE``/``ALTER TABLE`` would commit at once and a failed change leave a half-changed
    store; on SQLite schema changes therefore run on their own engine that begins every
    transaction itself, with ``BEGIN IMMEDIATE`` (the write lock: a second process creating
    the same store waits, then finds it made).
    """
    if engine.dialect.name != "sqlite":
        yield engine
        return
    own = create_engine(engine.url, poolclass=NullPool)

    @event.listens_for(own, "connect")
    def _no_driver_transactions(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        dbapi_connection.execute("PRAGMA busy_timeout=30000")
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")  # as the store (WAL: durable)

    @event.listens_for(own, "begin")
    def _begin_immediate(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    try:
        yield own
    finally:
        own.dispose()


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Bring the store to the newest schema (``cordt1 db upgrade``); back up first.

    Parameters
    ----------
    engine : Engine
        The job store's engine.

    Returns
    -------
    tuple
        (schema revision before, after); before is ``None`` for an empty store.

    Raises
    ------
    SchemaError
        If the schema is newer than this cordt1 or the database is not a cordt1 job store.
    """
    script = _script()
    with _transactional(engine) as eng, eng.begin() as conn:
        _lock(conn)
        status = _status(conn, script)
        if status.state in (SchemaState.NEWER, SchemaState.FOREIGN):
            raise SchemaError(status.detail)
        if status.unversioned:
            LOGGER.info("job store made before schema versions: recorded as schema 1")
            _stamp_unversioned(conn, script)
        if status.state is not SchemaState.CURRENT:
            command.upgrade(_config(conn), "head")
            LOGGER.info(
                "job store upgraded from schema %s to %s",
                schema_number(status.current or "0"),
                schema_number(status.head),
            )
    return status.current, status.head
