"""Operator actions on jobs, shared by the API (and usable by the command line)."""

from __future__ import annotations

from celery import Celery

from service.celery_app import PROCESS_TASK
from service.store import Job, JobState, JobStore

__all__ = ["RetryRefusedError", "retry_job"]


class RetryRefusedError(Exception):
    """The job cannot be retried in its state."""


def retry_job(store: JobStore, celery: Celery, job_id: int, operator: str) -> Job:
    """Queue a failed job again (as `cordt1 retry`) and audit who asked.

    Raises
    ------
    KeyError
        If there is no such job.
    RetryRefusedError
        If the job is not failed (only failed jobs retry).
    """
    job = store.get_job(job_id)
    if job.state is not JobState.FAILED:
        raise RetryRefusedError(f"job {job_id} is {job.state.value}, only failed jobs retry")
    store.requeue(job_id)
    celery.send_task(PROCESS_TASK, args=[job_id])
    store.log_event("operator.retry", f"job {job_id} queued again by {operator}", job_id)
    return store.get_job(job_id)
