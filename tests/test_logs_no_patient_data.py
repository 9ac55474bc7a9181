"""A full phantom exam through `cordt1 serve`: no patient name, ID or birth date in any log."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from service.jobs.store import JobState
from service.phantom.pacs import OrthancPacs, orthanc_binary
from tests.service_harness import ServiceProcess, finished, make_exams, storescu

pytestmark = pytest.mark.slow


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancPacs]:
    assert orthanc_binary(), "Orthanc is not installed (scripts/bootstrap.sh installs it)"
    pacs = OrthancPacs.start(tmp_path / "orthanc")
    yield pacs
    pacs.stop()


def _identifiers(dicom_dir: Path) -> set[str]:
    """Patient names (whole and each part), IDs and birth dates in the exam's headers."""
    found: set[str] = set()
    for path in dicom_dir.rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        name = str(ds.get("PatientName", "") or "")
        found |= {name, str(ds.get("PatientID", "")), str(ds.get("PatientBirthDate", ""))}
        found |= {part for part in name.replace("^", " ").split() if len(part) >= 3}
    return {value for value in found if value}


def test_a_full_run_logs_no_patient_data(orthanc: OrthancPacs, tmp_path: Path) -> None:
    exam = make_exams(tmp_path / "phantom", seed=21)[0]
    identifiers = _identifiers(exam.dicom_dir)
    # the phantom must carry all three kinds, or the test would prove nothing
    header = pydicom.dcmread(next(exam.dicom_dir.rglob("*.dcm")), stop_before_pixels=True)
    assert header.PatientName and header.PatientID and header.PatientBirthDate
    logs = tmp_path / "logs"
    service = ServiceProcess(
        tmp_path / "svc", destination=orthanc.destination, site_protocols=exam.site_protocols
    )
    config = service.config.read_text()
    top = (
        f'log_format = "json"\nlog_file = "{logs / "cordt1.log"}"\n'
        f'log_level = "DEBUG"\nbids_dir = "{tmp_path / "bids"}"\n'
    )
    service.config.write_text(top + config)
    with service:
        sent = storescu(service.port, [exam.dicom_dir])
        assert sent.returncode == 0, sent.stderr
        jobs = service.wait_for_jobs(finished, timeout_s=300)
        assert [j.state for j in jobs] == [JobState.DONE], [j.error for j in jobs]
    assert (logs / "cordt1.log").exists() and (logs / "cordt1-worker.log").exists()
    texts = {
        str(path): path.read_text(errors="replace")
        for path in [*logs.iterdir(), tmp_path / "svc" / "service.log"]
    }
    # every line of our own log files is one JSON object, and the run did log its work
    for path in logs.iterdir():
        lines = path.read_text().splitlines()
        assert lines and all(json.loads(line)["message"] is not None for line in lines)
    assert "job 1 queued" in texts[str(logs / "cordt1.log")]
    worker = texts[str(logs / "cordt1-worker.log")]
    assert (
        "exam processed" in worker
        and "exported as BIDS" in worker
        and " instances to ORTHANC@" in worker
    )
    assert "findfont" not in worker  # library chatter stays out even at DEBUG
    with sqlite3.connect(service.data_dir / "jobs.sqlite") as db:  # the audit trail
        for table in ("events", "jobs"):
            rows = db.execute(f"SELECT * FROM {table}").fetchall()
            assert rows
            texts[f"jobs.sqlite:{table}"] = json.dumps(rows, default=str)
    hits = [
        (where, value)
        for where, text in texts.items()
        for value in identifiers
        if value.lower() in text.lower()
    ]
    assert hits == []
