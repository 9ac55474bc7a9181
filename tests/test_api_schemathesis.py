"""Property-based contract test: schemathesis generates requests from /openapi.json.

Every operation, with generated path, query and body values, must answer without a server
error, with a documented status code, content type and a body matching its schema.
(`schemathesis.pytest.from_fixture` fails with this pytest, so the app is built at import.)
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from service.api.app import create_api
from service.api.auth import SESSION_COOKIE, User
from service.jobs.heartbeat import Heartbeat
from tests.api_fixtures import seed

pytestmark = pytest.mark.slow

os.environ.pop("CORDT1_CONFIG", None)  # at collection: settings from the arguments only
_FOLDER = Path(tempfile.mkdtemp(prefix="cordt1-schemathesis-"))
atexit.register(shutil.rmtree, _FOLDER, ignore_errors=True)
_SEEDED = seed(_FOLDER / "data")
_WORKER = Heartbeat(_FOLDER / "data", "worker")
APP = create_api(_SEEDED.settings, _SEEDED.store, _SEEDED.celery, _SEEDED.controls)
TOKEN = APP.state.sessions.open(User(name="otto", role="operator"))
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.parametrize()
@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_every_operation_conforms_to_the_published_schema(case: Any) -> None:
    _WORKER.beat()  # a live worker, so /readyz is 200 (its 503 is covered in test_api)
    case.call_and_validate(headers={"Cookie": f"{SESSION_COOKIE}={TOKEN}"})
