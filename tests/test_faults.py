"""Fault suite: processes killed at the worst moments; nothing lost, nothing sent twice.

The PACS is :class:`tests.counting_pacs.CountingPacs` (every C-STORE a new file, so a duplicate
shows). Leases are short here (4 s, reconciler every second) so each fault heals quickly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from benchmarks.bench_soak import child_pids, copy_with_new_uids
from service.jobs.store import Job, JobState
from tests.counting_pacs import CountingPacs
from tests.service_harness import PhantomExam, ServiceProcess, finished, make_exams, storescu
from tests.throwaway_servers import ThrowawayPostgres, ThrowawayRedis

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

JOBS_TOML = "\n[jobs]\nlease_s = {lease_s}\nreconcile_interval_s = 1.0\nshutdown_timeout_s = 5.0\n"


@pytest.fixture(scope="module")
def exam(tmp_path_factory: pytest.TempPathFactory) -> PhantomExam:
    return make_exams(tmp_path_factory.mktemp("phantom"), seed=31)[0]


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[CountingPacs]:
    with CountingPacs(tmp_path / "pacs") as running:
        yield running


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _workers(serve_pid: int) -> list[int]:
    """The local Celery workers among serve's children (not its DICOM acceptor processes)."""
    found = []
    for pid in child_pids(serve_pid):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"service.cli" in command and b"worker" in command:
            found.append(pid)
    return found


def _pool_child(service: ServiceProcess, timeout_s: float = 60.0) -> int:
    """The Celery pool child of the service's embedded worker."""
    assert service.process is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for worker in child_pids(service.process.pid):
            pool = child_pids(worker)
            if pool:
                return pool[0]
        time.sleep(0.1)
    raise AssertionError("no pool child found")


def _wait_state(service: ServiceProcess, state: JobState, timeout_s: float = 90.0) -> Job:
    jobs = service.wait_for_jobs(lambda js: bool(js) and js[0].state is state, timeout_s)
    return jobs[0]


def _delivered_once(job: Job, pacs: CountingPacs) -> None:
    from service.jobs.delivery import result_objects

    expected = {o.sop_instance_uid for o in result_objects(job.result["dicom"])}
    counts = pacs.counts()
    assert set(counts) == expected, "objects missing from the PACS, or from another run"
    assert max(counts.values()) == 1, f"sent twice: {[u for u, n in counts.items() if n > 1]}"


def _service(
    tmp_path: Path,
    exam: PhantomExam,
    pacs: CountingPacs,
    *,
    broker: str | None = None,
    database_url: str | None = None,
    workers: int = 1,
    lease_s: float = 4.0,
) -> ServiceProcess:
    return ServiceProcess(
        tmp_path / "svc",
        destination=pacs.destination,
        site_protocols=exam.site_protocols,
        broker=broker,
        database_url=database_url,
        workers=workers,
        extra_toml=JOBS_TOML.format(lease_s=lease_s),
    )


@pytest.mark.parametrize("broker", ["embedded", "redis"])
def test_pool_child_killed_while_processing_ends_done_with_results_once(
    broker: str, exam: PhantomExam, pacs: CountingPacs, tmp_path: Path, redis_url: str
) -> None:
    redis = None
    if broker == "redis":
        import redis as redis_client

        redis = redis_url.rsplit("/", 1)[0] + "/11"
        redis_client.Redis.from_url(redis).flushdb()
    with _service(tmp_path, exam, pacs, broker=redis) as service:
        assert storescu(service.port, [exam.dicom_dir]).returncode == 0
        _wait_state(service, JobState.RUNNING)
        # at once: a small exam is processed in about 2 s on an idle machine
        os.kill(_pool_child(service), signal.SIGKILL)
        jobs = service.wait_for_jobs(finished, timeout_s=120)
        job = jobs[0]
        assert job.state is JobState.DONE, job.error
        assert job.attempts == 2 and job.result["run"] == 2
        _delivered_once(job, pacs)
        job_dir = service.data_dir / "results" / "job-000001"
        assert (job_dir / "run-001").is_dir()  # the killed run's folder is left alone
        assert (job_dir / "current").resolve() == (job_dir / "run-002").resolve()


