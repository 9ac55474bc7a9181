"""A corrected instance sent again re-runs its exam and the new run supersedes the old one;
an identical re-send starts nothing."""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from dicom_node.scu import Destination, send
from service.jobs.corrections import (
    DIGEST_KEY,
    changed_series,
    input_digests,
    rerun_if_changed,
)
from service.jobs.store import Job, JobState, JobStore
from service.server import Service
from service.settings import Settings
from tests.api_fixtures import broker_messages
from tests.counting_pacs import CountingPacs
from tests.service_harness import ServiceProcess, make_exams, storescu
from tests.test_dicom_node_factories import make_mr


def _row(sop_uid: str, series_uid: str, path: Path) -> dict[str, object]:
    return {
        "sop_instance_uid": sop_uid,
        "study_uid": "1.2.3",
        "series_uid": series_uid,
        "component": "INV2",
        "path": str(path),
        "calling_ae": "SCANNER",
        "received_at": time.time(),
        "own_result": False,
        "info": "{}",
    }


def _finished_job(store: JobStore, series_uid: str, state: JobState) -> Job:
    """A job that ran once over the series' current files and ended in ``state``."""
    job_id = store.create_job(
        study_uid="1.2.3", patient_key="k", series_uids=[series_uid], n_instances=2, complete=True
    )
    run = store.claim(job_id, "w", lease_s=60)
    digests = input_digests(store.instance_paths([series_uid]))
    store.finish(job_id, "w", state, result={"run": run, DIGEST_KEY: digests})
    return store.get_job(job_id)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    job_store = JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    yield job_store
    job_store.close()


def test_only_changed_content_queues_a_new_run(store: JobStore, tmp_path: Path) -> None:
    files = [tmp_path / "a.dcm", tmp_path / "b.dcm"]
    for i, path in enumerate(files):
        path.write_bytes(b"DICM" + bytes([i]) * 100)
    store.record_instances([_row(f"1.{i}", "1.2.3.5", p) for i, p in enumerate(files)])
    job = _finished_job(store, "1.2.3.5", JobState.DONE)
    names = {"1.2.3.5": "series 5 ('mp2_INV2')"}

    files[1].write_bytes(files[1].read_bytes())  # identical re-send: same bytes
    assert changed_series(job, input_digests(store.instance_paths(job.series_uids))) == []
    assert rerun_if_changed(store, job, series_names=names) is False
    assert store.get_job(job.id).state is JobState.DONE

    files[1].write_bytes(b"DICM" + b"\x07" * 100)  # a corrected copy
    assert rerun_if_changed(store, job, series_names=names) is True
    again = store.get_job(job.id)
    assert again.state is JobState.QUEUED
    (event,) = [e for e in store.events(job_id=job.id) if e["kind"] == "job.requeued"]
    assert (
        "corrected instance(s) of series 5 ('mp2_INV2') received after run 1 (done)"
        in (event["message"])
    )
    assert store.claim(job.id, "w2", lease_s=60) == 2  # the new run gets its own folder


def test_a_failed_job_reruns_and_a_cancelled_one_only_says_why_not(
    store: JobStore, tmp_path: Path
) -> None:
    path = tmp_path / "a.dcm"
    path.write_bytes(b"broken")
    store.record_instances([_row("1.0", "1.2.3.5", path)])
    failed = _finished_job(store, "1.2.3.5", JobState.FAILED)
    path.write_bytes(b"good copy")
    assert rerun_if_changed(store, failed, series_names={}) is True

    cancelled_id = store.create_job(
        study_uid="1.2.3", patient_key="k", series_uids=["1.2.3.5"], n_instances=1, complete=True
    )
    store.cancel(cancelled_id, operator="otto", reason="wrong patient")
    cancelled = store.get_job(cancelled_id)
    assert rerun_if_changed(store, cancelled, series_names={}) is False
    assert store.get_job(cancelled_id).state is JobState.CANCELLED
    messages = [e["message"] for e in store.events(job_id=cancelled_id)]
    assert any("the job was cancelled, so it is not processed again" in m for m in messages)
    queued = store.create_job(
        study_uid="1.2.3", patient_key="k", series_uids=["1.2.3.5"], n_instances=1, complete=True
    )
    assert rerun_if_changed(store, store.get_job(queued), series_names={}) is False


@pytest.fixture
def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Service]:
    monkeypatch.delenv("CORDT1_CONFIG", raising=False)
    settings = Settings(
        data_dir=tmp_path / "data",
        workers=0,
        node={"host": "127.0.0.1", "port": 0, "min_free_mb": 0, "settle_s": 0.5},
        api={"enabled": False},
    )
    svc = Service(settings)
    svc.scp.start()
    yield svc
    svc.scp.stop()
    svc.store.close()


def _send_and_dispatch(service: Service, ds: Dataset, expected_received: int) -> list[int]:
    port = service.scp.port
    assert port is not None
    send([ds], Destination("CORDT1", "127.0.0.1", port), calling_ae="SCANNER")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        received = sum(
            "accepted" in e["message"]
            for e in service.store.events()
            if e["kind"] == "association"
        )
        if received >= expected_received:
            break
        time.sleep(0.05)
    assert service.batcher.flush()
    return service.dispatch_ready(now=time.time() + 5.0)


