"""Retention: old exams go by age or disk pressure, never work in progress or undelivered."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from service.jobs.operator import OperatorError, resend_job
from service.jobs.retention import purge, purge_totals
from service.jobs.store import DeliveryStatus, JobState, JobStore
from service.settings import Settings, load_settings

DAY_S = 86400.0
MIB = 1024 * 1024
DEST = "PACS@127.0.0.1:104"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(
        data_dir=tmp_path / "data",
        retention={"spool_days": 30, "results_days": 60, "keep_received_s": 60},
    )


@pytest.fixture
def store(settings: Settings) -> JobStore:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    job_store = JobStore(settings.job_store_url)
    yield job_store
    job_store.close()


class Exam:
    """One received exam with a job: spool files, a results folder, its delivery state."""

    def __init__(self, settings: Settings, store: JobStore, n: int, *, size: int = 1000) -> None:
        self.study = f"1.2.826.0.1.{n}"
        self.series = f"{self.study}.1"
        self.files: list[Path] = []
        received = time.time() - 120
        for i in range(3):
            sop = f"{self.series}.{i + 1}"
            path = settings.spool_dir / self.study / self.series / f"{sop}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x" * size)
            self.files.append(path)
            store.record_instance(
                sop_instance_uid=sop,
                study_uid=self.study,
                series_uid=self.series,
                component="uni",
                path=str(path),
                calling_ae="SCANNER",
                received_at=received,
                own_result=False,
                info={"study_uid": self.study, "patient_key": "k"},
            )
        self.job_id = store.create_job(
            study_uid=self.study,
            patient_key="k",
            series_uids=[self.series],
            n_instances=3,
            complete=True,
        )
        self.results = settings.results_dir / f"job-{self.job_id:06d}"
        run = self.results / "run-001"
        run.mkdir(parents=True)
        self.objects = [run / "report.dcm", run / "seg.dcm"]
        for path in self.objects:
            path.write_bytes(b"r" * size)
        self.result = {
            "run": 1,
            "out_dir": str(run),
            "dicom": [str(p) for p in self.objects],
            "summary": {"study_uid": self.study, "t1_ms": 1234.0},
            "destinations": [DEST],
        }

    def finish(self, store: JobStore, state: JobState, *, delivered: int = 2) -> Exam:
        store.set_state(self.job_id, state, result=self.result)
        for i in range(delivered):
            store.record_delivery(self.job_id, 1, f"{self.study}.9.{i}", DEST, DeliveryStatus.SENT)
        return self

    @property
    def kept(self) -> bool:
        return all(p.is_file() for p in self.files) and self.results.is_dir()

    @property
    def gone(self) -> bool:
        return not any(p.exists() for p in self.files) and not self.results.exists()


def test_only_a_done_and_delivered_exam_is_purged(settings: Settings, store: JobStore) -> None:
    exams = {
        state: Exam(settings, store, n).finish(store, state, delivered=0)
        for n, state in enumerate(
            [JobState.QUEUED, JobState.RUNNING, JobState.SENDING, JobState.FAILED], start=1
        )
    }
    cancelled = Exam(settings, store, 5).finish(store, JobState.CANCELLED, delivered=0)
    undelivered = Exam(settings, store, 6).finish(store, JobState.DONE, delivered=1)
    delivered = Exam(settings, store, 7).finish(store, JobState.DONE, delivered=2)
    late = time.time() + 365 * DAY_S  # every age trigger fires

    report = purge(settings, store, now=late)

    assert [e.job_id for e in report.exams] == [delivered.job_id]
    assert delivered.gone
    assert all(exam.kept for exam in [*exams.values(), cancelled, undelivered])
    job = store.get_job(delivered.job_id)
    assert job.state is JobState.DONE and job.result["summary"]["t1_ms"] == 1234.0
    assert set(job.result["purged"]) == {"spool", "results"}
    assert job.result["purged"]["spool"]["bytes"] == 3000
    assert report.bytes == 5000
    line = store.events(job_id=delivered.job_id, limit=1)[0]
    assert line["kind"] == "retention.purged"
    assert "spool (3 file(s), 3000 bytes)" in line["message"]
    assert "results (2000 bytes)" in line["message"]
    assert delivered.study not in line["message"]  # the job id names the exam, nothing else
    with pytest.raises(OperatorError, match="purged"):
        resend_job(store, delivered.job_id, operator="op", reason="PACS lost it")


def test_age_triggers_per_kind(settings: Settings, store: JobStore) -> None:
    exam = Exam(settings, store, 1).finish(store, JobState.DONE)
    start = time.time()

    assert purge(settings, store, now=start + 10 * DAY_S).exams == []
    assert exam.kept

    report = purge(settings, store, now=start + 31 * DAY_S)
    assert not any(p.exists() for p in exam.files) and exam.results.is_dir()
    assert "spool older than 30 days" in report.exams[0].reason

    report = purge(settings, store, now=start + 61 * DAY_S)
    assert exam.gone and report.exams[0].spool_files == []
    assert purge(settings, store, now=start + 400 * DAY_S).exams == []  # nothing left
    totals = purge_totals(store)
    assert totals.exams == 2 and totals.bytes == 5000 and totals.last_bytes == 0


def test_disk_pressure_purges_the_oldest_delivered_exams_first(
    settings: Settings, store: JobStore
) -> None:
    pressed = settings.model_copy(
        update={
            "retention": settings.retention.model_copy(
                update={"min_free_mb": 100, "spool_days": None, "results_days": None}
            )
        }
    )
    oldest = Exam(settings, store, 1, size=MIB).finish(store, JobState.DONE)
    middle = Exam(settings, store, 2, size=MIB).finish(store, JobState.DONE)
    newest = Exam(settings, store, 3, size=MIB).finish(store, JobState.DONE)
    sending = Exam(settings, store, 4, size=MIB).finish(store, JobState.SENDING, delivered=0)
    now = time.time() + 3600

    plenty = purge(pressed, store, now=now, free_bytes=lambda _path: 500 * MIB)
    assert plenty.exams == [] and oldest.kept

    # 8 MiB short of the target: two exams (5 MiB each) make it up, the oldest two
    report = purge(pressed, store, now=now, free_bytes=lambda _path: 92 * MIB)
    assert [e.job_id for e in report.exams] == [oldest.job_id, middle.job_id]
    assert oldest.gone and middle.gone and newest.kept and sending.kept
    assert "disk pressure (92 MiB free, target 100 MiB)" in report.exams[0].reason

    # far below the target: everything purgeable goes, the job still sending stays
    purge(pressed, store, now=now, free_bytes=lambda _path: 1 * MIB)
    assert newest.gone and sending.kept


def test_dry_run_deletes_and_records_nothing(settings: Settings, store: JobStore) -> None:
    exam = Exam(settings, store, 1).finish(store, JobState.DONE)
    quarantined = settings.data_dir / "quarantine" / "bad.dcm"
    quarantined.parent.mkdir(parents=True)
    quarantined.write_bytes(b"q" * 10)
    old = time.time() - 400 * DAY_S
    os.utime(quarantined, (old, old))
    events_before = len(store.events(limit=1000))

    report = purge(settings, store, dry_run=True, now=time.time() + 400 * DAY_S)

    assert [e.job_id for e in report.exams] == [exam.job_id] and report.quarantine_files == 1
    assert report.bytes == 5010 and report.lines()[-1].startswith("dry run, nothing deleted")
    assert exam.kept and quarantined.is_file()
    assert "purged" not in store.get_job(exam.job_id).result
    assert len(store.events(limit=1000)) == events_before
    purge(settings, store, now=time.time() + 400 * DAY_S)
    assert exam.gone and not quarantined.exists()


def test_spool_of_an_exam_still_being_received_stays(settings: Settings, store: JobStore) -> None:
    exam = Exam(settings, store, 1).finish(store, JobState.DONE)
    late_sop = f"{exam.series}.77"
    late = settings.spool_dir / exam.study / f"{exam.study}.2" / f"{late_sop}.dcm"
    late.parent.mkdir(parents=True)
    late.write_bytes(b"y")
    store.record_instance(  # a series arriving after the job was made: no job covers it yet
        sop_instance_uid=late_sop,
        study_uid=exam.study,
        series_uid=f"{exam.study}.2",
        component="uni",
        path=str(late),
        calling_ae="SCANNER",
        received_at=time.time() + 1,
        own_result=False,
        info={},
    )
    report = purge(settings, store, now=time.time() + 400 * DAY_S)
    assert report.exams == [] and exam.kept and late.is_file()


def test_queue_leftovers_of_finished_jobs_go_others_stay(
    settings: Settings, store: JobStore
) -> None:
    done = Exam(settings, store, 1).finish(store, JobState.DONE, delivered=0)
    queued = Exam(settings, store, 2).finish(store, JobState.QUEUED, delivered=0)
    queue = settings.data_dir / "broker" / "queue"
    queue.mkdir(parents=True)
    old = time.time() - 30 * DAY_S
    messages = {}
    for exam in (done, queued):
        path = queue / f"{exam.job_id}.celery.msg"
        path.write_text(json.dumps({"headers": {"argsrepr": f"[{exam.job_id}]"}}))
        os.utime(path, (old, old))
        messages[exam.job_id] = path
    report = purge(settings, store, now=time.time())
    assert report.broker_files == 1
    assert not messages[done.job_id].exists() and messages[queued.job_id].exists()


def test_serve_purges_periodically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.server import Service

    monkeypatch.delenv("CORDT1_CONFIG", raising=False)
    settings = Settings(
        data_dir=tmp_path / "data",
        workers=0,
        node={"host": "127.0.0.1", "port": 0},
        api={"enabled": False},
        retention={"interval_min": 0.005, "quarantine_days": 1},  # every 0.3 s
    )
    refused = settings.data_dir / "quarantine" / "refused.dcm"
    refused.parent.mkdir(parents=True)
    refused.write_bytes(b"q" * 64)
    long_ago = time.time() - 2 * DAY_S
    os.utime(refused, (long_ago, long_ago))
    service = Service(settings)
    service.start()
    try:
        deadline = time.monotonic() + 20
        while purge_totals(service.store).bytes < 64 and time.monotonic() < deadline:
            time.sleep(0.1)  # the purge's audit line comes after the deletion
        assert purge_totals(service.store).bytes == 64 and not refused.exists()
    finally:
        service.stop()


def test_own_results_sent_back_go_with_the_spool_age_limit(
    settings: Settings, store: JobStore
) -> None:
    received = time.time()
    path = settings.spool_dir / "9.9" / "9.9.1" / "9.9.1.1.dcm"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"s" * 700)
    store.record_instance(
        sop_instance_uid="9.9.1.1",
        study_uid="9.9",
        series_uid="9.9.1",
        component="seg",
        path=str(path),
        calling_ae="ORTHANC",
        received_at=received,
        own_result=True,
        info={"study_uid": "9.9", "is_own_result": True},
    )
    exam = Exam(settings, store, 2)  # queued: its spool must stay
    assert purge(settings, store, now=received + 10 * DAY_S).own_result_files == 0
    assert path.is_file()

    dry = purge(settings, store, dry_run=True, now=received + 31 * DAY_S)
    assert (dry.own_result_files, dry.own_result_bytes) == (1, 700) and path.is_file()

    report = purge(settings, store, now=received + 31 * DAY_S)
    assert (report.own_result_files, report.own_result_bytes) == (1, 700)
    assert not path.exists() and exam.kept
    assert store.own_result_instances(received + 400 * DAY_S) == []
    assert "own results sent back 1 file(s)" in report.summary()