def test_pool_child_killed_while_sending_to_a_slow_pacs_sends_nothing_twice(
    exam: PhantomExam, tmp_path: Path
) -> None:
    slow = CountingPacs(tmp_path / "slow-pacs", delay_s=1.0)
    with slow, _service(tmp_path, exam, slow) as service:
        assert storescu(service.port, [exam.dicom_dir]).returncode == 0
        _wait_state(service, JobState.SENDING)
        deadline = time.monotonic() + 60
        while sum(slow.counts().values()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(_pool_child(service), signal.SIGKILL)  # mid-store of the next object
        jobs = service.wait_for_jobs(finished, timeout_s=120)
        job = jobs[0]
        assert job.state is JobState.DONE, job.error
        assert job.attempts == 1  # processed once; only the sending was resumed
        _delivered_once(job, slow)
        with closing(service.store()) as store:
            messages = [e["message"] for e in store.events(job_id=job.id)]
        # the object in flight when the sender died was found in the PACS, not sent again
        assert any("found there after an interrupted send" in m for m in messages), messages


def test_serve_killed_and_restarted_while_an_external_worker_runs_a_job(
    exam: PhantomExam, tmp_path: Path, redis_url: str, postgres_url: str
) -> None:
    import redis as redis_client

    broker = redis_url.rsplit("/", 1)[0] + "/12"
    redis_client.Redis.from_url(broker).flushdb()
    pacs = CountingPacs(tmp_path / "slow-pacs", delay_s=0.7).start()  # the job lasts
    service = _service(
        tmp_path, exam, pacs, broker=broker, database_url=postgres_url, workers=0, lease_s=3.0
    )
    worker_log = (tmp_path / "worker.log").open("ab")
    worker = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "--config", str(service.config), "worker"],
        stdout=worker_log,
        stderr=subprocess.STDOUT,
    )
    try:
        with service:
            assert storescu(service.port, [exam.dicom_dir]).returncode == 0
            _wait_state(service, JobState.RUNNING)
            assert service.process is not None
            service.process.kill()  # serve dies; the external worker goes on
            service.process.wait()
            time.sleep(4.0)  # longer than a lease: only the heartbeat keeps the job
            service.start()
            with closing(service.store()) as store:
                held = store.get_job(1)
            # the restarted serve found the job held (processing, or sending) and left it
            assert held.state in (JobState.RUNNING, JobState.SENDING), held
            assert not held.lease_stale(), held
            jobs = service.wait_for_jobs(finished, timeout_s=120)
            job = jobs[0]
            assert job.state is JobState.DONE, job.error
            assert job.attempts == 1  # never re-queued while the worker held it
            _delivered_once(job, pacs)
            assert (service.data_dir / "results" / "job-000001" / "run-001").is_dir()
            with closing(service.store()) as store:
                kinds = [e["kind"] for e in store.events(job_id=job.id)]
            assert "job.failed" not in kinds and "job.lease_expired" not in kinds
    finally:
        pacs.stop()
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()


def test_sigterm_stops_serve_and_its_whole_worker_tree_within_30_s(
    exam: PhantomExam, pacs: CountingPacs, tmp_path: Path
) -> None:
    with _service(tmp_path, exam, pacs) as service:
        assert service.process is not None
        child = _pool_child(service)
        workers = child_pids(service.process.pid)
        os.kill(child, signal.SIGKILL)  # an idle pool child dies (OOM killer)
        time.sleep(1.0)
        tree = workers + [p for w in workers for p in child_pids(w)]
        started = time.monotonic()
        service.process.send_signal(signal.SIGTERM)
        service.process.wait(timeout=30)
        elapsed = time.monotonic() - started
    assert elapsed < 30
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in tree if _alive(p)], "worker processes left behind"


