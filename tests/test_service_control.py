"""Pause and resume of intake (the SCP) and of processing (the dispatcher) in the service."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_node.scu import Destination, SendError, send
from service.server import Service
from service.settings import Settings
from tests.api_fixtures import broker_messages
from tests.test_dicom_node_factories import make_mr


@pytest.fixture(autouse=True)
def _no_config_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings from the arguments only: no $CORDT1_CONFIG left by another test's load."""
    monkeypatch.delenv("CORDT1_CONFIG", raising=False)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    settings = Settings(
        data_dir=tmp_path / "data",
        workers=0,
        node={"host": "127.0.0.1", "port": 0, "min_free_mb": 0},
        api={"enabled": False},
    )
    svc = Service(settings)
    svc.scp.start()
    yield svc
    svc.scp.stop()
    svc.store.close()


def _associate(port: int) -> bool:
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="CORDT1")
    accepted = bool(assoc.is_established)
    if accepted:
        assoc.release()
    return accepted


def test_paused_intake_rejects_associations_as_transient_and_resumes(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    port = service.scp.port
    assert port is not None
    service.controls.set("intake", True, "otto")
    with caplog.at_level(logging.ERROR, logger="pynetdicom"):
        assert not _associate(port)
    assert "Result: Rejected Transient" in caplog.text  # the scanner keeps it, tries again
    study = generate_uid()
    with pytest.raises(SendError, match="rejected"):
        send(
            [make_mr(study_uid=study)],
            Destination("CORDT1", "127.0.0.1", port),
            calling_ae="SCANNER",
        )
    service.controls.set("intake", False, "otto")
    assert _associate(port)
    send(
        [make_mr(study_uid=study)], Destination("CORDT1", "127.0.0.1", port), calling_ae="SCANNER"
    )
    deadline = time.monotonic() + 10
    lines: list[str] = []
    while time.monotonic() < deadline:
        lines = [e["message"] for e in service.store.events() if e["kind"] == "association"]
        if len(lines) >= 4:
            break
        time.sleep(0.05)
    rejected = [x for x in lines if "rejected (intake paused by an operator)" in x]
    assert len(rejected) == 2
    assert sum("accepted" in x for x in lines) == 2
    assert service.batcher.flush()  # rows of received instances are committed in batches
    assert [i["study_uid"] for i in service.store.instance_infos()] == [study]


def test_paused_processing_dispatches_nothing_until_resumed(service: Service) -> None:
    port = service.scp.port
    assert port is not None
    send([make_mr()], Destination("CORDT1", "127.0.0.1", port), calling_ae="SCANNER")
    deadline = time.monotonic() + 10
    while not service.store.instance_infos() and time.monotonic() < deadline:
        time.sleep(0.05)
    later = time.time() + 10 * service.settings.node.stale_s
    service.controls.set("processing", True, "otto")
    assert service.dispatch_ready(now=later) == []
    assert service.store.list_jobs() == []
    assert broker_messages(service.settings.data_dir) == []
    service.controls.set("processing", False, "otto")
    job_ids = service.dispatch_ready(now=later)  # the exam waited in the tracker
    assert len(job_ids) == 1
    assert [m["task"] for m in broker_messages(service.settings.data_dir)] == [
        "cordt1.process_job"
    ]


def test_the_pause_state_survives_a_restart(tmp_path: Path) -> None:
    from service.api.controls import Controls

    path = tmp_path / "run" / "pause.json"
    Controls(path).set("processing", True, "otto")
    again = Controls(path).state()
    assert again["processing"].paused and again["processing"].by == "otto"
    assert not again["intake"].paused
    with pytest.raises(ValueError, match="intake or processing"):
        Controls(path).set("everything", True, "otto")  # type: ignore[arg-type]
