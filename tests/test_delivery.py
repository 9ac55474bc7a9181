"""Delivery of result objects: recorded per object and destination, never sent twice."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from dicom_node.scu import Destination, send
from service.jobs.delivery import deliver, result_objects
from service.jobs.operator import OperatorError, cancel_job, lease_text, resend_job, retry_job
from service.jobs.store import DeliveryStatus, JobState, JobStore
from service.jobs.tasks import JobRunner, SendOutcome
from service.phantom.pacs import FolderPacs, free_port
from service.settings import Settings
from tests.counting_pacs import CountingPacs

STUDY = "1.2.826.0.1.3680043.8.498.1"


def _object(folder: Path, index: int) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = f"{STUDY}.{index}"
    ds.Modality = "OT"
    ds.PatientID = "X"
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.zeros((4, 4), np.uint8).tobytes()
    path = folder / f"obj{index}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    (tmp_path / "results").mkdir()
    return [_object(tmp_path / "results", i) for i in range(4)]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    js = JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    yield js
    js.close()


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[CountingPacs]:
    with CountingPacs(tmp_path / "pacs") as running:
        yield running


def _sending_job(store: JobStore, files: list[Path], destinations: list[str]) -> int:
    job_id = store.create_job(
        study_uid=STUDY, patient_key="k", series_uids=["1"], n_instances=1, complete=True
    )
    run = store.claim(job_id, "w", lease_s=60)
    result = {"run": run, "dicom": [str(p) for p in files], "destinations": destinations}
    assert store.finish(job_id, "w", JobState.SENDING, result=result, wait_s=60)
    return job_id


def test_a_second_delivery_sends_only_what_was_not_confirmed(
    store: JobStore, files: list[Path], pacs: CountingPacs
) -> None:
    objects = result_objects(files)
    uids = [o.sop_instance_uid for o in objects]
    # as if a first attempt confirmed two objects, then died
    store.record_delivery(1, 1, uids[0], pacs.destination, DeliveryStatus.SENT)
    store.record_delivery(1, 1, uids[1], pacs.destination, DeliveryStatus.SENT)
    report = deliver(store, 1, 1, pacs.destination, objects, calling_ae="CORDT1", timeout_s=10)
    assert (report.sent, report.already, report.complete) == (2, 2, True)
    assert pacs.counts() == {uids[2]: 1, uids[3]: 1}
    again = deliver(store, 1, 1, pacs.destination, objects, calling_ae="CORDT1", timeout_s=10)
    assert again.sent == 0 and pacs.counts() == {uids[2]: 1, uids[3]: 1}
    assert set(store.delivery_status(1, 1, pacs.destination).values()) == {DeliveryStatus.SENT}


def test_an_object_in_doubt_is_looked_up_and_not_sent_twice(
    store: JobStore, files: list[Path], pacs: CountingPacs
) -> None:
    objects = result_objects(files)
    in_doubt = objects[0]
    # the sender died after the PACS stored it, before it heard the answer
    send([in_doubt.path], Destination.parse(pacs.destination), calling_ae="CORDT1")
    store.record_delivery(
        1, 1, in_doubt.sop_instance_uid, pacs.destination, DeliveryStatus.SENDING
    )
    report = deliver(store, 1, 1, pacs.destination, objects, calling_ae="CORDT1", timeout_s=10)
    assert (report.found_in_doubt, report.sent) == (1, 3)
    assert sorted(pacs.counts().values()) == [1, 1, 1, 1]


def test_an_object_in_doubt_is_sent_again_when_the_destination_answers_no_query(
    store: JobStore, files: list[Path], tmp_path: Path
) -> None:
    """A storage-only destination (no C-FIND): nothing can be confirmed, so all are sent."""
    objects = result_objects(files)
    in_doubt = objects[0]
    pacs = FolderPacs.start(tmp_path / "folder-pacs")
    try:
        send([in_doubt.path], Destination.parse(pacs.destination), calling_ae="CORDT1")
        store.record_delivery(
            1, 1, in_doubt.sop_instance_uid, pacs.destination, DeliveryStatus.SENDING
        )
        report = deliver(store, 1, 1, pacs.destination, objects, calling_ae="CORDT1", timeout_s=10)
        held = pacs.sop_instance_uids(STUDY)
    finally:
        pacs.stop()
    assert (report.found_in_doubt, report.sent, report.complete) == (0, 4, True)
    assert held == {obj.sop_instance_uid for obj in objects}  # once each: re-sent, replaced
    statuses = {r.sop_instance_uid: r.status for r in store.delivery_records(1)}
    assert set(statuses.values()) == {DeliveryStatus.SENT}


def test_an_unreachable_destination_records_failures_and_sends_nothing(
    store: JobStore, files: list[Path]
) -> None:
    dead = f"NOBODY@127.0.0.1:{free_port()}"
    report = deliver(store, 1, 1, dead, result_objects(files), calling_ae="CORDT1", timeout_s=5)
    assert not report.complete and "connection refused" in report.errors[0]
    assert DeliveryStatus.SENT not in store.delivery_status(1, 1, dead).values()


def test_a_bad_destination_fails_the_job_with_its_reason(
    store: JobStore, files: list[Path], tmp_path: Path
) -> None:
    job_id = _sending_job(store, files, ["PACS"])
    runner = JobRunner(Settings(data_dir=tmp_path / "data"), store)
    assert runner.send(job_id) is SendOutcome.FAILED
    job = store.get_job(job_id)
    assert job.state is JobState.FAILED
    assert "bad destination" in job.error and "'PACS' has no AE title" in job.error


def test_settings_refuse_a_destination_without_host_and_port() -> None:
    with pytest.raises(ValueError, match="no AE title before '@'"):
        Settings(send={"destinations": ["PACS"]})


def test_runner_send_delivers_once_and_resend_is_explicit(
    store: JobStore, files: list[Path], pacs: CountingPacs, tmp_path: Path
) -> None:
    job_id = _sending_job(store, files, [pacs.destination])
    runner = JobRunner(Settings(data_dir=tmp_path / "data"), store)
    assert runner.send(job_id) is SendOutcome.SENT
    assert store.get_job(job_id).state is JobState.DONE
    assert runner.send(job_id) is SendOutcome.SKIPPED  # a duplicate message sends nothing
    assert sorted(pacs.counts().values()) == [1, 1, 1, 1]
    with pytest.raises(OperatorError, match="cordt1 resend"):
        retry_job(store, job_id, operator="bob", reason="again?")
    resend_job(store, job_id, operator="bob", reason="PACS lost the study")
    assert runner.send(job_id) is SendOutcome.SENT
    assert sorted(pacs.counts().values()) == [2, 2, 2, 2]
    messages = [e["message"] for e in store.events(job_id=job_id)]
    assert any("re-send to" in m and "by bob: PACS lost the study" in m for m in messages)


def test_every_unfinished_state_has_a_way_out(store: JobStore, files: list[Path]) -> None:
    def job() -> int:
        return store.create_job(
            study_uid=STUDY, patient_key="k", series_uids=["1"], n_instances=1, complete=True
        )

    queued = job()
    assert retry_job(store, queued, operator="ann", reason="message lost").endswith("process_job")
    running = job()
    store.claim(running, "w", lease_s=60)
    with pytest.raises(OperatorError, match="held by w"):
        retry_job(store, running, operator="ann", reason="stuck?")
    assert "held by w" in lease_text(store.get_job(running))
    store.renew(running, "w", lease_s=0.01)
    import time

    time.sleep(0.05)
    assert "STALE lease" in lease_text(store.get_job(running))
    assert retry_job(store, running, operator="ann", reason="worker died").endswith("process_job")
    assert store.get_job(running).state is JobState.QUEUED
    sending = _sending_job(store, files, ["A@127.0.0.1:1"])
    task = retry_job(store, sending, operator="ann", reason="PACS back")
    assert task.endswith("send_results")
    failed = job()
    store.claim(failed, "w", lease_s=60)
    store.finish(failed, "w", JobState.FAILED, error="no UNI")
    assert retry_job(store, failed, operator="ann", reason="sent again").endswith("process_job")
    cancel_job(store, failed, operator="ann", reason="duplicate exam")
    assert store.get_job(failed).error == "cancelled by ann: duplicate exam"
    with pytest.raises(OperatorError, match="only unfinished"):
        cancel_job(store, failed, operator="ann", reason="twice")
    kinds = [e["kind"] for e in store.events()]
    assert kinds.count("operator.retry") == 4 and "job.cancelled" in kinds


def test_a_crash_while_sending_counts_as_a_failed_attempt_and_ends_failed(
    store: JobStore, files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("association state machine confused")

    monkeypatch.setattr("service.jobs.tasks.deliver", crash)
    job_id = _sending_job(store, files, ["PACS@127.0.0.1:104"])
    settings = Settings(data_dir=tmp_path / "data", send={"attempts": 2, "retry_interval_s": 0})
    runner = JobRunner(settings, store)
    assert runner.send(job_id) is SendOutcome.RETRY
    job = store.get_job(job_id)
    assert job.state is JobState.SENDING and "attempt 1 of 2 failed" in job.error
    assert "internal error: RuntimeError" in job.error
    assert runner.send(job_id) is SendOutcome.FAILED
    job = store.get_job(job_id)
    assert job.state is JobState.FAILED and "after 2 attempt(s)" in job.error