def test_serve_killed_leaves_no_worker_behind(
    exam: PhantomExam, pacs: CountingPacs, tmp_path: Path
) -> None:
    with _service(tmp_path, exam, pacs) as service:
        assert service.process is not None
        _pool_child(service)
        workers = child_pids(service.process.pid)
        tree = workers + [p for w in workers for p in child_pids(w)]
        service.process.kill()  # no chance to stop its workers itself
        service.process.wait()
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in tree) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p in tree if _alive(p)], "orphaned worker processes"


def test_a_worker_that_dies_is_started_again(
    exam: PhantomExam, pacs: CountingPacs, tmp_path: Path
) -> None:
    with _service(tmp_path, exam, pacs) as service:
        assert service.process is not None
        _pool_child(service)
        (worker,) = _workers(service.process.pid)
        os.killpg(worker, signal.SIGKILL)  # the worker and its pool, as a crash would
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            alive = [p for p in _workers(service.process.pid) if _alive(p)]
            if alive and alive != [worker]:
                break
            time.sleep(0.2)
        assert alive and worker not in alive, "no new worker"
        assert _pool_child(service) not in (worker, 0)  # warmed up, with its pool
        with closing(service.store()) as store:
            assert any(e["kind"] == "worker.restarted" for e in store.events())


def _events(service: ServiceProcess, job_id: int | None = None) -> list[dict[str, object]]:
    with closing(service.store()) as store:
        return store.events(job_id=job_id, limit=1000)


@pytest.mark.parametrize("moment", ["while_a_job_runs", "down_when_the_exam_arrives"])
def test_redis_restarted_mid_run_jobs_end_done_and_receiving_goes_on(
    moment: str, exam: PhantomExam, pacs: CountingPacs, tmp_path: Path
) -> None:
    """A Redis without persistence, killed and started again: every message in it is lost.

    While a job runs a second one waits in Redis (one worker, one pool child); its message
    goes with the restart, and the new run id of Redis makes `serve` send it again.
    """
    copies = []
    for name in ("second", "third"):
        copies.append(tmp_path / f"{name}-exam")
        copy_with_new_uids(exam.dicom_dir, copies[-1])
    with (
        ThrowawayRedis(tmp_path / "redis") as redis,
        _service(tmp_path, exam, pacs, broker=redis.url) as service,
    ):
        _pool_child(service)  # the worker is up and consuming
        if moment == "while_a_job_runs":
            assert storescu(service.port, [exam.dicom_dir]).returncode == 0
            _wait_state(service, JobState.RUNNING)
            assert storescu(service.port, [copies[0]]).returncode == 0
            service.wait_for_jobs(lambda js: len(js) == 2, timeout_s=60)
            redis.restart(down_s=1.0)
        else:
            redis.stop(hard=True)
            # receiving does not need the broker
            assert storescu(service.port, [exam.dicom_dir]).returncode == 0
            assert storescu(service.port, [copies[0]]).returncode == 0
            service.wait_for_jobs(lambda js: len(js) == 2, timeout_s=60)
            time.sleep(2.0)  # the dispatcher met the dead broker
            redis.start()
        jobs = service.wait_for_jobs(lambda js: len(js) == 2 and finished(js), timeout_s=150)
        assert [j.state for j in jobs] == [JobState.DONE] * 2, [j.error for j in jobs]
        # the service goes on receiving and processing after the restart
        assert storescu(service.port, [copies[1]]).returncode == 0
        jobs = service.wait_for_jobs(lambda js: len(js) == 3 and finished(js), timeout_s=120)
        assert [j.state for j in jobs] == [JobState.DONE] * 3, [j.error for j in jobs]
        counts = pacs.counts()
        assert len(counts) == sum(len(j.result["dicom"]) for j in jobs), "results missing"
        assert max(counts.values()) == 1, "an object was sent twice"
        kinds = [e["kind"] for e in _events(service)]
    assert "broker.restored" in kinds, kinds
    if moment == "down_when_the_exam_arrives":
        assert "broker.unreachable" in kinds, kinds
        assert "broker unreachable" in service.log_text()