def test_the_dispatcher_reruns_a_finished_job_only_for_new_content(service: Service) -> None:
    original = make_mr(component="T1MAP", images_in_acquisition=1)
    (job_id,) = _send_and_dispatch(service, original, 1)
    # the worker's part: one run over the files, with their digests
    job = service.store.get_job(job_id)
    run = service.store.claim(job_id, "w", lease_s=60)
    digests = input_digests(service.store.instance_paths(job.series_uids))
    service.store.finish(job_id, "w", JobState.DONE, result={"run": run, DIGEST_KEY: digests})

    assert _send_and_dispatch(service, original, 2) == []  # identical: nothing
    assert service.store.get_job(job_id).state is JobState.DONE
    corrected = copy.deepcopy(original)
    pixels = np.frombuffer(original.PixelData, np.uint16).copy()
    pixels[:10] += 1
    corrected.PixelData = pixels.tobytes()
    assert _send_and_dispatch(service, corrected, 3) == [job_id]
    assert service.store.get_job(job_id).state is JobState.QUEUED
    assert len(service.store.list_jobs()) == 1
    tasks = [m["task"] for m in broker_messages(service.settings.data_dir)]
    assert tasks == ["cordt1.process_job", "cordt1.process_job"]


def test_a_correction_received_just_before_a_restart_is_not_lost(service: Service) -> None:
    original = make_mr(component="T1MAP", images_in_acquisition=1)
    (job_id,) = _send_and_dispatch(service, original, 1)
    job = service.store.get_job(job_id)
    run = service.store.claim(job_id, "w", lease_s=60)
    digests = input_digests(service.store.instance_paths(job.series_uids))
    service.store.finish(job_id, "w", JobState.DONE, result={"run": run, DIGEST_KEY: digests})
    corrected = copy.deepcopy(original)
    corrected.PixelData = bytes(len(original.PixelData))
    port = service.scp.port
    assert port is not None
    send([corrected], Destination("CORDT1", "127.0.0.1", port), calling_ae="SCANNER")
    assert service.batcher.flush()
    service.scp.stop()  # `serve` stops before the re-send settled
    service.batcher.close()

    restarted = Service(service.settings)
    try:
        restarted.recover()
        assert restarted.dispatch_ready(now=time.time() + 5.0) == [job_id]
        assert restarted.store.get_job(job_id).state is JobState.QUEUED
        assert restarted.dispatch_ready(now=time.time() + 10.0) == []  # once
    finally:
        restarted.store.close()


@pytest.mark.slow
def test_a_corrected_inv2_resent_reruns_the_exam_and_supersedes_its_results(
    tmp_path: Path,
) -> None:
    exam = make_exams(tmp_path / "phantom", matrix=64, slices_per_slab=4, slabs=1)[0]
    with (
        CountingPacs(tmp_path / "pacs") as pacs,
        ServiceProcess(
            tmp_path / "svc", destination=pacs.destination, site_protocols=exam.site_protocols
        ) as service,
        closing(service.store()) as store,
    ):
        assert storescu(service.port, [exam.dicom_dir]).returncode == 0
        (first,) = service.wait_for_jobs(lambda jobs: [j.state for j in jobs] == [JobState.DONE])
        assert first.result["run"] == 1
        first_objects = set(pacs.counts())
        assert first_objects  # delivered

        inv2 = sorted(exam.dicom_dir.glob("*INV2*/*.dcm"))[1]
        ds = pydicom.dcmread(inv2)
        pixels = ds.pixel_array.copy()
        pixels[10:20, 10:20] = pixels.max()
        ds.PixelData = pixels.tobytes()
        corrected = tmp_path / "corrected.dcm"
        ds.save_as(corrected)
        assert storescu(service.port, [corrected]).returncode == 0
        (second,) = service.wait_for_jobs(
            lambda jobs: (
                len(jobs) == 1
                and jobs[0].state is JobState.DONE
                and jobs[0].result.get("run") == 2
            )
        )
        assert second.id == first.id
        job_dir = Path(second.result["out_dir"]).parent
        assert os.readlink(job_dir / "current") == "run-002"
        assert (job_dir / "run-001").is_dir()  # the old run is kept, no longer current
        new_objects = {s["result_sop_instance_uid"] for s in second.result["summary"]["slabs"]}
        assert new_objects <= set(pacs.counts()) and not new_objects & first_objects
        deliveries = store.delivery_records(second.id)
        assert {d.run for d in deliveries} == {1, 2}
        assert len([d for d in deliveries if d.run == 2]) == len(second.result["dicom"])
        messages = [e["message"] for e in store.events(job_id=second.id)]
        assert any("corrected instance(s) of series 5" in m for m in messages)

        # the same corrected copy again: no new run (absence shown by waiting 3 x settle)
        stored = sum(pacs.counts().values())
        assert storescu(service.port, [corrected]).returncode == 0
        time.sleep(3.0)
        (third,) = store.list_jobs()
        assert third.result["run"] == 2 and third.attempts == second.attempts
        assert sum(pacs.counts().values()) == stored


def test_a_failed_run_records_what_it_read(store: JobStore, tmp_path: Path) -> None:
    from service.jobs.tasks import JobRunner

    ds = make_mr(component="UNI", images_in_acquisition=1)  # no geometry: a broken instance
    path = tmp_path / "uni.dcm"
    ds.save_as(path, enforce_file_format=True)
    series = str(ds.SeriesInstanceUID)
    store.record_instances([{**_row(str(ds.SOPInstanceUID), series, path), "component": "UNI"}])
    job_id = store.create_job(
        study_uid="1.2.3", patient_key="k", series_uids=[series], n_instances=1, complete=True
    )
    runner = JobRunner(Settings(data_dir=tmp_path / "data"), store)
    assert runner.process(job_id) is False
    job = store.get_job(job_id)
    assert job.state is JobState.FAILED
    assert "has no ImagePositionPatient" in job.error
    assert job.result == {"run": 1, DIGEST_KEY: input_digests({series: [path]})}
    assert rerun_if_changed(store, job, series_names={}) is False  # nothing changed since
