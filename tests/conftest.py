"""Shared fixtures: real PostgreSQL and Redis on this machine, throw-away databases."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pydicom
import pytest

pydicom.config.settings.writing_validation_mode = pydicom.config.RAISE

# Many services run at once in the tests (and in other checkouts on this machine): unless a
# test sets it, each `serve` takes a free HTTP port (api.port 0) instead of the default 8080.
os.environ.setdefault("CORDT1_API__PORT", "0")

POSTGRES_ADMIN_URL = os.environ.get(
    "CORDT1_TEST_POSTGRES", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("CORDT1_TEST_REDIS", "redis://127.0.0.1:6379/0")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give the schemathesis items their own node ids.

    schemathesis 4 makes one item per API operation (``test_x[GET /healthz]``), but under
    pytest 9 they all get the test function's node id; pytest-xdist, which the test command
    uses, schedules by node id and would run only the first of them.
    """
    for item in items:
        if not item.name.endswith("]") or item.nodeid.endswith("]"):
            continue
        params = item.name[item.name.index("[") + 1 : -1]
        node_id = getattr(item, "_id", None)
        if node_id is not None and hasattr(node_id, "with_params"):  # pytest >= 9
            item._id = node_id.with_params(params)
        else:
            item._nodeid = f"{item.nodeid}[{params}]"


@pytest.fixture(autouse=True)
def _restore_cordt1_config() -> Iterator[None]:
    """``load_settings(config)`` exports ``$CORDT1_CONFIG`` for the worker processes it starts;
    in the test process that must not leak one test's configuration into the next."""
    before = os.environ.get("CORDT1_CONFIG")
    yield
    if before is None:
        os.environ.pop("CORDT1_CONFIG", None)
    else:
        os.environ["CORDT1_CONFIG"] = before


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards."""
    from sqlalchemy import create_engine, text

    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"cordt1_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


@pytest.fixture
def redis_url() -> str:
    """A Redis database that answers (the suite's scripts start one if needed)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    client.ping()
    return REDIS_URL


@pytest.fixture(params=["IGNORE", "RAISE", "WARN"])
def reading_mode(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test under one pydicom ``reading_validation_mode``; restore it after."""
    from tests.header_check_reference import READING_MODES

    before = pydicom.config.settings.reading_validation_mode
    pydicom.config.settings.reading_validation_mode = READING_MODES[request.param]
    try:
        yield request.param
    finally:
        pydicom.config.settings.reading_validation_mode = before
