"""The job store on SQLite (default) and PostgreSQL (multi-host)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from service.store import JobState, JobStore


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> JobStore:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    else:
        url = request.getfixturevalue("postgres_url")
    js = JobStore(url)
    request.addfinalizer(js.close)
    return js


def _job(store: JobStore, study: str = "1.2.3", series: tuple[str, ...] = ("1.2.3.1",)) -> int:
    return store.create_job(
        study_uid=study, patient_key="abc", series_uids=series, n_instances=3, complete=True
    )


def test_job_life_cycle_is_recorded_with_audit_trail(store: JobStore) -> None:
    job_id = _job(store)
    assert store.get_job(job_id).state is JobState.QUEUED
    assert store.claim(job_id)
    store.set_state(job_id, JobState.SENDING, result={"out_dir": "/x"})
    store.set_state(job_id, JobState.DONE)
    job = store.get_job(job_id)
    assert job.state is JobState.DONE
    assert job.result == {"out_dir": "/x"}
    assert job.attempts == 1
    assert job.finished_at is not None
    kinds = [e["kind"] for e in store.events(job_id=job_id)]
    assert kinds == ["job.done", "job.sending", "job.running", "job.created"]


def test_a_job_is_claimed_by_exactly_one_of_many_workers(store: JobStore) -> None:
    job_id = _job(store)
    wins: list[bool] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        wins.append(store.claim(job_id) is not None)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False] * 7 + [True]


def test_finished_jobs_are_not_claimed_again(store: JobStore) -> None:
    job_id = _job(store)
    assert store.claim(job_id)
    store.set_state(job_id, JobState.FAILED, error="no UNI")
    assert not store.claim(job_id)
    store.requeue(job_id)
    assert store.claim(job_id)
    assert store.get_job(job_id).attempts == 2


def test_unfinished_jobs_and_counts(store: JobStore) -> None:
    a, b, c = _job(store, "1.1"), _job(store, "1.2"), _job(store, "1.3")
    store.claim(b)
    store.set_state(c, JobState.FAILED, error="boom")
    assert {j.id for j in store.unfinished_jobs()} == {a, b}
    counts = store.counts()
    assert counts["queued"] == 1 and counts["running"] == 1 and counts["failed"] == 1


def test_has_job_matches_series_set_and_instance_count(store: JobStore) -> None:
    _job(store, "1.2.3", ("b", "a"))
    assert store.has_job("1.2.3", ["a", "b"], 3)
    assert not store.has_job("1.2.3", ["a", "b"], 4)
    assert not store.has_job("1.2.3", ["a"], 3)


def test_instances_are_recorded_idempotently(store: JobStore) -> None:
    for path in ("/spool/a.dcm", "/spool/a2.dcm"):
        store.record_instance(
            sop_instance_uid="1.2.3.4.5",
            study_uid="1.2.3",
            series_uid="1.2.3.4",
            component="UNI",
            path=path,
            calling_ae="SCANNER",
            received_at=1.0,
            own_result=False,
            info={"sop_instance_uid": "1.2.3.4.5"},
        )
    assert store.instance_paths(["1.2.3.4"]) == {"1.2.3.4": ["/spool/a2.dcm"]}
    assert len(store.instance_infos()) == 1


def test_missing_job_raises_key_error(store: JobStore) -> None:
    with pytest.raises(KeyError):
        store.get_job(999)


def test_bad_url_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="SQLAlchemy URL"):
        JobStore("jobs.sqlite")
