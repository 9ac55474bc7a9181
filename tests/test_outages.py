"""Outages of the broker, the job store and the disk, one piece at a time (fast).

The whole-service versions of these (real `serve`, real exams) are in tests/test_faults.py.
"""

from __future__ import annotations

import errno
import time
from pathlib import Path

import pytest
import redis as redis_client
from sqlalchemy import delete
from sqlalchemy.exc import OperationalError

from dicom_node.scu import Destination, send
from service.inputs.exam import ExamError
from service.jobs import store as store_tables
from service.jobs.celery_app import PROCESS_TASK
from service.jobs.store import JobStore
from service.jobs.tasks import JobRunner
from service.server import Service
from service.settings import Settings
from tests.test_dicom_node_factories import make_mr
from tests.throwaway_servers import ThrowawayRedis


def _job(store: JobStore, study: str) -> int:
    return store.create_job(
        study_uid=study, patient_key="k", series_uids=[study], n_instances=1, complete=True
    )


def _messages(url: str) -> int:
    client = redis_client.Redis.from_url(url)
    try:
        return int(client.llen("celery"))
    finally:
        client.close()


def test_queued_jobs_are_sent_again_when_the_broker_answers_again_or_restarted(
    tmp_path: Path,
) -> None:
    redis = ThrowawayRedis(tmp_path / "redis")  # not started yet: the broker is away
    settings = Settings(data_dir=tmp_path / "data", workers=0, broker_url=redis.url)
    service = Service(settings)
    try:
        job = _job(service.store, "1.1")
        assert not service._enqueue(PROCESS_TASK, job)  # the dispatch path
        assert service.check_broker() == 0  # still away
        kinds = [e["kind"] for e in service.store.events()]
        assert kinds.count("broker.unreachable") == 1  # said once, not per attempt
        with redis:
            assert service.check_broker() == 1
            assert _messages(redis.url) == 1
            assert service.check_broker() == 0  # nothing wrong: nothing sent again
            redis.restart()  # no persistence: the message is gone
            assert _messages(redis.url) == 0
            assert service.check_broker() == 1  # a new run id: sent again
            assert _messages(redis.url) == 1
        events = service.store.events()  # newest first
        messages = [e["message"] for e in reversed(events) if e["kind"] == "broker.restored"]
        assert messages == [
            "broker reachable again: 1 queued job(s) sent to the workers again",
            "broker restarted: 1 queued job(s) sent to the workers again",
        ]
    finally:
        service.store.close()


def _runner(tmp_path: Path, lease_s: float = 2.0) -> JobRunner:
    settings = Settings(data_dir=tmp_path / "data", workers=0, jobs={"lease_s": lease_s})
    settings.data_dir.mkdir(parents=True)
    return JobRunner(settings, JobStore(f"sqlite:///{settings.data_dir / 'jobs.sqlite'}"))


def _refused() -> OperationalError:
    return OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))


def test_a_store_call_is_repeated_while_the_store_is_away_then_given_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runner = _runner(tmp_path, lease_s=0.5)
    calls: list[int] = []

    def finish() -> bool:
        calls.append(1)
        if len(calls) < 3:
            raise _refused()
        return True

    assert runner._retry(finish) is True
    assert len(calls) == 3
    assert "job store unreachable" in caplog.text and "job store works again" in caplog.text

    def never() -> bool:
        raise _refused()

    with pytest.raises(OperationalError):  # after lease_s the lease is gone anyway
        runner._retry(never)
    with pytest.raises(ValueError):  # other errors are not retried
        runner._retry(lambda: int("x"))
    runner.store.close()


def test_a_run_folder_is_never_reused(tmp_path: Path) -> None:
    runner = _runner(tmp_path)
    (runner.run_dir(7, 1) / "dicom").mkdir(parents=True)  # a forgotten run wrote there
    run, folder = runner._new_run_dir(7, 1)
    assert (run, folder) == (2, runner.run_dir(7, 2))
    assert folder.is_dir() and not any(folder.iterdir())
    assert (runner.run_dir(7, 1) / "dicom").is_dir()  # left alone
    runner.store.close()


def test_a_full_disk_is_named_and_the_partial_run_removed(tmp_path: Path) -> None:
    runner = _runner(tmp_path)
    partial = runner.run_dir(3, 1)
    partial.mkdir(parents=True)
    (partial / "half.dcm").write_bytes(b"x" * 100)
    try:
        raise OSError(errno.ENOSPC, "No space left on device")
    except OSError as cause:
        try:
            raise ExamError("writing the T1 map failed") from cause
        except ExamError as exc:
            note = runner._disk_full(exc, 3, 1)
    assert f"the disk holding {runner.settings.results_dir} ran full" in note
    assert "partial folder run-001 was removed" in note and "`cordt1 retry 3`" in note
    assert not partial.exists()
    # text only (an error from a helper process): recognised as well
    assert runner._disk_full(ExamError("x ([Errno 28] No space left)"), 3, 2)
    assert runner._disk_full(ExamError("missing series"), 3, 1) == ""
    runner.store.close()


def test_an_exam_whose_job_the_database_lost_gets_a_job_again(tmp_path: Path) -> None:
    """A job store that came back without its last commits (rows of received instances and
    the job of an exam gone) loses nothing: the spooled files are recorded again and the exam
    gets a new job."""
    settings = Settings(
        data_dir=tmp_path / "data",
        workers=0,
        node={"host": "127.0.0.1", "port": 0, "min_free_mb": 0},
        api={"enabled": False},
    )
    service = Service(settings)
    service.scp.start()
    try:
        assert service.scp.port is not None
        ds = make_mr()
        send([ds], Destination("CORDT1", "127.0.0.1", service.scp.port), calling_ae="SCANNER")
        assert service.batcher.flush()
        later = time.time() + 10 * settings.node.stale_s
        assert len(service.dispatch_ready(now=later)) == 1
        assert service.after_store_outage() == 0  # nothing lost: nothing made again

        with service.store.engine.begin() as conn:  # the commits the crash took
            conn.execute(delete(store_tables.jobs))
            conn.execute(delete(store_tables.instances))
        assert service.store.list_jobs() == [] and service.store.instance_infos() == []

        assert service.after_store_outage() == 1
        infos = service.store.instance_infos()
        assert [i["sop_instance_uid"] for i in infos] == [ds.SOPInstanceUID]
        (again,) = service.dispatch_ready(now=later + 10 * settings.node.stale_s)
        (job,) = service.store.list_jobs()
        assert job.id == again and job.study_uid == ds.StudyInstanceUID
        kinds = [e["kind"] for e in service.store.events()]
        assert "store.jobs_lost" in kinds
    finally:
        service.scp.stop()
        service.store.close()