@pytest.mark.parametrize("moment", ["while_a_job_runs", "down_when_the_exam_arrives"])
def test_postgresql_restarted_in_multi_host_mode_jobs_end_done_and_serve_goes_on(
    moment: str, exam: PhantomExam, pacs: CountingPacs, tmp_path: Path
) -> None:
    """Job store on PostgreSQL and broker on Redis (as with workers on other hosts); the
    database crashes (``pg_ctl -m immediate``) and comes back after a few seconds."""
    copy = tmp_path / "second-exam"
    copy_with_new_uids(exam.dicom_dir, copy)
    with (
        ThrowawayRedis(tmp_path / "redis") as redis,
        ThrowawayPostgres() as postgres,
        _service(tmp_path, exam, pacs, broker=redis.url, database_url=postgres.url) as service,
    ):
        _pool_child(service)
        if moment == "while_a_job_runs":
            assert storescu(service.port, [exam.dicom_dir]).returncode == 0
            _wait_state(service, JobState.RUNNING)
            postgres.restart(down_s=3.0)
        else:
            postgres.stop("immediate")
            # a C-STORE acknowledged before the writer saw the outage stays: its row waits in
            # memory; from then on instances are refused (0xC211) and the scanner sends again
            refused = storescu(service.port, [exam.dicom_dir])
            assert refused.returncode != 0
            time.sleep(2.0)
            postgres.start()
            assert storescu(service.port, [exam.dicom_dir]).returncode == 0
        jobs = service.wait_for_jobs(finished, timeout_s=100)
        (job,) = jobs
        assert job.state is JobState.DONE, job.error
        _delivered_once(job, pacs)
        assert service.process is not None and service.process.poll() is None, "serve died"
        # receiving and processing go on
        assert storescu(service.port, [copy]).returncode == 0
        jobs = service.wait_for_jobs(lambda js: len(js) == 2 and finished(js), timeout_s=120)
        assert [j.state for j in jobs] == [JobState.DONE] * 2, [j.error for j in jobs]
        assert max(pacs.counts().values()) == 1, "an object was sent twice"
    log = service.log_text()
    assert "job store unreachable" in log, log[-4000:]
    if moment == "down_when_the_exam_arrives":
        assert "job store not writable" in log, log[-4000:]


def _mount_tmpfs(folder: Path, size_mb: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    command = ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(folder)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")


def test_full_disk_while_results_are_written_fails_clearly_and_a_retry_ends_done(
    exam: PhantomExam, pacs: CountingPacs, tmp_path: Path
) -> None:
    """``results/`` on a 4 MB tmpfs: a run writes about 15 MB. The job fails naming the full
    disk, publishes and sends nothing; after the space is grown, `cordt1 retry` ends done."""
    service = _service(tmp_path, exam, pacs)
    results = service.data_dir / "results"
    _mount_tmpfs(results, 4)
    try:
        with service:
            assert storescu(service.port, [exam.dicom_dir]).returncode == 0
            (job,) = service.wait_for_jobs(finished, timeout_s=120)
            assert job.state is JobState.FAILED
            assert "no space left" in job.error.lower() and str(results) in job.error, job.error
            job_dir = results / "job-000001"
            assert not (job_dir / "current").exists(), "a partial run was published"
            assert not (job_dir / "run-001").exists(), "the partial run still holds the space"
            assert not pacs.counts(), "results of a partial run were sent"
            # the space comes back (an operator freed it), then the job is retried
            subprocess.run(["mount", "-o", "remount,size=64m", str(results)], check=True)
            retry = subprocess.run(
                [
                    *(sys.executable, "-m", "service.cli", "--config", str(service.config)),
                    *("retry", "1", "--reason", "disk space freed"),
                ],
                capture_output=True,
                text=True,
            )
            assert retry.returncode == 0, retry.stderr
            (job,) = service.wait_for_jobs(finished, timeout_s=120)
            assert job.state is JobState.DONE, job.error
            _delivered_once(job, pacs)
            current = (job_dir / "current").resolve()
            assert current == (job_dir / f"run-{job.result['run']:03d}").resolve()
            assert (current / "summary.json").is_file()
    finally:
        subprocess.run(["umount", "-l", str(results)], capture_output=True)
