"""End to end: DCMTK storescu as the scanner -> `cordt1 serve` -> a real Orthanc as the PACS."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pydicom
import pytest

from service.jobs.store import JobState
from service.phantom.pacs import OrthancPacs, free_port, orthanc_binary
from tests.service_harness import PhantomExam, ServiceProcess, finished, make_exams, storescu

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exam(tmp_path_factory: pytest.TempPathFactory) -> PhantomExam:
    return make_exams(tmp_path_factory.mktemp("phantom"), seed=21)[0]


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancPacs]:
    assert orthanc_binary(), "Orthanc is not installed (scripts/bootstrap.sh installs it)"
    pacs = OrthancPacs.start(tmp_path / "orthanc")
    yield pacs
    pacs.stop()


def _dciodvfy_errors(data: bytes, tmp_path: Path) -> list[str]:
    path = tmp_path / "check.dcm"
    path.write_bytes(data)
    out = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def _check_results_in_pacs(
    pacs: OrthancPacs, exam: PhantomExam, service: ServiceProcess, tmp_path: Path
) -> None:
    jobs = service.wait_for_jobs(finished)
    assert [j.state for j in jobs] == [JobState.DONE], [j.error for j in jobs]
    job = jobs[0]
    expected = {slab["result_sop_instance_uid"] for slab in job.result["summary"]["slabs"]}
    assert len(expected) == 2  # one T1 map per slab
    in_pacs = pacs.sop_instance_uids(exam.study_uid)
    assert expected <= in_pacs
    uni_uids = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
        for p in exam.dicom_dir.glob("*UNI*/*.dcm")
    }
    for uid in expected:
        data = pacs.instance_file(uid)
        pm = pydicom.dcmread(io.BytesIO(data))
        assert pm.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"  # Parametric Map
        assert pm.StudyInstanceUID == exam.study_uid
        assert "DERIVED" in pm.ImageType
        assert pm.Manufacturer == "cordt1"
        referenced = {
            ref.ReferencedSOPInstanceUID
            for series in pm.ReferencedSeriesSequence
            for ref in series.ReferencedInstanceSequence
        }
        assert referenced and referenced <= uni_uids
        assert _dciodvfy_errors(data, tmp_path) == []
    events = [e["kind"] for e in service.store().events(limit=500)]
    assert "association" in events and "results.sent" in events
    # the worker loaded the DICOM tables and fonts before its first job, in its main process
    assert "worker warmed up" in service.log_text()


def test_exam_from_scanner_reaches_the_pacs_with_embedded_defaults(
    exam: PhantomExam, orthanc: OrthancPacs, tmp_path: Path
) -> None:
    with ServiceProcess(
        tmp_path, destination=orthanc.destination, site_protocols=exam.site_protocols
    ) as service:
        sent = storescu(service.port, [exam.dicom_dir])
        assert sent.returncode == 0, sent.stderr
        _check_results_in_pacs(orthanc, exam, service, tmp_path)


def test_exam_reaches_the_pacs_through_redis_and_postgresql(
    exam: PhantomExam,
    orthanc: OrthancPacs,
    tmp_path: Path,
    redis_url: str,
    postgres_url: str,
) -> None:
    with ServiceProcess(
        tmp_path,
        destination=orthanc.destination,
        site_protocols=exam.site_protocols,
        broker=redis_url.rsplit("/", 1)[0] + "/7",
        database_url=postgres_url,
    ) as service:
        sent = storescu(service.port, [exam.dicom_dir])
        assert sent.returncode == 0, sent.stderr
        _check_results_in_pacs(orthanc, exam, service, tmp_path)


def test_missing_protocol_values_fail_the_job_with_a_clear_error(
    exam: PhantomExam, orthanc: OrthancPacs, tmp_path: Path
) -> None:
    empty_profile = tmp_path / "site.toml"
    empty_profile.write_text("")
    with ServiceProcess(
        tmp_path, destination=orthanc.destination, site_protocols=empty_profile
    ) as service:
        assert storescu(service.port, [exam.dicom_dir]).returncode == 0
        jobs = service.wait_for_jobs(finished)
        assert [j.state for j in jobs] == [JobState.FAILED]
        assert "echo_spacing_s" in jobs[0].error and "n_excitations" in jobs[0].error
        assert orthanc.sop_instance_uids(exam.study_uid) == set()


def test_pacs_down_is_retried_then_failed_and_retry_delivers(
    exam: PhantomExam, tmp_path: Path
) -> None:
    dead_port = free_port()
    service = ServiceProcess(
        tmp_path,
        destination=f"ORTHANC@127.0.0.1:{dead_port}",
        site_protocols=exam.site_protocols,
        extra_toml="",
    )
    text = service.config.read_text()
    service.config.write_text(
        text.replace("attempts = 3", "attempts = 2").replace(
            "retry_interval_s = 5", "retry_interval_s = 1"
        )
    )
    with service:
        assert storescu(service.port, [exam.dicom_dir]).returncode == 0
        jobs = service.wait_for_jobs(finished)
        assert [j.state for j in jobs] == [JobState.FAILED]
        assert "not delivered after 2 attempt(s)" in jobs[0].error
        assert f"127.0.0.1:{dead_port}" in jobs[0].error


def test_unknown_calling_ae_is_rejected_and_recorded(
    exam: PhantomExam, orthanc: OrthancPacs, tmp_path: Path
) -> None:
    service = ServiceProcess(
        tmp_path,
        destination=orthanc.destination,
        site_protocols=exam.site_protocols,
    )
    text = service.config.read_text()
    service.config.write_text(
        text.replace("[send]", '[node.allowed_calling_aes]\nMR7T = "127.0.0.1"\n\n[send]')
    )
    with service:
        rejected = storescu(service.port, [exam.dicom_dir], calling_ae="INTRUDER")
        assert rejected.returncode != 0
        accepted = storescu(service.port, [exam.dicom_dir], calling_ae="MR7T")
        assert accepted.returncode == 0, accepted.stderr
        jobs = service.wait_for_jobs(finished)
        assert [j.state for j in jobs] == [JobState.DONE]
        messages = [e["message"] for e in service.store().events(limit=500)]
        assert any("INTRUDER" in m and "rejected" in m for m in messages)
        assert not list((service.data_dir / "spool").rglob("*INTRUDER*"))


def test_results_sent_back_by_the_pacs_start_no_job(
    exam: PhantomExam, orthanc: OrthancPacs, tmp_path: Path
) -> None:
    with (
        ServiceProcess(
            tmp_path, destination=orthanc.destination, site_protocols=exam.site_protocols
        ) as service,
        closing(service.store()) as store,
    ):
        assert storescu(service.port, [exam.dicom_dir]).returncode == 0
        jobs = service.wait_for_jobs(finished)
        result_files = [Path(p) for p in jobs[0].result["dicom"]]
        echoed = storescu(service.port, result_files, calling_ae="ORTHANC", extra=("-R",))
        assert echoed.returncode == 0, echoed.stderr
        # Received rows are committed in batches (record_flush_ms): wait for the last batch.
        deadline = time.monotonic() + 10.0
        while True:
            own = [i for i in store.instance_infos(include_own=True) if i["is_own_result"]]
            if len(own) >= len(result_files) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert len(own) == len(result_files)
        # Absence of a job can only be shown by waiting: three times the settle time.
        time.sleep(3.0)
        assert len(store.list_jobs()) == 1


def test_jobs_queued_while_no_worker_runs_finish_after_a_restart(
    exam: PhantomExam, orthanc: OrthancPacs, tmp_path: Path
) -> None:
    with ServiceProcess(
        tmp_path,
        destination=orthanc.destination,
        site_protocols=exam.site_protocols,
        workers=0,
    ) as receiver:
        assert storescu(receiver.port, [exam.dicom_dir]).returncode == 0
        jobs = receiver.wait_for_jobs(lambda js: len(js) == 1)
        assert jobs[0].state is JobState.QUEUED
    text = receiver.config.read_text().replace("workers = 0", "workers = 1")
    receiver.config.write_text(text)
    with receiver as restarted:
        jobs = restarted.wait_for_jobs(finished)
        assert [j.state for j in jobs] == [JobState.DONE]
        assert jobs[0].attempts == 1  # delivered once, even though it was queued twice


def test_serve_flags_override_the_configuration(tmp_path: Path) -> None:
    from service.phantom.demo import dcmtk_tool
    from service.phantom.pacs import wait_for_port

    port = free_port()
    command = [
        sys.executable,
        "-m",
        "service.cli",
        "serve",
        "--ae-title",
        "FLAGAET",
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "--data-dir",
        str(tmp_path / "d"),
        "--destination",
        "PACS@127.0.0.1:1",
        "--workers",
        "0",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, timeout_s=60)
        echoscu = dcmtk_tool("echoscu")
        assert echoscu
        good = subprocess.run([echoscu, "-aec", "FLAGAET", "127.0.0.1", str(port)], check=False)
        bad = subprocess.run([echoscu, "-aec", "CORDT1", "127.0.0.1", str(port)], check=False)
        assert good.returncode == 0 and bad.returncode != 0
        assert (tmp_path / "d" / "jobs.sqlite").exists()
    finally:
        process.terminate()
        process.wait(timeout=60)


def test_service_scores_against_a_normative_model(orthanc: OrthancPacs, tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from service.inputs.protocol import load_site_protocols
    from service.pipeline.model_build import build_model

    controls = make_exams(tmp_path / "controls", controls=5, patients=0, seed=41)
    patient = make_exams(tmp_path / "patients", seed=42)[0]
    build_model(
        tmp_path / "controls",
        tmp_path / "model",
        profiles=load_site_protocols(controls[0].site_protocols),
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    with ServiceProcess(
        tmp_path / "svc",
        destination=orthanc.destination,
        site_protocols=patient.site_protocols,
        model_dir=tmp_path / "model",
    ) as service:
        assert storescu(service.port, [patient.dicom_dir]).returncode == 0
        jobs = service.wait_for_jobs(finished)
        assert [j.state for j in jobs] == [JobState.DONE], [j.error for j in jobs]
        summary = jobs[0].result["summary"]
        assert summary["model"]["n_controls"] == 5
        assert summary["qc"]["verdict"] != "fail", summary["qc"]
        assert "cord" in summary["abnormal_percent"]
        z_maps = {s["z_sop_instance_uid"] for s in summary["slabs"]}
        in_pacs = orthanc.sop_instance_uids(patient.study_uid)
        assert len(z_maps) == 2 and z_maps <= in_pacs
        # Every object of the exam is in the PACS, of every kind, and each one validates.
        classes = {}
        for path in jobs[0].result["dicom"]:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            assert ds.SOPInstanceUID in in_pacs
            classes[ds.SOPClassUID.name] = classes.get(ds.SOPClassUID.name, 0) + 1
            data = orthanc.instance_file(ds.SOPInstanceUID)
            assert _dciodvfy_errors(data, tmp_path) == [], ds.SOPClassUID.name
        assert classes["Parametric Map Storage"] == 4
        assert classes["Segmentation Storage"] == 4  # per slab: clinical and anatomy layer
        # T1 and Z as derived MR images, one per UNI slice of each slab
        slices = sum(int(entry["shape"][0]) for entry in summary["slabs"])
        assert classes["MR Image Storage"] == 2 * slices
        assert classes["Comprehensive 3D SR Storage"] == 1
        assert classes["Encapsulated PDF Storage"] == 1
        assert classes["Secondary Capture Image Storage"] >= 2
        assert orthanc.find("Series", {"StudyInstanceUID": patient.study_uid, "Modality": "SEG"})


def test_scanner_exam_with_a_gre_and_a_coarse_b1_map_uses_both(
    orthanc: OrthancPacs, tmp_path: Path
) -> None:
    """Series on their own grids arrive with the exam, join its job and are used."""
    exam = make_exams(
        tmp_path / "phantom",
        seed=23,
        slices_per_slab=8,
        enhanced=True,
        t2star=True,
        t2star_shift_mm=(0.3, -0.3, 0.0),
        b1_map=True,
        b1_grid="coarse",
    )[0]
    with ServiceProcess(
        tmp_path / "svc", destination=orthanc.destination, site_protocols=exam.site_protocols
    ) as service:
        assert storescu(service.port, [exam.dicom_dir]).returncode == 0
        jobs = service.wait_for_jobs(finished)
        assert [j.state for j in jobs] == [JobState.DONE], [j.error for j in jobs]
        summary = jobs[0].result["summary"]
    assert summary["b1_corrected"] is True
    for entry in summary["slabs"]:
        assert {"b1map", "t2star"} <= set(entry["components"])
        assert "resampled from 3.5 x 3.5 x 5 mm" in entry["b1_note"]
        evidence = entry["gm_wm_evidence"]
        assert evidence["source"] == "T1 + T2*-weighted GRE", evidence
        assert len(evidence["t2star_echo_times_ms"]) == 4
        # axial slabs: rows along +y, columns along +x
        shift = evidence["t2star_alignment"]["shift_mm"]
        assert abs(shift[0] + 0.3) < 0.15 and abs(shift[1] - 0.3) < 0.15, shift
    assert set(orthanc.sop_instance_uids(exam.study_uid)) >= {
        s["result_sop_instance_uid"] for s in summary["slabs"]
    }
