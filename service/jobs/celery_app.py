"""The Celery application: the broker carries job ids, the job store holds the truth.

Embedded default: a filesystem queue in ``data_dir/broker`` (no server needed). With
``redis://`` workers on other hosts take jobs. Messages are acknowledged late and given back
when a pool child dies, so a killed child's task comes back; whether it runs is decided by the
job's lease in the job store (see :mod:`service.jobs.store`), and a job whose message is lost is
queued again by the reconciler of `cordt1 serve` once its lease expired.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from celery import Celery, Task

from service.jobs.store import JobStore
from service.jobs.tasks import JobRunner, SendOutcome
from service.settings import Settings

__all__ = ["PROCESS_TASK", "SEND_TASK", "broker_run_id", "create_app"]

log = logging.getLogger(__name__)

PROCESS_TASK = "cordt1.process_job"
SEND_TASK = "cordt1.send_results"
#: kombu's filesystem transport with atomic message writes (see :mod:`service.jobs.fs_broker`).
FILESYSTEM_TRANSPORT = "service.jobs.fs_broker:Transport"
#: Redis gives an unacknowledged message to another worker after this long. A copy delivered
#: while the job's lease is alive is dropped, so this only needs to be longer than a typical
#: job to avoid needless messages.
VISIBILITY_TIMEOUT_S = 6 * 3600


def _filesystem_options(data_dir: Path) -> dict[str, Any]:
    base = (data_dir / "broker").resolve()
    for sub in ("queue", "processed", "control"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    return {
        "data_folder_in": str(base / "queue"),
        "data_folder_out": str(base / "queue"),
        "control_folder": str(base / "control"),
        "processed_folder": str(base / "processed"),
        "store_processed": False,
        "polling_interval": 0.2,
    }


def broker_run_id(url: str, timeout_s: float = 2.0) -> str | None:
    """An id of the running broker server that changes when it restarts; None without one.

    Redis answers its ``run_id`` (``INFO server``): a new one means a restart, and a Redis
    without persistence forgets every queued message then. The embedded filesystem queue
    keeps its messages in files and has no server, so it has no id.

    Raises
    ------
    Exception
        The client's error when the broker does not answer within ``timeout_s``.
    """
    if not url.startswith(("redis://", "rediss://")):
        return None
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        return str(client.info("server")["run_id"])
    finally:
        client.close()


def create_app(settings: Settings) -> Celery:
    """A Celery app for these settings, with the two job tasks registered.

    The tasks close over ``settings``; each worker process opens its own job store
    connection on first use (after the fork).
    """
    app = Celery("cordt1", broker=settings.celery_broker_url, set_as_current=False)
    url = settings.celery_broker_url
    if url.startswith("filesystem://"):
        transport_options = _filesystem_options(settings.data_dir)
    elif url.startswith(("redis://", "rediss://")):
        transport_options = {"visibility_timeout": VISIBILITY_TIMEOUT_S}
    else:
        transport_options = {}
    if url.startswith("filesystem://"):
        app.conf.broker_transport = FILESYSTEM_TRANSPORT
    app.conf.update(
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        broker_connection_timeout=5,
        worker_max_tasks_per_child=settings.jobs.worker_max_tasks_per_child,
        worker_max_memory_per_child=(
            settings.jobs.worker_max_memory_per_child_mb * 1024
            if settings.jobs.worker_max_memory_per_child_mb
            else None
        ),
    )
    runners: dict[str, JobRunner] = {}

    def runner() -> JobRunner:
        if "runner" not in runners:
            runners["runner"] = JobRunner(settings, JobStore(settings.job_store_url))
        return runners["runner"]

    @app.task(name=PROCESS_TASK)
    def process_job(job_id: int) -> None:
        if runner().process(job_id):
            app.send_task(SEND_TASK, args=[job_id])

    @app.task(bind=True, name=SEND_TASK, max_retries=None)
    def send_results(self: Task, job_id: int) -> None:
        # The job store counts the tries (it outlives any message) and fails the job after
        # send.attempts; Celery's retry re-queues the task with the back-off delay.
        outcome = runner().send(job_id)
        if outcome is SendOutcome.RETRY:
            delay_s = runner().retry_delay_s(job_id)
            log.warning("job %d: destination unreachable, retry in %.0f s", job_id, delay_s)
            raise self.retry(countdown=delay_s)

    return app
