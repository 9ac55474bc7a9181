"""Operator actions of the API: the same rules as the command line (:mod:`service.jobs.operator`),
with the task each one needs handed to Celery and the web user recorded as the operator."""

from __future__ import annotations

from celery import Celery

from service.jobs.operator import OperatorError, cancel_job, resend_job, retry_job
from service.jobs.store import Job, JobStore

__all__ = ["OperatorError", "cancel", "resend", "retry"]


def retry(
    store: JobStore,
    celery: Celery,
    job_id: int,
    operator: str,
    reason: str,
    destinations: list[str],
) -> Job:
    """Queue a job again (any unfinished or failed state, see :func:`retry_job`).

    Raises
    ------
    OperatorError
        For an unknown job (message starts with ``no job``), a done job, or one a worker
        holds under a live lease.
    """
    task = retry_job(
        store, job_id, operator=operator, reason=reason, destinations=destinations or None
    )
    celery.send_task(task, args=[job_id])
    return store.get_job(job_id)


def cancel(store: JobStore, job_id: int, operator: str, reason: str) -> Job:
    """End an unfinished job as cancelled (see :func:`cancel_job`)."""
    cancel_job(store, job_id, operator=operator, reason=reason)
    return store.get_job(job_id)


def resend(
    store: JobStore,
    celery: Celery,
    job_id: int,
    operator: str,
    reason: str,
    destination: str | None,
    default_destinations: list[str],
) -> Job:
    """Send every result object of a job again (see :func:`resend_job`)."""
    task = resend_job(
        store,
        job_id,
        operator=operator,
        reason=reason,
        destination=destination,
        default_destinations=default_destinations,
    )
    celery.send_task(task, args=[job_id])
    return store.get_job(job_id)
