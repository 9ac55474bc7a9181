"""The job store on SQLite (default) and PostgreSQL (multi-host)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from service.jobs.store import DeliveryStatus, JobState, JobStore


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


# --- leases ------------------------------------------------------------------------------
def test_a_live_lease_keeps_the_job_and_an_expired_one_gives_it_up(store: JobStore) -> None:
    job_id = _job(store)
    assert store.claim(job_id, "worker-a", lease_s=60) == 1
    # a redelivered message or a restarted reconciler must leave a live lease alone
    assert store.claim(job_id, "worker-b", lease_s=60) is None
    assert store.stale_jobs() == []
    assert store.take_stale(job_id, wait_s=5) is None
    assert store.renew(job_id, "worker-a", lease_s=0.05)
    time.sleep(0.1)
    assert [j.id for j in store.stale_jobs()] == [job_id]
    assert store.get_job(job_id).lease_stale()
    # the redelivered message now runs it: run 2, and worker-a can no longer publish
    assert store.claim(job_id, "worker-b", lease_s=60) == 2
    assert not store.renew(job_id, "worker-a", lease_s=60)
    assert not store.finish(job_id, "worker-a", JobState.DONE, result={"run": 1})
    assert store.finish(job_id, "worker-b", JobState.DONE, result={"run": 2})
    job = store.get_job(job_id)
    assert (job.state, job.result, job.lease_owner) == (JobState.DONE, {"run": 2}, "")
    assert any("lease of worker-a had expired" in e["message"] for e in store.events())


def test_reconciler_requeues_an_expired_running_job_and_resends_an_expired_send(
    store: JobStore,
) -> None:
    running, sending = _job(store, "1.1"), _job(store, "1.2")
    store.claim(running, "a", lease_s=0.05)
    store.claim(sending, "b", lease_s=60)
    assert store.finish(sending, "b", JobState.SENDING, result={"run": 1}, wait_s=60)
    assert store.claim_send(sending, "c", lease_s=0.05)
    assert not store.claim_send(sending, "d", lease_s=60)  # c holds it
    time.sleep(0.1)
    assert store.take_stale(running, wait_s=30) is JobState.QUEUED
    assert store.take_stale(sending, wait_s=30) is JobState.SENDING
    assert store.get_job(running).state is JobState.QUEUED
    job = store.get_job(sending)
    assert job.state is JobState.SENDING and not job.lease_stale()  # given wait_s to start
    assert store.stale_jobs() == []
    assert store.claim_send(sending, "d", lease_s=60)  # the re-queued send takes it


def test_cancel_ends_any_unfinished_job_and_the_worker_loses_it(store: JobStore) -> None:
    queued, running = _job(store, "1.1"), _job(store, "1.2")
    store.claim(running, "w", lease_s=60)
    assert store.cancel(queued, operator="alice", reason="wrong patient")
    assert store.cancel(running, operator="alice", reason="scanner test")
    assert not store.cancel(running, operator="alice", reason="again")
    job = store.get_job(running)
    assert job.state is JobState.CANCELLED and job.error == "cancelled by alice: scanner test"
    assert not store.renew(running, "w", lease_s=60)
    assert not store.finish(running, "w", JobState.DONE)
    assert store.get_job(running).state is JobState.CANCELLED


def test_deliveries_are_recorded_per_object_and_destination(store: JobStore) -> None:
    job_id = _job(store)
    store.record_delivery(job_id, 1, "1.9.1", "A@h:1", DeliveryStatus.SENDING)
    store.record_delivery(job_id, 1, "1.9.1", "A@h:1", DeliveryStatus.SENT)
    store.record_delivery(job_id, 1, "1.9.2", "A@h:1", DeliveryStatus.SENDING)
    store.record_delivery(job_id, 1, "1.9.1", "B@h:2", DeliveryStatus.FAILED, "refused")
    assert store.delivery_status(job_id, 1, "A@h:1") == {
        "1.9.1": DeliveryStatus.SENT,
        "1.9.2": DeliveryStatus.SENDING,
    }
    assert store.delivery_status(job_id, 2, "A@h:1") == {}
    assert len(store.delivery_records(job_id)) == 3
    assert store.mark_for_resend(job_id, 1, "A@h:1") == 1
    assert store.delivery_status(job_id, 1, "A@h:1")["1.9.1"] is DeliveryStatus.RESEND
