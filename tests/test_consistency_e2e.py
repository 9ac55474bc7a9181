"""Exam consistency checks seen from outside: DCMTK storescu as the scanner -> `cordt1 serve`
-> a test PACS, with what the job store, the HTTP API and the PACS show a user.

In-process twins of these cases are in ``tests/test_consistency.py``: an INV2 with another
RepetitionTime fails naming the series, tag and values; an unusable scanner T1 map is dropped
with a QC note; a missing inversion series is named as such, not as a site-profile problem.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from service.jobs.store import Job, JobState
from tests.api_fixtures import PASSWORDS, users
from tests.counting_pacs import CountingPacs
from tests.exam_edits import Edit, copy_exam_series
from tests.service_harness import PhantomExam, ServiceProcess, finished, make_exams, storescu

pytestmark = pytest.mark.slow

ALL = ("INV1", "INV2", "UNI", "T1MAP")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> PhantomExam:
    """One small single-slab exam (INV1, INV2, UNI and the scanner's T1 map), never edited."""
    return make_exams(
        tmp_path_factory.mktemp("phantom"), seed=31, matrix=64, slices_per_slab=4, slabs=1
    )[0]


def _exam_copy(
    phantom: PhantomExam, target: Path, keep: tuple[str, ...] = ALL, edit: Edit | None = None
) -> Path:
    """The phantom's series whose folder names contain one of ``keep``, edited; to send."""
    return copy_exam_series(phantom.dicom_dir, target, keep, edit)


def _header(phantom: PhantomExam, component: str) -> Dataset:
    (folder,) = [f for f in phantom.dicom_dir.iterdir() if component in f.name]
    return pydicom.dcmread(sorted(folder.glob("*.dcm"))[0], stop_before_pixels=True)


class Api:
    """The service's HTTP API as a logged-in viewer sees it."""

    def __init__(self, service: ServiceProcess) -> None:
        ready = service.data_dir / "run" / "ready.json"  # written once `serve` is up
        deadline = time.monotonic() + 60
        while True:
            try:
                port = int(json.loads(ready.read_text())["http_port"])
                break
            except (OSError, ValueError, KeyError, TypeError):
                assert time.monotonic() < deadline, f"no HTTP port in {ready}"
                time.sleep(0.1)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
        answer = self.client.post(
            "/api/login", json={"name": "vera", "password": PASSWORDS["vera"]}
        )
        assert answer.status_code == 200, answer.text

    def job(self, job_id: int) -> dict[str, Any]:
        """``GET /api/jobs/{id}``: state, error, QC verdict, outputs, deliveries, events."""
        answer = self.client.get(f"/api/jobs/{job_id}")
        assert answer.status_code == 200, answer.text
        detail: dict[str, Any] = answer.json()
        return detail


@contextmanager
def _serve(
    tmp_path: Path, phantom: PhantomExam, *, stale_s: float | None = None
) -> Iterator[tuple[ServiceProcess, CountingPacs, Api]]:
    """`cordt1 serve` with one viewer login, sending to a fresh test PACS."""
    (viewer,) = [u for u in users() if u["name"] == "vera"]
    login = f'\n[[api.users]]\nname = "vera"\npassword_hash = "{viewer["password_hash"]}"\n'
    with CountingPacs(tmp_path / "pacs") as pacs:
        service = ServiceProcess(
            tmp_path / "svc",
            destination=pacs.destination,
            site_protocols=phantom.site_protocols,
            extra_toml=login,
        )
        if stale_s is not None:
            text = service.config.read_text()
            assert "settle_s = 1.0\n" in text
            service.config.write_text(
                text.replace("settle_s = 1.0\n", f"settle_s = 1.0\nstale_s = {stale_s}\n")
            )
        with service:
            api = Api(service)
            with closing(api.client):
                yield service, pacs, api


def _only_job(service: ServiceProcess) -> Job:
    jobs = service.wait_for_jobs(finished)
    assert len(jobs) == 1, [(j.id, j.state, j.error) for j in jobs]
    return jobs[0]


def _sr_words(path: Path) -> list[str]:
    """Every text value and code meaning of a Structured Report's content tree, depth first."""
    words: list[str] = []

    def walk(items: Any) -> None:
        for item in items:
            if "TextValue" in item:
                words.append(str(item.TextValue))
            for code in item.get("ConceptCodeSequence", []):
                words.append(str(code.CodeMeaning))
            walk(item.get("ContentSequence", []))

    walk(pydicom.dcmread(path).get("ContentSequence", []))
    return words


def _pacs_objects(pacs: CountingPacs) -> dict[Path, Dataset]:
    """File -> header of every object the test PACS stored (one file per C-STORE)."""
    return {p: pydicom.dcmread(p, stop_before_pixels=True) for p in pacs.folder.glob("*.dcm")}


@dataclass(frozen=True)
class Outcome:
    """What a user sees after the scanner sent an exam: the job, its API view, the PACS."""

    job: Job
    detail: dict[str, Any]
    stored: int  # C-STOREs the test PACS received
    in_pacs: dict[Path, Dataset]


def _send_exam(
    tmp_path: Path, phantom: PhantomExam, exam: Path, *, stale_s: float | None = None
) -> Outcome:
    """DCMTK storescu sends ``exam`` to `cordt1 serve`; wait until its one job has ended."""
    with _serve(tmp_path, phantom, stale_s=stale_s) as (service, pacs, api):
        sent = storescu(service.port, [exam])
        assert sent.returncode == 0, sent.stderr
        job = _only_job(service)
        return Outcome(job, api.job(job.id), sum(pacs.counts().values()), _pacs_objects(pacs))


def test_an_inv2_with_another_repetition_time_fails_naming_series_tag_and_values(
    phantom: PhantomExam, tmp_path: Path
) -> None:
    tr_inv1 = float(_header(phantom, "INV1").RepetitionTime)
    tr_inv2 = 1.5 * tr_inv1

    def edit(name: str, ds: Dataset) -> None:
        if "INV2" in name:
            ds.RepetitionTime = tr_inv2

    exam = _exam_copy(phantom, tmp_path / "exam", edit=edit)
    outcome = _send_exam(tmp_path, phantom, exam)
    job, detail, stored = outcome.job, outcome.detail, outcome.stored
    assert job.state is JobState.FAILED, job.error
    assert detail["state"] == "failed" and detail["complete"] is True
    error = detail["error"]
    expected = (
        f"RepetitionTime {tr_inv2:g} ms in INV2 series 5 ('mp2rage_cspine_0.3_INV2') "
        f"vs {tr_inv1:g} ms in INV1 series 4 ('mp2rage_cspine_0.3_INV1')"
    )
    assert error.startswith("the series of slab 1 do not come from one MP2RAGE acquisition")
    assert expected in error, error
    assert any(e["kind"] == "job.failed" and expected in e["message"] for e in detail["events"])
    assert detail["dicom_outputs"] == [] and detail["qc_verdict"] is None
    assert stored == 0  # nothing reached the PACS


def test_an_unusable_scanner_t1_map_is_dropped_with_a_qc_note_and_results_delivered(
    phantom: PhantomExam, tmp_path: Path
) -> None:
    def edit(name: str, ds: Dataset) -> None:
        if "T1MAP" in name:  # every value -1000 ms
            ds.PixelData = np.zeros((ds.Rows, ds.Columns), np.uint16).tobytes()
            ds.RescaleIntercept, ds.RescaleSlope = "-1000", "1"

    exam = _exam_copy(phantom, tmp_path / "exam", edit=edit)
    outcome = _send_exam(tmp_path, phantom, exam)
    job, detail, in_pacs = outcome.job, outcome.detail, outcome.in_pacs
    assert job.state is JobState.DONE, job.error
    note = "slab 1: scanner T1 map not used: T1 map series 7 ('mp2rage_cspine_0.3_T1_Images')"
    why = "no value is positive"
    summary = job.result["summary"]
    assert [r for r in summary["qc"]["reasons"] if note in r] == [
        f"warn: {note}: {why} (all values <= 0)"
    ]
    (slab,) = summary["slabs"]
    assert slab["t1_source"] == "UNI + protocol lookup table"
    assert slab["components"] == ["inv1", "inv2", "uni"]  # the map was not used
    # what the API and web page show: done, QC passed with warnings, results sent
    assert detail["state"] == "done" and detail["error"] == ""
    assert detail["qc_verdict"] == "warn"
    assert [r for r in detail["qc_reasons"] if note in r] == [
        f"warn: {note}: {why} (all values <= 0)"
    ]
    assert any(e["kind"] == "results.sent" for e in detail["events"])
    # every result object reached the PACS, once; the report there says why
    delivered = {
        str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        for path in job.result["dicom"]
    }
    assert delivered and len(in_pacs) == len(delivered)
    assert {str(ds.SOPInstanceUID) for ds in in_pacs.values()} == delivered
    (sr,) = [path for path, ds in in_pacs.items() if ds.Modality == "SR"]
    words = _sr_words(sr)
    assert "QC passed with warnings" in words
    assert any(note in w and why in w for w in words), words


def test_an_exam_without_inv1_reports_the_missing_series_not_the_site_profile(
    phantom: PhantomExam, tmp_path: Path
) -> None:
    exam = _exam_copy(phantom, tmp_path / "exam", keep=("INV2", "UNI", "T1MAP"))
    outcome = _send_exam(tmp_path, phantom, exam, stale_s=3.0)
    job, detail, stored = outcome.job, outcome.detail, outcome.stored
    assert job.state is JobState.FAILED
    # judged by the stale fallback: incomplete, and why
    assert detail["complete"] is False
    assert detail["reason"] == "no instance for 3 s; missing INV1"
    error = detail["error"]
    assert error.startswith(
        "INV1 series missing for slab 1: received INV2, UNI, T1 map (T1 from UNI needs the "
        "inversion times and flip angles their headers carry)"
    ), error
    assert "site_protocols" not in error and "protocol value" not in error
    assert detail["dicom_outputs"] == [] and detail["qc_verdict"] is None
    assert stored == 0
